// UTF-8 helpers shared by the tokenizer pieces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace lizard::tokenizer_internal {

// Debian builds Abseil with its own string_view type; absl functions and heterogeneous
// flat_hash_map lookups need one.
inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

// Length of the well-formed UTF-8 sequence starting at s[i] (1..4), or 0 when it is malformed
// (overlong, surrogate, above U+10FFFF, bad or missing continuation byte).
size_t Utf8SequenceLength(std::string_view s, size_t i);

bool IsValidUtf8(std::string_view s);

// Decodes the code point at s[*i] of well-formed UTF-8 and advances *i past it.
uint32_t NextCodePoint(std::string_view s, size_t* i);

void AppendCodePoint(uint32_t cp, std::string* out);

// Replaces every maximal ill-formed subsequence with one U+FFFD (the WHATWG / Rust from_utf8_lossy
// rule), so the result is valid UTF-8.
std::string LossyUtf8(std::string_view bytes);

// Unicode White_Space (what trimming around lstrip/rstrip added tokens removes).
bool IsUnicodeWhitespace(uint32_t cp);

}  // namespace lizard::tokenizer_internal
