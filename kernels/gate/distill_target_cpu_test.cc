// cpu::DistillTarget against a float64 recomputation written here from
// DESIGN §1 (form every causal softmax probability, take each block's
// maximum, normalise each row), over several shapes: GQA, odd lengths with a
// partial last block, one-token prompts, and another block size.

#include "kernels/gate/distill_target_cpu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <random>
#include <vector>

namespace seer::cpu {
namespace {

// The whole L x L probability matrix per head, in double, then the block max.
std::vector<double> ReferenceTarget(const std::vector<float>& q, const std::vector<float>& k, int L, int hq, int hkv,
                                    int d, int bs, double scale) {
  const int nb = (L + bs - 1) / bs;
  std::vector<double> target(size_t(hq) * nb * nb, 0.0);
  std::vector<double> p(L);
  for (int h = 0; h < hq; ++h) {
    const int g = h / (hq / hkv);
    for (int t = 0; t < L; ++t) {
      double mx = -INFINITY;
      for (int u = 0; u <= t; ++u) {
        double s = 0;
        for (int c = 0; c < d; ++c) s += double(q[(size_t(t) * hq + h) * d + c]) * k[(size_t(u) * hkv + g) * d + c];
        p[u] = s * scale;
        mx = std::max(mx, p[u]);
      }
      double sum = 0;
      for (int u = 0; u <= t; ++u) sum += std::exp(p[u] - mx);
      for (int u = 0; u <= t; ++u) {
        double& cell = target[(size_t(h) * nb + t / bs) * nb + u / bs];
        cell = std::max(cell, std::exp(p[u] - mx) / sum);
      }
    }
    for (int i = 0; i < nb; ++i) {
      double* row = &target[(size_t(h) * nb + i) * nb];
      double sum = 0;
      for (int j = 0; j <= i; ++j) sum += row[j];
      for (int j = 0; j <= i; ++j) row[j] /= sum;
    }
  }
  return target;
}

struct Shape {
  int L, hq, hkv, d, bs;
};

class DistillTargetTest : public ::testing::TestWithParam<Shape> {};

TEST_P(DistillTargetTest, MatchesFloat64Recomputation) {
  const Shape s = GetParam();
  std::mt19937 rng(1234 + s.L * 7 + s.hq);
  // Spread like real post-RoPE activations (scores of a few units), so the
  // targets are far from uniform and the block maxima matter.
  std::normal_distribution<float> dist(0.0f, 1.6f);
  std::vector<float> q(size_t(s.L) * s.hq * s.d), k(size_t(s.L) * s.hkv * s.d);
  for (float& x : q) x = dist(rng);
  for (float& x : k) x = dist(rng);
  const float scale = static_cast<float>(1.0 / std::sqrt(double(s.d)));

  DistillTargetProblem p;
  p.q = q.data();
  p.k = k.data();
  p.seq_len = s.L;
  p.num_heads = s.hq;
  p.num_kv_heads = s.hkv;
  p.head_dim = s.d;
  p.block_size = s.bs;
  p.scale = scale;
  const std::vector<float> got = DistillTarget(p, 3);
  const std::vector<double> want = ReferenceTarget(q, k, s.L, s.hq, s.hkv, s.d, s.bs, scale);
  ASSERT_EQ(got.size(), want.size());
  const int nb = (s.L + s.bs - 1) / s.bs;
  double worst = 0;
  for (int h = 0; h < s.hq; ++h) {
    for (int i = 0; i < nb; ++i) {
      double row_sum = 0;
      for (int j = 0; j < nb; ++j) {
        const size_t at = (size_t(h) * nb + i) * nb + j;
        if (j > i) {
          EXPECT_EQ(got[at], 0.0f) << "above the diagonal h " << h << " row " << i << " col " << j;
          continue;
        }
        row_sum += got[at];
        const double err = std::abs(got[at] - want[at]);
        worst = std::max(worst, err / std::max(want[at], 1e-3));
        EXPECT_LE(err, 2e-6 + 1e-4 * want[at])
            << "h " << h << " row " << i << " col " << j << " got " << got[at] << " want " << want[at];
      }
      EXPECT_NEAR(row_sum, 1.0, 1e-5) << "h " << h << " row " << i;
    }
  }
  RecordProperty("worst_rel_err", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Shapes, DistillTargetTest,
                         ::testing::Values(Shape{333, 4, 1, 16, 64},  // GQA 4, partial last block of 13
                                           Shape{192, 6, 2, 32, 64},  // GQA 3, whole blocks
                                           Shape{65, 2, 2, 8, 64},  // a last block of one token
                                           Shape{1, 3, 1, 4, 64},  // one token: the target is 1
                                           Shape{250, 4, 4, 12, 16}),  // another block size, no GQA
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           char name[64];
                           std::snprintf(name, sizeof name, "L%d_H%dx%d_D%d_B%d", s.L, s.hq, s.hkv, s.d, s.bs);
                           return std::string(name);
                         });

// A case small enough to work out by hand: one head, D = 1, block 2, q = 0
// (every visible key equally likely). Row t's probabilities are 1/(t+1), so
// the block maximum is that of the block's first query row, 1/(q0+1) for
// every causal key block: each target row is uniform over its causal blocks.
TEST(DistillTarget, UniformAttentionGivesUniformRows) {
  const int L = 6;
  std::vector<float> q(L, 0.0f), k = {3, -1, 2, 5, 0, 1};
  DistillTargetProblem p;
  p.q = q.data();
  p.k = k.data();
  p.seq_len = L;
  p.num_heads = p.num_kv_heads = p.head_dim = 1;
  p.block_size = 2;
  p.scale = 1.0f;
  const std::vector<float> t = DistillTarget(p, 1);
  const std::vector<float> want = {1, 0, 0, 0.5f, 0.5f, 0, 1 / 3.0f, 1 / 3.0f, 1 / 3.0f};
  ASSERT_EQ(t.size(), want.size());
  for (size_t i = 0; i < t.size(); ++i) EXPECT_NEAR(t[i], want[i], 1e-6) << i;
}

// And one with a peak: query 3 (block 1) puts almost all its mass on key 0
// (block 0), so block (1, 0) has a max near 1 while block (1, 1) only has
// query 2's own share.
TEST(DistillTarget, APeakedQueryDominatesItsRow) {
  std::vector<float> q = {0, 0, 0, 10}, k = {2, 0, 0, 0};
  DistillTargetProblem p;
  p.q = q.data();
  p.k = k.data();
  p.seq_len = 4;
  p.num_heads = p.num_kv_heads = p.head_dim = 1;
  p.block_size = 2;
  p.scale = 1.0f;
  const std::vector<float> t = DistillTarget(p, 1);
  // Row 1: block 0's max is query 3's p(key 0) = e^20 / (e^20 + 3); block 1's
  // max is query 2's p(key 2) = 1/3.
  const double a = std::exp(20.0) / (std::exp(20.0) + 3.0), b = 1.0 / 3.0;
  EXPECT_NEAR(t[2], a / (a + b), 1e-6);
  EXPECT_NEAR(t[3], b / (a + b), 1e-6);
}

}  // namespace
}  // namespace seer::cpu
