#include "kernels/common/random_masks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

namespace seer {
namespace {

// Kept blocks per row, and no bit above the diagonal, the diagonal set.
std::vector<int64_t> RowCounts(const BlockMask& m) {
  const int nb = m.num_blocks;
  std::vector<int64_t> counts;
  for (int h = 0; h < m.num_heads; ++h) {
    for (int qb = 0; qb < nb; ++qb) {
      EXPECT_TRUE(m.at(h, qb, qb)) << "diagonal h=" << h << " qb=" << qb;
      int64_t n = 0;
      for (int kb = 0; kb < nb; ++kb) {
        if (!m.at(h, qb, kb)) continue;
        EXPECT_LE(kb, qb) << "above the diagonal h=" << h << " qb=" << qb;
        ++n;
      }
      counts.push_back(n);
    }
  }
  return counts;
}

TEST(UniformRandomMask, SkipsExactlyTheAskedShareOfEachHead) {
  for (double s : {0.0, 0.5, 0.9, 0.999}) {
    SCOPED_TRACE("sparsity " + std::to_string(s));
    const BlockMask m = UniformRandomMask(3, 40 * 64 - 17, s, 7);
    ASSERT_EQ(m.num_blocks, 40);
    RowCounts(m);
    const int64_t causal = 40 * 41 / 2;
    const int64_t skip = std::min<int64_t>(causal - 40, std::llround(s * causal));
    for (int h = 0; h < 3; ++h) {
      int64_t kept = 0;
      for (int qb = 0; qb < 40; ++qb)
        for (int kb = 0; kb <= qb; ++kb) kept += m.at(h, qb, kb);
      EXPECT_EQ(kept, causal - skip) << "head " << h;
    }
  }
  // The same seed, the same mask; heads drawn apart.
  const BlockMask a = UniformRandomMask(2, 20 * 64, 0.5, 11), b = UniformRandomMask(2, 20 * 64, 0.5, 11);
  EXPECT_EQ(a.keep, b.keep);
  const size_t per_head = a.keep.size() / 2;
  EXPECT_FALSE(std::equal(a.keep.begin(), a.keep.begin() + per_head, a.keep.begin() + per_head));
}

TEST(EqualRowsRandomMask, EveryRowKeepsTheSameCountOrAll) {
  for (double s : {0.5, 0.9}) {
    SCOPED_TRACE("sparsity " + std::to_string(s));
    const int nb = 100;
    const BlockMask m = EqualRowsRandomMask(2, nb * 64, s, 3);
    const std::vector<int64_t> counts = RowCounts(m);
    // k is the longest row.
    const int64_t k = *std::max_element(counts.begin(), counts.end());
    for (int h = 0; h < 2; ++h)
      for (int qb = 0; qb < nb; ++qb) EXPECT_EQ(counts[h * nb + qb], std::min<int64_t>(qb + 1, k)) << h << " " << qb;
    // No other k comes nearer the asked total.
    const int64_t causal = int64_t{nb} * (nb + 1) / 2;
    const int64_t want = std::llround((1.0 - s) * causal);
    auto total = [&](int64_t kk) {
      int64_t t = 0;
      for (int64_t qb = 0; qb < nb; ++qb) t += std::min(qb + 1, kk);
      return t;
    };
    for (int64_t other = 1; other <= nb; ++other)
      EXPECT_LE(std::llabs(total(k) - want), std::llabs(total(other) - want));
  }
  // The blocks a long row keeps besides the diagonal vary between rows.
  const BlockMask m = EqualRowsRandomMask(1, 200 * 64, 0.9, 5);
  std::set<std::vector<uint8_t>> rows;
  for (int qb = 150; qb < 160; ++qb) {
    rows.insert(std::vector<uint8_t>(m.keep.begin() + static_cast<size_t>(qb) * 200,
                                     m.keep.begin() + static_cast<size_t>(qb) * 200 + 150));
  }
  EXPECT_EQ(rows.size(), 10u);
}

}  // namespace
}  // namespace seer
