// The GPU's clock, power and energy over a benchmark's timed window, from
// NVML (for seer-attention-bench --power). Under the board's power limit the
// SM clock is part of a kernel's rate, so a rate alone does not say whether a
// kernel is slow or throttled; this says which.
//
// NVML is loaded at run time (libnvidia-ml.so.1, which the driver installs),
// so the kernels link nothing new and a host without a driver gets a reason
// instead of a failed start. Start() reads the board's energy counter and
// starts a thread that samples the SM clock and the clock-event reasons
// every few milliseconds; Stop() joins it and reads the counter again.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace seer::bench {

// One sample: the SM clock and NVML's clock-event reason bits.
struct PowerSample {
  unsigned sm_mhz = 0;
  uint64_t reasons = 0;
};

// NVML's clock-event reason bits this summary names.
inline constexpr uint64_t kReasonSwPowerCap = 0x4;
inline constexpr uint64_t kReasonHwSlowdown = 0x8;  // includes thermal and power brake below
inline constexpr uint64_t kReasonSwThermal = 0x20;
inline constexpr uint64_t kReasonHwThermal = 0x40;
inline constexpr uint64_t kReasonHwPowerBrake = 0x80;

struct PowerSummary {
  double seconds = 0.0;  // the window's wall time
  double joules = 0.0;  // the board's energy counter over the window
  double watts = 0.0;  // joules / seconds
  double sm_mhz = 0.0;  // mean of the samples
  double power_cap_share = 0.0;  // share of samples with the software power cap active
  double slowdown_share = 0.0;  // share with any hardware or thermal slowdown
  int samples = 0;
};

// The summary of a window: energy counter readings in millijoules at its
// start and end, its length, and the samples taken in it. A counter that
// went backwards (a driver reload) gives zero energy.
PowerSummary Summarize(const std::vector<PowerSample>& samples, uint64_t energy_mj_start, uint64_t energy_mj_end,
                       double seconds);

class PowerSampler {
 public:
  // The sampler for the device at PCI bus id `pci_bus_id` (as
  // cudaDeviceGetPCIBusId writes it), sampling every `period_ms`; null with
  // the reason in *why when NVML or one of its calls is missing.
  static std::unique_ptr<PowerSampler> Open(const std::string& pci_bus_id, int period_ms, std::string* why);
  ~PowerSampler();
  PowerSampler(const PowerSampler&) = delete;
  PowerSampler& operator=(const PowerSampler&) = delete;

  void Start();
  PowerSummary Stop();

  struct Api;  // the NVML entry points (power_sampler.cc)

 private:
  PowerSampler(std::unique_ptr<Api> api, void* device, int period_ms);
  uint64_t EnergyMj() const;
  PowerSample Sample() const;

  std::unique_ptr<Api> api_;
  void* device_;
  int period_ms_;
  std::atomic<bool> running_{false};
  std::thread thread_;
  std::vector<PowerSample> samples_;
  uint64_t energy_start_ = 0;
  double start_s_ = 0.0;
};

}  // namespace seer::bench
