// One bad client must not hurt anyone else (issue 15), with the real
// binaries on loopback (port 0): the memory that clients that never read can
// make seer-prefill hold is bounded by --max-buffered-bytes, a stream
// cancelled with a write stuck in its socket frees its KV cache at the
// cancel, a stopped
// (SIGSTOP) prefill server is noticed in seconds and its request redone
// elsewhere, and seer-decode's health says NOT_SERVING while no prefill
// endpoint serves. The in-process twins of these are in server/service_test.cc
// (Isolation.*, Detection.*, Routing.*).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "seer/v1/seer.grpc.pb.h"
#include "tests/server_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Bin;
using seer::testing::Path;
using seer::testing::ServerProcess;
using HS = grpc::health::v1::HealthCheckResponse;

constexpr double kMiB = 1 << 20;

// A random Llama whose 1024-token KV cache is 16 MiB (tests/server_test_util.h).
std::string SlowModel() {
  static const std::string dir =
      seer::testing::WriteRandomLlama(seer::testing::TempDir("robust_model"), seer::testing::RandomLlamaSpec{});
  return dir;
}

template <typename Fn>
bool WaitFor(Fn done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

double MetricOf(const ServerProcess& p, const std::string& key) {
  auto m = seer::testing::Scrape(p.metrics_address());
  return m.ok() ? seer::testing::Metric(*m, key) : -1.0;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A Prefill call whose client never reads: its HTTP/2 window is 1 KiB and
// never grows, and it has a connection of its own.
struct StalledPrefill {
  std::unique_ptr<v1::PrefillService::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> reader;

  StalledPrefill(const std::string& address, const v1::PrefillRequest& req) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub = v1::PrefillService::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    ctx.set_deadline(std::chrono::system_clock::now() + 120s);
    reader = stub->Prefill(&ctx, req);
  }
  // Reads what got through, then the status.
  grpc::Status Drain() {
    v1::PrefillResponse msg;
    while (reader->Read(&msg)) {}
    return reader->Finish();
  }
};

v1::PrefillRequest PrefillOf(int tokens, uint32_t seed) {
  v1::PrefillRequest req;
  for (int32_t id : seer::testing::RandomIds(tokens, 512, seed)) req.add_token_ids(id);
  return req;
}

grpc::Status ReadAll(v1::PrefillService::Stub* stub, const v1::PrefillRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  while (reader->Read(&msg)) {}
  return reader->Finish();
}

// Finding 2: 20 clients that never read, each asking for 16 MiB of KV,
// under --max-concurrent 1 --max-queue 16. Before, all 20 were admitted and
// the server's RSS grew by their KV, bounded only by N x
// --stream-buffer-bytes. Now it grows by at most --max-buffered-bytes (the
// rest are RESOURCE_EXHAUSTED at once), the stalled streams are cancelled
// after --write-stall-seconds, and a second wave stays within the same
// bound: nothing accumulates. (Whether the allocator gives freed KV back to
// the system between waves is its business; the bound holds either way.)
TEST(Robustness, ClientsThatNeverReadCannotGrowThePrefillPastItsBudget) {
  constexpr int kClients = 20;
  constexpr int64_t kBudget = int64_t{100} << 20;
  ServerProcess prefill(Bin("seer-prefill"), {"--listen",
                                              "127.0.0.1:0",
                                              "--metrics",
                                              "127.0.0.1:0",
                                              "--model",
                                              SlowModel(),
                                              "--device",
                                              "cpu",
                                              "--threads",
                                              "1",
                                              "--max-concurrent",
                                              "1",
                                              "--max-queue",
                                              "16",
                                              "--chunk-bytes",
                                              "65536",
                                              "--stream-buffer-bytes",
                                              "65536",
                                              "--max-buffered-bytes",
                                              std::to_string(kBudget),
                                              "--write-stall-seconds",
                                              "3"});
  ASSERT_TRUE(prefill.Start());
  auto stub =
      v1::PrefillService::NewStub(grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials()));
  // Warm up (allocator pools, gRPC buffers) with requests that are read.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ReadAll(stub.get(), PrefillOf(1024, 100 + i)).ok());
  double done_requests = 3;

  // One wave: the clients' statuses, and the RSS while the admitted hold
  // their KV and once they are cancelled.
  struct Wave {
    int admitted = 0;
    int64_t rss_held = 0, rss_after = 0;
  };
  auto wave = [&](uint32_t seed) {
    Wave w;
    const double refused_before =
        std::max(0.0, MetricOf(prefill, "seer_prefill_requests_total{code=\"RESOURCE_EXHAUSTED\"}"));
    const double stalls_before = MetricOf(prefill, "seer_stream_write_stalls_total");
    std::vector<std::unique_ptr<StalledPrefill>> stalled;
    for (int i = 0; i < kClients; ++i)
      stalled.push_back(std::make_unique<StalledPrefill>(prefill.grpc_address(), PrefillOf(1024, seed + i)));
    // Every request is either admitted or refused at once.
    auto refused = [&] {
      return MetricOf(prefill, "seer_prefill_requests_total{code=\"RESOURCE_EXHAUSTED\"}") - refused_before;
    };
    EXPECT_TRUE(
        WaitFor([&] { return refused() + MetricOf(prefill, "seer_prefill_inflight_requests") == kClients; }, 60s));
    w.admitted = static_cast<int>(MetricOf(prefill, "seer_prefill_inflight_requests"));
    // Each admitted stream computes its whole KV, though nobody reads it.
    done_requests += w.admitted;
    EXPECT_TRUE(
        WaitFor([&] { return MetricOf(prefill, "seer_prefill_tokens_total") == 1024.0 * done_requests; }, 120s));
    w.rss_held = seer::testing::RssBytes(prefill.pid());
    // Nothing read for 3 s: cancelled, counted, freed.
    EXPECT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_prefill_inflight_requests") == 0; }, 120s));
    EXPECT_EQ(MetricOf(prefill, "seer_stream_write_stalls_total") - stalls_before, w.admitted);
    w.rss_after = seer::testing::RssBytes(prefill.pid());
    int exhausted = 0;
    for (auto& call : stalled) {
      const grpc::Status s = call->Drain();
      if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++exhausted;
        EXPECT_NE(s.error_message().find("--max-buffered-bytes"), std::string::npos) << s.error_message();
      } else {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
      }
    }
    EXPECT_EQ(exhausted, kClients - w.admitted);
    EXPECT_GE(w.admitted, 1);
    EXPECT_LE(w.admitted, 6) << "each stream holds about 16.3 MiB of the 100 MiB budget";
    return w;
  };

  const int64_t rss_before = seer::testing::RssBytes(prefill.pid());
  const Wave first = wave(0);
  const Wave second = wave(1000);
  std::printf(
      "[ info     ] %d clients that never read, twice: %d then %d admitted, the rest refused; RSS %.0f MiB "
      "before, %.0f MiB while the first held their KV (budget %.0f MiB), %.0f after they were cancelled, "
      "%.0f and %.0f for the second\n",
      kClients, first.admitted, second.admitted, rss_before / kMiB, first.rss_held / kMiB, kBudget / kMiB,
      first.rss_after / kMiB, second.rss_held / kMiB, second.rss_after / kMiB);
  // The budget bounds what the stalled streams made the server hold, in
  // either wave and after.
  const int64_t bound = rss_before + kBudget + (int64_t{48} << 20);
  for (int64_t rss : {first.rss_held, first.rss_after, second.rss_held, second.rss_after}) EXPECT_LT(rss, bound);
  EXPECT_EQ(MetricOf(prefill, "seer_prefill_requests_total{code=\"CANCELLED\"}"), first.admitted + second.admitted);
  // Their request log lines name the client, though gRPC forgets the peer of
  // a cancelled call (the log took it while the call was alive).
  int cancelled_lines = 0;
  for (const std::string& line : prefill.ErrLines()) {
    if (line.find("\"msg\":\"request\"") == std::string::npos || line.find("\"code\":\"CANCELLED\"") == std::string::npos)
      continue;
    ++cancelled_lines;
    EXPECT_NE(line.find("\"peer\":\"ipv4:127.0.0.1:"), std::string::npos) << line;
  }
  EXPECT_EQ(cancelled_lines, first.admitted + second.admitted);
  // Still serving those who read.
  EXPECT_TRUE(ReadAll(stub.get(), PrefillOf(1024, 999)).ok());
  prefill.Signal(SIGTERM);
  EXPECT_EQ(prefill.Wait(), 0);
}

// One Prefill call over HTTP/2 written by hand, on a socket that is never
// read. Its windows are 2^31 - 1 bytes, so HTTP/2 flow control never holds
// the server back: the server's writes fill the socket's buffers (the
// receive buffer is set small) and then stay stuck in the socket, which a
// gRPC client cannot be made to do reliably (its window is what it has read
// so far, and a stopped client process leaves it to timing).
class UnreadPrefillCall {
 public:
  ~UnreadPrefillCall() { Close(); }

  // Connects to `address` (IPv4 "HOST:PORT") and sends the call; false on a
  // socket error.
  bool Start(const std::string& address, const v1::PrefillRequest& req) {
    const size_t colon = address.rfind(':');
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
    if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &to.sin_addr) != 1) return false;
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int small = 16 << 10;
    if (fd_ < 0 || setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) != 0 ||
        connect(fd_, reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) {
      return false;
    }
    std::string out = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // SETTINGS: no push, streams' initial window 2^31 - 1.
    out += Frame(0x4, 0, 0, Setting(0x2, 0) + Setting(0x4, 0x7fffffff));
    // WINDOW_UPDATE on the connection, up to 2^31 - 1.
    out += Frame(0x8, 0, 0, Be32(0x7fffffff - 65535));
    std::string headers;
    for (const auto& [name, value] : {std::pair<std::string, std::string>{":method", "POST"},
                                      {":scheme", "http"},
                                      {":path", "/seer.v1.PrefillService/Prefill"},
                                      {":authority", address},
                                      {"content-type", "application/grpc"},
                                      {"te", "trailers"}}) {
      // HPACK: a literal field without indexing, new name, no Huffman; the
      // lengths fit the 7-bit prefix.
      EXPECT_LT(name.size(), 127u);
      EXPECT_LT(value.size(), 127u);
      headers += '\0';
      headers += static_cast<char>(name.size()) + name;
      headers += static_cast<char>(value.size()) + value;
    }
    out += Frame(0x1, 0x4, 1, headers);  // HEADERS, END_HEADERS
    const std::string message = req.SerializeAsString();
    out += Frame(0x0, 0x1, 1, std::string(1, '\0') + Be32(static_cast<uint32_t>(message.size())) + message);
    for (size_t sent = 0; sent < out.size();) {
      const ssize_t n = send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  static std::string Be32(uint32_t v) {
    return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
  }
  static std::string Setting(uint16_t id, uint32_t value) {
    return std::string{static_cast<char>(id >> 8), static_cast<char>(id)} + Be32(value);
  }
  static std::string Frame(uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
    const uint32_t n = static_cast<uint32_t>(payload.size());
    EXPECT_LE(n, 16384u) << "HTTP/2's smallest frame size limit";
    return std::string{static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n),
                       static_cast<char>(type), static_cast<char>(flags)} +
           Be32(stream) + payload;
  }

  int fd_ = -1;
};

// A stream cancelled for a write stall, with a write stuck in its socket,
// lets its KV cache go at the cancel. gRPC ends such a call (OnDone) only
// when the stuck write ends, at the connection's close; before the fix the
// transfer's chunk source, and a chunk in gRPC's hands, held the whole cache
// until then (docs/KV_TRANSPORT.md, section 4). The request is still in
// flight when its cache is freed, which shows the write was stuck; it ends
// when the connection closes, and the server serves on.
TEST(Robustness, AStallCancelFreesTheKvCacheWhileAWriteIsStuckInTheSocket) {
  ServerProcess prefill(Bin("seer-prefill"),
                        {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", SlowModel(), "--device",
                         "cpu", "--threads", "1", "--chunk-bytes", "1048576", "--write-stall-seconds", "2"});
  ASSERT_TRUE(prefill.Start());
  auto stub =
      v1::PrefillService::NewStub(grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials()));
  ASSERT_TRUE(ReadAll(stub.get(), PrefillOf(1024, 7)).ok());
  ASSERT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_kv_cache_bytes") == 0; }, 10s));

  UnreadPrefillCall call;
  ASSERT_TRUE(call.Start(prefill.grpc_address(), PrefillOf(1024, 8)));
  ASSERT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_kv_cache_bytes") > 0; }, 60s)) << "the call never began";
  ASSERT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_stream_write_stalls_total") >= 1; }, 60s))
      << "the stream was never cancelled for a write stall";
  const auto cancelled = std::chrono::steady_clock::now();
  const bool freed = WaitFor([&] { return MetricOf(prefill, "seer_kv_cache_bytes") == 0; }, 5s);
  const double freed_after = SecondsSince(cancelled);
  const double in_flight = MetricOf(prefill, "seer_prefill_inflight_requests");
  EXPECT_TRUE(freed) << "the KV cache is still held " << freed_after << " s after the stall cancel";
  EXPECT_EQ(in_flight, 1.0) << "the call ended at the cancel: no write was stuck, so this tested nothing";
  std::printf("[ info     ] KV cache %s %.2f s after the stall cancel, the call %s\n", freed ? "freed" : "still held",
              freed_after, in_flight == 1.0 ? "still in flight" : "ended");

  call.Close();
  EXPECT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_prefill_inflight_requests") == 0; }, 30s));
  EXPECT_TRUE(ReadAll(stub.get(), PrefillOf(1024, 9)).ok());
  prefill.Signal(SIGTERM);
  EXPECT_EQ(prefill.Wait(), 0);
}

// Finding 5: a prefill server stopped (SIGSTOP) mid-stream was noticed after
// 40 s (keepalive 30 s + 10 s). Now the decode worker's pings
// (--prefill-keepalive 2 s, --prefill-keepalive-timeout 3 s) find it within
// seconds; with --prefill-retry-broken the request is redone elsewhere.
TEST(Robustness, AStoppedPrefillIsNoticedInSecondsAndItsRequestRedoneElsewhere) {
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics",     "127.0.0.1:0", "--model",   SlowModel(),
                                   "--device", "cpu",         "--chunk-bytes", "65536",       "--threads", "1"};
  ServerProcess a(Bin("seer-prefill"), args), b(Bin("seer-prefill"), args);
  ASSERT_TRUE(a.Start());
  ASSERT_TRUE(b.Start());
  ServerProcess decode(Bin("seer-decode"), {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model",
                                            SlowModel(), "--prefill", a.grpc_address() + "," + b.grpc_address(),
                                            "--device", "cpu", "--threads", "1", "--prefill-retry-broken"});
  ASSERT_TRUE(decode.Start());
  auto stub =
      v1::DecodeService::NewStub(grpc::CreateChannel(decode.grpc_address(), grpc::InsecureChannelCredentials()));

  v1::GenerateRequest big;
  for (int32_t id : seer::testing::RandomIds(2048, 512, 9)) big.add_token_ids(id);
  big.set_max_new_tokens(2);
  std::future<grpc::Status> doomed = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 120s);
    auto reader = stub->Generate(&ctx, big);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {}
    return reader->Finish();
  });
  // Stop the server that streams this request's KV.
  ServerProcess* victim = nullptr;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (ServerProcess* p : {&a, &b})
          if (MetricOf(*p, "seer_kv_sent_bytes_total") > 0) victim = p;
        return victim != nullptr;
      },
      60s))
      << "no prefill server started streaming";
  ServerProcess* survivor = victim == &a ? &b : &a;
  victim->Signal(SIGSTOP);
  const auto stopped = std::chrono::steady_clock::now();
  // Noticed when the survivor gets the redo.
  ASSERT_TRUE(WaitFor([&] { return MetricOf(*survivor, "seer_prefill_queue_seconds_count") >= 1; }, 90s));
  const double noticed = SecondsSince(stopped);
  const grpc::Status s = doomed.get();
  std::printf(
      "[ info     ] a prefill stopped mid-stream: noticed and redone elsewhere after %.1f s, request "
      "done after %.1f s\n",
      noticed, SecondsSince(stopped));
  EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_LT(noticed, 15.0) << "a stopped prefill should be noticed within keepalive + its timeout (5 s)";
  victim->Signal(SIGCONT);
}

// Finding 5: seer-decode's health stayed SERVING while it could reach no
// prefill endpoint. Now it follows its prefill endpoints' health checks:
// NOT_SERVING while none serves (stopped, killed), SERVING again when one
// returns, here on the same port.
TEST(Robustness, DecodeHealthFollowsItsPrefillEndpoints) {
  auto prefill = std::make_unique<ServerProcess>(
      Bin("seer-prefill"), std::vector<std::string>{"--listen", "127.0.0.1:0", "--metrics", "", "--model",
                                                    Path("llama"), "--device", "cpu", "--threads", "1"});
  ASSERT_TRUE(prefill->Start());
  const std::string address = prefill->grpc_address();
  ServerProcess decode(Bin("seer-decode"), {"--listen", "127.0.0.1:0", "--metrics", "", "--model", Path("llama"),
                                            "--prefill", address, "--device", "cpu", "--threads", "1"});
  ASSERT_TRUE(decode.Start());
  auto health = [&] { return seer::testing::Health(decode.grpc_address(), "seer.v1.DecodeService"); };
  ASSERT_TRUE(WaitFor([&] { return health() == HS::SERVING; }, 30s));

  prefill->Signal(SIGSTOP);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return health() == HS::NOT_SERVING; }, 30s)) << "SERVING with its prefill stopped";
  std::printf("[ info     ] prefill stopped: decode NOT_SERVING after %.1f s\n", SecondsSince(t0));
  EXPECT_EQ(seer::testing::Health(decode.grpc_address()), HS::NOT_SERVING);
  prefill->Signal(SIGCONT);
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return health() == HS::SERVING; }, 30s));
  std::printf("[ info     ] prefill continued: decode SERVING after %.1f s\n", SecondsSince(t0));

  prefill->Signal(SIGKILL);
  prefill->Wait();
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return health() == HS::NOT_SERVING; }, 30s)) << "SERVING with its prefill gone";
  std::printf("[ info     ] prefill killed: decode NOT_SERVING after %.1f s\n", SecondsSince(t0));
  prefill = std::make_unique<ServerProcess>(
      Bin("seer-prefill"), std::vector<std::string>{"--listen", address, "--metrics", "", "--model", Path("llama"),
                                                    "--device", "cpu", "--threads", "1"});
  ASSERT_TRUE(prefill->Start());
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitFor([&] { return health() == HS::SERVING; }, 30s)) << "NOT_SERVING with its prefill back";
  std::printf("[ info     ] prefill restarted: decode SERVING after %.1f s\n", SecondsSince(t0));
  // And it serves.
  auto stub =
      v1::DecodeService::NewStub(grpc::CreateChannel(decode.grpc_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  v1::GenerateRequest req;
  for (int i = 0; i < 10; ++i) req.add_token_ids(i * 7);
  req.set_max_new_tokens(3);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  int tokens = 0;
  while (reader->Read(&msg)) tokens += msg.event_case() == v1::GenerateResponse::kToken;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 3);
}

}  // namespace
}  // namespace seer
