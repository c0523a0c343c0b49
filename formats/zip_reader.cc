#include "formats/zip_reader.h"

#include <algorithm>
#include <array>
#include <cstdio>

namespace seer {
namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndOfCentralDirSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr uint16_t kZip64ExtraId = 0x0001;

// General-purpose flag bits that make an entry unreadable for us.
constexpr uint16_t kFlagEncrypted = 1u << 0;
constexpr uint16_t kFlagStrongEncryption = 1u << 6;
constexpr uint16_t kFlagMaskedHeaders = 1u << 13;

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

uint16_t Le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
uint64_t Le64(const uint8_t* p) { return uint64_t(Le32(p)) | (uint64_t(Le32(p + 4)) << 32); }

// True when [offset, offset + len) lies within [0, limit), without overflow.
bool InBounds(uint64_t offset, uint64_t len, uint64_t limit) { return offset <= limit && len <= limit - offset; }

std::string Printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 200)) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  if (s.size() > 200) out += "...";
  return out;
}

}  // namespace

uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> kTable = MakeCrcTable();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = kTable[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

StatusOr<ZipReader> ZipReader::Parse(std::string name, const uint8_t* data, size_t size) {
  auto bad = [&](const std::string& what) { return InvalidArgument(name + ": not a valid zip archive: " + what); };
  if (data == nullptr || size < kEndOfCentralDirSize)
    return bad("file is too short (" + std::to_string(size) + " bytes)");

  // The end-of-central-directory record sits in the last 22 + 65535 bytes
  // (it may be followed by a comment). Search backwards for its signature
  // with a comment length that reaches exactly to the end of the file.
  const size_t lowest = size > kEndOfCentralDirSize + 0xffff ? size - kEndOfCentralDirSize - 0xffff : 0;
  size_t eocd = SIZE_MAX;
  for (size_t pos = size - kEndOfCentralDirSize + 1; pos-- > lowest;) {
    if (Le32(data + pos) == kEndOfCentralDirSig && pos + kEndOfCentralDirSize + Le16(data + pos + 20) == size) {
      eocd = pos;
      break;
    }
  }
  if (eocd == SIZE_MAX) return bad("no end-of-central-directory record (truncated file?)");

  const uint8_t* e = data + eocd;
  uint64_t disk = Le16(e + 4), cd_disk = Le16(e + 6);
  uint64_t entries_on_disk = Le16(e + 8), total_entries = Le16(e + 10);
  uint64_t cd_size = Le32(e + 12), cd_offset = Le32(e + 16);

  // ZIP64: a locator just before the EOCD points at the ZIP64 end record.
  if (eocd >= kZip64LocatorSize && Le32(data + eocd - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint8_t* loc = data + eocd - kZip64LocatorSize;
    const uint64_t z64_offset = Le64(loc + 8);
    if (Le32(loc + 4) != 0 || Le32(loc + 16) > 1) return bad("multi-disk archives are not supported");
    if (!InBounds(z64_offset, kZip64EndSize, eocd - kZip64LocatorSize) || Le32(data + z64_offset) != kZip64EndSig) {
      return bad("ZIP64 end record at offset " + std::to_string(z64_offset) + " is missing or out of bounds");
    }
    const uint8_t* z = data + z64_offset;
    disk = Le32(z + 16);
    cd_disk = Le32(z + 20);
    entries_on_disk = Le64(z + 24);
    total_entries = Le64(z + 32);
    cd_size = Le64(z + 40);
    cd_offset = Le64(z + 48);
  } else if (total_entries == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    return bad("ZIP64 markers without a ZIP64 end record");
  }
  if (disk != 0 || cd_disk != 0 || entries_on_disk != total_entries)
    return bad("multi-disk archives are not supported");
  if (total_entries > kMaxEntries) {
    return bad(std::to_string(total_entries) + " entries, more than the limit of " + std::to_string(kMaxEntries));
  }
  if (!InBounds(cd_offset, cd_size, eocd)) {
    return bad("central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
               ") lies outside the file");
  }
  // Each central header is at least 46 bytes: a count that cannot fit is a lie.
  if (total_entries > cd_size / kCentralHeaderSize) {
    return bad(std::to_string(total_entries) + " entries cannot fit in a " + std::to_string(cd_size) +
               "-byte central directory");
  }

  ZipReader zr;
  zr.name_ = name;
  zr.data_ = data;
  zr.size_ = size;
  zr.entries_.reserve(total_entries);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < total_entries; ++i) {
    if (!InBounds(pos, kCentralHeaderSize, cd_end) || Le32(data + pos) != kCentralHeaderSig) {
      return bad("central directory entry " + std::to_string(i) + " at offset " + std::to_string(pos) +
                 " is malformed");
    }
    const uint8_t* c = data + pos;
    const uint16_t flags = Le16(c + 8);
    const uint16_t method = Le16(c + 10);
    const uint32_t crc = Le32(c + 16);
    uint64_t csize = Le32(c + 20), usize = Le32(c + 24);
    const uint16_t name_len = Le16(c + 28), extra_len = Le16(c + 30), comment_len = Le16(c + 32);
    uint64_t entry_disk = Le16(c + 34);
    uint64_t local_offset = Le32(c + 42);
    const uint64_t var_len = uint64_t(name_len) + extra_len + comment_len;
    if (!InBounds(pos + kCentralHeaderSize, var_len, cd_end)) {
      return bad("central directory entry " + std::to_string(i) + " runs past the directory");
    }
    std::string entry_name(reinterpret_cast<const char*>(c + kCentralHeaderSize), name_len);
    if (name_len == 0 || name_len > kMaxNameLength) {
      return bad("entry " + std::to_string(i) + " has a name of " + std::to_string(name_len) + " bytes");
    }
    const std::string shown = "entry '" + Printable(entry_name) + "'";

    // ZIP64 extended information: the 64-bit values, in this order, for each
    // 32-bit field that holds its all-ones marker.
    const uint8_t* extra = c + kCentralHeaderSize + name_len;
    for (size_t x = 0; x + 4 <= extra_len;) {
      const uint16_t id = Le16(extra + x), len = Le16(extra + x + 2);
      if (x + 4 + len > extra_len) return bad(shown + " has a malformed extra field");
      if (id == kZip64ExtraId) {
        const uint8_t* f = extra + x + 4;
        size_t used = 0;
        auto take = [&](uint64_t* v) {
          if (used + 8 > len) return false;
          *v = Le64(f + used);
          used += 8;
          return true;
        };
        if ((usize == 0xffffffffu && !take(&usize)) || (csize == 0xffffffffu && !take(&csize)) ||
            (local_offset == 0xffffffffu && !take(&local_offset))) {
          return bad(shown + " has a truncated ZIP64 extra field");
        }
        if (entry_disk == 0xffff) {
          if (used + 4 > len) return bad(shown + " has a truncated ZIP64 extra field");
          entry_disk = Le32(f + used);
        }
      }
      x += 4 + size_t(len);
    }
    if (csize == 0xffffffffu || usize == 0xffffffffu || local_offset == 0xffffffffu) {
      return bad(shown + " has ZIP64 markers but no ZIP64 extra field");
    }
    if (entry_disk != 0) return bad(shown + " lies on another disk");
    if (flags & (kFlagEncrypted | kFlagStrongEncryption | kFlagMaskedHeaders)) {
      return bad(shown + " is encrypted; encrypted entries are not supported");
    }
    if (method != 0) {
      return bad(shown + " is compressed (method " + std::to_string(method) +
                 "); only STORED entries are supported, as torch.save writes them");
    }
    if (csize != usize) {
      return bad(shown + " is STORED but its sizes differ (" + std::to_string(csize) + " vs " + std::to_string(usize) +
                 ")");
    }

    // The local header repeats the name; its own extra field may differ
    // (torch pads it to align data), so only its lengths are used.
    if (!InBounds(local_offset, kLocalHeaderSize, cd_offset) || Le32(data + local_offset) != kLocalHeaderSig) {
      return bad(shown + ": local header at offset " + std::to_string(local_offset) + " is missing or out of bounds");
    }
    const uint8_t* l = data + local_offset;
    const uint64_t l_name = Le16(l + 26), l_extra = Le16(l + 28);
    const uint64_t data_offset = local_offset + kLocalHeaderSize + l_name + l_extra;
    if (l_name != name_len || !InBounds(local_offset + kLocalHeaderSize, l_name, cd_offset) ||
        std::string_view(reinterpret_cast<const char*>(l + kLocalHeaderSize), l_name) != entry_name) {
      return bad(shown + ": local header names a different entry");
    }
    if (Le16(l + 8) != 0) return bad(shown + ": local header says compressed");
    if (!InBounds(data_offset, usize, cd_offset)) {
      return bad(shown + ": data [" + std::to_string(data_offset) + ", +" + std::to_string(usize) +
                 ") runs past the entries area (file is " + std::to_string(size) + " bytes)");
    }
    zr.entries_.push_back(ZipEntry{std::move(entry_name), data_offset, usize, crc});
    pos += kCentralHeaderSize + var_len;
  }

  std::sort(zr.entries_.begin(), zr.entries_.end(),
            [](const ZipEntry& a, const ZipEntry& b) { return a.name < b.name; });
  for (size_t i = 1; i < zr.entries_.size(); ++i) {
    if (zr.entries_[i].name == zr.entries_[i - 1].name) {
      return bad("entry '" + Printable(zr.entries_[i].name) + "' appears twice");
    }
  }
  return zr;
}

const ZipEntry* ZipReader::Find(std::string_view entry_name) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), entry_name,
                             [](const ZipEntry& e, std::string_view n) { return e.name < n; });
  if (it == entries_.end() || it->name != entry_name) return nullptr;
  return &*it;
}

StatusOr<ZipBytes> ZipReader::Read(const ZipEntry& entry) const {
  if (!InBounds(entry.data_offset, entry.size, size_)) {
    return InvalidArgument(name_ + ": entry '" + Printable(entry.name) + "' lies outside the file");
  }
  const uint8_t* p = data_ + entry.data_offset;
  const uint32_t crc = Crc32(p, entry.size);
  if (crc != entry.crc32) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "CRC-32 %08x, the directory says %08x", crc, entry.crc32);
    return InvalidArgument(name_ + ": entry '" + Printable(entry.name) + "' is corrupt: " + buf);
  }
  return ZipBytes{p, entry.size};
}

}  // namespace seer
