#include "server/common/work_queue.h"

#include <algorithm>

namespace seer {

ByteBudget::Reservation& ByteBudget::Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = other.budget_;
    bytes_ = other.bytes_;
    other.budget_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

ByteBudget::Reservation ByteBudget::Reservation::Split(int64_t bytes) {
  bytes = std::clamp<int64_t>(bytes, 0, bytes_);
  bytes_ -= bytes;
  return Reservation(budget_, bytes);
}

void ByteBudget::Reservation::Release() {
  if (budget_ != nullptr && bytes_ > 0) budget_->Give(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

std::optional<ByteBudget::Reservation> ByteBudget::TryReserve(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (bytes < 0 || bytes > limit_ - used_) return std::nullopt;
  used_ += bytes;
  return Reservation(this, bytes);
}

int64_t ByteBudget::used() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_;
}

void ByteBudget::Give(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ -= bytes;
}

WorkQueue::WorkQueue(int workers, int max_waiting) : max_waiting_(std::max(0, max_waiting)) {
  const int n = std::max(1, workers);
  threads_.reserve(n);
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

WorkQueue::~WorkQueue() { Shutdown(); }

bool WorkQueue::Submit(Job* job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    // Room for one job per worker plus max_waiting_ more. A job taken by a
    // worker leaves waiting_ and joins running_ under this lock, so the sum
    // is exact.
    const int admitted = running_ + static_cast<int>(waiting_.size());
    if (admitted >= static_cast<int>(threads_.size()) + max_waiting_) return false;
    waiting_.push_back({job, std::chrono::steady_clock::now()});
  }
  cv_.notify_one();
  return true;
}

bool WorkQueue::Cancel(Job* job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(waiting_.begin(), waiting_.end(), [job](const Entry& e) { return e.job == job; });
  if (it == waiting_.end()) return false;
  waiting_.erase(it);
  return true;
}

void WorkQueue::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

int WorkQueue::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

int WorkQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(waiting_.size());
}

void WorkQueue::WorkerLoop() {
  for (;;) {
    Entry entry;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
      if (waiting_.empty()) return;  // stopping, and nothing left to run
      entry = waiting_.front();
      waiting_.pop_front();
      ++running_;
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - entry.enqueued).count();
    entry.job->Run(waited);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --running_;
    }
  }
}

}  // namespace seer
