// The KV cache of one request: per layer, K (after RoPE) and V, laid out
// [kv_heads, capacity, head_dim]. Backends own the storage; the service moves
// it with ReadLayer / WriteLayer in the wire layout [kv_heads, n, head_dim].
//
// A cache made with gate keys also holds each layer's K before RoPE, laid
// out [capacity, kv_heads, head_dim] as the projection writes it: what the
// SeerAttention gate pools. A gated prefill that continues from a cached
// prefix (Engine::Prefill) needs the prefix's gate keys, which cannot be
// recovered exactly from K after RoPE; nothing else reads them, and they
// never go on the wire.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace seer {

struct KvLayout {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF32;  // element type of the storage and of ReadLayer's output

  // Bytes of K (or V) for `tokens` tokens of one layer.
  size_t LayerBytes(int tokens) const {
    return static_cast<size_t>(num_kv_heads) * tokens * head_dim * DTypeSize(dtype);
  }
};

class KvCache {
 public:
  KvCache(KvLayout layout, int capacity, bool gate_keys = false)
      : layout_(layout), capacity_(capacity), gate_keys_(gate_keys) {}
  virtual ~KvCache() = default;
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvLayout& layout() const { return layout_; }
  int capacity() const { return capacity_; }
  // Whether the cache holds each layer's K before RoPE too.
  bool has_gate_keys() const { return gate_keys_; }
  // Tokens whose K/V are present in every layer.
  int length() const { return length_; }
  void set_length(int n) { length_ = n; }

  // Copies tokens [t0, t0 + n) of `layer` out as [kv_heads, n, head_dim] in
  // layout().dtype.
  virtual Status ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const = 0;
  // Writes tokens [t0, t0 + n) of `layer` from [kv_heads, n, head_dim] data of
  // type `src` (converted when it differs from the storage type). Checks
  // every bound.
  virtual Status WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) = 0;

 protected:
  KvLayout layout_;
  int capacity_;
  bool gate_keys_;
  int length_ = 0;
};

// Host storage in float32: what the CPU reference model reads and writes.
// Each layer is its own allocation, which LayerStorage can keep alive on its
// own: a KV chunk handed to gRPC holds its layer, not the whole cache, so a
// cancelled stream whose last write is stuck in a socket frees the rest.
class HostKvCache final : public KvCache {
 public:
  HostKvCache(int num_layers, int num_kv_heads, int head_dim, int capacity, bool gate_keys = false);

  float* k(int layer) { return layers_[layer]->k.data(); }
  float* v(int layer) { return layers_[layer]->v.data(); }
  const float* k(int layer) const { return layers_[layer]->k.data(); }
  const float* v(int layer) const { return layers_[layer]->v.data(); }
  // [capacity, kv_heads, head_dim] K before RoPE; null without gate keys.
  float* gate_k(int layer) { return gate_keys_ ? layers_[layer]->gate_k.data() : nullptr; }
  const float* gate_k(int layer) const { return gate_keys_ ? layers_[layer]->gate_k.data() : nullptr; }
  // Keeps `layer`'s K and V alive, whatever becomes of the cache.
  std::shared_ptr<const void> LayerStorage(int layer) const { return layers_[layer]; }

  Status ReadLayer(int layer, int t0, int n, void* k_out, void* v_out) const override;
  Status WriteLayer(int layer, int t0, int n, DType src, const void* k, const void* v) override;

 private:
  struct Layer {
    std::vector<float> k, v, gate_k;
  };
  std::vector<std::shared_ptr<Layer>> layers_;
};

}  // namespace seer
