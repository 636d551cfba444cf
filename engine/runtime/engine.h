// Engine: the step loop that serves many sequences at once on one Backend.
//
// One engine thread owns the backend. Each step: the scheduler picks decode items and prefill
// chunks under a token budget, the backend runs them and samples a token for each row on its
// device, and each token goes to its request's TokenSink. The engine also owns sequence *states*: a state is a
// conversation's constant-size memory, resident in a device slot or spilled to host bytes.
// The server maps sessions to StateIds; the engine never sees RPCs.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/runtime/ids.h"
#include "engine/sampling/sampling.h"

namespace lizard {

struct StoppingCriteria {
  int32_t max_new_tokens = 16;  // 0 = prefill only (e.g. a session's prefix)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

enum class FinishReason { kLength, kStop, kEos, kCancelled, kError };

struct Usage {
  int64_t prompt_tokens = 0;     // the input that joined the state (all of it, unless kError)
  int64_t generated_tokens = 0;
  int64_t state_tokens = 0;  // tokens the state holds after this request (session_tokens)
  int64_t cached_tokens = 0;  // of prompt_tokens, how many a prefix-cache hit spared prefilling
};

// Receives one request's results. Called on the engine thread: it must not block (buffer and
// return). OnFinish is called exactly once, last. No engine lock is held during these calls:
// a sink may call any Engine method except Shutdown.
// A token that ends the sequence (EOS, a stop_token_id) is still delivered through OnToken and
// counted in generated_tokens, and it stays in the state's history.
class TokenSink {
 public:
  virtual ~TokenSink() = default;
  // A generated token. Return false to finish the sequence here with FinishReason::kStop (used
  // for stop strings matched on text); the token still counts as generated.
  virtual bool OnToken(int32_t token, const TokenLogprobs* logprobs) = 0;
  // `status` is OK unless reason is kError.
  virtual void OnFinish(FinishReason reason, const Usage& usage, const absl::Status& status) = 0;
};

struct EngineRequest {
  StateId state = 0;             // 0: a temporary state, freed when the request ends
  std::vector<int32_t> input;    // tokens appended to the state's history; non-empty
  SamplingParams sampling;
  StoppingCriteria stopping;
  int32_t logprobs = 0;          // top-n alternatives per generated token, 0 = none
};

enum class StateLocation { kDevice, kHost };

struct StateInfo {
  int64_t num_tokens = 0;        // tokens the conversation holds (consumed + pending); while
                                 // busy, what it held when the running request started (so
                                 // that it always agrees with last_turn_tokens)
  StateLocation location = StateLocation::kDevice;
  int64_t state_bytes = 0;       // slot bytes + softmax KV bytes
  bool busy = false;             // a request is running on it
  // The tokens the last finished request added to the conversation: the part of its input that
  // was kept (all of it, unless it failed), then every generated token that the state holds,
  // delivered to the client or not. After a cancel, this is how a client learns exactly what
  // the conversation now holds.
  std::vector<int32_t> last_turn_tokens;
  int64_t last_turn_input_tokens = 0;  // how many of last_turn_tokens were input
};

// Everything a state holds, to move it to another process or machine (or keep it on disk):
// ExportState of one engine, ImportState of another serving the same model gives a state that
// continues exactly as the original would.
struct ExportedState {
  // The serialized model state (engine/model/state_layout.h: portable across backends and
  // dtypes); empty for a state that has consumed nothing.
  std::string serialized;
  std::vector<int32_t> pending;  // tokens of the conversation not fed yet
  std::vector<int32_t> last_turn_tokens;  // StateInfo's last-turn facts
  int64_t last_turn_input_tokens = 0;
};

// Live numbers for metrics and GetModelInfo.
struct EngineStats {
  int64_t queue_depth = 0;
  int64_t running_sequences = 0;
  int64_t states = 0;
  int32_t device_slots_used = 0, device_slots_free = 0;
  int64_t host_states = 0, host_bytes_used = 0, host_bytes_capacity = 0;
  int64_t evictions_total = 0, restores_total = 0;
  // The prefix cache: lookups (requests that start an empty state), hits, tokens served from
  // it, entries evicted (dropped), and its entries and bytes per tier.
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0, prefix_cache_hit_tokens = 0;
  int64_t prefix_cache_evictions = 0;
  int64_t prefix_cache_device_entries = 0, prefix_cache_host_entries = 0;
  int64_t prefix_cache_device_bytes = 0, prefix_cache_host_bytes = 0;
};

// Called on the engine thread after every step (metrics). Must not block.
struct StepStats {
  int64_t batch_sequences = 0;   // sequences advanced this step
  int64_t batch_tokens = 0;      // tokens fed this step
  absl::Duration duration;
};
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats& stats) = 0;
  virtual void OnStateEvicted() {}
  virtual void OnStateRestored() {}
};

struct EngineOptions {
  int32_t max_batch_tokens = 512;   // token budget per step (decodes + prefill chunks)
  int32_t max_running = 64;         // sequences running at once
  int32_t max_queue = 256;          // waiting requests before RESOURCE_EXHAUSTED
  // Non-final prompt chunks end at absolute multiples of this (SchedulerOptions). Both backends
  // need a multiple of kPrefillAlignment for tokens that do not depend on load; engine tests
  // over a fake backend use smaller values. max_batch_tokens must be at least
  // max_running + prefill_alignment - 1 (MinBatchTokens, engine/runtime/scheduler.h).
  int32_t prefill_alignment = kPrefillAlignment;
  int64_t max_states = 1024;        // states (sessions + running one-shots) in total
  int64_t host_state_bytes = int64_t{4} << 30;  // host tier for spilled states
  uint64_t seed = 0;                // engine generator for requests without a seed
  // Automatic prefix cache (engine/runtime/prefix_cache.h): states snapshotted after each prompt
  // and generation, in free device slots or host bytes, within this many bytes; 0 = off.
  int64_t prefix_cache_bytes = int64_t{1} << 30;
  // Spill ahead of need: after each step, while fewer device slots than this are free, one idle
  // state (a prefix-cache entry first) moves to the host tier in the background, so admissions
  // rarely spill. 0 = spill only when a slot is needed.
  int32_t spill_ahead_slots = 0;
  EngineObserver* observer = nullptr;  // not owned, may be null
};

class Engine {
 public:
  // Starts the engine thread. The backend's slots form the device tier of the state pool.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<Backend> backend,
                                                        const EngineOptions& options);
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual BackendInfo backend_info() const = 0;
  virtual int64_t state_bytes_per_sequence() const = 0;  // the constant part (slot bytes)

  // States. Creation fails with RESOURCE_EXHAUSTED at max_states or when neither tier has room.
  // A new state takes a device slot only when first used (room is checked then: a request that
  // can get no slot while nothing else runs finishes with kError RESOURCE_EXHAUSTED).
  virtual absl::StatusOr<StateId> CreateState() = 0;
  // A copy of `source` (which must not be busy): constant-size copy of its memory.
  virtual absl::StatusOr<StateId> ForkState(StateId source) = 0;
  // Frees at once (FAILED_PRECONDITION while busy, NOT_FOUND if unknown).
  virtual absl::Status FreeState(StateId id) = 0;
  virtual absl::StatusOr<StateInfo> GetStateInfo(StateId id) const = 0;
  // A copy of a state's content (FAILED_PRECONDITION while busy, NOT_FOUND if unknown). The
  // state stays as it is.
  virtual absl::StatusOr<ExportedState> ExportState(StateId id) = 0;
  // A new state holding `state`: RESOURCE_EXHAUSTED like CreateState (it takes a device slot at
  // once, spilling another state if needed), INVALID_ARGUMENT for bytes that are corrupt or were
  // saved by another model, or pending tokens out of range.
  virtual absl::StatusOr<StateId> ImportState(const ExportedState& state) = 0;

  // Queues a request; results go to `sink`. A request on an empty state (a one-shot, or a new
  // state's first request) whose tokens extend a prefix-cache entry starts from a copy of that
  // entry and prefills only the rest (Usage::cached_tokens). ABORTED if its state is busy, NOT_FOUND for an
  // unknown state, RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after Shutdown,
  // INVALID_ARGUMENT for empty input or token ids out of range.
  virtual absl::StatusOr<RequestId> Submit(EngineRequest request,
                                           std::shared_ptr<TokenSink> sink) = 0;
  // Stops a request at the next step (OnFinish with kCancelled); its state keeps what was
  // generated. Unknown or finished ids are ignored.
  // (A cancelled request's state holds its whole input plus every token generated so far, which
  // StateInfo::last_turn_tokens lists; a request that fails with kError leaves out the part of
  // its input that was not consumed yet.)
  virtual void Cancel(RequestId id) = 0;

  virtual EngineStats Stats() const = 0;
  // Stops accepting requests, cancels running ones, joins the engine thread.
  virtual void Shutdown() = 0;
};

}  // namespace lizard
