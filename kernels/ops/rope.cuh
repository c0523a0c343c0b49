// The rotary embedding's one rotation, shared by every kernel that applies it
// (ApplyRope, and the decode step's fused q/k/v kernel in paged_kv.cu) so that
// they compute, and round, exactly alike.
#pragma once

#include <cuda_runtime.h>

namespace seer::cuda {

// HF rotate_half on one pair (lo, hi) = (x[i], x[i + D/2]) with the angle's
// (cos, sin) in float32: lo' = lo cos - hi sin, hi' = hi cos + lo sin.
__device__ __forceinline__ void RotatePair(float lo, float hi, float2 cs, float* lo_out, float* hi_out) {
  *lo_out = lo * cs.x - hi * cs.y;
  *hi_out = hi * cs.x + lo * cs.y;
}

}  // namespace seer::cuda
