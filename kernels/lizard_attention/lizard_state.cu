// The recurrent half of a Lizard attention layer: S = gamma S + fk v^T and the readout
// y_gate = fq S / den. Following the recurrent decode kernels of vLLM/SGLang, each block holds
// the whole reduction dimension (all 2F rows of S) and a slice of value columns, so the
// readout reduces inside the block. LizardState keeps its slice in registers across a
// sequence's tokens; LizardDecodeState (one token per sequence) is built to stream S once at
// memory bandwidth.
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

// LizardDecodeState: a block of 256 threads owns all 2F rows of a 128-byte column slice of one
// head's S (32 fp32 or 64 bf16 columns). 8 threads cover a row's slice with 16-byte vectors and
// the 32 row groups of 8 take rows group, group + 32, ...: each thread keeps its 8 vectors in
// flight at once and the block moves 32 KiB; 3 resident blocks per SM (<= 80 registers, no
// spills) keep HBM busy.
constexpr int kDecodeThreads = 256;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kLanesPerRow = 8;
constexpr int kRowGroups = kDecodeThreads / kLanesPerRow;
constexpr int kDecodeRows = kMaxRows / kRowGroups;  // rows per thread

// 16 bytes of S as floats (4 fp32 or 8 bf16) and back.
template <typename TS>
constexpr int kVec = 16 / sizeof(TS);
template <typename TS>
__device__ __forceinline__ void Unpack(const uint4& raw, float (&x)[kVec<TS>]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(TS) == 4) {
      x[i] = __uint_as_float(w[i]);
    } else {  // the low half holds the lower column
      x[2 * i] = __uint_as_float(w[i] << 16);
      x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}
// x holds values already Rounded<TS>, so the bf16 packing only drops zero bits.
template <typename TS>
__device__ __forceinline__ uint4 Pack(const float (&x)[kVec<TS>]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(TS) == 4) {
      w[i] = __float_as_uint(x[i]);
    } else {
      w[i] = (__float_as_uint(x[2 * i]) >> 16) | (__float_as_uint(x[2 * i + 1]) & 0xffff0000u);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

template <typename TS>
__global__ void __launch_bounds__(kDecodeThreads, 3) LizardDecodeStateKernel(LizardDims dims, const float* qkvg,
                                                                           int ld, SeqMeta seqs,
                                                                           LizardStateRef state,
                                                                           LizardScratch scratch,
                                                                           __nv_bfloat16* y) {
  WaitForPrevious();
  constexpr int V = kVec<TS>, kSliceCols = kLanesPerRow * V;
  // Grid (slices, H, seqs) as LizardState's: a head's slices in consecutive blocks.
  const int s = blockIdx.z, h = blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F2 = 2 * dims.features;
  const int g = h / (H / Hkv);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, group = threadIdx.x / kLanesPerRow;
  const int col = (blockIdx.x * kLanesPerRow + threadIdx.x % kLanesPerRow) * V;  // D % V == 0
  const bool active = col < D;
  // Thread t < kSliceCols finishes column out_col of y.
  const int out_col = blockIdx.x * kSliceCols + threadIdx.x;
  const bool writes_y = threadIdx.x < kSliceCols && out_col < D;
  const int slot = seqs.slot[s];
  const int64_t th = static_cast<int64_t>(seqs.first_row[s]) * H + h;
  if (slot < 0) {  // padding: zero rows so the output projection sees no garbage
    if (writes_y) y[th * D + out_col] = __float2bfloat16(0.f);
    return;
  }

  // Every load before any use: the S vectors, then the small operands.
  TS* S = reinterpret_cast<TS*>(state.pool + slot * state.slot_bytes + state.s_offset) +
          static_cast<int64_t>(h) * F2 * D + col;
  uint4 raw[kDecodeRows];
#pragma unroll
  for (int k = 0; k < kDecodeRows; ++k) {
    const int row = group + k * kRowGroups;
    raw[k] = (active && row < F2) ? *reinterpret_cast<const uint4*>(S + static_cast<int64_t>(row) * D)
                                  : make_uint4(0, 0, 0, 0);
  }
  // fq and fk go through shared memory (registers are kept for the S vectors).
  __shared__ float sfq[kMaxRows], sfk[kMaxRows];
  if (threadIdx.x < F2) {
    sfq[threadIdx.x] = scratch.fq[th * F2 + threadIdx.x];
    sfk[threadIdx.x] = scratch.fk[th * F2 + threadIdx.x];
  }
  float v[V];
  const float* vrow = qkvg + static_cast<int64_t>(seqs.first_row[s]) * ld + H * D + Hkv * D + g * D + col;
#pragma unroll
  for (int i = 0; i < V; ++i) v[i] = active ? vrow[i] : 0.f;
  const float gamma = scratch.gamma[th];
  const float den = writes_y ? scratch.den[th] : 1.f;
  const float y_window = writes_y ? scratch.y[th * D + out_col] : 0.f;
  __syncthreads();

  // S' = gamma S + fk v^T as LizardState computes it (rounded as stored); the thread's part of
  // fq . S' over its rows in row order.
  float acc[V] = {};
#pragma unroll
  for (int k = 0; k < kDecodeRows; ++k) {
    const int row = group + k * kRowGroups;
    if (!active || row >= F2) continue;
    float x[V];
    Unpack<TS>(raw[k], x);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      x[i] = Rounded<TS>(fmaf(gamma, x[i], sfk[row] * v[i]));
      acc[i] = fmaf(sfq[row], x[i], acc[i]);
    }
    *reinterpret_cast<uint4*>(S + static_cast<int64_t>(row) * D) = Pack<TS>(x);
  }

  // Readout in a fixed order: the 4 row groups of a warp by butterfly (the same sum in every
  // lane), then the warps in order through shared memory.
  __shared__ float part[kDecodeWarps][kLanesPerRow * kVec<__nv_bfloat16>];
#pragma unroll
  for (int i = 0; i < V; ++i) {
    acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 8);
    acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 16);
    if (lane < kLanesPerRow) part[warp][lane * V + i] = acc[i];
  }
  __syncthreads();
  if (writes_y) {
    float num = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) num += part[w][threadIdx.x];
    y[th * D + out_col] = __float2bfloat16(num / den + y_window);
  }
}

template <typename TS>
cudaError_t LaunchDecodeState(const LizardDims& dims, const float* qkvg, int ld, const SeqMeta& seqs,
                              int num_seqs, const LizardStateRef& state, const LizardScratch& scratch,
                              __nv_bfloat16* y, cudaStream_t stream) {
  const dim3 grid(CeilDiv(dims.head_dim, kLanesPerRow * kVec<TS>), dims.heads, num_seqs);
  return LaunchDependent(LizardDecodeStateKernel<TS>, grid, kDecodeThreads, 0, stream, dims, qkvg, ld, seqs, state,
                         scratch, y);
}

}  // namespace

cudaError_t LizardDecodeState(const LizardDims& dims, const float* qkvg, int ld, const SeqMeta& seqs,
                              int num_seqs, const LizardStateRef& state, const LizardScratch& scratch,
                              __nv_bfloat16* y, cudaStream_t stream) {
  if (num_seqs == 0) return cudaSuccess;
  if (2 * dims.features > kMaxRows) return cudaErrorInvalidValue;
  // 16-byte vectors need S rows that split into whole vectors at 16-byte addresses.
  const bool f32 = state.state_type == StoreType::kF32;
  const int vec = f32 ? kVec<float> : kVec<__nv_bfloat16>;
  const bool aligned = (reinterpret_cast<uintptr_t>(state.pool) | state.slot_bytes | state.s_offset) % 16 == 0;
  if (dims.head_dim % vec != 0 || !aligned) {
    return LizardState(dims, qkvg, ld, seqs, num_seqs, state, scratch, y, stream);
  }
  return f32 ? LaunchDecodeState<float>(dims, qkvg, ld, seqs, num_seqs, state, scratch, y, stream)
             : LaunchDecodeState<__nv_bfloat16>(dims, qkvg, ld, seqs, num_seqs, state, scratch, y, stream);
}

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
