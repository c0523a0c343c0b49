// Safetensors: memory-mapped reading (no copy of the file) and writing.
// Every malformed input is an error naming the file and the field.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace seer {

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; valid while the file object lives
  size_t nbytes = 0;
  std::string file;  // for error messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// "[4, 64]"
std::string ShapeToString(const std::vector<int64_t>& shape);

// Limits on hostile input. The tensors stay in the mapping and cost nothing
// until read; the JSON header is parsed into memory, so a loader that knows
// how many tensors it expects (Checkpoint, LoadGates) bounds it by that.
struct SafetensorsLimits {
  // The reference implementation refuses headers above 100 MB; so do we.
  uint64_t max_header_bytes = uint64_t{100} << 20;
  // Named in errors: where the limit comes from.
  std::string source = "the format's limit";
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and parses its header.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path, const SafetensorsLimits& limits = {});
  // Parses an in-memory buffer the caller keeps alive (tests, fuzzing).
  // `name` stands for the file in errors.
  static StatusOr<std::unique_ptr<SafetensorsFile>> Parse(const std::string& name, const uint8_t* data, size_t size,
                                                          const SafetensorsLimits& limits = {});
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes one safetensors file (header padded to 8 bytes,
// tensors in insertion order).
class SafetensorsWriter {
 public:
  void Add(std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  void AddF32(std::string name, std::vector<int64_t> shape, const std::vector<float>& values);
  void SetMetadata(std::string key, std::string value);
  Status WriteFile(const std::string& path) const;
  std::string Serialize() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace seer
