#include "engine/step_plan.h"

#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/sampling/sampler.h"

namespace lizard {

absl::Status ValidateStepPlan(const StepPlan& plan, int32_t num_slots, int64_t vocab,
                              absl::FunctionRef<int64_t(SlotId)> slot_position) {
  absl::flat_hash_set<SlotId> seen;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const SequenceChunk& c = plan.chunks[i];
    const std::string what = absl::StrCat("chunk ", i, ": ");
    if (c.slot < 0 || c.slot >= num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, "slot ", c.slot, " out of range [0, ", num_slots, ")"));
    }
    if (!seen.insert(c.slot).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, "slot ", c.slot, " appears more than once in the step"));
    }
    if (c.first_position != slot_position(c.slot)) {
      return absl::InvalidArgumentError(absl::StrCat(what, "position ", c.first_position,
                                                     " but slot ", c.slot, " is at ",
                                                     slot_position(c.slot)));
    }
    if (c.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(what, "no tokens"));
    if (c.decode && c.tokens.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, "a decode chunk has one token, got ", c.tokens.size()));
    }
    // Backends keep positions in int32 on the device.
    const int64_t end = c.first_position + static_cast<int64_t>(c.tokens.size());
    if (end > std::numeric_limits<int32_t>::max()) {
      return absl::OutOfRangeError(absl::StrCat(what, "position ", end, " overflows int32"));
    }
    for (int32_t t : c.tokens) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, "token ", t, " out of range [0, ", vocab, ")"));
      }
    }
  }
  return ValidateSampling(plan, vocab);
}

}  // namespace lizard
