#include "engine/model/checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "tests/model/test_checkpoint.h"
#include "tests/model/test_util.h"

namespace lizard {
namespace {

using ::lizard::testing::ModelTensors;
using ::lizard::testing::ReadFile;
using ::lizard::testing::SafetensorsBytes;
using ::lizard::testing::SmallConfigJson;
using ::lizard::testing::TempDir;
using ::lizard::testing::TestTensor;
using ::lizard::testing::WriteFile;
using Json = nlohmann::json;

ModelConfig SmallConfig() {
  absl::StatusOr<ModelConfig> c = ParseModelConfig(SmallConfigJson().dump());
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

// Compares float values bit for bit (NaN equal to NaN).
void ExpectSameFloats(const std::vector<float>& expected, const std::vector<float>& actual, const std::string& what) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (std::isnan(expected[i])) {
      EXPECT_TRUE(std::isnan(actual[i])) << what << "[" << i << "]";
    } else {
      ASSERT_EQ(expected[i], actual[i]) << what << "[" << i << "]";
    }
  }
}

std::vector<float> ToF32(const TensorView& t) {
  std::vector<float> out(t.numel());
  ConvertToF32(t, out.data());
  return out;
}

// The checkpoint holds `tensors` and nothing else: names, dtypes, shapes, sizes and values.
void ExpectHoldsExactly(const Checkpoint& ckpt, const std::vector<TestTensor>& tensors) {
  EXPECT_EQ(ckpt.Names().size(), tensors.size());
  for (const TestTensor& t : tensors) {
    const TensorView* view = ckpt.Find(t.name);
    ASSERT_NE(view, nullptr) << t.name;
    EXPECT_EQ(view->name, t.name);
    EXPECT_EQ(view->dtype, t.dtype);
    EXPECT_EQ(view->shape, t.shape);
    EXPECT_EQ(view->nbytes, t.bytes.size());
    ExpectSameFloats(t.values, ToF32(*view), t.name);
  }
}

// Every dtype's conversion vs the reference decoders, over all 65536 bit patterns, read from an
// odd (unaligned) address as tensors in a file may be.
TEST(ConvertToF32Test, AllHalfAndBFloat16ValuesMatchTheReference) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    std::string storage(1 + 2 * 65536, '\0');
    std::vector<float> expected(65536);
    for (uint32_t b = 0; b < 65536; ++b) {
      const uint16_t bits = static_cast<uint16_t>(b);
      std::memcpy(storage.data() + 1 + 2 * b, &bits, 2);
      expected[b] = dtype == DType::kF16 ? testing::ReferenceHalfToFloat(bits) : testing::ReferenceBF16ToFloat(bits);
    }
    TensorView view;
    view.dtype = dtype;
    view.shape = {256, 256};
    view.data = storage.data() + 1;
    view.nbytes = 2 * 65536;
    ExpectSameFloats(expected, ToF32(view), std::string(DTypeName(dtype)));
  }
  // Spot checks that pin down the reference itself.
  EXPECT_EQ(testing::ReferenceHalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(testing::ReferenceHalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(testing::ReferenceHalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(testing::ReferenceHalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(testing::ReferenceHalfToFloat(0xfc00)));
  EXPECT_EQ(testing::ReferenceBF16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(testing::ReferenceBF16ToFloat(0xc040), -3.0f);
}

// bf16 is the upper half of a float32: random float32 values truncated to bf16 decode exactly
// to the truncated value.
TEST(ConvertToF32Test, BFloat16IsTheUpperHalfOfFloat32OnRandomValues) {
  std::mt19937 rng(7);
  std::vector<uint16_t> stored(4096);
  std::vector<float> expected(stored.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    uint32_t f;
    do {
      f = static_cast<uint32_t>(rng());
    } while (((f >> 23) & 0xff) == 0xff);  // finite only
    stored[i] = static_cast<uint16_t>(f >> 16);
    const uint32_t truncated = f & 0xffff0000u;
    std::memcpy(&expected[i], &truncated, 4);
  }
  TensorView view;
  view.dtype = DType::kBF16;
  view.shape = {static_cast<int64_t>(stored.size())};
  view.data = stored.data();
  view.nbytes = 2 * stored.size();
  ExpectSameFloats(expected, ToF32(view), "bf16");
}

// An empty tensor (a zero dimension) converts to nothing; `out` may be null. Before, the F32 case
// passed the null pointer to memcpy (undefined behaviour, found by tests/fuzz/fuzz_checkpoint).
TEST(ConvertToF32Test, EmptyTensorsNeedNoOutput) {
  const float stored = 1.0f;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    TensorView view;
    view.dtype = dtype;
    view.shape = {0, 4};
    view.data = &stored;
    ConvertToF32(view, nullptr);
  }
}

class CheckpointRoundTripTest : public ::testing::TestWithParam<DType> {};

TEST_P(CheckpointRoundTripTest, SingleFile) {
  const ModelConfig config = SmallConfig();
  const std::vector<TestTensor> tensors = ModelTensors(config, GetParam(), /*with_biases=*/true, 11);
  TempDir dir;
  WriteFile(dir.path() + "/model.safetensors", SafetensorsBytes(tensors));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectHoldsExactly(**ckpt, tensors);
  EXPECT_EQ((*ckpt)->Find("model.layers.9.mlp.up_proj.weight"), nullptr);
  EXPECT_TRUE(ValidateCheckpoint(config, **ckpt).ok()) << ValidateCheckpoint(config, **ckpt);
}

// Three shards; the tensors of one layer are split across two of them.
TEST_P(CheckpointRoundTripTest, Sharded) {
  const ModelConfig config = SmallConfig();
  const std::vector<TestTensor> tensors = ModelTensors(config, GetParam(), /*with_biases=*/false, 12);
  TempDir dir;
  std::vector<std::vector<TestTensor>> shards(3);
  Json weight_map = Json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const size_t shard = i * shards.size() / tensors.size();
    shards[shard].push_back(tensors[i]);
    weight_map[tensors[i].name] = "model-0000" + std::to_string(shard + 1) + "-of-00003.safetensors";
  }
  for (size_t s = 0; s < shards.size(); ++s) {
    WriteFile(dir.path() + "/model-0000" + std::to_string(s + 1) + "-of-00003.safetensors", SafetensorsBytes(shards[s]));
  }
  WriteFile(dir.path() + "/model.safetensors.index.json",
            Json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ExpectHoldsExactly(**ckpt, tensors);
  EXPECT_TRUE(ValidateCheckpoint(config, **ckpt).ok()) << ValidateCheckpoint(config, **ckpt);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CheckpointRoundTripTest,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(DTypeName(info.param)); });

// Expects Open (or, with `validate`, ValidateCheckpoint) to fail with every `needle` in the message.
void ExpectRefused(const absl::Status& status, const std::vector<std::string>& needles) {
  ASSERT_FALSE(status.ok());
  for (const std::string& needle : needles) {
    EXPECT_NE(std::string(status.message()).find(needle), std::string::npos)
        << "missing \"" << needle << "\" in: " << status;
  }
}

absl::Status OpenStatus(const std::string& dir) { return Checkpoint::Open(dir).status(); }

TEST(CheckpointOpenTest, RefusesMalformedFiles) {
  std::mt19937 rng(3);
  const TestTensor a = testing::RandomTensor("a.weight", DType::kF32, {4, 8}, rng);
  const TestTensor b = testing::RandomTensor("b.weight", DType::kBF16, {8}, rng);
  const std::string good = SafetensorsBytes({a, b});
  TempDir dir;
  const std::string path = dir.path() + "/model.safetensors";

  WriteFile(path, good);
  ASSERT_TRUE(OpenStatus(dir.path()).ok());

  // Truncated in the data area: the last tensor's range leaves the file.
  WriteFile(path, good.substr(0, good.size() - 3));
  ExpectRefused(OpenStatus(dir.path()), {path, "b.weight", "outside the data area"});
  // Truncated in the header.
  WriteFile(path, good.substr(0, 20));
  ExpectRefused(OpenStatus(dir.path()), {path, "header length", "beyond the file size"});
  // Shorter than the 8-byte header length.
  WriteFile(path, good.substr(0, 5));
  ExpectRefused(OpenStatus(dir.path()), {path, "truncated"});
  WriteFile(path, "");
  ExpectRefused(OpenStatus(dir.path()), {path, "truncated"});
  // Header is not JSON.
  WriteFile(path, SafetensorsBytes("{\"a.weight\": {\"dtype\": ", std::string(16, '\0')));
  ExpectRefused(OpenStatus(dir.path()), {path, "header is not a valid JSON object"});
  WriteFile(path, SafetensorsBytes("[1, 2]", ""));
  ExpectRefused(OpenStatus(dir.path()), {path, "header is not a valid JSON object"});

  auto with_entry = [&](const Json& entry, size_t data_bytes) {
    WriteFile(path, SafetensorsBytes(Json{{"x.weight", entry}}.dump(), std::string(data_bytes, '\0')));
    return OpenStatus(dir.path());
  };
  for (const char* dtype : {"I8", "F64", "BOOL", "F8_E4M3"}) {
    ExpectRefused(with_entry({{"dtype", dtype}, {"shape", {2}}, {"data_offsets", {0, 2}}}, 2),
                  {path, "x.weight", "unsupported dtype", dtype});
  }
  // data_offsets inconsistent with shape * dtype size.
  ExpectRefused(with_entry({{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 20}}}, 24),
                {path, "x.weight", "[2, 3]", "needs 24"});
  // data_offsets outside the data area, or reversed.
  ExpectRefused(with_entry({{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {16, 24}}}, 16),
                {path, "x.weight", "outside the data area"});
  ExpectRefused(with_entry({{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {8, 0}}}, 16),
                {path, "x.weight", "outside the data area"});
  // A shape so large its byte count would overflow.
  ExpectRefused(with_entry({{"dtype", "F32"}, {"shape", {uint64_t{1} << 62, 8}}, {"data_offsets", {0, 8}}}, 8),
                {path, "x.weight", "more than the file has"});
  // Malformed entries.
  ExpectRefused(with_entry({{"dtype", "F32"}, {"shape", {-1}}, {"data_offsets", {0, 0}}}, 0), {path, "x.weight"});
  ExpectRefused(with_entry({{"dtype", "F32"}, {"shape", {1}}}, 4), {path, "x.weight", "data_offsets"});
  ExpectRefused(with_entry(Json("F32"), 4), {path, "x.weight"});
  // A scalar (shape []) is fine.
  EXPECT_TRUE(with_entry({{"dtype", "F32"}, {"shape", Json::array()}, {"data_offsets", {0, 4}}}, 4).ok());
}

TEST(CheckpointOpenTest, RefusesMissingFilesAndBadIndexes) {
  std::mt19937 rng(4);
  const TestTensor a = testing::RandomTensor("a.weight", DType::kF32, {4}, rng);
  const TestTensor b = testing::RandomTensor("b.weight", DType::kF16, {4}, rng);
  TempDir dir;
  const absl::Status none = OpenStatus(dir.path());
  EXPECT_EQ(none.code(), absl::StatusCode::kNotFound);
  ExpectRefused(none, {"model.safetensors"});

  const std::string index = dir.path() + "/model.safetensors.index.json";
  const std::string shard1 = dir.path() + "/model-00001-of-00002.safetensors";
  const std::string shard2 = dir.path() + "/model-00002-of-00002.safetensors";
  WriteFile(shard1, SafetensorsBytes({a}));
  auto write_index = [&](const Json& weight_map) { WriteFile(index, Json{{"weight_map", weight_map}}.dump()); };

  // The index names a shard that does not exist.
  write_index({{"a.weight", "model-00001-of-00002.safetensors"}, {"b.weight", "model-00002-of-00002.safetensors"}});
  const absl::Status missing_shard = OpenStatus(dir.path());
  EXPECT_EQ(missing_shard.code(), absl::StatusCode::kNotFound);
  ExpectRefused(missing_shard, {shard2});

  // A tensor listed in the index but absent from its shard.
  WriteFile(shard2, SafetensorsBytes(std::vector<TestTensor>{}));
  ExpectRefused(OpenStatus(dir.path()), {"b.weight", "absent from", shard2});

  // The same tensor in two shards.
  WriteFile(shard2, SafetensorsBytes({a, b}));
  ExpectRefused(OpenStatus(dir.path()), {"a.weight", shard1, shard2});

  // A tensor stored in another shard than the index says.
  WriteFile(shard1, SafetensorsBytes({b}));
  WriteFile(shard2, SafetensorsBytes({a}));
  ExpectRefused(OpenStatus(dir.path()), {"a.weight", "stored in", shard2});

  // Shard names must stay inside the model directory; bad index JSON.
  write_index({{"a.weight", "../elsewhere.safetensors"}});
  ExpectRefused(OpenStatus(dir.path()), {index, "a.weight", "bad shard file name"});
  WriteFile(index, "{\"weight_map\": [");
  ExpectRefused(OpenStatus(dir.path()), {index, "weight_map"});

  // Consistent shards open fine.
  WriteFile(shard1, SafetensorsBytes({a}));
  WriteFile(shard2, SafetensorsBytes({b}));
  write_index({{"a.weight", "model-00001-of-00002.safetensors"}, {"b.weight", "model-00002-of-00002.safetensors"}});
  EXPECT_TRUE(OpenStatus(dir.path()).ok()) << OpenStatus(dir.path());
}

// Writes `tensors` as a single-file checkpoint and runs ValidateCheckpoint against `config`.
absl::Status ValidateTensors(const ModelConfig& config, const std::vector<TestTensor>& tensors) {
  TempDir dir;
  WriteFile(dir.path() + "/model.safetensors", SafetensorsBytes(tensors));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir.path());
  if (!ckpt.ok()) return ckpt.status();
  return ValidateCheckpoint(config, **ckpt);
}

std::vector<TestTensor> Without(std::vector<TestTensor> tensors, const std::string& name) {
  std::erase_if(tensors, [&](const TestTensor& t) { return t.name == name; });
  return tensors;
}

TEST(ValidateCheckpointTest, RefusesTensorsThatContradictTheConfig) {
  const ModelConfig config = SmallConfig();
  const std::vector<TestTensor> good = ModelTensors(config, DType::kBF16, /*with_biases=*/false, 5);
  ASSERT_TRUE(ValidateTensors(config, good).ok());
  std::mt19937 rng(6);

  // Wrong shape: both shapes in the message.
  {
    std::vector<TestTensor> t = Without(good, "model.layers.2.self_attn.k_proj.weight");
    t.push_back(testing::RandomTensor("model.layers.2.self_attn.k_proj.weight", DType::kBF16, {32, 16}, rng));
    ExpectRefused(ValidateTensors(config, t),
                  {"model.layers.2.self_attn.k_proj.weight: expected shape [16, 16], checkpoint has [32, 16]"});
  }
  // Wrong shape of an optional bias.
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.0.self_attn.forget_gate.bias", DType::kBF16, {4, 1}, rng));
    ExpectRefused(ValidateTensors(config, t),
                  {"model.layers.0.self_attn.forget_gate.bias: expected shape [4], checkpoint has [4, 1]"});
  }
  // Missing required tensors.
  for (const std::string name : {"model.layers.0.self_attn.feature_map_q.weight", "model.layers.1.mlp.up_proj.weight",
                                 "model.layers.2.self_attn.meta_logits", "model.norm.weight", "lm_head.weight",
                                 "model.embed_tokens.weight"}) {
    ExpectRefused(ValidateTensors(config, Without(good, name)), {name + ": missing from checkpoint"});
  }
  // Lizard tensors on a layer the config says is softmax.
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.1.self_attn.feature_map_q.weight", DType::kBF16, {4, 8, 4}, rng));
    ExpectRefused(ValidateTensors(config, t),
                  {"model.layers.1.self_attn.feature_map_q.weight", "unexpected", "layer 1 is a softmax layer"});
  }
  // More layers in the checkpoint than num_hidden_layers.
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.3.input_layernorm.weight", DType::kBF16, {16}, rng));
    ExpectRefused(ValidateTensors(config, t),
                  {"model.layers.3.input_layernorm.weight", "unexpected", "num_hidden_layers = 3"});
  }
  // A negative layer index (must not index layer_types).
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.-1.input_layernorm.weight", DType::kBF16, {16}, rng));
    ExpectRefused(ValidateTensors(config, t),
                  {"model.layers.-1.input_layernorm.weight", "unexpected", "num_hidden_layers = 3"});
  }
  // Unknown tensor names.
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.0.self_attn.lora_A.weight", DType::kBF16, {2}, rng));
    ExpectRefused(ValidateTensors(config, t), {"model.layers.0.self_attn.lora_A.weight", "unexpected"});
  }
  // Old exports' RoPE buffers are ignored.
  {
    std::vector<TestTensor> t = good;
    t.push_back(testing::RandomTensor("model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32, {4}, rng));
    EXPECT_TRUE(ValidateTensors(config, t).ok());
  }
  // Tied: lm_head may be absent; a softmax-only config refuses the lizard tensors of layer 0.
  {
    ModelConfig tied = config;
    tied.tie_word_embeddings = true;
    EXPECT_TRUE(ValidateTensors(tied, Without(good, "lm_head.weight")).ok());
    EXPECT_TRUE(ValidateTensors(tied, good).ok());
    ModelConfig teacher = config;
    teacher.layer_types.assign(3, LayerType::kSoftmax);
    ExpectRefused(ValidateTensors(teacher, good), {"model.layers.0.self_attn.", "layer 0 is a softmax layer"});
  }
}

TEST(CheckpointTest, LayerTensorName) {
  EXPECT_EQ(LayerTensorName(12, "mlp.down_proj.weight"), "model.layers.12.mlp.down_proj.weight");
}

}  // namespace
}  // namespace lizard
