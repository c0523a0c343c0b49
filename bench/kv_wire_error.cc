// seer-kv-wire-error: the error fp8 (E4M3) KV on the wire adds at the decode
// worker (engine/kv/kv_wire_error.h), for a checkpoint or the 8B shape with
// random weights on the GPU. The prompt is prefilled once; its KV reaches
// fresh caches through bf16 (the reference: what a CUDA prefill sends),
// through fp8 with a scale per (head, --block-tokens tokens), and through fp8
// with one scale per head; each then decodes --steps teacher-forced tokens.
// A program that prints a table (or one JSON object with --json).
//
//   seer-kv-wire-error --model DIR [--device cpu|cuda|cuda:N] [--tokens N] [--steps N] [--json]
//   seer-kv-wire-error --random-8b-layers 32 [--tokens 32768] ...     (CUDA: Llama-3.1-8B shape)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "base/version.h"
#include "base/flags.h"
#include "bench/llama_shape.h"
#include "engine/engine.h"
#include "engine/kv/kv_wire_error.h"
#include "kernels/kv_quant/kv_quant_cpu.h"
#ifdef SEER_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/device_kv_cache.h"
#include "kernels/kv_quant/kv_quant.h"
#endif

namespace seer {
namespace {

#ifdef SEER_HAVE_CUDA
// The copies on the GPU, with the kernels the transport uses (bit-exact with
// the CPU twin CopyKvThroughWire would use, kv_quant_gpu_test.cc).
bool DeviceWireCopy(const KvCache& src_in, int tokens, KvWireEncoding e, int block_tokens, KvCache* dst_in,
                    Status* status) {
  const auto* src = dynamic_cast<const DeviceKvCache*>(&src_in);
  auto* dst = dynamic_cast<DeviceKvCache*>(dst_in);
  if (src == nullptr || dst == nullptr) return false;
  auto fail = [&](const char* what, cudaError_t err) {
    *status = Internal(std::string(what) + ": " + cudaGetErrorString(err));
    return true;
  };
  const KvLayout& l = src->layout();
  const int H = l.num_kv_heads, D = l.head_dim;
  const int64_t ss = static_cast<int64_t>(src->capacity()) * D, ds = static_cast<int64_t>(dst->capacity()) * D;
  uint8_t* codes = nullptr;
  float* scales = nullptr;
  const size_t n = static_cast<size_t>(H) * tokens * D;
  if (cudaError_t err = cudaMalloc(&codes, n); err != cudaSuccess) return fail("cudaMalloc", err);
  if (cudaError_t err = cudaMalloc(&scales, sizeof(float) * H * kvq::ScaleBlocks(tokens, block_tokens));
      err != cudaSuccess) {
    cudaFree(codes);
    return fail("cudaMalloc", err);
  }
  cudaError_t err = cudaSuccess;
  for (int layer = 0; layer < l.num_layers && err == cudaSuccess; ++layer) {
    for (int which = 0; which < 2 && err == cudaSuccess; ++which) {
      const __nv_bfloat16* s = which == 0 ? src->k(layer) : src->v(layer);
      __nv_bfloat16* d = which == 0 ? dst->k(layer) : dst->v(layer);
      if (e == KvWireEncoding::kFp8E4m3) {
        err = cuda::QuantizeKvE4m3(s, ss, H, tokens, D, block_tokens, codes, scales, nullptr);
        if (err == cudaSuccess) err = cuda::DequantizeKvE4m3(codes, scales, H, tokens, D, block_tokens, d, ds, nullptr);
      } else {
        err = cudaMemcpy2DAsync(d, ds * 2, s, ss * 2, static_cast<size_t>(tokens) * D * 2, H, cudaMemcpyDeviceToDevice,
                                nullptr);
      }
    }
  }
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  cudaFree(codes);
  cudaFree(scales);
  if (err != cudaSuccess) return fail("fp8 KV wire copy", err);
  dst->set_length(tokens);
  *status = OkStatus();
  return true;
}
#endif

int Main(int argc, char** argv) {
  std::string model, device = "auto";
  int64_t random_layers = 0, tokens = 4096, steps = 32, block_tokens = kvq::kBlockTokens, threads = 0;
  bool json = false;
  FlagSet flags("seer-kv-wire-error (--model DIR | --random-8b-layers N) [flags]",
                "Next-token logits error and greedy agreement of decode steps reading KV that came through fp8\n"
                "(E4M3, a scale per head and block of tokens) instead of bf16.");
  flags.String("model", &model, "Hugging Face checkpoint directory");
  flags.Int("random-8b-layers", &random_layers,
            "instead of --model: the Llama-3.1-8B shape with N layers, random "
            "weights on the GPU");
  flags.String("device", &device, "cpu, cuda, cuda:N or auto");
  flags.Int("threads", &threads, "CPU engine threads (0: all)");
  flags.Int("tokens", &tokens, "prompt tokens (random ids, fixed seed)");
  flags.Int("steps", &steps, "decode steps compared");
  flags.Int("block-tokens", &block_tokens, "tokens per fp8 scale block");
  flags.Bool("json", &json, "print one JSON object");
  if (Status s = flags.Parse(argc, argv); !s.ok() || flags.help_requested()) {
    std::fprintf(s.ok() ? stdout : stderr, "%s%s", s.ok() ? "" : (s.ToString() + "\n\n").c_str(), flags.Help().c_str());
    return s.ok() ? 0 : 2;
  }
  if ((model.empty()) == (random_layers == 0) || tokens < 1 || steps < 1 || block_tokens < 1) {
    std::fprintf(stderr,
                 "seer-kv-wire-error: give exactly one of --model and --random-8b-layers, and positive "
                 "--tokens, --steps and --block-tokens\n");
    return 2;
  }

  const auto t0 = std::chrono::steady_clock::now();
  StatusOr<std::unique_ptr<Engine>> engine = Unimplemented("no engine");
  std::string model_name = model;
  if (!model.empty()) {
    EngineOptions o;
    o.model_dir = model;
    o.device = device;
    o.threads = static_cast<int>(threads);
    engine = CreateEngine(o);
  } else {
#ifdef SEER_HAVE_CUDA
    RandomEngineOptions o;
    o.seed = 20240601;
    engine = CreateRandomCudaEngine(Llama31_8B(static_cast<int>(random_layers)), o);
    model_name = "Llama-3.1-8B shape, " + std::to_string(random_layers) + " layers, random bf16 weights";
#else
    engine = Unimplemented("--random-8b-layers needs a CUDA build");
#endif
  }
  if (!engine.ok()) {
    std::fprintf(stderr, "seer-kv-wire-error: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const ModelConfig& config = (*engine)->config();
  const int L = static_cast<int>(std::min<int64_t>(tokens, config.max_position_embeddings - steps));
  std::vector<int32_t> ids(L);
  uint64_t x = 88172645463325252ull;
  for (int32_t& id : ids) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    id = static_cast<int32_t>(x % static_cast<uint64_t>(config.vocab_size));
  }

  KvWireCopier copier = nullptr;
#ifdef SEER_HAVE_CUDA
  copier = DeviceWireCopy;
#endif
  const KvWireEncoding blocked[] = {KvWireEncoding::kExact, KvWireEncoding::kFp8E4m3};
  const KvWireEncoding fp8[] = {KvWireEncoding::kFp8E4m3};
  const auto t1 = std::chrono::steady_clock::now();
  auto a =
      MeasureKvWireError(**engine, ids, {}, static_cast<int>(steps), blocked, static_cast<int>(block_tokens), copier);
  auto b = a.ok() ? MeasureKvWireError(**engine, ids, {}, static_cast<int>(steps), fp8, L, copier) : a;
  if (!a.ok() || !b.ok()) {
    std::fprintf(stderr, "seer-kv-wire-error: %s\n", (a.ok() ? b : a).status().ToString().c_str());
    return 1;
  }
  const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  struct Line {
    const KvWireErrorReport* r;
    int block;
  };
  const Line lines[] = {{&(*a)[0], 0}, {&(*a)[1], static_cast<int>(block_tokens)}, {&(*b)[0], L}};
  const std::string dev = (*engine)->device_name();
  if (json) {
    std::printf("{\"model\": \"%s\", \"device\": \"%s\", \"prompt_tokens\": %d, \"steps\": %lld, \"rows\": [",
                model_name.c_str(), dev.c_str(), L, static_cast<long long>(steps));
    for (size_t i = 0; i < 3; ++i) {
      const Line& l = lines[i];
      std::printf(
          "%s{\"wire\": \"%s\", \"block_tokens\": %d, \"wire_bytes\": %lld, \"logits_rel_err_mean\": %.6g, "
          "\"logits_rel_err_max\": %.6g, \"greedy_agree\": %d}",
          i ? ", " : "", KvWireEncodingName(l.r->encoding).c_str(), l.block, static_cast<long long>(l.r->wire_bytes),
          l.r->mean_rel_error, l.r->max_rel_error, l.r->greedy_agree);
    }
    std::printf("]}\n");
    return 0;
  }
  std::printf(
      "KV wire error, %s on %s, %d-token prompt, %lld teacher-forced decode steps against a bf16 transfer\n"
      "(engine ready in %.1f s, measured in %.1f s)\n",
      model_name.c_str(), dev.c_str(), L, static_cast<long long>(steps), load_s, run_s);
  std::printf("| wire | scale block | KV MB | next-token logits rel err, mean | max | greedy agreement |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const Line& l : lines) {
    const std::string block = l.r->encoding == KvWireEncoding::kFp8E4m3
                                  ? (l.block == L ? "per head (" + std::to_string(L) + ")" : std::to_string(l.block))
                                  : "-";
    const std::string wire = l.r->encoding == KvWireEncoding::kExact
                                 ? "cache dtype (" + std::string(DTypeName(DType::kBF16)) + " on CUDA, F32 on CPU)"
                                 : KvWireEncodingName(l.r->encoding);
    std::printf("| %s | %s | %.1f | %.3e | %.3e | %d/%d |\n", wire.c_str(), block.c_str(), l.r->wire_bytes / 1e6,
                l.r->mean_rel_error, l.r->max_rel_error, l.r->greedy_agree, l.r->steps);
  }
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-kv-wire-error")) return 0;
  return seer::Main(argc, argv);
}
