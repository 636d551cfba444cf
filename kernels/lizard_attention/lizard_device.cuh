// Device helpers shared by the Lizard attention kernels (internal to kernels/lizard_attention/).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/lizard_attention/lizard_attention.h"

namespace lizard::kernels {

// One part (S, z, ring K or ring V) of slot `slot`'s state for this layer.
template <typename T>
__device__ __forceinline__ T* SlotPart(const LizardStateRef& st, int slot, int64_t offset) {
  return reinterpret_cast<T*>(st.pool + slot * st.slot_bytes + offset);
}

// Runs fn(TS{}, TW{}) with the element types of the state's S/z (TS) and ring (TW) stores.
template <typename Fn>
cudaError_t WithStoreTypes(const LizardStateRef& state, Fn&& fn) {
  const bool s32 = state.state_type == StoreType::kF32, w32 = state.window_type == StoreType::kF32;
  if (s32 && w32) return fn(float{}, float{});
  if (s32) return fn(float{}, __nv_bfloat16{});
  if (w32) return fn(__nv_bfloat16{}, float{});
  return fn(__nv_bfloat16{}, __nv_bfloat16{});
}

// The Hedgehog feature map of one head in one warp: for the F logits x (lane holds features
// lane + 32 e), pos = softmax(x) and neg = softmax(-x), in registers. Max and min, then the sums
// of __expf, then one division per value, as LizardWindow's block-wide HedgehogSoftmax.
constexpr int kHedgehogPerLane = 4;  // F <= 32 * kHedgehogPerLane
__device__ __forceinline__ void WarpHedgehogSoftmax(const float (&x)[kHedgehogPerLane], int F,
                                                    float (&pos)[kHedgehogPerLane],
                                                    float (&neg)[kHedgehogPerLane]) {
  const int lane = threadIdx.x & 31;
  float mx = -INFINITY, neg_mn = -INFINITY;
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    if (lane + 32 * e < F) mx = fmaxf(mx, x[e]), neg_mn = fmaxf(neg_mn, -x[e]);
  }
  mx = WarpMax(mx);
  const float mn = -WarpMax(neg_mn);
  float sp = 0.f, sm = 0.f;
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    if (lane + 32 * e < F) sp += __expf(x[e] - mx), sm += __expf(mn - x[e]);
  }
  sp = WarpSum(sp);
  sm = WarpSum(sm);
#pragma unroll
  for (int e = 0; e < kHedgehogPerLane; ++e) {
    pos[e] = __expf(x[e] - mx) / sp;
    neg[e] = __expf(mn - x[e]) / sm;
  }
}

}  // namespace lizard::kernels
