// The SeerAttention gate of one layer on the GPU (docs/GATES.md): the device
// twin of seer::cpu::RunGate (kernels/gate/gate_cpu.h). It pools the pre-RoPE q and k per
// 64-token block, projects them per Q head, applies block RoPE, scores the
// causal block triangle and selects blocks, writing the per-(head, query
// block) CSR lists that BlockSparseAttention (kernels/attention/attention.h)
// consumes, directly on the device. Nothing of size L x L is formed: the
// largest buffer is nb x nb scores for `heads_per_pass` heads at a time.
//
// All pointers are device memory. Every stage runs on `stream`; nothing
// synchronizes with the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/common/elem_type.h"
#include "kernels/gate/selection.h"

namespace seer::cuda {

struct GateParams {
  // Inputs, straight after q_proj / k_proj (bias included, before RoPE).
  ElemType dtype = ElemType::kBF16;
  const void* q = nullptr;  // [L, Hq, head_dim], token rows `q_row_stride` elements apart
  const void* k = nullptr;  // [L, Hkv, head_dim], token rows `k_row_stride` elements apart
  int64_t q_row_stride = 0;  // 0: Hq * head_dim (packed)
  int64_t k_row_stride = 0;  // 0: Hkv * head_dim (packed)
  int seq_len = 0;
  int num_heads = 0;  // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;  // D, at most 256
  int block_size = 64;  // tokens per pooled block, at most 1024
  int hidden = 0;  // gate hidden size (even, at most 512)

  // Weights, float32. k_weight is mask_linear_k [k_weight_heads, 3 * D,
  // hidden], applied as x . W; Q head h uses W[h / (Hq / k_weight_heads)].
  // q_weight is mask_linear_q [Hq, D, hidden] or null (then the pooled Q goes
  // straight to RoPE and hidden must equal D).
  const float* k_weight = nullptr;
  const float* q_weight = nullptr;
  int k_weight_heads = 0;  // 0 = Hq; Hkv for force_double gates (with q_weight)
  // True only when every value of k_weight and q_weight is exactly a tf32
  // value (its low 13 significand bits zero), as every weight loaded from
  // BF16 or F16 is (WeightsAreTf32 tells). The tensor-core projections
  // split each float32 operand into tf32 hi and lo parts and take three
  // products; a weight's lo part is then zero, so they skip its product and
  // its loads. The scores and lists are the same bits either way. Set on
  // weights that are not tf32, the projections drop the weights' lo parts:
  // close, but no longer the CPU gate's products.
  bool weights_tf32 = false;
  // RoPE inverse frequencies for rotary dim = hidden: hidden / 2 floats
  // (seer::RopeInvFreq cast to float, llama3 scaling applied). Angles are
  // float(position) * inv_freq[i] in float32, like HF and the CPU gate.
  const float* rope_inv_freq = nullptr;

  // Selection (kernels/gate/selection.h), valid by construction: threshold in
  // [0, 1), nz_ratio in (0, 1]. kNzRatio keeps NzRatioTopK causal blocks per
  // row; equal scores go to the lower block index.
  SparsityMode mode = SparsityMode::kDense;
  double threshold = 0.0;
  double nz_ratio = 1.0;
  bool last_block_dense = true;

  // Outputs.
  int32_t* block_offsets = nullptr;  // [Hq * nb + 1]
  int32_t* block_indices = nullptr;  // capacity `index_capacity`, >= GateMaxIndices()
  int64_t index_capacity = 0;
  int64_t* kept_per_head = nullptr;  // [Hq] kept blocks per head, or null
  float* probs = nullptr;  // [Hq, nb, nb] causal softmax, 0 above the diagonal, or null

  // Scratch from the caller, at least GateWorkspaceBytes(*this) bytes,
  // 256-byte aligned.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Heads whose nb x nb scores are held at once; 0 = all heads.
  int heads_per_pass = 0;
};

// Whether every one of the n host floats is exactly a tf32 value (for
// GateParams::weights_tf32).
bool WeightsAreTf32(const float* host, size_t n);

// nb = ceil(seq_len / block_size); 0 for a bad shape.
int GateNumBlocks(const GateParams& p);

// Scratch that RunGateKernels needs for these shapes and heads_per_pass.
size_t GateWorkspaceBytes(const GateParams& p);

// The most block indices the selection can keep: the whole causal triangle
// for dense and threshold, less for nz_ratio.
int64_t GateMaxIndices(const GateParams& p);

// Runs the gate. Returns cudaErrorInvalidValue for an unsupported shape, a
// missing pointer, too small a workspace or index capacity; otherwise the
// first launch error.
cudaError_t RunGateKernels(const GateParams& p, cudaStream_t stream);

// The gate's kernel sets, for tests and the benchmark. Both select exactly
// the same blocks. RunGateKernels runs kAuto.
enum class GateVariant {
  kAuto,  // kFused up to 192 blocks (12k tokens at block 64), kUnfused beyond
  kFused,  // scores and selection in one kernel, no nb x nb scratch
  kUnfused,  // scores into an nb x nb scratch per head, then a select kernel
};
cudaError_t RunGateKernelsVariant(const GateParams& p, GateVariant variant, cudaStream_t stream);
// Scratch for one variant (GateWorkspaceBytes is kAuto's); kFused fails with
// cudaErrorInvalidValue where the rows do not fit (about 3M tokens).
size_t GateWorkspaceBytesVariant(const GateParams& p, GateVariant variant);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: with `portable` true,
// every later gate in the process pools with the portable kernel (16-byte
// loads, any GPU) even where the sm_90 bulk-copy pool would run, so that a
// Hopper GPU tests both; false restores the default. Returns whether this
// device runs the bulk-copy pool by default.
bool UsePortablePoolForTest(bool portable);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: with `simt` true, every
// later gate in the process projects with the float32 SIMT kernels (fmaf
// chains in channel order) instead of on tensor cores; the unfused gate also
// scores with them (the fused gate's order, so both gates give the same
// bits) and rotates q' in a separate pass. false restores the default.
void UseSimtUnfusedGateForTest(bool simt);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: with `mma_sync` true,
// every later unfused gate in the process projects and scores on tensor
// cores with the mma.sync kernels (any GPU from sm_80) even where the sm_90
// wgmma kernels would run; false restores the default. Returns whether this
// device runs the wgmma kernels by default (scores where hidden % 16 == 0,
// the projection of k' where also hidden == 128, 3 * head_dim % 16 == 0
// and there is no mask_linear_q).
bool UseMmaSyncForTest(bool mma_sync);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: with `lockstep` true,
// every later unfused gate in the process scores its fp16 stripes with the
// lockstep kernel (all threads copy, a CTA barrier a step) instead of the
// one whose loads and stores go through the copy engine; false restores
// the default. Returns whether this device runs the latter by default
// where the stripes are fp16 (the two must give the same bits).
bool UseLockstepStripesForTest(bool lockstep);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: the gate's pool step
// alone. Writes the pooled Q ([nb, num_heads * head_dim], each channel's
// average over its block's tokens) to `pooled_q` and the pooled K ([nb *
// num_kv_heads, 3 * head_dim]: max, min and average of each channel) to
// `pooled_k`, both float32 device memory, with the kernel RunGateKernels
// would run (the sm_90 bulk-copy pool, or the portable one under
// UsePortablePoolForTest). Uses p's dtype, q, k, row strides and shapes.
// Returns cudaErrorInvalidValue for a bad shape, pointer or stride, or
// seq_len 0; otherwise the launch error.
cudaError_t RunGatePoolForTest(const GateParams& p, float* pooled_q, float* pooled_k, cudaStream_t stream);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: the gate's select step
// alone, on scores the caller gives instead of the gate's own. `scores` is
// device memory [num_heads, nb, nb] (16-byte aligned), row (h, qb) holding the
// scores of key blocks 0 .. qb (entries above the diagonal are not read). It
// runs the unfused gate's select kernel (then, for threshold, its scan and
// fill kernels) on them and writes block_offsets, block_indices,
// kept_per_head and probs (where not null) as RunGateKernels would for those
// scores. Uses p's shapes (seq_len, block_size for nb, and the rest as
// RunGateKernels checks them), selection and outputs; q, k, the weights and
// heads_per_pass are not used; the workspace must hold
// GateWorkspaceBytesVariant(p, GateVariant::kUnfused) bytes. Modes kDense,
// kNzRatio and kThreshold. Returns cudaErrorInvalidValue for a bad shape,
// mode, pointer, workspace or index capacity, or seq_len 0; otherwise the
// first launch error. With `scores_are_keys` (kDense and kNzRatio, probs
// null) `scores` holds each score's order key instead, as the gate's
// scores kernels write it where nothing reads the probabilities: the
// float's bits, flipped so that unsigned order is the scores' order
// (negative: all bits; else the sign bit), with -0.0 as +0.0 and every
// NaN as 0xffffffff.
cudaError_t RunGateSelectForTest(const GateParams& p, const float* scores, cudaStream_t stream,
                                 bool scores_are_keys = false);

// TEST HOOK, for kernels/gate/gate_gpu_test.cc only: where the select reads
// order keys, its top-k rows of 256 blocks or more first histogram the keys
// in a bracket that a sample of 32 of them suggests, and find the row's
// range only when the bracket misses the kept keys' boundary. With `rank`
// >= 0 (0 .. 31) every later select in the process brackets from that
// sampled key (0 = the largest; 31 and above: the smallest), in rows of any
// length, so that a test can make the bracket miss on purpose; rank < 0
// restores the default.
void SampleSelectRankForTest(int rank);

// The lists a prefill's last layer needs (its other rows feed nothing): each
// head keeps its last query block's list, every other row is empty, and the
// kept rows are compacted in head order. In: CSR lists (offsets
// [num_heads * nb + 1], indices), or both null for the dense causal lists.
// Out: offsets [num_heads * nb + 1] and indices (capacity num_heads * nb).
// Device memory, on `stream`, no host synchronisation. The device twin of
// seer::KeepLastQueryBlock (kernels/common/block_lists.h). Returns
// cudaErrorInvalidValue for a bad shape or pointer, else the launch error.
cudaError_t KeepLastQueryBlock(const int32_t* offsets, const int32_t* indices, int num_heads, int nb,
                               int32_t* out_offsets, int32_t* out_indices, cudaStream_t stream);

// kept_per_head[h] = the blocks kept in head h's query-block rows
// first_block .. nb-1 of the CSR lists `offsets` ([num_heads * nb + 1]): a
// prefill continuing from a cached prefix counts the rows it computes.
// Device memory, on `stream`. cudaErrorInvalidValue for a bad shape or
// pointer, else the launch error.
cudaError_t CountKeptFrom(const int32_t* offsets, int num_heads, int nb, int first_block, int64_t* kept_per_head,
                          cudaStream_t stream);

#if defined(SEER_GATE_TRACE)
// Diagnostics only (-DSEER_GATE_TRACE): forget the fused gate's CTA records,
// and print a summary of those since.
cudaError_t GateTraceReset();
cudaError_t GateTracePrint(const char* title);
#endif

}  // namespace seer::cuda
