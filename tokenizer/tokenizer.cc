#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tokenizer/bpe.h"
#include "tokenizer/components.h"
#include "tokenizer/utf8.h"
#include "nlohmann/json.hpp"

namespace lizard {
namespace {

using nlohmann::json;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Decoder;
using tokenizer_internal::Normalizer;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::SpecialTokenWrap;

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
  bool lstrip;  // swallow the whitespace before it
  bool rstrip;  // swallow the whitespace after it
};

// A piece of the input: either an added token or plain text for the normal pipeline.
struct Segment {
  std::string_view text;
  const AddedToken* added;  // null for plain text
  bool at_input_start;
};

// Byte trie of the added tokens' contents, for leftmost-longest matching.
class AddedTokenMatcher {
 public:
  void Add(const AddedToken* token) {
    int32_t node = 0;
    for (const char c : token->content) {
      auto [it, inserted] = nodes_[node].next.try_emplace(c, static_cast<int32_t>(nodes_.size()));
      const int32_t child = it->second;
      if (inserted) nodes_.emplace_back();
      node = child;
    }
    nodes_[node].token = token;
    first_byte_[static_cast<uint8_t>(token->content.front())] = true;
  }

  std::vector<Segment> Split(std::string_view text) const {
    std::vector<Segment> segments;
    size_t plain_begin = 0;
    for (size_t i = 0; i < text.size();) {
      const AddedToken* best = nullptr;
      if (first_byte_[static_cast<uint8_t>(text[i])]) {
        int32_t node = 0;
        for (size_t j = i; j < text.size(); ++j) {
          const auto it = nodes_[node].next.find(text[j]);
          if (it == nodes_[node].next.end()) break;
          node = it->second;
          if (nodes_[node].token) best = nodes_[node].token;
        }
      }
      if (best == nullptr) {
        ++i;
        continue;
      }
      if (i > plain_begin) {
        segments.push_back({text.substr(plain_begin, i - plain_begin), nullptr, plain_begin == 0});
      }
      segments.push_back({text.substr(i, best->content.size()), best, i == 0});
      i += best->content.size();
      plain_begin = i;
    }
    if (plain_begin < text.size()) {
      segments.push_back({text.substr(plain_begin), nullptr, plain_begin == 0});
    }
    return segments;
  }

 private:
  struct Node {
    absl::flat_hash_map<char, int32_t> next;
    const AddedToken* token = nullptr;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  bool first_byte_[256] = {};
};

std::string_view TrimLeadingWhitespace(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t next = i;
    if (!tokenizer_internal::IsUnicodeWhitespace(tokenizer_internal::NextCodePoint(s, &next))) break;
    i = next;
  }
  return s.substr(i);
}

std::string_view TrimTrailingWhitespace(std::string_view s) {
  size_t keep = 0;  // end of the last non-whitespace character
  for (size_t i = 0; i < s.size();) {
    if (!tokenizer_internal::IsUnicodeWhitespace(tokenizer_internal::NextCodePoint(s, &i))) keep = i;
  }
  return s.substr(0, keep);
}

class HfTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<HfTokenizer>> Create(const json& root);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens) const override;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return vocab_size_; }

 private:
  absl::Status EncodePlainText(std::string_view text, bool at_input_start,
                               std::vector<int32_t>* ids) const;

  std::unique_ptr<Normalizer> normalizer_;      // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null
  std::unique_ptr<BpeModel> model_;
  SpecialTokenWrap wrap_;
  std::unique_ptr<Decoder> decoder_;  // may be null
  std::vector<std::unique_ptr<AddedToken>> added_tokens_;
  absl::flat_hash_map<int32_t, const AddedToken*> added_by_id_;
  AddedTokenMatcher matcher_;
  int64_t vocab_size_ = 0;
};

absl::StatusOr<std::unique_ptr<BpeModel>> ParseModel(const json& config) {
  const std::string type = config.value("type", "");
  if (type != "BPE") {
    return absl::UnimplementedError(absl::StrCat("unsupported model type '", type, "'"));
  }
  if (config.contains("dropout") && !config["dropout"].is_null() &&
      config["dropout"].get<double>() != 0.0) {
    return absl::UnimplementedError("unsupported BPE dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (config.contains(key) && !config[key].is_null() && !config[key].get<std::string>().empty()) {
      return absl::UnimplementedError(absl::StrCat("unsupported BPE ", key));
    }
  }
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(config.at("vocab").size());
  for (const auto& [token, id] : config.at("vocab").items()) {
    auto parsed = tokenizer_internal::ParseTokenId(id);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("vocab '", token, "': ", parsed.status().message()));
    }
    vocab.emplace_back(token, *parsed);
  }

  // Merges are "left right" strings (older files) or [left, right] pairs.
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(config.at("merges").size());
  for (const json& merge : config.at("merges")) {
    if (merge.is_array() && merge.size() == 2) {
      merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      continue;
    }
    const std::string line = merge.is_string() ? merge.get<std::string>() : std::string();
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("malformed merge ", merge.dump()));
    }
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }

  tokenizer_internal::BpeOptions options;
  if (config.contains("unk_token") && !config["unk_token"].is_null()) {
    options.unk_token = config["unk_token"].get<std::string>();
  }
  options.fuse_unk = config.value("fuse_unk", false);
  options.byte_fallback = config.value("byte_fallback", false);
  options.ignore_merges = config.value("ignore_merges", false);
  return BpeModel::Create(std::move(vocab), merges, std::move(options));
}

absl::StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Create(const json& root) {
  for (const char* key : {"truncation", "padding"}) {
    if (root.contains(key) && !root[key].is_null()) {
      return absl::UnimplementedError(absl::StrCat("unsupported ", key, ": ", root[key].dump()));
    }
  }
  auto t = std::unique_ptr<HfTokenizer>(new HfTokenizer());
  auto model = ParseModel(root.at("model"));
  if (!model.ok()) return model.status();
  t->model_ = *std::move(model);
  t->vocab_size_ = t->model_->size();

  if (root.contains("normalizer") && !root["normalizer"].is_null()) {
    auto normalizer = tokenizer_internal::ParseNormalizer(root["normalizer"]);
    if (!normalizer.ok()) return normalizer.status();
    t->normalizer_ = *std::move(normalizer);
  }
  if (root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null()) {
    auto pre = tokenizer_internal::ParsePreTokenizer(root["pre_tokenizer"]);
    if (!pre.ok()) return pre.status();
    t->pre_tokenizer_ = *std::move(pre);
  }
  if (root.contains("post_processor") && !root["post_processor"].is_null()) {
    auto wrap = tokenizer_internal::ParsePostProcessor(root["post_processor"]);
    if (!wrap.ok()) return wrap.status();
    t->wrap_ = *std::move(wrap);
  }
  if (root.contains("decoder") && !root["decoder"].is_null()) {
    auto decoder = tokenizer_internal::ParseDecoder(root["decoder"]);
    if (!decoder.ok()) return decoder.status();
    t->decoder_ = *std::move(decoder);
  }

  for (const json& entry : root.value("added_tokens", json::array())) {
    auto token = std::make_unique<AddedToken>();
    token->content = entry.at("content").get<std::string>();
    auto id = tokenizer_internal::ParseTokenId(entry.at("id"));
    if (!id.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("added token ", entry.dump(), ": ", id.status().message()));
    }
    token->id = *id;
    token->special = entry.value("special", false);
    token->lstrip = entry.value("lstrip", false);
    token->rstrip = entry.value("rstrip", false);
    if (token->content.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("bad added token ", entry.dump()));
    }
    if (entry.value("single_word", false)) {
      return absl::UnimplementedError(absl::StrCat("unsupported added token single_word: ",
                                                   entry.dump()));
    }
    // A normalized added token would be matched in normalized text; equivalent only without a
    // normalizer.
    if (entry.value("normalized", false) && t->normalizer_) {
      return absl::UnimplementedError(absl::StrCat("unsupported added token normalized=true "
                                                   "with a normalizer: ", entry.dump()));
    }
    t->vocab_size_ = std::max<int64_t>(t->vocab_size_, token->id + 1);
    t->added_by_id_[token->id] = token.get();
    t->matcher_.Add(token.get());
    t->added_tokens_.push_back(std::move(token));
  }
  for (const auto* ids : {&t->wrap_.prefix, &t->wrap_.suffix}) {
    for (const int32_t id : *ids) {
      if (id < 0 || id >= t->vocab_size_) {
        return absl::InvalidArgumentError(absl::StrCat("post_processor id ", id, " out of range"));
      }
    }
  }
  return t;
}

absl::Status HfTokenizer::EncodePlainText(std::string_view text, bool at_input_start,
                                          std::vector<int32_t>* ids) const {
  std::vector<std::string> words;
  if (normalizer_) {
    auto normalized = normalizer_->Normalize(text);
    if (!normalized.ok()) return normalized.status();
    words.push_back(*std::move(normalized));
  } else {
    words.emplace_back(text);
  }
  if (words.front().empty()) return absl::OkStatus();
  if (pre_tokenizer_) {
    if (absl::Status s = pre_tokenizer_->Split(&words, at_input_start); !s.ok()) return s;
  }
  for (const std::string& word : words) {
    if (absl::Status s = model_->EncodeWord(word, ids); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> HfTokenizer::Encode(std::string_view text,
                                                         bool add_special_tokens) const {
  if (!tokenizer_internal::IsValidUtf8(text)) {
    return absl::InvalidArgumentError("text is not valid UTF-8");
  }
  std::vector<Segment> segments = matcher_.Split(text);
  // lstrip / rstrip added tokens take the whitespace next to them.
  for (size_t i = 0; i < segments.size(); ++i) {
    const AddedToken* added = segments[i].added;
    if (added == nullptr) continue;
    if (added->lstrip && i > 0 && segments[i - 1].added == nullptr) {
      segments[i - 1].text = TrimTrailingWhitespace(segments[i - 1].text);
    }
    if (added->rstrip && i + 1 < segments.size() && segments[i + 1].added == nullptr) {
      segments[i + 1].text = TrimLeadingWhitespace(segments[i + 1].text);
    }
  }

  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = wrap_.prefix;
  for (const Segment& segment : segments) {
    if (segment.added != nullptr) {
      ids.push_back(segment.added->id);
    } else if (!segment.text.empty()) {
      if (absl::Status s = EncodePlainText(segment.text, segment.at_input_start, &ids); !s.ok()) {
        return s;
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), wrap_.suffix.begin(), wrap_.suffix.end());
  return ids;
}

absl::StatusOr<std::string> HfTokenizer::Decode(absl::Span<const int32_t> ids,
                                                bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      if (!(skip_special_tokens && it->second->special)) tokens.push_back(it->second->content);
      continue;
    }
    const std::string* token = model_->IdToToken(id);
    if (token == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary of ", vocab_size_));
    }
    tokens.push_back(*token);
  }
  // Without a decoder, Hugging Face joins the tokens with spaces.
  if (!decoder_) return absl::StrJoin(tokens, " ");
  if (absl::Status s = decoder_->Decode(&tokens); !s.ok()) return s;
  return absl::StrJoin(tokens, "");
}

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("tokenizer.json is not a JSON object");
  }
  // nlohmann::json reports wrong field types with exceptions; they must not leave this module.
  try {
    auto tokenizer = HfTokenizer::Create(root);
    if (!tokenizer.ok()) return tokenizer.status();
    return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("malformed tokenizer.json: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  auto tokenizer = FromJson(buffer.str());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

// The window ids_ holds the tokens of the last non-empty emission (the context) plus the newer
// ones. The text of the new tokens is Decode(window) minus Decode(already emitted part): decoding
// with preceding tokens that produced text keeps context-dependent decoders (the stripped leading
// space of SentencePiece, a character split over byte tokens) identical to one-shot decoding.
// At most this many tokens are held back for an unfinished character (real text needs at most
// 4, one per byte). A model that keeps producing invalid UTF-8 would otherwise grow the window
// without bound, and with it the text of the last message and the cost of every Push; past the
// limit the text is emitted as it decodes, U+FFFD included.
constexpr size_t kMaxHeldTokens = 64;

absl::StatusOr<std::string> IncrementalDecoder::Push(int32_t token) {
  ids_.push_back(token);
  auto full = tokenizer_.Decode(ids_, skip_special_tokens_);
  if (!full.ok()) {
    ids_.pop_back();
    return full.status();
  }
  const bool hold = ids_.size() - read_count_ <= kMaxHeldTokens;
  // A trailing U+FFFD may be a character whose remaining bytes are still to come.
  if (hold && full->ends_with(kReplacementCharacter)) return std::string();
  auto done = tokenizer_.Decode(absl::MakeConstSpan(ids_).first(read_count_), skip_special_tokens_);
  if (!done.ok()) return done.status();
  std::string delta;
  if (full->starts_with(*done)) {
    delta = full->substr(done->size());
  } else if (hold) {
    return std::string();
  } else {
    // The context decodes differently now than when it was emitted: the new tokens alone.
    auto alone = tokenizer_.Decode(absl::MakeConstSpan(ids_).subspan(read_count_),
                                   skip_special_tokens_);
    if (!alone.ok()) return alone.status();
    delta = *std::move(alone);
  }
  // Once the new tokens produced text they are context enough; tokens that produced none (skipped
  // special tokens) must not become the whole context, or a leading space would be stripped again.
  if (!delta.empty()) {
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_count_));
  }
  read_count_ = ids_.size();
  return delta;
}

std::string IncrementalDecoder::Flush() {
  // Every id in the window was accepted by Decode in Push, so these decodes succeed.
  const std::string full = tokenizer_.Decode(ids_, skip_special_tokens_).value_or("");
  const std::string done =
      tokenizer_.Decode(absl::MakeConstSpan(ids_).first(read_count_), skip_special_tokens_)
          .value_or("");
  ids_.clear();
  read_count_ = 0;
  return full.starts_with(done) ? full.substr(done.size()) : full;
}

}  // namespace lizard
