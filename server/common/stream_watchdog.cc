#include "server/common/stream_watchdog.h"

#include <algorithm>
#include <vector>

namespace seer {

StreamWatchdog::StreamWatchdog(double stall_seconds) : stall_seconds_(stall_seconds) {
  if (stall_seconds_ > 0) thread_ = std::thread([this] { Loop(); });
}

StreamWatchdog::~StreamWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StreamWatchdog::Watch(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  streams_.insert(stream);
}

void StreamWatchdog::Forget(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  streams_.erase(stream);
}

void StreamWatchdog::Loop() {
  // A stall is noticed within a tenth of the limit (between 10 ms and 1 s).
  const auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(stall_seconds_));
  const auto period = std::clamp<Clock::duration>(limit / 10, std::chrono::milliseconds(10), std::chrono::seconds(1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!wake_.wait_for(lock, period, [this] { return stopping_; })) {
    std::vector<Stream*> stalled;
    const Clock::time_point started_before = Clock::now() - limit;
    for (Stream* s : streams_)
      if (s->PinIfStalled(started_before)) stalled.push_back(s);
    if (stalled.empty()) continue;
    // Cancelling runs gRPC callbacks, possibly on this thread, and those
    // Forget streams: not under the lock. A pinned stream cannot end first.
    lock.unlock();
    for (Stream* s : stalled) s->CancelStalled();
    lock.lock();
  }
}

}  // namespace seer
