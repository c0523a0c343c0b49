// The decode worker's sampler against a float64 recomputation of the
// distribution it should draw from (temperature, min-p, top-k, top-p,
// OpenAI's logit bias and presence/frequency penalties, Hugging Face's
// repetition penalty), and the empirical frequencies of its draws against
// that distribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/sampling/sampler.h"
#include "tests/logprobs_util.h"

namespace seer {
namespace {

// Temperature, top_k, top_p and seed; no logit adjustments.
SamplingParams P(double temperature, int top_k, double top_p, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  return p;
}

// Softmax(logits / t) restricted to `keep`, in float64, written directly from
// the definitions.
std::vector<double> Reference(const std::vector<float>& logits, double t, const std::vector<int>& keep) {
  std::vector<double> p(logits.size(), 0.0);
  double total = 0.0;
  for (int i : keep) total += std::exp(double(logits[i]) / t);
  for (int i : keep) p[i] = std::exp(double(logits[i]) / t) / total;
  return p;
}

TEST(Sampling, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s({});
  EXPECT_EQ(s.Sample(std::vector<float>{0.1f, 3.0f, -2.0f, 3.0f}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{-1.0f, -0.5f, -7.0f}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{NAN, -4.0f, NAN}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{}), 0);
}

TEST(Sampling, TemperatureDistributionMatchesFloat64Softmax) {
  const std::vector<float> logits = {1.0f, 2.5f, -0.5f, 0.0f, 2.0f};
  for (double t : {0.5, 1.0, 2.0}) {
    Sampler s(P(t, 0, 1.0, 42));
    const std::vector<double> got = s.Distribution(logits);
    const std::vector<double> want = Reference(logits, t, {0, 1, 2, 3, 4});
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "t=" << t << " i=" << i;
  }
}

TEST(Sampling, TopKKeepsTheKLargest) {
  const std::vector<float> logits = {0.3f, 1.9f, -2.0f, 1.2f, 0.9f, 1.9f};
  Sampler s(P(1.0, 3, 1.0, 1));
  // The three largest: 1.9 (ids 1 and 5) and 1.2 (id 3).
  const std::vector<double> want = Reference(logits, 1.0, {1, 3, 5});
  const std::vector<double> got = s.Distribution(logits);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << i;
  // top_k = 1 is greedy at any temperature.
  Sampler one(P(5.0, 1, 1.0, 3));
  for (int i = 0; i < 200; ++i) ASSERT_EQ(one.Sample(logits), 1);
}

TEST(Sampling, TopPKeepsTheSmallestPrefixReachingP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  const std::vector<float> logits = {float(std::log(0.15)), float(std::log(0.5)), float(std::log(0.05)),
                                     float(std::log(0.3))};
  {
    Sampler s(P(1.0, 0, 0.75, 9));  // 0.5 < 0.75 <= 0.5 + 0.3
    const std::vector<double> want = Reference(logits, 1.0, {1, 3});
    const std::vector<double> got = s.Distribution(logits);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-9) << i;
    EXPECT_NEAR(got[1], 0.625, 1e-6);  // 0.5 / 0.8, up to the float32 logits
  }
  {
    Sampler s(P(1.0, 0, 0.45, 9));  // the first token alone (0.5) reaches 0.45
    const std::vector<double> got = s.Distribution(logits);
    EXPECT_NEAR(got[1], 1.0, 1e-12);
    EXPECT_EQ(got[0] + got[2] + got[3], 0.0);
  }
  {
    Sampler s(P(1.0, 0, 0.96, 9));  // needs all four (0.95 < 0.96)
    const std::vector<double> got = s.Distribution(logits);
    EXPECT_GT(got[2], 0.0);
  }
}

TEST(Sampling, DrawsFollowTheDistribution) {
  const std::vector<float> logits = {0.2f, 1.4f, -0.3f, 0.9f, 1.1f, -1.5f, 0.0f, 0.6f};
  Sampler s(P(0.8, 6, 0.9, 12345));
  const std::vector<double> p = s.Distribution(logits);
  const int n = 40000;
  std::vector<int> count(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++count[s.Sample(logits)];
  // Every bin within 5 standard deviations of its binomial mean; tokens with
  // probability 0 are never drawn.
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(count[i], 0) << i;
      continue;
    }
    const double mean = n * p[i], sd = std::sqrt(n * p[i] * (1 - p[i]));
    EXPECT_NEAR(count[i], mean, 5 * sd) << "token " << i << " p=" << p[i];
  }
}

TEST(Sampling, SeedMakesDrawsReproducible) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  Sampler a(P(1.0, 0, 1.0, 77)), b(P(1.0, 0, 1.0, 77)), c(P(1.0, 0, 1.0, 78));
  std::vector<int> ta, tb, tc;
  for (int i = 0; i < 64; ++i) {
    ta.push_back(a.Sample(logits));
    tb.push_back(b.Sample(logits));
    tc.push_back(c.Sample(logits));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

// OpenAI's formula, written out: logit + bias - (c * frequency + presence
// when c > 0), where c counts the token in `produced`.
std::vector<float> OpenAiAdjusted(const std::vector<float>& logits, const std::map<int, double>& bias,
                                  const std::vector<int>& produced, double presence, double frequency) {
  std::vector<float> out(logits.size());
  for (size_t j = 0; j < logits.size(); ++j) {
    const auto c = std::count(produced.begin(), produced.end(), static_cast<int>(j));
    const auto b = bias.find(static_cast<int>(j));
    double x = logits[j] + (b == bias.end() ? 0.0 : b->second);
    if (c > 0) x -= static_cast<double>(c) * frequency + presence;
    out[j] = static_cast<float>(x);
  }
  return out;
}

TEST(Sampling, FrequencyPenaltyAlternatesGreedyTokensAsComputedByHand) {
  // Logits 3, 2.5, 0 and a frequency penalty of 1: token 0 (3 > 2.5), then 1
  // (2 < 2.5), 0 (2 > 1.5), 1 (1 < 1.5), 0 (1 > 0.5), 1 (0 < 0.5), then 0
  // (0 ties with token 2 and is the lower id), then 2 (-1, -0.5 < 0).
  SamplingParams p;
  p.frequency_penalty = 1.0;
  Sampler s(p);
  const std::vector<float> logits = {3.0f, 2.5f, 0.0f};
  std::vector<int32_t> got;
  for (int i = 0; i < 8; ++i) got.push_back(s.Sample(logits));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 0, 2}));
  // A presence penalty does not grow: 0, then 1 (1.5 < 2.5), then 0
  // (1.5 > 1.0) and 0 again.
  SamplingParams q;
  q.presence_penalty = 1.5;
  Sampler t(q);
  got.clear();
  for (int i = 0; i < 4; ++i) got.push_back(t.Sample(logits));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0, 0}));
}

TEST(Sampling, LogitBiasForcesAndBansTokens) {
  const std::vector<float> logits = {0.5f, 4.0f, 1.0f, -3.0f};
  SamplingParams p;
  p.logit_bias = {{3, 100.0f}, {1, -100.0f}};  // unsorted on purpose
  Sampler forced(p);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(forced.Sample(logits), 3);
  p.logit_bias = {{1, -100.0f}};
  p.temperature = 1.0;
  p.seed = 5;
  Sampler banned(p);
  for (int i = 0; i < 2000; ++i) ASSERT_NE(banned.Sample(logits), 1);
  // Zero biases and no penalties adjust nothing.
  p.logit_bias = {{2, 0.0f}};
  EXPECT_TRUE(Sampler(p).Adjustments().empty());
}

TEST(Sampling, AdjustedDistributionMatchesFloat64Reference) {
  std::vector<float> logits(40);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(2.0 * std::sin(3.7 * double(i)));
  const std::map<int, double> bias = {{0, 1.25}, {7, -2.5}, {13, 4.0}, {39, -100.0}};
  for (double presence : {0.0, 0.8, -1.0}) {
    for (double frequency : {0.0, 0.6, 2.0}) {
      SCOPED_TRACE("presence " + std::to_string(presence) + " frequency " + std::to_string(frequency));
      SamplingParams p = P(0.7, 0, 0.95, 31);
      p.presence_penalty = presence;
      p.frequency_penalty = frequency;
      for (const auto& [id, b] : bias) p.logit_bias.push_back({id, static_cast<float>(b)});
      Sampler s(p);
      std::vector<int> produced;
      for (int step = 0; step < 30; ++step) {
        // The reference distribution: the sampler's own top-p and softmax
        // rules (tested above) on logits adjusted by the written-out formula.
        Sampler plain(P(0.7, 0, 0.95, 31));
        const std::vector<double> want =
            plain.Distribution(OpenAiAdjusted(logits, bias, produced, presence, frequency));
        const std::vector<double> got = s.Distribution(logits);
        ASSERT_EQ(got.size(), want.size());
        for (size_t j = 0; j < want.size(); ++j) ASSERT_NEAR(got[j], want[j], 1e-6) << "step " << step << " id " << j;
        produced.push_back(s.Sample(logits));
      }
      // Penalties make the draws spread: without them 30 draws at T = 0.7
      // keep returning to the few largest logits.
      if (frequency >= 2.0) {
        std::vector<int> distinct = produced;
        std::sort(distinct.begin(), distinct.end());
        distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
        EXPECT_GE(distinct.size(), 10u);
      }
    }
  }
}

// min_tokens: the end ids are -inf until that many tokens are recorded,
// then back to their bias and penalties; the other tokens are untouched.
TEST(Sampling, EndIdsAreBannedUntilMinTokensThenAdjustedAsBefore) {
  // Token 1 is the most likely, token 3 next: greedy picks 3 while 1 (an end
  // id) is banned, then 1.
  const std::vector<float> logits = {0.5f, 4.0f, 1.0f, 3.0f, -2.0f};
  SamplingParams p;
  p.min_tokens = 3;
  p.end_ids = {1, 4};
  p.logit_bias = {{4, 10.0f}, {2, 0.25f}};  // 4 is biased above 1, and an end id too
  Sampler s(p);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const std::vector<LogitAdjustment> banned = {{1, -kInf}, {2, 0.25f}, {4, -kInf}};
  EXPECT_TRUE(std::ranges::equal(s.Adjustments(), banned));
  std::vector<int32_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(s.Sample(logits));
  // Three tokens without an end id (3: the best allowed), then 4 (8 > 4).
  EXPECT_EQ(got, (std::vector<int32_t>{3, 3, 3, 4, 4}));
  const std::vector<LogitAdjustment> after = {{2, 0.25f}, {4, 10.0f}};  // 1's entry went
  EXPECT_TRUE(std::ranges::equal(s.Adjustments(), after));

  // With penalties, an end id's count is kept through the ban: the lifted
  // delta is its bias less its penalty, as for a sampler that never banned.
  SamplingParams q;
  q.presence_penalty = 0.5;
  q.frequency_penalty = 0.3;
  q.min_tokens = 2;
  q.end_ids = {0};
  q.logit_bias = {{0, 1.0f}};
  Sampler a(q);
  q.min_tokens = 0;
  Sampler b(q);
  for (int32_t t : {0, 3, 0}) {
    a.Record(t);
    b.Record(t);
  }
  EXPECT_TRUE(std::ranges::equal(a.Adjustments(), b.Adjustments()));
  EXPECT_EQ(a.Adjustments()[0].delta, static_cast<float>(1.0 - (2 * 0.3 + 0.5)));

  // Sampled at a temperature: an end id has probability 0 while banned,
  // whatever its logit; the rest keep their softmax.
  SamplingParams t;
  t.temperature = 0.8;
  t.min_tokens = 1;
  t.end_ids = {1};
  Sampler warm(t);
  const std::vector<double> dist = warm.Distribution(logits);
  EXPECT_EQ(dist[1], 0.0);
  double z = 0.0;
  for (int i : {0, 2, 3, 4}) z += std::exp(double(logits[i]) / 0.8);
  for (int i : {0, 2, 3, 4}) EXPECT_NEAR(dist[i], std::exp(double(logits[i]) / 0.8) / z, 1e-12) << i;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    t.seed = seed;
    ASSERT_NE(Sampler(t).Sample(logits), 1) << "seed " << seed;
  }
}

// min_p as vLLM applies it, written out in float64: softmax(logits / t) over
// every token, those below min_p times the largest probability set aside,
// then top_k of the rest, then top_p on the renormalised rest.
std::vector<double> MinPReference(const std::vector<float>& logits, double t, double min_p, int top_k, double top_p) {
  std::vector<double> prob(logits.size());
  double z = 0.0, best = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) z += std::exp(double(logits[i]) / t);
  for (size_t i = 0; i < logits.size(); ++i) best = std::max(best, prob[i] = std::exp(double(logits[i]) / t) / z);
  std::vector<int> keep;
  for (size_t i = 0; i < logits.size(); ++i)
    if (prob[i] >= min_p * best) keep.push_back(static_cast<int>(i));
  std::stable_sort(keep.begin(), keep.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  if (top_k > 0 && keep.size() > static_cast<size_t>(top_k)) keep.resize(static_cast<size_t>(top_k));
  double kept_mass = 0.0;
  for (int i : keep) kept_mass += prob[i];
  double mass = 0.0;
  for (size_t j = 0; j < keep.size(); ++j) {
    mass += prob[keep[j]] / kept_mass;
    if (mass >= top_p) {
      keep.resize(j + 1);
      break;
    }
  }
  return Reference(logits, t, keep);
}

TEST(Sampling, MinPKeepsTokensWithinAFactorOfTheMostLikely) {
  // Logits 0, ln 2, ln 10 (and -inf): probabilities proportional to 1, 2,
  // 10 at T = 1. min_p 0.15 keeps 2/10 and 10/10; 0.1 keeps all three.
  const std::vector<float> logits = {0.0f, float(std::log(2.0)), float(std::log(10.0)), -INFINITY};
  SamplingParams p = P(1.0, 0, 1.0, 1);
  p.min_p = 0.15;
  std::vector<double> got = Sampler(p).Distribution(logits);
  EXPECT_EQ(got[0], 0.0);
  EXPECT_NEAR(got[1], 2.0 / 12.0, 1e-6);  // the float logits are ln 2 and ln 10 to 1e-7
  EXPECT_NEAR(got[2], 10.0 / 12.0, 1e-6);
  EXPECT_EQ(got[3], 0.0);
  p.min_p = 0.09;
  got = Sampler(p).Distribution(logits);
  EXPECT_NEAR(got[0], 1.0 / 13.0, 1e-6);
  // At T = 0.5 the probabilities are squared (1, 4, 100): 0.15 keeps the top only.
  p.temperature = 0.5;
  p.min_p = 0.15;
  got = Sampler(p).Distribution(logits);
  EXPECT_EQ(got[1], 0.0);
  EXPECT_EQ(got[2], 1.0);
  // min_p 1 keeps the largest and its equals.
  p.min_p = 1.0;
  got = Sampler(p).Distribution(std::vector<float>{2.0f, 1.0f, 2.0f});
  EXPECT_EQ(got, (std::vector<double>{0.5, 0.0, 0.5}));

  // Random rows, against vLLM's order written out in float64.
  std::mt19937_64 rng(77);
  std::normal_distribution<double> normal(0.0, 2.0);
  int cases = 0;
  for (int n : {1, 5, 50, 700}) {
    std::vector<float> row(static_cast<size_t>(n));
    for (float& x : row) x = static_cast<float>(normal(rng));
    for (double t : {0.4, 1.0, 1.7}) {
      for (double min_p : {0.003, 0.05, 0.3, 0.9}) {
        for (int k : {0, 1, 3, 40}) {
          for (double top_p : {1.0, 0.8, 0.2}) {
            SamplingParams q = P(t, k, top_p, 5);
            q.min_p = min_p;
            const std::vector<double> want = MinPReference(row, t, min_p, k, top_p);
            const std::vector<double> have = Sampler(q).Distribution(row);
            ASSERT_EQ(have.size(), want.size());
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_NEAR(have[i], want[i], 1e-9)
                  << "n " << n << " t " << t << " min_p " << min_p << " k " << k << " top_p " << top_p << " id " << i;
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 4 * 3 * 4 * 4 * 3);
  // Greedy ignores it (the most likely token always stays).
  SamplingParams g;
  g.min_p = 0.9;
  EXPECT_EQ(Sampler(g).Sample(std::vector<float>{0.1f, 3.0f, 2.9f}), 1);
}

// Hugging Face's RepetitionPenaltyLogitsProcessor, written out: every token
// of the prompt or of the reply so far has its logit multiplied by the
// penalty when negative and divided by it otherwise; then (OpenAI's) the
// bias and the penalties on the reply's counts.
std::vector<float> RepetitionReference(const std::vector<float>& logits, double penalty,
                                       const std::vector<int32_t>& prompt, const std::vector<int>& produced,
                                       const std::map<int, double>& bias, double presence, double frequency) {
  std::vector<float> out(logits.size());
  for (size_t j = 0; j < logits.size(); ++j) {
    const int id = static_cast<int>(j);
    const auto c = std::count(produced.begin(), produced.end(), id);
    const bool seen = c > 0 || std::find(prompt.begin(), prompt.end(), id) != prompt.end();
    float x = logits[j];
    if (seen) x = x < 0.0f ? x * static_cast<float>(penalty) : x / static_cast<float>(penalty);
    const auto b = bias.find(id);
    double delta = b == bias.end() ? 0.0 : b->second;
    if (c > 0) delta -= static_cast<double>(c) * frequency + presence;
    out[j] = x + static_cast<float>(delta);
  }
  return out;
}

TEST(Sampling, RepetitionPenaltyScalesThePromptsAndTheRepliesTokens) {
  // Greedy by hand: token 0 (logit 3) is in the prompt, 3 / 2 = 1.5 < 2.5:
  // token 1; then 1 is produced (1.25 < 1.5): token 0; then both are seen,
  // -1 stays below them: 0 again (1.5 > 1.25).
  SamplingParams h;
  h.repetition_penalty = 2.0;
  h.prompt_ids = {0, 0, 7};  // 7: outside this row, ignored
  Sampler hand(h);
  const std::vector<float> three = {3.0f, 2.5f, -1.0f};
  std::vector<int32_t> got;
  for (int i = 0; i < 3; ++i) got.push_back(hand.Sample(three));
  EXPECT_EQ(got, (std::vector<int32_t>{1, 0, 0}));
  // A negative logit is multiplied: -1 seen twice is still -2, not -4.
  SamplingParams neg;
  neg.repetition_penalty = 2.0;
  neg.prompt_ids = {2, 2};
  EXPECT_EQ(Sampler(neg).Adjusted(three)[2], -2.0f);

  std::vector<float> logits(60);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(2.5 * std::sin(2.3 * double(i)));
  const std::map<int, double> bias = {{3, 1.5}, {11, -2.0}, {20, 3.0}};
  std::mt19937_64 rng(3);
  for (double penalty : {1.3, 0.8, 2.0}) {
    for (double frequency : {0.0, 0.5}) {
      SCOPED_TRACE("penalty " + std::to_string(penalty) + " frequency " + std::to_string(frequency));
      SamplingParams p = P(0.9, 0, 1.0, 8);
      p.repetition_penalty = penalty;
      p.frequency_penalty = frequency;
      p.presence_penalty = 0.25;
      for (int k = 0; k < 25; ++k) p.prompt_ids.push_back(static_cast<int32_t>(rng() % 60));
      for (const auto& [id, b] : bias) p.logit_bias.push_back({id, static_cast<float>(b)});
      Sampler s(p);
      std::vector<int> produced;
      for (int step = 0; step < 30; ++step) {
        const std::vector<float> want =
            RepetitionReference(logits, penalty, p.prompt_ids, produced, bias, 0.25, frequency);
        const std::vector<float> have = s.Adjusted(logits);
        for (size_t j = 0; j < want.size(); ++j)
          ASSERT_EQ(have[j], want[j]) << "step " << step << " id " << j << " logit " << logits[j];
        produced.push_back(s.Sample(logits));
      }
    }
  }
}

TEST(Sampling, ALongPromptsRepetitionEntriesAreOnePerDistinctId) {
  // 131,072 prompt tokens over 20,000 ids: one entry each, ids ascending,
  // all of them penalised; entries for min_tokens' end ids stay after the
  // ban when the prompt holds them.
  SamplingParams p;
  p.repetition_penalty = 1.1;
  p.min_tokens = 1;
  p.end_ids = {5, 30000};
  std::mt19937_64 rng(1);
  for (int i = 0; i < 131072; ++i) p.prompt_ids.push_back(static_cast<int32_t>(rng() % 20000));
  Sampler s(p);
  std::vector<int32_t> distinct = p.prompt_ids;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  ASSERT_TRUE(std::binary_search(distinct.begin(), distinct.end(), 5));
  ASSERT_TRUE(std::binary_search(distinct.begin(), distinct.end(), 7));
  const std::span<const LogitAdjustment> a = s.Adjustments();
  ASSERT_EQ(a.size(), distinct.size() + 1);  // and 30000, banned
  for (size_t i = 0; i < distinct.size(); ++i) {
    ASSERT_EQ(a[i].id, distinct[i]);
    ASSERT_EQ(a[i].repetition, 1.1f);
    ASSERT_EQ(a[i].delta, distinct[i] == 5 ? -INFINITY : 0.0f);
  }
  EXPECT_EQ(a.back().id, 30000);
  EXPECT_EQ(a.back().repetition, 1.0f);
  s.Record(7);
  ASSERT_EQ(s.Adjustments().size(), distinct.size());  // 30000's entry went, 5's stays penalised
  EXPECT_EQ(s.Adjustments()[std::lower_bound(distinct.begin(), distinct.end(), 5) - distinct.begin()],
            (LogitAdjustment{5, 0.0f, 1.1f}));
}

// vLLM's bad_words as token sequences: greedy by hand, then random logits
// step by step against the definition written out (a word's last token is
// -inf when the reply's last tokens are the rest of it), with penalties, a
// bias and min_tokens' bans in the same entries.
TEST(Sampling, BadWordsBanTheirLastTokenAfterTheRest) {
  // Logits favour 3, then 4: {3} is banned outright, so 4; {4, 4} bans 4
  // after a 4, so then 5; after the 5, 4 again.
  SamplingParams h;
  h.bad_words = {{3}, {4, 4}, {}};
  Sampler hand(h);
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 9.0f, 8.0f, 7.0f};
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(hand.Sample(logits));
  EXPECT_EQ(got, (std::vector<int32_t>{4, 5, 4, 5}));

  std::mt19937_64 rng(21);
  std::normal_distribution<double> normal(0.0, 1.5);
  const int vocab = 12;
  for (int trial = 0; trial < 40; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    SamplingParams p;
    const int words = 1 + static_cast<int>(rng() % 5);
    for (int w = 0; w < words; ++w) {
      std::vector<int32_t> word(1 + rng() % 3);
      for (int32_t& t : word) t = static_cast<int32_t>(rng() % 6);  // small ids: words meet often
      p.bad_words.push_back(word);
    }
    if (trial % 2 == 1) {
      p.frequency_penalty = 0.4;
      p.logit_bias = {{2, 1.5f}};
      p.min_tokens = 5;
      p.end_ids = {1};
    }
    Sampler s(p);
    std::vector<int32_t> reply;
    for (int step = 0; step < 30; ++step) {
      std::vector<float> row(vocab);
      for (float& x : row) x = static_cast<float>(normal(rng));
      // The reference: OpenAI's formula, min_tokens' ban, then the bad words.
      std::map<int, double> bias;
      for (const LogitAdjustment& b : p.logit_bias) bias[b.id] = b.delta;
      std::vector<int> produced(reply.begin(), reply.end());
      std::vector<float> want = OpenAiAdjusted(row, bias, produced, p.presence_penalty, p.frequency_penalty);
      if (static_cast<int>(reply.size()) < p.min_tokens)
        for (int32_t id : p.end_ids) want[id] = -INFINITY;
      for (const std::vector<int32_t>& w : p.bad_words) {
        const size_t rest = w.size() - 1;
        if (reply.size() >= rest && std::equal(w.begin(), w.end() - 1, reply.end() - static_cast<std::ptrdiff_t>(rest)))
          want[w.back()] = -INFINITY;
      }
      const std::vector<float> have = s.Adjusted(row);
      // The bans exactly; the rest to the float rounding of the formula
      // (the sampler adds one rounded delta, the reference rounds once).
      for (int j = 0; j < vocab; ++j) {
        if (std::isinf(want[j])) {
          ASSERT_EQ(have[j], want[j]) << "step " << step << " id " << j;
        } else {
          ASSERT_NEAR(have[j], want[j], 1e-5) << "step " << step << " id " << j;
        }
      }
      const int32_t t = s.Sample(row);
      ASSERT_EQ(t, ArgMax(want)) << "step " << step;
      reply.push_back(t);
    }
  }
}

// vLLM's allowed_token_ids: every other id of the vocabulary is -inf; the
// distribution is the float64 softmax over the allowed ids alone, with a
// bias on one of them applied as before.
TEST(Sampling, AllowedTokenIdsAreTheOnlyChoices) {
  const std::vector<float> logits = {3.0f, 0.5f, 1.0f, 2.5f, -1.0f, 0.25f, 4.0f, 0.0f};
  SamplingParams p;
  p.allowed_ids = {5, 2, 5};
  p.vocab_size = 8;
  Sampler greedy(p);
  EXPECT_EQ(greedy.Sample(logits), 2);  // 1.0 > 0.25; ids 0 and 6 are larger but not allowed
  EXPECT_EQ(greedy.Adjustments().size(), 6u);
  p.logit_bias = {{5, 1.0f}};
  EXPECT_EQ(Sampler(p).Sample(logits), 5);  // 1.25 > 1.0
  SamplingParams t = p;
  t.temperature = 0.7;
  const std::vector<double> dist = Sampler(t).Distribution(logits);
  const double z = std::exp(1.0 / 0.7) + std::exp(1.25 / 0.7);
  for (int i = 0; i < 8; ++i) {
    const double want = i == 2 ? std::exp(1.0 / 0.7) / z : i == 5 ? std::exp(1.25 / 0.7) / z : 0.0;
    EXPECT_NEAR(dist[i], want, 1e-12) << i;
  }
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    t.seed = seed;
    const int32_t token = Sampler(t).Sample(logits);
    ASSERT_TRUE(token == 2 || token == 5) << token;
  }
}

// A backend that samples on its device: Adjusted logits, its own choice,
// then Record. The same tokens as Sample, and the same adjustments after.
TEST(Sampling, RecordAfterADeviceChoiceKeepsTheSamplersInStep) {
  std::vector<float> logits(64);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::cos(1.3 * double(i)));
  SamplingParams p;
  p.presence_penalty = 0.4;
  p.frequency_penalty = 0.3;
  p.logit_bias = {{2, 1.0f}, {50, -0.5f}};
  Sampler host(p), device(p);
  for (int step = 0; step < 40; ++step) {
    const int32_t want = host.Sample(logits);
    const int32_t got = ArgMax(device.Adjusted(logits));
    device.Record(got);
    ASSERT_EQ(got, want) << step;
    ASSERT_TRUE(std::ranges::equal(host.Adjustments(), device.Adjustments())) << step;
  }
  EXPECT_GT(host.Adjustments().size(), 2u);
}

// A guide that allows the ids above the last one accepted (all at first),
// and counts its walks.
class RisingGuide final : public TokenGuide {
 public:
  RisingGuide(int32_t vocab, int* walks) : vocab_(vocab), walks_(walks) {}
  void Allowed(std::vector<uint64_t>* allowed) override {
    ++*walks_;
    allowed->assign((static_cast<size_t>(vocab_) + 63) / 64, 0);
    for (int32_t id = last_ + 1; id < vocab_; ++id) (*allowed)[id / 64] |= uint64_t{1} << (id % 64);
  }
  bool complete() const override { return last_ >= 0; }
  void Accept(int32_t token) override { last_ = token; }

 private:
  int32_t vocab_;
  int* walks_;
  int32_t last_ = -1;
};
class RisingGuides final : public TokenGuideFactory {
 public:
  RisingGuides(int32_t vocab, int* walks) : vocab_(vocab), walks_(walks) {}
  std::unique_ptr<TokenGuide> Start() const override { return std::make_unique<RisingGuide>(vocab_, walks_); }

 private:
  int32_t vocab_;
  int* walks_;
};

// The guide walks once per token, at the first question after Record (so
// that a backend can run it while the device computes the logits), never in
// Record itself; its bans are Refused(), apart from the sampler's own
// entries, and Adjusted applies both: the entries, then x + -inf.
TEST(Sampling, TheGuideWalksWhenAskedAndItsBansAreApart) {
  constexpr int32_t kVocab = 130;  // three words, the last one partial
  int walks = 0;
  SamplingParams p;
  p.vocab_size = kVocab;
  p.end_ids = {0};
  p.logit_bias = {{5, 2.0f}, {100, -1.0f}};
  p.guide = std::make_shared<RisingGuides>(kVocab, &walks);
  Sampler s(p);
  EXPECT_EQ(walks, 0);
  EXPECT_EQ(s.Adjustments().size(), 2u) << "the bias entries only";
  EXPECT_EQ(walks, 1);
  ASSERT_EQ(s.Refused().size(), 3u);
  EXPECT_EQ(s.Refused()[0], uint64_t{1}) << "the end id, until a whole text";
  EXPECT_EQ(walks, 1);
  s.Record(70);
  s.Record(99);  // twice before asking: one walk, for the state after 99
  EXPECT_EQ(walks, 1);
  std::vector<float> logits(kVocab);
  for (int32_t id = 0; id < kVocab; ++id) logits[id] = 0.01f * static_cast<float>(id);
  logits[120] = std::numeric_limits<float>::infinity();
  logits[50] = std::numeric_limits<float>::infinity();  // refused: +inf + -inf is NaN, never drawn
  const std::vector<float> adjusted = s.Adjusted(logits);
  EXPECT_EQ(walks, 2);
  const std::span<const uint64_t> refused = s.Refused();
  for (int32_t id = 0; id < kVocab; ++id) {
    const bool banned = ((refused[id / 64] >> (id % 64)) & 1) != 0;
    EXPECT_EQ(banned, id != 0 && id <= 99) << id;  // the text is whole now: the end id may come
    const float own = id == 100 ? logits[id] - 1.0f : logits[id];
    if (id == 50) {
      EXPECT_TRUE(std::isnan(adjusted[id]));
    } else if (banned) {
      EXPECT_EQ(adjusted[id], -std::numeric_limits<float>::infinity()) << id;
    } else {
      EXPECT_EQ(adjusted[id], own) << id;
    }
  }
  EXPECT_EQ(refused[2] >> 2, uint64_t{0}) << "no bit past the vocabulary";
  EXPECT_EQ(s.Sample(logits), 120);
  EXPECT_EQ(walks, 2) << "Sample asked once, before the token; Record did not walk";
  EXPECT_EQ(ArgMax(s.Adjusted(logits)), 129) << "after 120: ids 121 to 129 and the end id";
  EXPECT_EQ(walks, 3);
}

using logprobs_test::ReferenceLogprob;

TEST(Logprobs, MatchALongDoubleLogSoftmaxAndListTheMostLikelyFirst) {
  std::mt19937 rng(7);
  for (int vocab : {1, 2, 5, 97, 1000}) {
    for (float scale : {0.1f, 3.0f, 20.0f}) {
      std::normal_distribution<float> normal(0.0f, scale);
      std::vector<float> logits(vocab);
      for (float& v : logits) v = normal(rng);
      if (vocab > 4) logits[3] = logits[1];  // a tie: the lower id first
      for (int top_n : {0, 1, 5, 20}) {
        const int token = vocab / 2;
        const TokenLogprobs got = LogprobsOf(logits, token, top_n);
        SCOPED_TRACE("vocab " + std::to_string(vocab) + " scale " + std::to_string(scale) + " top " +
                     std::to_string(top_n));
        EXPECT_EQ(got.chosen.id, token);
        EXPECT_NEAR(got.chosen.logprob, ReferenceLogprob(logits, token), 1e-5);
        // The reference order: every id sorted by logit, descending, ties by id.
        std::vector<int> order(vocab);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
        ASSERT_EQ(got.top.size(), static_cast<size_t>(std::min(top_n, vocab)));
        for (size_t k = 0; k < got.top.size(); ++k) {
          EXPECT_EQ(got.top[k].id, order[k]) << k;
          EXPECT_NEAR(got.top[k].logprob, ReferenceLogprob(logits, order[k]), 1e-5) << k;
        }
      }
    }
  }
}

TEST(Logprobs, NanAndInfiniteLogits) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // NaN has probability 0 and is never listed; the rest share the mass.
  TokenLogprobs lp = LogprobsOf(std::vector<float>{NAN, 0.0f, NAN, 0.0f}, 0, 4);
  EXPECT_EQ(lp.chosen.logprob, -kInf);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0], (TokenLogprob{1, static_cast<float>(std::log(0.5))}));
  EXPECT_EQ(lp.top[1], (TokenLogprob{3, static_cast<float>(std::log(0.5))}));
  // -inf: probability 0, still listed in its place.
  lp = LogprobsOf(std::vector<float>{-kInf, 2.0f}, 0, 2);
  EXPECT_EQ(lp.chosen.logprob, -kInf);
  EXPECT_EQ(lp.top[0], (TokenLogprob{1, 0.0f}));
  EXPECT_EQ(lp.top[1], (TokenLogprob{0, -kInf}));
  // +inf logits take all the mass.
  lp = LogprobsOf(std::vector<float>{kInf, 5.0f, kInf}, 2, 1);
  EXPECT_EQ(lp.chosen.logprob, static_cast<float>(-std::log(2.0)));
  EXPECT_EQ(lp.top[0], (TokenLogprob{0, static_cast<float>(-std::log(2.0))}));
  // Nothing above -inf: every token has probability 0.
  lp = LogprobsOf(std::vector<float>{NAN, -kInf}, 1, 2);
  EXPECT_EQ(lp.chosen.logprob, -kInf);
  ASSERT_EQ(lp.top.size(), 1u);
  EXPECT_EQ(lp.top[0], (TokenLogprob{1, -kInf}));
  // A token outside the vocabulary.
  EXPECT_EQ(LogprobsOf(std::vector<float>{1.0f}, 1, 0).chosen.logprob, -kInf);
}

// The logprobs are the model's, from the raw logits: the bias, the penalties
// and the temperature change the draw, not what is reported.
TEST(Logprobs, SampleReportsTheRawLogitsWhateverTheAdjustments) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(1.5 * std::sin(2.1 * double(i)));
  SamplingParams p = P(0.8, 10, 0.9, 5);
  p.presence_penalty = 0.7;
  p.frequency_penalty = 0.2;
  p.logit_bias = {{4, 6.0f}, {9, -3.0f}};
  p.logprobs = 3;
  Sampler s(p);
  SamplingParams quiet = p;
  quiet.logprobs = -1;
  Sampler twin(quiet);  // the same draws without logprobs
  EXPECT_TRUE(s.wants_logprobs());
  EXPECT_FALSE(twin.wants_logprobs());
  for (int step = 0; step < 20; ++step) {
    const int32_t token = s.Sample(logits);
    ASSERT_EQ(token, twin.Sample(logits)) << step;  // asking for logprobs changes no draw
    const TokenLogprobs& lp = s.last_logprobs();
    EXPECT_EQ(lp.chosen.id, token);
    EXPECT_NEAR(lp.chosen.logprob, ReferenceLogprob(logits, token), 1e-5) << step;
    ASSERT_EQ(lp.top.size(), 3u);
    EXPECT_EQ(lp.top[0].id, ArgMax(logits));  // the raw argmax, not the biased one (4)
  }
  EXPECT_TRUE(twin.last_logprobs().top.empty());
}

}  // namespace
}  // namespace seer
