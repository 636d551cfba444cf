#include "engine/runtime/state_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace lizard {

StateManager::StateManager(Backend* backend, int64_t max_states, int64_t host_capacity_bytes)
    : backend_(backend), max_states_(max_states), host_capacity_bytes_(host_capacity_bytes) {
  // Handed out from the back: slot 0 first.
  for (SlotId s = backend->num_slots() - 1; s >= 0; --s) free_slots_.push_back(s);
}

absl::StatusOr<StateId> StateManager::Create(bool temporary) {
  if (num_states() >= max_states_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("state capacity is full (", max_states_, " states)"));
  }
  const StateId id = next_id_++;
  SequenceState& state = states_[id];
  state.temporary = temporary;
  Touch(state);
  return id;
}

absl::StatusOr<StateId> StateManager::Fork(StateId source) {
  SequenceState* src = Record(source);
  if (src == nullptr) return absl::NotFoundError(absl::StrCat("unknown state ", source));
  if (src->busy) return absl::FailedPreconditionError("cannot fork a busy state");
  if (num_states() >= max_states_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("state capacity is full (", max_states_, " states)"));
  }

  SequenceState copy;
  copy.consumed = src->consumed;
  copy.pending = src->pending;
  copy.last_turn = src->last_turn;
  copy.last_turn_input = src->last_turn_input;
  if (src->slot.has_value()) {
    absl::StatusOr<SlotId> slot = AcquireSlot(source);
    if (slot.ok()) {
      if (absl::Status s = backend_->CopySlot(*src->slot, *slot); !s.ok()) {
        free_slots_.push_back(*slot);
        return s;
      }
      copy.slot = *slot;
    } else {
      // No device room: keep the copy on the host.
      absl::StatusOr<SavedSlot> saved = backend_->SpillSlot(*src->slot);
      if (!saved.ok()) return saved.status();
      copy.host = *std::move(saved);
    }
  } else if (src->host.has_value()) {
    copy.host = *src->host;
  }
  if (copy.host.has_value()) {
    const int64_t size = copy.host->size();
    if (host_bytes_used_ + size > host_capacity_bytes_) {
      return absl::ResourceExhaustedError("no room for the forked state on device or host");
    }
    host_bytes_used_ += size;
  }
  const StateId id = next_id_++;
  states_[id] = std::move(copy);
  Touch(states_[id]);
  Touch(*src);
  return id;
}

absl::Status StateManager::Free(StateId id) {
  auto it = states_.find(id);
  if (it == states_.end()) return absl::NotFoundError(absl::StrCat("unknown state ", id));
  if (it->second.busy) return absl::FailedPreconditionError("state is busy");
  Release(it->second);
  if (it->second.cache_entry) --cache_entries_;
  states_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<StateId> StateManager::Snapshot(StateId source) {
  SequenceState* src = Record(source);
  if (src == nullptr) return absl::NotFoundError(absl::StrCat("unknown state ", source));
  if (!src->slot.has_value()) return absl::FailedPreconditionError("snapshot of a state off the device");
  SequenceState entry;
  entry.cache_entry = true;
  entry.consumed = src->consumed;
  if (!free_slots_.empty()) {
    const SlotId slot = free_slots_.back();
    if (absl::Status s = backend_->CopySlot(*src->slot, slot); !s.ok()) return s;
    free_slots_.pop_back();
    entry.slot = slot;
  } else {
    absl::StatusOr<SavedSlot> saved = backend_->SpillSlot(*src->slot);
    if (!saved.ok()) return saved.status();
    entry.host = *std::move(saved);
  }
  const StateId id = next_id_++;
  states_[id] = std::move(entry);
  Touch(states_[id]);
  ++cache_entries_;
  return id;
}

int64_t StateManager::BytesOf(const SequenceState& state) const {
  return backend_->slot_bytes() + backend_->kv_bytes_per_token() * state.consumed;
}

SequenceState* StateManager::Record(StateId id) {
  auto it = states_.find(id);
  return it == states_.end() ? nullptr : &it->second;
}

const SequenceState* StateManager::Find(StateId id) const {
  auto it = states_.find(id);
  return it == states_.end() ? nullptr : &it->second;
}

absl::StatusOr<StateInfo> StateManager::Info(StateId id) const {
  const SequenceState* state = Find(id);
  if (state == nullptr) return absl::NotFoundError(absl::StrCat("unknown state ", id));
  StateInfo info;
  info.num_tokens = state->busy ? state->tokens_at_turn_start
                                : state->consumed + static_cast<int64_t>(state->pending.size());
  info.location = state->host.has_value() ? StateLocation::kHost : StateLocation::kDevice;
  info.state_bytes = BytesOf(*state);
  info.busy = state->busy;
  info.last_turn_tokens = state->last_turn;
  info.last_turn_input_tokens = state->last_turn_input;
  return info;
}

std::vector<int32_t> StateManager::Attach(StateId id) {
  SequenceState& state = states_.at(id);
  state.tokens_at_turn_start = state.consumed + static_cast<int64_t>(state.pending.size());
  state.busy = true;
  Touch(state);
  return std::exchange(state.pending, {});
}

absl::Status StateManager::Admit(StateId id, StateId seed, bool background) {
  SequenceState& state = states_.at(id);
  // A seed from the host is restored like the state's own bytes: MakeResident finishes it.
  if (seed != 0 && state.restore == nullptr) {
    if (absl::Status s = Seed(id, seed); !s.ok()) return s;
  }
  if (absl::Status s = MakeResident(id, background); !s.ok()) return s;
  state.running = true;
  return absl::OkStatus();
}

absl::Status StateManager::Seed(StateId id, StateId seed_id) {
  SequenceState& state = states_.at(id);
  SequenceState& seed = states_.at(seed_id);
  Release(state);  // it consumed nothing: no contents worth keeping
  absl::StatusOr<SlotId> slot = AcquireSlot(id);
  if (!slot.ok()) return slot.status();
  Touch(seed);
  // Read the seed after AcquireSlot, which may have moved it to the host.
  if (seed.host.has_value()) return StartRestore(state, *slot, *seed.host, seed.consumed);
  if (absl::Status s = backend_->CopySlot(*seed.slot, *slot); !s.ok()) {
    free_slots_.push_back(*slot);
    return s;
  }
  state.slot = *slot;
  state.consumed = seed.consumed;
  return absl::OkStatus();
}

void StateManager::Consume(StateId id, int64_t tokens) { states_.at(id).consumed += tokens; }

int64_t StateManager::Detach(StateId id, std::span<const int32_t> unfed,
                             std::span<const int32_t> turn, int64_t turn_input) {
  SequenceState& state = states_.at(id);
  if (state.restore != nullptr && state.restore_seed.has_value()) {
    // A seed's copy for a request never admitted is dropped: the engine takes it that the state
    // consumed nothing, and a slot is reset only when a state gets it.
    std::exchange(state.restore, nullptr)->Finish().IgnoreError();
    free_slots_.push_back(state.restore_slot);
  }
  // A request cancelled while its state was being restored: finish now, so the reserved slot
  // becomes the state's (or free again) and can be spilled like any other.
  if (state.restore != nullptr) FinishRestore(state).IgnoreError();  // failed: still on the host
  state.pending.assign(unfed.begin(), unfed.end());
  state.last_turn.assign(turn.begin(), turn.end());
  state.last_turn_input = turn_input;
  state.busy = false;
  state.running = false;
  Touch(state);
  const int64_t tokens = state.consumed + static_cast<int64_t>(state.pending.size());
  if (state.temporary) Free(id).IgnoreError();  // not busy: cannot fail
  return tokens;
}

absl::Status StateManager::MakeResident(StateId id, bool background) {
  SequenceState* state = Record(id);
  if (state == nullptr) return absl::NotFoundError(absl::StrCat("unknown state ", id));
  if (state->slot.has_value()) return absl::OkStatus();

  if (state->restore == nullptr) {
    const int64_t own_host_bytes = state->host.has_value() ? state->host->size() : 0;
    absl::StatusOr<SlotId> slot = AcquireSlot(id, own_host_bytes);
    if (!slot.ok()) return slot.status();
    if (!state->host.has_value()) {
      if (absl::Status s = backend_->ResetSlot(*slot); !s.ok()) {
        free_slots_.push_back(*slot);
        return s;
      }
      state->slot = *slot;
      return absl::OkStatus();
    }
    if (absl::Status s = StartRestore(*state, *slot, *state->host, std::nullopt); !s.ok()) return s;
  }
  if (background && !state->restore->ready()) {
    return absl::UnavailableError("the state is being restored from the host tier");
  }
  return FinishRestore(*state);
}

absl::Status StateManager::StartRestore(SequenceState& state, SlotId slot, const SavedSlot& saved,
                                        std::optional<int64_t> seed_consumed) {
  absl::StatusOr<std::unique_ptr<SlotRestore>> restore = backend_->RestoreSlot(slot, saved);
  if (!restore.ok()) {
    free_slots_.push_back(slot);
    return restore.status();
  }
  state.restore = *std::move(restore);
  state.restore_slot = slot;
  state.restore_seed = seed_consumed;
  return absl::OkStatus();
}

absl::Status StateManager::FinishRestore(SequenceState& state) {
  const absl::Status loaded = std::exchange(state.restore, nullptr)->Finish();
  if (!loaded.ok()) {
    free_slots_.push_back(state.restore_slot);  // its contents are undefined
    return loaded;
  }
  state.slot = state.restore_slot;
  if (state.restore_seed.has_value()) {
    state.consumed = *state.restore_seed;  // the bytes stay the cache entry's
    return absl::OkStatus();
  }
  host_bytes_used_ -= state.host->size();
  state.host.reset();
  ++restores_;
  return absl::OkStatus();
}

int64_t StateManager::host_states() const {
  int64_t n = 0;
  for (const auto& [id, state] : states_) n += state.host.has_value() && !state.cache_entry;
  return n;
}

absl::StatusOr<SlotId> StateManager::AcquireSlot(StateId keep, int64_t host_room_bonus) {
  if (free_slots_.empty()) {
    // A cache entry leaves the device before any conversation does.
    if (SequenceState* entry = LruDeviceCacheEntry(); entry != nullptr) {
      if (absl::Status s = Demote(*entry); !s.ok()) return s;
    }
  }
  if (free_slots_.empty()) {
    SequenceState* victim = LruVictim(keep, /*idle_only=*/false);
    if (victim == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "all ", backend_->num_slots(), " device state slots are used by running sequences"));
    }
    if (absl::Status s = Spill(*victim, host_room_bonus); !s.ok()) return s;
  }
  const SlotId slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

SequenceState* StateManager::LruDeviceCacheEntry() {
  SequenceState* entry = nullptr;
  for (auto& [id, state] : states_) {
    if (!state.cache_entry || !state.slot.has_value()) continue;
    if (entry == nullptr || state.last_used < entry->last_used) entry = &state;
  }
  return entry;
}

SequenceState* StateManager::LruVictim(StateId keep, bool idle_only) {
  SequenceState* victim = nullptr;
  for (auto& [id, state] : states_) {
    if (id == keep || !state.slot.has_value() || state.running || state.cache_entry) continue;
    if (idle_only && state.busy) continue;
    if (victim == nullptr || state.last_used < victim->last_used) victim = &state;
  }
  return victim;
}

int StateManager::SpillAhead(int32_t free_target, int max_spills) {
  int moved = 0;
  while (moved < max_spills && free_slots() < free_target) {
    if (SequenceState* entry = LruDeviceCacheEntry(); entry != nullptr) {
      if (!Demote(*entry).ok()) break;
    } else {
      // Only while the host tier keeps room for this state and one more: ahead of need, a spill
      // must not take the room a state spilled at need (or a restore's swap) will want.
      SequenceState* victim = LruVictim(/*keep=*/0, /*idle_only=*/true);
      if (victim == nullptr || host_bytes_used_ + 2 * BytesOf(*victim) > host_capacity_bytes_) break;
      if (!Spill(*victim, 0).ok()) break;
    }
    ++moved;
  }
  return moved;
}

absl::Status StateManager::Spill(SequenceState& state, int64_t host_room_bonus) {
  absl::StatusOr<SavedSlot> saved = backend_->SpillSlot(*state.slot);
  if (!saved.ok()) return saved.status();
  const int64_t size = saved->size();
  if (host_bytes_used_ + size > host_capacity_bytes_ + host_room_bonus) {
    return absl::ResourceExhaustedError(
        absl::StrCat("device state slots are full and the host tier has no room (",
                     host_bytes_used_, " of ", host_capacity_bytes_, " bytes used)"));
  }
  host_bytes_used_ += size;
  state.host = *std::move(saved);
  free_slots_.push_back(*state.slot);
  state.slot.reset();
  ++evictions_;
  return absl::OkStatus();
}

absl::Status StateManager::Demote(SequenceState& entry) {
  absl::StatusOr<SavedSlot> saved = backend_->SpillSlot(*entry.slot);
  if (!saved.ok()) return saved.status();
  entry.host = *std::move(saved);
  free_slots_.push_back(*entry.slot);
  entry.slot.reset();
  return absl::OkStatus();
}

void StateManager::Release(SequenceState& state) {
  if (state.slot.has_value()) free_slots_.push_back(*state.slot);
  if (state.host.has_value() && !state.cache_entry) {
    host_bytes_used_ -= state.host->size();
  }
  state.slot.reset();
  state.host.reset();
}

}  // namespace lizard
