// The Prometheus metrics of both servers. The names are a contract that
// dashboards and alerts are built on (docs/SERVICE.md); time histograms span
// 1 ms to 10 min.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/status_code_enum.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "base/status.h"

namespace seer {

// 1 ms, 2.5 ms, 5 ms, 10 ms, ... 250 s, 600 s.
std::vector<double> LatencyBuckets();
// Attention block density, 0.01 to 1.
std::vector<double> DensityBuckets();

class PrefillMetrics {
 public:
  explicit PrefillMetrics(prometheus::Registry& registry);

  void CountRequest(grpc::StatusCode code);
  void ObserveLayerDensity(int layer, double density);
  // Creates the per-layer series up front, so a scrape shows every layer.
  void RegisterLayers(int num_layers);

  prometheus::Histogram& duration;         // seer_prefill_duration_seconds
  prometheus::Histogram& queue;            // seer_prefill_queue_seconds
  prometheus::Counter& tokens;             // seer_prefill_tokens_total
  prometheus::Gauge& inflight;             // seer_prefill_inflight_requests
  prometheus::Counter& kv_sent_bytes;      // seer_kv_sent_bytes_total
  prometheus::Histogram& kv_stream;        // seer_kv_stream_duration_seconds
  prometheus::Counter& write_stalls;       // seer_stream_write_stalls_total

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& density_;
};

class DecodeMetrics {
 public:
  explicit DecodeMetrics(prometheus::Registry& registry);

  void CountRequest(grpc::StatusCode code);

  prometheus::Histogram& ttft;              // seer_time_to_first_token_seconds
  prometheus::Histogram& inter_token;       // seer_inter_token_latency_seconds
  prometheus::Histogram& request_duration;  // seer_request_duration_seconds
  prometheus::Counter& tokens;              // seer_decode_tokens_total
  prometheus::Counter& kv_received_bytes;   // seer_kv_received_bytes_total
  prometheus::Counter& write_stalls;        // seer_stream_write_stalls_total

 private:
  prometheus::Family<prometheus::Counter>& requests_;
};

// /metrics over HTTP (prometheus-cpp's pull Exposer, on civetweb).
//
// civetweb starts its threads with a fixed 100 KB stack, and a process that
// links cuBLAS needs about 94 KB of static TLS per thread on top of that, so
// pthread_create fails. server/common/thread_stacks.cc therefore interposes
// pthread_attr_setstacksize for the whole process, raising requests below
// kMinThreadStackBytes (docs/ARCHITECTURE.md, "Platform facts"); every
// executable that links seer_server_lib compiles it in and exports it.
class MetricsEndpoint {
 public:
  // `address` is host:port; port 0 picks a free one.
  static StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                          std::shared_ptr<prometheus::Registry> registry);
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// The smallest stack a thread of this process gets (see MetricsEndpoint).
inline constexpr size_t kMinThreadStackBytes = size_t{1} << 20;

}  // namespace seer
