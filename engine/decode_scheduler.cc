#include "engine/decode_scheduler.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "base/clock.h"

namespace seer {

DecodeScheduler::DecodeScheduler(Engine* engine) : engine_(engine) {
  thread_ = std::thread([this] { Loop(); });
}

DecodeScheduler::~DecodeScheduler() { Stop(); }

void DecodeScheduler::set_on_step(std::function<void(const StepStats&)> on_step) {
  std::lock_guard<std::mutex> lock(mu_);
  on_step_ = std::move(on_step);
}

int DecodeScheduler::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_count_;
}

Status DecodeScheduler::Submit(Sequence seq) {
  if (seq.cache == nullptr || seq.sampler == nullptr || !seq.on_token || !seq.on_done) {
    return InvalidArgument("decode scheduler: a sequence needs a cache, a sampler and both sinks");
  }
  auto slot = std::make_unique<Slot>();
  slot->seq = std::move(seq);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return FailedPrecondition("decode scheduler: stopped");
    joining_.push_back(std::move(slot));
  }
  wake_.notify_one();
  return OkStatus();
}

void DecodeScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<DecodeScheduler::Slot> DecodeScheduler::TakeRunning(size_t i) {
  std::unique_ptr<Slot> slot = std::move(running_[i]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
  // Counted out before its owner hears of the end.
  std::lock_guard<std::mutex> lock(mu_);
  running_count_ = static_cast<int>(running_.size());
  return slot;
}

void DecodeScheduler::Retire(std::unique_ptr<Slot> slot, Finish finish, const Status& status) {
  auto on_done = std::move(slot->seq.on_done);
  slot.reset();  // the cache, and with it the pages, go first
  on_done(finish, status);
}

bool DecodeScheduler::Deliver(Slot& slot, Finish* finish) {
  size_t taken = 0;
  for (; taken < slot.pending.size(); ++taken) {
    const SinkResult r =
        slot.seq.on_token(slot.pending[taken], slot.pending_logprobs.empty() ? nullptr : &slot.pending_logprobs[taken]);
    if (r == SinkResult::kBusy) break;
    if (r == SinkResult::kStop) {
      *finish = Finish::kStopped;
      return false;
    }
  }
  slot.pending.erase(slot.pending.begin(), slot.pending.begin() + static_cast<std::ptrdiff_t>(taken));
  if (!slot.pending_logprobs.empty()) {
    slot.pending_logprobs.erase(slot.pending_logprobs.begin(),
                                slot.pending_logprobs.begin() + static_cast<std::ptrdiff_t>(taken));
  }
  return true;
}

void DecodeScheduler::Loop() {
  const int max_batch = std::max(1, engine_->max_decode_batch());
  for (;;) {
    std::function<void(const StepStats&)> on_step;
    {
      std::unique_lock<std::mutex> lock(mu_);
      running_count_ = static_cast<int>(running_.size());  // after the last step's retirements
      if (running_.empty()) {
        wake_.wait(lock, [&] { return stopping_ || !joining_.empty(); });
      }
      if (stopping_) break;
      while (!joining_.empty() && static_cast<int>(running_.size()) < max_batch) {
        running_.push_back(std::move(joining_.front()));
        joining_.pop_front();
      }
      running_count_ = static_cast<int>(running_.size());
      on_step = on_step_;
    }

    // Tokens a busy sink left behind first; a sequence steps only once its
    // sink has taken everything.
    std::vector<Slot*> batch;
    for (size_t i = 0; i < running_.size();) {
      Finish finish = Finish::kStopped;
      if (!Deliver(*running_[i], &finish)) {
        std::unique_ptr<Slot> gone = TakeRunning(i);
        Retire(std::move(gone), finish, OkStatus());
        continue;
      }
      Slot& s = *running_[i];
      if (s.pending.empty() && s.seq.remaining <= 0) {
        const Finish why = s.stopped_by_token ? Finish::kStop : Finish::kLength;
        std::unique_ptr<Slot> gone = TakeRunning(i);
        Retire(std::move(gone), why, OkStatus());
        continue;
      }
      if (s.pending.empty()) batch.push_back(&s);
      ++i;
    }
    if (batch.empty()) {
      // Every running sequence waits on its sink (or none runs): look again soon.
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(1), [&] { return stopping_; });
      continue;
    }

    std::vector<DecodeSeq> seqs;
    seqs.reserve(batch.size());
    for (Slot* s : batch) seqs.push_back({s->seq.cache.get(), s->seq.next_token, s->seq.sampler.get()});
    std::vector<int32_t> next(batch.size());
    const Clock::time_point start = Clock::now();
    const Status stepped = engine_->DecodeBatch(seqs, next);
    if (on_step) on_step(StepStats{static_cast<int>(batch.size()), SecondsSince(start)});
    if (!stepped.ok()) {
      // A failed step fails the sequences in it; the others go on.
      for (Slot* s : batch) s->seq.remaining = -1;
      for (size_t i = 0; i < running_.size();) {
        if (running_[i]->seq.remaining == -1) {
          std::unique_ptr<Slot> gone = TakeRunning(i);
          Retire(std::move(gone), Finish::kError, stepped);
          continue;
        }
        ++i;
      }
      continue;
    }
    for (size_t j = 0; j < batch.size(); ++j) {
      Slot& s = *batch[j];
      s.pending.push_back(next[j]);
      if (s.seq.sampler->wants_logprobs()) s.pending_logprobs.push_back(s.seq.sampler->last_logprobs());
      s.seq.next_token = next[j];
      --s.seq.remaining;
      const auto& stops = s.seq.stop_token_ids;
      if (std::find(stops.begin(), stops.end(), next[j]) != stops.end()) {
        s.seq.remaining = 0;
        s.stopped_by_token = true;
      }
    }
  }

  // Stopping: every sequence, running or joining, finishes.
  std::deque<std::unique_ptr<Slot>> joining;
  {
    std::lock_guard<std::mutex> lock(mu_);
    joining.swap(joining_);
    running_count_ = 0;
  }
  for (auto& s : running_) Retire(std::move(s), Finish::kStopped, Cancelled("the decode worker is stopping"));
  running_.clear();
  for (auto& s : joining) Retire(std::move(s), Finish::kStopped, Cancelled("the decode worker is stopping"));
}

}  // namespace seer
