// Fuzzes Tokenizer::FromJson with arbitrary tokenizer.json text; a tokenizer that loads then
// encodes and decodes a fixed text and a few ids derived from the input.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tokenizer = lizard::Tokenizer::FromJson(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode("Hello world! 12 34\n\t über 日本", /*add_special_tokens=*/true);
  if (ids.ok()) {
    (void)(*tokenizer)->Decode(*ids, /*skip_special_tokens=*/false);
    (void)(*tokenizer)->Decode(*ids, /*skip_special_tokens=*/true);
  }
  std::vector<int32_t> some_ids;
  for (size_t i = 0; i < size && i < 16; ++i) some_ids.push_back(static_cast<int32_t>(data[i]) - 8);
  (void)(*tokenizer)->Decode(some_ids);
  return 0;
}
