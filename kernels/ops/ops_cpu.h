// CPU twins of the dense transformer ops, in float32, written to compute what
// Hugging Face's float32 modules compute (LlamaRMSNorm, rotate_half RoPE,
// SiLU-gated MLP, nn.Linear). Matrices are row-major.
#pragma once

#include <cstddef>
#include <cstdint>

namespace seer::cpu {

// c[m, n] += a[m, k] . b[k, n], single-threaded, register-tiled. Leading
// dimensions (elements between rows) let callers pass sub-matrices.
void MatMulAccumulate(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc);

// An HF Linear, y = x W^T + bias, with W [n, k] transposed once at load into
// w_t [k, n] (Transpose) so that the inner loop runs along contiguous output
// columns. x: [m, k], y: [m, n], bias: [n] or null.
void Linear(const float* x, int m, int k, const float* w_t, int n, const float* bias, float* y, int num_threads = 1);

// out[c, r] = in[r, c] for in [rows, cols].
void Transpose(const float* in, int rows, int cols, float* out);

// HF LlamaRMSNorm: out = x * rsqrt(mean(x^2) + eps) * weight per row of
// x [rows, dim]. The mean is accumulated in double and rounded to float.
void RmsNorm(const float* x, int rows, int dim, const float* weight, float eps, float* out);

// Rotary embedding, half-split layout (HF rotate_half), in place on
// x [rows, num_heads, head_dim]; row r sits at positions[r]. inv_freq holds
// head_dim / 2 values. As HF does: angle = float(pos) * inv_freq in float32,
// then x * cos + rotate_half(x) * sin.
void ApplyRope(float* x, int rows, int num_heads, int head_dim, const int32_t* positions, const float* inv_freq);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
void SwiGlu(const float* gate, const float* up, size_t n, float* out);

// out[r, :] = table[ids[r], :] for table [vocab, dim]; ids are in range.
void Embedding(const float* table, int dim, const int32_t* ids, int n, float* out);

// x[i] += y[i].
void AddInPlace(float* x, const float* y, size_t n);

// Index of the largest value; the first one on ties (as torch.argmax).
int ArgMax(const float* x, int n);

}  // namespace seer::cpu
