// The KV transport handshake (rpc/kv_handshake.h): the decode worker's offer
// round-trips and a malformed one names its field; the prefill's choice for
// each combination of offer, server flags and link state (NCCL over a ready
// link, never on one GPU or across NCCL versions, a new link set up while the
// request goes over gRPC, streams capped by both sides, fp8 only when asked and
// allowed and never over NCCL) with the reason for every fallback; the decode
// worker's check of the header refuses choices it did not offer; fp8 chunks
// are whole 64-token blocks and their messages fit the bound.
#include "rpc/kv_handshake.h"

#include <gtest/gtest.h>

#include "rpc/kv_wire.h"

namespace seer {
namespace {

KvReceiverCaps Receiver() {
  KvReceiverCaps c;
  c.grpc_streams = 8;
  c.nccl = true;
  c.decode_instance = "decode-7f3a";
  c.gpu_uuid = "GPU-bbbb";
  c.host = "10.0.0.8";
  c.nccl_version = 22803;
  c.ready_links = {{"prefill-01", 42}};
  return c;
}

KvSenderCaps Sender() {
  KvSenderCaps s;
  s.prefill_instance = "prefill-01";
  s.max_grpc_streams = 4;
  s.allow_fp8 = true;
  s.nccl = true;
  s.gpu_uuid = "GPU-aaaa";
  s.nccl_version = 22809;
  return s;
}

v1::PrefillRequest Request(const KvReceiverCaps& r, v1::KvWire wire = v1::KV_WIRE_UNSPECIFIED) {
  v1::PrefillRequest q;
  *q.mutable_transport_offer() = MakeTransportOffer(r);
  q.set_kv_wire(wire);
  return q;
}

TEST(KvHandshake, OffersRoundTripAndMalformedOnesNameTheField) {
  const v1::KvTransportOffer o = MakeTransportOffer(Receiver());
  EXPECT_TRUE(CheckTransportOffer(o).ok());
  EXPECT_EQ(o.nccl().links(0).link_id(), 42u);
  EXPECT_TRUE(CheckTransportOffer(v1::KvTransportOffer()).ok());
  auto bad = [](auto edit, const char* field) {
    v1::KvTransportOffer x = MakeTransportOffer(Receiver());
    edit(&x);
    const Status s = CheckTransportOffer(x);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.ToString();
  };
  bad([](v1::KvTransportOffer* x) { x->set_grpc_streams(17); }, "transport_offer.grpc_streams");
  bad([](v1::KvTransportOffer* x) { x->set_grpc_streams(-1); }, "transport_offer.grpc_streams");
  bad([](v1::KvTransportOffer* x) { x->mutable_nccl()->clear_decode_instance(); }, "decode_instance");
  bad([](v1::KvTransportOffer* x) { x->mutable_nccl()->set_gpu_uuid(std::string(65, 'a')); }, "gpu_uuid");
  bad([](v1::KvTransportOffer* x) { x->mutable_nccl()->set_host("a\nb"); }, "host");
  bad(
      [](v1::KvTransportOffer* x) {
        for (int i = 0; i < 17; ++i) x->mutable_nccl()->add_links();
      },
      "links");
  // A full offer fits the room requests.h is told to add.
  KvReceiverCaps big = Receiver();
  big.decode_instance = std::string(64, 'd');
  big.gpu_uuid = std::string(64, 'g');
  big.host = std::string(64, 'h');
  big.ready_links.assign(16, {std::string(64, 'p'), ~uint64_t{0}});
  v1::PrefillRequest q = Request(big, v1::KV_WIRE_FP8_E4M3);
  EXPECT_LE(q.ByteSizeLong(), kMaxTransportOfferBytes);
}

TEST(KvHandshake, ThePrefillPicksWhatBothSidesCanDo) {
  // A ready link on both sides: NCCL, one gRPC stream for the control messages.
  KvTransportChoice c = ChooseKvTransport(Request(Receiver()), Sender(), {42, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_NCCL);
  EXPECT_EQ(c.nccl_link, 42u);
  EXPECT_EQ(c.grpc_streams, 1);
  EXPECT_EQ(c.fallback_reason, "");

  // No link yet: gRPC this time, with as many streams as both allow, and a link started.
  c = ChooseKvTransport(Request(Receiver()), Sender(), {0, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_GRPC);
  EXPECT_TRUE(c.start_link);
  EXPECT_EQ(c.grpc_streams, 4);
  EXPECT_NE(c.fallback_reason.find("being set up"), std::string::npos);
  c = ChooseKvTransport(Request(Receiver()), Sender(), {0, true});
  EXPECT_FALSE(c.start_link);
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_GRPC);

  // Never both ranks on one GPU, never across NCCL minor versions, never from a server without NCCL.
  KvReceiverCaps same = Receiver();
  same.gpu_uuid = "GPU-aaaa";
  c = ChooseKvTransport(Request(same), Sender(), {42, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_GRPC);
  EXPECT_NE(c.fallback_reason.find("prefill's GPU"), std::string::npos);
  KvReceiverCaps old = Receiver();
  old.nccl_version = 22703;
  EXPECT_EQ(ChooseKvTransport(Request(old), Sender(), {42, false}).transport, v1::KV_TRANSPORT_GRPC);
  KvSenderCaps no_nccl = Sender();
  no_nccl.nccl = false;
  c = ChooseKvTransport(Request(Receiver()), no_nccl, {42, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_GRPC);
  EXPECT_FALSE(c.start_link);

  // A caller that offers nothing (any gRPC client): one stream, the cache's type.
  c = ChooseKvTransport(v1::PrefillRequest(), Sender(), {0, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_GRPC);
  EXPECT_EQ(c.grpc_streams, 1);
  EXPECT_EQ(c.wire, v1::KV_WIRE_UNSPECIFIED);
  EXPECT_EQ(c.fallback_reason, "");

  // fp8: when asked and allowed; not over NCCL; refused by the flag.
  KvReceiverCaps grpc_only = Receiver();
  grpc_only.nccl = false;
  c = ChooseKvTransport(Request(grpc_only, v1::KV_WIRE_FP8_E4M3), Sender(), {0, false});
  EXPECT_EQ(c.wire, v1::KV_WIRE_FP8_E4M3);
  EXPECT_EQ(c.scale_block_tokens, 64);
  KvSenderCaps strict = Sender();
  strict.allow_fp8 = false;
  c = ChooseKvTransport(Request(grpc_only, v1::KV_WIRE_FP8_E4M3), strict, {0, false});
  EXPECT_EQ(c.wire, v1::KV_WIRE_UNSPECIFIED);
  EXPECT_NE(c.fallback_reason.find("--allow-kv-fp8"), std::string::npos);
  c = ChooseKvTransport(Request(Receiver(), v1::KV_WIRE_FP8_E4M3), Sender(), {42, false});
  EXPECT_EQ(c.transport, v1::KV_TRANSPORT_NCCL);
  EXPECT_EQ(c.wire, v1::KV_WIRE_UNSPECIFIED);
}

TEST(KvHandshake, TheDecodeWorkerRefusesAHeaderItDidNotAskFor) {
  const v1::KvTransportOffer offer = MakeTransportOffer(Receiver());
  KvReceiverCaps g = Receiver();
  g.nccl = false;
  const v1::KvTransportOffer grpc_offer = MakeTransportOffer(g);
  v1::LayoutHeader h;
  h.set_transport(v1::KV_TRANSPORT_GRPC);
  h.set_grpc_streams(4);
  h.set_transfer_id(9);
  EXPECT_TRUE(CheckHeaderTransport(h, offer, v1::KV_WIRE_UNSPECIFIED).ok());
  EXPECT_TRUE(CheckHeaderTransport(v1::LayoutHeader(), v1::KvTransportOffer(), v1::KV_WIRE_UNSPECIFIED).ok());
  auto refused = [](const v1::LayoutHeader& x, const v1::KvTransportOffer& o, v1::KvWire w, const char* field) {
    const Status s = CheckHeaderTransport(x, o, w);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.ToString();
  };
  v1::LayoutHeader x = h;
  x.set_grpc_streams(9);
  refused(x, offer, v1::KV_WIRE_UNSPECIFIED, "grpc_streams");
  x = h;
  x.set_transfer_id(0);
  refused(x, offer, v1::KV_WIRE_UNSPECIFIED, "transfer_id");
  x = h;
  x.set_transport(v1::KV_TRANSPORT_NCCL);
  x.set_nccl_link_id(42);
  x.set_grpc_streams(1);
  EXPECT_TRUE(CheckHeaderTransport(x, offer, v1::KV_WIRE_UNSPECIFIED).ok());
  refused(x, grpc_offer, v1::KV_WIRE_UNSPECIFIED, "transport");
  x.set_nccl_link_id(0);
  refused(x, offer, v1::KV_WIRE_UNSPECIFIED, "nccl_link_id");
  x = h;
  x.set_kv_wire(v1::KV_WIRE_FP8_E4M3);
  x.set_kv_scale_block_tokens(64);
  EXPECT_TRUE(CheckHeaderTransport(x, offer, v1::KV_WIRE_FP8_E4M3).ok());
  refused(x, offer, v1::KV_WIRE_UNSPECIFIED, "kv_wire");
  x.set_kv_scale_block_tokens(0);
  refused(x, offer, v1::KV_WIRE_FP8_E4M3, "kv_scale_block_tokens");
  x = h;
  x.mutable_nccl_setup()->set_link_id(5);
  x.mutable_nccl_setup()->set_unique_id(std::string(100, 'u'));
  refused(x, offer, v1::KV_WIRE_UNSPECIFIED, "unique_id");
  x.mutable_nccl_setup()->set_unique_id(std::string(128, 'u'));
  EXPECT_TRUE(CheckHeaderTransport(x, offer, v1::KV_WIRE_UNSPECIFIED).ok());
  refused(x, grpc_offer, v1::KV_WIRE_UNSPECIFIED, "nccl_setup");
}

TEST(KvHandshake, Fp8ChunksAreWholeBlocksWithinTheBound) {
  const KvLayout layout{32, 8, 128, DType::kBF16};
  for (int64_t bound : {int64_t{1} << 20, int64_t{4} << 20, int64_t{16} << 20}) {
    auto n = TokensPerWireChunk(layout, true, bound);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n % 64, 0);
    auto size = [&](int64_t tokens) {
      return 2 * 8 * tokens * 128 + 2 * 8 * 4 * ((tokens + 63) / 64) + kKvChunkOverheadBytes;
    };
    EXPECT_LE(size(*n), bound);
    EXPECT_GT(size(*n + 64), bound);
  }
  EXPECT_FALSE(TokensPerWireChunk(layout, true, 64 * 1024).ok());  // one block is 128 KiB of codes
  // The chunk source reads a token's codes in place between float scales:
  // a head_dim that is not a multiple of 4 is refused (the prefill server
  // then sends the cache's own type, with the reason), not failed later.
  const StatusOr<int> odd = TokensPerWireChunk(KvLayout{2, 1, 6, DType::kF32}, true, int64_t{1} << 20);
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.status().message().find("head_dim"), std::string::npos) << odd.status().message();
  EXPECT_TRUE(TokensPerWireChunk(KvLayout{2, 1, 6, DType::kF32}, false, int64_t{1} << 20).ok());
  EXPECT_TRUE(TokensPerWireChunk(KvLayout{2, 1, 8, DType::kF32}, true, int64_t{1} << 20).ok());
  EXPECT_EQ(TokensPerWireChunk(layout, false, int64_t{4} << 20).value(),
            TokensPerChunk(layout, int64_t{4} << 20).value());
}

}  // namespace
}  // namespace seer
