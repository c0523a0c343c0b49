// Reads a PyTorch checkpoint written by torch.save (the zip format: entries
// <prefix>/data.pkl, <prefix>/data/<key>, <prefix>/byteorder, ...) holding a
// flat state dict {name: tensor}, without executing any pickle code.
//
// The unpickler is an allow-list: it knows only the opcodes a tensor state
// dict uses and resolves only these globals:
//   collections.OrderedDict              (called with no arguments)
//   torch._utils._rebuild_tensor_v2      (storage, offset, size, stride, ...)
//   torch._utils._rebuild_parameter      (tensor, requires_grad, hooks)
//   torch.BFloat16Storage, torch.HalfStorage, torch.FloatStorage
//                                        (only inside a persistent id)
// Anything else (os.system, builtins.eval, an unknown opcode, another dtype)
// is an INVALID_ARGUMENT that names the global or opcode and the file.
// Every index, offset, size and stride is bounds-checked, and the CRC-32 of
// each entry read is verified. See docs/GATES.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace seer {

struct PthTensor {
  std::string name;
  DType dtype = DType::kF32;  // as stored: kBF16, kF16 or kF32
  std::vector<int64_t> shape;
  std::vector<float> values;  // gathered through the strides, contiguous row-major
};

struct PthStateDict {
  std::vector<PthTensor> tensors;  // in the file's order
  const PthTensor* Find(std::string_view name) const;
};

// Limits on hostile input.
struct PthLimits {
  static constexpr size_t kMaxPickleBytes = size_t{64} << 20;
  static constexpr size_t kMaxObjects = size_t{1} << 22;
  static constexpr int kMaxRank = 16;
  static constexpr uint64_t kMaxFileBytes = uint64_t{64} << 30;
};

// Reads the file at `path`.
StatusOr<PthStateDict> ReadPthFile(const std::string& path);

// Parses an in-memory checkpoint; `name` stands for the file in errors.
StatusOr<PthStateDict> ParsePth(const std::string& name, const uint8_t* data, size_t size);

}  // namespace seer
