// The Hopper GEMM against a float64 CPU recomputation, and its block pools
// against the gate's CPU pooling rule applied to the C it stored. Skips
// without an sm_90a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "kernels/common/gpu_test_util.h"
#include "kernels/gemm/gemm_sm90.h"

namespace seer::cuda {
namespace {

using gpu_test::DevBuf;

struct Shape {
  int m, n, k;
};

std::string Name(const Shape& s) { return std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k); }

class GemmSm90Test : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << why;
    if (!GemmSm90Available()) GTEST_SKIP() << "no sm_90a device";
  }
};

std::vector<__nv_bfloat16> Random(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<__nv_bfloat16> out(n);
  for (auto& x : out) x = __float2bfloat16(u(rng));
  return out;
}

float F(__nv_bfloat16 x) { return __bfloat162float(x); }

// Runs the GEMM on random inputs with `kind`'s pool (outputs poisoned) and
// checks C against float64 and the pool against C's stored bits, pooled as
// the gate's CPU twin pools (token order, double sums, NaN-free inputs).
void Check(const Shape& s, GemmPool::Kind kind, int head_dim) {
  SCOPED_TRACE(Name(s));
  const auto a = Random(size_t(s.m) * s.k, 7 + s.m, 1.0f);
  const auto b = Random(size_t(s.n) * s.k, 11 + s.n, 1.0f);
  DevBuf da(a.size() * 2), db(b.size() * 2), dc(size_t(s.m) * s.n * 2);
  const int nb = (s.m + 63) / 64;
  const size_t pool_floats = size_t(nb) * s.n * (kind == GemmPool::Kind::kMaxMinMean ? 3 : 1);
  DevBuf dp(pool_floats * 4);
  ASSERT_TRUE(da.ok() && db.ok() && dc.ok() && dp.ok());
  ASSERT_CUDA(da.Upload(a.data(), a.size() * 2));
  ASSERT_CUDA(db.Upload(b.data(), b.size() * 2));
  GemmPool pool;
  pool.kind = kind;
  pool.out = kind == GemmPool::Kind::kNone ? nullptr : dp.get<float>();
  pool.head_dim = head_dim;
  ASSERT_CUDA(GemmBf16Sm90(da.get<__nv_bfloat16>(), db.get<__nv_bfloat16>(), dc.get<__nv_bfloat16>(), s.m, s.n, s.k,
                           pool, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<__nv_bfloat16> c(size_t(s.m) * s.n);
  ASSERT_CUDA(dc.Download(c.data(), c.size() * 2));

  // C: within bf16's rounding of the float64 product (plus float32
  // accumulation's error, far smaller at these k).
  int bad = 0;
  for (int i = 0; i < s.m; ++i) {
    for (int j = 0; j < s.n; ++j) {
      double ref = 0, mag = 0;
      for (int t = 0; t < s.k; ++t) {
        const double p = double(F(a[size_t(i) * s.k + t])) * F(b[size_t(j) * s.k + t]);
        ref += p;
        mag += std::abs(p);
      }
      const double got = F(c[size_t(i) * s.n + j]);
      const double tol = std::abs(ref) * (1.0 / 256) + mag * 1e-6 + 1e-6;
      if (!(std::abs(got - ref) <= tol) && ++bad <= 5) {
        ADD_FAILURE() << "C[" << i << "][" << j << "] = " << got << ", float64 " << ref;
      }
    }
  }
  EXPECT_EQ(bad, 0);
  if (kind == GemmPool::Kind::kNone) return;

  std::vector<float> got(pool_floats);
  ASSERT_CUDA(dp.Download(got.data(), got.size() * 4));
  int pool_bad = 0;
  for (int blk = 0; blk < nb; ++blk) {
    const int t0 = blk * 64, t1 = std::min(s.m, t0 + 64);
    for (int j = 0; j < s.n; ++j) {
      double sum = 0;
      float mx = F(c[size_t(t0) * s.n + j]), mn = mx;
      for (int t = t0; t < t1; ++t) {
        const float v = F(c[size_t(t) * s.n + j]);
        sum += v;
        if (v > mx) mx = v;
        if (v < mn) mn = v;
      }
      const float mean = static_cast<float>(sum / (t1 - t0));
      if (kind == GemmPool::Kind::kMean) {
        const float g = got[size_t(blk) * s.n + j];
        if (std::memcmp(&g, &mean, 4) != 0 && ++pool_bad <= 5) {
          ADD_FAILURE() << "mean[" << blk << "][" << j << "] = " << g << ", want " << mean;
        }
      } else {
        const int h = j / head_dim, ch = j % head_dim;
        const float* o = got.data() + (size_t(blk) * (s.n / head_dim) + h) * 3 * head_dim + ch;
        const bool same = o[0] == mx && o[head_dim] == mn && std::memcmp(&o[2 * head_dim], &mean, 4) == 0;
        if (!same && ++pool_bad <= 5) {
          ADD_FAILURE() << "block " << blk << " column " << j << ": max/min/mean " << o[0] << "/" << o[head_dim] << "/"
                        << o[2 * head_dim] << ", want " << mx << "/" << mn << "/" << mean;
        }
      }
    }
  }
  EXPECT_EQ(pool_bad, 0);
}

// Partial tiles in every dimension: m under a block, between blocks and
// over several tiles; n under and over the 256-column tile; k not a
// multiple of the 64-wide stage.
TEST_F(GemmSm90Test, MatchesFloat64) {
  for (const Shape& s :
       {Shape{1, 8, 8}, Shape{63, 264, 72}, Shape{129, 512, 136}, Shape{300, 1024, 512}, Shape{1000, 384, 4104}}) {
    Check(s, GemmPool::Kind::kNone, 0);
  }
}

TEST_F(GemmSm90Test, MeanPoolIsTheBlocksMeanOfStoredC) {
  for (const Shape& s : {Shape{1, 128, 64}, Shape{70, 256, 128}, Shape{257, 768, 320}, Shape{1100, 512, 1024}}) {
    Check(s, GemmPool::Kind::kMean, 0);
  }
}

TEST_F(GemmSm90Test, MaxMinMeanPoolIsTheGatesPooledK) {
  for (const Shape& s : {Shape{5, 128, 64}, Shape{191, 256, 256}, Shape{513, 1024, 128}}) {
    Check(s, GemmPool::Kind::kMaxMinMean, 128);
  }
  Check(Shape{100, 192, 64}, GemmPool::Kind::kMaxMinMean, 64);
}

TEST_F(GemmSm90Test, RefusesBadShapes) {
  GemmPool none;
  EXPECT_EQ(GemmBf16Sm90(nullptr, nullptr, nullptr, 0, 8, 8, none, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(GemmBf16Sm90(nullptr, nullptr, nullptr, 8, 12, 8, none, nullptr), cudaErrorInvalidValue);
  GemmPool mmm;
  mmm.kind = GemmPool::Kind::kMaxMinMean;
  mmm.out = reinterpret_cast<float*>(16);
  mmm.head_dim = 96;
  EXPECT_EQ(GemmBf16Sm90(nullptr, nullptr, nullptr, 8, 128, 8, mmm, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace seer::cuda
