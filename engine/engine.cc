#include "engine/engine.h"

#include <cassert>

#include "engine/cpu/cpu_engine.h"
#ifdef SEER_HAVE_CUDA
#include "engine/cuda/cuda_engine.h"
#endif

namespace seer {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

}  // namespace

StatusOr<int> ParseCudaDeviceIndex(std::string_view device) {
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5 || device.size() > 8)
    return InvalidArgument("device: '" + std::string(device) + "' is not cuda or cuda:N");
  int index = 0;
  for (char c : device.substr(5)) {
    if (c < '0' || c > '9') return InvalidArgument("device: '" + std::string(device) + "' is not cuda or cuda:N");
    index = index * 10 + (c - '0');
  }
  return index;
}

Status CheckTokenIds(std::span<const int32_t> ids, int vocab_size, std::string_view field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return InvalidArgument(std::string(field) + "[" + Str(static_cast<int64_t>(i)) + "]: " + Str(ids[i]) +
                             " is out of range [0, " + Str(vocab_size) + ") (the model's vocab_size)");
    }
  }
  return OkStatus();
}

Status CheckPromptIds(std::span<const int32_t> ids, int vocab_size, std::string_view field) {
  if (ids.empty()) return InvalidArgument(std::string(field) + ": empty; a prompt needs at least 1 token");
  return CheckTokenIds(ids, vocab_size, field);
}

Status Engine::CheckCache(const KvCache* cache, const char* call) const {
  if (cache == nullptr) return InvalidArgument(std::string(call) + ": null KV cache");
  if (!OwnsCacheType(*cache)) {
    return InvalidArgument(std::string(call) + ": the KV cache was not made by this engine's NewCache (" +
                           device_name() + ")");
  }
  const KvLayout& l = cache->layout();
  const ModelConfig& c = config();
  if (l.num_layers != c.num_layers || l.num_kv_heads != c.num_kv_heads || l.head_dim != c.head_dim) {
    return InvalidArgument(std::string(call) + ": the KV cache's layout (" + Str(l.num_layers) + " layers, " +
                           Str(l.num_kv_heads) + " kv heads, head_dim " + Str(l.head_dim) +
                           ") does not match the model (" + Str(c.num_layers) + ", " + Str(c.num_kv_heads) + ", " +
                           Str(c.head_dim) + ")");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<KvCache>> Engine::NewCache(int capacity) {
  const int max_positions = config().max_position_embeddings;
  if (capacity < 1 || capacity > max_positions) {
    return InvalidArgument("KV cache capacity " + Str(capacity) + " is out of range [1, " + Str(max_positions) +
                           "] (the model's max_position_embeddings)");
  }
  return Exclusive([&] { return AllocateCache(capacity); });
}

StatusOr<PrefillResult> Engine::Prefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                        PrefillObserver* observer) {
  SEER_RETURN_IF_ERROR(CheckCache(cache, "prefill"));
  SEER_RETURN_IF_ERROR(CheckPromptIds(ids, config().vocab_size, "ids"));
  const int64_t len = static_cast<int64_t>(ids.size());
  if (len > config().max_position_embeddings) {
    return InvalidArgument("ids: " + Str(len) + " tokens exceed max_position_embeddings " +
                           Str(config().max_position_embeddings));
  }
  if (len > cache->capacity()) {
    return ResourceExhausted("ids: " + Str(len) + " tokens exceed the KV cache capacity of " +
                             Str(cache->capacity()));
  }
  if (cache->length() != 0) {
    return FailedPrecondition("prefill: the KV cache already holds " + Str(cache->length()) +
                              " tokens; Prefill needs an empty cache");
  }
  // Valid by construction (engine/model/sparsity.h); not checked again here.
  assert(SparsityValueInRange(SparsityMode::kThreshold, options.sparsity.threshold));
  assert(SparsityValueInRange(SparsityMode::kNzRatio, options.sparsity.nz_ratio));
  return Exclusive([&] { return RunPrefill(ids, options, cache, observer); });
}

Status Engine::CheckDecode(int32_t token, const KvCache* cache) const {
  SEER_RETURN_IF_ERROR(CheckCache(cache, "decode"));
  SEER_RETURN_IF_ERROR(CheckTokenIds(std::span<const int32_t>(&token, 1), config().vocab_size, "token"));
  const int pos = cache->length();
  if (pos >= config().max_position_embeddings) {
    return InvalidArgument("decode: position " + Str(pos) + " reaches max_position_embeddings " +
                           Str(config().max_position_embeddings));
  }
  if (pos >= cache->capacity()) {
    return ResourceExhausted("decode: the KV cache is full (" + Str(cache->capacity()) + " tokens)");
  }
  return OkStatus();
}

Status Engine::DecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) {
  if (logits == nullptr) return InvalidArgument("decode: null logits output");
  SEER_RETURN_IF_ERROR(CheckDecode(token, cache));
  return Exclusive([&] { return RunDecodeStep(token, cache, logits); });
}

StatusOr<int32_t> Engine::DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler) {
  if (sampler == nullptr) return InvalidArgument("decode: null sampler");
  SEER_RETURN_IF_ERROR(CheckDecode(token, cache));
  return Exclusive([&] { return RunDecodeAndSample(token, cache, sampler); });
}

StatusOr<int32_t> Engine::RunDecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler) {
  std::vector<float> logits;
  SEER_RETURN_IF_ERROR(RunDecodeStep(token, cache, &logits));
  return sampler->Sample(logits);
}

StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options) {
  std::string device = options.device;
  if (device == "auto") {
#ifdef SEER_HAVE_CUDA
    device = CudaDeviceAvailable() ? "cuda" : "cpu";
#else
    device = "cpu";
#endif
  }
  if (device == "cpu") {
    SEER_ASSIGN_OR_RETURN(std::unique_ptr<CpuEngine> engine, CpuEngine::Load(options));
    return std::unique_ptr<Engine>(std::move(engine));
  }
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    SEER_ASSIGN_OR_RETURN(const int index, ParseCudaDeviceIndex(device));
    (void)index;
#ifdef SEER_HAVE_CUDA
    return CreateCudaEngine(options);
#else
    return Unimplemented("device '" + device + "': this build has no CUDA backend (configure on a host with nvcc); "
                         "use --device cpu");
#endif
  }
  return InvalidArgument("device: expected cpu, cuda, cuda:N or auto, got '" + options.device + "'");
}

}  // namespace seer
