// The receiving end of a Prefill stream: checks the layout header against the
// local model and writes each KvChunk into a KvCache, checking every size,
// range and the order of the chunks.
//
// With the KV transports (docs/KV_TRANSPORT.md) the bytes land elsewhere (a
// KvLanding, or NCCL straight into the cache); the assembler keeps the order
// and range bookkeeping: CheckChunk before a chunk lands, OnLayerSent for a
// layer that NCCL moves whole. Not thread-safe: a caller with several
// streams serialises the calls.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "seer/v1/seer.pb.h"

namespace seer {

// What this decode worker's model expects of a Prefill stream.
struct ExpectedLayout {
  uint64_t fingerprint = 0;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
};

// Whether a fetch failed because the prefill declined kv_from_token (the
// assembler's ABORTED at the header): the caller may fetch the whole prompt.
bool IsKvFromDeclined(const Status& status);

class KvAssembler {
 public:
  // `cache` (not owned) must hold at least `seq_len` tokens; positions
  // [first_token, seq_len) are asked for (PrefillRequest.kv_from_token), the
  // rest the cache holds already.
  KvAssembler(const ExpectedLayout& expected, int first_token, int seq_len, KvCache* cache);

  // The first message. FAILED_PRECONDITION naming the field when the prefill
  // serves another model or layout; DATA_LOSS for a header that contradicts
  // the request (seq_len, a kv_first_token past the one asked) or comes
  // twice; ABORTED (IsKvFromDeclined) when the prefill sends from an earlier
  // position than asked: it did not take the prefix this worker holds.
  Status OnHeader(const v1::LayoutHeader& header);
  // Before the header: assemble positions [first_token, seq_len) into
  // `cache` instead (a decode worker whose held positions the prefill
  // declined lands the whole prompt elsewhere).
  void Rebind(int first_token, KvCache* cache);
  // DATA_LOSS naming the field for a chunk before the header, out of range,
  // out of order, or with K/V sizes that do not match the layout.
  Status OnChunk(const v1::KvChunk& chunk);
  // The bookkeeping of a chunk that a KvLanding writes (which checks its
  // sizes): DATA_LOSS for a chunk before the header, of a layer out of
  // range, or out of token order. `bytes`: its K and V bytes on the wire.
  Status CheckChunk(int layer, int token_start, int token_count, int64_t bytes);
  // KV_TRANSPORT_NCCL: layer `layer` comes whole over the link; layers are
  // announced once each, in order (DATA_LOSS otherwise).
  Status OnLayerSent(int layer, int64_t bytes);
  // After the summary: every layer covers [first_token, seq_len) and the logits have
  // vocab_size entries. Sets the cache's length.
  Status OnSummary(const v1::PrefillSummary& summary);

  bool has_header() const { return has_header_; }
  int64_t bytes() const { return bytes_; }
  int chunks() const { return chunks_; }

 private:
  ExpectedLayout expected_;
  int first_;
  int seq_len_;
  KvCache* cache_;
  bool has_header_ = false;
  DType wire_dtype_ = DType::kF32;
  size_t token_bytes_ = 0;  // K (or V) bytes of one token of one layer, on the wire
  std::vector<int> next_token_;  // per layer: tokens received so far
  int64_t bytes_ = 0;
  int chunks_ = 0;
  int layers_sent_ = 0;
};

}  // namespace seer
