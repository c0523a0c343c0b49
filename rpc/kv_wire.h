// How the KV cache travels on the wire (proto/seer/v1/seer.proto): element
// types, and how a layer is cut into KvChunk messages of bounded size.
#pragma once

#include <cstdint>
#include <optional>

#include "base/dtype.h"
#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "seer/v1/seer.pb.h"

namespace seer {

// Serialized bytes a KvChunk message (inside its PrefillResponse) needs on top
// of its K and V payload: the field tags, lengths and varints.
inline constexpr int64_t kKvChunkOverheadBytes = 256;

// The smallest --chunk-bytes / max_chunk_bytes accepted.
inline constexpr int64_t kMinChunkBytes = 64 * 1024;
// The largest --chunk-bytes: what a decode worker accepts in one message
// (PrefillClientOptions::max_receive_bytes), so that no prefill server can
// be set to send chunks its decode workers refuse.
inline constexpr int64_t kMaxChunkBytes = int64_t{64} << 20;

// KV_DTYPE_* for an engine element type; nullopt for a type the wire does not carry.
std::optional<v1::KvDtype> ToWireDtype(DType t);
std::optional<DType> FromWireDtype(v1::KvDtype t);

// Tokens per KvChunk so that a chunk message, K and V together with the
// overhead, is at most `max_message_bytes`. INVALID_ARGUMENT when not even one
// token fits.
StatusOr<int> TokensPerChunk(const KvLayout& layout, int64_t max_message_bytes);

// The header the prefill side sends for `layout`.
v1::LayoutHeader MakeLayoutHeader(const KvLayout& layout, uint64_t fingerprint, int block_size, int seq_len,
                                  int vocab_size);

}  // namespace seer
