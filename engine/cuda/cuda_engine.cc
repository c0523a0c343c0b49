// CudaEngine: the model graph on the GPU.
//
// Prefill, per layer (everything on one stream, no host sync unless an
// observer wants the layer):
//   RMSNorm -> q/k/v GEMMs (+bias) -> [gate on pre-RoPE q, k -> CSR lists]
//   -> RoPE -> K/V into the cache -> block-sparse (or dense causal) attention
//   -> o_proj GEMM accumulated into the float32 residual
//   -> MLP in row chunks: RMSNorm -> gate/up GEMMs -> SwiGLU -> down GEMM
//      accumulated into the residual
// then the final norm and the lm_head on the last row (or all rows, chunked).
// The residual stream is float32; GEMM operands are bf16 with float32
// accumulation (cuBLAS, CUBLAS_COMPUTE_32F).

#include "engine/cuda/cuda_engine.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "engine/model/checkpoint.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_kv_cache.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/gemm.h"
#include "engine/cuda/prefill_plan.h"
#include "kernels/attention/attention.h"
#include "kernels/gate/gate.h"
#include "kernels/ops/ops.h"
#include "kernels/sampling/sampling.h"

namespace seer {
namespace {

using bf16 = __nv_bfloat16;

// Memory left free after admitting a request: cuBLAS, the CUDA context's own
// growth and allocator fragmentation.
constexpr size_t kHeadroomBytes = size_t{256} << 20;
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

std::string Str(int64_t v) { return std::to_string(v); }

// The buffers one forward pass works in: whole-sequence for prefill, one row
// for decode.
struct Activations {
  int32_t* ids = nullptr;
  float2* rope = nullptr;  // (cos, sin) for the pass's positions
  float* residual = nullptr;
  bf16* normed = nullptr;
  bf16* q = nullptr;
  bf16* k = nullptr;
  bf16* v = nullptr;
  bf16* attn = nullptr;
  bf16* mlp_gate = nullptr;
  bf16* mlp_up = nullptr;
  float* logits = nullptr;
  int mlp_chunk = 1;
  int logits_chunk = 1;
};

template <typename T>
T* At(const DeviceBuffer& buf, size_t offset) {
  return reinterpret_cast<T*>(buf.as<char>() + offset);
}

cuda::GateSelection ToGateSelection(SparsityMode m) {
  switch (m) {
    case SparsityMode::kThreshold:
      return cuda::GateSelection::kThreshold;
    case SparsityMode::kNzRatio:
      return cuda::GateSelection::kNzRatio;
    case SparsityMode::kDense:
      break;
  }
  return cuda::GateSelection::kDense;
}

class CudaEngine final : public Engine {
 public:
  CudaEngine(ModelConfig config, uint64_t fingerprint, std::unique_ptr<GateWeights> gates, GateShape gate_shape)
      : config_(std::move(config)),
        fingerprint_(fingerprint),
        gates_(std::move(gates)),
        gate_shape_(gate_shape) {}
  ~CudaEngine() override;

  // Everything but the weights: stream, cuBLAS, events, decode buffers.
  Status Init();
  Status SetWeights(DeviceModelWeights w) {
    weights_ = std::move(w);
    return OkStatus();
  }
  cudaStream_t stream() const { return stream_; }

  const ModelConfig& config() const override { return config_; }
  uint64_t fingerprint() const override { return fingerprint_; }
  const GateWeights* gates() const override { return gates_.get(); }
  std::string device_name() const override { return device_name_; }

  StatusOr<std::unique_ptr<KvCache>> NewCache(int capacity) override;
  StatusOr<PrefillResult> Prefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                  PrefillObserver* observer) override;
  Status DecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) override;
  // Samples on the device (kernels/sampling/sampling.h): 4 bytes come back
  // instead of the [vocab] logits.
  StatusOr<int32_t> DecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler) override;

 private:
  // The forward pass of one decode token, leaving its logits in decode_.logits;
  // the caller holds mu_ and sets the cache length once the step is done.
  Status DecodeForward(int32_t token, KvCache* cache_in, DeviceKvCache** cache, int* pos);
  Status CheckCache(KvCache* cache, DeviceKvCache** out) const;
  Status EnsureWorkspace(const PrefillPlan& plan);
  Activations PrefillActivations(const PrefillPlan& plan) const;

  // y[rows, out] = x[rows, in] . w[out, in]^T + beta * y.
  Status Gemm(const bf16* x, int rows, int in, const bf16* w, int out, void* y, cudaDataType_t y_type, float beta);
  // RMSNorm and the q/k/v projections (+ biases) of `rows` rows.
  Status AttentionInputs(const DeviceLayerWeights& w, const Activations& a, int rows);
  // RoPE on q and k (angles from a.rope), then K/V into the cache at pos0.
  Status RopeAndCache(int layer, const Activations& a, int rows, int pos0, DeviceKvCache* cache);
  // o_proj into the residual, then the MLP in row chunks.
  Status OutputAndMlp(const DeviceLayerWeights& w, const Activations& a, int rows);
  // Final norm and lm_head for rows [r0, r0 + n) into a.logits.
  Status Logits(const Activations& a, int r0, int n);

  ModelConfig config_;
  uint64_t fingerprint_ = 0;
  std::unique_ptr<GateWeights> gates_;
  GateShape gate_shape_;
  int device_ = 0;
  std::string device_name_;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;
  DeviceModelWeights weights_;

  std::mutex mu_;  // one forward pass at a time: they share the workspace
  DeviceBuffer workspace_;
  DeviceBuffer decode_workspace_;
  DeviceBuffer decode_attention_scratch_;  // split-K partials of DecodeAttention
  DeviceBuffer sample_scratch_;  // cuda::SampleToken's, allocated on first use
  Activations decode_;
  std::vector<cudaEvent_t> layer_start_, layer_end_;
  int64_t* kept_host_ = nullptr;  // pinned [layers, Hq], the gate's kept counts
};

CudaEngine::~CudaEngine() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : layer_start_) cudaEventDestroy(e);
  for (cudaEvent_t e : layer_end_) cudaEventDestroy(e);
  if (kept_host_ != nullptr) cudaFreeHost(kept_host_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Status CudaEngine::Init() {
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device_));
  cudaDeviceProp prop{};
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device_));
  device_name_ = "cuda:" + Str(device_) + " (" + prop.name + ")";

  if (config_.head_dim != 64 && config_.head_dim != 128) {
    return Unimplemented("the CUDA attention kernels take head_dim 64 or 128; this model has " +
                         Str(config_.head_dim) + " (use --device cpu)");
  }
  if (gates_ != nullptr && gates_->config.block_size != 64) {
    return Unimplemented("the CUDA block-sparse attention takes 64-token blocks; the gates have block_size " +
                         Str(gates_->config.block_size) + " (use --device cpu)");
  }

  if (gates_ != nullptr) {
    const PrefillPlan probe = PlanPrefill(config_, gate_shape_, gates_->config.block_size, 64, false);
    if (probe.gate_scratch_bytes == 0) {
      return Unimplemented("the CUDA gate does not take this shape (head_dim " + Str(config_.head_dim) +
                           ", gate hidden " + Str(gate_shape_.gate_hidden) + ", block " +
                           Str(gates_->config.block_size) + "; use --device cpu)");
    }
  }

  SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasCreate(&cublas_));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetStream(cublas_, stream_));
  // cuBLAS's workspace is ours, so its memory is planned and counted.
  SEER_ASSIGN_OR_RETURN(cublas_workspace_, DeviceBuffer::Allocate(kCublasWorkspaceBytes, "the cuBLAS workspace"));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()));

  layer_start_.assign(config_.num_layers, nullptr);
  layer_end_.assign(config_.num_layers, nullptr);
  for (int i = 0; i < config_.num_layers; ++i) {
    SEER_RETURN_IF_CUDA_ERROR(cudaEventCreate(&layer_start_[i]));
    SEER_RETURN_IF_CUDA_ERROR(cudaEventCreate(&layer_end_[i]));
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&kept_host_),
                                           sizeof(int64_t) * config_.num_layers * config_.num_heads));

  // Decode works on one row: its buffers are small and held for good, so a
  // decode step never competes with a prefill for memory.
  PrefillPlan one = PlanPrefill(config_, GateShape{}, 64, 1, false);
  SEER_ASSIGN_OR_RETURN(decode_workspace_, DeviceBuffer::Allocate(one.total_bytes, "the decode buffers"));
  decode_.ids = At<int32_t>(decode_workspace_, one.ids);
  decode_.rope = At<float2>(decode_workspace_, one.rope);
  decode_.residual = At<float>(decode_workspace_, one.residual);
  decode_.normed = At<bf16>(decode_workspace_, one.normed);
  decode_.q = At<bf16>(decode_workspace_, one.q);
  decode_.k = At<bf16>(decode_workspace_, one.k);
  decode_.v = At<bf16>(decode_workspace_, one.v);
  decode_.attn = At<bf16>(decode_workspace_, one.attn);
  decode_.mlp_gate = At<bf16>(decode_workspace_, one.mlp_gate);
  decode_.mlp_up = At<bf16>(decode_workspace_, one.mlp_up);
  decode_.logits = At<float>(decode_workspace_, one.logits);
  decode_.mlp_chunk = 1;
  decode_.logits_chunk = 1;
  const size_t scratch = cuda::DecodeWorkspaceBytes(config_.num_heads, config_.head_dim);
  if (scratch > 0) {
    SEER_ASSIGN_OR_RETURN(decode_attention_scratch_, DeviceBuffer::Allocate(scratch, "the decode attention scratch"));
  }
  return OkStatus();
}

Status CudaEngine::CheckCache(KvCache* cache, DeviceKvCache** out) const {
  auto* dev = dynamic_cast<DeviceKvCache*>(cache);
  if (dev == nullptr) return InvalidArgument("the CUDA engine needs a KV cache from its own NewCache");
  const KvLayout& l = dev->layout();
  if (l.num_layers != config_.num_layers || l.num_kv_heads != config_.num_kv_heads ||
      l.head_dim != config_.head_dim) {
    return InvalidArgument("KV cache layout (" + Str(l.num_layers) + " layers, " + Str(l.num_kv_heads) +
                              " kv heads, head_dim " + Str(l.head_dim) + ") does not match the model (" +
                              Str(config_.num_layers) + ", " + Str(config_.num_kv_heads) + ", " +
                              Str(config_.head_dim) + ")");
  }
  *out = dev;
  return OkStatus();
}

StatusOr<std::unique_ptr<KvCache>> CudaEngine::NewCache(int capacity) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  if (capacity <= 0) return InvalidArgument("KV cache capacity must be at least 1 token, got " + Str(capacity));
  if (capacity > config_.max_position_embeddings) {
    return InvalidArgument("KV cache capacity " + Str(capacity) + " exceeds max_position_embeddings " +
                           Str(config_.max_position_embeddings));
  }
  const size_t kv = DeviceKvCache::BytesFor(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity);
  size_t free_b = 0, total_b = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b));
  if (kv + kHeadroomBytes > free_b) {
    return ResourceExhausted("a KV cache of " + Str(capacity) + " tokens needs " + FormatBytes(kv) + " but " +
                             device_name_ + " has " + FormatBytes(free_b) + " free of " + FormatBytes(total_b) +
                             " (the weights hold " + FormatBytes(weights_.storage.bytes()) + ")");
  }
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<DeviceKvCache> cache,
                        DeviceKvCache::Create(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity));
  return std::unique_ptr<KvCache>(std::move(cache));
}

// Grows the workspace to `plan` (never shrinks: the next request is likely
// the same size). Fails with RESOURCE_EXHAUSTED before any work is queued.
Status CudaEngine::EnsureWorkspace(const PrefillPlan& plan) {
  if (workspace_.bytes() >= plan.total_bytes) return OkStatus();
  size_t free_b = 0, total_b = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b));
  const size_t available = free_b + workspace_.bytes();
  if (plan.total_bytes + kHeadroomBytes > available) {
    return ResourceExhausted("a prefill of " + Str(plan.seq_len) + " tokens needs " + FormatBytes(plan.total_bytes) +
                             " of activations beyond the weights and the KV cache, but " + device_name_ + " has " +
                             FormatBytes(available) + " available");
  }
  workspace_.Reset();
  SEER_ASSIGN_OR_RETURN(workspace_,
                        DeviceBuffer::Allocate(plan.total_bytes, "prefill activations of " + Str(plan.seq_len) + " tokens"));
  return OkStatus();
}

Activations CudaEngine::PrefillActivations(const PrefillPlan& plan) const {
  Activations a;
  a.ids = At<int32_t>(workspace_, plan.ids);
  a.rope = At<float2>(workspace_, plan.rope);
  a.residual = At<float>(workspace_, plan.residual);
  a.normed = At<bf16>(workspace_, plan.normed);
  a.q = At<bf16>(workspace_, plan.q);
  a.k = At<bf16>(workspace_, plan.k);
  a.v = At<bf16>(workspace_, plan.v);
  a.attn = At<bf16>(workspace_, plan.attn);
  a.mlp_gate = At<bf16>(workspace_, plan.mlp_gate);
  a.mlp_up = At<bf16>(workspace_, plan.mlp_up);
  a.logits = At<float>(workspace_, plan.logits);
  a.mlp_chunk = plan.mlp_chunk;
  a.logits_chunk = plan.logits_chunk;
  return a;
}

Status CudaEngine::Gemm(const bf16* x, int rows, int in, const bf16* w, int out, void* y, cudaDataType_t y_type,
                        float beta) {
  return LinearBf16(cublas_, x, rows, in, w, out, y, y_type, beta);
}

Status CudaEngine::AttentionInputs(const DeviceLayerWeights& w, const Activations& a, int rows) {
  const int hidden = config_.hidden_size;
  const int q_cols = config_.num_heads * config_.head_dim;
  const int kv_cols = config_.num_kv_heads * config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(a.residual, rows, hidden, w.input_norm, eps, a.normed, stream_));
  SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.q_proj, q_cols, a.q, CUDA_R_16BF, 0.0f));
  SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.k_proj, kv_cols, a.k, CUDA_R_16BF, 0.0f));
  SEER_RETURN_IF_ERROR(Gemm(a.normed, rows, hidden, w.v_proj, kv_cols, a.v, CUDA_R_16BF, 0.0f));
  if (w.q_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.q, rows, q_cols, w.q_bias, stream_));
  if (w.k_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.k, rows, kv_cols, w.k_bias, stream_));
  if (w.v_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.v, rows, kv_cols, w.v_bias, stream_));
  return OkStatus();
}

Status CudaEngine::RopeAndCache(int layer, const Activations& a, int rows, int pos0, DeviceKvCache* cache) {
  const int d = config_.head_dim;
  SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.q, rows, config_.num_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::ApplyRope(a.k, rows, config_.num_kv_heads, d, a.rope, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::WriteKv(a.k, rows, config_.num_kv_heads, d, cache->k(layer), cache->capacity(), pos0, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::WriteKv(a.v, rows, config_.num_kv_heads, d, cache->v(layer), cache->capacity(), pos0, stream_));
  return OkStatus();
}

Status CudaEngine::OutputAndMlp(const DeviceLayerWeights& w, const Activations& a, int rows) {
  const int hidden = config_.hidden_size;
  const int inter = config_.intermediate_size;
  const int q_cols = config_.num_heads * config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  // residual += attn . Wo^T: the residual add is the GEMM's beta = 1.
  SEER_RETURN_IF_ERROR(Gemm(a.attn, rows, q_cols, w.o_proj, hidden, a.residual, CUDA_R_32F, 1.0f));
  if (w.o_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.residual, rows, hidden, w.o_bias, stream_));

  for (int r0 = 0; r0 < rows; r0 += a.mlp_chunk) {
    const int n = std::min(a.mlp_chunk, rows - r0);
    float* res = a.residual + static_cast<size_t>(r0) * hidden;
    bf16* x = a.normed + static_cast<size_t>(r0) * hidden;
    SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(res, n, hidden, w.post_attention_norm, eps, x, stream_));
    SEER_RETURN_IF_ERROR(Gemm(x, n, hidden, w.gate_proj, inter, a.mlp_gate, CUDA_R_16BF, 0.0f));
    SEER_RETURN_IF_ERROR(Gemm(x, n, hidden, w.up_proj, inter, a.mlp_up, CUDA_R_16BF, 0.0f));
    if (w.gate_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.mlp_gate, n, inter, w.gate_bias, stream_));
    if (w.up_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(a.mlp_up, n, inter, w.up_bias, stream_));
    SEER_RETURN_IF_CUDA_ERROR(
        cuda::SwiGlu(a.mlp_gate, a.mlp_up, static_cast<size_t>(n) * inter, a.mlp_gate, stream_));
    SEER_RETURN_IF_ERROR(Gemm(a.mlp_gate, n, inter, w.down_proj, hidden, res, CUDA_R_32F, 1.0f));
    if (w.down_bias != nullptr) SEER_RETURN_IF_CUDA_ERROR(cuda::AddBias(res, n, hidden, w.down_bias, stream_));
  }
  return OkStatus();
}

Status CudaEngine::Logits(const Activations& a, int r0, int n) {
  const int hidden = config_.hidden_size;
  bf16* x = a.normed + static_cast<size_t>(r0) * hidden;
  SEER_RETURN_IF_CUDA_ERROR(cuda::RmsNorm(a.residual + static_cast<size_t>(r0) * hidden, n, hidden, weights_.norm,
                                          static_cast<float>(config_.rms_norm_eps), x, stream_));
  return Gemm(x, n, hidden, weights_.lm_head, config_.vocab_size, a.logits, CUDA_R_32F, 0.0f);
}

StatusOr<PrefillResult> CudaEngine::Prefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                            KvCache* cache_in, PrefillObserver* observer) {
  const auto t_begin = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));

  // Everything is checked and every buffer reserved before the first launch.
  DeviceKvCache* cache = nullptr;
  SEER_RETURN_IF_ERROR(CheckCache(cache_in, &cache));
  if (ids.empty()) return InvalidArgument("prefill: the prompt is empty");
  if (static_cast<int64_t>(ids.size()) > config_.max_position_embeddings) {
    return InvalidArgument("prefill: the prompt has " + Str(static_cast<int64_t>(ids.size())) +
                           " tokens, more than max_position_embeddings " + Str(config_.max_position_embeddings));
  }
  if (ids.size() > static_cast<size_t>(cache->capacity())) {
    return ResourceExhausted("prefill: the prompt has " + Str(static_cast<int64_t>(ids.size())) +
                           " tokens, the KV cache holds " + Str(cache->capacity()));
  }
  if (cache->length() != 0) {
    return FailedPrecondition("prefill: the KV cache already holds " + Str(cache->length()) + " tokens");
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      return InvalidArgument("prefill: token " + Str(ids[i]) + " at position " + Str(static_cast<int64_t>(i)) +
                             " is outside the vocabulary [0, " + Str(config_.vocab_size) + ")");
    }
  }
  const int L = static_cast<int>(ids.size());
  const SparsityConfig& sp = options.sparsity;
  const bool gated = gates_ != nullptr && (sp.mode != SparsityMode::kDense || options.keep_gate_outputs);
  const bool sparse = gates_ != nullptr && sp.mode != SparsityMode::kDense;
  const int block = gates_ != nullptr ? gates_->config.block_size : 64;
  if (gated) {
    // The gate kernels refuse these too, but only as cudaErrorInvalidValue
    // (INTERNAL) and after the first layer's work; say what is wrong, first.
    if (sp.mode == SparsityMode::kThreshold && !(sp.threshold >= 0.0 && sp.threshold < 1.0)) {
      return InvalidArgument("prefill: sparsity threshold " + std::to_string(sp.threshold) + " must be in [0, 1)");
    }
    if (sp.mode == SparsityMode::kNzRatio && !(sp.nz_ratio > 0.0 && sp.nz_ratio <= 1.0)) {
      return InvalidArgument("prefill: sparsity nz_ratio " + std::to_string(sp.nz_ratio) + " must be in (0, 1]");
    }
    // The block lists are int32 CSR offsets (kernels/attention/attention.h): the
    // blocks kept over all heads must stay below 2^31.
    cuda::GateParams lists;
    lists.seq_len = L;
    lists.num_heads = config_.num_heads;
    lists.block_size = block;
    lists.mode = ToGateSelection(sp.mode);
    lists.nz_ratio = sp.nz_ratio;
    lists.last_block_dense = sp.last_block_dense;
    const int64_t most_kept = cuda::GateMaxIndices(lists);
    if (most_kept > int64_t{0x7fffffff}) {
      return ResourceExhausted("prefill: a gated prefill of " + Str(L) + " tokens may keep " + Str(most_kept) +
                               " attention blocks over " + Str(config_.num_heads) +
                               " heads, more than the GPU's int32 block lists hold (2^31 - 1); use a shorter "
                               "prompt or a smaller nz_ratio");
    }
  }
  const PrefillPlan plan =
      PlanPrefill(config_, gated ? gate_shape_ : GateShape{}, block, L, options.all_logits);
  SEER_RETURN_IF_ERROR(EnsureWorkspace(plan));
  DeviceBuffer probs;
  if (gated && options.keep_gate_outputs) {
    const size_t n = static_cast<size_t>(config_.num_heads) * plan.gate_blocks * plan.gate_blocks;
    SEER_ASSIGN_OR_RETURN(probs, DeviceBuffer::Allocate(n * sizeof(float), "the kept gate probabilities"));
  }
  const Activations a = PrefillActivations(plan);

  PrefillResult result;
  result.layer_density.assign(config_.num_layers, 1.0);
  result.logits_rows = options.all_logits ? L : 1;
  result.logits.resize(static_cast<size_t>(result.logits_rows) * config_.vocab_size);
  std::vector<double> layer_seconds(config_.num_layers, 0.0);
  const int hq = config_.num_heads;
  const int64_t causal_per_head = gated ? int64_t{plan.gate_blocks} * (plan.gate_blocks + 1) / 2 : 0;

  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(a.ids, ids.data(), sizeof(int32_t) * L, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::Embedding(weights_.embed_tokens, config_.vocab_size, config_.hidden_size, a.ids, L, a.residual, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::RopeTable(weights_.rope_inv_freq, config_.head_dim / 2, 0, L, a.rope, stream_));

  int32_t* offsets = gated ? At<int32_t>(workspace_, plan.block_offsets) : nullptr;
  int32_t* indices = gated ? At<int32_t>(workspace_, plan.block_indices) : nullptr;
  int64_t* kept = gated ? At<int64_t>(workspace_, plan.kept) : nullptr;

  for (int layer = 0; layer < config_.num_layers; ++layer) {
    const DeviceLayerWeights& w = weights_.layers[layer];
    SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(layer_start_[layer], stream_));
    SEER_RETURN_IF_ERROR(AttentionInputs(w, a, L));

    if (gated) {
      cuda::GateParams g;
      g.dtype = cuda::ElemType::kBF16;
      g.q = a.q;
      g.k = a.k;
      g.seq_len = L;
      g.num_heads = hq;
      g.num_kv_heads = config_.num_kv_heads;
      g.head_dim = config_.head_dim;
      g.block_size = block;
      g.hidden = gate_shape_.gate_hidden;
      g.k_weight = w.gate_k_weight;
      g.q_weight = w.gate_q_weight;
      g.rope_inv_freq = weights_.gate_rope_inv_freq;
      g.mode = ToGateSelection(sp.mode);
      g.threshold = sp.threshold;
      g.nz_ratio = sp.nz_ratio;
      g.last_block_dense = sp.last_block_dense;
      g.block_offsets = offsets;
      g.block_indices = indices;
      g.index_capacity = plan.index_capacity;
      g.kept_per_head = kept + static_cast<size_t>(layer) * hq;
      g.probs = probs.as<float>();
      g.workspace = At<char>(workspace_, plan.gate_scratch);
      g.workspace_bytes = plan.gate_scratch_bytes;
      g.heads_per_pass = plan.gate_heads_per_pass;
      SEER_RETURN_IF_CUDA_ERROR(cuda::RunGateKernels(g, stream_));
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(kept_host_ + static_cast<size_t>(layer) * hq, g.kept_per_head,
                                                sizeof(int64_t) * hq, cudaMemcpyDeviceToHost, stream_));
    }

    SEER_RETURN_IF_ERROR(RopeAndCache(layer, a, L, 0, cache));

    cuda::AttentionParams p;
    p.dtype = cuda::ElemType::kBF16;
    p.q = a.q;
    p.k = cache->k(layer);
    p.v = cache->v(layer);
    p.out = a.attn;
    p.seq_len = L;
    p.num_heads = hq;
    p.num_kv_heads = config_.num_kv_heads;
    p.head_dim = config_.head_dim;
    p.kv_stride = cache->capacity();
    p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim)));
    p.block_size = block;
    if (sparse) {
      p.block_offsets = offsets;
      p.block_indices = indices;
    }
    SEER_RETURN_IF_CUDA_ERROR(cuda::BlockSparseAttention(p, stream_));

    SEER_RETURN_IF_ERROR(OutputAndMlp(w, a, L));
    SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(layer_end_[layer], stream_));

    // Only what asks for this layer's results waits for it.
    if (observer != nullptr || options.keep_gate_outputs) {
      SEER_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(layer_end_[layer]));
      float ms = 0.0f;
      SEER_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, layer_start_[layer], layer_end_[layer]));
      layer_seconds[layer] = ms / 1e3;
      if (sparse) {
        int64_t k_sum = 0;
        for (int h = 0; h < hq; ++h) k_sum += kept_host_[static_cast<size_t>(layer) * hq + h];
        result.layer_density[layer] = static_cast<double>(k_sum) / static_cast<double>(causal_per_head * hq);
      }
      if (gated && options.keep_gate_outputs) {
        const int nb = plan.gate_blocks;
        std::vector<int32_t> off(static_cast<size_t>(hq) * nb + 1);
        SEER_RETURN_IF_CUDA_ERROR(
            cudaMemcpy(off.data(), offsets, sizeof(int32_t) * off.size(), cudaMemcpyDeviceToHost));
        std::vector<int32_t> idx(static_cast<size_t>(off.back()));
        if (!idx.empty()) {
          SEER_RETURN_IF_CUDA_ERROR(
              cudaMemcpy(idx.data(), indices, sizeof(int32_t) * idx.size(), cudaMemcpyDeviceToHost));
        }
        GateOutput out;
        out.mask.num_heads = hq;
        out.mask.num_blocks = nb;
        out.mask.block_size = block;
        out.mask.seq_len = L;
        out.mask.keep.assign(static_cast<size_t>(hq) * nb * nb, 0);
        for (int row = 0; row < hq * nb; ++row) {
          for (int32_t j = off[row]; j < off[row + 1]; ++j) {
            const int32_t kb = idx[j];
            if (kb >= 0 && kb < nb) out.mask.keep[static_cast<size_t>(row) * nb + kb] = 1;
          }
        }
        out.probs.resize(static_cast<size_t>(hq) * nb * nb);
        SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy(out.probs.data(), probs.get(), sizeof(float) * out.probs.size(),
                                             cudaMemcpyDeviceToHost));
        result.gate_outputs.push_back(std::move(out));
      }
      if (observer != nullptr) {
        LayerDone done;
        done.layer = layer;
        done.seq_len = L;
        done.cache = cache;
        done.density = result.layer_density[layer];
        done.seconds = layer_seconds[layer];
        SEER_RETURN_IF_ERROR(observer->OnLayerDone(done));
      }
    }
  }

  // Logits: the last row, or every row in chunks through the bounded buffer.
  const int vocab = config_.vocab_size;
  const int first_row = options.all_logits ? 0 : L - 1;
  for (int r0 = first_row; r0 < L; r0 += a.logits_chunk) {
    const int n = std::min(a.logits_chunk, L - r0);
    SEER_RETURN_IF_ERROR(Logits(a, r0, n));
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(result.logits.data() + static_cast<size_t>(r0 - first_row) * vocab,
                                              a.logits, sizeof(float) * n * vocab, cudaMemcpyDeviceToHost, stream_));
    // The next chunk reuses the device buffer; pageable copies complete
    // before the call returns, but say so explicitly.
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  }

  // Timings and densities of the layers nobody waited for.
  int64_t kept_total = 0;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    if (observer == nullptr && !options.keep_gate_outputs) {
      float ms = 0.0f;
      SEER_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, layer_start_[layer], layer_end_[layer]));
      layer_seconds[layer] = ms / 1e3;
      if (sparse) {
        int64_t k_sum = 0;
        for (int h = 0; h < hq; ++h) k_sum += kept_host_[static_cast<size_t>(layer) * hq + h];
        result.layer_density[layer] = static_cast<double>(k_sum) / static_cast<double>(causal_per_head * hq);
      }
    }
    if (sparse) {
      for (int h = 0; h < hq; ++h) kept_total += kept_host_[static_cast<size_t>(layer) * hq + h];
    }
  }
  result.overall_density =
      sparse ? static_cast<double>(kept_total) / static_cast<double>(causal_per_head * hq * config_.num_layers) : 1.0;
  cache->set_length(L);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
  return result;
}

Status CudaEngine::DecodeStep(int32_t token, KvCache* cache_in, std::vector<float>* logits) {
  std::lock_guard<std::mutex> lock(mu_);
  if (logits == nullptr) return InvalidArgument("decode: null logits output");
  DeviceKvCache* cache = nullptr;
  int pos = 0;
  SEER_RETURN_IF_ERROR(DecodeForward(token, cache_in, &cache, &pos));
  logits->resize(config_.vocab_size);
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logits->data(), decode_.logits, sizeof(float) * config_.vocab_size,
                                            cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  cache->set_length(pos + 1);
  return OkStatus();
}

StatusOr<int32_t> CudaEngine::DecodeAndSample(int32_t token, KvCache* cache_in, Sampler* sampler) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sampler == nullptr) return InvalidArgument("decode: null sampler");
  const SamplingParams& sp = sampler->params();
  if (sp.temperature > 0.0 && sample_scratch_.empty()) {
    SEER_ASSIGN_OR_RETURN(sample_scratch_, DeviceBuffer::Allocate(cuda::SampleScratchBytes(config_.vocab_size),
                                                                  "decode: sampling scratch"));
  }
  DeviceKvCache* cache = nullptr;
  int pos = 0;
  SEER_RETURN_IF_ERROR(DecodeForward(token, cache_in, &cache, &pos));
  // One uniform per sampled token, none when greedy, as Sampler::Sample.
  const double u = sp.temperature > 0.0 ? sampler->NextUniform() : 0.0;
  // decode_.ids held this step's token; the sampled one overwrites it.
  const int top_k = sp.top_k > 0 ? sp.top_k : 0;
  SEER_RETURN_IF_CUDA_ERROR(cuda::SampleToken(decode_.logits, config_.vocab_size, sp.temperature, top_k, sp.top_p, u,
                                              sample_scratch_.get(), sample_scratch_.bytes(), decode_.ids, stream_));
  int32_t next = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(&next, decode_.ids, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  cache->set_length(pos + 1);
  return next;
}

Status CudaEngine::DecodeForward(int32_t token, KvCache* cache_in, DeviceKvCache** cache_out, int* pos_out) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  DeviceKvCache* cache = nullptr;
  SEER_RETURN_IF_ERROR(CheckCache(cache_in, &cache));
  if (token < 0 || token >= config_.vocab_size) {
    return InvalidArgument("decode: token " + Str(token) + " is outside the vocabulary [0, " +
                           Str(config_.vocab_size) + ")");
  }
  const int pos = cache->length();
  if (pos >= config_.max_position_embeddings) {
    return InvalidArgument("decode: position " + Str(pos) + " reaches max_position_embeddings " +
                           Str(config_.max_position_embeddings));
  }
  if (pos >= cache->capacity()) {
    return ResourceExhausted("decode: the KV cache is full (" + Str(cache->capacity()) + " tokens)");
  }
  const Activations& a = decode_;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(a.ids, &token, sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cuda::Embedding(weights_.embed_tokens, config_.vocab_size, config_.hidden_size, a.ids, 1, a.residual, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cuda::RopeTable(weights_.rope_inv_freq, config_.head_dim / 2, pos, 1, a.rope, stream_));
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    const DeviceLayerWeights& w = weights_.layers[layer];
    SEER_RETURN_IF_ERROR(AttentionInputs(w, a, 1));
    SEER_RETURN_IF_ERROR(RopeAndCache(layer, a, 1, pos, cache));
    cuda::AttentionParams p;
    p.dtype = cuda::ElemType::kBF16;
    p.q = a.q;
    p.k = cache->k(layer);
    p.v = cache->v(layer);
    p.out = a.attn;
    p.seq_len = pos + 1;
    p.num_heads = config_.num_heads;
    p.num_kv_heads = config_.num_kv_heads;
    p.head_dim = config_.head_dim;
    p.kv_stride = cache->capacity();
    p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim)));
    p.workspace = decode_attention_scratch_.get();
    p.workspace_bytes = decode_attention_scratch_.bytes();
    SEER_RETURN_IF_CUDA_ERROR(cuda::DecodeAttention(p, pos, stream_));
    SEER_RETURN_IF_ERROR(OutputAndMlp(w, a, 1));
  }
  SEER_RETURN_IF_ERROR(Logits(a, 0, 1));
  *cache_out = cache;
  *pos_out = pos;
  return OkStatus();
}

Status CheckWeightsFit(const ModelConfig& config, const GateShape& gates, bool tied) {
  const size_t need = ModelWeightBytes(config, gates, tied);
  size_t free_b = 0, total_b = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b));
  if (need + kHeadroomBytes > free_b) {
    return ResourceExhausted("the model's weights need " + FormatBytes(need) + " on the GPU but only " +
                             FormatBytes(free_b) + " of " + FormatBytes(total_b) + " is free");
  }
  return OkStatus();
}

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();  // "no device" must not linger as the last error
  return ok;
}

StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options) {
  if (!CudaDeviceAvailable()) {
    return FailedPrecondition("--device cuda: no CUDA device is visible (use --device cpu)");
  }
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  SEER_ASSIGN_OR_RETURN(ModelWeightViews views, BindModelWeights(*ckpt));
  std::unique_ptr<GateWeights> gates;
  if (!options.gates_dir.empty()) {
    SEER_ASSIGN_OR_RETURN(GateWeights g, LoadGates(options.gates_dir, ckpt->config()));
    gates = std::make_unique<GateWeights>(std::move(g));
  }
  const GateShape shape = GateShapeOf(gates.get());
  auto engine = std::make_unique<CudaEngine>(ckpt->config(), ckpt->fingerprint(), std::move(gates), shape);
  SEER_RETURN_IF_ERROR(engine->Init());
  const bool tied = views.lm_head.data == nullptr || views.lm_head.data == views.embed_tokens.data;
  SEER_RETURN_IF_ERROR(CheckWeightsFit(engine->config(), shape, tied));
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w,
                        UploadModelWeights(engine->config(), views, engine->gates(), engine->stream()));
  SEER_RETURN_IF_ERROR(engine->SetWeights(std::move(w)));
  return std::unique_ptr<Engine>(std::move(engine));
}

StatusOr<std::unique_ptr<Engine>> CreateRandomCudaEngine(const ModelConfig& config,
                                                         const RandomEngineOptions& options) {
  if (!CudaDeviceAvailable()) return FailedPrecondition("no CUDA device is visible");
  std::unique_ptr<GateWeights> gates;
  GateShape shape;
  if (options.with_gates) {
    gates = std::make_unique<GateWeights>();
    gates->config = options.gate_config;
    gates->layers.resize(config.num_layers);
    shape.gate_hidden = options.gate_config.hidden;
    // Without mask_linear_q the gate hidden size must be head_dim.
    shape.has_q = shape.gate_hidden != config.head_dim;
  }
  // A fingerprint of the shape and the seed: equal means the same weights.
  uint64_t fp = 0xcbf29ce484222325ull;
  auto mix = [&fp](uint64_t v) { fp = (fp ^ v) * 0x100000001b3ull; };
  for (int64_t v : {int64_t{config.num_layers}, int64_t{config.hidden_size}, int64_t{config.intermediate_size},
                    int64_t{config.vocab_size}, int64_t{config.num_heads}, int64_t{config.num_kv_heads},
                    int64_t{config.head_dim}, static_cast<int64_t>(options.seed)}) {
    mix(static_cast<uint64_t>(v));
  }
  auto engine = std::make_unique<CudaEngine>(config, fp, std::move(gates), shape);
  SEER_RETURN_IF_ERROR(engine->Init());
  SEER_RETURN_IF_ERROR(CheckWeightsFit(config, shape, config.tie_word_embeddings));
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w, RandomModelWeights(config, shape, options.seed, engine->stream()));
  SEER_RETURN_IF_ERROR(engine->SetWeights(std::move(w)));
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace seer
