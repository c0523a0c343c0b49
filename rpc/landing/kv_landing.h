// Where received KV chunks land: the decode worker's cache, written straight
// from the bytes as the transport received them (gRPC slices, in pieces),
// without first gathering them into protobuf strings.
//
// A chunk carries tokens [token_start, token_start + token_count) of one
// layer, K and V laid out [kv_heads, token_count, head_dim] in the wire
// encoding (the header's kv_dtype, or fp8 E4M3 codes with float32 scales
// [kv_heads, ceil(token_count / block_tokens)], kernels/kv_quant), each as a
// list of byte pieces. Land() checks every size against the layout.
//
// MakeHostKvLanding writes any KvCache (the CPU engine's float32 cache gets
// its rows converted in place, one pass from the pieces); the CUDA landing
// (kv_device_landing.h) stages into pinned memory and copies to the device
// asynchronously, so the copies overlap the receive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"
#include "engine/kv/kv_cache.h"

namespace seer {

// Bytes in pieces (e.g. the slices of a grpc::ByteBuffer), read in order.
class BytePieces {
 public:
  void Add(const void* data, size_t size) {
    if (size == 0) return;
    pieces_.emplace_back(static_cast<const uint8_t*>(data), size);
    size_ += size;
  }
  size_t size() const { return size_; }
  const std::vector<std::pair<const uint8_t*, size_t>>& pieces() const { return pieces_; }
  // Copies bytes [offset, offset + n) to dst; `streaming` writes with
  // non-temporal stores (x86), for a large destination that will not be read
  // soon.
  void CopyTo(size_t offset, size_t n, void* dst, bool streaming = false) const;

 private:
  std::vector<std::pair<const uint8_t*, size_t>> pieces_;
  size_t size_ = 0;
};

// The encoding of the K/V bytes on the wire.
struct KvWireFormat {
  DType dtype = DType::kBF16;  // F32, F16 or BF16; ignored when fp8
  bool fp8 = false;  // E4M3 codes plus a float32 scale per (head, block of tokens)
  int block_tokens = 64;  // fp8 only
};

struct KvChunkPieces {
  int layer = 0;
  int token_start = 0;
  int token_count = 0;
  BytePieces k, v;
  BytePieces k_scales, v_scales;  // fp8 only
};

// Bytes of K (or V) and of its scales for `tokens` tokens.
size_t KvWireBytes(const KvLayout& layout, const KvWireFormat& wire, int tokens);
size_t KvWireScaleBytes(const KvLayout& layout, const KvWireFormat& wire, int tokens);

// Checks a chunk's sizes and range against the layout (DATA_LOSS naming the
// field), and that an fp8 chunk starts on a block boundary.
Status CheckKvChunk(const KvLayout& layout, const KvWireFormat& wire, int capacity, const KvChunkPieces& chunk);

class KvLanding {
 public:
  virtual ~KvLanding() = default;
  // Writes the chunk into the cache (maybe asynchronously: the pieces may be
  // released as soon as Land returns).
  virtual Status Land(const KvChunkPieces& chunk) = 0;
  // Waits for every asynchronous copy; then the cache holds every landed chunk.
  virtual Status Flush() = 0;
};

// Lands into any KvCache through host memory: float32 host caches are
// written row by row from the pieces (converted, or dequantised for fp8);
// other caches through WriteLayer.
StatusOr<std::unique_ptr<KvLanding>> MakeHostKvLanding(KvCache* cache, const KvWireFormat& wire);

}  // namespace seer
