// AdamW, the schedule and the clipping against numbers worked out by hand
// from torch's and Hugging Face's definitions (docs/TRAINING.md).

#include "train/adamw.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

namespace seer::train {
namespace {

TEST(AdamW, TwoStepsByHand) {
  AdamWConfig c;  // beta1 0.9, beta2 0.999, eps 1e-8
  c.weight_decay = 0.01;
  std::vector<double> p = {1.0, -2.0}, m = {0, 0}, v = {0, 0};
  // Step 1, lr 0.1, g = (0.5, 0):
  //   decay: p = (0.999, -1.998)
  //   m = (0.05, 0), v = (0.00025, 0); m^ = m / 0.1 = (0.5, 0), v^ = v / 0.001 = (0.25, 0)
  //   p -= 0.1 * m^ / (sqrt(v^) + 1e-8) = 0.1 * 0.5 / 0.50000001 = 0.099999998...
  AdamWStep(c, 0.1, 1, p, std::vector<double>{0.5, 0.0}, m, v);
  EXPECT_NEAR(p[0], 0.999 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-15);
  EXPECT_NEAR(p[0], 0.899000002, 1e-9);
  EXPECT_DOUBLE_EQ(p[1], -1.998);  // no gradient: only the decay
  EXPECT_DOUBLE_EQ(m[0], 0.05);
  EXPECT_DOUBLE_EQ(v[0], 0.00025);
  // Step 2, lr 0.05, g = (-0.25, 1):
  //   decay: p0 = 0.899000002 * 0.9995
  //   m0 = 0.9 * 0.05 - 0.1 * 0.25 = 0.02; v0 = 0.999 * 0.00025 + 0.001 * 0.0625 = 0.00031225
  //   m^0 = 0.02 / 0.19 ; v^0 = 0.00031225 / 0.001999
  //   m1 = 0.1; v1 = 0.001; m^1 = 0.1 / 0.19; v^1 = 0.001 / 0.001999
  const double p0 = 0.899000002 * 0.9995, p1 = -1.998 * 0.9995;
  AdamWStep(c, 0.05, 2, p, std::vector<double>{-0.25, 1.0}, m, v);
  EXPECT_NEAR(m[0], 0.02, 1e-15);
  EXPECT_NEAR(v[0], 0.00031225, 1e-15);
  EXPECT_NEAR(p[0], p0 - 0.05 * (0.02 / 0.19) / (std::sqrt(0.00031225 / 0.001999) + 1e-8), 1e-9);
  EXPECT_NEAR(p[1], p1 - 0.05 * (0.1 / 0.19) / (std::sqrt(0.001 / 0.001999) + 1e-8), 1e-12);
  // The same numbers, evaluated: 0.89855 - 0.05 * 0.105263 / 0.395225 = 0.885234...
  EXPECT_NEAR(p[0], 0.8852337, 1e-6);
}

TEST(CosineWarmup, MatchesHuggingFacesSchedule) {
  EXPECT_DOUBLE_EQ(CosineWarmupFactor(0, 20, 100), 0.0);  // the first step of a warm-up moves nothing
  EXPECT_DOUBLE_EQ(CosineWarmupFactor(10, 20, 100), 0.5);
  EXPECT_DOUBLE_EQ(CosineWarmupFactor(20, 20, 100), 1.0);
  EXPECT_NEAR(CosineWarmupFactor(60, 20, 100), 0.5, 1e-15);  // halfway down the cosine
  EXPECT_NEAR(CosineWarmupFactor(40, 20, 100), 0.5 * (1 + std::cos(std::numbers::pi * 0.25)), 1e-15);
  EXPECT_NEAR(CosineWarmupFactor(100, 20, 100), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(CosineWarmupFactor(0, 0, 10), 1.0);  // no warm-up: the peak at once
  EXPECT_DOUBLE_EQ(CosineWarmupFactor(5, 10, 5), 0.5);  // a warm-up longer than the run
}

TEST(ClipGradNorm, ScalesOnlyAboveTheLimit) {
  std::vector<double> a = {3.0, 0.0}, b = {4.0, 12.0};
  std::vector<std::vector<double>*> all = {&a, &b};
  EXPECT_DOUBLE_EQ(ClipGradNorm(all, 100.0), 13.0);
  EXPECT_EQ(b[1], 12.0);  // untouched
  EXPECT_DOUBLE_EQ(ClipGradNorm(all, 1.0), 13.0);
  const double coef = 1.0 / (13.0 + 1e-6);
  EXPECT_DOUBLE_EQ(a[0], 3.0 * coef);
  EXPECT_DOUBLE_EQ(b[1], 12.0 * coef);
  EXPECT_NEAR(ClipGradNorm(all, 0.0), 1.0, 1e-6);  // 0 only measures
}

}  // namespace
}  // namespace seer::train
