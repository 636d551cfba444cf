// WeightSource: where a backend's weights come from, a checkpoint directory or synthetic
// (seeded random) weights of a given shape for benchmarks and tests. Each backend turns it into
// its own weights (engine/cpu/weights.h, engine/cuda/weights.h), both from the tensor table.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace lizard {

struct WeightSource {
  // A model directory: config.json and a safetensors checkpoint (docs/model-format.md).
  std::string model_dir;
  // When set, no checkpoint is read: the weights are random for this shape, from `seed`.
  std::optional<ModelConfig> synthetic_config;
  uint64_t seed = 1;

  static WeightSource Directory(std::string model_dir);
  static WeightSource Synthetic(ModelConfig config, uint64_t seed);

  bool synthetic() const { return synthetic_config.has_value(); }
  // The synthetic config, or the model directory's config.json.
  absl::StatusOr<ModelConfig> Config() const;
};

}  // namespace lizard
