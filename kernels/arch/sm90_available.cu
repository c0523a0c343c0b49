#include "kernels/arch/sm90_available.h"

#include <cuda_runtime.h>

namespace seer::cuda {

bool Sm90aCodeRuns(const void* kernel, Sm90aAnswers& answers) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) {
    cudaGetLastError();
    return false;
  }
  if (device < Sm90aAnswers::kMaxDevices) {
    const int known = answers.per_device[device].load(std::memory_order_relaxed);
    if (known != 0) return known == 2;
  }
  bool yes = false;
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
      minor == 0) {
    cudaFuncAttributes attr{};
    yes = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.binaryVersion == 90;
  }
  cudaGetLastError();  // a failed query leaves nothing behind
  if (device < Sm90aAnswers::kMaxDevices) answers.per_device[device].store(yes ? 2 : 1, std::memory_order_relaxed);
  return yes;
}

}  // namespace seer::cuda
