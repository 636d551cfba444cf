// The CUDA backend as a whole: logits against the CPU reference backend (the GPU holds bf16
// weights, so rows agree to ~1e-2 relative and greedy tokens agree wherever the CPU's top two
// logits are not nearly tied), prefill == decode within bf16 tolerance, prompts cut at aligned
// positions and batch invariance (bitwise for pure Lizard models), fork / spill / restore (also
// between the steps of other sequences),
// sampling on the device.
//
// Models come from the directory in LIZARD_GPU_TEST_MODELS (one checkpoint per subdirectory,
// made by tools/gpu/on_device.sh); without it these tests are skipped.
#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/model_config.h"
#include "engine/sampling/sampler.h"
#include "tests/gpu/gpu_test_util.h"
#include "tools/common/random_state.h"

namespace lizard::gputest {
namespace {

constexpr double kLogitsTol = 3e-2;     // bf16 weights vs float32 weights
constexpr double kSameGpuTol = 1e-2;    // same GPU weights, other step shapes (bf16 GEMM inputs)
constexpr float kTieMargin = 0.05f;     // CPU top-2 gap below which greedy picks may differ
constexpr int kGreedySteps = 32;

std::vector<std::string> ModelDirs() {
  std::vector<std::string> dirs;
  const char* root = std::getenv("LIZARD_GPU_TEST_MODELS");
  if (root == nullptr || !std::filesystem::is_directory(root)) return dirs;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (std::filesystem::exists(e.path() / "config.json")) dirs.push_back(e.path().string());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::unique_ptr<Backend> Make(BackendKind kind, const std::string& dir, int slots = 12) {
  BackendOptions options;
  options.weights = WeightSource::Directory(dir);
  options.kind = kind;
  options.num_slots = slots;
  auto b = kind == BackendKind::kCuda ? CreateCudaBackend(options) : CreateCpuBackend(options);
  EXPECT_TRUE(b.ok()) << dir << ": " << b.status();
  return b.ok() ? *std::move(b) : nullptr;
}

StepOutput RunPlan(Backend& b, const StepPlan& plan) {
  StepOutput out;
  const absl::Status st = b.Forward(plan, &out);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

StepOutput Prefill(Backend& b, SlotId slot, const std::vector<int32_t>& tokens, LogitsMode mode) {
  StepPlan plan;
  plan.chunks.push_back({slot, b.SlotPosition(slot), tokens, mode});
  return RunPlan(b, plan);
}

StepOutput Decode(Backend& b, const std::vector<std::pair<SlotId, int32_t>>& items) {
  StepPlan plan;
  for (auto [slot, token] : items) {
    plan.chunks.push_back({slot, b.SlotPosition(slot), {token}, LogitsMode::kLast, /*decode=*/true});
  }
  return RunPlan(b, plan);
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int n, int64_t vocab) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

int Argmax(const float* row, int64_t n) { return static_cast<int>(std::max_element(row, row + n) - row); }

float TopGap(const float* row, int64_t n) {
  std::vector<float> v(row, row + n);
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return v[0] - v[1];
}

double RowError(const StepOutput& a, int64_t ra, const StepOutput& b, int64_t rb) {
  return RelError(a.row(ra), b.row(rb), a.vocab);
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    dirs_ = ModelDirs();
    if (dirs_.empty()) GTEST_SKIP() << "LIZARD_GPU_TEST_MODELS names no models";
  }
  std::vector<std::string> dirs_;
};

TEST_F(CudaBackendTest, LogitsAndGreedyTokensMatchCpu) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto cpu = Make(BackendKind::kCpu, dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(cpu && gpu);
    const int64_t V = gpu->config().vocab_size;
    std::mt19937 rng(11);
    // A prompt longer than two windows, so prefill wraps the ring.
    const int n = static_cast<int>(2 * std::max<int64_t>(gpu->config().window_size, 8) + 5);
    const std::vector<int32_t> prompt = RandomTokens(rng, n, V);
    const StepOutput c = Prefill(*cpu, 0, prompt, LogitsMode::kAll);
    const StepOutput g = Prefill(*gpu, 0, prompt, LogitsMode::kAll);
    ASSERT_EQ(c.rows, n);
    ASSERT_EQ(g.rows, n);
    for (int r = 0; r < n; ++r) EXPECT_LE(RowError(g, r, c, r), kLogitsTol) << "prompt row " << r;

    // Greedy decoding, fed the CPU's choice so that both stay on one path.
    int token = Argmax(c.row(n - 1), V);
    int mismatches = 0;
    for (int step = 0; step < kGreedySteps; ++step) {
      const StepOutput cs = Decode(*cpu, {{0, token}});
      const StepOutput gs = Decode(*gpu, {{0, token}});
      EXPECT_LE(RowError(gs, 0, cs, 0), kLogitsTol) << "decode step " << step;
      const int ct = Argmax(cs.row(0), V), gt = Argmax(gs.row(0), V);
      if (ct != gt && TopGap(cs.row(0), V) > kTieMargin) ++mismatches;
      token = ct;
    }
    EXPECT_EQ(mismatches, 0) << "greedy tokens differ from the CPU's";
  }
}

TEST_F(CudaBackendTest, LongPrefillIsSplitCorrectly) {
  // 2100 tokens exceed one internal step (2048): the chunk is cut and the state carried.
  const std::string dir = dirs_.front();
  auto cpu = Make(BackendKind::kCpu, dir);
  auto gpu = Make(BackendKind::kCuda, dir);
  ASSERT_TRUE(cpu && gpu);
  std::mt19937 rng(12);
  const std::vector<int32_t> prompt = RandomTokens(rng, 2100, gpu->config().vocab_size);
  const StepOutput c = Prefill(*cpu, 0, prompt, LogitsMode::kLast);
  const StepOutput g = Prefill(*gpu, 0, prompt, LogitsMode::kLast);
  ASSERT_EQ(g.rows, 1);
  EXPECT_LE(RowError(g, 0, c, 0), kLogitsTol);
  EXPECT_EQ(gpu->SlotPosition(0), 2100);
}

// Pure Lizard models on the (default) batch-invariant path give identical bits whatever shares a
// step and wherever a prompt is cut at an absolute multiple of kPrefillAlignment; models with
// softmax layers agree within kSameGpuTol (the paged attention splits its keys by the longest
// context of the step).
bool ExactlyInvariant(const Backend& b) {
  const auto& types = b.config().layer_types;
  return std::count(types.begin(), types.end(), LayerType::kSoftmax) == 0;
}

void ExpectSameRow(const StepOutput& a, int64_t ra, const StepOutput& b, int64_t rb, bool exact) {
  if (exact) {
    EXPECT_EQ(std::memcmp(a.row(ra), b.row(rb), a.vocab * sizeof(float)), 0) << "rows differ in bits";
  } else {
    EXPECT_LE(RowError(a, ra, b, rb), kSameGpuTol);
  }
}

// Prompt tokens take the chunked form, decodes the recurrent one: the two agree within bf16
// tolerance. Cuts at aligned positions change no bit; other cuts stay within tolerance.
TEST_F(CudaBackendTest, PrefillCutsAndDecodeAgree) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(gpu);
    const bool exact = ExactlyInvariant(*gpu);
    std::mt19937 rng(13);
    const int n = static_cast<int>(2 * gpu->config().window_size + 9);
    const std::vector<int32_t> prompt = RandomTokens(rng, n, gpu->config().vocab_size);
    const StepOutput whole = Prefill(*gpu, 0, prompt, LogitsMode::kLast);
    StepOutput last;
    for (int t = 0; t < n; ++t) last = Decode(*gpu, {{1, prompt[t]}});
    ExpectSameRow(last, 0, whole, 0, /*exact=*/false);
    // Cuts every 64 and 128 tokens (aligned: bitwise), every 7 tokens and every token (prompt
    // chunks of one token, not decodes: within tolerance).
    for (int chunk : {64, 128, 7, 1}) {
      const SlotId slot = chunk == 64 ? 2 : chunk == 128 ? 3 : chunk == 7 ? 4 : 5;
      StepOutput out;
      for (int t = 0; t < n; t += chunk) {
        out = Prefill(*gpu, slot, std::vector<int32_t>(prompt.begin() + t, prompt.begin() + std::min(n, t + chunk)),
                      LogitsMode::kLast);
      }
      ExpectSameRow(out, 0, whole, 0, exact && chunk % kPrefillAlignment == 0);
    }
    // The states agree too: the next step from each gives the same logits.
    const StepOutput a = Decode(*gpu, {{0, 7}}), b = Decode(*gpu, {{1, 7}}), c = Decode(*gpu, {{2, 7}}),
                     d = Decode(*gpu, {{3, 7}}), e = Decode(*gpu, {{4, 7}}), f = Decode(*gpu, {{5, 7}});
    ExpectSameRow(a, 0, b, 0, /*exact=*/false);
    ExpectSameRow(a, 0, c, 0, exact);
    ExpectSameRow(a, 0, d, 0, exact);
    ExpectSameRow(a, 0, e, 0, /*exact=*/false);
    ExpectSameRow(a, 0, f, 0, /*exact=*/false);
  }
}

// A prompt's logits do not depend on what shares its steps: alone, after another long prompt (the
// 2048-token internal steps then cut it elsewhere, still at aligned positions) and beside decodes.
TEST_F(CudaBackendTest, PromptIsInvariantToItsNeighbours) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(gpu);
    const bool exact = ExactlyInvariant(*gpu);
    std::mt19937 rng(16);
    const int64_t V = gpu->config().vocab_size;
    // Two slots at the same non-aligned position with the same state.
    Prefill(*gpu, 0, RandomTokens(rng, 37, V), LogitsMode::kNone);
    ASSERT_TRUE(gpu->CopySlot(0, 1).ok());
    for (SlotId s = 2; s < 6; ++s) Prefill(*gpu, s, RandomTokens(rng, 3 + s, V), LogitsMode::kNone);
    const std::vector<int32_t> prompt = RandomTokens(rng, 2100, V);
    StepPlan alone;
    alone.chunks.push_back({0, 37, prompt, LogitsMode::kAll});
    const StepOutput a = RunPlan(*gpu, alone);
    StepPlan busy;
    for (SlotId s = 2; s < 6; ++s) busy.chunks.push_back({s, gpu->SlotPosition(s), {5}, LogitsMode::kLast, /*decode=*/true});
    busy.chunks.push_back({6, 0, RandomTokens(rng, 1000, V), LogitsMode::kLast});
    busy.chunks.push_back({1, 37, prompt, LogitsMode::kAll});
    const StepOutput b = RunPlan(*gpu, busy);
    ASSERT_EQ(a.rows, 2100);
    ASSERT_EQ(b.rows, 4 + 1 + 2100);
    for (int r : {0, 26, 27, 1000, 2047, 2099}) ExpectSameRow(a, r, b, 5 + r, exact);
  }
}

TEST_F(CudaBackendTest, BatchInvariance) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(gpu);
    const bool exact = ExactlyInvariant(*gpu);
    std::mt19937 rng(14);
    const int64_t V = gpu->config().vocab_size;
    for (SlotId s = 0; s < 8; ++s) Prefill(*gpu, s, RandomTokens(rng, 5 + 3 * s, V), LogitsMode::kNone);
    ASSERT_TRUE(gpu->CopySlot(0, 8).ok());
    ASSERT_TRUE(gpu->CopySlot(0, 9).ok());
    const StepOutput alone = Decode(*gpu, {{0, 3}});
    // Batch of 3 (padded to a graph bucket of 4) and of 8 plus a prefill chunk (no graph).
    const StepOutput small = Decode(*gpu, {{1, 5}, {8, 3}, {2, 9}});
    ExpectSameRow(small, 1, alone, 0, exact);
    StepPlan mixed;
    for (SlotId s = 1; s < 8; ++s) {
      mixed.chunks.push_back({s, gpu->SlotPosition(s), {4}, LogitsMode::kLast, /*decode=*/true});
    }
    mixed.chunks.push_back({9, gpu->SlotPosition(9), {3}, LogitsMode::kLast, /*decode=*/true});
    mixed.chunks.push_back({10, 0, RandomTokens(rng, 40, V), LogitsMode::kLast});
    const StepOutput big = RunPlan(*gpu, mixed);
    ASSERT_EQ(big.rows, 9);
    ExpectSameRow(big, 7, alone, 0, exact);
  }
}

TEST_F(CudaBackendTest, ForkSpillRestore) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(gpu);
    std::mt19937 rng(15);
    Prefill(*gpu, 0, RandomTokens(rng, 77, gpu->config().vocab_size), LogitsMode::kNone);
    ASSERT_TRUE(gpu->CopySlot(0, 1).ok());
    auto saved = gpu->SaveSlot(0);
    ASSERT_TRUE(saved.ok()) << saved.status();
    ASSERT_TRUE(gpu->ResetSlot(2).ok());
    ASSERT_TRUE(gpu->LoadSlot(2, *saved).ok());
    EXPECT_EQ(gpu->SlotPosition(1), 77);
    EXPECT_EQ(gpu->SlotPosition(2), 77);
    const StepOutput a = Decode(*gpu, {{0, 5}}), b = Decode(*gpu, {{1, 5}}), c = Decode(*gpu, {{2, 5}});
    EXPECT_EQ(a.logits, b.logits);  // same step shape, same state: bitwise equal
    EXPECT_EQ(a.logits, c.logits);
    // A saved state round-trips byte for byte, and garbage is refused.
    ASSERT_TRUE(gpu->LoadSlot(3, *saved).ok());
    auto again = gpu->SaveSlot(3);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *saved);
    EXPECT_FALSE(gpu->LoadSlot(3, saved->substr(0, saved->size() / 2)).ok());
    // A reset slot starts over.
    ASSERT_TRUE(gpu->ResetSlot(0).ok());
    EXPECT_EQ(gpu->SlotPosition(0), 0);
  }
}

// Spills and restores between steps leave every sequence's bits alone: sequence b runs twice in
// the same steps, in slot 1 untouched and in a copy that after every step is spilled, its slot
// reset and overwritten, and loaded into the other of slots 2 and 3 right before the next step (the step must wait for the
// upload on the copy stream), while sequence a keeps decoding in slot 0 (every other step with a
// prompt chunk, so both the graph and the plain path run).
TEST_F(CudaBackendTest, SpillsAndRestoresBetweenStepsKeepTheBits) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir, 4);
    ASSERT_TRUE(gpu);
    std::mt19937 rng(16);
    const int64_t V = gpu->config().vocab_size;
    Prefill(*gpu, 0, RandomTokens(rng, 40, V), LogitsMode::kNone);
    Prefill(*gpu, 1, RandomTokens(rng, static_cast<int>(gpu->config().window_size) + 5, V), LogitsMode::kNone);
    ASSERT_TRUE(gpu->CopySlot(1, 2).ok());
    SlotId moving = 2;
    for (int step = 0; step < 12; ++step) {
      const std::vector<int32_t> a_tokens = RandomTokens(rng, step % 2 == 0 ? 1 : 3, V);
      const int32_t b_token = static_cast<int32_t>(rng() % V);
      StepPlan plan;
      plan.chunks.push_back({0, gpu->SlotPosition(0), a_tokens, LogitsMode::kLast});
      plan.chunks.push_back({1, gpu->SlotPosition(1), {b_token}, LogitsMode::kLast});
      plan.chunks.push_back({moving, gpu->SlotPosition(moving), {b_token}, LogitsMode::kLast});
      const StepOutput out = RunPlan(*gpu, plan);
      ASSERT_EQ(out.rows, 3);
      ASSERT_EQ(std::memcmp(out.row(1), out.row(2), V * sizeof(float)), 0) << "step " << step;
      // A spill's bytes are made on a worker thread; the slot it left is reused at once (a reset
      // and a prefill write it) before they are read.
      absl::StatusOr<SavedSlot> spilled = gpu->SpillSlot(moving);
      ASSERT_TRUE(spilled.ok()) << spilled.status();
      ASSERT_TRUE(gpu->ResetSlot(moving).ok());
      Prefill(*gpu, moving, RandomTokens(rng, 3, V), LogitsMode::kNone);
      moving = moving == 2 ? 3 : 2;
      if (step % 2 == 0) {
        absl::StatusOr<std::string_view> saved = spilled->bytes();
        ASSERT_TRUE(saved.ok()) << saved.status();
        EXPECT_EQ(static_cast<int64_t>(saved->size()), spilled->size());
        ASSERT_TRUE(gpu->LoadSlot(moving, *saved).ok());
      } else {
        // In the background, from bytes maybe still in the making, while a step runs on another
        // slot (as the engine does).
        absl::StatusOr<std::unique_ptr<SlotRestore>> restore = gpu->RestoreSlot(moving, *spilled);
        ASSERT_TRUE(restore.ok()) << restore.status();
        Prefill(*gpu, 0, RandomTokens(rng, 2, V), LogitsMode::kNone);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!(*restore)->ready() && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        EXPECT_TRUE((*restore)->ready());
        ASSERT_TRUE((*restore)->Finish().ok());
      }
      EXPECT_EQ(gpu->SlotPosition(moving), gpu->SlotPosition(1));
    }
    // The last restore, saved again before any step, gives the bytes of the untouched copy.
    absl::StatusOr<std::string> moved = gpu->SaveSlot(moving), kept = gpu->SaveSlot(1);
    ASSERT_TRUE(moved.ok() && kept.ok());
    EXPECT_EQ(*moved, *kept);
    // Bytes that fail their checks: the restore says so when finished, and the slot loads again.
    std::string corrupt = *kept;
    corrupt[corrupt.size() / 2] ^= 1;
    absl::StatusOr<std::unique_ptr<SlotRestore>> bad = gpu->RestoreSlot(moving, SavedSlot(corrupt));
    ASSERT_TRUE(bad.ok()) << bad.status();
    EXPECT_FALSE((*bad)->Finish().ok());
    ASSERT_TRUE(gpu->LoadSlot(moving, *kept).ok());
    EXPECT_EQ(*gpu->SaveSlot(moving), *kept);
  }
}

TEST_F(CudaBackendTest, RefusesBadPlans) {
  auto gpu = Make(BackendKind::kCuda, dirs_.front());
  ASSERT_TRUE(gpu);
  StepOutput out;
  StepPlan wrong_pos;
  wrong_pos.chunks.push_back({0, 5, {1}, LogitsMode::kLast});
  EXPECT_FALSE(gpu->Forward(wrong_pos, &out).ok());
  StepPlan twice;
  twice.chunks.push_back({0, 0, {1}, LogitsMode::kLast});
  twice.chunks.push_back({0, 0, {1, 2}, LogitsMode::kLast});
  EXPECT_FALSE(gpu->Forward(twice, &out).ok());
  StepPlan bad_token;
  bad_token.chunks.push_back({0, 0, {static_cast<int32_t>(gpu->config().vocab_size)}, LogitsMode::kLast});
  EXPECT_FALSE(gpu->Forward(bad_token, &out).ok());
  EXPECT_EQ(gpu->SlotPosition(0), 0);
}

// Sampling inside Forward (the device path: penalties uploaded, tokens and logprobs back) picks
// what the host sampler picks from the same backend's logits, step after step, for a mixed
// batch: greedy, plain, top-k/top-p/min-p, penalties, logprobs.
TEST_F(CudaBackendTest, SamplingInForwardMatchesHostSamplerOnItsLogits) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(gpu);
    const int64_t vocab = gpu->config().vocab_size;
    std::mt19937 rng(21);
    const int n = 6;
    std::vector<TokenHistory> histories(n);
    std::vector<RowSampling> rows(n);
    rows[1].params = {.temperature = 0.9f};
    rows[2].params = {.temperature = 1.1f, .top_k = 20, .top_p = 0.9f, .min_p = 0.01f};
    rows[3].params = {.temperature = 0.7f, .repetition_penalty = 1.2f, .frequency_penalty = 0.3f};
    rows[3].logprobs = 100;  // beyond what the device ranks: ranked on the host
    rows[4].params = {.presence_penalty = 0.4f};  // greedy with a penalty
    rows[5].params = {.temperature = 1.0f, .top_p = 0.5f};
    rows[5].logprobs = 4;
    rows[0].logprobs = 2;
    for (int i = 0; i < n; ++i) {
      const std::vector<int32_t> prompt = RandomTokens(rng, 10 + 7 * i, vocab);
      Prefill(*gpu, 2 * i, prompt, LogitsMode::kNone);
      ASSERT_TRUE(gpu->CopySlot(2 * i, 2 * i + 1).ok());  // the twin that gives the logits
      histories[i].AddPrompt(prompt);
      rows[i].seed = 1000 + i;
      rows[i].history = &histories[i];
    }
    std::vector<int32_t> last(n, 1);
    for (int step = 0; step < 12; ++step) {
      StepPlan sampled, plain;
      for (int i = 0; i < n; ++i) {
        rows[i].step = step;
        sampled.chunks.push_back(
            {2 * i, gpu->SlotPosition(2 * i), {last[i]}, LogitsMode::kLast, /*decode=*/true});
        plain.chunks.push_back(
            {2 * i + 1, gpu->SlotPosition(2 * i + 1), {last[i]}, LogitsMode::kLast, /*decode=*/true});
      }
      sampled.sampling = rows;
      const StepOutput got = RunPlan(*gpu, sampled);
      const StepOutput logits = RunPlan(*gpu, plain);
      ASSERT_EQ(got.tokens.size(), static_cast<size_t>(n));
      EXPECT_TRUE(got.logits.empty());
      for (int i = 0; i < n; ++i) {
        SCOPED_TRACE(::testing::Message() << "step " << step << " row " << i);
        TokenLogprobs expected_lp;
        const int32_t expected = SampleToken(std::span<const float>(logits.row(i), vocab), rows[i], &expected_lp);
        ASSERT_EQ(got.tokens[i], expected);
        if (rows[i].logprobs > 0) {
          ASSERT_EQ(got.logprobs[i].top.size(), expected_lp.top.size());
          EXPECT_EQ(got.logprobs[i].chosen.token, expected);
          EXPECT_FLOAT_EQ(got.logprobs[i].chosen.logprob, expected_lp.chosen.logprob);
          for (size_t j = 0; j < expected_lp.top.size(); ++j) EXPECT_EQ(got.logprobs[i].top[j].token, expected_lp.top[j].token);
        }
        histories[i].AddGenerated(expected);
        last[i] = expected;
      }
    }
    // Two sampling entries for one row: refused before anything runs.
    const int64_t position = gpu->SlotPosition(0);
    StepPlan bad;
    bad.chunks.push_back({0, position, {1}, LogitsMode::kLast});
    bad.sampling.resize(2);
    StepOutput out;
    EXPECT_EQ(gpu->Forward(bad, &out).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(gpu->SlotPosition(0), position);
  }
}

// A state saved by the CPU backend (float32 window) continues on the GPU (bf16 window) and back:
// each backend converts on load, and the next logits agree with the other backend's.
TEST_F(CudaBackendTest, StatesMoveBetweenCpuAndCuda) {
  for (const std::string& dir : dirs_) {
    SCOPED_TRACE(dir);
    auto cpu = Make(BackendKind::kCpu, dir);
    auto gpu = Make(BackendKind::kCuda, dir);
    ASSERT_TRUE(cpu && gpu);
    std::mt19937 rng(22);
    const int64_t V = gpu->config().vocab_size;
    Prefill(*cpu, 0, RandomTokens(rng, 50, V), LogitsMode::kNone);
    Prefill(*gpu, 1, RandomTokens(rng, 60, V), LogitsMode::kNone);
    auto from_cpu = cpu->SaveSlot(0);
    auto from_gpu = gpu->SaveSlot(1);
    ASSERT_TRUE(from_cpu.ok() && from_gpu.ok());
    ASSERT_TRUE(gpu->LoadSlot(0, *from_cpu).ok());
    ASSERT_TRUE(cpu->LoadSlot(1, *from_gpu).ok());
    EXPECT_EQ(gpu->SlotPosition(0), 50);
    EXPECT_EQ(cpu->SlotPosition(1), 60);
    const StepOutput g = Decode(*gpu, {{0, 3}, {1, 4}}), c = Decode(*cpu, {{0, 3}, {1, 4}});
    EXPECT_LE(RowError(g, 0, c, 0), kLogitsTol);
    EXPECT_LE(RowError(g, 1, c, 1), kLogitsTol);
  }
}

TEST(CudaSyntheticTest, RandomWeightsOnDeviceAndRandomStates) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  for (bool teacher : {false, true}) {
    auto config = ShapePreset("tiny");
    ASSERT_TRUE(config.ok());
    if (teacher) config->layer_types.assign(config->num_layers, LayerType::kSoftmax);
    BackendOptions options;
    options.kind = BackendKind::kCuda;
    options.num_slots = 4;
    options.weights = WeightSource::Synthetic(*config, /*seed=*/1);
    auto gpu = CreateCudaBackend(options);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    // Float32 states (tools/common/random_state.h) that LoadSlot converts to the device dtypes.
    auto long_state = tools::RandomSerializedState(*config, 1000, 1);
    auto short_state = tools::RandomSerializedState(*config, 3, 2);
    ASSERT_TRUE(long_state.ok() && short_state.ok());
    ASSERT_TRUE((*gpu)->LoadSlot(0, *long_state).ok());
    ASSERT_TRUE((*gpu)->LoadSlot(1, *short_state).ok());
    const StepOutput out = Decode(**gpu, {{0, 1}, {1, 2}});
    ASSERT_EQ(out.rows, 2);
    for (float x : out.logits) ASSERT_TRUE(std::isfinite(x));
    EXPECT_EQ((*gpu)->SlotPosition(0), 1001);
  }
}

}  // namespace
}  // namespace lizard::gputest
