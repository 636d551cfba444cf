// The window attention with sinks for prompt rows on tensor cores (see window_prefill.h), in the
// manner of FlashAttention-2: a block takes a query tile of 64 absolute positions for HB query
// heads of one kv head (4 warps of 16 rows per head, the K/V blocks in shared memory shared by
// the heads), and walks the key blocks of 64 absolute positions that can hold window keys of the
// tile, [tile_start - w + 1, tile_start + 64), in ascending order with an online softmax. Keys
// outside a query's window are masked to exact zeros, so a query's result depends only on its
// position and the key values, whatever the tile's other rows. The sinks are folded in at the end.
//
// Inputs are fp32 (and the ring bf16 or fp32): each key block is loaded 16 bytes per thread and
// converted to bf16 into shared memory between two barriers; the queries of all the tile's
// loads are issued before their first use. (Staging the next block raw with cp.async during the
// MMAs measured the same on the H200, with 64 KB more shared memory; so did 2 heads per block at
// 2 blocks per SM, slower.) Scores run in the base-2 domain (scaled by log2 e) with exp2f.
#include "kernels/lizard_attention/window_prefill.h"

#include "kernels/common.cuh"
#include "kernels/mma.cuh"

namespace lizard::kernels {
namespace {

constexpr int kTile = 64;  // query tiles and key blocks: absolute multiples of 64
constexpr int kD = 128;
constexpr int kMaxWindow = kMaxPrefillWindow;
// Padding per bf16 row: row strides become odd multiples of 16 bytes, so the 8 rows one
// ldmatrix reads fall in different banks.
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;

template <int HB>
struct Smem {
  alignas(16) __nv_bfloat16 q[HB][kTile][kD + kPad];  // the tile's queries after RoPE
  alignas(16) __nv_bfloat16 k[kTile][kD + kPad];      // the key block in use
  alignas(16) __nv_bfloat16 v[kTile][kD + kPad];
};

// Where the window key at position j of a sequence with positions first_pos..last_pos comes
// from: nowhere (outside every window of the sequence: zeros), its ring, or a row of the launch.
enum class KeyFrom { kNone, kRing, kRow };
__device__ __forceinline__ KeyFrom Source(int j, int first_pos, int last_pos, int w) {
  if (j < 0 || j > last_pos || j <= first_pos - w) return KeyFrom::kNone;
  return j < first_pos ? KeyFrom::kRing : KeyFrom::kRow;
}

// Eight values as bf16 operands (16 bytes): bf16(x) for every value, whether it comes from a
// launch row (fp32) or from the ring (which holds bf16(x), or x), so both give the same bits.
// Reads 16 bytes at a time where the source is 16-byte aligned.
__device__ __forceinline__ uint4 Bf16x8(const __nv_bfloat16* p, bool) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ uint4 Bf16x8(const float* p, bool aligned16) {
  float4 lo, hi;
  if (aligned16) {
    lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
  } else {
    lo = make_float4(p[0], p[1], p[2], p[3]), hi = make_float4(p[4], p[5], p[6], p[7]);
  }
  return {Pack(lo.x, lo.y), Pack(lo.z, lo.w), Pack(hi.x, hi.y), Pack(hi.z, hi.w)};
}

template <typename TW, int HB>
__global__ void __launch_bounds__(128 * HB, 1) WindowPrefillKernel(WindowPrefillArgs a, bool aligned16) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<HB>& sm = *reinterpret_cast<Smem<HB>*>(smem_raw);
  const int n = blockIdx.z;
  const int slot = a.seqs.slot[n], len = a.seqs.num_tokens[n];
  if (slot < 0 || len <= 0) return;
  const int first_pos = a.seqs.first_pos[n], first_row = a.seqs.first_row[n], last_pos = first_pos + len - 1;
  const int tile_start = (first_pos & ~(kTile - 1)) + kTile * blockIdx.x;
  if (tile_start > last_pos) return;
  const int H = a.dims.heads, G = H / a.dims.kv_heads, w = a.dims.window, m = a.dims.meta;
  const int g = blockIdx.y / (G / HB), h0 = g * G + blockIdx.y % (G / HB) * HB;

  // Key block k0.. into shared memory as the bf16 operands (keys from nowhere as zeros).
  auto load_block = [&](int k0) {
#pragma unroll 4
    for (int idx = threadIdx.x; idx < 2 * kTile * (kD / 8); idx += blockDim.x) {
      const int which = idx / (kTile * (kD / 8)), t = idx / (kD / 8) % kTile, c = idx % (kD / 8);  // K or V, key, 8 values
      const int j = k0 + t;
      const KeyFrom from = Source(j, first_pos, last_pos, w);
      uint4 out = {0u, 0u, 0u, 0u};
      if (from == KeyFrom::kRing) {
        const char* ring = a.state.pool + slot * a.state.slot_bytes + (which ? a.state.v_offset : a.state.k_offset);
        out = Bf16x8(reinterpret_cast<const TW*>(ring) + (static_cast<int64_t>(g) * w + j % w) * kD + 8 * c, true);
      } else if (from == KeyFrom::kRow) {
        const int64_t row = first_row + (j - first_pos);
        out = Bf16x8((which ? a.v + row * a.v_ld : a.k + row * a.k_ld) + g * kD + 8 * c, aligned16);
      }
      *reinterpret_cast<uint4*>(which ? &sm.v[t][8 * c] : &sm.k[t][8 * c]) = out;
    }
  };

  const int kb_first = max(0, tile_start - w + 1) / kTile, kb_last = tile_start / kTile;

  // Queries of the tile's positions, after RoPE (angles in double as in LizardWindow, reduced
  // with floor rather than fmod); rows outside the sequence are zeros (their outputs are not written).
  constexpr int kQIters = kTile * (kD / 2) / (128 * HB);  // (row, i) pairs per thread
  float x[kQIters][HB][2];
#pragma unroll
  for (int it = 0; it < kQIters; ++it) {  // every load in flight before the first use
    const int idx = threadIdx.x + it * 128 * HB, t = idx / (kD / 2), i = idx % (kD / 2), p = tile_start + t;
    const bool valid = p >= first_pos && p <= last_pos;
    const float* qrow = a.q + (first_row + static_cast<int64_t>(p - first_pos)) * a.q_ld + i;
#pragma unroll
    for (int hb = 0; hb < HB; ++hb) {
      x[it][hb][0] = valid ? qrow[(h0 + hb) * kD] : 0.f;
      x[it][hb][1] = valid ? qrow[(h0 + hb) * kD + kD / 2] : 0.f;
    }
  }
#pragma unroll
  for (int it = 0; it < kQIters; ++it) {
    const int idx = threadIdx.x + it * 128 * HB, t = idx / (kD / 2), i = idx % (kD / 2), p = tile_start + t;
    float c = 1.f, s = 0.f;
    if (a.dims.window_rope) {
      constexpr double kTwoPi = 2.0 * 3.14159265358979323846;
      double angle = static_cast<double>(p) * a.inv_freq[i];
      angle -= kTwoPi * floor(angle * (1.0 / kTwoPi));  // fmod's loop cost 10% of the kernel
      sincosf(static_cast<float>(angle), &s, &c);
    }
#pragma unroll
    for (int hb = 0; hb < HB; ++hb) {
      const float x0 = x[it][hb][0], x1 = x[it][hb][1];
      sm.q[hb][t][i] = __float2bfloat16(x0 * c - x1 * s);
      sm.q[hb][t][i + kD / 2] = __float2bfloat16(x1 * c + x0 * s);
    }
  }

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gr = lane >> 2, qc = lane & 3;           // fragment row / column group
  const int hb = warp / 4, r0 = 16 * (warp % 4);     // this warp's head and tile rows
  const int p0 = tile_start + r0;                    // position of its first row
  const float scale = rsqrtf(static_cast<float>(kD)) * kLog2e;
  float o[kD / 8][4] = {};  // y rows gr, gr + 8 by value columns 8 nt + 2 qc, +1 (unnormalised)
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};  // this thread's rows

  for (int kb = kb_first; kb <= kb_last; ++kb) {
    const int k0 = kb * kTile;
    __syncthreads();  // the queries are in; every warp is done with the previous block
    load_block(k0);
    __syncthreads();

    // The 16-key steps that hold keys of this warp's windows [p0 - w + 1, p0 + 15]; the others
    // are masked for all its rows, so skipping them changes no bit.
    bool need[4];
    bool any = false;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      need[ks] = k0 + 16 * ks + 15 >= p0 - w + 1 && k0 + 16 * ks <= p0 + 15;
      any = any || need[ks];
    }
    if (!any) continue;

    float s[kTile / 8][4] = {};  // scores: rows gr, gr + 8 by keys 8 nt + 2 qc, +1
#pragma unroll
    for (int kk = 0; kk < kD; kk += 16) {
      uint32_t af[4];
      Ldsm4(af, &sm.q[hb][r0 + (lane & 7) + ((lane >> 3) & 1) * 8][kk + (lane >> 4) * 8]);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        if (!need[ks]) continue;
        uint32_t bf[4];
        Ldsm4(bf, &sm.k[16 * ks + (lane & 7) + (lane >> 4) * 8][kk + ((lane >> 3) & 1) * 8]);
        Mma(s[2 * ks], af, bf[0], bf[1]);
        Mma(s[2 * ks + 1], af, bf[2], bf[3]);
      }
    }

    // Mask to the window, then the online softmax (a row with no key yet keeps max -inf and
    // base 0, so no inf - inf).
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = p0 + gr + 8 * r;
      float bmax = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kTile / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = k0 + 8 * nt + 2 * qc + e;
          float& x = s[nt][2 * r + e];
          x = key <= row && key > row - w ? x * scale : -INFINITY;
          bmax = fmaxf(bmax, x);
        }
      }
      bmax = fmaxf(bmax, __shfl_xor_sync(0xffffffffu, bmax, 1));
      bmax = fmaxf(bmax, __shfl_xor_sync(0xffffffffu, bmax, 2));
      const float m_new = fmaxf(m_run[r], bmax);
      base[r] = m_new == -INFINITY ? 0.f : m_new;
      const float corr = exp2f(m_run[r] - base[r]);
      m_run[r] = m_new;
      l_run[r] *= corr;
#pragma unroll
      for (int nt = 0; nt < kD / 8; ++nt) o[nt][2 * r] *= corr, o[nt][2 * r + 1] *= corr;
    }

    // P as bf16 A fragments (keys 16 ks.. as the reduction); l sums the rounded P the
    // numerator multiplies.
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if (!need[ks]) continue;
      uint32_t pa[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {  // (row gr | gr + 8) x (keys 2 qc | 8 + 2 qc)
        const int r = f & 1;
        const float* x = &s[2 * ks + (f >> 1)][2 * r];
        pa[f] = Pack(exp2f(x[0] - base[r]), exp2f(x[1] - base[r]));
        const __nv_bfloat162 rounded = *reinterpret_cast<const __nv_bfloat162*>(&pa[f]);
        l_run[r] += __low2float(rounded) + __high2float(rounded);
      }
#pragma unroll
      for (int nt = 0; nt < kD / 8; nt += 2) {
        uint32_t bf[4];
        Ldsm4T(bf, &sm.v[16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8][8 * nt + (lane >> 4) * 8]);
        Mma(o[nt], pa, bf[0], bf[1]);
        Mma(o[nt + 1], pa, bf[2], bf[3]);
      }
    }
  }

  // Sinks join the max and the denominator: M = max(m, sinks), l = l e^{m - M} + sum e^{t - M}.
  const int h = h0 + hb;
  const float* sinks = a.meta_logits + static_cast<int64_t>(h) * m;
  const float alpha = a.window_factor[h];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int p = p0 + gr + 8 * r;
    if (p < first_pos || p > last_pos) continue;  // the row's own key makes m finite below
    float mf = m_run[r];
    for (int i = 0; i < m; ++i) mf = fmaxf(mf, sinks[i] * kLog2e);
    const float keep = exp2f(m_run[r] - mf);
    float den = l * keep;
    for (int i = 0; i < m; ++i) den += exp2f(sinks[i] * kLog2e - mf);
    const float coef = alpha * keep / den;
    float* yrow = a.y + ((first_row + static_cast<int64_t>(p - first_pos)) * H + h) * kD + 2 * qc;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      *reinterpret_cast<float2*>(yrow + 8 * nt) = make_float2(o[nt][2 * r] * coef, o[nt][2 * r + 1] * coef);
    }
  }
}

template <typename TW, int HB>
cudaError_t Launch(const WindowPrefillArgs& a, cudaStream_t stream) {
  const int bytes = static_cast<int>(sizeof(Smem<HB>));
  const cudaError_t e =
      cudaFuncSetAttribute(WindowPrefillKernel<TW, HB>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return e;
  // 16-byte loads need 16-byte aligned rows (otherwise 4-byte ones).
  const bool aligned16 = a.k_ld % 4 == 0 && a.v_ld % 4 == 0 && reinterpret_cast<uintptr_t>(a.k) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(a.v) % 16 == 0;
  const int G = a.dims.heads / a.dims.kv_heads;
  const dim3 grid(a.max_tiles, a.dims.kv_heads * (G / HB), a.num_seqs);
  WindowPrefillKernel<TW, HB><<<grid, 128 * HB, bytes, stream>>>(a, aligned16);
  return cudaGetLastError();
}

template <typename TW>
cudaError_t LaunchHeads(const WindowPrefillArgs& a, cudaStream_t stream) {
  const int G = a.dims.heads / a.dims.kv_heads;
  if (G % 4 == 0) return Launch<TW, 4>(a, stream);
  if (G % 2 == 0) return Launch<TW, 2>(a, stream);
  return Launch<TW, 1>(a, stream);
}

}  // namespace

cudaError_t LizardWindowPrefill(const WindowPrefillArgs& args, cudaStream_t stream) {
  const LizardDims& d = args.dims;
  if (d.head_dim != kD || d.window < 1 || d.window > kMaxWindow || d.meta < 0 || d.kv_heads <= 0 ||
      d.heads % d.kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  if (args.num_seqs == 0 || args.max_tiles == 0) return cudaSuccess;
  if (args.state.window_type == StoreType::kF32) return LaunchHeads<float>(args, stream);
  return LaunchHeads<__nv_bfloat16>(args, stream);
}

}  // namespace lizard::kernels
