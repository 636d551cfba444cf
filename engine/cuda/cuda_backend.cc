// CudaBackend: see cuda_backend.h and docs/cuda.md. A composition of the weights
// (weights.h), the state pool (state_pool.h) and the model over a step plan (forward.h, which
// samples through sampler.h); this file creates them in order and answers the Backend calls.
#include "engine/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/forward.h"
#include "engine/cuda/state_pool.h"
#include "engine/cuda/weights.h"
#include "engine/model/state_layout.h"

namespace lizard {
namespace {

class CudaBackend : public Backend {
 public:
  absl::Status Init(const BackendOptions& options);

  const ModelConfig& config() const override { return config_; }
  BackendInfo info() const override;
  int32_t num_slots() const override { return state_.num_slots(); }
  int64_t slot_bytes() const override { return state_.layout().slot_bytes; }
  int64_t kv_bytes_per_token() const override { return state_.layout().kv_bytes_per_token; }
  absl::Status ResetSlot(SlotId slot) override { return state_.Reset(slot); }
  absl::Status CopySlot(SlotId src, SlotId dst) override { return state_.Copy(src, dst); }
  int64_t SlotPosition(SlotId slot) const override {
    return (slot >= 0 && slot < state_.num_slots()) ? state_.Position(slot) : -1;
  }
  absl::StatusOr<std::string> SaveSlot(SlotId slot) override { return state_.Save(slot); }
  absl::Status LoadSlot(SlotId slot, std::string_view bytes) override { return state_.Load(slot, bytes); }
  absl::StatusOr<SavedSlot> SpillSlot(SlotId slot) override { return state_.Spill(slot); }
  absl::StatusOr<std::unique_ptr<SlotRestore>> RestoreSlot(SlotId slot, const SavedSlot& saved) override {
    return state_.Restore(slot, saved);
  }
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

 private:
  ModelConfig config_;
  int device_ = 0;
  std::string device_name_;
  // Declared first so that it is destroyed last.
  cuda::OwnedStream stream_;
  cuda::DeviceWeights weights_;
  cuda::StatePool state_;
  cuda::ForwardPass forward_;
};

absl::Status CudaBackend::Init(const BackendOptions& options) {
  absl::StatusOr<ModelConfig> config = options.weights.Config();
  if (!config.ok()) return config.status();
  config_ = *std::move(config);
  if (options.state_dtype.has_value()) config_.state_dtype = *options.state_dtype;
  if (config_.state_dtype == DType::kF16) {
    return absl::InvalidArgumentError("CUDA backend: state_dtype float16 is not supported (float32 or bfloat16)");
  }
  if (options.num_slots <= 0) return absl::InvalidArgumentError("num_slots must be positive");
  device_ = options.device_index;
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  LIZARD_CUDA_RETURN(cudaGetDeviceProperties(&prop, device_));
  device_name_ = prop.name;
  LIZARD_RETURN_IF_ERROR(cuda::CheckKernelLimits(config_));

  cudaStream_t stream = nullptr;
  LIZARD_CUDA_RETURN(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_.reset(stream);
  absl::StatusOr<cuda::DeviceWeights> weights = cuda::LoadDeviceWeights(options.weights, config_, stream);
  if (!weights.ok()) return weights.status();
  weights_ = *std::move(weights);
  // S and z in the config's state dtype; the window K/V (and softmax KV) in bf16.
  LIZARD_RETURN_IF_ERROR(
      state_.Init(config_, StateLayout(config_, config_.state_dtype, DType::kBF16), options.num_slots, stream));
  LIZARD_RETURN_IF_ERROR(forward_.Init(config_, weights_, state_, options.batch_invariant, stream));
  // Last: the KV pages take the device memory the rest left.
  LIZARD_RETURN_IF_ERROR(state_.AllocateKvPages());
  LIZARD_CUDA_RETURN(cudaDeviceSynchronize());
  return absl::OkStatus();
}

BackendInfo CudaBackend::info() const {
  BackendInfo info;
  info.name = "cuda";
  info.device = device_name_;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    info.memory_total_bytes = static_cast<int64_t>(total_bytes);
    info.memory_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
  }
  info.weights_bytes = weights_.bytes;
  info.state_pool_bytes = state_.device_bytes();
  info.detail = forward_.projections();
  return info;
}

absl::Status CudaBackend::Forward(const StepPlan& plan, StepOutput* out) {
  // Validate everything before touching any state.
  LIZARD_RETURN_IF_ERROR(ValidateStepPlan(plan, state_.num_slots(), config_.vocab_size,
                                          [&](SlotId slot) { return state_.Position(slot); }));
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));
  return forward_.Run(plan, out);
}

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>();
  LIZARD_RETURN_IF_ERROR(backend->Init(options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace lizard
