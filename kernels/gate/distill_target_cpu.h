// The distillation target of SeerAttention's gate training (DESIGN §1), on
// the CPU in float32: for each Q head and each (query block, key block) pair,
// the maximum over the block of the true causal softmax probability, then
// each row normalised to sum 1.
//
// One pass over the causal block triangle, as the attention kernels walk it:
// per query block, each key block's score tile is formed once, and only the
// tile's row maxima are kept beside the running row max and sum (online
// softmax). The block maximum of the probabilities is then
// max over rows of exp(tile_row_max - row_max) / row_sum. Nothing of size
// L x L is stored: the largest buffer is [block, nb] per task.
//
// The trainer's loss target (train/), the oracle baseline's ranking
// (kernels/gate/gate_cpu.h, SparsityMode::kOracle) and `seer-train target`
// all come from here. A CUDA twin fused into the attention kernel is the
// GPU trainer's job (docs/TRAINING.md).
#pragma once

#include <vector>

namespace seer::cpu {

struct DistillTargetProblem {
  const float* q = nullptr;  // [L, Hq, D], after RoPE (what attention sees)
  const float* k = nullptr;  // [L, Hkv, D], after RoPE
  int seq_len = 0;
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq; Q head h reads KV head h / (Hq / Hkv)
  int head_dim = 0;
  int block_size = 64;
  float scale = 0.0f;  // the attention's softmax scale, float(1 / sqrt(head_dim))
};

// [Hq, nb, nb] with nb = ceil(L / block): row qb holds the target over key
// blocks 0..qb (summing to 1), 0 above the diagonal. A partial last block
// covers only its real tokens. Runs on up to `num_threads` threads.
std::vector<float> DistillTarget(const DistillTargetProblem& p, int num_threads);

}  // namespace seer::cpu
