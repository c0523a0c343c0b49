// The fp8 (E4M3) KV codec's CPU twin (kv_quant_cpu.h) against a float64
// reference written here from the format's definition:
//   - decoding: every one of the 256 codes against sign * 2^(e-7) * (1 + m/8)
//     (m * 2^-9 for e = 0) in double, NaN for S.1111.111;
//   - encoding: the nearest of the 127 non-negative finite values found by
//     brute force in double, ties to the even code, saturation at 448, on
//     every code point, every midpoint and its float neighbours, subnormals,
//     float denormals, +-0, Inf, NaN and 200k random floats;
//   - block quantisation of f32 and bf16 layers with a pitch: each scale is
//     amax / 448 to half a float ulp, each code the reference's nearest code
//     of x / s (the quotient rounded to float32 first, as the format says:
//     the GPU divides in float32, and rounding that quotient can land on an
//     E4M3 midpoint the exact one misses), and the round trip within the format's bound
//     max(2^-4 |x|, 2^-10 s);
//   - an outlier token changes only its own block's scale: the other tokens
//     keep ~2^-4 relative error, where one scale per head flushes them.
#include "kernels/kv_quant/kv_quant_cpu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/kv_quant/e4m3.h"

namespace seer::kvq {
namespace {

double RefDecode(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? m * std::pow(2.0, -9) : std::pow(2.0, e - 7) * (1.0 + m / 8.0);
  return s ? -mag : mag;
}

// Nearest E4M3 code of x (double), ties to the even code, saturating.
int RefEncode(double x) {
  if (std::isnan(x)) return 0x7F;
  const int sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::fabs(x);
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(RefDecode(c) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = c;
      best_d = d;
    }
  }
  return sign | best;
}

TEST(E4m3, DecodeMatchesTheDefinitionForEveryCode) {
  for (int c = 0; c < 256; ++c) {
    const double want = RefDecode(c);
    const float got = E4m3ToFloat(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
      EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;
    }
  }
  EXPECT_EQ(E4m3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(E4m3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(E4m3ToFloat(0x08), std::ldexp(1.0f, -6));
}

TEST(E4m3, EncodeIsRoundToNearestEvenWithSaturation) {
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           448.0f,
                           -448.0f,
                           449.0f,
                           463.99f,
                           464.0f,
                           1e30f,
                           -1e30f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::denorm_min(),
                           -std::numeric_limits<float>::denorm_min(),
                           std::numeric_limits<float>::min(),
                           std::ldexp(1.0f, -10),
                           std::ldexp(1.0f, -11)};
  // Every code point, every midpoint between neighbours (ties), and the
  // floats right next to each midpoint.
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = static_cast<float>(RefDecode(c)), hi = static_cast<float>(RefDecode(c + 1));
    const float mid = (lo + hi) / 2;  // exact: both have few mantissa bits
    for (float v : {lo, hi, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      xs.push_back(v);
      xs.push_back(-v);
    }
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> expo(-30, 12);
  for (int i = 0; i < 200000; ++i) xs.push_back((i & 1 ? -1.0f : 1.0f) * std::ldexp(mant(rng), expo(rng)));
  int checked = 0;
  for (float x : xs) {
    ASSERT_EQ(FloatToE4m3(x), RefEncode(x)) << "x = " << x;
    ++checked;
  }
  EXPECT_EQ(FloatToE4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToE4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(FloatToE4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(FloatToE4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(FloatToE4m3(-0.0f), 0x80);
  // Ties go to the even code: 0.5 * 2^-9 -> 0, 1.5 * 2^-9 -> 2 * 2^-9, 9.5 * 2^-3 -> 1.25.
  EXPECT_EQ(FloatToE4m3(std::ldexp(0.5f, -9)), 0x00);
  EXPECT_EQ(FloatToE4m3(std::ldexp(1.5f, -9)), 0x02);
  EXPECT_EQ(FloatToE4m3(1.1875f), FloatToE4m3(1.25f));
  EXPECT_GT(checked, 200000);
}

uint16_t ToBf16(float f) { return FloatToBf16Rne(f); }

struct Layer {
  int heads, tokens, head_dim, pitch_tokens, t0;
};

// A layer [heads, pitch_tokens, head_dim] of N(0, 1) values with a few
// larger ones; the quantised range is tokens [t0, t0 + tokens).
std::vector<float> RandomLayer(const Layer& l, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> coin(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(l.heads) * l.pitch_tokens * l.head_dim);
  for (float& x : v) x = normal(rng) * (coin(rng) < 0.01f ? 30.0f : 1.0f);
  return v;
}

void CheckQuantized(const Layer& l, const std::vector<float>& x, int block_tokens, const std::vector<uint8_t>& codes,
                    const std::vector<float>& scales) {
  const int blocks = ScaleBlocks(l.tokens, block_tokens);
  for (int h = 0; h < l.heads; ++h) {
    for (int b = 0; b < blocks; ++b) {
      const int ta = b * block_tokens, tb = std::min(l.tokens, ta + block_tokens);
      double amax = 0.0;
      for (int t = ta; t < tb; ++t)
        for (int d = 0; d < l.head_dim; ++d) {
          const double a = std::fabs(x[(static_cast<size_t>(h) * l.pitch_tokens + l.t0 + t) * l.head_dim + d]);
          if (std::isfinite(a)) amax = std::max(amax, a);
        }
      const float s = scales[static_cast<size_t>(h) * blocks + b];
      const double exact = amax / 448.0;
      const float fe = static_cast<float>(exact);
      ASSERT_LE(std::fabs(s - exact), 0.5 * (std::nextafter(fe, 1e30f) - fe))
          << "scale of head " << h << " block " << b;
      for (int t = ta; t < tb; ++t) {
        for (int d = 0; d < l.head_dim; ++d) {
          const double xv = x[(static_cast<size_t>(h) * l.pitch_tokens + l.t0 + t) * l.head_dim + d];
          const uint8_t c = codes[(static_cast<size_t>(h) * l.tokens + t) * l.head_dim + d];
          // The format divides in float32 (as the GPU does), then rounds to E4M3.
          const double q = static_cast<float>(xv / s);
          ASSERT_EQ(c, RefEncode(q)) << "head " << h << " token " << t << " dim " << d << " x " << xv << " s " << s
                                     << " block " << block_tokens;
          const double back = RefDecode(c) * s;
          const double bound = std::max(std::ldexp(std::fabs(xv), -4), std::ldexp(double{s}, -10));
          ASSERT_LE(std::fabs(back - xv), bound * (1 + 1e-6)) << "round trip of " << xv;
        }
      }
    }
  }
}

TEST(KvQuant, F32LayerWithPitchMatchesTheReference) {
  const Layer l{3, 200, 64, 300, 64};  // 3 blocks of 64 and one of 8
  const std::vector<float> x = RandomLayer(l, 1);
  std::vector<uint8_t> codes(static_cast<size_t>(l.heads) * l.tokens * l.head_dim);
  std::vector<float> scales(static_cast<size_t>(l.heads) * ScaleBlocks(l.tokens, kBlockTokens));
  QuantizeE4m3(KvElem::kF32, x.data() + static_cast<size_t>(l.t0) * l.head_dim,
               static_cast<int64_t>(l.pitch_tokens) * l.head_dim, l.heads, l.tokens, l.head_dim, kBlockTokens,
               codes.data(), scales.data());
  CheckQuantized(l, x, kBlockTokens, codes, scales);

  // Back into f32 and bf16 layers with another pitch; untouched rows stay.
  const int pitch = 250, t0 = 10;
  std::vector<float> f32(static_cast<size_t>(l.heads) * pitch * l.head_dim, -7.0f);
  std::vector<uint16_t> bf(f32.size(), 0x1234);
  DequantizeE4m3(codes.data(), scales.data(), l.heads, l.tokens, l.head_dim, kBlockTokens, KvElem::kF32,
                 f32.data() + static_cast<size_t>(t0) * l.head_dim, static_cast<int64_t>(pitch) * l.head_dim);
  DequantizeE4m3(codes.data(), scales.data(), l.heads, l.tokens, l.head_dim, kBlockTokens, KvElem::kBF16,
                 bf.data() + static_cast<size_t>(t0) * l.head_dim, static_cast<int64_t>(pitch) * l.head_dim);
  const int blocks = ScaleBlocks(l.tokens, kBlockTokens);
  for (int h = 0; h < l.heads; ++h)
    for (int t = 0; t < pitch; ++t)
      for (int d = 0; d < l.head_dim; ++d) {
        const size_t i = (static_cast<size_t>(h) * pitch + t) * l.head_dim + d;
        if (t < t0 || t >= t0 + l.tokens) {
          ASSERT_EQ(f32[i], -7.0f);
          ASSERT_EQ(bf[i], 0x1234);
          continue;
        }
        const int tt = t - t0;
        const double exact = RefDecode(codes[(static_cast<size_t>(h) * l.tokens + tt) * l.head_dim + d]) *
                             scales[static_cast<size_t>(h) * blocks + tt / kBlockTokens];
        ASSERT_EQ(f32[i], static_cast<float>(exact));  // one rounding of an exact product
        ASSERT_LE(std::fabs(Bf16BitsToFloat(bf[i]) - exact), std::ldexp(std::fabs(exact), -8) * (1 + 1e-6));
      }
}

TEST(KvQuant, Bf16LayerMatchesTheReference) {
  const Layer l{2, 130, 128, 130, 0};
  const std::vector<float> f = RandomLayer(l, 2);
  std::vector<uint16_t> b(f.size());
  std::vector<float> x(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    b[i] = ToBf16(f[i]);
    x[i] = Bf16BitsToFloat(b[i]);
  }
  for (int block_tokens : {64, 16, 130}) {
    std::vector<uint8_t> codes(static_cast<size_t>(l.heads) * l.tokens * l.head_dim);
    std::vector<float> scales(static_cast<size_t>(l.heads) * ScaleBlocks(l.tokens, block_tokens));
    QuantizeE4m3(KvElem::kBF16, b.data(), static_cast<int64_t>(l.pitch_tokens) * l.head_dim, l.heads, l.tokens,
                 l.head_dim, block_tokens, codes.data(), scales.data());
    CheckQuantized(l, x, block_tokens, codes, scales);
  }
}

TEST(KvQuant, SpecialValuesFollowTheStatedRules) {
  // One head, 2 blocks of 4 tokens x 2 dims: block 0 holds NaN, Inf, -Inf,
  // -0 and finite values; block 1 is all zeros.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {nan, 1.0f, inf, -inf, -0.0f, 2.0f, -4.0f, 0.5f, 0, 0, 0, 0, 0, -0.0f, 0, 0};
  std::vector<uint8_t> codes(16);
  std::vector<float> scales(2);
  QuantizeE4m3(KvElem::kF32, x.data(), 16, 1, 8, 2, 4, codes.data(), scales.data());
  EXPECT_EQ(scales[0], 4.0f / 448.0f);  // NaN and Inf do not count
  EXPECT_EQ(scales[1], 0.0f);
  EXPECT_EQ(codes[0], 0x7F);
  EXPECT_EQ(codes[2], 0x7E);
  EXPECT_EQ(codes[3], 0xFE);
  EXPECT_EQ(codes[4], 0x80);
  EXPECT_EQ(codes[6], 0xFE);  // -amax -> -448
  for (int i = 8; i < 16; ++i) EXPECT_EQ(codes[i], i == 13 ? 0x80 : 0x00);
  std::vector<float> back(16);
  DequantizeE4m3(codes.data(), scales.data(), 1, 8, 2, 4, KvElem::kF32, back.data(), 16);
  EXPECT_TRUE(std::isnan(back[0]));
  EXPECT_EQ(back[2], 4.0f);
  EXPECT_EQ(back[3], -4.0f);
  EXPECT_EQ(back[6], -4.0f);
  EXPECT_TRUE(std::signbit(back[4]) && back[4] == 0.0f);
  for (int i = 8; i < 16; ++i) EXPECT_EQ(back[i], 0.0f);
  std::vector<uint16_t> bf(16);
  DequantizeE4m3(codes.data(), scales.data(), 1, 8, 2, 4, KvElem::kBF16, bf.data(), 16);
  EXPECT_EQ(bf[0], kBf16NaN);
}

// Relative RMS error of tokens outside the first block after a round trip.
double ErrorAwayFromTheOutlier(int block_tokens) {
  const int tokens = 256, dim = 64;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens) * dim);
  for (float& v : x) v = normal(rng);
  x[5] = 1e5f;  // token 0: an outlier 10^5 times the rest
  std::vector<uint8_t> codes(x.size());
  std::vector<float> scales(ScaleBlocks(tokens, block_tokens));
  QuantizeE4m3(KvElem::kF32, x.data(), 0, 1, tokens, dim, block_tokens, codes.data(), scales.data());
  std::vector<float> back(x.size());
  DequantizeE4m3(codes.data(), scales.data(), 1, tokens, dim, block_tokens, KvElem::kF32, back.data(), 0);
  double err = 0, ref = 0;
  for (size_t i = 64 * dim; i < x.size(); ++i) {
    err += (double{back[i]} - x[i]) * (double{back[i]} - x[i]);
    ref += double{x[i]} * x[i];
  }
  return std::sqrt(err / ref);
}

TEST(KvQuant, AnOutlierTokenDoesNotFlattenTheRestOfItsHead) {
  const double per_block = ErrorAwayFromTheOutlier(kBlockTokens);
  const double per_head = ErrorAwayFromTheOutlier(256);
  std::printf("relative RMS error away from a 1e5 outlier: per 64-token block %.4f, one scale per head %.4f\n",
              per_block, per_head);
  EXPECT_LT(per_block, 0.04);  // e4m3's 3 mantissa bits: ~2^-4 / sqrt(3) RMS
  EXPECT_GT(per_head, 3 * per_block);
}

}  // namespace
}  // namespace seer::kvq
