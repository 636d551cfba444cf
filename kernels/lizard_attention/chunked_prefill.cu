// Chunked gated linear attention prefill (see chunked_prefill.h for the op).
//
// kSplit blocks per (query head, sequence) walk the sequence's chunks of kGlaChunk tokens in
// order; chunk j holds the absolute positions [64 j, 64 j + 64), the tokens of the chunk outside
// the sequence (before its first position, after its last) are zeros with gate 1, so they add
// nothing. Each block owns D / kSplit of the D = 128 value columns (of S and of y: every column is
// independent of the others); its warps hold that part of the state transposed (S^T, rows value
// columns, columns the 2F features) as fp32 tensor-core accumulators for the whole sequence: warp
// w owns value columns 16 (w % G).. of the block's and half (w / G) of the features (G = the
// block's 16-column groups). Every block computes the chunk's scores, gates and normaliser itself,
// in the same order, so y, S and z have the same bits whatever kSplit is; the launch picks it
// (more blocks when there are few (sequence, head) pairs). With b_t = sum_{r<=t} log gamma_r
// counted from the chunk's start and B = b of its last token, per chunk:
//   P[t, s] = (fq_t . fk_s) e^{b_t - b_s} for s <= t          (bf16 MMA, decay in fp32 per pair)
//   y_t^T   = e^{b_t} S^T fq_t + sum_s P[t, s] v_s             (bf16 MMAs, fp32 accumulators)
//   den_t   = e^{b_t} fq_t . z + sum_s P[t, s] + 1e-6
//   S^T     = e^{B} S^T + sum_s v_s (e^{B - b_s} fk_s)^T       (the state update, fp32)
//   z       = e^{B} z + sum_s e^{B - b_s} fk_s
// after which S and z are rounded to the pool's store type (a step could end there).
// This is the paper's hardware-aware form (the log gate folded into the operands) kept
// chunk-local: every exponent applied is <= 0, so nothing overflows however strong the decay
// (a gate of sigmoid(-8) over 64 tokens would make e^{-b} overflow fp32 and bf16 alike).
// The next chunk's q, k, v and gate logits are copied into shared memory (cp.async) while this one
// computes; v comes as fp32 straight from the qkvg rows (no packing kernel) and is converted to
// bf16 at the end of the chunk.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/mma.cuh"

namespace lizard::kernels {
namespace {

constexpr int kC = kGlaChunk;
constexpr int kD = 128;
// Padding per shared-memory row (bf16 elements): row strides become odd multiples of 16 bytes,
// so the 8 rows one ldmatrix reads fall in different banks.
constexpr int kPad = 8;
constexpr int kOutPad = 4;  // fp32 output rows: the fragment stores hit 32 different banks

// The block of one of kSplit parts: its value columns, and its warps: warps w and w + kDGroups
// share value columns 16 w.. and split the features in two halves.
template <int kSplit>
struct Part {
  static constexpr int kCols = kD / kSplit;
  static constexpr int kDGroups = kCols / 16;
  static constexpr int kWarps = 2 * kDGroups;
  static constexpr int kThreads = kWarps * 32;
};

template <int K, int kCols>
struct Smem {
  alignas(16) __nv_bfloat16 q[2][kC][K + kPad];  // two stages: this chunk and the next
  alignas(16) __nv_bfloat16 k[2][kC][K + kPad];
  alignas(16) __nv_bfloat16 v[kC][kCols + kPad];  // one stage, converted from v_in
  alignas(16) float v_in[kC][kCols];               // the next chunk's v as copied from qkvg (fp32)
  alignas(16) __nv_bfloat16 p[kC][kC + kPad];  // masked, decayed scores
  // The second feature half's share of y^T, then the normalised output rows (fp32).
  alignas(16) float out[kC][kCols + kOutPad];
  alignas(16) float z[K];
  float gate[2][kC];      // gate logits, two stages like q and k
  float b[kC];            // cumulative log gate within the chunk
  float eb[kC];           // e^{b_t}
  float w[kC];            // e^{B - b_s}
  float qz[kC];           // fq_t . z (z at the chunk's start)
  float den_part[4][kC];  // row sums of P, one per 16-column block on or left of the diagonal
  float inv_den[kC];
};

__device__ __forceinline__ uint32_t Scale(uint32_t x, float lo, float hi) {
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&x);
  return Pack(__low2float(v) * lo, __high2float(v) * hi);
}

template <int K, int kSplit, typename TS>
__global__ void __launch_bounds__(Part<kSplit>::kThreads, 1) ChunkedPrefillKernel(ChunkedPrefillArgs a) {
  constexpr int kCols = Part<kSplit>::kCols, kDGroups = Part<kSplit>::kDGroups;
  constexpr int kWarps = Part<kSplit>::kWarps, kThreads = Part<kSplit>::kThreads;
  constexpr int kTiles = K / 16;  // 8-wide column tiles of this warp's half of S^T
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<K, kCols>& sm = *reinterpret_cast<Smem<K, kCols>*>(smem_raw);

  // Block x = h kSplit + part: the parts of one (sequence, head) run side by side and share
  // their q and k reads in L2.
  const int h = blockIdx.x / kSplit, part = blockIdx.x % kSplit, n = blockIdx.y;
  const int H = a.dims.heads, Hkv = a.dims.kv_heads;
  const int col0 = part * kCols;  // the block's first value column
  const int kv = h / (H / Hkv);
  const int slot = a.seqs.slot[n], first_row = a.seqs.first_row[n], len = a.seqs.num_tokens[n];
  if (len <= 0) return;
  if (slot < 0) {  // padding: zero rows so the output projection sees no garbage
    for (int idx = threadIdx.x; idx < len * kCols; idx += kThreads) {
      a.y[(static_cast<int64_t>(first_row) + idx / kCols) * H * kD + h * kD + col0 + idx % kCols] =
          __float2bfloat16(0.f);
    }
    return;
  }
  // Chunk c holds the sequence's tokens c * kC - lead .. (absolute chunks: the first is partial).
  const int lead = a.seqs.first_pos[n] % kC;
  const int num_chunks = (lead + len + kC - 1) / kC;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, q = lane & 3;  // fragment row / column group
  const int d0 = (warp % kDGroups) * 16;  // this warp's value columns (of the block's)
  const int half = warp / kDGroups;       // ... and features i0 .. i0 + K/2
  const int i0 = half * (K / 2);
  const float* v_src = a.qkvg + (H + Hkv) * kD + kv * kD + col0;  // + row * ld
  const float* gate_src = a.qkvg + (H + 2 * Hkv) * kD + h;   // + row * ld
  TS* s_glob = reinterpret_cast<TS*>(a.state.pool + slot * a.state.slot_bytes + a.state.s_offset) +
               static_cast<int64_t>(h) * K * kD;
  TS* z_glob = reinterpret_cast<TS*>(a.state.pool + slot * a.state.slot_bytes + a.state.z_offset) +
               static_cast<int64_t>(h) * K;

  // st[j]: S^T rows d0+g, d0+g+8 by features i0+8j+2q, +1 (fp32 for the whole sequence).
  float st[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int i = i0 + 8 * j + 2 * q, d = col0 + d0 + g;
    st[j][0] = Load(s_glob, i * kD + d);
    st[j][1] = Load(s_glob, (i + 1) * kD + d);
    st[j][2] = Load(s_glob, i * kD + d + 8);
    st[j][3] = Load(s_glob, (i + 1) * kD + d + 8);
  }
  for (int i = threadIdx.x; i < K; i += kThreads) sm.z[i] = Load(z_glob, i);

  // Token t of chunk c: sequence token c * kC - lead + t, valid when inside the sequence.
  auto token = [&](int c, int t) { return c * kC - lead + t; };
  auto valid = [&](int rel) { return rel >= 0 && rel < len; };
  // v is copied as fp32 from the qkvg rows (16 bytes at a time when the rows allow) and
  // converted to bf16 by the thread that copied it, once the copy is done.
  const bool v_vec = a.ld % 4 == 0 && reinterpret_cast<uintptr_t>(v_src) % 16 == 0;
  auto load_chunk = [&](int c, int stage) {
    for (int idx = threadIdx.x; idx < kC * (K / 8); idx += kThreads) {
      const int t = idx / (K / 8), col = idx % (K / 8) * 8, rel = token(c, t);
      const int64_t row = valid(rel) ? (static_cast<int64_t>(first_row) + rel) * H + h : 0;
      CpAsync16(&sm.q[stage][t][col], a.fq + row * K + col, valid(rel));
      CpAsync16(&sm.k[stage][t][col], a.fk + row * K + col, valid(rel));
    }
    for (int idx = threadIdx.x; idx < kC * (kCols / 4); idx += kThreads) {
      const int t = idx / (kCols / 4), col = idx % (kCols / 4) * 4, rel = token(c, t);
      const float* src = v_src + (valid(rel) ? (static_cast<int64_t>(first_row) + rel) * a.ld : 0) + col;
      if (v_vec) {
        CpAsync16(&sm.v_in[t][col], src, valid(rel));
      } else {
        for (int e = 0; e < 4; ++e) CpAsync4(&sm.v_in[t][col + e], src + e, valid(rel));
      }
    }
    if (warp == 0) {  // the tokens warp 0's lanes read in the gate scan (so no barrier is needed)
      for (int t = 2 * lane; t < 2 * lane + 2; ++t) {
        const int rel = token(c, t);
        CpAsync4(&sm.gate[stage][t], gate_src + (valid(rel) ? (static_cast<int64_t>(first_row) + rel) * a.ld : 0),
                 valid(rel));
      }
    }
    CpAsyncCommit();
  };
  auto convert_v = [&] {  // after the copy: this thread's v_in elements into sm.v
    CpAsyncWait<0>();
    for (int idx = threadIdx.x; idx < kC * (kCols / 4); idx += kThreads) {
      const int t = idx / (kCols / 4), col = idx % (kCols / 4) * 4;
      const float4 x = *reinterpret_cast<const float4*>(&sm.v_in[t][col]);
      *reinterpret_cast<uint2*>(&sm.v[t][col]) = {Pack(x.x, x.y), Pack(x.z, x.w)};
    }
  };
  load_chunk(0, 0);
  convert_v();

  for (int c = 0; c < num_chunks; ++c) {
    const int stage = c & 1;
    if (c + 1 < num_chunks) {
      load_chunk(c + 1, stage ^ 1);  // the stage chunk c-1 used: every warp is done with it
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    auto& sq = sm.q[stage];
    auto& sk = sm.k[stage];
    auto& sv = sm.v;

    // Warp 0: the cumulative log gate, two tokens per lane; tokens outside the sequence get gate 1.
    if (warp == 0) {
      float lg[2];
      for (int e = 0; e < 2; ++e) {
        const int rel = token(c, 2 * lane + e);
        const float x = valid(rel) ? sm.gate[stage][2 * lane + e] : INFINITY;
        lg[e] = fminf(x, 0.f) - log1pf(__expf(-fabsf(x)));  // log sigmoid(x), no overflow
      }
      float incl = lg[0] + lg[1];
      for (int o = 1; o < 32; o <<= 1) {
        const float u = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += u;
      }
      const float b0 = incl - lg[1], last = __shfl_sync(0xffffffffu, incl, 31);
      sm.b[2 * lane] = b0, sm.b[2 * lane + 1] = incl;
      sm.eb[2 * lane] = __expf(b0), sm.eb[2 * lane + 1] = __expf(incl);
      sm.w[2 * lane] = __expf(last - b0), sm.w[2 * lane + 1] = __expf(last - incl);
    }
    __syncthreads();  // the gates, v, and every thread's copies of this chunk
    // fq_t . z: eight threads per token, each K/8 features read 16 bytes at a time.
    if (a.dims.normalize) {
      for (int idx = threadIdx.x; idx < kC * 8; idx += kThreads) {  // whole warps every round
        const int t = idx >> 3, slice = idx & 7;
        float acc = 0.f;
#pragma unroll
        for (int i = slice * (K / 8); i < (slice + 1) * (K / 8); i += 8) {
          const uint4 raw = *reinterpret_cast<const uint4*>(&sq[t][i]);
          const __nv_bfloat162* q2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
          const float4 za = *reinterpret_cast<const float4*>(&sm.z[i]);
          const float4 zb = *reinterpret_cast<const float4*>(&sm.z[i + 4]);
          acc += __low2float(q2[0]) * za.x + __high2float(q2[0]) * za.y + __low2float(q2[1]) * za.z +
                 __high2float(q2[1]) * za.w + __low2float(q2[2]) * zb.x + __high2float(q2[2]) * zb.y +
                 __low2float(q2[3]) * zb.z + __high2float(q2[3]) * zb.w;
        }
        for (int o = 1; o < 8; o <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (slice == 0) sm.qz[t] = acc;
      }
    }

    // P: the 10 16x16 blocks of the 64x64 scores on or below the diagonal (the others are zero
    // and never read), block b = rb (rb + 1) / 2 + cb at rows 16 rb.., columns 16 cb.. (cb <= rb),
    // taken by warps b, b + kWarps, ... (at most 3 each).
    for (int blk = warp; blk < 10; blk += kWarps) {
      const int rb = (blk >= 1) + (blk >= 3) + (blk >= 6), cb = blk - rb * (rb + 1) / 2;
      const int tp0 = 16 * rb, sp0 = 16 * cb;
      float pacc[2][4] = {};
#pragma unroll
      for (int kk = 0; kk < K; kk += 16) {
        uint32_t af[4], bf[4];
        Ldsm4(af, &sq[tp0 + (lane & 7) + ((lane >> 3) & 1) * 8][kk + (lane >> 4) * 8]);
        Ldsm4(bf, &sk[sp0 + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8]);
        Mma(pacc[0], af, bf[0], bf[1]);
        Mma(pacc[1], af, bf[2], bf[3]);
      }
      float rowsum[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // rows g and g+8
          const int t = tp0 + g + 8 * r, s = sp0 + nt * 8 + 2 * q;
          const float p0 = s <= t ? pacc[nt][2 * r] * __expf(sm.b[t] - sm.b[s]) : 0.f;
          const float p1 = s + 1 <= t ? pacc[nt][2 * r + 1] * __expf(sm.b[t] - sm.b[s + 1]) : 0.f;
          const uint32_t packed = Pack(p0, p1);
          *reinterpret_cast<uint32_t*>(&sm.p[t][s]) = packed;
          // The denominator sums the rounded scores the numerator multiplies.
          const __nv_bfloat162 rounded = *reinterpret_cast<const __nv_bfloat162*>(&packed);
          rowsum[r] += __low2float(rounded) + __high2float(rounded);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        rowsum[r] += __shfl_xor_sync(0xffffffffu, rowsum[r], 1);
        rowsum[r] += __shfl_xor_sync(0xffffffffu, rowsum[r], 2);
        if (q == 0) sm.den_part[cb][tp0 + g + 8 * r] = rowsum[r];
      }
    }
    __syncthreads();  // P, its row sums and fq . z

    // y^T for this warp's columns and feature half: oacc[nt] = rows d0+g (+8), tokens 8nt+2q (+1).
    float oacc[8][4] = {};
#pragma unroll
    for (int j = 0; j < kTiles / 2; ++j) {  // inter-chunk: S^T fq_t, S^T as the A operand
      const uint32_t af[4] = {Pack(st[2 * j][0], st[2 * j][1]), Pack(st[2 * j][2], st[2 * j][3]),
                              Pack(st[2 * j + 1][0], st[2 * j + 1][1]),
                              Pack(st[2 * j + 1][2], st[2 * j + 1][3])};
#pragma unroll
      for (int nt = 0; nt < 8; nt += 2) {
        uint32_t bf[4];
        Ldsm4(bf, &sq[nt * 8 + (lane & 7) + (lane >> 4) * 8][i0 + 16 * j + ((lane >> 3) & 1) * 8]);
        Mma(oacc[nt], af, bf[0], bf[1]);
        Mma(oacc[nt + 1], af, bf[2], bf[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int t = nt * 8 + 2 * q;
      oacc[nt][0] *= sm.eb[t], oacc[nt][1] *= sm.eb[t + 1];
      oacc[nt][2] *= sm.eb[t], oacc[nt][3] *= sm.eb[t + 1];
    }
    if (half == 1) {  // hand this half's share to the partner warp
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) sm.out[nt * 8 + 2 * q + (e & 1)][d0 + g + 8 * (e >> 1)] = oacc[nt][e];
      }
      if (warp == kDGroups && a.dims.normalize) {  // one warp: 1 / den for the 64 tokens
        for (int t = lane; t < kC; t += 32) {
          float den = sm.den_part[0][t];  // + the blocks right of it up to the diagonal
          for (int cb = 1; cb <= t / 16; ++cb) den += sm.den_part[cb][t];
          den += sm.eb[t] * sm.qz[t] + 1e-6f;
          sm.inv_den[t] = 1.f / den;
        }
      }
    } else {  // intra-chunk: sum_s P[t, s] v_s with V^T (rows d0.., columns tokens) as A
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t vf[4];
        Ldsm4T(vf, &sv[16 * j + (lane & 7) + (lane >> 4) * 8][d0 + ((lane >> 3) & 1) * 8]);
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          if (16 * j > nt * 8 + 15) continue;  // tokens s all after t: P is zero there
          uint32_t bf[4];
          Ldsm4(bf, &sm.p[nt * 8 + (lane & 7) + (lane >> 4) * 8][16 * j + ((lane >> 3) & 1) * 8]);
          Mma(oacc[nt], vf, bf[0], bf[1]);
          Mma(oacc[nt + 1], vf, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // the second half's share and 1 / den
    if (half == 0) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int t = nt * 8 + 2 * q + (e & 1);
          float& cell = sm.out[t][d0 + g + 8 * (e >> 1)];
          cell = (oacc[nt][e] + cell) * (a.dims.normalize ? sm.inv_den[t] : 1.f);
        }
      }
    }

    // This thread's y_add cells of the output below (8 columns each), loaded now so that the
    // state update hides their latency.
    constexpr int kOutItems = kC * (kCols / 8) / kThreads;
    float4 add[kOutItems][2] = {};
#pragma unroll
    for (int it = 0; it < kOutItems; ++it) {
      const int idx = threadIdx.x + it * kThreads, t = idx / (kCols / 8), rel = token(c, t);
      if (a.y_add == nullptr || !valid(rel)) continue;
      const float* src = a.y_add + ((static_cast<int64_t>(first_row) + rel) * H + h) * kD + col0 + idx % (kCols / 8) * 8;
      add[it][0] = *reinterpret_cast<const float4*>(src);
      add[it][1] = *reinterpret_cast<const float4*>(src + 4);
    }

    // State update: S^T = e^B S^T + V^T diag(w) K, w_s = e^{B - b_s} folded into V^T.
    const float decay = sm.eb[kC - 1];
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      for (int e = 0; e < 4; ++e) st[j][e] *= decay;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t vf[4];
      Ldsm4T(vf, &sv[16 * j + (lane & 7) + (lane >> 4) * 8][d0 + ((lane >> 3) & 1) * 8]);
      const int s = 16 * j + 2 * q;
      vf[0] = Scale(vf[0], sm.w[s], sm.w[s + 1]);
      vf[1] = Scale(vf[1], sm.w[s], sm.w[s + 1]);
      vf[2] = Scale(vf[2], sm.w[s + 8], sm.w[s + 9]);
      vf[3] = Scale(vf[3], sm.w[s + 8], sm.w[s + 9]);
#pragma unroll
      for (int nt = 0; nt < kTiles; nt += 2) {
        uint32_t bf[4];
        Ldsm4T(bf, &sk[16 * j + (lane & 7) + ((lane >> 3) & 1) * 8][i0 + nt * 8 + (lane >> 4) * 8]);
        Mma(st[nt], vf, bf[0], bf[1]);
        Mma(st[nt + 1], vf, bf[2], bf[3]);
      }
    }
    // The chunk boundary: the state rounded as a store between steps would round it.
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      for (int e = 0; e < 4; ++e) st[j][e] = Rounded<TS>(st[j][e]);
    }
    // z = e^B z + sum_s w_s fk_s, one feature per thread (only this thread touches z[i] here).
    for (int i = threadIdx.x; i < K; i += kThreads) {
      float acc = decay * sm.z[i];
      for (int s = 0; s < kC; ++s) acc += sm.w[s] * __bfloat162float(sk[s][i]);
      sm.z[i] = Rounded<TS>(acc);
    }
    __syncthreads();  // the output rows are complete, and every warp is done with sv

    // out = bf16(y + y_add), 8 columns per thread, for the tokens of the sequence (y_add zero
    // when absent).
#pragma unroll
    for (int it = 0; it < kOutItems; ++it) {
      const int idx = threadIdx.x + it * kThreads, t = idx / (kCols / 8), col = idx % (kCols / 8) * 8;
      const int rel = token(c, t);
      if (!valid(rel)) continue;
      const int64_t off = ((static_cast<int64_t>(first_row) + rel) * H + h) * kD + col0 + col;
      float4 lo = *reinterpret_cast<const float4*>(&sm.out[t][col]);
      float4 hi = *reinterpret_cast<const float4*>(&sm.out[t][col + 4]);
      const float4 alo = add[it][0], ahi = add[it][1];
      lo.x += alo.x, lo.y += alo.y, lo.z += alo.z, lo.w += alo.w;
      hi.x += ahi.x, hi.y += ahi.y, hi.z += ahi.z, hi.w += ahi.w;
      const uint4 packed = {Pack(lo.x, lo.y), Pack(lo.z, lo.w), Pack(hi.x, hi.y), Pack(hi.z, hi.w)};
      *reinterpret_cast<uint4*>(a.y + off) = packed;
    }
    if (c + 1 < num_chunks) convert_v();  // the next chunk's v (read after the next barrier)
  }

#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int i = i0 + 8 * j + 2 * q, d = col0 + d0 + g;
    Store(s_glob, i * kD + d, st[j][0]);
    Store(s_glob, (i + 1) * kD + d, st[j][1]);
    Store(s_glob, i * kD + d + 8, st[j][2]);
    Store(s_glob, (i + 1) * kD + d + 8, st[j][3]);
  }
  if (part == 0) {  // every part holds the same z
    for (int i = threadIdx.x; i < K; i += kThreads) Store(z_glob, i, sm.z[i]);
  }
}

template <int K, int kSplit, typename TS>
cudaError_t Launch(const ChunkedPrefillArgs& args, cudaStream_t stream) {
  const int bytes = static_cast<int>(sizeof(Smem<K, Part<kSplit>::kCols>));
  const cudaError_t e = cudaFuncSetAttribute(ChunkedPrefillKernel<K, kSplit, TS>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return e;
  const dim3 grid(args.dims.heads * kSplit, args.num_seqs);
  ChunkedPrefillKernel<K, kSplit, TS><<<grid, Part<kSplit>::kThreads, bytes, stream>>>(args);
  return cudaGetLastError();
}

template <int K, typename TS>
cudaError_t LaunchSplit(const ChunkedPrefillArgs& args, int split, cudaStream_t stream) {
  if (split == 4) return Launch<K, 4, TS>(args, stream);
  if (split == 2) return Launch<K, 2, TS>(args, stream);
  return Launch<K, 1, TS>(args, stream);
}

template <int K>
cudaError_t LaunchFor(const ChunkedPrefillArgs& args, int split, cudaStream_t stream) {
  if (args.state.state_type == StoreType::kF32) return LaunchSplit<K, float>(args, split, stream);
  return LaunchSplit<K, __nv_bfloat16>(args, split, stream);
}

// The most blocks per (sequence, head), of 4 and 2, that still fit the launch in one block per
// SM; 1 for launches that fill the GPU anyway (a split repeats the scores in every block).
cudaError_t SplitFor(int pairs, int& split) {
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  split = pairs * 4 <= sms ? 4 : pairs * 2 <= sms ? 2 : 1;
  return e;
}

}  // namespace

cudaError_t LizardChunkedPrefill(const ChunkedPrefillArgs& args, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  const LizardDims& d = args.dims;
  if (d.head_dim != kD || d.kv_heads <= 0 || d.heads % d.kv_heads != 0) return cudaErrorInvalidValue;
  if (d.features != 64 && d.features != 128) return cudaErrorInvalidValue;
  int split = args.split;
  if (split == 0) {
    const cudaError_t e = SplitFor(d.heads * args.num_seqs, split);
    if (e != cudaSuccess) return e;
  } else if (split != 1 && split != 2 && split != 4) {
    return cudaErrorInvalidValue;
  }
  return d.features == 64 ? LaunchFor<128>(args, split, stream) : LaunchFor<256>(args, split, stream);
}

}  // namespace lizard::kernels
