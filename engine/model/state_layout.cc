#include "engine/model/state_layout.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lizard {
namespace {

constexpr char kMagic[4] = {'L', 'Z', 'S', 'T'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 40;

int64_t AlignUp(int64_t n) {
  return (n + StateLayout::kAlignment - 1) / StateLayout::kAlignment * StateLayout::kAlignment;
}

// Little-endian integer encoding, independent of the host's byte order.
template <typename T>
void PutLE(std::string& out, T value) {
  const auto u = static_cast<std::make_unsigned_t<T>>(value);
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
}

template <typename T>
T GetLE(const char* p) {
  std::make_unsigned_t<T> u = 0;
  for (size_t i = 0; i < sizeof(T); ++i) u |= static_cast<decltype(u)>(static_cast<uint8_t>(p[i])) << (8 * i);
  return static_cast<T>(u);
}

uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

absl::Status Corrupt(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("serialized state is corrupt or truncated: ", why));
}

}  // namespace

StateLayout::StateLayout(const ModelConfig& config, DType state_dtype_in, DType window_dtype_in)
    : state_dtype(state_dtype_in), window_dtype(window_dtype_in) {
  const int64_t H = config.num_heads, Hkv = config.num_kv_heads, D = config.head_dim;
  const int64_t F2 = 2 * config.feature_dim, w = config.window_size;
  const auto state_size = static_cast<int64_t>(DTypeSize(state_dtype));
  const auto window_size = static_cast<int64_t>(DTypeSize(window_dtype));
  s_bytes = H * F2 * D * state_size;
  z_bytes = H * F2 * state_size;
  window_bytes = Hkv * w * D * window_size;
  kv_bytes_per_token_per_layer = 2 * Hkv * D * window_size;

  position_offset = 0;
  int64_t offset = AlignUp(sizeof(int64_t));
  std::string layer_letters;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    if (config.layer_types[l] == LayerType::kSoftmax) {
      lizard_index.push_back(-1);
      ++num_softmax_layers;
      layer_letters.push_back('S');
      continue;
    }
    LizardLayerOffsets parts;
    parts.layer = l;
    parts.s = offset;
    offset = AlignUp(offset + s_bytes);
    parts.z = offset;
    offset = AlignUp(offset + z_bytes);
    parts.window_k = offset;
    offset = AlignUp(offset + window_bytes);
    parts.window_v = offset;
    offset = AlignUp(offset + window_bytes);
    lizard_index.push_back(static_cast<int32_t>(lizard_layers.size()));
    lizard_layers.push_back(parts);
    layer_letters.push_back('L');
  }
  slot_bytes = offset;
  kv_bytes_per_token = num_softmax_layers * kv_bytes_per_token_per_layer;
  fingerprint = absl::StrCat("H=", H, " Hkv=", Hkv, " D=", D, " F=", config.feature_dim, " w=", w,
                             " window_rope=", config.window_rope ? 1 : 0, " layers=", layer_letters,
                             " state=", std::string(DTypeName(state_dtype)),
                             " window=", std::string(DTypeName(window_dtype)));
}

int64_t ReadSlotPosition(const StateLayout& layout, const void* slot) {
  int64_t position;
  std::memcpy(&position, static_cast<const char*>(slot) + layout.position_offset, sizeof(position));
  return position;
}

void WriteSlotPosition(const StateLayout& layout, void* slot, int64_t position) {
  std::memcpy(static_cast<char*>(slot) + layout.position_offset, &position, sizeof(position));
}

absl::StatusOr<std::string> SerializeState(const StateLayout& layout, std::string_view slot,
                                           const std::vector<std::string_view>& softmax_kv) {
  if (static_cast<int64_t>(slot.size()) != layout.slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("SerializeState: slot has ", slot.size(), " bytes, layout says ", layout.slot_bytes));
  }
  const int64_t position = ReadSlotPosition(layout, slot.data());
  if (position < 0) return absl::InvalidArgumentError(absl::StrCat("SerializeState: negative position ", position));
  if (static_cast<int64_t>(softmax_kv.size()) != layout.num_softmax_layers) {
    return absl::InvalidArgumentError(absl::StrCat("SerializeState: ", softmax_kv.size(),
                                                   " softmax KV blocks for ", layout.num_softmax_layers,
                                                   " softmax layers"));
  }
  const int64_t layer_kv_bytes = position * layout.kv_bytes_per_token_per_layer;
  for (size_t i = 0; i < softmax_kv.size(); ++i) {
    if (static_cast<int64_t>(softmax_kv[i].size()) != layer_kv_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("SerializeState: softmax KV block ", i, " has ",
                                                     softmax_kv[i].size(), " bytes, expected ",
                                                     layer_kv_bytes, " for position ", position));
    }
  }
  const int64_t kv_bytes = layout.num_softmax_layers * layer_kv_bytes;

  std::string out;
  out.reserve(kHeaderBytes + layout.fingerprint.size() + slot.size() + kv_bytes);
  out.append(kMagic, sizeof(kMagic));
  PutLE<uint32_t>(out, kVersion);
  PutLE<uint32_t>(out, static_cast<uint32_t>(layout.fingerprint.size()));
  PutLE<uint32_t>(out, 0);  // crc32, filled in below
  PutLE<int64_t>(out, position);
  PutLE<uint64_t>(out, static_cast<uint64_t>(layout.slot_bytes));
  PutLE<uint64_t>(out, static_cast<uint64_t>(kv_bytes));
  out.append(layout.fingerprint);
  out.append(slot);
  for (std::string_view kv : softmax_kv) out.append(kv);
  // The checksum covers everything after the header.
  std::string crc;
  PutLE<uint32_t>(crc, Crc32(std::string_view(out).substr(kHeaderBytes)));
  out.replace(12, crc.size(), crc);
  return out;
}

absl::StatusOr<SerializedStateView> ParseSerializedState(const StateLayout& layout, std::string_view bytes) {
  if (bytes.size() < kHeaderBytes) return Corrupt(absl::StrCat("only ", bytes.size(), " bytes"));
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return Corrupt("bad magic (not a Lizard state)");
  const auto version = GetLE<uint32_t>(bytes.data() + 4);
  if (version != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("serialized state has format version ", version, ", this server reads version ", kVersion));
  }
  const auto fingerprint_len = GetLE<uint32_t>(bytes.data() + 8);
  const auto crc = GetLE<uint32_t>(bytes.data() + 12);
  const auto position = GetLE<int64_t>(bytes.data() + 16);
  const auto slot_len = GetLE<uint64_t>(bytes.data() + 24);
  const auto kv_len = GetLE<uint64_t>(bytes.data() + 32);
  // Each length is compared against what is left, so the sums below cannot overflow.
  const uint64_t body_len = bytes.size() - kHeaderBytes;
  if (fingerprint_len > body_len || slot_len > body_len - fingerprint_len ||
      kv_len != body_len - fingerprint_len - slot_len) {
    return Corrupt(absl::StrCat("section lengths ", fingerprint_len, " + ", slot_len, " + ", kv_len,
                                " do not add up to the ", body_len, " bytes after the header"));
  }
  const std::string_view body = bytes.substr(kHeaderBytes);
  if (Crc32(body) != crc) return Corrupt("checksum mismatch");

  const std::string_view fingerprint = body.substr(0, fingerprint_len);
  if (fingerprint != layout.fingerprint) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serialized state belongs to an incompatible model: state has [",
        std::string(fingerprint), "], this model has [", layout.fingerprint, "]"));
  }
  // Same fingerprint means the same layout, so these only fail for a forged header.
  if (static_cast<int64_t>(slot_len) != layout.slot_bytes) {
    return Corrupt(absl::StrCat("slot has ", slot_len, " bytes, expected ", layout.slot_bytes));
  }
  if (position < 0) return Corrupt(absl::StrCat("negative position ", position));
  SerializedStateView view;
  view.position = position;
  view.slot = body.substr(fingerprint_len, slot_len);
  if (ReadSlotPosition(layout, view.slot.data()) != position) return Corrupt("slot position differs from header");
  // Divide rather than multiply so a huge forged position cannot overflow.
  const uint64_t per_token = static_cast<uint64_t>(layout.kv_bytes_per_token);
  if ((per_token == 0 && kv_len != 0) ||
      (per_token != 0 && (kv_len % per_token != 0 || kv_len / per_token != static_cast<uint64_t>(position)))) {
    return Corrupt(absl::StrCat("softmax KV section has ", kv_len, " bytes, not ", layout.kv_bytes_per_token,
                                " per token for position ", position));
  }
  const size_t layer_kv_bytes = kv_len / std::max<int64_t>(layout.num_softmax_layers, 1);
  for (int64_t i = 0; i < layout.num_softmax_layers; ++i) {
    view.softmax_kv.push_back(body.substr(fingerprint_len + slot_len + i * layer_kv_bytes, layer_kv_bytes));
  }
  return view;
}

}  // namespace lizard
