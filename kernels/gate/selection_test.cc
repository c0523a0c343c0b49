// ListPrefix (selection.h), the CUDA gate's CSR row offsets in 32-bit
// arithmetic, against PlannedRowBlocks summed row by row in 64 bits.

#include "kernels/gate/selection.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

namespace seer {
namespace {

// Every row offset of one (nb, mode, topk, last_block_dense), and the end.
void ExpectPrefixes(int64_t nb, const SparsityConfig& s) {
  const int64_t topk = s.mode == SparsityMode::kDense ? -1 : NzRatioTopK(s.nz_ratio, nb);
  const int64_t first_dense = FirstDenseRow(s.last_block_dense, nb);
  int64_t sum = 0;
  for (int64_t qb = 0; qb <= nb; ++qb) {
    ASSERT_EQ(static_cast<int64_t>(ListPrefix(static_cast<uint32_t>(qb), static_cast<int32_t>(topk),
                                              static_cast<uint32_t>(first_dense))),
              sum)
        << "nb " << nb << " qb " << qb << " topk " << topk << " first_dense_row " << first_dense;
    if (qb < nb) sum += PlannedRowBlocks(s, qb, nb);
  }
}

TEST(ListPrefix, MatchesThePlannedRowsSummed) {
  std::mt19937_64 rng(20261202);
  for (int it = 0; it < 300; ++it) {
    // Mostly short heads, some up to the CUDA gate's 48k blocks (3M tokens).
    const int64_t nb = 1 + static_cast<int64_t>(rng() % (it % 10 == 0 ? 48 * 1024 : 3000));
    SparsityConfig s;
    s.last_block_dense = rng() % 2 == 0;
    if (rng() % 4 == 0) {
      s.mode = SparsityMode::kDense;
    } else {
      s.mode = SparsityMode::kNzRatio;
      s.nz_ratio = 0.001 + 0.999 * std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    }
    SCOPED_TRACE("iteration " + std::to_string(it));
    ExpectPrefixes(nb, s);
  }
}

// The largest products: a dense head of 48k blocks (its list, 1.2G entries,
// fits in int32) and the longest row 65,535 allows.
TEST(ListPrefix, DenseAtTheLimits) {
  SparsityConfig s;
  s.mode = SparsityMode::kDense;
  ExpectPrefixes(48 * 1024, s);
  EXPECT_EQ(ListPrefix(65535, -1, 65535), 65535u * 65536u / 2);
  s.mode = SparsityMode::kNzRatio;
  s.nz_ratio = 1.0;  // topk = nb: every row whole
  ExpectPrefixes(48 * 1024, s);
}

}  // namespace
}  // namespace seer
