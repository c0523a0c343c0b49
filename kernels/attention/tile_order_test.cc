// The Hopper kernels' tile order (kernels/attention/tile_order.h) against a
// plain enumeration: the passes split the KV heads into runs that differ by
// at most one head, every tile comes exactly once, heaviest first within a
// pass, and one head a pass is the order the kernels used before passes.
// Whether the kernels give the same bits in every order is
// AttentionGpuTest.TileOrderChangesNoBit's to check, on the GPU.

#include "kernels/attention/tile_order.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace seer::cuda {
namespace {

TEST(TileOrder, PassesSplitTheHeadsEvenly) {
  for (int kv_heads = 1; kv_heads <= 40; ++kv_heads) {
    for (int passes = 1; passes <= kv_heads; ++passes) {
      SCOPED_TRACE("kv_heads=" + std::to_string(kv_heads) + " passes=" + std::to_string(passes));
      int next = 0, smallest = kv_heads, largest = 0;
      for (int c = 0; c < passes; ++c) {
        const HeadPassRange pass = HeadPass(kv_heads, passes, c);
        ASSERT_EQ(pass.first, next) << "pass " << c;
        ASSERT_GE(pass.count, 1) << "pass " << c;
        if (c > 0) {
          EXPECT_LE(pass.count, HeadPass(kv_heads, passes, c - 1).count) << "longer passes first";
        }
        smallest = std::min(smallest, pass.count);
        largest = std::max(largest, pass.count);
        for (int kvh = pass.first; kvh < pass.first + pass.count; ++kvh) {
          ASSERT_EQ(PassOfHead(kv_heads, passes, kvh), c) << "kv head " << kvh;
        }
        next = pass.first + pass.count;
      }
      EXPECT_EQ(next, kv_heads);
      EXPECT_LE(largest - smallest, 1);
    }
  }
}

TEST(TileOrder, DenseOrderTakesEveryTileOnceHeaviestFirstInAPass) {
  struct Shape {
    int num_heads, num_kv_heads, pairs, live_pairs;
  };
  for (const Shape& s : std::vector<Shape>{
           {32, 32, 64, 64}, {32, 8, 64, 64}, {12, 3, 9, 9}, {5, 5, 4, 2}, {16, 1, 7, 7}, {28, 7, 3, 1}}) {
    const int group = s.num_heads / s.num_kv_heads;
    for (int passes = 1; passes <= s.num_kv_heads; ++passes) {
      SCOPED_TRACE("heads=" + std::to_string(s.num_heads) + "/" + std::to_string(s.num_kv_heads) + " pairs=" +
                   std::to_string(s.live_pairs) + "/" + std::to_string(s.pairs) + " passes=" + std::to_string(passes));
      std::set<std::pair<int, int>> seen;
      int last_pass = 0, last_pair = s.pairs;
      const int tiles = s.num_heads * s.live_pairs;
      for (int t = 0; t < tiles; ++t) {
        int h = -1, pair = -1;
        DenseOrderTile(s.num_heads, s.num_kv_heads, passes, s.pairs, s.live_pairs, t, &h, &pair);
        ASSERT_TRUE(h >= 0 && h < s.num_heads) << "t=" << t << " h=" << h;
        ASSERT_TRUE(pair >= s.pairs - s.live_pairs && pair < s.pairs) << "t=" << t << " pair=" << pair;
        ASSERT_TRUE(seen.insert({h, pair}).second) << "tile (" << h << ", " << pair << ") twice";
        const int pass = PassOfHead(s.num_kv_heads, passes, h / group);
        ASSERT_GE(pass, last_pass) << "passes in order, t=" << t;
        if (pass != last_pass) last_pair = s.pairs;
        ASSERT_LE(pair, last_pair) << "heaviest first within a pass, t=" << t;
        last_pass = pass;
        last_pair = pair;
        if (passes == s.num_kv_heads) {  // one head a pass: the order before passes
          const int per_kv_head = group * s.live_pairs;
          EXPECT_EQ(pair, s.pairs - 1 - (t % per_kv_head) / group) << "t=" << t;
          EXPECT_EQ(h, t / per_kv_head * group + t % group) << "t=" << t;
        }
      }
      EXPECT_EQ(static_cast<int>(seen.size()), tiles);
    }
  }
}

TEST(TileOrder, KvPassesFitHalfTheL2OrTakeTheRequest) {
  const int64_t l2 = 60LL << 20;  // an H200's
  // K and V of a head at 8k tokens and d = 128 are 4 MiB: 7 fit in 30 MiB,
  // so 32 heads take 5 passes; at 32k (16 MiB a head) one head a pass.
  EXPECT_EQ(KvPasses(8192, 128, 32, 0, l2), 5);
  EXPECT_EQ(KvPasses(8192, 64, 32, 0, l2), 3);
  EXPECT_EQ(KvPasses(8192, 128, 8, 0, l2), 2);
  EXPECT_EQ(KvPasses(32768, 128, 32, 0, l2), 32);
  EXPECT_EQ(KvPasses(131072, 128, 8, 0, l2), 8);
  EXPECT_EQ(KvPasses(100, 32, 4, 0, l2), 1);
  EXPECT_EQ(KvPasses(8192, 128, 32, 0, 0), 32) << "no L2: one head a pass";
  EXPECT_EQ(KvPasses(8192, 128, 32, 1, l2), 32);
  EXPECT_EQ(KvPasses(8192, 128, 32, 3, l2), 11);
  EXPECT_EQ(KvPasses(8192, 128, 32, 100, l2), 1);
  EXPECT_EQ(KvPasses(0, 128, 3, 0, l2), 1) << "empty: one pass";
}

}  // namespace
}  // namespace seer::cuda
