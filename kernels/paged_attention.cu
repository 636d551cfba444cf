// Causal softmax attention over a paged KV cache, split over the keys (flash-decoding): each
// block runs an online softmax over its key range and leaves (max, sum, acc[D]); a second
// kernel merges the splits.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = 8;  // D <= 256

template <typename TW>
__global__ void __launch_bounds__(32 * kWarps) PagedAttentionSplitKernel(
    const float* q, int q_ld, const int32_t* slot, const int32_t* position, int heads, PagedKv kv,
    int keys_per_split, float* partial) {
  const int r = blockIdx.x, h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int D = kv.head_dim, g = h / (heads / kv.kv_heads);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* out = partial + ((static_cast<int64_t>(r) * heads + h) * splits + split) * (D + 2);
  const int s = slot[r];
  const int k0 = split * keys_per_split;
  const int k1 = s < 0 ? 0 : min(position[r] + 1, k0 + keys_per_split);

  float qr[kMaxPerLane], acc[kMaxPerLane];
  const float scale = rsqrtf(static_cast<float>(D));
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int d = lane + 32 * e;
    qr[e] = d < D ? q[static_cast<int64_t>(r) * q_ld + h * D + d] * scale : 0.f;
    acc[e] = 0.f;
  }
  float mx = -INFINITY, sum = 0.f;
  const int64_t stride = static_cast<int64_t>(kv.kv_heads) * D;
  for (int j = k0 + warp; j < k1; j += kWarps) {
    const int page = kv.page_table[static_cast<int64_t>(s) * kv.max_pages + j / kv.page_size];
    const int64_t base = (static_cast<int64_t>(page) * kv.page_size + j % kv.page_size) * stride + g * D;
    const TW* kj = static_cast<const TW*>(kv.k) + base;
    const TW* vj = static_cast<const TW*>(kv.v) + base;
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) dot += qr[e] * Load(kj, d);
    }
    dot = WarpSum(dot);
    const float mnew = fmaxf(mx, dot);
    const float corr = __expf(mx - mnew);  // 0 on the first key (mx = -inf)
    const float p = __expf(dot - mnew);
    sum = sum * corr + p;
#pragma unroll
    for (int e = 0; e < kMaxPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < D) acc[e] = acc[e] * corr + p * Load(vj, d);
    }
    mx = mnew;
  }

  // Merge the warps through shared memory.
  __shared__ float wm[kWarps], ws[kWarps];
  __shared__ float wacc[kWarps][32 * kMaxPerLane];
  if (lane == 0) wm[warp] = mx, ws[warp] = sum;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) wacc[warp][lane + 32 * e] = acc[e];
  __syncthreads();
  float M = -INFINITY;
  for (int i = 0; i < kWarps; ++i) M = fmaxf(M, wm[i]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int i = 0; i < kWarps; ++i) {
      if (wm[i] != -INFINITY) a += wacc[i][d] * __expf(wm[i] - M);  // empty warps add nothing
    }
    out[2 + d] = a;
  }
  if (threadIdx.x == 0) {
    float l = 0.f;
    for (int i = 0; i < kWarps; ++i) {
      if (wm[i] != -INFINITY) l += ws[i] * __expf(wm[i] - M);
    }
    out[0] = M;  // -inf for an empty split
    out[1] = l;
  }
}

__global__ void PagedAttentionMergeKernel(const float* partial, const int32_t* slot, int heads,
                                          int head_dim, int splits, __nv_bfloat16* out) {
  const int r = blockIdx.x, h = blockIdx.y, D = head_dim;
  __nv_bfloat16* o = out + static_cast<int64_t>(r) * heads * D + h * D;
  if (slot[r] < 0) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) o[d] = __float2bfloat16(0.f);
    return;
  }
  const float* p = partial + (static_cast<int64_t>(r) * heads + h) * splits * (D + 2);
  float M = -INFINITY;
  for (int i = 0; i < splits; ++i) M = fmaxf(M, p[i * (D + 2)]);  // split 0 holds key 0: finite
  float l = 0.f;
  for (int i = 0; i < splits; ++i) {
    const float m = p[i * (D + 2)];
    if (m != -INFINITY) l += p[i * (D + 2) + 1] * __expf(m - M);
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int i = 0; i < splits; ++i) {
      const float m = p[i * (D + 2)];
      if (m != -INFINITY) a += p[i * (D + 2) + 2 + d] * __expf(m - M);
    }
    o[d] = __float2bfloat16(a / l);
  }
}

}  // namespace

cudaError_t PagedAttention(const float* q, int q_ld, const int32_t* slot, const int32_t* position,
                           int T, int heads, int max_keys, const PagedKv& kv, float* partial,
                           int64_t partial_entries, __nv_bfloat16* out, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (kv.head_dim > 32 * kMaxPerLane) return cudaErrorInvalidValue;
  // Enough splits to give the GPU ~4096 blocks when the rows alone don't, at >= 256 keys each.
  const int64_t rows = static_cast<int64_t>(T) * heads;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(CeilDiv(max_keys, 256), CeilDiv(4096, rows)));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, partial_entries / rows));
  const int keys_per_split = CeilDiv(max_keys, splits);
  const dim3 grid(T, heads, static_cast<unsigned>(splits));
  if (kv.type == StoreType::kF32) {
    PagedAttentionSplitKernel<float><<<grid, 32 * kWarps, 0, stream>>>(q, q_ld, slot, position, heads, kv, keys_per_split, partial);
  } else {
    PagedAttentionSplitKernel<__nv_bfloat16><<<grid, 32 * kWarps, 0, stream>>>(q, q_ld, slot, position, heads, kv, keys_per_split, partial);
  }
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  PagedAttentionMergeKernel<<<dim3(T, heads), 128, 0, stream>>>(partial, slot, heads, kv.head_dim,
                                                                static_cast<int>(splits), out);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
