#include "engine/sampling/sampler.h"

#include <gtest/gtest.h>

#include "kernels/philox.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

namespace lizard {
namespace {

// One row through the whole sampler.
int32_t Sample(std::span<const float> x, const SamplingParams& params,
               const TokenHistory* history = nullptr, uint64_t seed = 0, uint64_t step = 0,
               int32_t logprobs = 0, TokenLogprobs* out = nullptr) {
  return SampleToken(x, {params, seed, step, logprobs, history}, out);
}

std::vector<float> RandomLogits(int vocab, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(vocab);
  for (float& v : x) v = normal(rng);
  return x;
}

// Reference: the truncated, renormalized distribution, computed the plain way (full sort).
std::vector<double> ReferenceDistribution(std::vector<float> x, const SamplingParams& p) {
  const int vocab = static_cast<int>(x.size());
  for (float& v : x) v /= p.temperature;
  const double mx = *std::max_element(x.begin(), x.end());
  std::vector<double> prob(vocab);
  double z = 0;
  for (int i = 0; i < vocab; ++i) z += prob[i] = std::exp(x[i] - mx);
  for (double& q : prob) q /= z;
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::vector<bool> keep(vocab, false);
  const int k = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
  double kept_mass = 0;
  for (int i = 0; i < k; ++i) kept_mass += prob[order[i]];
  double cum = 0;
  for (int i = 0; i < k; ++i) {
    keep[order[i]] = true;
    cum += prob[order[i]] / kept_mass;
    if (cum >= p.top_p) break;
  }
  const double pmax = prob[order[0]];
  for (int i = 0; i < vocab; ++i) {
    if (prob[i] < p.min_p * pmax) keep[i] = false;
  }
  std::vector<double> out(vocab, 0.0);
  double total = 0;
  for (int i = 0; i < vocab; ++i) total += keep[i] ? prob[i] : 0;
  for (int i = 0; i < vocab; ++i) out[i] = keep[i] ? prob[i] / total : 0;
  return out;
}

// Random123's known-answer vectors (kat_vectors: philox4x32 10 rounds).
TEST(SamplerTest, PhiloxMatchesKnownAnswers) {
  struct Kat {
    Philox4x32 ctr;
    uint32_t key0, key1;
    Philox4x32 expected;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) {
    const Philox4x32 r = Philox4x32x10(k.ctr, k.key0, k.key1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.expected.v[i]) << i;
  }
}

TEST(SamplerTest, PhiloxUniformIsDeterministicAndUniform) {
  EXPECT_EQ(PhiloxUniform(5, 9), PhiloxUniform(5, 9));
  EXPECT_NE(PhiloxUniform(5, 9), PhiloxUniform(6, 9));
  EXPECT_NE(PhiloxUniform(5, 9), PhiloxUniform(5, 9 + (uint64_t{1} << 32)));
  double sum = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = PhiloxUniform(42, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);  // std of the mean: 0.0009
}

TEST(SamplerTest, GreedyIsArgmaxLowestIdOnTies) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    std::vector<float> x = RandomLogits(1000 + seed, seed);  // every length mod 8
    const int32_t expected = std::max_element(x.begin(), x.end()) - x.begin();
    EXPECT_EQ(Sample(x, {}), expected);
  }
  std::vector<float> ties = {0.0f, 2.0f, 1.0f, 2.0f};
  EXPECT_EQ(Sample(ties, {}), 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> with_nan = {nan, 1.0f, 3.0f, nan, 3.0f};
  EXPECT_EQ(Sample(with_nan, {}), 2);
  std::vector<float> all_nan = {nan, nan};
  EXPECT_EQ(Sample(all_nan, {}), 0);
}

TEST(SamplerTest, SameSeedSameTokens) {
  const std::vector<float> x = RandomLogits(500, 3, 1.0f);
  SamplingParams p{.temperature = 1.0f, .top_p = 0.9f};
  std::vector<int32_t> a, b, c;
  for (uint64_t step = 0; step < 50; ++step) {
    a.push_back(Sample(x, p, nullptr, 11, step));
    b.push_back(Sample(x, p, nullptr, 11, step));
    c.push_back(Sample(x, p, nullptr, 12, step));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

// Sampled frequencies over many draws match the reference truncated distribution: each token's
// frequency within 5 standard deviations (+0.002); tokens outside the kept set never appear.
// One dominant token and a long tail of tokens each below the sampler's candidate threshold
// (relative probability 1e-4) holding ~20% of the mass together: top-p 0.9 must reach into it.
std::vector<float> PeakedWithHeavyTail(int vocab, uint32_t seed) {
  std::vector<float> x = RandomLogits(vocab, seed, 0.1f);
  for (float& v : x) v += std::log(0.2f / vocab);
  x[7] = 0.0f;
  return x;
}

TEST(SamplerTest, FrequenciesMatchTruncatedDistribution) {
  struct Case {
    std::vector<float> logits;
    SamplingParams params;
  };
  const std::vector<Case> cases = {
      {RandomLogits(50, 100, 1.5f), {.temperature = 1.0f}},
      {RandomLogits(50, 101, 1.5f), {.temperature = 0.7f, .top_k = 5}},
      {RandomLogits(50, 102, 1.5f), {.temperature = 1.3f, .top_p = 0.8f}},
      {RandomLogits(50, 103, 1.5f), {.temperature = 1.0f, .min_p = 0.1f}},
      {RandomLogits(50, 104, 1.5f),
       {.temperature = 0.9f, .top_k = 10, .top_p = 0.7f, .min_p = 0.05f}},
      // Flat: the nucleus holds hundreds of tokens.
      {RandomLogits(2000, 105, 0.3f), {.temperature = 1.0f, .top_p = 0.5f}},
      // Candidates alone do not reach the target: the full-vocabulary ranking.
      {PeakedWithHeavyTail(5000, 106), {.temperature = 1.0f, .top_p = 0.9f}},
      // Spread logits: the candidates are a strict subset holding the nucleus / the top k.
      {RandomLogits(5000, 107, 4.0f), {.temperature = 1.0f, .top_p = 0.9f}},
      {RandomLogits(5000, 108, 4.0f), {.temperature = 1.0f, .top_k = 40}},
  };
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    SCOPED_TRACE(ci);
    const Case& c = cases[ci];
    const int vocab = static_cast<int>(c.logits.size());
    const int draws = vocab > 100 ? 6000 : 40000;
    const std::vector<double> ref = ReferenceDistribution(c.logits, c.params);
    std::vector<int> count(vocab, 0);
    for (int i = 0; i < draws; ++i) {
      ++count[Sample(c.logits, c.params, nullptr, ci, uint64_t(i))];
    }
    for (int t = 0; t < vocab; ++t) {
      const double f = static_cast<double>(count[t]) / draws;
      if (ref[t] == 0) {
        ASSERT_EQ(count[t], 0) << "token " << t;
      } else {
        ASSERT_NEAR(f, ref[t], 5 * std::sqrt(ref[t] * (1 - ref[t]) / draws) + 0.002)
            << "token " << t;
      }
    }
  }
}

// Thresholds keep every token tied at them (vLLM's semantics): top-k 1 over a three-way tie
// draws among the three, and never the less likely token.
TEST(SamplerTest, TiesAtAThresholdAreAllKept) {
  const std::vector<float> x = {1.0f, 1.0f, 0.0f, 1.0f};
  std::vector<int> count(4, 0);
  for (uint64_t step = 0; step < 3000; ++step) {
    ++count[Sample(x, {.temperature = 1.0f, .top_k = 1}, nullptr, 3, step)];
  }
  EXPECT_EQ(count[2], 0);
  for (int t : {0, 1, 3}) EXPECT_NEAR(count[t] / 3000.0, 1.0 / 3, 0.04) << t;
  // top-p: the smallest set of most likely values reaching 0.5 is the tie itself.
  EXPECT_NE(Sample(x, {.temperature = 1.0f, .top_p = 0.5f}, nullptr, 4, 0), 2);
}

TEST(SamplerTest, RepetitionPenaltyHfSemantics) {
  std::vector<float> x = {2.0f, -2.0f, 1.0f, -1.0f};
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{0, 1});
  h.AddGenerated(1);
  ProcessLogits({.repetition_penalty = 2.0f}, &h, x);
  EXPECT_EQ(x, (std::vector<float>{1.0f, -4.0f, 1.0f, -1.0f}));
}

TEST(SamplerTest, PresenceAndFrequencyOverGeneratedOnly) {
  std::vector<float> x = {1.0f, 1.0f, 1.0f, 1.0f};
  TokenHistory h;
  h.AddPrompt(std::vector<int32_t>{3});  // the prompt is not penalized by these
  h.AddGenerated(1);
  h.AddGenerated(1);
  h.AddGenerated(2);
  ProcessLogits({.presence_penalty = 0.5f, .frequency_penalty = 0.25f}, &h, x);
  EXPECT_FLOAT_EQ(x[0], 1.0f);
  EXPECT_FLOAT_EQ(x[1], 1.0f - 0.5f - 0.5f);
  EXPECT_FLOAT_EQ(x[2], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(x[3], 1.0f);
}

TEST(SamplerTest, PenaltiesChangeTheGreedyChoice) {
  std::vector<float> x = {1.0f, 3.0f, 2.5f};
  TokenHistory h;
  h.AddGenerated(1);
  EXPECT_EQ(Sample(x, {}, &h), 1);
  EXPECT_EQ(Sample(x, {.repetition_penalty = 1.5f}, &h), 2);
  EXPECT_EQ(Sample(x, {.frequency_penalty = 1.0f}, &h), 2);
}

// Logprobs are the log-softmax of the processed (penalized, temperature-scaled) logits before
// truncation; reference in double, relative tolerance 1e-5.
TEST(SamplerTest, LogprobsMatchLogSoftmaxOfProcessedLogits) {
  const std::vector<float> x = RandomLogits(300, 9);
  TokenHistory h;
  h.AddGenerated(4);
  const SamplingParams p{.temperature = 0.5f, .top_k = 3, .frequency_penalty = 1.0f};
  TokenLogprobs lp;
  const int32_t token = Sample(x, p, &h, 1, 0, 5, &lp);

  std::vector<double> y(x.begin(), x.end());
  y[4] -= 1.0;
  for (double& v : y) v /= 0.5;
  const double mx = *std::max_element(y.begin(), y.end());
  double z = 0;
  for (double v : y) z += std::exp(v - mx);
  const double log_z = mx + std::log(z);
  std::vector<int> order(y.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return y[a] > y[b]; });

  auto near = [](double a, double b) {
    return std::abs(a - b) <= 1e-5 * std::max(1.0, std::abs(b));
  };
  EXPECT_EQ(lp.chosen.token, token);
  EXPECT_TRUE(near(lp.chosen.logprob, y[token] - log_z));
  ASSERT_EQ(lp.top.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(lp.top[i].token, order[i]);
    EXPECT_TRUE(near(lp.top[i].logprob, y[order[i]] - log_z)) << i;
  }
  EXPECT_TRUE(token == order[0] || token == order[1] || token == order[2]);  // top_k = 3
}

}  // namespace
}  // namespace lizard
