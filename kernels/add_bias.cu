// Bias add on the float32 output rows of a GEMM (checkpoints with q/k/v/o biases).
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

// grid (column blocks, rows)
__global__ void AddBiasKernel(float* y, int ld, const float* bias, int cols) {
  WaitForPrevious();
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < cols) y[static_cast<int64_t>(blockIdx.y) * ld + c] += bias[c];
}

}  // namespace

cudaError_t AddBias(float* y, int ld, const float* bias, int rows, int cols, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return LaunchDependent(AddBiasKernel, dim3(CeilDiv(cols, 256), rows), 256, 0, stream, y, ld, bias, cols);
}

}  // namespace lizard::kernels
