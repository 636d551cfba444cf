// The token-parallel half of a Lizard attention layer for decode rows (one token per sequence),
// the same outputs as LizardWindow with `single` set: one block per (token, kv head) serves the
// G = H / Hkv query heads of the group, one warp per query head. The group's K/V ring rows are
// copied into shared memory once (asynchronous 16-byte copies, issued first so they overlap the
// rest of the setup) and read by all G warps; every reduction is a warp shuffle, so the block
// has a single barrier. LizardWindow needed ~15 barriers per (token, head) block and read the
// ring once per query head; at decode sizes the kernel is latency-bound, so that is what counts.
#include <cuda_pipeline.h>

#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/lizard_attention/lizard_device.cuh"

namespace lizard::kernels {
namespace {

constexpr int kMaxWarps = 16;  // one per query head of the group (more: LizardWindow runs)
constexpr int kKeysPerLane = 4;  // ring keys a lane scores at once

// kVec ring elements copied and read as one unit: 16 bytes when the ring rows allow it, else a pair.
template <typename TW, int kVec>
struct alignas(kVec * sizeof(TW)) RingVec {
  TW v[kVec];
};

// The block's shared memory, byte offsets. Staged ring rows are padded to an odd number of
// vectors: in the score loop each lane reads its own key's row, and an odd stride puts the rows
// of a (quarter-, half-) warp in distinct banks.
struct DecodeLayout {
  int row_bytes, k, v, own_k, own_v, q, scores, sinks, total;
};

template <typename TW, int kVec>
__host__ __device__ DecodeLayout MakeLayout(const LizardDims& dims) {
  const int vecs = dims.head_dim / kVec, G = dims.heads / dims.kv_heads;
  DecodeLayout l;
  l.row_bytes = (vecs + (vecs % 2 == 0 ? 1 : 0)) * static_cast<int>(sizeof(RingVec<TW, kVec>));
  l.k = 0;
  l.v = l.k + dims.window * l.row_bytes;
  l.own_k = (l.v + dims.window * l.row_bytes + 15) / 16 * 16;        // [D] the token's key (fp32)
  l.own_v = l.own_k + 4 * dims.head_dim;                             // [D] its value
  l.q = l.own_v + 4 * dims.head_dim;                                 // [G, D] queries after RoPE
  l.scores = l.q + 4 * G * dims.head_dim;                            // [G, w] scores, then exps
  l.sinks = l.scores + 4 * G * dims.window;                          // [G, m] meta logits
  l.total = l.sinks + 4 * G * dims.meta;
  return l;
}

// At most 128 registers, so kMaxWarps warps fit an SM (__launch_bounds__ made ptxas spill at 64).
template <typename TS, typename TW, int kVec>
__global__ void __maxnreg__(65536 / (32 * kMaxWarps)) LizardDecodeWindowKernel(
    LizardDims dims, const float* qkvg, int ld, const float* krot, int krot_ld, const double* inv_freq,
    TokenMeta tokens, int row0, LizardParams params, LizardStateRef state, LizardScratch scratch) {
  using Vec = RingVec<TW, kVec>;
  // The weighted sum reads kPv values per lane and key (8 bytes; the pair layout: a pair), so
  // 32 lanes cover D = 128 in one bf16 row; kMaxChunks chunks per lane for D <= 256.
  constexpr int kPv = kVec >= 4 ? kVec / 2 : 2;
  constexpr int kMaxChunks = 256 / (32 * kPv);
  // Grid (Hkv, rows): consecutive blocks work on the same token, so on the same slot's memory.
  const int g = blockIdx.x, r = row0 + blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F = dims.features;
  const int w = dims.window, m = dims.meta, F2 = 2 * F, G = H / Hkv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, h = g * G + warp;
  const int64_t th = static_cast<int64_t>(r) * H + h;  // (token, head) index
  float* y = scratch.y + th * D;

  const int slot = tokens.slot[r];
  if (slot < 0) {  // padding row: each warp zeroes its head
    for (int d = lane; d < D; d += 32) y[d] = 0.f;
    for (int f = lane; f < F2; f += 32) scratch.fq[th * F2 + f] = scratch.fk[th * F2 + f] = 0.f;
    if (lane == 0) scratch.gamma[th] = 0.f, scratch.den[th] = 1.f;
    return;
  }
  const int pos = tokens.position[r];
  const int lo = max(0, pos - w + 1), nkeys = pos - lo + 1;  // window lo..pos, pos the token's own

  extern __shared__ __align__(16) char smem[];
  const DecodeLayout L = MakeLayout<TW, kVec>(dims);

  // Ring rows of positions lo..pos-1 (row j % w): rows 0..pos-1 while the ring fills, then all
  // (the extra one, pos % w, holds position pos - w and is not read).
  TW* ring_k = SlotPart<TW>(state, slot, state.k_offset) + static_cast<int64_t>(g) * w * D;
  TW* ring_v = SlotPart<TW>(state, slot, state.v_offset) + static_cast<int64_t>(g) * w * D;
  const int vecs = D / kVec;
  for (int i = threadIdx.x; i < min(pos, w) * vecs; i += blockDim.x) {
    const int row = i / vecs, c = i % vecs;
    const int64_t from = static_cast<int64_t>(row) * D + c * kVec;
    const int to = row * L.row_bytes + c * static_cast<int>(sizeof(Vec));
    __pipeline_memcpy_async(smem + L.k + to, ring_k + from, sizeof(Vec));
    __pipeline_memcpy_async(smem + L.v + to, ring_v + from, sizeof(Vec));
  }
  __pipeline_commit();

  // The token's own key and value (fp32, unrounded, as a decode step sees them).
  const float* row = qkvg + static_cast<int64_t>(r) * ld;
  const float* kown = krot + static_cast<int64_t>(r) * krot_ld + g * D;
  const float* vown = row + H * D + Hkv * D + g * D;
  float* own_k = reinterpret_cast<float*>(smem + L.own_k);
  float* own_v = reinterpret_cast<float*>(smem + L.own_v);
  for (int d = threadIdx.x; d < D; d += blockDim.x) own_k[d] = kown[d], own_v[d] = vown[d];

  // This warp's query after RoPE (angles reduced in double, as the CPU reference), and sinks.
  float* q = reinterpret_cast<float*>(smem + L.q) + warp * D;
  const int half = D / 2;
  for (int i = lane; i < half; i += 32) {
    const float a = row[h * D + i], b = row[h * D + i + half];
    float c = 1.f, s = 0.f;
    if (dims.window_rope) {
      const double angle = fmod(static_cast<double>(pos) * inv_freq[i], 2.0 * 3.14159265358979323846);
      sincosf(static_cast<float>(angle), &s, &c);
    }
    q[i] = a * c - b * s;
    q[i + half] = b * c + a * s;
  }
  float* sinks = reinterpret_cast<float*>(smem + L.sinks) + warp * m;
  for (int i = lane; i < m; i += 32) sinks[i] = params.meta_logits[static_cast<int64_t>(h) * m + i];

  // Feature maps (RoPE-free, from the precomputed logits + bias): lane holds features f and F + f
  // for f = lane + 32 e, of fq, fk and z alike.
  const float* logits = params.fmap_logits + static_cast<int64_t>(r) * 2 * H * F + h * F;
  float aq[kHedgehogPerLane], ak[kHedgehogPerLane], zp[kHedgehogPerLane], zn[kHedgehogPerLane];
  TS* z = SlotPart<TS>(state, slot, state.z_offset) + static_cast<int64_t>(h) * F2;
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    const int f = lane + 32 * e;
    aq[e] = ak[e] = zp[e] = zn[e] = 0.f;
    if (f < F) {
      aq[e] = logits[f] + (params.fmap_q_bias ? params.fmap_q_bias[h * F + f] : 0.f);
      ak[e] = logits[H * F + f] + (params.fmap_k_bias ? params.fmap_k_bias[h * F + f] : 0.f);
      zp[e] = Load(z, f);
      zn[e] = Load(z, F + f);
    }
  }
  const float gamma = 1.f / (1.f + __expf(-row[H * D + 2 * Hkv * D + h]));
  float fqp[kHedgehogPerLane], fqn[kHedgehogPerLane], fkp[kHedgehogPerLane], fkn[kHedgehogPerLane];
  WarpHedgehogSoftmax(aq, F, fqp, fqn);
  WarpHedgehogSoftmax(ak, F, fkp, fkn);

  // z = gamma z + fk (rounded as stored), then the readout denominator fq . z + 1e-6.
  float part = 0.f;
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    const int f = lane + 32 * e;
    if (f < F) {
      scratch.fq[th * F2 + f] = fqp[e], scratch.fq[th * F2 + F + f] = fqn[e];
      scratch.fk[th * F2 + f] = fkp[e], scratch.fk[th * F2 + F + f] = fkn[e];
      zp[e] = Rounded<TS>(fmaf(gamma, zp[e], fkp[e]));
      zn[e] = Rounded<TS>(fmaf(gamma, zn[e], fkn[e]));
      Store(z, f, zp[e]);
      Store(z, F + f, zn[e]);
      part = fmaf(fqn[e], zn[e], fmaf(fqp[e], zp[e], part));
    }
  }
  part = WarpSum(part);
  if (lane == 0) scratch.gamma[th] = gamma, scratch.den[th] = dims.normalize ? part + 1e-6f : 1.f;

  __pipeline_wait_prior(0);
  __syncthreads();  // the ring rows, own key and value, queries are in shared memory

  // The token's K/V go to ring row pos % w (position pos - w: outside this window, and no other
  // block reads this slot's ring in the step). The block's copies of the ring are complete.
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    Store(ring_k, static_cast<int64_t>(pos % w) * D + d, own_k[d]);
    Store(ring_v, static_cast<int64_t>(pos % w) * D + d, own_v[d]);
  }

  // Scores of the ring keys: a lane per key, kKeysPerLane keys at once (independent chains; the
  // query is loaded once for them), each dot product in d order. The own key's score in a warp
  // reduction. The sinks join the max and the sum only.
  const float scale = rsqrtf(static_cast<float>(D));
  float* sc = reinterpret_cast<float*>(smem + L.scores) + warp * w;
  const int nring = nkeys - 1;
  float mx = -INFINITY;
  for (int base = 0; base < nring; base += 32 * kKeysPerLane) {
    const Vec* key[kKeysPerLane];
    float dot[kKeysPerLane];
#pragma unroll
    for (int u = 0; u < kKeysPerLane; ++u) {
      const int kk = min(base + lane + 32 * u, nring - 1);  // past the end: a copy, not stored
      key[u] = reinterpret_cast<const Vec*>(smem + L.k + ((lo + kk) % w) * L.row_bytes);
      dot[u] = 0.f;
    }
    for (int c = 0; c < vecs; ++c) {
      // The query in float4 (or float2) broadcasts: D % kVec == 0 keeps them aligned.
      float qc[kVec];
      if constexpr (kVec % 4 == 0) {
#pragma unroll
        for (int e = 0; e < kVec; e += 4) {
          const float4 qq = *reinterpret_cast<const float4*>(q + c * kVec + e);
          qc[e] = qq.x, qc[e + 1] = qq.y, qc[e + 2] = qq.z, qc[e + 3] = qq.w;
        }
      } else {
        const float2 qq = *reinterpret_cast<const float2*>(q + c * kVec);
        qc[0] = qq.x, qc[1] = qq.y;
      }
#pragma unroll
      for (int u = 0; u < kKeysPerLane; ++u) {
        const Vec x = key[u][c];
#pragma unroll
        for (int e = 0; e < kVec; ++e) dot[u] = fmaf(qc[e], Load(x.v, e), dot[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kKeysPerLane; ++u) {
      const int kk = base + lane + 32 * u;
      if (kk < nring) {
        sc[kk] = dot[u] * scale;
        mx = fmaxf(mx, dot[u] * scale);
      }
    }
  }
  float own = 0.f;
  for (int d = lane; d < D; d += 32) own = fmaf(q[d], own_k[d], own);
  own = WarpSum(own) * scale;
  for (int i = lane; i < m; i += 32) mx = fmaxf(mx, sinks[i]);
  mx = fmaxf(WarpMax(mx), own);  // finite: the token's own key is always in the window
  float sum = 0.f;
  for (int kk = lane; kk < nring; kk += 32) {
    const float p = __expf(sc[kk] - mx);
    sc[kk] = p;
    sum += p;
  }
  for (int i = lane; i < m; i += 32) sum += __expf(sinks[i] - mx);
  const float p_own = __expf(own - mx);
  sum = WarpSum(sum) + p_own;
  __syncwarp();  // every lane reads every key's weight below

  // y = window_factor * sum_j p_j v_j / sum, keys in order: lane holds value columns
  // kPv c .. kPv c + kPv - 1 for c = lane + 32 i.
  using PvVec = RingVec<TW, kPv>;
  const int chunks = D / kPv;
  float acc[kMaxChunks][kPv];
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
#pragma unroll
    for (int e = 0; e < kPv; ++e) acc[i][e] = 0.f;
  }
  int ring_row = lo % w;
#pragma unroll 4
  for (int kk = 0; kk < nring; ++kk) {
    const float p = sc[kk];
    const PvVec* val = reinterpret_cast<const PvVec*>(smem + L.v + ring_row * L.row_bytes);
#pragma unroll
    for (int i = 0; i < kMaxChunks; ++i) {
      if (lane + 32 * i < chunks) {
        const PvVec x = val[lane + 32 * i];
#pragma unroll
        for (int e = 0; e < kPv; ++e) acc[i][e] = fmaf(p, Load(x.v, e), acc[i][e]);
      }
    }
    ring_row = ring_row + 1 == w ? 0 : ring_row + 1;
  }
  const float factor = params.window_factor[h] / sum;
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
    if (lane + 32 * i < chunks) {
#pragma unroll
      for (int e = 0; e < kPv; ++e) {
        const int d = (lane + 32 * i) * kPv + e;
        y[d] = factor * fmaf(p_own, own_v[d], acc[i][e]);
      }
    }
  }
}

// Whether a block fits the device: a window too long for one block's shared memory (or more
// than kMaxWarps query heads per kv head) runs LizardWindow, whose bits depend on the model only too.
bool Fits(const LizardDims& dims, int shmem) {
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  return dims.heads / dims.kv_heads <= kMaxWarps && shmem <= limit;
}

template <typename TS, typename TW, int kVec>
cudaError_t Launch(const LizardDims& dims, const float* qkvg, int ld, const float* krot, int krot_ld,
                   const double* inv_freq, const TokenMeta& tokens, int row0, int rows,
                   const LizardParams& params, const LizardStateRef& state, const LizardScratch& scratch,
                   cudaStream_t stream) {
  const int shmem = MakeLayout<TW, kVec>(dims).total;
  if (!Fits(dims, shmem)) {
    return LizardWindow(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state, scratch, stream);
  }
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(LizardDecodeWindowKernel<TS, TW, kVec>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, shmem);
    if (e != cudaSuccess) return e;
  }
  LizardDecodeWindowKernel<TS, TW, kVec><<<dim3(dims.kv_heads, rows), 32 * (dims.heads / dims.kv_heads), shmem,
                                           stream>>>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0,
                                                     params, state, scratch);
  return cudaGetLastError();
}

// 16-byte ring copies when every ring row starts on 16 bytes, else one column pair at a time.
template <typename TS, typename TW>
cudaError_t LaunchVec(const LizardDims& dims, const float* qkvg, int ld, const float* krot, int krot_ld,
                      const double* inv_freq, const TokenMeta& tokens, int row0, int rows,
                      const LizardParams& params, const LizardStateRef& state, const LizardScratch& scratch,
                      cudaStream_t stream) {
  constexpr int kVec16 = 16 / sizeof(TW);
  const bool aligned = dims.head_dim % kVec16 == 0 && reinterpret_cast<uintptr_t>(state.pool) % 16 == 0 &&
                       state.slot_bytes % 16 == 0 && state.k_offset % 16 == 0 && state.v_offset % 16 == 0;
  if (aligned) {
    return Launch<TS, TW, kVec16>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state,
                                  scratch, stream);
  }
  return Launch<TS, TW, 2>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state, scratch,
                           stream);
}

}  // namespace

cudaError_t LizardDecodeWindow(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                               int krot_ld, const double* inv_freq, const TokenMeta& tokens, int row0,
                               int rows, const LizardParams& params, const LizardStateRef& state,
                               const LizardScratch& scratch, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return WithStoreTypes(state, [&](auto ts, auto tw) {
    return LaunchVec<decltype(ts), decltype(tw)>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows,
                                                 params, state, scratch, stream);
  });
}

}  // namespace lizard::kernels
