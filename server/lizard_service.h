// The lizard.v1.Lizard gRPC service (callback API): validation, sessions, streaming, drain.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/runtime/engine.h"
#include "engine/tokenizer/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "lizard/v1/lizard.grpc.pb.h"
#include "server/metrics.h"
#include "server/request_validation.h"
#include "server/session_table.h"

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
                    v1::Lizard::WithRawCallbackMethod_GetModelInfo<v1::Lizard::Service>>>>>>>>;

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

 private:
  class GenerateCall;
  class PrefillSink;

  // Counts the call in lizard_requests_total, logs it unless OK and finishes it with `status`.
  grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                        std::string_view rpc, const absl::Status& status);
  // A unary RPC that answers at once: refuses while draining, parses the raw request, runs
  // `handler(request, &response)` and serializes the response when it succeeds.
  template <typename Request, typename Response, typename Handler>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, std::string_view rpc,
                                  const grpc::ByteBuffer& raw, grpc::ByteBuffer* out,
                                  Handler handler);
  // Counts a finished call in lizard_requests_total and logs every status but OK.
  void RecordOutcome(std::string_view rpc, const grpc::Status& status);
  absl::Status CheckAccepting();
  // Calls that use the engine hold one of these while in flight (see AwaitIdle).
  void BeginEngineCall();
  void EndEngineCall();
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

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace lizard::server
