// Owning handles for device and pinned host memory, Status wrappers for CUDA and cuBLAS errors,
// and the early-return macros every engine/cuda file uses.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lizard::cuda {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// Returns the absl::Status of `expr` from the enclosing function when it is not OK.
#define LIZARD_RETURN_IF_ERROR(expr)                   \
  do {                                                 \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

// Returns a failed CUDA call (`expr` yields a cudaError_t) as a Status naming the call.
#define LIZARD_CUDA_RETURN(expr) LIZARD_RETURN_IF_ERROR(::lizard::cuda::CudaStatus((expr), #expr))

// The same for cuBLAS and cuBLASLt calls (both return a cublasStatus_t).
inline absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusString(s)));
}
#define LIZARD_CUBLAS_RETURN(expr) LIZARD_RETURN_IF_ERROR(::lizard::cuda::CublasStatus((expr), #expr))

// Owned bytes from one CUDA allocator pair, freed on destruction (and before a new Allocate).
template <cudaError_t (*kAlloc)(void**, size_t), cudaError_t (*kFree)(void*)>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  CudaBuffer(CudaBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  CudaBuffer& operator=(CudaBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~CudaBuffer() { Release(); }

  absl::Status Allocate(size_t bytes) {
    Release();
    if (bytes == 0) return absl::OkStatus();
    if (absl::Status s = CudaStatus(kAlloc(&ptr_, bytes), "CUDA allocation"); !s.ok()) {
      ptr_ = nullptr;
      return s;
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void Release() {
    if (ptr_ != nullptr) kFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline cudaError_t DeviceAlloc(void** ptr, size_t bytes) { return cudaMalloc(ptr, bytes); }
inline cudaError_t PinnedAlloc(void** ptr, size_t bytes) { return cudaMallocHost(ptr, bytes); }

// Device memory (cudaMalloc).
using DeviceBuffer = CudaBuffer<DeviceAlloc, cudaFree>;
// Pinned host memory (cudaMallocHost), for fast and asynchronous host <-> device copies.
using PinnedBuffer = CudaBuffer<PinnedAlloc, cudaFreeHost>;

// A stream, destroyed once the work queued on it has finished (so that buffers it reads or
// writes may be freed right after it).
struct StreamDeleter {
  void operator()(cudaStream_t stream) const {
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
};
using OwnedStream = std::unique_ptr<CUstream_st, StreamDeleter>;

struct EventDeleter {
  void operator()(cudaEvent_t event) const { cudaEventDestroy(event); }
};
using OwnedEvent = std::unique_ptr<CUevent_st, EventDeleter>;

}  // namespace lizard::cuda
