// The distillation target on the GPU (kernels/gate/distill_target.h); the
// CPU twin kernels/gate/distill_target_cpu.cc computes the same row per
// (Q head, query block), in the same order of operations where it matters.
//
// One CTA per (Q head, query block). CTA 0 is the last query block of head 0:
// the longest rows start first and the short ones fill in behind them, so the
// causal triangle balances. Two passes over the row's key blocks 0..qb:
//
//   pass 1  the scores s = q . k (float32), keys after the query masked on
//           the diagonal block, keys past seq_len absent; running row max m
//           and row sum l (online softmax, float32 sums);
//   pass 2  the same key blocks: the scores again (bit-identical to pass 1),
//           and v[kb] = max over the block's real rows and visible keys of
//           exp(s * scale - m) / l, written to out; thread 0 sums the row in
//           double;
//   finish  the row divided by its total, 0 above the diagonal.
//
// Two passes instead of a [B, nb] scratch of tile maxima: the second QK^T
// costs as much as the first, and nothing depends on nb but the loop.
//
// Block 64 (the gate's), every head dim: tensor cores. S = Q K^T with
// mma.sync m16n8k16 (bf16/fp16 operands, float32 accumulators: the products
// are exact, only the summation order differs from the CPU's) through the
// sm80 helpers (kernels/arch/sm80_mma.cuh), in the layout of the FA2-class
// attention kernel (kernels/attention/attention.cu): Q and K tiles in
// XOR-swizzled shared memory, fragments by ldmatrix, the Q fragments kept in
// registers for the whole row, K tiles double-buffered with cp.async (tile
// t + 1 in flight while tile t is multiplied; the two passes are one stream of
// 2 (qb + 1) tiles). The head dim is padded up to the kernel's (32, 64, 96,
// 128 or 256) with zero columns, which add exact zeros to every dot product.
// Warp w takes the rows of row group w % kRowGroups and the 32 keys of half
// w / kRowGroups of each tile; the two halves' softmax statistics are merged
// once, after pass 1, and a block's maximum is a maximum over warps.
// The softmax runs in the log2 domain (exp2 with the scale folded into
// log2(e)), as the attention kernels do.
//
// Block 16 and 32: the float32 kernel on CUDA cores. The Q tile [B, D] is
// converted to float once and kept transposed in shared memory ([D][B]); each
// key block's K tile is loaded the same way. The B x B score tile is spread
// over a 16 x 16 thread grid, B/16 x B/16 scores per thread: thread (ty, tx)
// owns rows ty*t.. and columns tx*t.., so a row's reduction is a shuffle over
// 16 lanes of one warp. It scales each score before the softmax, as the CPU.

#include "kernels/common/device_util.cuh"
#include "kernels/gate/distill_target.h"

#include <climits>
#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/arch/sm80_mma.cuh"
#include "kernels/common/check.h"

namespace seer::cuda {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float NegInf() { return __int_as_float(0xff800000); }

// ---------------------------------------------------------------------------
// Block 64: tensor cores.

constexpr int kMmaBlock = 64;  // query rows per CTA = keys per tile
constexpr int kKeyHalf = kMmaBlock / 2;  // keys of a tile per warp

template <int kHeadDim>
struct MmaTile {
  // Shared-memory row pitch in elements: a multiple of 64 (128 bytes), so the
  // XOR swizzle stays inside a row and stepping k by 16 is an XOR on the byte
  // offset.
  static constexpr int kPitch = (kHeadDim + 63) / 64 * 64;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks of a row
  static constexpr int kKSteps = kHeadDim / 16;  // k-steps of S = Q K^T
  // m16 tiles per warp: two up to D = 128 (each K fragment feeds two MMAs),
  // one at D = 256, where the Q fragments of two would not fit in registers.
  static constexpr int kRowTiles = kHeadDim <= 128 ? 2 : 1;
  static constexpr int kRowGroups = kMmaBlock / (16 * kRowTiles);
  static constexpr int kWarps = 2 * kRowGroups;  // x 2 key halves
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileBytes = kMmaBlock * kPitch * 2;
  static constexpr int kSmemBytes = 2 * kTileBytes;  // two K buffers; Q passes through the second
  static constexpr uint32_t kRows16Bytes = 16 * kPitch * 2;
  // CTAs per SM the register budget is sized for: 4 at D <= 64 (128
  // registers), 3 at D = 96 and 128 (168), 1 at D = 256 (8 warps, 160).
  static constexpr int kMinBlocks = kHeadDim <= 64 ? 4 : kHeadDim <= 128 ? 3 : 1;
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a [64][kPitch] tile.
// The XOR puts the 8 rows that one ldmatrix phase reads into 8 different
// groups of 4 banks.
template <int kPitch>
__device__ __forceinline__ uint32_t SwizzledByte(int row, int chunk) {
  return static_cast<uint32_t>(row * kPitch * 2 + ((chunk ^ (row & 7)) << 4));
}

// Starts copying a [64, head_dim] tile (row r at src + r * stride) into the
// tile at shared address `dst`; rows from `valid_rows` on and chunks from
// `d_chunks` on are zero-filled without being read.
template <int kHeadDim, typename T>
__device__ __forceinline__ void LoadTileAsync(uint32_t dst, const T* src, int64_t stride, int valid_rows,
                                              int d_chunks) {
  using Tile = MmaTile<kHeadDim>;
  constexpr int kItems = kMmaBlock * Tile::kChunks;
  static_assert(kItems % Tile::kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < kItems / Tile::kThreads; ++i) {
    const int item = static_cast<int>(threadIdx.x) + i * Tile::kThreads;
    const int row = item / Tile::kChunks;
    const int chunk = item % Tile::kChunks;
    const bool valid = row < valid_rows && chunk < d_chunks;
    ptx::CpAsync16ZeroFill(dst + SwizzledByte<Tile::kPitch>(row, chunk), valid ? src + row * stride + chunk * 8 : src,
                           valid);
  }
}

// grid Hq * nb: CTA b is query block nb - 1 - b / Hq of head b % Hq.
// Dynamic shared memory: MmaTile<kHeadDim>::kSmemBytes.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(MmaTile<kHeadDim>::kThreads, MmaTile<kHeadDim>::kMinBlocks)
    DistillTargetMmaKernel(DistillTargetParams p, int nb, int64_t q_stride, int64_t k_stride, float scale_log2) {
  using Tile = MmaTile<kHeadDim>;
  constexpr int kRowTiles = Tile::kRowTiles;
  constexpr int kWarps = Tile::kWarps;
  extern __shared__ __align__(1024) unsigned char smem_tiles[];
  __shared__ float2 half_stats[2][kMmaBlock];  // (m, l) of each row over each key half
  __shared__ float warp_best[2][kWarps];  // by tile parity
  __shared__ double row_total;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int half = warp / Tile::kRowGroups;  // which 32 keys of each tile
  const int warp_row = (warp % Tile::kRowGroups) * 16 * kRowTiles;
  const int qb = nb - 1 - static_cast<int>(blockIdx.x / p.num_heads);
  const int h = static_cast<int>(blockIdx.x % p.num_heads);
  const int kv_head = h / (p.num_heads / p.num_kv_heads);
  const int q0 = qb * kMmaBlock;
  const int q_rows = min(kMmaBlock, p.seq_len - q0);
  const int d_chunks = p.head_dim / 8;
  const T* q = static_cast<const T*>(p.q) + q0 * q_stride + h * p.head_dim;
  const T* k = static_cast<const T*>(p.k) + kv_head * p.head_dim;
  float* out = p.out + (static_cast<int64_t>(h) * nb + qb) * nb;
  const uint32_t tiles = ptx::SmemAddr(smem_tiles);

  // The thread's rows of the score tile (C layout of m16n8: lane / 4 and
  // lane / 4 + 8 of each m16 tile) and its key columns (two per n8 tile).
  auto row_of = [&](int mi, int hf) { return warp_row + mi * 16 + lane / 4 + hf * 8; };
  auto col_of = [&](int nt, int e) { return half * kKeyHalf + nt * 8 + (lane % 4) * 2 + e % 2; };

  // Q into the second buffer, key block 0 into the first; the Q fragments
  // then move to registers and the second buffer is free for K.
  LoadTileAsync<kHeadDim>(tiles + Tile::kTileBytes, q, q_stride, q_rows, d_chunks);
  LoadTileAsync<kHeadDim>(tiles, k, k_stride, p.seq_len, d_chunks);
  ptx::CpAsyncCommit();
  ptx::CpAsyncWait<0>();
  __syncthreads();
  // ldmatrix lane addresses (fragment layouts of mma.m16n8k16), as byte
  // offsets inside a tile: k-step ks reads chunk pair ks, an XOR of ks << 5.
  const uint32_t q_lane = SwizzledByte<Tile::kPitch>(warp_row + lane % 16, lane / 16);
  const uint32_t k_lane = SwizzledByte<Tile::kPitch>(half * kKeyHalf + lane % 8 + (lane / 16) * 8, (lane / 8) % 2);
  uint32_t q_frag[kRowTiles][Tile::kKSteps][4];
#pragma unroll
  for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
    for (int ks = 0; ks < Tile::kKSteps; ++ks) {
      ptx::LdMatrixX4(q_frag[mi][ks], tiles + Tile::kTileBytes + ((q_lane ^ (ks << 5)) + mi * Tile::kRows16Bytes));
    }
  }
  __syncthreads();

  // Tile t of the stream is key block t of pass 1 (t <= qb) or t - qb - 1 of
  // pass 2. scores(t, s) starts loading tile t + 1 into the other buffer,
  // then forms the warp's [16 kRowTiles, 32] part of tile t's S (unscaled),
  // -inf where the key is after the query; end_tile() lands tile t + 1.
  const int n_tiles = qb + 1;
  auto scores = [&](int t, float(&s)[kRowTiles][4][4]) {
    if (t + 1 < 2 * n_tiles) {
      const int next_kb = t + 1 < n_tiles ? t + 1 : t + 1 - n_tiles;
      LoadTileAsync<kHeadDim>(tiles + ((t + 1) % 2) * Tile::kTileBytes,
                              k + static_cast<int64_t>(next_kb) * kMmaBlock * k_stride, k_stride,
                              p.seq_len - next_kb * kMmaBlock, d_chunks);
    }
    ptx::CpAsyncCommit();
#pragma unroll
    for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][nt][e] = 0.f;
      }
    }
    const uint32_t k_tile = tiles + (t % 2) * Tile::kTileBytes;
#pragma unroll
    for (int ks = 0; ks < Tile::kKSteps; ++ks) {
#pragma unroll
      for (int np = 0; np < 2; ++np) {  // keys np * 16 .. + 15 of the half: two n8 tiles
        uint32_t b[4];
        ptx::LdMatrixX4(b, k_tile + ((k_lane ^ (ks << 5)) + np * Tile::kRows16Bytes));
#pragma unroll
        for (int mi = 0; mi < kRowTiles; ++mi) {
          ptx::Mma16816<T>(s[mi][2 * np], q_frag[mi][ks], b[0], b[1]);
          ptx::Mma16816<T>(s[mi][2 * np + 1], q_frag[mi][ks], b[2], b[3]);
        }
      }
    }
    if (t == qb || t == 2 * n_tiles - 1) {  // the diagonal block: keys up to the query's own
#pragma unroll
      for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (col_of(nt, e) > row_of(mi, e / 2)) s[mi][nt][e] = NegInf();
          }
        }
      }
    }
  };
  auto end_tile = [] {
    ptx::CpAsyncWait<0>();
    __syncthreads();
  };

  // Pass 1: the softmax statistics of each row over the warp's key half, in
  // the log2 domain: m the running max of s * scale_log2, l the sum of
  // exp2(s * scale_log2 - m) (per thread; the quad sums at the end).
  float m[kRowTiles][2], l[kRowTiles][2];
#pragma unroll
  for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      m[mi][hf] = NegInf();
      l[mi][hf] = 0.f;
    }
  }
  for (int t = 0; t < n_tiles; ++t) {
    float s[kRowTiles][4][4];
    scores(t, s);
#pragma unroll
    for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = NegInf();
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * hf], s[mi][nt][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mi][hf], mx * scale_log2);
        const float m_use = m_new == NegInf() ? 0.f : m_new;  // nothing visible yet
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          sum += ptx::Exp2(fmaf(s[mi][nt][2 * hf], scale_log2, -m_use));
          sum += ptx::Exp2(fmaf(s[mi][nt][2 * hf + 1], scale_log2, -m_use));
        }
        l[mi][hf] = l[mi][hf] * ptx::Exp2(m[mi][hf] - m_use) + sum;  // exp2(-inf) = 0 on the first visible tile
        m[mi][hf] = m_new;
      }
    }
    end_tile();
  }

  // The two key halves' statistics merged, in the same order by both warps
  // of a row: m_use the row max (log2 domain), inv_l 1 / the row sum.
  float m_use[kRowTiles][2], inv_l[kRowTiles][2];
#pragma unroll
  for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = l[mi][hf];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      if (lane % 4 == 0) half_stats[half][row_of(mi, hf)] = make_float2(m[mi][hf], sum);
    }
  }
  __syncthreads();
#pragma unroll
  for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 a = half_stats[0][row_of(mi, hf)];
      const float2 b = half_stats[1][row_of(mi, hf)];
      const float mx = fmaxf(a.x, b.x);
      m_use[mi][hf] = mx == NegInf() ? 0.f : mx;  // only a row past seq_len sees nothing
      const float sum = a.y * ptx::Exp2(a.x - m_use[mi][hf]) + b.y * ptx::Exp2(b.x - m_use[mi][hf]);
      inv_l[mi][hf] = 1.f / sum;  // >= 1 on a real row (its max contributes exp2(0)); unused past seq_len
    }
  }

  // Pass 2: each tile's block maximum of the probabilities. Thread 0 finishes
  // tile kb - 1 (the warps' maxima, by parity) while the others start tile kb.
  double total = 0.0;  // thread 0's
  auto finish_tile = [&](int kb, int parity) {
    float best = warp_best[parity][0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) best = fmaxf(best, warp_best[parity][w]);
    out[kb] = best;
    total += best;
  };
  for (int kb = 0; kb < n_tiles; ++kb) {
    const int t = n_tiles + kb;
    if (tid == 0 && kb > 0) finish_tile(kb - 1, (t - 1) % 2);
    float s[kRowTiles][4][4];
    scores(t, s);
    float best = 0.f;
#pragma unroll
    for (int mi = 0; mi < kRowTiles; ++mi) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = NegInf();
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * hf], s[mi][nt][2 * hf + 1]));
        // exp2 is monotone: the lane's maximum probability of the row, 0 when
        // it sees none of the tile's keys. Rows past seq_len take no part.
        const float prob = ptx::Exp2(fmaf(mx, scale_log2, -m_use[mi][hf])) * inv_l[mi][hf];
        if (row_of(mi, hf) < q_rows) best = fmaxf(best, prob);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, off));
    if (lane == 0) warp_best[t % 2][warp] = best;
    end_tile();
  }
  if (tid == 0) {
    finish_tile(qb, (2 * n_tiles - 1) % 2);
    row_total = total;  // > 0: the tile holding a row's max gives about 1 / l >= 1 / seq_len
  }
  __syncthreads();  // also makes thread 0's writes to out visible to the block

  for (int kb = tid; kb < nb; kb += Tile::kThreads) {
    out[kb] = kb <= qb ? static_cast<float>(static_cast<double>(out[kb]) / row_total) : 0.f;
  }
}

template <typename T, int kHeadDim>
cudaError_t LaunchMma(const DistillTargetParams& p, int nb, int64_t q_stride, int64_t k_stride, cudaStream_t stream) {
  using Tile = MmaTile<kHeadDim>;
  auto kernel = DistillTargetMmaKernel<T, kHeadDim>;
  if constexpr (Tile::kSmemBytes > 48 * 1024) {
    SEER_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes));
  }
  kernel<<<static_cast<unsigned>(p.num_heads * nb), Tile::kThreads, Tile::kSmemBytes, stream>>>(
      p, nb, q_stride, k_stride, p.scale * kLog2e);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

// The smallest kernel head dim that holds head_dim (a multiple of 8 up to 256).
template <typename T>
cudaError_t LaunchMmaHeadDim(const DistillTargetParams& p, int nb, int64_t q_stride, int64_t k_stride,
                             cudaStream_t stream) {
  if (p.head_dim <= 32) return LaunchMma<T, 32>(p, nb, q_stride, k_stride, stream);
  if (p.head_dim <= 64) return LaunchMma<T, 64>(p, nb, q_stride, k_stride, stream);
  if (p.head_dim <= 96) return LaunchMma<T, 96>(p, nb, q_stride, k_stride, stream);
  if (p.head_dim <= 128) return LaunchMma<T, 128>(p, nb, q_stride, k_stride, stream);
  return LaunchMma<T, 256>(p, nb, q_stride, k_stride, stream);
}

// ---------------------------------------------------------------------------
// Block 16 and 32: float32 on CUDA cores.

constexpr int kFp32Threads = 256;  // a 16 x 16 grid over the score tile
constexpr int kFp32Warps = kFp32Threads / 32;

// Rows [0, valid) of a [kBlock, D] tile (rows `stride` elements apart) into
// dst[D][kBlock] as float; the rows from `valid` on become 0. Consecutive
// threads take consecutive rows, so the transposed stores hit distinct banks.
template <typename T, int kBlock>
__device__ __forceinline__ void LoadTileFp32(const T* src, int64_t stride, int valid, int head_dim, float* dst) {
  const int work = kBlock * (head_dim / 8);
  for (int i = threadIdx.x; i < work; i += kFp32Threads) {
    const int r = i % kBlock;
    const int c = (i / kBlock) * 8;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (r < valid) Load8(src + r * stride + c, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[(c + e) * kBlock + r] = v[e];
  }
}

template <int kN>
__device__ __forceinline__ void LoadVec(const float* src, float (&v)[kN]) {
  if constexpr (kN == 4) {
    const float4 x = *reinterpret_cast<const float4*>(src);
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
  } else if constexpr (kN == 2) {
    const float2 x = *reinterpret_cast<const float2*>(src);
    v[0] = x.x;
    v[1] = x.y;
  } else {
    v[0] = src[0];
  }
}

// The thread's kT x kT scores of the tile: rows ty * kT + i, columns
// tx * kT + j, s = (q . k) * scale.
template <int kBlock, int kT = kBlock / 16>
__device__ __forceinline__ void ScoreTile(const float* qs, const float* ks, int head_dim, float scale, int ty, int tx,
                                          float (&s)[kT][kT]) {
  float acc[kT][kT];
#pragma unroll
  for (int i = 0; i < kT; ++i) {
#pragma unroll
    for (int j = 0; j < kT; ++j) acc[i][j] = 0.f;
  }
  const float* qp = qs + ty * kT;
  const float* kp = ks + tx * kT;
  for (int d0 = 0; d0 < head_dim; d0 += 8) {
#pragma unroll
    for (int d = d0; d < d0 + 8; ++d) {
      float a[kT], b[kT];
      LoadVec<kT>(qp + d * kBlock, a);
      LoadVec<kT>(kp + d * kBlock, b);
#pragma unroll
      for (int i = 0; i < kT; ++i) {
#pragma unroll
        for (int j = 0; j < kT; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kT; ++i) {
#pragma unroll
    for (int j = 0; j < kT; ++j) s[i][j] = acc[i][j] * scale;
  }
}

// Over the 16 lanes that share a row (xor offsets below 16 stay in the half
// warp). Every lane ends with the same bits: each step combines the same two
// operands, only their order differs, and + and max commute.
__device__ __forceinline__ float RowMax16(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float RowSum16(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// grid Hq * nb: CTA b is query block nb - 1 - b / Hq of head b % Hq.
// Dynamic shared memory: 2 * head_dim * kBlock floats (Q and K tiles).
template <typename T, int kBlock>
__global__ void __launch_bounds__(kFp32Threads)
    DistillTargetFp32Kernel(DistillTargetParams p, int nb, int64_t q_stride, int64_t k_stride) {
  constexpr int kT = kBlock / 16;
  extern __shared__ __align__(16) float smem[];
  __shared__ float warp_best[kFp32Warps];
  __shared__ double row_total;

  const int D = p.head_dim;
  float* qs = smem;
  float* ks = smem + D * kBlock;
  const int qb = nb - 1 - static_cast<int>(blockIdx.x / p.num_heads);
  const int h = static_cast<int>(blockIdx.x % p.num_heads);
  const int kv_head = h / (p.num_heads / p.num_kv_heads);
  const int q0 = qb * kBlock;
  const int q_rows = min(kBlock, p.seq_len - q0);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const T* q = static_cast<const T*>(p.q) + q0 * q_stride + h * D;
  const T* k = static_cast<const T*>(p.k) + kv_head * D;
  float* out = p.out + (static_cast<int64_t>(h) * nb + qb) * nb;

  LoadTileFp32<T, kBlock>(q, q_stride, q_rows, D, qs);

  // Keys of the tile that row ty * kT + i sees: a row past seq_len sees none,
  // the diagonal tile the keys up to the row's own, an earlier tile all.
  int row_vis_diag[kT];
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    const int r = ty * kT + i;
    row_vis_diag[i] = r < q_rows ? r + 1 : 0;
  }
  auto visible = [&](int kb, int i) { return kb < qb ? (row_vis_diag[i] > 0 ? kBlock : 0) : row_vis_diag[i]; };

  // Pass 1: the softmax statistics of each row.
  float m[kT], l[kT];
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    m[i] = NegInf();
    l[i] = 0.f;
  }
  for (int kb = 0; kb <= qb; ++kb) {
    const int k0 = kb * kBlock;
    __syncthreads();  // nobody reads the previous K tile any more
    LoadTileFp32<T, kBlock>(k + k0 * k_stride, k_stride, min(kBlock, p.seq_len - k0), D, ks);
    __syncthreads();
    float s[kT][kT];
    ScoreTile<kBlock>(qs, ks, D, p.scale, ty, tx, s);
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      const int vis = visible(kb, i);
      float tmax = NegInf();
#pragma unroll
      for (int j = 0; j < kT; ++j) {
        if (tx * kT + j < vis) tmax = fmaxf(tmax, s[i][j]);
      }
      tmax = RowMax16(tmax);
      const float new_m = fmaxf(m[i], tmax);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kT; ++j) {
        if (tx * kT + j < vis) sum += expf(s[i][j] - new_m);
      }
      sum = RowSum16(sum);
      if (vis > 0) {
        l[i] = l[i] * expf(m[i] - new_m) + sum;  // expf(-inf) = 0 on the first visible tile
        m[i] = new_m;
      }
    }
  }

  // Pass 2: each tile's block maximum of the probabilities. Thread 0 writes
  // tile kb - 1's between the two barriers of tile kb, while nobody can be
  // writing warp_best yet.
  double total = 0.0;  // thread 0's
  auto finish_tile = [&](int kb) {
    float best = warp_best[0];
#pragma unroll
    for (int w = 1; w < kFp32Warps; ++w) best = fmaxf(best, warp_best[w]);
    out[kb] = best;
    total += best;
  };
  for (int kb = 0; kb <= qb; ++kb) {
    const int k0 = kb * kBlock;
    __syncthreads();
    if (threadIdx.x == 0 && kb > 0) finish_tile(kb - 1);
    LoadTileFp32<T, kBlock>(k + k0 * k_stride, k_stride, min(kBlock, p.seq_len - k0), D, ks);
    __syncthreads();
    float s[kT][kT];
    ScoreTile<kBlock>(qs, ks, D, p.scale, ty, tx, s);
    float best = 0.f;
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      const int vis = visible(kb, i);
      float tmax = NegInf();
#pragma unroll
      for (int j = 0; j < kT; ++j) {
        if (tx * kT + j < vis) tmax = fmaxf(tmax, s[i][j]);
      }
      tmax = RowMax16(tmax);
      if (vis > 0) best = fmaxf(best, expf(tmax - m[i]) / l[i]);
    }
    best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 16));  // the warp's other row group
    if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    finish_tile(qb);
    row_total = total;  // > 0: the tile holding a row's max gives 1 / l >= 1 / seq_len
  }
  __syncthreads();  // also makes thread 0's writes to out visible to the block

  for (int kb = threadIdx.x; kb < nb; kb += kFp32Threads) {
    out[kb] = kb <= qb ? static_cast<float>(static_cast<double>(out[kb]) / row_total) : 0.f;
  }
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T, int kBlock>
cudaError_t LaunchFp32(const DistillTargetParams& p, int nb, int64_t q_stride, int64_t k_stride, cudaStream_t stream) {
  const int smem = static_cast<int>(sizeof(float) * 2 * p.head_dim * kBlock);
  auto kernel = DistillTargetFp32Kernel<T, kBlock>;
  SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<static_cast<unsigned>(p.num_heads * nb), kFp32Threads, smem, stream>>>(p, nb, q_stride, k_stride);
  SEER_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return cudaSuccess;
}

template <typename T>
cudaError_t LaunchBlock(const DistillTargetParams& p, int nb, int64_t q_stride, int64_t k_stride, cudaStream_t stream) {
  switch (p.block_size) {
    case 16: return LaunchFp32<T, 16>(p, nb, q_stride, k_stride, stream);
    case 32: return LaunchFp32<T, 32>(p, nb, q_stride, k_stride, stream);
    case 64: return LaunchMmaHeadDim<T>(p, nb, q_stride, k_stride, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t LaunchDistillTarget(const DistillTargetParams& p, cudaStream_t stream) {
  if (p.q == nullptr || p.k == nullptr || p.out == nullptr) return cudaErrorInvalidValue;
  if (p.seq_len < 1 || p.num_heads < 1 || p.num_kv_heads < 1 || p.num_heads % p.num_kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.head_dim < 8 || p.head_dim > kMaxHeadDim || p.head_dim % 8 != 0) return cudaErrorInvalidValue;
  if (p.block_size != 16 && p.block_size != 32 && p.block_size != 64) return cudaErrorInvalidValue;
  if (!std::isfinite(p.scale) || !(p.scale > 0.f)) return cudaErrorInvalidValue;
  const int64_t q_width = static_cast<int64_t>(p.num_heads) * p.head_dim;
  const int64_t k_width = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  const int64_t q_stride = p.q_row_stride != 0 ? p.q_row_stride : q_width;
  const int64_t k_stride = p.k_row_stride != 0 ? p.k_row_stride : k_width;
  if (q_stride < q_width || k_stride < k_width || q_stride % 8 != 0 || k_stride % 8 != 0 || !Aligned16(p.q) ||
      !Aligned16(p.k)) {
    return cudaErrorInvalidValue;
  }
  const int nb = (p.seq_len - 1) / p.block_size + 1;
  if (static_cast<int64_t>(p.num_heads) * nb > INT_MAX) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case ElemType::kBF16: return LaunchBlock<__nv_bfloat16>(p, nb, q_stride, k_stride, stream);
    case ElemType::kF16: return LaunchBlock<__half>(p, nb, q_stride, k_stride, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace seer::cuda
