// The BPE model of a tokenizer.json: vocabulary, ranked merges, byte fallback and unknown tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace lizard::tokenizer_internal {

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become their <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is itself a vocabulary entry is not merged
};

class BpeModel {
 public:
  // merges are pairs of token strings, highest priority first.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);

  // Appends the ids of one pre-tokenized word. Fails only for a character that is neither in
  // the vocabulary nor covered by byte fallback or an unknown token.
  absl::Status EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* IdToToken(int32_t id) const;
  // One more than the largest id.
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  BpeModel() = default;
  // Splits a word into characters (kUnknown for those outside the vocabulary) and merges them.
  std::vector<int32_t> MergeWord(std::string_view word) const;
  // The ids of a word, unknown characters resolved, without the cache.
  absl::StatusOr<std::vector<int32_t>> EncodeUncached(std::string_view word) const;

  static constexpr int32_t kUnknown = -1;
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::vector<std::optional<std::string>> id_to_token_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::vector<int32_t> byte_ids_;  // id of <0xXX> per byte when byte_fallback, else empty

  // Words seen before: most words in running text repeat.
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  // std::shared_mutex rather than absl::Mutex: Debian's Abseil runs deadlock detection on every
  // lock, which costs more than the lookup.
  mutable std::shared_mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;  // guarded by cache_mu_
};

}  // namespace lizard::tokenizer_internal
