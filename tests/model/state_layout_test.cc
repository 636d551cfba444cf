#include "engine/model/state_layout.h"

#include <cstring>
#include <random>
#include <string>

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

}  // namespace
}  // namespace lizard
