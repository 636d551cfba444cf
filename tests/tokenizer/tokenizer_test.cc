// Unit tests of the tokenizer pieces on small hand-made tokenizer.json files.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace lizard {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace ti = tokenizer_internal;

std::unique_ptr<Tokenizer> MustLoad(const json& config) {
  auto tokenizer = Tokenizer::FromJson(config.dump());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// A GPT-2 style byte-level BPE: 256 byte tokens (id = byte) plus the given merges.
json ByteLevelConfig(const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string token;
    ti::AppendCodePoint(ti::ByteToCodePoint(static_cast<uint8_t>(b)), &token);
    vocab[token] = b;
  }
  json merge_list = json::array();
  for (const auto& [l, r] : merges) {
    vocab[l + r] = static_cast<int>(vocab.size());
    merge_list.push_back(l + " " + r);
  }
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 1000}, {"content", "<|bos|>"}, {"special", true}},
        {{"id", 1001}, {"content", "<|eos|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", R"( ?\p{L}+| ?\p{N}{1,3}|\s+(?!\S)|\s+| ?[^\s\p{L}\p{N}]+)"}}},
           {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<|bos|>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
        {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {1000}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}},
  };
}

// A SentencePiece style BPE (Llama-2): "▁" for spaces, <0xXX> byte fallback.
json SentencePieceConfig() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[absl::StrFormat("<0x%02X>", b)] = 3 + b;
  int next = 259;
  for (const char* t : {"\xE2\x96\x81", "h", "i", "\xE2\x96\x81h", "\xE2\x96\x81hi", "a"}) {
    vocab[t] = next++;
  }
  return {
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", {"\xE2\x96\x81 h", "\xE2\x96\x81h i"}}}},
  };
}

TEST(ByteLevel, MapsEveryByteToADistinctPrintableCodePoint) {
  EXPECT_EQ(ti::ByteToCodePoint(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(ti::ByteToCodePoint('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(ti::ByteToCodePoint('A'), static_cast<uint32_t>('A'));
  EXPECT_EQ(ti::ByteToCodePoint(0xAD), 0x143u);  // soft hyphen is not printable
  std::vector<uint32_t> seen;
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) {
    seen.push_back(ti::ByteToCodePoint(static_cast<uint8_t>(b)));
    EXPECT_EQ(ti::CodePointToByte(seen.back()), b);
    all_bytes.push_back(static_cast<char>(b));
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end());
  std::string spelled;
  ti::AppendByteLevel(all_bytes, &spelled);
  EXPECT_EQ(ti::ByteLevelToBytes(spelled), all_bytes);
  EXPECT_EQ(ti::ByteLevelToBytes("\xE4\xB8\xAD"), std::nullopt);  // '中' is not in the alphabet
}

TEST(Utf8, ValidatesStrictly) {
  EXPECT_TRUE(ti::IsValidUtf8(""));
  EXPECT_TRUE(ti::IsValidUtf8("plain ascii"));
  EXPECT_TRUE(ti::IsValidUtf8("\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF"));
  EXPECT_FALSE(ti::IsValidUtf8("\x80"));              // stray continuation byte
  EXPECT_FALSE(ti::IsValidUtf8("\xC0\x80"));          // overlong
  EXPECT_FALSE(ti::IsValidUtf8("\xE0\x80\x80"));      // overlong
  EXPECT_FALSE(ti::IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(ti::IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(ti::IsValidUtf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(ti::IsValidUtf8("ab\xE2\x82"));  // truncated
  EXPECT_FALSE(ti::IsValidUtf8("\xFF"));
}

TEST(Utf8, LossyReplacesEachMaximalInvalidPart) {
  EXPECT_EQ(ti::LossyUtf8("ok"), "ok");
  EXPECT_EQ(ti::LossyUtf8("a\xE2\x82"), "a\xEF\xBF\xBD");            // one U+FFFD for E2 82
  EXPECT_EQ(ti::LossyUtf8("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // one per stray byte
  EXPECT_EQ(ti::LossyUtf8("\xE2\x82z"), "\xEF\xBF\xBDz");
  EXPECT_EQ(ti::LossyUtf8("\xE2\x82\xAC"), "\xE2\x82\xAC");
}

// The textbook BPE: repeatedly apply the best-ranked (then leftmost) adjacent pair.
std::vector<int32_t> NaiveBpe(std::vector<std::string> symbols,
                              const std::vector<std::pair<std::string, std::string>>& merges,
                              const std::map<std::string, int32_t>& vocab) {
  while (true) {
    size_t best_rank = merges.size(), best_pos = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      for (size_t r = 0; r < best_rank; ++r) {
        if (merges[r].first == symbols[i] && merges[r].second == symbols[i + 1]) {
          best_rank = r;
          best_pos = i;
          break;
        }
      }
    }
    if (best_rank == merges.size()) break;
    symbols[best_pos] += symbols[best_pos + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& s : symbols) ids.push_back(vocab.at(s));
  return ids;
}

TEST(Bpe, HandCases) {
  const std::vector<std::pair<std::string, int32_t>> vocab = {
      {"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}};
  {
    // "b c" outranks "a b", so "abc" becomes a + bc, then abc through "a bc".
    auto model = ti::BpeModel::Create(vocab, {{"b", "c"}, {"a", "b"}, {"a", "bc"}}, {});
    ASSERT_TRUE(model.ok()) << model.status();
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord("abc", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(5));
    ids.clear();
    ASSERT_TRUE((*model)->EncodeWord("abab", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(3, 3));
  }
  {
    // Without "a bc" the word stops at a + bc.
    auto model = ti::BpeModel::Create(vocab, {{"b", "c"}, {"a", "b"}}, {});
    ASSERT_TRUE(model.ok());
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord("abc", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(0, 4));
  }
  {
    // Equal ranks: the leftmost pair merges first.
    auto model = ti::BpeModel::Create(vocab, {{"a", "a"}}, {});
    ASSERT_TRUE(model.ok());
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord("aaa", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(6, 0));
  }
  {
    // An unknown character without unk token or byte fallback is an error.
    auto model = ti::BpeModel::Create(vocab, {}, {});
    ASSERT_TRUE(model.ok());
    std::vector<int32_t> ids;
    EXPECT_FALSE((*model)->EncodeWord("abz", &ids).ok());
  }
  EXPECT_FALSE(ti::BpeModel::Create(vocab, {{"c", "c"}}, {}).ok());  // "cc" not in vocab
}

TEST(Bpe, UnknownByteFallbackAndIgnoreMerges) {
  const std::vector<std::pair<std::string, int32_t>> vocab = {
      {"<unk>", 0}, {"a", 1}, {"b", 2}, {"ab", 3}, {"abb", 4}, {"bb", 5}};
  {
    ti::BpeOptions options;
    options.unk_token = "<unk>";
    options.fuse_unk = true;
    auto model = ti::BpeModel::Create(vocab, {{"a", "b"}}, options);
    ASSERT_TRUE(model.ok());
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord("xyabzb", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(0, 3, 0, 2));  // "xy" fused into one <unk>
    options.fuse_unk = false;
    auto unfused = ti::BpeModel::Create(vocab, {{"a", "b"}}, options);
    ids.clear();
    ASSERT_TRUE((*unfused)->EncodeWord("xyab", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(0, 0, 3));
  }
  {
    // "abb" is in the vocabulary but no merge builds it: only ignore_merges finds it.
    ti::BpeOptions options;
    auto merged = ti::BpeModel::Create(vocab, {{"a", "b"}, {"b", "b"}}, options);
    std::vector<int32_t> ids;
    ASSERT_TRUE((*merged)->EncodeWord("abb", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(3, 2));
    options.ignore_merges = true;
    auto ignoring = ti::BpeModel::Create(vocab, {{"a", "b"}, {"b", "b"}}, options);
    ids.clear();
    ASSERT_TRUE((*ignoring)->EncodeWord("abb", &ids).ok());
    EXPECT_THAT(ids, ElementsAre(4));
  }
  {
    // Byte fallback needs all 256 <0xXX> tokens.
    ti::BpeOptions options;
    options.byte_fallback = true;
    EXPECT_FALSE(ti::BpeModel::Create(vocab, {}, options).ok());
    auto with_bytes = vocab;
    for (int b = 0; b < 256; ++b) with_bytes.emplace_back(absl::StrFormat("<0x%02X>", b), 6 + b);
    auto model = ti::BpeModel::Create(with_bytes, {{"a", "b"}}, options);
    ASSERT_TRUE(model.ok()) << model.status();
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord("ab\xC3\xA9", &ids).ok());  // "abé"
    EXPECT_THAT(ids, ElementsAre(3, 6 + 0xC3, 6 + 0xA9));
  }
}

TEST(Bpe, MatchesNaiveReferenceOnRandomWords) {
  std::mt19937 rng(7);
  const std::string alphabet = "abcde";
  std::map<std::string, int32_t> vocab;
  for (const char c : alphabet) vocab.emplace(std::string(1, c), static_cast<int32_t>(vocab.size()));
  // Random merges over existing tokens, as a trainer would produce them.
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<std::string> tokens(1, "a");
  for (const auto& [t, id] : vocab) tokens.push_back(t);
  while (merges.size() < 60) {
    const std::string& l = tokens[rng() % tokens.size()];
    const std::string& r = tokens[rng() % tokens.size()];
    if (l.size() + r.size() > 6 || vocab.count(l + r)) continue;
    merges.emplace_back(l, r);
    vocab.emplace(l + r, static_cast<int32_t>(vocab.size()));
    tokens.push_back(l + r);
  }
  auto model = ti::BpeModel::Create({vocab.begin(), vocab.end()}, merges, {});
  ASSERT_TRUE(model.ok()) << model.status();
  for (int trial = 0; trial < 500; ++trial) {
    std::string word;
    std::vector<std::string> chars;
    const size_t length = 1 + rng() % 40;
    for (size_t k = 0; k < length; ++k) {
      chars.emplace_back(1, alphabet[rng() % alphabet.size()]);
      word += chars.back();
    }
    std::vector<int32_t> ids;
    ASSERT_TRUE((*model)->EncodeWord(word, &ids).ok());
    // Twice: the second answer comes from the word cache.
    std::vector<int32_t> again;
    ASSERT_TRUE((*model)->EncodeWord(word, &again).ok());
    EXPECT_EQ(ids, NaiveBpe(chars, merges, vocab)) << word;
    EXPECT_EQ(again, ids);
  }
}

TEST(Tokenizer, ByteLevelEncodeDecode) {
  auto t = MustLoad(ByteLevelConfig({{"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}}));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 1002);
  auto ids = t->Encode("he the", false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(257, 258));  // "he", "Ġthe"
  auto with_bos = t->Encode("he the", true);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_THAT(*with_bos, ElementsAre(1000, 257, 258));
  EXPECT_EQ(t->Decode(*with_bos).value(), "<|bos|>he the");
  EXPECT_EQ(t->Decode(*with_bos, /*skip_special_tokens=*/true).value(), "he the");
  const std::string text = "Grüße, 世界! 🤷🏽‍♀️\n\n  tabs\tand  spaces 12345";
  auto round = t->Encode(text, false);
  ASSERT_TRUE(round.ok());
  EXPECT_EQ(t->Decode(*round).value(), text);

  // Merges written as [left, right] pairs (newer files) mean the same.
  json pairs = ByteLevelConfig({{"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}});
  pairs["model"]["merges"] = json::array({json::array({"\xC4\xA0", "t"}), json::array({"h", "e"}),
                                          json::array({"\xC4\xA0t", "he"})});
  auto p = MustLoad(pairs);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->Encode(text, true).value(), t->Encode(text, true).value());
}

TEST(Tokenizer, SpecialTokensAreMatchedBeforeBpeAndNeverSplit) {
  json config = ByteLevelConfig({});
  config["added_tokens"].push_back({{"id", 1002}, {"content", "<|bos|>x"}, {"special", false}});
  auto t = MustLoad(config);
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("a<|bos|>b<|eos|><|bos|>xc<|bos", false);
  ASSERT_TRUE(ids.ok());
  // Longest match wins ("<|bos|>x"); an incomplete special token is plain text.
  std::vector<int32_t> expected = {'a', 1000, 'b', 1001, 1002, 'c'};
  for (const char c : std::string("<|bos")) expected.push_back(static_cast<uint8_t>(c));
  // "<|" and "bos" are separate pre-tokens; without merges every byte is a token.
  EXPECT_EQ(*ids, expected);
}

TEST(Tokenizer, LstripRstripTakeNeighbouringWhitespace) {
  json config = ByteLevelConfig({});
  config["added_tokens"].push_back(
      {{"id", 1002}, {"content", "<mask>"}, {"lstrip", true}, {"rstrip", true}});
  auto t = MustLoad(config);
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("a \t<mask>  b", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre('a', 1002, 'b'));
}

TEST(Tokenizer, RejectsInvalidUtf8AndUnknownIds) {
  auto t = MustLoad(ByteLevelConfig({}));
  ASSERT_NE(t, nullptr);
  for (const char* bad : {"\xFF", "abc\xE2\x82", "\xC0\xAF", "\xED\xA0\x80"}) {
    auto ids = t->Encode(bad, false);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(t->Decode({5, 2000}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t->Decode({999}).status().code(), absl::StatusCode::kInvalidArgument);  // a hole
}

TEST(Tokenizer, RefusesUnsupportedComponentsByName) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"NFKC", {{"normalizer", {{"type", "NFKC"}}}}},
      {"Whitespace", {{"pre_tokenizer", {{"type", "Whitespace"}}}}},
      {"BertProcessing", {{"post_processor", {{"type", "BertProcessing"}}}}},
      {"CTC", {{"decoder", {{"type", "CTC"}}}}},
      {"WordPiece", {{"model", {{"type", "WordPiece"}, {"vocab", json::object()}}}}},
      {"single_word",
       {{"added_tokens", {{{"id", 5}, {"content", "x"}, {"single_word", true}}}}}},
      {"truncation", {{"truncation", {{"max_length", 8}}}}},
  };
  for (const auto& [name, patch] : cases) {
    json config = ByteLevelConfig({});
    config.merge_patch(patch);
    auto t = Tokenizer::FromJson(config.dump());
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(name));
  }
  EXPECT_FALSE(Tokenizer::FromJson("{not json").ok());
  EXPECT_FALSE(Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": 3}})").ok());
  EXPECT_EQ(Tokenizer::FromFile("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
}

// Crashed or ran into undefined behaviour before ids were range-checked (reproduced with
// tests/fuzz/fuzz_tokenizer_json): INT32_MAX + 1, a 2e9-entry id table, a float cast to int.
TEST(Tokenizer, RefusesOutOfRangeTokenIds) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"added id INT32_MAX", {{"added_tokens", {{{"id", 2147483647}, {"content", "<big>"}}}}}},
      {"added id float", {{"added_tokens", {{{"id", 1e300}, {"content", "<f>"}}}}}},
      {"added id negative", {{"added_tokens", {{{"id", -1}, {"content", "<n>"}}}}}},
      {"vocab id huge", {{"model", {{"vocab", {{"zzzq", 2000000000}}}}}}},
      {"vocab id float", {{"model", {{"vocab", {{"zzzq", 1e300}}}}}}},
      {"vocab id string", {{"model", {{"vocab", {{"zzzq", "7"}}}}}}},
      {"template id float",
       {{"post_processor",
         {{"type", "TemplateProcessing"},
          {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
          {"special_tokens", {{"<s>", {{"ids", {1e300}}}}}}}}}},
  };
  for (const auto& [name, patch] : cases) {
    json config = ByteLevelConfig({});
    config.merge_patch(patch);
    auto t = Tokenizer::FromJson(config.dump());
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << t.status();
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("token id")) << name;
  }
}

TEST(Tokenizer, SentencePieceStyle) {
  auto t = MustLoad(SentencePieceConfig());
  ASSERT_NE(t, nullptr);
  auto ids = t->Encode("hi h\xE2\x82\xAC", true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // <s> ▁hi ▁h then '€' through byte fallback (E2 82 AC).
  EXPECT_THAT(*ids, ElementsAre(1, 263, 262, 3 + 0xE2, 3 + 0x82, 3 + 0xAC));
  EXPECT_EQ(t->Decode(*ids).value(), "<s> hi h\xE2\x82\xAC");
  EXPECT_EQ(t->Decode(*ids, true).value(), "hi h\xE2\x82\xAC");
  EXPECT_THAT(t->Encode("", true).value(), ElementsAre(1));
  // A lone continuation byte decodes to U+FFFD.
  EXPECT_EQ(t->Decode({3 + 0x82}).value(), "\xEF\xBF\xBD");
}

// Streams ids one by one and checks that the pieces are whole characters adding up to Decode.
void ExpectStreamsLikeDecode(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip) {
  IncrementalDecoder stream(t, skip);
  std::string streamed;
  for (const int32_t id : ids) {
    auto piece = stream.Push(id);
    ASSERT_TRUE(piece.ok()) << piece.status();
    EXPECT_TRUE(ti::IsValidUtf8(*piece));
    streamed += *piece;
  }
  streamed += stream.Flush();
  EXPECT_EQ(streamed, t.Decode(ids, skip).value());
}

TEST(IncrementalDecoder, HoldsBackSplitCharacters) {
  auto t = MustLoad(SentencePieceConfig());
  ASSERT_NE(t, nullptr);
  IncrementalDecoder stream(*t);
  EXPECT_EQ(stream.Push(263).value(), "hi");        // "▁hi": the leading space is stripped
  EXPECT_EQ(stream.Push(3 + 0xE2).value(), "");     // first byte of '€'
  EXPECT_EQ(stream.Push(3 + 0x82).value(), "");
  EXPECT_EQ(stream.Push(3 + 0xAC).value(), "\xE2\x82\xAC");
  EXPECT_EQ(stream.Push(262).value(), " h");
  EXPECT_EQ(stream.Push(3 + 0xF0).value(), "");  // an unfinished emoji at the end
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
  EXPECT_FALSE(stream.Push(100000).ok());

  auto b = MustLoad(ByteLevelConfig({}));
  ASSERT_NE(b, nullptr);
  IncrementalDecoder bytes(*b);
  EXPECT_EQ(bytes.Push(0xF0).value(), "");
  EXPECT_EQ(bytes.Push(0x9F).value(), "");
  EXPECT_EQ(bytes.Push(0x98).value(), "");
  EXPECT_EQ(bytes.Push(0x80).value(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(bytes.Push(' ').value(), " ");
}

// Regression: a model that keeps producing tokens whose text ends in U+FFFD (here lone
// continuation bytes) made the decoder hold back every token, so the whole text came at the end
// (14 MB in one message) and each Push decoded the whole growing window.
TEST(IncrementalDecoder, HoldsBackABoundedNumberOfTokens) {
  auto b = MustLoad(ByteLevelConfig({}));
  ASSERT_NE(b, nullptr);
  IncrementalDecoder stream(*b);
  std::string streamed;
  int since_text = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::string piece = stream.Push(0x80).value();
    since_text = piece.empty() ? since_text + 1 : 0;
    EXPECT_LE(since_text, 64) << i;
    streamed += piece;
  }
  streamed += stream.Flush();
  EXPECT_EQ(streamed, b->Decode(std::vector<int32_t>(1000, 0x80)).value());
  // Real text is still held back only until its character is whole.
  IncrementalDecoder mixed(*b);
  for (int32_t id : std::vector<int32_t>{'a', 0xF0, 0x9F, 0x98}) (void)mixed.Push(id).value();
  EXPECT_EQ(mixed.Push(0x80).value(), "\xF0\x9F\x98\x80");
}

TEST(IncrementalDecoder, ConcatenationEqualsDecodeOnRandomIds) {
  std::mt19937 rng(11);
  auto sp = MustLoad(SentencePieceConfig());
  auto bl = MustLoad(ByteLevelConfig({{"\xC4\xA0", "t"}, {"h", "e"}}));
  ASSERT_NE(sp, nullptr);
  ASSERT_NE(bl, nullptr);
  // Specials, words with and without a leading space, pieces of multi-byte characters.
  const std::vector<int32_t> sp_ids = {0, 1, 2, 259, 260, 261, 262, 263, 264, 3 + 0xE2, 3 + 0x82,
                                       3 + 0xAC, 3 + 0xF0, 3 + 'a'};
  const std::vector<int32_t> bl_ids = {1000, 1001, 256, 257, 'a', ' ', 0xC3, 0xA9, 0xE2, 0x82, 0xAC};
  for (int trial = 0; trial < 400; ++trial) {
    const bool use_sp = trial % 2 == 1;
    const std::vector<int32_t>& pool = use_sp ? sp_ids : bl_ids;
    std::vector<int32_t> ids(rng() % 30);
    for (auto& id : ids) id = pool[rng() % pool.size()];
    ExpectStreamsLikeDecode(use_sp ? *sp : *bl, ids, /*skip=*/trial % 4 < 2);
  }
  // Text, then skipped special tokens, then a word with a leading space.
  ExpectStreamsLikeDecode(*sp, {264, 1, 263}, true);
  ExpectStreamsLikeDecode(*sp, {264, 1, 1, 259, 263}, true);
  // Text round trips through the stream as well.
  const std::string text = "Grüße 🤷🏽‍♀️ 世界 hi";
  ExpectStreamsLikeDecode(*sp, sp->Encode(text, true).value(), false);
  ExpectStreamsLikeDecode(*bl, bl->Encode(text, true).value(), true);
}

TEST(Tokenizer, ConcurrentEncodesAgreeWithSerialOnes) {
  // The server encodes from many threads at once; they share the word cache.
  auto t = MustLoad(ByteLevelConfig({{"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}}));
  ASSERT_NE(t, nullptr);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) {
    texts.push_back(absl::StrFormat("the %d-th text: the heat %d, ünïcödé %d", i, i * 37, i % 7));
  }
  std::vector<std::vector<int32_t>> serial;
  for (const auto& text : texts) serial.push_back(t->Encode(text, true).value());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < 50; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          auto ids = t->Encode(texts[(i + w * 7) % texts.size()], true);
          if (!ids.ok() || *ids != serial[(i + w * 7) % texts.size()]) ++mismatches[w];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(LizardTiny, LoadsAndRoundTrips) {
  auto t = Tokenizer::FromFile(LIZARD_SOURCE_DIR "/models/lizard-tiny/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->vocab_size(), 512);
  const std::string text = "The model streams tokens over gRPC.\n\n  Hello, wörld! 12345 🦎";
  auto ids = (*t)->Encode(text, true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ(ids->front(), 510);  // <|begin_of_text|>
  EXPECT_LT(ids->size() - 1, text.size());  // the merges do compress English
  for (const int32_t id : *ids) EXPECT_LT(id, 512);
  EXPECT_EQ((*t)->Decode(*ids, true).value(), text);
  EXPECT_EQ((*t)->Decode(*ids).value(), "<|begin_of_text|>" + text);
  EXPECT_THAT((*t)->Encode("<|end_of_text|>", false).value(), ElementsAre(511));
  ExpectStreamsLikeDecode(**t, *ids, false);
}

TEST(LizardTiny, IsWhatMakeTokenizerWrites) {
  // The committed file must stay reproducible from tools/make_tokenizer.py and its corpus.
  const std::string out = testing::TempDir() + "/lizard_tiny_tokenizer.json";
  const std::string command = std::string(LIZARD_PYTHON) + " " + LIZARD_SOURCE_DIR +
                              "/tools/make_tokenizer.py --out " + out + " > /dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
  };
  EXPECT_EQ(read(out), read(LIZARD_SOURCE_DIR "/models/lizard-tiny/tokenizer.json"));
}

}  // namespace
}  // namespace lizard
