// fp8 (E4M3) KV on the wire, on the GPU: the twin of kv_quant_cpu.h, whose
// comment defines the format (scales per (head, block of tokens), rounding,
// saturation, NaN). Bit-exact with the twin for bf16 data
// (kv_quant_gpu_test.cc).
//
// Both launch on `stream`, never synchronise, and return the launch status
// (cudaErrorInvalidValue for a shape they do not take).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace seer::cuda {

// src: head h's [tokens, head_dim] rows start at src + h * src_head_stride
// elements (a layer of the device KV cache, [heads, capacity, head_dim],
// offset to its first token: stride capacity * head_dim). codes [heads,
// tokens, head_dim]; scales [heads, ceil(tokens / block_tokens)].
cudaError_t QuantizeKvE4m3(const __nv_bfloat16* src, int64_t src_head_stride, int heads, int tokens, int head_dim,
                           int block_tokens, uint8_t* codes, float* scales, cudaStream_t stream);

// The inverse, into dst (head h's rows at dst + h * dst_head_stride).
cudaError_t DequantizeKvE4m3(const uint8_t* codes, const float* scales, int heads, int tokens, int head_dim,
                             int block_tokens, __nv_bfloat16* dst, int64_t dst_head_stride, cudaStream_t stream);

}  // namespace seer::cuda
