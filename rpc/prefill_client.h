// The decode worker's side of Prefill: a set of prefill endpoints picked
// round-robin, and one call that pulls a prompt's KV cache into a KvCache.
//
// `--prefill` takes comma-separated gRPC targets: host:port, or dns:///name:port
// for a name with many addresses (a Kubernetes headless Service), whose
// channel balances round-robin over every address.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "seer/v1/seer.grpc.pb.h"
#include "rpc/kv_assembler.h"

namespace seer {

// Lets another thread cancel the client call a worker is blocked in.
class CallCanceller {
 public:
  // False when Cancel came first: do not start the call.
  bool Bind(grpc::ClientContext* context);
  void Unbind();
  void Cancel();
  bool cancelled() const;

 private:
  mutable std::mutex mu_;
  grpc::ClientContext* context_ = nullptr;
  bool cancelled_ = false;
};

struct PrefillClientOptions {
  // Calls per request: 0 is one per endpoint, plus 2 for each dns:/// target.
  int attempts = 0;
  // Deadline of one Prefill call; 0: none.
  double timeout_seconds = 0.0;
  // Largest message accepted from a prefill server.
  int64_t max_receive_bytes = int64_t{64} << 20;
  // Also retry elsewhere when a stream breaks (UNAVAILABLE) after its first
  // message: the prefill restarts from scratch on the next endpoint, which
  // costs its whole compute again. Off: such a request ends UNAVAILABLE.
  bool retry_broken_streams = false;
  // TLS to the endpoints (rpc/channel_credentials.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

struct FetchedKv {
  v1::PrefillSummary summary;
  std::string endpoint;
  int attempts = 0;
  int64_t kv_bytes = 0;
  double seconds = 0.0;  // from the call to the summary
};

class PrefillClient {
 public:
  // `targets`: "host:port[,host:port...]" or dns:/// names. INVALID_ARGUMENT
  // naming --prefill on a malformed list.
  static StatusOr<std::unique_ptr<PrefillClient>> Create(const std::string& targets,
                                                         const PrefillClientOptions& options);

  // Calls Prefill and assembles the KV into `cache`. An endpoint that answers
  // UNAVAILABLE before its first message is skipped for the next one (and,
  // with retry_broken_streams, one whose stream breaks later); any other
  // failure ends the fetch with a status that names the endpoint.
  // `on_kv_bytes` is called with the K/V bytes of each chunk as it lands.
  StatusOr<FetchedKv> Fetch(const v1::PrefillRequest& request, const ExpectedLayout& expected, KvCache* cache,
                            CallCanceller* canceller, const std::function<void(int64_t)>& on_kv_bytes);

  const std::vector<std::string>& targets() const { return targets_; }

 private:
  struct Endpoint {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::Prefill::Stub> stub;
  };
  // OK, or the call's status; `retryable` when UNAVAILABLE came before any message.
  Status FetchOnce(Endpoint& endpoint, const v1::PrefillRequest& request, const ExpectedLayout& expected,
                   KvCache* cache, CallCanceller* canceller, const std::function<void(int64_t)>& on_kv_bytes,
                   FetchedKv* out, bool* retryable);

  PrefillClientOptions options_;
  std::vector<std::string> targets_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  int attempts_ = 1;
  std::atomic<uint64_t> next_{0};
};

// Splits and checks a --prefill list.
StatusOr<std::vector<std::string>> ParsePrefillTargets(const std::string& targets);

}  // namespace seer
