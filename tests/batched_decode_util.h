// What the batched-decode tests of both backends share: requests that join
// a batch at given steps and leave when done, run the way a decode worker runs
// them (prefill, KV moved into a paged cache through the wire layout, first
// token from the prefill's logits, then DecodeBatch steps).
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "engine/kv/page_pool.h"
#include "tests/logprobs_util.h"
#include "text/grammar.h"
#include "text/guide.h"
#include "text/regex_grammar.h"

namespace seer::batched_test {

struct Request {
  std::vector<int32_t> prompt;
  int new_tokens = 0;
  SamplingParams sampling;
  int join_step = 0;  // the batch step at which it joins
};

// What a decode worker does with a request: prefill (here, locally) into a
// contiguous cache, move the KV into a paged cache layer by layer through the
// wire layout, sample the first token from the prefill's logits.
struct Running {
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Sampler> sampler;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;  // each token's, when the sampler wants them
  int remaining = 0;
};

inline Running Start(Engine& e, const Request& r) {
  Running run;
  auto contiguous = e.NewCache(static_cast<int>(r.prompt.size()));
  EXPECT_TRUE(contiguous.ok());
  auto prefill = e.Prefill(r.prompt, PrefillOptions{}, contiguous->get(), nullptr);
  EXPECT_TRUE(prefill.ok()) << prefill.status().ToString();
  auto paged = e.NewPagedCache(static_cast<int>(r.prompt.size()) + r.new_tokens);
  EXPECT_TRUE(paged.ok()) << paged.status().ToString();
  const KvLayout& l = (*contiguous)->layout();
  const int L = static_cast<int>(r.prompt.size());
  std::vector<uint8_t> k(l.LayerBytes(L)), v(l.LayerBytes(L));
  for (int layer = 0; layer < l.num_layers; ++layer) {
    EXPECT_TRUE((*contiguous)->ReadLayer(layer, 0, L, k.data(), v.data()).ok());
    EXPECT_TRUE((*paged)->WriteLayer(layer, 0, L, l.dtype, k.data(), v.data()).ok());
  }
  (*paged)->set_length(L);
  run.cache = std::move(paged).value();
  run.sampler = std::make_unique<Sampler>(r.sampling);
  const int vocab = e.config().vocab_size;
  run.tokens.push_back(run.sampler->Sample(std::span<const float>(prefill->logits.data(), vocab)));
  if (run.sampler->wants_logprobs()) run.logprobs.push_back(run.sampler->last_logprobs());
  run.remaining = r.new_tokens - 1;
  return run;
}

// Steps the batch until every request has its tokens; requests join at their
// join_step and leave when done. `logprobs` (optional) gets each request's
// tokens' logprobs (empty for those that do not ask).
inline std::vector<std::vector<int32_t>> RunBatched(Engine& e, const std::vector<Request>& requests,
                                                    std::vector<std::vector<TokenLogprobs>>* logprobs = nullptr) {
  std::vector<Running> runs(requests.size());
  std::vector<bool> started(requests.size(), false), done(requests.size(), false);
  for (int step = 0;; ++step) {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (!started[i] && requests[i].join_step <= step) {
        runs[i] = Start(e, requests[i]);
        started[i] = true;
        done[i] = runs[i].remaining == 0;
        if (done[i]) runs[i].cache.reset();
      }
    }
    std::vector<DecodeSeq> batch;
    std::vector<size_t> who;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (started[i] && !done[i]) {
        batch.push_back({runs[i].cache.get(), runs[i].tokens.back(), runs[i].sampler.get()});
        who.push_back(i);
      }
    }
    if (batch.empty()) {
      if (std::all_of(started.begin(), started.end(), [](bool b) { return b; })) break;
      continue;
    }
    std::vector<int32_t> next(batch.size());
    const Status s = e.DecodeBatch(batch, next);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) break;
    for (size_t j = 0; j < who.size(); ++j) {
      Running& r = runs[who[j]];
      r.tokens.push_back(next[j]);
      if (r.sampler->wants_logprobs()) r.logprobs.push_back(r.sampler->last_logprobs());
      if (--r.remaining == 0) {
        done[who[j]] = true;
        r.cache.reset();  // leaves: its pages go back at once
      }
    }
  }
  std::vector<std::vector<int32_t>> out;
  for (Running& r : runs) out.push_back(r.tokens);
  if (logprobs != nullptr) {
    logprobs->clear();
    for (Running& r : runs) logprobs->push_back(r.logprobs);
  }
  return out;
}

inline std::vector<Request> MixedRequests() {
  // Prompts straddle the 16-token pages; decodes cross page boundaries.
  std::vector<Request> rs;
  const int lengths[] = {15, 16, 17, 31, 33, 5};
  for (int i = 0; i < 6; ++i) {
    Request r;
    for (int t = 0; t < lengths[i]; ++t) r.prompt.push_back((7 * t + 13 * i + 1) % 100 + 1);
    r.new_tokens = 12 + 3 * i;
    r.join_step = (i * 5) % 11;
    if (i % 2 == 1) {
      r.sampling.temperature = 0.8;
      r.sampling.top_p = 0.9;
      r.sampling.top_k = 20;
      r.sampling.seed = 1000 + i;
    }
    // Logit adjustments, greedy and sampled: each sequence's own counts.
    if (i == 2) {
      r.sampling.presence_penalty = 1.5;
      r.sampling.frequency_penalty = 0.75;
      r.sampling.logit_bias = {{5, 3.0f}, {9, -100.0f}};
    }
    if (i == 3) {
      r.sampling.frequency_penalty = 1.0;
      r.sampling.logit_bias = {{17, 2.5f}};
    }
    rs.push_back(r);
  }
  return rs;
}

// MixedRequests, each with a +100 bias on its own token (30 + i): every
// token of request i is 30 + i, whichever row of the batch it decodes in.
inline std::vector<Request> ForcedRequests() {
  std::vector<Request> rs = MixedRequests();
  for (size_t i = 0; i < rs.size(); ++i) {
    rs[i].sampling.presence_penalty = 0.0;
    rs[i].sampling.frequency_penalty = 0.0;
    rs[i].sampling.logit_bias = {{static_cast<int32_t>(30 + i), 100.0f}};
  }
  return rs;
}

inline void ExpectForcedTokens(const std::vector<std::vector<int32_t>>& got, const std::vector<Request>& requests) {
  ASSERT_EQ(got.size(), requests.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i], std::vector<int32_t>(requests[i].new_tokens, static_cast<int32_t>(30 + i))) << "request " << i;
  }
}

// Each of `tokens`' logprobs as a batch reported them (`got`, top_n
// alternatives each) against the model's own: the prompt and the same tokens
// run through a contiguous cache (Prefill, then DecodeStep, which return the
// logits), and log_softmax of those raw logits in long double
// (logprobs_test::ExpectLogprobsOf).
inline void ExpectModelLogprobs(Engine& e, const Request& r, const std::vector<int32_t>& tokens,
                                const std::vector<TokenLogprobs>& got, int top_n, double tol) {
  ASSERT_EQ(got.size(), tokens.size());
  auto cache = e.NewCache(static_cast<int>(r.prompt.size() + tokens.size()));
  ASSERT_TRUE(cache.ok());
  auto prefill = e.Prefill(r.prompt, PrefillOptions{}, cache->get(), nullptr);
  ASSERT_TRUE(prefill.ok()) << prefill.status().ToString();
  std::vector<float> logits = prefill->logits;
  for (size_t i = 0; i < tokens.size(); ++i) {
    SCOPED_TRACE("token " + std::to_string(i));
    logprobs_test::ExpectLogprobsOf(logits, tokens[i], got[i], top_n, tol);
    if (i + 1 < tokens.size()) {
      ASSERT_TRUE(e.DecodeStep(tokens[i], cache->get(), &logits).ok());
    }
  }
}

// MixedRequests in which some requests ask for `top_n` alternatives, one for
// the chosen token's logprob alone, and the rest for nothing.
inline std::vector<Request> LogprobRequests(int top_n) {
  std::vector<Request> rs = MixedRequests();
  for (size_t i = 0; i < rs.size(); i += 2) rs[i].sampling.logprobs = top_n;
  rs[1].sampling.logprobs = 0;
  return rs;
}

// RunBatched of LogprobRequests: the tokens of MixedRequests (asking changes
// no draw), and every logprob asked for the model's (ExpectModelLogprobs),
// whatever the sampling and adjustments of the request.
inline void ExpectBatchedLogprobs(Engine& e, double tol) {
  const std::vector<Request> requests = LogprobRequests(5);
  std::vector<std::vector<TokenLogprobs>> logprobs;
  const std::vector<std::vector<int32_t>> got = RunBatched(e, requests, &logprobs);
  EXPECT_EQ(got, RunBatched(e, MixedRequests()));
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    if (requests[i].sampling.logprobs < 0) {
      EXPECT_TRUE(logprobs[i].empty());
      continue;
    }
    ExpectModelLogprobs(e, requests[i], got[i], logprobs[i], requests[i].sampling.logprobs, tol);
  }
}

// Guided decoding in a batch. The fixtures have no tokenizer (or a tiny
// one), so the guides read a vocabulary of letters: id 2 (the fixtures' end
// of text) has no text; id i's is its letter, a second one for every third
// id, after a space for every fourth.
inline std::shared_ptr<const GuideVocabulary> LetterVocabulary(int vocab) {
  std::vector<std::optional<std::string>> bytes;
  for (int i = 0; i < vocab; ++i) {
    std::string text = i % 4 == 0 ? " " : "";
    text += static_cast<char>('a' + i % 26);
    if (i % 3 == 0) text += static_cast<char>('a' + (i / 3) % 26);
    bytes.push_back(i == 2 ? std::nullopt : std::optional<std::string>(text));
  }
  return GuideVocabulary::FromBytes(bytes);
}

// MixedRequests with guides: request 0 (greedy, with logprobs) and request
// 3 (sampled, with penalties) keep to regular expressions, request 1
// (sampled) to a choice; the rest have none. And request 6, whose every id
// is banned: its guide refuses id 0 (" aa") and its allowed_token_ids {0}
// every other id, the end id too, so each step draws id 0 (the lowest of
// logits all -inf), a token its guide refused; it asks for logprobs, which
// must still be the model's. grammars[i]: request i's, or null.
inline constexpr size_t kAllBanned = 6;
inline std::vector<Request> GuidedRequests(int vocab, std::vector<std::shared_ptr<const Grammar>>* grammars) {
  std::vector<Request> rs = MixedRequests();
  Request banned = rs[2];
  banned.sampling = SamplingParams{};
  banned.sampling.allowed_ids = {0};
  banned.new_tokens = 8;
  banned.join_step = 3;
  rs.push_back(banned);
  grammars->assign(rs.size(), nullptr);
  (*grammars)[0] = std::make_shared<Grammar>(*GrammarFromRegex("[a-m ]*"));
  (*grammars)[1] = std::make_shared<Grammar>(*GrammarFromChoices({" ab", "bcd", "dbb"}));
  (*grammars)[3] = std::make_shared<Grammar>(*GrammarFromRegex("( [a-z][a-z]?|[n-z])*"));
  (*grammars)[kAllBanned] = std::make_shared<Grammar>(*GrammarFromRegex("[b-z]*"));
  const std::shared_ptr<const GuideVocabulary> letters = LetterVocabulary(vocab);
  for (size_t i = 0; i < rs.size(); ++i) {
    if ((*grammars)[i] == nullptr) continue;
    rs[i].sampling.vocab_size = vocab;
    rs[i].sampling.end_ids = {2};
    rs[i].sampling.guide = std::make_shared<GrammarGuideFactory>((*grammars)[i], letters);
  }
  rs[0].sampling.logprobs = 3;
  rs[kAllBanned].sampling.logprobs = 2;
  return rs;
}

// GuidedRequests in a batch, and each guided one alone through
// DecodeAndSample on a contiguous cache: each decodes exactly its tokens
// alone and in the batch; a guided reply's text is the start of a sentence
// of its grammar, and a whole one where it ends (then only the end id
// follows); without their guides, most of them leave their grammars (so the
// guides did the work); the all-banned request draws id 0 every step; the
// logprobs asked for are the model's (ExpectModelLogprobs, `tol`).
inline void ExpectGuidedBatches(Engine& e, double tol) {
  const int vocab = e.config().vocab_size;
  std::vector<std::shared_ptr<const Grammar>> grammars;
  const std::vector<Request> requests = GuidedRequests(vocab, &grammars);
  std::vector<std::vector<TokenLogprobs>> logprobs;
  const std::vector<std::vector<int32_t>> together = RunBatched(e, requests, &logprobs);
  std::vector<Request> unguided = requests;
  for (Request& r : unguided) r.sampling.guide = nullptr;
  const std::vector<std::vector<int32_t>> free = RunBatched(e, unguided);
  const std::shared_ptr<const GuideVocabulary> letters = LetterVocabulary(vocab);
  // Whether `tokens` keep to `grammar`: a prefix of a sentence, a whole
  // one at the first end id, only end ids after it.
  auto keeps = [&](const Grammar& grammar, const std::vector<int32_t>& tokens) {
    GrammarMatcher text(grammar);
    for (size_t t = 0; t < tokens.size(); ++t) {
      if (tokens[t] == 2) {
        return text.complete() && std::all_of(tokens.begin() + static_cast<std::ptrdiff_t>(t), tokens.end(),
                                              [](int32_t id) { return id == 2; });
      }
      if (tokens[t] < 0 || tokens[t] >= vocab || !text.AdvanceText(letters->bytes(tokens[t]))) return false;
    }
    return true;
  };
  // Each guided request alone through DecodeAndSample (the engine's one-row
  // path), its tokens and their logprobs.
  auto alone_one_row = [&](const Request& r, std::vector<TokenLogprobs>* lps) {
    std::vector<int32_t> tokens;
    auto cache = e.NewCache(static_cast<int>(r.prompt.size()) + r.new_tokens);
    EXPECT_TRUE(cache.ok());
    if (!cache.ok()) return tokens;
    auto prefill = e.Prefill(r.prompt, PrefillOptions{}, cache->get(), nullptr);
    EXPECT_TRUE(prefill.ok()) << prefill.status().ToString();
    if (!prefill.ok()) return tokens;
    Sampler sampler(r.sampling);
    tokens.push_back(sampler.Sample(prefill->logits));
    lps->push_back(sampler.last_logprobs());
    while (static_cast<int>(tokens.size()) < r.new_tokens) {
      auto next = e.DecodeAndSample(tokens.back(), cache->get(), &sampler);
      EXPECT_TRUE(next.ok()) << next.status().ToString();
      if (!next.ok()) break;
      tokens.push_back(*next);
      lps->push_back(sampler.last_logprobs());
    }
    return tokens;
  };
  int left = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    Request alone = requests[i];
    alone.join_step = 0;
    EXPECT_EQ(together[i], RunBatched(e, {alone})[0]);
    if (grammars[i] == nullptr) {
      EXPECT_EQ(together[i], free[i]) << "a guide elsewhere in the batch changes nothing here";
      continue;
    }
    std::vector<TokenLogprobs> one_row_logprobs;
    const std::vector<int32_t> one_row = alone_one_row(requests[i], &one_row_logprobs);
    if (i == kAllBanned) {
      EXPECT_EQ(together[i], std::vector<int32_t>(requests[i].new_tokens, 0));
      EXPECT_EQ(one_row, together[i]);
      ExpectModelLogprobs(e, requests[i], one_row, one_row_logprobs, requests[i].sampling.logprobs, tol);
      continue;
    }
    EXPECT_TRUE(keeps(*grammars[i], together[i]));
    EXPECT_TRUE(keeps(*grammars[i], one_row)) << "through DecodeAndSample";
    left += keeps(*grammars[i], free[i]) ? 0 : 1;
  }
  EXPECT_GE(left, 2) << "without their guides, the replies leave the grammars";
  for (size_t i : {size_t{0}, kAllBanned}) {
    SCOPED_TRACE("request " + std::to_string(i) + "'s logprobs");
    ExpectModelLogprobs(e, requests[i], together[i], logprobs[i], requests[i].sampling.logprobs, tol);
  }
}

}  // namespace seer::batched_test
