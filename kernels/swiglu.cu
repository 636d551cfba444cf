// SwiGLU of the fused gate|up projection: out = silu(gate) * up, in bf16 for the down GEMM.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

// grid (column blocks, rows): enough blocks to fill the GPU even for one row.
__global__ void SwiGluKernel(const float* gate_up, int inter, __nv_bfloat16* out) {
  const float* g = gate_up + static_cast<int64_t>(blockIdx.y) * 2 * inter;
  __nv_bfloat16* o = out + static_cast<int64_t>(blockIdx.y) * inter;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < inter) {
    const float x = g[i];
    o[i] = __float2bfloat16(x / (1.f + __expf(-x)) * g[inter + i]);
  }
}

}  // namespace

cudaError_t SwiGlu(const float* gate_up, int rows, int inter, __nv_bfloat16* out,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  SwiGluKernel<<<dim3(CeilDiv(inter, 256), rows), 256, 0, stream>>>(gate_up, inter, out);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
