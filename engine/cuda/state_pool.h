// StatePool: the CUDA backend's sequence state on the device. num_slots slots laid out as
// StateLayout says (S, z, window K/V), their positions (kept on the host), and the softmax
// layers' paged KV cache (page allocator and per-slot page table). Reset, copy, save and load of
// a slot, and the kernels' view of one layer's state. The CPU backend's counterpart is
// engine/cpu/state_pool.h.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/cuda/device_memory.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "engine/step_plan.h"
#include "kernels/kernels.h"

namespace lizard::cuda {

// Softmax layers' KV cache: tokens per page.
inline constexpr int kPageSize = 64;

kernels::StoreType StoreTypeOf(DType d);

class StatePool {
 public:
  StatePool() = default;
  // Waits for the spills still being serialized (they read this pool's pinned buffers). Every
  // Restore must be finished or destroyed first.
  ~StatePool();

  // Allocates `num_slots` zeroed slots of `layout` on the current device; compute is ordered on
  // `stream` (owned by the caller). The KV pages come later (AllocateKvPages). Save and Load copy
  // on a stream of their own through a pinned staging buffer of one slot, both made here.
  absl::Status Init(const ModelConfig& config, const StateLayout& layout, int32_t num_slots, cudaStream_t stream);
  // The softmax layers' page pool: the device memory still free (minus a reserve), capped at what
  // every slot at the longest context could use. Called last, after every other allocation.
  absl::Status AllocateKvPages();

  const StateLayout& layout() const { return layout_; }
  int32_t num_slots() const { return num_slots_; }
  // Slot state and KV pages together.
  int64_t device_bytes() const { return static_cast<int64_t>(pool_.bytes() + kv_pool_.bytes()); }

  absl::Status CheckSlot(SlotId slot) const;
  int64_t Position(SlotId slot) const { return positions_[slot]; }
  void SetPosition(SlotId slot, int64_t position) { positions_[slot] = position; }

  absl::Status Reset(SlotId slot);
  absl::Status Copy(SlotId src, SlotId dst);
  // Copies the slot (after the compute work queued on it) to the host and serializes it; returns
  // when done.
  absl::StatusOr<std::string> Save(SlotId slot);
  // Save for the host tier, without the engine waiting: queues the slot's download into a pinned
  // buffer of its own (later compute on the stream, which may overwrite the slot, waits for it on
  // the device) and returns; a worker thread serializes the bytes when the download is done.
  // At most kHostBuffers spills and restores are in the making; one more waits for a buffer.
  // States with softmax KV (unbounded, pageable) are saved by Save.
  absl::StatusOr<SavedSlot> Spill(SlotId slot);
  // Load for the host tier, without the engine waiting (Backend::RestoreSlot): a worker thread
  // waits for the spilled bytes, checks them (the checksum of a 145 MiB state alone takes ~36 ms
  // of a core), stages them in a pinned buffer and queues their upload on the copy stream after
  // the compute work queued so far; the restore is ready once the upload is done. States with
  // softmax KV are loaded at once by Load.
  absl::StatusOr<std::unique_ptr<SlotRestore>> Restore(SlotId slot, const SavedSlot& saved);
  // A state saved under other dtypes (the CPU backend's float32 window) is re-encoded first.
  // Returns once the bytes are staged and their upload is queued; the compute stream waits for
  // the upload, so every later step, reset, copy and save sees the restored state. `bytes` may be
  // freed on return.
  absl::Status Load(SlotId slot, std::string_view bytes);

  // Pages for the slot's tokens [0, tokens); RESOURCE_EXHAUSTED when the pool runs out.
  absl::Status EnsurePages(SlotId slot, int64_t tokens);

  // The kernels' view of lizard layer `lizard_index`'s state, and of softmax layer
  // `softmax_index`'s KV pages.
  kernels::LizardStateRef LizardLayer(int lizard_index) const;
  kernels::PagedKv SoftmaxLayer(int softmax_index) const;

 private:
  // One contiguous piece of a slot's softmax KV: `tokens` tokens from token `t` of the K (value
  // 0) or V (value 1) part of softmax layer `layer`. `device` is where they live in the pool,
  // `serialized` their offset in the layer's serialized KV ([K of all tokens | V of all tokens],
  // engine/model/state_layout.h) of a slot at position `position`.
  struct KvRun {
    int64_t layer = 0;
    int value = 0;
    int64_t t = 0;
    int64_t bytes = 0;
    char* device = nullptr;
    int64_t serialized = 0;
  };
  // Calls `fn` for every run of `slot`'s first `position` tokens, layer by layer, K then V, in
  // token order (runs end at page boundaries). Stops at the first error.
  absl::Status ForEachKvRun(SlotId slot, int64_t position, absl::FunctionRef<absl::Status(const KvRun&)> fn) const;
  // Device address of token `t` of `slot` in softmax layer `layer`'s K (value 0) or V pool.
  char* KvAddress(int64_t layer, int value, SlotId slot, int64_t t) const;
  char* SlotAddress(SlotId slot) const { return pool_.get<char>() + slot * layout_.slot_bytes; }
  int64_t kv_token_bytes() const { return kv_page_bytes_ / kPageSize; }
  void FreePages(SlotId slot);
  // Makes the copy stream wait for the work queued on the compute stream so far.
  absl::Status CopiesAfterCompute();
  absl::Status UploadPageTable(SlotId slot);
  class BackgroundRestore;
  // Queues the upload of a slot's serialized bytes on the copy stream, through `pinned` (slot
  // bytes of pinned memory, copied into piece by piece while earlier pieces upload).
  absl::Status UploadSlot(SlotId slot, const char* bytes, char* pinned);
  // A free host buffer, marked busy (waits for one if all are).
  int AcquireHostBuffer();
  void ReleaseHostBuffer(int k);
  // Spill's worker: waits for host buffer k's download, then serializes it.
  absl::StatusOr<std::string> SerializeSpill(int k, int64_t position);
  // Restore's worker: the bytes checked, staged in host buffer k and their upload queued; returns
  // the restored position.
  absl::StatusOr<int64_t> StageRestore(SlotId slot, int k, const SavedSlot& saved);
  // Restore's end on the engine's thread, once the worker is done: waits for the upload.
  absl::Status FinishRestore(SlotId slot, int k, absl::StatusOr<int64_t> position);

  ModelConfig config_;
  StateLayout layout_;
  int32_t num_slots_ = 0;
  cudaStream_t stream_ = nullptr;

  // num_slots_ slots of layout_.slot_bytes; positions mirrored on the host.
  DeviceBuffer pool_;
  std::vector<int64_t> positions_;

  // Softmax layers' paged KV cache.
  int64_t num_pages_ = 0;
  int max_pages_ = 0;
  DeviceBuffer kv_pool_;       // per softmax layer: K pages then V pages
  int64_t kv_page_bytes_ = 0;  // one page of one layer's K (or V)
  DeviceBuffer page_table_;    // int32 [num_slots, max_pages]
  std::vector<std::vector<int32_t>> slot_pages_;
  std::vector<int32_t> free_pages_;

  // Save and Load: a slot crosses the host link through `staging_` (pinned and written once at
  // Init, so no spill pays for allocating or faulting it in) on `copy_stream_`, which queues
  // behind the compute stream's work only where events say so. The stream is declared last so
  // that it is destroyed first, after its copies finish, before the memory they touch is freed.
  PinnedBuffer staging_;
  OwnedEvent compute_queued_;  // recorded on the compute stream, waited for by the copy stream
  OwnedEvent restored_;        // the last Load's upload, waited for by the compute stream
  // Spill and Restore: one pinned buffer per transfer in the making, busy from a spill's
  // download to the end of its serialization (on a worker thread), or from a restore's start to
  // the end of its upload.
  static constexpr int kHostBuffers = 3;
  struct HostBuffer {
    PinnedBuffer host;
    OwnedEvent copied;  // the buffer's last download or upload
    bool busy = false;
  };
  std::array<HostBuffer, kHostBuffers> host_buffers_;
  std::mutex host_mu_;
  std::condition_variable host_free_;
  int device_ = 0;  // the workers' CUDA calls run on it
  OwnedStream copy_stream_;
};

}  // namespace lizard::cuda
