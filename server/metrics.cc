#include "server/metrics.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "prometheus/text_serializer.h"

namespace lizard::server {
namespace {

using prometheus::Histogram;

// Buckets from `first` growing by `factor`, `count` of them.
Histogram::BucketBoundaries Exponential(double first, double factor, int count) {
  Histogram::BucketBoundaries buckets;
  for (double b = first; count > 0; b *= factor, --count) buckets.push_back(b);
  return buckets;
}

// "OK", "INVALID_ARGUMENT", ... (the `code` label); absl::StatusCode mirrors grpc::StatusCode
// value for value.
// Raises a counter to an engine total (engine totals never decrease).
void CatchUp(prometheus::Counter& counter, int64_t total) {
  const double missing = static_cast<double>(total) - counter.Value();
  if (missing > 0) counter.Increment(missing);
}

std::string StatusCodeName(grpc::StatusCode code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
}

template <typename Builder>
auto& Single(Builder builder, prometheus::Registry& registry, std::string_view name,
             std::string_view help) {
  return builder.Name(std::string(name)).Help(std::string(help)).Register(registry);
}

}  // namespace

ServerMetrics::ServerMetrics()
    : requests_(Single(prometheus::BuildCounter(), registry_, "lizard_requests_total",
                       "RPCs handled, by method and status code")),
      prompt_tokens_(Single(prometheus::BuildCounter(), registry_, "lizard_prompt_tokens_total",
                            "Prompt (input) tokens that joined a conversation (a failed request counts what it consumed)")
                         .Add({})),
      generated_tokens_(Single(prometheus::BuildCounter(), registry_,
                               "lizard_generated_tokens_total", "Tokens generated")
                            .Add({})),
      ttft_(Single(prometheus::BuildHistogram(), registry_, "lizard_time_to_first_token_seconds",
                   "Time from a Generate request's arrival to its first token")
                .Add({}, Exponential(0.001, 2, 16))),
      itl_(Single(prometheus::BuildHistogram(), registry_, "lizard_inter_token_latency_seconds",
                  "Time between consecutive tokens of one stream")
               .Add({}, Exponential(0.0005, 2, 16))),
      request_duration_(Single(prometheus::BuildHistogram(), registry_,
                               "lizard_request_duration_seconds",
                               "Time from a Generate request's arrival to its end")
                            .Add({}, Exponential(0.005, 2, 16))),
      queue_depth_(Single(prometheus::BuildGauge(), registry_, "lizard_queue_depth",
                          "Requests waiting for the engine")
                       .Add({})),
      num_requests_waiting_(Single(prometheus::BuildGauge(), registry_,
                                   "lizard_num_requests_waiting",
                                   "Requests waiting for the engine (= lizard_queue_depth; the "
                                   "inference gateway's queue gauge)")
                                .Add({})),
      state_pool_utilization_(Single(prometheus::BuildGauge(), registry_,
                                     "lizard_state_pool_utilization",
                                     "Used device state slots / device state slots, 0..1 (the "
                                     "inference gateway's cache utilization gauge)")
                                  .Add({})),
      running_sequences_(Single(prometheus::BuildGauge(), registry_,
                                "lizard_running_sequences", "Sequences the engine is running")
                             .Add({})),
      sessions_(Single(prometheus::BuildGauge(), registry_, "lizard_sessions", "Live sessions")
                    .Add({})),
      batch_size_(Single(prometheus::BuildHistogram(), registry_, "lizard_batch_size",
                         "Sequences advanced per engine step")
                      .Add({}, Exponential(1, 2, 10))),
      batch_tokens_(Single(prometheus::BuildHistogram(), registry_, "lizard_batch_tokens",
                           "Tokens fed per engine step")
                        .Add({}, Exponential(1, 2, 14))),
      step_duration_(Single(prometheus::BuildHistogram(), registry_,
                            "lizard_step_duration_seconds", "Duration of one engine step")
                         .Add({}, Exponential(0.0001, 2, 18))),
      state_slots_(Single(prometheus::BuildGauge(), registry_, "lizard_state_slots",
                          "Sequence states by tier (device slots, host spill) and use")),
      evictions_(Single(prometheus::BuildCounter(), registry_, "lizard_state_evictions_total",
                        "States spilled from device slots to host memory")
                     .Add({})),
      restores_(Single(prometheus::BuildCounter(), registry_, "lizard_state_restores_total",
                       "States brought back from host memory into device slots")
                    .Add({})),
      device_memory_(Single(prometheus::BuildGauge(), registry_, "lizard_device_memory_bytes",
                            "Backend device memory")),
      prefix_cache_queries_(Single(prometheus::BuildCounter(), registry_,
                                   "lizard_prefix_cache_queries_total",
                                   "Requests on an empty state that looked up the prefix cache")
                                .Add({})),
      prefix_cache_hits_(Single(prometheus::BuildCounter(), registry_,
                                "lizard_prefix_cache_hits_total",
                                "Prefix-cache lookups that found a cached prefix")
                             .Add({})),
      prefix_cache_hit_tokens_(Single(prometheus::BuildCounter(), registry_,
                                      "lizard_prefix_cache_hit_tokens_total",
                                      "Prompt tokens served from the prefix cache (not prefilled)")
                                   .Add({})),
      prefix_cache_evictions_(Single(prometheus::BuildCounter(), registry_,
                                     "lizard_prefix_cache_evictions_total",
                                     "Prefix-cache entries dropped to stay within "
                                     "--prefix-cache-bytes")
                                  .Add({})),
      prefix_cache_entries_(Single(prometheus::BuildGauge(), registry_,
                                   "lizard_prefix_cache_entries",
                                   "Prefix-cache entries by tier (device slot, host bytes)")),
      prefix_cache_bytes_(Single(prometheus::BuildGauge(), registry_, "lizard_prefix_cache_bytes",
                                 "Prefix-cache bytes by tier (device slot, host bytes)")) {}

std::string ServerMetrics::Scrape() {
  RefreshGauges();
  return prometheus::TextSerializer().Serialize(registry_.Collect());
}

void ServerMetrics::SetGaugeSources(const Engine* engine, std::function<int64_t()> session_count) {
  absl::MutexLock lock(&mu_);
  engine_ = engine;
  session_count_ = std::move(session_count);
}

void ServerMetrics::CountRequest(std::string_view rpc, grpc::StatusCode code) {
  requests_.Add({{"rpc", std::string(rpc)}, {"code", StatusCodeName(code)}}).Increment();
}

void ServerMetrics::OnStep(const StepStats& stats) {
  batch_size_.Observe(static_cast<double>(stats.batch_sequences));
  batch_tokens_.Observe(static_cast<double>(stats.batch_tokens));
  step_duration_.Observe(absl::ToDoubleSeconds(stats.duration));
}

void ServerMetrics::RefreshGauges() {
  absl::MutexLock lock(&mu_);
  if (engine_ == nullptr) return;
  const EngineStats stats = engine_->Stats();
  queue_depth_.Set(static_cast<double>(stats.queue_depth));
  num_requests_waiting_.Set(static_cast<double>(stats.queue_depth));
  const int32_t slots = stats.device_slots_used + stats.device_slots_free;
  state_pool_utilization_.Set(slots > 0 ? static_cast<double>(stats.device_slots_used) / slots
                                        : 0.0);
  running_sequences_.Set(static_cast<double>(stats.running_sequences));
  sessions_.Set(static_cast<double>(session_count_()));

  // The host tier is measured in bytes; its capacity in states assumes constant-size slots.
  const int64_t slot_bytes = std::max<int64_t>(1, engine_->state_bytes_per_sequence());
  const int64_t host_free = std::max<int64_t>(
      0, (stats.host_bytes_capacity - stats.host_bytes_used) / slot_bytes);
  state_slots_.Add({{"location", "device"}, {"state", "used"}}).Set(stats.device_slots_used);
  state_slots_.Add({{"location", "device"}, {"state", "free"}}).Set(stats.device_slots_free);
  state_slots_.Add({{"location", "host"}, {"state", "used"}})
      .Set(static_cast<double>(stats.host_states));
  state_slots_.Add({{"location", "host"}, {"state", "free"}}).Set(static_cast<double>(host_free));

  CatchUp(prefix_cache_queries_, stats.prefix_cache_queries);
  CatchUp(prefix_cache_hits_, stats.prefix_cache_hits);
  CatchUp(prefix_cache_hit_tokens_, stats.prefix_cache_hit_tokens);
  CatchUp(prefix_cache_evictions_, stats.prefix_cache_evictions);
  prefix_cache_entries_.Add({{"tier", "device"}})
      .Set(static_cast<double>(stats.prefix_cache_device_entries));
  prefix_cache_entries_.Add({{"tier", "host"}})
      .Set(static_cast<double>(stats.prefix_cache_host_entries));
  prefix_cache_bytes_.Add({{"tier", "device"}})
      .Set(static_cast<double>(stats.prefix_cache_device_bytes));
  prefix_cache_bytes_.Add({{"tier", "host"}}).Set(static_cast<double>(stats.prefix_cache_host_bytes));

  const BackendInfo info = engine_->backend_info();
  device_memory_.Add({{"kind", "total"}}).Set(static_cast<double>(info.memory_total_bytes));
  device_memory_.Add({{"kind", "used"}}).Set(static_cast<double>(info.memory_used_bytes));
  device_memory_.Add({{"kind", "weights"}}).Set(static_cast<double>(info.weights_bytes));
  device_memory_.Add({{"kind", "state_pool"}}).Set(static_cast<double>(info.state_pool_bytes));
}

}  // namespace lizard::server
