#include "rpc/kv_handshake.h"

#include <algorithm>

#include "rpc/kv_wire.h"

namespace seer {
namespace {

std::string I(int64_t v) { return std::to_string(v); }

Status CheckId(const std::string& v, const std::string& field) {
  if (v.size() > kMaxInstanceIdBytes)
    return InvalidArgument(field + ": " + I(static_cast<int64_t>(v.size())) + " bytes, at most " +
                           I(kMaxInstanceIdBytes));
  for (unsigned char c : v)
    if (c < 0x20 || c > 0x7e) return InvalidArgument(field + ": not printable ASCII");
  return OkStatus();
}

}  // namespace

v1::KvTransportOffer MakeTransportOffer(const KvReceiverCaps& caps) {
  v1::KvTransportOffer o;
  o.set_grpc_streams(std::clamp(caps.grpc_streams, 1, kMaxKvGrpcStreams));
  if (caps.nccl) {
    v1::NcclOffer* n = o.mutable_nccl();
    n->set_decode_instance(caps.decode_instance);
    n->set_nccl_version(caps.nccl_version);
    n->set_gpu_uuid(caps.gpu_uuid);
    n->set_host(caps.host.substr(0, kMaxInstanceIdBytes));
    for (size_t i = 0; i < caps.ready_links.size() && i < static_cast<size_t>(kMaxOfferedLinks); ++i) {
      v1::NcclLinkRef* r = n->add_links();
      r->set_prefill_instance(caps.ready_links[i].first);
      r->set_link_id(caps.ready_links[i].second);
    }
  }
  return o;
}

Status CheckTransportOffer(const v1::KvTransportOffer& o) {
  if (o.grpc_streams() < 0 || o.grpc_streams() > kMaxKvGrpcStreams)
    return InvalidArgument("transport_offer.grpc_streams: " + I(o.grpc_streams()) + " is out of range [0, " +
                           I(kMaxKvGrpcStreams) + "]");
  if (!o.has_nccl()) return OkStatus();
  const v1::NcclOffer& n = o.nccl();
  if (n.decode_instance().empty())
    return InvalidArgument("transport_offer.nccl.decode_instance: empty; an NCCL offer names its process");
  SEER_RETURN_IF_ERROR(CheckId(n.decode_instance(), "transport_offer.nccl.decode_instance"));
  SEER_RETURN_IF_ERROR(CheckId(n.gpu_uuid(), "transport_offer.nccl.gpu_uuid"));
  SEER_RETURN_IF_ERROR(CheckId(n.host(), "transport_offer.nccl.host"));
  if (n.links_size() > kMaxOfferedLinks)
    return InvalidArgument("transport_offer.nccl.links: " + I(n.links_size()) + " links, at most " +
                           I(kMaxOfferedLinks));
  for (int i = 0; i < n.links_size(); ++i)
    SEER_RETURN_IF_ERROR(
        CheckId(n.links(i).prefill_instance(), "transport_offer.nccl.links[" + I(i) + "].prefill_instance"));
  return OkStatus();
}

KvTransportChoice ChooseKvTransport(const v1::PrefillRequest& request, const KvSenderCaps& sender,
                                    const KvLinkLookup& links) {
  KvTransportChoice c;
  std::string why;
  auto note = [&why](const std::string& s) { why += (why.empty() ? "" : "; ") + s; };
  const v1::KvTransportOffer& o = request.transport_offer();
  c.grpc_streams =
      std::clamp(std::min(o.grpc_streams() > 0 ? o.grpc_streams() : 1, sender.max_grpc_streams), 1, kMaxKvGrpcStreams);

  if (o.has_nccl()) {
    const v1::NcclOffer& n = o.nccl();
    if (!sender.nccl) {
      note("nccl: this prefill server does not send over NCCL");
      c.nccl_fallback = "not_sent";
    } else if (!sender.gpu_uuid.empty() && n.gpu_uuid() == sender.gpu_uuid) {
      note("nccl: the decode worker runs on the prefill's GPU (" + n.gpu_uuid() + ")");
      c.nccl_fallback = "same_gpu";
    } else if (n.nccl_version() / 100 != sender.nccl_version / 100) {
      note("nccl: version " + I(n.nccl_version()) + " against this server's " + I(sender.nccl_version));
      c.nccl_fallback = "version";
    } else if (links.ready_link != 0) {
      c.transport = v1::KV_TRANSPORT_NCCL;
      c.nccl_link = links.ready_link;
    } else if (links.setting_up) {
      note("nccl: the link with this decode worker is still being set up");
      c.nccl_fallback = "setting_up";
    } else {
      c.start_link = true;
      note("nccl: no link with this decode worker yet; one is being set up");
      c.nccl_fallback = "no_link";
    }
  }

  if (request.kv_wire() == v1::KV_WIRE_FP8_E4M3) {
    if (c.transport == v1::KV_TRANSPORT_NCCL) {
      note("fp8: not applied over NCCL");
      c.fp8_fallback = "nccl";
    } else if (!sender.allow_fp8) {
      note("fp8: refused by this server (--allow-kv-fp8 is off)");
      c.fp8_fallback = "refused";
    } else {
      c.wire = v1::KV_WIRE_FP8_E4M3;
      c.scale_block_tokens = kFp8ScaleBlockTokens;
    }
  }
  if (c.transport == v1::KV_TRANSPORT_NCCL) c.grpc_streams = 1;
  c.fallback_reason = why;
  return c;
}

Status CheckHeaderTransport(const v1::LayoutHeader& h, const v1::KvTransportOffer& offer, v1::KvWire asked) {
  const int offered_streams = std::max(1, offer.grpc_streams());
  if (h.transport() == v1::KV_TRANSPORT_NCCL) {
    if (!offer.has_nccl()) return DataLoss("layout header transport: NCCL, which this decode worker did not offer");
    if (h.nccl_link_id() == 0) return DataLoss("layout header nccl_link_id: 0 with transport NCCL");
    if (h.kv_wire() != v1::KV_WIRE_UNSPECIFIED) return DataLoss("layout header kv_wire: set with transport NCCL");
  } else if (h.transport() != v1::KV_TRANSPORT_GRPC && h.transport() != v1::KV_TRANSPORT_UNSPECIFIED) {
    return DataLoss("layout header transport: " + v1::KvTransport_Name(h.transport()) +
                    " is not one this decode "
                    "worker knows");
  }
  if (h.grpc_streams() < 0 || h.grpc_streams() > offered_streams)
    return DataLoss("layout header grpc_streams: " + I(h.grpc_streams()) + ", this decode worker offered " +
                    I(offered_streams));
  if (h.grpc_streams() > 1 && h.transfer_id() == 0)
    return DataLoss("layout header transfer_id: 0 with " + I(h.grpc_streams()) + " streams");
  if (h.kv_wire() == v1::KV_WIRE_FP8_E4M3) {
    if (asked != v1::KV_WIRE_FP8_E4M3) return DataLoss("layout header kv_wire: FP8_E4M3, which was not asked for");
    if (h.kv_scale_block_tokens() < 1 || h.kv_scale_block_tokens() > 4096)
      return DataLoss("layout header kv_scale_block_tokens: " + I(h.kv_scale_block_tokens()) +
                      " is out of range [1, 4096]");
  } else if (h.kv_wire() != v1::KV_WIRE_UNSPECIFIED) {
    return DataLoss("layout header kv_wire: " + v1::KvWire_Name(h.kv_wire()) + " is not one this decode worker reads");
  }
  if (h.has_nccl_setup()) {
    if (!offer.has_nccl()) return DataLoss("layout header nccl_setup: NCCL was not offered");
    if (h.nccl_setup().unique_id().size() != 128)
      return DataLoss("layout header nccl_setup.unique_id: " +
                      I(static_cast<int64_t>(h.nccl_setup().unique_id().size())) + " bytes, expected 128");
    if (h.nccl_setup().link_id() == 0) return DataLoss("layout header nccl_setup.link_id: 0");
  }
  return OkStatus();
}

StatusOr<KvTransportSet> ParseKvTransports(const std::string& list, const std::string& flag) {
  KvTransportSet set;
  bool grpc = false;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(start, end - start);
    if (item == "grpc") {
      grpc = true;
    } else if (item == "nccl") {
      set.nccl = true;
    } else {
      return InvalidArgument(flag + ": '" + item + "' in '" + list + "' is not a transport (grpc, nccl)");
    }
    start = end + 1;
  }
  if (!grpc)
    return InvalidArgument(flag + ": '" + list +
                           "' lacks grpc, which carries the control stream and every "
                           "fallback (e.g. nccl,grpc)");
  return set;
}

std::string KvWireLabel(DType dtype, bool fp8) {
  if (fp8) return "fp8";
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    default: return "bf16";
  }
}

StatusOr<int> TokensPerWireChunk(const KvLayout& layout, bool fp8, int64_t max_message_bytes) {
  if (!fp8) return TokensPerChunk(layout, max_message_bytes);
  // The codes of a token sit between float scales in the chunk's bytes,
  // which the receiver reads in place.
  if (layout.head_dim % 4 != 0)
    return InvalidArgument("head_dim: fp8 chunks need a multiple of 4; this model's is " + I(layout.head_dim));
  // Per token: one byte per element of K and V; per block: a float per head
  // for K and for V.
  const int64_t per_token = 2 * int64_t{layout.num_kv_heads} * layout.head_dim;
  const int64_t per_block = per_token * kFp8ScaleBlockTokens + 2 * int64_t{layout.num_kv_heads} * 4;
  const int64_t budget = max_message_bytes - kKvChunkOverheadBytes;
  if (per_block <= 0 || budget < per_block)
    return InvalidArgument("chunk bytes: " + I(max_message_bytes) + " is too small for one fp8 block of " +
                           I(kFp8ScaleBlockTokens) + " tokens (" + I(per_block) + " bytes plus " +
                           I(kKvChunkOverheadBytes) + " of framing)");
  const int64_t blocks = std::min<int64_t>(budget / per_block, (int64_t{1} << 30) / kFp8ScaleBlockTokens);
  return static_cast<int>(blocks * kFp8ScaleBlockTokens);
}

}  // namespace seer
