#include "engine/cuda/cuda_engine.h"

#include <cuda_runtime.h>

namespace seer {

bool CudaDeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions&) {
  return Unimplemented("the CUDA backend is not built yet; use --device cpu");
}

}  // namespace seer
