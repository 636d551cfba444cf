// Chunked prefill of the gated linear attention half of Lizard attention (the paper's
// hardware-aware form), standalone: not yet called by the CUDA backend.
//
// For each sequence n (tokens cu_seqlens[n] .. cu_seqlens[n+1]-1, all sequences in one launch)
// and query head h (kv head g = h / (H / Hkv)), with gamma_t = sigmoid(gate_logit[t, h]):
//   S_t = gamma_t S_{t-1} + fk_t v_t^T            S [2F, D], fp32, starts at state_s[n, h]
//   z_t = gamma_t z_{t-1} + fk_t                  z [2F],    fp32, starts at state_z[n, h]
//   y_t = (fq_t S_t) / (fq_t . z_t + 1e-6)        (just fq_t S_t when !normalize)
// which is engine/cpu/ops.h GlaStep token by token. On return state_s / state_z hold each
// sequence's final S and z (updated in place).
//
// Layouts (row-major, T = cu_seqlens[num_seqs] tokens):
//   fq, fk      [T, H, 2F] bf16  feature-mapped q and k (phi_k is per query head)
//   v           [T, Hkv, D] bf16
//   gate_logit  [T, H] fp32
//   state_s     [num_seqs, H, 2F, D] fp32;  state_z [num_seqs, H, 2F] fp32
//   y           [T, H, D] bf16
// Limits: D = 128, 2F = 128 or 256 (cudaErrorInvalidValue otherwise). Shared memory per block:
// 150 KB at 2F = 128, 216 KB at 2F = 256 (Hopper; an sm_80 GPU runs 2F = 128 only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lizard::kernels {

struct ChunkedPrefillArgs {
  const __nv_bfloat16* fq = nullptr;
  const __nv_bfloat16* fk = nullptr;
  const __nv_bfloat16* v = nullptr;
  const float* gate_logit = nullptr;
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1], device memory for the kernel
  int num_seqs = 0;
  int heads = 0, kv_heads = 0, head_dim = 0, f2 = 0;
  bool normalize = true;
  float* state_s = nullptr;
  float* state_z = nullptr;
  __nv_bfloat16* y = nullptr;
};

// Tokens per chunk: chunk boundaries sit at multiples of it from each sequence's first token.
constexpr int kGlaChunk = 64;

// Launches the chunked kernel: grid (H, num_seqs), one block walks its sequence's chunks in
// order, the state in registers (fp32), each chunk as bf16 tensor-core products.
cudaError_t LizardChunkedPrefill(const ChunkedPrefillArgs& args, cudaStream_t stream);

}  // namespace lizard::kernels
