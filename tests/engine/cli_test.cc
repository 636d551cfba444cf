// lizard-cli end to end: `logits` writes the reference's logits, errors exit non-zero.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/engine/test_models.h"
#include "tests/model/test_util.h"

namespace lizard {
namespace {

using ::lizard::testing::MakeModel;
using ::lizard::testing::MakeTempDir;
using ::lizard::testing::RunCommand;

// float32 logits written by the CLI vs the float64 reference: relative Frobenius error.
constexpr double kRefTol = 1e-4;

std::string Cli() { return LIZARD_CLI; }

TEST(CliTest, LogitsMatchReferenceInPrefillChunksAndDecode) {
  const std::string dir = MakeModel("tiny-hybrid", 6);
  ASSERT_FALSE(dir.empty());
  std::vector<int32_t> tokens;
  for (int i = 0; i < 25; ++i) tokens.push_back((i * 37 + 11) % 100);  // tiny-hybrid: V = 100
  const std::vector<double> want = ::lizard::testing::ReferenceLogits(dir, tokens);
  ASSERT_FALSE(want.empty());
  const std::string out_dir = MakeTempDir();
  for (const std::string& mode : {std::string("--mode prefill --chunk 4"), std::string("--mode decode")}) {
    SCOPED_TRACE(mode);
    const std::string out = out_dir + "/logits.npy";
    ASSERT_TRUE(RunCommand(absl::StrCat(Cli(), " logits --backend cpu --model ", dir, " --tokens ",
                                        absl::StrJoin(tokens, ","), " ", mode, " --out ", out,
                                        " > /dev/null")));
    std::vector<double> got;
    std::vector<int64_t> shape;
    ASSERT_TRUE(::lizard::testing::ReadNpy(out, &got, &shape));
    EXPECT_EQ(shape, (std::vector<int64_t>{25, 100}));
    EXPECT_LT(::lizard::testing::RelativeError(std::vector<float>(got.begin(), got.end()), want), kRefTol);
  }
}

TEST(CliTest, ErrorsExitNonZero) {
  const std::string dir = MakeModel("tiny-basic", 1);
  ASSERT_FALSE(dir.empty());
  const std::string quiet = " > /dev/null 2>&1";
  EXPECT_FALSE(RunCommand(Cli() + " nosuchcommand" + quiet));
  EXPECT_FALSE(RunCommand(Cli() + " logits --model " + dir + " --tokens 1,2" + quiet));  // no --out
  EXPECT_FALSE(RunCommand(Cli() + " logits --model /nonexistent --tokens 1 --out /dev/null" + quiet));
  EXPECT_FALSE(RunCommand(Cli() + " generate --model " + dir + " --tokens 1,x" + quiet));
  EXPECT_FALSE(RunCommand(Cli() + " generate --model " + dir + " --tokens 1,99999" + quiet));
  EXPECT_FALSE(RunCommand(Cli() + " generate --model " + dir + " --prompt hi" + quiet));  // no tokenizer.json
  EXPECT_FALSE(RunCommand(Cli() + " bench --shape nosuchshape" + quiet));
  EXPECT_FALSE(RunCommand(Cli() + " info --model " + dir + " --bogus 1" + quiet));
  // And the good paths succeed.
  EXPECT_TRUE(RunCommand(Cli() + " info --model " + dir + quiet));
  EXPECT_TRUE(RunCommand(Cli() + " generate --backend cpu --model " + dir +
                         " --tokens 1,2,3 --max-new-tokens 4 --temperature 0.7 --top-k 5 --seed 3" + quiet));
  EXPECT_TRUE(RunCommand(Cli() + " bench --backend cpu --shape tiny --batch-sizes 2 --context 40 "
                         "--prompt-lengths 70 --steps 2 --teacher" + quiet));
}

TEST(CliTest, SeededSamplingIsReproducible) {
  const std::string dir = MakeModel("tiny-basic", 1);
  ASSERT_FALSE(dir.empty());
  const std::string out_dir = MakeTempDir();
  const std::string command = Cli() + " generate --backend cpu --model " + dir +
                              " --tokens 5,6,7 --max-new-tokens 8 --temperature 1.0 --top-p 0.9 --seed 11 > ";
  ASSERT_TRUE(RunCommand(command + out_dir + "/a.txt"));
  ASSERT_TRUE(RunCommand(command + out_dir + "/b.txt"));
  EXPECT_TRUE(RunCommand("cmp -s " + out_dir + "/a.txt " + out_dir + "/b.txt"));
}

// drift on the CPU backend: both backends keep float32 states, so every window shows no error.
TEST(CliTest, DriftOnCpuIsZero) {
  // From CMake, not __FILE__ (relative in builds with CCACHE_BASEDIR).
  const std::string model = LIZARD_TINY_MODEL;
  ASSERT_TRUE(std::filesystem::exists(model + "/config.json")) << model;
  const std::string out = MakeTempDir() + "/drift.txt";
  const std::string drift = absl::StrCat(Cli(), " drift --backend cpu --model ", model);
  ASSERT_TRUE(RunCommand(drift + " --tokens 64 --report-every 16 --prompt-length 8 > " + out));
  const std::string text = ::lizard::testing::ReadFile(out);
  std::vector<std::string> windows;
  int overall = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string label;
    fields >> label;
    const bool window = std::regex_match(label, std::regex(R"(\d+-\d+)"));
    if (!window && label != "overall") continue;
    if (window) {
      windows.push_back(label);
    } else {
      ++overall;
      fields >> label;  // the token range
      EXPECT_EQ(label, "1-64");
    }
    SCOPED_TRACE(line);
    double rel_mean = -1, rel_max = -1, abs_max = -1, kl_mean = -1, kl_max = -1;
    std::string agree;
    fields >> rel_mean >> rel_max >> abs_max >> agree >> kl_mean >> kl_max;
    ASSERT_FALSE(fields.fail());
    EXPECT_EQ(rel_mean, 0.0);
    EXPECT_EQ(rel_max, 0.0);
    EXPECT_EQ(abs_max, 0.0);
    EXPECT_EQ(agree, "100.00%");
    EXPECT_EQ(kl_mean, 0.0);
    EXPECT_EQ(kl_max, 0.0);
  }
  EXPECT_EQ(windows, (std::vector<std::string>{"1-16", "17-32", "33-48", "49-64"})) << text;
  EXPECT_EQ(overall, 1) << text;
  EXPECT_NE(text.find("first disagreement: never"), std::string::npos) << text;
  EXPECT_NE(text.find("zero by construction"), std::string::npos) << text;  // the CPU note

  const std::string quiet = " > /dev/null 2>&1";
  EXPECT_FALSE(RunCommand(drift + " --tokens 0" + quiet));
  EXPECT_FALSE(RunCommand(drift + " --report-every 0" + quiet));
  EXPECT_FALSE(RunCommand(drift + " --prompt-length 0" + quiet));
  EXPECT_FALSE(RunCommand(drift + " --prompt-length 100 --tokens 8100" + quiet));  // max positions 8192
  EXPECT_FALSE(RunCommand(drift + " --shape tiny" + quiet));  // --model and --shape
}

}  // namespace
}  // namespace lizard
