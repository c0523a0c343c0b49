#include "train/adamw.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace seer::train {

void AdamWStep(const AdamWConfig& c, double lr, int64_t t, std::span<double> param, std::span<const double> grad,
               std::span<double> m, std::span<double> v) {
  assert(param.size() == grad.size() && m.size() == param.size() && v.size() == param.size() && t >= 1);
  const double bias1 = 1.0 - std::pow(c.beta1, static_cast<double>(t));
  const double bias2 = 1.0 - std::pow(c.beta2, static_cast<double>(t));
  const double step_size = lr / bias1;
  const double bias2_sqrt = std::sqrt(bias2);
  const double decay = 1.0 - lr * c.weight_decay;
  for (size_t i = 0; i < param.size(); ++i) {
    const double g = grad[i];
    param[i] *= decay;
    m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
    v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
    param[i] -= step_size * m[i] / (std::sqrt(v[i]) / bias2_sqrt + c.eps);
  }
}

double CosineWarmupFactor(int64_t step, int64_t warmup, int64_t total) {
  constexpr double kPi = 3.14159265358979323846;
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(warmup > 1 ? warmup : 1);
  const int64_t span = total - warmup > 1 ? total - warmup : 1;
  const double progress = static_cast<double>(step - warmup) / static_cast<double>(span);
  return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * progress)));
}

double ClipGradNorm(std::span<std::vector<double>* const> grads, double max_norm) {
  double sq = 0.0;
  for (const std::vector<double>* g : grads) {
    for (double x : *g) sq += x * x;
  }
  const double norm = std::sqrt(sq);
  if (max_norm > 0.0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
      for (std::vector<double>* g : grads) {
        for (double& x : *g) x *= coef;
      }
    }
  }
  return norm;
}

}  // namespace seer::train
