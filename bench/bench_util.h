// What the whole-system benchmarks share: the model shapes they run and
// small argument helpers.
#pragma once

#include <string>
#include <vector>

#include "engine/model/model_config.h"

namespace seer {

// The shape of meta-llama/Llama-3.1-8B (config.json).
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

// Comma-separated items of `s`, empty items dropped.
inline std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace seer
