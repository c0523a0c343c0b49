#include "kernels/attention/attention_cpu.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ops/ops_cpu.h"
#include "kernels/common/parallel.h"

namespace seer::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kMinParallelMacs = 1 << 20;

// One (query head, query block) task of the prefill kernels, in four stages
// per selected key block: load (transpose K), scores (Q K^T), online softmax,
// accumulate (P V). The softmax is the usual running max / running sum
// rescaling, in float32.
class QueryBlockTask {
 public:
  QueryBlockTask(const AttentionShape& s, int block_size)
      : s_(s),
        block_size_(block_size),
        k_t_(static_cast<size_t>(s.head_dim) * block_size),
        scores_(static_cast<size_t>(block_size) * block_size),
        acc_(static_cast<size_t>(block_size) * s.head_dim),
        row_max_(block_size),
        row_sum_(block_size) {}

  void Run(int head, int q_block, const int32_t* key_blocks, int num_key_blocks, const float* q, const float* k,
           const float* v, float* out) {
    const int D = s_.head_dim;
    const int q0 = q_block * block_size_;
    const int rows = std::min(block_size_, s_.seq_len - q0);
    const int kv_head = head / (s_.num_heads / s_.num_kv_heads);
    const size_t q_stride = static_cast<size_t>(s_.num_heads) * D;
    const size_t q_row = static_cast<size_t>(q0 - s_.first_row);  // q and out hold rows first_row..
    const float* q_tile = q + q_row * q_stride + static_cast<size_t>(head) * D;
    const float* k_head = k + static_cast<size_t>(kv_head) * s_.kv_stride * D;
    const float* v_head = v + static_cast<size_t>(kv_head) * s_.kv_stride * D;

    std::fill(acc_.begin(), acc_.begin() + static_cast<size_t>(rows) * D, 0.0f);
    std::fill(row_max_.begin(), row_max_.end(), kNegInf);
    std::fill(row_sum_.begin(), row_sum_.end(), 0.0f);

    for (int b = 0; b < num_key_blocks; ++b) {
      const int kb = key_blocks[b];
      const int k0 = kb * block_size_;
      const int cols = std::min(block_size_, s_.seq_len - k0);
      // Load: K block [cols, D] -> [D, cols], so the score product runs along keys.
      Transpose(k_head + static_cast<size_t>(k0) * D, cols, D, k_t_.data());
      // Scores: S = Q K^T * scale, token-level causal mask on the diagonal block.
      std::fill(scores_.begin(), scores_.begin() + static_cast<size_t>(rows) * cols, 0.0f);
      MatMulAccumulate(rows, cols, D, q_tile, static_cast<int>(q_stride), k_t_.data(), cols, scores_.data(), cols);
      for (int i = 0; i < rows; ++i) {
        float* srow = scores_.data() + static_cast<size_t>(i) * cols;
        for (int j = 0; j < cols; ++j) srow[j] *= s_.scale;
        if (k0 + cols - 1 > q0 + i) {
          for (int j = std::max(0, q0 + i - k0 + 1); j < cols; ++j) srow[j] = kNegInf;
        }
      }
      // Online softmax: rescale what was accumulated when a row's max grows.
      for (int i = 0; i < rows; ++i) {
        float* srow = scores_.data() + static_cast<size_t>(i) * cols;
        float block_max = kNegInf;
        for (int j = 0; j < cols; ++j) block_max = std::max(block_max, srow[j]);
        if (block_max == kNegInf) {  // nothing visible in this block for this row
          std::fill(srow, srow + cols, 0.0f);
          continue;
        }
        const float new_max = std::max(row_max_[i], block_max);
        const float correction = std::exp(row_max_[i] - new_max);
        float sum = 0.0f;
        for (int j = 0; j < cols; ++j) {
          srow[j] = std::exp(srow[j] - new_max);
          sum += srow[j];
        }
        row_sum_[i] = row_sum_[i] * correction + sum;
        row_max_[i] = new_max;
        if (correction != 1.0f) {
          float* arow = acc_.data() + static_cast<size_t>(i) * D;
          for (int d = 0; d < D; ++d) arow[d] *= correction;
        }
      }
      // Accumulate: O += P V.
      MatMulAccumulate(rows, D, cols, scores_.data(), cols, v_head + static_cast<size_t>(k0) * D, D, acc_.data(), D);
    }

    for (int i = 0; i < rows; ++i) {
      float* orow = out + (q_row + i) * q_stride + static_cast<size_t>(head) * D;
      const float* arow = acc_.data() + static_cast<size_t>(i) * D;
      if (row_sum_[i] == 0.0f) {  // empty block list: zeros, as documented
        std::memset(orow, 0, sizeof(float) * D);
        continue;
      }
      const float inv = 1.0f / row_sum_[i];
      for (int d = 0; d < D; ++d) orow[d] = arow[d] * inv;
    }
  }

 private:
  const AttentionShape& s_;
  int block_size_;
  std::vector<float> k_t_, scores_, acc_, row_max_, row_sum_;
};

// Runs every (head, query block) task, the longest rows first so that the
// dynamic schedule ends evenly. lists(h, qb) returns {pointer, count}.
template <typename ListsFn>
void RunQueryBlocks(const AttentionShape& s, int block_size, ListsFn&& lists, const float* q, const float* k,
                    const float* v, float* out, int num_threads) {
  assert(s.first_row % block_size == 0 && (s.first_row == 0 || s.first_row < s.seq_len));
  const int nb = (s.seq_len + block_size - 1) / block_size;
  const int tasks = s.num_heads * (nb - s.first_row / block_size);  // the query blocks from first_row's
  // Below about a million multiply-adds, starting threads costs more than
  // it saves (and far more on a busy machine).
  const double causal_macs = 2.0 * s.num_heads * s.head_dim * 0.5 * double(s.seq_len) * (s.seq_len + 1);
  const int threads = causal_macs < kMinParallelMacs ? 1 : std::max(1, std::min(num_threads, tasks));
  ParallelFor(tasks, threads, [&](int t) {
    const int qb = nb - 1 - t / s.num_heads;
    const int h = t % s.num_heads;
    auto [ptr, count] = lists(h, qb);
    QueryBlockTask task(s, block_size);
    task.Run(h, qb, ptr, count, q, k, v, out);
  });
}

}  // namespace

void CausalAttention(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                     int num_threads) {
  constexpr int kBlock = 64;
  const int nb = (s.seq_len + kBlock - 1) / kBlock;
  std::vector<int32_t> all_blocks(nb);
  for (int i = 0; i < nb; ++i) all_blocks[i] = i;
  RunQueryBlocks(
      s, kBlock, [&](int, int qb) { return std::pair<const int32_t*, int>(all_blocks.data(), qb + 1); }, q, k, v, out,
      num_threads);
}

void BlockSparseAttention(const AttentionShape& s, int block_size, const int32_t* offsets, const int32_t* indices,
                          const float* q, const float* k, const float* v, float* out, int num_threads) {
  const int nb = (s.seq_len + block_size - 1) / block_size;
  RunQueryBlocks(
      s, block_size,
      [&](int h, int qb) {
        const int32_t begin = offsets[h * nb + qb];
        const int32_t end = offsets[h * nb + qb + 1];
        return std::pair<const int32_t*, int>(indices + begin, end - begin);
      },
      q, k, v, out, num_threads);
}

void DecodeAttention(const AttentionShape& s, int pos, const float* q, const float* k, const float* v, float* out) {
  const int D = s.head_dim;
  const int group = s.num_heads / s.num_kv_heads;
  std::vector<float> scores(static_cast<size_t>(pos) + 1);
  for (int h = 0; h < s.num_heads; ++h) {
    const float* qh = q + static_cast<size_t>(h) * D;
    const float* k_head = k + static_cast<size_t>(h / group) * s.kv_stride * D;
    const float* v_head = v + static_cast<size_t>(h / group) * s.kv_stride * D;
    float max_score = kNegInf;
    for (int j = 0; j <= pos; ++j) {
      const float* kj = k_head + static_cast<size_t>(j) * D;
      // Eight independent partial sums: vectorisable without reassociation.
      float part[8] = {};
      int d = 0;
      for (; d + 8 <= D; d += 8) {
        for (int u = 0; u < 8; ++u) part[u] += qh[d + u] * kj[d + u];
      }
      float dot = 0.0f;
      for (; d < D; ++d) dot += qh[d] * kj[d];
      for (int u = 0; u < 8; ++u) dot += part[u];
      scores[j] = dot * s.scale;
      max_score = std::max(max_score, scores[j]);
    }
    float sum = 0.0f;
    for (int j = 0; j <= pos; ++j) {
      scores[j] = std::exp(scores[j] - max_score);
      sum += scores[j];
    }
    float* oh = out + static_cast<size_t>(h) * D;
    std::fill(oh, oh + D, 0.0f);
    for (int j = 0; j <= pos; ++j) {
      const float p = scores[j];
      const float* vj = v_head + static_cast<size_t>(j) * D;
      for (int d = 0; d < D; ++d) oh[d] += p * vj[d];
    }
    const float inv = 1.0f / sum;
    for (int d = 0; d < D; ++d) oh[d] *= inv;
  }
}

}  // namespace seer::cpu
