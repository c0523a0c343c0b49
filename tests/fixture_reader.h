// Reading the committed Hugging Face / PyTorch fixtures (docs/FIXTURES.md)
// in tests. A missing fixture is an error, never a skip: the equivalence
// tests must fail when there is nothing to compare against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "formats/safetensors.h"

namespace seer::fixtures {

// SEER_FIXTURES_DIR in the environment overrides the build's path (tests
// carried to another host).
inline std::string Path(const std::string& relative) {
  const char* env = std::getenv("SEER_FIXTURES_DIR");
  return std::string(env != nullptr && *env != '\0' ? env : SEER_FIXTURES_DIR) + "/" + relative;
}

inline StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& relative) {
  const std::string path = Path(relative);
  if (!std::filesystem::exists(path)) {
    return NotFound(path + " is missing: the fixtures are made by tools/make_fixtures.py (docs/FIXTURES.md)");
  }
  return SafetensorsFile::Open(path);
}

// The tensor `name` of type `dtype` as a vector of T; `shape` is checked when given.
template <typename T>
StatusOr<std::vector<T>> Read(const SafetensorsFile& file, std::string_view name, DType dtype,
                              const std::vector<int64_t>& shape = {}) {
  const TensorView* t = file.Find(name);
  if (t == nullptr) return NotFound(file.path() + ": no tensor '" + std::string(name) + "'");
  if (t->dtype != dtype || DTypeSize(dtype) != sizeof(T)) {
    return InvalidArgument(file.path() + ": tensor '" + std::string(name) + "' is " + std::string(DTypeName(t->dtype)) +
                           ", expected " + std::string(DTypeName(dtype)));
  }
  if (!shape.empty() && t->shape != shape) {
    return InvalidArgument(file.path() + ": tensor '" + std::string(name) + "' has shape " + ShapeToString(t->shape) +
                           ", expected " + ShapeToString(shape));
  }
  std::vector<T> out(static_cast<size_t>(t->numel()));
  std::memcpy(out.data(), t->data, out.size() * sizeof(T));
  return out;
}

inline StatusOr<std::vector<float>> F32(const SafetensorsFile& f, std::string_view name,
                                        const std::vector<int64_t>& shape = {}) {
  return Read<float>(f, name, DType::kF32, shape);
}
inline StatusOr<std::vector<int32_t>> I32(const SafetensorsFile& f, std::string_view name,
                                          const std::vector<int64_t>& shape = {}) {
  return Read<int32_t>(f, name, DType::kI32, shape);
}
inline StatusOr<std::vector<uint8_t>> U8(const SafetensorsFile& f, std::string_view name,
                                         const std::vector<int64_t>& shape = {}) {
  return Read<uint8_t>(f, name, DType::kU8, shape);
}

// Norm-wise relative error ||got - want|| / ||want|| over n values; infinite
// on a size mismatch or a non-finite value in `got`.
inline double RelError(const float* got, const float* want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}
inline double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  return RelError(got.data(), want.data(), got.size());
}

// The comma-separated mode list of a gate fixture's metadata.
inline std::vector<std::string> SplitModes(const std::string& text) {
  std::vector<std::string> modes;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    if (comma > start) modes.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return modes;
}

}  // namespace seer::fixtures
