// The server side of a streaming RPC whose messages come from a worker thread
// (the prefill engine, the decode loop) and go out through gRPC's callback
// API. One reactor per stream; OnWriteDone drives the next write, so at most
// one write is in flight and gRPC's flow control is the backpressure. The
// worker blocks in Send while more than `max_buffered_bytes` wait to be
// written, so the engine runs ahead of the network by a bounded amount.
//
// Lifetime: the reactor deletes itself in OnDone. Finish is called only once
// the worker has returned from Run (or the job was cancelled while still
// queued), so OnDone, and the delete, can never happen under a running worker.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "server/common/work_queue.h"

namespace seer {

template <typename Response>
class StreamReactor : public grpc::ServerWriteReactor<Response>, public WorkQueue::Job {
 public:
  explicit StreamReactor(size_t max_buffered_bytes) : max_buffered_bytes_(max_buffered_bytes) {}

 protected:
  // Hands the stream to `queue`. When the queue is full, finishes at once
  // with `rejection` and returns false.
  bool Admit(WorkQueue* queue, const grpc::Status& rejection) {
    queue_ = queue;
    if (queue->Submit(this)) return true;
    FinishNow(rejection);
    return false;
  }

  // Finishes a stream that never reached a worker (validation failed, queue
  // full). Nothing may have been sent.
  void FinishNow(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_done_ = true;
      finish_called_ = true;
      final_status_ = status;
    }
    this->Finish(status);
  }

  // Worker side. Queues `msg` ( `bytes` of it count against the buffer bound)
  // and starts its write when none is in flight. Blocks while the buffer is
  // full. False when the stream was cancelled or broke: stop working.
  bool Send(std::unique_ptr<Response> msg, size_t bytes) {
    Response* to_write = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      space_.wait(lock, [&] {
        return cancelled_ || buffered_bytes_ == 0 || buffered_bytes_ + bytes <= max_buffered_bytes_;
      });
      if (cancelled_) return false;
      outbox_.push_back({std::move(msg), bytes});
      buffered_bytes_ += bytes;
      if (!write_in_flight_) {
        write_in_flight_ = true;
        to_write = outbox_.front().msg.get();
      }
    }
    if (to_write != nullptr) Write(to_write);
    return true;
  }

  // Worker side, the last call of Run: the stream ends with `status` once
  // every queued message is written (CANCELLED if the stream is gone). The
  // worker must not touch the reactor afterwards.
  void FinishWork(const grpc::Status& status) {
    Response* to_write = nullptr;
    bool finish = false;
    grpc::Status final_status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_done_ = true;
      final_status_ = cancelled_ ? grpc::Status(grpc::StatusCode::CANCELLED, cancel_reason_) : status;
      if (!write_in_flight_) {
        if (!outbox_.empty() && !cancelled_) {
          write_in_flight_ = true;
          to_write = outbox_.front().msg.get();
        } else if (!finish_called_) {
          finish_called_ = true;
          finish = true;
          final_status = final_status_;
        }
      }
    }
    if (to_write != nullptr) Write(to_write);
    if (finish) this->Finish(final_status);
  }

  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

  // Hooks, each called without the lock held.
  // The stream was cancelled or broke while the worker may be running: stop
  // what it waits on (a downstream call, say).
  virtual void OnStreamCancelled() {}
  // Right before `msg` goes to gRPC; every earlier message has been written.
  virtual void BeforeWrite(Response* /*msg*/) {}
  // `msg` was written; returns before the next message's BeforeWrite starts.
  virtual void AfterWrite(const Response& /*msg*/, size_t /*bytes*/) {}
  // Last call before the reactor is deleted, with the status the client got.
  virtual void OnStreamDone(const grpc::Status& /*status*/) {}

 private:
  struct Pending {
    std::unique_ptr<Response> msg;
    size_t bytes;
  };

  void Write(Response* msg) {
    BeforeWrite(msg);
    this->StartWrite(msg);
  }

  void OnWriteDone(bool ok) override {
    // AfterWrite runs while the message is still the one in flight: until
    // write_in_flight_ is cleared below, no Send can start the next write, so
    // its BeforeWrite cannot overlap this hook.
    if (ok) {
      const Response* in_flight = nullptr;
      size_t in_flight_bytes = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        in_flight = outbox_.front().msg.get();
        in_flight_bytes = outbox_.front().bytes;
      }
      AfterWrite(*in_flight, in_flight_bytes);
    }
    Response* to_write = nullptr;
    bool finish = false;
    grpc::Status final_status;
    std::unique_ptr<Response> written;
    {
      std::lock_guard<std::mutex> lock(mu_);
      written = std::move(outbox_.front().msg);
      buffered_bytes_ -= outbox_.front().bytes;
      outbox_.pop_front();
      write_in_flight_ = false;
      if (!ok) MarkCancelledLocked("the stream broke: a write failed");
      if (!cancelled_ && !outbox_.empty()) {
        write_in_flight_ = true;
        to_write = outbox_.front().msg.get();
      } else if (work_done_ && !finish_called_) {
        finish_called_ = true;
        finish = true;
        if (cancelled_) final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, cancel_reason_);
        final_status = final_status_;
      }
    }
    space_.notify_all();
    if (!ok) OnStreamCancelled();
    if (to_write != nullptr) Write(to_write);
    if (finish) this->Finish(final_status);
  }

  void OnCancel() override {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      MarkCancelledLocked("the client cancelled the stream");
    }
    space_.notify_all();
    OnStreamCancelled();
    // Still waiting for a worker: it will never run, so finish here.
    if (queue_ != nullptr && queue_->Cancel(this)) {
      std::lock_guard<std::mutex> lock(mu_);
      work_done_ = true;
      if (!write_in_flight_ && !finish_called_) {
        finish_called_ = true;
        finish = true;
        final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, cancel_reason_);
      }
    }
    if (finish) this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the stream"));
  }

  void OnDone() override {
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
    }
    OnStreamDone(status);
    delete this;
  }

  // Drops everything not yet handed to gRPC; the message in flight stays
  // until its OnWriteDone.
  void MarkCancelledLocked(const char* reason) {
    if (cancelled_) return;
    cancelled_ = true;
    cancel_reason_ = reason;
    while (outbox_.size() > (write_in_flight_ ? 1u : 0u)) {
      buffered_bytes_ -= outbox_.back().bytes;
      outbox_.pop_back();
    }
  }

  const size_t max_buffered_bytes_;
  WorkQueue* queue_ = nullptr;
  mutable std::mutex mu_;
  std::condition_variable space_;
  std::deque<Pending> outbox_;
  size_t buffered_bytes_ = 0;
  bool write_in_flight_ = false;
  bool cancelled_ = false;
  const char* cancel_reason_ = "";
  bool work_done_ = false;
  bool finish_called_ = false;
  grpc::Status final_status_;
};

}  // namespace seer
