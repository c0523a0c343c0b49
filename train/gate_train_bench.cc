// seer-gate-train-bench: the CPU cost of one layer's gate training step at a
// model's attention shape, on random Q/K (no model): the distillation target
// (one QK^T pass over the causal block triangle), the pooling and the gate's
// float64 forward and backward. Prints a table; the frozen model's own
// forward pass is not included (it is the engine's prefill). The shapes
// default to Llama-3.1-8B's (32 / 8 heads of 128, gate hidden 128).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/flags.h"
#include "engine/model/model_config.h"
#include "kernels/gate/distill_target_cpu.h"
#include "train/gate_grad.h"

int main(int argc, char** argv) {
  using namespace seer;
  int64_t heads = 32, kv_heads = 8, head_dim = 128, threads = 0, repeats = 2;
  std::string lengths = "2048,4096,8192";
  FlagSet flags("seer-gate-train-bench [flags]",
                "CPU time of one layer's gate distillation step (target, pooling, gate forward and backward) "
                "on random Q/K.");
  flags.Int("heads", &heads, "Q heads.");
  flags.Int("kv-heads", &kv_heads, "KV heads.");
  flags.Int("head-dim", &head_dim, "Head dim (and gate hidden size).");
  flags.String("lengths", &lengths, "Sequence lengths, comma-separated.");
  flags.Int("threads", &threads, "CPU threads; 0 uses every core.");
  flags.Int("repeats", &repeats, "Timed repeats per length (the best is shown).");
  if (Status s = flags.Parse(argc, argv, 1); !s.ok() || flags.help_requested()) {
    std::fputs(s.ok() ? flags.Help().c_str() : (s.message() + "\n").c_str(), s.ok() ? stdout : stderr);
    return s.ok() ? 0 : 2;
  }
  const int nthreads = threads > 0 ? static_cast<int>(threads) : static_cast<int>(std::thread::hardware_concurrency());
  train::GateShape shape;
  shape.num_heads = static_cast<int>(heads);
  shape.num_kv_heads = static_cast<int>(kv_heads);
  shape.head_dim = shape.hidden = static_cast<int>(head_dim);
  shape.k_weight_heads = shape.num_heads;
  RopeConfig rope;
  rope.theta = 500000.0;
  std::vector<float> inv;
  for (double f : RopeInvFreq(rope, shape.hidden)) inv.push_back(static_cast<float>(f));
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  train::GateParams w, grad;
  w.k.resize(shape.k_weight_size());
  for (double& x : w.k) x = 0.01 * dist(rng);
  std::printf("heads %d/%d, head_dim %d, %d threads\n\n", shape.num_heads, shape.num_kv_heads, shape.head_dim,
              nthreads);
  std::printf("| tokens | target ms | pool ms | gate fwd+bwd ms | layer ms | tokens/s per layer |\n");
  std::printf("|---|---|---|---|---|---|\n");
  size_t pos = 0;
  while (pos < lengths.size()) {
    const size_t comma = lengths.find(',', pos);
    const int L = std::stoi(lengths.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos));
    pos = comma == std::string::npos ? lengths.size() : comma + 1;
    std::vector<float> q(size_t(L) * heads * head_dim), k(size_t(L) * kv_heads * head_dim);
    for (float& x : q) x = dist(rng);
    for (float& x : k) x = dist(rng);
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = 0; r < repeats; ++r) {
      Clock::time_point t0 = Clock::now();
      cpu::DistillTargetProblem p{
          q.data(),           k.data(),       L,  shape.num_heads,
          shape.num_kv_heads, shape.head_dim, 64, static_cast<float>(1.0 / std::sqrt(double(head_dim)))};
      const std::vector<float> target = cpu::DistillTarget(p, nthreads);
      Clock::time_point t1 = Clock::now();
      const train::GateFeatures f = train::PoolGateFeatures(shape, q.data(), k.data(), L, inv);
      Clock::time_point t2 = Clock::now();
      grad.k.assign(w.k.size(), 0.0);
      train::GateLoss(shape, f, target.data(), w, &grad, 1.0, nthreads);
      Clock::time_point t3 = Clock::now();
      const double s[3] = {SecondsBetween(t0, t1), SecondsBetween(t1, t2), SecondsBetween(t2, t3)};
      for (int i = 0; i < 3; ++i) best[i] = std::min(best[i], s[i]);
    }
    const double layer = best[0] + best[1] + best[2];
    std::printf("| %d | %.1f | %.1f | %.1f | %.1f | %.0f |\n", L, best[0] * 1e3, best[1] * 1e3, best[2] * 1e3,
                layer * 1e3, L / layer);
  }
  return 0;
}
