// Small device helpers shared by the kernels (internal to kernels/).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kernels/kernels.h"

namespace lizard::kernels {

// Programmatic dependent launch (Hopper; a no-op before sm_90). A kernel started with
// LaunchDependent may begin while the kernel before it in the stream is still running, so that its
// launch, its blocks' start and any reads of weights overlap that kernel's tail (~420 kernels in a
// decode step). Every block of such a kernel must call WaitForPrevious() before it touches memory
// that earlier work in the stream writes or reads (activations, state, workspace): the wait returns
// once the previous kernel has finished and its writes are visible. Since every kernel waits, the
// order of the stream is kept transitively. The next kernel starts when every block of this one
// has called LetNextStart() or exited: the GEMMs call it after their main loop, so the next
// kernel's start overlaps their epilogue. Letting it start as soon as a kernel runs was measured
// (H200) 9% slower at decode batch 64 and 5% at 256: the waiting blocks of the next kernel sat on
// the SMs the GEMMs' one-block-per-SM grids are spread over.
// LIZARD_PDL=0 in the environment launches them the plain way (for A/B measurements).
__device__ __forceinline__ void WaitForPrevious() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void LetNextStart() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

inline bool DependentLaunchEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("LIZARD_PDL");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return enabled;
}

template <typename... Params, typename... Args>
cudaError_t LaunchDependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                            Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid, config.blockDim = block, config.dynamicSmemBytes = smem, config.stream = stream;
  config.attrs = &attribute, config.numAttrs = DependentLaunchEnabled() ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
  return e != cudaSuccess ? e : cudaGetLastError();
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds 32
// floats; the result is returned to every thread. Contains __syncthreads.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return WarpSum(v);
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return WarpMax(v);
}

// Two block reductions in one pass (same contract as BlockSum / BlockMax; `scratch` holds 64).
__device__ __forceinline__ void BlockMax2(float& a, float& b, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a = WarpMax(a);
  b = WarpMax(b);
  __syncthreads();
  if (lane == 0) scratch[warp] = a, scratch[32 + warp] = b;
  __syncthreads();
  a = WarpMax(lane < warps ? scratch[lane] : -INFINITY);
  b = WarpMax(lane < warps ? scratch[32 + lane] : -INFINITY);
}

__device__ __forceinline__ void BlockSum2(float& a, float& b, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a = WarpSum(a);
  b = WarpSum(b);
  __syncthreads();
  if (lane == 0) scratch[warp] = a, scratch[32 + warp] = b;
  __syncthreads();
  a = WarpSum(lane < warps ? scratch[lane] : 0.f);
  b = WarpSum(lane < warps ? scratch[32 + lane] : 0.f);
}

// Reads / writes one element of a buffer stored as float or bf16.
template <typename T>
__device__ __forceinline__ float Load(const T* p, int64_t i);
template <>
__device__ __forceinline__ float Load<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float Load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <typename T>
__device__ __forceinline__ void Store(T* p, int64_t i, float v);
template <>
__device__ __forceinline__ void Store<float>(float* p, int64_t i, float v) { p[i] = v; }
template <>
__device__ __forceinline__ void Store<__nv_bfloat16>(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16(v);
}

// x rounded to what a store into a T buffer keeps.
template <typename T>
__device__ __forceinline__ float Rounded(float x) {
  if constexpr (sizeof(T) == 2) return __bfloat162float(__float2bfloat16(x));
  return x;
}

// One token's step of the gated-linear-attention normaliser for one head, written once for the
// decode path (LizardWindow) and the prefill path (LizardNormalizer) so that both give the same
// bits whatever the chunking: thread t < kNormalizerThreads owns features t and
// t + kNormalizerThreads, z_f = gamma z_f + fk_f is rounded as stored, and the thread's part of
// fq . z is returned (the caller adds it up with WarpSum, then the warps in order).
constexpr int kNormalizerThreads = 128;
template <typename TS>
__device__ __forceinline__ float NormalizerStep(float (&zr)[2], float gamma, const float* fk,
                                                const float* fq, int F2) {
  float part = 0.f;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int f = threadIdx.x + k * kNormalizerThreads;
    if (f < F2) {
      zr[k] = Rounded<TS>(fmaf(gamma, zr[k], fk[f]));
      part = fmaf(fq[f], zr[k], part);
    }
  }
  return part;
}

// The denominator from the kNormalizerThreads / 32 warp sums, added in warp order.
__device__ __forceinline__ float NormalizerDenominator(const float* warp_sums, bool normalize) {
  float dot = 0.f;
  for (int w = 0; w < kNormalizerThreads / 32; ++w) dot += warp_sums[w];
  return normalize ? dot + 1e-6f : 1.f;
}

// kWidth (1 or 4) neighbouring floats at p (16-byte aligned for 4).
template <int kWidth>
__device__ __forceinline__ void LoadFloats(const float* p, float (&v)[kWidth]) {
  static_assert(kWidth == 1 || kWidth == 4, "width");
  if constexpr (kWidth == 4) {
    *reinterpret_cast<float4*>(v) = *reinterpret_cast<const float4*>(p);
  } else {
    v[0] = *p;
  }
}

// The kWidth values of a GemmOutput at flat index i = r * cols + c (c % kWidth == 0; for 4,
// 16-byte aligned in y / each split / bias). The one place split partials are added, so
// GemmBf16's reduce kernel and the consumers that take the partials give the same bits.
template <int kWidth>
__device__ __forceinline__ void LoadGemmOutput(const GemmOutput& o, int64_t i, int c, float (&v)[kWidth]) {
  LoadFloats<kWidth>((o.splits > 0 ? o.partials : o.y) + i, v);
#pragma unroll 4  // lets the loads of several splits be in flight together; the adds keep their order
  for (int p = 1; p < o.splits; ++p) {
    float t[kWidth];
    LoadFloats<kWidth>(o.partials + p * o.stride + i, t);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] += t[k];
  }
  if (o.bias != nullptr) {
    float b[kWidth];
    LoadFloats<kWidth>(o.bias + c, b);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] += b[k];
  }
}

// Whether every address LoadGemmOutput<4> reads is 16-byte aligned, given cols % 4 == 0. The
// consumers refuse other outputs rather than fall back to a width of 1: their reductions'
// order follows the width, which must stay a function of the shape alone.
inline bool Aligned16(const GemmOutput& o) {
  auto ok = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return ok(o.y) && ok(o.partials) && o.stride % 4 == 0 && ok(o.bias);
}

inline int CeilDiv(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace lizard::kernels
