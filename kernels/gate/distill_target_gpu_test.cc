// The GPU distillation target (kernels/gate/distill_target.h) against its CPU
// twin seer::cpu::DistillTarget on the same bf16/fp16-rounded q and k, fresh
// random data each run (the seed is in every failure message). Shapes cover
// one token, partial last blocks, exact multiples of the block, GQA ratios 1,
// 3 and 4, head dims 8 to 256 (the tensor-core kernel's own 32, 64, 96, 128
// and 256, and 8, 40, 48 and 200, which it pads with zero columns), both
// element types, block sizes 16 and 32 (the float32 kernel), and q and k read
// from inside one fused QKV row (whose V part is NaN, so a read outside the
// heads shows).
//
// What must hold, with `out` poisoned with 0xFF bytes (NaN) before the launch:
//   - nothing is NaN, everything above the diagonal is exactly 0;
//   - each row sums to 1 within 1e-5;
//   - |gpu - cpu| <= 2e-5 + 1e-3 |cpu| for every element. Both sides form the
//     scores in float32 from exact products in different summation orders
//     (a few float32 ulps of the dot product; the tensor cores add into
//     float32 accumulators), and the CPU keeps its exponentials and sums in
//     double where the GPU keeps float32 (block 64: exp2 with the scale
//     folded into log2(e)): the expected difference is about 1e-6 relative,
//     1e-5 at the peakiest scores here;
//   - a second launch gives bit-identical output.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "base/dtype.h"
#include "kernels/common/gpu_test_util.h"
#include "kernels/gate/distill_target.h"
#include "kernels/gate/distill_target_cpu.h"

namespace seer {
namespace {

using cuda::ElemType;
using gpu_test::DevBuf;
using gpu_test::HaveGpu;

struct TargetCase {
  int seq_len;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  ElemType dtype;
  bool fused_qkv = false;  // q and k inside one [L, (Hq + 2 Hkv) D] row
  int block_size = 64;
};

std::string Describe(const TargetCase& c) {
  return "L=" + std::to_string(c.seq_len) + " Hq=" + std::to_string(c.num_heads) +
         " Hkv=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) +
         (c.dtype == ElemType::kBF16 ? " bf16" : " fp16") + (c.fused_qkv ? " fused" : "") +
         " block=" + std::to_string(c.block_size);
}

class DistillTargetGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveGpu(&why)) GTEST_SKIP() << "GPU distillation target tests skipped: " << why;
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }

  static uint16_t ToElem(float x, ElemType t) { return t == ElemType::kBF16 ? FloatToBf16(x) : FloatToFp16(x); }
  static float FromElem(uint16_t x, ElemType t) { return t == ElemType::kBF16 ? Bf16ToFloat(x) : Fp16ToFloat(x); }
  static uint16_t NanElem(ElemType t) { return t == ElemType::kBF16 ? 0x7fc0 : 0x7e00; }

  // Random activations: normal per element with a per-(token, head) scale
  // drawn in [0.3, 2.5], times a spread of 1.5, so some rows are flat and
  // others put nearly all their weight on a few keys. Returns the rounded
  // elements and their float values.
  void Fill(int L, int heads, int D, ElemType t, std::vector<uint16_t>* e, std::vector<float>* f) {
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::uniform_real_distribution<float> spread(0.3f, 2.5f);
    e->resize(static_cast<size_t>(L) * heads * D);
    f->resize(e->size());
    for (int r = 0; r < L * heads; ++r) {
      const float s = spread(rng_);
      for (int d = 0; d < D; ++d) {
        const size_t i = static_cast<size_t>(r) * D + d;
        (*e)[i] = ToElem(s * normal(rng_), t);
        (*f)[i] = FromElem((*e)[i], t);
      }
    }
  }

  void Run(const TargetCase& c) {
    SCOPED_TRACE(Describe(c) + " seed=" + std::to_string(seed_));
    const int L = c.seq_len, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim, bs = c.block_size;
    const int nb = (L + bs - 1) / bs;
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

    std::vector<uint16_t> qe, ke;
    std::vector<float> qf, kf;
    Fill(L, Hq, D, c.dtype, &qe, &qf);
    Fill(L, Hkv, D, c.dtype, &ke, &kf);

    cpu::DistillTargetProblem cp;
    cp.q = qf.data();
    cp.k = kf.data();
    cp.seq_len = L;
    cp.num_heads = Hq;
    cp.num_kv_heads = Hkv;
    cp.head_dim = D;
    cp.block_size = bs;
    cp.scale = scale;
    const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const std::vector<float> cpu = cpu::DistillTarget(cp, threads);
    ASSERT_EQ(cpu.size(), static_cast<size_t>(Hq) * nb * nb);

    // The device layout: q then k packed, or both inside fused QKV rows whose
    // V part is NaN.
    const size_t q_width = static_cast<size_t>(Hq) * D, k_width = static_cast<size_t>(Hkv) * D;
    const size_t row = c.fused_qkv ? q_width + 2 * k_width : 0;
    std::vector<uint16_t> packed;
    size_t k_off = 0;
    if (c.fused_qkv) {
      packed.assign(static_cast<size_t>(L) * row, NanElem(c.dtype));
      for (int t = 0; t < L; ++t) {
        std::copy_n(qe.data() + t * q_width, q_width, packed.data() + t * row);
        std::copy_n(ke.data() + t * k_width, k_width, packed.data() + t * row + q_width);
      }
      k_off = q_width;
    } else {
      packed = qe;
      packed.insert(packed.end(), ke.begin(), ke.end());
      k_off = qe.size();
    }
    const size_t out_bytes = cpu.size() * sizeof(float);
    DevBuf dqk(packed.size() * 2), dout(out_bytes), dout2(out_bytes);
    ASSERT_TRUE(dqk.ok() && dout.ok() && dout2.ok());
    ASSERT_CUDA(dqk.Upload(packed.data(), packed.size() * 2));

    cuda::DistillTargetParams p;
    p.q = dqk.get<uint16_t>();
    p.k = dqk.get<uint16_t>() + k_off;
    p.dtype = c.dtype;
    p.q_row_stride = static_cast<int64_t>(row);
    p.k_row_stride = static_cast<int64_t>(row);
    p.seq_len = L;
    p.num_heads = Hq;
    p.num_kv_heads = Hkv;
    p.head_dim = D;
    p.block_size = bs;
    p.scale = scale;
    p.out = dout.get<float>();
    ASSERT_CUDA(cudaMemset(dout.get(), 0xFF, out_bytes));
    ASSERT_CUDA(cudaMemset(dout2.get(), 0xFF, out_bytes));
    ASSERT_CUDA(cuda::LaunchDistillTarget(p, nullptr));
    p.out = dout2.get<float>();
    ASSERT_CUDA(cuda::LaunchDistillTarget(p, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> gpu(cpu.size()), gpu2(cpu.size());
    ASSERT_CUDA(dout.Download(gpu.data(), out_bytes));
    ASSERT_CUDA(dout2.Download(gpu2.data(), out_bytes));

    int64_t nans = 0, above = 0, bad_rows = 0, bad = 0;
    double worst_abs = 0.0, worst_rel = 0.0, worst_row = 0.0;
    for (int h = 0; h < Hq; ++h) {
      for (int qb = 0; qb < nb; ++qb) {
        const size_t base = (static_cast<size_t>(h) * nb + qb) * nb;
        double sum = 0.0;
        for (int kb = 0; kb < nb; ++kb) {
          const float g = gpu[base + kb], want = cpu[base + kb];
          if (std::isnan(g)) {
            if (++nans <= 5) ADD_FAILURE() << "NaN (unwritten?) at h=" << h << " qb=" << qb << " kb=" << kb;
            continue;
          }
          if (kb > qb) {
            if (g != 0.0f && ++above <= 5) {
              ADD_FAILURE() << "above the diagonal h=" << h << " qb=" << qb << " kb=" << kb << ": " << g;
            }
            continue;
          }
          sum += g;
          const double diff = std::abs(double(g) - double(want));
          worst_abs = std::max(worst_abs, diff);
          if (want > 1e-3f) worst_rel = std::max(worst_rel, diff / want);
          if (diff > 2e-5 + 1e-3 * std::abs(double(want)) && ++bad <= 10) {
            ADD_FAILURE() << "h=" << h << " qb=" << qb << " kb=" << kb << ": GPU " << g << ", CPU " << want;
          }
        }
        worst_row = std::max(worst_row, std::abs(sum - 1.0));
        if (std::abs(sum - 1.0) > 1e-5 && ++bad_rows <= 5) {
          ADD_FAILURE() << "row h=" << h << " qb=" << qb << " sums to " << sum;
        }
      }
    }
    EXPECT_EQ(nans, 0) << "NaN elements";
    EXPECT_EQ(above, 0) << "nonzero elements above the diagonal";
    EXPECT_EQ(bad_rows, 0) << "rows not summing to 1";
    EXPECT_EQ(bad, 0) << "elements differing from the CPU twin";
    EXPECT_EQ(0, std::memcmp(gpu.data(), gpu2.data(), out_bytes)) << "two launches differ";
    std::cout << "[distill_target] " << Describe(c) << ": max |gpu - cpu| " << worst_abs << ", max rel (cpu > 1e-3) "
              << worst_rel << ", max |row sum - 1| " << worst_row << "\n";
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

TEST_F(DistillTargetGpuTest, Lengths) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<TargetCase> cases = {
      {1, 4, 1, 64, bf},   {37, 4, 1, 128, fp},  {64, 4, 1, 64, bf},   {65, 4, 1, 128, bf},
      {200, 4, 1, 64, fp}, {511, 4, 1, 128, bf}, {1000, 4, 1, 64, fp}, {2049, 4, 1, 128, bf},
  };
  for (const TargetCase& c : cases) Run(c);
}

TEST_F(DistillTargetGpuTest, HeadsAndHeadDims) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<TargetCase> cases = {
      {130, 1, 1, 64, bf},   {130, 4, 1, 32, fp},  {130, 8, 2, 96, bf},  {130, 6, 2, 128, fp},
      {300, 32, 8, 128, bf}, {300, 32, 8, 64, fp}, {100, 8, 2, 32, bf},  {100, 8, 2, 96, fp},
      {100, 8, 2, 64, fp},   {100, 8, 2, 128, bf}, {257, 4, 2, 256, bf}, {257, 4, 2, 40, fp},
      {150, 4, 1, 8, bf},    {150, 4, 2, 48, fp},  {150, 4, 2, 200, bf}, {1000, 32, 8, 128, bf},
  };
  for (const TargetCase& c : cases) Run(c);
}

TEST_F(DistillTargetGpuTest, FusedQkvRows) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<TargetCase> cases = {
      {1, 8, 2, 128, bf, true},
      {333, 8, 2, 128, bf, true},
      {700, 6, 2, 64, fp, true},
      {129, 32, 8, 128, fp, true},
  };
  for (const TargetCase& c : cases) Run(c);
}

TEST_F(DistillTargetGpuTest, SmallBlocks) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<TargetCase> cases = {
      {1, 2, 1, 64, bf, false, 16},  {77, 4, 1, 64, fp, false, 16},   {300, 6, 2, 128, bf, true, 16},
      {31, 2, 2, 32, fp, false, 32}, {200, 4, 1, 128, bf, false, 32}, {513, 8, 2, 64, fp, true, 32},
  };
  for (const TargetCase& c : cases) Run(c);
}

TEST_F(DistillTargetGpuTest, RejectsBadParams) {
  DevBuf dq(64 * 4 * 64 * 2), dk(64 * 64 * 2), dout(4 * 4);
  ASSERT_TRUE(dq.ok() && dk.ok() && dout.ok());
  ASSERT_CUDA(cudaMemset(dq.get(), 0, 64 * 4 * 64 * 2));
  ASSERT_CUDA(cudaMemset(dk.get(), 0, 64 * 64 * 2));
  cuda::DistillTargetParams good;
  good.q = dq.get();
  good.k = dk.get();
  good.seq_len = 64;
  good.num_heads = 4;
  good.num_kv_heads = 1;
  good.head_dim = 64;
  good.scale = 0.125f;
  good.out = dout.get<float>();
  ASSERT_CUDA(cuda::LaunchDistillTarget(good, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());

  auto expect_invalid = [&](const char* what, auto change) {
    cuda::DistillTargetParams p = good;
    change(p);
    EXPECT_EQ(cuda::LaunchDistillTarget(p, nullptr), cudaErrorInvalidValue) << what;
  };
  expect_invalid("null q", [](auto& p) { p.q = nullptr; });
  expect_invalid("null k", [](auto& p) { p.k = nullptr; });
  expect_invalid("null out", [](auto& p) { p.out = nullptr; });
  expect_invalid("seq_len 0", [](auto& p) { p.seq_len = 0; });
  expect_invalid("seq_len -1", [](auto& p) { p.seq_len = -1; });
  expect_invalid("num_heads 0", [](auto& p) { p.num_heads = 0; });
  expect_invalid("num_kv_heads 0", [](auto& p) { p.num_kv_heads = 0; });
  expect_invalid("Hq % Hkv != 0", [](auto& p) { p.num_kv_heads = 3; });
  expect_invalid("head_dim 0", [](auto& p) { p.head_dim = 0; });
  expect_invalid("head_dim 60", [](auto& p) { p.head_dim = 60; });
  expect_invalid("head_dim 264", [](auto& p) { p.head_dim = 264; });
  expect_invalid("block_size 48", [](auto& p) { p.block_size = 48; });
  expect_invalid("block_size 128", [](auto& p) { p.block_size = 128; });
  expect_invalid("block_size 8", [](auto& p) { p.block_size = 8; });
  expect_invalid("scale 0", [](auto& p) { p.scale = 0.0f; });
  expect_invalid("scale -1", [](auto& p) { p.scale = -1.0f; });
  expect_invalid("scale NaN", [](auto& p) { p.scale = std::nanf(""); });
  expect_invalid("q stride below Hq * D", [](auto& p) { p.q_row_stride = 4 * 64 - 8; });
  expect_invalid("k stride below Hkv * D", [](auto& p) { p.k_row_stride = 32; });
  expect_invalid("q stride not a multiple of 8", [](auto& p) { p.q_row_stride = 4 * 64 + 4; });
  expect_invalid("negative k stride", [](auto& p) { p.k_row_stride = -64; });
  expect_invalid("q not 16-byte aligned", [&](auto& p) { p.q = dq.get<uint16_t>() + 4; });
  expect_invalid("dtype out of range", [](auto& p) { p.dtype = static_cast<ElemType>(7); });
}

}  // namespace
}  // namespace seer
