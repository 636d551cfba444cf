// Sessions: client-visible ids mapped to engine states, with TTL expiry and a busy flag.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"

namespace lizard::server {

// A random 128-bit id as 32 lowercase hex digits.
std::string NewSessionId();

// What a client sees of a session (times plus the engine's StateInfo).
struct SessionSnapshot {
  std::string id;
  StateId state = 0;
  absl::Time created_at, last_used_at, expires_at;
  StateInfo info;
};

// Thread-safe. A session is "busy" from Acquire until Release: that is one Generate (or the
// prefill of a CreateSession prefix) at a time. A reaper thread frees sessions idle past their
// TTL. Deleting a busy session cancels its request; its state is freed when that ends.
//
// Why a busy flag here besides the engine's (StateInfo::busy, which GetSession reports with the
// state's numbers): this one is a lease on the session that also covers what the engine cannot
// see, the time before Engine::Submit (the input is encoded with BOS only if the state is empty,
// so nothing may change the state meanwhile, and a Delete then must leave the freeing to
// Release). Whether a request may start on a session is decided here only; the engine's flag
// says whether its state has a request attached.
class SessionTable {
 public:
  SessionTable(Engine* engine, int64_t max_sessions, absl::Duration default_ttl);
  ~SessionTable();  // stops the reaper; does not free states (the engine owns them)

  // A new session on a fresh state, `ttl` unset = the default. When `busy`, it starts acquired
  // (for prefilling a prefix); RESOURCE_EXHAUSTED at max_sessions or when the engine is full.
  absl::StatusOr<SessionSnapshot> Create(std::optional<absl::Duration> ttl, bool busy);
  // A new session whose state is a copy of `id`'s; ABORTED while `id` is busy.
  absl::StatusOr<SessionSnapshot> Fork(const std::string& id);
  absl::StatusOr<SessionSnapshot> Get(const std::string& id);
  absl::Status Delete(const std::string& id);

  // Marks the session busy for one request (NOT_FOUND, or ABORTED "session busy").
  absl::StatusOr<StateId> Acquire(const std::string& id);
  // Records the engine request running on an acquired session (so Delete can cancel it).
  void SetRunning(const std::string& id, RequestId request);
  // Ends the request: idle again, last use now; frees the state if deleted meanwhile.
  void Release(const std::string& id);
  // The request on an acquired session was cancelled (client cancel, deadline, broken stream).
  // The client's call ends at once but the engine ends the request only at its next step; until
  // then Get and Acquire wait (up to kSettleTimeout), so the client sees the settled session
  // (its last turn, its token count) rather than a busy one.
  // `request` guards against marking a later request that re-acquired the session meanwhile.
  void MarkCancelling(const std::string& id, RequestId request);
  static constexpr absl::Duration kSettleTimeout = absl::Seconds(5);

  int64_t size();

  // Export and import (server/session_store.h). Export: the session as a blob, FAILED_PRECONDITION
  // while busy; it does not count as a use. Import: a new session from a blob, under the blob's
  // id (ALREADY_EXISTS if taken), its TTL counted from now; INVALID_ARGUMENT for a corrupt blob,
  // FAILED_PRECONDITION for one of another model.
  absl::StatusOr<std::string> Export(const std::string& id);
  absl::StatusOr<SessionSnapshot> Import(std::string_view blob);
  // Every session's id and version; the version changes whenever the session may have changed
  // (created, imported, a request on it ended).
  std::vector<std::pair<std::string, uint64_t>> Versions();

 private:
  struct Entry {
    StateId state = 0;
    absl::Time created_at, last_used_at;
    absl::Duration ttl;
    bool busy = false;
    RequestId running = 0;  // 0: not submitted yet
    bool cancelling = false;  // see MarkCancelling
    uint64_t version = 0;     // see Versions
  };
  // Waits (up to kSettleTimeout) while `id` is busy with a cancelled request.
  void AwaitSettledLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionSnapshot SnapshotLocked(const std::string& id, const Entry& entry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<SessionSnapshot> InsertLocked(StateId state, absl::Duration ttl, bool busy,
                                               std::string id = NewSessionId(),
                                               absl::Time created_at = absl::Now())
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReapLoop();

  Engine* const engine_;
  const int64_t max_sessions_;
  const absl::Duration default_ttl_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> sessions_ ABSL_GUARDED_BY(mu_);
  // Deleted while busy: session id -> state, freed by Release.
  absl::flat_hash_map<std::string, StateId> deleted_busy_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_version_ ABSL_GUARDED_BY(mu_) = 1;
  const std::string model_fingerprint_;  // of blobs this table exports and accepts
  std::thread reaper_;
};

}  // namespace lizard::server
