// Fuzzes the lizard-tiny tokenizer with arbitrary bytes: Encode of the bytes as text (also
// invalid UTF-8), Decode of the bytes read as 16-bit ids mapped to [-2, vocab_size + 2) (mostly
// valid, a few out of range), and streaming decode of the same ids.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <vector>

#include "tests/fuzz/tiny_tokenizer.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const lizard::Tokenizer& tokenizer = TinyTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool add_special : {false, true}) {
    auto ids = tokenizer.Encode(text, add_special);
    if (ids.ok()) (void)tokenizer.Decode(*ids);
  }

  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    const int32_t raw = data[i] | (data[i + 1] << 8);
    ids.push_back(static_cast<int32_t>(raw % (tokenizer.vocab_size() + 4)) - 2);
  }
  for (bool skip_special : {false, true}) (void)tokenizer.Decode(ids, skip_special);
  lizard::IncrementalDecoder decoder(tokenizer);
  for (int32_t id : ids) (void)decoder.Push(id);
  (void)decoder.Flush();
  return 0;
}
