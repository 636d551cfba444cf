// Residual add fused with RMSNorm: x += delta; out = bf16(x / rms(x) * weight).
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

// One block per row; each thread takes kWidth neighbouring columns at a time (16-byte loads
// when cols % 4 == 0 keeps every row aligned). A row's sum of squares depends on cols alone.
// delta may be a GEMM's split partials (GemmOutput): added here, the reduce kernel is not run.
template <int kWidth>
__global__ void AddRmsNormKernel(float* x, GemmOutput delta, const float* weight, int cols, float eps,
                                 __nv_bfloat16* out) {
  using Vec = std::conditional_t<kWidth == 4, float4, float>;
  __shared__ float red[32];
  WaitForPrevious();
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols;
  Vec* xv = reinterpret_cast<Vec*>(x + base);
  const bool has_delta = delta.y != nullptr || delta.splits > 0;
  const int n = cols / kWidth;
  float sq = 0.f;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    Vec v = xv[c];
    float* e = reinterpret_cast<float*>(&v);
    if (has_delta) {
      float d[kWidth];
      LoadGemmOutput<kWidth>(delta, base + c * kWidth, c * kWidth, d);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) e[k] += d[k];
      xv[c] = v;
    }
#pragma unroll
    for (int k = 0; k < kWidth; ++k) sq += e[k] * e[k];
  }
  const float inv = rsqrtf(BlockSum(sq, red) / cols + eps);
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    Vec v = xv[c];
    const Vec w = reinterpret_cast<const Vec*>(weight)[c];
    const float* e = reinterpret_cast<const float*>(&v);
    const float* we = reinterpret_cast<const float*>(&w);
    __nv_bfloat16 y[kWidth];
#pragma unroll
    for (int k = 0; k < kWidth; ++k) y[k] = __float2bfloat16(e[k] * inv * we[k]);
    if constexpr (kWidth == 4) {
      reinterpret_cast<uint2*>(out + base)[c] = *reinterpret_cast<const uint2*>(y);
    } else {
      out[base + c] = y[0];
    }
  }
}

}  // namespace

cudaError_t AddRmsNorm(float* x, const GemmOutput& delta, const float* weight, int rows, int cols,
                       float eps, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // Short rows of work per thread: at batch 1 a single block does the whole row.
  if (cols % 4 == 0) {
    if (!Aligned16(delta)) return cudaErrorInvalidValue;
    const int threads = cols >= 4096 ? 512 : cols >= 1024 ? 256 : 128;
    return LaunchDependent(AddRmsNormKernel<4>, rows, threads, 0, stream, x, delta, weight, cols, eps, out);
  }
  const int threads = cols >= 4096 ? 1024 : cols >= 1024 ? 512 : 128;
  return LaunchDependent(AddRmsNormKernel<1>, rows, threads, 0, stream, x, delta, weight, cols, eps, out);
}

}  // namespace lizard::kernels
