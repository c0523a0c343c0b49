// The server side of a streaming RPC whose messages come from a worker thread
// (the prefill engine, the decode loop) and go out through gRPC's callback
// API. One reactor per stream; OnWriteDone drives the next write, so at most
// one write is in flight and gRPC's flow control is the backpressure.
//
// The worker never waits on the client: Send queues and returns, so the
// engine, the worker slot and every other request go on however slowly the
// client reads. What a stream may queue is bounded by the share of the
// service's ByteBudget it reserved at admission (the service sizes the share
// to what the request can produce). A message can also be queued as a
// recipe (SendDeferred) that makes it only when its turn to be written comes:
// a Prefill stream whose client lags queues its KV chunks that way and keeps
// the KV cache, already paid for, as the buffer instead of a second copy.
//
// A client that reads nothing for --write-stall-seconds has its stream
// cancelled (StreamWatchdog): a write in flight that long ends the stream
// with CANCELLED (the HTTP/2 stream is reset; a client that reads again sees
// CANCELLED) and the OnWriteStall hook counts it.
//
// Lifetime: the reactor deletes itself in OnDone. Finish is called only once
// the worker is done with it (FinishWork has returned, or the job was
// cancelled while still queued), no write is in flight or being prepared,
// and no watchdog holds the stream, so OnDone, and the delete, never happen
// under any of them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "base/status.h"
#include "rpc/grpc_status.h"
#include "server/common/stream_watchdog.h"
#include "server/common/work_queue.h"

namespace seer {

template <typename Response>
class StreamReactor : public grpc::ServerWriteReactor<Response>, public WorkQueue::Job, private StreamWatchdog::Stream {
 public:
  // Makes a message when its turn to be written comes, on a gRPC thread.
  using Deferred = std::function<StatusOr<std::unique_ptr<Response>>()>;

  // `context` is the call's (to cancel a stalled stream); `watchdog` (not
  // owned) outlives every stream.
  StreamReactor(grpc::CallbackServerContext* context, StreamWatchdog* watchdog)
      : context_(context), watchdog_(watchdog) {}

 protected:
  // Admits the stream: `charge` (its share of the service's budget) is held
  // until the stream ends; `first`, if any, is queued ahead of anything the
  // worker sends and written at once (a Prefill stream's layout header tells
  // its client at once that it was admitted); then the stream goes to
  // `queue`. False when the queue is full: nothing was written, and the
  // caller finishes the stream with FinishNow.
  bool Admit(WorkQueue* queue, ByteBudget::Reservation charge, std::unique_ptr<Response> first = nullptr,
             size_t first_bytes = 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_ = queue;
      if (first != nullptr) {
        outbox_.push_back({std::move(first), nullptr, first_bytes});
        buffered_bytes_ += first_bytes;
      }
    }
    if (!queue->Submit(this)) {
      std::lock_guard<std::mutex> lock(mu_);
      outbox_.clear();
      buffered_bytes_ = 0;
      queue_ = nullptr;
      return false;
    }
    // The stream is not bound to its call before the method handler returns,
    // so no callback, and no delete, can come before this.
    charge_ = std::move(charge);
    watchdog_->Watch(this);
    watched_ = true;
    Kick();
    return true;
  }

  // Finishes a stream that never reached a worker (validation failed, budget
  // or queue full). Nothing may have been sent.
  void FinishNow(const grpc::Status& status) {
    grpc::Status final_status;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_done_ = true;
      work_status_ = status;
      finish = ShouldFinishLocked(&final_status);
    }
    if (finish) this->Finish(final_status);
  }

  // Worker side; never blocks. Queues `msg` (`bytes` of it counted as
  // buffered) and starts its write when none is in flight. False when the
  // stream was cancelled or broke: stop working.
  bool Send(std::unique_ptr<Response> msg, size_t bytes) { return Queue({std::move(msg), nullptr, bytes}); }

  // Worker side; never blocks. Queues a message that `make` produces when
  // its turn to be written comes (`bytes` counted as buffered only from
  // then). `make` and what it holds are dropped unused if the stream ends
  // first.
  bool SendDeferred(Deferred make, size_t bytes) { return Queue({nullptr, std::move(make), bytes}); }

  // Worker side, the last call of Run: the stream ends with `status` once
  // every queued message is written (CANCELLED if the stream is gone). The
  // worker must not touch the reactor afterwards.
  //
  // Once work_done_ is set, any gRPC thread may finish the stream, and its
  // OnDone deletes the reactor: so the worker holds the finish off
  // (finishing_work_) while it still starts the next write here, and lets
  // go, deciding under the lock whether the finish is its own, as its very
  // last touch. (Setting work_done_ and then calling Kick let a write that
  // completed in between finish and delete the stream under the worker: a
  // use after free, seen as a hung decode loop in the chaos test.)
  void FinishWork(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_done_ = true;
      work_status_ = status;
      finishing_work_ = true;
    }
    Kick();  // may start a write; cannot finish the stream while finishing_work_ holds it
    grpc::Status final_status;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      finishing_work_ = false;
      finish = ShouldFinishLocked(&final_status);
    }
    if (finish) this->Finish(final_status);
  }

  // Bytes of made messages queued and not yet written.
  size_t buffered_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return buffered_bytes_;
  }

  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

  // Hooks, each called without the lock held.
  // The stream was cancelled or broke while the worker may be running: stop
  // what it waits on (a downstream call, say).
  virtual void OnStreamCancelled() {}
  // The watchdog cancelled the stream: its client read nothing for
  // --write-stall-seconds. Called before OnStreamCancelled.
  virtual void OnWriteStall(double /*stall_seconds*/) {}
  // Right before `msg` goes to gRPC; every earlier message has been written.
  virtual void BeforeWrite(Response* /*msg*/) {}
  // `msg` was written; returns before the next message's BeforeWrite starts.
  virtual void AfterWrite(const Response& /*msg*/, size_t /*bytes*/) {}
  // Last call before the reactor is deleted, with the status the client got.
  virtual void OnStreamDone(const grpc::Status& /*status*/) {}

 private:
  struct Pending {
    std::unique_ptr<Response> msg;  // null until made, for a deferred message
    Deferred make;
    size_t bytes = 0;
    bool making = false;  // `make` runs on some thread, outside the lock
  };

  bool Queue(Pending pending) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) return false;
      if (pending.msg != nullptr) buffered_bytes_ += pending.bytes;
      outbox_.push_back(std::move(pending));
    }
    Kick();
    return true;
  }

  // Writes the next message if none is in flight, or finishes the stream if
  // everything is done. Any thread, without the lock.
  void Kick() {
    grpc::Status final_status;
    bool pump = false, finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pump = TakePumpLocked();
      finish = !pump && ShouldFinishLocked(&final_status);
    }
    if (pump) Pump();
    if (finish) this->Finish(final_status);
  }

  // The pump is the right to make and write the message at the front of the
  // outbox; one thread holds it from taking the front until its OnWriteDone.
  bool TakePumpLocked() {
    if (pump_busy_ || cancelled_ || outbox_.empty() || queue_ == nullptr) return false;
    pump_busy_ = true;
    return true;
  }

  // Holding the pump: makes the front message if it is deferred, starts its
  // write, and makes the next deferred message while this one is in flight
  // (so the copy out of the KV cache overlaps the network, as a copy made by
  // the worker would).
  void Pump() {
    Pending* front = nullptr;
    Deferred make;
    {
      grpc::Status final_status;
      bool finish = false;
      std::deque<Pending> dropped;
      {
        std::lock_guard<std::mutex> lock(mu_);
        front = &outbox_.front();
        if (front->making) {
          // Made ahead by another thread, which writes it when it is done.
          pump_busy_ = false;
          return;
        }
        if (cancelled_) {
          if (front->msg != nullptr) buffered_bytes_ -= front->bytes;
          dropped.push_back(std::move(*front));
          outbox_.pop_front();
          pump_busy_ = false;
          finish = ShouldFinishLocked(&final_status);
        } else if (front->msg == nullptr) {
          make = ClaimLocked(*front);
        }
      }
      if (!dropped.empty()) {
        dropped.clear();
        if (finish) this->Finish(final_status);
        return;
      }
    }
    if (make && !Make(front, std::move(make), /*holds_pump=*/true)) return;  // the stream ended meanwhile
    Response* to_write = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      to_write = front->msg.get();
      writing_ = true;
      write_started_ = StreamWatchdog::Clock::now();
    }
    BeforeWrite(to_write);
    this->StartWrite(to_write);
    MakeAhead();
  }

  // Makes the second message of the outbox if it is deferred and nobody
  // makes it yet. Called right after a write started, by the thread that
  // started it.
  void MakeAhead() {
    Pending* next = nullptr;
    Deferred make;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_ || outbox_.size() < 2) return;
      next = &outbox_[1];
      if (next->msg != nullptr || next->making || !next->make) return;
      make = ClaimLocked(*next);
    }
    // By the time it is made it may be the front, and the pump free.
    if (Make(next, std::move(make), /*holds_pump=*/false)) Kick();
  }

  // Under the lock: takes the recipe of `entry` to run outside the lock. The
  // entry stays in the outbox (a cancellation keeps it) until Make is done.
  Deferred ClaimLocked(Pending& entry) {
    entry.making = true;
    ++making_;
    Deferred make = std::move(entry.make);
    entry.make = nullptr;
    return make;
  }

  // Without the lock: runs a claimed recipe and stores its message. A recipe
  // that fails ends the stream with its status. False when the stream is
  // cancelled: then the pump, if this thread holds it (for the front, which
  // `entry` then is), is released with the entry; a message made ahead stays
  // behind, empty, since nothing more is written (taking it out of the
  // middle of the outbox would move the front under its pump).
  bool Make(Pending* entry, Deferred make, bool holds_pump) {
    // Outside the lock: a KV chunk is a copy of megabytes.
    StatusOr<std::unique_ptr<Response>> made = make();
    make = nullptr;
    grpc::Status final_status;
    bool finish = false, newly_cancelled = false, stored = false;
    std::deque<Pending> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!made.ok()) {
        newly_cancelled = CancelLocked(ToGrpcStatus(made.status()), &dropped);
      } else if (*made == nullptr) {
        newly_cancelled =
            CancelLocked(grpc::Status(grpc::StatusCode::INTERNAL, "a deferred message came out empty"), &dropped);
      } else if (!cancelled_) {
        entry->msg = std::move(*made);
        buffered_bytes_ += entry->bytes;
        stored = true;
      }
      entry->making = false;
      --making_;
      if (!stored) {
        if (holds_pump) {
          dropped.push_back(std::move(outbox_.front()));
          outbox_.pop_front();
          pump_busy_ = false;
        }
        finish = ShouldFinishLocked(&final_status);
      }
    }
    dropped.clear();
    if (newly_cancelled) OnStreamCancelled();
    if (finish) this->Finish(final_status);
    return stored;
  }

  void OnWriteDone(bool ok) override {
    // AfterWrite runs while the message is still the one in flight: until
    // the pump is released below, no other thread can start the next write,
    // so its BeforeWrite cannot overlap this hook.
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
    grpc::Status final_status;
    bool pump = false, finish = false, newly_cancelled = false;
    std::unique_ptr<Response> written;
    std::deque<Pending> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      written = std::move(outbox_.front().msg);
      buffered_bytes_ -= outbox_.front().bytes;
      outbox_.pop_front();
      writing_ = false;
      pump_busy_ = false;
      if (!ok) {
        newly_cancelled = CancelLocked(Broken("the stream broke: a write failed"), &dropped);
      }
      pump = TakePumpLocked();
      finish = !pump && ShouldFinishLocked(&final_status);
    }
    dropped.clear();
    written.reset();
    if (newly_cancelled) OnStreamCancelled();
    if (pump) Pump();
    if (finish) this->Finish(final_status);
  }

  // Why a stream ended early: the server stopping at the end of its drain;
  // else, from the client's side, its deadline, when that has passed, else
  // `what`. gRPC ends such a call as it ends a
  // cancelled one (a failed write, OnCancel), and the server's copy of the
  // deadline runs a little behind the client's (it counts from the call's
  // arrival), so a call ended within kDeadlineSlack of it counts as expired.
  grpc::Status Broken(const char* what) const {
    if (watchdog_->server_stopping()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the server stopped before the stream ended (its --drain-seconds ran out)");
    }
    constexpr auto kDeadlineSlack = std::chrono::milliseconds(200);
    if (context_->deadline() <= std::chrono::system_clock::now() + kDeadlineSlack) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the client's deadline passed");
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, what);
  }

  void OnCancel() override {
    grpc::Status final_status;
    bool finish = false, newly_cancelled = false;
    std::deque<Pending> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      newly_cancelled = CancelLocked(Broken("the client cancelled the stream"), &dropped);
      finish = ShouldFinishLocked(&final_status);
    }
    dropped.clear();
    if (newly_cancelled) OnStreamCancelled();
    if (finish) this->Finish(final_status);
  }

  void OnDone() override {
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = final_status_;
    }
    if (watched_) watchdog_->Forget(this);
    OnStreamDone(status);
    delete this;  // and with it the charge
  }

  // StreamWatchdog::Stream.
  bool PinIfStalled(StreamWatchdog::Clock::time_point started_before) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!writing_ || cancelled_ || stall_pinned_ || write_started_ >= started_before) return false;
    stall_pinned_ = true;
    return true;
  }

  void CancelStalled() override {
    const double seconds = watchdog_->stall_seconds();
    char text[160];
    std::snprintf(text, sizeof(text),
                  "the client read nothing for %.3g s (--write-stall-seconds): the server cancelled the stream",
                  seconds);
    bool newly_cancelled = false;
    std::deque<Pending> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      newly_cancelled = CancelLocked(grpc::Status(grpc::StatusCode::CANCELLED, text), &dropped);
    }
    dropped.clear();
    if (newly_cancelled) {
      OnWriteStall(seconds);
      OnStreamCancelled();
    }
    // Resets the HTTP/2 stream: the write in flight completes (not ok), and
    // OnCancel comes; either may run on this thread, before this returns.
    context_->TryCancel();
    grpc::Status final_status;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stall_pinned_ = false;
      finish = ShouldFinishLocked(&final_status);
    }
    if (finish) this->Finish(final_status);
  }

  // Marks the stream cancelled with `status` (the first cancellation's status
  // is the one kept) and moves out everything not yet handed to gRPC; the
  // message the pump holds stays until its write is done, and one being made
  // until it is made. A job still waiting for a worker is taken off the
  // queue: it will never run. True when this call cancelled the stream.
  bool CancelLocked(const grpc::Status& status, std::deque<Pending>* dropped) {
    if (cancelled_) return false;
    cancelled_ = true;
    cancel_status_ = status;
    // What is held (in flight, or being made) is a prefix of the outbox, so
    // only its tail goes, and no reference into the outbox is invalidated.
    while (!outbox_.empty() && !outbox_.back().making && !(pump_busy_ && outbox_.size() == 1)) {
      if (outbox_.back().msg != nullptr) buffered_bytes_ -= outbox_.back().bytes;
      dropped->push_front(std::move(outbox_.back()));
      outbox_.pop_back();
    }
    if (queue_ != nullptr && queue_->Cancel(this)) work_done_ = true;
    return true;
  }

  // Whether the stream may finish now; if so, marks it finished and sets the
  // status the client gets.
  bool ShouldFinishLocked(grpc::Status* status) {
    if (finish_called_ || !work_done_ || finishing_work_ || pump_busy_ || making_ > 0 || stall_pinned_) return false;
    if (!cancelled_ && !outbox_.empty()) return false;
    finish_called_ = true;
    final_status_ = cancelled_ ? cancel_status_ : work_status_;
    *status = final_status_;
    return true;
  }

  grpc::CallbackServerContext* const context_;
  StreamWatchdog* const watchdog_;
  ByteBudget::Reservation charge_;
  bool watched_ = false;
  WorkQueue* queue_ = nullptr;

  mutable std::mutex mu_;
  std::deque<Pending> outbox_;
  size_t buffered_bytes_ = 0;
  bool pump_busy_ = false;
  int making_ = 0;  // deferred messages being made outside the lock
  bool writing_ = false;  // StartWrite called, OnWriteDone not yet
  StreamWatchdog::Clock::time_point write_started_;
  bool stall_pinned_ = false;
  bool cancelled_ = false;
  grpc::Status cancel_status_;
  bool work_done_ = false;
  bool finishing_work_ = false;  // the worker is still inside FinishWork
  grpc::Status work_status_;
  bool finish_called_ = false;
  grpc::Status final_status_;
};

}  // namespace seer
