// Batched decode over the paged KV cache on the CPU engine (the continuous
// batching path of the decode worker): a sequence decodes exactly the same
// tokens alone or in a batch whose members join and leave mid-way, greedy and
// sampled with a seed; it matches the contiguous single-sequence path; and
// every page is back in the pool afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/kv/page_pool.h"
#include "tests/batched_decode_util.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

std::unique_ptr<Engine> LoadCpu(const std::string& name, int page_tokens, int max_batch) {
  EngineOptions o;
  o.model_dir = fixtures::Path(name);
  o.device = "cpu";
  o.threads = 2;
  StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  if (!e.ok()) return nullptr;
  PagedDecodeOptions p;
  p.page_tokens = page_tokens;
  p.pool_bytes = int64_t{64} << 20;
  p.max_batch = max_batch;
  const Status s = (*e)->EnablePagedDecode(p);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return std::move(e).value();
}

using batched_test::MixedRequests;
using batched_test::Request;
using batched_test::RunBatched;

class BatchedDecode : public ::testing::TestWithParam<const char*> {};

TEST_P(BatchedDecode, EachSequenceDecodesTheSameTokensAloneAndInABatch) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 8);
  ASSERT_NE(e, nullptr);
  const std::vector<Request> requests = MixedRequests();
  const std::vector<std::vector<int32_t>> together = RunBatched(*e, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    Request alone = requests[i];
    alone.join_step = 0;
    const std::vector<std::vector<int32_t>> solo = RunBatched(*e, {alone});
    EXPECT_EQ(together[i], solo[0]) << "request " << i;
    EXPECT_EQ(static_cast<int>(solo[0].size()), requests[i].new_tokens);
  }
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
}

// Logit adjustments are each row's own: a +100 bias forces every token of
// its request, in whichever row the request decodes.
TEST_P(BatchedDecode, EachRowTakesItsOwnLogitBias) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 8);
  ASSERT_NE(e, nullptr);
  const std::vector<Request> requests = batched_test::ForcedRequests();
  batched_test::ExpectForcedTokens(RunBatched(*e, requests), requests);
}

// OpenAI's logprobs: each token's log-probability and top alternatives, for
// the rows that ask, are log_softmax of the model's raw logits (the same
// tokens through the contiguous path, in long double), whatever the row's
// sampling and adjustments; asking changes no token.
TEST_P(BatchedDecode, LogprobsAreTheModelsWhateverTheSampling) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 8);
  ASSERT_NE(e, nullptr);
  batched_test::ExpectBatchedLogprobs(*e, 1e-4);
}

// Guided decoding: each row's guide bans its own ids, in whichever row it
// decodes (batched_test::ExpectGuidedBatches).
TEST_P(BatchedDecode, EachRowKeepsToItsOwnGuide) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 8);
  ASSERT_NE(e, nullptr);
  batched_test::ExpectGuidedBatches(*e, 1e-4);
}

TEST_P(BatchedDecode, GreedyTokensMatchTheContiguousDecodePath) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 4);
  ASSERT_NE(e, nullptr);
  Request r;
  for (int t = 0; t < 37; ++t) r.prompt.push_back((5 * t + 3) % 90 + 1);
  r.new_tokens = 20;
  const std::vector<int32_t> paged = RunBatched(*e, {r})[0];

  auto cache = e->NewCache(37 + 20);
  ASSERT_TRUE(cache.ok());
  auto prefill = e->Prefill(r.prompt, PrefillOptions{}, cache->get(), nullptr);
  ASSERT_TRUE(prefill.ok());
  Sampler greedy(SamplingParams{});
  std::vector<int32_t> contiguous = {greedy.Sample(std::span<const float>(prefill->logits))};
  for (int i = 1; i < r.new_tokens; ++i) {
    auto next = e->DecodeAndSample(contiguous.back(), cache->get(), &greedy);
    ASSERT_TRUE(next.ok());
    contiguous.push_back(*next);
  }
  EXPECT_EQ(paged, contiguous);
}

TEST_P(BatchedDecode, RefusesWhatItCannotRun) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 2);
  ASSERT_NE(e, nullptr);
  Sampler s(SamplingParams{});
  auto a = e->NewPagedCache(20), b = e->NewPagedCache(20), c = e->NewPagedCache(20);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  (*a)->set_length(1);
  (*b)->set_length(1);
  (*c)->set_length(1);
  std::vector<int32_t> next(3);
  std::vector<DecodeSeq> three = {{a->get(), 1, &s}, {b->get(), 1, &s}, {c->get(), 1, &s}};
  EXPECT_EQ(e->DecodeBatch(three, next).code(), StatusCode::kInvalidArgument) << "above --max-batch";
  std::vector<DecodeSeq> twice = {{a->get(), 1, &s}, {a->get(), 1, &s}};
  EXPECT_EQ(e->DecodeBatch(twice, std::span<int32_t>(next.data(), 2)).code(), StatusCode::kInvalidArgument);
  auto contiguous = e->NewCache(20);
  ASSERT_TRUE(contiguous.ok());
  std::vector<DecodeSeq> foreign = {{contiguous->get(), 1, &s}};
  EXPECT_EQ(e->DecodeBatch(foreign, std::span<int32_t>(next.data(), 1)).code(), StatusCode::kInvalidArgument);
  std::vector<DecodeSeq> bad_token = {{a->get(), e->config().vocab_size, &s}};
  EXPECT_EQ(e->DecodeBatch(bad_token, std::span<int32_t>(next.data(), 1)).code(), StatusCode::kInvalidArgument);
  (*a)->set_length(20);
  std::vector<DecodeSeq> full = {{a->get(), 1, &s}};
  EXPECT_EQ(e->DecodeBatch(full, std::span<int32_t>(next.data(), 1)).code(), StatusCode::kResourceExhausted);
  // A pool too small for a request says so; pages come back as caches go.
  const int free_before = e->page_pool()->free_pages();
  auto huge = e->NewPagedCache(e->config().max_position_embeddings);
  if (e->page_pool()->layout().PagesFor(e->config().max_position_embeddings) > free_before) {
    EXPECT_EQ(huge.status().code(), StatusCode::kResourceExhausted);
  }
  a->reset();
  b->reset();
  c->reset();
  huge = StatusOr<std::unique_ptr<KvCache>>(Internal("dropped"));
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
  EXPECT_EQ(e->EnablePagedDecode(PagedDecodeOptions{}).code(), StatusCode::kFailedPrecondition);
}

// The decode worker's path: the prompt's KV lands in a contiguous cache of
// exactly the prompt's length, PageIn moves it into the pages, and the
// batched decode goes on from there exactly as the contiguous path would.
TEST_P(BatchedDecode, APagedInPromptDecodesLikeTheContiguousPath) {
  std::unique_ptr<Engine> e = LoadCpu(GetParam(), 16, 4);
  ASSERT_NE(e, nullptr);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 37; ++t) prompt.push_back((7 * t + 2) % 90 + 1);
  constexpr int kNew = 12;
  auto landed = e->NewCache(37);
  ASSERT_TRUE(landed.ok());
  auto prefill = e->Prefill(prompt, PrefillOptions{}, landed->get(), nullptr);
  ASSERT_TRUE(prefill.ok()) << prefill.status().ToString();
  auto paged = e->NewPagedCache(37 + kNew);
  ASSERT_TRUE(paged.ok());
  ASSERT_TRUE(e->PageIn(**landed, paged->get()).ok());
  EXPECT_EQ((*paged)->length(), 37);
  const KvLayout& l = (*landed)->layout();
  std::vector<uint8_t> k0(l.LayerBytes(37)), v0(k0.size()), k1(k0.size()), v1(k0.size());
  for (int layer = 0; layer < l.num_layers; ++layer) {
    ASSERT_TRUE((*landed)->ReadLayer(layer, 0, 37, k0.data(), v0.data()).ok());
    ASSERT_TRUE((*paged)->ReadLayer(layer, 0, 37, k1.data(), v1.data()).ok());
    EXPECT_EQ(k0, k1) << "layer " << layer;
    EXPECT_EQ(v0, v1) << "layer " << layer;
  }
  Sampler greedy(SamplingParams{});
  std::vector<int32_t> batched = {greedy.Sample(std::span<const float>(prefill->logits))};
  for (int i = 1; i < kNew; ++i) {
    std::vector<DecodeSeq> one = {{paged->get(), batched.back(), &greedy}};
    std::vector<int32_t> next(1);
    ASSERT_TRUE(e->DecodeBatch(one, next).ok());
    batched.push_back(next[0]);
  }
  auto contiguous_cache = e->NewCache(37 + kNew);
  ASSERT_TRUE(contiguous_cache.ok());
  ASSERT_TRUE(e->Prefill(prompt, PrefillOptions{}, contiguous_cache->get(), nullptr).ok());
  std::vector<int32_t> contiguous = {batched[0]};
  for (int i = 1; i < kNew; ++i) {
    auto next = e->DecodeAndSample(contiguous.back(), contiguous_cache->get(), &greedy);
    ASSERT_TRUE(next.ok());
    contiguous.push_back(*next);
  }
  EXPECT_EQ(batched, contiguous);

  // Refusals: a cache that is not empty, one too small, a source from
  // elsewhere.
  EXPECT_EQ(e->PageIn(**landed, paged->get()).code(), StatusCode::kInvalidArgument);
  auto small = e->NewPagedCache(20);
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(e->PageIn(**landed, small->get()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(e->PageIn(**paged, small->get()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(e->PageIn(**landed, landed->get()).code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchedDecode, ::testing::Values("llama", "qwen2"),
                         [](const ::testing::TestParamInfo<const char*>& i) { return std::string(i.param); });

}  // namespace
}  // namespace seer
