// fp8 (E4M3) KV quantisation on the GPU (kv_quant.h). One CTA per
// (block of tokens, head): the block's elements are one contiguous span in
// both the source and the codes, so the CTA reads it twice (the amax, then
// the codes; the second read hits L2) in 16-byte vectors when head_dim and
// the pointers allow, element by element otherwise. Memory-bound: 2 bytes in,
// 1 out per element.
#include "kernels/kv_quant/kv_quant.h"

#include <cuda_fp8.h>

#include "kernels/kv_quant/e4m3.h"

namespace seer::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float AbsFinite(float x) {
  const float a = fabsf(x);
  return a <= 3.402823466e38f ? a : 0.0f;  // NaN and Inf do not count
}

// The code of x / s: the hardware's round-to-nearest-even with saturation,
// NaN made canonical (cvt's NaN sign is not specified).
__device__ __forceinline__ uint8_t Encode(float x, float s) {
  float q;
  if (s > 0.0f) {
    q = __fdiv_rn(x, s);
  } else {
    q = (isnan(x) || isinf(x)) ? x : copysignf(0.0f, x);
  }
  if (isnan(q)) return kvq::kE4m3NaN;
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float BlockMax(float v) {
  __shared__ float warp_max[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  float m = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
  return m;
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    QuantizeKernel(const __nv_bfloat16* src, int64_t src_head_stride, int tokens, int head_dim, int block_tokens,
                   uint8_t* codes, float* scales) {
  const int b = blockIdx.x, h = blockIdx.y;
  const int blocks = gridDim.x;
  const int t0 = b * block_tokens;
  const int t1 = min(tokens, t0 + block_tokens);
  const int64_t n = static_cast<int64_t>(t1 - t0) * head_dim;
  const __nv_bfloat16* in = src + h * src_head_stride + static_cast<int64_t>(t0) * head_dim;
  uint8_t* out = codes + (static_cast<int64_t>(h) * tokens + t0) * head_dim;

  float amax = 0.0f;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x * 8; i < n; i += kThreads * 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(in + i);
      const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(p[j]);
        amax = fmaxf(amax, fmaxf(AbsFinite(f.x), AbsFinite(f.y)));
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) amax = fmaxf(amax, AbsFinite(__bfloat162float(in[i])));
  }
  amax = BlockMax(amax);
  const float s = amax > 0.0f ? __fdiv_rn(amax, kvq::kE4m3Max) : 0.0f;
  if (threadIdx.x == 0) scales[static_cast<int64_t>(h) * blocks + b] = s;

  if constexpr (kVec) {
    for (int64_t i = threadIdx.x * 8; i < n; i += kThreads * 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(in + i);
      const __nv_bfloat16* p = reinterpret_cast<const __nv_bfloat16*>(&raw);
      uint2 packed;
      uint8_t* q = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[j] = Encode(__bfloat162float(p[j]), s);
      *reinterpret_cast<uint2*>(out + i) = packed;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) out[i] = Encode(__bfloat162float(in[i]), s);
  }
}

__device__ __forceinline__ __nv_bfloat16 Decode(uint8_t code, float s) {
  const float f = kvq::E4m3ToFloat(code) * s;
  const uint16_t bits = isnan(f) ? kvq::kBf16NaN : __bfloat16_as_ushort(__float2bfloat16_rn(f));
  return __ushort_as_bfloat16(bits);
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    DequantizeKernel(const uint8_t* codes, const float* scales, int tokens, int head_dim, int block_tokens,
                     __nv_bfloat16* dst, int64_t dst_head_stride) {
  const int b = blockIdx.x, h = blockIdx.y;
  const int t0 = b * block_tokens;
  const int t1 = min(tokens, t0 + block_tokens);
  const int64_t n = static_cast<int64_t>(t1 - t0) * head_dim;
  const float s = scales[static_cast<int64_t>(h) * gridDim.x + b];
  const uint8_t* in = codes + (static_cast<int64_t>(h) * tokens + t0) * head_dim;
  __nv_bfloat16* out = dst + h * dst_head_stride + static_cast<int64_t>(t0) * head_dim;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x * 8; i < n; i += kThreads * 8) {
      const uint2 packed = *reinterpret_cast<const uint2*>(in + i);
      const uint8_t* q = reinterpret_cast<const uint8_t*>(&packed);
      uint4 raw;
      __nv_bfloat16* p = reinterpret_cast<__nv_bfloat16*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) p[j] = Decode(q[j], s);
      *reinterpret_cast<uint4*>(out + i) = raw;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) out[i] = Decode(in[i], s);
  }
}

bool Aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

bool ShapeOk(int heads, int tokens, int head_dim, int block_tokens) {
  return heads > 0 && tokens >= 0 && head_dim > 0 && block_tokens > 0 && heads <= 65535;
}

}  // namespace

cudaError_t QuantizeKvE4m3(const __nv_bfloat16* src, int64_t src_head_stride, int heads, int tokens, int head_dim,
                           int block_tokens, uint8_t* codes, float* scales, cudaStream_t stream) {
  if (!ShapeOk(heads, tokens, head_dim, block_tokens)) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  const dim3 grid((tokens + block_tokens - 1) / block_tokens, heads);
  // 8 elements per vector: every span starts at a multiple of head_dim
  // elements, so head_dim % 8 and aligned bases keep every vector aligned.
  const bool vec = head_dim % 8 == 0 && src_head_stride % 8 == 0 && Aligned(src, 16) && Aligned(codes, 8);
  if (vec) {
    QuantizeKernel<true>
        <<<grid, kThreads, 0, stream>>>(src, src_head_stride, tokens, head_dim, block_tokens, codes, scales);
  } else {
    QuantizeKernel<false>
        <<<grid, kThreads, 0, stream>>>(src, src_head_stride, tokens, head_dim, block_tokens, codes, scales);
  }
  return cudaGetLastError();
}

cudaError_t DequantizeKvE4m3(const uint8_t* codes, const float* scales, int heads, int tokens, int head_dim,
                             int block_tokens, __nv_bfloat16* dst, int64_t dst_head_stride, cudaStream_t stream) {
  if (!ShapeOk(heads, tokens, head_dim, block_tokens)) return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  const dim3 grid((tokens + block_tokens - 1) / block_tokens, heads);
  const bool vec = head_dim % 8 == 0 && dst_head_stride % 8 == 0 && Aligned(dst, 16) && Aligned(codes, 8);
  if (vec) {
    DequantizeKernel<true>
        <<<grid, kThreads, 0, stream>>>(codes, scales, tokens, head_dim, block_tokens, dst, dst_head_stride);
  } else {
    DequantizeKernel<false>
        <<<grid, kThreads, 0, stream>>>(codes, scales, tokens, head_dim, block_tokens, dst, dst_head_stride);
  }
  return cudaGetLastError();
}

}  // namespace seer::cuda
