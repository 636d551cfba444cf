// Softmax layers' KV cache: writes each token's key (after RoPE) and value into its slot's page.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

template <typename TW>
__global__ void PagedKvWriteKernel(const float* krot, int krot_ld, const float* v, int v_ld,
                                   const int32_t* slot, const int32_t* position, PagedKv kv) {
  const int r = blockIdx.x;
  const int s = slot[r];
  if (s < 0) return;
  const int pos = position[r];
  const int page = kv.page_table[static_cast<int64_t>(s) * kv.max_pages + pos / kv.page_size];
  const int n = kv.kv_heads * kv.head_dim;
  const int64_t base = (static_cast<int64_t>(page) * kv.page_size + pos % kv.page_size) * n;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    Store(static_cast<TW*>(kv.k), base + i, krot[static_cast<int64_t>(r) * krot_ld + i]);
    Store(static_cast<TW*>(kv.v), base + i, v[static_cast<int64_t>(r) * v_ld + i]);
  }
}

}  // namespace

cudaError_t PagedKvWrite(const float* krot, int krot_ld, const float* v, int v_ld,
                         const int32_t* slot, const int32_t* position, int T, const PagedKv& kv,
                         cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (kv.type == StoreType::kF32) {
    PagedKvWriteKernel<float><<<T, 256, 0, stream>>>(krot, krot_ld, v, v_ld, slot, position, kv);
  } else {
    PagedKvWriteKernel<__nv_bfloat16><<<T, 256, 0, stream>>>(krot, krot_ld, v, v_ld, slot, position, kv);
  }
  return cudaGetLastError();
}

}  // namespace lizard::kernels
