// The backend-agnostic engine interface: what seer run, seer-prefill and
// seer-decode drive. The CPU reference (float32) and the CUDA backend (bf16)
// both implement it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/model/gates.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/model_config.h"
#include "kernels/sampling/sampler.h"
#include "engine/model/sparsity.h"

namespace seer {

struct PrefillOptions {
  // Used when the engine has gates; without gates every layer is dense.
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

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual uint64_t fingerprint() const = 0;
  // Null when the engine runs without gates.
  virtual const GateWeights* gates() const = 0;
  virtual std::string device_name() const = 0;

  // A cache for up to `capacity` tokens, or RESOURCE_EXHAUSTED.
  virtual StatusOr<std::unique_ptr<KvCache>> NewCache(int capacity) = 0;

  // Runs `ids` from position 0 into an empty `cache`.
  virtual StatusOr<PrefillResult> Prefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                          KvCache* cache, PrefillObserver* observer) = 0;

  // Appends `token` at position cache->length() (dense attention) and writes
  // the logits of that position into `logits` ([vocab]).
  virtual Status DecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) = 0;

  // DecodeStep, then the next token drawn from its logits by `sampler`, with
  // exactly Sampler::Sample's choice and use of the random stream. The
  // default samples on the host; a backend may sample where the logits are.
  virtual StatusOr<int32_t> DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler);
};

struct EngineOptions {
  std::string model_dir;
  std::string gates_dir;  // empty: no gates, dense prefill
  std::string device = "auto";  // "cpu", "cuda", or "auto" (cuda when a GPU is present)
  int threads = 0;  // CPU threads; 0 = hardware concurrency
};

StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options);

}  // namespace seer
