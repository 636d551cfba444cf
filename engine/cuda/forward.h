// ForwardPass: the CUDA backend's model over a StepPlan. It packs the plan's chunks into
// internal steps, enqueues every layer's kernels and projections on the stream, computes the
// logits rows, and either copies them out or has DeviceSampler sample them. Decode-only steps of
// pure Lizard models replay a CUDA graph per batch-size bucket (GraphCache).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/graph_cache.h"
#include "engine/cuda/prefill_gemm.h"
#include "engine/cuda/sampler.h"
#include "engine/cuda/state_pool.h"
#include "engine/cuda/weights.h"
#include "engine/model/model_config.h"
#include "engine/step_plan.h"
#include "kernels/kernels.h"

namespace lizard::cuda {

// OK when the kernels support `config`'s shapes (head_dim even and <= 256, feature_dim <= 128).
absl::Status CheckKernelLimits(const ModelConfig& config);

class ForwardPass {
 public:
  ForwardPass() = default;
  ForwardPass(const ForwardPass&) = delete;
  ForwardPass& operator=(const ForwardPass&) = delete;
  ~ForwardPass();

  // Allocates the activations for the largest internal step of a model CheckKernelLimits
  // accepted. `weights` and `state` must outlive this; `stream` is the
  // caller's. Projections go through kernels::GemmBf16 when `batch_invariant`, else cuBLAS.
  absl::Status Init(const ModelConfig& config, const DeviceWeights& weights, StatePool& state,
                    bool batch_invariant, cudaStream_t stream);

  // Which GEMMs the projections run, for logs ("GemmBf16 (decode rows) + PrefillGemm ..." or why
  // prompt rows fell back to GemmBf16).
  const std::string& projections() const { return projections_; }

  // Runs a plan ValidateStepPlan accepted (Backend::Forward's contract).
  absl::Status Run(const StepPlan& plan, StepOutput* out);

 private:
  // One sequence's share of an internal step.
  struct StepSeq {
    SlotId slot = -1;
    int64_t first_pos = 0;
    const int32_t* tokens = nullptr;
    int n = 0;
    LogitsMode logits = LogitsMode::kNone;
    bool decode = false;  // the sampled token fed back: the recurrent form; else prompt tokens
  };
  // What one internal step holds. Decode rows come first: rows [0, decode_rows) belong to the
  // sequences [0, decode_seqs), the prompt rows after them to the rest.
  struct StepShape {
    int rows = 0, decode_rows = 0;
    int seqs = 0, decode_seqs = 0;
    int max_keys = 1;   // the longest softmax attention span
    int max_tiles = 0;  // the most 64-token blocks (at absolute positions) of one prompt sequence
  };

  absl::Status AllocateActivations();
  // y = x w^T for the step's rows: decode rows by kernels::GemmBf16, prompt rows by PrefillGemm
  // (each batch invariant on its own), or all rows by cuBLAS when !batch_invariant.
  // With `result`, for an output read only by a kernel that takes a kernels::GemmOutput
  // (AddRmsNorm, SwiGlu) before the next projection: when GemmBf16 takes all the rows (decode-only
  // steps) it may leave its split partials in the workspace for that kernel to add (one launch
  // fewer) instead of writing y; *result says where the output is. A `bias` (device, [out], or
  // null; not with `result`) is added to every row, where it can with the sums (GemmBf16's
  // split-K reduce, PrefillGemm's epilogue).
  absl::Status Project(const __nv_bfloat16* x, const StepShape& shape, int in, const DeviceBuffer& w, int out,
                       float* y, kernels::GemmOutput* result = nullptr, const float* bias = nullptr);
  // The residual branch's last output (o, then down projection) as the next add + RMSNorm takes
  // it: rows [0, rows) still to be added (`out`: y or split partials, + bias), the rest already
  // added onto x by PrefillGemm.
  struct Branch {
    kernels::GemmOutput out;
    int rows = 0;
  };
  // Project for a residual branch (o and down projections): prompt rows that PrefillGemm takes
  // are added straight onto x's rows in its epilogue (unless `bias`: it would be added in another
  // order), which spares add + RMSNorm a pass over y; the other rows go to y as Project puts them.
  absl::Status ProjectBranch(const __nv_bfloat16* in_rows, const StepShape& shape, int in, const DeviceBuffer& w,
                             bool bias, Branch* branch);
  // x += branch (the rows that have one), then u = RMSNorm(x) * weight for all `rows` rows.
  absl::Status AddNorm(const Branch& branch, const DeviceBuffer& weight, int rows);
  // The Lizard attention of one layer over the step's rows (qkvg, krot as EnqueueModel has them).
  absl::Status LizardLayer(const DeviceLayer& L, const StepShape& shape, const float* krot, int krot_ld);
  // Runs the sequences of one internal step (at most kMaxStepTokens tokens) and appends their
  // rows to `out`: logits, or with `sampling` (the whole plan's rows) the sampled tokens.
  absl::Status RunStep(const std::vector<StepSeq>& seqs, const std::vector<RowSampling>& sampling, StepOutput* out);
  // Enqueues the whole model for a step already described in the device meta buffer; the final
  // normed rows are left in u_.
  absl::Status EnqueueModel(const StepShape& shape);
  // LM head for `R` rows listed in the meta buffer, starting at row `first`, into logits_.
  absl::Status EnqueueLogits(int first, int R);

  ModelConfig config_;
  const DeviceWeights* weights_ = nullptr;
  StatePool* state_ = nullptr;
  cudaStream_t stream_ = nullptr;
  // Prompt rows' window attention and ring write run here beside the feature maps and the gated
  // linear attention on stream_ (neither kernel fills the GPU on one long prompt); the events
  // fork from stream_ and join back (LizardLayer).
  OwnedStream side_stream_;
  OwnedEvent fork_, window_done_, ring_done_;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;
  bool batch_invariant_ = true;  // projections by kernels::GemmBf16 / PrefillGemm, else cuBLAS
  DeviceBuffer gemm_workspace_;  // kernels::GemmBf16's split-K partial sums
  PrefillGemm prefill_gemm_;
  bool use_prefill_gemm_ = false;  // PrefillGemm found an algorithm for every shape
  std::string projections_;
  // Prompt rows of Lizard layers take the chunked kernels (window_prefill.cu, chunked_prefill.cu)
  // when the shapes fit them (head_dim 128, 2F 128 or 256), else the recurrent ones.
  bool chunked_prefill_ = false;

  // Sizes.
  int Hd_ = 0, H_ = 0, Hkv_ = 0, D_ = 0, F_ = 0, I_ = 0, V_ = 0, n_qkv_ = 0;
  kernels::LizardDims dims_;
  DeviceBuffer inv_freq_;  // RoPE inverse frequencies (double)

  // Activations for kMaxStepTokens rows.
  DeviceBuffer x_, delta_, u_, qkvg_, krot_, qrot_, y_, gate_up_, act_;
  DeviceBuffer fq_, fk_, gamma_, den_, yw_, partial_, fmap_logits_;
  DeviceBuffer fq16_, fk16_;  // prompt rows' feature maps in bf16 (the chunked kernels' operands)
  DeviceBuffer scan_scratch_;  // the two-pass chunked form's chunk states (chunked_prefill.h)
  int scan_chunks_ = 0;        // ... their capacity in chunks
  int64_t partial_entries_ = 0;
  DeviceBuffer logit_in_, logits_;
  DeviceBuffer meta_;
  PinnedBuffer meta_host_;

  DeviceSampler sampler_;
  GraphCache graphs_;
};

}  // namespace lizard::cuda
