#include "server/stop_strings.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace lizard::server {
namespace {

// Feeds `pieces` and returns everything released plus whether it stopped.
std::pair<std::string, bool> Feed(std::vector<std::string> stops,
                                 const std::vector<std::string>& pieces) {
  StopStringMatcher matcher(std::move(stops));
  std::string out;
  for (const std::string& p : pieces) {
    out += matcher.Push(p);
    if (matcher.stopped()) return {out, true};
  }
  return {out + matcher.Flush(), false};
}

TEST(StopStringMatcherTest, MatchAcrossPieces) {
  auto [text, stopped] = Feed({"STOP"}, {"hello S", "T", "OP world"});
  EXPECT_TRUE(stopped);
  EXPECT_EQ(text, "hello ");
}

TEST(StopStringMatcherTest, HoldsBackPossiblePrefixOnly) {
  StopStringMatcher matcher({"abc"});
  EXPECT_EQ(matcher.Push("xxa"), "xx");
  EXPECT_EQ(matcher.Push("b"), "");
  EXPECT_EQ(matcher.Push("d"), "abd");
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopStringMatcherTest, EarliestStopWins) {
  auto [text, stopped] = Feed({"world", "lo w"}, {"hello world"});
  EXPECT_TRUE(stopped);
  EXPECT_EQ(text, "hel");
}

TEST(StopStringMatcherTest, FlushReleasesHeldText) {
  auto [text, stopped] = Feed({"\xC3\xA9t\xC3\xA9"}, {"caf", "\xC3\xA9"});
  EXPECT_FALSE(stopped);
  EXPECT_EQ(text, "caf\xC3\xA9");
}

// Against a simple reference on random texts split at random points: generation stops after the
// first piece that completes a stop string; the released text is what comes before the earliest
// stop string occurrence in the text so far.
TEST(StopStringMatcherTest, MatchesReferenceOnRandomSplits) {
  std::mt19937 rng(3);
  const std::string alphabet = "ab c";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string full;
    for (int i = 0, n = rng() % 30; i < n; ++i) full += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops;
    for (int s = 0, n = 1 + rng() % 3; s < n; ++s) {
      std::string stop;
      for (int i = 0, len = 1 + rng() % 4; i < len; ++i) stop += alphabet[rng() % alphabet.size()];
      stops.push_back(stop);
    }
    std::vector<std::string> pieces;
    for (size_t i = 0; i < full.size();) {
      const size_t len = 1 + rng() % 4;
      pieces.push_back(full.substr(i, len));
      i += len;
    }
    size_t cut = std::string::npos;
    std::string so_far;
    for (const std::string& piece : pieces) {
      so_far += piece;
      for (const std::string& stop : stops) cut = std::min(cut, so_far.find(stop));
      if (cut != std::string::npos) break;
    }
    auto [text, stopped] = Feed(stops, pieces);
    EXPECT_EQ(stopped, cut != std::string::npos) << full;
    EXPECT_EQ(text, full.substr(0, cut)) << full << " stops: " << ::testing::PrintToString(stops) << " pieces: " << ::testing::PrintToString(pieces);
  }
}

}  // namespace
}  // namespace lizard::server
