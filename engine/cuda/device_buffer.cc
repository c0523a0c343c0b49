#include "engine/cuda/device_buffer.h"

#include <atomic>
#include <cstdio>
#include <utility>

#include <cuda_runtime.h>

namespace seer {
namespace {

std::atomic<size_t> g_current{0};
std::atomic<size_t> g_peak{0};

void NoteAllocated(size_t bytes) {
  const size_t now = g_current.fetch_add(bytes) + bytes;
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {}
}

}  // namespace

DeviceBuffer::~DeviceBuffer() { Reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr) {
    // cudaFree synchronises the device; a failure here (a dead context) has
    // nowhere better to go than being ignored, as in any destructor.
    cudaFree(ptr_);
    g_current.fetch_sub(bytes_);
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes, const std::string& what) {
  DeviceBuffer buf;
  if (bytes == 0) return buf;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not see it
    size_t free_b = 0, total_b = 0;
    std::string free_txt = "unknown";
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      free_txt = FormatBytes(free_b) + " of " + FormatBytes(total_b);
    std::string msg = "allocating " + FormatBytes(bytes) + " of GPU memory for " + what + " failed (" +
                      cudaGetErrorName(err) + "); free: " + free_txt;
    if (err == cudaErrorMemoryAllocation) return ResourceExhausted(std::move(msg));
    return Internal(std::move(msg));
  }
  buf.ptr_ = p;
  buf.bytes_ = bytes;
  NoteAllocated(bytes);
  return buf;
}

DeviceMemoryStats GetDeviceMemoryStats() { return {g_current.load(), g_peak.load()}; }

void ResetPeakDeviceMemory() { g_peak.store(g_current.load()); }

}  // namespace seer
