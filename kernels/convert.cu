// dtype conversion of checkpoint tensors on the device (f32 / f16 / bf16 -> bf16 or f32).
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

__device__ __forceinline__ float ReadAny(const void* src, int dtype, int64_t i) {
  if (dtype == 0) return static_cast<const float*>(src)[i];
  if (dtype == 1) return __half2float(static_cast<const __half*>(src)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(src)[i]);
}

template <typename Out>
__global__ void ConvertKernel(const void* src, int dtype, int64_t n, Out* dst) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Store(dst, i, ReadAny(src, dtype, i));
  }
}

int Blocks(int64_t n) { return static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536); }

}  // namespace

cudaError_t ConvertToBf16(const void* src, int src_dtype, int64_t n, __nv_bfloat16* dst,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertKernel<<<Blocks(n), 256, 0, stream>>>(src, src_dtype, n, dst);
  return cudaGetLastError();
}

cudaError_t ConvertToF32(const void* src, int src_dtype, int64_t n, float* dst,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ConvertKernel<<<Blocks(n), 256, 0, stream>>>(src, src_dtype, n, dst);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
