#include "engine/cuda/device_kv_cache.h"

#include <cstdint>
#include <string>
#include <vector>

#include "engine/cuda/cuda_status.h"

namespace seer {

size_t DeviceKvCache::BytesFor(int num_layers, int num_kv_heads, int head_dim, int capacity, bool gate_keys) {
  return (gate_keys ? 3 : 2) * static_cast<size_t>(num_layers) * num_kv_heads * static_cast<size_t>(capacity) *
         head_dim * sizeof(__nv_bfloat16);
}

StatusOr<std::unique_ptr<DeviceKvCache>> DeviceKvCache::Create(int num_layers, int num_kv_heads, int head_dim,
                                                               int capacity, bool gate_keys) {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
    return InvalidArgument("KV cache: layers, kv heads and head_dim must be positive");
  }
  if (capacity <= 0) {
    return InvalidArgument("KV cache: capacity must be at least 1 token, got " + std::to_string(capacity));
  }
  KvLayout layout;
  layout.num_layers = num_layers;
  layout.num_kv_heads = num_kv_heads;
  layout.head_dim = head_dim;
  layout.dtype = DType::kBF16;
  std::unique_ptr<DeviceKvCache> cache(new DeviceKvCache(layout, capacity, gate_keys));
  SEER_ASSIGN_OR_RETURN(cache->storage_,
                        DeviceBuffer::Allocate(BytesFor(num_layers, num_kv_heads, head_dim, capacity),
                                               "the KV cache of " + std::to_string(capacity) + " tokens"));
  if (gate_keys) {
    SEER_ASSIGN_OR_RETURN(cache->gate_storage_,
                          DeviceBuffer::Allocate(BytesFor(num_layers, num_kv_heads, head_dim, capacity) / 2,
                                                 "the gate keys of " + std::to_string(capacity) + " tokens"));
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&cache->copy_stream_, cudaStreamNonBlocking));
  return cache;
}

DeviceKvCache::~DeviceKvCache() {
  if (copy_stream_ != nullptr) cudaStreamDestroy(copy_stream_);
}

__nv_bfloat16* DeviceKvCache::base(int layer, int which) const {
  const size_t per = static_cast<size_t>(layout_.num_kv_heads) * capacity_ * layout_.head_dim;
  return storage_.as<__nv_bfloat16>() + (static_cast<size_t>(layer) * 2 + which) * per;
}

__nv_bfloat16* DeviceKvCache::gate_k(int layer) const {
  if (!has_gate_keys()) return nullptr;
  const size_t per = static_cast<size_t>(layout_.num_kv_heads) * capacity_ * layout_.head_dim;
  return gate_storage_.as<__nv_bfloat16>() + static_cast<size_t>(layer) * per;
}

Status DeviceKvCache::CheckRange(const char* op, int layer, int t0, int n) const {
  if (layer < 0 || layer >= layout_.num_layers) {
    return InvalidArgument(std::string("KV cache ") + op + ": layer " + std::to_string(layer) + " is outside [0, " +
                           std::to_string(layout_.num_layers) + ")");
  }
  if (t0 < 0 || n < 0 || static_cast<int64_t>(t0) + n > capacity_) {
    return OutOfRange(std::string("KV cache ") + op + ": tokens [" + std::to_string(t0) + ", " +
                      std::to_string(static_cast<int64_t>(t0) + n) + ") exceed the capacity of " +
                      std::to_string(capacity_));
  }
  return OkStatus();
}

Status DeviceKvCache::ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const {
  SEER_RETURN_IF_ERROR(CheckRange("ReadLayer", layer, t0, n));
  if (n == 0) return OkStatus();
  if (k_out == nullptr || v_out == nullptr) return InvalidArgument("KV cache ReadLayer: null K or V output");
  const size_t row = static_cast<size_t>(n) * layout_.head_dim * sizeof(__nv_bfloat16);
  const size_t pitch = static_cast<size_t>(capacity_) * layout_.head_dim * sizeof(__nv_bfloat16);
  const size_t offset = static_cast<size_t>(t0) * layout_.head_dim;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(k_out, row, k(layer) + offset, pitch, row, layout_.num_kv_heads,
                                              cudaMemcpyDeviceToHost, copy_stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(v_out, row, v(layer) + offset, pitch, row, layout_.num_kv_heads,
                                              cudaMemcpyDeviceToHost, copy_stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(copy_stream_));
  return OkStatus();
}

Status DeviceKvCache::WriteLayer(int layer, int t0, int n, DType src, const void* k_in, const void* v_in) {
  SEER_RETURN_IF_ERROR(CheckRange("WriteLayer", layer, t0, n));
  if (n == 0) return OkStatus();
  if (k_in == nullptr || v_in == nullptr) return InvalidArgument("KV cache WriteLayer: null K or V data");
  const size_t count = static_cast<size_t>(layout_.num_kv_heads) * n * layout_.head_dim;
  const size_t row = static_cast<size_t>(n) * layout_.head_dim * sizeof(__nv_bfloat16);
  const size_t pitch = static_cast<size_t>(capacity_) * layout_.head_dim * sizeof(__nv_bfloat16);
  const size_t offset = static_cast<size_t>(t0) * layout_.head_dim;

  // Other types are converted on the host: the chunks are small (the wire
  // bounds them at a few MiB) and the copy to the device dominates anyway.
  std::vector<uint16_t> k_bf16, v_bf16;
  const void* k_src = k_in;
  const void* v_src = v_in;
  if (src != DType::kBF16) {
    std::vector<float> tmp(count);
    k_bf16.resize(count);
    v_bf16.resize(count);
    for (int which = 0; which < 2; ++which) {
      if (!ConvertToFloat(src, which == 0 ? k_in : v_in, count, tmp.data())) {
        return InvalidArgument("KV cache WriteLayer: source dtype " + std::string(DTypeName(src)) +
                               " is not a float type (need F64, F32, F16 or BF16)");
      }
      std::vector<uint16_t>& dst = which == 0 ? k_bf16 : v_bf16;
      for (size_t i = 0; i < count; ++i) dst[i] = FloatToBf16(tmp[i]);
    }
    k_src = k_bf16.data();
    v_src = v_bf16.data();
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(k(layer) + offset, pitch, k_src, row, row, layout_.num_kv_heads,
                                              cudaMemcpyHostToDevice, copy_stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(v(layer) + offset, pitch, v_src, row, row, layout_.num_kv_heads,
                                              cudaMemcpyHostToDevice, copy_stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(copy_stream_));
  return OkStatus();
}

}  // namespace seer
