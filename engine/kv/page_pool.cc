#include "engine/kv/page_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>

#include "kernels/paged_kv/paged_kv_cpu.h"

namespace seer {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

PagePool::PagePool(const PageLayout& layout, int num_pages)
    : layout_(layout), num_pages_(num_pages), refs_(static_cast<size_t>(num_pages), 0) {
  free_.reserve(num_pages);
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

int PagePool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(free_.size());
}

int PagePool::waiters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(waiting_.size());
}

StatusOr<std::vector<int32_t>> PagePool::Allocate(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n < 0 || n > static_cast<int>(free_.size())) {
    return ResourceExhausted("KV pages: " + Str(n) + " wanted, " + Str(static_cast<int64_t>(free_.size())) + " of " +
                             Str(num_pages_) + " free");
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  for (int32_t p : out) refs_[p] = 1;
  return out;
}

StatusOr<std::vector<int32_t>> PagePool::AllocateWhenFree(int n, const std::function<Status()>& cancelled,
                                                          const std::function<bool()>& reclaim) {
  if (n < 0 || n > num_pages_) {
    // No wait makes room for it: not worth a retry here (OUT_OF_RANGE, not
    // RESOURCE_EXHAUSTED, which clients retry).
    return OutOfRange("KV pages: " + Str(n) + " wanted for the prompt and max_new_tokens, but the pool holds " +
                      Str(num_pages_) + " pages in all (--kv-pool); ask for fewer tokens");
  }
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t me = next_waiter_++;
  waiting_.push_back(me);
  // Out of the queue, and the next in line told (under mu_).
  auto leave = [&] {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), me));
    freed_.notify_all();
  };
  auto my_turn = [&] { return waiting_.front() == me && static_cast<int>(free_.size()) >= n; };
  for (;;) {
    if (my_turn()) {
      std::vector<int32_t> out(free_.end() - n, free_.end());
      free_.resize(free_.size() - n);
      for (int32_t p : out) refs_[p] = 1;
      leave();
      return out;
    }
    if (reclaim && waiting_.front() == me) {
      // Short of pages at the head of the queue: the reclaimer may give some
      // back (Release takes mu_).
      lock.unlock();
      const bool gave = reclaim();
      lock.lock();
      if (gave) continue;
    }
    if (cancelled) {
      lock.unlock();
      const Status status = cancelled();
      lock.lock();
      if (!status.ok()) {
        leave();
        return status;
      }
      if (my_turn()) continue;
    }
    freed_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void PagePool::Release(std::span<const int32_t> pages) {
  bool freed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int32_t p : pages) {
      CheckHeld(p, "Release");
      if (--refs_[p] > 0) continue;
      free_.push_back(p);
      freed = true;
    }
  }
  if (freed) freed_.notify_all();
}

void PagePool::Share(std::span<const int32_t> pages) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t p : pages) {
    CheckHeld(p, "Share");
    ++refs_[p];
  }
}

int PagePool::SolelyHeld(std::span<const int32_t> pages) const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (int32_t p : pages) {
    CheckHeld(p, "SolelyHeld");
    n += refs_[p] == 1;
  }
  return n;
}

void PagePool::CheckHeld(int32_t page, const char* op) const {
  if (page >= 0 && page < num_pages_ && refs_[page] > 0) return;
  // A page handed out twice would mix two requests' KV: stop here instead.
  std::fprintf(stderr, "seer: KV page pool: %s of page %d, which no cache holds\n", op, static_cast<int>(page));
  std::abort();
}

StatusOr<std::unique_ptr<HostPagePool>> HostPagePool::Create(const PageLayout& layout, int num_pages) {
  if (layout.page_tokens <= 0 || num_pages <= 0 || layout.kv.num_layers <= 0) {
    return InvalidArgument("KV page pool: page_tokens " + Str(layout.page_tokens) + " and pages " + Str(num_pages) +
                           " must be positive");
  }
  std::unique_ptr<HostPagePool> pool(new HostPagePool(layout, num_pages));
  const size_t per_layer =
      static_cast<size_t>(num_pages) * layout.kv.num_kv_heads * layout.page_tokens * layout.kv.head_dim;
  try {
    pool->k_.assign(layout.kv.num_layers, std::vector<float>(per_layer));
    pool->v_.assign(layout.kv.num_layers, std::vector<float>(per_layer));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("KV page pool: cannot allocate " + Str(num_pages) + " pages on the host");
  }
  return pool;
}

namespace {

cpu::PagedShape ShapeOf(const PageLayout& l) {
  cpu::PagedShape s;
  s.num_heads = l.kv.num_kv_heads;
  s.num_kv_heads = l.kv.num_kv_heads;
  s.head_dim = l.kv.head_dim;
  s.page_tokens = l.page_tokens;
  return s;
}

}  // namespace

Status HostPagePool::WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                                 const void* v) {
  if (src != DType::kF32 && src != DType::kF16 && src != DType::kBF16) {
    return InvalidArgument("WriteLayer: KV data of type " + std::string(DTypeName(src)) +
                           " is not supported (F32, F16 or BF16)");
  }
  const size_t elems = static_cast<size_t>(layout().kv.num_kv_heads) * n * layout().kv.head_dim;
  std::vector<float> kf(elems), vf(elems);
  ConvertToFloat(src, k, elems, kf.data());
  ConvertToFloat(src, v, elems, vf.data());
  const cpu::PagedShape s = ShapeOf(layout());
  cpu::ScatterToPages(s, kf.data(), t0, n, table.data(), k_[layer].data());
  cpu::ScatterToPages(s, vf.data(), t0, n, table.data(), v_[layer].data());
  return OkStatus();
}

Status HostPagePool::ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k, void* v) const {
  const cpu::PagedShape s = ShapeOf(layout());
  cpu::GatherFromPages(s, k_[layer].data(), table.data(), t0, n, static_cast<float*>(k));
  cpu::GatherFromPages(s, v_[layer].data(), table.data(), t0, n, static_cast<float*>(v));
  return OkStatus();
}

Status HostPagePool::CopyPage(int32_t from, int32_t to) {
  if (from == to) return OkStatus();
  const KvLayout& kv = layout().kv;
  const size_t page = static_cast<size_t>(kv.num_kv_heads) * layout().page_tokens * kv.head_dim;
  for (int layer = 0; layer < kv.num_layers; ++layer) {
    for (std::vector<float>* which : {&k_[layer], &v_[layer]}) {
      float* base = which->data();
      std::copy_n(base + static_cast<size_t>(from) * page, page, base + static_cast<size_t>(to) * page);
    }
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(PagePool* pool, int capacity) {
  if (capacity <= 0) return InvalidArgument("paged KV cache: capacity " + Str(capacity) + " must be positive");
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> pages, pool->Allocate(pool->layout().PagesFor(capacity)));
  return std::unique_ptr<PagedKvCache>(new PagedKvCache(pool, capacity, std::move(pages)));
}

StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::ShareLeading(const PagedKvCache& src, int tokens) {
  const int page_tokens = src.pool_->layout().page_tokens;
  if (tokens <= 0 || tokens % page_tokens != 0 || tokens > src.length()) {
    return InvalidArgument("paged KV cache: ShareLeading of " + Str(tokens) +
                           " positions, need a positive multiple of " + Str(page_tokens) +
                           " up to the cache's length " + Str(src.length()));
  }
  std::vector<int32_t> pages(src.pages_.begin(), src.pages_.begin() + tokens / page_tokens);
  src.pool_->Share(pages);
  auto view = std::unique_ptr<PagedKvCache>(new PagedKvCache(src.pool_, tokens, std::move(pages)));
  view->set_length(tokens);
  return view;
}

StatusOr<std::vector<std::unique_ptr<PagedKvCache>>> PagedKvCache::CreateGroupWhenFree(
    PagePool* pool, int prefix, int capacity, int count, const std::function<Status()>& cancelled,
    const PagedGroupStart& start) {
  if (capacity <= 0 || prefix < 1 || prefix > capacity || count < 1) {
    return InvalidArgument("paged KV cache group: capacity " + Str(capacity) + ", prefix " + Str(prefix) +
                           " and count " + Str(count) + " must have 1 <= prefix <= capacity and count >= 1");
  }
  const PageLayout& layout = pool->layout();
  const int held = start.held != nullptr ? start.held_tokens / layout.page_tokens : 0;
  if (start.held != nullptr &&
      (start.held->pool_ != pool || start.held_tokens <= 0 || start.held_tokens % layout.page_tokens != 0 ||
       start.held_tokens >= prefix || start.held_tokens > start.held->length())) {
    return InvalidArgument("paged KV cache group: " + Str(start.held_tokens) +
                           " held positions, need a positive multiple of " + Str(layout.page_tokens) +
                           " below the prefix of " + Str(prefix) + ", held by a cache of this pool");
  }
  const int per_cache = layout.PagesFor(capacity);
  // Only whole pages are shared: the decode's first token of each choice
  // goes into the prefix's last page when it is partial. Held pages are
  // whole pages of the prefix, so every choice shares them.
  const int shared = count > 1 ? prefix / layout.page_tokens : held;
  const int64_t total = shared - held + static_cast<int64_t>(count) * (per_cache - shared);
  if (total > pool->num_pages()) {
    return OutOfRange("KV pages: " + Str(total) + " wanted for the prompt and " +
                      (count > 1 ? "n = " + Str(count) + " choices of " : std::string()) + "max_new_tokens " +
                      Str(capacity - prefix) + ", but the pool holds " + Str(pool->num_pages()) +
                      " pages in all (--kv-pool); ask for fewer tokens" + (count > 1 ? " or choices" : ""));
  }
  StatusOr<std::vector<int32_t>> got = start.at_once
                                           ? pool->Allocate(static_cast<int>(total))
                                           : pool->AllocateWhenFree(static_cast<int>(total), cancelled, start.reclaim);
  while (start.at_once && !got.ok() && start.reclaim && start.reclaim()) got = pool->Allocate(static_cast<int>(total));
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> fresh, std::move(got));
  // The held pages, then the prefix's new whole pages, then each cache's own.
  std::vector<int32_t> pages;
  pages.reserve(static_cast<size_t>(held) + fresh.size());
  if (held > 0) {
    pages.assign(start.held->pages_.begin(), start.held->pages_.begin() + held);
    pool->Share(pages);
  }
  pages.insert(pages.end(), fresh.begin(), fresh.end());
  const std::span<const int32_t> prefix_pages(pages.data(), static_cast<size_t>(shared));
  for (int i = 1; i < count; ++i) pool->Share(prefix_pages);
  std::vector<std::unique_ptr<PagedKvCache>> group;
  group.reserve(count);
  auto own = pages.begin() + shared;
  for (int i = 0; i < count; ++i, own += per_cache - shared) {
    std::vector<int32_t> table(prefix_pages.begin(), prefix_pages.end());
    table.insert(table.end(), own, own + (per_cache - shared));
    // A group of one shares nothing with a later cache; its held pages
    // count as shared only where other choices read them too.
    group.push_back(std::unique_ptr<PagedKvCache>(
        new PagedKvCache(pool, capacity, std::move(table), count > 1 ? shared : 0, i == 0 ? 0 : prefix, held)));
  }
  return group;
}

Status PagedKvCache::AdoptPrefix(const PagedKvCache& first) {
  const bool same_group = first.pool_ == pool_ && first.shared_pages_ == shared_pages_ &&
                          std::equal(pages_.begin(), pages_.begin() + shared_pages_, first.pages_.begin());
  if (prefix_ == 0 || !same_group || first.prefix_ != 0 || first.length() != prefix_ || first.capacity() != capacity_) {
    return FailedPrecondition("paged KV cache: AdoptPrefix needs a group's later cache and its first, holding the " +
                              Str(prefix_) + "-position prefix (it holds " + Str(first.length()) + ")");
  }
  if (length() != 0) return FailedPrecondition("paged KV cache: the prefix is already adopted");
  const int page_tokens = pool_->layout().page_tokens;
  if (prefix_ % page_tokens != 0) {
    const size_t last = static_cast<size_t>(prefix_ / page_tokens);
    SEER_RETURN_IF_ERROR(pool_->CopyPage(first.pages_[last], pages_[last]));
  }
  set_length(prefix_);
  return OkStatus();
}

PagedKvCache::~PagedKvCache() { pool_->Release(pages_); }

Status PagedKvCache::CheckRange(const char* op, int layer, int t0, int n) const {
  if (layer < 0 || layer >= layout_.num_layers) {
    return InvalidArgument(std::string(op) + ": layer " + Str(layer) + " is out of range [0, " +
                           Str(layout_.num_layers) + ")");
  }
  if (t0 < 0 || n < 0 || static_cast<int64_t>(t0) + n > capacity_) {
    return OutOfRange(std::string(op) + ": tokens [" + Str(t0) + ", " + Str(static_cast<int64_t>(t0) + n) +
                      ") are outside the cache capacity of " + Str(capacity_) + " tokens");
  }
  return OkStatus();
}

Status PagedKvCache::ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const {
  SEER_RETURN_IF_ERROR(CheckRange("ReadLayer", layer, t0, n));
  if (n == 0) return OkStatus();
  if (k_out == nullptr || v_out == nullptr) return InvalidArgument("ReadLayer: null output buffer");
  return pool_->ReadTokens(layer, pages_, t0, n, k_out, v_out);
}

Status PagedKvCache::WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) {
  SEER_RETURN_IF_ERROR(CheckRange("WriteLayer", layer, t0, n));
  if (prefix_ > 0 && t0 < shared_positions() && n > 0) {
    return FailedPrecondition("WriteLayer: tokens [" + Str(t0) + ", " + Str(static_cast<int64_t>(t0) + n) +
                              ") are in pages this cache shares with its group's first cache, which writes them");
  }
  if (t0 < held_positions() && n > 0) {
    return FailedPrecondition("WriteLayer: tokens [" + Str(t0) + ", " + Str(static_cast<int64_t>(t0) + n) +
                              ") are in pages that held this prompt's K/V already (the prefix store's), which " +
                              "no request writes");
  }
  if (n == 0) return OkStatus();
  if (k == nullptr || v == nullptr) return InvalidArgument("WriteLayer: null input buffer");
  return pool_->WriteTokens(layer, pages_, t0, n, src, k, v);
}

}  // namespace seer
