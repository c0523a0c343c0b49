// seer-kv-stream-bench: how fast a Prefill stream moves a KV cache over
// loopback, next to raw TCP on the same machine in the same run. A program
// that prints a table (STYLE.md), not a test.
//
// The prefill side runs the real PrefillService, reactor and chunking, over a
// synthetic engine that fills each layer's K/V without computing a model, so
// the numbers are the transport's: gRPC framing, copies, flow control, and on
// the receiving side the same KvAssembler checks and KvCache writes a decode
// worker does.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/flags.h"
#include "engine/engine.h"
#include "server/common/grpc_server.h"
#include "server/common/metrics.h"
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
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity) override {
    return std::unique_ptr<KvCache>(
        new HostKvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity));
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
        LayerDone done{layer, L, cache, 1.0, Seconds(t0, Clock::now())};
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

// Sends `bytes` over a loopback TCP connection in `block`-sized writes; the
// seconds from connect to the last byte received.
double RawTcpSeconds(size_t bytes, size_t block) {
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
    std::vector<char> buf(block, 'k');
    size_t left = bytes;
    while (left > 0) {
      ssize_t n = send(s, buf.data(), std::min(left, block), 0);
      if (n <= 0) break;
      left -= static_cast<size_t>(n);
    }
    close(s);
  });
  int conn = accept(listener, nullptr, nullptr);
  std::vector<char> buf(block);
  size_t got = 0;
  while (conn >= 0 && got < bytes) {
    ssize_t n = recv(conn, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  const double seconds = Seconds(start, Clock::now());
  sender.join();
  if (conn >= 0) close(conn);
  close(listener);
  return got == bytes ? seconds : -1.0;
}

struct Row {
  std::string path;
  std::vector<double> seconds;
};

void PrintRow(const Row& r, double mib) {
  std::vector<double> s = r.seconds;
  std::sort(s.begin(), s.end());
  if (s.empty() || s.front() < 0) {
    std::printf("%-40s  failed\n", r.path.c_str());
    return;
  }
  const double best = s.front(), median = s[s.size() / 2];
  const double bytes = mib * 1048576.0;
  std::printf("%-40s %9.1f %9.4f %9.4f %10.2f %10.2f\n", r.path.c_str(), mib, best, median, bytes / best / 1e9,
              bytes / median / 1e9);
}

int Main(int argc, char** argv) {
  int64_t layers = 32, kv_heads = 8, head_dim = 128, tokens = 1024, chunk_bytes = int64_t{4} << 20, repeats = 3;
  FlagSet flags("seer-kv-stream-bench [flags]",
                "KV streaming throughput of a Prefill stream on loopback, next to raw TCP from the same run.\n"
                "The default shape (32 layers x 8 KV heads x 128, 1024 tokens, F32) is 256 MiB of KV.");
  flags.Int("layers", &layers, "layers");
  flags.Int("kv-heads", &kv_heads, "KV heads");
  flags.Int("head-dim", &head_dim, "head_dim");
  flags.Int("tokens", &tokens, "prompt tokens");
  flags.Int("chunk-bytes", &chunk_bytes, "KvChunk message bound (the server's --chunk-bytes)");
  flags.Int("repeats", &repeats, "runs of each path (best and median are printed)");
  if (Status s = flags.Parse(argc, argv); !s.ok() || flags.help_requested()) {
    std::fprintf(s.ok() ? stdout : stderr, "%s%s", s.ok() ? "" : (s.ToString() + "\n\n").c_str(),
                 flags.Help().c_str());
    return s.ok() ? 0 : 2;
  }
  if (layers < 1 || kv_heads < 1 || head_dim < 1 || tokens < 1 || repeats < 1) {
    std::fprintf(stderr, "every size must be >= 1\n");
    return 2;
  }

  SyntheticKvEngine engine(static_cast<int>(layers), static_cast<int>(kv_heads), static_cast<int>(head_dim),
                           static_cast<int>(tokens));
  const KvLayout layout{static_cast<int>(layers), static_cast<int>(kv_heads), static_cast<int>(head_dim), DType::kF32};
  const size_t kv_bytes = 2 * layout.LayerBytes(static_cast<int>(tokens)) * static_cast<size_t>(layers);
  const double mib = static_cast<double>(kv_bytes) / 1048576.0;

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
      GrpcServer::Start("127.0.0.1:0", {&service}, {"seer.v1.Prefill"}, 16 << 20);
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

  Row tcp{"raw TCP, 4 MiB send/recv", {}};
  Row read_only{"gRPC Prefill stream, read only", {}};
  Row assembled{"gRPC Prefill stream -> KvCache (decode)", {}};
  for (int64_t r = 0; r < repeats; ++r) {
    tcp.seconds.push_back(RawTcpSeconds(kv_bytes, size_t{4} << 20));

    {
      auto stub = v1::Prefill::NewStub(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
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
      assembled.seconds.push_back(fetched.ok() && fetched->kv_bytes == static_cast<int64_t>(kv_bytes) ? seconds
                                                                                                       : -1.0);
    }
  }

  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::printf("KV streaming on loopback, %s, %u hardware threads\n", date, std::thread::hardware_concurrency());
  std::printf("KV: %lld layers x %lld KV heads x %lld head_dim x %lld tokens x F32, K and V = %.1f MiB; "
              "KvChunk <= %lld bytes; %lld runs\n",
              static_cast<long long>(layers), static_cast<long long>(kv_heads), static_cast<long long>(head_dim),
              static_cast<long long>(tokens), mib, static_cast<long long>(chunk_bytes),
              static_cast<long long>(repeats));
  std::printf("%-40s %9s %9s %9s %10s %10s\n", "path", "MiB", "best s", "median s", "best GB/s", "median GB/s");
  PrintRow(tcp, mib);
  PrintRow(read_only, mib);
  PrintRow(assembled, mib);
  std::printf("(the gRPC rows include the synthetic engine filling the cache, %.4f s on its own, overlapped\n"
              " with the stream layer by layer)\n",
              fill_seconds);
  (*server)->Shutdown(5.0);
  service.Shutdown();
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) { return seer::Main(argc, argv); }
