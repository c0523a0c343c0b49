// What the whole-system benchmarks share: the model shapes they run
// (bench/llama_shape.h) and small argument helpers.
#pragma once

#include <string>
#include <vector>

#include "bench/llama_shape.h"

namespace seer {

// Comma-separated items of `s`, empty items dropped.
inline std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace seer
