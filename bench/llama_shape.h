// The model shape the benchmarks use: meta-llama/Llama-3.1-8B's config.json
// (random weights stand in for the checkpoint).
#pragma once

#include "engine/model/model_config.h"

namespace seer {

inline ModelConfig Llama31_8B(int layers) {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.architecture_name = "LlamaForCausalLM";
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = layers;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope.theta = 500000.0;
  c.rope.type = "llama3";
  c.rope.factor = 8.0;
  c.rope.low_freq_factor = 1.0;
  c.rope.high_freq_factor = 4.0;
  c.rope.original_max_position_embeddings = 8192;
  c.tie_word_embeddings = false;
  c.torch_dtype = DType::kBF16;
  return c;
}

}  // namespace seer
