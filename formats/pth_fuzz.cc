// libFuzzer target: the restricted .pth reader on arbitrary bytes, twice per
// input: as a whole file (the zip reader, then whatever pickle it finds) and
// as the data.pkl of an otherwise valid archive with one 256-byte storage
// "0" (so the unpickler sees every input, past the zip checks and CRCs).
// Every input must end in a status that names the file, or in tensors whose
// value count matches their shape. No crash, leak, or UB.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "formats/pth_reader.h"
#include "formats/zip_reader.h"

namespace {

void PutLe(std::string* out, uint64_t v, int n) {
  for (int k = 0; k < n; ++k) out->push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}

// A STORED zip holding `entries` (name, bytes), with correct CRCs.
std::string Zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  std::string out, central;
  for (const auto& [name, data] : entries) {
    const uint32_t crc = seer::Crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    const uint64_t local = out.size();
    for (std::string* s : {&out, &central}) {
      const bool c = s == &central;
      PutLe(s, c ? 0x02014b50 : 0x04034b50, 4);
      if (c) PutLe(s, 20, 2);
      PutLe(s, 20, 2);
      PutLe(s, 0, 2);  // flags
      PutLe(s, 0, 2);  // STORED
      PutLe(s, 0, 4);
      PutLe(s, crc, 4);
      PutLe(s, data.size(), 4);
      PutLe(s, data.size(), 4);
      PutLe(s, name.size(), 2);
      PutLe(s, 0, 2);
      if (c) {
        PutLe(s, 0, 2);
        PutLe(s, 0, 2);
        PutLe(s, 0, 2);
        PutLe(s, 0, 4);
        PutLe(s, local, 4);
      }
      *s += name;
      if (!c) *s += data;
    }
  }
  const uint64_t cd_offset = out.size();
  out += central;
  PutLe(&out, 0x06054b50, 4);
  PutLe(&out, 0, 4);
  PutLe(&out, entries.size(), 2);
  PutLe(&out, entries.size(), 2);
  PutLe(&out, central.size(), 4);
  PutLe(&out, cd_offset, 4);
  PutLe(&out, 0, 2);
  return out;
}

void Check(const std::string& name, const uint8_t* data, size_t size) {
  auto r = seer::ParsePth(name, data, size);
  if (!r.ok()) {
    if (r.status().message().rfind(name + ": ", 0) != 0) std::abort();  // errors name the file
    return;
  }
  for (const seer::PthTensor& t : r->tensors) {
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) std::abort();
      n *= static_cast<uint64_t>(d);
    }
    if (n != t.values.size()) std::abort();
    if (r->Find(t.name) == nullptr) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Check("fuzz.pth", data, size);
  if (size > (1u << 20)) return 0;
  const std::string pickle(reinterpret_cast<const char*>(data), size);
  const std::string archive = Zip({{"archive/data.pkl", pickle},
                                   {"archive/byteorder", "little"},
                                   {"archive/data/0", std::string(256, '\x3f')},
                                   {"archive/version", "3\n"}});
  Check("fuzz_pickle.pth", reinterpret_cast<const uint8_t*>(archive.data()), archive.size());
  return 0;
}
