// The decode worker's KV prefix store: the KV pages of recent prompts' whole
// 64-token blocks, kept after their requests are done, so that a later
// prompt that starts the same way (a chat's next turn, another question
// about one document) is sent only the rest of its K/V.
//
// Each Generate request looks up its prompt before its prefill call. On a
// hit it asks the prefill for positions [kv_from_token, count) only, with
// the sparsity the held K/V was computed under (kv_from_sparsity), and its
// cache takes the held pages (PagedGroupStart) instead of new ones. The
// prefill honours the ask only when this prompt's selection resolves to the
// same rule; otherwise it sends everything and the request fetches again
// into fresh pages (IsKvFromDeclined).
//
// Which positions a held prompt can stand for is the prefill store's rule
// (engine/kv/prefix_store.h, ReusableTokens), in the prefill's gate blocks,
// rounded down to whole KV pages. The selection a request resolves to is
// learnt from the prefill's summaries (PrefillSummary.applied_sparsity): a
// request whose sparsity (as asked, which may leave the mode or
// last_block_dense to the server) has not been seen resolved yet is not
// looked up, and the last resolution seen counts (prefills that resolve one
// ask differently each decline the other's; a decline costs no second
// prefill: PrefillClient::Fetch's `whole`).
//
// Held pages are shared with the requests that read them (the pool counts
// references); the store's budget counts every page it references. When a
// request waits for pages, the store gives up its oldest prompts first,
// skipping those whose every page a running request shares, which would
// free nothing (Reclaim). Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "engine/kv/page_pool.h"
#include "engine/kv/prefix_store.h"
#include "seer/v1/seer.pb.h"
#include "server/common/metrics.h"

namespace seer {

class HeldPrefixes {
 public:
  // `max_bytes` > 0: the most the held pages may hold; `page_tokens`: the
  // pool's page size.
  HeldPrefixes(int64_t max_bytes, int page_tokens, DecodeMetrics* metrics);

  struct Hit {
    std::shared_ptr<const PagedKvCache> pages;  // null when tokens is 0
    int tokens = 0;  // a multiple of 64 and of the page size, below the prompt's count
    SparsityConfig applied;  // the selection the held K/V was computed with
    int gate_block = 0;  // the block_size of the header that sent it
    uint64_t gates_fingerprint = 0;  // and its gates_fingerprint
  };
  // The longest held prefix of `ids` for a request that asked `sparsity`
  // (counts a miss when there is none).
  Hit Lookup(std::span<const int32_t> ids, const v1::Sparsity& sparsity);

  // A fetched prompt: what its prefill applied for a request that asked
  // `asked` (applied_sparsity of the summary), the prefill's gate block and
  // gates fingerprint (its header's), and `cache`, the request's first
  // cache, holding the prompt's K/V in positions [0, ids.size()). Keeps its
  // whole pages when the selection can be reused.
  void Keep(std::span<const int32_t> ids, const v1::Sparsity& asked, const v1::Sparsity& applied, int gate_block,
            uint64_t gates_fingerprint, const PagedKvCache& cache);

  // Drops the least recently used prompt whose pages are not all shared
  // with running requests, so that pages come free; false when none is.
  bool Reclaim();

  int64_t bytes() const;
  int entries() const;

 private:
  void ReportLocked();

  const int64_t max_bytes_;
  const int page_tokens_;
  DecodeMetrics* const metrics_;
  mutable std::mutex mu_;
  // Created by the first Keep, in units of lcm(64, the prefill's gate
  // block); made anew if a prefill reports other gates.
  std::unique_ptr<PrefixStore> store_;
  int gate_block_ = 0;
  uint64_t gates_fingerprint_ = 0;
  PagePool* pool_ = nullptr;  // the kept caches'
  // The selection each asked sparsity (serialised) resolved to, last seen.
  std::map<std::string, SparsityConfig> resolved_;
  int64_t reported_evictions_ = 0;
};

}  // namespace seer
