// The model over one StepPlan on the CPU: every token of the step (the plan's chunks in order)
// goes through each layer together. Projections and the MLP are one GEMM per weight for all
// rows; the sequence mixing runs per sequence, decode chunks in the Lizard attention's
// recurrent form and prompt chunks (any length) in its chunked form (lizard_attention/).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cpu/state_pool.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/weights.h"
#include "engine/model/model_config.h"
#include "engine/step_plan.h"

namespace lizard::cpu {

class ModelForward {
 public:
  // Every argument must outlive the ModelForward.
  ModelForward(const ModelConfig& config, const HostWeights& weights, ThreadPool& threads,
               StatePool& states);

  // Runs a plan that ValidateStepPlan accepted: out gets the logits rows in
  // StepPlan::num_logits_rows() order (no sampling), the chunks' slots advance past their tokens.
  void Run(const StepPlan& plan, StepOutput* out);

 private:
  struct Segment;
  struct Activations;

  // y += Gemm(x, W^T) (+ bias): one projection of all rows, its output columns split over the
  // thread pool.
  void Project(const float* x, int64_t rows, int64_t in, const std::vector<float>& w,
               const std::vector<float>& bias, int64_t out_dim, float* y, bool accumulate);
  void LizardAttention(int64_t layer, const std::vector<Segment>& segments, Activations& a);
  // key_positions holds 0, 1, 2, ... up to at least every segment's last position.
  void SoftmaxAttention(int64_t layer, const std::vector<Segment>& segments,
                        const std::vector<int64_t>& key_positions, Activations& a);
  void Mlp(int64_t layer, Activations& a);

  const ModelConfig& config_;
  const HostWeights& weights_;
  ThreadPool& threads_;  // every parallel loop of the forward, projections included
  StatePool& states_;
  std::vector<double> inv_freq_;
};

}  // namespace lizard::cpu
