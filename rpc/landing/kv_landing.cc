#include "rpc/landing/kv_landing.h"

#include <algorithm>
#include <cstring>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kernels/kv_quant/e4m3.h"
#include "kernels/kv_quant/kv_quant_cpu.h"

namespace seer {
namespace {

std::string I(int64_t v) { return std::to_string(v); }

// memcpy with non-temporal stores: for a destination that is large and cold
// (a host KV cache), the stores go straight to memory instead of first
// reading every destination line into the cache. The caller fences.
void StreamBytes(uint8_t* out, const uint8_t* in, size_t n) {
#if defined(__SSE2__)
  if (n >= 4096) {
    const size_t head = (16 - reinterpret_cast<uintptr_t>(out) % 16) % 16;
    std::memcpy(out, in, head);
    out += head;
    in += head;
    n -= head;
    for (; n >= 64; n -= 64, in += 64, out += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 32));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(out), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + 48), d);
    }
  }
#endif
  std::memcpy(out, in, n);
}

}  // namespace

void BytePieces::CopyTo(size_t offset, size_t n, void* dst, bool streaming) const {
  auto* out = static_cast<uint8_t*>(dst);
  for (const auto& [p, len] : pieces_) {
    if (n == 0) break;
    if (offset >= len) {
      offset -= len;
      continue;
    }
    const size_t take = std::min(len - offset, n);
    if (streaming)
      StreamBytes(out, p + offset, take);
    else
      std::memcpy(out, p + offset, take);
    out += take;
    n -= take;
    offset = 0;
  }
#if defined(__SSE2__)
  if (streaming) _mm_sfence();  // the streamed stores are visible before the caller says the chunk landed
#endif
}

size_t KvWireBytes(const KvLayout& l, const KvWireFormat& w, int tokens) {
  const size_t elems = static_cast<size_t>(l.num_kv_heads) * tokens * l.head_dim;
  return w.fp8 ? elems : elems * DTypeSize(w.dtype);
}

size_t KvWireScaleBytes(const KvLayout& l, const KvWireFormat& w, int tokens) {
  return w.fp8 ? sizeof(float) * l.num_kv_heads * kvq::ScaleBlocks(tokens, w.block_tokens) : 0;
}

Status CheckKvChunk(const KvLayout& l, const KvWireFormat& w, int capacity, const KvChunkPieces& c) {
  if (c.layer < 0 || c.layer >= l.num_layers)
    return DataLoss("KV chunk layer: " + I(c.layer) + " is out of range [0, " + I(l.num_layers) + ")");
  if (c.token_start < 0 || c.token_count < 1 || static_cast<int64_t>(c.token_start) + c.token_count > capacity)
    return DataLoss("KV chunk tokens [" + I(c.token_start) + ", " + I(int64_t{c.token_start} + c.token_count) +
                    ") do not fit the cache of " + I(capacity));
  if (w.fp8 && c.token_start % w.block_tokens != 0)
    return DataLoss("KV chunk token_start: " + I(c.token_start) + " is not a multiple of the fp8 scale block (" +
                    I(w.block_tokens) + ")");
  const size_t want = KvWireBytes(l, w, c.token_count);
  if (c.k.size() != want || c.v.size() != want)
    return DataLoss("KV chunk k/v: " + I(c.k.size()) + " and " + I(c.v.size()) + " bytes for " + I(c.token_count) +
                    " tokens, expected " + I(want) + " each");
  const size_t scales = KvWireScaleBytes(l, w, c.token_count);
  if (c.k_scales.size() != scales || c.v_scales.size() != scales)
    return DataLoss("KV chunk k_scales/v_scales: " + I(c.k_scales.size()) + " and " + I(c.v_scales.size()) +
                    " bytes, expected " + I(scales) + " each");
  return OkStatus();
}

namespace {

class HostKvLanding final : public KvLanding {
 public:
  HostKvLanding(KvCache* cache, const KvWireFormat& wire) : cache_(cache), wire_(wire) {}

  Status Land(const KvChunkPieces& c) override {
    const KvLayout& l = cache_->layout();
    SEER_RETURN_IF_ERROR(CheckKvChunk(l, wire_, cache_->capacity(), c));
    auto* host = dynamic_cast<HostKvCache*>(cache_);
    const size_t n = static_cast<size_t>(l.num_kv_heads) * c.token_count * l.head_dim;
    if (host != nullptr && !wire_.fp8 && wire_.dtype == DType::kF32) {
      // Straight from the pieces into the cache's rows: one copy, streamed
      // (the cache is large and not read again until the decode starts).
      const size_t row = static_cast<size_t>(c.token_count) * l.head_dim;
      for (int which = 0; which < 2; ++which) {
        float* base = which == 0 ? host->k(c.layer) : host->v(c.layer);
        const BytePieces& src = which == 0 ? c.k : c.v;
        for (int h = 0; h < l.num_kv_heads; ++h)
          src.CopyTo(h * row * 4, row * 4,
                     base + (static_cast<size_t>(h) * cache_->capacity() + c.token_start) * l.head_dim,
                     /*streaming=*/true);
      }
      return OkStatus();
    }
    if (wire_.fp8) {
      codes_.resize(n);
      scales_.resize(c.k_scales.size() / 4);
      const kvq::KvElem elem = l.dtype == DType::kF32 ? kvq::KvElem::kF32 : kvq::KvElem::kBF16;
      if (host != nullptr) {
        for (int which = 0; which < 2; ++which) {
          (which == 0 ? c.k : c.v).CopyTo(0, n, codes_.data());
          (which == 0 ? c.k_scales : c.v_scales).CopyTo(0, scales_.size() * 4, scales_.data());
          float* base = which == 0 ? host->k(c.layer) : host->v(c.layer);
          kvq::DequantizeE4m3(codes_.data(), scales_.data(), l.num_kv_heads, c.token_count, l.head_dim,
                              wire_.block_tokens, kvq::KvElem::kF32,
                              base + static_cast<size_t>(c.token_start) * l.head_dim,
                              static_cast<int64_t>(cache_->capacity()) * l.head_dim);
        }
        return OkStatus();
      }
      // Any other cache: dequantise to its element type, then WriteLayer.
      const size_t esize = DTypeSize(l.dtype);
      k_.resize(n * esize);
      v_.resize(n * esize);
      for (int which = 0; which < 2; ++which) {
        (which == 0 ? c.k : c.v).CopyTo(0, n, codes_.data());
        (which == 0 ? c.k_scales : c.v_scales).CopyTo(0, scales_.size() * 4, scales_.data());
        kvq::DequantizeE4m3(codes_.data(), scales_.data(), l.num_kv_heads, c.token_count, l.head_dim,
                            wire_.block_tokens, elem, (which == 0 ? k_ : v_).data(),
                            static_cast<int64_t>(c.token_count) * l.head_dim);
      }
      return cache_->WriteLayer(c.layer, c.token_start, c.token_count, l.dtype, k_.data(), v_.data());
    }
    const size_t bytes = c.k.size();
    k_.resize(bytes);
    v_.resize(bytes);
    c.k.CopyTo(0, bytes, k_.data());
    c.v.CopyTo(0, bytes, v_.data());
    return cache_->WriteLayer(c.layer, c.token_start, c.token_count, wire_.dtype, k_.data(), v_.data());
  }

  Status Flush() override { return OkStatus(); }

 private:
  KvCache* cache_;
  KvWireFormat wire_;
  std::vector<uint8_t> k_, v_, codes_;
  std::vector<float> scales_;
};

}  // namespace

StatusOr<std::unique_ptr<KvLanding>> MakeHostKvLanding(KvCache* cache, const KvWireFormat& wire) {
  if (cache == nullptr) return InvalidArgument("KV landing: null cache");
  if (!wire.fp8 && wire.dtype != DType::kF32 && wire.dtype != DType::kBF16 && wire.dtype != DType::kF16)
    return InvalidArgument("KV landing: wire dtype " + std::string(DTypeName(wire.dtype)) + " is not F32, F16 or BF16");
  if (wire.fp8 && wire.block_tokens < 1) return InvalidArgument("KV landing: fp8 block_tokens must be >= 1");
  if (wire.fp8 && cache->layout().dtype != DType::kF32 && cache->layout().dtype != DType::kBF16)
    return InvalidArgument("KV landing: fp8 into a cache of " + std::string(DTypeName(cache->layout().dtype)));
  return std::unique_ptr<KvLanding>(new HostKvLanding(cache, wire));
}

}  // namespace seer
