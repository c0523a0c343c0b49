// The Prefill service (proto/seer/v1/seer.proto): runs the gated prefill of a
// prompt and streams its KV cache layer by layer while the next layers
// compute. One PrefillStream reactor per call; a WorkQueue bounds how many run
// (--max-concurrent) and wait (--max-queue), a ByteBudget how much KV the
// admitted streams hold for their clients (--max-buffered-bytes), and a
// StreamWatchdog how long a client may read nothing (--write-stall-seconds).
//
// No stream waits on its client with the engine or a worker slot: the
// prefill computes into the request's own KV cache; each finished layer's
// chunks are made from the cache as their turn to be written comes (the CPU
// cache's rows referenced, not copied), so the cache is the stream's buffer,
// drained after the engine and the slot are free.
//
// The KV transports (docs/KV_TRANSPORT.md): the request's offer and the
// server's flags choose NCCL (GPU to GPU over a link per decode process,
// set up by a first request that goes over gRPC) or gRPC over up to
// --kv-grpc-streams streams (the Prefill call and KvStream calls, which share
// the layers out), optionally fp8 on the wire (--allow-kv-fp8). A client
// that offers nothing gets the single stream it always got, byte for byte.
// Both methods are served raw (grpc::ByteBuffer), so that chunks reference
// the KV instead of being copied into protobuf strings.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/kv/prefix_store.h"
#include "rpc/kv_handshake.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/metrics.h"
#include "rpc/requests.h"
#include "server/common/request_log.h"
#include "server/common/stream_watchdog.h"
#include "server/common/work_queue.h"

namespace seer {

struct PrefillServiceOptions {
  int max_concurrent = 1;
  int max_queue = 16;
  // Upper bound on each KvChunk message's serialized size. 4 MiB keeps every
  // message within gRPC's default receive limit.
  int64_t chunk_bytes = int64_t{4} << 20;
  // KV a stream keeps copied into chunk messages ahead of the network; the
  // rest of its KV waits in its KV cache until the client reads.
  int64_t stream_buffer_bytes = int64_t{64} << 20;
  // What all admitted streams may hold together: each one's KV cache (until
  // its client has read it) and chunk messages. A request that would exceed
  // it is refused with RESOURCE_EXHAUSTED before any work.
  int64_t max_buffered_bytes = int64_t{8} << 30;
  // A stream whose client reads nothing this long is cancelled; 0: never.
  double write_stall_seconds = 20.0;
  // Longest prompt served; 0 takes the model's max_position_embeddings.
  int64_t max_tokens = 0;
  // gRPC streams one transfer may use (--kv-grpc-streams, 1 to 16); the
  // decode worker's offer caps it too.
  int kv_grpc_streams = 8;
  // A transfer uses another stream only for this many bytes of KV (and at
  // most one per layer): a small prompt's KV does not gain from more
  // connections, and each costs the receiver a call and a thread. 0: every
  // stream offered.
  int64_t kv_min_stream_bytes = int64_t{16} << 20;
  // fp8 (E4M3) K/V on the wire when a request asks (--allow-kv-fp8).
  bool allow_kv_fp8 = false;
  // Send over NCCL when offered (--kv-transports nccl,grpc); only with an
  // NCCL build and a CUDA engine. The links' timeouts.
  bool kv_nccl = false;
  double nccl_setup_seconds = 30.0;
  double nccl_stall_seconds = 10.0;
  // Memory for the prefix store (--prefix-cache-bytes; engine/kv/
  // prefix_store.h): finished requests' KV caches kept so that a prompt that
  // starts the same way computes only the rest. 0: off.
  int64_t prefix_cache_bytes = 0;
};

struct GrpcKvTransfer;
struct PrefixStoreState;
class PrefillService;

// seer.v1.Prefill, PrefillService's deprecated first name: the same calls,
// answered by the same service (docs/SERVICE.md, "Deprecated names").
class LegacyPrefillService final : public v1::Prefill::WithRawCallbackMethod_Prefill<
                                       v1::Prefill::WithRawCallbackMethod_KvStream<v1::Prefill::CallbackService>> {
 public:
  explicit LegacyPrefillService(PrefillService* service) : service_(service) {}
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* KvStream(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;

 private:
  PrefillService* const service_;
};

class PrefillService final
    : public v1::PrefillService::WithRawCallbackMethod_Prefill<
          v1::PrefillService::WithRawCallbackMethod_KvStream<v1::PrefillService::CallbackService>>,
      public RawMethodsService {
 public:
  PrefillService(const PrefillServiceOptions& options, PrefillMetrics* metrics);
  ~PrefillService() override;

  // Validates the options (names the flag on error).
  static Status CheckOptions(const PrefillServiceOptions& options);

  // Serves with `engine` (not owned; outlives the service). Until then every
  // call gets UNAVAILABLE.
  Status SetEngine(Engine* engine);
  // Stops the workers after running what was admitted. Call after the gRPC
  // server has shut down.
  void Shutdown();
  // The server's drain time ran out: streams gRPC cancels from now on are
  // reported UNAVAILABLE (the server stopped), not CANCELLED.
  void DrainExpired() { watchdog_.MarkServerStopping(); }

  // Admission's state, for the load gauges and load metadata.
  const WorkQueue& queue() const { return queue_; }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* KvStream(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  std::vector<std::string> RawMethods() const override;
  // The deprecated name, to register beside this one.
  grpc::Service* legacy() { return &legacy_; }

  // Bytes of --max-buffered-bytes the admitted streams hold now.
  int64_t buffered_bytes() const { return budget_.used(); }
  // KvStream calls serving a transfer (waiting for layers or writing them).
  int attached_kv_streams() const { return attached_kv_streams_.load(); }
  // This process's id in NCCL link setups and headers.
  const std::string& prefill_instance() const { return caps_.prefill_instance; }
  // Whether this server sends over NCCL (the flag, the build, a CUDA engine).
  bool sends_nccl() const { return caps_.nccl; }

 private:
  friend class PrefillStream;
  friend class KvStreamWriter;
  struct NcclLinks;

  // gRPC transfers with more than one stream, by transfer_id, until their
  // summary.
  uint64_t AddTransfer(std::shared_ptr<GrpcKvTransfer> transfer);
  std::shared_ptr<GrpcKvTransfer> FindTransfer(uint64_t id);
  void RemoveTransfer(uint64_t id);
  void ReportLinks();

  const PrefillServiceOptions options_;
  PrefillMetrics* const metrics_;
  LegacyPrefillService legacy_{this};
  ByteBudget budget_;
  StreamWatchdog watchdog_;
  WorkQueue queue_;
  // KvStream calls only wait for layers: their jobs return at once.
  WorkQueue kv_stream_queue_;
  KvSenderCaps caps_;
  int device_ = -1;  // the engine's CUDA device (-1: the CPU)
  std::unique_ptr<NcclLinks> nccl_;
  std::mutex transfers_mu_;
  std::map<uint64_t, std::shared_ptr<GrpcKvTransfer>> transfers_;
  std::atomic<int> attached_kv_streams_{0};
  // Prefills admitted together take turns on the engine (Engine::Exclusive);
  // their KV streams still overlap with each other's compute.
  std::atomic<Engine*> engine_{nullptr};
  // Null when --prefix-cache-bytes is 0. Shared with the caches that go to
  // it when their requests let go of them.
  std::shared_ptr<PrefixStoreState> prefix_store_;
  // Fixed once the engine is set.
  KvLayout layout_;
  RequestLimits limits_;
  int block_size_ = 64;
  uint64_t gates_fingerprint_ = 0;  // GatesFingerprint, 0 without gates
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace seer
