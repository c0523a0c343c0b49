// The CUDA attention kernels (kernels/attention/attention.h) against their CPU
// twins (kernels/attention/attention_cpu.h), on fresh random inputs each run: odd
// lengths and lengths under one block, GQA ratios 1, 4 and 8, head dims 32,
// 64, 96 and 128, block lists from one block per row to dense (and empty
// rows), bf16 and fp16, every prefill variant the device runs (the sm90
// wgmma/TMA kernel on compute capability 9.0). The CPU reference runs in float32 on the same rounded
// inputs. Tolerance: norm-wise relative error <= 1e-2 over the whole output,
// and <= 3e-2 for every (token, head) row on its own, so a single wrong row
// cannot hide in a long sequence. Every output starts as NaN (0xFF bytes)
// and the K/V cache slack past the sequence is NaN too: an unwritten element
// or a read past the sequence fails. NaN never passes.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "base/dtype.h"
#include "kernels/common/block_lists.h"
#include "kernels/attention/attention_cpu.h"
#include "kernels/attention/attention.h"
#include "kernels/attention/attention_variants.h"
#include "kernels/common/gpu_test_util.h"
#include "kernels/ops/ops.h"

namespace seer {
namespace {

using gpu_test::DevBuf;
using gpu_test::HaveGpu;

using cuda::ElemType;
using cuda::FwdVariant;

uint16_t ToElem(float x, ElemType t) { return t == ElemType::kBF16 ? FloatToBf16(x) : FloatToFp16(x); }
float FromElem(uint16_t x, ElemType t) { return t == ElemType::kBF16 ? Bf16ToFloat(x) : Fp16ToFloat(x); }
const char* ElemName(ElemType t) { return t == ElemType::kBF16 ? "bf16" : "fp16"; }

struct Comparison {
  double rel = 0.0;  // ||gpu - ref|| / ||ref|| over everything
  double worst_row = 0.0;  // the same per (token, head) row, worst row
  int64_t nans = 0;
  int64_t worst_index = -1;
};

// rows of `dim` values each. A row whose reference is all zero must be zero.
Comparison Compare(const std::vector<float>& gpu, const std::vector<float>& ref, int64_t rows, int dim) {
  Comparison c;
  double num = 0.0, den = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double rn = 0.0, rd = 0.0;
    for (int d = 0; d < dim; ++d) {
      const double g = gpu[r * dim + d];
      const double x = ref[r * dim + d];
      if (std::isnan(g) || std::isinf(g)) ++c.nans;
      rn += (g - x) * (g - x);
      rd += x * x;
    }
    num += rn;
    den += rd;
    const double row_rel = rd > 0.0 ? std::sqrt(rn / rd) : (rn > 0.0 || std::isnan(rn) ? 1.0 : 0.0);
    if (!(row_rel <= c.worst_row)) {
      c.worst_row = std::isnan(row_rel) ? 1e30 : row_rel;
      c.worst_index = r;
    }
  }
  c.rel = den > 0.0 ? std::sqrt(num / den) : (num > 0.0 ? 1.0 : 0.0);
  if (std::isnan(c.rel)) c.rel = 1e30;
  return c;
}

enum class Lists {
  kDenseNull,  // null offsets: dense causal
  kDenseLists,  // every causal block listed
  kOnePerRow,  // one random causal block per row
  kHalf,  // each causal block with probability 1/2 (rows may be empty)
  kDiagonalOnly,  // just the diagonal
  // Runs of 8 blocks kept on even rows and skipped on odd ones, and the
  // other way round: neighbouring rows (which the sm90 kernel pairs) share
  // no block, so each of its consumers sits out long runs of the other's.
  kStriped
};

const char* ListsName(Lists l) {
  switch (l) {
    case Lists::kDenseNull: return "dense(null)";
    case Lists::kDenseLists: return "dense(lists)";
    case Lists::kOnePerRow: return "one-per-row";
    case Lists::kHalf: return "half";
    case Lists::kDiagonalOnly: return "diagonal";
    case Lists::kStriped: return "striped";
  }
  return "?";
}

struct Case {
  int seq_len;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  Lists lists;
};

std::string Describe(const Case& c, ElemType t) {
  return "L=" + std::to_string(c.seq_len) + " Hq=" + std::to_string(c.num_heads) +
         " Hkv=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) + " " + ListsName(c.lists) +
         " " + ElemName(t);
}

BlockMask MakeMask(const Case& c, std::mt19937& rng) {
  BlockMask m = BlockMask::Dense(c.num_heads, c.seq_len, 64);
  const int nb = m.num_blocks;
  std::uniform_int_distribution<int> coin(0, 1);
  for (int h = 0; h < c.num_heads; ++h) {
    for (int qb = 0; qb < nb; ++qb) {
      uint8_t* row = m.keep.data() + (static_cast<size_t>(h) * nb + qb) * nb;
      switch (c.lists) {
        case Lists::kDenseNull:
        case Lists::kDenseLists: break;
        case Lists::kOnePerRow: {
          std::fill(row, row + nb, 0);
          row[std::uniform_int_distribution<int>(0, qb)(rng)] = 1;
          break;
        }
        case Lists::kHalf:
          for (int kb = 0; kb <= qb; ++kb) row[kb] = static_cast<uint8_t>(coin(rng));
          break;
        case Lists::kDiagonalOnly:
          std::fill(row, row + nb, 0);
          row[qb] = 1;
          break;
        case Lists::kStriped:
          for (int kb = 0; kb <= qb; ++kb) row[kb] = static_cast<uint8_t>((kb / 8) % 2 == qb % 2);
          break;
      }
    }
  }
  return m;
}

class AttentionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveGpu(&why)) GTEST_SKIP() << "GPU attention tests skipped: " << why;
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }

  // Random values rounded to the element type: the host copy `f` holds
  // exactly what the device sees.
  void Fill(size_t n, float scale, ElemType t, std::vector<uint16_t>* e, std::vector<float>* f) {
    std::normal_distribution<float> d(0.0f, scale);
    e->resize(n);
    f->resize(n);
    for (size_t i = 0; i < n; ++i) {
      (*e)[i] = ToElem(d(rng_), t);
      (*f)[i] = FromElem((*e)[i], t);
    }
  }

  // Params over the device buffers, dense (no lists), the 1/sqrt(D) scale.
  static cuda::AttentionParams Params(ElemType t, const DevBuf& q, const DevBuf& k, const DevBuf& v, const DevBuf& out,
                                      int seq_len, int Hq, int Hkv, int D, int kv_stride) {
    cuda::AttentionParams p;
    p.dtype = t;
    p.q = q.get();
    p.k = k.get();
    p.v = v.get();
    p.out = out.get();
    p.seq_len = seq_len;
    p.num_heads = Hq;
    p.num_kv_heads = Hkv;
    p.head_dim = D;
    p.kv_stride = kv_stride;
    p.scale = 1.0f / std::sqrt(static_cast<float>(D));
    return p;
  }

  // Prefill: every variant of the kernel against cpu::BlockSparseAttention
  // (cpu::CausalAttention for null lists). With `orders`, each variant runs
  // with one KV head a pass (AttentionParams::kv_heads_per_pass = 1) for
  // the comparison, then with each count in `orders`, whose outputs must be
  // the same bits.
  void RunPrefill(const Case& c, ElemType t, const std::vector<int>& orders = {}) {
    SCOPED_TRACE(Describe(c, t) + " seed=" + std::to_string(seed_));
    const int L = c.seq_len, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
    const int kv_stride = L + 11;  // cache slack past the sequence, poisoned
    std::vector<uint16_t> qe, ke, ve;
    std::vector<float> qf, kf, vf;
    Fill(static_cast<size_t>(L) * Hq * D, 1.0f, t, &qe, &qf);
    Fill(static_cast<size_t>(Hkv) * kv_stride * D, 1.0f, t, &ke, &kf);
    Fill(static_cast<size_t>(Hkv) * kv_stride * D, 1.0f, t, &ve, &vf);
    for (int h = 0; h < Hkv; ++h) {
      for (size_t i = static_cast<size_t>(L) * D; i < static_cast<size_t>(kv_stride) * D; ++i) {
        ke[h * static_cast<size_t>(kv_stride) * D + i] = 0xFFFF;
        ve[h * static_cast<size_t>(kv_stride) * D + i] = 0xFFFF;
      }
    }

    const BlockMask mask = MakeMask(c, rng_);
    const BlockLists lists = ToBlockLists(mask);
    cpu::AttentionShape shape{L, Hq, Hkv, D, kv_stride, 1.0f / std::sqrt(static_cast<float>(D))};
    std::vector<float> ref(static_cast<size_t>(L) * Hq * D);
    const int threads = std::max(1u, std::thread::hardware_concurrency());
    if (c.lists == Lists::kDenseNull) {
      cpu::CausalAttention(shape, qf.data(), kf.data(), vf.data(), ref.data(), threads);
    } else {
      cpu::BlockSparseAttention(shape, 64, lists.offsets.data(), lists.indices.data(), qf.data(), kf.data(), vf.data(),
                                ref.data(), threads);
    }

    DevBuf q(qe.size() * 2), k(ke.size() * 2), v(ve.size() * 2), out(ref.size() * 2);
    DevBuf offsets(lists.offsets.size() * 4), indices(std::max<size_t>(1, lists.indices.size()) * 4);
    ASSERT_TRUE(q.ok() && k.ok() && v.ok() && out.ok() && offsets.ok() && indices.ok());
    ASSERT_CUDA(q.Upload(qe.data(), qe.size() * 2));
    ASSERT_CUDA(k.Upload(ke.data(), ke.size() * 2));
    ASSERT_CUDA(v.Upload(ve.data(), ve.size() * 2));
    ASSERT_CUDA(offsets.Upload(lists.offsets.data(), lists.offsets.size() * 4));
    if (!lists.indices.empty()) {
      ASSERT_CUDA(indices.Upload(lists.indices.data(), lists.indices.size() * 4));
    }

    cuda::AttentionParams p = Params(t, q, k, v, out, L, Hq, Hkv, D, kv_stride);
    if (c.lists != Lists::kDenseNull) {
      p.block_offsets = static_cast<const int32_t*>(offsets.get());
      p.block_indices = static_cast<const int32_t*>(indices.get());
    }
    auto run = [&](FwdVariant variant, int per_pass, std::vector<uint16_t>* oe) {
      p.kv_heads_per_pass = per_pass;
      ASSERT_CUDA(cudaMemset(out.get(), 0xFF, ref.size() * 2));
      ASSERT_CUDA(cuda::BlockSparseAttentionVariant(p, variant, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      oe->resize(ref.size());
      ASSERT_CUDA(out.Download(oe->data(), oe->size() * 2));
    };
    for (FwdVariant variant : Variants()) {
      SCOPED_TRACE(cuda::FwdVariantName(variant));
      std::vector<uint16_t> oe;
      run(variant, orders.empty() ? 0 : 1, &oe);
      ASSERT_FALSE(HasFatalFailure()) << "the run failed; nothing to compare";
      std::vector<float> of(oe.size());
      for (size_t i = 0; i < oe.size(); ++i) of[i] = FromElem(oe[i], t);
      const Comparison cmp = Compare(of, ref, static_cast<int64_t>(L) * Hq, D);
      EXPECT_EQ(cmp.nans, 0) << "NaN/Inf in the output (unwritten or wrong)";
      EXPECT_LE(cmp.rel, 1e-2) << "norm-wise relative error";
      EXPECT_LE(cmp.worst_row, 3e-2) << "worst row: token " << cmp.worst_index / Hq << " head " << cmp.worst_index % Hq;
      for (int per_pass : orders) {
        std::vector<uint16_t> other;
        run(variant, per_pass, &other);
        ASSERT_FALSE(HasFatalFailure()) << "the run failed; nothing to compare";
        int64_t differ = 0;
        for (size_t i = 0; i < oe.size(); ++i) differ += oe[i] != other[i];
        EXPECT_EQ(differ, 0) << "elements that differ from one KV head a pass, kv_heads_per_pass=" << per_pass;
      }
    }
  }

  void RunDecode(int num_keys, int Hq, int Hkv, int D, ElemType t) {
    const int pos = num_keys - 1;
    const int kv_stride = num_keys + 29;
    SCOPED_TRACE("decode pos=" + std::to_string(pos) + " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) +
                 " D=" + std::to_string(D) + " " + ElemName(t) + " seed=" + std::to_string(seed_));
    std::vector<uint16_t> qe, ke, ve;
    std::vector<float> qf, kf, vf;
    Fill(static_cast<size_t>(Hq) * D, 1.0f, t, &qe, &qf);
    Fill(static_cast<size_t>(Hkv) * kv_stride * D, 1.0f, t, &ke, &kf);
    Fill(static_cast<size_t>(Hkv) * kv_stride * D, 1.0f, t, &ve, &vf);
    for (int h = 0; h < Hkv; ++h) {  // keys past pos are not in the cache yet
      for (size_t i = static_cast<size_t>(num_keys) * D; i < static_cast<size_t>(kv_stride) * D; ++i) {
        ke[h * static_cast<size_t>(kv_stride) * D + i] = 0xFFFF;
        ve[h * static_cast<size_t>(kv_stride) * D + i] = 0xFFFF;
      }
    }
    cpu::AttentionShape shape{num_keys, Hq, Hkv, D, kv_stride, 1.0f / std::sqrt(static_cast<float>(D))};
    std::vector<float> ref(static_cast<size_t>(Hq) * D);
    cpu::DecodeAttention(shape, pos, qf.data(), kf.data(), vf.data(), ref.data());

    DevBuf q(qe.size() * 2), k(ke.size() * 2), v(ve.size() * 2), out(ref.size() * 2);
    ASSERT_TRUE(q.ok() && k.ok() && v.ok() && out.ok());
    ASSERT_CUDA(q.Upload(qe.data(), qe.size() * 2));
    ASSERT_CUDA(k.Upload(ke.data(), ke.size() * 2));
    ASSERT_CUDA(v.Upload(ve.data(), ve.size() * 2));
    cuda::AttentionParams p = Params(t, q, k, v, out, num_keys, Hq, Hkv, D, kv_stride);
    ASSERT_CUDA(cuda::DecodeAttention(p, pos, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> oe(ref.size());
    ASSERT_CUDA(out.Download(oe.data(), oe.size() * 2));
    std::vector<float> of(oe.size());
    for (size_t i = 0; i < oe.size(); ++i) of[i] = FromElem(oe[i], t);
    const Comparison cmp = Compare(of, ref, Hq, D);
    EXPECT_EQ(cmp.nans, 0);
    EXPECT_LE(cmp.rel, 1e-2);
    EXPECT_LE(cmp.worst_row, 3e-2) << "worst head " << cmp.worst_index;
  }

  // Every prefill variant this device runs; the sm90 ones only on compute
  // capability 9.0 (said once, so a run elsewhere shows what it skipped).
  static std::vector<FwdVariant> Variants() {
    std::vector<FwdVariant> out;
    for (FwdVariant v :
         {FwdVariant::kAuto, FwdVariant::kRows16PerWarp, FwdVariant::kRows32PerWarp, FwdVariant::kSm90,
          FwdVariant::kSm90Static, FwdVariant::kSm90Rows, FwdVariant::kSm90Pairs, FwdVariant::kRowsSplit}) {
      if (cuda::FwdVariantAvailable(v)) {
        out.push_back(v);
      } else {
        static bool said = false;
        if (!said) std::cout << "[attention] " << cuda::FwdVariantName(v) << ": not on this device, skipped\n";
        said = true;
      }
    }
    return out;
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
};

// Lengths under one block and around one block, every list kind, both head
// dims, all three GQA ratios. Small enough for compute-sanitizer.
TEST_F(AttentionGpuTest, SmallShapes) {
  const std::vector<Case> cases = {
      {1, 4, 4, 0, Lists::kDenseNull},      {1, 8, 1, 0, Lists::kDenseLists},  {37, 8, 2, 0, Lists::kDenseLists},
      {37, 4, 4, 0, Lists::kDenseNull},     {64, 8, 1, 0, Lists::kOnePerRow},  {64, 8, 2, 0, Lists::kDenseNull},
      {65, 4, 4, 0, Lists::kHalf},          {65, 8, 1, 0, Lists::kDenseNull},  {200, 8, 2, 0, Lists::kHalf},
      {200, 4, 4, 0, Lists::kDiagonalOnly}, {200, 8, 1, 0, Lists::kOnePerRow}, {1000, 4, 1, 0, Lists::kStriped},
      {130, 4, 2, 0, Lists::kDenseNull},    {256, 8, 4, 0, Lists::kDenseNull},
  };
  for (ElemType t : {ElemType::kBF16, ElemType::kF16}) {
    for (int D : {32, 64, 96, 128}) {
      for (Case c : cases) {
        c.head_dim = D;
        RunPrefill(c, t);
      }
    }
  }
}

// A few shapes of each kind for compute-sanitizer (memcheck, racecheck,
// synccheck), which slows kernels down by orders of magnitude: a length under
// a block, an odd number of blocks with a partial last one, striped lists
// (the sm90 consumers' flush path), dense causal over an odd and an even
// number of blocks (the last tile with one query block, a partial last
// block), every head dim, bf16.
TEST_F(AttentionGpuTest, SanitizerShapes) {
  const std::vector<Case> cases = {
      {37, 4, 1, 0, Lists::kDenseNull},     {200, 4, 2, 0, Lists::kHalf},      {700, 2, 2, 0, Lists::kStriped},
      {130, 2, 2, 0, Lists::kDiagonalOnly}, {200, 2, 1, 0, Lists::kDenseNull},
  };
  for (int D : {32, 64, 96, 128}) {
    for (Case c : cases) {
      c.head_dim = D;
      RunPrefill(c, ElemType::kBF16);
    }
  }
}

// Longer odd lengths: many blocks, partial last block, sparse and dense.
TEST_F(AttentionGpuTest, LongShapes) {
  const std::vector<Case> cases = {
      {1000, 8, 1, 0, Lists::kOnePerRow}, {1000, 4, 4, 0, Lists::kDenseNull}, {1000, 8, 2, 0, Lists::kHalf},
      {4097, 8, 2, 0, Lists::kHalf},      {4097, 8, 1, 0, Lists::kDenseNull}, {4097, 4, 4, 0, Lists::kStriped},
  };
  for (ElemType t : {ElemType::kBF16, ElemType::kF16}) {
    for (int D : {32, 64, 96, 128}) {
      for (Case c : cases) {
        c.head_dim = D;
        RunPrefill(c, t);
      }
    }
  }
}

// Rows with an empty list get zeros (not NaN, not stale memory).
TEST_F(AttentionGpuTest, EmptyRowsAreZero) {
  for (ElemType t : {ElemType::kBF16, ElemType::kF16}) {
    const int L = 300, Hq = 4, Hkv = 2, D = 128;
    const int nb = (L + 63) / 64;
    std::vector<uint16_t> qe, ke, ve;
    std::vector<float> qf, kf, vf;
    Fill(static_cast<size_t>(L) * Hq * D, 1.0f, t, &qe, &qf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ke, &kf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ve, &vf);
    // Head 0: every row empty; others: the diagonal only on odd rows, empty otherwise.
    BlockMask m = BlockMask::Dense(Hq, L, 64);
    std::fill(m.keep.begin(), m.keep.end(), 0);
    for (int h = 1; h < Hq; ++h) {
      for (int qb = 1; qb < nb; qb += 2) m.keep[(static_cast<size_t>(h) * nb + qb) * nb + qb] = 1;
    }
    const BlockLists lists = ToBlockLists(m);
    cpu::AttentionShape shape{L, Hq, Hkv, D, L, 1.0f / std::sqrt(static_cast<float>(D))};
    std::vector<float> ref(static_cast<size_t>(L) * Hq * D);
    cpu::BlockSparseAttention(shape, 64, lists.offsets.data(), lists.indices.data(), qf.data(), kf.data(), vf.data(),
                              ref.data());
    DevBuf q(qe.size() * 2), k(ke.size() * 2), v(ve.size() * 2), out(ref.size() * 2);
    DevBuf offsets(lists.offsets.size() * 4), indices(std::max<size_t>(1, lists.indices.size()) * 4);
    ASSERT_CUDA(q.Upload(qe.data(), qe.size() * 2));
    ASSERT_CUDA(k.Upload(ke.data(), ke.size() * 2));
    ASSERT_CUDA(v.Upload(ve.data(), ve.size() * 2));
    ASSERT_CUDA(offsets.Upload(lists.offsets.data(), lists.offsets.size() * 4));
    ASSERT_CUDA(indices.Upload(lists.indices.data(), lists.indices.size() * 4));
    cuda::AttentionParams p = Params(t, q, k, v, out, L, Hq, Hkv, D, L);
    p.block_offsets = static_cast<const int32_t*>(offsets.get());
    p.block_indices = static_cast<const int32_t*>(indices.get());
    for (FwdVariant variant : Variants()) {
      SCOPED_TRACE(cuda::FwdVariantName(variant));
      ASSERT_CUDA(cudaMemset(out.get(), 0xFF, ref.size() * 2));
      ASSERT_CUDA(cuda::BlockSparseAttentionVariant(p, variant, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<uint16_t> oe(ref.size());
      ASSERT_CUDA(out.Download(oe.data(), oe.size() * 2));
      int64_t wrong_zero = 0;
      std::vector<float> of(oe.size());
      for (size_t i = 0; i < oe.size(); ++i) of[i] = FromElem(oe[i], t);
      for (int tok = 0; tok < L; ++tok) {
        for (int h = 0; h < Hq; ++h) {
          const int row = h * nb + tok / 64;
          if (lists.offsets[row] != lists.offsets[row + 1]) continue;
          for (int d = 0; d < D; ++d) {
            wrong_zero += oe[(static_cast<size_t>(tok) * Hq + h) * D + d] != 0;  // exactly +0
          }
        }
      }
      EXPECT_EQ(wrong_zero, 0) << ElemName(t) << ": elements of empty rows that are not +0";
      const Comparison cmp = Compare(of, ref, static_cast<int64_t>(L) * Hq, D);
      EXPECT_EQ(cmp.nans, 0);
      EXPECT_LE(cmp.rel, 1e-2);
    }
  }
}

// AttentionParams::first_row, dense (a prefill's last layer) and with block
// lists (a prefill continuing from a cached prefix): the rows from
// first_row on must be the bits of the full pass, every variant, whatever
// the kernel did with the rows before (the tile order may change, which
// changes no bit). With lists they are also checked against the CPU twin
// run from first_row (cpu::AttentionShape::first_row, q and out holding
// the rows from there). first_row at or past the sequence, or negative, is
// refused.
TEST_F(AttentionGpuTest, FirstRowKeepsTheLaterRowsBits) {
  const ElemType t = ElemType::kBF16;
  struct FirstRowCase {
    int seq_len, num_heads, num_kv_heads, head_dim, first_row;
  };
  for (const FirstRowCase& c : std::vector<FirstRowCase>{{1000, 4, 2, 128, 999},
                                                         {1000, 8, 1, 64, 500},
                                                         {1000, 4, 1, 128, 192},
                                                         {1000, 4, 4, 64, 896},
                                                         {4097, 4, 4, 128, 4096},
                                                         {130, 4, 2, 96, 127},
                                                         {130, 4, 2, 32, 128},
                                                         {65, 2, 2, 128, 64},
                                                         {300, 2, 1, 64, 0}}) {
    const int L = c.seq_len, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
    SCOPED_TRACE("L=" + std::to_string(L) + " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) + " D=" +
                 std::to_string(D) + " first_row=" + std::to_string(c.first_row) + " seed=" + std::to_string(seed_));
    std::vector<uint16_t> qe, ke, ve;
    std::vector<float> qf, kf, vf;
    Fill(static_cast<size_t>(L) * Hq * D, 1.0f, t, &qe, &qf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ke, &kf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ve, &vf);
    const size_t n = qe.size();
    DevBuf q(n * 2), k(ke.size() * 2), v(ve.size() * 2), out(n * 2);
    ASSERT_TRUE(q.ok() && k.ok() && v.ok() && out.ok());
    ASSERT_CUDA(q.Upload(qe.data(), n * 2));
    ASSERT_CUDA(k.Upload(ke.data(), ke.size() * 2));
    ASSERT_CUDA(v.Upload(ve.data(), ve.size() * 2));
    // Lists (block-aligned first rows only, as a cached prefix is): half the
    // causal blocks of each row, the diagonal kept.
    const bool aligned = c.first_row % 64 == 0;
    BlockMask mask = MakeMask(Case{L, Hq, Hkv, D, Lists::kHalf}, rng_);
    for (int h = 0; h < Hq; ++h) {
      for (int qb = 0; qb < mask.num_blocks; ++qb) {
        mask.keep[(static_cast<size_t>(h) * mask.num_blocks + qb) * mask.num_blocks + qb] = 1;
      }
    }
    const BlockLists lists = ToBlockLists(mask);
    DevBuf offsets(lists.offsets.size() * 4), indices(lists.indices.size() * 4);
    ASSERT_CUDA(offsets.Upload(lists.offsets.data(), lists.offsets.size() * 4));
    ASSERT_CUDA(indices.Upload(lists.indices.data(), lists.indices.size() * 4));
    cuda::AttentionParams p = Params(t, q, k, v, out, L, Hq, Hkv, D, L);
    auto run = [&](FwdVariant variant, int first_row, std::vector<uint16_t>* o) {
      p.first_row = first_row;
      ASSERT_CUDA(cudaMemset(out.get(), 0xFF, n * 2));
      ASSERT_CUDA(cuda::BlockSparseAttentionVariant(p, variant, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      o->resize(n);
      ASSERT_CUDA(out.Download(o->data(), n * 2));
    };
    std::vector<float> twin;  // the CPU twin's rows first_row.., with lists
    if (aligned) {
      cpu::AttentionShape shape{L, Hq, Hkv, D, L, 1.0f / std::sqrt(static_cast<float>(D))};
      shape.first_row = c.first_row;
      const size_t from = static_cast<size_t>(c.first_row) * Hq * D;
      twin.resize(n - from);
      cpu::BlockSparseAttention(shape, 64, lists.offsets.data(), lists.indices.data(), qf.data() + from, kf.data(),
                                vf.data(), twin.data());
    }
    for (bool with_lists : {false, true}) {
      if (with_lists && !aligned) continue;
      p.block_offsets = with_lists ? static_cast<const int32_t*>(offsets.get()) : nullptr;
      p.block_indices = with_lists ? static_cast<const int32_t*>(indices.get()) : nullptr;
      for (FwdVariant variant : Variants()) {
        SCOPED_TRACE(std::string(cuda::FwdVariantName(variant)) + (with_lists ? " lists" : " dense"));
        std::vector<uint16_t> full, part;
        run(variant, 0, &full);
        run(variant, c.first_row, &part);
        ASSERT_FALSE(HasFatalFailure()) << "a run failed; nothing to compare";
        const size_t from = static_cast<size_t>(c.first_row) * Hq * D;
        int64_t differ = 0;
        for (size_t i = from; i < n; ++i) differ += full[i] != part[i];
        if (variant == FwdVariant::kAuto) {
          // auto may split a few rows' keys (kRowsSplit) where the full pass
          // runs another kernel: the same rows to rounding.
          std::vector<float> a(n - from), b(n - from);
          for (size_t i = from; i < n; ++i) a[i - from] = FromElem(part[i], t), b[i - from] = FromElem(full[i], t);
          EXPECT_LE(Compare(a, b, static_cast<int64_t>(L - c.first_row) * Hq, D).rel, 1e-2);
        } else {
          EXPECT_EQ(differ, 0) << "elements of rows >= first_row that differ from the full pass";
        }
        EXPECT_LT(from, n);
        if (with_lists) {
          std::vector<float> got(n - from);
          for (size_t i = from; i < n; ++i) got[i - from] = FromElem(part[i], t);
          const Comparison cmp = Compare(got, twin, static_cast<int64_t>(L - c.first_row) * Hq, D);
          EXPECT_EQ(cmp.nans, 0);
          EXPECT_LE(cmp.rel, 1e-2) << "against the CPU twin from first_row";
        }
      }
    }
    p.block_offsets = nullptr;
    p.block_indices = nullptr;
    for (int bad : {L, L + 5, -1}) {
      p.first_row = bad;
      EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "first_row " << bad;
    }
  }
}

// AttentionParams::kv_heads_per_pass reorders the Hopper kernels' tiles
// (passes over 1, 2, 3 or all KV heads, and the automatic choice), which
// must change no output bit: every variant's output is compared bit for bit
// with its one-head-a-pass run, which is checked against the CPU reference.
// Odd KV head counts split into passes of unequal length; dense (null
// lists, the 128-key kernel) and lists (the sorted order).
TEST_F(AttentionGpuTest, TileOrderChangesNoBit) {
  struct OrderCase {
    Case c;
    ElemType t;
  };
  const std::vector<OrderCase> cases = {
      {{700, 5, 5, 128, Lists::kDenseNull}, ElemType::kBF16}, {{700, 5, 5, 128, Lists::kHalf}, ElemType::kBF16},
      {{1000, 12, 3, 64, Lists::kDenseNull}, ElemType::kF16}, {{1000, 12, 3, 64, Lists::kStriped}, ElemType::kF16},
      {{333, 16, 8, 96, Lists::kHalf}, ElemType::kBF16},      {{333, 16, 8, 32, Lists::kDenseNull}, ElemType::kBF16},
      {{129, 8, 8, 128, Lists::kOnePerRow}, ElemType::kBF16}, {{2048, 4, 4, 128, Lists::kHalf}, ElemType::kBF16},
  };
  for (const OrderCase& oc : cases) RunPrefill(oc.c, oc.t, {2, 3, 0, oc.c.num_kv_heads, 100});
}

// q read before RoPE and rotated by the sm90 kernel as it loads it
// (AttentionParams::q_rope) against q rotated first by cuda::ApplyRope, the
// prefill's old path: the outputs must be the same bits. Head dims 32, 64,
// 96 and 128, partial last blocks and a length under one block, GQA 1, 4 and
// 8, dense and sparse lists, both sm90 schedules. Skips where the device
// has no sm90 kernel (AttentionRotatesQ).
TEST_F(AttentionGpuTest, RotatesQAsRopeWould) {
  if (!cuda::AttentionRotatesQ(ElemType::kBF16, 128)) GTEST_SKIP() << "no sm_90a attention on this device";
  const ElemType t = ElemType::kBF16;
  for (const Case& c : std::vector<Case>{{1, 4, 4, 32, Lists::kDenseNull},
                                         {100, 8, 2, 64, Lists::kHalf},
                                         {1000, 8, 1, 96, Lists::kOnePerRow},
                                         {4097, 8, 8, 128, Lists::kDenseNull},
                                         {4097, 16, 4, 128, Lists::kStriped},
                                         {300, 4, 4, 128, Lists::kHalf}}) {
    SCOPED_TRACE(Describe(c, t) + " seed=" + std::to_string(seed_));
    const int L = c.seq_len, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
    ASSERT_TRUE(cuda::AttentionRotatesQ(t, D));
    std::vector<uint16_t> qe, ke, ve;
    std::vector<float> qf, kf, vf;
    Fill(static_cast<size_t>(L) * Hq * D, 1.0f, t, &qe, &qf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ke, &kf);
    Fill(static_cast<size_t>(Hkv) * L * D, 1.0f, t, &ve, &vf);
    const bool null_lists = c.lists == Lists::kDenseNull;
    const BlockLists lists = ToBlockLists(MakeMask(c, rng_));
    // Llama-3-like angles: position * theta^(-2i/D).
    std::vector<float> inv_freq(D / 2);
    for (int i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / D));
    DevBuf q(qe.size() * 2), q_rot(qe.size() * 2), k(ke.size() * 2), v(ve.size() * 2), out(qe.size() * 2),
        out_rot(qe.size() * 2), freq(inv_freq.size() * 4), table(static_cast<size_t>(L) * D / 2 * 8),
        offsets(lists.offsets.size() * 4), indices(std::max<size_t>(1, lists.indices.size()) * 4);
    ASSERT_CUDA(q.Upload(qe.data(), qe.size() * 2));
    ASSERT_CUDA(q_rot.Upload(qe.data(), qe.size() * 2));
    ASSERT_CUDA(k.Upload(ke.data(), ke.size() * 2));
    ASSERT_CUDA(v.Upload(ve.data(), ve.size() * 2));
    ASSERT_CUDA(freq.Upload(inv_freq.data(), inv_freq.size() * 4));
    ASSERT_CUDA(offsets.Upload(lists.offsets.data(), lists.offsets.size() * 4));
    ASSERT_CUDA(indices.Upload(lists.indices.data(), lists.indices.size() * 4));
    ASSERT_CUDA(cuda::RopeTable(freq.get<float>(), D / 2, 0, L, table.get<float2>(), nullptr));
    ASSERT_CUDA(cuda::ApplyRope(q_rot.get<__nv_bfloat16>(), L, Hq, D, table.get<float2>(), nullptr));

    cuda::AttentionParams p = Params(t, q, k, v, out, L, Hq, Hkv, D, L);  // q and out set per run below
    p.block_offsets = null_lists ? nullptr : offsets.get<int32_t>();
    p.block_indices = null_lists ? nullptr : indices.get<int32_t>();
    for (FwdVariant variant :
         {FwdVariant::kSm90, FwdVariant::kSm90Static, FwdVariant::kSm90Rows, FwdVariant::kSm90Pairs}) {
      SCOPED_TRACE(cuda::FwdVariantName(variant));
      ASSERT_CUDA(cudaMemset(out.get(), 0xFF, qe.size() * 2));
      ASSERT_CUDA(cudaMemset(out_rot.get(), 0xFF, qe.size() * 2));
      p.q = q_rot.get();
      p.out = out_rot.get();
      p.q_rope = nullptr;
      ASSERT_CUDA(cuda::BlockSparseAttentionVariant(p, variant, nullptr));
      p.q = q.get();
      p.out = out.get();
      p.q_rope = table.get<float2>();
      ASSERT_CUDA(cuda::BlockSparseAttentionVariant(p, variant, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<uint16_t> want(qe.size()), got(qe.size()), q_after(qe.size());
      ASSERT_CUDA(out_rot.Download(want.data(), want.size() * 2));
      ASSERT_CUDA(out.Download(got.data(), got.size() * 2));
      ASSERT_CUDA(q.Download(q_after.data(), q_after.size() * 2));
      int64_t differ = 0, nans = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        differ += got[i] != want[i];
        nans += std::isnan(Bf16ToFloat(got[i]));
      }
      EXPECT_EQ(differ, 0) << "elements that differ from attention on q rotated first";
      EXPECT_EQ(nans, 0);
      EXPECT_EQ(q_after, qe) << "q itself must stay unrotated";
    }
  }
}

TEST_F(AttentionGpuTest, RejectsUnsupportedShapes) {
  cuda::AttentionParams p;
  alignas(16) static uint16_t dummy[64];
  p.q = p.k = p.v = dummy;
  p.out = dummy;
  p.seq_len = 1;
  p.num_heads = 4;
  p.num_kv_heads = 4;
  p.kv_stride = 1;
  p.scale = 0.1f;
  for (int d : {0, 16, 80, 160, 256}) {
    p.head_dim = d;
    EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "head_dim " << d;
    EXPECT_EQ(cuda::DecodeAttention(p, 0, nullptr), cudaErrorInvalidValue) << "decode head_dim " << d;
  }
  p.head_dim = 128;
  p.num_kv_heads = 3;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "Hq % Hkv != 0";
  p.num_kv_heads = 4;
  p.kv_stride = 0;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "kv_stride < seq_len";
  p.kv_stride = 1;
  p.block_size = 128;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "block_size 128";
  p.block_size = 64;
  p.kv_heads_per_pass = -1;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "kv_heads_per_pass -1";
  p.kv_heads_per_pass = 0;
  EXPECT_EQ(cuda::DecodeAttention(p, 1, nullptr), cudaErrorInvalidValue) << "pos past the cache";
  alignas(16) static float2 table[64];
  p.q_rope = table;
  EXPECT_EQ(cuda::BlockSparseAttentionVariant(p, FwdVariant::kRows32PerWarp, nullptr), cudaErrorInvalidValue)
      << "q_rope on the FA2 kernel";
  p.dtype = ElemType::kF16;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "q_rope with fp16";
  p.dtype = ElemType::kBF16;
  p.q_rope = table + 1;
  EXPECT_EQ(cuda::BlockSparseAttention(p, nullptr), cudaErrorInvalidValue) << "q_rope not 16-byte aligned";
}

TEST_F(AttentionGpuTest, Decode) {
  for (ElemType t : {ElemType::kBF16, ElemType::kF16}) {
    for (int D : {32, 64, 96, 128}) {
      for (int keys : {1, 37, 64, 65, 1000, 4097, 20000}) {
        RunDecode(keys, 8, 8, D, t);
        RunDecode(keys, 8, 2, D, t);
        RunDecode(keys, 32, 4, D, t);
      }
    }
  }
}

}  // namespace
}  // namespace seer
