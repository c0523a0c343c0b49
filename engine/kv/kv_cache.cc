#include "engine/kv/kv_cache.h"

#include <cstring>
#include <string>

namespace seer {
namespace {

// Checks layer and token range [t0, t0 + n) against the cache; names the
// operation and every limit in the message.
Status CheckRange(const char* op, const KvLayout& layout, int capacity, int layer, int t0, int n) {
  if (layer < 0 || layer >= layout.num_layers) {
    return InvalidArgument(std::string(op) + ": layer " + std::to_string(layer) + " is out of range [0, " +
                           std::to_string(layout.num_layers) + ")");
  }
  if (t0 < 0 || n < 0 || static_cast<int64_t>(t0) + n > capacity) {
    return OutOfRange(std::string(op) + ": tokens [" + std::to_string(t0) + ", " +
                      std::to_string(static_cast<int64_t>(t0) + n) + ") are outside the cache capacity of " +
                      std::to_string(capacity) + " tokens");
  }
  return OkStatus();
}

}  // namespace

HostKvCache::HostKvCache(int num_layers, int num_kv_heads, int head_dim, int capacity, bool gate_keys)
    : KvCache(KvLayout{num_layers, num_kv_heads, head_dim, DType::kF32}, capacity, gate_keys) {
  const size_t elems = static_cast<size_t>(num_kv_heads) * capacity * head_dim;
  layers_.reserve(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    layers_.push_back(std::make_shared<Layer>(
        Layer{std::vector<float>(elems), std::vector<float>(elems), std::vector<float>(gate_keys ? elems : 0)}));
  }
}

Status HostKvCache::ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const {
  SEER_RETURN_IF_ERROR(CheckRange("ReadLayer", layout_, capacity_, layer, t0, n));
  if (n > 0 && (k_out == nullptr || v_out == nullptr)) return InvalidArgument("ReadLayer: null output buffer");
  const int D = layout_.head_dim;
  const size_t row_bytes = sizeof(float) * n * D;
  for (int h = 0; h < layout_.num_kv_heads; ++h) {
    const size_t src = (static_cast<size_t>(h) * capacity_ + t0) * D;
    const size_t dst = static_cast<size_t>(h) * n * D;
    std::memcpy(static_cast<float*>(k_out) + dst, k(layer) + src, row_bytes);
    std::memcpy(static_cast<float*>(v_out) + dst, v(layer) + src, row_bytes);
  }
  return OkStatus();
}

Status HostKvCache::WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) {
  SEER_RETURN_IF_ERROR(CheckRange("WriteLayer", layout_, capacity_, layer, t0, n));
  if (n > 0 && (k == nullptr || v == nullptr)) return InvalidArgument("WriteLayer: null input buffer");
  if (src != DType::kF32 && src != DType::kF16 && src != DType::kBF16) {
    return InvalidArgument("WriteLayer: KV data of type " + std::string(DTypeName(src)) +
                           " is not supported (F32, F16 or BF16)");
  }
  const int D = layout_.head_dim;
  const size_t row_elems = static_cast<size_t>(n) * D;
  const size_t src_elem = DTypeSize(src);
  for (int h = 0; h < layout_.num_kv_heads; ++h) {
    const size_t dst = (static_cast<size_t>(h) * capacity_ + t0) * D;
    const size_t offset = static_cast<size_t>(h) * row_elems * src_elem;
    ConvertToFloat(src, static_cast<const uint8_t*>(k) + offset, row_elems, this->k(layer) + dst);
    ConvertToFloat(src, static_cast<const uint8_t*>(v) + offset, row_elems, this->v(layer) + dst);
  }
  return OkStatus();
}

}  // namespace seer
