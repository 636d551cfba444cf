// Checkpoint: the tensors of a safetensors checkpoint (single file or sharded with
// model.safetensors.index.json), memory-mapped, viewed without copying.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace lizard {

// A tensor as stored: points into the mapped file, valid while its Checkpoint lives.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

class Checkpoint {
 public:
  // Maps every shard and parses the headers. A truncated file, bad header JSON, an unknown
  // dtype or a tensor whose byte range leaves the file is refused naming file and tensor.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);
  virtual ~Checkpoint() = default;

  // nullptr when absent.
  virtual const TensorView* Find(std::string_view name) const = 0;
  virtual std::vector<std::string> Names() const = 0;
};

// Checks every tensor the config requires (and optional ones when present) for presence,
// shape and a supported dtype. Errors name the tensor and both shapes, e.g.
// "model.layers.3.self_attn.k_proj.weight: expected shape [256, 1024], checkpoint has [512, 1024]".
absl::Status ValidateCheckpoint(const ModelConfig& config, const Checkpoint& checkpoint);

// Converts any stored dtype to float32 (out has numel() elements).
void ConvertToF32(const TensorView& tensor, float* out);

// "model.layers.{layer}.{suffix}"
std::string LayerTensorName(int64_t layer, std::string_view suffix);

}  // namespace lizard
