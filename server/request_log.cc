#include "server/request_log.h"

#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/log.h"
#include "server/session_table.h"

namespace lizard::server {
namespace {

// Messages may quote what a client sent: bounded, and escaped in text lines.
constexpr size_t kMaxMessageBytes = 512;

bool IsServerFault(absl::StatusCode code) {
  return code == absl::StatusCode::kInternal || code == absl::StatusCode::kUnknown ||
         code == absl::StatusCode::kDataLoss;
}

double Milliseconds(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

// Unguessable like a session id (the same generator), which a request id need not be, but
// unique without coordination.
std::string NewRequestId() { return NewSessionId(); }

void LogRequest(const RequestRecord& record) {
  const absl::Duration duration = absl::Now() - record.start;
  const std::string code = absl::StatusCodeToString(record.status.code());
  const std::string message(record.status.message().substr(0, kMaxMessageBytes));

  nlohmann::json fields = {{"request_id", record.id},
                           {"rpc", record.rpc},
                           {"status", code},
                           {"prompt_tokens", record.prompt_tokens},
                           {"generated_tokens", record.generated_tokens},
                           {"duration_ms", Milliseconds(duration)}};
  std::string text = absl::StrFormat(
      "request %s %s id=%s prompt_tokens=%d generated_tokens=%d", record.rpc, code, record.id,
      record.prompt_tokens, record.generated_tokens);
  if (record.time_to_first_token.has_value()) {
    fields["ttft_ms"] = Milliseconds(*record.time_to_first_token);
    absl::StrAppendFormat(&text, " ttft_ms=%.1f", Milliseconds(*record.time_to_first_token));
  }
  absl::StrAppendFormat(&text, " duration_ms=%.1f", Milliseconds(duration));
  for (const auto& [name, value] : {std::pair{"session_id", &record.session_id},
                                    std::pair{"client_request_id", &record.client_request_id},
                                    std::pair{"error", &message}}) {
    if (value->empty()) continue;
    fields[name] = *value;
    absl::StrAppend(&text, " ", name, "=\"", absl::CEscape(*value), "\"");
  }
  LogEvent(IsServerFault(record.status.code()), text, fields);
}

}  // namespace lizard::server
