// Block-sparse FlashAttention forward (FA2-class, mma.sync) and split-K decode
// attention. Interface and layouts: kernels/attention/attention.h; CPU twins:
// kernels/attention/attention_cpu.h.
//
// Prefill: one CTA per (query block, Q head). The CTA's 64 query rows are
// exactly one mask block, so it walks that head's own list of key blocks and
// the per-head masks stay exact. Per 64-key tile, in named stages:
//   load   K (then V) with cp.async into XOR-swizzled shared memory, the next
//          K tile in flight during softmax and P.V, V in flight during Q.K^T;
//   mma    S = Q K^T with m16n8k16 tensor-core MMAs, fragments via ldmatrix;
//   mask   the token-level causal mask, only in the diagonal block;
//   softmax online, fp32, exp2 with the scale folded into log2(e);
//   mma    O += P V, P straight from the S registers;
//   store  O / l.
// CTAs are launched in passes over a few KV heads (kernels/attention/
// tile_order.h), heaviest row first across a pass (query blocks in reverse)
// and the GQA heads of one KV head side by side, so that resident CTAs share
// K/V tiles in L2.

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_sm90.h"
#include "kernels/attention/attention_variants.h"
#include "kernels/attention/tile_order.h"
#include "kernels/common/check.h"
#include "kernels/common/dispatch.h"
#include "kernels/arch/sm80_mma.cuh"

namespace seer::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kBlock = 64;  // query rows per CTA = keys per tile = the mask block

template <int kHeadDim, int kRowsPerWarp>
struct FwdTile {
  // Shared-memory row pitch in elements: a multiple of 64 (128 bytes), so the
  // XOR swizzle below stays inside a row and stepping chunk pairs is an XOR
  // on the byte address; head dims 32 and 96 leave the rest of a row unused.
  static constexpr int kPitch = (kHeadDim + 63) / 64 * 64;
  static constexpr int kMTiles = kRowsPerWarp / 16;  // m16 tiles per warp
  static constexpr int kWarps = kBlock / kRowsPerWarp;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kKSteps = kHeadDim / 16;  // k-steps of S = Q K^T
  static constexpr int kSTiles = kBlock / 8;  // n8 tiles of S
  static constexpr int kOTiles = kHeadDim / 8;  // n8 tiles of O
  static constexpr int kPSteps = kBlock / 16;  // k-steps of O += P V
  static constexpr bool kQInRegs = kMTiles == 1;
  static constexpr int kTileElems = kBlock * kPitch;
  static constexpr int kSmemBytes = 3 * kTileElems * 2;  // Q, K, V
  // CTAs per SM the register budget is sized for.
  static constexpr int kMinBlocks = kMTiles == 1 ? 2 : 4;
};

// Element offset of 16-byte chunk `chunk` of row `row` in a [64][kPitch]
// tile. The XOR swizzle puts the 8 rows that one ldmatrix phase reads into 8
// different groups of 4 banks.
template <int kPitch>
__device__ __forceinline__ int SwizzledOffset(int row, int chunk) {
  return row * kPitch + ((chunk ^ (row & 7)) << 3);
}

// Starts copying a [64][D] tile whose row r is at src + r * row_stride; rows
// at or past valid_rows are zero-filled (never read). Only the last block of
// a sequence is partial, so the full tile takes the unpredicated path, which
// keeps no per-copy predicates alive in registers.
template <int kHeadDim, int kPitch, int kThreads, typename T>
__device__ __forceinline__ void LoadTile(T* smem, const T* src, int64_t row_stride, int valid_rows, int tid) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kPerThread = kBlock * kChunks / kThreads;
  static_assert(kBlock * kChunks % kThreads == 0, "whole chunks per thread");
  const uint32_t base = ptx::SmemAddr(smem);
  if constexpr (kThreads % kChunks == 0) {
    // Each thread keeps one chunk column and steps down the rows.
    constexpr int kRowStep = kThreads / kChunks;
    const int row0 = tid / kChunks;
    const int chunk = tid % kChunks;
    const T* src0 = src + row0 * row_stride + chunk * 8;
    if (valid_rows >= kBlock) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int row = row0 + i * kRowStep;
        ptx::CpAsync16(base + 2 * SwizzledOffset<kPitch>(row, chunk), src0 + i * kRowStep * row_stride);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int row = row0 + i * kRowStep;
        const bool valid = row < valid_rows;
        ptx::CpAsync16ZeroFill(base + 2 * SwizzledOffset<kPitch>(row, chunk),
                               valid ? src0 + i * kRowStep * row_stride : src, valid);
      }
    }
  } else {
    // Head dim 96 (12 chunks a row): thread and chunk columns do not line
    // up, so each copy finds its row and chunk from its flat index.
    if (valid_rows >= kBlock) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int row = (tid + i * kThreads) / kChunks;
        const int chunk = (tid + i * kThreads) % kChunks;
        ptx::CpAsync16(base + 2 * SwizzledOffset<kPitch>(row, chunk), src + row * row_stride + chunk * 8);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int row = (tid + i * kThreads) / kChunks;
        const int chunk = (tid + i * kThreads) % kChunks;
        const bool valid = row < valid_rows;
        ptx::CpAsync16ZeroFill(base + 2 * SwizzledOffset<kPitch>(row, chunk),
                               valid ? src + row * row_stride + chunk * 8 : src, valid);
      }
    }
  }
}

// kRowsSplit's partial results: for part s of query row r (counted from the
// first live query block's first row) and head h, the unnormalised O
// ([D] floats) and (running max in the log2 domain, row sum).
struct KeySplitParts {
  float* o = nullptr;  // [kKeySplits, rows, Hq, D]
  float2* ml = nullptr;  // [kKeySplits, rows, Hq]
  int rows = 0;  // live query blocks * 64
  int first_row = 0;  // the first live query block's first row
};

template <int kHeadDim, int kRowsPerWarp, typename T, bool kSplit = false>
__global__ void __launch_bounds__(FwdTile<kHeadDim, kRowsPerWarp>::kThreads,
                                  FwdTile<kHeadDim, kRowsPerWarp>::kMinBlocks)
    BlockSparseFwdKernel(const AttentionParams p, float scale_log2, int kv_passes, KeySplitParts parts) {
  using Tile = FwdTile<kHeadDim, kRowsPerWarp>;
  constexpr int kMTiles = Tile::kMTiles;
  constexpr int kThreads = Tile::kThreads;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + Tile::kTileElems;
  T* sV = sK + Tile::kTileElems;

  // Launch order: the Hopper kernels' dense order (tile_order.h) with query
  // blocks for pairs: pass by pass over a few KV heads, and within a pass
  // query blocks from the heaviest (last) row down, the pass's Q heads side
  // by side. CTAs resident together then read K/V that stays in L2, which
  // keeps the tiles of a sparse (random) mask there; the light rows come
  // last. The query blocks before first_row's are not launched.
  const int nb = (p.seq_len + kBlock - 1) / kBlock;
  const int live = nb - p.first_row / kBlock;  // AttentionParams::first_row
  int h, qb;
  DenseOrderTile(p.num_heads, p.num_kv_heads, kv_passes, nb, live, static_cast<int>(blockIdx.x), &h, &qb);
  const int kvh = h / (p.num_heads / p.num_kv_heads);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int q0 = qb * kBlock;
  const int q_rows = min(kBlock, p.seq_len - q0);
  const int64_t q_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const T* q = static_cast<const T*>(p.q) + q0 * q_stride + h * kHeadDim;
  // Recomputed where used, so no register holds it through the main loop.
  auto out_row = [&](int row) { return static_cast<T*>(p.out) + (q0 + row) * q_stride + h * kHeadDim; };
  const int64_t kv_head_offset = static_cast<int64_t>(kvh) * p.kv_stride * kHeadDim;
  const T* k = static_cast<const T*>(p.k) + kv_head_offset;
  const T* v = static_cast<const T*>(p.v) + kv_head_offset;

  const bool dense = p.block_offsets == nullptr;
  int begin = 0;
  int count = qb + 1;
  if (!dense) {
    begin = p.block_offsets[h * nb + qb];
    count = p.block_offsets[h * nb + qb + 1] - begin;
  }
  // kSplit: this CTA takes entries [lo, hi) of the list, part blockIdx.y.
  int lo = 0, hi = count;
  if constexpr (kSplit) {
    const int chunk = (count + kKeySplits - 1) / kKeySplits;
    lo = min(count, static_cast<int>(blockIdx.y) * chunk);
    hi = min(count, lo + chunk);
  }
  // kSplit: the part's row r of head h in the partial results.
  auto part_row = [&](int row) {
    return (static_cast<int64_t>(blockIdx.y) * parts.rows + (q0 + row - parts.first_row)) * p.num_heads + h;
  };
  // Lists are ascending and causal; anything else is clamped so that no load
  // leaves the tensors (the result of such a list is unspecified).
  auto key_block = [&](int n) {
    const int kb = dense ? n : p.block_indices[begin + n];
    return min(max(kb, 0), qb);
  };

  const int warp_row = warp * kRowsPerWarp;
  if constexpr (kSplit) {
    if (hi <= lo) {  // nothing in this part: a sum of 0, which the merge weighs 0
      for (int row = tid; row < q_rows; row += kThreads) parts.ml[part_row(row)] = make_float2(-INFINITY, 0.0f);
      return;
    }
  }
  if (!kSplit && count <= 0) {  // an empty row attends to nothing: zeros
    for (int i = tid; i < q_rows * (kHeadDim / 8); i += kThreads) {
      const int row = i / (kHeadDim / 8);
      const int chunk = i % (kHeadDim / 8);
      *reinterpret_cast<uint4*>(out_row(row) + chunk * 8) = make_uint4(0, 0, 0, 0);
    }
    return;
  }

  // Walk the list (the part) from its end, so the diagonal (masked) tile
  // comes first.
  int n = hi - 1;
  int kb = key_block(n);
  LoadTile<kHeadDim, Tile::kPitch, kThreads>(sQ, q, q_stride, q_rows, tid);
  ptx::CpAsyncCommit();
  LoadTile<kHeadDim, Tile::kPitch, kThreads>(sK, k + static_cast<int64_t>(kb) * kBlock * kHeadDim, kHeadDim,
                                             p.seq_len - kb * kBlock, tid);
  ptx::CpAsyncCommit();

  float o[kMTiles][Tile::kOTiles][4];
  float row_max[kMTiles][2];
  float row_sum[kMTiles][2];
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
    for (int nt = 0; nt < Tile::kOTiles; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mi][nt][e] = 0.0f;
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      row_max[mi][hf] = -INFINITY;
      row_sum[mi][hf] = 0.0f;
    }
  }
  // Per-lane ldmatrix addresses (fragment layouts of mma.m16n8k16). The tiles
  // are 1 KB aligned and rows are 2 * kPitch (128 or 256) bytes, so stepping
  // the 16-byte chunk index by 2 * i is an XOR of (i << 5) on the byte address.
  const uint32_t q_lane_addr =  // Q: rows 0-15, k chunk by lane / 16
      ptx::SmemAddr(sQ) + 2 * SwizzledOffset<Tile::kPitch>(warp_row + lane % 16, lane / 16);
  const uint32_t k_lane_addr =  // K: two n8 tiles x two k chunks
      ptx::SmemAddr(sK) + 2 * SwizzledOffset<Tile::kPitch>((lane % 8) + (lane / 16) * 8, (lane / 8) % 2);
  const uint32_t v_lane_addr =  // V, transposed: two k halves x two n8 tiles
      ptx::SmemAddr(sV) + 2 * SwizzledOffset<Tile::kPitch>((lane % 8) + ((lane / 8) % 2) * 8, lane / 16);
  constexpr uint32_t kRows16Bytes = 16 * Tile::kPitch * 2;

  // Q fragments stay in registers for the whole row when they fit.
  uint32_t q_frag[Tile::kQInRegs ? kMTiles : 1][Tile::kQInRegs ? Tile::kKSteps : 1][4];
  if constexpr (Tile::kQInRegs) {
    ptx::CpAsyncWait<1>();
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int ks = 0; ks < Tile::kKSteps; ++ks) {
        ptx::LdMatrixX4(q_frag[mi][ks], (q_lane_addr ^ (ks << 5)) + mi * kRows16Bytes);
      }
    }
  }

  for (; n >= lo; --n) {
    // --- load: K[kb] (and Q) have landed; every warp is done with V.
    ptx::CpAsyncWait<0>();
    __syncthreads();
    LoadTile<kHeadDim, Tile::kPitch, kThreads>(sV, v + static_cast<int64_t>(kb) * kBlock * kHeadDim, kHeadDim,
                                               p.seq_len - kb * kBlock, tid);
    ptx::CpAsyncCommit();

    // --- mma: S = Q K^T.
    float s[kMTiles][Tile::kSTiles][4];
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int nt = 0; nt < Tile::kSTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][nt][e] = 0.0f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < Tile::kKSteps; ++ks) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
        if constexpr (Tile::kQInRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mi][r] = q_frag[mi][ks][r];
        } else {
          ptx::LdMatrixX4(a[mi], (q_lane_addr ^ (ks << 5)) + mi * kRows16Bytes);
        }
      }
#pragma unroll
      for (int np = 0; np < Tile::kSTiles / 2; ++np) {
        uint32_t b[4];
        ptx::LdMatrixX4(b, (k_lane_addr ^ (ks << 5)) + np * kRows16Bytes);
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
          ptx::Mma16816<T>(s[mi][2 * np], a[mi], b[0], b[1]);
          ptx::Mma16816<T>(s[mi][2 * np + 1], a[mi], b[2], b[3]);
        }
      }
    }

    // --- mask: token-level causal, only inside the diagonal block. Keys past
    // seq_len only occur there too (they lie right of every real query).
    if (kb == qb) {
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
        for (int nt = 0; nt < Tile::kSTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = warp_row + mi * 16 + lane / 4 + (e / 2) * 8;
            const int col = nt * 8 + (lane % 4) * 2 + (e % 2);
            if (col > row) s[mi][nt][e] = -INFINITY;
          }
        }
      }
    }

    // --- load: V[kb] has landed and every warp is done with K; fetch the next K.
    ptx::CpAsyncWait<0>();
    __syncthreads();
    int next_kb = kb;
    if (n > lo) {
      next_kb = key_block(n - 1);
      LoadTile<kHeadDim, Tile::kPitch, kThreads>(sK, k + static_cast<int64_t>(next_kb) * kBlock * kHeadDim, kHeadDim,
                                                 p.seq_len - next_kb * kBlock, tid);
      ptx::CpAsyncCommit();
    }

    // --- softmax: online, in the log2 domain. Each thread holds two rows per
    // m16 tile (lane/4 and lane/4 + 8); the 4 lanes of a quad share a row.
#pragma unroll
    for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < Tile::kSTiles; ++nt) {
          mx = fmaxf(mx, fmaxf(s[mi][nt][2 * hf], s[mi][nt][2 * hf + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_max[mi][hf], mx * scale_log2);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
        const float correction = ptx::Exp2(row_max[mi][hf] - m_use);
        row_max[mi][hf] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < Tile::kSTiles; ++nt) {
#pragma unroll
          for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
            const float prob = ptx::Exp2(fmaf(s[mi][nt][e], scale_log2, -m_use));
            s[mi][nt][e] = prob;
            sum += prob;
          }
        }
        row_sum[mi][hf] = row_sum[mi][hf] * correction + sum;  // per-thread partial; the quad sums at the end
#pragma unroll
        for (int nt = 0; nt < Tile::kOTiles; ++nt) {
          o[mi][nt][2 * hf] *= correction;
          o[mi][nt][2 * hf + 1] *= correction;
        }
      }
    }

    // --- mma: O += P V, P re-packed from the S accumulators (the C layout of
    // two n8 tiles is the A layout of one k16 step).
#pragma unroll
    for (int ks = 0; ks < Tile::kPSteps; ++ks) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mi = 0; mi < kMTiles; ++mi) {
        a[mi][0] = ptx::PackPair<T>(s[mi][2 * ks][0], s[mi][2 * ks][1]);
        a[mi][1] = ptx::PackPair<T>(s[mi][2 * ks][2], s[mi][2 * ks][3]);
        a[mi][2] = ptx::PackPair<T>(s[mi][2 * ks + 1][0], s[mi][2 * ks + 1][1]);
        a[mi][3] = ptx::PackPair<T>(s[mi][2 * ks + 1][2], s[mi][2 * ks + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < Tile::kOTiles / 2; ++np) {
        uint32_t b[4];
        ptx::LdMatrixX4Trans(b, (v_lane_addr ^ (np << 5)) + ks * kRows16Bytes);
#pragma unroll
        for (int mi = 0; mi < kMTiles; ++mi) {
          ptx::Mma16816<T>(o[mi][2 * np], a[mi], b[0], b[1]);
          ptx::Mma16816<T>(o[mi][2 * np + 1], a[mi], b[2], b[3]);
        }
      }
    }
    kb = next_kb;
  }

  // --- store: O / l, rows past seq_len dropped; kSplit: O, the max and l
  // of the part, for the merge.
#pragma unroll
  for (int mi = 0; mi < kMTiles; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float total = row_sum[mi][hf];
      total += __shfl_xor_sync(0xffffffffu, total, 1);
      total += __shfl_xor_sync(0xffffffffu, total, 2);
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
      const int row = warp_row + mi * 16 + lane / 4 + hf * 8;
      if constexpr (kSplit) {
        if (row < q_rows) {
          const int64_t at = part_row(row);
          if (lane % 4 == 0) parts.ml[at] = make_float2(row_max[mi][hf], total);
          float* dst = parts.o + at * kHeadDim + (lane % 4) * 2;
#pragma unroll
          for (int nt = 0; nt < Tile::kOTiles; ++nt) {
            *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[mi][nt][2 * hf], o[mi][nt][2 * hf + 1]);
          }
        }
        continue;
      }
      if (row < q_rows) {
        T* dst = out_row(row) + (lane % 4) * 2;
#pragma unroll
        for (int nt = 0; nt < Tile::kOTiles; ++nt) {
          *reinterpret_cast<uint32_t*>(dst + nt * 8) =
              ptx::PackPair<T>(o[mi][nt][2 * hf] * inv, o[mi][nt][2 * hf + 1] * inv);
        }
      }
    }
  }
}

bool Aligned(const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Shape and pointer checks shared by prefill and decode.
bool ValidCommon(const AttentionParams& p) {
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.out == nullptr) return false;
  if (p.num_heads <= 0 || p.num_kv_heads <= 0 || p.num_heads % p.num_kv_heads != 0) return false;
  if (!IsSupportedHeadDim(p.head_dim)) return false;
  if (!std::isfinite(p.scale) || p.scale < 0.0f) return false;  // the running max assumes scale >= 0
  if (p.dtype != ElemType::kBF16 && p.dtype != ElemType::kF16) return false;
  // 16-byte cp.async and vector loads; the sm90 kernels store O 16 bytes a
  // thread (StoreRows).
  return Aligned(p.q, 16) && Aligned(p.k, 16) && Aligned(p.v, 16) && Aligned(p.out, 16);
}

// kRowsSplit's merge: row r (from parts.first_row) of head h, one thread a
// channel, the parts weighed by 2^(max - the largest max) and their sums.
template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kHeadDim) MergeKeySplitsKernel(const AttentionParams p, KeySplitParts parts) {
  const int r = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int row = parts.first_row + r;
  if (row >= p.seq_len) return;
  float top = -INFINITY;
  for (int s = 0; s < kKeySplits; ++s) {
    const float2 ml = parts.ml[(static_cast<int64_t>(s) * parts.rows + r) * p.num_heads + h];
    if (ml.y > 0.0f) top = fmaxf(top, ml.x);
  }
  float sum = 0.0f, acc = 0.0f;
  for (int s = 0; s < kKeySplits; ++s) {
    const int64_t at = (static_cast<int64_t>(s) * parts.rows + r) * p.num_heads + h;
    const float2 ml = parts.ml[at];
    if (!(ml.y > 0.0f)) continue;
    // A part whose max stayed -inf computed its terms against 0 (m_use).
    const float w = ptx::Exp2((ml.x == -INFINITY ? 0.0f : ml.x) - (top == -INFINITY ? 0.0f : top));
    sum += w * ml.y;
    acc += w * parts.o[at * kHeadDim + d];
  }
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(row) * p.num_heads + h) * kHeadDim + d;
  const float value = sum > 0.0f ? acc / sum : 0.0f;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    *out = __float2bfloat16_rn(value);
  } else {
    *out = __float2half_rn(value);
  }
}

template <int kHeadDim, int kRowsPerWarp, typename T, bool kSplit = false>
cudaError_t LaunchFwd(const AttentionParams& p, cudaStream_t stream) {
  using Tile = FwdTile<kHeadDim, kRowsPerWarp>;
  auto kernel = BlockSparseFwdKernel<kHeadDim, kRowsPerWarp, T, kSplit>;
  if constexpr (Tile::kSmemBytes > 48 * 1024) {
    SEER_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes));
  }
  const int nb = (p.seq_len + kBlock - 1) / kBlock;
  const int live = nb - p.first_row / kBlock;  // AttentionParams::first_row
  const dim3 grid(static_cast<unsigned>(live) * static_cast<unsigned>(p.num_heads), kSplit ? kKeySplits : 1);
  int device = 0, l2_bytes = 0;
  SEER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SEER_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  const int kv_passes = KvPasses(p.seq_len, kHeadDim, p.num_kv_heads, p.kv_heads_per_pass, l2_bytes);
  KeySplitParts parts;
  void* scratch = nullptr;
  if constexpr (kSplit) {
    parts.rows = live * kBlock;
    parts.first_row = (nb - live) * kBlock;
    const size_t per = static_cast<size_t>(kKeySplits) * parts.rows * p.num_heads;
    SEER_CUDA_RETURN_IF_ERROR(
        cudaMallocAsync(&scratch, per * (sizeof(float) * kHeadDim + sizeof(float2)), stream));
    parts.o = static_cast<float*>(scratch);
    parts.ml = reinterpret_cast<float2*>(parts.o + per * kHeadDim);
  }
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p, p.scale * kLog2e, kv_passes, parts);
  cudaError_t e = cudaGetLastError();
  if constexpr (kSplit) {
    if (e == cudaSuccess) {
      MergeKeySplitsKernel<kHeadDim, T>
          <<<dim3(static_cast<unsigned>(parts.rows), static_cast<unsigned>(p.num_heads)), kHeadDim, 0, stream>>>(
              p, parts);
      e = cudaGetLastError();
    }
    const cudaError_t freed = cudaFreeAsync(scratch, stream);
    if (e == cudaSuccess) e = freed;
  }
  SEER_CUDA_RETURN_IF_ERROR(e);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// Decode: one query per head, split-K over the cache (flash-decoding). Each
// CTA reduces one slice of keys to (max, sum, unnormalised O); a second
// kernel merges the slices. D/8 lanes share a key, 16 bytes each.

constexpr int kDecodeWarps = 4;

template <int kHeadDim>
struct DecodePartial {
  float o[8];
  float max;
  float sum;
};

// Merges (mb, lb, ob) into (ma, la, oa); all maxima in the log2 domain.
__device__ __forceinline__ void MergeSoftmax(float& ma, float& la, float (&oa)[8], float mb, float lb,
                                             const float (&ob)[8]) {
  const float m = fmaxf(ma, mb);
  const float m_use = m == -INFINITY ? 0.0f : m;
  const float ca = ptx::Exp2(ma - m_use);
  const float cb = ptx::Exp2(mb - m_use);
  la = la * ca + lb * cb;
#pragma unroll
  for (int i = 0; i < 8; ++i) oa[i] = oa[i] * ca + ob[i] * cb;
  ma = m;
}

template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& raw, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(e[i]);
}

// partial: [Hq][splits][kHeadDim + 2] (O, then max and sum), or the final
// output directly when there is one split.
template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    DecodeSplitKernel(const AttentionParams p, int num_keys, int keys_per_split, float scale_log2, float* partial) {
  // A key's 16-byte chunks over a power-of-two group of lanes (the shuffle
  // reductions need one); for head dim 96, lanes 12-15 of a group hold none.
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kLanesPerKey = kChunks <= 4 ? 4 : kChunks <= 8 ? 8 : 16;
  constexpr int kKeysPerStep = 32 / kLanesPerKey;
  const int h = blockIdx.x;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int kvh = h / (p.num_heads / p.num_kv_heads);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int sub = lane / kLanesPerKey;
  const int chunk = lane % kLanesPerKey;
  const bool has_chunk = chunk < kChunks;
  const int my_chunk = has_chunk ? chunk : 0;  // lanes without a chunk read chunk 0 and drop it

  const T* q = static_cast<const T*>(p.q) + h * kHeadDim + my_chunk * 8;
  const int64_t head_offset = static_cast<int64_t>(kvh) * p.kv_stride * kHeadDim + my_chunk * 8;
  const T* k = static_cast<const T*>(p.k) + head_offset;
  const T* v = static_cast<const T*>(p.v) + head_offset;

  float qv[8];
  Unpack8<T>(*reinterpret_cast<const uint4*>(q), qv);
  if (!has_chunk) {
#pragma unroll
    for (int i = 0; i < 8; ++i) qv[i] = 0.0f;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) qv[i] *= scale_log2;

  const int key_begin = split * keys_per_split;
  const int key_end = min(num_keys, key_begin + keys_per_split);
  float m = -INFINITY;
  float l = 0.0f;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  // The loop bound is uniform across the warp (the shuffles need every lane).
  for (int base = key_begin + warp * kKeysPerStep; base < key_end; base += kDecodeWarps * kKeysPerStep) {
    const int j = base + sub;
    const bool valid = j < key_end;
    float s = 0.0f;
    float vv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (valid) {
      float kv[8];
      Unpack8<T>(*reinterpret_cast<const uint4*>(k + static_cast<int64_t>(j) * kHeadDim), kv);
      Unpack8<T>(*reinterpret_cast<const uint4*>(v + static_cast<int64_t>(j) * kHeadDim), vv);
#pragma unroll
      for (int i = 0; i < 8; ++i) s = fmaf(qv[i], kv[i], s);
    }
#pragma unroll
    for (int off = kLanesPerKey / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (!valid) s = -INFINITY;
    const float m_new = fmaxf(m, s);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    const float correction = ptx::Exp2(m - m_use);
    const float prob = ptx::Exp2(s - m_use);
    l = l * correction + prob;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = fmaf(acc[i], correction, prob * vv[i]);
    m = m_new;
  }
  // Lanes holding the same chunk of different keys, then warps.
#pragma unroll
  for (int off = kLanesPerKey; off < 32; off *= 2) {
    float ob[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) ob[i] = __shfl_xor_sync(0xffffffffu, acc[i], off);
    const float mb = __shfl_xor_sync(0xffffffffu, m, off);
    const float lb = __shfl_xor_sync(0xffffffffu, l, off);
    MergeSoftmax(m, l, acc, mb, lb, ob);
  }
  __shared__ DecodePartial<kHeadDim> warp_part[kDecodeWarps][kLanesPerKey];
  if (lane < kChunks) {
#pragma unroll
    for (int i = 0; i < 8; ++i) warp_part[warp][lane].o[i] = acc[i];
    warp_part[warp][lane].max = m;
    warp_part[warp][lane].sum = l;
  }
  __syncthreads();
  if (warp != 0 || lane >= kChunks) return;
  for (int w = 1; w < kDecodeWarps; ++w) {
    MergeSoftmax(m, l, acc, warp_part[w][lane].max, warp_part[w][lane].sum, warp_part[w][lane].o);
  }
  if (splits == 1) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* dst = static_cast<T*>(p.out) + h * kHeadDim + chunk * 8;
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      *reinterpret_cast<uint32_t*>(dst + i) = ptx::PackPair<T>(acc[i] * inv, acc[i + 1] * inv);
    }
    return;
  }
  float* dst = partial + (static_cast<int64_t>(h) * splits + split) * (kHeadDim + 2);
#pragma unroll
  for (int i = 0; i < 8; ++i) dst[chunk * 8 + i] = acc[i];
  if (chunk == 0) {
    dst[kHeadDim] = m;
    dst[kHeadDim + 1] = l;
  }
}

template <int kHeadDim, typename T>
__global__ void DecodeCombineKernel(const float* partial, int splits, T* out) {
  const int h = blockIdx.x;
  const int d = threadIdx.x;
  const float* part = partial + static_cast<int64_t>(h) * splits * (kHeadDim + 2);
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, part[s * (kHeadDim + 2) + kHeadDim]);
  const float m_use = m == -INFINITY ? 0.0f : m;
  float l = 0.0f;
  float o = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float* ps = part + s * (kHeadDim + 2);
    const float c = ptx::Exp2(ps[kHeadDim] - m_use);
    l += ps[kHeadDim + 1] * c;
    o += ps[d] * c;
  }
  out[h * kHeadDim + d] = static_cast<T>(l > 0.0f ? o / l : 0.0f);
}

// Key slices per head: enough CTAs to fill the chip twice.
cudaError_t DecodeSplitsWanted(int num_heads, int* want) {
  int device = 0;
  int sms = 0;
  SEER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SEER_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  *want = (2 * sms + num_heads - 1) / num_heads;
  return cudaSuccess;
}

size_t DecodePartialBytes(int num_heads, int splits, int head_dim) {
  return sizeof(float) * static_cast<size_t>(num_heads) * splits * (head_dim + 2);
}

template <int kHeadDim, typename T>
cudaError_t LaunchDecode(const AttentionParams& p, int pos, cudaStream_t stream) {
  const int num_keys = pos + 1;
  // Enough CTAs to fill the chip twice, but at least 64 keys per slice.
  int want = 1;
  SEER_CUDA_RETURN_IF_ERROR(DecodeSplitsWanted(p.num_heads, &want));
  const int max_splits = (num_keys + 63) / 64;
  int splits = want < max_splits ? want : max_splits;
  if (splits < 1) splits = 1;
  const int keys_per_split = (num_keys + splits - 1) / splits;
  splits = (num_keys + keys_per_split - 1) / keys_per_split;  // every slice non-empty
  const float scale_log2 = p.scale * kLog2e;
  const dim3 grid(p.num_heads, splits);
  if (splits == 1) {
    DecodeSplitKernel<kHeadDim, T>
        <<<grid, kDecodeWarps * 32, 0, stream>>>(p, num_keys, keys_per_split, scale_log2, nullptr);
    SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    return cudaSuccess;
  }
  float* partial = nullptr;
  const size_t bytes = DecodePartialBytes(p.num_heads, splits, kHeadDim);
  const bool own_scratch = p.workspace == nullptr || p.workspace_bytes < bytes;
  if (own_scratch) {
    SEER_CUDA_RETURN_IF_ERROR(cudaMallocAsync(reinterpret_cast<void**>(&partial), bytes, stream));
  } else {
    partial = static_cast<float*>(p.workspace);
  }
  DecodeSplitKernel<kHeadDim, T>
      <<<grid, kDecodeWarps * 32, 0, stream>>>(p, num_keys, keys_per_split, scale_log2, partial);
  cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) {
    DecodeCombineKernel<kHeadDim, T><<<p.num_heads, kHeadDim, 0, stream>>>(partial, splits, static_cast<T*>(p.out));
    launched = cudaGetLastError();
  }
  const cudaError_t freed = own_scratch ? cudaFreeAsync(partial, stream) : cudaSuccess;
  SEER_CUDA_RETURN_IF_ERROR(launched);
  SEER_CUDA_RETURN_IF_ERROR(freed);
  return cudaSuccess;
}

// The variants that run attention_sm90.cu's kernels.
bool IsSm90Variant(FwdVariant v) {
  return v == FwdVariant::kSm90 || v == FwdVariant::kSm90Static || v == FwdVariant::kSm90Rows ||
         v == FwdVariant::kSm90Pairs;
}

}  // namespace

const char* FwdVariantName(FwdVariant v) {
  switch (v) {
    case FwdVariant::kAuto: return "auto";
    case FwdVariant::kRows16PerWarp: return "v1 16 rows/warp";
    case FwdVariant::kRows32PerWarp: return "v2 32 rows/warp";
    case FwdVariant::kSm90: return "v3 sm90 atomic";
    case FwdVariant::kSm90Static: return "v3 sm90 static";
    case FwdVariant::kSm90Rows: return "v4 sm90 own rings";
    case FwdVariant::kSm90Pairs: return "v6 sm90 two-block steps";
    case FwdVariant::kRowsSplit: return "v7 keys split in 4";
  }
  return "?";
}

bool FwdVariantAvailable(FwdVariant v) { return IsSm90Variant(v) ? Sm90AttentionAvailable() : true; }

FwdVariant ResolveFwdVariant(FwdVariant v) {
  if (v != FwdVariant::kAuto) return v;
  return Sm90AttentionAvailable() ? FwdVariant::kSm90Pairs : FwdVariant::kRows32PerWarp;
}

// kAuto for these params: kRowsSplit where, with block lists, first_row
// leaves fewer than four query blocks (times heads) an SM over a long
// sequence (each block then a long serial chain of key blocks) and q comes
// rotated; else ResolveFwdVariant's pick. H100, 2026-12-06, the 8B
// shape's 1,024 rows after 130,048 cached tokens: with threshold lists
// (the last two rows dense) 88.6 ms of attention over 32 layers on the
// sm90 kernel, 32.8 ms split; dense, split was slower (218 against 107
// ms: each part re-reads its keys from memory for every query block and
// head), so dense keeps the sm90 kernel.
FwdVariant AutoVariantFor(const AttentionParams& p) {
  constexpr int kMinKeyBlocks = 64;  // 4,096 tokens
  const int nb = (p.seq_len + kBlock - 1) / kBlock;
  const int64_t blocks = static_cast<int64_t>(nb - p.first_row / kBlock) * p.num_heads;
  int device = 0, sms = 0;
  if (p.first_row > 0 && p.block_offsets != nullptr && p.q_rope == nullptr && nb >= kMinKeyBlocks &&
      cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && blocks < 4 * sms) {
    return FwdVariant::kRowsSplit;
  }
  cudaGetLastError();
  return ResolveFwdVariant(FwdVariant::kAuto);
}

cudaError_t BlockSparseAttentionVariant(const AttentionParams& p, FwdVariant variant, cudaStream_t stream) {
  if (!ValidCommon(p) || p.seq_len < 0 || p.kv_stride < p.seq_len || p.block_size != kBlock) {
    return cudaErrorInvalidValue;
  }
  if (p.block_offsets != nullptr && p.block_indices == nullptr) return cudaErrorInvalidValue;
  if (p.first_row < 0 || (p.first_row > 0 && p.first_row >= p.seq_len)) return cudaErrorInvalidValue;
  if (p.kv_heads_per_pass < 0) return cudaErrorInvalidValue;
  if (p.seq_len == 0) return cudaSuccess;
  const int64_t nb = (p.seq_len + kBlock - 1) / kBlock;
  if (nb * p.num_heads > 0x7fffffff) return cudaErrorInvalidValue;
  variant = variant == FwdVariant::kAuto ? AutoVariantFor(p) : variant;
  const bool sm90 = IsSm90Variant(variant);
  if (p.q_rope != nullptr &&
      (!sm90 || !AttentionRotatesQ(p.dtype, p.head_dim) || reinterpret_cast<uintptr_t>(p.q_rope) % 16 != 0)) {
    return cudaErrorInvalidValue;
  }
  if (sm90) {
    if (!Sm90AttentionAvailable()) return cudaErrorNotSupported;
    const Sm90Lists lists = variant == FwdVariant::kSm90Rows    ? Sm90Lists::kOwnRings
                            : variant == FwdVariant::kSm90Pairs ? Sm90Lists::kPairSteps
                                                                : Sm90Lists::kSharedStages;
    return LaunchSm90Attention(p, variant == FwdVariant::kSm90Static ? Sm90Schedule::kStatic : Sm90Schedule::kAtomic,
                               lists, stream);
  }
  return SEER_DISPATCH_HEAD_DIM(p.head_dim, kHeadDim, [&] {
    return SEER_DISPATCH_ELEM(p.dtype, Elem, [&] {
      return variant == FwdVariant::kRows16PerWarp ? LaunchFwd<kHeadDim, 16, Elem>(p, stream)
             : variant == FwdVariant::kRowsSplit   ? LaunchFwd<kHeadDim, 16, Elem, true>(p, stream)
                                                   : LaunchFwd<kHeadDim, 32, Elem>(p, stream);
    });
  });
}

bool AttentionRotatesQ(ElemType dtype, int head_dim) {
  return dtype == ElemType::kBF16 && IsSupportedHeadDim(head_dim) && Sm90AttentionAvailable();
}

cudaError_t BlockSparseAttention(const AttentionParams& p, cudaStream_t stream) {
  return BlockSparseAttentionVariant(p, FwdVariant::kAuto, stream);
}

size_t PrefillWorkspaceBytes(int num_heads, int seq_len) { return Sm90WorkspaceBytes(num_heads, seq_len); }

size_t DecodeWorkspaceBytes(int num_heads, int head_dim) {
  int want = 1;
  if (num_heads <= 0 || DecodeSplitsWanted(num_heads, &want) != cudaSuccess) return 0;
  return DecodePartialBytes(num_heads, want, head_dim);
}

cudaError_t DecodeAttention(const AttentionParams& p, int pos, cudaStream_t stream) {
  if (!ValidCommon(p) || pos < 0 || p.kv_stride <= pos) return cudaErrorInvalidValue;
  return SEER_DISPATCH_HEAD_DIM(p.head_dim, kHeadDim, [&] {
    return SEER_DISPATCH_ELEM(p.dtype, Elem, [&] { return LaunchDecode<kHeadDim, Elem>(p, pos, stream); });
  });
}

}  // namespace seer::cuda
