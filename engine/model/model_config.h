// The model's shape, read from a Hugging Face config.json. One source of truth
// for every shape in the engine (docs/STYLE.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"

namespace seer {

class JsonValue;

enum class Architecture { kLlama, kQwen2, kMistral };

struct RopeConfig {
  double theta = 10000.0;
  // "default" or "llama3". Anything else is rejected at parse time.
  std::string type = "default";
  // llama3 scaling.
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string architecture_name;  // as written in config.json, e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool attention_bias = false;  // q/k/v (and for Llama also o) projections carry a bias
  bool o_proj_bias = false;  // Llama's attention_bias also covers o_proj; Qwen2's does not
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::kBF16;
};

// Parses a config.json already read into `root`. `path` names the file in
// errors, e.g. "model/config.json: missing field 'num_attention_heads'".
// Accepts hub style (top-level rope_theta / rope_scaling) and transformers-5
// style (rope_parameters).
StatusOr<ModelConfig> ParseModelConfig(const JsonValue& root, const std::string& path);

// Reads and parses `path`.
StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

// RoPE inverse frequencies for `rotary_dim` (half-split layout, HF
// rotate_half): rotary_dim/2 values, llama3 scaling applied. Computed in
// double like HF computes in float32-from-int64; callers cast.
std::vector<double> RopeInvFreq(const RopeConfig& rope, int rotary_dim);

}  // namespace seer
