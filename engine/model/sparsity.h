// Which attention blocks to compute (DESIGN.md §1, "Selection modes").
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace seer {

enum class SparsityMode { kDense, kThreshold, kNzRatio };

struct SparsityConfig {
  SparsityMode mode = SparsityMode::kDense;
  double threshold = 0.0;  // kThreshold: keep blocks whose softmax probability is > threshold
  double nz_ratio = 1.0;   // kNzRatio: kept fraction of the causal triangle, in (0, 1]
  bool last_block_dense = true;
};

// Parses "dense", "threshold=T" (0 <= T < 1) or "nz_ratio=R" (0 < R <= 1).
// last_block_dense is taken from `base`. Errors name the text and the limit.
StatusOr<SparsityConfig> ParseSparsity(std::string_view text, const SparsityConfig& base = {});

// "dense", "threshold=0.002", "nz_ratio=0.1".
std::string SparsityToString(const SparsityConfig& s);

}  // namespace seer
