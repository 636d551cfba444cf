// Sampling on the device: penalties and temperature (ProcessLogits), then one token per row
// (SampleTokens). Each step mirrors engine/sampling/sampler.cc, which is the reference:
//   greedy      block argmax, lowest index on ties, NaN never wins;
//   thresholds  on p = exp(x - max): top-k and top-p are found by bisection over the bit
//               patterns of non-negative floats (which order like their values), each probe a
//               block-wide count or mass of {p >= t}; no sort, no copy of the row;
//   draw        u = PhiloxUniform(seed, step); the first id whose running kept mass exceeds
//               u * total, from per-thread chunk sums and a block scan.
// Every reduction has a fixed order for a given block size, so a row's token depends only on
// the row, never on the other rows of the launch.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "kernels/common.cuh"
#include "kernels/kernels.h"
#include "kernels/philox.h"

namespace lizard::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr uint32_t kKeyAboveOne = 0x3F800001u;  // bit pattern just above 1.0f: p never reaches it

struct IndexedValue {
  float value;
  int index;
};

// The larger value, the lower index on ties; NaN never replaces a number.
struct ArgMaxOp {
  __device__ IndexedValue operator()(const IndexedValue& a, const IndexedValue& b) const {
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};

struct SumOp {
  template <typename T>
  __device__ T operator()(const T& a, const T& b) const { return a + b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return max(a, b); }
};

// Reduction over the block, result in every thread. Contains __syncthreads.
template <typename T, typename Op>
__device__ T BlockAllReduce(T v, Op op) {
  using Reduce = cub::BlockReduce<T, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ T result;
  v = Reduce(storage).Reduce(v, op);
  if (threadIdx.x == 0) result = v;
  __syncthreads();
  v = result;
  __syncthreads();  // storage and result are reused by the next call
  return v;
}

// The largest key in [lo, hi) for which `holds` is true, given holds(lo) and that `holds` turns
// false once and stays false as the key grows. Every thread runs the same probes.
template <typename Key, typename Pred>
__device__ Key LargestKey(Key lo, Key hi, Pred holds) {
  while (hi - lo > 1) {
    const Key mid = lo + (hi - lo) / 2;
    if (holds(mid)) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__global__ void ProcessLogitsKernel(float* logits, int vocab, const SamplingRow* params,
                                    const int32_t* penalty_tokens, const int32_t* penalty_counts) {
  const SamplingRow p = params[blockIdx.x];
  float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const bool repetition = p.repetition_penalty != 1.f;
  const bool additive = p.presence_penalty != 0.f || p.frequency_penalty != 0.f;
  if (repetition || additive) {
    // A row's entries are distinct tokens: no two threads write the same logit.
    for (int e = p.penalty_begin + threadIdx.x; e < p.penalty_end; e += blockDim.x) {
      const int32_t t = penalty_tokens[e];
      const int32_t count = penalty_counts[e];
      float v = x[t];
      if (repetition) v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
      // Explicit roundings: no fused multiply-add, as on the host.
      if (additive && count > 0) {
        v -= __fadd_rn(p.presence_penalty, __fmul_rn(p.frequency_penalty, static_cast<float>(count)));
      }
      x[t] = v;
    }
    __syncthreads();
  }
  if (p.temperature != 0.f && p.temperature != 1.f) {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) x[i] /= p.temperature;
  }
}

__global__ void __launch_bounds__(kThreads)
    SampleTokensKernel(const float* logits, int vocab, const SamplingRow* params, int32_t* tokens) {
  const SamplingRow p = params[blockIdx.x];
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int tid = threadIdx.x;

  IndexedValue best{-INFINITY, INT_MAX};
  for (int i = tid; i < vocab; i += kThreads) best = ArgMaxOp()(best, {x[i], i});
  best = BlockAllReduce(best, ArgMaxOp());
  const int argmax = best.index == INT_MAX ? 0 : best.index;  // INT_MAX: every logit is NaN
  if (p.temperature == 0.f || !isfinite(best.value)) {
    if (tid == 0) tokens[blockIdx.x] = argmax;
    return;
  }
  const float max_logit = best.value;
  auto prob = [&](int i) { return expf(x[i] - max_logit); };  // NaN for NaN: never kept
  auto count_at_least = [&](float t) {
    int n = 0;
    for (int i = tid; i < vocab; i += kThreads) n += prob(i) >= t;
    return BlockAllReduce(n, SumOp());
  };
  auto mass_at_least = [&](float t) {
    double mass = 0.0;
    for (int i = tid; i < vocab; i += kThreads) {
      const float q = prob(i);
      if (q >= t) mass += q;
    }
    return BlockAllReduce(mass, SumOp());
  };

  float t = 0.f;  // keep p >= t
  if (p.top_k > 0 && p.top_k < vocab && count_at_least(0.f) >= p.top_k) {
    t = __uint_as_float(LargestKey<uint32_t>(0u, kKeyAboveOne, [&](uint32_t key) {
      return count_at_least(__uint_as_float(key)) >= p.top_k;
    }));
  }
  if (p.top_p < 1.f) {
    const double target = static_cast<double>(p.top_p) * mass_at_least(t);
    t = __uint_as_float(LargestKey<uint32_t>(__float_as_uint(t), kKeyAboveOne, [&](uint32_t key) {
      return mass_at_least(__uint_as_float(key)) >= target;
    }));
  }
  t = fmaxf(t, p.min_p);

  // The draw: thread `tid` owns ids [begin, end); a scan of the chunk sums gives each chunk the
  // kept mass before it, and the chunks that may hold the crossing walk their ids in order.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
  double sum = 0.0;
  int last = -1;
  for (int i = begin; i < end; ++i) {
    const float q = prob(i);
    if (q >= t) {
      sum += q;
      last = i;
    }
  }
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int chosen;
  double before = 0.0, total = 0.0;
  Scan(scan_storage).ExclusiveSum(sum, before, total);
  if (tid == 0) chosen = INT_MAX;
  __syncthreads();
  const double target = PhiloxUniform(p.seed, p.step) * total;
  if (before <= target) {
    double mass = before;
    for (int i = begin; i < end; ++i) {
      const float q = prob(i);
      if (q >= t) {
        mass += q;
        if (mass > target) {
          atomicMin(&chosen, i);
          break;
        }
      }
    }
  }
  __syncthreads();
  const int last_kept = BlockAllReduce(last, MaxOp());  // rounding: u * total hit the total
  if (tid == 0) tokens[blockIdx.x] = chosen != INT_MAX ? chosen : (last_kept >= 0 ? last_kept : argmax);
}

// Orders floats like their values (NaN first, below -inf: never among the top).
__device__ __forceinline__ uint32_t OrderedKey(float v) {
  if (isnan(v)) return 0u;
  const uint32_t bits = __float_as_uint(v == 0.f ? 0.f : v);  // -0 ties with +0, as on the host
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__global__ void __launch_bounds__(kThreads)
    TopLogprobsKernel(const float* logits, int vocab, const SamplingRow* params, const int32_t* tokens,
                      float* chosen_logprob, int32_t* top_ids, float* top_logprobs) {
  const int n = min(params[blockIdx.x].logprobs, vocab);
  if (n <= 0 || n > kMaxDeviceTopLogprobs) return;
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int tid = threadIdx.x;

  // log Z in double, as the host does.
  IndexedValue best{-INFINITY, INT_MAX};
  for (int i = tid; i < vocab; i += kThreads) best = ArgMaxOp()(best, {x[i], i});
  best = BlockAllReduce(best, ArgMaxOp());
  const double max_logit = best.index == INT_MAX ? static_cast<double>(x[0]) : best.value;
  double sum = 0.0;
  for (int i = tid; i < vocab; i += kThreads) sum += exp(static_cast<double>(x[i]) - max_logit);
  const double log_z = max_logit + log(BlockAllReduce(sum, SumOp()));
  if (tid == 0) chosen_logprob[blockIdx.x] = static_cast<float>(x[tokens[blockIdx.x]] - log_z);

  // The n-th largest key, then the keys above it (fewer than n) and, in id order, as many ties
  // at it as fill n.
  auto count_at_least = [&](uint64_t key) {
    int c = 0;
    for (int i = tid; i < vocab; i += kThreads) c += OrderedKey(x[i]) >= key;
    return BlockAllReduce(c, SumOp());
  };
  const uint32_t t = static_cast<uint32_t>(
      LargestKey<uint64_t>(0, uint64_t{1} << 32, [&](uint64_t key) { return count_at_least(key) >= n; }));
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int begin = min(vocab, tid * chunk), end = min(vocab, begin + chunk);
  int above = 0, ties = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = OrderedKey(x[i]);
    above += key > t;
    ties += key == t;
  }
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int ids[kMaxDeviceTopLogprobs];
  __shared__ float values[kMaxDeviceTopLogprobs];
  int above_before = 0, ties_before = 0, above_total = 0, ties_total = 0;
  Scan(scan_storage).ExclusiveSum(above, above_before, above_total);
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(ties, ties_before, ties_total);
  for (int i = begin; i < end; ++i) {
    const uint32_t key = OrderedKey(x[i]);
    if (key > t) {
      ids[above_before] = i, values[above_before] = x[i];
      ++above_before;
    } else if (key == t && above_total + ties_before < n) {
      ids[above_total + ties_before] = i, values[above_total + ties_before] = x[i];
      ++ties_before;
    }
  }
  __syncthreads();
  if (tid == 0) {
    // n <= 64 entries: insertion sort by (value desc, id asc).
    for (int a = 1; a < n; ++a) {
      const int id = ids[a];
      const float v = values[a];
      int b = a - 1;
      for (; b >= 0 && (values[b] < v || (values[b] == v && ids[b] > id)); --b) ids[b + 1] = ids[b], values[b + 1] = values[b];
      ids[b + 1] = id, values[b + 1] = v;
    }
    for (int a = 0; a < n; ++a) {
      top_ids[blockIdx.x * kMaxDeviceTopLogprobs + a] = ids[a];
      top_logprobs[blockIdx.x * kMaxDeviceTopLogprobs + a] = static_cast<float>(values[a] - log_z);
    }
  }
}

}  // namespace

cudaError_t ProcessLogits(float* logits, int rows, int vocab, const SamplingRow* params,
                          const int32_t* penalty_tokens, const int32_t* penalty_counts,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  ProcessLogitsKernel<<<rows, 256, 0, stream>>>(logits, vocab, params, penalty_tokens, penalty_counts);
  return cudaGetLastError();
}

cudaError_t SampleTokens(const float* logits, int rows, int vocab, const SamplingRow* params,
                         int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  SampleTokensKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, tokens);
  return cudaGetLastError();
}

cudaError_t TopLogprobs(const float* logits, int rows, int vocab, const SamplingRow* params,
                        const int32_t* tokens, float* chosen_logprob, int32_t* top_ids,
                        float* top_logprobs, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  TopLogprobsKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, tokens, chosen_logprob, top_ids,
                                                   top_logprobs);
  return cudaGetLastError();
}

}  // namespace lizard::kernels
