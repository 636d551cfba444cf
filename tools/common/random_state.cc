#include "tools/common/random_state.h"

#include <cstring>
#include <random>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/state_layout.h"

namespace lizard::tools {

absl::StatusOr<std::string> RandomSerializedState(const ModelConfig& config, int64_t position,
                                                  uint64_t seed) {
  if (position < 0) return absl::InvalidArgumentError("position must be >= 0");
  const StateLayout layout(config, DType::kF32, DType::kF32);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> small(0.0f, 0.01f), positive(0.5f, 1.5f),
      symmetric(-1.0f, 1.0f);
  // Fills `bytes` bytes of float32 at `p` from `dist`.
  auto fill = [&](char* p, int64_t bytes, std::uniform_real_distribution<float>& dist) {
    for (int64_t i = 0; i < bytes / static_cast<int64_t>(sizeof(float)); ++i) {
      const float x = dist(rng);
      std::memcpy(p + i * sizeof(float), &x, sizeof(float));
    }
  };

  std::string slot(layout.slot_bytes, '\0');
  for (const LizardLayerOffsets& off : layout.lizard_layers) {
    fill(slot.data() + off.s, layout.s_bytes, small);
    fill(slot.data() + off.z, layout.z_bytes, positive);  // real normalisers are sums of positives
    fill(slot.data() + off.window_k, layout.window_bytes, symmetric);
    fill(slot.data() + off.window_v, layout.window_bytes, symmetric);
  }
  WriteSlotPosition(layout, slot.data(), position);

  // Per softmax layer: K then V, `position` tokens each.
  std::vector<std::string> kv(layout.num_softmax_layers,
                              std::string(position * layout.kv_bytes_per_token_per_layer, '\0'));
  std::vector<std::string_view> kv_views;
  for (std::string& layer : kv) {
    fill(layer.data(), static_cast<int64_t>(layer.size()), symmetric);
    kv_views.push_back(layer);
  }
  return SerializeState(layout, slot, kv_views);
}

}  // namespace lizard::tools
