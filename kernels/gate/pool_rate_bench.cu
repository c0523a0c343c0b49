// seer-pool-rate-bench: how fast the GPU pools q [L, H, 128] (bf16) into
// the gate's 64-token block means, alone on the GPU, against a plain read of
// the same bytes. The pooling select of the fused gate (kernels/gate/gate.cu,
// PoolRotatedQRows) sums each channel down a block's tokens in token order,
// in double, with a warp per (block, head) row and a lane per four channels;
// this program times that loop by itself, so that the gate's traces can be
// read against it: is the pool bound by its loop or by what runs beside it?
//
//   seer-pool-rate-bench [--seq=8192] [--heads=32] [--repeats=30]
//
// Prints one row per variant: median and best µs, TB/s of q read, with L2
// warm from the last launch and with L2 flushed (a 256 MB memset before
// each launch), and the means that differ in any bit from a float64 CPU
// recomputation (the double variants must give none).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/dtype.h"
#include "base/version.h"
#include "kernels/common/bench_flags.h"
#include "kernels/common/check.h"

namespace {

constexpr int kD = 128;  // channels a head: a lane's 4 (8-byte loads) or 8 (16-byte loads)
constexpr int kBlock = 64;  // tokens a block
constexpr int kThreads = 512;  // 16 warps a CTA, as the pooling select

// Plain read of n 16-byte words, grid-stride, four loads in flight a
// thread, summed in float only so that the loads are not dead.
__global__ void __launch_bounds__(kThreads, 2) ReadKernel(const uint4* x, int64_t n, float* sink) {
  float acc = 0.0f;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (; i + 3 * step < n; i += 4 * step) {
    uint4 r[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = __ldg(x + i + j * step);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      acc += __uint_as_float(r[j].x) + __uint_as_float(r[j].y) + __uint_as_float(r[j].z) + __uint_as_float(r[j].w);
    }
  }
  for (; i < n; i += step) acc += __uint_as_float(__ldg(x + i).x);
  if (acc == 1234.5f) *sink = acc;  // never, as far as the compiler knows
}

// Warps take (block, head group) rows in turn; lane l sums channels kN l ..
// kN l + kN - 1 of the group (kN 4: one head; 8: two heads) down the
// block's 64 tokens in order, kBatch loads in flight. kDouble: each value
// converted to double and added (the gate's sums); else added in float.
template <int kN, int kBatch, bool kDouble>
__global__ void __launch_bounds__(kThreads, 2) PoolKernel(const __nv_bfloat16* q, int nb, int heads, float* out) {
  static_assert(kN == 4 || kN == 8, "one 8- or 16-byte load a token");
  using Load = std::conditional_t<kN == 8, uint4, uint2>;
  constexpr int kHeadsPerRow = kN * 32 / kD;
  const int64_t stride = static_cast<int64_t>(heads) * kD;
  const int lane = threadIdx.x % 32;
  const int rows = nb * (heads / kHeadsPerRow);
  const int warps = static_cast<int>(gridDim.x) * (kThreads / 32);
  for (int row = static_cast<int>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; row < rows; row += warps) {
    const int group = row / nb;  // a CTA's warps share a head, as in the select
    const int b = row % nb;
    const int64_t c = static_cast<int64_t>(group) * kHeadsPerRow * kD + kN * lane;
    const __nv_bfloat16* x = q + static_cast<int64_t>(b) * kBlock * stride + c;
    double sum[kN] = {};
    float fsum[kN] = {};
    for (int t = 0; t < kBlock; t += kBatch) {
      Load raw[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) raw[j] = __ldg(reinterpret_cast<const Load*>(x + (t + j) * stride));
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&raw[j]);
#pragma unroll
        for (int i = 0; i < kN; ++i) {
          const float v = __bfloat162float(e[i]);
          if constexpr (kDouble) {
            sum[i] += v;
          } else {
            fsum[i] += v;
          }
        }
      }
    }
    float* dst = out + static_cast<int64_t>(b) * stride + c;
#pragma unroll
    for (int i = 0; i < kN; ++i) dst[i] = kDouble ? static_cast<float>(sum[i] / kBlock) : fsum[i] / kBlock;
  }
}

constexpr char kUsage[] = "usage: seer-pool-rate-bench [--seq=8192] [--heads=32] [--repeats=30]\n";

constexpr char kHelp[] =
    "How fast the GPU pools q [seq, heads, 128] (bf16) into the gate's 64-token block means\n"
    "(token-order double sums, the fused gate's loop), alone on the GPU, against a plain read\n"
    "of the same bytes.\n"
    "\n"
    "  --seq=N       tokens, a multiple of 64 up to 2^20\n"
    "  --heads=N     query heads, even, 2 to 128\n"
    "  --repeats=N   launches per variant, 3 to 1000\n"
    "\n"
    "Prints one row per variant: median and best microseconds and TB/s with L2 warm and with\n"
    "L2 flushed, and how many means differ in any bit from a float64 CPU recomputation.\n";

}  // namespace

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-pool-rate-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  int seq = 8192, heads = 32, repeats = 30;
  for (int i = 1; i < argc; ++i) {
    if (const char* v = seer::bench::FlagValue(argv[i], "--seq")) {
      seq = std::atoi(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--heads")) {
      heads = std::atoi(v);
    } else if (const char* v = seer::bench::FlagValue(argv[i], "--repeats")) {
      repeats = std::atoi(v);
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return 2;
    }
  }
  if (seq < kBlock || seq % kBlock != 0 || seq > (1 << 20)) {
    std::fprintf(stderr, "--seq=%d: must be a multiple of %d from %d to %d\n", seq, kBlock, kBlock, 1 << 20);
    return 2;
  }
  if (heads < 2 || heads % 2 != 0 || heads > 128) {
    std::fprintf(stderr, "--heads=%d: must be even, 2 to 128 (the 16-byte loads cover two heads)\n", heads);
    return 2;
  }
  if (repeats < 3 || repeats > 1000) {
    std::fprintf(stderr, "--repeats=%d: must be 3 to 1000\n", repeats);
    return 2;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("seer-pool-rate-bench: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int nb = seq / kBlock;
  const int64_t stride = static_cast<int64_t>(heads) * kD;
  const size_t n = static_cast<size_t>(seq) * stride;
  const size_t means = static_cast<size_t>(nb) * stride;
  std::vector<uint16_t> hq(n);
  uint32_t s = 1;
  for (uint16_t& v : hq) {  // bf16 values in (-1, 1)
    s = s * 1664525u + 1013904223u;
    v = seer::FloatToBf16(static_cast<float>(static_cast<int32_t>(s >> 9) - (1 << 22)) / static_cast<float>(1 << 22));
  }
  std::vector<float> want(means), got(means);
  for (int b = 0; b < nb; ++b) {
    for (int64_t c = 0; c < stride; ++c) {
      double sum = 0;
      for (int t = 0; t < kBlock; ++t) sum += seer::Bf16ToFloat(hq[(static_cast<size_t>(b) * kBlock + t) * stride + c]);
      want[static_cast<size_t>(b) * stride + c] = static_cast<float>(sum / kBlock);
    }
  }
  __nv_bfloat16* q = nullptr;
  float *out = nullptr, *sink = nullptr;
  unsigned char* flush = nullptr;
  constexpr size_t kFlushBytes = 256u << 20;
  SEER_CUDA_CHECK(cudaMalloc(&q, n * 2));
  SEER_CUDA_CHECK(cudaMalloc(&out, means * 4));
  SEER_CUDA_CHECK(cudaMalloc(&sink, 4));
  SEER_CUDA_CHECK(cudaMalloc(&flush, kFlushBytes));
  SEER_CUDA_CHECK(cudaMemcpy(q, hq.data(), n * 2, cudaMemcpyHostToDevice));
  std::printf("device: %s, %d SMs, %d MB L2; q [%d, %d, %d] bf16 (%.1f MB), blocks of %d tokens\n\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, seq, heads, kD, n * 2 / 1e6, kBlock);
  std::printf(
      "| variant | CTAs x threads | L2 | median us | best us | TB/s (median) | means differing from float64 |\n"
      "|---|---|---|---|---|---|---|\n");
  cudaEvent_t a, b;
  SEER_CUDA_CHECK(cudaEventCreate(&a));
  SEER_CUDA_CHECK(cudaEventCreate(&b));
  const int two_per_sm = 2 * prop.multiProcessorCount;
  auto run = [&](const char* name, int ctas, bool exact, const std::function<void()>& launch) {
    for (bool flushed : {false, true}) {
      std::vector<float> us;
      for (int r = 0; r < repeats; ++r) {
        SEER_CUDA_CHECK(cudaMemset(out, 0, means * 4));
        if (flushed) SEER_CUDA_CHECK(cudaMemset(flush, r & 0xff, kFlushBytes));
        SEER_CUDA_CHECK(cudaEventRecord(a));
        launch();
        SEER_CUDA_CHECK(cudaGetLastError());
        SEER_CUDA_CHECK(cudaEventRecord(b));
        SEER_CUDA_CHECK(cudaEventSynchronize(b));
        float ms = 0;
        SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        us.push_back(ms * 1000.0f);
      }
      std::sort(us.begin(), us.end());
      std::string differ = "-";
      if (exact) {
        SEER_CUDA_CHECK(cudaMemcpy(got.data(), out, means * 4, cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (size_t i = 0; i < means; ++i) bad += std::memcmp(&got[i], &want[i], 4) != 0;
        differ = std::to_string(bad);
      }
      const float median = us[us.size() / 2];
      std::printf("| %s | %d x %d | %s | %.2f | %.2f | %.2f | %s |\n", name, ctas, kThreads,
                  flushed ? "flushed" : "warm", median, us.front(), n * 2 / (median * 1e-6) / 1e12, differ.c_str());
    }
  };
  const int64_t words = static_cast<int64_t>(n * 2 / 16);
  run("plain read (16-byte loads, float sum)", two_per_sm, false,
      [&] { ReadKernel<<<two_per_sm, kThreads>>>(reinterpret_cast<const uint4*>(q), words, sink); });
  const int row_ctas = nb * heads / 16;  // one (block, head) row a warp
  run("pool: 4 channels a lane, 8 loads in flight, double (the select's loop)", row_ctas, true,
      [&] { PoolKernel<4, 8, true><<<row_ctas, kThreads>>>(q, nb, heads, out); });
  run("pool: the same, one CTA an SM", prop.multiProcessorCount, true,
      [&] { PoolKernel<4, 8, true><<<prop.multiProcessorCount, kThreads>>>(q, nb, heads, out); });
  run("pool: 4 channels, 16 loads in flight, double", row_ctas, true,
      [&] { PoolKernel<4, 16, true><<<row_ctas, kThreads>>>(q, nb, heads, out); });
  run("pool: 8 channels a lane (16-byte loads), 8 in flight, double", row_ctas / 2, true,
      [&] { PoolKernel<8, 8, true><<<row_ctas / 2, kThreads>>>(q, nb, heads, out); });
  run("pool: 4 channels, 8 loads in flight, float sums (not the gate's)", row_ctas, false,
      [&] { PoolKernel<4, 8, false><<<row_ctas, kThreads>>>(q, nb, heads, out); });
  SEER_CUDA_CHECK(cudaFree(q));
  SEER_CUDA_CHECK(cudaFree(out));
  SEER_CUDA_CHECK(cudaFree(sink));
  SEER_CUDA_CHECK(cudaFree(flush));
  return 0;
}
