// Engine tests over the FakeBackend (see fake_backend.h): every expectation is exact.
#include "engine/runtime/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "tests/runtime/engine_test_util.h"
#include "tests/runtime/fake_backend.h"

namespace lizard::testing {
namespace {

constexpr int64_t kVocab = 64;

std::vector<int32_t> RandomTokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(rng() % kVocab);
  return out;
}

class StepCounter : public EngineObserver {
 public:
  void OnStep(const StepStats& s) override {
    steps++;
    int64_t seen = max_batch_sequences.load();
    while (s.batch_sequences > seen &&
           !max_batch_sequences.compare_exchange_weak(seen, s.batch_sequences)) {
    }
  }
  void OnStateEvicted() override { evicted++; }
  void OnStateRestored() override { restored++; }
  std::atomic<int64_t> steps{0}, max_batch_sequences{0}, evicted{0}, restored{0};
};

struct Harness {
  explicit Harness(FakeBackendOptions backend_options = {}, EngineOptions options = {}) {
    backend_options.vocab = kVocab;
    auto made = Engine::Create(std::make_unique<FakeBackend>(backend_options, control), options);
    EXPECT_TRUE(made.ok()) << made.status();
    engine = *std::move(made);
  }
  std::shared_ptr<FakeControl> control = std::make_shared<FakeControl>();
  std::unique_ptr<Engine> engine;
};

TEST(EngineTest, GreedyStreamMatchesReference) {
  Harness h;
  const std::vector<int32_t> prompt = RandomTokens(13, 1);
  const Result r = RunRequest(*h.engine, Greedy(prompt, 10));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.reason, FinishReason::kLength);
  EXPECT_EQ(r.tokens, FakeGreedy(prompt, kVocab, 10));
  EXPECT_EQ(r.usage.prompt_tokens, 13);
  EXPECT_EQ(r.usage.generated_tokens, 10);
  EXPECT_EQ(r.usage.state_tokens, 23);
  EXPECT_EQ(h.engine->Stats().states, 0);  // the temporary state is gone
}

TEST(EngineTest, ValidationErrors) {
  Harness h;
  auto code = [&](EngineRequest r) {
    return h.engine->Submit(std::move(r), std::make_shared<RecordingSink>()).status().code();
  };
  EXPECT_EQ(code(Greedy({}, 1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1, kVocab}, 1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({-1}, 1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1}, -1)), absl::StatusCode::kInvalidArgument);
  EngineRequest r = Greedy({1}, 1);
  r.sampling.temperature = -0.5f;
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = Greedy({1}, 1);
  r.sampling.top_p = 0.0f;
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = Greedy({1}, 1);
  r.sampling.min_p = 1.5f;
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  r = Greedy({1}, 1);
  r.sampling.repetition_penalty = 0.0f;
  EXPECT_EQ(code(r), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Greedy({1}, 1, /*state=*/12345)), absl::StatusCode::kNotFound);
}

TEST(EngineTest, StopTokenEosAndSinkStop) {
  const std::vector<int32_t> prompt = RandomTokens(5, 2);
  const std::vector<int32_t> ref = FakeGreedy(prompt, kVocab, 12);
  // The first token that did not occur before it, from the 4th on.
  size_t at = 3;
  while (std::find(ref.begin(), ref.begin() + at, ref[at]) != ref.begin() + at) ++at;
  const std::vector<int32_t> expected(ref.begin(), ref.begin() + at + 1);

  Harness h({.eos_token_ids = {ref[at]}});
  EngineRequest r = Greedy(prompt, 12);
  r.stopping.ignore_eos = false;
  Result res = RunRequest(*h.engine, r);
  EXPECT_EQ(res.reason, FinishReason::kEos);
  EXPECT_EQ(res.tokens, expected);  // the EOS token is streamed and counted

  r.stopping.ignore_eos = true;
  res = RunRequest(*h.engine, r);
  EXPECT_EQ(res.reason, FinishReason::kLength);
  EXPECT_EQ(res.tokens, ref);

  r.stopping.stop_token_ids = {ref[at]};
  res = RunRequest(*h.engine, r);
  EXPECT_EQ(res.reason, FinishReason::kStop);
  EXPECT_EQ(res.tokens, expected);

  auto sink = std::make_shared<RecordingSink>();
  sink->on_token = [](int32_t, int count) { return count < 2; };
  ASSERT_TRUE(h.engine->Submit(Greedy(prompt, 12), sink).ok());
  ASSERT_TRUE(sink->WaitFinished());
  res = sink->result();
  EXPECT_EQ(res.reason, FinishReason::kStop);
  EXPECT_EQ(res.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 2));
  EXPECT_EQ(res.usage.generated_tokens, 2);
}

TEST(EngineTest, LogprobsOfGreedyTokens) {
  Harness h;
  const std::vector<int32_t> prompt = RandomTokens(4, 3);
  EngineRequest r = Greedy(prompt, 1);
  r.logprobs = 3;
  const Result res = RunRequest(*h.engine, r);
  ASSERT_EQ(res.logprobs.size(), 1u);
  const TokenLogprobs& lp = res.logprobs[0];
  EXPECT_EQ(lp.chosen.token, res.tokens[0]);
  ASSERT_EQ(lp.top.size(), 3u);
  EXPECT_EQ(lp.top[0].token, res.tokens[0]);
  EXPECT_FLOAT_EQ(lp.top[0].logprob, lp.chosen.logprob);
  EXPECT_GE(lp.top[0].logprob, lp.top[1].logprob);
  EXPECT_GE(lp.top[1].logprob, lp.top[2].logprob);
  EXPECT_LT(lp.chosen.logprob, 0.0f);
}

// N requests of different lengths, greedy and seeded sampling, all in flight together with a
// small token budget (chunked prefill), give exactly the tokens each gives alone.
TEST(EngineTest, ConcurrentRequestsEqualSequentialOnes) {
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 10; ++i) {
    EngineRequest r = Greedy(RandomTokens(1 + 7 * i, 100 + i), 6 + i);
    if (i % 2 == 1) {
      r.sampling = {.temperature = 0.9f,
                    .top_k = 20,
                    .top_p = 0.9f,
                    .repetition_penalty = 1.2f,
                    .frequency_penalty = 0.3f,
                    .seed = static_cast<uint64_t>(1000 + i)};
    }
    requests.push_back(r);
  }
  std::vector<Result> alone;
  {
    Harness h;
    for (const EngineRequest& r : requests) alone.push_back(RunRequest(*h.engine, r));
  }

  StepCounter counter;
  Harness h({}, {.max_batch_tokens = 16, .max_running = 8, .prefill_alignment = 4,
                 .observer = &counter});
  h.control->Pause();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const EngineRequest& r : requests) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(h.engine->Submit(r, sinks.back()).ok());
  }
  h.control->Resume();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished());
    EXPECT_EQ(sinks[i]->result().tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(sinks[i]->result().reason, FinishReason::kLength);
  }
  EXPECT_GT(counter.max_batch_sequences.load(), 4);
  EXPECT_LE(h.control->max_step_tokens(), 16);
}

// A large vocabulary and many rows: the rows of a step are sampled on several threads, and the
// tokens are still those of each request alone.
TEST(EngineTest, ParallelSamplingEqualsSequential) {
  const int64_t vocab = 32768;  // 12 rows x 32768 >= the parallel sampling threshold
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 12; ++i) {
    EngineRequest r = Greedy(RandomTokens(2 + i, 300 + i), 5);
    if (i % 3 != 0) {
      r.sampling = {.temperature = 0.8f, .top_p = 0.9f, .seed = static_cast<uint64_t>(i)};
      r.logprobs = 2;
    }
    requests.push_back(r);
  }
  auto run = [&](bool together) {
    auto control = std::make_shared<FakeControl>();
    std::unique_ptr<Engine> engine = *Engine::Create(
        std::make_unique<FakeBackend>(FakeBackendOptions{.num_slots = 16, .vocab = vocab}, control),
        {.max_running = 16});
    std::vector<Result> results;
    if (!together) {
      for (const EngineRequest& r : requests) results.push_back(RunRequest(*engine, r));
      return results;
    }
    control->Pause();
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    for (const EngineRequest& r : requests) {
      sinks.push_back(std::make_shared<RecordingSink>());
      EXPECT_TRUE(engine->Submit(r, sinks.back()).ok());
    }
    control->Resume();
    for (auto& s : sinks) {
      EXPECT_TRUE(s->WaitFinished());
      results.push_back(s->result());
    }
    EXPECT_GE(control->max_step_sequences(), 12);
    return results;
  };
  const std::vector<Result> alone = run(false), together = run(true);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
    ASSERT_EQ(together[i].logprobs.size(), alone[i].logprobs.size());
    for (size_t t = 0; t < alone[i].logprobs.size(); ++t) {
      EXPECT_EQ(together[i].logprobs[t].chosen.logprob, alone[i].logprobs[t].chosen.logprob);
    }
  }
}

TEST(EngineTest, TwoTurnsEqualOneRequestOverTheHistory) {
  Harness h;
  const std::vector<int32_t> a = RandomTokens(9, 4), b = RandomTokens(5, 5);
  absl::StatusOr<StateId> state = h.engine->CreateState();
  ASSERT_TRUE(state.ok());
  const Result t1 = RunRequest(*h.engine, Greedy(a, 4, *state));
  EXPECT_EQ(t1.usage.state_tokens, 13);
  const Result t2 = RunRequest(*h.engine, Greedy(b, 6, *state));
  EXPECT_EQ(t2.usage.state_tokens, 13 + 5 + 6);
  EXPECT_EQ(t2.usage.prompt_tokens, 5);

  const Result one = RunRequest(*h.engine, Greedy(Concat({a, t1.tokens, b}), 6));
  EXPECT_EQ(t2.tokens, one.tokens);
  absl::StatusOr<StateInfo> info = h.engine->GetStateInfo(*state);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->num_tokens, 24);
  EXPECT_FALSE(info->busy);
  EXPECT_EQ(info->location, StateLocation::kDevice);
  EXPECT_TRUE(h.engine->FreeState(*state).ok());
  EXPECT_EQ(h.engine->FreeState(*state).code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, PrefillOnlyRequestThenTurn) {
  Harness h;
  const std::vector<int32_t> prefix = RandomTokens(30, 6), q = RandomTokens(3, 7);
  StateId state = *h.engine->CreateState();
  const Result p = RunRequest(*h.engine, Greedy(prefix, 0, state));
  EXPECT_EQ(p.reason, FinishReason::kLength);
  EXPECT_TRUE(p.tokens.empty());
  EXPECT_EQ(p.usage.state_tokens, 30);
  const Result t = RunRequest(*h.engine, Greedy(q, 5, state));
  EXPECT_EQ(t.tokens, FakeGreedy(Concat({prefix, q}), kVocab, 5));
}

TEST(EngineTest, ForkedStatesContinueIdentically) {
  Harness h;
  const std::vector<int32_t> a = RandomTokens(7, 8), b = RandomTokens(4, 9);
  StateId s = *h.engine->CreateState();
  const Result t1 = RunRequest(*h.engine, Greedy(a, 3, s));
  absl::StatusOr<StateId> f = h.engine->ForkState(s);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(h.engine->GetStateInfo(*f)->num_tokens, 10);
  const Result on_fork = RunRequest(*h.engine, Greedy(b, 5, *f));
  const Result on_source = RunRequest(*h.engine, Greedy(b, 5, s));
  EXPECT_EQ(on_fork.tokens, on_source.tokens);
  EXPECT_EQ(on_fork.tokens, FakeGreedy(Concat({a, t1.tokens, b}), kVocab, 5));
  EXPECT_EQ(h.engine->ForkState(777).status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, BusyStateIsAbortedAndCannotBeFreed) {
  Harness h;
  StateId s = *h.engine->CreateState();
  h.control->Pause();
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(h.engine->Submit(Greedy({1, 2, 3}, 2, s), sink).ok());
  EXPECT_EQ(h.engine->Submit(Greedy({4}, 2, s), std::make_shared<RecordingSink>()).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(h.engine->FreeState(s).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(h.engine->GetStateInfo(s)->busy);
  h.control->Resume();
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_TRUE(h.engine->ForkState(s).ok());
}

TEST(EngineTest, QueueFullIsResourceExhausted) {
  Harness h({}, {.max_running = 1, .max_queue = 2});
  h.control->Pause();
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  auto submit = [&] {
    sinks.push_back(std::make_shared<RecordingSink>());
    return h.engine->Submit(Greedy({5, 6}, 3), sinks.back()).status();
  };
  ASSERT_TRUE(submit().ok());
  ASSERT_TRUE(h.control->WaitUntilBlocked(kWait));  // the first is running, not queued
  EXPECT_TRUE(submit().ok());
  EXPECT_TRUE(submit().ok());
  EXPECT_EQ(submit().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(h.engine->Stats().queue_depth, 2);
  h.control->Resume();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished());
    EXPECT_EQ(sinks[i]->result().tokens, FakeGreedy({5, 6}, kVocab, 3));
  }
}

TEST(EngineTest, MaxStatesIsResourceExhausted) {
  Harness h({}, {.max_states = 2});
  ASSERT_TRUE(h.engine->CreateState().ok());
  ASSERT_TRUE(h.engine->CreateState().ok());
  EXPECT_EQ(h.engine->CreateState().status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RunRequest(*h.engine, Greedy({1}, 1)).status.code(),
            absl::StatusCode::kResourceExhausted);
}

// Cancelling mid-stream leaves the state holding exactly the history plus what was streamed.
TEST(EngineTest, CancelMidStreamKeepsConsistentState) {
  Harness h;
  const std::vector<int32_t> a = RandomTokens(6, 10), b = RandomTokens(3, 11);
  StateId s = *h.engine->CreateState();
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<RequestId> id = h.engine->Submit(Greedy(a, 1 << 30, s), sink);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(sink->WaitTokens(3));
  h.engine->Cancel(*id);
  ASSERT_TRUE(sink->WaitFinished());
  const Result r = sink->result();
  EXPECT_EQ(r.reason, FinishReason::kCancelled);
  EXPECT_GE(r.tokens.size(), 3u);
  EXPECT_EQ(r.usage.generated_tokens, static_cast<int64_t>(r.tokens.size()));
  EXPECT_EQ(r.usage.state_tokens, static_cast<int64_t>(a.size() + r.tokens.size()));
  EXPECT_EQ(h.engine->GetStateInfo(s)->num_tokens, r.usage.state_tokens);
  EXPECT_EQ(r.tokens, FakeGreedy(a, kVocab, r.tokens.size()));

  // The state says exactly what the cancelled turn added: its input, then every generated token.
  const StateInfo info = *h.engine->GetStateInfo(s);
  EXPECT_EQ(info.last_turn_tokens, Concat({a, r.tokens}));
  EXPECT_EQ(info.last_turn_input_tokens, static_cast<int64_t>(a.size()));

  const Result next = RunRequest(*h.engine, Greedy(b, 4, s));
  EXPECT_EQ(next.tokens, FakeGreedy(Concat({a, r.tokens, b}), kVocab, 4));
  EXPECT_EQ(h.engine->GetStateInfo(s)->last_turn_tokens, Concat({b, next.tokens}));
  h.engine->Cancel(*id);  // finished: ignored
}

// Regression: the engine reuses one StepOutput, and a step that samples no row (a prefill-only
// request, or a prompt chunk that is not the last) once saw the previous step's tokens and
// failed with INTERNAL "backend returned 1 tokens, expected 0" on a warm engine.
TEST(EngineTest, StepsThatSampleNothingWorkOnAWarmEngine) {
  Harness h({}, {.max_batch_tokens = 8, .max_running = 4, .prefill_alignment = 4});
  const std::vector<int32_t> warm = RandomTokens(3, 30), prefix = RandomTokens(5, 31),
                             longer = RandomTokens(40, 32);
  ASSERT_TRUE(RunRequest(*h.engine, Greedy(warm, 4)).status.ok());

  StateId s = *h.engine->CreateState();
  const Result prefill = RunRequest(*h.engine, Greedy(prefix, 0, s));
  ASSERT_TRUE(prefill.status.ok()) << prefill.status;
  EXPECT_EQ(h.engine->GetStateInfo(s)->num_tokens, 5);

  const Result chunked = RunRequest(*h.engine, Greedy(longer, 3));  // 5 steps of 8 tokens
  ASSERT_TRUE(chunked.status.ok()) << chunked.status;
  EXPECT_EQ(chunked.tokens, FakeGreedy(longer, kVocab, 3));

  const Result turn = RunRequest(*h.engine, Greedy(longer, 2, s));
  ASSERT_TRUE(turn.status.ok()) << turn.status;
  EXPECT_EQ(turn.tokens, FakeGreedy(Concat({prefix, longer}), kVocab, 2));
}

TEST(EngineTest, CancelFromInsideTheSinkAndBeforeAdmission) {
  Harness h;
  auto sink = std::make_shared<RecordingSink>();
  std::atomic<RequestId> id{0};
  Engine* engine = h.engine.get();
  h.control->Pause();  // so the id is known before the first token
  sink->on_token = [&](int32_t, int count) {
    if (count == 2) engine->Cancel(id.load());
    return true;
  };
  id = *h.engine->Submit(Greedy({7, 8}, 100), sink);
  h.control->Resume();
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->result().reason, FinishReason::kCancelled);
  EXPECT_EQ(sink->result().tokens.size(), 2u);  // takes effect at the next step

  h.control->Pause();
  auto first = std::make_shared<RecordingSink>();
  ASSERT_TRUE(h.engine->Submit(Greedy({1}, 5), first).ok());
  ASSERT_TRUE(h.control->WaitUntilBlocked(kWait));
  StateId s = *h.engine->CreateState();
  auto queued = std::make_shared<RecordingSink>();
  RequestId q = *h.engine->Submit(Greedy({9, 9, 9}, 5, s), queued);
  h.engine->Cancel(q);
  h.control->Resume();
  ASSERT_TRUE(queued->WaitFinished());
  EXPECT_EQ(queued->result().reason, FinishReason::kCancelled);
  EXPECT_TRUE(queued->result().tokens.empty());
  EXPECT_EQ(queued->result().usage.state_tokens, 3);  // accepted input stays in the session
  ASSERT_TRUE(first->WaitFinished());
  EXPECT_EQ(RunRequest(*h.engine, Greedy({4}, 3, s)).tokens, FakeGreedy({9, 9, 9, 4}, kVocab, 3));
}

// Sinks run with no engine lock held: calling back into the engine must not deadlock.
TEST(EngineTest, SinkMayCallBackIntoTheEngine) {
  Harness h({.num_slots = 2});
  Engine* engine = h.engine.get();
  StateId idle = *h.engine->CreateState();
  ASSERT_TRUE(RunRequest(*h.engine, Greedy({1, 2}, 1, idle)).status.ok());
  auto follow_up = std::make_shared<RecordingSink>();
  std::vector<StateId> forks;
  auto sink = std::make_shared<RecordingSink>();
  sink->on_token = [&](int32_t, int count) {
    forks.push_back(*engine->ForkState(idle));  // may spill `idle` to the host: a backend call
    EXPECT_EQ(engine->backend_info().name, "fake");
    EXPECT_GE(engine->Stats().running_sequences, 1);
    if (count == 2) EXPECT_TRUE(engine->Submit(Greedy({3}, 2), follow_up).ok());
    return true;
  };
  ASSERT_TRUE(h.engine->Submit(Greedy({4, 5}, 3), sink).ok());
  ASSERT_TRUE(sink->WaitFinished());
  ASSERT_TRUE(follow_up->WaitFinished());
  EXPECT_EQ(follow_up->result().tokens, FakeGreedy({3}, kVocab, 2));
  ASSERT_EQ(forks.size(), 3u);
  for (StateId f : forks) EXPECT_EQ(h.engine->GetStateInfo(f)->num_tokens, 3);
}

// With fewer device slots than sessions, states are spilled to the host and restored, and every
// session's tokens are the same as with plenty of slots.
TEST(EngineTest, SpillAndRestoreGiveIdenticalTokens) {
  auto run_sessions = [](int32_t slots, bool concurrent, EngineStats* stats) {
    StepCounter counter;
    Harness h({.num_slots = slots}, {.observer = &counter});
    std::vector<StateId> states;
    for (int i = 0; i < 5; ++i) states.push_back(*h.engine->CreateState());
    std::vector<std::vector<int32_t>> out(states.size());
    for (int round = 0; round < 3; ++round) {
      std::vector<std::shared_ptr<RecordingSink>> sinks;
      for (size_t i = 0; i < states.size(); ++i) {
        EngineRequest r = Greedy(RandomTokens(2 + round + i, round * 10 + i), 4, states[i]);
        if (i % 2 == 0) r.sampling = {.temperature = 1.0f, .seed = i};
        sinks.push_back(std::make_shared<RecordingSink>());
        EXPECT_TRUE(h.engine->Submit(r, sinks.back()).ok());
        if (!concurrent) EXPECT_TRUE(sinks.back()->WaitFinished());
      }
      for (size_t i = 0; i < states.size(); ++i) {
        EXPECT_TRUE(sinks[i]->WaitFinished());
        const Result res = sinks[i]->result();
        EXPECT_TRUE(res.status.ok()) << res.status;
        out[i].insert(out[i].end(), res.tokens.begin(), res.tokens.end());
      }
    }
    *stats = h.engine->Stats();
    EXPECT_EQ(counter.evicted.load(), stats->evictions_total);
    EXPECT_EQ(counter.restored.load(), stats->restores_total);
    return out;
  };
  EngineStats plenty, sequential, concurrent;
  const auto expected = run_sessions(8, false, &plenty);
  EXPECT_EQ(plenty.evictions_total, 0);
  EXPECT_EQ(run_sessions(2, false, &sequential), expected);
  EXPECT_GT(sequential.evictions_total, 0);
  EXPECT_GT(sequential.restores_total, 0);
  EXPECT_EQ(sequential.host_states, 3);
  EXPECT_EQ(sequential.host_bytes_used, 3 * 64);
  EXPECT_EQ(sequential.device_slots_used, 2);
  EXPECT_EQ(run_sessions(2, true, &concurrent), expected);
}

// A state coming back from the host tier is restored in the background: the running sequence
// keeps decoding meanwhile, and the restored session's tokens are those of an uninterrupted one.
TEST(EngineTest, RestoreRunsWhileOthersDecode) {
  Harness h({.num_slots = 2});
  const StateId s1 = *h.engine->CreateState(), s2 = *h.engine->CreateState(), s3 = *h.engine->CreateState();
  const Result r1 = RunRequest(*h.engine, Greedy({1, 2}, 2, s1));
  RunRequest(*h.engine, Greedy({3}, 2, s2));
  auto long_sink = std::make_shared<RecordingSink>();
  const RequestId long_id = *h.engine->Submit(Greedy({4}, 100000, s3), long_sink);  // spills s1
  ASSERT_TRUE(long_sink->WaitTokens(1));
  ASSERT_EQ(h.engine->GetStateInfo(s1)->location, StateLocation::kHost);

  h.control->HoldRestores();
  auto sink = std::make_shared<RecordingSink>();
  ASSERT_TRUE(h.engine->Submit(Greedy({7}, 3, s1), sink).ok());
  // The restore is held, and s3 goes on: 50 more tokens while s1 has none.
  const size_t before = long_sink->result().tokens.size();
  ASSERT_TRUE(long_sink->WaitTokens(before + 50));
  EXPECT_TRUE(sink->result().tokens.empty());
  EXPECT_GT(h.control->forwards_during_restore(), 0);

  h.control->ReleaseRestores();
  ASSERT_TRUE(sink->WaitFinished());
  const Result r = sink->result();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.tokens, FakeGreedy(Concat({{1, 2}, r1.tokens, {7}}), kVocab, 3));
  EXPECT_EQ(h.engine->Stats().restores_total, 1);
  h.engine->Cancel(long_id);
  ASSERT_TRUE(long_sink->WaitFinished());
}

// Spill ahead of need: once a request takes the last free slot, the least recently used idle
// session moves to the host between steps (nothing asked for its slot), one a step, and comes back
// with its tokens intact.
TEST(EngineTest, SpillAheadKeepsASlotFree) {
  Harness h({.num_slots = 3}, {.prefix_cache_bytes = 0, .spill_ahead_slots = 1});
  const StateId s1 = *h.engine->CreateState(), s2 = *h.engine->CreateState(), s3 = *h.engine->CreateState();
  const Result r1 = RunRequest(*h.engine, Greedy({1, 2}, 2, s1));
  RunRequest(*h.engine, Greedy({3}, 2, s2));
  EXPECT_EQ(h.engine->Stats().evictions_total, 0);  // one slot is still free
  auto long_sink = std::make_shared<RecordingSink>();
  const RequestId long_id = *h.engine->Submit(Greedy({4}, 100000, s3), long_sink);
  ASSERT_TRUE(long_sink->WaitTokens(3));
  EXPECT_EQ(h.engine->GetStateInfo(s1)->location, StateLocation::kHost);
  EXPECT_EQ(h.engine->GetStateInfo(s2)->location, StateLocation::kDevice);
  EXPECT_EQ(h.engine->Stats().evictions_total, 1);
  EXPECT_EQ(h.engine->Stats().device_slots_free, 1);

  const Result r = RunRequest(*h.engine, Greedy({7}, 3, s1));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.tokens, FakeGreedy(Concat({{1, 2}, r1.tokens, {7}}), kVocab, 3));
  h.engine->Cancel(long_id);
  ASSERT_TRUE(long_sink->WaitFinished());
}

// A cached prefix on the host is copied into a new state in the background: the running sequence
// keeps decoding meanwhile, and the tokens are those of an uncached request. A request cancelled
// during that copy leaves its session as if nothing had been copied.
TEST(EngineTest, CachedPrefixOnTheHostIsRestoredWhileOthersDecode) {
  // Room for one cache entry (64 bytes), so a later snapshot evicts it.
  Harness h({.num_slots = 2}, {.prefix_cache_bytes = 64});
  const std::vector<int32_t> prefix = RandomTokens(6, 40), turn = Concat({prefix, {9}});
  const StateId busy = *h.engine->CreateState(), s = *h.engine->CreateState();
  RunRequest(*h.engine, Greedy({4}, 1, busy));  // its snapshot comes before the prefix's
  RunRequest(*h.engine, Greedy(prefix, 1));     // both slots taken: the prefix's entry is on the host
  auto long_sink = std::make_shared<RecordingSink>();
  const RequestId long_id = *h.engine->Submit(Greedy({5}, 100000, busy), long_sink);
  ASSERT_TRUE(long_sink->WaitTokens(1));
  ASSERT_EQ(h.engine->Stats().prefix_cache_host_entries, 1);

  h.control->HoldRestores();
  auto cancelled = std::make_shared<RecordingSink>();
  const RequestId c = *h.engine->Submit(Greedy(turn, 3, s), cancelled);
  size_t before = long_sink->result().tokens.size();
  ASSERT_TRUE(long_sink->WaitTokens(before + 20));
  EXPECT_GT(h.control->forwards_during_restore(), 0);
  h.engine->Cancel(c);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // most often Detach waits for it
  h.control->ReleaseRestores();
  ASSERT_TRUE(cancelled->WaitFinished());
  EXPECT_EQ(cancelled->result().reason, FinishReason::kCancelled);
  EXPECT_TRUE(cancelled->result().tokens.empty());
  EXPECT_EQ(cancelled->result().usage.cached_tokens, 0);
  EXPECT_EQ(cancelled->result().usage.state_tokens, 7);  // its input, pending

  h.control->HoldRestores();
  auto hit = std::make_shared<RecordingSink>();
  ASSERT_TRUE(h.engine->Submit(Greedy(Concat({prefix, {8}}), 3), hit).ok());
  before = long_sink->result().tokens.size();
  ASSERT_TRUE(long_sink->WaitTokens(before + 50));
  EXPECT_TRUE(hit->result().tokens.empty());
  h.control->ReleaseRestores();
  ASSERT_TRUE(hit->WaitFinished());
  ASSERT_TRUE(hit->result().status.ok()) << hit->result().status;
  EXPECT_EQ(hit->result().tokens, FakeGreedy(Concat({prefix, {8}}), kVocab, 3));
  EXPECT_EQ(hit->result().usage.cached_tokens, 6);

  // The hit's snapshots evicted the prefix: nothing seeds the session, which starts empty.
  const Result next = RunRequest(*h.engine, Greedy({3}, 3, s));
  EXPECT_EQ(next.usage.cached_tokens, 0);
  EXPECT_EQ(next.tokens, FakeGreedy(Concat({turn, {3}}), kVocab, 3));
  EXPECT_EQ(h.engine->Stats().restores_total, 0);  // copies of cached prefixes are not restores
  h.engine->Cancel(long_id);
  ASSERT_TRUE(long_sink->WaitFinished());
}

// When both tiers are full nothing is dropped: the request that needs room fails with
// RESOURCE_EXHAUSTED and every existing state keeps its tokens.
TEST(EngineTest, BothTiersFullFailsTheRequestNotAState) {
  Harness h({.num_slots = 1, .slot_bytes = 64}, {.host_state_bytes = 64});
  StateId s1 = *h.engine->CreateState(), s2 = *h.engine->CreateState(),
          s3 = *h.engine->CreateState();
  const Result r1 = RunRequest(*h.engine, Greedy({1, 2}, 2, s1));
  const Result r2 =
      RunRequest(*h.engine, Greedy({3, 4}, 2, s2));  // spills s1: the host tier is full
  const Result r3 = RunRequest(*h.engine, Greedy({5, 6}, 2, s3));
  EXPECT_EQ(r3.reason, FinishReason::kError);
  EXPECT_EQ(r3.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(h.engine->GetStateInfo(s1)->location, StateLocation::kHost);
  EXPECT_EQ(h.engine->GetStateInfo(s1)->num_tokens, 4);
  EXPECT_EQ(h.engine->GetStateInfo(s2)->num_tokens, 4);
  EXPECT_EQ(h.engine->GetStateInfo(s3)->num_tokens, 0);  // a failed request's input is dropped
  // s1 comes back by swapping places with s2.
  const Result again = RunRequest(*h.engine, Greedy({7}, 2, s1));
  EXPECT_EQ(again.tokens, FakeGreedy(Concat({{1, 2}, r1.tokens, {7}}), kVocab, 2));
  EXPECT_EQ(h.engine->GetStateInfo(s2)->location, StateLocation::kHost);
  const Result r2b = RunRequest(*h.engine, Greedy({8}, 2, s2));
  EXPECT_EQ(r2b.tokens, FakeGreedy(Concat({{3, 4}, r2.tokens, {8}}), kVocab, 2));
}

// A backend error fails the requests of that step only; the engine and sessions go on.
TEST(EngineTest, BackendErrorFailsOnlyThatStep) {
  const int32_t poison = kVocab - 1;
  Harness h({.poison_token = poison});
  const Result bad = RunRequest(*h.engine, Greedy({1, poison}, 3));
  EXPECT_EQ(bad.reason, FinishReason::kError);
  EXPECT_EQ(bad.status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(h.engine->Stats().states, 0);

  StateId s = *h.engine->CreateState();
  const Result t1 = RunRequest(*h.engine, Greedy({2, 3}, 2, s));
  EXPECT_EQ(RunRequest(*h.engine, Greedy({poison}, 2, s)).reason, FinishReason::kError);
  EXPECT_EQ(h.engine->GetStateInfo(s)->num_tokens, 4);
  const Result t2 = RunRequest(*h.engine, Greedy({4}, 3, s));
  EXPECT_EQ(t2.tokens, FakeGreedy(Concat({{2, 3}, t1.tokens, {4}}), kVocab, 3));
  EXPECT_EQ(RunRequest(*h.engine, Greedy({5, 6}, 3)).tokens, FakeGreedy({5, 6}, kVocab, 3));
}

TEST(EngineTest, ShutdownCancelsRunningRequests) {
  Harness h;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(h.engine->Submit(Greedy({1, i}, 1 << 30), sinks.back()).ok());
  }
  for (auto& s : sinks) ASSERT_TRUE(s->WaitTokens(1));
  h.engine->Shutdown();
  for (auto& s : sinks) {
    const Result r = s->result();
    EXPECT_EQ(r.finish_calls, 1);
    EXPECT_EQ(r.reason, FinishReason::kCancelled);
  }
  EXPECT_EQ(h.engine->Submit(Greedy({1}, 1), std::make_shared<RecordingSink>()).status().code(),
            absl::StatusCode::kUnavailable);
  h.engine->Shutdown();  // idempotent
}

TEST(EngineTest, UnseededSamplingIsReproducibleFromTheEngineSeed) {
  EngineRequest r = Greedy(RandomTokens(5, 12), 20);
  r.sampling.temperature = 1.0f;
  auto run = [&](uint64_t seed) {
    Harness h({}, {.seed = seed});
    return RunRequest(*h.engine, r).tokens;
  };
  EXPECT_EQ(run(3), run(3));
  EXPECT_NE(run(3), run(4));
}

TEST(EngineTest, CreateRejectsBadOptions) {
  auto control = std::make_shared<FakeControl>();
  EXPECT_FALSE(Engine::Create(nullptr, {}).ok());
  EXPECT_EQ(Engine::Create(std::make_unique<FakeBackend>(FakeBackendOptions{}, control),
                           {.max_batch_tokens = 4, .max_running = 8})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Room for the decodes but not for the oldest prompt's next aligned cut (8 + 64 - 1 = 71).
  const absl::Status no_room =
      Engine::Create(std::make_unique<FakeBackend>(FakeBackendOptions{}, control),
                     {.max_batch_tokens = 70, .max_running = 8})
          .status();
  EXPECT_EQ(no_room.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(no_room.message(), "max_batch_tokens (70)")) << no_room;
  EXPECT_TRUE(Engine::Create(std::make_unique<FakeBackend>(FakeBackendOptions{}, control),
                             {.max_batch_tokens = 71, .max_running = 8})
                  .ok());
}

}  // namespace
}  // namespace lizard::testing
