// The pipeline stages of a tokenizer.json besides the model: normalizers, pre-tokenizers,
// post-processors and decoders, each built from its JSON object. Anything not implemented is
// refused with an error naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lizard::tokenizer_internal {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::StatusOr<std::string> Normalize(std::string_view text) const = 0;
};

// Splits text into the words the model encodes one by one.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // at_input_start: the words come from text at the very start of the input (Metaspace "first").
  virtual absl::Status Split(std::vector<std::string>* words, bool at_input_start) const = 0;
};

// Turns the vocabulary strings of the ids back into text pieces (their concatenation is the text).
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual absl::Status Decode(std::vector<std::string>* tokens) const = 0;
};

// What the post-processor adds around a single sequence when add_special_tokens is set.
struct SpecialTokenWrap {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
};

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& config);
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& config);
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& config);
absl::StatusOr<SpecialTokenWrap> ParsePostProcessor(const nlohmann::json& config);

// A token id of tokenizer.json: an integer in [0, kMaxTokenId] (INVALID_ARGUMENT otherwise). The
// bound keeps a corrupt id from sizing the id -> token table or overflowing id + 1.
inline constexpr int32_t kMaxTokenId = (1 << 24) - 1;
absl::StatusOr<int32_t> ParseTokenId(const nlohmann::json& id);

}  // namespace lizard::tokenizer_internal
