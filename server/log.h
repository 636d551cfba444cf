// Minimal timestamped logging to stderr for lizard-server (this Abseil has no absl/log).
#pragma once

#include "absl/strings/string_view.h"

namespace lizard::server {

// Writes "<UTC time> <level> <message>\n" to stderr as one write (safe from many threads).
void LogInfo(absl::string_view message);
void LogError(absl::string_view message);

}  // namespace lizard::server
