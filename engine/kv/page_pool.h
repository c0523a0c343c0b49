// The paged KV cache of a decode worker: one pool of fixed-size pages shared
// by every request, a block table per request, pages back in the pool the
// moment a request's cache is destroyed (finished, cancelled or failed).
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

  // `n` pages, all or none: RESOURCE_EXHAUSTED when fewer are free (or `n`
  // exceeds the pool).
  StatusOr<std::vector<int32_t>> Allocate(int n);
  // Waits until `n` pages are free, then takes them; gives up with
  // `cancelled()`'s status (polled at least every 50 ms) and at once with
  // RESOURCE_EXHAUSTED when `n` exceeds the whole pool.
  StatusOr<std::vector<int32_t>> AllocateWhenFree(int n, const std::function<Status()>& cancelled);
  void Release(std::span<const int32_t> pages);

  // Copies tokens [t0, t0 + n) of one layer between the wire layout
  // [Hkv, n, head_dim] and the pages of `table`. `src` is the element type
  // of k/v (converted when it differs from the pages').
  virtual Status WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                             const void* v) = 0;
  virtual Status ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k, void* v) const = 0;

 protected:
  PagePool(const PageLayout& layout, int num_pages);

 private:
  const PageLayout layout_;
  const int num_pages_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::vector<int32_t> free_;  // a stack: the last released page is reused first
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

 private:
  HostPagePool(const PageLayout& layout, int num_pages) : PagePool(layout, num_pages) {}
  std::vector<std::vector<float>> k_, v_;
};

// One request's KV cache in pages: the KvCache interface over a block table
// that covers `capacity` positions, reserved whole when the cache is made
// (so a request admitted never fails for lack of pages later). The pages go
// back to the pool when the cache is destroyed.
class PagedKvCache final : public KvCache {
 public:
  // RESOURCE_EXHAUSTED when the pool lacks the pages.
  static StatusOr<std::unique_ptr<PagedKvCache>> Create(PagePool* pool, int capacity);
  // Waits for the pages (PagePool::AllocateWhenFree).
  static StatusOr<std::unique_ptr<PagedKvCache>> CreateWhenFree(PagePool* pool, int capacity,
                                                                const std::function<Status()>& cancelled);
  ~PagedKvCache() override;

  PagePool* pool() const { return pool_; }
  const std::vector<int32_t>& pages() const { return pages_; }

  Status ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const override;
  Status WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) override;

 private:
  PagedKvCache(PagePool* pool, int capacity, std::vector<int32_t> pages)
      : KvCache(pool->layout().kv, capacity), pool_(pool), pages_(std::move(pages)) {}
  Status CheckRange(const char* op, int layer, int t0, int n) const;

  PagePool* const pool_;
  const std::vector<int32_t> pages_;
};

}  // namespace seer
