#include "server/prefill/prefill_service.h"

#include <algorithm>
#include <cstdio>
#include <memory>
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

namespace {

// Bytes a request's summary may take: the last logits and the rest.
size_t SummaryBytes(int vocab_size) { return static_cast<size_t>(vocab_size) * sizeof(float) + 4096; }
constexpr size_t kHeaderBytes = 256;

std::string Mib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// Tokens [t0, t0 + n) of `layer` as a KvChunk message.
StatusOr<std::unique_ptr<v1::PrefillResponse>> MakeChunk(const KvCache& cache, int layer, int t0, int n) {
  const size_t bytes = cache.layout().LayerBytes(n);
  auto msg = std::make_unique<v1::PrefillResponse>();
  v1::KvChunk* chunk = msg->mutable_chunk();
  chunk->set_layer(layer);
  chunk->set_token_start(t0);
  chunk->set_token_count(n);
  chunk->mutable_k()->resize(bytes);
  chunk->mutable_v()->resize(bytes);
  SEER_RETURN_IF_ERROR(cache.ReadLayer(layer, t0, n, chunk->mutable_k()->data(), chunk->mutable_v()->data())
                           .WithContext("seer-prefill: reading the KV cache"));
  return msg;
}

// A KV cache, the share of the budget it takes and its bytes on
// seer_kv_cache_bytes: the share and the bytes go back when the last holder
// (the worker, or a chunk still waiting to be written) lets the cache go.
std::shared_ptr<KvCache> ChargedCache(std::unique_ptr<KvCache> cache, ByteBudget::Reservation charge,
                                      prometheus::Gauge* cache_bytes) {
  struct Holder {
    ByteBudget::Reservation charge;  // released after the cache is freed
    std::unique_ptr<GaugeHold> counted;
    std::unique_ptr<KvCache> cache;
  };
  auto counted = std::make_unique<GaugeHold>(cache_bytes, KvCacheBytes(cache->layout(), cache->capacity()));
  auto holder = std::make_shared<Holder>(Holder{std::move(charge), std::move(counted), std::move(cache)});
  KvCache* raw = holder->cache.get();
  return std::shared_ptr<KvCache>(std::move(holder), raw);
}

}  // namespace

// One Prefill call. The layout header goes out on admission; the worker
// thread runs the engine into the request's KV cache, and each finished
// layer is cut into KvChunk messages that the reactor writes one at a time
// while the engine goes on with the next layer. While the client keeps up,
// chunks are copied out at once; when it lags, they wait in the cache and are
// copied out as their turn to be written comes, after the engine and the
// worker slot have gone to other requests.
class PrefillStream final : public StreamReactor<v1::PrefillResponse> {
 public:
  PrefillStream(PrefillService* service, grpc::CallbackServerContext* context, const v1::PrefillRequest& request)
      : StreamReactor(context, &service->watchdog_),
        service_(service),
        metrics_(service->metrics_),
        peer_(context->peer()),
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

    // What this stream may hold for its client: its KV cache, the chunk
    // messages copied ahead of the network (two more while waiting chunks
    // are copied out: the one in flight and the next), the header and the
    // summary.
    const KvLayout& layout = service->layout_;
    const int seq_len = static_cast<int>(ids_.size());
    const int64_t kv_bytes = 2 * static_cast<int64_t>(layout.num_layers) * layout.LayerBytes(seq_len);
    lookahead_bytes_ = static_cast<size_t>(service->options_.stream_buffer_bytes);
    const int64_t messages = std::min<int64_t>(service->options_.stream_buffer_bytes + 2 * chunk_bytes, kv_bytes);
    const int64_t need = kv_bytes + messages + static_cast<int64_t>(kHeaderBytes + SummaryBytes(engine->config().vocab_size));
    ByteBudget& budget = service->budget_;
    if (need > budget.limit()) {
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-prefill: this request needs " + Mib(need) + " for its KV cache (" + Mib(kv_bytes) +
                                 ") and messages, more than --max-buffered-bytes " + std::to_string(budget.limit()) +
                                 " (" + Mib(budget.limit()) + ") allows"));
      return;
    }
    std::optional<ByteBudget::Reservation> charge = budget.TryReserve(need);
    if (!charge) {
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-prefill: admitted streams hold " + Mib(budget.used()) + " of --max-buffered-bytes " +
                                 Mib(budget.limit()) + " (KV caches and messages their clients have not read yet); " +
                                 "this request needs " + Mib(need) + "; retry later or elsewhere"));
      return;
    }
    cache_charge_ = charge->Split(kv_bytes);

    auto header = std::make_unique<v1::PrefillResponse>();
    *header->mutable_header() = MakeLayoutHeader(layout, engine->fingerprint(), service->block_size_, seq_len,
                                                 engine->config().vocab_size);
    header->mutable_header()->set_request_id(request_id_);
    header->mutable_header()->set_device(engine->device_name());
    metrics_->inflight.Increment();
    admitted_ = true;
    if (!Admit(&service->queue_, std::move(*charge), std::move(header), kHeaderBytes)) {
      cache_charge_.Release();
      const WorkQueue& q = service->queue_;
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-prefill: the queue is full: " + std::to_string(q.workers()) + " running and " +
                                 std::to_string(q.max_waiting()) + " waiting (--max-concurrent " +
                                 std::to_string(q.workers()) + ", --max-queue " + std::to_string(q.max_waiting()) +
                                 "); retry later or elsewhere"));
    }
  }

  void Run(double queue_seconds) override {
    metrics_->queue.Observe(queue_seconds);
    queue_seconds_ = queue_seconds;
    FinishWork(Prefill());
  }

 private:
  // Cuts each finished layer into chunks and queues them.
  class LayerSender final : public PrefillObserver {
   public:
    LayerSender(PrefillStream* stream, std::shared_ptr<const KvCache> cache)
        : stream_(stream), cache_(std::move(cache)) {}
    Status OnLayerDone(const LayerDone& done) override { return stream_->SendLayer(done, cache_); }

   private:
    PrefillStream* stream_;
    std::shared_ptr<const KvCache> cache_;
  };

  grpc::Status Prefill() {
    if (cancelled()) {
      cache_charge_.Release();
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued");
    }
    const int seq_len = static_cast<int>(ids_.size());
    std::optional<StatusOr<PrefillResult>> ran;
    double prefill_seconds = 0.0;
    // The cache and the prefill in one turn on the engine: a request
    // cancelled while another held it allocates and computes nothing. The
    // turn never waits on the client: chunks it cannot copy out now wait in
    // the cache.
    const grpc::Status turn = engine_->Exclusive([&]() -> grpc::Status {
      if (cancelled()) return Cancelled();
      const Clock::time_point start = Clock::now();
      StatusOr<std::unique_ptr<KvCache>> made = engine_->NewCache(seq_len);
      if (!made.ok()) return ToGrpcStatus(made.status().WithContext("seer-prefill: KV cache"));
      std::shared_ptr<KvCache> cache =
          ChargedCache(std::move(made).value(), std::move(cache_charge_), &metrics_->server.kv_cache_bytes);
      LayerSender sender(this, cache);
      ran.emplace(engine_->Prefill(ids_, options_, cache.get(), &sender));
      prefill_seconds = SecondsSince(start);
      return grpc::Status::OK;
    });
    // Unless chunks wait in it, the cache (and its share of the budget) is
    // free from here on.
    cache_charge_.Release();
    if (!turn.ok()) return turn;
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
    if (!Send(std::move(msg), SummaryBytes(vocab))) return Cancelled();
    return grpc::Status::OK;
  }

  Status SendLayer(const LayerDone& done, const std::shared_ptr<const KvCache>& cache) {
    layer_seconds_.push_back(done.seconds);
    const KvLayout& layout = service_->layout_;
    for (int t0 = 0; t0 < done.seq_len; t0 += tokens_per_chunk_) {
      const int n = std::min(tokens_per_chunk_, done.seq_len - t0);
      const size_t bytes = 2 * layout.LayerBytes(n);
      const size_t buffered = buffered_bytes();
      bool queued = false;
      if (buffered == 0 || buffered + bytes <= lookahead_bytes_) {
        // The client keeps up: copy the chunk now, overlapping the next layer.
        SEER_ASSIGN_OR_RETURN(std::unique_ptr<v1::PrefillResponse> msg, MakeChunk(*done.cache, done.layer, t0, n));
        queued = Send(std::move(msg), bytes);
      } else {
        // The client lags: the chunk waits in the cache, which outlives the
        // engine's turn for as long as a chunk still needs it.
        queued = SendDeferred([cache, layer = done.layer, t0, n] { return MakeChunk(*cache, layer, t0, n); }, bytes);
      }
      if (!queued) return seer::Cancelled("the Prefill stream was cancelled or broke");
      kv_bytes_queued_ += static_cast<int64_t>(bytes);
      ++kv_chunks_queued_;
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

  void OnWriteStall(double stall_seconds) override {
    metrics_->write_stalls.Increment();
    std::fprintf(stderr,
                 "seer-prefill: request %s from %s: the client read nothing for %.3g s (--write-stall-seconds); "
                 "stream cancelled after %.1f s\n",
                 request_id_.c_str(), peer_.c_str(), stall_seconds, SecondsSince(arrived_));
  }

  void OnStreamDone(const grpc::Status& status) override {
    metrics_->CountRequest(status.error_code());
    if (first_chunk_start_ && last_chunk_written_)
      metrics_->kv_stream.Observe(std::chrono::duration<double>(*last_chunk_written_ - *first_chunk_start_).count());
    if (admitted_) metrics_->inflight.Decrement();
  }

  PrefillService* const service_;
  PrefillMetrics* const metrics_;
  const std::string peer_;
  const Clock::time_point arrived_;
  Engine* engine_ = nullptr;
  bool admitted_ = false;

  // Set in the constructor, read by the worker.
  std::vector<int32_t> ids_;
  std::string request_id_;
  PrefillOptions options_;
  int tokens_per_chunk_ = 1;
  size_t lookahead_bytes_ = 0;
  ByteBudget::Reservation cache_charge_;  // goes with the cache, or back

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
    : options_(options),
      metrics_(metrics),
      budget_(options.max_buffered_bytes),
      watchdog_(options.write_stall_seconds),
      queue_(options.max_concurrent, options.max_queue) {}

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
  if (o.max_buffered_bytes < o.stream_buffer_bytes)
    return InvalidArgument("--max-buffered-bytes: " + std::to_string(o.max_buffered_bytes) +
                           " must be at least --stream-buffer-bytes (" + std::to_string(o.stream_buffer_bytes) + ")");
  if (!(o.write_stall_seconds >= 0) || o.write_stall_seconds > 86400)
    return InvalidArgument("--write-stall-seconds: " + std::to_string(o.write_stall_seconds) +
                           " is out of range [0, 86400] (0: never)");
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

grpc::ServerWriteReactor<v1::PrefillResponse>* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                                       const v1::PrefillRequest* request) {
  return new PrefillStream(this, context, *request);
}

}  // namespace seer
