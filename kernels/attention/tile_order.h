// The order in which the Hopper attention kernels' persistent CTAs take their
// tiles (a tile: a pair of 64-row query blocks of one head), host and device.
// The FA2-class kernel (attention.cu) launches its CTAs, one a query block,
// in the same dense order, with query blocks for pairs.
//
// The KV heads are taken in passes of consecutive heads, pass after pass.
// Within a pass the tiles go heaviest first across all of its heads: dense,
// the pairs from the last (most keys) down, the pass's Q heads side by side
// (a GQA group's together); with block lists, by kept blocks, sorted on the
// device (TileOrderKernel). A pass holds as many KV heads as half the L2
// holds K and V of, so the CTAs in flight read K/V that stays in L2. One
// head a pass, the order before 2026-12-04, left the last head's heaviest
// tiles to start when the other SMs were nearly done: at 8k tokens a tail
// of 3-9% of the launch (docs/KERNELS.md, "The tile order in passes").
// The order changes which SM computes a tile and when, never how: no output
// bit depends on it.

#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SEER_TILE_ORDER_HD __host__ __device__ __forceinline__
#else
#define SEER_TILE_ORDER_HD inline
#endif

namespace seer::cuda {

// Pass c of `passes` over `kv_heads` KV heads: the heads first .. first +
// count - 1. The first kv_heads % passes passes hold one head more than the
// rest. 0 <= c < passes <= kv_heads.
struct HeadPassRange {
  int first;
  int count;
};

SEER_TILE_ORDER_HD HeadPassRange HeadPass(int kv_heads, int passes, int c) {
  const int q = kv_heads / passes, r = kv_heads % passes;
  return {c * q + (c < r ? c : r), q + (c < r ? 1 : 0)};
}

// The pass that holds KV head kvh.
SEER_TILE_ORDER_HD int PassOfHead(int kv_heads, int passes, int kvh) {
  const int q = kv_heads / passes, r = kv_heads % passes;
  const int long_heads = r * (q + 1);
  return kvh < long_heads ? kvh / (q + 1) : r + (kvh - long_heads) / q;
}

// The t-th tile of the dense order over each head's last `live_pairs` of
// `pairs` pairs (AttentionParams::first_row skips the ones before): pass by
// pass; within one, pairs from the last down, and within a pair the pass's
// Q heads in order. 0 <= t < num_heads * live_pairs.
SEER_TILE_ORDER_HD void DenseOrderTile(int num_heads, int num_kv_heads, int passes, int pairs, int live_pairs, int t,
                                       int* h, int* pair) {
  const int group = num_heads / num_kv_heads;
  const int per_kv_head = group * live_pairs;
  const HeadPassRange pass = HeadPass(num_kv_heads, passes, PassOfHead(num_kv_heads, passes, t / per_kv_head));
  const int r = t - pass.first * per_kv_head;
  const int width = pass.count * group;
  *pair = pairs - 1 - r / width;
  *h = pass.first * group + r % width;
}

// How many passes a launch makes: `per_pass` KV heads a pass when it is
// positive (AttentionParams::kv_heads_per_pass), else as many as half of
// `l2_bytes` holds K and V of (2-byte elements, seq_len rows), at least one.
inline int KvPasses(int seq_len, int head_dim, int num_kv_heads, int per_pass, int64_t l2_bytes) {
  int64_t heads = per_pass;
  if (heads <= 0) {
    const int64_t head_bytes = 2 * static_cast<int64_t>(seq_len) * head_dim * 2;
    heads = head_bytes > 0 ? l2_bytes / 2 / head_bytes : num_kv_heads;
  }
  if (heads < 1) heads = 1;
  if (heads > num_kv_heads) heads = num_kv_heads;
  return static_cast<int>((num_kv_heads + heads - 1) / heads);
}

}  // namespace seer::cuda
