#include "tokenizer/bpe.h"

#include <mutex>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tokenizer/utf8.h"

namespace lizard::tokenizer_internal {

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    std::vector<std::pair<std::string, int32_t>> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options) {
  std::unique_ptr<BpeModel> model(new BpeModel());
  model->token_to_id_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("negative id for '", token, "'"));
    if (static_cast<size_t>(id) >= model->id_to_token_.size()) model->id_to_token_.resize(id + 1);
    model->id_to_token_[id] = token;
    model->token_to_id_.emplace(std::move(token), id);
  }
  model->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto l = model->TokenToId(left), r = model->TokenToId(right);
    const auto result = model->TokenToId(absl::StrCat(left, right));
    if (!l || !r || !result) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge '", left, " ", right, "' uses a token missing from the vocabulary"));
    }
    // The first occurrence of a pair wins, as in Hugging Face tokenizers.
    model->merges_.emplace(PairKey(*l, *r), Merge{static_cast<int32_t>(rank), *result});
  }
  if (options.unk_token) {
    model->unk_id_ = model->TokenToId(*options.unk_token);
    if (!model->unk_id_) {
      return absl::InvalidArgumentError(
          absl::StrCat("unk_token '", *options.unk_token, "' is not in the vocabulary"));
    }
  }
  if (options.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      const auto id = model->TokenToId(absl::StrFormat("<0x%02X>", b));
      if (!id) return absl::InvalidArgumentError(absl::StrFormat("byte_fallback: no <0x%02X>", b));
      model->byte_ids_.push_back(*id);
    }
  }
  model->options_ = std::move(options);
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = token_to_id_.find(AbslView(token));
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_to_token_[id]) return nullptr;
  return &*id_to_token_[id];
}

std::vector<int32_t> BpeModel::MergeWord(std::string_view word) const {
  // Symbols form a doubly linked list over the characters; merging joins a symbol with its right
  // neighbour. A min-heap of candidate pairs, ordered by (merge rank, position), always applies the
  // best-ranked leftmost merge next, so a word of n characters costs O(n log n).
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
  };
  std::vector<Symbol> symbols;
  for (size_t i = 0; i < word.size();) {
    const size_t begin = i;
    NextCodePoint(word, &i);
    int32_t id = kUnknown;
    if (const auto it = token_to_id_.find(AbslView(word.substr(begin, i - begin))); it != token_to_id_.end()) {
      id = it->second;
    }
    if (id == kUnknown && !byte_ids_.empty()) {
      for (size_t b = begin; b < i; ++b) {
        symbols.push_back({byte_ids_[static_cast<uint8_t>(word[b])], 0, 0});
      }
    } else {
      symbols.push_back({id, 0, 0});
    }
  }
  const auto n = static_cast<int32_t>(symbols.size());
  for (int32_t k = 0; k < n; ++k) {
    symbols[k].prev = k - 1;
    symbols[k].next = k + 1 < n ? k + 1 : -1;
  }

  struct Candidate {
    int32_t rank, left, right;
    int32_t left_id, right_id;  // to recognise a pair that changed since it was queued
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto push_pair = [&](int32_t left) {
    if (left < 0) return;
    const int32_t right = symbols[left].next;
    if (right < 0 || symbols[left].id == kUnknown || symbols[right].id == kUnknown) return;
    const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    queue.push({it->second.rank, left, right, symbols[left].id, symbols[right].id,
                it->second.result});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push_pair(k);

  std::vector<bool> merged_away(n, false);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    if (merged_away[c.left] || merged_away[c.right] || symbols[c.left].next != c.right ||
        symbols[c.left].id != c.left_id || symbols[c.right].id != c.right_id) {
      continue;  // stale
    }
    Symbol& left = symbols[c.left];
    left.id = c.result;
    left.next = symbols[c.right].next;
    if (left.next >= 0) symbols[left.next].prev = c.left;
    merged_away[c.right] = true;
    push_pair(left.prev);
    push_pair(c.left);
  }

  std::vector<int32_t> ids;
  for (int32_t k = n > 0 ? 0 : -1; k >= 0; k = symbols[k].next) ids.push_back(symbols[k].id);
  return ids;
}

absl::StatusOr<std::vector<int32_t>> BpeModel::EncodeUncached(std::string_view word) const {
  if (options_.ignore_merges) {
    if (const auto id = TokenToId(word)) return std::vector<int32_t>{*id};
  }
  std::vector<int32_t> ids;
  bool previous_unknown = false;
  for (const int32_t id : MergeWord(word)) {
    if (id != kUnknown) {
      ids.push_back(id);
      previous_unknown = false;
      continue;
    }
    if (!unk_id_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", AbslView(word), "' has a character outside the vocabulary and no unk_token"));
    }
    // fuse_unk: a run of unknown characters within the word becomes a single unk token.
    if (!(options_.fuse_unk && previous_unknown)) ids.push_back(*unk_id_);
    previous_unknown = true;
  }
  return ids;
}

absl::Status BpeModel::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return absl::OkStatus();
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mu_);
    if (const auto it = cache_.find(AbslView(word)); it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return absl::OkStatus();
    }
  }
  auto word_ids = EncodeUncached(word);
  if (!word_ids.ok()) return word_ids.status();
  ids->insert(ids->end(), word_ids->begin(), word_ids->end());
  if (cacheable) {
    std::unique_lock lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // bounded memory; refills quickly
    cache_.emplace(std::string(word), *std::move(word_ids));
  }
  return absl::OkStatus();
}

}  // namespace lizard::tokenizer_internal
