// The backend-agnostic engine interface: what seer run, seer-prefill and
// seer-decode drive. The CPU reference (float32, engine/cpu) and the CUDA
// backend (bf16, engine/cuda) implement it.
//
// The public calls are not virtual: each checks its preconditions once, here,
// for every backend, and takes the engine for the length of the call (a
// backend runs one forward pass at a time: its buffers are shared). A caller
// that needs several calls back to back (allocate a cache, then prefill into
// it) wraps them in Exclusive(). This is the one place that serialises use of
// an engine.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"
#include "engine/model/sparsity.h"
#include "kernels/sampling/sampler.h"

namespace seer {

struct PrefillOptions {
  // Used when the engine has gates; without gates every layer is dense.
  // Resolved by engine/model/sparsity (ResolveSparsity), so always valid.
  SparsityConfig sparsity;
  // Return logits for every position ([L, vocab]) rather than the last only.
  bool all_logits = false;
  // Keep each layer's gate output (mask and probabilities) for dumps.
  bool keep_gate_outputs = false;
};

// Handed to the observer as soon as a layer's K/V is final.
struct LayerDone {
  int layer = 0;
  int seq_len = 0;
  const KvCache* cache = nullptr;
  double density = 1.0;  // kept / causal blocks for this layer (1 when dense)
  double seconds = 0.0;  // compute time of the layer
};

class PrefillObserver {
 public:
  virtual ~PrefillObserver() = default;
  // A non-OK return stops the prefill with that status (cancellation).
  virtual Status OnLayerDone(const LayerDone& done) = 0;
};

struct PrefillResult {
  int logits_rows = 0;          // 1 or L
  std::vector<float> logits;    // [logits_rows, vocab]
  std::vector<double> layer_density;
  double overall_density = 1.0;  // kept / causal blocks over all layers and heads
  std::vector<GateOutput> gate_outputs;  // per layer, when keep_gate_outputs and gated
  double seconds = 0.0;
};

// Every id in [0, vocab_size): a bad one is INVALID_ARGUMENT naming
// `field`[i], its value and the range.
Status CheckTokenIds(std::span<const int32_t> ids, int vocab_size, std::string_view field);
// CheckTokenIds, and at least one id.
Status CheckPromptIds(std::span<const int32_t> ids, int vocab_size, std::string_view field);

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual uint64_t fingerprint() const = 0;
  // Null when the engine runs without gates.
  virtual const GateWeights* gates() const = 0;
  virtual std::string device_name() const = 0;

  // A cache for up to `capacity` tokens (1 to max_position_embeddings), or
  // RESOURCE_EXHAUSTED when it does not fit.
  StatusOr<std::unique_ptr<KvCache>> NewCache(int capacity);

  // Runs `ids` (1 to min(max_position_embeddings, capacity) tokens, each in
  // the vocabulary) from position 0 into an empty `cache` from NewCache.
  StatusOr<PrefillResult> Prefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                  PrefillObserver* observer);

  // Appends `token` at position cache->length() (dense attention) and writes
  // the logits of that position into `logits` ([vocab]).
  Status DecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits);

  // DecodeStep, then the next token drawn from its logits by `sampler`, with
  // exactly Sampler::Sample's choice and use of the random stream. A backend
  // may sample where the logits are.
  StatusOr<int32_t> DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler);

  // Runs `fn` with the engine to itself: the calls it makes do not interleave
  // with other threads' calls.
  template <typename Fn>
  decltype(auto) Exclusive(Fn&& fn) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    return fn();
  }

 protected:
  // The backends' side. Each runs with the engine held and the public call's
  // preconditions checked; the cache is one of this engine's.
  virtual StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity) = 0;
  virtual StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                             KvCache* cache, PrefillObserver* observer) = 0;
  virtual Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) = 0;
  // Default: RunDecodeStep, then `sampler` on the host.
  virtual StatusOr<int32_t> RunDecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler);
  // Whether `cache` is of this backend's kind (made by its AllocateCache).
  virtual bool OwnsCacheType(const KvCache& cache) const = 0;

 private:
  // A cache this engine can use: non-null and with the model's layout.
  Status CheckCache(const KvCache* cache, const char* call) const;
  // The next position of a decode step: in range and with room in the cache.
  Status CheckDecode(int32_t token, const KvCache* cache) const;

  std::recursive_mutex mu_;
};

struct EngineOptions {
  std::string model_dir;
  std::string gates_dir;  // empty: no gates, dense prefill
  // "cpu", "cuda" (device 0), "cuda:N", or "auto" (cuda when a GPU is present).
  std::string device = "auto";
  int threads = 0;  // CPU threads; 0 = hardware concurrency
};

StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options);

// "cuda" -> 0, "cuda:N" -> N; INVALID_ARGUMENT for anything else.
StatusOr<int> ParseCudaDeviceIndex(std::string_view device);

}  // namespace seer
