// Admission control for streaming RPCs: at most `workers` jobs run at once,
// at most `max_waiting` wait, and a job that finds the queue full is refused
// at once (the caller answers RESOURCE_EXHAUSTED).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace seer {

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
