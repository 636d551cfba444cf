#include "tests/model/test_util.h"

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"

namespace lizard::testing {

TempDir::TempDir() {
  std::string pattern = ::testing::TempDir() + "/lizard_test_XXXXXX";
  EXPECT_NE(mkdtemp(pattern.data()), nullptr) << pattern;
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string MakeTempDir() {
  // Destroyed (and so removed) when the process exits.
  static std::vector<std::unique_ptr<TempDir>> dirs;
  dirs.push_back(std::make_unique<TempDir>());
  return std::filesystem::is_directory(dirs.back()->path()) ? dirs.back()->path() : "";
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(file.good()) << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool RunCommand(const std::string& command) { return std::system(command.c_str()) == 0; }

std::string PythonScript(const std::string& script) {
  return std::string(LIZARD_PYTHON) + " " + LIZARD_SOURCE_DIR + "/" + script;
}

}  // namespace lizard::testing
