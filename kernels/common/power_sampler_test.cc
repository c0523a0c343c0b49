#include "kernels/common/power_sampler.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace seer::bench {
namespace {

TEST(PowerSamplerTest, SummarizesEnergyClockAndReasons) {
  // 1,800 J over 3 s: 600 W. Clocks 1,600 / 1,700 / 1,500 / 1,800: mean
  // 1,650. The power cap in two of four samples (one together with the
  // power brake), a thermal slowdown alone in one.
  const std::vector<PowerSample> samples = {
      {1600, kReasonSwPowerCap},
      {1700, 0},
      {1500, kReasonSwPowerCap | kReasonHwSlowdown | kReasonHwPowerBrake},
      {1800, kReasonSwThermal},
  };
  const PowerSummary s = Summarize(samples, 10'000'000, 11'800'000, 3.0);
  EXPECT_DOUBLE_EQ(s.joules, 1800.0);
  EXPECT_DOUBLE_EQ(s.watts, 600.0);
  EXPECT_DOUBLE_EQ(s.sm_mhz, 1650.0);
  EXPECT_DOUBLE_EQ(s.power_cap_share, 0.5);
  EXPECT_DOUBLE_EQ(s.slowdown_share, 0.5);
  EXPECT_EQ(s.samples, 4);
  EXPECT_DOUBLE_EQ(s.seconds, 3.0);
}

TEST(PowerSamplerTest, NoSamplesAndACounterThatWentBack) {
  const PowerSummary none = Summarize({}, 5'000, 6'500, 0.5);
  EXPECT_DOUBLE_EQ(none.joules, 1.5);
  EXPECT_DOUBLE_EQ(none.watts, 3.0);
  EXPECT_EQ(none.samples, 0);
  EXPECT_DOUBLE_EQ(none.sm_mhz, 0.0);
  EXPECT_DOUBLE_EQ(none.power_cap_share, 0.0);

  // A driver reload restarts the counter: no energy rather than a wrap.
  const PowerSummary back = Summarize({{1980, 0}}, 9'000, 100, 1.0);
  EXPECT_DOUBLE_EQ(back.joules, 0.0);
  EXPECT_DOUBLE_EQ(back.watts, 0.0);
  EXPECT_DOUBLE_EQ(back.sm_mhz, 1980.0);

  EXPECT_DOUBLE_EQ(Summarize({}, 0, 1'000, 0.0).watts, 0.0);
}

TEST(PowerSamplerTest, NoDeviceGivesAReason) {
  // No host has a GPU at this bus id; without a driver NVML does not load.
  // Either way: no sampler, and a reason to print.
  std::string why;
  EXPECT_EQ(PowerSampler::Open("ffff:ff:1f.7", 5, &why), nullptr);
  EXPECT_FALSE(why.empty());
}

}  // namespace
}  // namespace seer::bench
