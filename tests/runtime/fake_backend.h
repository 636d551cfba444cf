// FakeBackend: a Backend with a tiny deterministic "model" for engine tests.
//
// A slot's state is a running hash of the (token, position) pairs it consumed; a logits row is a
// pseudo-random function of that hash. So logits depend on the whole history and on nothing
// else (batch invariance, fork, spill/restore and session continuation are exactly checkable),
// and the free functions below compute the same thing without any engine.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/time/time.h"
#include "engine/backend.h"

namespace lizard::testing {

inline constexpr uint64_t kEmptyHash = 0x1234'5678'9ABC'DEF0ull;

// The state after consuming `token` at `position`.
uint64_t FakeConsume(uint64_t hash, int32_t token, int64_t position);
// The logits row of a state, `vocab` values in [-4, 4).
std::vector<float> FakeLogits(uint64_t hash, int64_t vocab);
// Greedy continuation of `history` (ids, from position 0): `n` tokens, no stopping.
std::vector<int32_t> FakeGreedy(const std::vector<int32_t>& history, int64_t vocab, int n);

// Lets a test pause Forward and read what the backend saw; shared because the engine owns the
// backend itself.
class FakeControl {
 public:
  // While paused, Forward blocks at its start (before touching any slot).
  void Pause();
  void Resume();
  // True once a Forward call is blocked by Pause, false on timeout.
  bool WaitUntilBlocked(absl::Duration timeout);

  // While restores are held, RestoreSlot's loads are not done: ready() is false and Finish
  // waits for ReleaseRestores.
  void HoldRestores();
  void ReleaseRestores();
  // While set, a restore's Finish fails and leaves garbage in the slot (as corrupt bytes would).
  void FailRestores(bool fail);
  // Forward calls made while a restore was in flight (started, not finished).
  int64_t forwards_during_restore() const;

  int64_t forward_calls() const;
  int64_t max_step_tokens() const;     // the most tokens any plan carried
  int64_t max_step_sequences() const;  // the most slots any plan advanced

 private:
  friend class FakeBackend;
  friend class FakeRestore;
  void EnterForward(const StepPlan& plan);
  void StartRestore();
  bool restores_held() const;
  bool restores_fail() const;
  void WaitRestoresReleased();
  void EndRestore();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;
  int64_t blocked_ = 0;
  int64_t forward_calls_ = 0;
  int64_t max_step_tokens_ = 0;
  int64_t max_step_sequences_ = 0;
  bool restores_held_ = false;
  bool restores_fail_ = false;
  int64_t restores_in_flight_ = 0;
  int64_t forwards_during_restore_ = 0;
};

struct FakeBackendOptions {
  int32_t num_slots = 8;
  int64_t vocab = 64;
  int64_t slot_bytes = 64;  // SaveSlot pads to this size
  std::vector<int32_t> eos_token_ids = {};
  int32_t poison_token = -1;  // a plan containing it fails (backend error)
  // SpillSlot's bytes are made on another thread, a little later (as the CUDA backend's are).
  bool slow_spill = false;
};

class FakeBackend : public Backend {
 public:
  FakeBackend(const FakeBackendOptions& options, std::shared_ptr<FakeControl> control);

  const ModelConfig& config() const override { return config_; }
  BackendInfo info() const override { return {.name = "fake", .device = "test"}; }
  int32_t num_slots() const override { return static_cast<int32_t>(slots_.size()); }
  int64_t slot_bytes() const override { return options_.slot_bytes; }
  int64_t kv_bytes_per_token() const override { return 0; }
  absl::Status ResetSlot(SlotId slot) override;
  absl::Status CopySlot(SlotId src, SlotId dst) override;
  int64_t SlotPosition(SlotId slot) const override;
  absl::StatusOr<std::string> SaveSlot(SlotId slot) override;
  absl::Status LoadSlot(SlotId slot, std::string_view bytes) override;
  absl::StatusOr<SavedSlot> SpillSlot(SlotId slot) override;
  // LoadSlot when finished, gated by FakeControl::HoldRestores (as a background load would be).
  absl::StatusOr<std::unique_ptr<SlotRestore>> RestoreSlot(SlotId slot, const SavedSlot& saved) override;
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

 private:
  struct Slot {
    uint64_t hash = kEmptyHash;
    int64_t position = 0;
  };
  absl::Status CheckSlot(SlotId slot) const;

  FakeBackendOptions options_;
  std::shared_ptr<FakeControl> control_;
  ModelConfig config_;
  std::vector<Slot> slots_;
};

}  // namespace lizard::testing
