#include "rpc/kv_chunk_source.h"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/kv_quant/kv_quant_cpu.h"
#include "rpc/kv_chunk_codec.h"
#include "rpc/kv_handshake.h"

#ifdef SEER_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_kv_cache.h"
#include "kernels/kv_quant/kv_quant.h"
#endif

namespace seer {
namespace {

KvChunkRef ChunkHeader(int layer, int t0, int n) {
  KvChunkRef c;
  c.layer = layer;
  c.token_start = t0;
  c.token_count = n;
  return c;
}

// The CPU engine's float32 cache: K and V referenced in place, head by head.
class HostChunkSource final : public KvChunkSource {
 public:
  HostChunkSource(std::shared_ptr<const KvCache> cache, const KvWireFormat& wire,
                  std::shared_ptr<const void> with_cache_memory)
      : KvChunkSource(std::move(cache), wire),
        host_(static_cast<const HostKvCache*>(cache_.get())),
        with_cache_memory_(std::move(with_cache_memory)) {}

  StatusOr<grpc::ByteBuffer> Make(int layer, int t0, int n) const override {
    const KvLayout& l = layout();
    KvChunkRef c = ChunkHeader(layer, t0, n);
    const size_t pitch = static_cast<size_t>(host_->capacity()) * l.head_dim;  // floats per head
    if (!wire_.fp8) {
      const size_t row = static_cast<size_t>(n) * l.head_dim * sizeof(float);
      for (int h = 0; h < l.num_kv_heads; ++h) {
        const size_t at = h * pitch + static_cast<size_t>(t0) * l.head_dim;
        c.k.Add(host_->k(layer) + at, row);
        c.v.Add(host_->v(layer) + at, row);
      }
      // The chunk holds its layer, not the cache: a stream cancelled with a
      // write stuck in its socket frees every other layer at once. The
      // layer is still the cache's memory, so what is charged for it stays
      // charged with it.
      std::shared_ptr<const void> keep = host_->LayerStorage(layer);
      if (with_cache_memory_ != nullptr) {
        keep = std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
            std::move(keep), with_cache_memory_);
      }
      return EncodeKvChunk(c, std::move(keep));
    }
    const size_t elems = static_cast<size_t>(l.num_kv_heads) * n * l.head_dim;
    auto codes = std::make_shared<std::vector<uint8_t>>(2 * elems);
    const int blocks = kvq::ScaleBlocks(n, wire_.block_tokens);
    c.k_scales.resize(static_cast<size_t>(l.num_kv_heads) * blocks);
    c.v_scales.resize(c.k_scales.size());
    const size_t first = static_cast<size_t>(t0) * l.head_dim;
    kvq::QuantizeE4m3(kvq::KvElem::kF32, host_->k(layer) + first, static_cast<int64_t>(pitch), l.num_kv_heads, n,
                      l.head_dim, wire_.block_tokens, codes->data(), c.k_scales.data());
    kvq::QuantizeE4m3(kvq::KvElem::kF32, host_->v(layer) + first, static_cast<int64_t>(pitch), l.num_kv_heads, n,
                      l.head_dim, wire_.block_tokens, codes->data() + elems, c.v_scales.data());
    c.k.Add(codes->data(), elems);
    c.v.Add(codes->data() + elems, elems);
    return EncodeKvChunk(c, codes);
  }

 private:
  const HostKvCache* host_;
  const std::shared_ptr<const void> with_cache_memory_;  // held by every chunk too
};

// Any other cache: ReadLayer into a heap buffer (fp8 through float32).
class ReadLayerChunkSource final : public KvChunkSource {
 public:
  ReadLayerChunkSource(std::shared_ptr<const KvCache> cache, const KvWireFormat& wire)
      : KvChunkSource(std::move(cache), wire) {}

  StatusOr<grpc::ByteBuffer> Make(int layer, int t0, int n) const override {
    const KvLayout& l = layout();
    const size_t bytes = l.LayerBytes(n);
    auto buffer = std::make_shared<std::vector<uint8_t>>(2 * bytes);
    SEER_RETURN_IF_ERROR(cache_->ReadLayer(layer, t0, n, buffer->data(), buffer->data() + bytes)
                             .WithContext("seer-prefill: reading the KV cache"));
    KvChunkRef c = ChunkHeader(layer, t0, n);
    if (!wire_.fp8) {
      c.k.Add(buffer->data(), bytes);
      c.v.Add(buffer->data() + bytes, bytes);
      return EncodeKvChunk(c, buffer);
    }
    const size_t elems = static_cast<size_t>(l.num_kv_heads) * n * l.head_dim;
    std::vector<float> f(elems);
    auto codes = std::make_shared<std::vector<uint8_t>>(2 * elems);
    const int blocks = kvq::ScaleBlocks(n, wire_.block_tokens);
    c.k_scales.resize(static_cast<size_t>(l.num_kv_heads) * blocks);
    c.v_scales.resize(c.k_scales.size());
    for (int which = 0; which < 2; ++which) {
      if (!ConvertToFloat(l.dtype, buffer->data() + which * bytes, elems, f.data()))
        return Internal("seer-prefill: KV type " + std::string(DTypeName(l.dtype)) + " cannot be quantised");
      kvq::QuantizeE4m3(kvq::KvElem::kF32, f.data(), static_cast<int64_t>(n) * l.head_dim, l.num_kv_heads, n,
                        l.head_dim, wire_.block_tokens, codes->data() + which * elems,
                        (which == 0 ? c.k_scales : c.v_scales).data());
    }
    c.k.Add(codes->data(), elems);
    c.v.Add(codes->data() + elems, elems);
    return EncodeKvChunk(c, codes);
  }
};

#ifdef SEER_HAVE_CUDA

// Pinned host buffers, reused across requests: cudaMallocHost costs far more
// than the copy into it. Sizes are rounded up to 1 MiB so that chunks of
// nearby sizes share buffers; up to kMaxCachedBytes wait for reuse, the rest
// are freed. Never destroyed (freeing pinned memory after CUDA's teardown
// at exit fails).
class PinnedPool {
 public:
  static PinnedPool& Get() {
    static PinnedPool* pool = new PinnedPool();
    return *pool;
  }

  std::shared_ptr<uint8_t> Take(size_t bytes) {
    const size_t size = (bytes + kGrain - 1) / kGrain * kGrain;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        p = it->second;
        free_.erase(it);
        cached_ -= size;
      }
    }
    if (p == nullptr && cudaMallocHost(&p, size) != cudaSuccess) {
      cudaGetLastError();
      // No pinned memory left: pageable memory works, only slower.
      return std::shared_ptr<uint8_t>(new uint8_t[size], std::default_delete<uint8_t[]>());
    }
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [this, size](uint8_t* q) { Give(q, size); });
  }

 private:
  static constexpr size_t kGrain = size_t{1} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{256} << 20;

  void Give(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + size <= kMaxCachedBytes) {
        free_.emplace(size, p);
        cached_ += size;
        return;
      }
    }
    cudaFreeHost(p);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// The caller's current device is put back when this goes out of scope.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&saved_) != cudaSuccess) saved_ = -1;
    ok_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceScope() {
    if (saved_ >= 0) cudaSetDevice(saved_);
  }
  bool ok() const { return ok_; }

 private:
  int saved_ = -1;
  bool ok_ = false;
};

// The CUDA engine's bf16 cache: into a pinned buffer (fp8: quantised on the
// GPU first).
class DeviceChunkSource final : public KvChunkSource {
 public:
  DeviceChunkSource(std::shared_ptr<const KvCache> cache, const KvWireFormat& wire)
      : KvChunkSource(std::move(cache), wire), device_cache_(static_cast<const DeviceKvCache*>(cache_.get())) {}

  ~DeviceChunkSource() override {
    if (stream_ != nullptr) {
      DeviceScope scope(device_);
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
  }

  Status Init() {
    cudaPointerAttributes attr{};
    SEER_RETURN_IF_CUDA_ERROR(cudaPointerGetAttributes(&attr, device_cache_->k(0)));
    device_ = attr.device;
    return OkStatus();
  }

  StatusOr<grpc::ByteBuffer> Make(int layer, int t0, int n) const override {
    const KvLayout& l = layout();
    KvChunkRef c = ChunkHeader(layer, t0, n);
    if (!wire_.fp8) {
      const size_t bytes = l.LayerBytes(n);
      std::shared_ptr<uint8_t> pinned = PinnedPool::Get().Take(2 * bytes);
      SEER_RETURN_IF_ERROR(device_cache_->ReadLayer(layer, t0, n, pinned.get(), pinned.get() + bytes)
                               .WithContext("seer-prefill: reading the KV cache"));
      c.k.Add(pinned.get(), bytes);
      c.v.Add(pinned.get() + bytes, bytes);
      return EncodeKvChunk(c, pinned);
    }
    const size_t elems = static_cast<size_t>(l.num_kv_heads) * n * l.head_dim;
    const int blocks = kvq::ScaleBlocks(n, wire_.block_tokens);
    const size_t scales = static_cast<size_t>(l.num_kv_heads) * blocks;
    // Codes for K and V, then the scales: one copy out.
    const size_t bytes = 2 * elems + 2 * scales * sizeof(float);
    std::shared_ptr<uint8_t> pinned = PinnedPool::Get().Take(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      DeviceScope scope(device_);
      if (!scope.ok()) return Internal("seer-prefill: cannot use CUDA device " + std::to_string(device_));
      if (stream_ == nullptr) SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      if (scratch_bytes_ < bytes) {
        if (scratch_ != nullptr) cudaFree(scratch_);
        scratch_ = nullptr;
        scratch_bytes_ = 0;
        SEER_RETURN_IF_CUDA_ERROR(cudaMalloc(&scratch_, bytes));
        scratch_bytes_ = bytes;
      }
      auto* dev = static_cast<uint8_t*>(scratch_);
      // Scales after 2 * elems bytes of codes: elems is a multiple of head_dim
      // (head_dim % 4 == 0 for fp8, checked at Create), so floats stay aligned.
      auto* dev_scales = reinterpret_cast<float*>(dev + 2 * elems);
      const int64_t pitch = static_cast<int64_t>(device_cache_->capacity()) * l.head_dim;
      const size_t first = static_cast<size_t>(t0) * l.head_dim;
      SEER_RETURN_IF_CUDA_ERROR(cuda::QuantizeKvE4m3(device_cache_->k(layer) + first, pitch, l.num_kv_heads, n,
                                                     l.head_dim, wire_.block_tokens, dev, dev_scales, stream_));
      SEER_RETURN_IF_CUDA_ERROR(cuda::QuantizeKvE4m3(device_cache_->v(layer) + first, pitch, l.num_kv_heads, n,
                                                     l.head_dim, wire_.block_tokens, dev + elems, dev_scales + scales,
                                                     stream_));
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(pinned.get(), dev, bytes, cudaMemcpyDeviceToHost, stream_));
      SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
    }
    const float* host_scales = reinterpret_cast<const float*>(pinned.get() + 2 * elems);
    c.k_scales.assign(host_scales, host_scales + scales);
    c.v_scales.assign(host_scales + scales, host_scales + 2 * scales);
    c.k.Add(pinned.get(), elems);
    c.v.Add(pinned.get() + elems, elems);
    return EncodeKvChunk(c, pinned);
  }

 private:
  const DeviceKvCache* device_cache_;
  int device_ = 0;
  // fp8: one quantisation at a time per request (its streams share these).
  mutable std::mutex mu_;
  mutable cudaStream_t stream_ = nullptr;
  mutable void* scratch_ = nullptr;
  mutable size_t scratch_bytes_ = 0;
};

#endif  // SEER_HAVE_CUDA

}  // namespace

StatusOr<std::shared_ptr<KvChunkSource>> KvChunkSource::Create(std::shared_ptr<const KvCache> cache, bool fp8,
                                                               std::shared_ptr<const void> with_cache_memory) {
  if (cache == nullptr) return InvalidArgument("KV chunk source: null cache");
  KvWireFormat wire;
  wire.dtype = cache->layout().dtype;
  wire.fp8 = fp8;
  wire.block_tokens = kFp8ScaleBlockTokens;
  if (fp8 && cache->layout().head_dim % 4 != 0)
    return InvalidArgument("KV chunk source: fp8 needs head_dim % 4 == 0, the model has " +
                           std::to_string(cache->layout().head_dim));
#ifdef SEER_HAVE_CUDA
  if (dynamic_cast<const DeviceKvCache*>(cache.get()) != nullptr) {
    auto source = std::make_shared<DeviceChunkSource>(std::move(cache), wire);
    SEER_RETURN_IF_ERROR(source->Init());
    return std::shared_ptr<KvChunkSource>(std::move(source));
  }
#endif
  if (dynamic_cast<const HostKvCache*>(cache.get()) != nullptr && cache->layout().dtype == DType::kF32) {
    return std::shared_ptr<KvChunkSource>(
        std::make_shared<HostChunkSource>(std::move(cache), wire, std::move(with_cache_memory)));
  }
  return std::shared_ptr<KvChunkSource>(std::make_shared<ReadLayerChunkSource>(std::move(cache), wire));
}

}  // namespace seer
