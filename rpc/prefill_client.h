// The decode worker's side of Prefill: a set of prefill endpoints, and one
// call that pulls a prompt's KV cache into a KvCache.
//
// `--prefill` takes comma-separated gRPC targets: host:port, or dns:///name:port
// for a name with many addresses (a Kubernetes headless Service), whose
// channel balances round-robin over every address.
//
// Routing: each request tries the endpoints in order of the load it knows
// of (the running plus queued requests an endpoint reported in the initial
// metadata of its last answer, rpc/load_metadata.h, for a few seconds, plus this
// client's own calls in flight there), endpoints that are down or refused a
// call lately last, round-robin among equals. With prefix affinity (on by
// default), among the endpoints whose load is within one request of the
// least, the one that served the longest prefix of this prompt lately (its
// whole 64-token blocks, with the same sparsity) comes first: a prefill
// server's prefix store (--prefix-cache-bytes) can serve a chat's next turn
// only where its previous turn ran. An endpoint that answers
// UNAVAILABLE or RESOURCE_EXHAUSTED, or sends nothing within the first-byte
// timeout, before its first KV chunk is skipped for the next.
//
// Detection: connection attempts time out after `connect_timeout_seconds`,
// keepalive pings find a stopped peer within `keepalive_seconds +
// keepalive_timeout_seconds`, and a health check of every endpoint each
// `health_interval_seconds` tells WatchHealth whether any can serve.
//
// KV transports (docs/KV_TRANSPORT.md): every call offers what this client
// can take (rpc/kv_handshake.h): `kv_grpc_streams` gRPC streams, the Prefill
// call plus KvStream calls on channels (TCP connections) of their own, and,
// when the cache is a CUDA engine's and the build has NCCL, an NCCL link
// with the prefill process. The prefill's header says what it chose; the
// chunks land through a KvLanding (rpc/landing) straight from the received
// slices, or NCCL writes the layers into the cache.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "rpc/call_canceller.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/kv_assembler.h"
#include "rpc/kv_wire.h"
#include "seer/v1/seer.grpc.pb.h"

namespace seer {

struct PrefillClientOptions {
  // Calls per request: 0 is one per endpoint, plus 2 for each dns:/// target.
  int attempts = 0;
  // Deadline of one Prefill call; 0: none.
  double timeout_seconds = 0.0;
  // Largest message accepted from a prefill server: any chunk a server's
  // --chunk-bytes allows (kMaxChunkBytes), and room for the summary.
  int64_t max_receive_bytes = kMaxChunkBytes + (int64_t{1} << 20);
  // Also retry elsewhere when a stream breaks (UNAVAILABLE) after its first
  // KV chunk: the prefill restarts from scratch on the next endpoint, which
  // costs its whole compute again. Off: such a request ends UNAVAILABLE.
  bool retry_broken_streams = false;
  // TLS to the endpoints (rpc/channel_credentials.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // A connection attempt (TCP and the HTTP/2 handshake) that takes longer
  // fails; calls then skip the endpoint until it reconnects.
  double connect_timeout_seconds = 2.0;
  // A call that has received nothing this long after it started (a prefill
  // server sends its layout header on admission) is cancelled and the next
  // endpoint tried; 0: no limit.
  double first_byte_timeout_seconds = 5.0;
  // While calls are in flight, a ping every `keepalive_seconds`; a peer that
  // does not answer one within `keepalive_timeout_seconds` is dropped and its
  // streams fail with UNAVAILABLE.
  double keepalive_seconds = 2.0;
  double keepalive_timeout_seconds = 3.0;
  // Health checks (grpc.health.v1, "seer.v1.PrefillService") of every endpoint, for
  // WatchHealth and routing; 0: none. An endpoint is down after two checks
  // in a row failed (each gets `health_timeout_seconds`), up after one passed.
  double health_interval_seconds = 1.0;
  double health_timeout_seconds = 2.0;
  // gRPC streams offered per request (1 to 16, --kv-grpc-streams): the
  // Prefill call plus KvStream calls, each on a channel of its own.
  int kv_grpc_streams = 1;
  // Offer NCCL (--kv-transports nccl,grpc) when the cache is on a GPU and
  // this build has NCCL; the links' setup and stall timeouts.
  bool kv_nccl = false;
  double nccl_setup_seconds = 30.0;
  double nccl_stall_seconds = 10.0;
  // Route a prompt to the endpoint that served its longest prefix lately,
  // within one request of the least load (--prefill-prefix-affinity).
  bool prefix_affinity = true;
};

// The chain hashes of a prompt's whole 64-token blocks (hash i covers
// tokens [0, 64 (i + 1))), seeded with its sparsity: what prefix affinity
// remembers and matches.
std::vector<uint64_t> PromptBlockHashes(const v1::PrefillRequest& request);

// Transfer events, for the KV transport metrics (rpc/kv_transport_metrics.h,
// which the decode service owns: rpc/ does not link Prometheus). Called from
// the fetching threads.
class KvTransferObserver {
 public:
  virtual ~KvTransferObserver() = default;
  // `transport`: "grpc" or "nccl"; `wire`: KvWireLabel's.
  virtual void TransferStarted(const std::string& transport) = 0;
  virtual void TransferFinished(const std::string& transport, const std::string& wire, double seconds,
                                int64_t bytes) = 0;
  virtual void TransferFailed(const std::string& transport, const std::string& reason) = 0;
  // The NCCL links this client holds, after a change.
  virtual void NcclLinks(int joining, int ready) = 0;
};

struct FetchedKv {
  v1::PrefillSummary summary;
  std::string endpoint;
  int attempts = 0;
  int64_t kv_bytes = 0;  // K and V bytes landed (fp8: codes)
  double seconds = 0.0;  // from the call to the summary
  // How the KV moved: the prefill's account (seconds, blocked_seconds,
  // fallback_reason), with the transport, wire, streams and bytes this
  // client received.
  v1::KvTransferStats transfer;
  // KV chunks each gRPC stream landed (index 0: the Prefill call).
  std::vector<int> chunks_per_stream;
  // The header's: the gates' block size, and the first position sent (the
  // request's kv_from_token, or 0 when the prefill declined it).
  int gate_block = 0;
  uint64_t gates_fingerprint = 0;
  int kv_first_token = 0;
};

// The grpc.health.v1 name every prefill server reports under.
inline constexpr char kPrefillHealthService[] = "seer.v1.PrefillService";

class PrefillClient {
 public:
  // `targets`: "host:port[,host:port...]" or dns:/// names. INVALID_ARGUMENT
  // naming the flag on a malformed list or option.
  static StatusOr<std::unique_ptr<PrefillClient>> Create(const std::string& targets,
                                                         const PrefillClientOptions& options);
  ~PrefillClient();
  PrefillClient(const PrefillClient&) = delete;
  PrefillClient& operator=(const PrefillClient&) = delete;

  // Calls Prefill and assembles the KV into `cache`. An endpoint that fails
  // in a way worth retrying elsewhere (see above) is skipped for the next
  // one; any other failure ends the fetch with a status that names the
  // endpoint. When every attempt failed: RESOURCE_EXHAUSTED if every
  // endpoint was at capacity, else UNAVAILABLE. `on_kv_bytes` is called with
  // the K/V bytes of each chunk as it lands.
  //
  // With kv_from_token (`cache` holds the positions before it): a prefill
  // that declines it sends the whole prompt (IsKvFromDeclined). Then `whole`,
  // when given, is asked at once, on this thread, for a cache to land all of
  // it in instead (the caller may free `cache` then, and later attempts use
  // the new one without kv_from_token); without `whole`, or when it fails,
  // the fetch fails with the assembler's ABORTED.
  using WholeCache = std::function<StatusOr<KvCache*>()>;
  StatusOr<FetchedKv> Fetch(const v1::PrefillRequest& request, const ExpectedLayout& expected, KvCache* cache,
                            CallCanceller* canceller, const std::function<void(int64_t)>& on_kv_bytes,
                            const WholeCache& whole = nullptr);

  // Calls `on_change(any, why)` from the health thread whenever "some
  // endpoint can serve" changes, and once at once with the current answer;
  // `why` names each endpoint's state. Needs health_interval_seconds > 0.
  void WatchHealth(std::function<void(bool any_reachable, const std::string& why)> on_change);

  // From now on the health checks ask for this model's name
  // (PrefillModelHealthName): an endpoint that serves another checkpoint
  // answers NOT_FOUND and counts as down, so a worker whose prefill servers
  // all serve another model is NOT_SERVING instead of failing every request.
  void ExpectModel(uint64_t fingerprint);

  const std::vector<std::string>& targets() const { return targets_; }

  // Reports transfers to `observer` (not owned; outlives the client). Set
  // before the first Fetch.
  void SetKvTransferObserver(KvTransferObserver* observer) { kv_observer_ = observer; }
  // This process's id in NCCL offers.
  const std::string& decode_instance() const { return decode_instance_; }

 private:
  class KvReceive;
  struct NcclState;
  using Clock = std::chrono::steady_clock;
  struct Endpoint {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<grpc::GenericStub> raw;  // the Prefill call, as ByteBuffers
    // KvStream calls 1 .. kv_grpc_streams - 1, each on a channel of its own.
    std::vector<std::shared_ptr<grpc::Channel>> kv_channels;
    std::vector<std::unique_ptr<grpc::GenericStub>> kv_stubs;
    std::unique_ptr<grpc::health::v1::Health::Stub> health;
    // Routing state, under mu_.
    int inflight = 0;  // this client's calls there now
    int64_t reported_depth = -1;  // running + queued its last answer reported
    Clock::time_point reported_at;
    Clock::time_point avoid_until;  // refused or unreachable lately
    bool down = false;  // by the health checks
    int failed_checks = 0;
    std::string health_state;  // "SERVING", or why not
    std::string prefill_instance;  // the last one its headers named
    // Prefix affinity: the block hashes of the prompts it served lately,
    // the oldest dropped past kAffinityBlocks.
    std::unordered_set<uint64_t> served_blocks;
    std::deque<uint64_t> served_order;
  };
  enum class Outcome { kOk, kRetry, kFinal };

  PrefillClient();
  // The endpoints in the order a request with these block hashes tries them.
  std::vector<size_t> Order(const std::vector<uint64_t>& blocks);
  // `endpoint` served a prompt with these block hashes.
  void RememberServed(Endpoint& endpoint, const std::vector<uint64_t>& blocks);
  // `whole` as in Fetch; `*swapped` is set to the cache it gave.
  Status FetchOnce(Endpoint& endpoint, const v1::PrefillRequest& request, const ExpectedLayout& expected,
                   KvCache* cache, CallCanceller* canceller, const std::function<void(int64_t)>& on_kv_bytes,
                   const WholeCache& whole, KvCache** swapped, FetchedKv* out, Outcome* outcome);
  void HealthLoop();
  // Under mu_: whether any endpoint is up, and each one's state.
  bool AnyUpLocked(std::string* why) const;

  // The transports this client offers for a call that lands in `cache`;
  // `device` gets the cache's CUDA device (-1: host).
  v1::KvTransportOffer MakeOffer(KvCache* cache, int* device);
  void ReportLinks();
  // `instance` is what `endpoint`'s latest header named; a change means the
  // server restarted, and its old NCCL link goes.
  void NoteInstance(Endpoint* endpoint, const std::string& instance);

  PrefillClientOptions options_;
  std::string decode_instance_, host_;
  KvTransferObserver* kv_observer_ = nullptr;
  std::unique_ptr<NcclState> nccl_;  // null without NCCL
  std::vector<std::string> targets_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  int attempts_ = 1;
  bool prefix_affinity_ = true;
  std::atomic<uint64_t> next_{0};

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::function<void(bool, const std::string&)> on_health_;
  bool health_known_ = false, any_up_ = true;
  std::string health_service_ = kPrefillHealthService;  // what the checks ask for
  std::thread health_thread_;
};

// The grpc.health.v1 service name a prefill server serving the checkpoint
// with this fingerprint (Engine::fingerprint) reports SERVING under, beside
// "seer.v1.PrefillService": "seer.v1.PrefillService/model/0123456789abcdef".
std::string PrefillModelHealthName(uint64_t fingerprint);

// Splits and checks a --prefill list.
StatusOr<std::vector<std::string>> ParsePrefillTargets(const std::string& targets);

}  // namespace seer
