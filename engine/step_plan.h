// StepPlan: the contract between the scheduler and a backend. The scheduler fills it with slot
// ids and token ids only; the backend never sees requests, sessions or RPCs.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/sampling/sampling.h"

namespace lizard {

// Index of a fixed-size sequence-state slot in a backend's state pool.
using SlotId = int32_t;

// Which rows of a chunk produce logits.
enum class LogitsMode { kNone, kLast, kAll };

// The invariance rule of prefill: a backend's chunked (prefill) form works in blocks of this many
// tokens at absolute positions that are multiples of it (a chunk starting at position p first
// completes the partial block [p, next multiple)), and the scheduler cuts a prompt only at such
// positions. So where a prompt is cut, which depends on load, never changes its arithmetic.
inline constexpr int64_t kPrefillAlignment = 64;

// Consecutive tokens of one sequence, starting at `first_position`.
//   decode: the sequence's sampled token fed back (exactly one token, logits kLast); backends run
//           it in the recurrent (decode) form.
//   otherwise prompt tokens, of any length (even one): backends run them in the chunked (prefill)
//           form, blocks aligned as kPrefillAlignment says.
// The two forms agree within float tolerance, not bitwise; each token always takes the same one.
struct SequenceChunk {
  SlotId slot = -1;
  int64_t first_position = 0;
  std::vector<int32_t> tokens;
  LogitsMode logits = LogitsMode::kLast;
  bool decode = false;
};

// One engine step. A slot appears at most once per plan. Positions must equal the slot's
// current position (the number of tokens its state has consumed); a backend refuses a mismatch
// (ValidateStepPlan). The order of the chunks is the order of the logits rows; which chunks come
// first is the scheduler's business (the engine puts decodes first).
struct StepPlan {
  std::vector<SequenceChunk> chunks;
  // Empty: Forward returns the logits rows. Otherwise one entry per logits row (in row order):
  // the backend samples each row on its device (engine/sampling/sampler.h defines how) and
  // returns token ids (and logprobs where asked) instead of logits.
  std::vector<RowSampling> sampling;

  int64_t num_tokens() const {
    int64_t n = 0;
    for (const auto& c : chunks) n += static_cast<int64_t>(c.tokens.size());
    return n;
  }
  // Logits rows, in output order: for each chunk (in order) one row for kLast or
  // tokens.size() rows for kAll.
  int64_t num_logits_rows() const {
    int64_t n = 0;
    for (const auto& c : chunks) {
      if (c.logits == LogitsMode::kLast) n += 1;
      if (c.logits == LogitsMode::kAll) n += static_cast<int64_t>(c.tokens.size());
    }
    return n;
  }
};

// What every backend checks before a step touches any state (INVALID_ARGUMENT naming the chunk
// index, OUT_OF_RANGE for positions past int32): each chunk's slot in [0, num_slots) and used
// once, its first_position equal to slot_position(slot), at least one token (exactly one for a
// decode), token ids in [0, vocab), positions that fit int32; then the sampling rows
// (ValidateSampling).
absl::Status ValidateStepPlan(const StepPlan& plan, int32_t num_slots, int64_t vocab,
                              absl::FunctionRef<int64_t(SlotId)> slot_position);

// What Forward returns for the rows a StepPlan asked for, in StepPlan::num_logits_rows() order:
// without StepPlan::sampling, the logits, row-major [rows, vocab], float32 on the host; with it,
// one token per row, and logprobs[r] for the rows whose RowSampling::logprobs > 0 (`logits` is
// then empty).
// A caller may reuse one StepOutput across steps (its buffers keep their capacity), so Forward
// must start with Reset: nothing of an earlier step may survive into this one.
struct StepOutput {
  int64_t rows = 0;
  int64_t vocab = 0;
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;  // sized `rows` when sampling
  const float* row(int64_t i) const { return logits.data() + i * vocab; }

  void Reset(int64_t new_rows, int64_t new_vocab) {
    rows = new_rows;
    vocab = new_vocab;
    logits.clear();
    tokens.clear();
    logprobs.clear();
  }
};

}  // namespace lizard
