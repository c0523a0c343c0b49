// seer-kv-stream-bench: how fast a KV cache moves over loopback through gRPC,
// next to raw TCP with the same number of streams, in the same run. A program
// that prints a table (docs/STYLE.md), not a test.
//
// Rows:
//   - raw TCP: N connections, each moving its share of a KV-sized buffer into
//     the same place of another in 4 MiB send/recv calls, checked byte for
//     byte; the same, each connection receiving into a 4 MiB buffer of its
//     own and landing it into the destination with the host landing's
//     streaming copy (what a byte-stream RPC that reads into its own buffers
//     pays at the least); and, for comparison with earlier runs, the same
//     connections sending from and receiving into one 4 MiB buffer each (it
//     stays in the CPU caches, and nothing lands);
//   - gRPC, zero-copy, N streams (docs/KV_TRANSPORT.md): a Prefill call plus
//     N-1 KvStream calls, each on its own connection, sharing the layers out
//     as streams become free; chunks written with rpc/kv_chunk_codec straight
//     from the cache's rows (no copy on the sending side) and landed from the
//     received slices into a KvCache (rpc/landing: one copy), then checked
//     against the source cache byte for byte;
//   - today's path, 1 stream: the real PrefillService over a synthetic engine
//     that fills each layer, read (a) as messages only and (b) through the
//     decode worker's PrefillClient and KvAssembler into a KvCache.
// Every destination (raw TCP's buffer, the zero-copy row's KvCache) is
// allocated and touched once before the runs, as a serving process's are,
// and poisoned before each run. malloc is tuned as seer-decode tunes it
// (--malloc-tuning, server/common/malloc_tuning.h), since the gRPC rows stand
// for its receive path; each row's CPU seconds and page faults per run are
// printed beside its rate. With --json it prints one object: streams,
// raw_tcp_gbps (buffer to buffer) and grpc_gbps (the zero-copy N-stream row),
// best of the repeats, plus the rest.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <ctime>
#include <type_traits>
#include <random>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <atomic>
#include <condition_variable>
#include <mutex>

#include "base/version.h"
#include "base/flags.h"
#include "base/json.h"
#include "engine/engine.h"
#include "rpc/kv_chunk_codec.h"
#include "rpc/kv_wire.h"
#include "rpc/landing/kv_landing.h"
#include "server/common/grpc_server.h"
#include "server/common/grpc_experiments.h"
#include "server/common/malloc_tuning.h"
#include "server/common/metrics.h"
#include "rpc/lock_order.h"
#include "rpc/prefill_client.h"
#include "server/prefill/prefill_service.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Fills each layer of the cache with a per-layer pattern and reports it done.
class SyntheticKvEngine final : public Engine {
 public:
  SyntheticKvEngine(int layers, int kv_heads, int head_dim, int tokens) {
    config_.architecture_name = "synthetic";
    config_.vocab_size = 256;
    config_.num_layers = layers;
    config_.num_heads = kv_heads;
    config_.num_kv_heads = kv_heads;
    config_.head_dim = head_dim;
    config_.hidden_size = kv_heads * head_dim;
    config_.max_position_embeddings = tokens;
  }
  const ModelConfig& config() const override { return config_; }
  uint64_t fingerprint() const override { return 0x5eedbe0c0ffee000ull; }
  const GateWeights* gates() const override { return nullptr; }
  std::string device_name() const override { return "synthetic (fills K/V, computes nothing)"; }

 protected:
  bool OwnsCacheType(const KvCache& cache) const override {
    return dynamic_cast<const HostKvCache*>(&cache) != nullptr;
  }
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) override {
    return std::unique_ptr<KvCache>(
        new HostKvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity, gate_keys));
  }
  StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions&, KvCache* cache,
                                     PrefillObserver* observer) override {
    auto* host = static_cast<HostKvCache*>(cache);
    const int L = static_cast<int>(ids.size());
    const size_t n = static_cast<size_t>(config_.num_kv_heads) * cache->capacity() * config_.head_dim;
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      const auto t0 = Clock::now();
      std::fill(host->k(layer), host->k(layer) + n, static_cast<float>(layer) + 0.25f);
      std::fill(host->v(layer), host->v(layer) + n, static_cast<float>(layer) + 0.75f);
      if (observer) {
        LayerDone done{layer, L, 0, cache, 1.0, Seconds(t0, Clock::now())};
        SEER_RETURN_IF_ERROR(observer->OnLayerDone(done));
      }
    }
    cache->set_length(L);
    PrefillResult r;
    r.logits_rows = 1;
    r.logits.assign(config_.vocab_size, 0.0f);
    r.layer_density.assign(config_.num_layers, 1.0);
    return r;
  }
  Status RunDecodeStep(int32_t, KvCache*, std::vector<float>*) override {
    return Unimplemented("the synthetic engine does not decode");
  }

 private:
  ModelConfig config_;
};

double RawTcpSecondsOne(const char* src, char* dst, size_t bytes, size_t block, bool bounce);

// Sends `bytes` over `streams` loopback TCP connections at once (each its
// share, in `block`-sized send and recv calls, a sending and a receiving
// thread per connection); the seconds from the first connect to the last
// byte received. With src and dst, stream i sends its share of src and
// receives it into the same place in dst: a KV cache moved from one buffer
// into another, as a byte-stream transport would. Without them (null), every
// send and recv reuses one `block`-sized buffer that stays in the CPU's
// caches, and the bytes land nowhere. With `bounce`, each connection
// receives into a `block`-sized buffer of its own and lands each full buffer
// into dst with the host landing's streaming copy (BytePieces::CopyTo): what
// any byte-stream RPC that reads into its own buffers, as gRPC does, pays
// at the least.
double RawTcpSeconds(const char* src, char* dst, size_t bytes, size_t block, int streams, bool bounce = false) {
  if (streams <= 1) return RawTcpSecondsOne(src, dst, bytes, block, bounce);
  std::vector<double> each(streams, -1.0);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  size_t offset = 0;
  for (int i = 0; i < streams; ++i) {
    const size_t share = bytes / streams + (i == 0 ? bytes % streams : 0);
    const char* s = src != nullptr ? src + offset : nullptr;
    char* d = dst != nullptr ? dst + offset : nullptr;
    threads.emplace_back([&, i, s, d, share] { each[i] = RawTcpSecondsOne(s, d, share, block, bounce); });
    offset += share;
  }
  for (auto& t : threads) t.join();
  for (double e : each)
    if (e < 0) return -1.0;
  return Seconds(start, Clock::now());
}

// One connection: the seconds from connect to the last byte received.
double RawTcpSecondsOne(const char* src, char* dst, size_t bytes, size_t block, bool bounce) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listener, 1) != 0 || getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("raw tcp: listen");
    return -1.0;
  }
  const auto start = Clock::now();
  std::thread sender([&] {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      std::perror("raw tcp: connect");
      close(s);
      return;
    }
    std::vector<char> ring(src != nullptr ? 0 : block, 'k');
    size_t sent = 0;
    while (sent < bytes) {
      ssize_t n = send(s, src != nullptr ? src + sent : ring.data(), std::min(bytes - sent, block), 0);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    close(s);
  });
  int conn = accept(listener, nullptr, nullptr);
  std::vector<char> ring(dst != nullptr && !bounce ? 0 : block);
  size_t got = 0, landed = 0;
  while (conn >= 0 && got < bytes) {
    char* to = dst == nullptr ? ring.data() : bounce ? ring.data() + (got - landed) : dst + got;
    const size_t room = dst != nullptr && bounce ? block - (got - landed) : block;
    ssize_t n = recv(conn, to, std::min(bytes - got, room), 0);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
    if (dst != nullptr && bounce && (got - landed == block || got == bytes)) {
      BytePieces piece;
      piece.Add(ring.data(), got - landed);
      piece.CopyTo(0, got - landed, dst + landed, /*streaming=*/true);
      landed = got;
    }
  }
  const double seconds = Seconds(start, Clock::now());
  sender.join();
  if (conn >= 0) close(conn);
  close(listener);
  return got == bytes ? seconds : -1.0;
}

// --- The zero-copy, multi-stream gRPC path ----------------------------------
//
// A stand-in for seer-prefill's transport (docs/KV_TRANSPORT.md): one
// transfer's layers are shared out among its streams, the Prefill call
// (header first, summary last) and KvStream calls that attach by transfer id;
// each stream writes one chunk at a time (OnWriteDone drives the next), the
// chunk's K and V referencing the cache's rows.

struct ZeroCopyTransfer {
  uint64_t id = 0;
  int streams = 1;
  std::shared_ptr<const HostKvCache> cache;
  int seq_len = 0;
  int tokens_per_chunk = 1;

  std::mutex mu;
  int next_layer = 0;
  int busy = 0;  // streams writing a layer
  std::function<void()> all_written;  // set by stream 0 once it runs out of layers

  // The next layer to write, or -1.
  int Pop() {
    std::lock_guard<std::mutex> lock(mu);
    if (next_layer >= cache->layout().num_layers) return -1;
    ++busy;
    return next_layer++;
  }
  // A stream finished writing a layer; runs stream 0's continuation when it
  // was the last one and no layer is left.
  void Done() {
    std::function<void()> run;
    {
      std::lock_guard<std::mutex> lock(mu);
      --busy;
      if (busy == 0 && next_layer >= cache->layout().num_layers && all_written) run = std::move(all_written);
    }
    if (run) run();
  }
  // Stream 0 has no layer left: `then` runs now if no stream is busy, or when
  // the last one finishes.
  void WhenAllWritten(std::function<void()> then) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (busy > 0) {
        all_written = std::move(then);
        return;
      }
    }
    then();
  }
};

class LayerStreamWriter final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  LayerStreamWriter(std::shared_ptr<ZeroCopyTransfer> t, int index) : t_(std::move(t)), index_(index) {
    if (index_ == 0) {
      v1::PrefillResponse h;
      const KvLayout& l = t_->cache->layout();
      *h.mutable_header() = MakeLayoutHeader(l, 0x5eedbe0c0ffee000ull, 64, t_->seq_len, 256);
      h.mutable_header()->set_transport(v1::KV_TRANSPORT_GRPC);
      h.mutable_header()->set_transfer_id(t_->id);
      h.mutable_header()->set_grpc_streams(t_->streams);
      buf_ = EncodeMessage(h).value();
      StartWrite(&buf_);
    } else {
      WriteNext();
    }
  }

  void OnWriteDone(bool ok) override {
    buf_.Clear();
    if (!ok) {
      if (layer_ >= 0) t_->Done();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    if (summary_sent_) {
      Finish(grpc::Status::OK);
      return;
    }
    WriteNext();
  }
  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    const int seq = t_->seq_len;
    if (layer_ >= 0 && t0_ >= seq) {
      t_->Done();
      layer_ = -1;
    }
    if (layer_ < 0) {
      layer_ = t_->Pop();
      t0_ = 0;
      if (layer_ < 0) {
        if (index_ != 0) {
          Finish(grpc::Status::OK);
          return;
        }
        t_->WhenAllWritten([this] {
          v1::PrefillResponse s;
          s.mutable_summary()->mutable_last_logits()->Resize(256, 0.0f);
          summary_sent_ = true;
          buf_ = EncodeMessage(s).value();
          StartWrite(&buf_);
        });
        return;
      }
    }
    const KvLayout& l = t_->cache->layout();
    const int n = std::min(t_->tokens_per_chunk, seq - t0_);
    KvChunkRef c;
    c.layer = layer_;
    c.token_start = t0_;
    c.token_count = n;
    const size_t row = static_cast<size_t>(n) * l.head_dim * sizeof(float);
    for (int h = 0; h < l.num_kv_heads; ++h) {
      const size_t at = (static_cast<size_t>(h) * t_->cache->capacity() + t0_) * l.head_dim;
      c.k.Add(t_->cache->k(layer_) + at, row);
      c.v.Add(t_->cache->v(layer_) + at, row);
    }
    t0_ += n;
    buf_ = EncodeKvChunk(c, t_->cache);
    StartWrite(&buf_);
  }

  std::shared_ptr<ZeroCopyTransfer> t_;
  const int index_;
  int layer_ = -1;
  int t0_ = 0;
  bool summary_sent_ = false;
  grpc::ByteBuffer buf_;
};

class ZeroCopyPrefill final
    : public v1::PrefillService::WithRawCallbackMethod_Prefill<
          v1::PrefillService::WithRawCallbackMethod_KvStream<v1::PrefillService::CallbackService>> {
 public:
  ZeroCopyPrefill(std::shared_ptr<const HostKvCache> cache, int seq_len, int tokens_per_chunk, int streams)
      : cache_(std::move(cache)), seq_len_(seq_len), tokens_per_chunk_(tokens_per_chunk), streams_(streams) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext*, const grpc::ByteBuffer*) override {
    auto t = std::make_shared<ZeroCopyTransfer>();
    t->id = next_id_.fetch_add(1);
    t->streams = streams_;
    t->cache = cache_;
    t->seq_len = seq_len_;
    t->tokens_per_chunk = tokens_per_chunk_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      transfers_[t->id] = t;  // a real server forgets it at the summary
    }
    return new LayerStreamWriter(t, 0);
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* KvStream(grpc::CallbackServerContext*,
                                                       const grpc::ByteBuffer* request) override {
    v1::KvStreamRequest req;
    std::shared_ptr<ZeroCopyTransfer> t;
    if (DecodeMessage(*request, &req).ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = transfers_.find(req.transfer_id());
      if (it != transfers_.end()) t = it->second;
    }
    if (!t || req.index() < 1 || req.index() >= t->streams) {
      class Refuse final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
       public:
        Refuse() { Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such transfer on this server")); }
        void OnDone() override { delete this; }
      };
      return new Refuse();
    }
    return new LayerStreamWriter(t, req.index());
  }

 private:
  std::shared_ptr<const HostKvCache> cache_;
  int seq_len_, tokens_per_chunk_, streams_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<ZeroCopyTransfer>> transfers_;
};

// Transport settings for bulk KV (both ends): large HTTP/2 frames, large
// socket reads, a large flow-control window. SEER_KV_TUNE=0 turns them off.
template <typename Args>
void TuneForBulk(Args* args) {
  const char* env = std::getenv("SEER_KV_TUNE");
  if (env != nullptr && std::string(env) == "0") return;
  auto set = [&](const char* name, int v) {
    if constexpr (std::is_same_v<Args, grpc::ServerBuilder>)
      args->AddChannelArgument(name, v);
    else
      args->SetInt(name, v);
  };
  set(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1);
  set(GRPC_ARG_TCP_READ_CHUNK_SIZE, 4 << 20);
  set(GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 1 << 20);
  set(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 16 << 20);
  set(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  set(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 16 << 20);
}

// One channel (and so one TCP connection) per stream: streams on one
// connection would share its single transport thread.
std::shared_ptr<grpc::Channel> StreamChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt("seer.kv_stream_index", index);  // a distinct argument: a distinct subchannel
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  TuneForBulk(&args);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

// Receives one transfer over `channels.size()` streams into `cache`; the
// seconds from the Prefill call to the last chunk landed, or -1 on any error.
double ZeroCopySeconds(const std::vector<std::shared_ptr<grpc::Channel>>& channels, HostKvCache* cache,
                       std::string* error) {
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (const auto& ch : channels) stubs.push_back(std::make_unique<grpc::GenericStub>(ch));
  std::mutex mu;
  std::string first_error;
  auto fail = [&](const std::string& e) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.empty()) first_error = e;
  };
  // Reads one stream to its end, landing every chunk.
  auto drain = [&](RawStreamCall* call, v1::PrefillResponse* header) {
    auto landing = MakeHostKvLanding(cache, KvWireFormat{DType::kF32, false, 64});
    grpc::ByteBuffer buf;
    DecodedResponse d;
    while (call->Next(&buf)) {
      if (Status s = DecodePrefillResponse(buf, &d); !s.ok()) {
        fail(s.ToString());
        call->Cancel();
        break;
      }
      if (d.is_chunk) {
        if (Status s = (*landing)->Land(d.chunk); !s.ok()) {
          fail(s.ToString());
          call->Cancel();
          break;
        }
      } else if (header != nullptr && d.message.has_header()) {
        *header = d.message;
        return true;  // the caller opens the other streams, then drains the rest
      }
    }
    const grpc::Status st = call->Finish();
    if (!st.ok()) fail(st.error_message());
    return false;
  };

  const auto start = Clock::now();
  RawStreamCall first(stubs[0].get(), "/seer.v1.PrefillService/Prefill", EncodeMessage(v1::PrefillRequest()).value());
  first.Start();
  v1::PrefillResponse header;
  if (!drain(&first, &header)) {
    *error = first_error.empty() ? "no header" : first_error;
    return -1.0;
  }
  const int streams = std::min<int>(header.header().grpc_streams(), static_cast<int>(stubs.size()));
  std::vector<std::thread> others;
  for (int i = 1; i < streams; ++i) {
    others.emplace_back([&, i] {
      v1::KvStreamRequest req;
      req.set_transfer_id(header.header().transfer_id());
      req.set_index(i);
      RawStreamCall call(stubs[i].get(), "/seer.v1.PrefillService/KvStream", EncodeMessage(req).value());
      call.Start();
      drain(&call, nullptr);
    });
  }
  drain(&first, nullptr);
  for (auto& t : others) t.join();
  const double seconds = Seconds(start, Clock::now());
  if (!first_error.empty()) {
    *error = first_error;
    return -1.0;
  }
  return seconds;
}

struct Row {
  std::string path;
  std::vector<double> seconds;
  std::vector<double> cpu;  // process CPU seconds (all threads, both ends) of each run
  std::vector<long> faults;  // the process's minor page faults during each run
};

// The least of a row's per-run values (CPU seconds, page faults), -1 for
// none: under contention from other processes the wall-clock rate wanders,
// what a run costs much less.
template <typename T>
T Least(const std::vector<T>& runs) {
  return runs.empty() ? T(-1) : *std::min_element(runs.begin(), runs.end());
}

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Minor page faults of the whole process so far: a fresh page that a run
// touches costs a fault and a cleared page, as much as a copy of it.
long MinorFaults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

double Best(const Row& r) {
  double best = -1.0;
  for (double x : r.seconds)
    if (x < 0)
      return -1.0;
    else if (best < 0 || x < best)
      best = x;
  return best;
}

double Gbps(size_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0; }

void PrintRow(const Row& r, double mib) {
  std::vector<double> s = r.seconds;
  std::sort(s.begin(), s.end());
  if (s.empty() || s.front() < 0) {
    std::printf("%-46s  failed\n", r.path.c_str());
    return;
  }
  const double best = s.front(), median = s[s.size() / 2];
  const double bytes = mib * 1048576.0;
  std::printf("%-46s %9.1f %9.4f %9.4f %10.2f %10.2f\n", r.path.c_str(), mib, best, median, bytes / best / 1e9,
              bytes / median / 1e9);
}

int Main(int argc, char** argv) {
  int64_t layers = 32, kv_heads = 8, head_dim = 128, tokens = 1024, chunk_bytes = int64_t{4} << 20, repeats = 3;
  int64_t streams = 2;
  bool json = false, protobuf_rows = true, malloc_tuning = true, lock_order_checks = false;
  std::string grpc_experiments = kBulkReceiveGrpcExperiments;
  FlagSet flags("seer-kv-stream-bench [flags]",
                "KV streaming throughput on loopback: gRPC (zero-copy, N streams; and today's Prefill stream) next\n"
                "to raw TCP with the same streams, from the same run. The default shape (32 layers x 8 KV heads x\n"
                "128, 1024 tokens, F32) is 256 MiB of KV.");
  flags.Int("layers", &layers, "layers");
  flags.Int("kv-heads", &kv_heads, "KV heads");
  flags.Int("head-dim", &head_dim, "head_dim");
  flags.Int("tokens", &tokens, "prompt tokens");
  flags.Int("chunk-bytes", &chunk_bytes, "KvChunk message bound (the server's --chunk-bytes)");
  flags.Int("repeats", &repeats, "runs of each path (best and median are printed)");
  flags.Int("streams", &streams, "streams (TCP connections) for the raw TCP and zero-copy gRPC rows");
  flags.Bool("protobuf-rows", &protobuf_rows, "also measure today's PrefillService path (1 stream)");
  flags.Bool("json", &json, "print one JSON object instead of the table");
  flags.Bool("malloc-tuning", &malloc_tuning,
             "tune malloc as seer-decode does by default (its --malloc-tuning): the gRPC rows stand for its "
             "receive path");
  flags.String("grpc-experiments", &grpc_experiments,
               "gRPC core experiments (GRPC_EXPERIMENTS; empty: none), seer-decode's --grpc-experiments default: "
               "the gRPC rows stand for its receive path");
  flags.Bool("lock-order-checks", &lock_order_checks,
             "abseil's lock-order detector on every gRPC mutex, as seer-decode's --lock-order-checks (off there "
             "by default, as here)");
  if (Status s = flags.Parse(argc, argv); !s.ok() || flags.help_requested()) {
    std::fprintf(s.ok() ? stdout : stderr, "%s%s", s.ok() ? "" : (s.ToString() + "\n\n").c_str(), flags.Help().c_str());
    return s.ok() ? 0 : 2;
  }
  if (layers < 1 || kv_heads < 1 || head_dim < 1 || tokens < 1 || repeats < 1 || streams < 1 || streams > 64) {
    std::fprintf(stderr, "every size must be >= 1, and --streams at most 64\n");
    return 2;
  }

  // Before any gRPC thread starts, as seer-decode does.
  const std::string malloc_line = malloc_tuning ? TuneMallocForBulkReceive() : "malloc: glibc defaults";
  const std::string experiments_line = EnableGrpcExperiments(grpc_experiments);
  // What gRPC will read, as a JSON string.
  const char* experiments_env = std::getenv("GRPC_EXPERIMENTS");
  const std::string experiments = JsonValue::String(experiments_env != nullptr ? experiments_env : "").Dump();
  const std::string lock_line = SetLockOrderChecks(lock_order_checks);

  SyntheticKvEngine engine(static_cast<int>(layers), static_cast<int>(kv_heads), static_cast<int>(head_dim),
                           static_cast<int>(tokens));
  const KvLayout layout{static_cast<int>(layers), static_cast<int>(kv_heads), static_cast<int>(head_dim), DType::kF32};
  const size_t kv_bytes = 2 * layout.LayerBytes(static_cast<int>(tokens)) * static_cast<size_t>(layers);
  const double mib = static_cast<double>(kv_bytes) / 1048576.0;
  StatusOr<int> per_chunk = TokensPerChunk(layout, chunk_bytes);
  if (!per_chunk.ok()) {
    std::fprintf(stderr, "%s\n", per_chunk.status().ToString().c_str());
    return 2;
  }

  // The zero-copy server: its own gRPC server (the service name is the
  // PrefillService's), over a filled host cache.
  auto source =
      std::make_shared<HostKvCache>(layout.num_layers, layout.num_kv_heads, layout.head_dim, static_cast<int>(tokens));
  {
    std::mt19937 rng(1);
    for (int l = 0; l < layout.num_layers; ++l) {
      const size_t n = static_cast<size_t>(layout.num_kv_heads) * tokens * layout.head_dim;
      for (size_t i = 0; i < n; ++i) {
        source->k(l)[i] = static_cast<float>(rng() % 1000) * 0.25f;
        source->v(l)[i] = static_cast<float>(rng() % 1000) * -0.5f;
      }
    }
  }
  ZeroCopyPrefill zc_service(source, static_cast<int>(tokens), *per_chunk, static_cast<int>(streams));
  int zc_port = 0;
  grpc::ServerBuilder zc_builder;
  zc_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &zc_port);
  zc_builder.RegisterService(&zc_service);
  TuneForBulk(&zc_builder);
  std::unique_ptr<grpc::Server> zc_server = zc_builder.BuildAndStart();
  if (zc_server == nullptr) {
    std::fprintf(stderr, "could not start the zero-copy server\n");
    return 1;
  }
  const std::string zc_addr = "127.0.0.1:" + std::to_string(zc_port);
  std::vector<std::shared_ptr<grpc::Channel>> zc_channels;
  for (int i = 0; i < streams; ++i) zc_channels.push_back(StreamChannel(zc_addr, i));

  auto registry = std::make_shared<prometheus::Registry>();
  PrefillMetrics metrics(*registry);
  PrefillServiceOptions options;
  options.chunk_bytes = chunk_bytes;
  options.stream_buffer_bytes = std::max<int64_t>(chunk_bytes, int64_t{64} << 20);
  if (Status s = PrefillService::CheckOptions(options); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 2;
  }
  PrefillService service(options, &metrics);
  StatusOr<std::unique_ptr<GrpcServer>> server =
      GrpcServer::Start("127.0.0.1:0", {&service}, {"seer.v1.PrefillService"}, 16 << 20);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  if (Status s = service.SetEngine(&engine); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  (*server)->SetServing(true);

  StatusOr<std::unique_ptr<PrefillClient>> client = PrefillClient::Create((*server)->address(), {});
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }
  v1::PrefillRequest request;
  for (int64_t i = 0; i < tokens; ++i) request.add_token_ids(static_cast<int32_t>(i % 256));
  ExpectedLayout expected{engine.fingerprint(), layout.num_layers, layout.num_kv_heads, layout.head_dim,
                          engine.config().vocab_size};

  // What the synthetic engine itself costs: filling the cache, no stream.
  double fill_seconds = 0.0;
  {
    std::unique_ptr<KvCache> cache = std::move(engine.NewCache(static_cast<int>(tokens))).value();
    std::vector<int32_t> ids(request.token_ids().begin(), request.token_ids().end());
    const auto start = Clock::now();
    (void)engine.Prefill(ids, {}, cache.get(), nullptr);
    fill_seconds = Seconds(start, Clock::now());
  }

  // Raw TCP moves a KV-sized buffer into another (both touched before the
  // runs, as a serving process's buffers are); the zero-copy gRPC path lands
  // into one KvCache, also allocated and touched before the runs. Both
  // destinations are poisoned before each run and checked after it.
  std::vector<char> tcp_src(kv_bytes), tcp_dst(kv_bytes, 0);
  {
    std::mt19937 rng(2);
    for (char& c : tcp_src) c = static_cast<char>(rng());
  }
  HostKvCache zc_cache(layout.num_layers, layout.num_kv_heads, layout.head_dim, static_cast<int>(tokens));
  const size_t layer_floats = static_cast<size_t>(layout.num_kv_heads) * tokens * layout.head_dim;

  const std::string n = std::to_string(streams);
  Row tcp{"raw TCP, " + n + " stream(s), buffer -> buffer", {}, {}, {}};
  Row tcp_bounce{"raw TCP, " + n + " stream(s), via 4 MiB buffers -> buffer", {}, {}, {}};
  Row tcp_ring{"raw TCP, " + n + " stream(s), 4 MiB ring, lands nothing", {}, {}, {}};
  Row zero_copy{"gRPC zero-copy, " + n + " stream(s) -> KvCache", {}, {}, {}};
  Row read_only{"gRPC Prefill stream (today), read only", {}, {}, {}};
  Row assembled{"gRPC Prefill stream (today) -> KvCache", {}, {}, {}};
  std::string zc_error;
  bool zc_verified = true, tcp_verified = true, bounce_verified = true;
  for (int64_t r = 0; r < repeats; ++r) {
    std::memset(tcp_dst.data(), 0xFF, kv_bytes);
    const double c1 = CpuSeconds();
    const long f1 = MinorFaults();
    const double tcp_sec =
        RawTcpSeconds(tcp_src.data(), tcp_dst.data(), kv_bytes, size_t{4} << 20, static_cast<int>(streams));
    tcp.cpu.push_back(CpuSeconds() - c1);
    tcp.faults.push_back(MinorFaults() - f1);
    tcp_verified = tcp_verified && std::memcmp(tcp_dst.data(), tcp_src.data(), kv_bytes) == 0;
    tcp.seconds.push_back(tcp_sec >= 0 && tcp_verified ? tcp_sec : -1.0);
    std::memset(tcp_dst.data(), 0xFF, kv_bytes);
    const double c3 = CpuSeconds();
    const double bounce_sec =
        RawTcpSeconds(tcp_src.data(), tcp_dst.data(), kv_bytes, size_t{4} << 20, static_cast<int>(streams), true);
    tcp_bounce.cpu.push_back(CpuSeconds() - c3);
    bounce_verified = bounce_verified && std::memcmp(tcp_dst.data(), tcp_src.data(), kv_bytes) == 0;
    tcp_bounce.seconds.push_back(bounce_sec >= 0 && bounce_verified ? bounce_sec : -1.0);
    const double c2 = CpuSeconds();
    tcp_ring.seconds.push_back(RawTcpSeconds(nullptr, nullptr, kv_bytes, size_t{4} << 20, static_cast<int>(streams)));
    tcp_ring.cpu.push_back(CpuSeconds() - c2);

    {
      for (int l = 0; l < layout.num_layers; ++l) {
        std::memset(zc_cache.k(l), 0xFF, layer_floats * 4);
        std::memset(zc_cache.v(l), 0xFF, layer_floats * 4);
      }
      const double c0 = CpuSeconds();
      const long f0 = MinorFaults();
      const double sec = ZeroCopySeconds(zc_channels, &zc_cache, &zc_error);
      zero_copy.cpu.push_back(CpuSeconds() - c0);
      zero_copy.faults.push_back(MinorFaults() - f0);
      for (int l = 0; l < layout.num_layers && sec >= 0; ++l)
        zc_verified = zc_verified && std::memcmp(zc_cache.k(l), source->k(l), layer_floats * 4) == 0 &&
                      std::memcmp(zc_cache.v(l), source->v(l), layer_floats * 4) == 0;
      zero_copy.seconds.push_back(sec >= 0 && zc_verified ? sec : -1.0);
    }

    if (!protobuf_rows) continue;
    {
      auto stub =
          v1::PrefillService::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      const auto start = Clock::now();
      auto reader = stub->Prefill(&context, request);
      v1::PrefillResponse msg;
      size_t got = 0;
      while (reader->Read(&msg))
        if (msg.has_chunk()) got += msg.chunk().k().size() + msg.chunk().v().size();
      const grpc::Status st = reader->Finish();
      read_only.seconds.push_back(st.ok() && got == kv_bytes ? Seconds(start, Clock::now()) : -1.0);
    }

    {
      HostKvCache cache(layout.num_layers, layout.num_kv_heads, layout.head_dim, static_cast<int>(tokens));
      CallCanceller canceller;
      const auto start = Clock::now();
      StatusOr<FetchedKv> fetched = (*client)->Fetch(request, expected, &cache, &canceller, [](int64_t) {});
      const double seconds = Seconds(start, Clock::now());
      if (!fetched.ok()) std::fprintf(stderr, "fetch: %s\n", fetched.status().ToString().c_str());
      assembled.seconds.push_back(fetched.ok() && fetched->kv_bytes == static_cast<int64_t>(kv_bytes) ? seconds : -1.0);
    }
  }
  if (!zc_error.empty()) std::fprintf(stderr, "zero-copy gRPC: %s\n", zc_error.c_str());
  if (!zc_verified) std::fprintf(stderr, "zero-copy gRPC: the received cache differs from the source\n");
  if (!tcp_verified) std::fprintf(stderr, "raw TCP: the received buffer differs from the source\n");
  if (!bounce_verified) std::fprintf(stderr, "raw TCP via buffers: the received buffer differs from the source\n");

  const double best_tcp = Best(tcp), best_zc = Best(zero_copy), best_ring = Best(tcp_ring),
               best_bounce = Best(tcp_bounce);
  if (json) {
    std::printf(
        "{\"streams\": %lld, \"bytes\": %zu, \"repeats\": %lld, \"hardware_threads\": %u, "
        "\"raw_tcp_gbps\": %.4f, \"grpc_gbps\": %.4f, \"grpc_to_raw_tcp\": %.4f, "
        "\"raw_tcp_ring_gbps\": %.4f, \"grpc_to_raw_tcp_ring\": %.4f, "
        "\"raw_tcp_via_buffers_gbps\": %.4f, \"grpc_to_raw_tcp_via_buffers\": %.4f, \"raw_tcp_via_buffers_cpu_s\": %.4f, "
        "\"grpc_protobuf_1_stream_gbps\": %.4f, \"grpc_protobuf_read_only_gbps\": %.4f, "
        "\"raw_tcp_cpu_s\": %.4f, \"raw_tcp_ring_cpu_s\": %.4f, \"grpc_cpu_s\": %.4f, "
        "\"raw_tcp_page_faults\": %ld, \"grpc_page_faults\": %ld, "
        "\"malloc_tuning\": %s, \"lock_order_checks\": %s, \"grpc_experiments\": %s, \"raw_tcp_verified\": %s, "
        "\"raw_tcp_via_buffers_verified\": %s, \"grpc_verified\": %s}\n",
        static_cast<long long>(streams), kv_bytes, static_cast<long long>(repeats), std::thread::hardware_concurrency(),
        Gbps(kv_bytes, best_tcp), Gbps(kv_bytes, best_zc), best_tcp > 0 && best_zc > 0 ? best_tcp / best_zc : 0.0,
        Gbps(kv_bytes, best_ring), best_ring > 0 && best_zc > 0 ? best_ring / best_zc : 0.0,
        Gbps(kv_bytes, best_bounce), best_bounce > 0 && best_zc > 0 ? best_bounce / best_zc : 0.0,
        Least(tcp_bounce.cpu), Gbps(kv_bytes, Best(assembled)), Gbps(kv_bytes, Best(read_only)), Least(tcp.cpu),
        Least(tcp_ring.cpu), Least(zero_copy.cpu), Least(tcp.faults), Least(zero_copy.faults),
        malloc_tuning ? "true" : "false", lock_order_checks ? "true" : "false", experiments.c_str(),
        tcp_verified && best_tcp > 0 ? "true" : "false", bounce_verified && best_bounce > 0 ? "true" : "false",
        zc_verified && best_zc > 0 ? "true" : "false");
  } else {
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::printf("KV streaming on loopback, %s, %u hardware threads; %s; %s; %s\n", date,
                std::thread::hardware_concurrency(), malloc_line.c_str(), lock_line.c_str(), experiments_line.c_str());
    std::printf(
        "KV: %lld layers x %lld KV heads x %lld head_dim x %lld tokens x F32, K and V = %.1f MiB; "
        "KvChunk <= %lld bytes; %lld runs\n",
        static_cast<long long>(layers), static_cast<long long>(kv_heads), static_cast<long long>(head_dim),
        static_cast<long long>(tokens), mib, static_cast<long long>(chunk_bytes), static_cast<long long>(repeats));
    std::printf("%-46s %9s %9s %9s %10s %10s\n", "path", "MiB", "best s", "median s", "best GB/s", "median GB/s");
    PrintRow(tcp, mib);
    PrintRow(tcp_bounce, mib);
    PrintRow(tcp_ring, mib);
    PrintRow(zero_copy, mib);
    if (protobuf_rows) {
      PrintRow(read_only, mib);
      PrintRow(assembled, mib);
      std::printf(
          "(today's rows include the synthetic engine filling the cache, %.4f s on its own, overlapped\n"
          " with the stream layer by layer)\n",
          fill_seconds);
    }
    std::printf(
        "zero-copy gRPC / raw TCP with %lld stream(s), buffer to buffer: %.2f (best runs; against raw TCP via 4 MiB "
        "buffers and a landing copy: %.2f; against the 4 MiB ring that lands nothing: %.2f); CPU per run (both ends, "
        "least): raw TCP %.3f s (via buffers %.3f s, ring %.3f s), zero-copy gRPC %.3f s; minor page faults per run "
        "(least): raw TCP %ld, zero-copy gRPC %ld\n",
        static_cast<long long>(streams), best_tcp > 0 && best_zc > 0 ? best_tcp / best_zc : 0.0,
        best_bounce > 0 && best_zc > 0 ? best_bounce / best_zc : 0.0,
        best_ring > 0 && best_zc > 0 ? best_ring / best_zc : 0.0, Least(tcp.cpu), Least(tcp_bounce.cpu),
        Least(tcp_ring.cpu), Least(zero_copy.cpu), Least(tcp.faults), Least(zero_copy.faults));
  }
  zc_server->Shutdown();
  (*server)->Shutdown(5.0);
  service.Shutdown();
  return best_zc > 0 && zc_verified && tcp_verified && bounce_verified ? 0 : 1;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  if (seer::PrintVersionIfAsked(argc, argv, "seer-kv-stream-bench")) return 0;
  return seer::Main(argc, argv);
}
