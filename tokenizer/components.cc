#include "tokenizer/components.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace lizard::tokenizer_internal {
namespace {

using nlohmann::json;

// GPT-2's pre-tokenization, used by the ByteLevel pre-tokenizer when use_regex is set.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string TypeOf(const json& config) {
  if (!config.is_object() || !config.contains("type") || !config["type"].is_string()) return "";
  return config["type"].get<std::string>();
}

// Names the refused component by its type, or shows (the start of) its JSON.
absl::Status Unsupported(std::string_view what, const json& config) {
  std::string detail = TypeOf(config);
  if (detail.empty()) {
    detail = config.dump();
    if (detail.size() > 200) detail = detail.substr(0, 200) + "...";
  }
  return absl::UnimplementedError(absl::StrCat("unsupported ", AbslView(what), ": ", detail));
}

// A {"String": ...} or {"Regex": ...} pattern of Split / Replace.
absl::StatusOr<std::unique_ptr<Regex>> ParsePattern(const json& pattern) {
  if (pattern.contains("String")) return Regex::Compile(pattern["String"].get<std::string>(), true);
  if (pattern.contains("Regex")) return Regex::Compile(pattern["Regex"].get<std::string>(), false);
  return Unsupported("pattern", pattern);
}

// Replaces every match of a pattern by fixed content (the Replace normalizer and decoder).
class Replacer {
 public:
  static absl::StatusOr<Replacer> Create(const json& config) {
    Replacer r;
    r.content_ = config.at("content").get<std::string>();
    const json& pattern = config.at("pattern");
    if (pattern.contains("String")) {
      r.literal_ = pattern["String"].get<std::string>();
    } else {
      auto regex = ParsePattern(pattern);
      if (!regex.ok()) return regex.status();
      r.regex_ = *std::move(regex);
    }
    return r;
  }

  absl::StatusOr<std::string> Apply(std::string_view text) const {
    if (!regex_) return absl::StrReplaceAll(AbslView(text), {{literal_, content_}});
    auto matches = regex_->FindAll(text);
    if (!matches.ok()) return matches.status();
    std::string out;
    size_t last = 0;
    for (const auto& [begin, end] : *matches) {
      out.append(text.substr(last, begin - last)).append(content_);
      last = end;
    }
    out.append(text.substr(last));
    return out;
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;  // set for {"Regex": ...} patterns
  std::string content_;
};

// ---------------------------------------------------------------------------------- normalizers

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::StatusOr<std::string> Normalize(std::string_view text) const override {
    std::string s(text);
    for (const auto& step : steps_) {
      auto next = step->Normalize(s);
      if (!next.ok()) return next.status();
      s = *std::move(next);
    }
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  absl::StatusOr<std::string> Normalize(std::string_view text) const override {
    if (text.empty()) return std::string();  // an empty piece stays empty
    return absl::StrCat(prefix_, AbslView(text));
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  explicit ReplaceNormalizer(Replacer replacer) : replacer_(std::move(replacer)) {}
  absl::StatusOr<std::string> Normalize(std::string_view text) const override {
    return replacer_.Apply(text);
  }

 private:
  Replacer replacer_;
};

// ------------------------------------------------------------------------------- pre-tokenizers

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// Cuts text at the matches of a regex; behavior says what becomes of the matched parts. Every
// piece is a contiguous range of text (merged parts are adjacent), so pieces are views into it.
absl::StatusOr<std::vector<std::string_view>> SplitByRegex(const Regex& regex,
                                                           SplitBehavior behavior, bool invert,
                                                           std::string_view text) {
  auto matches = regex.FindAll(text);
  if (!matches.ok()) return matches.status();
  // Alternate gap / match spans covering the text; with invert, gaps are the delimiters.
  struct Span {
    size_t begin, end;
    bool delimiter;
  };
  std::vector<Span> spans;
  spans.reserve(2 * matches->size() + 1);
  size_t last = 0;
  for (const auto& [begin, end] : *matches) {
    if (begin > last) spans.push_back({last, begin, invert});
    spans.push_back({begin, end, !invert});
    last = end;
  }
  if (last < text.size()) spans.push_back({last, text.size(), invert});

  // Hugging Face's rules, e.g. "the-final--countdown" cut at "-":
  //   Isolated            the | - | final | - | - | countdown
  //   Removed             the | final | countdown
  //   MergedWithPrevious  the- | final- | - | countdown
  //   MergedWithNext      the | -final | - | -countdown
  std::vector<std::string_view> pieces;
  pieces.reserve(spans.size());
  auto extend_last = [&](const Span& span) {
    pieces.back() = text.substr(pieces.back().data() - text.data(),
                                pieces.back().size() + (span.end - span.begin));
  };
  bool previous_is_plain = false;  // the last piece came from a non-delimiter span
  bool attach_to_next = false;     // MergedWithNext: the last piece is a delimiter awaiting text
  for (const Span& span : spans) {
    const std::string_view part = text.substr(span.begin, span.end - span.begin);
    if (!span.delimiter) {
      if (attach_to_next) {
        extend_last(span);
      } else {
        pieces.push_back(part);
      }
      previous_is_plain = true;
      attach_to_next = false;
      continue;
    }
    switch (behavior) {
      case SplitBehavior::kIsolated:
        pieces.push_back(part);
        break;
      case SplitBehavior::kRemoved:
        break;
      case SplitBehavior::kMergedWithPrevious:
        if (previous_is_plain) {
          extend_last(span);
        } else {
          pieces.push_back(part);
        }
        break;
      case SplitBehavior::kMergedWithNext:
        pieces.push_back(part);
        attach_to_next = true;
        break;
    }
    previous_is_plain = false;
  }
  return pieces;
}

// Applies a per-word split to every word in place.
template <typename F>
absl::Status SplitEach(std::vector<std::string>* words, F split_one) {
  std::vector<std::string> out;
  out.reserve(words->size() * 2);
  for (const std::string& w : *words) {
    if (absl::Status s = split_one(w, &out); !s.ok()) return s;
  }
  *words = std::move(out);
  return absl::OkStatus();
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Regex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  absl::Status Split(std::vector<std::string>* words, bool) const override {
    return SplitEach(words, [&](const std::string& w, std::vector<std::string>* out) {
      auto pieces = SplitByRegex(*regex_, behavior_, invert_, w);
      if (!pieces.ok()) return pieces.status();
      out->insert(out->end(), pieces->begin(), pieces->end());
      return absl::OkStatus();
    });
  }

 private:
  std::unique_ptr<Regex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  absl::Status Split(std::vector<std::string>* words, bool) const override {
    return SplitEach(words, [&](const std::string& w, std::vector<std::string>* out) {
      const std::string prefixed = add_prefix_space_ && !w.starts_with(' ') ? " " + w : "";
      const std::string_view text = prefixed.empty() ? std::string_view(w) : prefixed;
      std::vector<std::string_view> pieces = {text};
      if (regex_) {
        auto split = SplitByRegex(*regex_, SplitBehavior::kIsolated, false, text);
        if (!split.ok()) return split.status();
        pieces = *std::move(split);
      }
      for (const std::string_view piece : pieces) {
        out->emplace_back();
        AppendByteLevel(piece, &out->back());
      }
      return absl::OkStatus();
    });
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

enum class PrependScheme { kAlways, kFirst, kNever };

absl::StatusOr<PrependScheme> ParsePrependScheme(const json& config) {
  if (config.contains("prepend_scheme")) {
    const std::string scheme = config["prepend_scheme"].get<std::string>();
    if (scheme == "always") return PrependScheme::kAlways;
    if (scheme == "first") return PrependScheme::kFirst;
    if (scheme == "never") return PrependScheme::kNever;
    return Unsupported("Metaspace prepend_scheme", config["prepend_scheme"]);
  }
  // Older files say add_prefix_space instead.
  return config.value("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  absl::Status Split(std::vector<std::string>* words, bool at_input_start) const override {
    return SplitEach(words, [&](const std::string& w, std::vector<std::string>* out) {
      std::string text = absl::StrReplaceAll(w, {{" ", replacement_}});
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && at_input_start);
      if (prepend && !text.starts_with(replacement_)) text.insert(0, replacement_);
      if (!split_) {
        out->push_back(std::move(text));
        return absl::OkStatus();
      }
      // Each word starts at a replacement character.
      size_t begin = 0;
      while (begin < text.size()) {
        size_t next = text.find(replacement_, begin + 1);
        if (next == std::string::npos) next = text.size();
        out->push_back(text.substr(begin, next - begin));
        begin = next;
      }
      return absl::OkStatus();
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Split(std::vector<std::string>* words, bool at_input_start) const override {
    for (const auto& step : steps_) {
      if (absl::Status s = step->Split(words, at_input_start); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// ------------------------------------------------------------------------------------- decoders

class ByteLevelDecoder final : public Decoder {
 public:
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      // A token outside the byte alphabet (an added token such as "<|eot_id|>" spelled with
      // other characters) stands for its own text.
      if (auto raw = ByteLevelToBytes(token)) {
        bytes.append(*raw);
      } else {
        bytes.append(token);
      }
    }
    *tokens = {LossyUtf8(bytes)};
    return absl::OkStatus();
  }
};

class ReplaceDecoder final : public Decoder {
 public:
  explicit ReplaceDecoder(Replacer replacer) : replacer_(std::move(replacer)) {}
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      auto replaced = replacer_.Apply(token);
      if (!replaced.ok()) return replaced.status();
      token = *std::move(replaced);
    }
    return absl::OkStatus();
  }

 private:
  Replacer replacer_;
};

// The byte value of a "<0xXX>" token.
std::optional<uint8_t> ByteFallbackValue(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token[5] != '>') return std::nullopt;
  int value = 0;
  for (const char c : token.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    value = value * 16 + digit;
  }
  return static_cast<uint8_t>(value);
}

class ByteFallbackDecoder final : public Decoder {
 public:
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;  // bytes of consecutive <0xXX> tokens
    auto flush = [&] {
      if (!pending.empty()) out.push_back(LossyUtf8(pending));
      pending.clear();
    };
    for (std::string& token : *tokens) {
      if (const auto byte = ByteFallbackValue(token)) {
        pending.push_back(static_cast<char>(*byte));
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
    return absl::OkStatus();
  }
};

class FuseDecoder final : public Decoder {
 public:
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    *tokens = {absl::StrJoin(*tokens, "")};
    return absl::OkStatus();
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      std::string_view t = token;
      for (size_t k = 0; k < start_ && t.starts_with(content_); ++k) t.remove_prefix(content_.size());
      for (size_t k = 0; k < stop_ && t.ends_with(content_); ++k) t.remove_suffix(content_.size());
      token = std::string(t);
    }
    return absl::OkStatus();
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      token = absl::StrReplaceAll(token, {{replacement_, " "}});
      // The space the pre-tokenizer prepended to the text is not part of it.
      if (i == 0 && scheme_ != PrependScheme::kNever && token.starts_with(' ')) {
        token.erase(0, 1);
      }
    }
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  absl::Status Decode(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) {
      if (absl::Status s = step->Decode(tokens); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Parses a list of sub-configs with the given parser.
template <typename T, typename Parse>
absl::StatusOr<std::vector<std::unique_ptr<T>>> ParseList(const json& list, Parse parse) {
  std::vector<std::unique_ptr<T>> out;
  for (const json& item : list) {
    auto parsed = parse(item);
    if (!parsed.ok()) return parsed.status();
    out.push_back(*std::move(parsed));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const json& config) {
  const std::string type = TypeOf(config);
  if (type == "Sequence") {
    auto steps = ParseList<Normalizer>(config.at("normalizers"), ParseNormalizer);
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequenceNormalizer>(*std::move(steps));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(config.at("prepend").get<std::string>());
  }
  if (type == "Replace") {
    auto replacer = Replacer::Create(config);
    if (!replacer.ok()) return replacer.status();
    return std::make_unique<ReplaceNormalizer>(*std::move(replacer));
  }
  return Unsupported("normalizer", config);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const json& config) {
  const std::string type = TypeOf(config);
  if (type == "Sequence") {
    auto steps = ParseList<PreTokenizer>(config.at("pretokenizers"), ParsePreTokenizer);
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequencePreTokenizer>(*std::move(steps));
  }
  if (type == "Split") {
    auto regex = ParsePattern(config.at("pattern"));
    if (!regex.ok()) return regex.status();
    const std::string behavior = config.at("behavior").get<std::string>();
    SplitBehavior b;
    if (behavior == "Isolated") {
      b = SplitBehavior::kIsolated;
    } else if (behavior == "Removed") {
      b = SplitBehavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      b = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      b = SplitBehavior::kMergedWithNext;
    } else {
      return Unsupported("Split behavior", config["behavior"]);
    }
    return std::make_unique<SplitPreTokenizer>(*std::move(regex), b, config.value("invert", false));
  }
  if (type == "ByteLevel") {
    std::unique_ptr<Regex> regex;
    if (config.value("use_regex", true)) {
      auto compiled = Regex::Compile(kGpt2Pattern, false);
      if (!compiled.ok()) return compiled.status();
      regex = *std::move(compiled);
    }
    return std::make_unique<ByteLevelPreTokenizer>(config.value("add_prefix_space", true),
                                                   std::move(regex));
  }
  if (type == "Metaspace") {
    auto scheme = ParsePrependScheme(config);
    if (!scheme.ok()) return scheme.status();
    return std::make_unique<MetaspacePreTokenizer>(config.value("replacement", "\u2581"), *scheme,
                                                   config.value("split", true));
  }
  return Unsupported("pre_tokenizer", config);
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const json& config) {
  const std::string type = TypeOf(config);
  if (type == "Sequence") {
    auto steps = ParseList<Decoder>(config.at("decoders"), ParseDecoder);
    if (!steps.ok()) return steps.status();
    return std::make_unique<SequenceDecoder>(*std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    auto replacer = Replacer::Create(config);
    if (!replacer.ok()) return replacer.status();
    return std::make_unique<ReplaceDecoder>(*std::move(replacer));
  }
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(config.at("content").get<std::string>(),
                                          config.value("start", size_t{0}),
                                          config.value("stop", size_t{0}));
  }
  if (type == "Metaspace") {
    auto scheme = ParsePrependScheme(config);
    if (!scheme.ok()) return scheme.status();
    return std::make_unique<MetaspaceDecoder>(config.value("replacement", "\u2581"), *scheme);
  }
  return Unsupported("decoder", config);
}

absl::StatusOr<SpecialTokenWrap> ParsePostProcessor(const json& config) {
  const std::string type = TypeOf(config);
  if (type == "ByteLevel") return SpecialTokenWrap{};  // only adjusts offsets, which we do not use
  if (type == "Sequence") {
    SpecialTokenWrap wrap;
    for (const json& step : config.at("processors")) {
      auto inner = ParsePostProcessor(step);
      if (!inner.ok()) return inner.status();
      // A later processor wraps the output of the earlier ones.
      inner->prefix.insert(inner->prefix.end(), wrap.prefix.begin(), wrap.prefix.end());
      wrap.suffix.insert(wrap.suffix.end(), inner->suffix.begin(), inner->suffix.end());
      wrap.prefix = std::move(inner->prefix);
    }
    return wrap;
  }
  if (type == "TemplateProcessing") {
    SpecialTokenWrap wrap;
    bool seen_sequence = false;
    for (const json& item : config.at("single")) {
      if (item.contains("Sequence")) {
        if (item["Sequence"].at("id") != "A" || seen_sequence) {
          return Unsupported("TemplateProcessing single template", config["single"]);
        }
        seen_sequence = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      const json& special = config.at("special_tokens");
      if (!special.contains(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("TemplateProcessing: special token '", name, "' is not listed"));
      }
      auto& ids = seen_sequence ? wrap.suffix : wrap.prefix;
      for (const json& id : special[name].at("ids")) {
        auto parsed = ParseTokenId(id);
        if (!parsed.ok()) return parsed.status();
        ids.push_back(*parsed);
      }
    }
    return wrap;
  }
  return Unsupported("post_processor", config);
}

absl::StatusOr<int32_t> ParseTokenId(const json& id) {
  // Checked before get<>: converting an out-of-range number to int32_t is undefined behaviour.
  if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId) {
    return absl::InvalidArgumentError(
        absl::StrCat("token id ", id.dump(), " is not an integer in [0, ", kMaxTokenId, "]"));
  }
  return static_cast<int32_t>(id.get<int64_t>());
}

}  // namespace lizard::tokenizer_internal
