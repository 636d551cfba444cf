#include "server/session_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <climits>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/session_table.h"
#include "zlib.h"

namespace lizard::server {
namespace {

// The header's integers are written in memory order: this keeps them little-endian.
static_assert(std::endian::native == std::endian::little);

constexpr char kMagic[4] = {'L', 'Z', 'S', 'B'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 20;  // magic, u32 version, u32 crc32, u64 record length

uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

absl::Status Corrupt(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("session blob is corrupt or truncated: ", why));
}

constexpr std::string_view kSuffix = ".session";

absl::Status Errno(const char* what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

}  // namespace

std::string ModelFingerprint(const ModelConfig& c) {
  std::string layers;
  for (LayerType t : c.layer_types) layers += t == LayerType::kLizard ? 'L' : 'S';
  return absl::StrCat(c.name, " vocab=", c.vocab_size, " hidden=", c.hidden_size, " heads=",
                      c.num_heads, "/", c.num_kv_heads, "x", c.head_dim, " feature=", c.feature_dim,
                      " window=", c.window_size, " meta=", c.num_meta_tokens, " layers=", layers);
}

std::string EncodeSessionBlob(const v1::SessionRecord& record) {
  const std::string body = record.SerializeAsString();
  std::string out(kHeaderBytes, '\0');
  const uint32_t crc = Crc32(body);
  const uint64_t size = body.size();
  std::memcpy(out.data(), kMagic, 4);
  std::memcpy(out.data() + 4, &kVersion, 4);
  std::memcpy(out.data() + 8, &crc, 4);
  std::memcpy(out.data() + 12, &size, 8);
  out += body;
  return out;
}

absl::StatusOr<v1::SessionRecord> DecodeSessionBlob(std::string_view bytes) {
  if (bytes.size() < kHeaderBytes) return Corrupt("shorter than its header");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) return Corrupt("not a session blob (magic)");
  uint32_t version, crc;
  uint64_t size;
  std::memcpy(&version, bytes.data() + 4, 4);
  std::memcpy(&crc, bytes.data() + 8, 4);
  std::memcpy(&size, bytes.data() + 12, 8);
  if (version != kVersion) return Corrupt(absl::StrCat("unknown version ", version));
  const std::string_view body = bytes.substr(kHeaderBytes);
  if (size != body.size()) {
    return Corrupt(absl::StrCat("record length ", size, ", ", body.size(), " bytes follow"));
  }
  if (Crc32(body) != crc) return Corrupt("checksum mismatch");
  v1::SessionRecord record;
  // Protobuf messages are under 2 GiB.
  if (body.size() > static_cast<size_t>(INT_MAX) ||
      !record.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    return Corrupt("undecodable record");
  }
  return record;
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  const std::string temp = path + ".tmp";
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", temp);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status s = Errno("cannot write", temp);
      close(fd);
      return s;
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    absl::Status s = Errno("cannot fsync", temp);
    close(fd);
    return s;
  }
  if (close(fd) != 0) return Errno("cannot close", temp);
  if (rename(temp.c_str(), path.c_str()) != 0) return Errno("cannot rename", temp);
  // The rename itself is durable only once the directory is synced.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return Errno("cannot open", dir);
  const int synced = fsync(dir_fd);
  close(dir_fd);
  if (synced != 0) return Errno("cannot fsync", dir);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Open(
    const SessionStoreOptions& options, SessionTable* table) {
  std::error_code error;
  std::filesystem::create_directories(options.dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir ", options.dir, ": ", error.message()));
  }
  return std::unique_ptr<SessionStore>(new SessionStore(options, table));
}

SessionStore::~SessionStore() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t SessionStore::Load() {
  std::lock_guard save_lock(save_mu_);
  const absl::Time start = absl::Now();
  int64_t loaded = 0;
  for (const auto& file : std::filesystem::directory_iterator(options_.dir)) {
    const std::string path = file.path().string();
    if (file.path().extension() != kSuffix) continue;
    std::ifstream in(path, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    const absl::Status status =
        in ? table_->Import(bytes.str()).status() : Errno("cannot read", path);
    if (!status.ok()) {
      LogError(absl::StrCat("state-dir: refusing ", path, ": ", status.ToString(),
                            " (renamed to *.corrupt; the other sessions still load)"));
      std::error_code error;
      std::filesystem::rename(path, path + ".corrupt", error);
      continue;
    }
    ++loaded;
  }
  // What was just loaded is on disk already.
  for (auto& [id, version] : table_->Versions()) saved_versions_[id] = version;
  LogInfo(absl::StrCat("state-dir: loaded ", loaded, " sessions from ", options_.dir, " in ",
                       absl::FormatDuration(absl::Now() - start)));
  return loaded;
}

void SessionStore::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void SessionStore::Loop() {
  // After each turn: poll often (a turn ends on the engine thread, which must not write files).
  const absl::Duration period =
      options_.save_after_turn ? absl::Milliseconds(50) : options_.save_interval;
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, absl::ToChronoMilliseconds(period), [&] { return stopping_; })) {
    lock.unlock();
    if (absl::Status s = SaveAll(); !s.ok()) LogError(absl::StrCat("state-dir: ", s.ToString()));
    lock.lock();
  }
}

absl::Status SessionStore::SaveAll() {
  std::lock_guard save_lock(save_mu_);
  absl::Status first_error;
  absl::flat_hash_map<std::string, uint64_t> live;
  for (auto& [id, version] : table_->Versions()) {
    live[id] = version;
    auto saved = saved_versions_.find(id);
    if (saved != saved_versions_.end() && saved->second == version) continue;
    // A busy session is written once its request ends.
    absl::StatusOr<std::string> blob = table_->Export(id);
    absl::Status status = blob.ok() ? WriteFile(id, *blob) : blob.status();
    if (status.ok()) {
      saved_versions_[id] = version;
    } else if (!absl::IsFailedPrecondition(status) && !absl::IsNotFound(status)) {
      first_error.Update(status);
    }
  }
  // Sessions deleted or expired: their files go too.
  for (auto it = saved_versions_.begin(); it != saved_versions_.end();) {
    if (live.contains(it->first)) {
      ++it;
      continue;
    }
    std::error_code error;
    std::filesystem::remove(std::filesystem::path(options_.dir) / (it->first + std::string(kSuffix)),
                            error);
    saved_versions_.erase(it++);
  }
  return first_error;
}

absl::Status SessionStore::WriteFile(const std::string& id, std::string_view blob) {
  return WriteFileAtomically(
      (std::filesystem::path(options_.dir) / (id + std::string(kSuffix))).string(), blob);
}

}  // namespace lizard::server
