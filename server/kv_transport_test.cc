// The KV transports through the real services in this process, on loopback
// port 0, with the CPU engine and the committed fixtures (docs/KV_TRANSPORT.md,
// section 8.3). Every comparison is against an independent reference: the
// prefill's own KV cache and logits computed by the engine here, the
// protobuf encoding of the messages a plain client expects, the greedy tokens
// of the monolithic engine, or a float64 recomputation of the fp8 error.
#include <gtest/gtest.h>

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>

#include "engine/engine.h"
#include "kernels/sampling/sampler.h"
#include "rpc/kv_chunk_codec.h"
#include "rpc/prefill_client.h"
#include "server/common/grpc_server.h"
#include "server/common/metrics.h"
#include "server/decode/decode_service.h"
#include "server/prefill/prefill_service.h"
#include "tests/server_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Path;

std::unique_ptr<Engine> LoadEngine(const std::string& model) {
  EngineOptions o;
  o.model_dir = model;
  o.device = "cpu";
  StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(e).value() : nullptr;
}

// Delegates to a real engine. Can hold a prefill before it computes (so
// that a test sees its transfer announced and not yet sent), and hands the
// layers to the service's observer only once all are computed, back to back:
// the first layer keeps the Prefill call busy while the next ones are ready,
// so the KvStream calls take layers too.
class GatedEngine final : public Engine {
 public:
  explicit GatedEngine(Engine* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  uint64_t fingerprint() const override { return inner_->fingerprint(); }
  const GateWeights* gates() const override { return inner_->gates(); }
  std::string device_name() const override { return inner_->device_name(); }
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) override {
    return inner_->NewCache(capacity, gate_keys);
  }
  bool OwnsCacheType(const KvCache& cache) const override { return dynamic_cast<const HostKvCache*>(&cache); }
  Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) override {
    return inner_->DecodeStep(token, cache, logits);
  }
  StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                     PrefillObserver* observer) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++entered_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !hold_; });
    }
    Collect collect;
    StatusOr<PrefillResult> r = inner_->Prefill(ids, options, cache, &collect);
    if (!r.ok() || observer == nullptr) return r;
    for (const LayerDone& done : collect.layers) SEER_RETURN_IF_ERROR(observer->OnLayerDone(done));
    return r;
  }

  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    cv_.notify_all();
  }
  bool WaitEntered(int n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return entered_ >= n; });
  }

 private:
  struct Collect final : PrefillObserver {
    Status OnLayerDone(const LayerDone& done) override {
      layers.push_back(done);
      return OkStatus();
    }
    std::vector<LayerDone> layers;
  };

  Engine* inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;
  int entered_ = 0;
};

struct PrefillServer {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  PrefillMetrics metrics{*registry};
  std::unique_ptr<PrefillService> service;
  std::unique_ptr<GrpcServer> server;

  PrefillServer(const PrefillServiceOptions& options, Engine* engine) {
    service = std::make_unique<PrefillService>(options, &metrics);
    auto s = GrpcServer::Start("127.0.0.1:0", {service.get()}, {"seer.v1.PrefillService"}, 16 << 20);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(s).value();
    EXPECT_TRUE(service->SetEngine(engine).ok());
    server->SetServing(true);
  }
  ~PrefillServer() {
    server->Shutdown(5.0);
    service->Shutdown();
  }
  std::string Scrape() const { return prometheus::TextSerializer().Serialize(registry->Collect()); }
};

// The value of one series in a scrape, or -1 when it is absent.
double Series(const std::string& scrape, const std::string& key) {
  std::map<std::string, double> m = seer::testing::ParseMetrics(scrape);
  auto it = m.find(key);
  return it == m.end() ? -1.0 : it->second;
}

std::unique_ptr<PrefillClient> Client(const std::string& address, int streams) {
  PrefillClientOptions o;
  o.kv_grpc_streams = streams;
  o.health_interval_seconds = 0;
  StatusOr<std::unique_ptr<PrefillClient>> c = PrefillClient::Create(address, o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

ExpectedLayout ExpectedOf(const Engine& e) {
  const ModelConfig& c = e.config();
  return ExpectedLayout{e.fingerprint(), c.num_layers, c.num_kv_heads, c.head_dim, c.vocab_size};
}

v1::PrefillRequest RequestOf(int tokens, uint32_t seed, int64_t chunk_bytes = 64 << 10) {
  v1::PrefillRequest r;
  for (int32_t id : seer::testing::RandomIds(tokens, 128, seed)) r.add_token_ids(id);
  r.set_max_chunk_bytes(chunk_bytes);
  return r;
}

// K and V of tokens [0, tokens) of every layer, [heads, tokens, head_dim].
struct LayerKv {
  std::vector<float> k, v;
};
std::vector<LayerKv> ReadKv(const KvCache& cache, int tokens) {
  const KvLayout& l = cache.layout();
  std::vector<LayerKv> out(l.num_layers);
  for (int layer = 0; layer < l.num_layers; ++layer) {
    out[layer].k.resize(static_cast<size_t>(l.num_kv_heads) * tokens * l.head_dim);
    out[layer].v.resize(out[layer].k.size());
    EXPECT_TRUE(cache.ReadLayer(layer, 0, tokens, out[layer].k.data(), out[layer].v.data()).ok());
  }
  return out;
}

// The prefill's own KV and last logits, computed here.
struct Reference {
  std::vector<LayerKv> kv;
  std::vector<float> last_logits;
};
Reference ReferenceOf(Engine* engine, const v1::PrefillRequest& r) {
  std::vector<int32_t> ids(r.token_ids().begin(), r.token_ids().end());
  std::unique_ptr<KvCache> cache = engine->NewCache(static_cast<int>(ids.size())).value();
  StatusOr<PrefillResult> p = engine->Prefill(ids, PrefillOptions{}, cache.get(), nullptr);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  Reference out;
  out.kv = ReadKv(*cache, static_cast<int>(ids.size()));
  const int vocab = engine->config().vocab_size;
  out.last_logits.assign(p->logits.end() - vocab, p->logits.end());
  return out;
}

bool SameBytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void ExpectKvEqual(const std::vector<LayerKv>& got, const std::vector<LayerKv>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t layer = 0; layer < got.size(); ++layer) {
    EXPECT_TRUE(SameBytes(got[layer].k, want[layer].k)) << what << ": K of layer " << layer;
    EXPECT_TRUE(SameBytes(got[layer].v, want[layer].v)) << what << ": V of layer " << layer;
  }
}

struct Fetched {
  Status status;
  FetchedKv kv;
  std::unique_ptr<KvCache> cache;
  int64_t landed_bytes = 0;
};

// Fetches `r` into a fresh cache of this engine with room for `extra` more
// tokens (a decode worker's).
Fetched Fetch(PrefillClient* client, Engine* engine, const v1::PrefillRequest& r, int extra = 8) {
  Fetched f;
  f.cache = engine->NewCache(r.token_ids_size() + extra).value();
  CallCanceller canceller;
  std::atomic<int64_t> landed{0};
  StatusOr<FetchedKv> kv =
      client->Fetch(r, ExpectedOf(*engine), f.cache.get(), &canceller, [&](int64_t bytes) { landed += bytes; });
  f.landed_bytes = landed.load();
  f.status = kv.status();
  if (kv.ok()) f.kv = std::move(kv).value();
  return f;
}

// --- a plain client ------------------------------------------------------------

// A client that offers nothing (any protobuf client) gets exactly the stream
// it always got from the raw-callback prefill: the header without any
// transport field, each layer's chunks in token order as protobuf encodes
// them (K and V the prefill's own cache), the summary without a transfer.
TEST(KvTransport, APlainProtobufClientGetsTheStreamItAlwaysGot) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillServer p(PrefillServiceOptions{}, engine.get());
  v1::PrefillRequest req = RequestOf(300, 1);
  req.set_request_id("plain-1");
  const Reference ref = ReferenceOf(engine.get(), req);

  auto stub = v1::PrefillService::NewStub(grpc::CreateChannel(p.server->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Prefill(&ctx, req);
  std::vector<v1::PrefillResponse> got;
  v1::PrefillResponse msg;
  while (reader->Read(&msg)) got.push_back(msg);
  ASSERT_TRUE(reader->Finish().ok());

  const ModelConfig& c = engine->config();
  const int seq = req.token_ids_size();
  // 64 KiB messages, 256 bytes of framing, K and V of one token: 2 x 1 head
  // x 64 x 4 bytes.
  const int per_chunk = (65536 - 256) / (2 * c.num_kv_heads * c.head_dim * 4);
  const int chunks_per_layer = (seq + per_chunk - 1) / per_chunk;
  ASSERT_EQ(got.size(), 2u + static_cast<size_t>(c.num_layers * chunks_per_layer));

  v1::PrefillResponse header;
  v1::LayoutHeader* h = header.mutable_header();
  h->set_model_fingerprint(engine->fingerprint());
  h->set_num_layers(c.num_layers);
  h->set_num_kv_heads(c.num_kv_heads);
  h->set_head_dim(c.head_dim);
  h->set_kv_dtype(v1::KV_DTYPE_F32);
  h->set_block_size(64);
  h->set_seq_len(seq);
  h->set_vocab_size(c.vocab_size);
  h->set_request_id("plain-1");
  h->set_device(engine->device_name());
  EXPECT_EQ(got[0].SerializeAsString(), header.SerializeAsString()) << got[0].DebugString();

  size_t i = 1;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    for (int t0 = 0; t0 < seq; t0 += per_chunk) {
      const int n = std::min(per_chunk, seq - t0);
      v1::PrefillResponse want;
      v1::KvChunk* ch = want.mutable_chunk();
      ch->set_layer(layer);
      ch->set_token_start(t0);
      ch->set_token_count(n);
      for (int which = 0; which < 2; ++which) {
        std::string bytes;
        const std::vector<float>& src = which == 0 ? ref.kv[layer].k : ref.kv[layer].v;
        for (int head = 0; head < c.num_kv_heads; ++head)
          bytes.append(reinterpret_cast<const char*>(src.data() + (static_cast<size_t>(head) * seq + t0) * c.head_dim),
                       static_cast<size_t>(n) * c.head_dim * sizeof(float));
        (which == 0 ? *ch->mutable_k() : *ch->mutable_v()) = bytes;
      }
      ASSERT_LT(i, got.size());
      EXPECT_EQ(got[i].SerializeAsString(), want.SerializeAsString()) << "layer " << layer << " token " << t0;
      ++i;
    }
  }
  ASSERT_TRUE(got.back().has_summary());
  const v1::PrefillSummary& s = got.back().summary();
  EXPECT_FALSE(s.has_transfer());
  ASSERT_EQ(s.last_logits_size(), c.vocab_size);
  EXPECT_TRUE(std::equal(s.last_logits().begin(), s.last_logits().end(), ref.last_logits.begin()));
  EXPECT_EQ(s.first_token(), ArgMax(std::span<const float>(ref.last_logits)));
  EXPECT_EQ(s.kv_bytes(), int64_t{2} * c.num_layers * c.num_kv_heads * seq * c.head_dim * 4);
  EXPECT_EQ(s.kv_chunks(), c.num_layers * chunks_per_layer);
}

// --- several streams -----------------------------------------------------------

// A random Llama of 8 layers (tests/server_test_util.h): enough layers for
// four streams (each layer goes whole over one).
// Starts a Prefill call (60 s deadline) and reads its first message, the
// layout header.
void StartAndReadHeader(RawStreamCall* prefill, v1::LayoutHeader* header) {
  prefill->context()->set_deadline(std::chrono::system_clock::now() + 60s);
  prefill->Start();
  grpc::ByteBuffer b;
  DecodedResponse d;
  ASSERT_TRUE(prefill->Next(&b));
  ASSERT_TRUE(DecodePrefillResponse(b, &d).ok());
  ASSERT_TRUE(d.message.has_header());
  *header = d.message.header();
}

std::string EightLayerModel() {
  static const std::string dir =
      seer::testing::WriteRandomLlama(seer::testing::TempDir("kv_transport_model"), seer::testing::RandomLlamaSpec{});
  return dir;
}

// The decode worker's client with 4 gRPC streams lands the same bytes as
// with one, and both are the prefill's own cache; the transfer used
// `want_streams` streams (4, or one per layer when there are fewer), and the
// extra ones carried KV.
void ExpectFourStreamsLandWhatOneDoes(const std::string& model, int want_streams) {
  std::unique_ptr<Engine> inner = LoadEngine(model);
  ASSERT_TRUE(inner);
  GatedEngine engine(inner.get());
  PrefillServiceOptions options;
  options.kv_grpc_streams = 4;
  options.kv_min_stream_bytes = 0;  // the test models' KV is small: spread it anyway
  PrefillServer p(options, &engine);
  const v1::PrefillRequest req = RequestOf(1500, 2);
  const Reference ref = ReferenceOf(inner.get(), req);

  std::unique_ptr<PrefillClient> one = Client(p.server->address(), 1);
  Fetched a = Fetch(one.get(), inner.get(), req);
  ASSERT_TRUE(a.status.ok()) << a.status.ToString();
  EXPECT_EQ(a.kv.transfer.transport(), v1::KV_TRANSPORT_GRPC);
  EXPECT_EQ(a.kv.transfer.grpc_streams(), 1);
  ExpectKvEqual(ReadKv(*a.cache, req.token_ids_size()), ref.kv, "1 stream");

  // Held until the KvStream calls wait for layers, so that the layers are
  // shared out among all the streams.
  engine.Hold();
  std::unique_ptr<PrefillClient> four = Client(p.server->address(), 4);
  Fetched b;
  std::thread fetch([&] { b = Fetch(four.get(), inner.get(), req); });
  ASSERT_TRUE(engine.WaitEntered(2, 30s));
  for (int i = 0; i < 3000 && p.service->attached_kv_streams() < want_streams - 1; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(p.service->attached_kv_streams(), want_streams - 1);
  engine.Release();
  fetch.join();
  ASSERT_TRUE(b.status.ok()) << b.status.ToString();
  EXPECT_EQ(b.kv.transfer.grpc_streams(), want_streams);
  // Which stream takes a layer depends on which one waits for a layer when
  // it becomes ready (a KvStream that finished its last layer in time takes
  // the next one too), so only this much is certain: the extra streams carry
  // KV, and more than one stream does unless there is a single extra one.
  int carrying = 0, extra_carrying = 0;
  for (size_t i = 0; i < b.kv.chunks_per_stream.size(); ++i) {
    carrying += b.kv.chunks_per_stream[i] > 0 ? 1 : 0;
    extra_carrying += i > 0 && b.kv.chunks_per_stream[i] > 0 ? 1 : 0;
  }
  EXPECT_GE(extra_carrying, 1) << "chunks per stream: " << ::testing::PrintToString(b.kv.chunks_per_stream);
  EXPECT_GE(carrying, std::min(want_streams - 1, 2))
      << "chunks per stream: " << ::testing::PrintToString(b.kv.chunks_per_stream);
  const std::vector<LayerKv> four_kv = ReadKv(*b.cache, req.token_ids_size());
  ExpectKvEqual(four_kv, ref.kv, "4 streams");
  ExpectKvEqual(four_kv, ReadKv(*a.cache, req.token_ids_size()), "4 streams against 1");
  EXPECT_EQ(b.cache->length(), req.token_ids_size());
  EXPECT_EQ(b.landed_bytes, a.landed_bytes);
  EXPECT_TRUE(
      std::equal(b.kv.summary.last_logits().begin(), b.kv.summary.last_logits().end(), ref.last_logits.begin()));
  for (int i = 0; i < 500 && p.service->attached_kv_streams() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(p.service->attached_kv_streams(), 0);
}

// The fixture has two layers: two streams carry them.
TEST(KvTransport, FourStreamsLandTheSameKvAsOneAndAsThePrefillsOwnCache) {
  ExpectFourStreamsLandWhatOneDoes(Path("llama"), 2);
}

TEST(KvTransport, FourStreamsOfEightLayersLandTheSameKvAsOne) {
  ExpectFourStreamsLandWhatOneDoes(EightLayerModel(), 4);
}

// A KvStream whose client never reads (a hostile or stuck peer): it is cut
// off after --write-stall-seconds and counted, the Prefill call it belongs to
// ends UNAVAILABLE (its layers cannot all arrive) instead of waiting for it,
// another request is served in full meanwhile, and nothing stays attached,
// buffered or in flight.
TEST(KvTransport, AKvStreamThatIsNeverReadIsCutOffAndHoldsUpNoOne) {
  std::unique_ptr<Engine> inner = LoadEngine(EightLayerModel());
  ASSERT_TRUE(inner);
  GatedEngine engine(inner.get());
  PrefillServiceOptions options;
  options.kv_grpc_streams = 2;
  options.kv_min_stream_bytes = 0;
  options.write_stall_seconds = 1.0;
  PrefillServer p(options, &engine);
  // A fixed 64 KiB stream window (no BDP growth), so that the stalled
  // stream cannot absorb a whole 8 MB layer: with windows grown by BDP
  // probing, a run on a loaded 2-core machine (2026-11-28) saw the Prefill
  // call end OK, the stream never cut off.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 10);
  auto channel = grpc::CreateCustomChannel(p.server->address(), grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);

  // Held until the KvStream has attached, so that it is handed layers.
  engine.Hold();
  v1::PrefillRequest req = RequestOf(4000, 9);  // 64 MB of KV: far past any flow-control window
  req.mutable_transport_offer()->set_grpc_streams(2);
  RawStreamCall prefill(&stub, "/seer.v1.PrefillService/Prefill", EncodeMessage(req).value());
  v1::LayoutHeader header;
  ASSERT_NO_FATAL_FAILURE(StartAndReadHeader(&prefill, &header));
  ASSERT_EQ(header.grpc_streams(), 2);
  v1::KvStreamRequest kr;
  kr.set_transfer_id(header.transfer_id());
  kr.set_index(1);
  RawStreamCall stalled(&stub, "/seer.v1.PrefillService/KvStream", EncodeMessage(kr).value());
  stalled.context()->set_deadline(std::chrono::system_clock::now() + 60s);
  stalled.Start();  // and never read
  for (int i = 0; i < 3000 && p.service->attached_kv_streams() < 1; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(p.service->attached_kv_streams(), 1);
  engine.Release();

  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status main_status;
  std::thread main_reader([&] {
    grpc::ByteBuffer b;
    while (prefill.Next(&b)) {}
    main_status = prefill.Finish();
  });
  // Meanwhile a whole request, one stream, lands exactly.
  std::unique_ptr<PrefillClient> client = Client(p.server->address(), 1);
  const v1::PrefillRequest other = RequestOf(600, 4);
  Fetched f = Fetch(client.get(), inner.get(), other);
  ASSERT_TRUE(f.status.ok()) << f.status.ToString();
  ExpectKvEqual(ReadKv(*f.cache, other.token_ids_size()), ReferenceOf(inner.get(), other).kv, "the other request");

  main_reader.join();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(main_status.error_code(), grpc::StatusCode::UNAVAILABLE) << main_status.error_message();
  EXPECT_NE(main_status.error_message().find("KvStream 1"), std::string::npos) << main_status.error_message();
  EXPECT_LT(took, 20.0);
  const grpc::Status cut = stalled.Finish();
  EXPECT_EQ(cut.error_code(), grpc::StatusCode::CANCELLED) << cut.error_message();
  EXPECT_GE(Series(p.Scrape(), "seer_stream_write_stalls_total"), 1);
  for (int i = 0; i < 500 && (p.service->attached_kv_streams() > 0 || p.service->buffered_bytes() > 0); ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(p.service->attached_kv_streams(), 0);
  EXPECT_EQ(p.service->buffered_bytes(), 0);
  EXPECT_EQ(Series(p.Scrape(), "seer_prefill_inflight_requests"), 0);
}

// --- fp8 -----------------------------------------------------------------------

// fp8 asked of a server without --allow-kv-fp8: the header says the cache's
// own type, the summary says why, the fallback is counted, and the KV lands
// exactly.
TEST(KvTransport, Fp8RefusedByTheServerIsReportedAndTheKvLandsExact) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillServer p(PrefillServiceOptions{}, engine.get());
  v1::PrefillRequest req = RequestOf(700, 3);
  req.set_kv_wire(v1::KV_WIRE_FP8_E4M3);
  const Reference ref = ReferenceOf(engine.get(), req);
  std::unique_ptr<PrefillClient> client = Client(p.server->address(), 2);
  Fetched f = Fetch(client.get(), engine.get(), req);
  ASSERT_TRUE(f.status.ok()) << f.status.ToString();
  EXPECT_EQ(f.kv.transfer.kv_wire(), v1::KV_WIRE_UNSPECIFIED);
  EXPECT_NE(f.kv.transfer.fallback_reason().find("--allow-kv-fp8"), std::string::npos)
      << f.kv.transfer.fallback_reason();
  EXPECT_EQ(f.kv.transfer.grpc_streams(), 1) << "0.7 MB of KV is not worth a second stream (16 MiB each)";
  ExpectKvEqual(ReadKv(*f.cache, req.token_ids_size()), ref.kv, "fp8 refused");
  EXPECT_EQ(Series(p.Scrape(), "seer_kv_transport_fallbacks_total{offered=\"fp8\",reason=\"refused\"}"), 1);
}

// fp8 allowed: every landed value is within the E4M3 rounding of its block's
// scale, recomputed here in float64 from the prefill's own cache (amax of
// each head's 64-token block / 448; half a step of the 3-bit mantissa for
// normals, 2^-10 of the scale for subnormals), the values are not simply
// copied, and the bytes on the wire are the codes and scales.
TEST(KvTransport, Fp8LandsWithinTheQuantisationErrorOfAFloat64Recomputation) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillServiceOptions options;
  options.allow_kv_fp8 = true;
  PrefillServer p(options, engine.get());
  v1::PrefillRequest req = RequestOf(700, 4);
  req.set_kv_wire(v1::KV_WIRE_FP8_E4M3);
  const Reference ref = ReferenceOf(engine.get(), req);
  std::unique_ptr<PrefillClient> client = Client(p.server->address(), 2);
  Fetched f = Fetch(client.get(), engine.get(), req);
  ASSERT_TRUE(f.status.ok()) << f.status.ToString();
  EXPECT_EQ(f.kv.transfer.kv_wire(), v1::KV_WIRE_FP8_E4M3);
  EXPECT_EQ(f.kv.transfer.fallback_reason(), "");

  const ModelConfig& c = engine->config();
  const int seq = req.token_ids_size(), block = 64;
  const std::vector<LayerKv> got = ReadKv(*f.cache, seq);
  int64_t checked = 0, changed = 0, outside = 0;
  double err2 = 0, ref2 = 0;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    for (int which = 0; which < 2; ++which) {
      const std::vector<float>& x = which == 0 ? ref.kv[layer].k : ref.kv[layer].v;
      const std::vector<float>& y = which == 0 ? got[layer].k : got[layer].v;
      for (int head = 0; head < c.num_kv_heads; ++head) {
        for (int b0 = 0; b0 < seq; b0 += block) {
          const int b1 = std::min(seq, b0 + block);
          const size_t first = (static_cast<size_t>(head) * seq + b0) * c.head_dim;
          const size_t last = (static_cast<size_t>(head) * seq + b1) * c.head_dim;
          double amax = 0;
          for (size_t i = first; i < last; ++i) amax = std::max(amax, std::abs(static_cast<double>(x[i])));
          const double s = amax / 448.0;
          for (size_t i = first; i < last; ++i) {
            const double xi = x[i], yi = y[i];
            const double bound = std::max(std::abs(xi) / 16.0, s / 1024.0) * (1 + 1e-5) + 1e-30;
            if (std::abs(yi - xi) > bound) ++outside;
            changed += yi != xi ? 1 : 0;
            err2 += (yi - xi) * (yi - xi);
            ref2 += xi * xi;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(outside, 0) << "of " << checked << " values";
  EXPECT_GT(changed, checked / 4) << "fp8 should round most values";
  EXPECT_LT(std::sqrt(err2 / ref2), 0.05);
  // Codes (a byte per element) and a float32 scale per head and block, for
  // K and V of every layer.
  const int64_t codes = int64_t{2} * c.num_layers * c.num_kv_heads * seq * c.head_dim;
  const int64_t scales = int64_t{2} * c.num_layers * c.num_kv_heads * ((seq + block - 1) / block) * 4;
  EXPECT_EQ(f.kv.transfer.bytes(), codes + scales);
  EXPECT_EQ(f.landed_bytes, codes);
}

// --- KvStream calls ------------------------------------------------------------

// A KvStream is checked against the transfer it names: an unknown transfer
// is NOT_FOUND (the call reached another replica), an index out of range or
// already attached INVALID_ARGUMENT, bytes that are no KvStreamRequest too.
// A transfer whose client opens fewer streams than announced still
// completes over the ones it opened.
TEST(KvTransport, KvStreamCallsAreCheckedAgainstTheirTransfer) {
  std::unique_ptr<Engine> inner = LoadEngine(EightLayerModel());
  ASSERT_TRUE(inner);
  GatedEngine engine(inner.get());
  PrefillServiceOptions options;
  options.kv_grpc_streams = 4;
  options.kv_min_stream_bytes = 0;  // the fixture's KV is small: spread it anyway
  PrefillServer p(options, &engine);
  auto channel = grpc::CreateChannel(p.server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  auto kv_stream = [&](const grpc::ByteBuffer& body, int* chunks = nullptr) {
    RawStreamCall call(&stub, "/seer.v1.PrefillService/KvStream", body);
    call.context()->set_deadline(std::chrono::system_clock::now() + 60s);
    call.Start();
    grpc::ByteBuffer b;
    DecodedResponse d;
    while (call.Next(&b))
      if (chunks != nullptr && DecodePrefillResponse(b, &d).ok() && d.is_chunk) ++*chunks;
    return call.Finish();
  };
  auto request = [](uint64_t id, int index) {
    v1::KvStreamRequest r;
    r.set_transfer_id(id);
    r.set_index(index);
    return EncodeMessage(r).value();
  };

  grpc::Status s = kv_stream(request(12345, 1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  EXPECT_NE(s.error_message().find("transfer_id"), std::string::npos) << s.error_message();

  engine.Hold();
  v1::PrefillRequest req = RequestOf(1000, 5);
  req.mutable_transport_offer()->set_grpc_streams(4);
  RawStreamCall prefill(&stub, "/seer.v1.PrefillService/Prefill", EncodeMessage(req).value());
  v1::LayoutHeader header;
  ASSERT_NO_FATAL_FAILURE(StartAndReadHeader(&prefill, &header));
  EXPECT_EQ(header.grpc_streams(), 4);
  EXPECT_EQ(header.transport(), v1::KV_TRANSPORT_GRPC);
  ASSERT_NE(header.transfer_id(), 0u);
  EXPECT_FALSE(header.prefill_instance().empty());

  for (int index : {0, 4, -1}) {
    s = kv_stream(request(header.transfer_id(), index));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << index << ": " << s.error_message();
    EXPECT_NE(s.error_message().find("index"), std::string::npos) << s.error_message();
  }
  const std::string garbage("\x0a\xff\xff\xff\xff\x0f", 6);
  grpc::Slice slice(garbage.data(), garbage.size());
  s = kv_stream(grpc::ByteBuffer(&slice, 1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("seer.v1.KvStreamRequest"), std::string::npos) << s.error_message();

  // Stream 1 attaches; a second stream 1 is refused.
  int stream1_chunks = 0;
  grpc::Status stream1;
  std::thread first([&] { stream1 = kv_stream(request(header.transfer_id(), 1), &stream1_chunks); });
  for (int i = 0; i < 3000 && p.service->attached_kv_streams() < 1; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(p.service->attached_kv_streams(), 1);
  s = kv_stream(request(header.transfer_id(), 1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("already attached"), std::string::npos) << s.error_message();

  // Streams 2 and 3 never come: streams 0 and 1 carry every chunk.
  engine.Release();
  int stream0_chunks = 0;
  bool summary = false;
  grpc::ByteBuffer b;
  DecodedResponse d;
  while (prefill.Next(&b)) {
    ASSERT_TRUE(DecodePrefillResponse(b, &d).ok());
    if (d.is_chunk) ++stream0_chunks;
    if (!d.is_chunk && d.message.has_summary()) summary = true;
  }
  EXPECT_TRUE(prefill.Finish().ok());
  first.join();
  EXPECT_TRUE(stream1.ok()) << stream1.error_message();
  EXPECT_TRUE(summary);
  const ModelConfig& c = engine.config();
  const int per_chunk = (65536 - 256) / (2 * c.num_kv_heads * c.head_dim * 4);
  EXPECT_EQ(stream0_chunks + stream1_chunks, c.num_layers * ((1000 + per_chunk - 1) / per_chunk));
  // The transfer is over: its id is unknown now.
  s = kv_stream(request(header.transfer_id(), 2));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
}

// --- through Generate ------------------------------------------------------------

// Generate through both services with several streams: the tokens are the
// monolithic engine's greedy tokens, the summary says how the KV moved, the
// decode worker counts the bytes it landed and the transfer, and every
// in-flight gauge is back at 0.
TEST(KvTransport, GenerateOverFourStreamsGivesTheMonolithicTokensAndReportsTheTransfer) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillServiceOptions options;
  options.kv_grpc_streams = 4;
  options.kv_min_stream_bytes = 0;  // the fixture's KV is small: spread it anyway
  PrefillServer p(options, engine.get());
  PrefillClientOptions co;
  co.kv_grpc_streams = 4;
  co.health_interval_seconds = 0;
  std::unique_ptr<PrefillClient> client = PrefillClient::Create(p.server->address(), co).value();
  auto registry = std::make_shared<prometheus::Registry>();
  DecodeMetrics dm(*registry);
  DecodeService decode(DecodeServiceOptions{}, client.get(), &dm);
  auto server = GrpcServer::Start("127.0.0.1:0", {&decode}, {"seer.v1.DecodeService"}, 16 << 20).value();
  ASSERT_TRUE(decode.SetEngine(engine.get()).ok());
  server->SetServing(true);

  constexpr int kNew = 12;
  const std::vector<int32_t> ids = seer::testing::RandomIds(900, 128, 6);
  // The monolithic engine: prefill, then greedy decode steps.
  const std::vector<int32_t> want = seer::testing::MonolithicTokens(
      *engine, ids, kNew, [](const std::vector<float>& l) { return ArgMax(std::span<const float>(l)); });

  auto stub = v1::DecodeService::NewStub(grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  v1::GenerateRequest g;
  for (int32_t id : ids) g.add_token_ids(id);
  g.set_max_new_tokens(kNew);
  g.set_kv_wire(v1::KV_WIRE_FP8_E4M3);  // refused by this prefill: reported, exact
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Generate(&ctx, g);
  std::vector<int32_t> tokens;
  v1::GenerateSummary summary;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.event_case() == v1::GenerateResponse::kToken) tokens.push_back(msg.token());
    if (msg.has_summary()) summary = msg.summary();
  }
  const grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(tokens, want);
  ASSERT_TRUE(summary.has_kv_transfer());
  const v1::KvTransferStats& t = summary.kv_transfer();
  EXPECT_EQ(t.transport(), v1::KV_TRANSPORT_GRPC);
  EXPECT_EQ(t.grpc_streams(), 2) << "4 offered and allowed; the fixture's 2 layers take one each";
  EXPECT_EQ(t.kv_wire(), v1::KV_WIRE_UNSPECIFIED);
  EXPECT_NE(t.fallback_reason().find("--allow-kv-fp8"), std::string::npos) << t.fallback_reason();
  const ModelConfig& c = engine->config();
  const double kv = 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * 4 * static_cast<double>(ids.size());
  EXPECT_EQ(t.bytes(), kv);
  EXPECT_EQ(summary.kv_bytes(), kv);

  server->Shutdown(5.0);
  decode.Shutdown();
  const std::string d = prometheus::TextSerializer().Serialize(registry->Collect());
  EXPECT_EQ(Series(d, "seer_kv_received_bytes_total"), kv);
  EXPECT_EQ(Series(d, "seer_kv_transfers_total{side=\"receive\",transport=\"grpc\",wire=\"f32\"}"), 1);
  EXPECT_EQ(Series(d, "seer_kv_transfer_bytes_total{side=\"receive\",transport=\"grpc\",wire=\"f32\"}"), kv);
  EXPECT_EQ(Series(d, "seer_kv_transfers_inflight{side=\"receive\",transport=\"grpc\"}"), 0);
  // The prefill records the send's end when its reactor is done, which may
  // come after the client's call has returned: wait for it (up to 10 s).
  for (int i = 0; i < 1000 && Series(p.Scrape(), "seer_prefill_inflight_requests") != 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  const std::string ps = p.Scrape();
  EXPECT_EQ(Series(ps, "seer_kv_sent_bytes_total"), kv);
  EXPECT_EQ(Series(ps, "seer_kv_transfers_total{side=\"send\",transport=\"grpc\",wire=\"f32\"}"), 1);
  EXPECT_EQ(Series(ps, "seer_kv_transfers_inflight{side=\"send\",transport=\"grpc\"}"), 0);
  EXPECT_EQ(Series(ps, "seer_prefill_inflight_requests"), 0);
}

}  // namespace
}  // namespace seer
