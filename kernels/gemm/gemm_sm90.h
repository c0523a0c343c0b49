// A Hopper bf16 GEMM, C = A B^T (A [m, k], B [n, k], C [m, n], all
// row-major; B is a linear layer's weight as stored, [out, in]), with an
// epilogue that can also pool C's rows in 64-row blocks, as the gate pools
// q and k (kernels/gate). It asks whether a projection we own can run at
// cuBLAS's rate and hand the gate its pooled inputs for free (for the
// answer, docs/KERNELS.md, "Our own GEMM, and the gate's pools in its
// epilogue"). The engine does not call it: its projections stay on cuBLAS.
//
// The kernel (gemm_sm90.cu): persistent CTAs of a producer warpgroup (one
// thread's TMA loads of 128 x 64 A and 256 x 64 B tiles, 128-byte swizzle,
// a ring of three mbarrier stages) and two consumer warpgroups, each
// computing 64 x 256 of a 128 x 256 C tile with wgmma m64n256k16 from
// shared memory, then storing it through a staging buffer with TMA; tiles
// walked in groups of M tiles so that a group's B rows stay in L2.
//
// Block pools (GemmPool), made by two warps of the producer warpgroup from
// the staging buffer: for 64-row block b (rows 64 b .. min(64 b + 64, m) -
// 1) and column j, over the block's rows r in order,
//   mean[b][j] = float((sum of double(C[r][j])) / rows),
//   and with kMaxMinMean also max[b][j] and min[b][j] (NaN wins),
// where C[r][j] is the bf16 value stored: the gate's CPU twin's rule
// (kernels/gate/gate_cpu.cc, PoolQ and PoolK), bit for bit.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace seer::cuda {

struct GemmPool {
  enum class Kind { kNone, kMean, kMaxMinMean };
  Kind kind = Kind::kNone;
  // kMean: [nb, n] means. kMaxMinMean: [nb, 3, n], each block's row of
  // max, then min, then mean (the gate's pooled K).
  float* out = nullptr;
  int head_dim = 0;  // kMaxMinMean: the width of a head's channels (n a multiple)
};

// Whether this process's GPU runs the kernel (sm_90 and a build with sm_90a).
bool GemmSm90Available();

// C = A B^T, fp32 accumulation, C rounded to bf16. n and k must be multiples
// of 8 (TMA's 16-byte row strides); m, n, k > 0. cudaErrorNotSupported where
// the kernel cannot run, cudaErrorInvalidValue for a bad shape.
cudaError_t GemmBf16Sm90(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* c, int m, int n, int k,
                         const GemmPool& pool, cudaStream_t stream);

// The raster's group of M tiles (8 unless set; <= 0 resets), for the bench.
void SetGemmSm90GroupMForBench(int group_m);

}  // namespace seer::cuda
