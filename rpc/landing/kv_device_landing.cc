#include "rpc/landing/kv_device_landing.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/cuda/device_page_pool.h"
#include "kernels/kv_quant/e4m3.h"
#include "kernels/kv_quant/kv_quant.h"
#include "kernels/paged_kv/paged_kv.h"

namespace seer {
namespace {

Status CudaFailed(const char* what, cudaError_t e) {
  return Internal(std::string("KV device landing: ") + what + ": " + cudaGetErrorString(e));
}

#define SEER_LANDING_CUDA(expr)                                    \
  do {                                                             \
    const cudaError_t seer_e_ = (expr);                            \
    if (seer_e_ != cudaSuccess) return CudaFailed(#expr, seer_e_); \
  } while (0)

// Where a chunk's K or V goes on the device: a contiguous cache's layer at
// its token offset, or (paged) a scratch slot the page kernel scatters from.
class DeviceKvLanding final : public KvLanding {
 public:
  DeviceKvLanding(DeviceKvCache* cache, const KvWireFormat& wire, int max_tokens, int slots)
      : cache_(cache), contiguous_(cache), wire_(wire), max_tokens_(max_tokens), slots_(slots) {}
  DeviceKvLanding(PagedKvCache* cache, DevicePagePool* pool, const KvWireFormat& wire, int max_tokens, int slots)
      : cache_(cache), paged_(cache), pool_(pool), wire_(wire), max_tokens_(max_tokens), slots_(slots) {}

  ~DeviceKvLanding() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (cudaEvent_t e : done_) cudaEventDestroy(e);
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (pages_scratch_ != nullptr) cudaFree(pages_scratch_);
    if (table_ != nullptr) cudaFree(table_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status Init() {
    if (contiguous_ != nullptr) {
      cudaPointerAttributes attr{};
      SEER_LANDING_CUDA(cudaPointerGetAttributes(&attr, contiguous_->k(0)));
      device_ = attr.device;
    } else {
      device_ = pool_->device();
    }
    SEER_LANDING_CUDA(cudaSetDevice(device_));
    const KvLayout& l = cache_->layout();
    // A slot holds K and V at their widest (f32 on the wire) plus fp8 scales.
    const size_t elems = static_cast<size_t>(l.num_kv_heads) * max_tokens_ * l.head_dim;
    slot_bytes_ = 2 * (elems * (wire_.fp8 ? 1 : DTypeSize(wire_.dtype)) + KvWireScaleBytes(l, wire_, max_tokens_));
    slot_bytes_ = (slot_bytes_ + 255) / 256 * 256;
    SEER_LANDING_CUDA(cudaMallocHost(&pinned_, slot_bytes_ * slots_));
    if (wire_.fp8) SEER_LANDING_CUDA(cudaMalloc(&scratch_, slot_bytes_ * slots_));
    if (paged_ != nullptr) {
      // bf16 K then V per slot, and the request's block table.
      pages_slot_elems_ = elems;
      SEER_LANDING_CUDA(cudaMalloc(&pages_scratch_, 2 * elems * sizeof(__nv_bfloat16) * slots_));
    }
    SEER_LANDING_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    if (paged_ != nullptr) {
      // On the landing's own stream, ahead of the scatters that read it. (A
      // plain cudaMemcpy from pageable memory may return before its DMA
      // lands, and nothing orders it before work on a non-blocking stream:
      // under load the scatters read a stale table and wrote the KV into
      // other pages.)
      const std::vector<int32_t>& pages = paged_->pages();
      SEER_LANDING_CUDA(cudaMalloc(&table_, sizeof(int32_t) * std::max<size_t>(1, pages.size())));
      SEER_LANDING_CUDA(
          cudaMemcpyAsync(table_, pages.data(), sizeof(int32_t) * pages.size(), cudaMemcpyHostToDevice, stream_));
    }
    done_.assign(slots_, nullptr);
    for (cudaEvent_t& e : done_) SEER_LANDING_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return OkStatus();
  }

  Status Land(const KvChunkPieces& c) override {
    const KvLayout& l = cache_->layout();
    SEER_RETURN_IF_ERROR(CheckKvChunk(l, wire_, cache_->capacity(), c));
    if (c.token_count > max_tokens_)
      return DataLoss("KV chunk token_count: " + std::to_string(c.token_count) + " exceeds the " +
                      std::to_string(max_tokens_) + " tokens a chunk may carry");
    SEER_LANDING_CUDA(cudaSetDevice(device_));
    const int slot = static_cast<int>(next_++ % slots_);
    // The slot's previous copy must be done before its bytes are overwritten.
    SEER_LANDING_CUDA(cudaEventSynchronize(done_[slot]));
    uint8_t* host = static_cast<uint8_t*>(pinned_) + slot * slot_bytes_;
    const size_t n = static_cast<size_t>(l.num_kv_heads) * c.token_count * l.head_dim;
    // Destination K/V: the cache's rows (pitch: its capacity), or the slot's
    // scratch (pitch: the chunk's tokens), scattered into the pages below.
    const size_t pitch = static_cast<size_t>(paged_ != nullptr ? c.token_count : cache_->capacity()) * l.head_dim;
    const size_t t0 = paged_ != nullptr ? 0 : static_cast<size_t>(c.token_start) * l.head_dim;
    auto destination = [&](int which) -> __nv_bfloat16* {
      if (paged_ != nullptr) return pages_scratch_ + (2 * slot + which) * pages_slot_elems_;
      return (which == 0 ? contiguous_->k(c.layer) : contiguous_->v(c.layer)) + t0;
    };
    if (wire_.fp8) {
      const size_t scale_bytes = c.k_scales.size();
      uint8_t* parts[4] = {host, host + n, host + 2 * n, host + 2 * n + scale_bytes};
      c.k.CopyTo(0, n, parts[0]);
      c.v.CopyTo(0, n, parts[1]);
      c.k_scales.CopyTo(0, scale_bytes, parts[2]);
      c.v_scales.CopyTo(0, scale_bytes, parts[3]);
      uint8_t* dev = static_cast<uint8_t*>(scratch_) + slot * slot_bytes_;
      const size_t total = 2 * n + 2 * scale_bytes;
      SEER_LANDING_CUDA(cudaMemcpyAsync(dev, host, total, cudaMemcpyHostToDevice, stream_));
      for (int which = 0; which < 2; ++which) {
        const uint8_t* codes = dev + which * n;
        // Scales follow the codes; their offset keeps float alignment when n % 4 == 0.
        const float* scales = reinterpret_cast<const float*>(dev + 2 * n + which * scale_bytes);
        __nv_bfloat16* dst = destination(which);
        SEER_LANDING_CUDA(cuda::DequantizeKvE4m3(codes, scales, l.num_kv_heads, c.token_count, l.head_dim,
                                                 wire_.block_tokens, dst, static_cast<int64_t>(pitch), stream_));
      }
    } else {
      const size_t esize = DTypeSize(wire_.dtype);
      for (int which = 0; which < 2; ++which) {
        uint8_t* part = host + which * n * esize;
        (which == 0 ? c.k : c.v).CopyTo(0, n * esize, part);
        auto* out = reinterpret_cast<uint16_t*>(part);
        if (wire_.dtype == DType::kF32) {
          // In place, front to back: element i's 2 bytes never pass element i's 4.
          const float* in = reinterpret_cast<const float*>(part);
          for (size_t i = 0; i < n; ++i) out[i] = kvq::FloatToBf16Rne(in[i]);
        } else if (wire_.dtype == DType::kF16) {
          const uint16_t* in = reinterpret_cast<const uint16_t*>(part);
          for (size_t i = 0; i < n; ++i) out[i] = kvq::FloatToBf16Rne(Fp16ToFloat(in[i]));
        }
        const size_t row = static_cast<size_t>(c.token_count) * l.head_dim * 2;
        __nv_bfloat16* dst = destination(which);
        SEER_LANDING_CUDA(
            cudaMemcpy2DAsync(dst, pitch * 2, part, row, row, l.num_kv_heads, cudaMemcpyHostToDevice, stream_));
      }
    }
    if (paged_ != nullptr) {
      for (int which = 0; which < 2; ++which) {
        SEER_LANDING_CUDA(cuda::ScatterToPagesStrided(destination(which), c.token_count, c.token_start, c.token_count,
                                                      table_, l.num_kv_heads, l.head_dim, pool_->layout().page_tokens,
                                                      which == 0 ? pool_->k(c.layer) : pool_->v(c.layer), stream_));
      }
    }
    SEER_LANDING_CUDA(cudaEventRecord(done_[slot], stream_));
    return OkStatus();
  }

  Status Flush() override {
    SEER_LANDING_CUDA(cudaSetDevice(device_));
    SEER_LANDING_CUDA(cudaStreamSynchronize(stream_));
    return OkStatus();
  }

 private:
  KvCache* cache_;
  DeviceKvCache* contiguous_ = nullptr;
  PagedKvCache* paged_ = nullptr;
  DevicePagePool* pool_ = nullptr;
  KvWireFormat wire_;
  int max_tokens_;
  int slots_;
  int device_ = 0;
  size_t slot_bytes_ = 0;
  void* pinned_ = nullptr;
  void* scratch_ = nullptr;
  __nv_bfloat16* pages_scratch_ = nullptr;  // paged: bf16 K, V per slot
  size_t pages_slot_elems_ = 0;
  int32_t* table_ = nullptr;  // paged: the block table on the device
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> done_;
  uint64_t next_ = 0;
};

}  // namespace

namespace {

Status CheckLandingArgs(const KvCache* cache, const KvWireFormat& wire, int max_chunk_tokens, int slots) {
  if (cache == nullptr) return InvalidArgument("KV device landing: null cache");
  if (max_chunk_tokens < 1 || slots < 2) return InvalidArgument("KV device landing: max_chunk_tokens >= 1, slots >= 2");
  if (!wire.fp8 && wire.dtype != DType::kF32 && wire.dtype != DType::kBF16 && wire.dtype != DType::kF16)
    return InvalidArgument("KV device landing: wire dtype " + std::string(DTypeName(wire.dtype)));
  if (wire.fp8 && (wire.block_tokens < 1 || cache->layout().head_dim % 4 != 0))
    return InvalidArgument("KV device landing: fp8 needs block_tokens >= 1 and head_dim % 4 == 0");
  return OkStatus();
}

StatusOr<std::unique_ptr<KvLanding>> Started(std::unique_ptr<DeviceKvLanding> landing) {
  SEER_RETURN_IF_ERROR(landing->Init());
  return std::unique_ptr<KvLanding>(std::move(landing));
}

}  // namespace

StatusOr<std::unique_ptr<KvLanding>> MakeDeviceKvLanding(DeviceKvCache* cache, const KvWireFormat& wire,
                                                         int max_chunk_tokens, int slots) {
  SEER_RETURN_IF_ERROR(CheckLandingArgs(cache, wire, max_chunk_tokens, slots));
  return Started(std::make_unique<DeviceKvLanding>(cache, wire, max_chunk_tokens, slots));
}

StatusOr<std::unique_ptr<KvLanding>> MakePagedDeviceKvLanding(PagedKvCache* cache, const KvWireFormat& wire,
                                                              int max_chunk_tokens, int slots) {
  SEER_RETURN_IF_ERROR(CheckLandingArgs(cache, wire, max_chunk_tokens, slots));
  auto* pool = dynamic_cast<DevicePagePool*>(cache->pool());
  if (pool == nullptr) return InvalidArgument("KV device landing: the paged cache's pool is not on a GPU");
  return Started(std::make_unique<DeviceKvLanding>(cache, pool, wire, max_chunk_tokens, slots));
}

}  // namespace seer
