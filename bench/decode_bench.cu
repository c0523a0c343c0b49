// Batched decode of the Llama-3.1-8B shape (random bf16 weights on the GPU)
// over the paged KV cache: for each row (batch B at context C) the median
// step time, tokens per second, and the least time the step can take. A
// step has two phases, each bound by its bytes or its FLOPs, whichever take
// longer: the projections and the lm_head (their weights read once; 2 FLOPs
// per weight and row) and the attention (every running sequence's K and V
// read once; 4 FLOPs per query head, head dimension and context token).
// Bytes go at the device-to-device copy bandwidth and FLOPs at the rate of a
// large bf16 GEMM, both measured in the same run. The limit is the two
// phases' sum. Small batches are bound by bytes in both phases; at hundreds
// of rows the projections are bound by FLOPs. The KV is written straight
// into the pages (no prefill); its values are random.
//
// With --guide, every sequence is guided (JSON mode or a regular
// expression over a synthetic vocabulary of the model's size), and the step
// includes the guides' walks and their banned ids on the device.
//
//   seer-decode-bench [--rows 1x8192,8x8192,1x32768,8x32768,32x8192,128x2048]
//                     [--steps 32] [--page-tokens 64] [--layers 32] [--guide none|json|regex] [--json]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/version.h"
#include "base/flags.h"
#include "base/json.h"
#include "bench/bench_util.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_page_pool.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/gemm.h"
#include "engine/engine.h"
#include "kernels/common/check.h"
#include "kernels/ops/ops.h"
#include "kernels/sampling/sampler.h"
#include "text/guide.h"
#include "text/synthetic_vocabulary.h"

namespace seer {
namespace {

// Device-to-device copy rate over a 2 GiB buffer, counting bytes read and
// written: the ceiling a bandwidth-bound step can reach.
double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  SEER_CUDA_CHECK(cudaMalloc(&a, bytes));
  SEER_CUDA_CHECK(cudaMalloc(&b, bytes));
  SEER_CUDA_CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  SEER_CUDA_CHECK(cudaEventCreate(&e0));
  SEER_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 7; ++i) {
    SEER_CUDA_CHECK(cudaEventRecord(e0));
    SEER_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    SEER_CUDA_CHECK(cudaEventRecord(e1));
    SEER_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    SEER_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i > 1) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  SEER_CUDA_CHECK(cudaFree(a));
  SEER_CUDA_CHECK(cudaFree(b));
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3);
}

// FLOP/s of a large bf16 GEMM (8192 x 8192 x 8192, float32 accumulate)
// through the engine's own GEMM call, timed over 200 runs (about 0.3 s)
// after 200 to warm up, so that the clock has settled under the power cap:
// the ceiling a compute-bound phase can reach on this device. 0 on failure.
double GemmRate() {
  constexpr int n = 8192;
  const size_t elems = size_t{n} * n;
  auto x = DeviceBuffer::Allocate(elems * 2, "GEMM rate x");
  auto w = DeviceBuffer::Allocate(elems * 2, "GEMM rate w");
  auto y = DeviceBuffer::Allocate(elems * 2, "GEMM rate y");
  if (!x.ok() || !w.ok() || !y.ok()) return 0.0;
  SEER_CUDA_CHECK(cuda::FillUniform(x->as<__nv_bfloat16>(), elems, 1, 1.0f, nullptr));
  SEER_CUDA_CHECK(cuda::FillUniform(w->as<__nv_bfloat16>(), elems, 2, 1.0f, nullptr));
  cublasHandle_t handle = nullptr;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return 0.0;
  constexpr int kWarm = 200, kTimed = 200;
  cudaEvent_t e0, e1;
  SEER_CUDA_CHECK(cudaEventCreate(&e0));
  SEER_CUDA_CHECK(cudaEventCreate(&e1));
  bool ok = true;
  for (int i = 0; i < kWarm + kTimed && ok; ++i) {
    if (i == kWarm) SEER_CUDA_CHECK(cudaEventRecord(e0));
    ok = LinearBf16(handle, x->as<__nv_bfloat16>(), n, n, w->as<__nv_bfloat16>(), n, y->get(), CUDA_R_16BF, 0.0f)
             .ok();
  }
  SEER_CUDA_CHECK(cudaEventRecord(e1));
  SEER_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  SEER_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  SEER_CUDA_CHECK(cudaEventDestroy(e0));
  SEER_CUDA_CHECK(cudaEventDestroy(e1));
  cublasDestroy(handle);
  return ok ? 2.0 * n * double{n} * n * kTimed / (ms * 1e-3) : 0.0;
}

struct Row {
  int batch = 0, context = 0;
  double step_ms = 0.0;
  // Each phase's time at the copy bandwidth and at the GEMM rate.
  double weights_ms = 0.0, gemm_ms = 0.0, kv_ms = 0.0, attention_ms = 0.0;
  double limit_ms() const { return std::max(weights_ms, gemm_ms) + std::max(kv_ms, attention_ms); }
  double tokens_per_s() const { return batch / (step_ms * 1e-3); }
};

int Main(int argc, char** argv) {
  std::string rows_text = "1x8192,8x8192,1x32768,8x32768,32x8192,128x2048";
  int64_t steps = 32, page_tokens = 64, layers = 32, adjust = 0, logprobs = -1;
  std::string guide = "none";
  bool json = false, cuda_graphs = true;
  FlagSet flags("seer-decode-bench [flags]", "Batched paged decode of the Llama-3.1-8B shape; prints a table.");
  flags.String("rows", &rows_text, "BATCHxCONTEXT items, comma-separated.");
  flags.Int("steps", &steps, "Timed decode steps per row (after 3 warm-up steps).");
  flags.Int("page-tokens", &page_tokens, "Positions per KV page.");
  flags.Int("layers", &layers, "Layers of the model shape (32 for Llama-3.1-8B).");
  flags.Int("adjust", &adjust,
            "Give every sequence this many adjusted tokens (OpenAI's logit_bias and presence/frequency "
            "penalties: half biased ids, half ids already generated), as a long penalised reply has; 0: none.");
  flags.Int("logprobs", &logprobs,
            "Every sequence asks for each token's logprob and this many alternatives (OpenAI's logprobs, "
            "computed on the GPU from the raw logits); -1: none.");
  flags.String("guide", &guide,
               "Guide every sequence: 'json' (JSON mode) or 'regex' (a date and up to 40 words), over a synthetic "
               "byte-level vocabulary of the model's size, the last id its end of text; 'none': no guide.");
  flags.Bool("json", &json, "Print one JSON object instead of the table.");
  flags.Bool("cuda-graphs", &cuda_graphs,
             "Replay each step's layers as a CUDA graph (--cuda-graphs=false: launch them one by one).");
  if (Status s = flags.Parse(argc, argv); !s.ok()) {
    std::fprintf(stderr, "seer-decode-bench: %s\n", s.ToString().c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (adjust < 0 || adjust > 65536) {
    std::fprintf(stderr, "seer-decode-bench: --adjust: %lld is outside [0, 65536]\n", static_cast<long long>(adjust));
    return 2;
  }
  if (logprobs < -1 || logprobs > kMaxTopLogprobs) {
    std::fprintf(stderr, "seer-decode-bench: --logprobs: %lld is outside [-1, %d]\n", static_cast<long long>(logprobs),
                 kMaxTopLogprobs);
    return 2;
  }
  GuideSpec guide_spec;
  if (guide == "json") {
    guide_spec.kind = GuideSpec::Kind::kJsonObject;
  } else if (guide == "regex") {
    guide_spec.kind = GuideSpec::Kind::kRegex;
    guide_spec.text = "[0-9]{4}-[0-9]{2}-[0-9]{2}( [a-z]+){1,40}";
  } else if (guide != "none") {
    std::fprintf(stderr, "seer-decode-bench: --guide: '%s' is not none, json or regex\n", guide.c_str());
    return 2;
  }
  std::vector<std::pair<int, int>> rows;
  for (const std::string& item : Split(rows_text)) {
    const size_t x = item.find('x');
    if (x == std::string::npos) {
      std::fprintf(stderr, "seer-decode-bench: --rows item '%s' is not BATCHxCONTEXT\n", item.c_str());
      return 2;
    }
    rows.push_back({std::atoi(item.substr(0, x).c_str()), std::atoi(item.substr(x + 1).c_str())});
  }

  const ModelConfig config = Llama31_8B(static_cast<int>(layers));
  std::shared_ptr<const TokenGuideFactory> guides;
  if (guide_spec.kind != GuideSpec::Kind::kNone) {
    std::vector<std::optional<std::string>> bytes = SyntheticVocabulary(config.vocab_size - 1, 1);
    bytes.push_back(std::nullopt);  // the end of text
    StatusOr<std::shared_ptr<const Grammar>> grammar = CompileGuide(guide_spec);
    if (!grammar.ok()) {
      std::fprintf(stderr, "seer-decode-bench: %s\n", grammar.status().ToString().c_str());
      return 1;
    }
    guides = std::make_shared<GrammarGuideFactory>(*grammar, GuideVocabulary::FromBytes(bytes));
  }
  cudaDeviceProp prop{};
  SEER_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = CopyBandwidth();
  const double gemm_rate = GemmRate();
  if (gemm_rate <= 0.0) {
    std::fprintf(stderr, "seer-decode-bench: timing the GEMM rate failed\n");
    return 1;
  }
  // Bytes read once a step: every weight but the embedding table, of which
  // a step reads only its rows' (a lookup; Llama-3.1-8B does not tie it to
  // the lm_head).
  const double weight_bytes = static_cast<double>(ModelWeightBytes(config, GateShape{}, false)) -
                              2.0 * config.vocab_size * config.hidden_size;
  // Multiply-adds per row and step: q/o, k/v, the MLP's three and the
  // lm_head; and per token of context the attention's QK^T and PV over all
  // query heads.
  const double h = config.hidden_size, hq = config.num_heads, hkv = config.num_kv_heads, d = config.head_dim;
  const double row_macs =
      config.num_layers * (h * hq * d * 2 + h * hkv * d * 2 + 3 * h * config.intermediate_size) +
      h * config.vocab_size;
  const double attention_macs_per_token = config.num_layers * hq * d * 2;
  const double kv_per_token = 2.0 * config.num_layers * config.num_kv_heads * config.head_dim * 2;

  std::vector<Row> results;
  for (auto [batch, context] : rows) {
    RandomEngineOptions ro;
    auto engine = CreateRandomCudaEngine(config, ro);
    if (!engine.ok()) {
      std::fprintf(stderr, "seer-decode-bench: %s\n", engine.status().ToString().c_str());
      return 1;
    }
    Engine& e = **engine;
    PagedDecodeOptions po;
    po.page_tokens = static_cast<int>(page_tokens);
    po.max_batch = batch;
    po.cuda_graphs = cuda_graphs;
    const int capacity = context + static_cast<int>(steps) + 8;
    const int64_t pages = static_cast<int64_t>(batch) * ((capacity + page_tokens - 1) / page_tokens);
    po.pool_bytes =
        pages * static_cast<int64_t>(2 * config.num_layers) * config.num_kv_heads * page_tokens * config.head_dim * 2;
    if (Status s = e.EnablePagedDecode(po); !s.ok()) {
      std::fprintf(stderr, "seer-decode-bench: %dx%d: %s\n", batch, context, s.ToString().c_str());
      return 1;
    }
    // Random KV straight into the pages, then every sequence at `context`.
    auto* pool = static_cast<DevicePagePool*>(e.page_pool());
    const size_t per_layer =
        static_cast<size_t>(pool->num_pages()) * config.num_kv_heads * page_tokens * config.head_dim;
    for (int l = 0; l < config.num_layers; ++l) {
      SEER_CUDA_CHECK(cuda::FillUniform(pool->k(l), per_layer, 100 + l, 1.0f, nullptr));
      SEER_CUDA_CHECK(cuda::FillUniform(pool->v(l), per_layer, 200 + l, 1.0f, nullptr));
    }
    SEER_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::unique_ptr<Sampler>> samplers;
    std::vector<DecodeSeq> seqs;
    for (int b = 0; b < batch; ++b) {
      auto c = e.NewPagedCache(capacity);
      if (!c.ok()) {
        std::fprintf(stderr, "seer-decode-bench: %s\n", c.status().ToString().c_str());
        return 1;
      }
      (*c)->set_length(context);
      caches.push_back(std::move(c).value());
      SamplingParams sp;
      sp.logprobs = static_cast<int>(logprobs);
      if (guides != nullptr) {
        sp.guide = guides;
        sp.vocab_size = config.vocab_size;
        sp.end_ids = {config.vocab_size - 1};
      }
      if (adjust > 0) {
        sp.presence_penalty = 0.5;
        sp.frequency_penalty = 0.5;
        for (int64_t i = 0; i < adjust / 2; ++i) {
          sp.logit_bias.push_back({static_cast<int32_t>((2 * i * 7 + b) % config.vocab_size), 0.25f});
        }
      }
      samplers.push_back(std::make_unique<Sampler>(sp));
      // The other half: tokens this sequence has generated (odd ids, distinct
      // from the biased even ones while 2 * adjust < vocab).
      for (int64_t i = 0; adjust > 0 && i < adjust - adjust / 2; ++i) {
        samplers.back()->Record(static_cast<int32_t>((2 * i + 1) % config.vocab_size));
      }
      seqs.push_back({caches.back().get(), (b * 7919) % config.vocab_size, samplers.back().get()});
    }
    std::vector<int32_t> next(batch);
    std::vector<double> ms;
    for (int s = 0; s < steps + 3; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      if (Status st = e.DecodeBatch(seqs, next); !st.ok()) {
        std::fprintf(stderr, "seer-decode-bench: step: %s\n", st.ToString().c_str());
        return 1;
      }
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (s >= 3) ms.push_back(t);
      for (int b = 0; b < batch; ++b) seqs[b].token = next[b];
    }
    std::sort(ms.begin(), ms.end());
    Row r;
    r.batch = batch;
    r.context = context;
    r.step_ms = ms[ms.size() / 2];
    // The timed steps come after 3 warm-up steps: contexts context + 4 to
    // context + 3 + steps.
    const double mean_context = context + 3.0 + (steps + 1) / 2.0;
    r.weights_ms = weight_bytes / copy_bw * 1e3;
    r.gemm_ms = 2.0 * batch * row_macs / gemm_rate * 1e3;
    r.kv_ms = batch * mean_context * kv_per_token / copy_bw * 1e3;
    r.attention_ms = 2.0 * batch * mean_context * attention_macs_per_token / gemm_rate * 1e3;
    results.push_back(r);
    std::fprintf(stderr, "  %dx%d: %.2f ms/step\n", batch, context, r.step_ms);
  }

  if (json) {
    JsonValue out = JsonValue::Object();
    out.Set("device", JsonValue::String(prop.name));
    out.Set("copy_gbps", JsonValue::Number(copy_bw / 1e9));
    out.Set("gemm_tflops", JsonValue::Number(gemm_rate / 1e12));
    out.Set("cuda_graphs", JsonValue::Bool(cuda_graphs));
    out.Set("adjusted_tokens_per_sequence", JsonValue::Int(adjust));
    out.Set("logprobs", JsonValue::Int(logprobs));
    out.Set("guide", JsonValue::String(guide));
    JsonValue list = JsonValue::Array();
    for (const Row& r : results) {
      JsonValue o = JsonValue::Object();
      o.Set("batch", JsonValue::Int(r.batch));
      o.Set("context", JsonValue::Int(r.context));
      o.Set("step_ms", JsonValue::Number(r.step_ms));
      o.Set("tokens_per_s", JsonValue::Number(r.tokens_per_s()));
      o.Set("weights_read_ms", JsonValue::Number(r.weights_ms));
      o.Set("gemm_compute_ms", JsonValue::Number(r.gemm_ms));
      o.Set("kv_read_ms", JsonValue::Number(r.kv_ms));
      o.Set("attention_compute_ms", JsonValue::Number(r.attention_ms));
      o.Set("limit_ms", JsonValue::Number(r.limit_ms()));
      list.Append(std::move(o));
    }
    out.Set("rows", std::move(list));
    std::printf("%s\n", out.Dump().c_str());
    return 0;
  }
  std::printf(
      "\nBatched paged decode, %s, Llama-3.1-8B shape (%d layers), bf16, page %d tokens, CUDA graphs %s; copy %.0f "
      "GB/s, GEMM %.0f TFLOP/s; %lld adjusted tokens per sequence; logprobs %lld; guide %s\n",
      prop.name, config.num_layers, static_cast<int>(page_tokens), cuda_graphs ? "on" : "off", copy_bw / 1e9,
      gemm_rate / 1e12, static_cast<long long>(adjust), static_cast<long long>(logprobs), guide.c_str());
  std::printf(
      "| batch | context | ms/step | tokens/s | weights read / GEMMs ms | KV read / attention ms | limit ms | step / "
      "limit |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : results) {
    std::printf("| %d | %d | %.2f | %.0f | %.2f / %.2f | %.2f / %.2f | %.2f | %.2f |\n", r.batch, r.context,
                r.step_ms, r.tokens_per_s(), r.weights_ms, r.gemm_ms, r.kv_ms, r.attention_ms, r.limit_ms(),
                r.step_ms / r.limit_ms());
  }
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-decode-bench")) return 0;
  return seer::Main(argc, argv);
}
