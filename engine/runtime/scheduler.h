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
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "engine/runtime/ids.h"

namespace lizard {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;
  int32_t max_running = 64;
  int32_t max_queue = 256;
};

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

  // Queues a sequence with `prompt_tokens` (> 0) tokens to prefill. RESOURCE_EXHAUSTED when
  // max_queue sequences are already waiting.
  absl::Status Add(RequestId id, int64_t prompt_tokens);
  // Forgets a finished or cancelled sequence (running or waiting); its place frees at once, so
  // the next Schedule() can admit another one. Unknown ids are ignored.
  void Remove(RequestId id);

  // Asked once per waiting sequence being admitted. OK: the sequence has a slot now. Any error:
  // no slot for now; if nothing is running (so no slot will ever free up by waiting) the
  // sequence fails with that error, otherwise it waits for a later step.
  using SlotProvider = absl::FunctionRef<absl::Status(RequestId)>;
  ScheduledStep Schedule(SlotProvider provide_slot);

  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  bool empty() const { return waiting_.empty() && running_.empty(); }

 private:
  struct Entry {
    RequestId id = 0;
    int64_t prefill_remaining = 0;  // 0: decode phase
  };

  SchedulerOptions options_;
  std::deque<Entry> waiting_;   // arrival order
  std::vector<Entry> running_;  // admission order (= arrival order)
};

}  // namespace lizard
