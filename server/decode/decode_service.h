// The Decode service (proto/seer/v1/seer.proto): tokenizes a text or chat
// prompt (when the server has a tokenizer), pulls the prompt's KV cache from
// a prefill endpoint, then decodes with dense attention and streams each
// token, with its text, as it is sampled.
//
// One GenerateStream reactor per call. A WorkQueue bounds the requests being
// prepared (tokenized, given their KV pages, fetched; --max-concurrent) and
// waiting for that (--max-queue), a ByteBudget the tokens that admitted
// streams hold for clients that have not read them (--max-buffered-bytes),
// and a StreamWatchdog how long a client may read nothing
// (--write-stall-seconds).
//
// With paged decode enabled on the engine (seer-decode's default), a request
// reserves every KV page it will need (prompt + max_new_tokens) before its
// KV is fetched, waiting for pages when the pool is full; the KV lands
// straight in those pages, and the request joins the DecodeScheduler's
// running batch: one forward step for every running request, each with its
// own sampler, requests joining and leaving between steps. Without it
// (--max-batch 0) each request decodes alone in its worker slot, the steps of
// concurrent requests interleaved on the engine.
//
// The decode loop never waits on its client: a stream's tokens queue up to
// its max_new_tokens, which its share of the budget covers.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>

#include <string>
#include <vector>

#include "engine/decode_scheduler.h"
#include "engine/engine.h"
#include "rpc/kv_assembler.h"
#include "rpc/prefill_client.h"
#include "rpc/requests.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/metrics.h"
#include "server/common/stream_watchdog.h"
#include "server/common/work_queue.h"
#include "server/decode/held_prefixes.h"
#include "text/guide.h"
#include "text/tokenizer.h"

namespace seer {

struct DecodeServiceOptions {
  int max_concurrent = 4;
  int max_queue = 64;
  int max_new_tokens = 4096;
  // For requests that give no max_new_tokens.
  int default_new_tokens = 256;
  // Tokens (and summaries) all admitted streams may hold for their clients
  // together; a request whose max_new_tokens would exceed it is refused with
  // RESOURCE_EXHAUSTED before any work.
  int64_t max_buffered_bytes = int64_t{256} << 20;
  // A stream whose client reads nothing this long is cancelled; 0: never.
  double write_stall_seconds = 20.0;
  // KV pages of finished prompts kept for the next prompt that starts the
  // same way (HeldPrefixes); 0: none. Needs paged decode.
  int64_t kv_prefix_cache_bytes = 0;
};

// What a queued token message is counted as: the message on the heap and its
// outbox entry, and with `logprobs` alternatives (-1: none) its logprobs (a
// token's text counted at 40 bytes; longer ones are rare).
size_t TokenMessageBytes(int logprobs);
// The share of --max-buffered-bytes a Generate stream reserves: every token
// message it may queue, and its summary.
int64_t GenerateStreamBytes(int max_new_tokens, int num_layers, int logprobs = -1);

class DecodeService;

// seer.v1.Decode, DecodeService's deprecated first name: the same call,
// answered by the same service (docs/SERVICE.md, "Deprecated names").
class LegacyDecodeService final : public v1::Decode::CallbackService {
 public:
  explicit LegacyDecodeService(DecodeService* service) : service_(service) {}
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;

 private:
  DecodeService* const service_;
};

class DecodeService final : public v1::DecodeService::CallbackService {
 public:
  // `prefill` (not owned) outlives the service.
  DecodeService(const DecodeServiceOptions& options, PrefillClient* prefill, DecodeMetrics* metrics);
  ~DecodeService() override;

  static Status CheckOptions(const DecodeServiceOptions& options);

  // Text prompts and replies: `tokenizer` (not owned; null: ids only) and
  // the ids that end a text request's generation (EndOfTextIds). Call before
  // SetEngine.
  void SetTokenizer(const Tokenizer* tokenizer, std::vector<int32_t> end_of_text_ids);
  // Serves with `engine` (not owned); batches decode steps when the engine
  // has paged decode enabled. Until then every call gets UNAVAILABLE.
  Status SetEngine(Engine* engine);
  void Shutdown();
  // The server's drain time ran out: streams gRPC cancels from now on are
  // reported UNAVAILABLE (the server stopped), not CANCELLED.
  void DrainExpired() { watchdog_.MarkServerStopping(); }

  // Admission's state, for the load gauges and load metadata.
  const WorkQueue& queue() const { return queue_; }
  // Requests in the running batch (0 without paged decode).
  int batch_running() const;

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest* request) override;
  // The deprecated name, to register beside this one.
  grpc::Service* legacy() { return &legacy_; }

  // Bytes of --max-buffered-bytes the admitted streams hold now.
  int64_t buffered_bytes() const { return budget_.used(); }

 private:
  friend class GenerateStream;
  uint64_t FreshSeed();
  // The guide for `grammar` on the tokenizer's vocabulary (built by the
  // first guided request, a pass over the vocabulary, and kept). The last
  // kGuideCache guides are kept by their spec's key, so that requests that
  // repeat a guide (an application's one response_format) share the states
  // and allowed ids their replies met.
  std::shared_ptr<const TokenGuideFactory> GuideFor(const std::string& key, std::shared_ptr<const Grammar> grammar);
  static constexpr size_t kGuideCache = 8;

  const DecodeServiceOptions options_;
  PrefillClient* const prefill_;
  LegacyDecodeService legacy_{this};
  DecodeMetrics* const metrics_;
  // The prefill client's KV transfers on metrics_->kv_transport.
  std::unique_ptr<KvTransferObserver> kv_observer_;
  ByteBudget budget_;
  StreamWatchdog watchdog_;
  WorkQueue queue_;
  std::atomic<Engine*> engine_{nullptr};
  const Tokenizer* tokenizer_ = nullptr;
  std::vector<int32_t> end_of_text_ids_;
  std::unique_ptr<DecodeScheduler> scheduler_;  // with paged decode; set before engine_
  // With paged decode and --kv-prefix-cache-bytes; set before engine_,
  // dropped at Shutdown (its pages are the engine's).
  std::unique_ptr<HeldPrefixes> held_;
  ExpectedLayout expected_;
  RequestLimits limits_;
  std::atomic<uint64_t> next_request_number_{1};
  std::mutex guide_mu_;
  std::shared_ptr<const GuideVocabulary> guide_vocabulary_;  // guarded by guide_mu_
  std::vector<std::pair<std::string, std::shared_ptr<const TokenGuideFactory>>> guides_;  // guarded; last used last
  std::mutex seed_mu_;
  std::mt19937_64 seed_source_{std::random_device{}()};
};

}  // namespace seer
