// lizard-cli drift: how far logits computed with bfloat16 recurrent states (S, z) drift from
// those computed with float32 states over a long greedy generation.
#pragma once

#include "absl/status/status.h"
#include "tools/common/args.h"

namespace lizard::cli {

// Runs the comparison described by the parsed `drift` options and prints its table.
absl::Status RunDrift(const tools::Args& args);

}  // namespace lizard::cli
