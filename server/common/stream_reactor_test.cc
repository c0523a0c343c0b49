// StreamReactor on its own, behind a throwaway Decode service on loopback
// port 0: the promises server/common/stream_reactor.h makes to the services built on
// it, checked with hooks that record what they see.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "seer/v1/seer.grpc.pb.h"
#include "server/common/grpc_server.h"
#include "server/common/stream_reactor.h"
#include "server/common/work_queue.h"

namespace seer {
namespace {

using namespace std::chrono_literals;

// What the reactors saw; outlives them (each deletes itself in OnDone).
struct HookLog {
  std::mutex mu;
  int after_writes = 0;
  int before_too_early = 0;  // BeforeWrite(i) while AfterWrite(i - 1) had not finished
  int streams_done = 0;
};

// Sends `messages` tokens, pausing between them so that each write has
// completed (and the outbox is empty) when the next Send comes; the slow
// AfterWrite keeps the previous write's hook running meanwhile.
class PacedReactor final : public StreamReactor<v1::GenerateResponse> {
 public:
  PacedReactor(grpc::CallbackServerContext* context, StreamWatchdog* watchdog, WorkQueue* queue, HookLog* log,
               int messages)
      : StreamReactor(context, watchdog), log_(log), messages_(messages) {
    if (!Admit(queue, {})) FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full"));
  }

  void Run(double /*queue_seconds*/) override {
    for (int i = 0; i < messages_; ++i) {
      auto msg = std::make_unique<v1::GenerateResponse>();
      msg->set_token(i);
      if (!Send(std::move(msg), 8)) break;
      std::this_thread::sleep_for(5ms);
    }
    FinishWork(grpc::Status::OK);
  }

 private:
  void BeforeWrite(v1::GenerateResponse* msg) override {
    std::lock_guard<std::mutex> lock(log_->mu);
    if (log_->after_writes < msg->token()) ++log_->before_too_early;
  }
  void AfterWrite(const v1::GenerateResponse& /*msg*/, size_t /*bytes*/) override {
    std::this_thread::sleep_for(30ms);
    std::lock_guard<std::mutex> lock(log_->mu);
    ++log_->after_writes;
  }
  void OnStreamDone(const grpc::Status& /*status*/) override {
    std::lock_guard<std::mutex> lock(log_->mu);
    ++log_->streams_done;
  }

  HookLog* log_;
  int messages_;
};

class PacedService final : public v1::DecodeService::CallbackService {
 public:
  PacedService(HookLog* log, int messages) : log_(log), messages_(messages) {}
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* /*request*/) override {
    return new PacedReactor(context, &watchdog_, &queue_, log_, messages_);
  }
  void Shutdown() { queue_.Shutdown(); }

 private:
  HookLog* log_;
  int messages_;
  StreamWatchdog watchdog_{0.0};
  WorkQueue queue_{1, 4};
};

// stream_reactor.h: the write hooks "run one at a time, in write order"; the
// services rely on it (PrefillStream's kv_stream_seconds reads in BeforeWrite
// what AfterWrite of the previous chunk wrote).
TEST(StreamReactor, AfterWriteOfOneMessageEndsBeforeTheNextBeforeWrite) {
  constexpr int kMessages = 6;
  HookLog log;
  PacedService service(&log, kMessages);
  auto server = GrpcServer::Start("127.0.0.1:0", {&service}, {}, 1 << 20);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  (*server)->SetServing(true);

  auto stub = v1::DecodeService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);
  auto reader = stub->Generate(&ctx, v1::GenerateRequest());
  std::vector<int32_t> tokens;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) tokens.push_back(msg.token());
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens.size(), static_cast<size_t>(kMessages));

  (*server)->Shutdown(5.0);  // returns once every reactor is done
  service.Shutdown();
  std::lock_guard<std::mutex> lock(log.mu);
  EXPECT_EQ(log.streams_done, 1);
  EXPECT_EQ(log.after_writes, kMessages);
  EXPECT_EQ(log.before_too_early, 0) << "BeforeWrite ran while the previous message's AfterWrite was still running";
}

// Sends tokens 0..n-1, every third one deferred (made when its turn to be
// written comes); token `fail_at`, if deferred, fails to be made.
class MixedReactor final : public StreamReactor<v1::GenerateResponse> {
 public:
  MixedReactor(grpc::CallbackServerContext* context, StreamWatchdog* watchdog, WorkQueue* queue, int messages,
               int fail_at)
      : StreamReactor(context, watchdog), messages_(messages), fail_at_(fail_at) {
    if (!Admit(queue, {})) FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full"));
  }

  void Run(double /*queue_seconds*/) override {
    for (int i = 0; i < messages_; ++i) {
      bool queued = false;
      if (i % 3 == 2) {
        queued = SendDeferred(
            [this, i]() -> StatusOr<std::unique_ptr<v1::GenerateResponse>> {
              if (i == fail_at_) return Internal("token " + std::to_string(i) + " could not be made");
              auto msg = std::make_unique<v1::GenerateResponse>();
              msg->set_token(i);
              return msg;
            },
            8);
      } else {
        auto msg = std::make_unique<v1::GenerateResponse>();
        msg->set_token(i);
        queued = Send(std::move(msg), 8);
      }
      if (!queued) break;
    }
    FinishWork(grpc::Status::OK);
  }

 private:
  int messages_, fail_at_;
};

class MixedService final : public v1::DecodeService::CallbackService {
 public:
  MixedService(int messages, int fail_at) : messages_(messages), fail_at_(fail_at) {}
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* /*request*/) override {
    return new MixedReactor(context, &watchdog_, &queue_, messages_, fail_at_);
  }
  void Shutdown() { queue_.Shutdown(); }

 private:
  int messages_, fail_at_;
  StreamWatchdog watchdog_{0.0};
  WorkQueue queue_{2, 4};
};

std::pair<grpc::Status, std::vector<int32_t>> ReadTokens(const std::string& address, int read_pause_ms) {
  auto stub = v1::DecodeService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);
  auto reader = stub->Generate(&ctx, v1::GenerateRequest());
  std::vector<int32_t> tokens;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    tokens.push_back(msg.token());
    if (read_pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(read_pause_ms));
  }
  return {reader->Finish(), tokens};
}

// Deferred messages keep their place: the client reads every message in the
// order the worker queued them, whether it reads at once or slowly (then the
// worker is done long before, and deferred messages are made on gRPC's
// threads as their turn comes), and several streams at once.
TEST(StreamReactor, DeferredMessagesAreMadeInTheirTurnAndKeepTheOrder) {
  constexpr int kMessages = 300;
  MixedService service(kMessages, /*fail_at=*/-1);
  auto server = GrpcServer::Start("127.0.0.1:0", {&service}, {}, 1 << 20);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  std::vector<int32_t> expected(kMessages);
  for (int i = 0; i < kMessages; ++i) expected[i] = i;
  for (int pause : {0, 1}) {
    std::vector<std::thread> clients;
    std::mutex mu;
    std::vector<std::pair<grpc::Status, std::vector<int32_t>>> results;
    for (int c = 0; c < 3; ++c) {
      clients.emplace_back([&] {
        auto r = ReadTokens((*server)->address(), pause);
        std::lock_guard<std::mutex> lock(mu);
        results.push_back(std::move(r));
      });
    }
    for (auto& t : clients) t.join();
    for (const auto& [status, tokens] : results) {
      EXPECT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(tokens, expected) << "read pause " << pause << " ms";
    }
  }
  (*server)->Shutdown(5.0);
  service.Shutdown();
}

// A deferred message that cannot be made ends the stream with its status,
// after every message before it.
TEST(StreamReactor, ADeferredMessageThatFailsEndsTheStreamWithItsStatus) {
  MixedService service(30, /*fail_at=*/14);
  auto server = GrpcServer::Start("127.0.0.1:0", {&service}, {}, 1 << 20);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const auto [status, tokens] = ReadTokens((*server)->address(), 1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_NE(status.error_message().find("token 14 could not be made"), std::string::npos) << status.error_message();
  ASSERT_GE(tokens.size(), 14u);
  for (int i = 0; i < 14; ++i) EXPECT_EQ(tokens[i], i);
  EXPECT_LE(tokens.size(), 16u) << "at most the message already in flight follows the failed one";
  (*server)->Shutdown(5.0);
  service.Shutdown();
}

}  // namespace
}  // namespace seer
