// Tokenizer: Hugging Face tokenizer.json (byte-level BPE and SentencePiece-style BPE).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lizard {

class Tokenizer {
 public:
  // Loads a tokenizer.json file; unsupported components are refused with a message naming them.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);
  virtual ~Tokenizer() = default;

  // INVALID_ARGUMENT for malformed UTF-8. add_special_tokens applies the post-processor (BOS).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      bool add_special_tokens) const = 0;
  // INVALID_ARGUMENT for ids outside the vocabulary.
  virtual absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                             bool skip_special_tokens = false) const = 0;
  virtual int64_t vocab_size() const = 0;
};

// Streaming detokenization: Push returns the text that became complete (never a partial UTF-8
// character); the concatenation of all Push results and Flush equals Decode of all ids.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  absl::StatusOr<std::string> Push(int32_t token);
  std::string Flush();  // whatever is left (invalid trailing bytes become U+FFFD)

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;  // context (last tokens that produced text), then newer tokens
  size_t read_count_ = 0;     // leading tokens of ids_ whose text was already returned
};

}  // namespace lizard
