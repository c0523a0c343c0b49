#include "server/decode/decode_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/sampling/sampler.h"
#include "rpc/grpc_status.h"
#include "server/common/stream_reactor.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// What a queued token takes: the message on the heap and its outbox entry.
constexpr size_t kTokenMessageBytes = 128;
constexpr size_t kSummaryBytes = 4096;

std::string Mib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// The prefill client's transfer events as the KV transport metrics
// (seer_kv_transfer*{side="receive"}, seer_kv_nccl_links).
class KvTransferMetricsObserver final : public KvTransferObserver {
 public:
  explicit KvTransferMetricsObserver(KvTransportMetrics* metrics) : metrics_(metrics) {}
  void TransferStarted(const std::string& transport) override { metrics_->Started(transport); }
  void TransferFinished(const std::string& transport, const std::string& wire, double seconds,
                        int64_t bytes) override {
    metrics_->Finished(transport, wire, seconds, static_cast<double>(bytes));
  }
  void TransferFailed(const std::string& transport, const std::string& reason) override {
    metrics_->Failed(transport, reason);
  }
  void NcclLinks(int joining, int ready) override {
    metrics_->links(false).Set(joining);
    metrics_->links(true).Set(ready);
  }

 private:
  KvTransportMetrics* metrics_;
};

}  // namespace

int64_t GenerateStreamBytes(int max_new_tokens, int num_layers) {
  return static_cast<int64_t>(max_new_tokens) * kTokenMessageBytes + kSummaryBytes +
         static_cast<int64_t>(num_layers) * sizeof(double);
}

// One Generate call: on a worker thread, fetch the KV from a prefill server,
// then sample and decode token by token, handing each token to the reactor.
// The worker never waits on the client: the tokens queue (the stream's share
// of the budget covers all of them) and the slot goes to the next request.
class GenerateStream final : public StreamReactor<v1::GenerateResponse> {
 public:
  GenerateStream(DecodeService* service, grpc::CallbackServerContext* context, const v1::GenerateRequest& request)
      : StreamReactor(context, &service->watchdog_),
        service_(service),
        metrics_(service->metrics_),
        peer_(context->peer()),
        arrived_(Clock::now()) {
    engine_ = service->engine_.load(std::memory_order_acquire);
    if (engine_ == nullptr) {
      FinishNow(grpc::Status(grpc::StatusCode::UNAVAILABLE, "seer-decode: the model is still loading"));
      return;
    }
    StatusOr<GenerateCall> call = ParseGenerateRequest(request, service->limits_, service->FreshSeed());
    if (!call.ok()) {
      FinishNow(ToGrpcStatus(call.status()));
      return;
    }
    sampling_ = call->sampling;
    request_id_ = call->request_id.empty() ? "generate-" + std::to_string(service->next_request_number_.fetch_add(1))
                                           : call->request_id;
    prefill_request_.set_request_id(request_id_);
    prefill_request_.mutable_token_ids()->Assign(call->ids.begin(), call->ids.end());
    *prefill_request_.mutable_sparsity() = SparsityToProto(call->sparsity);
    prefill_request_.set_kv_wire(call->kv_wire);
    max_new_tokens_ = call->max_new_tokens;
    stop_tokens_ = std::move(call->stop_token_ids);
    ByteBudget& budget = service->budget_;
    const int64_t need = GenerateStreamBytes(max_new_tokens_, engine_->config().num_layers);
    std::optional<ByteBudget::Reservation> charge = budget.TryReserve(need);
    if (!charge) {
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-decode: admitted streams hold " + Mib(budget.used()) + " of --max-buffered-bytes " +
                                 Mib(budget.limit()) + " (tokens their clients have not read yet); this request " +
                                 "needs " + Mib(need) + " for max_new_tokens " + std::to_string(max_new_tokens_) +
                                 "; retry later or elsewhere"));
      return;
    }
    // Counted before Admit, which may finish the stream on another thread.
    metrics_->inflight.Increment();
    admitted_ = true;
    if (!Admit(&service->queue_, std::move(*charge))) {
      metrics_->inflight.Decrement();
      admitted_ = false;
      const WorkQueue& q = service->queue_;
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-decode: the queue is full: " + std::to_string(q.workers()) + " running and " +
                                 std::to_string(q.max_waiting()) + " waiting (--max-concurrent " +
                                 std::to_string(q.workers()) + ", --max-queue " + std::to_string(q.max_waiting()) +
                                 "); retry later or elsewhere"));
    }
  }

  void Run(double /*queue_seconds*/) override { FinishWork(Generate()); }

 private:
  grpc::Status Generate() {
    if (cancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued");
    const int prompt = prefill_request_.token_ids_size();
    StatusOr<std::unique_ptr<KvCache>> made = engine_->NewCache(prompt + max_new_tokens_);
    if (!made.ok()) return ToGrpcStatus(made.status().WithContext("seer-decode: KV cache"));
    std::unique_ptr<KvCache> cache = std::move(made).value();
    GaugeHold cache_counted(&metrics_->server.kv_cache_bytes, KvCacheBytes(cache->layout(), cache->capacity()));

    StatusOr<FetchedKv> fetched = service_->prefill_->Fetch(
        prefill_request_, service_->expected_, cache.get(), &canceller_,
        [this](int64_t bytes) { metrics_->kv_received_bytes.Increment(static_cast<double>(bytes)); });
    if (!fetched.ok()) {
      if (cancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "the Generate stream was cancelled");
      return ToGrpcStatus(fetched.status());
    }
    const v1::PrefillSummary& ps = fetched->summary;

    Sampler sampler(sampling_);
    // The first token from the prefill's logits; each later one from
    // DecodeAndSample, which samples where the engine keeps the logits.
    const std::vector<float> first_logits(ps.last_logits().begin(), ps.last_logits().end());
    int32_t token = sampler.Sample(first_logits);
    int generated = 0;
    std::string finish_reason = "length";
    for (;;) {
      auto msg = std::make_unique<v1::GenerateResponse>();
      msg->set_token(token);
      if (!Send(std::move(msg), kTokenMessageBytes))
        return grpc::Status(grpc::StatusCode::CANCELLED, "the Generate stream was cancelled");
      ++generated;
      if (std::find(stop_tokens_.begin(), stop_tokens_.end(), token) != stop_tokens_.end()) {
        finish_reason = "stop";
        break;
      }
      if (generated == max_new_tokens_) break;
      // Concurrent streams take turns on the engine, one step at a time.
      StatusOr<int32_t> next = engine_->DecodeAndSample(token, cache.get(), &sampler);
      if (!next.ok()) {
        return ToGrpcStatus(next.status().WithContext("seer-decode: decode step " + std::to_string(generated)));
      }
      token = *next;
    }
    cache.reset();

    auto msg = std::make_unique<v1::GenerateResponse>();
    v1::GenerateSummary* s = msg->mutable_summary();
    s->set_prompt_tokens(prompt);
    s->set_generated_tokens(generated);
    s->set_finish_reason(finish_reason);
    s->set_prefill_seconds(ps.timings().prefill_seconds());
    s->set_kv_transfer_seconds(fetched->seconds);
    s->set_kv_bytes(fetched->kv_bytes);
    *s->mutable_layer_density() = ps.layer_density();
    s->set_overall_density(ps.overall_density());
    s->set_prefill_endpoint(fetched->endpoint);
    s->set_sparsity(ps.sparsity());
    *s->mutable_kv_transfer() = fetched->transfer;
    if (!Send(std::move(msg), kSummaryBytes))
      return grpc::Status(grpc::StatusCode::CANCELLED, "the Generate stream was cancelled");
    return grpc::Status::OK;
  }

  // Hooks: one at a time, in write order.
  void BeforeWrite(v1::GenerateResponse* msg) override {
    const Clock::time_point now = Clock::now();
    if (msg->has_summary()) {
      if (first_token_) msg->mutable_summary()->set_ttft_seconds(Seconds(*first_token_ - arrived_));
      msg->mutable_summary()->set_total_seconds(Seconds(now - arrived_));
      return;
    }
    if (!first_token_) {
      first_token_ = now;
      metrics_->ttft.Observe(Seconds(now - arrived_));
    } else {
      metrics_->inter_token.Observe(Seconds(now - last_token_));
    }
    last_token_ = now;
  }

  void AfterWrite(const v1::GenerateResponse& msg, size_t /*bytes*/) override {
    if (msg.event_case() == v1::GenerateResponse::kToken) metrics_->tokens.Increment();
  }

  void OnStreamCancelled() override { canceller_.Cancel(); }

  void OnWriteStall(double stall_seconds) override {
    metrics_->write_stalls.Increment();
    std::fprintf(stderr,
                 "seer-decode: request %s from %s: the client read nothing for %.3g s (--write-stall-seconds); "
                 "stream cancelled after %.1f s\n",
                 request_id_.c_str(), peer_.c_str(), stall_seconds, Seconds(Clock::now() - arrived_));
  }

  void OnStreamDone(const grpc::Status& status) override {
    metrics_->CountRequest(status.error_code());
    metrics_->request_duration.Observe(Seconds(Clock::now() - arrived_));
    if (admitted_) metrics_->inflight.Decrement();
  }

  DecodeService* const service_;
  DecodeMetrics* const metrics_;
  const std::string peer_;
  const Clock::time_point arrived_;
  Engine* engine_ = nullptr;
  bool admitted_ = false;
  CallCanceller canceller_;

  // Set in the constructor, read by the worker.
  v1::PrefillRequest prefill_request_;
  std::string request_id_;
  SamplingParams sampling_;
  int max_new_tokens_ = 0;
  std::vector<int32_t> stop_tokens_;

  // Write hooks only.
  std::optional<Clock::time_point> first_token_;
  Clock::time_point last_token_;
};

DecodeService::DecodeService(const DecodeServiceOptions& options, PrefillClient* prefill, DecodeMetrics* metrics)
    : options_(options),
      prefill_(prefill),
      metrics_(metrics),
      budget_(options.max_buffered_bytes),
      watchdog_(options.write_stall_seconds),
      queue_(options.max_concurrent, options.max_queue) {
  kv_observer_ = std::make_unique<KvTransferMetricsObserver>(&metrics_->kv_transport);
  prefill_->SetKvTransferObserver(kv_observer_.get());
}

DecodeService::~DecodeService() {
  Shutdown();
  prefill_->SetKvTransferObserver(nullptr);
}

Status DecodeService::CheckOptions(const DecodeServiceOptions& o) {
  if (o.max_concurrent < 1 || o.max_concurrent > 1024)
    return InvalidArgument("--max-concurrent: " + std::to_string(o.max_concurrent) + " is out of range [1, 1024]");
  if (o.max_queue < 0 || o.max_queue > 100000)
    return InvalidArgument("--max-queue: " + std::to_string(o.max_queue) + " is out of range [0, 100000]");
  if (o.max_new_tokens < 1 || o.max_new_tokens > (1 << 20))
    return InvalidArgument("--max-new-tokens: " + std::to_string(o.max_new_tokens) +
                           " is out of range [1, 1048576]");
  // Room for at least one request of the largest size (a model of up to 1024 layers).
  const int64_t one = GenerateStreamBytes(o.max_new_tokens, 1024);
  if (o.max_buffered_bytes < one)
    return InvalidArgument("--max-buffered-bytes: " + std::to_string(o.max_buffered_bytes) +
                           " cannot hold one request of --max-new-tokens " + std::to_string(o.max_new_tokens) +
                           " (" + std::to_string(one) + " bytes)");
  if (!(o.write_stall_seconds >= 0) || o.write_stall_seconds > 86400)
    return InvalidArgument("--write-stall-seconds: " + std::to_string(o.write_stall_seconds) +
                           " is out of range [0, 86400] (0: never)");
  return OkStatus();
}

Status DecodeService::SetEngine(Engine* engine) {
  const ModelConfig& c = engine->config();
  expected_.fingerprint = engine->fingerprint();
  expected_.num_layers = c.num_layers;
  expected_.num_kv_heads = c.num_kv_heads;
  expected_.head_dim = c.head_dim;
  expected_.vocab_size = c.vocab_size;
  limits_.vocab_size = c.vocab_size;
  limits_.max_positions = c.max_position_embeddings;
  // A prompt must leave room for at least one new token.
  limits_.max_prompt_tokens = c.max_position_embeddings - 1;
  limits_.max_prompt_source = "the model's max_position_embeddings, less one new token";
  limits_.max_new_tokens = options_.max_new_tokens;
  engine_.store(engine, std::memory_order_release);
  return OkStatus();
}

void DecodeService::Shutdown() { queue_.Shutdown(); }

uint64_t DecodeService::FreshSeed() {
  std::lock_guard<std::mutex> lock(seed_mu_);
  return seed_source_();
}

grpc::ServerWriteReactor<v1::GenerateResponse>* DecodeService::Generate(grpc::CallbackServerContext* context,
                                                                        const v1::GenerateRequest* request) {
  return new GenerateStream(this, context, *request);
}

}  // namespace seer
