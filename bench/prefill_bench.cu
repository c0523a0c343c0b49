// Time to first token of a Llama-3.1-8B-shaped model on the GPU: random bf16
// weights drawn on the device (no checkpoint), random SeerAttention gates,
// dense prefill against gated prefill at nz_ratio=0.1, at 8k, 32k and 128k.
// TTFT is the wall-clock time of Engine::Prefill (ids in, last-row logits on
// the host). Peak memory is the most the engine held in device allocations
// during the run (weights + KV cache + activations + cuBLAS workspace); the
// device-wide figure from cudaMemGetInfo (CUDA context included) is printed
// beside it.
//
//   seer-prefill-bench [--lengths 8192,32768,131072] [--modes dense,nz_ratio=0.1]
//                      [--repeats 3] [--layers 32] [--dump-masks DIR] [--new-tokens 1024,16384]
//
// --dump-masks DIR: one more gated prefill per length of at most 65536
// tokens, whose gate masks go to DIR/gate_<len>_<mode>_layer<NN>.bin (the
// SEERMSK1 format of kernels/common/block_lists.h), so that
// `seer-attention-bench --masks-from=...` times the kernel on the gate's own
// selections.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "base/version.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/device_buffer.h"
#include "engine/engine.h"
#include "engine/model/model_config.h"
#include "engine/model/sparsity.h"
#include "kernels/common/block_lists.h"
#include "kernels/common/check.h"
#include "bench/bench_util.h"

namespace seer {
namespace {

double GiB(size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0); }

struct Row {
  int len = 0;
  std::string mode;
  std::vector<double> ms;
  double density = 1.0;
  size_t peak = 0;
  size_t device_used = 0;
  std::string error;
};

constexpr char kUsage[] =
    "usage: seer-prefill-bench [--lengths 8192,32768,131072] [--modes dense,nz_ratio=0.1] [--repeats 3]\n"
    "                          [--layers 32] [--dump-masks DIR] [--new-tokens 1024,16384]\n";

constexpr char kHelp[] =
    "Time to first token of a Llama-3.1-8B-shaped model on the GPU (random bf16 weights drawn\n"
    "on the device, random SeerAttention gates): Engine::Prefill, ids in and last-row logits\n"
    "out, for each length and mode, with the peak device memory and the time by stage\n"
    "(GEMMs, attention, gate, rest) from one profiled run.\n"
    "\n"
    "  --lengths LIST    prompt lengths in tokens\n"
    "  --modes LIST      sparsity modes as requests name them: dense, nz_ratio=R, threshold=T\n"
    "  --repeats N       timed prefills per cell; the median is reported\n"
    "  --layers N        decoder layers (32 is the 8B shape)\n"
    "  --dump-masks DIR  one more gated prefill per length up to 65536 tokens, writing each\n"
    "                    layer's gate masks (SEERMSK1) for seer-attention-bench --masks-from\n"
    "  --new-tokens LIST a cached-prefix table too: each length's prompt with all but about N\n"
    "                    tokens (a whole number of 64-token blocks) taken from a cached prefill\n"
    "                    (Engine::CopyPrefix, then Prefill computes the rest); default: none\n";

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Main(int argc, char** argv) {
  std::vector<int> lengths = {8192, 32768, 131072};
  std::vector<std::string> modes = {"dense", "nz_ratio=0.1"};
  int repeats = 3;
  std::vector<int> new_tokens;  // --new-tokens: none unless asked
  int layers = 32;
  std::string dump_masks;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--lengths") {
      lengths.clear();
      for (const std::string& s : Split(next())) lengths.push_back(std::atoi(s.c_str()));
    } else if (a == "--modes") {
      modes = Split(next());
    } else if (a == "--repeats") {
      repeats = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--layers") {
      layers = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--new-tokens") {
      new_tokens.clear();
      for (const std::string& t : Split(next())) {
        if (std::atoi(t.c_str()) > 0) new_tokens.push_back(std::atoi(t.c_str()));
      }
    } else if (a == "--dump-masks") {
      dump_masks = next();
    } else {
      std::fprintf(stderr, "%sunknown flag: %s (--help explains)\n", kUsage, argv[i]);
      return 2;
    }
  }
  if (!CudaDeviceAvailable()) {
    std::fprintf(stderr, "no CUDA device visible\n");
    return 1;
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  size_t free0 = 0, total = 0;
  SEER_CUDA_CHECK(cudaMemGetInfo(&free0, &total));

  const ModelConfig config = Llama31_8B(layers);
  RandomEngineOptions opts;
  opts.seed = 20240601;
  opts.with_gates = true;
  opts.gate_config.block_size = 64;
  opts.gate_config.hidden = 128;
  const auto t0 = std::chrono::steady_clock::now();
  auto engine_or = CreateRandomCudaEngine(config, opts);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "engine: %s\n", engine_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<Engine> engine = std::move(engine_or).value();
  const double init_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const size_t weights_held = GetDeviceMemoryStats().current_bytes;
  std::printf("device: %s, %.1f GiB\n", prop.name, GiB(total));
  std::printf(
      "model: Llama-3.1-8B shape, %d layers, random bf16 weights on the GPU (%.2f GiB with decode buffers "
      "and cuBLAS workspace, drawn in %.2f s), random gates (hidden 128, block 64)\n",
      layers, GiB(weights_held), init_s);

  std::vector<int32_t> ids(*std::max_element(lengths.begin(), lengths.end()));
  uint64_t x = 88172645463325252ull;
  for (int32_t& id : ids) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    id = static_cast<int32_t>(x % static_cast<uint64_t>(config.vocab_size));
  }

  auto run_once = [&](int len, const SparsityConfig& sp, Row* row) -> bool {
    auto cache = engine->NewCache(len);
    if (!cache.ok()) {
      row->error = cache.status().ToString();
      return false;
    }
    ResetPeakDeviceMemory();
    PrefillOptions po;
    po.sparsity = sp;
    const auto start = std::chrono::steady_clock::now();
    auto r = engine->Prefill(std::span<const int32_t>(ids.data(), len), po, cache->get(), nullptr);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!r.ok()) {
      row->error = r.status().ToString();
      return false;
    }
    for (float v : r->logits) {
      if (!std::isfinite(v)) {
        row->error = "non-finite logits";
        return false;
      }
    }
    size_t free_b = 0, total_b = 0;
    SEER_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    row->ms.push_back(ms);
    row->density = r->overall_density;
    row->peak = std::max(row->peak, GetDeviceMemoryStats().peak_bytes);
    row->device_used = std::max(row->device_used, total_b - free_b);
    return true;
  };

  // Warm-up: module load, cuBLAS heuristics, first-touch of the workspace.
  for (const std::string& m : modes) {
    auto sp = ParseSparsity(m);
    if (!sp.ok()) {
      std::fprintf(stderr, "%s\n", sp.status().ToString().c_str());
      return 2;
    }
    Row warm;
    if (!run_once(4096, *sp, &warm)) {
      std::fprintf(stderr, "warm-up %s: %s\n", m.c_str(), warm.error.c_str());
      return 1;
    }
  }

  // The engine times its large GEMMs once per class of problem
  // (engine/cuda/gemm_tuner.h); Engine::WarmUp does it ahead for every
  // length here, as seer-prefill does at startup, so the rows below are what
  // every request sees.
  auto warmed = engine->WarmUp(*std::max_element(lengths.begin(), lengths.end()));
  if (!warmed.ok()) {
    std::fprintf(stderr, "warm-up: %s\n", warmed.status().ToString().c_str());
    return 1;
  }

  std::vector<Row> rows;
  for (int len : lengths) {
    for (const std::string& m : modes) {
      Row row;
      row.len = len;
      row.mode = m;
      const SparsityConfig sp = ParseSparsity(m).value();
      // The longest runs take seconds each; one is enough to see them.
      const int reps = len >= 65536 ? 1 : repeats;
      for (int r = 0; r < reps; ++r) {
        if (!run_once(len, sp, &row)) break;
      }
      std::printf("  L=%d %s: %s\n", len, m.c_str(),
                  row.error.empty() ? (std::to_string(row.ms.size()) + " run(s)").c_str() : row.error.c_str());
      std::fflush(stdout);
      rows.push_back(row);
    }
  }

  // A cached prefix: the prompt's whole prefill once into a cache with gate
  // keys, then for each N, CopyPrefix of all but about N tokens into a new
  // cache and Prefill of the rest, timed together (what seer-prefill does
  // on a prefix-cache hit).
  struct CachedRow {
    int len;
    std::string mode;
    int cached;
    std::vector<double> ms;
    std::string error;
    StageSeconds stages;  // one more run, profiled
  };
  std::vector<CachedRow> cached_rows;
  for (int len : lengths) {
    for (const std::string& m : modes) {
      if (new_tokens.empty()) break;
      PrefillOptions po;
      po.sparsity = ParseSparsity(m).value();
      const bool gate_keys = po.sparsity.mode != SparsityMode::kDense;  // what a gated continuation needs
      auto source = engine->NewCache(len, gate_keys);
      StatusOr<PrefillResult> whole =
          source.ok() ? engine->Prefill(std::span<const int32_t>(ids.data(), len), po, source->get(), nullptr)
                      : StatusOr<PrefillResult>(source.status());
      for (int n : new_tokens) {
        if (n >= len) continue;  // nothing would be cached
        CachedRow row{len, m, (len - n) / kPrefixBlock * kPrefixBlock, {}, ""};
        if (!whole.ok()) row.error = whole.status().ToString();
        const int reps = len >= 65536 ? 1 : repeats;
        for (int r = 0; r < reps && row.error.empty(); ++r) {
          auto cache = engine->NewCache(len, gate_keys);
          if (!cache.ok()) {
            row.error = cache.status().ToString();
            break;
          }
          const auto start = std::chrono::steady_clock::now();
          Status copied = engine->CopyPrefix(**source, row.cached, cache->get());
          StatusOr<PrefillResult> rest =
              copied.ok() ? engine->Prefill(std::span<const int32_t>(ids.data(), len), po, cache->get(), nullptr)
                          : StatusOr<PrefillResult>(copied);
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
          if (!rest.ok()) {
            row.error = rest.status().ToString();
            break;
          }
          row.ms.push_back(ms);
        }
        if (row.error.empty()) {  // where the time goes: one more run with the stages timed
          auto cache = engine->NewCache(len, gate_keys);
          PrefillOptions profiled = po;
          profiled.profile_stages = true;
          if (cache.ok() && engine->CopyPrefix(**source, row.cached, cache->get()).ok()) {
            auto rest =
                engine->Prefill(std::span<const int32_t>(ids.data(), len), profiled, cache->get(), nullptr);
            if (rest.ok()) row.stages = rest->stages;
          }
        }
        cached_rows.push_back(row);
      }
    }
  }

  // One more run of each row with an event between every two stages: where
  // the time goes (kept out of the TTFT runs above).
  struct StageRow {
    int len;
    std::string mode;
    StageSeconds s;
    double total_ms;
  };
  std::vector<StageRow> stage_rows;
  for (int len : lengths) {
    for (const std::string& m : modes) {
      auto cache = engine->NewCache(len);
      if (!cache.ok()) continue;
      PrefillOptions po;
      po.sparsity = ParseSparsity(m).value();
      po.profile_stages = true;
      auto r = engine->Prefill(std::span<const int32_t>(ids.data(), len), po, cache->get(), nullptr);
      if (!r.ok()) continue;
      stage_rows.push_back({len, m, r->stages, r->seconds * 1e3});
    }
  }

  // The gate's masks, for the attention benchmark (host memory: nb^2 bytes
  // of mask and 4 nb^2 of probabilities per head and layer, so short prompts only).
  for (int len : lengths) {
    if (dump_masks.empty() || len > 65536) continue;
    for (const std::string& m : modes) {
      const SparsityConfig sp = ParseSparsity(m).value();
      if (sp.mode == SparsityMode::kDense) continue;
      auto cache = engine->NewCache(len);
      if (!cache.ok()) continue;
      PrefillOptions po;
      po.sparsity = sp;
      po.keep_gate_outputs = true;
      auto r = engine->Prefill(std::span<const int32_t>(ids.data(), len), po, cache->get(), nullptr);
      if (!r.ok()) {
        std::fprintf(stderr, "--dump-masks L=%d %s: %s\n", len, m.c_str(), r.status().ToString().c_str());
        return 1;
      }
      for (size_t layer = 0; layer < r->gate_outputs.size(); ++layer) {
        char name[160];
        std::snprintf(name, sizeof(name), "/gate_%d_%s_layer%02zu.bin", len, m.c_str(), layer);
        if (!WriteBlockMask(r->gate_outputs[layer].mask, dump_masks + name)) {
          std::fprintf(stderr, "--dump-masks: cannot write %s%s\n", dump_masks.c_str(), name);
          return 1;
        }
      }
      std::printf("  L=%d %s: %zu gate masks written to %s\n", len, m.c_str(), r->gate_outputs.size(),
                  dump_masks.c_str());
    }
  }

  std::printf("\nPrefill TTFT, %s, Llama-3.1-8B shape (%d layers), bf16\n", prop.name, layers);
  std::printf("| seq | mode | density | TTFT ms (median) | runs | peak engine alloc GiB | device used GiB |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (Row& row : rows) {
    if (!row.error.empty() && row.ms.empty()) {
      std::printf("| %d | %s | - | %s | 0 | - | - |\n", row.len, row.mode.c_str(), row.error.c_str());
      continue;
    }
    const double median = Median(row.ms);
    std::printf("| %d | %s | %.3f | %.1f | %zu | %.2f | %.2f |\n", row.len, row.mode.c_str(), row.density, median,
                row.ms.size(), GiB(row.peak), GiB(row.device_used));
  }
  if (!cached_rows.empty()) {
    std::printf("\nPrefill with a cached prefix (CopyPrefix + Prefill of the rest), %s\n", prop.name);
    std::printf("| seq | mode | cached tokens | computed tokens | TTFT ms (median) | whole prefill ms | ratio |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (CachedRow& r : cached_rows) {
      double whole_ms = 0.0;
      for (Row& w : rows) {
        if (w.len == r.len && w.mode == r.mode && !w.ms.empty()) whole_ms = Median(w.ms);
      }
      if (!r.error.empty() || r.ms.empty()) {
        std::printf("| %d | %s | %d | %d | %s | %.1f | - |\n", r.len, r.mode.c_str(), r.cached, r.len - r.cached,
                    r.error.empty() ? "-" : r.error.c_str(), whole_ms);
        continue;
      }
      const double ms = Median(r.ms);
      std::printf("| %d | %s | %d | %d | %.1f | %.1f | %.3f |\n", r.len, r.mode.c_str(), r.cached, r.len - r.cached,
                  ms, whole_ms, whole_ms > 0 ? ms / whole_ms : 0.0);
    }
    std::printf("\nThe rest's prefill by stage (one profiled run each, ms; the copy is not a stage)\n");
    std::printf("| seq | mode | computed tokens | GEMMs | attention | gate | rest (embed, RoPE, KV write) |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (const CachedRow& r : cached_rows) {
      if (!r.error.empty() || r.ms.empty()) continue;
      const StageSeconds& t = r.stages;
      std::printf("| %d | %s | %d | %.1f | %.1f | %.1f | %.1f |\n", r.len, r.mode.c_str(), r.len - r.cached,
                  (t.attention_inputs + t.output_and_mlp + t.logits) * 1e3, t.attention * 1e3, t.gate * 1e3,
                  (t.embed + t.rope_and_cache) * 1e3);
    }
  }
  std::printf("\nEngine::WarmUp: %s\n",
              warmed->empty() ? "nothing to do (SEER_GEMM_TUNING=0, or lengths under 16,384)" : warmed->c_str());
  std::printf("\nWhere the prefill's time goes (one profiled run each; ms and share of the stages' sum)\n");
  std::printf(
      "| seq | mode | GEMMs (q/k/v, o, MLP, lm_head) | attention | gate | rest (embed, RoPE, KV write) | "
      "stages sum ms | wall ms |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const StageRow& r : stage_rows) {
    const double gemm = (r.s.attention_inputs + r.s.output_and_mlp + r.s.logits) * 1e3;
    const double attn = r.s.attention * 1e3, gate = r.s.gate * 1e3;
    const double rest = (r.s.embed + r.s.rope_and_cache) * 1e3;
    const double sum = gemm + attn + gate + rest;
    auto cell = [&](double ms) {
      return std::to_string(static_cast<int64_t>(ms + 0.5)) + " (" +
             std::to_string(static_cast<int>(100.0 * ms / sum + 0.5)) + "%)";
    };
    std::printf("| %d | %s | %s | %s | %s | %s | %.1f | %.1f |\n", r.len, r.mode.c_str(), cell(gemm).c_str(),
                cell(attn).c_str(), cell(gate).c_str(), cell(rest).c_str(), sum, r.total_ms);
  }
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-prefill-bench")) return 0;
  if (seer::PrintHelpIfAsked(argc, argv, seer::kUsage, seer::kHelp)) return 0;
  return seer::Main(argc, argv);
}
