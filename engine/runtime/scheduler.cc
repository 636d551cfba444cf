#include "engine/runtime/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace lizard {

int64_t MinBatchTokens(int64_t max_running, int64_t prefill_alignment) {
  return max_running + prefill_alignment - 1;
}

absl::Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  if (o.max_running < 1 || o.prefill_alignment < 1 || o.max_queue < 0) {
    return absl::InvalidArgumentError(
        "need max_running >= 1, prefill_alignment >= 1 and max_queue >= 0");
  }
  const int64_t least = MinBatchTokens(o.max_running, o.prefill_alignment);
  if (o.max_batch_tokens < least) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_batch_tokens (", o.max_batch_tokens, ") must be at least max_running (",
        o.max_running, ") + prefill_alignment (", o.prefill_alignment, ") - 1 = ", least,
        ": the oldest prompt may need ", o.prefill_alignment,
        " tokens to reach its next aligned cut beside the other sequences' decodes"));
  }
  return absl::OkStatus();
}

int64_t ScheduledStep::num_tokens() const {
  int64_t n = static_cast<int64_t>(decodes.size());
  for (const Chunk& c : prefills) n += c.num_tokens;
  return n;
}

absl::Status Scheduler::Add(RequestId id, int64_t prompt_tokens, int64_t first_position) {
  if (prompt_tokens <= 0) return absl::InvalidArgumentError("a sequence needs prompt tokens");
  if (num_waiting() >= options_.max_queue) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request queue is full (", options_.max_queue, " waiting)"));
  }
  waiting_.push_back({id, prompt_tokens, first_position});
  return absl::OkStatus();
}

void Scheduler::Remove(RequestId id) {
  auto same_id = [id](const Entry& e) { return e.id == id; };
  std::erase_if(running_, same_id);
  std::erase_if(waiting_, same_id);
}

int64_t Scheduler::ChunkLength(const Entry& e, int64_t budget) const {
  if (e.prefill_remaining <= budget) return e.prefill_remaining;
  const int64_t a = options_.prefill_alignment;
  const int64_t cut = (e.next_position + budget) / a * a;  // the last aligned position in reach
  return std::max<int64_t>(0, cut - e.next_position);
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

  // 2. Prompt chunks of admitted sequences, oldest first. A sequence the budget cannot take to
  // an aligned cut gets nothing, and no later one overtakes it.
  auto add_chunk = [&](Entry& e) {
    const int64_t n = ChunkLength(e, budget);
    e.prefill_remaining -= n;
    e.next_position += n;
    budget -= n;
    step.prefills.push_back({e.id, n, e.prefill_remaining == 0});
  };
  for (Entry& e : running_) {
    if (e.prefill_remaining == 0) continue;
    if (ChunkLength(e, budget) == 0) return step;
    add_chunk(e);
  }

  // 3. Admit waiting sequences in FIFO order while budget, max_running and slots allow (each
  // with a chunk this step, so no admitted slot idles).
  while (!waiting_.empty() && num_running() < options_.max_running &&
         ChunkLength(waiting_.front(), budget) > 0) {
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
