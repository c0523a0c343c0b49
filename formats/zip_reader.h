// A read-only ZIP reader for PyTorch checkpoints (torch.save writes an
// uncompressed zip). It accepts only STORED, unencrypted entries, supports
// ZIP64 records, bounds-checks every offset and verifies CRC-32 on read.
// Malformed input is an INVALID_ARGUMENT naming the file and the entry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace seer {

// CRC-32 (IEEE 802.3, the zip polynomial), continuing from `crc` (0 to start).
uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // first byte of the entry's data in the buffer
  uint64_t size = 0;  // STORED: compressed size == uncompressed size
  uint32_t crc32 = 0;  // from the central directory
};

struct ZipBytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

class ZipReader {
 public:
  // Limits that keep a hostile central directory from costing much.
  static constexpr uint64_t kMaxEntries = 1u << 20;
  static constexpr size_t kMaxNameLength = 4096;

  // Parses the central directory of `data` (kept alive by the caller). `name`
  // stands for the file in errors. Rejects compressed, encrypted, multi-disk,
  // duplicate and out-of-bounds entries.
  static StatusOr<ZipReader> Parse(std::string name, const uint8_t* data, size_t size);

  const std::string& name() const { return name_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* Find(std::string_view entry_name) const;

  // The bytes of `entry`, after checking their CRC-32 against the central
  // directory (INVALID_ARGUMENT naming the entry on a mismatch).
  StatusOr<ZipBytes> Read(const ZipEntry& entry) const;

 private:
  std::string name_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::vector<ZipEntry> entries_;  // sorted by name
};

}  // namespace seer
