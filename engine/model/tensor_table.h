// The tensor table: every tensor of a Lizard/Llama checkpoint for a ModelConfig, with what each
// user of weights needs to know about it. Checkpoint validation, host loading, device loading and
// synthetic (random) weights all walk this one list, so they cannot disagree about a tensor.
//
// Dtype rules: a checkpoint may store any tensor as F32, F16 or BF16 (Checkpoint::Open refuses
// other dtypes). Host weights are float32; on a device, projections (and the embedding and LM
// head) are kept in bf16 and every other tensor in float32 (`device_dtype`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/model_config.h"

namespace lizard {

// What a tensor is, independent of its layer.
enum class TensorRole {
  kEmbed, kFinalNorm, kLmHead,
  kInputNorm, kPostNorm,
  kQWeight, kQBias, kKWeight, kKBias, kVWeight, kVBias, kOWeight, kOBias,
  kFeatureMapQ, kFeatureMapK, kFeatureMapQBias, kFeatureMapKBias,
  kForgetGateWeight, kForgetGateBias, kMetaLogits, kWindowFactor,
  kMlpGate, kMlpUp, kMlpDown,
};

// What an absent tensor means.
enum class WhenAbsent {
  kRefused,     // required: the checkpoint is refused without it
  kNoTensor,    // optional: the model has no such term (e.g. no q_proj bias is added)
  kZeros,       // optional: the backends use zeros of the tensor's shape
  kEmbedCopy,   // lm_head of a tied model: the embedding stands in (a stored one is checked, unused)
};

// Where a device backend puts a tensor: its own buffer, or rows of a fused projection so one
// GEMM serves several: q|k|v|forget-gate weight rows (kQkvg) and their biases (kQkvgBias), MLP
// gate|up rows (kGateUp).
enum class FusedInto { kNone, kQkvg, kQkvgBias, kGateUp };

struct TensorSpec {
  std::string name;   // as in the checkpoint, e.g. "model.layers.3.self_attn.k_proj.weight"
  int64_t layer = -1;  // -1 for model-level tensors
  TensorRole role = TensorRole::kEmbed;
  std::vector<int64_t> shape;
  WhenAbsent when_absent = WhenAbsent::kRefused;
  DType device_dtype = DType::kF32;  // kBF16 or kF32
  // Synthetic weights: N(init_mean, init_stddev^2) per element. Only tensors a minimal checkpoint
  // holds (kRefused) and the zeros-when-absent ones are generated; kNoTensor and kEmbedCopy
  // tensors stay absent.
  double init_mean = 0.0, init_stddev = 0.0;
  FusedInto fused = FusedInto::kNone;
  int64_t fused_offset = 0;  // first element of this tensor in the fused buffer

  int64_t numel() const;
  bool synthetic() const { return when_absent == WhenAbsent::kRefused || when_absent == WhenAbsent::kZeros; }
};

// Every tensor a checkpoint for `config` may hold, in a fixed order (the order in which synthetic
// weights draw their random streams, so it must not change): embedding; per layer the norms,
// attention projections and biases, Lizard parameters, MLP; final norm; LM head.
// `config.layer_types` must have num_layers entries.
std::vector<TensorSpec> TensorTable(const ModelConfig& config);

}  // namespace lizard
