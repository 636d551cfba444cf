// The anchor window attention with meta-memory sinks for prompt rows (the prefill path), on
// tensor cores. The decode path takes LizardDecodeWindow (lizard_attention.h); the two agree within
// bf16 tolerance, not bitwise (prompt tokens always take this path, decodes the other).
//
// For the token at position p of a sequence, query head h (kv head g = h / (H / Hkv)):
//   s_j = rope(q, p) . k_j / sqrt(D)    for the keys j = max(0, p - w + 1) .. p
//   y   = window_factor[h] * sum_j e^{s_j - M} v_j / (sum_j e^{s_j - M} + sum_i e^{t_i - M})
// with t the m sink logits of h and M the max over the s_j and the t_i (the sinks add to the
// denominator only). Keys and values of positions before the sequence's first_pos come from the
// ring of its slot (row j % w, as stored); later ones from the k/v rows of this launch. All of
// them enter the tensor cores as bf16: a row value x enters as bf16(x), which is also what the
// ring will hold for it (bf16(x), or x itself when the ring is fp32, then rounded the same way),
// so a prompt cut at an absolute multiple of 64 into two launches gives the same bits as one.
// Unlike LizardWindow, the token's own key and value are rounded too.
//
// Launch: grid (max_tiles, Hkv * G / HB, num_seqs), HB = the query heads per block (4, 2 or 1,
// the largest dividing G). Query tiles of 64 sit at absolute positions (tile i of a sequence covers
// [a0 + 64 i, a0 + 64 i + 64) intersected with its positions, a0 = first_pos rounded down to a
// multiple of 64), so a query's arithmetic never depends on where its chunk starts or how long
// it is, nor on the other sequences of the launch.
// Shared memory: 104 KB per block at HB = 4 (the queries and one key block, bf16). Rows of k and v
// are read 16 bytes at a time when k_ld, v_ld are multiples of 4 and k, v 16-byte aligned (else
// 4 bytes); ring rows must be 16-byte aligned (StateLayout's are).
#pragma once

#include <cuda_runtime.h>

#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {

// The longest window the kernel takes (its key blocks cover the window plus a tile).
constexpr int kMaxPrefillWindow = 512;

struct WindowPrefillArgs {
  LizardDims dims;          // D = 128 required, w <= kMaxPrefillWindow (cudaErrorInvalidValue otherwise)
  const float* q = nullptr;  // raw queries: head h of row r at q + r * q_ld + h * D (fp32)
  int q_ld = 0;
  const float* k = nullptr;  // keys as the window sees them (after RoPE when window_rope):
  int k_ld = 0;              //   kv head g of row r at k + r * k_ld + g * D
  const float* v = nullptr;  // values: kv head g at v + r * v_ld + g * D
  int v_ld = 0;
  const double* inv_freq = nullptr;  // [D / 2] RoPE inverse frequencies, for q (window_rope)
  SeqMeta seqs;                      // prompt sequences (device arrays); slot -1 or 0 tokens: skipped
  int num_seqs = 0;
  int max_tiles = 0;                 // WindowPrefillTiles over the sequences (host side)
  const float* meta_logits = nullptr;    // [H, m] sink logits
  const float* window_factor = nullptr;  // [H]
  LizardStateRef state;                  // the rings (read only)
  float* y = nullptr;  // [rows, H, D]: window_factor[h] * the anchor (what LizardWindow writes to
                       // scratch.y); rows of other sequences are left alone
};

// The number of query tiles of a sequence of n >= 1 tokens starting at position first_pos;
// max_tiles is the maximum over the launch's sequences.
inline int WindowPrefillTiles(int first_pos, int n) { return ((first_pos + n - 1) >> 6) - (first_pos >> 6) + 1; }

cudaError_t LizardWindowPrefill(const WindowPrefillArgs& args, cudaStream_t stream);

}  // namespace lizard::kernels
