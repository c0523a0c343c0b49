// Continuous batching for a decode worker: one thread steps every running
// sequence together (Engine::DecodeBatch); sequences join at the next step
// once their KV is in the page pool and leave the moment they finish, are
// stopped, or fail. Admission is by pages, before a sequence gets here: its
// paged cache already holds every page it will need (prompt + new tokens),
// so a running sequence never fails for lack of pages.
//
// Tokens leave through a sink that must not block: a sink that cannot take a
// token now says so (kBusy), and its sequence sits out the steps until the
// token is taken, without holding up the others.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"

namespace seer {

class DecodeScheduler {
 public:
  enum class SinkResult { kAccepted, kBusy, kStop };
  enum class Finish { kLength, kStop, kStopped, kError };

  struct Sequence {
    std::unique_ptr<KvCache> cache;  // from Engine::NewPagedCache, the prompt's KV written, length set
    int32_t next_token = 0;  // the token to feed next (the first generated one, already emitted)
    std::unique_ptr<Sampler> sampler;
    int remaining = 0;  // tokens still to generate
    std::vector<int32_t> stop_token_ids;
    // On the scheduler thread, for each generated token, in order, with its
    // logprobs when the sampler wants them (else null).
    std::function<SinkResult(int32_t token, const TokenLogprobs* logprobs)> on_token;
    // Once, on the scheduler thread, when the sequence leaves; the cache is
    // freed (its pages back in the pool) before this runs.
    std::function<void(Finish finish, const Status& status)> on_done;
  };

  struct StepStats {
    int batch = 0;
    double seconds = 0.0;
  };

  explicit DecodeScheduler(Engine* engine);
  ~DecodeScheduler();
  DecodeScheduler(const DecodeScheduler&) = delete;
  DecodeScheduler& operator=(const DecodeScheduler&) = delete;

  // Hands a sequence to the loop; it joins at the next step. A sequence with
  // nothing left to generate finishes at once. FAILED_PRECONDITION after Stop.
  Status Submit(Sequence seq);
  // Finishes every sequence (kStopped) and joins the thread.
  void Stop();

  int running() const;
  // Called after every step (for metrics).
  void set_on_step(std::function<void(const StepStats&)> on_step);

 private:
  struct Slot {
    Sequence seq;
    std::vector<int32_t> pending;  // tokens generated but not yet taken by the sink
    std::vector<TokenLogprobs> pending_logprobs;  // theirs, when the sampler wants them
    bool stopped_by_token = false;
  };
  void Loop();
  // Offers pending tokens to the sink; false when the sequence must leave.
  bool Deliver(Slot& slot, Finish* finish);
  // Removes running_[i], and counts it out of running().
  std::unique_ptr<Slot> TakeRunning(size_t i);
  // Frees the slot (its cache's pages first), then tells its owner.
  void Retire(std::unique_ptr<Slot> slot, Finish finish, const Status& status);

  Engine* const engine_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Slot>> joining_;
  std::vector<std::unique_ptr<Slot>> running_;  // scheduler thread only (size read under mu_)
  int running_count_ = 0;
  bool stopping_ = false;
  std::function<void(const StepStats&)> on_step_;
  std::thread thread_;
};

}  // namespace seer
