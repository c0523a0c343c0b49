// The KV transports with the real binaries on loopback (port 0): a peer
// killed in the middle of a multi-stream gRPC transfer leaves the survivor's
// in-flight gauges (seer_kv_transfers_inflight, the request gauges) back at 0,
// the failure counted, and the survivor serving (docs/KV_TRANSPORT.md,
// section 6). GPU-to-GPU (NCCL) runs are in disagg_nccl_gpu_test.cc.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <future>
#include <map>
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
using seer::testing::ServerProcess;

// A random Llama whose CPU prefill of a few thousand tokens takes seconds
// (tests/server_test_util.h).
std::string SlowModel() {
  static const std::string dir =
      seer::testing::WriteRandomLlama(seer::testing::TempDir("kv_transport_model"), seer::testing::RandomLlamaSpec{});
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

std::map<std::string, double> Scrape(const ServerProcess& p) {
  auto m = seer::testing::Scrape(p.metrics_address());
  return m.ok() ? *m : std::map<std::string, double>{};
}

double MetricOf(const ServerProcess& p, const std::string& key) { return seer::testing::Metric(Scrape(p), key); }

// The sum of a family's series whose labels contain `label`.
double SumOf(const ServerProcess& p, const std::string& family, const std::string& label) {
  double sum = 0;
  for (const auto& [key, value] : Scrape(p))
    if (key.rfind(family + "{", 0) == 0 && key.find(label) != std::string::npos) sum += value;
  return sum;
}

std::vector<std::string> PrefillArgs() {
  return {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",   "--model", SlowModel(),         "--device",
          "cpu",      "--threads",   "1",         "--chunk-bytes", "65536",   "--kv-grpc-streams", "4"};
}

std::vector<std::string> DecodeArgs(const std::string& prefill) {
  return {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", SlowModel(),         "--device",
          "cpu",      "--threads",   "1",         "--prefill",   prefill,   "--kv-grpc-streams", "4"};
}

v1::GenerateRequest GenerateOf(int tokens, uint32_t seed) {
  v1::GenerateRequest g;
  for (int32_t id : seer::testing::RandomIds(tokens, 512, seed)) g.add_token_ids(id);
  g.set_max_new_tokens(4);
  return g;
}

grpc::Status Generate(const std::string& address, const v1::GenerateRequest& g) {
  auto stub = v1::DecodeService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Generate(&ctx, g);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {}
  return reader->Finish();
}

constexpr const char kSendInflight[] = "seer_kv_transfers_inflight{side=\"send\",transport=\"grpc\"}";
constexpr const char kReceiveInflight[] = "seer_kv_transfers_inflight{side=\"receive\",transport=\"grpc\"}";

// The decode worker is killed while the prefill sends it a prompt's KV over
// four streams: every stream breaks, the prefill stops, and its gauges are
// back at 0 with the failure counted; it still serves.
TEST(KvTransportEndToEnd, AKilledDecodeWorkerLeavesThePrefillsGaugesAtZero) {
  ServerProcess prefill(Bin("seer-prefill"), PrefillArgs());
  ASSERT_TRUE(prefill.Start());
  auto decode = std::make_unique<ServerProcess>(Bin("seer-decode"), DecodeArgs(prefill.grpc_address()));
  ASSERT_TRUE(decode->Start());
  EXPECT_EQ(MetricOf(prefill, kSendInflight), 0);

  auto call = std::async(std::launch::async, [&] { return Generate(decode->grpc_address(), GenerateOf(3000, 1)); });
  ASSERT_TRUE(WaitFor([&] { return MetricOf(prefill, kSendInflight) == 1; }, 60s));
  decode->Signal(SIGKILL);
  decode->Wait();
  EXPECT_FALSE(call.get().ok());

  EXPECT_TRUE(WaitFor([&] { return MetricOf(prefill, kSendInflight) == 0; }, 60s)) << MetricOf(prefill, kSendInflight);
  EXPECT_TRUE(WaitFor([&] { return MetricOf(prefill, "seer_prefill_inflight_requests") == 0; }, 60s));
  EXPECT_EQ(SumOf(prefill, "seer_kv_transfer_failures_total", "side=\"send\""), 1);
  EXPECT_EQ(MetricOf(prefill, "seer_kv_cache_bytes"), 0);

  // A new decode worker is served in full.
  ServerProcess again(Bin("seer-decode"), DecodeArgs(prefill.grpc_address()));
  ASSERT_TRUE(again.Start());
  const grpc::Status s = Generate(again.grpc_address(), GenerateOf(200, 2));
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(MetricOf(prefill, "seer_kv_transfers_total{side=\"send\",transport=\"grpc\",wire=\"f32\"}"), 1);
  EXPECT_EQ(MetricOf(again, "seer_kv_transfers_total{side=\"receive\",transport=\"grpc\",wire=\"f32\"}"), 1);
  EXPECT_EQ(MetricOf(prefill, kSendInflight), 0);
}

// The prefill server is killed while the decode worker receives a prompt's
// KV over four streams: the request fails UNAVAILABLE, and the decode
// worker's gauges are back at 0 with the failure counted.
TEST(KvTransportEndToEnd, AKilledPrefillLeavesTheDecodeWorkersGaugesAtZero) {
  auto prefill = std::make_unique<ServerProcess>(Bin("seer-prefill"), PrefillArgs());
  ASSERT_TRUE(prefill->Start());
  ServerProcess decode(Bin("seer-decode"), DecodeArgs(prefill->grpc_address()));
  ASSERT_TRUE(decode.Start());

  auto call = std::async(std::launch::async, [&] { return Generate(decode.grpc_address(), GenerateOf(3000, 3)); });
  ASSERT_TRUE(WaitFor([&] { return MetricOf(decode, kReceiveInflight) == 1; }, 60s));
  ASSERT_TRUE(WaitFor([&] { return MetricOf(decode, "seer_kv_received_bytes_total") > 0; }, 120s));
  prefill->Signal(SIGKILL);
  prefill->Wait();
  const grpc::Status s = call.get();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();

  EXPECT_TRUE(WaitFor([&] { return MetricOf(decode, kReceiveInflight) == 0; }, 30s));
  EXPECT_TRUE(WaitFor([&] { return MetricOf(decode, "seer_decode_inflight_requests") == 0; }, 30s));
  EXPECT_EQ(SumOf(decode, "seer_kv_transfer_failures_total", "side=\"receive\""), 1);
  EXPECT_EQ(MetricOf(decode, "seer_kv_cache_bytes"), 0);
}

}  // namespace
}  // namespace seer
