// Validation of every field of the Prefill and Generate requests. A bad value
// is INVALID_ARGUMENT with a message that names the field and the limit, e.g.
// "token_ids[3]: 130 is out of range [0, 128) (the model's vocab_size)".
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "base/status.h"
#include "engine/model/gates.h"
#include "kernels/sampling/sampler.h"
#include "engine/model/sparsity.h"
#include "seer/v1/seer.pb.h"

namespace seer {

inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int kMaxStopTokens = 64;
inline constexpr double kMaxTemperature = 100.0;

// What the serving model and the server's flags allow.
struct RequestLimits {
  int vocab_size = 0;
  int64_t max_positions = 0;      // the model's max_position_embeddings
  int64_t max_prompt_tokens = 0;  // at most max_positions
  std::string max_prompt_source = "the model's max_position_embeddings";  // for messages
  int max_new_tokens = 0;         // decode: --max-new-tokens
  int64_t max_chunk_bytes = 0;    // prefill: --chunk-bytes
};

// A request's sparsity, checked for range but not yet resolved against the
// server's gates.
struct RequestedSparsity {
  bool server_default = true;  // MODE_UNSPECIFIED
  SparsityConfig config;
  std::optional<bool> last_block_dense;
};

Status ValidateRequestId(const std::string& request_id);
Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, const RequestLimits& limits);
StatusOr<RequestedSparsity> ValidateSparsity(const v1::Sparsity& sparsity);
// The sparsity the engine runs: the gate checkpoint's default for
// MODE_UNSPECIFIED, dense without gates. FAILED_PRECONDITION when the request
// asks for gated sparsity and `gates` is null.
StatusOr<SparsityConfig> ResolveSparsity(const RequestedSparsity& requested, const GateWeights* gates);
// `fresh_seed` seeds requests that carry none.
StatusOr<SamplingParams> ValidateSampling(const v1::Sampling& sampling, int vocab_size, uint64_t fresh_seed);

Status ValidatePrefillRequest(const v1::PrefillRequest& request, const RequestLimits& limits);
Status ValidateGenerateRequest(const v1::GenerateRequest& request, const RequestLimits& limits);

// The largest serialized request the limits allow; anything larger carries
// fields the server does not know and is refused.
size_t MaxRequestBytes(const RequestLimits& limits);

}  // namespace seer
