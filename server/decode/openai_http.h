// An OpenAI-compatible HTTP front door for seer-decode (--http host:port):
//
//   POST /v1/completions        {"model", "prompt", "max_tokens", ...}
//   POST /v1/chat/completions   {"model", "messages", "max_tokens", ...}
//   GET  /v1/models
//
// with `stream: true` as server-sent events ("data: {...}" chunks, then
// "data: [DONE]"). The fields that make sense here are honoured (max_tokens /
// max_completion_tokens, temperature, top_p, seed, stop, presence_penalty,
// frequency_penalty, logit_bias, n (1 to 16 choices of one prefill), a
// completion's best_of (the n best of that many candidates),
// stream_options.include_usage,
// logprobs (a completion's count, a chat's flag with top_logprobs, up to 20
// alternatives: the model's own, from its raw logits), a completion's echo
// (the prompt, with its tokens' logprobs when asked, as
// lm-evaluation-harness scores text; a completion's prompt may be a batch of
// up to 64 strings or lists of ids, a Generate call each, side by side,
// prompt p's choices numbered p * n + i); vLLM's top_k, min_p, repetition_penalty, stop_token_ids, min_tokens,
// ignore_eos, include_stop_str_in_output, skip_special_tokens, bad_words,
// allowed_token_ids, and a
// chat's add_generation_prompt, continue_final_message and
// chat_template_kwargs) plus
// Seer's own `seer_sparsity`
// ("dense", "threshold=T", "nz_ratio=R"); guided decoding (response_format,
// vLLM's guided_* and structured_outputs); a chat's tools, tool_choice and
// parallel_tool_calls (text/tool_calls.h: "required" and a named function
// guided to their calls, "auto" read in the model's format, the reply's
// tool_calls whole or streamed). Fields that ask for what Seer cannot do (a
// chat's best_of, the legacy functions, beam search, ...) are refused unless
// they hold their neutral value, other fields are ignored as OpenAI's
// servers ignore unknown ones. Errors use OpenAI's JSON
// shape, {"error": {"message", "type", "param", "code"}}, with the HTTP code
// the gRPC status maps to (400, 404, 429, 503, 500).
//
// vLLM's POST /tokenize ({"prompt"} or {"messages"} with the chat controls,
// add_special_tokens, return_token_strs: {count, max_model_len, tokens,
// token_strs}) and POST /detokenize ({"tokens"}: {"prompt"}) answer from the
// server's tokenizer, with the same rendering and checks as Generate.
//
// The front door holds no model: each request becomes one Decode.Generate
// call on a GenerateBackend (in seer-decode, the server's own gRPC service
// over an in-process channel), so the HTTP API and gRPC share every check,
// limit and metric. Every call asks for a text reply (text_reply), for
// prompts of token ids too; errors name the OpenAI field ("max_tokens",
// "prompt", "top_p"), and a prompt too long for the context has the code
// context_length_exceeded. A client that closes its connection has its call
// cancelled at the next token, streaming or not. Drain() stops the front
// door gracefully, before the gRPC server's own drain.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "base/status.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/tls_front.h"
#include "text/tokenizer.h"
#include "text/tool_calls.h"

struct mg_context;
struct mg_connection;
struct mg_request_info;

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
}  // namespace prometheus

namespace seer {

class GenerateBackend {
 public:
  virtual ~GenerateBackend() = default;
  // Runs one Generate call for the HTTP client at `client` ("ipv4:a.b.c.d:port",
  // what the request log names as its peer). `on_response` gets each
  // response in order and returns false when the HTTP client has gone (the
  // call is then cancelled).
  virtual grpc::Status Generate(const v1::GenerateRequest& request, const std::string& client,
                                const std::function<bool(const v1::GenerateResponse&)>& on_response) = 0;
};

// Generate over a gRPC channel (seer-decode's own service, in process); the
// call names the HTTP client in kHttpClientMetadata.
std::unique_ptr<GenerateBackend> MakeGrpcGenerateBackend(std::shared_ptr<grpc::Channel> channel);

struct OpenAiHttpOptions {
  std::string listen;  // host:port; port 0 picks one
  std::string model_name;  // what /v1/models lists and requests must name
  int threads = 32;  // concurrent HTTP requests
  // OpenAI's default for completions; a chat without a limit gets the
  // server's --default-max-new-tokens.
  int default_max_tokens = 16;
  // The gRPC server's receive limit (the largest valid request and a
  // margin); a request larger than it is refused here as a prompt too long
  // for the model (400, context_length_exceeded). 0: no check.
  size_t max_request_bytes = 0;
  // Enabled: the API is HTTPS with these files (TlsFront; mutual TLS with
  // client_ca), and civetweb listens on loopback behind it.
  ServerTlsOptions tls;
  // vLLM's POST /tokenize and /detokenize: the tokenizer once the model has
  // loaded (UNAVAILABLE before; FAILED_PRECONDITION when the server has
  // none), and the context length /tokenize reports. Unset: those paths are
  // 404.
  std::function<StatusOr<const Tokenizer*>()> tokenizer;
  int max_model_len = 0;
  // How a chat's tool_choice "auto" reads the model's calls: "llama3_json",
  // "hermes" or "mistral" (text/tool_calls.h), "auto" (the format the
  // tokenizer's chat template shows, once it has loaded) or "none" ("auto"
  // is then refused, naming --tool-call-parser).
  std::string tool_call_parser = "auto";
  // Given: seer_http_requests_total{endpoint, code} counts every answer by
  // its HTTP status, refusals of the HTTP layer itself included (bad JSON,
  // unsupported fields, unknown models), which never reach Generate's own
  // metrics; 499 is a client that left before any answer was written.
  prometheus::Registry* registry = nullptr;
};

class OpenAiHttpServer {
 public:
  static StatusOr<std::unique_ptr<OpenAiHttpServer>> Start(const OpenAiHttpOptions& options, GenerateBackend* backend);
  ~OpenAiHttpServer();
  int port() const { return port_; }
  // For a graceful stop, before the backend stops: from now on requests are
  // refused (503), and this waits until the ones in flight have answered or
  // `deadline` has passed. True when none is left.
  bool Drain(std::chrono::steady_clock::time_point deadline);

 private:
  OpenAiHttpServer(OpenAiHttpOptions options, GenerateBackend* backend)
      : options_(std::move(options)), backend_(backend) {}
  static int Handle(mg_connection* conn, void* self);
  void Serve(mg_connection* conn);  // counts the request in flight around Respond
  void Respond(mg_connection* conn);
  // The HTTP client of a request (behind the TLS front: the front's client).
  std::string ClientAddress(const mg_request_info* info) const;
  // The format tool_choice "auto" reads (options_.tool_call_parser); nullopt
  // when there is none; UNAVAILABLE while "auto" waits for the tokenizer.
  StatusOr<std::optional<ToolCallFormat>> ToolFormat() const;

  const OpenAiHttpOptions options_;
  GenerateBackend* const backend_;
  mg_context* ctx_ = nullptr;
  std::unique_ptr<TlsFront> tls_front_;
  int port_ = 0;  // what clients reach (the TLS front's, with TLS)
  int port_civetweb_ = 0;  // civetweb's own
  std::mutex mu_;
  std::condition_variable idle_;
  int active_ = 0;  // requests in Respond
  bool draining_ = false;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;  // with options_.registry
};

}  // namespace seer
