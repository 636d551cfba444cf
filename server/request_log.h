// One log line per finished request, for the gRPC service and the HTTP API alike (docs/server.md,
// "Logs"): what was asked, how much, how fast, and how it ended.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace lizard::server {

struct RequestRecord {
  std::string id;   // the server's id of the request (an HTTP completion's response id)
  std::string rpc;  // gRPC method ("Generate") or HTTP path ("/v1/chat/completions")
  absl::Status status;
  absl::Time start;                // when the request arrived
  std::string session_id;          // as the client sent it; empty: none
  std::string client_request_id;   // GenerateRequest.request_id; empty: none
  int64_t prompt_tokens = 0;       // prefilled for this request
  int64_t generated_tokens = 0;
  std::optional<absl::Duration> time_to_first_token;  // unset: no token was generated
};

// A fresh id for a request (random hex).
std::string NewRequestId();

// Logs `record` as one line (duration: until now), an error line for server faults (INTERNAL,
// UNKNOWN, DATA_LOSS) and an info line otherwise. A non-OK status is logged with its message
// (field "error").
// Text: "request RPC CODE id=... prompt_tokens=... generated_tokens=... ttft_ms=...
// duration_ms=... [session="..."] [client_request_id="..."] [error="..."]"; JSON: the same
// fields in the line's object.
void LogRequest(const RequestRecord& record);

}  // namespace lizard::server
