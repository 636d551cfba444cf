// LizardServer: loads the model, starts the engine, the gRPC service and the metrics endpoint.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/backend.h"
#include "engine/runtime/engine.h"
#include "grpcpp/grpcpp.h"
#include "server/auth.h"
#include "server/lizard_service.h"
#include "server/metrics.h"
#include "server/session_store.h"
#include "server/session_table.h"
#include "tokenizer/tokenizer.h"

namespace lizard::server {

class HttpEndpoint;
class OpenAiApi;
class ReflectionV1Relay;

// --model synthetic:SHAPE (ShapePreset: tiny, llama3.2-1b, llama3-8b) serves random weights of that
// shape without a tokenizer (token-id requests only): load tests of big shapes without a checkpoint.
inline constexpr std::string_view kSyntheticModelPrefix = "synthetic:";

struct ServerOptions {
  std::string model_dir;  // or kSyntheticModelPrefix + a shape name
  std::string host = "0.0.0.0";
  int port = 50051;          // 0: any free port (see grpc_port())
  std::string metrics_host = "127.0.0.1";  // in Kubernetes 0.0.0.0 or the pod IP
  int metrics_port = 9400;   // 0: any free port
  std::string http_host = "0.0.0.0";  // the OpenAI-compatible HTTP API
  int http_port = 8000;      // 0: no HTTP API
  int http_max_connections = 128;  // served at once (a streaming completion holds one)
  int64_t http_max_body_bytes = int64_t{4} << 20;  // of a request
  bool http_tls = false;  // HTTPS with security's certificate, key (and client CA)
  std::string chat_template_file;  // Jinja chat template; empty: tokenizer_config.json's
  BackendKind backend = BackendKind::kAuto;
  int32_t threads = 0;       // CPU backend threads, 0 = all cores
  bool batch_invariant = true;  // CUDA: batch-invariant projections (BackendOptions)
  int32_t max_batch_tokens = 512;
  int32_t max_running = 64;
  int32_t max_queue = 256;
  int64_t max_sessions = 1024;
  int32_t device_state_slots = 64;
  int64_t host_state_bytes = int64_t{4} << 30;
  int64_t prefix_cache_bytes = int64_t{1} << 30;  // automatic prefix cache; 0 = off
  int32_t spill_ahead_slots = 0;  // EngineOptions::spill_ahead_slots
  absl::Duration session_ttl = absl::Minutes(10);
  absl::Duration max_session_ttl = absl::Hours(24);
  int32_t max_new_tokens_limit = 4096;
  int32_t default_max_new_tokens = 64;
  int32_t max_input_tokens = 32768;
  // A Generate stream is cancelled (RESOURCE_EXHAUSTED) once this many bytes wait for its client.
  int64_t stream_buffer_bytes = int64_t{8} << 20;
  SecurityOptions security;  // API keys, TLS (default: none, plaintext)
  // Durable sessions (server/session_store.h): empty = sessions live in memory only.
  std::string state_dir;
  absl::Duration state_save_interval = absl::Seconds(10);  // changed sessions written this often
  bool state_save_after_turn = false;  // written as soon as each turn ends instead
};

// INVALID_ARGUMENT naming the flag for any option out of its range (checked by Start).
absl::Status ValidateServerOptions(const ServerOptions& options);

class LizardServer {
 public:
  // Everything is serving when this returns; startup facts are logged.
  static absl::StatusOr<std::unique_ptr<LizardServer>> Start(const ServerOptions& options);
  ~LizardServer();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  int http_port() const { return http_port_; }  // 0 when off

  // Graceful stop: health NOT_SERVING and new calls UNAVAILABLE at once; running calls get up
  // to `grace` to finish, then the rest are cancelled and everything stops. With a state
  // directory, every session is then written there.
  void Drain(absl::Duration grace);

 private:
  LizardServer() = default;

  // Declared in dependency order: destroyed from the bottom up.
  ServerMetrics metrics_;  // the engine's observer
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<SessionTable> sessions_;
  std::unique_ptr<SessionStore> store_;  // with --state-dir
  std::unique_ptr<LizardService> service_;
  std::unique_ptr<ReflectionV1Relay> reflection_v1_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HttpEndpoint> metrics_endpoint_;
  std::unique_ptr<OpenAiApi> openai_;
  std::unique_ptr<HttpEndpoint> http_endpoint_;  // serves openai_
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  int http_port_ = 0;
};

}  // namespace lizard::server
