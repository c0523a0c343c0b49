// The Decode service (proto/seer/v1/seer.proto): pulls a prompt's KV cache
// from a prefill endpoint, then decodes with dense attention and streams each
// token as it is sampled. One GenerateStream reactor per call; a WorkQueue
// bounds how many run (--max-concurrent) and wait (--max-queue), a ByteBudget
// the tokens that admitted streams hold for clients that have not read them
// (--max-buffered-bytes), and a StreamWatchdog how long a client may read
// nothing (--write-stall-seconds). The decode loop never waits on its
// client: a stream's tokens queue up to its max_new_tokens, which its share
// of the budget covers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>

#include "engine/engine.h"
#include "seer/v1/seer.grpc.pb.h"
#include "rpc/kv_assembler.h"
#include "server/common/metrics.h"
#include "rpc/prefill_client.h"
#include "rpc/requests.h"
#include "server/common/stream_watchdog.h"
#include "server/common/work_queue.h"

namespace seer {

struct DecodeServiceOptions {
  int max_concurrent = 4;
  int max_queue = 64;
  int max_new_tokens = 4096;
  // Tokens (and summaries) all admitted streams may hold for their clients
  // together; a request whose max_new_tokens would exceed it is refused with
  // RESOURCE_EXHAUSTED before any work.
  int64_t max_buffered_bytes = int64_t{256} << 20;
  // A stream whose client reads nothing this long is cancelled; 0: never.
  double write_stall_seconds = 20.0;
};

// The share of --max-buffered-bytes a Generate stream reserves: every token
// message it may queue, and its summary.
int64_t GenerateStreamBytes(int max_new_tokens, int num_layers);

class DecodeService final : public v1::Decode::CallbackService {
 public:
  // `prefill` (not owned) outlives the service.
  DecodeService(const DecodeServiceOptions& options, PrefillClient* prefill, DecodeMetrics* metrics);
  ~DecodeService() override;

  static Status CheckOptions(const DecodeServiceOptions& options);

  // Serves with `engine` (not owned). Until then every call gets UNAVAILABLE.
  Status SetEngine(Engine* engine);
  void Shutdown();

  // Admission's state, for the load gauges and load metadata.
  const WorkQueue& queue() const { return queue_; }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;

  // Bytes of --max-buffered-bytes the admitted streams hold now.
  int64_t buffered_bytes() const { return budget_.used(); }

 private:
  friend class GenerateStream;
  uint64_t FreshSeed();

  const DecodeServiceOptions options_;
  PrefillClient* const prefill_;
  DecodeMetrics* const metrics_;
  // The prefill client's KV transfers on metrics_->kv_transport.
  std::unique_ptr<KvTransferObserver> kv_observer_;
  ByteBudget budget_;
  StreamWatchdog watchdog_;
  WorkQueue queue_;
  std::atomic<Engine*> engine_{nullptr};
  ExpectedLayout expected_;
  RequestLimits limits_;
  std::atomic<uint64_t> next_request_number_{1};
  std::mutex seed_mu_;
  std::mt19937_64 seed_source_{std::random_device{}()};
};

}  // namespace seer
