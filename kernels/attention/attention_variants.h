// The numbered versions of the prefill kernel behind BlockSparseAttention
// (kernels/attention/attention.h), so that the benchmark and the tests can run
// each one. BlockSparseAttention picks kAuto.
#pragma once

#include <cuda_runtime.h>

#include "kernels/attention/attention.h"

namespace seer::cuda {

enum class FwdVariant {
  kAuto,
  // 64-row CTA of 4 warps, 16 query rows per warp, Q fragments in registers.
  kRows16PerWarp,
  // 64-row CTA of 2 warps, 32 query rows per warp (each K/V fragment read
  // from shared memory feeds two MMAs), Q fragments re-read from shared memory.
  kRows32PerWarp,
};

const char* FwdVariantName(FwdVariant v);

cudaError_t BlockSparseAttentionVariant(const AttentionParams& p, FwdVariant variant, cudaStream_t stream);

}  // namespace seer::cuda
