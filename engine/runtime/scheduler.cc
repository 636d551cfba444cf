#include "engine/runtime/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lizard {

int64_t ScheduledStep::num_tokens() const {
  int64_t n = static_cast<int64_t>(decodes.size());
  for (const Chunk& c : prefills) n += c.num_tokens;
  return n;
}

absl::Status Scheduler::Add(RequestId id, int64_t prompt_tokens) {
  if (prompt_tokens <= 0) return absl::InvalidArgumentError("a sequence needs prompt tokens");
  if (num_waiting() >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request queue is full (", options_.max_queue, " waiting)"));
  }
  waiting_.push_back({id, prompt_tokens});
  return absl::OkStatus();
}

void Scheduler::Remove(RequestId id) {
  auto same_id = [id](const Entry& e) { return e.id == id; };
  std::erase_if(running_, same_id);
  std::erase_if(waiting_, same_id);
}

ScheduledStep Scheduler::Schedule(SlotProvider provide_slot) {
  ScheduledStep step;
  int64_t budget = options_.max_batch_tokens;

  // 1. Decodes first: one token per running sequence past its prompt.
  for (const Entry& e : running_) {
    if (e.prefill_remaining == 0) {
      step.decodes.push_back(e.id);
      --budget;
    }
  }

  // 2. Prompt chunks of admitted sequences, oldest first.
  auto add_chunk = [&](Entry& e) {
    const int64_t n = std::min(e.prefill_remaining, budget);
    e.prefill_remaining -= n;
    budget -= n;
    step.prefills.push_back({e.id, n, e.prefill_remaining == 0});
  };
  for (Entry& e : running_) {
    if (budget <= 0) break;
    if (e.prefill_remaining > 0) add_chunk(e);
  }

  // 3. Admit waiting sequences in FIFO order while budget, max_running and slots allow.
  while (budget > 0 && !waiting_.empty() && num_running() < options_.max_running) {
    const RequestId id = waiting_.front().id;
    absl::Status slot = provide_slot(id);
    if (!slot.ok()) {
      if (!running_.empty()) break;  // a running sequence will free room: wait for it
      step.failed.push_back({id, std::move(slot)});
      waiting_.pop_front();
      continue;
    }
    running_.push_back(waiting_.front());
    waiting_.pop_front();
    add_chunk(running_.back());
  }
  return step;
}

}  // namespace lizard
