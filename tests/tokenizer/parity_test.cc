// Parity with the reference tokenizers: the expected ids come from gen_reference.js (run by
// setup_reference.sh as a ctest fixture), which also names the tokenizer.json it used.
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"

namespace lizard {
namespace {

using nlohmann::json;

std::string Shorten(const std::string& s) { return s.size() > 80 ? s.substr(0, 80) + "..." : s; }

class TokenizerParity : public testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, IdsAndDecodesMatchTheReference) {
  const char* dir = std::getenv("LIZARD_TOKENIZER_REFERENCE_DIR");
  if (dir == nullptr) GTEST_SKIP() << "LIZARD_TOKENIZER_REFERENCE_DIR is unset; run through ctest";
  if (std::ifstream skipped(std::string(dir) + "/SKIPPED"); skipped) {
    std::string reason;
    std::getline(skipped, reason);
    GTEST_SKIP() << reason;
  }
  std::ifstream in(std::string(dir) + "/" + GetParam() + ".expected.json");
  ASSERT_TRUE(in) << "missing expected file; setup_reference.sh must run first";
  std::stringstream buffer;
  buffer << in.rdbuf();
  const json expected = json::parse(buffer.str());

  auto loaded = Tokenizer::FromFile(expected.at("tokenizer_json").get<std::string>());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const Tokenizer& t = **loaded;

  const bool byte_level = GetParam() == "llama3";
  int passed = 0, total = 0;
  for (const json& c : expected.at("cases")) {
    ++total;
    const std::string name = c.at("name").get<std::string>();
    const std::string text = c.at("text").get<std::string>();
    const auto want_ids = c.at("ids").get<std::vector<int32_t>>();
    const auto want_special = c.at("ids_with_special").get<std::vector<int32_t>>();
    SCOPED_TRACE(name + ": " + Shorten(text));

    auto ids = t.Encode(text, false);
    auto ids_special = t.Encode(text, true);
    ASSERT_TRUE(ids.ok() && ids_special.ok()) << ids.status() << ids_special.status();
    auto decoded = t.Decode(*ids);
    auto decoded_skip = t.Decode(*ids_special, /*skip_special_tokens=*/true);
    ASSERT_TRUE(decoded.ok() && decoded_skip.ok());
    bool ok = true;
    ok &= *ids == want_ids;
    ok &= *ids_special == want_special;
    ok &= *decoded == c.at("decoded").get<std::string>();
    ok &= *decoded_skip == c.at("decoded_skip_special").get<std::string>();
    EXPECT_EQ(*ids, want_ids);
    EXPECT_EQ(*ids_special, want_special);
    EXPECT_EQ(*decoded, c.at("decoded").get<std::string>());
    EXPECT_EQ(*decoded_skip, c.at("decoded_skip_special").get<std::string>());
    // Byte-level BPE is lossless. SentencePiece-style decoding gives the text back except next to
    // special tokens, after which the reference (and Hugging Face) prepends "▁" to the next piece.
    const bool has_special_text = text.find("<s>") != std::string::npos ||
                                  text.find("</s>") != std::string::npos ||
                                  text.find("<unk>") != std::string::npos;
    if (byte_level || !has_special_text) {
      EXPECT_EQ(*decoded, text);
      ok &= *decoded == text;
    }
    // Streaming gives the same text.
    IncrementalDecoder stream(t);
    std::string streamed;
    for (const int32_t id : *ids) streamed += stream.Push(id).value();
    streamed += stream.Flush();
    EXPECT_EQ(streamed, *decoded);
    ok &= streamed == *decoded;
    passed += ok;
  }
  std::printf("[ parity ] %s: %d / %d cases identical to the reference\n", GetParam().c_str(),
              passed, total);
  EXPECT_EQ(passed, total);

  for (const char* bad : {"\xFF", "ok\xC3", "\xED\xA0\x80"}) {
    EXPECT_EQ(t.Encode(bad, true).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, TokenizerParity, testing::Values("llama3", "llama2"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace lizard
