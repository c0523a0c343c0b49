// Element types as safetensors names them, and the scalar conversions the
// CPU reference needs. bf16/fp16 -> f32 is exact; f32 -> bf16/fp16 rounds to
// nearest even, as torch does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace seer {

enum class DType : uint8_t { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element.
size_t DTypeSize(DType t);
// The safetensors spelling: "F32", "BF16", ...
std::string_view DTypeName(DType t);
// Parses the safetensors spelling; nullopt for anything else.
std::optional<DType> ParseDType(std::string_view name);

inline float Bf16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float Fp16ToFloat(uint16_t h);
uint16_t FloatToFp16(float f);

// Converts n elements of type `src` at `data` to float. Supports F64, F32,
// F16 and BF16; returns false for any other type.
bool ConvertToFloat(DType src, const void* data, size_t n, float* out);

}  // namespace seer
