// GateLoss (train/gate_grad.h) on the GPU, in float64: the same loss and the
// same gradient of one layer's gate, for the trainer's step when the model's
// shape makes the CPU backward the bottleneck (the 8B shape at 32k tokens).
//
// The inputs stay where the trainer has them (host memory: the pooled
// features, the target, the weights); a call copies them in, runs the
// forward, the loss and the backward on the device and copies the gradient
// back, adding it into the caller's on the host. The result depends on
// nothing but the inputs (and the GPU model and CUDA version): repeated
// calls are bit-identical. It agrees with GateLoss to float64 rounding in a
// different summation order (train/gate_grad_cuda_gpu_test.cc).
//
// This header has no CUDA types: it is compiled in every build, and without
// CUDA Create returns UNIMPLEMENTED.
#pragma once

#include <cstddef>
#include <memory>

#include "base/status.h"
#include "train/gate_grad.h"

namespace seer::train {

// Device state reused across calls: a stream, a cuBLAS handle and buffers
// grown on demand to the largest shape seen. One per trainer; not
// thread-safe.
class GateLossCuda {
 public:
  // The scores and their gradient are materialised per head, [rows, nb]
  // doubles, beside the target's floats; heads are taken in chunks that keep
  // that scratch under this many bytes (at least one head at a time).
  static constexpr size_t kDefaultScoreScratchBytes = size_t{512} << 20;

  // Binds to CUDA device `device` with its own stream.
  static StatusOr<std::unique_ptr<GateLossCuda>> Create(int device,
                                                        size_t score_scratch_bytes = kDefaultScoreScratchBytes);
  ~GateLossCuda();
  GateLossCuda(const GateLossCuda&) = delete;
  GateLossCuda& operator=(const GateLossCuda&) = delete;

  // GateLoss(s, f, target, w, grad, grad_scale, threads): returns the layer's
  // loss and, when `grad` is not null, adds grad_scale times its gradient
  // into *grad (k, and q when s.has_q_weight). `target` is [Hq, nb, nb] host
  // floats. Sizes that do not match `s` are INVALID_ARGUMENT; a CUDA or
  // cuBLAS failure is INTERNAL (RESOURCE_EXHAUSTED when out of memory), and
  // *grad is then unchanged.
  StatusOr<double> Loss(const GateShape& s, const GateFeatures& f, const float* target, const GateParams& w,
                        GateParams* grad, double grad_scale);

  int device() const;

 private:
  struct Impl;
  explicit GateLossCuda(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace seer::train
