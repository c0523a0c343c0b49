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

// Limits on hostile input. The defaults bound any file; a loader that knows
// what the file must hold (LoadGates knows the model's shapes) passes tighter
// ones, so that a file far larger than its tensors is refused before it is
// read, and the unpickler's memory stays proportional to a pickle that can
// only be as long as the tensors it describes need.
struct PthLimits {
  static constexpr int kMaxRank = 16;
  // Nesting of MARKs: a state dict needs a handful.
  static constexpr size_t kMaxMarkDepth = 1024;

  uint64_t max_file_bytes = uint64_t{64} << 30;
  size_t max_pickle_bytes = size_t{64} << 20;
  size_t max_objects = size_t{1} << 22;
  // float32 values of all tensors together (also at most twice the file).
  uint64_t max_value_bytes = UINT64_MAX;
  // Named in errors: where the limits come from ("the gates of a 32-layer model").
  std::string source = "the reader's fixed limits";
};

// Reads the file at `path` through a read-only memory map (nothing is read
// before the size is checked, and only what is parsed is ever touched).
StatusOr<PthStateDict> ReadPthFile(const std::string& path, const PthLimits& limits = {});

// Parses an in-memory checkpoint; `name` stands for the file in errors.
StatusOr<PthStateDict> ParsePth(const std::string& name, const uint8_t* data, size_t size,
                                const PthLimits& limits = {});

}  // namespace seer
