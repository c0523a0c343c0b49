// Token ids on the command line: "1,2,3" (commas and/or whitespace) or @FILE.
// Shared by `seer run`, `seer generate` and `seer prefill`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace seer {

// Files larger than this are refused before they are read whole.
inline constexpr size_t kMaxTokenIdsFileBytes = size_t{256} << 20;

// Parses `value`, the text of flag `flag_name` (e.g. "--ids"). An empty list
// is returned as such; callers that need ids say so. Errors name the flag,
// the item and where it came from.
StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& value, const std::string& flag_name);

}  // namespace seer
