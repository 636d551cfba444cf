#include "engine/cuda/weights.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "engine/model/checkpoint.h"
#include "engine/model/tensor_table.h"
#include "kernels/kernels.h"

namespace lizard::cuda {
namespace {

using bf16 = __nv_bfloat16;
namespace k = kernels;

// The buffer that holds `spec`'s tensor (at element spec.fused_offset).
DeviceBuffer& Destination(DeviceWeights& w, const TensorSpec& spec) {
  DeviceLayer* L = spec.layer < 0 ? nullptr : &w.layers[spec.layer];
  switch (spec.fused) {
    case FusedInto::kQkvg: return L->w_qkvg;
    case FusedInto::kQkvgBias: return L->b_qkvg;
    case FusedInto::kGateUp: return L->w_gate_up;
    case FusedInto::kNone: break;
  }
  switch (spec.role) {
    case TensorRole::kEmbed: return w.embed;
    case TensorRole::kFinalNorm: return w.final_norm;
    case TensorRole::kLmHead: return w.lm_head;
    case TensorRole::kInputNorm: return L->input_norm;
    case TensorRole::kPostNorm: return L->post_norm;
    case TensorRole::kOWeight: return L->w_o;
    case TensorRole::kOBias: return L->b_o;
    case TensorRole::kFeatureMapQ: return L->fmap_q;
    case TensorRole::kFeatureMapK: return L->fmap_k;
    case TensorRole::kFeatureMapQBias: return L->fmap_q_bias;
    case TensorRole::kFeatureMapKBias: return L->fmap_k_bias;
    case TensorRole::kMetaLogits: return L->meta_logits;
    case TensorRole::kWindowFactor: return L->window_factor;
    case TensorRole::kMlpDown: return L->w_down;
    // Fused (handled above).
    case TensorRole::kQWeight:
    case TensorRole::kQBias:
    case TensorRole::kKWeight:
    case TensorRole::kKBias:
    case TensorRole::kVWeight:
    case TensorRole::kVBias:
    case TensorRole::kForgetGateWeight:
    case TensorRole::kForgetGateBias:
    case TensorRole::kMlpGate:
    case TensorRole::kMlpUp:
      break;
  }
  __builtin_unreachable();  // the table fuses exactly the roles listed last
}

// Sizes `w` for `config` and allocates every buffer that a tensor with `stored(spec)` goes to,
// zeroed (a fused bias keeps zeros where a part is absent); a fused buffer covers all its parts.
absl::Status Allocate(const ModelConfig& config, const std::vector<TensorSpec>& table,
                      const std::function<bool(const TensorSpec&)>& stored, cudaStream_t stream,
                      DeviceWeights& w) {
  w.tied = config.tie_word_embeddings;
  w.layers.resize(config.num_layers);
  int lizard = 0, softmax = 0;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    DeviceLayer& L = w.layers[l];
    L.type = config.layer_types[l];
    if (L.type == LayerType::kLizard) {
      L.lizard_index = lizard++;
    } else {
      L.softmax_index = softmax++;
    }
  }
  struct Need {
    size_t bytes = 0;
    bool used = false;
  };
  std::map<DeviceBuffer*, Need> needs;
  for (const TensorSpec& spec : table) {
    Need& need = needs[&Destination(w, spec)];
    need.bytes = std::max(need.bytes, (spec.fused_offset + spec.numel()) * DTypeSize(spec.device_dtype));
    need.used |= stored(spec);
  }
  w.bytes = 0;
  for (auto& [buffer, need] : needs) {
    if (!need.used) continue;
    if (absl::Status s = buffer->Allocate(need.bytes); !s.ok()) return s;
    LIZARD_CUDA_RETURN(cudaMemsetAsync(buffer->get(), 0, need.bytes, stream));
    w.bytes += static_cast<int64_t>(need.bytes);
  }
  return absl::OkStatus();
}

int DTypeCode(DType d) { return d == DType::kF32 ? 0 : d == DType::kF16 ? 1 : 2; }

// The checkpoint's tensors into `w`: each copied raw from the mapped file into a staging buffer,
// then converted on the device into its destination.
absl::Status Upload(const Checkpoint& checkpoint, const std::vector<TensorSpec>& table,
                    LoadProgressReporter& progress, cudaStream_t stream, DeviceWeights& w) {
  size_t max_bytes = 0;
  for (const std::string& name : checkpoint.Names()) max_bytes = std::max(max_bytes, checkpoint.Find(name)->nbytes);
  DeviceBuffer staging;
  if (absl::Status s = staging.Allocate(max_bytes); !s.ok()) return s;
  for (const TensorSpec& spec : table) {
    if (!LoadProgressReporter::Loads(checkpoint, spec)) continue;
    const TensorView* t = checkpoint.Find(spec.name);
    // Every copy goes through `stream`: a plain cudaMemcpy from pageable memory may return before
    // its DMA is done, and `stream` does not wait for the legacy default stream.
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(staging.get(), t->data, t->nbytes, cudaMemcpyHostToDevice, stream));
    const DeviceBuffer& dst = Destination(w, spec);
    if (spec.device_dtype == DType::kBF16) {
      LIZARD_CUDA_RETURN(k::ConvertToBf16(staging.get(), DTypeCode(t->dtype), t->numel(),
                                          dst.get<bf16>() + spec.fused_offset, stream));
    } else {
      LIZARD_CUDA_RETURN(k::ConvertToF32(staging.get(), DTypeCode(t->dtype), t->numel(),
                                         dst.get<float>() + spec.fused_offset, stream));
    }
    // The staging buffer is reused by the next tensor.
    if (absl::Status s = CudaStatus(cudaStreamSynchronize(stream), spec.name.c_str()); !s.ok()) return s;
    progress.Loaded(*t);
  }
  return absl::OkStatus();
}

// Random values for every synthetic tensor: uniform with the table's mean and standard deviation,
// one counter-hash stream per tensor.
absl::Status Randomize(const std::vector<TensorSpec>& table, uint64_t seed, cudaStream_t stream,
                       DeviceWeights& w) {
  uint64_t stream_id = seed * 1000003;
  for (const TensorSpec& spec : table) {
    if (!spec.synthetic()) continue;
    // Uniform on [-a, a) has standard deviation a / sqrt(3).
    const float scale = static_cast<float>(spec.init_stddev * std::sqrt(3.0));
    const float mean = static_cast<float>(spec.init_mean);
    const DeviceBuffer& dst = Destination(w, spec);
    if (spec.device_dtype == DType::kBF16) {
      LIZARD_CUDA_RETURN(k::RandomFillBf16(dst.get<bf16>() + spec.fused_offset, spec.numel(), ++stream_id, scale,
                                           mean, stream));
    } else {
      LIZARD_CUDA_RETURN(k::RandomFillF32(dst.get<float>() + spec.fused_offset, spec.numel(), ++stream_id, scale,
                                          mean, stream));
    }
  }
  return CudaStatus(cudaStreamSynchronize(stream), "random weights");
}

}  // namespace

absl::StatusOr<DeviceWeights> LoadDeviceWeights(const WeightSource& source, const ModelConfig& config,
                                                cudaStream_t stream) {
  const std::vector<TensorSpec> table = TensorTable(config);
  DeviceWeights w;
  if (source.synthetic()) {
    auto stored = [](const TensorSpec& spec) { return spec.synthetic(); };
    if (absl::Status s = Allocate(config, table, stored, stream, w); !s.ok()) return s;
    if (absl::Status s = Randomize(table, source.seed, stream, w); !s.ok()) return s;
    return w;
  }
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(source.model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  if (absl::Status s = ValidateCheckpoint(config, **checkpoint); !s.ok()) return s;
  auto stored = [&](const TensorSpec& spec) { return LoadProgressReporter::Loads(**checkpoint, spec); };
  if (absl::Status s = Allocate(config, table, stored, stream, w); !s.ok()) return s;
  LoadProgressReporter progress(source.on_progress, **checkpoint, table);
  if (absl::Status s = Upload(**checkpoint, table, progress, stream, w); !s.ok()) return s;
  return w;
}

}  // namespace lizard::cuda
