// SeerAttention gates (docs/GATES.md): loading the released checkpoints and
// running one layer's gate on the CPU through the twin kernels/gate/gate_cpu.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "kernels/gate/gate_cpu.h"
#include "engine/model/model_config.h"
#include "engine/model/sparsity.h"

namespace seer {

struct GateConfig {
  std::string base_model;
  std::string gate_type = "Qavg_Kmaxminavg";
  int block_size = 64;
  int hidden = 128;  // seerattn_gate_hidden_size
  SparsityConfig sparsity;  // defaults from seerattn_sparsity_method / threshold / nz_ratio / last_block_dense
};

struct GateLayerWeights {
  // mask_linear_k: [Hq, 3 * head_dim, hidden], applied as x . W (W stored [in, out]).
  std::vector<float> k_weight;
  // mask_linear_q: empty, or [Hq, q_in, hidden] with q_in = nq * head_dim.
  std::vector<float> q_weight;
  int q_in = 0;
};

struct GateWeights {
  GateConfig config;
  std::vector<GateLayerWeights> layers;  // one per model layer
};

// Loads a gate directory: config.json (seerattn_* fields) plus
// attn_gate_weights.pth (restricted unpickler, no code runs) or *.safetensors.
// Validates layer count, head counts, shapes and block size against `model`;
// a mismatch names the key and both shapes.
StatusOr<GateWeights> LoadGates(const std::string& dir, const ModelConfig& model);

// A 64-bit hash of the gates' type, block size, hidden size and every
// weight: equal fingerprints mean the same selection for the same prompt
// (what a KV prefix held elsewhere is checked against).
uint64_t GatesFingerprint(const GateWeights& gates);

// Runs the gate of one layer on the CPU (the twin kernels/gate/gate_cpu.h),
// after checking the weights and the prompt against the model: a mismatch is
// INVALID_ARGUMENT naming the shapes, a prompt whose [Hq, nb, nb] outputs
// would pass 2^31 entries RESOURCE_EXHAUSTED.
//   q: [L, Hq, head_dim] and k: [L, Hkv, head_dim], straight after
//   q_proj / k_proj (bias included, before RoPE).
// Applies `sparsity` (mode, last_block_dense) and the never-empty-row rule.
// For the oracle baseline it first computes the layer's true distillation
// target from q and k with the model's RoPE (kernels/gate/distill_target_cpu).
// Runs on up to `num_threads` threads, the caller's included (0: one per core).
StatusOr<GateOutput> RunGate(const GateLayerWeights& w, const GateConfig& gc, const ModelConfig& model, const float* q,
                             const float* k, int seq_len, const SparsityConfig& sparsity, int num_threads = 0);

}  // namespace seer
