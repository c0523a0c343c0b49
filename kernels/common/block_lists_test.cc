#include "kernels/common/block_lists.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

namespace seer {
namespace {

TEST(BlockMask, DenseShapeAndCausalTriangle) {
  // 333 tokens in blocks of 64: 6 blocks, the last holding 13 tokens.
  BlockMask m = BlockMask::Dense(3, 333, 64);
  EXPECT_EQ(m.num_heads, 3);
  EXPECT_EQ(m.num_blocks, 6);
  EXPECT_EQ(m.seq_len, 333);
  EXPECT_EQ(m.block_size, 64);
  ASSERT_EQ(m.keep.size(), 3u * 6 * 6);
  for (int h = 0; h < 3; ++h)
    for (int qb = 0; qb < 6; ++qb)
      for (int kb = 0; kb < 6; ++kb) EXPECT_EQ(m.at(h, qb, kb), kb <= qb) << h << " " << qb << " " << kb;
  EXPECT_EQ(m.causal_blocks(), 3 * 21);
  EXPECT_EQ(m.kept(), 3 * 21);
  EXPECT_DOUBLE_EQ(m.density(), 1.0);
}

TEST(BlockMask, BlockCountAtBoundaries) {
  EXPECT_EQ(BlockMask::Dense(1, 1, 64).num_blocks, 1);
  EXPECT_EQ(BlockMask::Dense(1, 64, 64).num_blocks, 1);
  EXPECT_EQ(BlockMask::Dense(1, 65, 64).num_blocks, 2);
  EXPECT_EQ(BlockMask::Dense(1, 128, 64).num_blocks, 2);
  BlockMask empty = BlockMask::Dense(2, 0, 64);
  EXPECT_EQ(empty.num_blocks, 0);
  EXPECT_EQ(empty.kept(), 0);
  EXPECT_DOUBLE_EQ(empty.density(), 1.0);
}

TEST(BlockMask, DensityCountsKeptOverCausal) {
  BlockMask m = BlockMask::Dense(2, 4 * 64, 64);  // 10 causal blocks per head
  // Drop three off-diagonal blocks in head 0 and one in head 1.
  m.keep[(0 * 4 + 1) * 4 + 0] = 0;
  m.keep[(0 * 4 + 3) * 4 + 1] = 0;
  m.keep[(0 * 4 + 3) * 4 + 2] = 0;
  m.keep[(1 * 4 + 2) * 4 + 0] = 0;
  EXPECT_EQ(m.causal_blocks(), 20);
  EXPECT_EQ(m.kept(), 16);
  EXPECT_DOUBLE_EQ(m.density(), 16.0 / 20.0);
}

TEST(ToBlockLists, MatchesMaskRowByRow) {
  std::mt19937 rng(7);
  const int heads = 3, nb = 9;
  BlockMask m = BlockMask::Dense(heads, nb * 64 - 5, 64);
  for (int h = 0; h < heads; ++h)
    for (int qb = 0; qb < nb; ++qb)
      for (int kb = 0; kb <= qb; ++kb) m.keep[(h * nb + qb) * nb + kb] = rng() % 3 == 0;
  // Every row of head 2, query block 4 is empty on purpose.
  for (int kb = 0; kb < nb; ++kb) m.keep[(2 * nb + 4) * nb + kb] = 0;

  BlockLists l = ToBlockLists(m);
  EXPECT_EQ(l.num_heads, heads);
  EXPECT_EQ(l.num_blocks, nb);
  ASSERT_EQ(l.offsets.size(), static_cast<size_t>(heads * nb + 1));
  EXPECT_EQ(l.offsets.front(), 0);
  EXPECT_EQ(static_cast<size_t>(l.offsets.back()), l.indices.size());
  EXPECT_EQ(static_cast<int64_t>(l.indices.size()), m.kept());
  for (int h = 0; h < heads; ++h) {
    for (int qb = 0; qb < nb; ++qb) {
      std::vector<int32_t> expected;
      for (int kb = 0; kb < nb; ++kb)
        if (m.at(h, qb, kb)) expected.push_back(kb);
      const int r = h * nb + qb;
      std::vector<int32_t> got(l.indices.begin() + l.offsets[r], l.indices.begin() + l.offsets[r + 1]);
      EXPECT_EQ(got, expected) << "head " << h << " qb " << qb;
    }
  }
  EXPECT_EQ(l.offsets[2 * nb + 4], l.offsets[2 * nb + 5]);
}

TEST(ToBlockLists, IgnoresBitsAboveTheDiagonal) {
  BlockMask m = BlockMask::Dense(1, 3 * 64, 64);
  m.keep[(0 * 3 + 0) * 3 + 2] = 1;  // above the diagonal: a kernel must never see it
  BlockLists l = ToBlockLists(m);
  EXPECT_EQ(l.indices, (std::vector<int32_t>{0, 0, 1, 0, 1, 2}));
  EXPECT_EQ(l.offsets, (std::vector<int32_t>{0, 1, 3, 6}));
}

TEST(ToBlockLists, MisSizedMaskGivesEmptyRows) {
  BlockMask m = BlockMask::Dense(2, 3 * 64, 64);
  m.keep.resize(5);
  BlockLists l = ToBlockLists(m);
  ASSERT_EQ(l.offsets.size(), 7u);
  EXPECT_TRUE(l.indices.empty());
}

TEST(BlockMaskFile, RoundTripsAndRejectsDamage) {
  std::mt19937 rng(11);
  BlockMask m = BlockMask::Dense(3, 5 * 64 - 9, 64);
  for (uint8_t& v : m.keep) v = v != 0 && rng() % 2 == 0;
  const std::string path = (std::filesystem::temp_directory_path() / "seer_block_mask_test.bin").string();
  ASSERT_TRUE(WriteBlockMask(m, path));
  BlockMask back;
  std::string error;
  ASSERT_TRUE(ReadBlockMask(path, &back, &error)) << error;
  EXPECT_EQ(back.seq_len, m.seq_len);
  EXPECT_EQ(back.num_heads, 3);
  EXPECT_EQ(back.num_blocks, 5);
  EXPECT_EQ(back.block_size, 64);
  EXPECT_EQ(back.keep, m.keep);
  // One byte short, one byte long, a wrong magic: each refused, naming the file.
  const uintmax_t size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 1);
  EXPECT_FALSE(ReadBlockMask(path, &back, &error));
  EXPECT_NE(error.find(path), std::string::npos) << error;
  std::filesystem::resize_file(path, size + 1);
  EXPECT_FALSE(ReadBlockMask(path, &back, &error));
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  std::fputc('X', f);
  std::fclose(f);
  std::filesystem::resize_file(path, size);
  EXPECT_FALSE(ReadBlockMask(path, &back, &error));
  EXPECT_NE(error.find("SEERMSK1"), std::string::npos) << error;
  std::filesystem::remove(path);
  EXPECT_FALSE(ReadBlockMask(path, &back, &error));
}

TEST(KeepLastQueryBlock, KeepsEachHeadsLastRowCompacted) {
  BlockMask m = BlockMask::Dense(3, 4 * 64, 64);
  // Head 1's last row is empty; head 2's keeps blocks 0 and 3.
  for (int kb = 0; kb < 4; ++kb) m.keep[(1 * 4 + 3) * 4 + kb] = 0;
  m.keep[(2 * 4 + 3) * 4 + 1] = 0;
  m.keep[(2 * 4 + 3) * 4 + 2] = 0;
  BlockLists l = KeepLastQueryBlock(ToBlockLists(m));
  EXPECT_EQ(l.num_heads, 3);
  EXPECT_EQ(l.num_blocks, 4);
  EXPECT_EQ(l.indices, (std::vector<int32_t>{0, 1, 2, 3, 0, 3}));
  EXPECT_EQ(l.offsets, (std::vector<int32_t>{0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 6}));
}

TEST(KeepLastQueryBlock, OneBlockKeepsEverything) {
  BlockLists dense = ToBlockLists(BlockMask::Dense(2, 10, 64));
  BlockLists l = KeepLastQueryBlock(dense);
  EXPECT_EQ(l.offsets, dense.offsets);
  EXPECT_EQ(l.indices, dense.indices);
}

}  // namespace
}  // namespace seer
