// Sampler: picks one token from one logits row on the host.
//
// Processing order (Hugging Face's, for the parts it has):
//   1. repetition penalty over the request's prompt (its whole input, including tokens carried
//      over from the previous turn) and generated tokens: a seen token's logit is divided by the
//      penalty when positive, multiplied when negative (HF semantics);
//   2. presence and frequency penalties over the generated tokens only (OpenAI semantics):
//      logit -= presence * [count > 0] + frequency * count;
//   3. temperature 0: greedy argmax (lowest id on ties). Otherwise logits /= temperature, then
//      truncation in the order top-k, top-p (smallest set of most likely tokens whose mass
//      reaches top_p), min-p (drop tokens below min_p * max probability), then one draw from the
//      renormalized kept set.
// Logprobs are the log-softmax of the processed logits after steps 1-2 and temperature, before
// truncation (vLLM's "processed_logprobs"); for greedy no temperature is applied.
//
// Randomness is counter-based: the uniform for a draw is a hash of (seed, step index), so a
// request with a given seed gets the same tokens whatever else shares the batch.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/runtime/engine.h"

namespace lizard {

// A uniform double in [0, 1) determined by (seed, counter) alone (SplitMix64 mixing).
double CounterUniform(uint64_t seed, uint64_t counter);

// The tokens a request's penalties look at.
class TokenHistory {
 public:
  void AddPrompt(std::span<const int32_t> tokens);
  void AddGenerated(int32_t token);

  const absl::flat_hash_set<int32_t>& seen() const { return seen_; }
  const absl::flat_hash_map<int32_t, int32_t>& generated_counts() const { return generated_; }

 private:
  absl::flat_hash_set<int32_t> seen_;                // prompt + generated
  absl::flat_hash_map<int32_t, int32_t> generated_;  // token -> times generated
};

// Applies steps 1-2 (penalties) in place.
void ApplyPenalties(const SamplingParams& params, const TokenHistory& history,
                    std::span<float> logits);

struct SampleOptions {
  uint64_t seed = 0;
  uint64_t step = 0;     // index of the token being generated within the request
  int32_t logprobs = 0;  // top-n alternatives to report
};

// Samples one token from `logits` (one row of `vocab` floats). Fills `logprobs` when not null
// (the chosen token's logprob and the top options.logprobs alternatives, most likely first).
int32_t SampleToken(std::span<const float> logits, const SamplingParams& params,
                    const TokenHistory& history, const SampleOptions& options,
                    TokenLogprobs* logprobs);

}  // namespace lizard
