// Validate(SamplingParams): the one range check of every layer.
#include "engine/sampling/sampling.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>

namespace lizard {
namespace {

std::string Message(const SamplingParams& p) {
  const absl::Status s = Validate(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.message());
}

TEST(SamplingParamsTest, DefaultsAndEdgesAreValid) {
  EXPECT_TRUE(Validate({}).ok());
  EXPECT_TRUE(Validate({.temperature = 2.0f, .top_k = 5, .top_p = 1.0f, .min_p = 1.0f,
                        .repetition_penalty = 0.5f, .presence_penalty = -2.0f,
                        .frequency_penalty = 2.0f, .seed = 7})
                  .ok());
}

TEST(SamplingParamsTest, MessagesNameTheFieldFirst) {
  EXPECT_EQ(Message({.temperature = -1.0f}), "temperature = -1 must be >= 0 (0 = greedy)");
  EXPECT_EQ(Message({.top_k = -1}), "top_k = -1 must be >= 0 (0 = off)");
  EXPECT_EQ(Message({.top_p = 0.0f}), "top_p = 0 must be in (0, 1]");
  EXPECT_EQ(Message({.top_p = 2.0f}), "top_p = 2 must be in (0, 1]");
  EXPECT_EQ(Message({.min_p = 1.5f}), "min_p = 1.5 must be in [0, 1]");
  EXPECT_EQ(Message({.repetition_penalty = 0.0f}), "repetition_penalty = 0 must be > 0 (1 = off)");
  EXPECT_EQ(Message({.presence_penalty = 3.0f}), "presence_penalty = 3 must be in [-2, 2]");
  EXPECT_EQ(Message({.frequency_penalty = -2.5f}), "frequency_penalty = -2.5 must be in [-2, 2]");
}

TEST(SamplingParamsTest, NonFiniteValuesAreRefused) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Message({.temperature = inf}), "temperature = inf must be finite");
  EXPECT_EQ(Message({.top_p = nan}), "top_p = nan must be finite");
  EXPECT_EQ(Message({.presence_penalty = -inf}), "presence_penalty = -inf must be finite");
}

}  // namespace
}  // namespace lizard
