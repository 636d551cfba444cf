// The engine over the real CPU backend on models/lizard-tiny: batching, chunked prefill, session
// turns and spill/restore must not change greedy tokens; load must not change a request's tokens
// or logprobs by a single bit (prompts are cut only at multiples of kPrefillAlignment).
// The smallest budgets allowed (max_running + 63) make steps cut prompts.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <tuple>

#include "engine/backend.h"
#include "engine/runtime/engine.h"
#include "tests/runtime/engine_test_util.h"

namespace lizard::testing {
namespace {

const std::string kModelDir = LIZARD_TINY_MODEL_DIR;

std::unique_ptr<Engine> MakeEngine(int32_t slots, const EngineOptions& options) {
  BackendOptions b{.weights = WeightSource::Directory(kModelDir),
                   .kind = BackendKind::kCpu,
                   .num_slots = slots,
                   .num_threads = 1};
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend(b);
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(*std::move(backend), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<int32_t> RandomTokens(int n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = static_cast<int32_t>(rng() % vocab);
  return out;
}

class CpuEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModelDir + "/config.json")) {
      GTEST_SKIP() << "no model at " << kModelDir;
    }
  }
};

// Regression: on a warm engine, a step whose rows are all unsampled (a prefill-only request, the
// first chunks of a prompt longer than the step budget) failed with INTERNAL because the CPU
// backend left the previous step's tokens in the reused StepOutput.
TEST_F(CpuEngineTest, PrefillOnlyAndLongPromptsAfterGeneration) {
  std::unique_ptr<Engine> engine = MakeEngine(4, {.max_batch_tokens = 67, .max_running = 4});
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  ASSERT_TRUE(RunRequest(*engine, Greedy(RandomTokens(4, 1, vocab), 3)).status.ok());

  StateId s = *engine->CreateState();
  const std::vector<int32_t> prefix = RandomTokens(7, 2, vocab), prompt = RandomTokens(150, 3, vocab);
  const Result prefill = RunRequest(*engine, Greedy(prefix, 0, s));
  ASSERT_TRUE(prefill.status.ok()) << prefill.status;
  const Result long_prompt = RunRequest(*engine, Greedy(prompt, 4));
  ASSERT_TRUE(long_prompt.status.ok()) << long_prompt.status;
  const Result turn = RunRequest(*engine, Greedy(prompt, 4, s));
  ASSERT_TRUE(turn.status.ok()) << turn.status;

  // Both equal the same requests on a fresh engine.
  std::unique_ptr<Engine> fresh = MakeEngine(4, {});
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(long_prompt.tokens, RunRequest(*fresh, Greedy(prompt, 4)).tokens);
  EXPECT_EQ(turn.tokens, RunRequest(*fresh, Greedy(Concat({prefix, prompt}), 4)).tokens);
}

// The prefix cache: conversations that share a system prompt, each turn re-sending the whole
// history as a one-shot request (as OpenAI clients do), give the same tokens with the cache on
// and off, greedy and seeded sampling. Two slots and small steps make entries move to the host
// and prefill chunks start at other boundaries than without the cache.
TEST_F(CpuEngineTest, PrefixCacheHitGivesTheSameTokensAsAMiss) {
  for (const float temperature : {0.0f, 0.9f}) {
    std::unique_ptr<Engine> on = MakeEngine(2, {.max_batch_tokens = 65, .max_running = 2});
    std::unique_ptr<Engine> off =
        MakeEngine(2, {.max_batch_tokens = 65, .max_running = 2, .prefix_cache_bytes = 0});
    ASSERT_NE(on, nullptr);
    ASSERT_NE(off, nullptr);
    const int64_t vocab = on->config().vocab_size;
    const std::vector<int32_t> system = RandomTokens(37, 7, vocab);
    int64_t cached_after_first_turn = 0;
    for (int c = 0; c < 3; ++c) {
      std::vector<int32_t> history = system;
      for (int turn = 0; turn < 4; ++turn) {
        history = Concat({history, RandomTokens(5 + 3 * turn + c, 100 * c + turn, vocab)});
        EngineRequest r = Greedy(history, 6);
        r.sampling.temperature = temperature;
        r.sampling.seed = 11 * c + turn;
        r.logprobs = 2;
        const Result hit = RunRequest(*on, r), miss = RunRequest(*off, r);
        ASSERT_TRUE(hit.status.ok()) << hit.status;
        ASSERT_TRUE(miss.status.ok()) << miss.status;
        EXPECT_EQ(hit.tokens, miss.tokens) << "conversation " << c << " turn " << turn;
        // Not bitwise: a hit continues from a state that earlier traffic computed (its generated
        // tokens were fed back as decodes, and its prefill starts at the cached boundary, not at
        // a block boundary), within the path tolerance of the backend tests.
        ASSERT_EQ(hit.logprobs.size(), miss.logprobs.size());
        for (size_t i = 0; i < hit.logprobs.size(); ++i) {
          EXPECT_NEAR(hit.logprobs[i].chosen.logprob, miss.logprobs[i].chosen.logprob, 1e-4);
        }
        EXPECT_EQ(miss.usage.cached_tokens, 0);
        EXPECT_EQ(hit.usage.prompt_tokens, miss.usage.prompt_tokens);
        if (turn > 0) {
          // The previous turn's whole generation was cached: only its pending last token and
          // the new user tokens are prefilled.
          EXPECT_EQ(hit.usage.cached_tokens, static_cast<int64_t>(history.size()) -
                                                 (5 + 3 * turn + c) - 1);
          cached_after_first_turn += hit.usage.cached_tokens;
        }
        history = Concat({history, hit.tokens});
      }
    }
    EXPECT_GT(cached_after_first_turn, 0);
    const EngineStats stats = on->Stats();
    EXPECT_EQ(stats.prefix_cache_queries, 12);
    // Entries are snapshots at the ends of prompts and generations, so a first turn finds none
    // (the system prompt alone never ended a request); every later turn hits.
    EXPECT_EQ(stats.prefix_cache_hits, 9);
    EXPECT_GT(stats.prefix_cache_host_entries, 0);  // two slots: entries moved to the host
    EXPECT_EQ(stats.states, 0);                     // entries are not counted as states
    EXPECT_EQ(off->Stats().prefix_cache_queries, 0);
  }
}

// A new session's first request (gRPC CreateSession with a prefix) starts from the cache too, and
// later turns on the session equal one-shot requests over the whole history.
TEST_F(CpuEngineTest, PrefixCacheSeedsANewSession) {
  std::unique_ptr<Engine> engine = MakeEngine(3, {.max_batch_tokens = 67, .max_running = 4});
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> prefix = RandomTokens(30, 21, vocab), more = RandomTokens(9, 22, vocab);
  ASSERT_TRUE(RunRequest(*engine, Greedy(prefix, 3)).status.ok());

  const StateId s = *engine->CreateState();
  const Result created = RunRequest(*engine, Greedy(Concat({prefix, more}), 0, s));
  ASSERT_TRUE(created.status.ok()) << created.status;
  EXPECT_EQ(created.usage.cached_tokens, 30);
  EXPECT_EQ(created.usage.state_tokens, 39);
  const Result turn = RunRequest(*engine, Greedy(more, 5, s));
  ASSERT_TRUE(turn.status.ok());
  EXPECT_EQ(turn.usage.cached_tokens, 0);  // a session with history continues its own state

  std::unique_ptr<Engine> cold = MakeEngine(3, {.prefix_cache_bytes = 0});
  ASSERT_NE(cold, nullptr);
  EXPECT_EQ(turn.tokens, RunRequest(*cold, Greedy(Concat({prefix, more, more}), 5)).tokens);
}

TEST_F(CpuEngineTest, ConcurrentGreedyRequestsEqualEachAlone) {
  std::unique_ptr<Engine> engine = MakeEngine(8, {});
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  std::vector<EngineRequest> requests;
  for (int i = 0; i < 6; ++i)
    requests.push_back(Greedy(RandomTokens(3 + 9 * i, 50 + i, vocab), 12));

  std::vector<Result> alone;
  for (const EngineRequest& r : requests) {
    alone.push_back(RunRequest(*engine, r));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status;
    ASSERT_EQ(alone.back().tokens.size(), 12u);
  }

  // A small token budget: prompts are chunked and share steps with other sequences' decodes.
  std::unique_ptr<Engine> batched = MakeEngine(8, {.max_batch_tokens = 71, .max_running = 8});
  ASSERT_NE(batched, nullptr);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const EngineRequest& r : requests) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(batched->Submit(r, sinks.back()).ok());
  }
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished());
    EXPECT_EQ(sinks[i]->result().tokens, alone[i].tokens) << "request " << i;
  }
}

// The invariance rule end to end: a long greedy prompt (from position 0) and a second turn on
// its session (from an unaligned position) give bitwise the same tokens and logprobs alone as
// under load, where many concurrent requests and a small budget cut its prompts elsewhere.
TEST_F(CpuEngineTest, LoadDoesNotChangeTokensOrLogprobs) {
  constexpr int kTurnTokens = 9;
  const int64_t vocab = MakeEngine(1, {})->config().vocab_size;
  EngineRequest first = Greedy(RandomTokens(700, 61, vocab), kTurnTokens);
  EngineRequest second = Greedy(RandomTokens(150, 62, vocab), kTurnTokens);
  first.logprobs = second.logprobs = 3;

  // Both turns of the session, while `others` requests run beside them.
  struct Turns {
    Result first, second;
  };
  auto run = [&](int others, const EngineOptions& options) -> Turns {
    std::unique_ptr<Engine> engine = MakeEngine(others + 2, options);
    if (engine == nullptr) return {};
    std::vector<std::shared_ptr<RecordingSink>> load;
    auto add_load = [&](uint32_t seed) {
      for (int i = 0; i < others; ++i) {
        load.push_back(std::make_shared<RecordingSink>());
        EngineRequest r = Greedy(RandomTokens(1 + (37 * i + seed) % 200, seed + i, vocab), 5);
        EXPECT_TRUE(engine->Submit(r, load.back()).ok());
      }
    };
    Turns turns;
    first.state = second.state = *engine->CreateState();
    add_load(1000);
    turns.first = RunRequest(*engine, first);
    add_load(2000);
    turns.second = RunRequest(*engine, second);
    for (const auto& sink : load) EXPECT_TRUE(sink->WaitFinished());
    return turns;
  };
  const Turns alone = run(0, {});
  const Turns loaded = run(6, {.max_batch_tokens = 71, .max_running = 8});
  for (const auto& [name, a, b] : {std::tuple{"first", &alone.first, &loaded.first},
                                   std::tuple{"second", &alone.second, &loaded.second}}) {
    ASSERT_TRUE(a->status.ok()) << name << " " << a->status;
    ASSERT_TRUE(b->status.ok()) << name << " " << b->status;
    ASSERT_EQ(a->tokens.size(), static_cast<size_t>(kTurnTokens)) << name;
    EXPECT_EQ(b->tokens, a->tokens) << name;
    ASSERT_EQ(b->logprobs.size(), a->logprobs.size()) << name;
    for (size_t i = 0; i < a->logprobs.size(); ++i) {
      // Bitwise: float ==, not a tolerance.
      EXPECT_EQ(b->logprobs[i].chosen.logprob, a->logprobs[i].chosen.logprob) << name << " " << i;
      ASSERT_EQ(b->logprobs[i].top.size(), a->logprobs[i].top.size()) << name;
      for (size_t j = 0; j < a->logprobs[i].top.size(); ++j) {
        EXPECT_EQ(b->logprobs[i].top[j].token, a->logprobs[i].top[j].token) << name;
        EXPECT_EQ(b->logprobs[i].top[j].logprob, a->logprobs[i].top[j].logprob) << name;
      }
    }
    EXPECT_EQ(b->usage.cached_tokens, 0) << name;  // no prefix-cache hit on either side
  }
  // The second turn starts where the session's state ended: an unaligned position.
  EXPECT_NE((700 + kTurnTokens - 1) % kPrefillAlignment, 0);
}

TEST_F(CpuEngineTest, SessionTurnsWithSpillEqualOneShot) {
  // Two device slots for three sessions: every turn spills and restores real state bytes.
  std::unique_ptr<Engine> engine = MakeEngine(2, {});
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  std::vector<StateId> sessions;
  std::vector<std::vector<int32_t>> history(3);
  for (int i = 0; i < 3; ++i) sessions.push_back(*engine->CreateState());
  for (int turn = 0; turn < 2; ++turn) {
    for (int i = 0; i < 3; ++i) {
      const std::vector<int32_t> input = RandomTokens(4 + i, 10 * turn + i, vocab);
      const Result r = RunRequest(*engine, Greedy(input, 5, sessions[i]));
      ASSERT_TRUE(r.status.ok()) << r.status;
      history[i].insert(history[i].end(), input.begin(), input.end());
      const Result one_shot = RunRequest(*engine, Greedy(history[i], 5));
      EXPECT_EQ(r.tokens, one_shot.tokens) << "session " << i << " turn " << turn;
      history[i].insert(history[i].end(), r.tokens.begin(), r.tokens.end());
    }
  }
  EXPECT_GT(engine->Stats().evictions_total, 0);
  EXPECT_GT(engine->Stats().restores_total, 0);
}

}  // namespace
}  // namespace lizard::testing
