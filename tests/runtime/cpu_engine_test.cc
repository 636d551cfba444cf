// The engine over the real CPU backend on models/lizard-tiny: batching, chunked prefill, session
// turns and spill/restore must not change greedy tokens.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "engine/backend.h"
#include "engine/runtime/engine.h"
#include "tests/runtime/engine_test_util.h"

namespace lizard::testing {
namespace {

const std::string kModelDir = LIZARD_TINY_MODEL_DIR;

std::unique_ptr<Engine> MakeEngine(int32_t slots, const EngineOptions& options) {
  BackendOptions b{
      .model_dir = kModelDir, .kind = BackendKind::kCpu, .num_slots = slots, .num_threads = 1};
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
  std::unique_ptr<Engine> batched = MakeEngine(8, {.max_batch_tokens = 16, .max_running = 8});
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
