// The fp8 (E4M3) KV kernels (kv_quant.h) against their CPU twin
// (kv_quant_cpu.h), bit for bit, on bf16 data:
//   - every bf16 value of magnitude <= 448 plus NaNs and infinities in one
//     block whose scale is exactly 1, so the hardware's cvt.rn.satfinite and
//     the twin's rounding meet on every input;
//   - random layers with outlier tokens, signed zeros, NaN, Inf and an
//     all-zero block, read from and written to a pitched cache layer at an
//     offset, for head_dim 128 and 64 (16-byte vectors) and 40 (element by
//     element), with full and partial token blocks.
// Scales, codes and the dequantised bf16 (NaN canonical, 0x7FC0) must be equal
// bytes; rows outside the written range must keep their poison.
// Without a GPU every test skips.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/gpu_test_util.h"
#include "kernels/kv_quant/e4m3.h"
#include "kernels/kv_quant/kv_quant.h"
#include "kernels/kv_quant/kv_quant_cpu.h"

namespace seer {
namespace {

using gpu_test::DevBuf;

class KvQuantGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << "GPU fp8 KV tests skipped: " << why;
  }
};

struct Case {
  int heads, tokens, head_dim, block_tokens;
  int src_capacity, src_t0;  // the source: a layer [heads, src_capacity, head_dim] from token src_t0
  int dst_capacity, dst_t0;
};

// Runs both sides on `src` ([heads, src_capacity, head_dim] bf16 bits) and
// compares every byte.
void CompareWithTwin(const Case& c, const std::vector<uint16_t>& src) {
  const size_t codes_n = static_cast<size_t>(c.heads) * c.tokens * c.head_dim;
  const int blocks = kvq::ScaleBlocks(c.tokens, c.block_tokens);
  const size_t scales_n = static_cast<size_t>(c.heads) * blocks;
  const int64_t src_stride = static_cast<int64_t>(c.src_capacity) * c.head_dim;
  const int64_t dst_stride = static_cast<int64_t>(c.dst_capacity) * c.head_dim;
  const size_t src_off = static_cast<size_t>(c.src_t0) * c.head_dim;
  const size_t dst_off = static_cast<size_t>(c.dst_t0) * c.head_dim;
  const size_t dst_n = static_cast<size_t>(c.heads) * c.dst_capacity * c.head_dim;

  std::vector<uint8_t> want_codes(codes_n);
  std::vector<float> want_scales(scales_n);
  kvq::QuantizeE4m3(kvq::KvElem::kBF16, src.data() + src_off, src_stride, c.heads, c.tokens, c.head_dim, c.block_tokens,
                    want_codes.data(), want_scales.data());
  std::vector<uint16_t> want_dst(dst_n, 0xFFFF);
  kvq::DequantizeE4m3(want_codes.data(), want_scales.data(), c.heads, c.tokens, c.head_dim, c.block_tokens,
                      kvq::KvElem::kBF16, want_dst.data() + dst_off, dst_stride);

  DevBuf d_src(src.size() * 2), d_codes(codes_n), d_scales(scales_n * 4), d_dst(dst_n * 2);
  ASSERT_TRUE(d_src.ok() && d_codes.ok() && d_scales.ok() && d_dst.ok());
  ASSERT_CUDA(d_src.Upload(src.data(), src.size() * 2));
  ASSERT_CUDA(cuda::QuantizeKvE4m3(d_src.get<__nv_bfloat16>() + src_off, src_stride, c.heads, c.tokens, c.head_dim,
                                   c.block_tokens, d_codes.get<uint8_t>(), d_scales.get<float>(), nullptr));
  ASSERT_CUDA(cuda::DequantizeKvE4m3(d_codes.get<uint8_t>(), d_scales.get<float>(), c.heads, c.tokens, c.head_dim,
                                     c.block_tokens, d_dst.get<__nv_bfloat16>() + dst_off, dst_stride, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint8_t> got_codes(codes_n);
  std::vector<float> got_scales(scales_n);
  std::vector<uint16_t> got_dst(dst_n);
  ASSERT_CUDA(d_codes.Download(got_codes.data(), codes_n));
  ASSERT_CUDA(d_scales.Download(got_scales.data(), scales_n * 4));
  ASSERT_CUDA(d_dst.Download(got_dst.data(), dst_n * 2));

  for (size_t i = 0; i < scales_n; ++i)
    ASSERT_EQ(std::memcmp(&got_scales[i], &want_scales[i], 4), 0)
        << "scale " << i << ": GPU " << got_scales[i] << ", twin " << want_scales[i];
  size_t code_mismatches = 0;
  for (size_t i = 0; i < codes_n; ++i) {
    if (got_codes[i] != want_codes[i] && code_mismatches++ < 10) {
      const int h = static_cast<int>(i / (static_cast<size_t>(c.tokens) * c.head_dim));
      const size_t r = i % (static_cast<size_t>(c.tokens) * c.head_dim);
      const float x = kvq::Bf16BitsToFloat(src[h * src_stride + src_off + r]);
      ADD_FAILURE() << "code " << i << " (x = " << x << "): GPU 0x" << std::hex << int{got_codes[i]} << ", twin 0x"
                    << int{want_codes[i]};
    }
  }
  ASSERT_EQ(code_mismatches, 0u);
  // Poisoned rows (0xFFFF, a NaN) outside the range match the twin's too.
  for (size_t i = 0; i < dst_n; ++i)
    ASSERT_EQ(got_dst[i], want_dst[i]) << "dequantised element " << i << std::hex << ": GPU 0x" << got_dst[i]
                                       << ", twin 0x" << want_dst[i];
}

TEST_F(KvQuantGpuTest, EveryBf16ValueEncodesLikeTheTwin) {
  // |x| <= 448 with 448 present: amax = 448, s = 448 / 448 = 1 exactly.
  std::vector<uint16_t> v;
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float x = kvq::Bf16BitsToFloat(static_cast<uint16_t>(b));
    if (std::isnan(x) || std::isinf(x) || std::fabs(x) <= 448.0f) v.push_back(static_cast<uint16_t>(b));
  }
  const int head_dim = 8;
  while (v.size() % head_dim != 0) v.push_back(0);
  const int tokens = static_cast<int>(v.size() / head_dim);
  CompareWithTwin({1, tokens, head_dim, tokens, tokens, 0, tokens, 0}, v);
}

std::vector<uint16_t> RandomLayer(int heads, int capacity, int head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> coin(0.0f, 1.0f);
  std::vector<uint16_t> v(static_cast<size_t>(heads) * capacity * head_dim);
  for (size_t i = 0; i < v.size(); ++i) {
    const float u = coin(rng);
    float x = normal(rng);
    if (u < 0.002f)
      x *= 1000.0f;  // outliers
    else if (u < 0.003f)
      x = -0.0f;
    else if (u < 0.0035f)
      x = std::numeric_limits<float>::quiet_NaN();
    else if (u < 0.004f)
      x = (u < 0.00375f ? 1.0f : -1.0f) * std::numeric_limits<float>::infinity();
    v[i] = kvq::FloatToBf16Rne(x);
  }
  // Head 0's tokens [64, 128): all zeros (a block whose scale is 0).
  for (int t = 64; t < std::min(capacity, 128); ++t)
    for (int d = 0; d < head_dim; ++d) v[static_cast<size_t>(t) * head_dim + d] = 0;
  return v;
}

TEST_F(KvQuantGpuTest, RandomLayersMatchTheTwinBitForBit) {
  const Case cases[] = {
      {8, 1000, 128, 64, 1000, 0, 1500, 0},  // an 8B-shaped layer, a decode cache with room to spare
      {8, 200, 128, 64, 300, 64, 250, 10},  // pitched source at token 64, partial last block
      {3, 64, 64, 64, 64, 0, 64, 0},  // one full block
      {2, 77, 40, 16, 90, 5, 100, 3},  // head_dim 40: element by element
      {4, 129, 128, 128, 129, 0, 200, 71},  // block of 128 tokens
  };
  uint32_t seed = 11;
  for (const Case& c : cases) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + " tokens " + std::to_string(c.tokens) + " head_dim " +
                 std::to_string(c.head_dim) + " block " + std::to_string(c.block_tokens));
    CompareWithTwin(c, RandomLayer(c.heads, c.src_capacity, c.head_dim, seed++));
  }
}

TEST_F(KvQuantGpuTest, BadShapesAreRefused) {
  EXPECT_EQ(cuda::QuantizeKvE4m3(nullptr, 0, 0, 1, 8, 64, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::DequantizeKvE4m3(nullptr, nullptr, 1, 1, 8, 0, nullptr, 0, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::QuantizeKvE4m3(nullptr, 0, 1, 0, 8, 64, nullptr, nullptr, nullptr), cudaSuccess);  // nothing to do
}

}  // namespace
}  // namespace seer
