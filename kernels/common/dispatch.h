// The one place where run-time shapes and types become template constants
// (FlashInfer-style). Each macro runs its body with a constexpr / type alias
// in scope, or returns cudaErrorInvalidValue for a value no kernel was built for.
// Head dims: 32, 64, 96 and 128 (kSupportedHeadDims).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"

namespace seer::cuda {
// The head dims the attention kernels are built for (SEER_DISPATCH_HEAD_DIM).
inline constexpr int kSupportedHeadDims[] = {32, 64, 96, 128};
inline constexpr bool IsSupportedHeadDim(int d) { return d == 32 || d == 64 || d == 96 || d == 128; }
}  // namespace seer::cuda

#define SEER_DISPATCH_HEAD_DIM(head_dim, kHeadDim, ...) \
  [&]() -> cudaError_t {                                \
    switch (head_dim) {                                 \
      case 32: {                                        \
        constexpr int kHeadDim = 32;                    \
        return __VA_ARGS__();                           \
      }                                                 \
      case 64: {                                        \
        constexpr int kHeadDim = 64;                    \
        return __VA_ARGS__();                           \
      }                                                 \
      case 96: {                                        \
        constexpr int kHeadDim = 96;                    \
        return __VA_ARGS__();                           \
      }                                                 \
      case 128: {                                       \
        constexpr int kHeadDim = 128;                   \
        return __VA_ARGS__();                           \
      }                                                 \
      default: return cudaErrorInvalidValue;            \
    }                                                   \
  }()

#define SEER_DISPATCH_ELEM(elem_type, Elem, ...) \
  [&]() -> cudaError_t {                         \
    switch (elem_type) {                         \
      case ::seer::cuda::ElemType::kBF16: {      \
        using Elem = __nv_bfloat16;              \
        return __VA_ARGS__();                    \
      }                                          \
      case ::seer::cuda::ElemType::kF16: {       \
        using Elem = __half;                     \
        return __VA_ARGS__();                    \
      }                                          \
      default: return cudaErrorInvalidValue;     \
    }                                            \
  }()
