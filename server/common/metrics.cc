#include "server/common/metrics.h"

#include <exception>
#include <string>

#include "rpc/grpc_status.h"

namespace seer {

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
          2.5,   5,      10,    25,   50,    100,  250, 600};
}

std::vector<double> DensityBuckets() {
  return {0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0};
}

namespace {

prometheus::Histogram& AddHistogram(prometheus::Registry& r, const std::string& name, const std::string& help,
                                    const std::vector<double>& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

prometheus::Counter& AddCounter(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

constexpr const char* kWriteStallsHelp =
    "Streams cancelled because their client read nothing for --write-stall-seconds.";

}  // namespace

PrefillMetrics::PrefillMetrics(prometheus::Registry& r)
    : duration(AddHistogram(r, "seer_prefill_duration_seconds",
                            "Engine time of a prefill, from the first layer to the last.", LatencyBuckets())),
      queue(AddHistogram(r, "seer_prefill_queue_seconds",
                         "Time a prefill request waited for a free slot (--max-concurrent).", LatencyBuckets())),
      tokens(AddCounter(r, "seer_prefill_tokens_total", "Prompt tokens of completed prefills.")),
      inflight(prometheus::BuildGauge()
                   .Name("seer_prefill_inflight_requests")
                   .Help("Prefill streams admitted and not yet finished (queued, computing or sending).")
                   .Register(r)
                   .Add({})),
      kv_sent_bytes(AddCounter(r, "seer_kv_sent_bytes_total", "Bytes of K and V written to Prefill streams.")),
      kv_stream(AddHistogram(r, "seer_kv_stream_duration_seconds",
                             "From a stream's first KV chunk handed to gRPC to its last one written.",
                             LatencyBuckets())),
      write_stalls(AddCounter(r, "seer_stream_write_stalls_total", kWriteStallsHelp)),
      requests_(prometheus::BuildCounter()
                    .Name("seer_prefill_requests_total")
                    .Help("Prefill requests by final gRPC status code.")
                    .Register(r)),
      density_(prometheus::BuildHistogram()
                   .Name("seer_attention_block_density")
                   .Help("Kept over causal attention blocks of each layer of each prefill (1 is dense).")
                   .Register(r)) {
  requests_.Add({{"code", "OK"}});
}

void PrefillMetrics::CountRequest(grpc::StatusCode code) {
  requests_.Add({{"code", std::string(GrpcCodeName(code))}}).Increment();
}

void PrefillMetrics::ObserveLayerDensity(int layer, double density) {
  density_.Add({{"layer", std::to_string(layer)}}, DensityBuckets()).Observe(density);
}

void PrefillMetrics::RegisterLayers(int num_layers) {
  for (int i = 0; i < num_layers; ++i) density_.Add({{"layer", std::to_string(i)}}, DensityBuckets());
}

DecodeMetrics::DecodeMetrics(prometheus::Registry& r)
    : ttft(AddHistogram(r, "seer_time_to_first_token_seconds",
                        "From a Generate request's arrival to its first token handed to gRPC.", LatencyBuckets())),
      inter_token(AddHistogram(r, "seer_inter_token_latency_seconds", "Time between consecutive tokens of a stream.",
                               LatencyBuckets())),
      request_duration(AddHistogram(r, "seer_request_duration_seconds",
                                    "From a Generate request's arrival to its end.", LatencyBuckets())),
      tokens(AddCounter(r, "seer_decode_tokens_total", "Tokens generated and sent.")),
      kv_received_bytes(AddCounter(r, "seer_kv_received_bytes_total",
                                   "Bytes of K and V received from prefill servers.")),
      write_stalls(AddCounter(r, "seer_stream_write_stalls_total", kWriteStallsHelp)),
      requests_(prometheus::BuildCounter()
                    .Name("seer_decode_requests_total")
                    .Help("Generate requests by final gRPC status code.")
                    .Register(r)) {
  requests_.Add({{"code", "OK"}});
}

void DecodeMetrics::CountRequest(grpc::StatusCode code) {
  requests_.Add({{"code", std::string(GrpcCodeName(code))}}).Increment();
}

StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                  std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsEndpoint> m(new MetricsEndpoint());
  m->registry_ = std::move(registry);
  // Startup only, never on the data path: prometheus-cpp reports a failed
  // bind by throwing.
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return Unavailable("--metrics " + address + ": cannot serve /metrics: " + e.what());
  }
  m->exposer_->RegisterCollectable(m->registry_);
  const std::vector<int> ports = m->exposer_->GetListeningPorts();
  if (ports.empty()) return Unavailable("--metrics " + address + ": no listening port");
  m->port_ = ports.front();
  return m;
}

}  // namespace seer
