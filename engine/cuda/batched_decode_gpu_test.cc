// Batched decode over the paged KV cache on the CUDA engine: each sequence
// decodes exactly the same tokens alone and in a batch whose members join and
// leave mid-way (greedy and sampled with a seed), and the same whether the
// steps replay CUDA graphs or launch their kernels, and with the logits in
// chunks; its first decoded logits agree with the contiguous single-sequence
// path to bf16 rounding; every page is back in the pool afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/device_buffer.h"
#include "engine/engine.h"
#include "kernels/common/gpu_test_util.h"
#include "tests/batched_decode_util.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

using batched_test::MixedRequests;
using batched_test::Request;
using batched_test::RunBatched;

std::unique_ptr<Engine> LoadCuda(const std::string& name, int max_batch, bool cuda_graphs = true,
                                 int64_t logits_bytes = 0) {
  EngineOptions o;
  o.model_dir = fixtures::Path(name);
  o.device = "cuda";
  o.chunk_limits.logits_bytes = logits_bytes;
  StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  if (!e.ok()) return nullptr;
  PagedDecodeOptions p;
  p.page_tokens = 16;
  p.pool_bytes = int64_t{256} << 20;
  p.max_batch = max_batch;
  p.cuda_graphs = cuda_graphs;
  const Status s = (*e)->EnablePagedDecode(p);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return std::move(e).value();
}

// Each request decodes in the batch exactly the tokens it decodes alone.
void ExpectEachDecodesAsAlone(Engine& e, const std::vector<Request>& requests) {
  const std::vector<std::vector<int32_t>> together = RunBatched(e, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    Request alone = requests[i];
    alone.join_step = 0;
    const std::vector<std::vector<int32_t>> solo = RunBatched(e, {alone});
    EXPECT_EQ(together[i], solo[0]) << "request " << i;
    EXPECT_EQ(static_cast<int>(solo[0].size()), requests[i].new_tokens);
  }
}

class CudaBatchedDecode : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << why;
  }
};

TEST_P(CudaBatchedDecode, EachSequenceDecodesTheSameTokensAloneAndInABatch) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 8);
  ASSERT_NE(e, nullptr);
  ExpectEachDecodesAsAlone(*e, MixedRequests());
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
}

// Logit adjustments are each row's own: a +100 bias forces every token of
// its request, in whichever row the request decodes.
TEST_P(CudaBatchedDecode, EachRowTakesItsOwnLogitBias) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 8);
  ASSERT_NE(e, nullptr);
  const std::vector<Request> requests = batched_test::ForcedRequests();
  batched_test::ExpectForcedTokens(RunBatched(*e, requests), requests);
}

// Guided decoding: each row's guide bans its ids through its own bit row
// (cuda::RefuseLogits), in whichever row it decodes, with the logits in one
// chunk and in two (batched_test::ExpectGuidedBatches).
TEST_P(CudaBatchedDecode, EachRowKeepsToItsOwnGuide) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 8);
  ASSERT_NE(e, nullptr);
  batched_test::ExpectGuidedBatches(*e, 3e-2);
  const int64_t four_rows = int64_t{4} * 4 * e->config().vocab_size;
  e.reset();
  std::unique_ptr<Engine> chunked = LoadCuda(GetParam(), 7, true, four_rows);
  ASSERT_NE(chunked, nullptr);
  batched_test::ExpectGuidedBatches(*chunked, 3e-2);
}

// A guide's bit row covers the sampler's vocab_size; one that is not the
// model's is refused, naming it, rather than read past its row.
TEST_P(CudaBatchedDecode, AGuideOverAnotherVocabularyIsRefused) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 8);
  ASSERT_NE(e, nullptr);
  std::vector<std::shared_ptr<const Grammar>> grammars;
  Request r = batched_test::GuidedRequests(e->config().vocab_size, &grammars)[0];
  r.sampling.vocab_size += 64;
  batched_test::Running run = batched_test::Start(*e, r);
  const std::vector<DecodeSeq> seqs = {{run.cache.get(), run.tokens.back(), run.sampler.get()}};
  std::vector<int32_t> next(1);
  const Status s = e->DecodeBatch(seqs, next);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("vocab_size (" + std::to_string(r.sampling.vocab_size) + ")"), std::string::npos)
      << s.ToString();
}

// OpenAI's logprobs, from the raw logits each row copies back before its
// adjustments: for the rows that ask, log_softmax of the model's own logits
// (the same tokens through the contiguous DecodeStep path, in long double;
// the two paths' bf16 GEMMs differ by rounding), whatever the row's sampling
// and adjustments; asking changes no token. Then the same through chunks of
// the logits buffer (4 rows of 7, the second chunk starting at row 3), and
// through DecodeAndSample, which samples alone on the device.
TEST_P(CudaBatchedDecode, LogprobsAreTheModelsWhateverTheSamplingAndChunks) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 8);
  ASSERT_NE(e, nullptr);
  batched_test::ExpectBatchedLogprobs(*e, 3e-2);
  const int64_t four_rows = int64_t{4} * 4 * e->config().vocab_size;
  e.reset();
  std::unique_ptr<Engine> chunked = LoadCuda(GetParam(), 7, true, four_rows);
  ASSERT_NE(chunked, nullptr);
  batched_test::ExpectBatchedLogprobs(*chunked, 3e-2);

  // Alone: DecodeAndSample on a contiguous cache, sampled with adjustments.
  for (const Request& r : batched_test::LogprobRequests(5)) {
    if (r.sampling.logprobs < 0) continue;
    auto cache = chunked->NewCache(static_cast<int>(r.prompt.size()) + r.new_tokens);
    ASSERT_TRUE(cache.ok());
    auto prefill = chunked->Prefill(r.prompt, PrefillOptions{}, cache->get(), nullptr);
    ASSERT_TRUE(prefill.ok());
    Sampler sampler(r.sampling);
    std::vector<int32_t> tokens = {sampler.Sample(prefill->logits)};
    std::vector<TokenLogprobs> logprobs = {sampler.last_logprobs()};
    while (static_cast<int>(tokens.size()) < r.new_tokens) {
      auto next = chunked->DecodeAndSample(tokens.back(), cache->get(), &sampler);
      ASSERT_TRUE(next.ok()) << next.status().ToString();
      tokens.push_back(*next);
      logprobs.push_back(sampler.last_logprobs());
    }
    batched_test::ExpectModelLogprobs(*chunked, r, tokens, logprobs, r.sampling.logprobs, 3e-2);
  }
}

// With the logits buffer shrunk to 4 rows of --max-batch 7, a step's rows
// go through the lm_head, the logit adjustments and the samplers in two
// chunks of 4 (at the default 256 MiB that takes over 512 rows of a 128k
// vocabulary), the second starting early, at row 3, so that every lm_head
// GEMM has the same shape: the engine holds 3 rows' logits fewer than with
// one chunk, each request still decodes exactly its tokens alone, and gets
// its forced tokens in whichever row it decodes (the batch reaches 5 and 6
// rows for 10 of its steps).
TEST_P(CudaBatchedDecode, LogitsInChunksDecodeEachSequenceAsAlone) {
  const size_t at_start = GetDeviceMemoryStats().current_bytes;
  std::unique_ptr<Engine> whole = LoadCuda(GetParam(), 7);
  ASSERT_NE(whole, nullptr);
  const double whole_bytes = static_cast<double>(GetDeviceMemoryStats().current_bytes - at_start);
  const int64_t row_bytes = int64_t{4} * whole->config().vocab_size;
  whole.reset();
  const size_t before = GetDeviceMemoryStats().current_bytes;
  std::unique_ptr<Engine> chunked = LoadCuda(GetParam(), 7, /*cuda_graphs=*/true, 4 * row_bytes);
  ASSERT_NE(chunked, nullptr);
  const double chunked_bytes = static_cast<double>(GetDeviceMemoryStats().current_bytes - before);
  EXPECT_NEAR(whole_bytes - chunked_bytes, 3.0 * static_cast<double>(row_bytes), 512.0)
      << "the logits buffer is not 4 rows: the limit is not in effect";

  ExpectEachDecodesAsAlone(*chunked, MixedRequests());
  const std::vector<Request> forced = batched_test::ForcedRequests();
  batched_test::ExpectForcedTokens(RunBatched(*chunked, forced), forced);
  EXPECT_EQ(chunked->page_pool()->free_pages(), chunked->page_pool()->num_pages());
}

// The steps replayed from CUDA graphs (the batch joins and leaves, so graphs
// are recorded, replayed, updated and skipped) decode exactly the tokens of
// the same steps launched kernel by kernel.
TEST_P(CudaBatchedDecode, GraphReplaysDecodeTheSameTokensAsLaunches) {
  const std::vector<Request> requests = MixedRequests();
  std::unique_ptr<Engine> launched = LoadCuda(GetParam(), 8, /*cuda_graphs=*/false);
  ASSERT_NE(launched, nullptr);
  const std::vector<std::vector<int32_t>> want = RunBatched(*launched, requests);
  launched.reset();
  std::unique_ptr<Engine> graphed = LoadCuda(GetParam(), 8, /*cuda_graphs=*/true);
  ASSERT_NE(graphed, nullptr);
  EXPECT_EQ(RunBatched(*graphed, requests), want);
  // Twice more on the same engine: its recorded graph replays for a new run.
  EXPECT_EQ(RunBatched(*graphed, requests), want);
  EXPECT_EQ(graphed->page_pool()->free_pages(), graphed->page_pool()->num_pages());
}

TEST_P(CudaBatchedDecode, FirstStepAgreesWithTheContiguousPath) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 4);
  ASSERT_NE(e, nullptr);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 37; ++t) prompt.push_back((5 * t + 3) % 90 + 1);
  auto cache = e->NewCache(40);
  ASSERT_TRUE(cache.ok());
  auto prefill = e->Prefill(prompt, PrefillOptions{}, cache->get(), nullptr);
  ASSERT_TRUE(prefill.ok());
  // The same KV into a paged cache; one step of each path from the same token.
  auto paged = e->NewPagedCache(40);
  ASSERT_TRUE(paged.ok());
  const KvLayout& l = (*cache)->layout();
  std::vector<uint8_t> k(l.LayerBytes(37)), v(l.LayerBytes(37));
  for (int layer = 0; layer < l.num_layers; ++layer) {
    ASSERT_TRUE((*cache)->ReadLayer(layer, 0, 37, k.data(), v.data()).ok());
    ASSERT_TRUE((*paged)->WriteLayer(layer, 0, 37, l.dtype, k.data(), v.data()).ok());
  }
  (*paged)->set_length(37);
  std::vector<float> logits;
  ASSERT_TRUE(e->DecodeStep(11, cache->get(), &logits).ok());
  Sampler greedy(SamplingParams{});
  std::vector<DecodeSeq> one = {{paged->get(), 11, &greedy}};
  std::vector<int32_t> next(1);
  ASSERT_TRUE(e->DecodeBatch(one, next).ok());
  // The GEMMs run at other shapes (the batch pads to --max-batch rows), so
  // the paths agree to bf16 rounding, not bit for bit: the paged step's token
  // is the contiguous step's best, or within rounding of it.
  const int32_t best = ArgMax(logits);
  EXPECT_LE(logits[best] - logits[next[0]], 1e-2 * (std::abs(logits[best]) + 1.0))
      << "paged token " << next[0] << ", contiguous best " << best;
  // The copied positions are identical; the new one agrees to rounding.
  std::vector<uint16_t> kc(l.LayerBytes(38) / 2), vc(kc.size()), kp(kc.size()), vp(kc.size());
  for (int layer = 0; layer < l.num_layers; ++layer) {
    ASSERT_TRUE((*cache)->ReadLayer(layer, 0, 38, kc.data(), vc.data()).ok());
    ASSERT_TRUE((*paged)->ReadLayer(layer, 0, 38, kp.data(), vp.data()).ok());
    double num = 0.0, den = 0.0;
    for (int h = 0; h < l.num_kv_heads; ++h) {
      for (int t = 0; t < 38; ++t) {
        for (int d = 0; d < l.head_dim; ++d) {
          const size_t i = (static_cast<size_t>(h) * 38 + t) * l.head_dim + d;
          if (t < 37) {
            ASSERT_EQ(kc[i], kp[i]) << "layer " << layer << " head " << h << " token " << t;
            ASSERT_EQ(vc[i], vp[i]) << "layer " << layer << " head " << h << " token " << t;
          } else {
            const double a = Bf16ToFloat(kc[i]), b = Bf16ToFloat(kp[i]);
            num += (a - b) * (a - b);
            den += a * a;
          }
        }
      }
    }
    EXPECT_LT(std::sqrt(num / std::max(den, 1e-30)), 2e-2) << "layer " << layer;
  }
}

// PageIn on the device: the prompt's layers scattered from a contiguous
// cache whose capacity exceeds the prompt (so its heads are further apart
// than the tokens copied) land bit for bit, and only the pages' positions.
TEST_P(CudaBatchedDecode, PageInCopiesTheContiguousCacheBitForBit) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 4);
  ASSERT_NE(e, nullptr);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 37; ++t) prompt.push_back((7 * t + 2) % 90 + 1);
  auto landed = e->NewCache(50);
  ASSERT_TRUE(landed.ok());
  ASSERT_TRUE(e->Prefill(prompt, PrefillOptions{}, landed->get(), nullptr).ok());
  auto paged = e->NewPagedCache(45);
  ASSERT_TRUE(paged.ok());
  const Status s = e->PageIn(**landed, paged->get());
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ((*paged)->length(), 37);
  const KvLayout& l = (*landed)->layout();
  std::vector<uint16_t> k0(l.LayerBytes(37) / 2), v0(k0.size()), k1(k0.size()), v1(k0.size());
  for (int layer = 0; layer < l.num_layers; ++layer) {
    ASSERT_TRUE((*landed)->ReadLayer(layer, 0, 37, k0.data(), v0.data()).ok());
    ASSERT_TRUE((*paged)->ReadLayer(layer, 0, 37, k1.data(), v1.data()).ok());
    ASSERT_EQ(k0, k1) << "layer " << layer;
    ASSERT_EQ(v0, v1) << "layer " << layer;
  }
}

// The caches of a request's choices on the device: the prompt paged into
// the first, the others adopt it (its partial last page copied on the
// device), and each reads the prompt bit for bit; decoding them together,
// each with its own seed, gives each choice exactly the tokens of its own
// cache alone; every page is back afterwards.
TEST_P(CudaBatchedDecode, AGroupsChoicesShareThePromptAndDecodeAsEachAlone) {
  std::unique_ptr<Engine> e = LoadCuda(GetParam(), 4);
  ASSERT_NE(e, nullptr);
  constexpr int kNew = 12, kChoices = 3;
  for (const int length : {37, 48}) {
    SCOPED_TRACE("prompt " + std::to_string(length));
    std::vector<int32_t> prompt;
    for (int t = 0; t < length; ++t) prompt.push_back((3 * t + 5) % 90 + 1);
    auto landed = e->NewCache(length);
    ASSERT_TRUE(landed.ok());
    ASSERT_TRUE(e->Prefill(prompt, PrefillOptions{}, landed->get(), nullptr).ok());
    // Each choice alone: its own cache and seed.
    std::vector<std::vector<int32_t>> alone(kChoices);
    for (int i = 0; i < kChoices; ++i) {
      auto own = e->NewPagedCache(length + kNew);
      ASSERT_TRUE(own.ok());
      ASSERT_TRUE(e->PageIn(**landed, own->get()).ok());
      SamplingParams sp;
      sp.temperature = 1.2f;
      sp.seed = 70 + static_cast<uint64_t>(i);
      Sampler sampler(sp);
      int32_t token = 11;
      for (int step = 0; step < kNew; ++step) {
        std::vector<DecodeSeq> one = {{own->get(), token, &sampler}};
        std::vector<int32_t> next(1);
        ASSERT_TRUE(e->DecodeBatch(one, next).ok());
        token = next[0];
        alone[i].push_back(token);
      }
    }
    auto group = e->NewPagedCacheGroupWhenFree(length, length + kNew, kChoices, nullptr);
    ASSERT_TRUE(group.ok()) << group.status().ToString();
    ASSERT_TRUE(e->PageIn(**landed, (*group)[0].get()).ok());
    const KvLayout& l = (*landed)->layout();
    std::vector<uint16_t> k0(l.LayerBytes(length) / 2), v0(k0.size()), k1(k0.size()), v1(k0.size());
    for (int i = 1; i < kChoices; ++i) {
      const Status adopted = (*group)[i]->AdoptPrefix(*(*group)[0]);
      ASSERT_TRUE(adopted.ok()) << adopted.ToString();
      for (int layer = 0; layer < l.num_layers; ++layer) {
        ASSERT_TRUE((*landed)->ReadLayer(layer, 0, length, k0.data(), v0.data()).ok());
        ASSERT_TRUE((*group)[i]->ReadLayer(layer, 0, length, k1.data(), v1.data()).ok());
        ASSERT_EQ(k0, k1) << "choice " << i << " layer " << layer;
        ASSERT_EQ(v0, v1) << "choice " << i << " layer " << layer;
      }
    }
    std::vector<std::unique_ptr<Sampler>> samplers;
    std::vector<int32_t> tokens(kChoices, 11);
    std::vector<std::vector<int32_t>> together(kChoices);
    for (int i = 0; i < kChoices; ++i) {
      SamplingParams sp;
      sp.temperature = 1.2f;
      sp.seed = 70 + static_cast<uint64_t>(i);
      samplers.push_back(std::make_unique<Sampler>(sp));
    }
    for (int step = 0; step < kNew; ++step) {
      std::vector<DecodeSeq> seqs;
      for (int i = 0; i < kChoices; ++i) seqs.push_back({(*group)[i].get(), tokens[i], samplers[i].get()});
      ASSERT_TRUE(e->DecodeBatch(seqs, tokens).ok());
      for (int i = 0; i < kChoices; ++i) together[i].push_back(tokens[i]);
    }
    EXPECT_EQ(together, alone);
    EXPECT_NE(together[0], together[1]) << "the seeds must give different replies";
    group->clear();
  }
  EXPECT_EQ(e->page_pool()->free_pages(), e->page_pool()->num_pages());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaBatchedDecode, ::testing::Values("llama", "qwen2"),
                         [](const ::testing::TestParamInfo<const char*>& i) { return std::string(i.param); });

}  // namespace
}  // namespace seer
