#include "rpc/request_validation.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "rpc/kv_wire.h"

namespace seer {
namespace {

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string Int(int64_t v) { return std::to_string(v); }

}  // namespace

Status ValidateRequestId(const std::string& request_id) {
  if (request_id.size() > kMaxRequestIdBytes)
    return InvalidArgument("request_id: " + Int(static_cast<int64_t>(request_id.size())) +
                           " bytes exceed the limit of " + Int(kMaxRequestIdBytes));
  for (size_t i = 0; i < request_id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request_id[i]);
    if (c < 0x20 || c > 0x7e) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", c);
      return InvalidArgument("request_id: byte " + Int(static_cast<int64_t>(i)) + " (" + hex +
                             ") is not printable ASCII");
    }
  }
  return OkStatus();
}

Status ValidateTokenIds(const google::protobuf::RepeatedField<int32_t>& ids, const RequestLimits& limits) {
  if (ids.empty()) return InvalidArgument("token_ids: empty; a prompt needs at least 1 token");
  if (static_cast<int64_t>(ids.size()) > limits.max_prompt_tokens) {
    return InvalidArgument("token_ids: " + Int(ids.size()) + " tokens exceed the limit of " +
                           Int(limits.max_prompt_tokens) + " (" + limits.max_prompt_source + ")");
  }
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= limits.vocab_size)
      return InvalidArgument("token_ids[" + Int(i) + "]: " + Int(ids[i]) + " is out of range [0, " +
                             Int(limits.vocab_size) + ") (the model's vocab_size)");
  }
  return OkStatus();
}

StatusOr<RequestedSparsity> ValidateSparsity(const v1::Sparsity& s) {
  RequestedSparsity out;
  if (s.has_last_block_dense()) out.last_block_dense = s.last_block_dense();
  const bool threshold_set = s.threshold() != 0.0;
  const bool nz_set = s.nz_ratio() != 0.0;
  switch (s.mode()) {
    case v1::Sparsity::MODE_UNSPECIFIED:
    case v1::Sparsity::MODE_DENSE:
      if (threshold_set)
        return InvalidArgument("sparsity.threshold: set to " + Num(s.threshold()) + " but sparsity.mode is " +
                               v1::Sparsity::Mode_Name(s.mode()) + " (use MODE_THRESHOLD)");
      if (nz_set)
        return InvalidArgument("sparsity.nz_ratio: set to " + Num(s.nz_ratio()) + " but sparsity.mode is " +
                               v1::Sparsity::Mode_Name(s.mode()) + " (use MODE_NZ_RATIO)");
      out.server_default = s.mode() == v1::Sparsity::MODE_UNSPECIFIED;
      out.config.mode = SparsityMode::kDense;
      return out;
    case v1::Sparsity::MODE_THRESHOLD:
      if (!std::isfinite(s.threshold()) || s.threshold() < 0.0 || s.threshold() >= 1.0)
        return InvalidArgument("sparsity.threshold: " + Num(s.threshold()) + " is out of range [0, 1)");
      if (nz_set) return InvalidArgument("sparsity.nz_ratio: set, but sparsity.mode is MODE_THRESHOLD");
      out.server_default = false;
      out.config.mode = SparsityMode::kThreshold;
      out.config.threshold = s.threshold();
      return out;
    case v1::Sparsity::MODE_NZ_RATIO:
      if (!std::isfinite(s.nz_ratio()) || s.nz_ratio() <= 0.0 || s.nz_ratio() > 1.0)
        return InvalidArgument("sparsity.nz_ratio: " + Num(s.nz_ratio()) + " is out of range (0, 1]");
      if (threshold_set) return InvalidArgument("sparsity.threshold: set, but sparsity.mode is MODE_NZ_RATIO");
      out.server_default = false;
      out.config.mode = SparsityMode::kNzRatio;
      out.config.nz_ratio = s.nz_ratio();
      return out;
    default:
      return InvalidArgument("sparsity.mode: " + Int(static_cast<int>(s.mode())) +
                             " is not a known mode (MODE_DENSE, MODE_THRESHOLD or MODE_NZ_RATIO)");
  }
}

StatusOr<SparsityConfig> ResolveSparsity(const RequestedSparsity& requested, const GateWeights* gates) {
  SparsityConfig out;
  if (requested.server_default) {
    out = gates ? gates->config.sparsity : SparsityConfig{};
  } else {
    if (requested.config.mode != SparsityMode::kDense && gates == nullptr)
      return FailedPrecondition("sparsity.mode: " + SparsityToString(requested.config) +
                                " needs attention gates, and this prefill server runs without --gates");
    out = requested.config;
    out.last_block_dense = gates ? gates->config.sparsity.last_block_dense : true;
  }
  if (requested.last_block_dense) out.last_block_dense = *requested.last_block_dense;
  return out;
}

StatusOr<SamplingParams> ValidateSampling(const v1::Sampling& s, int vocab_size, uint64_t fresh_seed) {
  SamplingParams p;
  if (!std::isfinite(s.temperature()) || s.temperature() < 0.0f || s.temperature() > kMaxTemperature)
    return InvalidArgument("sampling.temperature: " + Num(s.temperature()) + " is out of range [0, " +
                           Num(kMaxTemperature) + "] (0 is greedy)");
  if (s.top_k() < 0 || s.top_k() > vocab_size)
    return InvalidArgument("sampling.top_k: " + Int(s.top_k()) + " is out of range [0, " + Int(vocab_size) +
                           "] (0 keeps every token; the limit is the model's vocab_size)");
  if (!std::isfinite(s.top_p()) || s.top_p() < 0.0f || s.top_p() > 1.0f)
    return InvalidArgument("sampling.top_p: " + Num(s.top_p()) + " is out of range [0, 1] (0 means 1)");
  p.temperature = s.temperature();
  p.top_k = s.top_k();
  p.top_p = s.top_p() == 0.0f ? 1.0 : s.top_p();
  p.seed = s.has_seed() ? s.seed() : fresh_seed;
  return p;
}

size_t MaxRequestBytes(const RequestLimits& limits) {
  // Every varint of a valid field is at most 10 bytes; 4 KiB covers tags,
  // lengths and the small scalar fields.
  return 4096 + kMaxRequestIdBytes + static_cast<size_t>(limits.max_prompt_tokens) * 10 +
         static_cast<size_t>(kMaxStopTokens) * 10;
}

namespace {

Status ValidateRequestSize(const google::protobuf::Message& request, const RequestLimits& limits) {
  const size_t bytes = request.ByteSizeLong();
  if (bytes > MaxRequestBytes(limits))
    return InvalidArgument("request: " + Int(static_cast<int64_t>(bytes)) + " serialized bytes exceed the limit of " +
                           Int(static_cast<int64_t>(MaxRequestBytes(limits))) +
                           " (the valid fields fit well within it; the rest are unknown fields)");
  return OkStatus();
}

}  // namespace

Status ValidatePrefillRequest(const v1::PrefillRequest& r, const RequestLimits& limits) {
  SEER_RETURN_IF_ERROR(ValidateRequestId(r.request_id()));
  SEER_RETURN_IF_ERROR(ValidateTokenIds(r.token_ids(), limits));
  SEER_RETURN_IF_ERROR(ValidateSparsity(r.sparsity()).status());
  if (r.max_chunk_bytes() != 0 && (r.max_chunk_bytes() < kMinChunkBytes ||
                                   r.max_chunk_bytes() > limits.max_chunk_bytes))
    return InvalidArgument("max_chunk_bytes: " + Int(r.max_chunk_bytes()) + " is out of range [" +
                           Int(kMinChunkBytes) + ", " + Int(limits.max_chunk_bytes) +
                           "] (0 takes the server's --chunk-bytes)");
  return ValidateRequestSize(r, limits);
}

Status ValidateGenerateRequest(const v1::GenerateRequest& r, const RequestLimits& limits) {
  SEER_RETURN_IF_ERROR(ValidateRequestId(r.request_id()));
  SEER_RETURN_IF_ERROR(ValidateTokenIds(r.token_ids(), limits));
  if (r.max_new_tokens() < 1 || r.max_new_tokens() > limits.max_new_tokens)
    return InvalidArgument("max_new_tokens: " + Int(r.max_new_tokens()) + " is out of range [1, " +
                           Int(limits.max_new_tokens) + "] (the server's --max-new-tokens)");
  const int64_t total = static_cast<int64_t>(r.token_ids_size()) + r.max_new_tokens();
  if (total > limits.max_positions)
    return InvalidArgument("max_new_tokens: " + Int(r.max_new_tokens()) + " new tokens after " +
                           Int(r.token_ids_size()) + " prompt tokens exceed the model's max_position_embeddings " +
                           Int(limits.max_positions));
  SEER_RETURN_IF_ERROR(ValidateSampling(r.sampling(), limits.vocab_size, 0).status());
  SEER_RETURN_IF_ERROR(ValidateSparsity(r.sparsity()).status());
  if (r.stop_token_ids_size() > kMaxStopTokens)
    return InvalidArgument("stop_token_ids: " + Int(r.stop_token_ids_size()) + " entries exceed the limit of " +
                           Int(kMaxStopTokens));
  for (int i = 0; i < r.stop_token_ids_size(); ++i) {
    const int32_t t = r.stop_token_ids(i);
    if (t < 0 || t >= limits.vocab_size)
      return InvalidArgument("stop_token_ids[" + Int(i) + "]: " + Int(t) + " is out of range [0, " +
                             Int(limits.vocab_size) + ") (the model's vocab_size)");
  }
  return ValidateRequestSize(r, limits);
}

}  // namespace seer
