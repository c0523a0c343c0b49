// GPU to GPU: seer-prefill on cuda:0 and seer-decode on cuda:1 of one host
// with NCCL (docs/KV_TRANSPORT.md, sections 2 and 3). The first request of
// the pair goes over gRPC while the link is set up and says so; once the
// link is ready, requests (two at once among them) move their KV over the one
// link, and every request's tokens equal those of a decode worker that takes
// the same prompts over gRPC (bf16 both ways: the same bytes), both into the
// batched decode's KV pages and into an unbatched worker's contiguous cache.
// A prefill killed under load fails its requests within seconds, with
// nothing left in flight, and its successor gets a fresh link. Skips without
// an NCCL build or two GPUs.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <memory>
#include <future>
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

int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  cudaGetLastError();
  return n;
}

struct Generated {
  grpc::Status status;
  std::vector<int32_t> tokens;
  v1::GenerateSummary summary;
};

Generated Generate(const std::string& address, const std::vector<int32_t>& ids) {
  auto stub = v1::DecodeService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::GenerateRequest g;
  for (int32_t id : ids) g.add_token_ids(id);
  g.set_max_new_tokens(16);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 300s);
  auto reader = stub->Generate(&ctx, g);
  Generated out;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.event_case() == v1::GenerateResponse::kToken) out.tokens.push_back(msg.token());
    if (msg.has_summary()) out.summary = msg.summary();
  }
  out.status = reader->Finish();
  return out;
}

double MetricOf(const ServerProcess& p, const std::string& key) {
  auto m = seer::testing::Scrape(p.metrics_address());
  return m.ok() ? seer::testing::Metric(*m, key) : -1.0;
}

std::vector<std::string> Args(const std::string& device, std::vector<std::string> more) {
  std::vector<std::string> a = {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                "--model",  Path("llama"), "--device",  device};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

TEST(DisaggNccl, TwoRequestsOverOneLinkGiveTheTokensOfTheGrpcPath) {
#ifndef SEER_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#endif
  if (GpuCount() < 2) GTEST_SKIP() << "needs two GPUs (found " << GpuCount() << ")";
  ServerProcess prefill(Bin("seer-prefill"), Args("cuda:0", {"--kv-transports", "nccl,grpc"}));
  ASSERT_TRUE(prefill.Start(300s));
  ServerProcess nccl(Bin("seer-decode"),
                     Args("cuda:1", {"--prefill", prefill.grpc_address(), "--kv-transports", "nccl,grpc"}));
  ASSERT_TRUE(nccl.Start(300s));
  ServerProcess grpc_only(Bin("seer-decode"), Args("cuda:1", {"--prefill", prefill.grpc_address(), "--kv-transports",
                                                              "grpc", "--kv-grpc-streams", "4"}));
  ASSERT_TRUE(grpc_only.Start(300s));
  // Unbatched: NCCL straight into a contiguous device cache (the batched
  // worker above lands it in KV pages through a staging layer).
  ServerProcess unbatched(Bin("seer-decode"), Args("cuda:1", {"--prefill", prefill.grpc_address(), "--kv-transports",
                                                              "nccl,grpc", "--max-batch", "0"}));
  ASSERT_TRUE(unbatched.Start(300s));

  const std::vector<int32_t> a = seer::testing::RandomIds(1500, 128, 1), b = seer::testing::RandomIds(1200, 128, 2),
                             c = seer::testing::RandomIds(900, 128, 3);
  // The first request of the pair: gRPC, while the link is set up.
  Generated first = Generate(nccl.grpc_address(), a);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.summary.kv_transfer().transport(), v1::KV_TRANSPORT_GRPC);
  EXPECT_NE(first.summary.kv_transfer().fallback_reason().find("being set up"), std::string::npos)
      << first.summary.kv_transfer().fallback_reason();

  // Then over the link, once both sides find it ready.
  Generated over_link;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < deadline) {
    over_link = Generate(nccl.grpc_address(), a);
    ASSERT_TRUE(over_link.status.ok()) << over_link.status.error_message();
    if (over_link.summary.kv_transfer().transport() == v1::KV_TRANSPORT_NCCL) break;
    std::this_thread::sleep_for(500ms);
  }
  ASSERT_EQ(over_link.summary.kv_transfer().transport(), v1::KV_TRANSPORT_NCCL)
      << "the link never became ready: " << over_link.summary.kv_transfer().fallback_reason();
  EXPECT_EQ(over_link.summary.kv_transfer().fallback_reason(), "");

  // Two at once over the same link (their transfers in the prefill's engine
  // order, whatever order their headers reach the decode worker in).
  auto fb = std::async(std::launch::async, [&] { return Generate(nccl.grpc_address(), b); });
  auto fc = std::async(std::launch::async, [&] { return Generate(nccl.grpc_address(), c); });
  const Generated gb = fb.get(), gc = fc.get();
  for (const Generated* g : {&gb, &gc}) {
    ASSERT_TRUE(g->status.ok()) << g->status.error_message();
    EXPECT_EQ(g->summary.kv_transfer().transport(), v1::KV_TRANSPORT_NCCL);
    EXPECT_GT(g->summary.kv_transfer().bytes(), 0);
  }
  EXPECT_EQ(MetricOf(prefill, "seer_kv_nccl_links{state=\"ready\"}"), 1);
  EXPECT_EQ(MetricOf(nccl, "seer_kv_nccl_links{state=\"ready\"}"), 1);
  EXPECT_GE(MetricOf(prefill, "seer_kv_transfers_total{side=\"send\",transport=\"nccl\",wire=\"bf16\"}"), 3);

  // The unbatched worker over its own link.
  Generated solo;
  const auto solo_deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < solo_deadline) {
    solo = Generate(unbatched.grpc_address(), b);
    ASSERT_TRUE(solo.status.ok()) << solo.status.error_message();
    if (solo.summary.kv_transfer().transport() == v1::KV_TRANSPORT_NCCL) break;
    std::this_thread::sleep_for(500ms);
  }
  EXPECT_EQ(solo.summary.kv_transfer().transport(), v1::KV_TRANSPORT_NCCL)
      << solo.summary.kv_transfer().fallback_reason();
  EXPECT_EQ(solo.tokens, gb.tokens);
  // The same prompts over gRPC: the same tokens.
  for (const auto& [ids, got] : std::vector<std::pair<std::vector<int32_t>, const Generated*>>{
           {a, &first}, {a, &over_link}, {b, &gb}, {c, &gc}}) {
    const Generated ref = Generate(grpc_only.grpc_address(), ids);
    ASSERT_TRUE(ref.status.ok()) << ref.status.error_message();
    EXPECT_EQ(ref.summary.kv_transfer().transport(), v1::KV_TRANSPORT_GRPC);
    EXPECT_EQ(got->tokens, ref.tokens);
  }
  for (const ServerProcess* p : {&prefill, &nccl, &grpc_only, &unbatched}) {
    EXPECT_EQ(MetricOf(*p, p == &prefill ? "seer_kv_transfers_inflight{side=\"send\",transport=\"nccl\"}"
                                         : "seer_kv_transfers_inflight{side=\"receive\",transport=\"nccl\"}"),
              0);
  }
  EXPECT_EQ(MetricOf(prefill, "seer_prefill_inflight_requests"), 0);
}

// Requests keep arriving while the prefill is killed: each ends within
// seconds, OK or UNAVAILABLE (never a hang), the decode worker has nothing
// left in flight and drops the dead link, and a prefill restarted at the same
// address gets a fresh link that carries the KV again.
TEST(DisaggNccl, AKilledPrefillFailsItsRequestsFastAndItsSuccessorGetsAFreshLink) {
#ifndef SEER_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#endif
  if (GpuCount() < 2) GTEST_SKIP() << "needs two GPUs (found " << GpuCount() << ")";
  auto prefill = std::make_unique<ServerProcess>(Bin("seer-prefill"), Args("cuda:0", {"--kv-transports", "nccl,grpc"}));
  ASSERT_TRUE(prefill->Start(300s));
  const std::string address = prefill->grpc_address();
  ServerProcess decode(Bin("seer-decode"), Args("cuda:1", {"--prefill", address, "--kv-transports", "nccl,grpc",
                                                           "--kv-nccl-stall-seconds", "3", "--prefill-timeout", "30"}));
  ASSERT_TRUE(decode.Start(300s));
  const std::vector<int32_t> ids = seer::testing::RandomIds(2000, 128, 7);
  auto over_nccl = [&] {
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      const Generated g = Generate(decode.grpc_address(), ids);
      if (g.status.ok() && g.summary.kv_transfer().transport() == v1::KV_TRANSPORT_NCCL) return true;
      std::this_thread::sleep_for(300ms);
    }
    return false;
  };
  ASSERT_TRUE(over_nccl());

  // Four clients in a loop; the prefill dies under them.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::atomic<double> slowest{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        const auto t0 = std::chrono::steady_clock::now();
        const Generated g = Generate(decode.grpc_address(), ids);
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (took > slowest.load()) slowest.store(took);
        if (g.status.ok()) {
          ++ok;
        } else if (g.status.error_code() == grpc::StatusCode::UNAVAILABLE) {
          ++unavailable;
        } else {
          ++other;
          ADD_FAILURE() << g.status.error_code() << ": " << g.status.error_message();
        }
      }
    });
  }
  std::this_thread::sleep_for(1500ms);
  prefill->Signal(SIGKILL);
  prefill->Wait();
  std::this_thread::sleep_for(3s);
  stop = true;
  for (std::thread& t : clients) t.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_GT(unavailable.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_LT(slowest.load(), 15.0) << "a request outlived the dead prefill by too long";
  EXPECT_EQ(MetricOf(decode, "seer_kv_transfers_inflight{side=\"receive\",transport=\"nccl\"}"), 0);
  EXPECT_EQ(MetricOf(decode, "seer_decode_inflight_requests"), 0);

  // Its successor, at the same address: a fresh link.
  prefill = std::make_unique<ServerProcess>(
      Bin("seer-prefill"),
      std::vector<std::string>{"--listen", address, "--metrics", "127.0.0.1:0", "--model", Path("llama"), "--device",
                               "cuda:0", "--kv-transports", "nccl,grpc"});
  ASSERT_TRUE(prefill->Start(300s));
  EXPECT_TRUE(over_nccl()) << "no NCCL transfer with the restarted prefill";
  EXPECT_EQ(MetricOf(decode, "seer_kv_nccl_links{state=\"ready\"}"), 1);
  EXPECT_EQ(MetricOf(*prefill, "seer_kv_nccl_links{state=\"ready\"}"), 1);
}

// Both prefix stores over the link: a chat's next turn (the last prompt and
// 400 new tokens) moves only the new tokens' KV over NCCL (the decode worker
// holds the rest in its pages: seer-decode --kv-prefix-cache-bytes), from
// position kv_from_token of each head into the same positions of the
// staging, scattered into the pages; the tokens equal those of a store-less
// worker that takes the whole KV over gRPC.
TEST(DisaggNccl, AChatsNextTurnMovesOnlyItsNewTokensKvOverTheLink) {
#ifndef SEER_HAVE_NCCL
  GTEST_SKIP() << "built without NCCL";
#endif
  if (GpuCount() < 2) GTEST_SKIP() << "needs two GPUs (found " << GpuCount() << ")";
  ServerProcess prefill(Bin("seer-prefill"),
                        Args("cuda:0", {"--kv-transports", "nccl,grpc", "--prefix-cache-bytes", "1073741824"}));
  ASSERT_TRUE(prefill.Start(300s));
  ServerProcess held(Bin("seer-decode"), Args("cuda:1", {"--prefill", prefill.grpc_address(), "--kv-transports",
                                                         "nccl,grpc", "--kv-prefix-cache-bytes", "1073741824"}));
  ASSERT_TRUE(held.Start(300s));
  ServerProcess plain(Bin("seer-decode"),
                      Args("cuda:1", {"--prefill", prefill.grpc_address(), "--kv-transports", "grpc"}));
  ASSERT_TRUE(plain.Start(300s));
  std::vector<int32_t> prompt = seer::testing::RandomIds(1500, 128, 11);
  // Until the link is ready; every turn of `prompt` is kept on both sides.
  Generated first;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < deadline) {
    first = Generate(held.grpc_address(), prompt);
    ASSERT_TRUE(first.status.ok()) << first.status.error_message();
    if (first.summary.kv_transfer().transport() == v1::KV_TRANSPORT_NCCL) break;
    std::this_thread::sleep_for(500ms);
  }
  ASSERT_EQ(first.summary.kv_transfer().transport(), v1::KV_TRANSPORT_NCCL);
  const int64_t per_token = first.summary.kv_transfer().bytes() / (1500 - first.summary.kv_held_tokens());
  const double hits = MetricOf(held, "seer_decode_kv_prefix_lookups_total{result=\"hit\"}");
  for (int turn = 1; turn <= 2; ++turn) {
    SCOPED_TRACE("turn " + std::to_string(turn));
    const int previous = static_cast<int>(prompt.size());
    for (int32_t id : seer::testing::RandomIds(400, 128, 20 + turn)) prompt.push_back(id);
    const Generated got = Generate(held.grpc_address(), prompt);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.summary.kv_transfer().transport(), v1::KV_TRANSPORT_NCCL);
    const int held_tokens = previous / 64 * 64;  // dense: every whole shared block
    EXPECT_EQ(got.summary.kv_held_tokens(), held_tokens);
    EXPECT_EQ(got.summary.cached_tokens(), held_tokens) << "the prefill's store: the same blocks";
    EXPECT_EQ(got.summary.kv_transfer().bytes(), per_token * (static_cast<int64_t>(prompt.size()) - held_tokens));
    const Generated ref = Generate(plain.grpc_address(), prompt);
    ASSERT_TRUE(ref.status.ok()) << ref.status.error_message();
    EXPECT_EQ(ref.summary.kv_held_tokens(), 0);
    EXPECT_EQ(got.tokens, ref.tokens);
  }
  EXPECT_EQ(MetricOf(held, "seer_decode_kv_prefix_lookups_total{result=\"hit\"}"), hits + 2) << "the two next turns";
  EXPECT_EQ(MetricOf(held, "seer_kv_transfers_inflight{side=\"receive\",transport=\"nccl\"}"), 0);
}

}  // namespace
}  // namespace seer
