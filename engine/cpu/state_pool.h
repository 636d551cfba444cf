// The CPU backend's sequence states: one float32 slot per sequence in StateLayout's layout
// (Lizard layers' S, z and window ring, the position counter) and, per slot, the growing KV
// cache of each softmax layer. Reset, Copy, Save and Load go through StateLayout's serialized
// form, so a state moves between backends.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cpu/lizard_attention/args.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "engine/step_plan.h"

namespace lizard::cpu {

// One softmax layer's KV cache of one sequence: [T, Hkv, D] each, roped keys.
struct SoftmaxKv {
  std::vector<float> k, v;
};

class StatePool {
 public:
  // The CPU backend keeps states in float32, whatever config.state_dtype says.
  static StateLayout Layout(const ModelConfig& config);

  // `config` must outlive the pool.
  StatePool(const ModelConfig& config, int32_t num_slots);

  const StateLayout& layout() const { return layout_; }
  int32_t num_slots() const { return num_slots_; }
  int64_t pool_bytes() const { return static_cast<int64_t>(pool_.size() * sizeof(float)); }
  // Bytes the softmax KV caches of every slot hold now.
  int64_t kv_bytes() const;

  absl::Status CheckSlot(SlotId slot) const;
  absl::Status Reset(SlotId slot);
  absl::Status Copy(SlotId src, SlotId dst);
  absl::StatusOr<std::string> Save(SlotId slot) const;
  absl::Status Load(SlotId slot, std::string_view bytes);
  // -1 for a slot out of range.
  int64_t Position(SlotId slot) const;
  void SetPosition(SlotId slot, int64_t position);

  // Model layer `layer`'s state of `slot`: a Lizard layer's parts, or a softmax layer's cache.
  LizardSlotState Lizard(SlotId slot, int64_t layer);
  SoftmaxKv& Softmax(SlotId slot, int64_t layer);

 private:
  float* SlotData(SlotId slot) { return pool_.data() + SlotFloats() * slot; }
  const float* SlotData(SlotId slot) const { return pool_.data() + SlotFloats() * slot; }
  int64_t SlotFloats() const { return layout_.slot_bytes / static_cast<int64_t>(sizeof(float)); }
  float* SlotPart(SlotId slot, int64_t byte_offset) {
    return reinterpret_cast<float*>(reinterpret_cast<char*>(SlotData(slot)) + byte_offset);
  }

  const ModelConfig& config_;
  StateLayout layout_;
  int32_t num_slots_;
  std::vector<float> pool_;                 // num_slots * slot_bytes
  std::vector<std::vector<SoftmaxKv>> kv_;  // [slot][softmax layer], in serialized order
  std::vector<int32_t> softmax_index_;      // per model layer: index into kv_[slot], -1 = lizard
};

}  // namespace lizard::cpu
