#include "server/common/serve.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "base/version.h"
#include "rpc/lock_order.h"

namespace seer {
namespace {

JsonValue Fields(std::initializer_list<std::pair<const char*, JsonValue>> members) {
  JsonValue f = JsonValue::Object();
  for (const auto& [key, value] : members) f.Set(key, value);
  return f;
}

}  // namespace

void CommonServerFlags::Register(FlagSet& flags) {
  flags.String("tls-cert", &tls.cert, "PEM certificate (chain) of this server: serve TLS (with --tls-key)");
  flags.String("tls-key", &tls.key, "PEM private key of --tls-cert");
  flags.String("tls-client-ca", &tls.client_ca, "PEM CA bundle: require client certificates signed by it (mutual TLS)");
  flags.Int("tls-reload-seconds", &tls_reload_seconds, "how often the TLS files are checked for changes and reloaded");
  flags.Bool("metrics-tls", &metrics_tls,
             "serve --metrics (and /livez, /readyz) over HTTPS with --tls-cert and --tls-key; no client "
             "certificate is asked for there, even with --tls-client-ca (probes present none)");
  flags.String("log-level", &log_level, "stderr JSON log: debug, info (one line per request), warn, error or off");
  flags.Bool("lock-order-checks", &lock_order_checks,
             "run abseil's lock-order (deadlock) detector on every mutex gRPC takes, reporting cycles to stderr; "
             "off by default (Debian's abseil would otherwise run it on each lock under one global lock, and "
             "abort on a cycle)");
  flags.Bool("version", &version, "print the version and exit");
}

Status CommonServerFlags::Apply(const std::string& program) {
  SEER_ASSIGN_OR_RETURN(LogLevel level, ParseLogLevel(log_level));
  if (tls_reload_seconds < 1 || tls_reload_seconds > 86400)
    return InvalidArgument("--tls-reload-seconds: " + std::to_string(tls_reload_seconds) +
                           " is out of range [1, 86400]");
  tls.reload_seconds = static_cast<int>(tls_reload_seconds);
  SEER_RETURN_IF_ERROR(CheckServerTls(tls));
  if (metrics_tls && !tls.enabled()) return InvalidArgument("--metrics-tls needs --tls-cert and --tls-key");
  InitLogging(program, level);
  SetLockOrderChecks(lock_order_checks);
  return OkStatus();
}

std::string VersionLine(const std::string& program) {
  return program + " " + kVersion + " (commit " + kBuildCommit + ", CUDA " + kBuildCuda + ")";
}

int ReceiveLimitBytes(size_t max_request_bytes) {
  const size_t limit = max_request_bytes + kReceiveMarginBytes;
  return limit > static_cast<size_t>(INT32_MAX) ? INT32_MAX : static_cast<int>(limit);
}

int Serve(const ServeConfig& config) {
  const char* program = config.program.c_str();
  GrpcServerOptions options;
  options.listen = config.listen;
  options.services = config.services;
  options.health_names = config.health_names;
  options.max_receive_bytes = config.max_receive_bytes;
  options.tls = config.tls;
  options.hooks = config.hooks;
  StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(std::move(options));
  if (!server.ok()) {
    LogEvent(LogLevel::kError, "cannot start", Fields({{"error", JsonValue::String(server.status().ToString())}}));
    // A malformed --listen is a usage error; a port that cannot be bound is not.
    return server.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  // Health is SERVING once the model has loaded, while what watch_health
  // watches is fine, until the drain starts. The watcher may outlive this
  // function; it shares this state, and `closed` keeps it off the server.
  struct HealthGate {
    std::mutex mu;
    GrpcServer* server = nullptr;
    bool loaded = false, upstream = true, closed = false;
    void UpdateLocked() {
      if (!closed) server->SetServing(loaded && upstream);
    }
    bool Ready() {  // /readyz: what gRPC health says for ""
      std::lock_guard<std::mutex> lock(mu);
      return !closed && loaded && upstream;
    }
  };
  auto gate = std::make_shared<HealthGate>();
  gate->server = server->get();
  auto close_gate = [gate] {
    std::lock_guard<std::mutex> lock(gate->mu);
    gate->closed = true;
  };

  std::unique_ptr<MetricsEndpoint> metrics;
  std::string metrics_address = "off";
  if (!config.metrics.empty()) {
    std::string host;
    int port = 0;
    if (Status s = SplitHostPort(config.metrics, "--metrics", &host, &port); !s.ok()) {
      LogEvent(LogLevel::kError, "bad flag", Fields({{"error", JsonValue::String(s.ToString())}}));
      return 2;
    }
    ServerTlsOptions metrics_tls;
    if (config.metrics_tls) {
      metrics_tls = config.tls;
      metrics_tls.client_ca.clear();
    }
    StatusOr<std::unique_ptr<MetricsEndpoint>> started = MetricsEndpoint::Start(
        config.metrics, config.registry, config.scrape_time, [gate] { return gate->Ready(); }, metrics_tls);
    if (!started.ok()) {
      LogEvent(LogLevel::kError, "cannot start", Fields({{"error", JsonValue::String(started.status().ToString())}}));
      return 1;
    }
    metrics = std::move(started).value();
    metrics_address = host + ":" + std::to_string(metrics->port());
  }
  if (config.started) {
    if (Status s = config.started(**server); !s.ok()) {
      LogEvent(LogLevel::kError, "cannot start", Fields({{"error", JsonValue::String(s.ToString())}}));
      return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
  }
  std::printf("%s listening on %s metrics on %s\n", program, (*server)->address().c_str(), metrics_address.c_str());
  std::fflush(stdout);
  LogEvent(LogLevel::kInfo, "listening",
           Fields({{"grpc", JsonValue::String((*server)->address())},
                   {"metrics", JsonValue::String(metrics_address)},
                   {"tls", JsonValue::String(!config.tls.enabled()          ? "off"
                                             : config.tls.client_ca.empty() ? "tls"
                                                                            : "mtls")},
                   {"metrics_tls", JsonValue::Bool(config.metrics_tls)},
                   {"max_receive_bytes", JsonValue::Int(config.max_receive_bytes)},
                   {"version", JsonValue::String(VersionLine(config.program))}}));

  // Load the model on its own thread so that SIGTERM still works meanwhile; a
  // failed load wakes the main thread with SIGTERM after setting the code.
  std::atomic<bool> loaded{false};
  std::atomic<int> load_failed{0};
  std::thread loader([&] {
    const auto start = std::chrono::steady_clock::now();
    StatusOr<std::string> what = config.load();
    if (!what.ok()) {
      LogEvent(LogLevel::kError, "loading the model failed",
               Fields({{"error", JsonValue::String(what.status().ToString())}}));
      load_failed = 1;
      kill(getpid(), SIGTERM);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(gate->mu);
      gate->loaded = true;
      gate->UpdateLocked();
    }
    if (config.watch_health) {
      config.watch_health([gate](bool serving) {
        std::lock_guard<std::mutex> lock(gate->mu);
        gate->upstream = serving;
        gate->UpdateLocked();
      });
    }
    loaded = true;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%s ready: %s (loaded in %.2f s)\n", program, what->c_str(), seconds);
    std::fflush(stdout);
    LogEvent(LogLevel::kInfo, "ready",
             Fields({{"model", JsonValue::String(*what)}, {"load_seconds", JsonValue::Number(seconds)}}));
  });

  const int sig = WaitForTerminationSignal();
  close_gate();
  if (load_failed) {
    loader.join();
    (*server)->Shutdown(0.0);
    if (config.stop) config.stop();
    return 1;
  }
  LogEvent(LogLevel::kInfo, "draining",
           Fields({{"signal", JsonValue::String(sig == SIGTERM ? "SIGTERM" : "SIGINT")},
                   {"drain_seconds", JsonValue::Number(config.drain_seconds)}}));
  const auto drain_deadline =
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                             std::chrono::duration<double>(config.drain_seconds));
  if (config.drain_first) config.drain_first(drain_deadline);
  (*server)->Shutdown(
      std::max(0.0, std::chrono::duration<double>(drain_deadline - std::chrono::steady_clock::now()).count()),
      config.drain_expired);
  if (!loaded) {
    // Still loading: nothing was served, and the load cannot be interrupted.
    LogEvent(LogLevel::kInfo, "stopped while loading the model");
    _exit(0);
  }
  loader.join();
  if (config.stop) config.stop();
  LogEvent(LogLevel::kInfo, "drained, exiting");
  return 0;
}

}  // namespace seer
