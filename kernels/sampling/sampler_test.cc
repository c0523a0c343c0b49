// The decode worker's sampler against a float64 recomputation of the
// distribution it should draw from (temperature, top-k, top-p), and the
// empirical frequencies of its draws against that distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/sampling/sampler.h"

namespace seer {
namespace {

// Softmax(logits / t) restricted to `keep`, in float64, written directly from
// the definitions.
std::vector<double> Reference(const std::vector<float>& logits, double t, const std::vector<int>& keep) {
  std::vector<double> p(logits.size(), 0.0);
  double total = 0.0;
  for (int i : keep) total += std::exp(double(logits[i]) / t);
  for (int i : keep) p[i] = std::exp(double(logits[i]) / t) / total;
  return p;
}

TEST(Sampling, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s({});
  EXPECT_EQ(s.Sample(std::vector<float>{0.1f, 3.0f, -2.0f, 3.0f}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{-1.0f, -0.5f, -7.0f}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{NAN, -4.0f, NAN}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{}), 0);
}

TEST(Sampling, TemperatureDistributionMatchesFloat64Softmax) {
  const std::vector<float> logits = {1.0f, 2.5f, -0.5f, 0.0f, 2.0f};
  for (double t : {0.5, 1.0, 2.0}) {
    Sampler s({t, 0, 1.0, 42});
    const std::vector<double> got = s.Distribution(logits);
    const std::vector<double> want = Reference(logits, t, {0, 1, 2, 3, 4});
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "t=" << t << " i=" << i;
  }
}

TEST(Sampling, TopKKeepsTheKLargest) {
  const std::vector<float> logits = {0.3f, 1.9f, -2.0f, 1.2f, 0.9f, 1.9f};
  Sampler s({1.0, 3, 1.0, 1});
  // The three largest: 1.9 (ids 1 and 5) and 1.2 (id 3).
  const std::vector<double> want = Reference(logits, 1.0, {1, 3, 5});
  const std::vector<double> got = s.Distribution(logits);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << i;
  // top_k = 1 is greedy at any temperature.
  Sampler one({5.0, 1, 1.0, 3});
  for (int i = 0; i < 200; ++i) ASSERT_EQ(one.Sample(logits), 1);
}

TEST(Sampling, TopPKeepsTheSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  const std::vector<float> logits = {float(std::log(0.15)), float(std::log(0.5)), float(std::log(0.05)),
                                     float(std::log(0.3))};
  {
    Sampler s({1.0, 0, 0.75, 9});  // 0.5 < 0.75 <= 0.5 + 0.3
    const std::vector<double> want = Reference(logits, 1.0, {1, 3});
    const std::vector<double> got = s.Distribution(logits);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-9) << i;
    EXPECT_NEAR(got[1], 0.625, 1e-6);  // 0.5 / 0.8, up to the float32 logits
  }
  {
    Sampler s({1.0, 0, 0.45, 9});  // the first token alone (0.5) reaches 0.45
    const std::vector<double> got = s.Distribution(logits);
    EXPECT_NEAR(got[1], 1.0, 1e-12);
    EXPECT_EQ(got[0] + got[2] + got[3], 0.0);
  }
  {
    Sampler s({1.0, 0, 0.96, 9});  // needs all four (0.95 < 0.96)
    const std::vector<double> got = s.Distribution(logits);
    EXPECT_GT(got[2], 0.0);
  }
}

TEST(Sampling, DrawsFollowTheDistribution) {
  const std::vector<float> logits = {0.2f, 1.4f, -0.3f, 0.9f, 1.1f, -1.5f, 0.0f, 0.6f};
  Sampler s({0.8, 6, 0.9, 12345});
  const std::vector<double> p = s.Distribution(logits);
  const int n = 40000;
  std::vector<int> count(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++count[s.Sample(logits)];
  // Every bin within 5 standard deviations of its binomial mean; tokens with
  // probability 0 are never drawn.
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(count[i], 0) << i;
      continue;
    }
    const double mean = n * p[i], sd = std::sqrt(n * p[i] * (1 - p[i]));
    EXPECT_NEAR(count[i], mean, 5 * sd) << "token " << i << " p=" << p[i];
  }
}

TEST(Sampling, SeedMakesDrawsReproducible) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  Sampler a({1.0, 0, 1.0, 77}), b({1.0, 0, 1.0, 77}), c({1.0, 0, 1.0, 78});
  std::vector<int> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.Sample(logits));
    tb.push_back(b.Sample(logits));
    tc.push_back(c.Sample(logits));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

}  // namespace
}  // namespace seer
