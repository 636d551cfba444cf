// Options that several tools (lizard-cli's subcommands, benchmarks) take the same way.
#pragma once

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model/model_config.h"
#include "tools/common/args.h"

namespace lizard::tools {

// The --backend option (default "auto").
absl::StatusOr<BackendKind> BackendKindOption(const Args& args);

// The model's shape: config.json of --model DIR or a named --shape (exactly one of them).
absl::StatusOr<ModelConfig> ModelShapeOption(const Args& args);

// Bytes in MiB, for the tables tools print.
double MiB(double bytes);

}  // namespace lizard::tools
