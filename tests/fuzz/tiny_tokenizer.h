// The lizard-tiny tokenizer for fuzz targets, loaded once (LIZARD_TOKENIZER_JSON is its path).
#pragma once

#include <cstdlib>
#include <memory>

#include "tokenizer/tokenizer.h"

inline const lizard::Tokenizer& TinyTokenizer() {
  static const std::unique_ptr<lizard::Tokenizer> tokenizer = [] {
    auto loaded = lizard::Tokenizer::FromFile(LIZARD_TOKENIZER_JSON);
    if (!loaded.ok()) abort();
    return *std::move(loaded);
  }();
  return *tokenizer;
}
