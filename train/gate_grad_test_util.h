// The random gate problems the gate_grad tests share (gate_grad_test.cc on
// the CPU, gate_grad_cuda_gpu_test.cc on the GPU): raw Q/K with a model's
// rope config, weights of trained-gate magnitude and a target shaped like the
// real one.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/model/gates.h"
#include "train/gate_grad.h"

namespace seer::train::gate_test {

struct Problem {
  ModelConfig model;
  GateShape shape;
  GateParams w;
  std::vector<float> q, k, target, inv_freq;
  int L = 0;
};

inline Problem MakeProblem(int hq, int hkv, int d, int hidden, bool k_per_kv_head, int L, bool llama3, uint32_t seed) {
  Problem p;
  p.L = L;
  p.model.num_heads = hq;
  p.model.num_kv_heads = hkv;
  p.model.head_dim = d;
  p.model.num_layers = 1;
  p.model.hidden_size = hq * d;
  if (llama3) {
    p.model.rope.theta = 500000.0;
    p.model.rope.type = "llama3";
    p.model.rope.factor = 8.0;
    p.model.rope.low_freq_factor = 1.0;
    p.model.rope.high_freq_factor = 4.0;
    p.model.rope.original_max_position_embeddings = 256;
  }
  p.shape.num_heads = hq;
  p.shape.num_kv_heads = hkv;
  p.shape.head_dim = d;
  p.shape.hidden = hidden;
  p.shape.block_size = 64;
  p.shape.has_q_weight = hidden != d || k_per_kv_head;
  p.shape.k_weight_heads = k_per_kv_head ? hkv : hq;
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  // Weights that give scores of a few units, as trained gates do.
  p.w.k.resize(p.shape.k_weight_size());
  for (double& x : p.w.k) x = dist(rng) * 0.8 / std::sqrt(3.0 * d);
  p.w.q.resize(p.shape.q_weight_size());
  for (double& x : p.w.q) x = dist(rng) * 1.2 / std::sqrt(double(d));
  p.q.resize(size_t(L) * hq * d);
  p.k.resize(size_t(L) * hkv * d);
  for (float& x : p.q) x = static_cast<float>(dist(rng) + 0.4);
  for (float& x : p.k) x = static_cast<float>(dist(rng) - 0.2);
  for (double f : RopeInvFreq(p.model.rope, hidden)) p.inv_freq.push_back(static_cast<float>(f));
  // A target with the shape of the real one: rows summing to 1 over the
  // causal blocks, some blocks exactly 0.
  const int nb = (L + 63) / 64;
  p.target.assign(size_t(hq) * nb * nb, 0.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int h = 0; h < hq; ++h) {
    for (int i = 0; i < nb; ++i) {
      float* row = &p.target[(size_t(h) * nb + i) * nb];
      double sum = 0;
      for (int j = 0; j <= i; ++j) sum += (row[j] = u(rng) < 0.2 ? 0.0f : static_cast<float>(std::pow(u(rng), 3)));
      if (sum == 0) row[i] = 1, sum = 1;
      for (int j = 0; j <= i; ++j) row[j] = static_cast<float>(row[j] / sum);
    }
  }
  return p;
}

}  // namespace seer::train::gate_test
