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
//   - LogprobRows and LogprobChosen (OpenAI's logprobs on the device)
//     against LogprobsOf, row by row: the same ids in the same order, the
//     logprobs to float rounding; after AdjustLogits, the raw logits' values.
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
#include <functional>
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
#include "text/guide.h"
#include "text/regex_grammar.h"

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

// `rows` rows of RandomLogits, row r from seed + r; row neg_inf_row has a
// -inf and row pos_inf_row two +inf (-1: none).
std::vector<float> RandomRows(int rows, int vocab, uint64_t seed, int neg_inf_row = -1, int pos_inf_row = -1) {
  std::vector<float> logits;
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> row = RandomLogits(vocab, seed + r, r == neg_inf_row, r == pos_inf_row);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

// Milliseconds per call of `call(i)`, i = 0 .. reps - 1, timed with events
// on the default stream after `warmups` calls (i < 0); -1 when a call or
// the timing fails.
double MsPerCall(int warmups, int reps, const std::function<cudaError_t(int)>& call) {
  for (int w = 0; w < warmups; ++w)
    if (call(-1 - w) != cudaSuccess) return -1.0;
  cudaEvent_t start = nullptr, stop = nullptr;
  float ms = -1.0f;
  bool ok = cudaEventCreate(&start) == cudaSuccess && cudaEventCreate(&stop) == cudaSuccess &&
            cudaEventRecord(start) == cudaSuccess;
  for (int i = 0; ok && i < reps; ++i) ok = call(i) == cudaSuccess;
  ok = ok && cudaEventRecord(stop) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
       cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
  return ok ? static_cast<double>(ms) / reps : -1.0;
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
    if (cuda::SampleToken(logits.get<float>(), vocab, p.temperature, p.top_k, p.top_p, p.min_p, u, scratch.get(),
                          scratch_bytes, token.get<int32_t>(), nullptr) != cudaSuccess) {
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
  const double min_ps[] = {0.0, 0.02, 0.4};
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
          for (double m : min_ps) {
            SamplingParams sp;
            sp.temperature = t;
            sp.top_k = k;
            sp.top_p = p;
            sp.min_p = m;
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
              ADD_FAILURE() << "vocab " << c.vocab << " T " << t << " top_k " << k << " top_p " << p << " min_p " << m
                            << " u " << us[i] << ": device token " << got[i] << ", host " << want.token << " (u is "
                            << want.boundary_distance << " from a boundary)";
            }
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
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 1.0, 0.0, 0.5, scratch.get(), scratch_bytes - 1,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), 0, 1.0, 0, 1.0, 0.0, 0.5, scratch.get(), scratch_bytes,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, -1, 1.0, 0.0, 0.5, scratch.get(), scratch_bytes,
                              token.get<int32_t>(), nullptr),
            cudaErrorInvalidValue);
  for (double min_p : {-0.1, 1.5, std::nan("")}) {
    EXPECT_EQ(cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 1.0, min_p, 0.5, scratch.get(), scratch_bytes,
                                token.get<int32_t>(), nullptr),
              cudaErrorInvalidValue)
        << "min_p " << min_p;
  }
}

// Vocabulary 128256 (Llama 3), no cuts: the whole sort-and-walk path.
TEST_F(SamplingKernelTest, Vocab128kTakesWellUnderAMillisecond) {
  const int vocab = 128256;
  const std::vector<float> logits = RandomLogits(vocab, 99, false, false);
  DevBuf d_logits(sizeof(float) * vocab);
  ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * vocab));
  const size_t scratch_bytes = cuda::SampleScratchBytes(vocab);
  DevBuf scratch(scratch_bytes), token(sizeof(int32_t));
  const int reps = 50;
  const double per = MsPerCall(3, reps, [&](int r) {
    return cuda::SampleToken(d_logits.get<float>(), vocab, 1.0, 0, 0.9, 0.0, r < 0 ? 0.5 : (r + 0.5) / reps,
                             scratch.get(), scratch_bytes, token.get<int32_t>(), nullptr);
  });
  ASSERT_GT(per, 0.0) << "a launch or the timing failed";
  std::printf("sampling kernel, vocab %d, top_p 0.9: %.3f ms per token\n", vocab, per);
  EXPECT_LT(per, 1.0);
}

TEST_F(SamplingKernelTest, AdjustLogitsIsSamplerAdjustedBitForBit) {
  const int vocab = 1000, rows = 3;
  const std::vector<float> logits = RandomRows(rows, vocab, 50, 1, 2);
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
    if (r == 2) {
      // min_tokens not reached: its end ids are -inf (one biased too).
      p.min_tokens = 100;
      p.end_ids = {1, 2 + 37 * 3, 999};
    } else {
      // The repetition penalty on a prompt's ids and the recorded ones:
      // dividing the positive logits for 1.3, multiplying for 0.7.
      p.repetition_penalty = r == 0 ? 1.3 : 0.7;
      for (int k = 0; k < 300; ++k) p.prompt_ids.push_back(static_cast<int32_t>(rng() % vocab));
    }
    samplers.emplace_back(p);
    for (int k = 0; k < 60; ++k) samplers.back().Record(static_cast<int32_t>(rng() % vocab));
    for (const LogitAdjustment& a : samplers.back().Adjustments()) entries.push_back({r, a.id, a.delta, a.repetition});
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

// --- logprobs ----------------------------------------------------------------

// Entry `got` against LogprobsOf's `want`: the same id, and the same logprob
// up to the float rounding of a normaliser summed in another order with
// another exp (exactly, when either is infinite).
void ExpectLogprobNear(const cuda::DeviceLogprob& got, const TokenLogprob& want, const std::string& where) {
  EXPECT_EQ(got.id, want.id) << where;
  if (std::isinf(want.logprob) || std::isinf(got.logprob)) {
    EXPECT_EQ(got.logprob, want.logprob) << where;
  } else {
    EXPECT_NEAR(got.logprob, want.logprob, 1e-6 + 4e-7 * std::fabs(want.logprob)) << where;
  }
}

// LogprobRows on rows of many kinds, against LogprobsOf row by row: random
// logits with ties, NaN, +-0 and +-inf; a row of NaN; a row of -inf and NaN;
// a row with +inf; rows with fewer non-NaN logits than top_n; vocabularies
// from 1 to Llama-3's; every top_n; rows scattered to places, some skipped;
// tokens inside and outside the vocabulary.
TEST_F(SamplingKernelTest, LogprobRowsAreLogprobsOf) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int checked = 0;
  for (int vocab : {1, 2, 7, 255, 256, 257, 1000, 4097, 32000, 128256}) {
    for (int top_n : {0, 1, 5, 20}) {
      const int rows = 9;
      std::vector<float> logits;
      for (int r = 0; r < rows; ++r) {
        std::vector<float> row = RandomLogits(vocab, 1000 * vocab + 10 * top_n + r, r % 3 == 1, r == 5);
        if (r == 2) std::fill(row.begin(), row.end(), nan);
        if (r == 3) {
          for (int i = 0; i < vocab; ++i) row[i] = i % 2 == 0 ? -inf : nan;
        }
        if (r == 4) {  // fewer numbers than top_n
          std::fill(row.begin(), row.end(), nan);
          for (int i = 0; i < 3; ++i) row[std::max(0, vocab - 1 - 2 * i)] = 0.5f * i;
        }
        if (r == 6) {  // one value everywhere: every place a tie
          std::fill(row.begin(), row.end(), -2.25f);
        }
        logits.insert(logits.end(), row.begin(), row.end());
      }
      // Places: rows in reverse order, row 7 skipped.
      std::vector<int32_t> places(rows), tokens(rows);
      for (int r = 0; r < rows; ++r) places[r] = r == 7 ? -1 : (rows - 1 - r);
      for (int r = 0; r < rows; ++r) tokens[r] = r == 0 ? -1 : (r == 1 ? vocab : (r * 7919) % vocab);
      const int stride = 1 + top_n;
      DevBuf d_logits(sizeof(float) * logits.size()), d_places(sizeof(int32_t) * rows),
          d_tokens(sizeof(int32_t) * rows), d_out(sizeof(cuda::DeviceLogprob) * rows * stride),
          d_norms(sizeof(cuda::LogprobNorm) * rows);
      ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * logits.size()));
      ASSERT_CUDA(d_places.Upload(places.data(), sizeof(int32_t) * rows));
      ASSERT_CUDA(d_tokens.Upload(tokens.data(), sizeof(int32_t) * rows));
      ASSERT_CUDA(cudaMemset(d_out.get(), 0x7f, sizeof(cuda::DeviceLogprob) * rows * stride));  // poison
      ASSERT_CUDA(cuda::LogprobRows(d_logits.get<float>(), rows, vocab, d_places.get<int32_t>(),
                                    d_tokens.get<int32_t>(), top_n, d_out.get<cuda::DeviceLogprob>(),
                                    d_norms.get<cuda::LogprobNorm>(), nullptr));
      std::vector<cuda::DeviceLogprob> got(static_cast<size_t>(rows) * stride);
      ASSERT_CUDA(d_out.Download(got.data(), sizeof(cuda::DeviceLogprob) * got.size()));
      for (int r = 0; r < rows; ++r) {
        const std::string where =
            "vocab " + std::to_string(vocab) + ", top_n " + std::to_string(top_n) + ", row " + std::to_string(r);
        const cuda::DeviceLogprob* e = got.data() + static_cast<size_t>(rows - 1 - r) * stride;
        if (places[r] < 0) {  // skipped: place 1's entries stay poisoned
          EXPECT_EQ(e[0].id, 0x7f7f7f7f) << where;
          continue;
        }
        const TokenLogprobs want =
            LogprobsOf(std::span<const float>(logits.data() + static_cast<size_t>(r) * vocab, vocab), tokens[r], top_n);
        ExpectLogprobNear(e[0], want.chosen, where + ", chosen");
        for (int j = 0; j < top_n; ++j) {
          if (j < static_cast<int>(want.top.size())) {
            ExpectLogprobNear(e[1 + j], want.top[j], where + ", top " + std::to_string(j));
          } else {
            EXPECT_EQ(e[1 + j].id, -1) << where << ", past the listable, place " << j;
          }
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 10 * 4 * 8);
  DevBuf out(sizeof(cuda::DeviceLogprob) * 64);
  EXPECT_EQ(cuda::LogprobRows(nullptr, 0, 10, nullptr, nullptr, 1, out.get<cuda::DeviceLogprob>(), nullptr, nullptr),
            cudaSuccess)
      << "no rows, nothing to do";
  DevBuf one(sizeof(float) * 10);
  EXPECT_EQ(cuda::LogprobRows(one.get<float>(), 1, 10, nullptr, nullptr, kMaxTopLogprobs + 1,
                              out.get<cuda::DeviceLogprob>(), nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::LogprobRows(one.get<float>(), 1, 10, nullptr, nullptr, -1, out.get<cuda::DeviceLogprob>(), nullptr,
                              nullptr),
            cudaErrorInvalidValue);
}

// A decode step's order: LogprobRows on the raw logits (no token yet),
// AdjustLogits saving the raw values, a token per row (here chosen to be an
// adjusted id on some rows and not on others), then LogprobChosen: entry 0
// is LogprobsOf's chosen on the raw row, and the alternatives are the raw
// row's, whatever the adjustments did.
TEST_F(SamplingKernelTest, LogprobChosenAfterAdjustmentsIsTheRawLogitsOne) {
  const int vocab = 5000, rows = 6;
  const std::vector<float> logits = RandomRows(rows, vocab, 70, 1, 4);
  std::mt19937_64 rng(11);
  std::vector<cuda::RowLogitAdjustment> entries;
  std::vector<int32_t> tokens(rows);
  for (int r = 0; r < rows; ++r) {
    SamplingParams p;
    p.presence_penalty = 1.5;
    for (int id = r; id < vocab; id += 13) p.logit_bias.push_back({id, 50.0f});  // large: it moves the top
    if (r % 3 == 1) {
      p.repetition_penalty = 1.7;  // the raw logit is the one before the division too
      for (int k = 0; k < 200; ++k) p.prompt_ids.push_back(static_cast<int32_t>(rng() % vocab));
    }
    Sampler sampler(p);
    for (int k = 0; k < 40; ++k) sampler.Record(static_cast<int32_t>(rng() % vocab));
    const std::span<const LogitAdjustment> adjustments = sampler.Adjustments();
    for (const LogitAdjustment& a : adjustments) entries.push_back({r, a.id, a.delta, a.repetition});
    // Even rows draw an adjusted id, odd rows one that is not; either with
    // a finite raw logit, so that the adjustment shows.
    const float* raw = logits.data() + static_cast<size_t>(r) * vocab;
    auto adjusted = [&](int id) {
      return std::any_of(adjustments.begin(), adjustments.end(), [&](const LogitAdjustment& a) { return a.id == id; });
    };
    tokens[r] = -1;
    for (int id = 100 + r; id < vocab && tokens[r] < 0; ++id) {
      if (std::isfinite(raw[id]) && adjusted(id) == (r % 2 == 0)) tokens[r] = id;
    }
    ASSERT_GE(tokens[r], 0);
  }
  const int top_n = 7, stride = 1 + top_n;
  DevBuf d_logits(sizeof(float) * logits.size()), d_entries(sizeof(cuda::RowLogitAdjustment) * entries.size()),
      d_saved(sizeof(float) * entries.size()), d_tokens(sizeof(int32_t) * rows),
      d_out(sizeof(cuda::DeviceLogprob) * rows * stride), d_norms(sizeof(cuda::LogprobNorm) * rows);
  ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * logits.size()));
  ASSERT_CUDA(d_entries.Upload(entries.data(), sizeof(cuda::RowLogitAdjustment) * entries.size()));
  ASSERT_CUDA(d_tokens.Upload(tokens.data(), sizeof(int32_t) * rows));
  // Rows 2.. as a chunk of their own (first_row 2), then rows 0 and 1, as a
  // decode step's logits chunks go.
  const size_t split =
      static_cast<size_t>(std::count_if(entries.begin(), entries.end(), [](const auto& e) { return e.row < 2; }));
  struct Chunk {
    int first, count;
    size_t begin, end;
  };
  for (const Chunk& c : {Chunk{2, rows - 2, split, entries.size()}, Chunk{0, 2, 0, split}}) {
    float* chunk = d_logits.get<float>() + static_cast<size_t>(c.first) * vocab;
    ASSERT_CUDA(cuda::LogprobRows(chunk, c.count, vocab, nullptr, nullptr, top_n,
                                  d_out.get<cuda::DeviceLogprob>() + static_cast<size_t>(c.first) * stride,
                                  d_norms.get<cuda::LogprobNorm>() + c.first, nullptr));
    ASSERT_CUDA(cuda::AdjustLogits(chunk, vocab, d_entries.get<cuda::RowLogitAdjustment>() + c.begin,
                                   static_cast<int>(c.end - c.begin), c.first, nullptr,
                                   d_saved.get<float>() + c.begin));
    ASSERT_CUDA(cuda::LogprobChosen(chunk, c.count, vocab, nullptr, d_tokens.get<int32_t>() + c.first,
                                    d_entries.get<cuda::RowLogitAdjustment>() + c.begin, d_saved.get<float>() + c.begin,
                                    static_cast<int>(c.end - c.begin), c.first,
                                    d_norms.get<cuda::LogprobNorm>() + c.first, top_n,
                                    d_out.get<cuda::DeviceLogprob>() + static_cast<size_t>(c.first) * stride, nullptr));
  }
  std::vector<cuda::DeviceLogprob> got(static_cast<size_t>(rows) * stride);
  ASSERT_CUDA(d_out.Download(got.data(), sizeof(cuda::DeviceLogprob) * got.size()));
  std::vector<float> adjusted(logits.size());
  ASSERT_CUDA(d_logits.Download(adjusted.data(), sizeof(float) * adjusted.size()));
  int adjusted_tokens = 0;
  for (int r = 0; r < rows; ++r) {
    const std::span<const float> raw(logits.data() + static_cast<size_t>(r) * vocab, vocab);
    const TokenLogprobs want = LogprobsOf(raw, tokens[r], top_n);
    const std::string where = "row " + std::to_string(r);
    const float now = adjusted[static_cast<size_t>(r) * vocab + tokens[r]];
    if (!(std::isnan(now) && std::isnan(raw[tokens[r]])) && now != raw[tokens[r]]) ++adjusted_tokens;
    ExpectLogprobNear(got[static_cast<size_t>(r) * stride], want.chosen, where + ", chosen");
    for (int j = 0; j < static_cast<int>(want.top.size()); ++j) {
      ExpectLogprobNear(got[static_cast<size_t>(r) * stride + 1 + j], want.top[j],
                        where + ", top " + std::to_string(j));
    }
  }
  EXPECT_EQ(adjusted_tokens, rows / 2) << "the even rows' tokens were adjusted, the odd rows' not";
}

// A guide that allows each id with probability `density`, drawn again at
// every walk, and calls the text whole at every other walk.
class CoinGuide final : public TokenGuide {
 public:
  CoinGuide(int32_t vocab, double density, uint64_t seed) : vocab_(vocab), density_(density), rng_(seed) {}
  void Allowed(std::vector<uint64_t>* allowed) override {
    allowed->assign((static_cast<size_t>(vocab_) + 63) / 64, 0);
    std::bernoulli_distribution coin(density_);
    for (int32_t id = 0; id < vocab_; ++id)
      if (coin(rng_)) (*allowed)[id / 64] |= uint64_t{1} << (id % 64);
    complete_ = !complete_;
  }
  bool complete() const override { return complete_; }
  void Accept(int32_t) override {}

 private:
  int32_t vocab_;
  double density_;
  std::mt19937_64 rng_;
  bool complete_ = false;
};
class CoinGuides final : public TokenGuideFactory {
 public:
  CoinGuides(int32_t vocab, double density, uint64_t seed) : vocab_(vocab), density_(density), seed_(seed) {}
  std::unique_ptr<TokenGuide> Start() const override { return std::make_unique<CoinGuide>(vocab_, density_, seed_); }

 private:
  int32_t vocab_;
  double density_;
  uint64_t seed_;
};

// The guides' bans as bit rows (RefuseLogits after AdjustLogits) against
// Sampler::Adjusted, bit for bit: vocabularies from one id to past Llama-3's
// (partial last words), guides that allow 2%, half and 98% of the ids,
// rows without a guide between them, rows with their own entries (bias,
// penalties, the end id's min_tokens ban) on ids the guide refuses too, -inf
// and +inf logits, in two chunks of rows. Then LogprobChosen for a token the
// guide refused (drawn only when every allowed logit is -inf or NaN), with
// and without an entry of its own: the raw logit's logprob, LogprobsOf's.
TEST_F(SamplingKernelTest, RefuseLogitsIsSamplerAdjustedAndTheRawLogitStaysFindable) {
  constexpr int kRows = 7;
  const int32_t kPlaces[kRows] = {0, 1, -1, 2, -1, 3, -1};
  const int top_n = 3, stride = 1 + top_n, places = 4;
  for (int vocab : {1, 63, 64, 65, 1000, 128256 + 37}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab));
    const std::vector<float> logits = RandomRows(kRows, vocab, 80 + static_cast<uint64_t>(vocab), 1, 3);
    const int words = (vocab + 63) / 64;
    std::vector<Sampler> samplers;
    std::vector<cuda::RowLogitAdjustment> entries;
    std::vector<int32_t> slots(kRows, -1);
    std::vector<uint64_t> bits;
    std::mt19937_64 rng(vocab);
    for (int r = 0; r < kRows; ++r) {
      SamplingParams p;
      p.vocab_size = vocab;
      p.end_ids = {0};
      if (r % 2 == 0) {
        p.min_tokens = 100;
        p.presence_penalty = 0.5;
        for (int id = r; id < vocab; id += 7) p.logit_bias.push_back({id, static_cast<float>(r) - 2.5f});
      }
      if (r % 3 != 2) p.guide = std::make_shared<CoinGuides>(vocab, r % 3 == 0 ? 0.02 : r == 1 ? 0.5 : 0.98, r);
      samplers.emplace_back(p);
      for (int k = 0; k < 5; ++k) samplers.back().Record(static_cast<int32_t>(rng() % vocab));
      for (const LogitAdjustment& a : samplers.back().Adjustments())
        entries.push_back({r, a.id, a.delta, a.repetition});
      const std::span<const uint64_t> refused = samplers.back().Refused();
      ASSERT_EQ(refused.empty(), p.guide == nullptr);
      if (refused.empty()) continue;
      ASSERT_EQ(static_cast<int>(refused.size()), words);
      slots[r] = static_cast<int32_t>(bits.size()) / words;
      bits.insert(bits.end(), refused.begin(), refused.end());
    }
    // Each place's token: a refused id, with an entry of its own in the even
    // rows when there is one (the entries come first), without in the others.
    auto refused_at = [&](int r, int id) { return ((bits[slots[r] * words + id / 64] >> (id % 64)) & 1) != 0; };
    auto has_entry = [&](int r, int id) {
      return std::any_of(entries.begin(), entries.end(), [&](const auto& e) { return e.row == r && e.id == id; });
    };
    std::vector<int32_t> tokens(kRows, 0);
    for (int r = 0; r < kRows; ++r) {
      if (slots[r] < 0) continue;
      for (int pass = 0; pass < 2 && tokens[r] == 0; ++pass) {
        for (int id = vocab - 1; id > 0; --id) {
          if (refused_at(r, id) && (pass == 1 || has_entry(r, id) == (r % 2 == 0))) {
            tokens[r] = id;
            break;
          }
        }
      }
    }
    DevBuf d_logits(sizeof(float) * logits.size()), d_entries(sizeof(cuda::RowLogitAdjustment) * (entries.size() + 1)),
        d_saved(sizeof(float) * (entries.size() + 1)), d_slots(sizeof(int32_t) * kRows),
        d_bits(sizeof(uint64_t) * bits.size()), d_places(sizeof(int32_t) * kRows), d_raw(sizeof(float) * kRows * vocab),
        d_tokens(sizeof(int32_t) * kRows), d_out(sizeof(cuda::DeviceLogprob) * places * stride),
        d_norms(sizeof(cuda::LogprobNorm) * places);
    ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * logits.size()));
    ASSERT_CUDA(d_entries.Upload(entries.data(), sizeof(cuda::RowLogitAdjustment) * entries.size()));
    ASSERT_CUDA(d_slots.Upload(slots.data(), sizeof(int32_t) * kRows));
    ASSERT_CUDA(d_bits.Upload(bits.data(), sizeof(uint64_t) * bits.size()));
    ASSERT_CUDA(d_places.Upload(kPlaces, sizeof(int32_t) * kRows));
    ASSERT_CUDA(d_tokens.Upload(tokens.data(), sizeof(int32_t) * kRows));
    cuda::RefusedRows refused{d_slots.get<int32_t>(), d_bits.get<uint64_t>(), words, d_raw.get<float>()};
    // Rows 3.. as a chunk of their own (first_row 3), then rows 0 to 2.
    const size_t split =
        static_cast<size_t>(std::count_if(entries.begin(), entries.end(), [](const auto& e) { return e.row < 3; }));
    struct Chunk {
      int first, count;
      size_t begin, end;
    };
    for (const Chunk& c : {Chunk{3, kRows - 3, split, entries.size()}, Chunk{0, 3, 0, split}}) {
      float* chunk = d_logits.get<float>() + static_cast<size_t>(c.first) * vocab;
      const int32_t* chunk_places = d_places.get<int32_t>() + c.first;
      ASSERT_CUDA(cuda::LogprobRows(chunk, c.count, vocab, chunk_places, nullptr, top_n,
                                    d_out.get<cuda::DeviceLogprob>(), d_norms.get<cuda::LogprobNorm>(), nullptr));
      const auto* chunk_entries = d_entries.get<cuda::RowLogitAdjustment>() + c.begin;
      float* chunk_saved = d_saved.get<float>() + c.begin;
      const int n = static_cast<int>(c.end - c.begin);
      ASSERT_CUDA(cuda::AdjustLogits(chunk, vocab, chunk_entries, n, c.first, nullptr, chunk_saved));
      ASSERT_CUDA(cuda::RefuseLogits(chunk, c.count, vocab, c.first, chunk_places, refused, nullptr));
      ASSERT_CUDA(cuda::LogprobChosen(chunk, c.count, vocab, chunk_places, d_tokens.get<int32_t>() + c.first,
                                      chunk_entries, chunk_saved, n, c.first, d_norms.get<cuda::LogprobNorm>(), top_n,
                                      d_out.get<cuda::DeviceLogprob>(), nullptr, &refused));
    }
    std::vector<float> got(logits.size());
    ASSERT_CUDA(d_logits.Download(got.data(), sizeof(float) * got.size()));
    std::vector<cuda::DeviceLogprob> chosen(static_cast<size_t>(places) * stride);
    ASSERT_CUDA(d_out.Download(chosen.data(), sizeof(cuda::DeviceLogprob) * chosen.size()));
    int banned = 0, checked_tokens = 0, with_entry = 0;
    for (int r = 0; r < kRows; ++r) {
      const std::span<const float> raw(logits.data() + static_cast<size_t>(r) * vocab, vocab);
      const std::vector<float> want = samplers[r].Adjusted(raw);
      int differ = 0;
      for (int j = 0; j < vocab; ++j) {
        const float g = got[static_cast<size_t>(r) * vocab + j];
        if (std::isnan(want[j]) ? !std::isnan(g) : std::memcmp(&want[j], &g, sizeof(float)) != 0) ++differ;
        banned += slots[r] >= 0 && refused_at(r, j) ? 1 : 0;
      }
      EXPECT_EQ(differ, 0) << "row " << r;
      if (slots[r] < 0 || kPlaces[r] < 0 || tokens[r] == 0) continue;
      ++checked_tokens;
      with_entry += has_entry(r, tokens[r]) ? 1 : 0;
      ExpectLogprobNear(chosen[static_cast<size_t>(kPlaces[r]) * stride], LogprobsOf(raw, tokens[r], top_n).chosen,
                        "row " + std::to_string(r) + ", a refused token");
    }
    // One id, the end id, is never refused: nothing else is left.
    if (vocab > 1) EXPECT_GT(banned, 0);
    if (vocab >= 1000) {
      EXPECT_EQ(checked_tokens, 3);
      EXPECT_EQ(with_entry, 1) << "row 0's token has an entry of its own, rows 1 and 3's none";
    }
  }
}

// Time of LogprobRows on rows of Llama-3's vocabulary (printed; the bound is
// loose: the host did a row in about a millisecond of a core, and on an H100
// (2026-12-05) this kernel took 0.10 ms for 1 row and 0.14 ms for 256, where
// its first version, without the floor, took 0.49 and 0.66).
TEST_F(SamplingKernelTest, LogprobRowsOfAVocab128kTakeMicroseconds) {
  const int vocab = 128256;
  for (int rows : {1, 64, 256}) {
    const std::vector<float> logits = RandomRows(rows, vocab, 500);
    DevBuf d_logits(sizeof(float) * logits.size()), d_out(sizeof(cuda::DeviceLogprob) * rows * (1 + kMaxTopLogprobs)),
        d_norms(sizeof(cuda::LogprobNorm) * rows);
    ASSERT_CUDA(d_logits.Upload(logits.data(), sizeof(float) * logits.size()));
    const double ms = MsPerCall(1, 20, [&](int) {
      return cuda::LogprobRows(d_logits.get<float>(), rows, vocab, nullptr, nullptr, kMaxTopLogprobs,
                               d_out.get<cuda::DeviceLogprob>(), d_norms.get<cuda::LogprobNorm>(), nullptr);
    });
    ASSERT_GT(ms, 0.0) << "a launch or the timing failed";
    std::printf("LogprobRows, vocab %d, top 20, %d rows: %.1f us per launch\n", vocab, rows, 1e3 * ms);
    EXPECT_LT(ms, 0.25 + 0.002 * rows);
  }
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
    // min_tokens: the prompt's most likely next token is an end id, -inf
    // for the first 12 tokens, then allowed again.
    sp.min_tokens = 12;
    sp.end_ids = {ArgMax(pre->logits)};
    // Hugging Face's repetition penalty on the prompt's and the reply's
    // tokens, and vLLM's min_p when sampling.
    sp.repetition_penalty = 1.25;
    sp.prompt_ids = ids;
    sp.min_p = 0.05;
    // vLLM's bad_words: a token never chosen, and one never after another.
    sp.bad_words = {{ids[1]}, {ids[2], ids[3]}};
    // Guided decoding: every id whose text leaves [a-z ,.] has -inf, up to
    // 128 entries a step that change with every token.
    auto tokenizer = Tokenizer::Load(Fixture("llama"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
    auto vocabulary = GuideVocabulary::FromTokenizer(**tokenizer);
    ASSERT_TRUE(vocabulary.ok());
    auto grammar = GrammarFromRegex("[a-z ,.]*");
    ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
    sp.guide = std::make_shared<GrammarGuideFactory>(std::make_shared<Grammar>(*std::move(grammar)), *vocabulary);
    sp.vocab_size = engine->config().vocab_size;
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
    EXPECT_EQ(std::count(tokens.begin(), tokens.begin() + 11, sp.end_ids[0]), 0) << "the end id, until min_tokens";
    auto tokenizer = Tokenizer::Load(Fixture("llama"));
    ASSERT_TRUE(tokenizer.ok());
    auto vocabulary = GuideVocabulary::FromTokenizer(**tokenizer);
    ASSERT_TRUE(vocabulary.ok());
    std::string text;
    for (int32_t t : tokens) {
      if (t == sp.end_ids[0]) break;
      text += (*vocabulary)->bytes(t);
    }
    EXPECT_EQ(text.find_first_not_of("abcdefghijklmnopqrstuvwxyz ,."), std::string::npos) << text;
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
