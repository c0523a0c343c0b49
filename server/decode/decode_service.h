// The Decode service (proto/seer/v1/seer.proto): pulls a prompt's KV cache
// from a prefill endpoint, then decodes with dense attention and streams each
// token as it is sampled. One GenerateStream reactor per call; a WorkQueue
// bounds how many run (--max-concurrent) and wait (--max-queue).
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
#include "server/common/work_queue.h"

namespace seer {

struct DecodeServiceOptions {
  int max_concurrent = 4;
  int max_queue = 64;
  int max_new_tokens = 4096;
};

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

 private:
  friend class GenerateStream;
  uint64_t FreshSeed();

  const DecodeServiceOptions options_;
  PrefillClient* const prefill_;
  DecodeMetrics* const metrics_;
  WorkQueue queue_;
  std::atomic<Engine*> engine_{nullptr};
  ExpectedLayout expected_;
  RequestLimits limits_;
  std::atomic<uint64_t> next_request_number_{1};
  std::mutex seed_mu_;
  std::mt19937_64 seed_source_{std::random_device{}()};
};

}  // namespace seer
