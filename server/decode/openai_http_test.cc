// The OpenAI front door over a scripted Generate backend: each request's
// fields land in the GenerateRequest they mean; responses, streamed events
// and errors have OpenAI's shapes and HTTP codes. (tests/ops/check_openai.mjs
// drives the real servers with the official openai client.)
#include "server/decode/openai_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cfloat>
#include <chrono>
#include <climits>
#include <future>
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "base/json.h"
#include "text/prompt.h"

namespace seer {
namespace {

// Replies with `texts` as token events (token ids 100, 101, ...) then a
// summary, for each of the request's n choices (their tokens interleaved,
// a step of every choice at a time), or with `error` before anything.
class ScriptedBackend final : public GenerateBackend {
 public:
  std::vector<std::string> texts = {"Hel", "lo", "", ", world"};
  std::string finish = "length";
  std::string rest;  // text the summary message carries (held back to the end)
  grpc::Status error = grpc::Status::OK;
  int fail_after = -1;  // >= 0: the call fails (INVALID_ARGUMENT) after this many token messages
  bool seed_in_text = false;
  // A reply's first token says which prompt it answers: "<text>" or "<#first id>".
  bool prompt_in_text = false;
  int choice_offset = 0;  // added to every message's choice (a broken server)
  std::vector<float> choice_logprob;  // added to choice i's tokens' logprobs (best_of's ranking)
  std::chrono::milliseconds token_delay{0};  // before each step, as a decode step takes
  std::atomic<int> calls{0};  // Generate calls begun
  std::atomic<int> cancelled{0};  // calls that ended CANCELLED (the client gone)
  std::atomic<int> finished{0};  // calls that sent their summaries
  std::atomic<int> in_flight{0}, most_in_flight{0};  // calls running at once

  grpc::Status Generate(const v1::GenerateRequest& request, const std::string& client,
                        const std::function<bool(const v1::GenerateResponse&)>& on_response) override {
    const int now = ++in_flight;
    for (int seen = most_in_flight.load(); now > seen && !most_in_flight.compare_exchange_weak(seen, now);) {}
    grpc::Status status = Run(request, client, on_response);
    --in_flight;
    if (status.error_code() == grpc::StatusCode::CANCELLED) ++cancelled;
    return status;
  }

  grpc::Status Run(const v1::GenerateRequest& request, const std::string& client,
                   const std::function<bool(const v1::GenerateResponse&)>& on_response) {
    {
      std::lock_guard<std::mutex> lock(mu);
      last = request;
      requests.push_back(request);
      last_client = client;
      seeds.push_back(request.sampling().has_seed() ? static_cast<int64_t>(request.sampling().seed()) : -1);
    }
    ++calls;
    if (!error.ok()) return error;
    const bool seeded = request.sampling().has_seed();
    const int n = std::max(1, request.n());
    if (request.has_prompt_logprobs()) {
      // A prompt of three tokens, "<s>", "Say", " hi" (ids 1 to 3), in one message.
      v1::GenerateResponse p;
      p.mutable_prompt_logprobs()->set_first(0);
      const char* texts[] = {"<s>", "Say", " hi"};
      for (int32_t i = 0; i < 3; ++i) {
        v1::TokenLogprobs lp = Logprobs(1 + i, texts[i], i == 0 ? 0 : request.prompt_logprobs());
        lp.mutable_chosen()->set_logprob(i == 0 ? NAN : -1.0f - static_cast<float>(i));
        *p.mutable_prompt_logprobs()->add_tokens() = lp;
      }
      if (!on_response(p)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
    }
    int sent = 0;
    for (size_t k = 0; k < texts.size(); ++k) {
      std::this_thread::sleep_for(token_delay);
      for (int choice = 0; choice < n; ++choice) {
        if (sent++ == fail_after) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p: this call fails");
        }
        // With seed_in_text, a choice's first token says which seed it had.
        std::string t = k == 0 && seed_in_text && seeded
                            ? "s" + std::to_string(request.sampling().seed() + choice) + ":" + texts[k]
                            : texts[k];
        if (k == 0 && prompt_in_text) {
          t = "<" + (request.has_text() ? request.text() : "#" + std::to_string(request.token_ids(0))) + ">" + t;
        }
        const int32_t id = 100 + static_cast<int32_t>(k);
        v1::GenerateResponse r;
        if (request.has_logprobs()) {
          *r.mutable_logprobs() = Logprobs(id, t, request.logprobs());
          if (static_cast<size_t>(choice) < choice_logprob.size()) {
            v1::TokenLogprob* chosen = r.mutable_logprobs()->mutable_chosen();
            chosen->set_logprob(chosen->logprob() + choice_logprob[static_cast<size_t>(choice)]);
          }
        }
        r.set_token(id);
        r.set_text(t);
        r.set_choice(choice + choice_offset);
        if (!on_response(r)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
      }
    }
    for (int choice = 0; choice < n; ++choice) {
      v1::GenerateResponse s;
      s.mutable_summary()->set_prompt_tokens(7);
      s.mutable_summary()->set_generated_tokens(static_cast<int>(texts.size()));
      s.mutable_summary()->set_finish_reason(finish);
      s.set_text(rest);
      s.set_choice(choice);
      on_response(s);
    }
    ++finished;
    return grpc::Status::OK;
  }

  // Token `id`'s logprobs (when asked): its own -0.25 per token so far, but
  // -inf for the fourth (a token of probability 0), with `top` alternatives
  // "alt0", "alt1", ... (ids 200, 201, ...) at -0.1, -1.1, ...; the third
  // is the first two bytes of "€" alone.
  static v1::TokenLogprobs Logprobs(int32_t id, const std::string& text, int top) {
    v1::TokenLogprobs lp;
    lp.mutable_chosen()->set_token_id(id);
    lp.mutable_chosen()->set_logprob(id == 103 ? -INFINITY : -0.25f * static_cast<float>(id - 99));
    lp.mutable_chosen()->set_text(text);
    for (int k = 0; k < top; ++k) {
      v1::TokenLogprob* t = lp.add_top();
      t->set_token_id(200 + k);
      t->set_logprob(-0.1f - static_cast<float>(k));
      t->set_text("alt" + std::to_string(k));
      if (k == 2) {
        // Part of a character: shown as U+FFFD, with its own bytes.
        t->set_text("\xEF\xBF\xBD");
        t->set_raw_bytes("\xE2\x82");
      }
    }
    return lp;
  }

  v1::GenerateRequest Last() {
    std::lock_guard<std::mutex> lock(mu);
    return last;
  }
  std::string LastClient() {
    std::lock_guard<std::mutex> lock(mu);
    return last_client;
  }
  // Every call's request since the last TakeRequests, in the order they began.
  std::vector<v1::GenerateRequest> TakeRequests() {
    std::lock_guard<std::mutex> lock(mu);
    return std::exchange(requests, {});
  }
  // Each call's seed (-1: none), in the order the calls began; cleared.
  std::vector<int64_t> TakeSeeds() {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<int64_t> out = std::move(seeds);
    seeds.clear();
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::mutex mu;
  v1::GenerateRequest last;
  std::vector<v1::GenerateRequest> requests;
  std::string last_client;
  std::vector<int64_t> seeds;
};

struct HttpReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;  // de-chunked
};

// A loopback connection with `request` sent whole; -1 when it cannot connect.
int SendRequest(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, 0);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  return fd;
}

std::string PostRequest(const std::string& path, const std::string& body) {
  return "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

HttpReply ReadReply(int fd);

// A minimal HTTP/1.1 exchange on loopback (Connection: close).
HttpReply Exchange(int port, const std::string& method, const std::string& path, const std::string& body = "") {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  const int fd = SendRequest(port, req);
  if (fd < 0) return HttpReply{};
  return ReadReply(fd);
}

// The reply on `fd`, read to the end; closes fd.
HttpReply ReadReply(int fd) {
  HttpReply reply;
  std::string raw;
  char buf[8192];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  const size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) return reply;
  const std::string head = raw.substr(0, head_end);
  reply.status = std::stoi(head.substr(9, 3));
  size_t line = head.find("\r\n");
  while (line != std::string::npos && line < head.size()) {
    const size_t next = head.find("\r\n", line + 2);
    const std::string h = head.substr(line + 2, (next == std::string::npos ? head.size() : next) - line - 2);
    const size_t colon = h.find(':');
    if (colon != std::string::npos) {
      std::string name = h.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(c));
      reply.headers[name] = h.substr(colon + 2);
    }
    line = next;
  }
  std::string rest = raw.substr(head_end + 4);
  if (reply.headers["transfer-encoding"] == "chunked") {
    size_t at = 0;
    while (at < rest.size()) {
      const size_t eol = rest.find("\r\n", at);
      if (eol == std::string::npos) break;
      const size_t n = std::stoul(rest.substr(at, eol - at), nullptr, 16);
      if (n == 0) break;
      reply.body += rest.substr(eol + 2, n);
      at = eol + 2 + n + 2;
    }
  } else {
    reply.body = rest;
  }
  return reply;
}

// The JSON payloads of a server-sent event stream, "[DONE]" included.
std::vector<std::string> Events(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

class OpenAiHttp : public ::testing::Test {
 protected:
  void SetUp() override { Start("auto"); }
  // The server, anew, reading tool_choice "auto" with `tool_call_parser`.
  void Start(const std::string& tool_call_parser) {
    server.reset();
    OpenAiHttpOptions o;
    o.tool_call_parser = tool_call_parser;
    o.listen = "127.0.0.1:0";
    o.model_name = "tiny-llama";
    o.registry = &registry;
    o.max_model_len = 2048;
    o.tokenizer = [this]() -> StatusOr<const Tokenizer*> {
      if (tokenizer_state == 1) return Unavailable("still loading");
      if (tokenizer_state == 2) return FailedPrecondition("no tokenizer here");
      return static_cast<const Tokenizer*>(tokenizer.get());
    };
    auto s = OpenAiHttpServer::Start(o, &backend);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(s).value();
  }
  JsonValue PostJson(const std::string& path, const std::string& body, int want_status) {
    HttpReply r = Exchange(server->port(), "POST", path, body);
    EXPECT_EQ(r.status, want_status) << r.body;
    EXPECT_EQ(r.headers["content-type"], "application/json");
    auto j = JsonValue::Parse(r.body);
    EXPECT_TRUE(j.ok()) << r.body;
    return j.ok() ? *j : JsonValue();
  }
  // A completion with `fields` added is a 400 whose param is `param` and
  // whose message holds `says`.
  void Refused(const std::string& fields, const std::string& param, const std::string& says) {
    const JsonValue j = PostJson("/v1/completions", R"({"prompt": "x", )" + fields + "}", 400);
    const JsonValue* e = j.Find("error");
    ASSERT_TRUE(e != nullptr && e->Find("param") != nullptr && e->Find("message") != nullptr) << j.Dump();
    EXPECT_EQ(e->Find("param")->as_string(), param) << fields;
    EXPECT_NE(e->Find("message")->as_string().find(says), std::string::npos) << e->Dump();
  }
  // /tokenize's tokenizer: the llama fixture's (0), loading (1), none (2).
  std::unique_ptr<Tokenizer> tokenizer = [] {
    auto t = Tokenizer::Load(std::string(SEER_FIXTURES_DIR) + "/llama");
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : nullptr;
  }();
  std::atomic<int> tokenizer_state{0};
  // The value of one sample of the registry's text exposition, or -1.
  double Sample(const std::string& series) {
    const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
    const size_t at = text.find("\n" + series + " ");
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + series.size() + 2));
  }
  ScriptedBackend backend;
  prometheus::Registry registry;
  std::unique_ptr<OpenAiHttpServer> server;
};

TEST_F(OpenAiHttp, CompletionMapsTheRequestAndAnswersInOpenAisShape) {
  const JsonValue out = PostJson("/v1/completions",
                                 R"({"model": "tiny-llama", "prompt": "Say hi", "max_tokens": 9, "temperature": 0,
                                     "top_p": 0.5, "seed": 42, "stop": ["\n", "END"], "seer_sparsity": "nz_ratio=0.25",
                                     "user": "req-7", "frequency_penalty": 0})",
                                 200);
  const v1::GenerateRequest g = backend.Last();
  EXPECT_EQ(g.text(), "Say hi");
  EXPECT_EQ(g.max_new_tokens(), 9);
  EXPECT_EQ(g.sampling().temperature(), 0.0f);
  EXPECT_EQ(g.sampling().top_p(), 0.5f);
  EXPECT_EQ(g.sampling().seed(), 42u);
  ASSERT_EQ(g.stop_size(), 2);
  EXPECT_EQ(g.stop(1), "END");
  EXPECT_EQ(g.sparsity().mode(), v1::Sparsity::MODE_NZ_RATIO);
  EXPECT_DOUBLE_EQ(g.sparsity().nz_ratio(), 0.25);
  EXPECT_EQ(g.request_id(), "req-7");
  EXPECT_EQ(out.Find("object")->as_string(), "text_completion");
  EXPECT_EQ(out.Find("model")->as_string(), "tiny-llama");
  const JsonValue& c = out.Find("choices")->as_array()[0];
  EXPECT_EQ(c.Find("text")->as_string(), "Hello, world");
  EXPECT_EQ(c.Find("finish_reason")->as_string(), "length");
  EXPECT_EQ(out.Find("usage")->Find("prompt_tokens")->as_int64(), 7);
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 4);
  EXPECT_EQ(out.Find("usage")->Find("total_tokens")->as_int64(), 11);
  // Text the server held back to the end comes with the summary.
  backend.rest = "!";
  const JsonValue with_rest = PostJson("/v1/completions", R"({"prompt": "Hi"})", 200);
  EXPECT_EQ(with_rest.Find("choices")->as_array()[0].Find("text")->as_string(), "Hello, world!");
  backend.rest.clear();
  // Defaults: OpenAI's max_tokens 16 and temperature 1; token-id prompts.
  PostJson("/v1/completions", R"({"prompt": [1, 2, 3]})", 200);
  EXPECT_EQ(backend.Last().max_new_tokens(), 16);
  EXPECT_EQ(backend.Last().sampling().temperature(), 1.0f);
  EXPECT_EQ(backend.Last().token_ids_size(), 3);
}

// The backend is told who the HTTP client is (the request log names it):
// the address and port of the test's own socket.
TEST_F(OpenAiHttp, TheBackendIsToldTheHttpClientsAddress) {
  const int fd = SendRequest(server->port(), PostRequest("/v1/completions", R"({"prompt": "Hi"})"));
  ASSERT_GE(fd, 0);
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len), 0);
  EXPECT_EQ(ReadReply(fd).status, 200);
  EXPECT_EQ(backend.LastClient(), "ipv4:127.0.0.1:" + std::to_string(ntohs(local.sin_port)));
}

TEST_F(OpenAiHttp, StreamedCompletionIsServerSentEventsEndingWithDone) {
  backend.finish = "stop";
  HttpReply r = Exchange(server->port(), "POST", "/v1/completions",
                         R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}})");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  const std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  bool usage = false;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto e = JsonValue::Parse(events[i]);
    ASSERT_TRUE(e.ok()) << events[i];
    EXPECT_EQ(e->Find("object")->as_string(), "text_completion");
    const auto& choices = e->Find("choices")->as_array();
    if (choices.empty()) {
      usage = e->Find("usage")->Find("completion_tokens")->as_int64() == 4;
      continue;
    }
    text += choices[0].Find("text")->as_string();
    if (!choices[0].Find("finish_reason")->is_null()) finish = choices[0].Find("finish_reason")->as_string();
  }
  EXPECT_EQ(text, "Hello, world");
  EXPECT_EQ(finish, "stop");
  EXPECT_TRUE(usage);
}

TEST_F(OpenAiHttp, ChatCompletionsTakeMessagesAndStreamDeltas) {
  const JsonValue out = PostJson("/v1/chat/completions",
                                 R"({"model": "tiny-llama", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                     "max_completion_tokens": 5})",
                                 200);
  const v1::GenerateRequest g = backend.Last();
  ASSERT_EQ(g.messages_size(), 2);
  EXPECT_EQ(g.messages(0).role(), "system");
  EXPECT_EQ(g.messages(1).content(), "Hi");
  EXPECT_EQ(g.max_new_tokens(), 5);
  EXPECT_EQ(out.Find("object")->as_string(), "chat.completion");
  // A chat without a limit takes the server's default (0 on the wire).
  PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}]})", 200);
  EXPECT_EQ(backend.Last().max_new_tokens(), 0);
  const JsonValue& m = *out.Find("choices")->as_array()[0].Find("message");
  EXPECT_EQ(m.Find("role")->as_string(), "assistant");
  EXPECT_EQ(m.Find("content")->as_string(), "Hello, world");

  HttpReply r = Exchange(server->port(), "POST", "/v1/chat/completions",
                         R"({"messages": [{"role": "user", "content": "Hi"}], "stream": true})");
  ASSERT_EQ(r.status, 200);
  const std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  auto first = JsonValue::Parse(events[0]);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->Find("object")->as_string(), "chat.completion.chunk");
  EXPECT_EQ(first->Find("choices")->as_array()[0].Find("delta")->Find("role")->as_string(), "assistant");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto e = JsonValue::Parse(events[i]);
    const JsonValue* content = e->Find("choices")->as_array()[0].Find("delta")->Find("content");
    if (content != nullptr) text += content->as_string();
  }
  EXPECT_EQ(text, "Hello, world");
}

// OpenAI's logprobs, both endpoints: the wire asks for the alternatives; a
// completion answers {tokens, token_logprobs, top_logprobs (the chosen
// token's among them), text_offset}, a chat {"content": [{token, logprob,
// bytes, top_logprobs}]}; -inf goes out as -9999; a stream's chunks carry
// the logprobs of their tokens, a token without text of its own going with
// the next chunk; and without logprobs, "logprobs" is null.
TEST_F(OpenAiHttp, LogprobsHaveOpenAisShapeOnBothEndpoints) {
  JsonValue out = PostJson("/v1/completions", R"({"prompt": "x", "logprobs": 2})", 200);
  EXPECT_EQ(backend.Last().logprobs(), 2);
  const JsonValue* lp = out.Find("choices")->as_array()[0].Find("logprobs");
  ASSERT_TRUE(lp != nullptr && lp->is_object()) << out.Dump();
  EXPECT_EQ(lp->Find("tokens")->Dump(), R"(["Hel","lo","",", world"])");
  EXPECT_EQ(lp->Find("token_logprobs")->Dump(), "[-0.25,-0.5,-0.75,-9999]");
  EXPECT_EQ(lp->Find("text_offset")->Dump(), "[0,3,5,5]");
  ASSERT_EQ(lp->Find("top_logprobs")->as_array().size(), 4u);
  EXPECT_EQ(lp->Find("top_logprobs")->as_array()[1].Dump(), R"({"alt0":-0.1,"alt1":-1.1,"lo":-0.5})");
  // A token that is part of a character is named by its bytes, as OpenAI's
  // legacy completions name it: "bytes:\xe2\x82".
  out = PostJson("/v1/completions", R"({"prompt": "x", "logprobs": 3})", 200);
  lp = out.Find("choices")->as_array()[0].Find("logprobs");
  EXPECT_EQ(lp->Find("top_logprobs")->as_array()[1].Dump(),
            R"({"alt0":-0.1,"alt1":-1.1,"bytes:\\xe2\\x82":-2.1,"lo":-0.5})");

  PostJson("/v1/completions", R"({"prompt": "x", "logprobs": 0})", 200);
  EXPECT_EQ(backend.Last().logprobs(), 0);
  out = PostJson("/v1/completions", R"({"prompt": "x", "logprobs": null})", 200);
  EXPECT_FALSE(backend.Last().has_logprobs());
  EXPECT_TRUE(out.Find("choices")->as_array()[0].Find("logprobs")->is_null());

  out = PostJson("/v1/chat/completions",
                 R"({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 3})", 200);
  EXPECT_EQ(backend.Last().logprobs(), 3);
  lp = out.Find("choices")->as_array()[0].Find("logprobs");
  ASSERT_TRUE(lp != nullptr && lp->is_object()) << out.Dump();
  const auto& content = lp->Find("content")->as_array();
  ASSERT_EQ(content.size(), 4u);
  EXPECT_EQ(content[0].Dump(), R"({"token":"Hel","logprob":-0.25,"bytes":[72,101,108],"top_logprobs":[)"
                               R"({"token":"alt0","logprob":-0.1,"bytes":[97,108,116,48]},)"
                               R"({"token":"alt1","logprob":-1.1,"bytes":[97,108,116,49]},)"
                               R"({"token":")"
                               "\xEF\xBF\xBD"
                               R"(","logprob":-2.1,"bytes":[226,130]}]})");
  EXPECT_EQ(content[3].Find("logprob")->Dump(), "-9999");
  PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true})", 200);
  EXPECT_EQ(backend.Last().logprobs(), 0);
  out = PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}]})", 200);
  EXPECT_FALSE(backend.Last().has_logprobs());
  EXPECT_TRUE(out.Find("choices")->as_array()[0].Find("logprobs")->is_null());

  // Streams: every token's entry once, in order, with the text it came with.
  for (const bool chat : {false, true}) {
    SCOPED_TRACE(chat ? "chat" : "completion");
    HttpReply r = Exchange(server->port(), "POST", chat ? "/v1/chat/completions" : "/v1/completions",
                           chat ? R"({"messages": [{"role": "user", "content": "Hi"}], "stream": true,
                                      "logprobs": true, "top_logprobs": 1})"
                                : R"({"prompt": "x", "stream": true, "logprobs": 1})");
    ASSERT_EQ(r.status, 200);
    const std::vector<std::string> events = Events(r.body);
    std::vector<std::string> tokens, texts;
    std::vector<int64_t> offsets;
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      auto e = JsonValue::Parse(events[i]);
      ASSERT_TRUE(e.ok()) << events[i];
      const JsonValue& c = e->Find("choices")->as_array()[0];
      const JsonValue* l = c.Find("logprobs");
      const std::string text =
          chat ? (c.Find("delta")->Find("content") != nullptr ? c.Find("delta")->Find("content")->as_string() : "")
               : c.Find("text")->as_string();
      if (l->is_null()) {
        EXPECT_TRUE(text.empty()) << events[i];  // the chat's opening chunk
        continue;
      }
      std::string joined;
      if (chat) {
        for (const JsonValue& entry : l->Find("content")->as_array()) {
          tokens.push_back(entry.Find("token")->as_string());
          joined += tokens.back();
          EXPECT_EQ(entry.Find("top_logprobs")->as_array().size(), 1u);
        }
      } else {
        for (const JsonValue& t : l->Find("tokens")->as_array()) {
          tokens.push_back(t.as_string());
          joined += tokens.back();
        }
        for (const JsonValue& o : l->Find("text_offset")->as_array()) offsets.push_back(o.as_int64());
      }
      EXPECT_EQ(joined, text) << "a chunk's logprobs are those of its text";
      texts.push_back(text);
    }
    EXPECT_EQ(tokens, (std::vector<std::string>{"Hel", "lo", "", ", world"}));
    if (!chat) EXPECT_EQ(offsets, (std::vector<int64_t>{0, 3, 5, 5}));
  }

  Refused(R"("logprobs": 21)", "logprobs", "an integer from 0 to 20");
  Refused(R"("logprobs": -1)", "logprobs", "an integer from 0 to 20");
  Refused(R"("logprobs": 1.5)", "logprobs", "an integer from 0 to 20");
  Refused(R"("logprobs": true)", "logprobs", "an integer from 0 to 20");
  auto chat_refused = [&](const std::string& fields, const std::string& param, const std::string& says) {
    const JsonValue j =
        PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], )" + fields + "}", 400);
    EXPECT_EQ(j.Find("error")->Find("param")->as_string(), param) << fields;
    EXPECT_NE(j.Find("error")->Find("message")->as_string().find(says), std::string::npos) << j.Dump();
  };
  chat_refused(R"("logprobs": 2)", "logprobs", "must be true or false");
  chat_refused(R"("top_logprobs": 2)", "top_logprobs", "needs logprobs set to true");
  chat_refused(R"("logprobs": false, "top_logprobs": 2)", "top_logprobs", "needs logprobs set to true");
  chat_refused(R"("logprobs": true, "top_logprobs": 21)", "top_logprobs", "an integer from 0 to 20");
  chat_refused(R"("logprobs": true, "top_logprobs": "3")", "top_logprobs", "an integer from 0 to 20");
  chat_refused(R"("add_generation_prompt": "no")", "add_generation_prompt", "must be true or false");
  chat_refused(R"("continue_final_message": 1)", "continue_final_message", "must be true or false");
  chat_refused(R"("chat_template_kwargs": [1])", "chat_template_kwargs", "must be a JSON object");
  // The server's own check comes back under the request's field.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "chat_template_kwargs.messages: the template's own variable; it cannot be set here");
  chat_refused(R"("chat_template_kwargs": {"messages": 1})", "chat_template_kwargs", "the template's own variable");
  backend.error = grpc::Status::OK;
}

// A completion's echo: the reply starts with the prompt (as given, or a
// prompt of ids as its tokens' texts), and with logprobs the prompt's tokens
// lead the logprobs, the first with null (nothing before it); streamed, the
// prompt is the first chunk. Echo asks the wire for the prompt's logprobs
// (for a prompt of ids without logprobs, 0 alternatives: their texts; a text
// prompt without logprobs asks nothing).
TEST_F(OpenAiHttp, EchoStartsTheReplyWithThePromptAndItsLogprobs) {
  JsonValue out = PostJson("/v1/completions", R"({"prompt": "Say hi", "echo": true, "logprobs": 1})", 200);
  EXPECT_EQ(backend.Last().prompt_logprobs(), 1);
  const JsonValue& c = out.Find("choices")->as_array()[0];
  EXPECT_EQ(c.Find("text")->as_string(), "Say hiHello, world");
  const JsonValue* lp = c.Find("logprobs");
  EXPECT_EQ(lp->Find("tokens")->Dump(), R"(["<s>","Say"," hi","Hel","lo","",", world"])");
  EXPECT_EQ(lp->Find("token_logprobs")->Dump(), "[null,-2,-3,-0.25,-0.5,-0.75,-9999]");
  EXPECT_TRUE(lp->Find("top_logprobs")->as_array()[0].is_null());
  EXPECT_EQ(lp->Find("top_logprobs")->as_array()[1].Dump(), R"({"alt0":-0.1,"Say":-2})");
  EXPECT_EQ(lp->Find("text_offset")->Dump(), "[0,3,6,9,12,14,14]");

  out = PostJson("/v1/completions", R"({"prompt": "Say hi", "echo": true})", 200);
  EXPECT_FALSE(backend.Last().has_prompt_logprobs()) << "a text prompt echoes as given";
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("text")->as_string(), "Say hiHello, world");
  EXPECT_TRUE(out.Find("choices")->as_array()[0].Find("logprobs")->is_null());

  out = PostJson("/v1/completions", R"({"prompt": [[1, 2, 3]], "echo": true, "max_tokens": 1})", 200);
  const v1::GenerateRequest ids = backend.Last();
  EXPECT_EQ(ids.prompt_logprobs(), 0) << "echoed ids need their texts";
  EXPECT_EQ(std::vector<int32_t>(ids.token_ids().begin(), ids.token_ids().end()), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("text")->as_string(), "<s>Say hiHello, world");

  out = PostJson("/v1/completions", R"({"prompt": "Say hi", "echo": false, "logprobs": 0})", 200);
  EXPECT_FALSE(backend.Last().has_prompt_logprobs());
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("text")->as_string(), "Hello, world");

  HttpReply r = Exchange(server->port(), "POST", "/v1/completions",
                         R"({"prompt": "Say hi", "echo": true, "logprobs": 1, "stream": true})");
  ASSERT_EQ(r.status, 200);
  const std::vector<std::string> events = Events(r.body);
  ASSERT_GE(events.size(), 2u);
  auto first = JsonValue::Parse(events[0]);
  ASSERT_TRUE(first.ok()) << events[0];
  const JsonValue& fc = first->Find("choices")->as_array()[0];
  EXPECT_EQ(fc.Find("text")->as_string(), "Say hi");
  EXPECT_EQ(fc.Find("logprobs")->Find("tokens")->Dump(), R"(["<s>","Say"," hi"])");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto e = JsonValue::Parse(events[i]);
    text += e->Find("choices")->as_array()[0].Find("text")->as_string();
  }
  EXPECT_EQ(text, "Say hiHello, world");

  // max_tokens 0 with echo scores the prompt alone (as vLLM allows): the wire
  // makes one token, which the reply leaves out of its text, logprobs and
  // usage; whole and streamed.
  out = PostJson("/v1/completions", R"({"prompt": "Say hi", "echo": true, "logprobs": 1, "max_tokens": 0})", 200);
  EXPECT_EQ(backend.Last().max_new_tokens(), 1);
  EXPECT_EQ(backend.Last().prompt_logprobs(), 1);
  const JsonValue& only = out.Find("choices")->as_array()[0];
  EXPECT_EQ(only.Find("text")->as_string(), "Say hi");
  EXPECT_EQ(only.Find("finish_reason")->as_string(), "length");
  EXPECT_EQ(only.Find("logprobs")->Find("tokens")->Dump(), R"(["<s>","Say"," hi"])");
  EXPECT_EQ(only.Find("logprobs")->Find("token_logprobs")->Dump(), "[null,-2,-3]");
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 0);
  EXPECT_EQ(out.Find("usage")->Find("total_tokens")->as_int64(), out.Find("usage")->Find("prompt_tokens")->as_int64());
  r = Exchange(server->port(), "POST", "/v1/completions",
               R"({"prompt": "Say hi", "echo": true, "max_tokens": 0, "stream": true})");
  ASSERT_EQ(r.status, 200);
  text.clear();
  std::string finish;
  for (const std::string& event : Events(r.body)) {
    auto e = JsonValue::Parse(event);
    if (!e.ok()) continue;  // [DONE]
    const JsonValue& c0 = e->Find("choices")->as_array()[0];
    text += c0.Find("text")->as_string();
    if (!c0.Find("finish_reason")->is_null()) finish = c0.Find("finish_reason")->as_string();
  }
  EXPECT_EQ(text, "Say hi");
  EXPECT_EQ(finish, "length");
  Refused(R"("max_tokens": 0)", "max_tokens", "0 is taken with echo");
  Refused(R"("max_tokens": -1, "echo": true)", "max_tokens", "positive integer");

  Refused(R"("echo": "yes")", "echo", "true or false");
  const JsonValue chat =
      PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "echo": true})", 400);
  EXPECT_EQ(chat.Find("error")->Find("param")->as_string(), "echo");
  PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "echo": false})", 200);
}

// n choices are one Generate call asking for n (one prefill), choice i
// sampled with the request's seed + i on the server; each choice has its own
// text, logprobs and finish, and the usage counts the prompt once and every
// choice's tokens. Streamed, each choice's chunks carry its index (a chat
// choice starts with its role), its finish comes with its summary, and one
// [DONE] ends them all. A call that fails fails the request.
// vLLM's /tokenize and /detokenize, against the tokenizer itself: a text
// prompt with and without the special tokens, token strings, a chat rendered
// as Generate renders it (EncodeChatPrompt, with its controls), ids back to
// text with the special tokens; and the refusals, by field; 503 while the
// model loads, 400 without a tokenizer; answers counted by endpoint.
TEST_F(OpenAiHttp, TokenizeAndDetokenizeUseTheServersTokenizer) {
  ASSERT_NE(tokenizer, nullptr);
  const Tokenizer& tok = *tokenizer;
  auto ids_of = [](const JsonValue& j) {
    std::vector<int32_t> out;
    for (const JsonValue& v : j.Find("tokens")->as_array()) out.push_back(static_cast<int32_t>(v.as_int64()));
    return out;
  };
  JsonValue out = PostJson("/tokenize", R"({"model": "tiny-llama", "prompt": "Hello world"})", 200);
  const std::vector<int32_t> with_bos = tok.Encode("Hello world", true).value();
  EXPECT_EQ(ids_of(out), with_bos);
  EXPECT_EQ(out.Find("count")->as_int64(), static_cast<int64_t>(with_bos.size()));
  EXPECT_EQ(out.Find("max_model_len")->as_int64(), 2048);
  EXPECT_TRUE(out.Find("token_strs")->is_null());
  out = PostJson("/tokenize", R"({"prompt": "Hello world", "add_special_tokens": false, "return_token_strs": true})",
                 200);
  const std::vector<int32_t> bare = tok.Encode("Hello world", false).value();
  EXPECT_EQ(ids_of(out), bare);
  ASSERT_EQ(out.Find("token_strs")->as_array().size(), bare.size());
  for (size_t i = 0; i < bare.size(); ++i)
    EXPECT_EQ(out.Find("token_strs")->as_array()[i].as_string(), tok.IdToToken(bare[i]).value());

  const std::string chat = R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}])";
  out = PostJson("/tokenize", R"({"messages": )" + chat + "}", 200);
  const JsonValue messages = JsonValue::Parse(chat).value();
  EXPECT_EQ(ids_of(out), EncodeChatPrompt(tok, messages).value());
  out =
      PostJson("/tokenize",
               R"({"messages": )" + chat + R"(, "add_generation_prompt": false, "continue_final_message": true})", 200);
  ChatPromptOptions open;
  open.add_generation_prompt = false;
  open.continue_final_message = true;
  EXPECT_EQ(ids_of(out), EncodeChatPrompt(tok, messages, open).value());

  out = PostJson("/detokenize",
                 R"({"tokens": [)" + std::to_string(with_bos[0]) + ", " + std::to_string(with_bos[1]) + "]}", 200);
  EXPECT_EQ(out.Find("prompt")->as_string(), tok.Decode(std::vector<int32_t>{with_bos[0], with_bos[1]}, false).value());

  auto refused = [&](const std::string& path, const std::string& body, int status, const std::string& param,
                     const std::string& says) {
    const JsonValue j = PostJson(path, body, status);
    const JsonValue* e = j.Find("error");
    ASSERT_TRUE(e != nullptr) << j.Dump();
    if (!param.empty()) EXPECT_EQ(e->Find("param")->as_string(), param) << body;
    EXPECT_NE(e->Find("message")->as_string().find(says), std::string::npos) << j.Dump();
  };
  refused("/tokenize", R"({"prompt": "a", "messages": []})", 400, "prompt", "exactly one of prompt and messages");
  refused("/tokenize", R"({})", 400, "prompt", "exactly one of prompt and messages");
  refused("/tokenize", R"({"prompt": 5})", 400, "prompt", "must be a string");
  refused("/tokenize", R"({"messages": )" + chat + R"(, "add_special_tokens": true})", 400, "add_special_tokens",
          "only false with messages");
  refused("/tokenize", R"({"messages": )" + chat + R"(, "continue_final_message": true})", 400,
          "continue_final_message", "not with add_generation_prompt");
  refused("/tokenize", R"({"messages": )" + chat + R"(, "chat_template_kwargs": {"messages": 1}})", 400,
          "chat_template_kwargs", "the template's own variable");
  refused("/tokenize", R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", "");
  refused("/tokenize", R"({"messages": )" + chat + R"(, "tools": [{"type": "function", "function": {"name": "a b"}}]})",
          400, "tools[0].function.name", "letters, digits");
  refused("/detokenize", R"({"tokens": [1, -1]})", 400, "tokens", "tokens[1]: -1 is not a token id");
  refused("/detokenize", R"({"tokens": "1"})", 400, "tokens", "an array of token ids");
  refused("/tokenize", R"({"model": "other", "prompt": "a"})", 404, "model", "does not exist");
  EXPECT_EQ(Exchange(server->port(), "GET", "/tokenize", "").status, 405);
  tokenizer_state = 1;
  refused("/tokenize", R"({"prompt": "a"})", 503, "", "still loading");
  tokenizer_state = 2;
  refused("/detokenize", R"({"tokens": [1]})", 400, "", "no tokenizer here");
  tokenizer_state = 0;
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="200",endpoint="tokenize"})"), 4);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="200",endpoint="detokenize"})"), 1);

  // With a template that shows tools (Llama 3.1's), the tools reach it: the
  // ids are EncodeChatPrompt's with them, not without.
  auto llama3 = Tokenizer::Load(std::string(SEER_FIXTURES_DIR) + "/tokenizers/llama3");
  ASSERT_TRUE(llama3.ok()) << llama3.status().ToString();
  tokenizer = std::move(llama3).value();
  const std::string tools = R"([{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])";
  const JsonValue with = PostJson("/tokenize", R"({"messages": )" + chat + R"(, "tools": )" + tools + "}", 200);
  ChatPromptOptions options;
  options.tools = *JsonValue::Parse(tools);
  StatusOr<std::vector<int32_t>> want = EncodeChatPrompt(*tokenizer, *JsonValue::Parse(chat), options);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  std::vector<int32_t> got;
  for (const JsonValue& id : with.Find("tokens")->as_array()) got.push_back(static_cast<int32_t>(id.as_int64()));
  EXPECT_EQ(got, *want);
  const JsonValue without = PostJson("/tokenize", R"({"messages": )" + chat + "}", 200);
  EXPECT_LT(without.Find("count")->as_int64(), with.Find("count")->as_int64());
}

// A completion's batch of prompts (strings, or lists of ids, as
// lm-evaluation-harness sends them): a Generate call each, side by side; the
// choices numbered p * n + i (vLLM's numbering), each the reply to its own
// prompt, echoed with its own prompt; usage summed over the calls; best_of
// ranked within each prompt; a bad prompt named by its index.
TEST_F(OpenAiHttp, ABatchOfPromptsIsACallEachWithChoicesNumberedByPrompt) {
  backend.prompt_in_text = true;
  backend.token_delay = std::chrono::milliseconds(5);  // the calls overlap
  backend.TakeRequests();
  JsonValue out = PostJson("/v1/completions", R"({"prompt": ["a", "b", "c"], "n": 2, "seed": 3})", 200);
  std::vector<v1::GenerateRequest> calls = backend.TakeRequests();
  ASSERT_EQ(calls.size(), 3u);
  std::vector<std::string> texts;
  for (const v1::GenerateRequest& g : calls) {
    texts.push_back(g.text());
    EXPECT_EQ(g.n(), 2);
    EXPECT_EQ(g.sampling().seed(), 3u);
  }
  std::sort(texts.begin(), texts.end());
  EXPECT_EQ(texts, (std::vector<std::string>{"a", "b", "c"}));
  const auto& list = out.Find("choices")->as_array();
  ASSERT_EQ(list.size(), 6u);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(list[i].Find("index")->as_int64(), i);
    EXPECT_EQ(list[i].Find("text")->as_string(),
              "<" + std::string(1, static_cast<char>('a' + i / 2)) + ">Hello, world");
  }
  EXPECT_EQ(out.Find("usage")->Find("prompt_tokens")->as_int64(), 3 * 7);
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 6 * 4);

  // Lists of ids, echoed (each its own prompt's tokens' texts).
  out = PostJson("/v1/completions", R"({"prompt": [[5, 6], [9]], "echo": true, "max_tokens": 2})", 200);
  calls = backend.TakeRequests();
  ASSERT_EQ(calls.size(), 2u);
  std::sort(calls.begin(), calls.end(), [](const auto& x, const auto& y) { return x.token_ids(0) < y.token_ids(0); });
  EXPECT_EQ(std::vector<int32_t>(calls[0].token_ids().begin(), calls[0].token_ids().end()),
            (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(calls[1].token_ids_size(), 1);
  EXPECT_EQ(calls[0].prompt_logprobs(), 0) << "echoing ids asks for their texts";
  ASSERT_EQ(out.Find("choices")->as_array().size(), 2u);
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("text")->as_string(), "<s>Say hi<#5>Hello, world");
  EXPECT_EQ(out.Find("choices")->as_array()[1].Find("text")->as_string(), "<s>Say hi<#9>Hello, world");

  // Streamed: each choice's chunks carry its index.
  HttpReply r = Exchange(server->port(), "POST", "/v1/completions", R"({"prompt": ["a", "b"], "stream": true})");
  ASSERT_EQ(r.status, 200);
  std::map<int64_t, std::string> streamed;
  for (const std::string& e : Events(r.body)) {
    if (e == "[DONE]") continue;
    auto j = JsonValue::Parse(e);
    ASSERT_TRUE(j.ok()) << e;
    for (const JsonValue& c : j->Find("choices")->as_array())
      streamed[c.Find("index")->as_int64()] += c.Find("text")->as_string();
  }
  EXPECT_EQ(streamed, (std::map<int64_t, std::string>{{0, "<a>Hello, world"}, {1, "<b>Hello, world"}}));
  backend.TakeRequests();

  // best_of 2, n 1: candidate 1 has the higher logprob, in each prompt.
  backend.choice_logprob = {0.0f, 1.0f};
  out = PostJson("/v1/completions", R"({"prompt": ["a", "b"], "best_of": 2})", 200);
  backend.choice_logprob.clear();
  ASSERT_EQ(out.Find("choices")->as_array().size(), 2u);
  for (int64_t i = 0; i < 2; ++i) {
    const JsonValue& c = out.Find("choices")->as_array()[i];
    EXPECT_EQ(c.Find("index")->as_int64(), i);
    EXPECT_EQ(c.Find("text")->as_string(), "<" + std::string(1, static_cast<char>('a' + i)) + ">Hello, world");
  }
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 4 * 4) << "every candidate counts";
  backend.TakeRequests();

  // A large batch runs 8 calls at a time, side by side, all answered.
  backend.most_in_flight = 0;
  std::string twenty = R"({"prompt": ["p0")";
  for (int i = 1; i < 20; ++i) twenty += R"(, "p)" + std::to_string(i) + R"(")";
  out = PostJson("/v1/completions", twenty + "]}", 200);
  EXPECT_EQ(out.Find("choices")->as_array().size(), 20u);
  EXPECT_EQ(out.Find("choices")->as_array()[19].Find("text")->as_string(), "<p19>Hello, world");
  EXPECT_LE(backend.most_in_flight.load(), 8);
  EXPECT_GE(backend.most_in_flight.load(), 2);
  backend.TakeRequests();

  // A call that fails fails the request, in the failing field's name; a
  // prompt's field is named with the prompt's index; and once a call has
  // failed, the later prompts are not begun.
  backend.fail_after = 1;
  PostJson("/v1/completions", R"({"prompt": ["a", "b"]})", 400);
  backend.fail_after = -1;
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "token_ids[1]: 900 is out of range [0, 128)");
  const int begun = backend.calls.load();
  out = PostJson("/v1/completions", twenty + "]}", 400);
  EXPECT_EQ(out.Find("error")->Find("param")->as_string(), "prompt[0][1]") << out.Dump();
  EXPECT_EQ(out.Find("error")->Find("message")->as_string(), "prompt[0][1]: 900 is out of range [0, 128)");
  EXPECT_LE(backend.calls.load() - begun, 8) << "no prompt is begun after a call failed";
  backend.error = grpc::Status::OK;
  backend.prompt_in_text = false;
  backend.token_delay = std::chrono::milliseconds(0);

  const int before = backend.calls.load();
  auto refused = [&](const std::string& prompt, const std::string& param, const std::string& says) {
    const JsonValue j = PostJson("/v1/completions", R"({"prompt": )" + prompt + "}", 400);
    const JsonValue* e = j.Find("error");
    ASSERT_TRUE(e != nullptr && e->Find("param") != nullptr && e->Find("message") != nullptr) << j.Dump();
    EXPECT_EQ(e->Find("param")->as_string(), param) << prompt;
    EXPECT_NE(e->Find("message")->as_string().find(says), std::string::npos) << e->Dump();
  };
  std::string many = R"(["x")";
  for (int i = 1; i < 65; ++i) many += R"(, "x")";
  refused(many + "]", "prompt", "a batch of 65 prompts, more than the 64");
  refused("[]", "prompt", "an array of up to 64");
  refused("[[1], []]", "prompt[1]", "prompt[1]: an empty prompt");
  refused(R"(["a", 5])", "prompt[1]", "must be a string or an array of token ids");
  refused("[[1], [2, -3]]", "prompt[1]", "prompt[1]: -3 is not a token id");
  refused("[1, 2.5]", "prompt", "prompt: 2.5 is not a token id");
  EXPECT_EQ(backend.calls.load(), before) << "refused before any call";
}

TEST_F(OpenAiHttp, ChoicesAreOneGenerateCallAskingForN) {
  backend.TakeSeeds();
  backend.seed_in_text = true;  // "s5:Hello, world": the seed a choice was sampled with
  const int calls_before = backend.calls.load();
  JsonValue out = PostJson("/v1/completions", R"({"prompt": "x", "n": 3, "seed": 5, "logprobs": 1})", 200);
  EXPECT_EQ(backend.calls.load() - calls_before, 1);
  EXPECT_EQ(backend.Last().n(), 3);
  EXPECT_EQ(backend.TakeSeeds(), (std::vector<int64_t>{5}));
  const auto& list = out.Find("choices")->as_array();
  ASSERT_EQ(list.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(list[i].Find("index")->as_int64(), i);
    EXPECT_EQ(list[i].Find("text")->as_string(), "s" + std::to_string(5 + i) + ":Hello, world");
    EXPECT_EQ(list[i].Find("finish_reason")->as_string(), "length");
    EXPECT_EQ(list[i].Find("logprobs")->Find("tokens")->as_array().size(), 4u);
  }
  EXPECT_EQ(out.Find("usage")->Find("prompt_tokens")->as_int64(), 7);
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 12);
  EXPECT_EQ(out.Find("usage")->Find("total_tokens")->as_int64(), 19);
  PostJson("/v1/completions", R"({"prompt": "x"})", 200);
  EXPECT_EQ(backend.Last().n(), 0) << "one choice asks for none";
  backend.seed_in_text = false;

  // Echoed prompts and their logprobs, for every choice.
  JsonValue echoed = PostJson("/v1/completions", R"({"prompt": "Say hi", "n": 2, "echo": true, "logprobs": 0})", 200);
  for (const JsonValue& c : echoed.Find("choices")->as_array()) {
    EXPECT_EQ(c.Find("text")->as_string(), "Say hiHello, world");
    EXPECT_EQ(c.Find("logprobs")->Find("tokens")->as_array().size(), 3u + 4u);
  }

  HttpReply r = Exchange(server->port(), "POST", "/v1/chat/completions",
                         R"({"messages": [{"role": "user", "content": "Hi"}], "n": 2, "stream": true,
                             "stream_options": {"include_usage": true}})");
  ASSERT_EQ(r.status, 200);
  const std::vector<std::string> events = Events(r.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  std::map<int64_t, std::string> content, finish;
  std::map<int64_t, int> roles;
  std::vector<int64_t> order;  // the choice of each chunk
  int64_t completion_tokens = -1;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto e = JsonValue::Parse(events[i]);
    ASSERT_TRUE(e.ok()) << events[i];
    if (const JsonValue* u = e->Find("usage"); u != nullptr && !u->is_null()) {
      completion_tokens = u->Find("completion_tokens")->as_int64();
      continue;
    }
    const JsonValue& c = e->Find("choices")->as_array()[0];
    const int64_t index = c.Find("index")->as_int64();
    order.push_back(index);
    const JsonValue* delta = c.Find("delta");
    if (delta->Find("role") != nullptr) {
      EXPECT_TRUE(content[index].empty()) << "a choice's role comes first";
      ++roles[index];
    }
    if (const JsonValue* t = delta->Find("content"); t != nullptr) content[index] += t->as_string();
    if (!c.Find("finish_reason")->is_null()) finish[index] = c.Find("finish_reason")->as_string();
  }
  EXPECT_EQ(content, (std::map<int64_t, std::string>{{0, "Hello, world"}, {1, "Hello, world"}}));
  EXPECT_EQ(finish, (std::map<int64_t, std::string>{{0, "length"}, {1, "length"}}));
  EXPECT_EQ(roles, (std::map<int64_t, int>{{0, 1}, {1, 1}}));
  ASSERT_GE(order.size(), 4u);
  EXPECT_EQ(std::vector<int64_t>(order.begin(), order.begin() + 4), (std::vector<int64_t>{0, 0, 1, 1}))
      << "each choice's role, then its first text, as the call's messages come";
  EXPECT_EQ(completion_tokens, 8);

  // The call fails after some choices' tokens: the request answers its
  // error, before any byte when not streamed, as an error event when streamed.
  backend.fail_after = 3;
  const JsonValue failed = PostJson("/v1/completions", R"({"prompt": "x", "n": 3, "seed": 5})", 400);
  EXPECT_EQ(failed.Find("error")->Find("param")->as_string(), "top_p");
  HttpReply streamed =
      Exchange(server->port(), "POST", "/v1/completions", R"({"prompt": "x", "n": 3, "stream": true})");
  backend.fail_after = -1;
  EXPECT_EQ(streamed.status, 200);
  const std::vector<std::string> failed_events = Events(streamed.body);
  ASSERT_GE(failed_events.size(), 2u);
  EXPECT_EQ(failed_events.back(), "[DONE]");
  EXPECT_NE(failed_events[failed_events.size() - 2].find("\"error\""), std::string::npos);
  // A message of a choice not asked for is the server's fault: 500.
  backend.choice_offset = 1;
  const JsonValue broken = PostJson("/v1/completions", R"({"prompt": "x", "n": 2})", 500);
  backend.choice_offset = 0;
  EXPECT_NE(broken.Find("error")->Find("message")->as_string().find("choice 2 for n = 2"), std::string::npos)
      << broken.Dump();
  Refused(R"("n": 0)", "n", "from 1 to 16");
  Refused(R"("n": 17)", "n", "from 1 to 16");
  Refused(R"("n": 1.5)", "n", "from 1 to 16");
}

// best_of: one call for best_of candidates (their logprobs asked of the
// server even when the reply shows none), the n with the highest logprob per
// token returned, renumbered; usage counts every candidate. Refused above
// n when streamed, below n, for chat, and above 16.
TEST_F(OpenAiHttp, BestOfReturnsTheCandidatesWithTheHighestLogprobPerToken) {
  backend.texts = {"Hel", "lo", "!"};  // three tokens, every logprob finite
  backend.choice_logprob = {-3.0f, 0.0f, -1.0f};  // candidate 1 is best, then 2, then 0
  backend.seed_in_text = true;
  JsonValue out = PostJson("/v1/completions", R"({"prompt": "x", "n": 2, "best_of": 3, "seed": 5})", 200);
  EXPECT_EQ(backend.Last().n(), 3);
  EXPECT_TRUE(backend.Last().has_logprobs()) << "the ranking needs the tokens' logprobs";
  const auto& list = out.Find("choices")->as_array();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].Find("index")->as_int64(), 0);
  EXPECT_EQ(list[0].Find("text")->as_string(), "s6:Hello!");
  EXPECT_EQ(list[1].Find("index")->as_int64(), 1);
  EXPECT_EQ(list[1].Find("text")->as_string(), "s7:Hello!");
  EXPECT_TRUE(list[0].Find("logprobs")->is_null()) << "not asked for";
  EXPECT_EQ(out.Find("usage")->Find("completion_tokens")->as_int64(), 9) << "every candidate's tokens";

  // With logprobs asked: the chosen candidate's, and n = 1 by default.
  JsonValue one = PostJson("/v1/completions", R"({"prompt": "x", "best_of": 3, "seed": 5, "logprobs": 1})", 200);
  const auto& best = one.Find("choices")->as_array();
  ASSERT_EQ(best.size(), 1u);
  EXPECT_EQ(best[0].Find("text")->as_string(), "s6:Hello!");
  const auto& lp = best[0].Find("logprobs")->Find("token_logprobs")->as_array();
  ASSERT_EQ(lp.size(), 3u);
  EXPECT_DOUBLE_EQ(lp[0].as_double(), -0.25);  // candidate 1's own, unbiased by the others
  backend.choice_logprob.clear();
  backend.seed_in_text = false;

  // best_of = n streams as n does.
  HttpReply streamed =
      Exchange(server->port(), "POST", "/v1/completions", R"({"prompt": "x", "n": 2, "best_of": 2, "stream": true})");
  EXPECT_EQ(streamed.status, 200);
  Refused(R"("best_of": 3, "stream": true)", "best_of", "cannot be streamed");
  Refused(R"("n": 3, "best_of": 2)", "best_of", "less than n");
  Refused(R"("best_of": 17)", "best_of", "from 1 to 16");
  Refused(R"("best_of": 2.5)", "best_of", "from 1 to 16");
  const JsonValue chat =
      PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "best_of": 2})", 400);
  EXPECT_EQ(chat.Find("error")->Find("param")->as_string(), "best_of");
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "best_of": 1, "n": 2, "user": "neutral"})", 200);
  EXPECT_EQ(backend.Last().n(), 2) << "a chat's best_of 1 asks for nothing";
  EXPECT_EQ(backend.Last().request_id(), "neutral") << "the fields after it are read";
}

TEST_F(OpenAiHttp, ModelsListsTheServedModel) {
  HttpReply r = Exchange(server->port(), "GET", "/v1/models");
  ASSERT_EQ(r.status, 200);
  auto j = JsonValue::Parse(r.body);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->Find("object")->as_string(), "list");
  EXPECT_EQ(j->Find("data")->as_array()[0].Find("id")->as_string(), "tiny-llama");
}

TEST_F(OpenAiHttp, ErrorsHaveOpenAisShapeAndCodes) {
  auto expect_error = [&](const JsonValue& j, const std::string& type, const std::string& param) {
    const JsonValue* e = j.Find("error");
    ASSERT_NE(e, nullptr);
    EXPECT_FALSE(e->Find("message")->as_string().empty());
    EXPECT_EQ(e->Find("type")->as_string(), type);
    if (param.empty()) {
      EXPECT_TRUE(e->Find("param")->is_null());
    } else {
      EXPECT_EQ(e->Find("param")->as_string(), param);
    }
  };
  expect_error(PostJson("/v1/completions", "{not json", 400), "invalid_request_error", "");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x", "n": 17})", 400), "invalid_request_error", "n");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x", "logprobs": 21})", 400), "invalid_request_error",
               "logprobs");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x", "seer_sparsity": "threshold=2"})", 400),
               "invalid_request_error", "seer_sparsity");
  expect_error(PostJson("/v1/completions", R"({"max_tokens": 3})", 400), "invalid_request_error", "prompt");
  expect_error(PostJson("/v1/chat/completions", R"({"messages": []})", 400), "invalid_request_error", "messages");
  expect_error(PostJson("/v1/completions", R"({"model": "gpt-4", "prompt": "x"})", 404), "invalid_request_error",
               "model");
  expect_error(PostJson("/v1/embeddings", R"({"input": "x"})", 404), "invalid_request_error", "");
  HttpReply get = Exchange(server->port(), "GET", "/v1/completions");
  EXPECT_EQ(get.status, 405);

  backend.error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "seer-decode: the queue is full");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x"})", 429), "rate_limit_exceeded", "");
  backend.error = grpc::Status(grpc::StatusCode::UNAVAILABLE, "no prefill endpoint");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x"})", 503), "server_error", "");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p: 1.5 is out of range [0, 1]");
  expect_error(PostJson("/v1/completions", R"({"prompt": "x"})", 400), "invalid_request_error", "top_p");
  // Mid-stream failures cannot change the status line: an error event, then [DONE].
  backend.error = grpc::Status::OK;
}

// What OpenAI's fields mean reaches the wire as that meaning: every call asks
// for a text reply, top_p 0 keeps the likeliest token (on the wire 0 means no
// cut), a null max_completion_tokens leaves max_tokens in force.
TEST_F(OpenAiHttp, TheWireCarriesOpenAisMeanings) {
  PostJson("/v1/completions", R"({"prompt": [1, 2, 3]})", 200);
  EXPECT_TRUE(backend.Last().text_reply()) << "a prompt of ids is answered in text too";
  PostJson("/v1/completions", R"({"prompt": "x"})", 200);
  EXPECT_TRUE(backend.Last().text_reply());
  EXPECT_EQ(backend.Last().sampling().top_p(), 1.0f);
  for (const char* zero : {"0", "0.0", "1e-50"}) {
    PostJson("/v1/completions", std::string(R"({"prompt": "x", "top_p": )") + zero + "}", 200);
    EXPECT_EQ(backend.Last().sampling().top_p(), FLT_MIN) << zero;
  }
  PostJson("/v1/completions", R"({"prompt": "x", "top_p": 0.25})", 200);
  EXPECT_EQ(backend.Last().sampling().top_p(), 0.25f);
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": null, "max_tokens": 3})", 200);
  EXPECT_EQ(backend.Last().max_new_tokens(), 3);
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4, "max_tokens": 3})", 200);
  EXPECT_EQ(backend.Last().max_new_tokens(), 4);
  // Too large for the wire: refused here, naming the value as sent (not
  // clamped to a number the client never sent).
  const JsonValue huge = PostJson("/v1/completions", R"({"prompt": "x", "max_tokens": 1e300})", 400);
  EXPECT_EQ(huge.Find("error")->Find("param")->as_string(), "max_tokens");
  EXPECT_NE(huge.Find("error")->Find("message")->as_string().find("1e+300"), std::string::npos) << huge.Dump();
  const JsonValue fraction = PostJson("/v1/completions", R"({"prompt": "x", "max_tokens": 2.5})", 400);
  EXPECT_EQ(fraction.Find("error")->Find("param")->as_string(), "max_tokens");
  EXPECT_NE(fraction.Find("error")->Find("message")->as_string().find("2.5"), std::string::npos);
  PostJson("/v1/completions", R"({"prompt": "x", "max_tokens": 0})", 400);
}

// OpenAI's logit adjustments reach the wire as sent; what is malformed or out
// of OpenAI's ranges is refused here, naming the field (and the key).
TEST_F(OpenAiHttp, PenaltiesAndLogitBiasReachTheWire) {
  PostJson("/v1/completions",
           R"({"prompt": "x", "presence_penalty": 0.5, "frequency_penalty": -1.25,
               "logit_bias": {"7": -100, "12": 2.5, "0": 100}})",
           200);
  const v1::GenerateRequest last = backend.Last();
  const v1::Sampling& s = last.sampling();
  EXPECT_EQ(s.presence_penalty(), 0.5f);
  EXPECT_EQ(s.frequency_penalty(), -1.25f);
  ASSERT_EQ(s.logit_bias_size(), 3);
  EXPECT_EQ(s.logit_bias().at(7), -100.0f);
  EXPECT_EQ(s.logit_bias().at(12), 2.5f);
  EXPECT_EQ(s.logit_bias().at(0), 100.0f);
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "presence_penalty": null, "logit_bias": null})", 200);
  EXPECT_EQ(backend.Last().sampling().presence_penalty(), 0.0f);
  EXPECT_EQ(backend.Last().sampling().logit_bias_size(), 0);

  const int calls = backend.calls.load();
  Refused(R"("presence_penalty": 2.5)", "presence_penalty", "2.5 is out of range [-2, 2]");
  Refused(R"("frequency_penalty": "high")", "frequency_penalty", "must be a number");
  Refused(R"("logit_bias": [1, 2])", "logit_bias", "must be an object");
  Refused(R"("logit_bias": {"abc": 1})", "logit_bias", "\"abc\" is not a token id");
  Refused(R"("logit_bias": {"-3": 1})", "logit_bias", "is not a token id");
  Refused(R"("logit_bias": {"99999999999": 1})", "logit_bias", "is not a token id");
  Refused(R"("logit_bias": {"5": 101})", "logit_bias", "logit_bias[5]: 101 is not a number in [-100, 100]");
  Refused(R"("logit_bias": {"5": "up"})", "logit_bias", "logit_bias[5]");
  std::string many = R"("logit_bias": {)";
  for (int i = 0; i < 1025; ++i) many += (i ? ", \"" : "\"") + std::to_string(i) + "\": 1";
  Refused(many + "}", "logit_bias", "1025 entries exceed the limit of 1024");
  EXPECT_EQ(backend.calls.load(), calls) << "refused before Generate";
  // The server's own checks (the vocabulary) come back in the request's terms.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "sampling.logit_bias: token id 500 is out of range [0, 128) (the model's vocab_size)");
  Refused(R"("logit_bias": {"500": 1})", "logit_bias", "logit_bias: token id 500");
  backend.error = grpc::Status::OK;
}

// vLLM's and SGLang's extensions: top_k and stop_token_ids reach the wire;
// the sampling controls Seer lacks are refused by name unless they ask for
// nothing, so a client never silently gets other text than it asked for.
TEST_F(OpenAiHttp, VllmsExtensionsReachTheWireOrAreRefused) {
  PostJson("/v1/completions", R"({"prompt": "x", "top_k": 40, "stop_token_ids": [7, 0, 2]})", 200);
  const v1::GenerateRequest with_ids = backend.Last();
  EXPECT_EQ(with_ids.sampling().top_k(), 40);
  EXPECT_EQ(std::vector<int32_t>(with_ids.stop_token_ids().begin(), with_ids.stop_token_ids().end()),
            (std::vector<int32_t>{7, 0, 2}));
  for (const char* none : {"-1", "0", "null", "-1.0"}) {
    PostJson("/v1/completions", std::string(R"({"prompt": "x", "top_k": )") + none + "}", 200);
    EXPECT_EQ(backend.Last().sampling().top_k(), 0) << none;
  }
  // min_tokens and ignore_eos reach the wire; a chat without max_tokens
  // leaves the limit to the server, whose default grows to min_tokens.
  PostJson("/v1/completions", R"({"prompt": "x", "max_tokens": 30, "min_tokens": 30, "ignore_eos": true})", 200);
  EXPECT_EQ(backend.Last().min_new_tokens(), 30);
  EXPECT_TRUE(backend.Last().ignore_eos());
  PostJson("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "min_tokens": 500})", 200);
  EXPECT_EQ(backend.Last().min_new_tokens(), 500);
  EXPECT_EQ(backend.Last().max_new_tokens(), 0);
  EXPECT_FALSE(backend.Last().ignore_eos());
  // Whole numbers written as floats are whole numbers (vLLM's pydantic takes them).
  PostJson("/v1/completions", R"({"prompt": "x", "top_k": 40.0, "stop_token_ids": [1e2]})", 200);
  const v1::GenerateRequest floats = backend.Last();
  EXPECT_EQ(floats.sampling().top_k(), 40);
  EXPECT_EQ(floats.sampling().min_p(), 0.0f);
  EXPECT_EQ(floats.sampling().repetition_penalty(), 1.0f) << "the HTTP default is none, on the wire too";
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "min_p": 0.05, "repetition_penalty": 1.15})", 200);
  EXPECT_EQ(backend.Last().sampling().min_p(), 0.05f);
  EXPECT_EQ(backend.Last().sampling().repetition_penalty(), 1.15f);
  EXPECT_FALSE(backend.Last().include_stop_str_in_output());
  EXPECT_FALSE(backend.Last().has_skip_special_tokens()) << "unset: the server's default, true";
  PostJson("/v1/completions", R"({"prompt": "x", "include_stop_str_in_output": true, "skip_special_tokens": false})",
           200);
  EXPECT_TRUE(backend.Last().include_stop_str_in_output());
  ASSERT_TRUE(backend.Last().has_skip_special_tokens());
  EXPECT_FALSE(backend.Last().skip_special_tokens());
  PostJson("/v1/completions", R"({"prompt": "x", "bad_words": ["never", " say"]})", 200);
  const v1::GenerateRequest worded = backend.Last();
  PostJson("/v1/completions", R"({"prompt": "x", "allowed_token_ids": [4, 9]})", 200);
  ASSERT_EQ(backend.Last().sampling().allowed_token_ids_size(), 2);
  EXPECT_EQ(backend.Last().sampling().allowed_token_ids(1), 9);
  EXPECT_FALSE(worded.has_add_generation_prompt());
  EXPECT_TRUE(worded.chat_template_kwargs().empty());
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}],
               "add_generation_prompt": false, "continue_final_message": true,
               "chat_template_kwargs": {"enable_thinking": false}})",
           200);
  ASSERT_TRUE(backend.Last().has_add_generation_prompt());
  EXPECT_FALSE(backend.Last().add_generation_prompt());
  EXPECT_TRUE(backend.Last().continue_final_message());
  EXPECT_EQ(backend.Last().chat_template_kwargs(), R"({"enable_thinking":false})");
  EXPECT_EQ(std::vector<std::string>(worded.bad_words().begin(), worded.bad_words().end()),
            (std::vector<std::string>{"never", " say"}));
  ASSERT_EQ(floats.stop_token_ids_size(), 1);
  EXPECT_EQ(floats.stop_token_ids(0), 100);
  // Neutral values pass: they ask for nothing Seer does not do.
  const int before = backend.calls.load();
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"}], "min_p": 0, "repetition_penalty": 1.0,
               "min_tokens": 0, "ignore_eos": false, "use_beam_search": false, "skip_special_tokens": true,
               "include_stop_str_in_output": false, "top_logprobs": 0, "logprobs": false,
               "response_format": {"type": "text"}, "tool_choice": "none", "guided_json": null, "stop_token_ids": []})",
           200);
  EXPECT_EQ(backend.calls.load(), before + 1);

  const int calls = backend.calls.load();
  Refused(R"("top_k": 2.5)", "top_k", "must be a whole number");
  Refused(R"("top_k": -2)", "top_k", "-1 or 0 for no cut");
  Refused(R"("top_k": "40")", "top_k", "must be a whole number");
  Refused(R"("top_k": 1e300)", "top_k", "must be a whole number");
  Refused(R"("stop_token_ids": 7)", "stop_token_ids", "an array of at most 64");
  Refused(R"("stop_token_ids": [1, -1])", "stop_token_ids[1]", "-1 is not a token id");
  Refused(R"("stop_token_ids": [1, "2"])", "stop_token_ids[1]", "is not a token id");
  std::string many = R"("stop_token_ids": [0)";
  for (int i = 1; i < 65; ++i) many += ", " + std::to_string(i);
  Refused(many + "]", "stop_token_ids", "at most 64");
  Refused(R"("min_p": 1.5)", "min_p", "min_p: 1.5 is out of range [0, 1]");
  Refused(R"("min_p": -0.1)", "min_p", "out of range [0, 1]");
  Refused(R"("min_p": "0.1")", "min_p", "must be a number");
  Refused(R"("repetition_penalty": 0)", "repetition_penalty", "repetition_penalty: 0 is out of range (0, 100]");
  Refused(R"("repetition_penalty": -1.2)", "repetition_penalty", "out of range (0, 100]");
  Refused(R"("repetition_penalty": 101)", "repetition_penalty", "out of range (0, 100]");
  Refused(R"("repetition_penalty": 1e-60)", "repetition_penalty", "out of range (0, 100]");
  Refused(R"("min_tokens": 2.5)", "min_tokens", "must be a whole number");
  Refused(R"("min_tokens": -1)", "min_tokens", "must be a whole number");
  Refused(R"("min_tokens": 17)", "min_tokens", "min_tokens: 17 is above max_tokens 16");
  Refused(R"("max_tokens": 4, "min_tokens": 5)", "min_tokens", "min_tokens: 5 is above max_tokens 4");
  Refused(R"("ignore_eos": 1)", "ignore_eos", "must be true or false");
  Refused(R"("use_beam_search": true)", "use_beam_search", "not supported");
  Refused(R"("guided_grammar": {"root": "a"})", "guided_grammar", "must be a string (a GBNF grammar)");
  Refused(R"("guided_whitespace_pattern": " *")", "guided_whitespace_pattern", "not supported");
  Refused(R"("guided_json": 5)", "guided_json", "must be a JSON Schema");
  Refused(R"("guided_choice": ["yes", 1])", "guided_choice", "must be an array of strings");
  Refused(R"("guided_regex": ["a"])", "guided_regex", "must be a string");
  Refused(R"("top_logprobs": 2)", "top_logprobs", "not a completions field");
  Refused(R"("structured_outputs": {"structural_tag": "x"})", "structured_outputs.structural_tag", "not supported");
  Refused(R"("guided_regex": "a", "structured_outputs": {"grammar": "root ::= \"a\""})", "structured_outputs.grammar",
          "only one guide");
  Refused(R"("structured_outputs": {"jsn": {}})", "structured_outputs.jsn", "not a structured_outputs field");
  Refused(R"("structured_outputs": [1])", "structured_outputs", "must be an object");
  Refused(R"("allowed_token_ids": 1)", "allowed_token_ids", "must be an array of token ids");
  Refused(R"("allowed_token_ids": [1, -2])", "allowed_token_ids", "-2 is not a token id");
  Refused(R"("bad_words": "no")", "bad_words", "must be an array of strings");
  Refused(R"("bad_words": ["no", 3])", "bad_words", "must be an array of strings");
  Refused(R"("function_call": "auto")", "function_call", "not supported");
  Refused(R"("skip_special_tokens": 0)", "skip_special_tokens", "must be true or false");
  Refused(R"("include_stop_str_in_output": "yes")", "include_stop_str_in_output", "must be true or false");
  Refused(R"("response_format": {"type": "xml"})", "response_format", "type must be \"text\", \"json_object\"");
  Refused(R"("response_format": {"type": "json_schema", "json_schema": {}})", "response_format",
          "response_format.json_schema.schema: required");
  Refused(R"("response_format": {"type": "json_object"}, "guided_regex": "a")", "guided_regex",
          "guided_regex: only one guide may be given, and response_format already is one");
  Refused(R"("guided_choice": ["a"], "structured_outputs": {"regex": "a"})", "structured_outputs.regex",
          "only one guide");
  Refused(R"("tool_choice": "required")", "tool_choice", "a chat field");
  Refused(R"("tools": [{"type": "function", "function": {"name": "f"}}])", "tools", "a chat field");
  Refused(R"("functions": [{"name": "f"}])", "functions", "the legacy form is not supported");
  EXPECT_EQ(backend.calls.load(), calls) << "refused before Generate";
  // The server's own checks come back in the request's terms.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_k: 500 is out of range [0, 128]");
  Refused(R"("top_k": 500)", "top_k", "top_k: 500 is out of range");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "stop_token_ids[0]: 900 is out of range [0, 128)");
  Refused(R"("stop_token_ids": [900])", "stop_token_ids[0]", "stop_token_ids[0]: 900");
  backend.error = grpc::Status::OK;
}

// OpenAI's response_format and vLLM's guided_* and structured_outputs reach
// the wire as the one Guide they ask for; a schema object is passed as its
// JSON text, a schema string as it is. The server's errors about the guide
// name the request's own field.
TEST_F(OpenAiHttp, GuidesReachTheWireAsTheGuideTheyAskFor) {
  const std::string chat = R"({"messages": [{"role": "user", "content": "Hi"}], )";
  auto guide_of = [&](const std::string& path, const std::string& fields) {
    const std::string head = path == "/v1/completions" ? R"({"prompt": "x", )" : chat;
    PostJson(path, head + fields + "}", 200);
    return backend.Last().guide();
  };
  const char* schema = R"({"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]})";
  v1::Guide g = guide_of("/v1/chat/completions", std::string(R"("response_format": {"type": "json_schema",
      "json_schema": {"name": "x", "strict": true, "schema": )") +
                                                     schema + "}}");
  EXPECT_EQ(g.json_schema(), schema);
  g = guide_of("/v1/chat/completions", R"("response_format": {"type": "json_object"})");
  EXPECT_TRUE(g.json_object());
  EXPECT_FALSE(guide_of("/v1/chat/completions", R"("response_format": {"type": "text"})").has_json_object());
  g = guide_of("/v1/completions", std::string(R"("guided_json": )") + schema);
  EXPECT_EQ(g.json_schema(), schema);
  g = guide_of("/v1/completions", R"("guided_json": "{\"type\": \"string\"}")");
  EXPECT_EQ(g.json_schema(), R"({"type": "string"})");
  g = guide_of("/v1/completions", R"("guided_regex": "[0-9]+")");
  EXPECT_EQ(g.regex(), "[0-9]+");
  g = guide_of("/v1/completions", R"("guided_choice": ["yes", "no"], "guided_decoding_backend": "xgrammar")");
  EXPECT_EQ(std::vector<std::string>(g.choice().choices().begin(), g.choice().choices().end()),
            (std::vector<std::string>{"yes", "no"}));
  g = guide_of("/v1/chat/completions", R"("structured_outputs": {"choice": ["a", "b"], "regex": null})");
  EXPECT_EQ(g.choice().choices_size(), 2);
  g = guide_of("/v1/chat/completions", R"("structured_outputs": {"json": {"type": "boolean"}})");
  EXPECT_EQ(g.json_schema(), R"({"type":"boolean"})");
  g = guide_of("/v1/chat/completions", R"("structured_outputs": {"json_object": true})");
  EXPECT_TRUE(g.json_object());
  g = guide_of("/v1/chat/completions", R"("structured_outputs": {"regex": "a|b"})");
  EXPECT_EQ(g.regex(), "a|b");
  g = guide_of("/v1/completions", R"("guided_grammar": "root ::= \"a\" | [0-9]+")");
  EXPECT_EQ(g.grammar(), R"(root ::= "a" | [0-9]+)");
  g = guide_of("/v1/chat/completions", R"("structured_outputs": {"grammar": "root ::= \"b\""})");
  EXPECT_EQ(g.grammar(), R"(root ::= "b")");
  EXPECT_EQ(guide_of("/v1/completions", R"("guided_json": null, "guided_choice": [])").kind_case(),
            v1::Guide::KIND_NOT_SET);

  backend.error =
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "guide.json_schema: /minimum: \"minimum\" is not supported");
  JsonValue j = PostJson("/v1/chat/completions",
                         chat + R"("response_format": {"type": "json_schema", "json_schema": {"schema": {}}}})", 400);
  EXPECT_EQ(j.Find("error")->Find("param")->as_string(), "response_format.json_schema.schema") << j.Dump();
  EXPECT_EQ(j.Find("error")->Find("message")->as_string(),
            "response_format.json_schema.schema: /minimum: \"minimum\" is not supported");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "guide.regex: a backreference at byte 3");
  j = PostJson("/v1/completions", R"({"prompt": "x", "guided_regex": "(a)\\1"})", 400);
  EXPECT_EQ(j.Find("error")->Find("param")->as_string(), "guided_regex") << j.Dump();
}

// Generate's errors name the gRPC fields; over HTTP they name the request's.
constexpr char kWeatherTools[] = R"([{"type": "function", "function": {"name": "get_weather",
    "description": "Weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
    "required": ["city"]}}}, {"type": "function", "function": {"name": "ping"}}])";

// A chat's body with the weather tools and `fields`.
std::string ToolChat(const std::string& fields) {
  return std::string(R"({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": )") + kWeatherTools +
         (fields.empty() ? "" : ", " + fields) + "}";
}

// A streamed chat's deltas, joined: its content, and each call's id, name
// and arguments (a call's first part alone names it), and the last
// finish_reason.
struct StreamedChat {
  std::string content;
  std::vector<std::array<std::string, 3>> calls;
  std::string finish;
};
StreamedChat JoinDeltas(const std::string& body) {
  StreamedChat out;
  const std::vector<std::string> events = Events(body);
  EXPECT_EQ(events.back(), "[DONE]");
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    StatusOr<JsonValue> e = JsonValue::Parse(events[i]);
    EXPECT_TRUE(e.ok()) << events[i];
    const JsonValue& choice = e->Find("choices")->as_array()[0];
    const JsonValue& delta = *choice.Find("delta");
    if (const JsonValue* c = delta.Find("content"); c != nullptr && c->is_string()) out.content += c->as_string();
    if (const JsonValue* f = choice.Find("finish_reason"); f->is_string()) out.finish = f->as_string();
    const JsonValue* calls = delta.Find("tool_calls");
    if (calls == nullptr) continue;
    for (const JsonValue& part : calls->as_array()) {
      const size_t index = static_cast<size_t>(part.Find("index")->as_int64());
      if (const JsonValue* id = part.Find("id")) {
        EXPECT_EQ(index, out.calls.size()) << events[i];
        EXPECT_EQ(part.Find("type")->as_string(), "function");
        out.calls.push_back({id->as_string(), part.Find("function")->Find("name")->as_string(), ""});
      } else {
        EXPECT_EQ(part.Find("function")->Find("name"), nullptr) << "only a call's first part names it";
      }
      EXPECT_LT(index, out.calls.size()) << events[i];
      if (index < out.calls.size()) out.calls[index][2] += part.Find("function")->Find("arguments")->as_string();
    }
  }
  return out;
}

// Tool calling: "required" and a named function guide the reply to their
// calls' JSON (the wire's guide is their schema) and answer with
// tool_calls; "auto" reads the model's own format (here Hermes', then
// Mistral's, which keeps special tokens) and is refused where the server
// knows none; "none" is text. The tools and a conversation's earlier calls
// reach the wire; a stream's deltas join to the same calls.
TEST_F(OpenAiHttp, ToolCallsAreGuidedOrReadAndAnsweredInOpenAisShape) {
  const std::vector<ToolDefinition> tools = *ParseTools(*JsonValue::Parse(kWeatherTools));
  backend.finish = "stop";
  // A named function: the reply is its arguments.
  backend.texts = {R"({"city": )", "", R"("Paris"})"};
  const std::string named = ToolChat(R"("tool_choice": {"type": "function", "function": {"name": "get_weather"}})");
  JsonValue out = PostJson("/v1/chat/completions", named, 200);
  v1::GenerateRequest g = backend.Last();
  EXPECT_EQ(g.tools(), JsonValue::Parse(kWeatherTools)->Dump());
  EXPECT_EQ(g.guide().json_schema(), tools[0].parameters.Dump());
  const JsonValue* choice = &out.Find("choices")->as_array()[0];
  EXPECT_EQ(choice->Find("finish_reason")->as_string(), "stop") << "as OpenAI ends a named call";
  const JsonValue* message = choice->Find("message");
  EXPECT_TRUE(message->Find("content")->is_null()) << out.Dump();
  ASSERT_EQ(message->Find("tool_calls")->as_array().size(), 1u) << out.Dump();
  const JsonValue* call = &message->Find("tool_calls")->as_array()[0];
  EXPECT_EQ(call->Find("id")->as_string().rfind("call_", 0), 0u);
  EXPECT_EQ(call->Find("type")->as_string(), "function");
  EXPECT_EQ(call->Find("function")->Find("name")->as_string(), "get_weather");
  EXPECT_EQ(call->Find("function")->Find("arguments")->as_string(), R"({"city": "Paris"})");
  HttpReply r = Exchange(server->port(), "POST", "/v1/chat/completions",
                         named.substr(0, named.size() - 1) + R"(, "stream": true})");
  ASSERT_EQ(r.status, 200);
  StreamedChat streamed = JoinDeltas(r.body);
  EXPECT_EQ(streamed.content, "");
  ASSERT_EQ(streamed.calls.size(), 1u) << r.body;
  EXPECT_EQ(streamed.calls[0][1], "get_weather");
  EXPECT_EQ(streamed.calls[0][2], R"({"city": "Paris"})");
  EXPECT_EQ(streamed.finish, "stop");
  EXPECT_GE(Events(r.body).size(), 5u) << "the arguments streamed as they came";

  // "required": an array of calls (one, as its guide allows, without
  // parallel_tool_calls), streamed a call's name and then its arguments.
  for (const bool parallel : {true, false}) {
    backend.texts = {R"([{"name": "get_weather", "parameters": {"city": )", R"("Oslo"}})",
                     parallel ? R"(, {"name": "ping", "parameters": {}}])" : "]"};
    const std::string required =
        ToolChat(std::string(R"("tool_choice": "required", "parallel_tool_calls": )") + (parallel ? "true" : "false"));
    out = PostJson("/v1/chat/completions", required, 200);
    EXPECT_EQ(backend.Last().guide().json_schema(),
              ToolCallSchema(tools, ToolChoice{ToolChoice::Kind::kRequired, ""}, parallel));
    choice = &out.Find("choices")->as_array()[0];
    EXPECT_EQ(choice->Find("finish_reason")->as_string(), "tool_calls");
    const JsonValue& calls = *choice->Find("message")->Find("tool_calls");
    ASSERT_EQ(calls.as_array().size(), parallel ? 2u : 1u) << out.Dump();
    EXPECT_EQ(calls.as_array()[0].Find("function")->Find("arguments")->as_string(), R"({"city": "Oslo"})")
        << "the model's own text";
    if (parallel) {
      EXPECT_EQ(calls.as_array()[1].Find("function")->Find("name")->as_string(), "ping");
      EXPECT_NE(calls.as_array()[0].Find("id")->as_string(), calls.as_array()[1].Find("id")->as_string());
    }
    r = Exchange(server->port(), "POST", "/v1/chat/completions",
                 required.substr(0, required.size() - 1) + R"(, "stream": true})");
    streamed = JoinDeltas(r.body);
    ASSERT_EQ(streamed.calls.size(), parallel ? 2u : 1u) << r.body;
    EXPECT_EQ(streamed.calls[0][2], R"({"city": "Oslo"})");
    EXPECT_EQ(streamed.finish, "tool_calls");
  }

  // "auto" (the default with tools): this server's template shows no format.
  const JsonValue refused = PostJson("/v1/chat/completions", ToolChat(""), 400);
  EXPECT_EQ(refused.Find("error")->Find("param")->as_string(), "tool_choice");
  EXPECT_NE(refused.Find("error")->Find("message")->as_string().find("--tool-call-parser"), std::string::npos);
  // "none": text, the tools still shown to the template.
  backend.texts = {"<tool_call>", "{\"name\": \"ping\"}</tool_call>"};
  out = PostJson("/v1/chat/completions", ToolChat(R"("tool_choice": "none")"), 200);
  EXPECT_EQ(backend.Last().tools(), JsonValue::Parse(kWeatherTools)->Dump());
  EXPECT_FALSE(backend.Last().has_guide());
  message = out.Find("choices")->as_array()[0].Find("message");
  EXPECT_EQ(message->Find("content")->as_string(), "<tool_call>{\"name\": \"ping\"}</tool_call>");
  EXPECT_EQ(message->Find("tool_calls"), nullptr);

  // "auto" with Hermes' format: text before the call streams, the call ends the reply.
  Start("hermes");
  backend.texts = {"Checking", ". <tool", "_call>\n{\"name\": \"get_weather\", ",
                   "\"arguments\": {\"city\": \"Rome\"}}\n</tool_call>"};
  out = PostJson("/v1/chat/completions", ToolChat(""), 200);
  EXPECT_FALSE(backend.Last().has_guide());
  choice = &out.Find("choices")->as_array()[0];
  EXPECT_EQ(choice->Find("finish_reason")->as_string(), "tool_calls");
  EXPECT_EQ(choice->Find("message")->Find("content")->as_string(), "Checking. ");
  ASSERT_EQ(choice->Find("message")->Find("tool_calls")->as_array().size(), 1u);
  EXPECT_EQ(choice->Find("message")->Find("tool_calls")->as_array()[0].Find("function")->Find("arguments")->as_string(),
            R"({"city": "Rome"})");
  r = Exchange(server->port(), "POST", "/v1/chat/completions", ToolChat(R"("stream": true)"));
  streamed = JoinDeltas(r.body);
  EXPECT_EQ(streamed.content, "Checking. ");
  ASSERT_EQ(streamed.calls.size(), 1u);
  EXPECT_EQ(streamed.calls[0][1], "get_weather");
  EXPECT_EQ(streamed.finish, "tool_calls");
  // A reply that calls nothing is text, and ends as it did.
  backend.texts = {"It is ", "sunny."};
  out = PostJson("/v1/chat/completions", ToolChat(""), 200);
  choice = &out.Find("choices")->as_array()[0];
  EXPECT_EQ(choice->Find("finish_reason")->as_string(), "stop");
  EXPECT_EQ(choice->Find("message")->Find("content")->as_string(), "It is sunny.");
  // A conversation's earlier call and its answer reach the wire.
  PostJson("/v1/chat/completions",
           R"({"messages": [{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function",
       "function": {"name": "ping", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "call_9", "name": "ping", "content": "pong"}], "tools": )" +
               std::string(kWeatherTools) + "}",
           200);
  g = backend.Last();
  ASSERT_EQ(g.messages_size(), 3);
  ASSERT_EQ(g.messages(1).tool_calls_size(), 1);
  EXPECT_EQ(g.messages(1).tool_calls(0).id(), "call_9");
  EXPECT_EQ(g.messages(1).tool_calls(0).name(), "ping");
  EXPECT_EQ(g.messages(1).tool_calls(0).arguments(), "{}");
  EXPECT_EQ(g.messages(2).tool_call_id(), "call_9");
  EXPECT_EQ(g.messages(2).name(), "ping");

  // Hermes' and Mistral's markers may be special tokens: the text keeps
  // them, unless the request says otherwise.
  PostJson("/v1/chat/completions", ToolChat(""), 200);
  EXPECT_TRUE(backend.Last().has_skip_special_tokens());
  EXPECT_FALSE(backend.Last().skip_special_tokens());
  Start("mistral");
  backend.texts = {"[TOOL_CALLS] [{\"name\": \"ping\", \"arguments\": {}}]"};
  out = PostJson("/v1/chat/completions", ToolChat(""), 200);
  EXPECT_TRUE(backend.Last().has_skip_special_tokens());
  EXPECT_FALSE(backend.Last().skip_special_tokens());
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("message")->Find("tool_calls")->as_array().size(), 1u);
  PostJson("/v1/chat/completions", ToolChat(R"("skip_special_tokens": true)"), 200);
  EXPECT_TRUE(backend.Last().skip_special_tokens());
  // Every call of a Mistral model has the 9-character id its template
  // takes back, guided calls too.
  backend.texts = {R"([{"name": "ping", "parameters": {}}])"};
  out = PostJson("/v1/chat/completions", ToolChat(R"("tool_choice": "required")"), 200);
  const std::string mistral_id =
      out.Find("choices")->as_array()[0].Find("message")->Find("tool_calls")->as_array()[0].Find("id")->as_string();
  EXPECT_EQ(mistral_id.size(), 9u) << mistral_id;
  EXPECT_FALSE(backend.Last().has_skip_special_tokens()) << "a guided call needs no special tokens";

  // The guide of "required" is a schema like any other: at most 64 KiB,
  // counted without the tools' descriptions (here 100 KiB of them pass).
  std::string many = "[";
  for (int i = 0; i < 100; ++i) {
    many += std::string(i > 0 ? "," : "") + R"({"type": "function", "function": {"name": "f)" + std::to_string(i) +
            R"(", "parameters": {"type": "object", "description": ")" + std::string(1000, 'd') +
            R"(", "properties": {"a": {"type": "string", "description": "x"}}}}})";
  }
  const std::string described = R"({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required",
      "max_tokens": 2, "tools": )" +
                                many + "]}";
  backend.texts = {"[]"};
  PostJson("/v1/chat/completions", described, 200);
  EXPECT_EQ(backend.Last().guide().json_schema().find("ddd"), std::string::npos);
  // Refusals name the field.
  const int calls = backend.calls.load();
  auto refused_chat = [&](const std::string& body, const std::string& param, const std::string& says) {
    const JsonValue j = PostJson("/v1/chat/completions", body, 400);
    const JsonValue* e = j.Find("error");
    ASSERT_NE(e, nullptr) << j.Dump();
    EXPECT_EQ(e->Find("param")->as_string(), param) << body;
    EXPECT_NE(e->Find("message")->as_string().find(says), std::string::npos) << e->Dump();
  };
  refused_chat(ToolChat(R"("tool_choice": "required", "response_format": {"type": "json_object"})"), "tool_choice",
               "guides the reply to its calls' JSON, so not with response_format");
  refused_chat(ToolChat(R"("tool_choice": {"type": "function", "function": {"name": "f"}})"),
               "tool_choice.function.name", "is not one of the request's tools");
  refused_chat(ToolChat(R"("parallel_tool_calls": "yes")"), "parallel_tool_calls", "must be true or false");
  refused_chat(R"({"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]})",
               "tools[0].function", "must be an object");
  refused_chat(R"({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"})", "tool_choice",
               "needs tools");
  std::string wide = many;
  for (int i = 0; i < 600; ++i) {
    wide += R"(,{"type": "function", "function": {"name": "g)" + std::to_string(i) +
            R"(", "parameters": {"type": "object", "properties": {"b": {"type": "string"}}}}})";
  }
  refused_chat(
      R"({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required", "tools": )" + wide + "]}",
      "tools", "700 tools exceed the limit of 128");
  wide = "[";
  for (int i = 0; i < 120; ++i) {
    wide += std::string(i > 0 ? "," : "") + R"({"type": "function", "function": {"name": "g)" + std::to_string(i) +
            R"(", "parameters": {"type": "object", "properties": {"b)" + std::string(600, 'b') +
            R"(": {"type": "string"}}}}})";
  }
  refused_chat(
      R"({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required", "tools": )" + wide + "]}",
      "tools", "more than a guide's 65536; send fewer or smaller tools");
  EXPECT_EQ(backend.calls.load(), calls) << "refused before Generate";
  // A named function's schema that the server refuses is that tool's
  // parameters; so is a place in "required"'s schema.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "guide.json_schema: /properties/city: bad");
  refused_chat(named, "tools[0].function.parameters", "tools[0].function.parameters: /properties/city: bad");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "guide.json_schema: /items/anyOf/1/properties/parameters/properties/b: bad");
  refused_chat(ToolChat(R"("tool_choice": "required")"), "tools[1].function.parameters",
               "tools[1].function.parameters: /properties/b: bad");
  backend.error =
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "guide.json_schema: /items/anyOf/0/properties/parameters: bad");
  refused_chat(ToolChat(R"("tool_choice": "required")"), "tools[0].function.parameters",
               "tools[0].function.parameters: (root): bad");
  backend.error = grpc::Status::OK;
}

TEST_F(OpenAiHttp, GenerateErrorsNameTheRequestsOwnFields) {
  auto error_of = [&](const std::string& path, const std::string& body) {
    const JsonValue j = PostJson(path, body, 400);
    const JsonValue* e = j.Find("error");
    return e != nullptr ? *e : JsonValue::Object();
  };
  const std::string completion = R"({"prompt": "x"})";
  const std::string chat = R"({"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5})";
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "max_new_tokens: 5000 is out of range [1, 4096] (the server's --max-new-tokens; 0 "
                               "takes its default)");
  JsonValue e = error_of("/v1/completions", completion);
  EXPECT_EQ(e.Find("param")->as_string(), "max_tokens");
  EXPECT_EQ(e.Find("message")->as_string(),
            "max_tokens: 5000 is out of range [1, 4096] (the server's --max-new-tokens)");
  EXPECT_TRUE(e.Find("code")->is_null());
  EXPECT_EQ(error_of("/v1/chat/completions", chat).Find("param")->as_string(), "max_completion_tokens");

  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "token_ids: 8321 tokens exceed the limit of 8192 (the model's max_position_embeddings)");
  e = error_of("/v1/completions", completion);
  EXPECT_EQ(e.Find("param")->as_string(), "prompt");
  EXPECT_EQ(e.Find("code")->as_string(), "context_length_exceeded");
  EXPECT_EQ(e.Find("message")->as_string().rfind("prompt: 8321 tokens exceed", 0), 0u);
  e = error_of("/v1/chat/completions", chat);
  EXPECT_EQ(e.Find("param")->as_string(), "messages");
  EXPECT_EQ(e.Find("code")->as_string(), "context_length_exceeded");

  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "max_new_tokens: 200 new tokens after 8100 prompt tokens exceed the model's "
                               "max_position_embeddings 8192");
  EXPECT_EQ(error_of("/v1/completions", completion).Find("code")->as_string(), "context_length_exceeded");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "min_new_tokens: 5000 is out of range [0, 4096] (the server's --max-new-tokens)");
  e = error_of("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "min_tokens": 5000})");
  EXPECT_EQ(e.Find("param")->as_string(), "min_tokens");
  EXPECT_EQ(e.Find("message")->as_string(),
            "min_tokens: 5000 is out of range [0, 4096] (the server's --max-new-tokens)");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "stop[1]: 300 bytes, need 1 to 256");
  EXPECT_EQ(error_of("/v1/completions", completion).Find("param")->as_string(), "stop[1]");
  // A token id out of the vocabulary is named by its place in the prompt.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "token_ids[2]: 5000 is out of range [0, 128)");
  e = error_of("/v1/completions", R"({"prompt": [1, 2, 5000]})");
  EXPECT_EQ(e.Find("param")->as_string(), "prompt[2]");
  EXPECT_EQ(e.Find("message")->as_string(), "prompt[2]: 5000 is out of range [0, 128)");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sparsity.nz_ratio: 2 is out of range");
  EXPECT_EQ(error_of("/v1/completions", completion).Find("param")->as_string(), "seer_sparsity");
  // The alternatives are a completion's logprobs and a chat's top_logprobs;
  // the prompt's logprobs come only from a completion's echo.
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "logprobs: 21 is out of range [0, 20]");
  EXPECT_EQ(error_of("/v1/completions", completion).Find("param")->as_string(), "logprobs");
  e = error_of("/v1/chat/completions", chat);
  EXPECT_EQ(e.Find("param")->as_string(), "top_logprobs");
  EXPECT_EQ(e.Find("message")->as_string(), "top_logprobs: 21 is out of range [0, 20]");
  backend.error = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "prompt_logprobs: the prompt's 5000 positions with 1 alternatives may buffer 1.2 MiB");
  e = error_of("/v1/completions", completion);
  EXPECT_EQ(e.Find("param")->as_string(), "echo");
  EXPECT_EQ(e.Find("message")->as_string().rfind("echo: the prompt's 5000 positions", 0), 0u);
  backend.error = grpc::Status::OK;
}

// Values the HTTP layer refuses itself, in OpenAI's meanings: top_p outside
// [0, 1] (over gRPC 0 would mean 1, which the message must not say), a
// max_tokens no int32 holds (named as sent, not clamped), and a prompt larger
// than the gRPC server's receive limit: a prompt too long for the model (400,
// context_length_exceeded), not gRPC's "Received message larger than max"
// as a 429 that clients would retry.
TEST_F(OpenAiHttp, OutOfRangeValuesAndOversizePromptsAreTheRequestsFault) {
  auto error_of = [&](const std::string& body) {
    const JsonValue j = PostJson("/v1/completions", body, 400);
    const JsonValue* e = j.Find("error");
    JsonValue out = JsonValue::Object();
    if (e != nullptr) out = *e;
    if (out.Find("param") == nullptr) out.Set("param", JsonValue::String("<none>"));
    if (out.Find("message") == nullptr) out.Set("message", JsonValue::String("<none>"));
    return out;
  };
  JsonValue e = error_of(R"({"prompt": "x", "top_p": 2})");
  EXPECT_EQ(e.Find("param")->as_string(), "top_p");
  EXPECT_EQ(e.Find("message")->as_string(), "top_p: 2 is out of range [0, 1]");
  e = error_of(R"({"prompt": "x", "max_tokens": 1e12})");
  EXPECT_EQ(e.Find("param")->as_string(), "max_tokens");
  EXPECT_NE(e.Find("message")->as_string().find("1e+12"), std::string::npos) << e.Dump();
  const int calls = backend.calls.load();

  OpenAiHttpOptions o;
  o.listen = "127.0.0.1:0";
  o.model_name = "tiny-llama";
  o.max_request_bytes = 1000;
  auto small = OpenAiHttpServer::Start(o, &backend);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  const std::string long_prompt = std::string(2000, 'a');
  const std::string completion_body = R"({"prompt": ")" + long_prompt + R"("})";
  const std::string chat_body = R"({"messages": [{"role": "user", "content": ")" + long_prompt + R"("}]})";
  for (const auto& [path, body, field] :
       {std::tuple<std::string, std::string, std::string>{"/v1/completions", completion_body, "prompt"},
        {"/v1/chat/completions", chat_body, "messages"}}) {
    HttpReply r = Exchange((*small)->port(), "POST", path, body);
    EXPECT_EQ(r.status, 400) << r.body;
    StatusOr<JsonValue> j = JsonValue::Parse(r.body);
    ASSERT_TRUE(j.ok()) << r.body;
    ASSERT_TRUE(j->Find("error") && j->Find("error")->Find("param") && j->Find("error")->Find("code")) << r.body;
    EXPECT_EQ(j->Find("error")->Find("param")->as_string(), field);
    EXPECT_EQ(j->Find("error")->Find("code")->as_string(), "context_length_exceeded");
  }
  EXPECT_EQ(Exchange((*small)->port(), "POST", "/v1/completions", R"({"prompt": "short"})").status, 200);
  EXPECT_EQ(backend.calls.load(), calls + 1) << "the oversize prompts never reached Generate";
}

TEST_F(OpenAiHttp, ABodyShorterThanItsContentLengthIsRefused) {
  const std::string body = R"({"prompt": "hi"})";
  const int fd = SendRequest(server->port(),
                             "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             "Content-Length: 100\r\n\r\n" +
                                 body);
  ASSERT_GE(fd, 0);
  shutdown(fd, SHUT_WR);
  const HttpReply r = ReadReply(fd);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("Content-Length"), std::string::npos) << r.body;
  EXPECT_EQ(backend.calls.load(), 0);
}

// A client that closes its connection has its call cancelled at the next
// token, whether it asked for a stream or for the whole answer (which
// writes nothing before the end, so only the socket can tell).
TEST_F(OpenAiHttp, AClientThatLeavesHasItsCallCancelled) {
  backend.texts.assign(1000, "x");
  backend.token_delay = std::chrono::milliseconds(5);  // 5 s if nobody stops it
  int want_cancelled = 0;
  for (const char* stream : {"false", "true"}) {
    const int fd = SendRequest(
        server->port(), PostRequest("/v1/completions",
                                    std::string(R"({"prompt": "x", "max_tokens": 1000, "stream": )") + stream + "}"));
    ASSERT_GE(fd, 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (backend.calls.load() <= want_cancelled && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    close(fd);
    ++want_cancelled;
    while (backend.cancelled.load() < want_cancelled && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_EQ(backend.cancelled.load(), want_cancelled) << "stream: " << stream;
  }
  // The server goes on serving.
  backend.texts = {"ok"};
  backend.token_delay = std::chrono::milliseconds(0);
  const JsonValue out = PostJson("/v1/completions", R"({"prompt": "x"})", 200);
  EXPECT_EQ(out.Find("choices")->as_array()[0].Find("text")->as_string(), "ok");
}

// Drain: requests in flight answer in full, new ones are refused (503), and
// it returns once none is left, or false at its deadline.
TEST_F(OpenAiHttp, DrainLetsRequestsInFlightFinishAndRefusesNewOnes) {
  backend.texts.assign(40, "y");
  backend.token_delay = std::chrono::milliseconds(25);  // 1 s
  std::future<HttpReply> in_flight = std::async(std::launch::async, [&] {
    return Exchange(server->port(), "POST", "/v1/completions", R"({"prompt": "x", "max_tokens": 40})");
  });
  const auto started = std::chrono::steady_clock::now();
  while (backend.calls.load() == 0 && std::chrono::steady_clock::now() - started < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(backend.calls.load(), 1);
  // A deadline that passes first: false, with the request still running.
  EXPECT_FALSE(server->Drain(std::chrono::steady_clock::now() + std::chrono::milliseconds(20)));
  HttpReply refused = Exchange(server->port(), "POST", "/v1/completions", R"({"prompt": "x"})");
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_NE(refused.body.find("shutting down"), std::string::npos) << refused.body;
  EXPECT_EQ(backend.calls.load(), 1);
  EXPECT_TRUE(server->Drain(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  EXPECT_EQ(backend.finished.load(), 1) << "Drain returned before the request in flight had answered";
  const HttpReply done = in_flight.get();
  EXPECT_EQ(done.status, 200) << done.body;
  EXPECT_NE(done.body.find(std::string(40, 'y')), std::string::npos) << done.body;
}

// Every answer is counted by endpoint and status, the HTTP layer's own
// refusals (which never reach Generate) and clients that left included.
TEST_F(OpenAiHttp, AnswersAreCountedByEndpointAndStatus) {
  PostJson("/v1/completions", R"({"prompt": "x"})", 200);
  PostJson("/v1/completions", R"({"prompt": "x"})", 200);
  PostJson("/v1/completions", "{not json", 400);
  PostJson("/v1/chat/completions", R"({"messages": []})", 400);
  PostJson("/v1/completions", R"({"model": "gpt-4", "prompt": "x"})", 404);
  Exchange(server->port(), "GET", "/v1/models");
  Exchange(server->port(), "POST", "/v1/embeddings", "{}");
  backend.error = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "seer-decode: the queue is full");
  PostJson("/v1/completions", R"({"prompt": "x"})", 429);
  backend.error = grpc::Status::OK;
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="200",endpoint="completions"})"), 2);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="400",endpoint="completions"})"), 1);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="400",endpoint="chat_completions"})"), 1);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="404",endpoint="completions"})"), 1);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="200",endpoint="models"})"), 1);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="404",endpoint="other"})"), 1);
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="429",endpoint="completions"})"), 1);

  // A client that leaves a whole answer before it is written: 499.
  backend.texts.assign(1000, "x");
  backend.token_delay = std::chrono::milliseconds(5);
  const int fd = SendRequest(server->port(), PostRequest("/v1/completions", R"({"prompt": "x", "max_tokens": 1000})"));
  ASSERT_GE(fd, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  close(fd);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (Sample(R"(seer_http_requests_total{code="499",endpoint="completions"})") != 1 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Sample(R"(seer_http_requests_total{code="499",endpoint="completions"})"), 1);
}

}  // namespace
}  // namespace seer
