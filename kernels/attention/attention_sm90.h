// The Hopper (sm_90a) block-sparse FlashAttention forward kernel behind
// BlockSparseAttention (kernels/attention/attention.h): wgmma, TMA, an mbarrier
// pipeline, a producer warp and two consumer warpgroups, and a persistent
// scheduler. Design, resource use and measurements: docs/KERNELS.md.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/attention/attention.h"

namespace seer::cuda {

enum class Sm90Schedule {
  kAtomic,  // CTAs take the next tile from a counter in device memory
  kStatic,  // CTA c takes tiles c, c + grid, c + 2 grid, ...
};

// Which kernel runs block lists (dense causal always runs the 128-key one).
enum class Sm90Lists {
  kSharedStages,  // one producer for both consumers: a block both rows keep is loaded once
  kOwnRings,  // a producer and K/V rings per consumer, rows taken independently (always kAtomic)
  kPairSteps,  // kOwnRings with two kept blocks a consumer step (head_dim 64 and 128; kOwnRings otherwise)
};

// True when the current device is compute capability 9.0 and this binary
// holds the kernel's sm_90a code (queried once per device, then cached).
bool Sm90AttentionAvailable();

// Scratch the kernel needs for these shapes (the tile order and the tile
// counter). BlockSparseAttention uses AttentionParams::workspace when it is
// at least this large, else it allocates from the stream's memory pool.
size_t Sm90WorkspaceBytes(int num_heads, int seq_len);

// The diagnostic mode this file was built with (SEER_ATTENTION_DECOMPOSE in
// attention_sm90.cu): 0 for the kernel; 1-3 take Sm90PairsKernel apart and
// give wrong outputs (1 no wgmma, 2 no copies, 3 neither).
int Sm90DecomposeMode();

// Runs the kernel; the caller has checked the shapes (ValidPrefill in
// attention.cu) and Sm90AttentionAvailable().
cudaError_t LaunchSm90Attention(const AttentionParams& p, Sm90Schedule schedule, Sm90Lists lists, cudaStream_t stream);

}  // namespace seer::cuda
