// Which attention blocks the gate keeps (docs/GATES.md, "Selection"): the
// one description of a selection that the request parser, the engine, the CPU
// twin and the CUDA kernel all carry. Values are valid by construction:
// engine/model/sparsity.h is the only place that turns user input into one.
//
// Two modes are baselines for the quality evaluation rather than the gate's
// own selections (docs/QUALITY.md); the CPU gate computes them, the CUDA gate
// refuses them:
//   kStreaming  StreamingLLM: the first `streaming_sink` key blocks of every
//               row plus its last `streaming_window` (diagonal included).
//   kOracle     the top fraction `oracle_ratio` of each row's causal blocks
//               ranked by the true distillation target (the block max of the
//               causal softmax, DESIGN §1): an upper bound for any gate.
#pragma once

#include <cmath>
#include <cstdint>

namespace seer {

enum class SparsityMode { kDense, kThreshold, kNzRatio, kStreaming, kOracle };

struct SparsityConfig {
  SparsityMode mode = SparsityMode::kDense;
  double threshold = 0.0;  // kThreshold: keep blocks whose softmax probability is > float(threshold)
  double nz_ratio = 1.0;  // kNzRatio: kept fraction of the causal triangle, in (0, 1]
  int streaming_sink = 0;  // kStreaming: leading key blocks every row keeps, >= 0
  int streaming_window = 1;  // kStreaming: trailing key blocks every row keeps (diagonal included), >= 1
  double oracle_ratio = 1.0;  // kOracle: kept fraction of each row's causal blocks, in (0, 1]
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

// kStreaming keeps key block kb of query-block row qb (kb <= qb).
inline bool StreamingKeeps(int64_t sink, int64_t window, int64_t qb, int64_t kb) {
  return kb < sink || kb > qb - window;
}

// kOracle keeps this many of a row's `causal` blocks: the ratio of them
// rounded up, at least 1. (A hair below the product is forgiven, so that
// 0.3 * 10 keeps 3, not 4.)
inline int64_t OracleKeepCount(double ratio, int64_t causal) {
  const int64_t k = static_cast<int64_t>(std::ceil(ratio * static_cast<double>(causal) - 1e-9));
  return k < 1 ? 1 : (k > causal ? causal : k);
}

// How many blocks row qb keeps before the never-empty-row rule, for the modes
// whose count does not depend on the scores (all but kThreshold, which gives
// -1). For sizing and for choosing baselines at a matched density.
inline int64_t PlannedRowBlocks(const SparsityConfig& s, int64_t qb, int64_t num_blocks) {
  const int64_t causal = qb + 1;
  if (s.mode == SparsityMode::kDense || qb >= FirstDenseRow(s.last_block_dense, num_blocks)) return causal;
  switch (s.mode) {
    case SparsityMode::kNzRatio: {
      const int64_t k = NzRatioTopK(s.nz_ratio, num_blocks);
      return k < causal ? k : causal;
    }
    case SparsityMode::kStreaming: {
      // Blocks [0, sink) and (qb - window, qb], overlapping when the row is short.
      const int64_t window_first = qb - s.streaming_window + 1 > 0 ? qb - s.streaming_window + 1 : 0;
      const int64_t sink = s.streaming_sink < window_first ? s.streaming_sink : window_first;
      return sink + (causal - window_first);
    }
    case SparsityMode::kOracle: return OracleKeepCount(s.oracle_ratio, causal);
    case SparsityMode::kThreshold: return -1;
    case SparsityMode::kDense: break;
  }
  return causal;
}

// The density (kept / causal blocks, one head) PlannedRowBlocks gives at
// `num_blocks`; -1 for kThreshold.
inline double PlannedDensity(const SparsityConfig& s, int64_t num_blocks) {
  if (num_blocks <= 0) return 1.0;
  int64_t kept = 0;
  for (int64_t qb = 0; qb < num_blocks; ++qb) {
    const int64_t n = PlannedRowBlocks(s, qb, num_blocks);
    if (n < 0) return -1.0;
    kept += n;
  }
  return static_cast<double>(kept) / (static_cast<double>(num_blocks) * static_cast<double>(num_blocks + 1) / 2.0);
}

#if defined(__CUDACC__)
#define SEER_SELECTION_HD __host__ __device__ __forceinline__
#else
#define SEER_SELECTION_HD inline
#endif

// Kept blocks in rows 0 .. qb - 1 of one head for kNzRatio (topk) or kDense
// (topk < 0): min(topk, row + 1) below first_dense_row, row + 1 from there
// (PlannedRowBlocks summed), the CSR offset of row qb. In 32 bits, for the
// CUDA gate's select (in 64 the products cost its kernel 57 more warp
// instructions a row): exact while the head's whole list has fewer than 2^31
// entries (the CUDA gate refuses longer lists) and qb (qb + 1) < 2^32 (qb <=
// 65,535).
SEER_SELECTION_HD uint32_t MinU32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return min(a, b);  // the form the select was measured and tested with
#else
  return a < b ? a : b;
#endif
}

SEER_SELECTION_HD uint32_t ListPrefix(uint32_t qb, int32_t topk, uint32_t first_dense_row) {
  if (topk < 0) return qb * (qb + 1) / 2;
  const uint32_t below = MinU32(qb, first_dense_row);  // rows under the dense tail
  const uint32_t ramp = MinU32(below, static_cast<uint32_t>(topk));  // rows shorter than topk
  uint32_t total = ramp * (ramp + 1) / 2 + (below - ramp) * static_cast<uint32_t>(topk);
  if (qb > first_dense_row) total += (qb * (qb + 1) - first_dense_row * (first_dense_row + 1)) / 2;
  return total;
}

}  // namespace seer
