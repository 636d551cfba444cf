// The C entry points of the CUDA backend plugin (liblizard_cuda_plugin.so); the only caller is
// engine/backend_factory.cc, built by the same compiler from the same headers.
#include "engine/cuda/cuda_backend.h"

extern "C" {

bool LizardCudaDeviceAvailable() { return lizard::CudaDeviceAvailable(); }

void LizardCreateCudaBackend(const lizard::BackendOptions* options,
                             absl::StatusOr<std::unique_ptr<lizard::Backend>>* backend) {
  *backend = lizard::CreateCudaBackend(*options);
}

}  // extern "C"
