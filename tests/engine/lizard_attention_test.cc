// The CPU Lizard attention op's three forms tied together on random inputs: the recurrent
// (decode) and chunked (prefill) forms against the float64 naive form (the spec in code), and
// against each other (within tolerance), over lengths crossing chunk and window boundaries, from
// empty and non-empty states, under strong and weak decay; and the chunked form against itself
// split at aligned positions (bit for bit, the invariance rule of engine/step_plan.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/lizard_attention/chunked.h"
#include "engine/cpu/lizard_attention/naive.h"
#include "engine/cpu/lizard_attention/recurrent.h"

namespace lizard::cpu {
namespace {

constexpr int64_t kHeads = 4, kKvHeads = 2, kDim = 16, kF2 = 16, kWindow = 32, kMeta = 4;

// Relative Frobenius error of float32 results (y, S, z) against the float64 naive form: measured
// at most 4e-7 here (sums over up to 340 tokens); 1e-5 leaves room for other CPUs and libms.
constexpr double kTol = 1e-5;

using Op = void (*)(const LizardAttentionArgs&, LizardSlotState&, float*);

// One sequence's inputs for `length` rows, and a state it runs on.
struct Inputs {
  std::vector<float> fq, fk, gate, q, k, v, meta, factor;
};

struct State {
  std::vector<float> s = std::vector<float>(kHeads * kF2 * kDim, 0.0f);
  std::vector<float> z = std::vector<float>(kHeads * kF2, 0.0f);
  std::vector<float> k = std::vector<float>(kKvHeads * kWindow * kDim, 0.0f);
  std::vector<float> v = std::vector<float>(kKvHeads * kWindow * kDim, 0.0f);
  LizardSlotState view() { return {s.data(), z.data(), k.data(), v.data()}; }
};

// Feature maps are softmax outputs (positive, each half summing to 1), as FeatureMap makes them.
// `gate_mean`: forget-gate logits around it (-1: strong decay, +6: gamma near 1).
Inputs RandomInputs(int64_t length, double gate_mean, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, size_t n, float mean, float scale) {
    x.resize(n);
    for (float& e : x) e = mean + scale * normal(rng);
  };
  Inputs in;
  for (auto* fm : {&in.fq, &in.fk}) {
    fill(*fm, length * kHeads * kF2, 0.0f, 1.0f);
    for (int64_t half = 0; half < length * kHeads * 2; ++half) {
      float* x = fm->data() + half * (kF2 / 2);
      double sum = 0.0;
      for (int64_t i = 0; i < kF2 / 2; ++i) sum += x[i] = std::exp(x[i]);
      for (int64_t i = 0; i < kF2 / 2; ++i) x[i] = static_cast<float>(x[i] / sum);
    }
  }
  fill(in.gate, length * kHeads, static_cast<float>(gate_mean), 1.0f);
  fill(in.q, length * kHeads * kDim, 0.0f, 1.0f);
  fill(in.k, length * kKvHeads * kDim, 0.0f, 1.0f);
  fill(in.v, length * kKvHeads * kDim, 0.0f, 1.0f);
  fill(in.meta, kHeads * kMeta, 0.0f, 1.0f);
  fill(in.factor, kHeads, 0.5f, 0.2f);
  return in;
}

// Rows [begin, end) of `in` at position first_position + begin, KV heads [g0, g1).
LizardAttentionArgs Args(const Inputs& in, int64_t first_position, int64_t begin, int64_t end,
                         bool normalize, int64_t g0 = 0, int64_t g1 = kKvHeads) {
  const LizardAttentionArgs all{
      .length = end,
      .first_position = first_position,
      .num_heads = kHeads,
      .num_kv_heads = kKvHeads,
      .head_dim = kDim,
      .f2 = kF2,
      .window = kWindow,
      .num_meta = kMeta,
      .normalize = normalize,
      .kv_head_begin = g0,
      .kv_head_end = g1,
      .fq = in.fq.data(),
      .fk = in.fk.data(),
      .feature_stride = kHeads * kF2,
      .gate_logit = in.gate.data(),
      .gate_stride = kHeads,
      .q = in.q.data(),
      .q_stride = kHeads * kDim,
      .k = in.k.data(),
      .v = in.v.data(),
      .kv_stride = kKvHeads * kDim,
      .meta_logits = in.meta.data(),
      .window_factor = in.factor.data(),
      .y_stride = kHeads * kDim,
  };
  return SubRows(all, begin, end - begin);
}

double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// y and state after `ops[i]` runs rows [cuts[i], cuts[i+1]) of `in`, from `start`.
struct Result {
  std::vector<float> y;
  State state;
};
Result RunParts(const Inputs& in, int64_t first_position, const State& start,
             const std::vector<int64_t>& cuts, const std::vector<Op>& ops, bool normalize) {
  Result run{std::vector<float>(cuts.back() * kHeads * kDim, 0.0f), start};
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    LizardSlotState view = run.state.view();
    ops[i](Args(in, first_position, cuts[i], cuts[i + 1], normalize), view,
           run.y.data() + cuts[i] * kHeads * kDim);
  }
  return run;
}

void ExpectClose(const Result& got, const Result& want, const std::string& what) {
  EXPECT_LT(RelError(got.y, want.y), kTol) << what << " y";
  EXPECT_LT(RelError(got.state.s, want.state.s), kTol) << what << " S";
  EXPECT_LT(RelError(got.state.z, want.state.z), kTol) << what << " z";
  // The ring holds copies of keys and values: exact.
  EXPECT_EQ(got.state.k, want.state.k) << what << " ring k";
  EXPECT_EQ(got.state.v, want.state.v) << what << " ring v";
}

// A non-empty state: the naive form run over `prefix` random tokens from zeros.
State StateAfter(int64_t prefix, double gate_mean, bool normalize) {
  State state;
  if (prefix == 0) return state;
  const Inputs in = RandomInputs(prefix, gate_mean, 99);
  return RunParts(in, 0, state, {0, prefix}, {LizardAttentionNaive}, normalize).state;
}

TEST(LizardAttentionTest, RecurrentAndChunkedMatchNaive) {
  for (const double gate_mean : {-1.0, 6.0}) {
    for (const bool normalize : {true, false}) {
      for (const int64_t prefix : {0, 5, 40}) {
        const State start = StateAfter(prefix, gate_mean, normalize);
        for (const int64_t length : {1, 2, 31, 32, 33, 63, 64, 65, 100, 129, 300}) {
          const std::string what = testing::PrintToString(
              std::vector<double>{gate_mean, double(normalize), double(prefix), double(length)});
          const Inputs in = RandomInputs(length, gate_mean, 1000 + length);
          const Result want = RunParts(in, prefix, start, {0, length}, {LizardAttentionNaive}, normalize);
          ExpectClose(RunParts(in, prefix, start, {0, length}, {LizardAttentionRecurrent}, normalize),
                      want, "recurrent " + what);
          ExpectClose(RunParts(in, prefix, start, {0, length}, {LizardAttentionChunked}, normalize),
                      want, "chunked " + what);
        }
      }
    }
  }
}

// A prefill then decodes, decodes then a prefill, and prefills cut off-block: each form
// continues from the state the other left (within tolerance: the forms sum in other orders).
TEST(LizardAttentionTest, FormsContinueFromEachOthersStates) {
  for (const double gate_mean : {-1.0, 6.0}) {
    const State start = StateAfter(7, gate_mean, true);
    const Inputs in = RandomInputs(200, gate_mean, 7);
    const Result want = RunParts(in, 7, start, {0, 200}, {LizardAttentionNaive}, true);
    const Op rec = LizardAttentionRecurrent, chk = LizardAttentionChunked;
    ExpectClose(RunParts(in, 7, start, {0, 70, 71, 72, 200}, {chk, rec, rec, chk}, true), want,
                "chunked, recurrent x2, chunked");
    ExpectClose(RunParts(in, 7, start, {0, 3, 100, 130, 200}, {rec, chk, rec, chk}, true), want,
                "recurrent, chunked, recurrent, chunked");
    ExpectClose(RunParts(in, 7, start, {0, 30, 95, 200}, {chk, chk, chk}, true), want,
                "chunked cut at 30 and 95");
  }
}

// Blocks sit at absolute multiples of kLizardChunk, so one call over [p, q) gives the bits of
// calls split at any such multiple (where the scheduler cuts prompts), from unaligned p too.
TEST(LizardAttentionTest, ChunkedSplitAtAlignedPositionsIsBitwiseOneCall) {
  constexpr int64_t kLength = 300;
  for (const double gate_mean : {-1.0, 6.0}) {
    for (const bool normalize : {true, false}) {
      for (const int64_t prefix : {0, 5, 40, 63, 64}) {
        const State start = StateAfter(prefix, gate_mean, normalize);
        const Inputs in = RandomInputs(kLength, gate_mean, 11);
        const Op chk = LizardAttentionChunked;
        const Result whole = RunParts(in, prefix, start, {0, kLength}, {chk}, normalize);
        // Row r is at position prefix + r: the aligned cuts are the rows where that is a
        // multiple of kLizardChunk.
        std::vector<int64_t> aligned;
        for (int64_t r = 1; r < kLength; ++r) {
          if ((prefix + r) % kLizardChunk == 0) aligned.push_back(r);
        }
        ASSERT_GE(aligned.size(), 4u);
        std::vector<std::vector<int64_t>> splits;
        for (int64_t cut : aligned) splits.push_back({0, cut, kLength});
        std::vector<int64_t> every = {0};
        every.insert(every.end(), aligned.begin(), aligned.end());
        every.push_back(kLength);
        splits.push_back(every);
        for (const std::vector<int64_t>& cuts : splits) {
          const Result split =
              RunParts(in, prefix, start, cuts, std::vector<Op>(cuts.size() - 1, chk), normalize);
          const std::string what = testing::PrintToString(cuts) + " prefix " +
                                   std::to_string(prefix) + " gate " + std::to_string(gate_mean);
          EXPECT_EQ(split.y, whole.y) << what;
          EXPECT_EQ(split.state.s, whole.state.s) << what;
          EXPECT_EQ(split.state.z, whole.state.z) << what;
          EXPECT_EQ(split.state.k, whole.state.k) << what;
          EXPECT_EQ(split.state.v, whole.state.v) << what;
        }
      }
    }
  }
}

// Calls on disjoint KV-head ranges (how the backend splits the work over threads) give the
// bits of one call over every head.
TEST(LizardAttentionTest, HeadRangesSplitTheWorkExactly) {
  const State start = StateAfter(20, 0.0, true);
  const Inputs in = RandomInputs(90, 0.0, 3);
  for (const Op op : {Op{LizardAttentionRecurrent}, Op{LizardAttentionChunked}}) {
    const Result whole = RunParts(in, 20, start, {0, 90}, {op}, true);
    Result split{std::vector<float>(90 * kHeads * kDim, 0.0f), start};
    for (int64_t g = 0; g < kKvHeads; ++g) {
      LizardSlotState view = split.state.view();
      op(Args(in, 20, 0, 90, true, g, g + 1), view, split.y.data());
    }
    EXPECT_EQ(split.y, whole.y);
    EXPECT_EQ(split.state.s, whole.state.s);
    EXPECT_EQ(split.state.z, whole.state.z);
    EXPECT_EQ(split.state.k, whole.state.k);
  }
}

}  // namespace
}  // namespace lizard::cpu
