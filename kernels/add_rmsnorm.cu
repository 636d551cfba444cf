// Residual add fused with RMSNorm: x += delta; out = bf16(x / rms(x) * weight).
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

__global__ void AddRmsNormKernel(float* x, const float* delta, const float* weight, int cols,
                                 float eps, __nv_bfloat16* out) {
  __shared__ float red[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  float sq = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = x[base + c];
    if (delta != nullptr) {
      v += delta[base + c];
      x[base + c] = v;
    }
    sq += v * v;
  }
  const float inv = rsqrtf(BlockSum(sq, red) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    out[base + c] = __float2bfloat16(x[base + c] * inv * weight[c]);
  }
}

}  // namespace

cudaError_t AddRmsNorm(float* x, const float* delta, const float* weight, int rows, int cols,
                       float eps, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // Wide blocks: at batch 1 a single block does the whole row, so it must be short.
  const int threads = cols >= 4096 ? 1024 : cols >= 1024 ? 512 : 128;
  AddRmsNormKernel<<<rows, threads, 0, stream>>>(x, delta, weight, cols, eps, out);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
