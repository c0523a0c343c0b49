// The model's forward pass on the GPU as named stages, each callable on its
// own for one layer (or, for Embed and Logits, once per pass):
//
//   Embed            token ids -> float32 residual rows, RoPE angles for the pass
//   AttentionInputs  RMSNorm, q/k/v projections (+ biases)
//   Gate             SeerAttention's gate on pre-RoPE q, k -> CSR block lists
//   RopeAndCache     RoPE on q, k; K/V into the cache
//   PagedAttentionInputs  a batched decode step's AttentionInputs and
//                    RoPE/page writes, fused where the weights allow
//   Attention        block-sparse or dense causal prefill, or one decode row
//   OutputAndMlp     o_proj into the residual, then the MLP in row chunks
//   Logits           final norm and lm_head
//
// Every stage launches on the runner's stream and never synchronises with the
// host. CudaEngine's prefill and decode are short loops over these stages;
// the gate trainer, batched decode and tensor parallelism call them too.
//
// The residual stream is float32; GEMM operands are bf16 with float32
// accumulation (cuBLAS, CUBLAS_COMPUTE_32F).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/status.h"
#include "engine/cuda/device_kv_cache.h"
#include "engine/cuda/device_page_pool.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/model/model_config.h"
#include "kernels/gate/gate.h"
#include "kernels/gate/selection.h"

namespace seer {

// The buffers one forward pass works in (device memory): whole-sequence for a
// prefill, one row for a decode step. Sized by PlanPrefill.
struct Activations {
  int32_t* ids = nullptr;
  float2* rope = nullptr;  // (cos, sin) for the pass's positions
  float* residual = nullptr;
  __nv_bfloat16* normed = nullptr;
  __nv_bfloat16* q = nullptr;
  __nv_bfloat16* k = nullptr;
  __nv_bfloat16* v = nullptr;
  __nv_bfloat16* attn = nullptr;
  __nv_bfloat16* mlp_gate = nullptr;
  __nv_bfloat16* mlp_up = nullptr;
  float* logits = nullptr;
  int mlp_chunk = 1;  // rows per MLP pass
  int logits_chunk = 1;  // rows per lm_head pass
};

// Where the gate writes: the CSR block lists the attention reads, the kept
// count per head, and its scratch.
struct GateBuffers {
  int32_t* block_offsets = nullptr;  // [Hq * nb + 1]
  int32_t* block_indices = nullptr;  // [index_capacity]
  int64_t index_capacity = 0;
  int64_t* kept_per_head = nullptr;  // [Hq] for this layer
  float* probs = nullptr;  // [Hq, nb, nb], or null
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int heads_per_pass = 0;
};

// One batched decode step over the page pool (device arrays; row r is one
// sequence at positions[r], its keys 0 .. context_lens[r] - 1 in the pages of
// block_tables[r]).
struct PagedBatch {
  int batch = 0;
  const int32_t* positions = nullptr;
  const int32_t* context_lens = nullptr;
  const int32_t* block_tables = nullptr;  // [batch, max_pages_per_seq]
  int max_pages_per_seq = 0;
  int max_context = 0;
  const DevicePagePool* pool = nullptr;
  void* workspace = nullptr;  // cuda::PagedDecodeWorkspaceBytes
  size_t workspace_bytes = 0;
};

// The gate's launch description for a model, its gates and a selection: the
// one place GateParams are filled. Buffers and weights are left null for the
// caller (sizing queries need none).
cuda::GateParams MakeGateParams(const ModelConfig& config, const GateShape& gates, int block_size, int seq_len,
                                const SparsityConfig& selection);

// The engine's A/B switches (SEER_FUSE_QKV, SEER_FUSE_GATE_UP, SEER_FUSE_ROPE,
// SEER_TRIM_LAST_LAYER, SEER_ROPE_IN_ATTENTION; docs/GPU.md): on unless the variable is "0".
bool EnvEnabled(const char* name);

class ModelRunner {
 public:
  ModelRunner(const ModelConfig& config, const DeviceModelWeights& weights, const GateShape& gates, int gate_block_size,
              cudaStream_t stream, cublasHandle_t cublas);

  // GEMMs of at least GemmTuner::kMinRows rows go through `tuner` (null:
  // every GEMM is cublasGemmEx's choice).
  void SetGemmTuner(GemmTuner* tuner) { tuner_ = tuner; }

  // ids (host) for positions pos0 .. pos0 + n - 1 -> a.residual, a.rope.
  Status Embed(std::span<const int32_t> ids, int pos0, const Activations& a);
  // `rows` ids already in a.ids, at device `positions` (a batched decode step).
  Status EmbedAt(const int32_t* positions, int rows, const Activations& a);
  // fuse_qkv (decode steps): one GEMM for q, k and v when the weights are
  // back to back and the MLP scratch can hold its output.
  Status AttentionInputs(int layer, const Activations& a, int rows, bool fuse_qkv = false);
  Status Gate(int layer, const Activations& a, int rows, const SparsityConfig& selection, const GateBuffers& out);
  // rotate_q false: q is left before RoPE, for a PrefillAttention that
  // rotates it (AttentionRotatesQ).
  Status RopeAndCache(int layer, const Activations& a, int rows, int pos0, DeviceKvCache* cache, bool rotate_q = true);
  // The batched decode step's form: RoPE on `rows` rows, then the first
  // batch.batch rows' K/V into their pages.
  Status RopeAndCachePaged(int layer, const Activations& a, int rows, const PagedBatch& batch);
  // AttentionInputs then RopeAndCachePaged, in three launches where the
  // weights allow: RMSNorm, one GEMM over the back-to-back q/k/v weights, and
  // cuda::RopeQkvToPages for the biases, RoPE, q and the page writes.
  Status PagedAttentionInputs(int layer, const Activations& a, int rows, const PagedBatch& batch);
  // A prefill pass over positions 0 .. rows - 1 (block-sparse with lists,
  // dense causal with null offsets).
  // rotate_q: a.q is still before RoPE and the attention kernel rotates it
  // as it loads it (a.rope's angles; one pass over q fewer). first_row
  // (dense only): only rows first_row.. are read afterwards, so the kernel
  // may skip the query blocks before it (cuda::AttentionParams::first_row).
  Status PrefillAttention(int layer, const Activations& a, int rows, const DeviceKvCache& cache,
                          const int32_t* block_offsets, const int32_t* block_indices, bool rotate_q = false,
                          int first_row = 0);
  // Whether PrefillAttention can rotate q on this device and model
  // (cuda::AttentionRotatesQ) and SEER_ROPE_IN_ATTENTION is not "0".
  bool AttentionRotatesQ() const;
  // One decode row at position `pos` (keys 0 .. pos); `workspace` holds the
  // split-K partials (cuda::DecodeWorkspaceBytes).
  Status DecodeAttention(int layer, const Activations& a, int pos, const DeviceKvCache& cache, void* workspace,
                         size_t workspace_bytes);
  // One decode row per sequence of `batch` over its pages.
  Status PagedAttention(int layer, const Activations& a, const PagedBatch& batch);
  // fuse_gate_up: per MLP chunk, one GEMM over the back-to-back gate and up
  // weights into the MLP scratch, SwiGLU in place on its gate half, and the
  // down projection reading that half with a row stride of 2 * inter. Decode
  // steps use it; a prefill does not (at 128k its GEMMs took 2712 ms with it
  // against 2705 without, H200, 2026-11-28).
  Status OutputAndMlp(int layer, const Activations& a, int rows, bool fuse_gate_up = false);
  // Rows [r0, r0 + n) of the residual -> a.logits ([n, vocab]).
  Status Logits(const Activations& a, int r0, int n);

  cudaStream_t stream() const { return stream_; }

 private:
  // y[rows, out] = x[rows, in] . w[out, in]^T + beta * y; x's rows ldx
  // apart (0: in).
  Status Gemm(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, void* y, cudaDataType_t y_type,
              float beta, int ldx = 0);
  // Whether this layer's q/k/v projection runs as one GEMM into a.mlp_gate.
  bool FusesQkv(int layer, const Activations& a, int rows) const;

  const ModelConfig& config_;
  const DeviceModelWeights& weights_;
  const GateShape gates_;
  const int gate_block_size_;
  const float attention_scale_;
  cudaStream_t stream_;
  cublasHandle_t cublas_;
  GemmTuner* tuner_ = nullptr;
};

}  // namespace seer
