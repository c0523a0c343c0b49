#include "kernels/kv_quant/kv_quant_cpu.h"

#include <cmath>
#include <cstring>

#include "kernels/kv_quant/e4m3.h"

namespace seer::kvq {
namespace {

float Load(KvElem type, const void* base, size_t i) {
  if (type == KvElem::kF32) return static_cast<const float*>(base)[i];
  return Bf16BitsToFloat(static_cast<const uint16_t*>(base)[i]);
}

void Store(KvElem type, void* base, size_t i, float v) {
  if (type == KvElem::kF32) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = FloatToBf16Rne(v);
  }
}

size_t ElemBytes(KvElem type) { return type == KvElem::kF32 ? 4 : 2; }

}  // namespace

uint8_t FloatToE4m3(float x) {
  if (std::isnan(x)) return kE4m3NaN;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (!(a < kE4m3Max)) return sign | 0x7E;  // 448, also for Inf
  if (a < 0.015625f) {
    // Below the smallest normal 2^-6: steps of 2^-9. m == 8 is 2^-6 itself,
    // whose code (exponent 1, mantissa 0) is also 8.
    const float m = std::nearbyint(a * 512.0f);  // exact scaling; ties to even
    return sign | static_cast<uint8_t>(m);
  }
  int e2 = 0;
  std::frexp(a, &e2);  // a = f * 2^e2, f in [0.5, 1): the exponent is e2 - 1
  int e = e2 - 1;  // -6 ... 8
  float r = std::nearbyint(std::ldexp(a, 3 - e));  // in [8, 16], exact scaling, ties to even
  if (r == 16.0f) {
    r = 8.0f;
    ++e;
  }
  const uint8_t code = static_cast<uint8_t>(((e + 7) << 3) | (static_cast<int>(r) - 8));
  return (code & 0x7F) == 0x7F ? (sign | 0x7E) : (sign | code);  // 464 and up saturate
}

float BlockScale(float amax) { return amax > 0.0f ? amax / kE4m3Max : 0.0f; }

uint8_t QuantizeScaled(float x, float s) {
  if (s > 0.0f) return FloatToE4m3(x / s);
  if (std::isnan(x) || std::isinf(x)) return FloatToE4m3(x);
  return std::signbit(x) ? 0x80 : 0x00;
}

void QuantizeE4m3(KvElem src_type, const void* src, int64_t src_head_stride, int heads, int tokens, int head_dim,
                  int block_tokens, uint8_t* codes, float* scales) {
  const int blocks = ScaleBlocks(tokens, block_tokens);
  const auto* base = static_cast<const unsigned char*>(src);
  for (int h = 0; h < heads; ++h) {
    const void* row0 = base + static_cast<size_t>(h) * src_head_stride * ElemBytes(src_type);
    uint8_t* out = codes + static_cast<size_t>(h) * tokens * head_dim;
    for (int b = 0; b < blocks; ++b) {
      const size_t begin = static_cast<size_t>(b) * block_tokens * head_dim;
      const size_t end = static_cast<size_t>(b + 1 == blocks ? tokens : (b + 1) * block_tokens) * head_dim;
      float amax = 0.0f;
      for (size_t i = begin; i < end; ++i) {
        const float a = std::fabs(Load(src_type, row0, i));
        if (std::isfinite(a) && a > amax) amax = a;
      }
      const float s = BlockScale(amax);
      scales[static_cast<size_t>(h) * blocks + b] = s;
      for (size_t i = begin; i < end; ++i) out[i] = QuantizeScaled(Load(src_type, row0, i), s);
    }
  }
}

void DequantizeE4m3(const uint8_t* codes, const float* scales, int heads, int tokens, int head_dim, int block_tokens,
                    KvElem dst_type, void* dst, int64_t dst_head_stride) {
  const int blocks = ScaleBlocks(tokens, block_tokens);
  auto* base = static_cast<unsigned char*>(dst);
  for (int h = 0; h < heads; ++h) {
    void* row0 = base + static_cast<size_t>(h) * dst_head_stride * ElemBytes(dst_type);
    const uint8_t* in = codes + static_cast<size_t>(h) * tokens * head_dim;
    for (int t = 0; t < tokens; ++t) {
      const float s = scales[static_cast<size_t>(h) * blocks + t / block_tokens];
      for (int d = 0; d < head_dim; ++d) {
        const size_t i = static_cast<size_t>(t) * head_dim + d;
        Store(dst_type, row0, i, E4m3ToFloat(in[i]) * s);
      }
    }
  }
}

}  // namespace seer::kvq
