// lizard-server: serves a Lizard model over gRPC (see docs/server.md).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/dash_flags.h"
#include "server/log.h"
#include "server/server.h"

ABSL_FLAG(std::string, model, "",
          "model directory (config.json, safetensors, tokenizer.json); default: the shipped "
          "models/lizard-demo (a trained Lizard model); synthetic:SHAPE (tiny, llama3.2-1b, "
          "llama3-8b): random weights of that shape, no tokenizer, for load tests");
namespace {
// The flags' defaults are ServerOptions' defaults, so the two cannot drift apart.
const lizard::server::ServerOptions& Defaults() {
  static const lizard::server::ServerOptions defaults;
  return defaults;
}
}  // namespace

ABSL_FLAG(std::string, host, Defaults().host, "address to listen on (gRPC)");
ABSL_FLAG(int, port, Defaults().port, "gRPC port (0 = any free port, logged at startup)");
ABSL_FLAG(std::string, metrics_host, Defaults().metrics_host,
          "address of the Prometheus /metrics endpoint (in Kubernetes: 0.0.0.0 or the pod IP)");
ABSL_FLAG(int, metrics_port, Defaults().metrics_port,
          "Prometheus /metrics port (0 = any free port)");
ABSL_FLAG(std::string, http_host, Defaults().http_host,
          "address of the OpenAI-compatible HTTP API");
ABSL_FLAG(int, http_port, Defaults().http_port, "OpenAI-compatible HTTP API port (0 = off)");
ABSL_FLAG(int, http_max_connections, Defaults().http_max_connections,
          "HTTP connections served at once (a streaming completion holds one)");
ABSL_FLAG(int64_t, http_max_body_bytes, Defaults().http_max_body_bytes,
          "largest HTTP request body (413 beyond)");
ABSL_FLAG(std::string, chat_template, "",
          "file holding a Jinja chat template for /v1/chat/completions (default: the "
          "chat_template of the model's tokenizer_config.json)");
ABSL_FLAG(std::string, backend, "auto", "auto | cpu | cuda");
ABSL_FLAG(int, threads, Defaults().threads, "CPU backend threads (0 = all cores)");
ABSL_FLAG(bool, batch_invariant, Defaults().batch_invariant,
          "CUDA: projections whose results do not depend on the batch (false: cuBLAS, faster "
          "long prefills, tokens may then differ at near ties with what shares a step)");
ABSL_FLAG(int, max_batch_tokens, Defaults().max_batch_tokens,
          "tokens per engine step (decodes + prefill chunks)");
ABSL_FLAG(int, max_running, Defaults().max_running, "sequences running at once");
ABSL_FLAG(int, max_queue, Defaults().max_queue, "waiting requests before RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_sessions, Defaults().max_sessions,
          "live sessions before RESOURCE_EXHAUSTED");
ABSL_FLAG(int, device_state_slots, Defaults().device_state_slots,
          "sequence state slots on the device");
ABSL_FLAG(int64_t, host_state_bytes, Defaults().host_state_bytes,
          "host memory for spilled states");
ABSL_FLAG(int64_t, prefix_cache_bytes, Defaults().prefix_cache_bytes,
          "bytes of recurrent-state snapshots kept to skip prefilling repeated prompt prefixes "
          "(device slots that are free, then host memory); 0 disables the prefix cache");
ABSL_FLAG(int, spill_ahead_slots, Defaults().spill_ahead_slots,
          "device state slots kept free by spilling idle states to the host between steps, one "
          "a step (0: spill only when a slot is needed)");
ABSL_FLAG(absl::Duration, session_ttl, Defaults().session_ttl,
          "idle time before a session expires");
ABSL_FLAG(absl::Duration, max_session_ttl, Defaults().max_session_ttl,
          "largest per-session ttl_seconds a client may ask for");
ABSL_FLAG(int, default_max_new_tokens, Defaults().default_max_new_tokens,
          "max_new_tokens when a request leaves it unset");
ABSL_FLAG(int, max_new_tokens_limit, Defaults().max_new_tokens_limit,
          "largest max_new_tokens a request may ask for");
ABSL_FLAG(int, max_input_tokens, Defaults().max_input_tokens,
          "largest input (tokens) of one request");
ABSL_FLAG(int64_t, stream_buffer_bytes, Defaults().stream_buffer_bytes,
          "bytes of responses that may wait for a Generate client that does not read; past "
          "that the stream ends with RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, api_keys_file, "",
          "file of API keys, one per line: every call but health/reflection then needs the "
          "metadata 'authorization: Bearer <key>'");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: gRPC over TLS (with --tls-key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificates: mutual TLS, clients need a certificate signed by one");
ABSL_FLAG(bool, http_tls, false,
          "serve the HTTP API over HTTPS with --tls-cert and --tls-key (and --tls-client-ca)");
ABSL_FLAG(absl::Duration, drain_grace, absl::Seconds(30),
          "on SIGTERM/SIGINT, how long running requests may still take");
ABSL_FLAG(std::string, state_dir, "",
          "directory where sessions are kept across restarts: loaded at start, written on "
          "drain and every --state-save-interval (empty = sessions live in memory only)");
ABSL_FLAG(absl::Duration, state_save_interval, Defaults().state_save_interval,
          "with --state-dir: how often changed sessions are written (a crash loses at most "
          "this much)");
ABSL_FLAG(bool, state_save_after_turn, Defaults().state_save_after_turn,
          "with --state-dir: write a session as soon as each turn ends");
ABSL_FLAG(std::string, log_format, "text",
          "text | json: log lines (one per request, startup, errors) as text or JSON lines");

namespace {

// --model's default: models/lizard-demo of an installed tree (<prefix>/bin/lizard-server), else
// of the source tree this binary was built from.
std::string DefaultModelDir() {
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    const std::filesystem::path installed =
        std::filesystem::path(std::string(exe, n)).parent_path().parent_path() / "models" /
        "lizard-demo";
    if (std::filesystem::exists(installed / "config.json")) return installed.string();
  }
  return LIZARD_SOURCE_MODEL_DIR;
}

int g_stop_pipe[2] = {-1, -1};

void OnStopSignal(int signal_number) {
  // Async-signal-safe: one write of a few bytes to a pipe is atomic.
  const ssize_t written = write(g_stop_pipe[1], &signal_number, sizeof(signal_number));
  (void)written;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves a Lizard language model over gRPC and an OpenAI-compatible HTTP API (docs/server.md).\n"
      "Flags may be written with dashes or underscores (--metrics-port = --metrics_port).");
  absl::FlagsUsageConfig usage;
  // --help lists this program's flags (by default Abseil looks for a file named after the
  // binary, finds none and prints "No flags matched").
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.version_string = [] {
    return absl::StrCat("lizard-server ", LIZARD_VERSION, " (", LIZARD_BUILD, ")\n");
  };
  absl::SetFlagsUsageConfig(usage);
  lizard::ParseCommandLineWithDashes(argc, argv);
  using lizard::server::LogError;
  absl::StatusOr<lizard::server::LogFormat> log_format =
      lizard::server::ParseLogFormat(absl::GetFlag(FLAGS_log_format));
  if (!log_format.ok()) {
    LogError(log_format.status().message());
    return 2;
  }
  lizard::server::SetLogFormat(*log_format);

  lizard::server::ServerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  if (options.model_dir.empty()) options.model_dir = DefaultModelDir();
  options.host = absl::GetFlag(FLAGS_host);
  options.port = absl::GetFlag(FLAGS_port);
  options.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.http_host = absl::GetFlag(FLAGS_http_host);
  options.http_port = absl::GetFlag(FLAGS_http_port);
  options.http_max_connections = absl::GetFlag(FLAGS_http_max_connections);
  options.http_max_body_bytes = absl::GetFlag(FLAGS_http_max_body_bytes);
  options.chat_template_file = absl::GetFlag(FLAGS_chat_template);
  absl::StatusOr<lizard::BackendKind> backend =
      lizard::ParseBackendKind(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    LogError(absl::StrCat("--backend: ", backend.status().message()));
    return 2;
  }
  options.backend = *backend;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.batch_invariant = absl::GetFlag(FLAGS_batch_invariant);
  options.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  options.max_running = absl::GetFlag(FLAGS_max_running);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.device_state_slots = absl::GetFlag(FLAGS_device_state_slots);
  options.host_state_bytes = absl::GetFlag(FLAGS_host_state_bytes);
  options.prefix_cache_bytes = absl::GetFlag(FLAGS_prefix_cache_bytes);
  options.spill_ahead_slots = absl::GetFlag(FLAGS_spill_ahead_slots);
  options.session_ttl = absl::GetFlag(FLAGS_session_ttl);
  options.max_session_ttl = absl::GetFlag(FLAGS_max_session_ttl);
  options.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_input_tokens = absl::GetFlag(FLAGS_max_input_tokens);
  options.security.api_keys_file = absl::GetFlag(FLAGS_api_keys_file);
  options.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.security.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.security.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.http_tls = absl::GetFlag(FLAGS_http_tls);
  options.stream_buffer_bytes = absl::GetFlag(FLAGS_stream_buffer_bytes);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.state_save_interval = absl::GetFlag(FLAGS_state_save_interval);
  options.state_save_after_turn = absl::GetFlag(FLAGS_state_save_after_turn);
  if (absl::Status s = lizard::server::ValidateServerOptions(options); !s.ok()) {
    LogError(s.message());
    return 2;
  }

  // SIGTERM/SIGINT are caught by a handler that writes the signal number to a pipe, which this
  // thread reads. (Blocking them and calling sigwait is not enough: a linked library may start
  // threads before main, and a signal delivered to one of those would end the process without
  // a drain.)
  if (pipe2(g_stop_pipe, O_CLOEXEC) != 0) {
    LogError("cannot create the signal pipe");
    return 1;
  }
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  // A client that disconnects must not end the process: OpenSSL (HTTPS) writes to sockets
  // without MSG_NOSIGNAL. Every write checks for EPIPE instead.
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<lizard::server::LizardServer>> server =
      lizard::server::LizardServer::Start(options);
  if (!server.ok()) {
    LogError(absl::StrCat("startup failed: ", server.status().ToString()));
    return 1;
  }
  int signal_number = 0;
  while (read(g_stop_pipe[0], &signal_number, sizeof(signal_number)) != sizeof(signal_number)) {
    // EINTR: the handler ran in this thread; the number is in the pipe now.
  }
  lizard::server::LogInfo(absl::StrCat("received ", strsignal(signal_number)));
  (*server)->Drain(absl::GetFlag(FLAGS_drain_grace));
  server->reset();
  return 0;
}
