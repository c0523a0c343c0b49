// The CUDA engine's page pool: bf16 pages in one device allocation, per
// layer K then V, each [num_pages, Hkv, page_tokens, D] (engine/kv/page_pool.h).
// Copies to and from the wire layout go through a device staging buffer and
// the page kernels (kernels/paged_kv), on the pool's own stream, so KV that
// arrives for a waiting request never stalls the decode steps in flight.
#pragma once

#include <memory>
#include <mutex>
#include <span>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/cuda/device_buffer.h"
#include "engine/kv/page_pool.h"

namespace seer {

class DevicePagePool final : public PagePool {
 public:
  // On `device`, which every copy makes current on its calling thread (the
  // KV of a request lands from whichever thread received it).
  static StatusOr<std::unique_ptr<DevicePagePool>> Create(const PageLayout& layout, int num_pages, int device);
  ~DevicePagePool() override;

  __nv_bfloat16* k(int layer) const { return base(layer, 0); }
  __nv_bfloat16* v(int layer) const { return base(layer, 1); }

  Status WriteTokens(int layer, std::span<const int32_t> table, int t0, int n, DType src, const void* k,
                     const void* v) override;
  Status ReadTokens(int layer, std::span<const int32_t> table, int t0, int n, void* k, void* v) const override;
  // Device to device on the pool's stream, waited for.
  Status CopyPage(int32_t from, int32_t to) override;
  // Positions [0, n) of one layer from device memory laid out
  // [Hkv, stride, D] (a DeviceKvCache's layer, stride its capacity) into the
  // pages of `table`, on the pool's stream; Synchronize waits for it.
  Status WriteTokensFromDevice(int layer, std::span<const int32_t> table, int n, int stride, const __nv_bfloat16* k,
                               const __nv_bfloat16* v);
  Status Synchronize() const;
  // The CUDA device the pages are on.
  int device() const { return device_; }

 private:
  DevicePagePool(const PageLayout& layout, int num_pages, int device) : PagePool(layout, num_pages), device_(device) {}
  __nv_bfloat16* base(int layer, int which) const;
  // Room for `n` tokens of one layer's K and V and a table of `pages` entries.
  Status EnsureStaging(int n, int pages) const;

  const int device_;
  DeviceBuffer storage_;
  cudaStream_t stream_ = nullptr;
  // Staging, grown on demand; one copy at a time.
  mutable std::mutex mu_;
  mutable DeviceBuffer staging_;  // K [Hkv, n, D] then V, bf16
  mutable DeviceBuffer table_;  // int32 block table
  mutable int staging_tokens_ = 0;
  mutable int table_pages_ = 0;
};

}  // namespace seer
