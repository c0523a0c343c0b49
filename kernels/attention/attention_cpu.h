// CPU twins of the attention kernels, in float32 with float32 accumulation.
// Layouts match the CUDA kernels (kernels/attention/attention.h):
//   q, out: [L, Hq, D] (token-major, as the projections produce them)
//   k, v:   [Hkv, kv_stride, D] (the KV cache layout; kv_stride >= L)
// GQA: query head h reads kv head h / (Hq / Hkv).
#pragma once

#include <cstdint>

namespace seer::cpu {

struct AttentionShape {
  int seq_len = 0;  // L: queries at positions 0..L-1 attend to keys 0..pos
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;  // D
  int kv_stride = 0;  // tokens between kv heads in k/v (the cache capacity)
  float scale = 0.0f;  // usually 1/sqrt(D)
  // The prefill kernels compute query rows first_row .. L-1 only (a prefill
  // that continues from a cached prefix): q and out then hold those rows
  // from their start, row r at r - first_row. A multiple of the block size,
  // below L (0: every row).
  int first_row = 0;
};

// Dense causal attention.
void CausalAttention(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                     int num_threads = 1);

// Causal attention restricted to the selected 64-token blocks (block_size):
// for head h and query block qb, only key blocks in
// indices[offsets[h*nb+qb] .. offsets[h*nb+qb+1]) are computed (ascending,
// each <= qb), with the token-level causal mask inside the diagonal block.
// A row whose list is empty gets zeros.
void BlockSparseAttention(const AttentionShape& s, int block_size, const int32_t* offsets, const int32_t* indices,
                          const float* q, const float* k, const float* v, float* out, int num_threads = 1);

// One decode query per head at position `pos` (keys 0..pos), q/out: [Hq, D].
void DecodeAttention(const AttentionShape& s, int pos, const float* q, const float* k, const float* v, float* out);

}  // namespace seer::cpu
