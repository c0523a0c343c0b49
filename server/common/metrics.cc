#include "server/common/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <ctime>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "base/version.h"
#include "rpc/grpc_status.h"

namespace seer {

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600};
}

std::vector<double> DensityBuckets() {
  return {0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0};
}

double KvCacheBytes(const KvLayout& layout, int64_t tokens) {
  return 2.0 * layout.num_layers * static_cast<double>(layout.LayerBytes(1)) * static_cast<double>(tokens);
}

double CacheBytes(const KvCache& cache) {
  const double kv = KvCacheBytes(cache.layout(), cache.capacity());
  return cache.has_gate_keys() ? 1.5 * kv : kv;
}

namespace {

prometheus::Histogram& AddHistogram(prometheus::Registry& r, const std::string& name, const std::string& help,
                                    const std::vector<double>& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

prometheus::Counter& AddCounter(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge& AddGauge(prometheus::Registry& r, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}

// A requests_total family with a series for every gRPC code from the start,
// so that rate() and error ratios have data before the first error.
prometheus::Family<prometheus::Counter>& AddRequestCounter(prometheus::Registry& r, const std::string& name,
                                                           const std::string& help) {
  auto& family = prometheus::BuildCounter().Name(name).Help(help).Register(r);
  for (int code = 0; code <= static_cast<int>(grpc::StatusCode::DATA_LOSS); ++code)
    family.Add({{"code", std::string(GrpcCodeName(static_cast<grpc::StatusCode>(code)))}});
  return family;
}

// /proc/self/stat after the command name: fields 3.. of proc(5).
std::vector<std::string> ProcSelfStat() {
  std::ifstream in("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  std::vector<std::string> fields;
  if (paren == std::string::npos) return fields;
  std::istringstream rest(text.substr(paren + 2));
  std::string f;
  while (rest >> f) fields.push_back(f);
  return fields;
}

double BootTimeSeconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double t = 0;
      in >> t;
      return t;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0.0;
}

int OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(dir))
    if (e->d_name[0] != '.') ++n;
  closedir(dir);
  return n - 1;  // the directory stream's own descriptor
}

prometheus::ClientMetric Value(double v, prometheus::MetricType type, const prometheus::Labels& labels = {}) {
  prometheus::ClientMetric m;
  for (const auto& [name, value] : labels) m.label.push_back({name, value});
  if (type == prometheus::MetricType::Counter)
    m.counter.value = v;
  else
    m.gauge.value = v;
  return m;
}

prometheus::MetricFamily Family(const std::string& name, const std::string& help, prometheus::MetricType type,
                                double v) {
  return {name, help, type, {Value(v, type)}};
}

constexpr const char* kWriteStallsHelp =
    "Streams cancelled because their client read nothing for --write-stall-seconds.";

}  // namespace

ScrapeTimeMetrics::ScrapeTimeMetrics() {
  // Field 22 of proc(5): the start time in clock ticks after boot.
  const std::vector<std::string> stat = ProcSelfStat();
  if (stat.size() > 19)
    start_time_seconds_ = BootTimeSeconds() + std::stod(stat[19]) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

void ScrapeTimeMetrics::AddGauge(const std::string& name, const std::string& help, const prometheus::Labels& labels,
                                 std::function<double()> read) {
  std::lock_guard<std::mutex> lock(mu_);
  series_.push_back({name, help, labels, std::move(read)});
}

std::vector<prometheus::MetricFamily> ScrapeTimeMetrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  // The names and meanings of the official client libraries' process
  // collectors, so that standard dashboards work.
  const std::vector<std::string> stat = ProcSelfStat();
  if (stat.size() > 21) {
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    out.push_back(Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                         MetricType::Counter, (std::stod(stat[11]) + std::stod(stat[12])) / tick));
    out.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
                         std::stod(stat[20])));
    out.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
                         std::stod(stat[21]) * static_cast<double>(sysconf(_SC_PAGESIZE))));
  }
  out.push_back(Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                       MetricType::Gauge, start_time_seconds_));
  out.push_back(Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, OpenFds()));
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0)
    out.push_back(Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                         static_cast<double>(limit.rlim_cur)));

  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, size_t> index;
  for (const Series& s : series_) {
    auto [it, added] = index.emplace(s.name, out.size());
    if (added) out.push_back({s.name, s.help, MetricType::Gauge, {}});
    out[it->second].metric.push_back(Value(s.read(), MetricType::Gauge, s.labels));
  }
  return out;
}

ServerMetrics::ServerMetrics(prometheus::Registry& r)
    : kv_cache_bytes(AddGauge(r, "seer_kv_cache_bytes", "Bytes of KV caches allocated for requests right now.")),
      kv_cache_capacity_bytes(AddGauge(r, "seer_kv_cache_capacity_bytes",
                                       "The most KV cache bytes the server holds at once. seer-prefill: "
                                       "--max-buffered-bytes, which every stream's KV cache is charged against "
                                       "until its client has read it; seer-decode: its KV page pool (with "
                                       "--max-batch 0, --max-concurrent requests of the longest context).")) {
  prometheus::BuildGauge()
      .Name("seer_build_info")
      .Help("Always 1; the labels say which build serves.")
      .Register(r)
      .Add({{"version", kVersion}, {"commit", kBuildCommit}, {"cuda", kBuildCuda}})
      .Set(1);
}

prometheus::Family<prometheus::Counter>& PrefixLookups(prometheus::Registry& r) {
  return prometheus::BuildCounter()
      .Name("seer_prefix_cache_lookups_total")
      .Help(
          "Prefills by what the prefix store gave: hit, miss, or not_reusable (nz_ratio selection or prompt "
          "logprobs, which a stored prefix cannot serve).")
      .Register(r);
}

prometheus::Family<prometheus::Counter>& KvPrefixLookups(prometheus::Registry& r) {
  return prometheus::BuildCounter()
      .Name("seer_decode_kv_prefix_lookups_total")
      .Help(
          "Generate requests by what this worker's KV prefix store held: hit (the prefill sent only the rest of the "
          "prompt's K/V), declined (the prefill applied another selection and sent all of it), or miss.")
      .Register(r);
}

PrefillMetrics::PrefillMetrics(prometheus::Registry& r)
    : server(r),
      duration(AddHistogram(r, "seer_prefill_duration_seconds",
                            "Engine time of a prefill, from the first layer to the last.", LatencyBuckets())),
      queue(AddHistogram(r, "seer_prefill_queue_seconds",
                         "Time a prefill request waited for a free slot (--max-concurrent).", LatencyBuckets())),
      tokens(AddCounter(r, "seer_prefill_tokens_total", "Prompt tokens of completed prefills.")),
      inflight(AddGauge(r, "seer_prefill_inflight_requests",
                        "Prefill streams admitted and not yet finished (queued, computing or sending).")),
      kv_sent_bytes(AddCounter(r, "seer_kv_sent_bytes_total", "Bytes of K and V written to Prefill streams.")),
      kv_stream(AddHistogram(r, "seer_kv_stream_duration_seconds",
                             "From a stream's first KV chunk handed to gRPC to its last one written.",
                             LatencyBuckets())),
      write_stalls(AddCounter(r, "seer_stream_write_stalls_total", kWriteStallsHelp)),
      kv_transport(r, KvSide::kSend),
      prefix_lookups(PrefixLookups(r)),
      prefix_hits(prefix_lookups.Add({{"result", "hit"}})),
      prefix_misses(prefix_lookups.Add({{"result", "miss"}})),
      prefix_not_reusable(prefix_lookups.Add({{"result", "not_reusable"}})),
      prefix_hit_tokens(AddCounter(r, "seer_prefix_cache_hit_tokens_total",
                                   "Prompt tokens whose K/V came from the prefix store instead of being computed.")),
      prefix_bytes(AddGauge(r, "seer_prefix_cache_bytes",
                            "Memory the prefix store's KV caches hold (--prefix-cache-bytes bounds it).")),
      prefix_entries(AddGauge(r, "seer_prefix_cache_entries", "Prompts whose KV caches the prefix store holds.")),
      prefix_evictions(AddCounter(r, "seer_prefix_cache_evictions_total",
                                  "Prompts dropped from the prefix store for room (its budget, or the GPU's "
                                  "memory).")),
      requests_(AddRequestCounter(r, "seer_prefill_requests_total", "Prefill requests by final gRPC status code.")),
      density_(prometheus::BuildHistogram()
                   .Name("seer_attention_block_density")
                   .Help("Kept over causal attention blocks of each layer of each prefill (1 is dense).")
                   .Register(r)) {}

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
    : server(r),
      ttft(AddHistogram(r, "seer_time_to_first_token_seconds",
                        "From a Generate request's arrival to its first token handed to gRPC.", LatencyBuckets())),
      inter_token(AddHistogram(r, "seer_inter_token_latency_seconds", "Time between consecutive tokens of a stream.",
                               LatencyBuckets())),
      request_duration(AddHistogram(r, "seer_request_duration_seconds", "From a Generate request's arrival to its end.",
                                    LatencyBuckets())),
      tokens(AddCounter(r, "seer_decode_tokens_total", "Tokens generated and sent.")),
      kv_received_bytes(
          AddCounter(r, "seer_kv_received_bytes_total", "Bytes of K and V received from prefill servers.")),
      inflight(AddGauge(r, "seer_decode_inflight_requests",
                        "Generate streams admitted and not yet finished (queued, fetching KV, decoding).")),
      write_stalls(AddCounter(r, "seer_stream_write_stalls_total", kWriteStallsHelp)),
      kv_transport(r, KvSide::kReceive),
      batch_size(AddHistogram(r, "seer_decode_batch_size", "Requests in each batched decode step.",
                              {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024})),
      step_seconds(AddHistogram(r, "seer_decode_step_seconds",
                                "Duration of each batched decode step (one token for every request in it).",
                                {0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1})),
      kv_prefix_lookups(KvPrefixLookups(r)),
      kv_prefix_hits(kv_prefix_lookups.Add({{"result", "hit"}})),
      kv_prefix_declined(kv_prefix_lookups.Add({{"result", "declined"}})),
      kv_prefix_misses(kv_prefix_lookups.Add({{"result", "miss"}})),
      kv_prefix_held_tokens(AddCounter(r, "seer_decode_kv_prefix_held_tokens_total",
                                       "Prompt tokens whose K/V this worker held already and did not receive.")),
      kv_prefix_bytes(AddGauge(r, "seer_decode_kv_prefix_bytes",
                               "KV pages the prefix store holds, in bytes (--kv-prefix-cache-bytes bounds it); "
                               "pages that running requests share count here too.")),
      kv_prefix_entries(AddGauge(r, "seer_decode_kv_prefix_entries", "Prompts whose KV pages the prefix store holds.")),
      kv_prefix_evictions(AddCounter(r, "seer_decode_kv_prefix_evictions_total",
                                     "Prompts dropped from the KV prefix store for room (its budget, or pages that "
                                     "new requests needed).")),
      requests_(AddRequestCounter(r, "seer_decode_requests_total", "Generate requests by final gRPC status code.")) {}

void DecodeMetrics::CountRequest(grpc::StatusCode code) {
  requests_.Add({{"code", std::string(GrpcCodeName(code))}}).Increment();
}

StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                  std::shared_ptr<prometheus::Registry> registry,
                                                                  std::shared_ptr<ScrapeTimeMetrics> scrape_time,
                                                                  std::function<bool()> ready,
                                                                  const ServerTlsOptions& tls) {
  std::unique_ptr<MetricsEndpoint> m(new MetricsEndpoint());
  m->registry_ = std::move(registry);
  m->scrape_time_ = std::move(scrape_time);
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables = {m->registry_};
  if (m->scrape_time_) collectables.push_back(m->scrape_time_);
  const std::string plaintext = tls.enabled() ? "127.0.0.1:0" : address;
  SEER_ASSIGN_OR_RETURN(m->http_, MetricsHttpServer::Start(plaintext, std::move(collectables), std::move(ready)));
  m->port_ = m->http_->port();
  if (tls.enabled()) {
    TlsFrontOptions front;
    front.listen = address;
    front.flag = "--metrics";
    front.backend_port = m->http_->port();
    front.tls = tls;
    front.max_connections = kMetricsMaxConnections;
    front.handshake_timeout_ms = kMetricsRequestTimeoutMs;
    front.idle_timeout_ms = kMetricsRequestTimeoutMs;
    SEER_ASSIGN_OR_RETURN(m->tls_front_, TlsFront::Start(front));
    m->port_ = m->tls_front_->port();
  }
  return m;
}

void AddStreamBudgetGauges(ScrapeTimeMetrics& metrics, std::function<int64_t()> used, int64_t limit) {
  metrics.AddGauge("seer_stream_buffered_bytes",
                   "Bytes of --max-buffered-bytes that admitted streams hold now (KV caches and messages their "
                   "clients have not read yet).",
                   {}, [used = std::move(used)] { return static_cast<double>(used()); });
  metrics.AddGauge("seer_stream_max_buffered_bytes", "--max-buffered-bytes.", {},
                   [v = static_cast<double>(limit)] { return v; });
}

void AddDeviceMemoryGauges(ScrapeTimeMetrics& metrics, const Engine& engine) {
  if (!engine.device_memory()) return;
  const prometheus::Labels labels = {{"device", engine.device_name()}};
  metrics.AddGauge("seer_gpu_memory_used_bytes", "Memory in use on the engine's GPU (every process on it).", labels,
                   [&engine] {
                     const auto m = engine.device_memory();
                     return m ? static_cast<double>(m->used) : 0.0;
                   });
  metrics.AddGauge("seer_gpu_memory_total_bytes", "Memory of the engine's GPU.", labels, [&engine] {
    const auto m = engine.device_memory();
    return m ? static_cast<double>(m->total) : 0.0;
  });
}

}  // namespace seer
