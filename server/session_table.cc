#include "server/session_table.h"

#include <sys/random.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/log.h"

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
    : engine_(engine), max_sessions_(max_sessions), default_ttl_(default_ttl) {
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
                                                           bool busy) {
  Entry entry;
  entry.state = state;
  entry.created_at = entry.last_used_at = absl::Now();
  entry.ttl = ttl;
  entry.busy = busy;
  std::string id = NewSessionId();
  SessionSnapshot snapshot = SnapshotLocked(id, entry);
  sessions_.emplace(std::move(id), entry);
  return snapshot;
}

absl::StatusOr<SessionSnapshot> SessionTable::Create(std::optional<absl::Duration> ttl,
                                                     bool busy) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(sessions_.size()) >= max_sessions_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session limit reached (--max-sessions=", max_sessions_, ")"));
  }
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
  if (static_cast<int64_t>(sessions_.size()) >= max_sessions_) {
    engine_->FreeState(*state).IgnoreError();
    return absl::ResourceExhaustedError(
        absl::StrCat("session limit reached (--max-sessions=", max_sessions_, ")"));
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
