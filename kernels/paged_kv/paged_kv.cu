// Paged KV: the batched decode attention (flash-decoding over pages) and the
// copies into and out of pages. Layouts and the batch-invariance rule:
// kernels/paged_kv/paged_kv.h; CPU twins: kernels/paged_kv/paged_kv_cpu.h.
//
// Decode attention, in named stages. One CTA per (sequence, KV head, group
// slice, key split) takes every query head of its GQA group slice at once,
// so each K/V byte is read from memory once per step, not once per query
// head:
//   load     16 bytes of K and of V per lane, D/8 lanes per key, straight
//            from the page that holds the key;
//   score    q . k per head, reduced across the key's lanes by shuffles;
//   softmax  online, float32, exp2 with the scale folded into log2(e);
//   merge    lanes, then warps, then (when a sequence has several splits)
//            the combine kernel across splits.

#include "kernels/paged_kv/paged_kv.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/arch/sm80_mma.cuh"
#include "kernels/common/check.h"
#include "kernels/common/dispatch.h"
#include "kernels/common/elem_type.h"
#include "kernels/ops/rope.cuh"

namespace seer::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kWarps = 4;
constexpr int kMaxHeadsPerCta = 8;
constexpr int kPagedUnroll = 4;  // key steps whose loads are in flight at once
constexpr int kCombineSlices = 4;  // thread groups of the split merge, each over every 4th split

template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& raw, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(e[i]);
}

// Merges (mb, lb, ob) into (ma, la, oa); maxima in the log2 domain.
__device__ __forceinline__ void Merge(float& ma, float& la, float (&oa)[8], float mb, float lb, const float (&ob)[8]) {
  const float m = fmaxf(ma, mb);
  const float m_use = m == -INFINITY ? 0.0f : m;
  const float ca = ptx::Exp2(ma - m_use);
  const float cb = ptx::Exp2(mb - m_use);
  la = la * ca + lb * cb;
#pragma unroll
  for (int i = 0; i < 8; ++i) oa[i] = oa[i] * ca + ob[i] * cb;
  ma = m;
}

struct Partial {
  float o[8];
  float max;
  float sum;
};

__host__ __device__ inline int SplitsFor(int context) {
  return context <= 0 ? 1 : (context + kPagedKeysPerSplit - 1) / kPagedKeysPerSplit;
}

// The keys [key_begin, key_end) of sequence b's split, and its number of
// splits; false when the split is past the sequence's context.
__device__ __forceinline__ bool SplitKeys(const PagedAttentionParams& p, int b, int split, int* key_begin, int* key_end,
                                          int* splits) {
  const int context = p.context_lens[b];
  *key_begin = split * kPagedKeysPerSplit;
  if (*key_begin >= context) return false;
  *key_end = min(context, *key_begin + kPagedKeysPerSplit);
  *splits = SplitsFor(context);
  return true;
}

// partial: [B, Hq, max_splits, kHeadDim + 2] (O, then max and sum).
template <int kHeadDim, int kHeads, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    PagedSplitKernel(const PagedAttentionParams p, float scale_log2, int max_splits, float* partial) {
  constexpr int kLanesPerKey = kHeadDim / 8;
  constexpr int kKeysPerStep = 32 / kLanesPerKey;
  const int slices_per_kv = (p.num_heads / p.num_kv_heads) / kHeads;
  const int b = blockIdx.x / (p.num_kv_heads * slices_per_kv);
  const int rest = blockIdx.x % (p.num_kv_heads * slices_per_kv);
  const int kvh = rest / slices_per_kv;
  const int h0 = kvh * (p.num_heads / p.num_kv_heads) + (rest % slices_per_kv) * kHeads;
  const int split = blockIdx.y;
  int key_begin, key_end, splits;
  if (!SplitKeys(p, b, split, &key_begin, &key_end, &splits)) return;  // past this sequence's keys

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int sub = lane / kLanesPerKey;
  const int chunk = lane % kLanesPerKey;

  float qv[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const T* q = static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h0 + g) * kHeadDim + chunk * 8;
    Unpack8<T>(*reinterpret_cast<const uint4*>(q), qv[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) qv[g][i] *= scale_log2;
  }
  float m[kHeads], l[kHeads], acc[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  }

  const int32_t* table = p.block_tables + static_cast<int64_t>(b) * p.max_pages_per_seq;
  const T* k_pages = static_cast<const T*>(p.k_pages);
  const T* v_pages = static_cast<const T*>(p.v_pages);
  // Each lane takes keys base + sub, base stepping by kStride; the loads of
  // kUnroll steps are issued before any is used (memory-level parallelism:
  // one step alone keeps a CTA far from the bandwidth), then the steps are
  // reduced in order, so the arithmetic is that of the plain loop. The
  // bounds are uniform across the warp (the shuffles need every lane).
  constexpr int kStride = kWarps * kKeysPerStep;
  for (int base0 = key_begin + warp * kKeysPerStep; base0 < key_end; base0 += kPagedUnroll * kStride) {
    uint4 k_raw[kPagedUnroll], v_raw[kPagedUnroll];
#pragma unroll
    for (int u = 0; u < kPagedUnroll; ++u) {
      const int j = base0 + u * kStride + sub;
      k_raw[u] = v_raw[u] = make_uint4(0, 0, 0, 0);
      if (j < key_end) {
        const int64_t at = ((static_cast<int64_t>(table[j / p.page_tokens]) * p.num_kv_heads + kvh) * p.page_tokens +
                            j % p.page_tokens) *
                               kHeadDim +
                           chunk * 8;
        k_raw[u] = *reinterpret_cast<const uint4*>(k_pages + at);
        v_raw[u] = *reinterpret_cast<const uint4*>(v_pages + at);
      }
    }
#pragma unroll
    for (int u = 0; u < kPagedUnroll; ++u) {
      if (base0 + u * kStride >= key_end) break;
      const bool valid = base0 + u * kStride + sub < key_end;
      float kv[8], vv[8];
      Unpack8<T>(k_raw[u], kv);
      Unpack8<T>(v_raw[u], vv);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) s = fmaf(qv[g][i], kv[i], s);
#pragma unroll
        for (int off = kLanesPerKey / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (!valid) s = -INFINITY;
        const float m_new = fmaxf(m[g], s);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float correction = ptx::Exp2(m[g] - m_use);
        const float prob = ptx::Exp2(s - m_use);
        l[g] = l[g] * correction + prob;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(acc[g][i], correction, prob * vv[i]);
        m[g] = m_new;
      }
    }
  }

  // Lanes holding the same chunk of different keys, then warps.
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
#pragma unroll
    for (int off = kLanesPerKey; off < 32; off *= 2) {
      float ob[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) ob[i] = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
      const float mb = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float lb = __shfl_xor_sync(0xffffffffu, l[g], off);
      Merge(m[g], l[g], acc[g], mb, lb, ob);
    }
  }
  __shared__ Partial warp_part[kWarps][kHeads][kLanesPerKey];
  if (lane < kLanesPerKey) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
#pragma unroll
      for (int i = 0; i < 8; ++i) warp_part[warp][g][lane].o[i] = acc[g][i];
      warp_part[warp][g][lane].max = m[g];
      warp_part[warp][g][lane].sum = l[g];
    }
  }
  __syncthreads();
  if (warp != 0 || lane >= kLanesPerKey) return;
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    for (int w = 1; w < kWarps; ++w) {
      Merge(m[g], l[g], acc[g], warp_part[w][g][lane].max, warp_part[w][g][lane].sum, warp_part[w][g][lane].o);
    }
    const int h = h0 + g;
    if (splits == 1) {
      const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
      T* dst = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * p.num_heads + h) * kHeadDim + chunk * 8;
#pragma unroll
      for (int i = 0; i < 8; i += 2) {
        *reinterpret_cast<uint32_t*>(dst + i) = ptx::PackPair<T>(acc[g][i] * inv, acc[g][i + 1] * inv);
      }
      continue;
    }
    float* dst = partial + ((static_cast<int64_t>(b) * p.num_heads + h) * max_splits + split) * (kHeadDim + 2);
#pragma unroll
    for (int i = 0; i < 8; ++i) dst[chunk * 8 + i] = acc[g][i];
    if (chunk == 0) {
      dst[kHeadDim] = m[g];
      dst[kHeadDim + 1] = l[g];
    }
  }
}

// One CTA per (sequence, head): merges the sequence's own splits; writes
// zeros for an empty sequence. A single-split sequence was written by the
// split kernel. kCombineSlices groups of D threads: the splits' maxima and
// sums go into shared memory first (split s by thread s mod the block), then
// slice j sums the outputs of splits j, j + kCombineSlices, ... in order and
// the slices' sums are added in slice order, so the result depends only on
// the sequence's own splits, never on the batch. Slices shorten the chain of
// loads one thread walks (at one sequence and 32k positions, 128 splits over
// 32 CTAs: the combine is latency, not bandwidth).
template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kHeadDim* kCombineSlices)
    PagedCombineKernel(const PagedAttentionParams p, const float* partial, int max_splits) {
  extern __shared__ float split_stats[];  // [max_splits] scales, then [max_splits] sums
  constexpr int kThreads = kHeadDim * kCombineSlices;
  __shared__ float warp_max[kThreads / 32];
  __shared__ float slice_o[kCombineSlices][kHeadDim];
  __shared__ float slice_l[kCombineSlices];
  const int bh = blockIdx.x;
  const int b = bh / p.num_heads;
  const int t = threadIdx.x;
  const int d = t % kHeadDim;
  const int slice = t / kHeadDim;
  const int context = p.context_lens[b];
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(bh) * kHeadDim;
  if (context <= 0) {
    if (slice == 0) out[d] = static_cast<T>(0.0f);
    return;
  }
  const int splits = SplitsFor(context);
  if (splits == 1) return;
  const float* part = partial + static_cast<int64_t>(bh) * max_splits * (kHeadDim + 2);
  float* scale = split_stats;
  float* sum = split_stats + max_splits;
  float m = -INFINITY;
  for (int s = t; s < splits; s += kThreads) {
    scale[s] = part[s * (kHeadDim + 2) + kHeadDim];
    sum[s] = part[s * (kHeadDim + 2) + kHeadDim + 1];
    m = fmaxf(m, scale[s]);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (t % 32 == 0) warp_max[t / 32] = m;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, warp_max[w]);
  const float m_use = m == -INFINITY ? 0.0f : m;
  for (int s = t; s < splits; s += kThreads) scale[s] = ptx::Exp2(scale[s] - m_use);
  __syncthreads();
  float l = 0.0f;
  float o = 0.0f;
#pragma unroll 4
  for (int s = slice; s < splits; s += kCombineSlices) {
    const float c = scale[s];
    l += sum[s] * c;
    o += part[s * (kHeadDim + 2) + d] * c;
  }
  slice_o[slice][d] = o;
  if (d == 0) slice_l[slice] = l;
  __syncthreads();
  if (slice != 0) return;
  o = 0.0f;
  l = 0.0f;
#pragma unroll
  for (int j = 0; j < kCombineSlices; ++j) {
    o += slice_o[j][d];
    l += slice_l[j];
  }
  out[d] = static_cast<T>(l > 0.0f ? o / l : 0.0f);
}

// The same decode attention on tensor cores (mma.sync m16n8k16), for GQA
// groups of up to 16 query heads: one CTA of kWarps warps per (sequence, KV
// head, key split), the group's query heads the rows of the tile (rows past
// the group are zero). A warp takes 16 keys a step (steps w, w + kWarps, ...
// of its split); pages hold a multiple of 16 tokens, so a step never
// straddles two pages and needs one block-table lookup. K and V reach the
// MMA operands' registers in a per-warp layout (kStages = 0: loaded straight
// from global memory; kStages > 0, the default 3: through a per-warp ring of
// steps in shared memory filled by cp.async two steps ahead, which keeps
// loads in flight while the warp computes: it brought the 8B shape's decode
// step at batch 32 / 8k from 16.2 to 14.7 ms on an H200):
//   S = Q K^T   the head dimension is the reduction, and its order is free as
//               long as Q and K agree on it: lane (r = lane / 4, c = lane % 4)
//               of n-tile t loads key 8t + r, elements d = 32i + 8c .. + 7,
//               16-byte loads, and Q is gathered in the same order;
//   O += P V    the 16 keys are the reduction (P stays in the registers S was
//               in, as in FlashAttention-2) and the head dimension the
//               columns: lane r holds column d = 64 (nt / 8) + 8r + nt % 8
//               of n-tile nt, so it loads elements 64u + 8r .. + 7 of each
//               of keys 2c, 2c + 1, 2c + 8, 2c + 9 (the 8 lanes of one key
//               read 128 contiguous bytes, whole sectors) and pairs them up
//               with byte permutes.
// The instructions per byte are about a tenth of the SIMT kernel's, whose
// shuffles and per-key softmax kept it issue-bound at large batches.
// Softmax is online per step in float32 (exp2, the scale folded into
// log2(e)); the warps' partials merge through shared memory, in warp order.
template <int kHeadDim, bool kRows16, int kStages, typename T>
__global__ void __launch_bounds__(kWarps * 32, kStages == 0 ? 4 : 2)
    PagedSplitMmaKernel(const PagedAttentionParams p, float scale_log2, int max_splits, float* partial) {
  constexpr int kD32 = kHeadDim / 32;  // 16-byte K loads per lane per key
  constexpr int kDv = kHeadDim / 8;  // V columns per lane, and n-tiles of O
  constexpr int kV16 = kHeadDim / 64;  // 16-byte V loads per lane per key
  constexpr int kRows = kRows16 ? 16 : 8;
  const int group = p.num_heads / p.num_kv_heads;
  const int b = blockIdx.x / p.num_kv_heads;
  const int kvh = blockIdx.x % p.num_kv_heads;
  const int h0 = kvh * group;
  const int split = blockIdx.y;
  int key_begin, key_end, splits;
  if (!SplitKeys(p, b, split, &key_begin, &key_end, &splits)) return;  // past this sequence's keys

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int r = lane / 4;
  const int c = lane % 4;

  // Q as the A operand, k-step kk: columns 2c, 2c + 1 are elements d(4kk),
  // d(4kk + 1) of the lane's order, columns 2c + 8, 2c + 9 elements d(4kk + 2),
  // d(4kk + 3), where d(e) = 32 (e / 8) + 8c + e % 8.
  uint32_t qa[kHeadDim / 16][4];
  {
    const T* q = static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.num_heads + h0) * kHeadDim;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const int d = (kk / 2) * 32 + c * 8 + (kk % 2) * 4;
      uint2 lo = make_uint2(0, 0), hi = make_uint2(0, 0);
      if (r < group) lo = *reinterpret_cast<const uint2*>(q + static_cast<int64_t>(r) * kHeadDim + d);
      if (kRows16 && r + 8 < group)
        hi = *reinterpret_cast<const uint2*>(q + static_cast<int64_t>(r + 8) * kHeadDim + d);
      qa[kk][0] = lo.x;
      qa[kk][1] = hi.x;
      qa[kk][2] = lo.y;
      qa[kk][3] = hi.y;
    }
  }

  float o[kDv][4];
#pragma unroll
  for (int nt = 0; nt < kDv; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // rows r and r + 8, log2 domain
  float l[2] = {0.0f, 0.0f};  // this lane's share of the rows' sums

  const int32_t* table = p.block_tables + static_cast<int64_t>(b) * p.max_pages_per_seq;
  const int steps = (key_end - key_begin + 15) / 16;
  const int my_steps = warp < steps ? (steps - warp + kWarps - 1) / kWarps : 0;  // steps warp, warp + kWarps, ...
  // The step's first key, its count of keys that exist (>= 1), and the
  // offset of its 16 rows in the pages (one page holds all of them).
  auto locate = [&](int n, int* valid) {
    const int j0 = key_begin + (warp + n * kWarps) * 16;
    *valid = key_end - j0;
    return ((static_cast<int64_t>(table[j0 / p.page_tokens]) * p.num_kv_heads + kvh) * p.page_tokens +
            j0 % p.page_tokens) *
           kHeadDim;
  };
  // kStages > 0: a ring of kStages steps per warp in shared memory, filled
  // with cp.async kStages - 1 steps ahead of the one computed, so the loads
  // stay in flight while the warp computes (the registers could hold one).
  // Rows are swizzled by 16-byte chunk so that the reads below are free of
  // bank conflicts: K row k's chunk ch sits at ch ^ 4 (k & 1), V's at
  // ch ^ (k & 6). Keys past the context are zero-filled, not read.
  constexpr int kChunks = 16 * kHeadDim / 8;  // 16-byte chunks in a step's K (or V)
  extern __shared__ uint4 dyn_smem[];
  uint4* ring = dyn_smem + warp * kStages * 2 * kChunks;
  auto issue = [&](int n) {
    if (n < my_steps) {
      int valid;
      const int64_t base = locate(n, &valid);
      const uint4* kg = reinterpret_cast<const uint4*>(static_cast<const T*>(p.k_pages) + base);
      const uint4* vg = reinterpret_cast<const uint4*>(static_cast<const T*>(p.v_pages) + base);
      uint4* ks = ring + (kStages > 0 ? n % kStages : 0) * 2 * kChunks;
      uint4* vs = ks + kChunks;
#pragma unroll
      for (int m = 0; m < kChunks / 32; ++m) {
        const int g = lane + 32 * m;
        const int key = g / (kHeadDim / 8), ch = g % (kHeadDim / 8);
        const bool ok = key < valid;
        ptx::CpAsync16ZeroFill(ptx::SmemAddr(ks + key * (kHeadDim / 8) + (ch ^ ((key & 1) * 4))), kg + (ok ? g : 0),
                               ok);
        ptx::CpAsync16ZeroFill(ptx::SmemAddr(vs + key * (kHeadDim / 8) + (ch ^ (key & 6))), vg + (ok ? g : 0), ok);
      }
    }
    ptx::CpAsyncCommit();  // empty groups too: the wait below counts groups
  };
  if constexpr (kStages > 0) {
#pragma unroll
    for (int n = 0; n < kStages - 1; ++n) issue(n);
  }
  for (int n = 0; n < my_steps; ++n) {
    int valid;
    uint4 kr[2][kD32];
    uint4 vr[4][kV16];
    if constexpr (kStages > 0) {
      ptx::CpAsyncWait<kStages - 2>();
      __syncwarp();
      const uint4* ks = ring + (kStages > 0 ? n % kStages : 0) * 2 * kChunks;
      const uint4* vs = ks + kChunks;
      valid = key_end - (key_begin + (warp + n * kWarps) * 16);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int key = t * 8 + r;
#pragma unroll
        for (int i = 0; i < kD32; ++i) kr[t][i] = ks[key * (kHeadDim / 8) + ((i * 4 + c) ^ ((key & 1) * 4))];
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int key = 2 * c + (x & 1) + (x & 2) * 4;
#pragma unroll
        for (int u = 0; u < kV16; ++u) vr[x][u] = vs[key * (kHeadDim / 8) + ((u * 8 + r) ^ (key & 6))];
      }
      // The slot refilled now is the one read in the previous step; every
      // lane is past those reads (the __syncwarp above).
      issue(n + kStages - 1);
    } else {
      const int64_t base = locate(n, &valid);
      const T* kp = static_cast<const T*>(p.k_pages) + base;
      const T* vp = static_cast<const T*>(p.v_pages) + base;
      // Every load is issued before any is used. Keys past the context are
      // still inside the page (stale or never written), so they are read and
      // zeroed; their scores are masked below.
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int key = t * 8 + r;
#pragma unroll
        for (int i = 0; i < kD32; ++i) {
          kr[t][i] = __ldg(reinterpret_cast<const uint4*>(kp + key * kHeadDim + i * 32 + c * 8));
          if (key >= valid) kr[t][i] = make_uint4(0, 0, 0, 0);
        }
      }
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int key = 2 * c + (x & 1) + (x & 2) * 4;  // 2c, 2c + 1, 2c + 8, 2c + 9
#pragma unroll
        for (int u = 0; u < kV16; ++u) {
          vr[x][u] = __ldg(reinterpret_cast<const uint4*>(vp + key * kHeadDim + u * 64 + r * 8));
          if (key >= valid) vr[x][u] = make_uint4(0, 0, 0, 0);
        }
      }
    }

    float s[2][4];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; ++kk) {
        const uint32_t* w = reinterpret_cast<const uint32_t*>(&kr[t][kk / 2]);
        ptx::Mma16816<T>(s[t], qa[kk], w[(kk % 2) * 2], w[(kk % 2) * 2 + 1]);
      }
    }

    // Online softmax per row; a row's 16 scores are spread over its quad.
    float corr[2];
#pragma unroll
    for (int h = 0; h < (kRows16 ? 2 : 1); ++h) {
      float mx = m[h];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = t * 8 + 2 * c + e;
          float& x = s[t][2 * h + e];
          x = key < valid ? x * scale_log2 : -INFINITY;
          mx = fmaxf(mx, x);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_use = mx == -INFINITY ? 0.0f : mx;
      corr[h] = ptx::Exp2(m[h] - m_use);
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[t][2 * h + e];
          x = ptx::Exp2(x - m_use);
          sum += x;
        }
      }
      l[h] = l[h] * corr[h] + sum;
      m[h] = mx;
    }
    if (!kRows16) corr[1] = 1.0f;
    uint32_t pa[4];
    pa[0] = ptx::PackPair<T>(s[0][0], s[0][1]);
    pa[1] = kRows16 ? ptx::PackPair<T>(s[0][2], s[0][3]) : 0u;
    pa[2] = ptx::PackPair<T>(s[1][0], s[1][1]);
    pa[3] = kRows16 ? ptx::PackPair<T>(s[1][2], s[1][3]) : 0u;

#pragma unroll
    for (int nt = 0; nt < kDv; ++nt) {
      o[nt][0] *= corr[0];
      o[nt][1] *= corr[0];
      if (kRows16) {
        o[nt][2] *= corr[1];
        o[nt][3] *= corr[1];
      }
      const int u = nt / 8, w = (nt % 8) / 2;
      const unsigned sel = (nt % 2) ? 0x7632u : 0x5410u;
      const uint32_t b0 = __byte_perm(reinterpret_cast<const uint32_t*>(&vr[0][u])[w],
                                      reinterpret_cast<const uint32_t*>(&vr[1][u])[w], sel);
      const uint32_t b1 = __byte_perm(reinterpret_cast<const uint32_t*>(&vr[2][u])[w],
                                      reinterpret_cast<const uint32_t*>(&vr[3][u])[w], sel);
      ptx::Mma16816<T>(o[nt], pa, b0, b1);
    }
  }

  // The rows' sums over their quads; then the warps' partials, in warp order.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  // Shared memory keeps the lanes' own order, slot j = 8 nt + 2c + e for
  // column d = 64 (nt / 8) + 8 (2c + e) + nt % 8, rows padded by 8 floats: the float2 stores
  // below and the merge's reads are free of bank conflicts.
  constexpr int kStride = kHeadDim + 8;
  if constexpr (kStages > 0) {  // the ring is reused: every copy and read of it done
    ptx::CpAsyncWait<0>();
    __syncthreads();
  }
  auto& warp_o = *reinterpret_cast<float(*)[kWarps][kRows][kStride]>(dyn_smem);
  auto& warp_m = *reinterpret_cast<float(*)[kWarps][kRows]>(&warp_o[kWarps][0][0]);
  auto& warp_l = *reinterpret_cast<float(*)[kWarps][kRows]>(&warp_m[kWarps][0]);
#pragma unroll
  for (int nt = 0; nt < kDv; ++nt) {
    *reinterpret_cast<float2*>(&warp_o[warp][r][nt * 8 + 2 * c]) = make_float2(o[nt][0], o[nt][1]);
    if (kRows16) *reinterpret_cast<float2*>(&warp_o[warp][r + 8][nt * 8 + 2 * c]) = make_float2(o[nt][2], o[nt][3]);
  }
  if (c == 0) {
    warp_m[warp][r] = m[0];
    warp_l[warp][r] = l[0];
    if (kRows16) {
      warp_m[warp][r + 8] = m[1];
      warp_l[warp][r + 8] = l[1];
    }
  }
  __syncthreads();
  const int rows = min(group, kRows);
  for (int i = threadIdx.x; i < rows * kHeadDim; i += kWarps * 32) {
    const int row = i / kHeadDim, j = i % kHeadDim;
    const int d = (j / 64) * 64 + (j % 8) * 8 + (j / 8) % 8;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, warp_m[w][row]);
    const float m_use = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float scale = ptx::Exp2(warp_m[w][row] - m_use);
      sum += warp_l[w][row] * scale;
      acc += warp_o[w][row][j] * scale;
    }
    const int h = h0 + row;
    if (splits == 1) {
      static_cast<T*>(p.out)[(static_cast<int64_t>(b) * p.num_heads + h) * kHeadDim + d] =
          static_cast<T>(sum > 0.0f ? acc / sum : 0.0f);
      continue;
    }
    float* dst = partial + ((static_cast<int64_t>(b) * p.num_heads + h) * max_splits + split) * (kHeadDim + 2);
    dst[d] = acc;
    if (d == 0) {
      dst[kHeadDim] = mx;
      dst[kHeadDim + 1] = sum;
    }
  }
}

// The split merge after either split kernel (it also zeroes empty sequences).
template <int kHeadDim, typename T>
cudaError_t LaunchCombine(const PagedAttentionParams& p, const float* partial, int max_splits, cudaStream_t stream) {
  const size_t stats_bytes = 2 * sizeof(float) * static_cast<size_t>(max_splits);
  if (stats_bytes > 40 * 1024) {  // past ~1.3M positions: ask for more shared memory
    SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        PagedCombineKernel<kHeadDim, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(stats_bytes)));
  }
  PagedCombineKernel<kHeadDim, T>
      <<<p.batch * p.num_heads, kHeadDim * kCombineSlices, stats_bytes, stream>>>(p, partial, max_splits);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

template <int kHeadDim, int kHeads, typename T>
cudaError_t LaunchPaged(const PagedAttentionParams& p, cudaStream_t stream) {
  const int max_splits = SplitsFor(p.max_context);
  const int slices = (p.num_heads / p.num_kv_heads) / kHeads;
  const dim3 grid(p.batch * p.num_kv_heads * slices, max_splits);
  float* partial = static_cast<float*>(p.workspace);
  PagedSplitKernel<kHeadDim, kHeads, T><<<grid, kWarps * 32, 0, stream>>>(p, p.scale * kLog2e, max_splits, partial);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return LaunchCombine<kHeadDim, T>(p, partial, max_splits, stream);
}

template <int kHeadDim, bool kRows16, int kStages, typename T>
cudaError_t LaunchPagedMma(const PagedAttentionParams& p, cudaStream_t stream) {
  const int max_splits = SplitsFor(p.max_context);
  const dim3 grid(p.batch * p.num_kv_heads, max_splits);
  float* partial = static_cast<float*>(p.workspace);
  constexpr int kRows = kRows16 ? 16 : 8;
  constexpr size_t kMergeBytes = sizeof(float) * kWarps * kRows * (kHeadDim + 8 + 2);
  constexpr size_t kRingBytes = size_t{16} * kWarps * kStages * 2 * (16 * kHeadDim / 8);
  constexpr size_t kSmem = kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes;
  if constexpr (kSmem > 48 * 1024) {
    // Per launch, not once per process: the attribute belongs to the current
    // device, and a process may launch on several. (A recorded step does not
    // repeat it; it is a host call.)
    SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PagedSplitMmaKernel<kHeadDim, kRows16, kStages, T>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  }
  PagedSplitMmaKernel<kHeadDim, kRows16, kStages, T>
      <<<grid, kWarps * 32, kSmem, stream>>>(p, p.scale * kLog2e, max_splits, partial);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return LaunchCombine<kHeadDim, T>(p, partial, max_splits, stream);
}

// kAuto: SEER_PAGED_KERNEL=simt|direct|mma when set (for side-by-side
// benchmarks), else tensor cores through the shared-memory ring.
PagedKernel Resolve(PagedKernel k) {
  if (k != PagedKernel::kAuto) return k;
  static const PagedKernel from_env = [] {
    const char* e = std::getenv("SEER_PAGED_KERNEL");
    if (e != nullptr && std::strcmp(e, "simt") == 0) return PagedKernel::kSimt;
    if (e != nullptr && std::strcmp(e, "direct") == 0) return PagedKernel::kTensorCoreDirect;
    return PagedKernel::kTensorCore;
  }();
  return from_env;
}

// Tensor cores for GQA groups of up to 16 heads (one tile's rows); else, or
// when asked, the SIMT kernel: heads per CTA the whole group up to
// kMaxHeadsPerCta.
template <int kHeadDim, typename T>
cudaError_t DispatchGroup(const PagedAttentionParams& p, cudaStream_t stream) {
  const int group = p.num_heads / p.num_kv_heads;
  const PagedKernel kernel = Resolve(p.kernel);
  if (kernel != PagedKernel::kSimt && group <= 16) {
    if (kernel == PagedKernel::kTensorCoreDirect) {
      return group <= 8 ? LaunchPagedMma<kHeadDim, false, 0, T>(p, stream)
                        : LaunchPagedMma<kHeadDim, true, 0, T>(p, stream);
    }
    return group <= 8 ? LaunchPagedMma<kHeadDim, false, 3, T>(p, stream)
                      : LaunchPagedMma<kHeadDim, true, 3, T>(p, stream);
  }
  switch (group) {
    case 1: return LaunchPaged<kHeadDim, 1, T>(p, stream);
    case 2: return LaunchPaged<kHeadDim, 2, T>(p, stream);
    case 4: return LaunchPaged<kHeadDim, 4, T>(p, stream);
    default: break;
  }
  if (group % kMaxHeadsPerCta == 0) return LaunchPaged<kHeadDim, kMaxHeadsPerCta, T>(p, stream);
  return cudaErrorInvalidValue;
}

// One thread per 16 bytes of a token row of one head.
template <typename Fn>
__global__ void ForEachChunk(int rows, int chunks_per_row, Fn fn) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * chunks_per_row) return;
  fn(static_cast<int>(i / chunks_per_row), static_cast<int>(i % chunks_per_row));
}

template <typename Fn>
cudaError_t LaunchChunks(int rows, int chunks_per_row, Fn fn, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(rows) * chunks_per_row;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  ForEachChunk<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream>>>(rows, chunks_per_row,
                                                                                               fn);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

__device__ __forceinline__ int64_t PageElem(int32_t page, int head, int offset, int num_kv_heads, int page_tokens,
                                            int head_dim) {
  return ((static_cast<int64_t>(page) * num_kv_heads + head) * page_tokens + offset) * head_dim;
}

bool ValidPageShape(int num_kv_heads, int head_dim, int page_tokens) {
  return num_kv_heads > 0 && head_dim > 0 && head_dim % 8 == 0 && page_tokens > 0;
}

}  // namespace

int PagedDecodeSplits(int max_context) { return SplitsFor(max_context); }

size_t PagedDecodeWorkspaceBytes(int batch, int num_heads, int head_dim, int max_context) {
  if (batch <= 0 || num_heads <= 0 || head_dim <= 0) return 0;
  return sizeof(float) * static_cast<size_t>(batch) * num_heads * SplitsFor(max_context) * (head_dim + 2);
}

cudaError_t PagedDecodeAttention(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0 ||
      p.page_tokens <= 0 || p.max_pages_per_seq <= 0 || p.max_context < 0 ||
      static_cast<int64_t>(p.max_pages_per_seq) * p.page_tokens < p.max_context) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  if (p.q == nullptr || p.out == nullptr || p.k_pages == nullptr || p.v_pages == nullptr || p.block_tables == nullptr ||
      p.context_lens == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (SplitsFor(p.max_context) > 1 &&
      (p.workspace == nullptr ||
       p.workspace_bytes < PagedDecodeWorkspaceBytes(p.batch, p.num_heads, p.head_dim, p.max_context))) {
    return cudaErrorInvalidValue;
  }
  // D/8 lanes share a key, so D/8 must divide the warp: 64 and 128.
  return SEER_DISPATCH_ELEM(p.dtype, Elem, [&] {
    switch (p.head_dim) {
      case 64: return DispatchGroup<64, Elem>(p, stream);
      case 128: return DispatchGroup<128, Elem>(p, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}

cudaError_t WriteKvPaged(const void* k, const void* v, const int32_t* positions, const int32_t* block_tables,
                         int max_pages_per_seq, int batch, int num_kv_heads, int head_dim, int page_tokens,
                         void* k_pages, void* v_pages, cudaStream_t stream) {
  if (batch < 0 || !ValidPageShape(num_kv_heads, head_dim, page_tokens)) return cudaErrorInvalidValue;
  const int chunks = head_dim / 8;
  auto* kp = static_cast<uint4*>(k_pages);
  auto* vp = static_cast<uint4*>(v_pages);
  const auto* ks = static_cast<const uint4*>(k);
  const auto* vs = static_cast<const uint4*>(v);
  // Row r = (sequence, head).
  return LaunchChunks(
      batch * num_kv_heads, chunks,
      [=] __device__(int r, int c) {
        const int b = r / num_kv_heads;
        const int h = r % num_kv_heads;
        const int pos = positions[b];
        const int32_t page = block_tables[static_cast<int64_t>(b) * max_pages_per_seq + pos / page_tokens];
        const int64_t dst = PageElem(page, h, pos % page_tokens, num_kv_heads, page_tokens, head_dim) / 8 + c;
        const int64_t src = static_cast<int64_t>(r) * chunks + c;
        kp[dst] = ks[src];
        vp[dst] = vs[src];
      },
      stream);
}

namespace {

// Eight bf16 from 16 bytes at src, each plus its bias rounded back to bf16
// (AddBias's arithmetic) when there is one.
__device__ __forceinline__ void LoadBiased8(const __nv_bfloat16* src, const float* bias, float (&f)[8]) {
  Unpack8<__nv_bfloat16>(*reinterpret_cast<const uint4*>(src), f);
  if (bias == nullptr) return;
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = __bfloat162float(__float2bfloat16(f[i] + bias[i]));
}

__device__ __forceinline__ uint4 Pack8(const float (&f)[8]) {
  uint4 raw;
  auto* e = reinterpret_cast<__nv_bfloat16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = __float2bfloat16(f[i]);
  return raw;
}

// Rotates chunk c of a head (elements 8c .. 8c + 7 against D/2 + 8c ..) from
// src into dst with the row's angles.
__device__ __forceinline__ void RopeChunk(const __nv_bfloat16* src, const float* bias, const float2* angles, int c,
                                          int half, __nv_bfloat16* dst) {
  float lo[8], hi[8], lo_out[8], hi_out[8];
  LoadBiased8(src + 8 * c, bias == nullptr ? nullptr : bias + 8 * c, lo);
  LoadBiased8(src + half + 8 * c, bias == nullptr ? nullptr : bias + half + 8 * c, hi);
#pragma unroll
  for (int i = 0; i < 8; ++i) RotatePair(lo[i], hi[i], angles[8 * c + i], &lo_out[i], &hi_out[i]);
  *reinterpret_cast<uint4*>(dst + 8 * c) = Pack8(lo_out);
  *reinterpret_cast<uint4*>(dst + half + 8 * c) = Pack8(hi_out);
}

// One thread per work item, in three ranges: q's rotated chunk pairs (every
// row), k's (rows of the batch), v's 16-byte chunks (rows of the batch).
__global__ void RopeQkvKernel(const RopeQkvParams p) {
  const int d = p.head_dim;
  const int half = d / 2;
  const int pairs = half / 8;
  const int chunks = d / 8;
  const int width = (p.num_heads + 2 * p.num_kv_heads) * d;
  const auto* qkv = static_cast<const __nv_bfloat16*>(p.qkv);
  const int64_t nq = static_cast<int64_t>(p.rows) * p.num_heads * pairs;
  const int64_t nk = static_cast<int64_t>(p.batch) * p.num_kv_heads * pairs;
  const int64_t nv = static_cast<int64_t>(p.batch) * p.num_kv_heads * chunks;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < nq) {
    const int c = static_cast<int>(i % pairs);
    const int h = static_cast<int>(i / pairs % p.num_heads);
    const int r = static_cast<int>(i / pairs / p.num_heads);
    RopeChunk(qkv + static_cast<int64_t>(r) * width + h * d, p.q_bias == nullptr ? nullptr : p.q_bias + h * d,
              p.rope + static_cast<int64_t>(r) * half, c, half,
              static_cast<__nv_bfloat16*>(p.q) + (static_cast<int64_t>(r) * p.num_heads + h) * d);
    return;
  }
  i -= nq;
  const bool is_k = i < nk;
  if (!is_k) i -= nk;
  if (!is_k && i >= nv) return;
  const int per_head = is_k ? pairs : chunks;
  const int c = static_cast<int>(i % per_head);
  const int h = static_cast<int>(i / per_head % p.num_kv_heads);
  const int b = static_cast<int>(i / per_head / p.num_kv_heads);
  const int pos = p.positions[b];
  const int32_t page = p.block_tables[static_cast<int64_t>(b) * p.max_pages_per_seq + pos / p.page_tokens];
  const int64_t at = PageElem(page, h, pos % p.page_tokens, p.num_kv_heads, p.page_tokens, d);
  const __nv_bfloat16* src =
      qkv + static_cast<int64_t>(b) * width + (p.num_heads + (is_k ? 0 : p.num_kv_heads)) * d + h * d;
  if (is_k) {
    RopeChunk(src, p.k_bias == nullptr ? nullptr : p.k_bias + h * d, p.rope + static_cast<int64_t>(b) * half, c, half,
              static_cast<__nv_bfloat16*>(p.k_pages) + at);
    return;
  }
  float f[8];
  LoadBiased8(src + 8 * c, p.v_bias == nullptr ? nullptr : p.v_bias + h * d + 8 * c, f);
  *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.v_pages) + at + 8 * c) = Pack8(f);
}

}  // namespace

cudaError_t RopeQkvToPages(const RopeQkvParams& p, cudaStream_t stream) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  if (p.rows < 0 || p.batch < 0 || p.batch > p.rows || p.num_heads <= 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 ||
      p.head_dim % 16 != 0 || p.page_tokens <= 0 || p.max_pages_per_seq <= 0 || !aligned(p.qkv) || !aligned(p.q) ||
      !aligned(p.k_pages) || !aligned(p.v_pages)) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  if (p.qkv == nullptr || p.rope == nullptr || p.q == nullptr ||
      (p.batch > 0 &&
       (p.positions == nullptr || p.block_tables == nullptr || p.k_pages == nullptr || p.v_pages == nullptr))) {
    return cudaErrorInvalidValue;
  }
  const int64_t pairs = p.head_dim / 16;
  const int64_t total = static_cast<int64_t>(p.rows) * p.num_heads * pairs +
                        static_cast<int64_t>(p.batch) * p.num_kv_heads * pairs * 3;  // k pairs + v chunks
  const int threads = 256;
  RopeQkvKernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream>>>(p);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

cudaError_t ScatterToPages(const void* src, int t0, int n, const int32_t* table, int num_kv_heads, int head_dim,
                           int page_tokens, void* pages, cudaStream_t stream) {
  return ScatterToPagesStrided(src, n, t0, n, table, num_kv_heads, head_dim, page_tokens, pages, stream);
}

cudaError_t ScatterToPagesStrided(const void* src, int src_stride, int t0, int n, const int32_t* table,
                                  int num_kv_heads, int head_dim, int page_tokens, void* pages, cudaStream_t stream) {
  if (t0 < 0 || n < 0 || src_stride < n || !ValidPageShape(num_kv_heads, head_dim, page_tokens)) {
    return cudaErrorInvalidValue;
  }
  const int chunks = head_dim / 8;
  auto* dst = static_cast<uint4*>(pages);
  const auto* s = static_cast<const uint4*>(src);
  // Row r = (head, token i of the n); the source row of (h, i) is h * src_stride + i.
  return LaunchChunks(
      num_kv_heads * n, chunks,
      [=] __device__(int r, int c) {
        const int h = r / n;
        const int i = r % n;
        const int t = t0 + i;
        dst[PageElem(table[t / page_tokens], h, t % page_tokens, num_kv_heads, page_tokens, head_dim) / 8 + c] =
            s[(static_cast<int64_t>(h) * src_stride + i) * chunks + c];
      },
      stream);
}

cudaError_t GatherFromPages(const void* pages, const int32_t* table, int t0, int n, int num_kv_heads, int head_dim,
                            int page_tokens, void* dst, cudaStream_t stream) {
  if (t0 < 0 || n < 0 || !ValidPageShape(num_kv_heads, head_dim, page_tokens)) return cudaErrorInvalidValue;
  const int chunks = head_dim / 8;
  const auto* src = static_cast<const uint4*>(pages);
  auto* d = static_cast<uint4*>(dst);
  return LaunchChunks(
      num_kv_heads * n, chunks,
      [=] __device__(int r, int c) {
        const int h = r / n;
        const int t = t0 + r % n;
        d[static_cast<int64_t>(r) * chunks + c] =
            src[PageElem(table[t / page_tokens], h, t % page_tokens, num_kv_heads, page_tokens, head_dim) / 8 + c];
      },
      stream);
}

}  // namespace seer::cuda
