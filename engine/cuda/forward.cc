// ForwardPass: see forward.h.
//
// One step runs as: embedding -> per layer [add+RMSNorm -> fused QKV+gate GEMM -> attention
// (Lizard kernels or paged softmax attention) -> O GEMM -> add+RMSNorm -> gate|up GEMM ->
// SwiGLU -> down GEMM] -> final norm -> LM head on the rows that need logits. Decode-only steps
// of pure Lizard models replay a CUDA graph captured per batch-size bucket.
#include "engine/cuda/forward.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/model/rope.h"
#include "kernels/lizard_attention/chunked_prefill.h"

namespace lizard::cuda {
namespace {

static_assert(kernels::kGlaChunk == kPrefillAlignment, "the chunked kernels' blocks are the engine's prompt cuts");

using bf16 = __nv_bfloat16;
namespace k = kernels;

// Tokens per internal step: larger plans are cut into pieces of at most this many tokens.
constexpr int kMaxStepTokens = 2048;
// Rows of logits computed per LM-head GEMM.
constexpr int kMaxLogitRows = 256;
// Decode batch sizes with a captured CUDA graph (a batch is padded up to the next one).
constexpr int kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

// The int32 arrays describing one internal step, copied to the device in one transfer.
enum MetaField {
  kTokIds, kTokSlot, kTokPos, kTokFirstRow, kTokFirstPos, kTokSingle,
  kSeqSlot, kSeqFirstRow, kSeqNumTokens, kSeqFirstPos, kLogitRows, kNumMetaFields
};

}  // namespace

absl::Status CheckKernelLimits(const ModelConfig& config) {
  if (config.head_dim % 2 != 0 || config.head_dim > 256) {
    return absl::InvalidArgumentError("CUDA backend: head_dim must be even and <= 256");
  }
  if (config.num_lizard_layers() > 0 && 2 * config.feature_dim > 256) {
    return absl::InvalidArgumentError("CUDA backend: feature_dim must be <= 128");
  }
  return absl::OkStatus();
}

ForwardPass::~ForwardPass() {
  if (cublas_ != nullptr) cublasDestroy(cublas_);
}

absl::Status ForwardPass::Init(const ModelConfig& config, const DeviceWeights& weights, StatePool& state,
                               bool batch_invariant, cudaStream_t stream) {
  config_ = config;
  weights_ = &weights;
  state_ = &state;
  batch_invariant_ = batch_invariant;
  stream_ = stream;
  Hd_ = static_cast<int>(config_.hidden_size);
  H_ = static_cast<int>(config_.num_heads);
  Hkv_ = static_cast<int>(config_.num_kv_heads);
  D_ = static_cast<int>(config_.head_dim);
  F_ = static_cast<int>(config_.feature_dim);
  I_ = static_cast<int>(config_.intermediate_size);
  V_ = static_cast<int>(config_.vocab_size);
  n_qkv_ = (H_ + 2 * Hkv_) * D_;
  dims_.heads = H_;
  dims_.kv_heads = Hkv_;
  dims_.head_dim = D_;
  dims_.features = F_;
  dims_.window = static_cast<int>(config_.window_size);
  dims_.meta = static_cast<int>(config_.num_meta_tokens);
  dims_.window_rope = config_.window_rope;
  dims_.normalize = config_.gla_normalize;

  cudaStream_t side = nullptr;
  LIZARD_CUDA_RETURN(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  side_stream_.reset(side);
  for (OwnedEvent* event : {&fork_, &window_done_, &ring_done_}) {
    cudaEvent_t e = nullptr;
    LIZARD_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    event->reset(e);
  }
  LIZARD_RETURN_IF_ERROR(CublasStatus(cublasCreate(&cublas_), "cublasCreate"));
  LIZARD_RETURN_IF_ERROR(CublasStatus(cublasSetStream(cublas_, stream_), "cublasSetStream"));
  // A fixed workspace keeps cuBLAS from allocating during graph capture.
  LIZARD_RETURN_IF_ERROR(cublas_workspace_.Allocate(32 << 20));
  LIZARD_RETURN_IF_ERROR(CublasStatus(
      cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()), "cublasSetWorkspace"));

  const std::vector<double> inv_freq = RopeInverseFrequencies(config_);
  LIZARD_RETURN_IF_ERROR(inv_freq_.Allocate(inv_freq.size() * sizeof(double)));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(inv_freq_.get(), inv_freq.data(), inv_freq_.bytes(), cudaMemcpyHostToDevice, stream_));
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  chunked_prefill_ = kernels::PrefillPathSupports(dims_);
  LIZARD_RETURN_IF_ERROR(AllocateActivations());
  return sampler_.Init(kMaxLogitRows, stream_);
}

absl::Status ForwardPass::AllocateActivations() {
  const int64_t T = kMaxStepTokens, f = sizeof(float), b = sizeof(bf16);
  const int64_t F2 = 2 * static_cast<int64_t>(F_);
  LIZARD_RETURN_IF_ERROR(x_.Allocate(T * Hd_ * f));
  LIZARD_RETURN_IF_ERROR(delta_.Allocate(T * Hd_ * f));
  LIZARD_RETURN_IF_ERROR(u_.Allocate(T * Hd_ * b));
  LIZARD_RETURN_IF_ERROR(qkvg_.Allocate(T * (n_qkv_ + H_) * f));
  LIZARD_RETURN_IF_ERROR(krot_.Allocate(T * Hkv_ * D_ * f));
  LIZARD_RETURN_IF_ERROR(y_.Allocate(T * H_ * D_ * b));
  LIZARD_RETURN_IF_ERROR(gate_up_.Allocate(T * 2 * I_ * f));
  LIZARD_RETURN_IF_ERROR(act_.Allocate(T * I_ * b));
  if (config_.num_lizard_layers() > 0) {
    LIZARD_RETURN_IF_ERROR(fq_.Allocate(T * H_ * F2 * f));
    LIZARD_RETURN_IF_ERROR(fk_.Allocate(T * H_ * F2 * f));
    LIZARD_RETURN_IF_ERROR(gamma_.Allocate(T * H_ * f));
    LIZARD_RETURN_IF_ERROR(den_.Allocate(T * H_ * f));
    LIZARD_RETURN_IF_ERROR(yw_.Allocate(T * H_ * D_ * f));
    LIZARD_RETURN_IF_ERROR(fmap_logits_.Allocate(T * 2 * H_ * F_ * f));
    if (chunked_prefill_) {
      LIZARD_RETURN_IF_ERROR(fq16_.Allocate(T * H_ * F2 * b));
      LIZARD_RETURN_IF_ERROR(fk16_.Allocate(T * H_ * F2 * b));
      // The two-pass form's chunk states: a step's prompt rows in at most kTwoPassMaxSeqs
      // sequences (launches with more take the one-pass form).
      scan_chunks_ = k::TwoPassChunks(kMaxStepTokens, k::kTwoPassMaxSeqs);
      LIZARD_RETURN_IF_ERROR(scan_scratch_.Allocate(k::TwoPassScratchBytes(dims_, scan_chunks_)));
    }
  }
  if (config_.num_softmax_layers() > 0) {
    LIZARD_RETURN_IF_ERROR(qrot_.Allocate(T * H_ * D_ * f));
    partial_entries_ = T * H_ + 8192;
    LIZARD_RETURN_IF_ERROR(partial_.Allocate(partial_entries_ * (D_ + 2) * f));
  }
  LIZARD_RETURN_IF_ERROR(logit_in_.Allocate(int64_t{kMaxLogitRows} * Hd_ * b));
  LIZARD_RETURN_IF_ERROR(logits_.Allocate(int64_t{kMaxLogitRows} * V_ * f));
  LIZARD_RETURN_IF_ERROR(meta_.Allocate(int64_t{kNumMetaFields} * T * sizeof(int32_t)));
  LIZARD_RETURN_IF_ERROR(meta_host_.Allocate(meta_.bytes()));
  // The largest split-K workspace of the projections' shapes (one workspace: calls are ordered
  // on the stream).
  const std::vector<std::pair<int, int>> shapes = {{Hd_, n_qkv_ + H_}, {Hd_, n_qkv_}, {H_ * D_, Hd_},
                                                   {Hd_, 2 * I_},       {I_, Hd_},     {Hd_, V_}};
  size_t workspace = 0;
  for (auto [in, out] : shapes) workspace = std::max(workspace, k::GemmBf16WorkspaceBytes(in, out));
  LIZARD_RETURN_IF_ERROR(gemm_workspace_.Allocate(workspace));
  if (!batch_invariant_) {
    projections_ = "cuBLAS (not batch invariant)";
    return absl::OkStatus();
  }
  // The prompt rows' projections (the LM head stays on GemmBf16: at most kMaxLogitRows rows).
  // Without a qualifying cuBLASLt algorithm they stay on GemmBf16: slower, still invariant.
  const absl::Status lt = prefill_gemm_.Init(std::span(shapes).first(shapes.size() - 1), kMaxStepTokens, stream_);
  use_prefill_gemm_ = lt.ok();
  projections_ = lt.ok() ? "GemmBf16 (decode rows) + PrefillGemm (prompt rows, cuBLASLt)"
                         : absl::StrCat("GemmBf16 for all rows (PrefillGemm: ", lt.message(), ")");
  return absl::OkStatus();
}

absl::Status ForwardPass::Project(const bf16* x, const StepShape& shape, int in, const DeviceBuffer& w, int out,
                                  float* y, k::GemmOutput* result, const float* bias) {
  const int rows = shape.rows, drows = shape.decode_rows;
  if (result != nullptr) *result = k::GemmOutput{.y = y};
  if (!batch_invariant_) {
    // Row-major y[rows, out] = x[rows, in] w[out, in]^T, i.e. column-major y^T = w^T' x^T'.
    const float one = 1.f, zero = 0.f;
    LIZARD_RETURN_IF_ERROR(CublasStatus(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w.get(),
                                                     CUDA_R_16BF, in, x, CUDA_R_16BF, in, &zero, y, CUDA_R_32F, out,
                                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                                        "cublasGemmEx"));
    if (bias != nullptr) LIZARD_CUDA_RETURN(k::AddBias(y, out, bias, rows, out, stream_));
    return absl::OkStatus();
  }
  const int gemm_rows = use_prefill_gemm_ ? drows : rows;
  if (gemm_rows == rows && result != nullptr) {
    LIZARD_CUDA_RETURN(k::GemmBf16Partials(x, rows, in, w.get<bf16>(), out, y, gemm_workspace_.get(), result, stream_));
    return absl::OkStatus();
  }
  // The bias goes with the sums (GemmBf16's split-K reduce, PrefillGemm's epilogue) where it can:
  // no pass over y of its own.
  if (gemm_rows > 0) {
    LIZARD_CUDA_RETURN(k::GemmBf16(x, gemm_rows, in, w.get<bf16>(), out, y, gemm_workspace_.get(), stream_, bias));
  }
  if (rows == gemm_rows) return absl::OkStatus();
  float* prompt_y = y + static_cast<int64_t>(drows) * out;
  const bool epilogue_bias = bias != nullptr && prefill_gemm_.SupportsBias(in, out);
  LIZARD_RETURN_IF_ERROR(prefill_gemm_.Run(x + static_cast<int64_t>(drows) * in, rows - drows, in, w.get<bf16>(), out,
                                           prompt_y, epilogue_bias ? bias : nullptr));
  if (bias != nullptr && !epilogue_bias) LIZARD_CUDA_RETURN(k::AddBias(prompt_y, out, bias, rows - drows, out, stream_));
  return absl::OkStatus();
}

absl::Status ForwardPass::ProjectBranch(const bf16* in_rows, const StepShape& shape, int in, const DeviceBuffer& w,
                                        bool bias, Branch* branch) {
  const int rows = shape.rows, drows = shape.decode_rows;
  float* delta = delta_.get<float>();
  branch->rows = rows;
  if (!batch_invariant_ || !use_prefill_gemm_ || drows == rows || bias) {
    return Project(in_rows, shape, in, w, Hd_, delta, &branch->out);
  }
  // Decode rows as Project puts them when prompt rows share the step (GemmBf16 into y).
  branch->out = k::GemmOutput{.y = delta};
  branch->rows = drows;
  if (drows > 0) {
    LIZARD_CUDA_RETURN(k::GemmBf16(in_rows, drows, in, w.get<bf16>(), Hd_, delta, gemm_workspace_.get(), stream_));
  }
  const int64_t first = static_cast<int64_t>(drows);
  return prefill_gemm_.Run(in_rows + first * in, rows - drows, in, w.get<bf16>(), Hd_, x_.get<float>() + first * Hd_,
                           nullptr, /*accumulate=*/true);
}

absl::Status ForwardPass::AddNorm(const Branch& branch, const DeviceBuffer& weight, int rows) {
  float* x = x_.get<float>();
  bf16* u = u_.get<bf16>();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  LIZARD_CUDA_RETURN(k::AddRmsNorm(x, branch.out, weight.get<float>(), branch.rows, Hd_, eps, u, stream_));
  const int64_t first = branch.rows;
  LIZARD_CUDA_RETURN(
      k::AddRmsNorm(x + first * Hd_, k::GemmOutput{}, weight.get<float>(), rows - branch.rows, Hd_, eps, u + first * Hd_, stream_));
  return absl::OkStatus();
}

absl::Status ForwardPass::LizardLayer(const DeviceLayer& L, const StepShape& shape, const float* krot, int krot_ld) {
  const int32_t* meta = meta_.get<int32_t>();
  auto field = [&](MetaField f) { return meta + static_cast<int64_t>(f) * kMaxStepTokens; };
  const int ld = n_qkv_ + H_;
  float* qkvg = qkvg_.get<float>();
  bf16* y = y_.get<bf16>();
  const k::LizardStateRef state = state_->LizardLayer(L.lizard_index);
  k::TokenMeta tokens{field(kTokSlot), field(kTokPos), field(kTokFirstRow), field(kTokFirstPos), field(kTokSingle)};
  k::SeqMeta seqs{field(kSeqSlot), field(kSeqFirstRow), field(kSeqNumTokens), field(kSeqFirstPos)};
  k::LizardScratch scratch{fq_.get<float>(), fk_.get<float>(), gamma_.get<float>(), den_.get<float>(), yw_.get<float>()};
  // The logits of the rows the recurrent kernels read (the prefill path computes its own).
  const int logit_rows = chunked_prefill_ ? shape.decode_rows : shape.rows;
  LIZARD_CUDA_RETURN(k::FeatureMapLogits(qkvg, ld, logit_rows, H_, Hkv_, D_, F_, L.fmap_q.get<float>(),
                                         L.fmap_k.get<float>(), fmap_logits_.get<float>(), stream_));
  k::LizardParams params{fmap_logits_.get<float>(), L.fmap_q_bias.get<float>(), L.fmap_k_bias.get<float>(),
                         L.meta_logits.get<float>(), L.window_factor.get<float>()};

  const int Sd = shape.decode_seqs, Sp = shape.seqs - Sd, Td = shape.decode_rows, Tp = shape.rows - Td;
  const k::SeqMeta prompts{seqs.slot + Sd, seqs.first_row + Sd, seqs.num_tokens + Sd, seqs.first_pos + Sd};

  // Decode rows (one token per sequence) take the recurrent form, whatever else shares the step.
  if (Td > 0) {
    LIZARD_CUDA_RETURN(k::LizardDecodeWindow(dims_, qkvg, ld, krot, krot_ld, inv_freq_.get<double>(), tokens, 0, Td,
                                             params, state, scratch, stream_));
    LIZARD_CUDA_RETURN(k::LizardDecodeState(dims_, qkvg, ld, seqs, Sd, state, scratch, y, stream_));
  }
  if (Tp == 0) return absl::OkStatus();
  if (!chunked_prefill_) {
    // Models the chunked kernels do not fit: prompt rows walk their tokens one by one, as decode
    // steps would (the window part token-parallel, z and S sequentially).
    LIZARD_CUDA_RETURN(k::LizardWindow(dims_, qkvg, ld, krot, krot_ld, inv_freq_.get<double>(), tokens, Td, Tp,
                                       params, state, scratch, stream_));
    LIZARD_CUDA_RETURN(k::LizardNormalizer(dims_, prompts, Sp, state, scratch, stream_));
    LIZARD_CUDA_RETURN(k::LizardRingWrite(dims_, qkvg, ld, krot, krot_ld, prompts, Sp, state, stream_));
    LIZARD_CUDA_RETURN(k::LizardState(dims_, qkvg, ld, prompts, Sp, state, scratch, y, stream_));
    return absl::OkStatus();
  }

  // The chunked form for the prompt rows: feature maps in bf16 and, beside them on the side
  // stream, the window part (written to yw_) then the ring write of the chunks' last keys (after
  // the window read the ring); the gated linear attention adds yw_ once the window part is done.
  cudaStream_t side = side_stream_.get();
  LIZARD_CUDA_RETURN(cudaEventRecord(fork_.get(), stream_));
  LIZARD_CUDA_RETURN(cudaStreamWaitEvent(side, fork_.get()));
  const int64_t F2 = 2 * static_cast<int64_t>(F_);
  k::PrefillFeatureMapsArgs maps;
  maps.dims = dims_;
  maps.qkvg = qkvg + static_cast<int64_t>(Td) * ld, maps.ld = ld, maps.rows = Tp;
  maps.fmap_q = L.fmap_q.get<float>(), maps.fmap_k = L.fmap_k.get<float>();
  maps.q_bias = params.fmap_q_bias, maps.k_bias = params.fmap_k_bias;
  maps.fq = fq16_.get<bf16>() + Td * H_ * F2, maps.fk = fk16_.get<bf16>() + Td * H_ * F2;
  k::WindowPrefillArgs window;
  window.dims = dims_;
  window.q = qkvg, window.q_ld = ld;
  window.k = krot, window.k_ld = krot_ld;
  window.v = qkvg + (H_ + Hkv_) * D_, window.v_ld = ld;
  window.inv_freq = inv_freq_.get<double>();
  window.seqs = prompts, window.num_seqs = Sp, window.max_tiles = shape.max_tiles;
  window.meta_logits = params.meta_logits, window.window_factor = params.window_factor;
  window.state = state;
  window.y = yw_.get<float>();
  LIZARD_CUDA_RETURN(k::LizardWindowPrefill(window, side));
  LIZARD_CUDA_RETURN(cudaEventRecord(window_done_.get(), side));
  LIZARD_CUDA_RETURN(k::LizardRingWrite(dims_, qkvg, ld, krot, krot_ld, prompts, Sp, state, side));
  LIZARD_CUDA_RETURN(cudaEventRecord(ring_done_.get(), side));
  LIZARD_CUDA_RETURN(k::LizardPrefillFeatureMaps(maps, stream_));
  k::ChunkedPrefillArgs gla;
  gla.dims = dims_;
  gla.fq = fq16_.get<bf16>(), gla.fk = fk16_.get<bf16>();
  gla.qkvg = qkvg, gla.ld = ld;
  gla.seqs = prompts, gla.num_seqs = Sp;
  gla.state = state;
  gla.y_add = yw_.get<float>();
  gla.y = y;
  gla.scratch = scan_scratch_.get(), gla.scratch_chunks = scan_chunks_, gla.total_tokens = Tp;
  LIZARD_CUDA_RETURN(cudaStreamWaitEvent(stream_, window_done_.get()));
  LIZARD_CUDA_RETURN(k::LizardChunkedPrefill(gla, stream_));
  LIZARD_CUDA_RETURN(cudaStreamWaitEvent(stream_, ring_done_.get()));
  return absl::OkStatus();
}

absl::Status ForwardPass::EnqueueModel(const StepShape& shape) {
  const int32_t* meta = meta_.get<int32_t>();
  auto field = [&](MetaField f) { return meta + static_cast<int64_t>(f) * kMaxStepTokens; };
  const int T = shape.rows;
  float* x = x_.get<float>();
  bf16* u = u_.get<bf16>();
  float* qkvg = qkvg_.get<float>();
  bf16* y = y_.get<bf16>();
  const int qd = H_ * D_, kd = Hkv_ * D_;

  LIZARD_CUDA_RETURN(k::EmbeddingGather(weights_->embed.get<bf16>(), field(kTokIds), T, Hd_, x, stream_));
  // The residual branch's last output (ProjectBranch); nothing before the first layer.
  Branch branch{.rows = T};
  for (size_t l = 0; l < weights_->layers.size(); ++l) {
    const DeviceLayer& L = weights_->layers[l];
    const bool liz = L.type == LayerType::kLizard;
    const int ld = n_qkv_ + (liz ? H_ : 0);
    LIZARD_RETURN_IF_ERROR(AddNorm(branch, L.input_norm, T));
    LIZARD_RETURN_IF_ERROR(
        Project(u, shape, Hd_, L.w_qkvg, ld, qkvg, nullptr, L.b_qkvg.bytes() > 0 ? L.b_qkvg.get<float>() : nullptr));

    // Keys after RoPE (or the raw keys when the window has no RoPE).
    const float* krot = qkvg + qd;
    int krot_ld = ld;
    if (!liz || config_.window_rope) {
      LIZARD_CUDA_RETURN(k::Rope(qkvg + qd, ld, krot_.get<float>(), kd, field(kTokPos), T, Hkv_, D_,
                                 inv_freq_.get<double>(), stream_));
      krot = krot_.get<float>();
      krot_ld = kd;
    }
    if (liz) {
      LIZARD_RETURN_IF_ERROR(LizardLayer(L, shape, krot, krot_ld));
    } else {
      LIZARD_CUDA_RETURN(k::Rope(qkvg, ld, qrot_.get<float>(), qd, field(kTokPos), T, H_, D_, inv_freq_.get<double>(), stream_));
      const k::PagedKv kv = state_->SoftmaxLayer(L.softmax_index);
      LIZARD_CUDA_RETURN(k::PagedKvWrite(krot, krot_ld, qkvg + qd + kd, ld, field(kTokSlot), field(kTokPos), T, kv, stream_));
      LIZARD_CUDA_RETURN(k::PagedAttention(qrot_.get<float>(), qd, field(kTokSlot), field(kTokPos), T, H_,
                                           shape.max_keys, kv, partial_.get<float>(), partial_entries_, y, stream_));
    }
    const bool o_bias = L.b_o.bytes() > 0;
    LIZARD_RETURN_IF_ERROR(ProjectBranch(y, shape, qd, L.w_o, o_bias, &branch));
    if (o_bias) branch.out.bias = L.b_o.get<float>();  // added by AddRmsNorm after the sum
    LIZARD_RETURN_IF_ERROR(AddNorm(branch, L.post_norm, T));
    k::GemmOutput gate_up;
    LIZARD_RETURN_IF_ERROR(Project(u, shape, Hd_, L.w_gate_up, 2 * I_, gate_up_.get<float>(), &gate_up));
    LIZARD_CUDA_RETURN(k::SwiGlu(gate_up, T, I_, act_.get<bf16>(), stream_));
    LIZARD_RETURN_IF_ERROR(ProjectBranch(act_.get<bf16>(), shape, I_, L.w_down, false, &branch));
  }
  return AddNorm(branch, weights_->final_norm, T);
}

absl::Status ForwardPass::EnqueueLogits(int first, int R) {
  const int32_t* rows = meta_.get<int32_t>() + static_cast<int64_t>(kLogitRows) * kMaxStepTokens + first;
  LIZARD_CUDA_RETURN(k::GatherRowsBf16(u_.get<bf16>(), rows, R, Hd_, logit_in_.get<bf16>(), stream_));
  // The LM head runs at most kMaxLogitRows rows: the decode GEMM for all of them.
  const StepShape head{.rows = R, .decode_rows = R};
  return Project(logit_in_.get<bf16>(), head, Hd_, weights_->head(), V_, logits_.get<float>());
}

absl::Status ForwardPass::RunStep(const std::vector<StepSeq>& seqs,
                                  const std::vector<RowSampling>& sampling, StepOutput* out) {
  // Softmax layers need pages for the new tokens before anything runs.
  for (const StepSeq& s : seqs) LIZARD_RETURN_IF_ERROR(state_->EnsurePages(s.slot, s.first_pos + s.n));

  // Decode-only steps of pure Lizard models replay a graph; padding rows use slot -1.
  const bool decode_only = std::all_of(seqs.begin(), seqs.end(), [](const StepSeq& s) { return s.decode; });
  int bucket = 0;
  if (decode_only && state_->layout().num_softmax_layers == 0) {
    for (int b : kGraphBuckets) {
      if (b >= static_cast<int>(seqs.size()) && b <= kMaxLogitRows) {
        bucket = b;
        break;
      }
    }
  }

  // Rows: the decodes first, then the prompt chunks (the kernels take the two groups apart);
  // logits rows stay in the order of `seqs`.
  std::vector<int> order;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i].decode == (pass == 0)) order.push_back(static_cast<int>(i));
    }
  }
  int32_t* meta = meta_host_.get<int32_t>();
  auto field = [&](MetaField f) { return meta + static_cast<int64_t>(f) * kMaxStepTokens; };
  StepShape shape;
  std::vector<int> first_row(seqs.size());
  for (int i : order) {
    const StepSeq& s = seqs[i];
    const int S = shape.seqs++, T = shape.rows;
    first_row[i] = T;
    field(kSeqSlot)[S] = s.slot;
    field(kSeqFirstRow)[S] = T;
    field(kSeqNumTokens)[S] = s.n;
    field(kSeqFirstPos)[S] = static_cast<int32_t>(s.first_pos);
    if (s.decode) ++shape.decode_seqs, shape.decode_rows += s.n;
    if (!s.decode) {
      shape.max_tiles = std::max(shape.max_tiles, kernels::WindowPrefillTiles(static_cast<int>(s.first_pos), s.n));
    }
    shape.max_keys = std::max<int>(shape.max_keys, static_cast<int>(s.first_pos + s.n));
    for (int t = 0; t < s.n; ++t) {
      const int r = shape.rows++;
      field(kTokIds)[r] = s.tokens[t];
      field(kTokSlot)[r] = s.slot;
      field(kTokPos)[r] = static_cast<int32_t>(s.first_pos + t);
      field(kTokFirstRow)[r] = T;
      field(kTokFirstPos)[r] = static_cast<int32_t>(s.first_pos);
      field(kTokSingle)[r] = s.n == 1;
    }
  }
  int R = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const StepSeq& s = seqs[i];
    for (int t = 0; t < s.n; ++t) {
      if (s.logits == LogitsMode::kAll || (s.logits == LogitsMode::kLast && t == s.n - 1)) {
        field(kLogitRows)[R++] = first_row[i] + t;
      }
    }
  }
  if (bucket > 0) {
    for (int T = shape.rows, S = shape.seqs; T < bucket; ++T, ++S) {
      field(kSeqSlot)[S] = -1, field(kSeqFirstRow)[S] = T, field(kSeqNumTokens)[S] = 1, field(kSeqFirstPos)[S] = 0;
      field(kTokIds)[T] = 0, field(kTokSlot)[T] = -1, field(kTokPos)[T] = -1;
      field(kTokFirstRow)[T] = T, field(kTokFirstPos)[T] = -1, field(kTokSingle)[T] = 1;
    }
    // The graph computes logits for `bucket` rows: the R real ones (a one-token chunk with
    // logits kNone has none), then any valid rows, whose logits are never read.
    for (int r = R; r < bucket; ++r) field(kLogitRows)[r] = r;
  }
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(meta_.get(), meta, meta_.bytes(), cudaMemcpyHostToDevice, stream_));

  const int64_t base_rows = out->rows;
  out->rows += R;
  if (sampling.empty()) out->logits.resize(static_cast<size_t>(out->rows) * V_);
  // logits_ rows [0, n) are the step's rows first .. first + n - 1: sampled on the device, or
  // copied straight into the output vector (the driver pipelines its staging copy with the DMA,
  // which beats a pinned buffer plus a second host copy for these large rows).
  auto emit_rows = [&](int first, int n) -> absl::Status {
    if (!sampling.empty()) {
      return sampler_.Sample(logits_.get<float>(), V_, sampling.data() + base_rows + first, n, base_rows + first, out);
    }
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(out->logits.data() + (base_rows + first) * V_, logits_.get(),
                                       static_cast<size_t>(n) * V_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    return CudaStatus(cudaStreamSynchronize(stream_), "logits");
  };

  if (bucket > 0) {
    LIZARD_RETURN_IF_ERROR(graphs_.Launch(bucket, stream_, [&] {
      const StepShape padded{.rows = bucket, .decode_rows = bucket, .seqs = bucket, .decode_seqs = bucket};
      LIZARD_RETURN_IF_ERROR(EnqueueModel(padded));
      return EnqueueLogits(0, bucket);
    }));
    LIZARD_RETURN_IF_ERROR(emit_rows(0, R));
  } else {
    LIZARD_RETURN_IF_ERROR(EnqueueModel(shape));
    for (int first = 0; first < R; first += kMaxLogitRows) {
      const int n = std::min(kMaxLogitRows, R - first);
      LIZARD_RETURN_IF_ERROR(EnqueueLogits(first, n));
      LIZARD_RETURN_IF_ERROR(emit_rows(first, n));
    }
    LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  }
  for (const StepSeq& s : seqs) state_->SetPosition(s.slot, s.first_pos + s.n);
  return absl::OkStatus();
}

absl::Status ForwardPass::Run(const StepPlan& plan, StepOutput* out) {
  out->Reset(0, V_);  // rows grow as the logits are produced
  if (plan.sampling.empty()) {
    out->logits.reserve(static_cast<size_t>(plan.num_logits_rows()) * V_);
  } else {
    out->tokens.resize(plan.sampling.size());
    out->logprobs.resize(plan.sampling.size());
  }

  // Pack the plan into internal steps of at most kMaxStepTokens tokens, in output-row order
  // (chunks in order). A chunk too long for the step's room is cut at an absolute multiple of
  // kPrefillAlignment: where a prompt is cut must not depend on what shares its step.
  std::vector<StepSeq> step;
  int step_tokens = 0;
  auto flush = [&]() -> absl::Status {
    if (step.empty()) return absl::OkStatus();
    absl::Status st = RunStep(step, plan.sampling, out);
    step.clear();
    step_tokens = 0;
    return st;
  };
  for (const SequenceChunk& c : plan.chunks) {
    const int n = static_cast<int>(c.tokens.size());
    for (int done = 0; done < n;) {
      const int64_t pos = c.first_position + done;
      int take = n - done;
      if (take > kMaxStepTokens - step_tokens) {
        const int64_t end = (pos + kMaxStepTokens - step_tokens) / kPrefillAlignment * kPrefillAlignment;
        take = static_cast<int>(end - pos);
        if (take <= 0) {  // no aligned cut fits the room left: start a new step
          LIZARD_RETURN_IF_ERROR(flush());
          continue;
        }
      }
      LogitsMode mode = c.logits;
      if (mode == LogitsMode::kLast && done + take < n) mode = LogitsMode::kNone;
      step.push_back({c.slot, pos, c.tokens.data() + done, take, mode, c.decode});
      step_tokens += take;
      done += take;
    }
  }
  return flush();
}

}  // namespace lizard::cuda
