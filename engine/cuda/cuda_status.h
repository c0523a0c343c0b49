// CUDA and cuBLAS return codes as engine Status values, with the call site.
// kernels/common/check.h is the kernels' side (cudaError_t plus the site of the
// first failure); this is the engine's side of the same one check: a failed
// call becomes a Status naming the engine's call and, when a kernel wrapper
// recorded one, the kernel-side site too.
#pragma once

#include <string>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "base/status.h"

namespace seer {

// cudaErrorMemoryAllocation becomes RESOURCE_EXHAUSTED; every other failure
// is INTERNAL. `what` names the call, `where` the file and line.
Status CudaStatus(cudaError_t err, const char* what, const char* where);
Status CublasStatus(cublasStatus_t st, const char* what, const char* where);

}  // namespace seer

#define SEER_CUDA_STRINGIFY_INNER_(x) #x
#define SEER_CUDA_STRINGIFY_(x) SEER_CUDA_STRINGIFY_INNER_(x)
#define SEER_CUDA_WHERE_ __FILE__ ":" SEER_CUDA_STRINGIFY_(__LINE__)

// Evaluates a CUDA runtime call (or a kernel wrapper returning cudaError_t)
// and returns its failure as a Status from the enclosing function.
#define SEER_RETURN_IF_CUDA_ERROR(expr)                                   \
  do {                                                                    \
    const cudaError_t seer_cuda_err_ = (expr);                            \
    if (seer_cuda_err_ != cudaSuccess) {                                  \
      return ::seer::CudaStatus(seer_cuda_err_, #expr, SEER_CUDA_WHERE_); \
    }                                                                     \
  } while (0)

#define SEER_RETURN_IF_CUBLAS_ERROR(expr)                                    \
  do {                                                                       \
    const cublasStatus_t seer_cublas_st_ = (expr);                           \
    if (seer_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                          \
      return ::seer::CublasStatus(seer_cublas_st_, #expr, SEER_CUDA_WHERE_); \
    }                                                                        \
  } while (0)
