#include "engine/model/weight_source.h"

#include <utility>

namespace lizard {

WeightSource WeightSource::Directory(std::string model_dir) {
  WeightSource source;
  source.model_dir = std::move(model_dir);
  return source;
}

WeightSource WeightSource::Synthetic(ModelConfig config, uint64_t seed) {
  WeightSource source;
  source.synthetic_config = std::move(config);
  source.seed = seed;
  return source;
}

absl::StatusOr<ModelConfig> WeightSource::Config() const {
  if (synthetic()) return *synthetic_config;
  return LoadModelConfig(model_dir);
}

LoadProgressReporter::LoadProgressReporter(LoadProgressCallback on_progress,
                                           const Checkpoint& checkpoint,
                                           const std::vector<TensorSpec>& table)
    : on_progress_(std::move(on_progress)) {
  for (const TensorSpec& spec : table) {
    if (!Loads(checkpoint, spec)) continue;
    ++progress_.tensors_total;
    progress_.bytes_total += static_cast<int64_t>(checkpoint.Find(spec.name)->nbytes);
  }
}

bool LoadProgressReporter::Loads(const Checkpoint& checkpoint, const TensorSpec& spec) {
  return spec.when_absent != WhenAbsent::kEmbedCopy && checkpoint.Find(spec.name) != nullptr;
}

void LoadProgressReporter::Loaded(const TensorView& tensor) {
  ++progress_.tensors_done;
  progress_.bytes_done += static_cast<int64_t>(tensor.nbytes);
  if (on_progress_) on_progress_(progress_);
}

}  // namespace lizard
