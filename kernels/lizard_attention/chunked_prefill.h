// The prefill path of the Lizard attention op for prompt rows (issue #12): the feature maps of a
// step's prompt rows, then the chunked gated linear attention (the paper's hardware-aware form)
// over the state pool. Decode rows keep the recurrent kernels of lizard_attention.h.
//
// LizardChunkedPrefill, for each sequence n of `seqs` (rows first_row .. first_row + num_tokens - 1,
// positions first_pos ..) and query head h (kv head g = h / (H / Hkv)), gamma_t = sigmoid(gate
// logit of row t, head h):
//   S_t = gamma_t S_{t-1} + fk_t v_t^T            S [2F, D], starts as the slot's stored S
//   z_t = gamma_t z_{t-1} + fk_t                  z [2F]
//   y_t = (fq_t S_t) / (fq_t . z_t + 1e-6)        (just fq_t S_t when !dims.normalize)
//   out_t = bf16(y_t + y_add_t)                   (y_add: the window part, may be null)
// which is engine/cpu/ops.h GlaStep token by token. The tokens go in blocks of kGlaChunk at
// absolute positions (multiples of kGlaChunk; a sequence starting at p has a first partial block
// [p, roundup(p, kGlaChunk))). S and z are carried in fp32 registers inside a launch and rounded
// to state.state_type at every block boundary, as a store between steps rounds them: one launch
// over blocks A, B gives the bits of A in one launch and B in the next. At the end the slot's S
// and z hold the state after the sequence's last token.
//
// Layouts (row-major; rows relative to the given pointers, as SeqMeta::first_row counts them):
//   fq, fk  [rows, H, 2F] bf16     feature maps (phi_k per query head), LizardPrefillFeatureMaps
//   qkvg    [rows, ld] fp32        as in lizard_attention.h: v of kv head g at H*D + Hkv*D + g*D,
//                                  the gate logit of head h at H*D + 2*Hkv*D + h (read directly)
//   state   S of (slot, h) at pool + slot * slot_bytes + s_offset, [H, 2F, D]; z at z_offset,
//           [H, 2F]; both stored as state.state_type (fp32 or bf16)
//   y_add   [rows, H, D] fp32 or null;   y  [rows, H * D] bf16
// Sequences with slot -1 (padding) write zero rows. Limits: D = 128, 2F = 128 or 256
// (cudaErrorInvalidValue otherwise). Shared memory per block with one block per (sequence, head):
// 162.25 KB at 2F = 128, 226.75 KB at 2F = 256 (of Hopper's 227 KB; an sm_80 GPU, 163 KB, runs
// 2F = 128 only); with the value columns split over 4 blocks 102.25 / 166.75 KB.
//
// Two forms, the same bits (y, S, z): the one-pass form walks each (sequence, head)'s chunks in
// one launch; the two-pass form, for launches of few (sequence, head) pairs (one long prompt),
// first scans the state alone (the gates, the state update, the rounding) and keeps every chunk's
// starting state in `scratch`, then computes the chunks' outputs in parallel, a block per (head,
// chunk), with the same operations in the same order.
//
// Two-pass scratch layout (TwoPassScratchBytes): the launch's chunks are numbered in sequence
// order, sequence n's chunks (none for padding or empty ones) after those of sequences < n; for
// chunk c and head h, the state at the chunk's start:
//   S  at scratch + (c * H + h) * 2F * D * 2 bytes: S^T as the bf16 A fragments of the
//      inter-chunk product (m16n8k16), uint4 [D/16 column groups][2 feature halves][2F/32 k steps]
//      [32 lanes], so a warp reads its fragments in 512 coalesced bytes per k step
//   z  at scratch + chunks * H * 2F * D * 2 bytes + (c * H + h) * 2F * 4 bytes: fp32 [2F]
//   ready flags at scratch + chunks * H * 2F * (D * 2 + 4) bytes + (c * H + h) * 16 bytes: uint32
//      [kTwoPassScanParts], one per scan block of the head, 1 once it wrote its part of the chunk
//      (the scan clears them first: the scratch needs no initial contents)
// where chunks = scratch_chunks (the capacity). The output pass is a programmatic dependent launch
// that starts while the scan runs, and each of its blocks waits for its chunk's flags.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/lizard_attention/window_prefill.h"

namespace lizard::kernels {

// Tokens per block of the chunked form; blocks start at absolute multiples of it.
constexpr int kGlaChunk = 64;

// Which form a launch takes; kAuto picks by the launch's size (both give the same bits).
enum class ChunkedForm { kAuto, kOnePass, kTwoPass };

// The two-pass form takes launches of at most this many sequences (engine scratch is sized for it).
constexpr int kTwoPassMaxSeqs = 4;

// An upper bound of the chunks of `seqs` sequences of `tokens` tokens in all: a sequence of L
// tokens from position p spans ceil((p % 64 + L) / 64) <= (L + 126) / 64 chunks.
constexpr int TwoPassChunks(int tokens, int seqs) { return (tokens + (2 * kGlaChunk - 2) * seqs) / kGlaChunk; }

// The two-pass scan's blocks per (sequence, head), each a quarter of the value columns.
constexpr int kTwoPassScanParts = 4;

// Bytes of two-pass scratch for `chunks` chunks (layout above).
inline int64_t TwoPassScratchBytes(const LizardDims& dims, int chunks) {
  return int64_t{chunks} * dims.heads * (2 * dims.features * (dims.head_dim * 2 + 4) + kTwoPassScanParts * 4);
}

struct ChunkedPrefillArgs {
  LizardDims dims;  // heads, kv_heads, head_dim, features (F), normalize; the window fields unused
  const __nv_bfloat16* fq = nullptr;
  const __nv_bfloat16* fk = nullptr;
  const float* qkvg = nullptr;
  int ld = 0;
  SeqMeta seqs;  // device arrays of num_seqs entries
  int num_seqs = 0;
  LizardStateRef state;  // S and z (the window fields unused)
  const float* y_add = nullptr;
  __nv_bfloat16* y = nullptr;
  // Blocks per (sequence, head) of the one-pass form, 1, 2 or 4, each owning D / split value
  // columns; 0: chosen by the launch's size (more when there are few (sequence, head) pairs).
  // Every split gives the same bits, so it is only a test and benchmark hook.
  int split = 0;
  // The two-pass form's scratch (16-byte aligned, null: one-pass only) and its capacity in chunks;
  // total_tokens: the launch's tokens (sum of num_tokens, or more), which bounds its chunks
  // (TwoPassChunks) on the host. A launch whose bound exceeds scratch_chunks runs one-pass.
  void* scratch = nullptr;
  int scratch_chunks = 0;
  int total_tokens = 0;
  // A test and benchmark hook like split: kTwoPass fails (cudaErrorInvalidValue) without room.
  ChunkedForm form = ChunkedForm::kAuto;
};

// One-pass: grid (H * split, num_seqs): the split blocks of a (sequence, head) walk its blocks of
// tokens in order, the state in registers, each block of tokens as bf16 tensor-core products with
// fp32 accumulators. Two-pass: the state scan, grid (H * 4, num_seqs), then the outputs, grid
// (H, TwoPassChunks(total_tokens, num_seqs)).
cudaError_t LizardChunkedPrefill(const ChunkedPrefillArgs& args, cudaStream_t stream);

// Whether a model's shapes fit the whole prefill path (these kernels and LizardWindowPrefill):
// head_dim 128, 2F 128 or 256, window <= kMaxPrefillWindow. Other models prefill with the
// recurrent kernels of lizard_attention.h.
inline bool PrefillPathSupports(const LizardDims& dims) {
  return dims.head_dim == 128 && (dims.features == 64 || dims.features == 128) && dims.window >= 1 &&
         dims.window <= kMaxPrefillWindow;
}

// The feature maps of a step's prompt rows, from the qkvg rows (one kernel: the logits on the
// tensor cores, then the softmaxes). For row r and head h (kv head h / (H / Hkv)):
//   a_q = q_h(r) fmap_q[h] + fmap_q_bias[h],   a_k = k_{h/G}(r) fmap_k[h] + fmap_k_bias[h]
//   fq[r, h] = [softmax(a_q), softmax(-a_q)],  fk[r, h] = the same with a_k      (bf16, [rows, H, 2F])
// with the maps [H, D, F] and biases [H, F] (may be null) in fp32. The logits are summed in one
// fixed order per output as 3xTF32 tensor-core products (fp32's accuracy, ~1e-6 relative), so a
// row's bits depend only on its own inputs, never on `rows` or where the row sits in the launch.
struct PrefillFeatureMapsArgs {
  LizardDims dims;  // heads, kv_heads, head_dim (128), features (64 or 128)
  const float* qkvg = nullptr;  // [rows, ld], layout of lizard_attention.h
  int ld = 0;
  int rows = 0;
  const float* fmap_q = nullptr;
  const float* fmap_k = nullptr;
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  __nv_bfloat16* fq = nullptr;  // 16-byte aligned; fq and fk both null: the logits only
  __nv_bfloat16* fk = nullptr;  // 16-byte aligned
  float* logits = nullptr;  // null, or [rows, 2H, F]: a_q of the H heads, then a_k
};

// The shapes LizardPrefillFeatureMaps takes: head_dim 128, F 64 or 128.
inline bool PrefillFeatureMapsSupport(const LizardDims& d) {
  return d.head_dim == 128 && (d.features == 64 || d.features == 128) && d.kv_heads > 0 && d.heads % d.kv_heads == 0;
}

// Grid (64-row tiles, 2H maps); with fq and fk null (the logits only) (64-row tiles, 2H, F / 32).
// cudaErrorInvalidValue for other shapes than the above.
cudaError_t LizardPrefillFeatureMaps(const PrefillFeatureMapsArgs& args, cudaStream_t stream);

}  // namespace lizard::kernels
