#include "engine/cuda/gemm_tuner.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/gemm.h"

namespace seer {
namespace {

// The problem as cublasLt states it: LinearBf16's column-major view,
// y^T[out, rows] = W^T[out, in] . x^T[in, rows] (W read with OP_T).
class LtProblem {
 public:
  LtProblem(int rows, int in, int out, int ldx, cudaDataType_t y_type) {
    ok_ = cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    ok_ = ok_ && cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)) == 0 &&
          cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)) == 0 &&
          cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, in, out, in) == 0 &&
          cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, in, rows, ldx) == 0 &&
          cublasLtMatrixLayoutCreate(&c_, y_type, out, rows, out) == 0;
  }
  ~LtProblem() {
    if (c_ != nullptr) cublasLtMatrixLayoutDestroy(c_);
    if (b_ != nullptr) cublasLtMatrixLayoutDestroy(b_);
    if (a_ != nullptr) cublasLtMatrixLayoutDestroy(a_);
    if (op_ != nullptr) cublasLtMatmulDescDestroy(op_);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;

  bool ok() const { return ok_; }
  cublasLtMatmulDesc_t op() const { return op_; }
  cublasLtMatrixLayout_t a() const { return a_; }
  cublasLtMatrixLayout_t b() const { return b_; }
  cublasLtMatrixLayout_t c() const { return c_; }

 private:
  bool ok_ = false;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
};

// A few cublasLtMatmulTile_t values by their shape, for the log line.
std::string TileName(int tile) {
  switch (tile) {
    case CUBLASLT_MATMUL_TILE_128x128: return "128x128";
    case CUBLASLT_MATMUL_TILE_128x256: return "128x256";
    case CUBLASLT_MATMUL_TILE_256x128: return "256x128";
    case CUBLASLT_MATMUL_TILE_128x160: return "128x160";
    case CUBLASLT_MATMUL_TILE_192x128: return "192x128";
    case CUBLASLT_MATMUL_TILE_128x192: return "128x192";
    case CUBLASLT_MATMUL_TILE_168x128: return "168x128";
    case CUBLASLT_MATMUL_TILE_176x128: return "176x128";
    case CUBLASLT_MATMUL_TILE_192x192: return "192x192";
    case CUBLASLT_MATMUL_TILE_320x128: return "320x128";
    case CUBLASLT_MATMUL_TILE_256x96: return "256x96";
    default: {
      char id[16];  // (not "#" + std::to_string: GCC 12 warns -Wrestrict on it)
      std::snprintf(id, sizeof(id), "#%d", tile);
      return id;
    }
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Elapsed milliseconds of `launch` on `stream`, between two events.
template <typename F>
StatusOr<double> TimeOnce(cudaStream_t stream, cudaEvent_t start, cudaEvent_t stop, F&& launch) {
  SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(start, stream));
  SEER_RETURN_IF_ERROR(launch());
  SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(stop, stream));
  SEER_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(stop));
  float ms = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, start, stop));
  return static_cast<double>(ms);
}

}  // namespace

std::string GemmTuner::Choice::Describe() const {
  char line[320];
  if (candidates > 0 && refused == candidates) {
    std::snprintf(line, sizeof(line),
                  "GEMM %d x %d x %d (ldx %d, %s%s), timed on %d rows: cublasGemmEx %.3f ms, all %d cublasLt "
                  "candidates refused to run: keeps cublasGemmEx",
                  rows, out, in, ldx, y_type == CUDA_R_32F ? "f32" : "bf16", accumulate ? " +=" : "", tuned_rows,
                  default_ms, candidates);
    return line;
  }
  char refused_note[32] = "";
  if (refused > 0) std::snprintf(refused_note, sizeof(refused_note), " (%d refused)", refused);
  const std::string tile = best_tile >= 0 ? TileName(best_tile) : "-";
  std::snprintf(line, sizeof(line),
                "GEMM %d x %d x %d (ldx %d, %s%s), timed on %d rows: cublasGemmEx %.3f ms, best of %d cublasLt "
                "candidates%s %.3f ms (tile %s): %s",
                rows, out, in, ldx, y_type == CUDA_R_32F ? "f32" : "bf16", accumulate ? " +=" : "", tuned_rows,
                default_ms, candidates, refused_note, best_ms, tile.c_str(),
                uses_candidate ? "uses the candidate" : "keeps cublasGemmEx");
  return line;
}

GemmTuner::GemmTuner(cublasHandle_t cublas, void* workspace, size_t workspace_bytes, double min_gain)
    : cublas_(cublas), workspace_(workspace), workspace_bytes_(workspace_bytes), min_gain_(min_gain) {
  if (cublasLtCreate(&lt_) != CUBLAS_STATUS_SUCCESS) lt_ = nullptr;
}

GemmTuner::~GemmTuner() {
  if (lt_ != nullptr) cublasLtDestroy(lt_);
}

Status GemmTuner::RunCandidate(cudaStream_t stream, const cublasLtMatmulAlgo_t& algo, const __nv_bfloat16* x, int rows,
                               int in, const __nv_bfloat16* w, int out, void* y, cudaDataType_t y_type, float beta,
                               int ldx) {
  LtProblem p(rows, in, out, ldx, y_type);
  if (!p.ok()) return Internal("GemmTuner: cublasLt descriptors for " + std::to_string(rows) + " rows");
  const float alpha = 1.0f;
  SEER_RETURN_IF_CUBLAS_ERROR(cublasLtMatmul(lt_, p.op(), &alpha, w, p.a(), x, p.b(), &beta, y, p.c(), y, p.c(), &algo,
                                             workspace_, workspace_bytes_, stream));
  return OkStatus();
}

Status GemmTuner::Linear(cudaStream_t stream, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                         void* y, cudaDataType_t y_type, float beta, int ldx) {
  if (ldx == 0) ldx = in;
  // cublasLt's heuristic assumes 256-byte aligned operands (its default
  // preference): others, and small problems, stay with cublasGemmEx.
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 256 == 0; };
  if (rows < kMinRows || lt_ == nullptr || ldx < in || !aligned(x) || !aligned(w) || !aligned(y)) {
    return LinearBf16(cublas_, x, rows, in, w, out, y, y_type, beta, ldx);
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return LinearBf16(cublas_, x, rows, in, w, out, y, y_type, beta, ldx);
  const Key key{in, out, ldx, static_cast<int>(y_type), beta != 0.0f, std::bit_width(static_cast<unsigned>(rows))};
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    Entry entry;
    SEER_RETURN_IF_ERROR(Tune(stream, x, rows, in, w, out, y, y_type, beta, ldx, &entry));
    it = entries_.emplace(key, entry).first;
  }
  if (!it->second.use_candidate) return LinearBf16(cublas_, x, rows, in, w, out, y, y_type, beta, ldx);
  return RunCandidate(stream, it->second.algo, x, rows, in, w, out, y, y_type, beta, ldx);
}

Status GemmTuner::Tune(cudaStream_t stream, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                       void* y, cudaDataType_t y_type, float beta, int ldx, Entry* entry) {
  Choice choice;
  choice.rows = rows;
  choice.in = in;
  choice.out = out;
  choice.ldx = ldx;
  choice.accumulate = beta != 0.0f;
  choice.y_type = y_type;

  // Where the timed runs write: y itself when it is overwritten anyway,
  // else scratch over as many rows as kScratchBytes holds (freed on every
  // way out).
  const size_t row_bytes = static_cast<size_t>(out) * (y_type == CUDA_R_32F ? 4 : 2);
  int tuned_rows = rows;
  void* target = y;
  void* scratch = nullptr;
  struct FreeScratch {
    void*& ptr;
    cudaStream_t stream;
    ~FreeScratch() {
      if (ptr != nullptr) (void)cudaFreeAsync(ptr, stream);
    }
  } free_scratch{scratch, stream};
  if (choice.accumulate) {
    tuned_rows = static_cast<int>(std::min<size_t>(rows, kScratchBytes / row_bytes));
    if (tuned_rows < kMinRows || cudaMallocAsync(&scratch, tuned_rows * row_bytes, stream) != cudaSuccess) {
      (void)cudaGetLastError();  // no memory to spare: keep cublasGemmEx for this class
      log_.push_back(choice);
      return OkStatus();
    }
    SEER_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(scratch, 0, tuned_rows * row_bytes, stream));
    target = scratch;
  }
  choice.tuned_rows = tuned_rows;

  std::vector<cublasLtMatmulHeuristicResult_t> found(kCandidates);
  int n = 0;
  {
    LtProblem p(tuned_rows, in, out, ldx, y_type);
    cublasLtMatmulPreference_t pref = nullptr;
    const uint32_t no_reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
    if (p.ok() && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS) {
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                           sizeof(workspace_bytes_));
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &no_reduction,
                                           sizeof(no_reduction));
      if (cublasLtMatmulAlgoGetHeuristic(lt_, p.op(), p.a(), p.b(), p.c(), p.c(), pref, kCandidates, found.data(),
                                         &n) != CUBLAS_STATUS_SUCCESS) {
        n = 0;
      }
      cublasLtMatmulPreferenceDestroy(pref);
    }
  }
  found.resize(n);
  std::erase_if(found, [](const cublasLtMatmulHeuristicResult_t& r) { return r.state != CUBLAS_STATUS_SUCCESS; });
  choice.candidates = static_cast<int>(found.size());

  Status status = OkStatus();
  if (!found.empty()) {
    cudaEvent_t start = nullptr, stop = nullptr;
    if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
      if (start != nullptr) cudaEventDestroy(start);
      return Internal("GemmTuner: cudaEventCreate: " + std::string(cudaGetErrorString(cudaGetLastError())));
    }
    auto run = [&](int i) -> Status {
      if (i < 0) return LinearBf16(cublas_, x, tuned_rows, in, w, out, target, y_type, beta, ldx);
      if (refuse_for_test_ && refuse_for_test_(i)) return Internal("GemmTuner: candidate refused for a test");
      return RunCandidate(stream, found[i].algo, x, tuned_rows, in, w, out, target, y_type, beta, ldx);
    };
    const int count = static_cast<int>(found.size());
    std::vector<std::vector<double>> ms(count + 1);
    std::vector<bool> refused(count, false);
    for (int round = 0; round <= kRounds && status.ok(); ++round) {
      for (int i = -1; i < count && status.ok(); ++i) {
        if (i >= 0 && refused[i]) continue;
        Status ran = OkStatus();  // the GEMM's own status, apart from the events'
        StatusOr<double> t = TimeOnce(stream, start, stop, [&] {
          ran = run(i);
          return ran;
        });
        if (!t.ok() && i >= 0 && !ran.ok()) {
          (void)cudaGetLastError();  // a refused candidate drops out; cublasGemmEx still runs
          refused[i] = true;
          ++choice.refused;
        } else if (!t.ok()) {
          status = t.status();
        } else if (round > 0) {  // round 0 warms up
          ms[i + 1].push_back(*t);
        }
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    int best = -1;
    for (int i = 0; i < count && status.ok(); ++i) {
      if (!refused[i] && (best < 0 || Median(ms[i + 1]) < Median(ms[best + 1]))) best = i;
    }
    if (status.ok()) choice.default_ms = Median(ms[0]);
    if (best >= 0) {
      choice.best_ms = Median(ms[best + 1]);
      size_t written = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&found[best].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &choice.best_tile,
                                           sizeof(choice.best_tile), &written);
      choice.uses_candidate = choice.best_ms < (1.0 - min_gain_) * choice.default_ms;
      entry->use_candidate = choice.uses_candidate;
      entry->algo = found[best].algo;
    }
  }
  if (scratch != nullptr) {
    const cudaError_t freed = cudaFreeAsync(scratch, stream);
    scratch = nullptr;
    SEER_RETURN_IF_CUDA_ERROR(freed);
  }
  SEER_RETURN_IF_ERROR(status);
  log_.push_back(choice);
  std::fprintf(stderr, "seer: %s\n", choice.Describe().c_str());
  return OkStatus();
}

}  // namespace seer
