#include "engine/runtime/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

namespace lizard {
namespace {

absl::Status AlwaysSlot(RequestId) { return absl::OkStatus(); }

int64_t ChunkOf(const ScheduledStep& step, RequestId id) {
  for (const auto& c : step.prefills) {
    if (c.id == id) return c.num_tokens;
  }
  return 0;
}

TEST(SchedulerTest, LongPromptIsChunkedAndLaterArrivalsWait) {
  Scheduler s({.max_batch_tokens = 8, .max_running = 4, .max_queue = 8});
  ASSERT_TRUE(s.Add(1, 20).ok());
  ASSERT_TRUE(s.Add(2, 3).ok());

  ScheduledStep st = s.Schedule(AlwaysSlot);  // A gets the whole budget; B is not admitted
  EXPECT_EQ(ChunkOf(st, 1), 8);
  EXPECT_EQ(ChunkOf(st, 2), 0);
  EXPECT_FALSE(st.prefills[0].last);
  EXPECT_EQ(s.num_waiting(), 1);

  st = s.Schedule(AlwaysSlot);
  EXPECT_EQ(ChunkOf(st, 1), 8);
  st = s.Schedule(AlwaysSlot);  // A's last 4 tokens, then B fills the rest
  ASSERT_EQ(st.prefills.size(), 2u);
  EXPECT_EQ(st.prefills[0].id, 1u);
  EXPECT_EQ(st.prefills[0].num_tokens, 4);
  EXPECT_TRUE(st.prefills[0].last);
  EXPECT_EQ(st.prefills[1].id, 2u);
  EXPECT_EQ(st.prefills[1].num_tokens, 3);
  EXPECT_TRUE(st.prefills[1].last);

  st = s.Schedule(AlwaysSlot);  // both decode
  EXPECT_EQ(st.decodes, (std::vector<RequestId>{1, 2}));
  EXPECT_TRUE(st.prefills.empty());
}

TEST(SchedulerTest, DecodesComeFirstAndAreNeverStarvedByPrompts) {
  Scheduler s({.max_batch_tokens = 4, .max_running = 4, .max_queue = 8});
  ASSERT_TRUE(s.Add(1, 1).ok());
  s.Schedule(AlwaysSlot);
  ASSERT_TRUE(s.Add(2, 100).ok());
  for (int i = 0; i < 10; ++i) {
    ScheduledStep st = s.Schedule(AlwaysSlot);
    ASSERT_EQ(st.decodes, std::vector<RequestId>{1});
    EXPECT_EQ(ChunkOf(st, 2), 3);  // the rest of the budget
    EXPECT_EQ(st.num_tokens(), 4);
  }
}

TEST(SchedulerTest, QueueLimitCountsWaitingOnly) {
  Scheduler s({.max_batch_tokens = 8, .max_running = 1, .max_queue = 2});
  ASSERT_TRUE(s.Add(1, 2).ok());
  ASSERT_TRUE(s.Add(2, 2).ok());
  EXPECT_EQ(s.Add(3, 2).code(), absl::StatusCode::kResourceExhausted);
  s.Schedule(AlwaysSlot);  // admits 1 (max_running 1): one queue place frees
  EXPECT_EQ(s.num_running(), 1);
  EXPECT_TRUE(s.Add(3, 2).ok());
  EXPECT_EQ(s.Add(4, 2).code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerTest, MaxRunningAndRemovalFreesPlaceInSameStep) {
  Scheduler s({.max_batch_tokens = 16, .max_running = 2, .max_queue = 8});
  for (RequestId id = 1; id <= 3; ++id) ASSERT_TRUE(s.Add(id, 2).ok());
  ScheduledStep st = s.Schedule(AlwaysSlot);
  EXPECT_EQ(st.prefills.size(), 2u);
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_EQ(s.num_waiting(), 1);

  s.Remove(1);  // finished (or cancelled) before the next step
  st = s.Schedule(AlwaysSlot);
  EXPECT_EQ(st.decodes, std::vector<RequestId>{2});
  EXPECT_EQ(ChunkOf(st, 3), 2);  // admitted in the same step
}

TEST(SchedulerTest, NoSlotWaitsWhileSomethingRunsAndKeepsFifo) {
  Scheduler s({.max_batch_tokens = 16, .max_running = 8, .max_queue = 8});
  ASSERT_TRUE(s.Add(1, 2).ok());
  s.Schedule(AlwaysSlot);
  ASSERT_TRUE(s.Add(2, 2).ok());
  ASSERT_TRUE(s.Add(3, 2).ok());
  std::vector<RequestId> asked;
  auto only_3 = [&](RequestId id) {
    asked.push_back(id);
    return id == 3 ? absl::OkStatus() : absl::ResourceExhaustedError("no slot");
  };
  ScheduledStep st = s.Schedule(only_3);
  EXPECT_TRUE(st.failed.empty());
  EXPECT_TRUE(st.prefills.empty());  // 3 does not overtake 2
  EXPECT_EQ(asked, std::vector<RequestId>{2});
  EXPECT_EQ(s.num_waiting(), 2);
}

TEST(SchedulerTest, NoSlotWithNothingRunningFails) {
  Scheduler s({.max_batch_tokens = 16, .max_running = 8, .max_queue = 8});
  ASSERT_TRUE(s.Add(1, 2).ok());
  ASSERT_TRUE(s.Add(2, 2).ok());
  auto only_2 = [](RequestId id) {
    return id == 2 ? absl::OkStatus() : absl::ResourceExhaustedError("both tiers full");
  };
  ScheduledStep st = s.Schedule(only_2);
  ASSERT_EQ(st.failed.size(), 1u);
  EXPECT_EQ(st.failed[0].id, 1u);
  EXPECT_EQ(st.failed[0].status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ChunkOf(st, 2), 2);
  EXPECT_EQ(s.num_waiting(), 0);
}

// Random arrivals and finishes: the budget is never exceeded, every running decode advances
// every step, the oldest prefilling sequence advances every step, and admission is FIFO.
TEST(SchedulerTest, RandomTrafficInvariants) {
  const SchedulerOptions options{.max_batch_tokens = 32, .max_running = 6, .max_queue = 10};
  Scheduler s(options);
  std::mt19937 rng(7);
  std::map<RequestId, int64_t> prefill_left;  // admitted sequences still prefilling
  std::vector<RequestId> decoding;
  RequestId next_id = 1, last_admitted = 0;
  for (int step = 0; step < 2000; ++step) {
    for (int a = rng() % 3; a > 0; --a) {
      const int64_t len = 1 + rng() % 80;
      if (s.Add(next_id, len).ok()) prefill_left[next_id] = -len;  // negative: not admitted
      ++next_id;
    }
    const std::vector<RequestId> decoding_before = decoding;
    RequestId oldest_prefilling = 0;
    for (const auto& [id, left] : prefill_left) {
      if (left > 0) {
        oldest_prefilling = id;
        break;
      }
    }
    ScheduledStep st = s.Schedule(AlwaysSlot);
    ASSERT_LE(st.num_tokens(), options.max_batch_tokens);
    ASSERT_LE(s.num_running(), options.max_running);
    std::vector<RequestId> decodes = st.decodes;
    std::sort(decodes.begin(), decodes.end());
    ASSERT_EQ(decodes, decoding_before);
    if (oldest_prefilling != 0) ASSERT_GT(ChunkOf(st, oldest_prefilling), 0);
    for (const auto& c : st.prefills) {
      int64_t& left = prefill_left[c.id];
      if (left < 0) {  // admitted now: ids increase with arrival, so FIFO means increasing
        ASSERT_GT(c.id, last_admitted);
        last_admitted = c.id;
        left = -left;
      }
      left -= c.num_tokens;
      ASSERT_EQ(c.last, left == 0);
      if (left == 0) {
        prefill_left.erase(c.id);
        decoding.insert(std::upper_bound(decoding.begin(), decoding.end(), c.id), c.id);
      }
    }
    // Random finishes.
    for (auto it = decoding.begin(); it != decoding.end();) {
      if (rng() % 8 == 0) {
        s.Remove(*it);
        it = decoding.erase(it);
      } else {
        ++it;
      }
    }
  }
}

}  // namespace
}  // namespace lizard
