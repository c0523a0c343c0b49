#include "engine/cpu/cpu_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <thread>

#include "base/clock.h"
#include "engine/model/checkpoint.h"
#include "kernels/common/block_lists.h"
#include "kernels/attention/attention_cpu.h"
#include "kernels/common/parallel.h"
#include "kernels/ops/ops_cpu.h"
#include "kernels/paged_kv/paged_kv_cpu.h"

namespace seer {
namespace {

// A checkpoint tensor as float32, in its own layout. Absent tensors (biases
// the model does not have) give an empty vector.
Status ToFloat(const TensorView& t, std::vector<float>* out) {
  out->clear();
  if (t.data == nullptr) return OkStatus();
  out->resize(static_cast<size_t>(t.numel()));
  if (!ConvertToFloat(t.dtype, t.data, out->size(), out->data())) {
    return InvalidArgument(t.file + ": tensor '" + t.name + "' has dtype " + std::string(DTypeName(t.dtype)) +
                           ", expected F32, F16 or BF16");
  }
  return OkStatus();
}

// An HF Linear weight [out, in] as float32 [in, out], the layout cpu::Linear takes.
Status ToFloatTransposed(const TensorView& t, std::vector<float>* out) {
  std::vector<float> plain;
  SEER_RETURN_IF_ERROR(ToFloat(t, &plain));
  if (t.shape.size() != 2) {
    return InvalidArgument(t.file + ": tensor '" + t.name + "' has shape " + ShapeToString(t.shape) +
                           ", expected a matrix");
  }
  out->resize(plain.size());
  cpu::Transpose(plain.data(), static_cast<int>(t.shape[0]), static_cast<int>(t.shape[1]), out->data());
  return OkStatus();
}

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

}  // namespace

// Per-token buffers of one forward pass; rows is the number of tokens.
struct CpuEngine::Activations {
  Activations(const ModelConfig& c, int n) : rows(n) {
    const size_t r = static_cast<size_t>(n);
    x.resize(r * c.hidden_size);
    normed.resize(r * c.hidden_size);
    q.resize(r * c.num_heads * c.head_dim);
    k.resize(r * c.num_kv_heads * c.head_dim);
    v.resize(r * c.num_kv_heads * c.head_dim);
    attn.resize(r * c.num_heads * c.head_dim);
    gate.resize(r * c.intermediate_size);
    up.resize(r * c.intermediate_size);
    positions.resize(r);
  }
  int rows;
  std::vector<float> x;  // residual stream [rows, hidden]
  std::vector<float> normed;  // [rows, hidden]; also the output of o_proj / down_proj
  std::vector<float> q, k, v;  // [rows, heads, head_dim]
  std::vector<float> attn;  // [rows, Hq, head_dim]
  std::vector<float> gate, up;  // [rows, intermediate]
  std::vector<int32_t> positions;
};

StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::Load(const EngineOptions& options) {
  if (options.threads < 0) {
    return InvalidArgument("threads: " + std::to_string(options.threads) + " is negative (0 = all cores)");
  }
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  SEER_ASSIGN_OR_RETURN(ModelWeightViews views, BindModelWeights(*ckpt));
  const ModelConfig& c = ckpt->config();
  const std::string config_path = ckpt->dir() + "/config.json";
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument(config_path + ": num_attention_heads (" + std::to_string(c.num_heads) +
                           ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return InvalidArgument(config_path + ": head_dim " + std::to_string(c.head_dim) +
                           " must be even and positive for the half-split RoPE");
  }

  std::unique_ptr<CpuEngine> engine(new CpuEngine());
  engine->config_ = c;
  engine->fingerprint_ = ckpt->fingerprint();
  engine->threads_ =
      options.threads > 0 ? options.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  // HF multiplies the float32 scores by head_dim ** -0.5 as a float32 scalar.
  engine->attention_scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  for (double f : RopeInvFreq(c.rope, c.head_dim)) engine->inv_freq_.push_back(static_cast<float>(f));

  try {
    SEER_RETURN_IF_ERROR(ToFloat(views.embed_tokens, &engine->embed_));
    SEER_RETURN_IF_ERROR(ToFloat(views.norm, &engine->final_norm_));
    SEER_RETURN_IF_ERROR(ToFloatTransposed(views.lm_head, &engine->lm_head_t_));
    engine->layers_.resize(c.num_layers);
    for (int i = 0; i < c.num_layers; ++i) {
      const LayerWeightViews& v = views.layers[i];
      LayerWeights& w = engine->layers_[i];
      SEER_RETURN_IF_ERROR(ToFloat(v.input_norm, &w.input_norm));
      SEER_RETURN_IF_ERROR(ToFloat(v.post_attention_norm, &w.post_attention_norm));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.q_proj, &w.q_t));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.k_proj, &w.k_t));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.v_proj, &w.v_t));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.o_proj, &w.o_t));
      SEER_RETURN_IF_ERROR(ToFloat(v.q_bias, &w.q_bias));
      SEER_RETURN_IF_ERROR(ToFloat(v.k_bias, &w.k_bias));
      SEER_RETURN_IF_ERROR(ToFloat(v.v_bias, &w.v_bias));
      SEER_RETURN_IF_ERROR(ToFloat(v.o_bias, &w.o_bias));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.gate_proj, &w.gate_t));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.up_proj, &w.up_t));
      SEER_RETURN_IF_ERROR(ToFloatTransposed(v.down_proj, &w.down_t));
      SEER_RETURN_IF_ERROR(ToFloat(v.gate_bias, &w.gate_bias));
      SEER_RETURN_IF_ERROR(ToFloat(v.up_bias, &w.up_bias));
      SEER_RETURN_IF_ERROR(ToFloat(v.down_bias, &w.down_bias));
    }
  } catch (const std::bad_alloc&) {
    return ResourceExhausted(options.model_dir + ": not enough host memory for the float32 weights");
  }

  if (!options.gates_dir.empty()) {
    SEER_ASSIGN_OR_RETURN(GateWeights gates, LoadGates(options.gates_dir, c));
    engine->gates_ = std::move(gates);
  }
  return engine;
}

std::string CpuEngine::device_name() const { return "cpu (" + std::to_string(threads_) + " threads, float32)"; }

StatusOr<std::unique_ptr<KvCache>> CpuEngine::AllocateCache(int capacity, bool gate_keys) {
  // K and V (and the gate keys), every layer, float32: refuse what would not
  // fit in half of RAM.
  const double planes = gate_keys ? 3.0 : 2.0;
  const double bytes = planes * config_.num_layers * config_.num_kv_heads * double(capacity) * config_.head_dim * 4.0;
  const double ram = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (ram > 0 && bytes > ram / 2) {
    return ResourceExhausted("a KV cache of " + std::to_string(capacity) + " tokens needs " +
                             std::to_string(static_cast<int64_t>(bytes / (1 << 20))) + " MiB, more than half of the " +
                             std::to_string(static_cast<int64_t>(ram / (1 << 20))) + " MiB of host memory");
  }
  try {
    return std::unique_ptr<KvCache>(
        new HostKvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity, gate_keys));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("cannot allocate a KV cache of " + std::to_string(capacity) + " tokens");
  }
}

void CpuEngine::Embed(std::span<const int32_t> ids, Activations& a) const {
  cpu::Embedding(embed_.data(), config_.hidden_size, ids.data(), static_cast<int>(ids.size()), a.x.data());
}

void CpuEngine::AttentionInputs(int layer, Activations& a) const {
  const LayerWeights& w = layers_[layer];
  const int H = config_.hidden_size, D = config_.head_dim;
  cpu::RmsNorm(a.x.data(), a.rows, H, w.input_norm.data(), static_cast<float>(config_.rms_norm_eps), a.normed.data());
  cpu::Linear(a.normed.data(), a.rows, H, w.q_t.data(), config_.num_heads * D, OrNull(w.q_bias), a.q.data(), threads_);
  cpu::Linear(a.normed.data(), a.rows, H, w.k_t.data(), config_.num_kv_heads * D, OrNull(w.k_bias), a.k.data(),
              threads_);
  cpu::Linear(a.normed.data(), a.rows, H, w.v_t.data(), config_.num_kv_heads * D, OrNull(w.v_bias), a.v.data(),
              threads_);
}

StatusOr<GateOutput> CpuEngine::Gate(int layer, const Activations& a, const HostKvCache& cache,
                                     std::vector<float>* whole_q, const SparsityConfig& sparsity) const {
  // The gate sees Q and K as projected, before RoPE (docs/GATES.md).
  const int P = a.positions[0];
  if (P == 0) {
    return RunGate(gates_->layers[layer], gates_->config, config_, a.q.data(), a.k.data(), a.rows, sparsity, threads_);
  }
  // Continuing from a cached prefix: the gate runs over the whole prompt,
  // its K the cached prefix's gate keys and this pass's, its Q zeros before
  // P (`whole_q`, zeroed once a prefill). A row's blocks depend only on its
  // own pooled Q and the pooled K up to it, so the rows from P on come out
  // as in a whole prefill; the prefix's rows are not read.
  const size_t q_row = static_cast<size_t>(config_.num_heads) * config_.head_dim;
  std::copy(a.q.begin(), a.q.end(), whole_q->begin() + static_cast<ptrdiff_t>(static_cast<size_t>(P) * q_row));
  return RunGate(gates_->layers[layer], gates_->config, config_, whole_q->data(), cache.gate_k(layer), P + a.rows,
                 sparsity, threads_);
}

void CpuEngine::RopeAndCache(int layer, Activations& a, HostKvCache* cache) const {
  const int D = config_.head_dim, Hkv = config_.num_kv_heads;
  cpu::ApplyRope(a.q.data(), a.rows, config_.num_heads, D, a.positions.data(), inv_freq_.data());
  cpu::ApplyRope(a.k.data(), a.rows, Hkv, D, a.positions.data(), inv_freq_.data());
  // [rows, Hkv, D] -> the cache's [Hkv, capacity, D] at each row's position.
  float* kc = cache->k(layer);
  float* vc = cache->v(layer);
  for (int r = 0; r < a.rows; ++r) {
    for (int h = 0; h < Hkv; ++h) {
      const size_t src = (static_cast<size_t>(r) * Hkv + h) * D;
      const size_t dst = (static_cast<size_t>(h) * cache->capacity() + a.positions[r]) * D;
      std::memcpy(kc + dst, a.k.data() + src, sizeof(float) * D);
      std::memcpy(vc + dst, a.v.data() + src, sizeof(float) * D);
    }
  }
}

void CpuEngine::Attention(int layer, Activations& a, const HostKvCache& cache, const GateOutput* gate,
                          bool decode) const {
  const int last = a.positions[a.rows - 1];
  cpu::AttentionShape shape{last + 1,         config_.num_heads, config_.num_kv_heads,
                            config_.head_dim, cache.capacity(),  attention_scale_};
  // A prefill pass covers positions first..L-1, first 0 or a cached
  // prefix's length.
  shape.first_row = a.positions[0];
  if (decode) {
    cpu::DecodeAttention(shape, last, a.q.data(), cache.k(layer), cache.v(layer), a.attn.data());
  } else if (gate != nullptr) {
    const BlockLists lists = ToBlockLists(gate->mask);
    cpu::BlockSparseAttention(shape, gate->mask.block_size, lists.offsets.data(), lists.indices.data(), a.q.data(),
                              cache.k(layer), cache.v(layer), a.attn.data(), threads_);
  } else {
    cpu::CausalAttention(shape, a.q.data(), cache.k(layer), cache.v(layer), a.attn.data(), threads_);
  }
}

namespace {

cpu::PagedShape PagedShapeOf(const ModelConfig& c, const PagePool& pool, float scale) {
  cpu::PagedShape s;
  s.num_heads = c.num_heads;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_tokens = pool.layout().page_tokens;
  s.scale = scale;
  return s;
}

const std::vector<int32_t>& PagesOf(const DecodeSeq& s) { return static_cast<const PagedKvCache*>(s.cache)->pages(); }

}  // namespace

void CpuEngine::RopeAndCachePaged(int layer, Activations& a, std::span<const DecodeSeq> seqs,
                                  HostPagePool* pool) const {
  const int D = config_.head_dim, Hkv = config_.num_kv_heads;
  cpu::ApplyRope(a.q.data(), a.rows, config_.num_heads, D, a.positions.data(), inv_freq_.data());
  cpu::ApplyRope(a.k.data(), a.rows, Hkv, D, a.positions.data(), inv_freq_.data());
  const cpu::PagedShape s = PagedShapeOf(config_, *pool, attention_scale_);
  for (int r = 0; r < a.rows; ++r) {
    const size_t row = static_cast<size_t>(r) * Hkv * D;
    cpu::WriteKvPaged(s, a.k.data() + row, a.v.data() + row, PagesOf(seqs[r]).data(), a.positions[r], pool->k(layer),
                      pool->v(layer));
  }
}

void CpuEngine::AttentionPaged(int layer, Activations& a, std::span<const DecodeSeq> seqs,
                               const HostPagePool& pool) const {
  const cpu::PagedShape s = PagedShapeOf(config_, pool, attention_scale_);
  const size_t row = static_cast<size_t>(config_.num_heads) * config_.head_dim;
  cpu::ParallelFor(a.rows, threads_, [&](int r) {
    cpu::PagedDecodeAttention(s, a.q.data() + r * row, pool.k(layer), pool.v(layer), PagesOf(seqs[r]).data(),
                              a.positions[r] + 1, a.attn.data() + r * row);
  });
}

void CpuEngine::OutputAndMlp(int layer, Activations& a) const {
  const LayerWeights& w = layers_[layer];
  const int H = config_.hidden_size, I = config_.intermediate_size;
  const size_t n = static_cast<size_t>(a.rows) * H;
  cpu::Linear(a.attn.data(), a.rows, config_.num_heads * config_.head_dim, w.o_t.data(), H, OrNull(w.o_bias),
              a.normed.data(), threads_);
  cpu::AddInPlace(a.x.data(), a.normed.data(), n);
  cpu::RmsNorm(a.x.data(), a.rows, H, w.post_attention_norm.data(), static_cast<float>(config_.rms_norm_eps),
               a.normed.data());
  cpu::Linear(a.normed.data(), a.rows, H, w.gate_t.data(), I, OrNull(w.gate_bias), a.gate.data(), threads_);
  cpu::Linear(a.normed.data(), a.rows, H, w.up_t.data(), I, OrNull(w.up_bias), a.up.data(), threads_);
  cpu::SwiGlu(a.gate.data(), a.up.data(), static_cast<size_t>(a.rows) * I, a.gate.data());
  cpu::Linear(a.gate.data(), a.rows, I, w.down_t.data(), H, OrNull(w.down_bias), a.normed.data(), threads_);
  cpu::AddInPlace(a.x.data(), a.normed.data(), n);
}

void CpuEngine::Logits(const Activations& a, int first, int rows, float* out) const {
  const int H = config_.hidden_size;
  const float* last = a.x.data() + static_cast<size_t>(first) * H;
  std::vector<float> normed(static_cast<size_t>(rows) * H);
  cpu::RmsNorm(last, rows, H, final_norm_.data(), static_cast<float>(config_.rms_norm_eps), normed.data());
  cpu::Linear(normed.data(), rows, H, lm_head_t_.data(), config_.vocab_size, nullptr, out, threads_);
}

StatusOr<PrefillResult> CpuEngine::RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                              KvCache* cache, PrefillObserver* observer) {
  const Clock::time_point start = Clock::now();
  HostKvCache* kv = AsHostCache(cache);
  const int L = static_cast<int>(ids.size());
  // A cached prefix (Engine::Prefill): rows P.. are computed.
  const int P = kv->length();

  std::optional<Activations> act;
  try {
    act.emplace(config_, L - P);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("ids: not enough host memory for the activations of " + std::to_string(L - P) + " tokens");
  }
  Activations& a = *act;
  for (int i = 0; i < a.rows; ++i) a.positions[i] = P + i;
  PrefillResult result;
  // Stage timing (profile_stages): the wall clock since the last mark.
  Clock::time_point last_mark = Clock::now();
  auto mark = [&](double StageSeconds::*stage) {
    if (!options.profile_stages) return;
    const Clock::time_point now = Clock::now();
    result.stages.*stage += SecondsBetween(last_mark, now);
    last_mark = now;
  };
  Embed(ids.subspan(static_cast<size_t>(P)), a);
  mark(&StageSeconds::embed);

  // The gate runs for a sparse mode or to report its outputs (as on CUDA);
  // past a cached prefix over the whole prompt's Q, zeros before P.
  const bool gated = gates_ && (options.sparsity.mode != SparsityMode::kDense || options.keep_gate_outputs);
  std::vector<float> whole_q;
  if (gated && P > 0) {
    try {
      whole_q.assign(static_cast<size_t>(L) * config_.num_heads * config_.head_dim, 0.0f);
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("ids: not enough host memory for the gate's Q of " + std::to_string(L) + " tokens");
    }
  }
  int64_t kept_total = 0, causal_total = 0;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    const Clock::time_point layer_start = Clock::now();
    AttentionInputs(layer, a);
    if (kv->has_gate_keys()) {  // K before RoPE, at the pass's positions
      const size_t k_row = static_cast<size_t>(config_.num_kv_heads) * config_.head_dim;
      std::copy(a.k.begin(), a.k.end(), kv->gate_k(layer) + static_cast<size_t>(P) * k_row);
    }
    mark(&StageSeconds::attention_inputs);
    std::optional<GateOutput> gate;
    if (gated) {
      SEER_ASSIGN_OR_RETURN(GateOutput g, Gate(layer, a, *kv, &whole_q, options.sparsity));
      gate = std::move(g);
      mark(&StageSeconds::gate);
    }
    RopeAndCache(layer, a, kv);
    mark(&StageSeconds::rope_and_cache);
    Attention(layer, a, *kv, gate ? &*gate : nullptr, /*decode=*/false);
    mark(&StageSeconds::attention);
    OutputAndMlp(layer, a);
    mark(&StageSeconds::output_and_mlp);
    double density = 1.0;
    if (gate) {
      const BlockMask& m = gate->mask;
      const int64_t kept = KeptFrom(m, P / m.block_size);
      const int64_t causal = CausalBlocksFrom(m.num_heads, m.num_blocks, P / m.block_size);
      density = causal > 0 ? double(kept) / double(causal) : 1.0;
      kept_total += kept;
      causal_total += causal;
    }
    result.layer_density.push_back(density);
    if (gate && options.keep_gate_outputs) result.gate_outputs.push_back(std::move(*gate));
    if (observer != nullptr) {
      LayerDone done;
      done.layer = layer;
      done.seq_len = L;
      done.first = P;
      done.cache = kv;
      done.density = density;
      done.seconds = SecondsSince(layer_start);
      SEER_RETURN_IF_ERROR(observer->OnLayerDone(done));
      last_mark = Clock::now();  // the observer's time is no stage's
    }
  }
  result.overall_density = causal_total > 0 ? double(kept_total) / double(causal_total) : 1.0;

  // A's rows are positions P.. (P is 0 whenever every row is asked for).
  result.logits_rows = options.all_logits ? L : 1;
  try {
    result.logits.resize(static_cast<size_t>(result.logits_rows) * config_.vocab_size);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("ids: not enough host memory for " + std::to_string(L) + " rows of logits");
  }
  Logits(a, a.rows - result.logits_rows, result.logits_rows, result.logits.data());
  if (options.prompt_logprobs >= 0) {
    // In chunks of 64 rows: row r's logits give ids[r + 1]'s logprobs.
    constexpr int kChunk = 64;
    const size_t vocab = static_cast<size_t>(config_.vocab_size);
    std::vector<float> rows(kChunk * vocab);
    for (int r0 = 0; r0 < L - 1; r0 += kChunk) {
      const int n = std::min(kChunk, L - 1 - r0);
      Logits(a, r0, n, rows.data());
      AppendLogprobsOfRows(rows.data(), n, static_cast<int>(vocab), ids.data() + r0 + 1, options.prompt_logprobs,
                           threads_, &result.prompt_logprobs);
    }
  }
  mark(&StageSeconds::logits);
  kv->set_length(L);
  result.seconds = SecondsSince(start);
  return result;
}

Status CpuEngine::RunForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap) {
  const int L = static_cast<int>(ids.size());
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, AllocateCache(L, false));
  HostKvCache* kv = AsHostCache(cache.get());
  std::optional<Activations> act;
  std::vector<float> q_pre, k_pre;
  try {
    act.emplace(config_, L);
    q_pre.resize(act->q.size());
    k_pre.resize(act->k.size());
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("ids: not enough host memory for the activations of " + std::to_string(L) + " tokens");
  }
  Activations& a = *act;
  for (int i = 0; i < L; ++i) a.positions[i] = i;
  Embed(ids, a);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    AttentionInputs(layer, a);
    std::copy(a.q.begin(), a.q.end(), q_pre.begin());
    std::copy(a.k.begin(), a.k.end(), k_pre.begin());
    RopeAndCache(layer, a, kv);
    AttentionTap t;
    t.layer = layer;
    t.seq_len = L;
    t.q = q_pre.data();
    t.k = k_pre.data();
    t.q_rope = a.q.data();
    t.k_rope = a.k.data();
    SEER_RETURN_IF_ERROR(tap(t));
    if (layer + 1 == config_.num_layers) break;  // nothing reads the last layer's output
    Attention(layer, a, *kv, nullptr, /*decode=*/false);
    OutputAndMlp(layer, a);
  }
  return OkStatus();
}

Status CpuEngine::RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) {
  HostKvCache* kv = AsHostCache(cache);
  const int pos = kv->length();
  Activations a(config_, 1);
  a.positions[0] = pos;
  Embed(std::span<const int32_t>(&token, 1), a);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    AttentionInputs(layer, a);
    RopeAndCache(layer, a, kv);
    Attention(layer, a, *kv, nullptr, /*decode=*/true);
    OutputAndMlp(layer, a);
  }
  logits->resize(config_.vocab_size);
  Logits(a, 0, 1, logits->data());
  kv->set_length(pos + 1);
  return OkStatus();
}

StatusOr<std::unique_ptr<PagePool>> CpuEngine::CreatePagePool(const PageLayout& layout, int pages) {
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<HostPagePool> pool, HostPagePool::Create(layout, pages));
  return std::unique_ptr<PagePool>(std::move(pool));
}

StatusOr<int64_t> CpuEngine::PoolBudgetBytes(double fraction) {
  const double available = double(sysconf(_SC_AVPHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (!(available > 0)) return Internal("cannot read the host's available memory (sysconf)");
  return static_cast<int64_t>(available * fraction);
}

Status CpuEngine::RunDecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next) {
  auto* pool = static_cast<HostPagePool*>(page_pool());
  const int B = static_cast<int>(seqs.size());
  Activations a(config_, B);
  std::vector<int32_t> ids(B);
  for (int r = 0; r < B; ++r) {
    ids[r] = seqs[r].token;
    a.positions[r] = seqs[r].cache->length();
  }
  Embed(ids, a);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    AttentionInputs(layer, a);
    RopeAndCachePaged(layer, a, seqs, pool);
    AttentionPaged(layer, a, seqs, *pool);
    OutputAndMlp(layer, a);
  }
  std::vector<float> logits(static_cast<size_t>(B) * config_.vocab_size);
  Logits(a, a.rows - B, B, logits.data());
  for (int r = 0; r < B; ++r) {
    next[r] = seqs[r].sampler->Sample(
        std::span<const float>(logits.data() + static_cast<size_t>(r) * config_.vocab_size, config_.vocab_size));
    seqs[r].cache->set_length(a.positions[r] + 1);
  }
  return OkStatus();
}

}  // namespace seer
