#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace lizard::tokenizer_internal {
namespace {

// Printable bytes keep their own code point; the other 68 are numbered from U+0100 in byte order.
struct Tables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 324> cp_to_byte{};  // all alphabet code points are below 256 + 68

  Tables() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      byte_to_cp[b] = printable ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
      AppendCodePoint(byte_to_cp[b], &byte_to_utf8[b]);
    }
  }
};

const Tables& GetTables() {
  static const Tables* tables = new Tables();
  return *tables;
}

}  // namespace

uint32_t ByteToCodePoint(uint8_t byte) { return GetTables().byte_to_cp[byte]; }

std::optional<uint8_t> CodePointToByte(uint32_t cp) {
  const Tables& t = GetTables();
  if (cp >= t.cp_to_byte.size() || t.cp_to_byte[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(t.cp_to_byte[cp]);
}

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const Tables& t = GetTables();
  out->reserve(out->size() + 2 * bytes.size());  // alphabet code points take 1 or 2 bytes
  for (const char c : bytes) out->append(t.byte_to_utf8[static_cast<uint8_t>(c)]);
}

std::optional<std::string> ByteLevelToBytes(std::string_view token) {
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    const std::optional<uint8_t> b = CodePointToByte(NextCodePoint(token, &i));
    if (!b) return std::nullopt;
    bytes.push_back(static_cast<char>(*b));
  }
  return bytes;
}

}  // namespace lizard::tokenizer_internal
