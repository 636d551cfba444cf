// The recurrent half of a Lizard attention layer: S = gamma S + fk v^T and the readout
// y_gate = fq S / den. Following the recurrent decode kernels of vLLM/SGLang, each block holds
// the whole reduction dimension (all 2F rows of S) and a slice of 32 value columns, so the
// readout reduces inside the block; the slice lives in registers across the sequence's tokens.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {
namespace {

constexpr int kWarps = 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kSlice = 32;                    // value columns per block (one per lane)
constexpr int kMaxRows = 256;                 // 2F
constexpr int kRowsPerThread = kMaxRows / kWarps;
constexpr int kTile = 8;                      // tokens per round (<= kWarps)

template <typename TS>
__global__ void __launch_bounds__(kThreads, 2) LizardStateKernel(LizardDims dims, const float* qkvg,
                                                              int ld, SeqMeta seqs,
                                                              LizardStateRef state,
                                                              LizardScratch scratch,
                                                              __nv_bfloat16* y) {
  // Grid (slices, H, seqs): consecutive blocks cover one head's S of one slot, together a
  // contiguous region (DRAM page and TLB locality).
  const int s = blockIdx.z, h = blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F2 = 2 * dims.features;
  const int g = h / (H / Hkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int col = blockIdx.x * kSlice + lane;
  const bool active = col < D;
  const int slot = seqs.slot[s], n = seqs.num_tokens[s], first_row = seqs.first_row[s];
  if (slot < 0) {  // padding: zero rows so the output projection sees no garbage
    if (warp == 0 && active) {
      for (int t = 0; t < n; ++t) y[static_cast<int64_t>(first_row + t) * H * D + h * D + col] = __float2bfloat16(0.f);
    }
    return;
  }

  // Tokens go in tiles of kTile: one round of loads and three barriers per tile, not per token.
  __shared__ float sfk[kTile][kMaxRows], sfq[kTile][kMaxRows], sgamma[kTile];
  __shared__ float part[kTile][kWarps][kSlice];
  TS* S = reinterpret_cast<TS*>(state.pool + slot * state.slot_bytes + state.s_offset) +
          static_cast<int64_t>(h) * F2 * D;
  float sr[kRowsPerThread];
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int row = warp + k * kWarps;
    sr[k] = (active && row < F2) ? Load(S, static_cast<int64_t>(row) * D + col) : 0.f;
  }

  for (int t0 = 0; t0 < n; t0 += kTile) {
    const int nt = min(kTile, n - t0);
    for (int i = threadIdx.x; i < nt * F2; i += kThreads) {
      const int64_t th = static_cast<int64_t>(first_row + t0 + i / F2) * H + h;
      sfk[i / F2][i % F2] = scratch.fk[th * F2 + i % F2];
      sfq[i / F2][i % F2] = scratch.fq[th * F2 + i % F2];
    }
    if (threadIdx.x < nt) sgamma[threadIdx.x] = scratch.gamma[static_cast<int64_t>(first_row + t0 + threadIdx.x) * H + h];
    float v[kTile];
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      v[t] = (active && t < nt) ? qkvg[static_cast<int64_t>(first_row + t0 + t) * ld + H * D + Hkv * D + g * D + col] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kTile; ++t) {
      if (t >= nt) break;
      const float gamma = sgamma[t];
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) {
        const int row = warp + k * kWarps;
        if (row < F2) {
          // Rounded as stored after every token: a chunk gives the bits of one-token steps.
          sr[k] = Rounded<TS>(fmaf(gamma, sr[k], sfk[t][row] * v[t]));
          acc = fmaf(sfq[t][row], sr[k], acc);
        }
      }
      part[t][warp][lane] = acc;
    }
    __syncthreads();
    // Warp t finishes token t of the tile.
    if (warp < nt && active) {
      const int r = first_row + t0 + warp;
      const int64_t th = static_cast<int64_t>(r) * H + h;
      float num = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) num += part[warp][w][lane];
      y[static_cast<int64_t>(r) * H * D + h * D + col] = __float2bfloat16(num / scratch.den[th] + scratch.y[th * D + col]);
    }
    __syncthreads();  // the tile's shared arrays are refilled next
  }

#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int row = warp + k * kWarps;
    if (active && row < F2) Store(S, static_cast<int64_t>(row) * D + col, sr[k]);
  }
}

}  // namespace

cudaError_t LizardState(const LizardDims& dims, const float* qkvg, int ld, const SeqMeta& seqs,
                        int num_seqs, const LizardStateRef& state, const LizardScratch& scratch,
                        __nv_bfloat16* y, cudaStream_t stream) {
  if (num_seqs == 0) return cudaSuccess;
  if (2 * dims.features > kMaxRows) return cudaErrorInvalidValue;
  const dim3 grid(CeilDiv(dims.head_dim, kSlice), dims.heads, num_seqs);
  if (state.state_type == StoreType::kF32) {
    LizardStateKernel<float><<<grid, kThreads, 0, stream>>>(dims, qkvg, ld, seqs, state, scratch, y);
  } else {
    LizardStateKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(dims, qkvg, ld, seqs, state, scratch, y);
  }
  return cudaGetLastError();
}

}  // namespace lizard::kernels
