#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <utility>

#include "base/json.h"
#include "base/strings.h"

namespace seer {
namespace {

// The safetensors format (https://github.com/huggingface/safetensors):
//   8 bytes    little-endian u64 N, the header length
//   N bytes    JSON header: {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
//                            "__metadata__": {string: string}}
//   rest       the data section; offsets are relative to its start.
constexpr size_t kLengthPrefix = 8;
constexpr std::string_view kMetadataKey = "__metadata__";

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Keys of the top-level object of `header` (already known to be valid JSON),
// in order and with duplicates kept: JsonValue keeps only the last of a
// repeated key, but a repeated tensor name is an error here.
std::vector<std::string> TopLevelKeys(std::string_view header) {
  std::vector<std::string> keys;
  int depth = 0;
  bool expect_key = false;
  for (size_t i = 0; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '"') {
      size_t j = i + 1;
      while (j < header.size() && header[j] != '"') j += header[j] == '\\' ? 2 : 1;
      if (depth == 1 && expect_key) {
        // Let the JSON parser undo the escapes of this one string.
        auto key = JsonValue::Parse(header.substr(i, j + 1 - i));
        if (key.ok()) keys.push_back(key->as_string());
        expect_key = false;
      }
      i = j;
    } else if (c == '{' || c == '[') {
      ++depth;
      expect_key = depth == 1 && c == '{';
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_key = true;
    }
  }
  return keys;
}

// Reads a JSON array of non-negative integers.
Status ReadIndexArray(const JsonValue* v, const std::string& where, std::vector<int64_t>* out) {
  if (v == nullptr) return InvalidArgument(where + " is missing");
  if (!v->is_array()) return InvalidArgument(where + " must be an array, got " + JsonValue::TypeName(v->type()));
  out->clear();
  for (const JsonValue& e : v->as_array()) {
    if (!e.is_integer() || e.as_int64() < 0) {
      return InvalidArgument(where + " must hold non-negative integers, got " + e.Dump());
    }
    out->push_back(e.as_int64());
  }
  return OkStatus();
}

struct Range {
  uint64_t begin, end;
  size_t tensor;
};

}  // namespace

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path,
                                                                 const SafetensorsLimits& limits) {
  // O_NONBLOCK: opening a FIFO must not hang; fstat below rejects it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    const std::string what = path + ": cannot open: " + std::strerror(err);
    return err == ENOENT ? NotFound(what) : InvalidArgument(what);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < kLengthPrefix) {
    ::close(fd);
    return InvalidArgument(path + ": truncated: " + std::to_string(size) +
                           " bytes, but the header length alone takes 8");
  }
  // Read-only private mapping: tensors are read in place, never copied.
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) return InvalidArgument(path + ": mmap failed: " + std::strerror(map_err));

  auto parsed = Parse(path, static_cast<const uint8_t*>(map), size, limits);
  if (!parsed.ok()) {
    ::munmap(map, size);
    return parsed.status();
  }
  std::unique_ptr<SafetensorsFile> file = std::move(parsed).value();
  file->map_ = map;
  file->map_size_ = size;
  return file;
}

StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(const std::string& name, const uint8_t* data,
                                                                  size_t size, const SafetensorsLimits& limits) {
  if (size < kLengthPrefix) {
    return InvalidArgument(name + ": truncated: " + std::to_string(size) +
                           " bytes, but the header length alone takes 8");
  }
  const uint64_t header_len = ReadLittleEndian64(data);
  if (header_len > size - kLengthPrefix) {
    return InvalidArgument(name + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                           std::to_string(size) + " bytes; at most " + std::to_string(size - kLengthPrefix) +
                           " are left for the header)");
  }
  if (header_len > limits.max_header_bytes) {
    return InvalidArgument(name + ": header length " + std::to_string(header_len) + " exceeds the limit of " +
                           std::to_string(limits.max_header_bytes) + " bytes (" + limits.source + ")");
  }
  const std::string_view header(reinterpret_cast<const char*>(data + kLengthPrefix), header_len);
  auto root = JsonValue::Parse(header);
  if (!root.ok()) return InvalidArgument(name + ": header JSON: " + root.status().message());
  if (!root->is_object()) {
    return InvalidArgument(name + ": header JSON must be an object, got " + JsonValue::TypeName(root->type()));
  }

  std::set<std::string_view> seen;
  const std::vector<std::string> keys = TopLevelKeys(header);
  for (const std::string& key : keys) {
    if (!seen.insert(key).second)
      return InvalidArgument(name + ": tensor " + Quoted(key) + " appears twice in the header");
  }

  const uint8_t* base = data + kLengthPrefix + header_len;
  const uint64_t data_size = size - kLengthPrefix - header_len;

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = name;
  std::vector<Range> ranges;
  for (const auto& [key, entry] : root->as_object()) {
    if (key == kMetadataKey) {
      if (entry.is_null()) continue;
      if (!entry.is_object()) {
        return InvalidArgument(name + ": field '__metadata__' must be an object of strings, got " +
                               JsonValue::TypeName(entry.type()));
      }
      for (const auto& [mkey, mvalue] : entry.as_object()) {
        if (!mvalue.is_string()) {
          return InvalidArgument(name + ": field '__metadata__." + mkey + "' must be a string, got " +
                                 JsonValue::TypeName(mvalue.type()));
        }
        file->metadata_[mkey] = mvalue.as_string();
      }
      continue;
    }
    const std::string where = name + ": tensor " + Quoted(key);
    if (!entry.is_object()) {
      return InvalidArgument(where + ": entry must be an object, got " + JsonValue::TypeName(entry.type()));
    }

    TensorView t;
    t.name = key;
    t.file = name;
    const JsonValue* dtype = entry.Find("dtype");
    if (dtype == nullptr) return InvalidArgument(where + ": field 'dtype' is missing");
    if (!dtype->is_string()) return InvalidArgument(where + ": field 'dtype' must be a string, got " + dtype->Dump());
    const std::optional<DType> parsed_dtype = ParseDType(dtype->as_string());
    if (!parsed_dtype) {
      return InvalidArgument(where + ": field 'dtype': unsupported dtype " + Quoted(dtype->as_string()) +
                             " (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    t.dtype = *parsed_dtype;

    SEER_RETURN_IF_ERROR(ReadIndexArray(entry.Find("shape"), where + ": field 'shape'", &t.shape));
    std::vector<int64_t> offsets;
    SEER_RETURN_IF_ERROR(ReadIndexArray(entry.Find("data_offsets"), where + ": field 'data_offsets'", &offsets));
    if (offsets.size() != 2) {
      return InvalidArgument(where + ": field 'data_offsets' must be [begin, end], got " +
                             std::to_string(offsets.size()) + " values");
    }
    const uint64_t begin = static_cast<uint64_t>(offsets[0]);
    const uint64_t end = static_cast<uint64_t>(offsets[1]);
    if (begin > end) {
      return InvalidArgument(where + ": field 'data_offsets' [" + std::to_string(begin) + ", " + std::to_string(end) +
                             "] ends before it begins");
    }
    if (end > data_size) {
      return InvalidArgument(where + ": field 'data_offsets' [" + std::to_string(begin) + ", " + std::to_string(end) +
                             "] is out of range: the data section holds " + std::to_string(data_size) + " bytes");
    }

    uint64_t nbytes = DTypeSize(t.dtype);
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes)) {
        return InvalidArgument(where + ": field 'shape' " + ShapeToString(t.shape) + " overflows 64 bits");
      }
    }
    if (nbytes != end - begin) {
      return InvalidArgument(where + ": field 'shape' " + ShapeToString(t.shape) + " of " +
                             std::string(DTypeName(t.dtype)) + " needs " + std::to_string(nbytes) +
                             " bytes, but 'data_offsets' [" + std::to_string(begin) + ", " + std::to_string(end) +
                             "] span " + std::to_string(end - begin));
    }
    t.data = base + begin;
    t.nbytes = static_cast<size_t>(nbytes);
    ranges.push_back({begin, end, file->tensors_.size()});
    file->tensors_.push_back(std::move(t));
  }

  // No two tensors may share bytes. Empty tensors occupy nothing.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Range* last = nullptr;
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    if (last != nullptr && r.begin < last->end) {
      const TensorView& a = file->tensors_[last->tensor];
      const TensorView& b = file->tensors_[r.tensor];
      return InvalidArgument(name + ": tensors " + Quoted(a.name) + " (data_offsets [" + std::to_string(last->begin) +
                             ", " + std::to_string(last->end) + "]) and " + Quoted(b.name) + " (data_offsets [" +
                             std::to_string(r.begin) + ", " + std::to_string(r.end) + "]) overlap");
    }
    last = &r;
  }

  // Sorted by name: Find() is a binary search and iteration order is stable.
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorView& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

void SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape, const void* data,
                            size_t nbytes) {
  entries_.push_back({std::move(name), dtype, std::move(shape), std::string(static_cast<const char*>(data), nbytes)});
}

void SafetensorsWriter::AddF32(std::string name, std::vector<int64_t> shape, const std::vector<float>& values) {
  Add(std::move(name), DType::kF32, std::move(shape), values.data(), values.size() * sizeof(float));
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

// Writes exactly what was added, even when inconsistent (tests build broken
// files this way); WriteFile() is the checked path.
std::string SafetensorsWriter::Serialize() const {
  JsonValue header = JsonValue::Object();
  if (!metadata_.empty()) {
    JsonValue meta = JsonValue::Object();
    for (const auto& [k, v] : metadata_) meta.Set(k, JsonValue::String(v));
    header.Set(std::string(kMetadataKey), std::move(meta));
  }
  int64_t offset = 0;
  for (const Entry& e : entries_) {
    JsonValue info = JsonValue::Object();
    info.Set("dtype", JsonValue::String(std::string(DTypeName(e.dtype))));
    JsonValue shape = JsonValue::Array();
    for (int64_t d : e.shape) shape.Append(JsonValue::Int(d));
    info.Set("shape", std::move(shape));
    JsonValue offsets = JsonValue::Array();
    offsets.Append(JsonValue::Int(offset));
    offset += static_cast<int64_t>(e.bytes.size());
    offsets.Append(JsonValue::Int(offset));
    info.Set("data_offsets", std::move(offsets));
    header.Set(e.name, std::move(info));
  }
  std::string json = header.Dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the
  // reference writer does.
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(kLengthPrefix + json.size() + static_cast<size_t>(offset));
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  for (const Entry& e : entries_) out += e.bytes;
  return out;
}

Status SafetensorsWriter::WriteFile(const std::string& path) const {
  std::set<std::string_view> names;
  for (const Entry& e : entries_) {
    if (e.name == kMetadataKey) return InvalidArgument(path + ": '__metadata__' cannot be a tensor name");
    if (!names.insert(e.name).second) return InvalidArgument(path + ": tensor " + Quoted(e.name) + " added twice");
    uint64_t expected = DTypeSize(e.dtype);
    for (int64_t d : e.shape) {
      if (d < 0 || __builtin_mul_overflow(expected, static_cast<uint64_t>(d), &expected)) {
        return InvalidArgument(path + ": tensor " + Quoted(e.name) + " has invalid shape " + ShapeToString(e.shape));
      }
    }
    if (expected != e.bytes.size()) {
      return InvalidArgument(path + ": tensor " + Quoted(e.name) + " of shape " + ShapeToString(e.shape) +
                             " and dtype " + std::string(DTypeName(e.dtype)) + " needs " + std::to_string(expected) +
                             " bytes, got " + std::to_string(e.bytes.size()));
    }
  }
  const std::string bytes = Serialize();
  // Write beside the target and rename, so readers never see a partial file.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return InvalidArgument(path + ": cannot create " + tmp + ": " + std::strerror(errno));
  const bool wrote = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const bool closed = std::fclose(f) == 0;
  if (!wrote || !closed) {
    std::remove(tmp.c_str());
    return Internal(path + ": write failed: " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return Internal(path + ": cannot rename " + tmp + ": " + std::strerror(err));
  }
  return OkStatus();
}

}  // namespace seer
