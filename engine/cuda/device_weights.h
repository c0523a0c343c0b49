// The model's weights on the GPU, in one allocation: matrices in bf16 (what
// cuBLAS reads), norms, biases and gate weights in float32 (small, and exact
// for any checkpoint dtype).
#pragma once

#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/model/checkpoint.h"
#include "engine/cuda/device_buffer.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"

namespace seer {

struct DeviceLayerWeights {
  float* input_norm = nullptr;  // [hidden]
  float* post_attention_norm = nullptr;
  __nv_bfloat16* q_proj = nullptr;  // HF Linear layout [out, in]
  __nv_bfloat16* k_proj = nullptr;
  __nv_bfloat16* v_proj = nullptr;
  __nv_bfloat16* o_proj = nullptr;
  __nv_bfloat16* gate_proj = nullptr;
  __nv_bfloat16* up_proj = nullptr;
  __nv_bfloat16* down_proj = nullptr;
  float* q_bias = nullptr;  // null when the model has none
  float* k_bias = nullptr;
  float* v_bias = nullptr;
  float* o_bias = nullptr;
  float* gate_bias = nullptr;
  float* up_bias = nullptr;
  float* down_bias = nullptr;
  float* gate_k_weight = nullptr;  // mask_linear_k [Hq, 3 * head_dim, gate hidden]; null without gates
  float* gate_q_weight = nullptr;  // mask_linear_q [Hq, head_dim, gate hidden] or null
  // Every gate weight is a tf32 value (cuda::GateParams::weights_tf32): true
  // for BF16 and F16 checkpoints and for random gates, which are drawn as
  // bf16 values like the checkpoints SeerAttention trains.
  bool gate_weights_tf32 = false;
};

struct DeviceModelWeights {
  DeviceBuffer storage;
  __nv_bfloat16* embed_tokens = nullptr;  // [vocab, hidden]
  float* norm = nullptr;  // [hidden]
  __nv_bfloat16* lm_head = nullptr;  // [vocab, hidden]; == embed_tokens when tied
  float* rope_inv_freq = nullptr;  // [head_dim / 2]
  float* gate_rope_inv_freq = nullptr;  // [gate hidden / 2]; null without gates
  std::vector<DeviceLayerWeights> layers;
};

// What the gates add to the weights: their hidden size and whether
// mask_linear_q is present. gate_hidden == 0 means no gates.
struct GateShape {
  int gate_hidden = 0;
  bool has_q = false;
};
GateShape GateShapeOf(const GateWeights* gates);

// Bytes UploadModelWeights / RandomModelWeights allocate for this model.
size_t ModelWeightBytes(const ModelConfig& config, const GateShape& gates, bool tied_lm_head);

// Converts and copies every bound tensor (bf16 as is; fp16, fp32 and fp64
// rounded to bf16 for matrices, widened to float32 for vectors). `gates` may
// be null.
StatusOr<DeviceModelWeights> UploadModelWeights(const ModelConfig& config, const ModelWeightViews& views,
                                                const GateWeights* gates, cudaStream_t stream);

// Random weights drawn on the GPU (no checkpoint): matrices uniform in
// +-sqrt(3 / fan_in) (unit-variance outputs for unit-variance inputs), the
// embedding in +-1, norms 1, biases small. Gates too when gate_hidden > 0.
StatusOr<DeviceModelWeights> RandomModelWeights(const ModelConfig& config, const GateShape& gates, uint64_t seed,
                                                cudaStream_t stream);

}  // namespace seer
