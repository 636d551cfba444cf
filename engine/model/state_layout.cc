#include "engine/model/state_layout.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "engine/model/checkpoint.h"

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

// The CRC-32 of `bytes`. zlib does ~4 GB/s on one core, 36 ms for a 145 MiB llama3-8b state that
// every spill and restore checksums, so a large input is cut into pieces checksummed on several
// threads and joined with crc32_combine, which gives the value of one pass.
uint32_t Crc32(std::string_view bytes) {
  constexpr size_t kPieceBytes = size_t{8} << 20;  // below this a thread costs more than it saves
  constexpr size_t kMaxThreads = 8;
  auto crc_of = [](std::string_view piece) {
    return crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(piece.data()), piece.size());
  };
  const size_t pieces = std::min({bytes.size() / kPieceBytes, kMaxThreads,
                                  static_cast<size_t>(std::max(1u, std::thread::hardware_concurrency()))});
  if (pieces <= 1) return static_cast<uint32_t>(crc_of(bytes));
  const size_t piece_bytes = (bytes.size() + pieces - 1) / pieces;
  std::vector<uLong> crcs(pieces);
  {
    std::vector<std::jthread> threads;
    for (size_t i = 1; i < pieces; ++i) {
      threads.emplace_back([&, i] { crcs[i] = crc_of(bytes.substr(i * piece_bytes, piece_bytes)); });
    }
    crcs[0] = crc_of(bytes.substr(0, piece_bytes));
  }  // joined here
  uLong crc = crcs[0];
  for (size_t i = 1; i < pieces; ++i) {
    const size_t length = std::min(piece_bytes, bytes.size() - i * piece_bytes);
    crc = crc32_combine(crc, crcs[i], static_cast<z_off_t>(length));
  }
  return static_cast<uint32_t>(crc);
}

absl::Status Corrupt(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("serialized state is corrupt or truncated: ", why));
}

// The fingerprint the header names, unchecked (nullopt when there is no room for it).
std::optional<std::string_view> HeaderFingerprint(std::string_view bytes) {
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return std::nullopt;
  const auto length = GetLE<uint32_t>(bytes.data() + 8);
  if (length > bytes.size() - kHeaderBytes) return std::nullopt;
  return bytes.substr(kHeaderBytes, length);
}

// float -> bf16, rounding to nearest even; a NaN stays a (quiet) NaN.
uint16_t FloatToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the dropped
  // half is above one half, or equal to it with an odd kept half; carries into the exponent
  // are right (up to inf).
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// float -> IEEE half, rounding to nearest even; too large rounds to inf, NaN stays a quiet NaN.
uint16_t FloatToHalf(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t x = bits & 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (halfway past the largest half, 65504): inf
  // Keep `shift` low bits of the 24-bit significand off, rounding to nearest even; a carry out
  // of the mantissa lands in the exponent, which is right.
  auto round_shift = [](uint32_t value, int shift) {
    const uint32_t kept = value >> shift, dropped = value & ((1u << shift) - 1), half = 1u << (shift - 1);
    return kept + (dropped > half || (dropped == half && (kept & 1u)) ? 1u : 0u);
  };
  const int exponent = static_cast<int>(x >> 23);  // biased by 127
  if (exponent >= 113) {  // a normal half (>= 2^-14): rebias 127 -> 15, drop 13 mantissa bits
    return sign | static_cast<uint16_t>(round_shift(x - (112u << 23), 13));
  }
  // Subnormal half: units of 2^-24. Below 2^-25 everything rounds to zero (2^-25 itself is a tie
  // that goes to the even zero), so shifts beyond 24 are not needed.
  if (exponent < 102) return sign;
  const uint32_t significand = (x & 0x7fffffu) | 0x800000u;  // value = significand * 2^(exponent - 150)
  return sign | static_cast<uint16_t>(round_shift(significand, 126 - exponent));
}

// Re-encodes `n` values from dtype `from` at `src` into dtype `to` at `dst` (neither aligned).
void Recode(DType from, const char* src, DType to, char* dst, int64_t n) {
  const size_t from_size = DTypeSize(from), to_size = DTypeSize(to);
  if (from == to) {
    std::memcpy(dst, src, n * from_size);
    return;
  }
  constexpr int64_t kBlock = 4096;
  float block[kBlock];
  TensorView view;  // the checkpoint reader's decoder to float32
  view.dtype = from;
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t count = std::min(kBlock, n - begin);
    view.shape = {count};
    view.data = src + begin * from_size;
    view.nbytes = count * from_size;
    ConvertToF32(view, block);
    char* out = dst + begin * to_size;
    for (int64_t i = 0; i < count; ++i) {
      if (to == DType::kF32) {
        std::memcpy(out + 4 * i, &block[i], 4);
      } else {
        const uint16_t h = to == DType::kBF16 ? FloatToBf16(block[i]) : FloatToHalf(block[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
    }
  }
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
  out.reserve(SerializedStateBytes(layout, position));
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

int64_t SerializedStateBytes(const StateLayout& layout, int64_t position) {
  return kHeaderBytes + static_cast<int64_t>(layout.fingerprint.size()) + layout.slot_bytes +
         layout.num_softmax_layers * position * layout.kv_bytes_per_token_per_layer;
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

namespace {

// The layout of `config` that `bytes` were saved under when it is another dtype choice than
// `target`'s, found by the header's (unchecked) fingerprint; nullopt when the bytes name target's
// layout or no layout of this model. Refuses a target that is not a layout of `config`.
absl::StatusOr<std::optional<StateLayout>> OtherSourceLayout(const ModelConfig& config, const StateLayout& target,
                                                             std::string_view bytes) {
  if (StateLayout(config, target.state_dtype, target.window_dtype).fingerprint != target.fingerprint) {
    return absl::InvalidArgumentError(absl::StrCat("ConvertSerializedState: the target layout [", target.fingerprint,
                                                   "] is not a layout of this model"));
  }
  const std::optional<std::string_view> fingerprint = HeaderFingerprint(bytes);
  if (!fingerprint.has_value() || *fingerprint == target.fingerprint) return std::nullopt;
  for (DType state_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (DType window_dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      StateLayout candidate(config, state_dtype, window_dtype);
      if (candidate.fingerprint == *fingerprint) return std::optional<StateLayout>(std::move(candidate));
    }
  }
  return std::nullopt;
}

// A parsed state of layout `source` re-encoded in `target`'s dtypes, written to `out` as the slot
// (target.slot_bytes) followed by each softmax layer's KV; returns the views into `out`.
SerializedStateView RecodeState(const StateLayout& source, const SerializedStateView& view,
                                const StateLayout& target, std::string* out) {
  const DType from_state = source.state_dtype, from_window = source.window_dtype;
  const int64_t kv_values = view.softmax_kv.empty()
                                ? 0
                                : static_cast<int64_t>(view.softmax_kv[0].size() / DTypeSize(from_window));
  const int64_t kv_bytes = kv_values * static_cast<int64_t>(DTypeSize(target.window_dtype));
  out->assign(target.slot_bytes + view.softmax_kv.size() * kv_bytes, '\0');  // padding stays zero
  char* slot = out->data();
  WriteSlotPosition(target, slot, view.position);
  const int64_t s_values = source.s_bytes / DTypeSize(from_state);
  const int64_t z_values = source.z_bytes / DTypeSize(from_state);
  const int64_t window_values = source.window_bytes / DTypeSize(from_window);
  for (size_t i = 0; i < target.lizard_layers.size(); ++i) {
    const LizardLayerOffsets& from = source.lizard_layers[i];
    const LizardLayerOffsets& to = target.lizard_layers[i];
    const char* in = view.slot.data();
    Recode(from_state, in + from.s, target.state_dtype, slot + to.s, s_values);
    Recode(from_state, in + from.z, target.state_dtype, slot + to.z, z_values);
    Recode(from_window, in + from.window_k, target.window_dtype, slot + to.window_k, window_values);
    Recode(from_window, in + from.window_v, target.window_dtype, slot + to.window_v, window_values);
  }
  SerializedStateView recoded;
  recoded.position = view.position;
  recoded.slot = std::string_view(*out).substr(0, target.slot_bytes);
  for (size_t i = 0; i < view.softmax_kv.size(); ++i) {
    char* layer = slot + target.slot_bytes + i * kv_bytes;
    Recode(from_window, view.softmax_kv[i].data(), target.window_dtype, layer, kv_values);
    recoded.softmax_kv.emplace_back(layer, kv_bytes);
  }
  return recoded;
}

}  // namespace

absl::StatusOr<std::string> ConvertSerializedState(const ModelConfig& config, const StateLayout& target,
                                                   std::string_view bytes) {
  // The header's fingerprint picks the source layout among this model's dtype choices;
  // ParseSerializedState then checks everything, the checksum included.
  absl::StatusOr<std::optional<StateLayout>> source = OtherSourceLayout(config, target, bytes);
  if (!source.ok()) return source.status();
  if (!source->has_value()) {
    // Already in target's layout, or not a state of this model: target's parse accepts it or says why.
    absl::StatusOr<SerializedStateView> view = ParseSerializedState(target, bytes);
    if (!view.ok()) return view.status();
    return std::string(bytes);
  }
  absl::StatusOr<SerializedStateView> view = ParseSerializedState(**source, bytes);
  if (!view.ok()) return view.status();
  std::string recoded_bytes;
  const SerializedStateView recoded = RecodeState(**source, *view, target, &recoded_bytes);
  return SerializeState(target, recoded.slot, recoded.softmax_kv);
}

absl::StatusOr<SerializedStateView> ParseOrConvertSerializedState(const ModelConfig& config,
                                                                  const StateLayout& layout,
                                                                  std::string_view bytes,
                                                                  std::string* storage) {
  // One checksum pass either way: the bytes are parsed under the layout their header names, and a
  // state of another dtype choice is recoded straight into `storage` (no re-serialization).
  absl::StatusOr<std::optional<StateLayout>> source = OtherSourceLayout(config, layout, bytes);
  if (!source.ok() || !source->has_value()) return ParseSerializedState(layout, bytes);
  absl::StatusOr<SerializedStateView> view = ParseSerializedState(**source, bytes);
  if (!view.ok()) return ParseSerializedState(layout, bytes).status();  // the error naming both layouts
  return RecodeState(**source, *view, layout, storage);
}

}  // namespace lizard
