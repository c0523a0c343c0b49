// Checkpoint directories: single, sharded and fallback layouts, weight
// binding by Hugging Face names, and every way a checkpoint can be broken.
// Each test writes its own tiny checkpoint into a temp dir; the reference for
// the bound weights is the values the test itself generated and wrote, and the
// reference for names and shapes is the HF layout spelled out in TinyModel.
#include "engine/model/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "base/json.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

struct TinyShape {
  std::string arch = "LlamaForCausalLM";
  std::string model_type = "llama";
  int vocab = 32, hidden = 16, inter = 24, layers = 2, heads = 4, kv_heads = 2;
  bool attention_bias = false, mlp_bias = false, tie = false;
};

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// The tensors of a Hugging Face Llama/Qwen2 checkpoint, by name, written out
// here independently of BindModelWeights. Values are multiples of 1/8 in
// [-2, 2], exact in bf16, fp16 and f32, and differ from tensor to tensor.
std::map<std::string, Tensor> TinyModel(const TinyShape& s) {
  const int d = s.hidden / s.heads;
  std::map<std::string, Tensor> m;
  int seed = 1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    Tensor t{shape, std::vector<float>(n)};
    for (int64_t i = 0; i < n; ++i) t.values[i] = static_cast<float>(((i * 7 + seed * 13) % 33) - 16) / 8.0f;
    ++seed;
    m[name] = std::move(t);
  };
  add("model.embed_tokens.weight", {s.vocab, s.hidden});
  add("model.norm.weight", {s.hidden});
  if (!s.tie) add("lm_head.weight", {s.vocab, s.hidden});
  const bool qwen = s.arch == "Qwen2ForCausalLM";
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {s.hidden});
    add(p + "post_attention_layernorm.weight", {s.hidden});
    add(p + "self_attn.q_proj.weight", {s.heads * d, s.hidden});
    add(p + "self_attn.k_proj.weight", {s.kv_heads * d, s.hidden});
    add(p + "self_attn.v_proj.weight", {s.kv_heads * d, s.hidden});
    add(p + "self_attn.o_proj.weight", {s.hidden, s.heads * d});
    if (s.attention_bias || qwen) {
      add(p + "self_attn.q_proj.bias", {s.heads * d});
      add(p + "self_attn.k_proj.bias", {s.kv_heads * d});
      add(p + "self_attn.v_proj.bias", {s.kv_heads * d});
    }
    if (s.attention_bias && !qwen) add(p + "self_attn.o_proj.bias", {s.hidden});
    add(p + "mlp.gate_proj.weight", {s.inter, s.hidden});
    add(p + "mlp.up_proj.weight", {s.inter, s.hidden});
    add(p + "mlp.down_proj.weight", {s.hidden, s.inter});
    if (s.mlp_bias) {
      add(p + "mlp.gate_proj.bias", {s.inter});
      add(p + "mlp.up_proj.bias", {s.inter});
      add(p + "mlp.down_proj.bias", {s.hidden});
    }
  }
  return m;
}

std::string ConfigJson(const TinyShape& s) {
  JsonValue c = JsonValue::Object();
  c.Set("architectures", JsonValue::Array()).Append(JsonValue::String(s.arch));
  c.Set("model_type", JsonValue::String(s.model_type));
  c.Set("vocab_size", JsonValue::Int(s.vocab));
  c.Set("hidden_size", JsonValue::Int(s.hidden));
  c.Set("intermediate_size", JsonValue::Int(s.inter));
  c.Set("num_hidden_layers", JsonValue::Int(s.layers));
  c.Set("num_attention_heads", JsonValue::Int(s.heads));
  c.Set("num_key_value_heads", JsonValue::Int(s.kv_heads));
  c.Set("rms_norm_eps", JsonValue::Number(1e-6));
  c.Set("max_position_embeddings", JsonValue::Int(2048));
  c.Set("rope_theta", JsonValue::Number(10000.0));
  c.Set("tie_word_embeddings", JsonValue::Bool(s.tie));
  if (s.arch == "LlamaForCausalLM") {
    c.Set("attention_bias", JsonValue::Bool(s.attention_bias));
    c.Set("mlp_bias", JsonValue::Bool(s.mlp_bias));
  }
  c.Set("torch_dtype", JsonValue::String("bfloat16"));
  return c.Dump();
}

// Adds `t` to `w` as `dtype`; the values are exact in every float type.
void AddAs(SafetensorsWriter* w, const std::string& name, const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) {
    w->AddF32(name, t.shape, t.values);
    return;
  }
  std::vector<uint16_t> half;
  for (float v : t.values) half.push_back(dtype == DType::kBF16 ? FloatToBf16(v) : FloatToFp16(v));
  w->Add(name, dtype, t.shape, half.data(), half.size() * 2);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) / ("seer_checkpoint_" + std::to_string(::getpid()) + "_" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  void WriteText(const std::string& name, const std::string& text) { std::ofstream(Path(name)) << text; }

  // Writes config.json and the given tensors into `file`.
  void WriteCheckpoint(const TinyShape& s, const std::map<std::string, Tensor>& tensors, DType dtype = DType::kBF16,
                       const std::string& file = "model.safetensors") {
    WriteText("config.json", ConfigJson(s));
    SafetensorsWriter w;
    for (const auto& [name, t] : tensors) AddAs(&w, name, t, dtype);
    ASSERT_TRUE(w.WriteFile(Path(file)).ok());
  }

  // Writes config.json, the model as two shards (alternating tensors) and
  // model.safetensors.index.json; returns the weight_map it wrote.
  std::map<std::string, std::string> WriteSharded(const TinyShape& s, const std::map<std::string, Tensor>& model) {
    WriteText("config.json", ConfigJson(s));
    const std::string shards[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    SafetensorsWriter writers[2];
    std::map<std::string, std::string> weight_map;
    int i = 0;
    for (const auto& [name, tensor] : model) {
      const int k = i++ % 2;
      AddAs(&writers[k], name, tensor, DType::kBF16);
      weight_map[name] = shards[k];
    }
    for (int k = 0; k < 2; ++k) EXPECT_TRUE(writers[k].WriteFile(Path(shards[k])).ok());
    WriteIndex(weight_map);
    return weight_map;
  }

  void WriteIndex(const std::map<std::string, std::string>& weight_map) {
    JsonValue index = JsonValue::Object();
    index.Set("metadata", JsonValue::Object()).Set("total_size", JsonValue::Int(12345));
    JsonValue& map = index.Set("weight_map", JsonValue::Object());
    for (const auto& [name, shard] : weight_map) map.Set(name, JsonValue::String(shard));
    WriteText("model.safetensors.index.json", index.Dump());
  }

  std::unique_ptr<Checkpoint> MustOpen() {
    auto r = Checkpoint::Open(dir_);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  // Opens the checkpoint (and binds its weights when it opens) and expects
  // `code` with a message that mentions each of `mentions`.
  void ExpectError(StatusCode code, const std::vector<std::string>& mentions) {
    Status s;
    auto r = Checkpoint::Open(dir_);
    if (!r.ok()) {
      s = r.status();
    } else {
      auto b = BindModelWeights(**r);
      ASSERT_FALSE(b.ok()) << "checkpoint loaded and bound";
      s = b.status();
    }
    EXPECT_EQ(s.code(), code) << s.ToString();
    for (const std::string& m : mentions) {
      EXPECT_NE(s.message().find(m), std::string::npos) << "'" << m << "' not in: " << s.message();
    }
  }

  std::string dir_;
};

// The view's values, as float.
std::vector<float> Values(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  EXPECT_TRUE(ConvertToFloat(t.dtype, t.data, v.size(), v.data()));
  return v;
}

void ExpectBound(const TensorView& view, const std::map<std::string, Tensor>& model, const std::string& name) {
  SCOPED_TRACE(name);
  ASSERT_NE(view.data, nullptr);
  EXPECT_EQ(view.name, name);
  EXPECT_EQ(view.shape, model.at(name).shape);
  EXPECT_EQ(Values(view), model.at(name).values);
}

TEST_F(CheckpointTest, BindsEveryWeightOfASingleFile) {
  TinyShape s;
  const auto model = TinyModel(s);
  WriteCheckpoint(s, model);
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  EXPECT_EQ(ckpt->config().num_kv_heads, 2);
  EXPECT_TRUE(ckpt->Has("model.norm.weight"));
  EXPECT_FALSE(ckpt->Has("model.nope"));
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectBound(w->embed_tokens, model, "model.embed_tokens.weight");
  ExpectBound(w->norm, model, "model.norm.weight");
  ExpectBound(w->lm_head, model, "lm_head.weight");
  ASSERT_EQ(w->layers.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeightViews& l = w->layers[i];
    ExpectBound(l.input_norm, model, p + "input_layernorm.weight");
    ExpectBound(l.post_attention_norm, model, p + "post_attention_layernorm.weight");
    ExpectBound(l.q_proj, model, p + "self_attn.q_proj.weight");
    ExpectBound(l.k_proj, model, p + "self_attn.k_proj.weight");
    ExpectBound(l.v_proj, model, p + "self_attn.v_proj.weight");
    ExpectBound(l.o_proj, model, p + "self_attn.o_proj.weight");
    ExpectBound(l.gate_proj, model, p + "mlp.gate_proj.weight");
    ExpectBound(l.up_proj, model, p + "mlp.up_proj.weight");
    ExpectBound(l.down_proj, model, p + "mlp.down_proj.weight");
    for (const TensorView* b : {&l.q_bias, &l.k_bias, &l.v_bias, &l.o_bias, &l.gate_bias, &l.up_bias, &l.down_bias}) {
      EXPECT_EQ(b->data, nullptr);
    }
  }
}

TEST_F(CheckpointTest, Bf16Fp16AndF32AreAllReadable) {
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    TinyShape s;
    const auto model = TinyModel(s);
    WriteCheckpoint(s, model, dtype);
    auto ckpt = MustOpen();
    ASSERT_NE(ckpt, nullptr);
    auto w = BindModelWeights(*ckpt);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ(w->embed_tokens.dtype, dtype);
    ExpectBound(w->embed_tokens, model, "model.embed_tokens.weight");
    ExpectBound(w->layers[1].down_proj, model, "model.layers.1.mlp.down_proj.weight");
  }
}

TEST_F(CheckpointTest, TiedEmbeddingsReuseTheEmbedding) {
  TinyShape s;
  s.tie = true;
  const auto model = TinyModel(s);
  ASSERT_EQ(model.count("lm_head.weight"), 0u);
  WriteCheckpoint(s, model);
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->lm_head.data, w->embed_tokens.data);
  EXPECT_EQ(w->lm_head.shape, (std::vector<int64_t>{32, 16}));
}

TEST_F(CheckpointTest, UntiedWithoutLmHead) {
  TinyShape s;
  auto model = TinyModel(s);
  model.erase("lm_head.weight");
  WriteCheckpoint(s, model);
  ExpectError(StatusCode::kNotFound,
              {"missing tensor 'lm_head.weight'", Path("model.safetensors"), "tie_word_embeddings"});
}

TEST_F(CheckpointTest, Qwen2QkvBiasesWithoutOBias) {
  TinyShape s;
  s.arch = "Qwen2ForCausalLM";
  s.model_type = "qwen2";
  s.tie = true;
  const auto model = TinyModel(s);
  WriteCheckpoint(s, model);
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectBound(w->layers[0].q_bias, model, "model.layers.0.self_attn.q_proj.bias");
  ExpectBound(w->layers[1].k_bias, model, "model.layers.1.self_attn.k_proj.bias");
  ExpectBound(w->layers[1].v_bias, model, "model.layers.1.self_attn.v_proj.bias");
  EXPECT_EQ(w->layers[0].o_bias.data, nullptr);

  auto broken = model;
  broken.erase("model.layers.1.self_attn.k_proj.bias");
  WriteCheckpoint(s, broken);
  ExpectError(StatusCode::kNotFound, {"model.layers.1.self_attn.k_proj.bias", Path("model.safetensors")});
}

TEST_F(CheckpointTest, LlamaAttentionAndMlpBiases) {
  TinyShape s;
  s.attention_bias = true;
  s.mlp_bias = true;
  const auto model = TinyModel(s);
  WriteCheckpoint(s, model);
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectBound(w->layers[0].o_bias, model, "model.layers.0.self_attn.o_proj.bias");
  ExpectBound(w->layers[1].q_bias, model, "model.layers.1.self_attn.q_proj.bias");
  ExpectBound(w->layers[0].gate_bias, model, "model.layers.0.mlp.gate_proj.bias");
  ExpectBound(w->layers[1].down_bias, model, "model.layers.1.mlp.down_proj.bias");
}

TEST_F(CheckpointTest, ShardedCheckpointLoads) {
  TinyShape s;
  const auto model = TinyModel(s);
  const auto weight_map = WriteSharded(s, model);
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  // Tensors come from the shard the index names.
  EXPECT_EQ(fs::path(w->embed_tokens.file).filename(), weight_map.at("model.embed_tokens.weight"));
  EXPECT_EQ(fs::path(w->norm.file).filename(), weight_map.at("model.norm.weight"));
  EXPECT_NE(w->embed_tokens.file, w->norm.file);
  ExpectBound(w->embed_tokens, model, "model.embed_tokens.weight");
  ExpectBound(w->norm, model, "model.norm.weight");
  ExpectBound(w->layers[1].o_proj, model, "model.layers.1.self_attn.o_proj.weight");
}

TEST_F(CheckpointTest, FingerprintIgnoresShardingButNotContent) {
  TinyShape s;
  auto model = TinyModel(s);
  WriteSharded(s, model);
  const uint64_t sharded = MustOpen()->fingerprint();
  fs::remove_all(dir_);
  fs::create_directories(dir_);
  WriteCheckpoint(s, model);
  EXPECT_EQ(MustOpen()->fingerprint(), sharded);

  // One weight changed.
  model["model.layers.0.mlp.up_proj.weight"].values[5] += 0.125f;
  WriteCheckpoint(s, model);
  const uint64_t changed_weight = MustOpen()->fingerprint();
  EXPECT_NE(changed_weight, sharded);
  // One config field changed.
  model["model.layers.0.mlp.up_proj.weight"].values[5] -= 0.125f;
  WriteCheckpoint(s, model);
  EXPECT_EQ(MustOpen()->fingerprint(), sharded);
  WriteText("config.json", ConfigJson(s).replace(ConfigJson(s).find("10000"), 5, "20000"));
  EXPECT_NE(MustOpen()->fingerprint(), sharded);
}

TEST_F(CheckpointTest, FallbackToEverySafetensorsFile) {
  TinyShape s;
  const auto model = TinyModel(s);
  WriteText("config.json", ConfigJson(s));
  SafetensorsWriter a, b;
  int i = 0;
  for (const auto& [name, t] : model) AddAs(i++ < 5 ? &a : &b, name, t, DType::kF32);
  ASSERT_TRUE(a.WriteFile(Path("part-a.safetensors")).ok());
  ASSERT_TRUE(b.WriteFile(Path("part-b.safetensors")).ok());
  auto ckpt = MustOpen();
  ASSERT_NE(ckpt, nullptr);
  auto w = BindModelWeights(*ckpt);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ExpectBound(w->layers[1].up_proj, model, "model.layers.1.mlp.up_proj.weight");

  // The same tensor in two files is ambiguous.
  SafetensorsWriter c;
  AddAs(&c, "model.norm.weight", model.at("model.norm.weight"), DType::kF32);
  ASSERT_TRUE(c.WriteFile(Path("part-c.safetensors")).ok());
  ExpectError(StatusCode::kInvalidArgument, {"'model.norm.weight'", "part-c.safetensors", "both"});
}

TEST_F(CheckpointTest, ShardMissing) {
  TinyShape s;
  WriteSharded(s, TinyModel(s));
  fs::remove(Path("model-00002-of-00002.safetensors"));
  ExpectError(StatusCode::kNotFound, {Path("model.safetensors.index.json"), Path("model-00002-of-00002.safetensors")});
}

TEST_F(CheckpointTest, IndexNamesAShardThatLacksTheTensor) {
  TinyShape s;
  auto weight_map = WriteSharded(s, TinyModel(s));
  const std::string name = "model.layers.0.mlp.gate_proj.weight";
  weight_map[name] = weight_map[name] == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                            : "model-00001-of-00002.safetensors";
  WriteIndex(weight_map);
  ExpectError(StatusCode::kInvalidArgument,
              {Path("model.safetensors.index.json"), "'weight_map'", "'" + name + "'", weight_map[name]});
}

TEST_F(CheckpointTest, IndexWithBadFields) {
  TinyShape s;
  auto weight_map = WriteSharded(s, TinyModel(s));
  weight_map["model.norm.weight"] = "../elsewhere.safetensors";
  WriteIndex(weight_map);
  ExpectError(StatusCode::kInvalidArgument, {"'weight_map.model.norm.weight'", "../elsewhere.safetensors"});
  WriteText("model.safetensors.index.json", R"({"metadata": {}})");
  ExpectError(StatusCode::kInvalidArgument, {Path("model.safetensors.index.json"), "missing field 'weight_map'"});
  WriteText("model.safetensors.index.json", R"({"weight_map": {"a": "b.safetensors",}})");
  ExpectError(StatusCode::kInvalidArgument, {Path("model.safetensors.index.json"), "line 1, column 38"});
}

TEST_F(CheckpointTest, WrongShape) {
  TinyShape s;
  auto model = TinyModel(s);
  model["model.layers.1.self_attn.k_proj.weight"] = Tensor{{16, 16}, std::vector<float>(256, 0.5f)};
  WriteCheckpoint(s, model);
  ExpectError(StatusCode::kInvalidArgument,
              {Path("model.safetensors") + ": tensor 'model.layers.1.self_attn.k_proj.weight' "
                                           "has shape [16, 16], expected [8, 16]"});
}

TEST_F(CheckpointTest, MissingTensor) {
  TinyShape s;
  auto model = TinyModel(s);
  model.erase("model.layers.1.mlp.down_proj.weight");
  WriteCheckpoint(s, model);
  ExpectError(StatusCode::kNotFound,
              {"missing tensor 'model.layers.1.mlp.down_proj.weight'", Path("model.safetensors")});
}

TEST_F(CheckpointTest, ConfigClaimsMoreLayersThanTheWeights) {
  TinyShape s;
  const auto model = TinyModel(s);
  s.layers = 1 << 24;  // the largest the config allows; binding must fail fast, not allocate them all
  WriteCheckpoint(s, model);
  ExpectError(StatusCode::kNotFound, {"missing tensor 'model.layers.2.input_layernorm.weight'"});
}

// The other way round: tensors of more layers than config.json says would
// load a model cut short and run it; refused, naming the first extra layer.
TEST_F(CheckpointTest, WeightsOfMoreLayersThanTheConfigAreRefused) {
  TinyShape s;
  s.layers = 3;
  const auto model = TinyModel(s);
  s.layers = 2;
  WriteCheckpoint(s, model);
  ExpectError(StatusCode::kInvalidArgument,
              {"tensors of layer 2", "'model.layers.2.input_layernorm.weight'", "num_hidden_layers 2"});
}

TEST_F(CheckpointTest, UnsupportedDtype) {
  TinyShape s;
  auto model = TinyModel(s);
  WriteCheckpoint(s, model);
  SafetensorsWriter w;
  for (const auto& [name, t] : model) {
    if (name == "model.embed_tokens.weight") {
      const std::vector<int64_t> ids(t.values.size(), 7);
      w.Add(name, DType::kI64, t.shape, ids.data(), ids.size() * 8);
    } else {
      AddAs(&w, name, t, DType::kBF16);
    }
  }
  ASSERT_TRUE(w.WriteFile(Path("model.safetensors")).ok());
  ExpectError(StatusCode::kInvalidArgument,
              {"unsupported dtype I64 for tensor 'model.embed_tokens.weight' in " + Path("model.safetensors")});
}

TEST_F(CheckpointTest, UnsupportedArchitecture) {
  TinyShape s;
  s.arch = "GPT2LMHeadModel";
  WriteCheckpoint(s, TinyModel(s));
  ExpectError(StatusCode::kInvalidArgument, {Path("config.json"), "'architectures'", "GPT2LMHeadModel"});
}

TEST_F(CheckpointTest, MissingConfigField) {
  TinyShape s;
  WriteCheckpoint(s, TinyModel(s));
  std::string config = ConfigJson(s);
  const std::string field = "\"num_attention_heads\":4,";
  ASSERT_NE(config.find(field), std::string::npos);
  WriteText("config.json", config.erase(config.find(field), field.size()));
  ExpectError(StatusCode::kInvalidArgument, {Path("config.json"), "missing field 'num_attention_heads'"});
}

TEST_F(CheckpointTest, MissingFiles) {
  TinyShape s;
  WriteCheckpoint(s, TinyModel(s));
  fs::remove(Path("config.json"));
  ExpectError(StatusCode::kNotFound, {Path("config.json")});
  WriteText("config.json", ConfigJson(s));
  fs::remove(Path("model.safetensors"));
  ExpectError(StatusCode::kNotFound, {dir_, "no model.safetensors"});
  auto absent = Checkpoint::Open(Path("absent"));
  ASSERT_FALSE(absent.ok());
  EXPECT_EQ(absent.status().code(), StatusCode::kNotFound);
  EXPECT_NE(absent.status().message().find(Path("absent")), std::string::npos);
}

TEST_F(CheckpointTest, TruncatedWeightsFile) {
  TinyShape s;
  WriteCheckpoint(s, TinyModel(s));
  const auto size = fs::file_size(Path("model.safetensors"));
  fs::resize_file(Path("model.safetensors"), size - 100);
  ExpectError(StatusCode::kInvalidArgument, {Path("model.safetensors"), "'data_offsets'", "out of range"});
  fs::resize_file(Path("model.safetensors"), 5);
  ExpectError(StatusCode::kInvalidArgument, {Path("model.safetensors"), "truncated"});
}

TEST_F(CheckpointTest, CorruptWeightsFileHeader) {
  TinyShape s;
  WriteCheckpoint(s, TinyModel(s));
  // Flip the header's opening brace: the header JSON is malformed.
  std::fstream f(Path("model.safetensors"), std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(8);
  f.put('x');
  f.close();
  ExpectError(StatusCode::kInvalidArgument, {Path("model.safetensors"), "header JSON", "line 1, column 1"});
}

}  // namespace
}  // namespace seer
