#include "engine/runtime/state_manager.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/runtime/fake_backend.h"

namespace lizard::testing {
namespace {

struct Fixture {
  explicit Fixture(int32_t slots, int64_t host_bytes = 1 << 20, bool slow_spill = false)
      : backend({.num_slots = slots, .slot_bytes = 100, .slow_spill = slow_spill}, control),
        states(&backend, /*max_states=*/16, host_bytes) {}
  // Puts some distinct content into a resident state's slot.
  void Advance(StateId id, int32_t token) {
    const SequenceState& s = *states.Find(id);
    StepPlan plan;
    plan.chunks.push_back({*s.slot, s.consumed, {token}, LogitsMode::kNone});
    StepOutput out;
    ASSERT_TRUE(backend.Forward(plan, &out).ok());
    states.Consume(id, 1);
  }
  std::shared_ptr<FakeControl> control = std::make_shared<FakeControl>();
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
  f.states.Touch(a);  // b is now the least recently used
  ASSERT_TRUE(f.states.MakeResident(c).ok());
  EXPECT_TRUE(f.states.Find(b)->host.has_value());
  EXPECT_TRUE(f.states.Find(a)->slot.has_value());
  EXPECT_EQ(f.states.evictions(), 1);
  EXPECT_EQ(f.states.host_bytes_used(), 100);

  // Running states are never spilled: with a and c running there is no slot for b.
  for (StateId running : {a, c}) {
    EXPECT_TRUE(f.states.Attach(running).empty());
    ASSERT_TRUE(f.states.Admit(running).ok());
  }
  EXPECT_EQ(f.states.MakeResident(b).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(f.states.Find(b)->host.has_value());
  f.states.Detach(c, {}, {}, 0);
  ASSERT_TRUE(f.states.MakeResident(b).ok());
  EXPECT_EQ(f.states.restores(), 1);
  EXPECT_EQ(f.backend.SlotPosition(*f.states.Find(b)->slot), 1);
  EXPECT_EQ(f.states.host_states(), 1);  // c went to the host
}

// Spilled bytes may still be in the making when the slot is reused (the CUDA backend serializes
// them on a worker thread): a restore and a fork wait for them and see the state as it was spilled.
TEST(StateManagerTest, RestoreWaitsForSpillStillBeingMade) {
  Fixture f(1, 1 << 20, /*slow_spill=*/true);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 5);
  f.Advance(a, 6);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);
  ASSERT_TRUE(f.states.MakeResident(b).ok());  // spills a
  f.Advance(b, 7);                             // and overwrites the slot a left at once
  ASSERT_TRUE(f.states.Find(a)->host.has_value());
  EXPECT_EQ(f.states.Find(a)->host->size(), 100);
  EXPECT_EQ(f.states.host_bytes_used(), 100);
  const StateId copy = *f.states.Fork(a);  // shares a's bytes
  ASSERT_TRUE(f.states.MakeResident(a).ok());  // spills b, restores a
  EXPECT_EQ(*f.backend.SaveSlot(*f.states.Find(a)->slot), a_bytes);
  ASSERT_TRUE(f.states.MakeResident(copy).ok());
  EXPECT_EQ(*f.backend.SaveSlot(*f.states.Find(copy)->slot), a_bytes);
  EXPECT_EQ(f.states.evictions(), 3);
  EXPECT_EQ(f.states.restores(), 2);
}

// A restore in the background (Admit while other sequences run) keeps its slot reserved and its
// host bytes until it is done; asking again finishes it, with the state as it was spilled.
TEST(StateManagerTest, BackgroundRestoreReservesItsSlotUntilDone) {
  Fixture f(2);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false), c = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 5);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);
  ASSERT_TRUE(f.states.MakeResident(b).ok());
  f.Advance(b, 6);
  ASSERT_TRUE(f.states.MakeResident(c).ok());  // spills a, the least recently used
  ASSERT_TRUE(f.states.Find(a)->host.has_value());

  f.control->HoldRestores();
  f.states.Attach(a);
  EXPECT_EQ(f.states.Admit(a, 0, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  const SequenceState& state = *f.states.Find(a);
  EXPECT_FALSE(state.slot.has_value());
  EXPECT_TRUE(state.host.has_value());
  EXPECT_NE(state.restore, nullptr);
  EXPECT_FALSE(state.running);
  EXPECT_TRUE(f.states.Find(b)->host.has_value());  // b made room (LRU)
  EXPECT_EQ(f.states.free_slots(), 0);
  EXPECT_EQ(f.states.host_bytes_used(), 200);  // a's bytes stay until the restore is done
  EXPECT_EQ(f.states.restores(), 0);
  // Still running: asking again changes nothing.
  EXPECT_EQ(f.states.Admit(a, 0, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.states.evictions(), 2);

  f.control->ReleaseRestores();
  ASSERT_TRUE(f.states.Admit(a, 0, /*background=*/true).ok());
  EXPECT_TRUE(state.running);
  EXPECT_EQ(state.restore, nullptr);
  EXPECT_FALSE(state.host.has_value());
  EXPECT_EQ(*f.backend.SaveSlot(*state.slot), a_bytes);
  EXPECT_EQ(f.states.host_bytes_used(), 100);
  EXPECT_EQ(f.states.restores(), 1);
}

// A request cancelled while its state was being restored: Detach finishes the restore, so the
// slot is the state's and can be spilled again (a restore never outlives its request).
TEST(StateManagerTest, DetachFinishesARestoreInFlight) {
  Fixture f(1);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 5);
  ASSERT_TRUE(f.states.MakeResident(b).ok());  // spills a
  f.states.Attach(a);
  f.control->HoldRestores();
  EXPECT_EQ(f.states.Admit(a, 0, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  f.control->ReleaseRestores();
  f.states.Detach(a, {}, {}, 0);
  EXPECT_TRUE(f.states.Find(a)->slot.has_value());
  EXPECT_EQ(f.states.Find(a)->restore, nullptr);
  EXPECT_EQ(f.states.restores(), 1);
  ASSERT_TRUE(f.states.MakeResident(b).ok());  // a is an ordinary resident state: it spills
  EXPECT_TRUE(f.states.Find(a)->host.has_value());
}

// A seed on the host is copied like a restore: in the background, its slot reserved until it is
// done, its bytes still the cache entry's (not the host tier's). A request cancelled meanwhile
// leaves a state that consumed nothing and starts from an empty one.
TEST(StateManagerTest, SeedFromTheHostIsRestoredInTheBackground) {
  Fixture f(1);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false), c = *f.states.Create(false);
  f.states.Attach(a);
  ASSERT_TRUE(f.states.Admit(a).ok());
  f.Advance(a, 5);
  f.Advance(a, 6);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);
  const StateId seed = *f.states.Snapshot(a);  // no free slot: on the host
  f.states.Detach(a, {}, {}, 0);
  ASSERT_TRUE(f.states.Find(seed)->host.has_value());

  f.control->HoldRestores();
  f.states.Attach(b);
  EXPECT_EQ(f.states.Admit(b, seed, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  const SequenceState& state = *f.states.Find(b);
  EXPECT_FALSE(state.slot.has_value());
  EXPECT_NE(state.restore, nullptr);
  EXPECT_FALSE(state.running);
  EXPECT_EQ(state.consumed, 0);
  EXPECT_TRUE(f.states.Find(a)->host.has_value());  // a made room
  EXPECT_EQ(f.states.free_slots(), 0);
  EXPECT_EQ(f.states.Admit(b, seed, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.states.evictions(), 1);
  f.control->ReleaseRestores();
  ASSERT_TRUE(f.states.Admit(b, seed, /*background=*/true).ok());
  EXPECT_TRUE(state.running);
  EXPECT_EQ(state.restore, nullptr);
  EXPECT_EQ(state.consumed, 2);
  EXPECT_EQ(*f.backend.SaveSlot(*state.slot), a_bytes);
  EXPECT_TRUE(f.states.Find(seed)->host.has_value());
  EXPECT_EQ(f.states.host_bytes_used(), 100);  // a's only
  EXPECT_EQ(f.states.restores(), 0);           // no state came back from the host
  f.states.Detach(b, {}, {}, 0);

  // Cancelled while the copy is held: Detach waits for it, then drops it with the slot.
  f.control->HoldRestores();
  f.states.Attach(c);
  EXPECT_EQ(f.states.Admit(c, seed, /*background=*/true).code(), absl::StatusCode::kUnavailable);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    f.control->ReleaseRestores();
  });
  const std::vector<int32_t> unfed = {7};
  EXPECT_EQ(f.states.Detach(c, unfed, unfed, 1), 1);
  release.join();
  const SequenceState& cancelled = *f.states.Find(c);
  EXPECT_EQ(cancelled.restore, nullptr);
  EXPECT_FALSE(cancelled.slot.has_value());
  EXPECT_EQ(cancelled.consumed, 0);
  EXPECT_EQ(f.states.free_slots(), 1);
  EXPECT_EQ(f.states.host_bytes_used(), 200);  // a's and b's
  f.states.Attach(c);
  ASSERT_TRUE(f.states.Admit(c).ok());
  f.Advance(c, 5);
  f.Advance(c, 6);
  EXPECT_EQ(*f.backend.SaveSlot(*cancelled.slot), a_bytes);  // from an empty state
  f.states.Detach(c, {}, {}, 0);
}

// A seed that fails to load (corrupt bytes) leaves the slot free, its contents untrusted, and
// the state as one that consumed nothing.
TEST(StateManagerTest, FailedSeedRestoreLeavesAStateThatConsumedNothing) {
  Fixture f(1);
  const StateId a = *f.states.Create(false), b = *f.states.Create(false);
  f.states.Attach(a);
  ASSERT_TRUE(f.states.Admit(a).ok());
  f.Advance(a, 5);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);
  const StateId seed = *f.states.Snapshot(a);  // on the host
  f.states.Detach(a, {}, {}, 0);

  f.control->FailRestores(true);
  f.states.Attach(b);
  EXPECT_EQ(f.states.Admit(b, seed, /*background=*/true).code(), absl::StatusCode::kDataLoss);
  const SequenceState& state = *f.states.Find(b);
  EXPECT_FALSE(state.slot.has_value());
  EXPECT_EQ(state.restore, nullptr);
  EXPECT_EQ(state.consumed, 0);
  EXPECT_EQ(f.states.free_slots(), 1);
  f.states.Detach(b, {}, {}, 0);
  f.control->FailRestores(false);
  f.states.Attach(b);
  ASSERT_TRUE(f.states.Admit(b).ok());
  f.Advance(b, 5);
  EXPECT_EQ(*f.backend.SaveSlot(*state.slot), a_bytes);  // from an empty state
  EXPECT_EQ(f.states.restores(), 0);
}

TEST(StateManagerTest, ForkCopiesAndFallsBackToHost) {
  Fixture f(1);
  const StateId a = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 9);
  f.states.Attach(a);
  const std::vector<int32_t> pending = {3};
  EXPECT_EQ(f.states.Detach(a, pending, pending, 1), 2);
  absl::StatusOr<StateId> copy = f.states.Fork(a);  // the only slot is a's: copy on the host
  ASSERT_TRUE(copy.ok()) << copy.status();
  const SequenceState& c = *f.states.Find(*copy);
  EXPECT_TRUE(c.host.has_value());
  EXPECT_EQ(c.consumed, 1);
  EXPECT_EQ(c.pending, std::vector<int32_t>{3});
  EXPECT_EQ(c.last_turn, pending);
  EXPECT_EQ(f.states.Info(*copy)->num_tokens, 2);
  EXPECT_EQ(f.states.Info(*copy)->location, StateLocation::kHost);

  EXPECT_EQ(f.states.Attach(a), pending);  // busy, its pending tokens handed to the request
  EXPECT_EQ(f.states.Fork(a).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(f.states.Free(a).code(), absl::StatusCode::kFailedPrecondition);
  f.states.Detach(a, {}, {}, 0);
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

TEST(StateManagerTest, ARequestsTurnFromAttachToDetach) {
  Fixture f(1);
  const StateId a = *f.states.Create(false);
  EXPECT_TRUE(f.states.Attach(a).empty());
  EXPECT_TRUE(f.states.Info(a)->busy);
  ASSERT_TRUE(f.states.Admit(a).ok());
  EXPECT_TRUE(f.states.Find(a)->running);
  f.Advance(a, 1);
  f.Advance(a, 2);
  // Input {1, 2}, generated {7}: 7 was streamed but not fed, so it stays pending.
  const std::vector<int32_t> turn = {1, 2, 7};
  EXPECT_EQ(f.states.Detach(a, std::span(turn).subspan(2), turn, 2), 3);
  const StateInfo info = *f.states.Info(a);
  EXPECT_FALSE(info.busy);
  EXPECT_FALSE(f.states.Find(a)->running);
  EXPECT_EQ(info.num_tokens, 3);
  EXPECT_EQ(info.last_turn_tokens, turn);
  EXPECT_EQ(info.last_turn_input_tokens, 2);
  // The next request gets the pending token first; while busy, Info reports the turn's start.
  EXPECT_EQ(f.states.Attach(a), std::vector<int32_t>{7});
  EXPECT_EQ(f.states.Info(a)->num_tokens, 3);
  f.states.Detach(a, {}, {}, 0);

  // A temporary state is freed when its request ends.
  const StateId t = *f.states.Create(true);
  f.states.Attach(t);
  f.states.Detach(t, {}, {}, 0);
  EXPECT_EQ(f.states.Find(t), nullptr);
  EXPECT_EQ(f.states.Info(t).status().code(), absl::StatusCode::kNotFound);
}

TEST(StateManagerTest, MaxStates) {
  Fixture f(1);
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(f.states.Create(true).ok());
  EXPECT_EQ(f.states.Create(false).status().code(), absl::StatusCode::kResourceExhausted);
}

// Prefix-cache entries: a snapshot takes only a free slot (else host bytes, outside the host
// tier), leaves the device before any conversation, is not counted as a state, and seeds a new
// state with the same contents whichever tier it is in.
TEST(StateManagerTest, CacheEntriesTakeFreeSlotsOnlyAndSeedNewStates) {
  Fixture f(2);
  const StateId a = *f.states.Create(false);
  f.states.Attach(a);
  ASSERT_TRUE(f.states.Admit(a).ok());
  f.Advance(a, 5);
  f.Advance(a, 6);
  const std::string a_bytes = *f.backend.SaveSlot(*f.states.Find(a)->slot);

  const StateId on_device = *f.states.Snapshot(a);  // the free slot
  const StateId on_host = *f.states.Snapshot(a);    // no slot left: host bytes, nothing spilled
  EXPECT_TRUE(f.states.Find(on_device)->slot.has_value());
  EXPECT_TRUE(f.states.Find(on_host)->host.has_value());
  EXPECT_EQ(f.states.Find(on_host)->consumed, 2);
  EXPECT_EQ(f.states.num_states(), 1);
  EXPECT_EQ(f.states.host_states(), 0);
  EXPECT_EQ(f.states.host_bytes_used(), 0);
  f.states.Detach(a, {}, {}, 0);

  // A new state's admission moves the device entry to the host before it spills `a`.
  for (StateId seed : {on_device, on_host}) {
    const StateId b = *f.states.Create(false);
    f.states.Attach(b);
    ASSERT_TRUE(f.states.Admit(b, seed).ok());
    EXPECT_EQ(f.states.Find(b)->consumed, 2);
    EXPECT_EQ(*f.backend.SaveSlot(*f.states.Find(b)->slot), a_bytes);
    EXPECT_TRUE(f.states.Find(a)->slot.has_value());
    EXPECT_EQ(f.states.evictions(), 0);
    f.states.Detach(b, {}, {}, 0);
    ASSERT_TRUE(f.states.Free(b).ok());
  }
  EXPECT_TRUE(f.states.Find(on_device)->host.has_value());
  ASSERT_TRUE(f.states.Free(on_device).ok());
  ASSERT_TRUE(f.states.Free(on_host).ok());
  EXPECT_EQ(f.states.num_states(), 1);
}

// Spill ahead of need: idle states leave the device until `free_target` slots are free, least
// recently used first; a state a request holds (running or queued) never does, and no spill ahead
// takes the host tier's last room.
TEST(StateManagerTest, SpillAheadFreesSlotsFromIdleStates) {
  Fixture f(4, /*host_bytes=*/250);  // slots of 100 bytes
  StateId ids[4];
  for (StateId& id : ids) {
    id = *f.states.Create(false);
    ASSERT_TRUE(f.states.MakeResident(id).ok());
    f.Advance(id, 7);
  }
  f.states.Attach(ids[0]);  // running
  ASSERT_TRUE(f.states.Admit(ids[0]).ok());
  f.states.Attach(ids[1]);  // held by a queued request
  f.states.Touch(ids[2]);   // ids[3] is the least recently used idle state
  EXPECT_EQ(f.states.free_slots(), 0);
  EXPECT_EQ(f.states.SpillAhead(1, 1), 1);
  EXPECT_TRUE(f.states.Find(ids[3])->host.has_value());
  EXPECT_EQ(f.states.free_slots(), 1);
  EXPECT_EQ(f.states.evictions(), 1);
  EXPECT_EQ(f.states.SpillAhead(1, 1), 0);  // the target is met
  // ids[2] would leave 50 host bytes, less than a state: it stays; ids[0], ids[1] are held.
  EXPECT_EQ(f.states.SpillAhead(4, 4), 0);
  for (StateId id : {ids[0], ids[1], ids[2]}) EXPECT_TRUE(f.states.Find(id)->slot.has_value());
  // The spilled state comes back as it was.
  ASSERT_TRUE(f.states.MakeResident(ids[3]).ok());
  EXPECT_EQ(f.backend.SlotPosition(*f.states.Find(ids[3])->slot), 1);
}

// A prefix-cache entry on the device leaves before any session (its bytes are the cache's).
TEST(StateManagerTest, SpillAheadMovesCacheEntriesFirst) {
  Fixture f(2);
  const StateId a = *f.states.Create(false);
  ASSERT_TRUE(f.states.MakeResident(a).ok());
  f.Advance(a, 5);
  const StateId entry = *f.states.Snapshot(a);  // the last free slot
  EXPECT_EQ(f.states.free_slots(), 0);
  EXPECT_EQ(f.states.SpillAhead(1, 1), 1);
  EXPECT_TRUE(f.states.Find(entry)->host.has_value());
  EXPECT_TRUE(f.states.Find(a)->slot.has_value());
  EXPECT_EQ(f.states.host_bytes_used(), 0);
  EXPECT_EQ(f.states.SpillAhead(2, 1), 1);  // then the idle session
  EXPECT_TRUE(f.states.Find(a)->host.has_value());
  EXPECT_EQ(f.states.host_bytes_used(), 100);
}

}  // namespace
}  // namespace lizard::testing
