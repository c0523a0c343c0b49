#include "server/prefill/prefill_service.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "kernels/sampling/sampler.h"
#include "rpc/grpc_status.h"
#include "rpc/kv_wire.h"
#include "server/common/stream_reactor.h"

namespace seer {

// One Prefill call. The worker thread runs the engine; each finished layer is
// cut into KvChunk messages and handed to the reactor, which writes them one
// at a time while the engine goes on with the next layer.
class PrefillStream final : public StreamReactor<v1::PrefillResponse> {
 public:
  PrefillStream(PrefillService* service, const v1::PrefillRequest& request)
      : StreamReactor(static_cast<size_t>(service->options_.stream_buffer_bytes)),
        service_(service),
        metrics_(service->metrics_),
        arrived_(Clock::now()) {
    Engine* engine = service->engine_.load(std::memory_order_acquire);
    if (engine == nullptr) {
      FinishNow(grpc::Status(grpc::StatusCode::UNAVAILABLE, "seer-prefill: the model is still loading"));
      return;
    }
    engine_ = engine;
    StatusOr<PrefillCall> call = ParsePrefillRequest(request, service->limits_);
    if (!call.ok()) {
      FinishNow(ToGrpcStatus(call.status()));
      return;
    }
    const GateWeights* gates = engine->gates();
    StatusOr<SparsityConfig> sparsity = ResolveSparsity(call->sparsity, gates ? &gates->config.sparsity : nullptr);
    if (!sparsity.ok()) {
      FinishNow(ToGrpcStatus(sparsity.status().WithContext("sparsity.mode")));
      return;
    }
    options_.sparsity = *sparsity;
    const int64_t chunk_bytes = call->max_chunk_bytes != 0 ? call->max_chunk_bytes : service->options_.chunk_bytes;
    StatusOr<int> per_chunk = TokensPerChunk(service->layout_, chunk_bytes);
    if (!per_chunk.ok()) {
      FinishNow(ToGrpcStatus(per_chunk.status().WithContext("max_chunk_bytes")));
      return;
    }
    tokens_per_chunk_ = *per_chunk;
    ids_ = std::move(call->ids);
    request_id_ = call->request_id.empty() ? "prefill-" + std::to_string(service->next_request_number_.fetch_add(1))
                                           : std::move(call->request_id);
    const WorkQueue& q = service->queue_;
    const grpc::Status full(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "seer-prefill: the queue is full: " + std::to_string(q.workers()) + " running and " +
                                std::to_string(q.max_waiting()) + " waiting (--max-concurrent " +
                                std::to_string(q.workers()) + ", --max-queue " + std::to_string(q.max_waiting()) +
                                "); retry later or elsewhere");
    metrics_->inflight.Increment();
    admitted_ = true;
    Admit(&service->queue_, full);
  }

  void Run(double queue_seconds) override {
    metrics_->queue.Observe(queue_seconds);
    queue_seconds_ = queue_seconds;
    FinishWork(Prefill());
  }

 private:
  // Cuts each finished layer into chunks and sends them.
  class LayerSender final : public PrefillObserver {
   public:
    explicit LayerSender(PrefillStream* stream) : stream_(stream) {}
    Status OnLayerDone(const LayerDone& done) override { return stream_->SendLayer(done); }

   private:
    PrefillStream* stream_;
  };

  grpc::Status Prefill() {
    if (cancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued");
    const KvLayout& layout = service_->layout_;
    const int seq_len = static_cast<int>(ids_.size());
    auto header = std::make_unique<v1::PrefillResponse>();
    *header->mutable_header() = MakeLayoutHeader(layout, engine_->fingerprint(), service_->block_size_, seq_len,
                                                 engine_->config().vocab_size);
    header->mutable_header()->set_request_id(request_id_);
    header->mutable_header()->set_device(engine_->device_name());
    if (!Send(std::move(header), 64)) return Cancelled();

    std::unique_ptr<KvCache> cache;
    std::optional<GaugeHold> cache_counted;  // seer_kv_cache_bytes
    std::optional<StatusOr<PrefillResult>> ran;
    double prefill_seconds = 0.0;
    // The cache and the prefill in one turn on the engine: a request
    // cancelled while another held it allocates and computes nothing.
    const grpc::Status turn = engine_->Exclusive([&]() -> grpc::Status {
      if (cancelled()) return Cancelled();
      const Clock::time_point start = Clock::now();
      StatusOr<std::unique_ptr<KvCache>> made = engine_->NewCache(seq_len);
      if (!made.ok()) return ToGrpcStatus(made.status().WithContext("seer-prefill: KV cache"));
      cache = std::move(made).value();
      cache_counted.emplace(&metrics_->server.kv_cache_bytes, KvCacheBytes(cache->layout(), cache->capacity()));
      LayerSender sender(this);
      ran.emplace(engine_->Prefill(ids_, options_, cache.get(), &sender));
      prefill_seconds = SecondsSince(start);
      return grpc::Status::OK;
    });
    if (!turn.ok()) return turn;
    // The KV is all in the outbox or written: free the cache now rather than
    // after the last write.
    cache.reset();
    cache_counted.reset();
    StatusOr<PrefillResult>& result = *ran;
    if (!result.ok()) {
      if (cancelled()) return Cancelled();
      return ToGrpcStatus(result.status().WithContext("seer-prefill"));
    }
    if (result->logits.size() < static_cast<size_t>(engine_->config().vocab_size))
      return grpc::Status(grpc::StatusCode::INTERNAL, "seer-prefill: the engine returned no logits");

    metrics_->duration.Observe(prefill_seconds);
    metrics_->tokens.Increment(static_cast<double>(seq_len));
    for (size_t i = 0; i < result->layer_density.size(); ++i)
      metrics_->ObserveLayerDensity(static_cast<int>(i), result->layer_density[i]);

    auto msg = std::make_unique<v1::PrefillResponse>();
    v1::PrefillSummary* summary = msg->mutable_summary();
    const int vocab = engine_->config().vocab_size;
    // The logits of the last position are the last row, whether the engine
    // returned one row or all of them.
    const float* last = result->logits.data() + result->logits.size() - static_cast<size_t>(vocab);
    summary->mutable_last_logits()->Assign(last, last + vocab);
    summary->set_first_token(ArgMax(std::span<const float>(last, static_cast<size_t>(vocab))));
    for (double d : result->layer_density) summary->add_layer_density(d);
    summary->set_overall_density(result->overall_density);
    summary->set_kv_bytes(kv_bytes_queued_);
    summary->set_kv_chunks(kv_chunks_queued_);
    summary->set_sparsity(SparsityToString(options_.sparsity));
    v1::PrefillTimings* t = summary->mutable_timings();
    t->set_queue_seconds(queue_seconds_);
    t->set_prefill_seconds(prefill_seconds);
    for (double s : layer_seconds_) t->add_layer_seconds(s);
    const size_t bytes = static_cast<size_t>(vocab) * sizeof(float) + 256;
    if (!Send(std::move(msg), bytes)) return Cancelled();
    return grpc::Status::OK;
  }

  Status SendLayer(const LayerDone& done) {
    layer_seconds_.push_back(done.seconds);
    const KvLayout& layout = service_->layout_;
    for (int t0 = 0; t0 < done.seq_len; t0 += tokens_per_chunk_) {
      const int n = std::min(tokens_per_chunk_, done.seq_len - t0);
      const size_t bytes = layout.LayerBytes(n);
      auto msg = std::make_unique<v1::PrefillResponse>();
      v1::KvChunk* chunk = msg->mutable_chunk();
      chunk->set_layer(done.layer);
      chunk->set_token_start(t0);
      chunk->set_token_count(n);
      chunk->mutable_k()->resize(bytes);
      chunk->mutable_v()->resize(bytes);
      SEER_RETURN_IF_ERROR(
          done.cache->ReadLayer(done.layer, t0, n, chunk->mutable_k()->data(), chunk->mutable_v()->data()));
      kv_bytes_queued_ += static_cast<int64_t>(2 * bytes);
      ++kv_chunks_queued_;
      if (!Send(std::move(msg), 2 * bytes)) return seer::Cancelled("the Prefill stream was cancelled or broke");
    }
    return OkStatus();
  }

  static grpc::Status Cancelled() {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the Prefill stream was cancelled or broke");
  }

  // Hooks: run one at a time, in write order.
  void BeforeWrite(v1::PrefillResponse* msg) override {
    if (msg->has_chunk() && !first_chunk_start_) first_chunk_start_ = Clock::now();
    if (msg->has_summary() && first_chunk_start_ && last_chunk_written_)
      msg->mutable_summary()->mutable_timings()->set_kv_stream_seconds(
          std::chrono::duration<double>(*last_chunk_written_ - *first_chunk_start_).count());
  }

  void AfterWrite(const v1::PrefillResponse& msg, size_t /*bytes*/) override {
    if (!msg.has_chunk()) return;
    metrics_->kv_sent_bytes.Increment(static_cast<double>(msg.chunk().k().size() + msg.chunk().v().size()));
    last_chunk_written_ = Clock::now();
  }

  void OnStreamDone(const grpc::Status& status) override {
    metrics_->CountRequest(status.error_code());
    if (first_chunk_start_ && last_chunk_written_)
      metrics_->kv_stream.Observe(std::chrono::duration<double>(*last_chunk_written_ - *first_chunk_start_).count());
    if (admitted_) metrics_->inflight.Decrement();
  }

  PrefillService* const service_;
  PrefillMetrics* const metrics_;
  const Clock::time_point arrived_;
  Engine* engine_ = nullptr;
  bool admitted_ = false;

  // Set in the constructor, read by the worker.
  std::vector<int32_t> ids_;
  std::string request_id_;
  PrefillOptions options_;
  int tokens_per_chunk_ = 1;

  // Worker only.
  double queue_seconds_ = 0.0;
  std::vector<double> layer_seconds_;
  int64_t kv_bytes_queued_ = 0;
  int32_t kv_chunks_queued_ = 0;

  // Write hooks only.
  std::optional<Clock::time_point> first_chunk_start_;
  std::optional<Clock::time_point> last_chunk_written_;
};

PrefillService::PrefillService(const PrefillServiceOptions& options, PrefillMetrics* metrics)
    : options_(options), metrics_(metrics), queue_(options.max_concurrent, options.max_queue) {}

PrefillService::~PrefillService() { Shutdown(); }

Status PrefillService::CheckOptions(const PrefillServiceOptions& o) {
  if (o.max_concurrent < 1 || o.max_concurrent > 1024)
    return InvalidArgument("--max-concurrent: " + std::to_string(o.max_concurrent) + " is out of range [1, 1024]");
  if (o.max_queue < 0 || o.max_queue > 100000)
    return InvalidArgument("--max-queue: " + std::to_string(o.max_queue) + " is out of range [0, 100000]");
  if (o.chunk_bytes < kMinChunkBytes || o.chunk_bytes > (int64_t{1} << 30))
    return InvalidArgument("--chunk-bytes: " + std::to_string(o.chunk_bytes) + " is out of range [" +
                           std::to_string(kMinChunkBytes) + ", 1 GiB]");
  if (o.stream_buffer_bytes < o.chunk_bytes)
    return InvalidArgument("--stream-buffer-bytes: " + std::to_string(o.stream_buffer_bytes) +
                           " must be at least --chunk-bytes (" + std::to_string(o.chunk_bytes) + ")");
  if (o.max_tokens < 0) return InvalidArgument("--max-tokens: must be >= 0 (0: the model's limit)");
  return OkStatus();
}

Status PrefillService::SetEngine(Engine* engine) {
  const ModelConfig& config = engine->config();
  // The layout, element type included, as the engine's caches have it.
  StatusOr<std::unique_ptr<KvCache>> probe = engine->NewCache(1);
  if (!probe.ok()) return probe.status().WithContext("seer-prefill: probing the KV layout");
  layout_ = (*probe)->layout();
  if (!ToWireDtype(layout_.dtype))
    return Internal("seer-prefill: the engine's KV type " + std::string(DTypeName(layout_.dtype)) +
                    " has no wire encoding");
  SEER_RETURN_IF_ERROR(TokensPerChunk(layout_, options_.chunk_bytes).status().WithContext("--chunk-bytes"));
  block_size_ = engine->gates() ? engine->gates()->config.block_size : 64;
  limits_.vocab_size = config.vocab_size;
  limits_.max_positions = config.max_position_embeddings;
  limits_.max_prompt_tokens = options_.max_tokens > 0 ? std::min<int64_t>(options_.max_tokens, config.max_position_embeddings)
                                                      : config.max_position_embeddings;
  if (limits_.max_prompt_tokens < config.max_position_embeddings) limits_.max_prompt_source = "the server's --max-tokens";
  limits_.max_chunk_bytes = options_.chunk_bytes;
  metrics_->RegisterLayers(config.num_layers);
  engine_.store(engine, std::memory_order_release);
  return OkStatus();
}

void PrefillService::Shutdown() { queue_.Shutdown(); }

grpc::ServerWriteReactor<v1::PrefillResponse>* PrefillService::Prefill(grpc::CallbackServerContext* /*context*/,
                                                                       const v1::PrefillRequest* request) {
  return new PrefillStream(this, *request);
}

}  // namespace seer
