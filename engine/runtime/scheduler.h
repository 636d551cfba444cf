// Scheduler: decides what one engine step runs. Plain logic over sequence records (no model, no
// threads, no tensors): the engine owns the tokens, the scheduler only counts them.
//
// Policy (one Schedule() call = one step):
//   1. every running sequence in its decode phase advances by one token (decodes are never
//      starved: max_running <= max_batch_tokens, so they always fit the budget);
//   2. the remaining max_batch_tokens budget goes to prompt chunks in arrival (FIFO) order:
//      first sequences already admitted and still prefilling, then waiting ones, each admitted
//      only when max_running allows and the engine can provide a state slot for it. A long prompt
//      is fed in chunks over several steps; later arrivals never overtake it. Admission stops at
//      the first waiting sequence that cannot get a slot (strict FIFO).
//   3. a prompt chunk that does not finish its prompt ends at an absolute position that is a
//      multiple of prefill_alignment (kPrefillAlignment, engine/step_plan.h), so where a prompt
//      is cut never depends on load. When the remaining budget cannot reach the sequence's next
//      such position, it gets no chunk this step, and neither does any later sequence (FIFO).
//      max_batch_tokens >= MinBatchTokens(...) guarantees that the oldest prompt always gets one:
//      at most max_running - 1 decodes run beside it, and it needs at most prefill_alignment
//      tokens to reach its next aligned position.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/runtime/ids.h"
#include "engine/step_plan.h"

namespace lizard {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;
  int32_t max_running = 64;
  int32_t max_queue = 256;
  // Non-final prompt chunks end at multiples of this. The backends' chunked forms need a
  // multiple of kPrefillAlignment for load-independent results; engine tests over a fake
  // backend use smaller values.
  int32_t prefill_alignment = kPrefillAlignment;
};

// The smallest max_batch_tokens that guarantees progress (policy 3 above).
int64_t MinBatchTokens(int64_t max_running, int64_t prefill_alignment);

// OK when the options are in range and max_batch_tokens >= MinBatchTokens; INVALID_ARGUMENT
// naming the fields otherwise. The Scheduler assumes valid options.
absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

// What one step runs, in the order the engine builds its StepPlan.
struct ScheduledStep {
  struct Chunk {
    RequestId id = 0;
    int64_t num_tokens = 0;
    bool last = false;  // the chunk ends the sequence's prompt
  };
  struct Failed {
    RequestId id = 0;
    absl::Status status;
  };
  std::vector<RequestId> decodes;
  std::vector<Chunk> prefills;
  // Waiting sequences that can never be admitted (no slot and nothing running that could free
  // one); the scheduler has already forgotten them.
  std::vector<Failed> failed;

  int64_t num_tokens() const;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerOptions& options) : options_(options) {}

  // Queues a sequence with `prompt_tokens` (> 0) tokens to prefill, the first of them at
  // absolute position `first_position` (what its state will have consumed when admitted).
  // RESOURCE_EXHAUSTED when max_queue sequences are already waiting.
  absl::Status Add(RequestId id, int64_t prompt_tokens, int64_t first_position);
  // Forgets a finished or cancelled sequence (running or waiting); its place frees at once, so
  // the next Schedule() can admit another one. Unknown ids are ignored.
  void Remove(RequestId id);

  // Asked once per waiting sequence being admitted. OK: the sequence has a slot now. Any error:
  // no slot for now (or its state is still being restored from the host); if nothing is
  // running (so no slot will ever free up by waiting) the sequence fails with that error,
  // otherwise it waits for a later step.
  using SlotProvider = absl::FunctionRef<absl::Status(RequestId)>;
  ScheduledStep Schedule(SlotProvider provide_slot);

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  bool empty() const { return waiting_.empty() && running_.empty(); }

 private:
  struct Entry {
    RequestId id = 0;
    int64_t prefill_remaining = 0;  // 0: decode phase
    int64_t next_position = 0;      // absolute position of the next prompt token
  };

  // Tokens of `e`'s prompt the next chunk may take within `budget`: the rest of the prompt if it
  // fits, else up to the last aligned position the budget reaches (0 when it reaches none).
  int64_t ChunkLength(const Entry& e, int64_t budget) const;

  SchedulerOptions options_;
  std::deque<Entry> waiting_;   // arrival order
  std::vector<Entry> running_;  // admission order (= arrival order)
};

}  // namespace lizard
