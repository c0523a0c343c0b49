#include "server/decode/decode_service.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/json.h"
#include "kernels/sampling/sampler.h"
#include "rpc/grpc_status.h"
#include "server/common/request_log.h"
#include "server/common/logging.h"
#include "server/common/stream_reactor.h"
#include "text/bad_words.h"
#include "text/prompt.h"
#include "text/text_stream.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

constexpr size_t kSummaryBytes = 4096;

std::string Mib(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// The prefill client's transfer events as the KV transport metrics
// (seer_kv_transfer*{side="receive"}, seer_kv_nccl_links).
class KvTransferMetricsObserver final : public KvTransferObserver {
 public:
  explicit KvTransferMetricsObserver(KvTransportMetrics* metrics) : metrics_(metrics) {}
  void TransferStarted(const std::string& transport) override { metrics_->Started(transport); }
  void TransferFinished(const std::string& transport, const std::string& wire, double seconds, int64_t bytes) override {
    metrics_->Finished(transport, wire, seconds, static_cast<double>(bytes));
  }
  void TransferFailed(const std::string& transport, const std::string& reason) override {
    metrics_->Failed(transport, reason);
  }
  void NcclLinks(int joining, int ready) override {
    metrics_->links(false).Set(joining);
    metrics_->links(true).Set(ready);
  }

 private:
  KvTransportMetrics* metrics_;
};

}  // namespace

size_t TokenMessageBytes(int logprobs) { return 128 + (logprobs < 0 ? 0 : 64 * static_cast<size_t>(logprobs + 1)); }

int64_t GenerateStreamBytes(int max_new_tokens, int num_layers, int logprobs) {
  return static_cast<int64_t>(max_new_tokens) * static_cast<int64_t>(TokenMessageBytes(logprobs)) + kSummaryBytes +
         static_cast<int64_t>(num_layers) * sizeof(double);
}

// One Generate call. On a worker thread: the prompt's ids (tokenized when
// the request gave text or messages), a KV cache for prompt + new tokens
// (pages from the pool with paged decode), the KV fetched from a prefill
// server into it, and the first token sampled from the prefill's logits.
// Then either the scheduler's batch takes the request (paged decode) and the
// slot goes to the next request, or the worker decodes it alone. Tokens go to
// the reactor as they come; the decode never waits on the client (the
// stream's share of the budget covers every token it may queue).
class GenerateStream final : public StreamReactor<v1::GenerateResponse> {
 public:
  GenerateStream(DecodeService* service, grpc::CallbackServerContext* context, const v1::GenerateRequest& request)
      : StreamReactor(context, &service->watchdog_),
        service_(service),
        metrics_(service->metrics_),
        peer_(CallPeer(*context)),
        arrived_(Clock::now()) {
    engine_ = service->engine_.load(std::memory_order_acquire);
    if (engine_ == nullptr) {
      FinishNow(grpc::Status(grpc::StatusCode::UNAVAILABLE, "seer-decode: the model is still loading"));
      return;
    }
    StatusOr<GenerateCall> call = ParseGenerateRequest(request, service->limits_, service->FreshSeed());
    if (!call.ok()) {
      FinishNow(ToGrpcStatus(call.status()));
      return;
    }
    call_ = std::move(call).value();
    const bool text_prompt = call_.has_text || !call_.messages.empty();
    // A text reply: the text APIs' answer (text, and an end at end-of-text).
    const bool text_reply = text_prompt || call_.text_reply || call_.guide != nullptr;
    if ((text_reply || !call_.stop.empty() || !call_.bad_words.empty() || call_.guide != nullptr) &&
        service->tokenizer_ == nullptr) {
      const char* field = text_prompt                ? (call_.has_text ? "text" : "messages")
                          : call_.text_reply         ? "text_reply"
                          : !call_.stop.empty()      ? "stop"
                          : !call_.bad_words.empty() ? "bad_words"
                                                     : "guide";
      FinishNow(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                             std::string(field) +
                                 ": seer-decode has no tokenizer (--tokenizer), so it takes token_ids and "
                                 "stop_token_ids only"));
      return;
    }
    choices_ = std::vector<Choice>(static_cast<size_t>(call_.choices));
    for (size_t i = 0; i < choices_.size(); ++i) {
      Choice& c = choices_[i];
      c.index = static_cast<int>(i);
      if (service->tokenizer_ != nullptr && (text_reply || !call_.stop.empty())) {
        c.text = std::make_unique<TextStream>(*service->tokenizer_, call_.stop, call_.skip_special_tokens,
                                              call_.include_stop);
      }
    }
    // A text request ends at an end-of-text id too, as the text APIs do,
    // unless it asks to go on past them.
    stop_tokens_ = call_.stop_token_ids;
    if (text_reply && !call_.ignore_eos) {
      stop_tokens_.insert(stop_tokens_.end(), service->end_of_text_ids_.begin(), service->end_of_text_ids_.end());
    }
    // Until min_new_tokens, nothing may end the reply.
    call_.sampling.min_tokens = call_.min_new_tokens;
    call_.sampling.end_ids = stop_tokens_;
    if (!call_.bad_words.empty()) {
      StatusOr<std::vector<std::vector<int32_t>>> banned = BadWordSequences(*service->tokenizer_, call_.bad_words);
      if (!banned.ok()) {
        FinishNow(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad_words: " + banned.status().message()));
        return;
      }
      call_.sampling.bad_words = std::move(banned).value();
    }
    request_id_ = call_.request_id.empty() ? "generate-" + std::to_string(service->next_request_number_.fetch_add(1))
                                           : call_.request_id;
    max_new_tokens_ = call_.max_new_tokens;
    ByteBudget& budget = service->budget_;
    const int64_t need = ReplyBytes();
    if (need > budget.limit()) {
      // It would never fit: not a retry, a smaller request.
      const bool lp = call_.sampling.logprobs >= 0;
      const bool n = call_.choices > 1;
      FinishNow(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "max_new_tokens: " + std::to_string(max_new_tokens_) + " tokens" +
                           (lp ? " with logprobs " + std::to_string(call_.sampling.logprobs) : std::string()) +
                           (n ? " for each of n = " + std::to_string(call_.choices) + " choices" : std::string()) +
                           " may buffer " + Mib(need) + " for a slow client, more than this worker's " +
                           "--max-buffered-bytes (" + Mib(budget.limit()) + ") holds; ask for fewer tokens" +
                           (lp ? ", alternatives" : "") + (n ? ", choices" : "")));
      return;
    }
    std::optional<ByteBudget::Reservation> charge = budget.TryReserve(need);
    if (!charge) {
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-decode: admitted streams hold " + Mib(budget.used()) + " of --max-buffered-bytes " +
                                 Mib(budget.limit()) + " (tokens their clients have not read yet); this request " +
                                 "needs " + Mib(need) + " for max_new_tokens " + std::to_string(max_new_tokens_) +
                                 "; retry later or elsewhere"));
      return;
    }
    // Counted before Admit, which may finish the stream on another thread.
    metrics_->inflight.Increment();
    admitted_ = true;
    if (!Admit(&service->queue_, std::move(*charge))) {
      metrics_->inflight.Decrement();
      admitted_ = false;
      const WorkQueue& q = service->queue_;
      FinishNow(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "seer-decode: the queue is full: " + std::to_string(q.workers()) + " running and " +
                                 std::to_string(q.max_waiting()) + " waiting (--max-concurrent " +
                                 std::to_string(q.workers()) + ", --max-queue " + std::to_string(q.max_waiting()) +
                                 "); retry later or elsewhere"));
    }
  }

  void Run(double /*queue_seconds*/) override {
    // Empty when the scheduler took the request: it finishes the stream.
    std::optional<grpc::Status> done = Prepare();
    if (!done) return;
    for (Choice& c : choices_) c.cache_counted.reset();  // the caches went with Prepare's frame
    shared_counted_.reset();
    FinishWork(*done);
  }

 private:
  // One reply of the n the request asked for: its own sampler (seed + its
  // index), text, count and end. Set up in the constructor and Prepare, then
  // the scheduler thread's.
  struct Choice {
    int index = 0;
    std::unique_ptr<Sampler> sampler;
    Sampler* sampling = nullptr;  // sampler's, also while the scheduler holds it
    // Why the choice cannot go on (its guide lost its language's way): the
    // call fails with it.
    std::optional<grpc::Status> failure;
    std::unique_ptr<TextStream> text;
    int generated = 0;
    bool finished = false;
    std::string finish_reason = "length";
    std::optional<GaugeHold> cache_counted;  // the KV pages it holds alone (the shared ones: shared_counted_)
    std::optional<Clock::time_point> last_token;  // write hooks only
  };

  // What the reply's messages may buffer for a slow client: every token of
  // every choice, and their summaries.
  int64_t ReplyBytes() const {
    return call_.choices * GenerateStreamBytes(max_new_tokens_, engine_->config().num_layers, call_.sampling.logprobs);
  }

  grpc::Status StreamGone() const {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the Generate stream was cancelled");
  }

  // The prompt as ids: as given, or tokenized.
  StatusOr<std::vector<int32_t>> PromptIds() {
    if (!call_.has_text && call_.messages.empty()) return std::move(call_.ids);
    const Tokenizer& tokenizer = *service_->tokenizer_;
    StatusOr<std::vector<int32_t>> ids = [&]() -> StatusOr<std::vector<int32_t>> {
      if (call_.has_text) return EncodeTextPrompt(tokenizer, call_.text);
      return EncodeChatPrompt(tokenizer, ChatTurnsJson(call_.messages), call_.chat);
    }();
    if (!ids.ok()) {
      const char* field = call_.has_text ? "text" : "messages";
      // A template's raise_exception and an empty prompt are the request's
      // fault; anything else the server's.
      if (ids.status().code() == StatusCode::kInvalidArgument) return ids.status().WithContext(field);
      return Status(StatusCode::kFailedPrecondition, std::string(field) + ": " + ids.status().message());
    }
    SEER_RETURN_IF_ERROR(CheckTokenIds(*ids, engine_->config().vocab_size, call_.has_text ? "text" : "messages"));
    FitDefaultNewTokens(static_cast<int64_t>(ids->size()), service_->limits_, &call_);
    max_new_tokens_ = call_.max_new_tokens;
    SEER_RETURN_IF_ERROR(CheckPromptFits(static_cast<int64_t>(ids->size()), max_new_tokens_, service_->limits_));
    return ids;
  }

  std::optional<grpc::Status> Prepare() {
    if (cancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while queued");
    StatusOr<std::vector<int32_t>> ids = PromptIds();
    if (!ids.ok()) return ToGrpcStatus(ids.status());
    prompt_tokens_ = static_cast<int>(ids->size());
    if (call_.prompt_logprobs >= 0) {
      if (Status s = CheckPromptLogprobs(call_.prompt_logprobs, prompt_tokens_, "prompt_logprobs"); !s.ok()) {
        return ToGrpcStatus(s);
      }
      // Their messages wait for the client as the tokens' do.
      ByteBudget& budget = service_->budget_;
      const int64_t need = int64_t{prompt_tokens_} * static_cast<int64_t>(TokenMessageBytes(call_.prompt_logprobs));
      const int64_t own = ReplyBytes();
      if (need > budget.limit() - own) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "prompt_logprobs: the prompt's " + std::to_string(prompt_tokens_) + " positions with " +
                                std::to_string(call_.prompt_logprobs) + " alternatives may buffer " + Mib(need) +
                                " for a slow client, beside the reply's " + Mib(own) + "; this worker's " +
                                "--max-buffered-bytes (" + Mib(budget.limit()) + ") holds less; ask for fewer " +
                                "alternatives or a shorter prompt");
      }
      prompt_logprobs_charge_ = budget.TryReserve(need);
      if (!prompt_logprobs_charge_) {
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "seer-decode: admitted streams hold " + Mib(budget.used()) + " of --max-buffered-bytes " +
                                Mib(budget.limit()) + "; the prompt's logprobs need " + Mib(need) +
                                " more; retry later or elsewhere");
      }
    }
    v1::PrefillRequest prefill_request;
    prefill_request.set_request_id(request_id_);
    prefill_request.mutable_token_ids()->Assign(ids->begin(), ids->end());
    *prefill_request.mutable_sparsity() = SparsityToProto(call_.sparsity);
    prefill_request.set_kv_wire(call_.kv_wire);
    if (call_.prompt_logprobs >= 0) prefill_request.set_prompt_logprobs(call_.prompt_logprobs);

    // Every page (or the whole cache) the request will need, before any KV
    // moves: an admitted request never fails for lack of room later. The
    // choices share the prompt's whole pages; without paged decode they
    // decode one after the other in one cache, each from the prompt's end.
    // With a KV prefix store, the prompt's first pages may be held already:
    // the prefill is asked for the rest only. When it declines (it applies
    // another selection, or predates the ask) and sends everything, the
    // held pages are let go and the whole prompt lands in new pages taken
    // at once (`whole`); when none are free at once, the request fetches
    // again, waiting for them. fp8 transfers neither take nor keep held
    // pages, which are exact.
    const int capacity = prompt_tokens_ + max_new_tokens_;
    const bool batched = service_->scheduler_ != nullptr;
    HeldPrefixes* const held = batched && call_.kv_wire != v1::KV_WIRE_FP8_E4M3 ? service_->held_.get() : nullptr;
    HeldPrefixes::Hit hit;
    if (held != nullptr) hit = held->Lookup(*ids, prefill_request.sparsity());
    std::vector<std::unique_ptr<KvCache>> caches;
    const PrefillClient::WholeCache whole = [&]() -> StatusOr<KvCache*> {
      DropCaches(&caches);
      if (MakeCaches(capacity, held, HeldPrefixes::Hit{}, &caches, /*at_once=*/true))
        return ResourceExhausted("no KV pages free at once for the whole prompt");
      return caches[0].get();
    };
    StatusOr<FetchedKv> fetched = Cancelled("not fetched");
    for (;;) {
      if (hit.tokens > 0) {
        prefill_request.set_kv_from_token(hit.tokens);
        *prefill_request.mutable_kv_from_sparsity() = AppliedSparsityToProto(hit.applied);
        prefill_request.set_kv_from_block_size(hit.gate_block);
        prefill_request.set_kv_from_gates_fingerprint(hit.gates_fingerprint);
      } else {
        ClearKvFrom(&prefill_request);
      }
      if (caches.empty()) {
        if (std::optional<grpc::Status> failed = MakeCaches(capacity, held, hit, &caches, /*at_once=*/false)) {
          return *failed;
        }
      }
      fetched = service_->prefill_->Fetch(
          prefill_request, service_->expected_, caches[0].get(), &canceller_,
          [this](int64_t bytes) { metrics_->kv_received_bytes.Increment(static_cast<double>(bytes)); },
          hit.tokens > 0 ? whole : nullptr);
      if (fetched.ok() || hit.tokens == 0 || !IsKvFromDeclined(fetched.status()) || cancelled()) break;
      // Declined, and no pages for the whole prompt at once: again, waiting.
      metrics_->kv_prefix_declined.Increment();
      hit = HeldPrefixes::Hit{};
      DropCaches(&caches);
    }
    if (!fetched.ok()) {
      if (cancelled()) return StreamGone();
      return ToGrpcStatus(fetched.status());
    }
    fetched_ = std::move(fetched).value();
    if (hit.tokens > 0 && fetched_.kv_first_token == hit.tokens) {
      metrics_->kv_prefix_hits.Increment();
      metrics_->kv_prefix_held_tokens.Increment(static_cast<double>(hit.tokens));
    } else if (hit.tokens > 0) {
      metrics_->kv_prefix_declined.Increment();  // the whole prompt came, into new pages
    }
    if (held != nullptr) {
      held->Keep(*ids, prefill_request.sparsity(), fetched_.summary.applied_sparsity(), fetched_.gate_block,
                 fetched_.gates_fingerprint, static_cast<const PagedKvCache&>(*caches[0]));
    }
    for (size_t i = 1; i < caches.size(); ++i) {
      const auto& first = static_cast<const PagedKvCache&>(*caches[0]);
      if (Status s = static_cast<PagedKvCache&>(*caches[i]).AdoptPrefix(first); !s.ok()) {
        // The server's own fault, not the request's.
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            "seer-decode: choice " + std::to_string(i) + "'s KV: " + std::string(s.message()));
      }
    }

    if (call_.prompt_logprobs >= 0) {
      if (std::optional<grpc::Status> failed = SendPromptLogprobs(*ids)) return *failed;
    }
    // Each choice's first token from the prefill's logits, with its own
    // random stream.
    const v1::PrefillSummary& ps = fetched_.summary;
    const std::vector<float> first_logits(ps.last_logits().begin(), ps.last_logits().end());
    std::vector<int32_t> first(choices_.size());
    // The repetition penalty counts the prompt's tokens as seen.
    if (call_.sampling.repetition_penalty != 1.0) call_.sampling.prompt_ids = *ids;
    if (call_.guide != nullptr) {
      call_.sampling.guide = service_->GuideFor(call_.guide_key, call_.guide);
    }
    for (Choice& c : choices_) {
      SamplingParams sampling = call_.sampling;
      sampling.seed += static_cast<uint64_t>(c.index);
      c.sampler = std::make_unique<Sampler>(sampling);
      c.sampling = c.sampler.get();
      first[c.index] = c.sampler->Sample(first_logits);
      if (!Emit(c, first[c.index], c.sampler->wants_logprobs() ? &c.sampler->last_logprobs() : nullptr)) {
        return StreamGone();
      }
      if (c.failure) return *c.failure;
    }
    // The choices done at their first token end here.
    int running = 0;
    for (Choice& c : choices_) {
      if (!c.finished) {
        ++running;
        continue;
      }
      if (batched) {
        caches[c.index].reset();
        c.cache_counted.reset();
      }
      if (grpc::Status done = FinishWithSummary(c); !done.ok()) return done;
    }
    if (running == 0) return grpc::Status::OK;

    if (batched) return SubmitChoices(std::move(caches), first);

    // Alone: concurrent streams take turns on the engine, one step at a time,
    // and the choices one after the other, each from the prompt's end.
    KvCache* cache = caches[0].get();
    for (Choice& c : choices_) {
      if (c.finished) continue;
      cache->set_length(prompt_tokens_);
      int32_t token = first[c.index];
      while (!c.finished) {
        StatusOr<int32_t> next = engine_->DecodeAndSample(token, cache, c.sampler.get());
        if (!next.ok()) {
          return ToGrpcStatus(next.status().WithContext(StepContext(c)));
        }
        token = *next;
        if (!Emit(c, token, c.sampler->wants_logprobs() ? &c.sampler->last_logprobs() : nullptr)) return StreamGone();
        if (c.failure) return *c.failure;
      }
      if (grpc::Status done = FinishWithSummary(c); !done.ok()) return done;
    }
    return grpc::Status::OK;
  }

  // The request's caches into `caches` (a group of paged ones, or one),
  // starting from `hit`'s held pages, and their pages counted; an error to
  // end the call with otherwise. Waits for pages until cancelled, or with
  // `at_once` takes them now or fails (PagedGroupStart::at_once).
  std::optional<grpc::Status> MakeCaches(int capacity, HeldPrefixes* held, const HeldPrefixes::Hit& hit,
                                         std::vector<std::unique_ptr<KvCache>>* caches, bool at_once) {
    const int n = static_cast<int>(choices_.size());
    if (service_->scheduler_ != nullptr) {
      PagedGroupStart start;
      start.held = hit.pages.get();
      start.held_tokens = hit.tokens;
      if (held != nullptr) start.reclaim = [held] { return held->Reclaim(); };
      start.at_once = at_once;
      StatusOr<std::vector<std::unique_ptr<PagedKvCache>>> group = engine_->NewPagedCacheGroupWhenFree(
          prompt_tokens_, capacity, n,
          [this] { return cancelled() ? Cancelled("cancelled while waiting for KV pages") : OkStatus(); }, start);
      if (!group.ok()) {
        if (cancelled()) return StreamGone();
        return ToGrpcStatus(group.status().WithContext("seer-decode: KV pages"));
      }
      for (std::unique_ptr<PagedKvCache>& c : *group) caches->push_back(std::move(c));
    } else {
      StatusOr<std::unique_ptr<KvCache>> made = engine_->NewCache(capacity);
      if (!made.ok()) return ToGrpcStatus(made.status().WithContext("seer-decode: KV cache"));
      caches->push_back(std::move(made).value());
    }
    // The shared pages count once, for as long as any choice holds them;
    // held pages are the prefix store's (seer_decode_kv_prefix_bytes).
    const auto* paged = dynamic_cast<const PagedKvCache*>((*caches)[0].get());
    const int shared = paged != nullptr ? paged->shared_positions() : 0;
    const int held_positions = paged != nullptr ? paged->held_positions() : 0;
    if (shared > held_positions)
      shared_counted_.emplace(&metrics_->server.kv_cache_bytes,
                              KvCacheBytes((*caches)[0]->layout(), shared - held_positions));
    for (size_t i = 0; i < caches->size(); ++i) {
      const KvCache& c = *(*caches)[i];
      choices_[i].cache_counted.emplace(&metrics_->server.kv_cache_bytes,
                                        KvCacheBytes(c.layout(), c.capacity() - std::max(shared, held_positions)));
    }
    return std::nullopt;
  }

  // The request's caches go, with their pages' counts.
  void DropCaches(std::vector<std::unique_ptr<KvCache>>* caches) {
    for (Choice& c : choices_) c.cache_counted.reset();
    shared_counted_.reset();
    caches->clear();
  }

  std::string StepContext(const Choice& c) const {
    return "seer-decode: decode step " + std::to_string(c.generated) +
           (choices_.size() > 1 ? " of choice " + std::to_string(c.index) : std::string());
  }

  // Hands the unfinished choices to the scheduler's batch; they
  // end the call (ChoiceDone) as they leave it. Always nullopt: from here
  // the choices finish the stream.
  std::optional<grpc::Status> SubmitChoices(std::vector<std::unique_ptr<KvCache>> caches,
                                            const std::vector<int32_t>& first) {
    std::vector<std::pair<Choice*, DecodeScheduler::Sequence>> seqs;
    for (Choice& c : choices_) {
      if (c.finished) continue;
      DecodeScheduler::Sequence seq;
      seq.cache = std::move(caches[c.index]);
      seq.next_token = first[c.index];
      seq.sampler = std::move(c.sampler);
      seq.remaining = max_new_tokens_ - c.generated;
      // Stop tokens and strings are this stream's to judge (Emit): the
      // scheduler only counts.
      seq.on_token = [this, &c](int32_t token, const TokenLogprobs* logprobs) {
        if (abandoned_) return DecodeScheduler::SinkResult::kStop;
        if (!Emit(c, token, logprobs)) {
          gone_ = true;
          abandoned_ = true;
          return DecodeScheduler::SinkResult::kStop;
        }
        if (c.failure) {
          Abandon(*c.failure);
          return DecodeScheduler::SinkResult::kStop;
        }
        return c.finished ? DecodeScheduler::SinkResult::kStop : DecodeScheduler::SinkResult::kAccepted;
      };
      // The scheduler's last touch of this choice: the last ChoiceDone may
      // end (and delete) the stream.
      seq.on_done = [this, &c](DecodeScheduler::Finish finish, const Status& status) {
        c.cache_counted.reset();
        if (gone_) return ChoiceDone(StreamGone(), 1);
        if (!status.ok()) {
          // A failed choice fails the call: the others stop at their next token.
          Abandon(ToGrpcStatus(finish == DecodeScheduler::Finish::kError
                                   ? status.WithContext(StepContext(c))
                                   : Status(StatusCode::kUnavailable, "seer-decode: the server is shutting down")));
          return ChoiceDone(grpc::Status::OK, 1);
        }
        if (abandoned_) return ChoiceDone(grpc::Status(grpc::StatusCode::ABORTED, "another choice failed"), 1);
        ChoiceDone(FinishWithSummary(c), 1);
      };
      seqs.emplace_back(&c, std::move(seq));
    }
    {
      std::lock_guard<std::mutex> lock(done_mu_);
      choices_left_ = static_cast<int>(seqs.size());
    }
    // Once the last one is in, the stream may finish at any moment: nothing
    // here touches it after that.
    for (size_t k = 0; k < seqs.size(); ++k) {
      if (Status s = service_->scheduler_->Submit(std::move(seqs[k].second)); !s.ok()) {
        // This choice and the ones after it never ran (their caches are
        // gone with the sequences); they still count, so the stream lives.
        Abandon(grpc::Status(grpc::StatusCode::UNAVAILABLE, "seer-decode: the server is shutting down"));
        for (size_t j = k; j < seqs.size(); ++j) seqs[j].first->cache_counted.reset();
        const int never = static_cast<int>(seqs.size() - k);
        seqs.clear();
        ChoiceDone(grpc::Status::OK, never);
        return std::nullopt;
      }
    }
    return std::nullopt;
  }

  // The call is ending with `status` (kept unless a failure came first):
  // every choice stops at its next token. The status is recorded before the
  // others can see the flag, so their ABORTED never takes its place.
  void Abandon(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(done_mu_);
      if (outcome_.ok()) outcome_ = status;
    }
    abandoned_ = true;
  }

  // `count` choices have left (`status`: how the first of them ended); the
  // last one out finishes the stream with the first failure, or OK.
  void ChoiceDone(const grpc::Status& status, int count) {
    grpc::Status outcome;
    {
      std::lock_guard<std::mutex> lock(done_mu_);
      if (!status.ok() && outcome_.ok()) outcome_ = status;
      choices_left_ -= count;
      if (choices_left_ > 0) return;
      outcome = outcome_;
    }
    shared_counted_.reset();  // the last choice's pages, the shared ones too, are back
    FinishWork(outcome);
  }

  // Sends a generated token of choice `c` (the text it adds, its logprobs
  // when asked) and judges whether the choice is finished: a stop token, a
  // stop string, or max_new_tokens. False when the stream is gone.
  bool Emit(Choice& c, int32_t token, const TokenLogprobs* logprobs) {
    if (std::string lost = c.sampling != nullptr ? c.sampling->GuideFailure() : std::string(); !lost.empty()) {
      // The guide no longer follows its whole language (or could not find
      // the ids for this token): the reply cannot be what was asked. The
      // token whose draw found it is not sent: it took a byte the guide
      // lost, or, past the tables' budget, came from an empty allowed set.
      c.failure = grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "guide: " + lost + (choices_.size() > 1 ? " (choice " + std::to_string(c.index) + ")" : std::string()));
      c.finished = true;
      return true;
    }
    ++c.generated;
    auto msg = std::make_unique<v1::GenerateResponse>();
    msg->set_token(token);
    msg->set_choice(c.index);
    if (logprobs != nullptr) {
      v1::TokenLogprobs* out = msg->mutable_logprobs();
      SetLogprob(logprobs->chosen, out->mutable_chosen());
      for (const TokenLogprob& t : logprobs->top) SetLogprob(t, out->add_top());
    }
    // The first min_new_tokens tokens end nothing (a stop token among them
    // only when every other token had probability 0).
    const bool may_end = c.generated > call_.min_new_tokens;
    bool stop = may_end && std::find(stop_tokens_.begin(), stop_tokens_.end(), token) != stop_tokens_.end();
    // A stop token is sent, but its text is not part of the reply (as vLLM
    // leaves out a stop token's text; an end-of-text id has none anyway)
    // unless the request includes what stopped it.
    if (c.text != nullptr && (!stop || call_.include_stop)) {
      // An id the tokenizer does not know (a model vocabulary padded past
      // the tokenizer's) adds no text.
      StatusOr<TextStream::Piece> piece = c.text->Push(token, /*stops_armed=*/may_end);
      if (piece.ok()) {
        msg->set_text(std::move(piece->text));
        stop = stop || piece->stopped;
      }
    }
    if (!Send(std::move(msg), TokenMessageBytes(call_.sampling.logprobs))) return false;
    if (stop) {
      c.finish_reason = "stop";
      c.finished = true;
    } else if (c.generated >= max_new_tokens_) {
      c.finished = true;
    }
    return true;
  }

  // The prompt's logprobs from the prefill's summary, with their texts, in
  // messages of up to 1024 tokens; position 0 has none (NaN). A prompt
  // token's text is what it adds to the prompt's text (decoded
  // incrementally, as the reply's tokens are, and as vLLM does), so that the
  // texts joined are the prompt decoded whole, a character split over tokens
  // included; an alternative's is its token decoded alone. The call's end
  // when it cannot go on: the stream gone, or a summary without them
  // (DATA_LOSS).
  std::optional<grpc::Status> SendPromptLogprobs(const std::vector<int32_t>& ids) {
    constexpr int kPerMessage = 1024;
    const auto& got = fetched_.summary.prompt_logprobs();
    if (got.size() != static_cast<int>(ids.size()) - 1) {
      return grpc::Status(grpc::StatusCode::DATA_LOSS, "seer-decode: the prefill sent " + std::to_string(got.size()) +
                                                           " prompt logprobs for " + std::to_string(ids.size()) +
                                                           " prompt tokens");
    }
    std::optional<IncrementalDecoder> decoder;
    if (service_->tokenizer_ != nullptr) decoder.emplace(*service_->tokenizer_, call_.skip_special_tokens);
    const int n = static_cast<int>(ids.size());
    for (int first = 0; first < n; first += kPerMessage) {
      auto msg = std::make_unique<v1::GenerateResponse>();
      v1::PromptLogprobs* out = msg->mutable_prompt_logprobs();
      out->set_first(first);
      const int end = std::min(first + kPerMessage, n);
      for (int i = first; i < end; ++i) {
        v1::TokenLogprobs* t = out->add_tokens();
        if (i == 0) {
          t->mutable_chosen()->set_token_id(ids[0]);
          t->mutable_chosen()->set_logprob(std::numeric_limits<float>::quiet_NaN());
        } else {
          const v1::TokenLogprobs& lp = got[i - 1];
          t->mutable_chosen()->set_token_id(lp.chosen().token_id());
          t->mutable_chosen()->set_logprob(lp.chosen().logprob());
          for (const v1::TokenLogprob& alt : lp.top())
            SetLogprob(TokenLogprob{alt.token_id(), alt.logprob()}, t->add_top());
        }
        if (!decoder) continue;
        StatusOr<std::string> piece = decoder->Step(ids[i]);
        std::string text = piece.ok() ? *std::move(piece) : std::string();
        if (i + 1 == n) {
          StatusOr<std::string> rest = decoder->Finish();
          if (rest.ok()) text += *rest;
        }
        t->mutable_chosen()->set_text(unicode::Utf8Lossy(text));
      }
      const size_t bytes = static_cast<size_t>(end - first) * TokenMessageBytes(call_.prompt_logprobs);
      if (!Send(std::move(msg), bytes)) return StreamGone();
    }
    return std::nullopt;
  }

  // A logprob and the token's text alone (none without a tokenizer; an id
  // past the tokenizer's vocabulary has none either).
  void SetLogprob(const TokenLogprob& t, v1::TokenLogprob* out) const {
    out->set_token_id(t.id);
    out->set_logprob(t.logprob);
    if (service_->tokenizer_ == nullptr) return;
    const int32_t id = t.id;
    // Special tokens show as nothing, as in the reply's text (vLLM's way),
    // unless the request keeps them.
    const std::span<const int32_t> one(&id, 1);
    StatusOr<std::string> text = service_->tokenizer_->Decode(one, call_.skip_special_tokens);
    if (!text.ok()) return;
    out->set_text(unicode::Utf8Lossy(*text));
    // Part of a character: its own bytes too (OpenAI's `bytes`).
    if (out->text().find("\xEF\xBF\xBD") != std::string::npos) {
      StatusOr<std::string> bytes = service_->tokenizer_->DecodeBytes(one, call_.skip_special_tokens);
      if (bytes.ok() && *bytes != out->text()) out->set_raw_bytes(*std::move(bytes));
    }
  }

  // Choice `c`'s last message.
  grpc::Status FinishWithSummary(Choice& c) {
    auto msg = std::make_unique<v1::GenerateResponse>();
    msg->set_choice(c.index);
    if (c.text != nullptr && !c.text->stopped()) {
      // The text held back at the end (a partial character, a possible
      // start of a stop string that never came).
      StatusOr<std::string> rest = c.text->Finish(/*stops_armed=*/c.generated > call_.min_new_tokens);
      if (rest.ok()) msg->set_text(std::move(*rest));
      // A stop string in text the decoder held to the end (bytes that never
      // made a character) ends the reply too.
      if (c.text->stopped()) c.finish_reason = "stop";
    }
    const v1::PrefillSummary& ps = fetched_.summary;
    v1::GenerateSummary* s = msg->mutable_summary();
    s->set_prompt_tokens(prompt_tokens_);
    s->set_generated_tokens(c.generated);
    s->set_finish_reason(c.finish_reason);
    s->set_prefill_seconds(ps.timings().prefill_seconds());
    s->set_kv_transfer_seconds(fetched_.seconds);
    s->set_kv_bytes(fetched_.kv_bytes);
    *s->mutable_layer_density() = ps.layer_density();
    s->set_overall_density(ps.overall_density());
    s->set_prefill_endpoint(fetched_.endpoint);
    s->set_sparsity(ps.sparsity());
    s->set_cached_tokens(ps.cached_tokens());
    s->set_kv_held_tokens(fetched_.kv_first_token);
    *s->mutable_kv_transfer() = fetched_.transfer;
    if (!Send(std::move(msg), kSummaryBytes)) return StreamGone();
    return grpc::Status::OK;
  }

  // Hooks: one at a time, in write order. The time to the first token is the
  // stream's (its first choice's); the time between tokens is each choice's.
  void BeforeWrite(v1::GenerateResponse* msg) override {
    const Clock::time_point now = Clock::now();
    if (msg->has_summary()) {
      if (first_token_) msg->mutable_summary()->set_ttft_seconds(Seconds(*first_token_ - arrived_));
      msg->mutable_summary()->set_total_seconds(Seconds(now - arrived_));
      return;
    }
    if (msg->event_case() != v1::GenerateResponse::kToken) return;
    if (!first_token_) {
      first_token_ = now;
      metrics_->ttft.Observe(Seconds(now - arrived_));
    }
    std::optional<Clock::time_point>& last = choices_[static_cast<size_t>(msg->choice())].last_token;
    if (last) metrics_->inter_token.Observe(Seconds(now - *last));
    last = now;
  }

  void AfterWrite(const v1::GenerateResponse& msg, size_t /*bytes*/) override {
    if (msg.event_case() == v1::GenerateResponse::kToken) metrics_->tokens.Increment();
  }

  void OnStreamCancelled() override { canceller_.Cancel(); }

  void OnWriteStall(double stall_seconds) override {
    metrics_->write_stalls.Increment();
    LogWriteStall(request_id_, peer_, stall_seconds, Seconds(Clock::now() - arrived_));
  }

  void OnStreamDone(const grpc::Status& status) override {
    metrics_->CountRequest(status.error_code());
    metrics_->request_duration.Observe(Seconds(Clock::now() - arrived_));
    if (admitted_) metrics_->inflight.Decrement();
  }

  DecodeService* const service_;
  DecodeMetrics* const metrics_;
  const std::string peer_;
  const Clock::time_point arrived_;
  Engine* engine_ = nullptr;
  bool admitted_ = false;
  CallCanceller canceller_;

  // Set in the constructor; then the worker's, then (batched) the
  // scheduler thread's, one after the other.
  GenerateCall call_;
  std::string request_id_;
  int max_new_tokens_ = 0;
  std::vector<int32_t> stop_tokens_;
  std::vector<Choice> choices_;  // never resized after the constructor
  int prompt_tokens_ = 0;
  FetchedKv fetched_;
  // The share of --max-buffered-bytes the prompt's logprobs take, when asked.
  std::optional<ByteBudget::Reservation> prompt_logprobs_charge_;
  std::optional<GaugeHold> shared_counted_;  // the prompt's pages the choices share
  std::atomic<bool> gone_{false};  // the client left: every choice stops
  std::atomic<bool> abandoned_{false};  // the call is ending: every choice stops
  // The choices in the scheduler's batch, and the first failure among them.
  std::mutex done_mu_;
  int choices_left_ = 0;
  grpc::Status outcome_;

  // Write hooks only.
  std::optional<Clock::time_point> first_token_;
};

grpc::ServerWriteReactor<v1::GenerateResponse>* LegacyDecodeService::Generate(grpc::CallbackServerContext* context,
                                                                              const v1::GenerateRequest* request) {
  return service_->Generate(context, request);
}

DecodeService::DecodeService(const DecodeServiceOptions& options, PrefillClient* prefill, DecodeMetrics* metrics)
    : options_(options),
      prefill_(prefill),
      metrics_(metrics),
      budget_(options.max_buffered_bytes),
      watchdog_(options.write_stall_seconds),
      queue_(options.max_concurrent, options.max_queue) {
  kv_observer_ = std::make_unique<KvTransferMetricsObserver>(&metrics_->kv_transport);
  prefill_->SetKvTransferObserver(kv_observer_.get());
}

DecodeService::~DecodeService() {
  Shutdown();
  prefill_->SetKvTransferObserver(nullptr);
}

Status DecodeService::CheckOptions(const DecodeServiceOptions& o) {
  if (o.max_concurrent < 1 || o.max_concurrent > 1024)
    return InvalidArgument("--max-concurrent: " + std::to_string(o.max_concurrent) + " is out of range [1, 1024]");
  if (o.max_queue < 0 || o.max_queue > 100000)
    return InvalidArgument("--max-queue: " + std::to_string(o.max_queue) + " is out of range [0, 100000]");
  if (o.max_new_tokens < 1 || o.max_new_tokens > (1 << 20))
    return InvalidArgument("--max-new-tokens: " + std::to_string(o.max_new_tokens) + " is out of range [1, 1048576]");
  if (o.default_new_tokens < 1 || o.default_new_tokens > o.max_new_tokens)
    return InvalidArgument("--default-max-new-tokens: " + std::to_string(o.default_new_tokens) +
                           " is out of range [1, " + std::to_string(o.max_new_tokens) + "] (--max-new-tokens)");
  // Room for at least one request of the largest size (a model of up to 1024 layers).
  const int64_t one = GenerateStreamBytes(o.max_new_tokens, 1024);
  if (o.max_buffered_bytes < one)
    return InvalidArgument("--max-buffered-bytes: " + std::to_string(o.max_buffered_bytes) +
                           " cannot hold one request of --max-new-tokens " + std::to_string(o.max_new_tokens) + " (" +
                           std::to_string(one) + " bytes)");
  if (o.kv_prefix_cache_bytes < 0)
    return InvalidArgument("--kv-prefix-cache-bytes: " + std::to_string(o.kv_prefix_cache_bytes) + " must be >= 0");
  if (!(o.write_stall_seconds >= 0) || o.write_stall_seconds > 86400)
    return InvalidArgument("--write-stall-seconds: " + std::to_string(o.write_stall_seconds) +
                           " is out of range [0, 86400] (0: never)");
  return OkStatus();
}

void DecodeService::SetTokenizer(const Tokenizer* tokenizer, std::vector<int32_t> end_of_text_ids) {
  tokenizer_ = tokenizer;
  end_of_text_ids_ = std::move(end_of_text_ids);
}

int DecodeService::batch_running() const {
  if (engine_.load(std::memory_order_acquire) == nullptr || scheduler_ == nullptr) return 0;
  return scheduler_->running();
}

Status DecodeService::SetEngine(Engine* engine) {
  const ModelConfig& c = engine->config();
  expected_.fingerprint = engine->fingerprint();
  expected_.num_layers = c.num_layers;
  expected_.num_kv_heads = c.num_kv_heads;
  expected_.head_dim = c.head_dim;
  expected_.vocab_size = c.vocab_size;
  limits_.vocab_size = c.vocab_size;
  limits_.max_positions = c.max_position_embeddings;
  // A prompt must leave room for at least one new token.
  limits_.max_prompt_tokens = c.max_position_embeddings - 1;
  limits_.max_prompt_source = "the model's max_position_embeddings, less one new token";
  limits_.max_new_tokens = options_.max_new_tokens;
  limits_.default_new_tokens = options_.default_new_tokens;
  if (engine->page_pool() != nullptr) {
    if (options_.kv_prefix_cache_bytes > 0) {
      held_ = std::make_unique<HeldPrefixes>(options_.kv_prefix_cache_bytes, engine->page_pool()->layout().page_tokens,
                                             metrics_);
    }
    scheduler_ = std::make_unique<DecodeScheduler>(engine);
    scheduler_->set_on_step([metrics = metrics_](const DecodeScheduler::StepStats& step) {
      metrics->batch_size.Observe(step.batch);
      metrics->step_seconds.Observe(step.seconds);
    });
  }
  engine_.store(engine, std::memory_order_release);
  return OkStatus();
}

void DecodeService::Shutdown() {
  queue_.Shutdown();
  // After the workers: none can hand the scheduler a request any more.
  if (scheduler_ != nullptr) scheduler_->Stop();
  // The held pages go back to the pool while the engine is still there.
  held_.reset();
}

std::shared_ptr<const TokenGuideFactory> DecodeService::GuideFor(const std::string& key,
                                                                 std::shared_ptr<const Grammar> grammar) {
  std::lock_guard<std::mutex> lock(guide_mu_);
  for (size_t i = 0; i < guides_.size(); ++i) {
    if (guides_[i].first != key) continue;
    std::rotate(guides_.begin() + static_cast<std::ptrdiff_t>(i), guides_.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                guides_.end());
    return guides_.back().second;
  }
  if (guide_vocabulary_ == nullptr) {
    StatusOr<std::shared_ptr<const GuideVocabulary>> v = GuideVocabulary::FromTokenizer(*tokenizer_);
    // It cannot fail today; were it to, no id would be allowed and every
    // guided reply would end at once, rather than run unguided.
    guide_vocabulary_ = v.ok() ? *std::move(v) : GuideVocabulary::FromBytes({});
  }
  auto made = std::make_shared<GrammarGuideFactory>(std::move(grammar), guide_vocabulary_);
  if (guides_.size() >= kGuideCache) guides_.erase(guides_.begin());
  guides_.emplace_back(key, made);
  return made;
}

uint64_t DecodeService::FreshSeed() {
  std::lock_guard<std::mutex> lock(seed_mu_);
  return seed_source_();
}

grpc::ServerWriteReactor<v1::GenerateResponse>* DecodeService::Generate(grpc::CallbackServerContext* context,
                                                                        const v1::GenerateRequest* request) {
  return new GenerateStream(this, context, *request);
}

}  // namespace seer
