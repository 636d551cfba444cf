// What a request asks of the sampler, and what the sampler reports back. Shared by the runtime
// (which owns requests) and the backends (which sample on their device, see StepPlan::sampling).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"

namespace lizard {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // (0, 1]
  float min_p = 0.0f;        // [0, 1]
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;  // unset: drawn from the engine's generator

  bool penalized() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// The one check of the ranges above, for every layer (the server's APIs, the engine, the
// backends): INVALID_ARGUMENT whose message starts with the field's name, e.g.
// "presence_penalty = 3 must be in [-2, 2]", so that a caller can prefix its own field path.
absl::Status Validate(const SamplingParams& params);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// The sampled token's log-probability and the top-n alternatives, most likely first.
struct TokenLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;
};

// The tokens a request's penalties look at.
class TokenHistory {
 public:
  void AddPrompt(std::span<const int32_t> tokens) { seen_.insert(tokens.begin(), tokens.end()); }
  void AddGenerated(int32_t token) {
    seen_.insert(token);
    ++generated_[token];
  }

  const absl::flat_hash_set<int32_t>& seen() const { return seen_; }
  const absl::flat_hash_map<int32_t, int32_t>& generated_counts() const { return generated_; }

 private:
  absl::flat_hash_set<int32_t> seen_;                // prompt + generated
  absl::flat_hash_map<int32_t, int32_t> generated_;  // token -> times generated
};

// How one logits row of a step picks its token (StepPlan::sampling).
struct RowSampling {
  SamplingParams params;  // params.seed is not used here: `seed` is the resolved one
  uint64_t seed = 0;      // Philox key of the request
  uint64_t step = 0;      // Philox counter: index of the token within its request
  int32_t logprobs = 0;   // top-n alternatives to report; 0 = no logprobs at all
  const TokenHistory* history = nullptr;  // what penalties look at; null = nothing yet
};

}  // namespace lizard
