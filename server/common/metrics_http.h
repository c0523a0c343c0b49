// The /metrics HTTP endpoint: one poll(2) loop that serves GET /metrics in
// Prometheus' text format from any number of collectables, and the probes
// GET /livez (200 while the process answers) and GET /readyz (200 while
// `ready` says so, else 503: the gRPC health status, for probes that cannot
// speak TLS to the gRPC port), on IPv4 or IPv6
// ("[::]:9090"). Every connection is non-blocking and has a deadline from
// its accept (kMetricsRequestTimeoutMs): an idle or slow connection is
// dropped when it passes, and however many of them there are, they never
// hold up a scrape (no thread per connection).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <prometheus/collectable.h>

#include "base/status.h"

namespace seer {

inline constexpr int kMetricsRequestTimeoutMs = 5000;
inline constexpr int kMetricsMaxConnections = 512;

class MetricsHttpServer {
 public:
  // `address` is host:port or [v6-host]:port; port 0 picks a free one.
  // UNAVAILABLE when it cannot be bound (in use, not local).
  // `ready` (may be empty: /readyz is then 200 like /livez) is called on the
  // server's thread for each /readyz.
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
      std::function<bool()> ready = nullptr);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Loop();
  std::string Body() const;

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::function<bool()> ready_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // a pipe that ends the loop
  int port_ = 0;
  std::thread thread_;
};

}  // namespace seer
