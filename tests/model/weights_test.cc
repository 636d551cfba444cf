#include "engine/cpu/weights.h"

#include <cmath>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "tests/model/test_checkpoint.h"
#include "tests/model/test_util.h"

namespace lizard {
namespace {

using ::lizard::testing::ModelTensors;
using ::lizard::testing::SafetensorsBytes;
using ::lizard::testing::SmallConfigJson;
using ::lizard::testing::TempDir;
using ::lizard::testing::TestTensor;
using ::lizard::testing::WriteFile;

ModelConfig SmallConfig(bool tied) {
  nlohmann::json j = SmallConfigJson();
  j["tie_word_embeddings"] = tied;
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// The HostWeights vector that holds tensor `name` (nullptr when it has none).
const std::vector<float>* Field(const HostWeights& w, const std::string& name) {
  if (name == "model.embed_tokens.weight") return &w.embed;
  if (name == "model.norm.weight") return &w.final_norm;
  if (name == "lm_head.weight") return &w.lm_head;
  const int l = std::stoi(name.substr(std::string("model.layers.").size()));
  const LayerWeights& lw = w.layers[l];
  const std::string suffix = name.substr(name.find('.', std::string("model.layers.").size()) + 1);
  const std::map<std::string, const std::vector<float>*> fields = {
      {"input_layernorm.weight", &lw.input_norm},
      {"post_attention_layernorm.weight", &lw.post_norm},
      {"self_attn.q_proj.weight", &lw.wq},
      {"self_attn.k_proj.weight", &lw.wk},
      {"self_attn.v_proj.weight", &lw.wv},
      {"self_attn.o_proj.weight", &lw.wo},
      {"self_attn.q_proj.bias", &lw.bq},
      {"self_attn.k_proj.bias", &lw.bk},
      {"self_attn.v_proj.bias", &lw.bv},
      {"self_attn.o_proj.bias", &lw.bo},
      {"self_attn.feature_map_q.weight", &lw.fmap_q},
      {"self_attn.feature_map_k.weight", &lw.fmap_k},
      {"self_attn.feature_map_q.bias", &lw.fmap_q_bias},
      {"self_attn.feature_map_k.bias", &lw.fmap_k_bias},
      {"self_attn.forget_gate.weight", &lw.gate_w},
      {"self_attn.forget_gate.bias", &lw.gate_b},
      {"self_attn.meta_logits", &lw.meta_logits},
      {"self_attn.window_factor", &lw.window_factor},
      {"mlp.gate_proj.weight", &lw.w_gate},
      {"mlp.up_proj.weight", &lw.w_up},
      {"mlp.down_proj.weight", &lw.w_down},
  };
  auto it = fields.find(suffix);
  return it == fields.end() ? nullptr : it->second;
}

absl::StatusOr<HostWeights> LoadFromTensors(const ModelConfig& config, const std::vector<TestTensor>& tensors) {
  TempDir dir;
  WriteFile(dir.path() + "/model.safetensors", SafetensorsBytes(tensors));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir.path());
  if (!ckpt.ok()) return ckpt.status();
  return LoadHostWeights(config, **ckpt);
}

TEST(LoadHostWeightsTest, EveryTensorArrivesAsFloat32WithBiases) {
  const ModelConfig config = SmallConfig(/*tied=*/false);
  const std::vector<TestTensor> tensors = ModelTensors(config, DType::kBF16, /*with_biases=*/true, 21);
  absl::StatusOr<HostWeights> w = LoadFromTensors(config, tensors);
  ASSERT_TRUE(w.ok()) << w.status();
  int64_t total = 0;
  for (const TestTensor& t : tensors) {
    const std::vector<float>* field = Field(*w, t.name);
    ASSERT_NE(field, nullptr) << t.name;
    EXPECT_EQ(*field, t.values) << t.name;
    total += static_cast<int64_t>(t.values.size());
  }
  EXPECT_EQ(w->num_parameters(), total);
  EXPECT_EQ(w->layers[1].type, LayerType::kSoftmax);
  EXPECT_TRUE(w->layers[1].fmap_q.empty() && w->layers[1].gate_b.empty());
}

TEST(LoadHostWeightsTest, MissingOptionalBiasesAndTiedEmbeddings) {
  const ModelConfig config = SmallConfig(/*tied=*/true);
  const std::vector<TestTensor> tensors = ModelTensors(config, DType::kF16, /*with_biases=*/false, 22);
  absl::StatusOr<HostWeights> w = LoadFromTensors(config, tensors);
  ASSERT_TRUE(w.ok()) << w.status();
  const int64_t H = config.num_heads, F = config.feature_dim;
  for (int l : {0, 2}) {
    const LayerWeights& lw = w->layers[l];
    EXPECT_EQ(lw.fmap_q_bias, std::vector<float>(H * F, 0.0f));
    EXPECT_EQ(lw.fmap_k_bias, std::vector<float>(H * F, 0.0f));
    EXPECT_EQ(lw.gate_b, std::vector<float>(H, 0.0f));
    EXPECT_TRUE(lw.bq.empty() && lw.bk.empty() && lw.bv.empty() && lw.bo.empty());
  }
  EXPECT_TRUE(w->tied_embeddings);
  EXPECT_EQ(w->lm_head, w->embed);
  int64_t total = 0;
  for (const TestTensor& t : tensors) total += static_cast<int64_t>(t.values.size());
  // The zero biases count as parameters of the loaded model; the tied head does not.
  EXPECT_EQ(w->num_parameters(), total + 2 * (2 * H * F + H));
}

TEST(LoadHostWeightsTest, RefusesAnInvalidCheckpoint) {
  const ModelConfig config = SmallConfig(/*tied=*/false);
  std::vector<TestTensor> tensors = ModelTensors(config, DType::kF32, /*with_biases=*/false, 23);
  std::erase_if(tensors, [](const TestTensor& t) { return t.name == "model.layers.0.mlp.down_proj.weight"; });
  absl::StatusOr<HostWeights> w = LoadFromTensors(config, tensors);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(std::string(w.status().message()).find("model.layers.0.mlp.down_proj.weight: missing"),
            std::string::npos)
      << w.status();
}

// Mean and standard deviation of a vector.
std::pair<double, double> Moments(const std::vector<float>& v) {
  double sum = 0, sq = 0;
  for (float x : v) sum += x, sq += static_cast<double>(x) * x;
  const double mean = sum / v.size();
  return {mean, std::sqrt(sq / v.size() - mean * mean)};
}

TEST(RandomHostWeightsTest, ShapesMatchTheCheckpointFormat) {
  for (bool tied : {false, true}) {
    const ModelConfig config = SmallConfig(tied);
    const HostWeights w = RandomHostWeights(config, 5);
    int64_t total = 0;
    for (const TestTensor& t : ModelTensors(config, DType::kF32, /*with_biases=*/false, 1)) {
      const std::vector<float>* field = Field(w, t.name);
      ASSERT_NE(field, nullptr) << t.name;
      EXPECT_EQ(field->size(), t.values.size()) << t.name;
      total += static_cast<int64_t>(t.values.size());
    }
    const int64_t H = config.num_heads, F = config.feature_dim;
    EXPECT_EQ(w.num_parameters(), total + 2 * (2 * H * F + H)) << "tied " << tied;  // + fmap/gate biases
    EXPECT_TRUE(w.layers[0].bq.empty());
    EXPECT_EQ(w.tied_embeddings, tied);
    if (tied) {
      EXPECT_EQ(w.lm_head, w.embed);
    }
  }
}

TEST(RandomHostWeightsTest, DeterministicWithTheStatedScales) {
  absl::StatusOr<ModelConfig> config = ShapePreset("tiny");
  ASSERT_TRUE(config.ok());
  config->vocab_size = 8192;  // the embedding spans two of the generator's 2^20-value pieces
  const HostWeights a = RandomHostWeights(*config, 42);
  const HostWeights b = RandomHostWeights(*config, 42);
  const HostWeights c = RandomHostWeights(*config, 43);
  EXPECT_EQ(a.embed, b.embed);
  EXPECT_EQ(a.layers[3].w_down, b.layers[3].w_down);
  EXPECT_EQ(a.lm_head, b.lm_head);
  EXPECT_NE(a.embed, c.embed);
  EXPECT_NE(a.layers[0].wq, a.layers[1].wq);  // every tensor has its own stream

  // Golden values: the generator is specified (splitmix64 + Box-Muller), so these must not
  // change between machines or compilers. Tolerance 1e-6 relative (libm's log/cos/sin).
  const std::vector<std::pair<float, float>> golden = {
      {a.embed[0], 0.0373530053f},          {a.embed[1], -0.0196919236f},
      {a.embed[(1 << 20) + 3], 0.0501263291f}, {a.layers[3].w_down[100005], -0.00465426315f},
      {a.layers[2].gate_b[1], 2.64598799f},
  };
  for (const auto& [actual, expected] : golden) EXPECT_NEAR(actual, expected, 1e-6 * std::abs(expected));

  // Scales (tolerance: 5% of the target std; >= 65536 samples each).
  const double Hd = config->hidden_size, I = config->intermediate_size;
  const struct {
    const std::vector<float>& v;
    double mean, stddev;
  } checks[] = {
      {a.embed, 0.0, 1 / std::sqrt(Hd)},           {a.layers[0].wq, 0.0, 1 / std::sqrt(Hd)},
      {a.layers[0].w_down, 0.0, 1 / std::sqrt(I)}, {a.layers[0].fmap_q, 0.0, 1 / std::sqrt(64.0)},
      {a.lm_head, 0.0, 1 / std::sqrt(Hd)},
  };
  for (const auto& check : checks) {
    const auto [mean, stddev] = Moments(check.v);
    EXPECT_NEAR(mean, check.mean, 0.05 * check.stddev);
    EXPECT_NEAR(stddev, check.stddev, 0.05 * check.stddev);
  }
  const auto [norm_mean, norm_std] = Moments(a.layers[0].input_norm);
  EXPECT_NEAR(norm_mean, 1.0, 0.05);
  EXPECT_LT(norm_std, 0.2);
}

}  // namespace
}  // namespace lizard
