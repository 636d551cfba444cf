// Feature maps of a step's prompt rows for the chunked prefill (chunked_prefill.h), in one kernel:
// the logits x W of the 2H maps on the tensor cores, then the Hedgehog softmaxes, bf16 out.
//
// The maps are exponentials of the logits, so the logits need fp32's accuracy: each fp32 operand
// is split into two tf32 values, x = hi + lo (lo holds the next 11 bits), and hi*lo + lo*hi +
// hi*hi go through m16n8k8 tf32 MMAs with fp32 accumulators (3xTF32; the dropped lo*lo is ~2^-22
// of a product). The softmaxes follow LizardWindow's HedgehogSoftmax (max and min, then the sums
// of __expf), then multiply by the sums' reciprocals (bf16 outputs).
//
// A row's bits depend only on its own inputs: an MMA's rows are independent, d is walked in one
// fixed order, and a row's softmax reduces over the four lanes that hold the row.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/mma.cuh"

namespace lizard::kernels {
namespace {

constexpr int kD = 128;
constexpr int kWarps = 4;
constexpr int kTileRows = 16 * kWarps;  // token rows per block: 16 per warp
constexpr int kXStride = kD + 4;        // floats; 4 mod 32 keeps the A-fragment loads conflict-free
constexpr int kLogitCols = 32;          // features per block when only the logits are wanted

// kCols: the features of the map a block holds (all F for the maps: a softmax spans them).
template <int kCols>
struct Smem {
  // The tile's head vectors; afterwards each warp stages its 16 bf16 output rows in its own rows.
  float x[kTileRows][kXStride];
  float w[kD][kCols + 8];  // the map; 8 mod 32 keeps the B-fragment loads conflict-free
};

// x = hi + lo in tf32.
__device__ __forceinline__ void SplitTf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = Tf32(x);
  lo = Tf32(x - __uint_as_float(hi));
}

inline bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 4 floats into shared memory: one 16-byte copy where the source allows, else four 4-byte ones.
__device__ __forceinline__ void Copy4(float* dst, const float* src, bool valid, bool vec) {
  if (vec) {
    CpAsync16(dst, src, valid);
  } else {
    for (int e = 0; e < 4; ++e) CpAsync4(dst + e, src + e, valid);
  }
}

// Block (tile of 64 rows, map i, feature block): i < H is the q map of head i, else the k map of
// head i - H. Warp w computes rows 16w .. 16w + 15 of the tile for the block's kCols features: all
// F for the maps (kMaps), else kLogitCols of them (more blocks for the few rows of a decode step;
// an output's products and their order do not depend on which block computes it).
template <int F, bool kMaps>
__global__ void __launch_bounds__(32 * kWarps, 2) PrefillFeatureMapsKernel(PrefillFeatureMapsArgs a, bool vec) {
  constexpr int kCols = kMaps ? F : kLogitCols;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem<kCols>& sm = *reinterpret_cast<Smem<kCols>*>(smem_raw);
  const int H = a.dims.heads, group = H / a.dims.kv_heads;
  const int i = blockIdx.y, f0 = blockIdx.z * kCols;
  const bool key = i >= H;
  const int h = key ? i - H : i;
  const int column = key ? H * kD + (h / group) * kD : h * kD;  // the head vector in a qkvg row
  const float* w = (key ? a.fmap_k : a.fmap_q) + static_cast<int64_t>(h) * kD * F + f0;
  const int row0 = blockIdx.x * kTileRows;

  for (int idx = threadIdx.x; idx < kD * kCols / 4; idx += blockDim.x) {
    const int d = idx / (kCols / 4), f = idx % (kCols / 4) * 4;
    Copy4(&sm.w[d][f], w + d * F + f, true, vec);
  }
  WaitForPrevious();  // the map above is a weight; the head vectors come from the step
  for (int idx = threadIdx.x; idx < kTileRows * kD / 4; idx += blockDim.x) {
    const int t = idx / (kD / 4), d = idx % (kD / 4) * 4;
    const bool valid = row0 + t < a.rows;  // rows past the launch are zeros (never written)
    Copy4(&sm.x[t][d], a.qkvg + (valid ? static_cast<int64_t>(row0 + t) * a.ld + column : 0) + d, valid, vec);
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();

  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3, r0 = 16 * (threadIdx.x >> 5);
  constexpr int kN = kCols / 8, kGroup = kN < 8 ? kN : 8;
  // acc[j]: logits of rows r0+g (0, 1) and r0+g+8 (2, 3), features 8j + 2q, +1.
  float acc[kN][4] = {};
#pragma unroll 2
  for (int k0 = 0; k0 < kD; k0 += 8) {
    uint32_t ah[4], al[4];
    SplitTf32(sm.x[r0 + g][k0 + q], ah[0], al[0]);
    SplitTf32(sm.x[r0 + g + 8][k0 + q], ah[1], al[1]);
    SplitTf32(sm.x[r0 + g][k0 + q + 4], ah[2], al[2]);
    SplitTf32(sm.x[r0 + g + 8][k0 + q + 4], ah[3], al[3]);
    // Per accumulator the small products first, then hi*hi; in groups of kGroup n-tiles so that
    // consecutive MMAs are independent (one accumulator's three would wait on each other).
#pragma unroll
    for (int j0 = 0; j0 < kN; j0 += kGroup) {
      uint32_t bh[kGroup][2], bl[kGroup][2];
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        SplitTf32(sm.w[k0 + q][8 * (j0 + j) + g], bh[j][0], bl[j][0]);
        SplitTf32(sm.w[k0 + q + 4][8 * (j0 + j) + g], bh[j][1], bl[j][1]);
      }
#pragma unroll
      for (int j = 0; j < kGroup; ++j) MmaTf32(acc[j0 + j], al, bh[j][0], bh[j][1]);
#pragma unroll
      for (int j = 0; j < kGroup; ++j) MmaTf32(acc[j0 + j], ah, bl[j][0], bl[j][1]);
#pragma unroll
      for (int j = 0; j < kGroup; ++j) MmaTf32(acc[j0 + j], ah, bh[j][0], bh[j][1]);
    }
  }

  const float* bias = key ? a.k_bias : a.q_bias;
  float mx[2] = {-INFINITY, -INFINITY}, mn[2] = {INFINITY, INFINITY};
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int f = f0 + 8 * j + 2 * q + (e & 1);
      if (bias != nullptr) acc[j][e] += bias[h * F + f];
      mx[e >> 1] = fmaxf(mx[e >> 1], acc[j][e]);
      mn[e >> 1] = fminf(mn[e >> 1], acc[j][e]);
    }
  }
  if (a.logits != nullptr) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + r0 + g + 8 * half;
      if (row >= a.rows) continue;
      float* out = a.logits + (static_cast<int64_t>(row) * 2 * H + i) * F + f0 + 2 * q;
#pragma unroll
      for (int j = 0; j < kN; ++j) *reinterpret_cast<float2*>(out + 8 * j) = make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
    }
  }
  if constexpr (!kMaps) return;  // the logits only (FeatureMapLogits for decode rows)
  // A row lives in the four lanes of a quad.
  float sp[2] = {0.f, 0.f}, sn[2] = {0.f, 0.f};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    for (int o = 1; o <= 2; o <<= 1) {
      mx[half] = fmaxf(mx[half], __shfl_xor_sync(0xffffffffu, mx[half], o));
      mn[half] = fminf(mn[half], __shfl_xor_sync(0xffffffffu, mn[half], o));
    }
  }
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) sp[e >> 1] += __expf(acc[j][e] - mx[e >> 1]), sn[e >> 1] += __expf(mn[e >> 1] - acc[j][e]);
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    for (int o = 1; o <= 2; o <<= 1) {
      sp[half] += __shfl_xor_sync(0xffffffffu, sp[half], o);
      sn[half] += __shfl_xor_sync(0xffffffffu, sn[half], o);
    }
  }

  // Stage the warp's 16 rows of [softmax(a), softmax(-a)] in its own x rows (only this warp read
  // them), then write each row's 4F bytes with 16-byte stores.
  constexpr int kOutStride = 2 * kXStride;  // bf16 per staged row
  __nv_bfloat16* staged = reinterpret_cast<__nv_bfloat16*>(&sm.x[r0][0]);
  // One division per row and sign, then products: the values are rounded to bf16, so the
  // reciprocal's extra fp32 ulp does not show (a division per value was ~15% of the instructions).
  float inv_sp[2], inv_sn[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) inv_sp[half] = 1.f / sp[half], inv_sn[half] = 1.f / sn[half];
  __syncwarp();
#pragma unroll
  for (int j = 0; j < kN; ++j) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float x0 = acc[j][2 * half], x1 = acc[j][2 * half + 1];
      __nv_bfloat16* row = staged + (g + 8 * half) * kOutStride + 8 * j + 2 * q;
      *reinterpret_cast<uint32_t*>(row) =
          Pack(__expf(x0 - mx[half]) * inv_sp[half], __expf(x1 - mx[half]) * inv_sp[half]);
      *reinterpret_cast<uint32_t*>(row + F) =
          Pack(__expf(mn[half] - x0) * inv_sn[half], __expf(mn[half] - x1) * inv_sn[half]);
    }
  }
  __syncwarp();
  __nv_bfloat16* out = key ? a.fk : a.fq;
  constexpr int kPieces = 2 * F / 8;  // 16-byte pieces of an output row
  for (int idx = lane; idx < 16 * kPieces; idx += 32) {
    const int t = idx / kPieces, c = idx % kPieces, row = row0 + r0 + t;
    if (row >= a.rows) continue;
    *reinterpret_cast<uint4*>(out + (static_cast<int64_t>(row) * H + h) * 2 * F + 8 * c) =
        *reinterpret_cast<const uint4*>(staged + t * kOutStride + 8 * c);
  }
}

template <int F, bool kMaps>
cudaError_t Launch(const PrefillFeatureMapsArgs& a, cudaStream_t stream) {
  constexpr int kCols = kMaps ? F : kLogitCols;
  const int bytes = static_cast<int>(sizeof(Smem<kCols>));
  const auto kernel = PrefillFeatureMapsKernel<F, kMaps>;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return e;
  const bool vec = a.ld % 4 == 0 && Aligned16(a.qkvg) && Aligned16(a.fmap_q) && Aligned16(a.fmap_k);
  const dim3 grid(CeilDiv(a.rows, kTileRows), 2 * a.dims.heads, F / kCols);
  return LaunchDependent(kernel, grid, 32 * kWarps, bytes, stream, a, vec);
}

}  // namespace

cudaError_t LizardPrefillFeatureMaps(const PrefillFeatureMapsArgs& args, cudaStream_t stream) {
  const LizardDims& d = args.dims;
  if (!PrefillFeatureMapsSupport(d) || !Aligned16(args.fq) || !Aligned16(args.fk) ||
      (args.fq == nullptr) != (args.fk == nullptr) || (args.fq == nullptr && args.logits == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (args.rows == 0) return cudaSuccess;
  if (args.fq == nullptr) return d.features == 64 ? Launch<64, false>(args, stream) : Launch<128, false>(args, stream);
  return d.features == 64 ? Launch<64, true>(args, stream) : Launch<128, true>(args, stream);
}

}  // namespace lizard::kernels
