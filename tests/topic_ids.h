// Token streams with block-level structure, for gate-training tests on a
// random model: every 64-token block draws its tokens from one of 8
// "topics" of 3 ids (3 .. 26). The model's attention between two blocks then
// depends on their topics, which pooled Q and K reveal; on uniformly random
// tokens a random model's block attention is close to uniform and there is
// little for a gate to learn.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace seer::test_data {

inline std::vector<int32_t> TopicIds(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> topic(0, 7), member(0, 2);
  std::vector<int32_t> ids(n);
  int32_t t = 0;
  for (size_t i = 0; i < n; ++i) {
    if (i % 64 == 0) t = topic(rng);
    ids[i] = 3 + 3 * t + member(rng);
  }
  return ids;
}

}  // namespace seer::test_data
