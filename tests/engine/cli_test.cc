// lizard-cli end to end: `logits` writes the reference's logits, errors exit non-zero.
#include <gtest/gtest.h>

#include <random>
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

}  // namespace
}  // namespace lizard
