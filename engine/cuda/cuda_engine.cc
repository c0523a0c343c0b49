// CudaEngine: the Engine on the GPU (bf16 storage, float32 accumulation), a
// thin shell over ModelRunner's stages (engine/cuda/model_runner.h).
//
// Prefill, per layer, everything on one stream with no host sync unless an
// observer wants the layer:
//   AttentionInputs -> [Gate -> CSR lists] -> RopeAndCache -> PrefillAttention
//   -> OutputAndMlp
// after Embed, then Logits on the last row (or all rows, chunked). A decode
// step is the same loop over one row with DecodeAttention. A batched decode
// step (RunDecodeBatch) runs PagedAttentionInputs -> PagedAttention ->
// OutputAndMlp on --max-batch rows, its layers replayed from a CUDA graph
// while the batch size and the attention's key splits stay the same.

#include "engine/cuda/cuda_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/clock.h"
#include "base/dtype.h"
#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_kv_cache.h"
#include "engine/cuda/device_page_pool.h"
#include "engine/cuda/device_weights.h"
#include "engine/cuda/gemm_tuner.h"
#include "engine/cuda/model_runner.h"
#include "engine/cuda/prefill_plan.h"
#include "engine/model/checkpoint.h"
#include "kernels/attention/attention.h"
#include "kernels/common/dispatch.h"
#include "kernels/common/parallel.h"
#include "kernels/gate/distill_target.h"
#include "kernels/common/block_lists.h"
#include "kernels/gate/gate.h"
#include "kernels/ops/ops.h"
#include "kernels/paged_kv/paged_kv.h"
#include "kernels/sampling/sampling.h"

namespace seer {
namespace {

using bf16 = __nv_bfloat16;

// Memory left free after admitting a request: cuBLAS, the CUDA context's own
// growth and allocator fragmentation.
constexpr size_t kHeadroomBytes = size_t{256} << 20;
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

std::string Str(int64_t v) { return std::to_string(v); }

template <typename T>
T* At(const DeviceBuffer& buf, size_t offset) {
  return reinterpret_cast<T*>(buf.as<char>() + offset);
}

// The activation buffers of `plan` inside `buf`.
Activations ActivationsIn(const DeviceBuffer& buf, const PrefillPlan& plan) {
  Activations a;
  a.ids = At<int32_t>(buf, plan.ids);
  a.rope = At<float2>(buf, plan.rope);
  a.residual = At<float>(buf, plan.residual);
  a.normed = At<bf16>(buf, plan.normed);
  a.q = At<bf16>(buf, plan.q);
  a.k = At<bf16>(buf, plan.k);
  a.v = At<bf16>(buf, plan.v);
  a.attn = At<bf16>(buf, plan.attn);
  a.mlp_gate = At<bf16>(buf, plan.mlp_gate);
  a.mlp_up = At<bf16>(buf, plan.mlp_up);
  a.logits = At<float>(buf, plan.logits);
  a.mlp_chunk = plan.mlp_chunk;
  a.logits_chunk = plan.logits_chunk;
  return a;
}

// The rows r0.. of a prefill's whole-sequence buffers: ids, RoPE angles,
// residual, normed, q, k, v and the attention output (the MLP's and the
// lm_head's chunk scratch is shared by every chunk and stays put).
Activations RowsFrom(const Activations& a, const ModelConfig& c, int r0) {
  Activations out = a;
  const size_t r = static_cast<size_t>(r0);
  const size_t hidden = static_cast<size_t>(c.hidden_size);
  const size_t q_cols = static_cast<size_t>(c.num_heads) * c.head_dim;
  const size_t kv_cols = static_cast<size_t>(c.num_kv_heads) * c.head_dim;
  out.ids += r;
  out.rope += r * (c.head_dim / 2);
  out.residual += r * hidden;
  out.normed += r * hidden;
  out.q += r * q_cols;
  out.k += r * kv_cols;
  out.v += r * kv_cols;
  out.attn += r * q_cols;
  return out;
}

class CudaEngine final : public Engine {
 public:
  CudaEngine(ModelConfig config, uint64_t fingerprint, std::unique_ptr<GateWeights> gates, GateShape gate_shape)
      : config_(std::move(config)),
        fingerprint_(fingerprint),
        gates_(std::move(gates)),
        gate_shape_(gate_shape),
        block_(gates_ != nullptr ? gates_->config.block_size : 64) {}
  ~CudaEngine() override;

  // Everything but the weights: stream, cuBLAS, events, decode buffers;
  // the GEMM tuner when `gemm_tuning` and SEER_GEMM_TUNING is not "0".
  // `chunk_limits` bound every plan's chunked buffers (0: the default).
  Status Init(bool gemm_tuning, const ChunkLimits& chunk_limits);
  void SetWeights(DeviceModelWeights w) {
    weights_ = std::move(w);
    runner_.emplace(config_, weights_, gate_shape_, block_, stream_, cublas_);
    runner_->SetGemmTuner(gemm_tuner_.get());
  }
  cudaStream_t stream() const { return stream_; }

  const ModelConfig& config() const override { return config_; }
  uint64_t fingerprint() const override { return fingerprint_; }
  const GateWeights* gates() const override { return gates_.get(); }
  std::string device_name() const override { return device_name_; }
  std::optional<DeviceMemory> device_memory() const override {
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(device_) != cudaSuccess || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      cudaGetLastError();
      return std::nullopt;
    }
    return DeviceMemory{total_b - free_b, total_b};
  }

 protected:
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) override;
  // Device to device on the engine's stream.
  Status RunCopyPrefix(const KvCache& src, int n, KvCache* dst) override;
  StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                     PrefillObserver* observer) override;
  Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) override;
  // Samples on the device (kernels/sampling/sampling.h): 4 bytes come back
  // instead of the [vocab] logits.
  StatusOr<int32_t> RunDecodeAndSample(int32_t token, KvCache* cache, Sampler* sampler) override;
  bool OwnsCacheType(const KvCache& cache) const override {
    return dynamic_cast<const DeviceKvCache*>(&cache) != nullptr;
  }
  StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const PageLayout& layout, int pages) override;
  StatusOr<int64_t> PoolBudgetBytes(double fraction) override;
  Status PreparePagedDecode(const PagedDecodeOptions& options) override;
  // Device to device: each layer of the contiguous cache scattered into
  // the pages on the pool's stream.
  Status RunPageIn(const KvCache& src, PagedKvCache* paged) override;
  Status RunDecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next) override;
  // The teacher pass: each layer's distillation target computed on the GPU
  // (kernels/gate/distill_target.h) and its pre-RoPE Q/K, bf16 as the
  // attention reads them, widened to float32 on the host. The rest of the
  // layer runs on the GPU while `tap` works on the host.
  Status RunForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap) override;
  StatusOr<std::string> RunWarmUp(int max_tokens) override;

 private:
  // The forward pass of one decode token, leaving its logits in decode_.logits;
  // the caller sets the cache length once the step is done.
  Status DecodeForward(int32_t token, DeviceKvCache* cache);
  // Runs `launch` (work on stream_ only, every shape fixed by (batch,
  // splits) and every pointer by PreparePagedDecode): replayed from the
  // graph when it was captured for this shape, captured and replayed when
  // the previous step had this shape too, else run as it is.
  Status RunDecodeLayers(int batch, int splits, const std::function<Status()>& launch);
  // Records `launch` into graph_.exec (updated in place when the topology
  // allows, else instantiated anew). A capture that fails turns graphs off
  // for the engine's lifetime (a failure here is a bug or an unsupported
  // driver, not a passing state), with one line on stderr: the caller runs
  // `launch`.
  void CaptureDecodeLayers(int batch, int splits, const std::function<Status()>& launch);
  // The samplers' adjustments (Sampler::Adjustments), row r for
  // samplers[r], staged in pinned memory and copied to the device once per
  // step on stream_: the entries of row r are [offsets[r], offsets[r + 1])
  // of adjust_device_. False when no sampler adjusts. Their guides' bans
  // (Sampler::Refused) go the same way, a bit row for each guided row, into
  // *refused (its slots null when no row has a guide; its raw buffer, room
  // for `call_rows` rows (the most rows a RefuseRows call takes), when a
  // guided row asks for logprobs).
  StatusOr<bool> StageAdjustments(std::span<Sampler* const> samplers, std::vector<int>* offsets,
                                  cuda::RefusedRows* refused, int call_rows);
  // The guides' bans of rows [first, first + count) (StageAdjustments'
  // `refused`), after AdjustRows; nothing when no row has a guide.
  Status RefuseRows(float* logits, const cuda::RefusedRows& refused, const int32_t* places, int first, int count);
  // Adds the staged adjustments of rows [first, first + count) to `logits`
  // (those rows, [count, vocab]) on stream_, keeping each entry's raw logit
  // in adjust_saved_.
  Status AdjustRows(float* logits, const std::vector<int>& offsets, int first, int count);
  // Device logprobs (cuda::LogprobRows): row r of a call goes to place
  // places[r], whose 1 + top_n entries and norm are at entries[place * (1 +
  // top_n)] and norms[place].
  struct LogprobScratch {
    int32_t* places = nullptr;
    int32_t* host_places = nullptr;  // pinned staging for `places`
    cuda::DeviceLogprob* entries = nullptr;
    cuda::LogprobNorm* norms = nullptr;
  };
  // Room for `rows` places of kMaxTopLogprobs alternatives, grown on demand
  // (the previous step synchronised: nothing reads the old buffer).
  StatusOr<LogprobScratch> EnsureLogprobScratch(int rows);
  // Entry 0 of the places of rows [first, first + count) of a decode step,
  // whose logits ([count, vocab], adjusted when `adjusted`) gave the tokens
  // `tokens` (device, [count]); LogprobRows saw them raw.
  Status ChosenLogprobs(const float* logits, bool adjusted, const std::vector<int>& offsets, int first, int count,
                        const int32_t* places, const int32_t* tokens, int top_n, const LogprobScratch& lp,
                        const cuda::RefusedRows& refused);
  // Place `place`'s logprobs from logprob_host_ (entries of 1 + top_n), the
  // alternatives cut to the first `n`.
  TokenLogprobs HostLogprobs(int place, int top_n, int n) const;
  // The cache as this engine's DeviceKvCache (the base checked its type and layout).
  static DeviceKvCache* AsDeviceCache(KvCache* cache) { return static_cast<DeviceKvCache*>(cache); }
  Status EnsureWorkspace(const PrefillPlan& plan);
  // A layer's compute time and density, once its end event has completed.
  Status LayerStats(int layer, bool sparse, int64_t causal_per_head, double* seconds, double* density) const;
  // The layer's gate output (mask from the CSR lists, probabilities) for dumps.
  StatusOr<GateOutput> ReadGateOutput(const PrefillPlan& plan, int seq_len, const DeviceBuffer& probs) const;

  ModelConfig config_;
  uint64_t fingerprint_ = 0;
  std::unique_ptr<GateWeights> gates_;
  GateShape gate_shape_;
  int block_ = 64;
  int device_ = 0;
  std::string device_name_;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceBuffer cublas_workspace_;
  // The prefill's large GEMMs on the fastest cuBLAS algorithm
  // (engine/cuda/gemm_tuner.h); null when EngineOptions::gemm_tuning is
  // false or SEER_GEMM_TUNING is "0".
  std::unique_ptr<GemmTuner> gemm_tuner_;
  DeviceModelWeights weights_;
  std::optional<ModelRunner> runner_;
  PlanLimits limits_;  // every PlanPrefill's

  // One forward pass at a time (Engine serialises the calls): they share these.
  DeviceBuffer workspace_;
  DeviceBuffer decode_workspace_;
  DeviceBuffer decode_attention_scratch_;  // split-K partials of DecodeAttention
  DeviceBuffer sample_scratch_;  // cuda::SampleToken's, allocated on first use
  // Logprobs are computed on the device (cuda::LogprobRows on the raw
  // logits, before the adjustments; cuda::LogprobChosen once the token is
  // drawn) and only their entries come back, to logprob_host_. Rows that do
  // not ask cost nothing.
  DeviceBuffer logprob_device_;
  int32_t* logprob_pinned_ = nullptr;  // [logprob_capacity_]: places staged for the device
  int logprob_capacity_ = 0;  // places
  std::vector<cuda::DeviceLogprob> logprob_host_;
  // StageAdjustments': pinned staging (written once per step, after the
  // previous step's synchronise) and its device copy, both grown on demand.
  cuda::RowLogitAdjustment* adjust_pinned_ = nullptr;
  size_t adjust_capacity_ = 0;  // entries
  DeviceBuffer adjust_device_;
  DeviceBuffer adjust_saved_;  // float [adjust_capacity_]: each entry's raw logit (AdjustRows)
  // The guides' bans, staged the same way: the rows' slots, then each
  // guided row's bits (cuda::RefusedRows), and the refused raw logits of
  // guided rows that ask for logprobs.
  unsigned char* refuse_pinned_ = nullptr;
  size_t refuse_capacity_ = 0;  // bytes
  DeviceBuffer refuse_device_;
  DeviceBuffer refuse_raw_;
  DeviceBuffer last_block_lists_;  // a prefill's last layer: each head's last CSR list, the other rows empty
  Activations decode_;
  // Batched decode (PreparePagedDecode). Every step runs the GEMMs on
  // max_batch rows, whatever the batch, and the lm_head on chunks of
  // logits_chunk rows: the same shapes give the same cuBLAS kernels, so a
  // sequence's tokens never depend on the rest of the batch. (An MLP chunk
  // smaller than max_batch, which only a ChunkLimits far below the default
  // gives, would break this: its last chunk is shorter.)
  struct BatchBuffers {
    int max_batch = 0;
    int max_pages = 0;  // block table entries per sequence
    DeviceBuffer workspace;
    Activations a;
    DeviceBuffer meta;  // int32 device: positions, context lens, next ids [max_batch], tables
    int32_t* host = nullptr;  // pinned: ids, positions, context lens, next ids [max_batch], tables
    DeviceBuffer attention_scratch;
  } batch_;
  // The batched step's layers as a CUDA graph (PagedDecodeOptions::cuda_graphs).
  struct DecodeGraph {
    bool enabled = false;
    cudaGraphExec_t exec = nullptr;
    int batch = -1, splits = -1;  // the shape `exec` replays
    int last_batch = -1, last_splits = -1;  // the previous step's shape
  } graph_;
  std::vector<cudaEvent_t> layer_start_, layer_end_;
  std::vector<cudaEvent_t> stage_events_;  // PrefillOptions::profile_stages, made on first use
  int64_t* kept_host_ = nullptr;  // pinned [layers, Hq], the gate's kept counts
};

CudaEngine::~CudaEngine() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : layer_start_) cudaEventDestroy(e);
  for (cudaEvent_t e : layer_end_) cudaEventDestroy(e);
  for (cudaEvent_t e : stage_events_) cudaEventDestroy(e);
  if (kept_host_ != nullptr) cudaFreeHost(kept_host_);
  if (batch_.host != nullptr) cudaFreeHost(batch_.host);
  if (adjust_pinned_ != nullptr) cudaFreeHost(adjust_pinned_);
  if (refuse_pinned_ != nullptr) cudaFreeHost(refuse_pinned_);
  if (logprob_pinned_ != nullptr) cudaFreeHost(logprob_pinned_);
  if (graph_.exec != nullptr) cudaGraphExecDestroy(graph_.exec);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

Status CudaEngine::Init(bool gemm_tuning, const ChunkLimits& chunk_limits) {
  for (const auto& [bytes, name] :
       {std::pair{chunk_limits.mlp_bytes, "mlp_bytes"}, std::pair{chunk_limits.logits_bytes, "logits_bytes"}}) {
    if (bytes < 0) return InvalidArgument(std::string("chunk_limits.") + name + " must be >= 0, got " + Str(bytes));
  }
  if (chunk_limits.mlp_bytes > 0) limits_.mlp_bytes = static_cast<size_t>(chunk_limits.mlp_bytes);
  if (chunk_limits.logits_bytes > 0) limits_.logits_bytes = static_cast<size_t>(chunk_limits.logits_bytes);
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device_));
  cudaDeviceProp prop{};
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDeviceProperties(&prop, device_));
  device_name_ = "cuda:" + Str(device_) + " (" + prop.name + ")";

  if (!cuda::IsSupportedHeadDim(config_.head_dim)) {
    return Unimplemented("the CUDA attention kernels take head_dim 32, 64, 96 or 128; this model has " +
                         Str(config_.head_dim) + " (use --device cpu)");
  }
  if (gates_ != nullptr && block_ != 64) {
    return Unimplemented("the CUDA block-sparse attention takes 64-token blocks; the gates have block_size " +
                         Str(block_) + " (use --device cpu)");
  }

  if (gates_ != nullptr) {
    const PrefillPlan probe = PlanPrefill(config_, gate_shape_, block_, 64, false, limits_);
    if (probe.gate_scratch_bytes == 0) {
      return Unimplemented("the CUDA gate does not take this shape (head_dim " + Str(config_.head_dim) +
                           ", gate hidden " + Str(gate_shape_.gate_hidden) + ", block " + Str(block_) +
                           "; use --device cpu)");
    }
  }

  SEER_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasCreate(&cublas_));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetStream(cublas_, stream_));
  // cuBLAS's workspace is ours, so its memory is planned and counted.
  SEER_ASSIGN_OR_RETURN(cublas_workspace_, DeviceBuffer::Allocate(kCublasWorkspaceBytes, "the cuBLAS workspace"));
  SEER_RETURN_IF_CUBLAS_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()));
  if (gemm_tuning && EnvEnabled("SEER_GEMM_TUNING")) {
    gemm_tuner_ = std::make_unique<GemmTuner>(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes());
  }

  layer_start_.assign(config_.num_layers, nullptr);
  layer_end_.assign(config_.num_layers, nullptr);
  for (int i = 0; i < config_.num_layers; ++i) {
    SEER_RETURN_IF_CUDA_ERROR(cudaEventCreate(&layer_start_[i]));
    SEER_RETURN_IF_CUDA_ERROR(cudaEventCreate(&layer_end_[i]));
  }
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&kept_host_), sizeof(int64_t) * config_.num_layers * config_.num_heads));

  // Decode works on one row: its buffers are small and held for good, so a
  // decode step never competes with a prefill for memory.
  const PrefillPlan one = PlanPrefill(config_, GateShape{}, 64, 1, false, limits_);
  SEER_ASSIGN_OR_RETURN(decode_workspace_, DeviceBuffer::Allocate(one.total_bytes, "the decode buffers"));
  decode_ = ActivationsIn(decode_workspace_, one);
  const size_t scratch = cuda::DecodeWorkspaceBytes(config_.num_heads, config_.head_dim);
  if (scratch > 0) {
    SEER_ASSIGN_OR_RETURN(decode_attention_scratch_, DeviceBuffer::Allocate(scratch, "the decode attention scratch"));
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<KvCache>> CudaEngine::AllocateCache(int capacity, bool gate_keys) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const size_t kv =
      DeviceKvCache::BytesFor(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity, gate_keys);
  size_t free_b = 0, total_b = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b));
  if (kv + kHeadroomBytes > free_b) {
    return ResourceExhausted("a KV cache of " + Str(capacity) + " tokens needs " + FormatBytes(kv) + " but " +
                             device_name_ + " has " + FormatBytes(free_b) + " free of " + FormatBytes(total_b) +
                             " (the weights hold " + FormatBytes(weights_.storage.bytes()) + ")");
  }
  SEER_ASSIGN_OR_RETURN(
      std::unique_ptr<DeviceKvCache> cache,
      DeviceKvCache::Create(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity, gate_keys));
  return std::unique_ptr<KvCache>(std::move(cache));
}

Status CudaEngine::RunCopyPrefix(const KvCache& src_in, int n, KvCache* dst_in) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  if (n == 0) return OkStatus();
  const auto& src = static_cast<const DeviceKvCache&>(src_in);
  auto* dst = static_cast<DeviceKvCache*>(dst_in);
  const size_t elem = sizeof(__nv_bfloat16);
  const size_t d = static_cast<size_t>(config_.head_dim), hkv = static_cast<size_t>(config_.num_kv_heads);
  const size_t row = static_cast<size_t>(n) * d * elem;  // one head's n positions
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    for (int which = 0; which < 2; ++which) {
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(which == 0 ? dst->k(layer) : dst->v(layer),
                                                  dst->capacity() * d * elem, which == 0 ? src.k(layer) : src.v(layer),
                                                  src.capacity() * d * elem, row, hkv, cudaMemcpyDeviceToDevice,
                                                  stream_));
    }
    if (dst->has_gate_keys()) {
      SEER_RETURN_IF_CUDA_ERROR(
          cudaMemcpyAsync(dst->gate_k(layer), src.gate_k(layer), row * hkv, cudaMemcpyDeviceToDevice, stream_));
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
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
  SEER_ASSIGN_OR_RETURN(
      workspace_, DeviceBuffer::Allocate(plan.total_bytes, "prefill activations of " + Str(plan.seq_len) + " tokens"));
  return OkStatus();
}

Status CudaEngine::LayerStats(int layer, bool sparse, int64_t causal_per_head, double* seconds, double* density) const {
  float ms = 0.0f;
  SEER_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, layer_start_[layer], layer_end_[layer]));
  *seconds = ms / 1e3;
  *density = 1.0;
  if (sparse) {
    const int hq = config_.num_heads;
    int64_t kept = 0;
    for (int h = 0; h < hq; ++h) kept += kept_host_[static_cast<size_t>(layer) * hq + h];
    *density = static_cast<double>(kept) / static_cast<double>(causal_per_head * hq);
  }
  return OkStatus();
}

StatusOr<GateOutput> CudaEngine::ReadGateOutput(const PrefillPlan& plan, int seq_len, const DeviceBuffer& probs) const {
  const int hq = config_.num_heads;
  const int nb = plan.gate_blocks;
  const int32_t* offsets = At<int32_t>(workspace_, plan.block_offsets);
  const int32_t* indices = At<int32_t>(workspace_, plan.block_indices);
  std::vector<int32_t> off(static_cast<size_t>(hq) * nb + 1);
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy(off.data(), offsets, sizeof(int32_t) * off.size(), cudaMemcpyDeviceToHost));
  std::vector<int32_t> idx(static_cast<size_t>(off.back()));
  if (!idx.empty()) {
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpy(idx.data(), indices, sizeof(int32_t) * idx.size(), cudaMemcpyDeviceToHost));
  }
  GateOutput out;
  out.mask.num_heads = hq;
  out.mask.num_blocks = nb;
  out.mask.block_size = block_;
  out.mask.seq_len = seq_len;
  out.mask.keep.assign(static_cast<size_t>(hq) * nb * nb, 0);
  for (int row = 0; row < hq * nb; ++row) {
    for (int32_t j = off[row]; j < off[row + 1]; ++j) {
      const int32_t kb = idx[j];
      if (kb >= 0 && kb < nb) out.mask.keep[static_cast<size_t>(row) * nb + kb] = 1;
    }
  }
  out.probs.resize(static_cast<size_t>(hq) * nb * nb);
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMemcpy(out.probs.data(), probs.get(), sizeof(float) * out.probs.size(), cudaMemcpyDeviceToHost));
  return out;
}

// Layer 0's projections and MLP on random activations at 16,384 rows,
// 32,768, ... up to max_tokens: the GEMM classes a prefill of each bucket
// runs (the attention and the gate have nothing to tune). The inputs are
// random, not zeros, so the GEMMs draw the power real ones do.
StatusOr<std::string> CudaEngine::RunWarmUp(int max_tokens) {
  if (gemm_tuner_ == nullptr || max_tokens < GemmTuner::kMinRows) return std::string();
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const auto start = std::chrono::steady_clock::now();
  const size_t before = gemm_tuner_->choices().size();
  int done = 0;
  std::string stopped;
  for (int64_t rows = GemmTuner::kMinRows; rows <= max_tokens; rows *= 2) {
    const int r = static_cast<int>(rows);
    const PrefillPlan plan = PlanPrefill(config_, GateShape{}, block_, r, false, limits_);
    const Status room = EnsureWorkspace(plan);
    if (!room.ok()) {
      stopped = "; stopped before " + Str(r) + " rows: " + room.message();
      break;
    }
    const Activations a = ActivationsIn(workspace_, plan);
    SEER_RETURN_IF_CUDA_ERROR(
        cuda::FillUniform(a.residual, static_cast<size_t>(r) * config_.hidden_size, 20261129, 1.0f, stream_));
    SEER_RETURN_IF_ERROR(runner_->AttentionInputs(0, a, r));
    SEER_RETURN_IF_ERROR(runner_->OutputAndMlp(0, a, r));
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
    done = r;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  char line[160];
  std::snprintf(line, sizeof(line), "GEMMs timed for prompts up to %d tokens: %zu classes new, %zu in all, %.2f s",
                done, gemm_tuner_->choices().size() - before, gemm_tuner_->choices().size(), seconds);
  return std::string(line) + stopped;
}

Status CudaEngine::RunForwardWithAttentionTap(std::span<const int32_t> ids, const AttentionTapFn& tap) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const int L = static_cast<int>(ids.size());
  const int hq = config_.num_heads, hkv = config_.num_kv_heads, d = config_.head_dim;
  constexpr int kTargetBlock = 64;
  const int nb = (L + kTargetBlock - 1) / kTargetBlock;
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache_owner, AllocateCache(L, false));
  DeviceKvCache* cache = AsDeviceCache(cache_owner.get());
  const PrefillPlan plan = PlanPrefill(config_, GateShape{}, block_, L, false, limits_);
  SEER_RETURN_IF_ERROR(EnsureWorkspace(plan));
  const Activations a = ActivationsIn(workspace_, plan);
  const size_t q_elems = static_cast<size_t>(L) * hq * d, k_elems = static_cast<size_t>(L) * hkv * d;
  const size_t target_elems = static_cast<size_t>(hq) * nb * nb;
  SEER_ASSIGN_OR_RETURN(DeviceBuffer target,
                        DeviceBuffer::Allocate(target_elems * sizeof(float), "the distillation target"));
  // Pinned staging for the copies back (the bf16 Q/K and the target), then
  // float32 for the tap.
  struct Pinned {
    void* p = nullptr;
    ~Pinned() {
      if (p != nullptr) cudaFreeHost(p);
    }
  } staging;
  const size_t staging_bytes = (q_elems + k_elems) * sizeof(uint16_t) + target_elems * sizeof(float);
  SEER_RETURN_IF_CUDA_ERROR(cudaMallocHost(&staging.p, staging_bytes));
  uint16_t* q_bf16 = static_cast<uint16_t*>(staging.p);
  uint16_t* k_bf16 = q_bf16 + q_elems;
  float* target_host = reinterpret_cast<float*>(k_bf16 + k_elems);
  std::vector<float> q_pre, k_pre;
  try {
    q_pre.resize(q_elems);
    k_pre.resize(k_elems);
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("ids: not enough host memory for the teacher pass of " + Str(L) + " tokens");
  }
  const int host_threads = std::max(1, std::min(16, static_cast<int>(std::thread::hardware_concurrency())));
  // Widens bf16 to float32 in chunks on the host threads.
  auto widen = [host_threads](const uint16_t* in, float* out, size_t n) {
    constexpr size_t kChunk = size_t{1} << 20;
    const int chunks = static_cast<int>((n + kChunk - 1) / kChunk);
    cpu::ParallelFor(chunks, host_threads, [&](int c) {
      const size_t end = std::min(n, (static_cast<size_t>(c) + 1) * kChunk);
      for (size_t i = static_cast<size_t>(c) * kChunk; i < end; ++i) out[i] = Bf16ToFloat(in[i]);
    });
  };

  cuda::DistillTargetParams tp;
  tp.q = a.q;
  tp.k = a.k;
  tp.dtype = cuda::ElemType::kBF16;
  tp.seq_len = L;
  tp.num_heads = hq;
  tp.num_kv_heads = hkv;
  tp.head_dim = d;
  tp.block_size = kTargetBlock;
  // The model's own softmax scale, as the CPU engine and HF apply it.
  tp.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  tp.out = target.as<float>();

  ModelRunner& run = *runner_;
  SEER_RETURN_IF_ERROR(run.Embed(ids, 0, a));
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(run.AttentionInputs(layer, a, L));
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(q_bf16, a.q, q_elems * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream_));
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(k_bf16, a.k, k_elems * sizeof(uint16_t), cudaMemcpyDeviceToHost, stream_));
    SEER_RETURN_IF_ERROR(run.RopeAndCache(layer, a, L, 0, cache));
    SEER_RETURN_IF_CUDA_ERROR(cuda::LaunchDistillTarget(tp, stream_));
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(target_host, tp.out, target_elems * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
    // The rest of the layer (nothing reads the last one's) runs while the
    // host takes its turn; the next layer's copies wait for it in stream order.
    if (layer + 1 < config_.num_layers) {
      SEER_RETURN_IF_ERROR(run.PrefillAttention(layer, a, L, *cache, nullptr, nullptr));
      SEER_RETURN_IF_ERROR(run.OutputAndMlp(layer, a, L));
    }
    widen(q_bf16, q_pre.data(), q_elems);
    widen(k_bf16, k_pre.data(), k_elems);
    AttentionTap t;
    t.layer = layer;
    t.seq_len = L;
    t.q = q_pre.data();
    t.k = k_pre.data();
    t.target = target_host;
    const Status s = tap(t);
    if (!s.ok()) {
      cudaStreamSynchronize(stream_);  // nothing of this pass may outlive its buffers
      return s;
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  return OkStatus();
}

StatusOr<PrefillResult> CudaEngine::RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options,
                                               KvCache* cache_in, PrefillObserver* observer) {
  const Clock::time_point t_begin = Clock::now();
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  DeviceKvCache* cache = AsDeviceCache(cache_in);

  // Everything is checked and every buffer reserved before the first launch.
  const int L = static_cast<int>(ids.size());
  // A cached prefix (Engine::Prefill): the pass computes rows P.. in
  // whole-prompt buffers, whose rows before P nothing reads but the gate.
  const int P = cache->length();
  const int S = L - P;
  const SparsityConfig& sp = options.sparsity;
  if (IsBaselineSparsity(sp.mode)) {
    return Unimplemented("sparsity " + SparsityToString(sp) +
                         ": the streaming and oracle baselines run only on the CPU engine (--device cpu); "
                         "the CUDA gate does not compute them");
  }
  const bool gated = gates_ != nullptr && (sp.mode != SparsityMode::kDense || options.keep_gate_outputs);
  const bool sparse = gates_ != nullptr && sp.mode != SparsityMode::kDense;
  if (gated) {
    // The block lists are int32 CSR offsets (kernels/attention/attention.h):
    // the blocks kept over all heads must stay below 2^31.
    const int64_t most_kept = cuda::GateMaxIndices(MakeGateParams(config_, gate_shape_, block_, L, sp));
    if (most_kept > int64_t{0x7fffffff}) {
      return ResourceExhausted("prefill: a gated prefill of " + Str(L) + " tokens may keep " + Str(most_kept) +
                               " attention blocks over " + Str(config_.num_heads) +
                               " heads, more than the GPU's int32 block lists hold (2^31 - 1); use a shorter "
                               "prompt or a smaller nz_ratio");
    }
  }
  // Every row's logits are computed for all_logits and for the prompt's
  // logprobs (which keep none of them).
  const bool every_row = options.all_logits || options.prompt_logprobs >= 0;
  const PrefillPlan plan = PlanPrefill(config_, gated ? gate_shape_ : GateShape{}, block_, L, every_row, limits_);
  SEER_RETURN_IF_ERROR(EnsureWorkspace(plan));
  DeviceBuffer probs;
  if (gated && options.keep_gate_outputs) {
    const size_t n = static_cast<size_t>(config_.num_heads) * plan.gate_blocks * plan.gate_blocks;
    SEER_ASSIGN_OR_RETURN(probs, DeviceBuffer::Allocate(n * sizeof(float), "the kept gate probabilities"));
  }
  const Activations a = ActivationsIn(workspace_, plan);
  GateBuffers gate_out;
  if (gated) {
    gate_out.block_offsets = At<int32_t>(workspace_, plan.block_offsets);
    gate_out.block_indices = At<int32_t>(workspace_, plan.block_indices);
    gate_out.index_capacity = plan.index_capacity;
    gate_out.probs = probs.as<float>();
    gate_out.workspace = At<char>(workspace_, plan.gate_scratch);
    gate_out.workspace_bytes = plan.gate_scratch_bytes;
    gate_out.heads_per_pass = plan.gate_heads_per_pass;
  }
  int64_t* kept = gated ? At<int64_t>(workspace_, plan.kept) : nullptr;

  // The last layer feeds nothing but the last row's logits (unless every
  // row's logits or the gate's outputs are asked for). Its K/V still reach
  // the cache for every row, but its attention runs for the last query block
  // only and its o_proj and MLP for the last row only, as llama.cpp skips
  // the last layer's FFN for rows whose logits nobody reads. With block
  // lists each head's last list is kept and every other row is empty (those
  // rows come out as zeros); dense, the kernel skips the rows before the
  // last (AttentionParams::first_row), so the last block runs in the same
  // tile, in the same order, as in the full pass. Either way the last row's
  // attention is the same computation; its o_proj and MLP are GEMMs of one
  // row instead of L, so the logits move by rounding (checked against the
  // full path in cuda_engine_gpu_test.cc).
  const int nb = (L + block_ - 1) / block_;
  // SEER_TRIM_LAST_LAYER=0 runs the whole last layer, for comparison.
  static const bool trim_enabled = EnvEnabled("SEER_TRIM_LAST_LAYER");
  const bool trim_last = trim_enabled && !every_row && !options.keep_gate_outputs && nb > 1;
  const size_t last_rows = static_cast<size_t>(config_.num_heads) * nb;
  const size_t list_bytes = sizeof(int32_t) * (2 * last_rows + 1);  // offsets, then nb blocks per head at most
  if (trim_last && sparse && last_block_lists_.bytes() < list_bytes) {
    last_block_lists_.Reset();
    SEER_ASSIGN_OR_RETURN(last_block_lists_, DeviceBuffer::Allocate(list_bytes, "the last layer's block lists"));
  }

  PrefillResult result;
  result.layer_density.assign(config_.num_layers, 1.0);
  result.logits_rows = options.all_logits ? L : 1;
  result.logits.resize(static_cast<size_t>(result.logits_rows) * config_.vocab_size);
  std::vector<double> layer_seconds(config_.num_layers, 0.0);
  const int hq = config_.num_heads;
  const int first_block = P / block_;
  const int64_t causal_per_head = gated ? CausalBlocksFrom(1, plan.gate_blocks, first_block) : 0;
  // Only what asks for each layer's results waits for it.
  const bool wait_per_layer = observer != nullptr || options.keep_gate_outputs;

  // Stage timing: an event after each stage; the interval that ends at
  // event i belongs to stage_of[i].
  int marks = 0;
  const int max_marks = 3 + 5 * config_.num_layers;
  std::vector<double StageSeconds::*> stage_of(options.profile_stages ? max_marks : 0);
  if (options.profile_stages && stage_events_.size() < static_cast<size_t>(max_marks)) {
    while (stage_events_.size() < static_cast<size_t>(max_marks)) {
      cudaEvent_t e = nullptr;
      SEER_RETURN_IF_CUDA_ERROR(cudaEventCreate(&e));
      stage_events_.push_back(e);
    }
  }
  auto mark = [&](double StageSeconds::*stage) -> Status {
    if (!options.profile_stages || marks >= max_marks) {
      return OkStatus();
    }
    stage_of[marks] = stage;
    SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(stage_events_[marks++], stream_));
    return OkStatus();
  };

  ModelRunner& run = *runner_;
  // q stays before RoPE and the attention kernel rotates it as it loads it
  // (one pass over q fewer: 1 GiB read and written a layer at 128k tokens of
  // the 8B shape), where the kernel can (SEER_ROPE_IN_ATTENTION=0: never).
  // Past a cached prefix a gated q is rotated first, in the rest's own
  // rows: the attention may then split a short rest's long key lists
  // across the GPU (cuda::FwdVariant::kRowsSplit, which reads q rotated).
  const bool rope_in_attention = (P == 0 || !sparse) && run.AttentionRotatesQ();
  const Activations rest = RowsFrom(a, config_, P);  // the rows the pass computes
  const size_t kv_row_bytes = sizeof(bf16) * config_.num_kv_heads * config_.head_dim;
  SEER_RETURN_IF_ERROR(mark(nullptr));
  SEER_RETURN_IF_ERROR(run.Embed(ids.subspan(static_cast<size_t>(P)), P, rest));
  if (gated && P > 0) {
    // The gate runs over the whole prompt: Q zeros before P (those rows'
    // blocks are not read), K the cache's gate keys.
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemsetAsync(a.q, 0, sizeof(bf16) * static_cast<size_t>(P) * hq * config_.head_dim, stream_));
  }
  SEER_RETURN_IF_ERROR(mark(&StageSeconds::embed));
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(layer_start_[layer], stream_));
    SEER_RETURN_IF_ERROR(run.AttentionInputs(layer, rest, S));
    if (cache->has_gate_keys()) {  // K before RoPE, at the pass's positions
      bf16* keys = cache->gate_k(layer) + static_cast<size_t>(P) * config_.num_kv_heads * config_.head_dim;
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(keys, rest.k, kv_row_bytes * S, cudaMemcpyDeviceToDevice, stream_));
    }
    SEER_RETURN_IF_ERROR(mark(&StageSeconds::attention_inputs));
    if (gated) {
      gate_out.kept_per_head = kept + static_cast<size_t>(layer) * hq;
      Activations gate_in = a;
      if (P > 0) gate_in.k = cache->gate_k(layer);
      SEER_RETURN_IF_ERROR(run.Gate(layer, gate_in, L, sp, gate_out));
      if (P > 0) {  // count the computed rows' blocks only
        SEER_RETURN_IF_CUDA_ERROR(cuda::CountKeptFrom(gate_out.block_offsets, hq, plan.gate_blocks, first_block,
                                                      gate_out.kept_per_head, stream_));
      }
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(kept_host_ + static_cast<size_t>(layer) * hq, gate_out.kept_per_head,
                                                sizeof(int64_t) * hq, cudaMemcpyDeviceToHost, stream_));
      SEER_RETURN_IF_ERROR(mark(&StageSeconds::gate));
    }
    SEER_RETURN_IF_ERROR(run.RopeAndCache(layer, rest, S, P, cache, /*rotate_q=*/!rope_in_attention));
    SEER_RETURN_IF_ERROR(mark(&StageSeconds::rope_and_cache));
    const bool trim = trim_last && layer == config_.num_layers - 1;
    const int32_t* offsets = sparse ? gate_out.block_offsets : nullptr;
    const int32_t* indices = sparse ? gate_out.block_indices : nullptr;
    if (trim && sparse) {
      int32_t* last_offsets = last_block_lists_.as<int32_t>();
      int32_t* last_indices = last_offsets + last_rows + 1;
      SEER_RETURN_IF_CUDA_ERROR(
          cuda::KeepLastQueryBlock(offsets, indices, config_.num_heads, nb, last_offsets, last_indices, stream_));
      offsets = last_offsets;
      indices = last_indices;
    }
    SEER_RETURN_IF_ERROR(
        run.PrefillAttention(layer, a, L, *cache, offsets, indices, rope_in_attention, trim && !sparse ? L - 1 : P));
    SEER_RETURN_IF_ERROR(mark(&StageSeconds::attention));
    if (trim) {
      SEER_RETURN_IF_ERROR(run.OutputAndMlp(layer, RowsFrom(a, config_, L - 1), 1));
    } else {
      SEER_RETURN_IF_ERROR(run.OutputAndMlp(layer, rest, S));
    }
    SEER_RETURN_IF_ERROR(mark(&StageSeconds::output_and_mlp));
    SEER_RETURN_IF_CUDA_ERROR(cudaEventRecord(layer_end_[layer], stream_));

    if (!wait_per_layer) continue;
    SEER_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(layer_end_[layer]));
    SEER_RETURN_IF_ERROR(
        LayerStats(layer, sparse, causal_per_head, &layer_seconds[layer], &result.layer_density[layer]));
    if (gated && options.keep_gate_outputs) {
      SEER_ASSIGN_OR_RETURN(GateOutput g, ReadGateOutput(plan, L, probs));
      result.gate_outputs.push_back(std::move(g));
    }
    if (observer != nullptr) {
      LayerDone done;
      done.layer = layer;
      done.seq_len = L;
      done.first = P;
      done.cache = cache;
      done.density = result.layer_density[layer];
      done.seconds = layer_seconds[layer];
      SEER_RETURN_IF_ERROR(observer->OnLayerDone(done));
    }
  }

  // Logits: the last row, or every row in chunks through the bounded buffer.
  // The result keeps every row for all_logits, else the last row. The
  // prompt's logprobs are computed on the device from each chunk (row r's
  // logits give ids[r + 1]'s, which a.ids holds) and only their entries
  // come back.
  const int vocab = config_.vocab_size;
  const int first_row = every_row ? 0 : L - 1;
  const int top_n = options.prompt_logprobs;  // -1: none
  LogprobScratch lp;
  if (top_n >= 0) {
    SEER_ASSIGN_OR_RETURN(lp, EnsureLogprobScratch(a.logits_chunk));
    result.prompt_logprobs.reserve(static_cast<size_t>(L - 1));
  }
  for (int r0 = first_row; r0 < L; r0 += a.logits_chunk) {
    const int n = std::min(a.logits_chunk, L - r0);
    SEER_RETURN_IF_ERROR(run.Logits(a, r0, n));
    if (options.all_logits || !every_row) {
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(result.logits.data() + static_cast<size_t>(r0 - first_row) * vocab,
                                                a.logits, sizeof(float) * n * vocab, cudaMemcpyDeviceToHost, stream_));
    } else if (r0 + n == L) {
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(result.logits.data(), a.logits + static_cast<size_t>(n - 1) * vocab,
                                                sizeof(float) * vocab, cudaMemcpyDeviceToHost, stream_));
    }
    const int asked = top_n >= 0 ? std::min(n, L - 1 - r0) : 0;  // the last row has no next token
    if (asked > 0) {
      SEER_RETURN_IF_CUDA_ERROR(
          cuda::LogprobRows(a.logits, asked, vocab, nullptr, a.ids + r0 + 1, top_n, lp.entries, nullptr, stream_));
      logprob_host_.resize(static_cast<size_t>(asked) * (1 + top_n));
      SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logprob_host_.data(), lp.entries,
                                                sizeof(cuda::DeviceLogprob) * logprob_host_.size(),
                                                cudaMemcpyDeviceToHost, stream_));
    }
    // The next chunk reuses the device buffers; pageable copies complete
    // before the call returns, but say so explicitly.
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
    for (int r = 0; r < asked; ++r) result.prompt_logprobs.push_back(HostLogprobs(r, top_n, top_n));
  }
  SEER_RETURN_IF_ERROR(mark(&StageSeconds::logits));
  if (options.profile_stages) {
    SEER_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(stage_events_[marks - 1]));
    for (int i = 1; i < marks; ++i) {
      float ms = 0.0f;
      SEER_RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, stage_events_[i - 1], stage_events_[i]));
      if (stage_of[i] != nullptr) result.stages.*stage_of[i] += ms / 1e3;
    }
  }

  // Timings and densities of the layers nobody waited for, then the totals.
  int64_t kept_total = 0;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    if (!wait_per_layer) {
      SEER_RETURN_IF_ERROR(
          LayerStats(layer, sparse, causal_per_head, &layer_seconds[layer], &result.layer_density[layer]));
    }
    if (sparse) {
      for (int h = 0; h < hq; ++h) kept_total += kept_host_[static_cast<size_t>(layer) * hq + h];
    }
  }
  result.overall_density =
      sparse ? static_cast<double>(kept_total) / static_cast<double>(causal_per_head * hq * config_.num_layers) : 1.0;
  cache->set_length(L);
  result.seconds = SecondsSince(t_begin);
  return result;
}

Status CudaEngine::RunDecodeStep(int32_t token, KvCache* cache_in, std::vector<float>* logits) {
  DeviceKvCache* cache = AsDeviceCache(cache_in);
  SEER_RETURN_IF_ERROR(DecodeForward(token, cache));
  logits->resize(config_.vocab_size);
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logits->data(), decode_.logits, sizeof(float) * config_.vocab_size,
                                            cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  cache->set_length(cache->length() + 1);
  return OkStatus();
}

StatusOr<int32_t> CudaEngine::RunDecodeAndSample(int32_t token, KvCache* cache_in, Sampler* sampler) {
  DeviceKvCache* cache = AsDeviceCache(cache_in);
  const SamplingParams& sp = sampler->params();
  if (sp.temperature > 0.0 && sample_scratch_.empty()) {
    SEER_ASSIGN_OR_RETURN(sample_scratch_, DeviceBuffer::Allocate(cuda::SampleScratchBytes(config_.vocab_size),
                                                                  "decode: sampling scratch"));
  }
  SEER_RETURN_IF_ERROR(DecodeForward(token, cache));
  const int vocab = config_.vocab_size;
  const int top_n = sp.logprobs;  // -1: none
  LogprobScratch lp;
  if (top_n >= 0) {
    SEER_ASSIGN_OR_RETURN(lp, EnsureLogprobScratch(1));
    SEER_RETURN_IF_CUDA_ERROR(
        cuda::LogprobRows(decode_.logits, 1, vocab, nullptr, nullptr, top_n, lp.entries, lp.norms, stream_));
  }
  Sampler* const one[] = {sampler};
  std::vector<int> offsets;
  cuda::RefusedRows refused;
  SEER_ASSIGN_OR_RETURN(const bool adjusted, StageAdjustments(one, &offsets, &refused, 1));
  if (adjusted) SEER_RETURN_IF_ERROR(AdjustRows(decode_.logits, offsets, 0, 1));
  SEER_RETURN_IF_ERROR(RefuseRows(decode_.logits, refused, nullptr, 0, 1));
  // One uniform per sampled token, none when greedy, as Sampler::Sample.
  const double u = sp.temperature > 0.0 ? sampler->NextUniform() : 0.0;
  // decode_.ids held this step's token; the sampled one overwrites it.
  const int top_k = sp.top_k > 0 ? sp.top_k : 0;
  SEER_RETURN_IF_CUDA_ERROR(cuda::SampleToken(decode_.logits, vocab, sp.temperature, top_k, sp.top_p, sp.min_p, u,
                                              sample_scratch_.get(), sample_scratch_.bytes(), decode_.ids, stream_));
  if (top_n >= 0) {
    SEER_RETURN_IF_ERROR(
        ChosenLogprobs(decode_.logits, adjusted, offsets, 0, 1, nullptr, decode_.ids, top_n, lp, refused));
    logprob_host_.resize(static_cast<size_t>(1 + top_n));
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logprob_host_.data(), lp.entries,
                                              sizeof(cuda::DeviceLogprob) * logprob_host_.size(),
                                              cudaMemcpyDeviceToHost, stream_));
  }
  int32_t next = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(&next, decode_.ids, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  cache->set_length(cache->length() + 1);
  sampler->Record(next);
  if (top_n >= 0) sampler->SetLastLogprobs(HostLogprobs(0, top_n, top_n));
  return next;
}

StatusOr<bool> CudaEngine::StageAdjustments(std::span<Sampler* const> samplers, std::vector<int>* offsets,
                                            cuda::RefusedRows* refused, int call_rows) {
  // The guides' bans first: asking a sampler for them runs its guide's walk
  // for this token, which the device's forward pass, already queued, hides.
  *refused = cuda::RefusedRows{};
  const int rows = static_cast<int>(samplers.size());
  const int words = (config_.vocab_size + 63) / 64;
  int guided = 0;
  for (Sampler* s : samplers) guided += s->Refused().empty() ? 0 : 1;
  if (guided > 0) {
    const size_t slot_bytes = (sizeof(int32_t) * rows + 255) / 256 * 256;
    const size_t bytes = slot_bytes + sizeof(uint64_t) * words * guided;
    if (bytes > refuse_capacity_) {
      // The previous step synchronised: nothing reads the old buffers.
      const size_t capacity = 2 * bytes;
      if (refuse_pinned_ != nullptr) cudaFreeHost(refuse_pinned_);
      refuse_pinned_ = nullptr;
      refuse_capacity_ = 0;
      SEER_RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&refuse_pinned_), capacity));
      SEER_ASSIGN_OR_RETURN(refuse_device_, DeviceBuffer::Allocate(capacity, "decode: the guides' bans"));
      refuse_capacity_ = capacity;
    }
    auto* slots = reinterpret_cast<int32_t*>(refuse_pinned_);
    auto* bits = reinterpret_cast<uint64_t*>(refuse_pinned_ + slot_bytes);
    int slot = 0;
    for (int r = 0; r < rows; ++r) {
      const std::span<const uint64_t> row = samplers[r]->Refused();
      slots[r] = row.empty() ? -1 : slot;
      if (row.empty()) continue;
      if (row.size() != static_cast<size_t>(words)) {
        return InvalidArgument("guide: the sampler's vocab_size (" + std::to_string(samplers[r]->params().vocab_size) +
                               ") is not the model's (" + std::to_string(config_.vocab_size) + ")");
      }
      std::copy(row.begin(), row.end(), bits + static_cast<size_t>(slot++) * words);
    }
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(refuse_device_.get(), refuse_pinned_, bytes, cudaMemcpyHostToDevice, stream_));
    refused->slots = refuse_device_.as<int32_t>();
    refused->bits = reinterpret_cast<const uint64_t*>(refuse_device_.as<unsigned char>() + slot_bytes);
    refused->words = words;
    bool raw = false;
    for (Sampler* s : samplers) raw = raw || (s->wants_logprobs() && !s->Refused().empty());
    if (raw) {
      // As many rows as the logits a call adjusts: bounded by the logits
      // chunk, as the logits buffer is.
      const size_t raw_bytes = sizeof(float) * static_cast<size_t>(call_rows) * config_.vocab_size;
      if (refuse_raw_.bytes() < raw_bytes) {
        refuse_raw_ = DeviceBuffer{};
        SEER_ASSIGN_OR_RETURN(refuse_raw_,
                              DeviceBuffer::Allocate(raw_bytes, "logprobs: the raw logits of the ids a guide refused"));
      }
      refused->raw = refuse_raw_.as<float>();
    }
  }

  offsets->assign(1, 0);
  size_t total = 0;
  for (Sampler* s : samplers) {
    total += s->Adjustments().size();
    offsets->push_back(static_cast<int>(total));
  }
  if (total == 0) return false;
  if (total > adjust_capacity_) {
    // The previous step synchronised: nothing reads the old buffers.
    const size_t capacity = std::max<size_t>(2 * total, 1024);
    if (adjust_pinned_ != nullptr) cudaFreeHost(adjust_pinned_);
    adjust_pinned_ = nullptr;
    adjust_capacity_ = 0;
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMallocHost(reinterpret_cast<void**>(&adjust_pinned_), sizeof(cuda::RowLogitAdjustment) * capacity));
    SEER_ASSIGN_OR_RETURN(adjust_device_, DeviceBuffer::Allocate(sizeof(cuda::RowLogitAdjustment) * capacity,
                                                                 "decode: the samplers' logit adjustments"));
    SEER_ASSIGN_OR_RETURN(adjust_saved_,
                          DeviceBuffer::Allocate(sizeof(float) * capacity, "decode: the adjusted tokens' raw logits"));
    adjust_capacity_ = capacity;
  }
  size_t i = 0;
  for (size_t r = 0; r < samplers.size(); ++r) {
    for (const LogitAdjustment& a : samplers[r]->Adjustments()) {
      adjust_pinned_[i++] = {static_cast<int32_t>(r), a.id, a.delta, a.repetition};
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(adjust_device_.get(), adjust_pinned_,
                                            sizeof(cuda::RowLogitAdjustment) * total, cudaMemcpyHostToDevice, stream_));
  return true;
}

Status CudaEngine::RefuseRows(float* logits, const cuda::RefusedRows& refused, const int32_t* places, int first,
                              int count) {
  if (refused.slots == nullptr) return OkStatus();
  SEER_RETURN_IF_CUDA_ERROR(cuda::RefuseLogits(logits, count, config_.vocab_size, first, places, refused, stream_));
  return OkStatus();
}

Status CudaEngine::AdjustRows(float* logits, const std::vector<int>& offsets, int first, int count) {
  const int begin = offsets[first], end = offsets[first + count];
  SEER_RETURN_IF_CUDA_ERROR(cuda::AdjustLogits(logits, config_.vocab_size,
                                               adjust_device_.as<cuda::RowLogitAdjustment>() + begin, end - begin,
                                               first, stream_, adjust_saved_.as<float>() + begin));
  return OkStatus();
}

StatusOr<CudaEngine::LogprobScratch> CudaEngine::EnsureLogprobScratch(int rows) {
  static_assert(cuda::kMaxDeviceTopLogprobs == kMaxTopLogprobs);
  constexpr size_t kAlign = 256;
  auto align = [](size_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  const size_t places_bytes = align(sizeof(int32_t) * rows);
  const size_t entries_bytes = align(sizeof(cuda::DeviceLogprob) * rows * (1 + kMaxTopLogprobs));
  if (rows > logprob_capacity_) {
    logprob_capacity_ = 0;
    if (logprob_pinned_ != nullptr) cudaFreeHost(logprob_pinned_);
    logprob_pinned_ = nullptr;
    SEER_RETURN_IF_CUDA_ERROR(cudaMallocHost(reinterpret_cast<void**>(&logprob_pinned_), sizeof(int32_t) * rows));
    SEER_ASSIGN_OR_RETURN(logprob_device_,
                          DeviceBuffer::Allocate(places_bytes + entries_bytes + sizeof(cuda::LogprobNorm) * rows,
                                                 "logprobs: the device's entries"));
    logprob_capacity_ = rows;
  }
  auto* base = static_cast<char*>(logprob_device_.get());
  LogprobScratch lp;
  lp.host_places = logprob_pinned_;
  lp.places = reinterpret_cast<int32_t*>(base);
  lp.entries = reinterpret_cast<cuda::DeviceLogprob*>(base + places_bytes);
  lp.norms = reinterpret_cast<cuda::LogprobNorm*>(base + places_bytes + entries_bytes);
  return lp;
}

Status CudaEngine::ChosenLogprobs(const float* logits, bool adjusted, const std::vector<int>& offsets, int first,
                                  int count, const int32_t* places, const int32_t* tokens, int top_n,
                                  const LogprobScratch& lp, const cuda::RefusedRows& refused) {
  const int begin = adjusted ? offsets[first] : 0;
  const int end = adjusted ? offsets[first + count] : 0;
  SEER_RETURN_IF_CUDA_ERROR(cuda::LogprobChosen(
      logits, count, config_.vocab_size, places, tokens, adjust_device_.as<cuda::RowLogitAdjustment>() + begin,
      adjust_saved_.as<float>() + begin, end - begin, first, lp.norms, top_n, lp.entries, stream_, &refused));
  return OkStatus();
}

TokenLogprobs CudaEngine::HostLogprobs(int place, int top_n, int n) const {
  const cuda::DeviceLogprob* e = logprob_host_.data() + static_cast<size_t>(place) * (1 + top_n);
  TokenLogprobs out;
  out.chosen = {e[0].id, e[0].logprob};
  for (int j = 1; j <= n; ++j)
    if (e[j].id >= 0) out.top.push_back({e[j].id, e[j].logprob});
  return out;
}

Status CudaEngine::DecodeForward(int32_t token, DeviceKvCache* cache) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const int pos = cache->length();
  const Activations& a = decode_;
  ModelRunner& run = *runner_;
  SEER_RETURN_IF_ERROR(run.Embed(std::span<const int32_t>(&token, 1), pos, a));
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(run.AttentionInputs(layer, a, 1, /*fuse_qkv=*/true));
    SEER_RETURN_IF_ERROR(run.RopeAndCache(layer, a, 1, pos, cache));
    SEER_RETURN_IF_ERROR(
        run.DecodeAttention(layer, a, pos, *cache, decode_attention_scratch_.get(), decode_attention_scratch_.bytes()));
    SEER_RETURN_IF_ERROR(run.OutputAndMlp(layer, a, 1, /*fuse_gate_up=*/true));
  }
  return run.Logits(a, 0, 1);
}

StatusOr<std::unique_ptr<PagePool>> CudaEngine::CreatePagePool(const PageLayout& layout, int pages) {
  if (config_.head_dim != 64 && config_.head_dim != 128) {
    return Unimplemented("the CUDA paged decode attention takes head_dim 64 or 128; this model has " +
                         Str(config_.head_dim));
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<DevicePagePool> pool, DevicePagePool::Create(layout, pages, device_));
  return std::unique_ptr<PagePool>(std::move(pool));
}

StatusOr<int64_t> CudaEngine::PoolBudgetBytes(double fraction) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  size_t free_b = 0, total_b = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_b, &total_b));
  const double usable = free_b > kHeadroomBytes ? static_cast<double>(free_b - kHeadroomBytes) : 0.0;
  return static_cast<int64_t>(usable * fraction);
}

Status CudaEngine::PreparePagedDecode(const PagedDecodeOptions& options) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const int max_batch = options.max_batch;
  if (graph_.exec != nullptr) cudaGraphExecDestroy(graph_.exec);
  graph_ = DecodeGraph{};
  graph_.enabled = options.cuda_graphs;
  BatchBuffers& b = batch_;
  b.max_batch = max_batch;
  b.max_pages = page_pool()->layout().PagesFor(config_.max_position_embeddings);
  const PrefillPlan plan = PlanPrefill(config_, GateShape{}, 64, max_batch, /*all_logits=*/true, limits_);
  SEER_ASSIGN_OR_RETURN(b.workspace, DeviceBuffer::Allocate(plan.total_bytes, "the batched decode buffers"));
  // Rows past the batch are computed and ignored; they start as zeros.
  // On the engine's stream (a plain cudaMemset is not ordered before a
  // non-blocking stream's work).
  SEER_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(b.workspace.get(), 0, b.workspace.bytes(), stream_));
  b.a = ActivationsIn(b.workspace, plan);
  // The lm_head's rows in as few chunks as the logits buffer allows, each
  // as small as that number of chunks allows (600 rows: two of 300), so
  // that the last chunk, which starts early over rows already done,
  // computes the fewest rows twice.
  const int chunks = (max_batch + plan.logits_chunk - 1) / plan.logits_chunk;
  b.a.logits_chunk = (max_batch + chunks - 1) / chunks;
  const size_t meta = 3 * static_cast<size_t>(max_batch) + static_cast<size_t>(max_batch) * b.max_pages;
  SEER_ASSIGN_OR_RETURN(b.meta, DeviceBuffer::Allocate(sizeof(int32_t) * meta, "the batched decode tables"));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemsetAsync(b.meta.get(), 0, b.meta.bytes(), stream_));
  SEER_RETURN_IF_CUDA_ERROR(
      cudaMallocHost(reinterpret_cast<void**>(&b.host), sizeof(int32_t) * (meta + static_cast<size_t>(max_batch))));
  std::memset(b.host, 0, sizeof(int32_t) * (meta + static_cast<size_t>(max_batch)));
  const size_t scratch =
      cuda::PagedDecodeWorkspaceBytes(max_batch, config_.num_heads, config_.head_dim, config_.max_position_embeddings);
  SEER_ASSIGN_OR_RETURN(b.attention_scratch, DeviceBuffer::Allocate(scratch, "the paged attention scratch"));
  if (sample_scratch_.empty()) {
    SEER_ASSIGN_OR_RETURN(sample_scratch_, DeviceBuffer::Allocate(cuda::SampleScratchBytes(config_.vocab_size),
                                                                  "decode: sampling scratch"));
  }
  return OkStatus();
}

Status CudaEngine::RunPageIn(const KvCache& src, PagedKvCache* paged) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  const auto& cache = static_cast<const DeviceKvCache&>(src);
  auto* pool = static_cast<DevicePagePool*>(page_pool());
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(pool->WriteTokensFromDevice(layer, paged->pages(), src.length(), src.capacity(),
                                                     cache.k(layer), cache.v(layer)));
  }
  return pool->Synchronize();
}

Status CudaEngine::RunDecodeBatch(std::span<const DecodeSeq> seqs, std::span<int32_t> next) {
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(device_));
  BatchBuffers& b = batch_;
  const int B = static_cast<int>(seqs.size());
  const int rows = b.max_batch;
  const int mb = b.max_batch;
  // Pinned host: ids | positions | lens | next | tables; device: positions | lens | next | tables.
  int32_t* h_ids = b.host;
  int32_t* h_pos = b.host + mb;
  int32_t* h_len = b.host + 2 * mb;
  int32_t* h_next = b.host + 3 * mb;
  int32_t* h_tables = b.host + 4 * mb;
  int32_t* d_pos = b.meta.as<int32_t>();
  int32_t* d_len = d_pos + mb;
  int32_t* d_next = d_pos + 2 * mb;
  int32_t* d_tables = d_pos + 3 * mb;
  int max_context = 0;
  for (int r = 0; r < rows; ++r) {
    h_ids[r] = r < B ? seqs[r].token : 0;
    h_pos[r] = r < B ? seqs[r].cache->length() : 0;
    h_len[r] = r < B ? h_pos[r] + 1 : 0;
    max_context = std::max(max_context, h_len[r]);
  }
  for (int r = 0; r < B; ++r) {
    const std::vector<int32_t>& pages = static_cast<const PagedKvCache*>(seqs[r].cache)->pages();
    std::copy(pages.begin(), pages.end(), h_tables + static_cast<size_t>(r) * b.max_pages);
  }
  const Activations& a = b.a;
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(a.ids, h_ids, sizeof(int32_t) * rows, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(d_pos, h_pos, sizeof(int32_t) * 2 * mb, cudaMemcpyHostToDevice, stream_));
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(d_tables, h_tables, sizeof(int32_t) * static_cast<size_t>(B) * b.max_pages,
                                            cudaMemcpyHostToDevice, stream_));
  PagedBatch pb;
  pb.batch = B;
  pb.positions = d_pos;
  pb.context_lens = d_len;
  pb.block_tables = d_tables;
  pb.max_pages_per_seq = b.max_pages;
  pb.max_context = max_context;
  pb.pool = static_cast<const DevicePagePool*>(page_pool());
  pb.workspace = b.attention_scratch.get();
  pb.workspace_bytes = b.attention_scratch.bytes();

  ModelRunner& run = *runner_;
  SEER_RETURN_IF_ERROR(RunDecodeLayers(B, cuda::PagedDecodeSplits(max_context), [&]() -> Status {
    SEER_RETURN_IF_ERROR(run.EmbedAt(d_pos, rows, a));
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      SEER_RETURN_IF_ERROR(run.PagedAttentionInputs(layer, a, rows, pb));
      SEER_RETURN_IF_ERROR(run.PagedAttention(layer, a, pb));
      SEER_RETURN_IF_ERROR(run.OutputAndMlp(layer, a, rows, /*fuse_gate_up=*/true));
    }
    return OkStatus();
  }));
  // Logits in chunks of rows, up to the batch's last; each sequence's token
  // from its own sampler: the largest logit for greedy rows (ArgMaxRows),
  // SampleToken with the row's one uniform for the others, as
  // DecodeAndSample would. Every chunk is logits_chunk rows: the last one
  // starts early, over rows already done (computed again, not sampled
  // again), so that a row's lm_head GEMM has the same shape wherever the row
  // sits in the batch.
  const int vocab = config_.vocab_size;
  const int chunk = a.logits_chunk;  // <= rows
  std::vector<Sampler*> samplers;
  for (int r = 0; r < B; ++r) samplers.push_back(seqs[r].sampler);
  // Logprobs: row r's at place logprob_place[r] (-1: none asked), with the
  // most alternatives any row asks for (each row's cut to its own).
  std::vector<int32_t> logprob_place(B, -1);
  int places = 0, top_n = -1;
  for (int r = 0; r < B; ++r) {
    if (!seqs[r].sampler->wants_logprobs()) continue;
    logprob_place[r] = places++;
    top_n = std::max(top_n, seqs[r].sampler->params().logprobs);
  }
  std::vector<int> offsets;
  cuda::RefusedRows refused;
  SEER_ASSIGN_OR_RETURN(const bool adjusted, StageAdjustments(samplers, &offsets, &refused, std::min(B, chunk)));
  LogprobScratch lp;
  if (places > 0) {
    SEER_ASSIGN_OR_RETURN(lp, EnsureLogprobScratch(B));  // room for B places, and B rows' place numbers
    std::copy(logprob_place.begin(), logprob_place.end(), lp.host_places);
    SEER_RETURN_IF_CUDA_ERROR(
        cudaMemcpyAsync(lp.places, lp.host_places, sizeof(int32_t) * B, cudaMemcpyHostToDevice, stream_));
  }
  for (int r0 = 0; r0 < B; r0 += chunk) {
    const int start = std::min(r0, rows - chunk);
    SEER_RETURN_IF_ERROR(run.Logits(a, start, chunk));
    float* logits = a.logits + static_cast<size_t>(r0 - start) * vocab;  // row r0's
    const int n = std::min(start + chunk, B) - r0;  // rows r0 .. r0 + n - 1 are new here
    if (places > 0) {
      SEER_RETURN_IF_CUDA_ERROR(
          cuda::LogprobRows(logits, n, vocab, lp.places + r0, nullptr, top_n, lp.entries, lp.norms, stream_));
    }
    if (adjusted) SEER_RETURN_IF_ERROR(AdjustRows(logits, offsets, r0, n));
    SEER_RETURN_IF_ERROR(RefuseRows(logits, refused, places > 0 ? lp.places + r0 : nullptr, r0, n));
    SEER_RETURN_IF_CUDA_ERROR(cuda::ArgMaxRows(logits, n, vocab, d_next + r0, stream_));
    for (int r = r0; r < r0 + n; ++r) {
      const SamplingParams& sp = seqs[r].sampler->params();
      if (sp.temperature <= 0.0) continue;
      const double u = seqs[r].sampler->NextUniform();
      SEER_RETURN_IF_CUDA_ERROR(cuda::SampleToken(logits + static_cast<size_t>(r - r0) * vocab, vocab, sp.temperature,
                                                  sp.top_k > 0 ? sp.top_k : 0, sp.top_p, sp.min_p, u,
                                                  sample_scratch_.get(), sample_scratch_.bytes(), d_next + r, stream_));
    }
    if (places > 0) {
      SEER_RETURN_IF_ERROR(
          ChosenLogprobs(logits, adjusted, offsets, r0, n, lp.places + r0, d_next + r0, top_n, lp, refused));
    }
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(h_next, d_next, sizeof(int32_t) * B, cudaMemcpyDeviceToHost, stream_));
  if (places > 0) {
    logprob_host_.resize(static_cast<size_t>(places) * (1 + top_n));
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logprob_host_.data(), lp.entries,
                                              sizeof(cuda::DeviceLogprob) * logprob_host_.size(),
                                              cudaMemcpyDeviceToHost, stream_));
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_));
  for (int r = 0; r < B; ++r) {
    next[r] = h_next[r];
    seqs[r].cache->set_length(h_pos[r] + 1);
    seqs[r].sampler->Record(next[r]);
    if (logprob_place[r] >= 0) {
      seqs[r].sampler->SetLastLogprobs(HostLogprobs(logprob_place[r], top_n, seqs[r].sampler->params().logprobs));
    }
  }
  return OkStatus();
}

Status CudaEngine::RunDecodeLayers(int batch, int splits, const std::function<Status()>& launch) {
  DecodeGraph& g = graph_;
  const bool captured = g.exec != nullptr && g.batch == batch && g.splits == splits;
  const bool repeated = g.last_batch == batch && g.last_splits == splits;
  g.last_batch = batch;
  g.last_splits = splits;
  if (!g.enabled || (!captured && !repeated)) return launch();
  if (!captured) CaptureDecodeLayers(batch, splits, launch);
  if (!g.enabled) return launch();
  SEER_RETURN_IF_CUDA_ERROR(cudaGraphLaunch(g.exec, stream_));
  return OkStatus();
}

void CudaEngine::CaptureDecodeLayers(int batch, int splits, const std::function<Status()>& launch) {
  DecodeGraph& g = graph_;
  std::string why;
  cudaGraph_t graph = nullptr;
  // Thread-local: other threads' CUDA calls (page-ins, transfers) go on.
  cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
  if (e == cudaSuccess) {
    // The capture ends on every way out of `launch`, an exception included:
    // a stream left capturing would refuse all later work.
    struct EndCapture {
      cudaStream_t stream;
      cudaGraph_t* graph;
      cudaError_t* result;
      ~EndCapture() { *result = cudaStreamEndCapture(stream, graph); }
    };
    Status recorded;
    {
      EndCapture end{stream_, &graph, &e};
      recorded = launch();
    }
    if (!recorded.ok()) why = recorded.ToString();
  }
  if (why.empty() && e != cudaSuccess) why = cudaGetErrorString(e);
  if (why.empty() && g.exec != nullptr) {
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(g.exec, graph, &info) != cudaSuccess) {
      cudaGetLastError();
      cudaGraphExecDestroy(g.exec);
      g.exec = nullptr;
    }
  }
  if (why.empty() && g.exec == nullptr) {
    e = cudaGraphInstantiate(&g.exec, graph, 0);
    if (e != cudaSuccess) {
      g.exec = nullptr;
      why = cudaGetErrorString(e);
    }
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (why.empty()) {
    g.batch = batch;
    g.splits = splits;
    return;
  }
  cudaGetLastError();
  if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
  g = DecodeGraph{};
  std::fprintf(stderr, "seer: batched decode runs without CUDA graphs: capturing a step failed: %s\n", why.c_str());
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

namespace {

// Makes the device `options.device` names ("cuda", "cuda:N"; "auto" is
// device 0) current, so that the engine and every buffer it makes live there.
Status SelectDevice(const EngineOptions& options) {
  int index = 0;
  if (options.device != "auto") {
    SEER_ASSIGN_OR_RETURN(index, ParseCudaDeviceIndex(options.device));
  }
  int count = 0;
  SEER_RETURN_IF_CUDA_ERROR(cudaGetDeviceCount(&count));
  if (index >= count) {
    return InvalidArgument("--device " + options.device + ": only " + Str(count) + " CUDA device" +
                           (count == 1 ? " is" : "s are") + " visible (cuda:0" +
                           (count > 1 ? " to cuda:" + Str(count - 1) : std::string()) + ")");
  }
  SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(index));
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> CreateCudaEngine(const EngineOptions& options) {
  if (!CudaDeviceAvailable()) {
    return FailedPrecondition("--device cuda: no CUDA device is visible (use --device cpu)");
  }
  SEER_RETURN_IF_ERROR(SelectDevice(options));
  SEER_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(options.model_dir));
  SEER_ASSIGN_OR_RETURN(ModelWeightViews views, BindModelWeights(*ckpt));
  std::unique_ptr<GateWeights> gates;
  if (!options.gates_dir.empty()) {
    SEER_ASSIGN_OR_RETURN(GateWeights g, LoadGates(options.gates_dir, ckpt->config()));
    gates = std::make_unique<GateWeights>(std::move(g));
  }
  const GateShape shape = GateShapeOf(gates.get());
  auto engine = std::make_unique<CudaEngine>(ckpt->config(), ckpt->fingerprint(), std::move(gates), shape);
  SEER_RETURN_IF_ERROR(engine->Init(options.gemm_tuning, options.chunk_limits));
  const bool tied = views.lm_head.data == nullptr || views.lm_head.data == views.embed_tokens.data;
  SEER_RETURN_IF_ERROR(CheckWeightsFit(engine->config(), shape, tied));
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w,
                        UploadModelWeights(engine->config(), views, engine->gates(), engine->stream()));
  engine->SetWeights(std::move(w));
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
  SEER_RETURN_IF_ERROR(engine->Init(/*gemm_tuning=*/true, options.chunk_limits));
  SEER_RETURN_IF_ERROR(CheckWeightsFit(config, shape, config.tie_word_embeddings));
  SEER_ASSIGN_OR_RETURN(DeviceModelWeights w, RandomModelWeights(config, shape, options.seed, engine->stream()));
  engine->SetWeights(std::move(w));
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace seer
