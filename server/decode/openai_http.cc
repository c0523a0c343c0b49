#include "server/decode/openai_http.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <ctime>
#include <functional>
#include <mutex>
#include <thread>
#include <string>
#include <string_view>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/registry.h>

#include "base/json.h"
#include "engine/model/sparsity.h"
#include "rpc/grpc_status.h"
#include "rpc/requests.h"
#include "server/common/listen_socket.h"
#include "server/common/logging.h"
#include "server/common/request_log.h"
#include "text/guide.h"
#include "text/prompt.h"
#include "text/tool_calls.h"

namespace seer {
namespace {

constexpr size_t kMaxBodyBytes = size_t{4} << 20;
constexpr int kMaxStopStrings = 16;

std::atomic<uint64_t> g_next_id{1};

// The HTTP status of the answer this thread is writing (a civetweb worker
// serves one request at a time), for the request counter.
thread_local int t_http_status = 0;

// An error as OpenAI's API writes it, with the HTTP code.
struct HttpError {
  int http = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;  // empty: null
};

std::string ErrorJson(const HttpError& e) {
  JsonValue err = JsonValue::Object();
  err.Set("message", JsonValue::String(e.message));
  err.Set("type", JsonValue::String(e.type));
  err.Set("param", e.param.empty() ? JsonValue() : JsonValue::String(e.param));
  err.Set("code", e.code.empty() ? JsonValue() : JsonValue::String(e.code));
  JsonValue out = JsonValue::Object();
  out.Set("error", std::move(err));
  return out.Dump();
}

HttpError Invalid(std::string param, std::string message) {
  HttpError e;
  e.param = std::move(param);
  e.message = std::move(message);
  return e;
}

// A field at its neutral value, which asks for nothing: absent, null, false
// or an empty list.
bool Neutral(const JsonValue* f) {
  return f == nullptr || f->is_null() || (f->is_bool() && !f->as_bool()) || (f->is_array() && f->as_array().empty());
}

// A true-or-false field: *v is set when it is given (absent and null leave
// it alone).
std::optional<HttpError> OptionalBool(const JsonValue& root, const char* key, std::optional<bool>* v) {
  const JsonValue* f = root.Find(key);
  if (f == nullptr || f->is_null()) return std::nullopt;
  if (!f->is_bool()) return Invalid(key, std::string(key) + ": must be true or false");
  *v = f->as_bool();
  return std::nullopt;
}

// The HTTP code and OpenAI error type of a gRPC status from Generate.
HttpError FromGrpc(const grpc::Status& s) {
  HttpError e;
  e.message = s.error_message();
  switch (s.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: e.http = 400; break;
    case grpc::StatusCode::NOT_FOUND:
      e.http = 404;
      e.code = "not_found";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.http = 429;
      e.type = "rate_limit_exceeded";
      e.code = "rate_limit_exceeded";
      break;
    case grpc::StatusCode::UNAVAILABLE:
      e.http = 503;
      e.type = "server_error";
      e.code = "service_unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.http = 504;
      e.type = "server_error";
      e.code = "timeout";
      break;
    default:
      e.http = 500;
      e.type = "server_error";
      break;
  }
  // The field a message names ("sampling.top_p: ...") is the param.
  const size_t colon = e.message.find(':');
  if (e.http == 400 && colon != std::string::npos && colon < 48 && e.message.find(' ') > colon) {
    e.param = e.message.substr(0, colon);
  }
  return e;
}

// A Generate error in the HTTP request's own terms: the gRPC field a message
// names becomes the OpenAI field it came from ("sampling.top_p" is "top_p",
// "token_ids" is "prompt" or "messages", "max_new_tokens" is the max_tokens
// key the request used), and a prompt that does not fit the context gets
// OpenAI's code for it. In a batch, a field of prompt `prompt_index` is
// named with it: "prompt[2]", and "prompt[2][5]" for its sixth id.
void InOpenAiTerms(bool chat, const std::string& max_key, HttpError* e, int prompt_index = -1,
                   const std::string& guide_key = "") {
  const std::string field = e->param;
  if (field.empty()) return;
  std::string name = field;
  if (field == "max_new_tokens") {
    name = max_key;
  } else if (field == "min_new_tokens") {
    name = "min_tokens";
  } else if (field == "token_ids" || field == "text" || field == "text_reply") {
    name = chat ? "messages" : "prompt";
  } else if (field.rfind("token_ids[", 0) == 0) {
    name = chat ? "messages" : "prompt" + field.substr(9);  // prompt[3]: the id the request sent
  } else if (field.rfind("sampling.", 0) == 0) {
    name = field.substr(9);
  } else if (field.rfind("sparsity.", 0) == 0) {
    name = "seer_sparsity";
  } else if (field.rfind("chat_template_kwargs.", 0) == 0) {
    name = "chat_template_kwargs";
  } else if (field.rfind("stop[", 0) == 0) {
    name = field;  // stop[1]: the request's own index
  } else if (field.rfind("guide", 0) == 0 && !guide_key.empty()) {
    name = guide_key;  // the request's response_format, guided_json, ...
    // A place in "required"'s schema is a place in one tool's parameters.
    const std::string calls = "/items/anyOf/";
    if (const size_t at = e->message.find(calls); guide_key == "tools" && at != std::string::npos) {
      const size_t digits = e->message.find_first_not_of("0123456789", at + calls.size());
      const std::string index = e->message.substr(at + calls.size(), digits - at - calls.size());
      const std::string part = calls + index + "/properties/parameters";
      if (!index.empty() && e->message.compare(at, part.size(), part) == 0) {
        name = "tools[" + index + "].function.parameters";
        std::string rest = e->message.substr(at + part.size());
        e->message = field + ": " + (rest.empty() || rest[0] == ':' ? "(root)" : "") + rest;
      }
    }
  } else if (field == "request_id") {
    name = "user";
  } else if (field == "logprobs") {
    name = chat ? "top_logprobs" : "logprobs";
  } else if (field == "prompt_logprobs") {
    name = "echo";  // only a completion's echo asks for them
  }
  if (prompt_index >= 0 && name.rfind("prompt", 0) == 0) {
    name = "prompt[" + std::to_string(prompt_index) + "]" + name.substr(6);
  }
  const bool too_long = ((field == "token_ids" || field == "text" || field == "messages") &&
                         e->message.find(" exceed") != std::string::npos) ||
                        (field == "max_new_tokens" && e->message.find("max_position_embeddings") != std::string::npos);
  if (too_long) e->code = "context_length_exceeded";
  // A template variable's own name stays in the message; the param is the
  // request's field.
  if (field.rfind("chat_template_kwargs.", 0) != 0) e->message = name + e->message.substr(field.size());
  // (Over gRPC, 0 takes the server's default; over HTTP, 0 is refused.)
  if (const size_t at = e->message.find("; 0 takes its default"); at != std::string::npos) {
    e->message.erase(at, std::strlen("; 0 takes its default"));
  }
  e->param = name;
}

const char* Reason(int code) {
  switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
  }
}

void SendJson(mg_connection* conn, int code, const std::string& body) {
  t_http_status = code;
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\n\r\n",
            code, Reason(code), body.size());
  mg_write(conn, body.data(), body.size());
}

void SendError(mg_connection* conn, const HttpError& e) { SendJson(conn, e.http, ErrorJson(e)); }

// A server-sent event as one HTTP chunk.
bool SendEvent(mg_connection* conn, const std::string& data) {
  const std::string event = "data: " + data + "\n\n";
  return mg_send_chunk(conn, event.data(), static_cast<unsigned int>(event.size())) > 0;
}

// The request body, whole: a body larger than the limit is refused (413),
// and so is one that ends before its Content-Length (400).
StatusOr<std::string> ReadBody(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  if (info->content_length > static_cast<long long>(kMaxBodyBytes)) {
    return ResourceExhausted("the request body has " + std::to_string(info->content_length) +
                             " bytes, more than the limit of " + std::to_string(kMaxBodyBytes));
  }
  std::string body;
  char buf[16384];
  for (;;) {
    const int n = mg_read(conn, buf, sizeof(buf));
    if (n <= 0) break;
    body.append(buf, static_cast<size_t>(n));
    if (body.size() > kMaxBodyBytes) {
      return ResourceExhausted("the request body is larger than the limit of " + std::to_string(kMaxBodyBytes) +
                               " bytes");
    }
  }
  if (info->content_length >= 0 && static_cast<long long>(body.size()) < info->content_length) {
    return InvalidArgument("the request body ended after " + std::to_string(body.size()) + " of the " +
                           std::to_string(info->content_length) + " bytes its Content-Length announced");
  }
  return body;
}

// The socket of this connection: civetweb does not hand it out, so it is the
// one open socket whose two ends are the request's (the connection is this
// thread's until the handler returns, so the descriptor stays valid). -1
// when none matches.
int ClientSocket(const mg_request_info* info, int server_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
      continue;
    }
    char host[INET6_ADDRSTRLEN] = {};
    int local_port = 0, peer_port = 0;
    if (peer.ss_family == AF_INET) {
      const auto* p = reinterpret_cast<const sockaddr_in*>(&peer);
      inet_ntop(AF_INET, &p->sin_addr, host, sizeof(host));
      peer_port = ntohs(p->sin_port);
      local_port = ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      const auto* p = reinterpret_cast<const sockaddr_in6*>(&peer);
      inet_ntop(AF_INET6, &p->sin6_addr, host, sizeof(host));
      peer_port = ntohs(p->sin6_port);
      local_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
    } else {
      continue;
    }
    if (local_port == server_port && peer_port == info->remote_port && std::strcmp(host, info->remote_addr) == 0) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

// Whether the client has closed its end (or the connection broke). As in
// other HTTP servers, a client that shuts down its sending side while its
// request runs counts as gone.
bool ClientClosed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// The parts of an OpenAI request that become a GenerateRequest.
struct ParsedRequest {
  v1::GenerateRequest generate;
  bool stream = false;
  bool include_usage = false;
  std::string model;
  std::string max_key = "max_tokens";  // or max_completion_tokens: the limit's name in errors
  bool logprobs = false;  // each token's logprobs are asked for
  // A completion's echo: the reply starts with the prompt (and its tokens'
  // logprobs when logprobs asks).
  bool echo = false;
  // A completion's prompts, a call each (a batch: prompt p's choices are
  // p * n to p * n + n - 1, as vLLM numbers them); `generate` holds the
  // rest. A chat's one prompt is in `generate` itself.
  struct Prompt {
    std::optional<std::string> text;  // a text prompt, echoed as given
    std::vector<int32_t> ids;  // a prompt of token ids
  };
  std::vector<Prompt> prompts;
  // max_tokens 0 with echo (scoring a text, as vLLM allows): the reply is the
  // prompt alone. The wire asks for one token, which is not shown.
  bool prompt_only = false;
  int n = 1;  // choices returned
  // Candidates generated (GenerateRequest.n, one call), best_of >= n: the n
  // with the highest logprob per token are returned.
  int best_of = 1;
  std::string guide_key;  // the field that asked for a guide (response_format, guided_json, ...)
  // A chat's tools, and how its reply may call them (docs/SERVICE.md, "Tool
  // calling").
  std::vector<ToolDefinition> tools;
  ToolChoice tool_choice;
  bool parallel_tool_calls = true;
  bool skip_special_set = false;  // the request chose skip_special_tokens itself
};

// A JSON number as a float; beyond float's range, infinite (which the
// request checks then refuse by name).
float ToFloat(double v) {
  if (v > FLT_MAX) return INFINITY;
  if (v < -FLT_MAX) return -INFINITY;
  return static_cast<float>(v);
}

// OpenAI's logprobs. A completion's `logprobs` is the number of alternatives
// (0 to 20: 0 gives the chosen token's alone); a chat's is true or false,
// with `top_logprobs` (0 to 20) alternatives, which needs logprobs true.
std::optional<HttpError> ParseLogprobs(const JsonValue& root, bool chat, ParsedRequest* out) {
  const JsonValue* logprobs = root.Find("logprobs");
  const JsonValue* top = root.Find("top_logprobs");
  const bool has_top = top != nullptr && !top->is_null();
  const bool top_neutral = !has_top || (top->is_number() && top->as_double() == 0.0);
  const std::string range = "an integer from 0 to " + std::to_string(kMaxTopLogprobs);
  auto count = [&](const char* key, const JsonValue& v) -> std::optional<HttpError> {
    if (!v.is_integer() || v.as_int64() < 0 || v.as_int64() > kMaxTopLogprobs) {
      return Invalid(key, std::string(key) + ": must be " + range + ", got " + v.Dump().substr(0, 32));
    }
    out->generate.set_logprobs(static_cast<int32_t>(v.as_int64()));
    out->logprobs = true;
    return std::nullopt;
  };
  if (!chat) {
    // Not a completions field: refused unless neutral, as the others are.
    if (!top_neutral) {
      return Invalid("top_logprobs", "top_logprobs: not a completions field (logprobs gives the alternatives)");
    }
    if (logprobs == nullptr || logprobs->is_null()) return std::nullopt;
    return count("logprobs", *logprobs);
  }
  if (logprobs != nullptr && !logprobs->is_null() && !logprobs->is_bool()) {
    return Invalid("logprobs", "logprobs: must be true or false (top_logprobs gives the number of alternatives)");
  }
  const bool on = logprobs != nullptr && logprobs->is_bool() && logprobs->as_bool();
  if (!on) {
    if (!top_neutral) return Invalid("top_logprobs", "top_logprobs: needs logprobs set to true");
    return std::nullopt;
  }
  out->generate.set_logprobs(0);
  out->logprobs = true;
  return has_top ? count("top_logprobs", *top) : std::nullopt;
}

// Guided decoding, from OpenAI's response_format and vLLM's guided_json,
// guided_regex, guided_choice, guided_grammar and structured_outputs: at
// most one of them (a neutral value, null, false or an empty list, is none),
// into g.guide; `set_by` names the field that set it.
std::optional<HttpError> ParseGuide(const JsonValue& root, v1::GenerateRequest* g, std::string* guide_key) {
  std::string& set_by = *guide_key;
  auto claim = [&](const std::string& field) -> std::optional<HttpError> {
    if (!set_by.empty()) {
      return Invalid(field, field + ": only one guide may be given, and " + set_by + " already is one");
    }
    set_by = field;
    return std::nullopt;
  };
  // A schema is a JSON object (or a string holding one, as vLLM takes).
  auto schema = [&](const JsonValue& f, const std::string& field) -> std::optional<HttpError> {
    if (auto e = claim(field)) return e;
    if (f.is_object() || f.is_bool()) {
      g->mutable_guide()->set_json_schema(f.Dump());
    } else if (f.is_string()) {
      g->mutable_guide()->set_json_schema(f.as_string());
    } else {
      return Invalid(field, field + ": must be a JSON Schema (an object, or a string holding one)");
    }
    return std::nullopt;
  };
  auto regex = [&](const JsonValue& f, const std::string& field) -> std::optional<HttpError> {
    if (auto e = claim(field)) return e;
    if (!f.is_string()) return Invalid(field, field + ": must be a string (a regular expression)");
    g->mutable_guide()->set_regex(f.as_string());
    return std::nullopt;
  };
  auto grammar = [&](const JsonValue& f, const std::string& field) -> std::optional<HttpError> {
    if (auto e = claim(field)) return e;
    if (!f.is_string()) return Invalid(field, field + ": must be a string (a GBNF grammar)");
    g->mutable_guide()->set_grammar(f.as_string());
    return std::nullopt;
  };
  auto choice = [&](const JsonValue& f, const std::string& field) -> std::optional<HttpError> {
    if (auto e = claim(field)) return e;
    if (!f.is_array()) return Invalid(field, field + ": must be an array of strings");
    v1::GuideChoices* out = g->mutable_guide()->mutable_choice();
    for (const JsonValue& c : f.as_array()) {
      if (!c.is_string()) return Invalid(field, field + ": must be an array of strings");
      out->add_choices(c.as_string());
    }
    return std::nullopt;
  };
  if (const JsonValue* f = root.Find("response_format"); f != nullptr && !f->is_null()) {
    const JsonValue* type = f->is_object() ? f->Find("type") : nullptr;
    const std::string t = type != nullptr && type->is_string() ? type->as_string() : std::string();
    if (t == "json_object") {
      if (auto e = claim("response_format")) return e;
      g->mutable_guide()->set_json_object(true);
    } else if (t == "json_schema") {
      const JsonValue* js = f->Find("json_schema");
      const JsonValue* sc = js != nullptr && js->is_object() ? js->Find("schema") : nullptr;
      if (sc == nullptr) {
        return Invalid("response_format",
                       "response_format.json_schema.schema: required for {\"type\": \"json_schema\"}");
      }
      if (auto e = schema(*sc, "response_format.json_schema.schema")) return e;
    } else if (t != "text") {
      return Invalid("response_format", "response_format: type must be \"text\", \"json_object\" or \"json_schema\"");
    }
  }
  if (const JsonValue* f = root.Find("guided_json"); !Neutral(f)) {
    if (auto e = schema(*f, "guided_json")) return e;
  }
  if (const JsonValue* f = root.Find("guided_regex"); !Neutral(f)) {
    if (auto e = regex(*f, "guided_regex")) return e;
  }
  if (const JsonValue* f = root.Find("guided_choice"); !Neutral(f)) {
    if (auto e = choice(*f, "guided_choice")) return e;
  }
  if (const JsonValue* f = root.Find("guided_grammar"); !Neutral(f)) {
    if (auto e = grammar(*f, "guided_grammar")) return e;
  }
  if (const JsonValue* f = root.Find("structured_outputs"); f != nullptr && !f->is_null()) {
    if (!f->is_object()) return Invalid("structured_outputs", "structured_outputs: must be an object");
    for (const auto& [key, v] : f->as_object()) {
      if (Neutral(&v)) continue;
      const std::string field = "structured_outputs." + key;
      if (key == "json") {
        if (auto e = schema(v, field)) return e;
      } else if (key == "regex") {
        if (auto e = regex(v, field)) return e;
      } else if (key == "choice") {
        if (auto e = choice(v, field)) return e;
      } else if (key == "grammar") {
        if (auto e = grammar(v, field)) return e;
      } else if (key == "json_object") {
        if (auto e = claim(field)) return e;
        if (!v.is_bool()) return Invalid(field, field + ": must be true or false");
        g->mutable_guide()->set_json_object(true);
      } else if (key == "disable_fallback" || key == "disable_any_whitespace" ||
                 key == "disable_additional_properties" || key == "whitespace_pattern" || key == "structural_tag") {
        return Invalid(field, field +
                                  ": not supported by this server (Seer guides by json, json_object, regex, choice "
                                  "or grammar)");
      } else {
        return Invalid(field, field + ": not a structured_outputs field Seer knows");
      }
    }
  }
  // vLLM's backend choice changes how, not what: taken and not used.
  if (const JsonValue* f = root.Find("guided_decoding_backend"); f != nullptr && !f->is_null() && !f->is_string()) {
    return Invalid("guided_decoding_backend", "guided_decoding_backend: must be a string");
  }
  return std::nullopt;
}

std::optional<HttpError> ParseCommon(const JsonValue& root, bool chat, int default_max_tokens, ParsedRequest* out) {
  v1::GenerateRequest& g = out->generate;
  // The number fields, typed; OpenAI's defaults when absent.
  auto number = [&](const char* key, double fallback, double* v) -> std::optional<HttpError> {
    const JsonValue* f = root.Find(key);
    if (f == nullptr || f->is_null()) {
      *v = fallback;
      return std::nullopt;
    }
    if (!f->is_number()) return Invalid(key, std::string(key) + ": must be a number, got " + f->Dump());
    *v = f->as_double();
    return std::nullopt;
  };
  const JsonValue* model = root.Find("model");
  if (model != nullptr && !model->is_null()) {
    if (!model->is_string()) return Invalid("model", "model: must be a string");
    out->model = model->as_string();
  }
  // Completions default to OpenAI's 16 tokens; a chat without a limit gets
  // the server's --default-max-new-tokens (0 on the wire). A chat's
  // max_completion_tokens, when set, wins over its older max_tokens.
  const JsonValue* completion_max = root.Find("max_completion_tokens");
  out->max_key =
      chat && completion_max != nullptr && !completion_max->is_null() ? "max_completion_tokens" : "max_tokens";
  const char* max_key = out->max_key.c_str();
  const JsonValue* max_field = root.Find(max_key);
  if (chat && (max_field == nullptr || max_field->is_null())) {
    g.set_max_new_tokens(0);
  } else {
    double max_tokens = default_max_tokens;
    if (auto e = number(max_key, default_max_tokens, &max_tokens)) return e;
    // 0 only with a completion's echo (checked below, once echo is read).
    if (!(max_tokens >= (chat ? 1 : 0)) || max_tokens != std::floor(max_tokens)) {
      return Invalid(max_key, std::string(max_key) + ": must be a positive integer, got " + max_field->Dump());
    }
    out->prompt_only = max_tokens == 0;
    if (out->prompt_only) max_tokens = 1;
    // The server's --max-new-tokens refuses what is too large, by name.
    if (max_tokens > INT32_MAX) {
      return Invalid(max_key, std::string(max_key) + ": " + max_field->Dump() + " is more than this server takes");
    }
    g.set_max_new_tokens(static_cast<int32_t>(max_tokens));
  }
  double temperature = 1.0, top_p = 1.0, n = 1.0;
  if (auto e = number("temperature", 1.0, &temperature)) return e;
  if (auto e = number("top_p", 1.0, &top_p)) return e;
  if (auto e = number("n", 1.0, &n)) return e;
  if (!(n >= 1 && n <= kMaxChoices) || n != std::floor(n)) {
    return Invalid("n", "n: " + root.Find("n")->Dump() + " is out of range: an integer from 1 to " +
                            std::to_string(kMaxChoices) + " (this server's limit)");
  }
  out->n = static_cast<int>(n);
  if (!(top_p >= 0.0 && top_p <= 1.0)) {
    return Invalid("top_p", "top_p: " + root.Find("top_p")->Dump() + " is out of range [0, 1]");
  }
  g.mutable_sampling()->set_temperature(ToFloat(temperature));
  // On the wire top_p 0 means 1 (no cut); OpenAI's top_p 0 keeps the most
  // likely token, as the smallest positive value does here.
  float wire_top_p = ToFloat(top_p);
  if (top_p >= 0.0 && top_p <= 1.0 && wire_top_p == 0.0f) wire_top_p = FLT_MIN;
  g.mutable_sampling()->set_top_p(wire_top_p);
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    double penalty = 0.0;
    if (auto e = number(key, 0.0, &penalty)) return e;
    if (!(penalty >= -kMaxPenalty && penalty <= kMaxPenalty)) {
      return Invalid(key, std::string(key) + ": " + root.Find(key)->Dump() + " is out of range [-2, 2]");
    }
    if (key[0] == 'p') {
      g.mutable_sampling()->set_presence_penalty(ToFloat(penalty));
    } else {
      g.mutable_sampling()->set_frequency_penalty(ToFloat(penalty));
    }
  }
  if (const JsonValue* bias = root.Find("logit_bias"); bias != nullptr && !bias->is_null()) {
    if (!bias->is_object()) return Invalid("logit_bias", "logit_bias: must be an object of token id to bias");
    if (bias->as_object().size() > static_cast<size_t>(kMaxLogitBias)) {
      return Invalid("logit_bias", "logit_bias: " + std::to_string(bias->as_object().size()) +
                                       " entries exceed the limit of " + std::to_string(kMaxLogitBias));
    }
    auto& map = *g.mutable_sampling()->mutable_logit_bias();
    for (const auto& [key, value] : bias->as_object()) {
      // OpenAI's keys are token ids written as decimal strings.
      const bool digits = !key.empty() && key.size() <= 10 &&
                          std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
      const int64_t id = digits ? std::stoll(key) : -1;
      if (!digits || id > INT32_MAX) {
        return Invalid("logit_bias", "logit_bias: key \"" + key.substr(0, 32) + "\" is not a token id");
      }
      if (!value.is_number() ||
          !(value.as_double() >= -kMaxLogitBiasValue && value.as_double() <= kMaxLogitBiasValue)) {
        return Invalid("logit_bias",
                       "logit_bias[" + key + "]: " + value.Dump().substr(0, 32) + " is not a number in [-100, 100]");
      }
      map[static_cast<int32_t>(id)] = ToFloat(value.as_double());
    }
  }
  // The reply is text, whatever form the prompt has.
  g.set_text_reply(true);
  if (const JsonValue* seed = root.Find("seed"); seed != nullptr && !seed->is_null()) {
    if (!seed->is_integer()) return Invalid("seed", "seed: must be an integer");
    g.mutable_sampling()->set_seed(static_cast<uint64_t>(seed->as_int64()));
  }
  if (const JsonValue* stop = root.Find("stop"); stop != nullptr && !stop->is_null()) {
    if (stop->is_string()) {
      g.add_stop(stop->as_string());
    } else if (stop->is_array() && static_cast<int>(stop->as_array().size()) <= kMaxStopStrings) {
      for (const JsonValue& s : stop->as_array()) {
        if (!s.is_string()) return Invalid("stop", "stop: must be a string or an array of strings");
        g.add_stop(s.as_string());
      }
    } else {
      return Invalid("stop",
                     "stop: must be a string or an array of at most " + std::to_string(kMaxStopStrings) + " strings");
    }
  }
  // vLLM's and SGLang's extensions that the wire carries: min_p (0: no cut),
  // repetition_penalty (1: none; vLLM refuses 0 and below), top_k (-1 or 0:
  // no cut) and stop_token_ids.
  double min_p = 0.0, repetition = 1.0;
  if (auto e = number("min_p", 0.0, &min_p)) return e;
  if (!(min_p >= 0.0 && min_p <= 1.0)) {
    return Invalid("min_p", "min_p: " + root.Find("min_p")->Dump().substr(0, 32) + " is out of range [0, 1]");
  }
  g.mutable_sampling()->set_min_p(ToFloat(min_p));
  if (auto e = number("repetition_penalty", 1.0, &repetition)) return e;
  if (!(repetition > 0.0 && repetition <= kMaxRepetitionPenalty) || ToFloat(repetition) == 0.0f) {
    return Invalid("repetition_penalty",
                   "repetition_penalty: " + root.Find("repetition_penalty")->Dump().substr(0, 32) +
                       " is out of range (0, " + std::to_string(int(kMaxRepetitionPenalty)) + "] (1 is none)");
  }
  g.mutable_sampling()->set_repetition_penalty(ToFloat(repetition));
  // A whole number in [lo, INT32_MAX] (40 and 40.0 alike, as vLLM's
  // pydantic takes them), or nullopt.
  auto whole = [](const JsonValue& v, double lo) -> std::optional<int32_t> {
    if (!v.is_number() || !(v.as_double() >= lo && v.as_double() <= INT32_MAX) ||
        v.as_double() != std::floor(v.as_double())) {
      return std::nullopt;
    }
    return static_cast<int32_t>(v.as_double());
  };
  if (const JsonValue* top_k = root.Find("top_k"); top_k != nullptr && !top_k->is_null()) {
    const std::optional<int32_t> k = whole(*top_k, -1);
    if (!k)
      return Invalid("top_k", "top_k: must be a whole number, -1 or 0 for no cut, got " + top_k->Dump().substr(0, 32));
    g.mutable_sampling()->set_top_k(std::max(*k, 0));
  }
  if (const JsonValue* ids = root.Find("stop_token_ids"); ids != nullptr && !ids->is_null()) {
    if (!ids->is_array() || static_cast<int>(ids->as_array().size()) > kMaxStopTokens) {
      return Invalid("stop_token_ids",
                     "stop_token_ids: must be an array of at most " + std::to_string(kMaxStopTokens) + " token ids");
    }
    for (size_t i = 0; i < ids->as_array().size(); ++i) {
      const std::optional<int32_t> id = whole(ids->as_array()[i], 0);
      if (!id) {
        const std::string where = "stop_token_ids[" + std::to_string(i) + "]";
        return Invalid(where, where + ": " + ids->as_array()[i].Dump().substr(0, 32) + " is not a token id");
      }
      g.add_stop_token_ids(*id);
    }
  }
  // vLLM's min_tokens (the reply's first tokens cannot end it) and
  // ignore_eos (a reply goes on past end-of-text), the benchmark clients'
  // way to fix a reply's length.
  if (const JsonValue* f = root.Find("min_tokens"); f != nullptr && !f->is_null()) {
    const std::optional<int32_t> m = whole(*f, 0);
    if (!m) return Invalid("min_tokens", "min_tokens: must be a whole number from 0, got " + f->Dump().substr(0, 32));
    const int32_t max_tokens = out->prompt_only ? 0 : g.max_new_tokens();
    if (g.max_new_tokens() > 0 && *m > max_tokens) {
      return Invalid("min_tokens", "min_tokens: " + std::to_string(*m) + " is above " + out->max_key + " " +
                                       std::to_string(max_tokens));
    }
    g.set_min_new_tokens(*m);
  }
  std::optional<bool> ignore_eos;
  if (auto e = OptionalBool(root, "ignore_eos", &ignore_eos)) return e;
  g.set_ignore_eos(ignore_eos.value_or(false));
  if (auto e = ParseLogprobs(root, chat, out)) return e;
  if (const JsonValue* echo = root.Find("echo"); echo != nullptr && !echo->is_null()) {
    if (!echo->is_bool()) return Invalid("echo", "echo: must be true or false");
    if (chat && echo->as_bool())
      return Invalid("echo", "echo: not supported by this server for chat (a completions field)");
    out->echo = echo->as_bool();
  }
  if (out->prompt_only && !out->echo) {
    return Invalid(max_key, std::string(max_key) +
                                ": must be a positive integer, got 0 (0 is taken with echo: the prompt alone, "
                                "scored)");
  }
  // What Seer cannot do is refused, not ignored: the client would get other
  // text than it asked for. Each field passes at its neutral value: null,
  // false and an empty list.
  auto given = [&](const char* key) { return !Neutral(root.Find(key)); };
  if (!chat && given("tools")) return Invalid("tools", "tools: a chat field (POST /v1/chat/completions)");
  for (const char* legacy : {"functions", "function_call"}) {
    if (given(legacy)) {
      return Invalid(legacy, std::string(legacy) + ": the legacy form is not supported; send tools and tool_choice");
    }
  }
  for (const char* refused : {"suffix", "use_beam_search", "guided_whitespace_pattern"}) {
    if (given(refused)) return Invalid(refused, std::string(refused) + ": not supported by this server");
  }
  // vLLM's allowed_token_ids: the only ids the reply may have (the server
  // checks them against the vocabulary and names the index).
  if (const JsonValue* f = root.Find("allowed_token_ids"); f != nullptr && !f->is_null()) {
    if (!f->is_array()) return Invalid("allowed_token_ids", "allowed_token_ids: must be an array of token ids");
    for (const JsonValue& id : f->as_array()) {
      if (!id.is_integer() || id.as_int64() < 0 || id.as_int64() > INT32_MAX) {
        return Invalid("allowed_token_ids", "allowed_token_ids: " + id.Dump().substr(0, 32) + " is not a token id");
      }
      g.mutable_sampling()->add_allowed_token_ids(static_cast<int32_t>(id.as_int64()));
    }
  }
  // vLLM's bad_words: words the reply never spells (the server checks the
  // count and sizes and names the field).
  if (const JsonValue* f = root.Find("bad_words"); f != nullptr && !f->is_null()) {
    if (!f->is_array()) return Invalid("bad_words", "bad_words: must be an array of strings");
    for (const JsonValue& w : f->as_array()) {
      if (!w.is_string()) return Invalid("bad_words", "bad_words: must be an array of strings");
      g.add_bad_words(w.as_string());
    }
  }
  // vLLM's text controls: the stop string (or stop token's text) kept at
  // the end of the text, and special tokens kept in it.
  std::optional<bool> include_stop, skip_special;
  if (auto e = OptionalBool(root, "include_stop_str_in_output", &include_stop)) return e;
  if (auto e = OptionalBool(root, "skip_special_tokens", &skip_special)) return e;
  g.set_include_stop_str_in_output(include_stop.value_or(false));
  if (skip_special) g.set_skip_special_tokens(*skip_special);
  out->skip_special_set = skip_special.has_value();
  if (auto e = ParseGuide(root, &g, &out->guide_key)) return e;
  if (const JsonValue* f = root.Find("tool_choice"); !chat && f != nullptr && !f->is_null()) {
    if (!f->is_string() || (f->as_string() != "none" && f->as_string() != "auto")) {
      return Invalid("tool_choice", "tool_choice: a chat field (POST /v1/chat/completions)");
    }
  }
  std::optional<bool> stream;
  if (auto e = OptionalBool(root, "stream", &stream)) return e;
  out->stream = stream.value_or(false);
  // best_of (a completion's): that many candidates, the n best returned.
  out->best_of = out->n;
  if (const JsonValue* best_of = root.Find("best_of"); best_of != nullptr && !best_of->is_null()) {
    const double b = best_of->is_number() ? best_of->as_double() : 0.0;
    if (!(b >= 1 && b <= kMaxChoices) || b != std::floor(b)) {
      return Invalid("best_of", "best_of: " + best_of->Dump().substr(0, 32) +
                                    " is out of range: an integer from 1 to " + std::to_string(kMaxChoices) +
                                    " (this server's limit)");
    }
    const int asked = static_cast<int>(b);
    // Not a chat field: there 1 asks for nothing.
    if (asked > 1 && chat) return Invalid("best_of", "best_of: not supported for chat (a completions field)");
    if (!chat && asked < out->n) {
      return Invalid("best_of", "best_of: " + std::to_string(asked) + " is less than n (" + std::to_string(out->n) +
                                    "): it counts the candidates the n are chosen from");
    }
    if (asked > out->n && out->stream) return Invalid("best_of", "best_of: cannot be streamed (above n)");
    if (!chat) out->best_of = asked;
  }
  if (const JsonValue* so = root.Find("stream_options"); so != nullptr && so->is_object()) {
    const JsonValue* usage = so->Find("include_usage");
    out->include_usage = usage != nullptr && usage->is_bool() && usage->as_bool();
  }
  if (const JsonValue* sp = root.Find("seer_sparsity"); sp != nullptr && !sp->is_null()) {
    if (!sp->is_string()) return Invalid("seer_sparsity", "seer_sparsity: must be a string");
    StatusOr<SparsityRequest> r = ParseSparsityRequest(sp->as_string());
    if (!r.ok()) return Invalid("seer_sparsity", "seer_sparsity: " + r.status().message());
    *g.mutable_sparsity() = SparsityToProto(*r);
  }
  if (const JsonValue* user = root.Find("user"); user != nullptr && user->is_string()) {
    // OpenAI's end-user id: a printable request id for the logs when it fits.
    std::string id = user->as_string().substr(0, kMaxRequestIdBytes);
    bool printable = true;
    for (unsigned char c : id) printable = printable && c >= 0x20 && c <= 0x7e;
    if (printable) g.set_request_id(id);
  }
  return std::nullopt;
}

// The most prompts a completion may batch, and how many of its calls run at
// a time.
constexpr size_t kMaxBatchPrompts = 64;
constexpr size_t kBatchCallsInFlight = 8;

std::optional<HttpError> ParseCompletion(const JsonValue& root, int default_max_tokens, ParsedRequest* out) {
  if (auto e = ParseCommon(root, false, default_max_tokens, out)) return e;
  const JsonValue* prompt = root.Find("prompt");
  if (prompt == nullptr || prompt->is_null()) return Invalid("prompt", "prompt: required");
  const std::string shapes = "prompt: must be a string, an array of token ids, or an array of up to " +
                             std::to_string(kMaxBatchPrompts) + " of either";
  // One prompt of ids, named for errors ("prompt" or "prompt[2]").
  auto ids_of = [&](const JsonValue& list, const std::string& name) -> std::optional<HttpError> {
    if (list.as_array().empty()) return Invalid(name, name + ": an empty prompt (a prompt needs a token)");
    ParsedRequest::Prompt one;
    for (const JsonValue& id : list.as_array()) {
      if (!id.is_integer() || id.as_int64() < 0 || id.as_int64() > INT32_MAX) {
        return Invalid(name, name + ": " + id.Dump().substr(0, 32) + " is not a token id");
      }
      one.ids.push_back(static_cast<int32_t>(id.as_int64()));
    }
    out->prompts.push_back(std::move(one));
    return std::nullopt;
  };
  if (prompt->is_string()) {
    out->prompts.push_back({prompt->as_string(), {}});
  } else if (!prompt->is_array() || prompt->as_array().empty()) {
    return Invalid("prompt", shapes);
  } else if (prompt->as_array()[0].is_integer()) {
    if (auto e = ids_of(*prompt, "prompt")) return e;
  } else {
    // A batch (as lm-evaluation-harness sends one): strings, or lists of ids.
    const auto& batch = prompt->as_array();
    if (batch.size() > kMaxBatchPrompts) {
      return Invalid("prompt", "prompt: a batch of " + std::to_string(batch.size()) + " prompts, more than the " +
                                   std::to_string(kMaxBatchPrompts) + " this server takes in one request");
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      const std::string name = "prompt[" + std::to_string(i) + "]";
      if (batch[i].is_string()) {
        out->prompts.push_back({batch[i].as_string(), {}});
      } else if (batch[i].is_array()) {
        if (auto e = ids_of(batch[i], name)) return e;
      } else {
        return Invalid(name, name + ": must be a string or an array of token ids");
      }
    }
  }
  return std::nullopt;
}

// Prompt p's call: the request's fields and its prompt. Echoing asks for
// the prompt's logprobs: their values when logprobs asks, and for a prompt
// of ids its tokens' texts in any case.
v1::GenerateRequest PromptCall(const ParsedRequest& req, size_t p) {
  v1::GenerateRequest g = req.generate;
  if (req.prompts.empty()) return g;  // a chat
  const ParsedRequest::Prompt& prompt = req.prompts[p];
  if (prompt.text) {
    g.set_text(*prompt.text);
    if (req.echo && req.logprobs) g.set_prompt_logprobs(g.logprobs());
  } else {
    g.mutable_token_ids()->Assign(prompt.ids.begin(), prompt.ids.end());
    if (req.echo) g.set_prompt_logprobs(req.logprobs ? g.logprobs() : 0);
  }
  return g;
}

// A chat's tools, tool_choice and parallel_tool_calls. "required" and a
// named function guide the reply to their calls' JSON, so they take no
// other guide.
std::optional<HttpError> ParseToolFields(const JsonValue& root, ParsedRequest* out) {
  if (const JsonValue* tools = root.Find("tools"); !Neutral(tools)) {
    std::string field;
    StatusOr<std::vector<ToolDefinition>> parsed = ParseTools(*tools, &field);
    if (!parsed.ok()) return Invalid(field, parsed.status().message());
    out->tools = *std::move(parsed);
    out->generate.set_tools(tools->Dump());
    if (out->generate.tools().size() > kMaxToolsBytes) {
      return Invalid("tools", "tools: " + std::to_string(out->generate.tools().size()) +
                                  " bytes of JSON exceed the limit of " + std::to_string(kMaxToolsBytes));
    }
  }
  StatusOr<ToolChoice> choice = ParseToolChoice(root.Find("tool_choice"), out->tools);
  if (!choice.ok()) {
    const std::string& m = choice.status().message();
    return Invalid(m.substr(0, m.find(':')), m);
  }
  out->tool_choice = *std::move(choice);
  std::optional<bool> parallel;
  if (auto e = OptionalBool(root, "parallel_tool_calls", &parallel)) return e;
  out->parallel_tool_calls = parallel.value_or(true);
  const ToolChoice::Kind kind = out->tool_choice.kind;
  if (kind != ToolChoice::Kind::kRequired && kind != ToolChoice::Kind::kFunction) return std::nullopt;
  if (!out->guide_key.empty()) {
    return Invalid("tool_choice", std::string("tool_choice: ") +
                                      (kind == ToolChoice::Kind::kRequired ? "\"required\"" : "a named function") +
                                      " guides the reply to its calls' JSON, so not with " + out->guide_key);
  }
  out->guide_key = "tools";
  if (kind == ToolChoice::Kind::kFunction) {
    for (size_t i = 0; i < out->tools.size(); ++i) {
      if (out->tools[i].name == out->tool_choice.name) {
        out->guide_key = "tools[" + std::to_string(i) + "].function.parameters";
      }
    }
  }
  // The guide is a schema like any other (at most kMaxGuideBytes, nesting
  // within JSON's limit), without the tools' descriptions and titles.
  std::string schema = ToolCallSchema(out->tools, out->tool_choice, out->parallel_tool_calls);
  const std::string what = std::string("the JSON Schema that tool_choice ") +
                           (kind == ToolChoice::Kind::kRequired ? "\"required\"" : "names") + " guides the reply by";
  if (schema.size() > kMaxGuideBytes) {
    return Invalid(out->guide_key, out->guide_key + ": " + what + " is " + std::to_string(schema.size()) +
                                       " bytes (descriptions, titles and examples left out), more than a guide's " +
                                       std::to_string(kMaxGuideBytes) + "; send fewer or smaller tools");
  }
  if (StatusOr<JsonValue> nested = JsonValue::Parse(schema); !nested.ok()) {
    return Invalid(out->guide_key, out->guide_key + ": " + what + " cannot be read: " + nested.status().message());
  }
  out->generate.mutable_guide()->set_json_schema(std::move(schema));
  return std::nullopt;
}

std::optional<HttpError> ParseChat(const JsonValue& root, int default_max_tokens, ParsedRequest* out) {
  if (auto e = ParseCommon(root, true, default_max_tokens, out)) return e;
  const JsonValue* messages = root.Find("messages");
  std::string field;
  StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(messages != nullptr ? *messages : JsonValue(), &field);
  if (!turns.ok()) return Invalid(field, std::string(turns.status().message()));
  AddChatMessages(std::move(*turns), &out->generate);
  // vLLM's chat controls; the server checks how they combine and names the
  // field.
  std::optional<bool> generation_prompt, continue_final;
  if (auto e = OptionalBool(root, "add_generation_prompt", &generation_prompt)) return e;
  if (auto e = OptionalBool(root, "continue_final_message", &continue_final)) return e;
  if (generation_prompt) out->generate.set_add_generation_prompt(*generation_prompt);
  out->generate.set_continue_final_message(continue_final.value_or(false));
  if (const JsonValue* f = root.Find("chat_template_kwargs"); f != nullptr && !f->is_null()) {
    if (!f->is_object()) return Invalid("chat_template_kwargs", "chat_template_kwargs: must be a JSON object");
    out->generate.set_chat_template_kwargs(f->Dump());
  }
  return ParseToolFields(root, out);
}

// The request's body as a JSON object, or the error to answer.
std::optional<HttpError> ReadJsonObject(mg_connection* conn, JsonValue* out) {
  StatusOr<std::string> body = ReadBody(conn);
  if (!body.ok()) {
    return HttpError{body.status().code() == StatusCode::kResourceExhausted ? 413 : 400, body.status().message()};
  }
  StatusOr<JsonValue> root = JsonValue::Parse(*body);
  if (!root.ok()) return Invalid("", "the body is not valid JSON: " + root.status().message());
  if (!root->is_object()) return Invalid("", "the body must be a JSON object");
  *out = std::move(root).value();
  return std::nullopt;
}

// A request for a model this server does not serve.
HttpError ModelNotFound(const std::string& asked, const std::string& served) {
  HttpError e{404, "The model `" + asked + "` does not exist; this server serves `" + served + "`"};
  e.param = "model";
  e.code = "model_not_found";
  return e;
}

// vLLM's /tokenize: a text prompt (with the special tokens unless
// add_special_tokens is false) or chat messages (rendered as Generate
// renders them; the template adds the special tokens), as ids, with each
// token's string when return_token_strs asks.
std::optional<HttpError> TokenizeJson(const JsonValue& root, const Tokenizer& tok, int max_model_len, JsonValue* out) {
  const JsonValue* prompt = root.Find("prompt");
  const JsonValue* messages = root.Find("messages");
  const bool has_prompt = prompt != nullptr && !prompt->is_null();
  const bool has_messages = messages != nullptr && !messages->is_null();
  if (has_prompt == has_messages) return Invalid("prompt", "prompt: give exactly one of prompt and messages");
  std::optional<bool> add_special, token_strs_asked;
  if (auto e = OptionalBool(root, "add_special_tokens", &add_special)) return e;
  if (auto e = OptionalBool(root, "return_token_strs", &token_strs_asked)) return e;
  const bool special = add_special.value_or(has_prompt), strs = token_strs_asked.value_or(false);
  StatusOr<std::vector<int32_t>> ids = std::vector<int32_t>{};
  if (has_prompt) {
    if (!prompt->is_string()) return Invalid("prompt", "prompt: must be a string");
    ids = tok.Encode(prompt->as_string(), special);
    if (!ids.ok()) return Invalid("prompt", "prompt: " + ids.status().message());
  } else {
    if (special) {
      return Invalid("add_special_tokens",
                     "add_special_tokens: only false with messages (the chat template adds them)");
    }
    std::string field;
    StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*messages, &field);
    if (!turns.ok()) return Invalid(field, std::string(turns.status().message()));
    std::optional<bool> generation_prompt, continue_final;
    if (auto e = OptionalBool(root, "add_generation_prompt", &generation_prompt)) return e;
    if (auto e = OptionalBool(root, "continue_final_message", &continue_final)) return e;
    ChatPromptOptions chat;
    chat.add_generation_prompt = generation_prompt.value_or(true);
    chat.continue_final_message = continue_final.value_or(false);
    if (const JsonValue* kw = root.Find("chat_template_kwargs"); kw != nullptr && !kw->is_null()) {
      chat.template_kwargs = *kw;
    }
    if (const JsonValue* tools = root.Find("tools"); !Neutral(tools)) {
      StatusOr<std::vector<ToolDefinition>> parsed = ParseTools(*tools, &field);
      if (!parsed.ok()) return Invalid(field, parsed.status().message());
      chat.tools = *tools;
    }
    ids = EncodeChatPrompt(tok, ChatTurnsJson(*turns), chat);
    if (!ids.ok()) {
      // Named as a chat completion's errors are: the field a message starts
      // with, else the messages.
      HttpError e = FromGrpc(ToGrpcStatus(ids.status()));
      InOpenAiTerms(/*chat=*/true, "max_tokens", &e);
      if (e.param.empty()) e.param = "messages";
      return e;
    }
  }
  JsonValue tokens = JsonValue::Array(), token_strs = JsonValue::Array();
  for (int32_t id : *ids) {
    tokens.Append(JsonValue::Int(id));
    if (strs) token_strs.Append(JsonValue::String(tok.IdToToken(id).value_or("")));
  }
  *out = JsonValue::Object();
  out->Set("count", JsonValue::Int(static_cast<int64_t>(ids->size())));
  out->Set("max_model_len", JsonValue::Int(max_model_len));
  out->Set("tokens", std::move(tokens));
  out->Set("token_strs", strs ? std::move(token_strs) : JsonValue());
  return std::nullopt;
}

// vLLM's /detokenize: the ids' text, special tokens included.
std::optional<HttpError> DetokenizeJson(const JsonValue& root, const Tokenizer& tok, JsonValue* out) {
  const JsonValue* tokens = root.Find("tokens");
  if (tokens == nullptr || !tokens->is_array()) return Invalid("tokens", "tokens: required, an array of token ids");
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens->as_array().size(); ++i) {
    const JsonValue& id = tokens->as_array()[i];
    if (!id.is_integer() || id.as_int64() < 0 || id.as_int64() >= tok.vocab_size()) {
      return Invalid("tokens", "tokens[" + std::to_string(i) + "]: " + id.Dump().substr(0, 32) +
                                   " is not a token id of this tokenizer (0 to " +
                                   std::to_string(tok.vocab_size() - 1) + ")");
    }
    ids.push_back(static_cast<int32_t>(id.as_int64()));
  }
  StatusOr<std::string> text = tok.Decode(ids, /*skip_special_tokens=*/false);
  if (!text.ok()) return Invalid("tokens", "tokens: " + text.status().message());
  *out = JsonValue::Object();
  out->Set("prompt", JsonValue::String(*text));
  return std::nullopt;
}

// A logprob as JSON, in the fewest digits that give the float back (-0.1,
// not -0.10000000149011612); -inf (a token the model gives probability 0)
// as -9999, as vLLM sends it, since JSON has no infinity.
JsonValue LogprobJson(float logprob) {
  if (!(logprob > -9999.0f)) return JsonValue::Number(-9999.0);
  char digits[32];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), logprob);
  return JsonValue::Number(ec == std::errc() ? std::strtod(std::string(digits, end).c_str(), nullptr) : logprob);
}

JsonValue Utf8Bytes(const std::string& text) {
  JsonValue bytes = JsonValue::Array();
  for (unsigned char c : text) bytes.Append(JsonValue::Int(c));
  return bytes;
}

// Code points, as OpenAI counts a text_offset.
int64_t CodePoints(const std::string& text) {
  int64_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

// A completion's name for a token in its logprobs: its text, or for a token
// that is part of a character (raw_bytes set) "bytes:" and its bytes as \xNN
// escapes, as OpenAI's legacy completions write them.
std::string CompletionToken(const v1::TokenLogprob& t) {
  if (t.raw_bytes().empty()) return t.text();
  std::string out = "bytes:";
  for (unsigned char c : t.raw_bytes()) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "\\x%02x", c);
    out += hex;
  }
  return out;
}

// The logprobs of a run of tokens, in the shape of a choice's "logprobs":
// a chat's {"content": [{token, logprob, bytes, top_logprobs}], "refusal"},
// or a completion's {tokens, token_logprobs, top_logprobs (a map from token
// to logprob, the chosen token's among them, as OpenAI's), text_offset}, its
// tokens named by CompletionToken.
// `offset` is the text offset of the first token (a completion's), advanced
// past the run.
JsonValue LogprobsJson(bool chat, const std::vector<v1::TokenLogprobs>& run, int64_t* offset) {
  JsonValue out = JsonValue::Object();
  if (chat) {
    JsonValue content = JsonValue::Array();
    auto entry = [](const v1::TokenLogprob& t) {
      JsonValue e = JsonValue::Object();
      e.Set("token", JsonValue::String(t.text()));
      e.Set("logprob", LogprobJson(t.logprob()));
      // The token's own bytes (part of a character: not its text's U+FFFD).
      e.Set("bytes", Utf8Bytes(t.raw_bytes().empty() ? t.text() : t.raw_bytes()));
      return e;
    };
    for (const v1::TokenLogprobs& lp : run) {
      JsonValue e = entry(lp.chosen());
      JsonValue top = JsonValue::Array();
      for (const v1::TokenLogprob& t : lp.top()) top.Append(entry(t));
      e.Set("top_logprobs", std::move(top));
      content.Append(std::move(e));
    }
    out.Set("content", std::move(content));
    out.Set("refusal", JsonValue());
    return out;
  }
  JsonValue tokens = JsonValue::Array(), token_logprobs = JsonValue::Array(), top_logprobs = JsonValue::Array(),
            text_offset = JsonValue::Array();
  for (const v1::TokenLogprobs& lp : run) {
    tokens.Append(JsonValue::String(CompletionToken(lp.chosen())));
    text_offset.Append(JsonValue::Int(*offset));
    *offset += CodePoints(lp.chosen().text());
    if (std::isnan(lp.chosen().logprob())) {  // an echoed prompt's first token: nothing before it
      token_logprobs.Append(JsonValue());
      top_logprobs.Append(JsonValue());
      continue;
    }
    token_logprobs.Append(LogprobJson(lp.chosen().logprob()));
    JsonValue top = JsonValue::Object();
    for (const v1::TokenLogprob& t : lp.top()) {
      const std::string key = CompletionToken(t);
      if (top.Find(key) == nullptr) top.Set(key, LogprobJson(t.logprob()));
    }
    // Two tokens may share a text (as " a" may be one token or two): the
    // more likely one's logprob stays.
    const std::string chosen = CompletionToken(lp.chosen());
    if (top.Find(chosen) == nullptr) top.Set(chosen, LogprobJson(lp.chosen().logprob()));
    top_logprobs.Append(std::move(top));
  }
  out.Set("tokens", std::move(tokens));
  out.Set("token_logprobs", std::move(token_logprobs));
  out.Set("top_logprobs", std::move(top_logprobs));
  out.Set("text_offset", std::move(text_offset));
  return out;
}

// A reply's tool calls as OpenAI writes them: whole ({id, type, function:
// {name, arguments}}), or in a stream's chunks, where each part has its
// call's index and a call's first part alone carries its id, type and name.
JsonValue ToolCallsJson(const std::vector<ToolCallReader::CallDelta>& calls, bool stream) {
  JsonValue out = JsonValue::Array();
  for (const ToolCallReader::CallDelta& d : calls) {
    JsonValue call = JsonValue::Object();
    if (stream) call.Set("index", JsonValue::Int(d.index));
    JsonValue fn = JsonValue::Object();
    if (!d.id.empty() || !stream) {
      call.Set("id", JsonValue::String(d.id));
      call.Set("type", JsonValue::String("function"));
      fn.Set("name", JsonValue::String(d.name));
    }
    fn.Set("arguments", JsonValue::String(d.arguments));
    call.Set("function", std::move(fn));
    out.Append(std::move(call));
  }
  return out;
}

class GrpcGenerateBackend final : public GenerateBackend {
 public:
  explicit GrpcGenerateBackend(std::shared_ptr<grpc::Channel> channel) : stub_(v1::DecodeService::NewStub(channel)) {}

  grpc::Status Generate(const v1::GenerateRequest& request, const std::string& client,
                        const std::function<bool(const v1::GenerateResponse&)>& on_response) override {
    grpc::ClientContext context;
    if (!client.empty()) context.AddMetadata(kHttpClientMetadata, HttpClientMetadataValue(client));
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (!on_response(response)) {
        context.TryCancel();
        while (reader->Read(&response)) {}
        break;
      }
    }
    return reader->Finish();
  }

 private:
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

}  // namespace

std::unique_ptr<GenerateBackend> MakeGrpcGenerateBackend(std::shared_ptr<grpc::Channel> channel) {
  return std::make_unique<GrpcGenerateBackend>(std::move(channel));
}

std::string OpenAiHttpServer::ClientAddress(const mg_request_info* info) const {
  if (tls_front_ != nullptr) {
    std::string client = tls_front_->ClientBehind(info->remote_port);
    if (!client.empty()) return client;
  }
  return PeerName(info->remote_addr, info->remote_port);
}

StatusOr<std::optional<ToolCallFormat>> OpenAiHttpServer::ToolFormat() const {
  const std::string& parser = options_.tool_call_parser;
  if (parser == "none") return std::optional<ToolCallFormat>();
  if (parser != "auto") {
    SEER_ASSIGN_OR_RETURN(ToolCallFormat f, ToolCallFormatNamed(parser));
    return std::optional<ToolCallFormat>(f);
  }
  if (!options_.tokenizer) return std::optional<ToolCallFormat>();
  StatusOr<const Tokenizer*> tok = options_.tokenizer();
  if (!tok.ok()) {
    if (tok.status().code() == StatusCode::kUnavailable) return tok.status();
    return std::optional<ToolCallFormat>();  // no tokenizer: no chat either
  }
  return DetectToolCallFormat((*tok)->config().chat_template);
}

StatusOr<std::unique_ptr<OpenAiHttpServer>> OpenAiHttpServer::Start(const OpenAiHttpOptions& options,
                                                                    GenerateBackend* backend) {
  std::unique_ptr<OpenAiHttpServer> server(new OpenAiHttpServer(options, backend));
  std::string ports = options.tls.enabled() ? "127.0.0.1:0" : options.listen;
  if (ports.rfind("0.0.0.0:", 0) == 0) ports = ports.substr(8);  // civetweb: a bare port binds every address
  const std::string threads = std::to_string(options.threads);
  // An idle keep-alive connection stays open longer than the official
  // clients keep one (httpx, the Python client's, 5 s; undici, the Node
  // one's, 4 s), so a client never reuses a connection this server is
  // closing.
  const char* opts[] = {"listening_ports",
                        ports.c_str(),
                        "num_threads",
                        threads.c_str(),
                        "request_timeout_ms",
                        "600000",
                        "enable_keep_alive",
                        "yes",
                        "keep_alive_timeout_ms",
                        "15000",
                        nullptr};
  mg_callbacks callbacks{};
  // civetweb's own errors (a malformed request, a failed write) go to stderr.
  callbacks.log_message = [](const mg_connection*, const char* message) {
    JsonValue f = JsonValue::Object();
    f.Set("error", JsonValue::String(message));
    LogEvent(LogLevel::kWarn, "http", f);
    return 1;
  };
  server->ctx_ = mg_start(&callbacks, server.get(), opts);
  if (server->ctx_ == nullptr) {
    return Unavailable("--http " + options.listen + ": cannot listen (address in use or invalid)");
  }
  if (options.registry != nullptr) {
    server->requests_ = &prometheus::BuildCounter()
                             .Name("seer_http_requests_total")
                             .Help(
                                 "OpenAI API (--http) answers by endpoint and HTTP status, the HTTP layer's own "
                                 "refusals included")
                             .Register(*options.registry);
  }
  mg_set_request_handler(server->ctx_, "/v1", &OpenAiHttpServer::Handle, server.get());
  if (options.tokenizer) {
    // vLLM serves these at the root.
    mg_set_request_handler(server->ctx_, "/tokenize$", &OpenAiHttpServer::Handle, server.get());
    mg_set_request_handler(server->ctx_, "/detokenize$", &OpenAiHttpServer::Handle, server.get());
  }
  mg_server_port bound[4] = {};
  const int n = mg_get_server_ports(server->ctx_, 4, bound);
  if (n < 1) return Internal("--http " + options.listen + ": no bound port");
  server->port_ = bound[0].port;
  server->port_civetweb_ = bound[0].port;
  if (options.tls.enabled()) {
    TlsFrontOptions front;
    front.listen = options.listen;
    front.flag = "--http";
    front.backend_port = server->port_;
    front.tls = options.tls;
    SEER_ASSIGN_OR_RETURN(server->tls_front_, TlsFront::Start(front));
    server->port_ = server->tls_front_->port();
  }
  return server;
}

OpenAiHttpServer::~OpenAiHttpServer() {
  tls_front_.reset();  // it relays to civetweb
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int OpenAiHttpServer::Handle(mg_connection* conn, void* self) {
  static_cast<OpenAiHttpServer*>(self)->Serve(conn);
  return 1;
}

bool OpenAiHttpServer::Drain(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  return idle_.wait_until(lock, deadline, [this] { return active_ == 0; });
}

void OpenAiHttpServer::Serve(mg_connection* conn) {
  t_http_status = 0;
  bool draining = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining = draining_;
    if (!draining) ++active_;
  }
  if (draining) {
    HttpError e{503, "seer-decode is shutting down; retry on another replica"};
    e.type = "server_error";
    e.code = "service_unavailable";
    SendError(conn, e);
  } else {
    Respond(conn);
  }
  if (requests_ != nullptr && t_http_status != 0) {
    // The endpoint as a fixed label set: unknown paths are "other".
    const mg_request_info* info = mg_get_request_info(conn);
    std::string path = info->local_uri != nullptr ? info->local_uri : "";
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    const char* endpoint = path == "/v1/completions"        ? "completions"
                           : path == "/v1/chat/completions" ? "chat_completions"
                           : path == "/v1/models"           ? "models"
                           : path == "/tokenize"            ? "tokenize"
                           : path == "/detokenize"          ? "detokenize"
                                                            : "other";
    requests_->Add({{"endpoint", endpoint}, {"code", std::to_string(t_http_status)}}).Increment();
  }
  if (draining) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (--active_ == 0) idle_.notify_all();
}

void OpenAiHttpServer::Respond(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string method = info->request_method != nullptr ? info->request_method : "";
  std::string path = info->local_uri != nullptr ? info->local_uri : "";
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const int64_t created = static_cast<int64_t>(std::time(nullptr));

  if (path == "/v1/models") {
    if (method != "GET") return SendError(conn, HttpError{405, "use GET /v1/models"});
    JsonValue model = JsonValue::Object();
    model.Set("id", JsonValue::String(options_.model_name));
    model.Set("object", JsonValue::String("model"));
    model.Set("created", JsonValue::Int(created));
    model.Set("owned_by", JsonValue::String("seer"));
    JsonValue data = JsonValue::Array();
    data.Append(std::move(model));
    JsonValue out = JsonValue::Object();
    out.Set("object", JsonValue::String("list"));
    out.Set("data", std::move(data));
    return SendJson(conn, 200, out.Dump());
  }
  if ((path == "/tokenize" || path == "/detokenize") && options_.tokenizer) {
    if (method != "POST") return SendError(conn, HttpError{405, "use POST " + path});
    JsonValue root;
    if (auto e = ReadJsonObject(conn, &root)) return SendError(conn, *e);
    if (const JsonValue* model = root.Find("model");
        model != nullptr && model->is_string() && model->as_string() != options_.model_name) {
      return SendError(conn, ModelNotFound(model->as_string(), options_.model_name));
    }
    StatusOr<const Tokenizer*> tok = options_.tokenizer();
    if (!tok.ok()) {
      HttpError e{tok.status().code() == StatusCode::kUnavailable ? 503 : 400, tok.status().message()};
      if (e.http == 503) e.type = "server_error";
      return SendError(conn, e);
    }
    JsonValue out;
    std::optional<HttpError> bad = path == "/tokenize" ? TokenizeJson(root, **tok, options_.max_model_len, &out)
                                                       : DetokenizeJson(root, **tok, &out);
    if (bad) return SendError(conn, *bad);
    return SendJson(conn, 200, out.Dump());
  }
  const bool chat = path == "/v1/chat/completions";
  if (!chat && path != "/v1/completions") {
    HttpError e{404, "no such endpoint: " + method + " " + path};
    e.code = "not_found";
    return SendError(conn, e);
  }
  if (method != "POST") return SendError(conn, HttpError{405, "use POST " + path});

  JsonValue root;
  if (auto e = ReadJsonObject(conn, &root)) return SendError(conn, *e);
  ParsedRequest req;
  std::optional<HttpError> bad = chat ? ParseChat(root, options_.default_max_tokens, &req)
                                      : ParseCompletion(root, options_.default_max_tokens, &req);
  if (bad) return SendError(conn, *bad);
  // A call per prompt: a chat's one, or each of a completion's batch.
  std::vector<v1::GenerateRequest> calls;
  for (size_t p = 0; p < std::max<size_t>(req.prompts.size(), 1); ++p) {
    calls.push_back(PromptCall(req, p));
    if (req.best_of > 1) calls.back().set_n(req.best_of);
    if (const size_t bytes = calls.back().ByteSizeLong();
        options_.max_request_bytes > 0 && bytes > options_.max_request_bytes) {
      const std::string field = chat                     ? "messages"
                                : req.prompts.size() > 1 ? "prompt[" + std::to_string(p) + "]"
                                                         : "prompt";
      HttpError e = Invalid(field, field + ": " + std::to_string(bytes) +
                                       " bytes of request, more than the longest prompt this model takes can be (" +
                                       std::to_string(options_.max_request_bytes) + ")");
      e.code = "context_length_exceeded";
      return SendError(conn, e);
    }
  }
  if (!req.model.empty() && req.model != options_.model_name) {
    return SendError(conn, ModelNotFound(req.model, options_.model_name));
  }
  // "auto" reads the reply's calls in the model's format; every call is
  // named as the model's template takes ids (Mistral's: 9 characters).
  // A guided call needs no format (a loading model fails its call anyway).
  std::optional<ToolCallFormat> tool_format;
  StatusOr<std::optional<ToolCallFormat>> found = std::optional<ToolCallFormat>();
  if (req.tool_choice.kind != ToolChoice::Kind::kNone) found = ToolFormat();
  if (found.ok()) tool_format = *found;
  if (req.tool_choice.kind == ToolChoice::Kind::kAuto) {
    if (!found.ok()) {
      HttpError e{503, found.status().message()};
      e.type = "server_error";
      return SendError(conn, e);
    }
    if (!tool_format) {
      return SendError(
          conn, Invalid("tool_choice",
                        "tool_choice: \"auto\" (the default with tools) reads the calls in the format the model "
                        "writes them, and this server knows none for its model (seer-decode --tool-call-parser " +
                            options_.tool_call_parser +
                            "; llama3_json, hermes and mistral are read); send tool_choice \"required\", a named "
                            "function or \"none\""));
    }
    // Mistral's calls begin with a special token, and some Hermes
    // checkpoints make <tool_call> one: the text keeps them (as vLLM's
    // parsers ask).
    if (*tool_format != ToolCallFormat::kLlama3Json && !req.skip_special_set) {
      for (v1::GenerateRequest& g : calls) g.set_skip_special_tokens(false);
    }
  }

  const std::string id = std::string(chat ? "chatcmpl-" : "cmpl-") + std::to_string(g_next_id.fetch_add(1));
  const char* object = chat ? (req.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
  auto envelope = [&]() {
    JsonValue o = JsonValue::Object();
    o.Set("id", JsonValue::String(id));
    o.Set("object", JsonValue::String(object));
    o.Set("created", JsonValue::Int(created));
    o.Set("model", JsonValue::String(options_.model_name));
    return o;
  };

  // Each prompt's n choices are one Generate call (GenerateRequest.n: one
  // prefill, the choices decoded side by side, choice i with seed + i); its
  // messages name their choice. A batch's calls run side by side, one thread
  // each, their messages handled one at a time. A streamed choice writes its
  // chunks as they come.
  struct Choice {
    int index = 0;
    size_t prompt = 0;  // the call it belongs to
    // The logprobs of the tokens not yet sent (when asked for), which the
    // next chunk takes.
    std::vector<v1::TokenLogprobs> unsent_logprobs;
    int64_t text_offset = 0;
    // echo: the prompt's tokens (texts, and logprobs when asked), until the
    // reply starts with them at the first token.
    std::vector<v1::TokenLogprobs> prompt_tokens;
    bool echo_pending = false;
    bool started = false;  // a streamed chat choice's first chunk (the role) is out
    std::string text;  // the whole reply, when not streamed
    // A chat with tools: the reply read as content and calls.
    std::optional<ToolCallReader> tools;
    v1::GenerateSummary summary;
    double logprob_sum = 0.0;  // best_of: its tokens' logprobs, summed
    int logprob_tokens = 0;
  };
  // Candidates are ranked by their tokens' logprobs: asked of the server
  // even when the reply does not show them.
  const bool ranked = req.best_of > req.n;
  if (ranked) {
    for (v1::GenerateRequest& g : calls)
      if (!g.has_logprobs()) g.set_logprobs(0);
  }
  const size_t per_call = static_cast<size_t>(req.best_of);
  std::vector<Choice> choices(calls.size() * per_call);
  for (size_t p = 0; p < calls.size(); ++p) {
    for (size_t i = 0; i < per_call; ++i) {
      Choice& c = choices[p * per_call + i];
      c.index = static_cast<int>(p * static_cast<size_t>(req.n) + i);  // best_of > n is renumbered at the end
      c.prompt = p;
      c.echo_pending = req.echo;
      if (req.tool_choice.kind != ToolChoice::Kind::kNone) {
        c.tools.emplace(req.tool_choice, tool_format, req.tools, req.parallel_tool_calls);
      }
    }
  }
  // The echoed prompt: the text as given, or a prompt of ids as its tokens' texts.
  auto take_echo = [&](Choice& c) {
    c.echo_pending = false;
    std::string echoed;
    if (!req.prompts.empty() && req.prompts[c.prompt].text) {
      echoed = *req.prompts[c.prompt].text;
    } else {
      for (const v1::TokenLogprobs& t : c.prompt_tokens) echoed += t.chosen().text();
    }
    if (req.logprobs)
      c.unsent_logprobs.insert(c.unsent_logprobs.begin(), c.prompt_tokens.begin(), c.prompt_tokens.end());
    c.prompt_tokens.clear();
    return echoed;
  };
  // One choice of a chunk (stream) or of the whole answer, with the logprobs
  // of the tokens not yet sent (when asked for), which it takes.
  // A reply that ends with its calls ends for them, unless it was cut short.
  auto FinishReason = [](const Choice& c) {
    const std::string& reason = c.summary.finish_reason();
    return c.tools && c.tools->ends_with_calls() && reason == "stop" ? std::string("tool_calls") : reason;
  };
  // A chat's tool calls: a reply's whole, or a chunk's parts of them.
  auto choice_json = [&](Choice& ch, const std::string& text, const std::string& finish, bool first,
                         const std::vector<ToolCallReader::CallDelta>& calls = {}) {
    JsonValue c = JsonValue::Object();
    c.Set("index", JsonValue::Int(ch.index));
    if (chat) {
      JsonValue m = JsonValue::Object();
      if (!req.stream || first) m.Set("role", JsonValue::String("assistant"));
      if (!req.stream && text.empty() && !calls.empty()) {
        m.Set("content", JsonValue());  // only calls, as OpenAI's
      } else if (!req.stream || !text.empty() || first) {
        m.Set("content", JsonValue::String(text));
      }
      if (!calls.empty()) m.Set("tool_calls", ToolCallsJson(calls, req.stream));
      c.Set(req.stream ? "delta" : "message", std::move(m));
    } else {
      c.Set("text", JsonValue::String(text));
    }
    if (req.logprobs && !first) {
      c.Set("logprobs", LogprobsJson(chat, ch.unsent_logprobs, &ch.text_offset));
      ch.unsent_logprobs.clear();
    } else {
      c.Set("logprobs", JsonValue());
    }
    c.Set("finish_reason", finish.empty() ? JsonValue() : JsonValue::String(finish));
    return c;
  };

  bool headers_sent = false;
  bool client_gone = false;
  std::optional<int> bad_choice;  // a message of a choice not asked for
  // A client that leaves is noticed at its next token, streaming or not, and
  // its call cancelled (a non-streaming one writes nothing until the end).
  const int client_fd = ClientSocket(info, port_civetweb_);
  // Streams: the headers once, and a chat choice's first chunk (its role)
  // before its first text.
  auto start_stream = [&](Choice& c) {
    if (!headers_sent) {
      headers_sent = true;
      mg_printf(conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    }
    if (chat && !c.started) {
      c.started = true;
      JsonValue first = envelope();
      JsonValue list = JsonValue::Array();
      list.Append(choice_json(c, "", "", true));
      first.Set("choices", std::move(list));
      if (!SendEvent(conn, first.Dump())) client_gone = true;
    }
  };
  // A chunk of one choice.
  auto send_chunk = [&](Choice& c, const std::string& text, const std::string& finish,
                        const std::vector<ToolCallReader::CallDelta>& calls = {}) {
    start_stream(c);
    if (client_gone) return;
    JsonValue chunk = envelope();
    JsonValue list = JsonValue::Array();
    list.Append(choice_json(c, text, finish, false, calls));
    chunk.Set("choices", std::move(list));
    if (!SendEvent(conn, chunk.Dump())) client_gone = true;
  };
  const std::string client = ClientAddress(info);
  // One message of call p; false ends the call. Callers hold `mu`.
  std::mutex mu;
  bool failed = false;  // a call failed: the others are cut short
  auto on_message = [&](size_t p, const v1::GenerateResponse& r) {
    if (ClientClosed(client_fd)) client_gone = true;
    if (client_gone || failed) return false;
    Choice* const group = &choices[p * per_call];
    if (r.has_prompt_logprobs()) {
      // Once, for every choice of the prompt.
      for (size_t i = 0; i < per_call; ++i) {
        group[i].prompt_tokens.insert(group[i].prompt_tokens.end(), r.prompt_logprobs().tokens().begin(),
                                      r.prompt_logprobs().tokens().end());
      }
      return true;
    }
    if (r.choice() < 0 || r.choice() >= req.best_of) {
      // Not a choice asked for: the call is cut, and the answer is the server's fault.
      bad_choice = r.choice();
      return false;
    }
    Choice& c = group[r.choice()];
    // The summary may carry text too: what the server held back at the end.
    if (r.has_summary()) c.summary = r.summary();
    if (r.has_logprobs() && !req.prompt_only) {
      if (req.logprobs) c.unsent_logprobs.push_back(r.logprobs());
      c.logprob_sum += r.logprobs().chosen().logprob();
      ++c.logprob_tokens;
    }
    if (c.echo_pending) {
      // The first token (or the end): the reply starts with the prompt,
      // whose logprobs go before this token's.
      std::optional<v1::TokenLogprobs> current;
      if (r.has_logprobs() && !req.prompt_only && req.logprobs) {
        current = c.unsent_logprobs.back();
        c.unsent_logprobs.pop_back();
      }
      const std::string echoed = take_echo(c);
      if (req.stream) {
        send_chunk(c, echoed, "");
      } else {
        c.text += echoed;
      }
      if (current) c.unsent_logprobs.push_back(*current);
      if (client_gone) return false;
    }
    if (!req.stream) {
      if (c.tools) {
        c.tools->Feed(r.text());
        if (r.has_summary()) c.tools->Finish();
      } else if (!req.prompt_only) {
        c.text += r.text();  // the token the wire made is not shown
      }
      return true;
    }
    if (c.tools) {
      // Text that may be a call waits until it is clear; the end says.
      ToolCallReader::Delta d = c.tools->Feed(r.text());
      if (!d.empty()) {
        send_chunk(c, d.content, "", d.calls);
      } else {
        start_stream(c);
      }
      if (r.has_summary()) {
        d = c.tools->Finish();
        send_chunk(c, d.content, FinishReason(c), d.calls);
      }
      return !client_gone;
    }
    if (!req.prompt_only) {
      if (!r.text().empty()) {
        send_chunk(c, r.text(), "");
      } else {
        start_stream(c);
      }
    }
    // A prompt-only reply stops at its length, 0 tokens (as vLLM's does).
    if (r.has_summary()) send_chunk(c, "", req.prompt_only ? "length" : c.summary.finish_reason());
    return !client_gone;
  };
  std::vector<grpc::Status> statuses(calls.size());
  auto run_call = [&](size_t p) {
    {
      // A batch's later prompts are not begun once a call failed or the
      // client left.
      std::lock_guard<std::mutex> lock(mu);
      if (failed || client_gone) {
        statuses[p] = grpc::Status(grpc::StatusCode::CANCELLED, "not begun: another prompt's call ended the request");
        return;
      }
    }
    statuses[p] = backend_->Generate(calls[p], client, [&, p](const v1::GenerateResponse& r) {
      std::lock_guard<std::mutex> lock(mu);
      return on_message(p, r);
    });
    std::lock_guard<std::mutex> lock(mu);
    if (!statuses[p].ok()) failed = true;
  };
  if (calls.size() == 1) {
    run_call(0);
  } else {
    // At most kBatchCallsInFlight calls at a time, in prompt order: a large
    // batch does not fill the server's queue (--max-queue) by itself, where
    // its last calls would be refused.
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    for (size_t w = 0; w < std::min(calls.size(), kBatchCallsInFlight); ++w) {
      workers.emplace_back([&] {
        for (size_t p = next++; p < calls.size(); p = next++) run_call(p);
      });
    }
    for (std::thread& t : workers) t.join();
  }
  // The first failure in prompt order; a call cut short because another
  // failed is not it.
  grpc::Status status;
  size_t failed_prompt = 0;
  for (size_t p = 0; p < statuses.size() && status.ok(); ++p) {
    if (!statuses[p].ok() && statuses[p].error_code() != grpc::StatusCode::CANCELLED) {
      status = statuses[p];
      failed_prompt = p;
    }
  }
  for (size_t p = 0; p < statuses.size() && status.ok(); ++p) {
    if (!statuses[p].ok()) {
      status = statuses[p];
      failed_prompt = p;
    }
  }

  if (headers_sent) t_http_status = 200;
  if (client_gone) {
    if (!headers_sent) t_http_status = 499;  // nginx's "client closed request": nothing was answered
    return;
  }
  if (!status.ok() || bad_choice) {
    HttpError e = bad_choice ? FromGrpc(grpc::Status(grpc::StatusCode::INTERNAL,
                                                     "seer-decode: a message of choice " + std::to_string(*bad_choice) +
                                                         " for n = " + std::to_string(req.best_of)))
                             : FromGrpc(status);
    InOpenAiTerms(chat, req.max_key, &e, req.prompts.size() > 1 ? static_cast<int>(failed_prompt) : -1, req.guide_key);
    if (!headers_sent) return SendError(conn, e);
    SendEvent(conn, ErrorJson(e));
    SendEvent(conn, "[DONE]");
    mg_send_chunk(conn, "", 0);
    return;
  }
  // Usage: each prompt once, the completion tokens of every choice (every
  // candidate of best_of, as OpenAI counts them).
  // The prompt tokens the prefill server took from its prefix store are
  // OpenAI's prompt_tokens_details.cached_tokens.
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  for (size_t p = 0; p < calls.size(); ++p) {
    prompt_tokens += choices[p * per_call].summary.prompt_tokens();
    cached_tokens += choices[p * per_call].summary.cached_tokens();
  }
  for (const Choice& c : choices) completion_tokens += req.prompt_only ? 0 : c.summary.generated_tokens();
  JsonValue usage = JsonValue::Object();
  usage.Set("prompt_tokens", JsonValue::Int(prompt_tokens));
  usage.Set("completion_tokens", JsonValue::Int(completion_tokens));
  usage.Set("total_tokens", JsonValue::Int(prompt_tokens + completion_tokens));
  JsonValue details = JsonValue::Object();
  details.Set("cached_tokens", JsonValue::Int(cached_tokens));
  usage.Set("prompt_tokens_details", std::move(details));
  if (!req.stream) {
    JsonValue out = envelope();
    // best_of: each prompt's n candidates with the highest logprob per
    // token (OpenAI's rule; the earlier candidate among equals), renumbered
    // p * n to p * n + n - 1.
    std::vector<Choice*> shown;
    for (size_t p = 0; p < calls.size(); ++p) {
      std::vector<Choice*> group;
      for (size_t i = 0; i < per_call; ++i) group.push_back(&choices[p * per_call + i]);
      if (ranked) {
        auto per_token = [](const Choice* c) {
          return c->logprob_tokens > 0 ? c->logprob_sum / c->logprob_tokens : 0.0;
        };
        std::stable_sort(group.begin(), group.end(),
                         [&](const Choice* a, const Choice* b) { return per_token(a) > per_token(b); });
        group.resize(static_cast<size_t>(req.n));
        for (int i = 0; i < req.n; ++i) group[static_cast<size_t>(i)]->index = static_cast<int>(p) * req.n + i;
      }
      shown.insert(shown.end(), group.begin(), group.end());
    }
    JsonValue list = JsonValue::Array();
    for (Choice* c : shown) {
      if (c->tools) {
        std::vector<ToolCallReader::CallDelta> whole;
        for (const ToolCall& call : c->tools->calls()) {
          whole.push_back({static_cast<int>(whole.size()), call.id, call.name, call.arguments});
        }
        list.Append(choice_json(*c, c->tools->content(), FinishReason(*c), false, whole));
        continue;
      }
      list.Append(choice_json(*c, c->text, req.prompt_only ? "length" : c->summary.finish_reason(), false));
    }
    out.Set("choices", std::move(list));
    out.Set("usage", std::move(usage));
    return SendJson(conn, 200, out.Dump());
  }
  if (req.include_usage) {
    JsonValue last = envelope();
    last.Set("choices", JsonValue::Array());
    last.Set("usage", std::move(usage));
    SendEvent(conn, last.Dump());
  }
  SendEvent(conn, "[DONE]");
  mg_send_chunk(conn, "", 0);
}

}  // namespace seer
