// The prefix store: the KV caches of recent prompts, kept after their
// requests are done so that a later prompt that starts the same way
// computes only the rest (Engine::CopyPrefix, then Engine::Prefill from the
// copied prefix). Multi-turn chats over a long document, agents that resend
// their growing context, and many questions about one text all start with a
// prefix that was just computed.
//
// Exactness. A hit must give the K/V that a whole prefill of the new prompt
// would have written (bit for bit on the CPU engine, whose rows are
// computed independently; on CUDA to GEMM rounding, since the rest's GEMMs
// run over fewer rows, which can move a threshold selection at its margin
// as any change of row count does). So a stored cache serves only prompts
// run with the same sparsity (mode, value and last_block_dense), and only
// up to positions whose rows its own prefill computed as the new one would
// (ReusableTokens):
//   - dense: every whole 64-token block the two prompts share;
//   - threshold: a row's blocks depend on its own pooled Q and the pooled K
//     up to it alone, so the same, except for rows whose blocks depended on
//     the stored prompt's length: its partial last block, and with
//     last_block_dense the rows one prompt computed dense (its last two)
//     and the other sparse, which is every such row unless both prompts
//     have the same number of blocks;
//   - nz_ratio: never. Every row keeps k(nb) blocks, nb the prompt's block
//     count, so no row of a shorter prompt was computed as in a longer one.
// And at least one token is always computed (its logits are the reply's).
//
// Entries are whole prompts, found by the longest shared prefix (a scan of
// the entries: a few dozen long prompts at most fit in memory). A new entry
// replaces the ones whose prompts it extends, which any lookup would find
// as long in it (but for the two rows last_block_dense keeps dense, which
// only a prompt of the dropped one's block count could take); the least
// recently used go first when the store passes its byte budget, or when
// the GPU needs their memory (EvictOldest). Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "kernels/gate/selection.h"

namespace seer {

// Whether a prompt run with `sparsity` can ever take a stored prefix, and so
// is worth storing: dense and threshold selection (ReusableTokens).
bool PrefixMayBeReused(const SparsityConfig& sparsity);

// How many of a stored prompt's first positions a new prompt may take (a
// multiple of `block`, 0 when none): `common` tokens shared, the stored
// prompt `stored_len` long, the new one `new_len`, both run with `sparsity`
// (as resolved: dense on an engine without gates).
int ReusableTokens(int common, int stored_len, int new_len, const SparsityConfig& sparsity, int block);

// Prompts share stored prefixes only with the same selection: its mode and
// value, and, for a gate's selection, last_block_dense (a stored prompt's
// last two rows were dense with it, sparse without). Equal keys, equal
// selection rule.
std::string PrefixStoreKey(const SparsityConfig& sparsity);

class PrefixStore {
 public:
  // `max_bytes` > 0: the most the stored caches may hold; `block` the
  // prefix unit (64, or the gates' block size where it is a multiple).
  PrefixStore(int64_t max_bytes, int block);

  struct Hit {
    std::shared_ptr<const KvCache> cache;  // null when tokens is 0
    int tokens = 0;  // positions to copy: a multiple of the block, below ids.size()
  };
  // The longest reusable prefix of `ids` among the prompts stored with the
  // same sparsity (the store holds the entry while `cache` is held).
  Hit Lookup(std::span<const int32_t> ids, const SparsityConfig& sparsity);

  // Keeps `cache`, the finished prefill of `ids` with `sparsity`, holding
  // `bytes` of memory. Drops the stored prompts it extends; a cache larger
  // than the budget is not kept; the oldest entries go until it fits.
  // Returns whether it was kept.
  bool Insert(std::vector<int32_t> ids, const SparsityConfig& sparsity, std::shared_ptr<const KvCache> cache,
              int64_t bytes);

  // Drops the least recently used entry; false when the store is empty.
  bool EvictOldest();
  // Drops the least recently used entry whose cache `frees` says dropping
  // would free memory (not all of it shared with running requests); false
  // when none does.
  bool EvictOldestWhere(const std::function<bool(const KvCache&)>& frees);

  int64_t bytes() const;
  int entries() const;
  int64_t max_bytes() const { return max_bytes_; }
  int64_t evictions() const;

 private:
  struct Entry {
    std::vector<int32_t> ids;
    std::string key;  // the sparsity it was computed with
    std::shared_ptr<const KvCache> cache;
    int64_t bytes = 0;
  };
  void DropLocked(std::list<Entry>::iterator it);

  const int64_t max_bytes_;
  const int block_;
  mutable std::mutex mu_;
  std::list<Entry> entries_;  // most recently used first
  int64_t bytes_ = 0;
  int64_t evictions_ = 0;
};

}  // namespace seer
