// TlsFront: HTTPS in front of a plaintext server of the process (here a
// MetricsHttpServer on loopback, as /metrics runs). The reference for every
// body is the plaintext server's own answer to the same request; the
// clients are OpenSSL's (tests/tls_test_util.h) and a raw socket, against a
// CA made with the openssl CLI at test time.
#include "server/common/tls_front.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include "server/common/metrics_http.h"
#include "tests/tls_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using testing::HttpGet;
using testing::HttpsGet;
using testing::Pki;
using testing::TlsClientFiles;

// A plaintext server whose /metrics body is `series` counters long (about
// 35 bytes each: 4,000 make a body of several relay buffers).
std::unique_ptr<MetricsHttpServer> Backend(int series) {
  auto r = std::make_shared<prometheus::Registry>();
  auto& family = prometheus::BuildCounter().Name("seer_test_total").Help("a test counter").Register(*r);
  for (int i = 0; i < series; ++i) family.Add({{"series", std::to_string(i)}}).Increment(i);
  auto s = MetricsHttpServer::Start("127.0.0.1:0", {r});
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

std::unique_ptr<TlsFront> Front(int backend_port, ServerTlsOptions tls, int reload_seconds = 60) {
  TlsFrontOptions o;
  o.listen = "127.0.0.1:0";
  o.flag = "--test";
  o.backend_port = backend_port;
  o.tls = std::move(tls);
  o.tls.reload_seconds = reload_seconds;
  auto f = TlsFront::Start(o);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? std::move(f).value() : nullptr;
}

std::string At(int port) { return "127.0.0.1:" + std::to_string(port); }

// A raw TCP connection to the front; -1 when refused.
int RawConnect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return close(fd), -1;
  const timeval io_timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &io_timeout, sizeof(io_timeout));
  return fd;
}

// Seconds until the server closes `fd` (read returns 0 or an error).
double SecondsUntilClosed(int fd) {
  const auto t0 = std::chrono::steady_clock::now();
  char buf[256];
  while (recv(fd, buf, sizeof(buf), 0) > 0) {}
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The front's failed-handshake count once it reaches `want` (the count is
// kept by the connection's thread, which may finish after the client).
int64_t FailedHandshakes(const TlsFront& front, int64_t want) {
  for (int i = 0; i < 50 && front.handshakes_failed() < want; ++i) std::this_thread::sleep_for(50ms);
  return front.handshakes_failed();
}

TEST(TlsFront, RelaysTheBackendsAnswerToClientsThatTrustItsCa) {
  Pki pki("tls_front");
  auto backend = Backend(4000);
  auto front = Front(backend->port(), {pki.F("a-server.crt"), pki.F("a-server.key"), ""});
  ASSERT_TRUE(front);
  StatusOr<std::string> want = HttpGet(At(backend->port()), "/metrics");
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  ASSERT_GT(want->size(), 2u * 65536);  // several relay buffers' worth
  StatusOr<std::string> got = HttpsGet(At(front->port()), "/metrics", {pki.F("a-ca.crt")});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, *want);
  // By name, too: the certificate names localhost and 127.0.0.1.
  StatusOr<std::string> by_name = HttpsGet("localhost:" + std::to_string(front->port()), "/livez", {pki.F("a-ca.crt")});
  EXPECT_TRUE(by_name.ok()) << by_name.status().ToString();

  // A client that trusts another CA refuses the server.
  StatusOr<std::string> wrong_ca = HttpsGet(At(front->port()), "/livez", {pki.F("b-ca.crt")});
  ASSERT_FALSE(wrong_ca.ok());
  EXPECT_NE(wrong_ca.status().message().find("certificate verify failed"), std::string::npos)
      << wrong_ca.status().ToString();
  // A plaintext client is told, in plaintext, what the port speaks.
  StatusOr<std::string> plaintext = HttpGet(At(front->port()), "/livez");
  ASSERT_FALSE(plaintext.ok());
  EXPECT_NE(plaintext.status().message().find("400 Bad Request"), std::string::npos) << plaintext.status().ToString();
  EXPECT_EQ(FailedHandshakes(*front, 2), 2);
}

TEST(TlsFront, MutualTlsNeedsAClientCertificateFromItsCa) {
  Pki pki("tls_front_mtls");
  auto backend = Backend(1);
  auto front = Front(backend->port(), {pki.F("a-server.crt"), pki.F("a-server.key"), pki.F("a-ca.crt")});
  ASSERT_TRUE(front);
  StatusOr<std::string> ok =
      HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt"), pki.F("a-client.crt"), pki.F("a-client.key")});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, "ok\n");
  StatusOr<std::string> no_cert = HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt")});
  EXPECT_FALSE(no_cert.ok());
  StatusOr<std::string> other_ca =
      HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt"), pki.F("b-client.crt"), pki.F("b-client.key")});
  EXPECT_FALSE(other_ca.ok());
  EXPECT_EQ(FailedHandshakes(*front, 2), 2);
}

TEST(TlsFront, ARenewedCertificateIsServedWithoutARestart) {
  Pki pki("tls_front_reload");
  const std::string cert = pki.F("live.crt"), key = pki.F("live.key");
  std::filesystem::copy_file(pki.F("a-server.crt"), cert);
  std::filesystem::copy_file(pki.F("a-server.key"), key);
  auto backend = Backend(1);
  auto front = Front(backend->port(), {cert, key, ""}, /*reload_seconds=*/1);
  ASSERT_TRUE(front);
  EXPECT_TRUE(HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt")}).ok());

  // A certificate caught without its key (a Secret half updated) does not
  // load: the old pair stays in service.
  std::filesystem::copy_file(pki.F("b-server.crt"), cert + ".new");
  std::filesystem::rename(cert + ".new", cert);
  std::this_thread::sleep_for(2500ms);
  EXPECT_EQ(front->reloads(), 0);
  EXPECT_TRUE(HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt")}).ok());

  // With its key it does, for new connections.
  std::filesystem::copy_file(pki.F("b-server.key"), key + ".new");
  std::filesystem::rename(key + ".new", key);
  bool switched = false;
  for (int i = 0; i < 40 && !switched; ++i) {
    std::this_thread::sleep_for(250ms);
    switched = HttpsGet(At(front->port()), "/livez", {pki.F("b-ca.crt")}).ok();
  }
  EXPECT_TRUE(switched) << "the new certificate was not served within 10 s";
  EXPECT_EQ(front->reloads(), 1);
  EXPECT_FALSE(HttpsGet(At(front->port()), "/livez", {pki.F("a-ca.crt")}).ok());
}

TEST(TlsFront, SilentAndSurplusConnectionsAreClosedWithoutBlockingOthers) {
  Pki pki("tls_front_bounds");
  auto backend = Backend(1);
  TlsFrontOptions o;
  o.listen = "127.0.0.1:0";
  o.flag = "--test";
  o.backend_port = backend->port();
  o.tls = {pki.F("a-server.crt"), pki.F("a-server.key"), ""};
  o.max_connections = 3;
  o.handshake_timeout_ms = 1500;
  StatusOr<std::unique_ptr<TlsFront>> front = TlsFront::Start(o);
  ASSERT_TRUE(front.ok()) << front.status().ToString();
  const int port = (*front)->port();

  // Two clients that connect and say nothing hold two of the three places.
  const int silent1 = RawConnect(port), silent2 = RawConnect(port);
  ASSERT_GE(silent1, 0);
  ASSERT_GE(silent2, 0);
  std::this_thread::sleep_for(200ms);
  // The third place still serves.
  EXPECT_TRUE(HttpsGet(At(port), "/livez", {pki.F("a-ca.crt")}).ok());
  std::this_thread::sleep_for(100ms);  // its connection's thread ends
  // With a third silent client the front is full: a fourth is closed at once.
  const int silent3 = RawConnect(port);
  std::this_thread::sleep_for(200ms);
  const int surplus = RawConnect(port);
  ASSERT_GE(surplus, 0);
  EXPECT_LT(SecondsUntilClosed(surplus), 0.5);
  // The silent ones are dropped at the handshake deadline, and the places
  // are free again.
  EXPECT_LT(SecondsUntilClosed(silent1), 3.0);
  EXPECT_LT(SecondsUntilClosed(silent2), 3.0);
  EXPECT_LT(SecondsUntilClosed(silent3), 3.0);
  for (int fd : {silent1, silent2, silent3, surplus}) close(fd);
  std::this_thread::sleep_for(1500ms);  // the accept loop reaps once a second
  EXPECT_TRUE(HttpsGet(At(port), "/livez", {pki.F("a-ca.crt")}).ok());
  EXPECT_GE(FailedHandshakes(**front, 3), 3);

  // Stopping with a connection open returns at once.
  const int open = RawConnect(port);
  const auto t0 = std::chrono::steady_clock::now();
  front->reset();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.5);
  close(open);
}

TEST(TlsFront, BadFilesAndAddressesAreNamed) {
  Pki pki("tls_front_flags");
  TlsFrontOptions o;
  o.listen = "127.0.0.1:0";
  o.flag = "--test";
  o.tls = {pki.F("a-server.crt"), pki.F("b-server.key"), ""};
  StatusOr<std::unique_ptr<TlsFront>> mismatched = TlsFront::Start(o);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_NE(mismatched.status().message().find("--tls-key"), std::string::npos) << mismatched.status().ToString();
  o.tls = {pki.F("a-server.crt"), pki.F("a-server.key"), ""};
  o.listen = "127.0.0.1:notaport";
  StatusOr<std::unique_ptr<TlsFront>> bad_address = TlsFront::Start(o);
  ASSERT_FALSE(bad_address.ok());
  EXPECT_NE(bad_address.status().message().find("--test"), std::string::npos) << bad_address.status().ToString();
  o.tls = {};
  o.listen = "127.0.0.1:0";
  EXPECT_EQ(TlsFront::Start(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace seer
