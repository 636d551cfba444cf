// Embedding lookup (bf16 table -> float32 residual stream) and bf16 row gather.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

template <typename Out>
__global__ void GatherRowsKernel(const __nv_bfloat16* table, const int32_t* ids, int cols, Out* out) {
  WaitForPrevious();
  const int64_t src = static_cast<int64_t>(ids[blockIdx.x]) * cols;
  const int64_t dst = static_cast<int64_t>(blockIdx.x) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) Store(out, dst + c, Load(table, src + c));
}

}  // namespace

cudaError_t EmbeddingGather(const __nv_bfloat16* table, const int32_t* ids, int n, int cols,
                            float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return LaunchDependent(GatherRowsKernel<float>, n, 256, 0, stream, table, ids, cols, out);
}

cudaError_t GatherRowsBf16(const __nv_bfloat16* src, const int32_t* ids, int n, int cols,
                           __nv_bfloat16* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return LaunchDependent(GatherRowsKernel<__nv_bfloat16>, n, 256, 0, stream, src, ids, cols, out);
}

}  // namespace lizard::kernels
