// Deterministic pseudo-random fill from a counter hash (splitmix64): the same (seed, index)
// always gives the same value, whatever the launch shape.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

__device__ __forceinline__ float HashUniform(uint64_t seed, int64_t i) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f;  // 24 bits -> [-1, 1)
}

template <typename Out>
__global__ void RandomFillKernel(Out* dst, int64_t n, uint64_t seed, float scale, float offset) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Store(dst, i, offset + scale * HashUniform(seed, i));
  }
}

int Blocks(int64_t n) { return static_cast<int>(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536); }

}  // namespace

cudaError_t RandomFillBf16(__nv_bfloat16* dst, int64_t n, uint64_t seed, float scale,
                           float offset, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  RandomFillKernel<<<Blocks(n), 256, 0, stream>>>(dst, n, seed, scale, offset);
  return cudaGetLastError();
}

cudaError_t RandomFillF32(float* dst, int64_t n, uint64_t seed, float scale, float offset,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  RandomFillKernel<<<Blocks(n), 256, 0, stream>>>(dst, n, seed, scale, offset);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
