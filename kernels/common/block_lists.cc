#include "kernels/common/block_lists.h"

namespace seer {

BlockMask BlockMask::Dense(int num_heads, int seq_len, int block_size) {
  BlockMask m;
  m.num_heads = num_heads > 0 ? num_heads : 0;
  m.block_size = block_size;
  m.seq_len = seq_len > 0 ? seq_len : 0;
  m.num_blocks = block_size > 0 ? (m.seq_len + block_size - 1) / block_size : 0;
  const size_t nb = static_cast<size_t>(m.num_blocks);
  m.keep.assign(static_cast<size_t>(m.num_heads) * nb * nb, 0);
  for (size_t h = 0; h < static_cast<size_t>(m.num_heads); ++h) {
    for (size_t qb = 0; qb < nb; ++qb) {
      uint8_t* row = m.keep.data() + (h * nb + qb) * nb;
      for (size_t kb = 0; kb <= qb; ++kb) row[kb] = 1;
    }
  }
  return m;
}

int64_t BlockMask::kept() const {
  int64_t n = 0;
  for (uint8_t v : keep) n += v != 0;
  return n;
}

BlockLists ToBlockLists(const BlockMask& mask) {
  BlockLists lists;
  lists.num_heads = mask.num_heads;
  lists.num_blocks = mask.num_blocks;
  const size_t nb = static_cast<size_t>(mask.num_blocks);
  const size_t rows = static_cast<size_t>(mask.num_heads) * nb;
  // A mask whose storage does not match its shape yields empty rows rather
  // than reads past the end.
  const bool sized = mask.keep.size() == rows * nb;
  lists.offsets.reserve(rows + 1);
  lists.offsets.push_back(0);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* row = sized ? mask.keep.data() + r * nb : nullptr;
    const size_t qb = r % nb;
    // Only the causal part: a stray bit above the diagonal must never reach a
    // kernel, which would read keys from the future.
    for (size_t kb = 0; sized && kb <= qb; ++kb) {
      if (row[kb]) lists.indices.push_back(static_cast<int32_t>(kb));
    }
    lists.offsets.push_back(static_cast<int32_t>(lists.indices.size()));
  }
  return lists;
}

BlockLists KeepLastQueryBlock(const BlockLists& lists) {
  BlockLists out;
  out.num_heads = lists.num_heads;
  out.num_blocks = lists.num_blocks;
  const size_t nb = static_cast<size_t>(lists.num_blocks);
  out.offsets.reserve(static_cast<size_t>(lists.num_heads) * nb + 1);
  for (size_t h = 0; h < static_cast<size_t>(lists.num_heads); ++h) {
    const size_t last = h * nb + nb - 1;
    for (size_t qb = 0; qb < nb; ++qb) out.offsets.push_back(static_cast<int32_t>(out.indices.size()));
    out.indices.insert(out.indices.end(), lists.indices.begin() + lists.offsets[last],
                       lists.indices.begin() + lists.offsets[last + 1]);
  }
  out.offsets.push_back(static_cast<int32_t>(out.indices.size()));
  return out;
}

}  // namespace seer
