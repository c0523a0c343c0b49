// The page pool's accounting and the paged cache's KvCache interface: pages
// are taken all or none, waited for, given back when a cache goes, and the
// wire-layout copies round-trip through shuffled pages as HostKvCache's do.
#include "engine/kv/page_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
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

// Polls `done` every millisecond for up to 10 s.
bool Eventually(const std::function<bool()>& done) {
  for (int i = 0; i < 10000 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return done();
}

// First come, first served: a small request that arrives behind a large
// waiting one waits too, though its pages are free, and gets them after the
// large one; a waiter that gives up lets the next one through.
TEST(PagePool, WaitersAreServedInArrivalOrder) {
  auto pool = HostPagePool::Create(SmallLayout(16), 10);
  ASSERT_TRUE(pool.ok());
  auto held = (*pool)->Allocate(4);
  ASSERT_TRUE(held.ok());
  std::atomic<int> order{0}, large_done{-1}, small_done{-1};
  std::thread large([&] {
    auto got = (*pool)->AllocateWhenFree(8, [] { return OkStatus(); });
    EXPECT_TRUE(got.ok());
    large_done = order++;
    (*pool)->Release(*got);
  });
  ASSERT_TRUE(Eventually([&] { return (*pool)->waiters() == 1; }));
  // 3 pages: free now, but not beside the large request's 8, so it is
  // served once the large one gives its pages back (with 2 the two could
  // finish in either order once both were served).
  std::thread small([&] {
    auto got = (*pool)->AllocateWhenFree(3, [] { return OkStatus(); });
    EXPECT_TRUE(got.ok());
    small_done = order++;
    (*pool)->Release(*got);
  });
  EXPECT_TRUE(Eventually([&] { return (*pool)->waiters() == 2; }))
      << "the small request went ahead of the large one, its pages being free";
  EXPECT_EQ(small_done.load(), -1);
  EXPECT_EQ((*pool)->free_pages(), 6);
  (*pool)->Release(*held);
  large.join();
  small.join();
  EXPECT_EQ(large_done.load(), 0);
  EXPECT_EQ(small_done.load(), 1);
  EXPECT_EQ((*pool)->waiters(), 0);

  // The head of the queue gives up: the one behind it goes.
  held = (*pool)->Allocate(4);
  ASSERT_TRUE(held.ok());
  std::atomic<bool> give_up{false};
  std::thread head([&] {
    auto got = (*pool)->AllocateWhenFree(8, [&] { return give_up ? Cancelled("gone") : OkStatus(); });
    EXPECT_EQ(got.status().code(), StatusCode::kCancelled);
  });
  ASSERT_TRUE(Eventually([&] { return (*pool)->waiters() == 1; }));
  std::thread behind([&] {
    auto got = (*pool)->AllocateWhenFree(3, [] { return OkStatus(); });
    EXPECT_TRUE(got.ok());
    (*pool)->Release(*got);
  });
  EXPECT_TRUE(Eventually([&] { return (*pool)->waiters() == 2; }));
  give_up = true;
  head.join();
  behind.join();
  (*pool)->Release(*held);
  EXPECT_EQ((*pool)->free_pages(), 10);
  EXPECT_EQ((*pool)->waiters(), 0);
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

// Random K and V for positions [t0, t0 + n) of every layer, written into
// `cache`; returns them, layer by layer, K then V, in the wire layout.
std::vector<std::vector<float>> WriteRandom(KvCache* cache, int t0, int n, std::mt19937* rng) {
  const KvLayout& l = cache->layout();
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::vector<float>> out;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    std::vector<float> k(static_cast<size_t>(l.num_kv_heads) * n * l.head_dim), v(k.size());
    for (float& x : k) x = u(*rng);
    for (float& x : v) x = u(*rng);
    EXPECT_TRUE(cache->WriteLayer(layer, t0, n, DType::kF32, k.data(), v.data()).ok());
    out.push_back(std::move(k));
    out.push_back(std::move(v));
  }
  return out;
}

std::vector<std::vector<float>> ReadAll(const KvCache& cache, int t0, int n) {
  const KvLayout& l = cache.layout();
  std::vector<std::vector<float>> out;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    std::vector<float> k(static_cast<size_t>(l.num_kv_heads) * n * l.head_dim), v(k.size());
    EXPECT_TRUE(cache.ReadLayer(layer, t0, n, k.data(), v.data()).ok());
    out.push_back(std::move(k));
    out.push_back(std::move(v));
  }
  return out;
}

// A request's choices: the prompt's whole pages are one set of pages in
// every cache, reserved once; each cache's own pages start at the prompt's
// partial last page, which AdoptPrefix copies; what one choice writes after
// the prompt no other sees; pages go back only with their last cache.
TEST(PagedKvCache, AGroupSharesThePromptsWholePagesAndCopiesItsPartialOne) {
  for (const int prompt : {1, 15, 16, 17, 40, 48}) {
    SCOPED_TRACE("prompt " + std::to_string(prompt));
    auto pool = HostPagePool::Create(SmallLayout(16), 40);
    ASSERT_TRUE(pool.ok());
    const int capacity = prompt + 20, count = 3;
    const int per_cache = (capacity + 15) / 16, shared = prompt / 16;
    auto group = PagedKvCache::CreateGroupWhenFree(pool->get(), prompt, capacity, count, nullptr);
    ASSERT_TRUE(group.ok()) << group.status().ToString();
    ASSERT_EQ(group->size(), 3u);
    EXPECT_EQ((*pool)->used_pages(), shared + count * (per_cache - shared)) << "the whole prompt pages once";
    for (int i = 0; i < count; ++i) {
      const std::vector<int32_t>& t = (*group)[i]->pages();
      ASSERT_EQ(static_cast<int>(t.size()), per_cache);
      EXPECT_EQ((*group)[i]->shared_positions(), shared * 16);
      for (int p = 0; p < per_cache; ++p) {
        if (p < shared) {
          EXPECT_EQ(t[p], (*group)[0]->pages()[p]);
        } else {
          for (int j = 0; j < i; ++j) EXPECT_NE(t[p], (*group)[j]->pages()[p]) << "page " << p << " is its own";
        }
      }
    }
    std::mt19937 rng(prompt);
    PagedKvCache& first = *(*group)[0];
    const auto prompt_kv = WriteRandom(&first, 0, prompt, &rng);
    first.set_length(prompt);
    for (int i = 1; i < count; ++i) {
      PagedKvCache& later = *(*group)[i];
      EXPECT_EQ(later.AdoptPrefix(later).code(), StatusCode::kFailedPrecondition) << "not from the first";
      ASSERT_TRUE(later.AdoptPrefix(first).ok());
      EXPECT_EQ(later.length(), prompt);
      EXPECT_EQ(later.AdoptPrefix(first).code(), StatusCode::kFailedPrecondition) << "twice";
      if (shared > 0) {
        std::vector<float> one(2 * 8);
        EXPECT_EQ(later.WriteLayer(0, shared * 16 - 1, 1, DType::kF32, one.data(), one.data()).code(),
                  StatusCode::kFailedPrecondition)
            << "a later cache never writes the shared pages";
      }
    }
    // Each choice writes its own tokens after the prompt.
    std::vector<std::vector<std::vector<float>>> own;
    for (int i = 0; i < count; ++i) own.push_back(WriteRandom((*group)[i].get(), prompt, 20, &rng));
    for (int i = 0; i < count; ++i) {
      EXPECT_EQ(ReadAll(*(*group)[i], 0, prompt), prompt_kv) << "cache " << i << " reads the prompt";
      EXPECT_EQ(ReadAll(*(*group)[i], prompt, 20), own[i]) << "cache " << i << " reads its own tokens";
    }
    const int all = (*pool)->used_pages();
    group->erase(group->begin());  // the first goes first: the shared pages stay
    EXPECT_EQ((*pool)->used_pages(), all - (per_cache - shared));
    EXPECT_EQ(ReadAll(*(*group)[1], 0, prompt), prompt_kv);
    group->clear();
    EXPECT_EQ((*pool)->free_pages(), 40);
  }
}

TEST(PagedKvCache, AGroupReservesAllOrWaitsAndNamesWhatCannotFit) {
  auto pool = HostPagePool::Create(SmallLayout(16), 10);
  ASSERT_TRUE(pool.ok());
  // 64 prompt positions shared (4 pages) and 3 x 2 own pages: 10.
  auto fits = PagedKvCache::CreateGroupWhenFree(pool->get(), 64, 96, 3, nullptr);
  ASSERT_TRUE(fits.ok()) << fits.status().ToString();
  EXPECT_EQ((*pool)->free_pages(), 0);
  fits->clear();
  auto too_many = PagedKvCache::CreateGroupWhenFree(pool->get(), 64, 96, 4, nullptr);
  EXPECT_EQ(too_many.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(too_many.status().message().find("n = 4 choices of max_new_tokens 32"), std::string::npos)
      << too_many.status().ToString();
  EXPECT_EQ(PagedKvCache::CreateGroupWhenFree(pool->get(), 0, 96, 2, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(PagedKvCache::CreateGroupWhenFree(pool->get(), 97, 96, 2, nullptr).status().code(),
            StatusCode::kInvalidArgument);
  // A group waits for its pages like a single cache.
  auto held = (*pool)->Allocate(4);
  ASSERT_TRUE(held.ok());
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    (*pool)->Release(*held);
  });
  auto waited = PagedKvCache::CreateGroupWhenFree(pool->get(), 64, 96, 3, [] { return OkStatus(); });
  releaser.join();
  ASSERT_TRUE(waited.ok()) << waited.status().ToString();
  // One cache alone shares nothing.
  waited->clear();
  auto alone = PagedKvCache::CreateGroupWhenFree(pool->get(), 64, 96, 1, nullptr);
  ASSERT_TRUE(alone.ok());
  EXPECT_EQ((*alone)[0]->shared_positions(), 0);
  EXPECT_EQ((*pool)->used_pages(), 6);
}

TEST(PagedKvCache, AGroupStartsFromHeldPagesAndNeverWritesThem) {
  for (const int count : {1, 3}) {
    for (const int held_tokens : {16, 32}) {
      SCOPED_TRACE("count " + std::to_string(count) + ", held " + std::to_string(held_tokens));
      auto pool = HostPagePool::Create(SmallLayout(16), 40);
      ASSERT_TRUE(pool.ok());
      std::mt19937 rng(count * 100 + held_tokens);
      // An earlier prompt of 40 positions; its first held_tokens are kept.
      auto earlier = PagedKvCache::CreateGroupWhenFree(pool->get(), 40, 50, 1, nullptr);
      ASSERT_TRUE(earlier.ok());
      WriteRandom((*earlier)[0].get(), 0, 40, &rng);
      (*earlier)[0]->set_length(40);
      const auto earlier_head = ReadAll(*(*earlier)[0], 0, held_tokens);
      EXPECT_EQ(PagedKvCache::ShareLeading(*(*earlier)[0], 24).status().code(), StatusCode::kInvalidArgument)
          << "whole pages only";
      EXPECT_EQ(PagedKvCache::ShareLeading(*(*earlier)[0], 48).status().code(), StatusCode::kInvalidArgument)
          << "no further than the cache's length";
      auto kept = PagedKvCache::ShareLeading(*(*earlier)[0], held_tokens);
      ASSERT_TRUE(kept.ok()) << kept.status().ToString();
      EXPECT_EQ((*kept)->length(), held_tokens);
      earlier->clear();
      EXPECT_EQ((*pool)->used_pages(), held_tokens / 16) << "the kept pages stay, the rest went back";
      EXPECT_EQ(ReadAll(**kept, 0, held_tokens), earlier_head);

      // A new prompt of 45 positions whose first held_tokens are held.
      PagedGroupStart start;
      start.held = kept->get();
      start.held_tokens = held_tokens;
      const int prompt = 45, capacity = 60;
      const int per_cache = (capacity + 15) / 16, shared = count > 1 ? prompt / 16 : held_tokens / 16;
      auto group = PagedKvCache::CreateGroupWhenFree(pool->get(), prompt, capacity, count, nullptr, start);
      ASSERT_TRUE(group.ok()) << group.status().ToString();
      EXPECT_EQ((*pool)->used_pages(), shared + count * (per_cache - shared)) << "no new page for held positions";
      for (int i = 0; i < count; ++i) {
        EXPECT_EQ((*group)[i]->held_positions(), held_tokens);
        for (int p = 0; p < held_tokens / 16; ++p) EXPECT_EQ((*group)[i]->pages()[p], (*kept)->pages()[p]);
      }
      PagedKvCache& first = *(*group)[0];
      std::vector<float> one(2 * 8);
      EXPECT_EQ(first.WriteLayer(1, held_tokens - 1, 1, DType::kF32, one.data(), one.data()).code(),
                StatusCode::kFailedPrecondition)
          << "held pages are never written";
      // The rest lands after them; the prompt reads the held K/V, then its own.
      const auto rest = WriteRandom(&first, held_tokens, prompt - held_tokens, &rng);
      first.set_length(prompt);
      for (int i = 1; i < count; ++i) ASSERT_TRUE((*group)[i]->AdoptPrefix(first).ok());
      const auto whole = ReadAll(first, 0, prompt);
      EXPECT_EQ(ReadAll(first, 0, held_tokens), earlier_head);
      EXPECT_EQ(ReadAll(first, held_tokens, prompt - held_tokens), rest);
      for (int i = 1; i < count; ++i) EXPECT_EQ(ReadAll(*(*group)[i], 0, prompt), whole);
      // The store lets go first: the group keeps the held pages.
      kept->reset();
      EXPECT_EQ(ReadAll(first, 0, held_tokens), earlier_head);
      group->clear();
      EXPECT_EQ((*pool)->free_pages(), 40);
    }
  }
  auto pool = HostPagePool::Create(SmallLayout(16), 10);
  ASSERT_TRUE(pool.ok());
  auto a = PagedKvCache::CreateGroupWhenFree(pool->get(), 40, 40, 1, nullptr);
  ASSERT_TRUE(a.ok());
  (*a)[0]->set_length(40);
  auto kept = PagedKvCache::ShareLeading(*(*a)[0], 32);
  ASSERT_TRUE(kept.ok());
  PagedGroupStart start;
  start.held = kept->get();
  for (const int bad : {0, 8, 48, 64}) {
    start.held_tokens = bad;
    EXPECT_EQ(PagedKvCache::CreateGroupWhenFree(pool->get(), 48, 60, 1, nullptr, start).status().code(),
              StatusCode::kInvalidArgument)
        << bad << " held positions: whole pages below the prefix";
  }
}

// PagedGroupStart::at_once: the pages now, ahead of a queued waiter, with
// the reclaimer's help, or RESOURCE_EXHAUSTED; never a wait.
TEST(PagedKvCache, AtOnceTakesPagesAheadOfWaitersOrFails) {
  auto pool = HostPagePool::Create(SmallLayout(16), 6);
  ASSERT_TRUE(pool.ok());
  auto kept = PagedKvCache::Create(pool->get(), 64);  // 4 pages a reclaimer may give back
  ASSERT_TRUE(kept.ok());
  std::atomic<bool> give_up{false};
  std::thread waiter([&] {
    auto got = (*pool)->AllocateWhenFree(5, [&] { return give_up ? Cancelled("gone") : OkStatus(); });
    EXPECT_EQ(got.status().code(), StatusCode::kCancelled);
  });
  ASSERT_TRUE(Eventually([&] { return (*pool)->waiters() == 1; }));
  PagedGroupStart start;
  start.at_once = true;
  EXPECT_EQ(PagedKvCache::CreateGroupWhenFree(pool->get(), 20, 60, 1, nullptr, start).status().code(),
            StatusCode::kResourceExhausted)
      << "4 pages wanted, 2 free, nothing to reclaim";
  start.reclaim = [&] {
    if (*kept == nullptr) return false;
    kept->reset();
    return true;
  };
  auto group = PagedKvCache::CreateGroupWhenFree(pool->get(), 20, 60, 1, nullptr, start);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  EXPECT_EQ((*pool)->used_pages(), 4) << "ahead of the waiter, which still waits";
  EXPECT_EQ((*pool)->waiters(), 1);
  give_up = true;
  waiter.join();
}

TEST(PagePool, AWaiterShortOfPagesAsksTheReclaimerFirst) {
  auto pool = HostPagePool::Create(SmallLayout(16), 6);
  ASSERT_TRUE(pool.ok());
  // A "store" holding 4 pages, freed one cache at a time when asked.
  std::vector<std::unique_ptr<PagedKvCache>> kept;
  for (int i = 0; i < 2; ++i) {
    auto c = PagedKvCache::Create(pool->get(), 32);
    ASSERT_TRUE(c.ok());
    kept.push_back(std::move(c).value());
  }
  int asked = 0;
  auto reclaim = [&] {
    ++asked;
    if (kept.empty()) return false;
    kept.erase(kept.begin());
    return true;
  };
  const std::function<Status()> go_on = [] { return OkStatus(); }, gone = [] { return Cancelled("gone"); };
  auto got = (*pool)->AllocateWhenFree(3, go_on, reclaim);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(asked, 1) << "one cache given back was enough: 2 + 2 free pages";
  EXPECT_EQ(kept.size(), 1u);
  (*pool)->Release(*got);
  // Nothing left to give: the waiter waits as before, until cancelled.
  kept.clear();
  auto all = (*pool)->Allocate(6);
  ASSERT_TRUE(all.ok());
  asked = 0;
  auto cancelled = (*pool)->AllocateWhenFree(1, gone, reclaim);
  EXPECT_EQ(cancelled.status().code(), StatusCode::kCancelled);
  EXPECT_GE(asked, 1);
}

}  // namespace
}  // namespace seer
