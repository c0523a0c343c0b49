// Admission control for streaming RPCs: at most `workers` jobs run at once,
// at most `max_waiting` wait, and a job that finds the queue full is refused
// at once (the caller answers RESOURCE_EXHAUSTED). A ByteBudget bounds the
// memory admitted streams may hold for their clients in total.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace seer {

// Bytes that admitted streams may hold for their clients, in total: a
// Prefill stream's KV cache and chunk messages, a Generate stream's tokens.
// A stream reserves its bound when it is admitted and gives it back as it
// frees what the bound covered, at the latest when it ends. A worker slot is
// freed as soon as the compute is done, so the streams that wait on slow
// clients are bounded by this, not by the WorkQueue.
class ByteBudget {
 public:
  // A share of the budget; given back when destroyed.
  class Reservation {
   public:
    Reservation() = default;
    Reservation(Reservation&& other) noexcept { *this = std::move(other); }
    Reservation& operator=(Reservation&& other) noexcept;
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }

    int64_t bytes() const { return bytes_; }
    // Moves `bytes` (at most bytes()) of this share into a reservation of its own.
    Reservation Split(int64_t bytes);
    void Release();

   private:
    friend class ByteBudget;
    Reservation(ByteBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    ByteBudget* budget_ = nullptr;
    int64_t bytes_ = 0;
  };

  explicit ByteBudget(int64_t limit) : limit_(limit) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  // Nothing when `bytes` more would exceed the limit.
  std::optional<Reservation> TryReserve(int64_t bytes);

  int64_t limit() const { return limit_; }
  int64_t used() const;

 private:
  void Give(int64_t bytes);

  const int64_t limit_;
  mutable std::mutex mu_;
  int64_t used_ = 0;
};

class WorkQueue {
 public:
  class Job {
   public:
    virtual ~Job() = default;
    // Runs on a worker thread; `queue_seconds` is how long the job waited.
    virtual void Run(double queue_seconds) = 0;
  };

  WorkQueue(int workers, int max_waiting);
  // Stops taking jobs, runs the ones already queued, joins the workers.
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // False when every worker is busy and `max_waiting` jobs already wait, or
  // after Shutdown.
  bool Submit(Job* job);
  // Removes a job that is still waiting; true when it was (it will not run).
  bool Cancel(Job* job);
  // Stops taking jobs; the queued ones still run. Joins the workers.
  void Shutdown();

  int running() const;
  int waiting() const;
  int workers() const { return static_cast<int>(threads_.size()); }
  int max_waiting() const { return max_waiting_; }

 private:
  struct Entry {
    Job* job;
    std::chrono::steady_clock::time_point enqueued;
  };
  void WorkerLoop();

  const int max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> waiting_;
  int running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace seer
