// The OpenAI-compatible HTTP API (docs/server.md, "OpenAI-compatible HTTP API"): completions
// and chat completions (JSON or server-sent events), models, sessions, health and readiness,
// on the same engine, sessions and validation as the gRPC service.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/auth.h"
#include "server/chat_template.h"
#include "server/http_endpoint.h"
#include "server/lizard_service.h"
#include "server/session_table.h"
#include "tokenizer/tokenizer.h"

namespace lizard::server {

struct OpenAiConfig {
  std::string model_id;  // the served model's id (/v1/models; a request's "model" must match)
  RequestLimits limits;  // the gRPC service's (chat input is checked against them too)
  // A completion stream is cut once this many bytes of events wait for a client that does not
  // read (the engine never waits for a client).
  int64_t stream_buffer_bytes = int64_t{8} << 20;
  absl::Duration max_session_ttl = absl::Hours(24);
  std::optional<ApiKeys> api_keys;           // set: every route but /health, /ready needs one
  std::optional<ChatTemplate> chat_template;  // unset: chat completions are refused (400)
  std::string no_chat_template_reason;        // why it is unset, for that message
};

class OpenAiApi {
 public:
  // Nothing is owned; all must outlive the endpoint that serves Routes().
  OpenAiApi(OpenAiConfig config, LizardService* service, const Tokenizer* tokenizer,
            SessionTable* sessions);

  std::vector<HttpEndpoint::Route> Routes();
  // HttpEndpointOptions::error_body: the endpoint's own errors (404, 405, 413, ...) in
  // OpenAI's error shape.
  static void ErrorBody(httplib::Response& res, const std::string& message);

 private:
  class Call;
  struct Parsed;

  void Completions(const httplib::Request& req, httplib::Response& res, bool chat);
  void CreateSession(const httplib::Request& req, httplib::Response& res);
  void ExportSession(const httplib::Request& req, httplib::Response& res);
  void ImportSession(const httplib::Request& req, httplib::Response& res);
  void Models(const httplib::Request& req, httplib::Response& res);
  void Ready(httplib::Response& res);
  // UNAUTHENTICATED unless the request carries one of the API keys (or none are configured).
  absl::Status Authenticate(const httplib::Request& req) const;
  // Answers with OpenAI's error object and the HTTP status of `status`, and records it.
  void Fail(std::string_view endpoint, const absl::Status& status, httplib::Response& res,
            std::string_view param = "");

  const OpenAiConfig config_;
  LizardService* const service_;
  const Tokenizer* const tokenizer_;
  SessionTable* const sessions_;
  const int64_t created_;  // unix seconds: the "created" of /v1/models
};

}  // namespace lizard::server
