// WeightSource: where a backend's weights come from, a checkpoint directory or synthetic
// (seeded random) weights of a given shape for benchmarks and tests. Each backend turns it into
// its own weights (engine/cpu/weights.h, engine/cuda/weights.h), both from the tensor table.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model_config.h"
#include "engine/model/tensor_table.h"

namespace lizard {

// How far a backend is in loading a checkpoint: reported after every tensor it reads.
struct LoadProgress {
  int64_t tensors_done = 0, tensors_total = 0;
  int64_t bytes_done = 0, bytes_total = 0;  // as stored in the checkpoint
};

struct WeightSource {
  // A model directory: config.json and a safetensors checkpoint (docs/model-format.md).
  std::string model_dir;
  // When set, no checkpoint is read: the weights are random for this shape, from `seed`.
  std::optional<ModelConfig> synthetic_config;
  uint64_t seed = 1;
  // Called on the loading thread after each checkpoint tensor is loaded (the server logs it);
  // may be empty.
  std::function<void(const LoadProgress&)> on_progress;  // a LoadProgressCallback

  static WeightSource Directory(std::string model_dir);
  static WeightSource Synthetic(ModelConfig config, uint64_t seed);

  bool synthetic() const { return synthetic_config.has_value(); }
  // The synthetic config, or the model directory's config.json.
  absl::StatusOr<ModelConfig> Config() const;
};

using LoadProgressCallback = std::function<void(const LoadProgress&)>;

// Counts what a loader reads for WeightSource::on_progress. Both backends load the same tensors: every
// table entry the checkpoint holds, except a tied model's stored lm_head (Loads says which).
class LoadProgressReporter {
 public:
  LoadProgressReporter(LoadProgressCallback on_progress, const Checkpoint& checkpoint,
                       const std::vector<TensorSpec>& table);
  static bool Loads(const Checkpoint& checkpoint, const TensorSpec& spec);
  void Loaded(const TensorView& tensor);

 private:
  LoadProgressCallback on_progress_;
  LoadProgress progress_;
};

}  // namespace lizard
