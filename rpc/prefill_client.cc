#include "rpc/prefill_client.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <utility>

#include "rpc/grpc_status.h"
#include "rpc/load_metadata.h"

namespace seer {

bool CallCanceller::Bind(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return false;
  context_ = context;
  return true;
}

void CallCanceller::Unbind() {
  std::lock_guard<std::mutex> lock(mu_);
  context_ = nullptr;
}

void CallCanceller::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool CallCanceller::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

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
// Health checks in a row that must fail before an endpoint counts as down.
constexpr int kFailedChecksForDown = 2;

}  // namespace

StatusOr<std::unique_ptr<PrefillClient>> PrefillClient::Create(const std::string& targets,
                                                               const PrefillClientOptions& options) {
  SEER_ASSIGN_OR_RETURN(std::vector<std::string> list, ParsePrefillTargets(targets));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.connect_timeout_seconds, "--prefill-connect-timeout", 0.1, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.first_byte_timeout_seconds, "--prefill-first-byte-timeout", 0.1, true));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.keepalive_seconds, "--prefill-keepalive", 0.5, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.keepalive_timeout_seconds, "--prefill-keepalive-timeout", 0.5, false));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.health_interval_seconds, "--prefill-health-interval", 0.1, true));
  SEER_RETURN_IF_ERROR(CheckSeconds(options.health_timeout_seconds, "--prefill-health-timeout", 0.1, false));
  std::unique_ptr<PrefillClient> client(new PrefillClient());
  client->options_ = options;
  client->targets_ = list;
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
    auto endpoint = std::make_unique<Endpoint>();
    endpoint->target = target;
    endpoint->channel = grpc::CreateCustomChannel(
        target, options.credentials ? options.credentials : grpc::InsecureChannelCredentials(), args);
    endpoint->stub = v1::Prefill::NewStub(endpoint->channel);
    endpoint->health = grpc::health::v1::Health::NewStub(endpoint->channel);
    endpoint->health_state = "not checked yet";
    client->endpoints_.push_back(std::move(endpoint));
    if (target.rfind("dns:", 0) == 0) ++names;
  }
  client->attempts_ = options.attempts > 0 ? options.attempts : static_cast<int>(list.size()) + 2 * names;
  if (options.first_byte_timeout_seconds > 0) client->timer_thread_ = std::thread([c = client.get()] { c->TimerLoop(); });
  if (options.health_interval_seconds > 0) client->health_thread_ = std::thread([c = client.get()] { c->HealthLoop(); });
  return client;
}

PrefillClient::~PrefillClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  timer_wake_.notify_all();
  if (timer_thread_.joinable()) timer_thread_.join();
  if (health_thread_.joinable()) health_thread_.join();
}

std::vector<size_t> PrefillClient::Order() {
  const size_t n = endpoints_.size();
  const uint64_t first = next_.fetch_add(1);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = (first + i) % n;
  std::vector<std::pair<int, int64_t>> key(n);  // (avoid, load), by endpoint
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    for (size_t i = 0; i < n; ++i) {
      const Endpoint& e = *endpoints_[i];
      const bool fresh = e.reported_depth >= 0 && now - e.reported_at < kQueueDepthTtl;
      key[i] = {e.down || now < e.avoid_until ? 1 : 0, (fresh ? e.reported_depth : 0) + e.inflight};
    }
  }
  // Round-robin among equals: the rotation above is the tie-break.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
  return order;
}

StatusOr<FetchedKv> PrefillClient::Fetch(const v1::PrefillRequest& request, const ExpectedLayout& expected,
                                         KvCache* cache, CallCanceller* canceller,
                                         const std::function<void(int64_t)>& on_kv_bytes) {
  const std::vector<size_t> order = Order();
  Status last;
  std::string tried;
  bool all_exhausted = true;
  for (int attempt = 0; attempt < attempts_; ++attempt) {
    Endpoint& endpoint = *endpoints_[order[attempt % order.size()]];
    FetchedKv out;
    Outcome outcome = Outcome::kFinal;
    Status s = FetchOnce(endpoint, request, expected, cache, canceller, on_kv_bytes, &out, &outcome);
    if (s.ok()) {
      out.attempts = attempt + 1;
      return out;
    }
    last = s;
    if (outcome != Outcome::kRetry || canceller->cancelled()) return s;
    all_exhausted = all_exhausted && s.code() == StatusCode::kResourceExhausted;
    tried += (tried.empty() ? "" : ", ") + endpoint.target;
  }
  const std::string what = "after " + std::to_string(attempts_) + " attempts (" + tried + "); last error: " + last.ToString();
  if (all_exhausted) return ResourceExhausted("every prefill endpoint tried is at capacity " + what);
  return Unavailable("no prefill endpoint could serve " + what);
}

Status PrefillClient::FetchOnce(Endpoint& endpoint, const v1::PrefillRequest& request,
                                const ExpectedLayout& expected, KvCache* cache, CallCanceller* canceller,
                                const std::function<void(int64_t)>& on_kv_bytes, FetchedKv* out,
                                Outcome* outcome) {
  *outcome = Outcome::kFinal;
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  if (options_.timeout_seconds > 0)
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(options_.timeout_seconds * 1e6)));
  if (!canceller->Bind(&context)) return Cancelled("the Generate stream was cancelled");
  const uint64_t timer = ArmFirstByteTimer(&context);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++endpoint.inflight;
  }

  KvAssembler assembler(expected, request.token_ids_size(), cache);
  std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> reader = endpoint.stub->Prefill(&context, request);
  v1::PrefillResponse msg;
  int messages = 0;
  bool have_summary = false, timed_out = false;
  Status protocol;  // the first violation seen on our side
  while (protocol.ok() && reader->Read(&msg)) {
    if (++messages == 1) timed_out = DisarmFirstByteTimer(timer);
    if (have_summary) {
      protocol = DataLoss("prefill stream: a message after the summary");
      break;
    }
    switch (msg.event_case()) {
      case v1::PrefillResponse::kHeader:
        protocol = assembler.OnHeader(msg.header());
        break;
      case v1::PrefillResponse::kChunk:
        protocol = assembler.OnChunk(msg.chunk());
        if (protocol.ok()) on_kv_bytes(static_cast<int64_t>(msg.chunk().k().size() + msg.chunk().v().size()));
        break;
      case v1::PrefillResponse::kSummary:
        protocol = assembler.OnSummary(msg.summary());
        if (protocol.ok()) {
          out->summary = std::move(*msg.mutable_summary());
          have_summary = true;
        }
        break;
      default:
        protocol = DataLoss("prefill stream: a message with no event");
    }
  }
  if (!protocol.ok()) context.TryCancel();
  const grpc::Status status = reader->Finish();
  if (messages == 0) timed_out = DisarmFirstByteTimer(timer);
  canceller->Unbind();

  const bool no_kv = assembler.chunks() == 0;
  const grpc::StatusCode code = status.error_code();
  const bool refused = no_kv && (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                                 (timed_out && code == grpc::StatusCode::CANCELLED));
  {
    std::lock_guard<std::mutex> lock(mu_);
    --endpoint.inflight;
    if (const int64_t depth = ReportedQueueDepth(context.GetServerInitialMetadata()); depth >= 0) {
      endpoint.reported_depth = depth;
      endpoint.reported_at = Clock::now();
    }
    if (refused) endpoint.avoid_until = Clock::now() + kAvoidAfterRefusal;
  }

  const std::string where = "prefill endpoint " + endpoint.target;
  if (!protocol.ok()) return protocol.WithContext(where);
  if (timed_out && code == grpc::StatusCode::CANCELLED && !canceller->cancelled()) {
    if (no_kv) *outcome = Outcome::kRetry;
    return Status(StatusCode::kDeadlineExceeded,
                  where + " sent nothing within " + SecondsText(options_.first_byte_timeout_seconds) +
                      " (--prefill-first-byte-timeout)");
  }
  if (!status.ok()) {
    if ((refused && !timed_out) ||
        (code == grpc::StatusCode::UNAVAILABLE && options_.retry_broken_streams && !canceller->cancelled()))
      *outcome = Outcome::kRetry;
    std::string progress = no_kv ? "before its first KV chunk"
                                 : "after " + std::to_string(assembler.chunks()) + " KV chunks (" +
                                       std::to_string(assembler.bytes()) + " bytes)";
    return FromGrpcStatus(status).WithContext(where + " failed " + progress);
  }
  if (!have_summary) return DataLoss(where + ": the stream ended without a summary");
  out->endpoint = endpoint.target;
  out->kv_bytes = assembler.bytes();
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  *outcome = Outcome::kOk;
  return OkStatus();
}

// --- first-byte timers --------------------------------------------------------

uint64_t PrefillClient::ArmFirstByteTimer(grpc::ClientContext* context) {
  if (options_.first_byte_timeout_seconds <= 0) return 0;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options_.first_byte_timeout_seconds));
  uint64_t token = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    token = next_timer_++;
    timers_[token] = Timer{context, deadline, false};
  }
  timer_wake_.notify_all();
  return token;
}

bool PrefillClient::DisarmFirstByteTimer(uint64_t token) {
  if (token == 0) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = timers_.find(token);
  if (it == timers_.end()) return false;
  const bool fired = it->second.fired;
  timers_.erase(it);
  return fired;
}

void PrefillClient::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    std::optional<Clock::time_point> next;
    for (const auto& [token, t] : timers_)
      if (!t.fired && (!next || t.deadline < *next)) next = t.deadline;
    if (next) {
      timer_wake_.wait_until(lock, *next);
    } else {
      timer_wake_.wait(lock);
    }
    const Clock::time_point now = Clock::now();
    // A call's context lives until its timer is disarmed, which waits for
    // this lock: cancelling under it is safe (a synchronous call runs no
    // callbacks of ours).
    for (auto& [token, t] : timers_) {
      if (!t.fired && t.deadline <= now) {
        t.fired = true;
        t.context->TryCancel();
      }
    }
  }
}

// --- health ------------------------------------------------------------------

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
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.health_interval_seconds));
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
    lock.unlock();
    // One round: every endpoint at once, each within the timeout.
    std::vector<std::unique_ptr<Check>> checks;
    std::mutex round_mu;
    std::condition_variable round_done;
    size_t pending = endpoints_.size();
    for (const auto& e : endpoints_) {
      auto c = std::make_unique<Check>();
      c->context.set_deadline(std::chrono::system_clock::now() + timeout);
      c->request.set_service("seer.v1.Prefill");
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
      const bool serving =
          c.status.ok() && c.response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
      if (serving) {
        e.failed_checks = 0;
        e.down = false;
        e.health_state = "SERVING";
      } else {
        ++e.failed_checks;
        e.health_state = c.status.ok() ? "NOT_SERVING"
                                       : std::string(GrpcCodeName(c.status.error_code())) + " (" +
                                             c.status.error_message() + ")";
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
