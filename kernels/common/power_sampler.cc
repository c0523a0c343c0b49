#include "kernels/common/power_sampler.h"

#include <dlfcn.h>

#include <chrono>
#include <utility>

namespace seer::bench {
namespace {

// NVML's C interface, declared here since nvml.h is not installed beside the
// toolkit everywhere: results are an enum whose success is 0, devices opaque
// pointers, NVML_CLOCK_SM is 1.
using NvmlDevice = void*;
using InitFn = int (*)();
using ShutdownFn = int (*)();
using HandleByPciFn = int (*)(const char*, NvmlDevice*);
using EnergyFn = int (*)(NvmlDevice, unsigned long long*);
using ClockFn = int (*)(NvmlDevice, int, unsigned*);
using ReasonsFn = int (*)(NvmlDevice, unsigned long long*);
constexpr int kNvmlClockSm = 1;

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct PowerSampler::Api {
  void* library = nullptr;
  ShutdownFn shutdown = nullptr;
  EnergyFn energy = nullptr;
  ClockFn clock = nullptr;
  ReasonsFn reasons = nullptr;

  ~Api() {
    if (shutdown != nullptr) shutdown();
    if (library != nullptr) dlclose(library);
  }
};

PowerSummary Summarize(const std::vector<PowerSample>& samples, uint64_t energy_mj_start, uint64_t energy_mj_end,
                       double seconds) {
  PowerSummary s;
  s.seconds = seconds;
  s.joules = energy_mj_end >= energy_mj_start ? static_cast<double>(energy_mj_end - energy_mj_start) * 1e-3 : 0.0;
  s.watts = seconds > 0.0 ? s.joules / seconds : 0.0;
  s.samples = static_cast<int>(samples.size());
  if (samples.empty()) return s;
  constexpr uint64_t kSlowdown = kReasonHwSlowdown | kReasonSwThermal | kReasonHwThermal | kReasonHwPowerBrake;
  double mhz = 0.0;
  int capped = 0, slowed = 0;
  for (const PowerSample& x : samples) {
    mhz += x.sm_mhz;
    capped += (x.reasons & kReasonSwPowerCap) != 0;
    slowed += (x.reasons & kSlowdown) != 0;
  }
  s.sm_mhz = mhz / s.samples;
  s.power_cap_share = static_cast<double>(capped) / s.samples;
  s.slowdown_share = static_cast<double>(slowed) / s.samples;
  return s;
}

std::unique_ptr<PowerSampler> PowerSampler::Open(const std::string& pci_bus_id, int period_ms, std::string* why) {
  auto api = std::make_unique<Api>();
  api->library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (api->library == nullptr) {
    *why = "cannot load libnvidia-ml.so.1 (the driver's NVML)";
    return nullptr;
  }
  auto symbol = [&](const char* name) { return dlsym(api->library, name); };
  auto init = reinterpret_cast<InitFn>(symbol("nvmlInit_v2"));
  auto by_pci = reinterpret_cast<HandleByPciFn>(symbol("nvmlDeviceGetHandleByPciBusId_v2"));
  api->energy = reinterpret_cast<EnergyFn>(symbol("nvmlDeviceGetTotalEnergyConsumption"));
  api->clock = reinterpret_cast<ClockFn>(symbol("nvmlDeviceGetClockInfo"));
  // The reasons' call was renamed (throttle -> event); either serves.
  api->reasons = reinterpret_cast<ReasonsFn>(symbol("nvmlDeviceGetCurrentClocksEventReasons"));
  if (api->reasons == nullptr) {
    api->reasons = reinterpret_cast<ReasonsFn>(symbol("nvmlDeviceGetCurrentClocksThrottleReasons"));
  }
  if (init == nullptr || by_pci == nullptr || api->energy == nullptr || api->clock == nullptr ||
      api->reasons == nullptr) {
    *why = "libnvidia-ml.so.1 lacks an entry point this sampler needs";
    return nullptr;
  }
  if (int rc = init(); rc != 0) {
    *why = "nvmlInit_v2 failed (NVML result " + std::to_string(rc) + ")";
    return nullptr;
  }
  api->shutdown = reinterpret_cast<ShutdownFn>(symbol("nvmlShutdown"));
  NvmlDevice device = nullptr;
  if (int rc = by_pci(pci_bus_id.c_str(), &device); rc != 0) {
    *why = "NVML has no device at PCI bus id " + pci_bus_id + " (NVML result " + std::to_string(rc) + ")";
    return nullptr;
  }
  unsigned long long energy = 0;
  if (int rc = api->energy(device, &energy); rc != 0) {
    *why = "this device reports no energy counter (NVML result " + std::to_string(rc) + ")";
    return nullptr;
  }
  return std::unique_ptr<PowerSampler>(new PowerSampler(std::move(api), device, period_ms < 1 ? 1 : period_ms));
}

PowerSampler::PowerSampler(std::unique_ptr<Api> api, void* device, int period_ms)
    : api_(std::move(api)), device_(device), period_ms_(period_ms) {}

PowerSampler::~PowerSampler() {
  if (running_.exchange(false)) thread_.join();
}

uint64_t PowerSampler::EnergyMj() const {
  unsigned long long mj = 0;
  api_->energy(device_, &mj);
  return mj;
}

PowerSample PowerSampler::Sample() const {
  PowerSample s;
  unsigned mhz = 0;
  unsigned long long reasons = 0;
  api_->clock(device_, kNvmlClockSm, &mhz);
  api_->reasons(device_, &reasons);
  s.sm_mhz = mhz;
  s.reasons = reasons;
  return s;
}

void PowerSampler::Start() {
  if (running_.exchange(false)) thread_.join();
  samples_.clear();
  energy_start_ = EnergyMj();
  start_s_ = NowSeconds();
  running_ = true;
  thread_ = std::thread([this] {
    while (running_.load(std::memory_order_relaxed)) {
      samples_.push_back(Sample());
      std::this_thread::sleep_for(std::chrono::milliseconds(period_ms_));
    }
  });
}

PowerSummary PowerSampler::Stop() {
  if (running_.exchange(false)) thread_.join();
  const double seconds = NowSeconds() - start_s_;
  return Summarize(samples_, energy_start_, EnergyMj(), seconds);
}

}  // namespace seer::bench
