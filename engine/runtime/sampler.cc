#include "engine/runtime/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

namespace lizard {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Index of the largest value, the lowest index on ties.
int32_t ArgMax(std::span<const float> x) {
  // Eight independent running maxima (no loop-carried dependency through one value), then the
  // first index holding the maximum. NaNs never win (std::max keeps its first argument).
  constexpr size_t kLanes = 8;
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, -std::numeric_limits<float>::infinity());
  size_t i = 0;
  for (; i + kLanes <= x.size(); i += kLanes) {
    for (size_t l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[i + l]);
  }
  float best = *std::max_element(lanes, lanes + kLanes);
  for (; i < x.size(); ++i) best = std::max(best, x[i]);
  const auto it = std::find(x.begin(), x.end(), best);
  return it == x.end() ? 0 : static_cast<int32_t>(it - x.begin());  // end: all NaN
}

// A token and its probability relative to the most likely token, packed so that a larger key
// means more likely (ties: lower id): the float bits of a positive probability order like its
// value. Selection then compares plain integers.
uint64_t PackKey(float prob, int32_t token) {
  return (uint64_t{std::bit_cast<uint32_t>(prob)} << 32) |
         (0xFFFFFFFFu - static_cast<uint32_t>(token));
}
float KeyProb(uint64_t key) { return std::bit_cast<float>(static_cast<uint32_t>(key >> 32)); }
int32_t KeyToken(uint64_t key) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key));
}

// Ranking (top-k, top-p) first looks only at tokens at least this likely relative to the most
// likely one; see Draw.
constexpr float kCandidateProb = 1e-4f;

// Draws from softmax(x) truncated by top-k, top-p and min-p (see sampler.h).
int32_t Draw(std::span<const float> x, const SamplingParams& params, double uniform) {
  const int32_t vocab = static_cast<int32_t>(x.size());
  const float max_logit = x[ArgMax(x)];
  // Probabilities relative to the most likely token (which gets 1).
  std::vector<float> p(vocab);
  for (int32_t i = 0; i < vocab; ++i) p[i] = std::exp(x[i] - max_logit);
  const bool top_k = params.top_k > 0 && params.top_k < vocab;
  const bool top_p = params.top_p < 1.0f;

  if (!top_k && !top_p) {
    // No ranking needed: walk the ids in order (min-p only drops tokens).
    double total = 0.0;
    for (float q : p) total += q >= params.min_p ? q : 0.0f;
    const double target = uniform * total;
    double mass = 0.0;
    int32_t last = 0;
    for (int32_t i = 0; i < vocab; ++i) {
      if (p[i] < params.min_p) continue;
      mass += p[i];
      last = i;
      if (mass > target) return i;
    }
    return last;  // rounding: uniform * total landed on the total
  }

  // Rank only the likely candidates when that is exact: the top-k tokens are all candidates
  // when there are at least k of them, and the nucleus lies within the candidates when their
  // mass reaches the top-p target (it is a prefix of the ranking). Otherwise rank everything.
  std::vector<uint64_t> kept;
  double total = 0.0, candidate_mass = 0.0;
  for (int32_t i = 0; i < vocab; ++i) {
    total += p[i];
    if (p[i] >= kCandidateProb) {
      kept.push_back(PackKey(p[i], i));
      candidate_mass += p[i];
    }
  }
  const bool candidates_suffice = top_k
                                      ? static_cast<int64_t>(kept.size()) >= params.top_k
                                      : candidate_mass >= static_cast<double>(params.top_p) * total;
  if (!candidates_suffice) {
    kept.resize(vocab);
    for (int32_t i = 0; i < vocab; ++i) kept[i] = PackKey(p[i], i);
  }

  const auto more_likely = std::greater<uint64_t>();
  if (top_k) {
    std::nth_element(kept.begin(), kept.begin() + params.top_k, kept.end(), more_likely);
    kept.resize(params.top_k);
    total = 0.0;
    for (uint64_t k : kept) total += KeyProb(k);
  }
  if (top_p) {
    // Smallest n whose n most likely tokens reach the target, by bisection with nth_element on
    // the shrinking range (O(n) expected; no full sort). Invariant: kept[0, lo) are the lo most
    // likely tokens, with mass `mass_lo` < target <= mass of the hi most likely, and
    // kept[hi, end) are less likely than all of kept[0, hi).
    const double target = params.top_p * total;
    size_t lo = 0, hi = kept.size();
    double mass_lo = 0.0;
    while (hi - lo > 1) {
      const size_t mid = lo + (hi - lo) / 2;
      std::nth_element(kept.begin() + lo, kept.begin() + mid, kept.begin() + hi, more_likely);
      double mass_mid = mass_lo;
      for (size_t i = lo; i < mid; ++i) mass_mid += KeyProb(kept[i]);
      if (mass_mid >= target) {
        hi = mid;
      } else {
        lo = mid;
        mass_lo = mass_mid;
      }
    }
    kept.resize(hi);
  }
  if (params.min_p > 0.0f) {  // the most likely token has probability 1 here: never dropped
    std::erase_if(kept, [&](uint64_t k) { return KeyProb(k) < params.min_p; });
  }

  double kept_mass = 0.0;
  for (uint64_t k : kept) kept_mass += KeyProb(k);
  const double target = uniform * kept_mass;
  double mass = 0.0;
  for (uint64_t k : kept) {
    mass += KeyProb(k);
    if (mass > target) return KeyToken(k);
  }
  return KeyToken(kept.back());  // rounding: uniform * total landed on the total
}

void FillLogprobs(std::span<const float> x, int32_t chosen, int32_t n, TokenLogprobs* out) {
  const int32_t vocab = static_cast<int32_t>(x.size());
  const double max_logit = x[ArgMax(x)];
  double sum = 0.0;
  for (float v : x) sum += std::exp(v - max_logit);
  const double log_z = max_logit + std::log(sum);
  auto logprob = [&](int32_t t) { return static_cast<float>(x[t] - log_z); };

  out->chosen = {chosen, logprob(chosen)};
  out->top.clear();
  n = std::min(n, vocab);
  if (n <= 0) return;
  std::vector<int32_t> ids(vocab);
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
  for (int32_t i = 0; i < n; ++i) out->top.push_back({ids[i], logprob(ids[i])});
}

}  // namespace

double CounterUniform(uint64_t seed, uint64_t counter) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ counter);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;  // 53 random bits -> [0, 1)
}

void TokenHistory::AddPrompt(std::span<const int32_t> tokens) {
  seen_.insert(tokens.begin(), tokens.end());
}

void TokenHistory::AddGenerated(int32_t token) {
  seen_.insert(token);
  ++generated_[token];
}

void ApplyPenalties(const SamplingParams& params, const TokenHistory& history,
                    std::span<float> logits) {
  if (params.repetition_penalty != 1.0f) {
    for (int32_t t : history.seen()) {
      float& v = logits[t];
      v = v > 0 ? v / params.repetition_penalty : v * params.repetition_penalty;
    }
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    for (const auto& [t, count] : history.generated_counts()) {
      logits[t] -= params.presence_penalty + params.frequency_penalty * static_cast<float>(count);
    }
  }
}

int32_t SampleToken(std::span<const float> logits, const SamplingParams& params,
                    const TokenHistory& history, const SampleOptions& options,
                    TokenLogprobs* logprobs) {
  const bool penalized = params.repetition_penalty != 1.0f || params.presence_penalty != 0.0f ||
                         params.frequency_penalty != 0.0f;
  if (params.temperature == 0.0f && !penalized && logprobs == nullptr) return ArgMax(logits);
  std::vector<float> x(logits.begin(), logits.end());
  ApplyPenalties(params, history, x);
  int32_t token;
  if (params.temperature == 0.0f) {
    token = ArgMax(x);
  } else {
    for (float& v : x) v /= params.temperature;
    token = Draw(x, params, CounterUniform(options.seed, options.step));
  }
  if (logprobs != nullptr) FillLogprobs(x, token, options.logprobs, logprobs);
  return token;
}

}  // namespace lizard
