// Cancelling a blocking gRPC client call from another thread: the thread
// that makes the call binds its context, and Cancel() (from any thread)
// cancels it at once, or, when it comes first, keeps the call from starting.
// The decode worker cancels its Prefill calls with it, and the OpenAI front
// door the other choices' Generate calls when one fails.
#pragma once

#include <mutex>

#include <grpcpp/client_context.h>

namespace seer {

class CallCanceller {
 public:
  // False when Cancel came first: do not start the call.
  bool Bind(grpc::ClientContext* context);
  // Before the context goes away.
  void Unbind();
  void Cancel();
  bool cancelled() const;

 private:
  mutable std::mutex mu_;
  grpc::ClientContext* context_ = nullptr;
  bool cancelled_ = false;
};

}  // namespace seer
