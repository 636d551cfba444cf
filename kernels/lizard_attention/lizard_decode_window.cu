// The token-parallel half of a Lizard attention layer for decode rows (one token per sequence),
// the same outputs as LizardWindow with `single` set: one block per (token, kv head) serves the
// G = H / Hkv query heads of the group with KS = KeySplits(G) warps per query head, each taking
// a fixed set of 32-key stripes of the window. The work is latency-bound, so the kernel is laid out
// to wait on memory twice: every load that needs neither the slot nor the position (query, own
// key and value, feature-map logits, biases, gate, sinks, window factor) is issued together with
// the slot and position; then the group's K/V ring rows (asynchronous 16-byte copies into shared
// memory, read by all the group's warps) and z. The split warps of a head share the max over the
// whole window, so each key's weight is the same as with one warp; their sums and weighted values
// are added in split order through shared memory. KS depends only on the model's shape, so a
// row's bits do not depend on what shares the step. LizardWindow needed ~15 barriers per (token,
// head) block and read the ring once per query head.
#include <cuda_pipeline.h>

#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/lizard_attention/lizard_device.cuh"

namespace lizard::kernels {
namespace {

constexpr int kMaxWarps = 8;        // per block: G <= 8 query heads per kv head (more: LizardWindow runs)
constexpr int kMaxMeta = 32;        // sinks, one per lane (more: LizardWindow runs)
constexpr int kMaxHeadDim = 256;    // register arrays below (more: LizardWindow runs)
constexpr int kKeysPerLane = 2;     // ring keys a lane scores at once
constexpr int kMaxHalf = kMaxHeadDim / 2 / 32;  // RoPE pairs (i, i + D/2) per lane

// Warps per query head: as many as fill kMaxWarps warps, from the shape alone.
__host__ __device__ inline int KeySplits(int G) { return G >= kMaxWarps ? 1 : kMaxWarps / G; }

// kVec ring elements copied and read as one unit: 16 bytes when the ring rows allow it, else a pair.
template <typename TW, int kVec>
struct alignas(kVec * sizeof(TW)) RingVec {
  TW v[kVec];
};

// The block's shared memory, byte offsets. Staged ring rows are padded to an odd number of
// vectors: in the score loop each lane reads its own key's row, and an odd stride puts the rows
// of a (quarter-, half-) warp in distinct banks. The splits' weighted values reuse the staged
// keys' space (no key is read after the scores), which keeps 3 blocks per SM at llama3-8b's shape.
struct DecodeLayout {
  int row_bytes, k, part_acc, v, q, scores, part_max, part_sum, total;
};

template <typename TW, int kVec>
__host__ __device__ DecodeLayout MakeLayout(const LizardDims& dims) {
  const int vecs = dims.head_dim / kVec, G = dims.heads / dims.kv_heads, KS = KeySplits(G);
  DecodeLayout l;
  l.row_bytes = (vecs + (vecs % 2 == 0 ? 1 : 0)) * static_cast<int>(sizeof(RingVec<TW, kVec>));
  l.k = 0;
  l.part_acc = 0;                                                    // [G, KS, D] per split warp
  const int keys_bytes = dims.window * l.row_bytes, acc_bytes = 4 * G * KS * dims.head_dim;
  l.v = ((keys_bytes > acc_bytes ? keys_bytes : acc_bytes) + 15) / 16 * 16;
  l.q = (l.v + dims.window * l.row_bytes + 15) / 16 * 16;            // [G, D] queries after RoPE
  l.scores = l.q + 4 * G * dims.head_dim;                            // [G, w] scores, then exps
  l.part_max = l.scores + 4 * G * dims.window;                       // [G, KS]
  l.part_sum = l.part_max + 4 * G * KS;                              // [G, KS]
  l.total = l.part_sum + 4 * G * KS;
  return l;
}

// At most 80 registers, so 3 blocks of kMaxWarps warps fit an SM (as many as shared memory takes
// at w = 128, D = 128, bf16).
template <typename TS, typename TW, int kVec>
__global__ void __maxnreg__(80) LizardDecodeWindowKernel(
    LizardDims dims, const float* qkvg, int ld, const float* krot, int krot_ld, const double* inv_freq,
    TokenMeta tokens, int row0, LizardParams params, LizardStateRef state, LizardScratch scratch) {
  using Vec = RingVec<TW, kVec>;
  // The weighted sum reads kPv values per lane and key (8 bytes; the pair layout: a pair), so
  // 32 lanes cover D = 128 in one bf16 row; kMaxChunks chunks per lane for D <= 256.
  constexpr int kPv = kVec >= 4 ? kVec / 2 : 2;
  constexpr int kMaxChunks = kMaxHeadDim / (32 * kPv);
  WaitForPrevious();
  // Grid (Hkv, rows): consecutive blocks work on the same token, so on the same slot's memory.
  const int g = blockIdx.x, r = row0 + blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F = dims.features;
  const int w = dims.window, m = dims.meta, F2 = 2 * F, G = H / Hkv, KS = KeySplits(G);
  // Warp (hl, s): query head hl of the group, key split s.
  const int lane = threadIdx.x & 31, hl = (threadIdx.x >> 5) / KS, s = (threadIdx.x >> 5) % KS;
  const int h = g * G + hl;
  const int64_t th = static_cast<int64_t>(r) * H + h;  // (token, head) index
  const int half = D / 2, chunks = D / kPv;

  // Round trip 1: slot and position, and every input that needs neither, into registers.
  const int slot = tokens.slot[r], pos = tokens.position[r];
  const float* row = qkvg + static_cast<int64_t>(r) * ld;
  const float* kown = krot + static_cast<int64_t>(r) * krot_ld + g * D;
  const float* vown = row + H * D + Hkv * D + g * D;
  // Lane holds the RoPE pairs (i, i + D/2) of the query and the own key for i = lane + 32 j ...
  float qa[kMaxHalf], qb[kMaxHalf], ka[kMaxHalf], kb[kMaxHalf];
  double freq[kMaxHalf];
#pragma unroll
  for (int j = 0; j < kMaxHalf; ++j) {
    const int i = lane + 32 * j;
    qa[j] = qb[j] = ka[j] = kb[j] = 0.f, freq[j] = 0.0;
    if (i < half) {
      qa[j] = row[h * D + i], qb[j] = row[h * D + i + half];
      ka[j] = kown[i], kb[j] = kown[i + half];
      if (dims.window_rope) freq[j] = inv_freq[i];
    }
  }
  // ... the own value's columns kPv c .. kPv c + kPv - 1 for c = lane + 32 i (the weighted sum's
  // layout), sink `lane`, and feature f and F + f for f = lane + 32 e.
  float own_v[kMaxChunks][kPv];
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
#pragma unroll
    for (int e = 0; e < kPv; ++e) own_v[i][e] = lane + 32 * i < chunks ? vown[(lane + 32 * i) * kPv + e] : 0.f;
  }
  const float sink = lane < m ? params.meta_logits[static_cast<int64_t>(h) * m + lane] : -INFINITY;
  const float* logits = params.fmap_logits + static_cast<int64_t>(r) * 2 * H * F + h * F;
  float aq[kHedgehogPerLane], ak[kHedgehogPerLane];
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    const int f = lane + 32 * e;
    aq[e] = ak[e] = 0.f;
    if (s == 0 && f < F) {
      aq[e] = logits[f] + (params.fmap_q_bias ? params.fmap_q_bias[h * F + f] : 0.f);
      ak[e] = logits[H * F + f] + (params.fmap_k_bias ? params.fmap_k_bias[h * F + f] : 0.f);
    }
  }
  const float gate = row[H * D + 2 * Hkv * D + h], window_factor = params.window_factor[h];

  float* y = scratch.y + th * D;
  if (slot < 0) {  // padding row: split 0 zeroes its head
    if (s == 0) {
      for (int d = lane; d < D; d += 32) y[d] = 0.f;
      for (int f = lane; f < F2; f += 32) scratch.fq[th * F2 + f] = scratch.fk[th * F2 + f] = 0.f;
      if (lane == 0) scratch.gamma[th] = 0.f, scratch.den[th] = 1.f;
    }
    return;
  }
  const int lo = max(0, pos - w + 1), nring = pos - lo;  // window lo..pos; ring keys lo..pos-1

  extern __shared__ __align__(16) char smem[];
  const DecodeLayout L = MakeLayout<TW, kVec>(dims);

  // Round trip 2: ring rows of positions lo..pos-1 (row j % w): rows 0..pos-1 while the ring
  // fills, then all (the extra one, pos % w, holds position pos - w and is not read); and z.
  TW* ring_k = SlotPart<TW>(state, slot, state.k_offset) + static_cast<int64_t>(g) * w * D;
  TW* ring_v = SlotPart<TW>(state, slot, state.v_offset) + static_cast<int64_t>(g) * w * D;
  const int vecs = D / kVec;
  for (int i = threadIdx.x; i < min(pos, w) * vecs; i += blockDim.x) {
    const int ring_row = i / vecs, c = i % vecs;
    const int64_t from = static_cast<int64_t>(ring_row) * D + c * kVec;
    const int to = ring_row * L.row_bytes + c * static_cast<int>(sizeof(Vec));
    __pipeline_memcpy_async(smem + L.k + to, ring_k + from, sizeof(Vec));
    __pipeline_memcpy_async(smem + L.v + to, ring_v + from, sizeof(Vec));
  }
  __pipeline_commit();
  TS* z = SlotPart<TS>(state, slot, state.z_offset) + static_cast<int64_t>(h) * F2;
  float zp[kHedgehogPerLane], zn[kHedgehogPerLane];
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    const int f = lane + 32 * e;
    zp[e] = zn[e] = 0.f;
    if (s == 0 && f < F) zp[e] = Load(z, f), zn[e] = Load(z, F + f);
  }

  // The query after RoPE (angles reduced in double, as the CPU reference), in shared memory for
  // the score loop, and the own key's score (the token's own key, fp32 and unrounded).
  float* q = reinterpret_cast<float*>(smem + L.q) + hl * D;
  float own = 0.f;
#pragma unroll
  for (int j = 0; j < kMaxHalf; ++j) {
    const int i = lane + 32 * j;
    if (i < half) {
      float c = 1.f, sn = 0.f;
      if (dims.window_rope) {
        const double angle = fmod(static_cast<double>(pos) * freq[j], 2.0 * 3.14159265358979323846);
        sincosf(static_cast<float>(angle), &sn, &c);
      }
      const float ra = qa[j] * c - qb[j] * sn, rb = qb[j] * c + qa[j] * sn;
      if (s == 0) q[i] = ra, q[i + half] = rb;
      own = fmaf(rb, kb[j], fmaf(ra, ka[j], own));
    }
  }
  const float scale = rsqrtf(static_cast<float>(D));
  own = WarpSum(own) * scale;

  // Split 0: the feature maps (RoPE-free, from the precomputed logits + bias), gate, z = gamma z
  // + fk (rounded as stored), then the readout denominator fq . z + 1e-6.
  if (s == 0) {
    const float gamma = 1.f / (1.f + __expf(-gate));
    float fqp[kHedgehogPerLane], fqn[kHedgehogPerLane], fkp[kHedgehogPerLane], fkn[kHedgehogPerLane];
    WarpHedgehogSoftmax(aq, F, fqp, fqn);
    WarpHedgehogSoftmax(ak, F, fkp, fkn);
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
  }

  __pipeline_wait_prior(0);
  __syncthreads();  // the ring rows and the queries are in shared memory

  // The token's K/V go to ring row pos % w (position pos - w: outside this window, and no other
  // block reads this slot's ring in the step), from the first warp's registers: the block's
  // copies of the ring are complete.
  if (threadIdx.x < 32) {
    const int64_t at = static_cast<int64_t>(pos % w) * D;
#pragma unroll
    for (int j = 0; j < kMaxHalf; ++j) {
      const int i = lane + 32 * j;
      if (i < half) Store(ring_k, at + i, ka[j]), Store(ring_k, at + i + half, kb[j]);
    }
#pragma unroll
    for (int i = 0; i < kMaxChunks; ++i) {
#pragma unroll
      for (int e = 0; e < kPv; ++e) {
        if (lane + 32 * i < chunks) Store(ring_v, at + (lane + 32 * i) * kPv + e, own_v[i][e]);
      }
    }
  }

  // Scores of this warp's ring keys (stripes of 32 keys t = s, s + KS, ...): a lane per key,
  // kKeysPerLane keys at once (independent chains; the query is loaded once for them), each dot
  // product in d order. The sinks join the max and the sum only.
  float* sc = reinterpret_cast<float*>(smem + L.scores) + hl * w;
  float mx = sink;
  for (int t0 = s; t0 * 32 < nring; t0 += KS * kKeysPerLane) {
    const Vec* key[kKeysPerLane];
    float dot[kKeysPerLane];
#pragma unroll
    for (int u = 0; u < kKeysPerLane; ++u) {
      const int kk = min((t0 + KS * u) * 32 + lane, nring - 1);  // past the end: a copy, not stored
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
      const int kk = (t0 + KS * u) * 32 + lane;
      if (kk < nring) {
        sc[kk] = dot[u] * scale;
        mx = fmaxf(mx, dot[u] * scale);
      }
    }
  }
  float* part_max = reinterpret_cast<float*>(smem + L.part_max) + hl * KS;
  float* part_sum = reinterpret_cast<float*>(smem + L.part_sum) + hl * KS;
  float* part_acc = reinterpret_cast<float*>(smem + L.part_acc) + hl * KS * D;
  mx = WarpMax(mx);
  if (lane == 0) part_max[s] = mx;
  __syncthreads();  // the head's split maxima
  mx = own;  // finite: the token's own key is always in the window
  for (int i = 0; i < KS; ++i) mx = fmaxf(mx, part_max[i]);

  // The weights of this warp's keys, then y's part: sum_j p_j v_j over its keys in order, lane
  // holding value columns kPv c .. kPv c + kPv - 1 for c = lane + 32 i.
  float sum = 0.f;
  for (int kk = 32 * s + lane; kk < nring; kk += 32 * KS) {
    const float p = __expf(sc[kk] - mx);
    sc[kk] = p;
    sum += p;
  }
  sum = WarpSum(sum);
  __syncwarp();  // every lane reads every key's weight of the stripe below
  using PvVec = RingVec<TW, kPv>;
  float acc[kMaxChunks][kPv];
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
#pragma unroll
    for (int e = 0; e < kPv; ++e) acc[i][e] = 0.f;
  }
  for (int t = s; t * 32 < nring; t += KS) {
    int ring_row = (lo + 32 * t) % w;
    const int end = min(32 * t + 32, nring);
#pragma unroll 4
    for (int kk = 32 * t; kk < end; ++kk) {
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
  }
  if (lane == 0) part_sum[s] = sum;
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
#pragma unroll
    for (int e = 0; e < kPv; ++e) {
      if (lane + 32 * i < chunks) part_acc[s * D + (lane + 32 * i) * kPv + e] = acc[i][e];
    }
  }
  __syncthreads();  // the head's split sums and weighted values
  if (s != 0) return;

  // y = window_factor * (sum_j p_j v_j + p_own v_own) / (sum_j p_j + sinks + p_own), the splits in order.
  const float p_own = __expf(own - mx);
  float total = 0.f;
  for (int i = 0; i < KS; ++i) total += part_sum[i];
  total += WarpSum(lane < m ? __expf(sink - mx) : 0.f) + p_own;
  const float factor = window_factor / total;
#pragma unroll
  for (int i = 0; i < kMaxChunks; ++i) {
    if (lane + 32 * i < chunks) {
#pragma unroll
      for (int e = 0; e < kPv; ++e) {
        const int d = (lane + 32 * i) * kPv + e;
        float a = 0.f;
        for (int k = 0; k < KS; ++k) a += part_acc[k * D + d];
        y[d] = factor * fmaf(p_own, own_v[i][e], a);
      }
    }
  }
}

// Whether a block fits the device: a window too long for one block's shared memory (or more
// than kMaxWarps query heads per kv head, more than kMaxMeta sinks, head dims over kMaxHeadDim)
// runs LizardWindow, whose bits depend on the model only too.
bool Fits(const LizardDims& dims, int shmem) {
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  return dims.heads / dims.kv_heads <= kMaxWarps && dims.meta <= kMaxMeta && dims.head_dim <= kMaxHeadDim &&
         shmem <= limit;
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
  const int G = dims.heads / dims.kv_heads;
  return LaunchDependent(LizardDecodeWindowKernel<TS, TW, kVec>, dim3(dims.kv_heads, rows), 32 * G * KeySplits(G),
                         shmem, stream, dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, params, state, scratch);
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
