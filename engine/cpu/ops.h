// The CPU backend's building blocks: float32 ops on row-major arrays. Each op is small and
// tested alone against a naive reference (tests/engine/ops_test.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model/exact_math.h"
#include "engine/model/model_config.h"

namespace lizard::cpu {

// C[m, n] = alpha * op(A) op(B) + beta * C, row-major. op(A) is [m, k] (A stored [k, m] when
// trans_a); op(B) is [k, n] (B stored [n, k] when trans_b, which is the [out, in] layout of a
// projection weight). Every element is summed in one fixed order, whatever m, n, the strides, the
// caller's split of the output over threads, the SIMD width or the CPU: with K padded by zeros to
// a multiple of kGemmLanes, lane t (t < kGemmLanes) holds the float sum of the products
// a_l * b_l with l = t mod kGemmLanes in increasing l (each product rounded, never fused), and the
// lanes are added as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)); then
// C = alpha * sum + beta * C (C is not read when beta == 0). So a row's result never depends on
// the other rows of a batch or on the machine (tests/engine/ops_test.cc checks it bitwise).
inline constexpr int kGemmLanes = 8;
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc);

// The backend's transcendental functions are the machine-independent ones of
// engine/model/exact_math.h (RoPE tables need them too).
using ::lizard::Exp;
using ::lizard::Log;
using ::lizard::LogSigmoid;
using ::lizard::SinCos;

// out = x / sqrt(mean(x^2) + eps) * weight, for `rows` rows of n values (out may alias x).
void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t n, double eps, float* out);

// y = silu(gate) * up, elementwise over n values (y may alias gate).
void SiluMul(const float* gate, const float* up, int64_t n, float* y);

// Rotates `num_heads` consecutive head vectors of `head_dim` values in place for `position`:
// element i pairs with i + D/2 (rotate_half), angle position * inv_freq[i].
void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, int64_t position,
               const std::vector<double>& inv_freq);

// The rotation of ApplyRope for `position`: cos and sin of position * inv_freq[i], D/2 values
// each. Computed once per token, it serves every layer.
void RopeRotation(int64_t position, const std::vector<double>& inv_freq, float* cos, float* sin);

// ApplyRope with a rotation from RopeRotation.
void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, const float* cos, const float* sin);

// Hedgehog feature map for `rows` rows: out[r] = concat(softmax(x[r] W + b), softmax(-(x[r] W + b)))
// with W [d, f], b [f]; out rows hold 2f values.
void FeatureMap(const float* x, int64_t x_stride, int64_t rows, const float* w, const float* b,
                int64_t d, int64_t f, float* out, int64_t out_stride);

// One recurrent step of gated linear attention for one head (f2 = 2F features, d = head dim):
//   S = gamma S + fk v^T;  z = gamma z + fk;  y = (fq S) / (fq . z + 1e-6)   (or fq S when
//   !normalize). S is [f2, d], z is [f2].
void GlaStep(const float* fq, const float* fk, const float* v, float gamma, int64_t f2, int64_t d,
             bool normalize, float* s, float* z, float* y);

// The same recurrence over c consecutive tokens in the chunked parallel form: token t's gate is
// sigmoid(gate_logit[t * gate_stride]). With b_t = sum_{r<=t} log gamma_r:
//   y_t = (e^{b_t} fq_t S0 + sum_{s<=t} e^{b_t-b_s} (fq_t . fk_s) v_s) / ((same with z0 and 1) + 1e-6)
// (no division when !normalize), where every exponent is <= 0; then S, z advance to the chunk's
// end. Rows of fq/fk/v/y are at
// the given strides.
void GlaChunk(const float* fq, int64_t fq_stride, const float* fk, int64_t fk_stride,
              const float* v, int64_t v_stride, const float* gate_logit, int64_t gate_stride,
              int64_t c, int64_t f2, int64_t d, bool normalize, float* s, float* z, float* y,
              int64_t y_stride);

// Softmax attention for one head with optional sink logits. Query i (at position q_pos0 + i)
// attends to key j iff 0 <= q_pos - key_pos[j] < window. Scores are scaled by `scale`; the
// `num_sinks` sink logits join the max and the denominator but contribute no value.
// out[i] = sum_j p_ij v_j. q rows [num_q, d], k/v rows [num_keys, d], at the given strides.
void SinkAttention(const float* q, int64_t q_stride, int64_t num_q, int64_t q_pos0,
                   const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                   const int64_t* key_pos, int64_t num_keys, int64_t window, const float* sinks,
                   int64_t num_sinks, int64_t d, float scale, float* out, int64_t out_stride);

}  // namespace lizard::cpu
