#include "rpc/prefill_client.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>

#include "rpc/grpc_status.h"

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

StatusOr<std::unique_ptr<PrefillClient>> PrefillClient::Create(const std::string& targets,
                                                               const PrefillClientOptions& options) {
  SEER_ASSIGN_OR_RETURN(std::vector<std::string> list, ParsePrefillTargets(targets));
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
    // Notice a peer that vanished without closing its connection.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    auto endpoint = std::make_unique<Endpoint>();
    endpoint->target = target;
    endpoint->channel = grpc::CreateCustomChannel(
        target, options.credentials ? options.credentials : grpc::InsecureChannelCredentials(), args);
    endpoint->stub = v1::Prefill::NewStub(endpoint->channel);
    client->endpoints_.push_back(std::move(endpoint));
    if (target.rfind("dns:", 0) == 0) ++names;
  }
  client->attempts_ = options.attempts > 0 ? options.attempts : static_cast<int>(list.size()) + 2 * names;
  return client;
}

StatusOr<FetchedKv> PrefillClient::Fetch(const v1::PrefillRequest& request, const ExpectedLayout& expected,
                                         KvCache* cache, CallCanceller* canceller,
                                         const std::function<void(int64_t)>& on_kv_bytes) {
  const uint64_t first = next_.fetch_add(1);
  Status last;
  std::string tried;
  for (int attempt = 0; attempt < attempts_; ++attempt) {
    Endpoint& endpoint = *endpoints_[(first + attempt) % endpoints_.size()];
    FetchedKv out;
    bool retryable = false;
    Status s = FetchOnce(endpoint, request, expected, cache, canceller, on_kv_bytes, &out, &retryable);
    if (s.ok()) {
      out.attempts = attempt + 1;
      return out;
    }
    last = s;
    if (!retryable || canceller->cancelled()) return s;
    tried += (tried.empty() ? "" : ", ") + endpoint.target;
  }
  return Unavailable("no prefill endpoint could serve after " + std::to_string(attempts_) + " attempts (" + tried +
                     "); last error: " + last.ToString());
}

Status PrefillClient::FetchOnce(Endpoint& endpoint, const v1::PrefillRequest& request,
                                const ExpectedLayout& expected, KvCache* cache, CallCanceller* canceller,
                                const std::function<void(int64_t)>& on_kv_bytes, FetchedKv* out,
                                bool* retryable) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  if (options_.timeout_seconds > 0)
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(options_.timeout_seconds * 1e6)));
  if (!canceller->Bind(&context)) return Cancelled("the Generate stream was cancelled");

  KvAssembler assembler(expected, request.token_ids_size(), cache);
  std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> reader = endpoint.stub->Prefill(&context, request);
  v1::PrefillResponse msg;
  int messages = 0;
  bool have_summary = false;
  Status protocol;  // the first violation seen on our side
  while (protocol.ok() && reader->Read(&msg)) {
    ++messages;
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
  canceller->Unbind();
  const std::string where = "prefill endpoint " + endpoint.target;
  if (!protocol.ok()) return protocol.WithContext(where);
  if (!status.ok()) {
    *retryable = status.error_code() == grpc::StatusCode::UNAVAILABLE &&
                 (messages == 0 || options_.retry_broken_streams);
    std::string progress = messages == 0 ? "before its first message"
                                         : "after " + std::to_string(assembler.chunks()) + " KV chunks (" +
                                               std::to_string(assembler.bytes()) + " bytes)";
    return FromGrpcStatus(status).WithContext(where + " failed " + progress);
  }
  if (!have_summary) return DataLoss(where + ": the stream ended without a summary");
  out->endpoint = endpoint.target;
  out->kv_bytes = assembler.bytes();
  out->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return OkStatus();
}

}  // namespace seer
