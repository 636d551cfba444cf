// lizard-loadgen: drives lizard-server with concurrent streaming Generate calls and reports
// throughput, time to first token, inter-token latency and errors.
//
//   lizard-loadgen --target 127.0.0.1:50051 --concurrency 32 --requests 256
//       --prompt-tokens 64:256 --output-tokens 64          (closed loop, 32 clients)
//   lizard-loadgen --rate 20 --duration 30s ...            (Poisson arrivals, open loop)
//   lizard-loadgen --chat-turns 8 --conversations 32 --prompt-tokens 200 --user-tokens 16:32
//       (multi-turn chat: a shared system prompt, each turn re-sends the whole conversation
//        without a session, as OpenAI clients do; reports prefix-cache hits and TTFT per turn)
//
// Prompts are random token ids (so lengths are exact); ignore_eos makes outputs exact too.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "lizard/v1/lizard.grpc.pb.h"
#include "server/dash_flags.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "lizard-server address");
ABSL_FLAG(int, concurrency, 8, "closed loop: clients, each sending its next request when done");
ABSL_FLAG(double, rate, 0, "open loop: Poisson arrivals per second (overrides --concurrency)");
ABSL_FLAG(int, requests, 0, "stop after this many requests (0: use --duration)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(30), "how long to send requests");
ABSL_FLAG(std::string, prompt_tokens, "128", "prompt length: N or MIN:MAX (uniform)");
ABSL_FLAG(std::string, output_tokens, "64", "generated tokens: N or MIN:MAX (uniform)");
ABSL_FLAG(double, temperature, 0, "sampling temperature (0 = greedy)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the prompt and length generator");
ABSL_FLAG(int, chat_turns, 0,
          "multi-turn chat: turns per conversation (0: independent requests); --prompt-tokens is "
          "then the system prompt shared by every conversation");
ABSL_FLAG(int, conversations, 16, "multi-turn chat: conversations to run");
ABSL_FLAG(std::string, user_tokens, "16:32", "multi-turn chat: tokens per user message");

namespace {

struct Range {
  int min = 0, max = 0;
};

absl::StatusOr<Range> ParseRange(const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  Range r;
  if (parts.empty() || parts.size() > 2 || !absl::SimpleAtoi(parts[0], &r.min)) {
    return absl::InvalidArgumentError("expected N or MIN:MAX, got " + text);
  }
  r.max = r.min;
  if (parts.size() == 2 && !absl::SimpleAtoi(parts[1], &r.max)) {
    return absl::InvalidArgumentError("expected N or MIN:MAX, got " + text);
  }
  if (r.min < 1 || r.max < r.min) return absl::InvalidArgumentError("bad range " + text);
  return r;
}

struct Outcome {
  grpc::StatusCode code = grpc::StatusCode::OK;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cached_tokens = 0;       // prompt tokens the server's prefix cache served
  int turn = 0;                    // multi-turn chat: 1-based turn, 0 otherwise
  std::vector<int32_t> tokens;     // generated
  double ttft = -1;                // seconds
  std::vector<double> itl;         // seconds, one per token after the first
  double duration = 0;
};

// All results, filled by the client threads.
class Results {
 public:
  void Add(Outcome o) {
    absl::MutexLock lock(&mu_);
    output_tokens_ += o.output_tokens;
    outcomes_.push_back(std::move(o));
  }
  void Progress(absl::Time start, int64_t inflight) {
    absl::MutexLock lock(&mu_);
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
    int64_t errors = 0;
    for (const Outcome& o : outcomes_) errors += o.code != grpc::StatusCode::OK;
    std::fprintf(stderr, "\r[%6.1fs] done %zu  in flight %lld  output %.1f tok/s  errors %lld   ",
                 elapsed, outcomes_.size(), static_cast<long long>(inflight),
                 output_tokens_ / std::max(elapsed, 1e-9), static_cast<long long>(errors));
  }
  std::vector<Outcome> Take() {
    absl::MutexLock lock(&mu_);
    return std::move(outcomes_);
  }

 private:
  absl::Mutex mu_;
  std::vector<Outcome> outcomes_;
  int64_t output_tokens_ = 0;
};

class LoadGen {
 public:
  LoadGen(std::shared_ptr<grpc::Channel> channel, int64_t vocab, Range prompt, Range output)
      : stub_(lizard::v1::Lizard::NewStub(channel)), vocab_(vocab), prompt_(prompt),
        output_(output), rng_(absl::SeedSeq({absl::GetFlag(FLAGS_seed)})) {}

  lizard::v1::GenerateRequest NextRequest() { return Request(RandomTokens(prompt_)); }

  // Random token ids, a length in `length`: ids below the special tokens at the end of the
  // vocabulary.
  std::vector<int32_t> RandomTokens(Range length) {
    absl::MutexLock lock(&mu_);
    std::vector<int32_t> tokens(
        absl::Uniform<int>(absl::IntervalClosed, rng_, length.min, length.max));
    for (int32_t& t : tokens) t = absl::Uniform<int32_t>(rng_, 0, vocab_ - 2);
    return tokens;
  }

  // A one-shot request for `prompt`, with a random output length.
  lizard::v1::GenerateRequest Request(const std::vector<int32_t>& prompt) {
    absl::MutexLock lock(&mu_);
    lizard::v1::GenerateRequest request;
    request.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
    request.mutable_stopping()->set_max_new_tokens(
        absl::Uniform<int>(absl::IntervalClosed, rng_, output_.min, output_.max));
    request.mutable_stopping()->set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
    return request;
  }

  Outcome Run(const lizard::v1::GenerateRequest& request) {
    Outcome o;
    o.prompt_tokens = request.token_ids().ids_size();
    grpc::ClientContext context;
    const absl::Time start = absl::Now();
    absl::Time last = start;
    auto reader = stub_->Generate(&context, request);
    for (lizard::v1::GenerateResponse r; reader->Read(&r);) {
      if (r.has_usage()) o.cached_tokens = r.usage().cached_tokens();
      const int n = r.token_ids_size();
      if (n == 0) continue;
      o.tokens.insert(o.tokens.end(), r.token_ids().begin(), r.token_ids().end());
      const absl::Time now = absl::Now();
      if (o.output_tokens == 0) {
        o.ttft = absl::ToDoubleSeconds(now - start);
        for (int i = 1; i < n; ++i) o.itl.push_back(0);  // arrived together
      } else {
        // A message carrying k tokens spreads the gap over them.
        for (int i = 0; i < n; ++i) o.itl.push_back(absl::ToDoubleSeconds(now - last) / n);
      }
      o.output_tokens += n;
      last = now;
    }
    o.code = reader->Finish().error_code();
    o.duration = absl::ToDoubleSeconds(absl::Now() - start);
    return o;
  }

 private:
  std::unique_ptr<lizard::v1::Lizard::Stub> stub_;
  const int64_t vocab_;
  const Range prompt_, output_;
  absl::Mutex mu_;
  absl::BitGen rng_;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5));
  return v[i];
}

// "INVALID_ARGUMENT", ...: absl::StatusCode mirrors grpc::StatusCode value for value.
std::string CodeName(grpc::StatusCode code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? absl::StrFormat("code %d", static_cast<int>(code)) : name;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Load generator for lizard-server.");
  lizard::ParseCommandLineWithDashes(argc, argv);
  absl::StatusOr<Range> prompt = ParseRange(absl::GetFlag(FLAGS_prompt_tokens));
  absl::StatusOr<Range> output = ParseRange(absl::GetFlag(FLAGS_output_tokens));
  if (!prompt.ok() || !output.ok()) {
    std::fprintf(stderr, "--prompt-tokens / --output-tokens: %s\n",
                 (!prompt.ok() ? prompt.status() : output.status()).ToString().c_str());
    return 2;
  }

  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials());
  lizard::v1::ModelInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = lizard::v1::Lizard::NewStub(channel)->GetModelInfo(
        &context, lizard::v1::GetModelInfoRequest(), &info);
    if (!status.ok()) {
      std::fprintf(stderr, "GetModelInfo on %s: %s\n", absl::GetFlag(FLAGS_target).c_str(),
                   status.error_message().c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "model %s on %s (%s)\n", info.model_name().c_str(),
               info.backend().c_str(), info.device().c_str());

  LoadGen gen(channel, info.vocab_size(), *prompt, *output);
  Results results;
  const int max_requests = absl::GetFlag(FLAGS_requests);
  const double rate = absl::GetFlag(FLAGS_rate);
  const absl::Time start = absl::Now();
  const absl::Time stop_sending = start + absl::GetFlag(FLAGS_duration);
  std::atomic<int64_t> issued{0}, inflight{0};
  // Claims the next request slot, or returns false when the run is over.
  auto claim = [&] {
    if (max_requests > 0) return issued.fetch_add(1) < max_requests;
    issued.fetch_add(1);
    return absl::Now() < stop_sending;
  };
  auto run_one = [&] {
    ++inflight;
    results.Add(gen.Run(gen.NextRequest()));
    --inflight;
  };
  const int chat_turns = absl::GetFlag(FLAGS_chat_turns);
  absl::StatusOr<Range> user = ParseRange(absl::GetFlag(FLAGS_user_tokens));
  if (!user.ok()) {
    std::fprintf(stderr, "--user-tokens: %s\n", user.status().ToString().c_str());
    return 2;
  }
  const std::vector<int32_t> system_prompt = gen.RandomTokens(*prompt);
  std::atomic<int> conversations{absl::GetFlag(FLAGS_conversations)};
  // One conversation: each turn appends a user message and re-sends the whole history.
  auto run_conversation = [&] {
    std::vector<int32_t> history = system_prompt;
    for (int turn = 1; turn <= chat_turns; ++turn) {
      const std::vector<int32_t> message = gen.RandomTokens(*user);
      history.insert(history.end(), message.begin(), message.end());
      ++inflight;
      Outcome o = gen.Run(gen.Request(history));
      --inflight;
      o.turn = turn;
      history.insert(history.end(), o.tokens.begin(), o.tokens.end());
      const bool failed = o.code != grpc::StatusCode::OK;
      results.Add(std::move(o));
      if (failed) return;
    }
  };

  std::atomic<bool> done{false};
  std::thread progress([&] {
    while (!done) {
      results.Progress(start, inflight);
      absl::SleepFor(absl::Seconds(1));
    }
  });

  std::vector<std::thread> threads;
  if (chat_turns > 0) {
    for (int c = 0; c < absl::GetFlag(FLAGS_concurrency); ++c) {
      threads.emplace_back([&] {
        while (conversations.fetch_sub(1) > 0) run_conversation();
      });
    }
  } else if (rate > 0) {
    // Open loop: exponential gaps between arrivals, each request on its own thread.
    absl::BitGen arrivals(absl::SeedSeq({absl::GetFlag(FLAGS_seed) + 1}));
    absl::Time next = start;
    while (claim()) {
      absl::SleepFor(next - absl::Now());
      threads.emplace_back(run_one);
      next += absl::Seconds(absl::Exponential<double>(arrivals, rate));
    }
  } else {
    for (int c = 0; c < absl::GetFlag(FLAGS_concurrency); ++c) {
      threads.emplace_back([&] {
        while (claim()) run_one();
      });
    }
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  done = true;
  progress.join();
  std::fprintf(stderr, "\n");

  std::vector<Outcome> outcomes = results.Take();
  std::vector<double> ttft, itl, latency;
  std::map<std::string, int> errors;
  int64_t ok = 0, out_tokens = 0, in_tokens = 0;
  for (const Outcome& o : outcomes) {
    if (o.code != grpc::StatusCode::OK) {
      ++errors[CodeName(o.code)];
      continue;
    }
    ++ok;
    out_tokens += o.output_tokens;
    in_tokens += o.prompt_tokens;
    if (o.ttft >= 0) ttft.push_back(o.ttft);
    itl.insert(itl.end(), o.itl.begin(), o.itl.end());
    latency.push_back(o.duration);
  }
  std::printf("requests: %lld ok, %zu total in %.2f s (%.2f req/s)\n",
              static_cast<long long>(ok), outcomes.size(), elapsed, ok / elapsed);
  std::printf("throughput: %.1f output tokens/s, %.1f prompt tokens/s\n", out_tokens / elapsed,
              in_tokens / elapsed);
  std::printf("ttft (ms): p50 %.2f  p90 %.2f  p99 %.2f\n", 1e3 * Percentile(ttft, 50),
              1e3 * Percentile(ttft, 90), 1e3 * Percentile(ttft, 99));
  std::printf("inter-token latency (ms): p50 %.2f  p90 %.2f  p99 %.2f\n",
              1e3 * Percentile(itl, 50), 1e3 * Percentile(itl, 90), 1e3 * Percentile(itl, 99));
  std::printf("request latency (ms): p50 %.1f  p90 %.1f  p99 %.1f\n",
              1e3 * Percentile(latency, 50), 1e3 * Percentile(latency, 90),
              1e3 * Percentile(latency, 99));
  if (chat_turns > 0) {
    // Per turn: prompt tokens, the share the prefix cache served, and TTFT.
    std::printf("turn  requests  prompt tokens (mean)  cached  ttft p50 (ms)  ttft p90 (ms)\n");
    int64_t later_prompt = 0, later_cached = 0;
    for (int turn = 1; turn <= chat_turns; ++turn) {
      std::vector<double> turn_ttft;
      int64_t prompt_sum = 0, cached_sum = 0;
      for (const Outcome& o : outcomes) {
        if (o.turn != turn || o.code != grpc::StatusCode::OK) continue;
        prompt_sum += o.prompt_tokens;
        cached_sum += o.cached_tokens;
        if (o.ttft >= 0) turn_ttft.push_back(o.ttft);
      }
      if (turn > 1) {
        later_prompt += prompt_sum;
        later_cached += cached_sum;
      }
      const double n = std::max<double>(1, static_cast<double>(turn_ttft.size()));
      std::printf("%4d  %8zu  %20.1f  %5.1f%%  %13.2f  %13.2f\n", turn, turn_ttft.size(),
                  prompt_sum / n, 100.0 * cached_sum / std::max<int64_t>(1, prompt_sum),
                  1e3 * Percentile(turn_ttft, 50), 1e3 * Percentile(turn_ttft, 90));
    }
    std::printf("prefix-cache hit rate after turn 1: %.1f%% of prompt tokens\n",
                100.0 * later_cached / std::max<int64_t>(1, later_prompt));
  }
  std::printf("errors:");
  if (errors.empty()) std::printf(" none");
  for (const auto& [code, n] : errors) std::printf(" %s=%d", code.c_str(), n);
  std::printf("\n");
  return errors.empty() ? 0 : 1;
}
