// seer-gemm-sm90-bench: our Hopper GEMM (kernels/gemm/gemm_sm90.cu) beside
// cuBLAS on the prefill's q and k projections, with and without the gate's
// block pools in its epilogue.
//
//   seer-gemm-sm90-bench [--rows=8192,32768,131072] [--shapes=4096x4096,1024x4096]
//                        [--repeats=20] [--groups=8,16] [--profile=none|mean|mmm]
//
// --profile runs our kernel twice with that pool on the first --rows and
// --shapes and exits (for ncu).
//
// Shapes are out x in (n x k): the 8B shape's q_proj and k_proj. Per row of
// the table, median ms over --repeats launches and TFLOP/s of:
//   - cublasGemmEx as the engine calls it (engine/cuda/gemm.cc);
//   - the fastest of cublasLt's first 8 heuristic algorithms (no split-K),
//     each timed (what the engine's GemmTuner may pick);
//   - ours, plain, with each --groups raster (M tiles a group; the best is
//     kept); ours with the mean pool (q); ours with max, min and mean (k,
//     128-channel heads);
// the pools' cost over our plain kernel, the largest |ours - cuBLAS| over
// |cuBLAS| + 1e-2, and the mean SM clock (and the share of 5 ms samples the
// software power cap held it) over cublasGemmEx's and our timed windows
// (kernels/common/power_sampler.h; windows of a few ms get one sample or
// none).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/version.h"
#include "kernels/common/bench_flags.h"
#include "kernels/common/check.h"
#include "kernels/common/power_sampler.h"
#include "kernels/gemm/gemm_sm90.h"

namespace {

using seer::cuda::GemmPool;

#define CUBLAS_OK(x)                                                             \
  do {                                                                           \
    const cublasStatus_t s_ = (x);                                               \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                           \
      std::fprintf(stderr, "%s:%d: cuBLAS status %d\n", __FILE__, __LINE__, s_); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

// The board's clock over the last MedianMs window (null sampler: none).
seer::bench::PowerSampler* g_sampler = nullptr;
seer::bench::PowerSummary g_power;

double MedianMs(const std::function<void()>& run, int repeats) {
  cudaEvent_t e0, e1;
  SEER_CUDA_CHECK(cudaEventCreate(&e0));
  SEER_CUDA_CHECK(cudaEventCreate(&e1));
  run();
  SEER_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms;
  if (g_sampler != nullptr) g_sampler->Start();
  for (int i = 0; i < repeats; ++i) {
    SEER_CUDA_CHECK(cudaEventRecord(e0));
    run();
    SEER_CUDA_CHECK(cudaEventRecord(e1));
    SEER_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    SEER_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  if (g_sampler != nullptr) g_power = g_sampler->Stop();
  SEER_CUDA_CHECK(cudaEventDestroy(e0));
  SEER_CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

__global__ void FillKernel(__nv_bfloat16* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16(static_cast<float>(h & 0xffff) / 32768.0f - 1.0f);
  }
}

constexpr char kUsage[] =
    "usage: seer-gemm-sm90-bench [--rows=8192,32768,131072] [--shapes=4096x4096,1024x4096]\n"
    "                            [--repeats=20] [--groups=8,16] [--profile=none|mean|mmm]\n";

constexpr char kHelp[] =
    "Our Hopper bf16 GEMM (C = A B^T, kernels/gemm/gemm_sm90.cu) beside cuBLAS on the\n"
    "prefill's q and k projections, with and without the gate's block pools in its\n"
    "epilogue. Needs an sm_90a GPU; prints one markdown table.\n"
    "\n"
    "  --rows=LIST      token counts (A's rows), default 8192,32768,131072\n"
    "  --shapes=LIST    n x k of B (out x in), default 4096x4096 (q_proj), 1024x4096 (k_proj)\n"
    "  --repeats=N      launches timed per cell; the median is reported (default 20)\n"
    "  --groups=LIST    raster groups of M tiles to try; the fastest is kept (default 8,16)\n"
    "  --profile=KIND   one warm-up and one launch of ours with that pool (none, mean, mmm)\n"
    "                   on the first --rows and --shapes, then exit: for ncu\n"
    "\n"
    "Columns: cublasGemmEx as the engine calls it, the fastest of cublasLt's first 8\n"
    "heuristic algorithms, ours (ms, TFLOP/s, over the best cuBLAS), the mean pool's and\n"
    "the max/min/mean pool's cost over our plain kernel, the largest relative difference\n"
    "from cuBLAS, and the mean SM clock with the share of samples the power cap held it.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> rows = {8192, 32768, 131072};
  std::vector<std::string> shapes = {"4096x4096", "1024x4096"};
  int repeats = 20;
  std::vector<int> groups = {8, 16};
  std::string profile;  // a pool kind: one launch of ours, for ncu
  if (seer::PrintVersionIfAsked(argc, argv, "seer-gemm-sm90-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  for (int i = 1; i < argc; ++i) {
    if (const char* v = seer::bench::FlagValue(argv[i], "--rows"))
      rows = seer::bench::IntList(v);
    else if (const char* v = seer::bench::FlagValue(argv[i], "--shapes"))
      shapes = seer::bench::SplitCommas(v);
    else if (const char* v = seer::bench::FlagValue(argv[i], "--repeats"))
      repeats = std::atoi(v);
    else if (const char* v = seer::bench::FlagValue(argv[i], "--groups"))
      groups = seer::bench::IntList(v);
    else if (const char* v = seer::bench::FlagValue(argv[i], "--profile"))
      profile = v;
    else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return 2;
    }
  }
  if (!seer::cuda::GemmSm90Available()) {
    std::printf("no sm_90a device: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# seer-gemm-sm90-bench %s (%s) on %s (%d SMs), median of %d\n", seer::kVersion, seer::kBuildCommit,
              prop.name, prop.multiProcessorCount, repeats);
  std::printf(
      "| rows | n x k | cublasGemmEx ms | best cublasLt ms | ours ms (by raster group) | ours TFLOP/s | ours / best cuBLAS | "
      "+ mean pool ms | + max/min/mean pool ms | max rel diff | cublasGemmEx SM MHz (power cap) | ours SM MHz (power cap) "
      "|\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");

  std::string why;
  char bus[32] = {};
  std::unique_ptr<seer::bench::PowerSampler> sampler;
  if (profile.empty() && cudaDeviceGetPCIBusId(bus, sizeof(bus), 0) == cudaSuccess) {
    sampler = seer::bench::PowerSampler::Open(bus, 5, &why);
  }
  if (sampler == nullptr) std::printf("# no power samples: %s\n", why.c_str());

  cublasHandle_t handle;
  CUBLAS_OK(cublasCreate(&handle));
  cublasLtHandle_t lt;
  CUBLAS_OK(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t{32} << 20;
  void* ws = nullptr;
  SEER_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  CUBLAS_OK(cublasSetWorkspace(handle, ws, ws_bytes));

  for (const std::string& shape : shapes) {
    int n = 0, k = 0;
    if (std::sscanf(shape.c_str(), "%dx%d", &n, &k) != 2) {
      std::fprintf(stderr, "bad shape %s (want NxK)\n", shape.c_str());
      return 2;
    }
    for (int m : rows) {
      __nv_bfloat16 *a, *b, *c_ref, *c;
      float* pool;
      SEER_CUDA_CHECK(cudaMalloc(&a, size_t(m) * k * 2));
      SEER_CUDA_CHECK(cudaMalloc(&b, size_t(n) * k * 2));
      SEER_CUDA_CHECK(cudaMalloc(&c_ref, size_t(m) * n * 2));
      SEER_CUDA_CHECK(cudaMalloc(&c, size_t(m) * n * 2));
      SEER_CUDA_CHECK(cudaMalloc(&pool, size_t((m + 63) / 64) * n * 3 * sizeof(float)));
      FillKernel<<<1024, 256>>>(a, size_t(m) * k, 17);
      FillKernel<<<1024, 256>>>(b, size_t(n) * k, 91);
      SEER_CUDA_CHECK(cudaGetLastError());
      GemmPool none, mean, mmm;
      mean.kind = GemmPool::Kind::kMean;
      mean.out = pool;
      mmm.kind = GemmPool::Kind::kMaxMinMean;
      mmm.out = pool;
      mmm.head_dim = 128;
      if (!profile.empty()) {  // one launch to warm up, one to profile
        const GemmPool& g = profile == "mean" ? mean : profile == "mmm" ? mmm : none;
        for (int i = 0; i < 2; ++i) SEER_CUDA_CHECK(seer::cuda::GemmBf16Sm90(a, b, c, m, n, k, g, nullptr));
        SEER_CUDA_CHECK(cudaDeviceSynchronize());
        std::printf("profiled %d x %d x %d, pool %s\n", m, n, k, profile.c_str());
        return 0;
      }
      g_sampler = sampler.get();
      const float alpha = 1.0f, beta = 0.0f;
      // Row-major C[m, n] = A B^T is column-major C^T[n, m] = B[n, k] . A^T.
      auto gemm_ex = [&] {
        CUBLAS_OK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, k, a, CUDA_R_16BF, k,
                               &beta, c_ref, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      };
      const double ex_ms = MedianMs(gemm_ex, repeats);
      const seer::bench::PowerSummary ex_power = g_power;

      // cublasLt's heuristic candidates, each timed.
      cublasLtMatmulDesc_t op;
      CUBLAS_OK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      CUBLAS_OK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      CUBLAS_OK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      cublasLtMatrixLayout_t la, lb, lc;
      CUBLAS_OK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, n, k));
      CUBLAS_OK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, m, k));
      CUBLAS_OK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, m, n));
      cublasLtMatmulPreference_t pref;
      CUBLAS_OK(cublasLtMatmulPreferenceCreate(&pref));
      CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                     sizeof(ws_bytes)));
      cublasLtMatmulHeuristicResult_t heur[8];
      int found = 0;
      CUBLAS_OK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 8, heur, &found));
      double best_lt = 1e30;
      for (int i = 0; i < found; ++i) {
        int splits = 1;
        size_t got = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&heur[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits),
                                             &got);
        if (splits > 1) continue;
        bool ok = true;
        auto run = [&] {
          if (cublasLtMatmul(lt, op, &alpha, b, la, a, lb, &beta, c_ref, lc, c_ref, lc, &heur[i].algo, ws, ws_bytes,
                             nullptr) != CUBLAS_STATUS_SUCCESS) {
            ok = false;
          }
        };
        const double t = MedianMs(run, repeats);
        if (ok) best_lt = std::min(best_lt, t);
      }
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
      gemm_ex();  // c_ref: cublasGemmEx's output

      auto ours = [&](const GemmPool& g) {
        return [&, g] { SEER_CUDA_CHECK(seer::cuda::GemmBf16Sm90(a, b, c, m, n, k, g, nullptr)); };
      };
      // The raster's group of M tiles: each timed, the best kept for the pools.
      double ours_ms = 1e30;
      int best_group = 0;
      std::string by_group;
      for (int g : groups) {
        seer::cuda::SetGemmSm90GroupMForBench(g);
        const double t = MedianMs(ours(none), repeats);
        by_group += (by_group.empty() ? "" : " / ") + std::to_string(g) + ": " + std::to_string(t).substr(0, 6);
        if (t < ours_ms) {
          ours_ms = t;
          best_group = g;
        }
      }
      seer::cuda::SetGemmSm90GroupMForBench(best_group);
      MedianMs(ours(none), repeats);  // the best group again, for its clock
      const seer::bench::PowerSummary ours_power = g_power;
      const double mean_ms = MedianMs(ours(mean), repeats);
      const double mmm_ms = MedianMs(ours(mmm), repeats);
      SEER_CUDA_CHECK(cudaDeviceSynchronize());

      std::vector<__nv_bfloat16> h_ref(size_t(m) * n), h(size_t(m) * n);
      SEER_CUDA_CHECK(cudaMemcpy(h_ref.data(), c_ref, h.size() * 2, cudaMemcpyDeviceToHost));
      SEER_CUDA_CHECK(cudaMemcpy(h.data(), c, h.size() * 2, cudaMemcpyDeviceToHost));
      double worst = 0;
      for (size_t i = 0; i < h.size(); ++i) {
        const double r = __bfloat162float(h_ref[i]), o = __bfloat162float(h[i]);
        worst = std::max(worst, std::abs(o - r) / (std::abs(r) + 1e-2));
      }
      const double best = std::min(ex_ms, best_lt);
      const double tflops = 2.0 * m * double(n) * k / (ours_ms * 1e-3) / 1e12;
      auto clock = [&](const seer::bench::PowerSummary& w) {
        if (sampler == nullptr || w.samples == 0) return std::string("-");
        char text[64];
        std::snprintf(text, sizeof(text), "%.0f (%.0f%%)", w.sm_mhz, 100 * w.power_cap_share);
        return std::string(text);
      };
      std::printf("| %d | %dx%d | %.4f | %.4f | %.4f (%s) | %.0f | %.3f | %+.4f | %+.4f | %.2e | %s | %s |\n", m, n, k,
                  ex_ms, best_lt, ours_ms, by_group.c_str(), tflops, ours_ms / best, mean_ms - ours_ms,
                  mmm_ms - ours_ms, worst, clock(ex_power).c_str(), clock(ours_power).c_str());
      std::fflush(stdout);
      SEER_CUDA_CHECK(cudaFree(a));
      SEER_CUDA_CHECK(cudaFree(b));
      SEER_CUDA_CHECK(cudaFree(c_ref));
      SEER_CUDA_CHECK(cudaFree(c));
      SEER_CUDA_CHECK(cudaFree(pool));
    }
  }
  cublasLtDestroy(lt);
  cublasDestroy(handle);
  SEER_CUDA_CHECK(cudaFree(ws));
  return 0;
}
