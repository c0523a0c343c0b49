// CPU twins of the paged KV kernels (kernels/paged_kv/paged_kv.h), in float32
// with the same layouts: pages [num_pages, Hkv, page_tokens, D] per layer,
// block tables in position order.
#pragma once

#include <cstdint>

namespace seer::cpu {

struct PagedShape {
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;
  int page_tokens = 0;
  float scale = 0.0f;
};

// Element offset of (page, head, offset) in a layer's pages.
inline int64_t PageOffset(const PagedShape& s, int32_t page, int head, int offset) {
  return ((static_cast<int64_t>(page) * s.num_kv_heads + head) * s.page_tokens + offset) * s.head_dim;
}

// One sequence's decode query q [Hq, D] over keys 0 .. context - 1 of its
// pages (`table`); out [Hq, D]. A context of 0 gives zeros.
void PagedDecodeAttention(const PagedShape& s, const float* q, const float* k_pages, const float* v_pages,
                          const int32_t* table, int context, float* out);

// k, v [Hkv, D] of one token into position `pos` of the sequence's pages.
void WriteKvPaged(const PagedShape& s, const float* k, const float* v, const int32_t* table, int pos, float* k_pages,
                  float* v_pages);

// Tokens [t0, t0 + n) between the wire layout [Hkv, n, D] and the pages.
void ScatterToPages(const PagedShape& s, const float* src, int t0, int n, const int32_t* table, float* pages);
void GatherFromPages(const PagedShape& s, const float* pages, const int32_t* table, int t0, int n, float* dst);

}  // namespace seer::cpu
