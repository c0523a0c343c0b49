// config.json parsing and RoPE frequencies. Configs are written out as the
// hub publishes them (hub style and transformers-5 style); the expected
// values are the numbers written in them. RopeInvFreq is checked against a
// float64 recomputation written independently below.
#include "engine/model/model_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "base/json.h"

namespace seer {
namespace {

// The shape of meta-llama/Llama-3.1-8B's config.json, hub style.
constexpr const char* kLlama31Hub = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 128256
})";

// The same model as transformers 5 saves it.
constexpr const char* kLlama31V5 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "dtype": "bfloat16",
  "hidden_act": "silu",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "tie_word_embeddings": false,
  "vocab_size": 128256
})";

// The shape of Qwen/Qwen2.5-0.5B's config.json.
constexpr const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "hidden_act": "silu",
  "hidden_size": 896,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// The shape of mistralai/Mistral-7B-Instruct-v0.2's config.json.
constexpr const char* kMistral = R"({
  "architectures": ["MistralForCausalLM"],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "vocab_size": 32000
})";

JsonValue ParseJson(const std::string& text) {
  auto r = JsonValue::Parse(text);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : JsonValue();
}

ModelConfig MustParse(const std::string& text) {
  auto r = ParseModelConfig(ParseJson(text), "m/config.json");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : ModelConfig();
}

// `text` with the top-level field `key` set to `value` (JSON text), or removed when value is empty.
std::string With(const std::string& text, const std::string& key, const std::string& value) {
  JsonValue root = ParseJson(text);
  JsonValue out = JsonValue::Object();
  for (const auto& [k, v] : root.as_object()) {
    if (k != key) out.Set(k, v);
  }
  if (!value.empty()) out.Set(key, ParseJson(value));
  return out.Dump();
}

// Expects INVALID_ARGUMENT whose message names the file and every string in `mentions`.
void ExpectError(const std::string& text, const std::vector<std::string>& mentions) {
  auto r = ParseModelConfig(ParseJson(text), "m/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  const std::string& msg = r.status().message();
  EXPECT_EQ(msg.rfind("m/config.json: ", 0), 0u) << msg;
  for (const std::string& m : mentions) EXPECT_NE(msg.find(m), std::string::npos) << "'" << m << "' not in: " << msg;
}

TEST(ModelConfig, Llama31HubStyle) {
  const ModelConfig c = MustParse(kLlama31Hub);
  EXPECT_EQ(c.arch, Architecture::kLlama);
  EXPECT_EQ(c.architecture_name, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
}

TEST(ModelConfig, Transformers5StyleParsesToTheSameConfig) {
  const ModelConfig hub = MustParse(kLlama31Hub);
  const ModelConfig v5 = MustParse(kLlama31V5);
  EXPECT_EQ(v5.rope.type, hub.rope.type);
  EXPECT_EQ(v5.rope.theta, hub.rope.theta);
  EXPECT_EQ(v5.rope.factor, hub.rope.factor);
  EXPECT_EQ(v5.rope.low_freq_factor, hub.rope.low_freq_factor);
  EXPECT_EQ(v5.rope.high_freq_factor, hub.rope.high_freq_factor);
  EXPECT_EQ(v5.rope.original_max_position_embeddings, hub.rope.original_max_position_embeddings);
  EXPECT_EQ(v5.head_dim, hub.head_dim);
  EXPECT_EQ(v5.torch_dtype, hub.torch_dtype);
  // And the default rope type, both ways.
  const ModelConfig hub_default = MustParse(With(kLlama31Hub, "rope_scaling", "null"));
  const ModelConfig v5_default =
      MustParse(With(kLlama31V5, "rope_parameters", R"({"rope_type": "default", "rope_theta": 500000.0})"));
  EXPECT_EQ(hub_default.rope.type, "default");
  EXPECT_EQ(v5_default.rope.type, "default");
  EXPECT_EQ(hub_default.rope.theta, 500000.0);
  EXPECT_EQ(v5_default.rope.theta, 500000.0);
  // Legacy configs spell rope_type as "type".
  const ModelConfig legacy = MustParse(With(
      kLlama31Hub, "rope_scaling",
      R"({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  EXPECT_EQ(legacy.rope.type, "llama3");
  EXPECT_EQ(legacy.rope.factor, 8.0);
}

TEST(ModelConfig, Qwen2) {
  const ModelConfig c = MustParse(kQwen25);
  EXPECT_EQ(c.arch, Architecture::kQwen2);
  EXPECT_EQ(c.head_dim, 64);  // 896 / 14
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  ExpectError(With(kQwen25, "use_sliding_window", "true"), {"'use_sliding_window'"});
  // transformers 5 lists each layer's attention kind.
  EXPECT_EQ(MustParse(With(kQwen25, "layer_types", R"(["full_attention", "full_attention"])")).num_layers, 24);
  ExpectError(With(kQwen25, "layer_types", R"(["full_attention", "sliding_attention"])"),
              {"'layer_types'", "[1]", "sliding_attention"});
}

TEST(ModelConfig, Mistral) {
  const ModelConfig c = MustParse(kMistral);
  EXPECT_EQ(c.arch, Architecture::kMistral);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.rope.theta, 1e6);
  // Mistral-7B-v0.1 had a 4096-token sliding window.
  ExpectError(With(kMistral, "sliding_window", "4096"), {"'sliding_window'", "4096"});
}

TEST(ModelConfig, LlamaBiasesAndTying) {
  const ModelConfig c = MustParse(
      With(With(With(kLlama31Hub, "attention_bias", "true"), "mlp_bias", "true"), "tie_word_embeddings", "true"));
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias);  // Llama's attention_bias covers o_proj too
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(MustParse(With(kLlama31Hub, "tie_word_embeddings", "")).tie_word_embeddings);
}

TEST(ModelConfig, DefaultsAndExplicitHeadDim) {
  const ModelConfig mha = MustParse(With(kLlama31Hub, "num_key_value_heads", ""));
  EXPECT_EQ(mha.num_kv_heads, 32);
  const ModelConfig explicit_dim = MustParse(With(kLlama31Hub, "head_dim", "256"));
  EXPECT_EQ(explicit_dim.head_dim, 256);  // may differ from hidden / heads
  const ModelConfig no_theta = MustParse(With(With(kLlama31Hub, "rope_theta", ""), "rope_scaling", ""));
  EXPECT_EQ(no_theta.rope.theta, 10000.0);
  EXPECT_EQ(MustParse(With(kLlama31Hub, "torch_dtype", "\"float16\"")).torch_dtype, DType::kF16);
  EXPECT_EQ(MustParse(With(kLlama31V5, "dtype", "\"float32\"")).torch_dtype, DType::kF32);
  EXPECT_EQ(MustParse(With(kLlama31Hub, "torch_dtype", "")).torch_dtype, DType::kBF16);
}

TEST(ModelConfig, UnsupportedArchitecture) {
  ExpectError(With(kLlama31Hub, "architectures", R"(["GPT2LMHeadModel"])"), {"'architectures'", "GPT2LMHeadModel"});
  ExpectError(With(kLlama31Hub, "architectures", "[]"), {"'architectures'"});
  ExpectError(With(kLlama31Hub, "architectures", ""), {"missing field 'architectures'"});
  ExpectError(With(kLlama31Hub, "model_type", "\"gpt2\""), {"'model_type'", "gpt2"});
  ExpectError(With(kLlama31Hub, "hidden_act", "\"gelu\""), {"'hidden_act'", "gelu"});
}

TEST(ModelConfig, MissingFields) {
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "rms_norm_eps", "max_position_embeddings"}) {
    SCOPED_TRACE(field);
    ExpectError(With(kLlama31Hub, field, ""), {std::string("missing field '") + field + "'"});
  }
}

TEST(ModelConfig, FieldRanges) {
  ExpectError(With(kLlama31Hub, "vocab_size", "0"), {"'vocab_size'", "out of range [1, "});
  ExpectError(With(kLlama31Hub, "hidden_size", "-4096"), {"'hidden_size'", "out of range"});
  ExpectError(With(kLlama31Hub, "hidden_size", "4096.5"), {"'hidden_size'", "integer"});
  ExpectError(With(kLlama31Hub, "num_hidden_layers", "\"32\""), {"'num_hidden_layers'", "integer"});
  ExpectError(With(kLlama31Hub, "num_key_value_heads", "5"), {"'num_key_value_heads'", "must divide", "32"});
  ExpectError(With(kLlama31Hub, "num_key_value_heads", "64"), {"'num_key_value_heads'", "out of range [1, 32]"});
  ExpectError(With(kLlama31Hub, "head_dim", "127"), {"'head_dim'", "even"});
  ExpectError(With(kLlama31Hub, "hidden_size", "4090"), {"'hidden_size'", "multiple of 'num_attention_heads'"});
  ExpectError(With(kLlama31Hub, "hidden_size", "4000"), {"'hidden_size'", "head_dim 125", "even"});
  ExpectError(With(kLlama31Hub, "rms_norm_eps", "0"), {"'rms_norm_eps'", "> 0"});
  ExpectError(With(kLlama31Hub, "torch_dtype", "\"int8\""), {"'torch_dtype'", "int8"});
  ExpectError(With(kLlama31V5, "dtype", "\"float64\""), {"'dtype'", "float64"});
  ExpectError(With(kLlama31Hub, "attention_bias", "1"), {"'attention_bias'", "true or false"});
}

TEST(ModelConfig, UnsupportedRope) {
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    SCOPED_TRACE(type);
    ExpectError(With(kLlama31Hub, "rope_scaling", std::string(R"({"rope_type": ")") + type + R"(", "factor": 2.0})"),
                {"'rope_scaling.rope_type'", type});
    ExpectError(With(kLlama31V5, "rope_parameters",
                     std::string(R"({"rope_type": ")") + type + R"(", "rope_theta": 1e4, "factor": 2.0})"),
                {"'rope_parameters.rope_type'", type});
  }
  ExpectError(With(kLlama31Hub, "rope_scaling", R"({"type": "linear", "factor": 2.0})"), {"'rope_scaling.type'"});
  ExpectError(With(kLlama31Hub, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})"),
              {"missing field 'rope_scaling.low_freq_factor'"});
  ExpectError(With(kLlama31V5, "rope_parameters", R"({"rope_type": "default"})"),
              {"missing field 'rope_parameters.rope_theta'"});
  ExpectError(
      With(
          kLlama31Hub, "rope_scaling",
          R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
      {"'rope_scaling.high_freq_factor'", "must exceed"});
}

TEST(ModelConfig, LoadFromFile) {
  const std::string dir = ::testing::TempDir() + "/seer_model_config_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string good = dir + "/config.json";
  std::ofstream(good) << kQwen25;
  auto r = LoadModelConfig(good);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->arch, Architecture::kQwen2);

  auto missing = LoadModelConfig(dir + "/absent.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir + "/absent.json"), std::string::npos);

  const std::string bad = dir + "/bad.json";
  std::ofstream(bad) << "{\n  \"vocab_size\": 10,\n  \"hidden_size\": ,\n}";
  auto malformed = LoadModelConfig(bad);
  ASSERT_FALSE(malformed.ok());
  EXPECT_EQ(malformed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(malformed.status().message().find(bad + ": line 3, column 18"), std::string::npos)
      << malformed.status().message();
  std::filesystem::remove_all(dir);
}

// --- RoPE frequencies against an independent float64 recomputation. ---------

// theta^(-2i/dim) by exp/log rather than 1/pow.
double DefaultFreq(double theta, int i, int dim) { return std::exp(-std::log(theta) * (2.0 * i) / dim); }

enum class Band { kHigh, kMedium, kLow };

// Llama 3.1's scaling, restated from Meta's description: keep frequencies
// whose wavelength is under original_ctx / high_freq_factor, divide those
// whose wavelength exceeds original_ctx / low_freq_factor by `factor`, and in
// between interpolate linearly in (original_ctx / wavelength).
double Llama3Freq(const RopeConfig& r, int i, int dim, Band* band) {
  const double f = DefaultFreq(r.theta, i, dim);
  const double wavelength = 2.0 * M_PI / f;
  const double ctx = static_cast<double>(r.original_max_position_embeddings);
  if (ctx / wavelength > r.high_freq_factor) {
    *band = Band::kHigh;
    return f;
  }
  if (ctx / wavelength < r.low_freq_factor) {
    *band = Band::kLow;
    return f / r.factor;
  }
  *band = Band::kMedium;
  const double t = (ctx / wavelength - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  return f / r.factor + t * (f - f / r.factor);
}

TEST(RopeInvFreq, DefaultMatchesFloat64) {
  RopeConfig rope;
  rope.theta = 10000.0;
  for (int dim : {64, 128}) {
    const std::vector<double> got = RopeInvFreq(rope, dim);
    ASSERT_EQ(got.size(), static_cast<size_t>(dim / 2));
    EXPECT_EQ(got[0], 1.0);
    for (int i = 0; i < dim / 2; ++i) EXPECT_NEAR(got[i] / DefaultFreq(rope.theta, i, dim), 1.0, 1e-13) << i;
  }
}

TEST(RopeInvFreq, Llama3MatchesFloat64InEveryBand) {
  const ModelConfig c = MustParse(kLlama31Hub);
  const std::vector<double> got = RopeInvFreq(c.rope, c.head_dim);
  ASSERT_EQ(got.size(), 64u);
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 64; ++i) {
    Band band;
    const double want = Llama3Freq(c.rope, i, 128, &band);
    ++counts[static_cast<int>(band)];
    EXPECT_NEAR(got[i] / want, 1.0, 1e-13) << "i=" << i << " band=" << static_cast<int>(band);
  }
  // With theta 5e5 and head_dim 128 each band holds several frequencies
  // (i <= 28 high, 29..34 blended, >= 35 low), so all three paths are exercised.
  EXPECT_GE(counts[0], 3);
  EXPECT_GE(counts[1], 3);
  EXPECT_GE(counts[2], 3);
  // Spot values: the highest frequency is untouched and the lowest divided by 8.
  EXPECT_EQ(got[0], 1.0);
  EXPECT_NEAR(got[63], DefaultFreq(500000.0, 63, 128) / 8.0, 1e-20);
}

TEST(RopeInvFreq, SmallHeadDim) {
  // The gate applies RoPE with head_dim = gate hidden; odd callers get floor(dim/2).
  RopeConfig rope;
  EXPECT_EQ(RopeInvFreq(rope, 2).size(), 1u);
  EXPECT_TRUE(RopeInvFreq(rope, 0).empty());
}

}  // namespace
}  // namespace seer
