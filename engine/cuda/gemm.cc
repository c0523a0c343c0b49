#include "engine/cuda/gemm.h"

#include "engine/cuda/cuda_status.h"

namespace seer {

Status LinearBf16(cublasHandle_t handle, const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                  void* y, cudaDataType_t y_type, float beta, int ldx) {
  if (ldx == 0) ldx = in;
  if (rows < 0 || in <= 0 || out <= 0 || ldx < in) return InvalidArgument("LinearBf16: bad shape");
  if (y_type != CUDA_R_16BF && y_type != CUDA_R_32F) return InvalidArgument("LinearBf16: y must be bf16 or f32");
  if (rows == 0) return OkStatus();
  const float alpha = 1.0f;
  // Row-major y[rows, out] is column-major y^T[out, rows] = W[out, in] . x^T,
  // and row-major W[out, in] read column-major is W^T: hence OP_T on W.
  SEER_RETURN_IF_CUBLAS_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, CUDA_R_16BF, in,
                                           x, CUDA_R_16BF, ldx, &beta, y, y_type, out, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
  return OkStatus();
}

}  // namespace seer
