// What an operator relies on around the service, on the real binaries
// (loopback, port 0): the JSON request log, TLS and mutual TLS with
// certificate reload (a throwaway CA made with openssl at test time), the
// metrics an operator's dashboards need, --version, a port already in use,
// and the edge limits of issue 15 (a compressed request, a request above the
// largest valid one, too much metadata, malformed protobuf, idle connections
// on /metrics). References: the requests the test sent and the statuses and
// limits docs/SERVICE.md documents.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>

#include "base/json.h"
#include "rpc/grpc_status.h"
#include "rpc/load_metadata.h"
#include "rpc/requests.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/grpc_server.h"
#include "server/common/request_log.h"
#include "tests/server_test_util.h"
#include "tests/tls_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Bin;
using seer::testing::CommandResult;
using seer::testing::Metric;
using seer::testing::Path;
using seer::testing::Pki;
using seer::testing::RunCommand;
using seer::testing::ServerProcess;

std::vector<std::string> ServerArgs(std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                "--model",  Path("llama"), "--device",  "cpu"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// The JSON log lines of a server whose "msg" is `msg`.
std::vector<JsonValue> LogLines(const ServerProcess& p, const std::string& msg) {
  std::vector<JsonValue> out;
  for (const std::string& line : p.ErrLines()) {
    StatusOr<JsonValue> j = JsonValue::Parse(line);
    EXPECT_TRUE(j.ok()) << "a stderr line that is not JSON: " << line;
    if (j.ok() && j->Find("msg") && j->Find("msg")->as_string() == msg) out.push_back(*j);
  }
  return out;
}

std::string Str(const JsonValue& j, const char* key) {
  const JsonValue* v = j.Find(key);
  return v && v->type() == JsonValue::Type::kString ? v->as_string() : "<absent>";
}

double Num(const JsonValue& j, const char* key) {
  const JsonValue* v = j.Find(key);
  return v && v->type() == JsonValue::Type::kNumber ? v->as_double() : -1.0;
}

// VmHWM (peak resident memory) of a process, bytes.
int64_t PeakRss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmHWM:") {
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

// One call of a server-streaming method with a raw request body: the final
// status, and the response messages' count. `gzip` compresses the request.
grpc::Status RawCall(const std::string& address, const std::string& method, const grpc::ByteBuffer& request,
                     bool gzip = false, const std::multimap<std::string, std::string>& metadata = {},
                     int* responses = nullptr) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  if (gzip) ctx.set_compression_algorithm(GRPC_COMPRESS_GZIP);
  for (const auto& [k, v] : metadata) ctx.AddMetadata(k, v);
  auto call = stub.PrepareCall(&ctx, method, &cq);
  auto step = [&](intptr_t tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(got), tag);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  call->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  step(2);
  int n = 0;
  for (;;) {
    grpc::ByteBuffer in;
    call->Read(&in, reinterpret_cast<void*>(3));
    if (!step(3)) break;
    ++n;
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  step(4);
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {}
  if (responses) *responses = n;
  return status;
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Serialized(const google::protobuf::Message& m) {
  std::string s;
  m.SerializeToString(&s);
  return s;
}

constexpr char kPrefillMethod[] = "/seer.v1.PrefillService/Prefill";

// --- the request log ---------------------------------------------------------

TEST(Operations, EachRequestLogsOneJsonLineOnEachServer) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs({"--gates", Path("llama_gates")}));
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"), ServerArgs({"--prefill", prefill.grpc_address()}));
  ASSERT_TRUE(decode.Start());
  CommandResult ok = RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "1,2,3,4,5,6,7",
                                 "--max-new-tokens", "4", "--request-id", "log-ok", "--json"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult bad = RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "1,2,999",
                                  "--max-new-tokens", "4", "--request-id", "log-bad"});
  ASSERT_EQ(bad.exit_code, 1);
  CommandResult anonymous =
      RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "9,8", "--max-new-tokens", "2"});
  ASSERT_EQ(anonymous.exit_code, 0) << anonymous.err;
  ASSERT_TRUE(decode.WaitForErrLines({"\"msg\":\"request\""}, 3, 10s)) << decode.Output();
  ASSERT_TRUE(prefill.WaitForErrLines({"\"msg\":\"request\""}, 2, 10s)) << prefill.Output();

  const std::vector<JsonValue> d = LogLines(decode, "request"), p = LogLines(prefill, "request");
  ASSERT_EQ(d.size(), 3u) << decode.Output();
  ASSERT_EQ(p.size(), 2u) << prefill.Output();  // the bad request never reached the prefill
  const JsonValue& good = d[0];
  EXPECT_EQ(Str(good, "request_id"), "log-ok");
  EXPECT_EQ(Str(good, "code"), "OK");
  EXPECT_EQ(Str(good, "level"), "info");
  EXPECT_EQ(Str(good, "server"), "seer-decode");
  EXPECT_EQ(Str(good, "method"), "/seer.v1.DecodeService/Generate");
  EXPECT_EQ(Str(good, "peer").rfind("ipv4:127.0.0.1:", 0), 0u) << Str(good, "peer");
  EXPECT_EQ(Num(good, "prompt_tokens"), 7);
  EXPECT_EQ(Num(good, "generated_tokens"), 4);
  // 2 layers x K and V x 1 KV head x 64 x 4 bytes per prompt token.
  EXPECT_EQ(Num(good, "kv_bytes"), 7 * 2 * 2 * 64 * 4);
  EXPECT_GT(Num(good, "ttft_ms"), 0);
  EXPECT_GE(Num(good, "duration_ms"), Num(good, "ttft_ms"));
  EXPECT_GT(Num(good, "bytes_in"), 0);
  EXPECT_GT(Num(good, "bytes_out"), 0);
  EXPECT_EQ(Str(good, "prefill_endpoint"), prefill.grpc_address());
  // The prefill server's line carries the same request id (the decode
  // worker forwards it) and the KV it sent.
  EXPECT_EQ(Str(p[0], "request_id"), "log-ok");
  EXPECT_EQ(Str(p[0], "code"), "OK");
  EXPECT_EQ(Num(p[0], "prompt_tokens"), 7);
  EXPECT_EQ(Num(p[0], "kv_bytes"), 7 * 2 * 2 * 64 * 4);
  EXPECT_GE(Num(p[0], "prefill_ms"), 0);
  EXPECT_GE(Num(p[0], "queue_ms"), 0);

  const JsonValue& rejected = d[1];
  EXPECT_EQ(Str(rejected, "request_id"), "log-bad");
  EXPECT_EQ(Str(rejected, "code"), "INVALID_ARGUMENT");
  EXPECT_EQ(Str(rejected, "level"), "warning");
  EXPECT_NE(Str(rejected, "error").find("token_ids[2]"), std::string::npos) << Str(rejected, "error");

  // A request without an id gets one, the same on both servers.
  const std::string id = Str(d[2], "request_id");
  EXPECT_EQ(id.rfind("generate-", 0), 0u) << id;
  EXPECT_EQ(Str(p[1], "request_id"), id);

  // n choices are one line on each server: the tokens of every choice, and
  // each choice's finish.
  CommandResult three = RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "3,4,5",
                                    "--max-new-tokens", "4", "--n", "3", "--request-id", "log-n", "--json"});
  ASSERT_EQ(three.exit_code, 0) << three.err;
  ASSERT_TRUE(decode.WaitForErrLines({"\"msg\":\"request\""}, 4, 10s)) << decode.Output();
  const std::vector<JsonValue> after = LogLines(decode, "request");
  ASSERT_EQ(after.size(), 4u) << decode.Output();
  EXPECT_EQ(Str(after[3], "request_id"), "log-n");
  EXPECT_EQ(Num(after[3], "n"), 3);
  EXPECT_EQ(Num(after[3], "generated_tokens"), 12);
  ASSERT_NE(after[3].Find("finish_reasons"), nullptr) << decode.Output();
  EXPECT_EQ(after[3].Find("finish_reasons")->as_array().size(), 3u);
  ASSERT_TRUE(prefill.WaitForErrLines({"\"msg\":\"request\""}, 3, 10s)) << prefill.Output();
  EXPECT_EQ(LogLines(prefill, "request").size(), 3u) << "one prefill for the three choices";
}

// A request through the OpenAI HTTP API names its HTTP client as the peer on
// the request's log line, marked "via": "http"; a gRPC client that sends the
// same metadata without this process's token keeps its own peer. Reference:
// the port the test's own socket connected from.
TEST(Operations, HttpRequestsLogTheirHttpClientAsPeer) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"), ServerArgs({"--prefill", prefill.grpc_address(), "--http", "127.0.0.1:0"}));
  ASSERT_TRUE(decode.Start());
  int port = 0;
  StatusOr<std::string> answer =
      seer::testing::HttpRequest(decode.http_address(), "POST", "/v1/completions",
                                 R"({"prompt": [1, 2, 3], "max_tokens": 2, "user": "via-http"})", &port);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  ASSERT_GT(port, 0);

  v1::GenerateRequest spoof;
  spoof.set_request_id("spoofed");
  spoof.add_token_ids(1);
  spoof.set_max_new_tokens(1);
  const grpc::Status s = RawCall(decode.grpc_address(), "/seer.v1.DecodeService/Generate", Bytes(Serialized(spoof)),
                                 false, {{seer::kHttpClientMetadata, std::string(32, '0') + " ipv4:6.6.6.6:1"}});
  EXPECT_TRUE(s.ok()) << s.error_message();

  ASSERT_TRUE(decode.WaitForErrLines({"\"msg\":\"request\""}, 2, 10s)) << decode.Output();
  const std::vector<JsonValue> lines = LogLines(decode, "request");
  ASSERT_EQ(lines.size(), 2u) << decode.Output();
  EXPECT_EQ(Str(lines[0], "request_id"), "via-http");
  EXPECT_EQ(Str(lines[0], "peer"), "ipv4:127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(Str(lines[0], "via"), "http");
  EXPECT_EQ(Str(lines[1], "request_id"), "spoofed");
  EXPECT_EQ(Str(lines[1], "peer").rfind("ipv4:127.0.0.1:", 0), 0u) << Str(lines[1], "peer");
  EXPECT_EQ(Str(lines[1], "via"), "<absent>");
}

TEST(Operations, LogLevelWarnKeepsOnlyFailedRequests) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs({"--log-level", "warn"}));
  ASSERT_TRUE(prefill.Start());
  EXPECT_EQ(RunCommand({Bin("seer"), "prefill", "--addr", prefill.grpc_address(), "--ids", "1,2,3"}).exit_code, 0);
  EXPECT_EQ(RunCommand({Bin("seer"), "prefill", "--addr", prefill.grpc_address(), "--ids", "1,500"}).exit_code, 1);
  ASSERT_TRUE(prefill.WaitForErrLines({"\"msg\":\"request\""}, 1, 10s));
  const std::vector<JsonValue> lines = LogLines(prefill, "request");
  ASSERT_EQ(lines.size(), 1u) << prefill.Output();
  EXPECT_EQ(Str(lines[0], "code"), "INVALID_ARGUMENT");
  CommandResult bad = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--log-level", "loud"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--log-level"), std::string::npos) << bad.err;
}

// --- TLS and mutual TLS ------------------------------------------------------------

CommandResult Prefill(const std::string& addr, std::vector<std::string> tls) {
  std::vector<std::string> args = {Bin("seer"), "prefill", "--addr", addr, "--ids", "1,2,3,4", "--timeout", "10"};
  args.insert(args.end(), tls.begin(), tls.end());
  return RunCommand(args);
}

TEST(Operations, TlsServesOnlyClientsThatTrustItsCa) {
  Pki pki("tls");
  ServerProcess prefill(Bin("seer-prefill"),
                        ServerArgs({"--tls-cert", pki.F("a-server.crt"), "--tls-key", pki.F("a-server.key")}));
  ASSERT_TRUE(prefill.Start());
  const std::string addr = prefill.grpc_address();
  CommandResult ok = Prefill(addr, {"--tls-ca", pki.F("a-ca.crt")});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult plaintext = Prefill(addr, {});
  EXPECT_EQ(plaintext.exit_code, 1);
  EXPECT_NE(plaintext.err.find("UNAVAILABLE"), std::string::npos) << plaintext.err;
  CommandResult wrong_ca = Prefill(addr, {"--tls-ca", pki.F("b-ca.crt")});
  EXPECT_EQ(wrong_ca.exit_code, 1);
  EXPECT_NE(wrong_ca.err.find("UNAVAILABLE"), std::string::npos) << wrong_ca.err;
  // The certificate names localhost and 127.0.0.1; any other name fails.
  CommandResult by_name = Prefill("localhost:" + addr.substr(addr.rfind(':') + 1), {"--tls-ca", pki.F("a-ca.crt")});
  EXPECT_EQ(by_name.exit_code, 0) << by_name.err;
}

// A probe's body when it answers 200, else the error (e.g. "UNAVAILABLE: HTTP
// status: HTTP/1.1 503 Service Unavailable").
std::string Probe(const std::string& metrics_address, const std::string& path) {
  StatusOr<std::string> body = seer::testing::HttpGet(metrics_address, path);
  return body.ok() ? *body : body.status().ToString();
}

// GET /readyz until it answers 503 (health checks fail twice before an
// endpoint is down), for up to 10 s; the last answer.
std::string ReadyzOnceNotReady(const std::string& metrics_address) {
  std::string readyz;
  for (int i = 0; i < 100 && (readyz = Probe(metrics_address, "/readyz")).find(" 503 ") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return readyz;
}

TEST(Operations, MutualTlsNeedsAClientCertificateFromItsCa) {
  Pki pki("mtls");
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs({"--tls-cert", pki.F("a-server.crt"), "--tls-key",
                                                         pki.F("a-server.key"), "--tls-client-ca", pki.F("a-ca.crt")}));
  ASSERT_TRUE(prefill.Start());
  const std::string addr = prefill.grpc_address();
  const std::vector<std::string> with_client = {"--tls-ca",  pki.F("a-ca.crt"),    "--tls-cert", pki.F("a-client.crt"),
                                                "--tls-key", pki.F("a-client.key")};
  CommandResult ok = Prefill(addr, with_client);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult no_cert = Prefill(addr, {"--tls-ca", pki.F("a-ca.crt")});
  EXPECT_EQ(no_cert.exit_code, 1);
  EXPECT_NE(no_cert.err.find("UNAVAILABLE"), std::string::npos) << no_cert.err;
  CommandResult other_ca_cert = Prefill(
      addr, {"--tls-ca", pki.F("a-ca.crt"), "--tls-cert", pki.F("b-client.crt"), "--tls-key", pki.F("b-client.key")});
  EXPECT_EQ(other_ca_cert.exit_code, 1);
  EXPECT_NE(other_ca_cert.err.find("UNAVAILABLE"), std::string::npos) << other_ca_cert.err;

  // seer-decode calls the prefill over mTLS and serves its own clients over
  // TLS; the tokens are those of the plaintext path.
  ServerProcess decode(Bin("seer-decode"),
                       ServerArgs({"--prefill", addr, "--prefill-tls-ca", pki.F("a-ca.crt"), "--prefill-tls-cert",
                                   pki.F("a-client.crt"), "--prefill-tls-key", pki.F("a-client.key"), "--tls-cert",
                                   pki.F("a-server.crt"), "--tls-key", pki.F("a-server.key")}));
  ASSERT_TRUE(decode.Start());
  CommandResult gen = RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "5,6,7,8",
                                  "--max-new-tokens", "3", "--tls-ca", pki.F("a-ca.crt"), "--json"});
  ASSERT_EQ(gen.exit_code, 0) << gen.err << decode.Output();
  CommandResult run = RunCommand({Bin("seer"), "run", "--model", Path("llama"), "--ids", "5,6,7,8", "--max-new-tokens",
                                  "3", "--json", "--device", "cpu"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  StatusOr<JsonValue> g = JsonValue::Parse(gen.out), r = JsonValue::Parse(run.out);
  ASSERT_TRUE(g.ok() && r.ok());
  ASSERT_TRUE(g->Find("tokens") && r->Find("tokens"));
  EXPECT_EQ(g->Find("tokens")->Dump(), r->Find("tokens")->Dump());
  // The probes on the plaintext metrics port (kubelet's gRPC probes take no
  // TLS): ready once the model is loaded and a prefill answers.
  EXPECT_EQ(Probe(prefill.metrics_address(), "/readyz"), "ready\n");
  EXPECT_EQ(Probe(decode.metrics_address(), "/readyz"), "ready\n");
  EXPECT_EQ(Probe(decode.metrics_address(), "/livez"), "ok\n");
  // A decode worker without a client certificate cannot reach the prefill:
  // its health, and so /readyz, turns NOT_SERVING after the failed checks.
  ServerProcess no_mtls(Bin("seer-decode"), ServerArgs({"--prefill", addr, "--prefill-tls-ca", pki.F("a-ca.crt")}));
  ASSERT_TRUE(no_mtls.Start());
  const std::string readyz = ReadyzOnceNotReady(no_mtls.metrics_address());
  EXPECT_NE(readyz.find("HTTP/1.1 503"), std::string::npos) << readyz;
  EXPECT_EQ(Probe(no_mtls.metrics_address(), "/livez"), "ok\n");
  CommandResult refused = RunCommand({Bin("seer"), "generate", "--addr", no_mtls.grpc_address(), "--ids", "5,6",
                                      "--max-new-tokens", "2", "--timeout", "20"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("UNAVAILABLE"), std::string::npos) << refused.err;
}

TEST(Operations, ARenewedCertificateIsServedWithoutARestart) {
  Pki pki("reload");
  const std::string cert = pki.F("live.crt"), key = pki.F("live.key");
  std::filesystem::copy_file(pki.F("a-server.crt"), cert);
  std::filesystem::copy_file(pki.F("a-server.key"), key);
  ServerProcess prefill(Bin("seer-prefill"),
                        ServerArgs({"--tls-cert", cert, "--tls-key", key, "--tls-reload-seconds", "1"}));
  ASSERT_TRUE(prefill.Start());
  const std::string addr = prefill.grpc_address();
  EXPECT_EQ(Prefill(addr, {"--tls-ca", pki.F("a-ca.crt")}).exit_code, 0);
  EXPECT_EQ(Prefill(addr, {"--tls-ca", pki.F("b-ca.crt")}).exit_code, 1);
  // Swap in a certificate from CA b (as a Secret update would).
  std::filesystem::copy_file(pki.F("b-server.key"), key + ".new");
  std::filesystem::copy_file(pki.F("b-server.crt"), cert + ".new");
  std::filesystem::rename(key + ".new", key);
  std::filesystem::rename(cert + ".new", cert);
  bool switched = false;
  for (int i = 0; i < 40 && !switched; ++i) {
    std::this_thread::sleep_for(250ms);
    switched = Prefill(addr, {"--tls-ca", pki.F("b-ca.crt")}).exit_code == 0;
  }
  EXPECT_TRUE(switched) << "the new certificate was not served within 10 s";
  EXPECT_EQ(Prefill(addr, {"--tls-ca", pki.F("a-ca.crt")}).exit_code, 1);
}

// Bad values of the servers' flags stop them at once (exit 2), naming the
// flag: a duration that is not a finite number of seconds in range, an
// argument that is not a flag.
TEST(Operations, ServerFlagsAreChecked) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--drain-seconds", "inf"}, "--drain-seconds: expected a finite number, got 'inf'"},
      {{"--drain-seconds", "-5"}, "--drain-seconds: -5 seconds is out of range"},
      {{"--write-stall-seconds", "1e300"}, "--write-stall-seconds: 1e300 seconds is out of range"},
      {{"stray"}, "unexpected argument 'stray'"},
      {{"--max-queue", "4294967296"}, "--max-queue: 4294967296 is out of range [0, 100000]"},
      {{"--threads", "100000"}, "--threads: 100000 is out of range [0, 4096]"},
  };
  for (const char* server : {"seer-prefill", "seer-decode"}) {
    for (const Case& c : cases) {
      std::vector<std::string> cmd = {Bin(server), "--model", Path("llama")};
      cmd.insert(cmd.end(), c.args.begin(), c.args.end());
      CommandResult r = RunCommand(cmd);
      EXPECT_EQ(r.exit_code, 2) << server << " " << c.args[0] << ": " << r.err;
      EXPECT_NE(r.err.find(c.says), std::string::npos) << server << ": " << r.err;
    }
  }
  // Chunks larger than a decode worker accepts would fail every request.
  CommandResult chunks = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--chunk-bytes", "134217728"});
  EXPECT_EQ(chunks.exit_code, 2) << chunks.err;
  EXPECT_NE(chunks.err.find("--chunk-bytes: 134217728 is out of range [65536, 67108864]"), std::string::npos)
      << chunks.err;
  CommandResult timeout = RunCommand(
      {Bin("seer-decode"), "--model", Path("llama"), "--prefill", "127.0.0.1:1", "--prefill-timeout", "nan"});
  EXPECT_EQ(timeout.exit_code, 2) << timeout.err;
  EXPECT_NE(timeout.err.find("--prefill-timeout: expected a finite number"), std::string::npos) << timeout.err;
  // Refused before the ports bind, as usage errors (exit 2), not after them
  // as a failed start (exit 1).
  const std::vector<std::pair<std::vector<std::string>, std::string>> early = {
      {{Bin("seer-prefill"), "--model", Path("llama"), "--device", "gpu"}, "--device: expected cpu, cuda"},
      {{Bin("seer-decode"), "--model", Path("llama"), "--prefill", "127.0.0.1:1", "--device", "gpu"},
       "--device: expected cpu, cuda"},
      {{Bin("seer-prefill"), "--model", Path("llama"), "--gates", "/nonexistent"}, "--gates: '/nonexistent'"},
      {{Bin("seer-decode"), "--model", Path("llama"), "--prefill", "127.0.0.1:1", "--tokenizer", "/nonexistent"},
       "--tokenizer: '/nonexistent' does not exist"},
      {{Bin("seer-prefill"), "--model", Path("llama"), "--listen", "127.0.0.1:99999"}, "--listen"},
      {{Bin("seer-decode"), "--model", Path("llama"), "--prefill", "127.0.0.1:1", "--http", "127.0.0.1:99999"},
       "--http"},
  };
  for (const auto& [cmd, says] : early) {
    CommandResult r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 2) << cmd[0] << " " << says << ": " << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
  }
  CommandResult client =
      RunCommand({Bin("seer"), "generate", "--addr", "127.0.0.1:1", "--ids", "1", "--timeout", "-1"});
  EXPECT_EQ(client.exit_code, 2) << client.err;
  EXPECT_NE(client.err.find("--timeout: -1 seconds is out of range"), std::string::npos) << client.err;
}

TEST(Operations, TlsFlagsAreChecked) {
  Pki pki("tls_flags");
  CommandResult half = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--tls-cert", pki.F("a-server.crt")});
  EXPECT_EQ(half.exit_code, 2);
  EXPECT_NE(half.err.find("--tls-key"), std::string::npos) << half.err;
  CommandResult missing = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--tls-cert", pki.F("nope.crt"),
                                      "--tls-key", pki.F("a-server.key")});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("--tls-cert"), std::string::npos) << missing.err;
  // A key of another pair: refused at start, not "ready" with every
  // handshake failing.
  CommandResult mismatched = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--tls-cert",
                                         pki.F("a-server.crt"), "--tls-key", pki.F("a-client.key")});
  EXPECT_EQ(mismatched.exit_code, 2);
  EXPECT_NE(mismatched.err.find("--tls-key: '" + pki.F("a-client.key") + "' is not the private key of --tls-cert"),
            std::string::npos)
      << mismatched.err;
  CommandResult client = RunCommand({Bin("seer"), "prefill", "--addr", "127.0.0.1:1", "--ids", "1", "--tls-cert",
                                     pki.F("a-client.crt"), "--tls-key", pki.F("a-client.key")});
  EXPECT_EQ(client.exit_code, 2);
  EXPECT_NE(client.err.find("--tls-ca"), std::string::npos) << client.err;
  CommandResult metrics_tls = RunCommand({Bin("seer-prefill"), "--model", Path("llama"), "--metrics-tls"});
  EXPECT_EQ(metrics_tls.exit_code, 2);
  EXPECT_NE(metrics_tls.err.find("--metrics-tls needs --tls-cert"), std::string::npos) << metrics_tls.err;
}

// /metrics (with --metrics-tls) and the OpenAI HTTP API take the gRPC port's
// certificate; the HTTP API asks for client certificates under
// --tls-client-ca as the gRPC port does, /metrics never (probes have none).
// References: the plaintext servers' answers (the same process's gRPC
// health, the model list the fixture names).
TEST(Operations, MetricsAndTheHttpApiServeTheGrpcCertificate) {
  Pki pki("https");
  const std::vector<std::string> server_tls = {"--tls-cert", pki.F("a-server.crt"), "--tls-key", pki.F("a-server.key")};
  std::vector<std::string> prefill_args = server_tls;
  prefill_args.push_back("--metrics-tls");
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs(prefill_args));
  ASSERT_TRUE(prefill.Start());
  const seer::testing::TlsClientFiles trust_a{pki.F("a-ca.crt")};
  StatusOr<std::string> metrics = seer::testing::HttpsGet(prefill.metrics_address(), "/metrics", trust_a);
  ASSERT_TRUE(metrics.ok()) << metrics.status().ToString();
  EXPECT_NE(metrics->find("seer_build_info{"), std::string::npos);
  StatusOr<std::string> readyz = seer::testing::HttpsGet(prefill.metrics_address(), "/readyz", trust_a);
  ASSERT_TRUE(readyz.ok()) << readyz.status().ToString();
  EXPECT_EQ(*readyz, "ready\n");
  EXPECT_FALSE(seer::testing::HttpsGet(prefill.metrics_address(), "/livez", {pki.F("b-ca.crt")}).ok());
  // A plaintext scrape is told what the port speaks.
  EXPECT_NE(Probe(prefill.metrics_address(), "/livez").find("400 Bad Request"), std::string::npos);

  // seer-decode: mutual TLS on gRPC and on the HTTP API; /metrics stays
  // plaintext without --metrics-tls.
  std::vector<std::string> decode_args = server_tls;
  for (const std::string& a :
       {std::string("--tls-client-ca"), pki.F("a-ca.crt"), std::string("--prefill"), prefill.grpc_address(),
        std::string("--prefill-tls-ca"), pki.F("a-ca.crt"), std::string("--http"), std::string("127.0.0.1:0")}) {
    decode_args.push_back(a);
  }
  ServerProcess decode(Bin("seer-decode"), ServerArgs(decode_args));
  ASSERT_TRUE(decode.Start());
  const std::string http = decode.http_address();
  ASSERT_FALSE(http.empty()) << decode.Output();
  StatusOr<std::string> models =
      seer::testing::HttpsGet(http, "/v1/models", {pki.F("a-ca.crt"), pki.F("a-client.crt"), pki.F("a-client.key")});
  ASSERT_TRUE(models.ok()) << models.status().ToString();
  EXPECT_NE(models->find("\"id\":\"llama\""), std::string::npos) << *models;
  EXPECT_FALSE(seer::testing::HttpsGet(http, "/v1/models", trust_a).ok());  // no client certificate
  // Behind the TLS front the request log still names the HTTPS client.
  int client_port = 0;
  StatusOr<std::string> completion = seer::testing::HttpsRequest(
      http, "POST", "/v1/completions", R"({"prompt": [1, 2], "max_tokens": 1, "user": "via-https"})",
      {pki.F("a-ca.crt"), pki.F("a-client.crt"), pki.F("a-client.key")}, &client_port);
  ASSERT_TRUE(completion.ok()) << completion.status().ToString();
  ASSERT_TRUE(decode.WaitForErrLines({"\"request_id\":\"via-https\""}, 1, 10s)) << decode.Output();
  for (const JsonValue& line : LogLines(decode, "request")) {
    if (Str(line, "request_id") != "via-https") continue;
    EXPECT_EQ(Str(line, "peer"), "ipv4:127.0.0.1:" + std::to_string(client_port));
    EXPECT_EQ(Str(line, "via"), "http");
  }
  EXPECT_EQ(Probe(decode.metrics_address(), "/livez"), "ok\n");

  // --http-plaintext-with-tls: TLS ends in front of the HTTP port.
  decode_args.push_back("--http-plaintext-with-tls");
  ServerProcess plain(Bin("seer-decode"), ServerArgs(decode_args));
  ASSERT_TRUE(plain.Start());
  StatusOr<std::string> plain_models = seer::testing::HttpGet(plain.http_address(), "/v1/models");
  ASSERT_TRUE(plain_models.ok()) << plain_models.status().ToString();
  // The same list but for "created" (each process's start time).
  auto without_created = [](std::string body) {
    const size_t at = body.find("\"created\":");
    return at == std::string::npos ? body : body.erase(at, body.find(',', at) - at);
  };
  EXPECT_EQ(without_created(*plain_models), without_created(*models));
}

// A prefill server of another checkpoint (here: the fixture with one weight
// byte changed) is a deployment fault, not the caller's: the decode worker's
// health asks for its own model's name, so it turns NOT_SERVING (/readyz
// 503) with the reason, and a request still sent ends UNAVAILABLE (retryable
// elsewhere, counted by the error-ratio alert) naming the fingerprints, not
// FAILED_PRECONDITION (HTTP 400, "your request is wrong"). Reference: the same
// pair on the unchanged fixture serves (the other tests).
TEST(Operations, APrefillOfAnotherModelMakesTheDecodeWorkerUnready) {
  const std::string other = seer::testing::TempDir("other_model");
  std::filesystem::copy(Path("llama"), other, std::filesystem::copy_options::recursive);
  {
    std::fstream f(other + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-7, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-7, std::ios::end);
    c = static_cast<char>(c ^ 0x01);
    f.write(&c, 1);
  }
  std::vector<std::string> prefill_args = ServerArgs();
  prefill_args[5] = other;  // --model
  ServerProcess prefill(Bin("seer-prefill"), prefill_args);
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"),
                       ServerArgs({"--prefill", prefill.grpc_address(), "--http", "127.0.0.1:0"}));
  ASSERT_TRUE(decode.Start());
  const std::string readyz = ReadyzOnceNotReady(decode.metrics_address());
  EXPECT_NE(readyz.find("HTTP/1.1 503"), std::string::npos) << readyz;
  EXPECT_TRUE(decode.WaitForErrLines({"no prefill endpoint can serve", "serves another model"}, 1, 5s))
      << decode.Output();
  CommandResult refused = RunCommand({Bin("seer"), "generate", "--addr", decode.grpc_address(), "--ids", "5,6",
                                      "--max-new-tokens", "2", "--timeout", "20"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("UNAVAILABLE"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("model_fingerprint"), std::string::npos) << refused.err;
  StatusOr<std::string> http = seer::testing::HttpRequest(decode.http_address(), "POST", "/v1/completions",
                                                          R"({"prompt": [5, 6], "max_tokens": 2})");
  ASSERT_FALSE(http.ok());
  EXPECT_NE(http.status().message().find(" 503 "), std::string::npos) << http.status().ToString();
  std::filesystem::remove_all(other);
}

// --- metrics, version, ports -------------------------------------------------

TEST(Operations, MetricsHaveLoadMemoryProcessAndBuildSeriesFromTheStart) {
  ServerProcess prefill(Bin("seer-prefill"),
                        ServerArgs({"--max-concurrent", "2", "--max-buffered-bytes", "100000000"}));
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"), ServerArgs({"--prefill", prefill.grpc_address()}));
  ASSERT_TRUE(decode.Start());
  auto p = seer::testing::Scrape(prefill.metrics_address());
  auto d = seer::testing::Scrape(decode.metrics_address());
  ASSERT_TRUE(p.ok() && d.ok());
  for (const char* code : {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED", "DATA_LOSS"}) {
    EXPECT_EQ(Metric(*p, std::string("seer_prefill_requests_total{code=\"") + code + "\"}"), 0) << code;
    EXPECT_EQ(Metric(*d, std::string("seer_decode_requests_total{code=\"") + code + "\"}"), 0) << code;
  }
  for (const auto* m : {&*p, &*d}) {
    EXPECT_GT(Metric(*m, "process_resident_memory_bytes"), 1e6);
    EXPECT_GT(Metric(*m, "process_open_fds"), 3);
    EXPECT_GT(Metric(*m, "process_max_fds"), 3);
    EXPECT_GT(Metric(*m, "process_start_time_seconds"), 1.7e9);
    EXPECT_GE(Metric(*m, "process_cpu_seconds_total"), 0);
    EXPECT_EQ(Metric(*m, "seer_kv_cache_bytes"), 0);
    bool build_info = false;
    for (const auto& [key, value] : *m)
      build_info = build_info || (key.rfind("seer_build_info{", 0) == 0 && value == 1);
    EXPECT_TRUE(build_info);
  }
  // The prefill: --max-buffered-bytes, which its streams' KV caches are
  // charged against (they outlive their --max-concurrent slots while their
  // clients read them). The decode worker: its KV page pool, 256 MiB on the
  // CPU, in pages of 64 positions of the fixture's layout (2 layers x K and V
  // x 1 KV head x 64 x 4 bytes a position).
  EXPECT_EQ(Metric(*p, "seer_kv_cache_capacity_bytes"), 100000000);
  EXPECT_EQ(Metric(*p, "seer_stream_max_buffered_bytes"), 100000000);
  EXPECT_EQ(Metric(*d, "seer_stream_max_buffered_bytes"), 256 << 20);  // seer-decode's default
  EXPECT_EQ(Metric(*p, "seer_stream_buffered_bytes"), 0);
  EXPECT_EQ(Metric(*d, "seer_stream_buffered_bytes"), 0);
  const double page_bytes = 2.0 * 2 * 64 * 4 * 64;
  EXPECT_EQ(Metric(*d, "seer_kv_pages_total"), std::floor((256 << 20) / page_bytes));
  EXPECT_EQ(Metric(*d, "seer_kv_pages_used"), 0);
  EXPECT_EQ(Metric(*d, "seer_kv_cache_capacity_bytes"), Metric(*d, "seer_kv_pages_total") * page_bytes);
  EXPECT_EQ(Metric(*p, "seer_prefill_queued_requests"), 0);
  EXPECT_EQ(Metric(*p, "seer_prefill_running_requests"), 0);
  EXPECT_EQ(Metric(*d, "seer_decode_queued_requests"), 0);
  EXPECT_EQ(Metric(*d, "seer_decode_running_requests"), 0);
  EXPECT_EQ(Metric(*d, "seer_decode_inflight_requests"), 0);
}

TEST(Operations, PrefillResponsesCarryTheServersLoad) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs({"--max-concurrent", "3", "--max-queue", "5"}));
  ASSERT_TRUE(prefill.Start());
  auto stub =
      v1::PrefillService::NewStub(grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials()));
  // The refused request first: after a valid one, that one's worker slot may
  // not be released yet when the next request's headers go out.
  for (bool valid : {false, true}) {
    v1::PrefillRequest req;
    req.add_token_ids(valid ? 1 : 1000);
    grpc::ClientContext ctx;
    auto reader = stub->Prefill(&ctx, req);
    v1::PrefillResponse msg;
    while (reader->Read(&msg)) {}
    EXPECT_EQ(reader->Finish().ok(), valid);
    const auto& md = ctx.GetServerInitialMetadata();
    auto get = [&](const char* key) {
      auto it = md.find(key);
      return it == md.end() ? std::string("<absent>") : std::string(it->second.data(), it->second.size());
    };
    EXPECT_EQ(get("seer-max-concurrent"), "3");
    EXPECT_EQ(get("seer-max-queue"), "5");
    // A snapshot when the response's headers go out: with the layout header
    // an admitted request queues at once, but its one-token prefill may have
    // finished before the reactor starts that write, so it is 0 or 1; a
    // refused request never held or waited for a slot.
    const int64_t depth = ReportedQueueDepth(md);
    const std::string seen = "seer-running " + get("seer-running") + ", seer-queued " + get("seer-queued");
    if (valid) {
      EXPECT_TRUE(depth == 0 || depth == 1) << seen;
    } else {
      EXPECT_EQ(depth, 0) << seen;
    }
  }
}

TEST(Operations, EveryBinaryPrintsItsVersion) {
  for (const char* bin : {"seer-prefill", "seer-decode"}) {
    CommandResult r = RunCommand({Bin(bin), "--version"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.rfind(std::string(bin) + " ", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("commit "), std::string::npos) << r.out;
  }
  CommandResult r = RunCommand({Bin("seer"), "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("seer ", 0), 0u) << r.out;
  // The tools: trainer, evaluation, checkpoint maker, benchmarks.
  for (const char* bin : {"seer-train", "seer-quality-eval", "seer-random-checkpoint", "seer-kv-wire-error",
                          "seer-kv-stream-bench"}) {
    CommandResult t = RunCommand({Bin(bin), "--version"});
    EXPECT_EQ(t.exit_code, 0) << bin << ": " << t.err;
    EXPECT_EQ(t.out.rfind(std::string(bin) + " ", 0), 0u) << t.out;
    EXPECT_NE(t.out.find("commit "), std::string::npos) << t.out;
  }
}

// seer-random-checkpoint: a bad flag is named; a directory is kept only when
// everything that made it (gates directory and shard size included) is the
// same, and a rewrite leaves no shard of the earlier layout behind.
TEST(Operations, TheRandomCheckpointKeepsOnlyWhatItWouldWrite) {
  for (const auto& [flag, value] : {std::pair<const char*, const char*>{"--layers", "-1"},
                                    {"--shape", "small"},
                                    {"--shard-mb", "0"},
                                    {"--threads", "-2"}}) {
    CommandResult r = RunCommand({Bin("seer-random-checkpoint"), "--out", "/tmp/unused", flag, value});
    EXPECT_EQ(r.exit_code, 2) << flag;
    EXPECT_NE(r.err.find(std::string(flag) + ":"), std::string::npos) << r.err;
  }
  const std::string dir = seer::testing::TempDir("random_checkpoint");
  const std::string model = dir + "/model", a = dir + "/gates_a", b = dir + "/gates_b";
  auto make = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {Bin("seer-random-checkpoint"), "--out", model, "--shape", "tiny"};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCommand(args);
  };
  CommandResult first = make({"--gates-out", a});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(make({"--gates-out", a}).out.find("kept"), std::string::npos) << "the same run keeps the directory";
  CommandResult other = make({"--gates-out", b});
  ASSERT_EQ(other.exit_code, 0) << other.err;
  EXPECT_EQ(other.out.find("kept"), std::string::npos) << "another gates directory is written: " << other.out;
  EXPECT_TRUE(std::filesystem::exists(b + "/attn_gate_weights.safetensors"));
  CommandResult sharded = make({"--shard-mb", "1"});
  ASSERT_EQ(sharded.exit_code, 0) << sharded.err;
  int shards = 0;
  for (const auto& e : std::filesystem::directory_iterator(model)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("model-")) {
      ++shards;
      EXPECT_EQ(name.find("-of-00001"), std::string::npos) << "a shard of the one-file layout is left: " << name;
    }
  }
  EXPECT_GT(shards, 1);
  CommandResult run = RunCommand({Bin("seer"), "run", "--model", model, "--ids", "1,2,3", "--max-new-tokens", "2"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  // A directory it did not write (a real checkpoint, say) is refused, untouched.
  const std::string foreign = dir + "/foreign";
  std::filesystem::create_directories(foreign);
  std::ofstream(foreign + "/model-00001-of-00002.safetensors") << "x";
  CommandResult refused = RunCommand({Bin("seer-random-checkpoint"), "--out", foreign, "--shape", "tiny"});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("was not written by seer-random-checkpoint"), std::string::npos) << refused.err;
  EXPECT_TRUE(std::filesystem::exists(foreign + "/model-00001-of-00002.safetensors"));
  std::filesystem::remove_all(dir);
}

// Every benchmark says what it does and what its flags mean on --help (exit
// 0), and refuses a flag it does not know (exit 2, pointing at --help)
// before it touches a GPU. The CUDA ones exist only in builds with CUDA,
// where they must.
TEST(Operations, EveryBenchmarkExplainsItsFlags) {
  struct Bench {
    const char* name;
    bool cuda;
  };
  const Bench benches[] = {
      {"seer-kv-stream-bench", false}, {"seer-prefill-bench", true},   {"seer-decode-bench", true},
      {"seer-gemm-bench", true},       {"seer-attention-bench", true}, {"seer-gemm-sm90-bench", true},
      {"seer-l2-read-bench", true},    {"seer-pool-rate-bench", true}, {"seer-distill-target-bench", true},
      {"seer-kv-quant-bench", true},   {"seer-nccl-kv-bench", true},   {"seer-guide-bench", false},
  };
  int checked = 0;
  for (const Bench& b : benches) {
    if (!std::filesystem::exists(Bin(b.name))) {
#if defined(SEER_TEST_CUDA_BENCHES)
      // seer-nccl-kv-bench needs NCCL as well as CUDA.
      EXPECT_TRUE(!b.cuda || std::string(b.name) == "seer-nccl-kv-bench") << b.name << " was not built";
#else
      EXPECT_TRUE(b.cuda) << b.name << " was not built";
#endif
      continue;
    }
    CommandResult help = RunCommand({Bin(b.name), "--help"});
    EXPECT_EQ(help.exit_code, 0) << b.name << ": " << help.err;
    const std::string out = help.out;
    const bool usage = out.rfind("usage: " + std::string(b.name), 0) == 0 || out.rfind("Usage: ", 0) == 0;
    EXPECT_TRUE(usage) << b.name << " --help printed:\n" << out;
    EXPECT_GT(std::count(out.begin(), out.end(), '\n'), 4) << b.name << " --help explains nothing:\n" << out;
    CommandResult bad = RunCommand({Bin(b.name), "--no-such-flag"});
    EXPECT_EQ(bad.exit_code, 2) << b.name << ": " << bad.out << bad.err;
    EXPECT_NE(bad.err.find("no-such-flag"), std::string::npos) << b.name << ": " << bad.err;
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// seer-kv-stream-bench's data paths on a small odd shape: every row checks
// what it received byte for byte against its source and says so in --json;
// the process fails (exit 1) when one does not match.
TEST(Operations, KvStreamBenchMovesEveryByteOnEveryPath) {
  CommandResult r =
      RunCommand({Bin("seer-kv-stream-bench"), "--layers", "3", "--kv-heads", "2", "--head-dim", "64", "--tokens",
                  "777", "--chunk-bytes", "65536", "--streams", "3", "--repeats", "2", "--json"},
                 120s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  StatusOr<JsonValue> j = JsonValue::Parse(r.out);
  ASSERT_TRUE(j.ok()) << r.out;
  EXPECT_EQ(Num(*j, "streams"), 3);
  EXPECT_EQ(Num(*j, "bytes"), 2.0 * 3 * 2 * 64 * 777 * 4);
  for (const char* key : {"raw_tcp_verified", "raw_tcp_via_buffers_verified", "grpc_verified", "lock_order_checks"}) {
    const JsonValue* v = j->Find(key);
    ASSERT_TRUE(v != nullptr && v->is_bool()) << key << " in " << r.out;
    EXPECT_EQ(v->as_bool(), std::string(key) != "lock_order_checks") << key;
  }
  for (const char* key :
       {"raw_tcp_gbps", "raw_tcp_via_buffers_gbps", "raw_tcp_ring_gbps", "grpc_gbps", "grpc_protobuf_1_stream_gbps"})
    EXPECT_GT(Num(*j, key), 0.0) << key;
}

TEST(Operations, AGrpcPortAlreadyInUseIsRefused) {
  ServerProcess first(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(first.Start());
  const std::string port = first.grpc_address().substr(first.grpc_address().rfind(':') + 1);
  CommandResult second = RunCommand({Bin("seer-prefill"), "--listen", "127.0.0.1:" + port, "--metrics", "127.0.0.1:0",
                                     "--model", Path("llama"), "--device", "cpu"},
                                    30s);
  EXPECT_EQ(second.exit_code, 1) << second.out << second.err;
  EXPECT_NE(second.err.find("cannot bind"), std::string::npos) << second.err;
  const std::string mport = first.metrics_address().substr(first.metrics_address().rfind(':') + 1);
  CommandResult third = RunCommand({Bin("seer-prefill"), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:" + mport,
                                    "--model", Path("llama"), "--device", "cpu"},
                                   30s);
  EXPECT_EQ(third.exit_code, 1) << third.out << third.err;
  EXPECT_NE(third.err.find("--metrics"), std::string::npos) << third.err;
}

// --- issue 15's edge findings -----------------------------------------------------

// (3) A small gzip body must not inflate past the receive bound: 256 MiB of
// zeros (a quarter MB compressed) used to be inflated in full before it was
// refused. Compressed requests are now refused before their message is read.
TEST(EdgeLimits, ACompressedRequestIsRefusedWithoutInflatingIt) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  static const std::vector<char> zeros(1 << 20, 0);
  std::vector<grpc::Slice> slices;
  for (int i = 0; i < 256; ++i) slices.emplace_back(zeros.data(), zeros.size(), grpc::Slice::STATIC_SLICE);
  const grpc::ByteBuffer body(slices.data(), slices.size());
  const int64_t before = PeakRss(prefill.pid());
  const grpc::Status s = RawCall(prefill.grpc_address(), kPrefillMethod, body, /*gzip=*/true);
  const int64_t after = PeakRss(prefill.pid());
  std::printf("[ info     ] peak RSS %.1f MiB before, %.1f MiB after a gzip request of 256 MiB; %s: %s\n",
              before / 1048576.0, after / 1048576.0, std::string(seer::GrpcCodeName(s.error_code())).c_str(),
              s.error_message().c_str());
  EXPECT_FALSE(s.ok());
  EXPECT_LT(after - before, int64_t{32} << 20);
  // Uncompressed requests still work.
  EXPECT_EQ(RunCommand({Bin("seer"), "prefill", "--addr", prefill.grpc_address(), "--ids", "1,2"}).exit_code, 0);
}

// (4) The receive limit is the largest valid request plus a margin, so a
// larger one is refused by gRPC (RESOURCE_EXHAUSTED) before it is parsed;
// the largest valid request still passes.
TEST(EdgeLimits, RequestsAboveTheLargestValidOneAreRefusedUnparsed) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  RequestLimits limits;
  limits.max_prompt_tokens = 2048;  // the fixture's max_position_embeddings
  v1::PrefillRequest largest;
  largest.set_request_id(std::string(kMaxRequestIdBytes, 'x'));
  for (int i = 0; i < 2048; ++i) largest.add_token_ids(127);
  largest.mutable_sparsity()->set_mode(v1::Sparsity::MODE_DENSE);
  int responses = 0;
  grpc::Status s = RawCall(prefill.grpc_address(), kPrefillMethod, Bytes(Serialized(largest)), false, {}, &responses);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(responses, 2);

  v1::PrefillRequest too_big;
  too_big.add_token_ids(1);
  // An unknown field (number 99) the size of the whole receive limit.
  std::string bytes = Serialized(too_big);
  const size_t padding = MaxRequestBytes(limits) + (16 << 10);
  bytes += std::string("\x9a\x06", 2);  // field 99, length-delimited
  for (size_t v = padding;; v >>= 7) {
    bytes.push_back(static_cast<char>((v & 0x7f) | (v >= 0x80 ? 0x80 : 0)));
    if (v < 0x80) break;
  }
  bytes += std::string(padding, 'p');
  s = RawCall(prefill.grpc_address(), kPrefillMethod, Bytes(bytes));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();

  // Metadata beyond the explicit 16 KiB limit is refused too.
  s = RawCall(prefill.grpc_address(), kPrefillMethod, Bytes(Serialized(too_big)), false,
              {{"x-padding", std::string(20 << 10, 'm')}});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  std::printf("[ info     ] 20 KiB of metadata: %s: %s\n", std::string(seer::GrpcCodeName(s.error_code())).c_str(),
              s.error_message().c_str());
}

// (7) Bytes that do not parse as the request get INVALID_ARGUMENT with a
// message and are counted; an invalid UTF-8 request_id writes no protobuf
// error line to the log.
TEST(EdgeLimits, MalformedProtobufIsInvalidArgumentAndCounted) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"), ServerArgs({"--prefill", prefill.grpc_address()}));
  ASSERT_TRUE(decode.Start());
  const std::string garbage("\x0a\xff\xff\xff\xff\x0f", 6);  // a length far past the end
  const std::string bad_utf8("\x0a\x02\xc3\x28\x10\x01", 6);  // request_id "\xc3\x28", token 1
  for (const std::string& body : {garbage, bad_utf8}) {
    grpc::Status s = RawCall(prefill.grpc_address(), kPrefillMethod, Bytes(body));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("seer.v1.PrefillRequest"), std::string::npos) << s.error_message();
    s = RawCall(decode.grpc_address(), "/seer.v1.DecodeService/Generate", Bytes(body));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  }
  std::map<std::string, double> p, d;
  for (int i = 0; i < 200; ++i) {
    if (auto m = seer::testing::Scrape(prefill.metrics_address()); m.ok()) p = *m;
    if (auto m = seer::testing::Scrape(decode.metrics_address()); m.ok()) d = *m;
    if (Metric(p, "seer_prefill_requests_total{code=\"INVALID_ARGUMENT\"}") == 2 &&
        Metric(d, "seer_decode_requests_total{code=\"INVALID_ARGUMENT\"}") == 2)
      break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(Metric(p, "seer_prefill_requests_total{code=\"INVALID_ARGUMENT\"}"), 2);
  EXPECT_EQ(Metric(d, "seer_decode_requests_total{code=\"INVALID_ARGUMENT\"}"), 2);
  ASSERT_TRUE(prefill.WaitForErrLines({"\"msg\":\"request\"", "INVALID_ARGUMENT"}, 2, 10s));
  // Every stderr line is JSON (LogLines checks), and none at warning or
  // above comes from libprotobuf.
  for (const JsonValue& j : LogLines(prefill, "protobuf")) ADD_FAILURE() << "protobuf logged: " << j.Dump();
  for (const std::string& line : prefill.ErrLines()) EXPECT_EQ(line.find("libprotobuf"), std::string::npos) << line;
}

// (6) Idle TCP connections must not blind /metrics: civetweb gives each
// connection a thread, and there used to be two.
TEST(EdgeLimits, IdleConnectionsDoNotBlockScrapes) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  const std::string& m = prefill.metrics_address();
  const int port = std::stoi(m.substr(m.rfind(':') + 1));
  std::vector<int> idle;
  for (int i = 0; i < 8; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    idle.push_back(fd);
  }
  std::this_thread::sleep_for(200ms);
  const auto start = std::chrono::steady_clock::now();
  auto scraped = seer::testing::Scrape(m);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(scraped.ok()) << scraped.status().ToString();
  EXPECT_LT(seconds, 2.0) << "a scrape behind 8 idle connections took " << seconds << " s";
  for (int fd : idle) close(fd);
}

// Each open server-reflection stream holds a server thread (a synchronous
// handler): one client opening hundreds of them, and sending nothing, must
// not make hundreds of threads, and the server must go on serving.
TEST(Operations, OpenReflectionStreamsHoldABoundedNumberOfThreads) {
  ServerProcess prefill(Bin("seer-prefill"), ServerArgs());
  ASSERT_TRUE(prefill.Start());
  const int before = seer::testing::ThreadCount(prefill.pid());
  ASSERT_GT(before, 0);
  auto channel = grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  constexpr int kStreams = 300;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::GenericClientAsyncReaderWriter>> calls;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    calls.push_back(
        stub.PrepareCall(contexts.back().get(), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", &cq));
    calls.back()->StartCall(reinterpret_cast<void*>(static_cast<intptr_t>(i + 1)));
  }
  for (int i = 0; i < kStreams; ++i) {
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  // The server takes the streams as they arrive; give it time to.
  int during = 0;
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(100ms);
    during = std::max(during, seer::testing::ThreadCount(prefill.pid()));
  }
  EXPECT_LE(during, before + kMaxSyncHandlerThreads + 8) << before << " threads before the streams";
  CommandResult served = RunCommand({Bin("seer"), "prefill", "--addr", prefill.grpc_address(), "--ids", "1,2,3"});
  EXPECT_EQ(served.exit_code, 0) << served.err;
  // Those past the quota were refused at once (gRPC's "Server Threadpool
  // Exhausted"); the others stay open until cancelled.
  std::vector<grpc::Status> statuses(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    calls[i]->Finish(&statuses[i], reinterpret_cast<void*>(static_cast<intptr_t>(i + 1)));
  }
  int finished = 0, refused = 0;
  const auto wait_until = std::chrono::system_clock::now() + 3s;
  for (;;) {
    void* tag = nullptr;
    bool ok = false;
    if (cq.AsyncNext(&tag, &ok, wait_until) != grpc::CompletionQueue::GOT_EVENT) break;
    ++finished;
    const auto& status = statuses[reinterpret_cast<intptr_t>(tag) - 1];
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++refused;
  }
  EXPECT_GT(refused, 0);
  EXPECT_LT(finished, kStreams) << "every stream ended: none was held open";
  for (auto& c : contexts) c->TryCancel();
  for (; finished < kStreams; ++finished) {
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {}
}

}  // namespace
}  // namespace seer
