#include "engine/cuda/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/gemm.h"
#include "kernels/attention/attention.h"
#include "kernels/ops/ops.h"
#include "kernels/paged_kv/paged_kv.h"

namespace seer {

using bf16 = __nv_bfloat16;

cuda::GateParams MakeGateParams(const ModelConfig& config, const GateShape& gates, int block_size, int seq_len,
                                const SparsityConfig& selection) {
  cuda::GateParams g;
  g.dtype = cuda::ElemType::kBF16;
  g.seq_len = seq_len;
  g.num_heads = config.num_heads;
  g.num_kv_heads = config.num_kv_heads;
  g.head_dim = config.head_dim;
  g.block_size = block_size;
  g.hidden = gates.gate_hidden;
  // The gate checks that mask_linear_q exists when hidden != head_dim; a
  // size query reads no weight, so a stand-in address says "present" until
  // the caller sets the real one.
  static const float kPresentForSizing = 0.0f;
  g.q_weight = gates.has_q ? &kPresentForSizing : nullptr;
  g.mode = selection.mode;
  g.threshold = selection.threshold;
  g.nz_ratio = selection.nz_ratio;
  g.last_block_dense = selection.last_block_dense;
  return g;
}

ModelRunner::ModelRunner(const ModelConfig& config, const DeviceModelWeights& weights, const GateShape& gates,
                         int gate_block_size, cudaStream_t stream, cublasHandle_t cublas)
    : config_(config),
      weights_(weights),
      gates_(gates),
      gate_block_size_(gate_block_size),
      attention_scale_(static_cast<float>(1.0 / std::sqrt(static_cast<double>(config.head_dim)))),
      stream_(stream),
      cublas_(cublas) {}

Status ModelRunner::Gemm(const bf16* x, int rows, int in, const bf16* w, int out, void* y, cudaDataType_t y_type,
                         float beta, int ldx) {
  if (tuner_ != nullptr) return tuner_->Linear(stream_, x, rows, in, w, out, y, y_type, beta, ldx);
  return LinearBf16(cublas_, x, rows, in, w, out, y, y_type, beta, ldx);
}

bool EnvEnabled(const char* name) {
  const char* e = std::getenv(name);
  return e == nullptr || std::string(e) != "0";
}

bool ModelRunner::FusesQkv(int layer, const Activations& a, int rows) const {
  static const bool enabled = EnvEnabled("SEER_FUSE_QKV");
  const DeviceLayerWeights& w = weights_.layers[layer];
  const int hidden = config_.hidden_size;
  const int q_cols = config_.num_heads * config_.head_dim;
  const int kv_cols = config_.num_kv_heads * config_.head_dim;
  const size_t hq = static_cast<size_t>(q_cols) * hidden, hkv = static_cast<size_t>(kv_cols) * hidden;
  return enabled && w.k_proj == w.q_proj + hq && w.v_proj == w.k_proj + hkv && rows <= a.mlp_chunk &&
         config_.intermediate_size >= q_cols + 2 * kv_cols && q_cols % 8 == 0 && kv_cols % 8 == 0;
}

Status ModelRunner::Embed(std::span<const int32_t> ids, int pos0, const Activations& a) {
  const int n = static_cast<int>(ids.size());
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(a.ids, ids.data(), sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::Embedding(weights_.embed_tokens, config_.vocab_size, config_.hidden_size, a.ids, n, a.residual, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::RopeTable(weights_.rope_inv_freq, config_.head_dim / 2, pos0, n, a.rope, stream_));
  return OkStatus();
}

Status ModelRunner::EmbedAt(const int32_t* positions, int rows, const Activations& a) {
  SEER_RETURN_IF_CUDA_ERROR(cuda::Embedding(weights_.embed_tokens, config_.vocab_size, config_.hidden_size, a.ids, rows,
                                            a.residual, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::RopeTableAt(weights_.rope_inv_freq, config_.head_dim / 2, positions, rows, a.rope, stream_));
  return OkStatus();
}

Status ModelRunner::AttentionInputs(int layer, const Activations& a, int rows, bool fuse_qkv) {
  const DeviceLayerWeights& w = weights_.layers[layer];
  const int hidden = config_.hidden_size;
  const int q_cols = config_.num_heads * config_.head_dim;
  const int kv_cols = config_.num_kv_heads * config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(a.residual, rows, hidden, w.input_norm, eps, a.normed, stream_));
  // Decode steps: one GEMM over the q, k and v weights, which the loader
  // lays out back to back, into the MLP's scratch (free until the MLP), then
  // split: at a few rows the projections are reads of the weights, and one
  // read of 1.5x the q weights beats three GEMMs and their split-K passes.
  if (fuse_qkv && FusesQkv(layer, a, rows)) {
    SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.q_proj, q_cols + 2 * kv_cols, a.mlp_gate, CUDA_R_16BF, 0.0f));
    SEER_RETURN_IF_CUDA_ERROR(cuda::SplitColumns3(a.mlp_gate, rows, q_cols, kv_cols, kv_cols, a.q, a.k, a.v, stream_));
  } else {
    SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.q_proj, q_cols, a.q, CUDA_R_16BF, 0.0f));
    SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.k_proj, kv_cols, a.k, CUDA_R_16BF, 0.0f));
    SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.v_proj, kv_cols, a.v, CUDA_R_16BF, 0.0f));
  }
  if (w.q_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.q, rows, q_cols, w.q_bias, stream_));
  if (w.k_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.k, rows, kv_cols, w.k_bias, stream_));
  if (w.v_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.v, rows, kv_cols, w.v_bias, stream_));
  return OkStatus();
}

Status ModelRunner::Gate(int layer, const Activations& a, int rows, const SparsityConfig& selection,
                         const GateBuffers& out) {
  const DeviceLayerWeights& w = weights_.layers[layer];
  cuda::GateParams g = MakeGateParams(config_, gates_, gate_block_size_, rows, selection);
  g.q = a.q;
  g.k = a.k;
  g.k_weight = w.gate_k_weight;
  g.q_weight = w.gate_q_weight;
  g.weights_tf32 = w.gate_weights_tf32;
  g.rope_inv_freq = weights_.gate_rope_inv_freq;
  g.block_offsets = out.block_offsets;
  g.block_indices = out.block_indices;
  g.index_capacity = out.index_capacity;
  g.kept_per_head = out.kept_per_head;
  g.probs = out.probs;
  g.workspace = out.workspace;
  g.workspace_bytes = out.workspace_bytes;
  g.heads_per_pass = out.heads_per_pass;
  SEER_RETURN_IF_CUDA_ERROR(cuda::RunGateKernels(g, stream_));
  return OkStatus();
}

Status ModelRunner::RopeAndCache(int layer, const Activations& a, int rows, int pos0, DeviceKvCache* cache,
                                 bool rotate_q) {
  const int d = config_.head_dim;
  // One pass over q, k and v (SEER_FUSE_ROPE=0: the four kernels it
  // replaces, for comparison).
  static const bool fused = EnvEnabled("SEER_FUSE_ROPE");
  if (fused) {
    SEER_RETURN_IF_CUDA_ERROR(cuda::RopeToCache(rotate_q ? a.q : nullptr, a.k, a.v, rows, config_.num_heads,
                                                config_.num_kv_heads, d, a.rope, cache->k(layer), cache->v(layer),
                                                cache->capacity(), pos0, stream_));
    return OkStatus();
  }
  if (rotate_q) SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.q, rows, config_.num_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.k, rows, config_.num_kv_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::WriteKv(a.k, rows, config_.num_kv_heads, d, cache->k(layer), cache->capacity(), pos0, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::WriteKv(a.v, rows, config_.num_kv_heads, d, cache->v(layer), cache->capacity(), pos0, stream_));
  return OkStatus();
}

Status ModelRunner::RopeAndCachePaged(int layer, const Activations& a, int rows, const PagedBatch& b) {
  const int d = config_.head_dim;
  SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.q, rows, config_.num_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.k, rows, config_.num_kv_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::WriteKvPaged(a.k, a.v, b.positions, b.block_tables, b.max_pages_per_seq, b.batch,
                                               config_.num_kv_heads, d, b.pool->layout().page_tokens, b.pool->k(layer),
                                               b.pool->v(layer), stream_));
  return OkStatus();
}

Status ModelRunner::PagedAttentionInputs(int layer, const Activations& a, int rows, const PagedBatch& b) {
  if (!FusesQkv(layer, a, rows) || config_.head_dim % 16 != 0) {
    SEER_RETURN_IF_ERROR(AttentionInputs(layer, a, rows, /*fuse_qkv=*/true));
    return RopeAndCachePaged(layer, a, rows, b);
  }
  const DeviceLayerWeights& w = weights_.layers[layer];
  const int hidden = config_.hidden_size;
  const int qkv_cols = (config_.num_heads + 2 * config_.num_kv_heads) * config_.head_dim;
  SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(a.residual, rows, hidden, w.input_norm,
                                          static_cast<float>(config_.rms_norm_eps), a.normed, stream_));
  SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.q_proj, qkv_cols, a.mlp_gate, CUDA_R_16BF, 0.0f));
  cuda::RopeQkvParams p;
  p.qkv = a.mlp_gate;
  p.rows = rows;
  p.batch = b.batch;
  p.num_heads = config_.num_heads;
  p.num_kv_heads = config_.num_kv_heads;
  p.head_dim = config_.head_dim;
  p.rope = a.rope;
  p.q_bias = w.q_bias;
  p.k_bias = w.k_bias;
  p.v_bias = w.v_bias;
  p.positions = b.positions;
  p.block_tables = b.block_tables;
  p.max_pages_per_seq = b.max_pages_per_seq;
  p.page_tokens = b.pool->layout().page_tokens;
  p.q = a.q;
  p.k_pages = b.pool->k(layer);
  p.v_pages = b.pool->v(layer);
  SEER_RETURN_IF_CUDA_ERROR(cuda::RopeQkvToPages(p, stream_));
  return OkStatus();
}

Status ModelRunner::PagedAttention(int layer, const Activations& a, const PagedBatch& b) {
  cuda::PagedAttentionParams p;
  p.dtype = cuda::ElemType::kBF16;
  p.q = a.q;
  p.out = a.attn;
  p.k_pages = b.pool->k(layer);
  p.v_pages = b.pool->v(layer);
  p.block_tables = b.block_tables;
  p.context_lens = b.context_lens;
  p.batch = b.batch;
  p.max_pages_per_seq = b.max_pages_per_seq;
  p.max_context = b.max_context;
  p.num_heads = config_.num_heads;
  p.num_kv_heads = config_.num_kv_heads;
  p.head_dim = config_.head_dim;
  p.page_tokens = b.pool->layout().page_tokens;
  p.scale = attention_scale_;
  p.workspace = b.workspace;
  p.workspace_bytes = b.workspace_bytes;
  SEER_RETURN_IF_CUDA_ERROR(cuda::PagedDecodeAttention(p, stream_));
  return OkStatus();
}

namespace {

cuda::AttentionParams AttentionOver(const ModelConfig& c, const Activations& a, const DeviceKvCache& cache, int layer,
                                    float scale) {
  cuda::AttentionParams p;
  p.dtype = cuda::ElemType::kBF16;
  p.q = a.q;
  p.k = cache.k(layer);
  p.v = cache.v(layer);
  p.out = a.attn;
  p.num_heads = c.num_heads;
  p.num_kv_heads = c.num_kv_heads;
  p.head_dim = c.head_dim;
  p.kv_stride = cache.capacity();
  p.scale = scale;
  return p;
}

}  // namespace

bool ModelRunner::AttentionRotatesQ() const {
  static const bool enabled = EnvEnabled("SEER_ROPE_IN_ATTENTION");
  return enabled && cuda::AttentionRotatesQ(cuda::ElemType::kBF16, config_.head_dim);
}

Status ModelRunner::PrefillAttention(int layer, const Activations& a, int rows, const DeviceKvCache& cache,
                                     const int32_t* block_offsets, const int32_t* block_indices, bool rotate_q,
                                     int first_row) {
  cuda::AttentionParams p = AttentionOver(config_, a, cache, layer, attention_scale_);
  p.q_rope = rotate_q ? a.rope : nullptr;
  p.seq_len = rows;
  p.first_row = first_row;
  p.block_size = gate_block_size_;
  p.block_offsets = block_offsets;
  p.block_indices = block_indices;
  SEER_RETURN_IF_CUDA_ERROR(cuda::BlockSparseAttention(p, stream_));
  return OkStatus();
}

Status ModelRunner::DecodeAttention(int layer, const Activations& a, int pos, const DeviceKvCache& cache,
                                    void* workspace, size_t workspace_bytes) {
  cuda::AttentionParams p = AttentionOver(config_, a, cache, layer, attention_scale_);
  p.seq_len = pos + 1;
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  SEER_RETURN_IF_CUDA_ERROR(cuda::DecodeAttention(p, pos, stream_));
  return OkStatus();
}

Status ModelRunner::OutputAndMlp(int layer, const Activations& a, int rows, bool fuse_gate_up) {
  const DeviceLayerWeights& w = weights_.layers[layer];
  const int hidden = config_.hidden_size;
  const int inter = config_.intermediate_size;
  const int q_cols = config_.num_heads * config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  // residual += attn . Wo^T: the residual add is the GEMM's beta = 1.
  SEER_RETURN_IF_ERROR(Gemm(a.attn, rows, q_cols, w.o_proj, hidden, a.residual, CUDA_R_32F, 1.0f));
  if (w.o_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.residual, rows, hidden, w.o_bias, stream_));

  // Gate and up as one GEMM per chunk when their weights are back to back and
  // the scratch holds [chunk, 2 * inter] (mlp_up follows mlp_gate): SwiGLU
  // in place on the gate half, which the down projection reads with a row
  // stride of 2 * inter.
  static const bool gate_up_enabled = EnvEnabled("SEER_FUSE_GATE_UP");
  const size_t inter_elems = static_cast<size_t>(inter) * hidden;
  const bool fused = fuse_gate_up && gate_up_enabled && w.up_proj == w.gate_proj + inter_elems &&
                     a.mlp_up == a.mlp_gate + static_cast<size_t>(a.mlp_chunk) * inter && w.gate_bias == nullptr &&
                     w.up_bias == nullptr && inter % 8 == 0;
  for (int r0 = 0; r0 < rows; r0 += a.mlp_chunk) {
    const int n = std::min(a.mlp_chunk, rows - r0);
    float* res = a.residual + static_cast<size_t>(r0) * hidden;
    bf16* x = a.normed + static_cast<size_t>(r0) * hidden;
    SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(res, n, hidden, w.post_attention_norm, eps, x, stream_));
    if (fused) {
      SEER_RETURN_IF_ERROR(Gemm(x, n, hidden, w.gate_proj, 2 * inter, a.mlp_gate, CUDA_R_16BF, 0.0f));
      SEER_RETURN_IF_CUDA_ERROR(cuda::SwiGluRows(a.mlp_gate, n, inter, stream_));
    } else {
      SEER_RETURN_IF_ERROR(Gemm(x, n, hidden, w.gate_proj, inter, a.mlp_gate, CUDA_R_16BF, 0.0f));
      SEER_RETURN_IF_ERROR(Gemm(x, n, hidden, w.up_proj, inter, a.mlp_up, CUDA_R_16BF, 0.0f));
      if (w.gate_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.mlp_gate, n, inter, w.gate_bias, stream_));
      if (w.up_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.mlp_up, n, inter, w.up_bias, stream_));
      SEER_RETURN_IF_CUDA_ERROR(
          cuda::SwiGlu(a.mlp_gate, a.mlp_up, static_cast<size_t>(n) * inter, a.mlp_gate, stream_));
    }
    SEER_RETURN_IF_ERROR(Gemm(a.mlp_gate, n, inter, w.down_proj, hidden, res, CUDA_R_32F, 1.0f, fused ? 2 * inter : 0));
    if (w.down_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(res, n, hidden, w.down_bias, stream_));
  }
  return OkStatus();
}

Status ModelRunner::Logits(const Activations& a, int r0, int n) {
  const int hidden = config_.hidden_size;
  bf16* x = a.normed + static_cast<size_t>(r0) * hidden;
  SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(a.residual + static_cast<size_t>(r0) * hidden, n, hidden, weights_.norm,
                                          static_cast<float>(config_.rms_norm_eps), x, stream_));
  return Gemm(x, n, hidden, weights_.lm_head, config_.vocab_size, a.logits, CUDA_R_32F, 0.0f);
}

}  // namespace seer
