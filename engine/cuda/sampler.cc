// DeviceSampler: see sampler.h.
#include "engine/cuda/sampler.h"

#include <algorithm>
#include <limits>
#include <span>

#include "engine/sampling/sampler.h"
#include "kernels/kernels.h"

namespace lizard::cuda {

namespace k = kernels;

absl::Status DeviceSampler::Init(int max_rows, cudaStream_t stream) {
  max_rows_ = max_rows;
  stream_ = stream;
  LIZARD_RETURN_IF_ERROR(sample_params_.Allocate(max_rows_ * sizeof(k::SamplingRow)));
  LIZARD_RETURN_IF_ERROR(sample_tokens_.Allocate(max_rows_ * sizeof(int32_t)));
  LIZARD_RETURN_IF_ERROR(sample_host_.Allocate(sample_params_.bytes() + sample_tokens_.bytes()));
  LIZARD_RETURN_IF_ERROR(logprobs_.Allocate(max_rows_ * (1 + 2 * k::kMaxDeviceTopLogprobs) * sizeof(float)));
  LIZARD_RETURN_IF_ERROR(logprobs_host_.Allocate(logprobs_.bytes()));
  return absl::OkStatus();
}

absl::Status DeviceSampler::Sample(float* logits, int vocab, const RowSampling* rows, int n, int64_t out_row,
                                   StepOutput* out) {
  // Penalty entries: every seen token of the rows that have a penalty, with its generated count.
  int64_t entries = 0;
  for (int i = 0; i < n; ++i) {
    if (rows[i].history != nullptr && rows[i].params.penalized()) entries += rows[i].history->seen().size();
  }
  if (entries > std::numeric_limits<int32_t>::max() / 2) return absl::InvalidArgumentError("token history too long");
  const size_t penalty_bytes = static_cast<size_t>(2 * entries) * sizeof(int32_t);
  if (penalty_bytes > penalties_.bytes()) {
    const size_t grown = std::max(penalty_bytes, 2 * penalties_.bytes());
    LIZARD_RETURN_IF_ERROR(penalties_.Allocate(grown));
    LIZARD_RETURN_IF_ERROR(penalties_host_.Allocate(grown));
  }
  auto* params = sample_host_.get<k::SamplingRow>();
  int32_t* tokens = reinterpret_cast<int32_t*>(params + max_rows_);
  int32_t* penalty_tokens = penalties_host_.get<int32_t>();
  int32_t* penalty_counts = penalty_tokens + entries;
  int32_t e = 0;
  for (int i = 0; i < n; ++i) {
    const SamplingParams& sp = rows[i].params;
    k::SamplingRow& p = params[i];
    p = {sp.temperature, sp.top_k, sp.top_p, sp.min_p, sp.repetition_penalty, sp.presence_penalty,
         sp.frequency_penalty, e, e, rows[i].seed, rows[i].step, rows[i].logprobs};
    if (rows[i].history != nullptr && sp.penalized()) {
      const auto& generated = rows[i].history->generated_counts();
      for (int32_t t : rows[i].history->seen()) {
        const auto it = generated.find(t);
        penalty_tokens[e] = t;
        penalty_counts[e++] = it == generated.end() ? 0 : it->second;
      }
      p.penalty_end = e;
    }
  }
  const int32_t* device_tokens = penalties_.get<int32_t>();
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(sample_params_.get(), params, n * sizeof(k::SamplingRow), cudaMemcpyHostToDevice, stream_));
  if (entries > 0) {
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(penalties_.get(), penalty_tokens, penalty_bytes, cudaMemcpyHostToDevice, stream_));
  }
  LIZARD_CUDA_RETURN(k::ProcessLogits(logits, n, vocab, sample_params_.get<k::SamplingRow>(), device_tokens,
                                      device_tokens + entries, stream_));
  LIZARD_CUDA_RETURN(k::SampleTokens(logits, n, vocab, sample_params_.get<k::SamplingRow>(), sample_tokens_.get<int32_t>(), stream_));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(tokens, sample_tokens_.get(), n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  // Logprobs: ranked on the device up to kMaxDeviceTopLogprobs alternatives (only those come
  // back); a request for more gets its processed row copied back and ranked on the host.
  bool device_logprobs = false;
  auto ranked_on_host = [&](int i) { return std::min(rows[i].logprobs, vocab) > k::kMaxDeviceTopLogprobs; };
  std::vector<int> host_rows;
  for (int i = 0; i < n; ++i) {
    if (ranked_on_host(i)) {
      host_rows.push_back(i);
    } else if (rows[i].logprobs > 0) {
      device_logprobs = true;
    }
  }
  constexpr int kTop = k::kMaxDeviceTopLogprobs;
  float* chosen = logprobs_.get<float>();
  int32_t* top_ids = reinterpret_cast<int32_t*>(chosen + max_rows_);
  float* top_values = chosen + max_rows_ * (1 + kTop);
  if (device_logprobs) {
    LIZARD_CUDA_RETURN(k::TopLogprobs(logits, n, vocab, sample_params_.get<k::SamplingRow>(), sample_tokens_.get<int32_t>(),
                                      chosen, top_ids, top_values, stream_));
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(logprobs_host_.get(), logprobs_.get(), logprobs_.bytes(), cudaMemcpyDeviceToHost, stream_));
  }
  logprob_rows_.resize(host_rows.size() * static_cast<size_t>(vocab));
  for (size_t j = 0; j < host_rows.size(); ++j) {
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(logprob_rows_.data() + j * vocab, logits + static_cast<int64_t>(host_rows[j]) * vocab,
                                       vocab * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  }
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  const float* chosen_host = logprobs_host_.get<float>();
  const int32_t* top_ids_host = reinterpret_cast<const int32_t*>(chosen_host + max_rows_);
  const float* top_values_host = chosen_host + max_rows_ * (1 + kTop);
  for (int i = 0; i < n; ++i) {
    out->tokens[out_row + i] = tokens[i];
    if (rows[i].logprobs <= 0 || ranked_on_host(i)) continue;
    TokenLogprobs& lp = out->logprobs[out_row + i];
    lp.chosen = {tokens[i], chosen_host[i]};
    lp.top.clear();
    for (int a = 0; a < std::min(rows[i].logprobs, vocab); ++a) {
      lp.top.push_back({top_ids_host[i * kTop + a], top_values_host[i * kTop + a]});
    }
  }
  for (size_t j = 0; j < host_rows.size(); ++j) {
    const int i = host_rows[j];
    FillLogprobs(std::span<const float>(logprob_rows_.data() + j * vocab, vocab), tokens[i], rows[i].logprobs,
                 &out->logprobs[out_row + i]);
  }
  return absl::OkStatus();
}

}  // namespace lizard::cuda
