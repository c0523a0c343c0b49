#include "engine/model/model_config.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <numbers>
#include <optional>
#include <sstream>

#include "base/json.h"

namespace seer {
namespace {

// Bounds on config integers: far beyond any real model, small enough that
// products of two of them (vocab * hidden, ...) stay well inside int64.
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxPositions = int64_t{1} << 32;

struct ArchInfo {
  std::string_view name;
  std::string_view model_type;
  Architecture arch;
};
constexpr ArchInfo kArchitectures[] = {
    {"LlamaForCausalLM", "llama", Architecture::kLlama},
    {"Qwen2ForCausalLM", "qwen2", Architecture::kQwen2},
    {"MistralForCausalLM", "mistral", Architecture::kMistral},
};

// The llama3 keys of a rope block; required, as Hugging Face requires them.
Status ReadLlama3Scaling(const JsonFieldReader& r, RopeConfig* rope) {
  SEER_ASSIGN_OR_RETURN(rope->factor, r.Positive("factor", std::nullopt));
  SEER_ASSIGN_OR_RETURN(rope->low_freq_factor, r.Positive("low_freq_factor", std::nullopt));
  SEER_ASSIGN_OR_RETURN(rope->high_freq_factor, r.Positive("high_freq_factor", std::nullopt));
  SEER_ASSIGN_OR_RETURN(rope->original_max_position_embeddings,
                        r.Int("original_max_position_embeddings", 1, kMaxPositions, std::nullopt));
  if (!(rope->high_freq_factor > rope->low_freq_factor)) {
    return r.Error("high_freq_factor", "= " + std::to_string(rope->high_freq_factor) + " must exceed " +
                                           r.Name("low_freq_factor") + " = " + std::to_string(rope->low_freq_factor));
  }
  return OkStatus();
}

Status CheckRopeType(const JsonFieldReader& r, std::string_view key, const std::string& type) {
  if (type == "default" || type == "llama3") return OkStatus();
  return r.Error(key, "= \"" + type + "\" is not supported (supported: \"default\", \"llama3\")");
}

// Hub style: top-level rope_theta, optional rope_scaling {rope_type|type, ...}.
Status ReadHubRope(const JsonValue& root, const std::string& path, RopeConfig* rope) {
  JsonFieldReader top(root, path);
  SEER_ASSIGN_OR_RETURN(rope->theta, top.Positive("rope_theta", 10000.0));
  const JsonValue* scaling = top.Find("rope_scaling");
  if (scaling == nullptr) return OkStatus();
  if (!scaling->is_object()) return top.Error("rope_scaling", "must be an object or null, got " + scaling->Dump());
  JsonFieldReader r(*scaling, path, "rope_scaling.");
  // Older configs spell the key "type".
  const std::string_view type_key = r.Find("rope_type") != nullptr ? "rope_type" : "type";
  SEER_ASSIGN_OR_RETURN(rope->type, r.String(type_key, "default"));
  SEER_RETURN_IF_ERROR(CheckRopeType(r, type_key, rope->type));
  if (rope->type == "llama3") SEER_RETURN_IF_ERROR(ReadLlama3Scaling(r, rope));
  return OkStatus();
}

// transformers-5 style: rope_parameters {rope_type, rope_theta, ...}.
Status ReadRopeParameters(const JsonValue& params, const std::string& path, RopeConfig* rope) {
  JsonFieldReader top(params, path);
  if (!params.is_object()) return top.Error("rope_parameters", "must be an object, got " + params.Dump());
  JsonFieldReader r(params, path, "rope_parameters.");
  SEER_ASSIGN_OR_RETURN(rope->type, r.String("rope_type", "default"));
  SEER_RETURN_IF_ERROR(CheckRopeType(r, "rope_type", rope->type));
  SEER_ASSIGN_OR_RETURN(rope->theta, r.Positive("rope_theta", std::nullopt));
  if (rope->type == "llama3") SEER_RETURN_IF_ERROR(ReadLlama3Scaling(r, rope));
  return OkStatus();
}

StatusOr<DType> ReadDType(const JsonFieldReader& r) {
  // transformers 5 writes "dtype"; earlier versions "torch_dtype".
  const std::string_view key = r.Find("dtype") != nullptr ? "dtype" : "torch_dtype";
  const JsonValue* v = r.Find(key);
  if (v == nullptr) return DType::kBF16;
  if (!v->is_string()) return r.Error(key, "must be a string, got " + v->Dump());
  const std::string& name = v->as_string();
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16") return DType::kF16;
  if (name == "float32") return DType::kF32;
  return r.Error(key, "= \"" + name + "\" is not supported (supported: bfloat16, float16, float32)");
}

}  // namespace

StatusOr<ModelConfig> ParseModelConfig(const JsonValue& root, const std::string& path) {
  if (!root.is_object())
    return InvalidArgument(path + ": must be a JSON object, got " + JsonValue::TypeName(root.type()));
  JsonFieldReader r(root, path);
  ModelConfig c;

  SEER_ASSIGN_OR_RETURN(const JsonValue* archs, r.Require("architectures"));
  if (!archs->is_array() || archs->as_array().empty() || !archs->as_array()[0].is_string()) {
    return r.Error("architectures", "must be a non-empty array of strings, got " + archs->Dump());
  }
  c.architecture_name = archs->as_array()[0].as_string();
  const ArchInfo* info = nullptr;
  for (const ArchInfo& a : kArchitectures) {
    if (a.name == c.architecture_name) info = &a;
  }
  if (info == nullptr) {
    return r.Error("architectures", "= \"" + c.architecture_name +
                                        "\" is not supported (supported: LlamaForCausalLM, Qwen2ForCausalLM, "
                                        "MistralForCausalLM)");
  }
  c.arch = info->arch;
  SEER_ASSIGN_OR_RETURN(std::string model_type, r.String("model_type", std::string(info->model_type)));
  if (model_type != info->model_type) {
    return r.Error("model_type", "= \"" + model_type + "\" contradicts 'architectures' = \"" + c.architecture_name +
                                     "\" (expected \"" + std::string(info->model_type) + "\")");
  }
  SEER_ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "silu"));
  if (act != "silu") return r.Error("hidden_act", "= \"" + act + "\" is not supported (only \"silu\")");

  SEER_ASSIGN_OR_RETURN(int64_t vocab, r.Int("vocab_size", 1, kMaxDim, std::nullopt));
  SEER_ASSIGN_OR_RETURN(int64_t hidden, r.Int("hidden_size", 1, kMaxDim, std::nullopt));
  SEER_ASSIGN_OR_RETURN(int64_t inter, r.Int("intermediate_size", 1, kMaxDim, std::nullopt));
  SEER_ASSIGN_OR_RETURN(int64_t layers, r.Int("num_hidden_layers", 1, kMaxDim, std::nullopt));
  SEER_ASSIGN_OR_RETURN(int64_t heads, r.Int("num_attention_heads", 1, kMaxDim, std::nullopt));
  SEER_ASSIGN_OR_RETURN(int64_t kv_heads, r.Int("num_key_value_heads", 1, heads, heads));
  if (heads % kv_heads != 0) {
    return r.Error("num_key_value_heads",
                   "= " + std::to_string(kv_heads) + " must divide 'num_attention_heads' = " + std::to_string(heads));
  }
  int64_t head_dim = 0;
  if (r.Find("head_dim") != nullptr) {
    SEER_ASSIGN_OR_RETURN(head_dim, r.Int("head_dim", 1, kMaxDim, std::nullopt));
  } else {
    if (hidden % heads != 0) {
      return r.Error("hidden_size", "= " + std::to_string(hidden) + " is not a multiple of 'num_attention_heads' = " +
                                        std::to_string(heads) + ", and 'head_dim' is not given");
    }
    head_dim = hidden / heads;
  }
  if (head_dim % 2 != 0) {
    if (r.Find("head_dim") != nullptr) {
      return r.Error("head_dim", "= " + std::to_string(head_dim) + " must be even (RoPE rotates pairs)");
    }
    return r.Error("hidden_size", "/ 'num_attention_heads' gives head_dim " + std::to_string(head_dim) +
                                      ", which must be even (RoPE rotates pairs)");
  }
  SEER_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Positive("rms_norm_eps", std::nullopt));
  SEER_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 1, kMaxPositions, std::nullopt));
  c.vocab_size = static_cast<int>(vocab);
  c.hidden_size = static_cast<int>(hidden);
  c.intermediate_size = static_cast<int>(inter);
  c.num_layers = static_cast<int>(layers);
  c.num_heads = static_cast<int>(heads);
  c.num_kv_heads = static_cast<int>(kv_heads);
  c.head_dim = static_cast<int>(head_dim);

  if (const JsonValue* params = r.Find("rope_parameters")) {
    SEER_RETURN_IF_ERROR(ReadRopeParameters(*params, path, &c.rope));
  } else {
    SEER_RETURN_IF_ERROR(ReadHubRope(root, path, &c.rope));
  }

  switch (c.arch) {
    case Architecture::kLlama: {
      // LlamaAttention gives o_proj the same bias flag as q/k/v.
      SEER_ASSIGN_OR_RETURN(c.attention_bias, r.Bool("attention_bias", false));
      c.o_proj_bias = c.attention_bias;
      SEER_ASSIGN_OR_RETURN(c.mlp_bias, r.Bool("mlp_bias", false));
      break;
    }
    case Architecture::kQwen2: {
      c.attention_bias = true;  // Qwen2 always has q/k/v biases, never an o_proj bias
      c.o_proj_bias = false;
      SEER_ASSIGN_OR_RETURN(bool sliding, r.Bool("use_sliding_window", false));
      if (sliding) return r.Error("use_sliding_window", "= true is not supported (sliding-window attention)");
      break;
    }
    case Architecture::kMistral: {
      if (const JsonValue* window = r.Find("sliding_window")) {
        return r.Error("sliding_window", "= " + window->Dump() +
                                             " is not supported: only Mistral models without a sliding window "
                                             "(sliding_window: null) are");
      }
      break;
    }
  }
  // transformers 5 spells the attention kind of every layer out.
  if (const JsonValue* kinds = r.Find("layer_types")) {
    if (!kinds->is_array()) return r.Error("layer_types", "must be an array, got " + kinds->Dump());
    for (size_t i = 0; i < kinds->as_array().size(); ++i) {
      const JsonValue& kind = kinds->as_array()[i];
      if (!kind.is_string() || kind.as_string() != "full_attention") {
        return r.Error("layer_types",
                       "[" + std::to_string(i) + "] = " + kind.Dump() + " is not supported (only \"full_attention\")");
      }
    }
  }
  SEER_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  SEER_ASSIGN_OR_RETURN(c.torch_dtype, ReadDType(r));
  return c;
}

StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  SEER_ASSIGN_OR_RETURN(JsonValue root, ReadJsonFile(path));
  return ParseModelConfig(root, path);
}

std::vector<double> RopeInvFreq(const RopeConfig& rope, int rotary_dim) {
  const int half = rotary_dim / 2;
  std::vector<double> inv_freq(half > 0 ? half : 0);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = 1.0 / std::pow(rope.theta, static_cast<double>(2 * i) / rotary_dim);
  }
  if (rope.type != "llama3") return inv_freq;

  // Llama 3.1: leave high frequencies, divide low frequencies by `factor`,
  // and blend linearly in wavelength band between them.
  const double old_context = static_cast<double>(rope.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / rope.low_freq_factor;
  const double high_freq_wavelen = old_context / rope.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      f = f / rope.factor;
      continue;
    }
    const double smooth =
        (old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
    f = (1.0 - smooth) * f / rope.factor + smooth * f;
  }
  return inv_freq;
}

}  // namespace seer
