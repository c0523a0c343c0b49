// The life of a server process, shared by seer-prefill and seer-decode:
// bind gRPC and /metrics, print the bound ports, load the model while health
// says NOT_SERVING, serve, and on SIGTERM drain and exit.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>

#include "base/flags.h"
#include "base/status.h"
#include "server/common/grpc_server.h"
#include "server/common/logging.h"
#include "server/common/metrics.h"

namespace seer {

// The flags both servers take besides their own: TLS, the log level, the
// lock-order checks and --version.
struct CommonServerFlags {
  ServerTlsOptions tls;
  int64_t tls_reload_seconds = 60;
  std::string log_level = "info";
  bool metrics_tls = false;  // --metrics serves HTTPS with --tls-cert
  bool lock_order_checks = false;  // SetLockOrderChecks (rpc/lock_order.h)
  bool version = false;

  void Register(FlagSet& flags);
  // Checks them, sets up logging for `program`, sets the lock-order checks;
  // INVALID_ARGUMENT naming the flag.
  Status Apply(const std::string& program);
};

// "seer-prefill 0.2.0 (commit 1a2b3c4d5e6f, CUDA 13.0)".
std::string VersionLine(const std::string& program);

// The gRPC receive limit for requests under `limits`: the largest valid
// request plus a margin, whatever bytes it holds.
int ReceiveLimitBytes(size_t max_request_bytes);

struct ServeConfig {
  std::string program;  // "seer-prefill", for messages
  std::string listen;  // host:port, port 0 picks one
  std::string metrics;  // host:port for /metrics; empty: none
  double drain_seconds = 30.0;
  int max_receive_bytes = 1 << 20;
  ServerTlsOptions tls;
  // /metrics, /livez and /readyz over HTTPS with tls.cert and tls.key (no
  // client certificate asked for: the kubelet's probes present none).
  bool metrics_tls = false;
  CallHooks hooks;
  std::vector<grpc::Service*> services;
  std::vector<std::string> health_names;
  std::shared_ptr<prometheus::Registry> registry;
  std::shared_ptr<ScrapeTimeMetrics> scrape_time;
  // Optional, once gRPC is bound and before the "listening" line: starts
  // what rides on the server (seer-decode's OpenAI front door, which may
  // print its own line). An error stops the process.
  std::function<Status(GrpcServer& server)> started;
  // Loads the model and hands it to the services; runs on its own thread
  // while the server already answers health checks. Returns a one-line
  // description of what was loaded.
  std::function<StatusOr<std::string>()> load;
  // On SIGTERM, before the gRPC server stops taking calls: front ends that
  // call it in process (the HTTP API) stop taking requests and wait, until
  // `deadline` at most, for the ones in flight; the gRPC server then drains
  // for what is left of --drain-seconds. (Shutting the gRPC server down ends
  // its in-process calls at once, unlike calls over the network.)
  std::function<void(std::chrono::steady_clock::time_point deadline)> drain_first;
  // Stops the services' workers; called after the gRPC server has drained.
  std::function<void()> stop;
  // Optional: --drain-seconds ran out with calls still open; gRPC cancels
  // them right after (the services then report them UNAVAILABLE).
  std::function<void()> drain_expired;
  // Optional, once the model has loaded: given a function that takes health
  // to NOT_SERVING (false) and back (true) while the process cannot serve
  // for want of something else (seer-decode: no prefill endpoint reachable).
  // The function may be called from any thread, even after Serve returned.
  std::function<void(std::function<void(bool)>)> watch_health;
};

// Call BlockTerminationSignals() first thing in main, then this. Prints
//   "<program> listening on HOST:PORT metrics on HOST:PORT"
// once both are bound, and "<program> ready: ..." once the model has loaded.
// Returns the process exit code.
int Serve(const ServeConfig& config);

}  // namespace seer
