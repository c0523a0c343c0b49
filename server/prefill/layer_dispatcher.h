// One gRPC KV transfer's layers, shared out among its streams
// (docs/KV_TRANSPORT.md, section 4): the prefill hands each finished layer
// over; a stream that is free takes the next one, writes all its chunks in
// token order, and takes another. A layer's chunks are all on one stream, so
// the receiver's per-layer order checks hold. Stream 0 (the Prefill call)
// sends the summary once every layer has been written on every stream.
//
// A layer that becomes ready goes first to a KvStream that is waiting for
// one (in the order they started waiting), so that the layers spread over
// the connections from the start; stream 0 takes those that no waiting
// stream claimed.
//
// Streams that find no layer ready wait with a wake callback. Callbacks (the
// wakes and stream 0's continuation) go to `post`, a serial executor: they
// never run on the thread that made the change, which may hold its own
// stream's lock, so no stream's lock is ever taken under another's.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "base/status.h"

namespace seer {

// Runs closures one at a time, in order, on a thread of its own; the
// destructor runs what was posted, then joins.
class SerialExecutor {
 public:
  SerialExecutor();
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;
  void Post(std::function<void()> fn);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

class LayerDispatcher {
 public:
  // Take's answers besides a layer.
  static constexpr int kWait = -1;  // none ready yet: `wake` runs once one is, or the transfer ends
  static constexpr int kNone = -2;  // every layer is taken, or the transfer failed: the stream is done

  LayerDispatcher(int num_layers, int streams, SerialExecutor* executor)
      : num_layers_(num_layers), streams_(streams), executor_(executor) {}

  int streams() const { return streams_; }

  // The prefill: layer `layer` (0, 1, ... in order) is final.
  void LayerReady(int layer);
  // The transfer ends early with `status` (not OK): waiting streams are woken
  // (Take answers kNone) and stream 0's continuation runs with it. The first
  // failure is kept.
  void Fail(const Status& status);
  Status failure() const;

  // KvStream `index` attaches: INVALID_ARGUMENT when it is not in
  // [1, streams) or already attached.
  Status Attach(int index);

  // The next layer for stream `index`: one handed to it while it waited,
  // else the next ready one; kWait keeps `wake` (when given) to run once a
  // layer is handed to it or the transfer ends. A stream takes at most the
  // layers it can write next.
  int Take(int index, std::function<void()> wake);
  // Stream `index` ends: it no longer waits, and the number of layers handed
  // to it and not yet taken is returned (lost with it).
  int Leave(int index);
  // A stream wrote (stream 0: queued) every chunk of a layer it took.
  void Written();
  // Stream 0: `then` runs once every layer is taken and written (at once if
  // so), or when the transfer fails, with the failure.
  void WhenAllWritten(std::function<void(const Status&)> then);

 private:
  // Under the lock: takes the wakes to run and, when the transfer is over,
  // stream 0's continuation.
  void CollectLocked(std::vector<std::function<void()>>* wakes, std::function<void(const Status&)>* then,
                     Status* status, bool wake_all);
  void Run(std::vector<std::function<void()>>& wakes, std::function<void(const Status&)>& then, const Status& status);

  const int num_layers_;
  const int streams_;
  SerialExecutor* const executor_;
  mutable std::mutex mu_;
  int ready_ = 0;  // layers final
  int taken_ = 0;  // layers handed to a stream
  int written_ = 0;  // layers written
  Status failure_;
  std::vector<bool> attached_;
  std::map<int, std::function<void()>> waiting_;  // by stream
  std::deque<int> waiting_order_;  // streams in the order they started waiting
  std::map<int, std::deque<int>> handed_;  // layers handed to a waiting stream, not yet taken
  std::function<void(const Status&)> then_;
};

}  // namespace seer
