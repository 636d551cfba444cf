// Random sequence states for benchmarks and tests: what a backend's LoadSlot takes, without
// running a prefill to get there.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace lizard::tools {

// A serialized state (engine/model/state_layout.h, float32: every backend's LoadSlot converts it
// to its own dtypes) of `config` at `position`, with seeded random contents shaped like real
// ones: small S, a positive normaliser z, window K/V in [-1, 1), and for softmax layers
// `position` tokens of K/V in [-1, 1). The same seed gives the same bytes.
absl::StatusOr<std::string> RandomSerializedState(const ModelConfig& config, int64_t position,
                                                  uint64_t seed);

}  // namespace lizard::tools
