// The token-parallel half of a Lizard attention layer for decode rows (one token per sequence),
// the same outputs as LizardWindow with `single` set: one block of 8 warps per (token, kv head)
// serves the G <= 8 query heads of the group on tensor cores, the heads as the rows of
// m16n8k16 MMAs. The group's K/V ring rows go to shared memory with asynchronous 16-byte copies
// (keys and values in two groups, so the scores run while the values arrive); each warp scores
// a 16-key chunk of the ring for all heads, then sums the weighted values of a 16-column group.
// The queries and the weights enter the MMAs as bf16 pairs (hi + lo, ~16 bits of mantissa) and
// the ring is bf16, so the products are those of fp32 to ~1e-5 with fp32 sums. Meanwhile warp h
// does head h's scalar work: RoPE of the query, the own key's score (fp32, unrounded), the
// feature maps and z. Every sum runs in an order fixed by the shape, so a row's bits do not
// depend on what shares the step. (The scalar form this replaces issued ~4.7K instructions a
// warp: 18 us a layer at batch 1 and 117 us at batch 256, compute-bound at 1.6 TB/s.)
#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/lizard_attention/lizard_device.cuh"
#include "kernels/mma.cuh"

namespace lizard::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;
constexpr int kMaxGroup = 8;       // query heads per kv head: a warp each, the MMA rows 0..7
constexpr int kMaxMeta = 32;       // sinks, one per lane
constexpr int kMaxHeadDim = 256;   // D <= 256, a multiple of 16
constexpr int kMaxWindow = 256;    // ring rows: at most 2 chunks of 16 keys per warp
constexpr int kMaxHalf = kMaxHeadDim / 2 / 32;                   // RoPE pairs (i, i + D/2) per lane
constexpr int kMaxKeyChunks = kMaxWindow / 16 / kWarps;          // 16-key chunks a warp scores
constexpr int kMaxColGroups = kMaxHeadDim / 16 / kWarps;         // 16-column groups a warp sums
constexpr int kMaxOwnKv = 2 * kMaxHeadDim / (32 * kWarps);       // own K/V values a thread writes

// The block's shared memory, byte offsets. Rows of bf16 (ring keys and values, queries, weights)
// are padded to an odd number of 16-byte units, so the 8 rows an ldmatrix (or the 8 fragment
// rows of a 32-bit load) reads fall in distinct banks.
struct DecodeLayout {
  int rows;       // ring rows staged: w rounded up to 16 (the rest zeros)
  int row_bytes;  // a key, value or query row: D bf16 + padding
  int p_bytes;    // a weight row: `rows` bf16 + padding
  int k, v, qh, ql, ph, pl, part_max, part_sum, head, total;
};

__host__ __device__ inline int PaddedRow(int elems) {
  const int units = elems / 8;
  return (units % 2 == 0 ? units + 1 : units) * 16;
}

__host__ __device__ inline DecodeLayout MakeLayout(const LizardDims& dims) {
  const int G = dims.heads / dims.kv_heads;
  DecodeLayout l;
  l.rows = (dims.window + 15) / 16 * 16;
  l.row_bytes = PaddedRow(dims.head_dim);
  l.p_bytes = PaddedRow(l.rows);
  l.k = 0;
  l.v = l.k + l.rows * l.row_bytes;
  l.qh = l.v + l.rows * l.row_bytes;  // [G] rotated queries, bf16 hi and lo parts
  l.ql = l.qh + G * l.row_bytes;
  l.ph = l.ql + G * l.row_bytes;      // [G] weights of the ring keys, hi and lo
  l.pl = l.ph + G * l.p_bytes;
  l.part_max = l.pl + G * l.p_bytes;  // [kWarps, G] the warps' maxima of their keys' scores
  l.part_sum = l.part_max + 4 * kWarps * G;  // [kWarps, G] their sums of weights
  l.head = l.part_sum + 4 * kWarps * G;      // [3, G] own scores, sinks' maxima, sinks' + own weights
  l.total = l.head + 4 * 3 * G;
  return l;
}

// x as bf16 hi + lo: hi = bf16(x), lo = bf16(x - hi), a pair for 2 consecutive values.
__device__ __forceinline__ void SplitPair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = Pack(x0, x1);
  const __nv_bfloat162 h = *reinterpret_cast<const __nv_bfloat162*>(&hi);
  lo = Pack(x0 - __low2float(h), x1 - __high2float(h));
}

// A fragments (rows fr and fr + 8, columns kk + 2 fc.. and kk + 8 + 2 fc..) of a hi and a lo
// bf16 matrix in shared memory whose rows are the group's heads: rows 8..15, and rows past the
// group (!valid), are zeros.
__device__ __forceinline__ void LoadHeadRows(const char* hi, const char* lo, int row_bytes, int fr, int fc, int kk,
                                             bool valid, uint32_t (&ah)[4], uint32_t (&al)[4]) {
  ah[0] = ah[1] = ah[2] = ah[3] = al[0] = al[1] = al[2] = al[3] = 0u;
  if (!valid) return;
  const int at = fr * row_bytes + 2 * (kk + 2 * fc);
  ah[0] = *reinterpret_cast<const uint32_t*>(hi + at), ah[2] = *reinterpret_cast<const uint32_t*>(hi + at + 16);
  al[0] = *reinterpret_cast<const uint32_t*>(lo + at), al[2] = *reinterpret_cast<const uint32_t*>(lo + at + 16);
}

template <typename TS>
__global__ void __launch_bounds__(32 * kWarps, 3) LizardDecodeWindowKernel(
    LizardDims dims, const float* qkvg, int ld, const float* krot, int krot_ld, const double* inv_freq,
    TokenMeta tokens, int row0, LizardParams params, LizardStateRef state, LizardScratch scratch) {
  WaitForPrevious();
  // Grid (Hkv, rows): consecutive blocks work on the same token, so on the same slot's memory.
  const int g = blockIdx.x, r = row0 + blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F = dims.features;
  const int w = dims.window, m = dims.meta, F2 = 2 * F, G = H / Hkv, half = D / 2;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int fr = lane >> 2, fc = lane & 3;  // fragment row (a head) and column pair
  const bool head_warp = warp < G;          // warp h does head g G + h's scalar work
  const int h = g * G + warp;
  const int64_t th = static_cast<int64_t>(r) * H + h;  // (token, head) index of a head warp

  // Round trip 1: slot and position, and every input that needs neither, into registers.
  const int slot = tokens.slot[r], pos = tokens.position[r];
  const float* row = qkvg + static_cast<int64_t>(r) * ld;
  const float* kown = krot + static_cast<int64_t>(r) * krot_ld + g * D;
  const float* vown = row + H * D + Hkv * D + g * D;
  // Head warps: lane holds the RoPE pairs (i, i + D/2) of the query and the own key for
  // i = lane + 32 j, the feature-map logits of features lane + 32 e, sink `lane`, the gate.
  float qa[kMaxHalf], qb[kMaxHalf], ka[kMaxHalf], kb[kMaxHalf];
  double freq[kMaxHalf];
  float aq[kHedgehogPerLane], ak[kHedgehogPerLane];
  float sink = -INFINITY, gate = 0.f;
  if (head_warp) {
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
    const float* logits = params.fmap_logits + static_cast<int64_t>(r) * 2 * H * F + h * F;
#pragma unroll
    for (int e = 0; e < kHedgehogPerLane; ++e) {
      const int f = lane + 32 * e;
      aq[e] = ak[e] = 0.f;
      if (f < F) {
        aq[e] = logits[f] + (params.fmap_q_bias ? params.fmap_q_bias[h * F + f] : 0.f);
        ak[e] = logits[H * F + f] + (params.fmap_k_bias ? params.fmap_k_bias[h * F + f] : 0.f);
      }
    }
    if (lane < m) sink = params.meta_logits[static_cast<int64_t>(h) * m + lane];
    gate = row[H * D + 2 * Hkv * D + h];
  }
  // Threads of fragment rows fr < G: their head's window factor, ...
  const bool row_valid = fr < G;
  const float window_factor = row_valid ? params.window_factor[g * G + fr] : 0.f;
  // ... and every thread: the own value's columns of its output fragments (16 cg + 8 t + 2 fc, +1 for
  // column groups cg = warp + 8 c), and the own key and value elements it writes to the ring.
  float own_v[kMaxColGroups][2][2];
#pragma unroll
  for (int c = 0; c < kMaxColGroups; ++c) {
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int d = 16 * (warp + kWarps * c) + 8 * t + 2 * fc;
      own_v[c][t][0] = d < D ? vown[d] : 0.f;
      own_v[c][t][1] = d < D ? vown[d + 1] : 0.f;
    }
  }
  float own_kv[kMaxOwnKv];
#pragma unroll
  for (int e = 0; e < kMaxOwnKv; ++e) {
    const int i = threadIdx.x + 32 * kWarps * e;
    own_kv[e] = i < D ? kown[i] : i < 2 * D ? vown[i - D] : 0.f;
  }

  if (slot < 0) {  // padding row: the head warps zero their heads
    if (head_warp) {
      float* y = scratch.y + th * D;
      for (int d = lane; d < D; d += 32) y[d] = 0.f;
      for (int f = lane; f < F2; f += 32) scratch.fq[th * F2 + f] = scratch.fk[th * F2 + f] = 0.f;
      if (lane == 0) scratch.gamma[th] = 0.f, scratch.den[th] = 1.f;
    }
    return;
  }

  extern __shared__ __align__(16) char smem[];
  const DecodeLayout L = MakeLayout(dims);

  // Round trip 2: the ring rows 0..min(pos, w) - 1 hold positions (the rest, and the padding to
  // 16 rows, become zeros: a weight of 0 must not meet a NaN); keys and values in two groups.
  // Then z (head warps).
  bf16* ring_k = SlotPart<bf16>(state, slot, state.k_offset) + static_cast<int64_t>(g) * w * D;
  bf16* ring_v = SlotPart<bf16>(state, slot, state.v_offset) + static_cast<int64_t>(g) * w * D;
  const int filled = min(pos, w), vecs = D / 8;
  for (int which = 0; which < 2; ++which) {
    const bf16* from = which == 0 ? ring_k : ring_v;
    char* to = smem + (which == 0 ? L.k : L.v);
    int rr = threadIdx.x / vecs, c = threadIdx.x % vecs;  // (row, 16-byte unit), stepped below
    const int step_r = 32 * kWarps / vecs, step_c = 32 * kWarps % vecs;
    for (; rr < L.rows; rr += step_r) {
      const bool valid = rr < filled;
      CpAsync16(to + rr * L.row_bytes + 16 * c, from + (valid ? static_cast<int64_t>(rr) * D + 8 * c : 0), valid);
      c += step_c;
      if (c >= vecs) c -= vecs, ++rr;
    }
    CpAsyncCommit();
  }
  TS* z = SlotPart<TS>(state, slot, state.z_offset) + static_cast<int64_t>(h) * F2;
  float zp[kHedgehogPerLane], zn[kHedgehogPerLane];
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    const int f = lane + 32 * e;
    zp[e] = zn[e] = 0.f;
    if (head_warp && f < F) zp[e] = Load(z, f), zn[e] = Load(z, F + f);
  }

  const float scale = rsqrtf(static_cast<float>(D));
  float* part_max = reinterpret_cast<float*>(smem + L.part_max);
  float* part_sum = reinterpret_cast<float*>(smem + L.part_sum);
  float* own_score = reinterpret_cast<float*>(smem + L.head);
  float* sink_max = own_score + G;
  float* extra_weight = sink_max + G;
  if (head_warp) {
    // The query after RoPE (angles reduced in double, as in the prefill kernels) into shared
    // memory as hi + lo bf16, and the own key's score (fp32, unrounded).
    float own = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxHalf; ++j) {
      const int i = lane + 32 * j;
      if (i < half) {
        float c = 1.f, sn = 0.f;
        if (dims.window_rope) {
          constexpr double kTwoPi = 2.0 * 3.14159265358979323846;
          double angle = static_cast<double>(pos) * freq[j];
          angle -= kTwoPi * floor(angle * (1.0 / kTwoPi));
          sincosf(static_cast<float>(angle), &sn, &c);
        }
        const float ra = qa[j] * c - qb[j] * sn, rb = qb[j] * c + qa[j] * sn;
        const bf16 ha = __float2bfloat16(ra), hb = __float2bfloat16(rb);
        bf16* qh = reinterpret_cast<bf16*>(smem + L.qh + warp * L.row_bytes);
        bf16* ql = reinterpret_cast<bf16*>(smem + L.ql + warp * L.row_bytes);
        qh[i] = ha, qh[i + half] = hb;
        ql[i] = __float2bfloat16(ra - __bfloat162float(ha)), ql[i + half] = __float2bfloat16(rb - __bfloat162float(hb));
        own = fmaf(rb, kb[j], fmaf(ra, ka[j], own));
      }
    }
    own = WarpSum(own) * scale;
    const float sinks = WarpMax(sink);
    if (lane == 0) own_score[warp] = own, sink_max[warp] = sinks;

    // The feature maps (RoPE-free, from the precomputed logits + bias), gate, z = gamma z + fk
    // (rounded as stored), then the readout denominator fq . z + 1e-6.
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

  CpAsyncWait<1>();
  __syncthreads();  // the ring keys and the queries are in shared memory

  // Scores of 16-key chunks kc = warp + 8 c for all heads (MMA rows fr; rows 8..15 are zero):
  // hi and lo query parts into the same fp32 sums, dims in 16-wide steps.
  float s[kMaxKeyChunks][2][4] = {};
#pragma unroll
  for (int kk = 0; kk < D; kk += 16) {
    uint32_t ah[4], al[4];
    LoadHeadRows(smem + L.qh, smem + L.ql, L.row_bytes, fr, fc, kk, row_valid, ah, al);
#pragma unroll
    for (int c = 0; c < kMaxKeyChunks; ++c) {
      const int kc = warp + kWarps * c;
      if (16 * kc >= L.rows) break;
      uint32_t bf[4];
      Ldsm4(bf, smem + L.k + (16 * kc + (lane & 7) + (lane >> 4) * 8) * L.row_bytes + 2 * (kk + ((lane >> 3) & 1) * 8));
      Mma(s[c][0], ah, bf[0], bf[1]);
      Mma(s[c][0], al, bf[0], bf[1]);
      Mma(s[c][1], ah, bf[2], bf[3]);
      Mma(s[c][1], al, bf[2], bf[3]);
    }
  }
  // Ring row j holds a window key when it holds a position in max(0, pos - w + 1)..pos - 1: while
  // the ring fills, rows 0..pos-1; then all but row pos % w (position pos - w). The others score
  // -inf.
  auto in_window = [&](int j) { return pos >= w ? j != pos % w && j < w : j < pos; };
  float mx = -INFINITY;
#pragma unroll
  for (int c = 0; c < kMaxKeyChunks; ++c) {
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = 16 * (warp + kWarps * c) + 8 * t + 2 * fc + e;
        float& x = s[c][t][e];
        x = in_window(j) ? x * scale : -INFINITY;
        mx = fmaxf(mx, x);
      }
    }
  }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  if (row_valid && fc == 0) part_max[warp * G + fr] = mx;
  __syncthreads();  // the warps' maxima and the own scores

  // The head's max over its window and sinks (its own key makes it finite), then this warp's
  // weights, as hi + lo bf16 rows for the weighted sum, and their sum.
  auto head_max = [&](int hl) {
    float x = fmaxf(own_score[hl], sink_max[hl]);
    for (int i = 0; i < kWarps; ++i) x = fmaxf(x, part_max[i * G + hl]);
    return x;
  };
  mx = head_max(row_valid ? fr : 0);
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < kMaxKeyChunks; ++c) {
    const int kc = warp + kWarps * c;
    if (16 * kc >= L.rows) break;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const float p0 = __expf(s[c][t][0] - mx), p1 = __expf(s[c][t][1] - mx);
      sum += p0 + p1;
      uint32_t hi, lo;
      SplitPair(p0, p1, hi, lo);
      const int j = 16 * kc + 8 * t + 2 * fc;
      if (row_valid) {
        *reinterpret_cast<uint32_t*>(smem + L.ph + fr * L.p_bytes + 2 * j) = hi;
        *reinterpret_cast<uint32_t*>(smem + L.pl + fr * L.p_bytes + 2 * j) = lo;
      }
    }
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  if (row_valid && fc == 0) part_sum[warp * G + fr] = sum;
  if (head_warp) {  // the sinks' and the own key's weights
    const float hm = head_max(warp);
    const float e = WarpSum(lane < m ? __expf(sink - hm) : 0.f);
    if (lane == 0) extra_weight[warp] = e + __expf(own_score[warp] - hm);
  }
  CpAsyncWait<0>();
  __syncthreads();  // the ring values, the weights and their sums

  // The token's K/V go to ring row pos % w (position pos - w: outside this window, and no other
  // block reads this slot's ring in the step): the block's copies of the ring are complete.
#pragma unroll
  for (int e = 0; e < kMaxOwnKv; ++e) {
    const int i = threadIdx.x + 32 * kWarps * e;
    const int64_t at = static_cast<int64_t>(pos % w) * D;
    if (i < D) {
      ring_k[at + i] = __float2bfloat16(own_kv[e]);
    } else if (i < 2 * D) {
      ring_v[at + i - D] = __float2bfloat16(own_kv[e]);
    }
  }

  // y's 16-column groups cg = warp + 8 c for all heads: sum_j p_j v_j over the staged rows in
  // 16-key steps, hi and lo weights into the same fp32 sums.
  float acc[kMaxColGroups][2][4] = {};
  for (int kk = 0; kk < L.rows; kk += 16) {
    uint32_t ah[4], al[4];
    LoadHeadRows(smem + L.ph, smem + L.pl, L.p_bytes, fr, fc, kk, row_valid, ah, al);
#pragma unroll
    for (int c = 0; c < kMaxColGroups; ++c) {
      const int cg = warp + kWarps * c;
      if (16 * cg >= D) break;
      uint32_t bf[4];
      Ldsm4T(bf, smem + L.v + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * L.row_bytes + 2 * (16 * cg + (lane >> 4) * 8));
      Mma(acc[c][0], ah, bf[0], bf[1]);
      Mma(acc[c][0], al, bf[0], bf[1]);
      Mma(acc[c][1], ah, bf[2], bf[3]);
      Mma(acc[c][1], al, bf[2], bf[3]);
    }
  }
  if (!row_valid) return;

  // y = window_factor * (sum_j p_j v_j + p_own v_own) / (sum_j p_j + sinks + p_own), the warps'
  // sums in order.
  float total = 0.f;
  for (int i = 0; i < kWarps; ++i) total += part_sum[i * G + fr];
  total += extra_weight[fr];
  const float p_own = __expf(own_score[fr] - mx);
  const int hy = g * G + fr;
  const float factor = window_factor / total;
  float* y = scratch.y + (static_cast<int64_t>(r) * H + hy) * D;
#pragma unroll
  for (int c = 0; c < kMaxColGroups; ++c) {
    const int cg = warp + kWarps * c;
    if (16 * cg >= D) break;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int d = 16 * cg + 8 * t + 2 * fc;
      y[d] = factor * fmaf(p_own, own_v[c][t][0], acc[c][t][0]);
      y[d + 1] = factor * fmaf(p_own, own_v[c][t][1], acc[c][t][1]);
    }
  }
}

// Whether a block takes the shape: bf16 ring rows on 16 bytes, D a multiple of 16 up to 256,
// at most 8 query heads per kv head, 32 sinks, 256 ring rows, and shared memory for them. The
// rest runs LizardWindow, whose bits depend on the model only too.
bool Fits(const LizardDims& dims, const LizardStateRef& state, int shmem) {
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return false;
  }
  const bool aligned = reinterpret_cast<uintptr_t>(state.pool) % 16 == 0 && state.slot_bytes % 16 == 0 &&
                       state.k_offset % 16 == 0 && state.v_offset % 16 == 0;
  return state.window_type == StoreType::kBF16 && aligned && dims.kv_heads > 0 && dims.heads % dims.kv_heads == 0 &&
         dims.heads / dims.kv_heads <= kMaxGroup && dims.meta <= kMaxMeta && dims.head_dim % 16 == 0 &&
         dims.head_dim <= kMaxHeadDim && dims.window <= kMaxWindow && dims.features <= 32 * kHedgehogPerLane &&
         shmem <= limit;
}

template <typename TS>
cudaError_t Launch(const LizardDims& dims, const float* qkvg, int ld, const float* krot, int krot_ld,
                   const double* inv_freq, const TokenMeta& tokens, int row0, int rows,
                   const LizardParams& params, const LizardStateRef& state, const LizardScratch& scratch,
                   cudaStream_t stream) {
  const int shmem = MakeLayout(dims).total;
  if (!Fits(dims, state, shmem)) {
    return LizardWindow(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state, scratch, stream);
  }
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(LizardDecodeWindowKernel<TS>, cudaFuncAttributeMaxDynamicSharedMemorySize, shmem);
    if (e != cudaSuccess) return e;
  }
  return LaunchDependent(LizardDecodeWindowKernel<TS>, dim3(dims.kv_heads, rows), 32 * kWarps, shmem, stream, dims,
                         qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, params, state, scratch);
}

}  // namespace

cudaError_t LizardDecodeWindow(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                               int krot_ld, const double* inv_freq, const TokenMeta& tokens, int row0,
                               int rows, const LizardParams& params, const LizardStateRef& state,
                               const LizardScratch& scratch, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (state.state_type == StoreType::kF32) {
    return Launch<float>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state, scratch, stream);
  }
  return Launch<__nv_bfloat16>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params, state, scratch,
                               stream);
}

}  // namespace lizard::kernels
