// Every CPU op against a float64 recomputation written here, independently of
// kernels/cpu, on random inputs of awkward shapes (odd lengths, L < 64, GQA
// ratios 1/4/8, head dims 64 and 128).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace seer::cpu {
namespace {

std::vector<float> RandomVector(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Largest absolute error over the largest absolute reference value: a
// scale-free measure that a wrong index or a missing term cannot pass.
double MaxRelativeError(const std::vector<float>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_err = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - want[i]));
    max_ref = std::max(max_ref, std::abs(want[i]));
  }
  return max_err / std::max(max_ref, 1e-30);
}

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

struct AttnCase {
  int seq_len, num_heads, num_kv_heads, head_dim, kv_stride;
};

std::string Describe(const AttnCase& c) {
  return "L=" + std::to_string(c.seq_len) + " Hq=" + std::to_string(c.num_heads) +
         " Hkv=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) +
         " stride=" + std::to_string(c.kv_stride);
}

// Attention where query i sees key j when j <= i and allowed(h, i, j).
// q/out [L, Hq, D], k/v [Hkv, stride, D]. Rows with nothing allowed are 0.
template <typename Allowed>
std::vector<double> RefAttention(const AttnCase& c, const std::vector<float>& q, const std::vector<float>& k,
                                 const std::vector<float>& v, Allowed allowed) {
  const int D = c.head_dim;
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> out(size_t(c.seq_len) * c.num_heads * D, 0.0);
  for (int h = 0; h < c.num_heads; ++h) {
    const int kvh = h / (c.num_heads / c.num_kv_heads);
    for (int i = 0; i < c.seq_len; ++i) {
      std::vector<double> s(i + 1, -INFINITY);
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        if (!allowed(h, i, j)) continue;
        double dot = 0.0;
        for (int d = 0; d < D; ++d) {
          dot += double(q[(size_t(i) * c.num_heads + h) * D + d]) * double(k[(size_t(kvh) * c.kv_stride + j) * D + d]);
        }
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      if (mx == -INFINITY) continue;
      double sum = 0.0;
      for (int j = 0; j <= i; ++j) sum += s[j] == -INFINITY ? 0.0 : std::exp(s[j] - mx);
      for (int j = 0; j <= i; ++j) {
        if (s[j] == -INFINITY) continue;
        const double p = std::exp(s[j] - mx) / sum;
        for (int d = 0; d < D; ++d) {
          out[(size_t(i) * c.num_heads + h) * D + d] += p * double(v[(size_t(kvh) * c.kv_stride + j) * D + d]);
        }
      }
    }
  }
  return out;
}

// ---- Linear / MatMul ------------------------------------------------------------

TEST(CpuKernels, LinearMatchesFloat64) {
  std::mt19937 rng(1);
  const int shapes[][3] = {{1, 1, 1}, {1, 200, 64}, {3, 5, 7}, {17, 33, 65}, {64, 128, 96}, {130, 70, 200},
                           {333, 128, 64}, {5, 1000, 48}};
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

// ---- attention ----------------------------------------------------------------

const AttnCase kAttnCases[] = {
    {1, 1, 1, 64, 1},      {5, 4, 1, 64, 9},      {63, 8, 1, 64, 63},   {64, 2, 2, 128, 70},
    {65, 4, 1, 128, 65},   {130, 8, 2, 64, 200},  {200, 4, 4, 64, 201}, {333, 8, 1, 64, 333},
    {97, 16, 2, 128, 100},
};

struct AttnInputs {
  std::vector<float> q, k, v;
};

AttnInputs MakeInputs(const AttnCase& c, std::mt19937& rng) {
  // Larger queries make the softmax peaked, so errors in the max or the
  // rescaling would show.
  return {RandomVector(size_t(c.seq_len) * c.num_heads * c.head_dim, rng, -3.0f, 3.0f),
          RandomVector(size_t(c.num_kv_heads) * c.kv_stride * c.head_dim, rng),
          RandomVector(size_t(c.num_kv_heads) * c.kv_stride * c.head_dim, rng)};
}

AttentionShape ShapeOf(const AttnCase& c) {
  return {c.seq_len, c.num_heads, c.num_kv_heads, c.head_dim, c.kv_stride, 1.0f / std::sqrt(float(c.head_dim))};
}

TEST(CpuKernels, CausalAttentionMatchesFloat64) {
  std::mt19937 rng(8);
  for (const AttnCase& c : kAttnCases) {
    auto in = MakeInputs(c, rng);
    auto want = RefAttention(c, in.q, in.k, in.v, [](int, int, int) { return true; });
    for (int threads : {1, 2, 3}) {
      std::vector<float> out(in.q.size(), NAN);
      CausalAttention(ShapeOf(c), in.q.data(), in.k.data(), in.v.data(), out.data(), threads);
      EXPECT_LT(MaxRelativeError(out, want), 1e-5) << Describe(c) << " threads=" << threads;
    }
  }
}

// Block lists for `keep(h, qb, kb)` over the causal triangle.
template <typename Keep>
void BuildLists(int heads, int nb, Keep keep, std::vector<int32_t>* offsets, std::vector<int32_t>* indices) {
  offsets->assign(1, 0);
  indices->clear();
  for (int h = 0; h < heads; ++h) {
    for (int qb = 0; qb < nb; ++qb) {
      for (int kb = 0; kb <= qb; ++kb)
        if (keep(h, qb, kb)) indices->push_back(kb);
      offsets->push_back(static_cast<int32_t>(indices->size()));
    }
  }
}

TEST(CpuKernels, BlockSparseWithEveryBlockEqualsCausal) {
  std::mt19937 rng(9);
  for (const AttnCase& c : kAttnCases) {
    auto in = MakeInputs(c, rng);
    const int nb = (c.seq_len + 63) / 64;
    std::vector<int32_t> offsets, indices;
    BuildLists(c.num_heads, nb, [](int, int, int) { return true; }, &offsets, &indices);
    std::vector<float> dense(in.q.size(), NAN), sparse(in.q.size(), NAN);
    CausalAttention(ShapeOf(c), in.q.data(), in.k.data(), in.v.data(), dense.data(), 1);
    BlockSparseAttention(ShapeOf(c), 64, offsets.data(), indices.data(), in.q.data(), in.k.data(), in.v.data(),
                         sparse.data(), 2);
    std::vector<double> dense_d(dense.begin(), dense.end());
    EXPECT_LT(MaxRelativeError(sparse, dense_d), 1e-6) << Describe(c);
    auto want = RefAttention(c, in.q, in.k, in.v, [](int, int, int) { return true; });
    EXPECT_LT(MaxRelativeError(sparse, want), 1e-5) << Describe(c);
  }
}

TEST(CpuKernels, BlockSparseRandomMasksMatchMaskedSoftmax) {
  std::mt19937 rng(10);
  for (int block_size : {64, 32, 16}) {
    for (const AttnCase& c : kAttnCases) {
      auto in = MakeInputs(c, rng);
      const int nb = (c.seq_len + block_size - 1) / block_size;
      // Per-head random masks; about a fifth of the rows are left empty
      // altogether (their output must be zero), the rest keep ~half.
      std::bernoulli_distribution coin(0.5), empty_row(0.2);
      std::vector<uint8_t> keep(size_t(c.num_heads) * nb * nb, 0);
      for (int h = 0; h < c.num_heads; ++h)
        for (int qb = 0; qb < nb; ++qb) {
          if (empty_row(rng)) continue;
          for (int kb = 0; kb <= qb; ++kb) keep[(size_t(h) * nb + qb) * nb + kb] = coin(rng);
        }
      auto kept = [&](int h, int qb, int kb) { return keep[(size_t(h) * nb + qb) * nb + kb] != 0; };
      std::vector<int32_t> offsets, indices;
      BuildLists(c.num_heads, nb, kept, &offsets, &indices);
      std::vector<float> out(in.q.size(), NAN);
      BlockSparseAttention(ShapeOf(c), block_size, offsets.data(), indices.data(), in.q.data(), in.k.data(),
                           in.v.data(), out.data(), 2);
      auto want = RefAttention(c, in.q, in.k, in.v,
                               [&](int h, int i, int j) { return kept(h, i / block_size, j / block_size); });
      EXPECT_LT(MaxRelativeError(out, want), 1e-5) << Describe(c) << " block_size=" << block_size;
    }
  }
}

TEST(CpuKernels, DecodeAttentionMatchesFloat64) {
  std::mt19937 rng(11);
  for (const AttnCase& c : kAttnCases) {
    auto in = MakeInputs(c, rng);
    for (int pos : {0, c.seq_len / 2, c.seq_len - 1}) {
      // The query of position `pos`, alone.
      std::vector<float> q(in.q.begin() + size_t(pos) * c.num_heads * c.head_dim,
                           in.q.begin() + size_t(pos + 1) * c.num_heads * c.head_dim);
      std::vector<float> out(q.size(), NAN);
      DecodeAttention(ShapeOf(c), pos, q.data(), in.k.data(), in.v.data(), out.data());
      auto full = RefAttention(c, in.q, in.k, in.v, [](int, int, int) { return true; });
      std::vector<double> want(full.begin() + size_t(pos) * c.num_heads * c.head_dim,
                               full.begin() + size_t(pos + 1) * c.num_heads * c.head_dim);
      EXPECT_LT(MaxRelativeError(out, want), 1e-5) << Describe(c) << " pos=" << pos;
    }
  }
}

}  // namespace
}  // namespace seer::cpu
