// What a lossy KV wire costs the decode side: the prompt's KV goes from the
// prefill's cache to a decode cache through a wire encoding (the cache's own
// type, bf16, or fp8 E4M3 with per-(head, block of tokens) scales,
// kernels/kv_quant), and the decode steps that read it are compared with
// those of a bf16 transfer (what a CUDA prefill sends today).
//
// Next-token logits: for each decode step, ||l - l_bf16|| / ||l_bf16||. Greedy
// agreement: the steps whose argmax equals the bf16 run's. Both runs are
// teacher-forced on the bf16 run's greedy tokens, so one disagreement does
// not make every later step differ.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/engine.h"
#include "engine/kv/kv_cache.h"

namespace seer {

enum class KvWireEncoding {
  kExact,  // the cache's own element type (no rounding beyond it)
  kBf16,  // bf16, as a CUDA prefill sends (F32 caches are rounded to nearest even)
  kFp8E4m3  // E4M3 codes with a float32 scale per (head, block_tokens tokens)
};

std::string KvWireEncodingName(KvWireEncoding e);

// Moves tokens [0, tokens) of every layer of `src` into `dst` as they would
// arrive over a wire in `encoding`. Layers, heads and head_dim must match;
// `dst` needs capacity >= tokens.
Status CopyKvThroughWire(const KvCache& src, int tokens, KvWireEncoding encoding, int block_tokens, KvCache* dst);

// A device-side copy for caches the host path would be slow on (the CUDA
// engine's, tens of GB): returns true when it handled the copy (and sets
// *status), false to fall back to CopyKvThroughWire.
using KvWireCopier = std::function<bool(const KvCache& src, int tokens, KvWireEncoding encoding, int block_tokens,
                                        KvCache* dst, Status* status)>;

struct KvWireErrorReport {
  KvWireEncoding encoding = KvWireEncoding::kFp8E4m3;
  int prompt_tokens = 0;
  int steps = 0;
  // Per decode step against the bf16 transfer.
  std::vector<double> logits_rel_error;
  double mean_rel_error = 0.0;
  double max_rel_error = 0.0;
  int greedy_agree = 0;  // steps with the same argmax as the bf16 run
  int64_t wire_bytes = 0;  // K and V (and scales) the encoding puts on the wire
};

// Prefills `ids` once, then for each encoding decodes `steps` tokens from a
// cache filled through that encoding; each report compares with the bf16
// transfer's decode. `copier` (optional) takes over the copies it can do.
StatusOr<std::vector<KvWireErrorReport>> MeasureKvWireError(Engine& engine, std::span<const int32_t> ids,
                                                            const PrefillOptions& options, int steps,
                                                            std::span<const KvWireEncoding> encodings, int block_tokens,
                                                            const KvWireCopier& copier = nullptr);

// Bytes of K and V of `tokens` tokens over every layer in `encoding`.
int64_t KvWireBytes(const KvLayout& layout, int tokens, KvWireEncoding encoding, int block_tokens);

}  // namespace seer
