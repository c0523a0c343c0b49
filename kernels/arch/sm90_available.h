// Whether a Hopper kernel's sm_90a code runs on the current device.
#pragma once

#include <atomic>

namespace seer::cuda {

// Answers per device, 0 unknown, 1 no, 2 yes; one per kernel family, static.
struct Sm90aAnswers {
  static constexpr int kMaxDevices = 64;
  std::atomic<int> per_device[kMaxDevices];
};

// True where the current device is compute capability 9.0 (H100, H200) and
// runs `kernel` from sm_90a code (cudaFuncAttributes::binaryVersion 90, i.e.
// the binary carries it). Asked once per device, remembered in `answers`;
// a failed query leaves no CUDA error behind and answers false.
bool Sm90aCodeRuns(const void* kernel, Sm90aAnswers& answers);

}  // namespace seer::cuda
