// Session blobs and durable sessions.
//
// A session blob is a session's whole content (see v1::SessionRecord: state bytes, pending
// tokens, last turn, TTL, model fingerprint) behind a 20-byte header, all little-endian:
//   "LZSB", u32 version, u32 crc32 of the record, u64 record length, then the record (protobuf).
// ExportSession / ImportSession move blobs between replicas; --state-dir keeps one file per
// session, written crash-safely (temporary file, fsync, rename, fsync of the directory).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model/model_config.h"
#include "lizard/v1/lizard.pb.h"

namespace lizard::server {

class SessionTable;

// Names what a state must agree on to be loaded by this model (name and shapes; the state's own
// bytes carry the exact layout, which the backend checks too).
std::string ModelFingerprint(const ModelConfig& config);

std::string EncodeSessionBlob(const v1::SessionRecord& record);
// INVALID_ARGUMENT for anything truncated or corrupt (magic, version, length, checksum,
// undecodable record); never reads outside `bytes`.
absl::StatusOr<v1::SessionRecord> DecodeSessionBlob(std::string_view bytes);

struct SessionStoreOptions {
  std::string dir;                 // --state-dir
  absl::Duration save_interval;    // --state-save-interval: changed sessions written this often
  bool save_after_turn = false;    // --state-save-after-turn: written as soon as a turn ends
};

// Keeps the sessions of `table` in a directory: Load at start, a thread that writes changed
// sessions (every save_interval, or after each turn) and removes the files of sessions that are
// gone, and SaveAll on drain.
class SessionStore {
 public:
  // Creates the directory if needed; does not start saving yet.
  static absl::StatusOr<std::unique_ptr<SessionStore>> Open(const SessionStoreOptions& options,
                                                            SessionTable* table);
  ~SessionStore();  // stops the thread (without a last save: see SaveAll)

  // Imports every <id>.session file. A file that cannot be imported is logged with its reason
  // and renamed to <id>.session.corrupt; the rest still load. Returns how many loaded.
  int64_t Load();
  // Starts the saving thread.
  void Start();
  // Writes every session that changed since it was last written (all idle ones, e.g. after
  // the engine stopped on drain) and removes the files of sessions that are gone.
  absl::Status SaveAll();

 private:
  SessionStore(const SessionStoreOptions& options, SessionTable* table)
      : options_(options), table_(table) {}
  absl::Status WriteFile(const std::string& id, std::string_view blob);
  void Loop();

  const SessionStoreOptions options_;
  SessionTable* const table_;
  std::mutex save_mu_;  // one SaveAll at a time
  absl::flat_hash_map<std::string, uint64_t> saved_versions_;  // guarded by save_mu_
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

// Writes `bytes` to `path` crash-safely: a temporary file beside it, fsync, rename over `path`,
// fsync of the directory. After a crash `path` holds either the old or the new bytes.
absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

}  // namespace lizard::server
