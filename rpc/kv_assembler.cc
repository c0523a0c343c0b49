#include "rpc/kv_assembler.h"

#include <cstdio>
#include <string>

#include "rpc/kv_wire.h"

namespace seer {
namespace {

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string I(int64_t v) { return std::to_string(v); }

Status Mismatch(const char* field, const std::string& got, const std::string& want) {
  return FailedPrecondition(std::string("layout header ") + field + ": the prefill sends " + got +
                            ", this decode worker's model has " + want);
}

}  // namespace

KvAssembler::KvAssembler(const ExpectedLayout& expected, int first_token, int seq_len, KvCache* cache)
    : expected_(expected),
      first_(first_token),
      seq_len_(seq_len),
      cache_(cache),
      next_token_(expected.num_layers, first_token) {}

void KvAssembler::Rebind(int first_token, KvCache* cache) {
  first_ = first_token;
  cache_ = cache;
  next_token_.assign(expected_.num_layers, first_token);
}

bool IsKvFromDeclined(const Status& status) {
  return status.code() == StatusCode::kAborted &&
         status.message().find("layout header kv_first_token") != std::string_view::npos;
}

Status KvAssembler::OnHeader(const v1::LayoutHeader& h) {
  if (has_header_) return DataLoss("prefill stream: a second layout header");
  if (h.model_fingerprint() != expected_.fingerprint)
    return Mismatch("model_fingerprint", Hex(h.model_fingerprint()),
                    Hex(expected_.fingerprint) + " (a different checkpoint)");
  if (h.num_layers() != expected_.num_layers) return Mismatch("num_layers", I(h.num_layers()), I(expected_.num_layers));
  if (h.num_kv_heads() != expected_.num_kv_heads)
    return Mismatch("num_kv_heads", I(h.num_kv_heads()), I(expected_.num_kv_heads));
  if (h.head_dim() != expected_.head_dim) return Mismatch("head_dim", I(h.head_dim()), I(expected_.head_dim));
  if (h.vocab_size() != expected_.vocab_size) return Mismatch("vocab_size", I(h.vocab_size()), I(expected_.vocab_size));
  std::optional<DType> dtype = FromWireDtype(h.kv_dtype());
  if (!dtype)
    return FailedPrecondition("layout header kv_dtype: " + v1::KvDtype_Name(h.kv_dtype()) +
                              " is not one this decode worker reads (F32, BF16, F16)");
  if (h.seq_len() != seq_len_)
    return DataLoss("layout header seq_len: " + I(h.seq_len()) + ", but the request has " + I(seq_len_) + " tokens");
  if (h.kv_first_token() < first_) {
    // The prefill declined the prefix this worker holds (another selection
    // for this prompt, or a server that predates kv_from_token).
    return Status(StatusCode::kAborted, "layout header kv_first_token: the prefill sends from position " +
                                            I(h.kv_first_token()) + ", not from " + I(first_) +
                                            " as kv_from_token asked (it did not take the prefix held here)");
  }
  if (h.kv_first_token() != first_)
    return DataLoss("layout header kv_first_token: " + I(h.kv_first_token()) + ", but the request asked from " +
                    I(first_));
  if (cache_->capacity() < seq_len_)
    return Internal("KV cache capacity " + I(cache_->capacity()) + " < " + I(seq_len_) + " tokens");
  wire_dtype_ = *dtype;
  token_bytes_ = static_cast<size_t>(expected_.num_kv_heads) * expected_.head_dim * DTypeSize(wire_dtype_);
  has_header_ = true;
  return OkStatus();
}

Status KvAssembler::OnChunk(const v1::KvChunk& c) {
  if (!has_header_) return DataLoss("prefill stream: a KV chunk before the layout header");
  if (c.layer() < 0 || c.layer() >= expected_.num_layers)
    return DataLoss("KV chunk layer: " + I(c.layer()) + " is out of range [0, " + I(expected_.num_layers) + ")");
  int& next = next_token_[c.layer()];
  if (c.token_start() != next)
    return DataLoss("KV chunk token_start: " + I(c.token_start()) + " for layer " + I(c.layer()) + ", expected " +
                    I(next) + " (chunks of a layer come in token order, without gaps)");
  if (c.token_count() < 1 || c.token_count() > seq_len_ - next)
    return DataLoss("KV chunk token_count: " + I(c.token_count()) + " at token " + I(next) + " of layer " +
                    I(c.layer()) + " is out of range [1, " + I(seq_len_ - next) + "]");
  const size_t want = token_bytes_ * static_cast<size_t>(c.token_count());
  if (c.k().size() != want || c.v().size() != want)
    return DataLoss("KV chunk k/v: " + I(static_cast<int64_t>(c.k().size())) + " and " +
                    I(static_cast<int64_t>(c.v().size())) + " bytes for " + I(c.token_count()) + " tokens of layer " +
                    I(c.layer()) + ", expected " + I(static_cast<int64_t>(want)) + " each (" +
                    I(expected_.num_kv_heads) + " heads x " + I(expected_.head_dim) + " x " +
                    std::string(DTypeName(wire_dtype_)) + ")");
  SEER_RETURN_IF_ERROR(
      cache_->WriteLayer(c.layer(), c.token_start(), c.token_count(), wire_dtype_, c.k().data(), c.v().data()));
  next += c.token_count();
  bytes_ += static_cast<int64_t>(2 * want);
  ++chunks_;
  return OkStatus();
}

Status KvAssembler::CheckChunk(int layer, int token_start, int token_count, int64_t bytes) {
  if (!has_header_) return DataLoss("prefill stream: a KV chunk before the layout header");
  if (layers_sent_ > 0) return DataLoss("prefill stream: a KV chunk on an NCCL transfer");
  if (layer < 0 || layer >= expected_.num_layers)
    return DataLoss("KV chunk layer: " + I(layer) + " is out of range [0, " + I(expected_.num_layers) + ")");
  int& next = next_token_[layer];
  if (token_start != next)
    return DataLoss("KV chunk token_start: " + I(token_start) + " for layer " + I(layer) + ", expected " + I(next) +
                    " (chunks of a layer come in token order, without gaps)");
  if (token_count < 1 || token_count > seq_len_ - next)
    return DataLoss("KV chunk token_count: " + I(token_count) + " at token " + I(next) + " of layer " + I(layer) +
                    " is out of range [1, " + I(seq_len_ - next) + "]");
  next += token_count;
  bytes_ += bytes;
  ++chunks_;
  return OkStatus();
}

Status KvAssembler::OnLayerSent(int layer, int64_t bytes) {
  if (!has_header_) return DataLoss("prefill stream: a layer marker before the layout header");
  if (chunks_ > 0) return DataLoss("prefill stream: a layer marker on a gRPC transfer");
  if (layer < 0 || layer >= expected_.num_layers)
    return DataLoss("prefill stream layer_sent: layer " + I(layer) + " is out of range [0, " + I(expected_.num_layers) +
                    ")");
  if (layer != layers_sent_)
    return DataLoss("prefill stream layer_sent: layer " + I(layer) + ", expected " + I(layers_sent_) +
                    " (layers come in order, once each)");
  next_token_[layer] = seq_len_;
  bytes_ += bytes;
  ++layers_sent_;
  return OkStatus();
}

Status KvAssembler::OnSummary(const v1::PrefillSummary& s) {
  if (!has_header_) return DataLoss("prefill stream: a summary before the layout header");
  for (int layer = 0; layer < expected_.num_layers; ++layer)
    if (next_token_[layer] != seq_len_)
      return DataLoss("prefill stream: layer " + I(layer) + " has " + I(next_token_[layer]) + " of " + I(seq_len_) +
                      " tokens at the summary");
  if (s.last_logits_size() != expected_.vocab_size)
    return DataLoss("prefill summary last_logits: " + I(s.last_logits_size()) + " values, expected vocab_size " +
                    I(expected_.vocab_size));
  cache_->set_length(seq_len_);
  return OkStatus();
}

}  // namespace seer
