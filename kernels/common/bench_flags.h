// The kernel benchmarks' "--name=value" flags (header only: kernels/ depends
// on nothing else in the tree, so they do not use base/flags.h).
#pragma once

#include <string>
#include <vector>

namespace seer::bench {

// "a,b,c" -> {"a", "b", "c"} (empty fields kept).
inline std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

// The value of `arg` when it is "name=value", else null.
inline const char* FlagValue(const char* arg, const char* name) {
  const std::string prefix = std::string(name) + "=";
  return std::string(arg).rfind(prefix, 0) == 0 ? arg + prefix.size() : nullptr;
}

}  // namespace seer::bench
