// Feature-map logits of the Lizard layers: each of the 2H maps multiplies a head vector (a query
// head, or the kv head of a query head) by that map's [D, F] matrix, for every token. Each output
// is summed over d in an order fixed by the shape alone, whatever the tokens sharing the launch
// (batch invariance; a library GEMM may pick another kernel, hence another summation order, for
// another T). The shapes of the prefill path (D 128, F 64 or 128) take its 3xTF32 tensor-core
// logits (prefill_feature_maps.cu: a row's bits depend on its own inputs only); every other shape
// runs the fp32 kernel below.
#include "kernels/common.cuh"
#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {
namespace {

constexpr int kParts = 16;          // d is summed in kParts contiguous runs, then added in order
constexpr int kFeatureTile = 32;    // features per block (fewer when F is smaller)
constexpr int kMaxHeadDim = 256;

// grid (2H, feature tiles, token blocks), kParts * tile threads: thread (part, f) sums feature f
// over its run of d for kTokensPerBlock tokens (tokens sharing one read of the map): 8 for short
// steps (a single decode token runs this too), 16 for long ones. The block size changes no
// output's summation order.
template <int kTokensPerBlock>
__global__ void FeatureMapLogitsKernel(const float* qkvg, int ld, int T, int heads, int group, int D, int F,
                                       const float* fmap_q, const float* fmap_k, float* logits) {
  __shared__ float xs[kTokensPerBlock][kMaxHeadDim];
  __shared__ float partial[kParts][kTokensPerBlock][kFeatureTile];
  const int i = blockIdx.x;  // map index: q head i, or (i >= H) the key map of query head i - H
  const bool key = i >= heads;
  const int h = key ? i - heads : i;
  const float* w = (key ? fmap_k : fmap_q) + static_cast<int64_t>(h) * D * F;
  const int column = key ? heads * D + (h / group) * D : h * D;  // the head vector in a qkvg row
  const int first = blockIdx.z * kTokensPerBlock;
  const int n = min(kTokensPerBlock, T - first);
  for (int e = threadIdx.x; e < kTokensPerBlock * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    xs[r][d] = r < n ? qkvg[static_cast<int64_t>(first + r) * ld + column + d] : 0.f;
  }
  __syncthreads();
  const int tile = min(F, kFeatureTile);
  const int lf = threadIdx.x % tile, part = threadIdx.x / tile;
  const int f = blockIdx.y * tile + lf;
  const int d0 = part * D / kParts, d1 = (part + 1) * D / kParts;
  float acc[kTokensPerBlock] = {};
  if (f < F) {
#pragma unroll 4
    for (int d = d0; d < d1; ++d) {
      const float wf = w[d * F + f];
#pragma unroll
      for (int r = 0; r < kTokensPerBlock; ++r) acc[r] = fmaf(xs[r][d], wf, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kTokensPerBlock; ++r) partial[part][r][lf] = acc[r];
  __syncthreads();
  const int stride = 2 * heads * F;
  for (int e = threadIdx.x; e < n * tile; e += blockDim.x) {
    const int r = e / tile, ff = e % tile;
    if (blockIdx.y * tile + ff >= F) continue;
    float sum = partial[0][r][ff];
    for (int p = 1; p < kParts; ++p) sum += partial[p][r][ff];
    logits[static_cast<int64_t>(first + r) * stride + i * F + blockIdx.y * tile + ff] = sum;
  }
}

}  // namespace

cudaError_t FeatureMapLogits(const float* qkvg, int ld, int T, int heads, int kv_heads, int head_dim,
                             int features, const float* fmap_q, const float* fmap_k, float* logits,
                             cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (head_dim > kMaxHeadDim || kv_heads <= 0 || heads % kv_heads != 0) return cudaErrorInvalidValue;
  const LizardDims dims{.heads = heads, .kv_heads = kv_heads, .head_dim = head_dim, .features = features};
  if (PrefillFeatureMapsSupport(dims)) {
    PrefillFeatureMapsArgs maps;
    maps.dims = dims;
    maps.qkvg = qkvg, maps.ld = ld, maps.rows = T;
    maps.fmap_q = fmap_q, maps.fmap_k = fmap_k;
    maps.logits = logits;
    return LizardPrefillFeatureMaps(maps, stream);
  }
  const int tile = std::min(features, kFeatureTile);
  const auto launch = [&](auto kernel, int tokens_per_block) {
    const dim3 grid(2 * heads, CeilDiv(features, tile), CeilDiv(T, tokens_per_block));
    kernel<<<grid, kParts * tile, 0, stream>>>(qkvg, ld, T, heads, heads / kv_heads, head_dim, features, fmap_q,
                                               fmap_k, logits);
    return cudaGetLastError();
  };
  constexpr int kLongStep = 256;  // tokens from which the bigger token block pays
  return T >= kLongStep ? launch(FeatureMapLogitsKernel<16>, 16) : launch(FeatureMapLogitsKernel<8>, 8);
}

}  // namespace lizard::kernels
