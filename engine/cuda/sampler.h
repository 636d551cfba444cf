// DeviceSampler: the CUDA backend's sampling of logits rows on the device (kernels/sampling.cu,
// which follows the host sampler of engine/sampling/sampler.h step by step). It stages each
// row's parameters and penalty entries in pinned memory, runs the kernels, and brings back only
// the token ids and the logprobs that were asked for.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/device_memory.h"
#include "engine/sampling/sampling.h"
#include "engine/step_plan.h"

namespace lizard::cuda {

class DeviceSampler {
 public:
  // Buffers for up to `max_rows` rows per call; work is ordered on `stream` (owned by the caller).
  absl::Status Init(int max_rows, cudaStream_t stream);

  // Samples the `n` <= max_rows processed-in-place rows of `logits` (device, [n, vocab]) as
  // `rows` says; the results go to out rows out_row .. out_row + n - 1. Returns when they are there.
  absl::Status Sample(float* logits, int vocab, const RowSampling* rows, int n, int64_t out_row, StepOutput* out);

 private:
  int max_rows_ = 0;
  cudaStream_t stream_ = nullptr;
  // The rows' parameters and penalty entries (seen tokens, then their generated counts) staged
  // in pinned memory; tokens come back through sample_host_ too.
  DeviceBuffer sample_params_, sample_tokens_, penalties_;
  PinnedBuffer sample_host_, penalties_host_;
  // Logprobs: per row the chosen token's, then kMaxDeviceTopLogprobs top ids and values.
  DeviceBuffer logprobs_;
  PinnedBuffer logprobs_host_;
  std::vector<float> logprob_rows_;  // processed rows of requests wanting more than the device ranks
};

}  // namespace lizard::cuda
