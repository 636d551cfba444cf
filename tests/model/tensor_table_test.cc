#include "engine/model/tensor_table.h"

#include <map>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/model/test_checkpoint.h"

namespace lizard {
namespace {

using ::lizard::testing::ModelTensors;
using ::lizard::testing::SmallConfigJson;
using ::lizard::testing::TestTensor;

// The small hybrid config of test_checkpoint.h (layers: lizard, softmax, lizard).
ModelConfig SmallConfig(bool tied) {
  ModelConfig config = *ParseModelConfig(SmallConfigJson().dump());
  config.tie_word_embeddings = tied;
  return config;
}

// The table lists exactly the tensors of a full checkpoint (biases included), with their shapes.
TEST(TensorTableTest, MatchesTheCheckpointFormat) {
  for (bool tied : {false, true}) {
    const ModelConfig config = SmallConfig(tied);
    std::map<std::string, std::vector<int64_t>> table;
    for (const TensorSpec& spec : TensorTable(config)) {
      EXPECT_TRUE(table.emplace(spec.name, spec.shape).second) << "twice: " << spec.name;
    }
    std::map<std::string, std::vector<int64_t>> checkpoint;
    for (const TestTensor& t : ModelTensors(config, DType::kF32, /*with_biases=*/true, 1)) {
      checkpoint[t.name] = t.shape;
    }
    if (tied) checkpoint["lm_head.weight"] = table["lm_head.weight"];  // optional when tied
    EXPECT_EQ(table, checkpoint);
  }
}

// The parts of each fused buffer tile it exactly: no overlap, no gap.
TEST(TensorTableTest, FusedPartsTileTheirBuffer) {
  const ModelConfig config = SmallConfig(false);
  const int64_t Hd = config.hidden_size, H = config.num_heads, D = config.head_dim;
  const int64_t kv = config.num_kv_heads * D, I = config.intermediate_size;
  std::map<std::pair<int64_t, FusedInto>, std::map<int64_t, int64_t>> parts;  // offset -> numel
  for (const TensorSpec& spec : TensorTable(config)) {
    if (spec.fused != FusedInto::kNone) parts[{spec.layer, spec.fused}][spec.fused_offset] = spec.numel();
  }
  for (const auto& [key, pieces] : parts) {
    const auto& [layer, fused] = key;
    const bool lizard = config.layer_types[layer] == LayerType::kLizard;
    const int64_t rows = H * D + 2 * kv + (lizard ? H : 0);
    const int64_t want = fused == FusedInto::kQkvg ? rows * Hd : fused == FusedInto::kQkvgBias ? rows : 2 * I * Hd;
    int64_t end = 0;
    for (const auto& [offset, numel] : pieces) {
      EXPECT_EQ(offset, end) << "layer " << layer;
      end = offset + numel;
    }
    EXPECT_EQ(end, want) << "layer " << layer;
  }
}

TEST(TensorTableTest, ProjectionsAreBf16OnTheDeviceAndAbsentBiasesHaveAMeaning) {
  const ModelConfig config = SmallConfig(true);
  for (const TensorSpec& spec : TensorTable(config)) {
    const bool matrix = spec.shape.size() == 2 && spec.role != TensorRole::kForgetGateBias &&
                        spec.role != TensorRole::kMetaLogits && spec.role != TensorRole::kFeatureMapQBias &&
                        spec.role != TensorRole::kFeatureMapKBias;
    EXPECT_EQ(spec.device_dtype, matrix ? DType::kBF16 : DType::kF32) << spec.name;
    if (spec.role == TensorRole::kLmHead) EXPECT_EQ(spec.when_absent, WhenAbsent::kEmbedCopy);
    if (spec.role == TensorRole::kFeatureMapQBias || spec.role == TensorRole::kForgetGateBias) {
      EXPECT_EQ(spec.when_absent, WhenAbsent::kZeros) << spec.name;
    }
    if (spec.role == TensorRole::kQBias || spec.role == TensorRole::kOBias) {
      EXPECT_EQ(spec.when_absent, WhenAbsent::kNoTensor) << spec.name;
      EXPECT_FALSE(spec.synthetic()) << spec.name;
    }
  }
}

}  // namespace
}  // namespace lizard
