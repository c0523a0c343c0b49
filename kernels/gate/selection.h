// Which attention blocks the gate keeps (docs/GATES.md, "Selection"): the
// one description of a selection that the request parser, the engine, the CPU
// twin and the CUDA kernel all carry. Values are valid by construction:
// engine/model/sparsity.h is the only place that turns user input into one.
#pragma once

#include <cmath>
#include <cstdint>

namespace seer {

enum class SparsityMode { kDense, kThreshold, kNzRatio };

struct SparsityConfig {
  SparsityMode mode = SparsityMode::kDense;
  double threshold = 0.0;  // kThreshold: keep blocks whose softmax probability is > float(threshold)
  double nz_ratio = 1.0;   // kNzRatio: kept fraction of the causal triangle, in (0, 1]
  // The last 2 query-block rows stay dense (before the causal cut).
  bool last_block_dense = true;
};

// kNzRatio keeps the best k causal blocks of every row, one k for all rows:
// k = max(1, int((1 - sqrt(1 - r)) * nb)), as the reference's top-k.
inline int64_t NzRatioTopK(double nz_ratio, int64_t num_blocks) {
  const int64_t k = static_cast<int64_t>((1.0 - std::sqrt(1.0 - nz_ratio)) * static_cast<double>(num_blocks));
  return k < 1 ? 1 : k;
}

// The first query-block row that last_block_dense makes dense (num_blocks when
// none is).
inline int64_t FirstDenseRow(bool last_block_dense, int64_t num_blocks) {
  if (!last_block_dense) return num_blocks;
  return num_blocks > 2 ? num_blocks - 2 : 0;
}

}  // namespace seer
