// RunGate against an independent float64 recomputation of docs/GATES.md,
// written here from the text (not from kernels/gate/gate_cpu.cc, which runs behind RunGate), plus selection cases
// whose answers can be worked out by hand.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/model/gates.h"

namespace seer {
namespace {

constexpr double kPi = 3.14159265358979323846;

ModelConfig MakeModel(int hq, int hkv, int d, bool llama3) {
  ModelConfig m;
  m.num_heads = hq;
  m.num_kv_heads = hkv;
  m.head_dim = d;
  m.num_layers = 1;
  m.hidden_size = hq * d;
  if (llama3) {
    m.rope.theta = 500000.0;
    m.rope.type = "llama3";
    m.rope.factor = 8.0;
    m.rope.low_freq_factor = 1.0;
    m.rope.high_freq_factor = 4.0;
    m.rope.original_max_position_embeddings = 8192;
  } else {
    m.rope.theta = 10000.0;
  }
  return m;
}

// Hugging Face's inverse frequencies (default and llama3), in double.
std::vector<double> ReferenceInvFreq(const RopeConfig& rope, int dim) {
  std::vector<double> f(dim / 2);
  for (int i = 0; i < dim / 2; ++i) f[i] = 1.0 / std::pow(rope.theta, double(2 * i) / dim);
  if (rope.type != "llama3") return f;
  const double old_len = double(rope.original_max_position_embeddings);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  for (double& x : f) {
    const double wavelen = 2 * kPi / x;
    if (wavelen < high_wavelen) continue;  // high frequency: unchanged
    if (wavelen > low_wavelen) {
      x = x / rope.factor;  // low frequency: scaled
    } else {
      const double smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
      x = (1 - smooth) * x / rope.factor + smooth * x;
    }
  }
  return f;
}

struct Reference {
  int nb = 0;
  std::vector<double> scores;  // [Hq, nb, nb], causal part only meaningful
  std::vector<double> probs;  // [Hq, nb, nb], 0 above the diagonal
};

// The gate in float64, straight from docs/GATES.md. Angles are rounded to
// float32 as HF computes them (float(pos) * float(inv_freq)); everything else
// is exact double arithmetic.
// `rope_stride` is the position step between blocks (the block size in the
// design; tests pass 1 to model the block-index mistake).
Reference ReferenceGate(const GateLayerWeights& w, const GateConfig& gc, const ModelConfig& m,
                        const std::vector<float>& q, const std::vector<float>& k, int L, int rope_stride = -1) {
  const int hq = m.num_heads, hkv = m.num_kv_heads, d = m.head_dim, hid = gc.hidden, bs = gc.block_size;
  const int nb = (L + bs - 1) / bs;
  const int group = hq / hkv;
  const bool has_q = !w.q_weight.empty();
  const int k_heads = static_cast<int>(w.k_weight.size() / (size_t(3) * d * hid));
  Reference r;
  r.nb = nb;
  // Pool.
  std::vector<double> pq(size_t(nb) * hq * d), pk(size_t(nb) * hkv * 3 * d);
  for (int b = 0; b < nb; ++b) {
    const int t0 = b * bs, t1 = std::min(L, t0 + bs);
    for (int h = 0; h < hq; ++h)
      for (int c = 0; c < d; ++c) {
        double s = 0;
        for (int t = t0; t < t1; ++t) s += q[(size_t(t) * hq + h) * d + c];
        pq[(size_t(b) * hq + h) * d + c] = s / (t1 - t0);
      }
    for (int h = 0; h < hkv; ++h)
      for (int c = 0; c < d; ++c) {
        double mx = -INFINITY, mn = INFINITY, s = 0;
        for (int t = t0; t < t1; ++t) {
          const double v = k[(size_t(t) * hkv + h) * d + c];
          mx = std::max(mx, v);
          mn = std::min(mn, v);
          s += v;
        }
        double* o = &pk[(size_t(b) * hkv + h) * 3 * d];
        o[c] = mx;
        o[d + c] = mn;
        o[2 * d + c] = s / (t1 - t0);
      }
  }
  // Repeat K to the Q heads, then x . W per head.
  std::vector<double> qp(size_t(nb) * hq * hid), kp(size_t(nb) * hq * hid);
  for (int b = 0; b < nb; ++b)
    for (int h = 0; h < hq; ++h) {
      const double* kx = &pk[(size_t(b) * hkv + h / group) * 3 * d];
      const int wk = k_heads == hq ? h : h / group;
      for (int o = 0; o < hid; ++o) {
        double s = 0;
        for (int i = 0; i < 3 * d; ++i) s += kx[i] * w.k_weight[(size_t(wk) * 3 * d + i) * hid + o];
        kp[(size_t(b) * hq + h) * hid + o] = s;
      }
      const double* qx = &pq[(size_t(b) * hq + h) * d];
      for (int o = 0; o < hid; ++o) {
        if (!has_q) {
          qp[(size_t(b) * hq + h) * hid + o] = qx[o];
          continue;
        }
        double s = 0;
        for (int i = 0; i < d; ++i) s += qx[i] * w.q_weight[(size_t(h) * d + i) * hid + o];
        qp[(size_t(b) * hq + h) * hid + o] = s;
      }
    }
  // Block RoPE at the first token of each block, rotate_half layout.
  const std::vector<double> inv = ReferenceInvFreq(m.rope, hid);
  const int half = hid / 2;
  for (int b = 0; b < nb; ++b) {
    for (int i = 0; i < half; ++i) {
      const double angle = double(float(b * (rope_stride < 0 ? bs : rope_stride)) * float(inv[i]));
      const double c = std::cos(angle), s = std::sin(angle);
      for (int h = 0; h < hq; ++h) {
        for (std::vector<double>* v : {&qp, &kp}) {
          double* x = &(*v)[(size_t(b) * hq + h) * hid];
          const double x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c - x2 * s;
          x[i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
  // Scores and softmax over the causal blocks.
  r.scores.assign(size_t(hq) * nb * nb, 0.0);
  r.probs.assign(size_t(hq) * nb * nb, 0.0);
  for (int h = 0; h < hq; ++h)
    for (int i = 0; i < nb; ++i) {
      double* srow = &r.scores[(size_t(h) * nb + i) * nb];
      double* prow = &r.probs[(size_t(h) * nb + i) * nb];
      double mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        double s = 0;
        for (int c = 0; c < hid; ++c) s += qp[(size_t(i) * hq + h) * hid + c] * kp[(size_t(j) * hq + h) * hid + c];
        srow[j] = s / std::sqrt(double(hid));
        mx = std::max(mx, srow[j]);
      }
      double sum = 0;
      for (int j = 0; j <= i; ++j) sum += std::exp(srow[j] - mx);
      for (int j = 0; j <= i; ++j) prow[j] = std::exp(srow[j] - mx) / sum;
    }
  return r;
}

int TopK(double nz_ratio, int nb) {
  int k = static_cast<int>((1.0 - std::sqrt(1.0 - nz_ratio)) * nb);
  return k == 0 ? 1 : k;
}

// The mask the reference selects. Blocks whose decision sits within `eps` of
// the boundary are reported in `ambiguous` (1) and may differ.
std::vector<uint8_t> ReferenceMask(const Reference& r, int hq, const SparsityConfig& sp, double eps,
                                   std::vector<uint8_t>* ambiguous) {
  const int nb = r.nb;
  std::vector<uint8_t> keep(size_t(hq) * nb * nb, 0);
  ambiguous->assign(keep.size(), 0);
  for (int h = 0; h < hq; ++h)
    for (int i = 0; i < nb; ++i) {
      const size_t row = (size_t(h) * nb + i) * nb;
      const bool dense_row = sp.mode == SparsityMode::kDense || (sp.last_block_dense && i >= nb - 2);
      if (dense_row) {
        for (int j = 0; j <= i; ++j) keep[row + j] = 1;
      } else if (sp.mode == SparsityMode::kThreshold) {
        for (int j = 0; j <= i; ++j) {
          keep[row + j] = r.probs[row + j] > sp.threshold;
          if (std::abs(r.probs[row + j] - sp.threshold) < eps) (*ambiguous)[row + j] = 1;
        }
      } else {
        std::vector<double> s(r.scores.begin() + row, r.scores.begin() + row + i + 1);
        std::vector<double> sorted = s;
        std::sort(sorted.rbegin(), sorted.rend());
        const int k = std::min(TopK(sp.nz_ratio, nb), i + 1);
        const double kth = sorted[k - 1];
        const double next = k < i + 1 ? sorted[k] : -INFINITY;
        for (int j = 0; j <= i; ++j) {
          keep[row + j] = s[j] >= kth;
          // A block near the cut may swap with its neighbour across it.
          if (std::abs(kth - next) < eps && (std::abs(s[j] - kth) < eps || std::abs(s[j] - next) < eps))
            (*ambiguous)[row + j] = 1;
        }
      }
      bool any = false;
      for (int j = 0; j <= i; ++j) any |= keep[row + j] != 0;
      if (!any) keep[row + i] = 1;
    }
  return keep;
}

struct Case {
  int hq, hkv, d, L;
  bool llama3;
};

std::vector<float> Random(size_t n, std::mt19937& rng, double stddev, double mean = 0.0) {
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(dist(rng));
  return v;
}

struct Inputs {
  ModelConfig model;
  GateConfig gc;
  GateLayerWeights w;
  std::vector<float> q, k;
};

Inputs MakeInputs(const Case& c, uint32_t seed, int hidden = 0, bool with_q = false, bool k_per_kv_head = false) {
  std::mt19937 rng(seed);
  Inputs in;
  in.model = MakeModel(c.hq, c.hkv, c.d, c.llama3);
  in.gc.hidden = hidden ? hidden : c.d;
  const int kh = k_per_kv_head ? c.hkv : c.hq;
  // Weights scaled so that gate scores are O(1), as trained gates give.
  in.w.k_weight = Random(size_t(kh) * 3 * c.d * in.gc.hidden, rng, 1.0 / std::sqrt(3.0 * c.d));
  if (with_q) {
    in.w.q_in = c.d;
    in.w.q_weight = Random(size_t(c.hq) * c.d * in.gc.hidden, rng, 1.0 / std::sqrt(double(c.d)));
  }
  // A shared offset per channel, as real Q/K have, keeps pooled values away from 0.
  in.q = Random(size_t(c.L) * c.hq * c.d, rng, 1.0, 0.3);
  in.k = Random(size_t(c.L) * c.hkv * c.d, rng, 1.0, -0.2);
  return in;
}

void ExpectMatchesReference(const Inputs& in, int L, const SparsityConfig& sp, const std::string& what) {
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), L, sp);
  ASSERT_TRUE(out.ok()) << what << ": " << out.status().ToString();
  const Reference ref = ReferenceGate(in.w, in.gc, in.model, in.q, in.k, L);
  const int hq = in.model.num_heads, nb = ref.nb;
  ASSERT_EQ(out->mask.num_blocks, nb) << what;
  ASSERT_EQ(out->mask.num_heads, hq) << what;
  ASSERT_EQ(out->mask.seq_len, L) << what;
  ASSERT_EQ(out->probs.size(), size_t(hq) * nb * nb) << what;

  double max_err = 0;
  for (size_t i = 0; i < ref.probs.size(); ++i) max_err = std::max(max_err, std::abs(ref.probs[i] - out->probs[i]));
  EXPECT_LT(max_err, 2e-5) << what << ": gate probabilities differ from the float64 reference";

  std::vector<uint8_t> ambiguous;
  const std::vector<uint8_t> expected = ReferenceMask(ref, hq, sp, 2e-5, &ambiguous);
  int differ = 0, ambiguous_count = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    ambiguous_count += ambiguous[i];
    if (ambiguous[i]) continue;
    if (expected[i] != out->mask.keep[i]) {
      if (++differ <= 5) {
        const size_t h = i / (size_t(nb) * nb), qb = i / nb % nb, kb = i % nb;
        ADD_FAILURE() << what << ": block (h " << h << ", q " << qb << ", k " << kb << ") expected " << int(expected[i])
                      << " p_ref " << ref.probs[i] << " s_ref " << ref.scores[i];
      }
    }
  }
  EXPECT_EQ(differ, 0) << what;
  EXPECT_LE(ambiguous_count, int(expected.size() / 100) + 1) << what << ": too many boundary blocks to be a test";
}

TEST(RunGate, MatchesFloat64ReferenceAcrossShapes) {
  const Case cases[] = {
      {4, 4, 64, 333, false},  // MHA, partial last block (13 tokens)
      {8, 2, 64, 1000, true},  // GQA 4, llama3 rope
      {8, 1, 128, 700, true},  // GQA 8, head_dim 128
      {4, 1, 64, 37, false},  // L < 64: one partial block
      {2, 2, 128, 1, true},  // a single token
      {4, 2, 64, 640, false},  // exact multiple of 64
      {2, 1, 64, 2049, true},  // 33 blocks, the last holding 1 token
  };
  std::vector<SparsityConfig> modes;
  for (const char* text :
       {"dense", "threshold=0", "threshold=0.002", "threshold=0.05", "threshold=0.3", "nz_ratio=0.1", "nz_ratio=0.5",
        "nz_ratio=1", "threshold=0.05;last_block_dense=false", "nz_ratio=0.3;last_block_dense=false"}) {
    auto sp = ParseSparsity(text);
    ASSERT_TRUE(sp.ok());
    modes.push_back(*sp);
  }
  uint32_t seed = 1;
  for (const Case& c : cases) {
    const Inputs in = MakeInputs(c, seed++);
    for (const SparsityConfig& sp : modes) {
      ExpectMatchesReference(in, c.L, sp,
                             "Hq " + std::to_string(c.hq) + " Hkv " + std::to_string(c.hkv) + " D " +
                                 std::to_string(c.d) + " L " + std::to_string(c.L) + " " + SparsityToString(sp) +
                                 (sp.last_block_dense ? "" : " lbd=false"));
    }
  }
}

TEST(RunGate, WithMaskLinearQ) {
  // The general form: mask_linear_q present and hidden != head_dim, with
  // mask_linear_k per Q head and (force_double) per KV head.
  SparsityConfig sp;
  sp.mode = SparsityMode::kNzRatio;
  sp.nz_ratio = 0.4;
  const Case c{8, 2, 64, 900, true};
  ExpectMatchesReference(MakeInputs(c, 11, /*hidden=*/32, /*with_q=*/true), c.L, sp, "q linear, k per q head");
  ExpectMatchesReference(MakeInputs(c, 12, 32, true, /*k_per_kv_head=*/true), c.L, sp, "q linear, k per kv head");
  sp.mode = SparsityMode::kThreshold;
  sp.threshold = 0.01;
  ExpectMatchesReference(MakeInputs(c, 13, 96, true), c.L, sp, "q linear, hidden 96");
}

TEST(RunGate, UsesTokenPositionsForBlockRope) {
  // Block b is rotated to position b * 64, not b. A reference that uses the
  // block index (or no rope at all) must disagree with RunGate.
  const Case c{2, 2, 64, 640, false};
  Inputs in = MakeInputs(c, 5);
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), c.L, SparsityConfig{});
  ASSERT_TRUE(out.ok());
  auto max_err = [&](const Reference& r) {
    double e = 0;
    for (size_t i = 0; i < r.probs.size(); ++i) e = std::max(e, std::abs(r.probs[i] - out->probs[i]));
    return e;
  };
  EXPECT_LT(max_err(ReferenceGate(in.w, in.gc, in.model, in.q, in.k, c.L)), 2e-5);
  EXPECT_GT(max_err(ReferenceGate(in.w, in.gc, in.model, in.q, in.k, c.L, /*rope_stride=*/1)), 1e-3);
  EXPECT_GT(max_err(ReferenceGate(in.w, in.gc, in.model, in.q, in.k, c.L, /*rope_stride=*/0)), 1e-3);
}

// With q = 0 every gate score is 0, so each row's softmax is uniform,
// 1 / (qb + 1), and every top-k is a tie. The answers follow by hand.
Inputs ZeroQueryInputs(int nb) {
  const Case c{2, 1, 64, nb * 64 - 10, false};
  Inputs in = MakeInputs(c, 3);
  std::fill(in.q.begin(), in.q.end(), 0.0f);
  return in;
}

TEST(RunGate, ThresholdOnUniformRowsIncludingTheBoundary) {
  const int nb = 8;
  Inputs in = ZeroQueryInputs(nb);
  SparsityConfig sp;
  sp.mode = SparsityMode::kThreshold;
  sp.threshold = 0.2;  // row qb has p = 1/(qb+1): kept for qb <= 3; at qb = 4, p == 0.2 is not > 0.2
  sp.last_block_dense = false;
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), nb * 64 - 10, sp);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  for (int h = 0; h < 2; ++h)
    for (int qb = 0; qb < nb; ++qb)
      for (int kb = 0; kb < nb; ++kb) {
        EXPECT_FLOAT_EQ(out->probs[(size_t(h) * nb + qb) * nb + kb], kb <= qb ? 1.0f / (qb + 1) : 0.0f);
        // Rows 4..7 keep nothing, so the non-empty-row rule keeps the diagonal.
        const bool want = qb <= 3 ? kb <= qb : kb == qb;
        EXPECT_EQ(out->mask.at(h, qb, kb), want) << "h " << h << " qb " << qb << " kb " << kb;
      }
  // Kept: rows 0..3 hold 1+2+3+4 = 10 blocks, rows 4..7 one each: 14 of 36 per head.
  EXPECT_EQ(out->mask.kept(), 2 * 14);
  EXPECT_EQ(out->mask.causal_blocks(), 2 * 36);
  EXPECT_DOUBLE_EQ(out->mask.density(), 14.0 / 36.0);
}

TEST(RunGate, LastBlockDenseRows) {
  const int nb = 8;
  Inputs in = ZeroQueryInputs(nb);
  SparsityConfig sp;
  sp.mode = SparsityMode::kThreshold;
  sp.threshold = 0.9;  // keeps only row 0 (p = 1)
  sp.last_block_dense = true;
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), nb * 64 - 10, sp);
  ASSERT_TRUE(out.ok());
  for (int h = 0; h < 2; ++h)
    for (int qb = 0; qb < nb; ++qb)
      for (int kb = 0; kb < nb; ++kb) {
        bool want = kb == qb;  // diagonal rule on rows 1..5, p = 1 on row 0
        if (qb >= nb - 2) want = kb <= qb;  // the last two rows are dense, causal part only
        EXPECT_EQ(out->mask.at(h, qb, kb), want) << "h " << h << " qb " << qb << " kb " << kb;
      }
  EXPECT_EQ(out->mask.kept(), 2 * (6 + 7 + 8));
}

TEST(RunGate, NzRatioTopKFormulaAndTieRule) {
  // k = max(1, int((1 - sqrt(1 - r)) * nb)) for nb = 10, worked out by hand:
  //   r = 0.1  -> 0.0513 * 10 = 0.51 -> 0 -> 1
  //   r = 0.5  -> 0.2929 * 10 = 2.93 -> 2
  //   r = 0.75 -> 0.5 * 10 = 5
  //   r = 0.99 -> 0.9 * 10 = 9
  //   r = 1    -> 10
  const int nb = 10;
  Inputs in = ZeroQueryInputs(nb);
  const std::pair<double, int> cases[] = {{0.1, 1}, {0.5, 2}, {0.75, 5}, {0.99, 9}, {1.0, 10}};
  for (auto [r, k] : cases) {
    SparsityConfig sp;
    sp.mode = SparsityMode::kNzRatio;
    sp.nz_ratio = r;
    sp.last_block_dense = false;
    auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), nb * 64 - 10, sp);
    ASSERT_TRUE(out.ok());
    int64_t kept = 0;
    for (int h = 0; h < 2; ++h)
      for (int qb = 0; qb < nb; ++qb) {
        // All scores tie: the lowest block indices win.
        for (int kb = 0; kb < nb; ++kb)
          EXPECT_EQ(out->mask.at(h, qb, kb), kb < std::min(k, qb + 1)) << "r " << r << " qb " << qb << " kb " << kb;
        kept += std::min(k, qb + 1);
      }
    EXPECT_EQ(out->mask.kept(), kept) << "r " << r;
  }
}

TEST(RunGate, NzRatioKeepsTheHighestScores) {
  // Random scores, k = 3 of nb = 16 (r = 0.36 -> 0.2 * 16 = 3.2 -> 3): every
  // row past the first three keeps exactly 3 blocks, the ones the float64
  // reference ranks highest.
  const Case c{4, 2, 64, 16 * 64, true};
  Inputs in = MakeInputs(c, 21);
  SparsityConfig sp;
  sp.mode = SparsityMode::kNzRatio;
  sp.nz_ratio = 0.36;
  sp.last_block_dense = false;
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), c.L, sp);
  ASSERT_TRUE(out.ok());
  const Reference ref = ReferenceGate(in.w, in.gc, in.model, in.q, in.k, c.L);
  for (int h = 0; h < 4; ++h)
    for (int qb = 0; qb < 16; ++qb) {
      int kept = 0;
      double min_kept = INFINITY, max_dropped = -INFINITY;
      for (int kb = 0; kb <= qb; ++kb) {
        const double s = ref.scores[(size_t(h) * 16 + qb) * 16 + kb];
        if (out->mask.at(h, qb, kb)) {
          ++kept;
          min_kept = std::min(min_kept, s);
        } else {
          max_dropped = std::max(max_dropped, s);
        }
      }
      EXPECT_EQ(kept, std::min(3, qb + 1)) << "h " << h << " qb " << qb;
      EXPECT_GT(min_kept, max_dropped - 1e-5) << "h " << h << " qb " << qb;
    }
}

TEST(RunGate, DenseKeepsEveryCausalBlock) {
  const Case c{4, 1, 64, 500, false};
  Inputs in = MakeInputs(c, 8);
  auto out = RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), c.L, SparsityConfig{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->mask.keep, BlockMask::Dense(4, 500, 64).keep);
  EXPECT_DOUBLE_EQ(out->mask.density(), 1.0);
  // Each row of probabilities sums to 1.
  const int nb = out->mask.num_blocks;
  for (int h = 0; h < 4; ++h)
    for (int qb = 0; qb < nb; ++qb) {
      double s = 0;
      for (int kb = 0; kb < nb; ++kb) s += out->probs[(size_t(h) * nb + qb) * nb + kb];
      EXPECT_NEAR(s, 1.0, 1e-5);
    }
}

TEST(RunGate, EmptyPrompt) {
  const Case c{2, 1, 64, 0, false};
  Inputs in = MakeInputs(c, 1);
  auto out = RunGate(in.w, in.gc, in.model, nullptr, nullptr, 0, SparsityConfig{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->mask.num_blocks, 0);
  EXPECT_TRUE(out->probs.empty());
}

TEST(RunGate, RejectsBadInputsWithMessages) {
  const Case c{4, 2, 64, 100, false};
  const Inputs good = MakeInputs(c, 2);
  auto run = [&](const Inputs& in, int L = 100) {
    return RunGate(in.w, in.gc, in.model, in.q.data(), in.k.data(), L, SparsityConfig{}).status();
  };
  ASSERT_TRUE(run(good).ok());

  Inputs bad = good;
  bad.w.k_weight.pop_back();
  Status s = run(bad);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("[4, 192, 64]"), std::string::npos) << s.message();

  bad = good;
  bad.gc.gate_type = "Qavg_Kmaxmin";
  s = run(bad);
  EXPECT_NE(s.message().find("Qavg_Kmaxmin'"), std::string::npos) << s.message();

  bad = good;
  bad.gc.hidden = 32;  // no mask_linear_q, so hidden must equal head_dim
  bad.w.k_weight.resize(size_t(4) * 192 * 32);
  s = run(bad);
  EXPECT_NE(s.message().find("hidden size 32"), std::string::npos) << s.message();

  bad = good;
  bad.w.q_in = 64;
  bad.w.q_weight.assign(10, 0.0f);
  s = run(bad);
  EXPECT_NE(s.message().find("mask_linear_q"), std::string::npos) << s.message();

  bad = good;
  bad.model.num_kv_heads = 3;
  EXPECT_FALSE(run(bad).ok());

  s = run(good, -1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);

  // Huge prompts are refused before any allocation of [Hq, nb, nb].
  s = RunGate(good.w, good.gc, good.model, good.q.data(), good.k.data(), 2000000000, SparsityConfig{}).status();
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
}

}  // namespace
}  // namespace seer
