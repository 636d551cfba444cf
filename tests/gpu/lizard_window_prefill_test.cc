// LizardWindowPrefill (kernels/lizard_attention/window_prefill.h) against its CPU reference
// (float64, window_prefill_ref.h) on random inputs: sequences of 1 ... 1000 tokens in one launch,
// starting at position 0 or later (random ring contents, bf16 and fp32 rings), windows of 128,
// 64, 100 and 512, 4 sinks or none, GQA groups of 4, 2 and 1, window RoPE on and off.
// Invariance, bit for bit: a prompt in two launches cut at an absolute multiple of 64 (the ring
// updated in between) equals one launch, and a sequence alone equals it among others.
//
// Tolerance: q, k, v and the probabilities enter the tensor cores as bf16 (fp32 accumulation),
// so each output row (token, head) may differ from the reference by up to 2e-2 of the row's max
// |y| (measured errors are printed).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/lizard_attention/window_prefill.h"
#include "kernels/lizard_attention/window_prefill_ref.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::kernels {
namespace {

using gputest::DeviceVec;
using gputest::RequireGpu;

const auto* const kRequireGpu = ::testing::AddGlobalTestEnvironment(new RequireGpu);

constexpr double kTolRow = 2e-2;
constexpr int kD = 128;

struct Case {
  int heads, kv_heads, window, meta;
  bool rope;
  StoreType window_type;
  std::vector<int> lengths, first_pos;
  uint32_t seed;
};

// Host inputs laid out as the backend has them: q and v inside qkvg rows, rotated keys apart.
struct Problem {
  Case c;
  int ld = 0, k_ld = 0, rows = 0;
  std::vector<float> qkvg, krot, meta_logits, window_factor;
  std::vector<double> inv_freq;
  std::vector<char> pool;  // one slot per sequence: the K ring, then the V ring
  int64_t slot_bytes = 0, k_offset = 0, v_offset = 0;
  std::vector<int32_t> slot, first_row, num_tokens, first_pos;

  int num_seqs() const { return static_cast<int>(c.lengths.size()); }
  int64_t elem() const { return c.window_type == StoreType::kF32 ? 4 : 2; }
};

// Stores x at `at` as a ring of type `type` holds it.
void StoreRingValue(char* at, float x, StoreType type) {
  if (type == StoreType::kF32) {
    std::memcpy(at, &x, 4);
  } else {
    const __nv_bfloat16 b = __float2bfloat16(x);
    std::memcpy(at, &b, 2);
  }
}

Problem MakeProblem(const Case& c) {
  std::mt19937 rng(c.seed);
  Problem p;
  p.c = c;
  const int H = c.heads, Hkv = c.kv_heads;
  p.ld = H * kD + 2 * Hkv * kD + H;  // q | k | v | gate, as the qkvg GEMM writes them
  p.k_ld = Hkv * kD;
  for (int len : c.lengths) p.rows += len;
  p.qkvg = gputest::Uniform(rng, static_cast<size_t>(p.rows) * p.ld, -2.f, 2.f);
  p.krot = gputest::Uniform(rng, static_cast<size_t>(p.rows) * p.k_ld, -2.f, 2.f);
  p.meta_logits = gputest::Uniform(rng, static_cast<size_t>(H) * c.meta, -1.f, 2.f);
  p.window_factor = gputest::Uniform(rng, H, 0.5f, 1.5f);
  for (int i = 0; i < kD / 2; ++i) p.inv_freq.push_back(std::pow(10000.0, -2.0 * i / kD));
  const int64_t ring_bytes = static_cast<int64_t>(Hkv) * c.window * kD * p.elem();
  p.k_offset = 256;  // something before the rings, as in a real slot
  p.v_offset = p.k_offset + ring_bytes;
  p.slot_bytes = p.v_offset + ring_bytes;
  p.pool.resize(p.slot_bytes * p.num_seqs());
  std::uniform_real_distribution<float> unit(-2.f, 2.f);
  for (int64_t off = 0; off + p.elem() <= static_cast<int64_t>(p.pool.size()); off += p.elem()) {
    StoreRingValue(&p.pool[off], unit(rng), c.window_type);
  }
  int row = 0;
  for (int n = 0; n < p.num_seqs(); ++n) {
    p.slot.push_back(p.num_seqs() - 1 - n);  // slots in another order than the sequences
    p.first_row.push_back(row);
    p.num_tokens.push_back(c.lengths[n]);
    p.first_pos.push_back(c.first_pos[n]);
    row += c.lengths[n];
  }
  return p;
}

// The arguments for `p` with the given pointers and sequence table (host or device).
WindowPrefillArgs Args(const Problem& p, const float* qkvg, const float* krot, const double* inv_freq,
                       const float* meta, const float* factor, char* pool, const SeqMeta& seqs, int num_seqs,
                       int max_tiles, float* y) {
  WindowPrefillArgs a;
  a.dims = LizardDims{p.c.heads, p.c.kv_heads, kD, 64, p.c.window, p.c.meta, p.c.rope, true};
  a.q = qkvg, a.q_ld = p.ld;
  a.k = krot, a.k_ld = p.k_ld;
  a.v = qkvg + (p.c.heads + p.c.kv_heads) * kD, a.v_ld = p.ld;
  a.inv_freq = inv_freq;
  a.seqs = seqs, a.num_seqs = num_seqs, a.max_tiles = max_tiles;
  a.meta_logits = meta, a.window_factor = factor;
  a.state.pool = pool, a.state.slot_bytes = p.slot_bytes;
  a.state.k_offset = p.k_offset, a.state.v_offset = p.v_offset;
  a.state.window_type = p.c.window_type;
  a.y = y;
  return a;
}

std::vector<float> RunRef(const Problem& p) {
  std::vector<float> y(static_cast<size_t>(p.rows) * p.c.heads * kD, NAN);
  std::vector<char> pool = p.pool;
  const SeqMeta seqs{p.slot.data(), p.first_row.data(), p.num_tokens.data(), p.first_pos.data()};
  LizardWindowPrefillRef(Args(p, p.qkvg.data(), p.krot.data(), p.inv_freq.data(), p.meta_logits.data(),
                              p.window_factor.data(), pool.data(), seqs, p.num_seqs(), 0, y.data()));
  return y;
}

// The problem's inputs on the device; Run launches over a sequence table into a y poisoned
// with NaN before the first launch.
struct GpuProblem {
  const Problem& p;
  DeviceVec<float> qkvg, krot, meta, factor, y;
  DeviceVec<double> inv_freq;
  DeviceVec<char> pool;

  explicit GpuProblem(const Problem& prob)
      : p(prob), qkvg(prob.qkvg), krot(prob.krot), meta(prob.meta_logits), factor(prob.window_factor),
        y(static_cast<size_t>(prob.rows) * prob.c.heads * kD), inv_freq(prob.inv_freq), pool(prob.pool) {
    y.Poison();
  }
  void Run(const std::vector<int32_t>& slot, const std::vector<int32_t>& first_row,
           const std::vector<int32_t>& num_tokens, const std::vector<int32_t>& first_pos) {
    DeviceVec<int32_t> d_slot(slot), d_row(first_row), d_num(num_tokens), d_pos(first_pos);
    int max_tiles = 0;
    for (size_t n = 0; n < slot.size(); ++n) {
      if (num_tokens[n] > 0) max_tiles = std::max(max_tiles, WindowPrefillTiles(first_pos[n], num_tokens[n]));
    }
    const SeqMeta seqs{d_slot.get(), d_row.get(), d_num.get(), d_pos.get()};
    const WindowPrefillArgs a = Args(p, qkvg.get(), krot.get(), inv_freq.get(), meta.get(), factor.get(), pool.get(),
                                     seqs, static_cast<int>(slot.size()), max_tiles, y.get());
    ASSERT_EQ(LizardWindowPrefill(a, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
};

// y of one launch over all the sequences of `p`.
std::vector<float> OneLaunch(const Problem& p) {
  GpuProblem gpu(p);
  gpu.Run(p.slot, p.first_row, p.num_tokens, p.first_pos);
  return gpu.y.Download();
}

// Every (row, head) of every sequence within kTolRow of the reference's max |y| in that row.
void ExpectClose(const Problem& p, const std::vector<float>& got, const std::vector<float>& want,
                 const char* what) {
  double worst = 0.0;
  for (int n = 0; n < p.num_seqs(); ++n) {
    for (int r = p.first_row[n]; r < p.first_row[n] + p.num_tokens[n]; ++r) {
      for (int h = 0; h < p.c.heads; ++h) {
        const float* a = got.data() + (static_cast<int64_t>(r) * p.c.heads + h) * kD;
        const float* b = want.data() + (static_cast<int64_t>(r) * p.c.heads + h) * kD;
        double err = 0.0, scale = 1e-30;
        for (int i = 0; i < kD; ++i) {
          err = std::isnan(a[i]) ? INFINITY : std::max(err, std::fabs(static_cast<double>(a[i]) - b[i]));
          scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
        }
        worst = std::max(worst, err / scale);
        if (err > kTolRow * scale) {
          ADD_FAILURE() << what << ": sequence " << n << " (" << p.num_tokens[n] << " tokens from position "
                        << p.first_pos[n] << "), position " << p.first_pos[n] + r - p.first_row[n] << ", head "
                        << h << ": max error " << err << " vs max |y| " << scale;
          return;
        }
      }
    }
  }
  std::printf("%s: worst row error / row max |y| = %.3g\n", what, worst);
}

const std::vector<int> kLengths = {1, 7, 63, 64, 65, 300, 1000};

std::vector<Case> Cases() {
  const std::vector<int> mixed = {0, 200, 0, 64, 3, 100003, 333};  // 0 and later first positions
  return {
      {8, 2, 128, 4, true, StoreType::kBF16, kLengths, mixed, 1},
      {8, 2, 128, 4, false, StoreType::kF32, kLengths, mixed, 2},
      {2, 2, 64, 0, true, StoreType::kBF16, kLengths, mixed, 3},   // G = 1; rows not 16-byte aligned
      {3, 3, 100, 4, true, StoreType::kF32, kLengths, mixed, 4},  // an odd window
      {4, 2, 512, 4, true, StoreType::kBF16, kLengths, mixed, 5},  // G = 2, the largest window
      {8, 2, 128, 0, true, StoreType::kF32, kLengths, std::vector<int>(kLengths.size(), 0), 6},
  };
}

const char* Name(const Case& c) {
  static char buf[160];
  std::snprintf(buf, sizeof(buf), "H=%d Hkv=%d w=%d m=%d rope=%d ring=%s", c.heads, c.kv_heads, c.window, c.meta,
                c.rope, c.window_type == StoreType::kF32 ? "f32" : "bf16");
  return buf;
}

TEST(LizardWindowPrefillTest, MatchesReference) {
  for (const Case& c : Cases()) {
    const Problem p = MakeProblem(c);
    ExpectClose(p, OneLaunch(p), RunRef(p), Name(c));
  }
}

// Each sequence cut at its first absolute multiple of 64 past its first token (where it has
// one): the first part in one launch, the ring updated with its last keys and values (rounded
// as stored), the rest in a second launch. Bit for bit the one-launch result.
TEST(LizardWindowPrefillTest, TwoLaunchesCutAt64EqualOne) {
  for (const Case& c : Cases()) {
    const Problem p = MakeProblem(c);
    const std::vector<float> want = OneLaunch(p);

    Problem cut = p;  // its pool gets the first parts' keys and values
    std::vector<int32_t> num1 = p.num_tokens, row2 = p.first_row, num2(p.num_seqs(), 0), pos2 = p.first_pos;
    for (int n = 0; n < p.num_seqs(); ++n) {
      const int split = (p.first_pos[n] / 64 + 1) * 64;  // absolute position of the cut
      if (split >= p.first_pos[n] + p.num_tokens[n]) continue;  // no multiple of 64 inside
      num1[n] = split - p.first_pos[n];
      num2[n] = p.num_tokens[n] - num1[n];
      row2[n] = p.first_row[n] + num1[n];
      pos2[n] = split;
    }
    GpuProblem two(p);
    two.Run(p.slot, p.first_row, num1, p.first_pos);
    // The ring as LizardRingWrite leaves it after the first parts.
    for (int n = 0; n < p.num_seqs(); ++n) {
      if (num2[n] == 0) continue;
      for (int j = std::max(p.first_pos[n], pos2[n] - c.window); j < pos2[n]; ++j) {
        const int64_t r = p.first_row[n] + (j - p.first_pos[n]);
        for (int g = 0; g < c.kv_heads; ++g) {
          for (int i = 0; i < kD; ++i) {
            const float kx = p.krot[r * p.k_ld + g * kD + i];
            const float vx = p.qkvg[r * p.ld + (c.heads + c.kv_heads + g) * kD + i];
            const int64_t at = p.slot[n] * p.slot_bytes + ((static_cast<int64_t>(g) * c.window + j % c.window) * kD + i) * p.elem();
            StoreRingValue(&cut.pool[at + p.k_offset], kx, c.window_type);
            StoreRingValue(&cut.pool[at + p.v_offset], vx, c.window_type);
          }
        }
      }
    }
    two.pool.Upload(cut.pool);
    two.Run(p.slot, row2, num2, pos2);
    const std::vector<float> got = two.y.Download();
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << Name(c);
  }
}

// A sequence alone gives the bits it gives among the others.
TEST(LizardWindowPrefillTest, OtherSequencesChangeNothing) {
  for (const Case& c : Cases()) {
    const Problem p = MakeProblem(c);
    const std::vector<float> want = OneLaunch(p);
    for (int n : {4, 6}) {
      GpuProblem alone(p);
      alone.Run({p.slot[n]}, {p.first_row[n]}, {p.num_tokens[n]}, {p.first_pos[n]});
      const std::vector<float> got = alone.y.Download();
      const int64_t row = static_cast<int64_t>(p.c.heads) * kD;
      EXPECT_EQ(std::memcmp(got.data() + p.first_row[n] * row, want.data() + p.first_row[n] * row,
                            p.num_tokens[n] * row * sizeof(float)), 0)
          << Name(c) << ", sequence " << n;
    }
  }
}

TEST(LizardWindowPrefillTest, RejectsUnsupportedShapes) {
  WindowPrefillArgs a;
  a.dims = LizardDims{4, 2, 64, 64, 128, 4, true, true};
  a.num_seqs = 1, a.max_tiles = 1;
  EXPECT_EQ(LizardWindowPrefill(a, nullptr), cudaErrorInvalidValue);  // D = 64
  a.dims.head_dim = 128, a.dims.window = 513;
  EXPECT_EQ(LizardWindowPrefill(a, nullptr), cudaErrorInvalidValue);  // window over 512
}

}  // namespace
}  // namespace lizard::kernels
