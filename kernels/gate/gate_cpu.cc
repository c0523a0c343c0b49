// cpu::RunGate: the SeerAttention prefill gate of one layer on the CPU, in
// float32 (docs/GATES.md), the twin of kernels/gate/gate.cu. Each step mirrors the authors' PyTorch code, including
// where it rounds to float32, so that masks agree with a torch reference up
// to blocks that sit on the threshold:
//
//   pool      Q: average; K: max, min, average, concatenated in that order.
//             The partial last block divides by its real token count.
//   linear    k' = pooledK[h] @ Wk[h] after repeating KV heads to Q heads;
//             q' = pooledQ[h] @ Wq[h] when mask_linear_q is present.
//   rope      half-split RoPE at each block's first token position
//             (0, 64, 128, ...), with the model's rope config at dim = hidden.
//   scores    q'.k'^T * hidden^-0.5, block-causal (diagonal kept).
//   select    dense | threshold (softmax prob > t) | nz_ratio (top-k on raw
//             scores) | the baselines streaming (sink + window blocks) and
//             oracle (each row's top fraction by the distillation target),
//             then last_block_dense, then the non-empty-row rule.
//
// Nothing of size L x L is formed: the largest buffers are [nb, Hq, hidden]
// and the [Hq, nb, nb] outputs.

#include "kernels/gate/gate_cpu.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/common/parallel.h"

namespace seer::cpu {
namespace {

struct Dims {
  int seq_len = 0;
  int block = 0;
  int nb = 0;
  int hq = 0;
  int hkv = 0;
  int d = 0;  // model head_dim (gate in_channel)
  int hidden = 0;  // gate hidden size (rope dim, score dim)
  int k_heads = 0;  // heads of mask_linear_k: hq, or hkv in the force_double form
  bool has_q = false;
};

Dims DimsOf(const GateProblem& p) {
  Dims dm;
  dm.seq_len = p.seq_len;
  dm.block = p.block_size;
  dm.nb = (p.seq_len + p.block_size - 1) / p.block_size;
  dm.hq = p.num_heads;
  dm.hkv = p.num_kv_heads;
  dm.d = p.head_dim;
  dm.hidden = p.hidden;
  dm.k_heads = p.k_weight_heads;
  dm.has_q = p.q_weight != nullptr;
  return dm;
}

// Average of Q over each block: [nb, Hq, D].
std::vector<float> PoolQ(const float* q, const Dims& dm) {
  const size_t row = size_t(dm.hq) * dm.d;
  std::vector<float> pooled(size_t(dm.nb) * row);
  std::vector<double> sum(row);
  for (int b = 0; b < dm.nb; ++b) {
    const int t0 = b * dm.block;
    const int t1 = std::min(dm.seq_len, t0 + dm.block);
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int t = t0; t < t1; ++t) {
      const float* x = q + size_t(t) * row;
      for (size_t c = 0; c < row; ++c) sum[c] += x[c];
    }
    const double count = t1 - t0;
    float* out = pooled.data() + size_t(b) * row;
    for (size_t c = 0; c < row; ++c) out[c] = static_cast<float>(sum[c] / count);
  }
  return pooled;
}

// Max, min and average of K over each block, concatenated on channels in
// that order: [nb, Hkv, 3D].
std::vector<float> PoolK(const float* k, const Dims& dm) {
  const size_t row = size_t(dm.hkv) * dm.d;
  std::vector<float> pooled(size_t(dm.nb) * row * 3);
  std::vector<float> mx(row), mn(row);
  std::vector<double> sum(row);
  for (int b = 0; b < dm.nb; ++b) {
    const int t0 = b * dm.block;
    const int t1 = std::min(dm.seq_len, t0 + dm.block);
    const float* first = k + size_t(t0) * row;
    std::copy(first, first + row, mx.begin());
    std::copy(first, first + row, mn.begin());
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int t = t0; t < t1; ++t) {
      const float* x = k + size_t(t) * row;
      for (size_t c = 0; c < row; ++c) {
        // NaN propagates through max/min as it does in torch's pooling.
        const float v = x[c];
        if (v > mx[c] || std::isnan(v)) mx[c] = v;
        if (v < mn[c] || std::isnan(v)) mn[c] = v;
        sum[c] += v;
      }
    }
    const double count = t1 - t0;
    for (int h = 0; h < dm.hkv; ++h) {
      float* out = pooled.data() + (size_t(b) * dm.hkv + h) * 3 * dm.d;
      const size_t c0 = size_t(h) * dm.d;
      for (int c = 0; c < dm.d; ++c) {
        out[c] = mx[c0 + c];
        out[dm.d + c] = mn[c0 + c];
        out[2 * dm.d + c] = static_cast<float>(sum[c0 + c] / count);
      }
    }
  }
  return pooled;
}

// out[b, h, :] = x[b, h / (Hq / x_heads), :] @ W[h / (Hq / w_heads)], W stored
// [w_heads, in, hidden] ([in, out] per head: x.W, not x.W^T). [nb, Hq, hidden].
std::vector<float> ProjectPerHead(const std::vector<float>& x, int x_heads, int in, const float* w, int w_heads,
                                  const Dims& dm) {
  std::vector<float> out(size_t(dm.nb) * dm.hq * dm.hidden);
  const int x_group = dm.hq / x_heads;
  const int w_group = dm.hq / w_heads;
  std::vector<double> acc(dm.hidden);
  for (int b = 0; b < dm.nb; ++b) {
    for (int h = 0; h < dm.hq; ++h) {
      const float* xv = x.data() + (size_t(b) * x_heads + h / x_group) * in;
      const float* wh = w + size_t(h / w_group) * in * dm.hidden;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int i = 0; i < in; ++i) {
        const double xi = xv[i];
        const float* wrow = wh + size_t(i) * dm.hidden;
        for (int o = 0; o < dm.hidden; ++o) acc[o] += xi * wrow[o];
      }
      float* dst = out.data() + (size_t(b) * dm.hq + h) * dm.hidden;
      for (int o = 0; o < dm.hidden; ++o) dst[o] = static_cast<float>(acc[o]);
    }
  }
  return out;
}

// Half-split RoPE (HF rotate_half) on [nb, Hq, hidden] in place, block b at
// position b * block. Angles are float(pos) * float(inv_freq) in float32 and
// the rotation is float32, as HF computes them.
void ApplyBlockRope(std::vector<float>& x, const std::vector<float>& cos_t, const std::vector<float>& sin_t,
                    const Dims& dm) {
  const int half = dm.hidden / 2;
  for (int b = 0; b < dm.nb; ++b) {
    const float* c = cos_t.data() + size_t(b) * half;
    const float* s = sin_t.data() + size_t(b) * half;
    for (int h = 0; h < dm.hq; ++h) {
      float* v = x.data() + (size_t(b) * dm.hq + h) * dm.hidden;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i];
        const float x2 = v[i + half];
        const float a = x1 * c[i];
        const float bb = x2 * s[i];
        const float cc = x2 * c[i];
        const float dd = x1 * s[i];
        v[i] = a - bb;
        v[i + half] = cc + dd;
      }
    }
  }
}

// Orders block indices by score, highest first; NaN ranks above everything
// (as in torch.topk); equal scores go to the lower block index. That tie
// rule is ours: torch.topk on the CPU does not specify one.
struct ScoreGreater {
  const float* s;
  bool operator()(int i, int j) const {
    const float a = s[i], b = s[j];
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na != nb) return na;
    if (!na && a != b) return a > b;
    return i < j;
  }
};

}  // namespace

GateOutput RunGate(const GateProblem& p, const SparsityConfig& sparsity, int num_threads) {
  assert(p.seq_len >= 0 && p.block_size > 0 && p.hidden > 0 && p.hidden % 2 == 0);
  assert(p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0);
  assert(p.q_weight != nullptr || p.hidden == p.head_dim);
  assert(p.k_weight_heads == p.num_heads || (p.q_weight != nullptr && p.k_weight_heads == p.num_kv_heads));
  assert(sparsity.mode != SparsityMode::kOracle || p.oracle_target != nullptr || p.seq_len == 0);
  const Dims dm = DimsOf(p);
  const int seq_len = p.seq_len;
  const float* q = p.q;
  const float* k = p.k;

  GateOutput out;
  out.mask.num_heads = dm.hq;
  out.mask.num_blocks = dm.nb;
  out.mask.block_size = dm.block;
  out.mask.seq_len = seq_len;
  const size_t nb = size_t(dm.nb);
  out.mask.keep.assign(size_t(dm.hq) * nb * nb, 0);
  out.probs.assign(size_t(dm.hq) * nb * nb, 0.0f);
  if (dm.nb == 0) return out;

  // 1. Pooling.
  std::vector<float> pooled_q = PoolQ(q, dm);
  std::vector<float> pooled_k = PoolK(k, dm);

  // 2. Gate linears. K is repeated from KV heads to Q heads first.
  std::vector<float> kp = ProjectPerHead(pooled_k, dm.hkv, 3 * dm.d, p.k_weight, dm.k_heads, dm);
  pooled_k = {};
  std::vector<float> qp = dm.has_q ? ProjectPerHead(pooled_q, dm.hq, dm.d, p.q_weight, dm.hq, dm) : std::move(pooled_q);

  // 3. Block RoPE at the first token of each block.
  const int half = dm.hidden / 2;
  std::vector<float> cos_t(nb * half), sin_t(nb * half);
  for (int b = 0; b < dm.nb; ++b) {
    const float pos = static_cast<float>(int64_t{b} * dm.block);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * p.rope_inv_freq[i];
      cos_t[size_t(b) * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_t[size_t(b) * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  ApplyBlockRope(qp, cos_t, sin_t, dm);
  ApplyBlockRope(kp, cos_t, sin_t, dm);

  // 4-5. Scores, softmax and selection, one Q head per task.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dm.hidden)));
  const float threshold = static_cast<float>(sparsity.threshold);  // torch compares in the tensor's float32
  const int64_t topk = sparsity.mode == SparsityMode::kNzRatio ? NzRatioTopK(sparsity.nz_ratio, dm.nb) : 0;
  const int first_dense_row = static_cast<int>(FirstDenseRow(sparsity.last_block_dense, dm.nb));

  ParallelFor(dm.hq, std::max(1, num_threads), [&](int h) {
    std::vector<float> scores(nb);
    std::vector<int> order(nb);
    for (int qb = 0; qb < dm.nb; ++qb) {
      const int n = qb + 1;  // causal key blocks of this row
      const float* qv = qp.data() + (size_t(qb) * dm.hq + h) * dm.hidden;
      for (int kb = 0; kb < n; ++kb) {
        const float* kv = kp.data() + (size_t(kb) * dm.hq + h) * dm.hidden;
        double dot = 0.0;
        for (int c = 0; c < dm.hidden; ++c) dot += double(qv[c]) * double(kv[c]);
        scores[kb] = static_cast<float>(dot) * scale;
      }

      // Softmax over the causal blocks; blocks above the diagonal stay 0.
      float* prow = out.probs.data() + (size_t(h) * nb + qb) * nb;
      float mx = scores[0];
      for (int kb = 1; kb < n; ++kb) mx = std::max(mx, scores[kb]);
      double sum = 0.0;
      for (int kb = 0; kb < n; ++kb) {
        prow[kb] = std::exp(scores[kb] - mx);
        sum += prow[kb];
      }
      const float fsum = static_cast<float>(sum);
      for (int kb = 0; kb < n; ++kb) prow[kb] = prow[kb] / fsum;

      uint8_t* krow = out.mask.keep.data() + (size_t(h) * nb + qb) * nb;
      if (sparsity.mode == SparsityMode::kDense || qb >= first_dense_row) {
        std::fill(krow, krow + n, uint8_t{1});
      } else if (sparsity.mode == SparsityMode::kThreshold) {
        for (int kb = 0; kb < n; ++kb) krow[kb] = prow[kb] > threshold;
      } else if (sparsity.mode == SparsityMode::kStreaming) {
        for (int kb = 0; kb < n; ++kb) {
          krow[kb] = StreamingKeeps(sparsity.streaming_sink, sparsity.streaming_window, qb, kb);
        }
      } else if (sparsity.mode == SparsityMode::kOracle) {
        // The row's best blocks by the true target; the same order (and tie
        // rule) as the gate's top-k.
        const float* trow = p.oracle_target + (size_t(h) * nb + qb) * nb;
        const int keep = static_cast<int>(OracleKeepCount(sparsity.oracle_ratio, n));
        std::iota(order.begin(), order.begin() + n, 0);
        std::partial_sort(order.begin(), order.begin() + keep, order.begin() + n, ScoreGreater{trow});
        for (int i = 0; i < keep; ++i) krow[order[i]] = 1;
      } else {
        // top-k over the whole row in the reference ranks the masked blocks
        // (score + finfo.min) below every causal one, and tril drops them; so
        // the kept blocks are the best min(k, n) causal ones.
        const int keep = static_cast<int>(std::min<int64_t>(topk, n));
        std::iota(order.begin(), order.begin() + n, 0);
        std::partial_sort(order.begin(), order.begin() + keep, order.begin() + n, ScoreGreater{scores.data()});
        for (int i = 0; i < keep; ++i) krow[order[i]] = 1;
      }

      // Our deviation from the reference (docs/GATES.md): a row
      // that selection left empty keeps its diagonal block. The reference
      // would leave those query rows with no keys (NaN or unwritten output).
      bool any = false;
      for (int kb = 0; kb < n && !any; ++kb) any = krow[kb] != 0;
      if (!any) krow[qb] = 1;
    }
  });
  return out;
}

}  // namespace seer::cpu
