// The optimizer of gate self-distillation, as the reference trains it with
// Hugging Face's Trainer (docs/TRAINING.md): torch.optim.AdamW, the cosine
// schedule with linear warm-up (get_cosine_schedule_with_warmup) and
// clip_grad_norm_ over all the gates' gradients.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace seer::train {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // the reference's run script sets 0
};

// One step of torch.optim.AdamW at step number `t` (1 for the first step) with
// learning rate `lr`, in place on `param` and the moments `m`, `v`:
//   param -= lr * weight_decay * param
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
//   param -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
void AdamWStep(const AdamWConfig& c, double lr, int64_t t, std::span<double> param, std::span<const double> grad,
               std::span<double> m, std::span<double> v);

// The learning-rate multiplier of get_cosine_schedule_with_warmup at
// scheduler step `step` (0 for the first optimizer step): step / warmup
// during the warm-up (so the first step of a warm-up moves nothing), then
// 0.5 * (1 + cos(pi * progress)) down to 0 at `total`.
double CosineWarmupFactor(int64_t step, int64_t warmup, int64_t total);

// torch.nn.utils.clip_grad_norm_ over every gradient: returns the total L2
// norm, and scales all of them by max_norm / (norm + 1e-6) when that is below
// 1. max_norm <= 0 only measures.
double ClipGradNorm(std::span<std::vector<double>* const> grads, double max_norm);

}  // namespace seer::train
