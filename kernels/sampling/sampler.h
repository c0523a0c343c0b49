// Token sampling for the decode worker: greedy by default, or temperature
// with optional min-p, top-k and top-p (nucleus) cuts, from a seeded random
// stream so that a request with a seed is reproducible. Before either, the
// logit adjustments: Hugging Face's repetition penalty on the tokens of the
// prompt and of the reply, then OpenAI's fixed bias per token id and
// presence and frequency penalties on the tokens this sampler has already
// produced. On request, each token's log-probability and the most likely
// alternatives (OpenAI's logprobs), from the model's own logits.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/sampling/adjust.h"

namespace seer {

// One token's logit x moved before sampling to AdjustLogit(x, delta,
// repetition): divided (x > 0) or multiplied (x <= 0) by `repetition`, then
// `delta` added, in float.
struct LogitAdjustment {
  int32_t id = 0;
  float delta = 0.0f;
  float repetition = 1.0f;
  bool operator==(const LogitAdjustment&) const = default;
};

// Guided decoding: which tokens may come next so that the reply stays the
// start of a text of some language (a JSON schema's documents, a regular
// expression's matches). One per reply, advanced token by token.
class TokenGuide {
 public:
  virtual ~TokenGuide() = default;
  // The ids that keep the reply the start of a text of the language, as
  // bits over the vocabulary (id i: bit i % 64 of word i / 64; ids past the
  // guide's vocabulary are not allowed). `allowed` is resized as needed.
  virtual void Allowed(std::vector<uint64_t>* allowed) = 0;
  // The reply so far is a whole text of the language: it may end here.
  virtual bool complete() const = 0;
  // The token chosen next (one that Allowed did not list leaves the guide
  // allowing nothing).
  virtual void Accept(int32_t token) = 0;
  // Empty while the guide follows its language whole; otherwise why it no
  // longer can (the reply is still a start of a text of the language, but
  // some of the texts it could become are out of the guide's reach), which
  // fails the request.
  virtual std::string failure() const { return {}; }
};

// What SamplingParams carries: shared by the replies of a request, each of
// which starts its own TokenGuide.
class TokenGuideFactory {
 public:
  virtual ~TokenGuideFactory() = default;
  virtual std::unique_ptr<TokenGuide> Start() const = 0;
};

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  int top_k = 0;  // 0: no cut
  double top_p = 1.0;  // 1: no cut
  // vLLM's min_p: keep the tokens whose probability is at least min_p times
  // the most likely token's (after the temperature). 0: no cut; at most 1.
  double min_p = 0.0;
  uint64_t seed = 0;
  // Hugging Face's and vLLM's repetition_penalty: a token of prompt_ids or
  // already produced by this sampler has its logit divided by it when
  // positive and multiplied by it otherwise, before the bias and the
  // penalties below (Hugging Face's order; vLLM adds logit_bias first, so
  // the two differ for a token that has both). 1: none; > 0.
  double repetition_penalty = 1.0;
  std::vector<int32_t> prompt_ids;  // read only when repetition_penalty != 1; params() holds none
  // OpenAI's penalties: a token already produced c > 0 times by this sampler
  // loses c * frequency_penalty + presence_penalty from its logit. The
  // prompt's tokens do not count.
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  // Added to a token's logit at every step; in any order (an id given twice
  // adds its biases).
  std::vector<LogitAdjustment> logit_bias;
  // vLLM's min_tokens: until this sampler has recorded min_tokens tokens,
  // the ids in end_ids (those that would end the reply: stop tokens, end of
  // text) have logit -inf, so they are never chosen while any other token
  // has a chance.
  int min_tokens = 0;
  std::vector<int32_t> end_ids;
  // vLLM's bad_words, as token sequences: a sequence's last token has logit
  // -inf whenever the tokens this sampler recorded last are the rest of it
  // (a one-token sequence: always). Empty sequences are ignored.
  std::vector<std::vector<int32_t>> bad_words;
  // vLLM's allowed_token_ids: when not empty, every other id of
  // [0, vocab_size) has logit -inf (an adjustment entry each: meant for a
  // few allowed tokens, as classifiers use it).
  std::vector<int32_t> allowed_ids;
  int32_t vocab_size = 0;
  // Guided decoding: every id of [0, vocab_size) that the guide does not
  // allow has logit -inf, and the end ids are allowed only once the reply
  // is a whole text of the guide's language (even an end id whose text the
  // guide would take). When no other id is left (the guide's bans and this
  // sampler's own together), the end ids are allowed whatever the text and
  // min_tokens, so the reply ends rather than runs on a banned token.
  // Null: none.
  std::shared_ptr<const TokenGuideFactory> guide;
  // -1: none. 0 to kMaxTopLogprobs: after each token, last_logprobs() holds
  // its log-probability and this many most likely alternatives.
  int logprobs = -1;
};

// The largest repetition_penalty the servers and the CLI take. Hugging Face
// and vLLM bound it only below (> 0); 100 is ours, as for the temperature.
inline constexpr double kMaxRepetitionPenalty = 100.0;

// The most alternatives a token's logprobs may list (vLLM's default limit;
// OpenAI's chat API allows 20 too).
inline constexpr int kMaxTopLogprobs = 20;

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
  bool operator==(const TokenLogprob&) const = default;
};

// A sampled token's log-probability under the model's own distribution: the
// softmax of the raw logits, before the bias, penalties, temperature and
// cuts (as vLLM's default, raw_logprobs), so that it is the model's
// likelihood whatever the sampling. top: the `top_n` most likely ids, most
// likely first, the lowest id among equals.
struct TokenLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;
};

// log_softmax(logits)[token] and the top_n (0 to the vocabulary) largest,
// in double, rounded to float once. NaN logits have probability 0 and are
// never listed; +inf logits (when any) share all the mass; every token has
// probability 0 when no logit is a number above -inf. A token of probability
// 0 (or outside the vocabulary) has logprob -inf.
TokenLogprobs LogprobsOf(std::span<const float> logits, int32_t token, int top_n);

// LogprobsOf for `rows` rows of logits ([rows, vocab]), row r for
// tokens[r], appended to `out` in row order; the rows are split over up to
// `threads` threads (about a millisecond of one core per row of a 128k
// vocabulary).
void AppendLogprobsOfRows(const float* logits, int rows, int vocab, const int32_t* tokens, int top_n, int threads,
                          std::vector<TokenLogprobs>* out);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // The next token for `logits` ([vocab]), which it then records. First the
  // adjustments (Adjustments(), then a guide's Refused()) move their logits
  // (AdjustLogit, in float). Greedy then picks the largest logit (the lowest
  // id on ties). Otherwise, in order: keep the top_k largest logits, softmax
  // of logit / temperature, keep the smallest prefix (by descending
  // probability) whose mass reaches top_p, renormalise, and draw; with
  // min_p > 0 the logits whose weight exp((logit - largest) / temperature)
  // is below min_p go before top-k (vLLM's order). NaN logits are never
  // picked. With params().logprobs >= 0, also sets last_logprobs() from
  // `logits` as given.
  int32_t Sample(std::span<const float> logits);

  // Whether each token's logprobs are asked for (params().logprobs >= 0).
  bool wants_logprobs() const { return params_.logprobs >= 0; }
  // For a backend that samples on its own device and computes the logprobs
  // there (LogprobsOf's twin on the raw logits, before Adjustments()).
  void SetLastLogprobs(TokenLogprobs logprobs) { last_logprobs_ = std::move(logprobs); }
  // The last token's, when wants_logprobs().
  const TokenLogprobs& last_logprobs() const { return last_logprobs_; }

  // The distribution Sample draws from, [vocab], zero outside the kept set
  // (empty for greedy). Exposed for tests and for diagnostics.
  std::vector<double> Distribution(std::span<const float> logits);

  // Notes that `token` was produced, for the penalties and the guide. Sample
  // does it; a backend that samples on its own device calls it with the
  // token it drew. The guide's walk for the next token waits for the first
  // call that needs it (Adjustments, Refused, Sample), so that a backend can
  // run it while its device computes the next logits.
  void Record(int32_t token);
  // The guide's failure (TokenGuide::failure) after the tokens recorded so
  // far; empty without a guide.
  std::string GuideFailure() const { return guide_ != nullptr ? guide_->failure() : std::string(); }

  // How the logits are moved before the next token is chosen, ids
  // ascending: the repetition penalty on the prompt's and the recorded
  // tokens, then the bias less the penalties of the tokens recorded so far;
  // -inf for the end ids while fewer than min_tokens are recorded (unless
  // the guide leaves nothing else). Empty when the parameters adjust
  // nothing. A guide's bans are apart, in Refused().
  std::span<const LogitAdjustment> Adjustments() {
    Settle();
    return adjustments_;
  }

  // With a guide, the ids it refuses for the next token, as bits over
  // [0, vocab_size) (id i: bit i % 64 of word i / 64; none past vocab_size):
  // each such logit x becomes AdjustLogit(x, -inf, 1), that is x + -inf,
  // after Adjustments(). Among them the end ids, until the reply is a whole
  // text of the guide's language (or nothing else is left). Empty without
  // a guide.
  std::span<const uint64_t> Refused() {
    Settle();
    return refused_;
  }

  // `logits` with Adjustments() and Refused() applied (ids past the end are
  // ignored).
  std::vector<float> Adjusted(std::span<const float> logits);

  const SamplingParams& params() const { return params_; }

  // Uniform in [0, 1) from 53 random bits; defined here rather than by
  // std::uniform_real_distribution so a seed gives the same tokens everywhere.
  // Sample draws exactly one per call when temperature > 0 and none when
  // greedy; a backend that samples on its own device draws it here in the
  // same way, so one seed gives one token stream on every backend.
  double NextUniform();

 private:
  // Distribution and Sample on logits already adjusted.
  std::vector<double> DistributionOf(std::span<const float> logits) const;
  int32_t Choose(std::span<const float> logits);
  // Entry i's delta from its bias, count and bans; adding an entry for
  // `id`; the entry that exists for `id`.
  float Delta(size_t i) const;
  size_t EntryFor(int32_t id);
  size_t Find(int32_t id) const;
  bool banning() const { return recorded_ < params_.min_tokens; }
  // The bad words' bans for the tokens recorded so far, every delta again,
  // and the entries that adjust nothing any more gone.
  void Refresh();
  // The guide's bans for the next token: refused_ again, from the guide's
  // allowed ids and the sampler's own entries.
  void Guide();
  void Settle() {
    if (guide_pending_) Guide();
  }

  // What an entry of adjustments_ stands for.
  struct EntryState {
    double bias = 0.0;
    int64_t count = 0;  // times recorded
    bool ended = false;  // an end id: banned while banning()
    bool bad = false;  // the last token of a bad word whose rest was just recorded
    bool outside = false;  // not among params_.allowed_ids
  };

  SamplingParams params_;
  std::mt19937_64 rng_;
  bool penalised_ = false;  // a penalty is not zero
  float repetition_ = 1.0f;  // params_.repetition_penalty, in float
  int64_t recorded_ = 0;  // tokens recorded
  std::vector<LogitAdjustment> adjustments_;  // ascending ids
  std::vector<EntryState> states_;  // per entry of adjustments_
  size_t bad_context_ = 0;  // the longest bad word's length
  std::vector<int32_t> recent_;  // the last tokens recorded, as many as the longest bad word less one
  std::unique_ptr<TokenGuide> guide_;  // params_.guide's, for this reply
  bool guide_pending_ = false;  // a token was recorded (or none yet): Guide() has not run for the next
  std::vector<uint64_t> guide_allowed_;  // its last Allowed
  std::vector<uint64_t> end_bits_;  // params_.end_ids, as bits over the vocabulary
  std::vector<uint64_t> refused_;  // Refused()
  bool guide_ends_ = false;  // the guide allows nothing but the end ids
  TokenLogprobs last_logprobs_;
};

// Index of the largest value, the lowest index on ties, skipping NaN; 0 when
// every value is NaN or `values` is empty.
int32_t ArgMax(std::span<const float> values);

}  // namespace seer
