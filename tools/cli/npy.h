// Writes NumPy .npy files (format 1.0), the exchange format with the Python reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lizard::cli {

// Writes a little-endian float32 array of `shape` (row-major; data has prod(shape) values).
absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const std::vector<float>& data);

}  // namespace lizard::cli
