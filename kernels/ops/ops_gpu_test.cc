// The dense CUDA ops (kernels/ops/ops.h) and the cuBLAS projection
// (engine/cuda/gemm.h) against their CPU twins (kernels/ops/ops_cpu.h) on fresh
// random inputs at several shapes. Tolerances are norm-wise relative errors:
// 1e-5 where the GPU result is float32, 1e-2 where it is rounded to bf16.
// Every output is poisoned with NaN before the run, so an element the kernel
// never wrote fails the comparison; NaN never passes.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/dtype.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/model/model_config.h"
#include "kernels/ops/ops_cpu.h"
#include "kernels/ops/ops.h"

namespace seer {
namespace {

using bf16 = __nv_bfloat16;

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

class GpuOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device visible: GPU op tests skipped";
    std::random_device rd;
    seed_ = rd();
    rng_.seed(seed_);
    ASSERT_CUDA(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::vector<float> Uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  // Values exactly representable in bf16, so both sides see the same inputs.
  std::vector<float> UniformBf16(size_t n, float lo, float hi) {
    std::vector<float> v = Uniform(n, lo, hi);
    for (float& x : v) x = Bf16ToFloat(FloatToBf16(x));
    return v;
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  cudaStream_t stream_ = nullptr;
};

// Device memory poisoned with 0xFF bytes: NaN as float and as bf16.
template <typename T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    if (cudaMalloc(&p_, sizeof(T) * (n == 0 ? 1 : n)) != cudaSuccess) p_ = nullptr;
    if (p_ != nullptr) cudaMemset(p_, 0xFF, sizeof(T) * n);
  }
  ~Dev() { cudaFree(p_); }
  T* get() const { return p_; }
  bool ok() const { return p_ != nullptr; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

std::vector<uint16_t> ToBf16Bits(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FloatToBf16(v[i]);
  return out;
}

std::vector<float> FromBf16Bits(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16ToFloat(v[i]);
  return out;
}

Dev<bf16>* UploadBf16(const std::vector<float>& v) {
  auto* d = new Dev<bf16>(v.size());
  const std::vector<uint16_t> bits = ToBf16Bits(v);
  cudaMemcpy(d->get(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice);
  return d;
}

template <typename T>
Dev<T>* Upload(const std::vector<T>& v) {
  auto* d = new Dev<T>(v.size());
  cudaMemcpy(d->get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

std::vector<float> DownloadBf16(const bf16* p, size_t n) {
  std::vector<uint16_t> bits(n);
  cudaMemcpy(bits.data(), p, n * 2, cudaMemcpyDeviceToHost);
  return FromBf16Bits(bits);
}

template <typename T>
std::vector<T> Download(const T* p, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// ||got - want|| / ||want||, in double. NaN anywhere gives NaN, which fails
// every EXPECT_LE.
double RelErr(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return std::nan("");
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::nan("");
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 1e-2;

TEST_F(GpuOpsTest, EmbeddingGathersRowsExactly) {
  struct Shape {
    int vocab, dim, n;
  };
  // 16-byte path: 64, 4096; scalar path: 130.
  for (Shape s : {Shape{7, 64, 1}, Shape{1000, 4096, 77}, Shape{50, 130, 333}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " vocab " + std::to_string(s.vocab) + " dim " +
                 std::to_string(s.dim) + " n " + std::to_string(s.n));
    const std::vector<float> table = UniformBf16(size_t(s.vocab) * s.dim, -2.0f, 2.0f);
    std::vector<int32_t> ids(s.n);
    std::uniform_int_distribution<int> pick(0, s.vocab - 1);
    for (int32_t& id : ids) id = pick(rng_);
    std::unique_ptr<Dev<bf16>> d_table(UploadBf16(table));
    std::unique_ptr<Dev<int32_t>> d_ids(Upload(ids));
    Dev<float> d_out(size_t(s.n) * s.dim);
    ASSERT_CUDA(cuda::Embedding(d_table->get(), s.vocab, s.dim, d_ids->get(), s.n, d_out.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<float> want(size_t(s.n) * s.dim);
    cpu::Embedding(table.data(), s.dim, ids.data(), s.n, want.data());
    EXPECT_LE(RelErr(Download(d_out.get(), want.size()), want), kF32Tol);
  }
}

TEST_F(GpuOpsTest, EmbeddingMarksAnOutOfRangeIdWithNan) {
  // dim 8: the 16-byte path; dim 6: the scalar one.
  for (int dim : {8, 6}) {
    SCOPED_TRACE("dim " + std::to_string(dim));
    const std::vector<float> table = UniformBf16(4 * dim, -1.0f, 1.0f);
    const std::vector<int32_t> ids = {1, 4, -1};
    std::unique_ptr<Dev<bf16>> d_table(UploadBf16(table));
    std::unique_ptr<Dev<int32_t>> d_ids(Upload(ids));
    Dev<float> d_out(3 * dim);
    ASSERT_CUDA(cuda::Embedding(d_table->get(), 4, dim, d_ids->get(), 3, d_out.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const std::vector<float> out = Download(d_out.get(), 3 * dim);
    for (int i = 0; i < dim; ++i) EXPECT_EQ(out[i], table[dim + i]) << i;
    for (int i = dim; i < 3 * dim; ++i) EXPECT_TRUE(std::isnan(out[i])) << i;
  }
}

TEST_F(GpuOpsTest, RmsNormMatchesCpu) {
  struct Shape {
    int rows, dim;
    float scale;
  };
  // 16-byte path: 64, 4096, 8192, 1000 (a partial last warp); scalar path:
  // 130 and 6 (not a multiple of 4), 20000 (more than 4096 float4 per row).
  for (Shape s : {Shape{1, 64, 1.0f}, Shape{17, 4096, 30.0f}, Shape{333, 130, 0.01f}, Shape{5, 8192, 3.0f},
                  Shape{64, 1000, 1.0f}, Shape{3, 20000, 2.0f}, Shape{2, 6, 1.0f}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " dim " + std::to_string(s.dim));
    const std::vector<float> x = Uniform(size_t(s.rows) * s.dim, -s.scale, s.scale);
    const std::vector<float> w = Uniform(s.dim, 0.5f, 1.5f);
    std::unique_ptr<Dev<float>> d_x(Upload(x)), d_w(Upload(w));
    Dev<bf16> d_out(x.size());
    const float eps = 1e-5f;
    ASSERT_CUDA(cuda::RmsNorm(d_x->get(), s.rows, s.dim, d_w->get(), eps, d_out.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<float> want(x.size());
    cpu::RmsNorm(x.data(), s.rows, s.dim, w.data(), eps, want.data());
    const double err = RelErr(DownloadBf16(d_out.get(), x.size()), want);
    EXPECT_LE(err, kBf16Tol);
    // bf16 rounding alone is ~2e-3; far below that means the rounding went
    // missing, far above means the math is off.
    EXPECT_GT(err, 1e-5);
  }
}

TEST_F(GpuOpsTest, RopeMatchesCpuWithLlama3Scaling) {
  RopeConfig rope;
  rope.theta = 500000.0;
  rope.type = "llama3";
  rope.factor = 8.0;
  rope.low_freq_factor = 1.0;
  rope.high_freq_factor = 4.0;
  rope.original_max_position_embeddings = 8192;
  struct Shape {
    int rows, heads, dim, pos0;
  };
  for (Shape s : {Shape{1, 32, 128, 4095}, Shape{333, 4, 64, 0}, Shape{70, 8, 128, 130000}, Shape{65, 2, 64, 7}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " heads " +
                 std::to_string(s.heads) + " dim " + std::to_string(s.dim) + " pos0 " + std::to_string(s.pos0));
    const std::vector<double> inv_d = RopeInvFreq(rope, s.dim);
    const std::vector<float> inv(inv_d.begin(), inv_d.end());
    const std::vector<float> x = UniformBf16(size_t(s.rows) * s.heads * s.dim, -3.0f, 3.0f);
    std::unique_ptr<Dev<bf16>> d_x(UploadBf16(x));
    std::unique_ptr<Dev<float>> d_inv(Upload(inv));
    const int half = s.dim / 2;
    Dev<float2> d_table(size_t(s.rows) * half);
    ASSERT_CUDA(cuda::RopeTable(d_inv->get(), half, s.pos0, s.rows, d_table.get(), stream_));
    ASSERT_CUDA(cuda::ApplyRope(d_x->get(), s.rows, s.heads, s.dim, d_table.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    // The table itself, against double-precision cos/sin of the float32
    // angle (what cpu::ApplyRope uses): an fp32 path.
    const std::vector<float2> table = Download(d_table.get(), size_t(s.rows) * half);
    std::vector<float> got_cs, want_cs;
    for (int r = 0; r < s.rows; ++r) {
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(s.pos0 + r) * inv[i];
        got_cs.push_back(table[size_t(r) * half + i].x);
        got_cs.push_back(table[size_t(r) * half + i].y);
        want_cs.push_back(static_cast<float>(std::cos(static_cast<double>(angle))));
        want_cs.push_back(static_cast<float>(std::sin(static_cast<double>(angle))));
      }
    }
    EXPECT_LE(RelErr(got_cs, want_cs), kF32Tol);
    std::vector<float> want = x;
    std::vector<int32_t> pos(s.rows);
    for (int r = 0; r < s.rows; ++r) pos[r] = s.pos0 + r;
    cpu::ApplyRope(want.data(), s.rows, s.heads, s.dim, pos.data(), inv.data());
    EXPECT_LE(RelErr(DownloadBf16(d_x->get(), x.size()), want), kBf16Tol);
  }
}

TEST_F(GpuOpsTest, WriteKvScattersIntoTheCacheLayoutOnly) {
  struct Shape {
    int n, heads, dim, capacity, t0;
  };
  for (Shape s :
       {Shape{1, 8, 128, 100, 57}, Shape{333, 1, 64, 400, 5}, Shape{31, 4, 80, 31, 0}, Shape{129, 2, 128, 300, 171}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " n " + std::to_string(s.n) + " heads " + std::to_string(s.heads) +
                 " dim " + std::to_string(s.dim) + " t0 " + std::to_string(s.t0));
    const std::vector<float> src = UniformBf16(size_t(s.n) * s.heads * s.dim, -4.0f, 4.0f);
    const std::vector<float> before = UniformBf16(size_t(s.heads) * s.capacity * s.dim, 10.0f, 20.0f);
    std::unique_ptr<Dev<bf16>> d_src(UploadBf16(src)), d_cache(UploadBf16(before));
    ASSERT_CUDA(cuda::WriteKv(d_src->get(), s.n, s.heads, s.dim, d_cache->get(), s.capacity, s.t0, stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<float> want = before;
    for (int t = 0; t < s.n; ++t) {
      for (int h = 0; h < s.heads; ++h) {
        for (int d = 0; d < s.dim; ++d) {
          want[(size_t(h) * s.capacity + s.t0 + t) * s.dim + d] = src[(size_t(t) * s.heads + h) * s.dim + d];
        }
      }
    }
    const std::vector<float> got = DownloadBf16(d_cache->get(), want.size());
    EXPECT_EQ(RelErr(got, want), 0.0);
  }
  // Past the capacity: refused, nothing written.
  Dev<bf16> src(8), cache(8);
  EXPECT_EQ(cuda::WriteKv(src.get(), 2, 1, 4, cache.get(), 2, 1, stream_), cudaErrorInvalidValue);
}

// The fused pass against the four calls it replaces (ApplyRope on q and k,
// WriteKv of k and v), bit for bit: the 16-byte path (head_dim 128, 64, 80)
// and the fallback (72), GQA 1 to 8, t0 > 0, a cache whose other tokens and
// slack must stay as they were.
TEST_F(GpuOpsTest, RopeToCacheEqualsRopeThenWriteKv) {
  struct Shape {
    int rows, heads, kv_heads, dim, capacity, t0;
  };
  for (Shape s : {Shape{1, 32, 8, 128, 10, 9}, Shape{333, 8, 1, 64, 400, 5}, Shape{129, 4, 4, 128, 300, 171},
                  Shape{70, 6, 2, 80, 70, 0}, Shape{31, 4, 2, 72, 40, 3}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " heads " +
                 std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " dim " + std::to_string(s.dim) + " t0 " +
                 std::to_string(s.t0));
    const int half = s.dim / 2;
    const std::vector<float> q = UniformBf16(size_t(s.rows) * s.heads * s.dim, -3.0f, 3.0f);
    const std::vector<float> k = UniformBf16(size_t(s.rows) * s.kv_heads * s.dim, -3.0f, 3.0f);
    const std::vector<float> v = UniformBf16(size_t(s.rows) * s.kv_heads * s.dim, -3.0f, 3.0f);
    const std::vector<float> cache = UniformBf16(size_t(s.kv_heads) * s.capacity * s.dim, 10.0f, 20.0f);
    std::vector<float> inv(half);
    for (int i = 0; i < half; ++i) inv[i] = std::pow(10000.0f, -2.0f * i / s.dim);
    std::unique_ptr<Dev<float>> d_inv(Upload(inv));
    Dev<float2> d_table(size_t(s.rows) * half);
    ASSERT_CUDA(cuda::RopeTable(d_inv->get(), half, s.t0, s.rows, d_table.get(), stream_));
    // The reference: the four calls.
    std::unique_ptr<Dev<bf16>> q0(UploadBf16(q)), k0(UploadBf16(k)), v0(UploadBf16(v));
    std::unique_ptr<Dev<bf16>> kc0(UploadBf16(cache)), vc0(UploadBf16(cache));
    ASSERT_CUDA(cuda::ApplyRope(q0->get(), s.rows, s.heads, s.dim, d_table.get(), stream_));
    ASSERT_CUDA(cuda::ApplyRope(k0->get(), s.rows, s.kv_heads, s.dim, d_table.get(), stream_));
    ASSERT_CUDA(cuda::WriteKv(k0->get(), s.rows, s.kv_heads, s.dim, kc0->get(), s.capacity, s.t0, stream_));
    ASSERT_CUDA(cuda::WriteKv(v0->get(), s.rows, s.kv_heads, s.dim, vc0->get(), s.capacity, s.t0, stream_));
    // The fused pass.
    std::unique_ptr<Dev<bf16>> q1(UploadBf16(q)), k1(UploadBf16(k)), v1(UploadBf16(v));
    std::unique_ptr<Dev<bf16>> kc1(UploadBf16(cache)), vc1(UploadBf16(cache));
    ASSERT_CUDA(cuda::RopeToCache(q1->get(), k1->get(), v1->get(), s.rows, s.heads, s.kv_heads, s.dim, d_table.get(),
                                  kc1->get(), vc1->get(), s.capacity, s.t0, stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const std::vector<float> want_q = DownloadBf16(q0->get(), q.size());
    EXPECT_EQ(DownloadBf16(q1->get(), q.size()), want_q);
    EXPECT_NE(want_q, q) << "the rotation did nothing";
    EXPECT_EQ(DownloadBf16(kc1->get(), cache.size()), DownloadBf16(kc0->get(), cache.size()));
    EXPECT_EQ(DownloadBf16(vc1->get(), cache.size()), DownloadBf16(vc0->get(), cache.size()));
    EXPECT_EQ(DownloadBf16(k1->get(), k.size()), DownloadBf16(k0->get(), k.size())) << "k rotated in place";
    EXPECT_EQ(DownloadBf16(v1->get(), v.size()), v) << "v is read only";
  }
  Dev<bf16> any(64);
  Dev<float2> table(8);
  EXPECT_EQ(
      cuda::RopeToCache(any.get(), any.get(), any.get(), 2, 1, 1, 16, table.get(), any.get(), any.get(), 2, 1, stream_),
      cudaErrorInvalidValue)
      << "past the capacity";
}

TEST_F(GpuOpsTest, SwiGluMatchesCpu) {
  for (size_t n : {size_t{1}, size_t{1000}, size_t{14336} * 3 + 5}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " n " + std::to_string(n));
    const std::vector<float> g = UniformBf16(n, -8.0f, 8.0f);
    const std::vector<float> u = UniformBf16(n, -2.0f, 2.0f);
    std::unique_ptr<Dev<bf16>> d_g(UploadBf16(g)), d_u(UploadBf16(u));
    Dev<bf16> d_out(n);
    ASSERT_CUDA(cuda::SwiGlu(d_g->get(), d_u->get(), n, d_out.get(), stream_));
    // In place over the gate, as the engine runs it.
    ASSERT_CUDA(cuda::SwiGlu(d_g->get(), d_u->get(), n, d_g->get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    std::vector<float> want(n);
    cpu::SwiGlu(g.data(), u.data(), n, want.data());
    EXPECT_LE(RelErr(DownloadBf16(d_out.get(), n), want), kBf16Tol);
    EXPECT_LE(RelErr(DownloadBf16(d_g->get(), n), want), kBf16Tol);
  }
}

TEST_F(GpuOpsTest, AddBiasMatchesCpu) {
  struct Shape {
    int rows, cols;
  };
  for (Shape s : {Shape{1, 4096}, Shape{333, 128}, Shape{17, 1000}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " cols " +
                 std::to_string(s.cols));
    const std::vector<float> x = UniformBf16(size_t(s.rows) * s.cols, -3.0f, 3.0f);
    const std::vector<float> b = Uniform(s.cols, -1.0f, 1.0f);
    std::vector<float> want = x;
    for (int r = 0; r < s.rows; ++r) cpu::AddInPlace(want.data() + size_t(r) * s.cols, b.data(), s.cols);
    std::unique_ptr<Dev<float>> d_b(Upload(b));

    std::unique_ptr<Dev<float>> d_xf(Upload(x));
    ASSERT_CUDA(cuda::AddBias(d_xf->get(), s.rows, s.cols, d_b->get(), stream_));
    std::unique_ptr<Dev<bf16>> d_xb(UploadBf16(x));
    ASSERT_CUDA(cuda::AddBias(d_xb->get(), s.rows, s.cols, d_b->get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_LE(RelErr(Download(d_xf->get(), x.size()), want), kF32Tol);
    EXPECT_LE(RelErr(DownloadBf16(d_xb->get(), x.size()), want), kBf16Tol);
  }
}

TEST_F(GpuOpsTest, ArgMaxRowsMatchesCpuIncludingTies) {
  struct Shape {
    int rows, n;
  };
  for (Shape s : {Shape{1, 1}, Shape{3, 128256}, Shape{40, 1000}, Shape{7, 77}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " n " + std::to_string(s.n));
    std::vector<float> x = Uniform(size_t(s.rows) * s.n, -10.0f, 10.0f);
    // Plant ties on the maximum in some rows: the first index must win.
    std::uniform_int_distribution<int> pick(0, s.n - 1);
    for (int r = 0; r < s.rows; r += 2) {
      float* row = x.data() + size_t(r) * s.n;
      const int a = pick(rng_), b = pick(rng_);
      row[a] = 11.0f;
      row[b] = 11.0f;
    }
    // NaNs: never the maximum, except at element 0, where cpu::ArgMax's scan
    // starts (row 1 of the multi-row shapes; row 2 gets NaNs elsewhere).
    if (s.rows > 2) {
      x[size_t(1) * s.n] = std::nanf("");
      for (int k = 0; k < 5; ++k) x[size_t(2) * s.n + pick(rng_)] = std::nanf("");
    }
    std::unique_ptr<Dev<float>> d_x(Upload(x));
    Dev<int32_t> d_out(s.rows);
    ASSERT_CUDA(cuda::ArgMaxRows(d_x->get(), s.rows, s.n, d_out.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const std::vector<int32_t> got = Download(d_out.get(), s.rows);
    for (int r = 0; r < s.rows; ++r) {
      EXPECT_EQ(got[r], cpu::ArgMax(x.data() + size_t(r) * s.n, s.n)) << "row " << r;
    }
  }
}

TEST_F(GpuOpsTest, FillUniformIsDeterministicAndInRange) {
  const size_t n = 1 << 20;
  Dev<float> a(n), b(n);
  ASSERT_CUDA(cuda::FillUniform(a.get(), n, 42, 0.5f, stream_));
  ASSERT_CUDA(cuda::FillUniform(b.get(), n, 42, 0.5f, stream_));
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  const std::vector<float> va = Download(a.get(), n), vb = Download(b.get(), n);
  double sum = 0.0, sum_sq = 0.0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(va[i], vb[i]) << i;
    ASSERT_TRUE(va[i] >= -0.5f && va[i] < 0.5f) << i << " " << va[i];
    sum += va[i];
    sum_sq += double(va[i]) * va[i];
  }
  // Uniform on [-0.5, 0.5): mean 0, variance 1/12.
  EXPECT_NEAR(sum / n, 0.0, 3e-3);
  EXPECT_NEAR(sum_sq / n, 1.0 / 12.0, 2e-3);
}

// A failed runtime call that the engine reports as a Status must not stay
// behind as the thread's last error: every kernel wrapper checks its launch
// with cudaGetLastError(), so the next request's first launch would fail with
// this old error (an out-of-memory decode step poisoning the next request).
TEST_F(GpuOpsTest, AReportedFailureDoesNotFailTheNextLaunch) {
  const cudaError_t err = cudaSetDevice(1 << 20);  // no such device: a non-sticky error
  ASSERT_NE(err, cudaSuccess);
  const Status s = CudaStatus(err, "cudaSetDevice(1 << 20)", "ops_test");
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess) << "the reported error is still the thread's last error";
  Dev<float> x(1000);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(cuda::Fill(x.get(), 1000, 2.0f, stream_), cudaSuccess) << "an unrelated launch failed";
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  for (float v : Download(x.get(), 1000)) ASSERT_EQ(v, 2.0f);
}

// SplitColumns3 against the column blocks taken on the host, bit for bit;
// destinations poisoned, and refused shapes.
TEST_F(GpuOpsTest, SplitColumns3CopiesEachBlockExactly) {
  struct Shape {
    int rows, w0, w1, w2;
  };
  for (Shape s : {Shape{1, 4096, 1024, 1024}, Shape{7, 64, 16, 16}, Shape{3, 8, 0, 24}, Shape{0, 8, 8, 8}}) {
    SCOPED_TRACE("rows " + std::to_string(s.rows) + " widths " + std::to_string(s.w0) + "/" + std::to_string(s.w1) +
                 "/" + std::to_string(s.w2));
    const int w = s.w0 + s.w1 + s.w2;
    const std::vector<float> src = UniformBf16(size_t(s.rows) * w, -4.0f, 4.0f);
    std::unique_ptr<Dev<bf16>> d_src(UploadBf16(src));
    Dev<bf16> d0(size_t(s.rows) * s.w0 + 8), d1(size_t(s.rows) * s.w1 + 8), d2(size_t(s.rows) * s.w2 + 8);
    ASSERT_CUDA(cuda::SplitColumns3(d_src->get(), s.rows, s.w0, s.w1, s.w2, d0.get(), d1.get(), d2.get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const int widths[3] = {s.w0, s.w1, s.w2};
    const Dev<bf16>* dst[3] = {&d0, &d1, &d2};
    int col0 = 0;
    for (int part = 0; part < 3; ++part) {
      const std::vector<float> got = DownloadBf16(dst[part]->get(), size_t(s.rows) * widths[part] + 8);
      for (int r = 0; r < s.rows; ++r) {
        for (int c = 0; c < widths[part]; ++c) {
          ASSERT_EQ(got[size_t(r) * widths[part] + c], src[size_t(r) * w + col0 + c])
              << "part " << part << " row " << r;
        }
      }
      for (size_t i = size_t(s.rows) * widths[part]; i < got.size(); ++i) ASSERT_TRUE(std::isnan(got[i]));
      col0 += widths[part];
    }
  }
  Dev<bf16> x(64);
  EXPECT_EQ(cuda::SplitColumns3(x.get(), 1, 12, 8, 8, x.get(), x.get(), x.get(), stream_), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SplitColumns3(x.get() + 1, 1, 8, 8, 8, x.get(), x.get(), x.get(), stream_), cudaErrorInvalidValue);
}

// SwiGluRows on [rows, 2 * inter] against SwiGlu on the two halves copied
// apart, bit for bit; the up half is left as it was; refused shapes.
TEST_F(GpuOpsTest, SwiGluRowsMatchesSwiGluOnTheHalvesExactly) {
  for (auto [rows, inter] : {std::pair{1, 14336}, std::pair{5, 64}, std::pair{3, 8}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + " inter " + std::to_string(inter));
    const std::vector<float> gu = UniformBf16(size_t(rows) * 2 * inter, -6.0f, 6.0f);
    std::vector<float> gate(size_t(rows) * inter), up(gate.size());
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < inter; ++j) {
        gate[size_t(r) * inter + j] = gu[size_t(r) * 2 * inter + j];
        up[size_t(r) * inter + j] = gu[size_t(r) * 2 * inter + inter + j];
      }
    }
    std::unique_ptr<Dev<bf16>> d_gu(UploadBf16(gu)), d_g(UploadBf16(gate)), d_u(UploadBf16(up));
    ASSERT_CUDA(cuda::SwiGluRows(d_gu->get(), rows, inter, stream_));
    ASSERT_CUDA(cuda::SwiGlu(d_g->get(), d_u->get(), gate.size(), d_g->get(), stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const std::vector<float> got = DownloadBf16(d_gu->get(), gu.size());
    const std::vector<float> want = DownloadBf16(d_g->get(), gate.size());
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < inter; ++j) {
        ASSERT_EQ(got[size_t(r) * 2 * inter + j], want[size_t(r) * inter + j]) << "row " << r << " col " << j;
        ASSERT_EQ(got[size_t(r) * 2 * inter + inter + j], up[size_t(r) * inter + j]) << "row " << r << " col " << j;
      }
    }
  }
  Dev<bf16> x(64);
  EXPECT_EQ(cuda::SwiGluRows(x.get(), 1, 12, stream_), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SwiGluRows(x.get() + 1, 1, 8, stream_), cudaErrorInvalidValue);
}

class GpuGemmTest : public GpuOpsTest {
 protected:
  void SetUp() override {
    GpuOpsTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasSetStream(handle_, stream_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (handle_ != nullptr) cublasDestroy(handle_);
    GpuOpsTest::TearDown();
  }
  cublasHandle_t handle_ = nullptr;
};

// The projection against cpu::Linear on the same bf16-exact inputs: float32
// output agrees to float32 accumulation order (<= 1e-5); bf16 output to its
// rounding. beta = 1 into float32 is the residual add (cpu::AddInPlace).
TEST_F(GpuGemmTest, LinearMatchesCpuForBothOutputTypesAndTheResidualAdd) {
  struct Shape {
    int rows, in, out;
  };
  for (Shape s : {Shape{1, 64, 256}, Shape{333, 64, 128}, Shape{77, 4096, 1024}, Shape{130, 512, 1000}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " rows " + std::to_string(s.rows) + " in " + std::to_string(s.in) +
                 " out " + std::to_string(s.out));
    const std::vector<float> x = UniformBf16(size_t(s.rows) * s.in, -1.0f, 1.0f);
    const std::vector<float> w = UniformBf16(size_t(s.out) * s.in, -0.1f, 0.1f);
    const std::vector<float> residual = Uniform(size_t(s.rows) * s.out, -1.0f, 1.0f);
    std::vector<float> w_t(w.size());
    cpu::Transpose(w.data(), s.out, s.in, w_t.data());
    std::vector<float> want(size_t(s.rows) * s.out);
    cpu::Linear(x.data(), s.rows, s.in, w_t.data(), s.out, nullptr, want.data());
    std::vector<float> want_res = residual;
    cpu::AddInPlace(want_res.data(), want.data(), want_res.size());

    std::unique_ptr<Dev<bf16>> d_x(UploadBf16(x)), d_w(UploadBf16(w));
    Dev<float> d_yf(want.size());
    Dev<bf16> d_yb(want.size());
    std::unique_ptr<Dev<float>> d_res(Upload(residual));
    ASSERT_TRUE(LinearBf16(handle_, d_x->get(), s.rows, s.in, d_w->get(), s.out, d_yf.get(), CUDA_R_32F, 0.0f).ok());
    ASSERT_TRUE(LinearBf16(handle_, d_x->get(), s.rows, s.in, d_w->get(), s.out, d_yb.get(), CUDA_R_16BF, 0.0f).ok());
    ASSERT_TRUE(LinearBf16(handle_, d_x->get(), s.rows, s.in, d_w->get(), s.out, d_res->get(), CUDA_R_32F, 1.0f).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_LE(RelErr(Download(d_yf.get(), want.size()), want), kF32Tol);
    EXPECT_LE(RelErr(DownloadBf16(d_yb.get(), want.size()), want), kBf16Tol);
    EXPECT_LE(RelErr(Download(d_res->get(), want.size()), want_res), kF32Tol);
  }
}

// x read with a row stride wider than its columns (ldx: the left half of a
// fused gate/up output) gives what the same columns copied out give, to
// float32 accumulation order (cuBLAS may pick another kernel for the stride).
TEST_F(GpuGemmTest, LinearReadsStridedRowsAsTheirCopy) {
  const int rows = 5, in = 256, ldx = 512, out = 384;
  const std::vector<float> wide = UniformBf16(size_t(rows) * ldx, -1.0f, 1.0f);
  const std::vector<float> w = UniformBf16(size_t(out) * in, -0.1f, 0.1f);
  std::vector<float> packed(size_t(rows) * in);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < in; ++c) packed[size_t(r) * in + c] = wide[size_t(r) * ldx + c];
  }
  std::unique_ptr<Dev<bf16>> d_wide(UploadBf16(wide)), d_packed(UploadBf16(packed)), d_w(UploadBf16(w));
  Dev<float> y_strided(size_t(rows) * out), y_packed(size_t(rows) * out);
  ASSERT_TRUE(
      LinearBf16(handle_, d_wide->get(), rows, in, d_w->get(), out, y_strided.get(), CUDA_R_32F, 0.0f, ldx).ok());
  ASSERT_TRUE(LinearBf16(handle_, d_packed->get(), rows, in, d_w->get(), out, y_packed.get(), CUDA_R_32F, 0.0f).ok());
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  EXPECT_LE(RelErr(Download(y_strided.get(), size_t(rows) * out), Download(y_packed.get(), size_t(rows) * out)),
            kF32Tol);
  EXPECT_FALSE(
      LinearBf16(handle_, d_wide->get(), rows, in, d_w->get(), out, y_strided.get(), CUDA_R_32F, 0.0f, in - 1).ok());
}

// GemmTuner (engine/cuda/gemm_tuner.h) against a float64 recomputation on
// rows above its threshold: overwritten outputs (tuned in place), the
// residual add (tuned in scratch: the residual must come out added exactly
// once) and a strided x, with the fastest candidate forced (min_gain -inf)
// and with cublasGemmEx kept (+inf), so both paths run; and with candidates
// refused while they are timed (as cuBLAS may refuse one): the first one
// (the rest compete), or all of them (cublasGemmEx stays), and the GEMM
// still succeeds. Each class is timed once: another problem in the same row
// bucket tunes nothing, nor does one below kMinRows or one whose operands
// are not 256-byte aligned.
TEST_F(GpuGemmTest, TunedLinearMatchesFloat64AndTunesEachClassOnce) {
  const int rows = GemmTuner::kMinRows + 77, in = 256, ldx = 384, out = 320;
  const std::vector<float> x = UniformBf16(size_t(rows) * ldx, -1.0f, 1.0f);
  const std::vector<float> w = UniformBf16(size_t(out) * in, -0.1f, 0.1f);
  const std::vector<float> residual = Uniform(size_t(rows) * out, -1.0f, 1.0f);
  std::unique_ptr<Dev<bf16>> d_x(UploadBf16(x)), d_w(UploadBf16(w));
  const size_t ws_bytes = size_t{32} << 20;
  Dev<char> ws(ws_bytes);
  ASSERT_EQ(cublasSetWorkspace(handle_, ws.get(), ws_bytes), CUBLAS_STATUS_SUCCESS);

  // Every 131st row and the last three: x[r, :in] . w[c, :] in double.
  std::vector<int> sampled;
  for (int r = 0; r < rows; r += 131) sampled.push_back(r);
  for (int r = rows - 3; r < rows; ++r) sampled.push_back(r);
  std::vector<float> want, want_res;
  for (int r : sampled) {
    for (int c = 0; c < out; ++c) {
      double acc = 0;
      for (int k = 0; k < in; ++k) acc += double(x[size_t(r) * ldx + k]) * double(w[size_t(c) * in + k]);
      want.push_back(float(acc));
      want_res.push_back(float(double(residual[size_t(r) * out + c]) + acc));
    }
  }
  auto pick = [&](const std::vector<float>& all) {
    std::vector<float> v;
    for (int r : sampled) v.insert(v.end(), all.begin() + size_t(r) * out, all.begin() + size_t(r + 1) * out);
    return v;
  };

  enum Refuse { kNone, kFirst, kAll };
  const double inf = std::numeric_limits<double>::infinity();
  for (auto [gain, refuse] :
       {std::pair{-inf, kNone}, std::pair{inf, kNone}, std::pair{-inf, kFirst}, std::pair{-inf, kAll}}) {
    SCOPED_TRACE("seed " + std::to_string(seed_) + " min_gain " + std::to_string(gain) + " refuse " +
                 std::to_string(refuse));
    GemmTuner tuner(handle_, ws.get(), ws_bytes, gain);
    if (refuse != kNone) tuner.RefuseCandidatesForTest([refuse](int i) { return refuse == kAll || i == 0; });
    Dev<float> yf(size_t(rows) * out);
    Dev<bf16> yb(size_t(rows) * out);
    std::unique_ptr<Dev<float>> d_res(Upload(residual));
    ASSERT_TRUE(tuner.Linear(stream_, d_x->get(), rows, in, d_w->get(), out, yf.get(), CUDA_R_32F, 0.0f, ldx).ok());
    ASSERT_TRUE(tuner.Linear(stream_, d_x->get(), rows, in, d_w->get(), out, yb.get(), CUDA_R_16BF, 0.0f, ldx).ok());
    ASSERT_TRUE(tuner.Linear(stream_, d_x->get(), rows, in, d_w->get(), out, d_res->get(), CUDA_R_32F, 1.0f, ldx).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_LE(RelErr(pick(Download(yf.get(), size_t(rows) * out)), want), kF32Tol);
    EXPECT_LE(RelErr(pick(DownloadBf16(yb.get(), size_t(rows) * out)), want), kBf16Tol);
    EXPECT_LE(RelErr(pick(Download(d_res->get(), size_t(rows) * out)), want_res), kF32Tol);

    ASSERT_EQ(tuner.choices().size(), 3u);
    for (const GemmTuner::Choice& c : tuner.choices()) {
      SCOPED_TRACE(c.Describe());
      EXPECT_GT(c.candidates, refuse == kFirst ? 1 : 0);
      EXPECT_EQ(c.refused, refuse == kNone ? 0 : refuse == kFirst ? 1 : c.candidates);
      EXPECT_EQ(c.uses_candidate, gain < 0 && refuse != kAll);
      EXPECT_EQ(c.tuned_rows, rows);
      EXPECT_GT(c.default_ms, 0.0);
      if (refuse != kAll) {
        EXPECT_GT(c.best_ms, 0.0);
      }
    }
    EXPECT_TRUE(tuner.choices()[2].accumulate);

    // The same class at other rows of its bucket, and rows below the threshold: no timing.
    Dev<float> y2(size_t(rows) * out);
    ASSERT_TRUE(tuner.Linear(stream_, d_x->get(), rows - 5, in, d_w->get(), out, y2.get(), CUDA_R_32F, 0.0f, ldx).ok());
    ASSERT_TRUE(tuner.Linear(stream_, d_x->get(), 1000, in, d_w->get(), out, y2.get(), CUDA_R_32F, 0.0f, ldx).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_EQ(tuner.choices().size(), 3u);
    const std::vector<float> got2 = Download(y2.get(), size_t(1000) * out);
    std::vector<float> want2, got2s;
    for (size_t i = 0; i < sampled.size() && sampled[i] < 1000; ++i) {
      want2.insert(want2.end(), want.begin() + i * out, want.begin() + (i + 1) * out);
      got2s.insert(got2s.end(), got2.begin() + size_t(sampled[i]) * out, got2.begin() + size_t(sampled[i] + 1) * out);
    }
    EXPECT_LE(RelErr(got2s, want2), kF32Tol);

    // x 16 bytes off the 256-byte alignment cublasLt's heuristic assumes:
    // cublasGemmEx, bit for bit, and no timing.
    Dev<float> y_off(size_t(rows) * out), y_ref(size_t(rows) * out);
    ASSERT_TRUE(
        tuner.Linear(stream_, d_x->get() + 8, rows - 1, in, d_w->get(), out, y_off.get(), CUDA_R_32F, 0.0f, ldx).ok());
    ASSERT_TRUE(
        LinearBf16(handle_, d_x->get() + 8, rows - 1, in, d_w->get(), out, y_ref.get(), CUDA_R_32F, 0.0f, ldx).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    EXPECT_EQ(tuner.choices().size(), 3u);
    const std::vector<float> off = Download(y_off.get(), size_t(rows - 1) * out);
    const std::vector<float> ref = Download(y_ref.get(), size_t(rows - 1) * out);
    EXPECT_EQ(std::memcmp(off.data(), ref.data(), off.size() * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace seer
