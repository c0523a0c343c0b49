// The CPU attention twins against a float64 recomputation written here, on
// random inputs of awkward shapes (odd lengths, L < 64, GQA ratios 1/4/8,
// head dims 64 and 128).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention/attention_cpu.h"
#include "kernels/common/test_util.h"

namespace seer::cpu {
namespace {

using kernel_test::MaxRelativeError;
using kernel_test::RandomVector;

// ---- float64 references -------------------------------------------------------

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

// ---- attention ----------------------------------------------------------------

const AttnCase kAttnCases[] = {
    {1, 1, 1, 64, 1},     {5, 4, 1, 64, 9},     {63, 8, 1, 64, 63},   {64, 2, 2, 128, 70},   {65, 4, 1, 128, 65},
    {130, 8, 2, 64, 200}, {200, 4, 4, 64, 201}, {333, 8, 1, 64, 333}, {97, 16, 2, 128, 100},
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
    BuildLists(
        c.num_heads, nb, [](int, int, int) { return true; }, &offsets, &indices);
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
