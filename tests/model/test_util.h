// Helpers shared by the C++ test folders (model, engine, server): temporary directories, whole
// files, shell commands and the repository's Python scripts.
#pragma once

#include <string>

namespace lizard::testing {

// A fresh empty directory under the test temp dir; removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A fresh empty directory that lives until the test process exits ("" on failure).
std::string MakeTempDir();

void WriteFile(const std::string& path, const std::string& bytes);
std::string ReadFile(const std::string& path);  // "" when it cannot be read

// Runs a command line through the shell; true when it exits with status 0.
bool RunCommand(const std::string& command);

// "LIZARD_PYTHON LIZARD_SOURCE_DIR/<script>": the start of a command line that runs one of the
// repository's Python scripts (e.g. "tools/make_model.py") with Debian's python3.
std::string PythonScript(const std::string& script);

}  // namespace lizard::testing
