// Thin wrappers over the Hopper PTX the sm90 kernels use: mbarriers, the bulk
// tensor copy engine (TMA), proxy fences, the wgmma fence / commit / wait
// group, shared-memory matrix descriptors and setmaxnreg. Everything here is
// sm_90 (wgmma and setmaxnreg: sm_90a); callers compile it only inside
// SEER_SM90A_ENABLED sections.
//
// Shared-memory tiles are written by TMA with the 64- or 128-byte swizzle
// (Swizzle<B,4,3>: byte-address bits [4, 4+B) XOR bits [7, 7+B), B = 2 or 3)
// and read by wgmma through descriptors with the same swizzle mode, so every
// tile starts on a 1024-byte boundary (the swizzle pattern's period).
#pragma once

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SEER_SM90A_ENABLED 1
#endif

namespace seer::cuda::sm90 {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// --- mbarrier -----------------------------------------------------------------

__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}

// Makes initialised barriers visible to the other threads and to the async
// proxy (the copy engine completes transactions on them).
__device__ __forceinline__ void FenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// `count` arrivals at once.
__device__ __forceinline__ void MbarArriveCount(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// One arrival plus `bytes` transaction bytes that copies must complete.
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

// Blocks until the phase with parity `parity` has completed.
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Whether the phase with parity `parity` has completed; does not block.
__device__ __forceinline__ bool MbarTestWait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.test_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// --- TMA ----------------------------------------------------------------------

// Copies the 3-D box at coordinates (c0, c1, c2) (innermost first, in
// elements) of the tensor map into shared memory at `dst`, completing its
// bytes on `bar`. Out-of-bounds elements are written as zeros.
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const void* tensor_map, uint32_t bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// A 4-D box at (0, c1, kC2, c3) to dst + kOffset, the offset and the
// constant coordinates immediates (no registers for them: for producers at a
// tight setmaxnreg budget).
template <int kOffset, int kC2>
__device__ __forceinline__ void TmaLoad4dAt(uint32_t dst, const void* tensor_map, uint32_t bar, int c1, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0+%5], [%1, {0, %2, %6, "
      "%3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c1), "r"(c3), "r"(bar), "n"(kOffset), "n"(kC2)
      : "memory");
}

// The same for a 4-D box at (c0, c1, c2, c3).
__device__ __forceinline__ void TmaLoad4d(uint32_t dst, const void* tensor_map, uint32_t bar, int c0, int c1, int c2,
                                          int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Copies `bytes` (a multiple of 16, both addresses 16-byte aligned) from
// global memory into shared memory at `dst`, completing them on `bar`.
__device__ __forceinline__ void BulkLoad(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// Copies shared memory at `src` into the 3-D box at (c0, c1, c2) of the
// tensor map (elements outside the tensor are not written), as one bulk
// group of this thread (BulkCommit, BulkWait*).
__device__ __forceinline__ void TmaStore3d(const void* tensor_map, uint32_t src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
                   reinterpret_cast<uint64_t>(tensor_map)),
               "r"(c0), "r"(c1), "r"(c2), "r"(src)
               : "memory");
}
__device__ __forceinline__ void BulkCommit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Until at most kPending of this thread's bulk groups still read their
// shared memory (the buffer may then be written again).
template <int kPending>
__device__ __forceinline__ void BulkWaitRead() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}
// Until at most kPending of this thread's bulk groups are incomplete.
template <int kPending>
__device__ __forceinline__ void BulkWait() {
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void PrefetchTensorMap(const void* tensor_map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
}

// Orders this thread's generic-proxy shared-memory accesses before later
// async-proxy ones (a TMA write into a buffer this thread read with ldmatrix).
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// --- wgmma --------------------------------------------------------------------

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Pins registers in place: the compiler may not move their reads or writes
// across this point (used around wgmma waits on accumulators).
template <int kN>
__device__ __forceinline__ void FenceRegs(float (&r)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int kN>
__device__ __forceinline__ void FenceRegs(uint32_t (&r)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Shared-memory matrix descriptor (PTX ISA "matrix descriptor format"):
// start address, leading and stride byte offsets (all >> 4), and the swizzle
// mode in bits 62-63 (1 = 128-byte, 2 = 64-byte). Base offset 0: every tile
// is 1024-byte aligned.
__device__ __forceinline__ uint64_t MatrixDesc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes,
                                               int swizzle_bytes) {
  const uint64_t layout = swizzle_bytes == 128 ? 1 : 2;
  return (static_cast<uint64_t>((smem_addr >> 4) & 0x3FFF)) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (layout << 62);
}

// A descriptor from its low word (start address / 16, leading byte offset)
// and its high word (stride byte offset, swizzle). Kernels that keep one
// descriptor's words and add each buffer's and k-step's start address to
// the low word (it cannot carry: shared addresses stay below 2^18) give
// ptxas one 32-bit add per wgmma.
__device__ __forceinline__ uint64_t DescWords(uint32_t lo, uint32_t hi) {
  uint64_t desc;
  asm("mov.b64 %0, {%1, %2};" : "=l"(desc) : "r"(lo), "r"(hi));
  return desc;
}

// --- registers ----------------------------------------------------------------

template <int kRegs>
__device__ __forceinline__ void SetMaxRegsInc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void SetMaxRegsDec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace seer::cuda::sm90
