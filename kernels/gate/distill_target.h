// The distillation target of SeerAttention's gate training (DESIGN §1) on the
// GPU: the device twin of seer::cpu::DistillTarget
// (kernels/gate/distill_target_cpu.h), whose semantics it follows. For each Q
// head h and each (query block qb, key block kb <= qb), the maximum over the
// block of the true causal softmax probability softmax(q.k * scale) (row-wise
// over every key up to the query), then each row (h, qb, .) normalised to sum
// 1; 0 above the diagonal. A partial last block covers only its real tokens.
// Q head h reads KV head h / (Hq / Hkv).
//
// One CTA per (head, query block), the longest rows first; two passes over
// the row's key blocks (softmax statistics, then the block maxima). Block 64
// forms the scores on tensor cores (bf16/fp16 products, float32 sums), blocks
// 16 and 32 in float32 on CUDA cores. Nothing of size L x L is formed and no
// scratch is needed: every element of `out` is written.
//
// All pointers are device memory; the launch runs on `stream` and nothing
// synchronizes with the host.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"

namespace seer::cuda {

struct DistillTargetParams {
  const void* q = nullptr;  // [L, q_row_stride] elements of dtype; head h at column h * head_dim (after RoPE)
  const void* k = nullptr;  // [L, k_row_stride]; KV head g at column g * head_dim (after RoPE)
  ElemType dtype = ElemType::kBF16;
  int64_t q_row_stride = 0;  // elements between token rows (0: num_heads * head_dim)
  int64_t k_row_stride = 0;  // (0: num_kv_heads * head_dim)
  int seq_len = 0;
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;  // a multiple of 8, at most 256
  int block_size = 64;  // 64 (the gate's); 16 and 32 are accepted too
  float scale = 0.f;  // the attention's softmax scale, float(1 / sqrt(head_dim)); finite and > 0
  float* out = nullptr;  // [num_heads, nb, nb], nb = ceil(seq_len / block_size); every element written
};

// Checks the parameters and launches on `stream`. Returns cudaErrorInvalidValue
// for a null pointer, seq_len < 1, heads < 1 or Hkv not dividing Hq, a head_dim
// that is not a multiple of 8 in [8, 256], a block_size other than 16, 32 or
// 64, a scale that is not finite and positive, a row stride smaller than its
// heads' width or not a multiple of 8 elements, q or k not 16-byte aligned
// (rows are read 16 bytes at a time), or more than 2^31 - 1 (head, query
// block) rows; otherwise the launch's error.
cudaError_t LaunchDistillTarget(const DistillTargetParams& p, cudaStream_t stream);

}  // namespace seer::cuda
