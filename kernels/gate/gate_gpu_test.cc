// The GPU gate (kernels/gate/gate.h), fused and unfused, against the CPU gate
// seer::RunGate (engine/model/gates.h) on the same bf16/fp16-rounded inputs and
// the same float32 weights, fresh random data each run; and the two GPU gates
// against each other (identical lists: they score in the same order). Shapes cover lengths under one block,
// a partial last block, GQA ratios 1, 4 and 8, head dims 64 and 128, all
// selection modes with and without last_block_dense, mask_linear_q (also the
// force_double form with per-KV-head K weights), llama3 RoPE, fused QKV row
// strides and head chunking; and rows of 2k and 9k blocks (the select kernel
// then holds 4 and 1 rows per CTA), hidden 66 (no 16-byte loads), and blocks
// whose K is zero, so that their scores tie exactly.
//
// What must hold:
//   - the CSR lists are well formed (offsets from 0, ascending causal indices,
//     kept_per_head equal to the list lengths);
//   - the mask equals the CPU mask except blocks whose CPU probability lies
//     within bf16 rounding (2^-7 relative) of the decision boundary: the
//     threshold, or for top-k the row's k-th largest probability. The count
//     of such blocks is reported (RecordProperty "boundary_blocks");
//   - the probabilities match the CPU's to 1e-5 norm-wise (float32 path);
//   - nothing is NaN; every output starts poisoned with 0xFF bytes.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "base/dtype.h"
#include "kernels/common/block_lists.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"
#include "engine/model/sparsity.h"
#include "kernels/gate/gate.h"
#include "kernels/common/gpu_test_util.h"

namespace seer {
namespace {

using gpu_test::DevBuf;
using gpu_test::HaveGpu;

using cuda::ElemType;

struct GateCase {
  int seq_len;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int hidden;
  bool q_weight;  // mask_linear_q present
  bool force_double;  // mask_linear_k per KV head (needs q_weight)
  bool llama3_rope;
  std::string sparsity;  // "dense", "threshold=T", "nz_ratio=R"
  bool last_block_dense;
  int heads_per_pass;
  bool fused_qkv;  // q and k rows inside one [L, (Hq + 2 Hkv) D] buffer
  ElemType dtype;
  int zero_k_every = 0;  // > 0: K is zero in blocks b % zero_k_every == 1 (their scores are exactly 0)
  bool zero_q = false;  // q is zero: every score is exactly 0, so each row ties whole
};

std::string Describe(const GateCase& c) {
  std::string s = "L=" + std::to_string(c.seq_len) + " Hq=" + std::to_string(c.num_heads) +
                  " Hkv=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) +
                  " hidden=" + std::to_string(c.hidden) + " " + c.sparsity +
                  (c.last_block_dense ? " last_block_dense" : "") + (c.q_weight ? " q_weight" : "") +
                  (c.force_double ? " force_double" : "") + (c.llama3_rope ? " llama3" : "") +
                  " heads_per_pass=" + std::to_string(c.heads_per_pass) + (c.fused_qkv ? " fused" : "") +
                  (c.dtype == ElemType::kBF16 ? " bf16" : " fp16") +
                  (c.zero_k_every > 0 ? " zero_k_every=" + std::to_string(c.zero_k_every) : "");
  if (c.zero_q) s += " zero_q";
  return s;
}

class GateGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveGpu(&why)) GTEST_SKIP() << "GPU gate tests skipped: " << why;
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }

  uint16_t ToElem(float x, ElemType t) { return t == ElemType::kBF16 ? FloatToBf16(x) : FloatToFp16(x); }
  float FromElem(uint16_t x, ElemType t) { return t == ElemType::kBF16 ? Bf16ToFloat(x) : Fp16ToFloat(x); }

  void Run(const GateCase& c) {
    SCOPED_TRACE(Describe(c) + " seed=" + std::to_string(seed_));
    const int L = c.seq_len, Hq = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
    const int nb = (L + 63) / 64;

    ModelConfig model;
    model.num_heads = Hq;
    model.num_kv_heads = Hkv;
    model.head_dim = D;
    model.rope.theta = 500000.0;
    if (c.llama3_rope) {
      model.rope.type = "llama3";
      model.rope.factor = 8.0;
      model.rope.low_freq_factor = 1.0;
      model.rope.high_freq_factor = 4.0;
      model.rope.original_max_position_embeddings = 8192;
    }
    GateConfig gc;
    gc.block_size = 64;
    gc.hidden = c.hidden;
    auto sparsity_or = ParseSparsity(c.sparsity);
    ASSERT_TRUE(sparsity_or.ok());
    SparsityConfig sparsity = *sparsity_or;
    sparsity.last_block_dense = c.last_block_dense;

    // Inputs: each head has a fixed direction plus per-token noise, so the
    // pooled vectors differ by block and the softmax has structure.
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int q_width = Hq * D, k_width = Hkv * D;
    const int row = c.fused_qkv ? (Hq + 2 * Hkv) * D : 0;
    std::vector<float> q_dir(q_width), k_dir(k_width);
    for (float& x : q_dir) x = normal(rng_);
    for (float& x : k_dir) x = 0.5f * normal(rng_);
    std::vector<float> qf(static_cast<size_t>(L) * q_width), kf(static_cast<size_t>(L) * k_width);
    std::vector<uint16_t> qe(qf.size()), ke(kf.size());
    for (size_t i = 0; i < qf.size(); ++i) {
      qe[i] = ToElem(q_dir[i % q_width] + normal(rng_), c.dtype);
      qf[i] = FromElem(qe[i], c.dtype);
    }
    if (c.zero_q) {
      std::fill(qe.begin(), qe.end(), ToElem(0.0f, c.dtype));
      std::fill(qf.begin(), qf.end(), 0.0f);
    }
    for (size_t i = 0; i < kf.size(); ++i) {
      const int block = static_cast<int>(i / k_width / 64);
      const bool zero = c.zero_k_every > 0 && block % c.zero_k_every == 1;
      ke[i] = ToElem(zero ? 0.0f : k_dir[i % k_width] + normal(rng_), c.dtype);
      kf[i] = FromElem(ke[i], c.dtype);
    }
    GateLayerWeights w;
    const int k_heads = c.force_double ? Hkv : Hq;
    w.k_weight.resize(static_cast<size_t>(k_heads) * 3 * D * c.hidden);
    const float wk_scale = 1.0f / std::sqrt(3.0f * D);
    for (float& x : w.k_weight) x = Bf16ToFloat(FloatToBf16(wk_scale * normal(rng_)));
    if (c.q_weight) {
      w.q_in = D;
      w.q_weight.resize(static_cast<size_t>(Hq) * D * c.hidden);
      const float wq_scale = 1.0f / std::sqrt(static_cast<float>(D));
      for (float& x : w.q_weight) x = Bf16ToFloat(FloatToBf16(wq_scale * normal(rng_)));
    }

    // CPU gate.
    auto cpu_or = RunGate(w, gc, model, qf.data(), kf.data(), L, sparsity);
    ASSERT_TRUE(cpu_or.ok()) << cpu_or.status().ToString();
    const GateOutput& cpu = *cpu_or;

    // GPU gate.
    std::vector<uint16_t> packed;  // the device layout of q and k
    size_t q_off = 0, k_off = 0;
    if (c.fused_qkv) {
      packed.assign(static_cast<size_t>(L) * row, 0);
      for (int t = 0; t < L; ++t) {
        std::copy_n(qe.data() + static_cast<size_t>(t) * q_width, q_width,
                    packed.data() + static_cast<size_t>(t) * row);
        std::copy_n(ke.data() + static_cast<size_t>(t) * k_width, k_width,
                    packed.data() + static_cast<size_t>(t) * row + q_width);
      }
      k_off = q_width;
    } else {
      packed = qe;
      packed.insert(packed.end(), ke.begin(), ke.end());
      k_off = qe.size();
    }
    const std::vector<double> inv_freq_d = RopeInvFreq(model.rope, c.hidden);
    std::vector<float> inv_freq(inv_freq_d.begin(), inv_freq_d.end());

    DevBuf dqk(packed.size() * 2), dwk(w.k_weight.size() * 4), dwq(w.q_weight.size() * 4), dfreq(inv_freq.size() * 4);
    ASSERT_TRUE(dqk.ok() && dwk.ok() && dwq.ok() && dfreq.ok());
    ASSERT_CUDA(cudaMemcpy(dqk.get(), packed.data(), packed.size() * 2, cudaMemcpyHostToDevice));
    ASSERT_CUDA(cudaMemcpy(dwk.get(), w.k_weight.data(), w.k_weight.size() * 4, cudaMemcpyHostToDevice));
    if (c.q_weight) {
      ASSERT_CUDA(cudaMemcpy(dwq.get(), w.q_weight.data(), w.q_weight.size() * 4, cudaMemcpyHostToDevice));
    }
    ASSERT_CUDA(cudaMemcpy(dfreq.get(), inv_freq.data(), inv_freq.size() * 4, cudaMemcpyHostToDevice));

    cuda::GateParams p;
    p.dtype = c.dtype;
    p.q = dqk.get<uint16_t>() + q_off;
    p.k = dqk.get<uint16_t>() + k_off;
    p.q_row_stride = c.fused_qkv ? row : 0;
    p.k_row_stride = c.fused_qkv ? row : 0;
    p.seq_len = L;
    p.num_heads = Hq;
    p.num_kv_heads = Hkv;
    p.head_dim = D;
    p.block_size = 64;
    p.hidden = c.hidden;
    p.k_weight = dwk.get<float>();
    p.q_weight = c.q_weight ? dwq.get<float>() : nullptr;
    p.k_weight_heads = c.force_double ? Hkv : 0;
    p.rope_inv_freq = dfreq.get<float>();
    p.mode = sparsity.mode;
    p.threshold = sparsity.threshold;
    p.nz_ratio = sparsity.nz_ratio;
    p.last_block_dense = sparsity.last_block_dense;
    p.heads_per_pass = c.heads_per_pass;
    const int64_t capacity = cuda::GateMaxIndices(p);
    ASSERT_GT(capacity, 0);
    DevBuf doffsets((static_cast<size_t>(Hq) * nb + 1) * 4), dindices(static_cast<size_t>(capacity) * 4),
        dkept(static_cast<size_t>(Hq) * 8), dprobs(static_cast<size_t>(Hq) * nb * nb * 4);
    const size_t ws_bytes = std::max(cuda::GateWorkspaceBytesVariant(p, cuda::GateVariant::kFused),
                                     cuda::GateWorkspaceBytesVariant(p, cuda::GateVariant::kUnfused));
    ASSERT_GT(ws_bytes, 0u);
    ASSERT_GE(ws_bytes, cuda::GateWorkspaceBytes(p));
    DevBuf dws(ws_bytes);
    ASSERT_TRUE(doffsets.ok() && dindices.ok() && dkept.ok() && dprobs.ok() && dws.ok());
    p.block_offsets = doffsets.get<int32_t>();
    p.block_indices = dindices.get<int32_t>();
    p.index_capacity = capacity;
    p.kept_per_head = dkept.get<int64_t>();
    p.probs = dprobs.get<float>();
    p.workspace = dws.get();
    p.workspace_bytes = ws_bytes;
    std::vector<int32_t> fused_offsets, fused_indices;
    for (cuda::GateVariant variant : {cuda::GateVariant::kFused, cuda::GateVariant::kUnfused}) {
      SCOPED_TRACE(variant == cuda::GateVariant::kFused ? "fused gate" : "unfused gate");
      ASSERT_CUDA(cudaMemset(doffsets.get(), 0xFF, (static_cast<size_t>(Hq) * nb + 1) * 4));
      ASSERT_CUDA(cudaMemset(dindices.get(), 0xFF, static_cast<size_t>(capacity) * 4));
      ASSERT_CUDA(cudaMemset(dkept.get(), 0xFF, static_cast<size_t>(Hq) * 8));
      ASSERT_CUDA(cudaMemset(dprobs.get(), 0xFF, static_cast<size_t>(Hq) * nb * nb * 4));
      ASSERT_CUDA(cuda::RunGateKernelsVariant(p, variant, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());

      std::vector<int32_t> offsets(static_cast<size_t>(Hq) * nb + 1);
      std::vector<int64_t> kept(Hq);
      std::vector<float> probs(static_cast<size_t>(Hq) * nb * nb);
      ASSERT_CUDA(cudaMemcpy(offsets.data(), doffsets.get(), offsets.size() * 4, cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(kept.data(), dkept.get(), kept.size() * 8, cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(probs.data(), dprobs.get(), probs.size() * 4, cudaMemcpyDeviceToHost));
      ASSERT_EQ(offsets[0], 0);
      ASSERT_GE(offsets.back(), 0);
      ASSERT_LE(offsets.back(), capacity);
      std::vector<int32_t> indices(static_cast<size_t>(offsets.back()));
      if (!indices.empty()) {
        ASSERT_CUDA(cudaMemcpy(indices.data(), dindices.get(), indices.size() * 4, cudaMemcpyDeviceToHost));
      }

      // Well-formed lists, read back into a mask.
      BlockMask gpu_mask = BlockMask::Dense(Hq, L, 64);
      std::fill(gpu_mask.keep.begin(), gpu_mask.keep.end(), 0);
      for (int h = 0; h < Hq; ++h) {
        for (int qb = 0; qb < nb; ++qb) {
          const int r = h * nb + qb;
          ASSERT_LE(offsets[r], offsets[r + 1]) << "row " << r;
          ASSERT_LT(offsets[r], offsets[r + 1]) << "empty row h=" << h << " qb=" << qb;
          for (int i = offsets[r]; i < offsets[r + 1]; ++i) {
            ASSERT_GE(indices[i], 0);
            ASSERT_LE(indices[i], qb) << "non-causal block";
            if (i > offsets[r]) {
              ASSERT_LT(indices[i - 1], indices[i]) << "not ascending";
            }
            gpu_mask.keep[(static_cast<size_t>(h) * nb + qb) * nb + indices[i]] = 1;
          }
        }
        EXPECT_EQ(kept[h], offsets[(h + 1) * nb] - offsets[h * nb]) << "kept_per_head[" << h << "]";
      }

      // Exact ties, checked on the GPU's own mask (the CPU comparison below
      // lets tied blocks differ, they sit on the boundary): blocks whose K is
      // zero (every block, with zero q) score exactly 0 in both gates, and of
      // them a top-k or dense row keeps the lowest indices first (a threshold
      // row may keep its diagonal block alone).
      if ((c.zero_k_every > 0 || c.zero_q) && sparsity.mode != SparsityMode::kThreshold) {
        int64_t tie_errors = 0;
        for (int h = 0; h < Hq; ++h) {
          for (int qb = 0; qb < nb; ++qb) {
            int dropped = -1;  // a tied block that the row does not keep
            for (int kb = 0; kb <= qb; ++kb) {
              if (!c.zero_q && kb % c.zero_k_every != 1) continue;
              if (!gpu_mask.at(h, qb, kb)) {
                dropped = dropped < 0 ? kb : dropped;
              } else if (dropped >= 0 && ++tie_errors <= 10) {
                ADD_FAILURE() << "tied blocks h=" << h << " qb=" << qb << ": keeps " << kb << " but not " << dropped;
              }
            }
          }
        }
        EXPECT_EQ(tie_errors, 0) << "rows that keep a tied block above one they drop";
      }

      // Probabilities (float32 path).
      double num = 0.0, den = 0.0;
      int64_t nans = 0;
      for (size_t i = 0; i < probs.size(); ++i) {
        if (std::isnan(probs[i])) ++nans;
        const double d = double(probs[i]) - double(cpu.probs[i]);
        num += d * d;
        den += double(cpu.probs[i]) * cpu.probs[i];
      }
      EXPECT_EQ(nans, 0) << "NaN probabilities (unwritten?)";
      const double prob_rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
      EXPECT_LE(prob_rel, 1e-5) << "probabilities, norm-wise relative error";

      // Masks: every difference must sit on the decision boundary.
      const double kBf16Rounding = 1.0 / 128.0;
      int64_t boundary = 0, wrong = 0;
      int64_t topk = 0;
      if (sparsity.mode == SparsityMode::kNzRatio) {
        topk = std::max<int64_t>(1, static_cast<int64_t>((1.0 - std::sqrt(1.0 - sparsity.nz_ratio)) * nb));
      }
      const int first_dense = sparsity.last_block_dense ? std::max(0, nb - 2) : nb;
      for (int h = 0; h < Hq; ++h) {
        for (int qb = 0; qb < nb; ++qb) {
          const float* prow = cpu.probs.data() + (static_cast<size_t>(h) * nb + qb) * nb;
          double edge = 0.0;  // the row's decision boundary in probability
          if (sparsity.mode == SparsityMode::kThreshold) {
            edge = static_cast<float>(sparsity.threshold);
          } else if (sparsity.mode == SparsityMode::kNzRatio && topk < qb + 1) {
            std::vector<float> sorted(prow, prow + qb + 1);
            std::nth_element(sorted.begin(), sorted.begin() + (topk - 1), sorted.end(), std::greater<float>());
            edge = sorted[topk - 1];
          }
          for (int kb = 0; kb <= qb; ++kb) {
            if (gpu_mask.at(h, qb, kb) == cpu.mask.at(h, qb, kb)) continue;
            const bool near = qb < first_dense && sparsity.mode != SparsityMode::kDense &&
                              std::abs(double(prow[kb]) - edge) <= kBf16Rounding * edge;
            if (near) {
              ++boundary;
            } else if (++wrong <= 10) {
              ADD_FAILURE() << "block h=" << h << " qb=" << qb << " kb=" << kb << ": GPU "
                            << int(gpu_mask.at(h, qb, kb)) << ", CPU " << int(cpu.mask.at(h, qb, kb)) << ", CPU prob "
                            << prow[kb] << ", boundary " << edge;
            }
          }
        }
      }
      EXPECT_EQ(wrong, 0) << "blocks that differ from the CPU gate away from the boundary";
      // Both GPU gates score in the same order: their lists are identical.
      if (variant == cuda::GateVariant::kFused) {
        fused_offsets = offsets;
        fused_indices = indices;
      } else {
        EXPECT_EQ(offsets, fused_offsets) << "offsets: unfused gate vs fused gate";
        EXPECT_EQ(indices, fused_indices) << "indices: unfused gate vs fused gate";
      }
      total_boundary_ += boundary;
      total_blocks_ += cpu.mask.causal_blocks();
      std::cout << "[gate] " << Describe(c) << (variant == cuda::GateVariant::kFused ? " fused" : " unfused")
                << ": density GPU " << gpu_mask.density() << " CPU " << cpu.mask.density() << ", boundary blocks "
                << boundary << ", probs rel err " << prob_rel << "\n";
    }
  }

  void TearDown() override {
    if (total_blocks_ > 0) {
      RecordProperty("boundary_blocks", std::to_string(total_boundary_));
      std::cout << "[gate] blocks differing from the CPU gate (all on the boundary): " << total_boundary_ << " of "
                << total_blocks_ << " causal blocks\n";
    }
  }

  uint32_t seed_ = 0;
  std::mt19937 rng_;
  int64_t total_boundary_ = 0;
  int64_t total_blocks_ = 0;
};

TEST_F(GateGpuTest, SmallShapes) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<GateCase> cases = {
      {1, 4, 4, 64, 64, false, false, false, "threshold=0.002", true, 0, false, bf},
      {37, 8, 2, 128, 128, false, false, false, "dense", true, 0, false, fp},
      {64, 8, 1, 128, 128, false, false, true, "nz_ratio=0.5", false, 0, false, bf},
      {65, 4, 4, 64, 64, false, false, false, "threshold=0.005", false, 0, true, bf},
      {200, 8, 2, 128, 128, true, false, false, "nz_ratio=0.1", false, 3, false, fp},
  };
  for (const GateCase& c : cases) Run(c);
}

TEST_F(GateGpuTest, LongShapes) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<GateCase> cases = {
      {1000, 8, 1, 128, 128, false, false, true, "threshold=0.002", true, 3, false, bf},
      {1000, 8, 2, 64, 64, false, false, false, "nz_ratio=0.1", false, 0, false, fp},
      {4097, 8, 2, 128, 128, false, false, true, "nz_ratio=0.3", true, 0, true, bf},
      {4097, 4, 4, 128, 64, true, false, false, "threshold=0.005", false, 0, false, bf},
      {3000, 8, 1, 64, 64, true, true, false, "nz_ratio=0.5", true, 5, false, fp},
      {20000, 8, 2, 128, 128, false, false, true, "threshold=0.002", true, 4, false, bf},
      {20000, 8, 2, 128, 128, false, false, true, "nz_ratio=0.1", true, 0, false, bf},
      {5000, 8, 4, 128, 128, false, false, false, "dense", false, 0, false, bf},
      // Long enough that the fused gate holds fewer rows per CTA (8).
      {60000, 4, 1, 128, 128, false, false, true, "nz_ratio=0.1", false, 0, false, bf},
      {60000, 4, 2, 128, 128, false, false, false, "threshold=0.002", true, 0, false, fp},
  };
  for (const GateCase& c : cases) Run(c);
}

// Rows longer than any the other cases have: the unfused select kernel holds
// fewer rows per CTA in shared memory (4 at 2188 blocks, 1 at 9001); at 9001
// blocks the score rows are not 16-byte aligned, and with hidden 66 the
// projection and scores load channel by channel. Top-k with exact ties at
// score 0.
TEST_F(GateGpuTest, LongRows) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const std::vector<GateCase> cases = {
      {140000, 2, 1, 128, 128, false, false, false, "nz_ratio=0.1", false, 0, false, bf},
      {140000, 2, 1, 128, 128, false, false, false, "nz_ratio=0.75", false, 0, false, bf, 3},
      {64 * 9000 + 7, 1, 1, 64, 66, true, false, false, "threshold=0.001", false, 0, false, fp},
  };
  for (const GateCase& c : cases) Run(c);
}

// Top-k rows whose k-th largest score ties. Zero q: every score of a row is
// 0, so the radix select has nothing to split and the row keeps its first
// topk blocks. Every other block zero: the k-th largest score often is that
// 0, which hundreds of blocks share, so the select narrows its range onto
// them pass after pass, down to bins of one key. And nz_ratio 0.99: top-k
// keeps nine tenths of a row, the k-th largest score at its low end.
TEST_F(GateGpuTest, TopKTies) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  GateCase equal = {4097, 4, 1, 128, 128, false, false, false, "nz_ratio=0.3", false, 0, false, bf};
  equal.zero_q = true;
  const std::vector<GateCase> cases = {
      equal,
      {20000, 4, 2, 128, 128, true, false, false, "nz_ratio=0.75", false, 0, false, fp, 2},
      {40000, 4, 1, 64, 64, false, false, true, "nz_ratio=0.99", true, 0, false, bf},
  };
  for (const GateCase& c : cases) Run(c);
}

// KeepLastQueryBlock against its CPU twin (kernels/common/block_lists.h) on
// random lists: one block, a partial head count, empty last rows, rows of
// 2k blocks, and the dense lists (null input) against ToBlockLists(Dense).
TEST_F(GateGpuTest, KeepLastQueryBlockMatchesTheCpuTwin) {
  struct Shape {
    int heads, nb, keep_one_in;  // keep_one_in 0: dense (null lists in)
  };
  for (const Shape& s : std::vector<Shape>{
           {1, 1, 2}, {3, 5, 2}, {8, 17, 3}, {32, 130, 10}, {4, 2048, 9}, {5, 1, 0}, {3, 7, 0}, {32, 300, 0}}) {
    SCOPED_TRACE("heads=" + std::to_string(s.heads) + " nb=" + std::to_string(s.nb) +
                 " keep_one_in=" + std::to_string(s.keep_one_in) + " seed=" + std::to_string(seed_));
    BlockMask m = BlockMask::Dense(s.heads, s.nb * 64, 64);
    if (s.keep_one_in > 0) {
      for (uint8_t& v : m.keep) v = v != 0 && rng_() % s.keep_one_in == 0;
      // Head 0's last row empty, where there is a second head to follow it.
      if (s.heads > 1) std::fill_n(m.keep.begin() + static_cast<size_t>(s.nb - 1) * s.nb, s.nb, 0);
    }
    const BlockLists in = ToBlockLists(m);
    const BlockLists want = KeepLastQueryBlock(in);
    const size_t rows = static_cast<size_t>(s.heads) * s.nb + 1;
    DevBuf offsets(sizeof(int32_t) * rows), indices(sizeof(int32_t) * (in.indices.size() + 1));
    DevBuf out_offsets(sizeof(int32_t) * rows), out_indices(sizeof(int32_t) * s.heads * s.nb);
    ASSERT_CUDA(offsets.Upload(in.offsets.data(), sizeof(int32_t) * rows));
    ASSERT_CUDA(indices.Upload(in.indices.data(), sizeof(int32_t) * in.indices.size()));
    const bool dense = s.keep_one_in == 0;
    ASSERT_CUDA(cuda::KeepLastQueryBlock(dense ? nullptr : offsets.get<int32_t>(),
                                         dense ? nullptr : indices.get<int32_t>(), s.heads, s.nb,
                                         out_offsets.get<int32_t>(), out_indices.get<int32_t>(), nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<int32_t> got_offsets(rows), got_indices(want.indices.size());
    ASSERT_CUDA(out_offsets.Download(got_offsets.data(), sizeof(int32_t) * rows));
    ASSERT_CUDA(out_indices.Download(got_indices.data(), sizeof(int32_t) * got_indices.size()));
    EXPECT_EQ(got_offsets, want.offsets);
    EXPECT_EQ(got_indices, want.indices);
  }
  EXPECT_EQ(cuda::KeepLastQueryBlock(nullptr, nullptr, 0, 4, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
  DevBuf any(64);
  EXPECT_EQ(
      cuda::KeepLastQueryBlock(any.get<int32_t>(), nullptr, 1, 4, any.get<int32_t>(), any.get<int32_t>(), nullptr),
      cudaErrorInvalidValue)
      << "offsets without indices";
}

TEST_F(GateGpuTest, RejectsBadParams) {
  cuda::GateParams p;
  p.seq_len = 100;
  p.num_heads = 4;
  p.num_kv_heads = 3;
  p.head_dim = 64;
  p.hidden = 64;
  EXPECT_EQ(cuda::RunGateKernels(p, nullptr), cudaErrorInvalidValue) << "Hq % Hkv != 0";
  p.num_kv_heads = 4;
  p.hidden = 32;
  EXPECT_EQ(cuda::RunGateKernels(p, nullptr), cudaErrorInvalidValue) << "hidden != D without q_weight";
  p.hidden = 64;
  EXPECT_EQ(cuda::RunGateKernels(p, nullptr), cudaErrorInvalidValue) << "null pointers";
  // The selection's ranges are not the kernel's to check: a SparsityConfig is
  // valid by construction (engine/model/sparsity.h, tested there).
}

}  // namespace
}  // namespace seer
