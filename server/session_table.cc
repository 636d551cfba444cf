#include "server/session_table.h"

#include <sys/random.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/session_store.h"

namespace lizard::server {

std::string NewSessionId() {
  // Whoever knows an id can use the session, so ids come from the kernel's CSPRNG.
  uint64_t words[2];
  if (getrandom(words, sizeof(words), 0) != static_cast<ssize_t>(sizeof(words))) {
    std::abort();  // getrandom() does not return short for 16 bytes; only a missing syscall fails
  }
  return absl::StrFormat("%016x%016x", words[0], words[1]);
}

SessionTable::SessionTable(Engine* engine, int64_t max_sessions, absl::Duration default_ttl)
    : engine_(engine),
      max_sessions_(max_sessions),
      default_ttl_(default_ttl),
      model_fingerprint_(ModelFingerprint(engine->config())) {
  reaper_ = std::thread([this] { ReapLoop(); });
}

SessionTable::~SessionTable() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  reaper_.join();
}

SessionSnapshot SessionTable::SnapshotLocked(const std::string& id, const Entry& entry) {
  SessionSnapshot s;
  s.id = id;
  s.state = entry.state;
  s.created_at = entry.created_at;
  s.last_used_at = entry.last_used_at;
  s.expires_at = entry.last_used_at + entry.ttl;
  absl::StatusOr<StateInfo> info = engine_->GetStateInfo(entry.state);
  if (info.ok()) s.info = *info;
  return s;
}

absl::StatusOr<SessionSnapshot> SessionTable::InsertLocked(StateId state, absl::Duration ttl,
                                                           bool busy, std::string id,
                                                           absl::Time created_at) {
  Entry entry;
  entry.state = state;
  entry.created_at = created_at;
  entry.last_used_at = absl::Now();
  entry.ttl = ttl;
  entry.busy = busy;
  entry.version = next_version_++;
  SessionSnapshot snapshot = SnapshotLocked(id, entry);
  sessions_.emplace(std::move(id), entry);
  return snapshot;
}

absl::Status SessionTable::CheckRoomLocked() {
  if (static_cast<int64_t>(sessions_.size()) < max_sessions_) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("session limit reached (--max-sessions=", max_sessions_, ")"));
}

absl::StatusOr<SessionSnapshot> SessionTable::Create(std::optional<absl::Duration> ttl,
                                                     bool busy) {
  absl::MutexLock lock(&mu_);
  if (absl::Status room = CheckRoomLocked(); !room.ok()) return room;
  absl::StatusOr<StateId> state = engine_->CreateState();
  if (!state.ok()) return state.status();
  return InsertLocked(*state, ttl.value_or(default_ttl_), busy);
}

absl::StatusOr<SessionSnapshot> SessionTable::Fork(const std::string& id) {
  // The source stays acquired while its state is copied: the engine runs ForkState under its
  // backend lock, which it also holds while calling Release, so mu_ must not be held here.
  absl::StatusOr<StateId> source = Acquire(id);
  if (!source.ok()) return source.status();
  absl::StatusOr<StateId> state = engine_->ForkState(*source);
  Release(id);
  if (!state.ok()) return state.status();

  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  const absl::Duration ttl = it != sessions_.end() ? it->second.ttl : default_ttl_;
  if (absl::Status room = CheckRoomLocked(); !room.ok()) {
    engine_->FreeState(*state).IgnoreError();
    return room;
  }
  return InsertLocked(*state, ttl, /*busy=*/false);
}

void SessionTable::AwaitSettledLocked(const std::string& id) {
  auto settled = [this, &id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = sessions_.find(id);
    return it == sessions_.end() || !(it->second.busy && it->second.cancelling);
  };
  mu_.AwaitWithTimeout(absl::Condition(&settled), kSettleTimeout);
}

void SessionTable::MarkCancelling(const std::string& id, RequestId request) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end() && it->second.busy && it->second.running == request) {
    it->second.cancelling = true;
  }
}

absl::StatusOr<SessionSnapshot> SessionTable::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  AwaitSettledLocked(id);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("no session ", id));
  return SnapshotLocked(id, it->second);
}

absl::Status SessionTable::Delete(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("no session ", id));
  Entry entry = it->second;
  sessions_.erase(it);
  if (!entry.busy) return engine_->FreeState(entry.state);
  // The running request ends within one step; Release frees the state then.
  deleted_busy_[id] = entry.state;
  if (entry.running != 0) engine_->Cancel(entry.running);
  return absl::OkStatus();
}

absl::StatusOr<StateId> SessionTable::Acquire(const std::string& id) {
  absl::MutexLock lock(&mu_);
  AwaitSettledLocked(id);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("no session ", id));
  if (it->second.busy) return absl::AbortedError("session busy");
  it->second.busy = true;
  it->second.cancelling = false;
  it->second.running = 0;
  it->second.last_used_at = absl::Now();
  return it->second.state;
}

void SessionTable::SetRunning(const std::string& id, RequestId request) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end() && it->second.busy) {
    it->second.running = request;
    return;
  }
  // Deleted between Acquire and Submit: cancel now.
  if (deleted_busy_.contains(id)) engine_->Cancel(request);
}

void SessionTable::Release(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it != sessions_.end()) {
    it->second.busy = false;
    it->second.cancelling = false;
    it->second.running = 0;
    it->second.last_used_at = absl::Now();
    it->second.version = next_version_++;
    return;
  }
  auto deleted = deleted_busy_.find(id);
  if (deleted == deleted_busy_.end()) return;
  absl::Status status = engine_->FreeState(deleted->second);
  if (!status.ok()) LogError(absl::StrCat("freeing deleted session ", id, ": ", status.ToString()));
  deleted_busy_.erase(deleted);
}

int64_t SessionTable::size() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sessions_.size());
}

absl::StatusOr<std::string> SessionTable::Export(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("no session ", id));
  if (it->second.busy) return absl::FailedPreconditionError("session busy");
  absl::StatusOr<ExportedState> state = engine_->ExportState(it->second.state);
  if (!state.ok()) return state.status();
  v1::SessionRecord record;
  record.set_session_id(id);
  record.set_model_fingerprint(model_fingerprint_);
  record.set_ttl_ms(absl::ToInt64Milliseconds(it->second.ttl));
  record.set_created_at_unix_ms(absl::ToUnixMillis(it->second.created_at));
  record.set_state(std::move(state->serialized));
  record.mutable_pending_token_ids()->Add(state->pending.begin(), state->pending.end());
  record.mutable_last_turn_token_ids()->Add(state->last_turn_tokens.begin(),
                                            state->last_turn_tokens.end());
  record.set_last_turn_input_tokens(state->last_turn_input_tokens);
  return EncodeSessionBlob(record);
}

absl::StatusOr<SessionSnapshot> SessionTable::Import(std::string_view blob) {
  absl::StatusOr<v1::SessionRecord> record = DecodeSessionBlob(blob);
  if (!record.ok()) return record.status();
  if (record->model_fingerprint() != model_fingerprint_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the session was saved by another model (", record->model_fingerprint(),
                     "); this server serves ", model_fingerprint_));
  }
  // The id names a file in --state-dir: only plain characters.
  const std::string& id = record->session_id();
  if (id.empty() || id.size() > 128 || !std::all_of(id.begin(), id.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '-' || c == '_';
      })) {
    return absl::InvalidArgumentError("session blob with an invalid session id");
  }
  if (record->ttl_ms() <= 0) return absl::InvalidArgumentError("session blob without a TTL");
  ExportedState state;
  state.serialized = record->state();
  state.pending.assign(record->pending_token_ids().begin(), record->pending_token_ids().end());
  state.last_turn_tokens.assign(record->last_turn_token_ids().begin(),
                                record->last_turn_token_ids().end());
  state.last_turn_input_tokens = record->last_turn_input_tokens();

  absl::MutexLock lock(&mu_);
  if (sessions_.contains(record->session_id()) ||
      deleted_busy_.contains(record->session_id())) {
    return absl::AlreadyExistsError(
        absl::StrCat("session ", record->session_id(), " already exists here"));
  }
  if (absl::Status room = CheckRoomLocked(); !room.ok()) return room;
  absl::StatusOr<StateId> imported = engine_->ImportState(state);
  if (!imported.ok()) return imported.status();
  return InsertLocked(*imported, absl::Milliseconds(record->ttl_ms()), /*busy=*/false,
                      record->session_id(), absl::FromUnixMillis(record->created_at_unix_ms()));
}

std::vector<std::pair<std::string, uint64_t>> SessionTable::Versions() {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::string, uint64_t>> out;
  out.reserve(sessions_.size());
  for (const auto& [id, entry] : sessions_) out.emplace_back(id, entry.version);
  return out;
}

void SessionTable::ReapLoop() {
  const absl::Duration period = std::clamp(default_ttl_ / 4, absl::Milliseconds(50),
                                           absl::Seconds(1));
  absl::MutexLock lock(&mu_);
  while (true) {
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), period)) return;
    const absl::Time now = absl::Now();
    std::vector<std::string> expired;
    for (const auto& [id, entry] : sessions_) {
      if (!entry.busy && now >= entry.last_used_at + entry.ttl) expired.push_back(id);
    }
    for (const std::string& id : expired) {
      absl::Status status = engine_->FreeState(sessions_[id].state);
      if (!status.ok()) LogError(absl::StrCat("freeing expired session ", id, ": ",
                                              status.ToString()));
      sessions_.erase(id);
    }
  }
}

}  // namespace lizard::server
