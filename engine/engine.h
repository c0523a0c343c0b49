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
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "engine/kv/page_pool.h"
#include "engine/model/gates.h"
#include "engine/model/model_config.h"
#include "engine/model/sparsity.h"
#include "kernels/sampling/sampler.h"

namespace seer {

// A cached prefix is a whole number of these blocks (the gate's pooling
// unit, DESIGN §1).
inline constexpr int kPrefixBlock = 64;

struct PrefillOptions {
  // Used when the engine has gates; without gates every layer is dense.
  // Resolved by engine/model/sparsity (ResolveSparsity), so always valid.
  SparsityConfig sparsity;
  // Return logits for every position ([L, vocab]) rather than the last only.
  bool all_logits = false;
  // -1: none. 0 to kMaxTopLogprobs: PrefillResult::prompt_logprobs holds,
  // for each prompt token after the first, its logprobs given the tokens
  // before it, with this many alternatives (log_softmax of the raw logits,
  // as Sampler reports a generated token's). The rows' logits are computed
  // in chunks and not kept: the result's logits stay as all_logits says.
  int prompt_logprobs = -1;
  // Keep each layer's gate output (mask and probabilities) for dumps.
  bool keep_gate_outputs = false;
  // Time each stage (PrefillResult::stages): events between the stages on the
  // GPU, the wall clock on the CPU. For benchmarks; off, nothing is recorded.
  bool profile_stages = false;
};

// Seconds per stage of one prefill, summed over the layers.
struct StageSeconds {
  double embed = 0.0;
  double attention_inputs = 0.0;  // RMSNorm + q/k/v GEMMs
  double gate = 0.0;
  double rope_and_cache = 0.0;
  double attention = 0.0;
  double output_and_mlp = 0.0;  // o_proj + MLP GEMMs and their elementwise ops
  double logits = 0.0;
};

// Handed to the observer as soon as a layer's K/V is final.
struct LayerDone {
  int layer = 0;
  int seq_len = 0;
  int first = 0;  // positions first.. were computed; a cached prefix before
  const KvCache* cache = nullptr;
  double density = 1.0;  // kept / causal blocks of the computed rows for this layer (1 when dense)
  double seconds = 0.0;  // compute time of the layer
};

class PrefillObserver {
 public:
  virtual ~PrefillObserver() = default;
  // A non-OK return stops the prefill with that status (cancellation).
  virtual Status OnLayerDone(const LayerDone& done) = 0;
};

struct PrefillResult {
  int logits_rows = 0;  // 1 or L
  std::vector<float> logits;  // [logits_rows, vocab]
  std::vector<double> layer_density;
  double overall_density = 1.0;  // kept / causal blocks over all layers and heads
  std::vector<GateOutput> gate_outputs;  // per layer, when keep_gate_outputs and gated
  // When options.prompt_logprobs >= 0: L - 1 entries, entry i for ids[i + 1].
  std::vector<TokenLogprobs> prompt_logprobs;
  double seconds = 0.0;
  StageSeconds stages;  // when profile_stages
};

// Batched decode over a paged KV cache (continuous batching; the decode
// worker's path). The pool is sized once, when paged decode is enabled.
struct PagedDecodeOptions {
  int page_tokens = 64;
  // The pool: pool_bytes when > 0, else pool_fraction of the memory free
  // after the weights (the device's for CUDA, the host's for the CPU).
  int64_t pool_bytes = 0;
  double pool_fraction = 0.5;
  int max_batch = 64;  // sequences per step
  // The CUDA engine records a step's layers once as a CUDA graph and replays
  // it while the batch size and the attention's key splits stay the same
  // (one launch instead of ~500 at the 8B shape); the CPU engine ignores it.
  bool cuda_graphs = true;
};

// One sequence of a batched decode step: `token` goes in at position
// cache->length(); `sampler` draws the token after it.
struct DecodeSeq {
  KvCache* cache = nullptr;  // from NewPagedCache
  int32_t token = 0;
  Sampler* sampler = nullptr;
};

// Every id in [0, vocab_size): a bad one is INVALID_ARGUMENT naming
// `field`[i], its value and the range.
Status CheckTokenIds(std::span<const int32_t> ids, int vocab_size, std::string_view field);
// CheckTokenIds, and at least one id.
Status CheckPromptIds(std::span<const int32_t> ids, int vocab_size, std::string_view field);

// One layer of a frozen forward pass as a gate trainer reads it
// (Engine::ForwardWithAttentionTap): the layer's Q and K straight after the
// projections, the gate's input, and either Q and K after RoPE (what attention
// sees; the CPU backend) or the layer's distillation target already computed
// from them (the CUDA backend, kernels/gate/distill_target.h). Host memory,
// valid during the call.
struct AttentionTap {
  int layer = 0;
  int seq_len = 0;
  const float* q = nullptr;  // [L, Hq, head_dim], pre-RoPE, bias included
  const float* k = nullptr;  // [L, Hkv, head_dim]
  const float* q_rope = nullptr;  // [L, Hq, head_dim], after RoPE; null when `target` is set
  const float* k_rope = nullptr;  // [L, Hkv, head_dim]
  // [Hq, nb, nb] over 64-token blocks (DESIGN §1), or null: then the
  // consumer computes it from q_rope and k_rope (kernels/gate/distill_target_cpu.h).
  const float* target = nullptr;
};
using AttentionTapFn = std::function<Status(const AttentionTap&)>;

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  virtual uint64_t fingerprint() const = 0;
  // Null when the engine runs without gates.
  virtual const GateWeights* gates() const = 0;
  virtual std::string device_name() const = 0;
  // The memory of the engine's device, used (by every process on it) and
  // total; nullopt for the CPU.
  struct DeviceMemory {
    size_t used = 0;
    size_t total = 0;
  };
  virtual std::optional<DeviceMemory> device_memory() const { return std::nullopt; }

  // A cache for up to `capacity` tokens (1 to max_position_embeddings), or
  // RESOURCE_EXHAUSTED when it does not fit. With `gate_keys` (and gates) it
  // also keeps each layer's K before RoPE (KvCache::has_gate_keys), which a
  // gated prefill continuing from its prefix needs; an engine without gates
  // ignores it.
  StatusOr<std::unique_ptr<KvCache>> NewCache(int capacity, bool gate_keys = false);

  // Runs `ids` (1 to min(max_position_embeddings, capacity) tokens, each in
  // the vocabulary) into `cache` from NewCache, and sets its length to
  // ids.size().
  //
  // An empty cache runs the whole prompt from position 0. A cache that
  // already holds P = cache->length() positions continues from there: the
  // caller promises that they hold the K/V (and, gated, the gate keys) that
  // a prefill of ids[0, P) with the same options wrote (CopyPrefix moves
  // them from an earlier request's cache), and only positions P.. are
  // computed. P must be a whole number of 64-token blocks (the gate's pooling
  // unit; gated, of the gates' block size too) and below ids.size(); options may not ask for every row
  // (all_logits, prompt_logprobs), the gate's outputs or a baseline
  // sparsity; a gated prefill needs the prefix's gate keys. The result's
  // densities then count the computed rows' blocks. Whether the prefix's
  // K/V equal what a whole prefill of `ids` would have written is the
  // caller's to judge (engine/kv/prefix_store.h: exact for dense and
  // threshold selection, never for nz_ratio).
  StatusOr<PrefillResult> Prefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                  PrefillObserver* observer);

  // Copies positions [0, n) of every layer's K/V, and the gate keys where
  // `dst` has them (then `src` must too), from `src` into the empty `dst`
  // (both from this engine's NewCache, n <= both capacities) and sets
  // dst's length to n: how a prefill takes a cached prefix.
  Status CopyPrefix(const KvCache& src, int n, KvCache* dst);

  // Appends `token` at position cache->length() (dense attention) and writes
  // the logits of that position into `logits` ([vocab]).
  Status DecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits);

  // DecodeStep, then the next token drawn from its logits by `sampler`, with
  // exactly Sampler::Sample's choice and use of the random stream. A backend
  // may sample where the logits are.
  StatusOr<int32_t> DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler);

  // Creates the page pool for batched decode. Once per engine:
  // FAILED_PRECONDITION the second time; RESOURCE_EXHAUSTED when the pool
  // would not hold one sequence of max_position_embeddings.
  Status EnablePagedDecode(const PagedDecodeOptions& options);
  // Null until EnablePagedDecode.
  PagePool* page_pool() const { return page_pool_.get(); }
  int max_decode_batch() const { return max_decode_batch_; }

  // A paged cache for up to `capacity` positions, every page reserved now:
  // RESOURCE_EXHAUSTED when the pool lacks them.
  StatusOr<std::unique_ptr<KvCache>> NewPagedCache(int capacity);
  // The caches of a request's `count` choices (1 to 64; a request alone is a
  // group of one), each for `capacity` positions, sharing the whole pages of
  // their first `prefix` positions, the prompt
  // (PagedKvCache::CreateGroupWhenFree): the prompt's KV goes into the
  // first, and each other one takes it with PagedKvCache::AdoptPrefix. Waits
  // for the pages, first come first served, until `cancelled` returns an
  // error.
  // `start`: pages that hold the prompt's first positions already, and how
  // to free pages while short (PagedGroupStart).
  StatusOr<std::vector<std::unique_ptr<PagedKvCache>>> NewPagedCacheGroupWhenFree(
      int prefix, int capacity, int count, const std::function<Status()>& cancelled, const PagedGroupStart& start = {});

  // Copies the prompt KV in `src` (a cache from NewCache: positions
  // [0, src.length())) into the empty paged cache `paged` (from
  // NewPagedCache, with room for them) and sets its length: how a decode
  // worker moves the KV it received into its page pool.
  Status PageIn(const KvCache& src, KvCache* paged);

  // One decode step for 1 to max_decode_batch() sequences, each with its own
  // cache, position and sampler: next[i] is the token sampled after
  // seqs[i].token (exactly as DecodeAndSample would give it alone: a
  // sequence's result never depends on the rest of the batch).
  Status DecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next);

  // The teacher pass of gate distillation (train/): runs `ids` (checked as a
  // prompt, at most max_position_embeddings) from position 0 through the
  // model with dense attention, never the gates, and calls `tap` once per
  // layer, after that layer's RoPE. No logits are computed. A non-OK status
  // from `tap` stops the pass and is returned. Holds the engine for the whole
  // pass. UNIMPLEMENTED on a backend without it.
  Status ForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap);

  // Readies the engine for prompts of up to `max_tokens` tokens (1 to
  // max_position_embeddings) before the first one arrives. On CUDA it times
  // the prefill's large GEMMs for each power-of-two bucket of rows up to
  // max_tokens (engine/cuda/gemm_tuner.h), which the first prompt of each
  // size would otherwise wait for, and keeps the activations of the largest
  // bucket that fits. Returns a line for the log, empty when there was
  // nothing to do (the CPU, short limits, SEER_GEMM_TUNING=0). Holds the
  // engine.
  StatusOr<std::string> WarmUp(int max_tokens);

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
  virtual StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) = 0;
  virtual StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                             KvCache* cache, PrefillObserver* observer) = 0;
  virtual Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) = 0;
  // Default: RunDecodeStep, then `sampler` on the host.
  virtual StatusOr<int32_t> RunDecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler);
  // Whether `cache` is of this backend's kind (made by its AllocateCache).
  virtual bool OwnsCacheType(const KvCache& cache) const = 0;
  // Paged decode (a backend without it keeps these defaults, UNIMPLEMENTED).
  // The backend's page storage for `pages` pages of `layout`, and the bytes
  // it may use when options.pool_bytes is 0.
  virtual StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const PageLayout& layout, int pages);
  virtual StatusOr<int64_t> PoolBudgetBytes(double fraction);
  // Called once, after the pool exists: buffers for options.max_batch rows.
  virtual Status PreparePagedDecode(const PagedDecodeOptions& options);
  // PageIn, checked. Default: through host memory, a layer at a time
  // (ReadLayer, then the pool's WriteTokens).
  virtual Status RunPageIn(const KvCache& src, PagedKvCache* paged);
  // The step, with every sequence checked (paged caches of this pool,
  // tokens in range, room in the cache, distinct caches).
  virtual Status RunDecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next);
  // CopyPrefix, checked. Default: K/V through host memory a layer at a time
  // (ReadLayer, WriteLayer); gate keys between host caches only.
  virtual Status RunCopyPrefix(const KvCache& src, int n, KvCache* dst);
  // ForwardWithAttentionTap, checked. Default: UNIMPLEMENTED.
  virtual Status RunForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap);
  // WarmUp, checked. Default: nothing to do ("").
  virtual StatusOr<std::string> RunWarmUp(int max_tokens);

 private:
  // Paged decode is enabled and `capacity` is within the model's positions.
  Status CheckPagedCapacity(int capacity) const;
  // A prefill of `len` tokens may continue from what `cache` holds
  // (Prefill's rules).
  Status CheckCachedPrefix(int64_t len, const PrefillOptions& options, const KvCache& cache) const;
  // A cache this engine can use: non-null and with the model's layout.
  Status CheckCache(const KvCache* cache, const char* call) const;
  // A decode step's cache (CheckCache) and its next position (CheckNextPosition).
  Status CheckDecode(int32_t token, const KvCache* cache) const;
  // The token is in the vocabulary and the next position is below
  // max_position_embeddings and within the cache's capacity.
  Status CheckNextPosition(int32_t token, const KvCache* cache) const;

  std::recursive_mutex mu_;
  std::unique_ptr<PagePool> page_pool_;
  int max_decode_batch_ = 0;
};

// CUDA: the largest buffers that rows go through in chunks: the MLP's two
// intermediates (a prefill's, and a batched decode step's, whose fused Q/K/V
// output shares them), and the float logits of an all-logits prefill or a
// batched decode step. 0 keeps the default (1 GiB, 256 MiB); a chunk is at
// least one row whatever the limit. The CPU engine ignores them. Tests
// shrink them to run the chunked paths on small models; a batched decode
// whose --max-batch rows exceed one MLP chunk (never at the default) runs
// its Q/K/V GEMMs unfused, and a sequence's tokens may then depend on the
// rest of the batch by GEMM rounding.
struct ChunkLimits {
  int64_t mlp_bytes = 0;
  int64_t logits_bytes = 0;
};

struct EngineOptions {
  std::string model_dir;
  std::string gates_dir;  // empty: no gates, dense prefill
  // "cpu", "cuda" (device 0), "cuda:N", or "auto" (cuda when a GPU is present).
  std::string device = "auto";
  int threads = 0;  // CPU threads; 0 = hardware concurrency
  // CUDA: time the prefill's large GEMMs once per class of problem and run
  // the fastest algorithm (engine/cuda/gemm_tuner.h). A one-shot run leaves
  // it off: the timing costs more than one prefill saves.
  // SEER_GEMM_TUNING=0 turns it off everywhere.
  bool gemm_tuning = true;
  ChunkLimits chunk_limits;
};

StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options);

// "cuda" -> 0, "cuda:N" -> N; INVALID_ARGUMENT for anything else.
StatusOr<int> ParseCudaDeviceIndex(std::string_view device);

// Whether CreateEngine can take `device` in this build, before any model is
// read: cpu, auto, or (with a CUDA backend) cuda / cuda:N. INVALID_ARGUMENT
// naming the accepted values, or UNIMPLEMENTED for cuda without CUDA.
Status CheckDeviceName(std::string_view device);

}  // namespace seer
