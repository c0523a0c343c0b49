// The driver's cuTensorMapEncodeTiled, reached through the runtime's entry
// point query, so that nothing links against libcuda: the TMA kernels
// (attention_sm90.cu, the gate's stripes) encode their maps with it.
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

}  // namespace seer::cuda
