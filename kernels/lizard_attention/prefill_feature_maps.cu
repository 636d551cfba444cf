// Feature maps of a step's prompt rows for the chunked prefill (chunked_prefill.h): one warp per
// (row, map), the Hedgehog softmaxes in registers, bf16 out. The same arithmetic as LizardWindow's
// HedgehogSoftmax (max and min, then the sums of __expf, then one division per value), with warp
// instead of block reductions.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/chunked_prefill.h"

namespace lizard::kernels {
namespace {

constexpr int kMaxPerLane = 4;  // F <= 32 * kMaxPerLane
constexpr int kWarpsPerBlock = 8;

// Map i of row r: i < H is the q map of head i, else the k map of head i - H.
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    PrefillFeatureMapsKernel(int H, int F, int64_t maps, const float* logits, const float* q_bias,
                             const float* k_bias, __nv_bfloat16* fq, __nv_bfloat16* fk) {
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (m >= maps) return;  // whole warps
  const int lane = threadIdx.x & 31;
  const int64_t r = m / (2 * H);
  const int i = static_cast<int>(m % (2 * H));
  const bool key = i >= H;
  const int h = key ? i - H : i;
  const float* a = logits + r * 2 * H * F + static_cast<int64_t>(i) * F;  // [q heads | k heads]
  const float* bias = key ? k_bias : q_bias;
  __nv_bfloat16* out = (key ? fk : fq) + (r * H + h) * 2 * F;

  float x[kMaxPerLane];
  float mx = -INFINITY, neg_mn = -INFINITY;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int f = lane + 32 * e;
    x[e] = f < F ? a[f] + (bias != nullptr ? bias[h * F + f] : 0.f) : 0.f;
    if (f < F) mx = fmaxf(mx, x[e]), neg_mn = fmaxf(neg_mn, -x[e]);
  }
  mx = WarpMax(mx);
  const float mn = -WarpMax(neg_mn);
  float sp = 0.f, sm = 0.f;
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    if (lane + 32 * e < F) sp += __expf(x[e] - mx), sm += __expf(mn - x[e]);
  }
  sp = WarpSum(sp);
  sm = WarpSum(sm);
#pragma unroll
  for (int e = 0; e < kMaxPerLane; ++e) {
    const int f = lane + 32 * e;
    if (f < F) {
      out[f] = __float2bfloat16(__expf(x[e] - mx) / sp);
      out[F + f] = __float2bfloat16(__expf(mn - x[e]) / sm);
    }
  }
}

}  // namespace

cudaError_t LizardPrefillFeatureMaps(const LizardDims& dims, const LizardParams& params, int rows,
                                     __nv_bfloat16* fq, __nv_bfloat16* fk, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (dims.features > 32 * kMaxPerLane) return cudaErrorInvalidValue;
  const int64_t maps = static_cast<int64_t>(rows) * 2 * dims.heads;
  PrefillFeatureMapsKernel<<<CeilDiv(maps, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(
      dims.heads, dims.features, maps, params.fmap_logits, params.fmap_q_bias, params.fmap_k_bias, fq, fk);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
