#include "server/prefill/layer_dispatcher.h"

#include <algorithm>
#include <string>
#include <utility>

namespace seer {

void LayerDispatcher::CollectLocked(std::vector<std::function<void()>>* wakes, std::function<void(const Status&)>* then,
                                    Status* status, bool wake_all) {
  // Ready layers go to the streams waiting for one, first come first served.
  while (failure_.ok() && taken_ < ready_ && !waiting_order_.empty()) {
    const int index = waiting_order_.front();
    waiting_order_.pop_front();
    auto it = waiting_.find(index);
    if (it == waiting_.end()) continue;
    handed_[index].push_back(taken_++);
    wakes->push_back(std::move(it->second));
    waiting_.erase(it);
  }
  const bool over = !failure_.ok() || taken_ == num_layers_;
  if (wake_all || over) {
    for (auto& [index, wake] : waiting_) wakes->push_back(std::move(wake));
    waiting_.clear();
    waiting_order_.clear();
  }
  if (then_ && (!failure_.ok() || written_ == num_layers_)) {
    *then = std::move(then_);
    then_ = nullptr;
    *status = failure_;
  }
}

SerialExecutor::SerialExecutor() {
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::function<void()> fn = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      fn();
      fn = nullptr;
      lock.lock();
    }
  });
}

SerialExecutor::~SerialExecutor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SerialExecutor::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(fn));
  }
  cv_.notify_all();
}

void LayerDispatcher::Run(std::vector<std::function<void()>>& wakes, std::function<void(const Status&)>& then,
                          const Status& status) {
  for (auto& wake : wakes) executor_->Post(std::move(wake));
  if (then) executor_->Post([then = std::move(then), status] { then(status); });
}

void LayerDispatcher::LayerReady(int layer) {
  std::vector<std::function<void()>> wakes;
  std::function<void(const Status&)> then;
  Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (layer + 1 > ready_) ready_ = std::min(layer + 1, num_layers_);
    CollectLocked(&wakes, &then, &status, /*wake_all=*/true);
  }
  Run(wakes, then, status);
}

void LayerDispatcher::Fail(const Status& status) {
  std::vector<std::function<void()>> wakes;
  std::function<void(const Status&)> then;
  Status out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.ok()) failure_ = status.ok() ? Status(StatusCode::kAborted, "the KV transfer ended") : status;
    CollectLocked(&wakes, &then, &out, /*wake_all=*/true);
  }
  Run(wakes, then, out);
}

Status LayerDispatcher::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

Status LayerDispatcher::Attach(int index) {
  std::lock_guard<std::mutex> lock(mu_);
  if (index < 1 || index >= streams_)
    return InvalidArgument("index: " + std::to_string(index) + " is out of range [1, " + std::to_string(streams_) +
                           ") (the transfer's grpc_streams)");
  if (attached_.empty()) attached_.assign(streams_, false);
  if (attached_[index]) return InvalidArgument("index: stream " + std::to_string(index) + " is already attached");
  attached_[index] = true;
  return OkStatus();
}

int LayerDispatcher::Take(int index, std::function<void()> wake) {
  std::vector<std::function<void()>> wakes;
  std::function<void(const Status&)> then;
  Status status;
  int layer = kWait;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto handed = handed_.find(index);
    if (!failure_.ok()) {
      layer = kNone;
    } else if (handed != handed_.end() && !handed->second.empty()) {
      layer = handed->second.front();
      handed->second.pop_front();
    } else if (taken_ == num_layers_) {
      layer = kNone;
    } else if (taken_ < ready_) {
      layer = taken_++;
      // The last layer taken: the waiting streams are done.
      CollectLocked(&wakes, &then, &status, /*wake_all=*/false);
    } else if (wake) {
      if (waiting_.count(index) == 0) waiting_order_.push_back(index);
      waiting_[index] = std::move(wake);
    }
  }
  Run(wakes, then, status);
  return layer;
}

int LayerDispatcher::Leave(int index) {
  std::lock_guard<std::mutex> lock(mu_);
  waiting_.erase(index);
  auto it = handed_.find(index);
  if (it == handed_.end()) return 0;
  const int lost = static_cast<int>(it->second.size());
  handed_.erase(it);
  return lost;
}

void LayerDispatcher::Written() {
  std::vector<std::function<void()>> wakes;
  std::function<void(const Status&)> then;
  Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++written_;
    CollectLocked(&wakes, &then, &status, /*wake_all=*/false);
  }
  Run(wakes, then, status);
}

void LayerDispatcher::WhenAllWritten(std::function<void(const Status&)> then_arg) {
  std::vector<std::function<void()>> wakes;
  std::function<void(const Status&)> then;
  Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    then_ = std::move(then_arg);
    CollectLocked(&wakes, &then, &status, /*wake_all=*/false);
  }
  Run(wakes, then, status);
}

}  // namespace seer
