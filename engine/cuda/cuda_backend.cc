// CudaBackend: see cuda_backend.h and docs/cuda.md.
//
// One step runs as: embedding -> per layer [add+RMSNorm -> fused QKV+gate GEMM -> attention
// (Lizard kernels or paged softmax attention) -> O GEMM -> add+RMSNorm -> gate|up GEMM ->
// SwiGLU -> down GEMM] -> final norm -> LM head on the rows that need logits. Decode-only steps
// of pure Lizard models replay a CUDA graph captured per batch-size bucket.
#include "engine/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/weights.h"
#include "engine/model/rope.h"
#include "engine/model/state_layout.h"
#include "engine/sampling/sampler.h"
#include "kernels/kernels.h"

namespace lizard {
namespace {

using cuda::CudaStatus;
using cuda::DeviceBuffer;
using cuda::PinnedBuffer;
using bf16 = __nv_bfloat16;
namespace k = kernels;

#define RETURN_IF_ERROR(expr)                    \
  do {                                           \
    if (absl::Status _s = (expr); !_s.ok()) return _s; \
  } while (0)

absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", static_cast<int>(s)));
}

// Tokens per internal step: larger plans are cut into pieces of at most this many tokens.
constexpr int kMaxStepTokens = 2048;
// Rows of logits computed per LM-head GEMM.
constexpr int kMaxLogitRows = 256;
// Decode batch sizes with a captured CUDA graph (a batch is padded up to the next one).
constexpr int kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
// Softmax layers' KV cache: tokens per page, and the longest context a slot's page table covers.
constexpr int kPageSize = 64;
constexpr int64_t kMinMaxContext = 132 * 1024;
// Device memory left free after the KV page pool (cuBLAS, graphs, fragmentation).
constexpr int64_t kReserveBytes = int64_t{1} << 30;

k::StoreType StoreTypeOf(DType d) { return d == DType::kBF16 ? k::StoreType::kBF16 : k::StoreType::kF32; }

// The int32 arrays describing one internal step, copied to the device in one transfer.
enum MetaField {
  kTokIds, kTokSlot, kTokPos, kTokFirstRow, kTokFirstPos, kTokSingle,
  kSeqSlot, kSeqFirstRow, kSeqNumTokens, kSeqFirstPos, kLogitRows, kNumMetaFields
};

// One sequence's share of an internal step.
struct StepSeq {
  SlotId slot = -1;
  int64_t first_pos = 0;
  const int32_t* tokens = nullptr;
  int n = 0;
  LogitsMode logits = LogitsMode::kNone;
};

class CudaBackend : public Backend {
 public:
  CudaBackend() = default;
  ~CudaBackend() override {
    for (auto& [bucket, exec] : graphs_) cudaGraphExecDestroy(exec);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init(const BackendOptions& options);

  const ModelConfig& config() const override { return config_; }
  BackendInfo info() const override;
  int32_t num_slots() const override { return num_slots_; }
  int64_t slot_bytes() const override { return layout_.slot_bytes; }
  int64_t kv_bytes_per_token() const override { return layout_.kv_bytes_per_token; }
  absl::Status ResetSlot(SlotId slot) override;
  absl::Status CopySlot(SlotId src, SlotId dst) override;
  int64_t SlotPosition(SlotId slot) const override;
  absl::StatusOr<std::string> SaveSlot(SlotId slot) override;
  absl::Status LoadSlot(SlotId slot, std::string_view bytes) override;
  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

 private:
  absl::Status CheckSlot(SlotId slot) const;
  absl::Status AllocateActivations();
  absl::Status AllocateKvPool();
  absl::Status Gemm(const bf16* x, int rows, int in, const DeviceBuffer& w, int out, float* y);

  // Pages for the slot's tokens [0, tokens); RESOURCE_EXHAUSTED when the pool runs out.
  absl::Status EnsurePages(SlotId slot, int64_t tokens);
  void FreePages(SlotId slot);
  absl::Status UploadPageTable(SlotId slot);
  // Device address of token `t` of `slot` in softmax layer `layer`'s K (or V) pool.
  char* KvAddress(int softmax_layer, bool value, SlotId slot, int64_t t) const;

  // Runs the sequences of one internal step (at most kMaxStepTokens tokens) and appends their
  // rows to `out`: logits, or with `sampling` (the whole plan's rows) the sampled tokens.
  absl::Status RunStep(const std::vector<StepSeq>& seqs, const std::vector<RowSampling>& sampling,
                       StepOutput* out);
  // Samples logits_ rows [0, n) on the device as `rows` says; results go to out rows
  // out_row .. out_row + n - 1. Only token ids come back, and the rows that want logprobs.
  absl::Status SampleLogits(const RowSampling* rows, int n, int64_t out_row, StepOutput* out);
  // Enqueues the whole model for `T` token rows and `S` sequences already described in the
  // device meta buffer; the final normed rows are left in u_. `multi` tells whether any sequence
  // has several tokens; `max_keys` is the longest softmax attention span.
  absl::Status EnqueueModel(int T, int S, bool multi, int max_keys);
  // LM head for `R` rows listed in the meta buffer, starting at row `first`, into logits_.
  absl::Status EnqueueLogits(int first, int R);

  ModelConfig config_;
  StateLayout layout_;
  int32_t num_slots_ = 0;
  int device_ = 0;
  std::string device_name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;
  bool batch_invariant_ = true;  // projections by k::GemmBf16, else cuBLAS
  DeviceBuffer gemm_workspace_;  // k::GemmBf16's split-K partial sums

  // Sizes.
  int Hd_ = 0, H_ = 0, Hkv_ = 0, D_ = 0, F_ = 0, I_ = 0, V_ = 0, n_qkv_ = 0;
  k::LizardDims dims_;

  cuda::DeviceWeights weights_;
  DeviceBuffer inv_freq_;  // RoPE inverse frequencies (double)

  // State pool: num_slots_ slots of layout_.slot_bytes; positions mirrored on the host.
  DeviceBuffer pool_;
  std::vector<int64_t> positions_;

  // Softmax layers' paged KV cache.
  int64_t num_pages_ = 0;
  int max_pages_ = 0;
  DeviceBuffer kv_pool_;    // per softmax layer: K pages then V pages
  int64_t kv_page_bytes_ = 0;  // one page of one layer's K (or V)
  DeviceBuffer page_table_;  // int32 [num_slots, max_pages]
  std::vector<std::vector<int32_t>> slot_pages_;
  std::vector<int32_t> free_pages_;

  // Activations for kMaxStepTokens rows.
  DeviceBuffer x_, delta_, u_, qkvg_, krot_, qrot_, y_, gate_up_, act_;
  DeviceBuffer fq_, fk_, gamma_, den_, yw_, partial_, fmap_logits_;
  int64_t partial_entries_ = 0;
  DeviceBuffer logit_in_, logits_;
  DeviceBuffer meta_;
  PinnedBuffer meta_host_;
  PinnedBuffer spill_staging_;  // one slot, for SaveSlot

  // Sampling: the rows' parameters and penalty entries (seen tokens, then their generated
  // counts) staged in pinned memory; tokens come back through sample_host_ too.
  DeviceBuffer sample_params_, sample_tokens_, penalties_;
  PinnedBuffer sample_host_, penalties_host_;
  // Logprobs: per row the chosen token's, then kMaxDeviceTopLogprobs top ids and values.
  DeviceBuffer logprobs_;
  PinnedBuffer logprobs_host_;
  std::vector<float> logprob_rows_;  // processed rows of requests wanting more than the device ranks

  // CUDA graphs of decode steps, by bucket size.
  std::map<int, cudaGraphExec_t> graphs_;
};

// ---------------------------------------------------------------- creation

absl::Status CudaBackend::Init(const BackendOptions& options) {
  absl::StatusOr<ModelConfig> config = options.weights.Config();
  if (!config.ok()) return config.status();
  config_ = *std::move(config);
  if (options.state_dtype.has_value()) config_.state_dtype = *options.state_dtype;
  if (config_.state_dtype == DType::kF16) {
    return absl::InvalidArgumentError("CUDA backend: state_dtype float16 is not supported (float32 or bfloat16)");
  }
  if (options.num_slots <= 0) return absl::InvalidArgumentError("num_slots must be positive");
  num_slots_ = options.num_slots;
  device_ = options.device_index;
  batch_invariant_ = options.batch_invariant;
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  LIZARD_CUDA_RETURN(cudaGetDeviceProperties(&prop, device_));
  device_name_ = prop.name;

  Hd_ = static_cast<int>(config_.hidden_size);
  H_ = static_cast<int>(config_.num_heads);
  Hkv_ = static_cast<int>(config_.num_kv_heads);
  D_ = static_cast<int>(config_.head_dim);
  F_ = static_cast<int>(config_.feature_dim);
  I_ = static_cast<int>(config_.intermediate_size);
  V_ = static_cast<int>(config_.vocab_size);
  n_qkv_ = (H_ + 2 * Hkv_) * D_;
  if (D_ % 2 != 0 || D_ > 256) return absl::InvalidArgumentError("CUDA backend: head_dim must be even and <= 256");
  if (config_.num_lizard_layers() > 0 && 2 * F_ > 256) {
    return absl::InvalidArgumentError("CUDA backend: feature_dim must be <= 128");
  }
  dims_.heads = H_;
  dims_.kv_heads = Hkv_;
  dims_.head_dim = D_;
  dims_.features = F_;
  dims_.window = static_cast<int>(config_.window_size);
  dims_.meta = static_cast<int>(config_.num_meta_tokens);
  dims_.window_rope = config_.window_rope;
  dims_.normalize = config_.gla_normalize;

  // S and z in the config's state dtype; the window K/V (and softmax KV) in bf16.
  layout_ = StateLayout(config_, config_.state_dtype, DType::kBF16);

  LIZARD_CUDA_RETURN(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  RETURN_IF_ERROR(CublasStatus(cublasCreate(&cublas_), "cublasCreate"));
  RETURN_IF_ERROR(CublasStatus(cublasSetStream(cublas_, stream_), "cublasSetStream"));
  // A fixed workspace keeps cuBLAS from allocating during graph capture.
  RETURN_IF_ERROR(cublas_workspace_.Allocate(32 << 20));
  RETURN_IF_ERROR(CublasStatus(
      cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()), "cublasSetWorkspace"));

  absl::StatusOr<cuda::DeviceWeights> weights = cuda::LoadDeviceWeights(options.weights, config_, stream_);
  if (!weights.ok()) return weights.status();
  weights_ = *std::move(weights);
  const std::vector<double> inv_freq = RopeInverseFrequencies(config_);
  RETURN_IF_ERROR(inv_freq_.Allocate(inv_freq.size() * sizeof(double)));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(inv_freq_.get(), inv_freq.data(), inv_freq_.bytes(), cudaMemcpyHostToDevice, stream_));
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));

  RETURN_IF_ERROR(pool_.Allocate(static_cast<size_t>(num_slots_) * layout_.slot_bytes));
  LIZARD_CUDA_RETURN(cudaMemsetAsync(pool_.get(), 0, pool_.bytes(), stream_));
  positions_.assign(num_slots_, 0);
  RETURN_IF_ERROR(AllocateActivations());
  RETURN_IF_ERROR(AllocateKvPool());
  LIZARD_CUDA_RETURN(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status CudaBackend::AllocateActivations() {
  const int64_t T = kMaxStepTokens, f = sizeof(float), b = sizeof(bf16);
  const int64_t F2 = 2 * static_cast<int64_t>(F_);
  RETURN_IF_ERROR(x_.Allocate(T * Hd_ * f));
  RETURN_IF_ERROR(delta_.Allocate(T * Hd_ * f));
  RETURN_IF_ERROR(u_.Allocate(T * Hd_ * b));
  RETURN_IF_ERROR(qkvg_.Allocate(T * (n_qkv_ + H_) * f));
  RETURN_IF_ERROR(krot_.Allocate(T * Hkv_ * D_ * f));
  RETURN_IF_ERROR(y_.Allocate(T * H_ * D_ * b));
  RETURN_IF_ERROR(gate_up_.Allocate(T * 2 * I_ * f));
  RETURN_IF_ERROR(act_.Allocate(T * I_ * b));
  if (config_.num_lizard_layers() > 0) {
    RETURN_IF_ERROR(fq_.Allocate(T * H_ * F2 * f));
    RETURN_IF_ERROR(fk_.Allocate(T * H_ * F2 * f));
    RETURN_IF_ERROR(gamma_.Allocate(T * H_ * f));
    RETURN_IF_ERROR(den_.Allocate(T * H_ * f));
    RETURN_IF_ERROR(yw_.Allocate(T * H_ * D_ * f));
    RETURN_IF_ERROR(fmap_logits_.Allocate(T * 2 * H_ * F_ * f));
  }
  if (config_.num_softmax_layers() > 0) {
    RETURN_IF_ERROR(qrot_.Allocate(T * H_ * D_ * f));
    partial_entries_ = T * H_ + 8192;
    RETURN_IF_ERROR(partial_.Allocate(partial_entries_ * (D_ + 2) * f));
  }
  RETURN_IF_ERROR(logit_in_.Allocate(int64_t{kMaxLogitRows} * Hd_ * b));
  RETURN_IF_ERROR(logits_.Allocate(int64_t{kMaxLogitRows} * V_ * f));
  RETURN_IF_ERROR(meta_.Allocate(int64_t{kNumMetaFields} * T * sizeof(int32_t)));
  RETURN_IF_ERROR(meta_host_.Allocate(meta_.bytes()));
  RETURN_IF_ERROR(sample_params_.Allocate(kMaxLogitRows * sizeof(k::SamplingRow)));
  RETURN_IF_ERROR(sample_tokens_.Allocate(kMaxLogitRows * sizeof(int32_t)));
  RETURN_IF_ERROR(sample_host_.Allocate(sample_params_.bytes() + sample_tokens_.bytes()));
  RETURN_IF_ERROR(logprobs_.Allocate(kMaxLogitRows * (1 + 2 * k::kMaxDeviceTopLogprobs) * sizeof(float)));
  RETURN_IF_ERROR(logprobs_host_.Allocate(logprobs_.bytes()));
  // The largest split-K workspace of the projections' shapes (one workspace: calls are ordered
  // on the stream).
  size_t workspace = 0;
  for (auto [in, out] : {std::pair{Hd_, n_qkv_ + H_}, std::pair{Hd_, n_qkv_}, std::pair{H_ * D_, Hd_},
                         std::pair{Hd_, 2 * I_}, std::pair{I_, Hd_}, std::pair{Hd_, V_}}) {
    workspace = std::max(workspace, k::GemmBf16WorkspaceBytes(in, out));
  }
  RETURN_IF_ERROR(gemm_workspace_.Allocate(workspace));
  return absl::OkStatus();
}

absl::Status CudaBackend::AllocateKvPool() {
  if (layout_.num_softmax_layers == 0) return absl::OkStatus();
  const int64_t max_context = std::max<int64_t>(config_.max_position_embeddings, kMinMaxContext);
  const int64_t max_pages = (max_context + kPageSize - 1) / kPageSize;
  // The kernels index the page table [num_slots, max_pages] with int32.
  if (max_pages > std::numeric_limits<int32_t>::max() / std::max(num_slots_, 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_position_embeddings ", config_.max_position_embeddings, " with ", num_slots_,
        " slots is too large for the KV page table"));
  }
  max_pages_ = static_cast<int>(max_pages);
  RETURN_IF_ERROR(page_table_.Allocate(static_cast<size_t>(num_slots_) * max_pages_ * sizeof(int32_t)));
  LIZARD_CUDA_RETURN(cudaMemsetAsync(page_table_.get(), 0, page_table_.bytes(), stream_));
  slot_pages_.assign(num_slots_, {});
  // Every page holds kPageSize tokens of every softmax layer; the pool takes the free memory.
  size_t free_bytes = 0, total_bytes = 0;
  LIZARD_CUDA_RETURN(cudaMemGetInfo(&free_bytes, &total_bytes));
  kv_page_bytes_ = layout_.kv_bytes_per_token_per_layer / 2 * kPageSize;
  const int64_t page_all_layers = layout_.kv_bytes_per_token * kPageSize;
  // No more than every slot at the longest context could use.
  const int64_t usable = static_cast<int64_t>(free_bytes) - kReserveBytes;
  num_pages_ = std::min<int64_t>(std::max<int64_t>(usable / page_all_layers, 0), int64_t{num_slots_} * max_pages_);
  if (num_pages_ == 0) return absl::ResourceExhaustedError("no device memory left for the KV cache");
  RETURN_IF_ERROR(kv_pool_.Allocate(num_pages_ * page_all_layers));
  free_pages_.clear();
  for (int64_t p = num_pages_ - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
  return absl::OkStatus();
}

BackendInfo CudaBackend::info() const {
  BackendInfo info;
  info.name = "cuda";
  info.device = device_name_;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    info.memory_total_bytes = static_cast<int64_t>(total_bytes);
    info.memory_used_bytes = static_cast<int64_t>(total_bytes - free_bytes);
  }
  info.weights_bytes = weights_.bytes;
  info.state_pool_bytes = static_cast<int64_t>(pool_.bytes() + kv_pool_.bytes());
  return info;
}

// ---------------------------------------------------------------- state pool

absl::Status CudaBackend::CheckSlot(SlotId slot) const {
  if (slot < 0 || slot >= num_slots_) {
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " out of range [0, ", num_slots_, ")"));
  }
  return absl::OkStatus();
}

char* CudaBackend::KvAddress(int softmax_layer, bool value, SlotId slot, int64_t t) const {
  const int64_t layer_bytes = 2 * num_pages_ * kv_page_bytes_;
  const int32_t page = slot_pages_[slot][t / kPageSize];
  const int64_t token_bytes = kv_page_bytes_ / kPageSize;
  return kv_pool_.get<char>() + softmax_layer * layer_bytes + (value ? num_pages_ * kv_page_bytes_ : 0) +
         page * kv_page_bytes_ + (t % kPageSize) * token_bytes;
}

absl::Status CudaBackend::EnsurePages(SlotId slot, int64_t tokens) {
  if (layout_.num_softmax_layers == 0) return absl::OkStatus();
  const int64_t need = (tokens + kPageSize - 1) / kPageSize;
  std::vector<int32_t>& pages = slot_pages_[slot];
  if (need <= static_cast<int64_t>(pages.size())) return absl::OkStatus();
  if (need > max_pages_) {
    return absl::OutOfRangeError(absl::StrCat("context of ", tokens, " tokens exceeds the KV page table (",
                                              int64_t{max_pages_} * kPageSize, " tokens)"));
  }
  if (need - static_cast<int64_t>(pages.size()) > static_cast<int64_t>(free_pages_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: ", free_pages_.size(), " free pages of ",
                                                     kPageSize, " tokens, ", need - pages.size(), " needed"));
  }
  while (static_cast<int64_t>(pages.size()) < need) {
    pages.push_back(free_pages_.back());
    free_pages_.pop_back();
  }
  return UploadPageTable(slot);
}

absl::Status CudaBackend::UploadPageTable(SlotId slot) {
  const std::vector<int32_t>& pages = slot_pages_[slot];
  if (pages.empty()) return absl::OkStatus();
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(page_table_.get<int32_t>() + static_cast<int64_t>(slot) * max_pages_, pages.data(),
                                     pages.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

void CudaBackend::FreePages(SlotId slot) {
  if (layout_.num_softmax_layers == 0) return;
  for (int32_t p : slot_pages_[slot]) free_pages_.push_back(p);
  slot_pages_[slot].clear();
}

absl::Status CudaBackend::ResetSlot(SlotId slot) {
  RETURN_IF_ERROR(CheckSlot(slot));
  FreePages(slot);
  positions_[slot] = 0;
  LIZARD_CUDA_RETURN(cudaMemsetAsync(pool_.get<char>() + slot * layout_.slot_bytes, 0, layout_.slot_bytes, stream_));
  return CudaStatus(cudaStreamSynchronize(stream_), "ResetSlot");
}

absl::Status CudaBackend::CopySlot(SlotId src, SlotId dst) {
  RETURN_IF_ERROR(CheckSlot(src));
  RETURN_IF_ERROR(CheckSlot(dst));
  if (src == dst) return absl::OkStatus();
  FreePages(dst);
  RETURN_IF_ERROR(EnsurePages(dst, positions_[src]));
  char* base = pool_.get<char>();
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(base + dst * layout_.slot_bytes, base + src * layout_.slot_bytes,
                                     layout_.slot_bytes, cudaMemcpyDeviceToDevice, stream_));
  // Softmax KV: page by page (the two slots' pages differ).
  for (int64_t s = 0; s < layout_.num_softmax_layers; ++s) {
    for (int value = 0; value < 2; ++value) {
      for (int64_t t = 0; t < positions_[src]; t += kPageSize) {
        const int64_t n = std::min<int64_t>(kPageSize, positions_[src] - t);
        LIZARD_CUDA_RETURN(cudaMemcpyAsync(KvAddress(s, value, dst, t), KvAddress(s, value, src, t),
                                           n * (kv_page_bytes_ / kPageSize), cudaMemcpyDeviceToDevice, stream_));
      }
    }
  }
  positions_[dst] = positions_[src];
  return CudaStatus(cudaStreamSynchronize(stream_), "CopySlot");
}

int64_t CudaBackend::SlotPosition(SlotId slot) const {
  return (slot >= 0 && slot < num_slots_) ? positions_[slot] : -1;
}

absl::StatusOr<std::string> CudaBackend::SaveSlot(SlotId slot) {
  RETURN_IF_ERROR(CheckSlot(slot));
  const int64_t pos = positions_[slot];
  const int64_t token_bytes = kv_page_bytes_ / kPageSize;
  const int64_t kv_layer_bytes = 2 * pos * token_bytes;
  // The constant-size slot goes through one pinned buffer kept for all spills (pinning 100+ MiB
  // per call would cost more than the copy); the softmax KV, unbounded, into pageable memory.
  if (spill_staging_.bytes() < static_cast<size_t>(layout_.slot_bytes)) {
    RETURN_IF_ERROR(spill_staging_.Allocate(layout_.slot_bytes));
  }
  char* h = spill_staging_.get<char>();
  std::vector<char> kv_host(layout_.num_softmax_layers * kv_layer_bytes);
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(h, pool_.get<char>() + slot * layout_.slot_bytes, layout_.slot_bytes,
                                     cudaMemcpyDeviceToHost, stream_));
  std::vector<std::string_view> kv;
  for (int64_t s = 0; s < layout_.num_softmax_layers; ++s) {
    char* layer = kv_host.data() + s * kv_layer_bytes;
    for (int value = 0; value < 2; ++value) {
      for (int64_t t = 0; t < pos; t += kPageSize) {
        const int64_t n = std::min<int64_t>(kPageSize, pos - t);
        LIZARD_CUDA_RETURN(cudaMemcpyAsync(layer + (value * pos + t) * token_bytes, KvAddress(s, value, slot, t),
                                           n * token_bytes, cudaMemcpyDeviceToHost, stream_));
      }
    }
    kv.emplace_back(layer, kv_layer_bytes);
  }
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  WriteSlotPosition(layout_, h, pos);  // the device copy keeps positions on the host only
  return SerializeState(layout_, std::string_view(h, layout_.slot_bytes), kv);
}

absl::Status CudaBackend::LoadSlot(SlotId slot, std::string_view bytes) {
  RETURN_IF_ERROR(CheckSlot(slot));
  // A state saved under other dtypes (the CPU backend's float32 window) is re-encoded first.
  std::string converted;
  auto view = ParseOrConvertSerializedState(config_, layout_, bytes, &converted);
  if (!view.ok()) return view.status();
  FreePages(slot);
  positions_[slot] = 0;
  RETURN_IF_ERROR(EnsurePages(slot, view->position));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(pool_.get<char>() + slot * layout_.slot_bytes, view->slot.data(),
                                     layout_.slot_bytes, cudaMemcpyHostToDevice, stream_));
  const int64_t token_bytes = kv_page_bytes_ / kPageSize;
  for (int64_t s = 0; s < layout_.num_softmax_layers; ++s) {
    const char* layer = view->softmax_kv[s].data();
    for (int value = 0; value < 2; ++value) {
      for (int64_t t = 0; t < view->position; t += kPageSize) {
        const int64_t n = std::min<int64_t>(kPageSize, view->position - t);
        LIZARD_CUDA_RETURN(cudaMemcpyAsync(KvAddress(s, value, slot, t), layer + (value * view->position + t) * token_bytes,
                                           n * token_bytes, cudaMemcpyHostToDevice, stream_));
      }
    }
  }
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  positions_[slot] = view->position;
  return absl::OkStatus();
}

// ---------------------------------------------------------------- compute

absl::Status CudaBackend::Gemm(const bf16* x, int rows, int in, const DeviceBuffer& w, int out, float* y) {
  if (batch_invariant_) {
    LIZARD_CUDA_RETURN(k::GemmBf16(x, rows, in, w.get<bf16>(), out, y, gemm_workspace_.get(), stream_));
    return absl::OkStatus();
  }
  // Row-major y[rows, out] = x[rows, in] w[out, in]^T, i.e. column-major y^T = w^T' x^T'.
  const float one = 1.f, zero = 0.f;
  return CublasStatus(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w.get(), CUDA_R_16BF, in,
                                   x, CUDA_R_16BF, in, &zero, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
}

absl::Status CudaBackend::EnqueueModel(int T, int S, bool multi, int max_keys) {
  const int32_t* meta = meta_.get<int32_t>();
  auto field = [&](MetaField f) { return meta + static_cast<int64_t>(f) * kMaxStepTokens; };
  float* x = x_.get<float>();
  float* delta = delta_.get<float>();
  bf16* u = u_.get<bf16>();
  float* qkvg = qkvg_.get<float>();
  bf16* y = y_.get<bf16>();
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const int qd = H_ * D_, kd = Hkv_ * D_;

  k::TokenMeta tokens{field(kTokSlot), field(kTokPos), field(kTokFirstRow), field(kTokFirstPos), field(kTokSingle)};
  k::SeqMeta seqs{field(kSeqSlot), field(kSeqFirstRow), field(kSeqNumTokens)};
  k::LizardScratch scratch{fq_.get<float>(), fk_.get<float>(), gamma_.get<float>(), den_.get<float>(), yw_.get<float>()};

  LIZARD_CUDA_RETURN(k::EmbeddingGather(weights_.embed.get<bf16>(), field(kTokIds), T, Hd_, x, stream_));
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const cuda::DeviceLayer& L = weights_.layers[l];
    const bool liz = L.type == LayerType::kLizard;
    const int ld = n_qkv_ + (liz ? H_ : 0);
    LIZARD_CUDA_RETURN(k::AddRmsNorm(x, l == 0 ? nullptr : delta, L.input_norm.get<float>(), T, Hd_, eps, u, stream_));
    RETURN_IF_ERROR(Gemm(u, T, Hd_, L.w_qkvg, ld, qkvg));
    if (L.b_qkvg.bytes() > 0) LIZARD_CUDA_RETURN(k::AddBias(qkvg, ld, L.b_qkvg.get<float>(), T, ld, stream_));

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
      const LizardLayerOffsets& part = layout_.lizard_layers[L.lizard_index];
      k::LizardStateRef state{pool_.get<char>(), layout_.slot_bytes, part.s, part.z, part.window_k, part.window_v,
                              StoreTypeOf(layout_.state_dtype), StoreTypeOf(layout_.window_dtype)};
      LIZARD_CUDA_RETURN(k::FeatureMapLogits(qkvg, ld, T, H_, Hkv_, D_, F_, L.fmap_q.get<float>(), L.fmap_k.get<float>(),
                                             fmap_logits_.get<float>(), stream_));
      k::LizardParams params{fmap_logits_.get<float>(), L.fmap_q_bias.get<float>(), L.fmap_k_bias.get<float>(),
                             L.meta_logits.get<float>(), L.window_factor.get<float>()};
      LIZARD_CUDA_RETURN(k::LizardWindow(dims_, qkvg, ld, krot, krot_ld, inv_freq_.get<double>(), tokens, T, params,
                                         state, scratch, stream_));
      if (multi) {
        LIZARD_CUDA_RETURN(k::LizardNormalizer(dims_, seqs, S, state, scratch, stream_));
        LIZARD_CUDA_RETURN(k::LizardRingWrite(dims_, qkvg, ld, krot, krot_ld, seqs, field(kSeqFirstPos), S, state, stream_));
      }
      LIZARD_CUDA_RETURN(k::LizardState(dims_, qkvg, ld, seqs, S, state, scratch, y, stream_));
    } else {
      LIZARD_CUDA_RETURN(k::Rope(qkvg, ld, qrot_.get<float>(), qd, field(kTokPos), T, H_, D_, inv_freq_.get<double>(), stream_));
      const int64_t layer_bytes = 2 * num_pages_ * kv_page_bytes_;
      char* layer_base = kv_pool_.get<char>() + L.softmax_index * layer_bytes;
      k::PagedKv kv{layer_base, layer_base + num_pages_ * kv_page_bytes_, StoreTypeOf(layout_.window_dtype),
                    page_table_.get<int32_t>(), max_pages_, kPageSize, Hkv_, D_};
      LIZARD_CUDA_RETURN(k::PagedKvWrite(krot, krot_ld, qkvg + qd + kd, ld, field(kTokSlot), field(kTokPos), T, kv, stream_));
      LIZARD_CUDA_RETURN(k::PagedAttention(qrot_.get<float>(), qd, field(kTokSlot), field(kTokPos), T, H_, max_keys, kv,
                                           partial_.get<float>(), partial_entries_, y, stream_));
    }
    RETURN_IF_ERROR(Gemm(y, T, qd, L.w_o, Hd_, delta));
    if (L.b_o.bytes() > 0) LIZARD_CUDA_RETURN(k::AddBias(delta, Hd_, L.b_o.get<float>(), T, Hd_, stream_));
    LIZARD_CUDA_RETURN(k::AddRmsNorm(x, delta, L.post_norm.get<float>(), T, Hd_, eps, u, stream_));
    RETURN_IF_ERROR(Gemm(u, T, Hd_, L.w_gate_up, 2 * I_, gate_up_.get<float>()));
    LIZARD_CUDA_RETURN(k::SwiGlu(gate_up_.get<float>(), T, I_, act_.get<bf16>(), stream_));
    RETURN_IF_ERROR(Gemm(act_.get<bf16>(), T, I_, L.w_down, Hd_, delta));
  }
  LIZARD_CUDA_RETURN(k::AddRmsNorm(x, delta, weights_.final_norm.get<float>(), T, Hd_, eps, u, stream_));
  return absl::OkStatus();
}

absl::Status CudaBackend::EnqueueLogits(int first, int R) {
  const int32_t* rows = meta_.get<int32_t>() + static_cast<int64_t>(kLogitRows) * kMaxStepTokens + first;
  LIZARD_CUDA_RETURN(k::GatherRowsBf16(u_.get<bf16>(), rows, R, Hd_, logit_in_.get<bf16>(), stream_));
  return Gemm(logit_in_.get<bf16>(), R, Hd_, weights_.head(), V_, logits_.get<float>());
}

absl::Status CudaBackend::RunStep(const std::vector<StepSeq>& seqs,
                                  const std::vector<RowSampling>& sampling, StepOutput* out) {
  // Softmax layers need pages for the new tokens before anything runs.
  for (const StepSeq& s : seqs) RETURN_IF_ERROR(EnsurePages(s.slot, s.first_pos + s.n));

  // Decode-only steps (every chunk one token) of pure Lizard models replay a graph; padding rows
  // use slot -1.
  const bool decode_only = std::all_of(seqs.begin(), seqs.end(), [](const StepSeq& s) { return s.n == 1; });
  int bucket = 0;
  if (decode_only && layout_.num_softmax_layers == 0) {
    for (int b : kGraphBuckets) {
      if (b >= static_cast<int>(seqs.size()) && b <= kMaxLogitRows) {
        bucket = b;
        break;
      }
    }
  }

  int32_t* meta = meta_host_.get<int32_t>();
  auto field = [&](MetaField f) { return meta + static_cast<int64_t>(f) * kMaxStepTokens; };
  int T = 0, R = 0, max_keys = 1;
  bool multi = false;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const StepSeq& s = seqs[i];
    field(kSeqSlot)[i] = s.slot;
    field(kSeqFirstRow)[i] = T;
    field(kSeqNumTokens)[i] = s.n;
    field(kSeqFirstPos)[i] = static_cast<int32_t>(s.first_pos);
    multi |= s.n > 1;
    max_keys = std::max<int>(max_keys, static_cast<int>(s.first_pos + s.n));
    for (int t = 0; t < s.n; ++t, ++T) {
      field(kTokIds)[T] = s.tokens[t];
      field(kTokSlot)[T] = s.slot;
      field(kTokPos)[T] = static_cast<int32_t>(s.first_pos + t);
      field(kTokFirstRow)[T] = T - t;
      field(kTokFirstPos)[T] = static_cast<int32_t>(s.first_pos);
      field(kTokSingle)[T] = s.n == 1;
      if (s.logits == LogitsMode::kAll || (s.logits == LogitsMode::kLast && t == s.n - 1)) field(kLogitRows)[R++] = T;
    }
  }
  int S = static_cast<int>(seqs.size());
  if (bucket > 0) {
    for (; T < bucket; ++T, ++S) {
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
    if (!sampling.empty()) return SampleLogits(sampling.data() + base_rows + first, n, base_rows + first, out);
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(out->logits.data() + (base_rows + first) * V_, logits_.get(),
                                       static_cast<size_t>(n) * V_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    return CudaStatus(cudaStreamSynchronize(stream_), "logits");
  };

  if (bucket > 0) {
    auto it = graphs_.find(bucket);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      LIZARD_CUDA_RETURN(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      absl::Status st = EnqueueModel(bucket, bucket, false, 1);
      if (st.ok()) st = EnqueueLogits(0, bucket);
      const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
      RETURN_IF_ERROR(st);
      LIZARD_CUDA_RETURN(end);
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      LIZARD_CUDA_RETURN(inst);
      it = graphs_.emplace(bucket, exec).first;
    }
    LIZARD_CUDA_RETURN(cudaGraphLaunch(it->second, stream_));
    RETURN_IF_ERROR(emit_rows(0, R));
  } else {
    RETURN_IF_ERROR(EnqueueModel(T, S, multi, max_keys));
    for (int first = 0; first < R; first += kMaxLogitRows) {
      const int n = std::min(kMaxLogitRows, R - first);
      RETURN_IF_ERROR(EnqueueLogits(first, n));
      RETURN_IF_ERROR(emit_rows(first, n));
    }
    LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  }
  for (const StepSeq& s : seqs) positions_[s.slot] = s.first_pos + s.n;
  return absl::OkStatus();
}

absl::Status CudaBackend::SampleLogits(const RowSampling* rows, int n, int64_t out_row, StepOutput* out) {
  // Penalty entries: every seen token of the rows that have a penalty, with its generated count.
  int64_t entries = 0;
  for (int i = 0; i < n; ++i) {
    if (rows[i].history != nullptr && rows[i].params.penalized()) entries += rows[i].history->seen().size();
  }
  if (entries > std::numeric_limits<int32_t>::max() / 2) return absl::InvalidArgumentError("token history too long");
  const size_t penalty_bytes = static_cast<size_t>(2 * entries) * sizeof(int32_t);
  if (penalty_bytes > penalties_.bytes()) {
    const size_t grown = std::max(penalty_bytes, 2 * penalties_.bytes());
    RETURN_IF_ERROR(penalties_.Allocate(grown));
    RETURN_IF_ERROR(penalties_host_.Allocate(grown));
  }
  auto* params = sample_host_.get<k::SamplingRow>();
  int32_t* tokens = reinterpret_cast<int32_t*>(params + kMaxLogitRows);
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
  float* logits = logits_.get<float>();
  LIZARD_CUDA_RETURN(k::ProcessLogits(logits, n, V_, sample_params_.get<k::SamplingRow>(), device_tokens,
                                      device_tokens + entries, stream_));
  LIZARD_CUDA_RETURN(k::SampleTokens(logits, n, V_, sample_params_.get<k::SamplingRow>(), sample_tokens_.get<int32_t>(), stream_));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(tokens, sample_tokens_.get(), n * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  // Logprobs: ranked on the device up to kMaxDeviceTopLogprobs alternatives (only those come
  // back); a request for more gets its processed row copied back and ranked on the host.
  bool device_logprobs = false;
  auto ranked_on_host = [&](int i) { return std::min(rows[i].logprobs, V_) > k::kMaxDeviceTopLogprobs; };
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
  int32_t* top_ids = reinterpret_cast<int32_t*>(chosen + kMaxLogitRows);
  float* top_values = chosen + kMaxLogitRows * (1 + kTop);
  if (device_logprobs) {
    LIZARD_CUDA_RETURN(k::TopLogprobs(logits, n, V_, sample_params_.get<k::SamplingRow>(), sample_tokens_.get<int32_t>(),
                                      chosen, top_ids, top_values, stream_));
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(logprobs_host_.get(), logprobs_.get(), logprobs_.bytes(), cudaMemcpyDeviceToHost, stream_));
  }
  logprob_rows_.resize(host_rows.size() * static_cast<size_t>(V_));
  for (size_t j = 0; j < host_rows.size(); ++j) {
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(logprob_rows_.data() + j * V_, logits + static_cast<int64_t>(host_rows[j]) * V_,
                                       V_ * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  }
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(stream_));
  const float* chosen_host = logprobs_host_.get<float>();
  const int32_t* top_ids_host = reinterpret_cast<const int32_t*>(chosen_host + kMaxLogitRows);
  const float* top_values_host = chosen_host + kMaxLogitRows * (1 + kTop);
  for (int i = 0; i < n; ++i) {
    out->tokens[out_row + i] = tokens[i];
    if (rows[i].logprobs <= 0 || ranked_on_host(i)) continue;
    TokenLogprobs& lp = out->logprobs[out_row + i];
    lp.chosen = {tokens[i], chosen_host[i]};
    lp.top.clear();
    for (int a = 0; a < std::min(rows[i].logprobs, V_); ++a) {
      lp.top.push_back({top_ids_host[i * kTop + a], top_values_host[i * kTop + a]});
    }
  }
  for (size_t j = 0; j < host_rows.size(); ++j) {
    const int i = host_rows[j];
    FillLogprobs(std::span<const float>(logprob_rows_.data() + j * V_, V_), tokens[i], rows[i].logprobs,
                 &out->logprobs[out_row + i]);
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Forward(const StepPlan& plan, StepOutput* out) {
  // Validate everything before touching any state.
  RETURN_IF_ERROR(ValidateStepPlan(plan, num_slots_, V_, [&](SlotId slot) { return positions_[slot]; }));
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));

  out->Reset(0, V_);  // rows grow as the logits are produced
  if (plan.sampling.empty()) {
    out->logits.reserve(static_cast<size_t>(plan.num_logits_rows()) * V_);
  } else {
    out->tokens.resize(plan.sampling.size());
    out->logprobs.resize(plan.sampling.size());
  }

  // Pack the plan into internal steps of at most kMaxStepTokens tokens, in output-row order
  // (chunks in order; a long chunk is cut into consecutive pieces).
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
      if (step_tokens == kMaxStepTokens) RETURN_IF_ERROR(flush());
      const int take = std::min(n - done, kMaxStepTokens - step_tokens);
      LogitsMode mode = c.logits;
      if (mode == LogitsMode::kLast && done + take < n) mode = LogitsMode::kNone;
      step.push_back({c.slot, c.first_position + done, c.tokens.data() + done, take, mode});
      step_tokens += take;
      done += take;
    }
  }
  return flush();
}

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>();
  RETURN_IF_ERROR(backend->Init(options));
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace lizard
