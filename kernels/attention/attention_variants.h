// The numbered versions of the prefill kernel behind BlockSparseAttention
// (kernels/attention/attention.h), so that the benchmark and the tests can run
// each one. BlockSparseAttention picks kAuto: kSm90Pairs on compute
// capability 9.0, kRows32PerWarp elsewhere. A variant that cannot run on the device
// returns cudaErrorNotSupported.
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
  // sm_90a: wgmma + TMA, a producer warp and two consumer warpgroups, a
  // persistent grid taking tiles from an atomic counter
  // (kernels/attention/attention_sm90.cu); block lists on one producer that
  // serves both consumers from shared stages (Sm90Lists::kSharedStages).
  kSm90,
  // The same kernel with a static tile stride instead of the counter.
  kSm90Static,
  // sm_90a, block lists: each consumer warpgroup with a producer and K/V
  // rings of its own, taking its rows independently (Sm90Lists::kOwnRings);
  // dense causal runs kSm90's kernel (10-14% faster than kSm90 at sparsity
  // 0.9, H200, 2026-12-01).
  kSm90Rows,
  // kSm90Rows with two kept blocks a consumer step (Sm90Lists::kPairSteps):
  // one softmax round and one wait per 128 keys, as the dense kernel; head
  // dims 32 and 96 run kSm90Rows's kernel. kAuto's pick on compute
  // capability 9.0 (3-15% faster than kSm90Rows with lists, H200,
  // 2026-12-01).
  kSm90Pairs,
  // kRows16PerWarp's kernel with each query block's key list split into
  // kKeySplits parts, a CTA each, merged by a second kernel (as flash
  // decoding merges its splits). For prefills whose query blocks are too
  // few to fill the GPU, each over many keys: the rest after a cached
  // prefix. kAuto's pick with block lists where first_row leaves fewer
  // than four query blocks (times heads) an SM over 4,096 tokens or more,
  // and q comes rotated (no q_rope).
  kRowsSplit,
};

// kRowsSplit's parts per query block.
inline constexpr int kKeySplits = 4;

const char* FwdVariantName(FwdVariant v);

// Whether `v` runs on the current device (the sm90 variants need compute
// capability 9.0 and this binary's sm_90a code); kAuto always does.
bool FwdVariantAvailable(FwdVariant v);

// The variant kAuto runs on the current device.
FwdVariant ResolveFwdVariant(FwdVariant v);

cudaError_t BlockSparseAttentionVariant(const AttentionParams& p, FwdVariant variant, cudaStream_t stream);

}  // namespace seer::cuda
