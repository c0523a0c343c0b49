// Token sampling for the decode worker: greedy by default, or temperature
// with optional top-k and top-p (nucleus) cuts, from a seeded random stream
// so that a request with a seed is reproducible.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace seer {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy
  int top_k = 0;  // 0: no cut
  double top_p = 1.0;  // 1: no cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // The next token for `logits` ([vocab]). Greedy picks the largest logit
  // (the lowest id on ties). Otherwise, in order: keep the top_k largest
  // logits, softmax of logit / temperature, keep the smallest prefix (by
  // descending probability) whose mass reaches top_p, renormalise, and draw.
  // NaN logits are never picked.
  int32_t Sample(std::span<const float> logits);

  // The distribution Sample draws from, [vocab], zero outside the kept set
  // (empty for greedy). Exposed for tests and for diagnostics.
  std::vector<double> Distribution(std::span<const float> logits) const;

  const SamplingParams& params() const { return params_; }

  // Uniform in [0, 1) from 53 random bits; defined here rather than by
  // std::uniform_real_distribution so a seed gives the same tokens everywhere.
  // Sample draws exactly one per call when temperature > 0 and none when
  // greedy; a backend that samples on its own device draws it here in the
  // same way, so one seed gives one token stream on every backend.
  double NextUniform();

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest value, the lowest index on ties, skipping NaN; 0 when
// every value is NaN or `values` is empty.
int32_t ArgMax(std::span<const float> values);

}  // namespace seer
