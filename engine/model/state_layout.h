// StateLayout: where each part of one sequence's state lives inside a slot, and the portable byte
// format of a serialized state (host spill, migration between processes or machines).
//
// A slot is one contiguous block of `slot_bytes` bytes, laid out identically by every backend:
//
//   position_offset     int64 position: the number of tokens the state has consumed
//   for each lizard layer, in layer order (every part starts at a 256-byte aligned offset):
//     s         S [H, 2F, D]         state_dtype
//     z         z [H, 2F]            state_dtype
//     window_k    [Hkv, w, D]        window_dtype; ring buffer: the key of position p is row p % w,
//                                    stored after RoPE when config.window_rope
//     window_v    [Hkv, w, D]        window_dtype; value of position p at row p % w
//
// Softmax layers (hybrid models) have no part in the slot: their KV cache grows with the context
// and is kept by the backend elsewhere, `kv_bytes_per_token` bytes per consumed token in total.
// A fresh slot (position 0) is all zero bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace lizard {

// Byte offsets of one lizard layer's parts inside a slot.
struct LizardLayerOffsets {
  int64_t layer = 0;  // the model layer index
  int64_t s = 0;
  int64_t z = 0;
  int64_t window_k = 0;
  int64_t window_v = 0;
};

struct StateLayout {
  static constexpr int64_t kAlignment = 256;

  StateLayout() = default;
  // `state_dtype` is used for S and z, `window_dtype` for the window keys/values and for the
  // softmax layers' KV cache.
  StateLayout(const ModelConfig& config, DType state_dtype, DType window_dtype);

  DType state_dtype = DType::kF32;
  DType window_dtype = DType::kF32;

  // Unpadded sizes of one lizard layer's parts.
  int64_t s_bytes = 0;       // H * 2F * D * size(state_dtype)
  int64_t z_bytes = 0;       // H * 2F * size(state_dtype)
  int64_t window_bytes = 0;  // Hkv * w * D * size(window_dtype), each of K and V

  int64_t position_offset = 0;                 // int64 position counter
  std::vector<LizardLayerOffsets> lizard_layers;  // one per lizard layer, in layer order
  std::vector<int32_t> lizard_index;           // per model layer: index into lizard_layers, -1 = softmax
  int64_t slot_bytes = 0;                      // exact size of a slot, a multiple of kAlignment

  // Softmax layers' KV cache: K and V, [T, Hkv, D] each, per softmax layer.
  int64_t num_softmax_layers = 0;
  int64_t kv_bytes_per_token_per_layer = 0;  // 2 * Hkv * D * size(window_dtype)
  int64_t kv_bytes_per_token = 0;            // summed over the softmax layers

  // Names every field a serialized state must agree on (shapes, layer types, window_rope,
  // dtypes); a state saved under a different description is refused on load.
  std::string fingerprint;

  // nullptr for a softmax layer.
  const LizardLayerOffsets* lizard_layer(int64_t layer) const {
    const int32_t i = lizard_index[layer];
    return i < 0 ? nullptr : &lizard_layers[i];
  }
};

// Reads / writes the int64 position counter of a slot (`slot` points at slot_bytes bytes).
int64_t ReadSlotPosition(const StateLayout& layout, const void* slot);
void WriteSlotPosition(const StateLayout& layout, void* slot, int64_t position);

// Serialized state, all little-endian:
//   header (40 bytes): "LZST", u32 version, u32 fingerprint length, u32 crc32 of everything
//                      after the header, i64 position, u64 slot bytes, u64 softmax KV bytes
//   fingerprint text
//   slot bytes exactly as in the slot (StateLayout order)
//   per softmax layer, in layer order: K [T, Hkv, D] then V [T, Hkv, D], T = position
//
// `softmax_kv` has one entry per softmax layer holding its K then V for `position` tokens
// (2 * position * Hkv * D * size(window_dtype) bytes). Wrong sizes or a position that differs
// from the slot's own counter are refused (INVALID_ARGUMENT).
absl::StatusOr<std::string> SerializeState(const StateLayout& layout, std::string_view slot,
                                           const std::vector<std::string_view>& softmax_kv);
// The size of SerializeState's bytes for a slot at `position`.
int64_t SerializedStateBytes(const StateLayout& layout, int64_t position);

// Views into the bytes given to ParseSerializedState (valid while they live).
struct SerializedStateView {
  int64_t position = 0;
  std::string_view slot;                    // layout.slot_bytes bytes
  std::vector<std::string_view> softmax_kv;  // per softmax layer: K then V for `position` tokens
};

// Checks everything before returning views: truncated or corrupt bytes (bad magic, version,
// lengths, checksum, position) and states saved by an incompatible model are refused with
// INVALID_ARGUMENT; it never reads outside `bytes`.
absl::StatusOr<SerializedStateView> ParseSerializedState(const StateLayout& layout, std::string_view bytes);

// Re-encodes a serialized state saved under another dtype choice of the same model (same shapes,
// layer types, window_rope...; only state_dtype / window_dtype differ, each f32, f16 or bf16)
// into `target`'s dtypes: S and z in target.state_dtype, the window K/V and the softmax KV in
// target.window_dtype, the position kept. f32 -> bf16 / f16 rounds to nearest even (f16
// overflows to inf), bf16 / f16 -> f32 is exact. Bytes already in target's layout are returned
// unchanged. Anything else (another model, corrupt bytes) is refused like ParseSerializedState
// does, checksum included. `target` must be a layout of `config`.
absl::StatusOr<std::string> ConvertSerializedState(const ModelConfig& config, const StateLayout& target,
                                                   std::string_view bytes);

// What a backend's LoadSlot uses: ParseSerializedState, and for a state saved under other dtypes
// of the same model, the same re-encoding as ConvertSerializedState (`storage` then owns the
// re-encoded slot and KV the views point into; nothing is serialized again). Errors are
// ParseSerializedState's on the original bytes (they name both layouts).
absl::StatusOr<SerializedStateView> ParseOrConvertSerializedState(const ModelConfig& config,
                                                                  const StateLayout& layout,
                                                                  std::string_view bytes,
                                                                  std::string* storage);

}  // namespace lizard
