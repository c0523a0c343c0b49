// CpuEngine end to end on tiny random checkpoints written here: logits and
// KV cache against a float64 forward pass written independently in this file
// (HF Llama/Qwen2 semantics), decode against a longer prefill, input
// validation, the layer observer, and the prefill time of 1000 tokens
// through a ~1M-parameter model (printed, not asserted).
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/cpu_engine.h"
#include "engine/engine.h"
#include "formats/safetensors.h"
#include "tests/logprobs_util.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

// ---- a tiny checkpoint on disk -----------------------------------------------

struct TinySpec {
  std::string arch = "LlamaForCausalLM";
  int vocab = 96, hidden = 64, inter = 96, layers = 2, heads = 4, kv_heads = 1, head_dim = 32;
  bool attention_bias = false;  // Llama: q/k/v/o biases. Qwen2 always has q/k/v biases.
  bool tied = false;
  bool llama3 = false;  // rope_scaling type llama3
  double theta = 10000.0;
  int max_pos = 2048;
  double eps = 1e-5;
  bool bf16 = true;
  uint32_t seed = 1;

  bool qwen2() const { return arch == "Qwen2ForCausalLM"; }
  bool qkv_bias() const { return qwen2() || attention_bias; }
  bool o_bias() const { return !qwen2() && attention_bias; }
};

// The weights exactly as stored (bf16 values widened to float), by HF name.
struct TinyModel {
  TinySpec spec;
  std::string dir;
  std::map<std::string, std::vector<float>> w;
  const std::vector<float>& at(const std::string& name) const { return w.at(name); }
};

std::string ConfigJson(const TinySpec& s) {
  std::string j = "{\n";
  j += "  \"architectures\": [\"" + s.arch + "\"],\n";
  j += "  \"model_type\": \"" + std::string(s.qwen2() ? "qwen2" : "llama") + "\",\n";
  j += "  \"vocab_size\": " + std::to_string(s.vocab) + ",\n";
  j += "  \"hidden_size\": " + std::to_string(s.hidden) + ",\n";
  j += "  \"intermediate_size\": " + std::to_string(s.inter) + ",\n";
  j += "  \"num_hidden_layers\": " + std::to_string(s.layers) + ",\n";
  j += "  \"num_attention_heads\": " + std::to_string(s.heads) + ",\n";
  j += "  \"num_key_value_heads\": " + std::to_string(s.kv_heads) + ",\n";
  j += "  \"head_dim\": " + std::to_string(s.head_dim) + ",\n";
  j += "  \"max_position_embeddings\": " + std::to_string(s.max_pos) + ",\n";
  j += "  \"rms_norm_eps\": " + std::to_string(s.eps) + ",\n";
  j += "  \"rope_theta\": " + std::to_string(s.theta) + ",\n";
  if (s.llama3) {
    j += "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
         "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64},\n";
  }
  if (!s.qwen2()) j += "  \"attention_bias\": " + std::string(s.attention_bias ? "true" : "false") + ",\n";
  j += "  \"hidden_act\": \"silu\",\n";
  j += "  \"tie_word_embeddings\": " + std::string(s.tied ? "true" : "false") + ",\n";
  j += "  \"torch_dtype\": \"" + std::string(s.bf16 ? "bfloat16" : "float32") + "\"\n}\n";
  return j;
}

TinyModel WriteTinyModel(const TinySpec& spec, const std::string& dir) {
  TinyModel m;
  m.spec = spec;
  m.dir = dir;
  fs::create_directories(dir);
  std::mt19937 rng(spec.seed);
  SafetensorsWriter writer;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> values(n);
    std::vector<uint16_t> bf(n);
    for (int64_t i = 0; i < n; ++i) {
      values[i] = dist(rng);
      if (spec.bf16) {
        bf[i] = FloatToBf16(values[i]);
        values[i] = Bf16ToFloat(bf[i]);
      }
    }
    if (spec.bf16) {
      writer.Add(name, DType::kBF16, shape, bf.data(), bf.size() * 2);
    } else {
      writer.AddF32(name, shape, values);
    }
    m.w[name] = std::move(values);
  };
  const int H = spec.hidden, D = spec.head_dim, I = spec.inter;
  const int qd = spec.heads * D, kvd = spec.kv_heads * D;
  const float a_h = 1.8f / std::sqrt(float(H)), a_q = 1.0f / std::sqrt(float(qd)), a_i = 1.0f / std::sqrt(float(I));
  add("model.embed_tokens.weight", {spec.vocab, H}, -1.0f, 1.0f);
  for (int l = 0; l < spec.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, 0.7f, 1.3f);
    add(p + "post_attention_layernorm.weight", {H}, 0.7f, 1.3f);
    add(p + "self_attn.q_proj.weight", {qd, H}, -a_h, a_h);
    add(p + "self_attn.k_proj.weight", {kvd, H}, -a_h, a_h);
    add(p + "self_attn.v_proj.weight", {kvd, H}, -a_h, a_h);
    add(p + "self_attn.o_proj.weight", {H, qd}, -a_q, a_q);
    if (spec.qkv_bias()) {
      add(p + "self_attn.q_proj.bias", {qd}, -0.5f, 0.5f);
      add(p + "self_attn.k_proj.bias", {kvd}, -0.5f, 0.5f);
      add(p + "self_attn.v_proj.bias", {kvd}, -0.5f, 0.5f);
    }
    if (spec.o_bias()) add(p + "self_attn.o_proj.bias", {H}, -0.2f, 0.2f);
    add(p + "mlp.gate_proj.weight", {I, H}, -a_h, a_h);
    add(p + "mlp.up_proj.weight", {I, H}, -a_h, a_h);
    add(p + "mlp.down_proj.weight", {H, I}, -a_i, a_i);
  }
  add("model.norm.weight", {H}, 0.7f, 1.3f);
  if (!spec.tied) add("lm_head.weight", {spec.vocab, H}, -a_h, a_h);
  EXPECT_TRUE(writer.WriteFile(dir + "/model.safetensors").ok());
  std::ofstream(dir + "/config.json") << ConfigJson(spec);
  return m;
}

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(base ? base : fs::temp_directory_path().string()) /
                 ("seer_cpu_model_" + std::to_string(getpid()) + "_" + name);
  fs::remove_all(dir);
  return dir.string();
}

// ---- the float64 reference forward ---------------------------------------------

std::vector<double> RefInvFreq(const TinySpec& s) {
  const int half = s.head_dim / 2;
  std::vector<double> f(half);
  for (int i = 0; i < half; ++i) f[i] = 1.0 / std::pow(s.theta, 2.0 * i / s.head_dim);
  if (s.llama3) {
    // Llama 3.1 scaling with factor 8, low 1, high 4, original context 64.
    const double factor = 8.0, low = 1.0, high = 4.0, ctx = 64.0;
    for (double& x : f) {
      const double wavelen = 2.0 * M_PI / x;
      if (wavelen < ctx / high) continue;
      if (wavelen > ctx / low) {
        x /= factor;
      } else {
        const double smooth = (ctx / wavelen - low) / (high - low);
        x = (1.0 - smooth) * x / factor + smooth * x;
      }
    }
  }
  return f;
}

struct RefOutput {
  std::vector<double> logits;  // [L, vocab]
  std::vector<std::vector<double>> k, v;  // per layer [Hkv, L, D]
};

// allowed(layer, head, i, j): extra mask on top of causality (block-sparse).
template <typename Allowed>
RefOutput RefForward(const TinyModel& m, const std::vector<int32_t>& ids, Allowed allowed) {
  const TinySpec& s = m.spec;
  const int L = static_cast<int>(ids.size()), H = s.hidden, D = s.head_dim, I = s.inter;
  const int Hq = s.heads, Hkv = s.kv_heads;
  auto linear = [](const std::vector<double>& x, int rows, int in, const std::vector<float>& w, int out,
                   const std::vector<float>* bias) {
    std::vector<double> y(size_t(rows) * out);
    for (int r = 0; r < rows; ++r)
      for (int o = 0; o < out; ++o) {
        double acc = bias ? (*bias)[o] : 0.0;
        for (int i = 0; i < in; ++i) acc += x[size_t(r) * in + i] * double(w[size_t(o) * in + i]);
        y[size_t(r) * out + o] = acc;
      }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& w) {
    std::vector<double> y(x.size());
    for (int r = 0; r < L; ++r) {
      double ss = 0.0;
      for (int i = 0; i < H; ++i) ss += x[size_t(r) * H + i] * x[size_t(r) * H + i];
      const double inv = 1.0 / std::sqrt(ss / H + s.eps);
      for (int i = 0; i < H; ++i) y[size_t(r) * H + i] = x[size_t(r) * H + i] * inv * w[i];
    }
    return y;
  };
  const std::vector<double> inv_freq = RefInvFreq(s);
  auto rope = [&](std::vector<double>& x, int heads) {
    const int half = D / 2;
    for (int t = 0; t < L; ++t)
      for (int h = 0; h < heads; ++h) {
        double* v = x.data() + (size_t(t) * heads + h) * D;
        for (int i = 0; i < half; ++i) {
          // HF forms the angle in float32: float(pos) * float(inv_freq).
          const double angle = double(float(t) * float(inv_freq[i]));
          const double lo = v[i], hi = v[i + half];
          v[i] = lo * std::cos(angle) - hi * std::sin(angle);
          v[i + half] = hi * std::cos(angle) + lo * std::sin(angle);
        }
      }
  };
  const std::vector<float>* none = nullptr;

  RefOutput out;
  std::vector<double> x(size_t(L) * H);
  for (int t = 0; t < L; ++t)
    for (int i = 0; i < H; ++i) x[size_t(t) * H + i] = m.at("model.embed_tokens.weight")[size_t(ids[t]) * H + i];
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto bias = [&](const std::string& n) { return m.w.count(p + n) ? &m.at(p + n) : none; };
    auto h = rmsnorm(x, m.at(p + "input_layernorm.weight"));
    auto q = linear(h, L, H, m.at(p + "self_attn.q_proj.weight"), Hq * D, bias("self_attn.q_proj.bias"));
    auto k = linear(h, L, H, m.at(p + "self_attn.k_proj.weight"), Hkv * D, bias("self_attn.k_proj.bias"));
    auto v = linear(h, L, H, m.at(p + "self_attn.v_proj.weight"), Hkv * D, bias("self_attn.v_proj.bias"));
    rope(q, Hq);
    rope(k, Hkv);
    std::vector<double> kc(size_t(Hkv) * L * D), vc(size_t(Hkv) * L * D);
    for (int t = 0; t < L; ++t)
      for (int g = 0; g < Hkv; ++g)
        for (int d = 0; d < D; ++d) {
          kc[(size_t(g) * L + t) * D + d] = k[(size_t(t) * Hkv + g) * D + d];
          vc[(size_t(g) * L + t) * D + d] = v[(size_t(t) * Hkv + g) * D + d];
        }
    std::vector<double> attn(size_t(L) * Hq * D, 0.0);
    for (int hq = 0; hq < Hq; ++hq) {
      const int g = hq / (Hq / Hkv);
      for (int i = 0; i < L; ++i) {
        std::vector<double> sc(i + 1, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          if (!allowed(l, hq, i, j)) continue;
          double dot = 0.0;
          for (int d = 0; d < D; ++d) dot += q[(size_t(i) * Hq + hq) * D + d] * kc[(size_t(g) * L + j) * D + d];
          sc[j] = dot / std::sqrt(double(D));
          mx = std::max(mx, sc[j]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(sc[j] - mx);
        for (int j = 0; j <= i; ++j) {
          const double pr = std::exp(sc[j] - mx) / sum;
          for (int d = 0; d < D; ++d) attn[(size_t(i) * Hq + hq) * D + d] += pr * vc[(size_t(g) * L + j) * D + d];
        }
      }
    }
    auto o = linear(attn, L, Hq * D, m.at(p + "self_attn.o_proj.weight"), H, bias("self_attn.o_proj.bias"));
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    auto h2 = rmsnorm(x, m.at(p + "post_attention_layernorm.weight"));
    auto gate = linear(h2, L, H, m.at(p + "mlp.gate_proj.weight"), I, none);
    auto up = linear(h2, L, H, m.at(p + "mlp.up_proj.weight"), I, none);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
    auto down = linear(gate, L, I, m.at(p + "mlp.down_proj.weight"), H, none);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
    out.k.push_back(std::move(kc));
    out.v.push_back(std::move(vc));
  }
  auto final_h = rmsnorm(x, m.at("model.norm.weight"));
  const std::string head = s.tied ? "model.embed_tokens.weight" : "lm_head.weight";
  out.logits = linear(final_h, L, H, m.at(head), s.vocab, none);
  return out;
}

RefOutput RefForward(const TinyModel& m, const std::vector<int32_t>& ids) {
  return RefForward(m, ids, [](int, int, int, int) { return true; });
}

// ||got - want|| / ||want||.
double RelError(const float* got, const double* want, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

std::vector<int32_t> RandomIds(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = dist(rng);
  return ids;
}

std::unique_ptr<Engine> MustCreate(const std::string& dir, int threads = 2) {
  EngineOptions o;
  o.model_dir = dir;
  o.device = "cpu";
  o.threads = threads;
  auto e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

// Prefills `ids` with every row of logits and checks logits and the cache
// against the float64 forward.
void ExpectMatchesReference(const TinyModel& m, const std::vector<int32_t>& ids, int threads) {
  auto engine = MustCreate(m.dir, threads);
  ASSERT_NE(engine, nullptr);
  const int L = static_cast<int>(ids.size());
  auto cache = engine->NewCache(L + 5);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  PrefillOptions opts;
  opts.all_logits = true;
  auto result = engine->Prefill(ids, opts, cache->get(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  const RefOutput ref = RefForward(m, ids);
  ASSERT_EQ(result->logits_rows, L);
  ASSERT_EQ(result->logits.size(), ref.logits.size());
  EXPECT_LT(RelError(result->logits.data(), ref.logits.data(), ref.logits.size()), 1e-5) << m.spec.arch;
  EXPECT_EQ((*cache)->length(), L);
  ASSERT_EQ(result->layer_density.size(), size_t(m.spec.layers));
  for (double d : result->layer_density) EXPECT_EQ(d, 1.0);
  EXPECT_EQ(result->overall_density, 1.0);
  const size_t n = size_t(m.spec.kv_heads) * L * m.spec.head_dim;
  std::vector<float> k(n), v(n);
  for (int l = 0; l < m.spec.layers; ++l) {
    ASSERT_TRUE((*cache)->ReadLayer(l, 0, L, k.data(), v.data()).ok());
    EXPECT_LT(RelError(k.data(), ref.k[l].data(), n), 1e-5) << "layer " << l << " K";
    EXPECT_LT(RelError(v.data(), ref.v[l].data(), n), 1e-5) << "layer " << l << " V";
  }
  // Each row on its own must be right too, not just the bulk.
  for (int t : {0, L / 2, L - 1}) {
    EXPECT_LT(RelError(result->logits.data() + size_t(t) * m.spec.vocab, ref.logits.data() + size_t(t) * m.spec.vocab,
                       m.spec.vocab),
              1e-5)
        << "row " << t;
  }
}

// ---- tests --------------------------------------------------------------------

TEST(CpuModel, LlamaGqa4UntiedLlama3RopeMatchesFloat64) {
  TinySpec s;
  s.llama3 = true;
  s.theta = 500000.0;
  TinyModel m = WriteTinyModel(s, TempDir("llama"));
  ExpectMatchesReference(m, RandomIds(150, s.vocab, 7), 2);
  ExpectMatchesReference(m, RandomIds(1, s.vocab, 8), 1);
  ExpectMatchesReference(m, RandomIds(64, s.vocab, 9), 3);
  fs::remove_all(m.dir);
}

TEST(CpuModel, LlamaAttentionBiasFloat32WeightsMatchesFloat64) {
  TinySpec s;
  s.attention_bias = true;
  s.bf16 = false;
  s.heads = 8;
  s.kv_heads = 1;
  s.head_dim = 16;
  s.layers = 3;
  s.seed = 3;
  TinyModel m = WriteTinyModel(s, TempDir("llama_bias"));
  ExpectMatchesReference(m, RandomIds(97, s.vocab, 10), 2);
  fs::remove_all(m.dir);
}

TEST(CpuModel, Qwen2BiasesTiedEmbeddingsMatchesFloat64) {
  TinySpec s;
  s.arch = "Qwen2ForCausalLM";
  s.tied = true;
  s.heads = 2;
  s.kv_heads = 1;
  s.head_dim = 64;
  s.theta = 1000000.0;
  s.seed = 5;
  TinyModel m = WriteTinyModel(s, TempDir("qwen2"));
  ExpectMatchesReference(m, RandomIds(77, s.vocab, 11), 2);
  ExpectMatchesReference(m, RandomIds(130, s.vocab, 12), 1);
  fs::remove_all(m.dir);
}

TEST(CpuModel, LastRowLogitsEqualLastRowOfAll) {
  TinySpec s;
  TinyModel m = WriteTinyModel(s, TempDir("lastrow"));
  auto engine = MustCreate(m.dir);
  auto ids = RandomIds(70, s.vocab, 13);
  auto c1 = engine->NewCache(70);
  auto c2 = engine->NewCache(70);
  PrefillOptions all;
  all.all_logits = true;
  auto r_all = engine->Prefill(ids, all, c1->get(), nullptr);
  auto r_last = engine->Prefill(ids, PrefillOptions{}, c2->get(), nullptr);
  ASSERT_TRUE(r_all.ok() && r_last.ok());
  ASSERT_EQ(r_last->logits_rows, 1);
  ASSERT_EQ(r_last->logits.size(), size_t(s.vocab));
  std::vector<double> want(r_all->logits.end() - s.vocab, r_all->logits.end());
  EXPECT_LT(RelError(r_last->logits.data(), want.data(), s.vocab), 1e-6);
  fs::remove_all(m.dir);
}

// Prompt logprobs over more rows than one chunk (64): each entry against the
// same engine's every-row logits (all_logits), in long double; asking for
// them changes neither the last row's logits nor the cache.
TEST(CpuModel, PromptLogprobsInChunksAreThoseOfEveryRowsLogits) {
  TinySpec s;
  TinyModel m = WriteTinyModel(s, TempDir("promptlp"));
  auto engine = MustCreate(m.dir);
  const int L = 150;
  auto ids = RandomIds(L, s.vocab, 21);
  auto c1 = engine->NewCache(L);
  auto c2 = engine->NewCache(L);
  PrefillOptions all;
  all.all_logits = true;
  PrefillOptions asked;
  asked.prompt_logprobs = 2;
  auto r_all = engine->Prefill(ids, all, c1->get(), nullptr);
  auto r_asked = engine->Prefill(ids, asked, c2->get(), nullptr);
  ASSERT_TRUE(r_all.ok() && r_asked.ok());
  EXPECT_TRUE(r_all->prompt_logprobs.empty());
  ASSERT_EQ(r_asked->logits_rows, 1);
  EXPECT_TRUE(std::equal(r_asked->logits.begin(), r_asked->logits.end(), r_all->logits.end() - s.vocab));
  logprobs_test::ExpectPromptLogprobs(r_all->logits, ids, r_asked->prompt_logprobs, 2, 1e-5);
  fs::remove_all(m.dir);
}

TEST(CpuModel, PrefillThenDecodeEqualsLongerPrefill) {
  for (bool qwen : {false, true}) {
    TinySpec s;
    if (qwen) {
      s.arch = "Qwen2ForCausalLM";
      s.tied = true;
      s.heads = 2;
    }
    TinyModel m = WriteTinyModel(s, TempDir(qwen ? "decode_qwen" : "decode_llama"));
    auto engine = MustCreate(m.dir);
    const int prompt = 66, extra = 6;
    auto ids = RandomIds(prompt + extra, s.vocab, 14);
    // The long prefill, every row.
    auto full_cache = engine->NewCache(prompt + extra);
    PrefillOptions all;
    all.all_logits = true;
    auto full = engine->Prefill(ids, all, full_cache->get(), nullptr);
    ASSERT_TRUE(full.ok()) << full.status().ToString();
    // The short prefill, then one decode step per remaining token.
    auto cache = engine->NewCache(prompt + extra);
    auto head = engine->Prefill(std::span<const int32_t>(ids.data(), prompt), PrefillOptions{}, cache->get(), nullptr);
    ASSERT_TRUE(head.ok()) << head.status().ToString();
    std::vector<float> logits;
    for (int t = prompt; t < prompt + extra; ++t) {
      ASSERT_TRUE(engine->DecodeStep(ids[t], cache->get(), &logits).ok());
      ASSERT_EQ((*cache)->length(), t + 1);
      std::vector<double> want(full->logits.begin() + size_t(t) * s.vocab,
                               full->logits.begin() + size_t(t + 1) * s.vocab);
      EXPECT_LT(RelError(logits.data(), want.data(), s.vocab), 1e-5) << "position " << t;
    }
    // And the caches agree token for token.
    const int L = prompt + extra;
    const size_t n = size_t(s.kv_heads) * L * s.head_dim;
    std::vector<float> k1(n), v1(n), k2(n), v2(n);
    for (int l = 0; l < s.layers; ++l) {
      ASSERT_TRUE((*full_cache)->ReadLayer(l, 0, L, k1.data(), v1.data()).ok());
      ASSERT_TRUE((*cache)->ReadLayer(l, 0, L, k2.data(), v2.data()).ok());
      std::vector<double> k1d(k1.begin(), k1.end()), v1d(v1.begin(), v1.end());
      EXPECT_LT(RelError(k2.data(), k1d.data(), n), 1e-6) << "layer " << l;
      EXPECT_LT(RelError(v2.data(), v1d.data(), n), 1e-6) << "layer " << l;
    }
    fs::remove_all(m.dir);
  }
}

TEST(CpuModel, DecodeFromEmptyCacheEqualsPrefillOfOneToken) {
  TinySpec s;
  TinyModel m = WriteTinyModel(s, TempDir("decode_empty"));
  auto engine = MustCreate(m.dir);
  auto cache = engine->NewCache(4);
  std::vector<float> logits;
  ASSERT_TRUE(engine->DecodeStep(5, cache->get(), &logits).ok());
  const RefOutput ref = RefForward(m, {5});
  EXPECT_LT(RelError(logits.data(), ref.logits.data(), s.vocab), 1e-5);
  fs::remove_all(m.dir);
}

TEST(CpuModel, BadInputsAreErrorsThatNameTheProblem) {
  TinySpec s;
  s.max_pos = 128;
  TinyModel m = WriteTinyModel(s, TempDir("bad"));
  auto engine = MustCreate(m.dir);
  auto cache = engine->NewCache(16);
  ASSERT_TRUE(cache.ok());

  auto empty = engine->Prefill({}, PrefillOptions{}, cache->get(), nullptr);
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos) << empty.status().message();

  std::vector<int32_t> too_big = {1, 2, s.vocab, 3};
  auto oov = engine->Prefill(too_big, PrefillOptions{}, cache->get(), nullptr);
  EXPECT_EQ(oov.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(oov.status().message().find("ids[2]"), std::string::npos) << oov.status().message();
  EXPECT_NE(oov.status().message().find(std::to_string(s.vocab)), std::string::npos) << oov.status().message();

  std::vector<int32_t> negative = {-1};
  EXPECT_EQ(engine->Prefill(negative, PrefillOptions{}, cache->get(), nullptr).status().code(),
            StatusCode::kInvalidArgument);

  auto long_ids = RandomIds(17, s.vocab, 1);
  auto too_long = engine->Prefill(long_ids, PrefillOptions{}, cache->get(), nullptr);
  EXPECT_EQ(too_long.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(too_long.status().message().find("16"), std::string::npos) << too_long.status().message();

  auto beyond_model = engine->NewCache(129);
  EXPECT_EQ(beyond_model.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(beyond_model.status().message().find("max_position_embeddings"), std::string::npos);
  EXPECT_EQ(engine->NewCache(0).status().code(), StatusCode::kInvalidArgument);

  // Prefill needs an empty cache; decode stops at the capacity.
  auto ids = RandomIds(16, s.vocab, 2);
  ASSERT_TRUE(engine->Prefill(ids, PrefillOptions{}, cache->get(), nullptr).ok());
  EXPECT_EQ(engine->Prefill(ids, PrefillOptions{}, cache->get(), nullptr).status().code(),
            StatusCode::kFailedPrecondition);
  std::vector<float> logits;
  EXPECT_EQ(engine->DecodeStep(1, cache->get(), &logits).code(), StatusCode::kResourceExhausted);
  auto small = engine->NewCache(4);
  EXPECT_EQ(engine->DecodeStep(s.vocab + 7, small->get(), &logits).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*small)->length(), 0);

  // WarmUp: max_tokens in [1, max_position_embeddings], and nothing to do
  // on the CPU (the GEMM tuner is CUDA's).
  EXPECT_EQ(engine->WarmUp(0).status().code(), StatusCode::kInvalidArgument);
  auto warm_beyond = engine->WarmUp(129);
  EXPECT_EQ(warm_beyond.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(warm_beyond.status().message().find("max_position_embeddings"), std::string::npos);
  auto warmed = engine->WarmUp(128);
  ASSERT_TRUE(warmed.ok()) << warmed.status().ToString();
  EXPECT_EQ(*warmed, "");

  // A cache of another shape is refused.
  HostKvCache other(s.layers + 1, s.kv_heads, s.head_dim, 16);
  EXPECT_EQ(engine->Prefill(ids, PrefillOptions{}, &other, nullptr).status().code(), StatusCode::kInvalidArgument);

  // Errors at load: a missing directory names it.
  EngineOptions o;
  o.model_dir = m.dir + "/nope";
  o.device = "cpu";
  auto missing = CreateEngine(o);
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos) << missing.status().message();
  o.model_dir = m.dir;
  o.device = "tpu";
  EXPECT_EQ(CreateEngine(o).status().code(), StatusCode::kInvalidArgument);
  fs::remove_all(m.dir);
}

TEST(CpuModel, ObserverSeesEveryLayerAndCanStopThePrefill) {
  TinySpec s;
  s.layers = 4;
  TinyModel m = WriteTinyModel(s, TempDir("observer"));
  auto engine = MustCreate(m.dir);
  auto ids = RandomIds(40, s.vocab, 3);
  const RefOutput ref = RefForward(m, ids);

  struct Recorder : PrefillObserver {
    int stop_after = -1;
    std::vector<int> layers;
    std::vector<double> k_error;
    const RefOutput* ref = nullptr;
    int kv_heads = 0, head_dim = 0;
    Status OnLayerDone(const LayerDone& done) override {
      layers.push_back(done.layer);
      // The layer's K must already be final when the observer hears of it.
      const size_t n = size_t(kv_heads) * done.seq_len * head_dim;
      std::vector<float> k(n), v(n);
      Status read = done.cache->ReadLayer(done.layer, 0, done.seq_len, k.data(), v.data());
      if (!read.ok()) return read;
      k_error.push_back(RelError(k.data(), ref->k[done.layer].data(), n));
      if (done.layer == stop_after) return Cancelled("client went away");
      return OkStatus();
    }
  };
  Recorder all;
  all.ref = &ref;
  all.kv_heads = s.kv_heads;
  all.head_dim = s.head_dim;
  auto cache = engine->NewCache(40);
  ASSERT_TRUE(engine->Prefill(ids, PrefillOptions{}, cache->get(), &all).ok());
  EXPECT_EQ(all.layers, (std::vector<int>{0, 1, 2, 3}));
  for (double e : all.k_error) EXPECT_LT(e, 1e-5);

  Recorder stopper;
  stopper.ref = &ref;
  stopper.kv_heads = s.kv_heads;
  stopper.head_dim = s.head_dim;
  stopper.stop_after = 1;
  auto cache2 = engine->NewCache(40);
  auto stopped = engine->Prefill(ids, PrefillOptions{}, cache2->get(), &stopper);
  EXPECT_EQ(stopped.status().code(), StatusCode::kCancelled);
  EXPECT_EQ(stopper.layers, (std::vector<int>{0, 1}));
  fs::remove_all(m.dir);
}

TEST(CpuModel, PrefillTimeOf1000TokensThroughAMillionParameters) {
  TinySpec s;
  s.vocab = 512;
  s.hidden = 128;
  s.inter = 384;
  s.layers = 4;
  s.heads = 2;
  s.kv_heads = 1;
  s.head_dim = 64;
  TinyModel m = WriteTinyModel(s, TempDir("timing"));
  int64_t params = 0;
  for (const auto& [name, w] : m.w) params += static_cast<int64_t>(w.size());
  auto engine = MustCreate(m.dir, 0);
  ASSERT_NE(engine, nullptr);
  auto ids = RandomIds(1000, s.vocab, 4);
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    auto cache = engine->NewCache(1000);
    auto result = engine->Prefill(ids, PrefillOptions{}, cache->get(), nullptr);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    best = std::min(best, result->seconds);
    if (best > 2.0) break;  // a sanitizer build: one slow run says enough
  }
  std::printf("[ timing   ] prefill of 1000 tokens, %lld parameters, %s: %.1f ms (best run)\n",
              static_cast<long long>(params), engine->device_name().c_str(), best * 1e3);
  fs::remove_all(m.dir);
}

}  // namespace
}  // namespace seer

namespace seer {
namespace {

// profile_stages reports every stage's time and changes nothing else: the
// logits are the unprofiled run's, every stage ran, and the stages add up to
// no more than the whole prefill.
TEST(CpuModel, ProfiledPrefillReportsEachStageAndTheSameLogits) {
  TinySpec s;
  s.layers = 3;
  TinyModel m = WriteTinyModel(s, TempDir("profile"));
  auto engine = MustCreate(m.dir);
  auto ids = RandomIds(300, s.vocab, 9);
  auto cache_a = engine->NewCache(300);
  auto cache_b = engine->NewCache(300);
  ASSERT_TRUE(cache_a.ok() && cache_b.ok());
  PrefillOptions plain;
  PrefillOptions profiled;
  profiled.profile_stages = true;
  auto a = engine->Prefill(ids, plain, cache_a->get(), nullptr);
  auto b = engine->Prefill(ids, profiled, cache_b->get(), nullptr);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->logits, b->logits);
  EXPECT_EQ(a->stages.attention, 0.0) << "nothing is timed unless asked";
  const StageSeconds& t = b->stages;
  for (double v : {t.embed, t.attention_inputs, t.rope_and_cache, t.attention, t.output_and_mlp, t.logits}) {
    EXPECT_GT(v, 0.0);
  }
  EXPECT_EQ(t.gate, 0.0) << "no gates, no gate stage";
  const double sum =
      t.embed + t.attention_inputs + t.gate + t.rope_and_cache + t.attention + t.output_and_mlp + t.logits;
  EXPECT_LE(sum, b->seconds * 1.001);
}

}  // namespace
}  // namespace seer
