// Distillation-target benchmark (kernels/gate/distill_target.h): one layer's
// target at 4k, 16k and 32k tokens for the Llama-3.1-8B attention shape (32 Q
// heads, 8 KV heads, head dim 128) and a small one (6 / 2 heads, head dim 64),
// bf16 unless --dtypes. Block 64 runs the tensor-core kernel; --blocks=64,32
// adds the float32 CUDA-core kernel (block 32) as the peer in the same run.
// Prints a table.
//
// Timing: CUDA events around each launch, after warm-up; the median of the
// timed runs. Inputs are random (never zeros). FLOPs: 2 passes x 2 D per
// causal (query, key) pair, L (L + 1) / 2 pairs per Q head.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "base/version.h"
#include "kernels/common/bench_flags.h"
#include "kernels/common/device_util.cuh"
#include "kernels/common/check.h"
#include "kernels/gate/distill_target.h"

namespace {

using seer::cuda::ElemType;

struct Shape {
  int heads;
  int kv_heads;
  int dim;
};

struct Options {
  std::vector<int> seqs = {4096, 16384, 32768};
  std::vector<int> blocks = {64};
  std::vector<ElemType> dtypes = {ElemType::kBF16};
  std::vector<Shape> shapes = {{32, 8, 128}, {6, 2, 64}};
  int warmup = 1;
  int iters = 5;
};

constexpr char kUsage[] =
    "usage: seer-distill-target-bench [--seqs=4096,16384,32768] [--blocks=64 (64,32,16)]\n"
    "                                 [--dtypes=bf16 (bf16,fp16)] [--warmup=1] [--iters=5]\n";

constexpr char kHelp[] =
    "Times one layer's gate-distillation target (the block-pooled attention map the gates\n"
    "are trained against) for the Llama-3.1-8B attention shape and a small one.\n"
    "\n"
    "  --seqs=LIST     prompt lengths\n"
    "  --blocks=LIST   pooling block sizes: 64 runs the tensor-core kernel, 32 and 16 the\n"
    "                  float32 CUDA-core one\n"
    "  --dtypes=LIST   bf16, fp16\n"
    "  --warmup=N, --iters=N   untimed and timed launches; the median is reported\n";

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    auto value = [&](const char* name) { return seer::bench::FlagValue(argv[i], name); };
    if (const char* v = value("--seqs")) {
      o->seqs = seer::bench::IntList(v);
    } else if (const char* v = value("--blocks")) {
      o->blocks = seer::bench::IntList(v);
    } else if (const char* v = value("--dtypes")) {
      o->dtypes = seer::bench::ElemTypeList(v);
    } else if (const char* v = value("--warmup")) {
      o->warmup = std::atoi(v);
    } else if (const char* v = value("--iters")) {
      o->iters = std::max(1, std::atoi(v));
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return false;
    }
  }
  return true;
}

void Fill(void* x, int64_t n, ElemType t, uint32_t seed, float scale) {
  SEER_CUDA_CHECK(seer::cuda::FillUniform(x, n, t, seed, scale));
}

double MedianMs(const Options& o, const seer::cuda::DistillTargetParams& p) {
  cudaEvent_t start, stop;
  SEER_CUDA_CHECK(cudaEventCreate(&start));
  SEER_CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < o.warmup; ++i) SEER_CUDA_CHECK(seer::cuda::LaunchDistillTarget(p, nullptr));
  SEER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < o.iters; ++i) {
    SEER_CUDA_CHECK(cudaEventRecord(start));
    SEER_CUDA_CHECK(seer::cuda::LaunchDistillTarget(p, nullptr));
    SEER_CUDA_CHECK(cudaEventRecord(stop));
    SEER_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0.0f;
    SEER_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  SEER_CUDA_CHECK(cudaEventDestroy(start));
  SEER_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-distill-target-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  Options o;
  if (!ParseArgs(argc, argv, &o)) return 2;
  cudaDeviceProp prop;
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("device: %s, %d SMs, %.0f MB L2; %s\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1048576.0,
              date);
  std::printf("distillation target, one layer; block 64: tensor cores, 16/32: float32 CUDA cores\n");
  std::printf("FLOPs: 2 passes x 2 D per causal (query, key) pair; median of %d runs after %d warm-up\n\n", o.iters,
              o.warmup);
  std::printf("%-6s %7s %5s %4s %4s %6s %10s %9s\n", "dtype", "L", "heads", "D", "blk", "kernel", "ms/layer",
              "TFLOP/s");

  for (ElemType dtype : o.dtypes) {
    for (const Shape& sh : o.shapes) {
      for (int seq : o.seqs) {
        const int64_t q_elems = static_cast<int64_t>(seq) * sh.heads * sh.dim;
        const int64_t k_elems = static_cast<int64_t>(seq) * sh.kv_heads * sh.dim;
        void* q = nullptr;
        void* k = nullptr;
        float* out = nullptr;
        SEER_CUDA_CHECK(cudaMalloc(&q, q_elems * 2));
        SEER_CUDA_CHECK(cudaMalloc(&k, k_elems * 2));
        // Activation-sized values: |q . k| * scale spans a few units.
        Fill(q, q_elems, dtype, 0x1234u + static_cast<uint32_t>(seq), 2.0f);
        Fill(k, k_elems, dtype, 0xABCDu + static_cast<uint32_t>(seq), 2.0f);
        for (int block : o.blocks) {
          const int nb = (seq + block - 1) / block;
          SEER_CUDA_CHECK(cudaMalloc(&out, sizeof(float) * sh.heads * static_cast<int64_t>(nb) * nb));
          seer::cuda::DistillTargetParams p;
          p.q = q;
          p.k = k;
          p.dtype = dtype;
          p.seq_len = seq;
          p.num_heads = sh.heads;
          p.num_kv_heads = sh.kv_heads;
          p.head_dim = sh.dim;
          p.block_size = block;
          p.scale = 1.0f / std::sqrt(static_cast<float>(sh.dim));
          p.out = out;
          const double ms = MedianMs(o, p);
          const double pairs = static_cast<double>(seq) * (seq + 1) / 2.0 * sh.heads;
          const double tflops = 2.0 * 2.0 * sh.dim * pairs / (ms * 1e-3) / 1e12;
          std::printf("%-6s %7d %2d/%-2d %4d %4d %6s %10.2f %9.1f\n", dtype == ElemType::kBF16 ? "bf16" : "fp16", seq,
                      sh.heads, sh.kv_heads, sh.dim, block, block == 64 ? "mma" : "fp32", ms, tflops);
          std::fflush(stdout);
          SEER_CUDA_CHECK(cudaFree(out));
        }
        SEER_CUDA_CHECK(cudaFree(q));
        SEER_CUDA_CHECK(cudaFree(k));
      }
    }
  }
  return 0;
}
