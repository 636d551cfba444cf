#include "tools/cli/npy.h"

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lizard::cli {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape,
                         const std::vector<float>& data) {
  // Header: magic, version 1.0, little-endian u16 length, then a Python dict literal padded
  // with spaces and a newline so that the data starts at a multiple of 64 bytes.
  std::string shape_text = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_text += ",";
  std::string dict = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                                  shape_text, "), }");
  const size_t prefix = 10;  // magic (6) + version (2) + length (2)
  const size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) return absl::UnavailableError(absl::StrCat("cannot open ", path, " for writing"));
  const uint16_t len = static_cast<uint16_t>(dict.size());
  f.write("\x93NUMPY\x01\x00", 8);
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  f.write(len_bytes, 2);
  f.write(dict.data(), dict.size());
  f.write(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
  if (!f) return absl::UnavailableError(absl::StrCat("failed writing ", path));
  return absl::OkStatus();
}

}  // namespace lizard::cli
