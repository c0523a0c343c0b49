#include "server/decode/held_prefixes.h"

#include <numeric>

#include "rpc/requests.h"

namespace seer {
namespace {

// Distinct asked sparsities remembered; past it the map starts over (a
// client that varies its threshold per request gains nothing from it).
constexpr size_t kMaxResolved = 256;

}  // namespace

HeldPrefixes::HeldPrefixes(int64_t max_bytes, int page_tokens, DecodeMetrics* metrics)
    : max_bytes_(max_bytes), page_tokens_(page_tokens), metrics_(metrics) {}

HeldPrefixes::Hit HeldPrefixes::Lookup(std::span<const int32_t> ids, const v1::Sparsity& sparsity) {
  std::lock_guard<std::mutex> lock(mu_);
  Hit out;
  auto resolved = resolved_.find(sparsity.SerializeAsString());
  if (store_ != nullptr && resolved != resolved_.end()) {
    PrefixStore::Hit hit = store_->Lookup(ids, resolved->second);
    // Reusable rows, down to whole pages and whole 64-token blocks.
    const int unit = std::lcm(kKvPrefixBlock, page_tokens_);
    out.tokens = hit.tokens / unit * unit;
    if (out.tokens > 0) {
      out.pages = std::static_pointer_cast<const PagedKvCache>(hit.cache);
      out.applied = resolved->second;
      out.gate_block = gate_block_;
      out.gates_fingerprint = gates_fingerprint_;
    }
  }
  if (out.tokens == 0) metrics_->kv_prefix_misses.Increment();
  return out;
}

void HeldPrefixes::Keep(std::span<const int32_t> ids, const v1::Sparsity& asked, const v1::Sparsity& applied,
                        int gate_block, uint64_t gates_fingerprint, const PagedKvCache& cache) {
  StatusOr<SparsityConfig> config = AppliedSparsityFromProto(applied, "applied_sparsity");
  const int whole = static_cast<int>(ids.size()) / page_tokens_ * page_tokens_;
  std::lock_guard<std::mutex> lock(mu_);
  // What the ask resolved to this time, reusable or not; nothing known from
  // a prefill that predates applied_sparsity.
  const std::string key = asked.SerializeAsString();
  if (!config.ok()) {
    resolved_.erase(key);
    return;
  }
  if (resolved_.size() >= kMaxResolved) resolved_.clear();
  resolved_[key] = *config;
  if (whole == 0 || gate_block <= 0 || !PrefixMayBeReused(*config)) return;
  if (store_ == nullptr || gate_block != gate_block_ || gates_fingerprint != gates_fingerprint_) {
    store_ = std::make_unique<PrefixStore>(max_bytes_, std::lcm(kKvPrefixBlock, gate_block));
    gate_block_ = gate_block;
    gates_fingerprint_ = gates_fingerprint;
    reported_evictions_ = 0;
  }
  pool_ = cache.pool();
  StatusOr<std::unique_ptr<PagedKvCache>> pages = PagedKvCache::ShareLeading(cache, whole);
  if (!pages.ok()) return;
  const int64_t bytes = static_cast<int64_t>(whole / page_tokens_) * cache.pool()->layout().PageBytes();
  store_->Insert(std::vector<int32_t>(ids.begin(), ids.end()), *config,
                 std::shared_ptr<const KvCache>(std::move(pages).value()), bytes);
  ReportLocked();
}

bool HeldPrefixes::Reclaim() {
  std::lock_guard<std::mutex> lock(mu_);
  if (store_ == nullptr) return false;
  PagePool* const pool = pool_;
  const bool evicted = store_->EvictOldestWhere([pool](const KvCache& c) {
    const auto& pages = static_cast<const PagedKvCache&>(c).pages();
    return pool->SolelyHeld(pages) > 0;
  });
  if (!evicted) return false;
  ReportLocked();
  return true;
}

int64_t HeldPrefixes::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return store_ != nullptr ? store_->bytes() : 0;
}

int HeldPrefixes::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return store_ != nullptr ? store_->entries() : 0;
}

void HeldPrefixes::ReportLocked() {
  metrics_->kv_prefix_bytes.Set(static_cast<double>(store_->bytes()));
  metrics_->kv_prefix_entries.Set(store_->entries());
  const int64_t evictions = store_->evictions();
  metrics_->kv_prefix_evictions.Increment(static_cast<double>(evictions - reported_evictions_));
  reported_evictions_ = evictions;
}

}  // namespace seer
