// The loader against checkpoints written by tools/make_model.py and tools/make_bad_checkpoints.py
// (the Python writers the rest of the test suite uses), so both sides agree on the format.
#include <string>

#include "engine/cpu/weights.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/test_util.h"

namespace lizard {
namespace {

// Runs tools/<tool_and_args> under LIZARD_PYTHON; true on exit status 0.
bool RunTool(const std::string& tool_and_args) {
  return testing::RunCommand(testing::PythonScript("tools/" + tool_and_args) + " > /dev/null");
}

absl::Status LoadModel(const std::string& dir) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(dir);
  if (!checkpoint.ok()) return checkpoint.status();
  return LoadHostWeights(*config, **checkpoint).status();
}

TEST(PythonCheckpointTest, EveryMakeModelPresetLoads) {
  testing::TempDir dir;
  for (const char* preset : {"tiny-basic", "tiny-bias", "tiny-hybrid", "tiny-llama3", "tiny-hybrid-llama3",
                             "tiny-teacher", "tiny-teacher-llama3", "lizard-tiny"}) {
    for (const auto& [dtype, shards] : {std::pair{"f32", 1}, std::pair{"bf16", 2}, std::pair{"f16", 3}}) {
      const std::string out = dir.path() + "/" + preset + "-" + dtype;
      ASSERT_TRUE(RunTool("make_model.py --out " + out + " --preset " + preset + " --seed 3 --dtype " + dtype +
                          " --shards " + std::to_string(shards)))
          << preset;
      const absl::Status status = LoadModel(out);
      EXPECT_TRUE(status.ok()) << preset << " " << dtype << ": " << status;
    }
  }
}

TEST(PythonCheckpointTest, EveryBadCheckpointIsRefusedWithItsMessage) {
  testing::TempDir dir;
  ASSERT_TRUE(RunTool("make_bad_checkpoints.py --out " + dir.path()));
  const nlohmann::json cases = nlohmann::json::parse(testing::ReadFile(dir.path() + "/cases.json"));
  ASSERT_FALSE(cases.empty());
  for (const auto& [name, needle] : cases.items()) {
    const absl::Status status = LoadModel(dir.path() + "/" + name);
    ASSERT_FALSE(status.ok()) << name;
    EXPECT_NE(std::string(status.message()).find(needle.get<std::string>()), std::string::npos)
        << name << ": " << status;
  }
}

}  // namespace
}  // namespace lizard
