#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/philox.h"

namespace lizard {
namespace {

// Ranking (top-k, top-p) first looks only at tokens at least this likely relative to the most
// likely one, and at all tokens only when those candidates do not decide the threshold.
constexpr float kCandidateProb = 1e-4f;

// The k-th largest non-NaN value of p (k >= 1), or 0 when there are fewer than k.
float KthLargest(std::span<const float> p, int64_t k) {
  std::vector<float> values;
  for (float q : p) {
    if (q >= kCandidateProb) values.push_back(q);
  }
  if (static_cast<int64_t>(values.size()) < k) {
    values.clear();
    for (float q : p) {
      if (q >= 0.0f) values.push_back(q);  // every value but NaN
    }
    if (static_cast<int64_t>(values.size()) < k) return 0.0f;
  }
  std::nth_element(values.begin(), values.begin() + (k - 1), values.end(), std::greater<float>());
  return values[k - 1];
}

// The largest value t >= floor of p such that the values in [t, 1] hold at least `target`.
float MassThreshold(std::span<const float> p, float floor, double target) {
  std::vector<float> values;
  double candidate_mass = 0.0;
  for (float q : p) {
    if (q >= floor && q >= kCandidateProb) {
      values.push_back(q);
      candidate_mass += q;
    }
  }
  if (candidate_mass < target) {
    values.clear();
    for (float q : p) {
      if (q >= floor) values.push_back(q);
    }
  }
  std::sort(values.begin(), values.end(), std::greater<float>());
  double mass = 0.0;
  for (float v : values) {
    mass += v;
    if (mass >= target) return v;  // every value above v holds less than the target
  }
  return floor;  // rounding: the target is the whole mass
}

}  // namespace

void ProcessLogits(const SamplingParams& params, const TokenHistory* history, std::span<float> x) {
  if (history != nullptr && params.repetition_penalty != 1.0f) {
    for (int32_t t : history->seen()) {
      float& v = x[t];
      v = v > 0 ? v / params.repetition_penalty : v * params.repetition_penalty;
    }
  }
  if (history != nullptr && (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f)) {
    for (const auto& [t, count] : history->generated_counts()) {
      x[t] -= params.presence_penalty + params.frequency_penalty * static_cast<float>(count);
    }
  }
  if (params.temperature != 0.0f) {
    for (float& v : x) v /= params.temperature;
  }
}

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

int32_t DrawToken(std::span<const float> x, const SamplingParams& params, double uniform) {
  const int32_t best = ArgMax(x);
  const float max_logit = x[best];
  if (!std::isfinite(max_logit)) return best;  // nothing to normalize by
  const int64_t vocab = static_cast<int64_t>(x.size());
  std::vector<float> p(vocab);
  for (int64_t i = 0; i < vocab; ++i) p[i] = std::exp(x[i] - max_logit);

  float t = 0.0f;  // keep p >= t
  if (params.top_k > 0 && params.top_k < vocab) t = KthLargest(p, params.top_k);
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    for (float q : p) mass += q >= t ? q : 0.0f;
    t = MassThreshold(p, t, static_cast<double>(params.top_p) * mass);
  }
  t = std::max(t, params.min_p);

  double total = 0.0;
  for (float q : p) total += q >= t ? q : 0.0f;
  const double target = uniform * total;
  double mass = 0.0;
  int32_t last = best;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!(p[i] >= t)) continue;
    mass += p[i];
    last = static_cast<int32_t>(i);
    if (mass > target) return last;
  }
  return last;  // rounding: uniform * total landed on the total
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

int32_t SampleToken(std::span<const float> logits, const RowSampling& row,
                    TokenLogprobs* logprobs) {
  const SamplingParams& params = row.params;
  const bool want_logprobs = logprobs != nullptr && row.logprobs > 0;
  if (params.temperature == 0.0f && !params.penalized() && !want_logprobs) return ArgMax(logits);
  std::vector<float> x(logits.begin(), logits.end());
  ProcessLogits(params, row.history, x);
  const int32_t token = params.temperature == 0.0f
                            ? ArgMax(x)
                            : DrawToken(x, params, PhiloxUniform(row.seed, row.step));
  if (want_logprobs) FillLogprobs(x, token, row.logprobs, logprobs);
  return token;
}

absl::Status ValidateSampling(const StepPlan& plan, int64_t vocab) {
  if (plan.sampling.empty()) return absl::OkStatus();
  if (static_cast<int64_t>(plan.sampling.size()) != plan.num_logits_rows()) {
    return absl::InvalidArgumentError(absl::StrCat("the plan has ", plan.num_logits_rows(),
                                                   " logits rows but ", plan.sampling.size(),
                                                   " sampling entries"));
  }
  for (const RowSampling& row : plan.sampling) {
    if (absl::Status s = Validate(row.params); !s.ok()) return s;
    if (row.logprobs < 0 || row.logprobs > vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs = ", row.logprobs, " must be in [0, ", vocab, "]"));
    }
    if (row.history != nullptr) {
      for (int32_t t : row.history->seen()) {
        if (t < 0 || t >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat("history token ", t, " out of range"));
        }
      }
    }
  }
  return absl::OkStatus();
}

void SampleOnHost(const StepPlan& plan, StepOutput* out, ParallelForFn parallel_for) {
  const int64_t rows = out->rows;
  out->tokens.assign(rows, 0);
  out->logprobs.assign(rows, {});
  parallel_for(rows, [&](int64_t r) {
    out->tokens[r] = SampleToken(std::span<const float>(out->row(r), out->vocab),
                                 plan.sampling[r], &out->logprobs[r]);
  });
  out->logits.clear();
}

}  // namespace lizard
