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
  int remaining = 0;
};

Running Start(Engine& e, const Request& r) {
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
  run.remaining = r.new_tokens - 1;
  return run;
}

// Steps the batch until every request has its tokens; requests join at their
// join_step and leave when done.
std::vector<std::vector<int32_t>> RunBatched(Engine& e, const std::vector<Request>& requests) {
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
      if (--r.remaining == 0) {
        done[who[j]] = true;
        r.cache.reset();  // leaves: its pages go back at once
      }
    }
  }
  std::vector<std::vector<int32_t>> out;
  for (Running& r : runs) out.push_back(r.tokens);
  return out;
}

std::vector<Request> MixedRequests() {
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
    rs.push_back(r);
  }
  return rs;
}

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

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchedDecode, ::testing::Values("llama", "qwen2"),
                         [](const ::testing::TestParamInfo<const char*>& i) { return std::string(i.param); });

}  // namespace
}  // namespace seer
