#include "kernels/ops/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/common/check.h"
#include "kernels/ops/rope.cuh"

namespace seer::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, never
// more than the work needs, and within the grid's x limit.
unsigned GridFor(size_t n, int threads = kThreads) {
  const size_t blocks = (n + threads - 1) / threads;
  constexpr size_t kMaxBlocks = 65535u * 16u;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of `v` over the block, returned to every thread. `scratch` holds
// one float per warp.
__device__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = WarpSum(total);
  __syncthreads();  // scratch may be reused by the caller
  return total;
}

__global__ void EmbeddingKernel(const bf16* table, int vocab, int dim, const int32_t* ids, int n, float* out) {
  const size_t total = static_cast<size_t>(n) * dim;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / dim);
    const int c = static_cast<int>(i % dim);
    const int id = ids[r];
    out[i] = (id >= 0 && id < vocab) ? __bfloat162float(table[static_cast<size_t>(id) * dim + c])
                                     : __int_as_float(0x7fc00000);
  }
}

// EmbeddingKernel with eight elements per thread: one 16-byte load of the
// table row, two 16-byte stores.
__global__ void Embedding8Kernel(const uint4* table, int vocab, int dim8, const int32_t* ids, int n, float4* out) {
  const size_t total = static_cast<size_t>(n) * dim8;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / dim8);
    const int c = static_cast<int>(i % dim8);
    const int id = ids[r];
    float4 lo, hi;
    if (id >= 0 && id < vocab) {
      const uint4 packed = table[static_cast<size_t>(id) * dim8 + c];
      const bf16* e = reinterpret_cast<const bf16*>(&packed);
      lo = make_float4(__bfloat162float(e[0]), __bfloat162float(e[1]), __bfloat162float(e[2]), __bfloat162float(e[3]));
      hi = make_float4(__bfloat162float(e[4]), __bfloat162float(e[5]), __bfloat162float(e[6]), __bfloat162float(e[7]));
    } else {
      const float nan = __int_as_float(0x7fc00000);
      lo = hi = make_float4(nan, nan, nan, nan);
    }
    out[2 * i] = lo;
    out[2 * i + 1] = hi;
  }
}

// One block per row: the sum of squares, then the scaled row.
__global__ void RmsNormKernel(const float* x, int dim, const float* weight, float eps, bf16* out) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  bf16* outr = out + static_cast<size_t>(blockIdx.x) * dim;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += xr[i] * xr[i];
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) outr[i] = __float2bfloat16(weight[i] * (xr[i] * inv_rms));
}

// RmsNormKernel's arithmetic with the row in registers: up to kRmsVecs
// 16-byte loads per thread, all in flight at once, so a row is read from
// memory once and a CTA is small enough for eight of them per SM; four bf16
// out per 8-byte store.
constexpr int kRmsVecs = 4;

__global__ void RmsNorm4Kernel(const float4* x, int dim4, const float4* weight, float eps, uint2* out) {
  __shared__ float scratch[32];
  const float4* xr = x + static_cast<size_t>(blockIdx.x) * dim4;
  float4 v[kRmsVecs];
#pragma unroll
  for (int u = 0; u < kRmsVecs; ++u) {
    const int i = threadIdx.x + u * blockDim.x;
    v[u] = i < dim4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  float sum_sq = 0.0f;
#pragma unroll
  for (int u = 0; u < kRmsVecs; ++u) sum_sq += v[u].x * v[u].x + v[u].y * v[u].y + v[u].z * v[u].z + v[u].w * v[u].w;
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(4 * dim4) + eps);
  uint2* outr = out + static_cast<size_t>(blockIdx.x) * dim4;
#pragma unroll
  for (int u = 0; u < kRmsVecs; ++u) {
    const int i = threadIdx.x + u * blockDim.x;
    if (i >= dim4) break;
    const float4 w = weight[i];
    const __nv_bfloat162 lo = __floats2bfloat162_rn(w.x * (v[u].x * inv_rms), w.y * (v[u].y * inv_rms));
    const __nv_bfloat162 hi = __floats2bfloat162_rn(w.z * (v[u].z * inv_rms), w.w * (v[u].w * inv_rms));
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    outr[i] = packed;
  }
}

// Row r sits at positions[r], or at pos0 + r without a positions array.
__global__ void RopeTableKernel(const float* inv_freq, int half, int pos0, const int32_t* positions, int rows,
                                float2* table) {
  const size_t total = static_cast<size_t>(rows) * half;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int r = static_cast<int>(idx / half);
    const float angle = static_cast<float>(positions != nullptr ? positions[r] : pos0 + r) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    table[idx] = make_float2(c, s);
  }
}

// One thread per rotated pair (i, i + half) of one head of one row.
__global__ void RopeKernel(bf16* x, int rows, int num_heads, int head_dim, const float2* table) {
  const int half = head_dim / 2;
  const size_t total = static_cast<size_t>(rows) * num_heads * half;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const size_t head_row = idx / half;  // r * num_heads + h
    const size_t r = head_row / num_heads;
    const float2 cs = table[r * half + i];
    bf16* v = x + head_row * head_dim;
    float lo, hi;
    RotatePair(__bfloat162float(v[i]), __bfloat162float(v[i + half]), cs, &lo, &hi);
    v[i] = __float2bfloat16(lo);
    v[i + half] = __float2bfloat16(hi);
  }
}

// 16-byte moves when a head's row is a whole number of them (head_dim % 8).
template <typename Vec>
__global__ void WriteKvKernel(const Vec* src, int n, int kv_heads, int vecs_per_head, Vec* cache, int capacity,
                              int t0) {
  const size_t total = static_cast<size_t>(n) * kv_heads * vecs_per_head;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(idx % vecs_per_head);
    const size_t th = idx / vecs_per_head;  // t * kv_heads + h
    const int h = static_cast<int>(th % kv_heads);
    const int t = static_cast<int>(th / kv_heads);
    cache[(static_cast<size_t>(h) * capacity + t0 + t) * vecs_per_head + d] = src[idx];
  }
}

// Rotates eight pairs (lo[j], hi[j]) with eight (cos, sin) from `cs`, as
// RopeKernel does one.
__device__ __forceinline__ void Rotate8(uint4* lo4, uint4* hi4, const float4* cs) {
  bf16* lo = reinterpret_cast<bf16*>(lo4);
  bf16* hi = reinterpret_cast<bf16*>(hi4);
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const float4 t = cs[p];
    const float2 angle[2] = {make_float2(t.x, t.y), make_float2(t.z, t.w)};
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int j = 2 * p + u;
      float a, b;
      RotatePair(__bfloat162float(lo[j]), __bfloat162float(hi[j]), angle[u], &a, &b);
      lo[j] = __float2bfloat16(a);
      hi[j] = __float2bfloat16(b);
    }
  }
}

// One CTA per token row; a thread moves 16 bytes of v or rotates 8 pairs of
// one q or k head (16 bytes from each half). `half8` is head_dim / 16.
__global__ void RopeToCacheKernel(uint4* q, uint4* k, const uint4* v, int num_heads, int kv_heads, int half8,
                                  const float4* table, uint4* k_cache, uint4* v_cache, int capacity, int t0) {
  const int r = blockIdx.x;
  const int q_items = num_heads * half8, k_items = kv_heads * half8, v_items = kv_heads * 2 * half8;
  const int head_vecs = 2 * half8;
  // The row's 8 * half8 (cos, sin) pairs, two per float4.
  const float4* row_table = table + static_cast<size_t>(r) * half8 * 4;
  for (int j = threadIdx.x; j < q_items + k_items + v_items; j += blockDim.x) {
    if (j < q_items + k_items) {
      const bool is_q = j < q_items;
      const int jj = is_q ? j : j - q_items;
      const int h = jj / half8, c = jj % half8;
      const int heads = is_q ? num_heads : kv_heads;
      const uint4* src = (is_q ? q : k) + (static_cast<size_t>(r) * heads + h) * head_vecs;
      uint4 lo = src[c], hi = src[half8 + c];
      Rotate8(&lo, &hi, row_table + 4 * c);
      // In place, and k also into the cache.
      uint4* in_place = (is_q ? q : k) + (static_cast<size_t>(r) * heads + h) * head_vecs;
      in_place[c] = lo;
      in_place[half8 + c] = hi;
      if (!is_q) {
        uint4* cached = k_cache + (static_cast<size_t>(h) * capacity + t0 + r) * head_vecs;
        cached[c] = lo;
        cached[half8 + c] = hi;
      }
    } else {
      const int jj = j - q_items - k_items;
      const int h = jj / head_vecs, c = jj % head_vecs;
      v_cache[(static_cast<size_t>(h) * capacity + t0 + r) * head_vecs + c] =
          v[(static_cast<size_t>(r) * kv_heads + h) * head_vecs + c];
    }
  }
}

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

__global__ void SwiGluKernel(const bf16* gate, const bf16* up, size_t n, bf16* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(Silu(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
  }
}

// SwiGLU of eight bf16 pairs packed in 16 bytes each (SwiGluKernel's
// arithmetic per element).
__device__ __forceinline__ uint4 SwiGlu8(uint4 g4, uint4 u4) {
  const bf16* g = reinterpret_cast<const bf16*>(&g4);
  const bf16* u = reinterpret_cast<const bf16*>(&u4);
  uint4 o4;
  bf16* o = reinterpret_cast<bf16*>(&o4);
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = __float2bfloat16(Silu(__bfloat162float(g[j])) * __bfloat162float(u[j]));
  return o4;
}

// Eight elements per thread through 16-byte loads and stores.
__global__ void SwiGlu8Kernel(const uint4* gate, const uint4* up, size_t n8, uint4* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = SwiGlu8(gate[i], up[i]);
  }
}

// SwiGlu8Kernel's arithmetic on the gate half of each row of gu, in place.
__global__ void SwiGluRowsKernel(uint4* gu, int rows, int inter8) {
  const size_t n8 = static_cast<size_t>(rows) * inter8;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint4* g4 = gu + (i / inter8) * 2 * inter8 + i % inter8;
    *g4 = SwiGlu8(*g4, g4[inter8]);
  }
}

template <typename T>
__device__ __forceinline__ float ToFloat(T v);
template <>
__device__ __forceinline__ float ToFloat(float v) {
  return v;
}
template <>
__device__ __forceinline__ float ToFloat(bf16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat(float v) {
  return v;
}
template <>
__device__ __forceinline__ bf16 FromFloat(float v) {
  return __float2bfloat16(v);
}

template <typename T>
__global__ void AddBiasKernel(T* x, int rows, int cols, const float* bias) {
  const size_t total = static_cast<size_t>(rows) * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] = FromFloat<T>(ToFloat(x[i]) + bias[i % cols]);
  }
}

// The largest element's index in each row, one CTA of kArgMaxThreads per
// row. Thread t scans its elements in ascending order: the 4-element groups
// t, t + T, t + 2T, ... with 16-byte loads, kArgMaxUnroll in flight (a scalar
// loop when the rows are not 16-byte aligned), so that one CTA keeps enough
// bytes in flight to read a 128k vocabulary in microseconds. The tree then
// merges with the lower thread on the left: the first index of the maximum
// wins, and a NaN at element 0 (thread 0's first element; thread 0 is the
// left of every merge) stays the answer, as in cpu::ArgMax.
constexpr int kArgMaxThreads = 1024;
constexpr int kArgMaxUnroll = 4;

__device__ __forceinline__ void ArgMaxConsider(float xi, int i, int n, float& v, int& idx) {
  // As cpu::ArgMax: a NaN is never larger than anything, but a NaN in
  // element 0 is where that scan starts, so it stays the answer.
  const bool first = idx == n && (i == 0 || !isnan(xi));
  if (first || xi > v) {
    v = xi;
    idx = i;
  }
}

__global__ void __launch_bounds__(kArgMaxThreads) ArgMaxKernel(const float* x, int n, int32_t* out) {
  __shared__ float best_v[kArgMaxThreads];
  __shared__ int best_i[kArgMaxThreads];
  const float* row = x + static_cast<size_t>(blockIdx.x) * n;
  float v = -INFINITY;
  int idx = n;  // "none yet": loses every tie against a real index
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const float4* groups = reinterpret_cast<const float4*>(row);
    const int num_groups = n / 4;
    for (int g0 = threadIdx.x; g0 < num_groups; g0 += kArgMaxUnroll * kArgMaxThreads) {
      float4 f[kArgMaxUnroll] = {};
#pragma unroll
      for (int u = 0; u < kArgMaxUnroll; ++u) {
        const int g = g0 + u * kArgMaxThreads;
        if (g < num_groups) f[u] = groups[g];
      }
#pragma unroll
      for (int u = 0; u < kArgMaxUnroll; ++u) {
        const int g = g0 + u * kArgMaxThreads;
        if (g >= num_groups) break;
        ArgMaxConsider(f[u].x, 4 * g, n, v, idx);
        ArgMaxConsider(f[u].y, 4 * g + 1, n, v, idx);
        ArgMaxConsider(f[u].z, 4 * g + 2, n, v, idx);
        ArgMaxConsider(f[u].w, 4 * g + 3, n, v, idx);
      }
    }
  } else {
    for (int i = threadIdx.x; i < n; i += kArgMaxThreads) ArgMaxConsider(row[i], i, n, v, idx);
  }
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = idx;
  __syncthreads();
  for (int stride = kArgMaxThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const float ov = best_v[threadIdx.x + stride];
      const int oi = best_i[threadIdx.x + stride];
      const float mv = best_v[threadIdx.x];
      const int mi = best_i[threadIdx.x];
      if (oi != n && (mi == n || ov > mv || (ov == mv && oi < mi))) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0];
}

// SplitMix64: a good 64-bit mix of (seed, index), so that every element is an
// independent draw and no state is carried between threads.
__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T, bool kBf16Values = false>
__global__ void FillUniformKernel(T* x, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t bits = Mix64(seed ^ Mix64(i));
    // 24 random bits -> [0, 1), then [-1, 1).
    const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
    const float v = (2.0f * u - 1.0f) * scale;
    if constexpr (kBf16Values) {
      x[i] = __bfloat162float(__float2bfloat16_rn(v));
    } else {
      x[i] = FromFloat<T>(v);
    }
  }
}

__global__ void FillKernel(float* x, size_t n, float value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] = value;
  }
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

cudaError_t Embedding(const bf16* table, int vocab, int dim, const int32_t* ids, int n, float* out,
                      cudaStream_t stream) {
  if (vocab <= 0 || dim <= 0 || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (dim % 8 == 0 && Aligned16(table) && Aligned16(out)) {
    Embedding8Kernel<<<GridFor(static_cast<size_t>(n) * (dim / 8)), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(table), vocab, dim / 8, ids, n, reinterpret_cast<float4*>(out));
  } else {
    EmbeddingKernel<<<GridFor(static_cast<size_t>(n) * dim), kThreads, 0, stream>>>(table, vocab, dim, ids, n, out);
  }
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t RmsNorm(const float* x, int rows, int dim, const float* weight, float eps, bf16* out, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int dim4 = dim / 4;
  if (dim % 4 == 0 && dim4 <= kRmsVecs * 1024 && Aligned16(x) && Aligned16(weight) &&
      reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    const int threads = std::max(32, (dim4 + kRmsVecs * 32 - 1) / (kRmsVecs * 32) * 32);
    RmsNorm4Kernel<<<rows, threads, 0, stream>>>(reinterpret_cast<const float4*>(x), dim4,
                                                 reinterpret_cast<const float4*>(weight), eps,
                                                 reinterpret_cast<uint2*>(out));
    SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return cudaSuccess;
  }
  const int threads = dim >= 4096 ? 1024 : (dim >= 1024 ? 512 : 128);
  // Grid y is unused; rows go on x, whose limit (2^31 - 1) exceeds any int.
  RmsNormKernel<<<rows, threads, 0, stream>>>(x, dim, weight, eps, out);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t RopeTable(const float* inv_freq, int half, int pos0, int rows, float2* table, cudaStream_t stream) {
  if (half <= 0 || rows < 0 || pos0 < 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  RopeTableKernel<<<GridFor(static_cast<size_t>(rows) * half), kThreads, 0, stream>>>(inv_freq, half, pos0, nullptr,
                                                                                      rows, table);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t RopeTableAt(const float* inv_freq, int half, const int32_t* positions, int rows, float2* table,
                        cudaStream_t stream) {
  if (half <= 0 || rows < 0 || (rows > 0 && positions == nullptr)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  RopeTableKernel<<<GridFor(static_cast<size_t>(rows) * half), kThreads, 0, stream>>>(inv_freq, half, 0, positions,
                                                                                      rows, table);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t ApplyRope(bf16* x, int rows, int num_heads, int head_dim, const float2* table, cudaStream_t stream) {
  if (rows < 0 || num_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const size_t pairs = static_cast<size_t>(rows) * num_heads * (head_dim / 2);
  RopeKernel<<<GridFor(pairs), kThreads, 0, stream>>>(x, rows, num_heads, head_dim, table);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t WriteKv(const bf16* src, int n, int kv_heads, int head_dim, bf16* cache, int capacity, int t0,
                    cudaStream_t stream) {
  if (n < 0 || kv_heads <= 0 || head_dim <= 0 || t0 < 0 || static_cast<int64_t>(t0) + n > capacity) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  const size_t elems = static_cast<size_t>(n) * kv_heads * head_dim;
  if (head_dim % 8 == 0 && Aligned16(src) && Aligned16(cache)) {
    WriteKvKernel<uint4><<<GridFor(elems / 8), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(src), n, kv_heads, head_dim / 8, reinterpret_cast<uint4*>(cache), capacity, t0);
  } else {
    WriteKvKernel<bf16><<<GridFor(elems), kThreads, 0, stream>>>(src, n, kv_heads, head_dim, cache, capacity, t0);
  }
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t RopeToCache(bf16* q, bf16* k, const bf16* v, int rows, int num_heads, int kv_heads, int head_dim,
                        const float2* table, bf16* k_cache, bf16* v_cache, int capacity, int t0, cudaStream_t stream) {
  if (rows < 0 || num_heads <= 0 || kv_heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || t0 < 0 ||
      static_cast<int64_t>(t0) + rows > capacity) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  const bool vectors = head_dim % 16 == 0 && Aligned16(q) && Aligned16(k) && Aligned16(v) && Aligned16(table) &&
                       Aligned16(k_cache) && Aligned16(v_cache);
  if (!vectors) {
    if (q != nullptr) SEER_CUDA_RETURN_IF_ERROR(ApplyRope(q, rows, num_heads, head_dim, table, stream));
    SEER_CUDA_RETURN_IF_ERROR(ApplyRope(k, rows, kv_heads, head_dim, table, stream));
    SEER_CUDA_RETURN_IF_ERROR(WriteKv(k, rows, kv_heads, head_dim, k_cache, capacity, t0, stream));
    return WriteKv(v, rows, kv_heads, head_dim, v_cache, capacity, t0, stream);
  }
  const int half8 = head_dim / 16;
  const int q_heads = q != nullptr ? num_heads : 0;  // none: q stays as it is
  const int items = (q_heads + 3 * kv_heads) * half8;
  const int threads = std::min(1024, (items + 31) / 32 * 32);
  RopeToCacheKernel<<<rows, threads, 0, stream>>>(
      reinterpret_cast<uint4*>(q), reinterpret_cast<uint4*>(k), reinterpret_cast<const uint4*>(v), q_heads, kv_heads,
      half8, reinterpret_cast<const float4*>(table), reinterpret_cast<uint4*>(k_cache),
      reinterpret_cast<uint4*>(v_cache), capacity, t0);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t SwiGlu(const bf16* gate, const bf16* up, size_t n, bf16* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n % 8 == 0 && Aligned16(gate) && Aligned16(up) && Aligned16(out)) {
    SwiGlu8Kernel<<<GridFor(n / 8), kThreads, 0, stream>>>(
        reinterpret_cast<const uint4*>(gate), reinterpret_cast<const uint4*>(up), n / 8, reinterpret_cast<uint4*>(out));
  } else {
    SwiGluKernel<<<GridFor(n), kThreads, 0, stream>>>(gate, up, n, out);
  }
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

// One thread per 16 bytes of the source.
__global__ void SplitColumns3Kernel(const uint4* src, int rows, int c0, int c1, int c2, uint4* d0, uint4* d1,
                                    uint4* d2) {
  const int per_row = c0 + c1 + c2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * per_row) return;
  const int r = static_cast<int>(i / per_row);
  const int c = static_cast<int>(i % per_row);
  const uint4 v = src[i];
  if (c < c0) {
    d0[static_cast<int64_t>(r) * c0 + c] = v;
  } else if (c < c0 + c1) {
    d1[static_cast<int64_t>(r) * c1 + (c - c0)] = v;
  } else {
    d2[static_cast<int64_t>(r) * c2 + (c - c0 - c1)] = v;
  }
}

cudaError_t SwiGluRows(bf16* gu, int rows, int inter, cudaStream_t stream) {
  if (rows < 0 || inter <= 0 || inter % 8 != 0 || !Aligned16(gu)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  SwiGluRowsKernel<<<GridFor(static_cast<size_t>(rows) * (inter / 8)), kThreads, 0, stream>>>(
      reinterpret_cast<uint4*>(gu), rows, inter / 8);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t SplitColumns3(const bf16* src, int rows, int w0, int w1, int w2, bf16* d0, bf16* d1, bf16* d2,
                          cudaStream_t stream) {
  if (rows < 0 || w0 < 0 || w1 < 0 || w2 < 0 || w0 % 8 != 0 || w1 % 8 != 0 || w2 % 8 != 0 || !Aligned16(src) ||
      !Aligned16(d0) || !Aligned16(d1) || !Aligned16(d2)) {
    return cudaErrorInvalidValue;
  }
  const size_t total = static_cast<size_t>(rows) * (w0 + w1 + w2) / 8;
  if (total == 0) return cudaSuccess;
  SplitColumns3Kernel<<<GridFor(total), kThreads, 0, stream>>>(
      reinterpret_cast<const uint4*>(src), rows, w0 / 8, w1 / 8, w2 / 8, reinterpret_cast<uint4*>(d0),
      reinterpret_cast<uint4*>(d1), reinterpret_cast<uint4*>(d2));
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t AddBias(bf16* x, int rows, int cols, const float* bias, cudaStream_t stream) {
  if (rows < 0 || cols <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  AddBiasKernel<bf16><<<GridFor(static_cast<size_t>(rows) * cols), kThreads, 0, stream>>>(x, rows, cols, bias);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t AddBias(float* x, int rows, int cols, const float* bias, cudaStream_t stream) {
  if (rows < 0 || cols <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  AddBiasKernel<float><<<GridFor(static_cast<size_t>(rows) * cols), kThreads, 0, stream>>>(x, rows, cols, bias);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t ArgMaxRows(const float* x, int rows, int n, int32_t* out, cudaStream_t stream) {
  if (rows < 0 || n <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  ArgMaxKernel<<<rows, kArgMaxThreads, 0, stream>>>(x, n, out);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t FillUniform(bf16* x, size_t n, uint64_t seed, float scale, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillUniformKernel<bf16><<<GridFor(n), kThreads, 0, stream>>>(x, n, seed, scale);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t FillUniform(float* x, size_t n, uint64_t seed, float scale, cudaStream_t stream, bool bf16_values) {
  if (n == 0) return cudaSuccess;
  if (bf16_values) {
    FillUniformKernel<float, true><<<GridFor(n), kThreads, 0, stream>>>(x, n, seed, scale);
  } else {
    FillUniformKernel<float><<<GridFor(n), kThreads, 0, stream>>>(x, n, seed, scale);
  }
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t Fill(float* x, size_t n, float value, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FillKernel<<<GridFor(n), kThreads, 0, stream>>>(x, n, value);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace seer::cuda
