// The Lizard attention op on the GPU: the launch wrappers of the kernels in this folder
// (feature_map.cu, lizard_window.cu or for decode rows lizard_decode_window.cu, lizard_normalizer.cu,
// lizard_state.cu, lizard_ring_write.cu) that the CUDA backend runs for a lizard layer, in that
// order (docs/cuda.md). Conventions as in
// kernels/kernels.h, which includes this header. Their CPU reference is the token-by-token
// recurrence of engine/cpu/ops.h (tests/gpu/lizard_attention_test.cc ties the two together). The
// backend runs them for decode rows (and for prompt rows of models the chunked kernels do not
// fit); prompt rows take the prefill path: chunked_prefill.h (feature maps, chunked GLA over the
// same state pool) and window_prefill.h (tensor-core window attention with sinks).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/store_type.h"

namespace lizard::kernels {

// Limits: D even and <= 256, 2F <= 256.
// Shapes: H query heads, Hkv kv heads, D head dim, F features (maps output 2F), w window,
// m meta tokens. A step holds T tokens of several sequences; the tokens of one sequence are
// consecutive rows. Per token row r:
//   qkvg[r] = [q (H*D) | k (Hkv*D) | v (Hkv*D) | gate logit (H)] in float32, row stride ld
//   krot[r] = the keys after RoPE when the window uses RoPE, else the raw keys (row stride krot_ld)
struct LizardDims {
  int heads = 0, kv_heads = 0, head_dim = 0, features = 0, window = 0, meta = 0;
  bool window_rope = true;
  bool normalize = true;  // gla_normalize: y_gate = fq S / (fq . z + 1e-6)
};

// Where one lizard layer's state lives in the slot pool: slot s's S starts at
// pool + s * slot_bytes + s_offset, etc.
struct LizardStateRef {
  char* pool = nullptr;
  int64_t slot_bytes = 0;
  int64_t s_offset = 0, z_offset = 0, k_offset = 0, v_offset = 0;
  StoreType state_type = StoreType::kF32;   // S, z
  StoreType window_type = StoreType::kBF16;  // ring K, V
};

// Per-token description, device arrays of T entries.
struct TokenMeta {
  const int32_t* slot = nullptr;       // -1: padding row (skipped, outputs zero)
  const int32_t* position = nullptr;   // absolute position of the token
  const int32_t* first_row = nullptr;  // row of its sequence's first token in this step
  const int32_t* first_pos = nullptr;  // position of that first token
  const int32_t* single = nullptr;     // 1 when the token is its sequence's only one (decode)
};

// Per-sequence description for the sequential parts, device arrays of num_seqs entries.
struct SeqMeta {
  const int32_t* slot = nullptr;       // -1: padding (skipped)
  const int32_t* first_row = nullptr;
  const int32_t* num_tokens = nullptr;
  const int32_t* first_pos = nullptr;  // position of its first token
};

// Layer parameters on the device (float32).
struct LizardParams {
  // Feature-map logits x W per token and head, computed by a batched GEMM before LizardWindow:
  // row r holds [q heads: H*F | k (per query head h, from kv head h/G): H*F], stride 2*H*F.
  const float* fmap_logits = nullptr;
  const float* fmap_q_bias = nullptr;  // [H, F], null when absent
  const float* fmap_k_bias = nullptr;  // [H, F], null when absent
  const float* meta_logits = nullptr;  // [H, m]
  const float* window_factor = nullptr;  // [H]
};

// Scratch written by LizardWindow and read by the later kernels.
struct LizardScratch {
  float* fq = nullptr;     // [T, H, 2F]
  float* fk = nullptr;     // [T, H, 2F]
  float* gamma = nullptr;  // [T, H]
  float* den = nullptr;    // [T, H] readout denominator (1 when not normalizing)
  float* y = nullptr;      // [T, H, D] window_factor * y_anchor
};

// Feature-map logits (feature_map.cu), the input of LizardWindow's LizardParams::fmap_logits:
// logits[t, i*F + f] = sum_d x_i[t, d] * W_i[d, f] for the 2H maps i: x_i is query head i of
// qkvg row t with W_i = fmap_q[i] (i < H), or the kv head of query head i - H with
// W_i = fmap_k[i - H]; maps are [H, D, F]. Summed over d in an order fixed by the shape (batch
// invariant): 3xTF32 tensor-core products for D 128 and F 64 or 128, fp32 FMAs otherwise.
cudaError_t FeatureMapLogits(const float* qkvg, int ld, int T, int heads, int kv_heads, int head_dim,
                             int features, const float* fmap_q, const float* fmap_k, float* logits,
                             cudaStream_t stream);

// Token-parallel part for rows [row0, row0 + rows), grid (H, rows): feature maps (softmax of the
// logits + bias), gate, window attention with sinks.
// For `single` tokens it also updates z and the denominator and writes the token's K/V into the
// ring (nothing else reads that ring row in the step). Window keys before the sequence's first
// token come from the ring, later ones from krot / qkvg.
cudaError_t LizardWindow(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                         int krot_ld, const double* inv_freq, const TokenMeta& tokens, int row0,
                         int rows, const LizardParams& params, const LizardStateRef& state,
                         const LizardScratch& scratch, cudaStream_t stream);

// LizardWindow for decode rows [row0, row0 + rows): every row is its sequence's only token
// (`single`) or padding (slot -1). Same outputs, z update and ring write; grid (Hkv, rows), one
// block of 8 warps per (token, kv head) with the group's ring rows in shared memory, scores and
// weighted values on tensor cores with the group's query heads as the MMA rows
// (lizard_decode_window.cu). Other shapes (fp32 rings, D not a multiple of 16, more than 8 query
// heads per kv head, windows over 256) run LizardWindow.
cudaError_t LizardDecodeWindow(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                               int krot_ld, const double* inv_freq, const TokenMeta& tokens, int row0,
                               int rows, const LizardParams& params, const LizardStateRef& state,
                               const LizardScratch& scratch, cudaStream_t stream);

// Sequential normaliser for multi-token sequences, grid (H, num_seqs): z advances token by token,
// den[t] = fq_t . z_t + 1e-6 (1 when not normalizing). One-token sequences are skipped
// (LizardWindow did them).
cudaError_t LizardNormalizer(const LizardDims& dims, const SeqMeta& seqs, int num_seqs,
                             const LizardStateRef& state, const LizardScratch& scratch,
                             cudaStream_t stream);

// State update and readout, grid (D / 32, H, num_seqs): each block owns a slice of S's value
// columns for all 2F rows, walks its sequence's tokens in order (S = gamma S + fk v^T,
// y_gate = fq S / den) and writes y = y_gate + scratch.y as bf16 rows [T, H*D].
// Padding sequences (slot -1) write zero rows.
cudaError_t LizardState(const LizardDims& dims, const float* qkvg, int ld, const SeqMeta& seqs,
                        int num_seqs, const LizardStateRef& state, const LizardScratch& scratch,
                        __nv_bfloat16* y, cudaStream_t stream);

// LizardState for decode rows (every sequence has exactly one token; padding sequences, slot -1,
// write zero rows), made to stream S once at memory bandwidth: grid (D / slice, H, num_seqs),
// each block a 128-byte column slice (32 fp32 or 64 bf16 columns) of all 2F rows, read and
// written in 16-byte vectors, the readout reduced in a fixed order. The same S bits as
// LizardState; y sums in another order. Each output depends only on its own sequence's data.
// Shapes without whole 16-byte vectors (D not a multiple of 4 for fp32 S or of 8 for bf16 S, or
// an S offset not 16-byte aligned) run LizardState.
cudaError_t LizardDecodeState(const LizardDims& dims, const float* qkvg, int ld, const SeqMeta& seqs,
                              int num_seqs, const LizardStateRef& state, const LizardScratch& scratch,
                              __nv_bfloat16* y, cudaStream_t stream);

// Writes the last min(n, w) keys (from krot) and values of each sequence into its ring rows
// p % w. Runs after the window kernels, which still read the older ring rows.
cudaError_t LizardRingWrite(const LizardDims& dims, const float* qkvg, int ld, const float* krot,
                            int krot_ld, const SeqMeta& seqs, int num_seqs,
                            const LizardStateRef& state, cudaStream_t stream);

}  // namespace lizard::kernels
