// The continuous-batching loop on the CPU engine: sequences submitted at
// different times from other threads decode the tokens they decode alone;
// batches never exceed --max-batch; a sink that cannot take tokens holds up
// only its own sequence; stopping and stop tokens end a sequence at once; every
// page is back in the pool when all are done.
#include "engine/decode_scheduler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/batched_decode_util.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

using batched_test::MixedRequests;
using batched_test::Request;
using batched_test::RunBatched;
using batched_test::Running;
using batched_test::Start;

std::unique_ptr<Engine> LoadCpu(int max_batch) {
  EngineOptions o;
  o.model_dir = fixtures::Path("llama");
  o.device = "cpu";
  o.threads = 2;
  auto e = CreateEngine(o);
  EXPECT_TRUE(e.ok());
  PagedDecodeOptions p;
  p.page_tokens = 16;
  p.pool_bytes = int64_t{64} << 20;
  p.max_batch = max_batch;
  EXPECT_TRUE((*e)->EnablePagedDecode(p).ok());
  return std::move(e).value();
}

// Collects one sequence's tokens and its end.
struct Outcome {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;  // when the sampler wants them
  bool done = false;
  DecodeScheduler::Finish finish = DecodeScheduler::Finish::kError;
  Status status;

  void Wait() {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return done; })) << "sequence never finished";
  }
};

DecodeScheduler::Sequence ToSequence(Running run, Outcome* out,
                                     std::function<DecodeScheduler::SinkResult(int32_t)> gate = nullptr) {
  DecodeScheduler::Sequence s;
  s.cache = std::move(run.cache);
  s.next_token = run.tokens.back();
  s.sampler = std::move(run.sampler);
  s.remaining = run.remaining;
  out->tokens = run.tokens;
  out->logprobs = run.logprobs;
  s.on_token = [out, gate](int32_t t, const TokenLogprobs* logprobs) {
    if (gate) {
      const DecodeScheduler::SinkResult r = gate(t);
      if (r != DecodeScheduler::SinkResult::kAccepted) return r;
    }
    std::lock_guard<std::mutex> lock(out->mu);
    out->tokens.push_back(t);
    if (logprobs != nullptr) out->logprobs.push_back(*logprobs);
    return DecodeScheduler::SinkResult::kAccepted;
  };
  s.on_done = [out](DecodeScheduler::Finish f, const Status& st) {
    std::lock_guard<std::mutex> lock(out->mu);
    out->done = true;
    out->finish = f;
    out->status = st;
    out->cv.notify_all();
  };
  return s;
}

TEST(DecodeScheduler, SequencesJoiningFromManyThreadsDecodeWhatTheyDecodeAlone) {
  std::unique_ptr<Engine> e = LoadCpu(3);
  std::vector<Request> requests = MixedRequests();
  for (Request r : MixedRequests()) {  // twice as many, with other prompts
    for (int32_t& t : r.prompt) t = t % 50 + 40;
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> solo;
  for (Request r : requests) solo.push_back(RunBatched(*e, {r})[0]);

  DecodeScheduler scheduler(e.get());
  std::atomic<int> max_seen{0}, steps{0};
  scheduler.set_on_step([&](const DecodeScheduler::StepStats& s) {
    steps++;
    int m = max_seen.load();
    while (s.batch > m && !max_seen.compare_exchange_weak(m, s.batch)) {}
  });
  std::vector<std::unique_ptr<Outcome>> outcomes;
  for (size_t i = 0; i < requests.size(); ++i) outcomes.push_back(std::make_unique<Outcome>());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i) {
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3 * requests[i].join_step));
      Running run = Start(*e, requests[i]);
      ASSERT_TRUE(scheduler.Submit(ToSequence(std::move(run), outcomes[i].get())).ok());
    });
  }
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    outcomes[i]->Wait();
    EXPECT_EQ(outcomes[i]->finish, DecodeScheduler::Finish::kLength);
    EXPECT_EQ(outcomes[i]->tokens, solo[i]) << "request " << i;
  }
  EXPECT_LE(max_seen.load(), 3);
  EXPECT_GE(max_seen.load(), 2) << "the sequences never shared a step";
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
}

TEST(DecodeScheduler, ASinkThatCannotTakeTokensHoldsUpOnlyItsOwnSequence) {
  std::unique_ptr<Engine> e = LoadCpu(4);
  const std::vector<Request> requests = MixedRequests();
  std::vector<int32_t> slow_solo = RunBatched(*e, {requests[0]})[0];
  std::vector<int32_t> fast_solo = RunBatched(*e, {requests[2]})[0];

  DecodeScheduler scheduler(e.get());
  std::atomic<bool> open{false};
  Outcome slow, fast;
  ASSERT_TRUE(scheduler
                  .Submit(ToSequence(Start(*e, requests[0]), &slow,
                                     [&](int32_t) {
                                       return open ? DecodeScheduler::SinkResult::kAccepted
                                                   : DecodeScheduler::SinkResult::kBusy;
                                     }))
                  .ok());
  ASSERT_TRUE(scheduler.Submit(ToSequence(Start(*e, requests[2]), &fast)).ok());
  fast.Wait();
  EXPECT_EQ(fast.tokens, fast_solo);
  {
    std::lock_guard<std::mutex> lock(slow.mu);
    EXPECT_FALSE(slow.done);
    EXPECT_EQ(slow.tokens.size(), 1u) << "only the first token, emitted before the scheduler";
  }
  open = true;
  slow.Wait();
  EXPECT_EQ(slow.tokens, slow_solo);
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
}

// Logprobs travel with their tokens, through tokens held while a sink is
// busy too: each sequence that asks gets, per token, the model's logprobs
// (batched_test::ExpectModelLogprobs), and one that does not gets none.
TEST(DecodeScheduler, EachTokenCarriesItsOwnLogprobsThroughABusySink) {
  std::unique_ptr<Engine> e = LoadCpu(4);
  const std::vector<Request> requests = batched_test::LogprobRequests(3);
  DecodeScheduler scheduler(e.get());
  std::atomic<bool> open{false};
  std::vector<std::unique_ptr<Outcome>> outcomes;
  for (size_t i = 0; i < 4; ++i) {
    outcomes.push_back(std::make_unique<Outcome>());
    auto gate = [&open, i](int32_t) {
      return open || i != 0 ? DecodeScheduler::SinkResult::kAccepted : DecodeScheduler::SinkResult::kBusy;
    };
    ASSERT_TRUE(scheduler.Submit(ToSequence(Start(*e, requests[i]), outcomes[i].get(), gate)).ok());
  }
  outcomes[2]->Wait();
  open = true;
  for (size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    outcomes[i]->Wait();
    ASSERT_EQ(static_cast<int>(outcomes[i]->tokens.size()), requests[i].new_tokens);
    if (requests[i].sampling.logprobs < 0) {
      EXPECT_TRUE(outcomes[i]->logprobs.empty());
      continue;
    }
    batched_test::ExpectModelLogprobs(*e, requests[i], outcomes[i]->tokens, outcomes[i]->logprobs,
                                      requests[i].sampling.logprobs, 1e-4);
  }
}

TEST(DecodeScheduler, StoppedSequencesAndStopTokensLeaveAtOnce) {
  std::unique_ptr<Engine> e = LoadCpu(4);
  Request r = MixedRequests()[0];
  r.new_tokens = 30;
  const std::vector<int32_t> solo = RunBatched(*e, {r})[0];

  DecodeScheduler scheduler(e.get());
  Outcome stopped, by_token;
  int taken = 0;
  ASSERT_TRUE(scheduler
                  .Submit(ToSequence(Start(*e, r), &stopped,
                                     [&](int32_t) {
                                       return ++taken > 3 ? DecodeScheduler::SinkResult::kStop
                                                          : DecodeScheduler::SinkResult::kAccepted;
                                     }))
                  .ok());
  stopped.Wait();
  EXPECT_EQ(stopped.finish, DecodeScheduler::Finish::kStopped);
  EXPECT_EQ(stopped.tokens.size(), 4u);

  DecodeScheduler::Sequence s = ToSequence(Start(*e, r), &by_token);
  s.stop_token_ids = {solo[5]};
  ASSERT_TRUE(scheduler.Submit(std::move(s)).ok());
  by_token.Wait();
  EXPECT_EQ(by_token.finish, DecodeScheduler::Finish::kStop);
  const auto first_stop = std::find(solo.begin() + 1, solo.end(), solo[5]);
  EXPECT_EQ(by_token.tokens, std::vector<int32_t>(solo.begin(), first_stop + 1));
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());

  // Stopping the scheduler ends what is still running.
  Outcome running;
  auto gate = [](int32_t) { return DecodeScheduler::SinkResult::kBusy; };
  ASSERT_TRUE(scheduler.Submit(ToSequence(Start(*e, r), &running, gate)).ok());
  scheduler.Stop();
  running.Wait();
  EXPECT_EQ(running.finish, DecodeScheduler::Finish::kStopped);
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
  EXPECT_FALSE(scheduler.Submit(ToSequence(Start(*e, r), &running)).ok());
}

}  // namespace
}  // namespace seer
