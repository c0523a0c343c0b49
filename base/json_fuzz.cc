// libFuzzer target: the JSON parser on arbitrary text. Besides not crashing,
// what it accepts must survive Dump() -> Parse() -> Dump() unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "base/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto value = seer::JsonValue::Parse(text);
  if (!value.ok()) {
    if (value.status().message().rfind("line ", 0) != 0) std::abort();  // "line L, column C: ..."
    return 0;
  }
  const std::string once = value->Dump();
  auto again = seer::JsonValue::Parse(once);
  if (!again.ok()) std::abort();
  if (again->Dump() != once) std::abort();
  return 0;
}
