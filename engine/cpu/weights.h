// HostWeights: the CPU backend's weights, the model's tensors in float32 in the checkpoint's own
// layouts (row-major, projections as [out, in]), built from the tensor table
// (engine/model/tensor_table.h). The CUDA backend's counterpart is engine/cuda/weights.h.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model_config.h"
#include "engine/model/weight_source.h"

namespace lizard {

struct LayerWeights {
  LayerType type = LayerType::kLizard;
  std::vector<float> input_norm;  // [Hd]
  std::vector<float> post_norm;   // [Hd]
  std::vector<float> wq, wk, wv;  // [H*D, Hd], [Hkv*D, Hd], [Hkv*D, Hd]
  std::vector<float> wo;          // [Hd, H*D]
  std::vector<float> bq, bk, bv, bo;  // empty when the checkpoint has no bias
  // Lizard layers only (empty for softmax layers).
  std::vector<float> fmap_q, fmap_k;            // [H, D, F]
  std::vector<float> fmap_q_bias, fmap_k_bias;  // [H, F], zeros when absent
  std::vector<float> gate_w;                    // [H, Hd]
  std::vector<float> gate_b;                    // [H], zeros when absent
  std::vector<float> meta_logits;               // [H, m]
  std::vector<float> window_factor;             // [H]
  // MLP
  std::vector<float> w_gate, w_up;  // [I, Hd]
  std::vector<float> w_down;        // [Hd, I]
};

struct HostWeights {
  std::vector<float> embed;       // [V, Hd]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [Hd]
  std::vector<float> lm_head;     // [V, Hd]; equals embed when tied (copied)
  bool tied_embeddings = false;   // lm_head is a copy of embed (counted once)
  int64_t num_parameters() const;
};

// Validates (ValidateCheckpoint) and converts; absent zeros-when-absent tensors become zeros.
absl::StatusOr<HostWeights> LoadHostWeights(const ModelConfig& config, const Checkpoint& checkpoint,
                                            LoadProgressCallback on_progress = {});
// Deterministic random weights of the right shapes (benchmarks, tests), with the tensor table's
// spreads: projections ~ N(0, 1/in), norms ~ 1 + small noise, so activations stay in a sane range
// through many layers. The values depend only on (config shapes, seed): the generator is
// splitmix64 + Box-Muller, fixed here, so every machine and compiler produces the same weights.
HostWeights RandomHostWeights(const ModelConfig& config, uint64_t seed);
// The source's config and weights: a checkpoint directory opened and loaded, or random weights.
absl::StatusOr<HostWeights> LoadHostWeights(const WeightSource& source, ModelConfig* config);

}  // namespace lizard
