// The CPU reference backend: the whole model in float32, computing what
// Hugging Face's float32 forward computes, with SeerAttention gates and
// block-sparse attention when gates are loaded. It is the twin the CUDA
// backend and the fixtures are checked against, and fast enough for tests
// (kernels/cpu: tiled, multithreaded).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/kv/kv_cache.h"

namespace seer {

class CpuEngine final : public Engine {
 public:
  // Opens the checkpoint in options.model_dir, converts every weight to
  // float32 once (projection weights transposed to [in, out]) and releases
  // the mapping; loads options.gates_dir when it is set.
  static StatusOr<std::unique_ptr<CpuEngine>> Load(const EngineOptions& options);

  const ModelConfig& config() const override { return config_; }
  uint64_t fingerprint() const override { return fingerprint_; }
  const GateWeights* gates() const override { return gates_ ? &*gates_ : nullptr; }
  std::string device_name() const override;
  int num_threads() const { return threads_; }

  // Prefill and decode run the same named stages as the CUDA backend, per
  // layer: AttentionInputs, Gate (prefill, when gated), RopeAndCache,
  // Attention, OutputAndMlp; Embed before the layers and Logits after.

 protected:
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) override;
  // The teacher pass: each layer's float32 Q/K before and after RoPE.
  Status RunForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap) override;
  StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                     PrefillObserver* observer) override;
  Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) override;
  bool OwnsCacheType(const KvCache& cache) const override {
    return dynamic_cast<const HostKvCache*>(&cache) != nullptr;
  }
  StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const PageLayout& layout, int pages) override;
  StatusOr<int64_t> PoolBudgetBytes(double fraction) override;
  Status PreparePagedDecode(const PagedDecodeOptions& /*options*/) override { return OkStatus(); }
  Status RunDecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next) override;

 private:
  // Float32 weights of one layer. *_t are HF Linear weights transposed to
  // [in, out] (see cpu::Linear); biases are empty when absent.
  struct LayerWeights {
    std::vector<float> input_norm, post_attention_norm;
    std::vector<float> q_t, k_t, v_t, o_t;
    std::vector<float> q_bias, k_bias, v_bias, o_bias;
    std::vector<float> gate_t, up_t, down_t;
    std::vector<float> gate_bias, up_bias, down_bias;
  };

  // Scratch for `rows` tokens passing through a layer.
  struct Activations;

  CpuEngine() = default;

  // The cache as this engine's HostKvCache (the base checked its type and layout).
  static HostKvCache* AsHostCache(KvCache* cache) { return static_cast<HostKvCache*>(cache); }

  // The stages. Embedding rows of `ids` into a.x.
  void Embed(std::span<const int32_t> ids, Activations& a) const;
  // RMSNorm and the q/k/v projections of `layer` for a.rows tokens, into
  // a.q / a.k / a.v (pre-RoPE, bias included).
  void AttentionInputs(int layer, Activations& a) const;
  // The layer's gate on the pre-RoPE a.q / a.k. Past a cached prefix it
  // runs over the whole prompt, its K the cache's gate keys (which the pass
  // has written for its own rows by then) and its Q `whole_q`: the whole
  // prompt's rows, zeros before the pass's, which it fills.
  StatusOr<GateOutput> Gate(int layer, const Activations& a, const HostKvCache& cache, std::vector<float>* whole_q,
                            const SparsityConfig& sparsity) const;
  // RoPE at positions a.positions on q and k, then k and v into the cache at
  // those positions.
  void RopeAndCache(int layer, Activations& a, HostKvCache* cache) const;
  // The batched decode step's forms of RopeAndCache and Attention: row r is
  // sequence seqs[r] at position a.positions[r], its K/V in the pool's pages.
  void RopeAndCachePaged(int layer, Activations& a, std::span<const DecodeSeq> seqs, HostPagePool* pool) const;
  void AttentionPaged(int layer, Activations& a, std::span<const DecodeSeq> seqs, const HostPagePool& pool) const;
  // Attention of a.q over the cache into a.attn: for a prefill pass (rows
  // at positions first..L-1) block-sparse when `gate` is given, else dense
  // causal; for a decode step at position p, keys 0..p.
  void Attention(int layer, Activations& a, const HostKvCache& cache, const GateOutput* gate, bool decode) const;
  // o_proj, residual, post-attention norm, SwiGLU MLP, residual: a.attn -> a.x.
  void OutputAndMlp(int layer, Activations& a) const;
  // Final norm and lm_head for the last `rows` rows of a.x.
  // Logits of rows [first, first + rows) into out ([rows, vocab]).
  void Logits(const Activations& a, int first, int rows, float* out) const;

  ModelConfig config_;
  uint64_t fingerprint_ = 0;
  std::optional<GateWeights> gates_;
  int threads_ = 1;
  float attention_scale_ = 1.0f;
  std::vector<float> inv_freq_;  // RoPE, head_dim / 2 values
  std::vector<float> embed_;  // [vocab, hidden]
  std::vector<float> final_norm_;
  std::vector<float> lm_head_t_;  // [hidden, vocab]
  std::vector<LayerWeights> layers_;
};

}  // namespace seer
