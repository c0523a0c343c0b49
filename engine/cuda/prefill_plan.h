// How much device memory a prefill of L tokens takes besides the weights and
// the KV cache, and how it is split. Whole-sequence buffers are the residual
// stream and the attention operands; the MLP and the lm_head run in row
// chunks so their intermediates stay bounded, and the gate works on nb x nb
// scores a few heads at a time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/cuda/device_weights.h"
#include "engine/model/model_config.h"

namespace seer {

struct PrefillPlan {
  int seq_len = 0;
  int mlp_chunk = 0;  // rows per MLP pass
  int logits_chunk = 0;  // rows per lm_head pass
  int gate_heads_per_pass = 0;
  int gate_blocks = 0;  // nb
  int64_t index_capacity = 0;

  // Byte offsets into one workspace allocation (256-byte aligned).
  size_t ids = 0;  // int32 [L]
  size_t rope = 0;  // float2 [L, head_dim / 2]: (cos, sin) per position
  size_t residual = 0;  // float [L, hidden]
  size_t normed = 0;  // bf16 [L, hidden]
  size_t q = 0;  // bf16 [L, Hq * D]
  size_t k = 0;  // bf16 [L, Hkv * D]
  size_t v = 0;  // bf16 [L, Hkv * D]
  size_t attn = 0;  // bf16 [L, Hq * D]
  size_t mlp_gate = 0;  // bf16 [mlp_chunk, inter]
  size_t mlp_up = 0;  // bf16 [mlp_chunk, inter]
  size_t logits = 0;  // float [logits_chunk, vocab]
  size_t block_offsets = 0;  // int32 [Hq * nb + 1]
  size_t block_indices = 0;  // int32 [index_capacity]
  size_t kept = 0;  // int64 [layers, Hq]
  size_t gate_scratch = 0;
  size_t gate_scratch_bytes = 0;
  size_t total_bytes = 0;
};

struct PlanLimits {
  size_t mlp_bytes = size_t{1} << 30;  // both MLP intermediates of one chunk
  size_t logits_bytes = size_t{256} << 20;
  size_t gate_scratch_bytes = size_t{1} << 30;
};

// `gates.gate_hidden == 0`: no gate buffers. `all_logits` sizes the lm_head
// chunk for every row rather than the last one.
PrefillPlan PlanPrefill(const ModelConfig& config, const GateShape& gates, int gate_block_size, int seq_len,
                        bool all_logits, const PlanLimits& limits);

}  // namespace seer
