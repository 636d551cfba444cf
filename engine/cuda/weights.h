// DeviceWeights: the CUDA backend's weights, built from the tensor table
// (engine/model/tensor_table.h): projections (and the embedding and LM head) in bf16 [out, in],
// everything else float32, q|k|v|forget-gate and gate|up rows fused so one GEMM serves each group.
// The CPU backend's counterpart is engine/cpu/weights.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cuda/device_memory.h"
#include "engine/model/model_config.h"
#include "engine/model/weight_source.h"

namespace lizard::cuda {

// One layer's weights. An optional tensor the weights lack leaves its buffer empty (0 bytes):
// the bias is not added, a feature-map bias counts as zeros.
struct DeviceLayer {
  LayerType type = LayerType::kLizard;
  int lizard_index = -1;   // into StateLayout::lizard_layers
  int softmax_index = -1;  // into the KV pools
  DeviceBuffer w_qkvg;     // [H*D + 2*Hkv*D (+ H gate rows for lizard layers), Hd]
  DeviceBuffer b_qkvg;     // float [rows of w_qkvg]; zeros for absent parts, empty when all are
  DeviceBuffer w_o, b_o;   // [Hd, H*D], float [Hd]
  DeviceBuffer w_gate_up;  // [2I, Hd]: gate rows then up rows
  DeviceBuffer w_down;     // [Hd, I]
  DeviceBuffer input_norm, post_norm;  // float [Hd]
  DeviceBuffer fmap_q, fmap_k, fmap_q_bias, fmap_k_bias, meta_logits, window_factor;
};

struct DeviceWeights {
  DeviceBuffer embed, lm_head, final_norm;  // lm_head empty when tied
  std::vector<DeviceLayer> layers;
  bool tied = false;
  int64_t bytes = 0;  // all weight buffers together

  // The LM head's weight: the embedding when tied.
  const DeviceBuffer& head() const { return tied ? embed : lm_head; }
};

// `source`'s weights for `config` on the current device: a checkpoint's tensors validated
// (ValidateCheckpoint) and converted, or random ones generated on the device with the tensor
// table's mean and standard deviation (uniform, not normal: benchmarks only). Work is ordered on
// `stream`, which is idle when this returns.
absl::StatusOr<DeviceWeights> LoadDeviceWeights(const WeightSource& source, const ModelConfig& config,
                                                cudaStream_t stream);

}  // namespace lizard::cuda
