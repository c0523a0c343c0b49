// The paged KV kernels against their CPU twins (kernels/paged_kv/paged_kv_cpu.h)
// on random data: batches of sequences of mixed lengths (0, 1, split
// boundaries at 255/256/257, several pages, partial last pages, up to 128k
// positions) over shuffled pages of one pool; GQA 1/2/4/8/16; head dims 64 and
// 128; page sizes 16, 32 and 64; bf16 and fp16; the SIMT kernel and both
// tensor-core kernels; NaN in the pages past each context and in the outputs
// before each run; one case again on every other visible device. The decode
// step's fused q/k/v kernel against the chain of kernels it replaces, bit for
// bit.
#include "kernels/paged_kv/paged_kv.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "kernels/common/gpu_test_util.h"
#include "kernels/ops/ops.h"
#include "kernels/paged_kv/paged_kv_cpu.h"

namespace seer {
namespace {

using cuda::ElemType;
using gpu_test::DevBuf;
using gpu_test::HaveGpu;

uint16_t ToElem(float x, ElemType t) { return t == ElemType::kBF16 ? FloatToBf16(x) : FloatToFp16(x); }
float FromElem(uint16_t x, ElemType t) { return t == ElemType::kBF16 ? Bf16ToFloat(x) : Fp16ToFloat(x); }

class PagedKvGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveGpu(&why)) GTEST_SKIP() << why;
  }
};

struct Case {
  int hq, hkv, d, page;
  std::vector<int> contexts;
};

TEST_F(PagedKvGpuTest, DecodeAttentionMatchesTheTwin) {
  const Case cases[] = {
      {8, 8, 64, 16, {1, 17, 0, 64}},
      {32, 8, 128, 64, {255, 256, 257, 1, 600}},
      {16, 4, 128, 16, {513, 3, 1000}},
      {32, 2, 64, 64, {2000, 70}},
      {4, 1, 128, 64, {129}},
      // GQA 8:1, and contexts up to 128k (the split-K partials of 512 splits).
      {32, 4, 128, 64, {8191, 33, 4096}},
      {8, 1, 128, 64, {131072, 32768, 1}},
      // GQA 2 and 16 (a whole tensor-core tile of query heads), page 32.
      {4, 2, 64, 32, {100, 31, 257}},
      {32, 2, 128, 16, {300, 5, 4097}},
  };
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // Every case on device 0; one on each other device (the kernels' launch
  // attributes belong to a device).
  int devices = 1;
  ASSERT_CUDA(cudaGetDeviceCount(&devices));
  for (int dev = 0; dev < devices; ++dev) {
    ASSERT_CUDA(cudaSetDevice(dev));
    for (ElemType t : {ElemType::kBF16, ElemType::kF16}) {
      for (const Case& c : cases) {
        if (dev > 0 && (t != ElemType::kBF16 || &c != &cases[1])) continue;
        const int B = static_cast<int>(c.contexts.size());
        SCOPED_TRACE("device " + std::to_string(dev) + " Hq=" + std::to_string(c.hq) + " Hkv=" + std::to_string(c.hkv) +
                     " D=" + std::to_string(c.d) + " page=" + std::to_string(c.page) +
                     (t == ElemType::kBF16 ? " bf16" : " fp16"));
        const int max_context = *std::max_element(c.contexts.begin(), c.contexts.end());
        const int max_pages = std::max(1, (max_context + c.page - 1) / c.page);
        int pool_pages = 0;
        for (int ctx : c.contexts) pool_pages += (ctx + c.page - 1) / c.page;
        pool_pages += 3;
        std::vector<int32_t> order(pool_pages);
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        std::vector<int32_t> tables(static_cast<size_t>(B) * max_pages, 0);
        int next = 0;
        for (int b = 0; b < B; ++b) {
          for (int p = 0; p < (c.contexts[b] + c.page - 1) / c.page; ++p) tables[b * max_pages + p] = order[next++];
        }
        const size_t page_elems = static_cast<size_t>(c.hkv) * c.page * c.d;
        std::vector<uint16_t> kp(page_elems * pool_pages), vp(kp.size()), q(static_cast<size_t>(B) * c.hq * c.d);
        std::vector<float> kf(kp.size()), vf(kp.size()), qf(q.size());
        for (size_t i = 0; i < kp.size(); ++i) {
          kp[i] = ToElem(u(rng), t);
          vp[i] = ToElem(u(rng), t);
          kf[i] = FromElem(kp[i], t);
          vf[i] = FromElem(vp[i], t);
        }
        for (size_t i = 0; i < q.size(); ++i) {
          q[i] = ToElem(3.0f * u(rng), t);
          qf[i] = FromElem(q[i], t);
        }
        // Positions past a sequence's context in its last page hold NaN: the
        // kernels read them (a 16-key step) and must mask them.
        cpu::PagedShape shape{c.hq, c.hkv, c.d, c.page, 1.0f};
        for (int b = 0; b < B; ++b) {
          const int ctx = c.contexts[b];
          if (ctx % c.page == 0) continue;
          const int32_t last = tables[b * max_pages + ctx / c.page];
          for (int h = 0; h < c.hkv; ++h) {
            for (int off = ctx % c.page; off < c.page; ++off) {
              const int64_t at = cpu::PageOffset(shape, last, h, off);
              for (int d = 0; d < c.d; ++d) kp[at + d] = vp[at + d] = ToElem(NAN, t);
            }
          }
        }
        for (cuda::PagedKernel kernel :
             {cuda::PagedKernel::kSimt, cuda::PagedKernel::kTensorCore, cuda::PagedKernel::kTensorCoreDirect}) {
          SCOPED_TRACE(kernel == cuda::PagedKernel::kSimt         ? "SIMT kernel"
                       : kernel == cuda::PagedKernel::kTensorCore ? "tensor-core kernel, shared-memory ring"
                                                                  : "tensor-core kernel, direct loads");
          DevBuf dk(kp.size() * 2), dv(vp.size() * 2), dq(q.size() * 2), dout(q.size() * 2);
          DevBuf dtab(tables.size() * 4), dlen(static_cast<size_t>(B) * 4);
          DevBuf scratch(cuda::PagedDecodeWorkspaceBytes(B, c.hq, c.d, max_context));
          ASSERT_CUDA(dk.Upload(kp.data(), kp.size() * 2));
          ASSERT_CUDA(dv.Upload(vp.data(), vp.size() * 2));
          ASSERT_CUDA(dq.Upload(q.data(), q.size() * 2));
          ASSERT_CUDA(dtab.Upload(tables.data(), tables.size() * 4));
          ASSERT_CUDA(dlen.Upload(c.contexts.data(), static_cast<size_t>(B) * 4));
          cuda::PagedAttentionParams p;
          p.dtype = t;
          p.q = dq.get();
          p.out = dout.get();
          p.k_pages = dk.get();
          p.v_pages = dv.get();
          p.block_tables = dtab.get<int32_t>();
          p.context_lens = dlen.get<int32_t>();
          p.batch = B;
          p.max_pages_per_seq = max_pages;
          p.max_context = max_context;
          p.num_heads = c.hq;
          p.num_kv_heads = c.hkv;
          p.head_dim = c.d;
          p.page_tokens = c.page;
          p.scale = 1.0f / std::sqrt(float(c.d));
          p.workspace = scratch.get();
          p.workspace_bytes = cuda::PagedDecodeWorkspaceBytes(B, c.hq, c.d, max_context);
          p.kernel = kernel;
          ASSERT_CUDA(cuda::PagedDecodeAttention(p, nullptr));
          ASSERT_CUDA(cudaDeviceSynchronize());
          std::vector<uint16_t> got(q.size());
          ASSERT_CUDA(dout.Download(got.data(), got.size() * 2));

          cpu::PagedShape s{c.hq, c.hkv, c.d, c.page, p.scale};
          double num = 0.0, den = 0.0;
          for (int b = 0; b < B; ++b) {
            std::vector<float> want(static_cast<size_t>(c.hq) * c.d);
            cpu::PagedDecodeAttention(s, qf.data() + static_cast<size_t>(b) * c.hq * c.d, kf.data(), vf.data(),
                                      tables.data() + b * max_pages, c.contexts[b], want.data());
            for (size_t i = 0; i < want.size(); ++i) {
              const float g = FromElem(got[static_cast<size_t>(b) * c.hq * c.d + i], t);
              ASSERT_FALSE(std::isnan(g)) << "sequence " << b << " element " << i << " unwritten or NaN";
              if (c.contexts[b] == 0) ASSERT_EQ(g, 0.0f);
              num += (g - want[i]) * double(g - want[i]);
              den += double(want[i]) * want[i];
            }
          }
          EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 1e-2);
        }
      }
    }
  }
  ASSERT_CUDA(cudaSetDevice(0));
}

TEST_F(PagedKvGpuTest, PageCopiesMatchTheTwinExactly) {
  const int hkv = 4, d = 128, page = 16, pool = 9;
  const int32_t table[] = {7, 2, 5, 0};
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  DevBuf dpages(static_cast<size_t>(pool) * hkv * page * d * 2), dtab(sizeof(table));
  ASSERT_CUDA(dtab.Upload(table, sizeof(table)));
  std::vector<float> ref(static_cast<size_t>(pool) * hkv * page * d, 0.0f);
  std::vector<uint16_t> zero(ref.size(), 0);
  ASSERT_CUDA(dpages.Upload(zero.data(), zero.size() * 2));
  cpu::PagedShape s{hkv, hkv, d, page, 1.0f};
  for (auto [t0, n] : {std::pair{0, 13}, std::pair{13, 20}, std::pair{33, 31}}) {
    std::vector<uint16_t> src(static_cast<size_t>(hkv) * n * d);
    std::vector<float> srcf(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      src[i] = FloatToBf16(u(rng));
      srcf[i] = Bf16ToFloat(src[i]);
    }
    DevBuf dsrc(src.size() * 2);
    ASSERT_CUDA(dsrc.Upload(src.data(), src.size() * 2));
    ASSERT_CUDA(cuda::ScatterToPages(dsrc.get(), t0, n, dtab.get<int32_t>(), hkv, d, page, dpages.get(), nullptr));
    cpu::ScatterToPages(s, srcf.data(), t0, n, table, ref.data());
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<uint16_t> pages(ref.size());
  ASSERT_CUDA(dpages.Download(pages.data(), pages.size() * 2));
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(Bf16ToFloat(pages[i]), ref[i]) << i;
  // Back out, and one token per sequence written at its position.
  DevBuf dout(static_cast<size_t>(hkv) * 64 * d * 2);
  ASSERT_CUDA(cuda::GatherFromPages(dpages.get(), dtab.get<int32_t>(), 0, 64, hkv, d, page, dout.get(), nullptr));
  std::vector<uint16_t> out(static_cast<size_t>(hkv) * 64 * d);
  ASSERT_CUDA(dout.Download(out.data(), out.size() * 2));
  std::vector<float> want(out.size());
  cpu::GatherFromPages(s, ref.data(), table, 0, 64, want.data());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(Bf16ToFloat(out[i]), want[i]) << i;
  const int32_t positions[] = {5, 63};
  const int32_t tables2[] = {7, 2, 5, 0, 1, 3, 4, 6};
  DevBuf dpos(sizeof(positions)), dtab2(sizeof(tables2)), dk(2 * hkv * d * 2), dv(2 * hkv * d * 2);
  std::vector<uint16_t> k(2 * hkv * d), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = FloatToBf16(u(rng));
    v[i] = FloatToBf16(u(rng));
  }
  ASSERT_CUDA(dpos.Upload(positions, sizeof(positions)));
  ASSERT_CUDA(dtab2.Upload(tables2, sizeof(tables2)));
  ASSERT_CUDA(dk.Upload(k.data(), k.size() * 2));
  ASSERT_CUDA(dv.Upload(v.data(), v.size() * 2));
  DevBuf dvpages(dpages.get() == nullptr ? 0 : static_cast<size_t>(pool) * hkv * page * d * 2);
  ASSERT_CUDA(cuda::WriteKvPaged(dk.get(), dv.get(), dpos.get<int32_t>(), dtab2.get<int32_t>(), 4, 2, hkv, d, page,
                                 dpages.get(), dvpages.get(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(dpages.Download(pages.data(), pages.size() * 2));
  for (int b = 0; b < 2; ++b) {
    for (int h = 0; h < hkv; ++h) {
      const int32_t pg = tables2[b * 4 + positions[b] / page];
      const size_t at = cpu::PageOffset(s, pg, h, positions[b] % page);
      for (int i = 0; i < d; ++i) ASSERT_EQ(pages[at + i], k[(b * hkv + h) * d + i]) << b << " " << h << " " << i;
    }
  }
}

// RopeQkvToPages against SplitColumns3, AddBias, ApplyRope and WriteKvPaged
// run on the same input: q and both page pools equal bit for bit (pages it
// must not touch included), with and without biases; padding rows past the
// batch; positions on both sides of page boundaries; GQA 1, 4 and 7; head
// dims 64 and 128; page sizes 16 and 32.
TEST_F(PagedKvGpuTest, FusedRopeQkvMatchesTheKernelsItReplacesExactly) {
  struct Shape {
    int hq, hkv, d, page, rows;
    std::vector<int32_t> positions;  // one per sequence of the batch
    bool bias;
  };
  const Shape shapes[] = {
      {32, 8, 128, 16, 4, {15, 16, 0}, false},
      {32, 8, 128, 32, 3, {31, 32, 100}, true},
      {14, 2, 64, 16, 5, {47, 1, 63, 200}, true},
      {8, 8, 64, 16, 1, {5}, false},
  };
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (const Shape& s : shapes) {
    SCOPED_TRACE("Hq=" + std::to_string(s.hq) + " Hkv=" + std::to_string(s.hkv) + " D=" + std::to_string(s.d) +
                 " page=" + std::to_string(s.page) + " rows=" + std::to_string(s.rows) + (s.bias ? " bias" : ""));
    const int B = static_cast<int>(s.positions.size());
    const int qc = s.hq * s.d, kc = s.hkv * s.d, width = qc + 2 * kc;
    const int max_pages = 16, pool_pages = B * max_pages;
    std::vector<int32_t> tables(static_cast<size_t>(B) * max_pages);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng);
    std::vector<int32_t> positions = s.positions;
    positions.resize(s.rows, 0);  // padding rows sit at 0, as the engine pads
    auto random_bf16 = [&](size_t n) {
      std::vector<uint16_t> v(n);
      for (uint16_t& x : v) x = FloatToBf16(u(rng));
      return v;
    };
    auto random_f32 = [&](size_t n) {
      std::vector<float> v(n);
      for (float& x : v) x = 0.1f * u(rng);
      return v;
    };
    const std::vector<uint16_t> qkv = random_bf16(static_cast<size_t>(s.rows) * width);
    const size_t pool_elems = static_cast<size_t>(pool_pages) * s.hkv * s.page * s.d;
    const std::vector<uint16_t> k0 = random_bf16(pool_elems), v0 = random_bf16(pool_elems);
    const std::vector<float> qb = random_f32(qc), kb = random_f32(kc), vb = random_f32(kc);
    std::vector<float> inv_freq(s.d / 2);
    for (int i = 0; i < s.d / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / s.d);

    DevBuf dqkv(qkv.size() * 2), dpos(positions.size() * 4), dtab(tables.size() * 4), dfreq(inv_freq.size() * 4);
    DevBuf drope(static_cast<size_t>(s.rows) * s.d / 2 * 8), dqb(qc * 4), dkb(kc * 4), dvb(kc * 4);
    ASSERT_CUDA(dqkv.Upload(qkv.data(), qkv.size() * 2));
    ASSERT_CUDA(dpos.Upload(positions.data(), positions.size() * 4));
    ASSERT_CUDA(dtab.Upload(tables.data(), tables.size() * 4));
    ASSERT_CUDA(dfreq.Upload(inv_freq.data(), inv_freq.size() * 4));
    ASSERT_CUDA(dqb.Upload(qb.data(), qc * 4));
    ASSERT_CUDA(dkb.Upload(kb.data(), kc * 4));
    ASSERT_CUDA(dvb.Upload(vb.data(), kc * 4));
    ASSERT_CUDA(
        cuda::RopeTableAt(dfreq.get<float>(), s.d / 2, dpos.get<int32_t>(), s.rows, drope.get<float2>(), nullptr));
    // The chain the engine ran before: split, biases, RoPE, page writes.
    using bf16 = __nv_bfloat16;
    DevBuf rq(static_cast<size_t>(s.rows) * qc * 2), rk(static_cast<size_t>(s.rows) * kc * 2),
        rv(static_cast<size_t>(s.rows) * kc * 2), rkp(pool_elems * 2), rvp(pool_elems * 2);
    ASSERT_CUDA(rkp.Upload(k0.data(), pool_elems * 2));
    ASSERT_CUDA(rvp.Upload(v0.data(), pool_elems * 2));
    ASSERT_CUDA(cuda::SplitColumns3(dqkv.get<bf16>(), s.rows, qc, kc, kc, rq.get<bf16>(), rk.get<bf16>(),
                                    rv.get<bf16>(), nullptr));
    if (s.bias) {
      ASSERT_CUDA(cuda::AddBias(rq.get<bf16>(), s.rows, qc, dqb.get<float>(), nullptr));
      ASSERT_CUDA(cuda::AddBias(rk.get<bf16>(), s.rows, kc, dkb.get<float>(), nullptr));
      ASSERT_CUDA(cuda::AddBias(rv.get<bf16>(), s.rows, kc, dvb.get<float>(), nullptr));
    }
    ASSERT_CUDA(cuda::ApplyRope(rq.get<bf16>(), s.rows, s.hq, s.d, drope.get<float2>(), nullptr));
    ASSERT_CUDA(cuda::ApplyRope(rk.get<bf16>(), s.rows, s.hkv, s.d, drope.get<float2>(), nullptr));
    ASSERT_CUDA(cuda::WriteKvPaged(rk.get(), rv.get(), dpos.get<int32_t>(), dtab.get<int32_t>(), max_pages, B, s.hkv,
                                   s.d, s.page, rkp.get(), rvp.get(), nullptr));
    // The fused kernel, q poisoned first.
    DevBuf fq(static_cast<size_t>(s.rows) * qc * 2), fkp(pool_elems * 2), fvp(pool_elems * 2);
    ASSERT_CUDA(fkp.Upload(k0.data(), pool_elems * 2));
    ASSERT_CUDA(fvp.Upload(v0.data(), pool_elems * 2));
    cuda::RopeQkvParams p;
    p.qkv = dqkv.get();
    p.rows = s.rows;
    p.batch = B;
    p.num_heads = s.hq;
    p.num_kv_heads = s.hkv;
    p.head_dim = s.d;
    p.rope = drope.get<float2>();
    if (s.bias) {
      p.q_bias = dqb.get<float>();
      p.k_bias = dkb.get<float>();
      p.v_bias = dvb.get<float>();
    }
    p.positions = dpos.get<int32_t>();
    p.block_tables = dtab.get<int32_t>();
    p.max_pages_per_seq = max_pages;
    p.page_tokens = s.page;
    p.q = fq.get();
    p.k_pages = fkp.get();
    p.v_pages = fvp.get();
    ASSERT_CUDA(cuda::RopeQkvToPages(p, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> want(static_cast<size_t>(s.rows) * qc), got(want.size());
    ASSERT_CUDA(rq.Download(want.data(), want.size() * 2));
    ASSERT_CUDA(fq.Download(got.data(), got.size() * 2));
    ASSERT_EQ(got, want) << "q";
    std::vector<uint16_t> want_pages(pool_elems), got_pages(pool_elems);
    ASSERT_CUDA(rkp.Download(want_pages.data(), pool_elems * 2));
    ASSERT_CUDA(fkp.Download(got_pages.data(), pool_elems * 2));
    ASSERT_EQ(got_pages, want_pages) << "k pages";
    ASSERT_NE(got_pages, k0) << "the k pages were written";
    ASSERT_CUDA(rvp.Download(want_pages.data(), pool_elems * 2));
    ASSERT_CUDA(fvp.Download(got_pages.data(), pool_elems * 2));
    ASSERT_EQ(got_pages, want_pages) << "v pages";
  }
  cuda::RopeQkvParams bad;
  bad.rows = 1;
  bad.num_heads = bad.num_kv_heads = 1;
  bad.head_dim = 72;  // not a multiple of 16
  bad.page_tokens = 16;
  bad.max_pages_per_seq = 1;
  EXPECT_EQ(cuda::RopeQkvToPages(bad, nullptr), cudaErrorInvalidValue);
  bad.head_dim = 0;
  EXPECT_EQ(cuda::RopeQkvToPages(bad, nullptr), cudaErrorInvalidValue);
  // A well-formed call but for one pointer off a 16-byte boundary.
  DevBuf buf(4096);
  bad.head_dim = 16;
  bad.qkv = buf.get<char>() + 2;
  bad.rope = buf.get<float2>();
  bad.q = buf.get();
  EXPECT_EQ(cuda::RopeQkvToPages(bad, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace seer
