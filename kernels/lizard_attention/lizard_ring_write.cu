// Stores the window keys/values of a step's sequences into their ring rows (p % w). A separate
// launch because the window kernels still read the ring rows these tokens replace. (A decode
// token's row was already written by LizardWindow; writing it again stores the same values.)
#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {
namespace {

constexpr int kRowsPerBlock = 8;

// grid (Hkv, sequences, row blocks): block z writes rows z*kRowsPerBlock.. of the sequence's last
// min(n, w) tokens (one-token prompt chunks included: the prefill path has no other writer).
template <typename TW>
__global__ void LizardRingWriteKernel(LizardDims dims, const float* qkvg, int ld, const float* krot,
                                      int krot_ld, SeqMeta seqs,
                                      LizardStateRef state) {
  const int g = blockIdx.x, s = blockIdx.y;
  const int slot = seqs.slot[s], n = seqs.num_tokens[s], first_row = seqs.first_row[s];
  if (slot < 0) return;
  const int H = dims.heads, Hkv = dims.kv_heads, D = dims.head_dim, w = dims.window;
  TW* ring_k = reinterpret_cast<TW*>(state.pool + slot * state.slot_bytes + state.k_offset) + static_cast<int64_t>(g) * w * D;
  TW* ring_v = reinterpret_cast<TW*>(state.pool + slot * state.slot_bytes + state.v_offset) + static_cast<int64_t>(g) * w * D;
  const int begin = max(0, n - w) + blockIdx.z * kRowsPerBlock;
  for (int t = begin; t < min(n, begin + kRowsPerBlock); ++t) {
    const int p = seqs.first_pos[s] + t;
    const int64_t r = first_row + t;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      Store(ring_k, static_cast<int64_t>(p % w) * D + d, krot[r * krot_ld + g * D + d]);
      Store(ring_v, static_cast<int64_t>(p % w) * D + d, qkvg[r * ld + H * D + Hkv * D + g * D + d]);
    }
  }
}

}  // namespace

cudaError_t LizardRingWrite(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                            int krot_ld, const SeqMeta& seqs,
                            int num_seqs, const LizardStateRef& state, cudaStream_t stream) {
  if (num_seqs == 0) return cudaSuccess;
  const dim3 grid(dims.kv_heads, num_seqs, CeilDiv(dims.window, kRowsPerBlock));
  if (state.window_type == StoreType::kF32) {
    LizardRingWriteKernel<float><<<grid, 128, 0, stream>>>(dims, qkvg, ld, krot, krot_ld, seqs, state);
  } else {
    LizardRingWriteKernel<__nv_bfloat16><<<grid, 128, 0, stream>>>(dims, qkvg, ld, krot, krot_ld, seqs, state);
  }
  return cudaGetLastError();
}

}  // namespace lizard::kernels
