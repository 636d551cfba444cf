// linearize_encode_docs: encodes documents with the engine's tokenizer, for the tests that hold
// it to the Hugging Face tokenizer the linearization pipeline trained (test_tokenizer_parity.py).
// Usage: linearize_encode_docs TOKENIZER_JSON TEXT_FILE
// TEXT_FILE holds documents separated by the ASCII record separator (0x1e); prints one line per
// document: its token ids without special tokens, separated by spaces.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: linearize_encode_docs TOKENIZER_JSON TEXT_FILE\n");
    return 2;
  }
  auto tokenizer = lizard::Tokenizer::FromFile(argv[1]);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::ifstream in(argv[2], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "%s: cannot open\n", argv[2]);
    return 1;
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\x1e', begin);
    if (end == std::string::npos) end = text.size();
    auto ids = (*tokenizer)->Encode(std::string_view(text).substr(begin, end - begin), false);
    if (!ids.ok()) {
      std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
      return 1;
    }
    std::string line;
    for (size_t i = 0; i < ids->size(); ++i) {
      if (i) line += ' ';
      line += std::to_string((*ids)[i]);
    }
    std::printf("%s\n", line.c_str());
    begin = end + 1;
  }
  return 0;
}
