#include "server/log.h"

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lizard::server {
namespace {

LogFormat g_format = LogFormat::kText;

void Write(bool error, absl::string_view message, const nlohmann::json* fields) {
  const std::string time =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::string line;
  if (g_format == LogFormat::kJson) {
    nlohmann::json object = {{"time", time},
                             {"level", error ? "error" : "info"},
                             {"message", std::string(message)}};
    if (fields != nullptr) object.update(*fields);
    // Client-supplied text may hold malformed UTF-8: replaced, never an exception.
    line = object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else {
    line = absl::StrCat(time, error ? " E " : " I ", message, "\n");
  }
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("--log-format=", name, ": text or json"));
}

void SetLogFormat(LogFormat format) { g_format = format; }

void LogInfo(absl::string_view message) { Write(false, message, nullptr); }
void LogError(absl::string_view message) { Write(true, message, nullptr); }
void LogEvent(bool error, absl::string_view message, const nlohmann::json& fields) {
  Write(error, message, &fields);
}

}  // namespace lizard::server
