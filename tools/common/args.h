// Minimal command-line parsing for tools (lizard-cli subcommands): "--name value", "--name=value"
// and bare "--name" switches, checked against the names a subcommand accepts.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lizard::tools {

class Args {
 public:
  // `options` take a value; `switches` take none. Anything else is an error.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::set<std::string>& options,
                                    const std::set<std::string>& switches);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  absl::StatusOr<std::string> Required(const std::string& name) const;
  std::string String(const std::string& name, const std::string& fallback) const;
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> Double(const std::string& name, double fallback) const;
  // Comma-separated integers, e.g. "1,8,32".
  absl::StatusOr<std::vector<int64_t>> IntList(const std::string& name,
                                               const std::vector<int64_t>& fallback) const;

 private:
  std::map<std::string, std::string> values_;  // switches map to ""
};

// Parses "1,2,3" (what --tokens takes).
absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text);

}  // namespace lizard::tools
