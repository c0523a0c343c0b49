#include "server/common/request_log.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>

#include <grpcpp/server_context.h>

#include "base/json.h"
#include "rpc/grpc_status.h"
#include "rpc/kv_chunk_codec.h"
#include "seer/v1/seer.pb.h"
#include "server/common/logging.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

enum class Rpc { kPrefill, kGenerate };

bool EndsWith(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

LogLevel LevelFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return LogLevel::kInfo;
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::DATA_LOSS: return LogLevel::kError;
    default: return LogLevel::kWarn;
  }
}

// Milliseconds to the microsecond.
double Ms(double seconds) { return std::round(seconds * 1e6) / 1e3; }

// This process's token for kHttpClientMetadata: 128 random bits, made once.
const std::string& ProcessToken() {
  static const std::string token = [] {
    std::random_device rd;
    char buf[33];
    std::snprintf(buf, sizeof(buf), "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    return std::string(buf);
  }();
  return token;
}

class CallInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(grpc::experimental::ServerRpcInfo* info, Rpc rpc, bool raw, const CallHooks* hooks,
                  std::string fresh_id)
      : info_(info), rpc_(rpc), raw_(raw), hooks_(hooks), fresh_id_(std::move(fresh_id)), start_(Clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    using grpc::experimental::InterceptionHookPoints;
    // The peer while the call is alive: once a call is cancelled gRPC no
    // longer knows it ("unknown").
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA))
      peer_ = CallPeer(*info_->server_context(), &via_http_);
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) OnRequest(m->GetRecvMessage());
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA) && hooks_->load) {
      const ServerLoad load = hooks_->load();
      std::multimap<std::string, std::string>* md = m->GetSendInitialMetadata();
      md->emplace(kLoadMetadataRunning, std::to_string(load.running));
      md->emplace(kLoadMetadataQueued, std::to_string(load.queued));
      md->emplace(kLoadMetadataMaxConcurrent, std::to_string(load.max_concurrent));
      md->emplace(kLoadMetadataMaxQueue, std::to_string(load.max_queue));
    }
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) OnResponse(m->GetSendMessage());
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status status = m->GetSendStatus();
      if (unparsed_ && status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        // The callback API answers a request it could not deserialize with
        // UNIMPLEMENTED and no message.
        status = UnparsedRequestStatus(info_->method());
        m->ModifySendStatus(status);
        if (hooks_->count_unserved) hooks_->count_unserved(status.error_code());
      }
      Log(status);
    }
    m->Proceed();
  }

 private:
  void OnRequest(void* message) {
    if (message == nullptr) {
      unparsed_ = true;
      return;
    }
    if (raw_) {
      // Bytes: the service parses them (and answers INVALID_ARGUMENT when
      // they do not parse); a request without an id gets one here.
      auto* buffer = static_cast<grpc::ByteBuffer*>(message);
      bytes_in_ = static_cast<int64_t>(buffer->Length());
      v1::PrefillRequest r;
      if (rpc_ != Rpc::kPrefill || !DecodeMessage(*buffer, &r).ok()) return;
      if (r.request_id().empty()) {
        r.set_request_id(fresh_id_);
        if (StatusOr<grpc::ByteBuffer> named = EncodeMessage(r); named.ok()) *buffer = *named;
      }
      request_id_ = r.request_id();
      prompt_tokens_ = r.token_ids_size();
      return;
    }
    if (rpc_ == Rpc::kPrefill) {
      auto* r = static_cast<v1::PrefillRequest*>(message);
      bytes_in_ = static_cast<int64_t>(r->ByteSizeLong());
      if (r->request_id().empty()) r->set_request_id(fresh_id_);
      request_id_ = r->request_id();
      prompt_tokens_ = r->token_ids_size();
    } else {
      auto* r = static_cast<v1::GenerateRequest*>(message);
      bytes_in_ = static_cast<int64_t>(r->ByteSizeLong());
      if (r->request_id().empty()) r->set_request_id(fresh_id_);
      request_id_ = r->request_id();
      prompt_tokens_ = r->token_ids_size();
      max_new_tokens_ = r->max_new_tokens();
      choices_ = std::max(1, r->n());
    }
  }

  void OnResponse(const void* message) {
    if (message == nullptr) return;
    ++messages_out_;
    if (rpc_ == Rpc::kPrefill) {
      v1::PrefillResponse parsed;
      const v1::PrefillResponse* r = nullptr;
      if (raw_) {
        // Only the summary (its first field is 3) is parsed: chunks stay bytes.
        const auto* buffer = static_cast<const grpc::ByteBuffer*>(message);
        bytes_out_ += static_cast<int64_t>(buffer->Length());
        if (FirstFieldNumber(*buffer) != 3 || !DecodeMessage(*buffer, &parsed).ok()) return;
        r = &parsed;
      } else {
        r = static_cast<const v1::PrefillResponse*>(message);
        bytes_out_ += static_cast<int64_t>(r->ByteSizeLong());
      }
      if (r->has_summary()) {
        const v1::PrefillSummary& s = r->summary();
        summary_ = JsonValue::Object();
        summary_.Set("queue_ms", JsonValue::Number(Ms(s.timings().queue_seconds())));
        summary_.Set("prefill_ms", JsonValue::Number(Ms(s.timings().prefill_seconds())));
        summary_.Set("kv_stream_ms", JsonValue::Number(Ms(s.timings().kv_stream_seconds())));
        summary_.Set("kv_bytes", JsonValue::Int(s.kv_bytes()));
        summary_.Set("kv_chunks", JsonValue::Int(s.kv_chunks()));
        summary_.Set("density", JsonValue::Number(s.overall_density()));
        summary_.Set("sparsity", JsonValue::String(s.sparsity()));
        if (s.has_transfer()) SetTransfer(s.transfer());
      }
    } else {
      const auto* r = static_cast<const v1::GenerateResponse*>(message);
      bytes_out_ += static_cast<int64_t>(r->ByteSizeLong());
      if (r->has_summary() && ++summaries_ > 1) {
        // Another choice's: its tokens add up, and its finish is listed.
        generated_ += r->summary().generated_tokens();
        summary_.Set("generated_tokens", JsonValue::Int(generated_));
        finishes_.Append(JsonValue::String(r->summary().finish_reason()));
        summary_.Set("finish_reasons", finishes_);
      } else if (r->has_summary()) {
        const v1::GenerateSummary& s = r->summary();
        summary_ = JsonValue::Object();
        generated_ = s.generated_tokens();
        finishes_ = JsonValue::Array();
        finishes_.Append(JsonValue::String(s.finish_reason()));
        // A text or chat prompt's ids are known only after the tokenizer.
        if (s.prompt_tokens() > 0) prompt_tokens_ = s.prompt_tokens();
        summary_.Set("generated_tokens", JsonValue::Int(s.generated_tokens()));
        summary_.Set("finish_reason", JsonValue::String(s.finish_reason()));
        summary_.Set("ttft_ms", JsonValue::Number(Ms(s.ttft_seconds())));
        summary_.Set("prefill_ms", JsonValue::Number(Ms(s.prefill_seconds())));
        summary_.Set("kv_transfer_ms", JsonValue::Number(Ms(s.kv_transfer_seconds())));
        summary_.Set("kv_bytes", JsonValue::Int(s.kv_bytes()));
        summary_.Set("density", JsonValue::Number(s.overall_density()));
        summary_.Set("sparsity", JsonValue::String(s.sparsity()));
        summary_.Set("prefill_endpoint", JsonValue::String(s.prefill_endpoint()));
        if (s.has_kv_transfer()) SetTransfer(s.kv_transfer());
      }
    }
  }

  // How the KV moved (docs/KV_TRANSPORT.md), on the request's line.
  void SetTransfer(const v1::KvTransferStats& t) {
    summary_.Set("kv_transport", JsonValue::String(t.transport() == v1::KV_TRANSPORT_NCCL ? "nccl" : "grpc"));
    summary_.Set("kv_wire", JsonValue::String(t.kv_wire() == v1::KV_WIRE_FP8_E4M3 ? "fp8" : "dtype"));
    summary_.Set("kv_streams", JsonValue::Int(t.grpc_streams()));
    if (!t.fallback_reason().empty()) summary_.Set("kv_fallback", JsonValue::String(t.fallback_reason()));
  }

  void Log(const grpc::Status& status) {
    const LogLevel level = LevelFor(status.error_code());
    if (!LogEnabled(level)) return;
    JsonValue f = JsonValue::Object();
    f.Set("request_id", JsonValue::String(request_id_));
    f.Set("method", JsonValue::String(info_->method()));
    if (peer_.empty()) peer_ = CallPeer(*info_->server_context(), &via_http_);
    f.Set("peer", JsonValue::String(peer_));
    if (via_http_) f.Set("via", JsonValue::String("http"));
    f.Set("code", JsonValue::String(std::string(GrpcCodeName(status.error_code()))));
    if (!status.ok()) f.Set("error", JsonValue::String(status.error_message()));
    f.Set("prompt_tokens", JsonValue::Int(prompt_tokens_));
    if (rpc_ == Rpc::kGenerate) f.Set("max_new_tokens", JsonValue::Int(max_new_tokens_));
    if (choices_ > 1) f.Set("n", JsonValue::Int(choices_));
    f.Set("duration_ms", JsonValue::Number(Ms(std::chrono::duration<double>(Clock::now() - start_).count())));
    f.Set("bytes_in", JsonValue::Int(bytes_in_));
    f.Set("bytes_out", JsonValue::Int(bytes_out_));
    f.Set("messages_out", JsonValue::Int(messages_out_));
    if (summary_.type() == JsonValue::Type::kObject)
      for (const auto& [key, value] : summary_.as_object()) f.Set(key, value);
    LogEvent(level, "request", f);
  }

  grpc::experimental::ServerRpcInfo* const info_;
  const Rpc rpc_;
  const bool raw_;  // ByteBuffer messages
  const CallHooks* const hooks_;
  const std::string fresh_id_;
  const Clock::time_point start_;
  // gRPC runs one call's interception batches one after another.
  bool unparsed_ = false;
  std::string peer_;
  bool via_http_ = false;
  std::string request_id_;
  int64_t prompt_tokens_ = 0, max_new_tokens_ = 0, bytes_in_ = 0, bytes_out_ = 0, messages_out_ = 0;
  JsonValue summary_;
  // With n choices, one summary each: generated_tokens is their sum, and
  // finish_reasons lists each choice's, in the order they finished.
  int choices_ = 1, summaries_ = 0;
  int64_t generated_ = 0;
  JsonValue finishes_;
};

class CallInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallInterceptorFactory(CallHooks hooks) : hooks_(std::move(hooks)) {
    char tag[16];
    std::snprintf(tag, sizeof(tag), "%08x", static_cast<unsigned>(std::random_device{}()));
    id_prefix_ = hooks_.request_id_prefix + "-" + tag + "-";
  }

  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    const std::string_view method = info->method() != nullptr ? info->method() : "";
    // seer.v1's calls only: health checks and reflection pass untouched.
    if (method.rfind("/seer.", 0) != 0) return nullptr;
    Rpc rpc;
    if (EndsWith(method, "/Prefill")) {
      rpc = Rpc::kPrefill;
    } else if (EndsWith(method, "/Generate")) {
      rpc = Rpc::kGenerate;
    } else {
      return nullptr;
    }
    const bool raw = hooks_.raw_methods.count(std::string(method)) > 0;
    return new CallInterceptor(info, rpc, raw, &hooks_, id_prefix_ + std::to_string(next_.fetch_add(1)));
  }

 private:
  const CallHooks hooks_;
  std::string id_prefix_;
  std::atomic<uint64_t> next_{1};
};

}  // namespace

std::string HttpClientMetadataValue(std::string_view client_address) {
  return ProcessToken() + " " + std::string(client_address);
}

std::string CallPeer(const grpc::ServerContextBase& context, bool* via_http) {
  if (via_http != nullptr) *via_http = false;
  const auto& md = context.client_metadata();
  const auto it = md.find(kHttpClientMetadata);
  if (it != md.end()) {
    const std::string_view value(it->second.data(), it->second.size());
    const std::string& token = ProcessToken();
    if (value.size() > token.size() + 1 && value.substr(0, token.size()) == token && value[token.size()] == ' ') {
      if (via_http != nullptr) *via_http = true;
      return std::string(value.substr(token.size() + 1));
    }
  }
  return context.peer();
}

grpc::Status UnparsedRequestStatus(std::string_view method) {
  const std::string type = EndsWith(method, "/Prefill") ? "seer.v1.PrefillRequest" : "seer.v1.GenerateRequest";
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "request: the message does not parse as a " + type +
                          " (malformed protobuf, or a string field that is not valid UTF-8)");
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeCallInterceptorFactory(CallHooks hooks) {
  return std::make_unique<CallInterceptorFactory>(std::move(hooks));
}

}  // namespace seer
