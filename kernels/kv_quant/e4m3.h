// The fp8 E4M3 format of KV on the wire (OCP FP8 "E4M3", NVIDIA's
// __NV_E4M3): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, NaN = S.1111.111, largest finite 448, smallest normal 2^-6,
// subnormals m * 2^-9. Decoding is shared by the CPU twin and the CUDA
// kernels (one function, so the two cannot disagree on it); encoding is the
// twin's own (kv_quant_cpu.cc) and the hardware's cvt.rn.satfinite on the GPU
// (kv_quant.cu), and the GPU test holds them bit-exact.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SEER_KVQ_HD __host__ __device__ __forceinline__
#else
#define SEER_KVQ_HD inline
#endif

namespace seer::kvq {

SEER_KVQ_HD float BitsToFloat(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

SEER_KVQ_HD uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
#endif
}

// Largest finite E4M3 value; scales map a block's largest magnitude onto it.
inline constexpr float kE4m3Max = 448.0f;
// The NaN code both encoders emit for a NaN input (the sign is dropped).
inline constexpr uint8_t kE4m3NaN = 0x7F;
// The bf16 NaN both dequantizers emit.
inline constexpr uint16_t kBf16NaN = 0x7FC0;

SEER_KVQ_HD float E4m3ToFloat(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t e = (code >> 3) & 0xFu;
  const uint32_t m = code & 0x7u;
  if (e == 0xFu && m == 0x7u) return BitsToFloat(0x7FC00000u);  // NaN
  // Subnormal: m * 2^-9, exact in float.
  if (e == 0) return BitsToFloat(FloatToBits(static_cast<float>(m) * 0.001953125f) | sign);
  return BitsToFloat(sign | ((e - 7u + 127u) << 23) | (m << 20));
}

// float -> bf16, round to nearest even; NaN -> kBf16NaN.
SEER_KVQ_HD uint16_t FloatToBf16Rne(float f) {
  uint32_t bits = FloatToBits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return kBf16NaN;
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

SEER_KVQ_HD float Bf16BitsToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

}  // namespace seer::kvq
