#include <cstdio>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#ifdef LIZARD_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace lizard {

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend \"", name, "\" (expected auto, cpu or cuda)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.kind) {
    case BackendKind::kCpu:
      return CreateCpuBackend(options);
    case BackendKind::kCuda:
#ifdef LIZARD_HAVE_CUDA
      return CreateCudaBackend(options);
#else
      return absl::FailedPreconditionError("this build has no CUDA backend (built without nvcc)");
#endif
    case BackendKind::kAuto:
#ifdef LIZARD_HAVE_CUDA
      if (CudaDeviceAvailable()) return CreateCudaBackend(options);
      std::fprintf(stderr, "no usable CUDA device: using the CPU backend\n");
#endif
      return CreateCpuBackend(options);
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

}  // namespace lizard
