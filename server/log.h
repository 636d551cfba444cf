// Minimal timestamped logging to stderr for lizard-server (this Abseil has no absl/log).
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace lizard::server {

// kText: "<UTC time> <level> <message>"; kJson: one JSON object a line (JSON lines) with "time",
// "level" ("info"/"error") and "message", plus the line's fields.
enum class LogFormat { kText, kJson };

// "text" or "json" (--log-format).
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);
// For the whole process; set it before the first line is logged (not thread-safe).
void SetLogFormat(LogFormat format);

// Writes one line to stderr as one write (safe from many threads).
void LogInfo(absl::string_view message);
void LogError(absl::string_view message);
// A line with structured fields: in text form the message is written as is (it should say what
// the fields say), in JSON the fields are added to the object.
void LogEvent(bool error, absl::string_view message, const nlohmann::json& fields);

}  // namespace lizard::server
