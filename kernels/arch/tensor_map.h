// The driver's cuTensorMapEncodeTiled, reached through the runtime's entry
// point query, so that nothing links against libcuda: the TMA kernels
// (attention_sm90.cu, the gate's stripes) encode their maps with it, through
// EncodeTiledMap.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace seer::cuda {

// Null where the driver does not have it (the caller then refuses the
// launch with cudaErrorNotSupported). Looked up once.
inline PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncodeTiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      ptr = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A tiled map of a kRank-D tensor (dims innermost first; strides in bytes
// for dims 1 and up), copied a box at a time, every element of the box
// taken (element strides of 1); what a box holds past the tensor's end
// reads as zeros. cudaErrorNotSupported where the driver has no encoder,
// cudaErrorInvalidValue where it refuses the shape.
template <int kRank>
cudaError_t EncodeTiledMap(CUtensorMap* map, CUtensorMapDataType type, const void* ptr, const cuuint64_t (&dims)[kRank],
                           const cuuint64_t (&strides_bytes)[kRank - 1], const cuuint32_t (&box)[kRank],
                           CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion) {
  static_assert(kRank >= 1 && kRank <= 5, "cuTensorMapEncodeTiled takes 1 to 5 dims");
  const auto encode = TensorMapEncodeTiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  cuuint32_t element_strides[kRank];
  for (cuuint32_t& e : element_strides) e = 1;
  const CUresult r = encode(map, type, kRank, const_cast<void*>(ptr), dims, strides_bytes, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace seer::cuda
