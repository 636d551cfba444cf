// The one signature of the CPU Lizard attention op's three forms (naive.h, recurrent.h,
// chunked.h): the attention of one sequence's rows from its carried state, for a range of KV
// heads and their query heads. The caller computes the op's inputs (feature maps, gate logits,
// RoPE of the window's q and k) and keeps the parallel loop over sequences and KV heads.
#pragma once

#include <cstdint>

namespace lizard::cpu {

struct LizardAttentionArgs {
  int64_t length = 0;          // rows (consecutive tokens of one sequence)
  int64_t first_position = 0;  // position of row 0; the state holds the positions before it
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t f2 = 0;          // feature-map width 2F
  int64_t window = 0;      // w
  int64_t num_meta = 0;    // m meta-memory sink logits per head
  bool normalize = true;   // gla_normalize
  // KV heads [kv_head_begin, kv_head_end) and their query heads are computed; calls on disjoint
  // ranges touch disjoint parts of the state and of y.
  int64_t kv_head_begin = 0, kv_head_end = 0;
  // Row t's inputs, at the given strides between rows.
  const float* fq = nullptr;          // [H, 2F] feature-mapped q
  const float* fk = nullptr;          // [H, 2F] feature-mapped k (per query head)
  int64_t feature_stride = 0;
  const float* gate_logit = nullptr;  // [H] forget gate before the sigmoid
  int64_t gate_stride = 0;
  const float* q = nullptr;           // [H, D] the window's queries (after RoPE when window_rope)
  int64_t q_stride = 0;
  const float* k = nullptr;           // [Hkv, D] the window's keys (after RoPE when window_rope)
  const float* v = nullptr;           // [Hkv, D]
  int64_t kv_stride = 0;
  const float* meta_logits = nullptr;    // [H, m]
  const float* window_factor = nullptr;  // [H]
  int64_t y_stride = 0;                  // between rows of y ([H, D] per row)
};

// Rows [begin, begin + length) of `args` as arguments of their own, at position
// first_position + begin (their y starts at row `begin` of the caller's).
inline LizardAttentionArgs SubRows(const LizardAttentionArgs& args, int64_t begin, int64_t length) {
  LizardAttentionArgs sub = args;
  sub.length = length;
  sub.first_position = args.first_position + begin;
  sub.fq = args.fq + begin * args.feature_stride;
  sub.fk = args.fk + begin * args.feature_stride;
  sub.gate_logit = args.gate_logit + begin * args.gate_stride;
  sub.q = args.q + begin * args.q_stride;
  sub.k = args.k + begin * args.kv_stride;
  sub.v = args.v + begin * args.kv_stride;
  return sub;
}

// One Lizard layer's state of one sequence (StateLayout's parts of a slot), updated in place.
struct LizardSlotState {
  float* s = nullptr;         // [H, 2F, D] gated linear attention state
  float* z = nullptr;         // [H, 2F] its normaliser
  float* window_k = nullptr;  // [Hkv, w, D] ring: position p at row p % w
  float* window_v = nullptr;  // [Hkv, w, D]
};

}  // namespace lizard::cpu
