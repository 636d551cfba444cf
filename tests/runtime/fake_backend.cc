#include "tests/runtime/fake_backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/sampling/sampler.h"
#include "engine/step_plan.h"

namespace lizard::testing {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  return x ^ (x >> 33);
}

}  // namespace

uint64_t FakeConsume(uint64_t hash, int32_t token, int64_t position) {
  return Mix(hash ^ Mix(static_cast<uint64_t>(token) * 0x9E3779B97F4A7C15ull +
                        static_cast<uint64_t>(position)));
}

std::vector<float> FakeLogits(uint64_t hash, int64_t vocab) {
  std::vector<float> row(vocab);
  for (int64_t v = 0; v < vocab; ++v) {
    const uint64_t bits = Mix(hash + static_cast<uint64_t>(v) * 0xD1B54A32D192ED03ull);
    row[v] = static_cast<float>(bits >> 40) / static_cast<float>(1 << 24) * 8.0f - 4.0f;
  }
  return row;
}

std::vector<int32_t> FakeGreedy(const std::vector<int32_t>& history, int64_t vocab, int n) {
  uint64_t hash = kEmptyHash;
  int64_t position = 0;
  for (int32_t t : history) hash = FakeConsume(hash, t, position++);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const std::vector<float> row = FakeLogits(hash, vocab);
    const int32_t t = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    out.push_back(t);
    hash = FakeConsume(hash, t, position++);
  }
  return out;
}

void FakeControl::Pause() {
  std::lock_guard lock(mu_);
  paused_ = true;
}

void FakeControl::Resume() {
  std::lock_guard lock(mu_);
  paused_ = false;
  cv_.notify_all();
}

bool FakeControl::WaitUntilBlocked(absl::Duration timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return blocked_ > 0; });
}

int64_t FakeControl::forward_calls() const {
  std::lock_guard lock(mu_);
  return forward_calls_;
}

int64_t FakeControl::max_step_tokens() const {
  std::lock_guard lock(mu_);
  return max_step_tokens_;
}

int64_t FakeControl::max_step_sequences() const {
  std::lock_guard lock(mu_);
  return max_step_sequences_;
}

void FakeControl::HoldRestores() {
  std::lock_guard lock(mu_);
  restores_held_ = true;
}

void FakeControl::ReleaseRestores() {
  std::lock_guard lock(mu_);
  restores_held_ = false;
  cv_.notify_all();
}

void FakeControl::FailRestores(bool fail) {
  std::lock_guard lock(mu_);
  restores_fail_ = fail;
}

bool FakeControl::restores_fail() const {
  std::lock_guard lock(mu_);
  return restores_fail_;
}

int64_t FakeControl::forwards_during_restore() const {
  std::lock_guard lock(mu_);
  return forwards_during_restore_;
}

void FakeControl::StartRestore() {
  std::lock_guard lock(mu_);
  ++restores_in_flight_;
}

bool FakeControl::restores_held() const {
  std::lock_guard lock(mu_);
  return restores_held_;
}

void FakeControl::WaitRestoresReleased() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !restores_held_; });
}

void FakeControl::EndRestore() {
  std::lock_guard lock(mu_);
  --restores_in_flight_;
}

void FakeControl::EnterForward(const StepPlan& plan) {
  std::unique_lock lock(mu_);
  ++blocked_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return !paused_; });
  --blocked_;
  ++forward_calls_;
  if (restores_in_flight_ > 0) ++forwards_during_restore_;
  max_step_tokens_ = std::max(max_step_tokens_, plan.num_tokens());
  max_step_sequences_ =
      std::max<int64_t>(max_step_sequences_, static_cast<int64_t>(plan.chunks.size()));
}

FakeBackend::FakeBackend(const FakeBackendOptions& options, std::shared_ptr<FakeControl> control)
    : options_(options), control_(std::move(control)), slots_(options.num_slots) {
  config_.vocab_size = options.vocab;
  config_.eos_token_ids = options.eos_token_ids;
  config_.name = "fake";
}

absl::Status FakeBackend::CheckSlot(SlotId slot) const {
  if (slot < 0 || slot >= num_slots()) return absl::OutOfRangeError(absl::StrCat("slot ", slot));
  return absl::OkStatus();
}

absl::Status FakeBackend::ResetSlot(SlotId slot) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  slots_[slot] = Slot{};
  return absl::OkStatus();
}

absl::Status FakeBackend::CopySlot(SlotId src, SlotId dst) {
  if (absl::Status s = CheckSlot(src); !s.ok()) return s;
  if (absl::Status s = CheckSlot(dst); !s.ok()) return s;
  slots_[dst] = slots_[src];
  return absl::OkStatus();
}

int64_t FakeBackend::SlotPosition(SlotId slot) const {
  return CheckSlot(slot).ok() ? slots_[slot].position : 0;
}

absl::StatusOr<std::string> FakeBackend::SaveSlot(SlotId slot) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  std::string bytes(options_.slot_bytes, '\0');
  std::memcpy(bytes.data(), &slots_[slot], sizeof(Slot));
  return bytes;
}

absl::StatusOr<SavedSlot> FakeBackend::SpillSlot(SlotId slot) {
  absl::StatusOr<std::string> bytes = SaveSlot(slot);  // the slot's contents now
  if (!bytes.ok()) return bytes.status();
  if (!options_.slow_spill) return SavedSlot(*std::move(bytes));
  const auto size = static_cast<int64_t>(bytes->size());
  auto later = [made = *std::move(bytes)]() -> absl::StatusOr<std::string> {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return made;
  };
  return SavedSlot(size, std::async(std::launch::async, std::move(later)).share());
}

// A restore that loads its bytes when finished, once FakeControl lets it.
class FakeRestore final : public SlotRestore {
 public:
  FakeRestore(FakeBackend* backend, FakeControl* control, SlotId slot, SavedSlot saved)
      : backend_(backend), control_(control), slot_(slot), saved_(std::move(saved)) {
    control_->StartRestore();
  }
  ~FakeRestore() override {
    if (!finished_) Finish().IgnoreError();
  }
  bool ready() override { return !control_->restores_held(); }
  absl::Status Finish() override {
    control_->WaitRestoresReleased();
    finished_ = true;
    control_->EndRestore();
    if (control_->restores_fail()) {
      backend_->LoadSlot(slot_, std::string(backend_->slot_bytes(), '\x5a')).IgnoreError();
      return absl::DataLossError("corrupt state bytes");
    }
    absl::StatusOr<std::string_view> bytes = saved_.bytes();
    return bytes.ok() ? backend_->LoadSlot(slot_, *bytes) : bytes.status();
  }

 private:
  FakeBackend* backend_;
  FakeControl* control_;
  SlotId slot_;
  SavedSlot saved_;
  bool finished_ = false;
};

absl::StatusOr<std::unique_ptr<SlotRestore>> FakeBackend::RestoreSlot(SlotId slot, const SavedSlot& saved) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  return std::make_unique<FakeRestore>(this, control_.get(), slot, saved);
}

absl::Status FakeBackend::LoadSlot(SlotId slot, std::string_view bytes) {
  if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
  if (static_cast<int64_t>(bytes.size()) != options_.slot_bytes) {
    return absl::InvalidArgumentError("wrong state size");
  }
  std::memcpy(&slots_[slot], bytes.data(), sizeof(Slot));
  return absl::OkStatus();
}

absl::Status FakeBackend::Forward(const StepPlan& plan, StepOutput* out) {
  control_->EnterForward(plan);
  // Check the whole plan before touching any slot, like a real backend refusing a bad plan.
  if (absl::Status s = ValidateStepPlan(plan, num_slots(), options_.vocab,
                                        [&](SlotId slot) { return slots_[slot].position; });
      !s.ok()) {
    return s;
  }
  for (const SequenceChunk& c : plan.chunks) {
    for (int32_t t : c.tokens) {
      if (t == options_.poison_token) return absl::InternalError("poisoned token");
    }
  }

  out->Reset(plan.num_logits_rows(), options_.vocab);
  auto consume = [&](SlotId slot, int32_t token) {
    Slot& s = slots_[slot];
    s.hash = FakeConsume(s.hash, token, s.position++);
  };
  auto emit = [&](SlotId slot) {
    const std::vector<float> row = FakeLogits(slots_[slot].hash, options_.vocab);
    out->logits.insert(out->logits.end(), row.begin(), row.end());
  };
  for (const SequenceChunk& c : plan.chunks) {
    for (int32_t t : c.tokens) {
      consume(c.slot, t);
      if (c.logits == LogitsMode::kAll) emit(c.slot);
    }
    if (c.logits == LogitsMode::kLast) emit(c.slot);
  }
  if (!plan.sampling.empty()) {
    SampleOnHost(plan, out, [](int64_t n, absl::FunctionRef<void(int64_t)> fn) {
      for (int64_t i = 0; i < n; ++i) fn(i);
    });
  }
  return absl::OkStatus();
}

}  // namespace lizard::testing
