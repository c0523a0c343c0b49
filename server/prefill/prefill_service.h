// The Prefill service (proto/seer/v1/seer.proto): runs the gated prefill of a
// prompt and streams its KV cache layer by layer while the next layers
// compute. One PrefillStream reactor per call; a WorkQueue bounds how many run
// (--max-concurrent) and wait (--max-queue), a ByteBudget how much KV the
// admitted streams hold for their clients (--max-buffered-bytes), and a
// StreamWatchdog how long a client may read nothing (--write-stall-seconds).
//
// No stream waits on its client with the engine or a worker slot: the
// prefill computes into the request's own KV cache; each finished layer's
// chunks are copied into messages while the client keeps up (up to
// --stream-buffer-bytes ahead of the network), and otherwise wait in the
// cache, which the stream drains after the engine and the slot are free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "engine/engine.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/metrics.h"
#include "rpc/requests.h"
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
};

class PrefillService final : public v1::Prefill::CallbackService {
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

  // Admission's state, for the load gauges and load metadata.
  const WorkQueue& queue() const { return queue_; }

  grpc::ServerWriteReactor<v1::PrefillResponse>* Prefill(grpc::CallbackServerContext* context,
                                                         const v1::PrefillRequest* request) override;

  // Bytes of --max-buffered-bytes the admitted streams hold now.
  int64_t buffered_bytes() const { return budget_.used(); }

 private:
  friend class PrefillStream;

  const PrefillServiceOptions options_;
  PrefillMetrics* const metrics_;
  ByteBudget budget_;
  StreamWatchdog watchdog_;
  WorkQueue queue_;
  // Prefills admitted together take turns on the engine (Engine::Exclusive);
  // their KV streams still overlap with each other's compute.
  std::atomic<Engine*> engine_{nullptr};
  // Fixed once the engine is set.
  KvLayout layout_;
  RequestLimits limits_;
  int block_size_ = 64;
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace seer
