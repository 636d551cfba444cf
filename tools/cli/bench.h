// lizard-cli bench: decode and prefill throughput of a backend on a model's shape.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model/model_config.h"
#include "tools/cli/args.h"

namespace lizard::cli {

// The --backend option (default "auto").
absl::StatusOr<BackendKind> BackendKindOption(const Args& args);

// The model's shape: config.json of --model DIR or a named --shape (exactly one of them).
absl::StatusOr<ModelConfig> ModelShapeOption(const Args& args);

double MiB(double bytes);

// Runs the benchmark described by the parsed `bench` options and prints its tables.
absl::Status RunBench(const Args& args);

}  // namespace lizard::cli
