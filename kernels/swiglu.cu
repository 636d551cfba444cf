// SwiGLU of the fused gate|up projection: out = silu(gate) * up, in bf16 for the down GEMM.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

// grid (column blocks, rows): enough blocks to fill the GPU even for one row. Each thread does
// kWidth neighbouring columns (16-byte loads when inter % 4 == 0 keeps every row aligned).
// gate_up may be the GEMM's split partials (GemmOutput): added here, the reduce kernel is not run.
template <int kWidth>
__global__ void SwiGluKernel(GemmOutput gate_up, int inter, __nv_bfloat16* out) {
  WaitForPrevious();
  const int64_t row = static_cast<int64_t>(blockIdx.y) * 2 * inter;
  __nv_bfloat16* o = out + static_cast<int64_t>(blockIdx.y) * inter;
  const int i = (blockIdx.x * blockDim.x + threadIdx.x) * kWidth;
  if (i >= inter) return;
  float x[kWidth], u[kWidth];
  LoadGemmOutput<kWidth>(gate_up, row + i, i, x);
  LoadGemmOutput<kWidth>(gate_up, row + inter + i, inter + i, u);
  __nv_bfloat16 y[kWidth];
#pragma unroll
  for (int k = 0; k < kWidth; ++k) y[k] = __float2bfloat16(x[k] / (1.f + __expf(-x[k])) * u[k]);
  if constexpr (kWidth == 4) {
    *reinterpret_cast<uint2*>(o + i) = *reinterpret_cast<const uint2*>(y);
  } else {
    o[i] = y[0];
  }
}

}  // namespace

cudaError_t SwiGlu(const GemmOutput& gate_up, int rows, int inter, __nv_bfloat16* out,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  if (inter % 4 == 0) {
    if (!Aligned16(gate_up)) return cudaErrorInvalidValue;
    return LaunchDependent(SwiGluKernel<4>, dim3(CeilDiv(inter / 4, kThreads), rows), kThreads, 0, stream, gate_up,
                           inter, out);
  }
  return LaunchDependent(SwiGluKernel<1>, dim3(CeilDiv(inter, kThreads), rows), kThreads, 0, stream, gate_up, inter,
                         out);
}

}  // namespace lizard::kernels
