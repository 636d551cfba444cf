#include "tests/engine/test_models.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/numbers.h"
#include "tests/model/test_util.h"

namespace lizard::testing {

std::vector<std::string> ListPresets() {
  const std::string command = PythonScript("tools/make_model.py") + " --list-presets";
  std::vector<std::string> presets;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return presets;
  char line[256];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    std::string name(line);
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
    if (!name.empty()) presets.push_back(name);
  }
  pclose(pipe);
  return presets;
}

std::string MakeModel(const std::string& preset, uint64_t seed, const std::string& extra_args) {
  const std::string dir = absl::StrCat(MakeTempDir(), "/", preset);
  const bool ok = RunCommand(absl::StrCat(PythonScript("tools/make_model.py"), " --out ", dir,
                                          " --preset ", preset, " --seed ", seed, " ", extra_args));
  return ok ? dir : "";
}

std::vector<double> ReferenceLogits(const std::string& model_dir, const std::vector<int32_t>& tokens) {
  const std::string out = absl::StrCat(MakeTempDir(), "/ref.npy");
  if (!RunCommand(absl::StrCat(PythonScript("tests/reference/lizard_ref.py"), " --model ",
                               model_dir, " --tokens ", absl::StrJoin(tokens, ","), " --out ", out))) {
    return {};
  }
  std::vector<double> data;
  std::vector<int64_t> shape;
  if (!ReadNpy(out, &data, &shape)) return {};
  return data;
}

bool ReadNpy(const std::string& path, std::vector<double>* data, std::vector<int64_t>* shape) {
  std::ifstream f(path, std::ios::binary);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) return false;
  // Version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one.
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  const int len_size = magic[6] == 1 ? 2 : 4;
  if (!f.read(reinterpret_cast<char*>(len_bytes), len_size)) return false;
  for (int i = len_size - 1; i >= 0; --i) header_len = header_len * 256 + len_bytes[i];
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) return false;
  const bool f64 = header.find("'<f8'") != std::string::npos;
  const bool f32 = header.find("'<f4'") != std::string::npos;
  if ((!f64 && !f32) || header.find("'fortran_order': False") == std::string::npos) return false;
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) return false;
  shape->clear();
  int64_t count = 1;
  for (absl::string_view part : absl::StrSplit(header.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
    int64_t dim;
    if (!absl::SimpleAtoi(part, &dim)) return false;
    shape->push_back(dim);
    count *= dim;
  }
  data->resize(count);
  if (f64) return static_cast<bool>(f.read(reinterpret_cast<char*>(data->data()), count * 8));
  std::vector<float> values(count);
  if (!f.read(reinterpret_cast<char*>(values.data()), count * 4)) return false;
  data->assign(values.begin(), values.end());
  return true;
}

double RelativeError(const std::vector<float>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  return RelativeError(got, std::vector<double>(want.begin(), want.end()));
}

}  // namespace lizard::testing
