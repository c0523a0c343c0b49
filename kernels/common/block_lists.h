// A per-Q-head block mask over the causal block triangle, plus the per-row
// block lists that kernels consume. Nothing of size L x L is ever formed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace seer {

struct BlockMask {
  int num_heads = 0;
  int num_blocks = 0;  // nb = ceil(seq_len / block_size)
  int block_size = 64;
  int seq_len = 0;
  // keep[(h * nb + qb) * nb + kb] is 1 when block (qb, kb) is computed for
  // head h. Always 0 above the diagonal (kb > qb).
  std::vector<uint8_t> keep;

  static BlockMask Dense(int num_heads, int seq_len, int block_size);

  bool at(int h, int qb, int kb) const {
    return keep[(static_cast<size_t>(h) * num_blocks + qb) * num_blocks + kb] != 0;
  }
  int64_t kept() const;
  int64_t causal_blocks() const { return static_cast<int64_t>(num_heads) * num_blocks * (num_blocks + 1) / 2; }
  double density() const { return causal_blocks() ? double(kept()) / double(causal_blocks()) : 1.0; }
};

// The kept blocks of query-block rows first_block .. nb-1, over every head
// (a prefill continuing from a cached prefix computes those rows only).
int64_t KeptFrom(const BlockMask& mask, int first_block);
// The causal blocks of those rows: num_heads * sum of (qb + 1) for qb from
// first_block to nb - 1.
inline int64_t CausalBlocksFrom(int num_heads, int nb, int first_block) {
  const int64_t n = nb, f = first_block;
  return static_cast<int64_t>(num_heads) * (n * (n + 1) / 2 - f * (f + 1) / 2);
}

// CSR block lists: for head h and query block qb, the kept key blocks are
// indices[offsets[h * nb + qb] .. offsets[h * nb + qb + 1]), ascending.
struct BlockLists {
  int num_heads = 0;
  int num_blocks = 0;
  std::vector<int32_t> offsets;  // num_heads * nb + 1
  std::vector<int32_t> indices;
};

BlockLists ToBlockLists(const BlockMask& mask);

// A mask on disk (the attention benchmark's and attention_peers.py's format):
// 8 bytes "SEERMSK1", int32 seq_len, num_heads, num_blocks, block_size
// (little endian), then keep[h][qb][kb] packed 8 per byte, LSB first.
// WriteBlockMask returns false when the file cannot be written; ReadBlockMask
// fills `error` and returns false for a missing, short or malformed file.
bool WriteBlockMask(const BlockMask& mask, const std::string& path);
bool ReadBlockMask(const std::string& path, BlockMask* mask, std::string* error);

// The lists a prefill's last layer needs: only the last query block feeds the
// first token's logits, so each head keeps its last row's list and every
// other row is empty. The kept rows are compacted in head order. The CPU twin
// of seer::cuda::KeepLastQueryBlock (kernels/gate/gate.h).
BlockLists KeepLastQueryBlock(const BlockLists& lists);

}  // namespace seer
