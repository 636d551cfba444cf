// PCRE2 regular expressions in UTF + UCP mode (\p{L}, \s etc. are Unicode-aware), JIT-compiled.
#pragma once

#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct pcre2_real_code_8;

namespace lizard::tokenizer_internal {

class Regex {
 public:
  // literal: the pattern is matched as plain text (a tokenizer.json {"String": ...} pattern).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of the successive non-empty matches in valid UTF-8 text. Safe to call
  // from several threads at once. Fails only when PCRE2 hits a resource limit.
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(std::string_view text) const;

 private:
  explicit Regex(pcre2_real_code_8* code) : code_(code) {}
  pcre2_real_code_8* code_;
};

}  // namespace lizard::tokenizer_internal
