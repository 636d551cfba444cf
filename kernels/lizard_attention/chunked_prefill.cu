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
#include <type_traits>

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

// The next chunk's v as copied from qkvg (fp32); with the output rows (fp32, the second feature
// half's share of y^T, then the normalised rows) for the kernels that compute y.
template <int kCols>
struct VIn {
  alignas(16) float v_in[kC][kCols];
};
template <int kCols>
struct VInOut : VIn<kCols> {
  alignas(16) float out[kC][kCols + kOutPad];
};
// The output pass converts its one chunk's v before it writes any row: one room for both, which
// leaves the room of a scan block beside it on the SM.
template <int kCols>
struct alignas(16) VInOrOut {
  union {
    float v_in[kC][kCols];
    float out[kC][kCols + kOutPad];
  };
};

// What carries the state: k, v and the gates of a chunk (kStages: this chunk and the next), z.
template <int K, int kCols, int kStages, class Rows = VIn<kCols>>
struct StateSmem : Rows {
  alignas(16) __nv_bfloat16 k[kStages][kC][K + kPad];
  alignas(16) __nv_bfloat16 v[kC][kCols + kPad];  // one stage, converted from v_in
  alignas(16) float z[K];
  float gate[kStages][kC];  // gate logits
  float b[kC];              // cumulative log gate within the chunk
  float eb[kC];             // e^{b_t}
  float w[kC];              // e^{B - b_s}
};

// ... and what the output adds.
template <int K, int kCols, int kStages>
struct Smem : StateSmem<K, kCols, kStages, std::conditional_t<kStages == 1, VInOrOut<kCols>, VInOut<kCols>>> {
  alignas(16) __nv_bfloat16 q[kStages][kC][K + kPad];
  alignas(16) __nv_bfloat16 p[kC][kC + kPad];  // masked, decayed scores
  float qz[kC];           // fq_t . z (z at the chunk's start)
  float den_part[4][kC];  // row sums of P, one per 16-column block on or left of the diagonal
  float inv_den[kC];
};

__device__ __forceinline__ uint32_t Scale(uint32_t x, float lo, float hi) {
  const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(&x);
  return Pack(__low2float(v) * lo, __high2float(v) * hi);
}

// The chunks of sequence n in the two-pass numbering (none for padding or empty sequences).
__device__ __forceinline__ int SeqChunks(const SeqMeta& seqs, int n) {
  const int len = seqs.num_tokens[n];
  return seqs.slot[n] < 0 || len <= 0 ? 0 : (seqs.first_pos[n] % kC + len + kC - 1) / kC;
}

// The two passes overlap (programmatic dependent launch): the scan releases each chunk's start
// state with a flag, the output block acquires it (gpu scope: the blocks run on other SMs).
__device__ __forceinline__ uint32_t LoadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void StoreRelease(uint32_t* p, uint32_t v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// One block's share of a (sequence, head) and the steps of a chunk, written once for every form
// and kernel so that all of them run the same operations in the same order.
template <int K, int kSplit, typename TS>
struct Block {
  static constexpr int kCols = Part<kSplit>::kCols, kDGroups = Part<kSplit>::kDGroups;
  static constexpr int kWarps = Part<kSplit>::kWarps, kThreads = Part<kSplit>::kThreads;
  static constexpr int kTiles = K / 16;  // 8-wide column tiles of this warp's half of S^T
  static constexpr int kOutItems = kC * (kCols / 8) / kThreads;  // y cells (8 columns) per thread
  using Rows = __nv_bfloat16[kC][K + kPad];

  const ChunkedPrefillArgs& a;
  int h, H, col0, slot, first_row, len, lead, num_chunks;
  int warp, lane, g, q, d0, half, i0;
  const float* v_src;
  const float* gate_src;
  bool v_vec;

  // Block `part` of kSplit for head h of sequence n (Part<kSplit>'s columns and warps).
  __device__ Block(const ChunkedPrefillArgs& args, int head, int part, int n) : a(args), h(head) {
    H = a.dims.heads;
    const int Hkv = a.dims.kv_heads, kv = h / (H / Hkv);
    col0 = part * kCols;  // the block's first value column
    slot = a.seqs.slot[n], first_row = a.seqs.first_row[n], len = a.seqs.num_tokens[n];
    // Chunk c holds the sequence's tokens c * kC - lead .. (absolute chunks: the first is partial).
    lead = a.seqs.first_pos[n] % kC;
    num_chunks = (lead + len + kC - 1) / kC;
    warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    g = lane >> 2, q = lane & 3;      // fragment row / column group
    d0 = (warp % kDGroups) * 16;      // this warp's value columns (of the block's)
    half = warp / kDGroups;           // ... and features i0 .. i0 + K/2
    i0 = half * (K / 2);
    v_src = a.qkvg + (H + Hkv) * kD + kv * kD + col0;  // + row * ld
    gate_src = a.qkvg + (H + 2 * Hkv) * kD + h;        // + row * ld
    v_vec = a.ld % 4 == 0 && reinterpret_cast<uintptr_t>(v_src) % 16 == 0;
  }

  // Token t of chunk c: sequence token c * kC - lead + t, valid when inside the sequence.
  __device__ int token(int c, int t) const { return c * kC - lead + t; }
  __device__ bool valid(int rel) const { return rel >= 0 && rel < len; }
  __device__ int64_t row(int rel) const { return static_cast<int64_t>(first_row) + rel; }

  __device__ TS* s_glob() const {
    return reinterpret_cast<TS*>(a.state.pool + slot * a.state.slot_bytes + a.state.s_offset) +
           static_cast<int64_t>(h) * K * kD;
  }
  __device__ TS* z_glob() const {
    return reinterpret_cast<TS*>(a.state.pool + slot * a.state.slot_bytes + a.state.z_offset) +
           static_cast<int64_t>(h) * K;
  }

  // Padding: zero rows so the output projection sees no garbage.
  __device__ void ZeroRows() const {
    for (int idx = threadIdx.x; idx < len * kCols; idx += kThreads) {
      a.y[(row(idx / kCols)) * H * kD + h * kD + col0 + idx % kCols] = __float2bfloat16(0.f);
    }
  }

  // st[j]: S^T rows d0+g, d0+g+8 by features i0+8j+2q, +1 (fp32), from / to the pool.
  __device__ void LoadState(float (&st)[kTiles][4]) const {
    const TS* s = s_glob();
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const int i = i0 + 8 * j + 2 * q, d = col0 + d0 + g;
      st[j][0] = Load(s, i * kD + d);
      st[j][1] = Load(s, (i + 1) * kD + d);
      st[j][2] = Load(s, i * kD + d + 8);
      st[j][3] = Load(s, (i + 1) * kD + d + 8);
    }
  }
  __device__ void StoreState(const float (&st)[kTiles][4]) const {
    TS* s = s_glob();
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      const int i = i0 + 8 * j + 2 * q, d = col0 + d0 + g;
      Store(s, i * kD + d, st[j][0]);
      Store(s, (i + 1) * kD + d, st[j][1]);
      Store(s, i * kD + d + 8, st[j][2]);
      Store(s, (i + 1) * kD + d + 8, st[j][3]);
    }
  }
  // The A fragment of k step j of the inter-chunk product: S^T rounded to bf16.
  __device__ static void PackState(const float (&st)[kTiles][4], int j, uint32_t (&af)[4]) {
    af[0] = Pack(st[2 * j][0], st[2 * j][1]), af[1] = Pack(st[2 * j][2], st[2 * j][3]);
    af[2] = Pack(st[2 * j + 1][0], st[2 * j + 1][1]), af[3] = Pack(st[2 * j + 1][2], st[2 * j + 1][3]);
  }

  // Two-pass scratch (layout in chunked_prefill.h): this warp's fragments of chunk gc's S, and z.
  __device__ uint4* scratch_s(int gc) const {
    const int64_t words = static_cast<int64_t>(K) * kD / 8;  // uint4 per (chunk, head)
    return reinterpret_cast<uint4*>(a.scratch) + (static_cast<int64_t>(gc) * H + h) * words +
           (((col0 + d0) / 16 * 2 + half) * (K / 32)) * 32 + lane;
  }
  __device__ float* scratch_z(int gc) const {
    const int64_t s_bytes = static_cast<int64_t>(a.scratch_chunks) * H * K * kD * 2;
    return reinterpret_cast<float*>(static_cast<char*>(a.scratch) + s_bytes) + (static_cast<int64_t>(gc) * H + h) * K;
  }
  // ... and its ready flags, one per scan block of the head.
  __device__ uint32_t* scratch_ready(int gc) const {
    const int64_t sz_bytes = static_cast<int64_t>(a.scratch_chunks) * H * K * (kD * 2 + 4);
    return reinterpret_cast<uint32_t*>(static_cast<char*>(a.scratch) + sz_bytes) +
           (static_cast<int64_t>(gc) * H + h) * kTwoPassScanParts;
  }

  // z[first .. first + count), one feature per thread: from the pool, to the pool, and the z
  // update z = e^B z + sum_s w_s fk_s rounded as stored (only the owning thread touches z[i]).
  template <class S>
  __device__ void LoadZ(S& sm, int first, int count) const {
    for (int i = first + threadIdx.x; i < first + count; i += kThreads) sm.z[i] = Load(z_glob(), i);
  }
  template <class S>
  __device__ void StoreZ(const S& sm, int first, int count) const {
    for (int i = first + threadIdx.x; i < first + count; i += kThreads) Store(z_glob(), i, sm.z[i]);
  }
  template <class S>
  __device__ void UpdateZ(S& sm, const Rows& sk, int first, int count) const {
    const float decay = sm.eb[kC - 1];
    for (int i = first + threadIdx.x; i < first + count; i += kThreads) {
      // Explicit roundings: the kernels' loops may unroll differently, the fusing may not.
      float acc = __fmul_rn(decay, sm.z[i]);
      for (int s = 0; s < kC; ++s) acc = __fmaf_rn(sm.w[s], __bfloat162float(sk[s][i]), acc);
      sm.z[i] = Rounded<TS>(acc);
    }
  }

  // Copies chunk c's k (and q when kWithQ), v and gate logits into `stage` (cp.async, one group).
  // v is copied as fp32 from the qkvg rows (16 bytes at a time when the rows allow) and converted
  // to bf16 by the thread that copied it, once the copy is done (ConvertV).
  template <bool kWithQ, class S>
  __device__ void LoadChunk(S& sm, int c, int stage) const {
    for (int idx = threadIdx.x; idx < kC * (K / 8); idx += kThreads) {
      const int t = idx / (K / 8), col = idx % (K / 8) * 8, rel = token(c, t);
      const int64_t r = valid(rel) ? row(rel) * H + h : 0;
      if constexpr (kWithQ) CpAsync16(&sm.q[stage][t][col], a.fq + r * K + col, valid(rel));
      CpAsync16(&sm.k[stage][t][col], a.fk + r * K + col, valid(rel));
    }
    for (int idx = threadIdx.x; idx < kC * (kCols / 4); idx += kThreads) {
      const int t = idx / (kCols / 4), col = idx % (kCols / 4) * 4, rel = token(c, t);
      const float* src = v_src + (valid(rel) ? row(rel) * a.ld : 0) + col;
      if (v_vec) {
        CpAsync16(&sm.v_in[t][col], src, valid(rel));
      } else {
        for (int e = 0; e < 4; ++e) CpAsync4(&sm.v_in[t][col + e], src + e, valid(rel));
      }
    }
    if (warp == 0) {  // the tokens warp 0's lanes read in the gate scan (so no barrier is needed)
      for (int t = 2 * lane; t < 2 * lane + 2; ++t) {
        const int rel = token(c, t);
        CpAsync4(&sm.gate[stage][t], gate_src + (valid(rel) ? row(rel) * a.ld : 0), valid(rel));
      }
    }
    CpAsyncCommit();
  }
  template <class S>
  __device__ void ConvertV(S& sm) const {  // after the copy: this thread's v_in elements into sm.v
    CpAsyncWait<0>();
    for (int idx = threadIdx.x; idx < kC * (kCols / 4); idx += kThreads) {
      const int t = idx / (kCols / 4), col = idx % (kCols / 4) * 4;
      const float4 x = *reinterpret_cast<const float4*>(&sm.v_in[t][col]);
      *reinterpret_cast<uint2*>(&sm.v[t][col]) = {Pack(x.x, x.y), Pack(x.z, x.w)};
    }
  }

  // Warp 0: the cumulative log gate, two tokens per lane; tokens outside the sequence get gate 1.
  template <class S>
  __device__ void GateScan(S& sm, int c, int stage) const {
    if (warp != 0) return;
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

  // fq_t . z: eight threads per token, each K/8 features read 16 bytes at a time.
  template <class S>
  __device__ void QDotZ(S& sm, const Rows& sq) const {
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
  template <class S>
  __device__ void Scores(S& sm, const Rows& sq, const Rows& sk) const {
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
  }

  // y of the chunk into sm.out (normalised), after P, its row sums and fq . z are in shared
  // memory: y^T = e^{b_t} S^T fq_t (S^T's A fragments from state(j, af)) + V^T P^T, the second
  // feature half's share added to the first's. Contains a barrier.
  // oacc[nt] = rows d0+g (+8), tokens 8nt+2q (+1).
  template <class S, class StateFrag>
  __device__ void Output(S& sm, const StateFrag& state, const Rows& sq) const {
    float oacc[8][4] = {};
#pragma unroll
    for (int j = 0; j < kTiles / 2; ++j) {  // inter-chunk: S^T fq_t, S^T as the A operand
      uint32_t af[4];
      state(j, af);
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
        Ldsm4T(vf, &sm.v[16 * j + (lane & 7) + (lane >> 4) * 8][d0 + ((lane >> 3) & 1) * 8]);
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
  }

  // This thread's y_add cells of chunk c's output (8 columns each; zero when absent), loaded
  // early so that other work hides their latency.
  __device__ void LoadYAdd(int c, float4 (&add)[kOutItems][2]) const {
#pragma unroll
    for (int it = 0; it < kOutItems; ++it) {
      add[it][0] = add[it][1] = make_float4(0.f, 0.f, 0.f, 0.f);
      const int idx = threadIdx.x + it * kThreads, t = idx / (kCols / 8), rel = token(c, t);
      if (a.y_add == nullptr || !valid(rel)) continue;
      const float* src = a.y_add + (row(rel) * H + h) * kD + col0 + idx % (kCols / 8) * 8;
      add[it][0] = *reinterpret_cast<const float4*>(src);
      add[it][1] = *reinterpret_cast<const float4*>(src + 4);
    }
  }
  // out = bf16(y + y_add), 8 columns per thread, for the tokens of the sequence.
  template <class S>
  __device__ void StoreY(const S& sm, int c, const float4 (&add)[kOutItems][2]) const {
#pragma unroll
    for (int it = 0; it < kOutItems; ++it) {
      const int idx = threadIdx.x + it * kThreads, t = idx / (kCols / 8), col = idx % (kCols / 8) * 8;
      const int rel = token(c, t);
      if (!valid(rel)) continue;
      const int64_t off = (row(rel) * H + h) * kD + col0 + col;
      float4 lo = *reinterpret_cast<const float4*>(&sm.out[t][col]);
      float4 hi = *reinterpret_cast<const float4*>(&sm.out[t][col + 4]);
      const float4 alo = add[it][0], ahi = add[it][1];
      lo.x += alo.x, lo.y += alo.y, lo.z += alo.z, lo.w += alo.w;
      hi.x += ahi.x, hi.y += ahi.y, hi.z += ahi.z, hi.w += ahi.w;
      const uint4 packed = {Pack(lo.x, lo.y), Pack(lo.z, lo.w), Pack(hi.x, hi.y), Pack(hi.z, hi.w)};
      *reinterpret_cast<uint4*>(a.y + off) = packed;
    }
  }

  // State update: S^T = e^B S^T + V^T diag(w) K, w_s = e^{B - b_s} folded into V^T, then the
  // chunk boundary: the state rounded as a store between steps would round it.
  template <class S>
  __device__ void UpdateState(float (&st)[kTiles][4], const S& sm, const Rows& sk) const {
    const float decay = sm.eb[kC - 1];
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      for (int e = 0; e < 4; ++e) st[j][e] *= decay;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t vf[4];
      Ldsm4T(vf, &sm.v[16 * j + (lane & 7) + (lane >> 4) * 8][d0 + ((lane >> 3) & 1) * 8]);
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
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      for (int e = 0; e < 4; ++e) st[j][e] = Rounded<TS>(st[j][e]);
    }
  }
};

// The one-pass form: the kSplit blocks of a (sequence, head) each walk all its chunks.
template <int K, int kSplit, typename TS>
__global__ void __launch_bounds__(Part<kSplit>::kThreads, 1) ChunkedPrefillKernel(ChunkedPrefillArgs a) {
  using B = Block<K, kSplit, TS>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<K, B::kCols, 2>& sm = *reinterpret_cast<Smem<K, B::kCols, 2>*>(smem_raw);
  // Block x = h kSplit + part: the parts of one (sequence, head) run side by side and share
  // their q and k reads in L2.
  const int part = blockIdx.x % kSplit;
  const B b(a, blockIdx.x / kSplit, part, blockIdx.y);
  if (b.len <= 0) return;
  if (b.slot < 0) return b.ZeroRows();

  float st[B::kTiles][4];
  b.LoadState(st);
  b.LoadZ(sm, 0, K);
  b.template LoadChunk<true>(sm, 0, 0);
  b.ConvertV(sm);

  for (int c = 0; c < b.num_chunks; ++c) {
    const int stage = c & 1;
    if (c + 1 < b.num_chunks) {
      b.template LoadChunk<true>(sm, c + 1, stage ^ 1);  // the stage chunk c-1 used: every warp is done with it
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    b.GateScan(sm, c, stage);
    __syncthreads();  // the gates, v, and every thread's copies of this chunk
    if (a.dims.normalize) b.QDotZ(sm, sm.q[stage]);
    b.Scores(sm, sm.q[stage], sm.k[stage]);
    __syncthreads();  // P, its row sums and fq . z
    b.Output(sm, [&](int j, uint32_t(&af)[4]) { B::PackState(st, j, af); }, sm.q[stage]);
    float4 add[B::kOutItems][2];
    b.LoadYAdd(c, add);  // hidden by the state update
    b.UpdateState(st, sm, sm.k[stage]);
    b.UpdateZ(sm, sm.k[stage], 0, K);
    __syncthreads();  // the output rows are complete, and every warp is done with sm.v
    b.StoreY(sm, c, add);
    if (c + 1 < b.num_chunks) b.ConvertV(sm);  // the next chunk's v (read after the next barrier)
  }
  b.StoreState(st);
  if (part == 0) b.StoreZ(sm, 0, K);  // every part holds the same z
}

// Two-pass, first pass: the state alone, the kSplit blocks of a (sequence, head) each walking its
// chunks for D / kSplit value columns and K / kSplit features of z; every chunk's starting state
// goes to the scratch, the final one to the pool.
template <int K, int kSplit, typename TS>
__global__ void __launch_bounds__(Part<kSplit>::kThreads) StateScanKernel(ChunkedPrefillArgs a) {
  using B = Block<K, kSplit, TS>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  StateSmem<K, B::kCols, 2>& sm = *reinterpret_cast<StateSmem<K, B::kCols, 2>*>(smem_raw);
  const int part = blockIdx.x % kSplit, n = blockIdx.y;
  const B b(a, blockIdx.x / kSplit, part, n);
  if (b.len <= 0) return;
  if (b.slot < 0) return b.ZeroRows();
  int base = 0;  // the sequence's first chunk in the scratch
  for (int m = 0; m < n; ++m) base += SeqChunks(a.seqs, m);
  constexpr int kZ = K / kSplit;  // this block's features of z
  const int z0 = part * kZ;
  static_assert(kSplit == kTwoPassScanParts && kZ < B::kThreads);
  // This block's ready flags start clear (whatever the scratch held) before the output pass may
  // start: it starts once every scan block has passed LetNextStart, so every scan block is
  // resident by then and a waiting output block never holds an SM a scan block needs.
  for (int c = threadIdx.x; c < b.num_chunks; c += B::kThreads) b.scratch_ready(base + c)[part] = 0;
  __threadfence();
  __syncthreads();
  LetNextStart();

  float st[B::kTiles][4];
  b.LoadState(st);
  b.LoadZ(sm, z0, kZ);
  b.template LoadChunk<false>(sm, 0, 0);
  b.ConvertV(sm);
  for (int c = 0; c < b.num_chunks; ++c) {
    const int stage = c & 1;
    if (c + 1 < b.num_chunks) {
      b.template LoadChunk<false>(sm, c + 1, stage ^ 1);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    b.GateScan(sm, c, stage);
    // The state at the chunk's start for the output pass: S as the output's A fragments.
    uint4* s_out = b.scratch_s(base + c);
#pragma unroll
    for (int j = 0; j < B::kTiles / 2; ++j) {
      uint32_t af[4];
      B::PackState(st, j, af);
      s_out[j * 32] = make_uint4(af[0], af[1], af[2], af[3]);
    }
    float* z_out = b.scratch_z(base + c);
    for (int i = z0 + threadIdx.x; i < z0 + kZ; i += B::kThreads) z_out[i] = sm.z[i];
    __syncthreads();  // the gates, v, and every thread's copies of this chunk
    b.UpdateState(st, sm, sm.k[stage]);
    b.UpdateZ(sm, sm.k[stage], z0, kZ);
    // Chunk c's start state is out (every thread wrote its share before the barrier above); a
    // thread UpdateZ leaves idle says so, late enough that its fence finds the writes done.
    if (threadIdx.x == B::kThreads - 1) StoreRelease(b.scratch_ready(base + c) + part, 1);
    __syncthreads();  // every warp is done with sm.v and this stage
    if (c + 1 < b.num_chunks) b.ConvertV(sm);
  }
  b.StoreState(st);
  b.StoreZ(sm, z0, kZ);
}

// Two-pass, second pass: block (h, gc) computes chunk gc's output from its starting state, with
// the one-pass form's warps of split 1 (the whole D; halves added in the same order). Launched as
// a dependent of the scan, it first computes P (no state needed), then waits for the chunk's
// ready flags. 88 registers a thread (512 threads) leave room for a scan block (<= 152) on the SM.
template <int K, typename TS>
__global__ void __maxnreg__(88) ChunkOutputKernel(ChunkedPrefillArgs a) {
  using B = Block<K, 1, TS>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<K, kD, 1>& sm = *reinterpret_cast<Smem<K, kD, 1>*>(smem_raw);
  // The grid's last block waits for the whole scan, so that the launch ends after it (the work
  // after it reads the pool's final state).
  const bool last = blockIdx.x == gridDim.x - 1 && blockIdx.y == gridDim.y - 1;
  int n = 0, c = blockIdx.y;  // the chunk's sequence, and its chunk there
  for (; n < a.num_seqs; ++n) {
    const int chunks = SeqChunks(a.seqs, n);
    if (c < chunks) break;
    c -= chunks;
  }
  if (n == a.num_seqs) {  // past the launch's chunks (the grid is a bound)
    if (last) WaitForPrevious();
    return;
  }
  const B b(a, blockIdx.x, 0, n);
  const int gc = blockIdx.y;
  b.template LoadChunk<true>(sm, c, 0);
  b.ConvertV(sm);
  b.GateScan(sm, c, 0);
  __syncthreads();  // the gates, v and every thread's copies
  b.Scores(sm, sm.q[0], sm.k[0]);
  if (threadIdx.x == B::kThreads - 1) {  // a warp Scores leaves idle (10 blocks, 16 warps)
    const uint32_t* ready = b.scratch_ready(gc);
    for (int p = 0; p < kTwoPassScanParts; ++p) {
      while (LoadAcquire(ready + p) != 1) __nanosleep(256);
    }
  }
  __syncthreads();  // P, its row sums, and the chunk's start state
  // From L2 (ld.global.cg): the scan wrote them during this launch.
  uint4 sf[B::kTiles / 2];
  const uint4* s_in = b.scratch_s(gc);
#pragma unroll
  for (int j = 0; j < B::kTiles / 2; ++j) sf[j] = __ldcg(s_in + j * 32);
  float4 add[B::kOutItems][2];
  b.LoadYAdd(c, add);
  if (a.dims.normalize) {
    const float* z_in = b.scratch_z(gc);
    for (int i = threadIdx.x; i < K; i += B::kThreads) sm.z[i] = __ldcg(z_in + i);
    __syncthreads();  // z
    b.QDotZ(sm, sm.q[0]);
  }
  __syncthreads();  // fq . z
  b.Output(sm, [&](int j, uint32_t(&af)[4]) { af[0] = sf[j].x, af[1] = sf[j].y, af[2] = sf[j].z, af[3] = sf[j].w; },
           sm.q[0]);
  __syncthreads();  // the output rows are complete
  b.StoreY(sm, c, add);
  if (last) WaitForPrevious();
}

// dependent: a programmatic dependent launch (common.cuh's LaunchDependent), which may start as
// soon as every block of the kernel before it has called LetNextStart (or ended).
template <class Kernel>
cudaError_t Start(Kernel kernel, dim3 grid, int threads, int bytes, const ChunkedPrefillArgs& args,
                  cudaStream_t stream, bool dependent = false) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  // All the SM's room as shared memory (an SM's split is set when it is idle): an output block
  // then fits beside a scan block whichever started first.
  if (e == cudaSuccess) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
  }
  if (e != cudaSuccess) return e;
  if (dependent) return LaunchDependent(kernel, grid, threads, bytes, stream, args);
  kernel<<<grid, threads, bytes, stream>>>(args);
  return cudaGetLastError();
}

template <int K, int kSplit, typename TS>
cudaError_t OnePass(const ChunkedPrefillArgs& args, cudaStream_t stream) {
  return Start(ChunkedPrefillKernel<K, kSplit, TS>, dim3(args.dims.heads * kSplit, args.num_seqs),
               Part<kSplit>::kThreads, sizeof(Smem<K, Part<kSplit>::kCols, 2>), args, stream);
}

// The scan's blocks per (sequence, head): its blocks are latency bound, so more of them, each
// with fewer columns, shorten the walk.
constexpr int kScanSplit = kTwoPassScanParts;

template <int K, typename TS>
cudaError_t TwoPass(const ChunkedPrefillArgs& args, cudaStream_t stream) {
  const cudaError_t e = Start(StateScanKernel<K, kScanSplit, TS>, dim3(args.dims.heads * kScanSplit, args.num_seqs),
                              Part<kScanSplit>::kThreads, sizeof(StateSmem<K, Part<kScanSplit>::kCols, 2>), args,
                              stream);
  if (e != cudaSuccess) return e;
  return Start(ChunkOutputKernel<K, TS>, dim3(args.dims.heads, TwoPassChunks(args.total_tokens, args.num_seqs)),
               Part<1>::kThreads, sizeof(Smem<K, kD, 1>), args, stream, /*dependent=*/true);
}

template <int K, typename TS>
cudaError_t LaunchForm(const ChunkedPrefillArgs& args, bool two_pass, int split, cudaStream_t stream) {
  if (two_pass) return TwoPass<K, TS>(args, stream);
  if (split == 4) return OnePass<K, 4, TS>(args, stream);
  if (split == 2) return OnePass<K, 2, TS>(args, stream);
  return OnePass<K, 1, TS>(args, stream);
}

template <int K>
cudaError_t LaunchFor(const ChunkedPrefillArgs& args, bool two_pass, int split, cudaStream_t stream) {
  if (args.state.state_type == StoreType::kF32) return LaunchForm<K, float>(args, two_pass, split, stream);
  return LaunchForm<K, __nv_bfloat16>(args, two_pass, split, stream);
}

cudaError_t Sms(int& sms) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return e;
}

// One-pass: the most blocks per (sequence, head), of 4 and 2, that still fit the launch in one
// block per SM; 1 for launches that fill the GPU anyway (a split repeats the scores in every block).
int SplitFor(int pairs, int sms) { return pairs * 4 <= sms ? 4 : pairs * 2 <= sms ? 2 : 1; }

// Two-pass when the scan's blocks fit one per SM (few pairs, so a one-pass walk leaves the GPU
// mostly idle) and the sequences average 4 chunks or more (the output pass's parallelism); it
// costs a round trip of every chunk's state through the scratch; its output pass runs beside the
// scan only where an output block fits next to the scan blocks of an SM. Measured on the H200 at
// 32 heads, 2048 tokens each: 1 sequence 0.198 ms vs 0.338 one-pass (2F = 256), 0.113 vs 0.228
// (2F = 128); 2 sequences 0.372 vs 0.332 (2F = 128: 0.198 vs 0.221, fp32 state only measured).
bool TwoPassFor(const ChunkedPrefillArgs& args, int sms) {
  const int pairs = args.dims.heads * args.num_seqs;
  return args.num_seqs <= kTwoPassMaxSeqs && pairs * kScanSplit <= sms && args.total_tokens >= 4 * kC * args.num_seqs;
}

}  // namespace

cudaError_t LizardChunkedPrefill(const ChunkedPrefillArgs& args, cudaStream_t stream) {
  if (args.num_seqs == 0) return cudaSuccess;
  const LizardDims& d = args.dims;
  if (d.head_dim != kD || d.kv_heads <= 0 || d.heads % d.kv_heads != 0) return cudaErrorInvalidValue;
  if (d.features != 64 && d.features != 128) return cudaErrorInvalidValue;
  if (args.split != 0 && args.split != 1 && args.split != 2 && args.split != 4) return cudaErrorInvalidValue;
  // Room for the two-pass form: scratch for every chunk the launch can have.
  const bool room = args.scratch != nullptr && args.total_tokens > 0 &&
                    TwoPassChunks(args.total_tokens, args.num_seqs) <= args.scratch_chunks;
  if (args.form == ChunkedForm::kTwoPass && !room) return cudaErrorInvalidValue;
  int sms = 0;
  if (args.form == ChunkedForm::kAuto || args.split == 0) {
    const cudaError_t e = Sms(sms);
    if (e != cudaSuccess) return e;
  }
  const bool two_pass =
      args.form == ChunkedForm::kTwoPass || (args.form == ChunkedForm::kAuto && room && TwoPassFor(args, sms));
  const int split = args.split != 0 ? args.split : SplitFor(d.heads * args.num_seqs, sms);
  return d.features == 64 ? LaunchFor<128>(args, two_pass, split, stream)
                          : LaunchFor<256>(args, two_pass, split, stream);
}

}  // namespace lizard::kernels
