// Finds streams whose client has stopped reading. gRPC's flow control stops
// a write while the client's window is full, and nothing else ever ends it: a
// client that never reads, or a peer stopped with SIGSTOP, keeps the stream
// and everything it holds. The watchdog looks at every stream it watches a
// few times a second and cancels one whose write has been in flight for
// --write-stall-seconds (server/common/stream_reactor.h does the cancelling).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

namespace seer {

class StreamWatchdog {
 public:
  using Clock = std::chrono::steady_clock;

  class Stream {
   public:
    // Called with the watchdog's lock held: true when a write has been in
    // flight since before `started_before`. The stream then stays alive (its
    // end waits) until CancelStalled has returned.
    virtual bool PinIfStalled(Clock::time_point started_before) = 0;
    // Called without the lock, once for each true PinIfStalled: cancels the
    // stream and unpins it.
    virtual void CancelStalled() = 0;

   protected:
    ~Stream() = default;
  };

  // `stall_seconds` <= 0: never cancels (and runs no thread).
  explicit StreamWatchdog(double stall_seconds);
  ~StreamWatchdog();
  StreamWatchdog(const StreamWatchdog&) = delete;
  StreamWatchdog& operator=(const StreamWatchdog&) = delete;

  double stall_seconds() const { return stall_seconds_; }

  // The server's --drain-seconds ran out with streams still open: gRPC now
  // cancels them, and a stream that ends so ended because the server
  // stopped, not because its client left (StreamReactor reports it
  // UNAVAILABLE, not CANCELLED).
  void MarkServerStopping() { server_stopping_.store(true, std::memory_order_release); }
  bool server_stopping() const { return server_stopping_.load(std::memory_order_acquire); }

  // A stream is watched from admission until its last callback; Forget
  // returns once no scan looks at it any more.
  void Watch(Stream* stream);
  void Forget(Stream* stream);

 private:
  void Loop();

  const double stall_seconds_;
  std::atomic<bool> server_stopping_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  std::set<Stream*> streams_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace seer
