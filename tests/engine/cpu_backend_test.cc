// The CPU backend end to end: logits against the float64 Python reference, and the invariants
// every backend must keep (prefill == decode, chunking, fork/serialize, batching, validation).
#include "engine/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "engine/step_plan.h"
#include "nlohmann/json.hpp"
#include "tests/engine/test_models.h"
#include "tests/model/test_util.h"
#include "tools/common/random_state.h"

namespace lizard {
namespace {

using ::lizard::testing::MakeModel;
using ::lizard::testing::RelativeError;

// Logits of the float32 backend vs the float64 reference: relative Frobenius error.
constexpr double kRefTol = 1e-4;
// Two float32 computations of the same quantity in different orders (prefill vs decode,
// prompt chunks cut off the 64-token blocks): relative Frobenius error.
constexpr double kPathTol = 1e-4;

std::unique_ptr<Backend> OpenCpu(const std::string& dir, int32_t slots = 4) {
  BackendOptions options;
  options.weights = WeightSource::Directory(dir);
  options.num_slots = slots;
  options.num_threads = 2;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? *std::move(backend) : nullptr;
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = dist(rng);
  return tokens;
}

// Prefills `tokens` into `slot` (from its current position) in chunks of `chunk`, all logits.
std::vector<float> Prefill(Backend& backend, SlotId slot, const std::vector<int32_t>& tokens,
                           int64_t chunk) {
  std::vector<float> logits;
  const int64_t n = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0; start < n; start += chunk) {
    StepPlan plan;
    plan.chunks.push_back({slot, backend.SlotPosition(slot),
                           std::vector<int32_t>(tokens.begin() + start,
                                                tokens.begin() + std::min(n, start + chunk)),
                           LogitsMode::kAll});
    StepOutput out;
    const absl::Status s = backend.Forward(plan, &out);
    EXPECT_TRUE(s.ok()) << s;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
  }
  return logits;
}

// Feeds `tokens` one decode step each (the recurrent form).
std::vector<float> Decode(Backend& backend, SlotId slot, const std::vector<int32_t>& tokens) {
  std::vector<float> logits;
  for (int32_t token : tokens) {
    StepPlan plan;
    plan.chunks.push_back(
        {slot, backend.SlotPosition(slot), {token}, LogitsMode::kLast, /*decode=*/true});
    StepOutput out;
    const absl::Status s = backend.Forward(plan, &out);
    EXPECT_TRUE(s.ok()) << s;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
  }
  return logits;
}

// A slot's state as floats: the slot bytes followed by the softmax KV caches.
std::vector<float> StateFloats(Backend& backend, SlotId slot) {
  absl::StatusOr<std::string> bytes = backend.SaveSlot(slot);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  if (!bytes.ok()) return {};
  const StateLayout layout(backend.config(), DType::kF32, DType::kF32);
  absl::StatusOr<SerializedStateView> view = ParseSerializedState(layout, *bytes);
  EXPECT_TRUE(view.ok()) << view.status();
  if (!view.ok()) return {};
  std::string all(view->slot);
  for (std::string_view kv : view->softmax_kv) all.append(kv);
  std::vector<float> floats(all.size() / sizeof(float));
  std::memcpy(floats.data(), all.data(), floats.size() * sizeof(float));
  return floats;
}

// ---------------------------------------------------------------- (a) against the reference

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, PrefillAndDecodeMatchFloat64Reference) {
  const std::string dir = MakeModel(GetParam(), 3);
  ASSERT_FALSE(dir.empty()) << "make_model.py failed for " << GetParam();
  auto backend = OpenCpu(dir);
  ASSERT_NE(backend, nullptr);
  // 40 tokens: longer than most presets' windows (a window that wraps), shorter than some.
  const std::vector<int32_t> tokens = RandomTokens(40, backend->config().vocab_size, 5);
  const std::vector<double> want = ::lizard::testing::ReferenceLogits(dir, tokens);
  ASSERT_EQ(want.size(), tokens.size() * backend->config().vocab_size) << "reference failed";
  EXPECT_LT(RelativeError(Prefill(*backend, 0, tokens, 64), want), kRefTol) << "prefill";
  EXPECT_LT(RelativeError(Decode(*backend, 1, tokens), want), kRefTol) << "decode";
}

TEST(ReferenceDTypeTest, Bf16ShardedCheckpointMatchesReference) {
  // The reference reads the same bf16 values, so only float32 compute error remains.
  const std::string dir = MakeModel("tiny-hybrid-llama3", 4, "--dtype bf16 --shards 3");
  ASSERT_FALSE(dir.empty());
  auto backend = OpenCpu(dir);
  ASSERT_NE(backend, nullptr);
  const std::vector<int32_t> tokens = RandomTokens(30, backend->config().vocab_size, 9);
  const std::vector<double> want = ::lizard::testing::ReferenceLogits(dir, tokens);
  ASSERT_FALSE(want.empty());
  EXPECT_LT(RelativeError(Prefill(*backend, 0, tokens, 8), want), kRefTol);
}

INSTANTIATE_TEST_SUITE_P(AllPresets, ReferenceTest,
                         ::testing::ValuesIn(::lizard::testing::ListPresets()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// ------------------------------------------------- (b)-(e) paths that must agree with each other

// A pure Lizard model with a small window and a hybrid one (softmax layer, no GLA denominator).
class PathTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = MakeModel(GetParam(), 11);
    ASSERT_FALSE(dir_.empty());
    backend_ = OpenCpu(dir_);
    ASSERT_NE(backend_, nullptr);
    // 150 tokens: several 64-token blocks of the chunked form, many window wraps.
    tokens_ = RandomTokens(150, backend_->config().vocab_size, 7);
  }
  std::string dir_;
  std::unique_ptr<Backend> backend_;
  std::vector<int32_t> tokens_;
};

TEST_P(PathTest, PrefillEqualsTokenByTokenDecode) {
  const std::vector<float> prefill = Prefill(*backend_, 0, tokens_, 1000);
  const std::vector<float> decode = Decode(*backend_, 1, tokens_);
  EXPECT_LT(RelativeError(prefill, decode), kPathTol);
  EXPECT_EQ(backend_->SlotPosition(0), 150);
  EXPECT_EQ(backend_->SlotPosition(1), 150);
  EXPECT_LT(RelativeError(StateFloats(*backend_, 0), StateFloats(*backend_, 1)), kPathTol);
}

// Prompt chunks cut anywhere agree with one prefill within the path tolerance; cut at multiples
// of kPrefillAlignment (where the scheduler cuts prompts), bit for bit.
TEST_P(PathTest, ChunkedPrefillEqualsOnePrefill) {
  const std::vector<float> whole = Prefill(*backend_, 0, tokens_, 1000);
  const std::vector<float> whole_state = StateFloats(*backend_, 0);
  for (int64_t chunk : {1, 3, 7, 64, 100, 128}) {
    ASSERT_TRUE(backend_->ResetSlot(1).ok());
    const std::vector<float> chunked = Prefill(*backend_, 1, tokens_, chunk);
    const std::vector<float> chunked_state = StateFloats(*backend_, 1);
    EXPECT_LT(RelativeError(chunked, whole), kPathTol) << "chunk " << chunk;
    EXPECT_LT(RelativeError(chunked_state, whole_state), kPathTol) << "chunk " << chunk;
    if (chunk % kPrefillAlignment == 0) {
      EXPECT_EQ(chunked, whole) << "chunk " << chunk;
      EXPECT_EQ(chunked_state, whole_state) << "chunk " << chunk;
    }
  }
}

// A session's later turn starts at an unaligned position: its prompt cut at the next multiples
// of kPrefillAlignment gives the bits of the whole prompt in one step.
TEST_P(PathTest, UnalignedPromptCutAtAlignedPositionsEqualsOnePrefill) {
  const std::vector<int32_t> first(tokens_.begin(), tokens_.begin() + 21);
  const std::vector<int32_t> turn(tokens_.begin() + 21, tokens_.end());  // positions 21..149
  for (SlotId s : {0, 1}) Prefill(*backend_, s, first, 1000);
  const std::vector<float> whole = Prefill(*backend_, 0, turn, 1000);
  std::vector<float> cut = Prefill(*backend_, 1, {turn.begin(), turn.begin() + 43}, 1000);
  const std::vector<float> rest = Prefill(*backend_, 1, {turn.begin() + 43, turn.end()}, 64);
  cut.insert(cut.end(), rest.begin(), rest.end());  // cuts at 64 and 128
  EXPECT_EQ(cut, whole);
  EXPECT_EQ(StateFloats(*backend_, 1), StateFloats(*backend_, 0));
}

TEST_P(PathTest, ForkedAndReloadedStatesContinueIdentically) {
  const std::vector<int32_t> prefix(tokens_.begin(), tokens_.begin() + 90);
  const std::vector<int32_t> rest(tokens_.begin() + 90, tokens_.end());
  Prefill(*backend_, 0, prefix, 1000);
  ASSERT_TRUE(backend_->CopySlot(0, 1).ok());
  absl::StatusOr<std::string> saved = backend_->SaveSlot(0);
  ASSERT_TRUE(saved.ok()) << saved.status();
  // Loaded into this backend and into another instance (another process would do the same).
  ASSERT_TRUE(backend_->LoadSlot(2, *saved).ok());
  auto other = OpenCpu(dir_);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->LoadSlot(3, *saved).ok());
  EXPECT_EQ(other->SlotPosition(3), 90);

  // Each continues with 30 decode steps then a 30-token prefill chunk.
  const std::vector<int32_t> decoded(rest.begin(), rest.begin() + 30);
  const std::vector<int32_t> prefilled(rest.begin() + 30, rest.end());
  auto continue_slot = [&](Backend& b, SlotId slot) {
    std::vector<float> logits = Decode(b, slot, decoded);
    const std::vector<float> more = Prefill(b, slot, prefilled, 1000);
    logits.insert(logits.end(), more.begin(), more.end());
    return logits;
  };
  const std::vector<float> original = continue_slot(*backend_, 0);
  EXPECT_EQ(continue_slot(*backend_, 1), original) << "fork";
  EXPECT_EQ(continue_slot(*backend_, 2), original) << "reload";
  EXPECT_EQ(continue_slot(*other, 3), original) << "reload in another backend";
  EXPECT_EQ(StateFloats(*other, 3), StateFloats(*backend_, 0));
}

TEST_P(PathTest, BatchedStepsEqualEachSequenceAlone) {
  // Four sequences at different positions, then 5 steps where all decode together, and one
  // step mixing 3 decodes with a prefill chunk of the 4th.
  const std::vector<int64_t> lengths = {3, 10, 41, 70};
  auto run = [&](bool batched) -> std::vector<std::vector<float>> {
    auto b = OpenCpu(dir_);
    std::vector<std::vector<float>> logits(4);
    for (SlotId s = 0; s < 4; ++s) {
      Prefill(*b, s, std::vector<int32_t>(tokens_.begin() + s, tokens_.begin() + s + lengths[s]), 1000);
    }
    for (int step = 0; step < 6; ++step) {
      std::vector<StepPlan> plans;
      StepPlan together;
      for (SlotId s = 0; s < 4; ++s) {
        const int32_t token = tokens_[100 + 4 * step + s];
        if (step == 5 && s == 3) {
          together.chunks.push_back({s, b->SlotPosition(s), {token, 5, 6, 7}, LogitsMode::kAll});
        } else {
          together.chunks.push_back(
              {s, b->SlotPosition(s), {token}, LogitsMode::kLast, /*decode=*/true});
        }
        if (!batched) {
          plans.push_back(together);
          together = StepPlan{};
        }
      }
      if (batched) plans.push_back(together);
      for (const StepPlan& plan : plans) {
        StepOutput out;
        const absl::Status status = b->Forward(plan, &out);
        EXPECT_TRUE(status.ok()) << status;
        if (!status.ok()) return {};
        // Rows: each chunk's rows in plan order (one per decode, four for the prompt chunk).
        int64_t row = 0;
        for (const SequenceChunk& c : plan.chunks) {
          const int64_t rows = static_cast<int64_t>(c.tokens.size());
          logits[c.slot].insert(logits[c.slot].end(), out.row(row), out.row(row + rows));
          row += rows;
        }
      }
    }
    return logits;
  };
  const auto alone = run(false);
  const auto batched = run(true);
  // Bit for bit: every row takes the same arithmetic whatever else shares its step (cpu::Gemm).
  for (int s = 0; s < 4; ++s) {
    ASSERT_FALSE(alone[s].empty());
    EXPECT_EQ(batched[s], alone[s]) << "sequence " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, PathTest, ::testing::Values("tiny-basic", "tiny-hybrid"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "tiny-basic" ? std::string("Lizard")
                                                             : std::string("Hybrid");
                         });

// ------------------------------------------------------------------ (f) malformed checkpoints

TEST(CpuBackendLoadTest, RefusesEveryMalformedCheckpointWithItsMessage) {
  const std::string dir = ::lizard::testing::MakeTempDir();
  ASSERT_TRUE(::lizard::testing::RunCommand(
      ::lizard::testing::PythonScript("tools/make_bad_checkpoints.py") + " --out " + dir));
  std::ifstream f(dir + "/cases.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json cases = nlohmann::json::parse(f);
  ASSERT_FALSE(cases.empty());
  for (const auto& [name, expected] : cases.items()) {
    SCOPED_TRACE(name);
    BackendOptions options;
    options.weights = WeightSource::Directory(dir + "/" + name);
    options.num_slots = 1;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(options);
    ASSERT_FALSE(backend.ok());
    EXPECT_NE(backend.status().message().find(expected.get<std::string>()), std::string::npos)
        << backend.status();
  }
}

TEST(CpuBackendLoadTest, MissingDirectoryIsAnError) {
  BackendOptions options;
  options.weights = WeightSource::Directory("/nonexistent/lizard-model");
  EXPECT_FALSE(CreateCpuBackend(options).ok());
}

// ----------------------------------------------------- states saved under other dtypes (CUDA)

// A float32 CPU state re-encoded in the CUDA backend's dtypes (bf16 window and softmax KV; S and
// z in f32 or bf16) loads into the CPU backend and continues close to the original.
class StateConversionTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StateConversionTest, Bf16StatesLoadAndContinueClosely) {
  const std::string dir = MakeModel(GetParam(), 5);
  ASSERT_FALSE(dir.empty());
  auto backend = OpenCpu(dir);
  ASSERT_NE(backend, nullptr);
  const ModelConfig& config = backend->config();
  const std::vector<int32_t> tokens = RandomTokens(150, config.vocab_size, 13);
  const std::vector<int32_t> prefix(tokens.begin(), tokens.begin() + 90);
  const std::vector<int32_t> decoded(tokens.begin() + 90, tokens.begin() + 120);
  const std::vector<int32_t> prefilled(tokens.begin() + 120, tokens.end());
  Prefill(*backend, 0, prefix, 1000);
  absl::StatusOr<std::string> saved = backend->SaveSlot(0);
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto continue_slot = [&](SlotId slot) {
    std::vector<float> logits = Decode(*backend, slot, decoded);
    const std::vector<float> more = Prefill(*backend, slot, prefilled, 1000);
    logits.insert(logits.end(), more.begin(), more.end());
    return logits;
  };
  const std::vector<float> original = continue_slot(0);

  for (DType state_dtype : {DType::kF32, DType::kBF16}) {
    const StateLayout narrow(config, state_dtype, DType::kBF16);
    SCOPED_TRACE(narrow.fingerprint);
    absl::StatusOr<std::string> bf16 = ConvertSerializedState(config, narrow, *saved);
    ASSERT_TRUE(bf16.ok()) << bf16.status();
    ASSERT_TRUE(ParseSerializedState(narrow, *bf16).ok());
    const absl::Status loaded = backend->LoadSlot(1, *bf16);
    ASSERT_TRUE(loaded.ok()) << loaded;
    EXPECT_EQ(backend->SlotPosition(1), 90);
    // The loaded float32 state holds exactly the bf16 values: re-encoding it gives the same bytes.
    absl::StatusOr<std::string> reloaded = backend->SaveSlot(1);
    ASSERT_TRUE(reloaded.ok());
    EXPECT_NE(*reloaded, *saved);
    absl::StatusOr<std::string> again = ConvertSerializedState(config, narrow, *reloaded);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *bf16);
    EXPECT_LT(RelativeError(continue_slot(1), original), 1e-2);
  }
}

TEST_P(StateConversionTest, AnotherModelsStateIsStillRefused) {
  const std::string dir = MakeModel(GetParam(), 5);
  ASSERT_FALSE(dir.empty());
  auto backend = OpenCpu(dir);
  ASSERT_NE(backend, nullptr);
  ModelConfig other = backend->config();
  other.window_size += 1;
  const StateLayout layout(other, DType::kF32, DType::kBF16);
  const std::string slot(layout.slot_bytes, '\0');
  absl::StatusOr<std::string> bytes =
      SerializeState(layout, slot, std::vector<std::string_view>(layout.num_softmax_layers));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  const absl::Status status = backend->LoadSlot(0, *bytes);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_NE(message.find("incompatible model"), std::string::npos) << message;
  EXPECT_NE(message.find(layout.fingerprint), std::string::npos) << message;
  EXPECT_NE(message.find(StateLayout(backend->config(), DType::kF32, DType::kF32).fingerprint), std::string::npos)
      << message;
}

// The shipped model's shape (all Lizard) and a hybrid one with a softmax layer's KV cache.
INSTANTIATE_TEST_SUITE_P(Models, StateConversionTest, ::testing::Values("lizard-tiny", "tiny-hybrid"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param == "lizard-tiny" ? std::string("LizardTiny")
                                                              : std::string("Hybrid");
                         });

// ------------------------------------------------------------------- plans, slots, synthetic

class CpuBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeModel("tiny-basic", 2);
    ASSERT_FALSE(dir_.empty());
    backend_ = OpenCpu(dir_);
    ASSERT_NE(backend_, nullptr);
  }
  std::string dir_;
  std::unique_ptr<Backend> backend_;
};

TEST_F(CpuBackendTest, InvalidPlansAreRefusedAndChangeNothing) {
  Prefill(*backend_, 0, {1, 2, 3}, 10);
  const std::vector<float> before = StateFloats(*backend_, 0);
  const int32_t vocab = static_cast<int32_t>(backend_->config().vocab_size);
  std::vector<StepPlan> bad(7);
  bad[0].chunks.push_back({4, 0, {1}});                  // slot out of range
  bad[1].chunks.push_back({-1, 0, {1}});                 // negative slot
  bad[2].chunks.push_back({0, 2, {1}});                  // wrong position
  bad[3].chunks.push_back({0, 3, {vocab}});              // token out of range
  bad[4].chunks.push_back({1, 0, {}, LogitsMode::kLast});  // empty chunk
  bad[5].chunks.push_back({0, 3, {1}});                  // slot used twice
  bad[5].chunks.push_back({0, 3, {1}, LogitsMode::kLast});
  bad[6].chunks.push_back({0, 3, {1, 2}, LogitsMode::kLast, /*decode=*/true});  // 2-token decode
  for (size_t i = 0; i < bad.size(); ++i) {
    StepOutput out;
    const absl::Status s = backend_->Forward(bad[i], &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << i << ": " << s;
  }
  EXPECT_EQ(backend_->SlotPosition(0), 3);
  EXPECT_EQ(StateFloats(*backend_, 0), before);
}

// The one plan check every backend runs: messages name the chunk; positions past int32 are
// OUT_OF_RANGE.
TEST(StepPlanTest, ValidateStepPlanNamesTheChunk) {
  const int64_t big = std::numeric_limits<int32_t>::max() - 1;
  auto position = [&](SlotId slot) { return slot == 1 ? big : int64_t{0}; };
  StepPlan plan;
  plan.chunks.push_back({0, 0, {1, 2}, LogitsMode::kAll});
  plan.chunks.push_back({1, big, {3}});
  EXPECT_TRUE(ValidateStepPlan(plan, 2, 10, position).ok());
  plan.chunks[1].tokens = {3, 4};
  const absl::Status overflow = ValidateStepPlan(plan, 2, 10, position);
  EXPECT_EQ(overflow.code(), absl::StatusCode::kOutOfRange) << overflow;
  EXPECT_TRUE(absl::StrContains(overflow.message(), "chunk 1:")) << overflow;
  plan.chunks[1] = {0, 0, {3}};
  const absl::Status twice = ValidateStepPlan(plan, 2, 10, position);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument) << twice;
  EXPECT_TRUE(absl::StrContains(twice.message(), "chunk 1: slot 0")) << twice;
  plan.chunks[1] = {1, big, {3}, LogitsMode::kLast, /*decode=*/true};
  EXPECT_TRUE(ValidateStepPlan(plan, 2, 10, position).ok());
  plan.chunks[1].tokens = {3, 3};
  const absl::Status long_decode = ValidateStepPlan(plan, 2, 10, position);
  EXPECT_EQ(long_decode.code(), absl::StatusCode::kInvalidArgument) << long_decode;
  EXPECT_TRUE(absl::StrContains(long_decode.message(), "chunk 1: a decode chunk has one token"))
      << long_decode;
  plan.chunks.pop_back();
  plan.sampling.resize(3);  // the chunk has two logits rows
  EXPECT_EQ(ValidateStepPlan(plan, 2, 10, position).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuBackendTest, LogitsRowsFollowThePlan) {
  StepPlan plan;
  plan.chunks.push_back({0, 0, {5}, LogitsMode::kLast});
  plan.chunks.push_back({1, 0, {1, 2, 3}, LogitsMode::kNone});
  plan.chunks.push_back({2, 0, {4, 5}, LogitsMode::kAll});
  plan.chunks.push_back({3, 0, {6, 7, 8}, LogitsMode::kLast});
  StepOutput out;
  ASSERT_TRUE(backend_->Forward(plan, &out).ok());
  EXPECT_EQ(out.rows, plan.num_logits_rows());
  EXPECT_EQ(out.rows, 4);
  // The kLast row equals the last row of a kAll prefill of the same tokens in a fresh slot.
  ASSERT_TRUE(backend_->ResetSlot(1).ok());
  const std::vector<float> fresh = Prefill(*backend_, 1, {6, 7, 8}, 3);
  const int64_t v = out.vocab;
  EXPECT_EQ(std::vector<float>(out.row(3), out.row(3) + v),
            std::vector<float>(fresh.end() - v, fresh.end()));
}

TEST_F(CpuBackendTest, StepWithoutLogitsRowsAdvancesTheState) {
  StepPlan plan;
  plan.chunks.push_back({0, 0, {1, 2, 3}, LogitsMode::kNone});
  StepOutput out;
  ASSERT_TRUE(backend_->Forward(plan, &out).ok());
  EXPECT_EQ(out.rows, 0);
  EXPECT_TRUE(out.logits.empty());
  EXPECT_EQ(backend_->SlotPosition(0), 3);
}

TEST_F(CpuBackendTest, ResetSlotStartsOver) {
  const std::vector<float> first = Prefill(*backend_, 0, {1, 2, 3, 4}, 4);
  ASSERT_TRUE(backend_->ResetSlot(0).ok());
  EXPECT_EQ(backend_->SlotPosition(0), 0);
  EXPECT_EQ(Prefill(*backend_, 0, {1, 2, 3, 4}, 4), first);
}

TEST_F(CpuBackendTest, SlotCallsCheckTheirArguments) {
  EXPECT_FALSE(backend_->ResetSlot(9).ok());
  EXPECT_FALSE(backend_->CopySlot(0, 9).ok());
  EXPECT_FALSE(backend_->SaveSlot(-1).ok());
  EXPECT_FALSE(backend_->LoadSlot(0, "not a state").ok());
  absl::StatusOr<std::string> saved = backend_->SaveSlot(0);
  ASSERT_TRUE(saved.ok());
  EXPECT_FALSE(backend_->LoadSlot(0, saved->substr(0, saved->size() - 1)).ok());
}

TEST_F(CpuBackendTest, InfoAndSizes) {
  const BackendInfo info = backend_->info();
  EXPECT_EQ(info.name, "cpu");
  EXPECT_FALSE(info.device.empty());
  EXPECT_GT(info.weights_bytes, 0);
  EXPECT_EQ(info.state_pool_bytes, 4 * backend_->slot_bytes());
  EXPECT_EQ(backend_->slot_bytes(),
            StateLayout(backend_->config(), DType::kF32, DType::kF32).slot_bytes);
  EXPECT_EQ(backend_->kv_bytes_per_token(), 0);  // tiny-basic is all Lizard
}

TEST(CpuBackendSyntheticTest, RandomStatesAreDeterministicAndRun) {
  absl::StatusOr<ModelConfig> config = ShapePreset("tiny");
  ASSERT_TRUE(config.ok());
  config->num_layers = 2;
  config->layer_types = {LayerType::kLizard, LayerType::kSoftmax};
  BackendOptions options;
  options.weights = WeightSource::Synthetic(*config, /*seed=*/1);
  options.num_slots = 2;
  options.num_threads = 2;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  Backend& b = **backend;
  absl::StatusOr<std::string> state = tools::RandomSerializedState(b.config(), 100, 42);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*tools::RandomSerializedState(b.config(), 100, 42), *state);
  EXPECT_NE(*tools::RandomSerializedState(b.config(), 100, 43), *state);
  ASSERT_TRUE(b.LoadSlot(0, *state).ok());
  ASSERT_TRUE(b.LoadSlot(1, *state).ok());
  EXPECT_EQ(b.SlotPosition(0), 100);
  EXPECT_EQ(*b.SaveSlot(0), *b.SaveSlot(1));
  StepPlan plan;
  plan.chunks.push_back({0, 100, {3}, LogitsMode::kLast});
  plan.chunks.push_back({1, 100, {3}, LogitsMode::kLast});
  StepOutput out;
  ASSERT_TRUE(b.Forward(plan, &out).ok());
  for (float x : out.logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_EQ(std::vector<float>(out.row(0), out.row(1)), std::vector<float>(out.row(1), out.row(2)));
}

}  // namespace
}  // namespace lizard
