#include "tools/common/options.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lizard::tools {

absl::StatusOr<BackendKind> BackendKindOption(const Args& args) {
  absl::StatusOr<BackendKind> kind = ParseBackendKind(args.String("backend", "auto"));
  if (!kind.ok()) return absl::InvalidArgumentError(absl::StrCat("--backend: ", kind.status().message()));
  return kind;
}

absl::StatusOr<ModelConfig> ModelShapeOption(const Args& args) {
  if (args.Has("model") == args.Has("shape")) {
    return absl::InvalidArgumentError("give exactly one of --model DIR or --shape NAME");
  }
  return args.Has("model") ? LoadModelConfig(args.String("model", "")) : ShapePreset(args.String("shape", ""));
}

double MiB(double bytes) { return bytes / 1048576.0; }

}  // namespace lizard::tools
