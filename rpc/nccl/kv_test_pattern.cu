#include "rpc/nccl/kv_test_pattern.h"

namespace seer::nccl_test {
namespace {

__device__ __forceinline__ uint16_t Pattern(uint32_t salt, uint32_t layer, uint32_t which, uint32_t head,
                                            uint32_t token, uint32_t dim) {
  uint32_t h = salt * 0x9E3779B1u ^ layer * 0x85EBCA77u ^ which * 0xC2B2AE3Du ^ head * 0x27D4EB2Fu ^
               token * 0x165667B1u ^ dim * 0xD3A2646Cu;
  h ^= h >> 15;
  h *= 0x2C1B3C6Du;
  h ^= h >> 12;
  const uint16_t v = static_cast<uint16_t>(h);
  return v == 0xFFFF ? 0x1234 : v;  // never the poison
}

// One thread per element of one layer's K or V: grid (elements / 256, layers * 2).
__global__ void Fill(__nv_bfloat16* base, int layers, int heads, int capacity, int head_dim, int seq_len, uint32_t salt,
                     size_t layer_stride) {
  const int lw = blockIdx.y;
  const size_t per = static_cast<size_t>(heads) * capacity * head_dim;
  uint16_t* p = reinterpret_cast<uint16_t*>(base) + static_cast<size_t>(lw) * layer_stride;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < per;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint32_t d = i % head_dim, t = (i / head_dim) % capacity, h = i / (static_cast<size_t>(head_dim) * capacity);
    p[i] = static_cast<int>(t) < seq_len ? Pattern(salt, lw / 2, lw % 2, h, t, d) : 0xFFFF;
  }
}

__global__ void Check(const __nv_bfloat16* base, int heads, int capacity, int head_dim, int first, int seq_len,
                      uint32_t salt, size_t layer_stride, unsigned long long* bad) {
  const int lw = blockIdx.y;
  const size_t per = static_cast<size_t>(heads) * capacity * head_dim;
  const uint16_t* p = reinterpret_cast<const uint16_t*>(base) + static_cast<size_t>(lw) * layer_stride;
  unsigned long long mine = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < per;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint32_t d = i % head_dim, t = (i / head_dim) % capacity, h = i / (static_cast<size_t>(head_dim) * capacity);
    const bool sent = static_cast<int>(t) >= first && static_cast<int>(t) < seq_len;
    const uint16_t want = sent ? Pattern(salt, lw / 2, lw % 2, h, t, d) : 0xFFFF;
    mine += p[i] != want;
  }
  if (mine) atomicAdd(bad, mine);
}

}  // namespace

cudaError_t FillPattern(DeviceKvCache* cache, int seq_len, uint32_t salt) {
  const KvLayout& l = cache->layout();
  const size_t per = static_cast<size_t>(l.num_kv_heads) * cache->capacity() * l.head_dim;
  Fill<<<dim3(1024, 2 * l.num_layers), 256>>>(cache->k(0), l.num_layers, l.num_kv_heads, cache->capacity(), l.head_dim,
                                              seq_len, salt, per);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  return cudaDeviceSynchronize();
}

cudaError_t Poison(DeviceKvCache* cache) {
  const KvLayout& l = cache->layout();
  const size_t bytes = 2 * static_cast<size_t>(l.num_layers) * l.num_kv_heads * cache->capacity() * l.head_dim * 2;
  if (cudaError_t e = cudaMemset(cache->k(0), 0xFF, bytes); e != cudaSuccess) return e;
  return cudaDeviceSynchronize();
}

cudaError_t CountMismatches(const DeviceKvCache* cache, int seq_len, uint32_t salt, unsigned long long* mismatches,
                            int first_token) {
  const KvLayout& l = cache->layout();
  const size_t per = static_cast<size_t>(l.num_kv_heads) * cache->capacity() * l.head_dim;
  unsigned long long* d = nullptr;
  if (cudaError_t e = cudaMalloc(&d, sizeof(*d)); e != cudaSuccess) return e;
  cudaMemset(d, 0, sizeof(*d));
  Check<<<dim3(1024, 2 * l.num_layers), 256>>>(cache->k(0), l.num_kv_heads, cache->capacity(), l.head_dim, first_token,
                                               seq_len, salt, per, d);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpy(mismatches, d, sizeof(*d), cudaMemcpyDeviceToHost);
  cudaFree(d);
  return e;
}

}  // namespace seer::nccl_test
