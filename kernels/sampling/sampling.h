// Token sampling on the device, the twin of seer::Sampler (kernels/sampling/sampler.h):
// the same candidates, the same distribution and the same inverse-CDF walk in
// token-id order, so one uniform u gives the token Sampler::Sample would give
// for the same logits (up to double rounding when u sits on a cumulative-mass
// boundary). Only the token id, 4 bytes, needs to leave the device.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace seer::cuda {

// Device scratch SampleToken needs for `vocab` logits (0 for vocab <= 0).
size_t SampleScratchBytes(int vocab);

// Writes one token id into *out (device memory) for logits [vocab] (fp32, on
// the device). temperature <= 0: the largest logit, the lowest id on ties,
// NaN skipped (ArgMaxRows; u and the scratch are unused). Otherwise: keep the
// top_k largest logits (0: all; ties by lower id), softmax of logit /
// temperature in double shifted by the largest, keep the smallest prefix in
// descending order whose mass reaches top_p, renormalise, and return the first
// kept id, in ascending id order, at which the cumulative mass exceeds u
// (the last kept id when rounding leaves u above the total; 0 when every
// logit is NaN). Launches on `stream` and never synchronises.
cudaError_t SampleToken(const float* logits, int vocab, double temperature, int top_k, double top_p, double u,
                        void* scratch, size_t scratch_bytes, int32_t* out, cudaStream_t stream);

// One entry of AdjustLogits: logits[row * vocab + id] += delta.
struct RowLogitAdjustment {
  int32_t row;
  int32_t id;
  float delta;
};

// The device twin of Sampler::Adjusted for rows of logits [rows, vocab]
// whose first row is row `first_row` of the entries' numbering: adds each
// entry's delta to logits[(row - first_row) * vocab + id], in float (a (row,
// id) pair at most once; ids outside [0, vocab) and rows before first_row
// are skipped). `entries` is device memory, n of them; n = 0 launches
// nothing.
cudaError_t AdjustLogits(float* logits, int vocab, const RowLogitAdjustment* entries, int n, int first_row,
                         cudaStream_t stream);

}  // namespace seer::cuda
