// Block-sparse FlashAttention forward for Hopper (sm_90a): wgmma + TMA +
// mbarriers + warp specialisation + a persistent scheduler. Interface:
// kernels/attention/attention_sm90.h; design and numbers: docs/KERNELS.md.
//
// A CTA is three warpgroups. Warpgroup 0 is the producer (one thread of it
// issues every copy); warpgroups 1 and 2 are consumers, each owning one
// 64-row query block, which is exactly one row of the 64x64 block mask, so
// the per-(head, query block) lists stay exact. A tile is a pair of query
// blocks of one head: consumer 0 takes block 2i + 1, consumer 1 block 2i.
//
//   producer  takes the next tile (atomic counter or static stride), loads
//             both Q blocks with TMA, then walks the union of the two rows'
//             block lists, highest key block first, and loads each K/V block
//             once into any free shared-memory stage; it appends (stage, block)
//             to the queue of each consumer that uses the block, and an end
//             marker closes the tile. Dense causal pairs share all but one
//             block, so each K/V tile feeds 128 query rows, as in
//             FlashAttention-3; with sparse lists the consumers' blocks differ
//             and each runs ahead on its own queue (a stage waits only for the
//             consumers that use it, so one consumer's held stage never stalls
//             the other's loads).
//   consumer  Q stays in registers (wgmma A operand); per queued block:
//             S = Q K^T (wgmma, 64x64) issued together with the previous
//             block's O += P V (wgmma, P from registers), softmax of S while
//             that P V runs on the tensor cores, then the rescale of O. The
//             token-level causal mask applies only on the diagonal block.
//             (Ping-pong turns between the two consumers, FlashAttention-3's
//             other overlap, measured slower here: docs/KERNELS.md.)
//
// Tiles are ordered heaviest first within a pass over a few KV heads' GQA
// groups (later query blocks first for dense; by kept-block count, sorted on
// the device, for lists), and passes follow one another, so the CTAs in
// flight read K/V that stays in L2 (kernels/attention/tile_order.h).
//
// Dense causal (null lists) runs Sm90WideKernel instead: the same CTA and
// tiles, but 128 keys a step (FlashAttention-3's 128 x 128 tile) through two
// in-order K and V rings, no queues; 6-27% faster than this kernel dense
// (docs/KERNELS.md).

#include "kernels/attention/attention_sm90.h"

#include <cstdint>
#include <mutex>
#include <type_traits>

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/arch/sm80_mma.cuh"
#include "kernels/arch/sm90_available.h"
#include "kernels/arch/sm90_ptx.cuh"
#include "kernels/arch/sm90_wgmma.cuh"
#include "kernels/arch/tensor_map.h"
#include "kernels/attention/tile_order.h"
#include "kernels/common/check.h"
#include "kernels/common/dispatch.h"
#include "kernels/ops/rope.cuh"

// The sm_80 pass of a multi-target build compiles the kernel without its
// body (it needs sm_90a), which leaves these constants unreferenced there.
#if defined(__CUDA_ARCH__) && !defined(SEER_SM90A_ENABLED)
#pragma nv_diag_suppress 177
#endif

namespace seer::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kBlock = 64;  // query rows per consumer = keys per stage = the mask block
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;

template <int kHeadDim>
struct Sm90Tile {
  // 128-byte swizzle where a 64-element column block fits the head dim
  // (64, 128), else 64-byte swizzle with 32-element column blocks (32, 96).
  static constexpr int kSwizzle = kHeadDim % 64 == 0 ? 128 : 64;
  static constexpr int kCols = kSwizzle / 2;  // elements per column block (one swizzled row)
  static constexpr int kColBlocks = kHeadDim / kCols;
  static constexpr int kColBlockBytes = kBlock * kSwizzle;
  static constexpr int kTileBytes = kBlock * kHeadDim * 2;
  static constexpr int kKSteps = kHeadDim / 16;  // k16 steps of S = Q K^T
  static constexpr int kStepsPerColBlock = kCols / 16;
  // As many K/V stages as fit (at least 5: each consumer holds at most two
  // while it waits for its next queue entry, and a fifth keeps the producer
  // going).
  static constexpr int kStages = kHeadDim == 128 ? 6 : kHeadDim == 96 ? 8 : kHeadDim == 64 ? 12 : 16;
  // Each consumer's queue of stream entries: every stage may hold one of its
  // blocks, plus the end markers of the tile it is in and of the next.
  static constexpr int kQueue = kStages + 2;
  // Shared memory, from a 1024-byte aligned base.
  static constexpr int kQOffset = 0;  // 2 Q tiles
  static constexpr int kStageOffset = 2 * kTileBytes;  // kStages x (K tile, V tile)
  static constexpr int kBarOffset = kStageOffset + kStages * 2 * kTileBytes;
  // Barriers: full[kStages], empty[kStages], q_full[2], q_empty[2], ready[2][kQueue].
  static constexpr int kFull = 0, kEmpty = kStages, kQFull = 2 * kStages, kQEmpty = kQFull + 2, kReady = kQEmpty + 2,
                       kBarriers = kReady + 2 * kQueue;
  static constexpr int kQueueOffset = (kBarOffset + kBarriers * 8 + 15) / 16 * 16;  // int4 [2][kQueue]
  static constexpr int kTileInfoOffset = kQueueOffset + 2 * kQueue * 16;  // int4 [2]
  static constexpr int kSmemBytes = kTileInfoOffset + 2 * 16;
  static constexpr int kSmemAlloc = kSmemBytes + 1024;  // room to align the base
  static_assert(kSmemAlloc <= 227 * 1024, "shared memory");
  static_assert(kTileBytes % 1024 == 0, "tiles must keep the swizzle period");
  static_assert(kStages >= 5, "two stages held by each consumer and one to fill");
};

struct Sm90Params {
  CUtensorMap tma_q;  // [L, Hq, D] as (D, Hq, L), box (cols, 1, 64)
  // Dense: [Hkv, kv_stride, D] as (D, L, Hkv), box (cols, 128, 1). With
  // block lists: tma_k_tile's view, box (cols, 64, 1, 1), one column block
  // of a tile (Sm90PairsKernel at head_dim 128).
  CUtensorMap tma_k;
  CUtensorMap tma_v;
  void* out;
  const int32_t* block_offsets;  // null: dense causal
  const int32_t* block_indices;
  const int32_t* order;  // tile order (h * pairs + pair), or null: the dense order
  uint32_t* tile_counter;  // kAtomic: zeroed before the launch
  const float2* q_rope;  // (cos, sin) [seq_len, D / 2]: q comes before RoPE (bf16 only), or null
  int seq_len;
  int num_heads;
  int num_kv_heads;
  int nb;  // query blocks
  int pairs;  // tiles per head: ceil(nb / 2)
  int num_tiles;
  float scale_log2;
  // The last live_pairs pairs of each head run, the ones before are
  // skipped (AttentionParams::first_row).
  int live_pairs;
  // The tile order's passes over the KV heads (tile_order.h).
  int kv_passes;
  // With block lists, K and V again with the column blocks of a row as a
  // dimension of their own after the rows, (cols, L, D / cols, Hkv), box
  // (cols, 64, D / cols, 1): one copy brings a whole 64-row tile in the
  // [column block][row][cols] layout of shared memory. That halves the
  // producer's copies at D = 128 (lists: 3-4% faster at 32k and 128k,
  // H200); dense, one copy a tile measured 1-2% slower, so dense keeps
  // one copy per column block.
  CUtensorMap tma_k_tile;
  CUtensorMap tma_v_tile;
};

#if defined(SEER_SM90A_ENABLED)

// Swizzle<B,4,3> applied to a byte offset from a 1024-byte aligned base.
template <int kSwizzle>
__device__ __forceinline__ uint32_t Swizzled(uint32_t offset) {
  constexpr uint32_t kMask = kSwizzle == 128 ? 7u : 3u;
  return offset ^ (((offset >> 7) & kMask) << 4);
}

// RoPE (HF rotate_half) on one warp's Q fragments in registers, for q read
// before RoPE. ldmatrix.x4 gave register r of k-step ks the elements at row
// row0 + 8 (r % 2) of the tile and columns 16 ks + 8 (r / 2) + 2 (lane % 4)
// + {0, 1}, so the pair (i, i + D / 2) sits in register r of k-steps ks and
// ks + kKSteps / 2 of the same thread. RotatePair's arithmetic, rounded to
// bf16 once, as cuda::RopeToCache rotates q: the same bits. Rows at or past
// seq_len (the tile's zero fill) are left alone.
template <int kKSteps>
__device__ __forceinline__ void RopeQFragments(uint32_t (&q)[kKSteps][4], const float2* table, int row0, int seq_len,
                                               int lane) {
  constexpr int kHalf = kKSteps * 8;  // D / 2 pairs a row
#pragma unroll
  for (int ks = 0; ks < kKSteps / 2; ++ks) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int t = row0 + 8 * (r % 2);
      if (t >= seq_len) continue;
      const int i = 16 * ks + 8 * (r / 2) + 2 * (lane % 4);
      const float4 cs = *reinterpret_cast<const float4*>(table + static_cast<int64_t>(t) * kHalf + i);
      const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&q[ks][r]);
      const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&q[ks + kKSteps / 2][r]);
      float lo0, hi0, lo1, hi1;
      RotatePair(__low2float(lo), __low2float(hi), make_float2(cs.x, cs.y), &lo0, &hi0);
      RotatePair(__high2float(lo), __high2float(hi), make_float2(cs.z, cs.w), &lo1, &hi1);
      const __nv_bfloat162 lo_out = __floats2bfloat162_rn(lo0, lo1);
      const __nv_bfloat162 hi_out = __floats2bfloat162_rn(hi0, hi1);
      q[ks][r] = *reinterpret_cast<const uint32_t*>(&lo_out);
      q[ks + kKSteps / 2][r] = *reinterpret_cast<const uint32_t*>(&hi_out);
    }
  }
}

// The dense order (kernels/attention/tile_order.h) over a head's last
// `live_pairs` pairs.
__device__ __forceinline__ void DenseTile(const Sm90Params& p, int live_pairs, int t, int* h, int* pair) {
  DenseOrderTile(p.num_heads, p.num_kv_heads, p.kv_passes, p.pairs, live_pairs, t, h, pair);
}

// --- pieces the two kernels share ----------------------------------------------

// Lane 0 reads shared words the producer overwrites once this warp has
// arrived on a barrier after the read, and broadcasts them: only the
// arriving thread reads, and the values are warp-uniform for the compiler
// too (see the kernels' role split).
__device__ __forceinline__ int4 ReadShared(const int4* src, int lane) {
  int4 v = lane == 0 ? *src : make_int4(0, 0, 0, 0);
  v.x = __shfl_sync(0xffffffffu, v.x, 0);
  v.y = __shfl_sync(0xffffffffu, v.y, 0);
  v.z = __shfl_sync(0xffffffffu, v.z, 0);
  return v;
}

// The wgmma descriptors of a kernel's K and V stages (kStageBytes apart, a
// tile's column blocks kColBlockBytes apart): K the K-major B operand of S =
// Q K^T, V the MN-major B operand of O = P V (PTX ISA canonical layouts,
// 64/128-byte swizzle). Stage 0's are built once. Their high words (stride
// byte offset, swizzle) are the same, and a stage's and a k-step's offsets
// are each a constant added to the low word's start address
// (sm90::DescWords): one add per wgmma, where a shift, an add and two moves
// used to sit (ptxas could not fold the offset's shift into the sum).
template <int kSwizzle, int kStepsPerColBlock, int kColBlockBytes, int kStageBytes>
struct StageDescs {
  uint32_t hi, k_lo0, v_lo0;

  __device__ __forceinline__ StageDescs(uint32_t k_stage0, uint32_t v_stage0) {
    const uint64_t k = sm90::MatrixDesc(k_stage0, 16, 8 * kSwizzle, kSwizzle);
    const uint64_t v = sm90::MatrixDesc(v_stage0, kColBlockBytes, 8 * kSwizzle, kSwizzle);
    hi = static_cast<uint32_t>(k >> 32);
    k_lo0 = static_cast<uint32_t>(k);
    v_lo0 = static_cast<uint32_t>(v);
  }
  // K of `stage` at k16 step ks (16 channels).
  __device__ __forceinline__ uint64_t K(int stage, int ks) const {
    constexpr uint32_t kStageUnits = kStageBytes / 16;  // offsets in the start address's units
    return sm90::DescWords(
        k_lo0 + stage * kStageUnits + ((ks / kStepsPerColBlock) * kColBlockBytes + (ks % kStepsPerColBlock) * 32) / 16,
        hi);
  }
  // V of `stage` at k16 step ks (16 keys).
  __device__ __forceinline__ uint64_t V(int stage, int ks) const {
    constexpr uint32_t kStageUnits = kStageBytes / 16;
    return sm90::DescWords(v_lo0 + stage * kStageUnits + ks * kSwizzle, hi);
  }
};

// The producer's Q step for tile (h, pair), or the stop signal when `done`:
// once each consumer has started its previous tile (and so read that tile's
// Q), both Q blocks by TMA into q_dst (consumer 0 takes query block 2 pair +
// 1, consumer 1 block 2 pair) and (h, query block, valid) into tile_info.
// q_full and q_empty are consumer 0's barriers, consumer 1's follow each.
template <int kHeadDim>
__device__ __forceinline__ void ProduceQ(const Sm90Params& p, uint32_t q_dst, uint32_t q_full, uint32_t q_empty,
                                         int4* tile_info, uint32_t q_phase, bool done, int h, int pair) {
  using Tile = Sm90Tile<kHeadDim>;
  const int qb[2] = {2 * pair + 1, 2 * pair};
  for (int c = 0; c < 2; ++c) {
    sm90::MbarWait(q_empty + 8 * c, q_phase ^ 1);
    if (done) {
      tile_info[c] = make_int4(-1, 0, 0, 0);
      sm90::MbarArrive(q_full + 8 * c);
      continue;
    }
    const bool valid = qb[c] < p.nb;
    tile_info[c] = make_int4(h, qb[c], valid ? 1 : 0, 0);
    if (valid) {
      sm90::MbarArriveExpectTx(q_full + 8 * c, Tile::kTileBytes);
      const uint32_t dst = q_dst + c * Tile::kTileBytes;
#pragma unroll
      for (int cb = 0; cb < Tile::kColBlocks; ++cb) {
        sm90::TmaLoad3d(dst + cb * Tile::kColBlockBytes, &p.tma_q, q_full + 8 * c, cb * Tile::kCols, h, qb[c] * kBlock);
      }
    } else {
      sm90::MbarArrive(q_full + 8 * c);
    }
  }
}

// A consumer's Q fragments, the A operand of every S = Q K^T, from its
// swizzled TMA tile into registers (ldmatrix); zeros for a query block past
// the sequence.
template <int kHeadDim>
__device__ __forceinline__ void LoadQFragments(uint32_t (&q_frag)[Sm90Tile<kHeadDim>::kKSteps][4], uint32_t q_smem,
                                               bool valid, int warp, int lane) {
  using Tile = Sm90Tile<kHeadDim>;
  if (valid) {
#pragma unroll
    for (int ks = 0; ks < Tile::kKSteps; ++ks) {
      const int row = 16 * warp + lane % 16;
      const int chunk = (ks % Tile::kStepsPerColBlock) * 2 + lane / 16;
      const uint32_t offset = (ks / Tile::kStepsPerColBlock) * Tile::kColBlockBytes +
                              Swizzled<Tile::kSwizzle>(row * Tile::kSwizzle + chunk * 16);
      ptx::LdMatrixX4(q_frag[ks], q_smem + offset);
    }
  } else {
#pragma unroll
    for (int ks = 0; ks < Tile::kKSteps; ++ks) {
#pragma unroll
      for (int r = 0; r < 4; ++r) q_frag[ks][r] = 0u;
    }
  }
}

// A consumer's tile start: its Q fragments into registers (LoadQFragments),
// the Q buffer handed back to the producer (q_empty, one arrive a warp), and
// RoPE on the fragments when q comes before it (p.q_rope, bf16 only).
template <int kHeadDim, typename T>
__device__ __forceinline__ void TakeQ(const Sm90Params& p, uint32_t (&q_frag)[Sm90Tile<kHeadDim>::kKSteps][4],
                                      uint32_t q_smem, uint32_t q_empty, bool valid, int qb, int warp, int lane) {
  LoadQFragments<kHeadDim>(q_frag, q_smem, valid, warp, lane);
  __syncwarp();
  sm90::FenceProxyAsync();  // the next TMA write of this buffer comes after these reads
  if (lane == 0) sm90::MbarArrive(q_empty);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (valid && p.q_rope != nullptr) {
      RopeQFragments<Sm90Tile<kHeadDim>::kKSteps>(q_frag, p.q_rope, qb * kBlock + 16 * warp + lane / 4, p.seq_len,
                                                  lane);
    }
  }
}

// O += P V for a consumer's held block (kPSteps k16 steps of keys; v_desc(ks)
// the V operand of step ks), waited for: the last block of a row where
// nothing carries it (every row in Sm90FwdKernel; in the ring kernels only
// before an empty row and at the consumer's end, see PendingRow).
template <int kHeadDim, typename T, int kPSteps, class VDesc>
__device__ __forceinline__ void HeldPV(float (&o)[kHeadDim / 2], const uint32_t (&p_frag)[kPSteps][4], VDesc&& v_desc) {
  sm90::WgmmaFence();
#pragma unroll
  for (int ks = 0; ks < kPSteps; ++ks) {
    sm90::WgmmaRS<kHeadDim, T>::template Run<1>(o, p_frag[ks], v_desc(ks), 1);
  }
  sm90::WgmmaCommit();
  sm90::WgmmaWait<0>();
  sm90::FenceRegs(o);
}

// The token-level causal mask of a diagonal key block: the thread's S
// elements (kSTiles n8 tiles in the m64nN accumulator layout) whose key lies
// right of their row, with row0 the thread's first row and both counted from
// the block's first key.
template <int kSTiles>
__device__ __forceinline__ void MaskRightOfDiagonal(float (&s)[kSTiles * 4], int row0, int lane) {
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + (e / 2) * 8;
      const int col = nt * 8 + (lane % 4) * 2 + (e % 2);
      if (col > row) s[nt * 4 + e] = -INFINITY;
    }
  }
}

// The online softmax of row half hf of S, in the log2 domain (the 4 lanes of
// a quad share a row): updates the row's running maximum and sum, turns its
// elements into unnormalised probabilities in place and returns O's
// correction factor. kExpFirst computes all the exponents, fences the
// registers, then takes all the exponentials, so that no MUFU.EX2 waits on
// the FFMA just before it (ncu put 13.5% of the 64-key dense kernel's stalls
// there); the same operations, the same bits.
template <int kSTiles, bool kExpFirst>
__device__ __forceinline__ float SoftmaxRowHalf(float (&s)[kSTiles * 4], int hf, float scale_log2, float* row_max,
                                                float* row_sum) {
  float mx = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < kSTiles; ++nt) mx = fmaxf(mx, fmaxf(s[nt * 4 + 2 * hf], s[nt * 4 + 2 * hf + 1]));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float m_new = fmaxf(*row_max, mx * scale_log2);
  const float m_use = m_new == -INFINITY ? 0.0f : m_new;
  const float correction = ptx::Exp2(*row_max - m_use);
  *row_max = m_new;
  float sum = 0.0f;
  if constexpr (kExpFirst) {
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
      for (int e = 2 * hf; e < 2 * hf + 2; ++e) s[nt * 4 + e] = fmaf(s[nt * 4 + e], scale_log2, -m_use);
    }
    sm90::FenceRegs(s);
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
      for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
        s[nt * 4 + e] = ptx::Exp2(s[nt * 4 + e]);
        sum += s[nt * 4 + e];
      }
    }
  } else {
#pragma unroll
    for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
      for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
        const float prob = ptx::Exp2(fmaf(s[nt * 4 + e], scale_log2, -m_use));
        s[nt * 4 + e] = prob;
        sum += prob;
      }
    }
  }
  *row_sum = *row_sum * correction + sum;
  return correction;
}

// O *= the correction of each row half. Once a row's maximum has settled its
// correction is exactly 1: then the 2 D multiplies are skipped (the same
// bits).
template <int kOTiles>
__device__ __forceinline__ void RescaleO(float (&o)[kOTiles * 4], const float (&correction)[2]) {
  if (correction[0] != 1.0f || correction[1] != 1.0f) {
#pragma unroll
    for (int nt = 0; nt < kOTiles; ++nt) {
      o[nt * 4 + 0] *= correction[0];
      o[nt * 4 + 1] *= correction[0];
      o[nt * 4 + 2] *= correction[1];
      o[nt * 4 + 3] *= correction[1];
    }
  }
}

// P, the A operand of O += P V: the C layout of two n8 tiles of S is the A
// layout of one k16 step.
template <int kPSteps, typename T>
__device__ __forceinline__ void PackP(uint32_t (&p_frag)[kPSteps][4], const float (&s)[kPSteps * 8]) {
#pragma unroll
  for (int ks = 0; ks < kPSteps; ++ks) {
    p_frag[ks][0] = ptx::PackPair<T>(s[8 * ks + 0], s[8 * ks + 1]);
    p_frag[ks][1] = ptx::PackPair<T>(s[8 * ks + 2], s[8 * ks + 3]);
    p_frag[ks][2] = ptx::PackPair<T>(s[8 * ks + 4], s[8 * ks + 5]);
    p_frag[ks][3] = ptx::PackPair<T>(s[8 * ks + 6], s[8 * ks + 7]);
  }
}

// A consumer's output: O / l for its 64-row query block qb of head h, rows
// past seq_len dropped.
template <int kHeadDim, typename T>
__device__ __forceinline__ void StoreRows(const Sm90Params& p, const float (&o)[kHeadDim / 2],
                                          const float (&row_sum)[2], int h, int qb, int warp, int lane) {
  constexpr int kOTiles = kHeadDim / 8;
  static_assert(kOTiles % 4 == 0, "whole groups of four n8 tiles");
  const int64_t q_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int q_rows = min(kBlock, p.seq_len - qb * kBlock);
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(qb) * kBlock * q_stride + h * kHeadDim;
  const int t = lane % 4;  // the thread's column pair within each n8 tile
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float total = row_sum[hf];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const int row = 16 * warp + lane / 4 + hf * 8;
    T* dst = out + row * q_stride;
#pragma unroll
    for (int m = 0; m < kOTiles / 4; ++m) {
      // Word j of lane t: columns 2t, 2t + 1 of tile 4m + j. A 4 x 4
      // transpose across the quad (two butterfly stages) leaves lane t
      // with all eight columns of tile 4m + t: one 16-byte store a row
      // and tile where there were four 4-byte ones, and a quad's four
      // stores cover 64 contiguous bytes of the row.
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int nt = 4 * m + j;
        w[j] = ptx::PackPair<T>(o[nt * 4 + 2 * hf] * inv, o[nt * 4 + 2 * hf + 1] * inv);
      }
#pragma unroll
      for (int bit = 1; bit <= 2; bit <<= 1) {
        // Words whose index differs from t in this bit trade places with
        // the partner lane's (index ^ bit).
        const bool high = (t & bit) != 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if ((k & bit) != 0) continue;  // k: the lower index of a pair (k, k | bit)
          const uint32_t send = high ? w[k] : w[k | bit];
          const uint32_t got = __shfl_xor_sync(0xffffffffu, send, bit);
          if (high) {
            w[k] = got;
          } else {
            w[k | bit] = got;
          }
        }
      }
      if (row < q_rows) *reinterpret_cast<uint4*>(dst + (4 * m + t) * 8) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// The carry across rows. A consumer's row ends with its last block's P held
// (O += P V not yet issued). Rather than issue that P V alone, wait for it
// and store, the consumer takes its next row's Q and issues the next row's
// first S with the held P V behind it, as any step does; once both are done
// it stores the finished row and zeroes O for the new one. So the end of one
// row and the start of the next overlap, as the blocks within a row do. Until
// then the finished row is pending: its place and its row sums are here.
struct PendingRow {
  bool live = false;  // a row waits for its held P V
  bool store = false;  // its rows are stored (false: a query block past seq_len)
  int h = 0, qb = 0;
  float sum[2] = {0.0f, 0.0f};

  // A row done but for its held P V: (head, block) with its row sums.
  __device__ __forceinline__ void Hold(const float (&row_sum)[2], bool stored, int head, int block) {
    live = true;
    sum[0] = row_sum[0];
    sum[1] = row_sum[1];
    store = stored;
    h = head;
    qb = block;
  }
};

// The carry's end of a row: O (its held P V done) stored as `row`, then
// zeroed for the next row.
template <int kHeadDim, typename T>
__device__ __forceinline__ void StoreCarried(const Sm90Params& p, float (&o)[kHeadDim / 2], const PendingRow& row,
                                             int warp, int lane) {
  if (row.store) StoreRows<kHeadDim, T>(p, o, row.sum, row.h, row.qb, warp, lane);
#pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
}

// A list row's start under the carry (Sm90RowsKernel, Sm90PairsKernel): O
// zeroed unless a finished row still holds it (the carry step stores and
// zeroes it then); an empty list (n = 0) stores its zeros here, and the
// answer is true: nothing more to do for the row. With n = 0 the caller has
// finished a pending row first (pending.live false), or that row's O would
// be stored as this one.
template <int kHeadDim, typename T>
__device__ __forceinline__ bool EmptyRowStored(const Sm90Params& p, float (&o)[kHeadDim / 2], const float (&row_sum)[2],
                                               const PendingRow& pending, int n, int h, int qb, int warp, int lane) {
  if (!pending.live) {
#pragma unroll
    for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
  }
  if (n != 0) return false;
  StoreRows<kHeadDim, T>(p, o, row_sum, h, qb, warp, lane);
  return true;
}

// Not a carry: a step that starts nothing.
struct NoCarry {
  template <class O>
  __device__ __forceinline__ void operator()(O&) const {}
};

template <int kHeadDim, typename T>
__device__ __forceinline__ void Producer(const Sm90Params& p, uint8_t* smem, Sm90Schedule schedule) {
  using Tile = Sm90Tile<kHeadDim>;
  const uint32_t bars = sm90::SmemAddr(smem) + Tile::kBarOffset;
  auto bar = [&](int i) { return bars + 8 * i; };
  const uint32_t base = sm90::SmemAddr(smem);
  int4* queue = reinterpret_cast<int4*>(smem + Tile::kQueueOffset);
  int4* tile_info = reinterpret_cast<int4*>(smem + Tile::kTileInfoOffset);

  sm90::PrefetchTensorMap(&p.tma_q);
  sm90::PrefetchTensorMap(&p.tma_k_tile);
  sm90::PrefetchTensorMap(&p.tma_v_tile);
  // Only block lists reach this producer since dense runs Sm90WideKernel, so
  // `dense` and the null `order` branch below are never taken; they stay
  // until a GPU run can check the list kernels without them (their PTX is
  // what the 2026-11-30 tables measured).
  const bool dense = p.block_offsets == nullptr;
  const int group = p.num_heads / p.num_kv_heads;

  uint32_t fills = 0;  // bit s: parity of stage s's fills so far
  int next_stage = 0;  // where the search for a free stage starts
  int queued[2] = {0, 0};  // each consumer's next queue slot
  uint32_t q_phase = 0;
  // Appends an entry to consumer c's queue and signals it.
  auto enqueue = [&](int c, int4 entry) {
    const int slot = queued[c];
    queue[c * Tile::kQueue + slot] = entry;
    sm90::MbarArrive(bar(Tile::kReady + c * Tile::kQueue + slot));
    queued[c] = slot + 1 == Tile::kQueue ? 0 : slot + 1;
  };

  int t = schedule == Sm90Schedule::kAtomic ? static_cast<int>(atomicAdd(p.tile_counter, 1u))
                                            : static_cast<int>(blockIdx.x);
  for (;;) {
    const bool done = t >= p.num_tiles;
    int h = 0, pair = 0;
    if (!done) {
      if (p.order != nullptr) {
        const int code = p.order[t];
        h = code / p.pairs;
        pair = code % p.pairs;
      } else {
        DenseTile(p, p.live_pairs, t, &h, &pair);
      }
    }
    // The next tile's index is fetched now and used a tile later.
    int next = 0;
    if (!done) {
      next = schedule == Sm90Schedule::kAtomic ? static_cast<int>(atomicAdd(p.tile_counter, 1u))
                                               : t + static_cast<int>(gridDim.x);
    }

    ProduceQ<kHeadDim>(p, base + Tile::kQOffset, bar(Tile::kQFull), bar(Tile::kQEmpty), tile_info, q_phase, done, h,
                       pair);
    q_phase ^= 1;
    if (done) return;
    const int qb[2] = {2 * pair + 1, 2 * pair};

    // The union of the two rows' lists, highest block first.
    int begin[2], n[2];
    for (int c = 0; c < 2; ++c) {
      begin[c] = 0;
      n[c] = qb[c] < p.nb ? qb[c] + 1 : 0;
      if (!dense && qb[c] < p.nb) {
        begin[c] = p.block_offsets[h * p.nb + qb[c]];
        n[c] = p.block_offsets[h * p.nb + qb[c] + 1] - begin[c];
      }
    }
    // Lists are ascending and causal; anything else is clamped so that no
    // copy leaves the tensors (the result of such a list is unspecified).
    // Each list's next entry is read a block ahead, and clamped only when
    // it is taken, so that the load's latency hides behind a block's
    // copies instead of stalling the one thread that issues them.
    auto read = [&](int c, int i) { return dense ? i : p.block_indices[begin[c] + i]; };
    auto clamp = [&](int c, int kb) { return min(max(kb, 0), qb[c]); };
    const int kvh = h / group;
    int i0 = n[0] - 1, i1 = n[1] - 1;
    int k0 = i0 >= 0 ? clamp(0, read(0, i0)) : -1;
    int k1 = i1 >= 0 ? clamp(1, read(1, i1)) : -1;
    int ahead0 = i0 >= 1 ? read(0, i0 - 1) : 0;
    int ahead1 = i1 >= 1 ? read(1, i1 - 1) : 0;
    while (k0 >= 0 || k1 >= 0) {
      const int kb = max(k0, k1);
      const int owners = (k0 == kb ? 1 : 0) | (k1 == kb ? 2 : 0);
      // Any free stage: a stage waits only for the consumers that use it.
      int s = next_stage;
      for (int tried = 1; !sm90::MbarTestWait(bar(Tile::kEmpty + s), ((fills >> s) & 1u) ^ 1u); ++tried) {
        s = s + 1 == Tile::kStages ? 0 : s + 1;
        if (tried % Tile::kStages == 0) __nanosleep(32);  // none free: leave the issue slots to the consumers
      }
      next_stage = s + 1 == Tile::kStages ? 0 : s + 1;
      const uint32_t parity = (fills >> s) & 1u;
      fills ^= 1u << s;
      const uint32_t full = bar(Tile::kFull + s);
      sm90::MbarArriveExpectTx(full, 2 * Tile::kTileBytes);
      const uint32_t k_dst = base + Tile::kStageOffset + s * 2 * Tile::kTileBytes;
      const uint32_t v_dst = k_dst + Tile::kTileBytes;
      sm90::TmaLoad4d(k_dst, &p.tma_k_tile, full, 0, kb * kBlock, 0, kvh);
      sm90::TmaLoad4d(v_dst, &p.tma_v_tile, full, 0, kb * kBlock, 0, kvh);
      // The consumer that does not use this block releases it right away
      // (its four warps' share of the count, from here).
      if (owners != 3) sm90::MbarArriveCount(bar(Tile::kEmpty + s), 4);
      for (int c = 0; c < 2; ++c) {
        if (owners & (1 << c)) enqueue(c, make_int4(s, kb, static_cast<int>(parity), 0));
      }
      if (owners & 1) {
        k0 = --i0 >= 0 ? clamp(0, ahead0) : -1;
        ahead0 = i0 >= 1 ? read(0, i0 - 1) : 0;
      }
      if (owners & 2) {
        k1 = --i1 >= 0 ? clamp(1, ahead1) : -1;
        ahead1 = i1 >= 1 ? read(1, i1 - 1) : 0;
      }
    }
    enqueue(0, make_int4(-1, 0, 0, 0));  // end of tile
    enqueue(1, make_int4(-1, 0, 0, 0));
    t = next;
  }
}

template <int kHeadDim, typename T>
__device__ __forceinline__ void Consumer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90Tile<kHeadDim>;
  constexpr int kSwizzle = Tile::kSwizzle;
  constexpr int kOTiles = kHeadDim / 8;  // n8 tiles of O
  const uint32_t base = sm90::SmemAddr(smem);
  const uint32_t bars = base + Tile::kBarOffset;
  auto bar = [&](int i) { return bars + 8 * i; };
  // Written by the producer before its release-arrive on the barrier that
  // we wait on (acquire); the waits are compiler memory barriers too.
  const int4* queue = reinterpret_cast<const int4*>(smem + Tile::kQueueOffset) + c * Tile::kQueue;
  const int4* tile_info = reinterpret_cast<const int4*>(smem + Tile::kTileInfoOffset) + c;
  const uint32_t q_smem = base + Tile::kQOffset + c * Tile::kTileBytes;
  const int warp = (threadIdx.x / 32) % 4;  // warp within the warpgroup: rows 16 warp .. 16 warp + 15
  const int lane = threadIdx.x % 32;

  // A stage is a K tile and its V tile.
  const StageDescs<kSwizzle, Tile::kStepsPerColBlock, Tile::kColBlockBytes, 2 * Tile::kTileBytes> desc(
      base + Tile::kStageOffset, base + Tile::kStageOffset + Tile::kTileBytes);
  auto k_desc = [&](int stage, int ks) { return desc.K(stage, ks); };
  auto v_desc = [&](int stage, int ks) { return desc.V(stage, ks); };
  auto release = [&](int stage) {
    __syncwarp();
    if (lane == 0) sm90::MbarArrive(bar(Tile::kEmpty + stage));
  };

  int take_slot = 0;  // this consumer's next queue slot, and the parity of its fills
  uint32_t take_phase = 0;
  uint32_t q_phase = 0;
  for (;;) {
    sm90::MbarWait(bar(Tile::kQFull + c), q_phase);
    q_phase ^= 1;
    const int4 info = ReadShared(tile_info, lane);
    if (info.x < 0) return;
    const int h = info.x;
    const int qb = info.y;
    const bool valid = info.z != 0;

    // Q fragments (the A operand of every S = Q K^T) into registers.
    uint32_t q_frag[Tile::kKSteps][4];
    TakeQ<kHeadDim, T>(p, q_frag, q_smem, bar(Tile::kQEmpty + c), valid, qb, warp, lane);

    float o[kOTiles * 4];
#pragma unroll
    for (int i = 0; i < kOTiles * 4; ++i) o[i] = 0.0f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};
    uint32_t p_frag[kBlock / 16][4];  // P of the held block, the A operand of O += P V
    bool have_p = false;
    int p_stage = 0;

    // O += P V for the held block; waits for it and releases its stage.
    auto flush = [&]() {
      HeldPV<kHeadDim, T>(o, p_frag, [&](int ks) { return v_desc(p_stage, ks); });
      release(p_stage);
      have_p = false;
    };

    // One kept block in `stage`: S = Q K^T (with the held block's O += P V
    // behind it when there is one), mask, softmax while that P V runs,
    // rescale O, and S becomes the new P. Instantiated for both cases so that
    // each is one straight run of fence + wgmmas + waits: ptxas serializes
    // wgmmas whose fences or waits it cannot match on every path.
    auto compute_block = [&]<bool kHaveP>(int kb, int stage, auto&& while_mma_runs) {
      // --- mma: S = Q K^T, and O += P V for the held block behind it.
      float s[32];
      sm90::WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < Tile::kKSteps; ++ks) {
        sm90::WgmmaRS<kBlock, T>::template Run<0>(s, q_frag[ks], k_desc(stage, ks), ks > 0 ? 1 : 0);
      }
      sm90::WgmmaCommit();
      if constexpr (kHaveP) {
#pragma unroll
        for (int ks = 0; ks < kBlock / 16; ++ks) {
          sm90::WgmmaRS<kHeadDim, T>::template Run<1>(o, p_frag[ks], v_desc(p_stage, ks), 1);
        }
        sm90::WgmmaCommit();
        while_mma_runs();
        sm90::WgmmaWait<1>();
      } else {
        while_mma_runs();
        sm90::WgmmaWait<0>();
      }
      sm90::FenceRegs(s);

      // --- mask: token-level causal, only in the diagonal block (keys past
      // seq_len only occur there, right of every real query).
      if (kb == qb) MaskRightOfDiagonal<8>(s, 16 * warp + lane / 4, lane);

      // --- softmax (exponents before exponentials, as WideConsumer does,
      // measured 3% slower here at 32k, s = 0.9).
      float correction[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        correction[hf] = SoftmaxRowHalf<8, false>(s, hf, p.scale_log2, &row_max[hf], &row_sum[hf]);
      }

      // --- the held block's P V is done: free its stage, rescale O.
      if constexpr (kHaveP) {
        sm90::WgmmaWait<0>();
        sm90::FenceRegs(o);
        release(p_stage);
      }
      RescaleO<kOTiles>(o, correction);
      PackP<kBlock / 16, T>(p_frag, s);
    };

    // This consumer's blocks, in stream order, until the tile's end marker.
    // The next queue entry is waited for and read while this block's MMAs
    // run, not after the block: measured 7-13% faster dense (H200,
    // 2026-11-28; docs/KERNELS.md), though a consumer now holds two stages
    // while it waits (hence kStages >= 5). Testing the barrier without
    // waiting, and waiting after the block when the entry was not posted yet,
    // was as slow as reading it after the block.
    auto take = [&]() {
      const int slot = take_slot;
      sm90::MbarWait(bar(Tile::kReady + c * Tile::kQueue + slot), take_phase);
      if (++take_slot == Tile::kQueue) {
        take_slot = 0;
        take_phase ^= 1u;
      }
      return ReadShared(queue + slot, lane);
    };
    int4 entry = take();
    while (entry.x >= 0) {
      const int stage = entry.x;
      sm90::MbarWait(bar(Tile::kFull + stage), static_cast<uint32_t>(entry.z));
      int4 next;
      auto read_next = [&] { next = take(); };
      if (have_p) {
        compute_block.template operator()<true>(entry.y, stage, read_next);
      } else {
        compute_block.template operator()<false>(entry.y, stage, read_next);
      }
      have_p = true;
      p_stage = stage;
      entry = next;
    }
    if (have_p) flush();

    // --- store: O / l, rows past seq_len dropped.
    if (valid) StoreRows<kHeadDim, T>(p, o, row_sum, h, qb, warp, lane);
  }
}

// The kernels' CTA: the shared memory base aligned to 1024 bytes (the
// swizzle period), the barriers initialised by thread 0 (init_barriers(bars)),
// then the roles. Warpgroup 0 gives registers back and its thread 0 produces
// (with kProducers = 2, lane 0 of warps 0 and 1, as produce(smem, c) for
// consumer c); warpgroups 1 and 2 take them and consume.
template <int kProducers = 1, class InitBarriers, class Produce, class Consume>
__device__ __forceinline__ void RunCta(uint8_t* smem_raw, int bar_offset, InitBarriers&& init_barriers,
                                       Produce&& produce, Consume&& consume) {
  uint8_t* smem = smem_raw + ((1024 - (sm90::SmemAddr(smem_raw) & 1023)) & 1023);
  // Broadcast from lane 0 so that ptxas knows the role is warp-uniform (a
  // wgmma on a path it thinks divergent gets serialized).
  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  if (threadIdx.x == 0) {
    init_barriers(sm90::SmemAddr(smem) + bar_offset);
    sm90::FenceBarrierInit();
  }
  __syncthreads();

  if (warpgroup == 0) {
    sm90::SetMaxRegsDec<kProducerRegs>();
    if constexpr (kProducers == 1) {
      if (threadIdx.x == 0) produce(smem);
    } else {
      static_assert(kProducers == 2, "a producer per consumer");
      if (threadIdx.x % 32 == 0 && threadIdx.x < 64) produce(smem, static_cast<int>(threadIdx.x / 32));
    }
  } else {
    sm90::SetMaxRegsInc<kConsumerRegs>();
    consume(smem, warpgroup - 1);
  }
}

#endif  // SEER_SM90A_ENABLED

// Block lists. Dense causal (null lists) runs Sm90WideKernel below.
template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kThreads, 1)
    Sm90FwdKernel(const __grid_constant__ Sm90Params p, Sm90Schedule schedule) {
#if defined(SEER_SM90A_ENABLED)
  using Tile = Sm90Tile<kHeadDim>;
  extern __shared__ uint8_t smem_raw[];
  RunCta(
      smem_raw, Tile::kBarOffset,
      [](uint32_t bars) {
        for (int s = 0; s < Tile::kStages; ++s) {
          sm90::MbarInit(bars + 8 * (Tile::kFull + s), 1);  // the producer's arrive + the bytes
          sm90::MbarInit(bars + 8 * (Tile::kEmpty + s), 2 * 4);  // one lane per consumer warp
        }
        for (int c = 0; c < 2; ++c) {
          sm90::MbarInit(bars + 8 * (Tile::kQFull + c), 1);
          sm90::MbarInit(bars + 8 * (Tile::kQEmpty + c), 4);
        }
        for (int i = 0; i < 2 * Tile::kQueue; ++i) sm90::MbarInit(bars + 8 * (Tile::kReady + i), 1);
      },
      [&](uint8_t* smem) { Producer<kHeadDim, T>(p, smem, schedule); },
      [&](uint8_t* smem, int c) { Consumer<kHeadDim, T>(p, smem, c); });
#else
  __trap();  // launched only where Sm90AttentionAvailable()
#endif
}

// --- dense causal with 128-key steps ------------------------------------------
// Null lists (dense causal) take this kernel, block lists Sm90FwdKernel.
// The CTA is the same (a producer thread, two
// consumer warpgroups of one 64-row query block each, the tile a pair of
// query blocks, the same tile order and schedule), but each step of a
// consumer covers 128 keys, FlashAttention-3's tile: S = Q K^T is m64n128
// and O += P V takes eight k16 steps, so the wgmma count, the softmax's row
// reductions, the O rescale and the barrier round trips per key are halved.
// Dense, both consumers read every block in the same order, so K and V are
// two in-order rings (stage = block count mod kStages, parity from the
// round) with no queues: a consumer frees a K stage as soon as its S is
// done and a V stage once its P V is. The diagonal block (128 keys) holds
// both query blocks' diagonals; the token-level mask covers it, and rows
// past seq_len are computed on zeros and not stored.

template <int kHeadDim>
struct Sm90WideTile {
  using QTile = Sm90Tile<kHeadDim>;  // Q's tiles, layout and k-steps
  static constexpr int kKeys = 128;
  static constexpr int kSwizzle = QTile::kSwizzle;
  static constexpr int kCols = QTile::kCols;
  static constexpr int kColBlocks = QTile::kColBlocks;
  static constexpr int kStepsPerColBlock = QTile::kStepsPerColBlock;
  static constexpr int kColBlockBytes = kKeys * kSwizzle;  // 128 key rows of one column block
  static constexpr int kTileBytes = kKeys * kHeadDim * 2;
  // K and V each; as many as fit, up to 8.
  static constexpr int kStages = kHeadDim == 128 ? 3 : kHeadDim == 96 ? 4 : kHeadDim == 64 ? 6 : 8;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = 2 * QTile::kTileBytes;
  static constexpr int kVOffset = kKOffset + kStages * kTileBytes;
  static constexpr int kBarOffset = kVOffset + kStages * kTileBytes;
  // Barriers: k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages], q_full[2], q_empty[2].
  static constexpr int kKFull = 0, kKEmpty = kStages, kVFull = 2 * kStages, kVEmpty = 3 * kStages, kQFull = 4 * kStages,
                       kQEmpty = kQFull + 2, kBarriers = kQEmpty + 2;
  static constexpr int kTileInfoOffset = (kBarOffset + kBarriers * 8 + 15) / 16 * 16;  // int4 [2]
  static constexpr int kSmemBytes = kTileInfoOffset + 2 * 16;
  static constexpr int kSmemAlloc = kSmemBytes + 1024;
  static_assert(kSmemAlloc <= 227 * 1024, "shared memory");
};

#if defined(SEER_SM90A_ENABLED)

// An in-order ring position: stage and the parity of its current round.
struct RingPos {
  int stage = 0;
  uint32_t phase = 0;
  template <int kStages>
  __device__ __forceinline__ void Advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

// One key block of a consumer that walks in-order K and V rings
// (Sm90WideKernel: kKeys = 128; Sm90RowsKernel: 64). `bars` holds the
// rings' barriers: k_full, k_empty, v_full and v_empty, kStages each. S =
// Q K^T for the block at `pos`, with the held block's O += P V behind it
// when kHaveP; K's slot freed as soon as S is done; the token-level mask
// when diagonal(stage) says so (asked right after K's wait, while the slot
// is still this consumer's); the online softmax while P V runs; then V's
// slot freed, O rescaled, and S becomes the next P. The block becomes the
// held one.
//
// kCarry: the first block of a row whose held P is the previous row's last
// (the carry, see PendingRow). Instead of the rescale, carry(o) stores the
// finished previous row and zeroes O; then S becomes P. (In the other order,
// ptxas spilled hundreds of bytes at head_dim 128.)
template <int kKeys, int kStages, bool kExpFirst, bool kHaveP, bool kCarry, int kHeadDim, typename T, class Descs,
          class Diagonal, class Carry>
__device__ __forceinline__ void RingStep(const Sm90Params& p, const uint32_t (&q_frag)[kHeadDim / 16][4],
                                         float (&o)[kHeadDim / 2], uint32_t (&p_frag)[kKeys / 16][4],
                                         float (&row_max)[2], float (&row_sum)[2], const Descs& desc, uint32_t bars,
                                         RingPos& pos, RingPos& held, int row0, int lane, Diagonal&& diagonal,
                                         Carry&& carry) {
  static_assert(!kCarry || kHaveP, "a carried row has a held block");
  constexpr int kSTiles = kKeys / 8;  // n8 tiles of S
  constexpr int kPSteps = kKeys / 16;  // k16 steps of O += P V
  constexpr int kKFull = 0, kKEmpty = kStages, kVFull = 2 * kStages, kVEmpty = 3 * kStages;
  auto bar = [&](int i) { return bars + 8 * i; };
  auto release = [&](int i) {
    __syncwarp();
    if (lane == 0) sm90::MbarArrive(bar(i));
  };
  sm90::MbarWait(bar(kKFull + pos.stage), pos.phase);
  const bool masked = diagonal(pos.stage);
  if constexpr (kHaveP) sm90::MbarWait(bar(kVFull + held.stage), held.phase);
  float s[kSTiles * 4];
  sm90::WgmmaFence();
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    sm90::WgmmaRS<kKeys, T>::template Run<0>(s, q_frag[ks], desc.K(pos.stage, ks), ks > 0 ? 1 : 0);
  }
  sm90::WgmmaCommit();
  if constexpr (kHaveP) {
#pragma unroll
    for (int ks = 0; ks < kPSteps; ++ks) {
      sm90::WgmmaRS<kHeadDim, T>::template Run<1>(o, p_frag[ks], desc.V(held.stage, ks), 1);
    }
    sm90::WgmmaCommit();
    sm90::WgmmaWait<1>();
  } else {
    sm90::WgmmaWait<0>();
  }
  sm90::FenceRegs(s);
  release(kKEmpty + pos.stage);

  if (masked) MaskRightOfDiagonal<kSTiles>(s, row0, lane);

  float correction[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    correction[hf] = SoftmaxRowHalf<kSTiles, kExpFirst>(s, hf, p.scale_log2, &row_max[hf], &row_sum[hf]);
  }

  if constexpr (kHaveP) {
    sm90::WgmmaWait<0>();
    sm90::FenceRegs(o);
    release(kVEmpty + held.stage);
  }
  if constexpr (kCarry) {
    carry(o);
  } else {
    RescaleO<kHeadDim / 8>(o, correction);
  }
  PackP<kPSteps, T>(p_frag, s);
  held = pos;
  pos.template Advance<kStages>();
}

template <int kHeadDim>
__device__ __forceinline__ void WideProducer(const Sm90Params& p, uint8_t* smem, Sm90Schedule schedule) {
  using Tile = Sm90WideTile<kHeadDim>;
  using QTile = typename Tile::QTile;
  const uint32_t base = sm90::SmemAddr(smem);
  const uint32_t bars = base + Tile::kBarOffset;
  auto bar = [&](int i) { return bars + 8 * i; };
  int4* tile_info = reinterpret_cast<int4*>(smem + Tile::kTileInfoOffset);

  sm90::PrefetchTensorMap(&p.tma_q);
  sm90::PrefetchTensorMap(&p.tma_k);
  sm90::PrefetchTensorMap(&p.tma_v);
  const int group = p.num_heads / p.num_kv_heads;

  RingPos pos;
  uint32_t q_phase = 0;
  int t = schedule == Sm90Schedule::kAtomic ? static_cast<int>(atomicAdd(p.tile_counter, 1u))
                                            : static_cast<int>(blockIdx.x);
  for (;;) {
    const bool done = t >= p.num_tiles;
    int h = 0, pair = 0, next = 0;
    if (!done) {
      DenseTile(p, p.live_pairs, t, &h, &pair);  // AttentionParams::first_row
      next = schedule == Sm90Schedule::kAtomic ? static_cast<int>(atomicAdd(p.tile_counter, 1u))
                                               : t + static_cast<int>(gridDim.x);
    }
    ProduceQ<kHeadDim>(p, base + Tile::kQOffset, bar(Tile::kQFull), bar(Tile::kQEmpty), tile_info, q_phase, done, h,
                       pair);
    q_phase ^= 1;
    if (done) return;

    // Key blocks of 128 from the diagonal down; rows past seq_len come in as zeros.
    const int kvh = h / group;
    for (int j = pair; j >= 0; --j) {
      const uint32_t k_full = bar(Tile::kKFull + pos.stage), v_full = bar(Tile::kVFull + pos.stage);
      const uint32_t k_dst = base + Tile::kKOffset + pos.stage * Tile::kTileBytes;
      const uint32_t v_dst = base + Tile::kVOffset + pos.stage * Tile::kTileBytes;
      sm90::MbarWait(bar(Tile::kKEmpty + pos.stage), pos.phase ^ 1);
      sm90::MbarArriveExpectTx(k_full, Tile::kTileBytes);
#pragma unroll
      for (int cb = 0; cb < Tile::kColBlocks; ++cb) {
        sm90::TmaLoad3d(k_dst + cb * Tile::kColBlockBytes, &p.tma_k, k_full, cb * Tile::kCols, j * Tile::kKeys, kvh);
      }
      sm90::MbarWait(bar(Tile::kVEmpty + pos.stage), pos.phase ^ 1);
      sm90::MbarArriveExpectTx(v_full, Tile::kTileBytes);
#pragma unroll
      for (int cb = 0; cb < Tile::kColBlocks; ++cb) {
        sm90::TmaLoad3d(v_dst + cb * Tile::kColBlockBytes, &p.tma_v, v_full, cb * Tile::kCols, j * Tile::kKeys, kvh);
      }
      pos.template Advance<Tile::kStages>();
    }
    t = next;
  }
}

template <int kHeadDim, typename T>
__device__ __forceinline__ void WideConsumer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90WideTile<kHeadDim>;
  using QTile = typename Tile::QTile;
  constexpr int kSwizzle = Tile::kSwizzle;
  constexpr int kOTiles = kHeadDim / 8;  // n8 tiles of O
  constexpr int kPSteps = Tile::kKeys / 16;  // k16 steps of O += P V
  const uint32_t base = sm90::SmemAddr(smem);
  const uint32_t bars = base + Tile::kBarOffset;
  auto bar = [&](int i) { return bars + 8 * i; };
  const int4* tile_info = reinterpret_cast<const int4*>(smem + Tile::kTileInfoOffset) + c;
  const uint32_t q_smem = base + Tile::kQOffset + c * QTile::kTileBytes;
  const int warp = (threadIdx.x / 32) % 4;  // warp within the warpgroup: rows 16 warp .. 16 warp + 15
  const int lane = threadIdx.x % 32;

  // K and V in rings of their own; a column block is 128 key rows.
  const StageDescs<kSwizzle, Tile::kStepsPerColBlock, Tile::kColBlockBytes, Tile::kTileBytes> desc(
      base + Tile::kKOffset, base + Tile::kVOffset);
  auto release = [&](int i) {
    __syncwarp();
    if (lane == 0) sm90::MbarArrive(bar(i));
  };

  RingPos pos;
  uint32_t q_phase = 0;
  float o[kOTiles * 4];
  uint32_t p_frag[kPSteps][4];
  RingPos held;  // the block whose P V is pending
  PendingRow pending;
  for (;;) {
    sm90::MbarWait(bar(Tile::kQFull + c), q_phase);
    q_phase ^= 1;
    const int4 info = ReadShared(tile_info, lane);
    if (info.x < 0) {
      if (pending.live) {  // the last row's O += P V
        sm90::MbarWait(bar(Tile::kVFull + held.stage), held.phase);
        HeldPV<kHeadDim, T>(o, p_frag, [&](int ks) { return desc.V(held.stage, ks); });
        release(Tile::kVEmpty + held.stage);
        StoreCarried<kHeadDim, T>(p, o, pending, warp, lane);
      }
      return;
    }
    const int h = info.x;
    const int qb = info.y;
    const bool valid = info.z != 0;
    const int pair = qb / 2;
    const int row_base = (qb % 2) * kBlock + 16 * warp + lane / 4;  // the thread's first row within the tile

    uint32_t q_frag[QTile::kKSteps][4];
    TakeQ<kHeadDim, T>(p, q_frag, q_smem, bar(Tile::kQEmpty + c), valid, qb, warp, lane);
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};

    // The diagonal block first (both query blocks' diagonals), with the
    // previous tile's last P V behind it; then the rest.
    auto diagonal = [](int) { return true; };
    if (pending.live) {
      RingStep<Tile::kKeys, Tile::kStages, true, true, true, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row_base, lane, diagonal,
          [&](float(&acc)[kHeadDim / 2]) { StoreCarried<kHeadDim, T>(p, acc, pending, warp, lane); });
    } else {
#pragma unroll
      for (int i = 0; i < kOTiles * 4; ++i) o[i] = 0.0f;
      RingStep<Tile::kKeys, Tile::kStages, true, false, false, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row_base, lane, diagonal, NoCarry{});
    }
    for (int j = pair - 1; j >= 0; --j) {
      RingStep<Tile::kKeys, Tile::kStages, true, true, false, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row_base, lane, [](int) { return false; },
          NoCarry{});
    }
    // The last block's O += P V goes behind the next tile's first S.
    pending.Hold(row_sum, valid, h, qb);
  }
}

#endif  // SEER_SM90A_ENABLED

template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kThreads, 1)
    Sm90WideKernel(const __grid_constant__ Sm90Params p, Sm90Schedule schedule) {
#if defined(SEER_SM90A_ENABLED)
  using Tile = Sm90WideTile<kHeadDim>;
  extern __shared__ uint8_t smem_raw[];
  RunCta(
      smem_raw, Tile::kBarOffset,
      [](uint32_t bars) {
        for (int s = 0; s < Tile::kStages; ++s) {
          sm90::MbarInit(bars + 8 * (Tile::kKFull + s), 1);  // the producer's arrive + the bytes
          sm90::MbarInit(bars + 8 * (Tile::kKEmpty + s), 2 * 4);  // one lane per consumer warp
          sm90::MbarInit(bars + 8 * (Tile::kVFull + s), 1);
          sm90::MbarInit(bars + 8 * (Tile::kVEmpty + s), 2 * 4);
        }
        for (int c = 0; c < 2; ++c) {
          sm90::MbarInit(bars + 8 * (Tile::kQFull + c), 1);
          sm90::MbarInit(bars + 8 * (Tile::kQEmpty + c), 4);
        }
      },
      [&](uint8_t* smem) { WideProducer<kHeadDim>(p, smem, schedule); },
      [&](uint8_t* smem, int c) { WideConsumer<kHeadDim, T>(p, smem, c); });
#else
  __trap();
#endif
}

// --- block lists, a producer and rings per consumer ----------------------------
// Sm90Lists::kOwnRings (FwdVariant::kSm90Rows). The CTA, the roles and the
// consumers' arithmetic per 64-key block are Sm90FwdKernel's, but its two
// halves share nothing but the SMs' tensor cores: consumer c has a producer
// thread of its own (lane 0 of warp c), its own Q tile and its own in-order
// K and V rings (as Sm90WideKernel's, 64 keys a stage), and takes its rows
// from a tile counter of its own over the same heaviest-first order of pairs
// (consumer 0 the upper row of each pair, consumer 1 the lower). So there is
// no free-stage search, no queue, no end marker and no wait for the other
// consumer's tile: a producer's block costs two waits for a ring slot, two
// expect-tx and two copies, and a consumer frees a K slot as soon as its S =
// Q K^T is done, so K runs up to kStages blocks ahead. The price: a block
// both rows of a pair keep is loaded once for each (with uniform random
// lists, about a twentieth of the loads at sparsity 0.9, a third at 0.5).
// Each producer writes the key block of every K slot it fills beside the
// slot (the consumer needs it for the diagonal's mask) before the arrive
// that publishes the slot.

template <int kHeadDim>
struct Sm90RowsTile {
  using QTile = Sm90Tile<kHeadDim>;  // Q's and K/V's tile layout, k-steps, swizzle
  static constexpr int kTileBytes = QTile::kTileBytes;
  // K and V each, per consumer: as many as fit.
  static constexpr int kStages = kHeadDim == 128 ? 3 : kHeadDim == 96 ? 4 : kHeadDim == 64 ? 6 : 8;
  // A consumer's half: its Q tile, its K ring, its V ring.
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kTileBytes;
  static constexpr int kVOffset = kKOffset + kStages * kTileBytes;
  static constexpr int kHalfBytes = kVOffset + kStages * kTileBytes;
  // Barriers of a half: k_full[kStages], k_empty[kStages], v_full[kStages], v_empty[kStages], q_full, q_empty.
  static constexpr int kKFull = 0, kKEmpty = kStages, kVFull = 2 * kStages, kVEmpty = 3 * kStages, kQFull = 4 * kStages,
                       kQEmpty = kQFull + 1, kHalfBarriers = kQEmpty + 1;
  static constexpr int kBarOffset = 2 * kHalfBytes;
  static constexpr int kKeyBlockOffset = kBarOffset + 2 * kHalfBarriers * 8;  // int [2][kStages]: each K slot's block
  static constexpr int kTileInfoOffset = (kKeyBlockOffset + 2 * kStages * 4 + 15) / 16 * 16;  // int4 [2]
  static constexpr int kSmemBytes = kTileInfoOffset + 2 * 16;
  static constexpr int kSmemAlloc = kSmemBytes + 1024;
  static_assert(kSmemAlloc <= 227 * 1024, "shared memory");
  static_assert(kHalfBytes % 1024 == 0, "each half's tiles keep the swizzle period");
  static_assert(kStages >= 2, "a consumer holds one V slot while the next is filled");
};

#if defined(SEER_SM90A_ENABLED)

// The barriers of an own-rings CTA (Sm90RowsKernel, Sm90PairsKernel), for
// each consumer's half: kK K and kV V stages, each with a full barrier (the
// producer's arrive plus the bytes) and an empty one (one lane per consumer
// warp), then Q's two.
template <class Tile, int kK, int kV>
__device__ void InitOwnRingBarriers(uint32_t bars) {
  for (int c = 0; c < 2; ++c) {
    const uint32_t half = bars + c * Tile::kHalfBarriers * 8;
    for (int s = 0; s < kK; ++s) {
      sm90::MbarInit(half + 8 * (Tile::kKFull + s), 1);
      sm90::MbarInit(half + 8 * (Tile::kKEmpty + s), 4);
    }
    for (int s = 0; s < kV; ++s) {
      sm90::MbarInit(half + 8 * (Tile::kVFull + s), 1);
      sm90::MbarInit(half + 8 * (Tile::kVEmpty + s), 4);
    }
    sm90::MbarInit(half + 8 * Tile::kQFull, 1);
    sm90::MbarInit(half + 8 * Tile::kQEmpty, 4);
  }
}

// An own-rings producer's row start (Sm90RowsKernel, Sm90PairsKernel):
// consumer c's row of the next pair that has one (the last pair of an odd
// nb has no upper row), from ticket t (the ticket after it is fetched now
// into t); then, once the consumer has read the previous row's Q into
// registers (q_empty), the row's Q by TMA into q_dst and (h, qb, n) into
// tile_info for the consumer, and the row into r: its list is n entries
// from begin (n clamped to the qb + 1 blocks a causal list can have). When
// the rows are done: the stop signal, and false. (Values in, one struct
// out: the form in which both producers stay within kProducerRegs.)
struct OwnRow {
  int h, qb, begin, n;
};

template <int kHeadDim>
__device__ __forceinline__ bool StartOwnRow(const Sm90Params& p, uint32_t* counter, int c, int& t, uint32_t q_dst,
                                            uint32_t q_full, uint32_t q_empty, uint32_t& q_phase, int4* tile_info,
                                            OwnRow& r) {
  using QTile = Sm90Tile<kHeadDim>;
  int h = 0, qb = 0, next = 0;
  bool done = true;
  while (t < p.num_tiles) {
    const int code = p.order[t];
    h = code / p.pairs;
    qb = 2 * (code % p.pairs) + 1 - c;
    next = static_cast<int>(atomicAdd(counter, 1u));
    if (qb < p.nb) {
      done = false;
      break;
    }
    t = next;
  }
  sm90::MbarWait(q_empty, q_phase ^ 1);
  q_phase ^= 1;
  if (done) {
    *tile_info = make_int4(-1, 0, 0, 0);
    sm90::MbarArrive(q_full);
    return false;
  }
  const int row = h * p.nb + qb;
  const int begin = p.block_offsets[row];
  const int n = min(max(p.block_offsets[row + 1] - begin, 0), qb + 1);
  *tile_info = make_int4(h, qb, n, 0);
  sm90::MbarArriveExpectTx(q_full, QTile::kTileBytes);
#pragma unroll
  for (int cb = 0; cb < QTile::kColBlocks; ++cb) {
    sm90::TmaLoad3d(q_dst + cb * QTile::kColBlockBytes, &p.tma_q, q_full, cb * QTile::kCols, h, qb * kBlock);
  }
  t = next;
  r = OwnRow{h, qb, begin, n};
  return true;
}

template <int kHeadDim>
__device__ __forceinline__ void RowsProducer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90RowsTile<kHeadDim>;
  const uint32_t half = sm90::SmemAddr(smem) + c * Tile::kHalfBytes;
  const uint32_t bars = sm90::SmemAddr(smem) + Tile::kBarOffset + c * Tile::kHalfBarriers * 8;
  auto bar = [&](int i) { return bars + 8 * i; };
  int* key_block = reinterpret_cast<int*>(smem + Tile::kKeyBlockOffset) + c * Tile::kStages;
  int4* tile_info = reinterpret_cast<int4*>(smem + Tile::kTileInfoOffset) + c;
  uint32_t* counter = p.tile_counter + c;  // always the atomic schedule (Launch)

  sm90::PrefetchTensorMap(&p.tma_q);
  sm90::PrefetchTensorMap(&p.tma_k_tile);
  sm90::PrefetchTensorMap(&p.tma_v_tile);
  const int group = p.num_heads / p.num_kv_heads;

  RingPos pos;
  uint32_t q_phase = 0;
  int t = static_cast<int>(atomicAdd(counter, 1u));
  for (;;) {
    OwnRow r;
    if (!StartOwnRow<kHeadDim>(p, counter, c, t, half + Tile::kQOffset, bar(Tile::kQFull), bar(Tile::kQEmpty), q_phase,
                               tile_info, r)) {
      return;
    }
    const int h = r.h, qb = r.qb, begin = r.begin, n = r.n;

    // The list from its highest block down (the diagonal first), each next
    // entry read a block ahead. Lists are ascending and causal; anything
    // else is clamped so that no copy leaves the tensors.
    const int kvh = h / group;
    int ahead = n > 0 ? p.block_indices[begin + n - 1] : 0;
    for (int i = n - 1; i >= 0; --i) {
      const int kb = min(max(ahead, 0), qb);
      if (i > 0) ahead = p.block_indices[begin + i - 1];
      const uint32_t k_full = bar(Tile::kKFull + pos.stage), v_full = bar(Tile::kVFull + pos.stage);
      sm90::MbarWait(bar(Tile::kKEmpty + pos.stage), pos.phase ^ 1);
      key_block[pos.stage] = kb;  // published by the arrive below
      sm90::MbarArriveExpectTx(k_full, Tile::kTileBytes);
      sm90::TmaLoad4d(half + Tile::kKOffset + pos.stage * Tile::kTileBytes, &p.tma_k_tile, k_full, 0, kb * kBlock, 0,
                      kvh);
      sm90::MbarWait(bar(Tile::kVEmpty + pos.stage), pos.phase ^ 1);
      sm90::MbarArriveExpectTx(v_full, Tile::kTileBytes);
      sm90::TmaLoad4d(half + Tile::kVOffset + pos.stage * Tile::kTileBytes, &p.tma_v_tile, v_full, 0, kb * kBlock, 0,
                      kvh);
      pos.template Advance<Tile::kStages>();
    }
  }
}

template <int kHeadDim, typename T>
__device__ __forceinline__ void RowsConsumer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90RowsTile<kHeadDim>;
  using QTile = typename Tile::QTile;
  constexpr int kOTiles = kHeadDim / 8;  // n8 tiles of O
  constexpr int kPSteps = kBlock / 16;  // k16 steps of O += P V
  const uint32_t half = sm90::SmemAddr(smem) + c * Tile::kHalfBytes;
  const uint32_t bars = sm90::SmemAddr(smem) + Tile::kBarOffset + c * Tile::kHalfBarriers * 8;
  auto bar = [&](int i) { return bars + 8 * i; };
  const int* key_block = reinterpret_cast<const int*>(smem + Tile::kKeyBlockOffset) + c * Tile::kStages;
  const int4* tile_info = reinterpret_cast<const int4*>(smem + Tile::kTileInfoOffset) + c;
  const int warp = (threadIdx.x / 32) % 4;  // warp within the warpgroup: rows 16 warp .. 16 warp + 15
  const int lane = threadIdx.x % 32;

  const StageDescs<QTile::kSwizzle, QTile::kStepsPerColBlock, QTile::kColBlockBytes, Tile::kTileBytes> desc(
      half + Tile::kKOffset, half + Tile::kVOffset);
  auto release = [&](int i) {
    __syncwarp();
    if (lane == 0) sm90::MbarArrive(bar(i));
  };

  RingPos pos;
  uint32_t q_phase = 0;
  float o[kOTiles * 4];
  uint32_t p_frag[kPSteps][4];
  RingPos held;  // the block whose P V is pending
  PendingRow pending;
  for (;;) {
    sm90::MbarWait(bar(Tile::kQFull), q_phase);
    q_phase ^= 1;
    const int4 info = ReadShared(tile_info, lane);
    const int n = info.x < 0 ? 0 : info.z;
    if (pending.live && n == 0) {  // nothing to carry the held P V: done alone
      sm90::MbarWait(bar(Tile::kVFull + held.stage), held.phase);
      HeldPV<kHeadDim, T>(o, p_frag, [&](int ks) { return desc.V(held.stage, ks); });
      release(Tile::kVEmpty + held.stage);
      StoreCarried<kHeadDim, T>(p, o, pending, warp, lane);
      pending.live = false;
    }
    if (info.x < 0) return;
    const int h = info.x;
    const int qb = info.y;

    uint32_t q_frag[QTile::kKSteps][4];
    TakeQ<kHeadDim, T>(p, q_frag, half + Tile::kQOffset, bar(Tile::kQEmpty), true, qb, warp, lane);
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};
    if (EmptyRowStored<kHeadDim, T>(p, o, row_sum, pending, n, h, qb, warp, lane)) continue;

    // The kept blocks, highest first, the first with the previous row's
    // last P V behind it. The diagonal is masked; the key block of a K slot
    // is read before the slot is freed, by lane 0 only (the lane that
    // arrives on its empty barrier), as ReadShared does.
    auto diagonal = [&](int stage) { return __shfl_sync(0xffffffffu, lane == 0 ? key_block[stage] : 0, 0) == qb; };
    const int row0 = 16 * warp + lane / 4;
    if (pending.live) {
      RingStep<kBlock, Tile::kStages, false, true, true, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row0, lane, diagonal,
          [&](float(&acc)[kHeadDim / 2]) { StoreCarried<kHeadDim, T>(p, acc, pending, warp, lane); });
    } else {
      RingStep<kBlock, Tile::kStages, false, false, false, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row0, lane, diagonal, NoCarry{});
    }
    for (int i = 1; i < n; ++i) {
      RingStep<kBlock, Tile::kStages, false, true, false, kHeadDim, T>(
          p, q_frag, o, p_frag, row_max, row_sum, desc, bars, pos, held, row0, lane, diagonal, NoCarry{});
    }
    // The last block's O += P V goes behind the next row's first S.
    pending.Hold(row_sum, true, h, qb);
  }
}

#endif  // SEER_SM90A_ENABLED

template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kThreads, 1)
    Sm90RowsKernel(const __grid_constant__ Sm90Params p, Sm90Schedule /*always kAtomic: two counters*/) {
#if defined(SEER_SM90A_ENABLED)
  using Tile = Sm90RowsTile<kHeadDim>;
  extern __shared__ uint8_t smem_raw[];
  RunCta<2>(
      smem_raw, Tile::kBarOffset, InitOwnRingBarriers<Tile, Tile::kStages, Tile::kStages>,
      [&](uint8_t* smem, int c) { RowsProducer<kHeadDim>(p, smem, c); },
      [&](uint8_t* smem, int c) { RowsConsumer<kHeadDim, T>(p, smem, c); });
#else
  __trap();
#endif
}

// --- block lists, two kept blocks a step ------------------------------------

// Diagnostic builds only (cmake -DSEER_ATTENTION_DECOMPOSE=N, which defines
// the macro for this file alone; tools/attention_decompose.sh builds and runs
// all four): they take Sm90PairsKernel apart to show what bounds it. 1: the
// consumers issue no wgmma (S is zeros, O stays zero), so the copies, the
// barriers and the softmax arithmetic run alone; 2: the producers copy
// nothing (a plain arrive completes each full barrier), so the consumers
// compute on whatever the stages hold; 3: both. The outputs of 1-3 are
// wrong by design. 0, the default, is the kernel.
#ifndef SEER_ATTENTION_DECOMPOSE
#define SEER_ATTENTION_DECOMPOSE 0
#endif
constexpr bool kDecomposeNoMma = (SEER_ATTENTION_DECOMPOSE & 1) != 0;
constexpr bool kDecomposeNoCopy = (SEER_ATTENTION_DECOMPOSE & 2) != 0;

// Sm90Lists::kPairSteps (FwdVariant::kSm90Pairs), head_dim 64 and 128.
// Sm90RowsKernel's CTA, roles, counters and walk (each row's list from its
// highest block down), but each consumer step takes the next two blocks of
// its list: S = Q [K_a K_b]^T as one m64n128 wgmma chain (the accumulator's
// first 64 columns are block a's), one online-softmax round over the 128
// keys, and O += P [V_a; V_b] in 2 x 4 k16 steps, as Sm90WideKernel does
// dense. So a step's barrier waits, row reductions, correction and rescale
// serve two blocks. K and V go into pair stages (two tiles, one barrier: the
// copies complete the same transaction count). A K pair stage is one
// 128-key tile in the wgmma's K-major layout, column block by column block:
// at head_dim 128 that is [a cols 0-63][b cols 0-63][a cols 64-127][b cols
// 64-127], a copy per column block (the one-copy tile box would put a's two
// column blocks side by side), at head_dim 64 simply [a][b]. One chain of
// m64n128 steps instead of two of m64n64: 0.5-1.3% faster at 32k and 128k
// (H200, 2026-12-01). A V pair stage is two tiles, one copy
// each. A row of odd length ends on a single block: b's K is not copied and
// its half of S, computed from whatever the stage held, is set to -inf; its
// P V reads V_a for the second half against zero P (no branch around a
// wgmma: ptxas serializes those).
template <int kHeadDim>
struct Sm90PairsTile {
  using QTile = Sm90Tile<kHeadDim>;
  static constexpr int kTileBytes = QTile::kTileBytes;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "built for head_dim 64 and 128 (PairsDim)");
  // Pair stages per consumer, as many as fit: K is freed once S is done, V
  // only after the next step's P V.
  static constexpr int kKPairs = kHeadDim == 128 ? 1 : 2;
  static constexpr int kVPairs = kHeadDim == 128 ? 2 : 3;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kTileBytes;
  static constexpr int kVOffset = kKOffset + 2 * kKPairs * kTileBytes;
  static constexpr int kHalfBytes = kVOffset + 2 * kVPairs * kTileBytes;
  static constexpr int kKFull = 0, kKEmpty = kKPairs, kVFull = 2 * kKPairs, kVEmpty = kVFull + kVPairs,
                       kQFull = kVEmpty + kVPairs, kQEmpty = kQFull + 1, kHalfBarriers = kQEmpty + 1;
  static constexpr int kBarOffset = 2 * kHalfBytes;
  static constexpr int kKeyBlockOffset = kBarOffset + 2 * kHalfBarriers * 8;  // int [2][kKPairs]: block a
  static constexpr int kTileInfoOffset = (kKeyBlockOffset + 2 * kKPairs * 4 + 15) / 16 * 16;  // int4 [2]
  static constexpr int kSmemBytes = kTileInfoOffset + 2 * 16;
  static constexpr int kSmemAlloc = kSmemBytes + 1024;
  static_assert(kSmemAlloc <= 227 * 1024, "shared memory");
  static_assert(kHalfBytes % 1024 == 0, "each half's tiles keep the swizzle period");
  static_assert(kVPairs >= 2, "a consumer holds one V pair while the next is filled");
};

#if defined(SEER_SM90A_ENABLED)

template <int kHeadDim>
__device__ __forceinline__ void PairsProducer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90PairsTile<kHeadDim>;
  const uint32_t half = sm90::SmemAddr(smem) + c * Tile::kHalfBytes;
  const uint32_t bars = sm90::SmemAddr(smem) + Tile::kBarOffset + c * Tile::kHalfBarriers * 8;
  auto bar = [&](int i) { return bars + 8 * i; };
  int* key_block = reinterpret_cast<int*>(smem + Tile::kKeyBlockOffset) + c * Tile::kKPairs;
  int4* tile_info = reinterpret_cast<int4*>(smem + Tile::kTileInfoOffset) + c;
  uint32_t* counter = p.tile_counter + c;
  using QTile = typename Tile::QTile;
  // Two column blocks (head_dim 128): K_a's and K_b's interleaved, a copy
  // each (Sm90PairsTile).
  constexpr bool kSplitK = QTile::kColBlocks > 1;

  sm90::PrefetchTensorMap(&p.tma_q);
  sm90::PrefetchTensorMap(kSplitK ? &p.tma_k : &p.tma_k_tile);
  sm90::PrefetchTensorMap(&p.tma_v_tile);
  const int group = p.num_heads / p.num_kv_heads;

  // Steps so far: step u's K pair is stage u % kKPairs of round u / kKPairs,
  // its V pair likewise (one counter for both rings: the producer runs
  // within kProducerRegs).
  uint32_t u = 0;
  uint32_t q_phase = 0;
  int t = static_cast<int>(atomicAdd(counter, 1u));
  for (;;) {
    OwnRow r;
    if (!StartOwnRow<kHeadDim>(p, counter, c, t, half + Tile::kQOffset, bar(Tile::kQFull), bar(Tile::kQEmpty), q_phase,
                               tile_info, r)) {
      return;
    }
    const int h = r.h, qb = r.qb, begin = r.begin, n = r.n;

    // The list from its highest block down, two a step, clamped as
    // Sm90RowsKernel's; a step's entries are read before its waits.
    const int kvh = h / group;
    auto entry = [&](int i) { return i >= 0 ? min(max(p.block_indices[begin + i], 0), qb) : 0; };
    for (int i = n - 1; i >= 0; i -= 2) {
      const int ka = entry(i), kb = entry(i - 1);
      const bool two = i > 0;
      const uint32_t bytes = (two ? 2 : 1) * Tile::kTileBytes;
      const int ks = static_cast<int>(u % Tile::kKPairs), vs = static_cast<int>(u % Tile::kVPairs);
      const uint32_t k_full = bar(Tile::kKFull + ks), v_full = bar(Tile::kVFull + vs);
      const uint32_t k_dst = half + Tile::kKOffset + 2 * ks * Tile::kTileBytes;
      const uint32_t v_dst = half + Tile::kVOffset + 2 * vs * Tile::kTileBytes;
      sm90::MbarWait(bar(Tile::kKEmpty + ks), ((u / Tile::kKPairs) & 1u) ^ 1u);
      key_block[ks] = ka;  // published by the arrive below
      if constexpr (kDecomposeNoCopy) {
        sm90::MbarArrive(k_full);
      } else {
        sm90::MbarArriveExpectTx(k_full, bytes);
        if constexpr (kSplitK) {
          static_assert(QTile::kColBlocks == 2, "kSplitK: head_dim 128");
          constexpr int kCb = QTile::kColBlockBytes;
          sm90::TmaLoad4dAt<0, 0>(k_dst, &p.tma_k, k_full, ka * kBlock, kvh);
          sm90::TmaLoad4dAt<2 * kCb, 1>(k_dst, &p.tma_k, k_full, ka * kBlock, kvh);
          if (two) {
            sm90::TmaLoad4dAt<kCb, 0>(k_dst, &p.tma_k, k_full, kb * kBlock, kvh);
            sm90::TmaLoad4dAt<3 * kCb, 1>(k_dst, &p.tma_k, k_full, kb * kBlock, kvh);
          }
        } else {
          sm90::TmaLoad4d(k_dst, &p.tma_k_tile, k_full, 0, ka * kBlock, 0, kvh);
          if (two) sm90::TmaLoad4d(k_dst + Tile::kTileBytes, &p.tma_k_tile, k_full, 0, kb * kBlock, 0, kvh);
        }
      }
      sm90::MbarWait(bar(Tile::kVEmpty + vs), ((u / Tile::kVPairs) & 1u) ^ 1u);
      if constexpr (kDecomposeNoCopy) {
        sm90::MbarArrive(v_full);
      } else {
        sm90::MbarArriveExpectTx(v_full, bytes);
        sm90::TmaLoad4d(v_dst, &p.tma_v_tile, v_full, 0, ka * kBlock, 0, kvh);
        if (two) sm90::TmaLoad4d(v_dst + Tile::kTileBytes, &p.tma_v_tile, v_full, 0, kb * kBlock, 0, kvh);
      }
      ++u;
    }
  }
}

template <int kHeadDim, typename T>
__device__ __forceinline__ void PairsConsumer(const Sm90Params& p, uint8_t* smem, int c) {
  using Tile = Sm90PairsTile<kHeadDim>;
  using QTile = typename Tile::QTile;
  constexpr int kOTiles = kHeadDim / 8;
  constexpr int kHalfTiles = kBlock / 8;  // n8 tiles of S per block
  constexpr int kSTiles = 2 * kHalfTiles;
  constexpr int kHalfSteps = kBlock / 16;  // k16 steps of O += P V per block
  constexpr int kPSteps = 2 * kHalfSteps;
  const uint32_t half = sm90::SmemAddr(smem) + c * Tile::kHalfBytes;
  const uint32_t bars = sm90::SmemAddr(smem) + Tile::kBarOffset + c * Tile::kHalfBarriers * 8;
  auto bar = [&](int i) { return bars + 8 * i; };
  const int* key_block = reinterpret_cast<const int*>(smem + Tile::kKeyBlockOffset) + c * Tile::kKPairs;
  const int4* tile_info = reinterpret_cast<const int4*>(smem + Tile::kTileInfoOffset) + c;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;

  const StageDescs<QTile::kSwizzle, QTile::kStepsPerColBlock, QTile::kColBlockBytes, Tile::kTileBytes> desc(
      half + Tile::kKOffset, half + Tile::kVOffset);
  // A K pair stage as one 128-key tile: column blocks of 128 rows.
  const StageDescs<QTile::kSwizzle, QTile::kStepsPerColBlock, 2 * QTile::kColBlockBytes, 2 * Tile::kTileBytes> kdesc(
      half + Tile::kKOffset, half + Tile::kVOffset);
  auto release = [&](int i) {
    __syncwarp();
    if (lane == 0) sm90::MbarArrive(bar(i));
  };

  RingPos kpos, vpos;
  uint32_t q_phase = 0;
  float o[kOTiles * 4];
  uint32_t p_frag[kPSteps][4];
  RingPos held;  // the V pair whose P V is pending
  bool held_two = false;
  PendingRow pending;
  const int row0 = 16 * warp + lane / 4;

  // O += P V for the held pair: block a's four k16 steps, then b's. A
  // single block's pair reads V_a again for b's steps, whose P is zero
  // (no branch around a wgmma: ptxas serializes them).
  auto issue_pv = [&] {
    if constexpr (kDecomposeNoMma) return;
    const int b_tile = 2 * held.stage + (held_two ? 1 : 0);
#pragma unroll
    for (int ks = 0; ks < kHalfSteps; ++ks) {
      sm90::WgmmaRS<kHeadDim, T>::template Run<1>(o, p_frag[ks], desc.V(2 * held.stage, ks), 1);
    }
#pragma unroll
    for (int ks = 0; ks < kHalfSteps; ++ks) {
      sm90::WgmmaRS<kHeadDim, T>::template Run<1>(o, p_frag[kHalfSteps + ks], desc.V(b_tile, ks), 1);
    }
    sm90::WgmmaCommit();
  };

  for (;;) {
    sm90::MbarWait(bar(Tile::kQFull), q_phase);
    q_phase ^= 1;
    const int4 info = ReadShared(tile_info, lane);
    const int n = info.x < 0 ? 0 : info.z;
    if (pending.live && n == 0) {  // nothing to carry the held P V: done alone
      sm90::MbarWait(bar(Tile::kVFull + held.stage), held.phase);
      sm90::WgmmaFence();
      issue_pv();
      sm90::WgmmaWait<0>();
      sm90::FenceRegs(o);
      release(Tile::kVEmpty + held.stage);
      StoreCarried<kHeadDim, T>(p, o, pending, warp, lane);
      pending.live = false;
    }
    if (info.x < 0) return;
    const int h = info.x;
    const int qb = info.y;

    uint32_t q_frag[QTile::kKSteps][4];
    TakeQ<kHeadDim, T>(p, q_frag, half + Tile::kQOffset, bar(Tile::kQEmpty), true, qb, warp, lane);
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};
    if (EmptyRowStored<kHeadDim, T>(p, o, row_sum, pending, n, h, qb, warp, lane)) continue;

    // kCarry: the row's first step, with the previous row's last P V behind
    // its S (PendingRow).
    auto step = [&]<bool kHaveP, bool kCarry>(bool two) {
      sm90::MbarWait(bar(Tile::kKFull + kpos.stage), kpos.phase);
      const bool masked = __shfl_sync(0xffffffffu, lane == 0 ? key_block[kpos.stage] : 0, 0) == qb;
      if constexpr (kHaveP) sm90::MbarWait(bar(Tile::kVFull + held.stage), held.phase);
      float s[kSTiles * 4];
      float(&s_a)[kHalfTiles * 4] = *reinterpret_cast<float(*)[kHalfTiles * 4]>(&s[0]);
      float(&s_b)[kHalfTiles * 4] = *reinterpret_cast<float(*)[kHalfTiles * 4]>(&s[kHalfTiles * 4]);
      sm90::WgmmaFence();
      // One m64n128 chain over the pair. A single block's b half holds
      // whatever the stage held before: masked below, never multiplied.
      if constexpr (kDecomposeNoMma) {
#pragma unroll
        for (int i = 0; i < kSTiles * 4; ++i) s[i] = 0.0f;
      } else {
#pragma unroll
        for (int ks = 0; ks < QTile::kKSteps; ++ks) {
          sm90::WgmmaRS<2 * kBlock, T>::template Run<0>(s, q_frag[ks], kdesc.K(kpos.stage, ks), ks > 0 ? 1 : 0);
        }
      }
      sm90::WgmmaCommit();
      if constexpr (kHaveP) {
        issue_pv();
        sm90::WgmmaWait<1>();
      } else {
        sm90::WgmmaWait<0>();
      }
      sm90::FenceRegs(s);
      release(Tile::kKEmpty + kpos.stage);
      if (!two) {
#pragma unroll
        for (int i = 0; i < kHalfTiles * 4; ++i) s_b[i] = -INFINITY;
      }
      if (masked) MaskRightOfDiagonal<kHalfTiles>(s_a, row0, lane);
      float correction[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        correction[hf] = SoftmaxRowHalf<kSTiles, true>(s, hf, p.scale_log2, &row_max[hf], &row_sum[hf]);
      }
      if constexpr (kHaveP) {
        sm90::WgmmaWait<0>();
        sm90::FenceRegs(o);
        release(Tile::kVEmpty + held.stage);
      }
      if constexpr (kCarry) {
        StoreCarried<kHeadDim, T>(p, o, pending, warp, lane);
      } else {
        RescaleO<kOTiles>(o, correction);
      }
      PackP<kPSteps, T>(p_frag, s);
      held = vpos;
      held_two = two;
      kpos.template Advance<Tile::kKPairs>();
      vpos.template Advance<Tile::kVPairs>();
    };

    if (pending.live) {
      step.template operator()<true, true>(n > 1);
    } else {
      step.template operator()<false, false>(n > 1);
    }
    for (int i = n - 3; i >= 0; i -= 2) step.template operator()<true, false>(i > 0);
    // The last pair's O += P V goes behind the next row's first S.
    pending.Hold(row_sum, true, h, qb);
  }
}

#endif  // SEER_SM90A_ENABLED

template <int kHeadDim, typename T>
__global__ void __launch_bounds__(kThreads, 1)
    Sm90PairsKernel(const __grid_constant__ Sm90Params p, Sm90Schedule /*always kAtomic: two counters*/) {
#if defined(SEER_SM90A_ENABLED)
  using Tile = Sm90PairsTile<kHeadDim>;
  extern __shared__ uint8_t smem_raw[];
  RunCta<2>(
      smem_raw, Tile::kBarOffset, InitOwnRingBarriers<Tile, Tile::kKPairs, Tile::kVPairs>,
      [&](uint8_t* smem, int c) { PairsProducer<kHeadDim>(p, smem, c); },
      [&](uint8_t* smem, int c) { PairsConsumer<kHeadDim, T>(p, smem, c); });
#else
  __trap();
#endif
}

// The head dims Sm90PairsKernel is built for: 64 and 128 (at 32 and 96 its
// producer does not fit kProducerRegs); PairsDim maps the others to 128 so
// that PairsKernelFor compiles for every head dim and is never taken there.
constexpr int PairsDim(int head_dim) { return head_dim == 64 ? 64 : 128; }

template <int kHeadDim, typename T>
auto PairsKernelFor() {
  if constexpr (PairsDim(kHeadDim) == kHeadDim) {
    return Sm90PairsKernel<kHeadDim, T>;
  } else {
    return Sm90RowsKernel<kHeadDim, T>;  // same signature; Launch does not pick the pairs for this head dim
  }
}

// --- tile order for block lists ---------------------------------------------
// One CTA per pass of KV heads (HeadPass): that pass's tiles by kept-block
// count (the two rows' list lengths), heaviest first. The counting sort's
// buckets are quantised to kOrderBuckets. CTA 0 also zeroes the tile counters.
constexpr int kOrderThreads = 1024;
constexpr int kOrderBuckets = 1024;

__global__ void __launch_bounds__(kOrderThreads)
    TileOrderKernel(const int32_t* offsets, int num_heads, int num_kv_heads, int kv_passes, int nb, int pairs,
                    int live_pairs, int32_t* order, uint32_t* tile_counter) {
  __shared__ int32_t hist[kOrderBuckets];
  __shared__ int32_t warp_sums[kOrderThreads / 32];
  // Two counters: Sm90RowsKernel's consumers take tiles from one each.
  if (blockIdx.x == 0 && threadIdx.x < 2 && tile_counter != nullptr) tile_counter[threadIdx.x] = 0;
  const int group = num_heads / num_kv_heads;
  const HeadPassRange pass = HeadPass(num_kv_heads, kv_passes, blockIdx.x);
  const int first = pass.first;
  const int width = pass.count * group;  // the pass's Q heads
  const int tiles = width * live_pairs;  // each head's last live_pairs pairs (AttentionParams::first_row)
  const int max_cost = 2 * nb;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  auto tile_of = [&](int r, int* h, int* pair) {  // r-th tile of the pass in the dense order
    *pair = pairs - 1 - r / width;
    *h = first * group + r % width;
  };
  auto bucket = [&](int r) {
    int h, pair;
    tile_of(r, &h, &pair);
    const int row = h * nb + 2 * pair;
    int cost = offsets[row + 1] - offsets[row];
    if (2 * pair + 1 < nb) cost += offsets[row + 2] - offsets[row + 1];
    cost = min(max(cost, 0), max_cost);
    // Bucket 0 is the heaviest.
    return static_cast<int>((static_cast<int64_t>(max_cost - cost) * (kOrderBuckets - 1)) / max(max_cost, 1));
  };
  for (int b = threadIdx.x; b < kOrderBuckets; b += kOrderThreads) hist[b] = 0;
  __syncthreads();
  for (int r = threadIdx.x; r < tiles; r += kOrderThreads) atomicAdd(&hist[bucket(r)], 1);
  __syncthreads();
  // Exclusive scan of the buckets (one per thread).
  static_assert(kOrderBuckets == kOrderThreads, "one bucket per thread");
  const int own = hist[threadIdx.x];
  int incl = own;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const int v = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += v;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  int before = incl - own;
  for (int w = 0; w < warp; ++w) before += warp_sums[w];
  __syncthreads();
  hist[threadIdx.x] = before;  // now the next free slot of each bucket
  __syncthreads();
  // Scatter: each warp takes 32 consecutive tiles; equal buckets within a
  // warp keep their order.
  int32_t* out = order + static_cast<int64_t>(first) * group * live_pairs;
  for (int r0 = warp * 32; r0 < tiles; r0 += kOrderThreads) {
    const int r = r0 + lane;
    const int b = r < tiles ? bucket(r) : -1;
    const uint32_t peers = __match_any_sync(0xffffffffu, b);
    const int leader = __ffs(peers) - 1;
    int slot = 0;
    if (lane == leader && b >= 0) slot = atomicAdd(&hist[b], __popc(peers));
    slot = __shfl_sync(0xffffffffu, slot, leader) + __popc(peers & ((1u << lane) - 1u));
    if (b >= 0) {
      int h, pair;
      tile_of(r, &h, &pair);
      out[slot] = h * pairs + pair;
    }
  }
}

// --- host ---------------------------------------------------------------------

// A kRank-D map (innermost first, kRank 3 or 4) with a (cols, box1, ...)
// box and the swizzle.
template <int kRank>
cudaError_t EncodeMap(CUtensorMap* map, ElemType dtype, const void* ptr, const cuuint64_t (&dims)[kRank],
                      const cuuint64_t (&strides_bytes)[kRank - 1], const cuuint32_t (&box)[kRank], int swizzle) {
  return EncodeTiledMap<kRank>(
      map, dtype == ElemType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, ptr, dims,
      strides_bytes, box, swizzle == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

int NumPairs(int seq_len) {
  const int nb = (seq_len + kBlock - 1) / kBlock;
  return (nb + 1) / 2;
}

size_t AlignUp256(size_t n) { return (n + 255) / 256 * 256; }

template <int kHeadDim, typename T>
cudaError_t Launch(const AttentionParams& p, Sm90Schedule schedule, Sm90Lists lists, cudaStream_t stream) {
  using Tile = Sm90Tile<kHeadDim>;
  Sm90Params k{};
  const cuuint64_t D = kHeadDim;
  SEER_CUDA_RETURN_IF_ERROR(EncodeMap<3>(&k.tma_q, p.dtype, p.q,
                                         {D, static_cast<cuuint64_t>(p.num_heads), static_cast<cuuint64_t>(p.seq_len)},
                                         {D * 2, D * 2 * p.num_heads}, {Tile::kCols, 1, kBlock}, Tile::kSwizzle));
  const cuuint64_t L = static_cast<cuuint64_t>(p.seq_len), Hkv = static_cast<cuuint64_t>(p.num_kv_heads);
  const cuuint64_t head_bytes = D * 2 * static_cast<cuuint64_t>(p.kv_stride);
  const cuuint64_t kv_dims[3] = {D, L, Hkv};
  const cuuint64_t kv_strides[2] = {D * 2, head_bytes};
  const bool sorted = p.block_offsets != nullptr;
  // kPairSteps runs Sm90PairsKernel where it is built (head_dim 64 and 128),
  // else Sm90RowsKernel.
  const bool pairs = sorted && lists == Sm90Lists::kPairSteps && PairsDim(kHeadDim) == kHeadDim;
  if (!sorted) {  // dense: Sm90WideKernel's 128-key tiles, one copy per column block
    const cuuint32_t kv_box[3] = {Tile::kCols, Sm90WideTile<kHeadDim>::kKeys, 1};
    SEER_CUDA_RETURN_IF_ERROR(EncodeMap<3>(&k.tma_k, p.dtype, p.k, kv_dims, kv_strides, kv_box, Tile::kSwizzle));
    SEER_CUDA_RETURN_IF_ERROR(EncodeMap<3>(&k.tma_v, p.dtype, p.v, kv_dims, kv_strides, kv_box, Tile::kSwizzle));
  } else {
    const cuuint64_t cols = Tile::kCols;
    const cuuint64_t tile_dims[4] = {cols, L, D / cols, Hkv};
    const cuuint64_t tile_strides[3] = {D * 2, cols * 2, head_bytes};
    const cuuint32_t tile_box[4] = {Tile::kCols, kBlock, Tile::kColBlocks, 1};
    SEER_CUDA_RETURN_IF_ERROR(
        EncodeMap<4>(&k.tma_k_tile, p.dtype, p.k, tile_dims, tile_strides, tile_box, Tile::kSwizzle));
    SEER_CUDA_RETURN_IF_ERROR(
        EncodeMap<4>(&k.tma_v_tile, p.dtype, p.v, tile_dims, tile_strides, tile_box, Tile::kSwizzle));
    if (pairs && Tile::kColBlocks > 1) {  // Sm90PairsKernel at head_dim 128: K one column block of a tile a copy
      const cuuint32_t cb_box[4] = {Tile::kCols, kBlock, 1, 1};
      SEER_CUDA_RETURN_IF_ERROR(EncodeMap<4>(&k.tma_k, p.dtype, p.k, tile_dims, tile_strides, cb_box, Tile::kSwizzle));
    }
  }
  k.out = p.out;
  k.block_offsets = p.block_offsets;
  k.block_indices = p.block_indices;
  k.seq_len = p.seq_len;
  k.num_heads = p.num_heads;
  k.num_kv_heads = p.num_kv_heads;
  k.nb = (p.seq_len + kBlock - 1) / kBlock;
  k.pairs = NumPairs(p.seq_len);
  k.live_pairs = k.pairs - p.first_row / (2 * kBlock);
  k.num_tiles = p.num_heads * k.live_pairs;
  k.scale_log2 = p.scale * kLog2e;
  k.q_rope = p.q_rope;
  int device = 0, sms = 0, l2_bytes = 0;
  SEER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SEER_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  SEER_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  k.kv_passes = KvPasses(p.seq_len, kHeadDim, p.num_kv_heads, p.kv_heads_per_pass, l2_bytes);

  // Sm90RowsKernel's consumers take their rows from two counters: it always
  // runs the atomic schedule.
  const bool own_rings = sorted && (lists == Sm90Lists::kOwnRings || lists == Sm90Lists::kPairSteps);
  if (own_rings) schedule = Sm90Schedule::kAtomic;
  // Scratch: [order: num_tiles int32][counters], only what this launch uses.
  const bool atomic = schedule == Sm90Schedule::kAtomic;
  const size_t order_bytes = sorted ? AlignUp256(sizeof(int32_t) * k.num_tiles) : 0;
  const size_t need = order_bytes + (atomic ? 256 : 0);
  void* scratch = nullptr;
  const bool own_scratch = need > 0 && (p.workspace == nullptr || p.workspace_bytes < need);
  if (need > 0) {
    if (own_scratch) {
      SEER_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&scratch, need, stream));
    } else {
      scratch = p.workspace;
    }
  }
  if (sorted) k.order = static_cast<const int32_t*>(scratch);
  if (atomic) k.tile_counter = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(scratch) + order_bytes);

  cudaError_t e = cudaSuccess;
  if (sorted) {
    TileOrderKernel<<<k.kv_passes, kOrderThreads, 0, stream>>>(p.block_offsets, p.num_heads, p.num_kv_heads,
                                                               k.kv_passes, k.nb, k.pairs, k.live_pairs,
                                                               static_cast<int32_t*>(scratch), k.tile_counter);
    e = cudaGetLastError();
  } else if (atomic) {
    e = cudaMemsetAsync(k.tile_counter, 0, sizeof(uint32_t), stream);
  }
  if (e == cudaSuccess) {
    auto kernel = !sorted     ? Sm90WideKernel<kHeadDim, T>
                  : pairs     ? PairsKernelFor<kHeadDim, T>()
                  : own_rings ? Sm90RowsKernel<kHeadDim, T>
                              : Sm90FwdKernel<kHeadDim, T>;
    const int smem_bytes = !sorted     ? Sm90WideTile<kHeadDim>::kSmemAlloc
                           : pairs     ? Sm90PairsTile<PairsDim(kHeadDim)>::kSmemAlloc
                           : own_rings ? Sm90RowsTile<kHeadDim>::kSmemAlloc
                                       : Tile::kSmemAlloc;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (e == cudaSuccess) {
      const int grid = k.num_tiles < sms ? k.num_tiles : sms;
      kernel<<<grid, kThreads, smem_bytes, stream>>>(k, schedule);
      e = cudaGetLastError();
    }
  }
  const cudaError_t freed = own_scratch ? cudaFreeAsync(scratch, stream) : cudaSuccess;
  SEER_CUDA_RETURN_IF_ERROR(e);
  SEER_CUDA_RETURN_IF_ERROR(freed);
  return cudaSuccess;
}

}  // namespace

bool Sm90AttentionAvailable() {
  static Sm90aAnswers answers;
  return Sm90aCodeRuns(reinterpret_cast<const void*>(Sm90FwdKernel<128, __nv_bfloat16>), answers);
}

int Sm90DecomposeMode() { return SEER_ATTENTION_DECOMPOSE; }

size_t Sm90WorkspaceBytes(int num_heads, int seq_len) {
  if (num_heads <= 0 || seq_len <= 0) return 256;
  return AlignUp256(sizeof(int32_t) * static_cast<size_t>(num_heads) * NumPairs(seq_len)) + 256;
}

cudaError_t LaunchSm90Attention(const AttentionParams& p, Sm90Schedule schedule, Sm90Lists lists, cudaStream_t stream) {
  return SEER_DISPATCH_HEAD_DIM(p.head_dim, kHeadDim, [&] {
    return SEER_DISPATCH_ELEM(p.dtype, Elem, [&] { return Launch<kHeadDim, Elem>(p, schedule, lists, stream); });
  });
}

}  // namespace seer::cuda
