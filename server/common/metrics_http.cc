#include "server/common/metrics_http.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include <prometheus/text_serializer.h>

#include "server/common/listen_socket.h"

namespace seer {
namespace {

using MetricsClock = std::chrono::steady_clock;

constexpr size_t kMaxRequestHeadBytes = 8192;

struct Connection {
  int fd = -1;
  MetricsClock::time_point deadline;
  std::string in;  // the request so far
  std::string out;  // the response left to write
  size_t sent = 0;
};

std::string Response(int code, const char* reason, const std::string& type, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

}  // namespace

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
    std::function<bool()> ready) {
  SEER_ASSIGN_OR_RETURN(ListenSocket listening, ListenTcp(address, "--metrics"));
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer());
  s->collectables_ = std::move(collectables);
  s->ready_ = std::move(ready);
  s->listen_fd_ = listening.fd;
  s->port_ = listening.port;
  if (pipe2(s->wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0)
    return Internal("metrics: pipe: " + std::string(std::strerror(errno)));
  s->thread_ = std::thread([p = s.get()] { p->Loop(); });
  return s;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (thread_.joinable()) {
    const char byte = 0;
    (void)!write(wake_fds_[1], &byte, 1);
    thread_.join();
  }
  for (int fd : {listen_fd_, wake_fds_[0], wake_fds_[1]}) {
    if (fd >= 0) close(fd);
  }
}

std::string MetricsHttpServer::Body() const {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& c : collectables_) {
    std::vector<prometheus::MetricFamily> f = c->Collect();
    families.insert(families.end(), std::make_move_iterator(f.begin()), std::make_move_iterator(f.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

void MetricsHttpServer::Loop() {
  std::vector<Connection> conns;
  for (;;) {
    std::vector<pollfd> fds = {{wake_fds_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const Connection& c : conns) fds.push_back({c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
    const MetricsClock::time_point now = MetricsClock::now();
    int timeout_ms = 1000;
    for (const Connection& c : conns) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c.deadline - now).count();
      timeout_ms = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(timeout_ms, left)));
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) return;
    if (fds[0].revents != 0) return;
    // Read requests, answer complete ones, write answers, drop the expired
    // and the finished (fds[i + 2] is conns[i]).
    std::vector<bool> done(conns.size(), false);
    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& c = conns[i];
      const short ev = fds[i + 2].revents;
      if (ev & (POLLERR | POLLHUP | POLLNVAL)) {
        done[i] = c.out.empty();  // a peer that half-closed may still read the answer
      }
      if (c.out.empty() && (ev & POLLIN)) {
        char buf[4096];
        const ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          done[i] = true;
          continue;
        }
        c.in.append(buf, static_cast<size_t>(n));
        if (c.in.find("\r\n\r\n") != std::string::npos) {
          const bool get = c.in.rfind("GET ", 0) == 0;
          const size_t sp = c.in.find(' ', 4);
          const std::string path = get && sp != std::string::npos ? c.in.substr(4, sp - 4) : "";
          if (get && (path == "/metrics" || path.rfind("/metrics?", 0) == 0)) {
            c.out = Response(200, "OK", "text/plain; version=0.0.4", Body());
          } else if (get && path == "/livez") {
            c.out = Response(200, "OK", "text/plain", "ok\n");
          } else if (get && path == "/readyz") {
            c.out = !ready_ || ready_() ? Response(200, "OK", "text/plain", "ready\n")
                                        : Response(503, "Service Unavailable", "text/plain", "not ready\n");
          } else {
            c.out = Response(404, "Not Found", "text/plain", "GET /metrics, /livez and /readyz are served here\n");
          }
        } else if (c.in.size() > kMaxRequestHeadBytes) {
          c.out = Response(431, "Request Header Fields Too Large", "text/plain", "request too large\n");
        }
      }
      if (!c.out.empty() && (ev & POLLOUT)) {
        const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
          done[i] = true;
        } else if (n > 0) {
          c.sent += static_cast<size_t>(n);
          done[i] = c.sent == c.out.size();
        }
      }
      if (MetricsClock::now() > c.deadline) done[i] = true;
    }
    std::vector<Connection> kept;
    for (size_t i = 0; i < conns.size(); ++i) {
      if (done[i]) {
        close(conns[i].fd);
      } else {
        kept.push_back(std::move(conns[i]));
      }
    }
    conns.swap(kept);
    // New connections, each with its deadline; beyond the cap the oldest goes.
    if (fds[1].revents & POLLIN) {
      for (;;) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (static_cast<int>(conns.size()) >= kMetricsMaxConnections) {
          close(conns.front().fd);
          conns.erase(conns.begin());
        }
        conns.push_back({fd, MetricsClock::now() + std::chrono::milliseconds(kMetricsRequestTimeoutMs), "", "", 0});
      }
    }
  }
}

}  // namespace seer
