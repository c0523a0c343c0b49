// What the GPU kernel tests share: the skip check, a checked-call assertion,
// and a device buffer poisoned with 0xFF bytes (NaN in bf16, fp16 and float)
// so that an element a kernel fails to write fails the comparison.
#pragma once

#include <cstddef>
#include <string>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

namespace seer::gpu_test {

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

// True when a CUDA device is visible; otherwise `why` says what is missing.
inline bool HaveGpu(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
    return false;
  }
  if (n == 0) {
    *why = "no CUDA device";
    return false;
  }
  return true;
}

class DevBuf {
 public:
  explicit DevBuf(size_t bytes) {
    const size_t n = bytes == 0 ? 256 : bytes;
    if (cudaMalloc(&p_, n) != cudaSuccess) p_ = nullptr;
    if (p_ != nullptr) cudaMemset(p_, 0xFF, n);
  }
  ~DevBuf() { cudaFree(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  bool ok() const { return p_ != nullptr; }
  cudaError_t Upload(const void* src, size_t bytes) { return cudaMemcpy(p_, src, bytes, cudaMemcpyHostToDevice); }
  cudaError_t Download(void* dst, size_t bytes) const { return cudaMemcpy(dst, p_, bytes, cudaMemcpyDeviceToHost); }

 private:
  void* p_ = nullptr;
};

}  // namespace seer::gpu_test
