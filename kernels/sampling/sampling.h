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
// NaN skipped (ArgMaxRows; u and the scratch are unused). Otherwise: with
// min_p > 0 keep the logits whose weight exp((logit - largest) /
// temperature) is at least min_p, keep the top_k largest of those (0: all;
// ties by lower id), softmax of logit /
// temperature in double shifted by the largest, keep the smallest prefix in
// descending order whose mass reaches top_p, renormalise, and return the first
// kept id, in ascending id order, at which the cumulative mass exceeds u
// (the last kept id when rounding leaves u above the total; 0 when every
// logit is NaN). Launches on `stream` and never synchronises.
cudaError_t SampleToken(const float* logits, int vocab, double temperature, int top_k, double top_p, double min_p,
                        double u, void* scratch, size_t scratch_bytes, int32_t* out, cudaStream_t stream);

// One entry of AdjustLogits: x = logits[row * vocab + id] becomes
// AdjustLogit(x, delta, repetition) (kernels/sampling/adjust.h).
struct RowLogitAdjustment {
  int32_t row;
  int32_t id;
  float delta;
  float repetition = 1.0f;  // 1: none
};

// The device twin of Sampler::Adjusted for rows of logits [rows, vocab]
// whose first row is row `first_row` of the entries' numbering: moves
// logits[(row - first_row) * vocab + id] by each entry (a (row, id) pair at
// most once; ids outside [0, vocab) and rows before first_row
// are skipped). `entries` is device memory, n of them; n = 0 launches
// nothing. When `saved` (device, [n]) is given, saved[i] receives entry i's
// logit as it was before (entries skipped leave theirs alone), so
// that LogprobChosen can find a token's raw logit afterwards.
cudaError_t AdjustLogits(float* logits, int vocab, const RowLogitAdjustment* entries, int n, int first_row,
                         cudaStream_t stream, float* saved = nullptr);

// A step's guide bans (Sampler::Refused), as bits: row r of the step (its
// number in the whole step, as RowLogitAdjustment::row) has the refused ids
// of bits[slots[r] * words ...] (id i: bit i % 64 of word i / 64), or none
// when slots[r] < 0. All three device memory; words = ceil(vocab / 64).
struct RefusedRows {
  const int32_t* slots = nullptr;
  const uint64_t* bits = nullptr;
  int words = 0;
  // Optional, [rows of the call, vocab]: for row r of a RefuseLogits call
  // that has a logprob place, raw[r * vocab + id] receives each refused id's
  // logit as the kernel found it, so that LogprobChosen (called on the same
  // rows) finds it should that id be drawn (only when every allowed logit is
  // -inf or NaN).
  float* raw = nullptr;
};

// After AdjustLogits, the guides' bans on rows [0, rows) of logits [rows,
// vocab], which are rows first_row.. of the step: each refused logit x
// becomes x + -inf (AdjustLogit(x, -inf, 1), as Sampler::Adjusted). places
// as LogprobRows' (null: row r's place is r): a row with none keeps no raw
// logits. A 16 KB
// bit row replaces the up to vocab 16-byte entries a ban per id would take.
cudaError_t RefuseLogits(float* logits, int rows, int vocab, int first_row, const int32_t* places,
                         const RefusedRows& refused, cudaStream_t stream);

// --- Logprobs: the device twin of seer::LogprobsOf -------------------------
//
// A row's logprobs are computed on the device and only (1 + top_n) entries
// of 8 bytes leave it, instead of the row (vocab floats) and a millisecond
// of a host core per row at a 128k vocabulary.

// One token's log-probability; id -1 marks a place past the listable tokens
// (a row with fewer non-NaN logits than top_n).
struct DeviceLogprob {
  int32_t id;
  float logprob;
};

// A row's normaliser, as LogprobsOf computes it: log_z = max + log(sum of
// exp(x - max) over the non-NaN x, each term in float, summed in double);
// log(the number of +inf logits) when max is +inf; +inf when no logit is a
// number above -inf (then every token has logprob -inf).
struct LogprobNorm {
  double log_z;
  float max;
};

// Rows [0, rows) of logits [rows, vocab] (fp32, device). Row r goes to place
// p = places[r] (places null: p = r; rows with p < 0 are skipped), whose
// entries are out[p * (1 + top_n) ...]: entry 0 the chosen token's (tokens[r];
// left alone when tokens is null, for LogprobChosen to fill once the token is
// drawn), entries 1..top_n the top_n most likely tokens, most likely first,
// the lower id among equals, NaN never listed (LogprobsOf's order), and
// norms[p] the row's normaliser (norms may be null). top_n in [0,
// kMaxDeviceTopLogprobs]. One block per row; launches on `stream`.
inline constexpr int kMaxDeviceTopLogprobs = 20;
cudaError_t LogprobRows(const float* logits, int rows, int vocab, const int32_t* places, const int32_t* tokens,
                        int top_n, DeviceLogprob* out, LogprobNorm* norms, cudaStream_t stream);

// Entry 0 of each place for rows whose logits LogprobRows saw raw and
// AdjustLogits (with `saved`, the same `entries`, n_entries and first_row)
// and RefuseLogits (with `refused`, may be null) then changed: the raw logit
// of tokens[r] is saved[i] for the entry i of (first_row + r, tokens[r])
// when there is one, else refused->raw[r * vocab + tokens[r]] when the
// row refused it, else logits[r * vocab + tokens[r]] (never changed).
// places, top_n and out as LogprobRows'; norms from it.
cudaError_t LogprobChosen(const float* logits, int rows, int vocab, const int32_t* places, const int32_t* tokens,
                          const RowLogitAdjustment* entries, const float* saved, int n_entries, int first_row,
                          const LogprobNorm* norms, int top_n, DeviceLogprob* out, cudaStream_t stream,
                          const RefusedRows* refused = nullptr);

}  // namespace seer::cuda
