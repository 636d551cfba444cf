// The normaliser z of gated linear attention for sequences with several tokens in a step (prefill
// chunks): z_t = gamma_t z_{t-1} + fk_t and den_t = fq_t . z_t + 1e-6, token by token, with z held
// in registers for the whole chunk (rounded as stored after every token). Decode tokens were
// handled inside LizardWindow with the same NormalizerStep, so any chunking gives the same bits.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {
namespace {

constexpr int kThreads = kNormalizerThreads;  // the order NormalizerStep fixes
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPerThread = 2;  // 2F <= 256
constexpr int kTile = 8;          // tokens whose denominators are reduced together

template <typename TS>
__global__ void __launch_bounds__(kThreads) LizardNormalizerKernel(LizardDims dims, SeqMeta seqs,
                                                                   LizardStateRef state,
                                                                   LizardScratch scratch) {
  const int h = blockIdx.x, s = blockIdx.y;
  const int slot = seqs.slot[s], n = seqs.num_tokens[s], first_row = seqs.first_row[s];
  if (slot < 0 || n <= 1) return;
  const int H = dims.heads, F2 = 2 * dims.features;
  __shared__ float red[kTile * kWarps];
  TS* z = reinterpret_cast<TS*>(state.pool + slot * state.slot_bytes + state.z_offset) +
          static_cast<int64_t>(h) * F2;
  float zr[kMaxPerThread];
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int f = threadIdx.x + k * kThreads;
    zr[k] = f < F2 ? Load(z, f) : 0.f;
  }
  // Tokens in tiles of kTile: the tile's denominators are reduced together.
  for (int t0 = 0; t0 < n; t0 += kTile) {
    const int nt = min(kTile, n - t0);
    float part[kTile];
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      part[t] = 0.f;
      if (t >= nt) continue;
      const int64_t th = static_cast<int64_t>(first_row + t0 + t) * H + h;
      part[t] = NormalizerStep<TS>(zr, scratch.gamma[th], scratch.fk + th * F2, scratch.fq + th * F2, F2);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int t = 0; t < kTile; ++t) part[t] = WarpSum(part[t]);
    __syncthreads();  // red is still read by the previous tile
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < kTile; ++t) red[t * kWarps + warp] = part[t];
    }
    __syncthreads();
    if (threadIdx.x < nt) {
      scratch.den[static_cast<int64_t>(first_row + t0 + threadIdx.x) * H + h] =
          NormalizerDenominator(red + threadIdx.x * kWarps, dims.normalize);
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxPerThread; ++k) {
    const int f = threadIdx.x + k * kThreads;
    if (f < F2) Store(z, f, zr[k]);
  }
}

}  // namespace

cudaError_t LizardNormalizer(const LizardDims& dims, const SeqMeta& seqs, int num_seqs,
                             const LizardStateRef& state, const LizardScratch& scratch,
                             cudaStream_t stream) {
  if (num_seqs == 0) return cudaSuccess;
  if (2 * dims.features > kThreads * kMaxPerThread) return cudaErrorInvalidValue;
  const dim3 grid(dims.heads, num_seqs);
  if (state.state_type == StoreType::kF32) {
    LizardNormalizerKernel<float><<<grid, kThreads, 0, stream>>>(dims, seqs, state, scratch);
  } else {
    LizardNormalizerKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(dims, seqs, state, scratch);
  }
  return cudaGetLastError();
}

}  // namespace lizard::kernels
