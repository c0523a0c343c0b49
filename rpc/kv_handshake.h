// The KV transport handshake (docs/KV_TRANSPORT.md), as functions of the
// messages and each side's state, so that both services call the same checked
// logic:
//   decode worker   MakeTransportOffer -> PrefillRequest.transport_offer / kv_wire
//   prefill         CheckTransportOffer, then ChooseKvTransport -> LayoutHeader fields
//   decode worker   CheckHeaderTransport on the header it gets back
// No I/O here: link lookups are the caller's (the NCCL link registries).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/status.h"
#include "engine/kv/kv_cache.h"
#include "seer/v1/seer.pb.h"

namespace seer {

inline constexpr int kMaxKvGrpcStreams = 16;
inline constexpr int kMaxOfferedLinks = 16;
inline constexpr size_t kMaxInstanceIdBytes = 64;
// Room PrefillRequest needs for a full offer and kv_wire: MaxRequestBytes
// (rpc/requests.h) grows by this much.
inline constexpr size_t kMaxTransportOfferBytes =
    64 + 4 * kMaxInstanceIdBytes + kMaxOfferedLinks * (kMaxInstanceIdBytes + 24);
// fp8 scale block: tokens per float32 scale, per KV head (kernels/kv_quant).
inline constexpr int kFp8ScaleBlockTokens = 64;

// What the decode worker can take.
struct KvReceiverCaps {
  int grpc_streams = 1;  // KvStream calls it will open, plus its Prefill call
  bool nccl = false;  // built with NCCL, --kv-transports has nccl, a CUDA engine
  std::string decode_instance, gpu_uuid, host;
  int nccl_version = 0;
  // Its ready links, by prefill instance.
  std::vector<std::pair<std::string, uint64_t>> ready_links;
};
v1::KvTransportOffer MakeTransportOffer(const KvReceiverCaps& caps);

// INVALID_ARGUMENT naming the field ("transport_offer.grpc_streams", ...).
Status CheckTransportOffer(const v1::KvTransportOffer& offer);

// What the prefill server can send.
struct KvSenderCaps {
  std::string prefill_instance;
  int max_grpc_streams = 1;  // --kv-grpc-streams
  bool allow_fp8 = false;  // --allow-kv-fp8
  bool nccl = false;  // built with NCCL, --kv-transports has nccl, a CUDA engine
  std::string gpu_uuid;
  int nccl_version = 0;
};

// The prefill's NCCL links with the offering decode process, as its registry
// knows them.
struct KvLinkLookup {
  uint64_t ready_link = 0;  // a ready link the decode also lists as ready (0: none)
  bool setting_up = false;  // a link with that decode process is still joining
};

struct KvTransportChoice {
  v1::KvTransport transport = v1::KV_TRANSPORT_GRPC;
  int grpc_streams = 1;
  v1::KvWire wire = v1::KV_WIRE_UNSPECIFIED;
  int scale_block_tokens = 0;
  uint64_t nccl_link = 0;  // transport NCCL: the link to use
  bool start_link = false;  // set up a new link (this request stays gRPC)
  // Why an offered transport or encoding is not used; "" when all were.
  std::string fallback_reason;
  // The same as short codes for the fallbacks metric ("" when not a
  // fallback): nccl "not_sent", "same_gpu", "version", "setting_up",
  // "no_link"; fp8 "nccl", "refused".
  std::string nccl_fallback, fp8_fallback;
};

// The prefill's decision for one request (its offer already checked).
KvTransportChoice ChooseKvTransport(const v1::PrefillRequest& request, const KvSenderCaps& sender,
                                    const KvLinkLookup& links);

// The decode worker's check of the header's transport fields against what it
// offered and asked: DATA_LOSS naming the field for a choice it did not offer
// (NCCL it cannot take, more streams, fp8 it did not ask for, a bad block).
Status CheckHeaderTransport(const v1::LayoutHeader& header, const v1::KvTransportOffer& offer, v1::KvWire asked);

// --kv-transports: a comma-separated list of "grpc" and "nccl". gRPC is
// always in it (the control stream and the fallback). INVALID_ARGUMENT
// naming `flag` otherwise.
struct KvTransportSet {
  bool nccl = false;
};
StatusOr<KvTransportSet> ParseKvTransports(const std::string& list, const std::string& flag);

// The `wire` label of the KV transport metrics: "fp8", or the element type
// ("bf16", "f32", "f16").
std::string KvWireLabel(DType dtype, bool fp8);

// Tokens per chunk for the wire encoding: KvChunk messages stay within
// `max_message_bytes`; fp8 chunks are whole scale blocks (they start on one).
StatusOr<int> TokensPerWireChunk(const KvLayout& layout, bool fp8, int64_t max_message_bytes);

}  // namespace seer
