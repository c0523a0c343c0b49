// The decode worker's KV prefix store on its own (server/decode/
// held_prefixes.h), over a host page pool: what an ask resolves to is learnt
// from the summaries and corrected by the last one, a lookup offers the
// reusable whole blocks in whole pages and the kept cache's own pages, and
// reclaiming pages skips prompts whose pages running requests share.
#include "server/decode/held_prefixes.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "rpc/requests.h"

namespace seer {
namespace {

constexpr int kPage = 16;

PageLayout Layout() {
  PageLayout l;
  l.kv.num_layers = 2;
  l.kv.num_kv_heads = 1;
  l.kv.head_dim = 4;
  l.kv.dtype = DType::kF32;
  l.page_tokens = kPage;
  return l;
}

// A fetched prompt's cache: `n` positions held, room for 8 more.
std::unique_ptr<PagedKvCache> Fetched(PagePool* pool, int n) {
  auto group = PagedKvCache::CreateGroupWhenFree(pool, n, n + 8, 1, nullptr);
  EXPECT_TRUE(group.ok()) << group.status().ToString();
  std::unique_ptr<PagedKvCache> c = std::move((*group)[0]);
  c->set_length(n);
  return c;
}

std::vector<int32_t> Ids(int n, int32_t first) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

v1::Sparsity Applied(SparsityMode mode, double value = 0.0) {
  SparsityConfig c;
  c.mode = mode;
  if (mode == SparsityMode::kThreshold) c.threshold = value;
  if (mode == SparsityMode::kNzRatio) c.nz_ratio = value;
  return AppliedSparsityToProto(c);
}

struct Fixture {
  prometheus::Registry registry;
  DecodeMetrics metrics{registry};
  std::unique_ptr<HostPagePool> pool = HostPagePool::Create(Layout(), 64).value();
};

TEST(HeldPrefixes, LearnsWhatAnAskResolvesToAndOffersTheKeptPages) {
  Fixture f;
  HeldPrefixes held(int64_t{1} << 30, kPage, &f.metrics);
  const v1::Sparsity asked;  // the server's default
  const std::vector<int32_t> a = Ids(200, 1000);
  std::vector<int32_t> b(a.begin(), a.begin() + 150);
  for (int32_t id : Ids(60, 5)) b.push_back(id);
  EXPECT_EQ(held.Lookup(b, asked).tokens, 0) << "nothing kept";
  auto cache_a = Fetched(f.pool.get(), 200);
  held.Keep(a, asked, Applied(SparsityMode::kDense), 64, 0, *cache_a);
  EXPECT_EQ(held.entries(), 1);
  EXPECT_EQ(held.bytes(), int64_t{200 / kPage} * Layout().PageBytes()) << "the whole pages below the prompt's end";
  HeldPrefixes::Hit hit = held.Lookup(b, asked);
  ASSERT_EQ(hit.tokens, 128) << "150 shared tokens: two whole 64-token blocks";
  EXPECT_EQ(hit.applied.mode, SparsityMode::kDense);
  EXPECT_EQ(hit.gate_block, 64);
  ASSERT_NE(hit.pages, nullptr);
  for (int p = 0; p < 128 / kPage; ++p) EXPECT_EQ(hit.pages->pages()[p], cache_a->pages()[p]) << "page " << p;
  hit = {};
  v1::Sparsity threshold;
  threshold.set_mode(v1::Sparsity::MODE_THRESHOLD);
  threshold.set_threshold(0.1);
  EXPECT_EQ(held.Lookup(b, threshold).tokens, 0) << "an ask never seen resolved is not looked up";

  // The same ask now resolves to nz_ratio: learnt, though nothing is kept,
  // and nothing is offered for it.
  auto cache_c = Fetched(f.pool.get(), 100);
  held.Keep(Ids(100, 7), asked, Applied(SparsityMode::kNzRatio, 0.5), 64, 0, *cache_c);
  EXPECT_EQ(held.entries(), 1);
  EXPECT_EQ(held.Lookup(b, asked).tokens, 0);
  // Dense again, then a prefill that reports no applied sparsity: forgotten.
  held.Keep(Ids(100, 7), asked, Applied(SparsityMode::kDense), 64, 0, *cache_c);
  EXPECT_EQ(held.Lookup(b, asked).tokens, 128);
  held.Keep(Ids(100, 9), asked, v1::Sparsity{}, 64, 0, *cache_c);
  EXPECT_EQ(held.Lookup(b, asked).tokens, 0);
  // A prefill with other gates: what was kept under the old ones goes.
  EXPECT_EQ(held.entries(), 2);
  held.Keep(a, asked, Applied(SparsityMode::kDense), 64, 42, *cache_a);
  EXPECT_EQ(held.entries(), 1);
  hit = held.Lookup(b, asked);
  EXPECT_EQ(hit.tokens, 128);
  EXPECT_EQ(hit.gates_fingerprint, 42u);
  hit = {};
  EXPECT_EQ(f.metrics.kv_prefix_misses.Value(), 4);
}

TEST(HeldPrefixes, ReclaimSkipsPromptsWhosePagesRunningRequestsShare) {
  Fixture f;
  HeldPrefixes held(int64_t{1} << 30, kPage, &f.metrics);
  const v1::Sparsity asked;
  auto running = Fetched(f.pool.get(), 160);  // still decoding
  held.Keep(Ids(160, 1), asked, Applied(SparsityMode::kDense), 64, 0, *running);
  {
    auto done = Fetched(f.pool.get(), 96);  // finished: the store alone holds its pages
    held.Keep(Ids(96, 500), asked, Applied(SparsityMode::kDense), 64, 0, *done);
  }
  EXPECT_EQ(held.entries(), 2);
  const int free_before = f.pool->free_pages();
  ASSERT_TRUE(held.Reclaim()) << "the finished prompt's pages come free";
  EXPECT_EQ(f.pool->free_pages(), free_before + 96 / kPage);
  EXPECT_EQ(held.entries(), 1);
  EXPECT_FALSE(held.Reclaim()) << "dropping the running request's prompt would free nothing";
  EXPECT_EQ(held.entries(), 1);
  running.reset();
  EXPECT_TRUE(held.Reclaim());
  EXPECT_EQ(held.entries(), 0);
  EXPECT_EQ(f.pool->free_pages(), 64);
  EXPECT_FALSE(held.Reclaim());
  EXPECT_EQ(f.metrics.kv_prefix_evictions.Value(), 2);
  EXPECT_EQ(f.metrics.kv_prefix_entries.Value(), 0);
}

}  // namespace
}  // namespace seer
