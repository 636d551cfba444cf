// PrefixCache: which snapshotted states hold which token prefixes (the engine's automatic
// prefix cache). Plain logic: it stores StateIds of the StateManager and never touches a state.
//
// A Lizard state is constant-size, so a snapshot at the exact end of any prompt or generation is
// one copy, and a later request whose tokens extend those tokens starts from it and prefills only
// the rest. Keys are exact token boundaries (not blocks): an entry is keyed by a hash chain of
// the tokens its state has *consumed*, h_i = mix(h_{i-1}, token_i), so a lookup hashes each
// prefix of a request once. A hash is only a candidate: the entry's tokens are compared before
// it counts as a hit.
//
// Entries are evicted least recently used first to stay within capacity_bytes; a pinned entry (a
// queued request will copy it) is never evicted. Not thread-safe: the engine serializes calls.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/runtime/ids.h"

namespace lizard {

class PrefixCache {
 public:
  // capacity_bytes == 0 disables the cache (Lookup misses, Insert refuses).
  explicit PrefixCache(int64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  bool enabled() const { return capacity_bytes_ > 0; }

  struct Hit {
    StateId state = 0;
    int64_t tokens = 0;  // the entry's state consumed tokens[0, tokens)
  };
  // The entry with the longest key that is a prefix of tokens[0, max_tokens), if any; counts a
  // query, and a hit of that many tokens. The entry becomes the most recently used.
  std::optional<Hit> Lookup(std::span<const int32_t> tokens, int64_t max_tokens);
  // Whether exactly `tokens` is cached (no query counted); a present entry is touched.
  bool Contains(std::span<const int32_t> tokens);

  // Adds `state` (which consumed exactly `tokens`, non-empty, and occupies `bytes`) unless that
  // key is already cached. Returns the states the caller must free: entries evicted to stay
  // within capacity, or `state` itself when it was not kept (already cached, disabled, too big).
  std::vector<StateId> Insert(std::span<const int32_t> tokens, StateId state, int64_t bytes);

  // A pinned entry is not evicted until as many Unpin calls. Unknown states are ignored.
  void Pin(StateId state);
  void Unpin(StateId state);

  int64_t queries() const { return queries_; }
  int64_t hits() const { return hits_; }
  int64_t hit_tokens() const { return hit_tokens_; }
  int64_t evictions() const { return evictions_; }
  int64_t bytes() const { return bytes_; }
  int64_t capacity_bytes() const { return capacity_bytes_; }
  // The cached states (for per-tier statistics).
  std::vector<StateId> states() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    StateId state = 0;
    int64_t bytes = 0;
    uint64_t last_used = 0;
    int32_t pins = 0;
  };
  static uint64_t Chain(uint64_t hash, int32_t token);
  // The entry under `key` whose tokens are exactly `tokens`, or nullptr.
  Entry* Find(uint64_t key, std::span<const int32_t> tokens);
  Entry* FindState(StateId state);
  // Evicts LRU unpinned entries until `extra` more bytes fit; false if they cannot.
  bool MakeRoom(int64_t extra, std::vector<StateId>& evicted);

  int64_t capacity_bytes_;
  absl::flat_hash_map<uint64_t, Entry> entries_;  // by hash of the whole key
  uint64_t clock_ = 0;
  int64_t bytes_ = 0;
  int64_t queries_ = 0, hits_ = 0, hit_tokens_ = 0, evictions_ = 0;
};

}  // namespace lizard
