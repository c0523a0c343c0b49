// The /metrics endpoint: Prometheus text from every collectable, on IPv4 and
// IPv6; connections that never send a request, or send it a byte at a time,
// cannot hold up a scrape, however many there are.
#include "server/common/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/registry.h>

namespace seer {
namespace {

int Connect(int family, int port) {
  const int fd = socket(family, SOCK_STREAM, 0);
  if (family == AF_INET6) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    a.sin6_addr = in6addr_loopback;
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return close(fd), -1;
  } else {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return close(fd), -1;
  }
  return fd;
}

// A whole scrape; the time it took, in seconds.
std::string Scrape(int family, int port, const std::string& path, double* seconds = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  const int fd = Connect(family, port);
  if (fd < 0) return "";
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n";
  send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fd);
  if (seconds) *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::shared_ptr<prometheus::Registry> Registry() {
  auto r = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("seer_test_total").Help("a test counter").Register(*r).Add({}).Increment(3);
  return r;
}

TEST(MetricsHttp, ServesPrometheusTextOnIpv4AndIpv6) {
  auto v4 = MetricsHttpServer::Start("127.0.0.1:0", {Registry()});
  ASSERT_TRUE(v4.ok()) << v4.status().ToString();
  const std::string body = Scrape(AF_INET, (*v4)->port(), "/metrics");
  EXPECT_NE(body.find("HTTP/1.1 200"), std::string::npos) << body;
  EXPECT_NE(body.find("seer_test_total 3"), std::string::npos) << body;
  EXPECT_NE(Scrape(AF_INET, (*v4)->port(), "/other").find("HTTP/1.1 404"), std::string::npos);

  auto v6 = MetricsHttpServer::Start("[::1]:0", {Registry()});
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_NE(Scrape(AF_INET6, (*v6)->port(), "/metrics").find("seer_test_total 3"), std::string::npos);
  // A port in use is an error, not a shared port.
  auto again = MetricsHttpServer::Start("127.0.0.1:" + std::to_string((*v4)->port()), {Registry()});
  EXPECT_EQ(again.status().code(), StatusCode::kUnavailable);
}

// The probes: /livez always, /readyz as the callback says (503 otherwise).
TEST(MetricsHttp, ProbesAnswerLiveAndReadyAsTheServerSays) {
  std::atomic<bool> ready{false};
  auto s = MetricsHttpServer::Start("127.0.0.1:0", {Registry()}, [&ready] { return ready.load(); });
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const int port = (*s)->port();
  EXPECT_NE(Scrape(AF_INET, port, "/livez").find("HTTP/1.1 200"), std::string::npos);
  EXPECT_NE(Scrape(AF_INET, port, "/readyz").find("HTTP/1.1 503"), std::string::npos);
  ready = true;
  EXPECT_NE(Scrape(AF_INET, port, "/readyz").find("HTTP/1.1 200"), std::string::npos);
  ready = false;
  EXPECT_NE(Scrape(AF_INET, port, "/readyz").find("HTTP/1.1 503"), std::string::npos);
  // Without a callback, ready is live.
  auto plain = MetricsHttpServer::Start("127.0.0.1:0", {Registry()});
  ASSERT_TRUE(plain.ok());
  EXPECT_NE(Scrape(AF_INET, (*plain)->port(), "/readyz").find("HTTP/1.1 200"), std::string::npos);
}

TEST(MetricsHttp, IdleAndSlowConnectionsDoNotHoldUpAScrape) {
  auto server = MetricsHttpServer::Start("127.0.0.1:0", {Registry()});
  ASSERT_TRUE(server.ok());
  std::vector<int> idle;
  for (int i = 0; i < 600; ++i) idle.push_back(Connect(AF_INET, (*server)->port()));
  const int slow = Connect(AF_INET, (*server)->port());
  send(slow, "GE", 2, MSG_NOSIGNAL);  // and never the rest
  double seconds = 0.0;
  const std::string body = Scrape(AF_INET, (*server)->port(), "/metrics", &seconds);
  EXPECT_NE(body.find("seer_test_total 3"), std::string::npos);
  EXPECT_LT(seconds, 2.0) << "a scrape waited on idle connections";
  for (int fd : idle) {
    if (fd >= 0) close(fd);
  }
  close(slow);
}

}  // namespace
}  // namespace seer
