// A paged KV cache on the GPU and the batched decode attention over it
// (vLLM's PagedAttention, flash-decoding style). CPU twins:
// kernels/paged_kv/paged_kv_cpu.h (same layouts).
//
// Pages. A pool holds, per layer, K pages and V pages laid out
// [num_pages, Hkv, page_tokens, D]: one page is page_tokens consecutive
// positions of every KV head. A sequence's block table lists its pages in
// position order: position t lives in page table[t / page_tokens] at offset
// t % page_tokens.
//
// Batch invariance. A sequence's result depends only on its own data: the
// key split of the attention is a fixed number of positions
// (kPagedKeysPerSplit), never derived from the batch, so a request decodes
// the same tokens alone or in a full batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"

namespace seer::cuda {

// Positions one CTA of the decode attention reduces before the split merge.
inline constexpr int kPagedKeysPerSplit = 256;

// Which decode attention kernel runs. kAuto: kTensorCore for GQA groups of
// up to 16 query heads, kSimt otherwise. kTensorCore: mma.sync, K and V
// through a per-warp cp.async ring in shared memory; kTensorCoreDirect: the
// same arithmetic with K and V loaded straight into registers; kSimt: CUDA
// cores, any group. The environment variable SEER_PAGED_KERNEL=simt|direct
// makes kAuto pick that kernel (side-by-side benchmarks).
enum class PagedKernel { kAuto, kSimt, kTensorCore, kTensorCoreDirect };

struct PagedAttentionParams {
  ElemType dtype = ElemType::kBF16;
  const void* q = nullptr;  // [B, Hq, D], after RoPE
  void* out = nullptr;  // [B, Hq, D]
  const void* k_pages = nullptr;  // this layer: [num_pages, Hkv, page_tokens, D]
  const void* v_pages = nullptr;
  const int32_t* block_tables = nullptr;  // [B, max_pages_per_seq], device
  const int32_t* context_lens = nullptr;  // [B] keys per sequence (position + 1), device
  int batch = 0;
  int max_pages_per_seq = 0;
  int max_context = 0;  // an upper bound on context_lens (sizes the grid)
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq; Hq / Hkv in {1, 2, 4, 8, 16}
  int head_dim = 0;  // 64 or 128
  int page_tokens = 0;  // a multiple of 16
  float scale = 0.0f;
  // Split partials, at least PagedDecodeWorkspaceBytes(batch, Hq, D, max_context).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  PagedKernel kernel = PagedKernel::kAuto;
};

size_t PagedDecodeWorkspaceBytes(int batch, int num_heads, int head_dim, int max_context);
// The key splits a step launches for its longest context (the grid's second
// dimension; a recorded step replays only for the same count).
int PagedDecodeSplits(int max_context);

// One decode query per (sequence, head) over the sequence's pages. A
// sequence with context_lens[b] == 0 gets zeros.
cudaError_t PagedDecodeAttention(const PagedAttentionParams& p, cudaStream_t stream);

// Writes one new token per sequence: k, v [B, Hkv, D] (token-major, as the
// projections produce them) at positions[b] of sequence b's pages.
cudaError_t WriteKvPaged(const void* k, const void* v, const int32_t* positions, const int32_t* block_tables,
                         int max_pages_per_seq, int batch, int num_kv_heads, int head_dim, int page_tokens,
                         void* k_pages, void* v_pages, cudaStream_t stream);

// A decode step's attention inputs in one pass over the fused projection's
// output qkv [rows, (Hq + 2 Hkv) * D] (q, k and v side by side, bf16): the
// biases (when given; added in float32 and rounded once, as AddBias), RoPE on
// q and k with rope [rows, D/2] (as ApplyRope, bit for bit), q into
// q [rows, Hq, D], and sequence b's k and v at positions[b] of its pages for
// b < batch (rows past the batch are padding: their q is computed, their K/V
// written nowhere). It stands for SplitColumns3, AddBias, ApplyRope twice and
// WriteKvPaged, five to seven launches in a step that is mostly launches at
// small batches. D is a multiple of 16.
struct RopeQkvParams {
  const void* qkv = nullptr;
  int rows = 0;
  int batch = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  const float2* rope = nullptr;
  const float* q_bias = nullptr;  // [Hq * D], or null
  const float* k_bias = nullptr;  // [Hkv * D], or null
  const float* v_bias = nullptr;  // [Hkv * D], or null
  const int32_t* positions = nullptr;  // [batch]
  const int32_t* block_tables = nullptr;  // [batch, max_pages_per_seq]
  int max_pages_per_seq = 0;
  int page_tokens = 0;
  void* q = nullptr;
  void* k_pages = nullptr;  // one layer's pool
  void* v_pages = nullptr;
};
cudaError_t RopeQkvToPages(const RopeQkvParams& p, cudaStream_t stream);

// Copies tokens [t0, t0 + n) of one sequence between the wire layout
// src/dst [Hkv, n, D] and its pages (`table`, device memory, at least
// ceil((t0 + n) / page_tokens) entries). bf16 elements.
cudaError_t ScatterToPages(const void* src, int t0, int n, const int32_t* table, int num_kv_heads, int head_dim,
                           int page_tokens, void* pages, cudaStream_t stream);
// ScatterToPages from a source whose heads are `src_stride` (>= n) tokens
// apart: [Hkv, src_stride, D], tokens [0, n) of each head taken (a contiguous
// KV cache's layer, its stride the capacity).
cudaError_t ScatterToPagesStrided(const void* src, int src_stride, int t0, int n, const int32_t* table,
                                  int num_kv_heads, int head_dim, int page_tokens, void* pages, cudaStream_t stream);
cudaError_t GatherFromPages(const void* pages, const int32_t* table, int t0, int n, int num_kv_heads, int head_dim,
                            int page_tokens, void* dst, cudaStream_t stream);

}  // namespace seer::cuda
