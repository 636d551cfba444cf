#include "engine/sampling/sampling.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lizard {

absl::Status Validate(const SamplingParams& p) {
  auto bad = [](const char* name, auto value, const char* rule) {
    return absl::InvalidArgumentError(absl::StrCat(name, " = ", value, " must ", rule));
  };
  for (auto [value, name] : {std::pair{p.temperature, "temperature"}, std::pair{p.top_p, "top_p"},
                             std::pair{p.min_p, "min_p"},
                             std::pair{p.repetition_penalty, "repetition_penalty"},
                             std::pair{p.presence_penalty, "presence_penalty"},
                             std::pair{p.frequency_penalty, "frequency_penalty"}}) {
    if (!std::isfinite(value)) return bad(name, value, "be finite");
  }
  if (p.temperature < 0) return bad("temperature", p.temperature, "be >= 0 (0 = greedy)");
  if (p.top_k < 0) return bad("top_k", p.top_k, "be >= 0 (0 = off)");
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p", p.top_p, "be in (0, 1]");
  if (p.min_p < 0 || p.min_p > 1) return bad("min_p", p.min_p, "be in [0, 1]");
  if (p.repetition_penalty <= 0) {
    return bad("repetition_penalty", p.repetition_penalty, "be > 0 (1 = off)");
  }
  // OpenAI's range for its two penalties.
  if (p.presence_penalty < -2 || p.presence_penalty > 2) {
    return bad("presence_penalty", p.presence_penalty, "be in [-2, 2]");
  }
  if (p.frequency_penalty < -2 || p.frequency_penalty > 2) {
    return bad("frequency_penalty", p.frequency_penalty, "be in [-2, 2]");
  }
  return absl::OkStatus();
}

}  // namespace lizard
