// The projections: an HF Linear on the GPU through cuBLAS, bf16 operands with
// float32 accumulation.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "base/status.h"

namespace seer {

// y[rows, out] = x[rows, in] . w[out, in]^T + beta * y, all row-major.
// y is bf16 (CUDA_R_16BF, rounded once from the float32 accumulator) or
// float32 (CUDA_R_32F); beta = 1 on a float32 y is the fused residual add.
// x's rows are ldx >= in elements apart (0: in), so that x may be the left
// columns of a wider matrix.
Status LinearBf16(cublasHandle_t handle, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                  void* y, cudaDataType_t y_type, float beta, int ldx = 0);

}  // namespace seer
