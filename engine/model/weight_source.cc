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

}  // namespace lizard
