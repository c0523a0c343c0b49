// One layer's SeerAttention gate as a function of its weights, forward and
// backward, in float64: what gate self-distillation (DESIGN §1) trains.
//
// The forward is the gate of docs/GATES.md (the inference twin is
// kernels/gate/gate_cpu.cc): pool Q (average) and K (max, min, average) per
// 64-token block, k' = pooledK @ Wk (KV heads repeated to Q heads first),
// q' = pooledQ (or pooledQ @ Wq), half-split block RoPE at each block's first
// token, scores q'.k'^T / sqrt(hidden) over the causal blocks. The loss is the
// reference's: KLDivLoss(log_softmax(scores), target) with reduction "mean"
// (every element of the [Hq, rows, nb] tensor counts, the zeros above the
// diagonal too), after dropping the first quarter (nb / 4, rounded down) of
// the query-block rows.
//
// The pooling and the RoPE angles do not depend on the weights, so they are
// computed once per sequence (GateFeatures); only the linears, the rotation
// and the scores run per evaluation, and the backward retraces them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace seer::train {

// The shape of one layer's gate.
struct GateShape {
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv
  int head_dim = 0;  // D, the gate's input channels per head
  int hidden = 0;  // the gate's hidden size (RoPE and score dim)
  int block_size = 64;
  // mask_linear_k's heads: Hq (the released form) or Hkv (the "double" form,
  // with mask_linear_q); Q head h uses W[h / (Hq / k_weight_heads)].
  int k_weight_heads = 0;
  bool has_q_weight = false;  // mask_linear_q [Hq, D, hidden]; required when hidden != D

  size_t k_weight_size() const { return size_t(k_weight_heads) * 3 * head_dim * hidden; }
  size_t q_weight_size() const { return has_q_weight ? size_t(num_heads) * head_dim * hidden : 0; }
};

// One layer's weights, or their gradients, in the checkpoint layout:
// k = mask_linear_k [k_weight_heads, 3 * D, hidden], q = mask_linear_q
// [Hq, D, hidden] or empty; both applied as x . W.
struct GateParams {
  std::vector<double> k, q;
};

// What the gate reads of one sequence, independent of its weights.
struct GateFeatures {
  int num_blocks = 0;
  std::vector<double> q;  // pooled Q [nb, Hq, D]
  std::vector<double> k;  // pooled K [nb, Hkv, 3D]: max, min, average
  std::vector<double> cos;  // block RoPE [nb, hidden / 2]
  std::vector<double> sin;
};

// Pools q [L, Hq, D] and k [L, Hkv, D] (pre-RoPE, as the gate sees them) and
// tabulates the block RoPE at positions 0, block, 2 * block, ... with
// `rope_inv_freq` (hidden / 2 values; angles float(pos) * inv_freq in float32,
// as HF and the inference gate compute them). Blocks are pooled on up to
// `num_threads` threads; each block's sums run in the same order whatever the
// count.
GateFeatures PoolGateFeatures(const GateShape& s, const float* q, const float* k, int seq_len,
                              const std::vector<float>& rope_inv_freq, int num_threads = 1);

// The gate's probabilities [Hq, nb, nb]: softmax of each row's scores over
// its causal blocks, 0 above the diagonal.
std::vector<double> GateProbs(const GateShape& s, const GateFeatures& f, const GateParams& w, int num_threads);

// The first query-block row the loss counts: nb / 4 rows are dropped.
inline int FirstLossRow(int num_blocks) { return num_blocks / 4; }

// The distillation loss of one layer against `target` ([Hq, nb, nb], rows
// summing to 1 over the causal blocks, e.g. kernels/gate/distill_target_cpu),
// and, when `grad` is not null, grad_scale times its gradient added into
// *grad (which must have w's sizes). Heads run on up to `num_threads`
// threads; the result does not depend on the thread count.
double GateLoss(const GateShape& s, const GateFeatures& f, const float* target, const GateParams& w, GateParams* grad,
                double grad_scale, int num_threads);

}  // namespace seer::train
