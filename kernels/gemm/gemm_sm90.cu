#include "kernels/gemm/gemm_sm90.h"

#include <atomic>

#include <cuda.h>

#include "kernels/arch/sm90_available.h"
#include "kernels/arch/sm90_ptx.cuh"
#include "kernels/arch/sm90_wgmma.cuh"
#include "kernels/arch/tensor_map.h"
#include "kernels/common/check.h"

// The sm_80 pass of a multi-target build compiles the kernel without its
// body (it needs sm_90a), which leaves these constants unreferenced there.
#if defined(__CUDA_ARCH__) && !defined(SEER_SM90A_ENABLED)
#pragma nv_diag_suppress 177
#endif

namespace seer::cuda {
namespace {

constexpr int kBM = 128;  // C rows a tile: 64 a consumer warpgroup, one pool block each
constexpr int kBN = 256;  // C columns a tile: wgmma's widest N
constexpr int kBK = 64;  // k a stage: 128 bytes of bf16, the swizzle's row
constexpr int kStages = 3;  // three, so that a whole 64 x 256 piece of C can wait in staging for its pool
constexpr int kGroupM = 8;  // M tiles a raster group walks before the next N tile
constexpr int kThreads = 384;  // a producer warpgroup and two consumer warpgroups
constexpr int kProducerRegs = 56;  // the pool warps live on it too
constexpr int kConsumerRegs = 224;
// The launch gives each thread 168 registers (65,536 / 384, in steps of 8).
// setmaxnreg.inc waits until the CTA has the registers free, so the
// producer warpgroup must give back at least what the consumers take: with
// 64 for the producer (13,312 freed, 14,336 asked) the kernel hung.
constexpr int kLaunchRegs = 65536 / kThreads / 8 * 8;
static_assert((kLaunchRegs - kProducerRegs) * 128 >= (kConsumerRegs - kLaunchRegs) * 256,
              "the consumers' setmaxnreg.inc would wait forever");
constexpr int kPoolBlock = 64;

constexpr int kABytes = kBM * kBK * 2;
constexpr int kBBytes = kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;
// Per consumer, a staging buffer for its 64 x 256 piece of C: four TMA
// store boxes of 64 x 64.
constexpr int kBoxBytes = 64 * 64 * 2;
constexpr int kStagingBytes = 4 * kBoxBytes;
constexpr int kStagingOffset = kStages * kStageBytes;
constexpr int kBarOffset = kStagingOffset + 2 * kStagingBytes;
// mbarriers: kStages full, kStages empty, then pool_full and pool_empty per consumer.
constexpr int kPoolFull = 2 * kStages;
constexpr int kPoolEmpty = kPoolFull + 2;
constexpr int kSmemBytes = kBarOffset + (kPoolEmpty + 2) * 8 + 1024;  // + the 1024-byte alignment
static_assert(kSmemBytes <= 227 * 1024, "shared memory");

struct GemmArgs {
  CUtensorMap tma_a;  // A as [1, m, k], 64 x 128 boxes
  CUtensorMap tma_b;  // B as [1, n, k], 64 x 256 boxes
  CUtensorMap tma_c;  // C as [1, m, n], 64 x 64 boxes (stores)
  __nv_bfloat16* c;
  float* pool;
  int m, n, k;
  int tiles_m, tiles_n;
  int head_dim;  // kMaxMinMean's head width
  int group_m;  // M tiles a raster group walks (kGroupM but for the bench)
};

// Tile t of the grouped raster: kGroupM M tiles side by side, then the
// next N tile, so that the CTAs in flight share B's rows in L2.
__device__ __forceinline__ void TileOf(const GemmArgs& p, int t, int* tm, int* tn) {
  const int group = p.group_m * p.tiles_n;
  const int first_m = (t / group) * p.group_m;
  const int rows = min(p.tiles_m - first_m, p.group_m);
  const int r = t % group;
  *tm = first_m + r % rows;
  *tn = r / rows;
}

#if defined(SEER_SM90A_ENABLED)

__device__ __forceinline__ void Producer(const GemmArgs& p, uint32_t smem, uint32_t bars) {
  const int k_steps = (p.k + kBK - 1) / kBK;
  const int tiles = p.tiles_m * p.tiles_n;
  int stage = 0;
  uint32_t phase = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    TileOf(p, t, &tm, &tn);
    for (int ks = 0; ks < k_steps; ++ks) {
      sm90::MbarWait(bars + 8 * (kStages + stage), phase ^ 1);  // the consumers freed it
      const uint32_t full = bars + 8 * stage;
      sm90::MbarArriveExpectTx(full, kStageBytes);
      const uint32_t dst = smem + stage * kStageBytes;
      sm90::TmaLoad3d(dst, &p.tma_a, full, ks * kBK, tm * kBM, 0);
      sm90::TmaLoad3d(dst + kABytes, &p.tma_b, full, ks * kBK, tn * kBN, 0);
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }
}

// NaN wins, as in the CPU twin's and torch's pooling.
__device__ __forceinline__ float MaxNan(float a, float b) { return (b > a || isnan(b)) && !isnan(a) ? b : a; }
__device__ __forceinline__ float MinNan(float a, float b) { return (b < a || isnan(b)) && !isnan(a) ? b : a; }

__device__ __forceinline__ void ConsumerBarrier(int c) { asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory"); }

// Byte offset of (row, col) in a consumer's staging buffer: four 64 x 64
// boxes (col / 64), rows of 128 bytes in the 128-byte swizzle the C map
// stores with.
__device__ __forceinline__ uint32_t StagingOffset(int row, int col) {
  const int cc = col % 64;
  return (col / 64) * kBoxBytes + row * 128 + (((cc / 8) ^ (row % 8)) * 16) + (cc % 8) * 2;
}

// The pools run on warps 2 and 3 of the producer warpgroup, which issue no
// products: a consumer stores its piece of C in its staging buffer and
// arrives on pool_full; the pool warps read it back and arrive on
// pool_empty, which the consumer waits for before it writes the buffer
// again. (Pooling on the consumers themselves, a few rows between their
// products, took 9-14% of the tensor pipe's active cycles at 8k.)
constexpr int kPoolThreads = 64;

// Adds row r of the column pair at col_bytes (chunk: its 16-byte chunk
// before the row's swizzle) to the sums, maxima and minima.
template <int kPool>
__device__ __forceinline__ void PoolRow(const uint8_t* staging, uint32_t col_bytes, int chunk, int r, double (&sum)[2],
                                        float (&mx)[2], float (&mn)[2]) {
  const uint32_t pair = *reinterpret_cast<const uint32_t*>(staging + col_bytes + r * 128 + ((chunk ^ (r & 7)) << 4));
  const float v[2] = {__uint_as_float(pair << 16), __uint_as_float(pair & 0xffff0000u)};  // bf16 -> float
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    sum[i] += static_cast<double>(v[i]);
    if constexpr (kPool == static_cast<int>(GemmPool::Kind::kMaxMinMean)) {
      mx[i] = MaxNan(mx[i], v[i]);
      mn[i] = MinNan(mn[i], v[i]);
    }
  }
}

// Pools one consumer's piece (rows row0.., columns col0..col0 + 255):
// thread t takes the column pairs t and t + 64, adding rows in token order.
template <int kPool>
__device__ __forceinline__ void PoolPiece(const GemmArgs& p, const uint8_t* staging, int row0, int col0) {
  const int t = threadIdx.x % kPoolThreads;
  const int rows = min(kPoolBlock, p.m - row0);
  const int b = row0 / kPoolBlock;
#pragma unroll 1
  for (int q = 0; q < 2; ++q) {
    const int c2 = 2 * (t + kPoolThreads * q);  // the pair's first column in the piece
    if (col0 + c2 >= p.n) continue;
    const uint32_t col_bytes = (c2 / 64) * kBoxBytes + (c2 % 8) * 2;
    const int chunk = (c2 % 64) / 8;
    double sum[2] = {0.0, 0.0};
    float mx[2] = {-INFINITY, -INFINITY}, mn[2] = {INFINITY, INFINITY};
    if (rows == kPoolBlock) {
#pragma unroll 16
      for (int r = 0; r < kPoolBlock; ++r) PoolRow<kPool>(staging, col_bytes, chunk, r, sum, mx, mn);
    } else {
      for (int r = 0; r < rows; ++r) PoolRow<kPool>(staging, col_bytes, chunk, r, sum, mx, mn);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int col = col0 + c2 + i;
      const float mean = static_cast<float>(sum[i] / rows);
      if constexpr (kPool == static_cast<int>(GemmPool::Kind::kMean)) {
        p.pool[static_cast<size_t>(b) * p.n + col] = mean;
      } else {
        const int head = col / p.head_dim, ch = col % p.head_dim;
        float* out = p.pool + (static_cast<size_t>(b) * (p.n / p.head_dim) + head) * 3 * p.head_dim + ch;
        out[0] = mx[i];
        out[p.head_dim] = mn[i];
        out[2 * p.head_dim] = mean;
      }
    }
  }
}

// The pool warps: the consumers' pieces in the consumers' order.
template <int kPool>
__device__ __forceinline__ void PoolWarps(const GemmArgs& p, const uint8_t* smem_ptr, uint32_t bars) {
  const int tiles = p.tiles_m * p.tiles_n;
  uint32_t round[2] = {0, 0};
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    TileOf(p, t, &tm, &tn);
#pragma unroll 1
    for (int c = 0; c < 2; ++c) {
      const int row0 = tm * kBM + 64 * c;
      if (row0 >= p.m) continue;  // no piece: the consumer stores nothing
      sm90::MbarWait(bars + 8 * (kPoolFull + c), round[c] & 1);
      PoolPiece<kPool>(p, smem_ptr + kStagingOffset + c * kStagingBytes, row0, tn * kBN);
      sm90::MbarArrive(bars + 8 * (kPoolEmpty + c));
      ++round[c];
    }
  }
}

// The consumer's 64 x 256 piece of a tile: acc[4j + 2h + e] is row 16 w +
// lane / 4 + 8 h, column 8 j + 2 (lane % 4) + e (the wgmma D layout). The
// warps write it into the staging buffer once the copy engine and the pool
// warps are done with the last piece; one thread stores it with TMA (rows
// and columns past C's end are not written) and hands it to the pool warps.
template <int kPool>
__device__ __forceinline__ void Epilogue(const GemmArgs& p, float (&acc)[128], int tm, int tn, int c, uint32_t staging,
                                         uint32_t bars, uint32_t& pool_round) {
  const int t = threadIdx.x % 128, lane = t % 32, warp = t / 32;
  const int row0 = tm * kBM + 64 * c;
  const int col0 = tn * kBN;
  if (row0 >= p.m) return;  // a tile's second piece past m
  if (t == 0) sm90::BulkWaitRead<0>();  // the last tile's stores have read the buffer
  if constexpr (kPool != static_cast<int>(GemmPool::Kind::kNone)) {
    sm90::MbarWait(bars + 8 * (kPoolEmpty + c), (pool_round & 1) ^ 1);  // and the pool warps
  }
  ConsumerBarrier(c);
#pragma unroll
  for (int j = 0; j < 32; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      const uint32_t at = staging + StagingOffset(16 * warp + lane / 4 + 8 * h, 8 * j + 2 * (lane % 4));
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at), "r"(*reinterpret_cast<const uint32_t*>(&v)) : "memory");
    }
  }
  sm90::FenceProxyAsync();  // the writes, before the copy engine reads them
  ConsumerBarrier(c);
  if (t == 0) {
#pragma unroll
    for (int box = 0; box < 4; ++box) {
      if (col0 + 64 * box < p.n) sm90::TmaStore3d(&p.tma_c, staging + box * kBoxBytes, col0 + 64 * box, row0, 0);
    }
    sm90::BulkCommit();
  }
  if constexpr (kPool != static_cast<int>(GemmPool::Kind::kNone)) sm90::MbarArrive(bars + 8 * (kPoolFull + c));
  ++pool_round;
}

template <int kPool>
__device__ __forceinline__ void Consumer(const GemmArgs& p, uint32_t smem, uint32_t bars, int c) {
  const int k_steps = (p.k + kBK - 1) / kBK;
  const int tiles = p.tiles_m * p.tiles_n;
  const int lane = threadIdx.x % 32;
  // Descriptor words of stage 0 (K-major, 128-byte swizzle, 8-row groups
  // 1024 bytes apart); a stage and a k16 step add to the low word.
  const uint64_t a0 = sm90::MatrixDesc(smem + c * (kABytes / 2), 16, 1024, 128);
  const uint64_t b0 = sm90::MatrixDesc(smem + kABytes, 16, 1024, 128);
  const uint32_t hi = static_cast<uint32_t>(a0 >> 32);
  const uint32_t a_lo = static_cast<uint32_t>(a0), b_lo = static_cast<uint32_t>(b0);
  const uint32_t staging = smem + kStagingOffset + c * kStagingBytes;
  int stage = 0;
  uint32_t phase = 0, pool_round = 0;
  float acc[128];
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    TileOf(p, t, &tm, &tn);
    int prev = -1;
    for (int ks = 0; ks < k_steps; ++ks) {
      sm90::MbarWait(bars + 8 * stage, phase);
      sm90::WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        const uint32_t off = (stage * kStageBytes + kk * 32) / 16;
        sm90::WgmmaSSBf16<256>::Run(acc, sm90::DescWords(a_lo + off, hi), sm90::DescWords(b_lo + off, hi),
                                    ks > 0 || kk > 0 ? 1 : 0);
      }
      sm90::WgmmaCommit();
      sm90::WgmmaWait<1>();  // the step before is done: free its stage
      if (prev >= 0 && lane == 0) sm90::MbarArrive(bars + 8 * (kStages + prev));
      prev = stage;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    sm90::WgmmaWait<0>();
    sm90::FenceRegs(acc);
    if (prev >= 0 && lane == 0) sm90::MbarArrive(bars + 8 * (kStages + prev));
    Epilogue<kPool>(p, acc, tm, tn, c, staging, bars, pool_round);
  }
  if (threadIdx.x % 128 == 0) sm90::BulkWait<0>();  // the last stores are done before the CTA ends
}

#endif  // SEER_SM90A_ENABLED

template <int kPool>
__global__ void __launch_bounds__(kThreads, 1) GemmSm90Kernel(const __grid_constant__ GemmArgs p) {
#if defined(SEER_SM90A_ENABLED)
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem_ptr = smem_raw + ((1024 - (sm90::SmemAddr(smem_raw) & 1023)) & 1023);
  const uint32_t smem = sm90::SmemAddr(smem_ptr);
  const uint32_t bars = smem + kBarOffset;
  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::MbarInit(bars + 8 * s, 1);  // the producer's arrive + the bytes
      sm90::MbarInit(bars + 8 * (kStages + s), 2 * 4);  // one lane per consumer warp
    }
    for (int c = 0; c < 2; ++c) {
      sm90::MbarInit(bars + 8 * (kPoolFull + c), 128);  // every consumer thread, after its writes
      sm90::MbarInit(bars + 8 * (kPoolEmpty + c), kPoolThreads);  // every pool thread, after its reads
    }
    sm90::FenceBarrierInit();
    sm90::PrefetchTensorMap(&p.tma_a);
    sm90::PrefetchTensorMap(&p.tma_b);
    sm90::PrefetchTensorMap(&p.tma_c);
  }
  __syncthreads();
  if (warpgroup == 0) {
    sm90::SetMaxRegsDec<kProducerRegs>();
    if (threadIdx.x == 0) {
      Producer(p, smem, bars);
    } else if (kPool != static_cast<int>(GemmPool::Kind::kNone) && threadIdx.x >= 128 - kPoolThreads) {
      PoolWarps<kPool>(p, smem_ptr, bars);
    }
  } else {
    sm90::SetMaxRegsInc<kConsumerRegs>();
    Consumer<kPool>(p, smem, bars, warpgroup - 1);
  }
#else
  __trap();  // launched only where GemmSm90Available()
#endif
}

Sm90aAnswers gemm_answers;

std::atomic<int> group_m_for_bench{kGroupM};

// A row-major [rows, cols] bf16 matrix as a [1, rows, cols] map with
// box_cols x box_rows boxes in the 128-byte swizzle.
cudaError_t EncodeRows(CUtensorMap* map, const __nv_bfloat16* ptr, int rows, int cols, int box_rows, int box_cols) {
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows), 1};
  const cuuint64_t strides[2] = {static_cast<cuuint64_t>(cols) * 2, static_cast<cuuint64_t>(rows) * cols * 2};
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows), 1};
  return EncodeTiledMap<3>(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, ptr, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

}  // namespace

void SetGemmSm90GroupMForBench(int group_m) { group_m_for_bench.store(group_m > 0 ? group_m : kGroupM); }

bool GemmSm90Available() { return Sm90aCodeRuns(reinterpret_cast<const void*>(GemmSm90Kernel<0>), gemm_answers); }

cudaError_t GemmBf16Sm90(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* c, int m, int n, int k,
                         const GemmPool& pool, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0 || n % 8 != 0 || k % 8 != 0) return cudaErrorInvalidValue;
  if (pool.kind != GemmPool::Kind::kNone && pool.out == nullptr) return cudaErrorInvalidValue;
  if (pool.kind == GemmPool::Kind::kMaxMinMean && (pool.head_dim <= 0 || n % pool.head_dim != 0)) {
    return cudaErrorInvalidValue;
  }
  if (!GemmSm90Available()) return cudaErrorNotSupported;
  GemmArgs p{};
  SEER_CUDA_RETURN_IF_ERROR(EncodeRows(&p.tma_a, a, m, k, kBM, kBK));
  SEER_CUDA_RETURN_IF_ERROR(EncodeRows(&p.tma_b, b, n, k, kBN, kBK));
  SEER_CUDA_RETURN_IF_ERROR(EncodeRows(&p.tma_c, c, m, n, 64, 64));
  p.c = c;
  p.pool = pool.out;
  p.m = m;
  p.n = n;
  p.k = k;
  p.tiles_m = (m + kBM - 1) / kBM;
  p.tiles_n = (n + kBN - 1) / kBN;
  p.head_dim = pool.head_dim;
  p.group_m = group_m_for_bench.load(std::memory_order_relaxed);
  int device = 0, sms = 0;
  SEER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  SEER_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  auto kernel = pool.kind == GemmPool::Kind::kNone   ? GemmSm90Kernel<0>
                : pool.kind == GemmPool::Kind::kMean ? GemmSm90Kernel<1>
                                                     : GemmSm90Kernel<2>;
  static_assert(static_cast<int>(GemmPool::Kind::kMean) == 1 && static_cast<int>(GemmPool::Kind::kMaxMinMean) == 2);
  SEER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const int tiles = p.tiles_m * p.tiles_n;
  const int grid = tiles < sms ? tiles : sms;  // persistent: a CTA an SM
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace seer::cuda
