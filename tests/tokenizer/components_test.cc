// Tests of the normalizers, pre-tokenizers, decoders and post-processors on their own.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/components.h"

namespace lizard::tokenizer_internal {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;

std::vector<std::string> PreTokenize(const json& config, std::string text,
                                     bool at_input_start = true) {
  auto pre = ParsePreTokenizer(config);
  EXPECT_TRUE(pre.ok()) << pre.status();
  std::vector<std::string> words = {std::move(text)};
  EXPECT_TRUE((*pre)->Split(&words, at_input_start).ok());
  return words;
}

std::string DecodeTokens(const json& config, std::vector<std::string> tokens) {
  auto decoder = ParseDecoder(config);
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  EXPECT_TRUE((*decoder)->Decode(&tokens).ok());
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

json SplitConfig(const char* behavior, json pattern = {{"String", "-"}}, bool invert = false) {
  return {{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}};
}

TEST(Split, Behaviors) {
  const std::string text = "the-final--countdown";
  EXPECT_THAT(PreTokenize(SplitConfig("Isolated"), text),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(PreTokenize(SplitConfig("Removed"), text), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(PreTokenize(SplitConfig("MergedWithPrevious"), text),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(PreTokenize(SplitConfig("MergedWithNext"), text),
              ElementsAre("the", "-final", "-", "-countdown"));
  // invert: the matches are the words and the rest separates them.
  EXPECT_THAT(PreTokenize(SplitConfig("Removed", {{"Regex", R"(\p{L}+)"}}, true), "hi, you!"),
              ElementsAre("hi", "you"));
  // A {"String": ...} pattern is literal text, not a regex.
  EXPECT_THAT(PreTokenize(SplitConfig("Isolated", {{"String", "."}}), "a.b"),
              ElementsAre("a", ".", "b"));
  EXPECT_FALSE(ParsePreTokenizer(SplitConfig("Contiguous")).ok());
  EXPECT_FALSE(ParsePreTokenizer(SplitConfig("Isolated", {{"Regex", "(unclosed"}})).ok());
}

TEST(Split, UnicodePropertiesAndLookahead) {
  // Llama-3's pattern: letters with one leading non-letter, digits in groups of three, and
  // "\s+(?!\S)" leaving the last space of a run to the next word.
  const json llama3 = SplitConfig(
      "Isolated",
      {{"Regex",
        R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}});
  EXPECT_THAT(PreTokenize(llama3, "I'LL pay 1234567   now\n\n日本"),
              ElementsAre("I", "'LL", " pay", " ", "123", "456", "7", "  ", " now", "\n\n",
                          "日本"));
}

TEST(ByteLevelPreTokenizer, PrefixSpaceAndGpt2Regex) {
  const json config = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_THAT(PreTokenize(config, "Hello world!"),
              ElementsAre("\xC4\xA0Hello", "\xC4\xA0world", "!"));  // "ĠHello", "Ġworld"
  const json no_regex = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
  EXPECT_THAT(PreTokenize(no_regex, "a b\n"), ElementsAre("a\xC4\xA0" "b\xC4\x8A"));
}

TEST(Metaspace, PreTokenizerAndDecoder) {
  const std::string bar = "\xE2\x96\x81";  // U+2581
  const json always = {{"type", "Metaspace"}, {"replacement", bar}, {"prepend_scheme", "always"}};
  EXPECT_THAT(PreTokenize(always, "Hey  friend"),
              ElementsAre(bar + "Hey", bar, bar + "friend"));
  const json first = {{"type", "Metaspace"}, {"replacement", bar}, {"prepend_scheme", "first"}};
  EXPECT_THAT(PreTokenize(first, "Hey friend", true), ElementsAre(bar + "Hey", bar + "friend"));
  EXPECT_THAT(PreTokenize(first, "Hey friend", false), ElementsAre("Hey", bar + "friend"));
  const json no_split = {{"type", "Metaspace"}, {"replacement", bar}, {"prepend_scheme", "never"},
                         {"split", false}};
  EXPECT_THAT(PreTokenize(no_split, "a b"), ElementsAre("a" + bar + "b"));
  EXPECT_EQ(DecodeTokens(always, {bar + "Hey", bar + "friend"}), "Hey friend");
  EXPECT_FALSE(ParsePreTokenizer({{"type", "Metaspace"}, {"prepend_scheme", "sometimes"}}).ok());
}

TEST(Normalizers, PrependAndReplace) {
  auto seq = ParseNormalizer(
      {{"type", "Sequence"},
       {"normalizers",
        {{{"type", "Replace"}, {"pattern", {{"Regex", R"(\s+)"}}}, {"content", " "}},
         {{"type", "Prepend"}, {"prepend", ">"}}}}});
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ((*seq)->Normalize("a \t\n b").value(), ">a b");
  EXPECT_EQ((*seq)->Normalize("").value(), "");  // nothing is prepended to empty text
  EXPECT_FALSE(ParseNormalizer({{"type", "NFC"}}).ok());
}

TEST(Decoders, ByteFallbackFuseStrip) {
  const json config = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "ByteFallback"}},
        {{"type", "Fuse"}},
        {{"type", "Strip"}, {"content", "x"}, {"start", 2}, {"stop", 1}}}}};
  EXPECT_EQ(DecodeTokens(config, {"xxx", "<0x61>", "b", "<0xE2>", "<0x82>", "<0xAC>", "xx"}),
            "xab\xE2\x82\xACx");
  // Lowercase hex or a wrong length is not a byte token.
  EXPECT_EQ(DecodeTokens({{"type", "ByteFallback"}}, {"<0xe2>", "<0x4>"}), "<0xe2><0x4>");
  // "Ġ" is a space; "Ã¶" spells the two bytes of "ö".
  EXPECT_EQ(DecodeTokens({{"type", "ByteLevel"}}, {"Hello", "\xC4\xA0w\xC3\x83\xC2\xB6rld"}),
            "Hello w\xC3\xB6rld");
}

TEST(PostProcessor, TemplateInSequence) {
  auto wrap = ParsePostProcessor(
      {{"type", "Sequence"},
       {"processors",
        {{{"type", "ByteLevel"}},
         {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", "<s>"}}}},
            {{"Sequence", {{"id", "A"}}}},
            {{"SpecialToken", {{"id", "</s>"}}}}}},
          {"special_tokens",
           {{"<s>", {{"id", "<s>"}, {"ids", {1}}}}, {"</s>", {{"id", "</s>"}, {"ids", {2}}}}}}}}}});
  ASSERT_TRUE(wrap.ok()) << wrap.status();
  EXPECT_THAT(wrap->prefix, ElementsAre(1));
  EXPECT_THAT(wrap->suffix, ElementsAre(2));
  EXPECT_FALSE(ParsePostProcessor({{"type", "RobertaProcessing"}}).ok());
}

}  // namespace
}  // namespace lizard::tokenizer_internal
