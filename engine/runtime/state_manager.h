// StateManager: the engine's sequence states and where they live.
//
// A state is a conversation's memory: `consumed` tokens folded into the model state (in a device
// slot, or spilled to host bytes), plus `pending` tokens that belong to the conversation but have
// not been fed yet. A generated token is streamed before it is fed to the model, so when a
// request ends its last token (or, after a cancel, any unfed input) stays pending and is fed
// first by the next request on that state. Thus num_tokens = consumed + pending, and two turns
// equal one request over the whole history.
//
// Device tier = the backend's slots. A state gets a slot lazily (on first use, or when restored);
// when none is free, the least recently used state that is not running is spilled to host bytes
// (Backend::SpillSlot: the engine does not wait for the host-side serialization; a restore
// waits for it if it is still running), bounded by host_capacity_bytes. Nothing is ever dropped: when neither tier
// has room the caller gets RESOURCE_EXHAUSTED. A restore (Backend::RestoreSlot) may run in the
// background while steps go on: the state then holds a reserved slot and its host bytes until
// the restore is finished (so the host tier may exceed its capacity by the states in flight).
// So may the copy of a prefix-cache entry on the host into a new state (Admit's seed).
//
// Prefix-cache entries (see prefix_cache.h) are states too, made by Snapshot: they take a device
// slot only when one is free, are the first to leave the device when a slot is needed (moved to
// host bytes, which the prefix cache's budget counts, not host_capacity_bytes), are freed by the
// engine, and are not counted by num_states() or the host-tier numbers.
//
// Not thread-safe: the engine serializes all calls (and all backend calls).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/runtime/engine.h"

namespace lizard {

// One state's record. Only StateManager writes it (through the methods below); the engine reads
// it through Find to plan steps.
struct SequenceState {
  std::optional<SlotId> slot;       // resident in this device slot
  std::optional<SavedSlot> host;    // or spilled here (never both; maybe still being made)
  // A restore of `host` into `restore_slot` in flight (MakeResident with background set; only
  // while a request is attached: Detach finishes it), or of a seed's bytes (Admit) when
  // `restore_seed` holds what the seed consumed.
  std::shared_ptr<SlotRestore> restore;
  SlotId restore_slot = 0;
  std::optional<int64_t> restore_seed;
  int64_t consumed = 0;             // tokens the model state has consumed
  std::vector<int32_t> pending;     // tokens of the conversation not fed yet
  // What the last request added to the conversation (its kept input, then its generated tokens),
  // so a client can learn what a cancelled or broken stream left in the state. Bounded by one
  // request's input + max_new_tokens.
  std::vector<int32_t> last_turn;
  int64_t last_turn_input = 0;      // how many of last_turn were input
  int64_t tokens_at_turn_start = 0; // consumed + pending when the running request started
  uint64_t last_used = 0;           // LRU clock
  bool busy = false;                // a request is attached (queued or running)
  bool running = false;             // that request is admitted: its slot is in use by steps
  bool temporary = false;           // freed when its request ends
  bool cache_entry = false;         // a prefix-cache snapshot (consumed only, never pending)
};

class StateManager {
 public:
  StateManager(Backend* backend, int64_t max_states, int64_t host_capacity_bytes);

  // A new empty state (no slot until first use). RESOURCE_EXHAUSTED at max_states.
  absl::StatusOr<StateId> Create(bool temporary);
  // A copy of `source` (not busy). The copy lives on the device when a slot can be had,
  // otherwise on the host.
  absl::StatusOr<StateId> Fork(StateId source);
  // FAILED_PRECONDITION while busy, NOT_FOUND if unknown.
  absl::Status Free(StateId id);
  // A prefix-cache entry holding what `source` has consumed (its pending tokens are not part of
  // it). `source` may be running (the engine calls this between steps). Copied to a free device
  // slot if there is one, else saved to host bytes: it never spills another state.
  absl::StatusOr<StateId> Snapshot(StateId source);

  // nullptr if unknown.
  const SequenceState* Find(StateId id) const;
  // NOT_FOUND if unknown.
  absl::StatusOr<StateInfo> Info(StateId id) const;

  // A request's life on a state, in this order (`id` must exist: the engine checked it; a request
  // cancelled while queued goes from Attach to Detach). Attach: the state becomes busy, and its
  // pending tokens are handed to the request (it feeds them first). Admit: the request runs; the
  // state gets a device slot (see MakeResident) and is not spilled until Detach. Consume: the
  // model state consumed `tokens` more. Detach: the request ended; `unfed` stays pending for the
  // next request, `turn` is what it added to the conversation (its first `turn_input` tokens were
  // input). A temporary state is freed there. Returns the tokens the state holds (consumed +
  // pending).
  // Admit with `seed` (a cache entry, 0 = none) copies the seed's memory into the state first:
  // the state must not have consumed anything yet, and then has consumed what the seed has.
  // Admit's `background`: as MakeResident's (UNAVAILABLE while the state's restore, or that of a
  // seed on the host, runs). Detach before that is done drops the seed's copy: the state has
  // consumed nothing.
  std::vector<int32_t> Attach(StateId id);
  absl::Status Admit(StateId id, StateId seed = 0, bool background = false);
  void Consume(StateId id, int64_t tokens);
  int64_t Detach(StateId id, std::span<const int32_t> unfed, std::span<const int32_t> turn,
                 int64_t turn_input);

  // Gives the state a device slot: a free one, or one spilled from the LRU non-running state;
  // restores spilled bytes into it, or resets it for a state that has consumed nothing.
  // With `background`, a restore that is not done at once keeps running and MakeResident returns
  // UNAVAILABLE: call it again (a later step) to finish it. Without, it waits for the restore.
  absl::Status MakeResident(StateId id, bool background = false);
  // Marks a state as just used (LRU).
  void Touch(StateId id) { Touch(states_.at(id)); }
  // Spill ahead of need: while fewer than `free_target` slots are free, moves one idle resident
  // state to the host (a device cache entry first, else the least recently used state that no
  // request holds), so that a coming admission finds a free slot. At most `max_spills` moves, and
  // none that would fill the host tier (a state that must come back would then have no room).
  // Returns how many it moved.
  int SpillAhead(int32_t free_target, int max_spills);

  // Slot bytes plus the softmax KV bytes of what it consumed.
  int64_t BytesOf(const SequenceState& state) const;

  // States other than prefix-cache entries.
  int64_t num_states() const { return static_cast<int64_t>(states_.size()) - cache_entries_; }
  int32_t free_slots() const { return static_cast<int32_t>(free_slots_.size()); }
  int32_t used_slots() const { return backend_->num_slots() - free_slots(); }
  int64_t host_states() const;
  int64_t host_bytes_used() const { return host_bytes_used_; }
  int64_t host_capacity_bytes() const { return host_capacity_bytes_; }
  int64_t evictions() const { return evictions_; }
  int64_t restores() const { return restores_; }

 private:
  SequenceState* Record(StateId id);  // Find, for writing; nullptr if unknown
  void Touch(SequenceState& state) { state.last_used = ++clock_; }
  // A free slot, spilling the LRU non-running resident state (other than `keep`) if needed.
  // `host_room_bonus`: host bytes about to be freed (a restore swaps its bytes for the victim's).
  absl::StatusOr<SlotId> AcquireSlot(StateId keep, int64_t host_room_bonus = 0);
  // The least recently used prefix-cache entry on the device, or nullptr.
  SequenceState* LruDeviceCacheEntry();
  // The least recently used resident state other than `keep` that no running request holds (with
  // `idle_only`, that no request holds at all), or nullptr.
  SequenceState* LruVictim(StateId keep, bool idle_only);
  absl::Status Spill(SequenceState& state, int64_t host_room_bonus);
  // Moves a cache entry's slot to host bytes (outside host_capacity_bytes: the cache counts it).
  absl::Status Demote(SequenceState& entry);
  // Admit's copy of a seed into a new slot: at once from the device, else a restore in flight.
  absl::Status Seed(StateId id, StateId seed);
  // Starts loading `saved` into `slot` (taken for `state`; given back if that fails).
  // `seed_consumed`: the bytes are a seed's, not the state's own `host`.
  absl::Status StartRestore(SequenceState& state, SlotId slot, const SavedSlot& saved,
                            std::optional<int64_t> seed_consumed);
  // Ends the state's restore in flight: resident on success, still on the host (or, for a seed,
  // without a slot) on failure.
  absl::Status FinishRestore(SequenceState& state);
  void Release(SequenceState& state);  // returns its slot / host bytes

  Backend* backend_;
  int64_t max_states_;
  int64_t host_capacity_bytes_;
  absl::node_hash_map<StateId, SequenceState> states_;  // node map: Find() pointers stay valid
  std::vector<SlotId> free_slots_;
  StateId next_id_ = 1;
  uint64_t clock_ = 0;
  int64_t host_bytes_used_ = 0;  // of states other than cache entries
  int64_t cache_entries_ = 0;
  int64_t evictions_ = 0;
  int64_t restores_ = 0;
};

}  // namespace lizard
