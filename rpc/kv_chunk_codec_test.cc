// The zero-copy KvChunk codec (rpc/kv_chunk_codec.h) against protobuf itself,
// the reference for the wire format:
//   - EncodeKvChunk's bytes equal PrefillResponse::SerializeAsString() of the
//     same chunk, for K/V given in pieces of odd sizes, zero and negative
//     scalars, empty K/V and fp8 scales;
//   - DecodePrefillResponse, on buffers cut into random slices, gives what
//     ParseFromString gives: for every message kind, for chunks with unknown
//     fields, repeated fields, unpacked scales, and for 3000 random mutations
//     and truncations of a chunk (both fail, or both give the same fields);
//   - over loopback: a plain generated protobuf client reads a stream written
//     with EncodeKvChunk, byte for byte, and gRPC releases every referenced
//     slice afterwards; RawStreamCall (GenericStub) reads a plain protobuf
//     server's stream;
//   - a host cache's chunk, made without a copy, outlives the cache and holds
//     only its own layer (the values it carries are the ones written).
#include "rpc/kv_chunk_codec.h"

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/kv/kv_cache.h"
#include "rpc/kv_chunk_source.h"
#include "seer/v1/seer.grpc.pb.h"

namespace seer {
namespace {

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// `bytes` as a buffer of slices cut at random points.
grpc::ByteBuffer Sliced(const std::string& bytes, std::mt19937& rng) {
  std::vector<grpc::Slice> slices;
  size_t at = 0;
  while (at < bytes.size()) {
    const size_t n = std::min<size_t>(1 + rng() % 40, bytes.size() - at);
    slices.emplace_back(bytes.data() + at, n);
    at += n;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Str(const BytePieces& p) {
  std::string s(p.size(), '\0');
  p.CopyTo(0, p.size(), s.data());
  return s;
}

std::string RandomBytes(size_t n, std::mt19937& rng) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

struct Case {
  int layer, start, count;
  size_t kv_bytes;
  int scales;
};

TEST(KvChunkCodec, EncodedChunkIsProtobufsBytes) {
  std::mt19937 rng(1);
  const Case cases[] = {{0, 0, 0, 0, 0},         {3, 64, 64, 65536, 0}, {31, 130000, 1, 4096, 0}, {-1, -5, 7, 10, 0},
                        {2, 0, 200, 300000, 32}, {1, 64, 3, 0, 4},      {5, 1 << 30, 1, 1, 1}};
  for (const Case& c : cases) {
    const std::string k = RandomBytes(c.kv_bytes, rng), v = RandomBytes(c.kv_bytes, rng);
    KvChunkRef ref;
    ref.layer = c.layer;
    ref.token_start = c.start;
    ref.token_count = c.count;
    // K and V in pieces of odd sizes, as a pitched cache's rows would be.
    for (size_t at = 0; at < k.size(); at += 1000) {
      ref.k.Add(k.data() + at, std::min<size_t>(1000, k.size() - at));
      ref.v.Add(v.data() + at, std::min<size_t>(1000, v.size() - at));
    }
    v1::PrefillResponse want;
    v1::KvChunk* m = want.mutable_chunk();
    m->set_layer(c.layer);
    m->set_token_start(c.start);
    m->set_token_count(c.count);
    m->set_k(k);
    m->set_v(v);
    for (int i = 0; i < c.scales; ++i) {
      const float a = 0.01f * i, b = -3.5f * i;
      ref.k_scales.push_back(a);
      ref.v_scales.push_back(b);
      m->add_k_scales(a);
      m->add_v_scales(b);
    }
    auto keep = std::make_shared<int>(0);
    const std::string got = Flatten(EncodeKvChunk(ref, keep));
    EXPECT_EQ(got, want.SerializeAsString()) << "layer " << c.layer << " bytes " << c.kv_bytes;
  }
}

void ExpectSameAsProtobuf(const std::string& bytes, std::mt19937& rng, const char* what) {
  v1::PrefillResponse want;
  const bool want_ok = want.ParseFromString(bytes);
  DecodedResponse got;
  const Status s = DecodePrefillResponse(Sliced(bytes, rng), &got);
  ASSERT_EQ(s.ok(), want_ok) << what << ": " << s.ToString();
  if (!want_ok) {
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    return;
  }
  ASSERT_EQ(got.is_chunk, want.has_chunk()) << what;
  if (!got.is_chunk) {
    EXPECT_EQ(got.message.SerializeAsString(), want.SerializeAsString()) << what;
    return;
  }
  const v1::KvChunk& c = want.chunk();
  EXPECT_EQ(got.chunk.layer, c.layer()) << what;
  EXPECT_EQ(got.chunk.token_start, c.token_start()) << what;
  EXPECT_EQ(got.chunk.token_count, c.token_count()) << what;
  EXPECT_EQ(Str(got.chunk.k), c.k()) << what;
  EXPECT_EQ(Str(got.chunk.v), c.v()) << what;
  EXPECT_EQ(Str(got.chunk.k_scales),
            std::string(reinterpret_cast<const char*>(c.k_scales().data()), c.k_scales_size() * sizeof(float)))
      << what;
  EXPECT_EQ(Str(got.chunk.v_scales),
            std::string(reinterpret_cast<const char*>(c.v_scales().data()), c.v_scales_size() * sizeof(float)))
      << what;
}

std::string ChunkBytes(std::mt19937& rng) {
  v1::PrefillResponse r;
  v1::KvChunk* c = r.mutable_chunk();
  c->set_layer(7);
  c->set_token_start(128);
  c->set_token_count(9);
  c->set_k(RandomBytes(300, rng));
  c->set_v(RandomBytes(300, rng));
  c->add_k_scales(0.5f);
  c->add_v_scales(2.0f);
  return r.SerializeAsString();
}

TEST(KvChunkCodec, DecodeGivesWhatProtobufParses) {
  std::mt19937 rng(2);
  v1::PrefillResponse header;
  header.mutable_header()->set_num_layers(32);
  header.mutable_header()->set_request_id("r-1");
  header.mutable_header()->set_transport(v1::KV_TRANSPORT_GRPC);
  v1::PrefillResponse summary;
  summary.mutable_summary()->add_last_logits(1.5f);
  summary.mutable_summary()->set_kv_bytes(12345);
  v1::PrefillResponse marker;
  marker.mutable_layer_sent()->set_layer(3);
  v1::PrefillResponse empty_chunk;
  empty_chunk.mutable_chunk();
  ExpectSameAsProtobuf(header.SerializeAsString(), rng, "header");
  ExpectSameAsProtobuf(summary.SerializeAsString(), rng, "summary");
  ExpectSameAsProtobuf(marker.SerializeAsString(), rng, "layer_sent");
  ExpectSameAsProtobuf(empty_chunk.SerializeAsString(), rng, "empty chunk");
  ExpectSameAsProtobuf(ChunkBytes(rng), rng, "chunk");
  ExpectSameAsProtobuf("", rng, "empty message");

  // Hand-made encodings protobuf accepts: unknown fields inside the chunk,
  // a repeated k (the last wins), two packed scale runs, unpacked scales,
  // and a header followed by a chunk (the oneof's last member wins).
  auto chunk_of = [](const std::string& body) {
    std::string s = "\x12";
    s.push_back(static_cast<char>(body.size()));  // bodies here are < 128 bytes
    return s + body;
  };
  ExpectSameAsProtobuf(chunk_of(std::string("\x08\x05\x22\x02"
                                            "ab\x62\x03xyz\x22\x01q\x78\x09",
                                            16)),
                       rng, "unknown fields, repeated k");
  ExpectSameAsProtobuf(chunk_of(std::string("\x32\x04\x00\x00\x80\x3f\x32\x04\x00\x00\x00\x40", 12)), rng,
                       "two packed runs");
  ExpectSameAsProtobuf(chunk_of(std::string("\x35\x00\x00\x80\x3f\x35\x00\x00\x00\x40", 10)), rng, "unpacked scales");
  ExpectSameAsProtobuf(header.SerializeAsString() + ChunkBytes(rng), rng, "header then chunk");
  ExpectSameAsProtobuf(ChunkBytes(rng) + marker.SerializeAsString(), rng, "chunk then marker");
  ExpectSameAsProtobuf(ChunkBytes(rng) + ChunkBytes(rng), rng, "two chunks (merged)");
}

TEST(KvChunkCodec, MutatedChunksDecodeLikeProtobuf) {
  std::mt19937 rng(3);
  for (int i = 0; i < 3000; ++i) {
    std::string b = ChunkBytes(rng);
    const int edits = 1 + rng() % 3;
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
        case 0: b[rng() % b.size()] = static_cast<char>(rng()); break;
        case 1: b.resize(rng() % b.size()); break;
        default: b.insert(rng() % (b.size() + 1), 1, static_cast<char>(rng())); break;
      }
      if (b.empty()) break;
    }
    ExpectSameAsProtobuf(b, rng, ("mutation " + std::to_string(i)).c_str());
    if (HasFatalFailure()) return;
  }
}

// Writes a header, `chunks` chunks referencing one buffer, and a summary.
class ZeroCopyPrefill final
    : public v1::PrefillService::WithRawCallbackMethod_Prefill<v1::PrefillService::CallbackService> {
 public:
  ZeroCopyPrefill(std::shared_ptr<std::string> payload, int chunks) : payload_(std::move(payload)), chunks_(chunks) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext*, const grpc::ByteBuffer*) override {
    class Writer final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
     public:
      explicit Writer(ZeroCopyPrefill* s) {
        v1::PrefillResponse h;
        h.mutable_header()->set_num_layers(s->chunks_);
        out_.push_back(EncodeMessage(h).value());
        const std::string& p = *s->payload_;
        for (int i = 0; i < s->chunks_; ++i) {
          KvChunkRef c;
          c.layer = i;
          c.token_count = 1;
          c.k.Add(p.data(), p.size() / 2);
          c.v.Add(p.data() + p.size() / 2, p.size() / 2);
          out_.push_back(EncodeKvChunk(c, s->payload_));
        }
        v1::PrefillResponse sum;
        sum.mutable_summary()->set_kv_chunks(s->chunks_);
        out_.push_back(EncodeMessage(sum).value());
        StartWrite(&out_[0]);
      }
      void OnWriteDone(bool ok) override {
        out_[next_ - 1].Clear();  // gRPC may still hold the slices; this drops our reference
        if (!ok || next_ == out_.size()) {
          Finish(ok ? grpc::Status::OK : grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
          return;
        }
        StartWrite(&out_[next_++]);
      }
      void OnDone() override { delete this; }

     private:
      std::vector<grpc::ByteBuffer> out_;
      size_t next_ = 1;
    };
    return new Writer(this);
  }

 private:
  std::shared_ptr<std::string> payload_;
  int chunks_;
};

TEST(KvChunkCodec, APlainProtobufClientReadsTheZeroCopyStream) {
  std::mt19937 rng(4);
  auto payload = std::make_shared<std::string>(RandomBytes(2 << 20, rng));
  const int chunks = 8;
  std::string addr;
  {
    ZeroCopyPrefill service(payload, chunks);
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    ASSERT_NE(server, nullptr);
    auto stub = v1::PrefillService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    auto reader = stub->Prefill(&ctx, v1::PrefillRequest());
    v1::PrefillResponse msg;
    std::vector<v1::PrefillResponse> got;
    while (reader->Read(&msg)) got.push_back(msg);
    ASSERT_TRUE(reader->Finish().ok());
    ASSERT_EQ(got.size(), chunks + 2u);
    EXPECT_EQ(got[0].header().num_layers(), chunks);
    for (int i = 0; i < chunks; ++i) {
      ASSERT_TRUE(got[1 + i].has_chunk());
      EXPECT_EQ(got[1 + i].chunk().layer(), i);
      EXPECT_EQ(got[1 + i].chunk().k(), payload->substr(0, payload->size() / 2));
      EXPECT_EQ(got[1 + i].chunk().v(), payload->substr(payload->size() / 2));
    }
    EXPECT_EQ(got.back().summary().kv_chunks(), chunks);
    server->Shutdown();
  }
  // Every slice gRPC took a reference to has been released.
  EXPECT_EQ(payload.use_count(), 1);
}

class PlainPrefill final : public v1::PrefillService::CallbackService {
 public:
  explicit PlainPrefill(std::vector<v1::PrefillResponse> msgs) : msgs_(std::move(msgs)) {}
  grpc::ServerWriteReactor<v1::PrefillResponse>* Prefill(grpc::CallbackServerContext*,
                                                         const v1::PrefillRequest*) override {
    class Writer final : public grpc::ServerWriteReactor<v1::PrefillResponse> {
     public:
      explicit Writer(const std::vector<v1::PrefillResponse>* m) : m_(m) { StartWrite(&(*m_)[0]); }
      void OnWriteDone(bool ok) override {
        if (!ok || next_ == m_->size()) {
          Finish(grpc::Status::OK);
          return;
        }
        StartWrite(&(*m_)[next_++]);
      }
      void OnDone() override { delete this; }

     private:
      const std::vector<v1::PrefillResponse>* m_;
      size_t next_ = 1;
    };
    return new Writer(&msgs_);
  }

 private:
  std::vector<v1::PrefillResponse> msgs_;
};

TEST(KvChunkCodec, TheRawClientReadsAPlainProtobufServer) {
  std::mt19937 rng(5);
  std::vector<v1::PrefillResponse> msgs(3);
  msgs[0].mutable_header()->set_seq_len(99);
  msgs[1].ParseFromString(ChunkBytes(rng));
  msgs[1].mutable_chunk()->set_k(RandomBytes(3 << 20, rng));  // several HTTP/2 frames, several slices
  msgs[2].mutable_summary()->set_first_token(42);
  PlainPrefill service(msgs);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  builder.SetMaxSendMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(16 << 20);
  auto channel =
      grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);
  auto call = std::make_unique<RawStreamCall>(&stub, "/seer.v1.PrefillService/Prefill",
                                              EncodeMessage(v1::PrefillRequest()).value());
  call->Start();
  grpc::ByteBuffer buf;
  std::vector<DecodedResponse> got;
  while (call->Next(&buf)) {
    got.emplace_back();
    ASSERT_TRUE(DecodePrefillResponse(buf, &got.back()).ok());
  }
  ASSERT_TRUE(call->Finish().ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].message.header().seq_len(), 99);
  ASSERT_TRUE(got[1].is_chunk);
  EXPECT_EQ(Str(got[1].chunk.k), msgs[1].chunk().k());
  EXPECT_EQ(Str(got[1].chunk.v), msgs[1].chunk().v());
  EXPECT_GT(got[1].chunk.k.pieces().size(), 1u) << "K should arrive as several slices, read in place";
  EXPECT_EQ(got[2].message.summary().first_token(), 42);
  server->Shutdown();
}

// A chunk of the CPU engine's cache references the cache's memory (no
// copy). gRPC may hold such a message long after its stream ended (a write
// stuck in the socket of a client that stopped reading), so the message
// holds its own layer only: once the source and the cache are dropped the
// cache is gone, every other layer with it, and the chunk still reads the
// values that were written (under ASan a dangling slice would fail here).
// What the server charged for the cache's memory (`with_cache_memory`)
// stays held by the chunk until the chunk goes.
TEST(KvChunkSource, AHostChunkOutlivesItsCacheAndHoldsOnlyItsLayer) {
  constexpr int kLayers = 3, kHeads = 2, kDim = 8, kCapacity = 11, kT0 = 3, kN = 5;
  auto cache = std::make_shared<HostKvCache>(kLayers, kHeads, kDim, kCapacity);
  // Every element a distinct value: layer, K or V, head, token, dim.
  auto value = [](int layer, int which, int h, int t, int d) {
    return static_cast<float>(((layer * 2 + which) * kHeads + h) * 1000 + t * kDim + d);
  };
  for (int l = 0; l < kLayers; ++l) {
    std::vector<float> k(kHeads * kCapacity * kDim), v(k.size());
    for (int h = 0; h < kHeads; ++h)
      for (int t = 0; t < kCapacity; ++t)
        for (int d = 0; d < kDim; ++d) {
          k[(h * kCapacity + t) * kDim + d] = value(l, 0, h, t, d);
          v[(h * kCapacity + t) * kDim + d] = value(l, 1, h, t, d);
        }
    ASSERT_TRUE(cache->WriteLayer(l, 0, kCapacity, DType::kF32, k.data(), v.data()).ok());
  }
  cache->set_length(kCapacity);
  auto charge = std::make_shared<int>(7);
  const std::weak_ptr<int> watch_charge = charge;
  StatusOr<std::shared_ptr<KvChunkSource>> source = KvChunkSource::Create(cache, /*fp8=*/false, charge);
  charge.reset();
  ASSERT_TRUE(source.ok()) << source.status().ToString();
  auto chunk = std::make_unique<StatusOr<grpc::ByteBuffer>>((*source)->Make(1, kT0, kN));
  ASSERT_TRUE(chunk->ok()) << chunk->status().ToString();

  const std::weak_ptr<const KvCache> watch = cache;
  source->reset();
  cache.reset();
  EXPECT_TRUE(watch.expired()) << "the chunk kept the whole cache alive";
  EXPECT_FALSE(watch_charge.expired()) << "the chunk let the charge for its memory go";

  v1::PrefillResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(Flatten(**chunk)));
  ASSERT_TRUE(parsed.has_chunk());
  const v1::KvChunk& c = parsed.chunk();
  EXPECT_EQ(c.layer(), 1);
  EXPECT_EQ(c.token_start(), kT0);
  EXPECT_EQ(c.token_count(), kN);
  const size_t floats = static_cast<size_t>(kHeads) * kN * kDim;
  ASSERT_EQ(c.k().size(), floats * sizeof(float));
  ASSERT_EQ(c.v().size(), floats * sizeof(float));
  std::vector<float> k(floats), v(floats);
  std::memcpy(k.data(), c.k().data(), c.k().size());
  std::memcpy(v.data(), c.v().data(), c.v().size());
  for (int h = 0; h < kHeads; ++h)
    for (int t = 0; t < kN; ++t)
      for (int d = 0; d < kDim; ++d) {
        const size_t i = (static_cast<size_t>(h) * kN + t) * kDim + d;
        ASSERT_EQ(k[i], value(1, 0, h, kT0 + t, d)) << h << " " << t << " " << d;
        ASSERT_EQ(v[i], value(1, 1, h, kT0 + t, d)) << h << " " << t << " " << d;
      }
  chunk.reset();
  EXPECT_TRUE(watch_charge.expired()) << "the charge outlived the last chunk";
}

}  // namespace
}  // namespace seer
