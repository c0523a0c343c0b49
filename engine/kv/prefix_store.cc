#include "engine/kv/prefix_store.h"

#include <algorithm>

#include "engine/model/sparsity.h"

namespace seer {

bool PrefixMayBeReused(const SparsityConfig& sparsity) {
  return sparsity.mode == SparsityMode::kDense || sparsity.mode == SparsityMode::kThreshold;
}

int ReusableTokens(int common, int stored_len, int new_len, const SparsityConfig& sparsity, int block) {
  if (block <= 0 || common <= 0 || stored_len <= 0 || new_len <= 1) return 0;
  if (!PrefixMayBeReused(sparsity)) return 0;  // nz_ratio, the baselines
  const bool gated = sparsity.mode != SparsityMode::kDense;
  // Whole blocks shared, whole blocks of the stored prompt, and the new
  // prompt's blocks before its last token's.
  int blocks = std::min({common / block, stored_len / block, (new_len - 1) / block});
  if (gated && sparsity.last_block_dense) {
    // A row is reusable where both prompts computed it the same way: sparse
    // in both, or dense in both (the same first dense row).
    const int stored_dense = static_cast<int>(FirstDenseRow(true, (stored_len + block - 1) / block));
    const int new_dense = static_cast<int>(FirstDenseRow(true, (new_len + block - 1) / block));
    if (stored_dense != new_dense) blocks = std::min({blocks, stored_dense, new_dense});
  }
  return std::max(0, blocks) * block;
}

std::string PrefixStoreKey(const SparsityConfig& sparsity) {
  std::string key = SparsityToString(sparsity);
  if (sparsity.mode != SparsityMode::kDense) key += sparsity.last_block_dense ? ";last_block_dense" : "";
  return key;
}

PrefixStore::PrefixStore(int64_t max_bytes, int block) : max_bytes_(max_bytes), block_(block) {}

PrefixStore::Hit PrefixStore::Lookup(std::span<const int32_t> ids, const SparsityConfig& sparsity) {
  const std::string key = PrefixStoreKey(sparsity);
  std::lock_guard<std::mutex> lock(mu_);
  auto best = entries_.end();
  int best_tokens = 0;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->key != key) continue;
    const size_t n = std::min(ids.size(), it->ids.size());
    const size_t common = static_cast<size_t>(
        std::mismatch(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(n), it->ids.begin()).first - ids.begin());
    const int tokens = ReusableTokens(static_cast<int>(common), static_cast<int>(it->ids.size()),
                                      static_cast<int>(ids.size()), sparsity, block_);
    if (tokens > best_tokens) {
      best_tokens = tokens;
      best = it;
    }
  }
  if (best == entries_.end()) return Hit{};
  entries_.splice(entries_.begin(), entries_, best);  // most recently used
  return Hit{best->cache, best_tokens};
}

bool PrefixStore::Insert(std::vector<int32_t> ids, const SparsityConfig& sparsity, std::shared_ptr<const KvCache> cache,
                         int64_t bytes) {
  if (cache == nullptr || ids.empty() || bytes > max_bytes_) return false;
  const std::string key = PrefixStoreKey(sparsity);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->key != key) {
      ++it;
      continue;
    }
    const bool it_extends_new = it->ids.size() >= ids.size() && std::equal(ids.begin(), ids.end(), it->ids.begin());
    if (it_extends_new) {  // everything the new one could give, this one gives
      entries_.splice(entries_.begin(), entries_, it);
      return false;
    }
    const bool new_extends_it = it->ids.size() <= ids.size() && std::equal(it->ids.begin(), it->ids.end(), ids.begin());
    if (new_extends_it) {
      auto next = std::next(it);
      DropLocked(it);
      it = next;
    } else {
      ++it;
    }
  }
  while (bytes_ + bytes > max_bytes_ && !entries_.empty()) {
    DropLocked(std::prev(entries_.end()));
    ++evictions_;
  }
  entries_.push_front(Entry{std::move(ids), key, std::move(cache), bytes});
  bytes_ += bytes;
  return true;
}

bool PrefixStore::EvictOldest() {
  std::lock_guard<std::mutex> lock(mu_);
  if (entries_.empty()) return false;
  DropLocked(std::prev(entries_.end()));
  ++evictions_;
  return true;
}

bool PrefixStore::EvictOldestWhere(const std::function<bool(const KvCache&)>& frees) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    if (!frees(*it->cache)) continue;
    DropLocked(std::next(it).base());
    ++evictions_;
    return true;
  }
  return false;
}

void PrefixStore::DropLocked(std::list<Entry>::iterator it) {
  bytes_ -= it->bytes;
  entries_.erase(it);
}

int64_t PrefixStore::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

int PrefixStore::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(entries_.size());
}

int64_t PrefixStore::evictions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evictions_;
}

}  // namespace seer
