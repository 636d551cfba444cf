// The CPU reference backend: a composition of the model's float32 weights (weights.h), the
// sequence states (state_pool.h), the model over a step (forward.h) and the host sampler
// (sampler.h), all parallel loops on one thread pool.
#include "engine/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/forward.h"
#include "engine/cpu/sampler.h"
#include "engine/cpu/state_pool.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/weights.h"

namespace lizard {
namespace {

std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

int64_t MemTotalBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(ModelConfig config, HostWeights weights, int32_t num_slots, int num_threads)
      : config_(std::move(config)),
        weights_(std::move(weights)),
        threads_(num_threads),
        states_(config_, num_slots),
        forward_(config_, weights_, threads_, states_) {
    // Resident float32 bytes: a tied lm_head is a copy of embed, so it counts once more.
    weights_bytes_ = weights_.num_parameters() * static_cast<int64_t>(sizeof(float));
    if (weights_.tied_embeddings) {
      weights_bytes_ += static_cast<int64_t>(weights_.lm_head.size() * sizeof(float));
    }
    // Read once: info() runs under the engine's backend lock at every metrics scrape.
    device_ = absl::StrCat(CpuModelName(), ", ", threads_.num_threads(), " threads");
    memory_total_bytes_ = MemTotalBytes();
  }

  const ModelConfig& config() const override { return config_; }

  BackendInfo info() const override {
    BackendInfo info;
    info.name = "cpu";
    info.device = device_;
    info.memory_total_bytes = memory_total_bytes_;
    info.weights_bytes = weights_bytes_;
    info.state_pool_bytes = states_.pool_bytes();
    info.memory_used_bytes = info.weights_bytes + info.state_pool_bytes + states_.kv_bytes();
    return info;
  }

  int32_t num_slots() const override { return states_.num_slots(); }
  int64_t slot_bytes() const override { return states_.layout().slot_bytes; }
  int64_t kv_bytes_per_token() const override { return states_.layout().kv_bytes_per_token; }

  absl::Status ResetSlot(SlotId slot) override { return states_.Reset(slot); }
  absl::Status CopySlot(SlotId src, SlotId dst) override { return states_.Copy(src, dst); }
  int64_t SlotPosition(SlotId slot) const override { return states_.Position(slot); }
  absl::StatusOr<std::string> SaveSlot(SlotId slot) override { return states_.Save(slot); }
  absl::Status LoadSlot(SlotId slot, std::string_view bytes) override {
    return states_.Load(slot, bytes);
  }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override {
    if (absl::Status s = ValidateStepPlan(plan, states_.num_slots(), config_.vocab_size,
                                          [&](SlotId slot) { return states_.Position(slot); });
        !s.ok()) {
      return s;
    }
    forward_.Run(plan, out);
    cpu::SampleRows(plan, threads_, out);
    return absl::OkStatus();
  }

 private:
  ModelConfig config_;
  HostWeights weights_;
  cpu::ThreadPool threads_;  // every parallel loop of the backend, projections included
  cpu::StatePool states_;
  cpu::ModelForward forward_;
  int64_t weights_bytes_ = 0;
  std::string device_;
  int64_t memory_total_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options) {
  if (options.num_slots <= 0) return absl::InvalidArgumentError("num_slots must be positive");
  ModelConfig config;
  absl::StatusOr<HostWeights> weights = LoadHostWeights(options.weights, &config);
  if (!weights.ok()) return weights.status();
  // Refuse a pool that cannot fit before allocating it (a huge --device-state-slots once ended
  // in std::bad_alloc).
  const int64_t pool_bytes =
      int64_t{options.num_slots} * cpu::StatePool::Layout(config).slot_bytes;
  const int64_t memory_bytes = int64_t{sysconf(_SC_PHYS_PAGES)} * sysconf(_SC_PAGE_SIZE);
  if (memory_bytes > 0 && pool_bytes > memory_bytes / 2) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a state pool of ", options.num_slots, " slots takes ", pool_bytes,
        " bytes, more than half of this machine's memory (", memory_bytes, " bytes)"));
  }
  const int threads = options.num_threads > 0
                          ? options.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::unique_ptr<Backend>(
      new CpuBackend(std::move(config), *std::move(weights), options.num_slots, threads));
}

}  // namespace lizard
