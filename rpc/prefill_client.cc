#include "rpc/prefill_client.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <utility>

#include "rpc/grpc_status.h"
#include "rpc/kv_chunk_codec.h"
#include "rpc/kv_handshake.h"
#include "rpc/kv_wire.h"
#include "rpc/landing/kv_landing.h"
#include "rpc/load_metadata.h"
#include "rpc/requests.h"

#ifdef SEER_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/cuda/cuda_status.h"
#include "engine/cuda/device_buffer.h"
#include "engine/cuda/device_kv_cache.h"
#include "engine/cuda/device_page_pool.h"
#include "kernels/paged_kv/paged_kv.h"
#include "rpc/landing/kv_device_landing.h"
#endif
#ifdef SEER_HAVE_NCCL
#include "rpc/nccl/nccl_kv_link.h"
#include "rpc/nccl/nccl_link_registry.h"
#endif

namespace seer {

#ifdef SEER_HAVE_CUDA
namespace {

// The batched decode's cache: pages of a pool on a GPU.
PagedKvCache* OnDevicePages(KvCache* cache) {
  auto* paged = dynamic_cast<PagedKvCache*>(cache);
  return paged != nullptr && dynamic_cast<DevicePagePool*>(paged->pool()) != nullptr ? paged : nullptr;
}

// The GPU a cache lives on, or -1 for host memory.
int CacheDevice(KvCache* cache) {
  if (PagedKvCache* paged = OnDevicePages(cache)) return static_cast<DevicePagePool*>(paged->pool())->device();
  auto* contiguous = dynamic_cast<DeviceKvCache*>(cache);
  cudaPointerAttributes attr{};
  if (contiguous == nullptr || cudaPointerGetAttributes(&attr, contiguous->k(0)) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return attr.device;
}

}  // namespace
#endif

StatusOr<std::vector<std::string>> ParsePrefillTargets(const std::string& targets) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= targets.size()) {
    size_t end = targets.find(',', start);
    if (end == std::string::npos) end = targets.size();
    std::string item = targets.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (item.empty())
      return InvalidArgument("--prefill: empty endpoint in '" + targets + "' (expected host:port[,host:port...])");
    const bool has_scheme = item.find(":///") != std::string::npos || item.rfind("unix:", 0) == 0;
    if (!has_scheme) {
      const size_t colon = item.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == item.size())
        return InvalidArgument("--prefill: '" + item + "' is not host:port or dns:///name:port");
      for (size_t i = colon + 1; i < item.size(); ++i)
        if (item[i] < '0' || item[i] > '9')
          return InvalidArgument("--prefill: '" + item + "' has a port that is not a number");
    }
    out.push_back(std::move(item));
    start = end + 1;
  }
  if (out.empty()) return InvalidArgument("--prefill: no endpoint given");
  return out;
}

namespace {

int Millis(double seconds) { return static_cast<int>(std::min(seconds * 1000.0, 2e9)); }

std::string SecondsText(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3g s", seconds);
  return text;
}

Status CheckSeconds(double v, const char* flag, double lo, bool zero_ok) {
  if ((zero_ok && v == 0.0) || (v >= lo && v <= 3600.0)) return OkStatus();
  return InvalidArgument(std::string(flag) + ": " + std::to_string(v) + " is out of range [" + std::to_string(lo) +
                         ", 3600] seconds" + (zero_ok ? " (0: off)" : ""));
}

// How long an endpoint that refused a call, or could not be reached, is
// tried after the others.
constexpr auto kAvoidAfterRefusal = std::chrono::seconds(1);
// How long a reported queue depth is believed.
constexpr auto kQueueDepthTtl = std::chrono::seconds(5);
// Prefix affinity: block hashes remembered per endpoint (4M tokens of
// prompts), and how far above the least load an endpoint may be and still
// win on a longer prefix.
constexpr size_t kAffinityBlocks = size_t{1} << 16;
constexpr int64_t kAffinitySlack = 1;
// Health checks in a row that must fail before an endpoint counts as down.
constexpr int kFailedChecksForDown = 2;

constexpr const char kPrefillMethod[] = "/seer.v1.PrefillService/Prefill";
constexpr const char kKvStreamMethod[] = "/seer.v1.PrefillService/KvStream";

// Transport settings for bulk KV (docs/KV_TRANSPORT.md, section 4): large
// HTTP/2 frames, large socket reads, a large flow-control window.
void TuneForBulkKv(grpc::ChannelArguments* args) {
  args->SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1);
  args->SetInt(GRPC_ARG_TCP_READ_CHUNK_SIZE, 4 << 20);
  args->SetInt(GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 1 << 20);
  args->SetInt(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 16 << 20);
  args->SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  args->SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 16 << 20);
}

std::string RandomHex(int bytes) {
  std::random_device rd;
  std::string out;
  static const char kHex[] = "0123456789abcdef";
  for (int i = 0; i < bytes; ++i) {
    const unsigned b = rd() & 0xff;
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

// The failures label of seer_kv_transfer_failures_total for a fetch's end.
const char* FailureReason(StatusCode code) {
  switch (code) {
    case StatusCode::kCancelled: return "cancelled";
    case StatusCode::kDeadlineExceeded: return "timeout";
    case StatusCode::kDataLoss:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kInvalidArgument: return "protocol";
    case StatusCode::kAborted: return "aborted";
    default: return "peer_lost";
  }
}

}  // namespace

// This process's NCCL links with prefill processes, by prefill_instance.
struct PrefillClient::NcclState {
#ifdef SEER_HAVE_NCCL
  NcclLinkRegistry links;
  std::mutex mu;
  std::map<int, std::string> gpu_uuids;  // by CUDA device
#endif
};

PrefillClient::PrefillClient() = default;

StatusOr<std::unique_ptr<PrefillClient>> PrefillClient::Create(const std::string& targets,
                                                               const PrefillClientOptions& options) {
  SEER_ASSIGN_OR_RETURN(std::vector<std::string> list, ParsePrefillTargets(targets));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.connect_timeout_seconds, "--prefill-connect-timeout", 0.1, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.first_byte_timeout_seconds, "--prefill-first-byte-timeout", 0.1, true));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.keepalive_seconds, "--prefill-keepalive", 0.5, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.keepalive_timeout_seconds, "--prefill-keepalive-timeout", 0.5, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.health_interval_seconds, "--prefill-health-interval", 0.1, true));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.health_timeout_seconds, "--prefill-health-timeout", 0.1, false));
  if (options.kv_grpc_streams < 1 || options.kv_grpc_streams > kMaxKvGrpcStreams)
    return InvalidArgument("--kv-grpc-streams: " + std::to_string(options.kv_grpc_streams) + " is out of range [1, " +
                           std::to_string(kMaxKvGrpcStreams) + "]");
  SEER_RETURN_IF_ERROR(CheckSeconds(options.nccl_setup_seconds, "--kv-nccl-setup-seconds", 1.0, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.nccl_stall_seconds, "--kv-nccl-stall-seconds", 0.1, false));
  std::unique_ptr<PrefillClient> client(new PrefillClient());
  client->options_ = options;
  client->targets_ = list;
  client->decode_instance_ = RandomHex(16);
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) client->host_ = host;
  client->nccl_ = std::make_unique<NcclState>();
  int names = 0;
  for (const std::string& target : list) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(options.max_receive_bytes, INT32_MAX)));
    // A name that resolves to many addresses (a headless Service) spreads
    // calls over all of them, skipping the ones that are down.
    args.SetLoadBalancingPolicyName("round_robin");
    // A connection attempt gets connect_timeout_seconds (gRPC's minimum
    // connect timeout, 20 s by default), the HTTP/2 handshake included: an
    // address that accepts TCP and never answers fails in seconds, and
    // calls skip it until a later attempt (after at most 5 s) connects.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Millis(options.connect_timeout_seconds));
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 1000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, std::max(5000, Millis(options.connect_timeout_seconds)));
    // Notice a stopped or vanished peer while calls wait on it. The servers
    // accept pings every second (server/common/grpc_server.cc), and a
    // server-streaming client never sends data, so pings are not limited to
    // two "without data".
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, Millis(options.keepalive_seconds));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, Millis(options.keepalive_timeout_seconds));
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    TuneForBulkKv(&args);
    const std::shared_ptr<grpc::ChannelCredentials> credentials =
        options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
    auto endpoint = std::make_unique<Endpoint>();
    endpoint->target = target;
    endpoint->channel = grpc::CreateCustomChannel(target, credentials, args);
    endpoint->raw = std::make_unique<grpc::GenericStub>(endpoint->channel);
    endpoint->health = grpc::health::v1::Health::NewStub(endpoint->channel);
    // One channel, and so one TCP connection, per extra KV stream: the
    // streams of one connection share its single transport thread. A
    // distinct argument and a local subchannel pool keep them apart.
    for (int i = 1; i < options.kv_grpc_streams; ++i) {
      grpc::ChannelArguments stream_args = args;
      stream_args.SetInt("seer.kv_stream_index", i);
      stream_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      endpoint->kv_channels.push_back(grpc::CreateCustomChannel(target, credentials, stream_args));
      endpoint->kv_stubs.push_back(std::make_unique<grpc::GenericStub>(endpoint->kv_channels.back()));
    }
    endpoint->health_state = "not checked yet";
    client->endpoints_.push_back(std::move(endpoint));
    if (target.rfind("dns:", 0) == 0) ++names;
  }
  client->attempts_ = options.attempts > 0 ? options.attempts : static_cast<int>(list.size()) + 2 * names;
  client->prefix_affinity_ = options.prefix_affinity;
  if (options.health_interval_seconds > 0)
    client->health_thread_ = std::thread([c = client.get()] { c->HealthLoop(); });
  return client;
}

PrefillClient::~PrefillClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (health_thread_.joinable()) health_thread_.join();
}

std::vector<uint64_t> PromptBlockHashes(const v1::PrefillRequest& request) {
  constexpr int kBlock = 64;
  // splitmix64's finaliser over a running FNV-style chain.
  auto mix = [](uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(std::hash<std::string>{}(request.sparsity().SerializeAsString()) ^ 0x5eedu);
  std::vector<uint64_t> out;
  const int n = request.token_ids_size();
  out.reserve(static_cast<size_t>(n / kBlock));
  for (int i = 0; i + kBlock <= n; i += kBlock) {
    for (int t = i; t < i + kBlock; ++t) h = mix(h ^ static_cast<uint32_t>(request.token_ids(t)));
    out.push_back(h);
  }
  return out;
}

std::vector<size_t> PrefillClient::Order(const std::vector<uint64_t>& blocks) {
  const size_t n = endpoints_.size();
  const uint64_t first = next_.fetch_add(1);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = (first + i) % n;
  // (avoid, beyond the affinity slack, -blocks it served, load), by endpoint.
  std::vector<std::tuple<int, int, int64_t, int64_t>> key(n);
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    int64_t least = std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i < n; ++i) {
      const Endpoint& e = *endpoints_[i];
      const bool fresh = e.reported_depth >= 0 && now - e.reported_at < kQueueDepthTtl;
      const int avoid = e.down || now < e.avoid_until ? 1 : 0;
      const int64_t load = (fresh ? e.reported_depth : 0) + e.inflight;
      key[i] = {avoid, 0, 0, load};
      if (avoid == 0) least = std::min(least, load);
    }
    for (size_t i = 0; i < n; ++i) {
      auto& [avoid, beyond, matched, load] = key[i];
      beyond = load > least + kAffinitySlack ? 1 : 0;
      if (!prefix_affinity_ || avoid != 0 || beyond != 0) continue;
      const std::unordered_set<uint64_t>& served = endpoints_[i]->served_blocks;
      size_t m = 0;
      while (m < blocks.size() && served.count(blocks[m]) != 0) ++m;
      matched = -static_cast<int64_t>(m);
    }
  }
  // Round-robin among equals: the rotation above is the tie-break.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
  return order;
}

void PrefillClient::RememberServed(Endpoint& endpoint, const std::vector<uint64_t>& blocks) {
  if (!prefix_affinity_ || blocks.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t b : blocks) {
    if (endpoint.served_blocks.insert(b).second) endpoint.served_order.push_back(b);
  }
  while (endpoint.served_order.size() > kAffinityBlocks) {
    endpoint.served_blocks.erase(endpoint.served_order.front());
    endpoint.served_order.pop_front();
  }
}

StatusOr<FetchedKv> PrefillClient::Fetch(const v1::PrefillRequest& request, const ExpectedLayout& expected,
                                         KvCache* cache, CallCanceller* canceller,
                                         const std::function<void(int64_t)>& on_kv_bytes, const WholeCache& whole) {
  const std::vector<uint64_t> blocks = prefix_affinity_ ? PromptBlockHashes(request) : std::vector<uint64_t>{};
  const std::vector<size_t> order = Order(blocks);
  Status last;
  std::string tried;
  bool all_exhausted = true;
  // After a declined kv_from_token, the whole prompt into the new cache.
  v1::PrefillRequest asked = request;
  KvCache* into = cache;
  for (int attempt = 0; attempt < attempts_; ++attempt) {
    Endpoint& endpoint = *endpoints_[order[attempt % order.size()]];
    FetchedKv out;
    Outcome outcome = Outcome::kFinal;
    KvCache* swapped = nullptr;
    Status s = FetchOnce(endpoint, asked, expected, into, canceller, on_kv_bytes, whole, &swapped, &out, &outcome);
    if (swapped != nullptr) {
      into = swapped;
      ClearKvFrom(&asked);
    }
    if (s.ok()) {
      out.attempts = attempt + 1;
      RememberServed(endpoint, blocks);
      return out;
    }
    last = s;
    if (outcome != Outcome::kRetry || canceller->cancelled()) return s;
    all_exhausted = all_exhausted && s.code() == StatusCode::kResourceExhausted;
    tried += (tried.empty() ? "" : ", ") + endpoint.target;
  }
  const std::string what =
      "after " + std::to_string(attempts_) + " attempts (" + tried + "); last error: " + last.ToString();
  if (all_exhausted) return ResourceExhausted("every prefill endpoint tried is at capacity " + what);
  return Unavailable("no prefill endpoint could serve " + what);
}

// --- one fetch's KV: the header's choice, the streams, the landing ------------

// What one Prefill call's KV transfer needs on this side: the assembler's
// bookkeeping, a landing per gRPC stream, the KvStream calls (a thread each)
// and, over NCCL, the receiving transfer. Stream 0's messages come through
// OnMessage on the fetching thread; End stops whatever still runs.
class PrefillClient::KvReceive {
 public:
  KvReceive(PrefillClient* client, Endpoint* endpoint, int first_token, int seq_len, const ExpectedLayout& expected,
            KvCache* cache, int device, const v1::KvTransportOffer& offer, v1::KvWire asked,
            std::optional<std::chrono::system_clock::time_point> deadline,
            const std::function<void(int64_t)>& on_kv_bytes, RawStreamCall* main, const WholeCache& whole,
            KvCache** swapped)
      : client_(client),
        endpoint_(endpoint),
        first_(first_token),
        seq_len_(seq_len),
        cache_(cache),
        device_(device),
        offer_(offer),
        asked_(asked),
        deadline_(deadline),
        on_kv_bytes_(on_kv_bytes),
        main_(main),
        whole_(whole),
        swapped_(swapped),
        assembler_(expected, first_token, seq_len, cache),
        chunks_per_stream_(1, 0) {}

  ~KvReceive() { End(true, "the fetch ended"); }

  // A message of the Prefill call (stream 0).
  Status OnMessage(const grpc::ByteBuffer& buffer) {
    if (have_summary_) return DataLoss("prefill stream: a message after the summary");
    SEER_RETURN_IF_ERROR(DecodePrefillResponse(buffer, &decoded_));
    if (decoded_.is_chunk) {
      if (nccl_) return DataLoss("prefill stream: a KV chunk on an NCCL transfer");
      return Land(0, decoded_.chunk, &landing_, &landing_tokens_);
    }
    v1::PrefillResponse& m = decoded_.message;
    switch (m.event_case()) {
      case v1::PrefillResponse::kHeader: return OnHeader(m.header());
      case v1::PrefillResponse::kLayerSent: return OnLayerSent(m.layer_sent().layer());
      case v1::PrefillResponse::kSummary: return OnSummary(m.mutable_summary());
      default: return DataLoss("prefill stream: a message with no event");
    }
  }

  // Stops the KvStream calls (cancelled when `failed`), waits for them, and
  // aborts an NCCL transfer still in flight: afterwards nothing writes into
  // the cache.
  void End(bool failed, const std::string& why) {
    std::vector<RawStreamCall*> calls;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (failed)
        for (auto& [index, call] : kv_calls_) calls.push_back(call);
    }
    for (RawStreamCall* c : calls) c->Cancel();
    JoinStreams();
    if (landing_ != nullptr) (void)landing_->Flush();
#ifdef SEER_HAVE_NCCL
    if (nccl_transfer_ != nullptr) {
      // The two sides cannot be put back in step: the link goes, the next
      // request sets up another.
      const std::string reason = "the Prefill stream from " + endpoint_->target + " ended mid-transfer: " + why;
      client_->nccl_->links.Drop(nccl_peer_, nccl_link_id_, reason);
      nccl_transfer_.reset();  // returns once the link's kernels are stopped
      client_->ReportLinks();
    }
#endif
  }

  // The first failure of a KvStream call (OK when none failed).
  Status stream_failure() {
    std::lock_guard<std::mutex> lock(mu_);
    return stream_failure_;
  }
  bool have_header() const { return have_header_; }
  // The transfer was counted as started (TransferStarted).
  bool started() const { return started_; }
  bool have_summary() const { return have_summary_; }
  int gate_block() const { return gate_block_; }
  uint64_t gates_fingerprint() const { return gates_fingerprint_; }
  int first_token() const { return first_; }
  bool nccl() const { return nccl_; }
  // KV chunks (or NCCL layers) received: the call got past admission.
  int progress() {
    std::lock_guard<std::mutex> lock(mu_);
    return assembler_.chunks() + layers_sent_;
  }
  int64_t kv_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return assembler_.bytes();
  }
  std::string transport_label() const { return KvTransportLabel(nccl_); }
  std::string wire_label() const { return KvWireLabel(wire_.dtype, wire_.fp8); }
  double seconds() const {
    return nccl_seconds_ > 0 ? nccl_seconds_ : std::chrono::duration<double>(last_landed_ - header_at_).count();
  }
  const std::string& setup_note() const { return setup_note_; }
  v1::PrefillSummary& summary() { return summary_; }
  std::vector<int> chunks_per_stream() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_per_stream_;
  }

  // How the KV moved, for FetchedKv: the prefill's account, completed with
  // what this side saw.
  v1::KvTransferStats Stats() {
    v1::KvTransferStats t = summary_.transfer();
    t.set_transport(nccl_ ? v1::KV_TRANSPORT_NCCL : v1::KV_TRANSPORT_GRPC);
    t.set_kv_wire(wire_.fp8 ? v1::KV_WIRE_FP8_E4M3 : v1::KV_WIRE_UNSPECIFIED);
    t.set_grpc_streams(streams_);
    t.set_bytes(landed_bytes_.load());
    if (t.seconds() <= 0) t.set_seconds(seconds());
    if (!setup_note_.empty())
      t.set_fallback_reason(t.fallback_reason() + (t.fallback_reason().empty() ? "" : "; ") + setup_note_);
    return t;
  }

 private:
  static const char* KvTransportLabel(bool nccl) { return nccl ? "nccl" : "grpc"; }

  Status OnHeader(const v1::LayoutHeader& h) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Status header = assembler_.OnHeader(h);
      if (IsKvFromDeclined(header) && h.kv_first_token() == 0 && whole_ != nullptr) {
        // The prefill declined the held positions and sends them all (the
        // header is otherwise good, and the first): into a cache for the
        // whole prompt, before anything lands. The caller may free the old
        // one for it, so from here this fetch never uses it again: when no
        // cache comes, the fetch ends with the ABORTED (final).
        StatusOr<KvCache*> fresh = whole_();
        if (!fresh.ok() || *fresh == nullptr) return header;
        cache_ = *fresh;
        first_ = 0;
        assembler_.Rebind(0, cache_);
        *swapped_ = cache_;
        header = assembler_.OnHeader(h);
      }
      SEER_RETURN_IF_ERROR(header);
    }
    SEER_RETURN_IF_ERROR(CheckHeaderTransport(h, offer_, asked_));
    wire_.dtype = FromWireDtype(h.kv_dtype()).value_or(DType::kF32);  // OnHeader checked it
    wire_.fp8 = h.kv_wire() == v1::KV_WIRE_FP8_E4M3;
    wire_.block_tokens = wire_.fp8 ? h.kv_scale_block_tokens() : kFp8ScaleBlockTokens;
    nccl_ = h.transport() == v1::KV_TRANSPORT_NCCL;
    streams_ = std::max(1, h.grpc_streams());
    have_header_ = true;
    gate_block_ = h.block_size();
    gates_fingerprint_ = h.gates_fingerprint();
    header_at_ = last_landed_ = std::chrono::steady_clock::now();
    client_->NoteInstance(endpoint_, h.prefill_instance());
    if (h.has_nccl_setup()) JoinLink(h);
    if (nccl_) SEER_RETURN_IF_ERROR(StartNcclReceive(h));
    if (client_->kv_observer_ != nullptr) client_->kv_observer_->TransferStarted(transport_label());
    started_ = true;
    if (!nccl_ && streams_ > 1) {
      transfer_id_ = h.transfer_id();
      std::lock_guard<std::mutex> lock(mu_);
      chunks_per_stream_.assign(streams_, 0);
      for (int i = 1; i < streams_ && i <= static_cast<int>(endpoint_->kv_stubs.size()); ++i)
        threads_.emplace_back([this, i] { RunKvStream(i); });
    }
    return OkStatus();
  }

  Status OnLayerSent(int layer) {
    if (!nccl_) return DataLoss("prefill stream: a layer marker on a gRPC transfer");
    const KvLayout& l = cache_->layout();
    const int64_t bytes =
        2 * static_cast<int64_t>(l.num_kv_heads) * (seq_len_ - first_) * l.head_dim * DTypeSize(wire_.dtype);
    {
      std::lock_guard<std::mutex> lock(mu_);
      SEER_RETURN_IF_ERROR(assembler_.OnLayerSent(layer, bytes));
      ++layers_sent_;
    }
#ifdef SEER_HAVE_NCCL
    nccl_transfer_->NoteLayerSent(layer);
#endif
    return OkStatus();
  }

  Status OnSummary(v1::PrefillSummary* summary) {
    // The prefill sends its summary once every layer is written on every
    // stream: the KvStream calls end now.
    JoinStreams();
    SEER_RETURN_IF_ERROR(stream_failure());
    if (landing_ != nullptr) SEER_RETURN_IF_ERROR(landing_->Flush());
#ifdef SEER_HAVE_NCCL
    if (nccl_transfer_ != nullptr) {
      double timeout = 0.0;  // the link's stall timeout bounds the wait
      if (deadline_)
        timeout = std::max(0.001, std::chrono::duration<double>(*deadline_ - std::chrono::system_clock::now()).count());
      StatusOr<NcclTransferStats> stats = nccl_transfer_->Finish(timeout);
      nccl_transfer_.reset();
      if (!stats.ok()) {
        client_->nccl_->links.Drop(nccl_peer_, nccl_link_id_, stats.status().message());
        client_->ReportLinks();
        return stats.status();
      }
      nccl_seconds_ = std::max(1e-9, stats->seconds);
      landed_bytes_ += stats->bytes;
      on_kv_bytes_(stats->bytes);
    }
#endif
    {
      std::lock_guard<std::mutex> lock(mu_);
      SEER_RETURN_IF_ERROR(assembler_.OnSummary(*summary));
    }
    summary_ = std::move(*summary);
    have_summary_ = true;
    return OkStatus();
  }

  // Checks a chunk's place, then lands it through `*landing` (made for the
  // first chunk, and again for a larger one).
  Status Land(int stream, const KvChunkPieces& c, std::unique_ptr<KvLanding>* landing, int* landing_tokens) {
    const int64_t bytes = static_cast<int64_t>(c.k.size() + c.v.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      SEER_RETURN_IF_ERROR(assembler_.CheckChunk(c.layer, c.token_start, c.token_count, bytes));
    }
    if (*landing == nullptr || c.token_count > *landing_tokens) {
      if (*landing != nullptr) SEER_RETURN_IF_ERROR((*landing)->Flush());
      SEER_ASSIGN_OR_RETURN(*landing, MakeLanding(std::max(c.token_count, *landing_tokens), stream));
      *landing_tokens = std::max(c.token_count, *landing_tokens);
    }
    SEER_RETURN_IF_ERROR((*landing)->Land(c));
    landed_bytes_ += bytes + static_cast<int64_t>(c.k_scales.size() + c.v_scales.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++chunks_per_stream_[stream];
      last_landed_ = std::chrono::steady_clock::now();
    }
    on_kv_bytes_(bytes);
    return OkStatus();
  }

  StatusOr<std::unique_ptr<KvLanding>> MakeLanding(int max_tokens, int stream) {
#ifdef SEER_HAVE_CUDA
    // Stream 0 alone gets four staging slots; each of several streams two.
    const int slots = streams_ > 1 && stream > 0 ? 2 : 4;
    if (auto* device = dynamic_cast<DeviceKvCache*>(cache_))
      return MakeDeviceKvLanding(device, wire_, max_tokens, slots);
    if (PagedKvCache* paged = OnDevicePages(cache_)) return MakePagedDeviceKvLanding(paged, wire_, max_tokens, slots);
#endif
    (void)max_tokens;
    (void)stream;
    return MakeHostKvLanding(cache_, wire_);
  }

  // KvStream call `index`: chunks only, into a landing of its own. One that
  // carried nothing and failed is harmless (its layers went over the other
  // streams, and the summary's check finds any missing); one that failed
  // after landing chunks fails the fetch.
  void RunKvStream(int index) {
    v1::KvStreamRequest request;
    request.set_transfer_id(transfer_id_);
    request.set_index(index);
    StatusOr<grpc::ByteBuffer> body = EncodeMessage(request);
    if (!body.ok()) {
      Fail(body.status());
      return;
    }
    RawStreamCall call(endpoint_->kv_stubs[index - 1].get(), kKvStreamMethod, std::move(*body));
    if (deadline_) call.context()->set_deadline(*deadline_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      kv_calls_[index] = &call;
    }
    call.Start();
    std::unique_ptr<KvLanding> landing;
    int landing_tokens = 0, chunks = 0;
    Status protocol;
    grpc::ByteBuffer buffer;
    DecodedResponse decoded;
    while (protocol.ok() && call.Next(&buffer)) {
      protocol = DecodePrefillResponse(buffer, &decoded);
      if (protocol.ok() && !decoded.is_chunk) protocol = DataLoss("a message that is not a KV chunk");
      if (protocol.ok()) protocol = Land(index, decoded.chunk, &landing, &landing_tokens);
      if (protocol.ok()) ++chunks;
    }
    if (!protocol.ok()) call.Cancel();
    if (landing != nullptr) {
      const Status flushed = landing->Flush();
      if (protocol.ok()) protocol = flushed;
    }
    const grpc::Status status = call.Finish();
    {
      std::lock_guard<std::mutex> lock(mu_);
      kv_calls_.erase(index);
    }
    const std::string what = "KvStream " + std::to_string(index) + " of " + std::to_string(streams_);
    if (!protocol.ok()) {
      Fail(protocol.WithContext(what));
    } else if (!status.ok() && chunks > 0) {
      Fail(FromGrpcStatus(status).WithContext(what + " failed after " + std::to_string(chunks) + " KV chunks"));
    }
  }

  // A KvStream failed: the fetch fails with it. Not after End (which
  // cancelled the calls itself) or another stream's failure.
  void Fail(const Status& status) {
    std::vector<RawStreamCall*> calls;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stream_failure_ = status;
      stopping_ = true;
      for (auto& [index, call] : kv_calls_) calls.push_back(call);
    }
    for (RawStreamCall* c : calls) c->Cancel();
    main_->Cancel();
  }

  void JoinStreams() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
  }

  // A header with nccl_setup: join the link the prefill started (rank 1).
  // A failure costs nothing now (this request is gRPC); it is noted.
  void JoinLink(const v1::LayoutHeader& h) {
#ifdef SEER_HAVE_NCCL
    const v1::NcclLinkSetup& s = h.nccl_setup();
    NcclLinkOptions o;
    o.device = device_;
    o.peer = "prefill " + endpoint_->target + " (" + s.gpu_uuid() + ")";
    o.peer_gpu_uuid = s.gpu_uuid();
    o.setup_timeout_seconds = client_->options_.nccl_setup_seconds;
    o.stall_timeout_seconds = client_->options_.nccl_stall_seconds;
    StatusOr<std::shared_ptr<NcclKvLink>> link = NcclKvLink::Open(NcclRole::kReceiver, s.unique_id(), o);
    if (!link.ok()) {
      setup_note_ = "nccl: joining the link failed: " + link.status().ToString();
      return;
    }
    client_->nccl_->links.Put(s.prefill_instance(), s.link_id(), std::move(link).value());
    client_->ReportLinks();
#else
    (void)h;
#endif
  }

  Status StartNcclReceive(const v1::LayoutHeader& h) {
#ifdef SEER_HAVE_NCCL
    auto* device = dynamic_cast<DeviceKvCache*>(cache_);
    PagedKvCache* paged = OnDevicePages(cache_);
    if (device == nullptr && paged == nullptr)
      return DataLoss("layout header transport: NCCL into a cache that is not on a GPU");
    std::optional<NcclLinkRegistry::Entry> link = client_->nccl_->links.Find(h.prefill_instance());
    if (!link || link->id != h.nccl_link_id())
      return Unavailable("the prefill chose NCCL link " + std::to_string(h.nccl_link_id()) +
                         ", which this decode worker no longer holds");
    StatusOr<std::unique_ptr<NcclKvLink::Transfer>> transfer =
        paged != nullptr
            ? StartPagedReceive(*link->link, paged, h.nccl_transfer_seq())
            : link->link->StartRecv(device, seq_len_, h.nccl_transfer_seq(), NcclKvSplit::kPerHead, first_);
    if (!transfer.ok()) {
      client_->nccl_->links.Drop(h.prefill_instance(), link->id, transfer.status().message());
      client_->ReportLinks();
      return Unavailable("NCCL transfer: " + transfer.status().message());
    }
    nccl_transfer_ = std::move(transfer).value();
    nccl_peer_ = h.prefill_instance();
    nccl_link_id_ = link->id;
    client_->ReportLinks();
    return OkStatus();
#else
    (void)h;
    return DataLoss("layout header transport: NCCL, which this build cannot receive");
#endif
  }

#ifdef SEER_HAVE_NCCL
  // NCCL into KV pages: each layer lands in a one-layer staging cache on the
  // pool's GPU and is scattered into the request's pages on the link's
  // stream, behind its receives.
  StatusOr<std::unique_ptr<NcclKvLink::Transfer>> StartPagedReceive(NcclKvLink& link, PagedKvCache* paged,
                                                                    uint64_t seq) {
    auto* pool = static_cast<DevicePagePool*>(paged->pool());
    const KvLayout& l = paged->layout();
    SEER_RETURN_IF_CUDA_ERROR(cudaSetDevice(pool->device()));
    SEER_ASSIGN_OR_RETURN(nccl_staging_, DeviceKvCache::Create(1, l.num_kv_heads, l.head_dim, seq_len_));
    const std::vector<int32_t>& pages = paged->pages();
    SEER_ASSIGN_OR_RETURN(nccl_table_, DeviceBuffer::Allocate(sizeof(int32_t) * pages.size(), "NCCL KV page table"));
    // Landed before the link's stream reads it: a plain cudaMemcpy from
    // pageable memory may return before its DMA is done, and nothing orders
    // it before work on another (non-blocking) stream.
    SEER_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(nccl_table_.get(), pages.data(), sizeof(int32_t) * pages.size(),
                                              cudaMemcpyHostToDevice, cudaStreamPerThread));
    SEER_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(cudaStreamPerThread));
    DeviceKvCache* staging = nccl_staging_.get();
    const int32_t* table = nccl_table_.as<int32_t>();
    // Tokens [first, n) of each head land at their own positions in the
    // staging, and go to the same positions in the pages.
    const int n = seq_len_;
    const int first = first_;
    const size_t skip = static_cast<size_t>(first) * l.head_dim;
    return link.StartRecvStaged(
        staging, l.num_layers, n, seq,
        [staging, table, pool, first, n, skip, l](int layer, cudaStream_t stream) {
          const int page_tokens = pool->layout().page_tokens;
          cudaError_t e = cuda::ScatterToPagesStrided(staging->k(0) + skip, n, first, n - first, table, l.num_kv_heads,
                                                      l.head_dim, page_tokens, pool->k(layer), stream);
          if (e != cudaSuccess) return e;
          return cuda::ScatterToPagesStrided(staging->v(0) + skip, n, first, n - first, table, l.num_kv_heads,
                                             l.head_dim, page_tokens, pool->v(layer), stream);
        },
        first);
  }
#endif

  PrefillClient* const client_;
  Endpoint* const endpoint_;
  int first_;  // the first position asked for (kv_from_token); 0 once declined
  const int seq_len_;
  KvCache* cache_;  // `whole_`'s once the prefill declined the held positions
  const int device_;
  const v1::KvTransportOffer offer_;
  const v1::KvWire asked_;
  const std::optional<std::chrono::system_clock::time_point> deadline_;
  const std::function<void(int64_t)>& on_kv_bytes_;
  RawStreamCall* const main_;
  const WholeCache& whole_;
  KvCache** const swapped_;

  // The fetching thread's.
  DecodedResponse decoded_;
  bool have_header_ = false, have_summary_ = false, started_ = false, nccl_ = false;
  int gate_block_ = 0;
  uint64_t gates_fingerprint_ = 0;
  int streams_ = 1;
  uint64_t transfer_id_ = 0;
  KvWireFormat wire_;
  std::unique_ptr<KvLanding> landing_;  // stream 0's
  int landing_tokens_ = 0;
  std::chrono::steady_clock::time_point header_at_;
  double nccl_seconds_ = 0.0;
  std::string setup_note_;
  v1::PrefillSummary summary_;
#ifdef SEER_HAVE_NCCL
  // Declared before the transfer: they outlive it (a paged receive lands through them).
  std::unique_ptr<DeviceKvCache> nccl_staging_;
  DeviceBuffer nccl_table_;
  std::unique_ptr<NcclKvLink::Transfer> nccl_transfer_;
  std::string nccl_peer_;
  uint64_t nccl_link_id_ = 0;
#endif
  std::atomic<int64_t> landed_bytes_{0};

  std::mutex mu_;  // everything below, and the assembler
  KvAssembler assembler_;
  int layers_sent_ = 0;
  std::vector<int> chunks_per_stream_;
  std::chrono::steady_clock::time_point last_landed_;
  std::vector<std::thread> threads_;
  std::map<int, RawStreamCall*> kv_calls_;
  bool stopping_ = false;
  Status stream_failure_;
};

v1::KvTransportOffer PrefillClient::MakeOffer(KvCache* cache, int* device) {
  KvReceiverCaps caps;
  caps.grpc_streams = options_.kv_grpc_streams;
  *device = -1;
#ifdef SEER_HAVE_NCCL
  *device = CacheDevice(cache);
  if (*device >= 0) {
    std::string uuid;
    {
      std::lock_guard<std::mutex> lock(nccl_->mu);
      auto it = nccl_->gpu_uuids.find(*device);
      if (it != nccl_->gpu_uuids.end()) uuid = it->second;
    }
    if (uuid.empty()) {
      StatusOr<std::string> got = CudaDeviceUuid(*device);
      if (got.ok()) {
        uuid = *got;
        std::lock_guard<std::mutex> lock(nccl_->mu);
        nccl_->gpu_uuids[*device] = uuid;
      }
    }
    if (options_.kv_nccl && !uuid.empty()) {
      caps.nccl = true;
      caps.decode_instance = decode_instance_;
      caps.gpu_uuid = uuid;
      caps.host = host_;
      caps.nccl_version = NcclVersion();
      caps.ready_links = nccl_->links.Ready(kMaxOfferedLinks);
      ReportLinks();  // links join in the background: the gauge catches up at each offer
    }
  }
  cudaGetLastError();
#else
  (void)cache;
#endif
  return MakeTransportOffer(caps);
}

void PrefillClient::NoteInstance(Endpoint* endpoint, const std::string& instance) {
  // A dns:/// name spreads calls over several servers, whose instances
  // alternate: only one address can say that its server restarted.
  if (instance.empty() || endpoint->target.rfind("dns:", 0) == 0) return;
  std::string before;
  {
    std::lock_guard<std::mutex> lock(mu_);
    before = endpoint->prefill_instance;
    endpoint->prefill_instance = instance;
  }
#ifdef SEER_HAVE_NCCL
  // The server at this address restarted: a link with its old instance has a
  // dead peer, and nothing would notice before the idle prune.
  if (before.empty() || before == instance) return;
  if (std::optional<NcclLinkRegistry::Entry> old = nccl_->links.Find(before)) {
    const std::string why = "the prefill at " + endpoint->target + " restarted (a new instance)";
    old->link->Abort(why);
    nccl_->links.Drop(before, old->id, why);
    ReportLinks();
  }
#else
  (void)before;
#endif
}

void PrefillClient::ReportLinks() {
#ifdef SEER_HAVE_NCCL
  if (kv_observer_ == nullptr) return;
  const NcclLinkRegistry::Counts c = nccl_->links.counts();
  kv_observer_->NcclLinks(c.joining, c.ready);
#endif
}

Status PrefillClient::FetchOnce(Endpoint& endpoint, const v1::PrefillRequest& request, const ExpectedLayout& expected,
                                KvCache* cache, CallCanceller* canceller,
                                const std::function<void(int64_t)>& on_kv_bytes, const WholeCache& whole,
                                KvCache** swapped, FetchedKv* out, Outcome* outcome) {
  *outcome = Outcome::kFinal;
  const auto start = std::chrono::steady_clock::now();
  int device = -1;
  v1::PrefillRequest offered = request;
  *offered.mutable_transport_offer() = MakeOffer(cache, &device);
  StatusOr<grpc::ByteBuffer> body = EncodeMessage(offered);
  if (!body.ok()) return body.status();
  RawStreamCall call(endpoint.raw.get(), kPrefillMethod, std::move(*body));
  std::optional<std::chrono::system_clock::time_point> deadline;
  if (options_.timeout_seconds > 0) {
    deadline = std::chrono::system_clock::now() +
               std::chrono::microseconds(static_cast<int64_t>(options_.timeout_seconds * 1e6));
    call.context()->set_deadline(*deadline);
  }
  if (!canceller->Bind(call.context())) return Cancelled("the Generate stream was cancelled");
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++endpoint.inflight;
  }
  call.Start();
  // The first byte: initial metadata (a prefill server sends them on
  // admission when its header waits for the engine) or the first message.
  // Waited for here, and the call cancelled from this thread, which owns it:
  // no other thread calls into it, and no lock is held across gRPC.
  bool timed_out = false;
  if (options_.first_byte_timeout_seconds > 0 &&
      !call.WaitFirstByte(std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(options_.first_byte_timeout_seconds)))) {
    timed_out = true;
    call.Cancel();
  }

  Status protocol;  // the first violation seen on our side
  grpc::Status status;
  bool no_kv = true;
  int received_chunks = 0;
  int64_t received_bytes = 0;
  {
    KvReceive receive(this, &endpoint, request.kv_from_token(), request.token_ids_size(), expected, cache, device,
                      offered.transport_offer(), request.kv_wire(), deadline, on_kv_bytes, &call, whole, swapped);
    grpc::ByteBuffer buffer;
    while (protocol.ok() && call.Next(&buffer)) protocol = receive.OnMessage(buffer);
    if (!protocol.ok()) call.Cancel();
    const bool complete = protocol.ok() && receive.have_summary();
    receive.End(!complete, protocol.ok() ? "the stream broke" : protocol.message());
    status = call.Finish();
    canceller->Unbind();
    received_chunks = receive.progress();
    received_bytes = receive.kv_bytes();
    no_kv = received_chunks == 0;
    // A KvStream's failure cancelled the Prefill call: it is the cause.
    if (protocol.ok()) protocol = receive.stream_failure();
    if (protocol.ok() && status.ok() && !receive.have_summary())
      protocol = DataLoss("prefill endpoint " + endpoint.target + ": the stream ended without a summary");
    const bool ok = protocol.ok() && status.ok();
    if (receive.started() && kv_observer_ != nullptr) {
      if (ok) {
        kv_observer_->TransferFinished(receive.transport_label(), receive.wire_label(), receive.seconds(),
                                       receive.Stats().bytes());
      } else {
        kv_observer_->TransferFailed(receive.transport_label(),
                                     FailureReason(!protocol.ok() ? protocol.code() : FromGrpcStatus(status).code()));
      }
    }
    if (ok) {
      out->transfer = receive.Stats();
      out->kv_bytes = receive.kv_bytes();
      out->chunks_per_stream = receive.chunks_per_stream();
      out->gate_block = receive.gate_block();
      out->gates_fingerprint = receive.gates_fingerprint();
      out->kv_first_token = receive.first_token();
      out->summary = std::move(receive.summary());
    }
  }

  // A stream this worker did not cancel (not its client, the first-byte
  // timeout or a protocol error) but that ended CANCELLED was reset by the prefill
  // server (its --write-stall-seconds, say, when this worker read too slowly)
  // or on the way: a broken stream, as UNAVAILABLE is, not a cancellation
  // this worker's client asked for.
  if (protocol.ok() && status.error_code() == grpc::StatusCode::CANCELLED && !timed_out && !canceller->cancelled()) {
    status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "the prefill server cancelled the stream (" + status.error_message() + ")");
  }
  const grpc::StatusCode code = status.error_code();
  const bool refused =
      no_kv && (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                (timed_out && code == grpc::StatusCode::CANCELLED));
  {
    std::lock_guard<std::mutex> lock(mu_);
    --endpoint.inflight;
    if (const int64_t depth = ReportedQueueDepth(call.initial_metadata()); depth >= 0) {
      endpoint.reported_depth = depth;
      endpoint.reported_at = Clock::now();
    }
    if (refused) endpoint.avoid_until = Clock::now() + kAvoidAfterRefusal;
  }

  const std::string where = "prefill endpoint " + endpoint.target;
  if (!protocol.ok()) {
    if (protocol.code() == StatusCode::kFailedPrecondition && !canceller->cancelled()) {
      // The endpoint serves another model, or a layout this worker cannot
      // read: a fault of the deployment, not of the request. Another
      // endpoint may serve it; if none does the request ends UNAVAILABLE.
      {
        std::lock_guard<std::mutex> lock(mu_);
        endpoint.avoid_until = Clock::now() + kAvoidAfterRefusal;
      }
      *outcome = Outcome::kRetry;
      return protocol.WithContext(where);
    }
    // A KvStream that broke mid-transfer is a broken stream like stream 0's.
    if (protocol.code() == StatusCode::kUnavailable && options_.retry_broken_streams && !canceller->cancelled())
      *outcome = Outcome::kRetry;
    return protocol.WithContext(where);
  }
  if (timed_out && code == grpc::StatusCode::CANCELLED && !canceller->cancelled()) {
    if (no_kv) *outcome = Outcome::kRetry;
    return Status(StatusCode::kDeadlineExceeded, where + " sent nothing within " +
                                                     SecondsText(options_.first_byte_timeout_seconds) +
                                                     " (--prefill-first-byte-timeout)");
  }
  if (!status.ok()) {
    if ((refused && !timed_out) ||
        (code == grpc::StatusCode::UNAVAILABLE && options_.retry_broken_streams && !canceller->cancelled()))
      *outcome = Outcome::kRetry;
    std::string progress = no_kv ? "before its first KV chunk"
                                 : "after " + std::to_string(received_chunks) + " KV chunks (" +
                                       std::to_string(received_bytes) + " bytes)";
    return FromGrpcStatus(status).WithContext(where + " failed " + progress);
  }
  out->endpoint = endpoint.target;
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  *outcome = Outcome::kOk;
  return OkStatus();
}

// --- health ------------------------------------------------------------------

std::string PrefillModelHealthName(uint64_t fingerprint) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(fingerprint));
  return std::string(kPrefillHealthService) + "/model/" + hex;
}

void PrefillClient::ExpectModel(uint64_t fingerprint) {
  std::lock_guard<std::mutex> lock(mu_);
  health_service_ = PrefillModelHealthName(fingerprint);
}

bool PrefillClient::AnyUpLocked(std::string* why) const {
  bool any = false;
  why->clear();
  for (const auto& e : endpoints_) {
    any = any || !e->down;
    *why += (why->empty() ? "" : ", ") + e->target + ": " + e->health_state;
  }
  return any;
}

void PrefillClient::WatchHealth(std::function<void(bool, const std::string&)> on_change) {
  bool known = false, any = false;
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    on_health_ = on_change;
    known = health_known_;
    any = any_up_;
    AnyUpLocked(&why);
  }
  if (known) on_change(any, why);
}

void PrefillClient::HealthLoop() {
  const auto interval =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.health_interval_seconds));
  const auto timeout = std::chrono::duration_cast<std::chrono::system_clock::duration>(
      std::chrono::duration<double>(options_.health_timeout_seconds));
  struct Check {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status;
  };
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const std::string service = health_service_;
    lock.unlock();
    // One round: every endpoint at once, each within the timeout.
    std::vector<std::unique_ptr<Check>> checks;
    std::mutex round_mu;
    std::condition_variable round_done;
    size_t pending = endpoints_.size();
    for (const auto& e : endpoints_) {
      auto c = std::make_unique<Check>();
      c->context.set_deadline(std::chrono::system_clock::now() + timeout);
      c->request.set_service(service);
      Check* raw = c.get();
      checks.push_back(std::move(c));
      e->health->async()->Check(&raw->context, &raw->request, &raw->response, [&, raw](grpc::Status s) {
        std::lock_guard<std::mutex> round_lock(round_mu);
        raw->status = std::move(s);
        if (--pending == 0) round_done.notify_all();
      });
    }
    {
      // Every callback comes by the deadline; the checks live until then.
      std::unique_lock<std::mutex> round_lock(round_mu);
      round_done.wait(round_lock, [&] { return pending == 0; });
    }
    lock.lock();
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      Endpoint& e = *endpoints_[i];
      const Check& c = *checks[i];
      const bool serving = c.status.ok() && c.response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
      if (serving) {
        e.failed_checks = 0;
        e.down = false;
        e.health_state = "SERVING";
      } else {
        ++e.failed_checks;
        if (c.status.ok()) {
          e.health_state = "NOT_SERVING";
        } else if (c.status.error_code() == grpc::StatusCode::NOT_FOUND && service != kPrefillHealthService) {
          e.health_state = "serves another model (no " + service + ")";
        } else {
          e.health_state =
              std::string(GrpcCodeName(c.status.error_code())) + " (" + c.status.error_message() + ")";
        }
        if (e.failed_checks >= kFailedChecksForDown) {
          e.down = true;
          e.health_state += ", " + std::to_string(e.failed_checks) + " checks in a row";
        }
      }
    }
    std::string why;
    const bool any = AnyUpLocked(&why);
    std::function<void(bool, const std::string&)> notify;
    if (!health_known_ || any != any_up_) notify = on_health_;
    health_known_ = true;
    any_up_ = any;
    if (notify) {
      lock.unlock();
      notify(any, why);
      lock.lock();
    }
    wake_.wait_for(lock, interval, [this] { return stopping_; });
  }
}

}  // namespace seer
