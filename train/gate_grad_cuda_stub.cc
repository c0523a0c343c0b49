// GateLossCuda in a build without CUDA: Create says so, and nothing else
// can be reached.
#include "train/gate_grad_cuda.h"

#include <utility>

namespace seer::train {

struct GateLossCuda::Impl {};

GateLossCuda::GateLossCuda(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GateLossCuda::~GateLossCuda() = default;

StatusOr<std::unique_ptr<GateLossCuda>> GateLossCuda::Create(int /*device*/, size_t /*score_scratch_bytes*/) {
  return Unimplemented("this build of Seer has no CUDA: the gate's loss and gradient run on the CPU only");
}

StatusOr<double> GateLossCuda::Loss(const GateShape& /*s*/, const GateFeatures& /*f*/, const float* /*target*/,
                                    const GateParams& /*w*/, GateParams* /*grad*/, double /*grad_scale*/) {
  return Unimplemented("this build of Seer has no CUDA");
}

int GateLossCuda::device() const { return -1; }

}  // namespace seer::train
