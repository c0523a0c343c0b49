// The CPU engine against Hugging Face itself: the committed fixtures
// (docs/FIXTURES.md) hold transformers' float32 logits, KV cache and greedy
// tokens for tiny random Llama (llama3 rope, GQA 4, untied) and Qwen2
// (q/k/v biases, tied) checkpoints saved by save_pretrained in bf16.
// Missing fixtures fail these tests.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "kernels/ops/ops_cpu.h"
#include "tests/fixture_reader.h"
#include "tests/logprobs_util.h"

namespace seer {
namespace {

constexpr double kTolerance = 1e-4;

class HfEquivalence : public ::testing::TestWithParam<std::string> {};

TEST_P(HfEquivalence, LogitsAndKvCacheMatchTransformers) {
  const std::string name = GetParam();
  auto expected = fixtures::Open(name + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  const SafetensorsFile& want = **expected;

  EngineOptions options;
  options.model_dir = fixtures::Path(name);
  options.device = "cpu";
  auto engine_or = CreateEngine(options);
  ASSERT_TRUE(engine_or.ok()) << engine_or.status().ToString();
  Engine& engine = **engine_or;
  const ModelConfig& c = engine.config();

  auto ids = fixtures::I32(want, "input_ids");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  const int L = static_cast<int>(ids->size());
  auto cache = engine.NewCache(L);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  PrefillOptions opts;
  opts.all_logits = true;
  auto result = engine.Prefill(*ids, opts, cache->get(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  std::printf("[ timing   ] %s: CPU prefill of %d tokens: %.2f ms (%s)\n", name.c_str(), L, result->seconds * 1e3,
              engine.device_name().c_str());

  auto logits = fixtures::F32(want, "logits", {L, c.vocab_size});
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  const double logits_err = fixtures::RelError(result->logits, *logits);
  double worst_row = 0.0;
  for (int t = 0; t < L; ++t) {
    worst_row = std::max(worst_row, fixtures::RelError(result->logits.data() + size_t(t) * c.vocab_size,
                                                       logits->data() + size_t(t) * c.vocab_size, c.vocab_size));
  }
  std::printf("[ compare  ] %s: logits rel err %.3g (worst row %.3g)\n", name.c_str(), logits_err, worst_row);
  EXPECT_LE(logits_err, kTolerance);
  EXPECT_LE(worst_row, kTolerance);

  const size_t n = size_t(c.num_kv_heads) * L * c.head_dim;
  std::vector<float> k(n), v(n);
  for (int layer = 0; layer < c.num_layers; ++layer) {
    ASSERT_TRUE((*cache)->ReadLayer(layer, 0, L, k.data(), v.data()).ok());
    const std::vector<int64_t> shape = {c.num_kv_heads, L, c.head_dim};
    auto want_k = fixtures::F32(want, "layers." + std::to_string(layer) + ".k", shape);
    auto want_v = fixtures::F32(want, "layers." + std::to_string(layer) + ".v", shape);
    ASSERT_TRUE(want_k.ok()) << want_k.status().ToString();
    ASSERT_TRUE(want_v.ok()) << want_v.status().ToString();
    const double k_err = fixtures::RelError(k, *want_k), v_err = fixtures::RelError(v, *want_v);
    std::printf("[ compare  ] %s: layer %d K rel err %.3g, V rel err %.3g\n", name.c_str(), layer, k_err, v_err);
    EXPECT_LE(k_err, kTolerance) << "layer " << layer;
    EXPECT_LE(v_err, kTolerance) << "layer " << layer;
  }
}

// Prompt logprobs against Hugging Face: entry i is ids[i + 1]'s
// log-probability and 3 alternatives, log_softmax (long double) of
// transformers' logits at position i. The result keeps the last row's
// logits only, as without them.
TEST_P(HfEquivalence, PromptLogprobsAreLogSoftmaxOfTransformersLogits) {
  const std::string name = GetParam();
  auto expected = fixtures::Open(name + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  EngineOptions options;
  options.model_dir = fixtures::Path(name);
  options.device = "cpu";
  auto engine = CreateEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  auto ids = fixtures::I32(**expected, "input_ids");
  ASSERT_TRUE(ids.ok());
  const int L = static_cast<int>(ids->size());
  const int vocab = (*engine)->config().vocab_size;
  auto logits = fixtures::F32(**expected, "logits", {L, vocab});
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  auto cache = (*engine)->NewCache(L);
  ASSERT_TRUE(cache.ok());
  PrefillOptions opts;
  opts.prompt_logprobs = 3;
  auto result = (*engine)->Prefill(*ids, opts, cache->get(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->logits_rows, 1);
  EXPECT_LE(fixtures::RelError(result->logits.data(), logits->data() + size_t(L - 1) * vocab, vocab), kTolerance);
  logprobs_test::ExpectPromptLogprobs(*logits, *ids, result->prompt_logprobs, 3, 1e-4);

  // Out of range: refused, naming the field.
  auto again = (*engine)->NewCache(L);
  ASSERT_TRUE(again.ok());
  opts.prompt_logprobs = kMaxTopLogprobs + 1;
  auto refused = (*engine)->Prefill(*ids, opts, again->get(), nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("prompt_logprobs"), std::string::npos);
}

TEST_P(HfEquivalence, GreedyTokensMatchTransformersGenerate) {
  const std::string name = GetParam();
  auto expected = fixtures::Open(name + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  auto ids = fixtures::I32(**expected, "input_ids");
  auto greedy = fixtures::I32(**expected, "greedy_tokens");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  ASSERT_TRUE(greedy.ok()) << greedy.status().ToString();
  ASSERT_FALSE(greedy->empty());

  EngineOptions options;
  options.model_dir = fixtures::Path(name);
  options.device = "cpu";
  auto engine_or = CreateEngine(options);
  ASSERT_TRUE(engine_or.ok()) << engine_or.status().ToString();
  Engine& engine = **engine_or;
  const int vocab = engine.config().vocab_size;

  auto cache = engine.NewCache(static_cast<int>(ids->size() + greedy->size()));
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  auto result = engine.Prefill(*ids, PrefillOptions{}, cache->get(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  std::vector<int32_t> tokens = {cpu::ArgMax(result->logits.data(), vocab)};
  std::vector<float> logits;
  while (tokens.size() < greedy->size()) {
    ASSERT_TRUE(engine.DecodeStep(tokens.back(), cache->get(), &logits).ok());
    tokens.push_back(cpu::ArgMax(logits.data(), vocab));
  }
  EXPECT_EQ(tokens, *greedy);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfEquivalence, ::testing::Values("llama", "qwen2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace seer
