// Helpers of the engine tests: checkpoints made by tools/make_model.py, logits of the float64
// Python reference (tests/reference/lizard_ref.py), .npy reading. Temporary directories and
// commands: tests/model/test_util.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lizard::testing {

// The preset names `make_model.py --list-presets` prints.
std::vector<std::string> ListPresets();

// Writes a checkpoint of `preset` into a new directory and returns it ("" on failure).
// `extra_args` go to make_model.py as they are (e.g. "--dtype bf16 --shards 2").
std::string MakeModel(const std::string& preset, uint64_t seed, const std::string& extra_args = "");

// Float64 reference logits [tokens.size(), vocab] of the checkpoint, flattened (empty on failure).
std::vector<double> ReferenceLogits(const std::string& model_dir, const std::vector<int32_t>& tokens);

// Reads a float64 or float32 .npy array (as doubles) and its shape; false on any format problem.
bool ReadNpy(const std::string& path, std::vector<double>* data, std::vector<int64_t>* shape);

// sqrt(sum (a-b)^2 / sum b^2).
double RelativeError(const std::vector<float>& got, const std::vector<double>& want);
double RelativeError(const std::vector<float>& got, const std::vector<float>& want);

}  // namespace lizard::testing
