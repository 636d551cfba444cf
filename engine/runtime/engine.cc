// Engine implementation: one engine thread runs Step() in a loop.
//
// Locking: `mu_` guards the bookkeeping (scheduler, states, sequence table, cancels) and is held
// only briefly. `backend_mu_` serializes every backend call: the engine thread holds it while it
// plans a step (admission may spill or restore states) and runs Forward, ForkState for its slot
// copy. Order: backend_mu_ before mu_. Sinks and the observer run on the engine thread with no
// engine lock held, so they may call any method except Shutdown. States of running sequences
// are never spilled or forked, so other threads cannot disturb a step between the two locks.
#include "engine/runtime/engine.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/runtime/prefix_cache.h"
#include "engine/runtime/scheduler.h"
#include "engine/runtime/state_manager.h"

namespace lizard {
namespace {

// One submitted request, from Submit until OnFinish.
struct Sequence {
  RequestId id = 0;
  StateId state = 0;
  std::shared_ptr<TokenSink> sink;
  SamplingParams sampling;
  StoppingCriteria stopping;
  int32_t logprobs = 0;
  uint64_t seed = 0;
  // The state's carried-over pending tokens, then the input, then every generated token.
  std::vector<int32_t> tokens;
  int64_t carried = 0;        // how many of `tokens` came from the state's pending tokens
  int64_t prompt_tokens = 0;  // the request's input
  int64_t fed = 0;            // tokens of `tokens` the state has consumed
  int64_t generated = 0;
  // The state was empty at Submit, so `tokens` is its whole history (the prefix cache's key).
  bool from_start = false;
  // A pinned prefix-cache entry that Admit copies into the state; `fed` already counts its
  // tokens. Reset to 0 once admitted.
  StateId cache_entry = 0;
  int64_t cached = 0;         // prompt tokens the entry spared (Usage::cached_tokens)
  TokenHistory history;
};

// A sequence that has left the engine; OnFinish is called once the locks are released.
struct Finished {
  std::unique_ptr<Sequence> seq;
  FinishReason reason;
  absl::Status status;
  Usage usage;
};

SchedulerOptions SchedulerOptionsOf(const EngineOptions& o) {
  return {.max_batch_tokens = o.max_batch_tokens,
          .max_running = o.max_running,
          .max_queue = o.max_queue,
          .prefill_alignment = o.prefill_alignment};
}

absl::Status ValidateRequest(const EngineRequest& r, int64_t vocab) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (r.input.empty()) return bad("input is empty");
  for (int32_t t : r.input) {
    if (t < 0 || t >= vocab) return bad("input token id ", t, " is outside [0, ", vocab, ")");
  }
  for (int32_t t : r.stopping.stop_token_ids) {
    if (t < 0 || t >= vocab) return bad("stop token id ", t, " is outside [0, ", vocab, ")");
  }
  if (absl::Status s = Validate(r.sampling); !s.ok()) return s;
  if (r.stopping.max_new_tokens < 0) {
    return bad("max_new_tokens must be >= 0, got ", r.stopping.max_new_tokens);
  }
  if (r.logprobs < 0 || r.logprobs > vocab) return bad("logprobs must be in [0, vocab size]");
  return absl::OkStatus();
}

class EngineImpl : public Engine {
 public:
  EngineImpl(std::unique_ptr<Backend> backend, const EngineOptions& options)
      : backend_(std::move(backend)),
        options_(options),
        config_(backend_->config()),
        eos_(config_.eos_token_ids.begin(), config_.eos_token_ids.end()),
        scheduler_(SchedulerOptionsOf(options)),
        states_(backend_.get(), options.max_states, options.host_state_bytes),
        cache_(options.prefix_cache_bytes),
        rng_(options.seed) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~EngineImpl() override { Shutdown(); }

  const ModelConfig& config() const override { return config_; }
  BackendInfo backend_info() const override {
    std::lock_guard backend_lock(backend_mu_);
    return backend_->info();
  }
  int64_t state_bytes_per_sequence() const override { return backend_->slot_bytes(); }

  absl::StatusOr<StateId> CreateState() override {
    std::lock_guard lock(mu_);
    return states_.Create(/*temporary=*/false);
  }

  absl::StatusOr<StateId> ForkState(StateId source) override {
    std::lock_guard backend_lock(backend_mu_);
    std::lock_guard lock(mu_);
    return states_.Fork(source);
  }

  absl::Status FreeState(StateId id) override {
    std::lock_guard lock(mu_);
    return states_.Free(id);
  }

  absl::StatusOr<StateInfo> GetStateInfo(StateId id) const override {
    std::lock_guard lock(mu_);
    return states_.Info(id);
  }

  // Export and import go through the backend's slot serialization (host-tier bytes are already
  // serialized). An import is recorded like a request that restored the state: Attach,
  // Consume what the loaded slot holds, Detach with its pending tokens and last turn.
  absl::StatusOr<ExportedState> ExportState(StateId id) override {
    std::lock_guard backend_lock(backend_mu_);
    std::lock_guard lock(mu_);
    const SequenceState* state = states_.Find(id);
    if (state == nullptr) return absl::NotFoundError(absl::StrCat("unknown state ", id));
    if (state->busy) return absl::FailedPreconditionError("cannot export a busy state");
    ExportedState out;
    if (state->slot.has_value()) {
      absl::StatusOr<std::string> bytes = backend_->SaveSlot(*state->slot);
      if (!bytes.ok()) return bytes.status();
      out.serialized = *std::move(bytes);
    } else if (state->host.has_value()) {
      absl::StatusOr<std::string_view> bytes = state->host->bytes();
      if (!bytes.ok()) return bytes.status();
      out.serialized = std::string(*bytes);
    }
    out.pending = state->pending;
    out.last_turn_tokens = state->last_turn;
    out.last_turn_input_tokens = state->last_turn_input;
    return out;
  }

  absl::StatusOr<StateId> ImportState(const ExportedState& state) override {
    for (const std::vector<int32_t>* tokens : {&state.pending, &state.last_turn_tokens}) {
      for (int32_t t : *tokens) {
        if (t < 0 || t >= config_.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("state token id ", t, " is outside [0, ",
                                                         config_.vocab_size, ")"));
        }
      }
    }
    if (state.last_turn_input_tokens < 0 ||
        state.last_turn_input_tokens > static_cast<int64_t>(state.last_turn_tokens.size())) {
      return absl::InvalidArgumentError("last_turn_input_tokens out of range");
    }
    std::lock_guard backend_lock(backend_mu_);
    std::lock_guard lock(mu_);
    absl::StatusOr<StateId> id = states_.Create(/*temporary=*/false);
    if (!id.ok()) return id.status();
    int64_t consumed = 0;
    if (!state.serialized.empty()) {
      absl::Status loaded = states_.MakeResident(*id);
      const SlotId slot = loaded.ok() ? *states_.Find(*id)->slot : 0;
      if (loaded.ok()) loaded = backend_->LoadSlot(slot, state.serialized);
      if (!loaded.ok()) {
        states_.Free(*id).IgnoreError();  // not busy: cannot fail
        return loaded;
      }
      consumed = backend_->SlotPosition(slot);
    }
    states_.Attach(*id);
    states_.Consume(*id, consumed);
    states_.Detach(*id, state.pending, state.last_turn_tokens, state.last_turn_input_tokens);
    return id;
  }

  absl::StatusOr<RequestId> Submit(EngineRequest request,
                                   std::shared_ptr<TokenSink> sink) override {
    if (sink == nullptr) return absl::InvalidArgumentError("no sink");
    if (absl::Status s = ValidateRequest(request, config_.vocab_size); !s.ok()) return s;

    std::lock_guard lock(mu_);
    if (!accepting_) return absl::UnavailableError("engine is shutting down");
    const SequenceState* state = nullptr;
    if (request.state != 0) {
      state = states_.Find(request.state);
      if (state == nullptr)
        return absl::NotFoundError(absl::StrCat("unknown state ", request.state));
      if (state->busy) return absl::AbortedError("state is busy with another request");
    }
    const RequestId id = next_request_id_++;
    const int64_t carried = state == nullptr ? 0 : static_cast<int64_t>(state->pending.size());
    std::vector<int32_t> tokens;  // the state's pending tokens, then the input
    if (state != nullptr) tokens = state->pending;
    tokens.insert(tokens.end(), request.input.begin(), request.input.end());
    // An empty state can start from the longest cached prefix; at least one token is left to
    // prefill, for the logits of the first generated token.
    const bool from_start = state == nullptr || state->consumed == 0;
    std::optional<PrefixCache::Hit> hit;
    if (from_start) hit = cache_.Lookup(tokens, static_cast<int64_t>(tokens.size()) - 1);
    const int64_t cached = hit.has_value() ? hit->tokens : 0;
    const int64_t prefill = static_cast<int64_t>(tokens.size()) - cached;
    // The state is busy from here on, so it is at this position when admitted.
    const int64_t first_position = (state == nullptr ? 0 : state->consumed) + cached;
    if (absl::Status s = scheduler_.Add(id, prefill, first_position); !s.ok()) return s;
    if (state == nullptr) {
      absl::StatusOr<StateId> temp = states_.Create(/*temporary=*/true);
      if (!temp.ok()) {
        scheduler_.Remove(id);
        return temp.status();
      }
      request.state = *temp;
    }

    auto seq = std::make_unique<Sequence>();
    seq->id = id;
    seq->state = request.state;
    seq->sink = std::move(sink);
    seq->sampling = request.sampling;
    seq->stopping = std::move(request.stopping);
    seq->logprobs = request.logprobs;
    seq->seed = request.sampling.seed.has_value() ? *request.sampling.seed : rng_();
    states_.Attach(request.state);  // its pending tokens are the front of `tokens`
    seq->tokens = std::move(tokens);
    seq->carried = carried;
    seq->prompt_tokens = static_cast<int64_t>(request.input.size());
    seq->history.AddPrompt(seq->tokens);
    seq->from_start = from_start;
    if (hit.has_value()) {
      cache_.Pin(hit->state);
      seq->cache_entry = hit->state;
      seq->fed = cached;
      seq->cached = std::max<int64_t>(0, cached - carried);
    }
    sequences_[id] = std::move(seq);
    work_cv_.notify_one();
    return id;
  }

  void Cancel(RequestId id) override {
    std::lock_guard lock(mu_);
    if (!sequences_.contains(id)) return;
    cancels_.insert(id);
    work_cv_.notify_one();
  }

  EngineStats Stats() const override {
    std::lock_guard lock(mu_);
    EngineStats s;
    s.queue_depth = scheduler_.num_waiting();
    s.running_sequences = scheduler_.num_running();
    s.states = states_.num_states();
    s.device_slots_used = states_.used_slots();
    s.device_slots_free = states_.free_slots();
    s.host_states = states_.host_states();
    s.host_bytes_used = states_.host_bytes_used();
    s.host_bytes_capacity = states_.host_capacity_bytes();
    s.evictions_total = states_.evictions();
    s.restores_total = states_.restores();
    s.prefix_cache_queries = cache_.queries();
    s.prefix_cache_hits = cache_.hits();
    s.prefix_cache_hit_tokens = cache_.hit_tokens();
    s.prefix_cache_evictions = cache_.evictions();
    for (StateId id : cache_.states()) {
      const SequenceState& entry = *states_.Find(id);
      const bool device = entry.slot.has_value();
      ++(device ? s.prefix_cache_device_entries : s.prefix_cache_host_entries);
      (device ? s.prefix_cache_device_bytes : s.prefix_cache_host_bytes) += states_.BytesOf(entry);
    }
    return s;
  }

  void Shutdown() override {
    {
      std::lock_guard lock(mu_);
      accepting_ = false;
      stopping_ = true;
      for (const auto& [id, seq] : sequences_) cancels_.insert(id);
      work_cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  // What one logits row of the current step belongs to.
  struct Advance {
    Sequence* seq = nullptr;
    int64_t num_tokens = 0;     // tokens fed this step
    bool logits_row = false;    // produces a row (decode, or the prompt's last chunk)
    bool prefill_only = false;  // the prompt's last chunk of a max_new_tokens == 0 request
    bool prompt_end = false;    // the prompt's last chunk
  };

  void Loop() {
    while (true) {
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [&] { return stopping_ || !cancels_.empty() || !scheduler_.empty(); });
        if (stopping_ && cancels_.empty() && scheduler_.empty()) return;
      }
      Step();
    }
  }

  void Step() {
    const absl::Time start = absl::Now();
    std::vector<Finished> finished;
    StepPlan plan;
    std::vector<Advance> advances;  // decodes then prefill chunks, the plan's order
    StepOutput& out = step_output_;
    absl::Status status;
    // The backend is held for planning (admission may spill/restore states) and Forward (which
    // samples) only; the sinks run without any engine lock.
    std::unique_lock backend_lock(backend_mu_);
    {
      std::lock_guard lock(mu_);
      // Cancels first, so their slots are free for this step's admissions.
      const absl::flat_hash_set<RequestId> cancels = std::exchange(cancels_, {});
      for (RequestId id : cancels) {
        auto it = sequences_.find(id);
        if (it != sequences_.end()) {
          finished.push_back(FinishLocked(it->second.get(), FinishReason::kCancelled, {}));
        }
      }

      ScheduledStep step = scheduler_.Schedule([&](RequestId id) { return AdmitLocked(id); });
      for (ScheduledStep::Failed& f : step.failed) {
        finished.push_back(
            FinishLocked(sequences_.at(f.id).get(), FinishReason::kError, std::move(f.status)));
      }
      // The scheduler's decodes first (the sampled tokens fed back), then its prompt chunks.
      for (RequestId id : step.decodes) {
        Sequence* seq = sequences_.at(id).get();
        const SequenceState& state = *states_.Find(seq->state);
        plan.chunks.push_back({*state.slot, state.consumed, {seq->tokens[seq->fed]},
                               LogitsMode::kLast, /*decode=*/true});
        plan.sampling.push_back(RowSamplingOf(*seq));
        advances.push_back({seq, 1, true, false, false});
      }
      for (const ScheduledStep::Chunk& c : step.prefills) {
        Sequence* seq = sequences_.at(c.id).get();
        const SequenceState& state = *states_.Find(seq->state);
        const bool wants_token = c.last && seq->stopping.max_new_tokens > 0;
        SequenceChunk chunk;
        chunk.slot = *state.slot;
        chunk.first_position = state.consumed;
        chunk.tokens.assign(seq->tokens.begin() + seq->fed,
                            seq->tokens.begin() + seq->fed + c.num_tokens);
        chunk.logits = wants_token ? LogitsMode::kLast : LogitsMode::kNone;
        plan.chunks.push_back(std::move(chunk));
        if (wants_token) plan.sampling.push_back(RowSamplingOf(*seq));
        advances.push_back({seq, c.num_tokens, wants_token, c.last && !wants_token, c.last});
      }
    }

    if (!advances.empty()) {
      status = backend_->Forward(plan, &out);
      if (status.ok() && (out.rows != plan.num_logits_rows() ||
                          static_cast<int64_t>(out.tokens.size()) != out.rows ||
                          static_cast<int64_t>(out.logprobs.size()) != out.rows)) {
        status = absl::InternalError(absl::StrCat("backend returned ", out.tokens.size(),
                                                  " tokens, expected ", plan.num_logits_rows()));
      }
      if (!status.ok()) FailStep(advances, status, finished);
      if (status.ok()) Consume(advances);
    }
    if (options_.spill_ahead_slots > 0) {
      // One spill a step at most: its bytes are made in the background, and a burst of them
      // would wait for the backend's few host transfer buffers.
      std::lock_guard lock(mu_);
      states_.SpillAhead(options_.spill_ahead_slots, /*max_spills=*/1);
    }
    backend_lock.unlock();

    if (!advances.empty()) {
      if (status.ok()) EmitTokens(advances, out, finished);
      if (options_.observer != nullptr) {
        options_.observer->OnStep(
            {static_cast<int64_t>(advances.size()), plan.num_tokens(), absl::Now() - start});
      }
    }
    Deliver(finished);
  }

  // How the backend samples the next token of `seq`.
  static RowSampling RowSamplingOf(const Sequence& seq) {
    RowSampling row;
    row.params = seq.sampling;
    row.seed = seq.seed;
    row.step = static_cast<uint64_t>(seq.generated);
    row.logprobs = seq.logprobs;
    if (seq.sampling.penalized()) row.history = &seq.history;
    return row;
  }

  // Advances the states by the fed tokens; a finished prompt is snapshotted into the prefix
  // cache. Called with backend_mu_ held.
  void Consume(const std::vector<Advance>& advances) {
    std::lock_guard lock(mu_);
    for (const Advance& a : advances) {
      a.seq->fed += a.num_tokens;
      states_.Consume(a.seq->state, a.num_tokens);
      if (a.prompt_end) SnapshotLocked(*a.seq);
    }
  }

  // Streams the sampled tokens and retires the sequences that are done.
  void EmitTokens(const std::vector<Advance>& advances, const StepOutput& out,
                  std::vector<Finished>& finished) {
    // Stream the sampled tokens in row order, without mu_ (sinks may call back into the engine).
    std::vector<Sequence*> row_seqs;
    for (const Advance& a : advances) {
      if (a.logits_row) row_seqs.push_back(a.seq);
    }
    const std::vector<int32_t>& tokens = out.tokens;
    const std::vector<TokenLogprobs>& logprobs = out.logprobs;

    std::vector<std::pair<Sequence*, FinishReason>> done;
    for (const Advance& a : advances) {
      if (a.prefill_only) done.push_back({a.seq, FinishReason::kLength});
    }
    for (size_t r = 0; r < row_seqs.size(); ++r) {
      Sequence& seq = *row_seqs[r];
      const int32_t token = tokens[r];
      seq.tokens.push_back(token);
      seq.history.AddGenerated(token);
      ++seq.generated;
      const bool keep_going = seq.sink->OnToken(token, seq.logprobs > 0 ? &logprobs[r] : nullptr);
      const auto& stop_ids = seq.stopping.stop_token_ids;
      if (!keep_going) {
        done.push_back({&seq, FinishReason::kStop});
      } else if (!seq.stopping.ignore_eos && eos_.contains(token)) {
        done.push_back({&seq, FinishReason::kEos});
      } else if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
        done.push_back({&seq, FinishReason::kStop});
      } else if (seq.generated >= seq.stopping.max_new_tokens) {
        done.push_back({&seq, FinishReason::kLength});
      }
    }
    std::lock_guard backend_lock(backend_mu_);  // FinishLocked snapshots states
    std::lock_guard lock(mu_);
    for (auto& [seq, reason] : done) finished.push_back(FinishLocked(seq, reason, {}));
  }

  // A failed Forward fails the requests of this step only. Their states keep what the backend
  // says it consumed, so a session stays consistent. Called with backend_mu_ held.
  void FailStep(const std::vector<Advance>& advances, const absl::Status& status,
                std::vector<Finished>& finished) {
    std::lock_guard lock(mu_);
    for (const Advance& a : advances) {
      const SequenceState& state = *states_.Find(a.seq->state);
      const int64_t advanced = std::clamp<int64_t>(
          backend_->SlotPosition(*state.slot) - state.consumed, 0, a.num_tokens);
      states_.Consume(a.seq->state, advanced);
      a.seq->fed += advanced;
      finished.push_back(FinishLocked(a.seq, FinishReason::kError, status));
    }
  }

  // Removes a sequence from the engine and settles its state (see StateManager): unfed tokens
  // stay pending, except unfed input of a failed request, which is dropped.
  // Called with backend_mu_ held (the end of a generation is snapshotted into the prefix cache).
  Finished FinishLocked(Sequence* seq, FinishReason reason, absl::Status status) {
    scheduler_.Remove(seq->id);
    cancels_.erase(seq->id);
    if (seq->cache_entry != 0) {
      // Never admitted: the state consumed nothing (Detach drops a copy of the prefix in flight).
      cache_.Unpin(seq->cache_entry);
      seq->cache_entry = 0;
      seq->fed = 0;
      seq->cached = 0;
    }
    if (reason != FinishReason::kError) SnapshotLocked(*seq);
    const int64_t keep_until = reason == FinishReason::kError
                                   ? std::max(seq->fed, seq->carried)
                                   : static_cast<int64_t>(seq->tokens.size());
    const int64_t unfed_from = std::min(seq->fed, keep_until);
    const int64_t turn_input = std::min(seq->prompt_tokens, keep_until - seq->carried);
    const std::span<const int32_t> tokens(seq->tokens);

    Finished f;
    f.reason = reason;
    f.status = std::move(status);
    f.usage.prompt_tokens = turn_input;  // a failed request: only what it consumed
    f.usage.generated_tokens = seq->generated;
    f.usage.cached_tokens = seq->cached;
    f.usage.state_tokens =
        states_.Detach(seq->state, tokens.subspan(unfed_from, keep_until - unfed_from),
                       tokens.subspan(seq->carried, keep_until - seq->carried), turn_input);
    auto it = sequences_.find(seq->id);
    f.seq = std::move(it->second);
    sequences_.erase(it);
    return f;
  }

  // Admits a waiting sequence: its state gets a slot, and a copy of its cached prefix if it has
  // one. A state (or cached prefix) coming back from the host tier is restored in the background
  // while other sequences run (UNAVAILABLE until it is done: the scheduler asks again next step),
  // and at once when nothing runs, since then no step would go on meanwhile. Called with
  // backend_mu_ and mu_ held.
  absl::Status AdmitLocked(RequestId id) {
    Sequence& seq = *sequences_.at(id);
    const bool background = scheduler_.num_running() > 0;
    if (absl::Status s = states_.Admit(seq.state, seq.cache_entry, background); !s.ok()) return s;
    if (seq.cache_entry != 0) cache_.Unpin(std::exchange(seq.cache_entry, 0));
    return absl::OkStatus();
  }

  // Caches what the state of `seq` has consumed, when its whole history is known. Best effort:
  // a failed snapshot is simply not cached. Called with backend_mu_ and mu_ held.
  void SnapshotLocked(const Sequence& seq) {
    const SequenceState& state = *states_.Find(seq.state);
    if (!cache_.enabled() || !seq.from_start || seq.fed == 0 || state.consumed != seq.fed ||
        !state.slot.has_value()) {
      return;
    }
    const std::span<const int32_t> consumed(seq.tokens.data(), seq.fed);
    if (cache_.Contains(consumed)) return;
    absl::StatusOr<StateId> entry = states_.Snapshot(seq.state);
    if (!entry.ok()) return;
    for (StateId id : cache_.Insert(consumed, *entry, states_.BytesOf(*states_.Find(*entry)))) {
      states_.Free(id).IgnoreError();  // cache entries are never busy
    }
  }

  // OnFinish calls and state-tier events, outside mu_.
  void Deliver(std::vector<Finished>& finished) {
    for (Finished& f : finished) f.seq->sink->OnFinish(f.reason, f.usage, f.status);
    if (options_.observer == nullptr) return;
    int64_t evictions, restores;
    {
      std::lock_guard lock(mu_);
      evictions = states_.evictions();
      restores = states_.restores();
    }
    for (; reported_evictions_ < evictions; ++reported_evictions_)
      options_.observer->OnStateEvicted();
    for (; reported_restores_ < restores; ++reported_restores_)
      options_.observer->OnStateRestored();
  }

  const std::unique_ptr<Backend> backend_;
  const EngineOptions options_;
  const ModelConfig config_;
  const absl::flat_hash_set<int32_t> eos_;

  mutable std::mutex backend_mu_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  Scheduler scheduler_;  // guarded by mu_
  StateManager states_;  // guarded by mu_ (+ backend_mu_)
  PrefixCache cache_;    // guarded by mu_; its entries are states of states_
  absl::flat_hash_map<RequestId, std::unique_ptr<Sequence>> sequences_;  // guarded by mu_
  absl::flat_hash_set<RequestId> cancels_;                               // guarded by mu_
  std::mt19937_64 rng_;                                                  // guarded by mu_
  RequestId next_request_id_ = 1;                                        // guarded by mu_
  bool accepting_ = true;                                                // guarded by mu_
  bool stopping_ = false;                                                // guarded by mu_
  int64_t reported_evictions_ = 0, reported_restores_ = 0;               // engine thread only
  // Reused by every step (engine thread only), so its buffers are not reallocated.
  StepOutput step_output_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<Backend> backend,
                                                       const EngineOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("no backend");
  if (backend->num_slots() < 1) return absl::InvalidArgumentError("backend has no state slots");
  // Decodes and the oldest prompt must always fit the token budget (nothing starves).
  if (absl::Status s = ValidateSchedulerOptions(SchedulerOptionsOf(options)); !s.ok()) return s;
  if (options.max_states < 1 || options.host_state_bytes < 0 || options.prefix_cache_bytes < 0 ||
      options.spill_ahead_slots < 0) {
    return absl::InvalidArgumentError(
        "max_states, host_state_bytes, prefix_cache_bytes or spill_ahead_slots out of range");
  }
  return std::unique_ptr<Engine>(new EngineImpl(std::move(backend), options));
}

}  // namespace lizard
