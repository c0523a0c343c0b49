// The quality evaluation's baseline mask providers, streaming=SINK,WINDOW and
// oracle=R, through RunGate (engine/model/gates.h) on inputs whose masks can
// be worked out by hand, plus the block counts PlannedRowBlocks promises
// (kernels/gate/selection.h) against the masks actually produced.

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/model/gates.h"

namespace seer {
namespace {

// A one-layer model and gate with random weights: the baselines ignore the
// gate's scores, so its weights must not matter to their masks.
struct GateCase {
  ModelConfig model;
  GateConfig gc;
  GateLayerWeights w;
};

GateCase MakeGateCase(int hq, int hkv, int d, uint32_t seed) {
  GateCase s;
  s.model.num_heads = hq;
  s.model.num_kv_heads = hkv;
  s.model.head_dim = d;
  s.model.num_layers = 1;
  s.model.hidden_size = hq * d;
  s.gc.hidden = d;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.3f);
  s.w.k_weight.resize(size_t(hq) * 3 * d * d);
  for (float& x : s.w.k_weight) x = dist(rng);
  return s;
}

// The mask of head `h` as rows of '1'/'0' over the causal blocks, "|" between rows.
std::string Rows(const GateOutput& g, int h) {
  const int nb = g.mask.num_blocks;
  std::string out;
  for (int qb = 0; qb < nb; ++qb) {
    if (qb) out += "|";
    for (int kb = 0; kb <= qb; ++kb) out += g.mask.keep[(size_t(h) * nb + qb) * nb + kb] ? '1' : '0';
  }
  return out;
}

StatusOr<GateOutput> RunBaseline(const GateCase& s, const std::vector<float>& q, const std::vector<float>& k, int L,
                                 const std::string& sparsity) {
  SEER_ASSIGN_OR_RETURN(SparsityConfig sp, ParseSparsity(sparsity));
  return RunGate(s.w, s.gc, s.model, q.data(), k.data(), L, sp, 2);
}

TEST(BaselineMasks, StreamingKeepsSinkAndWindow) {
  const GateCase s = MakeGateCase(2, 1, 8, 1);
  const int L = 6 * 64 - 5;  // nb = 6, a partial last block
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(size_t(L) * 2 * 8), k(size_t(L) * 8);
  for (float& x : q) x = dist(rng);
  for (float& x : k) x = dist(rng);

  struct Case {
    const char* sparsity;
    const char* rows;
  };
  const Case cases[] = {
      // Block 0 plus the diagonal and the block before it.
      {"streaming=1,2;last_block_dense=false", "1|11|111|1011|10011|100011"},
      // The default last_block_dense keeps the last two rows whole.
      {"streaming=1,2", "1|11|111|1011|11111|111111"},
      // No sink: the diagonal block alone.
      {"streaming=0,1;last_block_dense=false", "1|01|001|0001|00001|000001"},
      // Two sink blocks and three in the window.
      {"streaming=2,3;last_block_dense=false", "1|11|111|1111|11111|110111"},
      // A window longer than every row: dense.
      {"streaming=0,9;last_block_dense=false", "1|11|111|1111|11111|111111"},
  };
  for (const Case& c : cases) {
    auto g = RunBaseline(s, q, k, L, c.sparsity);
    ASSERT_TRUE(g.ok()) << c.sparsity << ": " << g.status().ToString();
    for (int h = 0; h < 2; ++h) EXPECT_EQ(Rows(*g, h), c.rows) << c.sparsity << " head " << h;
  }
}

// Keys whose scores are set per block: the model's RoPE is made negligible
// (only the slow frequency pair carries signal and theta is huge), every Q
// row is the same vector, and every key of block j holds c[j] on that
// channel. Each query then weighs block j by exp(scale * q * c[j]), so the
// target ranks a row's blocks by c[j] and the oracle keeps the largest.
TEST(BaselineMasks, OracleKeepsEachRowsLargestTargetBlocks) {
  GateCase s = MakeGateCase(2, 1, 4, 3);
  s.model.rope.theta = 1e12;  // inv_freq of the pair (1, 3) is 1e-6: no rotation to speak of
  const int nb = 6, L = nb * 64;
  const float c[nb] = {0.5f, 4.0f, 1.0f, 3.0f, 0.0f, 2.0f};
  std::vector<float> q(size_t(L) * 2 * 4, 0.0f), k(size_t(L) * 4, 0.0f);
  for (int t = 0; t < L; ++t) {
    for (int h = 0; h < 2; ++h) q[(size_t(t) * 2 + h) * 4 + 1] = 4.0f;
    k[size_t(t) * 4 + 1] = c[t / 64];
  }
  struct Case {
    const char* sparsity;
    const char* rows;
  };
  const Case cases[] = {
      // ceil(0.5 * n) blocks of each row by c: row 3 {1, 3}, row 4 {1, 3, 2}, row 5 {1, 3, 5}.
      {"oracle=0.5;last_block_dense=false", "1|01|011|0101|01110|010101"},
      // At least one block per row: c's largest causal block.
      {"oracle=0.01;last_block_dense=false", "1|01|010|0100|01000|010000"},
      {"oracle=1;last_block_dense=false", "1|11|111|1111|11111|111111"},
      {"oracle=0.5", "1|01|011|0101|11111|111111"},
  };
  for (const Case& cs : cases) {
    auto g = RunBaseline(s, q, k, L, cs.sparsity);
    ASSERT_TRUE(g.ok()) << cs.sparsity << ": " << g.status().ToString();
    for (int h = 0; h < 2; ++h) EXPECT_EQ(Rows(*g, h), cs.rows) << cs.sparsity << " head " << h;
  }
}

// The count each row keeps is known before the scores for every mode but
// threshold; the masks must keep exactly that many (the never-empty rule
// never fires for these modes, they keep at least one block per row).
TEST(BaselineMasks, MasksKeepThePlannedBlockCounts) {
  const GateCase s = MakeGateCase(4, 2, 16, 7);
  std::mt19937 rng(8);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int L : {1, 64, 500, 1100}) {
    std::vector<float> q(size_t(L) * 4 * 16), k(size_t(L) * 2 * 16);
    for (float& x : q) x = dist(rng);
    for (float& x : k) x = dist(rng);
    for (const char* text :
         {"dense", "nz_ratio=0.3", "nz_ratio=0.05;last_block_dense=false", "streaming=1,3",
          "streaming=0,2;last_block_dense=false", "streaming=4,1", "oracle=0.2", "oracle=0.7;last_block_dense=false"}) {
      auto sp = ParseSparsity(text);
      ASSERT_TRUE(sp.ok()) << text;
      auto g = RunGate(s.w, s.gc, s.model, q.data(), k.data(), L, *sp, 2);
      ASSERT_TRUE(g.ok()) << text << ": " << g.status().ToString();
      const int nb = g->mask.num_blocks;
      int64_t kept = 0;
      for (int h = 0; h < 4; ++h) {
        for (int qb = 0; qb < nb; ++qb) {
          int row = 0;
          for (int kb = 0; kb <= qb; ++kb) row += g->mask.keep[(size_t(h) * nb + qb) * nb + kb];
          EXPECT_EQ(row, PlannedRowBlocks(*sp, qb, nb)) << text << " L " << L << " head " << h << " row " << qb;
          kept += row;
        }
      }
      if (nb > 0) {
        EXPECT_NEAR(g->mask.density(), PlannedDensity(*sp, nb), 1e-12) << text << " L " << L;
        EXPECT_EQ(kept, g->mask.kept()) << text;
      }
    }
  }
}

TEST(BaselineMasks, PlannedDensityByHand) {
  SparsityConfig s;
  s.mode = SparsityMode::kStreaming;
  s.streaming_sink = 1;
  s.streaming_window = 1;
  s.last_block_dense = false;
  // nb = 4: rows keep 1, 2, 2, 2 of 1 + 2 + 3 + 4 = 10 blocks.
  EXPECT_DOUBLE_EQ(PlannedDensity(s, 4), 0.7);
  s.last_block_dense = true;  // rows 2 and 3 whole: 1 + 2 + 3 + 4
  EXPECT_DOUBLE_EQ(PlannedDensity(s, 4), 1.0);
  s.mode = SparsityMode::kOracle;
  s.oracle_ratio = 0.3;
  s.last_block_dense = false;
  // ceil(0.3 n) for n = 1..5: 1, 1, 1, 2, 2 of 15.
  EXPECT_DOUBLE_EQ(PlannedDensity(s, 5), 7.0 / 15.0);
  s.mode = SparsityMode::kThreshold;
  EXPECT_EQ(PlannedDensity(s, 5), -1.0);
}

}  // namespace
}  // namespace seer
