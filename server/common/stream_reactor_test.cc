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

class PacedService final : public v1::Decode::CallbackService {
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

  auto stub = v1::Decode::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
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

}  // namespace
}  // namespace seer
