#include "engine/runtime/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>

namespace lizard {
namespace {

absl::Status AlwaysSlot(RequestId) { return absl::OkStatus(); }

int64_t ChunkOf(const ScheduledStep& step, RequestId id) {
  for (const auto& c : step.prefills) {
    if (c.id == id) return c.num_tokens;
  }
  return 0;
}

// The tests up to the aligned cuts below use prefill_alignment 1 (a prompt may be cut anywhere):
// the budget and FIFO logic alone.
TEST(SchedulerTest, LongPromptIsChunkedAndLaterArrivalsWait) {
  Scheduler s({.max_batch_tokens = 8, .max_running = 4, .max_queue = 8, .prefill_alignment = 1});
  ASSERT_TRUE(s.Add(1, 20, 0).ok());
  ASSERT_TRUE(s.Add(2, 3, 0).ok());

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
  Scheduler s({.max_batch_tokens = 4, .max_running = 4, .max_queue = 8, .prefill_alignment = 1});
  ASSERT_TRUE(s.Add(1, 1, 0).ok());
  s.Schedule(AlwaysSlot);
  ASSERT_TRUE(s.Add(2, 100, 0).ok());
  for (int i = 0; i < 10; ++i) {
    ScheduledStep st = s.Schedule(AlwaysSlot);
    ASSERT_EQ(st.decodes, std::vector<RequestId>{1});
    EXPECT_EQ(ChunkOf(st, 2), 3);  // the rest of the budget
    EXPECT_EQ(st.num_tokens(), 4);
  }
}

TEST(SchedulerTest, QueueLimitCountsWaitingOnly) {
  Scheduler s({.max_batch_tokens = 8, .max_running = 1, .max_queue = 2, .prefill_alignment = 1});
  ASSERT_TRUE(s.Add(1, 2, 0).ok());
  ASSERT_TRUE(s.Add(2, 2, 0).ok());
  EXPECT_EQ(s.Add(3, 2, 0).code(), absl::StatusCode::kResourceExhausted);
  s.Schedule(AlwaysSlot);  // admits 1 (max_running 1): one queue place frees
  EXPECT_EQ(s.num_running(), 1);
  EXPECT_TRUE(s.Add(3, 2, 0).ok());
  EXPECT_EQ(s.Add(4, 2, 0).code(), absl::StatusCode::kResourceExhausted);
}

TEST(SchedulerTest, MaxRunningAndRemovalFreesPlaceInSameStep) {
  Scheduler s({.max_batch_tokens = 16, .max_running = 2, .max_queue = 8, .prefill_alignment = 1});
  for (RequestId id = 1; id <= 3; ++id) ASSERT_TRUE(s.Add(id, 2, 0).ok());
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
  Scheduler s({.max_batch_tokens = 16, .max_running = 8, .max_queue = 8, .prefill_alignment = 1});
  ASSERT_TRUE(s.Add(1, 2, 0).ok());
  s.Schedule(AlwaysSlot);
  ASSERT_TRUE(s.Add(2, 2, 0).ok());
  ASSERT_TRUE(s.Add(3, 2, 0).ok());
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
  Scheduler s({.max_batch_tokens = 16, .max_running = 8, .max_queue = 8, .prefill_alignment = 1});
  ASSERT_TRUE(s.Add(1, 2, 0).ok());
  ASSERT_TRUE(s.Add(2, 2, 0).ok());
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

// Prompt chunks that do not end a prompt end at absolute multiples of prefill_alignment; a
// sequence the budget cannot take to one waits, and so do the ones behind it.
TEST(SchedulerTest, PromptCutsSitAtAbsoluteMultiplesOfTheAlignment) {
  Scheduler s({.max_batch_tokens = 70, .max_running = 7});  // alignment 64: 70 = 7 + 64 - 1
  ASSERT_TRUE(s.Add(1, 100, 0).ok());
  ASSERT_TRUE(s.Add(2, 100, 0).ok());
  ASSERT_TRUE(s.Add(3, 2, 0).ok());

  ScheduledStep st = s.Schedule(AlwaysSlot);  // 1 to position 64; 6 tokens cannot take 2 there
  ASSERT_EQ(st.prefills.size(), 1u);
  EXPECT_EQ(ChunkOf(st, 1), 64);
  EXPECT_EQ(s.num_waiting(), 2);  // 3 would fit, but does not overtake 2

  st = s.Schedule(AlwaysSlot);  // 1's last 36 tokens; 34 left cannot take 2 to 64
  ASSERT_EQ(st.prefills.size(), 1u);
  EXPECT_EQ(ChunkOf(st, 1), 36);
  EXPECT_TRUE(st.prefills[0].last);

  st = s.Schedule(AlwaysSlot);  // 1 decodes, 2 to 64, then 3 fits in the 5 left
  EXPECT_EQ(st.decodes, std::vector<RequestId>{1});
  ASSERT_EQ(st.prefills.size(), 2u);
  EXPECT_EQ(ChunkOf(st, 2), 64);
  EXPECT_EQ(ChunkOf(st, 3), 2);

  st = s.Schedule(AlwaysSlot);
  EXPECT_EQ(st.decodes, (std::vector<RequestId>{1, 3}));
  EXPECT_EQ(ChunkOf(st, 2), 36);
  EXPECT_TRUE(st.prefills[0].last);
}

TEST(SchedulerTest, APromptFromAnUnalignedPositionFirstCompletesItsBlock) {
  Scheduler s({.max_batch_tokens = 70, .max_running = 7});
  ASSERT_TRUE(s.Add(1, 200, 100).ok());  // a session turn: its state holds 100 tokens
  std::vector<int64_t> chunks;
  for (int i = 0; i < 4; ++i) chunks.push_back(ChunkOf(s.Schedule(AlwaysSlot), 1));
  EXPECT_EQ(chunks, (std::vector<int64_t>{28, 64, 64, 44}));  // to 128, 192, 256, then the end
}

TEST(SchedulerTest, OptionsMustLeaveRoomForAnAlignedChunk) {
  EXPECT_EQ(MinBatchTokens(64, 64), 127);
  EXPECT_TRUE(ValidateSchedulerOptions({.max_batch_tokens = 127, .max_running = 64}).ok());
  const absl::Status s = ValidateSchedulerOptions({.max_batch_tokens = 126, .max_running = 64});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_batch_tokens (126)"), std::string::npos) << s;
  EXPECT_TRUE(ValidateSchedulerOptions(
                  {.max_batch_tokens = 8, .max_running = 8, .prefill_alignment = 1})
                  .ok());
  EXPECT_FALSE(ValidateSchedulerOptions({.max_running = 0}).ok());
  EXPECT_FALSE(ValidateSchedulerOptions({.prefill_alignment = 0}).ok());
  EXPECT_FALSE(ValidateSchedulerOptions({.max_queue = -1}).ok());
}

// Random arrivals (at random first positions, as session turns start) and finishes, with the
// smallest budget the options allow: the budget is never exceeded, every running decode
// advances every step, the oldest prefilling sequence advances every step (no starvation),
// every chunk that does not end its prompt ends at an aligned absolute position, and the order
// is FIFO (admission by arrival; the prefilling sequences that get a chunk are the oldest ones,
// and nothing is admitted behind one that got none).
class SchedulerTrafficTest : public ::testing::TestWithParam<SchedulerOptions> {};

TEST_P(SchedulerTrafficTest, RandomTrafficInvariants) {
  const SchedulerOptions options = GetParam();
  ASSERT_TRUE(ValidateSchedulerOptions(options).ok());
  const int64_t align = options.prefill_alignment;
  Scheduler s(options);
  std::mt19937 rng(7);
  std::map<RequestId, int64_t> prefill_left;  // admitted sequences still prefilling
  std::map<RequestId, int64_t> position;      // next prompt position of each prefilling one
  std::vector<RequestId> decoding;
  RequestId next_id = 1, last_admitted = 0;
  for (int step = 0; step < 2000; ++step) {
    for (int a = rng() % 3; a > 0; --a) {
      const int64_t len = 1 + rng() % (3 * align + 80);
      const int64_t first = rng() % 2 == 0 ? 0 : rng() % 1000;
      if (s.Add(next_id, len, first).ok()) {
        prefill_left[next_id] = -len;  // negative: not admitted
        position[next_id] = first;
      }
      ++next_id;
    }
    const std::vector<RequestId> decoding_before = decoding;
    std::vector<RequestId> prefilling;  // admitted, in arrival order
    for (const auto& [id, left] : prefill_left) {
      if (left > 0) prefilling.push_back(id);
    }
    ScheduledStep st = s.Schedule(AlwaysSlot);
    ASSERT_LE(st.num_tokens(), options.max_batch_tokens);
    ASSERT_LE(s.num_running(), options.max_running);
    std::vector<RequestId> decodes = st.decodes;
    std::sort(decodes.begin(), decodes.end());
    ASSERT_EQ(decodes, decoding_before);
    if (!prefilling.empty()) ASSERT_GT(ChunkOf(st, prefilling.front()), 0);
    size_t served = 0;  // the prefilling sequences served come first, in arrival order
    while (served < prefilling.size() && ChunkOf(st, prefilling[served]) > 0) ++served;
    for (size_t i = served; i < prefilling.size(); ++i) ASSERT_EQ(ChunkOf(st, prefilling[i]), 0);
    bool admitted_any = false;
    for (const auto& c : st.prefills) {
      int64_t& left = prefill_left[c.id];
      if (left < 0) {  // admitted now: ids increase with arrival, so FIFO means increasing
        ASSERT_GT(c.id, last_admitted);
        last_admitted = c.id;
        left = -left;
        admitted_any = true;
      }
      left -= c.num_tokens;
      position[c.id] += c.num_tokens;
      ASSERT_EQ(c.last, left == 0);
      if (!c.last) ASSERT_EQ(position[c.id] % align, 0) << "chunk of " << c.id << " ends unaligned";
      if (left == 0) {
        prefill_left.erase(c.id);
        position.erase(c.id);
        decoding.insert(std::upper_bound(decoding.begin(), decoding.end(), c.id), c.id);
      }
    }
    if (served < prefilling.size()) ASSERT_FALSE(admitted_any) << "admitted past a waiting one";
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
  EXPECT_GT(last_admitted, 1000u);  // traffic flowed
}

INSTANTIATE_TEST_SUITE_P(
    Alignments, SchedulerTrafficTest,
    ::testing::Values(
        SchedulerOptions{.max_batch_tokens = 32, .max_running = 6, .max_queue = 10,
                         .prefill_alignment = 1},
        SchedulerOptions{.max_batch_tokens = 40, .max_running = 8, .max_queue = 10,
                         .prefill_alignment = 16},
        SchedulerOptions{.max_batch_tokens = 69, .max_running = 6, .max_queue = 10},
        SchedulerOptions{.max_batch_tokens = 512, .max_running = 64, .max_queue = 10}),
    [](const ::testing::TestParamInfo<SchedulerOptions>& info) {
      return "Budget" + std::to_string(info.param.max_batch_tokens) + "Align" +
             std::to_string(info.param.prefill_alignment);
    });

}  // namespace
}  // namespace lizard
