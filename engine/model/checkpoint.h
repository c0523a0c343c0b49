// A Hugging Face checkpoint directory: config.json plus *.safetensors, single
// or sharded (model.safetensors.index.json). Tensors stay memory-mapped.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/model/model_config.h"
#include "formats/safetensors.h"

namespace seer {

class Checkpoint {
 public:
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);
  ~Checkpoint();

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // A 64-bit hash of the config and of every tensor's name, dtype, shape and
  // sampled bytes: equal fingerprints mean the same model, for the layout
  // header of the KV stream.
  uint64_t fingerprint() const { return fingerprint_; }

  bool Has(std::string_view name) const;
  // The tensor `name`, checked against `expected_shape` and for a float dtype
  // (F32, F16, BF16). Errors name the file, the tensor and both shapes.
  StatusOr<TensorView> Get(std::string_view name, const std::vector<int64_t>& expected_shape) const;

 private:
  Checkpoint() = default;
  std::string dir_;
  ModelConfig config_;
  uint64_t fingerprint_ = 0;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
};

// Every weight of the model, bound and shape-checked against the config.
struct LayerWeightViews {
  TensorView input_norm, post_attention_norm;  // [hidden]
  TensorView q_proj, k_proj, v_proj, o_proj;  // HF Linear: [out, in]
  TensorView q_bias, k_bias, v_bias, o_bias;  // empty (data == nullptr) when absent
  TensorView gate_proj, up_proj, down_proj;
  TensorView gate_bias, up_bias, down_bias;  // mlp_bias only
};

struct ModelWeightViews {
  TensorView embed_tokens;  // [vocab, hidden]
  TensorView norm;  // [hidden]
  TensorView lm_head;  // [vocab, hidden]; the embedding when tied
  std::vector<LayerWeightViews> layers;
};

StatusOr<ModelWeightViews> BindModelWeights(const Checkpoint& ckpt);

}  // namespace seer
