// Block-sparse FlashAttention forward (prefill) and decode attention on CUDA.
// bf16 or fp16 storage, fp32 accumulation. CPU twins: kernels/attention/attention_cpu.h
// (same layouts). The interface is kernel-agnostic so that a Hopper (wgmma/TMA)
// kernel can replace the FA2-class one behind it.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"

namespace seer::cuda {

struct AttentionParams {
  ElemType dtype = ElemType::kBF16;
  const void* q = nullptr;  // [L, Hq, D]
  const void* k = nullptr;  // [Hkv, kv_stride, D]
  const void* v = nullptr;  // [Hkv, kv_stride, D]
  void* out = nullptr;  // [L, Hq, D]
  int seq_len = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // 32, 64, 96 or 128 (kSupportedHeadDims, kernels/common/dispatch.h)
  int kv_stride = 0;  // tokens between kv heads
  float scale = 0.0f;
  // Per (head, query block) CSR lists of key blocks, as BlockLists
  // (kernels/common/block_lists.h), in device memory. Null offsets = dense causal.
  const int32_t* block_offsets = nullptr;  // Hq * nb + 1
  const int32_t* block_indices = nullptr;
  int block_size = 64;
  // (cos, sin) [seq_len, head_dim / 2] as cuda::RopeTable builds them, or
  // null. Set: q is read before RoPE and the kernel rotates it as it loads
  // it, exactly as cuda::RopeToCache would have (the same bits), which spares
  // the prefill a pass over q. Only where AttentionRotatesQ() says so;
  // elsewhere cudaErrorInvalidValue.
  const float2* q_rope = nullptr;
  // The caller reads rows first_row.. alone, and the kernels may skip the
  // query blocks before first_row's (those rows of out are then left as
  // they were, or written from whatever q and the lists hold there). A
  // prefill's last layer, which feeds only the last row's logits, passes
  // L - 1 (dense); a prefill continuing from a cached prefix passes the
  // prefix's length, dense or with lists. The rows' results do not depend
  // on it. 0 <= first_row < max(1, seq_len).
  int first_row = 0;
  // The prefill kernels' tile order (kernels/attention/tile_order.h): passes
  // over this many KV heads at a time, heaviest tiles first across each
  // pass; 0 picks as many as half the L2 holds K and V of. The order changes
  // no output bit. >= 0.
  int kv_heads_per_pass = 0;
  // Scratch: for decode the split-K partial results (DecodeWorkspaceBytes()),
  // for prefill on Hopper the tile order and counter (PrefillWorkspaceBytes()).
  // Without it (null or too small) each call allocates its scratch from the
  // stream's memory pool.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// The most scratch DecodeAttention needs for `num_heads` heads of `head_dim`
// on the current device, whatever the position.
size_t DecodeWorkspaceBytes(int num_heads, int head_dim);

// The most scratch BlockSparseAttention uses for these shapes.
size_t PrefillWorkspaceBytes(int num_heads, int seq_len);

// Whether BlockSparseAttention takes AttentionParams::q_rope for this dtype
// and head_dim on the current device: the sm_90a kernel, bf16.
bool AttentionRotatesQ(ElemType dtype, int head_dim);

// Prefill attention. Returns cudaErrorInvalidValue for unsupported shapes.
// On compute capability 9.0 it runs the sm_90a kernel (wgmma + TMA), else
// the FA2-class mma.sync kernel; both take every supported shape.
cudaError_t BlockSparseAttention(const AttentionParams& p, cudaStream_t stream);

// Decode: one query token per head at position `pos` attending to keys
// 0..pos. q/out: [Hq, D].
cudaError_t DecodeAttention(const AttentionParams& p, int pos, cudaStream_t stream);

}  // namespace seer::cuda
