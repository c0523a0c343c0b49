// GateLossCuda against its CPU twin GateLoss (train/gate_grad.cc, itself
// checked against the loss's definition and finite differences in
// gate_grad_test.cc): every gate form at block counts from 1 to 33, the 8B
// shape, heads in chunks; the gradient added into what is there, repeated
// calls bit for bit, the loss alone. Both are float64 in different summation
// orders: the loss agrees to 1e-12 relative (1e-15 absolute where it is
// 0), every gradient element to 1e-10 of the gradient's largest. Prints the
// time of one call at the 8B shape and 32k tokens beside GateLoss on every
// host thread. Skips without a GPU.

#include "train/gate_grad_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "kernels/common/gpu_test_util.h"
#include "train/gate_grad.h"
#include "train/gate_grad_test_util.h"

namespace seer::train {
namespace {

using gate_test::MakeProblem;
using gate_test::Problem;

#define SKIP_WITHOUT_GPU()                             \
  do {                                                 \
    std::string why;                                   \
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << why; \
  } while (0)

struct Form {
  const char* name;
  int hq, hkv, d, hidden;
  bool k_per_kv_head;
  bool llama3;
};

const Form kForms[] = {
    {"released form, GQA 2", 4, 2, 8, 8, false, false},
    {"released form, MHA", 2, 2, 6, 6, false, true},
    {"mask_linear_q, hidden 6", 4, 2, 8, 6, false, true},
    {"double form: k per KV head", 4, 2, 8, 10, true, false},
};
const int kBlockCounts[] = {1, 2, 3, 7, 33};

// nb blocks of tokens, the last one partial when nb is odd.
int Tokens(int nb) { return nb % 2 == 1 ? nb * 64 - 17 : nb * 64; }

int HostThreads() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

GateParams Zeros(const GateShape& s) {
  GateParams g;
  g.k.assign(s.k_weight_size(), 0.0);
  g.q.assign(s.q_weight_size(), 0.0);
  return g;
}

std::unique_ptr<GateLossCuda> MakeGpu(size_t score_scratch_bytes = GateLossCuda::kDefaultScoreScratchBytes) {
  auto gpu = GateLossCuda::Create(0, score_scratch_bytes);
  EXPECT_TRUE(gpu.ok()) << gpu.status().ToString();
  return gpu.ok() ? std::move(*gpu) : nullptr;
}

void ExpectGradientsMatch(const std::string& what, const std::vector<double>& want, const std::vector<double>& got) {
  ASSERT_EQ(want.size(), got.size()) << what;
  double largest = 0, worst = 0;
  size_t worst_at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    largest = std::max(largest, std::abs(want[i]));
    const double diff = std::abs(got[i] - want[i]);
    if (!(diff <= worst)) worst = diff, worst_at = i;  // a NaN counts as the worst
  }
  EXPECT_LE(worst, 1e-10 * largest) << what << ": element " << worst_at << " is " << got[worst_at] << ", GateLoss's "
                                    << want[worst_at] << " (the largest component is " << largest << ")";
}

// GateLossCuda and GateLoss on one problem, the gradients from zero.
void ExpectMatchesGateLoss(const std::string& what, const Problem& p, GateLossCuda* gpu, double grad_scale,
                           bool want_signal) {
  const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq, HostThreads());
  GateParams want = Zeros(p.shape), got = Zeros(p.shape);
  const double want_loss = GateLoss(p.shape, f, p.target.data(), p.w, &want, grad_scale, HostThreads());
  const StatusOr<double> loss = gpu->Loss(p.shape, f, p.target.data(), p.w, &got, grad_scale);
  ASSERT_TRUE(loss.ok()) << what << ": " << loss.status().ToString();
  // An absolute floor too: with one block (nb 1) the loss is exactly 0 on
  // the CPU, and the GPU's fused multiply-adds leave a residue of ~1e-17 in
  // its log-sum-exp.
  EXPECT_LE(std::abs(*loss - want_loss), 1e-12 * std::abs(want_loss) + 1e-15)
      << what << ": loss " << *loss << ", GateLoss's " << want_loss;
  if (want_signal) {
    EXPECT_GT(want_loss, 1e-4) << what << ": a test needs a loss well above 0";
    double largest = 0;
    for (double g : want.k) largest = std::max(largest, std::abs(g));
    EXPECT_GT(largest, 0.0) << what << ": a test needs a gradient";
  }
  ExpectGradientsMatch(what + ", dWk", want.k, got.k);
  ExpectGradientsMatch(what + ", dWq", want.q, got.q);
}

TEST(GateLossCuda, MatchesGateLossForEveryFormAndBlockCount) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<GateLossCuda> gpu = MakeGpu();
  ASSERT_NE(gpu, nullptr);
  for (const Form& c : kForms) {
    for (int nb : kBlockCounts) {
      const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, Tokens(nb), c.llama3, 17 + nb);
      ExpectMatchesGateLoss(std::string(c.name) + ", nb " + std::to_string(nb), p, gpu.get(), 3.0, nb >= 7);
    }
  }
}

TEST(GateLossCuda, MatchesGateLossAtThe8BShape) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<GateLossCuda> gpu = MakeGpu();
  ASSERT_NE(gpu, nullptr);
  // Llama-3.1-8B's heads (32 / 8 of 128) at 4k tokens: the released gate,
  // and the double form at hidden 128 (mask_linear_k per KV head).
  for (bool per_kv_head : {false, true}) {
    const Problem p = MakeProblem(32, 8, 128, 128, per_kv_head, 64 * 64, true, 23);
    ExpectMatchesGateLoss(per_kv_head ? "8B shape, k per KV head" : "8B shape, released form", p, gpu.get(), 10.0,
                          true);
  }
}

TEST(GateLossCuda, HeadsInChunksMatchGateLoss) {
  SKIP_WITHOUT_GPU();
  // A scratch of one byte: one head per chunk.
  std::unique_ptr<GateLossCuda> gpu = MakeGpu(1);
  ASSERT_NE(gpu, nullptr);
  for (const Form& c : kForms) {
    const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, Tokens(33), c.llama3, 29);
    ExpectMatchesGateLoss(std::string(c.name) + ", one head per chunk", p, gpu.get(), 1.0, true);
  }
  const Problem p = MakeProblem(32, 8, 128, 128, false, 64 * 40, false, 31);
  ExpectMatchesGateLoss("8B shape, one head per chunk", p, gpu.get(), 1.0, true);
}

TEST(GateLossCuda, AddsIntoTheGradientRepeatsBitForBitAndComputesTheLossAlone) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<GateLossCuda> gpu = MakeGpu();
  ASSERT_NE(gpu, nullptr);
  for (const Form& c : kForms) {
    const Problem p = MakeProblem(c.hq, c.hkv, c.d, c.hidden, c.k_per_kv_head, Tokens(33), c.llama3, 37);
    const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
    GateParams first = Zeros(p.shape), second = Zeros(p.shape);
    const StatusOr<double> l1 = gpu->Loss(p.shape, f, p.target.data(), p.w, &first, 2.0);
    const StatusOr<double> l2 = gpu->Loss(p.shape, f, p.target.data(), p.w, &second, 2.0);
    ASSERT_TRUE(l1.ok() && l2.ok()) << c.name;
    EXPECT_EQ(*l1, *l2) << c.name;
    EXPECT_EQ(first.k, second.k) << c.name << ": repeated calls must be bit-identical";
    EXPECT_EQ(first.q, second.q) << c.name;

    // Into a gradient that holds something: the host adds the same device
    // result, so the sum is exact to the bit.
    GateParams held = Zeros(p.shape);
    std::mt19937 rng(41);
    std::normal_distribution<double> dist(0.0, 1e-3);
    for (double& x : held.k) x = dist(rng);
    for (double& x : held.q) x = dist(rng);
    GateParams added = held;
    const StatusOr<double> l3 = gpu->Loss(p.shape, f, p.target.data(), p.w, &added, 2.0);
    ASSERT_TRUE(l3.ok()) << c.name;
    EXPECT_EQ(*l3, *l1) << c.name;
    for (size_t i = 0; i < held.k.size(); ++i) ASSERT_EQ(added.k[i], held.k[i] + first.k[i]) << c.name << " k " << i;
    for (size_t i = 0; i < held.q.size(); ++i) ASSERT_EQ(added.q[i], held.q[i] + first.q[i]) << c.name << " q " << i;

    // The loss alone: the same number, nothing written.
    const StatusOr<double> l4 = gpu->Loss(p.shape, f, p.target.data(), p.w, nullptr, 2.0);
    ASSERT_TRUE(l4.ok()) << c.name;
    EXPECT_EQ(*l4, *l1) << c.name;
  }
}

TEST(GateLossCuda, RejectsMismatchedSizesAndTakesNoBlocks) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<GateLossCuda> gpu = MakeGpu();
  ASSERT_NE(gpu, nullptr);
  const Problem p = MakeProblem(4, 2, 8, 8, false, 300, false, 43);
  const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq);
  GateParams w = p.w;
  w.k.pop_back();
  const StatusOr<double> bad = gpu->Loss(p.shape, f, p.target.data(), w, nullptr, 1.0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument) << bad.status().ToString();
  GateParams grad = Zeros(p.shape);
  grad.q.push_back(0.0);
  const StatusOr<double> bad_grad = gpu->Loss(p.shape, f, p.target.data(), p.w, &grad, 1.0);
  EXPECT_EQ(bad_grad.status().code(), StatusCode::kInvalidArgument) << bad_grad.status().ToString();

  GateFeatures empty;
  const StatusOr<double> none = gpu->Loss(p.shape, empty, nullptr, p.w, nullptr, 1.0);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_EQ(*none, 0.0);
}

// Not a benchmark: one printed line of the trainer's per-layer cost at the
// 8B shape and 32k tokens (512 blocks), and the two agreeing there too.
TEST(GateLossCuda, PrintsTheTimeAtThe8BShapeAnd32kTokens) {
  SKIP_WITHOUT_GPU();
  std::unique_ptr<GateLossCuda> gpu = MakeGpu();
  ASSERT_NE(gpu, nullptr);
  const int threads = HostThreads();
  const Problem p = MakeProblem(32, 8, 128, 128, false, 512 * 64, true, 47);
  const GateFeatures f = PoolGateFeatures(p.shape, p.q.data(), p.k.data(), p.L, p.inv_freq, threads);

  GateParams want = Zeros(p.shape), got = Zeros(p.shape);
  Clock::time_point t0 = Clock::now();
  const double want_loss = GateLoss(p.shape, f, p.target.data(), p.w, &want, 1.0, threads);
  const double cpu_s = SecondsSince(t0);

  GateParams warm = Zeros(p.shape);
  ASSERT_TRUE(gpu->Loss(p.shape, f, p.target.data(), p.w, &warm, 1.0).ok());  // buffers and cuBLAS's plans
  t0 = Clock::now();
  const StatusOr<double> loss = gpu->Loss(p.shape, f, p.target.data(), p.w, &got, 1.0);
  const double gpu_s = SecondsSince(t0);
  ASSERT_TRUE(loss.ok()) << loss.status().ToString();
  t0 = Clock::now();
  const StatusOr<double> loss_only = gpu->Loss(p.shape, f, p.target.data(), p.w, nullptr, 1.0);
  const double gpu_loss_only_s = SecondsSince(t0);
  ASSERT_TRUE(loss_only.ok()) << loss_only.status().ToString();

  std::printf(
      "GateLoss, Hq 32 / Hkv 8, D 128, hidden 128, 512 blocks: CPU %.1f ms on %d threads; GPU %.2f ms "
      "(loss and gradient, copies included), %.2f ms (loss only)\n",
      cpu_s * 1e3, threads, gpu_s * 1e3, gpu_loss_only_s * 1e3);
  EXPECT_LE(std::abs(*loss - want_loss), 1e-12 * std::abs(want_loss)) << *loss << " vs " << want_loss;
  EXPECT_EQ(*loss_only, *loss);
  ExpectGradientsMatch("8B shape, 512 blocks, dWk", want.k, got.k);
}

}  // namespace
}  // namespace seer::train
