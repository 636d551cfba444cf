#include "engine/model/state_layout.h"

#include <zlib.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "engine/model/checkpoint.h"
#include "gtest/gtest.h"
#include "tests/model/test_checkpoint.h"

namespace lizard {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

ModelConfig SmallHybridConfig() {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(testing::SmallConfigJson().dump());
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// The numbers of lizard-model.md, "Sizes that matter" (Llama-3-8B shape).
TEST(StateLayoutTest, Llama3_8bSizesMatchTheSpec) {
  absl::StatusOr<ModelConfig> config = ShapePreset("llama3-8b");
  ASSERT_TRUE(config.ok());
  const StateLayout fp32(*config, DType::kF32, DType::kBF16);
  EXPECT_EQ(fp32.s_bytes, 32 * 256 * 128 * 4);
  EXPECT_EQ(fp32.z_bytes, 32 * 256 * 4);
  EXPECT_EQ(fp32.window_bytes, 8 * 128 * 128 * 2);
  EXPECT_EQ(32 * fp32.s_bytes, 128 * kMiB);                    // S in fp32: 128 MiB
  EXPECT_EQ(32 * 2 * fp32.window_bytes, 16 * kMiB);            // window K/V in bf16: 16 MiB
  ASSERT_EQ(fp32.lizard_layers.size(), 32u);
  // Every part size is already a multiple of 256, so the slot is exact: position + 32 layers.
  EXPECT_EQ(fp32.slot_bytes, 256 + 32 * (fp32.s_bytes + fp32.z_bytes + 2 * fp32.window_bytes));
  EXPECT_EQ(fp32.kv_bytes_per_token, 0);

  const StateLayout bf16(*config, DType::kBF16, DType::kBF16);
  EXPECT_EQ(32 * bf16.s_bytes, 64 * kMiB);  // S in bf16: 64 MiB
  EXPECT_EQ(bf16.z_bytes, 32 * 256 * 2);

  // The teacher (all softmax): no slot parts, 128 KiB of bf16 KV cache per token.
  ModelConfig teacher = *config;
  teacher.layer_types.assign(32, LayerType::kSoftmax);
  const StateLayout kv(teacher, DType::kF32, DType::kBF16);
  EXPECT_TRUE(kv.lizard_layers.empty());
  EXPECT_EQ(kv.slot_bytes, StateLayout::kAlignment);  // the position counter only
  EXPECT_EQ(kv.kv_bytes_per_token, 128 * 1024);
  EXPECT_EQ(kv.num_softmax_layers, 32);
}

TEST(StateLayoutTest, PartsAreAlignedDisjointAndInsideTheSlot) {
  ModelConfig config = SmallHybridConfig();
  config.feature_dim = 3;  // odd sizes, so padding is needed
  config.window_size = 5;
  for (DType state : {DType::kF32, DType::kBF16, DType::kF16}) {
    const StateLayout layout(config, state, DType::kF16);
    const int64_t s = config.num_heads * 2 * config.feature_dim * config.head_dim * DTypeSize(state);
    EXPECT_EQ(layout.s_bytes, s);
    EXPECT_EQ(layout.z_bytes, config.num_heads * 2 * config.feature_dim * static_cast<int64_t>(DTypeSize(state)));
    EXPECT_EQ(layout.window_bytes, config.num_kv_heads * config.window_size * config.head_dim * 2);
    ASSERT_EQ(layout.lizard_layers.size(), 2u);
    EXPECT_EQ(layout.lizard_index, (std::vector<int32_t>{0, -1, 1}));
    EXPECT_EQ(layout.lizard_layer(1), nullptr);
    ASSERT_NE(layout.lizard_layer(2), nullptr);
    EXPECT_EQ(layout.lizard_layer(2)->layer, 2);
    EXPECT_EQ(layout.slot_bytes % StateLayout::kAlignment, 0);
    EXPECT_EQ(layout.kv_bytes_per_token_per_layer, 2 * config.num_kv_heads * config.head_dim * 2);
    EXPECT_EQ(layout.kv_bytes_per_token, layout.kv_bytes_per_token_per_layer);  // one softmax layer

    // [begin, end) of every part, in slot order, must not overlap.
    std::vector<std::pair<int64_t, int64_t>> parts = {{layout.position_offset, layout.position_offset + 8}};
    for (const LizardLayerOffsets& l : layout.lizard_layers) {
      for (auto [offset, size] : {std::pair{l.s, layout.s_bytes}, std::pair{l.z, layout.z_bytes},
                                  std::pair{l.window_k, layout.window_bytes}, std::pair{l.window_v, layout.window_bytes}}) {
        EXPECT_EQ(offset % StateLayout::kAlignment, 0);
        parts.push_back({offset, offset + size});
      }
    }
    for (size_t i = 1; i < parts.size(); ++i) EXPECT_GE(parts[i].first, parts[i - 1].second);
    EXPECT_LE(parts.back().second, layout.slot_bytes);
    EXPECT_GT(parts.back().second, layout.slot_bytes - StateLayout::kAlignment);  // no wasted tail
  }
}

std::string RandomBytes(size_t n, std::mt19937& rng) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// A slot of random bytes at `position`, and random softmax KV for it.
struct TestState {
  std::string slot;
  std::vector<std::string> kv;
  std::vector<std::string_view> kv_views() const { return {kv.begin(), kv.end()}; }
};

TestState RandomState(const StateLayout& layout, int64_t position, uint32_t seed) {
  std::mt19937 rng(seed);
  TestState s;
  s.slot = RandomBytes(layout.slot_bytes, rng);
  WriteSlotPosition(layout, s.slot.data(), position);
  for (int64_t i = 0; i < layout.num_softmax_layers; ++i) {
    s.kv.push_back(RandomBytes(position * layout.kv_bytes_per_token_per_layer, rng));
  }
  return s;
}

TEST(SerializedStateTest, RoundTrip) {
  const ModelConfig config = SmallHybridConfig();
  const StateLayout layout(config, DType::kF32, DType::kBF16);
  for (int64_t position : {0, 1, 7}) {
    const TestState state = RandomState(layout, position, 100 + position);
    EXPECT_EQ(ReadSlotPosition(layout, state.slot.data()), position);
    absl::StatusOr<std::string> bytes = SerializeState(layout, state.slot, state.kv_views());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(static_cast<int64_t>(bytes->size()), SerializedStateBytes(layout, position));
    absl::StatusOr<SerializedStateView> view = ParseSerializedState(layout, *bytes);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->position, position);
    EXPECT_EQ(view->slot, state.slot);
    ASSERT_EQ(view->softmax_kv.size(), 1u);
    EXPECT_EQ(view->softmax_kv[0], state.kv[0]);
  }
}

TEST(SerializedStateTest, SerializeRefusesInconsistentInput) {
  const ModelConfig config = SmallHybridConfig();
  const StateLayout layout(config, DType::kF32, DType::kBF16);
  TestState state = RandomState(layout, 3, 1);
  EXPECT_FALSE(SerializeState(layout, state.slot.substr(1), state.kv_views()).ok());
  EXPECT_FALSE(SerializeState(layout, state.slot, {}).ok());
  EXPECT_FALSE(SerializeState(layout, state.slot, {std::string_view(state.kv[0]).substr(1)}).ok());
  WriteSlotPosition(layout, state.slot.data(), 4);  // KV holds 3 tokens
  EXPECT_FALSE(SerializeState(layout, state.slot, state.kv_views()).ok());
  WriteSlotPosition(layout, state.slot.data(), -1);
  EXPECT_FALSE(SerializeState(layout, state.slot, {std::string_view()}).ok());
}

// Every truncation, every single-byte change and any extra byte is refused (and never read
// out of bounds: run under ASan to check that part).
TEST(SerializedStateTest, RefusesEveryTruncationAndByteFlip) {
  const ModelConfig config = SmallHybridConfig();
  const StateLayout layout(config, DType::kBF16, DType::kBF16);
  const TestState state = RandomState(layout, 2, 9);
  absl::StatusOr<std::string> bytes = SerializeState(layout, state.slot, state.kv_views());
  ASSERT_TRUE(bytes.ok());
  for (size_t n = 0; n < bytes->size(); ++n) {
    // A fresh heap copy of exactly n bytes, so reads past the end are caught by sanitizers.
    const std::string prefix = bytes->substr(0, n);
    EXPECT_FALSE(ParseSerializedState(layout, prefix).ok()) << "length " << n;
  }
  for (size_t i = 0; i < bytes->size(); ++i) {
    for (uint8_t flip : {0x01, 0x80}) {
      std::string corrupt = *bytes;
      corrupt[i] = static_cast<char>(corrupt[i] ^ flip);
      const absl::Status status = ParseSerializedState(layout, corrupt).status();
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << "byte " << i;
    }
  }
  EXPECT_FALSE(ParseSerializedState(layout, *bytes + "x").ok());
  EXPECT_FALSE(ParseSerializedState(layout, "").ok());
  const absl::Status magic = ParseSerializedState(layout, "GGUF" + bytes->substr(4)).status();
  EXPECT_NE(std::string(magic.message()).find("magic"), std::string::npos) << magic;
  std::string future = *bytes;
  future[4] = 2;  // format version 2
  const absl::Status version = ParseSerializedState(layout, future).status();
  EXPECT_NE(std::string(version.message()).find("version 2"), std::string::npos) << version;
}

// A large state (llama3.2-1b's, ~24 MiB) is checksummed in pieces on several threads: the header
// holds zlib's one-pass CRC-32 of the body all the same, and a flipped byte in any piece is caught.
TEST(SerializedStateTest, ALargeStateCarriesTheOnePassCrc32) {
  absl::StatusOr<ModelConfig> config = ShapePreset("llama3.2-1b");
  ASSERT_TRUE(config.ok());
  const StateLayout layout(*config, DType::kF32, DType::kBF16);
  ASSERT_GE(layout.slot_bytes, 16 * kMiB);  // enough for pieces
  std::mt19937 rng(5);
  std::string slot(layout.slot_bytes, '\0');
  for (size_t i = 0; i < slot.size(); i += 4093) slot[i] = static_cast<char>(rng());
  WriteSlotPosition(layout, slot.data(), 1000);
  absl::StatusOr<std::string> bytes = SerializeState(layout, slot, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const std::string_view body = std::string_view(*bytes).substr(40);
  const auto one_pass = static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(body.data()), body.size()));
  uint32_t in_header = 0;
  std::memcpy(&in_header, bytes->data() + 12, sizeof(in_header));  // little-endian host
  EXPECT_EQ(in_header, one_pass);
  ASSERT_TRUE(ParseSerializedState(layout, *bytes).ok());
  for (size_t at : {size_t{41}, bytes->size() / 2 + 1, bytes->size() - 1}) {
    (*bytes)[at] ^= 0x10;
    EXPECT_FALSE(ParseSerializedState(layout, *bytes).ok()) << "byte " << at;
    (*bytes)[at] ^= 0x10;
  }
}

TEST(SerializedStateTest, RefusesAStateOfAnIncompatibleModel) {
  const ModelConfig config = SmallHybridConfig();
  const StateLayout layout(config, DType::kF32, DType::kBF16);
  const TestState state = RandomState(layout, 2, 5);
  absl::StatusOr<std::string> bytes = SerializeState(layout, state.slot, state.kv_views());
  ASSERT_TRUE(bytes.ok());

  ModelConfig other_window = config;
  other_window.window_size = 8;
  ModelConfig other_types = config;
  other_types.layer_types[1] = LayerType::kLizard;
  ModelConfig no_rope = config;
  no_rope.window_rope = false;
  for (const StateLayout& other :
       {StateLayout(other_window, DType::kF32, DType::kBF16), StateLayout(other_types, DType::kF32, DType::kBF16),
        StateLayout(no_rope, DType::kF32, DType::kBF16), StateLayout(config, DType::kBF16, DType::kBF16),
        StateLayout(config, DType::kF32, DType::kF32)}) {
    const absl::Status status = ParseSerializedState(other, *bytes).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    const std::string message(status.message());
    EXPECT_NE(message.find("incompatible model"), std::string::npos) << message;
    EXPECT_NE(message.find(layout.fingerprint), std::string::npos) << message;
    EXPECT_NE(message.find(other.fingerprint), std::string::npos) << message;
  }
  // Fields that do not shape the state (vocabulary, MLP) do not matter.
  ModelConfig other_mlp = config;
  other_mlp.intermediate_size = 64;
  EXPECT_TRUE(ParseSerializedState(StateLayout(other_mlp, DType::kF32, DType::kBF16), *bytes).ok());
}

// ------------------------------------------------------------------ ConvertSerializedState

// bf16 rounding of `x` worked out on doubles, independently of the bit trick under test: the
// nearer of the two bf16 values around |x|, ties to the even one.
float ReferenceBf16(float x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t lo = bits & 0xffff0000u;  // toward zero
  const uint32_t hi = lo + 0x10000u;       // away from zero (may be inf)
  const double magnitude = std::fabs(static_cast<double>(x));
  const double lo_magnitude = std::fabs(static_cast<double>(std::bit_cast<float>(lo)));
  const double hi_magnitude =
      (hi & 0x7fffffffu) == 0x7f800000u ? std::ldexp(1.0, 128) : std::fabs(static_cast<double>(std::bit_cast<float>(hi)));
  const double below = magnitude - lo_magnitude, above = hi_magnitude - magnitude;
  const bool up = above < below || (above == below && ((lo >> 16) & 1u) != 0);
  return std::bit_cast<float>(up ? hi : lo);
}

// What a value of dtype `dtype` holds after storing `x`: the compiler's own float -> _Float16
// conversion is the reference for f16.
float ReferenceRound(float x, DType dtype) {
  switch (dtype) {
    case DType::kF32: return x;
    case DType::kBF16: return ReferenceBf16(x);
    case DType::kF16: return static_cast<float>(static_cast<_Float16>(x));
  }
  return x;
}

// Decodes `n` values of `dtype` (with the checkpoint reader's decoder, tested in checkpoint_test).
std::vector<float> Decode(const char* data, int64_t n, DType dtype) {
  TensorView view;
  view.dtype = dtype;
  view.shape = {n};
  view.data = data;
  view.nbytes = n * DTypeSize(dtype);
  std::vector<float> out(n);
  ConvertToF32(view, out.data());
  return out;
}

// Floats over every range that matters: any bit pattern (NaN, inf, subnormals, huge), values
// near 1 and near the f16 limits, and the exact ties of both 16-bit formats.
std::vector<float> TestFloats(int64_t n, std::mt19937& rng) {
  const std::vector<float> specials = {
      0.0f, -0.0f, 1.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
      std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
      std::numeric_limits<float>::denorm_min(), std::ldexp(1.0f, -24), std::ldexp(1.0f, -25), std::ldexp(3.0f, -25),
      std::ldexp(1.0f, -14), std::ldexp(1023.0f, -24) + std::ldexp(1.0f, -25),  // ties around the f16 subnormals
      1.0f + std::ldexp(1.0f, -8), 1.0f + std::ldexp(3.0f, -8),                  // bf16 ties
      1.0f + std::ldexp(1.0f, -11), 1.0f + std::ldexp(3.0f, -11),                // f16 ties
      65504.0f, 65519.0f, 65520.0f, -65520.0f, 65536.0f, 3.3895314e38f, 3.3961776e38f};
  std::vector<float> out;
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-27, 17);
  for (int64_t i = 0; i < n; ++i) {
    if (i < static_cast<int64_t>(specials.size())) {
      out.push_back(specials[i]);
    } else if (i % 2 == 0) {
      out.push_back(std::bit_cast<float>(bits(rng)));
    } else {
      out.push_back((bits(rng) & 1 ? -1.0f : 1.0f) * std::ldexp(mantissa(rng), exponent(rng)));
    }
  }
  return out;
}

void ExpectSameValues(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int mismatches = 0;
  for (size_t i = 0; i < got.size() && mismatches < 5; ++i) {
    const bool same = std::isnan(want[i]) ? std::isnan(got[i]) : std::bit_cast<uint32_t>(got[i]) == std::bit_cast<uint32_t>(want[i]);
    if (!same) {
      ++mismatches;
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", want " << want[i];
    }
  }
}

// Every value of a state (S, z, window K/V per lizard layer, then the softmax KV) decoded to
// float, one vector per part.
std::vector<std::vector<float>> StateParts(const StateLayout& layout, const SerializedStateView& view) {
  std::vector<std::vector<float>> parts;
  const int64_t state_size = DTypeSize(layout.state_dtype), window_size = DTypeSize(layout.window_dtype);
  for (const LizardLayerOffsets& l : layout.lizard_layers) {
    parts.push_back(Decode(view.slot.data() + l.s, layout.s_bytes / state_size, layout.state_dtype));
    parts.push_back(Decode(view.slot.data() + l.z, layout.z_bytes / state_size, layout.state_dtype));
    parts.push_back(Decode(view.slot.data() + l.window_k, layout.window_bytes / window_size, layout.window_dtype));
    parts.push_back(Decode(view.slot.data() + l.window_v, layout.window_bytes / window_size, layout.window_dtype));
  }
  for (std::string_view kv : view.softmax_kv) {
    parts.push_back(Decode(kv.data(), kv.size() / window_size, layout.window_dtype));
  }
  return parts;
}

// A float32 state of `layout` (f32, f32) whose every part holds TestFloats.
std::string Float32TestState(const StateLayout& layout, int64_t position, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string slot(layout.slot_bytes, '\0');
  WriteSlotPosition(layout, slot.data(), position);
  auto fill = [&](char* p, int64_t bytes) {
    const std::vector<float> values = TestFloats(bytes / 4, rng);
    std::memcpy(p, values.data(), bytes);
  };
  for (const LizardLayerOffsets& l : layout.lizard_layers) {
    fill(slot.data() + l.s, layout.s_bytes);
    fill(slot.data() + l.z, layout.z_bytes);
    fill(slot.data() + l.window_k, layout.window_bytes);
    fill(slot.data() + l.window_v, layout.window_bytes);
  }
  std::vector<std::string> kv(layout.num_softmax_layers, std::string(position * layout.kv_bytes_per_token_per_layer, '\0'));
  for (std::string& k : kv) fill(k.data(), k.size());
  absl::StatusOr<std::string> bytes = SerializeState(layout, slot, std::vector<std::string_view>(kv.begin(), kv.end()));
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

TEST(ConvertSerializedStateTest, RoundsToNearestEvenAndWidensBackExactly) {
  ModelConfig config = SmallHybridConfig();  // lizard, softmax, lizard
  config.feature_dim = 16;                    // S of 4 * 32 * 8 values per layer
  const StateLayout f32(config, DType::kF32, DType::kF32);
  const int64_t position = 7;
  const std::string original = Float32TestState(f32, position, 3);
  absl::StatusOr<SerializedStateView> original_view = ParseSerializedState(f32, original);
  ASSERT_TRUE(original_view.ok()) << original_view.status();
  const std::vector<std::vector<float>> values = StateParts(f32, *original_view);

  for (auto [state_dtype, window_dtype] : {std::pair{DType::kBF16, DType::kBF16}, std::pair{DType::kF32, DType::kBF16},
                                           std::pair{DType::kF16, DType::kF16}, std::pair{DType::kBF16, DType::kF16}}) {
    const StateLayout narrow(config, state_dtype, window_dtype);
    SCOPED_TRACE(narrow.fingerprint);
    absl::StatusOr<std::string> converted = ConvertSerializedState(config, narrow, original);
    ASSERT_TRUE(converted.ok()) << converted.status();
    absl::StatusOr<SerializedStateView> view = ParseSerializedState(narrow, *converted);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->position, position);
    const std::vector<std::vector<float>> got = StateParts(narrow, *view);
    ASSERT_EQ(got.size(), values.size());
    std::vector<std::vector<float>> rounded = values;
    for (size_t p = 0; p < rounded.size(); ++p) {
      // Parts 0, 1 of each lizard layer are S and z; the rest are window or softmax KV.
      const bool is_state = p < 4 * narrow.lizard_layers.size() && p % 4 < 2;
      for (float& x : rounded[p]) x = ReferenceRound(x, is_state ? state_dtype : window_dtype);
      ExpectSameValues(got[p], rounded[p], "part " + std::to_string(p));
    }

    // Back to float32: exactly the rounded values.
    absl::StatusOr<std::string> wide = ConvertSerializedState(config, f32, *converted);
    ASSERT_TRUE(wide.ok()) << wide.status();
    absl::StatusOr<SerializedStateView> wide_view = ParseSerializedState(f32, *wide);
    ASSERT_TRUE(wide_view.ok()) << wide_view.status();
    EXPECT_EQ(wide_view->position, position);
    const std::vector<std::vector<float>> back = StateParts(f32, *wide_view);
    for (size_t p = 0; p < back.size(); ++p) ExpectSameValues(back[p], rounded[p], "back, part " + std::to_string(p));
  }
}

TEST(ConvertSerializedStateTest, StatesAlreadyInTheTargetLayoutAreReturnedUnchanged) {
  const ModelConfig config = SmallHybridConfig();
  for (int64_t position : {0, 5}) {
    const StateLayout layout(config, DType::kF32, DType::kBF16);
    const TestState state = RandomState(layout, position, 21);
    absl::StatusOr<std::string> bytes = SerializeState(layout, state.slot, state.kv_views());
    ASSERT_TRUE(bytes.ok());
    absl::StatusOr<std::string> same = ConvertSerializedState(config, layout, *bytes);
    ASSERT_TRUE(same.ok()) << same.status();
    EXPECT_EQ(*same, *bytes);
    // An empty softmax KV (position 0) converts too.
    absl::StatusOr<std::string> wide = ConvertSerializedState(config, StateLayout(config, DType::kF32, DType::kF32), *bytes);
    ASSERT_TRUE(wide.ok()) << wide.status();
    EXPECT_EQ(ParseSerializedState(StateLayout(config, DType::kF32, DType::kF32), *wide)->position, position);
  }
}

TEST(ConvertSerializedStateTest, RefusesAnotherModelCorruptBytesAndAForeignTarget) {
  const ModelConfig config = SmallHybridConfig();
  const StateLayout bf16(config, DType::kBF16, DType::kBF16);
  const StateLayout f32(config, DType::kF32, DType::kF32);
  const TestState state = RandomState(bf16, 3, 8);
  absl::StatusOr<std::string> bytes = SerializeState(bf16, state.slot, state.kv_views());
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(ConvertSerializedState(config, f32, *bytes).ok());

  // A state of another model, in any dtype, is refused naming both layouts.
  ModelConfig other = config;
  other.window_size = 8;
  for (const StateLayout& other_layout : {StateLayout(other, DType::kBF16, DType::kBF16), StateLayout(other, DType::kF32, DType::kF32)}) {
    const TestState other_state = RandomState(other_layout, 3, 9);
    absl::StatusOr<std::string> other_bytes = SerializeState(other_layout, other_state.slot, other_state.kv_views());
    ASSERT_TRUE(other_bytes.ok());
    const absl::Status status = ConvertSerializedState(config, f32, *other_bytes).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    const std::string message(status.message());
    EXPECT_NE(message.find("incompatible model"), std::string::npos) << message;
    EXPECT_NE(message.find(other_layout.fingerprint), std::string::npos) << message;
    EXPECT_NE(message.find(f32.fingerprint), std::string::npos) << message;
  }

  // Corrupt or truncated bytes of a convertible state: the checksum and lengths are still checked.
  for (size_t i : {size_t{0}, size_t{10}, size_t{50}, bytes->size() / 2, bytes->size() - 1}) {
    std::string corrupt = *bytes;
    corrupt[i] = static_cast<char>(corrupt[i] ^ 0x04);
    EXPECT_EQ(ConvertSerializedState(config, f32, corrupt).status().code(), absl::StatusCode::kInvalidArgument)
        << "byte " << i;
  }
  EXPECT_FALSE(ConvertSerializedState(config, f32, bytes->substr(0, bytes->size() - 1)).ok());
  EXPECT_FALSE(ConvertSerializedState(config, f32, bytes->substr(0, 30)).ok());
  EXPECT_FALSE(ConvertSerializedState(config, f32, "").ok());

  // A target layout of another model is a caller's mistake, refused rather than written into.
  EXPECT_FALSE(ConvertSerializedState(config, StateLayout(other, DType::kF32, DType::kF32), *bytes).ok());
}

}  // namespace
}  // namespace lizard
