// The 16-bit element types the CUDA kernels take (float32 accumulation).
#pragma once

namespace seer::cuda {

enum class ElemType { kBF16, kF16 };

}  // namespace seer::cuda
