// The NCCL KV link (nccl_kv_link.h) between two processes, each on its own
// GPU: this test process and a child started with --nccl-peer
// (nccl_test_peer.h), whose stdin/stdout stand in for the gRPC control
// stream. What is compared:
//   - bytes: every element of every layer of K and V lands at its place in a
//     cache of another capacity, checked against a pattern that names each
//     element, and nothing is written past seq_len (the receiving cache is
//     poisoned first); several transfers reuse one link, and a receiver that
//     starts transfer 1 before transfer 0 still gets both right;
//   - failure: a peer killed with SIGKILL mid-transfer (either side), an
//     Abort from another thread (the gRPC stream broke), a sender that gives
//     up half way, and a peer that never joins each end with UNAVAILABLE
//     within a few seconds, never a hang; a fresh link then works;
//   - one GPU: a peer on this process's own GPU is refused up front (NCCL
//     does not run two ranks of one communicator on one GPU).
// Tests that need two GPUs skip on one; all skip without a GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "engine/cuda/device_kv_cache.h"
#include "rpc/nccl/kv_test_pattern.h"
#include "rpc/nccl/nccl_kv_link.h"
#include "rpc/nccl/nccl_test_peer.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;
using nccl_test::PeerConfig;
using nccl_test::PeerProcess;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
  cudaGetLastError();
  return n;
}

constexpr int kLayers = 4, kHeads = 8, kDim = 128;

class NcclLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (GpuCount() < 1) GTEST_SKIP() << "NCCL link tests skipped: no CUDA device";
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  }
  // Skips unless two GPUs are visible.
  bool TwoGpus() {
    if (GpuCount() >= 2) return true;
    std::printf("[ skipped  ] needs two GPUs: NCCL does not run both ranks on one GPU (SameGpuIsRefused)\n");
    return false;
  }

  static std::unique_ptr<PeerProcess> StartPeer(PeerConfig c) {
    std::string err;
    auto p = PeerProcess::Start(c, &err);
    EXPECT_NE(p, nullptr) << err;
    return p;
  }

  static NcclLinkOptions Options(double stall = 3.0) {
    NcclLinkOptions o;
    o.device = 0;
    o.peer = "the test peer";
    o.stall_timeout_seconds = stall;
    o.setup_timeout_seconds = 60;
    return o;
  }

  static std::unique_ptr<DeviceKvCache> Cache(int capacity) {
    auto c = DeviceKvCache::Create(kLayers, kHeads, kDim, capacity);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  static int64_t Bytes(int seq_len) { return int64_t{2} * kLayers * kHeads * seq_len * kDim * 2; }

  // A sender here and a receiving peer on GPU 1: every transfer of
  // `seq_lens`, tokens [first_token, seq_len) of a patterned cache, lands in
  // the peer's poisoned cache of another capacity, checked element by element
  // there, with the bytes of the tokens sent.
  static void SendAndVerify(int first_token, std::vector<int> seq_lens, uint32_t salt) {
    auto id = NewNcclUniqueId();
    ASSERT_TRUE(id.ok());
    PeerConfig pc;
    pc.role = "recv";
    pc.device = 1;
    pc.unique_id_hex = nccl_test::Hex(*id);
    pc.layers = kLayers;
    pc.seq_lens = std::move(seq_lens);
    pc.extra_capacity = 77;
    pc.salt = salt;
    pc.first_token = first_token;
    auto peer = StartPeer(pc);
    ASSERT_NE(peer, nullptr);
    auto link = NcclKvLink::Open(NcclRole::kSender, *id, Options());
    ASSERT_TRUE(link.ok()) << link.status().ToString();
    ASSERT_TRUE((*link)->WaitReady(60).ok());
    ASSERT_TRUE(peer->Expect("ready", 60).has_value());
    for (size_t t = 0; t < pc.seq_lens.size(); ++t) {
      const int L = pc.seq_lens[t];
      auto cache = Cache(L);
      ASSERT_EQ(nccl_test::FillPattern(cache.get(), L, pc.salt + t), cudaSuccess);
      if (first_token > 0) {
        EXPECT_EQ((*link)->StartSend(cache.get(), L, NcclKvSplit::kPerHead, L).status().code(),
                  StatusCode::kInvalidArgument)
            << "at least one token moves";
        EXPECT_EQ((*link)->StartSend(cache.get(), L, NcclKvSplit::kWhole, first_token).status().code(),
                  StatusCode::kInvalidArgument)
            << "a whole-layer split moves whole layers";
      }
      auto xfer = (*link)->StartSend(cache.get(), L, NcclKvSplit::kPerHead, first_token);
      ASSERT_TRUE(xfer.ok()) << xfer.status().ToString();
      EXPECT_EQ((*xfer)->seq(), t);
      for (int layer = 0; layer < kLayers; ++layer) {
        ASSERT_TRUE((*xfer)->SendLayer(layer).ok());
        peer->WriteLine("sent " + std::to_string(t) + " " + std::to_string(layer));
      }
      auto stats = (*xfer)->Finish(60);
      ASSERT_TRUE(stats.ok()) << stats.status().ToString();
      EXPECT_EQ(stats->bytes, Bytes(L) - Bytes(first_token));
      auto verified = peer->Expect("verified " + std::to_string(t), 60);
      ASSERT_TRUE(verified.has_value());
      EXPECT_EQ(*verified, "verified " + std::to_string(t) + " 0") << "elements wrong at the receiver";
    }
    EXPECT_EQ(peer->Wait(30), 0);
  }
};

TEST_F(NcclLinkTest, SameGpuIsRefused) {
  auto uuid = CudaDeviceUuid(0);
  ASSERT_TRUE(uuid.ok()) << uuid.status().ToString();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  NcclLinkOptions o = Options();
  o.peer_gpu_uuid = *uuid;
  auto link = NcclKvLink::Open(NcclRole::kSender, *id, o);
  ASSERT_FALSE(link.ok());
  EXPECT_EQ(link.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(link.status().message().find("one GPU"), std::string::npos) << link.status().ToString();
  EXPECT_FALSE(NcclKvLink::Open(NcclRole::kSender, "short", Options()).ok());
}

TEST_F(NcclLinkTest, APeerThatNeverJoinsTimesOut) {
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  NcclLinkOptions o = Options();
  o.setup_timeout_seconds = 2;
  const Clock::time_point start = Clock::now();
  auto link = NcclKvLink::Open(NcclRole::kSender, *id, o);
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  const Status ready = (*link)->WaitReady(30);
  EXPECT_EQ(ready.code(), StatusCode::kUnavailable) << ready.ToString();
  EXPECT_LT(Since(start), 10.0);
  auto cache = Cache(64);
  EXPECT_EQ((*link)->StartSend(cache.get(), 64).status().code(), StatusCode::kUnavailable);
  link->reset();
  std::printf("setup timeout reported after %.2f s: %s\n", Since(start), ready.ToString().c_str());
  EXPECT_LT(Since(start), 15.0);
}

TEST_F(NcclLinkTest, SendsEveryLayerIntoACacheOfAnotherCapacityAndReusesTheLink) {
  if (!TwoGpus()) GTEST_SKIP();
  SendAndVerify(0, {1000, 3000, 200}, 100);
}

// A transfer of tokens [first_token, seq_len) only (the decode worker holds
// the rest: PrefillRequest.kv_from_token): those land at their own
// positions, the positions before them stay untouched (the poison), and the
// bytes are the rest's.
TEST_F(NcclLinkTest, SendsOnlyTheTokensFromFirstToken) {
  if (!TwoGpus()) GTEST_SKIP();
  SendAndVerify(576, {1000, 3001}, 300);
}

TEST_F(NcclLinkTest, ReceivesTransfersInSequenceOrderWhicheverStartsFirst) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "send";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {2048, 500};
  pc.salt = 200;
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kReceiver, *id, Options());
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  ASSERT_TRUE(peer->Expect("ready", 60).has_value());
  auto c0 = Cache(2048 + 100), c1 = Cache(500 + 3);
  ASSERT_EQ(nccl_test::Poison(c0.get()), cudaSuccess);
  ASSERT_EQ(nccl_test::Poison(c1.get()), cudaSuccess);
  // Transfer 1's receive is started first; the link must still post 0's first.
  auto x1 = (*link)->StartRecv(c1.get(), 500, 1);
  auto x0 = (*link)->StartRecv(c0.get(), 2048, 0);
  ASSERT_TRUE(x0.ok() && x1.ok());
  EXPECT_EQ((*link)->StartRecv(c1.get(), 500, 1).status().code(), StatusCode::kInvalidArgument);
  for (int n = 0; n < 2 * kLayers; ++n) {
    auto line = peer->Expect("sent", 60);
    ASSERT_TRUE(line.has_value());
    int t = -1, l = -1;
    ASSERT_EQ(std::sscanf(line->c_str(), "sent %d %d", &t, &l), 2) << *line;
    (t == 0 ? *x0 : *x1)->NoteLayerSent(l);
  }
  auto s0 = (*x0)->Finish(60);
  auto s1 = (*x1)->Finish(60);
  ASSERT_TRUE(s0.ok()) << s0.status().ToString();
  ASSERT_TRUE(s1.ok()) << s1.status().ToString();
  unsigned long long bad0 = 1, bad1 = 1;
  ASSERT_EQ(nccl_test::CountMismatches(c0.get(), 2048, 200, &bad0), cudaSuccess);
  ASSERT_EQ(nccl_test::CountMismatches(c1.get(), 500, 201, &bad1), cudaSuccess);
  EXPECT_EQ(bad0, 0u);
  EXPECT_EQ(bad1, 0u);
  EXPECT_EQ(peer->Wait(30), 0);
}

// A staged receive (the batched decode's pages): every layer lands in one
// staging layer, and the step queued behind it (here a copy into a cache of
// another capacity; in the decode worker a scatter into pages) sees each
// layer's bytes before the next layer overwrites them.
TEST_F(NcclLinkTest, AStagedReceiveHandsEveryLayerToItsStepBeforeTheNextArrives) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "send";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {1500, 333};
  pc.salt = 300;
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kReceiver, *id, Options());
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  ASSERT_TRUE(peer->Expect("ready", 60).has_value());
  for (size_t t = 0; t < pc.seq_lens.size(); ++t) {
    const int L = pc.seq_lens[t];
    auto staging = DeviceKvCache::Create(1, kHeads, kDim, L);
    ASSERT_TRUE(staging.ok());
    auto dst = Cache(L + 41);
    ASSERT_EQ(nccl_test::Poison(dst.get()), cudaSuccess);
    DeviceKvCache* s = staging->get();
    DeviceKvCache* d = dst.get();
    int steps = 0;
    auto xfer = (*link)->StartRecvStaged(s, kLayers, L, t, [&, s, d, L](int layer, cudaStream_t stream) {
      ++steps;
      const size_t row = static_cast<size_t>(L) * kDim * 2;
      for (int which = 0; which < 2; ++which) {
        cudaError_t e =
            cudaMemcpy2DAsync(which == 0 ? d->k(layer) : d->v(layer), static_cast<size_t>(d->capacity()) * kDim * 2,
                              which == 0 ? s->k(0) : s->v(0), row, row, kHeads, cudaMemcpyDeviceToDevice, stream);
        if (e != cudaSuccess) return e;
      }
      return cudaSuccess;
    });
    ASSERT_TRUE(xfer.ok()) << xfer.status().ToString();
    for (int n = 0; n < kLayers; ++n) {
      auto line = peer->Expect("sent", 60);
      ASSERT_TRUE(line.has_value());
      int tt = -1, l = -1;
      ASSERT_EQ(std::sscanf(line->c_str(), "sent %d %d", &tt, &l), 2) << *line;
      (*xfer)->NoteLayerSent(l);
    }
    auto stats = (*xfer)->Finish(60);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->bytes, Bytes(L));
    EXPECT_EQ(steps, kLayers);
    unsigned long long bad = 1;
    ASSERT_EQ(nccl_test::CountMismatches(d, L, pc.salt + t, &bad), cudaSuccess);
    EXPECT_EQ(bad, 0u) << "transfer " << t;
  }
  EXPECT_EQ(peer->Wait(30), 0);
}

TEST_F(NcclLinkTest, AKilledReceiverFailsTheSenderWithinSecondsAndAFreshLinkWorks) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "recv";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {8192};  // 32 MiB a layer: more than NCCL's buffers hold
  pc.salt = 300;
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kSender, *id, Options(2.0));
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  ASSERT_TRUE(peer->Expect("ready", 60).has_value());
  auto cache = Cache(8192);
  ASSERT_EQ(nccl_test::FillPattern(cache.get(), 8192, 300), cudaSuccess);
  auto xfer = (*link)->StartSend(cache.get(), 8192);
  ASSERT_TRUE(xfer.ok());
  ASSERT_TRUE((*xfer)->SendLayer(0).ok());
  // Let the two GPUs connect and layer 0 go, then kill the receiver, and
  // hand over the rest only once it is gone: a receiver's kernels already
  // running can still take the data while the process dies (seen on the
  // two-GPU host, 2026-11-28).
  std::this_thread::sleep_for(std::chrono::seconds(1));
  peer->Kill();
  ASSERT_TRUE(peer->Wait(10).has_value());
  const Clock::time_point killed = Clock::now();
  for (int layer = 1; layer < kLayers; ++layer) (void)(*xfer)->SendLayer(layer);
  auto stats = (*xfer)->Finish(120);
  const double took = Since(killed);
  std::printf("sender saw the dead receiver after %.2f s: %s\n", took, stats.status().ToString().c_str());
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(stats.status().message().find("the test peer"), std::string::npos);
  EXPECT_LT(took, 15.0);
  EXPECT_EQ((*link)->health().code(), StatusCode::kUnavailable);
  EXPECT_EQ((*link)->StartSend(cache.get(), 8192).status().code(), StatusCode::kUnavailable);
  xfer->reset();
  link->reset();

  // The next request builds a fresh communicator, and it works.
  auto id2 = NewNcclUniqueId();
  ASSERT_TRUE(id2.ok());
  pc.unique_id_hex = nccl_test::Hex(*id2);
  pc.salt = 400;
  pc.extra_capacity = 5;
  auto peer2 = StartPeer(pc);
  ASSERT_NE(peer2, nullptr);
  auto link2 = NcclKvLink::Open(NcclRole::kSender, *id2, Options());
  ASSERT_TRUE(link2.ok());
  ASSERT_TRUE((*link2)->WaitReady(60).ok());
  ASSERT_EQ(nccl_test::FillPattern(cache.get(), 8192, 400), cudaSuccess);
  auto x2 = (*link2)->StartSend(cache.get(), 8192);
  ASSERT_TRUE(x2.ok());
  for (int layer = 0; layer < kLayers; ++layer) ASSERT_TRUE((*x2)->SendLayer(layer).ok());
  auto s2 = (*x2)->Finish(60);
  ASSERT_TRUE(s2.ok()) << s2.status().ToString();
  auto verified = peer2->Expect("verified 0", 60);
  ASSERT_TRUE(verified.has_value());
  EXPECT_EQ(*verified, "verified 0 0");
}

TEST_F(NcclLinkTest, AKilledSenderFailsTheReceiverWithinSeconds) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "send";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {8192};
  pc.step = true;
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kReceiver, *id, Options(2.0));
  ASSERT_TRUE(link.ok());
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  ASSERT_TRUE(peer->Expect("ready", 60).has_value());
  auto cache = Cache(8192 + 64);
  auto xfer = (*link)->StartRecv(cache.get(), 8192, 0);
  ASSERT_TRUE(xfer.ok());
  for (int layer = 0; layer < 2; ++layer) {
    peer->WriteLine("go");
    ASSERT_TRUE(peer->Expect("sent 0 " + std::to_string(layer), 60).has_value());
    (*xfer)->NoteLayerSent(layer);
  }
  // The prefill said layer 2 was on its way, then died.
  peer->Kill();
  ASSERT_TRUE(peer->Wait(10).has_value());
  const Clock::time_point killed = Clock::now();
  (*xfer)->NoteLayerSent(2);
  auto stats = (*xfer)->Finish(120);
  const double took = Since(killed);
  std::printf("receiver saw the dead sender after %.2f s: %s\n", took, stats.status().ToString().c_str());
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), StatusCode::kUnavailable);
  EXPECT_LT(took, 15.0);
}

TEST_F(NcclLinkTest, AbortFromAnotherThreadUnblocksBothSides) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "send";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {8192};
  pc.step = true;
  pc.stall_seconds = 2;
  pc.setup_seconds = 5;  // its first layer connects to a side that is gone
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kReceiver, *id, Options(2.0));
  ASSERT_TRUE(link.ok());
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  ASSERT_TRUE(peer->Expect("ready", 60).has_value());
  auto cache = Cache(8192);
  auto xfer = (*link)->StartRecv(cache.get(), 8192, 0);
  ASSERT_TRUE(xfer.ok());
  // Nothing is announced, so no stall clock runs: only Abort can end it.
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    (*link)->Abort("the Prefill stream broke");
  });
  const Clock::time_point start = Clock::now();
  auto stats = (*xfer)->Finish();
  aborter.join();
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("the Prefill stream broke"), std::string::npos);
  EXPECT_LT(Since(start), 6.0);
  // The sending side, left with a receiver that is gone, fails on its own.
  peer->WriteLine("go");
  const Clock::time_point go = Clock::now();
  auto err = peer->Expect("error 0", 30);
  ASSERT_TRUE(err.has_value());
  std::printf("the sending peer failed %.2f s after its first layer: %s\n", Since(go), err->c_str());
  EXPECT_LT(Since(go), 15.0);
  EXPECT_EQ(peer->Wait(15), 1);
}

TEST_F(NcclLinkTest, ASenderThatStopsHalfWayAbortsTheLink) {
  if (!TwoGpus()) GTEST_SKIP();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok());
  PeerConfig pc;
  pc.role = "recv";
  pc.device = 1;
  pc.unique_id_hex = nccl_test::Hex(*id);
  pc.layers = kLayers;
  pc.seq_lens = {1024};
  auto peer = StartPeer(pc);
  ASSERT_NE(peer, nullptr);
  auto link = NcclKvLink::Open(NcclRole::kSender, *id, Options());
  ASSERT_TRUE(link.ok());
  ASSERT_TRUE((*link)->WaitReady(60).ok());
  auto cache = Cache(1024);
  auto xfer = (*link)->StartSend(cache.get(), 1024);
  ASSERT_TRUE(xfer.ok());
  ASSERT_TRUE((*xfer)->SendLayer(0).ok());
  ASSERT_TRUE((*xfer)->SendLayer(1).ok());
  const Clock::time_point start = Clock::now();
  auto stats = (*xfer)->Finish();  // a cancelled prefill
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find("after 2 of 4 layers"), std::string::npos) << stats.status().ToString();
  EXPECT_LT(Since(start), 6.0);
  EXPECT_FALSE((*link)->health().ok());
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--nccl-peer") return seer::nccl_test::RunPeer(argc, argv);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
