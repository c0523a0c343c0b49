// The one way to check a CUDA runtime call (docs/STYLE.md: one checked call
// that records the file and line).
//
// Library code returns the cudaError_t and records where it failed, so that
// the engine can put "kernels/attention/attention.cu:123: cudaFuncSetAttribute(...)"
// into its Status message without the kernels knowing about Status. Programs
// (tests, benchmarks) that cannot go on use SEER_CUDA_CHECK, which prints the
// same site and exits.
#pragma once

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

namespace seer::cuda {

struct CudaFailureSite {
  cudaError_t error = cudaSuccess;
  const char* expr = "";
  const char* file = "";
  int line = 0;
};

// The last failure recorded on this host thread by SEER_CUDA_RETURN_IF_ERROR.
inline CudaFailureSite& LastCudaFailure() {
  thread_local CudaFailureSite site;
  return site;
}

inline cudaError_t NoteCudaFailure(cudaError_t e, const char* expr, const char* file, int line) {
  LastCudaFailure() = CudaFailureSite{e, expr, file, line};
  return e;
}

}  // namespace seer::cuda

// In functions returning cudaError_t.
#define SEER_CUDA_RETURN_IF_ERROR(expr)                                                                             \
  do {                                                                                                              \
    const cudaError_t seer_cuda_e_ = (expr);                                                                        \
    if (seer_cuda_e_ != cudaSuccess) return ::seer::cuda::NoteCudaFailure(seer_cuda_e_, #expr, __FILE__, __LINE__); \
  } while (0)

// In programs: print file:line, the call and the error, then exit(1).
#define SEER_CUDA_CHECK(expr)                                                                               \
  do {                                                                                                      \
    const cudaError_t seer_cuda_e_ = (expr);                                                                \
    if (seer_cuda_e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(seer_cuda_e_)); \
      std::exit(1);                                                                                         \
    }                                                                                                       \
  } while (0)
