// ModelConfig: the fields of a checkpoint's config.json that the engine reads
// (see docs/model-format.md and ../shared/spec/lizard-model.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lizard {

enum class LayerType { kLizard, kSoftmax };
enum class DType { kF32, kF16, kBF16 };

std::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

// Hugging Face `rope_scaling` with rope_type "llama3"; absent means plain RoPE.
struct RopeScaling {
  bool llama3 = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;         // Hd
  int64_t intermediate_size = 0;   // I
  int64_t num_layers = 0;          // L
  int64_t num_heads = 0;           // H
  int64_t num_kv_heads = 0;        // Hkv
  int64_t head_dim = 0;            // D
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = -1;               // -1: none
  std::vector<int32_t> eos_token_ids;      // may be empty
  int64_t max_position_embeddings = 0;
  DType torch_dtype = DType::kF32;

  // The "lizard" object. A config without one is a plain Llama teacher: all layers softmax.
  int64_t feature_dim = 0;      // F (each feature map outputs 2F values)
  int64_t window_size = 0;      // w
  int64_t num_meta_tokens = 0;  // m
  bool window_rope = true;
  bool gla_normalize = true;
  DType state_dtype = DType::kF32;
  std::vector<LayerType> layer_types;  // size num_layers

  // A short model name for logs and GetModelInfo (the checkpoint directory's base name).
  std::string name;

  int64_t kv_group_size() const { return num_heads / num_kv_heads; }
  int64_t num_lizard_layers() const;
  int64_t num_softmax_layers() const;
};

// Parses config.json text; every inconsistency (H % Hkv != 0, layer_types of the wrong length,
// unknown layer type or dtype, non-positive sizes) is an INVALID_ARGUMENT naming the field.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
// Standard shapes for benchmarks with synthetic weights: "tiny", "llama3.2-1b", "llama3-8b"
// (every layer lizard; F, w and m chosen per shape); NOT_FOUND for other names.
absl::StatusOr<ModelConfig> ShapePreset(std::string_view name);
// Reads DIR/config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace lizard
