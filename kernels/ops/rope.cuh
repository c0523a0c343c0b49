// The rotary embedding's one rotation, shared by every kernel that applies it
// (ApplyRope, and the decode step's fused q/k/v kernel in paged_kv.cu) so that
// they compute, and round, exactly alike.
#pragma once

#include <cuda_runtime.h>

namespace seer::cuda {

// HF rotate_half on one pair (lo, hi) = (x[i], x[i + D/2]) with the angle's
// (cos, sin) in float32: lo' = lo cos - hi sin, hi' = hi cos + lo sin.
// The roundings are spelled out (one product, then a fused multiply-add)
// so that no compiler contracts the two kernels' copies differently.
__device__ __forceinline__ void RotatePair(float lo, float hi, float2 cs, float* lo_out, float* hi_out) {
  *lo_out = __fmaf_rn(lo, cs.x, -__fmul_rn(hi, cs.y));
  *hi_out = __fmaf_rn(hi, cs.x, __fmul_rn(lo, cs.y));
}

}  // namespace seer::cuda
