// cpu::DistillTarget (kernels/gate/distill_target_cpu.h): one task per
// (Q head, query block), four stages per key block: load (transpose K),
// scores (Q K^T, scaled, token-causal on the diagonal), online softmax
// statistics (row max, row sum) and the tile's row maxima; then the target
// row from those.

#include "kernels/gate/distill_target_cpu.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <limits>

#include "kernels/common/parallel.h"
#include "kernels/ops/ops_cpu.h"

namespace seer::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

class TargetRowTask {
 public:
  TargetRowTask(const DistillTargetProblem& p, int nb)
      : p_(p),
        nb_(nb),
        k_t_(static_cast<size_t>(p.head_dim) * p.block_size),
        scores_(static_cast<size_t>(p.block_size) * p.block_size),
        tile_max_(static_cast<size_t>(p.block_size) * nb),
        row_max_(p.block_size),
        row_sum_(p.block_size) {}

  // Writes target row `q_block` of `head` (nb values, 0 above the diagonal).
  void Run(int head, int q_block, float* out) {
    const int D = p_.head_dim, bs = p_.block_size;
    const int q0 = q_block * bs;
    const int rows = std::min(bs, p_.seq_len - q0);
    const int kv_head = head / (p_.num_heads / p_.num_kv_heads);
    const size_t q_stride = static_cast<size_t>(p_.num_heads) * D;
    const size_t k_stride = static_cast<size_t>(p_.num_kv_heads) * D;
    const float* q_tile = p_.q + static_cast<size_t>(q0) * q_stride + static_cast<size_t>(head) * D;

    std::fill(row_max_.begin(), row_max_.end(), kNegInf);
    std::fill(row_sum_.begin(), row_sum_.end(), 0.0);
    for (int kb = 0; kb <= q_block; ++kb) {
      const int k0 = kb * bs;
      const int cols = std::min(bs, p_.seq_len - k0);
      // Load: this KV head's K rows [cols, D] -> [D, cols].
      for (int j = 0; j < cols; ++j) {
        const float* src = p_.k + static_cast<size_t>(k0 + j) * k_stride + static_cast<size_t>(kv_head) * D;
        for (int c = 0; c < D; ++c) k_t_[static_cast<size_t>(c) * cols + j] = src[c];
      }
      // Scores: S = Q K^T * scale; keys past the query are masked on the diagonal.
      std::fill(scores_.begin(), scores_.begin() + static_cast<size_t>(rows) * cols, 0.0f);
      MatMulAccumulate(rows, cols, D, q_tile, static_cast<int>(q_stride), k_t_.data(), cols, scores_.data(), cols);
      // Softmax statistics and the tile's row maxima.
      for (int i = 0; i < rows; ++i) {
        float* srow = scores_.data() + static_cast<size_t>(i) * cols;
        const int visible = kb < q_block ? cols : std::min(cols, i + 1);
        float tmax = kNegInf;
        for (int j = 0; j < visible; ++j) {
          srow[j] *= p_.scale;
          tmax = std::max(tmax, srow[j]);
        }
        tile_max_[static_cast<size_t>(i) * nb_ + kb] = tmax;
        const float new_max = std::max(row_max_[i], tmax);
        double sum = 0.0;
        for (int j = 0; j < visible; ++j) sum += std::exp(static_cast<double>(srow[j] - new_max));
        row_sum_[i] = row_sum_[i] * std::exp(static_cast<double>(row_max_[i] - new_max)) + sum;
        row_max_[i] = new_max;
      }
    }
    // The block maximum of p = exp(s - row_max) / row_sum over the tile's
    // rows, then the row normalised.
    double total = 0.0;
    for (int kb = 0; kb <= q_block; ++kb) {
      double best = 0.0;
      for (int i = 0; i < rows; ++i) {
        const double pmax =
            std::exp(static_cast<double>(tile_max_[static_cast<size_t>(i) * nb_ + kb] - row_max_[i])) / row_sum_[i];
        best = std::max(best, pmax);
      }
      out[kb] = static_cast<float>(best);
      total += best;
    }
    for (int kb = 0; kb <= q_block; ++kb) out[kb] = static_cast<float>(out[kb] / total);
  }

 private:
  const DistillTargetProblem& p_;
  int nb_;
  std::vector<float> k_t_, scores_, tile_max_, row_max_;
  std::vector<double> row_sum_;
};

}  // namespace

std::vector<float> DistillTarget(const DistillTargetProblem& p, int num_threads) {
  assert(p.block_size > 0 && p.head_dim > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0);
  const int nb = (p.seq_len + p.block_size - 1) / p.block_size;
  std::vector<float> target(static_cast<size_t>(p.num_heads) * nb * nb, 0.0f);
  if (nb == 0) return target;
  // One scratch set per worker; tasks go from the longest rows down, one at
  // a time, so the causal triangle balances.
  const int tasks = p.num_heads * nb;
  const int workers = std::max(1, std::min(num_threads, tasks));
  std::atomic<int> next{0};
  ParallelFor(workers, workers, [&](int) {
    TargetRowTask row(p, nb);
    for (int task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) {
      const int q_block = nb - 1 - task / p.num_heads;
      const int head = task % p.num_heads;
      row.Run(head, q_block, target.data() + (static_cast<size_t>(head) * nb + q_block) * nb);
    }
  });
  return target;
}

}  // namespace seer::cpu
