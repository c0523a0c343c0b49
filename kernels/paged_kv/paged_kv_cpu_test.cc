// The paged KV twins against a float64 recomputation over a contiguous copy
// of the same keys: random page assignments (pages out of order, shared pool,
// partial last page), GQA 1/4/8, head dims 64 and 128, contexts from 1 to
// past several pages.
#include "kernels/paged_kv/paged_kv_cpu.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/test_util.h"

namespace seer::cpu {
namespace {

using kernel_test::MaxRelativeError;
using kernel_test::RandomVector;

struct Case {
  int hq, hkv, d, page, context;
};

TEST(PagedKvCpu, DecodeAttentionMatchesFloat64OverShuffledPages) {
  const Case cases[] = {{1, 1, 64, 16, 1},     {4, 1, 64, 16, 17},   {8, 2, 128, 64, 64},   {8, 8, 64, 64, 65},
                        {16, 2, 128, 32, 300}, {4, 4, 128, 16, 513}, {32, 8, 128, 64, 1000}};
  std::mt19937 rng(11);
  for (const Case& c : cases) {
    SCOPED_TRACE("Hq=" + std::to_string(c.hq) + " Hkv=" + std::to_string(c.hkv) + " D=" + std::to_string(c.d) +
                 " page=" + std::to_string(c.page) + " context=" + std::to_string(c.context));
    PagedShape s{c.hq, c.hkv, c.d, c.page, 1.0f / std::sqrt(float(c.d))};
    const int pages_needed = (c.context + c.page - 1) / c.page;
    const int pool_pages = pages_needed + 5;
    std::vector<int32_t> table(pool_pages);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    table.resize(pages_needed);
    // Contiguous keys [Hkv, context, D], scattered into the pages.
    const std::vector<float> k = RandomVector(size_t(c.hkv) * c.context * c.d, rng);
    const std::vector<float> v = RandomVector(size_t(c.hkv) * c.context * c.d, rng);
    std::vector<float> kp(size_t(pool_pages) * c.hkv * c.page * c.d, NAN), vp(kp.size(), NAN);
    ScatterToPages(s, k.data(), 0, c.context, table.data(), kp.data());
    ScatterToPages(s, v.data(), 0, c.context, table.data(), vp.data());
    std::vector<float> back(k.size());
    GatherFromPages(s, kp.data(), table.data(), 0, c.context, back.data());
    EXPECT_EQ(back, k);

    const std::vector<float> q = RandomVector(size_t(c.hq) * c.d, rng, -3.0f, 3.0f);
    std::vector<float> out(size_t(c.hq) * c.d, NAN);
    PagedDecodeAttention(s, q.data(), kp.data(), vp.data(), table.data(), c.context, out.data());

    std::vector<double> want(out.size(), 0.0);
    for (int h = 0; h < c.hq; ++h) {
      const int kvh = h / (c.hq / c.hkv);
      std::vector<double> sc(c.context);
      double mx = -INFINITY;
      for (int t = 0; t < c.context; ++t) {
        double dot = 0.0;
        for (int i = 0; i < c.d; ++i) dot += double(q[h * c.d + i]) * k[(size_t(kvh) * c.context + t) * c.d + i];
        sc[t] = dot / std::sqrt(double(c.d));
        mx = std::max(mx, sc[t]);
      }
      double sum = 0.0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (int t = 0; t < c.context; ++t) {
        for (int i = 0; i < c.d; ++i) want[h * c.d + i] += sc[t] / sum * v[(size_t(kvh) * c.context + t) * c.d + i];
      }
    }
    EXPECT_LT(MaxRelativeError(out, want), 1e-5);
  }
}

TEST(PagedKvCpu, EmptyContextGivesZeros) {
  PagedShape s{4, 2, 64, 16, 0.125f};
  std::vector<float> q(4 * 64, 1.0f), out(4 * 64, NAN), pages(16 * 2 * 64, 1.0f);
  const int32_t table[] = {0};
  PagedDecodeAttention(s, q.data(), pages.data(), pages.data(), table, 0, out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(PagedKvCpu, WriteKvPagedLandsAtThePosition) {
  PagedShape s{2, 2, 64, 16, 0.125f};
  std::mt19937 rng(3);
  const int32_t table[] = {3, 0, 2};
  std::vector<float> kp(4 * 2 * 16 * 64, 0.0f), vp(kp.size(), 0.0f);
  for (int pos : {0, 15, 16, 33, 47}) {
    const std::vector<float> k = RandomVector(2 * 64, rng), v = RandomVector(2 * 64, rng);
    WriteKvPaged(s, k.data(), v.data(), table, pos, kp.data(), vp.data());
    std::vector<float> kb(2 * 64), vb(2 * 64);
    GatherFromPages(s, kp.data(), table, pos, 1, kb.data());
    GatherFromPages(s, vp.data(), table, pos, 1, vb.data());
    EXPECT_EQ(kb, k) << pos;
    EXPECT_EQ(vb, v) << pos;
  }
}

}  // namespace
}  // namespace seer::cpu
