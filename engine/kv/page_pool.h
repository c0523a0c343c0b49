// The paged KV cache of a decode worker: one pool of fixed-size pages shared
// by every request, a block table per request, pages back in the pool the
// moment a request's cache is destroyed (finished, cancelled or failed).
//
// A page may belong to several caches at once: the caches of one request's
// choices share the prompt's whole pages (PagedKvCache::CreateGroupWhenFree),
// so the pool counts references, and a page goes back when its last cache
// does.
//
// Per layer the pool holds K pages and V pages laid out
// [num_pages, Hkv, page_tokens, D] (kernels/paged_kv/paged_kv.h); position t
// of a request lives in page table[t / page_tokens] at offset
// t % page_tokens. Backends own the storage (host float32 for the CPU engine,
// device bf16 for CUDA); the accounting is here.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"
#include "engine/kv/kv_cache.h"

namespace seer {

struct PageLayout {
  KvLayout kv;  // layers, KV heads, head_dim, element type of the pages
  int page_tokens = 0;  // positions per page

  // Bytes of one page, K and V of every layer.
  size_t PageBytes() const { return 2 * static_cast<size_t>(kv.num_layers) * kv.LayerBytes(page_tokens); }
  int PagesFor(int64_t tokens) const { return static_cast<int>((tokens + page_tokens - 1) / page_tokens); }
};

class PagePool {
 public:
  virtual ~PagePool() = default;
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  const PageLayout& layout() const { return layout_; }
  int num_pages() const { return num_pages_; }
  int free_pages() const;
  int used_pages() const { return num_pages_ - free_pages(); }
  // Callers of AllocateWhenFree waiting for their pages now.
  int waiters() const;

  // `n` pages, all or none, at once: RESOURCE_EXHAUSTED when fewer are free
  // (or `n` exceeds the pool). It does not queue behind AllocateWhenFree's
  // waiters.
  StatusOr<std::vector<int32_t>> Allocate(int n);
  // Waits until `n` pages are free, then takes them, first come first
  // served: a request waits behind every one that came before it, even when
  // its own pages are free (so a large request is never starved by a stream
  // of small ones, as vLLM's FCFS scheduler does). Gives up with
  // `cancelled()`'s status (polled at least every 50 ms), leaving the queue,
  // and at once with OUT_OF_RANGE when `n` exceeds the whole pool.
  // While it is this caller's turn and pages are short, `reclaim` (when set)
  // is asked to free some (the decode's prefix store drops its oldest
  // prompt); it returns false once it has nothing left to give.
  StatusOr<std::vector<int32_t>> AllocateWhenFree(int n, const std::function<Status()>& cancelled,
                                                  const std::function<bool()>& reclaim = nullptr);
  // Drops one reference to each page; a page whose last reference goes is
  // free again.
  void Release(std::span<const int32_t> pages);
  // One more reference to each page (each must be held): another cache now
  // reads it too.
  void Share(std::span<const int32_t> pages);
  // How many of `pages` (each held) have one reference only: those that
  // releasing them would free.
  int SolelyHeld(std::span<const int32_t> pages) const;

  // Copies page `from` (K and V of every layer) over page `to`.
  virtual Status CopyPage(int32_t from, int32_t to) = 0;

  // Copies tokens [t0, t0 + n) of one layer between the wire layout
  // [Hkv, n, head_dim] and the pages of `table`. `src` is the element type
  // of k/v (converted when it differs from the pages').
  virtual Status WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                             const void* v) = 0;
  virtual Status ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k, void* v) const = 0;

 protected:
  PagePool(const PageLayout& layout, int num_pages);

 private:
  // Aborts unless `page` is held by some cache (under mu_).
  void CheckHeld(int32_t page, const char* op) const;

  const PageLayout layout_;
  const int num_pages_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::vector<int32_t> free_;  // a stack: the last released page is reused first
  std::vector<int32_t> refs_;  // the caches holding each page (0: free)
  std::deque<uint64_t> waiting_;  // AllocateWhenFree's callers, in arrival order
  uint64_t next_waiter_ = 0;
};

// Host pages in float32: the CPU engine's pool.
class HostPagePool final : public PagePool {
 public:
  static StatusOr<std::unique_ptr<HostPagePool>> Create(const PageLayout& layout, int num_pages);

  float* k(int layer) { return k_[layer].data(); }
  float* v(int layer) { return v_[layer].data(); }
  const float* k(int layer) const { return k_[layer].data(); }
  const float* v(int layer) const { return v_[layer].data(); }

  Status WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                     const void* v) override;
  Status ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k, void* v) const override;
  Status CopyPage(int32_t from, int32_t to) override;

 private:
  HostPagePool(const PageLayout& layout, int num_pages) : PagePool(layout, num_pages) {}
  std::vector<std::vector<float>> k_, v_;
};

class PagedKvCache;

// What a group of caches may start from (PagedKvCache::CreateGroupWhenFree).
struct PagedGroupStart {
  // A cache whose first `held_tokens` positions (a multiple of the page
  // size, below the group's prefix) are this prompt's K/V already: the
  // group takes those pages, one more reference each, instead of new ones,
  // and never writes them. The decode's prefix store holds such caches
  // (PagedKvCache::ShareLeading).
  const PagedKvCache* held = nullptr;
  int held_tokens = 0;
  // Frees pages while the group's are short (PagePool::AllocateWhenFree).
  std::function<bool()> reclaim;
  // Takes the pages now, ahead of any waiter (with `reclaim`'s help), or
  // fails with RESOURCE_EXHAUSTED: for a request that gave pages back a
  // moment ago and must not wait now (its KV is already on the way).
  bool at_once = false;
};

// One request's KV cache in pages: the KvCache interface over a block table
// that covers `capacity` positions, reserved whole when the cache is made
// (so a request admitted never fails for lack of pages later). The pages go
// back to the pool when the cache is destroyed.
class PagedKvCache final : public KvCache {
 public:
  // RESOURCE_EXHAUSTED when the pool lacks the pages.
  static StatusOr<std::unique_ptr<PagedKvCache>> Create(PagePool* pool, int capacity);
  // `count` caches of `capacity` positions each for the choices of one
  // request, whose first `prefix` positions (the prompt, 1 <= prefix <=
  // capacity) are written once, into the first cache: the whole pages of the
  // prefix are the same pages in every cache, and each cache has its own
  // pages from the prefix's last partial page on. Every page is reserved
  // now, waiting for them (PagePool::AllocateWhenFree): the prefix's whole pages
  // once, the rest `count` times. Once the first cache holds the prefix,
  // each other one takes it with AdoptPrefix.
  static StatusOr<std::vector<std::unique_ptr<PagedKvCache>>> CreateGroupWhenFree(
      PagePool* pool, int prefix, int capacity, int count, const std::function<Status()>& cancelled,
      const PagedGroupStart& start = {});
  // A cache of the first `tokens` positions of `src` (a positive multiple of
  // the page size, at most src's length), holding the same pages, one more
  // reference each, and those positions: how the decode's prefix store
  // keeps a prompt's whole pages once its request has them.
  static StatusOr<std::unique_ptr<PagedKvCache>> ShareLeading(const PagedKvCache& src, int tokens);
  // For a cache of a group other than the first: copies the prefix's last
  // partial page from `first` (the group's first cache, its length the
  // prefix) and sets this cache's length to the prefix.
  Status AdoptPrefix(const PagedKvCache& first);
  // Positions at the start of the cache held in pages its group shares (0
  // for a cache alone).
  int shared_positions() const { return shared_pages_ * pool_->layout().page_tokens; }
  // Positions at the start held in pages taken from PagedGroupStart::held
  // (never written through this cache).
  int held_positions() const { return held_pages_ * pool_->layout().page_tokens; }
  ~PagedKvCache() override;

  PagePool* pool() const { return pool_; }
  const std::vector<int32_t>& pages() const { return pages_; }

  Status ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const override;
  Status WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) override;

 private:
  PagedKvCache(PagePool* pool, int capacity, std::vector<int32_t> pages, int shared_pages = 0, int prefix = 0,
               int held_pages = 0)
      : KvCache(pool->layout().kv, capacity),
        pool_(pool),
        pages_(std::move(pages)),
        shared_pages_(shared_pages),
        prefix_(prefix),
        held_pages_(held_pages) {}
  Status CheckRange(const char* op, int layer, int t0, int n) const;

  PagePool* const pool_;
  const std::vector<int32_t> pages_;
  // In a group: the leading pages every cache of the group holds; and for a
  // cache other than the first, the prefix it takes from the first
  // (AdoptPrefix), which it never writes itself.
  const int shared_pages_;
  const int prefix_;
  const int held_pages_;  // leading pages that held this prompt's K/V already
};

}  // namespace seer
