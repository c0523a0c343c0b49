// libFuzzer target: the safetensors header parser on arbitrary bytes. It must
// return a status for every input (no crash, no leak, no UB), and every
// tensor it accepts must lie inside the buffer and agree with its shape.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = seer::SafetensorsFile::Parse("fuzz.safetensors", data, size);
  if (!file.ok()) {
    if (file.status().message().rfind("fuzz.safetensors: ", 0) != 0) std::abort();  // errors name the file
    return 0;
  }
  for (const seer::TensorView& t : (*file)->tensors()) {
    if (t.data < data || t.data + t.nbytes > data + size) std::abort();
    if (static_cast<uint64_t>(t.numel()) * seer::DTypeSize(t.dtype) != t.nbytes) std::abort();
    if ((*file)->Find(t.name) != &t) std::abort();
    // Touch the bytes so ASan checks the whole range.
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
  }
  return 0;
}
