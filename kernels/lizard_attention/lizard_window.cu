// The token-parallel half of a Lizard attention layer: per (token, query head) one block computes
// the Hedgehog feature maps of q and k (softmaxes of the logits of a preceding batched GEMM), the
// sigmoid forget gate, and the anchor window attention with meta-memory sinks (times
// window_factor). Decode tokens (one per sequence) also advance the normaliser z and write their
// K/V into the ring here; see lizard_attention.h for the split of work.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/lizard_attention/lizard_device.cuh"

namespace lizard::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kKeyLanes = 4;  // lanes sharing one key's dot product

// out[0..F) = softmax(a), out[F..2F) = softmax(-a) for a[0..F) in shared memory. The max and
// the min, then the two sums, are reduced together (fewer barriers: this runs per token).
__device__ void HedgehogSoftmax(const float* a, int F, float* out, float* red) {
  float mx = -INFINITY, neg_mn = -INFINITY;
  for (int f = threadIdx.x; f < F; f += blockDim.x) mx = fmaxf(mx, a[f]), neg_mn = fmaxf(neg_mn, -a[f]);
  BlockMax2(mx, neg_mn, red);
  const float mn = -neg_mn;
  float sp = 0.f, sm = 0.f;
  for (int f = threadIdx.x; f < F; f += blockDim.x) {
    sp += __expf(a[f] - mx);
    sm += __expf(mn - a[f]);
  }
  BlockSum2(sp, sm, red);
  for (int f = threadIdx.x; f < F; f += blockDim.x) {
    const float x = a[f];
    out[f] = __expf(x - mx) / sp;
    out[F + f] = __expf(mn - x) / sm;
  }
}

template <typename TS, typename TW>
__global__ void __launch_bounds__(kThreads) LizardWindowKernel(
    LizardDims dims, const float* qkvg, int ld, const float* krot, int krot_ld,
    const double* inv_freq, TokenMeta tokens, int row0, LizardParams params, LizardStateRef state,
    LizardScratch scratch) {
  // Grid (H, rows): consecutive blocks work on the same token, so on the same slot's memory.
  const int h = blockIdx.x, r = row0 + blockIdx.y;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, F = dims.features;
  const int w = dims.window, m = dims.meta, F2 = 2 * F;
  const int g = h / (H / Hkv);
  const int64_t th = static_cast<int64_t>(r) * H + h;  // (token, head) index
  float* y = scratch.y + th * D;

  const int slot = tokens.slot[r];
  if (slot < 0) {  // padding row
    for (int d = threadIdx.x; d < D; d += blockDim.x) y[d] = 0.f;
    if (threadIdx.x == 0) scratch.gamma[th] = 0.f, scratch.den[th] = 1.f;
    for (int f = threadIdx.x; f < F2; f += blockDim.x) scratch.fq[th * F2 + f] = scratch.fk[th * F2 + f] = 0.f;
    return;
  }
  const int pos = tokens.position[r];
  const int first_row = tokens.first_row[r], first_pos = tokens.first_pos[r];

  extern __shared__ float smem[];
  float* sq = smem;            // [D] raw q
  float* sqa = sq + D;         // [D] q for the window (after RoPE when window_rope)
  float* sa = sqa + D;         // [2F] feature-map logits, q then k
  float* sfq = sa + F2;        // [2F]
  float* sfk = sfq + F2;       // [2F]
  float* sp = sfk + F2;        // [w] window scores, then probabilities
  float* partial = sp + w;     // [kThreads] partial sums of y_anchor
  __shared__ float red[64];

  // Everything this block reads that depends on nothing else is loaded up front, so the loads
  // overlap instead of queueing behind the barriers of the feature-map softmaxes.
  const float* row = qkvg + static_cast<int64_t>(r) * ld;
  for (int d = threadIdx.x; d < D; d += blockDim.x) sq[d] = row[h * D + d];
  // Feature maps (RoPE-free: from the raw q and k) from the precomputed logits: sa = [q | k].
  const float* logits = params.fmap_logits + static_cast<int64_t>(r) * 2 * H * F + h * F;
  for (int f = threadIdx.x; f < F; f += blockDim.x) {
    sa[f] = logits[f] + (params.fmap_q_bias ? params.fmap_q_bias[h * F + f] : 0.f);
    sa[F + f] = logits[H * F + f] + (params.fmap_k_bias ? params.fmap_k_bias[h * F + f] : 0.f);
  }
  const float gamma = 1.f / (1.f + __expf(-row[H * D + 2 * Hkv * D + h]));
  // A decode token advances z here (LizardNormalizer does multi-token sequences); F2 <= blockDim.
  const bool single = tokens.single[r] != 0;
  TS* z = SlotPart<TS>(state, slot, state.z_offset) + static_cast<int64_t>(h) * F2;
  float zr[2] = {0.f, 0.f};  // features threadIdx.x and threadIdx.x + kNormalizerThreads
  if (single && threadIdx.x < kNormalizerThreads) {
    for (int k = 0; k < 2; ++k) {
      const int f = threadIdx.x + k * kNormalizerThreads;
      if (f < F2) zr[k] = Load(z, f);
    }
  }
  __shared__ float zsum[kNormalizerThreads / 32];
  __syncthreads();
  HedgehogSoftmax(sa, F, sfq, red);
  HedgehogSoftmax(sa + F, F, sfk, red);
  __syncthreads();
  for (int f = threadIdx.x; f < F2; f += blockDim.x) {
    scratch.fq[th * F2 + f] = sfq[f];
    scratch.fk[th * F2 + f] = sfk[f];
  }
  if (threadIdx.x == 0) scratch.gamma[th] = gamma;
  if (single && threadIdx.x < kNormalizerThreads) {  // whole warps
    const float part = WarpSum(NormalizerStep<TS>(zr, gamma, sfk, sfq, F2));
    for (int k = 0; k < 2; ++k) {
      const int f = threadIdx.x + k * kNormalizerThreads;
      if (f < F2) Store(z, f, zr[k]);
    }
    if ((threadIdx.x & 31) == 0) zsum[threadIdx.x >> 5] = part;
  }
  __syncthreads();
  if (single && threadIdx.x == 0) scratch.den[th] = NormalizerDenominator(zsum, dims.normalize);

  // Window query.
  const int half = D / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = sq[i], b = sq[i + half];
    float c = 1.f, s = 0.f;
    if (dims.window_rope) {
      const double angle = fmod(static_cast<double>(pos) * inv_freq[i], 2.0 * 3.14159265358979323846);
      sincosf(static_cast<float>(angle), &s, &c);
    }
    sqa[i] = a * c - b * s;
    sqa[i + half] = b * c + a * s;
  }
  __syncthreads();

  // Scores over the window positions lo..pos, kKeyLanes lanes per key, each with a run of
  // independent loads in flight (the window is read from memory once per step).
  const int lo = max(0, pos - w + 1), nkeys = pos - lo + 1;
  const TW* ring_k = SlotPart<TW>(state, slot, state.k_offset) + static_cast<int64_t>(g) * w * D;
  const TW* ring_v = SlotPart<TW>(state, slot, state.v_offset) + static_cast<int64_t>(g) * w * D;
  const float scale = rsqrtf(static_cast<float>(D));
  const int sub = threadIdx.x % kKeyLanes;
  // Every lane of a warp runs the same number of iterations (the shuffles need all of them).
  const int key_groups = blockDim.x / kKeyLanes;
  for (int base = 0; base < nkeys; base += key_groups) {
    const int kk = base + static_cast<int>(threadIdx.x) / kKeyLanes;
    float dot = 0.f;
    if (kk < nkeys) {
      const int j = lo + kk;
      if (j == pos) {  // the token's own key, as a decode step sees it
        const float* kj = krot + static_cast<int64_t>(r) * krot_ld + g * D;
#pragma unroll 8
        for (int d = sub; d < D; d += kKeyLanes) dot += sqa[d] * kj[d];
      } else if (j >= first_pos) {  // an earlier token of this chunk: as the ring will hold it
        const float* kj = krot + static_cast<int64_t>(first_row + j - first_pos) * krot_ld + g * D;
#pragma unroll 8
        for (int d = sub; d < D; d += kKeyLanes) dot += sqa[d] * Rounded<TW>(kj[d]);
      } else {
        const TW* kj = ring_k + static_cast<int64_t>(j % w) * D;
#pragma unroll 8
        for (int d = sub; d < D; d += kKeyLanes) dot += sqa[d] * Load(kj, d);
      }
    }
    for (int o = kKeyLanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (kk < nkeys && sub == 0) sp[kk] = dot * scale;
  }
  __syncthreads();

  // Softmax over keys and sinks: the sinks join the max and the denominator only.
  const float* sinks = params.meta_logits + static_cast<int64_t>(h) * m;
  float mx = -INFINITY;
  for (int kk = threadIdx.x; kk < nkeys; kk += blockDim.x) mx = fmaxf(mx, sp[kk]);
  for (int i = threadIdx.x; i < m; i += blockDim.x) mx = fmaxf(mx, sinks[i]);
  mx = BlockMax(mx, red);  // finite: the current token is always in the window
  float sum = 0.f;
  for (int kk = threadIdx.x; kk < nkeys; kk += blockDim.x) sum += __expf(sp[kk] - mx);
  for (int i = threadIdx.x; i < m; i += blockDim.x) sum += __expf(sinks[i] - mx);
  sum = BlockSum(sum, red);
  for (int kk = threadIdx.x; kk < nkeys; kk += blockDim.x) sp[kk] = __expf(sp[kk] - mx) / sum;
  __syncthreads();

  const float alpha = params.window_factor[h];
  const float* vcur = qkvg + H * D + Hkv * D + g * D;  // + row * ld
  // y_anchor: thread (group kg, column col) sums every groups-th key; the groups are added after.
  // Keys before first_pos come from the ring, the rest from this step's rows, rounded as the ring
  // stores them except the token's own: a prompt gives the same bits in any chunking as decode.
  const int groups = blockDim.x / D;
  const int kg = threadIdx.x / D, col = threadIdx.x % D;
  if (kg < groups) {
    float acc = 0.f;
#pragma unroll 8
    for (int kk = kg; kk < nkeys; kk += groups) {
      const int j = lo + kk;
      const float v = j < first_pos ? Load(ring_v + static_cast<int64_t>(j % w) * D, col)
                      : j < pos     ? Rounded<TW>(vcur[static_cast<int64_t>(first_row + j - first_pos) * ld + col])
                                    : vcur[static_cast<int64_t>(r) * ld + col];
      acc += sp[kk] * v;
    }
    partial[kg * D + col] = acc;
  }
  __syncthreads();
  for (int dd = threadIdx.x; dd < D; dd += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < groups; ++i) acc += partial[i * D + dd];
    y[dd] = alpha * acc;
  }

  // A decode token's K/V go to ring row pos % w, which no block of this step reads (it holds
  // position pos - w, outside every window here). One query head per kv group writes.
  if (single && h % (H / Hkv) == 0) {
    TW* wk = SlotPart<TW>(state, slot, state.k_offset) + (static_cast<int64_t>(g) * w + pos % w) * D;
    TW* wv = SlotPart<TW>(state, slot, state.v_offset) + (static_cast<int64_t>(g) * w + pos % w) * D;
    const float* kr = krot + static_cast<int64_t>(r) * krot_ld + g * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      Store(wk, d, kr[d]);
      Store(wv, d, vcur[static_cast<int64_t>(r) * ld + d]);
    }
  }
}

template <typename TS, typename TW>
cudaError_t Launch(const LizardDims& dims, const float* qkvg, int ld, const float* krot, int krot_ld,
                   const double* inv_freq, const TokenMeta& tokens, int row0, int rows,
                   const LizardParams& params, const LizardStateRef& state, const LizardScratch& scratch,
                   cudaStream_t stream) {
  const size_t shmem = sizeof(float) * (2 * dims.head_dim + 6 * dims.features + dims.window + kThreads);
  if (shmem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(LizardWindowKernel<TS, TW>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shmem));
    if (e != cudaSuccess) return e;
  }
  LizardWindowKernel<TS, TW><<<dim3(dims.heads, rows), kThreads, shmem, stream>>>(
      dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, params, state, scratch);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LizardWindow(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                         int krot_ld, const double* inv_freq, const TokenMeta& tokens, int row0,
                         int rows, const LizardParams& params, const LizardStateRef& state,
                         const LizardScratch& scratch, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return WithStoreTypes(state, [&](auto ts, auto tw) {
    return Launch<decltype(ts), decltype(tw)>(dims, qkvg, ld, krot, krot_ld, inv_freq, tokens, row0, rows, params,
                                              state, scratch, stream);
  });
}

}  // namespace lizard::kernels
