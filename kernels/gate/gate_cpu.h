// The CPU twin of the gate kernels (kernels/gate/gate.h), in float32: pool Q
// (average) and K (max, min, average) per block, project per Q head, block
// RoPE at each block's first token, score the causal block triangle and
// select (kernels/gate/selection.h; the streaming and oracle baselines too),
// then the never-empty-row rule. The
// authors' PyTorch code is the reference it mirrors, rounding included
// (docs/GATES.md).
#pragma once

#include <vector>

#include "kernels/common/block_lists.h"
#include "kernels/gate/selection.h"

namespace seer {

struct GateOutput {
  BlockMask mask;
  // [Hq, nb, nb]: softmax of the gate scores over the causal key blocks of
  // each row; 0 above the diagonal.
  std::vector<float> probs;
};

namespace cpu {

// One layer's gate. The shapes are consistent (the engine checks them against
// the model when it loads the gates); they are asserted, not checked.
struct GateProblem {
  const float* q = nullptr;  // [L, Hq, head_dim], straight after q_proj (bias included, before RoPE)
  const float* k = nullptr;  // [L, Hkv, head_dim], straight after k_proj
  int seq_len = 0;
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;
  int block_size = 64;
  int hidden = 0;  // gate hidden size: even; == head_dim without q_weight
  // mask_linear_k [k_weight_heads, 3 * head_dim, hidden], applied as x . W;
  // Q head h uses W[h / (Hq / k_weight_heads)]. k_weight_heads is Hq, or Hkv
  // for force_double gates (which have q_weight).
  const float* k_weight = nullptr;
  int k_weight_heads = 0;
  const float* q_weight = nullptr;  // mask_linear_q [Hq, head_dim, hidden], or null
  // RoPE inverse frequencies for rotary dim `hidden` (hidden / 2 values):
  // angles are float(position) * inv_freq[i] in float32, as HF computes them.
  const float* rope_inv_freq = nullptr;
  // kOracle only: the distillation target [Hq, nb, nb] (kernels/gate/
  // distill_target_cpu.h) that ranks each row's blocks. Null otherwise.
  const float* oracle_target = nullptr;
};

// Runs the gate on up to `num_threads` threads (the caller's included).
GateOutput RunGate(const GateProblem& problem, const SparsityConfig& sparsity, int num_threads);

}  // namespace cpu
}  // namespace seer
