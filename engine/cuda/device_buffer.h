// Owned device memory. Every allocation of the CUDA engine goes through here,
// so the engine can report what it holds and the most it ever held (the
// prefill benchmark's peak memory).
#pragma once

#include <cstddef>
#include <string>

#include "base/status.h"
#include "base/strings.h"

namespace seer {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // cudaMalloc of `bytes` (0 gives an empty buffer). Failure is
  // RESOURCE_EXHAUSTED naming `what`, the size and the free memory.
  static StatusOr<DeviceBuffer> Allocate(size_t bytes, const std::string& what);

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  bool empty() const { return ptr_ == nullptr; }
  void Reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceMemoryStats {
  size_t current_bytes = 0;  // held now by DeviceBuffers, in this process
  size_t peak_bytes = 0;  // the most held at once since the last reset
};

DeviceMemoryStats GetDeviceMemoryStats();
// Sets the peak to the current holding.
void ResetPeakDeviceMemory();

}  // namespace seer
