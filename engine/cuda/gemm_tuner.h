// The prefill's large projections with the fastest of cuBLAS's algorithms.
//
// cublasGemmEx takes the first algorithm cublasLt's heuristic ranks. At
// prefill shapes that is not always the fastest: on an H200 (2026-11-29) the
// 8B shape's o_proj at 128k rows ran 6-10% faster on 128x160 tiles than on
// the heuristic's 320x128, and the 18,688-row gate/up GEMM 3-6% faster on
// 176x128. GemmTuner times the heuristic's candidates once per problem class
// and keeps the winner:
//
//   - only problems of at least kMinRows rows (below that the candidates were
//     within 1% of each other), with 256-byte aligned operands (what the
//     heuristic assumes), outside CUDA-graph capture; anything else goes to
//     cublasGemmEx unchanged;
//   - a class is (in, out, ldx, output type, accumulate or not, and the rows'
//     power-of-two bucket), tuned at the rows of its first problem;
//   - candidates are the heuristic's first kCandidates algorithms without a
//     split-K reduction (each output element is one accumulation, as with
//     cublasGemmEx's choice at these shapes); each runs once to warm up, then
//     kRounds rounds alternate cublasGemmEx and every candidate, and each
//     one's median counts;
//   - a candidate replaces cublasGemmEx only when its median is at least
//     kMinGain faster, so that noise does not pick; a candidate cuBLAS
//     refuses while it is timed drops out (counted in Choice::refused), and
//     only a failure of cublasGemmEx itself fails the GEMM;
//   - outputs that are overwritten (beta = 0) are tuned in place; an
//     accumulating GEMM (beta != 0, the residual add) is tuned into scratch
//     of at most kScratchBytes (stream-ordered, freed at once), on as many
//     rows as fit.
//
// The first problem of a class blocks the stream for its timing (about
// 0.5 s in all at 128k tokens of the 8B shape); later ones only look up. A
// class's algorithm is fixed for the tuner's life, so a process computes the
// same bits for the same problem; two processes may choose differently where
// two algorithms are within noise of each other.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/status.h"

namespace seer {

class GemmTuner {
 public:
  static constexpr int kMinRows = 16384;
  static constexpr int kCandidates = 8;
  static constexpr int kRounds = 3;
  static constexpr double kMinGain = 0.02;
  static constexpr size_t kScratchBytes = size_t{512} << 20;

  // One tuned class, for logs and tests.
  struct Choice {
    int rows = 0, in = 0, out = 0, ldx = 0;  // the problem it was tuned on
    bool accumulate = false;
    cudaDataType_t y_type = CUDA_R_16BF;
    int tuned_rows = 0;  // rows timed (fewer than `rows` in scratch)
    double default_ms = 0;  // cublasGemmEx, median
    double best_ms = 0;  // the fastest candidate, median
    int best_tile = -1;  // cublasLtMatmulTile_t of that candidate
    int candidates = 0;
    int refused = 0;  // candidates that failed to run while timed (dropped)
    bool uses_candidate = false;  // false: cublasGemmEx stays
    std::string Describe() const;
  };

  // `workspace` is cuBLAS's (the handle's own, set with cublasSetWorkspace):
  // the candidates get the same bytes. `min_gain` is kMinGain but for tests
  // (-inf: always the fastest candidate; +inf: always cublasGemmEx).
  GemmTuner(cublasHandle_t cublas, void* workspace, size_t workspace_bytes, double min_gain = kMinGain);
  ~GemmTuner();
  GemmTuner(const GemmTuner&) = delete;
  GemmTuner& operator=(const GemmTuner&) = delete;

  // LinearBf16's contract (engine/cuda/gemm.h), on `stream` (the handle's).
  Status Linear(cudaStream_t stream, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, void* y,
                cudaDataType_t y_type, float beta, int ldx = 0);

  const std::vector<Choice>& choices() const { return log_; }

  // Tests: candidates for which `refuse(index)` holds fail as if cuBLAS had
  // refused them (index in the heuristic's order, from 0).
  void RefuseCandidatesForTest(std::function<bool(int)> refuse) { refuse_for_test_ = std::move(refuse); }

 private:
  struct Entry {
    bool use_candidate = false;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int, int, int, int, bool, int>;  // in, out, ldx, y_type, accumulate, bucket

  Status Tune(cudaStream_t stream, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, void* y,
              cudaDataType_t y_type, float beta, int ldx, Entry* entry);
  Status RunCandidate(cudaStream_t stream, const cublasLtMatmulAlgo_t& algo, const __nv_bfloat16* x, int rows, int in,
                      const __nv_bfloat16* w, int out, void* y, cudaDataType_t y_type, float beta, int ldx);

  cublasHandle_t cublas_;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_;
  size_t workspace_bytes_;
  double min_gain_;
  std::map<Key, Entry> entries_;
  std::vector<Choice> log_;
  std::function<bool(int)> refuse_for_test_;
};

}  // namespace seer
