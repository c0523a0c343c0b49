// Random 64-token block masks for benchmarks: the attention benchmark times
// the kernels on them and kernels/attention/attention_peers.py runs
// FlexAttention on the same masks. Both are deterministic for a seed.
#pragma once

#include <cstdint>

#include "kernels/common/block_lists.h"

namespace seer {

// Per head, exactly round(sparsity * causal blocks) off-diagonal causal
// blocks skipped, uniformly at random (at most all of them); the diagonal
// is always kept.
BlockMask UniformRandomMask(int heads, int seq_len, double sparsity, uint32_t seed);

// Shaped as nz_ratio selection shapes a mask: every query row keeps
// min(qb + 1, k) blocks, the diagonal and the rest uniformly at random from
// the blocks before it, with k the row length whose total comes nearest
// round((1 - sparsity) * causal blocks) per head.
BlockMask EqualRowsRandomMask(int heads, int seq_len, double sparsity, uint32_t seed);

}  // namespace seer
