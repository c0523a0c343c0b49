// A tiny writer of torch.save-style checkpoints for tests: a protocol-2
// pickle built opcode by opcode as torch emits it, inside a STORED zip with
// the entries torch writes (<prefix>/data.pkl, byteorder, data/<key>, version).
// Written for the tests from the pickle and zip specifications; it shares no
// code with formats/pth_reader.cc or formats/zip_reader.cc.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace seer::testing {

inline uint32_t TestCrc32(const std::string& s) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : s) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

inline void PutLe(std::string* out, uint64_t v, int n) {
  for (int k = 0; k < n; ++k) out->push_back(static_cast<char>((v >> (8 * k)) & 0xff));
}

// Builds a pickle. Every object that torch memoizes gets a BINPUT.
class PickleWriter {
 public:
  PickleWriter() { out_ += "\x80\x02"; }

  std::string& raw() { return out_; }
  int Put() {
    const int id = memo_++;
    if (id < 256) {
      out_ += 'q';
      out_.push_back(static_cast<char>(id));
    } else {
      out_ += 'r';
      PutLe(&out_, id, 4);
    }
    return id;
  }
  void Get(int id) {
    if (id < 256) {
      out_ += 'h';
      out_.push_back(static_cast<char>(id));
    } else {
      out_ += 'j';
      PutLe(&out_, id, 4);
    }
  }
  int Global(const std::string& module, const std::string& name) {
    out_ += 'c' + module + '\n' + name + '\n';
    return Put();
  }
  int Str(const std::string& s) {
    out_ += 'X';
    PutLe(&out_, s.size(), 4);
    out_ += s;
    return Put();
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      out_ += 'K';
      out_.push_back(static_cast<char>(v));
    } else if (v >= 0 && v < 65536) {
      out_ += 'M';
      PutLe(&out_, v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += 'J';
      PutLe(&out_, static_cast<uint32_t>(v), 4);
    } else {
      out_ += '\x8a';
      out_.push_back(8);
      PutLe(&out_, static_cast<uint64_t>(v), 8);
    }
  }
  void Mark() { out_ += '('; }
  int Tuple() {
    out_ += 't';
    return Put();
  }
  int IntTuple(const std::vector<int64_t>& v) {
    // torch's tuples of sizes go through TUPLE1-3 when short, TUPLE otherwise.
    if (v.empty()) {
      out_ += ')';
      return -1;
    }
    if (v.size() > 3) Mark();
    for (int64_t x : v) Int(x);
    if (v.size() <= 3) {
      out_.push_back(static_cast<char>(0x84 + v.size()));
      return Put();
    }
    return Tuple();
  }
  void Stop() { out_ += '.'; }

 private:
  std::string out_;
  int memo_ = 0;
};

struct TestTensor {
  std::string name;
  std::string storage_type;  // "BFloat16Storage", "FloatStorage", "HalfStorage", "LongStorage", ...
  std::string key;  // storage key
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> shape, stride;
  bool parameter = false;  // wrap in torch._utils._rebuild_parameter
};

// The data.pkl of a state dict, as torch.save pickles model.state_dict():
// an OrderedDict, each tensor through _rebuild_tensor_v2 with a persistent id
// for its storage, then BUILD with the _metadata attribute.
inline std::string StateDictPickle(const std::vector<TestTensor>& tensors, bool ordered = true) {
  PickleWriter w;
  int od = -1;
  if (ordered) {
    od = w.Global("collections", "OrderedDict");
    w.raw() += ')';
    w.raw() += 'R';
    w.Put();
  } else {
    w.raw() += '}';
    w.Put();
  }
  w.Mark();
  int rebuild = -1, rebuild_param = -1;
  std::vector<std::pair<std::string, int>> storage_types;
  std::vector<std::pair<std::string, int>> keys;
  for (const TestTensor& t : tensors) {
    w.Str(t.name);
    if (t.parameter) {
      if (rebuild_param < 0) {
        rebuild_param = w.Global("torch._utils", "_rebuild_parameter");
      } else {
        w.Get(rebuild_param);
      }
      w.Mark();
    }
    if (rebuild < 0) {
      rebuild = w.Global("torch._utils", "_rebuild_tensor_v2");
    } else {
      w.Get(rebuild);
    }
    w.Mark();
    // persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
    w.Mark();
    w.Str("storage");
    int type_id = -1;
    for (auto& [n, id] : storage_types)
      if (n == t.storage_type) type_id = id;
    if (type_id < 0) {
      type_id = w.Global("torch", t.storage_type);
      storage_types.push_back({t.storage_type, type_id});
    } else {
      w.Get(type_id);
    }
    w.Str(t.key);
    w.Str("cpu");
    w.Int(t.storage_numel);
    w.Tuple();
    w.raw() += 'Q';
    w.Int(t.offset);
    w.IntTuple(t.shape);
    w.IntTuple(t.stride);
    w.raw() += '\x89';  // requires_grad False
    if (od < 0)
      od = w.Global("collections", "OrderedDict");
    else
      w.Get(od);
    w.raw() += ')';
    w.raw() += 'R';
    w.Put();
    w.Tuple();
    w.raw() += 'R';
    w.Put();
    if (t.parameter) {
      w.raw() += '\x89';
      w.Get(od);
      w.raw() += ')';
      w.raw() += 'R';
      w.Put();
      w.Tuple();
      w.raw() += 'R';
      w.Put();
    }
  }
  w.raw() += 'u';
  if (ordered) {
    // state = {'_metadata': OrderedDict([('', {'version': 1})])}
    w.raw() += '}';
    w.Put();
    w.Str("_metadata");
    w.Get(od);
    w.raw() += ')';
    w.raw() += 'R';
    w.Put();
    w.Str("");
    w.raw() += '}';
    w.Put();
    w.Str("version");
    w.Int(1);
    w.raw() += 's';
    w.raw() += 's';
    w.raw() += 's';
    w.raw() += 'b';
  }
  w.Stop();
  return w.raw();
}

struct ZipFileEntry {
  std::string name;
  std::string data;
  uint16_t method = 0;  // 0 = STORED
  uint16_t flags = 0;
};

// A zip as torch's writer lays it out: local headers whose extra field pads
// the data to 64 bytes, then the central directory and the end record.
// `zip64` writes ZIP64 extra fields and end records even for small files.
inline std::string ZipArchive(const std::vector<ZipFileEntry>& entries, bool zip64 = false) {
  std::string out, central;
  for (const ZipFileEntry& e : entries) {
    const uint64_t local = out.size();
    const uint32_t crc = TestCrc32(e.data);
    PutLe(&out, 0x04034b50, 4);
    PutLe(&out, zip64 ? 45 : 20, 2);
    PutLe(&out, e.flags, 2);
    PutLe(&out, e.method, 2);
    PutLe(&out, 0, 4);  // time, date
    PutLe(&out, crc, 4);
    PutLe(&out, e.data.size(), 4);
    PutLe(&out, e.data.size(), 4);
    PutLe(&out, e.name.size(), 2);
    const size_t header_end = out.size() + 2 + e.name.size() + 4;  // + extra len field, name, pad header
    const size_t pad = (64 - header_end % 64) % 64;
    PutLe(&out, 4 + pad, 2);
    out += e.name;
    PutLe(&out, 0x4246, 2);  // "FB" padding field, as torch writes
    PutLe(&out, pad, 2);
    out.append(pad, 'Z');
    out += e.data;

    PutLe(&central, 0x02014b50, 4);
    PutLe(&central, zip64 ? 45 : 20, 2);
    PutLe(&central, zip64 ? 45 : 20, 2);
    PutLe(&central, e.flags, 2);
    PutLe(&central, e.method, 2);
    PutLe(&central, 0, 4);
    PutLe(&central, crc, 4);
    PutLe(&central, zip64 ? 0xffffffffu : e.data.size(), 4);
    PutLe(&central, zip64 ? 0xffffffffu : e.data.size(), 4);
    PutLe(&central, e.name.size(), 2);
    PutLe(&central, zip64 ? 28 : 0, 2);
    PutLe(&central, 0, 2);  // comment
    PutLe(&central, 0, 2);  // disk
    PutLe(&central, 0, 2);  // internal attributes
    PutLe(&central, 0, 4);  // external attributes
    PutLe(&central, zip64 ? 0xffffffffu : local, 4);
    central += e.name;
    if (zip64) {
      PutLe(&central, 0x0001, 2);
      PutLe(&central, 24, 2);
      PutLe(&central, e.data.size(), 8);
      PutLe(&central, e.data.size(), 8);
      PutLe(&central, local, 8);
    }
  }
  const uint64_t cd_offset = out.size();
  out += central;
  if (zip64) {
    const uint64_t z64 = out.size();
    PutLe(&out, 0x06064b50, 4);
    PutLe(&out, 44, 8);
    PutLe(&out, 45, 2);
    PutLe(&out, 45, 2);
    PutLe(&out, 0, 4);
    PutLe(&out, 0, 4);
    PutLe(&out, entries.size(), 8);
    PutLe(&out, entries.size(), 8);
    PutLe(&out, central.size(), 8);
    PutLe(&out, cd_offset, 8);
    PutLe(&out, 0x07064b50, 4);
    PutLe(&out, 0, 4);
    PutLe(&out, z64, 8);
    PutLe(&out, 1, 4);
  }
  PutLe(&out, 0x06054b50, 4);
  PutLe(&out, 0, 2);
  PutLe(&out, 0, 2);
  PutLe(&out, zip64 ? 0xffff : entries.size(), 2);
  PutLe(&out, zip64 ? 0xffff : entries.size(), 2);
  PutLe(&out, zip64 ? 0xffffffffu : central.size(), 4);
  PutLe(&out, zip64 ? 0xffffffffu : cd_offset, 4);
  PutLe(&out, 0, 2);
  return out;
}

// A whole checkpoint: the pickle plus one data entry per storage key.
inline std::string PthArchive(const std::string& pickle,
                              const std::vector<std::pair<std::string, std::string>>& storages, bool zip64 = false,
                              const std::string& prefix = "archive") {
  std::vector<ZipFileEntry> entries;
  entries.push_back({prefix + "/data.pkl", pickle});
  entries.push_back({prefix + "/byteorder", "little"});
  for (const auto& [key, bytes] : storages) entries.push_back({prefix + "/data/" + key, bytes});
  entries.push_back({prefix + "/version", "3\n"});
  entries.push_back({prefix + "/.data/serialization_id", "1234567890"});
  return ZipArchive(entries, zip64);
}

// bf16 bits of a float whose low 16 bits are zero (exactly representable).
inline uint16_t Bf16Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>(b >> 16);
}

inline std::string Bytes16(const std::vector<uint16_t>& v) {
  std::string s;
  for (uint16_t x : v) PutLe(&s, x, 2);
  return s;
}

inline std::string BytesF32(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

}  // namespace seer::testing
