// CUDA twins of the dense transformer ops (kernels/ops/ops_cpu.h), bf16 storage
// with float32 math. The residual stream stays in float32 between layers, so
// the ops that read or write it take float; everything a GEMM reads is bf16.
//
// Every function launches on `stream`, never synchronises, and returns the
// launch status (cudaErrorInvalidValue for a shape it does not take).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace seer::cuda {

using bf16 = __nv_bfloat16;

// out[r, :] = float(table[ids[r], :]) for table [vocab, dim]. An id outside
// [0, vocab) writes NaN into its row (callers validate ids first; the NaN makes
// a missed check visible instead of reading out of bounds).
cudaError_t Embedding(const bf16* table, int vocab, int dim, const int32_t* ids, int n, float* out,
                      cudaStream_t stream);

// HF LlamaRMSNorm in float32, rounded once to bf16:
// out = bf16(weight * (x * rsqrt(mean(x^2) + eps))) per row of x [rows, dim].
cudaError_t RmsNorm(const float* x, int rows, int dim, const float* weight, float eps, bf16* out, cudaStream_t stream);

// RoPE angles for rows at positions pos0, pos0 + 1, ...: table[r * half + i]
// = (cos, sin) of float(pos0 + r) * inv_freq[i], in float32 as HF computes
// them. inv_freq (device, half = head_dim / 2 floats) comes from the host
// with llama3 scaling applied. Built once per forward pass and shared by
// every layer and head.
cudaError_t RopeTable(const float* inv_freq, int half, int pos0, int rows, float2* table, cudaStream_t stream);
// The same for rows at arbitrary positions (device int32 [rows]): a batched
// decode step, one sequence per row.
cudaError_t RopeTableAt(const float* inv_freq, int half, const int32_t* positions, int rows, float2* table,
                        cudaStream_t stream);

// Rotary embedding, half-split layout (HF rotate_half), in place on
// x [rows, num_heads, head_dim] with the angles of `table` (RopeTable):
// lo' = lo * cos - hi * sin, hi' = hi * cos + lo * sin, in float32.
cudaError_t ApplyRope(bf16* x, int rows, int num_heads, int head_dim, const float2* table, cudaStream_t stream);

// Scatters src [n, kv_heads, head_dim] (token-major, as the projection writes
// it) into one layer's cache [kv_heads, capacity, head_dim] at tokens
// [t0, t0 + n).
cudaError_t WriteKv(const bf16* src, int n, int kv_heads, int head_dim, bf16* cache, int capacity, int t0,
                    cudaStream_t stream);

// ApplyRope on q and k, then WriteKv of k and v into one layer's cache
// [kv_heads, capacity, head_dim] at tokens [t0, t0 + rows), as one pass over
// q, k and v: every output holds exactly what those four calls write. One
// launch with 16-byte moves when head_dim % 16 == 0 and every pointer is
// 16-byte aligned; otherwise it makes those four calls. q null: q is left
// alone (the attention rotates it, AttentionParams::q_rope).
cudaError_t RopeToCache(bf16* q, bf16* k, const bf16* v, int rows, int num_heads, int kv_heads, int head_dim,
                        const float2* table, bf16* k_cache, bf16* v_cache, int capacity, int t0, cudaStream_t stream);

// out[i] = bf16(silu(gate[i]) * up[i]) with silu(x) = x / (1 + exp(-x)) in
// float32. `out` may alias `gate`.
cudaError_t SwiGlu(const bf16* gate, const bf16* up, size_t n, bf16* out, cudaStream_t stream);

// The same in place on the fused gate/up projection's output
// gu [rows, 2 * inter] (gate columns, then up columns): row r's first inter
// columns become bf16(silu(gate) * up), bit for bit SwiGlu's, and the down
// projection reads them with a row stride of 2 * inter. inter % 8 == 0 and gu
// 16-byte aligned.
cudaError_t SwiGluRows(bf16* gu, int rows, int inter, cudaStream_t stream);

// Copies the column blocks of src [rows, w0 + w1 + w2] (row-major) into
// d0 [rows, w0], d1 [rows, w1] and d2 [rows, w2]: a fused q/k/v projection's
// output into the three buffers the attention reads. Widths are multiples
// of 8 and the pointers 16-byte aligned.
cudaError_t SplitColumns3(const bf16* src, int rows, int w0, int w1, int w2, bf16* d0, bf16* d1, bf16* d2,
                          cudaStream_t stream);

// x[r, c] += bias[c] for x [rows, cols]; the bf16 form adds in float32 and
// rounds once.
cudaError_t AddBias(bf16* x, int rows, int cols, const float* bias, cudaStream_t stream);
cudaError_t AddBias(float* x, int rows, int cols, const float* bias, cudaStream_t stream);

// out[r] = index of the largest value of row r of x [rows, n]; the first one
// on ties (as torch.argmax and cpu::ArgMax). Greedy sampling on the device.
cudaError_t ArgMaxRows(const float* x, int rows, int n, int32_t* out, cudaStream_t stream);

// Fills x[0, n) with values drawn uniformly from [-scale, scale), a pure
// function of (seed, index): the same seed gives the same tensor on any GPU.
// With bf16_values, each float is the draw rounded to bf16 (as weights
// loaded from a BF16 checkpoint are).
cudaError_t FillUniform(bf16* x, size_t n, uint64_t seed, float scale, cudaStream_t stream);
cudaError_t FillUniform(float* x, size_t n, uint64_t seed, float scale, cudaStream_t stream, bool bf16_values = false);
// x[0, n) = value.
cudaError_t Fill(float* x, size_t n, float value, cudaStream_t stream);

}  // namespace seer::cuda
