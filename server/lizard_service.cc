#include "server/lizard_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace lizard::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  // absl::StatusCode mirrors grpc::StatusCode value for value.
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

namespace {

template <typename Message>
absl::Status ParseRequest(const grpc::ByteBuffer& raw, Message* message) {
  grpc::ByteBuffer copy(raw);
  if (!grpc::SerializationTraits<Message>::Deserialize(&copy, message).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request is not a valid ", Message::descriptor()->full_name(),
        ": a string field holds malformed UTF-8, or the bytes are not that message"));
  }
  return absl::OkStatus();
}

template <typename Message>
void SerializeTo(const Message& message, grpc::ByteBuffer* out) {
  bool own_buffer = false;
  grpc::SerializationTraits<Message>::Serialize(message, out, &own_buffer);
}

void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  out->set_seconds(nanos / 1000000000);
  out->set_nanos(static_cast<int32_t>(nanos % 1000000000));
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return v1::LENGTH;
    case FinishReason::kStop: return v1::STOP;
    case FinishReason::kEos: return v1::EOS;
    case FinishReason::kCancelled: return v1::CANCELLED;
    case FinishReason::kError: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

double SecondsSince(absl::Time start) { return absl::ToDoubleSeconds(absl::Now() - start); }

}  // namespace

// ---------------------------------------------------------------------------------------------
LizardService::Generation::Generation(LizardService* service, std::string request_id)
    : service_(service), start_(absl::Now()), server_request_id_(std::move(request_id)) {}

RequestRecord LizardService::Generation::Record(std::string rpc,
                                                const absl::Status& status) const {
  RequestRecord record{server_request_id_, std::move(rpc), status, start_, requested_session_id_};
  record.prompt_tokens = prompt_tokens_;
  record.generated_tokens = generated_;
  record.time_to_first_token = time_to_first_token_;
  return record;
}

absl::Status LizardService::Generation::Submit(const v1::GenerateRequest& request,
                                               const InputBuilder& input,
                                               std::shared_ptr<Generation> self) {
  // A conversation starts with BOS: a one-shot request, or the first input of a session.
  bool starts_conversation = true;
  StateId state = 0;
  requested_session_id_ = request.session_id();
  if (!request.session_id().empty()) {
    if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
    absl::StatusOr<StateId> acquired = service_->sessions_->Acquire(request.session_id());
    if (!acquired.ok()) return acquired.status();
    session_id_ = request.session_id();
    state = *acquired;
    absl::StatusOr<StateInfo> info = service_->engine_->GetStateInfo(state);
    starts_conversation = info.ok() && info->num_tokens == 0;
  }
  absl::Status status = [&]() -> absl::Status {
    const RequestLimits& limits = service_->config_.limits;
    const Tokenizer* tokenizer = service_->tokenizer_;
    absl::StatusOr<std::vector<int32_t>> tokens =
        input ? input(starts_conversation)
              : InputTokens(request.has_text() ? &request.text() : nullptr,
                            request.has_token_ids() ? &request.token_ids() : nullptr,
                            tokenizer, starts_conversation, limits);
    if (!tokens.ok()) return tokens.status();
    absl::StatusOr<EngineRequest> engine_request =
        ToEngineRequest(request, *std::move(tokens), tokenizer, limits);
    if (!engine_request.ok()) return engine_request.status();
    engine_request->state = state;

    // Text deltas (and stop strings on them) need the tokenizer; special tokens such as EOS
    // are not part of the text.
    if (tokenizer != nullptr) decoder_.emplace(*tokenizer, /*skip_special_tokens=*/true);
    const auto& stops = request.stopping().stop_strings();
    if (!stops.empty()) {
      stop_matcher_.emplace(std::vector<std::string>(stops.begin(), stops.end()));
    }
    absl::StatusOr<RequestId> id =
        service_->engine_->Submit(*std::move(engine_request), std::move(self));
    if (!id.ok()) return id.status();
    if (!session_id_.empty()) service_->sessions_->SetRunning(session_id_, *id);
    absl::MutexLock lock(&mu_);
    engine_request_ = *id;
    if (cancel_requested_) CancelEngineLocked();
    return absl::OkStatus();
  }();
  if (!status.ok() && !session_id_.empty()) {
    service_->sessions_->Release(session_id_);
    session_id_.clear();
  }
  return status;
}

void LizardService::Generation::Cancel() {
  absl::MutexLock lock(&mu_);
  cancel_requested_ = true;
  CancelEngineLocked();
}

void LizardService::Generation::CancelEngineLocked() {
  if (engine_request_ == 0 || finished_) return;
  if (!session_id_.empty()) service_->sessions_->MarkCancelling(session_id_, engine_request_);
  service_->engine_->Cancel(engine_request_);
}

bool LizardService::Generation::OnToken(int32_t token, const TokenLogprobs* logprobs) {
  const absl::Time now = absl::Now();
  if (generated_ == 0) {
    time_to_first_token_ = now - start_;
    service_->metrics_->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - start_));
  } else {
    service_->metrics_->ObserveInterTokenLatency(absl::ToDoubleSeconds(now - last_token_));
  }
  last_token_ = now;
  ++generated_;
  service_->metrics_->AddGeneratedTokens(1);

  std::string text;
  if (decoder_.has_value()) {
    absl::StatusOr<std::string> piece = decoder_->Push(token);
    if (piece.ok()) text = *std::move(piece);
    if (stop_matcher_.has_value()) text = stop_matcher_->Push(text);
  }
  if (!Deliver(token, std::move(text), logprobs)) return false;
  return !(stop_matcher_.has_value() && stop_matcher_->stopped());
}

void LizardService::Generation::OnFinish(FinishReason reason, const Usage& usage,
                                         const absl::Status& status) {
  std::string tail;
  if (decoder_.has_value() && !(stop_matcher_.has_value() && stop_matcher_->stopped())) {
    tail = decoder_->Flush();
    if (stop_matcher_.has_value()) {
      tail = stop_matcher_->Push(tail);
      if (!stop_matcher_->stopped()) tail += stop_matcher_->Flush();
    }
  }
  // The session is free again before the client can see the last message.
  if (!session_id_.empty()) service_->sessions_->Release(session_id_);
  service_->metrics_->AddPromptTokens(usage.prompt_tokens);
  service_->metrics_->ObserveRequestDuration(SecondsSince(start_));
  prompt_tokens_ = usage.prompt_tokens;
  {
    absl::MutexLock lock(&mu_);
    finished_ = true;
  }
  End(reason, usage, std::move(tail), status);
}

// ---------------------------------------------------------------------------------------------
// Generate: one streaming call. The engine thread appends tokens to the queued messages (never
// blocking); at most one write is in flight, and whatever arrives meanwhile is merged into the
// last queued message, so a slow reader gets fewer, larger messages and never holds up the
// engine. Both are bounded: a message stops growing at kMaxMessageBytes (far below gRPC's
// default 4 MiB receive limit) and a new one is queued; once more than
// ServiceConfig::stream_buffer_bytes wait for a client that does not read, the queue is dropped,
// the generation is cancelled and the call ends with RESOURCE_EXHAUSTED.
constexpr int64_t kMaxMessageBytes = 256 << 10;
class LizardService::GenerateCall : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                                    public Generation {
 public:
  explicit GenerateCall(LizardService* service) : Generation(service) {}

  // Validates and submits; any error finishes the call at once. Keeps the call alive until
  // gRPC is done with it (OnDone).
  void Start(std::shared_ptr<GenerateCall> self, const grpc::ByteBuffer& raw) {
    self_ = std::move(self);
    if (absl::Status s = Submit(raw); !s.ok()) {
      absl::MutexLock lock(&mu_);
      final_status_ = ToGrpcStatus(s);
      engine_done_ = true;
      MaybeWriteLocked();
    }
  }

  // --- Generation (engine thread) ---
  bool Deliver(int32_t token, std::string text, const TokenLogprobs* logprobs) override {
    absl::MutexLock lock(&mu_);
    if (overflowed_) return false;  // cancelled already; the engine ends the request
    // Upper bounds of the encoded sizes: a token id <= 11 bytes, a TokenLogprob <= 20.
    const int64_t top = logprobs != nullptr ? static_cast<int64_t>(logprobs->top.size()) : 0;
    const int64_t bytes = 11 + static_cast<int64_t>(text.size()) + 12 +
                          (logprobs != nullptr ? 30 + 22 * top : 0);
    v1::GenerateResponse& message = MessageWithRoomLocked(bytes);
    message.add_token_ids(token);
    message.mutable_text()->append(text);
    if (logprobs != nullptr) {
      v1::TokenLogprobs* out = message.add_logprobs();
      out->mutable_chosen()->set_token_id(logprobs->chosen.token);
      out->mutable_chosen()->set_logprob(logprobs->chosen.logprob);
      for (const TokenLogprob& alt : logprobs->top) {
        v1::TokenLogprob* top_out = out->add_top();
        top_out->set_token_id(alt.token);
        top_out->set_logprob(alt.logprob);
      }
    }
    if (queued_bytes_ > service_->config_.stream_buffer_bytes) {
      // The client does not read: free what waits for it and stop generating for it.
      overflowed_ = true;
      queue_.clear();
      queued_bytes_ = 0;
      final_status_ = grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("the client did not read the stream: more than ",
                       service_->config_.stream_buffer_bytes,
                       " bytes of responses waited for it (--stream-buffer-bytes)"));
      return false;
    }
    MaybeWriteLocked();
    return true;
  }

  void End(FinishReason reason, const Usage& usage, std::string tail,
           const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    if (overflowed_) {
      // final_status_ says why; nothing more is sent.
    } else if (reason == FinishReason::kError) {
      final_status_ = ToGrpcStatus(status);
    } else {
      v1::GenerateResponse& last = MessageWithRoomLocked(static_cast<int64_t>(tail.size()) + 64);
      last.mutable_text()->append(tail);
      last.set_finish_reason(ToProto(reason));
      v1::Usage* out = last.mutable_usage();
      out->set_prompt_tokens(usage.prompt_tokens);
      out->set_generated_tokens(usage.generated_tokens);
      out->set_session_tokens(usage.state_tokens);
      out->set_cached_tokens(usage.cached_tokens);
      if (reason == FinishReason::kCancelled && cancelled_) {
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
      }
    }
    engine_done_ = true;
    MaybeWriteLocked();
  }

  // --- ServerWriteReactor (gRPC threads) ---
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    write_in_flight_ = false;
    if (!ok) {
      // The client is gone: stop generating; Finish once the engine reports the end.
      broken_ = true;
      Cancel();
    }
    MaybeWriteLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    Cancel();
  }

  void OnDone() override {
    service_->EndEngineCall();
    self_.reset();  // may delete this; nothing may follow
  }

 private:
  absl::Status Submit(const grpc::ByteBuffer& raw) {
    service_->BeginEngineCall();
    if (absl::Status s = service_->CheckAccepting(); !s.ok()) return s;
    v1::GenerateRequest request;
    if (absl::Status s = ParseRequest(raw, &request); !s.ok()) return s;
    if (absl::Status s = CheckRequestId(request.request_id()); !s.ok()) return s;
    request_id_ = request.request_id();
    return Generation::Submit(request, nullptr, self_);
  }

  // The queued message that `bytes` more go into: the last one, or a new one when it is full.
  v1::GenerateResponse& MessageWithRoomLocked(int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (queue_.empty() || queue_.back().bytes + bytes > kMaxMessageBytes) {
      queue_.push_back({v1::GenerateResponse(), static_cast<int64_t>(request_id_.size()) + 8});
      queued_bytes_ += queue_.back().bytes;
    }
    queue_.back().bytes += bytes;
    queued_bytes_ += bytes;
    return queue_.back().message;
  }

  // Starts the next write, or finishes the call once everything is written.
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (write_in_flight_ || finish_called_) return;
    if (!broken_ && !queue_.empty()) {
      v1::GenerateResponse& message = queue_.front().message;
      message.set_request_id(request_id_);
      out_.Clear();
      SerializeTo(message, &out_);
      queued_bytes_ -= queue_.front().bytes;
      queue_.pop_front();
      write_in_flight_ = true;
      StartWrite(&out_);
      return;
    }
    if (!engine_done_) return;
    if (broken_ && final_status_.ok()) {
      final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    finish_called_ = true;
    RequestRecord record = Record("Generate", absl::Status(static_cast<absl::StatusCode>(
                                                               final_status_.error_code()),
                                                           final_status_.error_message()));
    record.client_request_id = request_id_;
    service_->RecordOutcome(record);
    Finish(final_status_);
  }

  std::shared_ptr<GenerateCall> self_;  // released in OnDone
  std::string request_id_;

  struct Queued {
    v1::GenerateResponse message;
    int64_t bytes = 0;  // an upper bound of its encoded size
  };
  absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);   // messages not written yet, the last growing
  int64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool overflowed_ ABSL_GUARDED_BY(mu_) = false;    // queue over stream_buffer_bytes: cancelled
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);       // the message being written
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;  // client cancel or deadline
  bool broken_ ABSL_GUARDED_BY(mu_) = false;     // a write failed
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerWriteReactor<grpc::ByteBuffer>* LizardService::Generate(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* request) {
  auto call = std::make_shared<GenerateCall>(this);
  call->Start(call, *request);
  return call.get();
}

// ---------------------------------------------------------------------------------------------
// CreateSession with a prefix: the prefix is prefilled (max_new_tokens = 0) and the call
// answers when the engine is done with it.
class LizardService::PrefillSink : public TokenSink {
 public:
  PrefillSink(LizardService* service, grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* response,
              std::string session_id, absl::Time start)
      : service_(service), reactor_(reactor), response_(response),
        session_id_(std::move(session_id)), start_(start) {}

  bool OnToken(int32_t, const TokenLogprobs*) override { return false; }  // none are asked for

  void OnFinish(FinishReason reason, const Usage& usage, const absl::Status& status) override {
    service_->sessions_->Release(session_id_);
    service_->metrics_->AddPromptTokens(usage.prompt_tokens);
    absl::Status result = status;
    if (result.ok() && reason == FinishReason::kCancelled) {
      result = absl::UnavailableError("the prefix prefill was cancelled (server shutting down)");
    }
    absl::StatusOr<SessionSnapshot> snapshot = service_->sessions_->Get(session_id_);
    if (result.ok() && !snapshot.ok()) result = snapshot.status();
    if (result.ok()) {
      v1::Session session;
      service_->FillSession(*snapshot, &session);
      SerializeTo(session, response_);
    } else {
      service_->sessions_->Delete(session_id_).IgnoreError();
    }
    RequestRecord record{NewRequestId(), "CreateSession", result, start_, session_id_};
    record.prompt_tokens = usage.prompt_tokens;
    service_->RecordOutcome(record);
    service_->EndEngineCall();
    reactor_->Finish(ToGrpcStatus(result));
  }

 private:
  LizardService* const service_;
  grpc::ServerUnaryReactor* const reactor_;
  grpc::ByteBuffer* const response_;
  const std::string session_id_;
  const absl::Time start_;
};

grpc::ServerUnaryReactor* LizardService::CreateSession(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw,
                                                       grpc::ByteBuffer* response) {
  constexpr std::string_view kRpc = "CreateSession";
  const absl::Time start = absl::Now();
  if (absl::Status s = CheckAccepting(); !s.ok()) return FinishUnary(context, kRpc, start, s);
  v1::CreateSessionRequest request;
  if (absl::Status s = ParseRequest(*raw, &request); !s.ok()) {
    return FinishUnary(context, kRpc, start, s);
  }

  std::optional<absl::Duration> ttl;
  if (request.has_ttl_seconds()) {
    ttl = absl::Seconds(request.ttl_seconds());
    if (request.ttl_seconds() == 0 || *ttl > config_.max_session_ttl) {
      return FinishUnary(context, kRpc, start, absl::InvalidArgumentError(absl::StrCat(
          "ttl_seconds = ", request.ttl_seconds(), " must be in [1, ",
          absl::ToInt64Seconds(config_.max_session_ttl), "] (--max-session-ttl)")));
    }
  }
  const bool has_prefix = request.prefix_case() != v1::CreateSessionRequest::PREFIX_NOT_SET;
  std::vector<int32_t> prefix;
  if (has_prefix) {
    absl::StatusOr<std::vector<int32_t>> tokens = InputTokens(
        request.has_text() ? &request.text() : nullptr,
        request.has_token_ids() ? &request.token_ids() : nullptr, tokenizer_, /*add_bos=*/true,
        config_.limits);
    if (!tokens.ok()) return FinishUnary(context, kRpc, start, tokens.status());
    prefix = *std::move(tokens);
  }

  absl::StatusOr<SessionSnapshot> created = sessions_->Create(ttl, /*busy=*/has_prefix);
  if (!created.ok()) return FinishUnary(context, kRpc, start, created.status());
  if (!has_prefix) {
    v1::Session session;
    FillSession(*created, &session);
    SerializeTo(session, response);
    return FinishUnary(context, kRpc, start, absl::OkStatus());
  }

  EngineRequest prefill;
  prefill.state = created->state;
  prefill.input = std::move(prefix);
  prefill.stopping.max_new_tokens = 0;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  BeginEngineCall();
  auto sink = std::make_shared<PrefillSink>(this, reactor, response, created->id, start);
  absl::StatusOr<RequestId> id = engine_->Submit(std::move(prefill), sink);
  if (!id.ok()) {
    EndEngineCall();
    sessions_->Release(created->id);
    sessions_->Delete(created->id).IgnoreError();
    RecordOutcome({NewRequestId(), std::string(kRpc), id.status(), start, created->id});
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  sessions_->SetRunning(created->id, *id);
  return reactor;
}

// ---------------------------------------------------------------------------------------------
template <typename Request, typename Response, typename Handler>
grpc::ServerUnaryReactor* LizardService::Unary(grpc::CallbackServerContext* context,
                                               std::string_view rpc, const grpc::ByteBuffer& raw,
                                               grpc::ByteBuffer* out, Handler handler) {
  const absl::Time start = absl::Now();
  if (absl::Status s = CheckAccepting(); !s.ok()) return FinishUnary(context, rpc, start, s);
  Request request;
  if (absl::Status s = ParseRequest(raw, &request); !s.ok()) {
    return FinishUnary(context, rpc, start, s);
  }
  Response response;
  absl::Status status = handler(request, &response);
  if (status.ok()) SerializeTo(response, out);
  return FinishUnary(context, rpc, start, status);
}

grpc::ServerUnaryReactor* LizardService::GetSession(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* raw,
                                                    grpc::ByteBuffer* out) {
  return Unary<v1::GetSessionRequest, v1::Session>(
      context, "GetSession", *raw, out,
      [&](const v1::GetSessionRequest& request, v1::Session* response) -> absl::Status {
        if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
        absl::StatusOr<SessionSnapshot> snapshot = sessions_->Get(request.session_id());
        if (!snapshot.ok()) return snapshot.status();
        FillSession(*snapshot, response);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* LizardService::ForkSession(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* raw,
                                                     grpc::ByteBuffer* out) {
  return Unary<v1::ForkSessionRequest, v1::Session>(
      context, "ForkSession", *raw, out,
      [&](const v1::ForkSessionRequest& request, v1::Session* response) -> absl::Status {
        if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
        absl::StatusOr<SessionSnapshot> snapshot = sessions_->Fork(request.session_id());
        if (!snapshot.ok()) return snapshot.status();
        FillSession(*snapshot, response);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* LizardService::DeleteSession(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw,
                                                       grpc::ByteBuffer* out) {
  return Unary<v1::DeleteSessionRequest, v1::DeleteSessionResponse>(
      context, "DeleteSession", *raw, out,
      [&](const v1::DeleteSessionRequest& request, v1::DeleteSessionResponse*) -> absl::Status {
        if (absl::Status s = CheckSessionId(request.session_id()); !s.ok()) return s;
        return sessions_->Delete(request.session_id());
      });
}

grpc::ServerUnaryReactor* LizardService::Tokenize(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw,
                                                  grpc::ByteBuffer* out) {
  return Unary<v1::TokenizeRequest, v1::TokenizeResponse>(
      context, "Tokenize", *raw, out,
      [&](const v1::TokenizeRequest& request, v1::TokenizeResponse* response) -> absl::Status {
        if (tokenizer_ == nullptr) {
          return absl::FailedPreconditionError("the model has no tokenizer.json");
        }
        absl::StatusOr<std::vector<int32_t>> ids =
            tokenizer_->Encode(request.text(), request.add_special_tokens());
        if (!ids.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message()));
        }
        response->mutable_token_ids()->Assign(ids->begin(), ids->end());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* LizardService::Detokenize(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* raw,
                                                    grpc::ByteBuffer* out) {
  return Unary<v1::DetokenizeRequest, v1::DetokenizeResponse>(
      context, "Detokenize", *raw, out,
      [&](const v1::DetokenizeRequest& request, v1::DetokenizeResponse* response) -> absl::Status {
        if (tokenizer_ == nullptr) {
          return absl::FailedPreconditionError("the model has no tokenizer.json");
        }
        std::vector<int32_t> ids(request.token_ids().begin(), request.token_ids().end());
        if (absl::Status s = CheckTokenIds(ids, config_.limits.vocab_size, "token_ids"); !s.ok()) {
          return s;
        }
        absl::StatusOr<std::string> text = tokenizer_->Decode(ids);
        if (!text.ok()) return text.status();
        response->set_text(*std::move(text));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* LizardService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw,
                                                      grpc::ByteBuffer* out) {
  return Unary<v1::GetModelInfoRequest, v1::ModelInfo>(
      context, "GetModelInfo", *raw, out,
      [&](const v1::GetModelInfoRequest&, v1::ModelInfo* response) -> absl::Status {
        FillModelInfo(response);
        return absl::OkStatus();
      });
}

void LizardService::FillModelInfo(v1::ModelInfo* response) const {
  const ModelConfig& config = engine_->config();
  const BackendInfo backend = engine_->backend_info();
  response->set_model_name(config.name);
  response->set_vocab_size(config.vocab_size);
  response->set_num_layers(config.num_layers);
  for (LayerType type : config.layer_types) {
    response->add_layer_types(type == LayerType::kLizard ? v1::LIZARD : v1::SOFTMAX);
  }
  response->set_window_size(config.window_size);
  response->set_num_meta_tokens(config.num_meta_tokens);
  response->set_hidden_size(config.hidden_size);
  response->set_state_bytes_per_session(engine_->state_bytes_per_sequence());
  response->set_kv_bytes_per_token(config_.kv_bytes_per_token);
  response->set_backend(backend.name);
  response->set_device(backend.device);
  *response->mutable_capacity() = config_.capacity;
  response->set_has_tokenizer(tokenizer_ != nullptr);
  response->set_bos_token_id(config.bos_token_id);
  response->mutable_eos_token_ids()->Assign(config.eos_token_ids.begin(),
                                            config.eos_token_ids.end());
}

// ---------------------------------------------------------------------------------------------
// ExportSession: the blob is made at once (it is a copy), then written in chunks.
class LizardService::ExportCall : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ExportCall(LizardService* service, absl::Time start, std::string session_id, std::string blob)
      : service_(service), start_(start), session_id_(std::move(session_id)),
        blob_(std::move(blob)) {
    WriteNext();
  }
  void OnWriteDone(bool ok) override {
    if (ok) {
      WriteNext();
    } else {
      End(absl::CancelledError("the client stopped reading"));
    }
  }
  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (offset_ >= blob_.size()) {
      End(absl::OkStatus());
      return;
    }
    v1::SessionBlobChunk chunk;
    chunk.set_data(blob_.substr(offset_, kSessionBlobChunkBytes));
    offset_ += chunk.data().size();
    buffer_.Clear();  // the previous chunk's write is done
    SerializeTo(chunk, &buffer_);
    StartWrite(&buffer_);
  }
  void End(const absl::Status& status) {
    service_->RecordOutcome({NewRequestId(), "ExportSession", status, start_, session_id_});
    Finish(ToGrpcStatus(status));
  }

  LizardService* const service_;
  const absl::Time start_;
  const std::string session_id_;
  const std::string blob_;
  size_t offset_ = 0;
  grpc::ByteBuffer buffer_;
};

grpc::ServerWriteReactor<grpc::ByteBuffer>* LizardService::ExportSession(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* raw) {
  const absl::Time start = absl::Now();
  v1::ExportSessionRequest request;
  absl::Status status = CheckAccepting();
  if (status.ok()) status = ParseRequest(*raw, &request);
  if (status.ok()) status = CheckSessionId(request.session_id());
  absl::StatusOr<std::string> blob =
      status.ok() ? sessions_->Export(request.session_id()) : status;
  if (!blob.ok()) {
    // The failure is the only thing written: a reactor that finishes at once.
    class Failed : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
     public:
      explicit Failed(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
      void OnDone() override { delete this; }
    };
    RecordOutcome({NewRequestId(), "ExportSession", blob.status(), start, request.session_id()});
    return new Failed(blob.status());
  }
  return new ExportCall(this, start, request.session_id(), *std::move(blob));
}

// ImportSession: the chunks are gathered (up to max_session_blob_bytes), then imported.
class LizardService::ImportCall : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  ImportCall(LizardService* service, grpc::ByteBuffer* response)
      : service_(service), response_(response), start_(absl::Now()) {
    if (absl::Status s = service_->CheckAccepting(); !s.ok()) {
      End(s);
      return;
    }
    // Counted like a request, so a drain waits for it before the sessions are saved.
    service_->BeginEngineCall();
    counted_ = true;
    StartRead(&buffer_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {  // the client sent its last chunk
      End(Import());
      return;
    }
    v1::SessionBlobChunk chunk;
    if (absl::Status s = ParseRequest(buffer_, &chunk); !s.ok()) {
      End(s);
      return;
    }
    if (static_cast<int64_t>(blob_.size() + chunk.data().size()) >
        service_->config_.max_session_blob_bytes) {
      End(absl::ResourceExhaustedError(absl::StrCat(
          "session blob larger than ", service_->config_.max_session_blob_bytes, " bytes")));
      return;
    }
    blob_ += chunk.data();
    StartRead(&buffer_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Import() {
    absl::StatusOr<SessionSnapshot> session = service_->sessions_->Import(blob_);
    if (!session.ok()) return session.status();
    session_id_ = session->id;
    v1::Session out;
    service_->FillSession(*session, &out);
    SerializeTo(out, response_);
    return absl::OkStatus();
  }
  void End(const absl::Status& status) {
    if (counted_) service_->EndEngineCall();
    service_->RecordOutcome({NewRequestId(), "ImportSession", status, start_, session_id_});
    Finish(ToGrpcStatus(status));
  }

  LizardService* const service_;
  grpc::ByteBuffer* const response_;
  const absl::Time start_;
  bool counted_ = false;
  std::string blob_;
  std::string session_id_;
  grpc::ByteBuffer buffer_;
};

grpc::ServerReadReactor<grpc::ByteBuffer>* LizardService::ImportSession(
    grpc::CallbackServerContext*, grpc::ByteBuffer* response) {
  return new ImportCall(this, response);
}

// ---------------------------------------------------------------------------------------------
LizardService::LizardService(const ServiceConfig& config, Engine* engine,
                             const Tokenizer* tokenizer, SessionTable* sessions,
                             ServerMetrics* metrics)
    : config_(config), engine_(engine), tokenizer_(tokenizer), sessions_(sessions),
      metrics_(metrics) {}

void LizardService::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool LizardService::AwaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return engine_calls_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

absl::Status LizardService::CheckAccepting() {
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("the server is draining (shutting down)");
  return absl::OkStatus();
}

void LizardService::BeginEngineCall() {
  absl::MutexLock lock(&mu_);
  ++engine_calls_;
}

void LizardService::EndEngineCall() {
  absl::MutexLock lock(&mu_);
  --engine_calls_;
}

grpc::ServerUnaryReactor* LizardService::FinishUnary(grpc::CallbackServerContext* context,
                                                     std::string_view rpc, absl::Time start,
                                                     const absl::Status& status) {
  RecordOutcome({NewRequestId(), std::string(rpc), status, start});
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void LizardService::RecordOutcome(const RequestRecord& record) {
  // absl::StatusCode mirrors grpc::StatusCode value for value.
  metrics_->CountRequest(record.rpc, static_cast<grpc::StatusCode>(record.status.code()));
  LogRequest(record);
}

void LizardService::FillSession(const SessionSnapshot& snapshot, v1::Session* out) const {
  out->set_session_id(snapshot.id);
  out->set_num_tokens(snapshot.info.num_tokens);
  out->set_state_bytes(snapshot.info.state_bytes);
  out->set_location(snapshot.info.location == StateLocation::kDevice ? v1::DEVICE : v1::HOST);
  out->mutable_last_turn_token_ids()->Assign(snapshot.info.last_turn_tokens.begin(),
                                             snapshot.info.last_turn_tokens.end());
  out->set_last_turn_input_tokens(snapshot.info.last_turn_input_tokens);
  out->set_busy(snapshot.info.busy);
  ToTimestamp(snapshot.created_at, out->mutable_created_at());
  ToTimestamp(snapshot.last_used_at, out->mutable_last_used_at());
  ToTimestamp(snapshot.expires_at, out->mutable_expires_at());
}

}  // namespace lizard::server
