// The KV cache on the GPU: bf16, per layer K and V laid out
// [kv_heads, capacity, head_dim] (kv_cache.h), in one allocation; with gate
// keys, per layer K before RoPE [capacity, kv_heads, head_dim] in another.
#pragma once

#include <memory>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/cuda/device_buffer.h"
#include "engine/kv/kv_cache.h"

namespace seer {

class DeviceKvCache final : public KvCache {
 public:
  // Bytes of K and V together (and the gate keys) for every layer at
  // `capacity` tokens.
  static size_t BytesFor(int num_layers, int num_kv_heads, int head_dim, int capacity, bool gate_keys = false);

  // RESOURCE_EXHAUSTED when the device cannot hold it.
  static StatusOr<std::unique_ptr<DeviceKvCache>> Create(int num_layers, int num_kv_heads, int head_dim, int capacity,
                                                         bool gate_keys = false);
  ~DeviceKvCache() override;

  __nv_bfloat16* k(int layer) const { return base(layer, 0); }
  __nv_bfloat16* v(int layer) const { return base(layer, 1); }
  // [capacity, kv_heads, head_dim] K before RoPE; null without gate keys.
  __nv_bfloat16* gate_k(int layer) const;

  // Copies through a stream of the cache's own, so a finished layer can be
  // read while the engine computes the next ones on its stream.
  Status ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const override;
  Status WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) override;

 private:
  DeviceKvCache(KvLayout layout, int capacity, bool gate_keys) : KvCache(layout, capacity, gate_keys) {}
  __nv_bfloat16* base(int layer, int which) const;
  Status CheckRange(const char* op, int layer, int t0, int n) const;

  DeviceBuffer storage_;
  DeviceBuffer gate_storage_;
  cudaStream_t copy_stream_ = nullptr;
};

}  // namespace seer
