// The sending end of a gRPC KV transfer: the KvChunk messages of a prefill's
// KV cache as grpc::ByteBuffers (rpc/kv_chunk_codec.h, EncodeKvChunk), in the
// wire encoding the handshake chose (docs/KV_TRANSPORT.md, section 4).
//
//   - The CPU engine's float32 cache: K and V are referenced where they are,
//     head by head (no copy); the message keeps its layer's storage (not
//     the whole cache) and the cache's budget share alive until gRPC lets it
//     go. fp8: quantised with the CPU twin (kernels/kv_quant).
//   - The CUDA engine's cache: copied into a pinned buffer from a pool shared
//     by the process (one cudaMemcpy2DAsync per tensor), which goes back to
//     the pool once gRPC has sent the message. fp8: quantised on the GPU from
//     the cache at its pitch, then the codes and scales are copied out.
//   - Any other cache: read with ReadLayer into a heap buffer.
//
// Make is called on gRPC threads, while the engine computes later layers
// into the same cache (a layer is final once its LayerDone came).
#pragma once

#include <cstddef>
#include <memory>

#include <grpcpp/support/byte_buffer.h>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "rpc/landing/kv_landing.h"

namespace seer {

class KvChunkSource {
 public:
  // fp8: E4M3 codes with a float32 scale per (head, kFp8ScaleBlockTokens
  // tokens). `cache` is kept alive by the source; a message made keeps alive
  // only what it references (a host cache's layer, a pinned copy). A message
  // that references the cache's own memory (a host cache's layer) also holds
  // `with_cache_memory` (the server's budget share for the cache) until gRPC
  // lets it go.
  static StatusOr<std::shared_ptr<KvChunkSource>> Create(std::shared_ptr<const KvCache> cache, bool fp8,
                                                         std::shared_ptr<const void> with_cache_memory = nullptr);
  virtual ~KvChunkSource() = default;

  // PrefillResponse{chunk} of tokens [t0, t0 + n) of `layer` (fp8: t0 a
  // multiple of the scale block).
  virtual StatusOr<grpc::ByteBuffer> Make(int layer, int t0, int n) const = 0;

  const KvWireFormat& wire() const { return wire_; }
  const KvLayout& layout() const { return cache_->layout(); }
  // K and V bytes (fp8: codes) of `tokens` tokens, and K and V scale bytes.
  size_t KvBytes(int tokens) const { return 2 * KvWireBytes(layout(), wire_, tokens); }
  size_t ScaleBytes(int tokens) const { return 2 * KvWireScaleBytes(layout(), wire_, tokens); }

 protected:
  KvChunkSource(std::shared_ptr<const KvCache> cache, const KvWireFormat& wire)
      : cache_(std::move(cache)), wire_(wire) {}
  std::shared_ptr<const KvCache> cache_;
  KvWireFormat wire_;
};

}  // namespace seer
