// Backend: runs the model on one device (CPU reference or CUDA) and owns that device's
// sequence-state pool. Everything above this interface is device-agnostic.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/model_config.h"
#include "engine/model/weight_source.h"
#include "engine/step_plan.h"

namespace lizard {

struct BackendInfo {
  std::string name;         // "cpu" or "cuda"
  std::string device;       // e.g. "x86_64, 16 threads" or "NVIDIA H100 80GB HBM3"
  int64_t memory_total_bytes = 0;
  int64_t memory_used_bytes = 0;
  int64_t weights_bytes = 0;
  int64_t state_pool_bytes = 0;
  std::string detail;  // how the backend computes, for logs (CUDA: the projections' GEMMs)
};

// A slot's serialized bytes (Backend::SpillSlot) that may still be in the making: the slot's
// contents were captured when SpillSlot returned, and the host work (serializing, checksumming)
// runs off the engine's thread. Copies share the bytes, which never change once made.
class SavedSlot {
 public:
  using Bytes = std::shared_future<absl::StatusOr<std::string>>;
  // Bytes made already.
  explicit SavedSlot(std::string bytes) : size_(static_cast<int64_t>(bytes.size())) {
    std::promise<absl::StatusOr<std::string>> made;
    made.set_value(std::move(bytes));
    bytes_ = made.get_future().share();
  }
  // Bytes in the making; `size` is what they will measure.
  SavedSlot(int64_t size, Bytes bytes) : size_(size), bytes_(std::move(bytes)) {}

  int64_t size() const { return size_; }
  // Waits until the bytes are made; the error if making them failed.
  absl::StatusOr<std::string_view> bytes() const {
    const absl::StatusOr<std::string>& made = bytes_.get();
    if (!made.ok()) return made.status();
    return std::string_view(*made);
  }

 private:
  int64_t size_;
  Bytes bytes_;
};

// A slot being loaded from spilled bytes (Backend::RestoreSlot). The slot must not be used by
// any other backend call until Finish has returned.
class SlotRestore {
 public:
  virtual ~SlotRestore() = default;
  // Whether Finish would return without waiting (never blocks).
  virtual bool ready() = 0;
  // Waits for the load; OK: every later backend call sees the restored state in the slot. An
  // error leaves the slot's contents undefined (reset or load it before use). Called once.
  virtual absl::Status Finish() = 0;
};

// A restore that was done when it was made.
class FinishedRestore final : public SlotRestore {
 public:
  explicit FinishedRestore(absl::Status status) : status_(std::move(status)) {}
  bool ready() override { return true; }
  absl::Status Finish() override { return status_; }

 private:
  absl::Status status_;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const ModelConfig& config() const = 0;
  virtual BackendInfo info() const = 0;

  // --- state pool: `num_slots()` fixed-size slots living in the backend's memory ---
  virtual int32_t num_slots() const = 0;
  // Exact bytes of one slot's constant-size part (lizard layers: S, z, window K/V, position).
  virtual int64_t slot_bytes() const = 0;
  // Bytes per consumed token of the softmax layers' KV cache (0 for a pure Lizard model).
  virtual int64_t kv_bytes_per_token() const = 0;
  // Makes `slot` an empty sequence at position 0 (also frees any softmax KV it held).
  virtual absl::Status ResetSlot(SlotId slot) = 0;
  // Makes `dst` an exact copy of `src` (fork).
  virtual absl::Status CopySlot(SlotId src, SlotId dst) = 0;
  // Number of tokens the slot's state has consumed.
  virtual int64_t SlotPosition(SlotId slot) const = 0;
  // Serializes a slot (StateLayout order, see engine/model/state_layout.h) for host spill or
  // migration, and loads such bytes back into a slot (of this or another process).
  virtual absl::StatusOr<std::string> SaveSlot(SlotId slot) = 0;
  virtual absl::Status LoadSlot(SlotId slot, std::string_view bytes) = 0;
  // SaveSlot for the host tier (spills): may return before the bytes exist, which then come
  // through the SavedSlot. The slot may be reset, loaded or computed on as soon as it returns.
  virtual absl::StatusOr<SavedSlot> SpillSlot(SlotId slot) {
    absl::StatusOr<std::string> bytes = SaveSlot(slot);
    if (!bytes.ok()) return bytes.status();
    return SavedSlot(*std::move(bytes));
  }
  // LoadSlot of a spill for the host tier, without the engine waiting: checking the bytes and
  // uploading them may run off the caller's thread (the CUDA backend's do) while steps on other
  // slots go on; the restore keeps its own copy of `saved` (a prefix-cache entry may be freed
  // meanwhile). The default loads at once.
  virtual absl::StatusOr<std::unique_ptr<SlotRestore>> RestoreSlot(SlotId slot, const SavedSlot& saved) {
    absl::StatusOr<std::string_view> bytes = saved.bytes();
    return std::make_unique<FinishedRestore>(bytes.ok() ? LoadSlot(slot, *bytes) : bytes.status());
  }

  // --- compute ---
  // Runs one step: every chunk advances its slot's state; returns the
  // logits rows of StepPlan::num_logits_rows() in that order, or the tokens sampled from them
  // (see StepOutput). Results never depend on what else shares the plan. Every field of `out`
  // is overwritten (StepOutput::Reset first), also when no row is sampled.
  virtual absl::Status Forward(const StepPlan& plan, StepOutput* out) = 0;
};

enum class BackendKind { kAuto, kCpu, kCuda };

// "auto", "cpu" or "cuda" (the spelling of the --backend flags); INVALID_ARGUMENT otherwise.
absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name);

struct BackendOptions {
  // A checkpoint directory, or synthetic weights (benchmarks: no checkpoint is read).
  WeightSource weights;
  BackendKind kind = BackendKind::kAuto;
  int32_t num_slots = 64;      // state slots in the pool
  int32_t num_threads = 0;     // CPU: 0 = all cores
  int32_t device_index = 0;    // CUDA
  // Overrides the checkpoint's lizard.state_dtype (S and z) when set. CUDA only: the CPU backend
  // keeps float32 states whatever is asked.
  std::optional<DType> state_dtype;
  // CUDA: projections by the batch-invariant GEMM (kernels/gemm_bf16.cu), so a sequence's
  // results do not depend on what shares its steps; false: cuBLAS (faster for long prefills,
  // but its kernel choice changes with the batch, and greedy tokens with it at near ties).
  bool batch_invariant = true;
};

// Loads the weights and creates the backend (kAuto: CUDA when a GPU is usable, else CPU).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

}  // namespace lizard
