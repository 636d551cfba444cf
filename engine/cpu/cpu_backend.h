// The CPU reference backend: float32 compute on HostWeights, GEMMs by cpu::Gemm (engine/cpu/ops.h).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace lizard {

// Loads options.weights (a checkpoint, or random weights) into HostWeights (engine/cpu/weights.h)
// and creates a backend with options.num_slots state slots.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options);

}  // namespace lizard
