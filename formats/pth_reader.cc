#include "formats/pth_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "formats/zip_reader.h"

namespace seer {
namespace {

// ---------------------------------------------------------------------------
// Pickle opcodes (protocol 2 as torch.save writes it, plus the protocol 4
// framing ops a newer pickler may add). Everything not handled below is
// rejected; the names make the error readable.
enum Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kBinFloat = 'G',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kSetItems = 'u',
  kEmptyDict = '}',
  kEmptyTuple = ')',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

const char* OpName(uint8_t op) {
  switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

std::string Hex2(uint8_t v) {
  static const char* kHex = "0123456789abcdef";
  return std::string("0x") + kHex[v >> 4] + kHex[v & 15];
}

std::string Printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 120)) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out.push_back(c);
    } else {
      out += "\\" + Hex2(u).substr(1);
    }
  }
  if (s.size() > 120) out += "...";
  return out;
}

// ---------------------------------------------------------------------------
// The objects a state-dict pickle can build. They live in one arena and refer
// to each other by index, so cycles and deep nesting cost nothing to free.

enum class Global : uint8_t {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildParameter,
  kBFloat16Storage,
  kHalfStorage,
  kFloatStorage,
};

constexpr const char* kAllowedGlobals =
    "collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
    "torch.BFloat16Storage, torch.HalfStorage, torch.FloatStorage";

std::optional<Global> LookupGlobal(std::string_view module, std::string_view name) {
  if (module == "collections" && name == "OrderedDict") return Global::kOrderedDict;
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") return Global::kRebuildTensorV2;
  if (module == "torch._utils" && name == "_rebuild_parameter") return Global::kRebuildParameter;
  if (module == "torch" && name == "BFloat16Storage") return Global::kBFloat16Storage;
  if (module == "torch" && name == "HalfStorage") return Global::kHalfStorage;
  if (module == "torch" && name == "FloatStorage") return Global::kFloatStorage;
  return std::nullopt;
}

const char* GlobalName(Global g) {
  switch (g) {
    case Global::kOrderedDict: return "collections.OrderedDict";
    case Global::kRebuildTensorV2: return "torch._utils._rebuild_tensor_v2";
    case Global::kRebuildParameter: return "torch._utils._rebuild_parameter";
    case Global::kBFloat16Storage: return "torch.BFloat16Storage";
    case Global::kHalfStorage: return "torch.HalfStorage";
    case Global::kFloatStorage: return "torch.FloatStorage";
  }
  return "?";
}

enum class Kind : uint8_t { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kStorage, kTensor };

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
  }
  return "?";
}

using Ref = uint32_t;

struct Obj {
  Kind kind = Kind::kNone;
  int64_t i = 0;  // kInt, kBool
  std::string s;  // kString; kStorage: the storage key
  std::vector<Ref> items;  // kTuple, kList; kDict: key, value, key, value, ...
  Global global{};  // kGlobal
  DType dtype = DType::kF32;  // kStorage, kTensor
  int64_t numel = 0;  // kStorage: element count
  Ref storage = 0;  // kTensor
  int64_t offset = 0;  // kTensor: storage offset in elements
  std::vector<int64_t> shape, stride;  // kTensor
};

class Unpickler {
 public:
  Unpickler(std::string file, const uint8_t* data, size_t size, size_t max_objects)
      : file_(std::move(file)), p_(data), size_(size), max_objects_(max_objects) {}

  // Runs the pickle to STOP and returns the top-level object.
  StatusOr<Ref> Run();
  const Obj& at(Ref r) const { return arena_[r]; }

 private:
  Status Fail(const std::string& what) const {
    return InvalidArgument(file_ + ": data.pkl offset " + std::to_string(op_pos_) + ": " + what);
  }
  Status OpError(uint8_t op, const std::string& what) const {
    const char* name = OpName(op);
    return Fail(std::string("opcode ") + Hex2(op) + (name ? std::string(" (") + name + ")" : "") + ": " + what);
  }

  bool Need(size_t n) const { return n <= size_ - pos_; }
  StatusOr<Ref> New(Obj o) {
    if (arena_.size() >= max_objects_) {
      return Fail("more than " + std::to_string(max_objects_) + " objects");
    }
    arena_.push_back(std::move(o));
    return static_cast<Ref>(arena_.size() - 1);
  }
  Status Push(StatusOr<Ref> r) {
    if (!r.ok()) return r.status();
    stack_.push_back(*r);
    return OkStatus();
  }
  StatusOr<Ref> Pop(uint8_t op) {
    if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
    Ref r = stack_.back();
    stack_.pop_back();
    return r;
  }
  StatusOr<std::vector<Ref>> PopToMark(uint8_t op) {
    if (marks_.empty()) return OpError(op, "no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Ref> items(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return items;
  }
  Status Memo(uint8_t op, uint64_t index) {
    if (stack_.empty()) return OpError(op, "nothing on the stack to memoize");
    if (memo_.size() >= max_objects_ && !memo_.count(index)) return OpError(op, "memo is full");
    memo_[index] = stack_.back();
    return OkStatus();
  }
  Status Get(uint8_t op, uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return OpError(op, "memo index " + std::to_string(index) + " was never stored");
    stack_.push_back(it->second);
    return OkStatus();
  }
  Status PushString(uint8_t op, uint64_t len) {
    if (!Need(len)) return OpError(op, "string of " + std::to_string(len) + " bytes runs past the end");
    Obj o;
    o.kind = Kind::kString;
    o.s.assign(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return Push(New(std::move(o)));
  }
  Status PushInt(int64_t v) {
    Obj o;
    o.kind = Kind::kInt;
    o.i = v;
    return Push(New(std::move(o)));
  }
  Status PushGlobal(uint8_t op, std::string_view module, std::string_view name);
  Status Reduce(uint8_t op);
  Status PersistentLoad(uint8_t op);
  uint64_t ReadLe(size_t n) {
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(p_[pos_ + k]) << (8 * k);
    pos_ += n;
    return v;
  }

  std::string file_;
  const uint8_t* p_;
  size_t size_;
  size_t max_objects_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Obj> arena_;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
};

Status Unpickler::PushGlobal(uint8_t op, std::string_view module, std::string_view name) {
  std::optional<Global> g = LookupGlobal(module, name);
  if (!g) {
    std::string full = Printable(module) + "." + Printable(name);
    if (module == "torch" && name.size() > 7 && name.substr(name.size() - 7) == "Storage") {
      return OpError(op, "tensor storage type " + full +
                             " is not supported; gate weights must be bf16, fp16 or fp32 "
                             "(BFloat16Storage, HalfStorage, FloatStorage)");
    }
    return OpError(op, "global '" + full + "' is not allowed; a state dict may only use " + kAllowedGlobals);
  }
  Obj o;
  o.kind = Kind::kGlobal;
  o.global = *g;
  return Push(New(std::move(o)));
}

Status Unpickler::PersistentLoad(uint8_t op) {
  SEER_ASSIGN_OR_RETURN(Ref pid_ref, Pop(op));
  const Obj& pid = arena_[pid_ref];
  // ('storage', torch.<T>Storage, key, location, numel)
  if (pid.kind != Kind::kTuple || pid.items.size() != 5) {
    return OpError(op, "persistent id must be a 5-tuple ('storage', type, key, location, numel), got a " +
                           std::string(KindName(pid.kind)));
  }
  const Obj& tag = arena_[pid.items[0]];
  const Obj& type = arena_[pid.items[1]];
  const Obj& key = arena_[pid.items[2]];
  const Obj& location = arena_[pid.items[3]];
  const Obj& numel = arena_[pid.items[4]];
  if (tag.kind != Kind::kString || tag.s != "storage") return OpError(op, "persistent id is not a 'storage'");
  if (type.kind != Kind::kGlobal || (type.global != Global::kBFloat16Storage && type.global != Global::kHalfStorage &&
                                     type.global != Global::kFloatStorage)) {
    return OpError(op, "storage type must be torch.BFloat16Storage, HalfStorage or FloatStorage");
  }
  if (key.kind != Kind::kString || location.kind != Kind::kString) {
    return OpError(op, "storage key and location must be strings");
  }
  if (numel.kind != Kind::kInt || numel.i < 0) return OpError(op, "storage size must be a non-negative int");
  Obj o;
  o.kind = Kind::kStorage;
  o.dtype = type.global == Global::kBFloat16Storage ? DType::kBF16
            : type.global == Global::kHalfStorage   ? DType::kF16
                                                    : DType::kF32;
  o.s = key.s;
  o.numel = numel.i;
  return Push(New(std::move(o)));
}

// Reads a tuple of ints (a tensor's size or stride).
bool IntTuple(const Unpickler& u, const Obj& t, std::vector<int64_t>* out) {
  if (t.kind != Kind::kTuple) return false;
  out->clear();
  for (Ref r : t.items) {
    const Obj& v = u.at(r);
    if (v.kind != Kind::kInt) return false;
    out->push_back(v.i);
  }
  return true;
}

bool EmptyDict(const Obj& o) { return o.kind == Kind::kDict && o.items.empty(); }

Status Unpickler::Reduce(uint8_t op) {
  SEER_ASSIGN_OR_RETURN(Ref args_ref, Pop(op));
  SEER_ASSIGN_OR_RETURN(Ref fn_ref, Pop(op));
  const Obj& fn = arena_[fn_ref];
  const Obj& args = arena_[args_ref];
  if (fn.kind != Kind::kGlobal) return OpError(op, std::string("cannot call a ") + KindName(fn.kind));
  if (args.kind != Kind::kTuple) return OpError(op, "arguments must be a tuple");
  const std::vector<Ref> a = args.items;  // copy: New() may reallocate the arena

  switch (fn.global) {
    case Global::kOrderedDict: {
      if (!a.empty()) return OpError(op, "collections.OrderedDict may only be called with no arguments");
      Obj o;
      o.kind = Kind::kDict;
      return Push(New(std::move(o)));
    }
    case Global::kRebuildTensorV2: {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
      if (a.size() != 6 && a.size() != 7) {
        return OpError(op, "_rebuild_tensor_v2 takes 6 or 7 arguments, got " + std::to_string(a.size()));
      }
      Obj t;
      t.kind = Kind::kTensor;
      const Obj& storage = arena_[a[0]];
      if (storage.kind != Kind::kStorage) return OpError(op, "_rebuild_tensor_v2: argument 0 is not a storage");
      t.storage = a[0];
      t.dtype = storage.dtype;
      const Obj& offset = arena_[a[1]];
      if (offset.kind != Kind::kInt || offset.i < 0) {
        return OpError(op, "_rebuild_tensor_v2: storage offset must be a non-negative int");
      }
      t.offset = offset.i;
      if (!IntTuple(*this, arena_[a[2]], &t.shape) || !IntTuple(*this, arena_[a[3]], &t.stride)) {
        return OpError(op, "_rebuild_tensor_v2: size and stride must be tuples of ints");
      }
      if (t.shape.size() != t.stride.size()) {
        return OpError(op, "_rebuild_tensor_v2: size has " + std::to_string(t.shape.size()) + " dims, stride " +
                               std::to_string(t.stride.size()));
      }
      if (t.shape.size() > size_t(PthLimits::kMaxRank)) {
        return OpError(op, "_rebuild_tensor_v2: rank " + std::to_string(t.shape.size()) + " exceeds " +
                               std::to_string(PthLimits::kMaxRank));
      }
      for (size_t d = 0; d < t.shape.size(); ++d) {
        if (t.shape[d] < 0 || t.stride[d] < 0) {
          return OpError(op, "_rebuild_tensor_v2: negative size or stride in dim " + std::to_string(d));
        }
      }
      if (arena_[a[4]].kind != Kind::kBool) return OpError(op, "_rebuild_tensor_v2: requires_grad must be a bool");
      if (!EmptyDict(arena_[a[5]])) {
        return OpError(op, "_rebuild_tensor_v2: backward hooks must be an empty OrderedDict");
      }
      if (a.size() == 7 && !EmptyDict(arena_[a[6]])) {
        return OpError(op, "_rebuild_tensor_v2: tensor metadata is not supported");
      }
      return Push(New(std::move(t)));
    }
    case Global::kRebuildParameter: {
      // (data, requires_grad, backward_hooks): a Parameter is its tensor here.
      if (a.size() != 3 || arena_[a[0]].kind != Kind::kTensor || arena_[a[1]].kind != Kind::kBool ||
          !EmptyDict(arena_[a[2]])) {
        return OpError(op, "_rebuild_parameter takes (tensor, bool, empty OrderedDict)");
      }
      stack_.push_back(a[0]);
      return OkStatus();
    }
    default: return OpError(op, std::string("calling ") + GlobalName(fn.global) + " is not allowed");
  }
}

StatusOr<Ref> Unpickler::Run() {
  while (pos_ < size_) {
    op_pos_ = pos_;
    const uint8_t op = p_[pos_++];
    switch (op) {
      case kProto: {
        if (!Need(1)) return OpError(op, "truncated");
        const uint8_t v = p_[pos_++];
        if (v < 2 || v > 5) return OpError(op, "pickle protocol " + std::to_string(v) + " is not supported");
        break;
      }
      case kFrame:
        if (!Need(8)) return OpError(op, "truncated");
        pos_ += 8;  // framing is only a read-ahead hint
        break;
      case kMark:
        if (marks_.size() >= PthLimits::kMaxMarkDepth) {
          return OpError(op, "MARKs nested deeper than " + std::to_string(PthLimits::kMaxMarkDepth) +
                                 "; a state dict needs a handful");
        }
        marks_.push_back(stack_.size());
        break;
      case kStop: {
        SEER_ASSIGN_OR_RETURN(Ref top, Pop(op));
        return top;
      }
      case kNone: {
        Obj o;
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kNewTrue:
      case kNewFalse: {
        Obj o;
        o.kind = Kind::kBool;
        o.i = op == kNewTrue;
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kBinInt1:
        if (!Need(1)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushInt(static_cast<int64_t>(ReadLe(1))));
        break;
      case kBinInt2:
        if (!Need(2)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushInt(static_cast<int64_t>(ReadLe(2))));
        break;
      case kBinInt:
        if (!Need(4)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushInt(static_cast<int32_t>(static_cast<uint32_t>(ReadLe(4)))));
        break;
      case kLong1: {
        if (!Need(1)) return OpError(op, "truncated");
        const uint8_t n = p_[pos_++];
        if (n > 8) return OpError(op, std::to_string(n) + "-byte integer does not fit in 64 bits");
        if (!Need(n)) return OpError(op, "truncated");
        uint64_t v = ReadLe(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        SEER_RETURN_IF_ERROR(PushInt(static_cast<int64_t>(v)));
        break;
      }
      case kBinFloat: {
        if (!Need(8)) return OpError(op, "truncated");
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | p_[pos_ + k];  // big-endian
        pos_ += 8;
        Obj o;
        o.kind = Kind::kFloat;
        o.i = static_cast<int64_t>(bits);
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kShortBinUnicode:
        if (!Need(1)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushString(op, ReadLe(1)));
        break;
      case kBinUnicode:
        if (!Need(4)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushString(op, ReadLe(4)));
        break;
      case kBinUnicode8:
        if (!Need(8)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(PushString(op, ReadLe(8)));
        break;
      case kEmptyTuple:
      case kEmptyList:
      case kEmptyDict: {
        Obj o;
        o.kind = op == kEmptyTuple ? Kind::kTuple : op == kEmptyList ? Kind::kList : Kind::kDict;
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kTuple: {
        SEER_ASSIGN_OR_RETURN(std::vector<Ref> items, PopToMark(op));
        Obj o;
        o.kind = Kind::kTuple;
        o.items = std::move(items);
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const size_t n = op - kTuple1 + 1;
        Obj o;
        o.kind = Kind::kTuple;
        o.items.resize(n);
        for (size_t k = n; k-- > 0;) {
          SEER_ASSIGN_OR_RETURN(o.items[k], Pop(op));
        }
        SEER_RETURN_IF_ERROR(Push(New(std::move(o))));
        break;
      }
      case kBinPut:
        if (!Need(1)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(Memo(op, ReadLe(1)));
        break;
      case kLongBinPut:
        if (!Need(4)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(Memo(op, ReadLe(4)));
        break;
      case kMemoize: SEER_RETURN_IF_ERROR(Memo(op, memo_.size())); break;
      case kBinGet:
        if (!Need(1)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(Get(op, ReadLe(1)));
        break;
      case kLongBinGet:
        if (!Need(4)) return OpError(op, "truncated");
        SEER_RETURN_IF_ERROR(Get(op, ReadLe(4)));
        break;
      case kSetItem: {
        SEER_ASSIGN_OR_RETURN(Ref value, Pop(op));
        SEER_ASSIGN_OR_RETURN(Ref key, Pop(op));
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
        Obj& d = arena_[stack_.back()];
        if (d.kind != Kind::kDict) return OpError(op, std::string("target is a ") + KindName(d.kind) + ", not a dict");
        d.items.push_back(key);
        d.items.push_back(value);
        break;
      }
      case kSetItems: {
        SEER_ASSIGN_OR_RETURN(std::vector<Ref> items, PopToMark(op));
        if (items.size() % 2 != 0) return OpError(op, "odd number of items");
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
        Obj& d = arena_[stack_.back()];
        if (d.kind != Kind::kDict) return OpError(op, std::string("target is a ") + KindName(d.kind) + ", not a dict");
        d.items.insert(d.items.end(), items.begin(), items.end());
        break;
      }
      case kAppend: {
        SEER_ASSIGN_OR_RETURN(Ref value, Pop(op));
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
        Obj& l = arena_[stack_.back()];
        if (l.kind != Kind::kList) return OpError(op, std::string("target is a ") + KindName(l.kind) + ", not a list");
        l.items.push_back(value);
        break;
      }
      case kAppends: {
        SEER_ASSIGN_OR_RETURN(std::vector<Ref> items, PopToMark(op));
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
        Obj& l = arena_[stack_.back()];
        if (l.kind != Kind::kList) return OpError(op, std::string("target is a ") + KindName(l.kind) + ", not a list");
        l.items.insert(l.items.end(), items.begin(), items.end());
        break;
      }
      case kGlobal: {
        // "module\nname\n"
        auto read_line = [&](std::string_view* out) {
          const void* nl = std::memchr(p_ + pos_, '\n', std::min<size_t>(size_ - pos_, 256));
          if (nl == nullptr) return false;
          const size_t len = static_cast<const uint8_t*>(nl) - (p_ + pos_);
          *out = std::string_view(reinterpret_cast<const char*>(p_ + pos_), len);
          pos_ += len + 1;
          return true;
        };
        std::string_view module, name;
        if (!read_line(&module) || !read_line(&name)) return OpError(op, "malformed module or name line");
        SEER_RETURN_IF_ERROR(PushGlobal(op, module, name));
        break;
      }
      case kStackGlobal: {
        SEER_ASSIGN_OR_RETURN(Ref name, Pop(op));
        SEER_ASSIGN_OR_RETURN(Ref module, Pop(op));
        if (arena_[name].kind != Kind::kString || arena_[module].kind != Kind::kString) {
          return OpError(op, "module and name must be strings");
        }
        const std::string m = arena_[module].s, n = arena_[name].s;
        SEER_RETURN_IF_ERROR(PushGlobal(op, m, n));
        break;
      }
      case kReduce: SEER_RETURN_IF_ERROR(Reduce(op)); break;
      case kBuild: {
        // OrderedDict.__reduce__ hands its instance __dict__ (the state
        // dict's _metadata) to BUILD. It carries no weights: checked, dropped.
        SEER_ASSIGN_OR_RETURN(Ref state, Pop(op));
        (void)state;
        if (stack_.size() <= (marks_.empty() ? 0 : marks_.back())) return OpError(op, "stack underflow");
        const Obj& target = arena_[stack_.back()];
        if (target.kind != Kind::kDict) {
          return OpError(op, std::string("BUILD is only allowed on an OrderedDict, not on a ") + KindName(target.kind));
        }
        break;
      }
      case kBinPersId: SEER_RETURN_IF_ERROR(PersistentLoad(op)); break;
      default: return OpError(op, "is not allowed in a state dict pickle");
    }
  }
  op_pos_ = pos_;
  return Fail("no STOP opcode (truncated pickle)");
}

// ---------------------------------------------------------------------------

bool MulOverflow(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool AddOverflow(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_add_overflow(a, b, out); }

float LoadElement(DType t, const uint8_t* p) {
  switch (t) {
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return Bf16ToFloat(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return Fp16ToFloat(h);
    }
    default: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
  }
}

// Finds the single "<prefix>/data.pkl" entry and returns "<prefix>/".
StatusOr<std::string> FindPrefix(const std::string& file, const ZipReader& zip) {
  std::string prefix;
  int found = 0;
  for (const ZipEntry& e : zip.entries()) {
    constexpr std::string_view kPkl = "data.pkl";
    if (e.name.size() <= kPkl.size() || e.name.compare(e.name.size() - kPkl.size(), kPkl.size(), kPkl) != 0) continue;
    const std::string p = e.name.substr(0, e.name.size() - kPkl.size());
    if (p.back() != '/' || p.find('/') != p.size() - 1) continue;
    prefix = p;
    ++found;
  }
  if (found == 0) return InvalidArgument(file + ": no '<name>/data.pkl' entry; not a torch.save zip checkpoint");
  if (found > 1) return InvalidArgument(file + ": more than one '<name>/data.pkl' entry");
  return prefix;
}

}  // namespace

const PthTensor* PthStateDict::Find(std::string_view name) const {
  for (const PthTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

StatusOr<PthStateDict> ParsePth(const std::string& name, const uint8_t* data, size_t size, const PthLimits& limits) {
  if (uint64_t(size) > limits.max_file_bytes) {
    return InvalidArgument(name + ": " + std::to_string(size) + " bytes, more than the limit of " +
                           std::to_string(limits.max_file_bytes) + " (" + limits.source + ")");
  }
  if (size >= 2 && data[0] == 0x80 && data[1] <= 5) {
    return InvalidArgument(name + ": a legacy (pre-zip) torch.save file; re-save it with torch >= 1.6");
  }
  SEER_ASSIGN_OR_RETURN(ZipReader zip, ZipReader::Parse(name, data, size));
  SEER_ASSIGN_OR_RETURN(std::string prefix, FindPrefix(name, zip));

  if (const ZipEntry* bo = zip.Find(prefix + "byteorder")) {
    SEER_ASSIGN_OR_RETURN(ZipBytes b, zip.Read(*bo));
    const std::string_view order(reinterpret_cast<const char*>(b.data), b.size);
    if (order != "little") {
      return InvalidArgument(name + ": byteorder is '" + Printable(order) + "'; only little-endian is supported");
    }
  }
  const ZipEntry* pkl_entry = zip.Find(prefix + "data.pkl");
  if (pkl_entry->size > limits.max_pickle_bytes) {
    return InvalidArgument(name + ": data.pkl is " + std::to_string(pkl_entry->size) +
                           " bytes, more than the limit of " + std::to_string(limits.max_pickle_bytes) + " (" +
                           limits.source + ")");
  }
  SEER_ASSIGN_OR_RETURN(ZipBytes pkl, zip.Read(*pkl_entry));

  // At most one object per pickle byte: the arena stays proportional to the
  // pickle whatever its opcodes.
  Unpickler u(name, pkl.data, pkl.size, std::min<size_t>(limits.max_objects, pkl.size));
  SEER_ASSIGN_OR_RETURN(Ref root_ref, u.Run());
  const Obj& root = u.at(root_ref);
  if (root.kind != Kind::kDict) {
    return InvalidArgument(name + ": the pickle holds a " + KindName(root.kind) + ", not a state dict");
  }

  PthStateDict out;
  // Keys seen so far; they point into the unpickler's arena, which no longer
  // changes. A hash set keeps the duplicate check linear in the key count.
  std::unordered_set<std::string_view> names;
  std::map<std::string, ZipBytes> storages;  // key -> verified bytes
  // Output is bounded by the file: views that re-read one storage many times
  // could otherwise ask for far more memory than the file holds. A caller
  // that knows the tensors' shapes bounds the float32 values tighter.
  const uint64_t budget = 2 * uint64_t(size) + (uint64_t{1} << 20);
  uint64_t used = 0, value_bytes = 0;
  for (size_t k = 0; k + 1 < root.items.size(); k += 2) {
    const Obj& key = u.at(root.items[k]);
    const Obj& value = u.at(root.items[k + 1]);
    if (key.kind != Kind::kString) {
      return InvalidArgument(name + ": state dict key " + std::to_string(k / 2) + " is a " + KindName(key.kind) +
                             ", not a str");
    }
    const std::string shown = "'" + Printable(key.s) + "'";
    if (value.kind != Kind::kTensor) {
      return InvalidArgument(name + ": state dict entry " + shown + " is a " + KindName(value.kind) + ", not a tensor");
    }
    if (!names.insert(key.s).second) return InvalidArgument(name + ": state dict key " + shown + " appears twice");
    const Obj& storage = u.at(value.storage);

    auto it = storages.find(storage.s);
    if (it == storages.end()) {
      const std::string entry_name = prefix + "data/" + storage.s;
      const ZipEntry* entry = zip.Find(entry_name);
      if (entry == nullptr) {
        return InvalidArgument(name + ": tensor " + shown + " refers to storage '" + Printable(storage.s) +
                               "' but there is no entry '" + Printable(entry_name) + "'");
      }
      SEER_ASSIGN_OR_RETURN(ZipBytes bytes, zip.Read(*entry));
      it = storages.emplace(storage.s, bytes).first;
    }
    const size_t elem = DTypeSize(storage.dtype);
    uint64_t storage_bytes = 0;
    if (MulOverflow(uint64_t(storage.numel), elem, &storage_bytes) || storage_bytes > it->second.size) {
      return InvalidArgument(name + ": storage '" + Printable(storage.s) + "' claims " + std::to_string(storage.numel) +
                             " elements but its entry holds " + std::to_string(it->second.size) + " bytes");
    }

    // The view must stay inside the storage: offset + sum((size-1) * stride) < numel.
    uint64_t numel = 1, last = uint64_t(value.offset);
    bool overflow = false;
    for (size_t d = 0; d < value.shape.size(); ++d) {
      uint64_t span = 0;
      overflow |= MulOverflow(numel, uint64_t(value.shape[d]), &numel);
      if (value.shape[d] > 0) {
        overflow |= MulOverflow(uint64_t(value.shape[d] - 1), uint64_t(value.stride[d]), &span);
        overflow |= AddOverflow(last, span, &last);
      }
    }
    std::string shape_text = "[";
    for (size_t d = 0; d < value.shape.size(); ++d) shape_text += (d ? ", " : "") + std::to_string(value.shape[d]);
    shape_text += "]";
    if (overflow || (numel > 0 && last >= uint64_t(storage.numel))) {
      return InvalidArgument(name + ": tensor " + shown + " (shape " + shape_text + ", offset " +
                             std::to_string(value.offset) + ") reaches past the end of its storage of " +
                             std::to_string(storage.numel) + " elements");
    }
    uint64_t bytes_out = 0;
    if (MulOverflow(numel, elem, &bytes_out) || AddOverflow(used, bytes_out, &used) || used > budget) {
      return InvalidArgument(name +
                             ": tensors add up to more elements than the file can hold (views that "
                             "repeat a storage are limited to twice the file size)");
    }
    if (AddOverflow(value_bytes, numel * sizeof(float), &value_bytes) || value_bytes > limits.max_value_bytes) {
      return InvalidArgument(name + ": tensors add up to more than " + std::to_string(limits.max_value_bytes) +
                             " bytes of float32 values (" + limits.source + ")");
    }

    PthTensor t;
    t.name = key.s;
    t.dtype = storage.dtype;
    t.shape = value.shape;
    t.values.resize(numel);
    // Gather through the strides with an odometer over the index.
    const uint8_t* base = it->second.data;
    const size_t rank = value.shape.size();
    std::vector<int64_t> idx(rank, 0);
    uint64_t at = uint64_t(value.offset);
    for (uint64_t n = 0; n < numel; ++n) {
      t.values[n] = LoadElement(storage.dtype, base + at * elem);
      for (size_t d = rank; d-- > 0;) {
        at += uint64_t(value.stride[d]);
        if (++idx[d] < value.shape[d]) break;
        at -= uint64_t(value.stride[d]) * uint64_t(value.shape[d]);
        idx[d] = 0;
      }
    }
    out.tensors.push_back(std::move(t));
  }
  return out;
}

StatusOr<PthStateDict> ReadPthFile(const std::string& path, const PthLimits& limits) {
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
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > limits.max_file_bytes) {
    ::close(fd);
    return InvalidArgument(path + ": " + std::to_string(size) + " bytes, more than the limit of " +
                           std::to_string(limits.max_file_bytes) + " (" + limits.source + ")");
  }
  if (size == 0) {
    ::close(fd);
    return ParsePth(path, nullptr, 0, limits);
  }
  // A read-only private mapping: the parser touches the zip directory, the
  // pickle and the storages it converts, never the rest of the file, and the
  // pages go when the mapping does.
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) return InvalidArgument(path + ": mmap failed: " + std::strerror(map_err));
  StatusOr<PthStateDict> parsed = ParsePth(path, static_cast<const uint8_t*>(map), size, limits);
  ::munmap(map, size);
  return parsed;
}

}  // namespace seer
