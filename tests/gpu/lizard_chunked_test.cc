// LizardChunkedPrefill (kernels/lizard_attention/chunked_prefill.h) against its CPU reference
// (token by token, float64) on random feature-map-like inputs: many sequences of different
// lengths in one launch, initial states, strong decay, and a prompt split over two calls.
//
// Tolerances: the kernel multiplies bf16 operands (the inputs, and the state and the scores
// rounded to bf16 for the tensor cores) with fp32 accumulation, whose relative error
// ||gpu - ref|| / ||ref|| is expected between 1e-3 and 1e-2; the checks allow 1e-2 for each
// sequence's y and for the final state (S and z).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
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

// Host inputs and states of one problem.
struct Problem {
  int heads = 4, kv_heads = 2, head_dim = 128, f2 = 128;
  std::vector<int32_t> cu_seqlens;
  std::vector<__nv_bfloat16> fq, fk, v;
  std::vector<float> gate_logit, state_s, state_z;

  int tokens() const { return cu_seqlens.back(); }
  int num_seqs() const { return static_cast<int>(cu_seqlens.size()) - 1; }
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

// Gate logits uniform in [gate_lo, gate_hi]. With `with_state`, initial states look like a few
// tokens' worth of history (z > 0, |S| <= z); else zero.
Problem MakeProblem(const std::vector<int>& lengths, int f2, float gate_lo, float gate_hi,
                    bool with_state, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.f2 = f2;
  p.cu_seqlens = {0};
  for (int len : lengths) p.cu_seqlens.push_back(p.cu_seqlens.back() + len);
  const int64_t T = p.tokens(), N = p.num_seqs();
  p.fq = FeatureRows(rng, T * p.heads, f2);
  p.fk = FeatureRows(rng, T * p.heads, f2);
  p.v = gputest::ToBf16(gputest::Uniform(rng, T * p.kv_heads * p.head_dim, -1.f, 1.f));
  p.gate_logit = gputest::Uniform(rng, T * p.heads, gate_lo, gate_hi);
  p.state_s.assign(N * p.heads * f2 * p.head_dim, 0.f);
  p.state_z.assign(N * p.heads * f2, 0.f);
  if (with_state) {
    std::uniform_real_distribution<float> unit(0.f, 1.f);
    for (int64_t row = 0; row < N * p.heads * f2; ++row) {
      const float zi = 16.f / f2 * unit(rng);
      p.state_z[row] = zi;
      for (int d = 0; d < p.head_dim; ++d) p.state_s[row * p.head_dim + d] = zi * (2.f * unit(rng) - 1.f);
    }
  }
  return p;
}

struct Result {
  std::vector<float> y, state_s, state_z;
};

Result RunRef(const Problem& p) {
  Result r{std::vector<float>(), p.state_s, p.state_z};
  std::vector<__nv_bfloat16> y(static_cast<size_t>(p.tokens()) * p.heads * p.head_dim);
  ChunkedPrefillArgs args{p.fq.data(), p.fk.data(), p.v.data(), p.gate_logit.data(), p.cu_seqlens.data(),
                          p.num_seqs(), p.heads, p.kv_heads, p.head_dim, p.f2, true,
                          r.state_s.data(), r.state_z.data(), y.data()};
  LizardChunkedPrefillRef(args);
  r.y = ToFloat(y);
  return r;
}

// One launch over the tokens [first, first + count) of every sequence of `p` (count[n] each),
// continuing from (and updating) the device states.
void RunGpuPart(const Problem& p, const std::vector<int>& first, const std::vector<int>& count,
                DeviceVec<float>& state_s, DeviceVec<float>& state_z, std::vector<float>& y_all) {
  const int H = p.heads, K = p.f2, D = p.head_dim, Hkv = p.kv_heads;
  std::vector<int32_t> cu = {0};
  std::vector<__nv_bfloat16> fq, fk, v;
  std::vector<float> gate;
  for (int n = 0; n < p.num_seqs(); ++n) {
    cu.push_back(cu.back() + count[n]);
    const int64_t t0 = p.cu_seqlens[n] + first[n], t1 = t0 + count[n];
    fq.insert(fq.end(), p.fq.begin() + t0 * H * K, p.fq.begin() + t1 * H * K);
    fk.insert(fk.end(), p.fk.begin() + t0 * H * K, p.fk.begin() + t1 * H * K);
    v.insert(v.end(), p.v.begin() + t0 * Hkv * D, p.v.begin() + t1 * Hkv * D);
    gate.insert(gate.end(), p.gate_logit.begin() + t0 * H, p.gate_logit.begin() + t1 * H);
  }
  DeviceVec<__nv_bfloat16> d_fq(fq), d_fk(fk), d_v(v), d_y(static_cast<size_t>(cu.back()) * H * D);
  DeviceVec<float> d_gate(gate);
  DeviceVec<int32_t> d_cu(cu);
  d_y.Poison();  // NaN: a row the kernel does not write fails the comparison
  ChunkedPrefillArgs args{d_fq.get(), d_fk.get(), d_v.get(), d_gate.get(), d_cu.get(), p.num_seqs(),
                          H, Hkv, D, K, true, state_s.get(), state_z.get(), d_y.get()};
  ASSERT_EQ(LizardChunkedPrefill(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = ToFloat(d_y.Download());
  for (int n = 0; n < p.num_seqs(); ++n) {
    const int64_t dst = (p.cu_seqlens[n] + first[n]) * static_cast<int64_t>(H) * D;
    std::copy(y.begin() + cu[n] * H * D, y.begin() + cu[n + 1] * H * D, y_all.begin() + dst);
  }
}

// The whole problem on the GPU, each sequence split at split[n] into two launches (split[n] = 0:
// one launch).
Result RunGpu(const Problem& p, const std::vector<int>& split) {
  DeviceVec<float> state_s(p.state_s), state_z(p.state_z);
  Result r;
  r.y.assign(static_cast<size_t>(p.tokens()) * p.heads * p.head_dim, NAN);
  std::vector<int> zero(p.num_seqs(), 0), rest(p.num_seqs());
  for (int n = 0; n < p.num_seqs(); ++n) rest[n] = p.cu_seqlens[n + 1] - p.cu_seqlens[n] - split[n];
  if (*std::max_element(split.begin(), split.end()) > 0) RunGpuPart(p, zero, split, state_s, state_z, r.y);
  RunGpuPart(p, split, rest, state_s, state_z, r.y);
  r.state_s = state_s.Download();
  r.state_z = state_z.Download();
  return r;
}

// y per sequence, and the final states, within tolerance of `want`.
void ExpectClose(const Problem& p, const Result& got, const Result& want, const char* what) {
  const int64_t row = static_cast<int64_t>(p.heads) * p.head_dim;
  for (int n = 0; n < p.num_seqs(); ++n) {
    const int64_t a = p.cu_seqlens[n] * row, b = p.cu_seqlens[n + 1] * row;
    EXPECT_LE(RelError(got.y.data() + a, want.y.data() + a, b - a), kTolY)
        << what << ": y of sequence " << n << " (" << p.cu_seqlens[n + 1] - p.cu_seqlens[n] << " tokens)";
  }
  EXPECT_LE(RelError(got.state_s, want.state_s), kTolState) << what << ": final S";
  EXPECT_LE(RelError(got.state_z, want.state_z), kTolState) << what << ": final z";
}

const std::vector<int> kVarlen = {1, 7, 64, 65, 300};

TEST(LizardChunkedTest, VarlenMatchesReference) {
  for (int f2 : {128, 256}) {
    for (bool with_state : {false, true}) {
      const Problem p = MakeProblem(kVarlen, f2, -2.f, 6.f, with_state, 100 + f2 + with_state);
      ExpectClose(p, RunGpu(p, std::vector<int>(kVarlen.size(), 0)), RunRef(p),
                  with_state ? "varlen, initial state" : "varlen, zero state");
    }
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
    for (int f2 : {128, 256}) {
      const Problem p = MakeProblem(kVarlen, f2, gates.lo, gates.hi, true, 200 + f2);
      ExpectClose(p, RunGpu(p, std::vector<int>(kVarlen.size(), 0)), RunRef(p), gates.name);
    }
  }
}

// A prompt in two launches, the state carried on the device, equals the prompt in one launch.
// The splits fall inside chunks and at chunk boundaries.
TEST(LizardChunkedTest, TwoCallsEqualOne) {
  for (int f2 : {128, 256}) {
    const Problem p = MakeProblem(kVarlen, f2, -1.f, 5.f, true, 300 + f2);
    const Result one = RunGpu(p, std::vector<int>(kVarlen.size(), 0));
    const Result two = RunGpu(p, {0, 3, 64, 1, 129});
    ExpectClose(p, two, one, "two calls vs one");
  }
}

TEST(LizardChunkedTest, RejectsUnsupportedShapes) {
  ChunkedPrefillArgs args;
  args.num_seqs = 1, args.heads = 4, args.kv_heads = 2, args.head_dim = 128, args.f2 = 96;
  EXPECT_EQ(LizardChunkedPrefill(args, nullptr), cudaErrorInvalidValue);
  args.f2 = 128, args.head_dim = 64;
  EXPECT_EQ(LizardChunkedPrefill(args, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace lizard::kernels
