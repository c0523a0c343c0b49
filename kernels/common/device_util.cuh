// Small device helpers shared by several kernels and benchmarks (CUDA only).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"

namespace seer::cuda {

// Eight consecutive bf16/fp16 values (one 16-byte load; src 16-byte aligned)
// widened to float.
template <typename T>
__device__ __forceinline__ void Load8(const T* src, float (&f)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(e[i]);
}

// Uniform(-1, 1) * scale from a hash of the index: random, reproducible, on
// the device (benchmarks' inputs).
template <typename T>
__global__ void FillUniformKernel(T* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32) * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    h *= 0x297A2D39u;
    h ^= h >> 15;
    const float u = (h >> 8) * (1.0f / 8388608.0f) - 1.0f;
    x[i] = static_cast<T>(u * scale);
  }
}

// n elements of bf16 or fp16 at x, FillUniformKernel on the default stream.
inline cudaError_t FillUniform(void* x, int64_t n, ElemType t, uint32_t seed, float scale) {
  if (t == ElemType::kBF16) {
    FillUniformKernel<<<1024, 256>>>(static_cast<__nv_bfloat16*>(x), n, seed, scale);
  } else {
    FillUniformKernel<<<1024, 256>>>(static_cast<__half*>(x), n, seed, scale);
  }
  return cudaGetLastError();
}

}  // namespace seer::cuda
