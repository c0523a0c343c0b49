// LoadGates on gate directories written here: the released layout
// (config.json + attn_gate_weights.pth, built by formats/pth_test_writer.h)
// and the safetensors alternative. Values must come through exactly; every
// mismatch with the model must be refused with a message naming the key and
// both shapes.

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/model/gates.h"
#include "engine/model/model_config.h"
#include "formats/safetensors.h"
#include "formats/pth_test_writer.h"

namespace seer {
namespace {

namespace fs = std::filesystem;
using testing::Bf16Bits;
using testing::Bytes16;
using testing::PthArchive;
using testing::StateDictPickle;
using testing::TestTensor;

// The llama fixture's shape: 2 layers, 4 Q heads, 1 KV head, head_dim 64.
ModelConfig TinyModel() {
  ModelConfig m;
  m.num_layers = 2;
  m.num_heads = 4;
  m.num_kv_heads = 1;
  m.head_dim = 64;
  m.hidden_size = 64;
  return m;
}

std::string KKey(int layer) {
  return "model.layers." + std::to_string(layer) + ".self_attn.attn_gate.mask_linear_k.weight";
}
std::string QKey(int layer) {
  return "model.layers." + std::to_string(layer) + ".self_attn.attn_gate.mask_linear_q.weight";
}

std::string ConfigJson(const std::string& extra = "") {
  return R"({"architectures": ["LlamaForCausalLM"], "base_model": "tiny/llama", "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
  "seerattn_sparsity_method": "threshold", "seerattn_threshold": 0.002, "seerattn_nz_ratio": 0.5,
  "seerattn_gate_type": "Qavg_Kmaxminavg", "seerattn_gate_block_size": 64, "seerattn_gate_hidden_size": 64,
  "seerattn_last_block_dense": false)" +
         extra + "}";
}

// Random values that bf16 represents exactly, so the expected floats are known.
std::vector<float> Bf16Values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<float> v(n);
  for (float& x : v) {
    const uint16_t h = Bf16Bits(dist(rng));  // truncate to bf16
    const uint32_t bits = uint32_t(h) << 16;
    std::memcpy(&x, &bits, 4);
  }
  return v;
}

struct GateTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

class GateDir {
 public:
  explicit GateDir(const std::string& name) : dir_(::testing::TempDir() + "/gate_loader_" + name) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~GateDir() { fs::remove_all(dir_); }
  const std::string& path() const { return dir_; }

  void Write(const std::string& file, const std::string& bytes) const {
    std::ofstream(dir_ + "/" + file, std::ios::binary) << bytes;
  }
  // attn_gate_weights.pth, bf16, one storage per tensor, as torch.save writes a state dict.
  void WritePth(const std::vector<GateTensor>& ts, const std::string& storage_type = "BFloat16Storage") const {
    std::vector<TestTensor> meta;
    std::vector<std::pair<std::string, std::string>> storages;
    for (size_t i = 0; i < ts.size(); ++i) {
      std::vector<int64_t> stride(ts[i].shape.size(), 1);
      for (size_t d = ts[i].shape.size(); d-- > 1;) stride[d - 1] = stride[d] * ts[i].shape[d];
      const std::string key = std::to_string(i);
      meta.push_back({ts[i].name, storage_type, key, int64_t(ts[i].values.size()), 0, ts[i].shape, stride});
      std::vector<uint16_t> bits;
      for (float f : ts[i].values) bits.push_back(Bf16Bits(f));
      std::string bytes = Bytes16(bits);
      if (storage_type == "LongStorage") bytes += bytes + bytes + bytes;
      storages.push_back({key, bytes});
    }
    Write("attn_gate_weights.pth", PthArchive(StateDictPickle(meta), storages));
  }
  void WriteSafetensors(const std::vector<GateTensor>& ts, const std::string& file = "gates.safetensors") const {
    SafetensorsWriter w;
    for (const GateTensor& t : ts) w.AddF32(t.name, t.shape, t.values);
    ASSERT_TRUE(w.WriteFile(dir_ + "/" + file).ok());
  }

 private:
  std::string dir_;
};

std::vector<GateTensor> ReleasedLayout(const ModelConfig& m, int hidden = 64) {
  std::vector<GateTensor> ts;
  for (int i = 0; i < m.num_layers; ++i) {
    const std::vector<int64_t> shape = {m.num_heads, 3 * m.head_dim, hidden};
    ts.push_back({KKey(i), shape, Bf16Values(size_t(m.num_heads) * 3 * m.head_dim * hidden, 100 + i)});
  }
  return ts;
}

void ExpectError(const StatusOr<GateWeights>& r, StatusCode code, const std::string& needle) {
  ASSERT_FALSE(r.ok()) << "expected an error containing '" << needle << "'";
  EXPECT_EQ(r.status().code(), code) << r.status().ToString();
  EXPECT_NE(r.status().message().find(needle), std::string::npos)
      << "message '" << r.status().message() << "' lacks '" << needle << "'";
}

TEST(LoadGates, ReleasedPthLayout) {
  const ModelConfig m = TinyModel();
  GateDir dir("pth");
  dir.Write("config.json", ConfigJson());
  const auto ts = ReleasedLayout(m);
  dir.WritePth(ts);
  auto g = LoadGates(dir.path(), m);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->config.base_model, "tiny/llama");
  EXPECT_EQ(g->config.gate_type, "Qavg_Kmaxminavg");
  EXPECT_EQ(g->config.block_size, 64);
  EXPECT_EQ(g->config.hidden, 64);
  EXPECT_EQ(g->config.sparsity.mode, SparsityMode::kThreshold);
  EXPECT_DOUBLE_EQ(g->config.sparsity.threshold, 0.002);
  EXPECT_DOUBLE_EQ(g->config.sparsity.nz_ratio, 0.5);
  EXPECT_FALSE(g->config.sparsity.last_block_dense);
  ASSERT_EQ(g->layers.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(g->layers[i].k_weight, ts[i].values) << "layer " << i;
    EXPECT_TRUE(g->layers[i].q_weight.empty());
  }
  // The loaded gate runs.
  std::vector<float> q(size_t(100) * 4 * 64, 0.5f), k(size_t(100) * 64, -0.25f);
  auto out = RunGate(g->layers[0], g->config, m, q.data(), k.data(), 100, g->config.sparsity);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->mask.num_blocks, 2);
}

TEST(LoadGates, SafetensorsLayout) {
  const ModelConfig m = TinyModel();
  GateDir dir("safetensors");
  dir.Write("config.json", ConfigJson(R"(, "seerattn_sparsity_method": "nz_ratio")"));
  const auto ts = ReleasedLayout(m);
  // Split across two files, as a sharded export would.
  dir.WriteSafetensors({ts[0]}, "a.safetensors");
  dir.WriteSafetensors({ts[1]}, "b.safetensors");
  auto g = LoadGates(dir.path(), m);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->config.sparsity.mode, SparsityMode::kNzRatio);
  EXPECT_EQ(g->layers[0].k_weight, ts[0].values);
  EXPECT_EQ(g->layers[1].k_weight, ts[1].values);
}

TEST(LoadGates, DoubleLinearForm) {
  // seerattn_gate_force_double: mask_linear_q [Hq, D, hidden] and
  // mask_linear_k per KV head [Hkv, 3D, hidden]; here hidden = 32.
  const ModelConfig m = TinyModel();
  GateDir dir("double");
  dir.Write("config.json", ConfigJson(R"(, "seerattn_gate_hidden_size": 32, "seerattn_gate_force_double": true)"));
  std::vector<GateTensor> ts;
  for (int i = 0; i < 2; ++i) {
    ts.push_back({KKey(i), {1, 192, 32}, Bf16Values(192 * 32, 7 + i)});
    ts.push_back({QKey(i), {4, 64, 32}, Bf16Values(4 * 64 * 32, 17 + i)});
  }
  dir.WritePth(ts);
  auto g = LoadGates(dir.path(), m);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->config.hidden, 32);
  EXPECT_EQ(g->layers[1].k_weight, ts[2].values);
  EXPECT_EQ(g->layers[1].q_weight, ts[3].values);
  EXPECT_EQ(g->layers[1].q_in, 64);
  std::vector<float> q(size_t(70) * 4 * 64, 0.5f), k(size_t(70) * 64, -0.25f);
  EXPECT_TRUE(RunGate(g->layers[1], g->config, m, q.data(), k.data(), 70, g->config.sparsity).ok());
  // Without its q weights the same config is incomplete.
  GateDir dir2("double_missing_q");
  dir2.Write("config.json", ConfigJson(R"(, "seerattn_gate_hidden_size": 32, "seerattn_gate_force_double": true)"));
  dir2.WritePth({ts[0], ts[2]});
  ExpectError(LoadGates(dir2.path(), m), StatusCode::kInvalidArgument,
              "missing key model.layers.0.self_attn.attn_gate.mask_linear_q.weight");
}

TEST(LoadGates, MissingLayer) {
  const ModelConfig m = TinyModel();
  GateDir dir("missing");
  dir.Write("config.json", ConfigJson());
  auto ts = ReleasedLayout(m);
  ts.pop_back();
  dir.WritePth(ts);
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument,
              "missing key model.layers.1.self_attn.attn_gate.mask_linear_k.weight");
}

TEST(LoadGates, ShapeThatDoesNotMatchTheModel) {
  const ModelConfig m = TinyModel();
  GateDir dir("shape");
  dir.Write("config.json", ConfigJson());
  auto ts = ReleasedLayout(m);
  ts[1].shape = {4, 192, 32};
  ts[1].values.resize(4 * 192 * 32);
  dir.WritePth(ts);
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument,
              "key " + KKey(1) + " has shape [4, 192, 32], the model needs [Hq, 3*head_dim, hidden] = [4, 192, 64]");
  // The same gates against a model with more heads.
  GateDir dir2("heads");
  dir2.Write("config.json", ConfigJson());
  dir2.WritePth(ReleasedLayout(m));
  ModelConfig wider = m;
  wider.num_heads = 8;
  wider.num_kv_heads = 2;
  dir2.Write("config.json", ConfigJson(R"(, "num_attention_heads": 8, "num_key_value_heads": 2)"));
  ExpectError(LoadGates(dir2.path(), wider), StatusCode::kInvalidArgument, "[4, 192, 64], the model needs");
}

TEST(LoadGates, ExtraLayerAndUnexpectedTensors) {
  const ModelConfig m = TinyModel();
  GateDir dir("extra");
  dir.Write("config.json", ConfigJson());
  auto ts = ReleasedLayout(m);
  ts.push_back({KKey(2), {4, 192, 64}, std::vector<float>(4 * 192 * 64)});
  dir.WritePth(ts);
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument, "is for layer 2 but the model has 2 layers");

  auto other = ReleasedLayout(m);
  other.push_back({"model.layers.0.self_attn.attn_gate.attngate_qnorm.weight", {64}, std::vector<float>(64)});
  dir.WritePth(other);
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument,
              "unexpected tensor 'model.layers.0.self_attn.attn_gate.attngate_qnorm.weight'");

  auto q = ReleasedLayout(m);
  q.push_back({QKey(0), {4, 64, 64}, std::vector<float>(4 * 64 * 64)});
  dir.WritePth(q);
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument, "has no mask_linear_q");
}

TEST(LoadGates, WrongDtype) {
  const ModelConfig m = TinyModel();
  GateDir pth("dtype_pth");
  pth.Write("config.json", ConfigJson());
  pth.WritePth(ReleasedLayout(m), "LongStorage");
  ExpectError(LoadGates(pth.path(), m), StatusCode::kInvalidArgument, "torch.LongStorage");

  GateDir st("dtype_st");
  st.Write("config.json", ConfigJson());
  SafetensorsWriter w;
  std::vector<int32_t> ints(4 * 192 * 64);
  w.Add(KKey(0), DType::kI32, {4, 192, 64}, ints.data(), ints.size() * 4);
  ASSERT_TRUE(w.WriteFile(st.path() + "/gates.safetensors").ok());
  ExpectError(LoadGates(st.path(), m), StatusCode::kInvalidArgument, "has dtype I32");
}

// A diverged training run's inf or NaN weights are refused, naming the key
// and the element, in both file formats.
TEST(LoadGates, NonFiniteWeightsAreRefused) {
  const ModelConfig m = TinyModel();
  for (const float bad : {INFINITY, -INFINITY, NAN}) {
    auto ts = ReleasedLayout(m);
    ts[1].values[77] = bad;
    GateDir st("nonfinite_st");
    st.Write("config.json", ConfigJson());
    st.WriteSafetensors(ts, "gates.safetensors");
    ExpectError(LoadGates(st.path(), m), StatusCode::kInvalidArgument, "element 77 is");
    GateDir pth("nonfinite_pth");
    pth.Write("config.json", ConfigJson());
    pth.WritePth(ts);
    ExpectError(LoadGates(pth.path(), m), StatusCode::kInvalidArgument, "gate weights must be finite");
  }
}

TEST(LoadGates, HostilePthIsRefused) {
  const ModelConfig m = TinyModel();
  GateDir dir("hostile");
  dir.Write("config.json", ConfigJson());
  testing::PickleWriter w;
  w.Global("os", "system");
  w.Str("touch /tmp/seer_pwned");
  w.raw() += "\x85R.";
  dir.Write("attn_gate_weights.pth", PthArchive(w.raw(), {}));
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument, "global 'os.system' is not allowed");
  EXPECT_FALSE(fs::exists("/tmp/seer_pwned"));
  // A truncated file.
  GateDir cut("truncated");
  cut.Write("config.json", ConfigJson());
  cut.WritePth(ReleasedLayout(m));
  std::string bytes;
  {
    std::ifstream in(cut.path() + "/attn_gate_weights.pth", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  cut.Write("attn_gate_weights.pth", bytes.substr(0, bytes.size() / 2));
  ExpectError(LoadGates(cut.path(), m), StatusCode::kInvalidArgument, "not a valid zip archive");
}

TEST(LoadGates, ConfigErrorsNameTheField) {
  const ModelConfig m = TinyModel();
  struct Case {
    std::string extra, needle;
  };
  const Case cases[] = {
      {R"(, "seerattn_gate_type": "Qavg_Kmaxmin")", "'seerattn_gate_type' is 'Qavg_Kmaxmin'"},
      {R"(, "seerattn_gate_block_size": 32)", "'seerattn_gate_block_size' is 32; only 64"},
      {R"(, "seerattn_gate_hidden_size": 63)", "'seerattn_gate_hidden_size' is 63"},
      {R"(, "seerattn_sparsity_method": "token_budget")", "'seerattn_sparsity_method' is 'token_budget'"},
      {R"(, "seerattn_threshold": 1.5)", "'seerattn_threshold' is 1.5; need 0 <= T < 1"},
      {R"(, "seerattn_nz_ratio": 0)", "'seerattn_nz_ratio' is 0; need 0 < R <= 1"},
      {R"(, "seerattn_last_block_dense": "yes")", "'seerattn_last_block_dense' must be true or false"},
      {R"(, "seerattn_gate_block_size": 64.5)", "'seerattn_gate_block_size' must be an integer"},
      {R"(, "num_attention_heads": 32)",
       "'num_attention_heads' is 32 but the model has 4 (the gates were trained for tiny/llama)"},
      {R"(, "num_hidden_layers": 3)", "'num_hidden_layers' is 3 but the model has 2"},
  };
  for (const Case& c : cases) {
    GateDir dir("config");
    dir.Write("config.json", ConfigJson(c.extra));
    dir.WritePth(ReleasedLayout(m));
    auto r = LoadGates(dir.path(), m);
    ExpectError(r, StatusCode::kInvalidArgument, c.needle);
    EXPECT_NE(r.status().message().find("config.json"), std::string::npos) << r.status().message();
  }
}

TEST(LoadGates, DefaultsFollowTheAuthorsConfigClass) {
  // Only the fields that differ from the defaults: hidden (128 by default)
  // must match head_dim 64 here.
  const ModelConfig m = TinyModel();
  GateDir dir("defaults");
  dir.Write("config.json", R"({"seerattn_gate_hidden_size": 64})");
  dir.WritePth(ReleasedLayout(m));
  auto g = LoadGates(dir.path(), m);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->config.sparsity.mode, SparsityMode::kThreshold);
  EXPECT_EQ(g->config.sparsity.threshold, 0.0);
  EXPECT_EQ(g->config.sparsity.nz_ratio, 1.0);
  EXPECT_TRUE(g->config.sparsity.last_block_dense);
  EXPECT_EQ(g->config.block_size, 64);
  EXPECT_TRUE(g->config.base_model.empty());
}

// The fixture gates were written by real torch.save (tools/make_fixtures.py).
// Their bf16 weights must come through bit for bit: compare with the raw
// storage bytes, found here by walking the zip's local headers directly.
TEST(LoadGates, FixtureGatesWrittenByTorch) {
  for (const std::string model_name : {"llama", "qwen2"}) {
    const std::string fixtures = SEER_FIXTURES_DIR;
    const std::string dir = fixtures + "/" + model_name + "_gates";
    if (!fs::exists(dir + "/attn_gate_weights.pth")) GTEST_SKIP() << "no fixture gates in " << dir;
    auto model = LoadModelConfig(fixtures + "/" + model_name + "/config.json");
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    auto g = LoadGates(dir, *model);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    ASSERT_EQ(int(g->layers.size()), model->num_layers);

    std::string bytes;
    {
      std::ifstream in(dir + "/attn_gate_weights.pth", std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    // Storage i of the pickle holds layer i's weight (torch numbers storages
    // in the order it meets them, and the dict is in layer order).
    for (int i = 0; i < model->num_layers; ++i) {
      const std::string name = "attn_gate_weights/data/" + std::to_string(i);
      size_t at = 0;
      for (;;) {
        at = bytes.find(std::string("PK\x03\x04", 4), at);
        ASSERT_NE(at, std::string::npos) << name;
        const size_t name_len = uint8_t(bytes[at + 26]) | uint8_t(bytes[at + 27]) << 8;
        const size_t extra_len = uint8_t(bytes[at + 28]) | uint8_t(bytes[at + 29]) << 8;
        if (bytes.compare(at + 30, name_len, name) == 0) {
          at += 30 + name_len + extra_len;
          break;
        }
        at += 4;
      }
      const std::vector<float>& w = g->layers[i].k_weight;
      ASSERT_EQ(w.size(), size_t(model->num_heads) * 3 * model->head_dim * g->config.hidden);
      for (size_t j = 0; j < w.size(); ++j) {
        const uint32_t bits = (uint32_t(uint8_t(bytes[at + 2 * j])) | uint32_t(uint8_t(bytes[at + 2 * j + 1])) << 8)
                              << 16;
        float expected;
        std::memcpy(&expected, &bits, 4);
        ASSERT_EQ(w[j], expected) << model_name << " layer " << i << " element " << j;
      }
    }
  }
}

TEST(LoadGates, MissingFiles) {
  const ModelConfig m = TinyModel();
  GateDir dir("empty");
  ExpectError(LoadGates(dir.path(), m), StatusCode::kNotFound, "config.json");
  dir.Write("config.json", ConfigJson());
  ExpectError(LoadGates(dir.path(), m), StatusCode::kNotFound, "no attn_gate_weights.pth and no *.safetensors");
  dir.Write("config.json", "{\"seerattn_threshold\": ");
  ExpectError(LoadGates(dir.path(), m), StatusCode::kInvalidArgument, "config.json");
}

}  // namespace
}  // namespace seer
