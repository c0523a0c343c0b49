// seer-random-checkpoint: writes a Hugging Face checkpoint with random bf16
// weights, and a SeerAttention gate directory with random gates, for the
// end-to-end benchmark (tools/bench_disagg.sh): the Llama-3.1-8B shape, no
// download. Also a tiny shape of the same architecture for the benchmark's
// CPU smoke run.
//
//   seer-random-checkpoint --out DIR [--gates-out DIR] [--shape llama-3.1-8b|tiny] [--layers N] [--seed S]
//
// DIR gets config.json, model-0000k-of-0000n.safetensors shards of at most
// --shard-mb and model.safetensors.index.json; the gate directory gets the
// base config plus the seerattn_* fields (nz_ratio 0.1 by default) and
// model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight [Hq, 3 * head_dim,
// head_dim] (docs/GATES.md). Weights are uniform with standard deviation 0.02
// (transformers' Llama initialisation has that spread), norms 1; gate weights
// have standard deviation 1/sqrt(3 * head_dim). A directory whose stamp says
// it holds this shape and seed already is kept (--force rewrites it).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "base/version.h"
#include "base/dtype.h"
#include "base/flags.h"
#include "base/json.h"
#include "formats/safetensors.h"

namespace seer {
namespace {

struct Shape {
  std::string name;
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, max_positions;
};

Shape ShapeNamed(const std::string& name, int64_t layers) {
  if (name == "tiny") return {"tiny", 512, 256, 512, layers > 0 ? layers : 2, 4, 2, 64, 4096};
  return {"llama-3.1-8b", 128256, 4096, 14336, layers > 0 ? layers : 32, 32, 8, 128, 131072};
}

std::string ConfigJson(const Shape& s, bool gates) {
  std::string c = "{\n";
  c += "  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n";
  c += "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n  \"hidden_act\": \"silu\",\n";
  c += "  \"hidden_size\": " + std::to_string(s.hidden) + ",\n";
  c += "  \"intermediate_size\": " + std::to_string(s.intermediate) + ",\n";
  c += "  \"num_hidden_layers\": " + std::to_string(s.layers) + ",\n";
  c += "  \"num_attention_heads\": " + std::to_string(s.heads) + ",\n";
  c += "  \"num_key_value_heads\": " + std::to_string(s.kv_heads) + ",\n";
  c += "  \"head_dim\": " + std::to_string(s.head_dim) + ",\n";
  c += "  \"max_position_embeddings\": " + std::to_string(s.max_positions) + ",\n";
  c += "  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 500000.0,\n";
  c += "  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
       "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192},\n";
  c += "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\",\n";
  c += "  \"vocab_size\": " + std::to_string(s.vocab);
  if (gates) {
    c += ",\n  \"base_model\": \"random " + s.name + " (seer-random-checkpoint)\",\n";
    c += "  \"seerattn_gate_type\": \"Qavg_Kmaxminavg\",\n  \"seerattn_gate_block_size\": 64,\n";
    c += "  \"seerattn_gate_hidden_size\": " + std::to_string(s.head_dim) + ",\n";
    c += "  \"seerattn_gate_force_double\": false,\n  \"seerattn_sparsity_method\": \"nz_ratio\",\n";
    c += "  \"seerattn_nz_ratio\": 0.1,\n  \"seerattn_threshold\": 0.0,\n  \"seerattn_last_block_dense\": true";
  }
  return c + "\n}\n";
}

struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  float std = 0.02f;  // 0: ones (a norm)
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::vector<Tensor> ModelTensors(const Shape& s) {
  std::vector<Tensor> t;
  t.push_back({"model.embed_tokens.weight", {s.vocab, s.hidden}});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {s.hidden}, 0.0f});
    t.push_back({p + "self_attn.q_proj.weight", {s.heads * s.head_dim, s.hidden}});
    t.push_back({p + "self_attn.k_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    t.push_back({p + "self_attn.v_proj.weight", {s.kv_heads * s.head_dim, s.hidden}});
    t.push_back({p + "self_attn.o_proj.weight", {s.hidden, s.heads * s.head_dim}});
    t.push_back({p + "post_attention_layernorm.weight", {s.hidden}, 0.0f});
    t.push_back({p + "mlp.gate_proj.weight", {s.intermediate, s.hidden}});
    t.push_back({p + "mlp.up_proj.weight", {s.intermediate, s.hidden}});
    t.push_back({p + "mlp.down_proj.weight", {s.hidden, s.intermediate}});
  }
  t.push_back({"model.norm.weight", {s.hidden}, 0.0f});
  t.push_back({"lm_head.weight", {s.vocab, s.hidden}});
  return t;
}

// Uniform values of standard deviation `std`, from a counter-based hash of
// (seed, tensor, index), in bf16: the same bytes whatever the thread count.
std::vector<uint16_t> RandomBf16(const Tensor& t, uint64_t seed, uint64_t tensor_index, int threads) {
  std::vector<uint16_t> out(static_cast<size_t>(t.numel()));
  if (t.std == 0.0f) {
    std::fill(out.begin(), out.end(), FloatToBf16(1.0f));
    return out;
  }
  const float a = t.std * std::sqrt(3.0f);
  const size_t n = out.size();
  auto work = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      uint64_t x = (seed * 0x9E3779B97F4A7C15ull) ^ (tensor_index << 40) ^ i;
      x ^= x >> 30;
      x *= 0xBF58476D1CE4E5B9ull;
      x ^= x >> 27;
      x *= 0x94D049BB133111EBull;
      x ^= x >> 31;
      const float u = static_cast<float>(x >> 40) * (1.0f / 16777216.0f);  // [0, 1)
      out[i] = FloatToBf16((2.0f * u - 1.0f) * a);
    }
  };
  std::vector<std::thread> pool;
  const size_t per = (n + threads - 1) / threads;
  for (int k = 0; k < threads; ++k) {
    const size_t b = std::min(n, k * per), e = std::min(n, b + per);
    if (b < e) pool.emplace_back(work, b, e);
  }
  for (auto& th : pool) th.join();
  return out;
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) return Internal("cannot write " + path);
  return OkStatus();
}

int Main(int argc, char** argv) {
  std::string out, gates_out, shape_name = "llama-3.1-8b";
  int64_t layers = 0, seed = 0, shard_mb = 2048, threads = 0;
  bool force = false;
  FlagSet flags("seer-random-checkpoint --out DIR [--gates-out DIR] [flags]",
                "A checkpoint with random bf16 weights (and random SeerAttention gates), for benchmarks.");
  flags.String("out", &out, "model directory to write");
  flags.String("gates-out", &gates_out, "gate directory to write (empty: none)");
  flags.String("shape", &shape_name, "llama-3.1-8b or tiny");
  flags.Int("layers", &layers, "layers (0: the shape's)");
  flags.Int("seed", &seed, "random seed");
  flags.Int("shard-mb", &shard_mb, "largest shard, MB");
  flags.Int("threads", &threads, "threads drawing weights (0: all)");
  flags.Bool("force", &force, "rewrite a complete directory");
  if (Status s = flags.Parse(argc, argv); !s.ok() || flags.help_requested()) {
    std::fprintf(s.ok() ? stdout : stderr, "%s%s", s.ok() ? "" : (s.ToString() + "\n\n").c_str(), flags.Help().c_str());
    return s.ok() ? 0 : 2;
  }
  auto usage = [](const std::string& message) {
    std::fprintf(stderr, "seer-random-checkpoint: %s (see --help)\n", message.c_str());
    return 2;
  };
  if (out.empty()) return usage("--out is required");
  if (shape_name != "llama-3.1-8b" && shape_name != "tiny") {
    return usage("--shape: expected llama-3.1-8b or tiny, got '" + shape_name + "'");
  }
  if (layers < 0 || layers > 1024) return usage("--layers: " + std::to_string(layers) + " is outside [0, 1024]");
  if (shard_mb < 1 || shard_mb > 1000000) {
    return usage("--shard-mb: " + std::to_string(shard_mb) + " is outside [1, 1000000]");
  }
  if (threads < 0 || threads > 4096) return usage("--threads: " + std::to_string(threads) + " is outside [0, 4096]");
  const Shape s = ShapeNamed(shape_name, layers);
  const int nthreads = threads > 0 ? static_cast<int>(threads) : std::max(1u, std::thread::hardware_concurrency());
  // What makes a written directory this one: a run that differs in any of it
  // writes again (the gates' directory, too: the stamp names it).
  JsonValue stamp_json = JsonValue::Object();
  stamp_json.Set("shape", JsonValue::String(s.name));
  stamp_json.Set("layers", JsonValue::Int(s.layers));
  stamp_json.Set("seed", JsonValue::Int(seed));
  stamp_json.Set("shard_mb", JsonValue::Int(shard_mb));
  stamp_json.Set("gates",
                 gates_out.empty() ? JsonValue() : JsonValue::String(std::filesystem::absolute(gates_out).string()));
  const std::string stamp = stamp_json.Dump() + "\n";
  const std::string stamp_path = out + "/seer_random_checkpoint.json";
  if (!force) {
    std::ifstream f(stamp_path);
    std::string have((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (have == stamp && (gates_out.empty() || std::filesystem::exists(gates_out + "/attn_gate_weights.safetensors"))) {
      std::printf("seer-random-checkpoint: %s is complete (%s, %lld layers, seed %lld); kept\n", out.c_str(),
                  s.name.c_str(), static_cast<long long>(s.layers), static_cast<long long>(seed));
      return 0;
    }
  }
  std::error_code ec;
  // Only a directory this tool wrote (its stamp is there) has its old shards
  // cleared; any other non-empty directory, a real checkpoint perhaps, is
  // refused unless --force.
  const bool ours = std::filesystem::exists(stamp_path, ec);
  if (!ours && !force && std::filesystem::is_directory(out, ec) && !std::filesystem::is_empty(out, ec)) {
    return usage("--out: '" + out +
                 "' is not empty and was not written by seer-random-checkpoint; --force writes into it anyway");
  }
  std::filesystem::create_directories(out, ec);
  std::filesystem::remove(stamp_path, ec);
  // Shards of an earlier layout would be left beside the new ones.
  if (ours) {
    for (const auto& e : std::filesystem::directory_iterator(out, ec)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with("model-") && name.ends_with(".safetensors")) std::filesystem::remove(e.path(), ec);
    }
  }

  // Shards planned from the shapes, then drawn and written one at a time.
  const std::vector<Tensor> tensors = ModelTensors(s);
  std::vector<std::vector<size_t>> plan(1);
  int64_t size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t bytes = tensors[i].numel() * 2;
    if (!plan.back().empty() && size + bytes > shard_mb * 1000000) {
      plan.emplace_back();
      size = 0;
    }
    plan.back().push_back(i);
    size += bytes;
  }
  char name[64];
  JsonValue weight_map = JsonValue::Object();
  int64_t total = 0;
  for (size_t k = 0; k < plan.size(); ++k) {
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", k + 1, plan.size());
    SafetensorsWriter w;
    w.SetMetadata("format", "pt");
    for (size_t i : plan[k]) {
      const std::vector<uint16_t> v = RandomBf16(tensors[i], static_cast<uint64_t>(seed), i, nthreads);
      w.Add(tensors[i].name, DType::kBF16, tensors[i].shape, v.data(), v.size() * 2);
      weight_map.Set(tensors[i].name, JsonValue::String(name));
      total += static_cast<int64_t>(v.size()) * 2;
    }
    if (Status st = w.WriteFile(out + "/" + name); !st.ok()) {
      std::fprintf(stderr, "seer-random-checkpoint: %s\n", st.ToString().c_str());
      return 1;
    }
    std::printf("  wrote %s\n", name);
    std::fflush(stdout);
  }
  JsonValue index = JsonValue::Object();
  JsonValue meta = JsonValue::Object();
  meta.Set("total_size", JsonValue::Int(total));
  index.Set("metadata", std::move(meta));
  index.Set("weight_map", std::move(weight_map));
  Status st = WriteText(out + "/model.safetensors.index.json", index.Dump() + "\n");
  if (st.ok()) st = WriteText(out + "/config.json", ConfigJson(s, false));
  if (st.ok() && !gates_out.empty()) {
    std::filesystem::create_directories(gates_out, ec);
    SafetensorsWriter g;
    g.SetMetadata("format", "pt");
    for (int64_t l = 0; l < s.layers; ++l) {
      Tensor t{"model.layers." + std::to_string(l) + ".self_attn.attn_gate.mask_linear_k.weight",
               {s.heads, 3 * s.head_dim, s.head_dim},
               1.0f / std::sqrt(3.0f * s.head_dim)};
      const std::vector<uint16_t> v = RandomBf16(t, static_cast<uint64_t>(seed) + 1, 100000 + l, nthreads);
      g.Add(t.name, DType::kBF16, t.shape, v.data(), v.size() * 2);
    }
    st = g.WriteFile(gates_out + "/attn_gate_weights.safetensors");
    if (st.ok()) st = WriteText(gates_out + "/config.json", ConfigJson(s, true));
  }
  if (st.ok()) st = WriteText(stamp_path, stamp);
  if (!st.ok()) {
    std::fprintf(stderr, "seer-random-checkpoint: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("seer-random-checkpoint: %s (%s, %lld layers, %.2f GB)%s\n", out.c_str(), s.name.c_str(),
              static_cast<long long>(s.layers), total / 1e9,
              gates_out.empty() ? "" : (" and gates " + gates_out).c_str());
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-random-checkpoint")) return 0;
  return seer::Main(argc, argv);
}
