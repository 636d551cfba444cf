// Lets Abseil flags be spelled with dashes: Abseil names use underscores (--metrics_port), the
// documented spelling uses dashes (--metrics-port). Header-only; tools use it through the
// lizard_dash_flags library.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "absl/flags/parse.h"

namespace lizard {

// absl::ParseCommandLine after rewriting "--a-b[=v]" to "--a_b[=v]" (up to a bare "--").
// For programs without positional arguments.
inline void ParseCommandLineWithDashes(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (std::string& arg : args) {
    if (arg == "--") break;
    if (arg.rfind("--", 0) == 0) {
      const size_t name_end = std::min(arg.find('='), arg.size());
      std::replace(arg.begin() + 2, arg.begin() + name_end, '-', '_');
    }
  }
  std::vector<char*> pointers;
  for (std::string& arg : args) pointers.push_back(arg.data());
  absl::ParseCommandLine(static_cast<int>(pointers.size()), pointers.data());
}

}  // namespace lizard
