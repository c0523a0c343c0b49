#include "server/common/serve.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "server/common/grpc_server.h"
#include "server/common/metrics.h"

namespace seer {

int Serve(const ServeConfig& config) {
  const char* program = config.program.c_str();
  StatusOr<std::unique_ptr<GrpcServer>> server =
      GrpcServer::Start(config.listen, config.services, config.health_names, config.max_receive_bytes);
  if (!server.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, server.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<MetricsEndpoint> metrics;
  std::string metrics_address = "off";
  if (!config.metrics.empty()) {
    std::string host;
    int port = 0;
    if (Status s = SplitHostPort(config.metrics, "--metrics", &host, &port); !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", program, s.ToString().c_str());
      return 2;
    }
    StatusOr<std::unique_ptr<MetricsEndpoint>> started = MetricsEndpoint::Start(config.metrics, config.registry);
    if (!started.ok()) {
      std::fprintf(stderr, "%s: %s\n", program, started.status().ToString().c_str());
      return 1;
    }
    metrics = std::move(started).value();
    metrics_address = host + ":" + std::to_string(metrics->port());
  }
  std::printf("%s listening on %s metrics on %s\n", program, (*server)->address().c_str(), metrics_address.c_str());
  std::fflush(stdout);

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
  };
  auto gate = std::make_shared<HealthGate>();
  gate->server = server->get();
  auto close_gate = [gate] {
    std::lock_guard<std::mutex> lock(gate->mu);
    gate->closed = true;
  };

  // Load the model on its own thread so that SIGTERM still works meanwhile; a
  // failed load wakes the main thread with SIGTERM after setting the code.
  std::atomic<bool> loaded{false};
  std::atomic<int> load_failed{0};
  std::thread loader([&] {
    const auto start = std::chrono::steady_clock::now();
    StatusOr<std::string> what = config.load();
    if (!what.ok()) {
      std::fprintf(stderr, "%s: loading the model failed: %s\n", program, what.status().ToString().c_str());
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
  });

  const int sig = WaitForTerminationSignal();
  close_gate();
  if (load_failed) {
    loader.join();
    (*server)->Shutdown(0.0);
    if (config.stop) config.stop();
    return 1;
  }
  std::fprintf(stderr, "%s: %s received: health NOT_SERVING, draining in-flight streams (up to %.0f s)\n", program,
               sig == SIGTERM ? "SIGTERM" : "SIGINT", config.drain_seconds);
  (*server)->Shutdown(config.drain_seconds);
  if (!loaded) {
    // Still loading: nothing was served, and the load cannot be interrupted.
    std::fprintf(stderr, "%s: stopped while loading the model\n", program);
    std::fflush(stderr);
    _exit(0);
  }
  loader.join();
  if (config.stop) config.stop();
  std::fprintf(stderr, "%s: drained, exiting\n", program);
  return 0;
}

}  // namespace seer
