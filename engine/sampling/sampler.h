// The host sampler: picks one token from one logits row. It is what the CPU backend runs and the
// reference the GPU sampling kernels (kernels/sampling.cu) are tested against: both follow the
// definitions below step by step, so they pick the same token from the same logits.
//
// 1. Penalties (ProcessLogits): repetition penalty over the request's prompt (its whole input,
//    including tokens carried over from the previous turn) and generated tokens: a seen token's
//    logit is divided by the penalty when positive, multiplied when negative (Hugging Face);
//    then presence and frequency penalties over the generated tokens only (OpenAI):
//    logit -= presence * [count > 0] + frequency * count.
// 2. Temperature 0: greedy, the argmax (lowest id on ties; NaN never wins). Otherwise
//    logits /= temperature (also ProcessLogits).
// 3. Truncation by thresholds on p_i = exp(x_i - max x), the probability relative to the most
//    likely token: top-k keeps p_i >= the k-th largest p; top-p then keeps p_i >= the largest
//    value t whose {p >= t} (within the top-k set) holds at least top_p of that set's mass;
//    min-p keeps p_i >= min_p. Tokens tied at a threshold are all kept (as in vLLM).
// 4. One draw: u = PhiloxUniform(seed, step) (kernels/philox.h); the token is the first id, in
//    id order, where the running mass of the kept tokens exceeds u * (their total mass).
// Logprobs are the log-softmax of the processed logits (after 1-2, before truncation: vLLM's
// "processed_logprobs"); the top-n are ordered by logit, lower id first on ties.
#pragma once

#include <cstdint>
#include <span>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/sampling/sampling.h"
#include "engine/step_plan.h"

namespace lizard {

// Steps 1-2 in place: penalties, then division by the temperature when it is not 0.
void ProcessLogits(const SamplingParams& params, const TokenHistory* history, std::span<float> x);

// Index of the largest value, the lowest index on ties; NaNs never win (0 when all are NaN).
int32_t ArgMax(std::span<const float> x);

// Steps 3-4 on processed logits (temperature > 0).
int32_t DrawToken(std::span<const float> x, const SamplingParams& params, double uniform);

// The chosen token's logprob and the top `n` alternatives, from processed logits.
void FillLogprobs(std::span<const float> x, int32_t chosen, int32_t n, TokenLogprobs* out);

// Steps 1-4 for one row (logprobs filled when `logprobs` is not null and row.logprobs > 0).
int32_t SampleToken(std::span<const float> logits, const RowSampling& row, TokenLogprobs* logprobs);

// What every backend checks before a step that samples: one RowSampling per logits row, with
// parameters in range (the engine validates requests; this keeps a backend safe on its own).
absl::Status ValidateSampling(const StepPlan& plan, int64_t vocab);

// For backends whose logits are on the host: samples the rows of out->logits as plan.sampling
// says, fills out->tokens and out->logprobs and empties out->logits. `parallel_for(n, fn)` runs
// fn(0) .. fn(n - 1), in any order and possibly at once.
using ParallelForFn = absl::FunctionRef<void(int64_t, absl::FunctionRef<void(int64_t)>)>;
void SampleOnHost(const StepPlan& plan, StepOutput* out, ParallelForFn parallel_for);

}  // namespace lizard
