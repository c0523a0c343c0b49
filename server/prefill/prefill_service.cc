#include "server/prefill/prefill_service.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <numeric>
#include <span>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "kernels/sampling/sampler.h"
#include "rpc/grpc_status.h"
#include "rpc/kv_chunk_codec.h"
#include "rpc/kv_chunk_source.h"
#include "rpc/kv_wire.h"
#include "server/common/logging.h"
#include "server/common/stream_reactor.h"
#include "server/prefill/layer_dispatcher.h"

#ifdef SEER_HAVE_NCCL
#include <cuda_runtime.h>

#include "engine/cuda/device_kv_cache.h"
#include "rpc/nccl/nccl_kv_link.h"
#include "rpc/nccl/nccl_link_registry.h"
#endif

namespace seer {

static_assert(kKvPrefixBlock == kPrefixBlock, "kv_from_token's unit is the prefix store's block");

// The NCCL links of this prefill process, by decode_instance.
struct PrefillService::NcclLinks {
#ifdef SEER_HAVE_NCCL
  NcclLinkRegistry registry;
#endif
  SerialExecutor executor;  // the layer dispatchers' callbacks
};

namespace {

constexpr const char kPrefillMethod[] = "/seer.v1.PrefillService/Prefill";
constexpr const char kKvStreamMethod[] = "/seer.v1.PrefillService/KvStream";
constexpr const char kLegacyPrefillMethod[] = "/seer.v1.Prefill/Prefill";
constexpr const char kLegacyKvStreamMethod[] = "/seer.v1.Prefill/KvStream";

// Field numbers of PrefillResponse's events, as FirstFieldNumber reads them.
constexpr int kChunkField = 2, kSummaryField = 3;

// Bytes a request's summary may take: the last logits and the rest.
size_t SummaryBytes(int vocab_size) { return static_cast<size_t>(vocab_size) * sizeof(float) + 4096; }
constexpr size_t kHeaderBytes = 256;
constexpr size_t kMarkerBytes = 16;

std::string Mib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

std::string RandomHex(int bytes) {
  std::random_device rd;
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < bytes; ++i) {
    const unsigned b = rd() & 0xff;
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

uint64_t RandomId() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  uint64_t v = 0;
  while (v == 0) v = rng();
  return v;
}

// A KV cache, with the share of the budget it takes and its bytes on
// seer_kv_cache_bytes. The bytes go back when the last holder of the cache
// (the worker, a transfer, or a chunk still queued to be made) lets it go.
// The share goes back when, besides, no chunk handed to gRPC still holds the
// cache's memory: a CPU chunk holds its layer, not the cache, and `share`
// (docs/KV_TRANSPORT.md, section 4).
//
// `keep`, when set before the last holder lets go, takes the cache instead
// of freeing it (the prefix store's insertion); the budget's share and the
// gauge go back either way.
using KeepCache = std::function<void(std::unique_ptr<KvCache>)>;
struct ChargedCache {
  std::shared_ptr<KvCache> cache;
  std::shared_ptr<const void> share;
  KeepCache* keep = nullptr;  // valid while `cache` is held
};

ChargedCache Charge(std::unique_ptr<KvCache> cache, ByteBudget::Reservation charge, prometheus::Gauge* cache_bytes) {
  struct Holder {
    ~Holder() {
      if (keep) keep(std::move(cache));
    }
    std::shared_ptr<const void> share;  // let go after the cache is freed
    std::unique_ptr<GaugeHold> counted;
    std::unique_ptr<KvCache> cache;
    KeepCache keep;
  };
  auto share = std::make_shared<ByteBudget::Reservation>(std::move(charge));
  auto counted = std::make_unique<GaugeHold>(cache_bytes, CacheBytes(*cache));
  auto holder = std::make_shared<Holder>(share, std::move(counted), std::move(cache), nullptr);
  KvCache* raw = holder->cache.get();
  KeepCache* keep = &holder->keep;
  return {std::shared_ptr<KvCache>(std::move(holder), raw), std::move(share), keep};
}

std::unique_ptr<grpc::ByteBuffer> Encoded(const v1::PrefillResponse& msg) {
  StatusOr<grpc::ByteBuffer> b = EncodeMessage(msg);
  return b.ok() ? std::make_unique<grpc::ByteBuffer>(std::move(*b)) : nullptr;
}

}  // namespace

// A gRPC transfer: its layers (shared out among its streams), where its
// chunks come from, and what its streams queued and wrote.
// The prefix store and its gauges. Shared with the caches on their way to
// it, which may let go after the service.
struct PrefixStoreState {
  PrefixStoreState(int64_t max_bytes, int block, PrefillMetrics* metrics) : store(max_bytes, block), metrics(metrics) {}

  PrefixStore::Hit Lookup(std::span<const int32_t> ids, const SparsityConfig& sparsity) {
    return store.Lookup(ids, sparsity);
  }
  // A finished request's cache, as its last holder lets go.
  void Keep(std::vector<int32_t> ids, const SparsityConfig& sparsity, std::unique_ptr<KvCache> cache) noexcept {
    try {  // in a destructor: a cache that cannot be kept is freed
      const double bytes = CacheBytes(*cache);
      store.Insert(std::move(ids), sparsity, std::shared_ptr<const KvCache>(std::move(cache)),
                   static_cast<int64_t>(bytes));
      Report();
    } catch (const std::exception&) {}
  }
  bool EvictOldest() {
    const bool evicted = store.EvictOldest();
    Report();
    return evicted;
  }
  void Report() {
    std::lock_guard<std::mutex> lock(mu);
    metrics->prefix_bytes.Set(static_cast<double>(store.bytes()));
    metrics->prefix_entries.Set(store.entries());
    const int64_t evictions = store.evictions();
    metrics->prefix_evictions.Increment(static_cast<double>(evictions - reported_evictions));
    reported_evictions = evictions;
  }

  PrefixStore store;
  PrefillMetrics* const metrics;
  std::mutex mu;
  int64_t reported_evictions = 0;
};

struct GrpcKvTransfer {
  GrpcKvTransfer(int num_layers, int streams, SerialExecutor* executor, int first, int seq_len, int tokens_per_chunk,
                 bool fp8)
      : dispatcher(num_layers, streams, executor),
        first(first),
        seq_len(seq_len),
        tokens_per_chunk(tokens_per_chunk),
        fp8(fp8) {}

  LayerDispatcher dispatcher;
  const int first;  // each layer's chunks cover [first, seq_len)
  const int seq_len;
  const int tokens_per_chunk;
  const bool fp8;
  uint64_t id = 0;  // transfer_id, with more than one stream
  // Set before the first layer is ready; let go when a stream of the
  // transfer is cancelled, so that the cache is freed then, not when the
  // last stuck write ends (a chunk in gRPC's hands holds only its layer).
  std::shared_ptr<KvChunkSource> Source() const {
    std::lock_guard<std::mutex> lock(source_mu);
    return source;
  }
  void SetSource(std::shared_ptr<KvChunkSource> s) {
    std::lock_guard<std::mutex> lock(source_mu);
    source = std::move(s);
  }
  void DropSource() {
    std::shared_ptr<KvChunkSource> gone;  // freed outside the lock
    {
      std::lock_guard<std::mutex> lock(source_mu);
      gone = std::move(source);
    }
  }
  mutable std::mutex source_mu;
  std::shared_ptr<KvChunkSource> source;

  // What the streams queued: every chunk of a layer taken is queued.
  std::atomic<int64_t> kv_bytes{0};  // K and V (fp8: codes)
  std::atomic<int64_t> bytes{0};  // and the fp8 scales
  std::atomic<int32_t> chunks{0};

  // The chunks of `layer`, in token order, as recipes a stream queues with
  // SendDeferred (made when their turn to be written comes), each with its
  // K and V bytes.
  std::vector<std::pair<StreamReactor<grpc::ByteBuffer>::Deferred, size_t>> LayerChunks(
      const std::shared_ptr<GrpcKvTransfer>& self, int layer) {
    std::vector<std::pair<StreamReactor<grpc::ByteBuffer>::Deferred, size_t>> out;
    const std::shared_ptr<KvChunkSource> src = Source();
    if (src == nullptr) return out;  // cancelled
    for (int t0 = first; t0 < seq_len; t0 += tokens_per_chunk) {
      const int n = std::min(tokens_per_chunk, seq_len - t0);
      const size_t kv = src->KvBytes(n);
      kv_bytes += static_cast<int64_t>(kv);
      bytes += static_cast<int64_t>(kv + src->ScaleBytes(n));
      ++chunks;
      out.emplace_back(
          [self, layer, t0, n]() -> StatusOr<std::unique_ptr<grpc::ByteBuffer>> {
            const std::shared_ptr<KvChunkSource> source = self->Source();
            if (source == nullptr) return seer::Cancelled("the KV transfer was cancelled");
            SEER_ASSIGN_OR_RETURN(grpc::ByteBuffer b, source->Make(layer, t0, n));
            return std::make_unique<grpc::ByteBuffer>(std::move(b));
          },
          kv);
    }
    return out;
  }

  // Chunk writes on every stream: the first started, the last done.
  void WriteStarted() {
    std::lock_guard<std::mutex> lock(mu);
    if (!first_write) first_write = Clock::now();
  }
  void WriteDone() {
    std::lock_guard<std::mutex> lock(mu);
    last_write = Clock::now();
  }
  double write_seconds() {
    std::lock_guard<std::mutex> lock(mu);
    return first_write && last_write ? SecondsBetween(*first_write, *last_write) : 0.0;
  }

 private:
  std::mutex mu;
  std::optional<Clock::time_point> first_write, last_write;
};

// One Prefill call (stream 0 of its transfer). The layout header goes out on
// admission (or, when NCCL may carry the KV, at the start of its engine
// turn, where the link's transfer sequence is taken in engine order; then
// initial metadata go out on admission). The worker runs the engine into the
// request's KV cache; each finished layer is handed to the transfer:
//   - gRPC: the layer dispatcher, from which this stream and the KvStream
//     calls take layers as they become free, queueing each chunk as a
//     recipe made when its turn to be written comes (so the cache is the
//     stream's buffer and the compute never waits on the network). The
//     summary goes once every layer is written on every stream.
//   - NCCL: the link's sends, then a KvLayerSent marker; the summary once the
//     sends have completed.
class PrefillStream final : public StreamReactor<grpc::ByteBuffer> {
 public:
  PrefillStream(PrefillService* service, grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw)
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
    v1::PrefillRequest request;
    if (raw == nullptr || !DecodeMessage(*raw, &request).ok()) {
      FinishNow(UnparsedRequestStatus(kPrefillMethod));
      return;
    }
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
    options_.prompt_logprobs = call->prompt_logprobs;
    // The caller's K/V of a prefix stands for this prompt's only when it was
    // selected as this prompt's would be: the same rule, reusable, counted
    // in the same gate blocks, by the same gates.
    const bool gated = options_.sparsity.mode != SparsityMode::kDense;
    if (call->kv_from_token > 0 && PrefixMayBeReused(options_.sparsity) &&
        call->kv_from_block_size == service->block_size_ &&
        (!gated || call->kv_from_gates_fingerprint == service->gates_fingerprint_) &&
        PrefixStoreKey(call->kv_from_sparsity) == PrefixStoreKey(options_.sparsity)) {
      kv_first_ = call->kv_from_token;
    }
    chunk_bytes_ = call->max_chunk_bytes != 0 ? call->max_chunk_bytes : service->options_.chunk_bytes;
    StatusOr<int> per_chunk = TokensPerChunk(service->layout_, chunk_bytes_);
    if (!per_chunk.ok()) {
      FinishNow(ToGrpcStatus(per_chunk.status().WithContext("max_chunk_bytes")));
      return;
    }
    tokens_per_chunk_ = *per_chunk;
    ids_ = std::move(call->ids);
    request_id_ = call->request_id.empty() ? "prefill-" + std::to_string(service->next_request_number_.fetch_add(1))
                                           : std::move(call->request_id);
    // A caller that offers no transport and asks no encoding gets the
    // stream it always got, byte for byte.
    legacy_ = !request.has_transport_offer() && call->kv_wire == v1::KV_WIRE_UNSPECIFIED;
    *offer_.mutable_transport_offer() = call->transport_offer;
    offer_.set_kv_wire(call->kv_wire);

    // What this stream may hold for its client: its KV cache, the chunk
    // messages made ahead of the network, the header and the summary.
    const KvLayout& layout = service->layout_;
    const int seq_len = static_cast<int>(ids_.size());
    const int64_t kv_bytes = 2 * static_cast<int64_t>(layout.num_layers) * layout.LayerBytes(seq_len);
    const int64_t messages = std::min<int64_t>(service->options_.stream_buffer_bytes + 2 * chunk_bytes_, kv_bytes);
    // The summary carries the prompt's logprobs when asked: at most 16
    // bytes an entry on the wire (an id and a float, framed), 1 + n entries
    // a position after the first.
    const int64_t prompt_logprob_bytes =
        options_.prompt_logprobs < 0 ? 0 : int64_t{seq_len - 1} * (16 * (1 + options_.prompt_logprobs) + 8);
    const int64_t need = kv_bytes + messages + prompt_logprob_bytes +
                         static_cast<int64_t>(kHeaderBytes + SummaryBytes(engine->config().vocab_size));
    ByteBudget& budget = service->budget_;
    if (need > budget.limit()) {
      FinishNow(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          "seer-prefill: this request needs " + Mib(need) + " for its KV cache (" + Mib(kv_bytes) + ")" +
              (prompt_logprob_bytes > 0 ? ", its prompt logprobs (" + Mib(prompt_logprob_bytes) + ")" : std::string()) +
              " and messages, more than --max-buffered-bytes " + std::to_string(budget.limit()) + " (" +
              Mib(budget.limit()) + ") allows"));
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

    // NCCL needs the engine's order for the link's transfer sequence: the
    // header waits for the turn. Otherwise the transport is chosen now.
    header_in_turn_ = offer_.transport_offer().has_nccl() && service->caps_.nccl;
    std::unique_ptr<grpc::ByteBuffer> header;
    if (!header_in_turn_) {
      KvTransportChoice choice = ChooseKvTransport(offer_, service->caps_, KvLinkLookup{});
      header = HeaderFor(&choice, nullptr);
    }
    metrics_->inflight.Increment();
    admitted_ = true;
    if (header_in_turn_) this->StartSendInitialMetadata();  // the client's first byte: it was admitted
    if (!Admit(&service->queue_, std::move(*charge), std::move(header), kHeaderBytes)) {
      cache_charge_.Release();
      EndTransfer(seer::Cancelled("the queue is full"));
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
    // On success the stream's end is arranged inside; FinishWork is the last
    // thing that touches the stream either way.
    const grpc::Status failed = ComputeAndSend();
    if (!failed.ok()) {
      EndTransfer(FromGrpcStatus(failed));
      FinishWork(failed);
    }
  }

 private:
  // Hands each finished layer to the transfer.
  class LayerSender final : public PrefillObserver {
   public:
    explicit LayerSender(PrefillStream* stream) : stream_(stream) {}
    Status OnLayerDone(const LayerDone& done) override {
      ++layers_;
      return stream_->SendLayer(done);
    }
    int layers() const { return layers_; }

   private:
    PrefillStream* stream_;
    int layers_ = 0;
  };

  // The header for `choice` (its fallback reason kept for the summary), and
  // the gRPC transfer it announces. `setup`: a link this request sets up.
  std::unique_ptr<grpc::ByteBuffer> HeaderFor(KvTransportChoice* choice, const v1::NcclLinkSetup* setup,
                                              uint64_t nccl_seq = 0) {
    const KvLayout& layout = service_->layout_;
    const int seq_len = static_cast<int>(ids_.size());
    v1::PrefillResponse msg;
    v1::LayoutHeader* h = msg.mutable_header();
    *h = MakeLayoutHeader(layout, engine_->fingerprint(), service_->block_size_, seq_len, engine_->config().vocab_size);
    h->set_request_id(request_id_);
    h->set_device(engine_->device_name());
    h->set_kv_first_token(kv_first_);
    nccl_ = choice->transport == v1::KV_TRANSPORT_NCCL;
    if (!nccl_) {
      // Streams for the bytes there are to spread, a layer at least each.
      const int64_t kv_bytes = 2 * static_cast<int64_t>(layout.num_layers) * layout.LayerBytes(seq_len - kv_first_);
      const int64_t per_stream = service_->options_.kv_min_stream_bytes;
      int64_t worth = per_stream > 0 ? std::max<int64_t>(1, kv_bytes / per_stream) : kMaxKvGrpcStreams;
      worth = std::min<int64_t>(worth, layout.num_layers);
      choice->grpc_streams = static_cast<int>(std::min<int64_t>(choice->grpc_streams, worth));
      bool fp8 = choice->wire == v1::KV_WIRE_FP8_E4M3;
      int tokens = tokens_per_chunk_;
      if (fp8) {
        StatusOr<int> per_chunk = TokensPerWireChunk(layout, true, chunk_bytes_);
        if (per_chunk.ok()) {
          tokens = *per_chunk;
        } else {
          fp8 = false;
          choice->wire = v1::KV_WIRE_UNSPECIFIED;
          const bool head_dim = layout.head_dim % 4 != 0;
          choice->fallback_reason +=
              std::string(choice->fallback_reason.empty() ? "" : "; ") + "fp8: " +
              (head_dim ? std::string(per_chunk.status().message())
                        : "max_chunk_bytes " + std::to_string(chunk_bytes_) + " is too small for one 64-token block");
          choice->fp8_fallback = head_dim ? "head_dim" : "chunk_bytes";
        }
      }
      grpc_ = std::make_shared<GrpcKvTransfer>(layout.num_layers, choice->grpc_streams, &service_->nccl_->executor,
                                               kv_first_, seq_len, tokens, fp8);
      if (choice->grpc_streams > 1) grpc_->id = service_->AddTransfer(grpc_);
      // Stream 0 takes a layer when at most one chunk of its own is unwritten.
      own_threshold_ = static_cast<int64_t>(KvWireBytes(layout, KvWireFormat{layout.dtype, fp8, 64}, tokens)) * 2;
    }
    if (!legacy_) {
      h->set_gates_fingerprint(service_->gates_fingerprint_);
      h->set_transport(nccl_ ? v1::KV_TRANSPORT_NCCL : v1::KV_TRANSPORT_GRPC);
      h->set_prefill_instance(service_->caps_.prefill_instance);
      h->set_grpc_streams(nccl_ ? 1 : choice->grpc_streams);
      if (nccl_) {
        h->set_nccl_link_id(choice->nccl_link);
        h->set_nccl_transfer_seq(nccl_seq);
      } else {
        if (grpc_->fp8) {
          h->set_kv_wire(v1::KV_WIRE_FP8_E4M3);
          h->set_kv_scale_block_tokens(kFp8ScaleBlockTokens);
        }
        h->set_transfer_id(grpc_->id);
      }
      if (setup != nullptr) *h->mutable_nccl_setup() = *setup;
    }
    fallback_reason_ = choice->fallback_reason;
    wire_label_ = KvWireLabel(service_->layout_.dtype, !nccl_ && grpc_->fp8);
    if (!choice->nccl_fallback.empty()) metrics_->kv_transport.Fallback("nccl", choice->nccl_fallback);
    if (!choice->fp8_fallback.empty()) metrics_->kv_transport.Fallback("fp8", choice->fp8_fallback);
    return Encoded(msg);
  }

  // In the engine turn, with NCCL offered: the link lookup, the choice, a
  // new link or the transfer on a ready one, and the header.
  grpc::Status ChooseInTurn(const std::shared_ptr<KvCache>& cache) {
    KvLinkLookup lookup;
    std::optional<v1::NcclLinkSetup> setup;
#ifdef SEER_HAVE_NCCL
    NcclLinkRegistry& links = service_->nccl_->registry;
    const v1::NcclOffer& n = offer_.transport_offer().nccl();
    std::optional<NcclLinkRegistry::Entry> link = links.Find(n.decode_instance());
    if (link) {
      bool listed = false;
      for (const v1::NcclLinkRef& r : n.links())
        listed = listed || (r.prefill_instance() == service_->caps_.prefill_instance && r.link_id() == link->id);
      if (link->link->ready() && listed) {
        lookup.ready_link = link->id;
      } else if (!link->link->ready() || SecondsSince(link->opened) < service_->options_.nccl_setup_seconds) {
        // Still joining here, or ready here but not yet found ready there.
        lookup.setting_up = true;
      }
    }
#endif
    KvTransportChoice choice = ChooseKvTransport(offer_, service_->caps_, lookup);
    uint64_t seq = 0;
#ifdef SEER_HAVE_NCCL
    if (choice.start_link) {
      StatusOr<v1::NcclLinkSetup> started = StartLink(n);
      if (started.ok()) {
        setup = std::move(*started);
      } else {
        choice.fallback_reason += "; setting up a link failed: " + started.status().ToString();
      }
    }
    if (choice.transport == v1::KV_TRANSPORT_NCCL) {
      auto* device = dynamic_cast<const DeviceKvCache*>(cache.get());
      StatusOr<std::unique_ptr<NcclKvLink::Transfer>> transfer =
          device != nullptr
              ? link->link->StartSend(device, static_cast<int>(ids_.size()), NcclKvSplit::kPerHead, kv_first_)
              : StatusOr<std::unique_ptr<NcclKvLink::Transfer>>(Internal("the engine's cache is not on a GPU"));
      if (transfer.ok()) {
        nccl_transfer_ = std::move(*transfer);
        seq = nccl_transfer_->seq();
        std::lock_guard<std::mutex> lock(link_mu_);
        nccl_link_ = link->link;
        nccl_peer_ = n.decode_instance();
        nccl_link_id_ = link->id;
      } else {
        // The link failed since it was found ready: this request goes over
        // gRPC, the next one sets up a new link.
        links.Drop(n.decode_instance(), link->id, transfer.status().message());
        choice.transport = v1::KV_TRANSPORT_GRPC;
        choice.nccl_link = 0;
        choice.grpc_streams =
            std::clamp(std::min(std::max(1, offer_.transport_offer().grpc_streams()), service_->caps_.max_grpc_streams),
                       1, kMaxKvGrpcStreams);
        choice.nccl_fallback = "link_failed";
        choice.fallback_reason += std::string(choice.fallback_reason.empty() ? "" : "; ") +
                                  "nccl: the link failed: " + transfer.status().message();
      }
    }
    service_->ReportLinks();
#else
    (void)cache;
#endif
    std::unique_ptr<grpc::ByteBuffer> header = HeaderFor(&choice, setup ? &*setup : nullptr, seq);
    if (header == nullptr) return grpc::Status(grpc::StatusCode::INTERNAL, "seer-prefill: encoding the header");
    if (!Send(std::move(header), kHeaderBytes)) return Cancelled();
    return grpc::Status::OK;
  }

#ifdef SEER_HAVE_NCCL
  // Rank 0 of a new link with the offering decode process; its unique id
  // goes in this request's header.
  StatusOr<v1::NcclLinkSetup> StartLink(const v1::NcclOffer& n) {
    SEER_ASSIGN_OR_RETURN(std::string unique_id, NewNcclUniqueId());
    NcclLinkOptions o;
    o.device = service_->device_;
    o.peer = "decode worker " + n.host() + " (" + n.gpu_uuid() + ")";
    o.peer_gpu_uuid = n.gpu_uuid();
    o.setup_timeout_seconds = service_->options_.nccl_setup_seconds;
    o.stall_timeout_seconds = service_->options_.nccl_stall_seconds;
    SEER_ASSIGN_OR_RETURN(std::shared_ptr<NcclKvLink> link, NcclKvLink::Open(NcclRole::kSender, unique_id, o));
    const uint64_t id = RandomId();
    service_->nccl_->registry.Put(n.decode_instance(), id, std::move(link));
    v1::NcclLinkSetup setup;
    setup.set_prefill_instance(service_->caps_.prefill_instance);
    setup.set_link_id(id);
    setup.set_unique_id(unique_id);
    setup.set_gpu_uuid(service_->caps_.gpu_uuid);
    setup.set_nccl_version(service_->caps_.nccl_version);
    return setup;
  }
#endif

  // The longest prefix of the prompt the store holds (engine/kv/
  // prefix_store.h), copied into the request's empty cache; cached_tokens_
  // says how much. A failed copy leaves the cache empty: the prefill
  // computes everything.
  // Whether dropping stored prompts could make room for what failed with
  // `status`: the device's memory (CUDA). The CPU engine's limits are fixed
  // shares of the host's memory, which stored prompts do not change; so
  // are the GPU's int32 block lists.
  bool EvictionMayHelp(const Status& status, PrefixStoreState* store) const {
    return store != nullptr && status.code() == StatusCode::kResourceExhausted &&
           engine_->device_memory().has_value() && status.message().find("int32") == std::string::npos;
  }

  void TakeStoredPrefix(PrefixStoreState& store, KvCache* cache) {
    if (options_.prompt_logprobs >= 0 || !PrefixMayBeReused(options_.sparsity)) {
      metrics_->prefix_not_reusable.Increment();
      return;
    }
    PrefixStore::Hit hit = store.Lookup(ids_, options_.sparsity);
    if (hit.tokens == 0) {
      metrics_->prefix_misses.Increment();
      return;
    }
    if (Status copied = engine_->CopyPrefix(*hit.cache, hit.tokens, cache); !copied.ok()) {
      JsonValue fields = JsonValue::Object();
      fields.Set("request_id", JsonValue::String(request_id_));
      fields.Set("tokens", JsonValue::Int(hit.tokens));
      fields.Set("error", JsonValue::String(copied.ToString()));
      LogEvent(LogLevel::kWarn, "stored prefix not copied; computing it", fields);
      metrics_->prefix_misses.Increment();
      return;
    }
    cached_tokens_ = hit.tokens;
    metrics_->prefix_hits.Increment();
    metrics_->prefix_hit_tokens.Increment(static_cast<double>(hit.tokens));
  }

  // The engine turn and what follows it. An error is the status to finish
  // with now; OK when the stream's end is arranged (its summary is queued,
  // or will be once every layer is written).
  grpc::Status ComputeAndSend() {
    if (cancelled()) {
      cache_charge_.Release();
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued");
    }
    const int seq_len = static_cast<int>(ids_.size());
    std::optional<StatusOr<PrefillResult>> ran;
    double prefill_seconds = 0.0;
    std::shared_ptr<KvCache> held;  // NCCL: the sends read the cache until Finish
    // The cache and the prefill in one turn on the engine: a request
    // cancelled while another held it allocates and computes nothing. The
    // turn never waits on the client: chunks not yet written wait in the
    // cache.
    PrefixStoreState* const store = service_->prefix_store_.get();
    const grpc::Status turn = engine_->Exclusive([&]() -> grpc::Status {
      if (cancelled()) return Cancelled();
      const Clock::time_point start = Clock::now();
      // With a prefix store, a prompt that a later one could continue from
      // is stored, a gated one with the gate keys that continuation needs;
      // and stored prompts give way when the device lacks the memory.
      const bool storable = store != nullptr && PrefixMayBeReused(options_.sparsity);
      const bool gate_keys = storable && options_.sparsity.mode != SparsityMode::kDense;
      StatusOr<std::unique_ptr<KvCache>> made = engine_->NewCache(seq_len, gate_keys);
      while (!made.ok() && EvictionMayHelp(made.status(), store) && store->EvictOldest()) {
        made = engine_->NewCache(seq_len, gate_keys);
      }
      if (!made.ok()) return ToGrpcStatus(made.status().WithContext("seer-prefill: KV cache"));
      ChargedCache charged =
          Charge(std::move(made).value(), std::move(cache_charge_), &metrics_->server.kv_cache_bytes);
      std::shared_ptr<KvCache> cache = std::move(charged.cache);
      if (store != nullptr) TakeStoredPrefix(*store, cache.get());
      if (header_in_turn_) {
        const grpc::Status chosen = ChooseInTurn(cache);
        if (!chosen.ok()) return chosen;
      }
      if (grpc_ != nullptr) {
        StatusOr<std::shared_ptr<KvChunkSource>> source = KvChunkSource::Create(cache, grpc_->fp8, charged.share);
        if (!source.ok()) return ToGrpcStatus(source.status().WithContext("seer-prefill"));
        grpc_->SetSource(std::move(source).value());
      } else {
        held = cache;
      }
      kv_started_ = true;
      metrics_->kv_transport.Started(KvTransportLabel(nccl_));
      LayerSender sender(this);
      ran.emplace(engine_->Prefill(ids_, options_, cache.get(), &sender));
      // Out of memory before any layer: stored prompts give way first.
      while (!ran->ok() && sender.layers() == 0 && EvictionMayHelp(ran->status(), store) && store->EvictOldest()) {
        ran.emplace(engine_->Prefill(ids_, options_, cache.get(), &sender));
      }
      prefill_seconds = SecondsSince(start);
      if (ran->ok() && storable) {
        // Once the transfer lets go of the cache, the store keeps it.
        *charged.keep = [state = service_->prefix_store_, ids = ids_,
                         sparsity = options_.sparsity](std::unique_ptr<KvCache> kept) mutable {
          state->Keep(std::move(ids), sparsity, std::move(kept));
        };
      }
      return grpc::Status::OK;
    });
    // Unless a transfer still reads it, the cache (and its share of the
    // budget) is free from here on.
    cache_charge_.Release();
    Status nccl_failure;
#ifdef SEER_HAVE_NCCL
    if (nccl_transfer_ != nullptr) {
      // A prefill that stopped early aborts the link here (the receiver has
      // posted every layer).
      StatusOr<NcclTransferStats> stats = nccl_transfer_->Finish();
      nccl_transfer_.reset();
      held.reset();
      {
        std::lock_guard<std::mutex> lock(link_mu_);
        nccl_link_ = nullptr;
      }
      if (stats.ok()) {
        nccl_stats_ = *stats;
        blocked_seconds_ += stats->waited_seconds;
      } else {
        service_->nccl_->registry.Drop(nccl_peer_, nccl_link_id_, stats.status().message());
        service_->ReportLinks();
        nccl_failure = stats.status();
      }
    }
#endif
    held.reset();
    if (!turn.ok()) return turn;
    StatusOr<PrefillResult>& result = *ran;
    if (!result.ok()) {
      if (cancelled()) return Cancelled();
      return ToGrpcStatus(result.status().WithContext("seer-prefill"));
    }
    if (!nccl_failure.ok()) return ToGrpcStatus(nccl_failure.WithContext("seer-prefill: the NCCL transfer"));
    if (result->logits.size() < static_cast<size_t>(engine_->config().vocab_size))
      return grpc::Status(grpc::StatusCode::INTERNAL, "seer-prefill: the engine returned no logits");

    metrics_->duration.Observe(prefill_seconds);
    metrics_->tokens.Increment(static_cast<double>(seq_len));
    for (size_t i = 0; i < result->layer_density.size(); ++i)
      metrics_->ObserveLayerDensity(static_cast<int>(i), result->layer_density[i]);

    v1::PrefillSummary* summary = summary_.mutable_summary();
    const int vocab = engine_->config().vocab_size;
    // The logits of the last position are the last row, whether the engine
    // returned one row or all of them.
    const float* last = result->logits.data() + result->logits.size() - static_cast<size_t>(vocab);
    summary->mutable_last_logits()->Assign(last, last + vocab);
    summary->set_first_token(ArgMax(std::span<const float>(last, static_cast<size_t>(vocab))));
    for (double d : result->layer_density) summary->add_layer_density(d);
    summary->set_overall_density(result->overall_density);
    for (const TokenLogprobs& lp : result->prompt_logprobs) {
      v1::TokenLogprobs* out = summary->add_prompt_logprobs();
      out->mutable_chosen()->set_token_id(lp.chosen.id);
      out->mutable_chosen()->set_logprob(lp.chosen.logprob);
      for (const TokenLogprob& t : lp.top) {
        v1::TokenLogprob* alt = out->add_top();
        alt->set_token_id(t.id);
        alt->set_logprob(t.logprob);
      }
    }
    summary->set_sparsity(SparsityToString(options_.sparsity));
    *summary->mutable_applied_sparsity() = AppliedSparsityToProto(options_.sparsity);
    summary->set_cached_tokens(cached_tokens_);
    v1::PrefillTimings* t = summary->mutable_timings();
    t->set_queue_seconds(queue_seconds_);
    t->set_prefill_seconds(prefill_seconds);
    for (double s : layer_seconds_) t->add_layer_seconds(s);

    if (nccl_) {
      summary->set_kv_bytes(nccl_stats_.bytes);
      summary->set_kv_chunks(0);
      t->set_kv_stream_seconds(nccl_stats_.seconds);
      FillTransfer(nccl_stats_.bytes, nccl_stats_.seconds);
      kv_bytes_ = nccl_stats_.bytes;
      kv_seconds_ = nccl_stats_.seconds;
      metrics_->kv_sent_bytes.Increment(static_cast<double>(nccl_stats_.bytes));
      std::unique_ptr<grpc::ByteBuffer> msg = Encoded(summary_);
      if (msg == nullptr) return grpc::Status(grpc::StatusCode::INTERNAL, "seer-prefill: encoding the summary");
      if (!Send(std::move(msg), SummaryBytes(vocab))) return Cancelled();
      FinishWork(grpc::Status::OK);
      return grpc::Status::OK;
    }
    // The summary goes once every stream has written its layers; the last
    // statement: the continuation may finish the stream at once.
    grpc_->dispatcher.WhenAllWritten([this](const Status& s) { AllWritten(s); });
    return grpc::Status::OK;
  }

  // gRPC: every layer is written on every stream (or the transfer failed).
  void AllWritten(const Status& status) {
    std::lock_guard<std::recursive_mutex> guard(guard_);
    if (grpc_->id != 0) service_->RemoveTransfer(grpc_->id);
    if (!status.ok()) {
      FinishWork(cancelled() ? Cancelled() : ToGrpcStatus(status));
      return;
    }
    v1::PrefillSummary* summary = summary_.mutable_summary();
    summary->set_kv_bytes(grpc_->kv_bytes.load());
    summary->set_kv_chunks(grpc_->chunks.load());
    kv_bytes_ = grpc_->bytes.load();
    // Seconds are set when the summary's turn to be written comes.
    FillTransfer(kv_bytes_, 0.0);
    std::unique_ptr<grpc::ByteBuffer> msg = Encoded(summary_);
    if (msg == nullptr) {
      FinishWork(grpc::Status(grpc::StatusCode::INTERNAL, "seer-prefill: encoding the summary"));
      return;
    }
    if (!Send(std::move(msg), SummaryBytes(engine_->config().vocab_size))) {
      FinishWork(Cancelled());
      return;
    }
    FinishWork(grpc::Status::OK);
  }

  void FillTransfer(int64_t bytes, double seconds) {
    if (legacy_) return;
    v1::KvTransferStats* x = summary_.mutable_summary()->mutable_transfer();
    x->set_transport(nccl_ ? v1::KV_TRANSPORT_NCCL : v1::KV_TRANSPORT_GRPC);
    x->set_kv_wire(!nccl_ && grpc_->fp8 ? v1::KV_WIRE_FP8_E4M3 : v1::KV_WIRE_UNSPECIFIED);
    x->set_grpc_streams(nccl_ ? 1 : grpc_->dispatcher.streams());
    x->set_bytes(bytes);
    x->set_seconds(seconds);
    x->set_blocked_seconds(blocked_seconds_);
    x->set_fallback_reason(fallback_reason_);
  }

  // The layer observer, on the engine's thread: the time spent here is time
  // the compute waited on the transport.
  Status SendLayer(const LayerDone& done) {
    const Clock::time_point start = Clock::now();
    layer_seconds_.push_back(done.seconds);
    Status status;
    if (nccl_) {
#ifdef SEER_HAVE_NCCL
      status = nccl_transfer_->SendLayer(done.layer);
      if (status.ok()) {
        v1::PrefillResponse marker;
        marker.mutable_layer_sent()->set_layer(done.layer);
        std::unique_ptr<grpc::ByteBuffer> msg = Encoded(marker);
        if (msg == nullptr || !Send(std::move(msg), kMarkerBytes))
          status = seer::Cancelled("the Prefill stream was cancelled or broke");
      }
#endif
    } else {
      grpc_->dispatcher.LayerReady(done.layer);
      FeedOwn();
      status = grpc_->dispatcher.failure();
    }
    if (status.ok() && cancelled()) status = seer::Cancelled("the Prefill stream was cancelled or broke");
    blocked_seconds_ += SecondsSince(start);
    return status;
  }

  // Takes layers for this stream while at most one of its chunks is
  // unwritten, and queues their chunks. A layer counts as written once
  // queued here: the summary comes after it on this stream.
  void FeedOwn() {
    std::lock_guard<std::recursive_mutex> guard(guard_);
    while (own_unwritten_.load() <= own_threshold_) {
      const int layer = grpc_->dispatcher.Take(0, nullptr);
      if (layer < 0) return;
      for (auto& [make, bytes] : grpc_->LayerChunks(grpc_, layer)) {
        own_unwritten_ += static_cast<int64_t>(bytes);
        if (!SendDeferred(std::move(make), bytes)) {
          grpc_->dispatcher.Fail(seer::Cancelled("the Prefill stream was cancelled or broke"));
          return;
        }
      }
      grpc_->dispatcher.Written();
    }
  }

  // The transfer ends without its summary.
  void EndTransfer(const Status& why) {
    if (grpc_ == nullptr) return;
    grpc_->dispatcher.Fail(why.ok() ? seer::Cancelled("the Prefill stream ended") : why);
    if (grpc_->id != 0) service_->RemoveTransfer(grpc_->id);
  }

  static grpc::Status Cancelled() {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the Prefill stream was cancelled or broke");
  }

  // Hooks: run one at a time, in write order.
  void BeforeWrite(grpc::ByteBuffer* msg) override {
    const int field = FirstFieldNumber(*msg);
    if (field == kChunkField && grpc_ != nullptr) grpc_->WriteStarted();
    if (field != kSummaryField || nccl_ || grpc_ == nullptr) return;
    // Every chunk of every stream is written: the transfer's time is known.
    const double seconds = grpc_->write_seconds();
    kv_seconds_ = seconds;
    summary_.mutable_summary()->mutable_timings()->set_kv_stream_seconds(seconds);
    if (!legacy_) summary_.mutable_summary()->mutable_transfer()->set_seconds(seconds);
    if (std::unique_ptr<grpc::ByteBuffer> again = Encoded(summary_)) *msg = *again;
  }

  void AfterWrite(const grpc::ByteBuffer& msg, size_t bytes) override {
    if (grpc_ == nullptr || FirstFieldNumber(msg) != kChunkField) return;
    metrics_->kv_sent_bytes.Increment(static_cast<double>(bytes));
    grpc_->WriteDone();
    own_unwritten_ -= static_cast<int64_t>(bytes);
    FeedOwn();
  }

  void OnStreamCancelled() override {
    std::lock_guard<std::recursive_mutex> guard(guard_);
    if (grpc_ != nullptr) {
      grpc_->dispatcher.Fail(seer::Cancelled("the Prefill stream was cancelled or broke"));
      grpc_->DropSource();
    }
#ifdef SEER_HAVE_NCCL
    std::lock_guard<std::mutex> lock(link_mu_);
    if (nccl_link_ != nullptr) nccl_link_->Abort("the Prefill stream to " + peer_ + " broke");
#endif
  }

  void OnWriteStall(double stall_seconds) override {
    metrics_->write_stalls.Increment();
    LogWriteStall(request_id_, peer_, stall_seconds, SecondsSince(arrived_));
  }

  void OnStreamDone(const grpc::Status& status) override {
    // Whoever still runs in this stream (a continuation, a feed) is done
    // before it goes.
    std::lock_guard<std::recursive_mutex> guard(guard_);
    if (!status.ok()) EndTransfer(FromGrpcStatus(status));
    metrics_->CountRequest(status.error_code());
    if (kv_seconds_ > 0) metrics_->kv_stream.Observe(kv_seconds_);
    if (kv_started_) {
      const char* transport = KvTransportLabel(nccl_);
      if (status.ok()) {
        metrics_->kv_transport.Finished(transport, wire_label_, kv_seconds_, static_cast<double>(kv_bytes_));
        metrics_->kv_transport.Blocked(transport, blocked_seconds_);
      } else {
        metrics_->kv_transport.Failed(transport, status.error_code() == grpc::StatusCode::CANCELLED ? "cancelled"
                                                 : status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
                                                     ? "timeout"
                                                     : "peer_lost");
      }
    }
    // The transfer (and through it the cache) goes before the stream counts
    // as ended; chunk bytes gRPC still holds keep the cache until released.
    grpc_.reset();
    if (admitted_) metrics_->inflight.Decrement();
  }

  PrefillService* const service_;
  PrefillMetrics* const metrics_;
  const std::string peer_;
  const Clock::time_point arrived_;
  Engine* engine_ = nullptr;
  bool admitted_ = false;
  // Held by everything that may run in this stream outside gRPC's
  // reactions (the worker's end, feeds, continuations); OnStreamDone waits
  // for it.
  std::recursive_mutex guard_;

  // Set in the constructor (or, for the transport, in the turn), then read.
  std::vector<int32_t> ids_;
  std::string request_id_;
  PrefillOptions options_;
  int tokens_per_chunk_ = 1;
  int kv_first_ = 0;  // the first position sent: the caller holds those before it (kv_from_token)
  int64_t chunk_bytes_ = 0;
  ByteBudget::Reservation cache_charge_;  // goes with the cache, or back
  bool legacy_ = false;
  v1::PrefillRequest offer_;  // the request's transport_offer and kv_wire
  bool header_in_turn_ = false;
  bool nccl_ = false;
  std::shared_ptr<GrpcKvTransfer> grpc_;
  std::string fallback_reason_, wire_label_;
  int64_t own_threshold_ = 0;
  std::atomic<int64_t> own_unwritten_{0};

  // Worker, then the continuation and the hooks (ordered by the reactor).
  double queue_seconds_ = 0.0;
  int cached_tokens_ = 0;  // positions taken from the prefix store
  std::vector<double> layer_seconds_;
  double blocked_seconds_ = 0.0;
  std::atomic<bool> kv_started_{false};
  v1::PrefillResponse summary_;
  int64_t kv_bytes_ = 0;
  double kv_seconds_ = 0.0;
#ifdef SEER_HAVE_NCCL
  std::unique_ptr<NcclKvLink::Transfer> nccl_transfer_;
  NcclTransferStats nccl_stats_;
  std::string nccl_peer_;
  uint64_t nccl_link_id_ = 0;
  std::mutex link_mu_;
  std::shared_ptr<NcclKvLink> nccl_link_;  // while a transfer is in flight
#else
  struct {
    int64_t bytes = 0;
    double seconds = 0.0;
  } nccl_stats_;
#endif
};

// A KvStream call: stream `index` of a transfer with several. It takes
// layers from the dispatcher as it becomes free and writes their chunks (made
// when their turn comes), then ends OK when every layer is taken. A layer it
// took and could not write fails the transfer.
class KvStreamWriter final : public StreamReactor<grpc::ByteBuffer> {
 public:
  KvStreamWriter(PrefillService* service, grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw)
      : StreamReactor(context, &service->watchdog_),
        service_(service),
        peer_(context->peer()),
        anchor_(std::make_shared<Anchor>()) {
    anchor_->writer = this;
    v1::KvStreamRequest request;
    if (raw == nullptr || !DecodeMessage(*raw, &request).ok()) {
      FinishNow(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                             "request: the message does not parse as a seer.v1.KvStreamRequest"));
      return;
    }
    transfer_ = service->FindTransfer(request.transfer_id());
    if (transfer_ == nullptr) {
      FinishNow(grpc::Status(grpc::StatusCode::NOT_FOUND,
                             "transfer_id: no KV transfer " + std::to_string(request.transfer_id()) +
                                 " on this server (the call reached another replica, or the transfer ended); its "
                                 "layers go over the other streams"));
      return;
    }
    if (Status attached = transfer_->dispatcher.Attach(request.index()); !attached.ok()) {
      FinishNow(ToGrpcStatus(attached));
      return;
    }
    index_ = request.index();
    if (!Admit(&service->kv_stream_queue_, ByteBudget::Reservation())) {
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "seer-prefill: too many KvStream calls"));
    }
  }

  void Run(double /*queue_seconds*/) override { Wake(anchor_); }

 private:
  // What a wake holds: the stream, until it ends.
  struct Anchor {
    std::recursive_mutex mu;
    KvStreamWriter* writer = nullptr;
  };

  static void Wake(const std::shared_ptr<Anchor>& anchor) {
    std::lock_guard<std::recursive_mutex> lock(anchor->mu);
    if (anchor->writer != nullptr) anchor->writer->Feed();
  }

  // Under the anchor's lock. Takes a layer when at most one chunk is
  // unwritten; finishes once no layer is left and everything is written, or
  // at once when the stream was cancelled.
  void Feed() {
    if (done_) return;
    if (cancelled()) {
      const int handed = transfer_->dispatcher.Leave(index_);
      if (!layers_.empty() || handed > 0)
        transfer_->dispatcher.Fail(Unavailable("KvStream " + std::to_string(index_) + " broke with " +
                                               std::to_string(layers_.size() + handed) + " layers not written"));
      done_ = true;
      FinishWork(grpc::Status(grpc::StatusCode::CANCELLED, "the KvStream call was cancelled or broke"));
      return;
    }
    while (!no_more_ && unwritten_ <= 1) {
      std::shared_ptr<Anchor> anchor = anchor_;
      const int layer = transfer_->dispatcher.Take(index_, [anchor] { Wake(anchor); });
      if (!serving_) {
        // Attached and waiting for (or writing) layers.
        serving_ = true;
        ++service_->attached_kv_streams_;
      }
      if (layer == LayerDispatcher::kWait) return;
      if (layer == LayerDispatcher::kNone) {
        no_more_ = true;
        break;
      }
      std::vector<std::pair<Deferred, size_t>> chunks = transfer_->LayerChunks(transfer_, layer);
      layers_.emplace_back(layer, static_cast<int>(chunks.size()));
      unwritten_ += static_cast<int>(chunks.size());
      for (auto& [make, bytes] : chunks) {
        if (!SendDeferred(std::move(make), bytes)) return;  // cancelled: OnStreamCancelled feeds again
      }
    }
    if (no_more_ && unwritten_ == 0) {
      // Everything this stream took is written. (A transfer that failed
      // elsewhere ends with an error on the Prefill call.)
      done_ = true;
      FinishWork(grpc::Status::OK);
    }
  }

  void BeforeWrite(grpc::ByteBuffer* /*msg*/) override { transfer_->WriteStarted(); }

  void AfterWrite(const grpc::ByteBuffer& /*msg*/, size_t bytes) override {
    service_->metrics_->kv_sent_bytes.Increment(static_cast<double>(bytes));
    transfer_->WriteDone();
    std::lock_guard<std::recursive_mutex> lock(anchor_->mu);
    --unwritten_;
    if (--layers_.front().second == 0) {
      layers_.pop_front();
      transfer_->dispatcher.Written();
    }
    Feed();
  }

  void OnStreamCancelled() override { Wake(anchor_); }

  // Counted and logged as a Prefill stream's stall is: a KvStream is a
  // stream of the same transfer.
  void OnWriteStall(double stall_seconds) override {
    service_->metrics_->write_stalls.Increment();
    LogWriteStall("kv-stream " + std::to_string(index_) + " of transfer " +
                      std::to_string(transfer_ != nullptr ? transfer_->id : 0),
                  peer_, stall_seconds, -1);
  }

  void OnStreamDone(const grpc::Status& /*status*/) override {
    std::lock_guard<std::recursive_mutex> lock(anchor_->mu);
    anchor_->writer = nullptr;
    if (serving_) --service_->attached_kv_streams_;
  }

  PrefillService* const service_;
  const std::string peer_;
  const std::shared_ptr<Anchor> anchor_;
  std::shared_ptr<GrpcKvTransfer> transfer_;
  int index_ = 0;
  // Under the anchor's lock.
  bool serving_ = false;
  bool done_ = false, no_more_ = false;
  int unwritten_ = 0;  // chunks queued, not yet written
  std::deque<std::pair<int, int>> layers_;  // (layer, chunks unwritten), in write order
};

PrefillService::PrefillService(const PrefillServiceOptions& options, PrefillMetrics* metrics)
    : options_(options),
      metrics_(metrics),
      budget_(options.max_buffered_bytes),
      watchdog_(options.write_stall_seconds),
      queue_(options.max_concurrent, options.max_queue),
      kv_stream_queue_(2, 100000),
      nccl_(std::make_unique<NcclLinks>()) {
  caps_.prefill_instance = RandomHex(16);
  caps_.max_grpc_streams = std::clamp(options.kv_grpc_streams, 1, kMaxKvGrpcStreams);
  caps_.allow_fp8 = options.allow_kv_fp8;
}

PrefillService::~PrefillService() { Shutdown(); }

Status PrefillService::CheckOptions(const PrefillServiceOptions& o) {
  if (o.max_concurrent < 1 || o.max_concurrent > 1024)
    return InvalidArgument("--max-concurrent: " + std::to_string(o.max_concurrent) + " is out of range [1, 1024]");
  if (o.max_queue < 0 || o.max_queue > 100000)
    return InvalidArgument("--max-queue: " + std::to_string(o.max_queue) + " is out of range [0, 100000]");
  if (o.chunk_bytes < kMinChunkBytes || o.chunk_bytes > kMaxChunkBytes)
    return InvalidArgument("--chunk-bytes: " + std::to_string(o.chunk_bytes) + " is out of range [" +
                           std::to_string(kMinChunkBytes) + ", " + std::to_string(kMaxChunkBytes) +
                           "] (the largest message a decode worker accepts)");
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
  if (o.kv_min_stream_bytes < 0) return InvalidArgument("kv_min_stream_bytes: must be >= 0");
  if (o.kv_grpc_streams < 1 || o.kv_grpc_streams > kMaxKvGrpcStreams)
    return InvalidArgument("--kv-grpc-streams: " + std::to_string(o.kv_grpc_streams) + " is out of range [1, " +
                           std::to_string(kMaxKvGrpcStreams) + "]");
  if (!(o.nccl_setup_seconds >= 1) || o.nccl_setup_seconds > 3600)
    return InvalidArgument("--kv-nccl-setup-seconds: " + std::to_string(o.nccl_setup_seconds) +
                           " is out of range [1, 3600]");
  if (!(o.nccl_stall_seconds >= 0.1) || o.nccl_stall_seconds > 3600)
    return InvalidArgument("--kv-nccl-stall-seconds: " + std::to_string(o.nccl_stall_seconds) +
                           " is out of range [0.1, 3600]");
  if (o.prefix_cache_bytes < 0)
    return InvalidArgument("--prefix-cache-bytes: " + std::to_string(o.prefix_cache_bytes) +
                           " is negative (0 turns the prefix store off)");
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
#ifdef SEER_HAVE_NCCL
  // NCCL sends from the CUDA engine's cache: its device and that GPU's id.
  if (const auto* device = dynamic_cast<const DeviceKvCache*>(probe->get())) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, device->k(0)) == cudaSuccess) {
      device_ = attr.device;
      if (StatusOr<std::string> uuid = CudaDeviceUuid(device_); uuid.ok()) {
        caps_.gpu_uuid = *uuid;
        caps_.nccl = options_.kv_nccl;
        caps_.nccl_version = NcclVersion();
      }
    }
    cudaGetLastError();
  }
#endif
  block_size_ = engine->gates() ? engine->gates()->config.block_size : 64;
  gates_fingerprint_ = engine->gates() ? GatesFingerprint(*engine->gates()) : 0;
  if (options_.prefix_cache_bytes > 0) {
    prefix_store_ =
        std::make_shared<PrefixStoreState>(options_.prefix_cache_bytes, std::lcm(kPrefixBlock, block_size_), metrics_);
  }
  limits_.vocab_size = config.vocab_size;
  limits_.max_positions = config.max_position_embeddings;
  limits_.max_prompt_tokens = options_.max_tokens > 0
                                  ? std::min<int64_t>(options_.max_tokens, config.max_position_embeddings)
                                  : config.max_position_embeddings;
  if (limits_.max_prompt_tokens < config.max_position_embeddings)
    limits_.max_prompt_source = "the server's --max-tokens";
  limits_.max_chunk_bytes = options_.chunk_bytes;
  metrics_->RegisterLayers(config.num_layers);
  engine_.store(engine, std::memory_order_release);
  return OkStatus();
}

void PrefillService::Shutdown() {
  queue_.Shutdown();
  kv_stream_queue_.Shutdown();
}

uint64_t PrefillService::AddTransfer(std::shared_ptr<GrpcKvTransfer> transfer) {
  std::lock_guard<std::mutex> lock(transfers_mu_);
  uint64_t id = RandomId();
  while (transfers_.count(id) != 0) id = RandomId();
  transfers_[id] = std::move(transfer);
  return id;
}

std::shared_ptr<GrpcKvTransfer> PrefillService::FindTransfer(uint64_t id) {
  std::lock_guard<std::mutex> lock(transfers_mu_);
  auto it = transfers_.find(id);
  return it == transfers_.end() ? nullptr : it->second;
}

void PrefillService::RemoveTransfer(uint64_t id) {
  std::shared_ptr<GrpcKvTransfer> gone;  // freed outside the lock
  std::lock_guard<std::mutex> lock(transfers_mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return;
  gone = std::move(it->second);
  transfers_.erase(it);
}

void PrefillService::ReportLinks() {
#ifdef SEER_HAVE_NCCL
  const NcclLinkRegistry::Counts c = nccl_->registry.counts();
  metrics_->kv_transport.links(false).Set(c.joining);
  metrics_->kv_transport.links(true).Set(c.ready);
#endif
}

std::vector<std::string> PrefillService::RawMethods() const {
  return {kPrefillMethod, kKvStreamMethod, kLegacyPrefillMethod, kLegacyKvStreamMethod};
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* LegacyPrefillService::Prefill(grpc::CallbackServerContext* context,
                                                                          const grpc::ByteBuffer* request) {
  return service_->Prefill(context, request);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* LegacyPrefillService::KvStream(grpc::CallbackServerContext* context,
                                                                           const grpc::ByteBuffer* request) {
  return service_->KvStream(context, request);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                                    const grpc::ByteBuffer* request) {
  return new PrefillStream(this, context, request);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* PrefillService::KvStream(grpc::CallbackServerContext* context,
                                                                     const grpc::ByteBuffer* request) {
  return new KvStreamWriter(this, context, request);
}

}  // namespace seer
