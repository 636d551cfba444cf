// StepPlan: the contract between the scheduler and a backend. The scheduler fills it with slot
// ids and token ids only; the backend never sees requests, sessions or RPCs.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/sampling/sampling.h"

namespace lizard {

// Index of a fixed-size sequence-state slot in a backend's state pool.
using SlotId = int32_t;

// Which rows of a prefill chunk produce logits.
enum class LogitsMode { kNone, kLast, kAll };

// Consecutive prompt tokens of one sequence, starting at `first_position`.
struct PrefillChunk {
  SlotId slot = -1;
  int64_t first_position = 0;
  std::vector<int32_t> tokens;
  LogitsMode logits = LogitsMode::kLast;
};

// One token for one running sequence at `position`; always produces one logits row.
struct DecodeItem {
  SlotId slot = -1;
  int64_t position = 0;
  int32_t token = 0;
};

// One engine step. A slot appears at most once per plan. Positions must equal the slot's
// current position (the number of tokens its state has consumed); a backend refuses a mismatch.
struct StepPlan {
  std::vector<DecodeItem> decodes;
  std::vector<PrefillChunk> prefills;
  // Empty: Forward returns the logits rows. Otherwise one entry per logits row (in row order):
  // the backend samples each row on its device (engine/sampling/sampler.h defines how) and
  // returns token ids (and logprobs where asked) instead of logits.
  std::vector<RowSampling> sampling;

  int64_t num_tokens() const {
    int64_t n = static_cast<int64_t>(decodes.size());
    for (const auto& c : prefills) n += static_cast<int64_t>(c.tokens.size());
    return n;
  }
  // Logits rows, in output order: one per decode item (in order), then for each prefill chunk
  // (in order) one row for kLast or tokens.size() rows for kAll.
  int64_t num_logits_rows() const {
    int64_t n = static_cast<int64_t>(decodes.size());
    for (const auto& c : prefills) {
      if (c.logits == LogitsMode::kLast) n += 1;
      if (c.logits == LogitsMode::kAll) n += static_cast<int64_t>(c.tokens.size());
    }
    return n;
  }
};

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
