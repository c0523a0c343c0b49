// The SeerAttention gate on the GPU; semantics and rounding follow the CPU
// gate (kernels/gate/gate_cpu.cc) step by step:
//
//   pool     Q average, K max/min/average per block, summed in double and
//            divided by the real token count (the last block may be partial);
//   project  k' = pooledK[h / group] . Wk[h], q' = pooledQ[h] . Wq[h] (or
//            pooledQ), float32 accumulation (the unfused gate at hidden
//            128: tensor cores, three tf32 products a float product);
//   rope     half-split RoPE at positions 0, block, 2 * block, ...; angle =
//            float(pos) * inv_freq in float32, cos/sin in double then float,
//            the rotation in float32 without contraction (as the CPU does);
//            without mask_linear_q the fused gate rotates q' in the pool
//            and the old gate's wgmma scores kernel in its q' stripe; at
//            hidden 128 both gates project and rotate k' in one kernel;
//   scores   q'.k'^T * hidden^-0.5 for the causal triangle, heads_per_pass
//            heads at a time into an nb x nb scratch per head (tensor
//            cores, three tf32 products a float product, where hidden % 4
//            == 0: wgmma on sm_90 where hidden % 16 == 0 and hidden <= 128,
//            one 128-row stripe of q' a CTA, q' and k' split into tf32 hi
//            and lo where they are made, else mma.sync; otherwise
//            float32 fmaf in channel order, as the fused gate);
//   select   one warp per row, read once into shared memory: softmax (double
//            sum), then dense / threshold / top-k by radix select (ties to
//            the lower block index), last_block_dense, and the non-empty-row
//            rule; the kept blocks go out as `lists` says (a top-k row
//            from the masks its last radix pass leaves);
//   lists    for nz_ratio and dense every row's length is known up front, so
//            the select writes the row's CSR offset and ascending indices
//            itself; threshold rows leave a bitmap and a count, an exclusive
//            scan of the counts gives the offsets, and one warp per row
//            expands its bitmap into ascending block indices.
//
// On sm_90 the old gate's kernels after the first are chained (programmatic
// dependent launch, LaunchChained): each is scheduled as the one before it
// drains, and waits for it before touching memory. Its RoPE table and split
// W^T come before the pool, which waits for them only once its loads are
// in flight.

#include "kernels/gate/gate.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(SEER_GATE_TRACE)
#include <algorithm>
#include <cstdio>
#include <vector>
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/arch/sm80_mma.cuh"
#include "kernels/arch/sm90_available.h"
#include "kernels/arch/sm90_ptx.cuh"
#include "kernels/arch/sm90_wgmma.cuh"
#include "kernels/arch/tensor_map.h"
#include "kernels/common/check.h"

namespace seer::cuda {
namespace {

#if defined(SEER_GATE_TRACE)
// Diagnostics only (built with -DSEER_GATE_TRACE): thread 0 of every CTA of
// the fused gate's kernels and of the old gate's pool, wgmma projection,
// fp16 or tf32 stripes and select records its SM, its first globaltimer
// reading, the reading after its wait for the kernel before it (0 where
// none), and its last reading.
struct GateTraceRec {
  uint32_t kernel, cta, sm, pad;
  uint64_t start, ready, end;
};
constexpr int kGateTraceCap = 1 << 17;
__device__ GateTraceRec g_gate_trace[kGateTraceCap];
__device__ unsigned g_gate_trace_n;
__device__ __forceinline__ uint64_t GlobalTimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
struct GateTraceScope {
  uint32_t kernel;
  uint64_t start, ready = 0;
  __device__ explicit GateTraceScope(uint32_t k) : kernel(k), start(threadIdx.x == 0 ? GlobalTimer() : 0) {}
  __device__ void Ready() {
    if (threadIdx.x == 0) ready = GlobalTimer();
  }
  __device__ ~GateTraceScope() {
    if (threadIdx.x != 0) return;
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const unsigned i = atomicAdd(&g_gate_trace_n, 1u);
    const uint32_t cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    if (i < kGateTraceCap) g_gate_trace[i] = {kernel, cta, sm, 0, start, ready, GlobalTimer()};
  }
};
#define SEER_GATE_TRACE_CTA(id) GateTraceScope seer_gate_trace_(id)
#define SEER_GATE_TRACE_READY() seer_gate_trace_.Ready()
#else
#define SEER_GATE_TRACE_CTA(id)
#define SEER_GATE_TRACE_READY()
#endif

constexpr int kMaxHeadDim = 256;
constexpr int kMaxHidden = 512;
constexpr int kMaxBlockSize = 1024;
constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Where each scratch buffer lives inside the caller's workspace.
struct GateLayout {
  int nb = 0;
  int half = 0;
  int heads_per_pass = 0;
  int words = 0;  // 32-bit bitmap words per row
  size_t rope = 0, pooled_q = 0, pooled_k = 0, pooled_k_lo = 0, wt = 0, qp = 0, kp = 0, qp_lo = 0, kp_lo = 0,
         k_shift = 0, scores = 0, bitmap = 0, counts = 0, total = 0;
};

// The heads of mask_linear_k's weights: Hq, or k_weight_heads where set.
__host__ __device__ inline int KWeightHeads(const GateParams& p) {
  return p.k_weight_heads > 0 ? p.k_weight_heads : p.num_heads;
}

// Entries of a head's k' scale exponents: nb rounded up to whole 128-row
// tiles, so that each tile's 512 bytes are 16-byte aligned.
__host__ __device__ inline int64_t StripeShiftPitch(int nb) { return (static_cast<int64_t>(nb) + 127) / 128 * 128; }

// The fused gate keeps no nb x nb scores (with_scores = false).
GateLayout MakeLayout(const GateParams& p, bool with_scores) {
  GateLayout g;
  g.nb = GateNumBlocks(p);
  g.half = p.hidden / 2;
  g.heads_per_pass = p.heads_per_pass > 0 && p.heads_per_pass < p.num_heads ? p.heads_per_pass : p.num_heads;
  g.words = (g.nb + 31) / 32;
  const size_t nb = g.nb;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += AlignUp(bytes);
    return here;
  };
  g.rope = take(sizeof(float) * 2 * nb * g.half);
  g.pooled_q = take(sizeof(float) * nb * p.num_heads * p.head_dim);
  g.pooled_k = take(sizeof(float) * nb * p.num_kv_heads * 3 * p.head_dim);
  // The unfused gate's wgmma projection takes the pooled K's average split
  // into tf32 hi (in pooled_k) and lo parts, and W transposed and split (wt).
  const size_t w_heads = KWeightHeads(p);
  g.pooled_k_lo = take(with_scores ? sizeof(float) * nb * p.num_kv_heads * p.head_dim : 0);
  g.wt = take(with_scores ? sizeof(float) * 2 * w_heads * p.hidden * 3 * p.head_dim : 0);
  g.qp = take(sizeof(float) * nb * p.num_heads * p.hidden);
  g.kp = take(sizeof(float) * nb * p.num_heads * p.hidden);
  // The unfused gate's wgmma scores take q' and k' split into hi (in qp,
  // kp) and lo parts: tf32, or fp16 for the fp16 stripes (k' only; their q'
  // is made in the stripe).
  g.qp_lo = take(with_scores ? sizeof(float) * nb * p.num_heads * p.hidden : 0);
  g.kp_lo = take(with_scores ? sizeof(float) * nb * p.num_heads * p.hidden : 0);
  // The fp16 stripes' k' scale exponents (F16Split), one a row, each head's
  // padded to whole 128-row tiles.
  g.k_shift = take(with_scores ? sizeof(int32_t) * p.num_heads * StripeShiftPitch(g.nb) : 0);
  g.scores = take(with_scores ? sizeof(float) * nb * nb * g.heads_per_pass : 0);
  g.bitmap = take(sizeof(uint32_t) * nb * p.num_heads * g.words);
  g.counts = take(sizeof(int32_t) * nb * p.num_heads);
  g.total = at;
  return g;
}

// Programmatic dependent launch (sm_90): the gate's kernels after the first
// are launched so that each can be scheduled while the one before it drains
// (LaunchChained). Each such kernel first lets its own dependent launch and
// then waits, before it reads or writes anything, until the kernel before
// it has finished and its writes are visible, so the order of effects is
// that of plain launches. Both are no-ops in a kernel launched plainly and
// below sm_90.
__device__ __forceinline__ void ChainedKernelLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void ChainedKernelWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void ChainedKernelStart() {
  ChainedKernelLaunchDependents();
  ChainedKernelWait();
}

// kernel<<<grid, block, smem, stream>>>(args...), where `chained` as a
// programmatic dependent launch (the kernel must start with
// ChainedKernelStart).
template <typename... Params, typename... Args>
cudaError_t LaunchChained(bool chained, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = chained ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// --- pool -----------------------------------------------------------------
// Every pool sums a channel down the block's tokens in order, in double, as
// the CPU gate does; Q needs only the average (no max/min).
//
// PoolKernel (any GPU): a thread pools 8 channels, one 16-byte load a token,
// kPoolBatch loads in flight before it sums them. (Splitting a block's
// tokens between two or four threads measured no faster: docs/KERNELS.md.
// Batching 4 -> 8 loads took it from 39 to 33 us at 8k tokens under ncu,
// H200; 16 and 32 cost occupancy and were slower.)
constexpr int kPoolThreads = 128;
constexpr int kPoolBatch = 8;

// Writes x to *dst, or, with lo not null, x's tf32 hi part to *dst and its
// lo part to *lo (ptx::SplitTf32; the wgmma kernels read both).
__device__ __forceinline__ void StoreMaybeSplit(float x, float* dst, float* lo) {
  if (lo == nullptr) {
    *dst = x;
    return;
  }
  uint32_t h, l;
  ptx::SplitTf32(x, &h, &l);
  *dst = __uint_as_float(h);
  *lo = __uint_as_float(l);
}

// --- fp16 operands for the wgmma scores (F16Split) ----------------------------
// fp16 has tf32's 11 significant bits and twice its wgmma rate, but not its
// range, so a row of q' or k' is scaled by a power of two before it splits
// into fp16 hi and lo parts: x 2^shift = hi + lo + (a rest below 2^-22 of
// x), as tf32's hi + lo. The shift puts the row's largest |value| before
// RoPE (m) in [2^14, 2^15): rotated values stay below 2^15.5 < 65504, and a
// value's lo part stays a normal fp16 down to 2^-17 of m. Power-of-two
// scales are exact, so acc 2^-(shift_q + shift_k) is the float dot product
// of hi and lo parts as tf32's, and the scores are within float rounding
// like the tf32 kernel's. The shift is clamped to [-kF16MaxShift,
// kF16MaxShift], so that the scores' unscale factor 2^-(shift_q + shift_k)
// is always a normal float: rows with m in [2^-46, 2^75) get the scale
// above; below, their small values' lo parts lose bits (fp16 subnormals);
// from 2^75 on, their largest values may overflow to inf. Zero, subnormal
// and inf maxima take shift 0; NaN values do not enter the maximum (fmaxf)
// and stay NaN.
constexpr int kF16MaxShift = 60;

__device__ __forceinline__ int F16Shift(float m) {
  const int e = static_cast<int>((__float_as_uint(m) >> 23) & 0xffu);  // m >= 0: its biased exponent
  if (e == 0 || e == 255) return 0;
  return max(-kF16MaxShift, min(kF16MaxShift, 14 - (e - 127)));
}

// 2^e for e in [-126, 127].
__device__ __forceinline__ float Pow2(int e) { return __int_as_float((127 + e) << 23); }

// x (scaled already) as fp16 hi + lo, packed two channels a word (channel
// 2i in the low half).
__device__ __forceinline__ void SplitF16Pair(float x0, float x1, uint32_t* hi, uint32_t* lo) {
  const __half2 h = __floats2half2_rn(x0, x1);
  const float2 hf = __half22float2(h);
  const __half2 l = __floats2half2_rn(x0 - hf.x, x1 - hf.y);  // both differences exact in float
  *hi = *reinterpret_cast<const uint32_t*>(&h);
  *lo = *reinterpret_cast<const uint32_t*>(&l);
}

// kV consecutive floats, moved with one 16-byte access where kV == 4 (the
// address then 16-byte aligned).
template <int kV>
struct Floats {
  float v[kV];
};

template <int kV>
__device__ __forceinline__ Floats<kV> LoadFloats(const float* src) {
  Floats<kV> x;
  if constexpr (kV == 4) {
    const float4 t = *reinterpret_cast<const float4*>(src);
    x.v[0] = t.x, x.v[1] = t.y, x.v[2] = t.z, x.v[3] = t.w;
  } else {
#pragma unroll
    for (int i = 0; i < kV; ++i) x.v[i] = src[i];
  }
  return x;
}

template <int kV>
__device__ __forceinline__ void StoreFloats(const Floats<kV>& x, float* dst) {
  if constexpr (kV == 4) {
    *reinterpret_cast<float4*>(dst) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
  } else {
#pragma unroll
    for (int i = 0; i < kV; ++i) dst[i] = x.v[i];
  }
}

// StoreMaybeSplit of kV floats.
template <int kV>
__device__ __forceinline__ void StoreFloatsMaybeSplit(const Floats<kV>& x, float* dst, float* lo) {
  if (lo == nullptr) {
    StoreFloats(x, dst);
    return;
  }
  Floats<kV> h, l;
#pragma unroll
  for (int i = 0; i < kV; ++i) {
    uint32_t hb, lb;
    ptx::SplitTf32(x.v[i], &hb, &lb);
    h.v[i] = __uint_as_float(hb);
    l.v[i] = __uint_as_float(lb);
  }
  StoreFloats(h, dst);
  StoreFloats(l, lo);
}

// The pooled K of kN channels from channel d of head row `hr` (b * Hkv +
// h): max, min and average at d, D + d and 2D + d of the row's 3D values in
// pooled_k. Where pooled_k_lo is not null ([nb * Hkv][D]) the average is
// split into its tf32 hi part (in pooled_k) and lo part (there) for the
// wgmma projection; max and min are K's bf16/fp16 values, tf32 already.
template <int kN>
__device__ __forceinline__ void StorePooledK(int64_t hr, int d, int head_dim, const float* mx, const float* mn,
                                             const double* sum, double count, float* pooled_k, float* pooled_k_lo) {
  float* out = pooled_k + hr * 3 * head_dim + d;
  float* lo = pooled_k_lo != nullptr ? pooled_k_lo + hr * head_dim + d : nullptr;
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    out[i] = mx[i];
    out[head_dim + i] = mn[i];
    StoreMaybeSplit(static_cast<float>(sum[i] / count), out + 2 * head_dim + i, lo != nullptr ? lo + i : nullptr);
  }
}
// BulkPoolKernel (sm_90): the copy engine brings a block's token rows of
// kBulkPoolChannels channels into shared memory, in kBulkPoolGroups groups
// with a barrier each, and a thread sums 2 channels of each group as it
// lands. In the gate (H200, CUDA events) it took 0.081 -> 0.077-0.079 ms at
// 8k tokens, 0.321 -> 0.305 at 32k and 1.368 -> 1.337 at 128k against
// PoolKernel; alone under ncu (caches flushed) it is no faster. The sums,
// not the copies, bound it: every value is converted to double and added in
// token order, and the loop's instructions set its rate (summing two
// tokens in float first, half the conversions at 12% more instructions,
// measured 13% slower at 128k tokens), so it gains from warps, not from
// bytes in flight. 256 threads of 2 channels measured 348 -> 332 us at
// 128k tokens under ncu and 0.073-0.076 -> 0.069-0.071 ms for the fused
// gate at 8k, against 128 threads of 4 (2026-11-30, 2026-12-01, H200;
// docs/KERNELS.md). A whole block's groups unrolled, bf16 widened with a
// shift and a mask, and K's extremes on packed pairs (PoolRows) cut its
// warp instructions at 128k from 196.7M to 136.0M: 414 -> 368 us at ncu's
// base clocks, 333.8 -> 328.2 us at the GPU's own (2026-12-01, H200).
constexpr int kBulkPoolChannels = 512;
constexpr int kBulkPoolPerThread = 2;  // channels a thread sums
constexpr int kBulkPoolThreads = kBulkPoolChannels / kBulkPoolPerThread;
[[maybe_unused]] constexpr int kBulkPoolGroups = 4;
[[maybe_unused]] constexpr int kBulkPoolFullGroup = 16;  // tokens a group of a 64-token block
constexpr int kBulkPoolMaxBlock = 128;  // tokens a block: 128 KB of shared memory at 2 bytes

// cos and sin of block b's RoPE angle for frequency f: float(b * block) *
// inv_freq[f] in float32, cos and sin in double, then rounded to float (as
// the CPU gate computes them).
__device__ __forceinline__ void RopeAngle(const float* inv_freq, int block_size, int b, int f, float* c, float* s) {
  const float angle = __fmul_rn(static_cast<float>(static_cast<int64_t>(b) * block_size), inv_freq[f]);
  *c = static_cast<float>(cos(static_cast<double>(angle)));
  *s = static_cast<float>(sin(static_cast<double>(angle)));
}

// Block b's row of the RoPE table: cos and sin [nb, hidden / 2] of
// float(b * block) * inv_freq[i], written by the pool kernels (the CTAs of
// a block's first channel chunk) while their rows are on their way.
__device__ __forceinline__ void RopeTableRow(const float* inv_freq, int nb, int half, int block_size, int b,
                                             float* table) {
  for (int f = threadIdx.x; f < half; f += blockDim.x) {
    RopeAngle(inv_freq, block_size, b, f, &table[static_cast<int64_t>(b) * half + f],
              &table[static_cast<int64_t>(nb) * half + static_cast<int64_t>(b) * half + f]);
  }
}

// The block RoPE of one rotary pair, rounded as the CPU gate rounds it: four
// products, then a difference and a sum, each rounded to float (no fused
// multiply-add; the model's RoPE, kernels/ops/rope.cuh's RotatePair, fuses
// one).
__device__ __forceinline__ void BlockRopePair(float x1, float x2, float c, float s, float* y1, float* y2) {
  *y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
  *y2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

// Tokens [t0, t1) (t1 > t0) of kN channels (8: one 16-byte load a token, 4:
// one 8-byte load) at x into sum (and max/min), in token order. A thread
// issues kBatch loads before it sums any.
template <typename T, bool kMinMax, int kBatch, int kN = 8>
__device__ __forceinline__ void PoolTokens(const T* x, int64_t stride, int t0, int t1, double (&sum)[kN],
                                           float (&mx)[kN], float (&mn)[kN]) {
  static_assert(kN == 8 || kN == 4, "one 16- or 8-byte load a token");
  using Raw = std::conditional_t<kN == 8, uint4, uint2>;
  if (kMinMax) {
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      mx[i] = -INFINITY;
      mn[i] = INFINITY;
    }
  }
  for (int t = t0; t < t1; t += kBatch) {
    Raw raw[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (t + j < t1) raw[j] = __ldg(reinterpret_cast<const Raw*>(x + (t + j) * stride));
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (t + j >= t1) break;
      const T* e = reinterpret_cast<const T*>(&raw[j]);
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const float v = static_cast<float>(e[i]);
        sum[i] += v;
        if (kMinMax) {
          if (v > mx[i] || isnan(v)) mx[i] = v;  // NaN propagates, as in torch
          if (v < mn[i] || isnan(v)) mn[i] = v;
        }
      }
    }
  }
}

// grid nb * ctas, CTA (b, y) = (x / ctas, x % ctas): y < q_ctas pools Q
// ([nb, Hq, D], average), the rest K ([nb, Hkv, 3D]: max, min, average),
// 1024 channels a CTA. rope_table (or null): the CTAs of y = 0 write the
// block's RoPE table row.
// q_rotated (or null; only when 256 % D == 0, D % 16 == 0 (a thread's 8
// channels lie in one half of the head) and hidden == D): q' =
// RoPE(pooled Q) straight into [Hq, nb, D] (the rotary partner of a channel
// is in the same warp), the block's angles computed once a CTA.
template <typename T>
__global__ void __launch_bounds__(kPoolThreads)
    PoolKernel(GateParams p, int64_t q_stride, int64_t k_stride, int q_ctas, int ctas, float* pooled_q,
               float* pooled_k, float* pooled_k_lo, float* rope_table, float* q_rotated) {
  ChainedKernelStart();
  __shared__ float angle_cos[kMaxHeadDim / 2], angle_sin[kMaxHeadDim / 2];
  const int b = static_cast<int>(blockIdx.x / ctas);
  const int y = static_cast<int>(blockIdx.x % ctas);
  const int nb = (p.seq_len + p.block_size - 1) / p.block_size;
  if (rope_table != nullptr && y == 0) {
    RopeTableRow(p.rope_inv_freq, nb, p.hidden / 2, p.block_size, b, rope_table);
  }
  const bool is_k = y >= q_ctas;
  const int heads = is_k ? p.num_kv_heads : p.num_heads;
  const int channels = heads * p.head_dim;
  const int c0 = ((is_k ? y - q_ctas : y) * kPoolThreads + threadIdx.x) * 8;
  const int t0 = b * p.block_size;
  const int t1 = min(p.seq_len, t0 + p.block_size);
  const bool active = c0 < channels;
  const double count = t1 - t0;
  double sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float mx[8], mn[8];
  if (is_k) {
    if (!active) return;
    PoolTokens<T, true, kPoolBatch>(static_cast<const T*>(p.k) + c0, k_stride, t0, t1, sum, mx, mn);
    const int64_t hr = static_cast<int64_t>(b) * heads + c0 / p.head_dim;
    StorePooledK<8>(hr, c0 % p.head_dim, p.head_dim, mx, mn, sum, count, pooled_k, pooled_k_lo);
    return;
  }
  if (active) PoolTokens<T, false, kPoolBatch>(static_cast<const T*>(p.q) + c0, q_stride, t0, t1, sum, mx, mn);
  float mean[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    mean[i] = static_cast<float>(sum[i] / count);
    if (active) pooled_q[static_cast<int64_t>(b) * channels + c0 + i] = mean[i];
  }
  if (q_rotated == nullptr) return;
  const int half = p.head_dim / 2;
  for (int f = threadIdx.x; f < half; f += kPoolThreads) {
    RopeAngle(p.rope_inv_freq, p.block_size, b, f, &angle_cos[f], &angle_sin[f]);
  }
  __syncthreads();
  // Channels d and d + D/2 of a head are D/16 threads apart, in one warp; a
  // head is active whole.
  const int h = c0 / p.head_dim;
  const int d0 = c0 % p.head_dim;
  const bool first = d0 < half;
  const int lane = threadIdx.x % 32;
  const int partner = first ? lane + half / 8 : lane - half / 8;
  float* out = q_rotated + (static_cast<int64_t>(h) * nb + b) * p.head_dim;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float other = __shfl_sync(0xffffffffu, mean[i], partner);
    const int f = (first ? d0 : d0 - half) + i;
    float y1, y2;
    if (first) {
      BlockRopePair(mean[i], other, angle_cos[f], angle_sin[f], &y1, &y2);
      if (active) out[f] = y1;
    } else {
      BlockRopePair(other, mean[i], angle_cos[f], angle_sin[f], &y1, &y2);
      if (active) out[f + half] = y2;
    }
  }
}

// BulkPoolKernel's sums and extremes of a thread's two channels, one 4-byte
// word of each token row in shared memory (rows kBulkPoolChannels elements
// apart).
//
// A bf16's float is its bits in the upper half of a word, so the two of a
// word take a shift and a mask (the generic conversion spends a byte
// permute and a multiply on the upper one). Each value is added to its
// channel's double in token order, as the CPU gate adds it.
//
// Max and min are taken on the packed pair (max.NaN / min.NaN, one
// instruction for both channels): any NaN makes the result a NaN, as the
// CPU gate's rule (a value replaces the extreme if it is greater, or NaN)
// does. The two rules differ only on ties between zeros of opposite sign,
// which the CPU rule settles by the first one in token order; ExactMaxMin
// redoes a channel whose extreme is a zero.
template <typename T>
__device__ __forceinline__ uint32_t PackedInfinity(bool negative) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return negative ? 0xff80ff80u : 0x7f807f80u;
  return negative ? 0xfc00fc00u : 0x7c007c00u;
}

template <typename T>
__device__ __forceinline__ void PairToFloats(uint32_t word, float* lo, float* hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    *lo = __uint_as_float(word << 16);
    *hi = __uint_as_float(word & 0xffff0000u);
  } else {
    const T* e = reinterpret_cast<const T*>(&word);
    *lo = static_cast<float>(e[0]);
    *hi = static_cast<float>(e[1]);
  }
}

template <typename T, bool kMax>
__device__ __forceinline__ uint32_t PairExtreme(uint32_t a, uint32_t b) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if constexpr (kMax) {
      asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    } else {
      asm("min.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    }
  } else {
    if constexpr (kMax) {
      asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    } else {
      asm("min.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    }
  }
  return r;
}

// Rows [0, n) of `column`; kCount > 0: n == kCount, fully unrolled.
template <typename T, bool kMinMax, int kCount>
__device__ __forceinline__ void PoolRows(const T* column, int n, double (&sum)[2], uint32_t* mx2, uint32_t* mn2) {
  auto row = [&](int t) {
    const uint32_t word = *reinterpret_cast<const uint32_t*>(column + t * kBulkPoolChannels);
    float lo, hi;
    PairToFloats<T>(word, &lo, &hi);
    sum[0] += static_cast<double>(lo);
    sum[1] += static_cast<double>(hi);
    if constexpr (kMinMax) {
      *mx2 = PairExtreme<T, true>(*mx2, word);
      *mn2 = PairExtreme<T, false>(*mn2, word);
    }
  };
  if constexpr (kCount > 0) {
#pragma unroll
    for (int t = 0; t < kCount; ++t) row(t);
  } else {
#pragma unroll 4
    for (int t = 0; t < n; ++t) row(t);
  }
}

// The two channels' max and min as floats, by the CPU gate's rule: where
// the packed extreme is a zero, the channel is scanned again in token order.
template <typename T>
__device__ __forceinline__ void ExactMaxMin(const T* column, int n, uint32_t mx2, uint32_t mn2, float* mx, float* mn) {
  PairToFloats<T>(mx2, &mx[0], &mx[1]);
  PairToFloats<T>(mn2, &mn[0], &mn[1]);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (mx[i] != 0.0f && mn[i] != 0.0f) continue;
    mx[i] = -INFINITY;
    mn[i] = INFINITY;
    for (int t = 0; t < n; ++t) {
      const float v = static_cast<float>(column[t * kBulkPoolChannels + i]);
      if (v > mx[i] || isnan(v)) mx[i] = v;
      if (v < mn[i] || isnan(v)) mn[i] = v;
    }
  }
}

// grid and outputs as PoolKernel's, kBulkPoolChannels channels a CTA;
// q_rotated needs whole heads in a CTA (kBulkPoolChannels % D == 0). Shared
// memory: block_size rows of kBulkPoolChannels elements. Rows and the
// channel offsets are 16-byte aligned (the launch checks q, k and strides).
// Chained, every CTA waits for the kernel before it once its loads are in
// flight; with last_waits only the grid's last CTA does, after its sums
// (the pool then runs beside that kernel, which it must not depend on, and
// still finishes after it). kPart: y0 and last_waits as given; else 0 and
// false, the whole pool (the old gate's code: with them at run time its
// pool measured 2-3% slower at 128k tokens, H200).
template <typename T, bool kPart>
__global__ void __launch_bounds__(kBulkPoolThreads)
    BulkPoolKernel(GateParams p, int64_t q_stride, int64_t k_stride, int q_ctas, int y0_arg, int ctas,
                   bool last_waits_arg, float* pooled_q, float* pooled_k, float* pooled_k_lo, float* rope_table,
                   float* q_rotated) {
#if defined(SEER_SM90A_ENABLED)
  const int y0 = kPart ? y0_arg : 0;
  const bool last_waits = kPart && last_waits_arg;
  SEER_GATE_TRACE_CTA(kPart ? (y0_arg > 0 ? 1 : 3) : 0);
  ChainedKernelLaunchDependents();
  extern __shared__ __align__(128) unsigned char pool_smem[];
  __shared__ __align__(8) uint64_t bars[kBulkPoolGroups];
  __shared__ float angle_cos[kMaxHeadDim / 2], angle_sin[kMaxHeadDim / 2];
  __shared__ float means[kBulkPoolChannels];
  const T* tile = reinterpret_cast<const T*>(pool_smem);
  const int b = static_cast<int>(blockIdx.x / ctas);
  const int y = y0 + static_cast<int>(blockIdx.x % ctas);
  const int nb = (p.seq_len + p.block_size - 1) / p.block_size;
  const bool is_k = y >= q_ctas;
  const int heads = is_k ? p.num_kv_heads : p.num_heads;
  const int channels = heads * p.head_dim;
  const int cbase = (is_k ? y - q_ctas : y) * kBulkPoolChannels;
  const int width = min(kBulkPoolChannels, channels - cbase);  // a multiple of 8
  const int t0 = b * p.block_size;
  const int tokens = min(p.seq_len, t0 + p.block_size) - t0;
  const int per_group = (tokens + kBulkPoolGroups - 1) / kBulkPoolGroups;
  const int64_t stride = is_k ? k_stride : q_stride;
  if (threadIdx.x == 0) {
    for (int g = 0; g < kBulkPoolGroups; ++g) sm90::MbarInit(sm90::SmemAddr(&bars[g]), 1);
    sm90::FenceBarrierInit();
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const uint32_t row_bytes = static_cast<uint32_t>(width * sizeof(T));
    if (threadIdx.x == 0) {
      for (int g = 0; g < kBulkPoolGroups; ++g) {
        const int n = min(tokens, (g + 1) * per_group) - min(tokens, g * per_group);
        sm90::MbarArriveExpectTx(sm90::SmemAddr(&bars[g]), static_cast<uint32_t>(n) * row_bytes);
      }
    }
    __syncwarp();
    const T* src = static_cast<const T*>(is_k ? p.k : p.q) + t0 * stride + cbase;
    for (int t = threadIdx.x; t < tokens; t += 32) {
      sm90::BulkLoad(sm90::SmemAddr(tile + t * kBulkPoolChannels), src + t * stride, row_bytes,
                     sm90::SmemAddr(&bars[t / per_group]));
    }
    // Chained after the RoPE table and the split W^T, which this kernel
    // neither reads nor writes: it waits for them only here, its loads in
    // flight, and finishes after them (what the kernels chained after it
    // rely on).
    if (!last_waits) ChainedKernelWait();
    SEER_GATE_TRACE_READY();
  }
  // While the rows are on their way.
  if (rope_table != nullptr && y == y0) {
    RopeTableRow(p.rope_inv_freq, nb, p.hidden / 2, p.block_size, b, rope_table);
  }
  const int half = p.head_dim / 2;
  if (q_rotated != nullptr && !is_k) {
    for (int f = threadIdx.x; f < half; f += kBulkPoolThreads) {
      RopeAngle(p.rope_inv_freq, p.block_size, b, f, &angle_cos[f], &angle_sin[f]);
    }
  }

  constexpr int kN = kBulkPoolPerThread;
  static_assert(kN == 2, "a thread's two channels are one 4-byte word of a row");
  const int c = threadIdx.x * kN;  // this thread's channels, from cbase
  const bool active = c < width;
  const T* column = tile + c;
  double sum[kN] = {0, 0};
  uint32_t mx2 = PackedInfinity<T>(true), mn2 = PackedInfinity<T>(false);
  if (tokens == kBulkPoolGroups * kBulkPoolFullGroup) {
    // A whole 64-token block: every group's bounds known here.
#pragma unroll 1
    for (int g = 0; g < kBulkPoolGroups; ++g) {
      sm90::MbarWait(sm90::SmemAddr(&bars[g]), 0);
      if (!active) continue;
      const T* rows = column + g * kBulkPoolFullGroup * kBulkPoolChannels;
      if (is_k) {
        PoolRows<T, true, kBulkPoolFullGroup>(rows, kBulkPoolFullGroup, sum, &mx2, &mn2);
      } else {
        PoolRows<T, false, kBulkPoolFullGroup>(rows, kBulkPoolFullGroup, sum, &mx2, &mn2);
      }
    }
  } else {
    for (int g = 0; g < kBulkPoolGroups; ++g) {
      const int ta = min(tokens, g * per_group);
      const int tb = min(tokens, ta + per_group);
      if (ta == tb) break;
      sm90::MbarWait(sm90::SmemAddr(&bars[g]), 0);
      if (!active) continue;
      if (is_k) {
        PoolRows<T, true, 0>(column + ta * kBulkPoolChannels, tb - ta, sum, &mx2, &mn2);
      } else {
        PoolRows<T, false, 0>(column + ta * kBulkPoolChannels, tb - ta, sum, &mx2, &mn2);
      }
    }
  }
  float mx[kN], mn[kN];
  if (is_k && active) ExactMaxMin<T>(column, tokens, mx2, mn2, mx, mn);
  if (last_waits && blockIdx.x == gridDim.x - 1) ChainedKernelWait();
  const double count = tokens;
  const int cc = cbase + c;  // kN channels of one head (D % 8 == 0)
  if (is_k) {
    if (!active) return;
    const int64_t hr = static_cast<int64_t>(b) * heads + cc / p.head_dim;
    StorePooledK<kN>(hr, cc % p.head_dim, p.head_dim, mx, mn, sum, count, pooled_k, pooled_k_lo);
    return;
  }
  float mean[kN];
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    mean[i] = static_cast<float>(sum[i] / count);
    if (active) pooled_q[static_cast<int64_t>(b) * channels + cc + i] = mean[i];
  }
  if (q_rotated == nullptr) return;
  // The partner of channel d is d +- D/2 of the same head, in this CTA.
  if (active) {
#pragma unroll
    for (int i = 0; i < kN; ++i) means[c + i] = mean[i];
  }
  __syncthreads();
  if (!active) return;
  const int h = cc / p.head_dim;
  const int d0 = cc % p.head_dim;
  float* out = q_rotated + (static_cast<int64_t>(h) * nb + b) * p.head_dim;
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    const int d = d0 + i;
    float y1, y2;
    if (d < half) {
      BlockRopePair(mean[i], means[c + i + half], angle_cos[d], angle_sin[d], &y1, &y2);
      out[d] = y1;
    } else {
      BlockRopePair(means[c + i - half], mean[i], angle_cos[d - half], angle_sin[d - half], &y1, &y2);
      out[d] = y2;
    }
  }
#endif
}

// --- 128 x 128 SGEMM tiles (the old gate's projection and scores) ----------
// 256 threads. Warp w owns tile rows 32 (w / 2).. and columns 64 (w % 2)..;
// its lane l rows 8 (l / 8).. and columns 4 (l % 8).., 32 + 4 (l % 8)..
// (8 x 8 outputs, float4 shared-memory reads without bank conflicts). Each
// step takes kSgemmK channels from two slabs [channel][row or column], double
// buffered; the next step's global loads are in flight (into registers, or
// cp.async) while this step computes: one barrier a step.
constexpr int kSgemmTile = 128;
constexpr int kSgemmK = 16;
constexpr int kSgemmThreads = 256;
constexpr int kSgemmPitch = kSgemmTile + 4;  // floats; keeps rows 16-byte aligned
constexpr int kSgemmLoads = kSgemmTile * kSgemmK / 4 / kSgemmThreads;  // float4 loads per thread and slab

using SgemmSlab = float[kSgemmK][kSgemmPitch];

// src[0 .. 3], zeros from src[valid] on: one 16-byte load where kVec (src
// 16-byte aligned, valid <= 0 or >= 4). A zero channel leaves every sum as
// it is: fmaf(0, 0, acc) == acc, and acc, starting at +0, is never -0.
template <bool kVec>
__device__ __forceinline__ float4 Load4(const float* src, int valid) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (kVec) return valid > 0 ? *reinterpret_cast<const float4*>(src) : v;
  if (valid > 0) v.x = src[0];
  if (valid > 1) v.y = src[1];
  if (valid > 2) v.z = src[2];
  if (valid > 3) v.w = src[3];
  return v;
}

// A slab of kSgemmTile rows and kSgemmK channels from x (row stride ld), of
// which `rows` rows and `channels` channels exist: float4 j of this thread
// is row f / 4, channels 4 (f % 4).., f = threadIdx.x + j * kSgemmThreads;
// stored transposed ([channel][row]).
template <bool kVec>
__device__ __forceinline__ void LoadRowSlab(const float* x, int ld, int rows, int channels, float4 (&v)[kSgemmLoads]) {
#pragma unroll
  for (int j = 0; j < kSgemmLoads; ++j) {
    const int f = threadIdx.x + j * kSgemmThreads;
    const int r = f / (kSgemmK / 4);
    const int c = 4 * (f % (kSgemmK / 4));
    v[j] = Load4<kVec>(x + (r * ld + c), r < rows ? channels - c : 0);
  }
}
__device__ __forceinline__ void StoreRowSlab(const float4 (&v)[kSgemmLoads], SgemmSlab& s) {
#pragma unroll
  for (int j = 0; j < kSgemmLoads; ++j) {
    const int f = threadIdx.x + j * kSgemmThreads;
    const int r = f / (kSgemmK / 4);
    const int c = 4 * (f % (kSgemmK / 4));
    s[c][r] = v[j].x, s[c + 1][r] = v[j].y, s[c + 2][r] = v[j].z, s[c + 3][r] = v[j].w;
  }
}

// Stores this thread's float4 j of a [channel][column] slab: channel f / 32,
// columns 4 (f % 32).., f = threadIdx.x + j * kSgemmThreads.
__device__ __forceinline__ void StoreColumnSlab(const float4 (&v)[kSgemmLoads], SgemmSlab& s) {
#pragma unroll
  for (int j = 0; j < kSgemmLoads; ++j) {
    const int f = threadIdx.x + j * kSgemmThreads;
    *reinterpret_cast<float4*>(&s[f / (kSgemmTile / 4)][4 * (f % (kSgemmTile / 4))]) = v[j];
  }
}

// The tile row of this thread's acc[0][.] and the column of its acc[.][0]
// (acc[.][4] is 32 further).
__device__ __forceinline__ int SgemmRow0() { return 32 * (threadIdx.x / 64) + 8 * (threadIdx.x % 32 / 8); }
__device__ __forceinline__ int SgemmCol0() { return 64 * (threadIdx.x / 32 % 2) + 4 * (threadIdx.x % 8); }

// The tile's main loop over `steps` steps of kSgemmK channels, in order:
// acc[i][j] = fmaf(a[c][row0 + i], b[c][col j], acc[i][j]). load(s, buf) puts
// step s's global loads in flight, into registers or by cp.async into slabs
// a[buf], b[buf] (kAsync); store(buf) writes the registers there. Warps that
// are not `busy` only load.
template <bool kAsync, typename Load, typename Store>
__device__ __forceinline__ void SgemmMainLoop(int steps, bool busy, const SgemmSlab (&a)[2], const SgemmSlab (&b)[2],
                                              Load load, Store store, float (&acc)[8][8]) {
  const int row0 = SgemmRow0();
  const int col0 = SgemmCol0();
  load(0, 0);
  store(0);
  if (kAsync) ptx::CpAsyncWait<0>();
  __syncthreads();
  for (int s = 0; s < steps; ++s) {
    const int buf = s % 2;
    if (s + 1 < steps) load(s + 1, 1 - buf);
    if (busy) {
#pragma unroll
      for (int c = 0; c < kSgemmK; ++c) {
        const float4 a0 = *reinterpret_cast<const float4*>(&a[buf][c][row0]);
        const float4 a1 = *reinterpret_cast<const float4*>(&a[buf][c][row0 + 4]);
        const float4 b0 = *reinterpret_cast<const float4*>(&b[buf][c][col0]);
        const float4 b1 = *reinterpret_cast<const float4*>(&b[buf][c][col0 + 32]);
        const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
      }
    }
    if (s + 1 < steps) store(1 - buf);  // slabs last read in step s - 1, before the barrier
    if (kAsync) ptx::CpAsyncWait<0>();
    __syncthreads();
  }
}

// --- project + rope -------------------------------------------------------
constexpr int kGemmThreads = 256;  // 16 x 16 threads, (kTile / 16)^2 outputs each

// The operands of the gate linear that grid z computes: z < Hq makes k' for
// head z, z >= Hq makes q' for head z - Hq (only when mask_linear_q exists).
// out[h] = X . W with X [nb, in] (row stride x_row) and W [in, hidden].
struct ProjectOperands {
  bool is_k;
  int h;
  const float* x;
  int64_t x_row;
  int in;
  const float* w;
};

__device__ __forceinline__ ProjectOperands GetProjectOperands(const GateParams& p, int z, const float* pooled_q,
                                                              const float* pooled_k) {
  ProjectOperands o;
  o.is_k = z < p.num_heads;
  o.h = o.is_k ? z : z - p.num_heads;
  const int group = p.num_heads / p.num_kv_heads;
  if (o.is_k) {
    const int w_heads = KWeightHeads(p);
    o.x = pooled_k + static_cast<int64_t>(o.h / group) * 3 * p.head_dim;
    o.x_row = static_cast<int64_t>(p.num_kv_heads) * 3 * p.head_dim;
    o.in = 3 * p.head_dim;
    o.w = p.k_weight + static_cast<int64_t>(o.h / (p.num_heads / w_heads)) * o.in * p.hidden;
  } else {
    o.x = pooled_q + static_cast<int64_t>(o.h) * p.head_dim;
    o.x_row = static_cast<int64_t>(p.num_heads) * p.head_dim;
    o.in = p.head_dim;
    o.w = p.q_weight + static_cast<int64_t>(o.h) * o.in * p.hidden;
  }
  return o;
}

// The gate linears of the fused gate as one tiled GEMM per Q head, out [Hq,
// nb, hidden]; grid (m tiles, n tiles, Hq * linears). Tiles of kTile x kTile,
// kGemmK input channels per step, 64 x 64 (many CTAs, which a short sequence
// needs to fill the chip, and few steps, each waiting once for its loads).
// The input channels are summed in order from +0, as in ProjectSgemmKernel.
template <int kTile, int kGemmK>
__global__ void __launch_bounds__(kGemmThreads)
    ProjectKernel(GateParams p, int nb, const float* pooled_q, const float* pooled_k, float* qp, float* kp) {
  constexpr int kPer = kTile / 16;  // outputs per thread in each direction
  constexpr int kPitch = kTile + 4;  // floats; keeps rows 16-byte aligned
  const ProjectOperands o = GetProjectOperands(p, blockIdx.z, pooled_q, pooled_k);
  const bool is_k = o.is_k;
  const int h = o.h;
  const int hidden = p.hidden;
  const float* x = o.x;
  const int64_t x_row = o.x_row;
  const int in = o.in;
  const float* w = o.w;
  __shared__ __align__(16) float xs[kGemmK][kPitch];
  __shared__ __align__(16) float ws[kGemmK][kPitch];
  const int m0 = blockIdx.x * kTile;
  const int n0 = blockIdx.y * kTile;
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  float acc[kPer][kPer] = {};
  constexpr int kLoads = kTile * kGemmK / kGemmThreads;
  for (int c0 = 0; c0 < in; c0 += kGemmK) {
    // Every load of the step in flight at once (into registers), then the
    // shared-memory stores: one memory round trip per step.
    float xv[kLoads], wv[kLoads];
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int i = threadIdx.x + j * kGemmThreads;
      const int r = i / kGemmK;  // x: row r, channel c (transposed into shared memory)
      const int c = i % kGemmK;
      xv[j] = (m0 + r < nb && c0 + c < in) ? x[(m0 + r) * x_row + c0 + c] : 0.0f;
      const int wc = i / kTile;  // W: channel wc, output column wn
      const int wn = i % kTile;
      wv[j] = (c0 + wc < in && n0 + wn < hidden) ? w[static_cast<int64_t>(c0 + wc) * hidden + n0 + wn] : 0.0f;
    }
    __syncthreads();  // the last step's reads of xs and ws are done
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int i = threadIdx.x + j * kGemmThreads;
      xs[i % kGemmK][i / kGemmK] = xv[j];
      ws[i / kTile][i % kTile] = wv[j];
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kGemmK; ++c) {
      float a[kPer], b[kPer];
#pragma unroll
      for (int v = 0; v < kPer; v += 4) {
        const float4 av = *reinterpret_cast<const float4*>(&xs[c][kPer * ty + v]);
        const float4 bv = *reinterpret_cast<const float4*>(&ws[c][kPer * tx + v]);
        a[v] = av.x, a[v + 1] = av.y, a[v + 2] = av.z, a[v + 3] = av.w;
        b[v] = bv.x, b[v + 1] = bv.y, b[v + 2] = bv.z, b[v + 3] = bv.w;
      }
#pragma unroll
      for (int r = 0; r < kPer; ++r) {
#pragma unroll
        for (int q = 0; q < kPer; ++q) acc[r][q] = fmaf(a[r], b[q], acc[r][q]);
      }
    }
  }
  float* out = (is_k ? kp : qp) + static_cast<int64_t>(h) * nb * hidden;
#pragma unroll
  for (int r = 0; r < kPer; ++r) {
    const int m = m0 + kPer * ty + r;
    if (m >= nb) continue;
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int n = n0 + kPer * tx + q;
      if (n < hidden) out[static_cast<int64_t>(m) * hidden + n] = acc[r][q];
    }
  }
}

// The gate linear and the block RoPE in one kernel, for hidden = 128: a CTA
// computes kR * kWarps rows x 128 outputs of one head (grid y as z in
// GetProjectOperands); lane l of warp w owns rows kR w.. kR w + kR - 1 and
// columns 4l.. 4l + 3, so the rotary partner of column f < 64 sits in lane
// l + 16 of the same warp. x comes into shared memory whole (row-major,
// read as float4 broadcasts), W through a ring of kPrStages slabs of 32
// channels, all by 16-byte cp.async. Each output sums the channels in order from +0 (fmaf), as
// ProjectKernel and ProjectSgemmKernel do, and rotates as RopeKernel does:
// the same bits as those two kernels, one launch and one pass fewer.
constexpr int kPrHidden = 128;
constexpr int kPrSlab = 32;  // channels a stage
constexpr int kPrStages = 3;

size_t ProjectRopeSmemBytes(int rows, int in) {
  return sizeof(float) * (static_cast<size_t>(rows) * (in + 4) + kPrStages * kPrSlab * kPrHidden);
}

template <int kWarps, int kR>
__global__ void __launch_bounds__(32 * kWarps, 1)
    ProjectRopeKernel(GateParams p, int nb, const float* pooled_q, const float* pooled_k, const float* rope,
                      float* qp, float* kp) {
  SEER_GATE_TRACE_CTA(2);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
  constexpr int kRows = kR * kWarps;
  constexpr int kThreads = 32 * kWarps;
  static_assert(kPrHidden == 32 * 4 && kPrSlab % kWarps == 0, "a lane's four columns; whole slab rows a warp");
  extern __shared__ __align__(16) float pr_smem[];
  const ProjectOperands o = GetProjectOperands(p, blockIdx.y, pooled_q, pooled_k);
  const int in = o.in;  // D or 3D, a multiple of 8 (ValidShapes)
  const int pitch = in + 4;
  float* xs = pr_smem;  // [kRows][pitch]
  float* ws = xs + kRows * pitch;  // [kPrStages][kPrSlab][128]
  const int m0 = blockIdx.x * kRows;
  const int tid = threadIdx.x;
  const int x_chunks = in / 4;
  for (int i = tid; i < kRows * x_chunks; i += kThreads) {
    const int r = i / x_chunks;
    const int c = i % x_chunks * 4;
    const bool valid = m0 + r < nb;
    ptx::CpAsync16ZeroFill(ptx::SmemAddr(xs + r * pitch + c), valid ? o.x + (m0 + r) * o.x_row + c : o.x, valid);
  }
  ptx::CpAsyncCommit();
  const int slabs = (in + kPrSlab - 1) / kPrSlab;
  // A slab is kPrSlab rows of 32 16-byte chunks: thread t copies chunk t % 32
  // of rows t / 32, t / 32 + kWarps, ...
  const float* w_src = o.w + static_cast<int64_t>(tid / 32) * kPrHidden + tid % 32 * 4;
  const uint32_t w_dst = ptx::SmemAddr(ws + tid / 32 * kPrHidden + tid % 32 * 4);
  auto load_slab = [&](int s) {
#pragma unroll
    for (int k = 0; k < kPrSlab / kWarps; ++k) {
      const int channel = s * kPrSlab + tid / 32 + k * kWarps;
      const bool valid = channel < in;
      ptx::CpAsync16ZeroFill(
          w_dst + sizeof(float) * (s % kPrStages * kPrSlab + k * kWarps) * kPrHidden,
          valid ? w_src + static_cast<int64_t>(s * kPrSlab + k * kWarps) * kPrHidden : o.w, valid);
    }
  };
#pragma unroll
  for (int s = 0; s < kPrStages - 1; ++s) {
    if (s < slabs) load_slab(s);
    ptx::CpAsyncCommit();
  }
  const int warp = tid / 32;
  const int lane = tid % 32;
  float acc[kR][4] = {};
  // Channels c .. c + 3 of the slab at w (columns 4 lane..) and x (the
  // warp's rows), in order.
  auto step = [&](const float* x, const float* w, int c) {
    float4 a[kR];
#pragma unroll
    for (int i = 0; i < kR; ++i) a[i] = *reinterpret_cast<const float4*>(x + i * pitch + c);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 b = *reinterpret_cast<const float4*>(w + (c + j) * kPrHidden);
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        const float ai = j == 0 ? a[i].x : j == 1 ? a[i].y : j == 2 ? a[i].z : a[i].w;
        acc[i][0] = fmaf(ai, b.x, acc[i][0]);
        acc[i][1] = fmaf(ai, b.y, acc[i][1]);
        acc[i][2] = fmaf(ai, b.z, acc[i][2]);
        acc[i][3] = fmaf(ai, b.w, acc[i][3]);
      }
    }
  };
  for (int s = 0; s < slabs; ++s) {
    ptx::CpAsyncWait<kPrStages - 2>();  // x and slab s are in, for this thread
    __syncthreads();  // ... for every thread, and slab s - 1's stage is free
    if (s + kPrStages - 1 < slabs) load_slab(s + kPrStages - 1);
    ptx::CpAsyncCommit();
    const float* w = ws + s % kPrStages * kPrSlab * kPrHidden + 4 * lane;
    const float* x = xs + kR * warp * pitch + s * kPrSlab;
    const int cn = min(kPrSlab, in - s * kPrSlab);
    if (cn == kPrSlab) {
#pragma unroll
      for (int c = 0; c < kPrSlab; c += 4) step(x, w, c);
    } else {
      for (int c = 0; c < cn; c += 4) step(x, w, c);
    }
  }
  // RoPE at the block's position: lanes 0-15 hold x1 (columns f), lanes
  // 16-31 x2 (columns f + 64) of the same four frequencies.
  const bool first = lane < 16;
  const int f0 = 4 * (lane % 16);
  float* out = (o.is_k ? kp : qp) + static_cast<int64_t>(o.h) * nb * kPrHidden + 4 * lane;
#pragma unroll
  for (int i = 0; i < kR; ++i) {
    float other[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) other[j] = __shfl_xor_sync(0xffffffffu, acc[i][j], 16);
    const int m = m0 + kR * warp + i;
    if (m >= nb) continue;
    const float4 cs = *reinterpret_cast<const float4*>(rope + static_cast<int64_t>(m) * (kPrHidden / 2) + f0);
    const float4 sn =
        *reinterpret_cast<const float4*>(rope + static_cast<int64_t>(nb + m) * (kPrHidden / 2) + f0);
    const float c[4] = {cs.x, cs.y, cs.z, cs.w};
    const float sv[4] = {sn.x, sn.y, sn.z, sn.w};
    float y[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float y1, y2;
      if (first) {
        BlockRopePair(acc[i][j], other[j], c[j], sv[j], &y1, &y2);
        y[j] = y1;
      } else {
        BlockRopePair(other[j], acc[i][j], c[j], sv[j], &y1, &y2);
        y[j] = y2;
      }
    }
    *reinterpret_cast<float4*>(out + static_cast<int64_t>(m) * kPrHidden) = make_float4(y[0], y[1], y[2], y[3]);
  }
}

// The gate linears of the old gate in 128 x 128 tiles (see the SGEMM tiles
// above), out [Hq, nb, hidden]; grid (m tiles, n tiles, Hq * linears). kVec:
// hidden % 4 == 0 and the weights 16-byte aligned, so that w comes by
// 16-byte cp.async (the rows of x always are aligned: in and x_row are
// multiples of 8).
template <bool kVec>
__global__ void __launch_bounds__(kSgemmThreads, kVec ? 2 : 1)
    ProjectSgemmKernel(GateParams p, int nb, const float* pooled_q, const float* pooled_k, float* qp, float* kp) {
  const ProjectOperands o = GetProjectOperands(p, blockIdx.z, pooled_q, pooled_k);
  const int hidden = p.hidden;
  const int m0 = blockIdx.x * kSgemmTile;
  const int n0 = blockIdx.y * kSgemmTile;
  __shared__ __align__(16) SgemmSlab xs[2], ws[2];
  const bool busy = m0 + 32 * static_cast<int>(threadIdx.x / 64) < nb;  // the warp has rows before nb
  // This thread's loads in a step: x rows m0 + tid / 4 + 64 j at channels
  // 4 (tid % 4).., and w channels tid / 32 + 8 j at columns n0 + 4 (tid % 32)..
  // (the channels counted from the step's first).
  const int tid = threadIdx.x;
  const float* x_src = o.x + static_cast<int64_t>(m0 + tid / 4) * o.x_row + 4 * (tid % 4);
  const int x_rows = nb - m0 - tid / 4;
  const float* w_src = o.w + static_cast<int64_t>(tid / 32) * hidden + n0 + 4 * (tid % 32);
  const int w_columns = hidden - n0 - 4 * (tid % 32);
  float4 xv[kSgemmLoads], wv[kSgemmLoads];
  float acc[8][8] = {};
  SgemmMainLoop<kVec>((o.in + kSgemmK - 1) / kSgemmK, busy, xs, ws,
                      [&](int s, int buf) {
#pragma unroll
                        for (int j = 0; j < kSgemmLoads; ++j) {
                          const int c = s * kSgemmK;
                          xv[j] =
                              Load4<true>(x_src + 64 * j * o.x_row + c, 64 * j < x_rows ? o.in - c - 4 * (tid % 4) : 0);
                          const float* src = w_src + static_cast<int64_t>(c + 8 * j) * hidden;
                          const int valid = c + tid / 32 + 8 * j < o.in ? w_columns : 0;
                          if (kVec) {
                            ptx::CpAsync16ZeroFill(ptx::SmemAddr(&ws[buf][tid / 32 + 8 * j][4 * (tid % 32)]),
                                                   valid > 0 ? src : o.w, valid > 0);
                          } else {
                            wv[j] = Load4<false>(src, valid);
                          }
                        }
                        if (kVec) ptx::CpAsyncCommit();
                      },
                      [&](int buf) {
                        StoreRowSlab(xv, xs[buf]);
                        if (!kVec) StoreColumnSlab(wv, ws[buf]);
                      },
                      acc);
  if (!busy) return;
  float* out = (o.is_k ? kp : qp) + static_cast<int64_t>(o.h) * nb * hidden;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + SgemmRow0() + i;
    if (m >= nb) break;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int n = n0 + SgemmCol0() + 32 * half;
      float* dst = out + static_cast<int64_t>(m) * hidden + n;
      const float4 v = make_float4(acc[i][4 * half], acc[i][4 * half + 1], acc[i][4 * half + 2], acc[i][4 * half + 3]);
      if (kVec && n + 3 < hidden) {
        *reinterpret_cast<float4*>(dst) = v;
      } else {
        if (n < hidden) dst[0] = v.x;
        if (n + 1 < hidden) dst[1] = v.y;
        if (n + 2 < hidden) dst[2] = v.z;
        if (n + 3 < hidden) dst[3] = v.w;
      }
    }
  }
}

// Block RoPE in place on q' and k' ([Hq, nb, hidden]); without mask_linear_q,
// q' is first taken from the pooled Q. One thread per rotated pair. The
// rotation rounds as the CPU does: four products, then a difference and a
// sum, each rounded to float (no fused multiply-add).
// With qp_lo and kp_lo not null, writes them split (StoreMaybeSplit).
// kV pairs a thread (1, or 4 with 16-byte loads and stores: hidden % 8 ==
// 0 and head_dim % 4 == 0).
template <int kV>
__global__ void RopeKernel(GateParams p, int nb, const float* pooled_q, const float* rope, bool k_only, float* qp,
                           float* kp, float* qp_lo, float* kp_lo) {
  ChainedKernelStart();
  // grid (ceil(pairs / kV / 256), 2): y = 1 rotates k'; grid (.., 1) with
  // k_only only k' (the pool rotated q'). 32-bit index arithmetic
  // (64-bit division was most of this kernel's time): pairs = Hq * nb *
  // hidden / 2 < 2^31 (RunGateKernelsVariant checks).
  const int half = p.hidden / 2;
  const int groups = half / kV;  // of kV pairs, a row
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.num_heads * nb * groups) return;
  const bool is_k = k_only || blockIdx.y == 1;
  const int f = j % groups * kV;
  const int b = j / groups % nb;
  const int h = j / (groups * nb);
  const int64_t at = (static_cast<int64_t>(h) * nb + b) * p.hidden;
  float* v = (is_k ? kp : qp) + at;
  float* lo = is_k ? kp_lo : qp_lo;
  if (lo != nullptr) lo += at;
  const float* x = !is_k && p.q_weight == nullptr ? pooled_q + (static_cast<int64_t>(b) * p.num_heads + h) * p.head_dim
                                                  : v;
  const Floats<kV> x1 = LoadFloats<kV>(x + f);
  const Floats<kV> x2 = LoadFloats<kV>(x + f + half);
  const Floats<kV> c = LoadFloats<kV>(rope + static_cast<int64_t>(b) * half + f);
  const Floats<kV> sn = LoadFloats<kV>(rope + static_cast<int64_t>(nb) * half + static_cast<int64_t>(b) * half + f);
  Floats<kV> y1, y2;
#pragma unroll
  for (int i = 0; i < kV; ++i) BlockRopePair(x1.v[i], x2.v[i], c.v[i], sn.v[i], &y1.v[i], &y2.v[i]);
  StoreFloatsMaybeSplit(y1, v + f, lo != nullptr ? lo + f : nullptr);
  StoreFloatsMaybeSplit(y2, v + f + half, lo != nullptr ? lo + f + half : nullptr);
}

// --- scores on tensor cores (3xTF32) ----------------------------------------
// The tiles and outputs of ScoresKernel below (the same grid), on mma.sync
// m16n8k8 tf32: each operand splits as hi + lo (SplitTf32) and a product is
// hi hi + hi lo + lo hi, accumulated in float in the tensor cores' order.
// So a score is the float32 dot product within float rounding, not the
// SIMT kernel's fmaf chain bit for bit (docs/KERNELS.md). 256 threads, warp
// w owns tile rows 64 (w / 4).. and columns 32 (w % 4).. (4 x 4 mma tiles);
// kTcK channels a stage, kTcStages stages by cp.async. Needs hidden % 4 == 0 and
// 16-byte aligned q' and k'. H200, 128k tokens, 32 heads, hidden 128 (ncu):
// 490 us against the SIMT kernel's 577, the tensor pipe 45% busy.
constexpr int kTcK = 32;
constexpr int kTcPitch = kTcK + 4;  // floats a row: fragment reads hit 32 banks
constexpr int kTcStages = 3;  // cp.async stages in flight: 110,592 B, two CTAs an SM
constexpr int kTcStageFloats = 2 * kSgemmTile * kTcPitch;
constexpr size_t kTcSmemBytes = kTcStages * kTcStageFloats * sizeof(float);

// Rows [first, first + kRows) of x (row stride ld), channels [c0, c0 +
// kTcK), into dst [kRows][kTcPitch] by kThreads threads; rows past nb and
// channels past `channels` as zeros (x, ld and channels multiples of 4
// floats).
template <int kRows = kSgemmTile, int kThreads = kSgemmThreads>
__device__ __forceinline__ void LoadTcSlab(const float* x, int64_t ld, int first, int nb, int channels, int c0,
                                           float* dst) {
  static_assert(kRows * kTcK / 4 % kThreads == 0, "whole chunks a thread");
#pragma unroll
  for (int j = 0; j < kRows * kTcK / 4 / kThreads; ++j) {
    const int f = threadIdx.x + j * kThreads;
    const int r = f / (kTcK / 4);
    const int c = c0 + 4 * (f % (kTcK / 4));
    const bool valid = first + r < nb && c < channels;
    const float* src = valid ? x + (first + r) * ld + c : x;
    ptx::CpAsync16ZeroFill(ptx::SmemAddr(dst + r * kTcPitch + 4 * (f % (kTcK / 4))), src, valid);
  }
}

// acc[mt][nt] += this warp's A rows wr + 16 mt.. ([row][kTcPitch] floats in
// shared memory, channels kk .. kk + 7) times the B fragments (hi and lo of
// column tiles nt), three tf32 products a float product; one fewer where
// a_lo or b_lo is false (A's or B's lo parts known to be zero: a product
// of zeros leaves the accumulator's bits as they are).
template <int kMt, int kNt>
__device__ __forceinline__ void Tf32MmaTiles(const float* as, int wr, int kk, const uint32_t (&bh)[kNt][2],
                                             const uint32_t (&bl)[kNt][2], float (&acc)[kMt][kNt][4], bool a_lo = true,
                                             bool b_lo = true) {
  // ldmatrix on 32-bit elements: each 8 x 8 b16 matrix is 8 rows x 4 floats,
  // and lane l receives row l / 4, float l % 4 of each (the tf32 fragment
  // layout); lane l addresses row l % 8 of matrix l / 8.
  const int lane = threadIdx.x % 32;
  const int m = lane / 8;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
    uint32_t r[4], ah[4], al[4];
    ptx::LdMatrixX4(r, ptx::SmemAddr(as + (wr + 16 * mt + 8 * (m % 2) + lane % 8) * kTcPitch + kk + 4 * (m / 2)));
#pragma unroll
    for (int i = 0; i < 4; ++i) ptx::SplitTf32(__uint_as_float(r[i]), &ah[i], &al[i]);
#pragma unroll
    for (int nt = 0; nt < kNt; ++nt) {
      if (a_lo) ptx::MmaTf32(acc[mt][nt], al, bh[nt][0], bh[nt][1]);
      if (b_lo) ptx::MmaTf32(acc[mt][nt], ah, bl[nt][0], bl[nt][1]);
      ptx::MmaTf32(acc[mt][nt], ah, bh[nt][0], bh[nt][1]);
    }
  }
}

// Tile (qt, kt), kt <= qt, of the causal triangle of tiles, numbered row by
// row: tile = qt (qt + 1) / 2 + kt.
__device__ __forceinline__ void CausalTile(int tile, int* qt, int* kt) {
  int q = static_cast<int>((sqrtf(8.0f * tile + 1.0f) - 1.0f) * 0.5f);
  while (q * (q + 1) / 2 > tile) --q;
  while ((q + 1) * (q + 2) / 2 <= tile) ++q;
  *qt = q;
  *kt = tile - q * (q + 1) / 2;
}

// The tile a scores CTA computes: block x of the causal triangle of tiles,
// head head0 + blockIdx.y (hl in this pass).
struct ScoresTile {
  int hl, h, q_first, k_first;
};

__device__ __forceinline__ ScoresTile ScoresTileOf(int head0) {
  int qt = 0, kt = 0;
  CausalTile(static_cast<int>(blockIdx.x), &qt, &kt);
  return {static_cast<int>(blockIdx.y), head0 + static_cast<int>(blockIdx.y), qt * kSgemmTile, kt * kSgemmTile};
}

// Order-preserving map of float to uint32 (larger float -> larger key), NaN
// above everything as torch.topk ranks it. -0.0 and +0.0 are equal scores
// (as the CPU gate compares them), so both take +0.0's key and tie by index.
__device__ __forceinline__ uint32_t OrderKey(float f) {
  const uint32_t u = f == 0.0f ? 0u : __float_as_uint(f);
  const uint32_t flip = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u;  // ~u or u | 2^31
  return isnan(f) ? 0xffffffffu : u ^ flip;
}

// Scores (qb, kb) and (qb, kb + 1), of those on or below the diagonal; one
// 8-byte store where both are and `pairs` (nb even: rows 8-byte aligned).
__device__ __forceinline__ void StoreScorePair(float* orow, int qb, int kb, float v0, float v1, bool pairs) {
  if (pairs && kb + 1 <= qb) {
    *reinterpret_cast<float2*>(orow + kb) = make_float2(v0, v1);
  } else {
    if (kb <= qb) orow[kb] = v0;
    if (kb + 1 <= qb) orow[kb + 1] = v1;
  }
}

__global__ void __launch_bounds__(kSgemmThreads, 2)
    ScoresTf32Kernel(const float* qp, const float* kp, int nb, int hidden, int head0, float scale, float* scores) {
  ChainedKernelStart();
  extern __shared__ __align__(16) float tc_smem[];  // [stage][q, k][128][kTcPitch]
  const ScoresTile tile = ScoresTileOf(head0);
  const int hl = tile.hl;
  const int h = tile.h;
  const int q_first = tile.q_first;
  const int k_first = tile.k_first;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int wr = 64 * (warp / 4);  // the warp's rows and columns in the tile
  const int wc = 32 * (warp % 4);
  // Warps with no score on or below the diagonal, or none before nb, only load.
  const bool busy = q_first + wr < nb && k_first + wc <= min(q_first + wr + 63, nb - 1);
  const float* qh = qp + static_cast<int64_t>(h) * nb * hidden;
  const float* kh = kp + static_cast<int64_t>(h) * nb * hidden;

  float acc[4][4][4] = {};
  const int steps = (hidden + kTcK - 1) / kTcK;
  auto load = [&](int s) {  // one commit group a step, empty past the last
    if (s < steps) {
      float* st = tc_smem + (s % kTcStages) * kTcStageFloats;
      LoadTcSlab(qh, hidden, q_first, nb, hidden, s * kTcK, st);
      LoadTcSlab(kh, hidden, k_first, nb, hidden, s * kTcK, st + kSgemmTile * kTcPitch);
    }
    ptx::CpAsyncCommit();
  };
  for (int s = 0; s < kTcStages - 1; ++s) load(s);
  for (int s = 0; s < steps; ++s) {
    ptx::CpAsyncWait<kTcStages - 2>();
    __syncthreads();  // step s landed for every thread; step s - 1's stage is free
    load(s + kTcStages - 1);
    if (busy) {
      const float* qs = tc_smem + (s % kTcStages) * kTcStageFloats;
      const float* ks = qs + kSgemmTile * kTcPitch;
#pragma unroll
      for (int kk = 0; kk < kTcK; kk += 8) {
        // k' rows are the B columns: two column tiles an ldmatrix, as for A.
        const int m = lane / 8;
        uint32_t bh[4][2], bl[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; nt += 2) {
          uint32_t r[4];
          ptx::LdMatrixX4(r, ptx::SmemAddr(ks + (wc + 8 * (nt + m / 2) + lane % 8) * kTcPitch + kk + 4 * (m % 2)));
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            ptx::SplitTf32(__uint_as_float(r[i]), &bh[nt + i / 2][i % 2], &bl[nt + i / 2][i % 2]);
          }
        }
        Tf32MmaTiles(qs, wr, kk, bh, bl, acc);
      }
    }
  }
  if (!busy) return;

  float* out = scores + static_cast<int64_t>(hl) * nb * nb;
  const bool pairs = nb % 2 == 0;  // float2 stores stay 8-byte aligned
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int qb = q_first + wr + 16 * mt + g + 8 * half;
      if (qb >= nb) continue;
      float* orow = out + static_cast<int64_t>(qb) * nb;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int kb = k_first + wc + 8 * nt + 2 * t;
        const float v0 = acc[mt][nt][2 * half] * scale;
        const float v1 = acc[mt][nt][2 * half + 1] * scale;
        StoreScorePair(orow, qb, kb, v0, v1, pairs);
      }
    }
  }
}

// --- the wgmma main loop (3xTF32) of the unfused gate's projection ----------
// A 128 x 128 tile of A B^T on wgmma m64n128k8, both operands in shared
// memory, each float product as three tf32 products (lo.hi + hi.lo +
// hi.hi): warpgroup w takes rows 64w.. of the tile against all 128 columns.
// A step is kWgK channels of the 128 A and 128 B rows, tf32 hi and lo
// parts, each part 64-byte rows in the 64-byte swizzle, copied in by
// cp.async. Needs sm_90a.
constexpr int kWgK = 16;
// Six stages of 32 KB, one CTA an SM: the unrolled main loop below keeps
// four steps of loads in flight. (Three stages, two CTAs an SM, measured
// 73.5-74.9 against 68.4-69.5 us at 128k tokens under ncu, H200, 2026-11-30.)
constexpr int kWgStages = 6;
constexpr int kWgPartBytes = kSgemmTile * kWgK * 4;  // 128 rows of one part: 8 KB
constexpr int kWgStageBytes = 4 * kWgPartBytes;  // A hi, A lo, B hi, B lo
constexpr size_t kWgSmemBytes = kWgStages * kWgStageBytes + 1024;  // + alignment to the swizzle atom

// The operands of a 128 x 128 wgmma tile, in stage order: part i (0, 1: the
// A rows' hi and lo parts; 2, 3: the B rows') is rows first[i] .. first[i] +
// 127 of src[i], pitch[i] floats apart, zeros from row limit[i] on. src[1]
// holds A's lo columns from the main loop's first step with A's lo part on.
struct WgParts {
  const float* src[4];
  int64_t pitch[4];
  int first[4];
  int limit[4];
};

#if defined(SEER_SM90A_ENABLED)  // the helpers of the wgmma kernels' sm_90a code
// Byte offset of 16-byte chunk c (of 4) of row r in a 64-byte-swizzled part.
__device__ __forceinline__ uint32_t Swizzle64(int r, int c) {
  return static_cast<uint32_t>(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
}

// The main loop of the wgmma projection (256 threads): acc = A B^T over
// kSteps steps of kWgK channels, A and B the 128 rows of WgParts, each
// product lo hi + hi lo + hi hi, except that before step kALoStep A's lo
// part is zero (A's values there are tf32 already): not loaded, and its
// product not taken. acc as wgmma m64n128 leaves it for warpgroup wg =
// threadIdx.x / 128 (rows 64 wg .. 64 wg + 63 of A); both warpgroups run
// every step (rows past a limit are zeros). The steps are unrolled, so that
// one step's wgmmas stay in flight while the next step's are issued (ptxas
// serializes wgmmas left in flight across a loop's back edge or a branch);
// a stage is refilled kWgStages - 2 steps ahead, once the products of the
// step that read it are done. Until 2026-11-30 a runtime loop waited for
// each step's products before it issued the next step's. Without kBLo, B's
// lo part is zero throughout (B's values are tf32, GateParams::weights_tf32):
// it is not loaded and its product not taken, which leaves acc's bits as
// they would be. smem_addr: kWgStages stages, 1024-byte aligned. On return
// every wgmma is done and only empty cp.async groups are pending.
template <int kSteps, int kALoStep, bool kBLo = true>
__device__ __forceinline__ void WgmmaTf32Tile(uint32_t smem_addr, const WgParts& parts, float (&acc)[64]) {
  static_assert(kWgStages >= 3 && kALoStep <= kSteps, "a stage refilled only once its products are done");
  constexpr int kAhead = kWgStages - 2;  // steps loaded ahead of the one computed
  const int wg = threadIdx.x / 128;
  const int c = threadIdx.x % 4;  // this thread's chunk in rows r0 and r0 + 64
  const int r0 = threadIdx.x / 4;
  // This thread's rows r0 and r0 + 64 of each part; a row past its part's
  // limit copies zeros (from the part's first row: an address that exists).
  const float* row_src[2][4];
  bool row_valid[2][4];
  uint32_t row_off[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    row_off[j] = Swizzle64(r0 + 64 * j, c);
#pragma unroll
    for (int part = 0; part < 4; ++part) {
      const int row = parts.first[part] + r0 + 64 * j;
      row_valid[j][part] = row < parts.limit[part];
      row_src[j][part] =
          parts.src[part] + (row_valid[j][part] ? static_cast<int64_t>(row) * parts.pitch[part] + 4 * c : 0);
    }
  }
  auto load = [&](int s) {  // one commit group a step, empty past the last
    if (s < kSteps) {
      const uint32_t st = smem_addr + (s % kWgStages) * kWgStageBytes;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int part = 0; part < 4; ++part) {
          if ((part == 1 && s < kALoStep) || (part == 3 && !kBLo)) continue;
          const int at = (part == 1 ? s - kALoStep : s) * kWgK;  // a constant once unrolled
          ptx::CpAsync16ZeroFill(st + part * kWgPartBytes + row_off[j], row_src[j][part] + at, row_valid[j][part]);
        }
      }
    }
    ptx::CpAsyncCommit();
  };

#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) load(s);
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    ptx::CpAsyncWait<kAhead - 1>();  // this thread's copies of step s landed
    sm90::FenceProxyAsync();  // and are seen by wgmma's reads
    if (s > 0) sm90::WgmmaWait<1>();  // step s - 2's products are done...
    __syncthreads();  // ...in both warpgroups, so its stage may be refilled; step s is in
    load(s + kAhead);
    const uint32_t st = smem_addr + (s % kWgStages) * kWgStageBytes;
    const uint32_t a = st + wg * 64 * 64;  // the warpgroup's 64 rows of A
    const uint32_t b = st + 2 * kWgPartBytes;
    sm90::WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kWgK / 8; ++kk) {
      const uint32_t k_off = kk * 32;  // 8 tf32 channels
      const uint64_t a_hi = sm90::MatrixDesc(a + k_off, 16, 512, 64);
      const uint64_t b_hi = sm90::MatrixDesc(b + k_off, 16, 512, 64);
      const uint64_t b_lo = sm90::MatrixDesc(b + kWgPartBytes + k_off, 16, 512, 64);
      if (s >= kALoStep) {
        const uint64_t a_lo = sm90::MatrixDesc(a + kWgPartBytes + k_off, 16, 512, 64);
        sm90::WgmmaSSTf32<128>::Run(acc, a_lo, b_hi, 1);
      }
      if constexpr (kBLo) sm90::WgmmaSSTf32<128>::Run(acc, a_hi, b_lo, 1);
      sm90::WgmmaSSTf32<128>::Run(acc, a_hi, b_hi, 1);
    }
    sm90::WgmmaCommit();
  }
  sm90::WgmmaWait<0>();
  sm90::FenceRegs(acc);
}
#endif

// --- scores on Hopper's wgmma (3xTF32 or split fp16), one 128-row stripe a CTA
// The causal 128 x 128 tiles of ScoresTf32Kernel, the same products (lo.hi +
// hi.lo + hi.hi in float), on wgmma with both operands in shared memory
// (warpgroup w takes rows 64w.. of a tile against all 128 columns). A CTA
// takes query tile qt of one head and every key tile 0 .. qt of its row: its
// 128 q' rows (hi and lo parts, all hidden channels) are put in shared
// memory once, and only the k' rows stream, through a ring of kStages steps
// that runs on from one key tile into the next. A step is a 64-byte row of
// each part: 16 channels of tf32 (m64n128k8), or 32 of fp16 (m64n128k16).
// Within a tile one step's wgmmas stay in flight while the next step's are
// issued (a stage is refilled two steps after its products were issued); a
// tile ends with every wgmma done (ptxas serializes wgmmas left in flight
// across a loop's back edge), and its scores go out while the next tile's
// first steps load. k' comes split (RopeKernel and the projection kernels
// write it so: splitting here would cost shared-memory bandwidth, which
// wgmma's operand reads are bound by), each part in 64-byte rows in the
// 64-byte swizzle; q' comes split the same way, or (pooled_q given, and
// always in fp16) is rotated and split here once.
//
// TOp float: tf32 parts. TOp __half (hidden 128, q' rotated here, k' from
// ProjectRopeWgmmaKernel; since 2026-12-01): fp16 parts of rows scaled by
// powers of two (F16Split), half the bytes and half the wgmmas of tf32 for
// the same products; each score is unscaled by 2^-(shift_q + shift_k)
// (exact) before it is multiplied by `scale` as the tf32 kernel's is. The
// k' shifts (k_shift, shift << 23 a row) come with each key tile's first
// step into a ring of kF16ShiftSlots tiles. In fp16 q' is always made
// here: pooled_q must be given, and qp and qp_lo are not read.
//
// With `keys`, it writes OrderKey's key of each score (its bits as a float)
// for a select that reads keys (SelectKernel's keys_in). Grid (heads, row
// tiles), the longest stripes (the last query tiles) of every head first.
// One CTA an SM. kSteps * channels a step = hidden <= 128; sm_90a.
constexpr int kStripeMaxSteps = 8;  // hidden 128 in tf32
constexpr int kStripeStages = 5;
constexpr int kStripeABytes = kStripeMaxSteps * 2 * kWgPartBytes;  // q' hi, lo: 128 KB in tf32, 64 in fp16
constexpr int kStripeStageBytes = 2 * kWgPartBytes;  // k' hi, lo of one step
constexpr int kF16ShiftSlots = 2;
constexpr int kStripeShiftBytes = (1 + kF16ShiftSlots) * kSgemmTile * 4;  // q' rows' shifts, the k' ring

template <typename TOp>
constexpr size_t StripeSmemBytes() {
  constexpr int a_bytes = std::is_same_v<TOp, float> ? kStripeABytes : kStripeABytes / 2;
  return a_bytes + kStripeStages * kStripeStageBytes + (std::is_same_v<TOp, float> ? 0 : kStripeShiftBytes) + 1024;
}

#if defined(SEER_SM90A_ENABLED)
// How RotateQStripe walks a stripe's q' rows: item i is four pairs
// (channels f .. f + 3 and their partners f + kHidden / 2 ..) of one row, a
// row's kQuads items in adjacent lanes; a thread takes items threadIdx.x +
// 256 k, kBatch at a time.
template <int kHidden>
struct QStripeItems {
  static constexpr int kHalf = kHidden / 2;
  static constexpr int kQuads = kHalf / 4;  // items a row
  static constexpr int kItems = kSgemmTile * kQuads / kSgemmThreads;  // a thread's
  static constexpr int kBatch = kItems < 4 ? kItems : 4;
  static_assert(kHalf % 4 == 0 && kSgemmTile * kQuads % kSgemmThreads == 0, "whole items, as many a thread");
};

// Where RotateQStripe reads a stripe row's inputs: the pooled Q channels f
// .. f + 3 and f + kHidden / 2 .. of stripe row r, and the cos and sin of
// frequencies f .. f + 3 at its block, from row min(q_first + r, nb - 1) (a
// row that exists; past nb not used).
template <int kHidden>
struct QStripeFromGlobal {
  const float* pooled_q;  // [nb, heads, kHidden]
  const float* rope;  // the RoPE table: cos [nb][kHidden / 2], then sin
  int heads, h, nb, q_first;
  __device__ __forceinline__ void operator()(int r, int f, float4* x1, float4* x2, float4* cs, float4* sn) const {
    constexpr int kHalf = kHidden / 2;
    const int64_t b = min(q_first + r, nb - 1);
    const float* x = pooled_q + (b * heads + h) * kHidden;
    *x1 = *reinterpret_cast<const float4*>(x + f);
    *x2 = *reinterpret_cast<const float4*>(x + f + kHalf);
    *cs = *reinterpret_cast<const float4*>(rope + b * kHalf + f);
    *sn = *reinterpret_cast<const float4*>(rope + (nb + b) * kHalf + f);
  }
};

// The same rows copied into shared memory first (ScoresStripeTmaKernel):
// the stripe's pooled Q rows [128][kHidden] and the cos and sin of its
// `rows` blocks below nb, [rows][kHidden / 2] each.
template <int kHidden>
struct QStripeFromShared {
  const float* q;
  const float* cs;
  const float* sn;
  int rows;
  __device__ __forceinline__ void operator()(int r, int f, float4* x1, float4* x2, float4* c, float4* s) const {
    constexpr int kHalf = kHidden / 2;
    const int b = min(r, rows - 1);
    *x1 = *reinterpret_cast<const float4*>(q + b * kHidden + f);
    *x2 = *reinterpret_cast<const float4*>(q + b * kHidden + f + kHalf);
    *c = *reinterpret_cast<const float4*>(cs + b * kHalf + f);
    *s = *reinterpret_cast<const float4*>(sn + b * kHalf + f);
  }
};

// q' rows q_first .. q_first + 127 of one head, RoPE(pooled Q) (the RoPE
// pass's arithmetic, so the same bits), from load(r, f, ..) (QStripeFrom*),
// at their places in a stripe (step s's hi part at stripe + s * 2 *
// kWgPartBytes, its lo part after it, 64-byte swizzle); zeros past nb. A
// thread loads kBatch items before it uses any, and calls put(r, f, y1, y2,
// m) with the rotated channels f .. f + 3 (y1) and their partners (y2) of
// row r and the largest of their eight |values| before RoPE (m; 0 past nb),
// every lane of the warp at once.
template <int kHidden, typename Load, typename Put>
__device__ __forceinline__ void RotateQStripe(const Load& load, int nb, int q_first, Put put) {
  using I = QStripeItems<kHidden>;
#pragma unroll
  for (int k0 = 0; k0 < I::kItems; k0 += I::kBatch) {
    float4 x1[I::kBatch], x2[I::kBatch], cs[I::kBatch], sn[I::kBatch];
#pragma unroll
    for (int j = 0; j < I::kBatch && k0 + j < I::kItems; ++j) {
      const int i = static_cast<int>(threadIdx.x) + (k0 + j) * kSgemmThreads;
      load(i / I::kQuads, 4 * (i % I::kQuads), &x1[j], &x2[j], &cs[j], &sn[j]);
    }
#pragma unroll
    for (int j = 0; j < I::kBatch && k0 + j < I::kItems; ++j) {
      const int i = static_cast<int>(threadIdx.x) + (k0 + j) * kSgemmThreads;
      const int r = i / I::kQuads;
      const bool valid = q_first + r < nb;
      const float a1[4] = {x1[j].x, x1[j].y, x1[j].z, x1[j].w};
      const float a2[4] = {x2[j].x, x2[j].y, x2[j].z, x2[j].w};
      const float c[4] = {cs[j].x, cs[j].y, cs[j].z, cs[j].w};
      const float sv[4] = {sn[j].x, sn[j].y, sn[j].z, sn[j].w};
      float y1[4], y2[4], m = 0.0f;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        BlockRopePair(a1[e], a2[e], c[e], sv[e], &y1[e], &y2[e]);
        if (!valid) y1[e] = y2[e] = 0.0f;
        m = fmaxf(m, fmaxf(fabsf(a1[e]), fabsf(a2[e])));
      }
      put(r, 4 * (i % I::kQuads), y1, y2, valid ? m : 0.0f);
    }
  }
}

// The tf32 stripe: RotateQStripe's rows split into tf32 hi and lo parts.
template <int kHidden, typename Load>
__device__ __forceinline__ void RotateQStripeTf32(const Load& load, int nb, int q_first, unsigned char* stripe) {
  constexpr int kHalf = kHidden / 2;
  RotateQStripe<kHidden>(load, nb, q_first, [&](int r, int f, const float(&y1)[4], const float(&y2)[4], float) {
    uint4 hi1, lo1, hi2, lo2;
    uint32_t* const h1 = &hi1.x;
    uint32_t* const l1 = &lo1.x;
    uint32_t* const h2 = &hi2.x;
    uint32_t* const l2 = &lo2.x;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      ptx::SplitTf32(y1[e], &h1[e], &l1[e]);
      ptx::SplitTf32(y2[e], &h2[e], &l2[e]);
    }
    // Channels f .. and f + kHalf ..: their step's parts, their 16-byte chunk.
    const int f2 = f + kHalf;
    unsigned char* const p1 = stripe + f / kWgK * 2 * kWgPartBytes + Swizzle64(r, f % kWgK / 4);
    unsigned char* const p2 = stripe + f2 / kWgK * 2 * kWgPartBytes + Swizzle64(r, f2 % kWgK / 4);
    *reinterpret_cast<uint4*>(p1) = hi1;
    *reinterpret_cast<uint4*>(p1 + kWgPartBytes) = lo1;
    *reinterpret_cast<uint4*>(p2) = hi2;
    *reinterpret_cast<uint4*>(p2 + kWgPartBytes) = lo2;
  });
}

// The fp16 stripe: each row scaled by 2^shift (F16Split; the row's largest
// |value| before RoPE, over the kQuads lanes that hold it) and split into
// fp16 hi and lo parts (32 channels a step); row r's shift to q_shift[r].
template <int kHidden, typename Load>
__device__ __forceinline__ void RotateQStripeF16(const Load& load, int nb, int q_first, unsigned char* stripe,
                                                 int* q_shift) {
  constexpr int kHalf = kHidden / 2;
  constexpr int kQuads = QStripeItems<kHidden>::kQuads;
  constexpr int kStep = 32;  // fp16 channels a step
  static_assert(32 % kQuads == 0, "a row's items in aligned lanes of one warp");
  RotateQStripe<kHidden>(load, nb, q_first, [&](int r, int f, const float(&y1)[4], const float(&y2)[4], float m) {
#pragma unroll
    for (int off = kQuads / 2; off > 0; off /= 2) {
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    }
    const int shift = F16Shift(m);
    const float scale = Pow2(shift);
    if (f == 0) q_shift[r] = shift;
    uint2 hi1, lo1, hi2, lo2;
    SplitF16Pair(y1[0] * scale, y1[1] * scale, &hi1.x, &lo1.x);
    SplitF16Pair(y1[2] * scale, y1[3] * scale, &hi1.y, &lo1.y);
    SplitF16Pair(y2[0] * scale, y2[1] * scale, &hi2.x, &lo2.x);
    SplitF16Pair(y2[2] * scale, y2[3] * scale, &hi2.y, &lo2.y);
    // Channels f .. f + 3: half of a 16-byte chunk (8 channels).
    const int f2 = f + kHalf;
    unsigned char* const p1 = stripe + f / kStep * 2 * kWgPartBytes + Swizzle64(r, f % kStep / 8) + f % 8 * 2;
    unsigned char* const p2 = stripe + f2 / kStep * 2 * kWgPartBytes + Swizzle64(r, f2 % kStep / 8) + f2 % 8 * 2;
    *reinterpret_cast<uint2*>(p1) = hi1;
    *reinterpret_cast<uint2*>(p1 + kWgPartBytes) = lo1;
    *reinterpret_cast<uint2*>(p2) = hi2;
    *reinterpret_cast<uint2*>(p2 + kWgPartBytes) = lo2;
  });
}
#endif

template <int kSteps, typename TOp = float>
__global__ void __launch_bounds__(kSgemmThreads, 1)
    ScoresStripeKernel(const TOp* qp, const TOp* qp_lo, const TOp* kp, const TOp* kp_lo, const int32_t* k_shift,
                       const float* pooled_q, const float* rope, int heads, int nb, int head0, float scale, bool keys,
                       float* scores) {
  SEER_GATE_TRACE_CTA(5);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
#if defined(SEER_SM90A_ENABLED)
  constexpr bool kF16 = std::is_same_v<TOp, __half>;
  constexpr int kStepChannels = 64 / static_cast<int>(sizeof(TOp));  // a 64-byte row of a part
  constexpr int kChunk = 16 / static_cast<int>(sizeof(TOp));  // channels a 16-byte chunk
  constexpr int kHidden = kSteps * kStepChannels;
  constexpr int kStages = kStripeStages;
  constexpr int kAhead = kStages - 2;  // steps loaded ahead of the one computed
  static_assert(kSteps >= 1 && kHidden <= 128, "q' fits its shared memory");
  static_assert(!kF16 || (kF16ShiftSlots - 1) * kSteps >= kAhead,
                "a tile's k' shifts are read before the ring slot is refilled");
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t base = sm90::SmemAddr(wg_smem);
  const uint32_t a_smem = base + (1024u - base % 1024u) % 1024u;
  const uint32_t b_smem = a_smem + kSteps * 2 * kWgPartBytes;
  const uint32_t shift_smem = b_smem + kStages * kStripeStageBytes;  // fp16: q' rows' shifts, then the k' ring
  int* const q_shift = reinterpret_cast<int*>(wg_smem + (shift_smem - base));
  const int* const k_shift_ring = q_shift + kSgemmTile;
  const int row_tiles = (nb + kSgemmTile - 1) / kSgemmTile;
  const int qt = row_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest stripes first
  const int hl = static_cast<int>(blockIdx.x);
  const int64_t head = static_cast<int64_t>(head0 + hl) * nb * kHidden;
  const int32_t* const head_shift = kF16 ? k_shift + (head0 + hl) * StripeShiftPitch(nb) : nullptr;
  const int q_first = qt * kSgemmTile;
  // Both warpgroups run every step, also where all their rows are past nb
  // (zeros, not stored): a branch around the wgmmas would make ptxas
  // serialize them, and a second path with its own barriers is not allowed.
  const int wg = threadIdx.x / 128;
  const int total = (qt + 1) * kSteps;  // k' steps over key tiles 0 .. qt
  const int c = threadIdx.x % 4;  // this thread's chunk in rows r0 and r0 + 64
  const int r0 = threadIdx.x / 4;

  // Rows first .. first + 127 of src (hi) and src_lo, channels of step s,
  // into the two parts at dst; zeros past nb.
  auto copy_step = [&](const TOp* src, const TOp* src_lo, int first, int s, uint32_t dst) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int r = r0 + 64 * j;
      const int row = first + r;
      const bool valid = row < nb;
      const int64_t at = static_cast<int64_t>(row) * kHidden + s * kStepChannels + kChunk * c;
      const uint32_t off = Swizzle64(r, c);
      ptx::CpAsync16ZeroFill(dst + off, valid ? src + at : src, valid);
      ptx::CpAsync16ZeroFill(dst + kWgPartBytes + off, valid ? src_lo + at : src_lo, valid);
    }
  };
  // The q' stripe: copied, joining the first commit group; or, with
  // pooled_q, rotated and split here once the first k' steps are on their
  // way (below).
  if constexpr (!kF16) {
    if (pooled_q == nullptr) {
#pragma unroll
      for (int s = 0; s < kSteps; ++s) copy_step(qp + head, qp_lo + head, q_first, s, a_smem + s * 2 * kWgPartBytes);
    }
  }
  int load_u = 0, load_kt = 0, load_s = 0;  // the next k' step to load: step load_u = load_kt * kSteps + load_s
  auto load_next = [&] {  // one commit group a step, empty past the last
    if (load_u < total) {
      copy_step(kp + head, kp_lo + head, load_kt * kSgemmTile, load_s, b_smem + (load_u % kStages) * kStripeStageBytes);
      if constexpr (kF16) {
        // The tile's 128 shifts (512 bytes) with its first step.
        if (load_s == 0 && threadIdx.x < kSgemmTile / 4) {
          const int row = load_kt * kSgemmTile + 4 * static_cast<int>(threadIdx.x);
          const uint32_t dst = shift_smem + (1 + load_kt % kF16ShiftSlots) * kSgemmTile * 4 + 16 * threadIdx.x;
          ptx::CpAsync16ZeroFill(dst, row < nb ? head_shift + row : head_shift, row < nb);
        }
      }
      ++load_u;
      if (++load_s == kSteps) {
        load_s = 0;
        ++load_kt;
      }
    }
    ptx::CpAsyncCommit();
  };
#pragma unroll
  for (int u = 0; u < kAhead; ++u) load_next();
  if (pooled_q != nullptr) {
    unsigned char* const stripe = wg_smem + (a_smem - base);
    const QStripeFromGlobal<kHidden> load{pooled_q, rope, heads, head0 + hl, nb, q_first};
    if constexpr (kF16) {
      RotateQStripeF16<kHidden>(load, nb, q_first, stripe, q_shift);
    } else {
      RotateQStripeTf32<kHidden>(load, nb, q_first, stripe);
    }
  }

  // d[4j + 2hh + e]: row 16 (warp in the warpgroup) + g + 8hh, column 8j + 2t + e.
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  float* out = scores + static_cast<int64_t>(hl) * nb * nb;
  const bool pairs = nb % 2 == 0;  // float2 stores stay 8-byte aligned
  float acc[64];
  for (int kt = 0; kt <= qt; ++kt) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int u = kt * kSteps + s;
      ptx::CpAsyncWait<kAhead - 1>();  // this thread's copies of step u (and of q') landed
      sm90::FenceProxyAsync();  // and are seen by wgmma's reads
      if (s > 0) sm90::WgmmaWait<1>();  // step u - 2's products are done (the tile before ended with all done)...
      __syncthreads();  // ...in both warpgroups, so its stage may be refilled; step u is in
      load_next();
      const uint32_t a = a_smem + s * 2 * kWgPartBytes + wg * 64 * 64;  // the warpgroup's 64 rows of q'
      const uint32_t b = b_smem + (u % kStages) * kStripeStageBytes;
      sm90::WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const uint32_t k_off = kk * 32;  // 8 tf32 or 16 fp16 channels
        const uint64_t a_hi = sm90::MatrixDesc(a + k_off, 16, 512, 64);
        const uint64_t a_lo = sm90::MatrixDesc(a + kWgPartBytes + k_off, 16, 512, 64);
        const uint64_t b_hi = sm90::MatrixDesc(b + k_off, 16, 512, 64);
        const uint64_t b_lo = sm90::MatrixDesc(b + kWgPartBytes + k_off, 16, 512, 64);
        using Mma = std::conditional_t<kF16, sm90::WgmmaSSF16<128>, sm90::WgmmaSSTf32<128>>;
        Mma::Run(acc, a_lo, b_hi, s > 0 || kk > 0);  // a tile's first product starts it
        Mma::Run(acc, a_hi, b_lo, 1);
        Mma::Run(acc, a_hi, b_hi, 1);
      }
      sm90::WgmmaCommit();
    }
    sm90::WgmmaWait<0>();
    sm90::FenceRegs(acc);
    // Key tile kt's scores out, while the next steps load.
    const int k_first = kt * kSgemmTile;
    const int* const tile_shift = k_shift_ring + kt % kF16ShiftSlots * kSgemmTile;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = 64 * wg + 16 * (threadIdx.x / 32 % 4) + g + 8 * hh;
      const int qb = q_first + r;
      if (qb >= nb) continue;
      // fp16: the exponent bits of 2^-shift_q (shift_k << 23 is subtracted
      // per column); |shift_q + shift_k| <= 120, a normal float.
      const int row_bits = kF16 ? (127 - q_shift[r]) << 23 : 0;
      float* orow = out + static_cast<int64_t>(qb) * nb;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int kb = k_first + 8 * j + 2 * t;
        float a0 = acc[4 * j + 2 * hh];
        float a1 = acc[4 * j + 2 * hh + 1];
        if constexpr (kF16) {
          const int2 col_bits = *reinterpret_cast<const int2*>(tile_shift + 8 * j + 2 * t);
          a0 *= __int_as_float(row_bits - col_bits.x);  // a power of two: exact where the score is a normal float
          a1 *= __int_as_float(row_bits - col_bits.y);
        }
        float v0 = a0 * scale;
        float v1 = a1 * scale;
        if (keys) {
          v0 = __uint_as_float(OrderKey(v0));
          v1 = __uint_as_float(OrderKey(v1));
        }
        StoreScorePair(orow, qb, kb, v0, v1, pairs);
      }
    }
  }
#endif
}

// --- the fp16 stripes with copy-engine loads and stores (sm_90a, hidden 128) ---
// ScoresStripeTmaKernel computes what ScoresStripeKernel<4, __half> computes,
// with the same wgmma products in the same order (so the same scores, bit
// for bit); the copies move to the copy engine:
// - a producer warp (threads 256 .. 287; lane 0 works) brings each k' step
//   (128 rows x 32 channels, hi and lo parts, 64-byte swizzle) with two TMA
//   copies into a ring of kTmaStripeStages stages, and each key tile's 128
//   shifts with a bulk copy into a ring of kTmaShiftSlots, all completing on
//   the stage's full barrier; the consumers free a stage through its empty
//   barrier (one lane a warp) once their wgmmas on it are done. No CTA
//   barrier runs in the loop.
// - the stripe's q' inputs come the same way: before the first k' step the
//   producer copies the stripe's 128 pooled Q rows (one TMA box, 64 KB)
//   into the staging buffers and the cos and sin of its blocks (two bulk
//   copies) into ring stages 1-4, and the consumers rotate q' from shared
//   memory (the lockstep kernel's threads load theirs from global memory,
//   four items at a time: 151.7 -> 148.2 us under ncu at 128k tokens,
//   H200, 2026-12-02). The ring's steps from the second on wait until the
//   angles are read.
// - where the score rows are 16-byte aligned (nb % 4 == 0), each consumer
//   warpgroup writes its 64 x 128 scores of a tile into shared memory (four
//   32-column boxes, the 128-byte swizzle) and one thread stores them with
//   TMA: whole 128-byte lines instead of 8-byte stores from every thread.
//   The tile on the diagonal is stored whole; the scores above the diagonal
//   it writes are never read (the select copies a row's qb + 1 causal
//   scores). Elsewhere the threads store their pairs, as the lockstep
//   kernel does.
// - the epilogue scales (and keys) a tile's 64 scores a thread in place in
//   straight-line code, then stores them in one of three loops chosen once
//   a tile: no branch a pair, so the 32 pairs' chains interleave. It
//   multiplies by 2^-(shift_q + shift_k) * scale in one product (exactly
//   the old two when the score is a normal float).
constexpr int kTmaStripeSteps = kPrHidden / 32;  // 32 fp16 channels a step
constexpr int kTmaStripeStages = 5;
constexpr int kTmaShiftSlots = 3;
constexpr int kTmaStripeThreads = kSgemmThreads + 32;
constexpr int kTmaStripeOutBytes = 64 * kSgemmTile * 4;  // a warpgroup's 64 rows x 128 scores
// A tile's shifts are refilled when the producer starts tile kt + slots,
// after both warpgroups freed step 4 (kt + slots) - stages, which lies in a
// tile after kt's (whose epilogue both have then left), when:
static_assert(kTmaStripeSteps * (kTmaShiftSlots - 1) >= kTmaStripeStages, "shift slots outlive their tiles");

struct StripeMaps {
  CUtensorMap hi;  // k' hi parts, [heads][nb][128] fp16, box (32, 128, 1)
  CUtensorMap lo;
  CUtensorMap q;  // the pooled Q, [nb][heads][128] fp32, box (128, 1, 128)
  CUtensorMap scores;  // the pass's scores, [heads][nb][nb] fp32, box (32, 64, 1); unused when !tma_store
};

constexpr size_t TmaStripeSmemBytes() {
  return 1024 + kTmaStripeSteps * 2 * kWgPartBytes + kTmaStripeStages * kStripeStageBytes + 2 * kTmaStripeOutBytes +
         (1 + kTmaShiftSlots) * kSgemmTile * 4 + (2 * kTmaStripeStages + 2) * 8;
}

[[maybe_unused]] __device__ __forceinline__ void NamedBarSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__global__ void __launch_bounds__(kTmaStripeThreads, 1)
    ScoresStripeTmaKernel(const __grid_constant__ StripeMaps maps, const int32_t* k_shift, const float* rope, int nb,
                          int head0, float scale, bool keys, bool tma_store, float* scores) {
  SEER_GATE_TRACE_CTA(5);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
#if defined(SEER_SM90A_ENABLED)
  constexpr int kSteps = kTmaStripeSteps;
  constexpr int kStages = kTmaStripeStages;
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t base = sm90::SmemAddr(wg_smem);
  const uint32_t a_smem = base + (1024u - base % 1024u) % 1024u;  // q': hi, lo of each step
  const uint32_t b_smem = a_smem + kSteps * 2 * kWgPartBytes;  // the k' ring
  const uint32_t out_smem = b_smem + kStages * kStripeStageBytes;  // each warpgroup's scores of a tile
  const uint32_t shift_smem = out_smem + 2 * kTmaStripeOutBytes;  // q' rows' shifts, then the k' shift ring
  // full[kStages], empty[kStages], q_full, q_free
  const uint32_t bars = shift_smem + (1 + kTmaShiftSlots) * kSgemmTile * 4;
  int* const q_shift = reinterpret_cast<int*>(wg_smem + (shift_smem - base));
  const int* const k_shift_ring = q_shift + kSgemmTile;
  auto full = [&](int stage) { return bars + 8 * stage; };
  auto empty = [&](int stage) { return bars + 8 * (kStages + stage); };
  const uint32_t q_full = bars + 8 * 2 * kStages;
  const uint32_t q_free = q_full + 8;
  // The stripe's pooled Q rows come into the staging buffers, the cos and
  // sin of its blocks into ring stages 1-2 and 3-4 (step 0 loads into stage
  // 0 meanwhile); the ring's later steps wait until q' is made.
  static_assert(kStages >= 5 && 2 * kTmaStripeOutBytes >= kSgemmTile * kPrHidden * 4 &&
                    2 * kStripeStageBytes >= kSgemmTile * kPrHidden / 2 * 4,
                "the stripe's inputs fit where they are copied");
  const uint32_t q_in = out_smem;
  const uint32_t cos_in = b_smem + kStripeStageBytes;
  const uint32_t sin_in = b_smem + 3 * kStripeStageBytes;
  const int row_tiles = (nb + kSgemmTile - 1) / kSgemmTile;
  const int qt = row_tiles - 1 - static_cast<int>(blockIdx.y);  // the longest stripes first
  const int hl = static_cast<int>(blockIdx.x);
  const int q_first = qt * kSgemmTile;
  const int total = (qt + 1) * kSteps;
  const int rows = min(kSgemmTile, nb - q_first);  // the stripe's rows below nb
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::MbarInit(full(s), 1);  // the producer's arrive + the bytes
      sm90::MbarInit(empty(s), 2 * 4);  // one lane per consumer warp
    }
    sm90::MbarInit(q_full, 1);
    sm90::MbarInit(q_free, 1);
    sm90::FenceBarrierInit();
  }
  __syncthreads();

  if (threadIdx.x >= kSgemmThreads) {  // the producer warp
    if (threadIdx.x == kSgemmThreads) {
      sm90::PrefetchTensorMap(&maps.q);
      sm90::PrefetchTensorMap(&maps.hi);
      sm90::PrefetchTensorMap(&maps.lo);
      // The box's rows past nb come as zeros and count as bytes.
      const uint32_t angle_bytes = rows * (kPrHidden / 2) * 4;
      sm90::MbarArriveExpectTx(q_full, kSgemmTile * kPrHidden * 4 + 2 * angle_bytes);
      sm90::TmaLoad3d(q_in, &maps.q, q_full, 0, head0 + hl, q_first);
      sm90::BulkLoad(cos_in, rope + static_cast<int64_t>(q_first) * (kPrHidden / 2), angle_bytes, q_full);
      sm90::BulkLoad(sin_in, rope + static_cast<int64_t>(nb + q_first) * (kPrHidden / 2), angle_bytes, q_full);
      const int32_t* const head_shift = k_shift + (head0 + hl) * StripeShiftPitch(nb);
      for (int u = 0; u < total; ++u) {
        const int stage = u % kStages;
        const int kt = u / kSteps;
        const int s = u % kSteps;
        if (u == 1) sm90::MbarWait(q_free, 0);  // the angles are read out of stages 1-4
        if (u >= kStages) sm90::MbarWait(empty(stage), (u / kStages - 1) & 1);
        const uint32_t dst = b_smem + stage * kStripeStageBytes;
        sm90::MbarArriveExpectTx(full(stage), kStripeStageBytes + (s == 0 ? kSgemmTile * 4 : 0));
        sm90::TmaLoad3d(dst, &maps.hi, full(stage), s * 32, kt * kSgemmTile, head0 + hl);
        sm90::TmaLoad3d(dst + kWgPartBytes, &maps.lo, full(stage), s * 32, kt * kSgemmTile, head0 + hl);
        if (s == 0) {  // the tile's 128 shifts (the pitch pads each head to whole tiles)
          sm90::BulkLoad(shift_smem + (1 + kt % kTmaShiftSlots) * kSgemmTile * 4, head_shift + kt * kSgemmTile,
                         kSgemmTile * 4, full(stage));
        }
      }
    }
    return;
  }

  // The q' stripe, rotated and split by the 256 consumer threads from the
  // copies in shared memory.
  sm90::MbarWait(q_full, 0);
  const QStripeFromShared<kPrHidden> load{reinterpret_cast<const float*>(wg_smem + (q_in - base)),
                                          reinterpret_cast<const float*>(wg_smem + (cos_in - base)),
                                          reinterpret_cast<const float*>(wg_smem + (sin_in - base)), rows};
  RotateQStripeF16<kPrHidden>(load, nb, q_first, wg_smem + (a_smem - base), q_shift);
  sm90::FenceProxyAsync();  // the generic writes, before wgmma reads them
  NamedBarSync(1, kSgemmThreads);
  if (threadIdx.x == 0) sm90::MbarArrive(q_free);  // every consumer has read the angles

  const int wg = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const bool storer = threadIdx.x % 128 == 0;  // issues the warpgroup's TMA stores
  const int rw0 = 16 * (threadIdx.x / 32 % 4) + g;  // the thread's rows in the warpgroup's 64: rw0, rw0 + 8
  float* out = scores + static_cast<int64_t>(hl) * nb * nb;
  const bool pairs = nb % 2 == 0;  // float2 stores stay 8-byte aligned
  const uint32_t a = a_smem + wg * 64 * 64;  // the warpgroup's 64 rows of q'
  const uint32_t staged = out_smem + wg * kTmaStripeOutBytes;
  if (tma_store && storer) sm90::PrefetchTensorMap(&maps.scores);
  float acc[64];
  for (int kt = 0; kt <= qt; ++kt) {
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int u = kt * kSteps + s;
      const int stage = u % kStages;
      sm90::MbarWait(full(stage), (u / kStages) & 1);
      const uint32_t b = b_smem + stage * kStripeStageBytes;
      sm90::WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const uint32_t k_off = kk * 32;  // 16 fp16 channels
        const uint64_t a_hi = sm90::MatrixDesc(a + s * 2 * kWgPartBytes + k_off, 16, 512, 64);
        const uint64_t a_lo = sm90::MatrixDesc(a + s * 2 * kWgPartBytes + kWgPartBytes + k_off, 16, 512, 64);
        const uint64_t b_hi = sm90::MatrixDesc(b + k_off, 16, 512, 64);
        const uint64_t b_lo = sm90::MatrixDesc(b + kWgPartBytes + k_off, 16, 512, 64);
        using Mma = sm90::WgmmaSSF16<128>;
        Mma::Run(acc, a_lo, b_hi, s > 0 || kk > 0);  // a tile's first product starts it
        Mma::Run(acc, a_hi, b_lo, 1);
        Mma::Run(acc, a_hi, b_hi, 1);
      }
      sm90::WgmmaCommit();
      if (s > 0) {
        sm90::WgmmaWait<1>();  // step u - 1's products are done: its stage may be refilled
        if (lane == 0) sm90::MbarArrive(empty((u - 1) % kStages));
      }
    }
    sm90::WgmmaWait<0>();
    sm90::FenceRegs(acc);
    if (lane == 0) sm90::MbarArrive(empty(((kt + 1) * kSteps - 1) % kStages));

    // Key tile kt's scores out: first scaled (and keyed) in place, in
    // straight-line code, then stored by one of three loops, chosen once.
    const int k_first = kt * kSgemmTile;
    const int* const tile_shift = k_shift_ring + kt % kTmaShiftSlots * kSgemmTile;
    // scale * 2^-shift_q of the thread's two rows as float bits; shift_k <<
    // 23 comes off per column (|shift_q + shift_k| <= 120: a normal float,
    // and a * 2^-(shift_q + shift_k) * scale rounds once, as a * 2^-(...)
    // (exact) times scale did).
    int row_bits[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) row_bits[hh] = __float_as_int(scale) - (q_shift[64 * wg + rw0 + 8 * hh] << 23);
    auto scale_tile = [&](auto keyed) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int2 col_bits = *reinterpret_cast<const int2*>(tile_shift + 8 * j + 2 * t);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          float v0 = acc[4 * j + 2 * hh] * __int_as_float(row_bits[hh] - col_bits.x);
          float v1 = acc[4 * j + 2 * hh + 1] * __int_as_float(row_bits[hh] - col_bits.y);
          if constexpr (decltype(keyed)::value) {
            v0 = __uint_as_float(OrderKey(v0));
            v1 = __uint_as_float(OrderKey(v1));
          }
          acc[4 * j + 2 * hh] = v0;
          acc[4 * j + 2 * hh + 1] = v1;
        }
      }
    };
    if (keys) {
      scale_tile(std::true_type{});
    } else {
      scale_tile(std::false_type{});
    }
    if (tma_store) {
      if (kt > 0) {  // the tile before has been read out of the staging buffer
        if (storer) sm90::BulkWaitRead<0>();
        NamedBarSync(2 + wg, 128);
      }
      // Box j / 4 (columns 32 (j / 4) ..) of 128-byte rows; row rw's 16-byte
      // chunk 2 (j % 4) + t / 2 at its swizzled place (chunk ^ rw % 8, and
      // rw % 8 == g).
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const uint32_t row_at = staged + (rw0 + 8 * hh) * 128 + (t % 2) * 8;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const uint32_t at = row_at + (j / 4) * (64 * 128) + (((2 * (j % 4) + t / 2) ^ g) << 4);
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(at), "f"(acc[4 * j + 2 * hh]),
                       "f"(acc[4 * j + 2 * hh + 1])
                       : "memory");
        }
      }
      sm90::FenceProxyAsync();  // the staged scores, before the copy engine reads them
      NamedBarSync(2 + wg, 128);
      if (storer) {
#pragma unroll
        for (int box = 0; box < 4; ++box) {
          sm90::TmaStore3d(&maps.scores, staged + box * (64 * 128), k_first + 32 * box, q_first + 64 * wg, hl);
        }
        sm90::BulkCommit();
      }
    } else {
      const bool below = kt < qt && pairs;  // every pair of the tile is stored, 8-byte aligned
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int qb = q_first + 64 * wg + rw0 + 8 * hh;
        if (qb >= nb) continue;
        float* orow = out + static_cast<int64_t>(qb) * nb + k_first + 2 * t;
        if (below) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            *reinterpret_cast<float2*>(orow + 8 * j) = make_float2(acc[4 * j + 2 * hh], acc[4 * j + 2 * hh + 1]);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            StoreScorePair(orow - k_first - 2 * t, qb, k_first + 8 * j + 2 * t, acc[4 * j + 2 * hh],
                           acc[4 * j + 2 * hh + 1], pairs);
          }
        }
      }
    }
    sm90::FenceProxyAsync();  // the shift slot's reads, before a copy refills it
  }
  if (tma_store && storer) sm90::BulkWait<0>();  // stored, and the staging buffer read, before the CTA ends
#endif
}

// ScoresStripeKernel on tf32 for hidden = kWgK * steps, steps <= kStripeMaxSteps.
using StripeKernelFn = void (*)(const float*, const float*, const float*, const float*, const int32_t*, const float*,
                                const float*, int, int, int, float, bool, float*);
StripeKernelFn StripeKernelFor(int steps) {
  switch (steps) {
    case 1: return ScoresStripeKernel<1>;
    case 2: return ScoresStripeKernel<2>;
    case 3: return ScoresStripeKernel<3>;
    case 4: return ScoresStripeKernel<4>;
    case 5: return ScoresStripeKernel<5>;
    case 6: return ScoresStripeKernel<6>;
    case 7: return ScoresStripeKernel<7>;
    case 8: return ScoresStripeKernel<8>;
    default: return nullptr;
  }
}

// --- projection and RoPE on tensor cores (3xTF32), the unfused gate ---------
// At hidden 128: one CTA a 128-row tile of one linear (grid (row tiles, 1,
// Hq * linears), as ProjectSgemmKernel), all 128 output columns, products as
// in ScoresTf32Kernel; W comes in [channel][column] slabs (kTcWPitch: the
// fragment reads hit 32 banks). The tile then goes through shared memory so
// that each output column f < 64 meets its rotary partner f + 64, and is
// written rotated (BlockRopePair, the RoPE table's angles), so k' (and q' with
// mask_linear_q) needs no RoPE pass. Needs the input width % 4 == 0 and
// 16-byte aligned weights.
constexpr int kTcWPitch = kPrHidden + 8;
constexpr int kTcOutPitch = kPrHidden + 4;

// Channels [c0, c0 + kTcK) of W ([in][kPrHidden] floats) into dst
// [kTcK][kTcWPitch] by kThreads threads; channels past `in` as zeros.
template <int kThreads>
__device__ __forceinline__ void LoadTcWSlab(const float* w, int in, int c0, float* dst) {
  static_assert(kTcK * kPrHidden / 4 % kThreads == 0, "whole chunks a thread");
#pragma unroll
  for (int j = 0; j < kTcK * kPrHidden / 4 / kThreads; ++j) {
    const int f = static_cast<int>(threadIdx.x) + j * kThreads;
    const int k = f / (kPrHidden / 4);
    const int c = 4 * (f % (kPrHidden / 4));
    const bool valid = c0 + k < in;
    ptx::CpAsync16ZeroFill(ptx::SmemAddr(dst + k * kTcWPitch + c),
                           valid ? w + static_cast<int64_t>(c0 + k) * kPrHidden + c : w, valid);
  }
}
constexpr int kTcProjectStageFloats = kSgemmTile * kTcPitch + kTcK * kTcWPitch;
constexpr size_t kTcProjectSmemBytes = kTcStages * kTcProjectStageFloats * sizeof(float);
static_assert(kSgemmTile * kTcOutPitch <= kTcStages * kTcProjectStageFloats, "the output tile reuses the stages");

// Rows m0 .. m0 + 127 (those below nb) of one head's projection from `tile`
// ([128][kTcOutPitch], shared memory), rotated: column f < 64 meets its
// rotary partner f + 64 here (BlockRopePair, the RoPE table's angles), and
// store(r, f, y1, y2) writes tile row r's rotated columns f and f + 64. A thread
// keeps one frequency f and takes every kRowStep-th row, and loads the cos
// and sin of kBatch rows before it uses any: one element at a time, each
// waiting on its two table loads, this loop was a third of the projection
// kernel's time (ncu at 8k tokens, H200, 2026-11-30).
template <typename Store>
__device__ __forceinline__ void RotateTileRows(const float* tile, const float* rope, int nb, int m0, Store store) {
  constexpr int kHalf = kPrHidden / 2;
  constexpr int kRowStep = kSgemmThreads / kHalf;
  constexpr int kBatch = 8;
  static_assert(kSgemmThreads % kHalf == 0 && kSgemmTile % (kRowStep * kBatch) == 0, "whole batches of rows");
  const int f = static_cast<int>(threadIdx.x) % kHalf;
  const int rows = min(kSgemmTile, nb - m0);
  for (int r0 = static_cast<int>(threadIdx.x) / kHalf; r0 < rows; r0 += kRowStep * kBatch) {
    float c[kBatch], sn[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int64_t b = min(m0 + r0 + j * kRowStep, nb - 1);  // past the tile: a row that exists, not used
      c[j] = rope[b * kHalf + f];
      sn[j] = rope[(nb + b) * kHalf + f];
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int r = r0 + j * kRowStep;
      if (r >= rows) break;
      float y1, y2;
      BlockRopePair(tile[r * kTcOutPitch + f], tile[r * kTcOutPitch + f + kHalf], c[j], sn[j], &y1, &y2);
      store(r, f, y1, y2);
    }
  }
}

// RotateTileRows to out [nb][kPrHidden], split into out and out_lo where
// that is not null.
__device__ __forceinline__ void StoreRotatedTile(const float* tile, const float* rope, int nb, int m0, float* out,
                                                 float* out_lo) {
  constexpr int kHalf = kPrHidden / 2;
  RotateTileRows(tile, rope, nb, m0, [&](int r, int f, float y1, float y2) {
    const int64_t b = m0 + r;
    float* dst = out + b * kPrHidden;
    float* lo = out_lo != nullptr ? out_lo + b * kPrHidden : nullptr;
    StoreMaybeSplit(y1, &dst[f], lo != nullptr ? &lo[f] : nullptr);
    StoreMaybeSplit(y2, &dst[f + kHalf], lo != nullptr ? &lo[f + kHalf] : nullptr);
  });
}

// RotateTileRows as the fp16 stripes read k' (F16Split): each row scaled by
// 2^shift, its shift from the row's largest |value| before RoPE, and split
// into fp16 hi (out) and lo (out_lo) parts, [nb][kPrHidden] each; the row's
// shift goes to shift_out[row] as shift << 23 (the stripes subtract it from
// a float's exponent bits), for all 128 rows of the tile (StripeShiftPitch
// pads each head to whole tiles). row_shift: 128 ints of shared memory.
[[maybe_unused]] __device__ __forceinline__ void StoreRotatedTileF16(const float* tile, int* row_shift,
                                                                     const float* rope, int nb, int m0, __half* out,
                                                                     __half* out_lo, int32_t* shift_out) {
  constexpr int kHalf = kPrHidden / 2;
  static_assert(kSgemmThreads == 2 * kSgemmTile, "two threads a row");
  const int rows = min(kSgemmTile, nb - m0);
  {
    const int r = static_cast<int>(threadIdx.x) / 2;
    float m = 0.0f;
    if (r < rows) {
      const float4* x = reinterpret_cast<const float4*>(tile + r * kTcOutPitch + kHalf * (threadIdx.x % 2));
#pragma unroll
      for (int i = 0; i < kHalf / 4; ++i) {
        const float4 v = x[i];
        m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
      }
    }
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    if (threadIdx.x % 2 == 0) {
      const int shift = F16Shift(m);  // rows past nb: 0, written too (the stripes copy whole tiles of shifts)
      row_shift[r] = shift;
      shift_out[m0 + r] = shift * (1 << 23);
    }
  }
  __syncthreads();
  RotateTileRows(tile, rope, nb, m0, [&](int r, int f, float y1, float y2) {
    const float scale = Pow2(row_shift[r]);
    uint32_t hi, lo;
    SplitF16Pair(y1 * scale, y2 * scale, &hi, &lo);
    const int64_t at = static_cast<int64_t>(m0 + r) * kPrHidden + f;
    out[at] = __ushort_as_half(static_cast<unsigned short>(hi));
    out[at + kHalf] = __ushort_as_half(static_cast<unsigned short>(hi >> 16));
    out_lo[at] = __ushort_as_half(static_cast<unsigned short>(lo));
    out_lo[at + kHalf] = __ushort_as_half(static_cast<unsigned short>(lo >> 16));
  });
}

// Without kWLo the weights are tf32 (GateParams::weights_tf32): their lo
// products are skipped (a template argument: as a runtime flag it cost
// ptxas 20 more bytes of spills).
template <bool kWLo>
__global__ void __launch_bounds__(kSgemmThreads, 2)
    ProjectRopeTf32Kernel(GateParams p, int nb, const float* pooled_q, const float* pooled_k, const float* rope,
                          float* qp, float* kp, float* qp_lo, float* kp_lo) {
  ChainedKernelStart();
  extern __shared__ __align__(16) float tc_smem[];  // [stage][x [128][kTcPitch], w [kTcK][kTcWPitch]]
  const ProjectOperands o = GetProjectOperands(p, blockIdx.z, pooled_q, pooled_k);
  const int m0 = blockIdx.x * kSgemmTile;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int wr = 64 * (warp / 4);
  const int wc = 32 * (warp % 4);
  const bool busy = m0 + wr < nb;

  float acc[4][4][4] = {};
  const int steps = (o.in + kTcK - 1) / kTcK;
  auto load = [&](int s) {  // one commit group a step, empty past the last
    if (s >= steps) {
      ptx::CpAsyncCommit();
      return;
    }
    float* st = tc_smem + (s % kTcStages) * kTcProjectStageFloats;
    LoadTcSlab(o.x, o.x_row, m0, nb, o.in, s * kTcK, st);
    LoadTcWSlab<kSgemmThreads>(o.w, o.in, s * kTcK, st + kSgemmTile * kTcPitch);
    ptx::CpAsyncCommit();
  };
  for (int s = 0; s < kTcStages - 1; ++s) load(s);
  for (int s = 0; s < steps; ++s) {
    ptx::CpAsyncWait<kTcStages - 2>();
    __syncthreads();  // step s landed for every thread; step s - 1's stage is free
    load(s + kTcStages - 1);
    if (busy) {
      const float* xs = tc_smem + (s % kTcStages) * kTcProjectStageFloats;
      const float* ws = xs + kSgemmTile * kTcPitch;
#pragma unroll
      for (int kk = 0; kk < kTcK; kk += 8) {
        uint32_t bh[4][2], bl[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float* b = ws + (kk + t) * kTcWPitch + wc + 8 * nt + g;
          ptx::SplitTf32(b[0], &bh[nt][0], &bl[nt][0]);
          ptx::SplitTf32(b[4 * kTcWPitch], &bh[nt][1], &bl[nt][1]);
        }
        Tf32MmaTiles(xs, wr, kk, bh, bl, acc, true, kWLo);
      }
    }
  }
  ptx::CpAsyncWait<0>();  // only empty groups are left; the output tile reuses the stages
  __syncthreads();

  float* tile = tc_smem;  // [128][kTcOutPitch]
  if (busy) {
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float* row = tile + (wr + 16 * mt + g + 8 * half) * kTcOutPitch + wc + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          *reinterpret_cast<float2*>(row + 8 * nt) = make_float2(acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
        }
      }
    }
  }
  __syncthreads();
  float* out_lo = o.is_k ? kp_lo : qp_lo;
  const int64_t head = static_cast<int64_t>(o.h) * nb * kPrHidden;
  StoreRotatedTile(tile, rope, nb, m0, (o.is_k ? kp : qp) + head, out_lo != nullptr ? out_lo + head : nullptr);
}

// --- projection and RoPE on tensor cores, the fused gate --------------------
// The fused gate's projection at hidden 128 (ProjectRopeKernel's job) on
// mma.sync 3xTF32, as ProjectRopeTf32Kernel computes a product, but in
// small CTAs: 16 kMt rows of one linear and head a CTA (grid as
// ProjectRopeKernel's), four warps. Warp w takes the column tiles 16w,
// 16w + 8, 64 + 16w and 64 + 16w + 8, so that each output column f < 64
// and its rotary partner f + 64 sit in the same register of one thread and
// the rotation happens there. x and W come through a ring of kStages slabs
// of kTcK channels by cp.async. The pooled K's max and min (channels below
// 2D) are K's bf16/fp16 values, exact in tf32, so their lo products are
// zero and are skipped. The products round differently from the SIMT
// kernel's fmaf chain (a float product within float rounding), so the
// lists can differ from the SIMT gate's at the decision boundary only.
// One m-tile (16 rows) a CTA and four stages (three slabs in flight, 79 KB):
// at 8k tokens (H200, 2026-11-30, gate traces) 32 rows a CTA, or six or
// eight stages (one CTA an SM then), ended the projection no earlier.
constexpr int kMmaProjectTiles = 1;
constexpr int kMmaProjectStages = 4;

template <int kMt, int kStages>
struct MmaProjectShape {
  static constexpr int kRows = 16 * kMt;
  static constexpr int kThreads = 128;
  static constexpr int kStageFloats = kRows * kTcPitch + kTcK * kTcWPitch;
  static constexpr size_t kSmemBytes = sizeof(float) * kStages * kStageFloats;
};

template <int kMt, int kStages>
__global__ void __launch_bounds__(128)
    ProjectRopeMmaKernel(GateParams p, int nb, const float* pooled_q, const float* pooled_k, const float* rope,
                         float* qp, float* kp) {
  SEER_GATE_TRACE_CTA(2);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
  using Shape = MmaProjectShape<kMt, kStages>;
  constexpr int kRows = Shape::kRows;
  constexpr int kHalf = kPrHidden / 2;
  extern __shared__ __align__(16) float mma_smem[];  // [stage][x [kRows][kTcPitch], w [kTcK][kTcWPitch]]
  const ProjectOperands o = GetProjectOperands(p, blockIdx.y, pooled_q, pooled_k);
  const int m0 = blockIdx.x * kRows;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // Column tile nt: 16 warp + 8 nt (nt < 2), its rotary partners 64 above.
  auto col0 = [&](int nt) { return 16 * warp + 8 * (nt % 2) + kHalf * (nt / 2); };
  // The pooled K's average (channels from 2D) has a lo part; max and min not.
  const int lo_from = o.is_k ? 2 * p.head_dim : 0;
  const int steps = (o.in + kTcK - 1) / kTcK;
  auto load = [&](int s) {  // one commit group a step, empty past the last
    if (s < steps) {
      float* xs = mma_smem + (s % kStages) * Shape::kStageFloats;
      float* ws = xs + kRows * kTcPitch;
      LoadTcSlab<kRows, Shape::kThreads>(o.x, o.x_row, m0, nb, o.in, s * kTcK, xs);
      LoadTcWSlab<Shape::kThreads>(o.w, o.in, s * kTcK, ws);
    }
    ptx::CpAsyncCommit();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load(s);
  float acc[kMt][4][4] = {};
  for (int s = 0; s < steps; ++s) {
    ptx::CpAsyncWait<kStages - 2>();
    __syncthreads();  // step s landed for every thread; step s - 1's stage is free
    load(s + kStages - 1);
    const float* xs = mma_smem + (s % kStages) * Shape::kStageFloats;
    const float* ws = xs + kRows * kTcPitch;
    const bool a_lo = (s + 1) * kTcK > lo_from;  // some channel of the step has an A lo part
#pragma unroll
    for (int kk = 0; kk < kTcK; kk += 8) {
      uint32_t bh[4][2], bl[4][2];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const float* b = ws + (kk + t) * kTcWPitch + col0(nt) + g;
        ptx::SplitTf32(b[0], &bh[nt][0], &bl[nt][0]);
        ptx::SplitTf32(b[4 * kTcWPitch], &bh[nt][1], &bl[nt][1]);
      }
      Tf32MmaTiles(xs, 0, kk, bh, bl, acc, a_lo, !p.weights_tf32);
    }
  }
  ptx::CpAsyncWait<0>();  // only empty groups are left

  // acc[mt][nt][2 h + e]: row 16 mt + g + 8 h, column col0(nt) + 2 t + e;
  // nt and nt + 2 hold a rotary pair.
  float* out = (o.is_k ? kp : qp) + static_cast<int64_t>(o.h) * nb * kPrHidden;
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + 16 * mt + g + 8 * h;
      if (row >= nb) continue;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int f = col0(nt) + 2 * t;
        const float2 cs = *reinterpret_cast<const float2*>(rope + static_cast<int64_t>(row) * kHalf + f);
        const float2 sn = *reinterpret_cast<const float2*>(rope + static_cast<int64_t>(nb + row) * kHalf + f);
        float y1[2], y2[2];
        BlockRopePair(acc[mt][nt][2 * h], acc[mt][nt + 2][2 * h], cs.x, sn.x, &y1[0], &y2[0]);
        BlockRopePair(acc[mt][nt][2 * h + 1], acc[mt][nt + 2][2 * h + 1], cs.y, sn.y, &y1[1], &y2[1]);
        float* dst = out + static_cast<int64_t>(row) * kPrHidden + f;
        *reinterpret_cast<float2*>(dst) = make_float2(y1[0], y1[1]);
        *reinterpret_cast<float2*>(dst + kHalf) = make_float2(y2[0], y2[1]);
      }
    }
  }
}

// --- projection and RoPE on Hopper's wgmma (3xTF32), the unfused gate -------
// k' as ProjectRopeTf32Kernel computes it (128-row tiles, all 128 columns,
// the same three products a float product), on the wgmma main loop
// (WgmmaTf32Tile). tf32 wgmma reads both operands K-major and split, so A is the pooled
// K rows, split by the pool (pooled_k, pooled_k_lo), and B is W transposed
// to [column][channel] and split by SplitTransposeKernel. K only (no
// mask_linear_q, so D == hidden == kPrHidden); needs sm_90a. grid (row
// tiles, 1, Hq). k' goes out as the fp16 stripes read it
// (StoreRotatedTileF16: fp16 hi and lo parts and each row's shift), the only
// scores kernel that runs after this one (since 2026-12-01). Without kWLo
// the weights are tf32 (GateParams::weights_tf32): W's lo part is neither
// read nor multiplied.
template <bool kWLo>
__global__ void __launch_bounds__(kSgemmThreads, 1)
    ProjectRopeWgmmaKernel(GateParams p, int nb, const float* pooled_k, const float* pooled_k_lo, const float* wt,
                           const float* rope, __half* kp, __half* kp_lo, int32_t* k_shift) {
  SEER_GATE_TRACE_CTA(2);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
#if defined(SEER_SM90A_ENABLED)
  extern __shared__ __align__(16) unsigned char wg_smem[];
  const uint32_t base = sm90::SmemAddr(wg_smem);
  const uint32_t smem_addr = base + (1024u - base % 1024u) % 1024u;
  const int h = blockIdx.z;
  const ProjectOperands o = GetProjectOperands(p, h, nullptr, pooled_k);
  const int group = p.num_heads / p.num_kv_heads;
  const int w_heads = KWeightHeads(p);
  const float* w_hi = wt + static_cast<int64_t>(h / (p.num_heads / w_heads)) * 2 * kPrHidden * o.in;
  const float* w_lo = w_hi + static_cast<int64_t>(kPrHidden) * o.in;
  const int m0 = blockIdx.x * kSgemmTile;
  // Only the average (channels 2D ..) has a lo part.
  const WgParts parts = {{o.x, pooled_k_lo + static_cast<int64_t>(h / group) * p.head_dim, w_hi, w_lo},
                         {o.x_row, static_cast<int64_t>(p.num_kv_heads) * p.head_dim, o.in, o.in},
                         {m0, m0, 0, 0},
                         {nb, nb, kPrHidden, kPrHidden}};
  const int wg = threadIdx.x / 128;
  const bool wg_busy = m0 + 64 * wg < nb;  // warpgroup-uniform
  float acc[64];
  WgmmaTf32Tile<3 * kPrHidden / kWgK, 2 * kPrHidden / kWgK, kWLo>(smem_addr, parts, acc);
  ptx::CpAsyncWait<0>();  // only empty groups are left; the output tile reuses the stages
  __syncthreads();

  // acc[4j + 2hh + e]: row 16 (warp in the warpgroup) + g + 8hh, column 8j + 2t + e.
  float* tile = reinterpret_cast<float*>(wg_smem);  // [128][kTcOutPitch]
  if (wg_busy) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float* row = tile + (64 * wg + 16 * (threadIdx.x / 32 % 4) + lane / 4 + 8 * hh) * kTcOutPitch + 2 * (lane % 4);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        *reinterpret_cast<float2*>(row + 8 * j) = make_float2(acc[4 * j + 2 * hh], acc[4 * j + 2 * hh + 1]);
      }
    }
  }
  __syncthreads();
  const int64_t head = static_cast<int64_t>(h) * nb * kPrHidden;
  StoreRotatedTileF16(tile, reinterpret_cast<int*>(tile + kSgemmTile * kTcOutPitch), rope, nb, m0, kp + head,
                      kp_lo + head, k_shift + h * StripeShiftPitch(nb));
#endif
}

// W [w_heads][in][hidden] (applied as x . W) to wt [w_heads][2][hidden][in]:
// W's columns as rows, K-major as tf32 wgmma's B operand must be, tf32 hi
// parts then lo parts (ProjectRopeWgmmaKernel); without lo_parts (the
// weights are tf32) the values alone, as the hi parts, and no lo parts.
// 32 x 32 tiles through shared memory; grid (ceil(in / 32), ceil(hidden /
// 32), w_heads), block (32, 8).
__global__ void SplitTransposeKernel(const float* w, int in, int hidden, bool lo_parts, float* wt) {
  // Chained after the pool, which neither reads nor writes w or wt: it
  // waits for the pool only at its end, and so finishes after it (what the
  // kernels chained after it rely on).
  ChainedKernelLaunchDependents();
  __shared__ float t[32][33];
  const float* src = w + static_cast<int64_t>(blockIdx.z) * in * hidden;
  float* hi = wt + static_cast<int64_t>(blockIdx.z) * 2 * hidden * in;
  float* lo = hi + static_cast<int64_t>(hidden) * in;
  const int k0 = blockIdx.x * 32;
  const int n0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int k = k0 + i;
    const int n = n0 + threadIdx.x;
    if (k < in && n < hidden) t[i][threadIdx.x] = src[static_cast<int64_t>(k) * hidden + n];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += 8) {
    const int n = n0 + i;
    const int k = k0 + threadIdx.x;
    if (n < hidden && k < in) {
      const int64_t at = static_cast<int64_t>(n) * in + k;
      StoreMaybeSplit(t[threadIdx.x][i], hi + at, lo_parts ? lo + at : nullptr);
    }
  }
  ChainedKernelWait();
}

// --- scores ---------------------------------------------------------------
// grid (tiles of the causal triangle, heads in this pass); block x is tile
// (qt, kt), kt <= qt, numbered row by row. scores[hl][qb][kb] = (q'[h, qb] .
// k'[h, kb]) * scale for kb <= qb (above the diagonal is never written nor
// read), 128 x 128 SGEMM tiles: fmaf over the channels in order from +0, as
// the CPU gate and the fused kernel. kVec: hidden % 4 == 0.
template <bool kVec>
__global__ void __launch_bounds__(kSgemmThreads, 2)
    ScoresKernel(const float* qp, const float* kp, int nb, int hidden, int head0, float scale, float* scores) {
  const ScoresTile tile = ScoresTileOf(head0);
  const int hl = tile.hl;
  const int h = tile.h;
  const int q_first = tile.q_first;
  const int k_first = tile.k_first;
  __shared__ __align__(16) SgemmSlab qs[2], ks[2];
  // Warps with no score on or below the diagonal (the upper right of a
  // diagonal tile) or none before nb only load.
  const int warp_rows = q_first + 32 * static_cast<int>(threadIdx.x / 64);
  const bool busy =
      warp_rows < nb && k_first + 64 * static_cast<int>(threadIdx.x / 32 % 2) <= min(warp_rows + 31, nb - 1);
  const float* qh = qp + static_cast<int64_t>(h) * nb * hidden;
  const float* kh = kp + static_cast<int64_t>(h) * nb * hidden;
  float4 qv[kSgemmLoads], kv[kSgemmLoads];
  float acc[8][8] = {};
  SgemmMainLoop<false>((hidden + kSgemmK - 1) / kSgemmK, busy, qs, ks,
                       [&](int s, int) {
                         LoadRowSlab<kVec>(qh + static_cast<int64_t>(q_first) * hidden + s * kSgemmK, hidden,
                                           nb - q_first, hidden - s * kSgemmK, qv);
                         LoadRowSlab<kVec>(kh + static_cast<int64_t>(k_first) * hidden + s * kSgemmK, hidden,
                                           nb - k_first, hidden - s * kSgemmK, kv);
                       },
                       [&](int buf) {
                         StoreRowSlab(qv, qs[buf]);
                         StoreRowSlab(kv, ks[buf]);
                       },
                       acc);
  if (!busy) return;

  float* out = scores + static_cast<int64_t>(hl) * nb * nb;
  const bool vec_out = nb % 4 == 0;  // rows 16-byte aligned
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int qb = q_first + SgemmRow0() + i;
    if (qb >= nb) break;
    float* orow = out + static_cast<int64_t>(qb) * nb;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int kb = k_first + SgemmCol0() + 32 * half;
      const float4 v = make_float4(acc[i][4 * half] * scale, acc[i][4 * half + 1] * scale, acc[i][4 * half + 2] * scale,
                                   acc[i][4 * half + 3] * scale);
      if (vec_out && kb + 3 <= qb) {
        *reinterpret_cast<float4*>(orow + kb) = v;
      } else {
        if (kb <= qb) orow[kb] = v.x;
        if (kb + 1 <= qb) orow[kb + 1] = v.y;
        if (kb + 2 <= qb) orow[kb + 2] = v.z;
        if (kb + 3 <= qb) orow[kb + 3] = v.w;
      }
    }
  }
}

// --- select ---------------------------------------------------------------
constexpr int kSelectMaxWarps = 8;
// Shared memory per select CTA that still lets three run on an SM.
constexpr size_t kSelectSmemTarget = 72 * 1024;

template <typename V, typename Op>
__device__ __forceinline__ V WarpReduce(V v, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// v summed over this lane and the lanes below it.
__device__ __forceinline__ int WarpInclusiveSum(int v) {
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int t = __shfl_up_sync(0xffffffffu, v, off);
    if (threadIdx.x % 32 >= off) v += t;
  }
  return v;
}

// The set bits of words[0 .. count), ascending, as indices 32 w + bit at
// out[0 ..), by one warp: each lane writes the bits of its words, except
// that a word of more than kSpreadAbove bits is written by the whole warp,
// a bit a lane (LaneWordsGather's rows, 8: a top-k row's kept blocks crowd
// near its diagonal, and the lane of such a word kept the others waiting,
// one loop iteration a bit). 32: never.
template <int kSpreadAbove = 32>
__device__ __forceinline__ void WriteSetBits(const uint32_t* words, int count, int32_t* out) {
  const int lane = threadIdx.x % 32;
  const uint32_t lanes_below = (1u << lane) - 1u;
  for (int w0 = 0; w0 < count; w0 += 32) {
    const int w = w0 + lane;
    uint32_t bits = w < count ? words[w] : 0u;
    const int set = __popc(bits);
    const int incl = WarpInclusiveSum(set);
    const int first = incl - set;
    if constexpr (kSpreadAbove < 32) {
      for (uint32_t heavy = __ballot_sync(0xffffffffu, set > kSpreadAbove); heavy != 0; heavy &= heavy - 1) {
        const int owner = __ffs(heavy) - 1;
        const uint32_t owner_bits = __shfl_sync(0xffffffffu, bits, owner);
        const int owner_first = __shfl_sync(0xffffffffu, first, owner);
        if ((owner_bits >> lane & 1u) != 0) {
          out[owner_first + __popc(owner_bits & lanes_below)] = (w0 + owner) * 32 + lane;
        }
      }
      if (set > kSpreadAbove) bits = 0;
    }
    int32_t* dst = kSpreadAbove < 32 ? out + first : out + incl - set;  // one address, each form as measured
    for (; bits != 0; bits &= bits - 1) *dst++ = w * 32 + __ffs(bits) - 1;
    out += __shfl_sync(0xffffffffu, incl, 31);
  }
}

// The topk-th largest key of a row, and how many of the keys equal to it
// top-k keeps: topk - #(larger keys), the first ones by index.
struct KthKey {
  uint32_t key;
  int take_equal;
  int equal;  // keys equal to it in the row
  // Whether TopKthKey left the row as the masks of the kept blocks (then
  // the fields above are not set); else the row still holds the keys.
  bool masks;
  // Not 0: TopKthKey left the gather to its caller (LaneWordsGather), for
  // the range [key, key + span] that holds the take_equal-th largest of its
  // `equal` keys.
  uint32_t span = 0;
};

// The bin of hist[0 .. 255] where the count of keys from the top bin down
// reaches `remaining` (>= 1), and the keys in the bins above it; one warp,
// every lane gets the same answer. Unless kMayMiss, the bins hold at least
// `remaining` keys.
struct KthBin {
  uint32_t digit;
  int above;
  bool found;  // false: the bins hold fewer than `remaining` keys (digit, above unset)
};
template <bool kMayMiss>
__device__ __forceinline__ KthBin PickKthBin(const uint32_t* hist, int remaining) {
  const int lane = threadIdx.x % 32;
  // Lane l holds bins 255 - 8l down to 248 - 8l.
  int c[8];
  int lane_total = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    c[k] = static_cast<int>(hist[255 - 8 * lane - k]);
    lane_total += c[k];
  }
  const int incl = WarpInclusiveSum(lane_total);
  if (kMayMiss && __shfl_sync(0xffffffffu, incl, 31) < remaining) return {0, 0, false};
  const int first = __ffs(__ballot_sync(0xffffffffu, incl >= remaining)) - 1;
  int above = incl - lane_total;
  int k = 0;
  for (; k < 7; ++k) {
    if (above + c[k] >= remaining) break;
    above += c[k];
  }
  return {static_cast<uint32_t>(__shfl_sync(0xffffffffu, 255 - 8 * lane - k, first)),
          __shfl_sync(0xffffffffu, above, first), true};
}

// f(key) for each key of row[0 .. n), in no particular order, by one warp:
// where the row starts 16-byte aligned, a lane takes four adjacent keys of
// each group of 128 with one 16-byte read; the keys past the last whole
// group, and those of other rows, one a lane.
template <typename F>
__device__ __forceinline__ void ForEachKey(const uint32_t* row, int n, F&& f) {
  const int lane = threadIdx.x % 32;
  int i0 = 0;
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
#pragma unroll 2
    for (; i0 + 128 <= n; i0 += 128) {
      const uint4 quad = *reinterpret_cast<const uint4*>(row + i0 + 4 * lane);
      f(quad.x);
      f(quad.y);
      f(quad.z);
      f(quad.w);
    }
  }
#pragma unroll 4
  for (int i = i0 + lane; i < n; i += 32) f(row[i]);
}

// Top-k rows of keys this long or longer, keeping at most three quarters of
// them, start TopKthKey from a sample (SampleBracket). Shorter rows do not
// gain: sampling rows from 256 keys on made the 32k gate (rows of up to 512
// keys) slower (docs/KERNELS.md, "A sample in place of the select's range
// pass").
constexpr int kSampleMinKeys = 1024;
constexpr int kSampleAuto = -1;  // SampleBracket chooses its rank
constexpr int kSampleOff = -2;  // every row finds its range (SelectRow's callers without keys)

// The first histogram pass of TopKthKey over a bracket of keys that a sample
// of the row suggests, in place of the pass that finds the keys' range. 32
// keys, one a lane, evenly spaced over the row, are sorted (bitonic, largest
// at lane 0). The bracket starts at the sample's key of rank `rank` (0 =
// largest), chosen so that more than `rank` sampled keys above the
// topk-th largest key is unlikely (3 standard deviations and one more, for a
// uniform sample); its bins of equal width cover twice the distance from
// there to the sample's largest key, and bin 256 counts every key above
// them. Only keys in the bracket take a shared atomic, about a third of a
// row at nz_ratio 0.1 where the range pass's bins took nearly all.
// Returns false, having set nothing, when the topk-th largest key lies
// outside the bins (below the bracket, or in bin 256): the caller then
// finds the range instead, so the result never depends on the sample.
// `rank` < 0 chooses it from topk / n (kSampleAuto). Otherwise as one pass
// of TopKthKey's loop: on true the topk-th largest key is the
// remaining-th largest of the in_range keys in [base, base + span].
__device__ __forceinline__ bool SampleBracket(const uint32_t* row, uint32_t* hist, int n, int topk, int rank,
                                              uint32_t* base, uint32_t* span, int* in_range, int* remaining) {
  const int lane = threadIdx.x % 32;
  uint32_t s = row[static_cast<int>((static_cast<uint32_t>(2 * lane + 1) * static_cast<uint32_t>(n)) >> 6)];
#pragma unroll
  for (int k = 2; k <= 32; k <<= 1) {
#pragma unroll
    for (int j = k >> 1; j > 0; j >>= 1) {
      const uint32_t other = __shfl_xor_sync(0xffffffffu, s, j);
      s = ((lane & j) == 0) == ((lane & k) == 0) ? max(s, other) : min(s, other);
    }
  }
  if (rank < 0) {
    const float share = static_cast<float>(topk) / static_cast<float>(n);
    const float mean = 32.0f * share;
    rank = min(31, static_cast<int>(ceilf(mean + 3.0f * sqrtf(mean * (1.0f - share)))) + 1);
  }
  const uint32_t lo = __shfl_sync(0xffffffffu, s, rank);
  const uint32_t width = __shfl_sync(0xffffffffu, s, 0) - lo;
  const uint32_t reach = width >= 0x80000000u ? 0xffffffffu : 2u * width;
  const int shift = max(0, 24 - __clz(reach));
  for (int i = lane; i < 257; i += 32) hist[i] = 0;
  __syncwarp();
  ForEachKey(row, n, [&](uint32_t key) {
    if (key >= lo) atomicAdd(&hist[min((key - lo) >> shift, 256u)], 1u);
  });
  __syncwarp();
  const int top = static_cast<int>(hist[256]);
  const KthBin bin = top < topk ? PickKthBin<true>(hist, topk - top) : KthBin{0, 0, false};
  if (!bin.found) {
    __syncwarp();
    return false;
  }
  *remaining = topk - top - bin.above;
  *in_range = static_cast<int>(hist[bin.digit]);
  *base = lo + (bin.digit << shift);
  *span = min(~lo - (bin.digit << shift), (1u << shift) - 1u);
  __syncwarp();  // hist is read before the next pass writes it
  return true;
}

// The gather of TopKthKey for rows of at least kLaneWordsMin words of 32
// keys that start 16-byte aligned in shared memory: as its ballot gather
// (the keys above [base, base + span] become the row's mask words, the
// first `remaining` of the in_range keys in the range, larger first, ties
// by index, join them), but lane l takes words l, l + 32, .. whole. It
// reads word w's keys four at a time, quad (l + c) % 8 at step c, so that
// the lanes of a read spread over all the banks, and builds the masks with
// bit 4c + t for key t of that quad, rotated left by 4l at the end: about
// 0.2 warp instructions a key at 128k tokens, where the ballot gather took
// 0.54 (docs/KERNELS.md, "A word a lane in the select's gather"). The
// keys in the range go to hist[0 ..) and their indices to hist[32 ..) in
// no particular order, a slot a key from the counter hist[64]. Reads up to
// the end of the row's last word of 32: only for rows with room there
// (SelectKernel's, SelectRowPitch). Then the kept blocks go to out[0 ..)
// in index order (WriteSetBits, words of more than 8 bits by the whole
// warp). Not inlined, as TopKthKey: inlined in
// SelectKernel it measured 5-7 us slower at 128k tokens (F and G in docs/KERNELS.md).
constexpr int kLaneWordsMin = 24;

__device__ __noinline__ void LaneWordsGather(uint32_t* row, uint32_t* hist, int n, uint32_t base, uint32_t span,
                                             int in_range, int remaining, int32_t* out) {
  const int lane = threadIdx.x % 32;
  const uint32_t top = base + span;
  const int words = (n + 31) / 32;
  if (lane == 0) hist[64] = 0;
  __syncwarp();
  for (int w0 = 0; w0 < words; w0 += 32) {
    const int w = w0 + lane;
    uint32_t above = 0;
    if (w < words) {
      const uint32_t* keys = row + 32 * w;
      uint32_t match = 0;
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        const uint4 quad = *reinterpret_cast<const uint4*>(keys + 4 * ((lane + c) & 7));
        const uint32_t k[4] = {quad.x, quad.y, quad.z, quad.w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const bool is_above = k[t] > top;
          if (is_above) above |= 1u << (4 * c + t);
          if (!is_above && k[t] >= base) match |= 1u << (4 * c + t);
        }
      }
      // Bit x is key (x + 4 lane) % 32 of the word.
      above = __funnelshift_l(above, above, 4 * lane);
      match = __funnelshift_l(match, match, 4 * lane);
      const int valid = n - 32 * w;  // keys past the row's end are not its
      if (valid < 32) {
        above &= (1u << valid) - 1u;
        match &= (1u << valid) - 1u;
      }
      for (; match != 0; match &= match - 1u) {  // seldom: at most 32 keys of the row
        const int bit = __ffs(match) - 1;
        const uint32_t slot = atomicAdd(&hist[64], 1u);
        hist[slot] = keys[bit];
        hist[32 + slot] = static_cast<uint32_t>(32 * w + bit);
      }
    }
    __syncwarp();  // word w's keys are read (by lane w / 32 % 32, by now) before row[w] is written
    if (w < words) row[w] = above;
  }
  __syncwarp();
  // Each gathered key's rank among them: the larger ones, and the equal ones
  // of lower index, before it. Top-k keeps the first `remaining`.
  const bool has = lane < in_range;
  const uint32_t key = has ? hist[lane] : 0u;
  const uint32_t index = has ? hist[32 + lane] : 0u;
  int rank = 0;
  for (int j = 0; j < in_range; ++j) {
    const uint32_t other = __shfl_sync(0xffffffffu, key, j);
    const uint32_t other_index = __shfl_sync(0xffffffffu, index, j);
    rank += other > key || (other == key && other_index < index);
  }
  if (has && rank < remaining) atomicOr(&row[index / 32], 1u << (index % 32));
  __syncwarp();
  WriteSetBits<8>(row, words, out);
}

// KthKey of row[0 .. n) (the scores' bits, overwritten with their keys), 1 <=
// topk <= n, by one warp; hist (257 words of shared memory) is scratch. Radix
// select over a range of keys known to hold the topk-th largest: the pass
// that makes the keys finds the range of those of its sign (with `keys_in`,
// long rows first try a sample's bracket instead: SampleBracket, sample_rank
// as there, or kSampleOff), each pass after
// it cuts the range into at most 256 bins of equal width and keeps the bin
// that holds it, and once at most 32 keys are left in the range, one more
// pass gathers them, one a lane (or, on rows of at least kLaneWordsMin words
// that start 16-byte aligned where `whole_words` lets them be read to the
// end of their last word of 32, a word a lane: LaneWordsGather), and a
// ballot per bit settles the bits left.
// Not inlined: inlined, it changed how NVVM compiles the scores loop of
// FusedSelectKernel<16> before it (64-bit addresses hoisted, 100 registers
// instead of 64: one CTA of 512 threads per SM instead of two).
//
// With `keys_in` the row holds the keys already (OrderKey, written by the
// scores kernel).
//
// The gather pass also marks the keys above the last range, which top-k
// keeps for certain: word w of the row (row[w], its keys read by then)
// becomes the ballot of those among keys 32w .. 32w + 31, and the range's
// keys and their indices go to hist[0 ..) and hist[32 ..) in index order.
// Ranked among themselves by shuffles (larger first, ties by index), the
// first `remaining` of them join the masks, which then hold exactly the
// kept blocks (KthKey::masks): the caller need not scan the row again.
// Without a gather (the range narrowed to one key) the row keeps its keys.
__device__ __noinline__ KthKey TopKthKey(uint32_t* row, uint32_t* hist, int n, int topk, bool keys_in, int sample_rank,
                                         bool whole_words) {
  const int lane = threadIdx.x % 32;
  const uint32_t lanes_below = (1u << lane) - 1u;
  // The scores become keys. A row's scores are alike, so a histogram of the
  // keys' top byte would settle little; this pass finds the range of the
  // keys instead, of either half of the key space apart (below zero; zero,
  // either sign, and above, NaN included): one range over both would take in
  // the small magnitudes of both signs, with bins as wide as the top byte's. The
  // topk-th largest key is in the upper half's range when that half holds at
  // least topk keys, else in the lower half's.
  uint32_t base = 0, span = 0;
  int in_range = 0, remaining = 0;
  const bool sampled = keys_in && sample_rank != kSampleOff &&
                       (sample_rank >= 0 || (n >= kSampleMinKeys && 4 * topk <= 3 * n)) &&
                       SampleBracket(row, hist, n, topk, sample_rank, &base, &span, &in_range, &remaining);
  if (!sampled) {
    uint32_t lower_min = 0xffffffffu, lower_max = 0, upper_min = 0xffffffffu, upper_max = 0;
    int upper_count = 0;
    auto range = [&](uint32_t key) {
      if (key >= 0x80000000u) {
        upper_min = min(upper_min, key);
        upper_max = max(upper_max, key);
        ++upper_count;
      } else {
        lower_min = min(lower_min, key);
        lower_max = max(lower_max, key);
      }
    };
    if (keys_in) {
      ForEachKey(row, n, range);
    } else {
#pragma unroll 4
      for (int i = lane; i < n; i += 32) {
        const uint32_t key = OrderKey(__uint_as_float(row[i]));
        row[i] = key;
        range(key);
      }
    }
    upper_count = __reduce_add_sync(0xffffffffu, upper_count);
    const bool upper = upper_count >= topk;
    // The topk-th largest key is the remaining-th largest of the in_range
    // keys in [base, base + span] (span < 2^31: the range is in one half).
    base = __reduce_min_sync(0xffffffffu, upper ? upper_min : lower_min);
    span = __reduce_max_sync(0xffffffffu, upper ? upper_max : lower_max) - base;
    in_range = upper ? upper_count : n - upper_count;
    remaining = upper ? topk : topk - upper_count;
    __syncwarp();  // the keys are read (and written) before a later pass writes the row
  }
  // Each pass histograms the keys in the range by their offset from base,
  // 2^shift offsets a bin, shift the least that needs at most 256 bins
  // (more than 128 of them while span >= 128), and keeps the bin where the
  // count from the top reaches `remaining`. One shared atomic per key in
  // the range, four groups of 32 in flight: the keys spread over the bins,
  // so a group seldom has more than two or three in one, and merging them
  // with __match_any_sync (slow on Hopper) would cost more than it saves.
  while (span != 0 && in_range > 32) {
    const int shift = max(0, 24 - __clz(span));
    for (int i = lane; i < 256; i += 32) hist[i] = 0;
    __syncwarp();
    ForEachKey(row, n, [&](uint32_t key) {
      const uint32_t off = key - base;  // keys below base wrap above span
      if (off <= span) atomicAdd(&hist[off >> shift], 1u);
    });
    __syncwarp();
    // (Bins above span >> shift are empty; the bins hold in_range >= remaining.)
    const KthBin bin = PickKthBin<false>(hist, remaining);
    const uint32_t digit = bin.digit;
    remaining -= bin.above;
    in_range = static_cast<int>(hist[digit]);
    base += digit << shift;
    span = min(span - (digit << shift), (1u << shift) - 1u);
    __syncwarp();  // hist is read before the next pass writes it
  }
  if (span != 0 && whole_words && (n + 31) / 32 >= kLaneWordsMin && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    return {base, remaining, in_range, false, span};  // the caller gathers (LaneWordsGather)
  }
  if (span != 0) {
    // Over the whole row: the keys in the range (at most 32) into hist, with
    // their indices, and the marks of the keys above it.
    const uint32_t top = base + span;
    const int words = (n + 31) / 32;
    int found = 0;
    for (int w0 = 0; w0 < words; w0 += 32) {
      const int end = min(words, w0 + 32);
      uint32_t marks = 0;  // lane l's: those of word w0 + l
#pragma unroll 4
      for (int w = w0; w < end; ++w) {
        const int i = w * 32 + lane;
        const uint32_t key = i < n ? row[i] : 0u;
        const uint32_t above = __ballot_sync(0xffffffffu, i < n && key > top);
        const bool match = i < n && key - base <= span;
        const uint32_t match_bits = __ballot_sync(0xffffffffu, match);
        if (match_bits != 0) {  // seldom: at most 32 keys of the row match
          const int slot = found + __popc(match_bits & lanes_below);
          if (match) {
            hist[slot] = key;
            hist[32 + slot] = static_cast<uint32_t>(i);
          }
          found += __popc(match_bits);
        }
        if (lane == w - w0) marks = above;
      }
      // Keys w0 .. end - 1, which the words overwrite, were read by pass
      // w0 / 32 (this chunk's first, at the latest); later passes read keys
      // from 32 (w0 + 32) on.
      __syncwarp();
      if (w0 + lane < end) row[w0 + lane] = marks;
    }
    // Then each gathered key's rank among them: the larger ones, and the
    // equal ones of lower index (lower lane: hist is in index order)
    // before it. Top-k keeps the first `remaining`: their bits join the
    // masks.
    __syncwarp();
    const bool has = lane < in_range;
    const uint32_t key = has ? hist[lane] : 0u;
    int rank = 0;
    for (int j = 0; j < in_range; ++j) {
      const uint32_t other = __shfl_sync(0xffffffffu, key, j);
      rank += other > key || (other == key && j < lane);
    }
    if (has && rank < remaining) {
      const uint32_t i = hist[32 + lane];
      atomicOr(&row[i / 32], 1u << (i % 32));
    }
    __syncwarp();
    return {0, 0, 0, true};
  }
  // Without the gather the range is one key, in_range times.
  return {base, remaining, in_range, false};
}

// Softmax, selection and output of one row (head h, query block qb) of
// scores, by one warp. `row` (the scores' bits) and `hist` (the warp's 257
// words) are in shared memory; top-k rows overwrite `row` with their keys.
// whole_words: `row` may be read to the end of its last word of 32
// (TopKthKey).
//
// Top-k keeps the keys above the topk-th largest key and, of the keys equal
// to it, the first topk - #(larger keys) by index (see TopKthKey).
__device__ __forceinline__ void SelectRow(const GateParams& p, int nb, int words, int h, int qb, int64_t topk,
                                          int first_dense_row, uint32_t* row, uint32_t* hist, uint32_t* bitmap,
                                          int32_t* counts, int32_t* direct_indices, bool keys_in = false,
                                          int sample_rank = kSampleOff, bool whole_words = false) {
  const int lane = threadIdx.x % 32;
  const uint32_t lanes_below = (1u << lane) - 1u;
  const int n = qb + 1;
  const bool all =
      p.mode == SparsityMode::kDense || qb >= first_dense_row || (p.mode == SparsityMode::kNzRatio && topk >= n);
  const bool radix = !all && p.mode == SparsityMode::kNzRatio;
  const bool threshold_mode = p.mode == SparsityMode::kThreshold;
  auto score = [&](int i) { return __uint_as_float(row[i]); };

  // Softmax over the causal blocks, rounded as the CPU gate does; top-k and
  // dense rows need it only for p.probs.
  float mx = -INFINITY;
  float fsum = 0.0f;
  if (p.probs != nullptr || threshold_mode) {
#pragma unroll 4
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, score(i));
    mx = WarpReduce(mx, [](float a, float b) { return fmaxf(a, b); });
    double sum = 0.0;
#pragma unroll 4
    for (int i = lane; i < n; i += 32) sum += static_cast<double>(expf(score(i) - mx));
    sum = WarpReduce(sum, [](double a, double b) { return a + b; });
    fsum = static_cast<float>(sum);
  }
  auto prob = [&](int i) { return expf(score(i) - mx) / fsum; };
  if (p.probs != nullptr) {
    float* prow = p.probs + (static_cast<int64_t>(h) * nb + qb) * nb;
    for (int i = lane; i < nb; i += 32) prow[i] = i < n ? prob(i) : 0.0f;
  }

  // Output: either bitmap words and a count (then the scan and fill
  // kernels), or, when the offsets are known up front, the ascending indices
  // themselves at `direct_indices`.
  uint32_t* out_words = bitmap != nullptr ? bitmap + (static_cast<int64_t>(h) * nb + qb) * words : nullptr;
  uint32_t kth_key = 0;  // top-k: blocks with a larger key are kept...
  int take_equal = 0;  // ...and the first take_equal (by index) with an equal key
  bool take_all_equal = false;  // (all of them)
  if (radix) {
    // Top-k rows always write indices (out_words is null): nz_ratio lists are
    // sized up front.
    const KthKey kth = TopKthKey(row, hist, n, static_cast<int>(topk), keys_in, sample_rank, whole_words);  // topk < n
    if (whole_words && kth.span != 0) {
      // Called here, not in TopKthKey: FusedSelectKernel calls that too, and
      // its registers would grow.
      LaneWordsGather(row, hist, n, kth.key, kth.span, kth.equal, kth.take_equal, direct_indices);
      return;
    }
    if (kth.masks) {
      WriteSetBits(row, (n + 31) / 32, direct_indices);
      return;
    }
    kth_key = kth.key;
    take_equal = kth.take_equal;
    take_all_equal = kth.take_equal == kth.equal;
  }
  const float threshold = static_cast<float>(p.threshold);  // compared in float32, as torch does

  // Output in index order; equal keys ranked by index (see above for
  // out_words).
  int equal_before = 0;
  int kept = 0;
  const int row_words = (n + 31) / 32;
  if (radix && take_all_equal && out_words == nullptr) {
    // The common case: every key equal to the k-th is kept, so a block is
    // kept when its key is at least that, and no ballot ranks equal keys.
#pragma unroll 4
    for (int w = 0; w < row_words; ++w) {
      const int i = w * 32 + lane;
      const bool keep = i < n && row[i] >= kth_key;
      const uint32_t bits = __ballot_sync(0xffffffffu, keep);
      if (keep) direct_indices[kept + __popc(bits & lanes_below)] = i;
      kept += __popc(bits);
    }
    return;
  }
#pragma unroll 4
  for (int w = 0; w < row_words; ++w) {
    const int i = w * 32 + lane;
    bool keep = i < n;
    if (radix) {
      const uint32_t key = keep ? row[i] : 0u;
      const bool equal = keep && key == kth_key;
      keep = keep && key > kth_key;
      const uint32_t eq_bits = __ballot_sync(0xffffffffu, equal);
      if (eq_bits != 0) {
        if (equal && equal_before + __popc(eq_bits & lanes_below) < take_equal) keep = true;
        equal_before += __popc(eq_bits);
      }
    } else if (!all && threshold_mode) {
      keep = keep && prob(i) > threshold;
    }
    const uint32_t bits = __ballot_sync(0xffffffffu, keep);
    if (out_words != nullptr) {
      if (lane == 0) out_words[w] = bits;
    } else if (keep) {
      direct_indices[kept + __popc(bits & lanes_below)] = i;
    }
    kept += __popc(bits);
  }
  if (out_words != nullptr) {
    for (int w = row_words + lane; w < words; w += 32) out_words[w] = 0u;
    if (lane == 0) {
      if (kept == 0) {  // never an empty row: keep the diagonal block
        out_words[qb / 32] |= 1u << (qb % 32);
        kept = 1;
      }
      counts[static_cast<int64_t>(h) * nb + qb] = kept;
    }
  }
}

// Words of shared memory per select warp for its row, which sits at its
// global address mod 16 bytes (up to 3 words in front) so that cp.async can
// copy it; a row that starts 16-byte aligned may be read to the end of its
// last word of 32 (LaneWordsGather).
__host__ __device__ inline int SelectRowPitch(int nb) { return (nb + 31) / 32 * 32 + 4; }

size_t SelectSmemBytes(int warps, int nb) {
  return static_cast<size_t>(warps) * sizeof(uint32_t) * (SelectRowPitch(nb) + 257);
}

// Rows per select CTA: the most, up to 8, within kSelectSmemTarget (one row
// of 48k blocks needs 193 KB).
int SelectWarps(int nb) {
  int warps = kSelectMaxWarps;
  while (warps > 1 && SelectSmemBytes(warps, nb) > kSelectSmemTarget) warps /= 2;
  return warps;
}

// n words from global `src` to shared `dst` (the same address mod 16 bytes),
// by one warp: the 16-byte chunks with cp.async, all in flight at once, the
// words before the first and after the last chunk one by one.
__device__ __forceinline__ void CopyRowToShared(const uint32_t* src, int n, uint32_t* dst) {
  const int lane = threadIdx.x % 32;
  const int head = min(n, static_cast<int>((16 - reinterpret_cast<uintptr_t>(src) % 16) % 16 / sizeof(uint32_t)));
  const int chunks = (n - head) / 4;
  const int tail = head + 4 * chunks;
  if (lane < head) dst[lane] = src[lane];
  for (int c = lane; c < chunks; c += 32) ptx::CpAsync16(ptx::SmemAddr(dst + head + 4 * c), src + head + 4 * c);
  if (tail + lane < n) dst[tail + lane] = src[tail + lane];
  ptx::CpAsyncCommit();
  ptx::CpAsyncWait<0>();
  __syncwarp();
}

// For nz_ratio and dense, where every row's length is known up front: row
// (h, qb)'s offset into the CSR indices, which lane 0 writes to
// block_offsets (with the end offset after the last row, and the head's
// count at its first row); the row writes its indices from there. In 32
// bits: the launches refuse lists of 2^31 indices or more (GateMaxIndices).
__device__ __forceinline__ int32_t* DirectRow(const GateParams& p, int nb, int h, int qb, int64_t topk,
                                              int first_dense_row) {
  const int32_t list_topk =
      p.mode == SparsityMode::kDense ? -1 : static_cast<int32_t>(min(topk, static_cast<int64_t>(nb)));
  const uint32_t per_head = ListPrefix(nb, list_topk, first_dense_row);
  const uint32_t offset = static_cast<uint32_t>(h) * per_head + ListPrefix(qb, list_topk, first_dense_row);
  if (threadIdx.x % 32 == 0) {
    p.block_offsets[h * nb + qb] = static_cast<int32_t>(offset);
    if (qb == 0 && p.kept_per_head != nullptr) p.kept_per_head[h] = per_head;
    if (qb == nb - 1 && h == p.num_heads - 1) {
      p.block_offsets[p.num_heads * nb] = static_cast<int32_t>(static_cast<uint32_t>(p.num_heads) * per_head);
    }
  }
  return p.block_indices + offset;
}

// One warp per row (no CTA barriers), blockDim.x / 32 rows per CTA, the
// heaviest rows first. grid (heads in this pass, ceil(nb / rows per CTA)).
// The row is copied into shared memory once and every pass of SelectRow
// reads it there. keys_in: `scores` holds OrderKey's keys (nz_ratio without
// probs; ScoresStripeKernel's `keys`), and top-k rows then start from a
// sample where they are long (sample_rank: SampleBracket's rank, or
// kSampleAuto). Each warp's row has room to the end of its last word of 32
// (SelectRowPitch).
__global__ void __launch_bounds__(32 * kSelectMaxWarps)
    SelectKernel(GateParams p, int nb, int words, int head0, int64_t topk, int first_dense_row, const float* scores,
                 uint32_t* bitmap, int32_t* counts, bool keys_in, int sample_rank) {
  SEER_GATE_TRACE_CTA(6);
  ChainedKernelStart();
  SEER_GATE_TRACE_READY();
  extern __shared__ __align__(16) uint32_t select_smem[];
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32;
  const int qb = (gridDim.y - 1 - blockIdx.y) * warps + warp;
  if (qb >= nb) return;  // the whole warp leaves
  const int hl = blockIdx.x;
  const int64_t start = (static_cast<int64_t>(hl) * nb + qb) * nb;  // the row's first score
  const uint32_t* src = reinterpret_cast<const uint32_t*>(scores) + start;
  // scores is 16-byte aligned, so the row starts start % 4 words into a chunk.
  uint32_t* row = select_smem + warp * SelectRowPitch(nb) + static_cast<int>(start % 4);
  uint32_t* hist = select_smem + warps * SelectRowPitch(nb) + warp * 257;
  CopyRowToShared(src, qb + 1, row);
  const int h = head0 + hl;
  if (p.mode == SparsityMode::kThreshold) {
    SelectRow(p, nb, words, h, qb, topk, first_dense_row, row, hist, bitmap, counts, nullptr);
  } else {
    SelectRow(p, nb, words, h, qb, topk, first_dense_row, row, hist, nullptr, counts,
              DirectRow(p, nb, h, qb, topk, first_dense_row), keys_in, sample_rank, /*whole_words=*/true);
  }
}

// --- fused scores + select ---------------------------------------------------
// One CTA per (kRows query-block rows, Q head): the rows' causal scores go
// into shared memory (never to device memory), then one warp per row runs
// SelectRow on them. Scores accumulate in the old ScoresKernel's order (fmaf
// over the hidden channels in order, then * scale), so both gates see the
// same floats. For nz_ratio and dense the row lengths are known in advance
// (ListPrefix), so the rows write their offsets and indices directly;
// threshold rows write the bitmap and counts for the scan and fill kernels.
constexpr int kFusedC = 32;  // hidden channels per k' tile

// kCols key blocks a step, one per thread of a row group: 256, or 128 where
// the rows are at most 128 blocks long (8k tokens), so that no thread
// computes past the last key block.
template <int kRows, int kCols = 256>
struct FusedShape {
  static constexpr int kThreads = kRows >= 16 ? 512 : 256;
  static constexpr int kRowGroups = kThreads / kCols;  // threads sharing a column
  static constexpr int kRowsPerThread = kRows / kRowGroups;  // accumulators per thread
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kPitch = kCols + 1;  // of the k' tile
  static_assert(kRowsPerThread * kRowGroups == kRows, "rows split evenly");
  static_assert(kThreads % kFusedC == 0, "a thread loads one channel of the k' tile");
  // A CTA's rows in two halves (FusedRowMap) where a thread's rows lie in one.
  static constexpr bool kPaired = kRows >= 2 && kRowsPerThread <= kRows / 2;
};

// Shared memory of the fused kernel: scores [kRows][nb], q' transposed
// [hidden][kRows], a k' tile [kFusedC][cols + 1], one radix histogram per warp.
size_t FusedSmemBytes(int rows, int threads, int nb, int hidden, int cols = 256) {
  return sizeof(float) * (static_cast<size_t>(rows) * nb + static_cast<size_t>(hidden) * rows +
                          static_cast<size_t>(kFusedC) * (cols + 1)) +
         sizeof(uint32_t) * (threads / 32) * 257;
}

// The rows of a fused CTA. kPaired: half of them light (half-group x of
// kRows / 2 rows) and half heavy (half-group G - 1 - x of G), so that every
// CTA has about the same causal work: at 8k tokens the kernel is one wave,
// and took as long as its heaviest CTA when a CTA held kRows consecutive
// rows (17.5-17.8 -> 15.8-16.4 us, ncu, H200, 2026-11-30). The middle CTA
// of an odd G has no heavy half (rows from nb on). Only where a thread's
// rows lie in one half (else the light rows would be computed against every
// key of the heavy ones: 1.5 -> 2.0 ms at 128k tokens and 8 rows a CTA);
// otherwise kRows consecutive rows, the heaviest first. Rows grow with r.
template <int kRows, bool kPaired>
struct FusedRowMap {
  int light, heavy;  // the first rows of the two halves (of all rows, unpaired)
  __device__ int Row(int r) const {
    if constexpr (!kPaired) return light + r;
    return r < kRows / 2 ? light + r : heavy + (r - kRows / 2);
  }
  // One past the last row below nb.
  __device__ int End(int nb) const {
    if constexpr (!kPaired) return min(nb, light + kRows);
    return min(nb, (heavy < nb ? heavy : light) + kRows / 2);
  }
};

template <int kRows, bool kPaired>
__device__ FusedRowMap<kRows, kPaired> FusedRowsOf(int nb) {
  const int x = static_cast<int>(blockIdx.x);
  if constexpr (!kPaired) {
    return {(static_cast<int>(gridDim.x) - 1 - x) * kRows, nb};
  } else {
    const int groups = (nb + kRows / 2 - 1) / (kRows / 2);
    const int heavy = groups - 1 - x;
    return {x * (kRows / 2), heavy > x ? heavy * (kRows / 2) : nb};
  }
}

// The fused select's own q' (the K-first gate at hidden = D = 128): warp w
// pools rows w, w + warps, .. of the CTA's rows from q (lane l sums
// channels 4l .. 4l + 3 of head h down the block's tokens, in order, in
// double, as the pool kernels do), rotates them (the partner of channel d <
// 64 is lane l + 16) and writes them into qs [128][kRows], zeros from nb.
// The same bits as BulkPoolKernel's q'. Reads only q and inv_freq, so it
// runs before the wait for the kernels the select is chained after.
constexpr int kSelectPoolBatch = 8;  // loads a lane has in flight
constexpr int kPoolSelectRows = 16;  // the fused shape that pools (16 warps, a row each)

template <typename T, int kRows, bool kPaired>
__device__ __forceinline__ void PoolRotatedQRows(const GateParams& p, int64_t q_stride, int nb, int h,
                                                 const FusedRowMap<kRows, kPaired>& rows, float* qs) {
  constexpr int kD = kPrHidden;
  static_assert(kD == 32 * 4, "a lane's four channels");
  const int lane = threadIdx.x % 32;
  const int c = 4 * lane;
  const bool first = lane < 16;
  const int warps = blockDim.x / 32;
  for (int r = threadIdx.x / 32; r < kRows; r += warps) {
    const int qb = rows.Row(r);
    float y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (qb < nb) {  // the whole warp
      const int t0 = qb * p.block_size;
      const int t1 = min(p.seq_len, t0 + p.block_size);
      double sum[4] = {0, 0, 0, 0};
      float unused_mx[4], unused_mn[4];
      PoolTokens<T, false, kSelectPoolBatch, 4>(static_cast<const T*>(p.q) + static_cast<int64_t>(h) * kD + c, q_stride,
                                                t0, t1, sum, unused_mx, unused_mn);
      const double count = t1 - t0;
      // Lanes l and l + 16 rotate the same four frequencies 4l % 64 ..:
      // each computes two of the angles and takes the other two from its
      // partner.
      float cs[4], sn[4];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float own_c, own_s;
        RopeAngle(p.rope_inv_freq, p.block_size, qb, c % (kD / 2) + (first ? u : 2 + u), &own_c, &own_s);
        const float got_c = __shfl_xor_sync(0xffffffffu, own_c, 16);
        const float got_s = __shfl_xor_sync(0xffffffffu, own_s, 16);
        cs[u] = first ? own_c : got_c;
        sn[u] = first ? own_s : got_s;
        cs[2 + u] = first ? got_c : own_c;
        sn[2 + u] = first ? got_s : own_s;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float mean = static_cast<float>(sum[j] / count);
        const float other = __shfl_xor_sync(0xffffffffu, mean, 16);
        float y1, y2;
        if (first) {
          BlockRopePair(mean, other, cs[j], sn[j], &y1, &y2);
          y[j] = y1;
        } else {
          BlockRopePair(other, mean, cs[j], sn[j], &y1, &y2);
          y[j] = y2;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) qs[(c + j) * kRows + r] = y[j];
  }
}

// The CTAs a fused launch takes for each head.
int FusedCtas(int nb, int rows, bool paired) {
  if (!paired) return (nb + rows - 1) / rows;
  const int groups = (nb + rows / 2 - 1) / (rows / 2);
  return (groups + 1) / 2;
}

// kHidden: p.hidden where not 0 (a compile-time k' row stride: the tile's
// loads then need no address arithmetic of their own). TPool (bf16 or fp16,
// with kHidden = D = 128): the kernel pools and rotates its rows' q' itself
// (PoolRotatedQRows, before it waits for the kernel it is chained after)
// and qp is not read; void: q' comes from qp.
template <int kRows, int kCols, int kHidden, typename TPool = void>
__global__ void __launch_bounds__(FusedShape<kRows, kCols>::kThreads, 2)
    FusedSelectKernel(GateParams p, int nb, int words, int64_t topk, int first_dense_row, float scale, const float* qp,
                      const float* kp, uint32_t* bitmap, int32_t* counts, int64_t q_stride) {
  SEER_GATE_TRACE_CTA(4);
  constexpr bool kPool = !std::is_void_v<TPool>;
  static_assert(!kPool || kHidden == kPrHidden, "the pooling select takes D = hidden = 128");
  if constexpr (kPool) {
    ChainedKernelLaunchDependents();
  } else {
    ChainedKernelStart();
  }
  using Shape = FusedShape<kRows, kCols>;
  constexpr int kFusedCols = kCols;
  constexpr int kFusedKPitch = Shape::kPitch;
  extern __shared__ __align__(16) float fused_smem[];
  const int hidden = kHidden != 0 ? kHidden : p.hidden;
  float* scores = fused_smem;  // [kRows][nb]
  float* qs = scores + static_cast<size_t>(kRows) * nb;  // [hidden][kRows]
  float* ks = qs + static_cast<size_t>(hidden) * kRows;  // [kFusedC][kFusedKPitch]
  uint32_t* hist = reinterpret_cast<uint32_t*>(ks + kFusedC * kFusedKPitch);  // [warps][257]
  const FusedRowMap<kRows, Shape::kPaired> rows = FusedRowsOf<kRows, Shape::kPaired>(nb);
  const int h = blockIdx.y;
  const int tid = threadIdx.x;
  const float* kh = kp + static_cast<int64_t>(h) * nb * hidden;
  const int row_end = rows.End(nb);  // keys 0 .. row_end - 1

  if constexpr (kPool) {
    PoolRotatedQRows<TPool>(p, q_stride, nb, h, rows, qs);
    ChainedKernelWait();
  } else {
    const float* qh = qp + static_cast<int64_t>(h) * nb * hidden;
    for (int i = tid; i < hidden * kRows; i += Shape::kThreads) {
      const int c = i / kRows;
      const int qb = rows.Row(i % kRows);
      qs[i] = qb < nb ? qh[static_cast<int64_t>(qb) * hidden + c] : 0.0f;
    }
  }
  SEER_GATE_TRACE_READY();
  const int col = tid % kFusedCols;
  const int r0 = (tid / kFusedCols) * Shape::kRowsPerThread;
  const int warp_col = col / 32 * 32;  // the warp's first column
  const int last_row = min(row_end - 1, rows.Row(r0 + Shape::kRowsPerThread - 1));  // the warp's last causal row
  for (int kb0 = 0; kb0 < row_end; kb0 += kFusedCols) {
    // A warp whose columns all lie above its rows' diagonal only loads.
    const bool busy = kb0 + warp_col <= last_row;
    float acc[Shape::kRowsPerThread];
#pragma unroll
    for (int r = 0; r < Shape::kRowsPerThread; ++r) acc[r] = 0.0f;
    for (int c0 = 0; c0 < hidden; c0 += kFusedC) {
      const int cn = min(kFusedC, hidden - c0);
      // Sixteen loads per thread in flight at once, then their stores (one
      // round trip for 512 threads, two for 256).
      constexpr int kLoads = kFusedCols * kFusedC / Shape::kThreads;
      constexpr int kBatch = kLoads < 16 ? kLoads : 16;
      __syncthreads();  // the last tile is consumed (and qs written)
      // Load u of this thread: channel c0 + tid % kFusedC of key row
      // kb0 + tid / kFusedC + u * kRowStep (one base pointer, one stride).
      constexpr int kRowStep = Shape::kThreads / kFusedC;
      const int lc = tid % kFusedC;
      const int lj = tid / kFusedC;
      const float* src = kh + static_cast<int64_t>(kb0 + lj) * hidden + c0 + lc;
      const int64_t stride = static_cast<int64_t>(kRowStep) * hidden;
      float* dst = ks + lc * kFusedKPitch + lj;
#pragma unroll
      for (int u0 = 0; u0 < kLoads; u0 += kBatch) {
        float kv[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          kv[u] = (lc < cn && kb0 + lj + (u0 + u) * kRowStep < row_end) ? src[(u0 + u) * stride] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u) dst[(u0 + u) * kRowStep] = kv[u];
      }
      __syncthreads();
      // Channel c of the tile into the thread's rows, in order.
      const float* kcol = ks + col;
      const float* qrow = qs + c0 * kRows + r0;
      auto channel = [&](int c) {
        const float b = kcol[c * kFusedKPitch];
#pragma unroll
        for (int r = 0; r < Shape::kRowsPerThread; ++r) acc[r] = fmaf(qrow[c * kRows + r], b, acc[r]);
      };
      if (busy && cn == kFusedC) {
#pragma unroll
        for (int c = 0; c < kFusedC; ++c) channel(c);  // constant offsets, no loop arithmetic
      } else if (busy) {
        for (int c = 0; c < cn; ++c) channel(c);
      }
    }
    const int kb = kb0 + col;
#pragma unroll
    for (int r = 0; r < Shape::kRowsPerThread; ++r) {
      if (kb <= rows.Row(r0 + r) && kb < nb) scores[(r0 + r) * nb + kb] = acc[r] * scale;
    }
  }
  __syncthreads();

  const bool direct = p.mode != SparsityMode::kThreshold;
  const int warp = tid / 32;
  for (int r = warp; r < kRows; r += Shape::kWarps) {
    const int qb = rows.Row(r);
    if (qb >= nb) break;  // and so are the rows after it
    int32_t* direct_indices = direct ? DirectRow(p, nb, h, qb, topk, first_dense_row) : nullptr;
    SelectRow(p, nb, words, h, qb, topk, first_dense_row,
              reinterpret_cast<uint32_t*>(scores + static_cast<size_t>(r) * nb), hist + warp * 257,
              direct ? nullptr : bitmap, counts, direct_indices);
  }
}

// The most rows per CTA whose shared memory fits `limit` bytes, or 0.
int FusedRows(int nb, int hidden, size_t limit) {
  for (int rows : {16, 8, 4, 2, 1}) {
    if (FusedSmemBytes(rows, rows >= 16 ? 512 : 256, nb, hidden) <= limit) return rows;
  }
  return 0;
}

// Shared memory the fused kernel may take: 2 CTAs per SM where the rows fit
// in half of it, else 1.
constexpr size_t kFusedSmemTwoPerSm = 110 * 1024;
constexpr size_t kFusedSmemMax = 220 * 1024;

// Where the fused gate runs under kAuto: with the old gate's scores on
// wgmma, measured faster than the old one up to 12k tokens (nb 192) and
// slower from 16k (nb 256) on an H200 (docs/KERNELS.md): with more blocks,
// the k' rows re-read per CTA of few rows outweigh the scores the old gate
// writes and reads back.
constexpr int kFusedAutoMaxBlocks = 192;

int FusedRowsFor(int nb, int hidden) {
  const int two = FusedRows(nb, hidden, kFusedSmemTwoPerSm);
  return two >= 4 ? two : FusedRows(nb, hidden, kFusedSmemMax);
}

// pool_q (16 rows a CTA, hidden = D = 128): the select pools and rotates
// its q' itself from q (row stride q_stride), and qp is not read.
template <int kRows, int kCols = 256>
cudaError_t LaunchFused(const GateParams& p, int nb, int words, int64_t topk, int first_dense_row, float scale,
                        const float* qp, const float* kp, uint32_t* bitmap, int32_t* counts, bool chained, bool pool_q,
                        int64_t q_stride, cudaStream_t stream) {
  using Shape = FusedShape<kRows, kCols>;
  const size_t smem = FusedSmemBytes(kRows, Shape::kThreads, nb, p.hidden, kCols);
  auto kernel = p.hidden == kPrHidden ? FusedSelectKernel<kRows, kCols, kPrHidden> : FusedSelectKernel<kRows, kCols, 0>;
  if (pool_q) {
    if constexpr (kRows == kPoolSelectRows) {
      if (p.hidden != kPrHidden || p.head_dim != kPrHidden || p.q_weight != nullptr) return cudaErrorInvalidValue;
      kernel = p.dtype == ElemType::kBF16 ? FusedSelectKernel<kRows, kCols, kPrHidden, __nv_bfloat16>
                                          : FusedSelectKernel<kRows, kCols, kPrHidden, __half>;
    } else {
      return cudaErrorInvalidValue;
    }
  }
  SEER_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  // Chained in the K-first gate: after the Q pool, the select's CTAs take
  // SMs as the Q pool drains and start the moment it ends (0.063-0.065
  // against 0.065-0.068 ms for the gate at 8k, plain; H200, 2026-11-30);
  // with pool_q, after the projection, they pool their q' beside it.
  // (Plain elsewhere: the fused gate's one-wave kernels measured slower
  // chained.)
  return LaunchChained(chained, kernel, dim3(FusedCtas(nb, kRows, Shape::kPaired), p.num_heads), Shape::kThreads, smem,
                       stream, p, nb, words, topk, first_dense_row, scale, qp, kp, bitmap, counts, q_stride);
}

// --- lists ----------------------------------------------------------------
constexpr int kScanThreads = 1024;

// One CTA: offsets[r] = sum of counts[0 .. r), offsets[rows] = total; then
// kept_per_head[h] from the offsets. Tiles of 4 x 1024 rows, each thread 4
// consecutive rows, so every load and store is coalesced.
__global__ void __launch_bounds__(kScanThreads)
    ScanKernel(const int32_t* counts, int rows, int nb, int heads, int32_t* offsets, int64_t* kept_per_head) {
  __shared__ int32_t warp_sums[kScanThreads / 32];
  __shared__ int32_t carry;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < rows; base += 4 * kScanThreads) {
    const int i0 = base + 4 * static_cast<int>(threadIdx.x);
    int32_t v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = i0 + k < rows ? counts[i0 + k] : 0;
    const int32_t own = v[0] + v[1] + v[2] + v[3];
    const int32_t incl = WarpInclusiveSum(own);
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int32_t before = carry + incl - own;
    for (int w = 0; w < warp; ++w) before += warp_sums[w];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (i0 + k < rows) offsets[i0 + k] = before;
      before += v[k];
    }
    __syncthreads();  // everyone has read carry and warp_sums
    if (threadIdx.x == kScanThreads - 1) carry = before;
    __syncthreads();
  }
  if (threadIdx.x == 0) offsets[rows] = carry;
  __syncthreads();
  if (kept_per_head != nullptr) {
    for (int h = threadIdx.x; h < heads; h += kScanThreads) {
      kept_per_head[h] = static_cast<int64_t>(offsets[(h + 1) * nb]) - offsets[h * nb];
    }
  }
}

// One warp per row: the set bits of the row's bitmap, ascending, at offsets[row].
__global__ void FillKernel(const uint32_t* bitmap, const int32_t* offsets, int rows, int words, int32_t* indices) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  WriteSetBits(bitmap + static_cast<int64_t>(row) * words, words, indices + offsets[row]);
}

// kept_per_head[h]: the blocks of head h's rows first_block .. nb-1.
__global__ void CountKeptFromKernel(const int32_t* offsets, int heads, int nb, int first_block,
                                    int64_t* kept_per_head) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= heads) return;
  const int64_t row = static_cast<int64_t>(h) * nb;
  kept_per_head[h] = static_cast<int64_t>(offsets[row + nb]) - offsets[row + first_block];
}

// Block h: head h's last-row list, written after the heads before it.
// Null offsets stand for the dense causal lists (the last row holds 0 .. nb-1).
__global__ void KeepLastQueryBlockKernel(const int32_t* offsets, const int32_t* indices, int nb, int heads,
                                         int32_t* out_offsets, int32_t* out_indices) {
  const int h = blockIdx.x;
  auto last_row_len = [&](int g) -> int32_t {
    if (offsets == nullptr) return nb;
    const int64_t row = static_cast<int64_t>(g) * nb + nb - 1;
    return offsets[row + 1] - offsets[row];
  };
  __shared__ int32_t base_shared;
  if (threadIdx.x == 0) {
    int32_t base = 0;
    for (int g = 0; g < h; ++g) base += last_row_len(g);
    base_shared = base;
  }
  __syncthreads();
  const int32_t base = base_shared;
  const int32_t len = last_row_len(h);
  const int64_t first_row = static_cast<int64_t>(h) * nb;
  for (int qb = threadIdx.x; qb < nb; qb += blockDim.x) out_offsets[first_row + qb] = base;
  const int32_t* from = offsets == nullptr ? nullptr : indices + offsets[first_row + nb - 1];
  for (int i = threadIdx.x; i < len; i += blockDim.x) out_indices[base + i] = from == nullptr ? i : from[i];
  if (h == heads - 1 && threadIdx.x == 0) out_offsets[static_cast<int64_t>(heads) * nb] = base + len;
}

// RopeKernel over Hq * nb rows of hidden / 2 pairs, `linears` grid rows (2:
// q' and k', 1: q', or k' alone with k_only), four pairs a thread where the
// rows allow 16-byte accesses.
cudaError_t LaunchRope(const GateParams& p, int nb, const float* pooled_q, const float* rope, bool k_only, int linears,
                       float* qp, float* kp, float* qp_lo, float* kp_lo, bool chained, cudaStream_t stream) {
  const bool vec = p.hidden % 8 == 0 && p.head_dim % 4 == 0;
  const int64_t threads = static_cast<int64_t>(p.num_heads) * nb * (p.hidden / 2) / (vec ? 4 : 1);
  const dim3 grid(static_cast<unsigned>((threads + 255) / 256), static_cast<unsigned>(linears));
  return LaunchChained(chained, vec ? RopeKernel<4> : RopeKernel<1>, grid, 256, 0, stream, p, nb, pooled_q, rope,
                       k_only, qp, kp, qp_lo, kp_lo);
}

// SampleBracket's rank for every later select launch (kSampleAuto, or a
// fixed rank under SampleSelectRankForTest).
std::atomic<int> select_sample_rank_for_test{kSampleAuto};

// ScoresStripeTmaKernel's map of k' (hi or lo parts: [heads][nb][128]
// fp16): boxes of 32 channels (a 64-byte row, the 64-byte swizzle) of 128
// rows of one head; rows past nb read as zeros.
cudaError_t EncodeStripeMap(CUtensorMap* map, const void* parts, int heads, int nb) {
  const cuuint64_t row_bytes = kPrHidden * sizeof(__half);
  return EncodeTiledMap<3>(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, parts,
                           {kPrHidden, static_cast<cuuint64_t>(nb), static_cast<cuuint64_t>(heads)},
                           {row_bytes, row_bytes * static_cast<cuuint64_t>(nb)}, {32, kSgemmTile, 1},
                           CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// ScoresStripeTmaKernel's map of the pooled Q ([nb][heads][128] fp32):
// boxes of one head's 128 rows (a stripe's), whole rows; rows past nb read
// as zeros.
cudaError_t EncodeQStripeMap(CUtensorMap* map, const float* pooled_q, int heads, int nb) {
  const cuuint64_t row_bytes = kPrHidden * sizeof(float);
  return EncodeTiledMap<3>(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, pooled_q,
                           {kPrHidden, static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(nb)},
                           {row_bytes, row_bytes * static_cast<cuuint64_t>(heads)}, {kPrHidden, 1, kSgemmTile},
                           CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// ScoresStripeTmaKernel's map of a pass's scores ([heads][nb][nb] fp32, nb
// % 4 == 0): boxes of 32 columns (128-byte rows, the 128-byte swizzle) of
// 64 rows; what lies past nb is not written.
cudaError_t EncodeScoresMap(CUtensorMap* map, float* scores, int heads, int nb) {
  const cuuint64_t row_bytes = static_cast<cuuint64_t>(nb) * sizeof(float);
  return EncodeTiledMap<3>(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, scores,
                           {static_cast<cuuint64_t>(nb), static_cast<cuuint64_t>(nb), static_cast<cuuint64_t>(heads)},
                           {row_bytes, row_bytes * static_cast<cuuint64_t>(nb)}, {32, 64, 1},
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

// SelectKernel on the scores of `heads` heads from head0 on ([heads, nb, nb],
// 16-byte aligned): nz_ratio and dense rows write their lists, threshold rows
// their bitmaps and counts (then LaunchLists).
cudaError_t LaunchSelect(const GateParams& p, int nb, int words, int head0, int heads, int64_t topk,
                         int first_dense_row, const float* scores, uint32_t* bitmap, int32_t* counts, bool keys_in,
                         bool chained, cudaStream_t stream) {
  const int select_warps = SelectWarps(nb);
  const size_t select_smem = SelectSmemBytes(select_warps, nb);
  SEER_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(select_smem)));
  return LaunchChained(chained, SelectKernel, dim3(heads, (nb + select_warps - 1) / select_warps), 32 * select_warps,
                       select_smem, stream, p, nb, words, head0, topk, first_dense_row, scores, bitmap, counts, keys_in,
                       select_sample_rank_for_test.load());
}

// Threshold rows: counts and bitmaps -> offsets, kept_per_head and indices.
cudaError_t LaunchLists(const GateParams& p, int nb, int words, const uint32_t* bitmap, const int32_t* counts,
                        cudaStream_t stream) {
  const int rows = nb * p.num_heads;
  ScanKernel<<<1, kScanThreads, 0, stream>>>(counts, rows, nb, p.num_heads, p.block_offsets, p.kept_per_head);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  FillKernel<<<(rows + 7) / 8, 256, 0, stream>>>(bitmap, p.block_offsets, rows, words, p.block_indices);
  return cudaGetLastError();
}

int64_t TopK(const GateParams& p, int nb) { return NzRatioTopK(p.nz_ratio, nb); }

int FirstDenseRow(const GateParams& p, int nb) { return static_cast<int>(seer::FirstDenseRow(p.last_block_dense, nb)); }

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

std::atomic<bool> portable_pool_for_test{false};
std::atomic<bool> simt_unfused_for_test{false};
std::atomic<bool> mma_sync_for_test{false};
std::atomic<bool> lockstep_stripes_for_test{false};

// Whether this device runs BulkPoolKernel's sm_90a code (an H100/H200 and a
// binary built with sm_90a).
bool BulkPoolAvailable() {
  static Sm90aAnswers answers;
  return Sm90aCodeRuns(reinterpret_cast<const void*>(BulkPoolKernel<__nv_bfloat16, false>), answers);
}

// Whether this device runs ScoresStripeKernel's sm_90a code.
bool ScoresWgmmaAvailable() {
  static Sm90aAnswers answers;
  return Sm90aCodeRuns(reinterpret_cast<const void*>(ScoresStripeKernel<kStripeMaxSteps>), answers);
}

// Whether the gate chains its kernels (LaunchChained): where sm_90a code
// runs (programmatic dependent launch needs sm_90).
bool ChainedLaunchesRun() { return BulkPoolAvailable(); }

bool BulkPoolRuns() { return !portable_pool_for_test.load(std::memory_order_relaxed) && BulkPoolAvailable(); }

bool ValidShapes(const GateParams& p) {
  if (p.seq_len < 0 || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0) return false;
  if (p.head_dim <= 0 || p.head_dim > kMaxHeadDim || p.head_dim % 8 != 0) return false;
  if (p.block_size <= 0 || p.block_size > kMaxBlockSize) return false;
  if (p.hidden <= 0 || p.hidden > kMaxHidden || p.hidden % 2 != 0) return false;
  if (p.q_weight == nullptr && p.hidden != p.head_dim) return false;
  if (p.k_weight_heads != 0 && p.k_weight_heads != p.num_heads &&
      !(p.k_weight_heads == p.num_kv_heads && p.q_weight != nullptr)) {
    return false;
  }
  if (p.dtype != ElemType::kBF16 && p.dtype != ElemType::kF16) return false;
  return true;
}

// q's and k's row strides in elements into *q_stride and *k_stride; false
// where they or the pointers do not suit the pool's 16-byte loads.
bool RowStrides(const GateParams& p, int64_t* q_stride, int64_t* k_stride) {
  *q_stride = p.q_row_stride > 0 ? p.q_row_stride : static_cast<int64_t>(p.num_heads) * p.head_dim;
  *k_stride = p.k_row_stride > 0 ? p.k_row_stride : static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  return *q_stride >= static_cast<int64_t>(p.num_heads) * p.head_dim && *q_stride % 8 == 0 &&
         *k_stride >= static_cast<int64_t>(p.num_kv_heads) * p.head_dim && *k_stride % 8 == 0 && Aligned16(p.q) &&
         Aligned16(p.k);
}

// What one pool launch pools: Q and K, or one of them.
enum class PoolPart { kAll, kQ, kK };

// The pool: [nb, Hq * D] pooled Q, [nb * Hkv, 3D] pooled K (and its
// average's tf32 lo parts where pooled_k_lo is not null), the RoPE table
// and q' where those are not null; of `part` only (BulkPoolKernel; the
// portable PoolKernel pools both). BulkPoolKernel where `bulk`, else
// PoolKernel. `chained`: launched by LaunchChained, every CTA waiting for
// the kernel before it, or with `last_waits` only the last one.
cudaError_t LaunchPool(const GateParams& p, int64_t q_stride, int64_t k_stride, bool bulk, PoolPart part,
                       float* pooled_q, float* pooled_k, float* pooled_k_lo, float* rope_table, float* q_rotated,
                       bool chained, bool last_waits, cudaStream_t stream) {
  if (!bulk && (part != PoolPart::kAll || last_waits)) return cudaErrorInvalidValue;
  const int nb = GateNumBlocks(p);
  const int pool_chunks = bulk ? kBulkPoolChannels : kPoolThreads * 8;
  const int q_ctas = (p.num_heads * p.head_dim + pool_chunks - 1) / pool_chunks;
  const int k_ctas = (p.num_kv_heads * p.head_dim + pool_chunks - 1) / pool_chunks;
  // One CTA a (block, channel chunk), the chunks of a block adjacent: the
  // CTAs in flight read whole token rows.
  const int y0 = part == PoolPart::kK ? q_ctas : 0;
  const int ctas = part == PoolPart::kAll ? q_ctas + k_ctas : part == PoolPart::kQ ? q_ctas : k_ctas;
  const unsigned grid = static_cast<unsigned>(nb) * ctas;
  const bool bf16 = p.dtype == ElemType::kBF16;
  if (bulk) {
    auto pool = part == PoolPart::kAll ? (bf16 ? BulkPoolKernel<__nv_bfloat16, false> : BulkPoolKernel<__half, false>)
                                       : (bf16 ? BulkPoolKernel<__nv_bfloat16, true> : BulkPoolKernel<__half, true>);
    const int smem = p.block_size * kBulkPoolChannels * 2;
    SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(pool, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return LaunchChained(chained, pool, grid, kBulkPoolThreads, smem, stream, p, q_stride, k_stride, q_ctas, y0, ctas,
                         last_waits, pooled_q, pooled_k, pooled_k_lo, rope_table, q_rotated);
  }
  return LaunchChained(chained, bf16 ? PoolKernel<__nv_bfloat16> : PoolKernel<__half>, grid, kPoolThreads, 0, stream,
                       p, q_stride, k_stride, q_ctas, ctas, pooled_q, pooled_k, pooled_k_lo, rope_table, q_rotated);
}

// Bounds the grid of the select kernel and the int32 CSR offsets.
constexpr int kMaxBlocks = 48 * 1024;  // 3M tokens at block 64
static_assert(kMaxBlocks <= 65535, "ListPrefix (selection.h) computes qb (qb + 1) in 32 bits");

}  // namespace

bool WeightsAreTf32(const float* host, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, host + i, sizeof u);
    // Finite (an exponent not all ones) and the low 13 significand bits zero:
    // ptx::SplitTf32 then gives the value itself and a lo part of zero.
    if ((u & 0x7f800000u) == 0x7f800000u || (u & 0x1fffu) != 0) return false;
  }
  return true;
}

int GateNumBlocks(const GateParams& p) {
  if (p.seq_len < 0 || p.block_size <= 0) return 0;
  return static_cast<int>((static_cast<int64_t>(p.seq_len) + p.block_size - 1) / p.block_size);
}

size_t GateWorkspaceBytes(const GateParams& p) { return GateWorkspaceBytesVariant(p, GateVariant::kAuto); }

size_t GateWorkspaceBytesVariant(const GateParams& p, GateVariant variant) {
  if (!ValidShapes(p)) return 0;
  const int nb = GateNumBlocks(p);
  const bool fused = variant == GateVariant::kFused ||
                     (variant == GateVariant::kAuto && nb <= kFusedAutoMaxBlocks && FusedRowsFor(nb, p.hidden) > 0);
  return MakeLayout(p, !fused).total;
}

int64_t GateMaxIndices(const GateParams& p) {
  const int64_t nb = GateNumBlocks(p);
  const int64_t triangle = nb * (nb + 1) / 2;
  if (p.mode != SparsityMode::kNzRatio) return triangle * p.num_heads;
  const int64_t topk = TopK(p, static_cast<int>(nb));
  const int first_dense = FirstDenseRow(p, static_cast<int>(nb));
  int64_t per_head = 0;
  for (int64_t qb = 0; qb < nb; ++qb) per_head += qb >= first_dense ? qb + 1 : (topk < qb + 1 ? topk : qb + 1);
  return per_head * p.num_heads;
}

cudaError_t KeepLastQueryBlock(const int32_t* offsets, const int32_t* indices, int num_heads, int nb,
                               int32_t* out_offsets, int32_t* out_indices, cudaStream_t stream) {
  if (num_heads <= 0 || nb <= 0 || nb > kMaxBlocks || out_offsets == nullptr || out_indices == nullptr ||
      (offsets == nullptr) != (indices == nullptr)) {
    return cudaErrorInvalidValue;
  }
  KeepLastQueryBlockKernel<<<num_heads, 256, 0, stream>>>(offsets, indices, nb, num_heads, out_offsets, out_indices);
  return cudaGetLastError();
}

cudaError_t CountKeptFrom(const int32_t* offsets, int num_heads, int nb, int first_block, int64_t* kept_per_head,
                          cudaStream_t stream) {
  if (num_heads <= 0 || nb <= 0 || first_block < 0 || first_block > nb || offsets == nullptr ||
      kept_per_head == nullptr) {
    return cudaErrorInvalidValue;
  }
  CountKeptFromKernel<<<(num_heads + 127) / 128, 128, 0, stream>>>(offsets, num_heads, nb, first_block,
                                                                   kept_per_head);
  return cudaGetLastError();
}

cudaError_t RunGateKernels(const GateParams& p, cudaStream_t stream) {
  return RunGateKernelsVariant(p, GateVariant::kAuto, stream);
}

cudaError_t RunGateKernelsVariant(const GateParams& p, GateVariant variant, cudaStream_t stream) {
  if (!ValidShapes(p) || p.block_offsets == nullptr) return cudaErrorInvalidValue;
  const int nb = GateNumBlocks(p);
  if (nb == 0) {
    SEER_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(p.block_offsets, 0, sizeof(int32_t) * (static_cast<size_t>(p.num_heads) + 1), stream));
    if (p.kept_per_head != nullptr) {
      SEER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(p.kept_per_head, 0, sizeof(int64_t) * p.num_heads, stream));
    }
    return cudaSuccess;
  }
  if (p.q == nullptr || p.k == nullptr || p.k_weight == nullptr || p.rope_inv_freq == nullptr ||
      p.block_indices == nullptr || p.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (nb > kMaxBlocks) return cudaErrorInvalidValue;
  int64_t q_stride, k_stride;
  if (!RowStrides(p, &q_stride, &k_stride)) return cudaErrorInvalidValue;
  const int64_t max_indices = GateMaxIndices(p);
  if (max_indices > 0x7fffffff || p.index_capacity < max_indices) return cudaErrorInvalidValue;
  if (static_cast<int64_t>(p.num_heads) * nb * (p.hidden / 2) > 0x7fffffff) return cudaErrorInvalidValue;  // RopeKernel
  const int fused_rows = FusedRowsFor(nb, p.hidden);
  if (variant == GateVariant::kFused && fused_rows == 0) return cudaErrorInvalidValue;
  const bool fused =
      variant == GateVariant::kFused || (variant == GateVariant::kAuto && nb <= kFusedAutoMaxBlocks && fused_rows > 0);
  const GateLayout g = MakeLayout(p, !fused);
  if (p.workspace_bytes < g.total || reinterpret_cast<uintptr_t>(p.workspace) % kAlign != 0) {
    return cudaErrorInvalidValue;
  }
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  float* rope = reinterpret_cast<float*>(ws + g.rope);
  float* pooled_q = reinterpret_cast<float*>(ws + g.pooled_q);
  float* pooled_k = reinterpret_cast<float*>(ws + g.pooled_k);
  float* pooled_k_lo = reinterpret_cast<float*>(ws + g.pooled_k_lo);
  float* wt = reinterpret_cast<float*>(ws + g.wt);
  float* qp = reinterpret_cast<float*>(ws + g.qp);
  float* kp = reinterpret_cast<float*>(ws + g.kp);
  float* qp_lo = reinterpret_cast<float*>(ws + g.qp_lo);
  float* kp_lo = reinterpret_cast<float*>(ws + g.kp_lo);
  float* scores = reinterpret_cast<float*>(ws + g.scores);
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(ws + g.bitmap);
  int32_t* counts = reinterpret_cast<int32_t*>(ws + g.counts);

  // The fused gate (short sequences): without mask_linear_q (hidden = D) the
  // pool rotates q' itself where a head's channels share a warp, and at
  // hidden 128 one kernel projects and rotates. The old gate keeps its
  // SGEMM tiles and RoPE pass: at 128k tokens the fused kernel measured
  // slower (288 against 205 + 72 us, H200), and the rotation in the pool
  // cost it more than the half RoPE pass it saved (docs/KERNELS.md).
  const int linears = p.q_weight != nullptr ? 2 : 1;
  const bool bulk_pool = p.block_size <= kBulkPoolMaxBlock && BulkPoolRuns();
  // The old gate chains its kernels after the first (programmatic dependent
  // launch) where the sm_90a code runs. (The fused gate's few one-wave
  // kernels measured slower chained: 0.080 against 0.077 ms at 8k.)
  const bool chain = !fused && ChainedLaunchesRun();
  const bool simt = simt_unfused_for_test.load(std::memory_order_relaxed);
  const bool q_in_pool = fused && p.q_weight == nullptr &&
                         (bulk_pool ? kBulkPoolChannels % p.head_dim == 0
                                    : 256 % p.head_dim == 0 && p.head_dim % 16 == 0);
  const bool tc_project = !fused && !simt && p.hidden == kPrHidden && Aligned16(p.k_weight) &&
                          (p.q_weight == nullptr || Aligned16(p.q_weight));
  const bool project_rope =
      fused && p.hidden == kPrHidden && Aligned16(p.k_weight) && (p.q_weight == nullptr || Aligned16(p.q_weight));
  // The unfused gate's scores: wgmma on sm_90, else mma.sync, else (hidden
  // % 4 != 0, or the test hooks) the SIMT kernel.
  const bool tensor_scores = !fused && p.hidden % 4 == 0 && !simt;
  // (wgmma: q' in shared memory, hidden at most kStripeMaxSteps * kWgK.)
  const bool wgmma = tensor_scores && p.hidden % kWgK == 0 && p.hidden <= kStripeMaxSteps * kWgK &&
                     !mma_sync_for_test.load(std::memory_order_relaxed) && ScoresWgmmaAvailable();
  // Top-k rows read their scores only as OrderKey's keys where nothing reads
  // the probabilities: the wgmma scores kernel then writes the keys.
  const bool score_keys = wgmma && p.mode == SparsityMode::kNzRatio && p.probs == nullptr;
  // For the tf32 stripes the last writer of q' and k' (the RoPE pass or the
  // mma.sync projection) splits them; the fp16 stripes' k' comes split from
  // the wgmma projection, their q' is made in the stripe.
  float* split_q = wgmma ? qp_lo : nullptr;
  float* split_k = wgmma ? kp_lo : nullptr;
  // k' on wgmma too where the scores are (no mask_linear_q); the pool then
  // splits the pooled K.
  const bool wgmma_project = tc_project && wgmma && p.q_weight == nullptr && p.head_dim == kPrHidden;
  // Without mask_linear_q the wgmma scores kernel rotates and splits q'
  // itself (q' = RoPE(pooled Q)), and no RoPE pass writes it.
  const bool q_in_stripe = wgmma && p.q_weight == nullptr;
  float* pool_k_lo = wgmma_project ? pooled_k_lo : nullptr;
  // With k' on wgmma (hidden = D = 128, no mask_linear_q, so q' is made in
  // the stripe) the scores take fp16 parts (F16Split): the projection writes
  // k' so, the stripes rotate and split q' so.
  const bool f16_stripes = wgmma_project;
  int32_t* k_shift = f16_stripes ? reinterpret_cast<int32_t*>(ws + g.k_shift) : nullptr;

  // The fused gate's projection and RoPE in one kernel (hidden 128): on
  // tensor cores (ProjectRopeMmaKernel: at 8k tokens, H200, it ended the
  // projection 5-8 us earlier beside the pool than the SIMT kernel), or
  // with the test hook the SIMT kernel, whose fmaf chains give the unfused
  // SIMT kernels' bits.
  auto launch_project_rope = [&](bool chained) {
    if (!simt) {
      using Shape = MmaProjectShape<kMmaProjectTiles, kMmaProjectStages>;
      auto kernel = ProjectRopeMmaKernel<kMmaProjectTiles, kMmaProjectStages>;
      SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(Shape::kSmemBytes)));
      return LaunchChained(chained, kernel, dim3((nb + Shape::kRows - 1) / Shape::kRows, p.num_heads * linears),
                           Shape::kThreads, Shape::kSmemBytes, stream, p, nb, pooled_q, pooled_k, rope, qp, kp);
    }
    // 4 rows a thread, 16 a CTA: warps enough on every SM at 8k tokens.
    constexpr int kWarps = 4, kRowsPerWarp = 4, kRows = kWarps * kRowsPerWarp;
    const size_t smem = ProjectRopeSmemBytes(kRows, 3 * p.head_dim);
    auto kernel = ProjectRopeKernel<kWarps, kRowsPerWarp>;
    SEER_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    return LaunchChained(chained, kernel, dim3((nb + kRows - 1) / kRows, p.num_heads * linears), 32 * kWarps, smem,
                         stream, p, nb, pooled_q, pooled_k, rope, qp, kp);
  };
  // Without mask_linear_q, the fused gate pools K first and projects k'
  // while Q pools (chained): the projection's few small CTAs and the Q
  // pool, bound by memory, share the SMs. The Q pool's last CTA waits for
  // the projection, so the select after it sees both.
  const bool overlap = fused && q_in_pool && project_rope && linears == 1 && bulk_pool && ChainedLaunchesRun();
  // At 16 rows a CTA (up to 12k tokens at D = 128) no Q pool runs: the
  // select, chained after the projection, pools and rotates its own rows'
  // q' before it waits for it (PoolRotatedQRows).
  const bool pool_in_select = overlap && fused_rows == kPoolSelectRows;
  if (overlap) {
    SEER_CUDA_RETURN_IF_ERROR(LaunchPool(p, q_stride, k_stride, bulk_pool, PoolPart::kK, pooled_q, pooled_k,
                                         nullptr, rope, nullptr, false, false, stream));
    SEER_CUDA_RETURN_IF_ERROR(launch_project_rope(true));
    if (!pool_in_select) {
      SEER_CUDA_RETURN_IF_ERROR(LaunchPool(p, q_stride, k_stride, bulk_pool, PoolPart::kQ, pooled_q, pooled_k, nullptr,
                                           nullptr, qp, true, true, stream));
    }
  } else {
    // pool, the gate's first kernel; it also writes the RoPE table
    SEER_CUDA_RETURN_IF_ERROR(LaunchPool(p, q_stride, k_stride, bulk_pool, PoolPart::kAll, pooled_q, pooled_k,
                                         pool_k_lo, rope, q_in_pool ? qp : nullptr, false, false, stream));
  }
  // The split W^T (old gate, k' on wgmma) reads only the weights: chained
  // after the pool, its CTAs run in the pool's last wave and wait for the
  // pool only at their end.
  if (wgmma_project) {
    const int in = 3 * p.head_dim;
    SEER_CUDA_RETURN_IF_ERROR(LaunchChained(chain, SplitTransposeKernel,
                                            dim3((in + 31) / 32, (p.hidden + 31) / 32, KWeightHeads(p)), dim3(32, 8), 0,
                                            stream, p.k_weight, in, p.hidden, !p.weights_tf32, wt));
  }

  // project + rope
  if (tc_project) {
    const unsigned row_tiles = static_cast<unsigned>((nb + kSgemmTile - 1) / kSgemmTile);
    if (wgmma_project) {
      auto* const project = p.weights_tf32 ? ProjectRopeWgmmaKernel<false> : ProjectRopeWgmmaKernel<true>;
      SEER_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(project, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kWgSmemBytes)));
      SEER_CUDA_RETURN_IF_ERROR(LaunchChained(
          chain, project, dim3(row_tiles, 1, p.num_heads), kSgemmThreads, kWgSmemBytes, stream, p, nb, pooled_k,
          pooled_k_lo, wt, rope, reinterpret_cast<__half*>(kp), reinterpret_cast<__half*>(kp_lo), k_shift));
    } else {
      auto* const project = p.weights_tf32 ? ProjectRopeTf32Kernel<false> : ProjectRopeTf32Kernel<true>;
      SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(project, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(kTcProjectSmemBytes)));
      SEER_CUDA_RETURN_IF_ERROR(LaunchChained(chain, project, dim3(row_tiles, 1, p.num_heads * linears), kSgemmThreads,
                                              kTcProjectSmemBytes, stream, p, nb, pooled_q, pooled_k, rope, qp, kp,
                                              split_q, split_k));
    }
    if (p.q_weight == nullptr && !q_in_pool && !q_in_stripe) {  // q' = RoPE(pooled Q)
      SEER_CUDA_RETURN_IF_ERROR(LaunchRope(p, nb, pooled_q, rope, false, 1, qp, kp, split_q, split_k, chain, stream));
    }
  } else if (project_rope) {
    if (!overlap) SEER_CUDA_RETURN_IF_ERROR(launch_project_rope(chain));
  } else {
    if (fused) {
      ProjectKernel<64, 64>
          <<<dim3((nb + 63) / 64, (p.hidden + 63) / 64, p.num_heads * linears), kGemmThreads, 0, stream>>>(
              p, nb, pooled_q, pooled_k, qp, kp);
    } else {
      const dim3 grid((nb + kSgemmTile - 1) / kSgemmTile, (p.hidden + kSgemmTile - 1) / kSgemmTile,
                      p.num_heads * linears);
      const bool w_vec =
          p.hidden % 4 == 0 && Aligned16(p.k_weight) && (p.q_weight == nullptr || Aligned16(p.q_weight));
      auto kernel = w_vec ? ProjectSgemmKernel<true> : ProjectSgemmKernel<false>;
      kernel<<<grid, kSgemmThreads, 0, stream>>>(p, nb, pooled_q, pooled_k, qp, kp);
    }
    SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    SEER_CUDA_RETURN_IF_ERROR(LaunchRope(p, nb, pooled_q, rope, q_in_pool || q_in_stripe,
                                         q_in_pool || q_in_stripe ? 1 : 2, qp, kp, split_q, split_k, chain, stream));
  }

  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.hidden)));
  const int64_t topk = p.mode == SparsityMode::kNzRatio ? TopK(p, nb) : 0;
  const int first_dense_row = FirstDenseRow(p, nb);
  if (fused) {
    // scores + select in one kernel; for nz_ratio and dense also the lists
    decltype(&LaunchFused<1>) launch = nullptr;
    switch (fused_rows) {
      case 16: launch = nb <= 128 ? LaunchFused<16, 128> : LaunchFused<16>; break;
      case 8: launch = LaunchFused<8>; break;
      case 4: launch = LaunchFused<4>; break;
      case 2: launch = LaunchFused<2>; break;
      case 1: launch = LaunchFused<1>; break;
    }
    if (launch == nullptr) return cudaErrorInvalidValue;
    const cudaError_t e = launch(p, nb, g.words, topk, first_dense_row, scale, qp, kp, bitmap, counts, overlap,
                                 pool_in_select, q_stride, stream);
    SEER_CUDA_RETURN_IF_ERROR(e);
    if (p.mode != SparsityMode::kThreshold) return cudaSuccess;
  } else {
    // scores + select, heads_per_pass heads at a time
    const int tiles = (nb + kSgemmTile - 1) / kSgemmTile;
    auto scores_kernel = p.hidden % 4 == 0 ? ScoresKernel<true> : ScoresKernel<false>;
    const StripeKernelFn stripe = wgmma && !f16_stripes ? StripeKernelFor(p.hidden / kWgK) : nullptr;
    auto stripe_f16 = ScoresStripeKernel<kPrHidden / 32, __half>;
    constexpr size_t f16_smem = StripeSmemBytes<__half>();
    constexpr size_t tf32_smem = StripeSmemBytes<float>();
    // The fp16 stripes with a copy-engine producer where the driver encodes
    // tensor maps (the lockstep kernel otherwise, and under the test hook).
    StripeMaps stripe_maps{};
    const bool lockstep_stripes =
        f16_stripes && (lockstep_stripes_for_test.load(std::memory_order_relaxed) || TensorMapEncodeTiled() == nullptr);
    // Score rows 16-byte aligned: the copy engine stores them too.
    const bool tma_store = nb % 4 == 0;
    if (f16_stripes && !lockstep_stripes) {
      SEER_CUDA_RETURN_IF_ERROR(EncodeStripeMap(&stripe_maps.hi, kp, p.num_heads, nb));
      SEER_CUDA_RETURN_IF_ERROR(EncodeStripeMap(&stripe_maps.lo, kp_lo, p.num_heads, nb));
      SEER_CUDA_RETURN_IF_ERROR(EncodeQStripeMap(&stripe_maps.q, pooled_q, p.num_heads, nb));
      if (tma_store) SEER_CUDA_RETURN_IF_ERROR(EncodeScoresMap(&stripe_maps.scores, scores, g.heads_per_pass, nb));
      SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(ScoresStripeTmaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(TmaStripeSmemBytes())));
    } else if (f16_stripes) {
      SEER_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(stripe_f16, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(f16_smem)));
    } else if (wgmma) {
      SEER_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(stripe, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(tf32_smem)));
    } else if (tensor_scores) {
      SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(ScoresTf32Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(kTcSmemBytes)));
    }
    for (int head0 = 0; head0 < p.num_heads; head0 += g.heads_per_pass) {
      const int heads = p.num_heads - head0 < g.heads_per_pass ? p.num_heads - head0 : g.heads_per_pass;
      const dim3 grid(tiles * (tiles + 1) / 2, heads);
      if (f16_stripes && !lockstep_stripes) {
        SEER_CUDA_RETURN_IF_ERROR(LaunchChained(chain, ScoresStripeTmaKernel, dim3(heads, tiles), kTmaStripeThreads,
                                                TmaStripeSmemBytes(), stream, stripe_maps,
                                                static_cast<const int32_t*>(k_shift), static_cast<const float*>(rope),
                                                nb, head0, scale, score_keys, tma_store, scores));
      } else if (f16_stripes) {
        const __half* kp16 = reinterpret_cast<const __half*>(kp);
        const __half* kp16_lo = reinterpret_cast<const __half*>(kp_lo);
        SEER_CUDA_RETURN_IF_ERROR(LaunchChained(
            chain, stripe_f16, dim3(heads, tiles), kSgemmThreads, f16_smem, stream, static_cast<const __half*>(nullptr),
            static_cast<const __half*>(nullptr), kp16, kp16_lo, static_cast<const int32_t*>(k_shift), pooled_q, rope,
            p.num_heads, nb, head0, scale, score_keys, scores));
      } else if (wgmma) {
        SEER_CUDA_RETURN_IF_ERROR(LaunchChained(chain, stripe, dim3(heads, tiles), kSgemmThreads, tf32_smem, stream, qp,
                                                qp_lo, kp, kp_lo, static_cast<const int32_t*>(nullptr),
                                                q_in_stripe ? pooled_q : nullptr, rope, p.num_heads, nb, head0, scale,
                                                score_keys, scores));
      } else if (tensor_scores) {
        SEER_CUDA_RETURN_IF_ERROR(LaunchChained(chain, ScoresTf32Kernel, grid, kSgemmThreads, kTcSmemBytes, stream, qp,
                                                kp, nb, p.hidden, head0, scale, scores));
      } else {
        scores_kernel<<<grid, kSgemmThreads, 0, stream>>>(qp, kp, nb, p.hidden, head0, scale, scores);
        SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
      }
      SEER_CUDA_RETURN_IF_ERROR(
          LaunchSelect(p, nb, g.words, head0, heads, topk, first_dense_row, scores, bitmap, counts, score_keys,
                       chain, stream));
    }
    if (p.mode != SparsityMode::kThreshold) return cudaSuccess;
  }

  // lists (threshold rows: counts and bitmaps -> offsets and indices)
  return LaunchLists(p, nb, g.words, bitmap, counts, stream);
}

bool UseLockstepStripesForTest(bool lockstep) {
  lockstep_stripes_for_test.store(lockstep, std::memory_order_relaxed);
  return ScoresWgmmaAvailable() && TensorMapEncodeTiled() != nullptr;
}

void UseSimtUnfusedGateForTest(bool simt) { simt_unfused_for_test.store(simt, std::memory_order_relaxed); }

bool UseMmaSyncForTest(bool mma_sync) {
  mma_sync_for_test.store(mma_sync, std::memory_order_relaxed);
  return ScoresWgmmaAvailable();
}

void SampleSelectRankForTest(int rank) {
  select_sample_rank_for_test.store(rank < 0 ? kSampleAuto : std::min(rank, 31), std::memory_order_relaxed);
}

bool UsePortablePoolForTest(bool portable) {
  portable_pool_for_test.store(portable, std::memory_order_relaxed);
  return BulkPoolAvailable();
}

cudaError_t RunGatePoolForTest(const GateParams& p, float* pooled_q, float* pooled_k, cudaStream_t stream) {
  int64_t q_stride, k_stride;
  if (!ValidShapes(p) || GateNumBlocks(p) < 1 || p.q == nullptr || p.k == nullptr || pooled_q == nullptr ||
      pooled_k == nullptr || !RowStrides(p, &q_stride, &k_stride)) {
    return cudaErrorInvalidValue;
  }
  const bool bulk = p.block_size <= kBulkPoolMaxBlock && BulkPoolRuns();
  return LaunchPool(p, q_stride, k_stride, bulk, PoolPart::kAll, pooled_q, pooled_k, nullptr, nullptr, nullptr, false,
                    false, stream);
}

cudaError_t RunGateSelectForTest(const GateParams& p, const float* scores, cudaStream_t stream, bool scores_are_keys) {
  const int nb = GateNumBlocks(p);
  if (!ValidShapes(p) || nb < 1 || nb > kMaxBlocks || scores == nullptr || !Aligned16(scores) ||
      p.block_offsets == nullptr || p.block_indices == nullptr || p.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.mode != SparsityMode::kDense && p.mode != SparsityMode::kNzRatio && p.mode != SparsityMode::kThreshold) {
    return cudaErrorInvalidValue;
  }
  if (scores_are_keys && (p.mode == SparsityMode::kThreshold || p.probs != nullptr)) return cudaErrorInvalidValue;
  const int64_t max_indices = GateMaxIndices(p);
  if (max_indices > 0x7fffffff || p.index_capacity < max_indices) return cudaErrorInvalidValue;
  const GateLayout g = MakeLayout(p, /*with_scores=*/true);  // GateWorkspaceBytesVariant(p, kUnfused)
  if (p.workspace_bytes < g.total || reinterpret_cast<uintptr_t>(p.workspace) % kAlign != 0) {
    return cudaErrorInvalidValue;
  }
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  uint32_t* bitmap = reinterpret_cast<uint32_t*>(ws + g.bitmap);
  int32_t* counts = reinterpret_cast<int32_t*>(ws + g.counts);
  const int64_t topk = p.mode == SparsityMode::kNzRatio ? TopK(p, nb) : 0;
  // All heads in one launch (head0 = 0): the scores of a later pass would
  // start unaligned for an odd nb.
  SEER_CUDA_RETURN_IF_ERROR(LaunchSelect(p, nb, g.words, 0, p.num_heads, topk, FirstDenseRow(p, nb), scores, bitmap,
                                         counts, scores_are_keys, false, stream));
  if (p.mode != SparsityMode::kThreshold) return cudaSuccess;
  return LaunchLists(p, nb, g.words, bitmap, counts, stream);
}

#if defined(SEER_GATE_TRACE)
cudaError_t GateTraceReset() {
  const unsigned zero = 0;
  return cudaMemcpyToSymbol(g_gate_trace_n, &zero, sizeof(zero));
}

cudaError_t GateTracePrint(const char* title) {
  unsigned n = 0;
  SEER_CUDA_RETURN_IF_ERROR(cudaMemcpyFromSymbol(&n, g_gate_trace_n, sizeof(n)));
  n = n < kGateTraceCap ? n : kGateTraceCap;
  if (n == 0) return cudaSuccess;
  std::vector<GateTraceRec> recs(n);
  SEER_CUDA_RETURN_IF_ERROR(cudaMemcpyFromSymbol(recs.data(), g_gate_trace, sizeof(GateTraceRec) * n));
  uint64_t t0 = recs[0].start, t1 = 0;
  for (const auto& r : recs) t0 = std::min(t0, r.start), t1 = std::max(t1, r.end);
  auto us = [&](uint64_t t) { return (static_cast<double>(t) - static_cast<double>(t0)) / 1000.0; };
  static const char* names[] = {"pool (all)", "K pool", "projection", "Q pool", "select", "stripes", "select (old)"};
  constexpr uint32_t kKernels = sizeof(names) / sizeof(names[0]);
  std::printf("gate trace %s: %u CTAs, %.1f us from the first CTA's start to the last one's end\n", title, n, us(t1));
  std::printf(
      "| kernel | CTAs | SMs | first start | last start | first ready | last ready | first end | last end |"
      " CTA us median / max |\n|---|---|---|---|---|---|---|---|---|---|\n");
  for (uint32_t k = 0; k < kKernels; ++k) {
    std::vector<double> dur;
    double fs = 1e30, ls = -1, fr = 1e30, lr = -1, fe = 1e30, le = -1;
    std::vector<bool> sms(1024, false);
    for (const auto& r : recs) {
      if (r.kernel != k) continue;
      dur.push_back((static_cast<double>(r.end) - static_cast<double>(r.start)) / 1000.0);
      fs = std::min(fs, us(r.start)), ls = std::max(ls, us(r.start));
      fe = std::min(fe, us(r.end)), le = std::max(le, us(r.end));
      if (r.ready != 0) fr = std::min(fr, us(r.ready)), lr = std::max(lr, us(r.ready));
      if (r.sm < sms.size()) sms[r.sm] = true;
    }
    if (dur.empty()) continue;
    std::sort(dur.begin(), dur.end());
    std::printf("| %s | %zu | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f / %.1f |\n", names[k], dur.size(),
                static_cast<int>(std::count(sms.begin(), sms.end(), true)), fs, ls, fr < 1e29 ? fr : -1.0, lr, fe, le,
                dur[dur.size() / 2], dur.back());
  }
  // CTAs of each kernel running in each 2 us bin.
  const int bins = static_cast<int>(us(t1) / 2.0) + 1;
  std::printf("CTAs running per 2 us (%s", names[0]);
  for (uint32_t k = 1; k < kKernels; ++k) std::printf(" / %s", names[k]);
  std::printf("):\n");
  for (int b = 0; b < bins; ++b) {
    int c[kKernels] = {};
    for (const auto& r : recs) {
      if (us(r.start) < 2.0 * (b + 1) && us(r.end) >= 2.0 * b && r.kernel < kKernels) ++c[r.kernel];
    }
    std::printf("  %5.1f us:", 2.0 * b);
    for (uint32_t k = 0; k < kKernels; ++k) std::printf(" %4d", c[k]);
    std::printf("\n");
  }
  return cudaSuccess;
}
#endif

}  // namespace seer::cuda
