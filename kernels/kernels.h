// Launch wrappers for the CUDA kernels of the Lizard engine. Kernels are the lowest layer: they
// take plain device pointers, sizes and a stream, and know nothing of the engine's types.
// Each op lives in its own .cu file next to this header, or in a folder of its own with its own
// header (the Lizard attention op: kernels/lizard_attention/, included here);
// tests/gpu/kernels_test.cc compares each one with a plain CPU version on random inputs.
//
// Conventions: matrices are row-major; "bf16" is __nv_bfloat16; every launcher returns the
// launch's cudaError_t (cudaGetLastError after the launch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/lizard_attention/lizard_attention.h"
#include "kernels/store_type.h"

namespace lizard::kernels {

// ---- embedding.cu ----
// out[i, :] = float(table[ids[i], :]) for i < n (rows of `cols` values).
cudaError_t EmbeddingGather(const __nv_bfloat16* table, const int32_t* ids, int n, int cols,
                            float* out, cudaStream_t stream);
// out[i, :] = src[ids[i], :] for bf16 rows (used to pick the rows that need logits).
cudaError_t GatherRowsBf16(const __nv_bfloat16* src, const int32_t* ids, int n, int cols,
                           __nv_bfloat16* out, cudaStream_t stream);

// A projection's fp32 output [rows, cols] as its consumer (AddRmsNorm, SwiGlu) reads it: y, or
// the split-K partial sums GemmBf16Partials left in its workspace, which the consumer adds in
// GemmBf16's order; then an optional bias. Value (r, c) =
//   splits == 0: y[r * cols + c]                                        (+ bias[c])
//   splits >= 1: ((p_0 + p_1) + ...) + p_(splits-1),  p_i = partials[i * stride + r * cols + c]
//                                                                       (+ bias[c])
// i.e. the bits GemmBf16 (and AddBias after it) would have stored in y. {} is no value at all.
struct GemmOutput {
  const float* y = nullptr;
  const float* partials = nullptr;
  int splits = 0;
  int64_t stride = 0;           // floats from one split's partials to the next's
  const float* bias = nullptr;  // [cols], may be null
};

// ---- add_rmsnorm.cu ----
// For each of `rows` rows: x += delta (unless delta is {}), then
// out = x / sqrt(mean(x^2) + eps) * weight in bf16 (the next GEMM's input).
cudaError_t AddRmsNorm(float* x, const GemmOutput& delta, const float* weight, int rows, int cols,
                       float eps, __nv_bfloat16* out, cudaStream_t stream);

// ---- add_bias.cu ----
// y[r, :] += bias for `rows` rows of `cols` values, row stride ld.
cudaError_t AddBias(float* y, int ld, const float* bias, int rows, int cols, cudaStream_t stream);

// ---- rope.cu ----
// Hugging Face Llama RoPE (rotate_half) of `heads` head vectors of `head_dim` values per row:
// dst[r, h, :] = rope(src[r, h, :], positions[r]); angle = position * inv_freq[i] in double.
// Rows whose position is negative are copied unrotated. src and dst may alias.
cudaError_t Rope(const float* src, int src_ld, float* dst, int dst_ld, const int32_t* positions,
                 int rows, int heads, int head_dim, const double* inv_freq, cudaStream_t stream);

// ---- swiglu.cu ----
// out[r, i] = silu(gate_up[r, i]) * gate_up[r, I + i], for rows of 2I inputs, I outputs.
cudaError_t SwiGlu(const GemmOutput& gate_up, int rows, int inter, __nv_bfloat16* out,
                   cudaStream_t stream);

// ---- convert.cu ----
// Element-wise conversion of n values stored as f32 (src_dtype 0), f16 (1) or bf16 (2).
cudaError_t ConvertToBf16(const void* src, int src_dtype, int64_t n, __nv_bfloat16* dst,
                          cudaStream_t stream);
cudaError_t ConvertToF32(const void* src, int src_dtype, int64_t n, float* dst,
                         cudaStream_t stream);

// ---- random_fill.cu ----
// Deterministic hash-based values: dst[i] = offset + scale * u(seed, i), u uniform in [-1, 1).
// Generates random weights on the device (benchmarks) and random states.
cudaError_t RandomFillBf16(__nv_bfloat16* dst, int64_t n, uint64_t seed, float scale,
                           float offset, cudaStream_t stream);
cudaError_t RandomFillF32(float* dst, int64_t n, uint64_t seed, float scale, float offset,
                          cudaStream_t stream);

// ---- softmax layers: paged KV cache (kv_cache.cu, paged_attention.cu) ----
// K and V pools of pages; page p holds `page_size` tokens as [page_size, Hkv, D].
// page_table[slot * max_pages + i] is the page of the slot's tokens i*page_size ...
struct PagedKv {
  void* k = nullptr;
  void* v = nullptr;
  StoreType type = StoreType::kBF16;
  const int32_t* page_table = nullptr;
  int max_pages = 0;
  int page_size = 0;
  int kv_heads = 0, head_dim = 0;
};

// Stores token r's key krot[r, g, :] and value v[r, g, :] at its position in its slot's pages.
cudaError_t PagedKvWrite(const float* krot, int krot_ld, const float* v, int v_ld,
                         const int32_t* slot, const int32_t* position, int T, const PagedKv& kv,
                         cudaStream_t stream);

// Causal softmax attention (scale 1/sqrt(D), GQA) of query rows q[r, h, :] (after RoPE) over
// the slot's keys at positions 0..position[r]; out bf16 [T, H*D]. Padding rows write zeros.
// Long contexts are split across blocks (flash-decoding): `max_keys` is the largest
// position + 1 among the rows, `partial` scratch for `partial_entries` entries of D + 2 floats
// (at least T * H).
cudaError_t PagedAttention(const float* q, int q_ld, const int32_t* slot, const int32_t* position,
                           int T, int heads, int max_keys, const PagedKv& kv, float* partial,
                           int64_t partial_entries, __nv_bfloat16* out, cudaStream_t stream);

// ---- sampling.cu ----
// Sampling on the device, one block per logits row; engine/sampling/sampler.h defines every step
// and its host sampler is the reference (tests/gpu/kernels_test.cc compares them).
struct SamplingRow {
  float temperature = 0.f;  // 0 = greedy
  int32_t top_k = 0;        // 0 = off
  float top_p = 1.f;
  float min_p = 0.f;
  float repetition_penalty = 1.f, presence_penalty = 0.f, frequency_penalty = 0.f;
  // This row's entries of the penalty arrays: the tokens it has seen (prompt + generated) and
  // how often each was generated.
  int32_t penalty_begin = 0, penalty_end = 0;
  uint64_t seed = 0, step = 0;  // Philox key and counter of the draw
  int32_t logprobs = 0;         // top-n logprobs wanted (TopLogprobs); 0 = none
};

// In place: penalties over each row's entries (repetition on all of them, presence/frequency on
// the generated ones), then division by the temperature when it is not 0.
cudaError_t ProcessLogits(float* logits, int rows, int vocab, const SamplingRow* params,
                          const int32_t* penalty_tokens, const int32_t* penalty_counts,
                          cudaStream_t stream);

// tokens[r] = the token drawn from processed row r (greedy argmax when temperature is 0).
cudaError_t SampleTokens(const float* logits, int rows, int vocab, const SamplingRow* params,
                         int32_t* tokens, cudaStream_t stream);

// For the rows with 0 < n = min(params[r].logprobs, vocab) <= kMaxDeviceTopLogprobs: the
// log-softmax of processed row r at tokens[r] (chosen_logprob[r]) and its n most likely tokens
// by logit, lower id first on ties, most likely first, at top_ids / top_logprobs
// [r * kMaxDeviceTopLogprobs + i], i < n (log Z summed in double, as on the host). Other rows
// are left alone (the host ranks larger n itself).
constexpr int kMaxDeviceTopLogprobs = 64;
cudaError_t TopLogprobs(const float* logits, int rows, int vocab, const SamplingRow* params,
                        const int32_t* tokens, float* chosen_logprob, int32_t* top_ids,
                        float* top_logprobs, cudaStream_t stream);

// ---- gemm_bf16.cu ----
// Batch-invariant projection: y[r, :] = x[r, :] w^T for r < rows, x bf16 [rows, in] (row stride
// in), w bf16 [out, in], y fp32 [rows, out], fp32 accumulation on the tensor cores (sm_80+).
// Every y[r, o] is reduced over `in` in an order fixed by (in, out) alone, so a row's result is
// bit-identical whatever `rows` is and whatever the other rows hold. Requires in % 8 == 0 and x,
// w 16-byte aligned (else cudaErrorInvalidValue); any out >= 1 and rows >= 0 (rows == 0: no-op).
// `workspace` (GemmBf16WorkspaceBytes(in, out) bytes, may be null when that is 0) holds the
// split-K partial sums; it is not kept between calls, but calls sharing one must be ordered.
size_t GemmBf16WorkspaceBytes(int in, int out);
// The fixed split-K count of a shape (informational: tests and benchmarks).
int GemmBf16Splits(int in, int out);
// With `bias` ([out] fp32) y[r, :] += bias after the sum, the bits of AddBias after GemmBf16, in
// the split-K reduce kernel where there is one (no launch of its own).
cudaError_t GemmBf16(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                     float* y, void* workspace, cudaStream_t stream, const float* bias = nullptr);
// GemmBf16 for an output read only through a GemmOutput: where the split-K partials fit the
// workspace in one pass (splits > 1, rows <= 256, not the one-block-per-tile path) they are left
// there for the consumer to add (which saves the reduce kernel's launch) and y is not written;
// otherwise y is written as GemmBf16 does. *result (bias null) says which. The workspace then
// holds the output until the consumer has run: no GemmBf16 call sharing it may come between.
cudaError_t GemmBf16Partials(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w,
                             int out, float* y, void* workspace, GemmOutput* result,
                             cudaStream_t stream);

}  // namespace lizard::kernels
