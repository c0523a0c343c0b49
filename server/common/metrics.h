// The Prometheus metrics of both servers. The names are a contract that
// dashboards, recording rules and alerts are built on (docs/SERVICE.md,
// deploy/observability/); time histograms span 1 ms to 10 min.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/support/status_code_enum.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "rpc/kv_transport_metrics.h"
#include "server/common/metrics_http.h"
#include "server/common/tls_front.h"
#include "base/status.h"
#include "engine/engine.h"
#include "engine/kv/kv_cache.h"

namespace seer {

// 1 ms, 2.5 ms, 5 ms, 10 ms, ... 250 s, 600 s.
std::vector<double> LatencyBuckets();
// Attention block density, 0.01 to 1.
std::vector<double> DensityBuckets();

// Bytes of K and V a cache of `tokens` tokens holds in every layer.
double KvCacheBytes(const KvLayout& layout, int64_t tokens);
// Bytes `cache` holds: its K and V, and its gate keys when it keeps them.
double CacheBytes(const KvCache& cache);

// Holds `amount` in a gauge while it lives (a KV cache in seer_kv_cache_bytes).
class GaugeHold {
 public:
  GaugeHold(prometheus::Gauge* gauge, double amount) : gauge_(gauge), amount_(amount) { gauge_->Increment(amount_); }
  ~GaugeHold() { gauge_->Decrement(amount_); }
  GaugeHold(const GaugeHold&) = delete;
  GaugeHold& operator=(const GaugeHold&) = delete;

 private:
  prometheus::Gauge* gauge_;
  double amount_;
};

// Gauges whose values are read when /metrics is scraped (a queue's depth,
// a device's memory), and the process_* metrics every Prometheus client
// library exports (CPU, RSS, file descriptors, start time), read from /proc.
class ScrapeTimeMetrics final : public prometheus::Collectable {
 public:
  ScrapeTimeMetrics();
  // A gauge `name`{labels} = read(). Series of one name share `help`.
  void AddGauge(const std::string& name, const std::string& help, const prometheus::Labels& labels,
                std::function<double()> read);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Series {
    std::string name, help;
    prometheus::Labels labels;
    std::function<double()> read;
  };
  mutable std::mutex mu_;
  std::vector<Series> series_;
  double start_time_seconds_ = 0.0;
};

// seer_gpu_memory_used_bytes / _total_bytes{device} of the engine's device,
// read at scrape time (nothing for a CPU engine).
void AddDeviceMemoryGauges(ScrapeTimeMetrics& metrics, const Engine& engine);

// Admission's byte budget: seer_stream_buffered_bytes (what admitted streams
// hold for clients that have not read it, read by `used` at scrape time) and
// seer_stream_max_buffered_bytes (--max-buffered-bytes, `limit`).
void AddStreamBudgetGauges(ScrapeTimeMetrics& metrics, std::function<int64_t()> used, int64_t limit);

// What both servers export: seer_build_info, the process_* metrics and the
// scrape-time gauges. Register `scrape_time` with the same registry's
// Exposer (MetricsEndpoint does).
struct ServerMetrics {
  explicit ServerMetrics(prometheus::Registry& registry);
  std::shared_ptr<ScrapeTimeMetrics> scrape_time = std::make_shared<ScrapeTimeMetrics>();
  prometheus::Gauge& kv_cache_bytes;  // seer_kv_cache_bytes
  prometheus::Gauge& kv_cache_capacity_bytes;  // seer_kv_cache_capacity_bytes
};

class PrefillMetrics {
 public:
  explicit PrefillMetrics(prometheus::Registry& registry);

  void CountRequest(grpc::StatusCode code);
  void ObserveLayerDensity(int layer, double density);
  // Creates the per-layer series up front, so a scrape shows every layer.
  void RegisterLayers(int num_layers);

  ServerMetrics server;
  prometheus::Histogram& duration;  // seer_prefill_duration_seconds
  prometheus::Histogram& queue;  // seer_prefill_queue_seconds
  prometheus::Counter& tokens;  // seer_prefill_tokens_total
  prometheus::Gauge& inflight;  // seer_prefill_inflight_requests
  prometheus::Counter& kv_sent_bytes;  // seer_kv_sent_bytes_total
  prometheus::Histogram& kv_stream;  // seer_kv_stream_duration_seconds
  prometheus::Counter& write_stalls;  // seer_stream_write_stalls_total
  KvTransportMetrics kv_transport;  // seer_kv_transfer*{side="send"}, ... (rpc/kv_transport_metrics.h)
  // The prefix store (--prefix-cache-bytes).
  // seer_prefix_cache_lookups_total{result}: "hit", "miss", or "not_reusable"
  // (a selection no stored prompt can serve exactly, or prompt logprobs).
  prometheus::Family<prometheus::Counter>& prefix_lookups;
  prometheus::Counter& prefix_hits;
  prometheus::Counter& prefix_misses;
  prometheus::Counter& prefix_not_reusable;
  prometheus::Counter& prefix_hit_tokens;  // seer_prefix_cache_hit_tokens_total
  prometheus::Gauge& prefix_bytes;  // seer_prefix_cache_bytes
  prometheus::Gauge& prefix_entries;  // seer_prefix_cache_entries
  prometheus::Counter& prefix_evictions;  // seer_prefix_cache_evictions_total

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& density_;
};

class DecodeMetrics {
 public:
  explicit DecodeMetrics(prometheus::Registry& registry);

  void CountRequest(grpc::StatusCode code);

  ServerMetrics server;
  prometheus::Histogram& ttft;  // seer_time_to_first_token_seconds
  prometheus::Histogram& inter_token;  // seer_inter_token_latency_seconds
  prometheus::Histogram& request_duration;  // seer_request_duration_seconds
  prometheus::Counter& tokens;  // seer_decode_tokens_total
  prometheus::Counter& kv_received_bytes;  // seer_kv_received_bytes_total
  prometheus::Gauge& inflight;  // seer_decode_inflight_requests
  prometheus::Counter& write_stalls;  // seer_stream_write_stalls_total
  KvTransportMetrics kv_transport;  // seer_kv_transfer*{side="receive"}, ...
  prometheus::Histogram& batch_size;  // seer_decode_batch_size
  prometheus::Histogram& step_seconds;  // seer_decode_step_seconds
  // The KV prefix store (--kv-prefix-cache-bytes).
  // seer_decode_kv_prefix_lookups_total{result}: "hit" (the prefill sent only
  // the rest), "declined" (it sent everything), or "miss"
  prometheus::Family<prometheus::Counter>& kv_prefix_lookups;
  prometheus::Counter& kv_prefix_hits;
  prometheus::Counter& kv_prefix_declined;
  prometheus::Counter& kv_prefix_misses;
  prometheus::Counter& kv_prefix_held_tokens;  // seer_decode_kv_prefix_held_tokens_total
  prometheus::Gauge& kv_prefix_bytes;  // seer_decode_kv_prefix_bytes
  prometheus::Gauge& kv_prefix_entries;  // seer_decode_kv_prefix_entries
  prometheus::Counter& kv_prefix_evictions;  // seer_decode_kv_prefix_evictions_total

 private:
  prometheus::Family<prometheus::Counter>& requests_;
};

// /metrics over HTTP, served by MetricsHttpServer (server/common/metrics_http.h):
// one poll loop, IPv4 or IPv6, a deadline per connection, so idle or slow
// connections cannot blind the scrapes (prometheus-cpp's civetweb Exposer
// gave each connection a thread and knew no IPv6 in Debian's build).
//
// civetweb still serves seer-decode's OpenAI front door; it starts its
// threads with a fixed 100 KB stack, and a process that links cuBLAS needs
// about 94 KB of static TLS per thread on top of that, so pthread_create
// fails. server/common/thread_stacks.cc therefore interposes
// pthread_attr_setstacksize for the whole process, raising requests below
// kMinThreadStackBytes (docs/ARCHITECTURE.md, "Platform facts"); every
// executable that links seer_server_lib compiles it in and exports it.
class MetricsEndpoint {
 public:
  // `address` is host:port or [v6 host]:port; port 0 picks a free one.
  // `scrape_time` (may be null) is collected beside `registry`.
  // `ready` answers /readyz (MetricsHttpServer). With `tls` enabled the
  // port serves HTTPS (TlsFront) with those files; the plaintext server then
  // listens on loopback only.
  static StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address,
                                                          std::shared_ptr<prometheus::Registry> registry,
                                                          std::shared_ptr<ScrapeTimeMetrics> scrape_time = nullptr,
                                                          std::function<bool()> ready = nullptr,
                                                          const ServerTlsOptions& tls = {});
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ScrapeTimeMetrics> scrape_time_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::unique_ptr<TlsFront> tls_front_;  // destroyed first: it relays to http_
  int port_ = 0;
};

// The smallest stack a thread of this process gets (see MetricsEndpoint).
inline constexpr size_t kMinThreadStackBytes = size_t{1} << 20;

}  // namespace seer
