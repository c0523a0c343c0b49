#include "kernels/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace seer {

int32_t ArgMax(std::span<const float> values) {
  int32_t best = -1;
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isnan(values[i])) continue;
    if (best < 0 || values[i] > values[best]) best = static_cast<int32_t>(i);
  }
  return best < 0 ? 0 : best;
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

double Sampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

std::vector<double> Sampler::Distribution(std::span<const float> logits) const {
  if (params_.temperature <= 0.0 || logits.empty()) return {};
  const size_t vocab = logits.size();

  // Candidates by descending logit, lowest id first among equals.
  std::vector<int32_t> order;
  order.reserve(vocab);
  for (size_t i = 0; i < vocab; ++i)
    if (!std::isnan(logits[i])) order.push_back(static_cast<int32_t>(i));
  if (order.empty()) return std::vector<double>(vocab, 0.0);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const size_t keep_k = params_.top_k > 0 ? std::min(order.size(), static_cast<size_t>(params_.top_k)) : order.size();
  if (keep_k < order.size() || params_.top_p < 1.0) {
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep_k), order.end(), before);
    order.resize(keep_k);
  }

  // Softmax in double over the kept candidates, shifted by the largest logit.
  double top = -INFINITY;
  for (int32_t i : order) top = std::max(top, static_cast<double>(logits[i]));
  std::vector<double> weight(order.size());
  double total = 0.0;
  for (size_t j = 0; j < order.size(); ++j) {
    const double l = logits[order[j]];
    // With an infinite maximum, the infinite logits share the mass.
    weight[j] = std::isinf(top) ? (l == top ? 1.0 : 0.0) : std::exp((l - top) / params_.temperature);
    total += weight[j];
  }

  // Nucleus: candidates are sorted when top_p < 1; keep the prefix whose mass
  // first reaches top_p.
  size_t kept = order.size();
  if (params_.top_p < 1.0) {
    double mass = 0.0;
    for (size_t j = 0; j < order.size(); ++j) {
      mass += weight[j] / total;
      if (mass >= params_.top_p) {
        kept = j + 1;
        break;
      }
    }
    total = std::accumulate(weight.begin(), weight.begin() + static_cast<std::ptrdiff_t>(kept), 0.0);
  }

  std::vector<double> dist(vocab, 0.0);
  for (size_t j = 0; j < kept; ++j) dist[order[j]] = weight[j] / total;
  return dist;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0) return ArgMax(logits);
  const std::vector<double> dist = Distribution(logits);
  const double u = NextUniform();
  double cum = 0.0;
  int32_t last_kept = -1;
  for (size_t i = 0; i < dist.size(); ++i) {
    if (dist[i] <= 0.0) continue;
    last_kept = static_cast<int32_t>(i);
    cum += dist[i];
    if (u < cum) return last_kept;
  }
  // Rounding left u above the last cumulative sum: the last kept token.
  return last_kept < 0 ? ArgMax(logits) : last_kept;
}

}  // namespace seer
