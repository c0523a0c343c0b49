// How one logit adjustment moves a logit, shared by seer::Sampler and its
// device twin (kernels/sampling/sampling.cu) so that both give the same float.
#pragma once

#if defined(__CUDACC__)
#define SEER_ADJUST_HD __host__ __device__ __forceinline__
#else
#define SEER_ADJUST_HD inline
#endif

namespace seer {

// The repetition penalty first, as Hugging Face's RepetitionPenaltyLogitsProcessor
// applies it (a positive logit divided by `repetition`, any other multiplied
// by it; 1 leaves it alone), then `delta` added; each step one float
// operation rounded to nearest. On the device the intrinsics keep the
// compiler from fusing the multiply and the add into one FMA, which the host
// does not do.
SEER_ADJUST_HD float AdjustLogit(float x, float delta, float repetition) {
#if defined(__CUDA_ARCH__)
  if (repetition != 1.0f) x = x > 0.0f ? __fdiv_rn(x, repetition) : __fmul_rn(x, repetition);
  return __fadd_rn(x, delta);
#else
  if (repetition != 1.0f) x = x > 0.0f ? x / repetition : x * repetition;
  return x + delta;
#endif
}

}  // namespace seer
