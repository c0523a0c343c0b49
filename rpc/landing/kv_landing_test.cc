// The host KV landing (kv_landing.h): chunks whose K/V arrive in pieces of
// odd sizes (as gRPC slices do) land in a float32 HostKvCache exactly as
// KvCache::WriteLayer would put the same bytes (F32 and BF16 on the wire), or
// as the fp8 twin dequantises them (kernels/kv_quant); tokens outside the
// chunks stay untouched; sizes, ranges and fp8 block alignment that do not fit
// are DATA_LOSS naming the field.
#include "rpc/landing/kv_landing.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/kv_quant/e4m3.h"
#include "kernels/kv_quant/kv_quant_cpu.h"

namespace seer {
namespace {

constexpr int kLayers = 2, kHeads = 3, kDim = 16, kCapacity = 300, kSeq = 200;

// Splits `bytes` into pieces of sizes 1, 7, 64, 1000, ... cycling.
std::vector<std::vector<uint8_t>> Cut(const std::vector<uint8_t>& bytes, BytePieces* out) {
  static const size_t sizes[] = {1, 7, 64, 1000, 3};
  std::vector<std::vector<uint8_t>> owned;
  size_t at = 0;
  for (int i = 0; at < bytes.size(); ++i) {
    const size_t n = std::min(sizes[i % 5], bytes.size() - at);
    owned.emplace_back(bytes.begin() + at, bytes.begin() + at + n);
    at += n;
  }
  for (const auto& p : owned) out->Add(p.data(), p.size());
  return owned;
}

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

const int kChunkStarts[] = {0, 64, 128, 192};  // chunks of 64 tokens, the last of 8

// The streaming copy (non-temporal stores from 4 KiB pieces up) gives the
// bytes memcpy gives, for any piece sizes, read offset and length, and any
// alignment of the destination; nothing outside [dst, dst + n) is written.
TEST(BytePieces, StreamingCopyIsMemcpy) {
  std::mt19937 rng(7);
  std::vector<uint8_t> src(3 << 20);
  for (uint8_t& b : src) b = static_cast<uint8_t>(rng());
  for (int trial = 0; trial < 200; ++trial) {
    BytePieces pieces;
    size_t at = 0;
    while (at < src.size()) {
      // mostly large pieces (the streaming path), some small ones between
      const size_t n = std::min<size_t>(src.size() - at, rng() % 4 == 0 ? 1 + rng() % 5000 : 1 + rng() % 400000);
      pieces.Add(src.data() + at, n);
      at += n;
    }
    const size_t offset = rng() % src.size();
    const size_t n = rng() % (src.size() - offset + 1);
    const size_t misalign = rng() % 64;
    std::vector<uint8_t> got(n + 128, 0xA5), want(n + 128, 0xA5);
    pieces.CopyTo(offset, n, got.data() + misalign, /*streaming=*/true);
    std::memcpy(want.data() + misalign, src.data() + offset, n);
    ASSERT_EQ(got, want) << "trial " << trial << ": offset " << offset << ", " << n << " bytes, dst + " << misalign;
    std::vector<uint8_t> plain(n + 128, 0xA5);
    pieces.CopyTo(offset, n, plain.data() + misalign);
    ASSERT_EQ(plain, want) << "trial " << trial;
  }
}

TEST(KvLanding, F32AndBf16PiecesLandLikeWriteLayer) {
  for (DType wire : {DType::kF32, DType::kBF16}) {
    HostKvCache got(kLayers, kHeads, kDim, kCapacity), want(kLayers, kHeads, kDim, kCapacity);
    for (int l = 0; l < kLayers; ++l) {
      std::fill(got.k(l), got.k(l) + kHeads * kCapacity * kDim, -9.0f);
      std::fill(got.v(l), got.v(l) + kHeads * kCapacity * kDim, -9.0f);
      std::fill(want.k(l), want.k(l) + kHeads * kCapacity * kDim, -9.0f);
      std::fill(want.v(l), want.v(l) + kHeads * kCapacity * kDim, -9.0f);
    }
    auto landing = MakeHostKvLanding(&got, KvWireFormat{wire, false, 64});
    ASSERT_TRUE(landing.ok()) << landing.status().ToString();
    uint32_t seed = 1;
    for (int l = 0; l < kLayers; ++l) {
      for (int t0 : kChunkStarts) {
        const int n = std::min(64, kSeq - t0);
        const size_t elems = static_cast<size_t>(kHeads) * n * kDim;
        std::vector<uint8_t> k, v;
        if (wire == DType::kF32) {
          k = Bytes(Random(elems, seed++));
          v = Bytes(Random(elems, seed++));
        } else {
          std::vector<uint16_t> kb(elems), vb(elems);
          const std::vector<float> kf = Random(elems, seed++), vf = Random(elems, seed++);
          for (size_t i = 0; i < elems; ++i) {
            kb[i] = FloatToBf16(kf[i]);
            vb[i] = FloatToBf16(vf[i]);
          }
          k = Bytes(kb);
          v = Bytes(vb);
        }
        KvChunkPieces c;
        c.layer = l;
        c.token_start = t0;
        c.token_count = n;
        auto kp = Cut(k, &c.k);
        auto vp = Cut(v, &c.v);
        ASSERT_TRUE((*landing)->Land(c).ok());
        ASSERT_TRUE(want.WriteLayer(l, t0, n, wire, k.data(), v.data()).ok());
      }
    }
    ASSERT_TRUE((*landing)->Flush().ok());
    for (int l = 0; l < kLayers; ++l) {
      ASSERT_EQ(std::memcmp(got.k(l), want.k(l), sizeof(float) * kHeads * kCapacity * kDim), 0) << "K layer " << l;
      ASSERT_EQ(std::memcmp(got.v(l), want.v(l), sizeof(float) * kHeads * kCapacity * kDim), 0) << "V layer " << l;
    }
  }
}

TEST(KvLanding, Fp8PiecesLandAsTheTwinDequantises) {
  HostKvCache got(kLayers, kHeads, kDim, kCapacity);
  for (int l = 0; l < kLayers; ++l) {
    std::fill(got.k(l), got.k(l) + kHeads * kCapacity * kDim, -9.0f);
    std::fill(got.v(l), got.v(l) + kHeads * kCapacity * kDim, -9.0f);
  }
  auto landing = MakeHostKvLanding(&got, KvWireFormat{DType::kF32, true, 64});
  ASSERT_TRUE(landing.ok());
  std::vector<std::vector<float>> want_k(kLayers, std::vector<float>(kHeads * kCapacity * kDim, -9.0f));
  uint32_t seed = 50;
  for (int l = 0; l < kLayers; ++l) {
    for (int t0 : kChunkStarts) {
      const int n = std::min(64, kSeq - t0);
      const size_t elems = static_cast<size_t>(kHeads) * n * kDim;
      const std::vector<float> kf = Random(elems, seed++), vf = Random(elems, seed++);
      std::vector<uint8_t> kc(elems), vc(elems);
      std::vector<float> ks(kHeads), vs(kHeads);
      kvq::QuantizeE4m3(kvq::KvElem::kF32, kf.data(), static_cast<int64_t>(n) * kDim, kHeads, n, kDim, 64, kc.data(),
                        ks.data());
      kvq::QuantizeE4m3(kvq::KvElem::kF32, vf.data(), static_cast<int64_t>(n) * kDim, kHeads, n, kDim, 64, vc.data(),
                        vs.data());
      kvq::DequantizeE4m3(kc.data(), ks.data(), kHeads, n, kDim, 64, kvq::KvElem::kF32,
                          want_k[l].data() + static_cast<size_t>(t0) * kDim, static_cast<int64_t>(kCapacity) * kDim);
      KvChunkPieces c;
      c.layer = l;
      c.token_start = t0;
      c.token_count = n;
      auto a = Cut(kc, &c.k);
      auto b = Cut(vc, &c.v);
      auto d = Cut(Bytes(ks), &c.k_scales);
      auto e = Cut(Bytes(vs), &c.v_scales);
      ASSERT_TRUE((*landing)->Land(c).ok());
    }
  }
  for (int l = 0; l < kLayers; ++l)
    ASSERT_EQ(std::memcmp(got.k(l), want_k[l].data(), sizeof(float) * want_k[l].size()), 0) << "K layer " << l;
}

TEST(KvLanding, ChunksThatDoNotFitAreDataLoss) {
  HostKvCache cache(kLayers, kHeads, kDim, kCapacity);
  auto f32 = MakeHostKvLanding(&cache, KvWireFormat{DType::kF32, false, 64});
  auto fp8 = MakeHostKvLanding(&cache, KvWireFormat{DType::kF32, true, 64});
  ASSERT_TRUE(f32.ok() && fp8.ok());
  std::vector<uint8_t> bytes(kHeads * 10 * kDim * 4);
  KvChunkPieces c;
  c.layer = 0;
  c.token_start = 0;
  c.token_count = 10;
  c.k.Add(bytes.data(), bytes.size());
  c.v.Add(bytes.data(), bytes.size() - 4);
  Status s = (*f32)->Land(c);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("k/v"), std::string::npos) << s.ToString();
  c.layer = kLayers;
  EXPECT_EQ((*f32)->Land(c).code(), StatusCode::kDataLoss);
  c.layer = 0;
  c.token_start = kCapacity - 5;
  EXPECT_EQ((*f32)->Land(c).code(), StatusCode::kDataLoss);
  KvChunkPieces q;
  q.layer = 0;
  q.token_start = 32;  // not on a 64-token block
  q.token_count = 10;
  std::vector<uint8_t> codes(kHeads * 10 * kDim), scales(kHeads * 4);
  q.k.Add(codes.data(), codes.size());
  q.v.Add(codes.data(), codes.size());
  q.k_scales.Add(scales.data(), scales.size());
  q.v_scales.Add(scales.data(), scales.size());
  s = (*fp8)->Land(q);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("block"), std::string::npos) << s.ToString();
  q.token_start = 64;
  EXPECT_TRUE((*fp8)->Land(q).ok());
  EXPECT_EQ(MakeHostKvLanding(&cache, KvWireFormat{DType::kI32, false, 64}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace seer
