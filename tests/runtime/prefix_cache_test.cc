// PrefixCache alone: longest exact-prefix lookup, token verification, LRU within the byte budget,
// pins, and the counters behind the metrics.
#include "engine/runtime/prefix_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace lizard {
namespace {

using Tokens = std::vector<int32_t>;

TEST(PrefixCacheTest, LongestCachedPrefixAtAnyTokenBoundary) {
  PrefixCache cache(1000);
  EXPECT_TRUE(cache.Insert(Tokens{1, 2, 3}, 10, 100).empty());
  EXPECT_TRUE(cache.Insert(Tokens{1, 2, 3, 4, 5}, 11, 100).empty());
  EXPECT_TRUE(cache.Insert(Tokens{7}, 12, 100).empty());

  const Tokens request{1, 2, 3, 4, 5, 6, 7};
  std::optional<PrefixCache::Hit> hit = cache.Lookup(request, 7);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->state, 11u);
  EXPECT_EQ(hit->tokens, 5);
  // Limited to the first 4 tokens, the 3-token entry is the longest.
  hit = cache.Lookup(request, 4);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->state, 10u);
  EXPECT_EQ(hit->tokens, 3);
  // A key must be a prefix: {7} is in the request but not at its start.
  EXPECT_FALSE(cache.Lookup(Tokens{1, 2, 9, 7}, 4).has_value());
  EXPECT_FALSE(cache.Lookup(Tokens{2, 3}, 2).has_value());

  EXPECT_EQ(cache.queries(), 4);
  EXPECT_EQ(cache.hits(), 2);
  EXPECT_EQ(cache.hit_tokens(), 8);
  EXPECT_EQ(cache.bytes(), 300);
}

TEST(PrefixCacheTest, ExistingKeyKeepsItsEntryAndTheNewStateIsReturned) {
  PrefixCache cache(1000);
  EXPECT_TRUE(cache.Insert(Tokens{4, 5}, 1, 100).empty());
  EXPECT_TRUE(cache.Contains(Tokens{4, 5}));
  EXPECT_FALSE(cache.Contains(Tokens{4}));
  EXPECT_EQ(cache.Insert(Tokens{4, 5}, 2, 100), std::vector<StateId>{2});
  EXPECT_EQ(cache.states(), std::vector<StateId>{1});
  EXPECT_EQ(cache.Insert(Tokens{}, 3, 100), std::vector<StateId>{3});  // empty key
  EXPECT_EQ(cache.queries(), 0);  // Contains is not a query
}

TEST(PrefixCacheTest, EvictsLeastRecentlyUsedWithinTheBudget) {
  PrefixCache cache(300);
  cache.Insert(Tokens{1}, 1, 100);
  cache.Insert(Tokens{2}, 2, 100);
  cache.Insert(Tokens{3}, 3, 100);
  ASSERT_TRUE(cache.Lookup(Tokens{1, 0}, 2).has_value());  // 1 is now the most recent
  EXPECT_EQ(cache.Insert(Tokens{4}, 4, 100), std::vector<StateId>{2});
  EXPECT_EQ(cache.Insert(Tokens{5}, 5, 200), (std::vector<StateId>{3, 1}));
  EXPECT_EQ(cache.evictions(), 3);
  EXPECT_EQ(cache.bytes(), 300);
  std::vector<StateId> states = cache.states();
  std::sort(states.begin(), states.end());
  EXPECT_EQ(states, (std::vector<StateId>{4, 5}));
  // Larger than the whole budget: not kept, nothing evicted.
  EXPECT_EQ(cache.Insert(Tokens{6}, 6, 301), std::vector<StateId>{6});
  EXPECT_EQ(cache.bytes(), 300);
}

TEST(PrefixCacheTest, PinnedEntriesAreNotEvicted) {
  PrefixCache cache(200);
  cache.Insert(Tokens{1}, 1, 100);
  cache.Insert(Tokens{2}, 2, 100);
  cache.Pin(1);
  cache.Pin(1);
  EXPECT_EQ(cache.Insert(Tokens{3}, 3, 100), std::vector<StateId>{2});
  cache.Pin(3);
  EXPECT_EQ(cache.Insert(Tokens{4}, 4, 100), std::vector<StateId>{4});  // all pinned: refused
  cache.Unpin(1);
  EXPECT_EQ(cache.Insert(Tokens{5}, 5, 100), std::vector<StateId>{5});  // 1 is still pinned once
  cache.Unpin(1);
  EXPECT_EQ(cache.Insert(Tokens{6}, 6, 100), std::vector<StateId>{1});
}

TEST(PrefixCacheTest, DisabledCacheNeverHitsNorKeeps) {
  PrefixCache cache(0);
  EXPECT_FALSE(cache.enabled());
  EXPECT_EQ(cache.Insert(Tokens{1}, 1, 1), std::vector<StateId>{1});
  EXPECT_FALSE(cache.Lookup(Tokens{1, 2}, 2).has_value());
  EXPECT_EQ(cache.queries(), 0);
}

}  // namespace
}  // namespace lizard
