#include "server/server.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/runtime/scheduler.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/http_endpoint.h"
#include "server/log.h"
#include "server/openai_api.h"
#include "server/reflection_v1.h"
#include "server/request_log.h"

namespace lizard::server {
namespace {

constexpr char kServiceName[] = "lizard.v1.Lizard";

std::string LayerSummary(const ModelConfig& config) {
  return absl::StrCat(config.num_layers, " layers (", config.num_lizard_layers(), " lizard, ",
                      config.num_softmax_layers(), " softmax), vocab ", config.vocab_size,
                      ", hidden ", config.hidden_size, ", window ", config.window_size,
                      ", meta tokens ", config.num_meta_tokens);
}

// The chat template: --chat-template FILE, else the model's tokenizer_config.json. Without one
// (or with one this server cannot parse, which is logged) chat completions are refused with
// `reason`; a --chat-template that cannot be read or parsed fails startup.
absl::Status LoadChatTemplate(const ServerOptions& options, OpenAiConfig& config) {
  if (!options.chat_template_file.empty()) {
    std::ifstream in(options.chat_template_file);
    if (!in) return absl::NotFoundError(absl::StrCat("--chat-template: cannot read ",
                                                     options.chat_template_file));
    std::stringstream source;
    source << in.rdbuf();
    absl::StatusOr<ChatTemplate> parsed = ChatTemplate::Parse(source.str());
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--chat-template ", options.chat_template_file, ": ", parsed.status().message()));
    }
    config.chat_template = *std::move(parsed);
    return absl::OkStatus();
  }
  const std::string path = options.model_dir + "/tokenizer_config.json";
  absl::StatusOr<ChatTemplate> parsed = ChatTemplate::FromTokenizerConfig(path);
  if (parsed.ok()) {
    config.chat_template = *std::move(parsed);
  } else if (absl::IsNotFound(parsed.status())) {
    config.no_chat_template_reason = "no chat_template in the model's tokenizer_config.json";
  } else {
    config.no_chat_template_reason = absl::StrCat("its chat template: ", parsed.status().message());
    LogInfo(absl::StrCat("chat completions off: ", path, ": ", parsed.status().message()));
  }
  return absl::OkStatus();
}

// CreateBackend with progress in the log: the checkpoint's files and bytes before, then (from the
// loader, after each tensor) tensors and bytes done at most every 5 s, and the time and rate after.
absl::StatusOr<std::unique_ptr<Backend>> LoadBackend(BackendOptions options) {
  if (options.weights.synthetic()) {
    LogInfo("model: random weights (synthetic shape, for benchmarks; no tokenizer)");
    return CreateBackend(options);
  }
  int files = 0;
  int64_t bytes = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(options.weights.model_dir, error)) {
    if (entry.path().extension() != ".safetensors") continue;
    ++files;
    bytes += static_cast<int64_t>(entry.file_size(error));
  }
  constexpr double kMiB = 1 << 20;
  const double mib = static_cast<double>(bytes) / kMiB;
  LogInfo(absl::StrFormat("loading model %s: %d safetensors files, %.1f MiB",
                          options.weights.model_dir, files, mib));
  const absl::Time start = absl::Now();
  absl::Time last_report = start;
  options.weights.on_progress = [&](const LoadProgress& p) {
    const absl::Time now = absl::Now();
    if (now - last_report < absl::Seconds(5) && p.tensors_done != p.tensors_total) return;
    last_report = now;
    LogInfo(absl::StrFormat("loading model: %d/%d tensors, %.1f/%.1f MiB, %.1f s", p.tensors_done,
                            p.tensors_total, p.bytes_done / kMiB, p.bytes_total / kMiB,
                            absl::ToDoubleSeconds(now - start)));
  };
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(options);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (backend.ok()) {
    LogInfo(absl::StrFormat("model loaded in %.2f s (%.1f MiB, %.0f MiB/s)", seconds, mib,
                            seconds > 0 ? mib / seconds : 0.0));
  }
  return backend;
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& o) {
  auto in_range = [](int64_t value, int64_t lo, int64_t hi, const char* flag) -> absl::Status {
    if (value >= lo && value <= hi) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", value, " is outside [", lo, ", ", hi, "]"));
  };
  constexpr int64_t kBig = int64_t{1} << 40;
  for (absl::Status s : {
           in_range(o.port, 0, 65535, "port"),
           in_range(o.metrics_port, 0, 65535, "metrics-port"),
           in_range(o.http_port, 0, 65535, "http-port"),
           in_range(o.http_max_connections, 1, 4096, "http-max-connections"),
           in_range(o.http_max_body_bytes, 1 << 10, int64_t{1} << 30, "http-max-body-bytes"),
           in_range(o.threads, 0, 4096, "threads"),
           in_range(o.max_batch_tokens, 1, 1 << 24, "max-batch-tokens"),
           in_range(o.max_running, 1, 1 << 24, "max-running"),
           in_range(o.max_queue, 1, 1 << 24, "max-queue"),
           in_range(o.max_sessions, 0, 1 << 24, "max-sessions"),
           in_range(o.device_state_slots, 1, 1 << 20, "device-state-slots"),
           in_range(o.host_state_bytes, 0, kBig, "host-state-bytes"),
           in_range(o.prefix_cache_bytes, 0, kBig, "prefix-cache-bytes"),
           in_range(o.spill_ahead_slots, 0, o.device_state_slots, "spill-ahead-slots"),
           in_range(o.max_new_tokens_limit, 1, 1 << 24, "max-new-tokens-limit"),
           in_range(o.default_max_new_tokens, 0, 1 << 24, "default-max-new-tokens"),
           in_range(o.max_input_tokens, 1, 1 << 30, "max-input-tokens"),
           in_range(o.stream_buffer_bytes, 1 << 20, kBig, "stream-buffer-bytes"),
       }) {
    if (!s.ok()) return s;
  }
  // Beside the running sequences' decodes, the oldest prompt may need kPrefillAlignment tokens
  // to reach its next cut (engine/runtime/scheduler.h): without them nothing would progress.
  if (const int64_t least = MinBatchTokens(o.max_running, kPrefillAlignment);
      o.max_batch_tokens < least) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-batch-tokens=", o.max_batch_tokens, " must be at least --max-running (",
        o.max_running, ") + ", kPrefillAlignment - 1, " = ", least,
        ": prompts are cut only at multiples of ", kPrefillAlignment,
        " tokens, so a step needs room for one such block beside the decodes"));
  }
  if (o.http_tls && (o.security.tls_cert_file.empty() || o.security.tls_key_file.empty())) {
    return absl::InvalidArgumentError("--http-tls needs --tls-cert and --tls-key");
  }
  if (o.session_ttl <= absl::ZeroDuration() || o.max_session_ttl < absl::Seconds(1)) {
    return absl::InvalidArgumentError("--session-ttl and --max-session-ttl must be positive");
  }
  if (!o.state_dir.empty() && o.state_save_interval < absl::Milliseconds(100)) {
    return absl::InvalidArgumentError("--state-save-interval must be at least 100ms");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LizardServer>> LizardServer::Start(const ServerOptions& options) {
  if (absl::Status s = ValidateServerOptions(options); !s.ok()) return s;
  std::unique_ptr<LizardServer> server(new LizardServer());
  // Before the model loads: a bad key or certificate file fails startup at once.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options.security, [metrics = &server->metrics_](std::string_view rpc) {
        metrics->CountRequest(rpc, grpc::StatusCode::UNAUTHENTICATED);
        LogRequest({NewRequestId(), std::string(rpc),
                    absl::UnauthenticatedError("missing or unknown API key"), absl::Now()});
      });
  if (!credentials.ok()) return credentials.status();

  BackendOptions backend_options;
  if (options.model_dir.starts_with(kSyntheticModelPrefix)) {
    const std::string shape = options.model_dir.substr(kSyntheticModelPrefix.size());
    absl::StatusOr<ModelConfig> config = ShapePreset(shape);
    if (!config.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model ", options.model_dir, ": ", config.status().message()));
    }
    backend_options.weights = WeightSource::Synthetic(*std::move(config), /*seed=*/1);
  } else {
    backend_options.weights = WeightSource::Directory(options.model_dir);
  }
  backend_options.kind = options.backend;
  backend_options.num_slots = options.device_state_slots;
  backend_options.num_threads = options.threads;
  backend_options.batch_invariant = options.batch_invariant;
  absl::StatusOr<std::unique_ptr<Backend>> backend = LoadBackend(backend_options);
  if (!backend.ok()) {
    return absl::Status(backend.status().code(), absl::StrCat("loading model ", options.model_dir,
                                                              ": ", backend.status().message()));
  }
  const int64_t kv_bytes_per_token = (*backend)->kv_bytes_per_token();

  const std::string tokenizer_path = options.model_dir + "/tokenizer.json";
  if (std::filesystem::exists(tokenizer_path)) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromFile(tokenizer_path);
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat(tokenizer_path, ": ", tokenizer.status().message()));
    }
    server->tokenizer_ = *std::move(tokenizer);
  }

  EngineOptions engine_options;
  engine_options.max_batch_tokens = options.max_batch_tokens;
  engine_options.max_running = options.max_running;
  engine_options.max_queue = options.max_queue;
  // Sessions plus the temporary states of running one-shot requests.
  engine_options.max_states = options.max_sessions + options.max_running + options.max_queue;
  engine_options.host_state_bytes = options.host_state_bytes;
  engine_options.prefix_cache_bytes = options.prefix_cache_bytes;
  engine_options.spill_ahead_slots = options.spill_ahead_slots;
  engine_options.observer = &server->metrics_;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*std::move(backend), engine_options);
  if (!engine.ok()) return engine.status();
  server->engine_ = *std::move(engine);
  Engine& e = *server->engine_;

  server->sessions_ =
      std::make_unique<SessionTable>(&e, options.max_sessions, options.session_ttl);
  server->metrics_.SetGaugeSources(&e, [table = server->sessions_.get()] {
    return table->size();
  });
  if (!options.state_dir.empty()) {
    SessionStoreOptions store_options;
    store_options.dir = options.state_dir;
    store_options.save_interval = options.state_save_interval;
    store_options.save_after_turn = options.state_save_after_turn;
    absl::StatusOr<std::unique_ptr<SessionStore>> store =
        SessionStore::Open(store_options, server->sessions_.get());
    if (!store.ok()) return store.status();
    server->store_ = *std::move(store);
    server->store_->Load();
    server->store_->Start();
  }

  ServiceConfig config;
  config.limits.vocab_size = e.config().vocab_size;
  config.limits.max_new_tokens_limit = options.max_new_tokens_limit;
  config.limits.default_max_new_tokens =
      std::min(options.default_max_new_tokens, options.max_new_tokens_limit);
  config.stream_buffer_bytes = options.stream_buffer_bytes;
  config.limits.max_input_tokens = options.max_input_tokens;
  config.max_session_ttl = options.max_session_ttl;
  config.kv_bytes_per_token = kv_bytes_per_token;
  // The largest state this model can have, plus room for its token lists.
  config.max_session_blob_bytes = e.state_bytes_per_sequence() +
                                  kv_bytes_per_token * e.config().max_position_embeddings +
                                  (int64_t{64} << 20);
  v1::Capacity& capacity = config.capacity;
  capacity.set_device_state_slots(options.device_state_slots);
  capacity.set_host_state_bytes(options.host_state_bytes);
  capacity.set_max_sessions(options.max_sessions);
  capacity.set_max_running(options.max_running);
  capacity.set_max_queue(options.max_queue);
  capacity.set_max_batch_tokens(options.max_batch_tokens);
  capacity.set_max_new_tokens_limit(options.max_new_tokens_limit);
  capacity.set_max_input_tokens(options.max_input_tokens);
  server->service_ = std::make_unique<LizardService>(config, &e, server->tokenizer_.get(),
                                                     server->sessions_.get(), &server->metrics_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  // Without this, gRPC sets SO_REUSEPORT and a second server on a busy port starts silently and
  // takes half of the connections (sessions then look NOT_FOUND at random).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, *credentials, &server->grpc_port_);
  builder.RegisterService(server->service_.get());
  // Reflection v1 beside the library's v1alpha (grpcurl and most current tools ask for v1).
  server->reflection_v1_ = std::make_unique<ReflectionV1Relay>();
  builder.RegisterCallbackGenericService(server->reflection_v1_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for gRPC on ", address, " (address in use or not local?)"));
  }
  server->reflection_v1_->Attach(server->grpc_server_.get());
  // Health answers for the whole server ("") and for the service by name, as probes ask either.
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(true);
  server->grpc_server_->GetHealthCheckService()->SetServingStatus(kServiceName, true);

  HttpEndpointOptions metrics_options;
  metrics_options.host = options.metrics_host;
  metrics_options.port = options.metrics_port;
  absl::StatusOr<std::unique_ptr<HttpEndpoint>> metrics_endpoint = HttpEndpoint::Start(
      metrics_options,
      {{"/metrics", [metrics = &server->metrics_](const httplib::Request&, httplib::Response& res) {
          res.set_content(metrics->Scrape(), "text/plain; version=0.0.4");
        }}});
  if (!metrics_endpoint.ok()) {
    return absl::Status(metrics_endpoint.status().code(),
                        absl::StrCat("metrics: ", metrics_endpoint.status().message()));
  }
  server->metrics_endpoint_ = *std::move(metrics_endpoint);
  server->metrics_port_ = server->metrics_endpoint_->port();

  if (options.http_port != 0) {
    OpenAiConfig api;
    api.model_id = e.config().name;
    api.limits = config.limits;
    api.stream_buffer_bytes = options.stream_buffer_bytes;
    api.max_session_ttl = options.max_session_ttl;
    if (!options.security.api_keys_file.empty()) {
      absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(options.security.api_keys_file);
      if (!keys.ok()) return keys.status();
      api.api_keys = *std::move(keys);
    }
    if (absl::Status s = LoadChatTemplate(options, api); !s.ok()) return s;
    server->openai_ = std::make_unique<OpenAiApi>(std::move(api), server->service_.get(),
                                                  server->tokenizer_.get(),
                                                  server->sessions_.get());
    HttpEndpointOptions http_options;
    http_options.host = options.http_host;
    http_options.port = options.http_port;
    http_options.threads = options.http_max_connections;
    http_options.max_pending = options.http_max_connections;
    http_options.max_body_bytes = options.http_max_body_bytes;
    http_options.error_body = OpenAiApi::ErrorBody;
    if (options.http_tls) {
      http_options.tls_cert_file = options.security.tls_cert_file;
      http_options.tls_key_file = options.security.tls_key_file;
      http_options.tls_client_ca_file = options.security.tls_client_ca_file;
    }
    absl::StatusOr<std::unique_ptr<HttpEndpoint>> http_endpoint =
        HttpEndpoint::Start(http_options, server->openai_->Routes());
    if (!http_endpoint.ok()) {
      return absl::Status(http_endpoint.status().code(),
                          absl::StrCat("http: ", http_endpoint.status().message()));
    }
    server->http_endpoint_ = *std::move(http_endpoint);
    server->http_port_ = server->http_endpoint_->port();
  }

  const ModelConfig& model = e.config();
  const BackendInfo info = e.backend_info();
  LogInfo(absl::StrCat("loaded model ", model.name, " from ", options.model_dir, ": ",
                       LayerSummary(model), server->tokenizer_ ? ", with tokenizer" :
                                                                 ", no tokenizer.json"));
  LogInfo(absl::StrCat("backend ", info.name, " on ", info.device, ", weights ",
                       info.weights_bytes, " bytes, state pool ", info.state_pool_bytes,
                       " bytes", info.detail.empty() ? "" : ", ", info.detail));
  LogInfo(absl::StrCat("state bytes per session: ", e.state_bytes_per_sequence(),
                       kv_bytes_per_token > 0 ? absl::StrCat(" + ", kv_bytes_per_token,
                                                             " per token (softmax KV)")
                                              : std::string()));
  LogInfo(absl::StrCat("capacity: ", options.device_state_slots, " device state slots, ",
                       options.host_state_bytes, " host state bytes, ", options.max_sessions,
                       " sessions, ", options.max_running, " running, ", options.max_queue,
                       " queued, ", options.max_batch_tokens, " tokens per step"));
  LogInfo(absl::StrCat("grpc security: ", DescribeSecurity(options.security)));
  LogInfo(absl::StrCat("grpc listening on ", options.host, ":", server->grpc_port_));
  LogInfo(absl::StrCat("metrics listening on ", options.metrics_host, ":", server->metrics_port_,
                       "/metrics"));
  if (server->http_port_ != 0) {
    LogInfo(absl::StrCat("http listening on ", options.http_host, ":", server->http_port_,
                         " (OpenAI-compatible API, model id ", model.name,
                         options.http_tls ? ", HTTPS" : "", ")"));
  }
  return server;
}

void LizardServer::Drain(absl::Duration grace) {
  LogInfo(absl::StrCat("draining: NOT_SERVING, new requests refused, up to ",
                       absl::FormatDuration(grace), " for running ones"));
  grpc_server_->GetHealthCheckService()->SetServingStatus(false);
  grpc_server_->GetHealthCheckService()->SetServingStatus(kServiceName, false);
  service_->StartDraining();
  if (!service_->AwaitIdle(absl::Now() + grace)) {
    LogInfo("drain grace period over: cancelling the remaining requests");
  }
  // Cancels whatever still runs; each stream then ends with CANCELLED and writes its last
  // message, for which it gets a short while.
  engine_->Shutdown();
  service_->AwaitIdle(absl::Now() + absl::Seconds(2));
  if (store_ != nullptr) {
    // Every request has ended: each session is idle and complete.
    const absl::Time start = absl::Now();
    absl::Status saved = store_->SaveAll();
    LogInfo(absl::StrCat("state-dir: saved ", sessions_->size(), " sessions in ",
                         absl::FormatDuration(absl::Now() - start),
                         saved.ok() ? "" : absl::StrCat(" with errors: ", saved.ToString())));
  }
  // Nothing of ours runs any more: stop at once. (A deadline in the future would be waited out
  // in full whenever a client keeps an idle connection open.)
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  LogInfo("drained");
}

LizardServer::~LizardServer() {
  if (grpc_server_ != nullptr) grpc_server_->Shutdown();
  if (engine_ != nullptr) engine_->Shutdown();
}

}  // namespace lizard::server
