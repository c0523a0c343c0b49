// The kernel benchmarks' "--name=value" flags (header only: kernels/ depends
// on nothing else in the tree, so they do not use base/flags.h).
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/common/elem_type.h"

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

// "1,2,3" -> {1, 2, 3}; "0.5,0.9" -> {0.5, 0.9}; "bf16,fp16" -> element
// types (anything but "fp16" is bf16).
inline std::vector<int> IntList(const std::string& s) {
  std::vector<int> out;
  for (const std::string& f : SplitCommas(s)) out.push_back(std::atoi(f.c_str()));
  return out;
}
inline std::vector<double> DoubleList(const std::string& s) {
  std::vector<double> out;
  for (const std::string& f : SplitCommas(s)) out.push_back(std::atof(f.c_str()));
  return out;
}
inline std::vector<cuda::ElemType> ElemTypeList(const std::string& s) {
  std::vector<cuda::ElemType> out;
  for (const std::string& f : SplitCommas(s)) out.push_back(f == "fp16" ? cuda::ElemType::kF16 : cuda::ElemType::kBF16);
  return out;
}

// The value of `arg` when it is "name=value", else null.
inline const char* FlagValue(const char* arg, const char* name) {
  const std::string prefix = std::string(name) + "=";
  return std::string(arg).rfind(prefix, 0) == 0 ? arg + prefix.size() : nullptr;
}

}  // namespace seer::bench
