#include "rpc/kv_wire.h"

#include <string>

namespace seer {

std::optional<v1::KvDtype> ToWireDtype(DType t) {
  switch (t) {
    case DType::kF32: return v1::KV_DTYPE_F32;
    case DType::kBF16: return v1::KV_DTYPE_BF16;
    case DType::kF16: return v1::KV_DTYPE_F16;
    default: return std::nullopt;
  }
}

std::optional<DType> FromWireDtype(v1::KvDtype t) {
  switch (t) {
    case v1::KV_DTYPE_F32: return DType::kF32;
    case v1::KV_DTYPE_BF16: return DType::kBF16;
    case v1::KV_DTYPE_F16: return DType::kF16;
    default: return std::nullopt;
  }
}

StatusOr<int> TokensPerChunk(const KvLayout& layout, int64_t max_message_bytes) {
  const int64_t per_token = 2 * static_cast<int64_t>(layout.LayerBytes(1));
  if (per_token <= 0) return InvalidArgument("KV layout has no bytes per token");
  const int64_t budget = max_message_bytes - kKvChunkOverheadBytes;
  if (budget < per_token)
    return InvalidArgument("chunk bytes: " + std::to_string(max_message_bytes) +
                           " is too small for one token of K and V (" + std::to_string(per_token) + " bytes plus " +
                           std::to_string(kKvChunkOverheadBytes) + " of framing)");
  const int64_t tokens = budget / per_token;
  return static_cast<int>(tokens > (1 << 30) ? (1 << 30) : tokens);
}

v1::LayoutHeader MakeLayoutHeader(const KvLayout& layout, uint64_t fingerprint, int block_size, int seq_len,
                                  int vocab_size) {
  v1::LayoutHeader h;
  h.set_model_fingerprint(fingerprint);
  h.set_num_layers(layout.num_layers);
  h.set_num_kv_heads(layout.num_kv_heads);
  h.set_head_dim(layout.head_dim);
  h.set_kv_dtype(ToWireDtype(layout.dtype).value_or(v1::KV_DTYPE_UNSPECIFIED));
  h.set_block_size(block_size);
  h.set_seq_len(seq_len);
  h.set_vocab_size(vocab_size);
  return h;
}

}  // namespace seer
