// What the logprobs tests share: a token's log-probability written from the
// definition in long double, and one reported TokenLogprobs checked against
// the logits it came from.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/sampling/sampler.h"

namespace seer::logprobs_test {

// The log-probability of id i after `logits`: log(e^x_i / sum_j e^x_j), in
// long double.
inline double ReferenceLogprob(std::span<const float> logits, int32_t i) {
  long double total = 0.0L;
  for (float v : logits) total += std::exp(static_cast<long double>(v));
  return static_cast<double>(std::log(std::exp(static_cast<long double>(logits[i])) / total));
}

// `got` (for `token`, with top_n alternatives) against ReferenceLogprob of
// `logits`. Alternatives are checked by value, and by id where their
// neighbours are more than `tol` apart (rounding may swap near-ties on a GPU).
inline void ExpectLogprobsOf(std::span<const float> logits, int32_t token, const TokenLogprobs& got, int top_n,
                             double tol) {
  std::vector<int32_t> order(logits.size());
  for (size_t j = 0; j < order.size(); ++j) order[j] = static_cast<int32_t>(j);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  EXPECT_EQ(got.chosen.id, token);
  EXPECT_NEAR(got.chosen.logprob, ReferenceLogprob(logits, token), tol);
  ASSERT_EQ(got.top.size(), static_cast<size_t>(top_n));
  for (int k = 0; k < top_n; ++k) {
    EXPECT_NEAR(got.top[k].logprob, ReferenceLogprob(logits, order[k]), tol) << "alternative " << k;
    const bool clear = (k == 0 || logits[order[k - 1]] - logits[order[k]] > tol) &&
                       (k + 1 == static_cast<int>(order.size()) || logits[order[k]] - logits[order[k + 1]] > tol);
    if (clear) {
      EXPECT_EQ(got.top[k].id, order[k]) << "alternative " << k;
    }
  }
}

// A prefill's prompt logprobs (`got`, L - 1 entries) against `logits`, the
// rows [L, vocab] they should come from: entry i is ids[i + 1]'s, after row i.
inline void ExpectPromptLogprobs(std::span<const float> logits, std::span<const int32_t> ids,
                                 const std::vector<TokenLogprobs>& got, int top_n, double tol) {
  ASSERT_EQ(got.size(), ids.size() - 1);
  const size_t vocab = logits.size() / ids.size();
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    SCOPED_TRACE("prompt token " + std::to_string(i + 1));
    ExpectLogprobsOf(logits.subspan(i * vocab, vocab), ids[i + 1], got[i], top_n, tol);
  }
}

}  // namespace seer::logprobs_test
