// seer-l2-read-bench: how fast the SMs can pull tiles into shared memory with
// the sm90 attention kernel's machinery (bulk async copies completing on
// mbarriers, one thread issuing them, a fixed number of tiles in flight per
// SM, one persistent CTA per SM), from tile-aligned random offsets of a
// buffer. With a buffer that fits in L2 this is the L2 -> SM read rate that
// the block-sparse kernel's K/V loads compete for (a 64-row consumer uses each
// 32 KB K+V block of head_dim 128 once); with a large buffer it is DRAM.
//
//   seer-l2-read-bench [--buffers-mb=16,40,2048] [--stages=1,2,4,6]
//                      [--tile-kb=32] [--copies=4] [--tiles-per-sm=4096]
//
// Prints one table row per (buffer, stages): GB/s, best of 5 launches after
// a warm-up launch.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "base/version.h"
#include "kernels/arch/sm90_ptx.cuh"
#include "kernels/common/bench_flags.h"
#include "kernels/common/check.h"

namespace {

#if defined(SEER_SM90A_ENABLED)
// Tile i of CTA b: a 32-bit hash of (b, i) scaled into [0, tiles) with one
// multiply-high (a 64-bit modulo here cost more than the copies it issues),
// so that every SM walks its own random order.
__device__ __forceinline__ uint32_t TileOf(uint32_t b, uint32_t i, uint32_t tiles) {
  uint32_t x = (b * 0x9E3779B9u) ^ (i * 0x85EBCA6Bu);
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  return __umulhi(x, tiles);
}
#endif

__global__ void __launch_bounds__(32, 1)
    ReadKernel(const uint8_t* buf, uint32_t tiles, uint32_t tile_bytes, int copies, int stages, int per_sm) {
#if defined(SEER_SM90A_ENABLED)
  extern __shared__ __align__(1024) uint8_t smem[];
  if (threadIdx.x != 0) return;
  const uint32_t base = seer::cuda::sm90::SmemAddr(smem);
  const uint32_t bars = base + stages * tile_bytes;
  for (int s = 0; s < stages; ++s) seer::cuda::sm90::MbarInit(bars + 8 * s, 1);
  seer::cuda::sm90::FenceBarrierInit();
  const uint32_t copy_bytes = tile_bytes / copies;
  uint32_t phases = 0;
  for (int i = 0; i < per_sm + stages; ++i) {
    const int s = i % stages;
    if (i >= stages) {
      seer::cuda::sm90::MbarWait(bars + 8 * s, (phases >> s) & 1u);
      phases ^= 1u << s;
    }
    if (i < per_sm) {
      const uint8_t* src = buf + static_cast<uint64_t>(TileOf(blockIdx.x, i, tiles)) * tile_bytes;
      seer::cuda::sm90::MbarArriveExpectTx(bars + 8 * s, tile_bytes);
      for (int c = 0; c < copies; ++c) {
        seer::cuda::sm90::BulkLoad(base + s * tile_bytes + c * copy_bytes, src + c * copy_bytes, copy_bytes,
                                   bars + 8 * s);
      }
    }
  }
#endif
}

constexpr char kUsage[] =
    "usage: seer-l2-read-bench [--buffers-mb=16,40,2048] [--stages=1,2,4,6] [--tile-kb=32] [--copies=4]\n"
    "                          [--tiles-per-sm=4096]\n";

constexpr char kHelp[] =
    "How fast the SMs pull tiles from random tile-aligned offsets of a buffer into shared\n"
    "memory with the sm90 attention kernel's machinery: bulk copies on mbarriers, one thread\n"
    "issuing them, one persistent CTA per SM. A buffer that fits in L2 gives the L2 -> SM\n"
    "rate; a large one gives DRAM's. Needs an sm_90a GPU.\n"
    "\n"
    "  --buffers-mb=LIST   buffer sizes in MB\n"
    "  --stages=LIST       tiles in flight per SM\n"
    "  --tile-kb=N         tile size (32 KB: one K+V block at head_dim 128)\n"
    "  --copies=N          bulk copies a tile is split into (each a multiple of 16 bytes)\n"
    "  --tiles-per-sm=N    tiles each SM reads per launch\n"
    "\n"
    "Prints one row per (buffer, stages): GB/s, the best of 5 launches after a warm-up.\n";

}  // namespace

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-l2-read-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  std::vector<int> buffers_mb = {16, 40, 2048}, stage_counts = {1, 2, 4, 6};
  int tile_kb = 32, copies = 4, per_sm = 4096;
  for (int i = 1; i < argc; ++i) {
    if (const char* v = seer::bench::FlagValue(argv[i], "--buffers-mb")) {
      buffers_mb = seer::bench::IntList(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--stages")) {
      stage_counts = seer::bench::IntList(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--tile-kb")) {
      tile_kb = std::atoi(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--copies")) {
      copies = std::atoi(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--tiles-per-sm")) {
      per_sm = std::atoi(v);
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return 2;
    }
  }
  const uint32_t tile_bytes = static_cast<uint32_t>(tile_kb) * 1024;
  if (tile_kb <= 0 || copies <= 0 || tile_bytes % (16u * copies) != 0 || per_sm <= 0) {
    std::fprintf(stderr, "--tile-kb and --copies: each copy must be a positive multiple of 16 bytes\n");
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("seer-l2-read-bench: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9 || prop.minor != 0) {
    std::printf("seer-l2-read-bench: built for sm_90a (Hopper) only, device is sm_%d%d\n", prop.major, prop.minor);
    return 0;
  }
  std::printf(
      "device: %s, %d SMs, %d MB L2; one CTA per SM, %d tiles of %d KB per SM (%d copies each), random "
      "tile-aligned offsets\n\n",
      prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, per_sm, tile_kb, copies);
  std::printf("| buffer MB | tiles in flight per SM | ms | GB/s |\n|---|---|---|---|\n");
  cudaEvent_t a, b;
  SEER_CUDA_CHECK(cudaEventCreate(&a));
  SEER_CUDA_CHECK(cudaEventCreate(&b));
  for (int mb : buffers_mb) {
    const uint64_t tiles = (static_cast<uint64_t>(mb) << 20) / tile_bytes;
    if (tiles == 0 || tiles > 0xffffffffu) continue;
    uint8_t* buf = nullptr;
    SEER_CUDA_CHECK(cudaMalloc(&buf, tiles * tile_bytes));
    SEER_CUDA_CHECK(cudaMemset(buf, 1, tiles * tile_bytes));
    for (int stages : stage_counts) {
      const size_t smem = static_cast<size_t>(stages) * tile_bytes + 8 * stages;
      if (stages <= 0 || stages > 32 || smem > static_cast<size_t>(prop.sharedMemPerBlockOptin)) {
        std::printf("| %d | %d | - | (does not fit: %zu bytes of shared memory) |\n", mb, stages, smem);
        continue;
      }
      SEER_CUDA_CHECK(
          cudaFuncSetAttribute(ReadKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      float best = 1e30f;
      for (int r = 0; r < 6; ++r) {
        SEER_CUDA_CHECK(cudaEventRecord(a));
        ReadKernel<<<prop.multiProcessorCount, 32, smem>>>(buf, static_cast<uint32_t>(tiles), tile_bytes, copies,
                                                           stages, per_sm);
        SEER_CUDA_CHECK(cudaGetLastError());
        SEER_CUDA_CHECK(cudaEventRecord(b));
        SEER_CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        if (r > 0 && ms < best) best = ms;  // launch 0 warms L2 up
      }
      const double bytes = static_cast<double>(prop.multiProcessorCount) * per_sm * tile_bytes;
      std::printf("| %d | %d | %.3f | %.0f |\n", mb, stages, best, bytes / (best * 1e-3) / 1e9);
    }
    SEER_CUDA_CHECK(cudaFree(buf));
  }
  return 0;
}
