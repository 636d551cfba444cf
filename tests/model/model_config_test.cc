#include "engine/model/model_config.h"

#include <filesystem>
#include <functional>
#include <string>

#include "gtest/gtest.h"
#include "tests/model/test_checkpoint.h"
#include "tests/model/test_util.h"

namespace lizard {
namespace {

using Json = nlohmann::json;
using ::lizard::testing::SmallConfigJson;

TEST(ModelConfigTest, ParsesSmallLizardConfig) {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(SmallConfigJson().dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 32);
  EXPECT_EQ(c->hidden_size, 16);
  EXPECT_EQ(c->intermediate_size, 24);
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->kv_group_size(), 2);
  EXPECT_EQ(c->head_dim, 8);  // explicit, differs from hidden_size / heads
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_FALSE(c->rope_scaling.llama3);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c->max_position_embeddings, 256);
  EXPECT_EQ(c->torch_dtype, DType::kF32);
  EXPECT_EQ(c->feature_dim, 4);
  EXPECT_EQ(c->window_size, 4);
  EXPECT_EQ(c->num_meta_tokens, 2);
  EXPECT_TRUE(c->window_rope);
  EXPECT_TRUE(c->gla_normalize);  // default
  EXPECT_EQ(c->state_dtype, DType::kF32);  // default
  EXPECT_EQ(c->layer_types,
            (std::vector<LayerType>{LayerType::kLizard, LayerType::kSoftmax, LayerType::kLizard}));
  EXPECT_EQ(c->num_lizard_layers(), 2);
  EXPECT_EQ(c->num_softmax_layers(), 1);
}

// A plain Llama 3 teacher config: no "lizard" object, eos list, llama3 rope scaling, no head_dim.
TEST(ModelConfigTest, TeacherConfigIsAllSoftmax) {
  const std::string text = R"({
    "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "tie_word_embeddings": true, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}
  })";
  absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 64);  // hidden_size / num_attention_heads
  EXPECT_EQ(c->num_lizard_layers(), 0);
  EXPECT_EQ(c->num_softmax_layers(), 16);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  ASSERT_TRUE(c->rope_scaling.llama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  Json j = SmallConfigJson();
  for (const char* key : {"num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
                          "tie_word_embeddings", "bos_token_id", "eos_token_id", "max_position_embeddings",
                          "torch_dtype"}) {
    j.erase(key);
  }
  j["lizard"].erase("layer_types");
  j["lizard"].erase("window_rope");
  j["lizard"]["gla_normalize"] = false;
  j["lizard"]["state_dtype"] = "bfloat16";
  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c->head_dim, 4);      // = 16 / 4
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_TRUE(c->rope_scaling.llama3);  // older "type" key
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->torch_dtype, DType::kF32);
  EXPECT_EQ(c->layer_types, std::vector<LayerType>(3, LayerType::kLizard));  // absent = all lizard
  EXPECT_TRUE(c->window_rope);
  EXPECT_FALSE(c->gla_normalize);
  EXPECT_EQ(c->state_dtype, DType::kBF16);
}

TEST(ModelConfigTest, AllSoftmaxLizardObjectNeedsNoLizardSizes) {
  Json j = SmallConfigJson();
  j["lizard"] = {{"layer_types", {"softmax", "softmax", "softmax"}}};
  absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_softmax_layers(), 3);
}

struct RefusalCase {
  std::string label;
  std::function<void(Json&)> edit;
  std::string field;  // must appear in the message
};

TEST(ModelConfigTest, RefusesInvalidConfigsNamingTheField) {
  const std::vector<RefusalCase> cases = {
      {"missing hidden_size", [](Json& j) { j.erase("hidden_size"); }, "hidden_size"},
      {"missing vocab_size", [](Json& j) { j.erase("vocab_size"); }, "vocab_size"},
      {"zero hidden_size", [](Json& j) { j["hidden_size"] = 0; }, "hidden_size"},
      {"negative vocab", [](Json& j) { j["vocab_size"] = -5; }, "vocab_size"},
      {"zero layers", [](Json& j) { j["num_hidden_layers"] = 0; }, "num_hidden_layers"},
      // Crashed (reproduced with tests/fuzz/fuzz_model_config): the count was allocated as layer_types.
      {"huge layers", [](Json& j) { j["num_hidden_layers"] = int64_t{1} << 60; }, "num_hidden_layers"},
      {"huge layers, no lizard",
       [](Json& j) {
         j.erase("lizard");
         j["num_hidden_layers"] = int64_t{1} << 60;
       },
       "num_hidden_layers"},
      // Overflowed int64 in StateLayout (reproduced with a sanitized build).
      {"huge state",
       [](Json& j) {
         j["head_dim"] = int64_t{1} << 32;
         j["lizard"]["feature_dim"] = int64_t{1} << 32;
       },
       "feature_dim"},
      {"huge vocab", [](Json& j) { j["vocab_size"] = int64_t{1} << 40; }, "vocab_size"},
      {"huge positions", [](Json& j) { j["max_position_embeddings"] = int64_t{1} << 50; },
       "max_position_embeddings"},
      {"zero intermediate", [](Json& j) { j["intermediate_size"] = 0; }, "intermediate_size"},
      {"float size", [](Json& j) { j["hidden_size"] = 16.5; }, "hidden_size"},
      {"string size", [](Json& j) { j["num_attention_heads"] = "4"; }, "num_attention_heads"},
      {"zero kv heads", [](Json& j) { j["num_key_value_heads"] = 0; }, "num_key_value_heads"},
      {"H % Hkv", [](Json& j) { j["num_key_value_heads"] = 3; }, "num_key_value_heads"},
      {"bad head_dim", [](Json& j) { j["head_dim"] = -1; }, "head_dim"},
      {"zero eps", [](Json& j) { j["rms_norm_eps"] = 0; }, "rms_norm_eps"},
      {"bad rope_theta", [](Json& j) { j["rope_theta"] = "big"; }, "rope_theta"},
      {"linear rope scaling", [](Json& j) { j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}}; },
       "rope_scaling"},
      {"llama3 without factor",
       [](Json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
       },
       "rope_scaling.factor"},
      {"bad eos", [](Json& j) { j["eos_token_id"] = "</s>"; }, "eos_token_id"},
      {"bad eos list", [](Json& j) { j["eos_token_id"] = {1, -2}; }, "eos_token_id"},
      {"bad bos", [](Json& j) { j["bos_token_id"] = 1.5; }, "bos_token_id"},
      {"int8 torch_dtype", [](Json& j) { j["torch_dtype"] = "int8"; }, "torch_dtype"},
      {"float64 state_dtype", [](Json& j) { j["lizard"]["state_dtype"] = "float64"; }, "lizard.state_dtype"},
      {"short layer_types", [](Json& j) { j["lizard"]["layer_types"] = {"lizard", "softmax"}; },
       "lizard.layer_types"},
      {"unknown layer type", [](Json& j) { j["lizard"]["layer_types"] = {"lizard", "mamba", "lizard"}; },
       "lizard.layer_types"},
      {"zero window", [](Json& j) { j["lizard"]["window_size"] = 0; }, "lizard.window_size"},
      {"zero feature_dim", [](Json& j) { j["lizard"]["feature_dim"] = 0; }, "lizard.feature_dim"},
      {"missing feature_dim", [](Json& j) { j["lizard"].erase("feature_dim"); }, "lizard.feature_dim"},
      {"negative meta tokens", [](Json& j) { j["lizard"]["num_meta_tokens"] = -1; }, "lizard.num_meta_tokens"},
      {"bad window_rope", [](Json& j) { j["lizard"]["window_rope"] = "yes"; }, "lizard.window_rope"},
      {"lizard not an object", [](Json& j) { j["lizard"] = 3; }, "lizard"},
  };
  for (const RefusalCase& rc : cases) {
    Json j = SmallConfigJson();
    rc.edit(j);
    absl::StatusOr<ModelConfig> c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok()) << rc.label;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << rc.label;
    EXPECT_NE(std::string(c.status().message()).find(rc.field), std::string::npos)
        << rc.label << ": " << c.status();
  }
}

TEST(ModelConfigTest, RefusesBadJson) {
  for (const std::string text : {"", "{", "[1, 2]", "{\"vocab_size\": }", "null"}) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ModelConfigTest, LoadModelConfigNamesTheModelAfterItsDirectory) {
  testing::TempDir dir;
  const std::string model_dir = dir.path() + "/my-lizard-1b";
  std::filesystem::create_directory(model_dir);
  testing::WriteFile(model_dir + "/config.json", SmallConfigJson().dump());
  for (const std::string& path : {model_dir, model_dir + "/"}) {
    absl::StatusOr<ModelConfig> c = LoadModelConfig(path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->name, "my-lizard-1b");
  }
  absl::StatusOr<ModelConfig> missing = LoadModelConfig(dir.path() + "/nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("config.json"), std::string::npos);

  testing::WriteFile(model_dir + "/config.json", "{not json");
  absl::StatusOr<ModelConfig> bad = LoadModelConfig(model_dir);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("my-lizard-1b"), std::string::npos);
}

TEST(ModelConfigTest, ShapePresets) {
  absl::StatusOr<ModelConfig> tiny = ShapePreset("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->hidden_size, 256);
  EXPECT_EQ(tiny->num_layers, 4);
  EXPECT_EQ(tiny->num_heads, 4);
  EXPECT_EQ(tiny->num_kv_heads, 2);
  EXPECT_EQ(tiny->head_dim, 64);
  EXPECT_EQ(tiny->intermediate_size, 512);
  EXPECT_EQ(tiny->vocab_size, 2048);
  EXPECT_EQ(tiny->feature_dim, 32);
  EXPECT_EQ(tiny->window_size, 32);
  EXPECT_EQ(tiny->num_meta_tokens, 4);

  absl::StatusOr<ModelConfig> small = ShapePreset("llama3.2-1b");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->hidden_size, 2048);
  EXPECT_EQ(small->num_layers, 16);
  EXPECT_EQ(small->head_dim, 64);
  EXPECT_EQ(small->intermediate_size, 8192);
  EXPECT_EQ(small->vocab_size, 128256);
  EXPECT_EQ(small->feature_dim, 64);
  EXPECT_TRUE(small->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(small->rope_theta, 500000.0);

  absl::StatusOr<ModelConfig> big = ShapePreset("llama3-8b");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->hidden_size, 4096);
  EXPECT_EQ(big->num_layers, 32);
  EXPECT_EQ(big->num_kv_heads, 8);
  EXPECT_EQ(big->head_dim, 128);
  EXPECT_EQ(big->intermediate_size, 14336);
  EXPECT_EQ(big->feature_dim, 128);
  EXPECT_EQ(big->window_size, 128);
  EXPECT_FALSE(big->tie_word_embeddings);

  for (const ModelConfig& c : {*tiny, *small, *big}) {
    EXPECT_EQ(c.num_lizard_layers(), c.num_layers) << c.name;
    EXPECT_EQ(c.torch_dtype, DType::kBF16) << c.name;
    EXPECT_TRUE(c.window_rope && c.gla_normalize) << c.name;
    EXPECT_EQ(c.num_heads % c.num_kv_heads, 0) << c.name;
  }
  EXPECT_EQ(ShapePreset("gpt2").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelConfigTest, DTypeNamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kF32), "float32");
  EXPECT_EQ(DTypeName(DType::kF16), "float16");
  EXPECT_EQ(DTypeName(DType::kBF16), "bfloat16");
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
}

}  // namespace
}  // namespace lizard
