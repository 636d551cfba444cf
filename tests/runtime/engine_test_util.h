// Helpers for engine tests: a sink that records everything, and blocking waits with timeouts.
#pragma once

#include <gtest/gtest.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/time/time.h"
#include "engine/runtime/engine.h"

namespace lizard::testing {

inline constexpr absl::Duration kWait = absl::Seconds(30);

struct Result {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;
  FinishReason reason = FinishReason::kError;
  Usage usage;
  absl::Status status;
  int finish_calls = 0;
  bool token_after_finish = false;
};

class RecordingSink : public TokenSink {
 public:
  // Called (without the sink's lock) after each token; its return value is OnToken's.
  std::function<bool(int32_t token, int count)> on_token;

  bool OnToken(int32_t token, const TokenLogprobs* logprobs) override {
    int count;
    {
      std::lock_guard lock(mu_);
      if (r_.finish_calls > 0) r_.token_after_finish = true;
      r_.tokens.push_back(token);
      if (logprobs != nullptr) r_.logprobs.push_back(*logprobs);
      count = static_cast<int>(r_.tokens.size());
      cv_.notify_all();
    }
    return on_token ? on_token(token, count) : true;
  }
  void OnFinish(FinishReason reason, const Usage& usage, const absl::Status& status) override {
    std::lock_guard lock(mu_);
    ++r_.finish_calls;
    r_.reason = reason;
    r_.usage = usage;
    r_.status = status;
    cv_.notify_all();
  }

  bool WaitFinished(absl::Duration timeout = kWait) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return r_.finish_calls > 0; });
  }
  bool WaitTokens(size_t n, absl::Duration timeout = kWait) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return r_.tokens.size() >= n || r_.finish_calls > 0; });
  }
  Result result() {
    std::lock_guard lock(mu_);
    return r_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  Result r_;
};

// Submits and waits for the end; a failed Submit gives a kError result with its status.
inline Result RunRequest(Engine& engine, const EngineRequest& request) {
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<RequestId> id = engine.Submit(request, sink);
  if (!id.ok()) {
    Result r;
    r.status = id.status();
    return r;
  }
  EXPECT_TRUE(sink->WaitFinished()) << "request did not finish";
  Result r = sink->result();
  EXPECT_EQ(r.finish_calls, 1);
  EXPECT_FALSE(r.token_after_finish);
  return r;
}

inline EngineRequest Greedy(std::vector<int32_t> input, int32_t max_new_tokens, StateId state = 0) {
  EngineRequest r;
  r.state = state;
  r.input = std::move(input);
  r.stopping.max_new_tokens = max_new_tokens;
  r.stopping.ignore_eos = true;
  return r;
}

inline std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace lizard::testing
