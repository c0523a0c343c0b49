#include "kernels/ops/ops_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/common/parallel.h"

namespace seer::cpu {
namespace {

// The register tile of MatMulAccumulate: kMr rows of c by Nr columns, held
// in vectors (GCC/Clang vector extensions). Each step of the k loop loads one
// row of b into vectors and does kMr broadcast multiply-adds per vector.
// Two instances: 8-float vectors, 16 columns for CPUs with AVX2 (chosen at
// run time), and 4-float vectors, 8 columns, that any x86-64 or ARM core runs.
constexpr int kMr = 4;
using Vec4 = float __attribute__((vector_size(16)));
using Vec8 = float __attribute__((vector_size(32)));

template <typename Vec, int Nr>
[[gnu::always_inline]] inline void TileBody(int k, const float* a, int lda, const float* b, int ldb, float* c,
                                            int ldc) {
  constexpr int kLanes = sizeof(Vec) / sizeof(float);
  constexpr int kVecs = Nr / kLanes;
  Vec acc[kMr][kVecs] = {};
  for (int p = 0; p < k; ++p) {
    const float* brow = b + static_cast<size_t>(p) * ldb;
    Vec bv[kVecs];
    for (int v = 0; v < kVecs; ++v) std::memcpy(&bv[v], brow + v * kLanes, sizeof(Vec));
    for (int i = 0; i < kMr; ++i) {
      const float ai = a[static_cast<size_t>(i) * lda + p];
      for (int v = 0; v < kVecs; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < kMr; ++i) {
    float* crow = c + static_cast<size_t>(i) * ldc;
    for (int v = 0; v < kVecs; ++v) {
      Vec cv;
      std::memcpy(&cv, crow + v * kLanes, sizeof(Vec));
      cv += acc[i][v];
      std::memcpy(crow + v * kLanes, &cv, sizeof(Vec));
    }
  }
}

struct PortableTile {
  static constexpr int kNr = 8;
  static void Run(int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
    TileBody<Vec4, kNr>(k, a, lda, b, ldb, c, ldc);
  }
};

#if defined(__x86_64__)
struct Avx2Tile {
  static constexpr int kNr = 16;
  __attribute__((target("avx2"))) static void Run(int k, const float* a, int lda, const float* b, int ldb, float* c,
                                                  int ldc) {
    TileBody<Vec8, kNr>(k, a, lda, b, ldb, c, ldc);
  }
};

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

// The ragged edge: mr <= kMr rows, nr <= Nr columns, scalar.
template <int Nr>
void EdgeTile(int mr, int nr, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  float acc[kMr][Nr] = {};
  for (int p = 0; p < k; ++p) {
    const float* brow = b + static_cast<size_t>(p) * ldb;
    for (int i = 0; i < mr; ++i) {
      const float ai = a[static_cast<size_t>(i) * lda + p];
      for (int j = 0; j < nr; ++j) acc[i][j] += ai * brow[j];
    }
  }
  for (int i = 0; i < mr; ++i) {
    float* crow = c + static_cast<size_t>(i) * ldc;
    for (int j = 0; j < nr; ++j) crow[j] += acc[i][j];
  }
}

// Column panels outside, row tiles inside: the k x Nr panel of b stays in
// cache while every row tile of a streams past it.
template <typename Tile>
void MatMulTiled(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  constexpr int kNr = Tile::kNr;
  for (int j0 = 0; j0 < n; j0 += kNr) {
    const int nr = std::min(kNr, n - j0);
    for (int i0 = 0; i0 < m; i0 += kMr) {
      const int mr = std::min(kMr, m - i0);
      const float* at = a + static_cast<size_t>(i0) * lda;
      float* ct = c + static_cast<size_t>(i0) * ldc + j0;
      if (mr == kMr && nr == kNr) {
        Tile::Run(k, at, lda, b + j0, ldb, ct, ldc);
      } else {
        EdgeTile<kNr>(mr, nr, k, at, lda, b + j0, ldb, ct, ldc);
      }
    }
  }
}

// Rows and columns of y per Linear task, and the work below which a Linear
// runs on the calling thread alone (thread start-up would cost more).
constexpr int kLinearRows = 64;
constexpr int kLinearCols = 256;
constexpr double kMinParallelMacs = 1 << 18;

}  // namespace

void MatMulAccumulate(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
#if defined(__x86_64__)
  if (HasAvx2()) return MatMulTiled<Avx2Tile>(m, n, k, a, lda, b, ldb, c, ldc);
#endif
  MatMulTiled<PortableTile>(m, n, k, a, lda, b, ldb, c, ldc);
}

void Linear(const float* x, int m, int k, const float* w_t, int n, const float* bias, float* y, int num_threads) {
  const int row_tasks = (m + kLinearRows - 1) / kLinearRows;
  const int col_tasks = (n + kLinearCols - 1) / kLinearCols;
  const double macs = static_cast<double>(m) * n * k;
  const int threads = macs < kMinParallelMacs ? 1 : num_threads;
  ParallelFor(row_tasks * col_tasks, threads, [&](int task) {
    const int i0 = (task / col_tasks) * kLinearRows;
    const int j0 = (task % col_tasks) * kLinearCols;
    const int rows = std::min(kLinearRows, m - i0);
    const int cols = std::min(kLinearCols, n - j0);
    for (int i = i0; i < i0 + rows; ++i) {
      float* yrow = y + static_cast<size_t>(i) * n + j0;
      if (bias != nullptr) {
        std::memcpy(yrow, bias + j0, sizeof(float) * cols);
      } else {
        std::memset(yrow, 0, sizeof(float) * cols);
      }
    }
    MatMulAccumulate(rows, cols, k, x + static_cast<size_t>(i0) * k, k, w_t + j0, n,
                     y + static_cast<size_t>(i0) * n + j0, n);
  });
}

void Transpose(const float* in, int rows, int cols, float* out) {
  constexpr int kTile = 32;
  for (int r0 = 0; r0 < rows; r0 += kTile) {
    for (int c0 = 0; c0 < cols; c0 += kTile) {
      const int r1 = std::min(rows, r0 + kTile);
      const int c1 = std::min(cols, c0 + kTile);
      for (int r = r0; r < r1; ++r) {
        for (int c = c0; c < c1; ++c) out[static_cast<size_t>(c) * rows + r] = in[static_cast<size_t>(r) * cols + c];
      }
    }
  }
}

void RmsNorm(const float* x, int rows, int dim, const float* weight, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* outr = out + static_cast<size_t>(r) * dim;
    double sum_sq = 0.0;
    for (int i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(sum_sq / dim);
    const float inv_rms = 1.0f / std::sqrt(variance + eps);
    // HF: weight * (x * rsqrt(variance + eps)), in that order.
    for (int i = 0; i < dim; ++i) outr[i] = weight[i] * (xr[i] * inv_rms);
  }
}

void ApplyRope(float* x, int rows, int num_heads, int head_dim, const int32_t* positions, const float* inv_freq) {
  const int half = head_dim / 2;
  std::vector<float> cos_v(half), sin_v(half);
  for (int r = 0; r < rows; ++r) {
    const float pos = static_cast<float>(positions[r]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cos_v[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_v[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    for (int h = 0; h < num_heads; ++h) {
      float* v = x + (static_cast<size_t>(r) * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float lo = v[i];
        const float hi = v[i + half];
        // rotate_half(v) = [-hi, lo]; cos and sin repeat over both halves.
        v[i] = lo * cos_v[i] - hi * sin_v[i];
        v[i + half] = hi * cos_v[i] + lo * sin_v[i];
      }
    }
  }
}

void SwiGlu(const float* gate, const float* up, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void Embedding(const float* table, int dim, const int32_t* ids, int n, float* out) {
  for (int r = 0; r < n; ++r) {
    std::memcpy(out + static_cast<size_t>(r) * dim, table + static_cast<size_t>(ids[r]) * dim, sizeof(float) * dim);
  }
}

void AddInPlace(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

int ArgMax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

}  // namespace seer::cpu
