#include "kernels/common/block_lists.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

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

int64_t KeptFrom(const BlockMask& mask, int first_block) {
  const size_t nb = static_cast<size_t>(mask.num_blocks);
  int64_t n = 0;
  for (size_t h = 0; h < static_cast<size_t>(mask.num_heads); ++h) {
    const uint8_t* rows = mask.keep.data() + (h * nb + static_cast<size_t>(first_block)) * nb;
    n += std::count_if(rows, mask.keep.data() + (h + 1) * nb * nb, [](uint8_t v) { return v != 0; });
  }
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

namespace {
constexpr char kMaskMagic[8] = {'S', 'E', 'E', 'R', 'M', 'S', 'K', '1'};
}  // namespace

bool WriteBlockMask(const BlockMask& m, const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const int32_t header[4] = {m.seq_len, m.num_heads, m.num_blocks, m.block_size};
  std::vector<uint8_t> packed((m.keep.size() + 7) / 8, 0);
  for (size_t i = 0; i < m.keep.size(); ++i) packed[i / 8] |= static_cast<uint8_t>((m.keep[i] != 0) << (i % 8));
  bool ok = std::fwrite(kMaskMagic, 1, 8, f) == 8 && std::fwrite(header, sizeof(header), 1, f) == 1 &&
            std::fwrite(packed.data(), 1, packed.size(), f) == packed.size();
  ok = (std::fclose(f) == 0) && ok;
  return ok;
}

bool ReadBlockMask(const std::string& path, BlockMask* m, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *error = path + ": cannot open";
    return false;
  }
  char magic[8];
  int32_t header[4];
  bool ok = std::fread(magic, 1, 8, f) == 8 && std::memcmp(magic, kMaskMagic, 8) == 0 &&
            std::fread(header, sizeof(header), 1, f) == 1;
  const int32_t seq_len = header[0], heads = header[1], nb = header[2], block = header[3];
  // The same limits as the kernels: int32 rows, blocks that tile seq_len.
  ok = ok && seq_len > 0 && heads > 0 && block > 0 && nb == (static_cast<int64_t>(seq_len) + block - 1) / block &&
       static_cast<int64_t>(heads) * nb <= (int64_t{1} << 31) - 1;
  if (!ok) {
    std::fclose(f);
    *error = path + ": not a SEERMSK1 mask (bad magic or header)";
    return false;
  }
  const size_t n = static_cast<size_t>(heads) * nb * nb;
  std::vector<uint8_t> packed((n + 7) / 8);
  ok = std::fread(packed.data(), 1, packed.size(), f) == packed.size() && std::fgetc(f) == EOF;
  std::fclose(f);
  if (!ok) {
    *error = path + ": " + std::to_string(packed.size()) + " bytes of mask expected after the header";
    return false;
  }
  m->seq_len = seq_len;
  m->num_heads = heads;
  m->num_blocks = nb;
  m->block_size = block;
  m->keep.resize(n);
  for (size_t i = 0; i < n; ++i) m->keep[i] = (packed[i / 8] >> (i % 8)) & 1;
  return true;
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
