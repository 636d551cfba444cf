#include "engine/runtime/state_manager.h"

#include <gtest/gtest.h>

#include "tests/runtime/fake_backend.h"

namespace lizard::testing {
namespace {

struct Fixture {
  explicit Fixture(int32_t slots, int64_t host_bytes = 1 << 20)
      : backend({.num_slots = slots, .slot_bytes = 100}, std::make_shared<FakeControl>()),
        states(&backend, /*max_states=*/16, host_bytes) {}
  // Puts some distinct content into a resident state's slot.
  void Advance(StateId id, int32_t token) {
    SequenceState& s = *states.Find(id);
    StepPlan plan;
    plan.chunks.push_back({*s.slot, s.consumed, {token}, LogitsMode::kNone});
    StepOutput out;
    ASSERT_TRUE(backend.Forward(plan, &out).ok());
    ++s.consumed;
  }
  FakeBackend backend;
  StateManager states;
};

TEST(StateManagerTest, SlotsAreLazyAndLruIdleStateIsSpilled) {
  Fixture f(2);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false),
                c = *f.states.Create(false);
  EXPECT_EQ(f.states.used_slots(), 0);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  ASSERT_TRUE(f.states.MakeResident(b).ok());
  f.Advance(a, 5);
  f.Advance(b, 6);
  f.states.Touch(*f.states.Find(a));  // b is now the least recently used
  ASSERT_TRUE(f.states.MakeResident(c).ok());
  EXPECT_TRUE(f.states.Find(b)->host.has_value());
  EXPECT_TRUE(f.states.Find(a)->slot.has_value());
  EXPECT_EQ(f.states.evictions(), 1);
  EXPECT_EQ(f.states.host_bytes_used(), 100);

  // Running states are never spilled: with a and c running there is no slot for b.
  f.states.Find(a)->running = f.states.Find(c)->running = true;
  EXPECT_EQ(f.states.MakeResident(b).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(f.states.Find(b)->host.has_value());
  f.states.Find(c)->running = false;
  ASSERT_TRUE(f.states.MakeResident(b).ok());
  EXPECT_EQ(f.states.restores(), 1);
  EXPECT_EQ(f.backend.SlotPosition(*f.states.Find(b)->slot), 1);
  EXPECT_EQ(f.states.host_states(), 1);  // c went to the host
}

TEST(StateManagerTest, ForkCopiesAndFallsBackToHost) {
  Fixture f(1);
  const StateId a = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 9);
  f.states.Find(a)->pending = {3};
  absl::StatusOr<StateId> copy = f.states.Fork(a);  // the only slot is a's: copy on the host
  ASSERT_TRUE(copy.ok()) << copy.status();
  const SequenceState& c = *f.states.Find(*copy);
  EXPECT_TRUE(c.host.has_value());
  EXPECT_EQ(c.consumed, 1);
  EXPECT_EQ(c.pending, std::vector<int32_t>{3});
  EXPECT_EQ(f.states.Info(c).num_tokens, 2);
  EXPECT_EQ(f.states.Info(c).location, StateLocation::kHost);

  f.states.Find(a)->busy = true;
  EXPECT_EQ(f.states.Fork(a).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(f.states.Free(a).code(), absl::StatusCode::kFailedPrecondition);
  f.states.Find(a)->busy = false;
  ASSERT_TRUE(f.states.Free(*copy).ok());
  EXPECT_EQ(f.states.host_bytes_used(), 0);
  ASSERT_TRUE(f.states.Free(a).ok());
  EXPECT_EQ(f.states.free_slots(), 1);
  EXPECT_EQ(f.states.num_states(), 0);
}

TEST(StateManagerTest, ForkOfASpilledStateRestoresToTheSameContents) {
  Fixture f(1);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 4);
  f.Advance(a, 2);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);
  ASSERT_TRUE(f.states.MakeResident(b).ok());  // spills a
  ASSERT_TRUE(f.states.Find(a)->host.has_value());
  const StateId copy = *f.states.Fork(a);
  EXPECT_EQ(f.states.host_bytes_used(), 200);
  ASSERT_TRUE(f.states.MakeResident(copy).ok());  // spills b, restores the copy
  EXPECT_EQ(*f.backend.SaveSlot(*f.states.Find(copy)->slot), a_bytes);
  EXPECT_EQ(f.states.Find(copy)->consumed, 2);
  EXPECT_EQ(f.states.restores(), 1);
  EXPECT_EQ(f.states.evictions(), 2);
}

TEST(StateManagerTest, MaxStates) {
  Fixture f(1);
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(f.states.Create(true).ok());
  EXPECT_EQ(f.states.Create(false).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lizard::testing
