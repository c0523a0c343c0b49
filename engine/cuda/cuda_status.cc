#include "engine/cuda/cuda_status.h"

#include "kernels/common/check.h"

namespace seer {

Status CudaStatus(cudaError_t err, const char* what, const char* where) {
  std::string msg =
      std::string(where) + ": " + what + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  // The kernel wrappers record where inside them a call failed.
  cuda::CudaFailureSite& site = cuda::LastCudaFailure();
  if (site.error == err && site.line != 0) {
    msg += " at " + std::string(site.file) + ":" + std::to_string(site.line) + " (" + site.expr + ")";
  }
  site = cuda::CudaFailureSite{};
  // The failed call also left `err` as this thread's last runtime error. The
  // kernel wrappers check every launch with cudaGetLastError(), so unless it
  // is cleared here the next, unrelated launch on this thread (the next
  // request's) would report this failure as its own. A sticky error (a
  // corrupted context) stays whatever we do.
  cudaGetLastError();
  if (err == cudaErrorMemoryAllocation) return ResourceExhausted(std::move(msg));
  return Internal(std::move(msg));
}

Status CublasStatus(cublasStatus_t st, const char* what, const char* where) {
  std::string msg =
      std::string(where) + ": " + what + " failed: " + cublasGetStatusName(st) + " (" + cublasGetStatusString(st) + ")";
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return ResourceExhausted(std::move(msg));
  return Internal(std::move(msg));
}

}  // namespace seer
