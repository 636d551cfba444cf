#include "engine/cpu/state_pool.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lizard::cpu {
namespace {

int64_t VectorBytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.size() * sizeof(float));
}

}  // namespace

StateLayout StatePool::Layout(const ModelConfig& config) {
  return StateLayout(config, DType::kF32, DType::kF32);
}

StatePool::StatePool(const ModelConfig& config, int32_t num_slots)
    : config_(config),
      layout_(Layout(config)),
      num_slots_(num_slots),
      pool_(static_cast<size_t>(num_slots) * layout_.slot_bytes / sizeof(float), 0.0f),
      kv_(num_slots, std::vector<SoftmaxKv>(layout_.num_softmax_layers)) {
  softmax_index_.assign(config.num_layers, -1);
  int32_t next = 0;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    if (config.layer_types[l] == LayerType::kSoftmax) softmax_index_[l] = next++;
  }
}

int64_t StatePool::kv_bytes() const {
  int64_t bytes = 0;
  for (const auto& slot_kv : kv_) {
    for (const SoftmaxKv& layer : slot_kv) bytes += VectorBytes(layer.k) + VectorBytes(layer.v);
  }
  return bytes;
}

absl::Status StatePool::CheckSlot(SlotId slot) const {
  if (slot < 0 || slot >= num_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot ", slot, " out of range [0, ", num_slots_, ")"));
  }
  return absl::OkStatus();
}

absl::Status StatePool::Reset(SlotId slot) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  std::memset(SlotData(slot), 0, layout_.slot_bytes);
  for (SoftmaxKv& layer : kv_[slot]) layer = SoftmaxKv{};  // frees the memory
  return absl::OkStatus();
}

absl::Status StatePool::Copy(SlotId src, SlotId dst) {
  if (absl::Status s = CheckSlot(src); !s.ok()) return s;
  if (absl::Status s = CheckSlot(dst); !s.ok()) return s;
  if (src == dst) return absl::OkStatus();
  std::memcpy(SlotData(dst), SlotData(src), layout_.slot_bytes);
  kv_[dst] = kv_[src];
  return absl::OkStatus();
}

absl::StatusOr<std::string> StatePool::Save(SlotId slot) const {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  // Softmax KV as K then V per layer, as SerializeState expects.
  std::vector<std::string> kv_bytes;
  std::vector<std::string_view> kv_views;
  for (const SoftmaxKv& layer : kv_[slot]) {
    std::string bytes(VectorBytes(layer.k) + VectorBytes(layer.v), '\0');
    std::memcpy(bytes.data(), layer.k.data(), VectorBytes(layer.k));
    std::memcpy(bytes.data() + VectorBytes(layer.k), layer.v.data(), VectorBytes(layer.v));
    kv_bytes.push_back(std::move(bytes));
  }
  for (const std::string& b : kv_bytes) kv_views.push_back(b);
  return SerializeState(
      layout_, std::string_view(reinterpret_cast<const char*>(SlotData(slot)), layout_.slot_bytes),
      kv_views);
}

absl::Status StatePool::Load(SlotId slot, std::string_view bytes) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  // A state saved under other dtypes (a CUDA backend's bf16) is re-encoded to float32 first.
  std::string converted;
  absl::StatusOr<SerializedStateView> view =
      ParseOrConvertSerializedState(config_, layout_, bytes, &converted);
  if (!view.ok()) return view.status();
  std::memcpy(SlotData(slot), view->slot.data(), layout_.slot_bytes);
  for (size_t i = 0; i < view->softmax_kv.size(); ++i) {
    const std::string_view kv = view->softmax_kv[i];
    const size_t half = kv.size() / 2 / sizeof(float);
    SoftmaxKv& layer = kv_[slot][i];
    layer.k.resize(half);
    layer.v.resize(half);
    std::memcpy(layer.k.data(), kv.data(), half * sizeof(float));
    std::memcpy(layer.v.data(), kv.data() + half * sizeof(float), half * sizeof(float));
  }
  return absl::OkStatus();
}

int64_t StatePool::Position(SlotId slot) const {
  if (slot < 0 || slot >= num_slots_) return -1;
  return ReadSlotPosition(layout_, SlotData(slot));
}

void StatePool::SetPosition(SlotId slot, int64_t position) {
  WriteSlotPosition(layout_, SlotData(slot), position);
}

LizardSlotState StatePool::Lizard(SlotId slot, int64_t layer) {
  const LizardLayerOffsets& off = *layout_.lizard_layer(layer);
  return LizardSlotState{SlotPart(slot, off.s), SlotPart(slot, off.z),
                         SlotPart(slot, off.window_k), SlotPart(slot, off.window_v)};
}

SoftmaxKv& StatePool::Softmax(SlotId slot, int64_t layer) {
  return kv_[slot][softmax_index_[layer]];
}

}  // namespace lizard::cpu
