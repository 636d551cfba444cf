#include "engine/runtime/prefix_cache.h"

#include <algorithm>

namespace lizard {

uint64_t PrefixCache::Chain(uint64_t hash, int32_t token) {
  // splitmix64 finalizer over (previous hash, token): each key depends on every earlier token.
  uint64_t x = hash ^ (static_cast<uint64_t>(static_cast<uint32_t>(token)) + 0x9e3779b97f4a7c15ULL +
                       (hash << 6) + (hash >> 2));
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

PrefixCache::Entry* PrefixCache::Find(uint64_t key, std::span<const int32_t> tokens) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return nullptr;
  const std::vector<int32_t>& have = it->second.tokens;
  return std::equal(have.begin(), have.end(), tokens.begin(), tokens.end()) ? &it->second
                                                                            : nullptr;
}

PrefixCache::Entry* PrefixCache::FindState(StateId state) {
  for (auto& [key, entry] : entries_) {
    if (entry.state == state) return &entry;
  }
  return nullptr;
}

std::optional<PrefixCache::Hit> PrefixCache::Lookup(std::span<const int32_t> tokens,
                                                    int64_t max_tokens) {
  if (!enabled()) return std::nullopt;
  ++queries_;
  const int64_t n = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size()));
  Entry* best = nullptr;
  uint64_t hash = 0;
  for (int64_t i = 0; i < n; ++i) {
    hash = Chain(hash, tokens[i]);
    if (Entry* e = Find(hash, tokens.first(i + 1)); e != nullptr) best = e;
  }
  if (best == nullptr) return std::nullopt;
  best->last_used = ++clock_;
  ++hits_;
  hit_tokens_ += static_cast<int64_t>(best->tokens.size());
  return Hit{best->state, static_cast<int64_t>(best->tokens.size())};
}

bool PrefixCache::Contains(std::span<const int32_t> tokens) {
  uint64_t hash = 0;
  for (int32_t t : tokens) hash = Chain(hash, t);
  Entry* e = Find(hash, tokens);
  if (e != nullptr) e->last_used = ++clock_;
  return e != nullptr;
}

std::vector<StateId> PrefixCache::Insert(std::span<const int32_t> tokens, StateId state,
                                         int64_t bytes) {
  std::vector<StateId> to_free;
  uint64_t hash = 0;
  for (int32_t t : tokens) hash = Chain(hash, t);
  // An existing key (or, rarely, another prefix with the same hash) keeps its entry.
  if (tokens.empty() || !enabled() || entries_.contains(hash) || !MakeRoom(bytes, to_free)) {
    to_free.push_back(state);
    return to_free;
  }
  entries_[hash] = Entry{{tokens.begin(), tokens.end()}, state, bytes, ++clock_, 0};
  bytes_ += bytes;
  return to_free;
}

bool PrefixCache::MakeRoom(int64_t extra, std::vector<StateId>& evicted) {
  if (extra > capacity_bytes_) return false;
  while (bytes_ + extra > capacity_bytes_) {
    auto victim = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second.pins > 0) continue;
      if (victim == entries_.end() || it->second.last_used < victim->second.last_used) victim = it;
    }
    if (victim == entries_.end()) return false;  // everything left is pinned
    evicted.push_back(victim->second.state);
    bytes_ -= victim->second.bytes;
    ++evictions_;
    entries_.erase(victim);
  }
  return true;
}

void PrefixCache::Pin(StateId state) {
  if (Entry* e = FindState(state); e != nullptr) ++e->pins;
}

void PrefixCache::Unpin(StateId state) {
  if (Entry* e = FindState(state); e != nullptr && e->pins > 0) --e->pins;
}

std::vector<StateId> PrefixCache::states() const {
  std::vector<StateId> out;
  out.reserve(entries_.size());
  for (const auto& [key, entry] : entries_) out.push_back(entry.state);
  return out;
}

}  // namespace lizard
