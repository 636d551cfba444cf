// The CUDA backend: bf16 weights and the sequence-state pool on one GPU, projections through
// cuBLAS (bf16 inputs, float32 accumulation), everything else in kernels/ (see docs/cuda.md).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace lizard {

// Loads options.weights (a checkpoint, or random weights generated on the device) into
// DeviceWeights (engine/cuda/weights.h) on GPU options.device_index, with options.num_slots
// state slots.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

// True when the CUDA runtime sees at least one device.
bool CudaDeviceAvailable();

}  // namespace lizard
