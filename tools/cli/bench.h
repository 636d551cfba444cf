// lizard-cli bench: decode and prefill throughput of a backend on a model's shape.
#pragma once

#include "absl/status/status.h"
#include "tools/common/args.h"

namespace lizard::cli {

// Runs the benchmark described by the parsed `bench` options and prints its tables.
absl::Status RunBench(const tools::Args& args);

}  // namespace lizard::cli
