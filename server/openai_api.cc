#include "server/openai_api.h"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"

namespace lizard::server {
namespace {

using json = nlohmann::json;

constexpr char kCompletions[] = "/v1/completions";
constexpr char kChatCompletions[] = "/v1/chat/completions";
constexpr char kSessions[] = "/v1/sessions";
constexpr char kModels[] = "/v1/models";
constexpr char kSessionExport[] = "/v1/sessions/export";  // ?session_id=ID
constexpr char kSessionImport[] = "/v1/sessions/import";

// What an error carries beyond its absl::Status: the request field it is about and OpenAI's
// `code` (absl payloads, so that validation helpers can return plain statuses).
constexpr char kParamPayload[] = "lizard/openai-param";
constexpr char kCodePayload[] = "lizard/openai-code";

absl::Status WithParam(absl::Status status, absl::string_view param) {
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

absl::Status ParamError(absl::string_view param, absl::string_view message) {
  return WithParam(absl::InvalidArgumentError(absl::StrCat(param, ": ", message)), param);
}

std::string Dump(const json& value) {
  // Token strings may be partial UTF-8 characters: replaced, never an exception.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kAlreadyExists: return 409;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kUnimplemented: return 501;
    default: return 500;
  }
}

const char* ErrorType(int http_status) {
  switch (http_status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 409: return "conflict_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return http_status < 500 ? "invalid_request_error" : "server_error";
  }
}

// OpenAI's error object for `status`.
json ErrorJson(const absl::Status& status) {
  const auto param = status.GetPayload(kParamPayload);
  const auto code = status.GetPayload(kCodePayload);
  return {{"error",
           {{"message", std::string(status.message())},
            {"type", ErrorType(HttpStatus(status.code()))},
            {"param", param ? json(std::string(*param)) : json(nullptr)},
            {"code", code ? std::string(*code)
                          : absl::AsciiStrToLower(absl::StatusCodeToString(status.code()))}}}};
}

// Request fields; absent or null means "not given".
const json* Field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::Status ReadNumber(const json& body, const char* name, std::optional<double>& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_number()) return ParamError(name, "must be a number");
  out = value->get<double>();
  return absl::OkStatus();
}

absl::Status ReadInteger(const json& body, const char* name, std::optional<int64_t>& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (value->is_number_unsigned()) {
    out = static_cast<int64_t>(std::min<uint64_t>(value->get<uint64_t>(),
                                                  std::numeric_limits<int64_t>::max()));
  } else if (value->is_number_integer()) {
    out = value->get<int64_t>();
  } else {
    return ParamError(name, "must be an integer");
  }
  return absl::OkStatus();
}

absl::Status ReadBool(const json& body, const char* name, bool& out) {
  const json* value = Field(body, name);
  if (value == nullptr) return absl::OkStatus();
  if (!value->is_boolean()) return ParamError(name, "must be true or false");
  out = value->get<bool>();
  return absl::OkStatus();
}

uint32_t ClampToUint32(int64_t value) {
  return static_cast<uint32_t>(std::min<int64_t>(value, std::numeric_limits<uint32_t>::max()));
}

bool IsTokenIdArray(const json& value) {
  if (!value.is_array() || value.empty()) return false;
  for (const json& id : value) {
    if (!id.is_number_integer()) return false;
  }
  return true;
}

absl::Status SetTokenIds(const json& ids, v1::GenerateRequest& request) {
  for (const json& id : ids) {
    const int64_t value = id.is_number_unsigned()
                              ? static_cast<int64_t>(std::min<uint64_t>(id.get<uint64_t>(), INT32_MAX))
                              : id.get<int64_t>();
    if (value < INT32_MIN || value > INT32_MAX) {
      return ParamError("prompt", "a token id is outside the vocabulary");
    }
    request.mutable_token_ids()->add_ids(static_cast<int32_t>(value));
  }
  return absl::OkStatus();
}

// A completions prompt: a string or token ids, or a list holding one of them.
absl::Status ReadPrompt(const json& body, v1::GenerateRequest& request) {
  const json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return ParamError("prompt", "is required");
  if (prompt->is_array() && prompt->size() == 1 &&
      ((*prompt)[0].is_string() || (*prompt)[0].is_array())) {
    prompt = &(*prompt)[0];
  }
  if (prompt->is_string()) {
    request.set_text(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (IsTokenIdArray(*prompt)) return SetTokenIds(*prompt, request);
  if (prompt->is_array() && prompt->size() > 1 && ((*prompt)[0].is_string() ||
                                                    (*prompt)[0].is_array())) {
    return ParamError("prompt",
                      "a list of several prompts is not supported: send one request per prompt");
  }
  return ParamError("prompt", "must be a string, a list of token ids, or a list of one of them");
}

// Chat messages: role and content (a string, a list of text parts, or null).
absl::StatusOr<std::vector<ChatMessage>> ReadMessages(const json& body) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty()) {
    return ParamError("messages", "must be a non-empty list of messages");
  }
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return ParamError(where, "must be an object with a string \"role\"");
    }
    ChatMessage parsed{message["role"].get<std::string>(), ""};
    const json* content = Field(message, "content");
    if (content != nullptr && content->is_string()) {
      parsed.content = content->get<std::string>();
    } else if (content != nullptr && content->is_array()) {
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return ParamError(where + ".content", "only text parts ({\"type\": \"text\"}) are supported");
        }
        parsed.content += part["text"].get<std::string>();
      }
    } else if (content != nullptr) {
      return ParamError(where + ".content", "must be a string or a list of text parts");
    }
    out.push_back(std::move(parsed));
  }
  return out;
}

std::string FinishReasonName(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

json UsageJson(const Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens},
          {"completion_tokens", usage.generated_tokens},
          {"total_tokens", usage.prompt_tokens + usage.generated_tokens},
          {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
}

std::string Event(const json& data) { return absl::StrCat("data: ", Dump(data), "\n\n"); }

}  // namespace

// What a completions or chat request asks for, in the gRPC request's terms where it can.
struct OpenAiApi::Parsed {
  v1::GenerateRequest request;  // input (completions), sampling, stopping, logprobs, session
  std::vector<ChatMessage> messages;  // chat
  json template_kwargs = json::object();
  bool stream = false;
  bool include_usage = false;
  int64_t top_logprobs = -1;  // -1: no logprobs; else the alternatives shown per token
  bool return_token_ids = false;
};

// ---------------------------------------------------------------------------------------------
// One completion on the engine. Non-streaming: the tokens are collected and the handler waits
// for the end. Streaming: the engine thread turns each token into a server-sent event appended
// to `pending_` (never blocking), and the connection's thread writes whatever is pending. Once
// more than stream_buffer_bytes wait for a client that does not read, they are dropped, the
// generation stops and the connection is cut (no final event), as for gRPC streams.
class OpenAiApi::Call final : public LizardService::Generation {
 public:
  Call(OpenAiApi* api, bool chat, const Parsed& parsed)
      : Generation(api->service_, absl::StrCat(chat ? "chatcmpl-" : "cmpl-", NewSessionId())),
        api_(api), chat_(chat), stream_(parsed.stream),
        include_usage_(parsed.include_usage), top_logprobs_(parsed.top_logprobs),
        return_token_ids_(parsed.return_token_ids),
        session_id_(parsed.request.session_id()),
        id_(server_request_id_),
        created_(absl::ToUnixSeconds(absl::Now())) {
    service_->BeginEngineCall();
  }
  ~Call() override { service_->EndEngineCall(); }

  absl::Status Start(const v1::GenerateRequest& request, const InputBuilder& input,
                     std::shared_ptr<Call> self) {
    if (stream_ && chat_) {
      absl::MutexLock lock(&mu_);
      json chunk = ChunkBase();
      chunk["choices"] = json::array(
          {{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}},
            {"logprobs", nullptr}, {"finish_reason", nullptr}}});
      pending_ = Event(chunk);
    }
    return Submit(request, input, std::move(self));
  }

  // Non-streaming: waits for the end (cancelling the generation if the client goes away
  // meanwhile), then the response object or the error.
  absl::StatusOr<json> Wait() {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&done_), absl::Milliseconds(100))) {
      if (!client_gone_ && HttpEndpoint::ClientClosed()) {
        client_gone_ = true;
        Cancel();
      }
    }
    if (reason_ == FinishReason::kError) return status_;
    if (reason_ == FinishReason::kCancelled) return CancelledStatus();
    json choice = {{"index", 0},
                   {"logprobs", top_logprobs_ >= 0 ? logprobs_ : json(nullptr)},
                   {"finish_reason", FinishReasonName(reason_)}};
    if (chat_) {
      choice["message"] = {{"role", "assistant"}, {"content", text_}};
    } else {
      choice["text"] = text_;
    }
    if (return_token_ids_) choice["token_ids"] = token_ids_;
    json response = {{"id", id_},
                     {"object", chat_ ? "chat.completion" : "text_completion"},
                     {"created", created_},
                     {"model", api_->config_.model_id},
                     {"choices", json::array({choice})},
                     {"usage", UsageJson(usage_)}};
    if (!session_id_.empty()) response["session_id"] = session_id_;
    return response;
  }

  // Streaming: httplib's content provider, on the connection's thread. Writes what is pending
  // (waiting for it), and ends the response after the last event; false cuts the connection.
  bool Provide(httplib::DataSink& sink) {
    std::string out;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !pending_.empty() || done_ || overflowed_;
      };
      mu_.Await(absl::Condition(&ready));
      if (overflowed_) return false;
      out.swap(pending_);
      last = done_;
    }
    if (!out.empty() && !sink.write(out.data(), out.size())) {
      Cancel();  // the client is gone
      return false;
    }
    if (last) sink.done();
    return true;
  }

 protected:
  bool Deliver(int32_t token, std::string text, const TokenLogprobs* logprobs) override {
    absl::MutexLock lock(&mu_);
    if (overflowed_) return false;
    if (!stream_) {
      if (top_logprobs_ >= 0 && logprobs != nullptr) AppendLogprobs(logprobs_, *logprobs);
      text_ += text;
      token_ids_.push_back(token);
      return true;
    }
    const bool with_logprobs = top_logprobs_ >= 0 && logprobs != nullptr;
    if (text.empty() && !with_logprobs && !return_token_ids_) return true;
    json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (with_logprobs) {
      json chunk_logprobs;
      AppendLogprobs(chunk_logprobs, *logprobs);
      choice["logprobs"] = std::move(chunk_logprobs);
    }
    text_bytes_ += static_cast<int64_t>(text.size());
    if (chat_) {
      choice["delta"] = {{"content", std::move(text)}};
    } else {
      choice["text"] = std::move(text);
    }
    if (return_token_ids_) choice["token_ids"] = {token};
    json chunk = ChunkBase();
    chunk["choices"] = json::array({std::move(choice)});
    pending_ += Event(chunk);
    if (static_cast<int64_t>(pending_.size()) > api_->config_.stream_buffer_bytes) {
      // The client does not read: free what waits for it and stop generating for it.
      overflowed_ = true;
      pending_.clear();
      return false;
    }
    return true;
  }

  void End(FinishReason reason, const Usage& usage, std::string tail,
           const absl::Status& status) override {
    absl::Status outcome = status;
    {
      absl::MutexLock lock(&mu_);
      reason_ = reason;
      usage_ = usage;
      status_ = status;
      done_ = true;
      if (overflowed_) {
        outcome = absl::ResourceExhaustedError(
            "the client did not read the stream (--stream-buffer-bytes)");
      } else if (!stream_) {
        text_ += tail;
      } else if (reason == FinishReason::kError || reason == FinishReason::kCancelled) {
        if (reason == FinishReason::kCancelled) {
          outcome = absl::CancelledError("the client went away or the server is shutting down");
        }
        pending_ += Event(ErrorJson(outcome)) + "data: [DONE]\n\n";
      } else {
        json choice = {{"index", 0},
                       {"logprobs", nullptr},
                       {"finish_reason", FinishReasonName(reason)}};
        if (chat_) {
          choice["delta"] = tail.empty() ? json::object() : json{{"content", tail}};
        } else {
          choice["text"] = tail;
        }
        if (return_token_ids_) choice["token_ids"] = json::array();
        json chunk = ChunkBase();
        chunk["choices"] = json::array({std::move(choice)});
        pending_ += Event(chunk);
        if (include_usage_) {
          json usage_chunk = ChunkBase();
          usage_chunk["choices"] = json::array();
          usage_chunk["usage"] = UsageJson(usage);
          pending_ += Event(usage_chunk);
        }
        pending_ += "data: [DONE]\n\n";
      }
    }
    if (reason == FinishReason::kCancelled && !stream_) {
      absl::MutexLock lock(&mu_);
      outcome = CancelledStatus();
    }
    service_->RecordOutcome(Record(chat_ ? kChatCompletions : kCompletions, outcome));
  }

 private:
  absl::Status CancelledStatus() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return client_gone_ ? absl::CancelledError("the client went away")
                        : absl::UnavailableError("cancelled: the server is shutting down");
  }

  json ChunkBase() const {
    json chunk = {{"id", id_},
                  {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", api_->config_.model_id}};
    if (!session_id_.empty()) chunk["session_id"] = session_id_;
    return chunk;
  }

  std::string TokenText(int32_t token) const {
    if (api_->tokenizer_ == nullptr) return absl::StrCat("token_id:", token);
    absl::StatusOr<std::string> text = api_->tokenizer_->Decode({token});
    return text.ok() ? *text : absl::StrCat("token_id:", token);
  }

  static json Bytes(const std::string& text) {
    json bytes = json::array();
    for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
    return bytes;
  }

  // Adds a token's logprobs to `out` in the endpoint's format: completions
  // {tokens, token_logprobs, top_logprobs, text_offset}, chat {content: [...]}.
  void AppendLogprobs(json& out, const TokenLogprobs& logprobs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::string chosen = TokenText(logprobs.chosen.token);
    const size_t top = std::min(static_cast<size_t>(top_logprobs_), logprobs.top.size());
    if (chat_) {
      json alternatives = json::array();
      for (size_t i = 0; i < top; ++i) {
        const std::string text = TokenText(logprobs.top[i].token);
        alternatives.push_back(
            {{"token", text}, {"logprob", logprobs.top[i].logprob}, {"bytes", Bytes(text)}});
      }
      out["content"].push_back({{"token", chosen},
                                {"logprob", logprobs.chosen.logprob},
                                {"bytes", Bytes(chosen)},
                                {"top_logprobs", std::move(alternatives)}});
      return;
    }
    json alternatives = json::object();
    for (size_t i = 0; i < top; ++i) {
      alternatives[TokenText(logprobs.top[i].token)] = logprobs.top[i].logprob;
    }
    out["tokens"].push_back(chosen);
    out["token_logprobs"].push_back(logprobs.chosen.logprob);
    out["top_logprobs"].push_back(std::move(alternatives));
    out["text_offset"].push_back(stream_ ? text_bytes_ : static_cast<int64_t>(text_.size()));
  }

  OpenAiApi* const api_;
  const bool chat_, stream_, include_usage_;
  const int64_t top_logprobs_;
  const bool return_token_ids_;
  const std::string session_id_;
  const std::string id_;
  const int64_t created_;

  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;  // non-streaming: its connection closed
  FinishReason reason_ ABSL_GUARDED_BY(mu_) = FinishReason::kError;
  Usage usage_ ABSL_GUARDED_BY(mu_);
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  // Non-streaming: the whole result.
  std::string text_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> token_ids_ ABSL_GUARDED_BY(mu_);
  json logprobs_ ABSL_GUARDED_BY(mu_) = json::object();
  // Streaming: events not written yet, and the text bytes streamed so far.
  std::string pending_ ABSL_GUARDED_BY(mu_);
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;
  int64_t text_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------------------------
OpenAiApi::OpenAiApi(OpenAiConfig config, LizardService* service, const Tokenizer* tokenizer,
                     SessionTable* sessions)
    : config_(std::move(config)), service_(service), tokenizer_(tokenizer),
      sessions_(sessions), created_(absl::ToUnixSeconds(absl::Now())) {}

std::vector<HttpEndpoint::Route> OpenAiApi::Routes() {
  using Request = httplib::Request;
  using Response = httplib::Response;
  return {
      {std::string(kCompletions), nullptr,
       [this](const Request& req, Response& res) { Completions(req, res, /*chat=*/false); }},
      {std::string(kChatCompletions), nullptr,
       [this](const Request& req, Response& res) { Completions(req, res, /*chat=*/true); }},
      {std::string(kSessions), nullptr,
       [this](const Request& req, Response& res) { CreateSession(req, res); }},
      {std::string(kSessionExport),
       [this](const Request& req, Response& res) { ExportSession(req, res); }, nullptr},
      {std::string(kSessionImport), nullptr,
       [this](const Request& req, Response& res) { ImportSession(req, res); }},
      {std::string(kModels), [this](const Request& req, Response& res) { Models(req, res); },
       nullptr},
      {"/health", [](const Request&, Response& res) { res.set_content("", "text/plain"); },
       nullptr},
      {"/ready", [this](const Request&, Response& res) { Ready(res); }, nullptr},
  };
}

absl::Status OpenAiApi::Authenticate(const httplib::Request& req) const {
  if (!config_.api_keys.has_value()) return absl::OkStatus();
  absl::Status status = config_.api_keys->Check(req.get_header_value("Authorization"));
  if (!status.ok()) status.SetPayload(kCodePayload, absl::Cord("invalid_api_key"));
  return status;
}

void OpenAiApi::Fail(std::string_view endpoint, const absl::Status& status,
                     httplib::Response& res, std::string_view param) {
  service_->RecordOutcome(
      {NewRequestId(), std::string(endpoint), status, HttpEndpoint::RequestStart()});
  res.status = HttpStatus(status.code());
  if (res.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  const absl::Status with_param =
      param.empty() || status.GetPayload(kParamPayload)
          ? status
          : WithParam(status, absl::string_view(param.data(), param.size()));
  res.set_content(Dump(ErrorJson(with_param)), "application/json");
}

void OpenAiApi::ErrorBody(httplib::Response& res, const std::string& message) {
  res.set_content(Dump({{"error",
                         {{"message", message},
                          {"type", ErrorType(res.status)},
                          {"param", nullptr},
                          {"code", nullptr}}}}),
                  "application/json");
}

void OpenAiApi::Ready(httplib::Response& res) {
  const absl::Status accepting = service_->CheckAccepting();
  res.status = accepting.ok() ? 200 : 503;
  res.set_content(accepting.ok() ? "" : std::string(accepting.message()), "text/plain");
}

void OpenAiApi::Models(const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Authenticate(req); !s.ok()) return Fail(kModels, s, res);
  res.set_content(Dump({{"object", "list"},
                        {"data", json::array({{{"id", config_.model_id},
                                               {"object", "model"},
                                               {"created", created_},
                                               {"owned_by", "lizard-serve"}}})}}),
                  "application/json");
}

void OpenAiApi::CreateSession(const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Authenticate(req); !s.ok()) return Fail(kSessions, s, res);
  if (absl::Status s = service_->CheckAccepting(); !s.ok()) return Fail(kSessions, s, res);
  std::optional<absl::Duration> ttl;
  if (!req.body.empty()) {
    const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) {
      return Fail(kSessions, absl::InvalidArgumentError("the body is not a JSON object"), res);
    }
    std::optional<int64_t> seconds;
    if (absl::Status s = ReadInteger(body, "ttl_seconds", seconds); !s.ok()) {
      return Fail(kSessions, s, res);
    }
    if (seconds.has_value()) {
      if (*seconds < 1 || absl::Seconds(*seconds) > config_.max_session_ttl) {
        return Fail(kSessions,
                    ParamError("ttl_seconds",
                               absl::StrCat(*seconds, " must be in [1, ",
                                            absl::ToInt64Seconds(config_.max_session_ttl),
                                            "] (--max-session-ttl)")),
                    res);
      }
      ttl = absl::Seconds(*seconds);
    }
  }
  absl::StatusOr<SessionSnapshot> created = sessions_->Create(ttl, /*busy=*/false);
  if (!created.ok()) return Fail(kSessions, created.status(), res);
  service_->RecordOutcome(
      {NewRequestId(), kSessions, absl::OkStatus(), HttpEndpoint::RequestStart(), created->id});
  res.set_content(Dump({{"id", created->id},
                        {"object", "session"},
                        {"expires_at", absl::ToUnixSeconds(created->expires_at)}}),
                  "application/json");
}

// The same blob as gRPC ExportSession / ImportSession (server/session_store.h), as the raw
// body. An import larger than --http-max-body-bytes is refused (413): big sessions move over gRPC.
void OpenAiApi::ExportSession(const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Authenticate(req); !s.ok()) return Fail(kSessionExport, s, res);
  if (absl::Status s = service_->CheckAccepting(); !s.ok()) return Fail(kSessionExport, s, res);
  const std::string id = req.get_param_value("session_id");
  if (absl::Status s = CheckSessionId(id); !s.ok()) return Fail(kSessionExport, s, res);
  absl::StatusOr<std::string> blob = sessions_->Export(id);
  if (!blob.ok()) return Fail(kSessionExport, blob.status(), res);
  service_->RecordOutcome(
      {NewRequestId(), kSessionExport, absl::OkStatus(), HttpEndpoint::RequestStart(), id});
  res.set_content(*std::move(blob), "application/octet-stream");
}

void OpenAiApi::ImportSession(const httplib::Request& req, httplib::Response& res) {
  if (absl::Status s = Authenticate(req); !s.ok()) return Fail(kSessionImport, s, res);
  if (absl::Status s = service_->CheckAccepting(); !s.ok()) return Fail(kSessionImport, s, res);
  service_->BeginEngineCall();  // a drain waits for it before the sessions are saved
  absl::StatusOr<SessionSnapshot> imported = sessions_->Import(req.body);
  service_->EndEngineCall();
  if (!imported.ok()) return Fail(kSessionImport, imported.status(), res);
  service_->RecordOutcome({NewRequestId(), kSessionImport, absl::OkStatus(),
                           HttpEndpoint::RequestStart(), imported->id});
  res.set_content(Dump({{"id", imported->id},
                        {"object", "session"},
                        {"num_tokens", imported->info.num_tokens},
                        {"expires_at", absl::ToUnixSeconds(imported->expires_at)}}),
                  "application/json");
}

void OpenAiApi::Completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  const char* endpoint = chat ? kChatCompletions : kCompletions;
  if (absl::Status s = Authenticate(req); !s.ok()) return Fail(endpoint, s, res);
  if (absl::Status s = service_->CheckAccepting(); !s.ok()) return Fail(endpoint, s, res);

  const json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return Fail(endpoint,
                absl::InvalidArgumentError("the body is not a JSON object (malformed JSON or "
                                           "invalid UTF-8)"),
                res);
  }
  Parsed parsed;
  absl::Status status = [&]() -> absl::Status {
    v1::GenerateRequest& request = parsed.request;
    if (const json* model = Field(body, "model"); model != nullptr) {
      if (!model->is_string() || model->get<std::string>() != config_.model_id) {
        absl::Status s = WithParam(
            absl::NotFoundError(absl::StrCat("the model `",
                                             model->is_string() ? model->get<std::string>()
                                                                : Dump(*model),
                                             "` does not exist; this server serves `",
                                             config_.model_id, "`")),
            "model");
        s.SetPayload(kCodePayload, absl::Cord("model_not_found"));
        return s;
      }
    }
    if (chat) {
      absl::StatusOr<std::vector<ChatMessage>> messages = ReadMessages(body);
      if (!messages.ok()) return messages.status();
      parsed.messages = *std::move(messages);
      if (const json* kwargs = Field(body, "chat_template_kwargs"); kwargs != nullptr) {
        if (!kwargs->is_object()) return ParamError("chat_template_kwargs", "must be an object");
        parsed.template_kwargs = *kwargs;
      }
    } else if (absl::Status s = ReadPrompt(body, request); !s.ok()) {
      return s;
    }

    // Only one choice, and no features this server does not have.
    std::optional<int64_t> n, best_of;
    if (absl::Status s = ReadInteger(body, "n", n); !s.ok()) return s;
    if (n.has_value() && *n != 1) return ParamError("n", "only n = 1 is supported");
    if (absl::Status s = ReadInteger(body, "best_of", best_of); !s.ok()) return s;
    if (best_of.has_value() && *best_of != 1) {
      return ParamError("best_of", "only best_of = 1 is supported");
    }
    bool echo = false;
    if (absl::Status s = ReadBool(body, "echo", echo); !s.ok()) return s;
    if (echo) return ParamError("echo", "is not supported");
    for (const char* name : {"suffix", "logit_bias", "tools", "functions"}) {
      const json* value = Field(body, name);
      if (value != nullptr && !(value->is_string() && value->get<std::string>().empty()) &&
          !(value->is_structured() && value->empty())) {
        return ParamError(name, "is not supported");
      }
    }
    if (const json* format = Field(body, "response_format"); format != nullptr) {
      if (!format->is_object() || format->value("type", "") != "text") {
        return ParamError("response_format", "only {\"type\": \"text\"} is supported");
      }
    }

    // Sampling. OpenAI's default temperature is 1 (gRPC's unset field is 0, greedy).
    v1::SamplingParams& sampling = *request.mutable_sampling();
    sampling.set_temperature(1.0f);
    using Sampling = v1::SamplingParams;
    for (const auto& [name, set] : {
             std::pair{"temperature", &Sampling::set_temperature},
             std::pair{"top_p", &Sampling::set_top_p},
             std::pair{"min_p", &Sampling::set_min_p},
             std::pair{"repetition_penalty", &Sampling::set_repetition_penalty},
             std::pair{"presence_penalty", &Sampling::set_presence_penalty},
             std::pair{"frequency_penalty", &Sampling::set_frequency_penalty},
         }) {
      std::optional<double> number;
      if (absl::Status s = ReadNumber(body, name, number); !s.ok()) return s;
      if (number.has_value()) (sampling.*set)(static_cast<float>(*number));
    }
    std::optional<int64_t> integer;
    if (absl::Status s = ReadInteger(body, "top_k", integer); !s.ok()) return s;
    // vLLM spells "off" -1.
    if (integer.has_value()) {
      sampling.set_top_k(*integer == -1 ? 0
                                        : static_cast<int32_t>(std::clamp<int64_t>(
                                              *integer, INT32_MIN, INT32_MAX)));
    }
    integer.reset();
    if (absl::Status s = ReadInteger(body, "seed", integer); !s.ok()) return s;
    if (integer.has_value()) sampling.set_seed(static_cast<uint64_t>(*integer));

    // Stopping.
    v1::StoppingCriteria& stopping = *request.mutable_stopping();
    std::optional<int64_t> max_tokens;
    const char* max_name = "max_tokens";
    if (chat && Field(body, "max_completion_tokens") != nullptr) max_name = "max_completion_tokens";
    if (absl::Status s = ReadInteger(body, max_name, max_tokens); !s.ok()) return s;
    if (max_tokens.has_value()) {
      if (*max_tokens < 0) return ParamError(max_name, "must be >= 0");
      stopping.set_max_new_tokens(ClampToUint32(*max_tokens));
    }
    if (const json* stop = Field(body, "stop"); stop != nullptr) {
      if (stop->is_string()) {
        stopping.add_stop_strings(stop->get<std::string>());
      } else if (stop->is_array()) {
        for (const json& one : *stop) {
          if (!one.is_string()) return ParamError("stop", "must be a string or a list of strings");
          stopping.add_stop_strings(one.get<std::string>());
        }
      } else {
        return ParamError("stop", "must be a string or a list of strings");
      }
    }
    bool ignore_eos = false;
    if (absl::Status s = ReadBool(body, "ignore_eos", ignore_eos); !s.ok()) return s;
    stopping.set_ignore_eos(ignore_eos);

    // Logprobs: completions take the number of alternatives; chat a boolean plus top_logprobs.
    // The engine reports the chosen token's logprob with its alternatives, so at least one.
    std::optional<int64_t> top;
    if (chat) {
      bool logprobs = false;
      if (absl::Status s = ReadBool(body, "logprobs", logprobs); !s.ok()) return s;
      if (absl::Status s = ReadInteger(body, "top_logprobs", top); !s.ok()) return s;
      if (top.has_value() && !logprobs) {
        return ParamError("top_logprobs", "needs \"logprobs\": true");
      }
      if (logprobs) parsed.top_logprobs = top.value_or(0);
    } else {
      if (absl::Status s = ReadInteger(body, "logprobs", top); !s.ok()) return s;
      if (top.has_value()) parsed.top_logprobs = *top;
    }
    if (parsed.top_logprobs < -1 || (top.has_value() && *top < 0)) {
      return ParamError(chat ? "top_logprobs" : "logprobs", "must be >= 0");
    }
    if (parsed.top_logprobs >= 0) {
      request.set_logprobs(ClampToUint32(std::max<int64_t>(parsed.top_logprobs, 1)));
    }

    if (absl::Status s = ReadBool(body, "stream", parsed.stream); !s.ok()) return s;
    if (const json* options = Field(body, "stream_options"); options != nullptr) {
      if (!options->is_object()) return ParamError("stream_options", "must be an object");
      if (absl::Status s = ReadBool(*options, "include_usage", parsed.include_usage); !s.ok()) {
        return WithParam(s, "stream_options.include_usage");
      }
    }
    if (absl::Status s = ReadBool(body, "return_token_ids", parsed.return_token_ids); !s.ok()) {
      return s;
    }

    // A session: the body's session_id or the X-Session-Id header (the same if both).
    std::string session = req.get_header_value("X-Session-Id");
    if (const json* field = Field(body, "session_id"); field != nullptr) {
      if (!field->is_string()) return ParamError("session_id", "must be a string");
      if (!session.empty() && session != field->get<std::string>()) {
        return ParamError("session_id", "differs from the X-Session-Id header");
      }
      session = field->get<std::string>();
    }
    if (absl::Status s = CheckSessionId(session); !s.ok()) return WithParam(s, "session_id");
    request.set_session_id(session);
    return absl::OkStatus();
  }();
  if (!status.ok()) return Fail(endpoint, status, res);

  LizardService::Generation::InputBuilder input;
  if (chat) {
    if (!config_.chat_template.has_value()) {
      return Fail(endpoint,
                  absl::InvalidArgumentError(absl::StrCat(
                      "this model has no chat template (", config_.no_chat_template_reason,
                      "): use /v1/completions, or start the server with --chat-template FILE")),
                  res, "messages");
    }
    if (tokenizer_ == nullptr) {
      return Fail(endpoint,
                  absl::FailedPreconditionError("the model has no tokenizer.json: chat needs one"),
                  res, "messages");
    }
    input = [this, messages = parsed.messages,
             kwargs = parsed.template_kwargs](bool starts_conversation)
        -> absl::StatusOr<std::vector<int32_t>> {
      const ChatTemplate& chat_template = *config_.chat_template;
      ChatTemplateInputs inputs{messages, /*add_generation_prompt=*/true,
                                chat_template.bos_token(), chat_template.eos_token(), kwargs};
      absl::StatusOr<std::string> rendered = chat_template.Render(inputs);
      if (!rendered.ok()) {
        return WithParam(absl::InvalidArgumentError(absl::StrCat(
                             "rendering the chat template: ", rendered.status().message())),
                         "messages");
      }
      std::string text = *std::move(rendered);
      // On a session that holds a conversation already, the new messages continue it: what the
      // template puts before any message (BOS, a default system prompt) is there already.
      if (!starts_conversation) {
        inputs.messages.clear();
        inputs.add_generation_prompt = false;
        absl::StatusOr<std::string> prefix = chat_template.Render(inputs);
        if (prefix.ok() && absl::StartsWith(text, *prefix)) text.erase(0, prefix->size());
      }
      // BOS once: from the template if it writes it, else from the tokenizer at the start.
      const bool template_has_bos = !chat_template.bos_token().empty() &&
                                    absl::StartsWith(text, chat_template.bos_token());
      absl::StatusOr<std::vector<int32_t>> ids =
          tokenizer_->Encode(text, starts_conversation && !template_has_bos);
      if (!ids.ok()) {
        return WithParam(absl::InvalidArgumentError(absl::StrCat(
                             "the rendered messages: ", ids.status().message())),
                         "messages");
      }
      v1::TokenIds token_ids;
      token_ids.mutable_ids()->Assign(ids->begin(), ids->end());
      return InputTokens(nullptr, &token_ids, tokenizer_, /*add_bos=*/false, config_.limits);
    };
  }

  auto call = std::make_shared<Call>(this, chat, parsed);
  if (absl::Status s = call->Start(parsed.request, input, call); !s.ok()) {
    return Fail(endpoint, s, res);
  }
  if (parsed.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [call](size_t, httplib::DataSink& sink) { return call->Provide(sink); });
    return;
  }
  absl::StatusOr<json> response = call->Wait();
  if (!response.ok()) {
    res.status = HttpStatus(response.status().code());
    res.set_content(Dump(ErrorJson(response.status())), "application/json");
    return;
  }
  res.set_content(Dump(*response), "application/json");
}

}  // namespace lizard::server
