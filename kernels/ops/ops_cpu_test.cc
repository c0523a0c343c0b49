// Every CPU op against a float64 recomputation written here, independently of
// kernels/ops/ops_cpu, on random inputs of awkward shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/test_util.h"
#include "kernels/ops/ops_cpu.h"

namespace seer::cpu {
namespace {

using kernel_test::MaxRelativeError;
using kernel_test::RandomVector;

// ---- float64 references -------------------------------------------------------

std::vector<double> RefLinear(const std::vector<float>& x, int m, int k, const std::vector<float>& w /* [n, k] */,
                              int n, const std::vector<float>* bias) {
  std::vector<double> y(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double acc = bias ? (*bias)[j] : 0.0;
      for (int p = 0; p < k; ++p) acc += double(x[size_t(i) * k + p]) * double(w[size_t(j) * k + p]);
      y[size_t(i) * n + j] = acc;
    }
  }
  return y;
}

// ---- Linear / MatMul ------------------------------------------------------------

TEST(CpuKernels, LinearMatchesFloat64) {
  std::mt19937 rng(1);
  const int shapes[][3] = {{1, 1, 1},     {1, 200, 64},   {3, 5, 7},      {17, 33, 65},
                           {64, 128, 96}, {130, 70, 200}, {333, 128, 64}, {5, 1000, 48}};
  for (auto [m, k, n] : shapes) {
    for (bool with_bias : {false, true}) {
      for (int threads : {1, 2}) {
        auto x = RandomVector(size_t(m) * k, rng);
        auto w = RandomVector(size_t(n) * k, rng);
        auto bias = RandomVector(n, rng);
        std::vector<float> w_t(w.size());
        Transpose(w.data(), n, k, w_t.data());
        std::vector<float> y(size_t(m) * n, NAN);
        Linear(x.data(), m, k, w_t.data(), n, with_bias ? bias.data() : nullptr, y.data(), threads);
        auto want = RefLinear(x, m, k, w, n, with_bias ? &bias : nullptr);
        EXPECT_LT(MaxRelativeError(y, want), 2e-6)
            << "m=" << m << " k=" << k << " n=" << n << " bias=" << with_bias << " threads=" << threads;
      }
    }
  }
}

TEST(CpuKernels, MatMulAccumulateAddsIntoSubMatrix) {
  std::mt19937 rng(2);
  const int m = 9, n = 21, k = 13, lda = 20, ldb = 30, ldc = 25;
  auto a = RandomVector(size_t(m) * lda, rng);
  auto b = RandomVector(size_t(k) * ldb, rng);
  auto c = RandomVector(size_t(m) * ldc, rng);
  std::vector<double> want(c.begin(), c.end());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p) want[size_t(i) * ldc + j] += double(a[size_t(i) * lda + p]) * b[size_t(p) * ldb + j];
  MatMulAccumulate(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc);
  // Columns beyond n in each row of c must be untouched (they are in `want` unchanged).
  EXPECT_LT(MaxRelativeError(c, want), 2e-6);
}

TEST(CpuKernels, TransposeIsExact) {
  std::mt19937 rng(3);
  for (auto [r, c] : {std::pair{1, 1}, {3, 70}, {65, 33}, {128, 64}}) {
    auto in = RandomVector(size_t(r) * c, rng);
    std::vector<float> out(in.size());
    Transpose(in.data(), r, c, out.data());
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < c; ++j) ASSERT_EQ(out[size_t(j) * r + i], in[size_t(i) * c + j]);
  }
}

// ---- RMSNorm, RoPE, SwiGLU, embedding ---------------------------------------

TEST(CpuKernels, RmsNormMatchesFloat64) {
  std::mt19937 rng(4);
  for (int dim : {1, 7, 64, 128, 896}) {
    const int rows = 11;
    auto x = RandomVector(size_t(rows) * dim, rng, -3.0f, 3.0f);
    auto w = RandomVector(dim, rng, 0.5f, 1.5f);
    const float eps = 1e-5f;
    std::vector<float> out(x.size());
    RmsNorm(x.data(), rows, dim, w.data(), eps, out.data());
    std::vector<double> want(x.size());
    for (int r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (int i = 0; i < dim; ++i) ss += double(x[size_t(r) * dim + i]) * x[size_t(r) * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + double(eps));
      for (int i = 0; i < dim; ++i) want[size_t(r) * dim + i] = double(x[size_t(r) * dim + i]) * inv * w[i];
    }
    EXPECT_LT(MaxRelativeError(out, want), 1e-6) << "dim=" << dim;
  }
}

TEST(CpuKernels, RopeMatchesFloat64RotateHalf) {
  std::mt19937 rng(5);
  for (int head_dim : {64, 128}) {
    for (int heads : {1, 3}) {
      const int rows = 9;
      std::vector<int32_t> positions = {0, 1, 2, 63, 64, 333, 1000, 4095, 70000};
      std::vector<float> inv_freq(head_dim / 2);
      for (int i = 0; i < head_dim / 2; ++i) {
        inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / head_dim));
      }
      auto x = RandomVector(size_t(rows) * heads * head_dim, rng);
      std::vector<double> want(x.size());
      const int half = head_dim / 2;
      for (int r = 0; r < rows; ++r) {
        for (int h = 0; h < heads; ++h) {
          const float* v = x.data() + (size_t(r) * heads + h) * head_dim;
          double* o = want.data() + (size_t(r) * heads + h) * head_dim;
          for (int i = 0; i < head_dim; ++i) {
            // HF forms the angle as a float32 product (inv_freq @ position_ids);
            // everything after it is exact here.
            const int f = i % half;
            const double angle = double(float(positions[r]) * inv_freq[f]);
            const double rotated = i < half ? -double(v[i + half]) : double(v[i - half]);
            o[i] = double(v[i]) * std::cos(angle) + rotated * std::sin(angle);
          }
        }
      }
      ApplyRope(x.data(), rows, heads, head_dim, positions.data(), inv_freq.data());
      EXPECT_LT(MaxRelativeError(x, want), 1e-6) << "head_dim=" << head_dim << " heads=" << heads;
    }
  }
}

TEST(CpuKernels, SwiGluMatchesFloat64) {
  std::mt19937 rng(6);
  const size_t n = 1001;
  auto gate = RandomVector(n, rng, -12.0f, 12.0f);
  auto up = RandomVector(n, rng, -2.0f, 2.0f);
  std::vector<float> out(n);
  SwiGlu(gate.data(), up.data(), n, out.data());
  std::vector<double> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = double(gate[i]) / (1.0 + std::exp(-double(gate[i]))) * double(up[i]);
  EXPECT_LT(MaxRelativeError(out, want), 1e-6);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(out[i], want[i], 1e-6 * (1.0 + std::abs(want[i]))) << "i=" << i << " gate=" << gate[i];
  }
}

TEST(CpuKernels, EmbeddingGathersRows) {
  std::mt19937 rng(7);
  const int vocab = 50, dim = 24;
  auto table = RandomVector(size_t(vocab) * dim, rng);
  std::vector<int32_t> ids = {0, 49, 7, 7, 13};
  std::vector<float> out(ids.size() * dim);
  Embedding(table.data(), dim, ids.data(), static_cast<int>(ids.size()), out.data());
  for (size_t r = 0; r < ids.size(); ++r)
    for (int i = 0; i < dim; ++i) ASSERT_EQ(out[r * dim + i], table[size_t(ids[r]) * dim + i]);
}

TEST(CpuKernels, ArgMaxTakesFirstOfTies) {
  std::vector<float> x = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  EXPECT_EQ(ArgMax(x.data(), 5), 1);
  EXPECT_EQ(ArgMax(x.data(), 1), 0);
}

}  // namespace
}  // namespace seer::cpu
