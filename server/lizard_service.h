// The lizard.v1.Lizard gRPC service (callback API): validation, sessions, streaming, drain.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "grpcpp/grpcpp.h"
#include "lizard/v1/lizard.grpc.pb.h"
#include "server/metrics.h"
#include "server/request_log.h"
#include "server/request_validation.h"
#include "server/session_table.h"
#include "server/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace lizard::server {

// Set from ServerOptions: request limits, and what GetModelInfo reports beyond the engine's own
// numbers.
struct ServiceConfig {
  RequestLimits limits;
  absl::Duration max_session_ttl;
  v1::Capacity capacity;
  int64_t kv_bytes_per_token = 0;
  // A Generate stream whose client does not read is cancelled with RESOURCE_EXHAUSTED once this
  // many bytes of responses wait for it (the engine never waits for a client).
  int64_t stream_buffer_bytes = int64_t{8} << 20;
  // ImportSession refuses a blob larger than this (RESOURCE_EXHAUSTED) before holding it all.
  int64_t max_session_blob_bytes = int64_t{1} << 30;
};

// Every method receives raw bytes and parses them here (ParseRequest): protobuf refuses a
// string field holding malformed UTF-8, and gRPC would answer that with a bare INTERNAL or
// UNIMPLEMENTED; parsing ourselves turns any undecodable request into INVALID_ARGUMENT with a
// message, the same way for all RPCs.
using LizardServiceBase = v1::Lizard::WithRawCallbackMethod_Generate<
    v1::Lizard::WithRawCallbackMethod_CreateSession<v1::Lizard::WithRawCallbackMethod_Tokenize<
        v1::Lizard::WithRawCallbackMethod_GetSession<v1::Lizard::WithRawCallbackMethod_ForkSession<
            v1::Lizard::WithRawCallbackMethod_DeleteSession<
                v1::Lizard::WithRawCallbackMethod_Detokenize<
                    v1::Lizard::WithRawCallbackMethod_GetModelInfo<
                        v1::Lizard::WithRawCallbackMethod_ExportSession<
                            v1::Lizard::WithRawCallbackMethod_ImportSession<
                                v1::Lizard::Service>>>>>>>>>>;

class LizardService final : public LizardServiceBase {
 public:
  // `tokenizer` may be null (the model has no tokenizer.json). Nothing is owned.
  LizardService(const ServiceConfig& config, Engine* engine, const Tokenizer* tokenizer,
                SessionTable* sessions, ServerMetrics* metrics);

  // From now on every new call gets UNAVAILABLE.
  void StartDraining();
  // Waits until no call that uses the engine is in flight, or until `deadline`; returns
  // whether none is left.
  bool AwaitIdle(absl::Time deadline);

  // One generation on the engine, defined below.
  class Generation;

  // For the other APIs on the same engine (server/openai_api.h): the drain state, the in-flight
  // count AwaitIdle waits for, and lizard_requests_total plus the log line of a finished call.
  absl::Status CheckAccepting();
  void BeginEngineCall();
  void EndEngineCall();
  void RecordOutcome(const RequestRecord& record);

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExportSession(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* ImportSession(grpc::CallbackServerContext* context,
                                                           grpc::ByteBuffer* response) override;

  // A blob is streamed in chunks of this size (gRPC's default message limit is 4 MiB).
  static constexpr size_t kSessionBlobChunkBytes = size_t{1} << 20;

 private:
  class GenerateCall;
  class ExportCall;
  class ImportCall;
  class PrefillSink;

  // Counts the call in lizard_requests_total, logs it and finishes it with `status`.
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                        std::string_view rpc, absl::Time start,
                                        const absl::Status& status);
  // A unary RPC that answers at once: refuses while draining, parses the raw request, runs
  // `handler(request, &response)` and serializes the response when it succeeds.
  template <typename Request, typename Response, typename Handler>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, std::string_view rpc,
                                  const grpc::ByteBuffer& raw, grpc::ByteBuffer* out,
                                  Handler handler);
  void FillSession(const SessionSnapshot& snapshot, v1::Session* out) const;
  void FillModelInfo(v1::ModelInfo* out) const;

  const ServiceConfig config_;
  Engine* const engine_;
  const Tokenizer* const tokenizer_;
  SessionTable* const sessions_;
  ServerMetrics* const metrics_;

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int64_t engine_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// One generation on the engine, shared by gRPC Generate and the OpenAI-compatible HTTP API:
// checks and submits a GenerateRequest (session, BOS, input and parameter validation), turns
// the tokens into text deltas (never a split UTF-8 character; stop strings held back and cut),
// keeps the token metrics and releases the session when the engine is done. Subclasses deliver
// the results; Deliver and End run on the engine thread and must not block.
class LizardService::Generation : public TokenSink {
 public:
  bool OnToken(int32_t token, const TokenLogprobs* logprobs) final;
  void OnFinish(FinishReason reason, const Usage& usage, const absl::Status& status) final;

  // The input tokens of a request, given whether they start a conversation (a one-shot
  // request or a session's first input; BOS belongs there).
  using InputBuilder =
      std::function<absl::StatusOr<std::vector<int32_t>>(bool starts_conversation)>;

 protected:
  explicit Generation(LizardService* service, std::string request_id = NewRequestId());
  // Validates `request` and submits it to the engine for `self` (this object). The input is
  // `input`'s, or when that is empty the request's text or token_ids. On an error nothing runs.
  absl::Status Submit(const v1::GenerateRequest& request, const InputBuilder& input,
                      std::shared_ptr<Generation> self);
  // Stops the generation within one engine step (any thread; nothing once it has finished).
  void Cancel();
  // Its log line's record: id, session, start, and once the engine is done tokens and TTFT.
  RequestRecord Record(std::string rpc, const absl::Status& status) const;

  // A generated token and the text it completes (may be empty). Return false to stop here.
  virtual bool Deliver(int32_t token, std::string text, const TokenLogprobs* logprobs) = 0;
  // The end: the text held back until now, and OK unless reason is kError.
  virtual void End(FinishReason reason, const Usage& usage, std::string tail,
                   const absl::Status& status) = 0;

  LizardService* const service_;
  const absl::Time start_;
  const std::string server_request_id_;

 private:
  std::string session_id_;  // empty for a one-shot request; released in OnFinish
  std::string requested_session_id_;  // what the request named (for the log)
  // Engine thread only (after Submit).
  std::optional<IncrementalDecoder> decoder_;
  std::optional<StopStringMatcher> stop_matcher_;
  int64_t generated_ = 0;
  int64_t prompt_tokens_ = 0;  // set in OnFinish
  absl::Time last_token_;
  std::optional<absl::Duration> time_to_first_token_;

  // Asks the engine to stop the request, and tells the session table that it is ending.
  void CancelEngineLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  RequestId engine_request_ ABSL_GUARDED_BY(mu_) = 0;
  bool cancel_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace lizard::server
