// The prefill path of the Lizard attention op (kernels/lizard_attention/chunked_prefill.h):
// LizardChunkedPrefill against its CPU reference (token by token, float64) on the state pool, many
// sequences of different lengths and first positions in one launch, initial states, strong decay,
// fp32 and bf16 state; a launch split at absolute chunk boundaries gives the bits of one launch;
// other sequences in the launch change no sequence's bits; 1, 2 or 4 blocks per (sequence, head)
// give the same bits, and so does the two-pass form (state scan, then the chunks' outputs in
// parallel); one 2048-token sequence alone; LizardPrefillFeatureMaps against its float64
// reference (logits and maps), a row's bits alike in launches of any size.
//
// Tolerances: the kernel multiplies bf16 operands (the inputs, and the state, v and the scores
// rounded to bf16 for the tensor cores) with fp32 accumulation, whose relative error
// ||gpu - ref|| / ||ref|| is expected between 1e-3 and 1e-2; the checks allow 1e-2 for each
// sequence's y and for each slot's final S and z.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/lizard_attention/chunked_prefill_ref.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::kernels {
namespace {

using gputest::DeviceVec;
using gputest::RelError;
using gputest::RequireGpu;
using gputest::ToFloat;

const auto* const kRequireGpu = ::testing::AddGlobalTestEnvironment(new RequireGpu);

constexpr double kTolY = 1e-2;
constexpr double kTolState = 1e-2;
constexpr int kD = 128;
constexpr int64_t kSOffset = 256;  // the slot's S after a gap: offsets are honoured

// One sequence of a launch: `len` tokens from position `pos`, in slot `slot` (-1: padding).
struct Seq {
  int len, pos, slot;
};

// Host inputs, the state pool and the sequences of one problem. Rows are the sequences' tokens
// in order.
struct Problem {
  int heads = 8, kv_heads = 2, f2 = 128;
  bool normalize = true;
  StoreType state_type = StoreType::kF32;
  std::vector<Seq> seqs;
  std::vector<int32_t> first_row;
  std::vector<__nv_bfloat16> fq, fk;
  std::vector<float> qkvg, y_add;  // y_add empty: none
  std::vector<char> pool;

  int ld() const { return heads * kD + 2 * kv_heads * kD + heads; }
  int rows() const { return first_row.back(); }
  int num_slots() const { return static_cast<int>(seqs.size()) + 1; }  // one slot never used
  int64_t state_bytes() const { return state_type == StoreType::kF32 ? 4 : 2; }
  LizardStateRef state_ref(char* pool_ptr) const {
    LizardStateRef s;
    s.pool = pool_ptr;
    s.state_type = state_type;
    s.s_offset = kSOffset;
    s.z_offset = kSOffset + int64_t{heads} * f2 * kD * state_bytes();
    s.slot_bytes = s.z_offset + int64_t{heads} * f2 * state_bytes();
    return s;
  }
  LizardDims dims() const {
    LizardDims d;
    d.heads = heads, d.kv_heads = kv_heads, d.head_dim = kD, d.features = f2 / 2, d.normalize = normalize;
    return d;
  }
};

// Rows of two softmaxes over F features each, as the Hedgehog feature maps give.
std::vector<__nv_bfloat16> FeatureRows(std::mt19937& rng, int64_t rows, int f2) {
  std::uniform_real_distribution<float> logit(-3.f, 3.f);
  std::vector<__nv_bfloat16> out(rows * f2);
  std::vector<float> e(f2 / 2);
  for (int64_t r = 0; r < rows; ++r) {
    for (int half = 0; half < 2; ++half) {
      float sum = 0.f;
      for (float& x : e) sum += (x = std::exp(logit(rng)));
      for (int f = 0; f < f2 / 2; ++f) out[r * f2 + half * f2 / 2 + f] = __float2bfloat16(e[f] / sum);
    }
  }
  return out;
}

struct Options {
  int f2 = 128, heads = 8, kv_heads = 2;
  StoreType state_type = StoreType::kF32;
  bool normalize = true, with_y_add = true;
  float gate_lo = -2.f, gate_hi = 6.f;
};

// Random inputs: gate logits uniform in [gate_lo, gate_hi]; initial states like a few tokens'
// worth of history (z > 0, |S| <= z) in every slot, stored as the state type.
Problem MakeProblem(const std::vector<Seq>& seqs, const Options& o, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.heads = o.heads, p.kv_heads = o.kv_heads, p.f2 = o.f2, p.normalize = o.normalize;
  p.state_type = o.state_type;
  p.seqs = seqs;
  p.first_row = {0};
  for (const Seq& s : seqs) p.first_row.push_back(p.first_row.back() + s.len);
  const int64_t T = p.rows(), H = p.heads, Hkv = p.kv_heads, ld = p.ld();
  p.fq = FeatureRows(rng, T * H, p.f2);
  p.fk = FeatureRows(rng, T * H, p.f2);
  p.qkvg = gputest::Uniform(rng, T * ld, -1.f, 1.f);
  std::uniform_real_distribution<float> gate(o.gate_lo, o.gate_hi);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t h = 0; h < H; ++h) p.qkvg[r * ld + (H + 2 * Hkv) * kD + h] = gate(rng);
  }
  if (o.with_y_add) p.y_add = gputest::Uniform(rng, T * H * kD, -0.5f, 0.5f);
  const LizardStateRef ref = p.state_ref(nullptr);
  p.pool.assign(p.num_slots() * ref.slot_bytes, 0);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  auto put = [&](int64_t byte_offset, int64_t i, float x) {
    char* base = p.pool.data() + byte_offset;
    if (p.state_type == StoreType::kF32) {
      reinterpret_cast<float*>(base)[i] = x;
    } else {
      reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16(x);
    }
  };
  for (int slot = 0; slot < p.num_slots(); ++slot) {
    for (int64_t row = 0; row < H * p.f2; ++row) {
      const float zi = 16.f / p.f2 * unit(rng);
      put(slot * ref.slot_bytes + ref.z_offset, row, zi);
      for (int d = 0; d < kD; ++d) put(slot * ref.slot_bytes + ref.s_offset, row * kD + d, zi * (2.f * unit(rng) - 1.f));
    }
  }
  return p;
}

struct Result {
  std::vector<float> y;
  std::vector<char> pool;
};

// The sequences' metadata arrays (host), for the tokens [skip[n], skip[n] + count[n]) of each.
struct Meta {
  std::vector<int32_t> slot, first_row, num_tokens, first_pos;
  SeqMeta view() const { return {slot.data(), first_row.data(), num_tokens.data(), first_pos.data()}; }
};
Meta MakeMeta(const Problem& p, const std::vector<int>& which, const std::vector<int>& skip,
              const std::vector<int>& count) {
  Meta m;
  for (size_t i = 0; i < which.size(); ++i) {
    const int n = which[i];
    m.slot.push_back(p.seqs[n].slot);
    m.first_row.push_back(p.first_row[n] + skip[i]);
    m.num_tokens.push_back(count[i]);
    m.first_pos.push_back(p.seqs[n].pos + skip[i]);
  }
  return m;
}

ChunkedPrefillArgs Args(const Problem& p, const __nv_bfloat16* fq, const __nv_bfloat16* fk, const float* qkvg,
                        const SeqMeta& seqs, int num_seqs, char* pool, const float* y_add, __nv_bfloat16* y) {
  ChunkedPrefillArgs a;
  a.dims = p.dims();
  a.fq = fq, a.fk = fk, a.qkvg = qkvg, a.ld = p.ld();
  a.seqs = seqs, a.num_seqs = num_seqs;
  a.state = p.state_ref(pool);
  a.y_add = y_add, a.y = y;
  return a;
}

std::vector<int> All(const Problem& p) {
  std::vector<int> all(p.seqs.size());
  for (size_t n = 0; n < all.size(); ++n) all[n] = static_cast<int>(n);
  return all;
}

Result RunRef(const Problem& p) {
  Result r{{}, p.pool};
  std::vector<__nv_bfloat16> y(static_cast<size_t>(p.rows()) * p.heads * kD);
  const std::vector<int> all = All(p), zero(all.size(), 0);
  std::vector<int> len;
  for (const Seq& s : p.seqs) len.push_back(s.len);
  const Meta m = MakeMeta(p, all, zero, len);
  LizardChunkedPrefillRef(Args(p, p.fq.data(), p.fk.data(), p.qkvg.data(), m.view(), static_cast<int>(all.size()),
                               r.pool.data(), p.y_add.empty() ? nullptr : p.y_add.data(), y.data()));
  r.y = ToFloat(y);
  return r;
}

// The problem on the GPU as a series of launches: launch i covers, for the sequences `which`,
// the tokens from the sequence's split point splits[i][n] (0 for the first launch) to the next
// (the sequence's end after the last). The state stays in the device pool between launches.
class Gpu {
 public:
  // split, form: ChunkedPrefillArgs::split and form (0, kAuto: the kernel's choice). Two-pass
  // scratch for any launch of the problem's sequences is always there.
  explicit Gpu(const Problem& p, int split = 0, ChunkedForm form = ChunkedForm::kAuto)
      : p_(p), split_(split), form_(form), scratch_chunks_(TwoPassChunks(p.rows(), static_cast<int>(p.seqs.size()))),
        fq_(p.fq), fk_(p.fk), qkvg_(p.qkvg), y_add_(p.y_add.empty() ? std::vector<float>{0.f} : p.y_add),
        pool_(p.pool), y_(static_cast<size_t>(p.rows()) * p.heads * kD),
        scratch_(TwoPassScratchBytes(p.dims(), scratch_chunks_)) {
    y_.Poison();  // NaN: a row the kernel does not write fails the comparison
    scratch_.Poison();  // and so does a chunk state the scan does not write
  }

  // One launch over tokens [from[i], to[i]) of sequence which[i].
  void Launch(const std::vector<int>& which, const std::vector<int>& from, const std::vector<int>& to) {
    std::vector<int> count(which.size());
    for (size_t i = 0; i < which.size(); ++i) count[i] = to[i] - from[i];
    const Meta m = MakeMeta(p_, which, from, count);
    DeviceVec<int32_t> slot(m.slot), first_row(m.first_row), num_tokens(m.num_tokens), first_pos(m.first_pos);
    const SeqMeta seqs{slot.get(), first_row.get(), num_tokens.get(), first_pos.get()};
    ChunkedPrefillArgs a = Args(p_, fq_.get(), fk_.get(), qkvg_.get(), seqs, static_cast<int>(which.size()),
                                pool_.get(), p_.y_add.empty() ? nullptr : y_add_.get(), y_.get());
    a.split = split_, a.form = form_;
    a.scratch = scratch_.get(), a.scratch_chunks = scratch_chunks_;
    for (int c : count) a.total_tokens += c;
    ASSERT_EQ(LizardChunkedPrefill(a, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

  // The sequences `which` in launches cut at the given positions of each (relative to its first
  // token; each cut list increasing).
  void Run(const std::vector<int>& which, const std::vector<std::vector<int>>& cuts) {
    size_t launches = 0;
    for (const auto& c : cuts) launches = std::max(launches, c.size() + 1);
    for (size_t l = 0; l < launches; ++l) {
      std::vector<int> from, to;
      for (size_t i = 0; i < which.size(); ++i) {
        const std::vector<int>& c = cuts[i];
        const int len = p_.seqs[which[i]].len;
        from.push_back(l == 0 ? 0 : l - 1 < c.size() ? c[l - 1] : len);
        to.push_back(l < c.size() ? c[l] : len);
      }
      Launch(which, from, to);
    }
  }

  Result Get() const { return {ToFloat(y_.Download()), pool_.Download()}; }

 private:
  const Problem& p_;
  const int split_;
  const ChunkedForm form_;
  const int scratch_chunks_;
  DeviceVec<__nv_bfloat16> fq_, fk_;
  DeviceVec<float> qkvg_, y_add_;
  DeviceVec<char> pool_;
  DeviceVec<__nv_bfloat16> y_;
  DeviceVec<char> scratch_;
};

Result RunGpu(const Problem& p, int split = 0, ChunkedForm form = ChunkedForm::kAuto) {
  Gpu gpu(p, split, form);
  gpu.Run(All(p), std::vector<std::vector<int>>(p.seqs.size()));
  return gpu.Get();
}

// A slot's S and z (as floats) from a pool image.
void SlotState(const Problem& p, const std::vector<char>& pool, int slot, std::vector<float>& s, std::vector<float>& z) {
  const LizardStateRef ref = p.state_ref(nullptr);
  const int64_t ns = int64_t{p.heads} * p.f2 * kD, nz = int64_t{p.heads} * p.f2;
  auto get = [&](int64_t off, int64_t i) {
    const char* base = pool.data() + slot * ref.slot_bytes + off;
    return p.state_type == StoreType::kF32 ? reinterpret_cast<const float*>(base)[i]
                                           : __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
  };
  s.resize(ns), z.resize(nz);
  for (int64_t i = 0; i < ns; ++i) s[i] = get(ref.s_offset, i);
  for (int64_t i = 0; i < nz; ++i) z[i] = get(ref.z_offset, i);
}

// y per sequence and each sequence's final state within tolerance of `want`.
void ExpectClose(const Problem& p, const Result& got, const Result& want, const std::string& what) {
  const int64_t row = int64_t{p.heads} * kD;
  for (size_t n = 0; n < p.seqs.size(); ++n) {
    const Seq& s = p.seqs[n];
    const int64_t a = p.first_row[n] * row, b = p.first_row[n + 1] * row;
    EXPECT_LE(RelError(got.y.data() + a, want.y.data() + a, b - a), kTolY)
        << what << ": y of sequence " << n << " (" << s.len << " tokens from position " << s.pos << ")";
    if (s.slot < 0) continue;
    std::vector<float> gs, gz, ws, wz;
    SlotState(p, got.pool, s.slot, gs, gz);
    SlotState(p, want.pool, s.slot, ws, wz);
    EXPECT_LE(RelError(gs, ws), kTolState) << what << ": final S of sequence " << n;
    EXPECT_LE(RelError(gz, wz), kTolState) << what << ": final z of sequence " << n;
  }
}

// Lengths 1, 7, 64, 65, 300 from positions 0 and not multiples of 64, in shuffled slots, and
// a padding sequence (zero rows).
const std::vector<Seq> kVarlen = {{1, 0, 3}, {7, 37, 0}, {64, 100, 4}, {65, 0, 1}, {300, 37, 2}, {3, 0, -1}, {300, 100, 5}};

std::string Name(const Options& o) {
  return "2F=" + std::to_string(o.f2) + " G=" + std::to_string(o.heads / o.kv_heads) +
         (o.state_type == StoreType::kF32 ? " f32 state" : " bf16 state") +
         (o.normalize ? " normalized" : " unnormalized") + (o.with_y_add ? " with y_add" : "");
}

// The default options at 2F = 128 and 256, each with fp32 and bf16 state.
std::vector<Options> F2AndStateTypes() {
  std::vector<Options> all;
  for (int f2 : {128, 256}) {
    for (StoreType type : {StoreType::kF32, StoreType::kBF16}) {
      Options o;
      o.f2 = f2, o.state_type = type;
      all.push_back(o);
    }
  }
  return all;
}

TEST(LizardChunkedTest, VarlenMatchesReference) {
  uint32_t seed = 100;
  for (Options o : F2AndStateTypes()) {
    for (bool normalize : {true, false}) {
      for (int kv_heads : {2, 8}) {  // G = 4 and 1
        o.normalize = normalize, o.kv_heads = kv_heads, o.with_y_add = normalize;
        const Problem p = MakeProblem(kVarlen, o, ++seed);
        ExpectClose(p, RunGpu(p), RunRef(p), Name(o));
      }
    }
  }
}

// H = 6: qkvg rows of an odd number of float pairs (v copied 4 bytes at a time), G = 3.
TEST(LizardChunkedTest, UnalignedRowsMatchReference) {
  for (StoreType type : {StoreType::kF32, StoreType::kBF16}) {
    Options o;
    o.heads = 6, o.kv_heads = 2, o.state_type = type;
    const Problem p = MakeProblem(kVarlen, o, 150);
    ASSERT_NE(p.ld() % 4, 0);
    ExpectClose(p, RunGpu(p), RunRef(p), Name(o));
  }
}

// Gates near 0 (logit -8: the state forgets almost everything every token) and near 1 (+8), and
// both mixed token by token: chunk-local decay must neither overflow nor lose the state.
TEST(LizardChunkedTest, StrongDecay) {
  struct Gates {
    float lo, hi;
    const char* name;
  };
  for (const Gates& gates : {Gates{-8.f, -8.f, "gate logits -8"}, Gates{8.f, 8.f, "gate logits +8"},
                             Gates{-8.f, 8.f, "gate logits in [-8, 8]"}}) {
    for (Options o : F2AndStateTypes()) {
      o.gate_lo = gates.lo, o.gate_hi = gates.hi;
      const Problem p = MakeProblem(kVarlen, o, 200 + o.f2);
      ExpectClose(p, RunGpu(p), RunRef(p), std::string(gates.name) + ", " + Name(o));
    }
  }
}

// Cuts at absolute multiples of kGlaChunk (what the scheduler does): the launches give the bits
// of one launch, y and the stored state alike, with the state stored (rounded) in between.
TEST(LizardChunkedTest, SplitAtChunkBoundariesIsBitwise) {
  for (const Options& o : F2AndStateTypes()) {
    const Problem p = MakeProblem(kVarlen, o, 300 + o.f2);
    const Result one = RunGpu(p);
    // Cuts (relative to the first token) at the absolute positions 128 of {64 from 100}, 64 of
    // {65 from 0}, 64, 128, 256 of {300 from 37}, 128, 256, 384 of {300 from 100}.
    Gpu gpu(p);
    gpu.Run(All(p), {{}, {}, {28}, {64}, {27, 91, 219}, {}, {28, 156, 284}});
    const Result cut = gpu.Get();
    EXPECT_EQ(std::memcmp(cut.y.data(), one.y.data(), one.y.size() * sizeof(float)), 0) << Name(o) << ": y";
    EXPECT_EQ(cut.pool, one.pool) << Name(o) << ": the stored states";
  }
}

// Cuts inside chunks (a sequence continuing mid-chunk, as after decode steps) stay within
// tolerance of one launch.
TEST(LizardChunkedTest, SplitInsideChunksIsClose) {
  for (const Options& o : F2AndStateTypes()) {
    const Problem p = MakeProblem(kVarlen, o, 400 + o.f2);
    Gpu gpu(p);
    gpu.Run(All(p), {{}, {3}, {1, 63}, {30}, {1, 100, 101}, {1}, {200}});
    ExpectClose(p, gpu.Get(), RunGpu(p), "cuts inside chunks, " + Name(o));
  }
}

// A sequence's y rows and stored state have the same bits alone in a launch as with others.
TEST(LizardChunkedTest, OtherSequencesChangeNoBits) {
  for (StoreType type : {StoreType::kF32, StoreType::kBF16}) {
    Options o;
    o.f2 = 256, o.state_type = type;
    const Problem p = MakeProblem(kVarlen, o, 500);
    const Result together = RunGpu(p);
    const LizardStateRef ref = p.state_ref(nullptr);
    const int64_t row = int64_t{p.heads} * kD;
    for (int n : {1, 4}) {
      Gpu gpu(p);
      gpu.Run({n}, {{}});
      const Result alone = gpu.Get();
      const int64_t a = p.first_row[n] * row, b = p.first_row[n + 1] * row;
      EXPECT_EQ(std::memcmp(alone.y.data() + a, together.y.data() + a, (b - a) * sizeof(float)), 0)
          << Name(o) << ": y of sequence " << n;
      const int64_t slot = p.seqs[n].slot;
      EXPECT_TRUE(std::equal(alone.pool.begin() + slot * ref.slot_bytes, alone.pool.begin() + (slot + 1) * ref.slot_bytes,
                             together.pool.begin() + slot * ref.slot_bytes))
          << Name(o) << ": state of sequence " << n;
    }
  }
}

// y, S and z have the same bits with the value columns split over 1, 2 or 4 blocks per (sequence,
// head), normalised or not.
TEST(LizardChunkedTest, SplitsAreBitwiseEqual) {
  for (Options o : F2AndStateTypes()) {
    for (bool normalize : {true, false}) {
      o.normalize = normalize, o.with_y_add = normalize;
      const Problem p = MakeProblem(kVarlen, o, 700 + o.f2);
      const Result one = RunGpu(p, 1, ChunkedForm::kOnePass);
      for (int split : {2, 4}) {
        const Result got = RunGpu(p, split, ChunkedForm::kOnePass);
        EXPECT_EQ(std::memcmp(got.y.data(), one.y.data(), one.y.size() * sizeof(float)), 0)
            << Name(o) << ", split " << split << ": y";
        EXPECT_EQ(got.pool, one.pool) << Name(o) << ", split " << split << ": the stored states";
      }
    }
  }
}

// One 2048-token prompt alone (the launch the backend splits most, two-pass by the kernel's
// choice): within tolerance of the reference, and the bits of one block per (sequence, head).
TEST(LizardChunkedTest, OneLongSequence) {
  for (const Options& o : F2AndStateTypes()) {
    const Problem p = MakeProblem({{2048, 0, 0}}, o, 800 + o.f2);
    const Result got = RunGpu(p);
    ExpectClose(p, got, RunRef(p), "one 2048-token sequence, " + Name(o));
    const Result one = RunGpu(p, 1, ChunkedForm::kOnePass);
    EXPECT_EQ(std::memcmp(got.y.data(), one.y.data(), one.y.size() * sizeof(float)), 0) << Name(o) << ": y";
    EXPECT_EQ(got.pool, one.pool) << Name(o) << ": the stored state";
  }
}

// The two-pass form gives the one-pass form's bits: y, and S and z in the pool. `what` names the case.
void ExpectFormsEqual(const Problem& p, const std::string& what) {
  const Result one = RunGpu(p, 0, ChunkedForm::kOnePass);
  const Result two = RunGpu(p, 0, ChunkedForm::kTwoPass);
  EXPECT_EQ(std::memcmp(two.y.data(), one.y.data(), one.y.size() * sizeof(float)), 0) << what << ": y";
  EXPECT_EQ(two.pool, one.pool) << what << ": the stored states";
}

// Random sequences: 1-4 of 1-700 tokens from positions 0-300 (mostly mid-chunk), sometimes
// a padding one.
std::vector<Seq> RandomSeqs(std::mt19937& rng) {
  std::uniform_int_distribution<int> count(1, 4), len(1, 700), pos(0, 300), coin(0, 3);
  std::vector<Seq> seqs;
  const int n = count(rng);
  for (int i = 0; i < n; ++i) seqs.push_back({len(rng), pos(rng), i});
  std::shuffle(seqs.begin(), seqs.end(), rng);  // slots out of order
  if (coin(rng) == 0) seqs.insert(seqs.begin() + coin(rng) % (n + 1), Seq{len(rng) % 100 + 1, 0, -1});
  return seqs;
}

// Two-pass == one-pass bit for bit: fp32 and bf16 state, 2F = 128 and 256, normalised or not,
// G = 4 and 1, gates from mild to strong decay, on kVarlen and random varlen problems; a
// 2048-token sequence from mid-chunk; H = 6 (v copied 4 bytes at a time); and a problem cut into
// launches at chunk boundaries with the two-pass form against one one-pass launch.
TEST(LizardChunkedTest, TwoPassIsBitwiseEqual) {
  struct Gates {
    float lo, hi;
  };
  std::mt19937 rng(1000);
  uint32_t seed = 1000;
  for (Options o : F2AndStateTypes()) {
    for (const Gates& gates : {Gates{-2.f, 6.f}, Gates{-8.f, 8.f}, Gates{-8.f, -8.f}}) {
      for (bool normalize : {true, false}) {
        o.normalize = normalize, o.with_y_add = normalize, o.gate_lo = gates.lo, o.gate_hi = gates.hi;
        o.kv_heads = normalize ? 2 : 8;
        const std::string name = Name(o) + ", gates [" + std::to_string(gates.lo) + ", " + std::to_string(gates.hi) + "]";
        ExpectFormsEqual(MakeProblem(kVarlen, o, ++seed), "kVarlen, " + name);
        const std::vector<Seq> seqs = RandomSeqs(rng);
        std::string lens;
        for (const Seq& q : seqs) lens += " " + std::to_string(q.len) + "@" + std::to_string(q.pos);
        ExpectFormsEqual(MakeProblem(seqs, o, ++seed), "random" + lens + ", " + name);
      }
    }
  }
  for (const Options& o : F2AndStateTypes()) {
    ExpectFormsEqual(MakeProblem({{2048, 37, 0}}, o, ++seed), "2048 tokens from 37, " + Name(o));
    Options h6 = o;
    h6.heads = 6, h6.kv_heads = 2;
    ExpectFormsEqual(MakeProblem(kVarlen, h6, ++seed), "H=6, " + Name(h6));
    const Problem p = MakeProblem(kVarlen, o, ++seed);
    Gpu gpu(p, 0, ChunkedForm::kTwoPass);
    gpu.Run(All(p), {{}, {}, {28}, {64}, {27, 91, 219}, {}, {28, 156, 284}});
    const Result cut = gpu.Get(), one = RunGpu(p, 0, ChunkedForm::kOnePass);
    EXPECT_EQ(std::memcmp(cut.y.data(), one.y.data(), one.y.size() * sizeof(float)), 0) << Name(o) << ": cut, y";
    EXPECT_EQ(cut.pool, one.pool) << Name(o) << ": cut, the stored states";
  }
}

// Shapes outside the prefill path (F = 48, D = 64): both kernels refuse them.
TEST(LizardChunkedTest, RejectsUnsupportedShapes) {
  for (auto [features, head_dim] : {std::pair{48, 128}, std::pair{64, 64}}) {
    LizardDims dims;
    dims.heads = 4, dims.kv_heads = 2, dims.head_dim = head_dim, dims.features = features;
    ChunkedPrefillArgs args;
    args.dims = dims, args.num_seqs = 1;
    PrefillFeatureMapsArgs maps;
    maps.dims = dims, maps.rows = 1;
    EXPECT_EQ(LizardChunkedPrefill(args, nullptr), cudaErrorInvalidValue) << "F=" << features << " D=" << head_dim;
    EXPECT_EQ(LizardPrefillFeatureMaps(maps, nullptr), cudaErrorInvalidValue) << "F=" << features << " D=" << head_dim;
  }
  ChunkedPrefillArgs args;  // and a column split other than 1, 2 or 4
  args.num_seqs = 1, args.dims.heads = 4, args.dims.kv_heads = 2, args.dims.head_dim = 128, args.dims.features = 64;
  args.split = 3;
  EXPECT_EQ(LizardChunkedPrefill(args, nullptr), cudaErrorInvalidValue);
  args.split = 0, args.form = ChunkedForm::kTwoPass;  // and the two-pass form without scratch
  args.total_tokens = 64;
  EXPECT_EQ(LizardChunkedPrefill(args, nullptr), cudaErrorInvalidValue);
}

// LizardPrefillFeatureMaps: one problem of `rows` qkvg rows with random maps and biases.
struct MapsProblem {
  int heads = 8, kv_heads = 2, features = 128, rows = 0;
  bool bias = true;
  std::vector<float> qkvg, fmap_q, fmap_k, q_bias, k_bias;
  int ld() const { return heads * kD + 2 * kv_heads * kD + heads; }
  LizardDims dims() const {
    LizardDims d;
    d.heads = heads, d.kv_heads = kv_heads, d.head_dim = kD, d.features = features;
    return d;
  }
};

// q and k in [-2, 2] and maps in [-0.25, 0.25]: logits of a few units (up to ~8), as trained
// maps give, where the exponentials are sensitive to their errors.
MapsProblem MakeMapsProblem(int heads, int kv_heads, int features, int rows, bool bias, uint32_t seed) {
  std::mt19937 rng(seed);
  MapsProblem p;
  p.heads = heads, p.kv_heads = kv_heads, p.features = features, p.rows = rows, p.bias = bias;
  p.qkvg = gputest::Uniform(rng, int64_t{rows} * p.ld(), -2.f, 2.f);
  p.fmap_q = gputest::Uniform(rng, int64_t{heads} * kD * features, -0.25f, 0.25f);
  p.fmap_k = gputest::Uniform(rng, int64_t{heads} * kD * features, -0.25f, 0.25f);
  p.q_bias = gputest::Uniform(rng, heads * features, -1.f, 1.f);
  p.k_bias = gputest::Uniform(rng, heads * features, -1.f, 1.f);
  return p;
}

struct MapsResult {
  std::vector<float> logits;
  std::vector<__nv_bfloat16> fq, fk;
};

// One launch over rows [first, first + n) of the problem (the pointers offset as forward.cc
// offsets them past a step's decode rows).
MapsResult RunMaps(const MapsProblem& p, int first, int n) {
  const int64_t H = p.heads, F = p.features;
  const std::vector<float> rows(p.qkvg.begin() + int64_t{first} * p.ld(), p.qkvg.begin() + int64_t{first + n} * p.ld());
  DeviceVec<float> qkvg(rows), fmap_q(p.fmap_q), fmap_k(p.fmap_k), q_bias(p.q_bias), k_bias(p.k_bias);
  DeviceVec<float> logits(n * 2 * H * F);
  DeviceVec<__nv_bfloat16> fq(n * H * 2 * F), fk(n * H * 2 * F);
  logits.Poison(), fq.Poison(), fk.Poison();
  PrefillFeatureMapsArgs a;
  a.dims = p.dims();
  a.qkvg = qkvg.get(), a.ld = p.ld(), a.rows = n;
  a.fmap_q = fmap_q.get(), a.fmap_k = fmap_k.get();
  if (p.bias) a.q_bias = q_bias.get(), a.k_bias = k_bias.get();
  a.fq = fq.get(), a.fk = fk.get(), a.logits = logits.get();
  EXPECT_EQ(LizardPrefillFeatureMaps(a, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {logits.Download(), fq.Download(), fk.Download()};
}

// Against the float64 reference: the logits within 1e-5 of the largest |logit| (printed; measured
// 1.1-1.5e-6 on the H200, where the tensor cores' fp32 accumulation dominates the 3xTF32 error),
// and every map value within bf16 rounding of the float64 value (half a bf16 ulp, 2^-8 relative,
// plus 2e-5 for the fp32 logits and __expf).
// H = 6 gives qkvg rows of an odd number of float pairs (4-byte copies), G = 3.
TEST(LizardChunkedTest, FeatureMapsMatchFloat64) {
  struct Shape {
    int heads, kv_heads;
  };
  uint32_t seed = 600;
  for (const Shape& shape : {Shape{8, 2}, Shape{6, 2}}) {
    for (int F : {64, 128}) {
      for (bool bias : {false, true}) {
        const MapsProblem p = MakeMapsProblem(shape.heads, shape.kv_heads, F, 300, bias, ++seed);
        const std::string what = "H=" + std::to_string(p.heads) + " F=" + std::to_string(F) + (bias ? " bias" : "");
        const MapsResult got = RunMaps(p, 0, p.rows);
        const int64_t n_logits = int64_t{p.rows} * 2 * p.heads * F, n_maps = int64_t{p.rows} * p.heads * 2 * F;
        std::vector<double> logits(n_logits), fq(n_maps), fk(n_maps);
        PrefillFeatureMapsArgs a;
        a.dims = p.dims();
        a.qkvg = p.qkvg.data(), a.ld = p.ld(), a.rows = p.rows;
        a.fmap_q = p.fmap_q.data(), a.fmap_k = p.fmap_k.data();
        if (bias) a.q_bias = p.q_bias.data(), a.k_bias = p.k_bias.data();
        LizardPrefillFeatureMapsRef(a, logits.data(), fq.data(), fk.data());

        double err = 0.0, scale = 0.0;
        for (int64_t e = 0; e < n_logits; ++e) {
          err = std::isnan(got.logits[e]) ? INFINITY : std::max(err, std::abs(got.logits[e] - logits[e]));
          scale = std::max(scale, std::abs(logits[e]));
        }
        std::printf("%s: max |logit error| %.3g of max |logit| %.3g: %.3g relative\n", what.c_str(), err, scale,
                    err / scale);
        EXPECT_LE(err / scale, 1e-5) << what << ": logits";
        for (auto [maps, want, name] : {std::tuple{&got.fq, &fq, "fq"}, std::tuple{&got.fk, &fk, "fk"}}) {
          int64_t bad = 0;
          double worst = 0.0;
          for (int64_t e = 0; e < n_maps; ++e) {
            const double g = __bfloat162float((*maps)[e]), w = (*want)[e];
            const double rel = std::abs(g - w) / w;  // w > 0; NaN fails below
            if (!(rel <= 0x1p-8 + 2e-5)) ++bad;
            worst = std::max(worst, rel);
          }
          EXPECT_EQ(bad, 0) << what << ": " << name << " values off their float64 value by more than bf16 rounding"
                            << " (worst " << worst << " relative)";
        }
      }
    }
  }
}

// A row's fq, fk (and logits) have the same bits in launches of 2048, 37 and 1 rows, wherever the
// row sits in its launch's 64-row tiles.
TEST(LizardChunkedTest, FeatureMapsRowsBitwiseInvariant) {
  for (int F : {64, 128}) {
    const MapsProblem p = MakeMapsProblem(8, 2, F, 2048, true, 700 + F);
    const MapsResult all = RunMaps(p, 0, p.rows);
    const int64_t map_row = int64_t{p.heads} * 2 * F;  // per row, fq and fk alike; logits too
    struct Part {
      int first, n;
    };
    for (const Part& part : {Part{0, 37}, Part{100, 37}, Part{2011, 37}, Part{1000, 1}, Part{63, 1}}) {
      const MapsResult sub = RunMaps(p, part.first, part.n);
      const std::string what = "F=" + std::to_string(F) + ": rows " + std::to_string(part.first) + " .. +" +
                               std::to_string(part.n);
      const int64_t at = part.first * map_row, n = part.n * map_row;
      EXPECT_EQ(std::memcmp(sub.fq.data(), all.fq.data() + at, n * sizeof(__nv_bfloat16)), 0) << what << ": fq";
      EXPECT_EQ(std::memcmp(sub.fk.data(), all.fk.data() + at, n * sizeof(__nv_bfloat16)), 0) << what << ": fk";
      EXPECT_EQ(std::memcmp(sub.logits.data(), all.logits.data() + at, n * sizeof(float)), 0) << what << ": logits";
    }
  }
}

}  // namespace
}  // namespace lizard::kernels
