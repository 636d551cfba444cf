// GPT-2 byte-level alphabet: every byte is shown as a printable code point so that byte strings
// become ordinary vocabulary strings (space 0x20 -> U+0120 'Ġ', newline 0x0A -> U+010A 'Ċ').
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace lizard::tokenizer_internal {

// The code point that stands for a byte.
uint32_t ByteToCodePoint(uint8_t byte);

// The byte a code point stands for, if it is one of the 256 alphabet code points.
std::optional<uint8_t> CodePointToByte(uint32_t cp);

// Appends the alphabet spelling of raw bytes.
void AppendByteLevel(std::string_view bytes, std::string* out);

// The raw bytes spelled by a byte-level token; nullopt if a code point is outside the alphabet.
std::optional<std::string> ByteLevelToBytes(std::string_view token);

}  // namespace lizard::tokenizer_internal
