#include "engine/cuda/prefill_plan.h"

#include <algorithm>

#include <cuda_bf16.h>

#include "engine/cuda/model_runner.h"
#include "kernels/gate/gate.h"

namespace seer {
namespace {

constexpr size_t kAlign = 256;

class Offsets {
 public:
  size_t Take(size_t bytes) {
    offset_ = (offset_ + kAlign - 1) / kAlign * kAlign;
    const size_t at = offset_;
    offset_ += bytes;
    return at;
  }
  size_t size() const { return (offset_ + kAlign - 1) / kAlign * kAlign; }

 private:
  size_t offset_ = 0;
};

// Rows per chunk so that `bytes_per_row * rows <= budget`, at least 1, at
// most `rows`, and a multiple of 64 when larger than 64 (GEMM-friendly).
int ChunkRows(size_t budget, size_t bytes_per_row, int rows) {
  size_t n = std::max<size_t>(1, budget / std::max<size_t>(1, bytes_per_row));
  if (n > 64) n = n / 64 * 64;
  return static_cast<int>(std::min<size_t>(n, static_cast<size_t>(std::max(rows, 1))));
}

}  // namespace

PrefillPlan PlanPrefill(const ModelConfig& c, const GateShape& gates, int gate_block_size, int seq_len, bool all_logits,
                        const PlanLimits& limits) {
  PrefillPlan p;
  p.seq_len = seq_len;
  const size_t L = static_cast<size_t>(std::max(seq_len, 1));
  const size_t bf = sizeof(__nv_bfloat16);
  const size_t q_cols = static_cast<size_t>(c.num_heads) * c.head_dim;
  const size_t kv_cols = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  p.mlp_chunk = ChunkRows(limits.mlp_bytes, 2 * bf * c.intermediate_size, seq_len);
  p.logits_chunk = all_logits ? ChunkRows(limits.logits_bytes, sizeof(float) * c.vocab_size, seq_len) : 1;

  Offsets o;
  p.ids = o.Take(L * sizeof(int32_t));
  p.rope = o.Take(L * (c.head_dim / 2) * 2 * sizeof(float));
  p.residual = o.Take(L * c.hidden_size * sizeof(float));
  p.normed = o.Take(L * c.hidden_size * bf);
  p.q = o.Take(L * q_cols * bf);
  p.k = o.Take(L * kv_cols * bf);
  p.v = o.Take(L * kv_cols * bf);
  p.attn = o.Take(L * q_cols * bf);
  p.mlp_gate = o.Take(static_cast<size_t>(p.mlp_chunk) * c.intermediate_size * bf);
  p.mlp_up = o.Take(static_cast<size_t>(p.mlp_chunk) * c.intermediate_size * bf);
  p.logits = o.Take(static_cast<size_t>(p.logits_chunk) * c.vocab_size * sizeof(float));

  if (gates.gate_hidden > 0) {
    // The most any selection keeps: the whole causal triangle (dense).
    cuda::GateParams g = MakeGateParams(c, gates, gate_block_size, seq_len, SparsityConfig{});
    p.gate_blocks = cuda::GateNumBlocks(g);
    p.index_capacity = cuda::GateMaxIndices(g);
    // As many heads' nb x nb scores at once as the budget allows.
    int heads = c.num_heads;
    g.heads_per_pass = heads;
    while (heads > 1 && cuda::GateWorkspaceBytes(g) > limits.gate_scratch_bytes) {
      heads = (heads + 1) / 2;
      g.heads_per_pass = heads;
    }
    p.gate_heads_per_pass = heads;
    p.gate_scratch_bytes = cuda::GateWorkspaceBytes(g);
    p.block_offsets = o.Take((static_cast<size_t>(c.num_heads) * p.gate_blocks + 1) * sizeof(int32_t));
    p.block_indices = o.Take(static_cast<size_t>(std::max<int64_t>(p.index_capacity, 1)) * sizeof(int32_t));
    p.kept = o.Take(static_cast<size_t>(c.num_layers) * c.num_heads * sizeof(int64_t));
    p.gate_scratch = o.Take(p.gate_scratch_bytes);
  }
  p.total_bytes = o.size();
  return p;
}

}  // namespace seer
