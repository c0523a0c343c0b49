// Token sampling on the device (kernels/sampling/sampling.h) against the host
// Sampler (kernels/sampling/sampler.h):
//   - the kernel, on random logits with ties, NaN and infinities, for many
//     (temperature, top_k, top_p) settings and uniforms u: the token equals
//     the one a walk in id order over Sampler::Distribution(logits) gives for
//     the same u. A mismatch is allowed only when u lies within 1e-9 of a
//     cumulative-mass boundary (double rounding of the sums); they are
//     counted and printed. Greedy equals ArgMax exactly.
//   - AdjustLogits (OpenAI's logit bias and penalties) on rows of random
//     logits: bit for bit Sampler::Adjusted's, row by row.
//   - the CUDA engine's DecodeAndSample on the llama fixture: at every step
//     the token equals the host Sampler's draw from DecodeStep's logits of
//     the same position, with an identically seeded Sampler, with and
//     without logit adjustments.
// Without a GPU every test skips.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "engine/cuda/cuda_engine.h"
#include "engine/engine.h"
#include "engine/kv/kv_cache.h"
#include "formats/safetensors.h"
#include "kernels/sampling/sampler.h"
#include "kernels/sampling/sampling.h"
#include "kernels/common/gpu_test_util.h"

namespace seer {
namespace {

using gpu_test::DevBuf;

class SamplingKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!gpu_test::HaveGpu(&why)) GTEST_SKIP() << "GPU sampling tests skipped: " << why;
  }
};

// Random logits: a spread of values, some rounded to a coarse grid so that
// ties are common, a few NaN, and optionally -inf / +inf entries.
std::vector<float> RandomLogits(int vocab, uint64_t seed, bool with_neg_inf, bool with_pos_inf) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::vector<float> l(vocab);
  for (int i = 0; i < vocab; ++i) {
    float v = normal(rng);
    const double c = coin(rng);
    if (c < 0.3)
      v = std::round(v * 2.0f) / 2.0f;  // ties
    else if (c < 0.33)
      v = std::numeric_limits<float>::quiet_NaN();
    else if (c < 0.34)
      v = (c < 0.335) ? 0.0f : -0.0f;
    l[i] = v;
  }
  if (with_neg_inf && vocab > 2) l[vocab / 2] = -std::numeric_limits<float>::infinity();
  if (with_pos_inf && vocab > 3) {
    l[1] = std::numeric_limits<float>::infinity();
    l[vocab - 1] = std::numeric_limits<float>::infinity();
  }
  return l;
}

struct Reference {
  int32_t token = 0;
  double boundary_distance = 1.0;  // |u - nearest cumulative sum|
};

// Sampler::Sample's walk, written out here so that the u is ours.
Reference Walk(const std::vector<double>& dist, const std::vector<float>& logits, double u) {
  Reference r;
  double cum = 0.0;
  int32_t last = -1;
  bool found = false;
  for (size_t i = 0; i < dist.size(); ++i) {
    if (dist[i] <= 0.0) continue;
    cum += dist[i];
    r.boundary_distance = std::min(r.boundary_distance, std::fabs(u - cum));
    last = static_cast<int32_t>(i);
    if (!found && u < cum) {
      r.token = last;
      found = true;
    }
  }
  if (!found) r.token = last < 0 ? ArgMax(logits) : last;
  return r;
}

// Tokens from the device for each u; false on a CUDA error.
bool DeviceTokens(const DevBuf& logits, int vocab, const SamplingParams& p, const std::vector<double>& us,
                  DevBuf& scratch, size_t scratch_bytes, std::vector<int32_t>* out) {
  DevBuf token(sizeof(int32_t));
  out->clear();
  for (double u : us) {
    if (cudaMemset(token.get(), 0xFF, sizeof(int32_t)) != cudaSuccess) return false;
    if (cuda::SampleToken(logits.get<float>(), vocab, p.temperature, p.top_k, p.top_p, u, scratch.get(), scratch_bytes,
                          token.get<int32_t>(), nullptr) != cudaSuccess) {
      return false;
    }
    int32_t t = -2;
    if (token.Download(&t, sizeof(t)) != cudaSuccess) return false;
    out->push_back(t);
  }
  return true;
}

TEST_F(SamplingKernelTest, MatchesHostSamplerDistributionWalk) {
  struct Case {
    int vocab;
    bool neg_inf, pos_inf;
  };
  const Case cases[] = {{1, false, false},   {7, false, false},   {7, true, true},
                        {1000, true, false}, {1000, false, true}, {128256, true, false}};
  const double temperatures[] = {0.3, 1.0, 2.5};
  const int top_ks[] = {0, 1, 5, 64};
  const double top_ps[] = {1.0, 0.9, 0.5, 0.01};
  std::mt19937_64 urng(12345);
  std::uniform_real_distribution<double> uni(0.0, 1.0);

  int64_t checked = 0, boundary = 0, mismatched = 0;
  uint64_t seed = 1;
  for (const Case& c : cases) {
    const std::vector<float> logits = RandomLogits(c.vocab, seed++, c.neg_inf, c.pos_inf);
    DevBuf d_logits(sizeof(float) * c.vocab);
    ASSERT_TRUE(d_logits.ok());
    ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * c.vocab));
    const size_t scratch_bytes = cuda::SampleScratchBytes(c.vocab);
    DevBuf scratch(scratch_bytes);
    ASSERT_TRUE(scratch.ok());

    // Greedy: ArgMax exactly.
    {
      SamplingParams g;
      std::vector<int32_t> got;
      ASSERT_TRUE(DeviceTokens(d_logits, c.vocab, g, {0.5}, scratch, scratch_bytes, &got));
      EXPECT_EQ(got[0], ArgMax(logits)) << "greedy, vocab " << c.vocab;
    }

    for (double t : temperatures) {
      for (int k : top_ks) {
        for (double p : top_ps) {
          SamplingParams sp;
          sp.temperature = t;
          sp.top_k = k;
          sp.top_p = p;
          const std::vector<double> dist = Sampler(sp).Distribution(logits);
          std::vector<double> us = {0.0, 0.5, 1.0 - 0x1.0p-53};
          for (int i = 0; i < 24; ++i) us.push_back(uni(urng));
          // Also u 1e-7 either side of the first few cumulative boundaries.
          double cum = 0.0;
          int near = 0;
          for (size_t i = 0; i < dist.size() && near < 4; ++i) {
            if (dist[i] <= 0.0) continue;
            cum += dist[i];
            if (cum < 1.0) {
              us.push_back(std::max(cum - 1e-7, 0.0));
              us.push_back(std::min(cum + 1e-7, 1.0 - 0x1.0p-53));
              ++near;
            }
          }
          std::vector<int32_t> got;
          ASSERT_TRUE(DeviceTokens(d_logits, c.vocab, sp, us, scratch, scratch_bytes, &got))
              << cudaGetErrorString(cudaGetLastError());
          for (size_t i = 0; i < us.size(); ++i) {
            const Reference want = Walk(dist, logits, us[i]);
            ++checked;
            if (got[i] == want.token) continue;
            if (want.boundary_distance < 1e-9) {
              ++boundary;
              continue;
            }
            ++mismatched;
            ADD_FAILURE() << "vocab " << c.vocab << " T " << t << " top_k " << k << " top_p " << p << " u " << us[i]
                          << ": device token " << got[i] << ", host " << want.token << " (u is "
                          << want.boundary_distance << " from a boundary)";
          }
        }
      }
    }
  }
  std::printf("sampling kernel: %lld draws checked, %lld differ within 1e-9 of a mass boundary, %lld mismatched\n",
              static_cast<long long>(checked), static_cast<long long>(boundary), static_cast<long long>(mismatched));
  EXPECT_EQ(mismatched, 0);
  EXPECT_LE(boundary, checked / 1000);
}

TEST_F(SamplingKernelTest, AllNanGivesTokenZeroAndBadArgumentsAreRefused) {
  const int vocab = 33;
  const std::vector<float> logits(vocab, std::numeric_limits<float>::quiet_NaN());
  DevBuf d_logits(sizeof(float) * vocab);
  ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * vocab));
  const size_t scratch_bytes = cuda::SampleScratchBytes(vocab);
  DevBuf scratch(scratch_bytes);
  SamplingParams sp;
  sp.temperature = 1.0;
  sp.top_p = 0.5;
  Sampler host(sp);
  std::vector<int32_t> got;
  ASSERT_TRUE(DeviceTokens(d_logits, vocab, sp, {0.3}, scratch, scratch_bytes, &got));
  EXPECT_EQ(got[0], host.Sample(logits));
  EXPECT_EQ(got[0], 0);

  DevBuf token(sizeof(int32_t));
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 1.0, 0.5, scratch.get(), scratch_bytes - 1,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), 0, 1.0, 0, 1.0, 0.5, scratch.get(), scratch_bytes,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, -1, 1.0, 0.5, scratch.get(), scratch_bytes,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
}

// Vocabulary 128256 (Llama 3), no cuts: the whole sort-and-walk path.
TEST_F(SamplingKernelTest, Vocab128kTakesWellUnderAMillisecond) {
  const int vocab = 128256;
  const std::vector<float> logits = RandomLogits(vocab, 99, false, false);
  DevBuf d_logits(sizeof(float) * vocab);
  ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * vocab));
  const size_t scratch_bytes = cuda::SampleScratchBytes(vocab);
  DevBuf scratch(scratch_bytes), token(sizeof(int32_t));
  cudaEvent_t start, stop;
  ASSERT_CUDA(cudaEventCreate(&start));
  ASSERT_CUDA(cudaEventCreate(&stop));
  const int reps = 50;
  for (int warm = 0; warm < 3; ++warm) {
    ASSERT_CUDA(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 0.9, 0.5, scratch.get(), scratch_bytes,
                                  token.get<int32_t>(), nullptr));
  }
  ASSERT_CUDA(cudaEventRecord(start));
  for (int r = 0; r < reps; ++r) {
    ASSERT_CUDA(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 0.9, (r + 0.5) / reps, scratch.get(),
                                  scratch_bytes, token.get<int32_t>(), nullptr));
  }
  ASSERT_CUDA(cudaEventRecord(stop));
  ASSERT_CUDA(cudaEventSynchronize(stop));
  float ms = 0.0f;
  ASSERT_CUDA(cudaEventElapsedTime(&ms, start, stop));
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  const double per = ms / reps;
  std::printf("sampling kernel, vocab %d, top_p 0.9: %.3f ms per token\n", vocab, per);
  EXPECT_LT(per, 1.0);
}

TEST_F(SamplingKernelTest, AdjustLogitsIsSamplerAdjustedBitForBit) {
  const int vocab = 1000, rows = 3;
  std::vector<float> logits;
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> row = RandomLogits(vocab, 50 + r, r == 1, r == 2);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  // Each row its own sampler: biases, then penalties on tokens it produced.
  std::mt19937_64 rng(9);
  std::vector<Sampler> samplers;
  std::vector<cuda::RowLogitAdjustment> entries;
  for (int r = 0; r < rows; ++r) {
    SamplingParams p;
    p.presence_penalty = 0.25 * (r + 1);
    p.frequency_penalty = r == 1 ? -0.75 : 1.3;
    for (int id = r; id < vocab; id += 37)
      p.logit_bias.push_back({id, static_cast<float>(rng() % 2001) / 10.0f - 100.0f});
    samplers.emplace_back(p);
    for (int k = 0; k < 60; ++k) samplers.back().Record(static_cast<int32_t>(rng() % vocab));
    for (const LogitAdjustment& a : samplers.back().Adjustments()) entries.push_back({r, a.id, a.delta});
  }
  DevBuf d_logits(sizeof(float) * logits.size()), d_entries(sizeof(cuda::RowLogitAdjustment) * entries.size());
  ASSERT_TRUE(d_logits.ok() && d_entries.ok());
  ASSERT_EQ(d_logits.Upload(logits.data(), sizeof(float) * logits.size()), cudaSuccess);
  ASSERT_EQ(d_entries.Upload(entries.data(), sizeof(cuda::RowLogitAdjustment) * entries.size()), cudaSuccess);
  // Rows 1 and 2 first, as their own chunk (first_row 1), then row 0.
  const size_t row0 =
      static_cast<size_t>(std::count_if(entries.begin(), entries.end(), [](const auto& e) { return e.row == 0; }));
  ASSERT_EQ(cuda::AdjustLogits(d_logits.get<float>() + vocab, vocab, d_entries.get<cuda::RowLogitAdjustment>() + row0,
                               static_cast<int>(entries.size() - row0), 1, nullptr),
            cudaSuccess);
  ASSERT_EQ(cuda::AdjustLogits(d_logits.get<float>(), vocab, d_entries.get<cuda::RowLogitAdjustment>(),
                               static_cast<int>(row0), 0, nullptr),
            cudaSuccess);
  std::vector<float> got(logits.size());
  ASSERT_EQ(d_logits.Download(got.data(), sizeof(float) * got.size()), cudaSuccess);
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> want =
        samplers[r].Adjusted(std::span<const float>(logits.data() + static_cast<size_t>(r) * vocab, vocab));
    // Bit for bit, but a NaN is any NaN: the GPU's arithmetic returns its
    // canonical NaN, the host's keeps the operand's payload; neither is ever
    // sampled.
    int differ = 0;
    for (int j = 0; j < vocab; ++j) {
      const float g = got[static_cast<size_t>(r) * vocab + j];
      if (std::isnan(want[j]) ? !std::isnan(g) : std::memcmp(&want[j], &g, sizeof(float)) != 0) ++differ;
    }
    EXPECT_EQ(differ, 0) << "row " << r;
  }
  EXPECT_EQ(cuda::AdjustLogits(d_logits.get<float>(), vocab, nullptr, 0, 0, nullptr), cudaSuccess) << "nothing to do";
  EXPECT_EQ(cuda::AdjustLogits(d_logits.get<float>(), vocab, nullptr, 3, 0, nullptr), cudaErrorInvalidValue);
}

// --- the engine ------------------------------------------------------------

std::string Fixture(const std::string& name) {
  const char* env = std::getenv("SEER_FIXTURES_DIR");
  return std::string(env != nullptr && *env != '\0' ? env : SEER_FIXTURES_DIR) + "/" + name;
}

// (temperature, with logit adjustments)
class CudaDecodeAndSampleTest : public ::testing::TestWithParam<std::tuple<double, bool>> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device visible: CUDA engine tests skipped";
  }
};

// One cache; at each position DecodeStep gives the logits (the host Sampler
// draws from them), then the cache is rewound and DecodeAndSample runs the
// same token at the same position with its own identically seeded Sampler.
// Both runs compute the same position from the same inputs, so the tokens
// must be equal; the next step feeds the token both agreed on.
TEST_P(CudaDecodeAndSampleTest, LlamaTokensEqualHostSamplerOnDecodeStepLogits) {
  EngineOptions o;
  o.model_dir = Fixture("llama");
  o.device = "cuda";
  auto made = CreateEngine(o);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  std::unique_ptr<Engine> engine = std::move(made).value();
  auto expected = SafetensorsFile::Open(Fixture("llama") + "/expected.safetensors");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  const TensorView* ids_view = (*expected)->Find("input_ids");
  ASSERT_NE(ids_view, nullptr);
  ASSERT_EQ(ids_view->dtype, DType::kI32);
  std::vector<int32_t> ids(ids_view->numel());
  std::memcpy(ids.data(), ids_view->data, ids.size() * sizeof(int32_t));
  ids.resize(std::min<size_t>(ids.size(), 24));

  const int steps = 24;
  auto cache = engine->NewCache(static_cast<int>(ids.size()) + steps);
  ASSERT_TRUE(cache.ok());
  auto pre = engine->Prefill(ids, PrefillOptions{}, cache->get(), nullptr);
  ASSERT_TRUE(pre.ok()) << pre.status().ToString();

  const auto [temperature, adjusted] = GetParam();
  SamplingParams sp;
  sp.temperature = temperature;
  sp.top_k = temperature > 1.0 ? 0 : 40;
  sp.top_p = temperature > 1.0 ? 0.95 : 1.0;
  sp.seed = 2024;
  if (adjusted) {
    sp.presence_penalty = 0.6;
    sp.frequency_penalty = 0.9;
    sp.logit_bias = {{7, -100.0f}, {30, 3.0f}, {ids[0], 1.5f}};
    std::sort(sp.logit_bias.begin(), sp.logit_bias.end(), [](auto& a, auto& b) { return a.id < b.id; });
  }
  Sampler host(sp), device(sp);
  int32_t token = host.Sample(pre->logits);
  ASSERT_EQ(device.Sample(pre->logits), token);
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  for (int step = 0; step < steps; ++step) {
    const int pos = (*cache)->length();
    ASSERT_TRUE(engine->DecodeStep(token, cache->get(), &logits).ok());
    const int32_t want = host.Sample(logits);
    (*cache)->set_length(pos);
    auto got = engine->DecodeAndSample(token, cache->get(), &device);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ((*cache)->length(), pos + 1);
    ASSERT_EQ(*got, want) << "step " << step << " (temperature " << sp.temperature << ")";
    tokens.push_back(want);
    token = want;
  }
  // Both streams consumed the same number of uniforms, and counted the same tokens.
  EXPECT_EQ(host.NextUniform(), device.NextUniform());
  EXPECT_TRUE(std::ranges::equal(host.Adjustments(), device.Adjustments()));
  if (adjusted) {
    EXPECT_EQ(std::count(tokens.begin(), tokens.end(), 7), 0) << "token 7 is banned";
  }
  std::printf("[llama] DecodeAndSample, temperature %.2f%s: %d tokens equal to the host Sampler's; distinct %zu\n",
              sp.temperature, adjusted ? " with logit adjustments" : "", steps, [&] {
                std::vector<int32_t> s = tokens;
                std::sort(s.begin(), s.end());
                return static_cast<size_t>(std::unique(s.begin(), s.end()) - s.begin());
              }());

  // The base class's host path (what the CPU engine uses) agrees too.
  EngineOptions co = o;
  co.device = "cpu";
  auto cpu = CreateEngine(co);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  auto cc = (*cpu)->NewCache(static_cast<int>(ids.size()) + 2);
  ASSERT_TRUE(cc.ok());
  auto cpre = (*cpu)->Prefill(ids, PrefillOptions{}, cc->get(), nullptr);
  ASSERT_TRUE(cpre.ok());
  Sampler a(sp), b(sp);
  const int32_t first = a.Sample(cpre->logits);
  ASSERT_EQ(b.Sample(cpre->logits), first);
  ASSERT_TRUE((*cpu)->DecodeStep(first, cc->get(), &logits).ok());
  const int32_t want = a.Sample(logits);
  (*cc)->set_length(static_cast<int>(ids.size()));
  auto got = (*cpu)->DecodeAndSample(first, cc->get(), &b);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, want);
}

INSTANTIATE_TEST_SUITE_P(Temperatures, CudaDecodeAndSampleTest,
                         ::testing::Combine(::testing::Values(0.0, 0.7, 1.5), ::testing::Bool()));

}  // namespace
}  // namespace seer
