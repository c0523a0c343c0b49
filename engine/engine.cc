#include "engine/engine.h"

#include <algorithm>
#include <cassert>
#include <numeric>
#include <string>
#include <vector>

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

StatusOr<std::unique_ptr<KvCache>> Engine::NewCache(int capacity, bool gate_keys) {
  const int max_positions = config().max_position_embeddings;
  if (capacity < 1 || capacity > max_positions) {
    return InvalidArgument("KV cache capacity " + Str(capacity) + " is out of range [1, " + Str(max_positions) +
                           "] (the model's max_position_embeddings)");
  }
  return Exclusive([&] { return AllocateCache(capacity, gate_keys && gates() != nullptr); });
}

Status Engine::CopyPrefix(const KvCache& src, int n, KvCache* dst) {
  SEER_RETURN_IF_ERROR(CheckCache(&src, "copy prefix"));
  SEER_RETURN_IF_ERROR(CheckCache(dst, "copy prefix"));
  if (&src == dst) return InvalidArgument("copy prefix: the source and destination are the same cache");
  if (n < 0 || n > src.length() || n > dst->capacity()) {
    return InvalidArgument("copy prefix: " + Str(n) + " positions; the source holds " + Str(src.length()) +
                           " and the destination has room for " + Str(dst->capacity()));
  }
  if (dst->length() != 0) {
    return FailedPrecondition("copy prefix: the destination already holds " + Str(dst->length()) + " tokens");
  }
  if (dst->has_gate_keys() && !src.has_gate_keys()) {
    return FailedPrecondition("copy prefix: the destination keeps gate keys and the source has none");
  }
  return Exclusive([&]() -> Status {
    SEER_RETURN_IF_ERROR(RunCopyPrefix(src, n, dst));
    dst->set_length(n);
    return OkStatus();
  });
}

Status Engine::RunCopyPrefix(const KvCache& src, int n, KvCache* dst) {
  const KvLayout& l = src.layout();
  const size_t bytes = l.LayerBytes(n);
  std::vector<uint8_t> k(bytes), v(bytes);
  for (int layer = 0; layer < l.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(src.ReadLayer(layer, 0, n, k.data(), v.data()));
    SEER_RETURN_IF_ERROR(dst->WriteLayer(layer, 0, n, l.dtype, k.data(), v.data()));
  }
  if (!dst->has_gate_keys()) return OkStatus();
  const auto* from = dynamic_cast<const HostKvCache*>(&src);
  auto* to = dynamic_cast<HostKvCache*>(dst);
  if (from == nullptr || to == nullptr) return Unimplemented("copy prefix: gate keys between these caches");
  const size_t elems = static_cast<size_t>(n) * l.num_kv_heads * l.head_dim;
  for (int layer = 0; layer < l.num_layers; ++layer) {
    std::copy(from->gate_k(layer), from->gate_k(layer) + elems, to->gate_k(layer));
  }
  return OkStatus();
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
    return ResourceExhausted("ids: " + Str(len) + " tokens exceed the KV cache capacity of " + Str(cache->capacity()));
  }
  if (options.prompt_logprobs < -1 || options.prompt_logprobs > kMaxTopLogprobs) {
    return InvalidArgument("prompt_logprobs: " + Str(options.prompt_logprobs) + " is out of range [-1, " +
                           Str(kMaxTopLogprobs) + "]");
  }
  SEER_RETURN_IF_ERROR(CheckCachedPrefix(len, options, *cache));
  // Valid by construction (engine/model/sparsity.h); not checked again here.
  assert(SparsityValueInRange(SparsityMode::kThreshold, options.sparsity.threshold));
  assert(SparsityValueInRange(SparsityMode::kNzRatio, options.sparsity.nz_ratio));
  return Exclusive([&] { return RunPrefill(ids, options, cache, observer); });
}

Status Engine::CheckCachedPrefix(int64_t len, const PrefillOptions& options, const KvCache& cache) const {
  const int cached = cache.length();
  if (cached == 0) return OkStatus();
  const std::string what = "prefill: a cache that already holds ";
  const bool gated = gates() != nullptr && options.sparsity.mode != SparsityMode::kDense;
  const int block = gated ? std::lcm(kPrefixBlock, gates()->config.block_size) : kPrefixBlock;
  if (cached % block != 0 || cached >= len) {
    return FailedPrecondition(what + Str(cached) + " tokens continues only from a whole number of " + Str(block) +
                              "-token blocks below the prompt's " + Str(len) + " tokens");
  }
  if (options.all_logits || options.prompt_logprobs >= 0 || options.keep_gate_outputs) {
    return FailedPrecondition(what + Str(cached) +
                              " tokens computes only the rest: all_logits, prompt_logprobs and the gate's outputs "
                              "need the whole prompt");
  }
  if (gated && IsBaselineSparsity(options.sparsity.mode)) {
    return FailedPrecondition(what + Str(cached) + " tokens cannot run the baseline sparsity " +
                              SparsityToString(options.sparsity));
  }
  if (gated && !cache.has_gate_keys()) {
    return FailedPrecondition(what + Str(cached) +
                              " tokens runs the gate over them, and it keeps no gate keys "
                              "(NewCache's gate_keys)");
  }
  return OkStatus();
}

Status Engine::CheckDecode(int32_t token, const KvCache* cache) const {
  SEER_RETURN_IF_ERROR(CheckCache(cache, "decode"));
  return CheckNextPosition(token, cache);
}

Status Engine::CheckNextPosition(int32_t token, const KvCache* cache) const {
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

Status Engine::EnablePagedDecode(const PagedDecodeOptions& o) {
  return Exclusive([&]() -> Status {
    if (page_pool_ != nullptr) return FailedPrecondition("paged decode is already enabled");
    if (o.page_tokens < 16 || o.page_tokens > 1024 || o.page_tokens % 16 != 0) {
      return InvalidArgument("--kv-page-tokens: " + Str(o.page_tokens) + " must be a multiple of 16 in [16, 1024]");
    }
    if (o.max_batch < 1 || o.max_batch > 1024) {
      return InvalidArgument("--max-batch: " + Str(o.max_batch) + " is out of range [1, 1024]");
    }
    if (o.pool_bytes < 0 || !(o.pool_fraction > 0.0 && o.pool_fraction <= 1.0)) {
      return InvalidArgument("--kv-pool: bytes must be >= 0 and a fraction in (0, 1]");
    }
    const ModelConfig& c = config();
    PageLayout layout;
    SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> probe, AllocateCache(1, false));
    layout.kv = probe->layout();
    probe.reset();
    layout.page_tokens = o.page_tokens;
    int64_t budget = o.pool_bytes;
    if (budget == 0) {
      SEER_ASSIGN_OR_RETURN(budget, PoolBudgetBytes(o.pool_fraction));
    }
    const int64_t pages = budget / static_cast<int64_t>(layout.PageBytes());
    const int per_sequence = layout.PagesFor(c.max_position_embeddings);
    if (pages < 1) {
      return ResourceExhausted("--kv-pool: " + Str(budget) + " bytes hold no page of " +
                               Str(static_cast<int64_t>(layout.PageBytes())) + " bytes");
    }
    if (pages > 0x7fffffff) return InvalidArgument("--kv-pool: " + Str(pages) + " pages exceed 2^31 - 1");
    SEER_ASSIGN_OR_RETURN(page_pool_, CreatePagePool(layout, static_cast<int>(pages)));
    max_decode_batch_ = o.max_batch;
    (void)per_sequence;  // a pool smaller than one full-length sequence still serves shorter ones
    return PreparePagedDecode(o);
  });
}

Status Engine::CheckPagedCapacity(int capacity) const {
  if (page_pool_ == nullptr) return FailedPrecondition("paged decode is not enabled on this engine");
  const int max_positions = config().max_position_embeddings;
  if (capacity < 1 || capacity > max_positions) {
    return InvalidArgument("KV cache capacity " + Str(capacity) + " is out of range [1, " + Str(max_positions) +
                           "] (the model's max_position_embeddings)");
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<KvCache>> Engine::NewPagedCache(int capacity) {
  SEER_RETURN_IF_ERROR(CheckPagedCapacity(capacity));
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<PagedKvCache> cache, PagedKvCache::Create(page_pool_.get(), capacity));
  return std::unique_ptr<KvCache>(std::move(cache));
}

StatusOr<std::vector<std::unique_ptr<PagedKvCache>>> Engine::NewPagedCacheGroupWhenFree(
    int prefix, int capacity, int count, const std::function<Status()>& cancelled, const PagedGroupStart& start) {
  SEER_RETURN_IF_ERROR(CheckPagedCapacity(capacity));
  if (count < 1 || count > 64) return InvalidArgument("KV cache group: " + Str(count) + " caches, need 1 to 64");
  return PagedKvCache::CreateGroupWhenFree(page_pool_.get(), prefix, capacity, count, cancelled, start);
}

Status Engine::DecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next) {
  if (page_pool_ == nullptr) return FailedPrecondition("decode batch: paged decode is not enabled on this engine");
  if (seqs.empty() || static_cast<int>(seqs.size()) > max_decode_batch_) {
    return InvalidArgument("decode batch: " + Str(static_cast<int64_t>(seqs.size())) + " sequences, need 1 to " +
                           Str(max_decode_batch_) + " (--max-batch)");
  }
  if (next.size() != seqs.size()) return InvalidArgument("decode batch: one output per sequence");
  for (size_t i = 0; i < seqs.size(); ++i) {
    const DecodeSeq& s = seqs[i];
    const auto* paged = dynamic_cast<const PagedKvCache*>(s.cache);
    if (paged == nullptr || paged->pool() != page_pool_.get()) {
      return InvalidArgument("decode batch: sequence " + Str(static_cast<int64_t>(i)) +
                             ": the cache is not from this engine's NewPagedCache");
    }
    if (s.sampler == nullptr)
      return InvalidArgument("decode batch: sequence " + Str(static_cast<int64_t>(i)) + ": null sampler");
    SEER_RETURN_IF_ERROR(
        CheckNextPosition(s.token, s.cache).WithContext("decode batch: sequence " + Str(static_cast<int64_t>(i))));
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].cache == s.cache) {
        return InvalidArgument("decode batch: sequences " + Str(static_cast<int64_t>(j)) + " and " +
                               Str(static_cast<int64_t>(i)) + " share a cache");
      }
    }
  }
  return Exclusive([&] { return RunDecodeBatch(seqs, next); });
}

Status Engine::PageIn(const KvCache& src, KvCache* paged) {
  if (page_pool_ == nullptr) return FailedPrecondition("page in: paged decode is not enabled on this engine");
  SEER_RETURN_IF_ERROR(CheckCache(&src, "page in"));
  auto* dst = dynamic_cast<PagedKvCache*>(paged);
  if (dst == nullptr || dst->pool() != page_pool_.get()) {
    return InvalidArgument("page in: the destination is not a cache from this engine's NewPagedCache");
  }
  if (dst->length() != 0) return InvalidArgument("page in: the destination cache is not empty");
  if (src.length() < 1 || src.length() > dst->capacity()) {
    return InvalidArgument("page in: " + Str(src.length()) + " positions do not fit a paged cache of " +
                           Str(dst->capacity()));
  }
  SEER_RETURN_IF_ERROR(Exclusive([&] { return RunPageIn(src, dst); }));
  dst->set_length(src.length());
  return OkStatus();
}

Status Engine::RunPageIn(const KvCache& src, PagedKvCache* paged) {
  const KvLayout& from = src.layout();
  // A few MiB at a time.
  const int step = static_cast<int>(std::max<size_t>(1, (size_t{8} << 20) / std::max<size_t>(1, from.LayerBytes(1))));
  std::vector<char> k, v;
  for (int layer = 0; layer < from.num_layers; ++layer) {
    for (int t0 = 0; t0 < src.length(); t0 += step) {
      const int n = std::min(step, src.length() - t0);
      k.resize(from.LayerBytes(n));
      v.resize(from.LayerBytes(n));
      SEER_RETURN_IF_ERROR(src.ReadLayer(layer, t0, n, k.data(), v.data()));
      SEER_RETURN_IF_ERROR(paged->WriteLayer(layer, t0, n, from.dtype, k.data(), v.data()));
    }
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<PagePool>> Engine::CreatePagePool(const PageLayout&, int) {
  return Unimplemented(device_name() + " has no paged decode");
}
StatusOr<int64_t> Engine::PoolBudgetBytes(double) { return Unimplemented(device_name() + " has no paged decode"); }
Status Engine::PreparePagedDecode(const PagedDecodeOptions&) {
  return Unimplemented(device_name() + " has no paged decode");
}
Status Engine::RunDecodeBatch(std::span<const DecodeSeq>, std::span<int32_t>) {
  return Unimplemented(device_name() + " has no paged decode");
}

Status Engine::ForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap) {
  SEER_RETURN_IF_ERROR(CheckPromptIds(ids, config().vocab_size, "ids"));
  if (static_cast<int64_t>(ids.size()) > config().max_position_embeddings) {
    return InvalidArgument("ids: " + std::to_string(ids.size()) + " tokens exceed max_position_embeddings " +
                           std::to_string(config().max_position_embeddings));
  }
  return Exclusive([&] { return RunForwardWithAttentionTap(ids, tap); });
}

Status Engine::RunForwardWithAttentionTap(std::span<const int32_t>, const AttentionTapFn&) {
  return Unimplemented("the " + device_name() + " engine has no teacher pass for gate training");
}

StatusOr<std::string> Engine::WarmUp(int max_tokens) {
  if (max_tokens < 1 || max_tokens > config().max_position_embeddings) {
    return InvalidArgument("WarmUp: max_tokens " + std::to_string(max_tokens) + " is out of range [1, " +
                           std::to_string(config().max_position_embeddings) + "] (max_position_embeddings)");
  }
  return Exclusive([&] { return RunWarmUp(max_tokens); });
}

StatusOr<std::string> Engine::RunWarmUp(int) { return std::string(); }

Status CheckDeviceName(std::string_view device) {
  if (device == "cpu" || device == "auto") return OkStatus();
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    SEER_ASSIGN_OR_RETURN(const int index, ParseCudaDeviceIndex(device));
    (void)index;
#ifdef SEER_HAVE_CUDA
    return OkStatus();
#else
    return Unimplemented("device '" + std::string(device) +
                         "': this build has no CUDA backend (configure on a host with nvcc); use --device cpu");
#endif
  }
  return InvalidArgument("device: expected cpu, cuda, cuda:N or auto, got '" + std::string(device) + "'");
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
    return Unimplemented("device '" + device +
                         "': this build has no CUDA backend (configure on a host with nvcc); "
                         "use --device cpu");
#endif
  }
  return InvalidArgument("device: expected cpu, cuda, cuda:N or auto, got '" + options.device + "'");
}

}  // namespace seer
