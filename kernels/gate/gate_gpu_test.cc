// The GPU gate (kernels/gate/gate.h), fused and unfused, against the CPU gate
// seer::RunGate (engine/model/gates.h) on the same bf16/fp16-rounded inputs and
// the same float32 weights, fresh random data each run; and the fused gate
// with its SIMT projection against the unfused gate's SIMT kernels (identical
// lists: they project and score in the same order). Shapes cover lengths under one block,
// a partial last block, GQA ratios 1, 4 and 8, head dims 8, 32, 40, 64 and 128, all
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
//   - nothing is NaN; every output starts poisoned with 0xFF bytes;
//   - each pass run again without probabilities (as a prefill runs it: the
//     wgmma scores kernel then writes top-k keys) gives the same lists.

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <limits>
#include <numeric>
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
  int q_scale_log2 = 0;  // q times 2^this, k times 2^-this: the same scores (bf16 only)
  bool f32_weights = false;  // full float32 gate weights (else bf16 values, as checkpoints hold)
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
  if (c.q_scale_log2 != 0) s += " q_scale_log2=" + std::to_string(c.q_scale_log2);
  if (c.f32_weights) s += " f32_weights";
  return s;
}

// --- The select step on given scores (cuda::RunGateSelectForTest) -----------

float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// v moved |d| ulps, toward +inf for d > 0.
float Ulps(float v, int d) {
  for (; d > 0; --d) v = std::nextafter(v, INFINITY);
  for (; d < 0; ++d) v = std::nextafter(v, -INFINITY);
  return v;
}

// The score distributions of a row.
enum class RowKind { kNormal, kFourValues, kAllEqual, kSpecials, kUlps, kZeros, kRawBits, kCount };

const char* RowKindName(RowKind k) {
  switch (k) {
    case RowKind::kNormal: return "normal";
    case RowKind::kFourValues: return "four values";
    case RowKind::kAllEqual: return "all equal";
    case RowKind::kSpecials: return "inf/NaN";
    case RowKind::kUlps: return "ulp neighbours";
    case RowKind::kZeros: return "zeros/denormals";
    case RowKind::kRawBits: return "raw bits";
    case RowKind::kCount: break;
  }
  return "?";
}

// n scores of one row, of the given kind.
void FillRow(RowKind kind, std::mt19937& rng, float* s, int n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 1e-30 .. 1e30
  auto magnitude = [&] { return static_cast<float>(std::pow(10.0, static_cast<int>(rng() % 61) - 30)); };
  const float denorm_min = std::numeric_limits<float>::denorm_min();
  switch (kind) {
    case RowKind::kNormal: {
      const float m = magnitude();
      for (int i = 0; i < n; ++i) s[i] = normal(rng) * m;
      break;
    }
    case RowKind::kFourValues: {  // massive ties
      const float m = magnitude();
      float v[4];
      for (float& x : v) x = normal(rng) * m;
      if (rng() % 2 == 0) v[rng() % 4] = rng() % 2 == 0 ? 0.0f : -0.0f;
      for (int i = 0; i < n; ++i) s[i] = v[rng() % 4];
      break;
    }
    case RowKind::kAllEqual: {
      const float choices[] = {0.0f, -0.0f, 1.0f, -2.5e-20f, 3e30f, INFINITY, -INFINITY, NAN, denorm_min};
      const float v = rng() % 2 == 0 ? normal(rng) * magnitude() : choices[rng() % std::size(choices)];
      std::fill_n(s, n, v);
      break;
    }
    case RowKind::kSpecials: {  // +-inf and NaNs of both signs and several payloads (one signalling)
      const float specials[] = {INFINITY,
                                -INFINITY,
                                FloatFromBits(0x7fc00000u),
                                FloatFromBits(0xffc00000u),
                                FloatFromBits(0x7f800001u),
                                FloatFromBits(0xfff12345u)};
      const float m = magnitude();
      const uint32_t every = 2 + rng() % 15;
      for (int i = 0; i < n; ++i) s[i] = rng() % every == 0 ? specials[rng() % std::size(specials)] : normal(rng) * m;
      break;
    }
    case RowKind::kUlps: {
      // Mostly within 3 ulps of a centre (zero: denormals and both zeros),
      // some far above and below it: whatever k is, the k-th largest score
      // tends to be one of the neighbours, with its one-ulp neighbours kept
      // and dropped around it.
      const float centres[] = {0.0f, FLT_MIN, -FLT_MIN, FLT_MAX, -FLT_MAX, 1.0f, -1.0f, denorm_min};
      const float v = rng() % 2 == 0 ? normal(rng) * magnitude() : centres[rng() % std::size(centres)];
      const float far = std::abs(v) + 1.0f;  // inf next to FLT_MAX
      for (int i = 0; i < n; ++i) {
        const uint32_t r = rng() % 10;
        float x = r == 0 ? v + far : r == 1 ? v - far : Ulps(v, static_cast<int>(rng() % 7) - 3);
        if (x == 0.0f && rng() % 2 == 0) x = -x;
        s[i] = x;
      }
      break;
    }
    case RowKind::kZeros: {  // +-0.0 and denormals (few distinct ones, so they tie too)
      for (int i = 0; i < n; ++i) {
        const uint32_t sign = rng() % 2 == 0 ? 0u : 0x80000000u;
        switch (rng() % 4) {
          case 0: s[i] = FloatFromBits(sign); break;
          case 1: s[i] = FloatFromBits(sign | (rng() & 0x7fffffu)); break;
          case 2: s[i] = FloatFromBits(sign | (rng() % 4)); break;
          default: s[i] = FloatFromBits(sign | (rng() % 2 == 0 ? 0x800000u : 0x7fffffu)); break;  // FLT_MIN, below
        }
      }
      break;
    }
    case RowKind::kRawBits:  // any float: huge magnitudes, infs, NaNs, denormals
      for (int i = 0; i < n; ++i) s[i] = FloatFromBits(static_cast<uint32_t>(rng()));
      break;
    case RowKind::kCount: break;
  }
}

// The CPU gate's top-k order (kernels/gate/gate_cpu.cc, ScoreGreater), stated
// apart from it: NaN above every number and all NaNs alike; numbers by value,
// so -0.0 and +0.0 are equal; equal scores keep their index order (through
// std::stable_sort), the lower block first.
bool ScoreAbove(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && !std::isnan(b);
  return a > b;
}

// Block indices 0 .. n - 1 of a row, best first.
void RankRow(const float* s, int n, int32_t* order) {
  std::iota(order, order + n, 0);
  std::stable_sort(order, order + n, [s](int32_t i, int32_t j) { return ScoreAbove(s[i], s[j]); });
}

// The first `keep` blocks of a ranking, ascending (the lists' order).
std::vector<int32_t> KeptAscending(const int32_t* order, int keep) {
  std::vector<int32_t> kept(order, order + keep);
  std::sort(kept.begin(), kept.end());
  return kept;
}

// A threshold row as the gate selects it (prob > float(t), the probability
// in float from float differences), or false where rounding could decide a
// block: its exact probability within 1e-5 relative of t. NaN or +inf in the
// row, or a row all -inf, makes every probability NaN: nothing kept.
bool ThresholdRow(const float* s, int n, float t, std::vector<uint8_t>* keep) {
  keep->assign(n, 0);
  float mx = -INFINITY;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(s[i]) || s[i] == INFINITY) return true;
    mx = std::max(mx, s[i]);
  }
  if (mx == -INFINITY) return true;
  std::vector<double> e(n);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += e[i] = std::exp(static_cast<double>(s[i] - mx));
  for (int i = 0; i < n; ++i) {
    const double prob = e[i] / sum;
    if (std::abs(prob - t) <= 1e-5 * t) return false;
    (*keep)[i] = prob > t;
  }
  return true;
}

// A host copy of the GPU select's key (OrderKey in kernels/gate/gate.cu):
// larger scores have larger keys, NaN the largest; -0.0 shares +0.0's key.
uint32_t HostOrderKey(float f) {
  if (std::isnan(f)) return 0xffffffffu;
  const uint32_t u = f == 0.0f ? 0u : BitsOf(f);
  return u ^ ((u >> 31) != 0 ? 0xffffffffu : 0x80000000u);
}

std::string Hex(float f) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", BitsOf(f));
  return buf;
}

// Holds cuda::SampleSelectRankForTest at `rank` for its scope.
class SampleRank {
 public:
  explicit SampleRank(int rank) { cuda::SampleSelectRankForTest(rank); }
  ~SampleRank() { cuda::SampleSelectRankForTest(-1); }
  SampleRank(const SampleRank&) = delete;
  SampleRank& operator=(const SampleRank&) = delete;
};

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
      qe[i] = ToElem(std::ldexp(q_dir[i % q_width] + normal(rng_), c.q_scale_log2), c.dtype);
      qf[i] = FromElem(qe[i], c.dtype);
    }
    if (c.zero_q) {
      std::fill(qe.begin(), qe.end(), ToElem(0.0f, c.dtype));
      std::fill(qf.begin(), qf.end(), 0.0f);
    }
    for (size_t i = 0; i < kf.size(); ++i) {
      const int block = static_cast<int>(i / k_width / 64);
      const bool zero = c.zero_k_every > 0 && block % c.zero_k_every == 1;
      ke[i] = ToElem(zero ? 0.0f : std::ldexp(k_dir[i % k_width] + normal(rng_), -c.q_scale_log2), c.dtype);
      kf[i] = FromElem(ke[i], c.dtype);
    }
    GateLayerWeights w;
    const int k_heads = c.force_double ? Hkv : Hq;
    w.k_weight.resize(static_cast<size_t>(k_heads) * 3 * D * c.hidden);
    const float wk_scale = 1.0f / std::sqrt(3.0f * D);
    auto weight = [&](float scale) {
      const float x = scale * normal(rng_);
      return c.f32_weights ? x : Bf16ToFloat(FloatToBf16(x));
    };
    for (float& x : w.k_weight) x = weight(wk_scale);
    if (c.q_weight) {
      w.q_in = D;
      w.q_weight.resize(static_cast<size_t>(Hq) * D * c.hidden);
      const float wq_scale = 1.0f / std::sqrt(static_cast<float>(D));
      for (float& x : w.q_weight) x = weight(wq_scale);
    }
    // bf16 values are tf32 values; normal float32 draws are not (one of
    // thousands could be by chance, not all).
    const bool weights_tf32 = cuda::WeightsAreTf32(w.k_weight.data(), w.k_weight.size()) &&
                              cuda::WeightsAreTf32(w.q_weight.data(), w.q_weight.size());
    ASSERT_EQ(weights_tf32, !c.f32_weights);

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
    p.weights_tf32 = weights_tf32;  // as the engine sets it
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
    // The fused gate (its projection on tensor cores at hidden 128), the
    // fused gate with its SIMT projection, the unfused gate (scores on
    // tensor cores where hidden % 4 == 0: wgmma on sm_90 where hidden % 16
    // == 0 and <= 128, else mma.sync), the unfused gate with the mma.sync
    // kernels where wgmma would run, and the unfused gate with the SIMT
    // scores kernel.
    struct Pass {
      cuda::GateVariant variant;
      bool simt_unfused;
      bool mma_sync;
      const char* name;
    };
    const bool wgmma_runs = cuda::UseMmaSyncForTest(false) && c.hidden % 16 == 0;
    const Pass passes[] = {{cuda::GateVariant::kFused, false, false, "fused"},
                           {cuda::GateVariant::kFused, true, false, "fused, SIMT projection"},
                           {cuda::GateVariant::kUnfused, false, false, wgmma_runs ? "unfused, wgmma" : "unfused"},
                           {cuda::GateVariant::kUnfused, false, true, "unfused, mma.sync"},
                           {cuda::GateVariant::kUnfused, true, false, "unfused, SIMT kernels"}};
    for (const Pass& pass : passes) {
      if (pass.mma_sync && !wgmma_runs) continue;  // the "unfused" pass ran these kernels
      const cuda::GateVariant variant = pass.variant;
      SCOPED_TRACE(pass.name);
      auto run_pass = [&] {
        cuda::UseSimtUnfusedGateForTest(pass.simt_unfused);
        cuda::UseMmaSyncForTest(pass.mma_sync);
        const cudaError_t ran = cuda::RunGateKernelsVariant(p, variant, nullptr);
        cuda::UseSimtUnfusedGateForTest(false);
        cuda::UseMmaSyncForTest(false);
        return ran;
      };
      ASSERT_CUDA(cudaMemset(doffsets.get(), 0xFF, (static_cast<size_t>(Hq) * nb + 1) * 4));
      ASSERT_CUDA(cudaMemset(dindices.get(), 0xFF, static_cast<size_t>(capacity) * 4));
      ASSERT_CUDA(cudaMemset(dkept.get(), 0xFF, static_cast<size_t>(Hq) * 8));
      ASSERT_CUDA(cudaMemset(dprobs.get(), 0xFF, static_cast<size_t>(Hq) * nb * nb * 4));
      const cudaError_t ran = run_pass();
      ASSERT_CUDA(ran);
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

      // Without probabilities to write (as in a prefill) the lists are the
      // same (nz_ratio rows may then score and select on keys).
      {
        cuda::GateParams no_probs = p;
        no_probs.probs = nullptr;
        std::swap(p, no_probs);
        ASSERT_CUDA(cudaMemset(doffsets.get(), 0xFF, (static_cast<size_t>(Hq) * nb + 1) * 4));
        ASSERT_CUDA(cudaMemset(dindices.get(), 0xFF, static_cast<size_t>(capacity) * 4));
        const cudaError_t run = run_pass();
        std::swap(p, no_probs);
        ASSERT_CUDA(run);
        ASSERT_CUDA(cudaDeviceSynchronize());
        std::vector<int32_t> offsets2(offsets.size()), indices2(indices.size());
        ASSERT_CUDA(cudaMemcpy(offsets2.data(), doffsets.get(), offsets2.size() * 4, cudaMemcpyDeviceToHost));
        if (!indices2.empty()) {
          ASSERT_CUDA(cudaMemcpy(indices2.data(), dindices.get(), indices2.size() * 4, cudaMemcpyDeviceToHost));
        }
        EXPECT_EQ(offsets2, offsets) << "offsets: without probs vs with";
        EXPECT_EQ(indices2, indices) << "indices: without probs vs with";
      }

      // Reruns the pass with a test hook on (hook(true) answers whether the
      // hook changes the kernels that run on this device) and requires the
      // same bits: same lists, same probabilities.
      auto expect_same_bits = [&](auto hook, const char* what) {
        if (!hook(true)) {
          hook(false);
          return;
        }
        ASSERT_CUDA(cudaMemset(doffsets.get(), 0xFF, (static_cast<size_t>(Hq) * nb + 1) * 4));
        ASSERT_CUDA(cudaMemset(dprobs.get(), 0xFF, static_cast<size_t>(Hq) * nb * nb * 4));
        const cudaError_t run = run_pass();
        hook(false);
        ASSERT_CUDA(run);
        ASSERT_CUDA(cudaDeviceSynchronize());
        std::vector<int32_t> offsets2(offsets.size()), indices2(indices.size());
        std::vector<float> probs2(probs.size());
        ASSERT_CUDA(cudaMemcpy(offsets2.data(), doffsets.get(), offsets2.size() * 4, cudaMemcpyDeviceToHost));
        ASSERT_CUDA(cudaMemcpy(probs2.data(), dprobs.get(), probs2.size() * 4, cudaMemcpyDeviceToHost));
        if (!indices2.empty()) {
          ASSERT_CUDA(cudaMemcpy(indices2.data(), dindices.get(), indices2.size() * 4, cudaMemcpyDeviceToHost));
        }
        EXPECT_EQ(offsets2, offsets) << "offsets: " << what;
        EXPECT_EQ(indices2, indices) << "indices: " << what;
        EXPECT_EQ(std::memcmp(probs2.data(), probs.data(), probs.size() * 4), 0)
            << "probabilities: " << what << ", not the same bits";
      };
      // Where the bulk-copy pool runs (sm_90), the portable pool.
      expect_same_bits(cuda::UsePortablePoolForTest, "portable pool vs bulk-copy pool");
      // With tf32 weights, every product taken as for float32 weights (their
      // lo parts are zero, so skipping them must leave the same bits).
      expect_same_bits(
          [&](bool on) {
            p.weights_tf32 = weights_tf32 && !on;
            return weights_tf32;
          },
          "every product vs the weights' lo products skipped");
      // Where the fp16 stripes run with copy-engine loads and stores
      // (sm_90a), the lockstep stripe kernel: the same wgmma products in the
      // same order, the same scale.
      if (variant == cuda::GateVariant::kUnfused && !pass.simt_unfused && !pass.mma_sync) {
        expect_same_bits(cuda::UseLockstepStripesForTest, "lockstep stripes vs copy-engine stripes");
      }
      if (HasFatalFailure()) return;

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
      // The fused gate with its SIMT projection and the unfused gate's SIMT
      // kernels project and score in the same order: their lists are
      // identical. The tensor-core projections and scores round differently
      // (all are checked against the CPU gate above).
      if (variant == cuda::GateVariant::kFused) {
        if (pass.simt_unfused) {
          fused_offsets = offsets;
          fused_indices = indices;
        }
      } else if (pass.simt_unfused || c.hidden % 4 != 0) {
        EXPECT_EQ(offsets, fused_offsets) << "offsets: unfused gate vs fused gate";
        EXPECT_EQ(indices, fused_indices) << "indices: unfused gate vs fused gate";
      }
      total_boundary_ += boundary;
      total_blocks_ += cpu.mask.causal_blocks();
      std::cout << "[gate] " << Describe(c) << " " << pass.name << ": density GPU " << gpu_mask.density() << " CPU "
                << cpu.mask.density() << ", boundary blocks " << boundary << ", probs rel err " << prob_rel << "\n";
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
      // Hidden 128 with mask_linear_q and D = 40: the fused gate's projection
      // kernel ends each linear on a partial slab (24 and 8 channels).
      {1000, 8, 4, 40, 128, true, false, false, "threshold=0.002", true, 0, true, fp},
      // Without mask_linear_q the fused pool rotates q' for D = 32 (a head
      // is 4 lanes); D = 8 (a thread holds both halves) must not.
      {700, 4, 2, 32, 32, false, false, false, "nz_ratio=0.3", false, 0, false, bf},
      {300, 2, 1, 8, 8, false, false, true, "threshold=0.005", false, 0, false, fp},
      // Without mask_linear_q the wgmma scores kernel rotates q' itself; at
      // D = 96 and 48 a thread's items (6 and 3) do not fill whole batches.
      {333, 4, 2, 96, 96, false, false, false, "nz_ratio=0.2", false, 0, false, bf},
      {150, 4, 1, 48, 48, false, false, true, "threshold=0.005", true, 0, false, fp},
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
      // Hidden 128 with mask_linear_q: the fused gate projects and rotates
      // both linears in one kernel (per-KV-head K weights, then per Q head).
      {4097, 8, 2, 128, 128, true, true, true, "nz_ratio=0.1", false, 0, false, bf},
      {20000, 8, 2, 128, 128, false, false, true, "threshold=0.002", true, 4, false, bf},
      {20000, 8, 2, 128, 128, false, false, true, "nz_ratio=0.1", true, 0, false, bf},
      {5000, 8, 4, 128, 128, false, false, false, "dense", false, 0, false, bf},
      // Long enough that the fused gate holds fewer rows per CTA (8).
      {60000, 4, 1, 128, 128, false, false, true, "nz_ratio=0.1", false, 0, false, bf},
      {60000, 4, 2, 128, 128, false, false, false, "threshold=0.002", true, 0, false, fp},
      // Score rows 16-byte aligned (nb % 4 == 0) over several stripes, the
      // last one partial, one of them in passes of 3 heads: the fp16
      // stripes store through the copy engine (sm_90a).
      {64 * 300 - 5, 4, 2, 128, 128, false, false, false, "nz_ratio=0.1", false, 0, false, bf},
      {64 * 512, 8, 2, 128, 128, false, false, true, "threshold=0.002", true, 3, false, fp},
  };
  for (const GateCase& c : cases) Run(c);
}

// Full float32 gate weights (checkpoints in F32): the tensor-core
// projections take the weights' lo products (weights_tf32 false). The
// mma.sync projections of the fused gate (with and without mask_linear_q,
// per-KV-head K weights) and of the unfused gate, and the wgmma projection
// (hidden = D = 128, no mask_linear_q) at one and several row tiles.
TEST_F(GateGpuTest, Float32Weights) {
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  std::vector<GateCase> cases = {
      {200, 8, 2, 128, 128, true, false, false, "nz_ratio=0.1", false, 3, false, fp},
      {1000, 8, 4, 40, 128, true, false, false, "threshold=0.002", true, 0, true, fp},
      {3000, 8, 1, 64, 64, true, true, false, "nz_ratio=0.5", true, 5, false, fp},
      {4097, 8, 2, 128, 128, false, false, true, "nz_ratio=0.3", true, 0, true, bf},
      {20000, 8, 2, 128, 128, false, false, true, "nz_ratio=0.1", true, 0, false, bf},
  };
  for (GateCase& c : cases) {
    c.f32_weights = true;
    Run(c);
  }
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

// q and k far from 1 in opposite directions (q 2^s, k 2^-s, bf16): the CPU
// gate's scores are those of the unscaled inputs, bit for bit, while the
// pooled rows, q' and k' lie about 2^s and 2^-s. The fp16 stripes (hidden =
// D = 128, no mask_linear_q) scale each q' and k' row by its own power of two
// before they split it; these cases move those shifts far from 0 (about -27
// for q' and +50 for k' at s = 40), the first across five 128-row k' tiles
// (the stripe's ring of tile shifts wraps twice).
TEST_F(GateGpuTest, ScaledInputs) {
  const ElemType bf = ElemType::kBF16;
  GateCase up = {33000, 2, 1, 128, 128, false, false, false, "nz_ratio=0.2", false, 0, false, bf};
  up.q_scale_log2 = 40;
  GateCase down = {9000, 4, 2, 128, 128, false, false, true, "threshold=0.005", true, 0, false, bf};
  down.q_scale_log2 = -40;
  for (const GateCase& c : {up, down}) Run(c);
}

// The select step alone (cuda::RunGateSelectForTest: the unfused gate's select
// kernel, then for threshold its scan and fill kernels) on scores the test
// makes, so that the GPU and the reference see the same floats: top-k and
// dense lists must equal a brute-force top-k exactly (offsets, ascending
// indices, kept_per_head); threshold rows likewise where no probability is
// within rounding of the threshold. Rows of 1 to 3000 blocks, 1 to 3 heads,
// nz_ratio 0.1, 0.5 and 0.97, dense, threshold, last_block_dense on and off;
// each row's scores one of RowKind (normal at 1e-30 .. 1e30, four values, all
// equal, +-inf and NaNs, one-ulp neighbours, +-0.0 and denormals, raw bits),
// random bits above the diagonal (never read), outputs poisoned with 0x7f.
TEST_F(GateGpuTest, SelectIsExactOnGivenScores) {
  struct Shape {
    int nb, heads;
  };
  struct Select {
    SparsityMode mode;
    double value;  // nz_ratio or threshold
  };
  const std::vector<Select> selects = {{SparsityMode::kNzRatio, 0.1},     {SparsityMode::kNzRatio, 0.5},
                                       {SparsityMode::kNzRatio, 0.97},    {SparsityMode::kDense, 0.0},
                                       {SparsityMode::kThreshold, 0.001}, {SparsityMode::kThreshold, 0.05}};
  constexpr int32_t kPoison = 0x7f7f7f7f;
  int64_t threshold_rows = 0, threshold_unchecked = 0;
  for (const Shape& shape : std::vector<Shape>{
           {1, 2}, {2, 3}, {3, 1}, {63, 3}, {64, 2}, {65, 3}, {257, 3}, {1000, 2}, {2049, 2}, {3000, 1}}) {
    const int nb = shape.nb, heads = shape.heads;
    SCOPED_TRACE("nb=" + std::to_string(nb) + " heads=" + std::to_string(heads) + " seed=" + std::to_string(seed_));
    const int rows = heads * nb;
    const size_t triangle = static_cast<size_t>(nb) * (nb + 1) / 2;
    std::vector<float> scores(static_cast<size_t>(rows) * nb);
    std::vector<RowKind> kinds(rows);
    std::vector<int32_t> order(heads * triangle);  // row r's ranking at r's first causal entry
    auto order_of = [&](int h, int qb) { return order.data() + h * triangle + static_cast<size_t>(qb) * (qb + 1) / 2; };
    for (int h = 0; h < heads; ++h) {
      for (int qb = 0; qb < nb; ++qb) {
        const int r = h * nb + qb;
        kinds[r] = static_cast<RowKind>(rng_() % static_cast<uint32_t>(RowKind::kCount));
        float* s = scores.data() + static_cast<size_t>(r) * nb;
        FillRow(kinds[r], rng_, s, qb + 1);
        for (int kb = qb + 1; kb < nb; ++kb) s[kb] = FloatFromBits(static_cast<uint32_t>(rng_()));
        RankRow(s, qb + 1, order_of(h, qb));
      }
    }

    cuda::GateParams p;
    p.seq_len = nb * 64;
    p.num_heads = heads;
    p.num_kv_heads = 1;
    p.head_dim = 64;
    p.hidden = 64;
    p.block_size = 64;
    const size_t ws_bytes = cuda::GateWorkspaceBytesVariant(p, cuda::GateVariant::kUnfused);
    ASSERT_GT(ws_bytes, 0u);
    const size_t max_indices = heads * triangle;  // dense
    DevBuf dscores(scores.size() * 4), doffsets((rows + 1) * 4), dindices(max_indices * 4), dkept(heads * 8),
        dws(ws_bytes);
    ASSERT_TRUE(dscores.ok() && doffsets.ok() && dindices.ok() && dkept.ok() && dws.ok());
    ASSERT_CUDA(dscores.Upload(scores.data(), scores.size() * 4));
    std::vector<uint32_t> keys(scores.size());
    for (int r = 0; r < rows; ++r) {
      for (int kb = 0; kb < nb; ++kb) {
        const float score = scores[static_cast<size_t>(r) * nb + kb];
        keys[static_cast<size_t>(r) * nb + kb] = kb <= r % nb ? HostOrderKey(score) : BitsOf(score);
      }
    }
    DevBuf dkeys(keys.size() * 4);
    ASSERT_TRUE(dkeys.ok());
    ASSERT_CUDA(dkeys.Upload(keys.data(), keys.size() * 4));
    p.block_offsets = doffsets.get<int32_t>();
    p.block_indices = dindices.get<int32_t>();
    p.kept_per_head = dkept.get<int64_t>();
    p.workspace = dws.get();
    p.workspace_bytes = ws_bytes;

    for (const bool last_block_dense : {false, true}) {
      for (const Select& sel : selects) {
        p.mode = sel.mode;
        p.nz_ratio = sel.mode == SparsityMode::kNzRatio ? sel.value : 1.0;
        p.threshold = sel.mode == SparsityMode::kThreshold ? sel.value : 0.0;
        p.last_block_dense = last_block_dense;
        const bool threshold = sel.mode == SparsityMode::kThreshold;
        const std::string what = (sel.mode == SparsityMode::kDense     ? std::string("dense")
                                  : sel.mode == SparsityMode::kNzRatio ? "nz_ratio=" + std::to_string(sel.value)
                                                                       : "threshold=" + std::to_string(sel.value)) +
                                 (last_block_dense ? " last_block_dense" : "");
        SCOPED_TRACE(what);
        p.index_capacity = cuda::GateMaxIndices(p);
        ASSERT_LE(p.index_capacity, static_cast<int64_t>(max_indices));

        // The reference: each row's kept blocks, ascending; `checked` false
        // for threshold rows that rounding could decide.
        const int64_t topk = sel.mode == SparsityMode::kNzRatio ? NzRatioTopK(sel.value, nb) : 0;
        const int64_t first_dense = FirstDenseRow(last_block_dense, nb);
        std::vector<int32_t> want_offsets(rows + 1, 0), want_indices;
        std::vector<int64_t> want_kept(heads, 0);
        std::vector<uint8_t> checked(rows, 1), keep;
        for (int h = 0; h < heads; ++h) {
          for (int qb = 0; qb < nb; ++qb) {
            const int r = h * nb + qb;
            const int n = qb + 1;
            std::vector<int32_t> row;
            if (sel.mode == SparsityMode::kDense || qb >= first_dense) {
              row = KeptAscending(order_of(h, qb), n);
            } else if (!threshold) {
              row = KeptAscending(order_of(h, qb), static_cast<int>(std::min<int64_t>(topk, n)));
            } else {
              ++threshold_rows;
              checked[r] =
                  ThresholdRow(scores.data() + static_cast<size_t>(r) * nb, n, static_cast<float>(sel.value), &keep);
              threshold_unchecked += checked[r] == 0;
              for (int kb = 0; kb < n; ++kb) {
                if (keep[kb]) row.push_back(kb);
              }
              if (row.empty()) row.push_back(qb);  // never an empty row
            }
            want_indices.insert(want_indices.end(), row.begin(), row.end());
            want_offsets[r + 1] = static_cast<int32_t>(want_indices.size());
            want_kept[h] += static_cast<int64_t>(row.size());
          }
        }

        // Top-k and dense again on the scores' order keys, as the gate's
        // scores kernels hand them to the select where nothing reads the
        // probabilities: long top-k rows then start from a sample's bracket.
        // Sample ranks 0 and 31 (every row, any length) make the bracket miss
        // the boundary often, on either side, so the fallback to the row's
        // range runs too.
        struct Pass {
          bool keys;
          int rank;
          const char* name;
        };
        std::vector<Pass> passes = {{false, -1, "scores"}};
        if (!threshold) {
          passes.insert(passes.end(),
                        {{true, -1, "keys"}, {true, 0, "keys, sample rank 0"}, {true, 31, "keys, sample rank 31"}});
        }
        for (const Pass& pass : passes) {
          SCOPED_TRACE(pass.name);
          const SampleRank rank(pass.rank);
          ASSERT_CUDA(cudaMemset(doffsets.get(), 0x7f, (rows + 1) * 4));
          ASSERT_CUDA(cudaMemset(dindices.get(), 0x7f, max_indices * 4));
          ASSERT_CUDA(cudaMemset(dkept.get(), 0x7f, heads * 8));
          ASSERT_CUDA(cuda::RunGateSelectForTest(p, (pass.keys ? dkeys : dscores).get<float>(), nullptr, pass.keys));
          ASSERT_CUDA(cudaDeviceSynchronize());
          std::vector<int32_t> offsets(rows + 1), indices(max_indices);
          std::vector<int64_t> kept(heads);
          ASSERT_CUDA(doffsets.Download(offsets.data(), offsets.size() * 4));
          ASSERT_CUDA(dindices.Download(indices.data(), indices.size() * 4));
          ASSERT_CUDA(dkept.Download(kept.data(), kept.size() * 8));

          // The lists are well formed, and end where nothing more was written.
          ASSERT_EQ(offsets[0], 0);
          for (int r = 0; r < rows; ++r) {
            ASSERT_LT(offsets[r], offsets[r + 1]) << "row " << r << " empty or unwritten";
            ASSERT_LE(offsets[r + 1], p.index_capacity) << "row " << r;
            const int qb = r % nb;
            for (int i = offsets[r]; i < offsets[r + 1]; ++i) {
              ASSERT_GE(indices[i], 0) << "row " << r;
              ASSERT_LE(indices[i], qb) << "row " << r << ": non-causal or unwritten";
              if (i > offsets[r]) {
                ASSERT_LT(indices[i - 1], indices[i]) << "row " << r << ": not ascending";
              }
            }
          }
          for (int h = 0; h < heads; ++h) {
            EXPECT_EQ(kept[h], offsets[(h + 1) * nb] - offsets[h * nb]) << "kept_per_head[" << h << "]";
          }
          int64_t overwritten = 0;
          for (size_t i = static_cast<size_t>(offsets[rows]); i < indices.size(); ++i) {
            overwritten += indices[i] != kPoison;
          }
          EXPECT_EQ(overwritten, 0) << "indices written past the lists' end";

          // Exactly the reference, row by row (every row for top-k and dense,
          // whose offsets are then equal too; threshold rows where checked).
          if (!threshold) {
            EXPECT_EQ(offsets, want_offsets) << "offsets";
            EXPECT_EQ(kept, want_kept) << "kept_per_head";
          }
          int64_t wrong_rows = 0;
          for (int r = 0; r < rows; ++r) {
            if (!checked[r]) continue;
            const std::vector<int32_t> got(indices.begin() + offsets[r], indices.begin() + offsets[r + 1]);
            const std::vector<int32_t> want(want_indices.begin() + want_offsets[r],
                                            want_indices.begin() + want_offsets[r + 1]);
            if (got == want || ++wrong_rows > 5) continue;
            // The first block the two lists disagree on, with its score.
            std::vector<int32_t> only_got, only_want;
            std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(only_got));
            std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(only_want));
            const float* s = scores.data() + static_cast<size_t>(r) * nb;
            std::string detail;
            for (const auto& [name, list] :
                 {std::pair{"GPU only", &only_got}, std::pair{"reference only", &only_want}}) {
              detail += std::string(", ") + name + ":";
              for (size_t i = 0; i < list->size() && i < 4; ++i) {
                detail += " " + std::to_string((*list)[i]) + " (" + Hex(s[(*list)[i]]) + ")";
              }
            }
            const int qb = r % nb;
            ADD_FAILURE() << "row h=" << r / nb << " qb=" << qb << " (" << RowKindName(kinds[r]) << "): GPU keeps "
                          << got.size() << ", reference " << want.size() << ", topk " << topk << detail
                          << "; reference's last kept "
                          << (threshold ? std::string("-") : Hex(s[order_of(r / nb, qb)[want.size() - 1]]));
          }
          EXPECT_EQ(wrong_rows, 0) << "rows that differ from the reference";
        }
      }
    }
  }
  std::cout << "[gate select] threshold rows " << threshold_rows
            << ", of them unchecked (a probability within rounding of the threshold) " << threshold_unchecked << "\n";
  EXPECT_LT(threshold_unchecked * 100, threshold_rows) << "too few threshold rows checked";

  // The hook refuses what RunGateKernels would, and modes it does not run.
  cuda::GateParams p;
  p.seq_len = 3 * 64;
  p.num_heads = 1;
  p.num_kv_heads = 1;
  p.head_dim = 64;
  p.hidden = 64;
  p.mode = SparsityMode::kNzRatio;
  p.nz_ratio = 0.5;
  DevBuf dscores(9 * 4), doffsets(4 * 4), dindices(6 * 4),
      dws(cuda::GateWorkspaceBytesVariant(p, cuda::GateVariant::kUnfused));
  p.block_offsets = doffsets.get<int32_t>();
  p.block_indices = dindices.get<int32_t>();
  p.index_capacity = cuda::GateMaxIndices(p);
  p.workspace = dws.get();
  p.workspace_bytes = cuda::GateWorkspaceBytesVariant(p, cuda::GateVariant::kUnfused);
  ASSERT_CUDA(cuda::RunGateSelectForTest(p, dscores.get<float>(), nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(cuda::RunGateSelectForTest(p, nullptr, nullptr), cudaErrorInvalidValue) << "null scores";
  EXPECT_EQ(cuda::RunGateSelectForTest(p, dscores.get<float>() + 1, nullptr), cudaErrorInvalidValue)
      << "scores not 16-byte aligned";
  cuda::GateParams bad = p;
  bad.mode = SparsityMode::kStreaming;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr), cudaErrorInvalidValue) << "streaming";
  bad = p;
  bad.index_capacity -= 1;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr), cudaErrorInvalidValue) << "capacity";
  bad = p;
  bad.workspace_bytes -= 1;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr), cudaErrorInvalidValue) << "workspace";
  bad = p;
  bad.seq_len = 0;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr), cudaErrorInvalidValue) << "no blocks";
  bad = p;
  bad.block_offsets = nullptr;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr), cudaErrorInvalidValue) << "null offsets";
  // Order keys carry no probabilities: no threshold rows, no probs.
  bad = p;
  bad.mode = SparsityMode::kThreshold;
  bad.threshold = 0.01;
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr, true), cudaErrorInvalidValue)
      << "keys with threshold";
  bad = p;
  bad.probs = dscores.get<float>();
  EXPECT_EQ(cuda::RunGateSelectForTest(bad, dscores.get<float>(), nullptr, true), cudaErrorInvalidValue)
      << "keys with probs";
}

// The reference ranking of SelectIsExactOnGivenScores (std::stable_sort by
// ScoreAbove) against two other statements of the same order, on the CPU (no
// GPU needed), on the same score distributions: the CPU gate's (partial_sort
// with NaN first, then the value, then the index, as kernels/gate/gate_cpu.cc
// ranks) and the GPU select's (the keys above the k-th largest key and, of
// those equal to it, the first by index, as TopKthKey and SelectRow keep).
// The host check behind GateParams::weights_tf32 (no GPU needed).
TEST(WeightsAreTf32, TakesExactlyTheValuesWhoseLoPartIsZero) {
  auto tf32 = [](std::vector<float> v) { return cuda::WeightsAreTf32(v.data(), v.size()); };
  EXPECT_TRUE(tf32({}));
  EXPECT_TRUE(tf32({0.0f, -0.0f, 1.0f, -3.5f, Bf16ToFloat(FloatToBf16(0.1f)), 0x1.ffcp+127f}));
  EXPECT_TRUE(tf32({1.0f + 0x1p-10f}));  // tf32's last significand bit
  EXPECT_FALSE(tf32({1.0f, 1.0f + 0x1p-11f}));  // one bit past it
  EXPECT_FALSE(tf32({0.1f}));
  EXPECT_TRUE(tf32({FloatFromBits(0x00002000u)}));  // a denormal with the low 13 bits clear
  EXPECT_FALSE(tf32({FloatFromBits(0x00000001u)}));
  EXPECT_FALSE(tf32({INFINITY}));
  EXPECT_FALSE(tf32({-INFINITY}));
  EXPECT_FALSE(tf32({NAN}));
}

TEST(GateSelectReference, AgreesWithTheCpuGateAndTheGpuKeys) {
  std::mt19937 rng(20261129);
  EXPECT_EQ(HostOrderKey(-0.0f), HostOrderKey(0.0f));
  EXPECT_LT(HostOrderKey(-std::numeric_limits<float>::denorm_min()), HostOrderKey(-0.0f));
  EXPECT_LT(HostOrderKey(INFINITY), HostOrderKey(NAN));
  EXPECT_EQ(HostOrderKey(FloatFromBits(0xffc00000u)), HostOrderKey(NAN));
  std::vector<float> s;
  std::vector<int32_t> order, cpu_order;
  std::vector<uint32_t> keys;
  int64_t rows = 0;
  for (const int n : {1, 2, 3, 5, 31, 32, 33, 100, 257}) {
    s.resize(n);
    order.resize(n);
    cpu_order.resize(n);
    keys.resize(n);
    for (int rep = 0; rep < 30; ++rep) {
      for (int kind = 0; kind < static_cast<int>(RowKind::kCount); ++kind) {
        FillRow(static_cast<RowKind>(kind), rng, s.data(), n);
        RankRow(s.data(), n, order.data());
        std::iota(cpu_order.begin(), cpu_order.end(), 0);
        for (int i = 0; i < n; ++i) keys[i] = HostOrderKey(s[i]);
        std::vector<uint32_t> sorted_keys = keys;
        std::sort(sorted_keys.begin(), sorted_keys.end(), std::greater<uint32_t>());
        for (const int k : {1, 2, n / 3, n / 2, n - 1, n}) {
          if (k < 1 || k > n) continue;
          ++rows;
          const std::vector<int32_t> want = KeptAscending(order.data(), k);
          std::partial_sort(cpu_order.begin(), cpu_order.begin() + k, cpu_order.end(), [&](int i, int j) {
            const float a = s[i], b = s[j];
            const bool na = std::isnan(a), nb = std::isnan(b);
            if (na != nb) return na;
            if (!na && a != b) return a > b;
            return i < j;
          });
          EXPECT_EQ(KeptAscending(cpu_order.data(), k), want)
              << RowKindName(static_cast<RowKind>(kind)) << " n=" << n << " k=" << k << ": CPU gate comparator";
          const uint32_t kth = sorted_keys[k - 1];
          int take_equal =
              k - static_cast<int>(std::count_if(keys.begin(), keys.end(), [&](uint32_t x) { return x > kth; }));
          std::vector<int32_t> by_keys;
          for (int i = 0; i < n; ++i) {
            if (keys[i] > kth || (keys[i] == kth && take_equal-- > 0)) by_keys.push_back(i);
          }
          EXPECT_EQ(by_keys, want) << RowKindName(static_cast<RowKind>(kind)) << " n=" << n << " k=" << k
                                   << ": GPU keys";
        }
      }
    }
  }
  EXPECT_GT(rows, 0);
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

// The pool alone (cuda::RunGatePoolForTest), bulk-copy and portable,
// against a float64 recomputation here: each channel's block average as the
// sum of its elements in token order, in double, divided by the count and
// rounded to float; K's max and min with NaN propagating, and between
// zeros of opposite sign the first in token order. Bit for bit (any NaN
// equals any NaN). The elements cover normals of every exponent,
// subnormals, zeros of both signs, values near the largest finite (their
// sums pass float's range), in some channels an infinity or a NaN, and in
// some only zeros of both signs and values of one sign (an extreme that is
// a tie between zeros).
TEST_F(GateGpuTest, PoolIsExactOnEveryValue) {
  struct PoolCase {
    int seq_len, num_heads, num_kv_heads, head_dim;
    bool fused_qkv;
    ElemType dtype;
  };
  const ElemType bf = ElemType::kBF16, fp = ElemType::kF16;
  const PoolCase cases[] = {{1, 4, 4, 64, false, bf},    {63, 8, 2, 128, false, bf},  {130, 32, 8, 128, true, bf},
                            {1000, 8, 1, 64, false, bf}, {200, 12, 4, 40, false, bf}, {64, 4, 4, 64, false, fp},
                            {333, 32, 8, 128, true, fp}, {97, 8, 2, 32, false, fp}};
  for (const PoolCase& c : cases) {
    const bool bf16 = c.dtype == bf;
    const int L = c.seq_len, nb = (L + 63) / 64, qw = c.num_heads * c.head_dim, kw = c.num_kv_heads * c.head_dim;
    const int row = c.fused_qkv ? qw + 2 * kw : 0;
    SCOPED_TRACE("L=" + std::to_string(L) + " Hq=" + std::to_string(c.num_heads) +
                 " Hkv=" + std::to_string(c.num_kv_heads) + " D=" + std::to_string(c.head_dim) +
                 (bf16 ? " bf16" : " fp16") + (c.fused_qkv ? " fused" : "") + " seed=" + std::to_string(seed_));
    const int exp_bits = bf16 ? 8 : 5, man_bits = 15 - exp_bits, top_exp = (1 << exp_bits) - 2;
    // A channel's kind: 0 normals of a few nearby exponents, 1 any exponent,
    // 2 subnormals and zeros, 3 near the largest finite, 4 kind 0 with an
    // infinity or a NaN at one token, 5 zeros of both signs and normals of
    // the centre exponent and the channel's one sign.
    auto element = [&](int kind, int centre, uint32_t channel_sign) -> uint16_t {
      const uint32_t sign = rng_() & 0x8000u, man = rng_() & ((1u << man_bits) - 1);
      if (kind == 5) {
        if (rng_() % 2 == 0) return static_cast<uint16_t>(sign);  // +-0
        return static_cast<uint16_t>(channel_sign | static_cast<uint32_t>(std::clamp(centre, 1, top_exp)) << man_bits |
                                     man);
      }
      int e = 0;
      if (kind == 1) e = static_cast<int>(rng_() % (top_exp + 1));
      if (kind == 0 || kind == 4) e = std::clamp(centre + static_cast<int>(rng_() % 7) - 3, 1, top_exp);
      if (kind == 2) e = rng_() % 4 == 0 ? 1 : 0;
      if (kind == 3) e = top_exp - static_cast<int>(rng_() % 2);
      if (kind == 2 && rng_() % 3 == 0) return static_cast<uint16_t>(sign);  // +-0
      return static_cast<uint16_t>(sign | static_cast<uint32_t>(e) << man_bits | man);
    };
    auto fill = [&](int width) {
      std::vector<uint16_t> x(static_cast<size_t>(L) * width);
      for (int ch = 0; ch < width; ++ch) {
        const int kind = static_cast<int>(rng_() % 6);
        const int centre = (1 << (exp_bits - 1)) + static_cast<int>(rng_() % 9) - 4;
        const uint32_t channel_sign = rng_() & 0x8000u;
        for (int t = 0; t < L; ++t) x[static_cast<size_t>(t) * width + ch] = element(kind, centre, channel_sign);
        if (kind == 4) {
          const uint32_t special = (rng_() & 0x8000u) | (((1u << exp_bits) - 1) << man_bits) |
                                   (rng_() % 2 == 0 ? 0u : 1u + rng_() % ((1u << man_bits) - 1));
          x[static_cast<size_t>(rng_() % L) * width + ch] = static_cast<uint16_t>(special);
        }
      }
      return x;
    };
    const std::vector<uint16_t> q = fill(qw), k = fill(kw);
    auto value = [&](uint16_t e) { return bf16 ? Bf16ToFloat(e) : Fp16ToFloat(e); };

    // float64 reference.
    std::vector<float> want_q(static_cast<size_t>(nb) * qw), want_k(static_cast<size_t>(nb) * kw * 3);
    int zero_ties = 0;  // extremes that are a zero where zeros of both signs occur
    for (int b = 0; b < nb; ++b) {
      const int t0 = b * 64, t1 = std::min(L, t0 + 64);
      for (int ch = 0; ch < qw; ++ch) {
        double sum = 0.0;
        for (int t = t0; t < t1; ++t) sum += value(q[static_cast<size_t>(t) * qw + ch]);
        want_q[static_cast<size_t>(b) * qw + ch] = static_cast<float>(sum / (t1 - t0));
      }
      for (int ch = 0; ch < kw; ++ch) {
        double sum = 0.0;
        float mx = -INFINITY, mn = INFINITY;
        bool zero_signs[2] = {false, false};
        for (int t = t0; t < t1; ++t) {
          const float v = value(k[static_cast<size_t>(t) * kw + ch]);
          sum += v;
          if (v > mx || std::isnan(v)) mx = v;
          if (v < mn || std::isnan(v)) mn = v;
          if (v == 0.0f) zero_signs[std::signbit(v) ? 1 : 0] = true;
        }
        if (zero_signs[0] && zero_signs[1]) zero_ties += (mx == 0.0f) + (mn == 0.0f);
        float* out = want_k.data() + (static_cast<size_t>(b) * c.num_kv_heads + ch / c.head_dim) * 3 * c.head_dim +
                     ch % c.head_dim;
        out[0] = mx;
        out[c.head_dim] = mn;
        out[2 * c.head_dim] = static_cast<float>(sum / (t1 - t0));
      }
    }

    std::vector<uint16_t> packed;
    size_t k_off = 0;
    if (c.fused_qkv) {
      packed.assign(static_cast<size_t>(L) * row, 0x7fc0);  // V's columns (not read): NaNs
      for (int t = 0; t < L; ++t) {
        std::copy_n(q.data() + static_cast<size_t>(t) * qw, qw, packed.data() + static_cast<size_t>(t) * row);
        std::copy_n(k.data() + static_cast<size_t>(t) * kw, kw, packed.data() + static_cast<size_t>(t) * row + qw);
      }
      k_off = qw;
    } else {
      packed = q;
      packed.insert(packed.end(), k.begin(), k.end());
      k_off = q.size();
    }
    DevBuf dqk(packed.size() * 2), dq(want_q.size() * 4), dk(want_k.size() * 4);
    ASSERT_TRUE(dqk.ok() && dq.ok() && dk.ok());
    ASSERT_CUDA(cudaMemcpy(dqk.get(), packed.data(), packed.size() * 2, cudaMemcpyHostToDevice));
    cuda::GateParams p;
    p.dtype = c.dtype;
    p.q = dqk.get<uint16_t>();
    p.k = dqk.get<uint16_t>() + k_off;
    p.q_row_stride = row;
    p.k_row_stride = row;
    p.seq_len = L;
    p.num_heads = c.num_heads;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = c.head_dim;
    p.block_size = 64;
    p.hidden = c.head_dim;
    const bool bulk_runs = cuda::UsePortablePoolForTest(false);
    for (const bool portable : {false, true}) {
      if (!portable && !bulk_runs) continue;  // the portable pool is the default here
      SCOPED_TRACE(portable ? "portable pool" : "bulk-copy pool");
      cuda::UsePortablePoolForTest(portable);
      ASSERT_CUDA(cudaMemset(dq.get(), 0xFF, want_q.size() * 4));
      ASSERT_CUDA(cudaMemset(dk.get(), 0xFF, want_k.size() * 4));
      const cudaError_t ran = cuda::RunGatePoolForTest(p, dq.get<float>(), dk.get<float>(), nullptr);
      cuda::UsePortablePoolForTest(false);
      ASSERT_CUDA(ran);
      ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<float> got_q(want_q.size()), got_k(want_k.size());
      ASSERT_CUDA(cudaMemcpy(got_q.data(), dq.get(), got_q.size() * 4, cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(got_k.data(), dk.get(), got_k.size() * 4, cudaMemcpyDeviceToHost));
      auto same = [](float a, float b) { return std::isnan(a) ? std::isnan(b) : BitsOf(a) == BitsOf(b); };
      int bad = 0, nans = 0;
      for (size_t i = 0; i < got_q.size(); ++i) {
        nans += std::isnan(want_q[i]);
        if (!same(got_q[i], want_q[i]) && ++bad <= 10) {
          ADD_FAILURE() << "pooled Q [" << i / qw << "][" << i % qw << "]: GPU " << got_q[i] << " (0x" << std::hex
                        << BitsOf(got_q[i]) << "), float64 " << want_q[i] << " (0x" << BitsOf(want_q[i]) << std::dec
                        << ")";
        }
      }
      for (size_t i = 0; i < got_k.size(); ++i) {
        if (!same(got_k[i], want_k[i]) && ++bad <= 10) {
          ADD_FAILURE() << "pooled K [" << i / (3 * c.head_dim) << "][" << i % (3 * c.head_dim) << "]: GPU " << got_k[i]
                        << " (0x" << std::hex << BitsOf(got_k[i]) << "), float64 " << want_k[i] << " (0x"
                        << BitsOf(want_k[i]) << std::dec << ")";
        }
      }
      EXPECT_EQ(bad, 0);
      EXPECT_GT(nans, 0) << "no channel held a NaN or opposite infinities";
      if (L > 1) EXPECT_GT(zero_ties, 0) << "no extreme was a tie between zeros";
    }
  }
  DevBuf any(64);
  cuda::GateParams p;
  p.seq_len = 0;
  EXPECT_EQ(cuda::RunGatePoolForTest(p, any.get<float>(), any.get<float>(), nullptr), cudaErrorInvalidValue);
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
