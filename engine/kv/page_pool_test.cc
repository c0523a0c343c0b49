// The page pool's accounting and the paged cache's KvCache interface: pages
// are taken all or none, waited for, given back when a cache goes, and the
// wire-layout copies round-trip through shuffled pages as HostKvCache's do.
#include "engine/kv/page_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

namespace seer {
namespace {

PageLayout SmallLayout(int page_tokens) {
  PageLayout l;
  l.kv.num_layers = 2;
  l.kv.num_kv_heads = 2;
  l.kv.head_dim = 8;
  l.kv.dtype = DType::kF32;
  l.page_tokens = page_tokens;
  return l;
}

TEST(PagePool, AllocatesAllOrNoneAndTakesPagesBack) {
  auto pool = HostPagePool::Create(SmallLayout(16), 10);
  ASSERT_TRUE(pool.ok());
  auto a = (*pool)->Allocate(6);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*pool)->free_pages(), 4);
  EXPECT_EQ((*pool)->Allocate(5).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ((*pool)->free_pages(), 4);
  (*pool)->Release(*a);
  EXPECT_EQ((*pool)->free_pages(), 10);
  EXPECT_EQ((*pool)->AllocateWhenFree(11, nullptr).status().code(), StatusCode::kOutOfRange)
      << "more than the whole pool never fits";
}

TEST(PagePool, AWaitingRequestGetsPagesWhenTheyComeBackOrGivesUpWhenCancelled) {
  auto pool = HostPagePool::Create(SmallLayout(16), 4);
  ASSERT_TRUE(pool.ok());
  auto held = (*pool)->Allocate(3);
  ASSERT_TRUE(held.ok());
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (*pool)->Release(*held);
  });
  auto got = (*pool)->AllocateWhenFree(4, [] { return OkStatus(); });
  releaser.join();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  std::atomic<bool> cancel{false};
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    cancel = true;
  });
  auto waiting = (*pool)->AllocateWhenFree(1, [&] { return cancel ? Cancelled("gone") : OkStatus(); });
  canceller.join();
  EXPECT_EQ(waiting.status().code(), StatusCode::kCancelled);
  (*pool)->Release(*got);
  EXPECT_EQ((*pool)->free_pages(), 4);
}

TEST(PagedKvCache, RoundTripsTheWireLayoutAsTheContiguousCacheDoes) {
  auto pool = HostPagePool::Create(SmallLayout(16), 12);
  ASSERT_TRUE(pool.ok());
  // Take pages in a scattered order first, so the cache's table is not 0, 1, 2...
  auto scatter = (*pool)->Allocate(5);
  ASSERT_TRUE(scatter.ok());
  (*pool)->Release(std::vector<int32_t>{(*scatter)[3], (*scatter)[0], (*scatter)[4]});
  auto paged = PagedKvCache::Create(pool->get(), 45);
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  EXPECT_EQ((*paged)->pages().size(), 3u);
  HostKvCache contiguous(2, 2, 8, 45);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int layer = 0; layer < 2; ++layer) {
    for (auto [t0, n] : {std::pair{0, 15}, std::pair{15, 2}, std::pair{17, 28}}) {
      std::vector<float> k(2 * n * 8), v(k.size());
      for (float& x : k) x = u(rng);
      for (float& x : v) x = u(rng);
      ASSERT_TRUE((*paged)->WriteLayer(layer, t0, n, DType::kF32, k.data(), v.data()).ok());
      ASSERT_TRUE(contiguous.WriteLayer(layer, t0, n, DType::kF32, k.data(), v.data()).ok());
    }
    std::vector<float> pk(2 * 45 * 8), pv(pk.size()), ck(pk.size()), cv(pk.size());
    ASSERT_TRUE((*paged)->ReadLayer(layer, 0, 45, pk.data(), pv.data()).ok());
    ASSERT_TRUE(contiguous.ReadLayer(layer, 0, 45, ck.data(), cv.data()).ok());
    EXPECT_EQ(pk, ck);
    EXPECT_EQ(pv, cv);
  }
  std::vector<float> buf(2 * 8);
  EXPECT_EQ((*paged)->WriteLayer(0, 45, 1, DType::kF32, buf.data(), buf.data()).code(), StatusCode::kOutOfRange);
  EXPECT_EQ((*paged)->ReadLayer(2, 0, 1, buf.data(), buf.data()).code(), StatusCode::kInvalidArgument);
  const int before = (*pool)->free_pages();
  paged->reset();
  EXPECT_EQ((*pool)->free_pages(), before + 3);
}

}  // namespace
}  // namespace seer
