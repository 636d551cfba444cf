// StatePool: see state_pool.h.
#include "engine/cuda/state_pool.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lizard::cuda {
namespace {

// The longest context a slot's page table covers, at least.
constexpr int64_t kMinMaxContext = 132 * 1024;
// Device memory left free after the KV page pool (cuBLAS, graphs, fragmentation).
constexpr int64_t kReserveBytes = int64_t{1} << 30;
// UploadSlot copies a slot into a pinned buffer in pieces of this size, each piece's upload
// running while the next one is copied.
constexpr int64_t kUploadPieceBytes = int64_t{8} << 20;

}  // namespace

kernels::StoreType StoreTypeOf(DType d) {
  return d == DType::kBF16 ? kernels::StoreType::kBF16 : kernels::StoreType::kF32;
}

absl::Status StatePool::Init(const ModelConfig& config, const StateLayout& layout, int32_t num_slots,
                             cudaStream_t stream) {
  config_ = config;
  layout_ = layout;
  num_slots_ = num_slots;
  stream_ = stream;
  LIZARD_RETURN_IF_ERROR(pool_.Allocate(static_cast<size_t>(num_slots_) * layout_.slot_bytes));
  LIZARD_CUDA_RETURN(cudaMemsetAsync(pool_.get(), 0, pool_.bytes(), stream_));
  positions_.assign(num_slots_, 0);

  cudaStream_t copy_stream = nullptr;
  LIZARD_CUDA_RETURN(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
  copy_stream_.reset(copy_stream);
  for (OwnedEvent* event : {&compute_queued_, &restored_}) {
    cudaEvent_t e = nullptr;
    LIZARD_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    event->reset(e);
  }
  LIZARD_CUDA_RETURN(cudaGetDevice(&device_));
  // Pinned buffers written once here, so no save, load or spill pays for faulting them in.
  LIZARD_RETURN_IF_ERROR(staging_.Allocate(layout_.slot_bytes));
  std::memset(staging_.get(), 0, staging_.bytes());
  for (HostBuffer& buffer : host_buffers_) {
    LIZARD_RETURN_IF_ERROR(buffer.host.Allocate(layout_.slot_bytes));
    std::memset(buffer.host.get(), 0, buffer.host.bytes());
    cudaEvent_t e = nullptr;
    // A blocking-sync event: a thread waiting for the copy sleeps instead of spinning.
    LIZARD_CUDA_RETURN(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
    buffer.copied.reset(e);
  }
  return absl::OkStatus();
}

StatePool::~StatePool() {
  std::unique_lock lock(host_mu_);
  host_free_.wait(lock, [&] {
    return std::none_of(host_buffers_.begin(), host_buffers_.end(), [](const HostBuffer& b) { return b.busy; });
  });
}

absl::Status StatePool::AllocateKvPages() {
  if (layout_.num_softmax_layers == 0) return absl::OkStatus();
  const int64_t max_context = std::max<int64_t>(config_.max_position_embeddings, kMinMaxContext);
  const int64_t max_pages = (max_context + kPageSize - 1) / kPageSize;
  // The kernels index the page table [num_slots, max_pages] with int32.
  if (max_pages > std::numeric_limits<int32_t>::max() / std::max(num_slots_, 1)) {
    return absl::InvalidArgumentError(absl::StrCat("max_position_embeddings ", config_.max_position_embeddings, " with ",
                                                   num_slots_, " slots is too large for the KV page table"));
  }
  max_pages_ = static_cast<int>(max_pages);
  LIZARD_RETURN_IF_ERROR(page_table_.Allocate(static_cast<size_t>(num_slots_) * max_pages_ * sizeof(int32_t)));
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
  LIZARD_RETURN_IF_ERROR(kv_pool_.Allocate(num_pages_ * page_all_layers));
  free_pages_.clear();
  for (int64_t p = num_pages_ - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
  return absl::OkStatus();
}

absl::Status StatePool::CheckSlot(SlotId slot) const {
  if (slot < 0 || slot >= num_slots_) {
    return absl::InvalidArgumentError(absl::StrCat("slot ", slot, " out of range [0, ", num_slots_, ")"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- KV pages

char* StatePool::KvAddress(int64_t layer, int value, SlotId slot, int64_t t) const {
  const int64_t layer_bytes = 2 * num_pages_ * kv_page_bytes_;
  const int32_t page = slot_pages_[slot][t / kPageSize];
  return kv_pool_.get<char>() + layer * layer_bytes + (value ? num_pages_ * kv_page_bytes_ : 0) +
         page * kv_page_bytes_ + (t % kPageSize) * kv_token_bytes();
}

absl::Status StatePool::ForEachKvRun(SlotId slot, int64_t position,
                                     absl::FunctionRef<absl::Status(const KvRun&)> fn) const {
  const int64_t token_bytes = kv_token_bytes();
  for (int64_t s = 0; s < layout_.num_softmax_layers; ++s) {
    for (int value = 0; value < 2; ++value) {
      for (int64_t t = 0; t < position; t += kPageSize) {
        const int64_t n = std::min<int64_t>(kPageSize, position - t);
        LIZARD_RETURN_IF_ERROR(fn({s, value, t, n * token_bytes, KvAddress(s, value, slot, t),
                                   (value * position + t) * token_bytes}));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status StatePool::EnsurePages(SlotId slot, int64_t tokens) {
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

absl::Status StatePool::UploadPageTable(SlotId slot) {
  const std::vector<int32_t>& pages = slot_pages_[slot];
  if (pages.empty()) return absl::OkStatus();
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(page_table_.get<int32_t>() + static_cast<int64_t>(slot) * max_pages_, pages.data(),
                                     pages.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

void StatePool::FreePages(SlotId slot) {
  if (layout_.num_softmax_layers == 0) return;
  for (int32_t p : slot_pages_[slot]) free_pages_.push_back(p);
  slot_pages_[slot].clear();
}

// ---------------------------------------------------------------- slot operations

absl::Status StatePool::Reset(SlotId slot) {
  LIZARD_RETURN_IF_ERROR(CheckSlot(slot));
  FreePages(slot);
  positions_[slot] = 0;
  LIZARD_CUDA_RETURN(cudaMemsetAsync(SlotAddress(slot), 0, layout_.slot_bytes, stream_));
  return CudaStatus(cudaStreamSynchronize(stream_), "ResetSlot");
}

absl::Status StatePool::Copy(SlotId src, SlotId dst) {
  LIZARD_RETURN_IF_ERROR(CheckSlot(src));
  LIZARD_RETURN_IF_ERROR(CheckSlot(dst));
  if (src == dst) return absl::OkStatus();
  FreePages(dst);
  LIZARD_RETURN_IF_ERROR(EnsurePages(dst, positions_[src]));
  LIZARD_CUDA_RETURN(
      cudaMemcpyAsync(SlotAddress(dst), SlotAddress(src), layout_.slot_bytes, cudaMemcpyDeviceToDevice, stream_));
  // Softmax KV: page by page (the two slots' pages differ).
  LIZARD_RETURN_IF_ERROR(ForEachKvRun(dst, positions_[src], [&](const KvRun& run) {
    return CudaStatus(cudaMemcpyAsync(run.device, KvAddress(run.layer, run.value, src, run.t), run.bytes,
                                      cudaMemcpyDeviceToDevice, stream_),
                      "CopySlot KV");
  }));
  positions_[dst] = positions_[src];
  return CudaStatus(cudaStreamSynchronize(stream_), "CopySlot");
}

absl::Status StatePool::CopiesAfterCompute() {
  LIZARD_CUDA_RETURN(cudaEventRecord(compute_queued_.get(), stream_));
  LIZARD_CUDA_RETURN(cudaStreamWaitEvent(copy_stream_.get(), compute_queued_.get()));
  return absl::OkStatus();
}

absl::StatusOr<std::string> StatePool::Save(SlotId slot) {
  LIZARD_RETURN_IF_ERROR(CheckSlot(slot));
  const int64_t pos = positions_[slot];
  const int64_t kv_layer_bytes = 2 * pos * kv_token_bytes();
  LIZARD_RETURN_IF_ERROR(CopiesAfterCompute());
  cudaStream_t copy = copy_stream_.get();
  // The constant-size slot through the pinned staging buffer (at link speed); the softmax KV,
  // unbounded, into pageable memory. A previous Load's upload from the staging buffer is queued
  // before this download on the same stream.
  char* h = staging_.get<char>();
  std::vector<char> kv_host(layout_.num_softmax_layers * kv_layer_bytes);
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(h, SlotAddress(slot), layout_.slot_bytes, cudaMemcpyDeviceToHost, copy));
  LIZARD_RETURN_IF_ERROR(ForEachKvRun(slot, pos, [&](const KvRun& run) {
    return CudaStatus(cudaMemcpyAsync(kv_host.data() + run.layer * kv_layer_bytes + run.serialized, run.device,
                                      run.bytes, cudaMemcpyDeviceToHost, copy),
                      "SaveSlot KV");
  }));
  std::vector<std::string_view> kv;
  for (int64_t s = 0; s < layout_.num_softmax_layers; ++s) kv.emplace_back(kv_host.data() + s * kv_layer_bytes, kv_layer_bytes);
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(copy));
  WriteSlotPosition(layout_, h, pos);  // the device copy keeps positions on the host only
  // The one host copy of the slot: from the staging buffer into the serialized bytes.
  return SerializeState(layout_, std::string_view(h, layout_.slot_bytes), kv);
}

absl::StatusOr<SavedSlot> StatePool::Spill(SlotId slot) {
  if (layout_.num_softmax_layers > 0) {
    absl::StatusOr<std::string> bytes = Save(slot);
    if (!bytes.ok()) return bytes.status();
    return SavedSlot(*std::move(bytes));
  }
  LIZARD_RETURN_IF_ERROR(CheckSlot(slot));
  const int64_t pos = positions_[slot];
  const int k = AcquireHostBuffer();
  HostBuffer& buffer = host_buffers_[k];
  // Whatever the compute stream runs next (a step, a reset or a copy into the slot) waits for the
  // download on the device, not on the engine's thread.
  absl::Status queued = CopiesAfterCompute();
  if (queued.ok()) {
    queued = CudaStatus(cudaMemcpyAsync(buffer.host.get(), SlotAddress(slot), layout_.slot_bytes,
                                        cudaMemcpyDeviceToHost, copy_stream_.get()),
                        "spill download");
  }
  if (queued.ok()) queued = CudaStatus(cudaEventRecord(buffer.copied.get(), copy_stream_.get()), "spill event");
  if (queued.ok()) queued = CudaStatus(cudaStreamWaitEvent(stream_, buffer.copied.get()), "spill wait");
  if (!queued.ok()) {
    ReleaseHostBuffer(k);
    return queued;
  }
  SavedSlot::Bytes bytes = std::async(std::launch::async, [this, k, pos]() -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> out = SerializeSpill(k, pos);
    ReleaseHostBuffer(k);
    return out;
  }).share();
  return SavedSlot(SerializedStateBytes(layout_, pos), std::move(bytes));
}

absl::StatusOr<std::string> StatePool::SerializeSpill(int k, int64_t position) {
  HostBuffer& buffer = host_buffers_[k];
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));
  LIZARD_CUDA_RETURN(cudaEventSynchronize(buffer.copied.get()));
  WriteSlotPosition(layout_, buffer.host.get(), position);  // the device copy keeps positions on the host only
  return SerializeState(layout_, std::string_view(buffer.host.get<char>(), layout_.slot_bytes), {});
}

absl::Status StatePool::UploadSlot(SlotId slot, const char* bytes, char* pinned) {
  for (int64_t at = 0; at < layout_.slot_bytes; at += kUploadPieceBytes) {
    const int64_t n = std::min(kUploadPieceBytes, layout_.slot_bytes - at);
    std::memcpy(pinned + at, bytes + at, n);
    LIZARD_CUDA_RETURN(
        cudaMemcpyAsync(SlotAddress(slot) + at, pinned + at, n, cudaMemcpyHostToDevice, copy_stream_.get()));
  }
  return absl::OkStatus();
}

int StatePool::AcquireHostBuffer() {
  std::unique_lock lock(host_mu_);
  int k = 0;
  host_free_.wait(lock, [&] {
    for (k = 0; k < kHostBuffers && host_buffers_[k].busy; ++k) {
    }
    return k < kHostBuffers;
  });
  host_buffers_[k].busy = true;
  return k;
}

void StatePool::ReleaseHostBuffer(int k) {
  std::lock_guard lock(host_mu_);
  host_buffers_[k].busy = false;
  host_free_.notify_all();
}

// A Restore in flight: ready once the worker has queued the upload and the upload is done.
class StatePool::BackgroundRestore final : public SlotRestore {
 public:
  BackgroundRestore(StatePool* pool, SlotId slot, int k, std::future<absl::StatusOr<int64_t>> staged)
      : pool_(pool), slot_(slot), k_(k), staged_(std::move(staged)) {}
  ~BackgroundRestore() override {
    if (staged_.valid()) Finish().IgnoreError();  // the buffer and the slot must be let go
  }
  bool ready() override {
    return staged_.wait_for(std::chrono::seconds(0)) == std::future_status::ready &&
           cudaEventQuery(pool_->host_buffers_[k_].copied.get()) != cudaErrorNotReady;
  }
  absl::Status Finish() override { return pool_->FinishRestore(slot_, k_, staged_.get()); }

 private:
  StatePool* pool_;
  SlotId slot_;
  int k_;
  std::future<absl::StatusOr<int64_t>> staged_;
};

absl::StatusOr<std::unique_ptr<SlotRestore>> StatePool::Restore(SlotId slot, const SavedSlot& saved) {
  LIZARD_RETURN_IF_ERROR(CheckSlot(slot));
  if (layout_.num_softmax_layers > 0) {
    absl::StatusOr<std::string_view> bytes = saved.bytes();
    return std::make_unique<FinishedRestore>(bytes.ok() ? Load(slot, *bytes) : bytes.status());
  }
  const int k = AcquireHostBuffer();
  positions_[slot] = 0;
  // The upload, queued later by the worker, comes after the compute work queued so far (the
  // slot's previous owner's steps; its spill download is on the copy stream already).
  if (absl::Status s = CopiesAfterCompute(); !s.ok()) {
    ReleaseHostBuffer(k);
    return s;
  }
  std::future<absl::StatusOr<int64_t>> staged =
      std::async(std::launch::async, [this, slot, k, saved] { return StageRestore(slot, k, saved); });
  return std::make_unique<BackgroundRestore>(this, slot, k, std::move(staged));
}

absl::StatusOr<int64_t> StatePool::StageRestore(SlotId slot, int k, const SavedSlot& saved) {
  LIZARD_CUDA_RETURN(cudaSetDevice(device_));
  absl::StatusOr<std::string_view> bytes = saved.bytes();
  if (!bytes.ok()) return bytes.status();
  std::string converted;
  auto view = ParseOrConvertSerializedState(config_, layout_, *bytes, &converted);
  if (!view.ok()) return view.status();
  HostBuffer& buffer = host_buffers_[k];
  const absl::Status queued = UploadSlot(slot, view->slot.data(), buffer.host.get<char>());
  // Recorded also when a piece failed to queue: FinishRestore waits on this event before the
  // buffer is reused, and the pieces queued before may still be reading it.
  LIZARD_CUDA_RETURN(cudaEventRecord(buffer.copied.get(), copy_stream_.get()));
  LIZARD_RETURN_IF_ERROR(queued);
  return view->position;
}

absl::Status StatePool::FinishRestore(SlotId slot, int k, absl::StatusOr<int64_t> position) {
  // Done at once when ready() said so. After a worker that failed before queuing any piece, the
  // event is an earlier, finished copy's.
  const absl::Status uploaded = CudaStatus(cudaEventSynchronize(host_buffers_[k].copied.get()), "restore upload");
  ReleaseHostBuffer(k);
  if (!position.ok()) return position.status();
  LIZARD_RETURN_IF_ERROR(uploaded);
  positions_[slot] = *position;
  return absl::OkStatus();
}

absl::Status StatePool::Load(SlotId slot, std::string_view bytes) {
  LIZARD_RETURN_IF_ERROR(CheckSlot(slot));
  std::string converted;
  auto view = ParseOrConvertSerializedState(config_, layout_, bytes, &converted);
  if (!view.ok()) return view.status();
  FreePages(slot);
  positions_[slot] = 0;
  LIZARD_RETURN_IF_ERROR(EnsurePages(slot, view->position));
  cudaStream_t copy = copy_stream_.get();
  // The staging buffer may still feed the previous Load's upload; the slot may still be read or
  // written by queued compute work.
  LIZARD_CUDA_RETURN(cudaStreamSynchronize(copy));
  LIZARD_RETURN_IF_ERROR(CopiesAfterCompute());
  LIZARD_RETURN_IF_ERROR(UploadSlot(slot, view->slot.data(), staging_.get<char>()));
  // The softmax KV straight from `bytes` (or `converted`): pageable memory the driver may still
  // read after a call returns, so these wait for their copies.
  LIZARD_RETURN_IF_ERROR(ForEachKvRun(slot, view->position, [&](const KvRun& run) {
    return CudaStatus(cudaMemcpyAsync(run.device, view->softmax_kv[run.layer].data() + run.serialized, run.bytes,
                                      cudaMemcpyHostToDevice, copy),
                      "LoadSlot KV");
  }));
  if (view->position > 0 && layout_.num_softmax_layers > 0) LIZARD_CUDA_RETURN(cudaStreamSynchronize(copy));
  // Later compute (steps, reset, copy, and Save through CopiesAfterCompute) waits for the upload.
  LIZARD_CUDA_RETURN(cudaEventRecord(restored_.get(), copy));
  LIZARD_CUDA_RETURN(cudaStreamWaitEvent(stream_, restored_.get()));
  positions_[slot] = view->position;
  return absl::OkStatus();
}

// ---------------------------------------------------------------- the kernels' view

kernels::LizardStateRef StatePool::LizardLayer(int lizard_index) const {
  const LizardLayerOffsets& part = layout_.lizard_layers[lizard_index];
  return {pool_.get<char>(), layout_.slot_bytes, part.s, part.z, part.window_k, part.window_v,
          StoreTypeOf(layout_.state_dtype), StoreTypeOf(layout_.window_dtype)};
}

kernels::PagedKv StatePool::SoftmaxLayer(int softmax_index) const {
  const int64_t layer_bytes = 2 * num_pages_ * kv_page_bytes_;
  char* layer_base = kv_pool_.get<char>() + softmax_index * layer_bytes;
  return {layer_base, layer_base + num_pages_ * kv_page_bytes_, StoreTypeOf(layout_.window_dtype),
          page_table_.get<int32_t>(), max_pages_, kPageSize, static_cast<int>(config_.num_kv_heads),
          static_cast<int>(config_.head_dim)};
}

}  // namespace lizard::cuda
