// Prometheus metrics of lizard-server (names, types and labels are the serving contract).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/synchronization/mutex.h"
#include "engine/runtime/engine.h"
#include "grpcpp/support/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace lizard::server {

// Counters and histograms are updated where things happen (RPC handlers, token sinks, the
// engine's per-step observer); gauges are read from Engine::Stats at every scrape.
class ServerMetrics : public EngineObserver {
 public:
  ServerMetrics();

  // Where the gauges come from; set once the engine exists. `engine` must outlive scrapes.
  void SetGaugeSources(const Engine* engine, std::function<int64_t()> session_count);
  // The /metrics page (Prometheus text format 0.0.4): refreshes the gauges, then serializes
  // every metric.
  std::string Scrape();

  void CountRequest(std::string_view rpc, grpc::StatusCode code);
  void AddPromptTokens(int64_t n) { prompt_tokens_.Increment(static_cast<double>(n)); }
  void AddGeneratedTokens(int64_t n) { generated_tokens_.Increment(static_cast<double>(n)); }
  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  void ObserveInterTokenLatency(double seconds) { itl_.Observe(seconds); }
  void ObserveRequestDuration(double seconds) { request_duration_.Observe(seconds); }

  // EngineObserver (engine thread; cheap, never blocks on the engine).
  void OnStep(const StepStats& stats) override;
  void OnStateEvicted() override { evictions_.Increment(); }
  void OnStateRestored() override { restores_.Increment(); }

 private:
  void RefreshGauges();

  prometheus::Registry registry_;

  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generated_tokens_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& request_duration_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& num_requests_waiting_;
  prometheus::Gauge& state_pool_utilization_;
  prometheus::Gauge& running_sequences_;
  prometheus::Gauge& sessions_;
  prometheus::Histogram& batch_size_;
  prometheus::Histogram& batch_tokens_;
  prometheus::Histogram& step_duration_;
  prometheus::Family<prometheus::Gauge>& state_slots_;
  prometheus::Counter& evictions_;
  prometheus::Counter& restores_;
  prometheus::Family<prometheus::Gauge>& device_memory_;
  // The engine's prefix cache: counters follow the engine's totals at each scrape.
  prometheus::Counter& prefix_cache_queries_;
  prometheus::Counter& prefix_cache_hits_;
  prometheus::Counter& prefix_cache_hit_tokens_;
  prometheus::Counter& prefix_cache_evictions_;
  prometheus::Family<prometheus::Gauge>& prefix_cache_entries_;
  prometheus::Family<prometheus::Gauge>& prefix_cache_bytes_;

  absl::Mutex mu_;
  const Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::function<int64_t()> session_count_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lizard::server
