#include "kernels/sampling/sampling.h"

#include <climits>
#include <cmath>
#include <cstdint>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/check.h"
#include "kernels/ops/ops.h"
#include "kernels/sampling/adjust.h"

namespace seer::cuda {
namespace {

constexpr int kKeyThreads = 256;
constexpr int kSampleThreads = 1024;
constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A 64-bit key whose descending order is Sampler's candidate order: larger
// logit first, lower id first among equal logits. The high half maps the
// float to an unsigned integer with the same order (-0 taken as +0, since the
// two compare equal); the low half is the complement of the id. NaN gets 0,
// below every real logit (-inf maps to 0x007fffff in the high half).
__device__ __forceinline__ uint64_t CandidateKey(float x, int id) {
  if (isnan(x)) return 0;
  if (x == 0.0f) x = 0.0f;
  const uint32_t bits = __float_as_uint(x);
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}

__device__ __forceinline__ int KeyId(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// Sampler's unnormalised weight: exp((l - top) / T) in double; with an
// infinite top, the logits equal to it share the mass.
__device__ __forceinline__ double Weight(float logit, double top, double temperature) {
  const double l = logit;
  if (isinf(top)) return l == top ? 1.0 : 0.0;
  return exp((l - top) / temperature);
}

__global__ void AdjustLogitsKernel(float* logits, int vocab, const RowLogitAdjustment* entries, int n, int first_row,
                                   float* saved) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const RowLogitAdjustment e = entries[i];
    const int row = e.row - first_row;
    if (e.id < 0 || e.id >= vocab || row < 0) continue;
    float* x = logits + static_cast<size_t>(row) * static_cast<size_t>(vocab) + e.id;
    const float raw = *x;
    if (saved != nullptr) saved[i] = raw;
    *x = AdjustLogit(raw, e.delta, e.repetition);
  }
}

// One thread an id, a block kRefuseIds consecutive ids of one row: the
// logit loads and stores are coalesced, and a warp's 32 ids share one or two
// words of bits. Only refused ids are read and written.
constexpr int kRefuseThreads = 256;
constexpr int kRefuseIds = 4 * kRefuseThreads;

__global__ void __launch_bounds__(kRefuseThreads)
    RefuseLogitsKernel(float* logits, int vocab, int first_row, const int32_t* places, RefusedRows refused) {
  const int row = static_cast<int>(blockIdx.y);
  const int slot = refused.slots[first_row + row];
  if (slot < 0) return;
  const uint64_t* bits = refused.bits + static_cast<size_t>(slot) * static_cast<size_t>(refused.words);
  float* x = logits + static_cast<size_t>(row) * static_cast<size_t>(vocab);
  const int place = places != nullptr ? places[row] : row;
  float* raw = refused.raw != nullptr && place >= 0
                   ? refused.raw + static_cast<size_t>(row) * static_cast<size_t>(vocab)
                   : nullptr;
  const int begin = static_cast<int>(blockIdx.x) * kRefuseIds;
#pragma unroll
  for (int k = 0; k < kRefuseIds / kRefuseThreads; ++k) {
    const int id = begin + k * kRefuseThreads + static_cast<int>(threadIdx.x);
    if (id >= vocab || ((bits[id / 64] >> (id % 64)) & 1) == 0) continue;
    const float v = x[id];
    if (raw != nullptr) raw[id] = v;
    x[id] = AdjustLogit(v, -HUGE_VALF, 1.0f);
  }
}

// --- logprobs ----------------------------------------------------------------

constexpr int kLogprobThreads = 256;
constexpr int kLogprobWarps = kLogprobThreads / 32;

// A value of every thread of the block combined with `op`, handed to every
// thread; `slots` holds one value a warp.
template <typename T, typename Op>
__device__ T BlockAll(T v, Op op, T* slots) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();  // the previous call's readers are done with `slots`
  if ((threadIdx.x & 31) == 0) slots[threadIdx.x >> 5] = v;
  __syncthreads();
  T all = slots[0];
  for (int w = 1; w < kLogprobWarps; ++w) all = op(all, slots[w]);
  return all;
}

struct MaxU64 {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a > b ? a : b; }
};
struct SumD {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct SumI {
  __device__ int operator()(int a, int b) const { return a + b; }
};

// Calls f(x[i], i) for every i in [0, vocab) this thread of the block owns.
// A row is read in 16-byte loads, kLogprobLoads of them issued before any is
// used, since one block reads a whole row (on an H100 this took a 128k row
// from 0.49 to 0.41 ms; the floor in LogprobRowsKernel took it to 0.10).
// The row may start anywhere 4-byte aligned: the
// floats before the first 16-byte boundary and the last vocab % 4 after the
// loads go one by one. Within the thread ids are not visited in order; the
// callers' results do not depend on the order.
constexpr int kLogprobLoads = 8;

template <typename F>
__device__ __forceinline__ void ForEachLogit(const float* x, int vocab, int tid, F&& f) {
  const int misalign = static_cast<int>((reinterpret_cast<uintptr_t>(x) & 15u) / 4u);
  const int head = min(vocab, misalign == 0 ? 0 : 4 - misalign);
  if (tid < head) f(x[tid], tid);
  const float4* body = reinterpret_cast<const float4*>(x + head);
  const int quads = (vocab - head) / 4;
  for (int q0 = tid; q0 < quads; q0 += kLogprobThreads * kLogprobLoads) {
    float4 v[kLogprobLoads];
#pragma unroll
    for (int u = 0; u < kLogprobLoads; ++u) {
      const int q = q0 + u * kLogprobThreads;
      if (q < quads) v[u] = __ldg(body + q);
    }
#pragma unroll
    for (int u = 0; u < kLogprobLoads; ++u) {
      const int q = q0 + u * kLogprobThreads;
      if (q >= quads) break;
      const int i = head + 4 * q;
      f(v[u].x, i);
      f(v[u].y, i + 1);
      f(v[u].z, i + 2);
      f(v[u].w, i + 3);
    }
  }
  const int done = head + 4 * quads;
  if (tid < vocab - done) f(x[done + tid], done + tid);
}

// LogprobsOf's value of one logit under the row's normaliser.
__device__ __forceinline__ float LogprobUnder(float v, const LogprobNorm& n) {
  if (isnan(v) || n.log_z == HUGE_VAL) return -HUGE_VALF;
  if (n.max == HUGE_VALF) return v == HUGE_VALF ? static_cast<float>(-n.log_z) : -HUGE_VALF;
  return static_cast<float>(static_cast<double>(v) - n.log_z);
}

// One block a row, two passes over it. Pass 1 finds each thread's largest
// candidate key (a key orders as LogprobsOf does: larger logit first, the
// lower id among equals; keys are unique) and the row's. The top_n-th
// largest of the threads' maxima is a floor: at least top_n keys reach it,
// so the row's top_n all do. Pass 2 sums exp(x - max) and keeps, per thread,
// the top_n largest keys at or above the floor in a descending column of
// shared memory; the block's top_n are then merged from the columns' heads,
// one a round (exactly one thread owns each winner). Without the floor
// nearly every element of a warp's first few hundred sat in some lane's
// column, and the warp waited on that lane's insertion each time (0.4 ms a
// 128k row on an H100).
__global__ void __launch_bounds__(kLogprobThreads)
    LogprobRowsKernel(const float* logits, int vocab, const int32_t* places, const int32_t* tokens, int top_n,
                      DeviceLogprob* out, LogprobNorm* norms) {
  __shared__ unsigned long long lists[kMaxDeviceTopLogprobs][kLogprobThreads];
  __shared__ unsigned long long maxima[kLogprobThreads];
  __shared__ unsigned long long top[kMaxDeviceTopLogprobs];
  __shared__ unsigned long long slots_u[kLogprobWarps];
  __shared__ unsigned long long floor_key;
  __shared__ double slots_d[kLogprobWarps];
  __shared__ int slots_i[kLogprobWarps];
  const int row = static_cast<int>(blockIdx.x);
  const int place = places != nullptr ? places[row] : row;
  if (place < 0) return;
  const int tid = static_cast<int>(threadIdx.x);
  const float* x = logits + static_cast<size_t>(row) * static_cast<size_t>(vocab);

  unsigned long long mine = 0;
  ForEachLogit(x, vocab, tid, [&](float value, int i) {
    const unsigned long long key = CandidateKey(value, i);
    if (key > mine) mine = key;
  });
  maxima[tid] = mine;
  if (tid == 0) floor_key = 1;  // any number (key 0 is NaN)
  const unsigned long long best = BlockAll(mine, MaxU64(), slots_u);  // its barriers publish maxima[]
  if (top_n > 0 && mine != 0) {
    int above = 0;
    for (int t = 0; t < kLogprobThreads; ++t) above += maxima[t] > mine ? 1 : 0;
    if (above == top_n - 1) floor_key = mine;
  }
  __syncthreads();
  const unsigned long long floor = floor_key;

  LogprobNorm norm;
  norm.max = best != 0 ? x[KeyId(best)] : -HUGE_VALF;
  const bool finite = isfinite(norm.max);
  const bool pos_inf = norm.max == HUGE_VALF;
  const float max = norm.max;
  double sum = 0.0;
  int inf = 0;
  int count = 0;
  unsigned long long tail = 0;  // the column's smallest key once it holds top_n
  ForEachLogit(x, vocab, tid, [&](float value, int i) {
    if (finite) {
      if (!isnan(value)) sum += static_cast<double>(expf(value - max));
    } else if (pos_inf) {
      inf += value == HUGE_VALF ? 1 : 0;
    }
    if (top_n == 0) return;
    const unsigned long long key = CandidateKey(value, i);
    if (key < floor || (count == top_n && key <= tail)) return;
    int j = count < top_n ? count++ : top_n - 1;
    while (j > 0 && lists[j - 1][tid] < key) {
      lists[j][tid] = lists[j - 1][tid];
      --j;
    }
    lists[j][tid] = key;
    tail = lists[count - 1][tid];
  });
  int head = 0;
  for (int j = 0; j < top_n; ++j) {
    const unsigned long long offer = head < count ? lists[head][tid] : 0ull;
    const unsigned long long win = BlockAll(offer, MaxU64(), slots_u);
    if (offer == win && win != 0) ++head;
    if (tid == 0) top[j] = win;
  }
  if (finite) {
    sum = BlockAll(sum, SumD(), slots_d);
    norm.log_z = static_cast<double>(norm.max) + log(sum);
  } else if (pos_inf) {
    inf = BlockAll(inf, SumI(), slots_i);
    norm.log_z = log(static_cast<double>(inf));
  } else {
    norm.log_z = HUGE_VAL;
  }
  __syncthreads();  // top[] written by thread 0
  DeviceLogprob* entries = out + static_cast<size_t>(place) * static_cast<size_t>(1 + top_n);
  for (int j = tid; j < top_n; j += kLogprobThreads) {
    const unsigned long long key = top[j];
    DeviceLogprob e{-1, -HUGE_VALF};
    if (key != 0) {
      e.id = KeyId(key);
      e.logprob = LogprobUnder(x[e.id], norm);
    }
    entries[1 + j] = e;
  }
  if (tid == 0) {
    if (norms != nullptr) norms[place] = norm;
    if (tokens != nullptr) {
      const int32_t t = tokens[row];
      entries[0] = {t, t >= 0 && t < vocab ? LogprobUnder(x[t], norm) : -HUGE_VALF};
    }
  }
}

// One block a row: the entry of (first_row + row, token), if any, holds the
// token's raw logit.
__global__ void __launch_bounds__(kLogprobThreads)
    LogprobChosenKernel(const float* logits, int vocab, const int32_t* places, const int32_t* tokens,
                        const RowLogitAdjustment* entries, const float* saved, int n_entries, int first_row,
                        const LogprobNorm* norms, int top_n, DeviceLogprob* out, RefusedRows refused) {
  __shared__ int found;
  const int row = static_cast<int>(blockIdx.x);
  const int place = places != nullptr ? places[row] : row;
  if (place < 0) return;
  const int32_t t = tokens[row];
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < n_entries; i += kLogprobThreads) {
    const RowLogitAdjustment e = entries[i];
    if (e.row - first_row == row && e.id == t) found = i;  // one (row, id) entry at most
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  float lp = -HUGE_VALF;
  if (t >= 0 && t < vocab) {
    float raw = logits[static_cast<size_t>(row) * static_cast<size_t>(vocab) + t];
    const int slot = refused.slots != nullptr ? refused.slots[first_row + row] : -1;
    if (found >= 0) {
      raw = saved[found];
    } else if (slot >= 0 && refused.raw != nullptr &&
               ((refused.bits[static_cast<size_t>(slot) * refused.words + t / 64] >> (t % 64)) & 1) != 0) {
      raw = refused.raw[static_cast<size_t>(row) * static_cast<size_t>(vocab) + t];
    }
    lp = LogprobUnder(raw, norms[place]);
  }
  out[static_cast<size_t>(place) * static_cast<size_t>(1 + top_n)] = {t, lp};
}

__global__ void CandidateKeysKernel(const float* logits, int vocab, uint64_t* keys) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vocab; i += gridDim.x * blockDim.x) {
    keys[i] = CandidateKey(logits[i], i);
  }
}

using BlockReduceD = cub::BlockReduce<double, kSampleThreads>;
using BlockScanD = cub::BlockScan<double, kSampleThreads>;
using BlockReduceI = cub::BlockReduce<int, kSampleThreads>;

struct SampleShared {
  union {
    BlockReduceD::TempStorage reduce_d;
    BlockScanD::TempStorage scan_d;
    BlockReduceI::TempStorage reduce_i;
  } cub;
  double d;
  int i;
};

struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Block-wide results handed to every thread.
__device__ double BlockSum(SampleShared& s, double v) {
  const double total = BlockReduceD(s.cub.reduce_d).Sum(v);
  if (threadIdx.x == 0) s.d = total;
  __syncthreads();
  const double out = s.d;
  __syncthreads();
  return out;
}

__device__ double BlockExclusiveSum(SampleShared& s, double v) {
  double prefix = 0.0;
  BlockScanD(s.cub.scan_d).ExclusiveSum(v, prefix);
  __syncthreads();
  return prefix;
}

__device__ int BlockMin(SampleShared& s, int v) {
  const int m = BlockReduceI(s.cub.reduce_i).Reduce(v, MinOp());
  if (threadIdx.x == 0) s.i = m;
  __syncthreads();
  const int out = s.i;
  __syncthreads();
  return out;
}

__device__ int BlockMax(SampleShared& s, int v) {
  const int m = BlockReduceI(s.cub.reduce_i).Reduce(v, MaxOp());
  if (threadIdx.x == 0) s.i = m;
  __syncthreads();
  const int out = s.i;
  __syncthreads();
  return out;
}

// One block of kSampleThreads. `sorted` holds the candidate keys in descending
// order. Each thread owns one contiguous segment of a range, so a block-wide
// exclusive scan of the segment sums gives every thread the mass before its
// segment, and the thread whose segment crosses a threshold walks it in order.
__global__ void __launch_bounds__(kSampleThreads)
    SampleKernel(const float* logits, int vocab, const uint64_t* sorted, double temperature, int top_k, double top_p,
                 double min_p, double u, int32_t* out) {
  __shared__ SampleShared s;
  const int tid = static_cast<int>(threadIdx.x);

  // NaN keys (0) sort last.
  int valid_local = 0;
  for (int j = tid; j < vocab; j += kSampleThreads) valid_local += sorted[j] != 0 ? 1 : 0;
  const int valid = static_cast<int>(BlockSum(s, valid_local));
  if (valid == 0) {
    if (tid == 0) *out = 0;  // ArgMax of all-NaN logits
    return;
  }
  int k = top_k > 0 && top_k < valid ? top_k : valid;
  const int top_id = KeyId(sorted[0]);
  const double top = logits[top_id];

  // Min-p: the weights fall along the sorted keys and the first is 1, so
  // the tokens kept are those before the first weight below min_p. A
  // thread's first such index in its stride; the smallest of them is it.
  if (min_p > 0.0) {
    int below = INT_MAX;
    for (int j = tid; j < k; j += kSampleThreads) {
      if (Weight(logits[KeyId(sorted[j])], top, temperature) < min_p) {
        below = j;
        break;
      }
    }
    below = BlockMin(s, below);
    if (below != INT_MAX) k = below;
  }

  // Mass of the top-k candidates.
  double local = 0.0;
  for (int j = tid; j < k; j += kSampleThreads) local += Weight(logits[KeyId(sorted[j])], top, temperature);
  double total = BlockSum(s, local);

  // Nucleus: the smallest prefix (descending) whose normalised mass reaches top_p.
  int kept = k;
  if (top_p < 1.0) {
    const int seg = (k + kSampleThreads - 1) / kSampleThreads;
    const int begin = min(k, tid * seg), end = min(k, begin + seg);
    double seg_mass = 0.0;
    for (int j = begin; j < end; ++j) seg_mass += Weight(logits[KeyId(sorted[j])], top, temperature) / total;
    double mass = BlockExclusiveSum(s, seg_mass);
    int first = INT_MAX;
    for (int j = begin; j < end; ++j) {
      mass += Weight(logits[KeyId(sorted[j])], top, temperature) / total;
      if (mass >= top_p) {
        first = j;
        break;
      }
    }
    first = BlockMin(s, first);
    if (first != INT_MAX) kept = first + 1;
    local = 0.0;
    for (int j = tid; j < kept; j += kSampleThreads) local += Weight(logits[KeyId(sorted[j])], top, temperature);
    total = BlockSum(s, local);
  }
  const uint64_t cut = sorted[kept - 1];

  // Inverse CDF in ascending id order over the kept tokens with positive mass.
  const int seg = (vocab + kSampleThreads - 1) / kSampleThreads;
  const int begin = min(vocab, tid * seg), end = min(vocab, begin + seg);
  double seg_mass = 0.0;
  for (int i = begin; i < end; ++i) {
    const float l = logits[i];
    if (CandidateKey(l, i) < cut || isnan(l)) continue;
    const double p = Weight(l, top, temperature) / total;
    if (p > 0.0) seg_mass += p;
  }
  double cum = BlockExclusiveSum(s, seg_mass);
  int pick = INT_MAX, last = -1;
  for (int i = begin; i < end; ++i) {
    const float l = logits[i];
    if (CandidateKey(l, i) < cut || isnan(l)) continue;
    const double p = Weight(l, top, temperature) / total;
    if (!(p > 0.0)) continue;
    last = i;
    cum += p;
    if (u < cum) {
      pick = i;
      break;
    }
  }
  pick = BlockMin(s, pick);
  if (pick == INT_MAX) {
    // Rounding left u above the total: the last kept token (no thread stopped
    // early, so `last` is the last kept id of each segment).
    pick = BlockMax(s, last);
    if (pick < 0) pick = top_id;
  }
  if (tid == 0) *out = pick;
}

size_t SortTempBytes(int vocab) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortKeysDescending(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                           static_cast<uint64_t*>(nullptr), vocab);
  return bytes;
}

}  // namespace

size_t SampleScratchBytes(int vocab) {
  if (vocab <= 0) return 0;
  const size_t keys = AlignUp(sizeof(uint64_t) * static_cast<size_t>(vocab));
  return 2 * keys + AlignUp(SortTempBytes(vocab));
}

cudaError_t AdjustLogits(float* logits, int vocab, const RowLogitAdjustment* entries, int n, int first_row,
                         cudaStream_t stream, float* saved) {
  if (n == 0) return cudaSuccess;
  if (n < 0 || vocab <= 0 || logits == nullptr || entries == nullptr) return cudaErrorInvalidValue;
  const int blocks = (n + kKeyThreads - 1) / kKeyThreads;
  const int grid = blocks < 1024 ? blocks : 1024;
  AdjustLogitsKernel<<<grid, kKeyThreads, 0, stream>>>(logits, vocab, entries, n, first_row, saved);
  return cudaGetLastError();
}

cudaError_t LogprobRows(const float* logits, int rows, int vocab, const int32_t* places, const int32_t* tokens,
                        int top_n, DeviceLogprob* out, LogprobNorm* norms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows < 0 || vocab <= 0 || top_n < 0 || top_n > kMaxDeviceTopLogprobs || logits == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  LogprobRowsKernel<<<rows, kLogprobThreads, 0, stream>>>(logits, vocab, places, tokens, top_n, out, norms);
  return cudaGetLastError();
}

cudaError_t LogprobChosen(const float* logits, int rows, int vocab, const int32_t* places, const int32_t* tokens,
                          const RowLogitAdjustment* entries, const float* saved, int n_entries, int first_row,
                          const LogprobNorm* norms, int top_n, DeviceLogprob* out, cudaStream_t stream,
                          const RefusedRows* refused) {
  if (rows == 0) return cudaSuccess;
  if (rows < 0 || vocab <= 0 || top_n < 0 || top_n > kMaxDeviceTopLogprobs || n_entries < 0 || logits == nullptr ||
      tokens == nullptr || norms == nullptr || out == nullptr ||
      (n_entries > 0 && (entries == nullptr || saved == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (refused != nullptr && refused->raw != nullptr &&
      (refused->slots == nullptr || refused->bits == nullptr || refused->words < (vocab + 63) / 64)) {
    return cudaErrorInvalidValue;
  }
  LogprobChosenKernel<<<rows, kLogprobThreads, 0, stream>>>(logits, vocab, places, tokens, entries, saved, n_entries,
                                                            first_row, norms, top_n, out,
                                                            refused != nullptr ? *refused : RefusedRows{});
  return cudaGetLastError();
}

cudaError_t RefuseLogits(float* logits, int rows, int vocab, int first_row, const int32_t* places,
                         const RefusedRows& refused, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (rows < 0 || rows > 65535 || vocab <= 0 || first_row < 0 || logits == nullptr || refused.slots == nullptr ||
      refused.bits == nullptr || refused.words < (vocab + 63) / 64) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid((vocab + kRefuseIds - 1) / kRefuseIds, rows);
  RefuseLogitsKernel<<<grid, kRefuseThreads, 0, stream>>>(logits, vocab, first_row, places, refused);
  return cudaGetLastError();
}

cudaError_t SampleToken(const float* logits, int vocab, double temperature, int top_k, double top_p, double min_p,
                        double u, void* scratch, size_t scratch_bytes, int32_t* out, cudaStream_t stream) {
  if (vocab <= 0 || logits == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (!(temperature > 0.0)) return ArgMaxRows(logits, 1, vocab, out, stream);
  if (top_k < 0 || !(min_p >= 0.0 && min_p <= 1.0) || scratch == nullptr || scratch_bytes < SampleScratchBytes(vocab)) {
    return cudaErrorInvalidValue;
  }
  const size_t keys_bytes = AlignUp(sizeof(uint64_t) * static_cast<size_t>(vocab));
  auto* base = static_cast<unsigned char*>(scratch);
  auto* keys = reinterpret_cast<uint64_t*>(base);
  auto* sorted = reinterpret_cast<uint64_t*>(base + keys_bytes);
  void* temp = base + 2 * keys_bytes;
  size_t temp_bytes = scratch_bytes - 2 * keys_bytes;

  const int blocks = (vocab + kKeyThreads - 1) / kKeyThreads;
  const int grid = blocks < 1024 ? blocks : 1024;
  CandidateKeysKernel<<<grid, kKeyThreads, 0, stream>>>(logits, vocab, keys);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  SEER_CUDA_RETURN_IF_ERROR(
      cub::DeviceRadixSort::SortKeysDescending(temp, temp_bytes, keys, sorted, vocab, 0, 64, stream));
  SampleKernel<<<1, kSampleThreads, 0, stream>>>(logits, vocab, sorted, temperature, top_k, top_p, min_p, u, out);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace seer::cuda
