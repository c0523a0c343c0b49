// train/gate_grad: the loss against its definition computed here from the
// forward probabilities, the gradient against central finite differences of
// the loss in float64 (every weight), and the forward against the inference
// gate RunGate (engine/model/gates.h, itself checked against a float64
// reference in engine/model/gate_run_test.cc), so that what is trained is
// what runs.

#include "train/gate_grad.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/model/gates.h"
#include "train/gate_grad_test_util.h"

namespace seer::train {
namespace {

using gate_test::MakeProblem;
using gate_test::Problem;

struct Case {
  const char* name;
  int hq, hkv, d, hidden;
  bool k_per_kv_head;
  int L;
  bool llama3;
};

const Case kCases[] = {
    {"released form, GQA 2, partial block", 4, 2, 8, 8, false, 333, false},
    {"released form, MHA, 9 blocks", 2, 2, 6, 6, false, 64 * 9, true},
    {"mask_linear_q, hidden 6", 4, 2, 8, 6, false, 300, true},
    {"double form: k per KV head", 4, 2, 8, 10, true, 400, false},
};

// The loss of docs: mean over the [Hq, nb - nb/4, nb] tensor of
// target * (log target - log p), with 0 * log 0 = 0.
double LossByDefinition(const Problem& p) {
  const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
  const std::vector<double> probs = GateProbs(p.shape, f, p.w, 1);
  const int nb = f.num_blocks, hq = p.shape.num_heads, first = nb / 4;
  double sum = 0;
  for (int h = 0; h < hq; ++h)
    for (int i = first; i < nb; ++i)
      for (int j = 0; j < nb; ++j) {
        const size_t at = (size_t(h) * nb + i) * nb + j;
        if (p.target[at] > 0) sum += p.target[at] * (std::log(double(p.target[at])) - std::log(probs[at]));
      }
  return sum / (double(hq) * (nb - first) * nb);
}

TEST(GateLoss, MatchesTheDefinition) {
  for (const Case& c : kCases) {
    const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, c.L, c.llama3, 7);
    const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
    const double loss = GateLoss(p.shape, f, p.target.data(), p.w, nullptr, 1.0, 2);
    const double want = LossByDefinition(p);
    EXPECT_GT(want, 1e-3) << c.name << ": a test needs a loss well above 0";
    EXPECT_NEAR(loss, want, 1e-12 * std::max(1.0, want)) << c.name;
  }
}

TEST(GateLoss, GradientMatchesFiniteDifferences) {
  for (const Case& c : kCases) {
    const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, c.L, c.llama3, 11);
    const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
    const double scale = 3.0;  // grad_scale multiplies the gradient, not the loss
    GateParams grad;
    grad.k.assign(p.w.k.size(), 0.0);
    grad.q.assign(p.w.q.size(), 0.0);
    GateLoss(p.shape, f, p.target.data(), p.w, &grad, scale, 3);

    const double h = 1e-6;
    double worst = 0, largest = 0;
    int checked = 0;
    for (std::vector<double>* part : {&grad.k, &grad.q}) {
      const bool is_k = part == &grad.k;
      for (size_t i = 0; i < part->size(); ++i) {
        GateParams plus = p.w, minus = p.w;
        (is_k ? plus.k : plus.q)[i] += h;
        (is_k ? minus.k : minus.q)[i] -= h;
        const double fd = (GateLoss(p.shape, f, p.target.data(), plus, nullptr, 1.0, 1) -
                           GateLoss(p.shape, f, p.target.data(), minus, nullptr, 1.0, 1)) /
                          (2 * h);
        worst = std::max(worst, std::abs((*part)[i] / scale - fd));
        largest = std::max(largest, std::abs(fd));
        ++checked;
      }
    }
    EXPECT_EQ(checked, int(p.shape.k_weight_size() + p.shape.q_weight_size())) << c.name;
    EXPECT_GT(largest, 1e-4) << c.name << ": the gradient must not vanish for the test to mean anything";
    EXPECT_LT(worst, 1e-6 * largest) << c.name << ": worst |analytic - finite difference| " << worst
                                     << " of a largest component " << largest;
  }
}

TEST(GateLoss, AddsIntoTheGradientAndIgnoresTheThreadCount) {
  const Case& c = kCases[0];
  const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, c.L, c.llama3, 3);
  const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
  const GateFeatures f4 = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq, 4);
  EXPECT_EQ(f.q, f4.q);  // pooling per block on several threads: the same sums
  EXPECT_EQ(f.k, f4.k);
  GateParams one_thread, four_threads;
  one_thread.k.assign(p.w.k.size(), 0.0);
  four_threads.k.assign(p.w.k.size(), 0.0);
  const double l1 = GateLoss(p.shape, f, p.target.data(), p.w, &one_thread, 1.0, 1);
  const double l4 = GateLoss(p.shape, f, p.target.data(), p.w, &four_threads, 1.0, 4);
  EXPECT_EQ(l1, l4);
  EXPECT_EQ(one_thread.k, four_threads.k);  // bit for bit: a resumed run must not depend on the machine
  // A second call adds its gradient to what is there (a batch's sequences).
  GateLoss(p.shape, f, p.target.data(), p.w, &four_threads, 1.0, 3);
  double largest = 0;
  for (double g : one_thread.k) largest = std::max(largest, std::abs(g));
  ASSERT_GT(largest, 0.0);
  for (size_t i = 0; i < one_thread.k.size(); ++i) {
    ASSERT_NEAR(2 * one_thread.k[i], four_threads.k[i], 1e-12 * largest) << i;  // summation order only
  }
}

// The trainer's forward is the inference gate's: the same weights (rounded
// to float32 for RunGate) give the same probabilities.
TEST(GateProbs, EqualTheInferenceGate) {
  for (const Case& c : kCases) {
    Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, c.L, c.llama3, 5);
    GateLayerWeights lw;
    for (double x : p.w.k) lw.k_weight.push_back(static_cast<float>(x));
    for (double x : p.w.q) lw.q_weight.push_back(static_cast<float>(x));
    lw.q_in = p.w.q.empty() ? 0 : c.d;
    for (size_t i = 0; i < p.w.k.size(); ++i) p.w.k[i] = lw.k_weight[i];
    for (size_t i = 0; i < p.w.q.size(); ++i) p.w.q[i] = lw.q_weight[i];
    GateConfig gc;
    gc.hidden = c.hidden;
    auto out = RunGate(lw, gc, p.model, p.q.data(), p.k.data(), p.L, SparsityConfig{});
    ASSERT_TRUE(out.ok()) << c.name << ": " << out.status().ToString();
    const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
    const std::vector<double> probs = GateProbs(p.shape, f, p.w, 2);
    ASSERT_EQ(probs.size(), out->probs.size()) << c.name;
    double worst = 0;
    for (size_t i = 0; i < probs.size(); ++i) worst = std::max(worst, std::abs(probs[i] - out->probs[i]));
    EXPECT_LT(worst, 2e-5) << c.name;
  }
}

}  // namespace
}  // namespace seer::train
