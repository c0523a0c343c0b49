#include "engine/kv/page_pool.h"

#include <algorithm>
#include <chrono>
#include <new>
#include <string>

#include "kernels/paged_kv/paged_kv_cpu.h"

namespace seer {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

PagePool::PagePool(const PageLayout& layout, int num_pages) : layout_(layout), num_pages_(num_pages) {
  free_.reserve(num_pages);
  for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

int PagePool::free_pages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(free_.size());
}

StatusOr<std::vector<int32_t>> PagePool::Allocate(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n < 0 || n > static_cast<int>(free_.size())) {
    return ResourceExhausted("KV pages: " + Str(n) + " wanted, " + Str(static_cast<int64_t>(free_.size())) + " of " +
                             Str(num_pages_) + " free");
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  free_.resize(free_.size() - n);
  return out;
}

StatusOr<std::vector<int32_t>> PagePool::AllocateWhenFree(int n, const std::function<Status()>& cancelled) {
  if (n < 0 || n > num_pages_) {
    // No wait makes room for it: not worth a retry here (OUT_OF_RANGE, not
    // RESOURCE_EXHAUSTED, which clients retry).
    return OutOfRange("KV pages: " + Str(n) + " wanted for the prompt and max_new_tokens, but the pool holds " +
                      Str(num_pages_) + " pages in all (--kv-pool); ask for fewer tokens");
  }
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (static_cast<int>(free_.size()) >= n) {
      std::vector<int32_t> out(free_.end() - n, free_.end());
      free_.resize(free_.size() - n);
      return out;
    }
    if (cancelled) {
      lock.unlock();
      SEER_RETURN_IF_ERROR(cancelled());
      lock.lock();
      if (static_cast<int>(free_.size()) >= n) continue;
    }
    freed_.wait_for(lock, std::chrono::milliseconds(50));
  }
}

void PagePool::Release(std::span<const int32_t> pages) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.insert(free_.end(), pages.begin(), pages.end());
  }
  freed_.notify_all();
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

StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(PagePool* pool, int capacity) {
  if (capacity <= 0) return InvalidArgument("paged KV cache: capacity " + Str(capacity) + " must be positive");
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> pages, pool->Allocate(pool->layout().PagesFor(capacity)));
  return std::unique_ptr<PagedKvCache>(new PagedKvCache(pool, capacity, std::move(pages)));
}

StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::CreateWhenFree(PagePool* pool, int capacity,
                                                                     const std::function<Status()>& cancelled) {
  if (capacity <= 0) return InvalidArgument("paged KV cache: capacity " + Str(capacity) + " must be positive");
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> pages,
                        pool->AllocateWhenFree(pool->layout().PagesFor(capacity), cancelled));
  return std::unique_ptr<PagedKvCache>(new PagedKvCache(pool, capacity, std::move(pages)));
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
  if (n == 0) return OkStatus();
  if (k == nullptr || v == nullptr) return InvalidArgument("WriteLayer: null input buffer");
  return pool_->WriteTokens(layer, pages_, t0, n, src, k, v);
}

}  // namespace seer
