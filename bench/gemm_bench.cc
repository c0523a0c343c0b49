// The prefill's GEMMs at the Llama-3.1-8B shape: the engine's call
// (cublasGemmEx, the first algorithm cublasLt's heuristic ranks) next to every
// candidate the heuristic offers for the same problem, and GemmTuner's pick
// (engine/cuda/gemm_tuner.h). CUDA-event timings, best of the repeats, on
// random bf16 operands; "A/B" re-times the engine's call and the fastest
// candidate alternately, four pairs, since sustained GEMMs run at the power
// cap and drift.
//
//   seer-gemm-bench [--rows 131072] [--mlp-chunk 18688] [--repeats 5] [--clusters]
//
// --rows: the prompt's tokens (q, k, v, o over every row); --mlp-chunk: the
// rows of one MLP pass (the engine's is at most 1 GiB of intermediates,
// 18,688 rows at this shape). --clusters also times the fastest candidate
// with explicit thread-block cluster shapes and CTA swizzling.

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/version.h"
#include "bench/llama_shape.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/gemm_tuner.h"
#include "kernels/common/check.h"
#include "kernels/ops/ops.h"

namespace seer {
namespace {

#define BENCH_CUBLAS_CHECK(x)                                                                   \
  do {                                                                                          \
    const cublasStatus_t st_ = (x);                                                             \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                         \
      std::fprintf(stderr, "%s:%d %s -> cuBLAS status %d\n", __FILE__, __LINE__, #x, int(st_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

struct Problem {
  const char* name;
  int rows, in, out, ldx;
  bool accumulate;  // float32 output, beta = 1: the residual add
};

template <typename F>
float BestMs(F&& launch, int repeats, cudaStream_t stream) {
  cudaEvent_t a, b;
  SEER_CUDA_CHECK(cudaEventCreate(&a));
  SEER_CUDA_CHECK(cudaEventCreate(&b));
  launch();
  float best = 1e30f;
  for (int r = 0; r < repeats; ++r) {
    SEER_CUDA_CHECK(cudaEventRecord(a, stream));
    launch();
    SEER_CUDA_CHECK(cudaEventRecord(b, stream));
    SEER_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    best = std::min(best, ms);
  }
  SEER_CUDA_CHECK(cudaEventDestroy(a));
  SEER_CUDA_CHECK(cudaEventDestroy(b));
  return best;
}

constexpr char kUsage[] = "usage: seer-gemm-bench [--rows 131072] [--mlp-chunk 18688] [--repeats 5] [--clusters]\n";

constexpr char kHelp[] =
    "The prefill's GEMMs at the Llama-3.1-8B shape: the engine's call (cublasGemmEx) beside\n"
    "every candidate cublasLt's heuristic offers and the engine's GemmTuner pick; best of the\n"
    "repeats, then the engine's call and the fastest candidate re-timed alternately.\n"
    "\n"
    "  --rows N        the prompt's tokens (the q, k, v and o projections over every row)\n"
    "  --mlp-chunk N   the rows of one MLP pass (the engine's: at most 1 GiB of intermediates)\n"
    "  --repeats N     launches per candidate\n"
    "  --clusters      also time the fastest candidate with thread-block cluster shapes\n";

int Main(int argc, char** argv) {
  if (PrintVersionIfAsked(argc, argv, "seer-gemm-bench")) return 0;
  if (PrintHelpIfAsked(argc, argv, kUsage, kHelp)) return 0;
  int rows = 131072, chunk = 18688, repeats = 5;
  bool clusters = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> int { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--rows") {
      rows = next();
    } else if (a == "--mlp-chunk") {
      chunk = next();
    } else if (a == "--repeats") {
      repeats = next();
    } else if (a == "--clusters") {
      clusters = true;
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, a.c_str());
      return 2;
    }
  }
  if (rows < 1 || chunk < 1 || repeats < 1) {
    std::fprintf(stderr, "--rows, --mlp-chunk and --repeats must be at least 1\n");
    return 2;
  }
  const ModelConfig c = Llama31_8B(1);
  const int hidden = c.hidden_size, inter = c.intermediate_size;
  const int q_cols = c.num_heads * c.head_dim, kv_cols = c.num_kv_heads * c.head_dim;
  const std::vector<Problem> problems = {
      {"q_proj", rows, hidden, q_cols, hidden, false},
      {"k_proj", rows, hidden, kv_cols, hidden, false},
      {"v_proj", rows, hidden, kv_cols, hidden, false},
      {"o_proj (residual +=)", rows, q_cols, hidden, q_cols, true},
      {"gate_proj / up_proj", chunk, hidden, inter, hidden, false},
      {"gate+up as one", chunk, hidden, 2 * inter, hidden, false},
      {"down_proj (residual +=)", chunk, inter, hidden, inter, true},
  };
  size_t max_x = 0, max_w = 0, max_y = 0;
  for (const Problem& p : problems) {
    max_x = std::max(max_x, size_t(p.rows) * p.ldx);
    max_w = std::max(max_w, size_t(p.out) * p.in);
    max_y = std::max(max_y, size_t(p.rows) * p.out * 4);
  }
  __nv_bfloat16 *x = nullptr, *w = nullptr;
  void *y = nullptr, *ws = nullptr;
  const size_t ws_bytes = size_t{32} << 20;  // the engine's cuBLAS workspace
  SEER_CUDA_CHECK(cudaMalloc(&x, max_x * 2));
  SEER_CUDA_CHECK(cudaMalloc(&w, max_w * 2));
  SEER_CUDA_CHECK(cudaMalloc(&y, max_y));
  SEER_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  SEER_CUDA_CHECK(cuda::FillUniform(x, max_x, 1, 1.0f, nullptr));
  SEER_CUDA_CHECK(cuda::FillUniform(w, max_w, 2, 0.05f, nullptr));
  SEER_CUDA_CHECK(cudaMemset(y, 0, max_y));
  cudaStream_t stream;
  SEER_CUDA_CHECK(cudaStreamCreate(&stream));
  cublasHandle_t handle;
  BENCH_CUBLAS_CHECK(cublasCreate(&handle));
  BENCH_CUBLAS_CHECK(cublasSetStream(handle, stream));
  BENCH_CUBLAS_CHECK(cublasSetWorkspace(handle, ws, ws_bytes));
  cublasLtHandle_t lt;
  BENCH_CUBLAS_CHECK(cublasLtCreate(&lt));
  GemmTuner tuner(handle, ws, ws_bytes);

  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("seer-gemm-bench %s (commit %s): %s, Llama-3.1-8B shape, %d rows, MLP chunk %d, best of %d\n", kVersion,
              kBuildCommit, prop.name, rows, chunk, repeats);

  std::vector<std::string> table;
  for (const Problem& p : problems) {
    const cudaDataType_t y_type = p.accumulate ? CUDA_R_32F : CUDA_R_16BF;
    const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
    const double flop = 2.0 * p.rows * double(p.in) * p.out;
    auto engine_call = [&] { (void)LinearBf16(handle, x, p.rows, p.in, w, p.out, y, y_type, beta, p.ldx); };
    const float engine_ms = BestMs(engine_call, repeats, stream);

    // LinearBf16's problem, stated to cublasLt (engine/cuda/gemm_tuner.cc does the same).
    cublasLtMatmulDesc_t op;
    BENCH_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    BENCH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    BENCH_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    cublasLtMatrixLayout_t la, lb, lc;
    BENCH_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, p.in, p.out, p.in));
    BENCH_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, p.in, p.rows, p.ldx));
    BENCH_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, y_type, p.out, p.rows, p.out));
    cublasLtMatmulPreference_t pref;
    BENCH_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    BENCH_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                            sizeof(ws_bytes)));
    std::vector<cublasLtMatmulHeuristicResult_t> found(GemmTuner::kCandidates);
    int n = 0;
    BENCH_CUBLAS_CHECK(
        cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, GemmTuner::kCandidates, found.data(), &n));
    auto run = [&](const cublasLtMatmulAlgo_t& algo) {
      (void)cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &algo, ws, ws_bytes, stream);
    };
    std::printf("\n%s: %d x %d x %d (rows x out x in)\n", p.name, p.rows, p.out, p.in);
    std::printf("  cublasGemmEx (the engine without tuning): %.3f ms, %.0f TFLOP/s\n", engine_ms,
                flop / engine_ms / 1e9);
    int best = -1;
    float best_ms = 1e30f;
    for (int i = 0; i < n; ++i) {
      if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
      const float ms = BestMs([&] { run(found[i].algo); }, repeats, stream);
      int tile = 0, splitk = 0;
      size_t got = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &got);
      cublasLtMatmulAlgoConfigGetAttribute(&found[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk),
                                           &got);
      std::printf("  candidate %d: tile id %d, split-K %d, %.1f waves: %.3f ms\n", i, tile, splitk, found[i].wavesCount,
                  ms);
      if (ms < best_ms) best_ms = ms, best = i;
    }
    cublasLtMatmulAlgo_t best_algo = best >= 0 ? found[best].algo : cublasLtMatmulAlgo_t{};
    if (clusters && best >= 0) {
      const int shapes[] = {CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1,
                            CUBLASLT_CLUSTER_SHAPE_2x2x1, CUBLASLT_CLUSTER_SHAPE_4x1x1, CUBLASLT_CLUSTER_SHAPE_1x4x1};
      for (int shape : shapes) {
        for (int swizzle = 0; swizzle <= 1; ++swizzle) {
          cublasLtMatmulAlgo_t a = found[best].algo;
          cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &shape, sizeof(shape));
          cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof(swizzle));
          cublasLtMatmulHeuristicResult_t check{};
          if (cublasLtMatmulAlgoCheck(lt, op, la, lb, lc, lc, &a, &check) != CUBLAS_STATUS_SUCCESS) continue;
          const float ms = BestMs([&] { run(a); }, repeats, stream);
          std::printf("  candidate %d, cluster shape id %d, swizzle %d: %.3f ms\n", best, shape, swizzle, ms);
          if (ms < best_ms) best_ms = ms, best_algo = a;
        }
      }
    }
    std::string ab;
    for (int r = 0; r < 4 && best >= 0; ++r) {
      char pair[48];
      std::snprintf(pair, sizeof(pair), " %.3f/%.3f", BestMs(engine_call, repeats, stream),
                    BestMs([&] { run(best_algo); }, repeats, stream));
      ab += pair;
    }
    std::printf("  A/B cublasGemmEx / fastest candidate, ms:%s\n", ab.c_str());

    // What the engine's tuner picks for this problem (its own timing).
    const size_t before = tuner.choices().size();
    if (!tuner.Linear(stream, x, p.rows, p.in, w, p.out, y, y_type, beta, p.ldx).ok()) {
      std::fprintf(stderr, "GemmTuner failed on %s\n", p.name);
      return 1;
    }
    SEER_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::string pick =
        tuner.choices().size() > before
            ? (tuner.choices().back().uses_candidate
                   ? "candidate, tile id " + std::to_string(tuner.choices().back().best_tile)
                   : std::string("cublasGemmEx"))
            : std::string(p.rows < GemmTuner::kMinRows ? "not tuned (rows < kMinRows)" : "as tuned before");
    char row[256];
    std::snprintf(row, sizeof(row), "| %s | %d x %d x %d | %.3f | %.0f | %.3f | %.0f | %s |", p.name, p.rows, p.out,
                  p.in, engine_ms, flop / engine_ms / 1e9, best_ms, flop / best_ms / 1e9, pick.c_str());
    table.push_back(row);

    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
  }
  std::printf(
      "\n| GEMM | rows x out x in | cublasGemmEx ms | TFLOP/s | fastest candidate ms | TFLOP/s | GemmTuner picks |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const std::string& r : table) std::printf("%s\n", r.c_str());
  cublasLtDestroy(lt);
  cublasDestroy(handle);
  SEER_CUDA_CHECK(cudaStreamDestroy(stream));
  SEER_CUDA_CHECK(cudaFree(x));
  SEER_CUDA_CHECK(cudaFree(w));
  SEER_CUDA_CHECK(cudaFree(y));
  SEER_CUDA_CHECK(cudaFree(ws));
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) { return seer::Main(argc, argv); }
