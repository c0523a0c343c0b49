// The real binaries, end to end on loopback (port 0): seer-prefill and
// seer-decode started from SEER_BIN_DIR, driven with the seer CLI and with
// gRPC stubs. References: `seer run` (the offline path, no gRPC) and Hugging
// Face's own outputs in the fixtures.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "base/json.h"
#include "formats/safetensors.h"
#include "seer/v1/seer.grpc.pb.h"
#include "tests/logprobs_util.h"
#include "tests/server_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Bin;
using seer::testing::CommandResult;
using seer::testing::Path;
using seer::testing::RunCommand;
using seer::testing::ServerProcess;

std::vector<int32_t> FixtureIds(const std::string& name, const std::string& tensor) {
  auto f = fixtures::Open(name + "/expected.safetensors");
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (!f.ok()) return {};
  auto ids = fixtures::I32(**f, tensor);
  EXPECT_TRUE(ids.ok()) << ids.status().ToString();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

std::string WriteIds(const std::string& dir, const std::string& name, const std::vector<int32_t>& ids) {
  const std::string path = dir + "/" + name + ".ids";
  std::ofstream(path) << seer::testing::JoinIds(ids);
  return path;
}

JsonValue ParseJson(const CommandResult& r) {
  StatusOr<JsonValue> j = JsonValue::Parse(r.out);
  EXPECT_TRUE(j.ok()) << "not JSON: " << r.out << "\nstderr: " << r.err;
  return j.ok() ? *j : JsonValue();
}

std::vector<int32_t> Tokens(const JsonValue& j) {
  std::vector<int32_t> out;
  if (const JsonValue* t = j.Find("tokens"))
    for (const JsonValue& v : t->as_array()) out.push_back(static_cast<int32_t>(v.as_int64()));
  return out;
}

// The "logprobs" (or `key`) list of seer run's or seer generate's --json:
// each entry's token and logprob, then its alternatives', in one flat list.
std::vector<double> LogprobValues(const JsonValue& j, const std::string& key = "logprobs") {
  std::vector<double> out;
  if (const JsonValue* list = j.Find(key)) {
    for (const JsonValue& e : list->as_array()) {
      out.push_back(static_cast<double>(e.Find("token")->as_int64()));
      out.push_back(e.Find("logprob")->is_null() ? NAN : e.Find("logprob")->as_double());
      for (const JsonValue& t : e.Find("top")->as_array()) {
        out.push_back(static_cast<double>(t.Find("token")->as_int64()));
        out.push_back(t.Find("logprob")->is_null() ? NAN : t.Find("logprob")->as_double());
      }
    }
  }
  return out;
}

std::vector<double> LayerDensity(const JsonValue& j) {
  std::vector<double> out;
  if (const JsonValue* d = j.Find("density"))
    if (const JsonValue* l = d->Find("layers"))
      for (const JsonValue& v : l->as_array()) out.push_back(v.as_double());
  return out;
}

// seer-prefill and seer-decode for the fixture Llama (with its gates).
struct FixturePair {
  ServerProcess prefill{Bin("seer-prefill"),
                        {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", Path("llama"), "--gates",
                         Path("llama_gates"), "--device", "cpu"}};
  std::unique_ptr<ServerProcess> decode;
  ::testing::AssertionResult Start(std::vector<std::string> decode_extra = {}) {
    if (auto r = prefill.Start(); !r) return r;
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                     "--model",  Path("llama"), "--prefill", prefill.grpc_address(),
                                     "--device", "cpu"};
    args.insert(args.end(), decode_extra.begin(), decode_extra.end());
    decode = std::make_unique<ServerProcess>(Bin("seer-decode"), args);
    return decode->Start();
  }
};

TEST(EndToEnd, DisaggregatedGenerateEqualsSeerRun) {
  FixturePair servers;
  ASSERT_TRUE(servers.Start());
  const std::string dir = seer::testing::TempDir("generate_vs_run");
  const std::string prompt = WriteIds(dir, "prompt", FixtureIds("llama", "input_ids"));
  const std::string short_prompt = WriteIds(dir, "short", seer::testing::RandomIds(40, 128, 11));

  struct Case {
    std::string ids, sparsity;
  };
  const std::vector<Case> cases = {
      {prompt, ""}, {prompt, "threshold=0.3628"}, {prompt, "nz_ratio=0.3"}, {prompt, "dense"}, {short_prompt, ""}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.ids + " " + c.sparsity);
    std::vector<std::string> gen = {Bin("seer"),
                                    "generate",
                                    "--addr",
                                    servers.decode->grpc_address(),
                                    "--ids",
                                    "@" + c.ids,
                                    "--max-new-tokens",
                                    "8",
                                    "--json",
                                    "--logprobs",
                                    "3"};
    std::vector<std::string> run = {
        Bin("seer"),        "run", "--model", Path("llama"), "--gates", Path("llama_gates"), "--ids", "@" + c.ids,
        "--max-new-tokens", "8",   "--json",  "--device",    "cpu",     "--logprobs",        "3"};
    if (!c.sparsity.empty()) {
      gen.insert(gen.end(), {"--sparsity", c.sparsity});
      run.insert(run.end(), {"--sparsity", c.sparsity});
    }
    CommandResult g = RunCommand(gen), r = RunCommand(run);
    ASSERT_EQ(g.exit_code, 0) << g.err;
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const JsonValue gj = ParseJson(g), rj = ParseJson(r);
    EXPECT_EQ(Tokens(gj).size(), 8u);
    EXPECT_EQ(Tokens(gj), Tokens(rj));
    EXPECT_EQ(LayerDensity(gj), LayerDensity(rj));
    // Each token's logprobs and 3 alternatives (ids, then values), as seer run's.
    const std::vector<double> glp = LogprobValues(gj), rlp = LogprobValues(rj);
    ASSERT_EQ(glp.size(), 8u * 8u);
    ASSERT_EQ(glp.size(), rlp.size());
    for (size_t i = 0; i < glp.size(); ++i) EXPECT_NEAR(glp[i], rlp[i], 1e-4) << "logprobs[" << i / 8 << "]";
    ASSERT_NE(gj.Find("ttft_ms"), nullptr);
    EXPECT_GT(gj.Find("ttft_ms")->as_double(), 0.0);
  }

  // Dense, against Hugging Face's own greedy generation from the same
  // prompt, and the prompt's logprobs (the prefill's, through both servers)
  // against log_softmax of transformers' logits at each position.
  CommandResult g =
      RunCommand({Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids", "@" + prompt,
                  "--max-new-tokens", "8", "--sparsity", "dense", "--json", "--prompt-logprobs", "2"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const JsonValue gj = ParseJson(g);
  EXPECT_EQ(Tokens(gj), FixtureIds("llama", "greedy_tokens"));
  const std::vector<int32_t> ids = FixtureIds("llama", "input_ids");
  auto expected = fixtures::Open("llama/expected.safetensors");
  ASSERT_TRUE(expected.ok());
  auto hf_logits = fixtures::F32(**expected, "logits");
  ASSERT_TRUE(hf_logits.ok());
  const JsonValue* prompt_lp = gj.Find("prompt_logprobs");
  ASSERT_TRUE(prompt_lp != nullptr && prompt_lp->as_array().size() == ids.size()) << g.out;
  EXPECT_TRUE(prompt_lp->as_array()[0].Find("logprob")->is_null());
  std::vector<TokenLogprobs> got;
  for (size_t i = 1; i < ids.size(); ++i) {
    const JsonValue& e = prompt_lp->as_array()[i];
    TokenLogprobs lp{
        {static_cast<int32_t>(e.Find("token")->as_int64()), static_cast<float>(e.Find("logprob")->as_double())}, {}};
    for (const JsonValue& t : e.Find("top")->as_array()) {
      lp.top.push_back(
          {static_cast<int32_t>(t.Find("token")->as_int64()), static_cast<float>(t.Find("logprob")->as_double())});
    }
    got.push_back(lp);
  }
  logprobs_test::ExpectPromptLogprobs(*hf_logits, ids, got, 2, 1e-4);
}

std::vector<int32_t> Generate(v1::DecodeService::Stub* stub, const v1::GenerateRequest& req, grpc::Status* status) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Generate(&ctx, req);
  std::vector<int32_t> tokens;
  v1::GenerateResponse msg;
  while (reader->Read(&msg))
    if (msg.event_case() == v1::GenerateResponse::kToken) tokens.push_back(msg.token());
  *status = reader->Finish();
  return tokens;
}

TEST(EndToEnd, EightConcurrentGeneratesEachEqualTheirSoloResult) {
  FixturePair servers;
  ASSERT_TRUE(servers.Start());
  auto stub = v1::DecodeService::NewStub(
      grpc::CreateChannel(servers.decode->grpc_address(), grpc::InsecureChannelCredentials()));
  std::vector<v1::GenerateRequest> requests(8);
  for (int i = 0; i < 8; ++i) {
    v1::GenerateRequest& r = requests[i];
    for (int32_t id : seer::testing::RandomIds(60 + 45 * i, 128, 100 + i)) r.add_token_ids(id);
    r.set_max_new_tokens(6);
    r.set_request_id("concurrent-" + std::to_string(i));
    if (i % 2 == 1) {  // seeded sampling: reproducible, and per-request
      r.mutable_sampling()->set_temperature(0.9f);
      r.mutable_sampling()->set_top_k(40);
      r.mutable_sampling()->set_top_p(0.95f);
      r.mutable_sampling()->set_seed(1000 + i);
    }
    if (i % 4 == 2) {
      r.mutable_sparsity()->set_mode(v1::Sparsity::MODE_NZ_RATIO);
      r.mutable_sparsity()->set_nz_ratio(0.5);
    }
  }
  std::vector<std::vector<int32_t>> solo(8);
  for (int i = 0; i < 8; ++i) {
    grpc::Status s;
    solo[i] = Generate(stub.get(), requests[i], &s);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(solo[i].size(), 6u);
  }
  std::vector<std::future<std::pair<grpc::Status, std::vector<int32_t>>>> together;
  for (int i = 0; i < 8; ++i)
    together.push_back(std::async(std::launch::async, [&, i] {
      grpc::Status s;
      std::vector<int32_t> t = Generate(stub.get(), requests[i], &s);
      return std::make_pair(s, t);
    }));
  for (int i = 0; i < 8; ++i) {
    auto [s, tokens] = together[i].get();
    ASSERT_TRUE(s.ok()) << i << ": " << s.error_message();
    EXPECT_EQ(tokens, solo[i]) << "request " << i;
  }
}

TEST(EndToEnd, PrefillDumpEqualsRunDump) {
  FixturePair servers;
  ASSERT_TRUE(servers.Start());
  const std::string dir = seer::testing::TempDir("dump");
  const std::vector<int32_t> ids = FixtureIds("llama", "input_ids");
  const std::string prompt = WriteIds(dir, "prompt", ids);
  const int L = static_cast<int>(ids.size());

  for (const std::string sparsity : {"", "dense"}) {
    SCOPED_TRACE("sparsity '" + sparsity + "'");
    std::vector<std::string> pre = {Bin("seer"),
                                    "prefill",
                                    "--addr",
                                    servers.prefill.grpc_address(),
                                    "--ids",
                                    "@" + prompt,
                                    "--dump",
                                    dir + "/remote.safetensors",
                                    "--max-chunk-bytes",
                                    "65536"};
    std::vector<std::string> run = {
        Bin("seer"),         "run",   "--model",    Path("llama"), "--gates",
        Path("llama_gates"), "--ids", "@" + prompt, "--dump",      dir + "/local.safetensors",
        "--device",          "cpu"};
    if (!sparsity.empty()) {
      pre.insert(pre.end(), {"--sparsity", sparsity});
      run.insert(run.end(), {"--sparsity", sparsity});
    }
    CommandResult p = RunCommand(pre), r = RunCommand(run);
    ASSERT_EQ(p.exit_code, 0) << p.err;
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto remote = SafetensorsFile::Open(dir + "/remote.safetensors");
    auto local = SafetensorsFile::Open(dir + "/local.safetensors");
    ASSERT_TRUE(remote.ok() && local.ok());
    auto hf = fixtures::Open("llama/expected.safetensors");
    ASSERT_TRUE(hf.ok());
    for (int layer = 0; layer < 2; ++layer)
      for (const char* kv : {"k", "v"}) {
        const std::string name = "layers." + std::to_string(layer) + "." + kv;
        const TensorView* a = (*remote)->Find(name);
        const TensorView* b = (*local)->Find(name);
        ASSERT_TRUE(a && b) << name;
        EXPECT_EQ(a->dtype, DType::kF32);
        EXPECT_EQ(a->shape, (std::vector<int64_t>{1, L, 64})) << name;
        ASSERT_EQ(a->shape, b->shape) << name;
        // The same CPU engine computed both; the stream must not change a bit.
        EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0) << name << " differs from seer run's";
        if (sparsity == "dense") {
          // And against transformers' own KV cache.
          const TensorView* want = (*hf)->Find(name);
          ASSERT_NE(want, nullptr);
          const float* x = reinterpret_cast<const float*>(a->data);
          const float* y = reinterpret_cast<const float*>(want->data);
          double num = 0, den = 0;
          for (int64_t i = 0; i < a->numel(); ++i) {
            num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
            den += double(y[i]) * y[i];
          }
          EXPECT_LE(std::sqrt(num / den), 1e-4) << name << " vs Hugging Face";
        }
      }
    // The last position's logits: the last row of seer run's [L, vocab].
    const TensorView* rl = (*remote)->Find("logits");
    const TensorView* ll = (*local)->Find("logits");
    ASSERT_TRUE(rl && ll);
    ASSERT_EQ(rl->shape, (std::vector<int64_t>{1, 128}));
    ASSERT_EQ(ll->shape, (std::vector<int64_t>{L, 128}));
    EXPECT_EQ(std::memcmp(rl->data, ll->data + size_t(L - 1) * 128 * 4, 128 * 4), 0);
  }
}

// A random checkpoint that takes a while to prefill (8 layers, hidden 256).
std::string SlowModel() {
  static const std::string dir =
      seer::testing::WriteRandomLlama(seer::testing::TempDir("slow_model"), seer::testing::RandomLlamaSpec{});
  return dir;
}

TEST(EndToEnd, CancelledStreamsFreeThePrefill) {
  ServerProcess prefill(Bin("seer-prefill"),
                        {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", SlowModel(), "--device",
                         "cpu", "--chunk-bytes", "65536", "--stream-buffer-bytes", "65536"});
  ASSERT_TRUE(prefill.Start());
  auto stub =
      v1::PrefillService::NewStub(grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials()));
  v1::PrefillRequest req;
  for (int32_t id : seer::testing::RandomIds(1024, 512, 5)) req.add_token_ids(id);

  auto cancel_one = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = stub->Prefill(&ctx, req);
    v1::PrefillResponse msg;
    bool header = reader->Read(&msg) && msg.has_header();
    bool chunk = reader->Read(&msg) && msg.has_chunk();
    ctx.TryCancel();
    while (reader->Read(&msg)) {}
    grpc::Status s = reader->Finish();
    return header && chunk && s.error_code() == grpc::StatusCode::CANCELLED;
  };
  auto wait_idle = [&] {
    for (int i = 0; i < 1000; ++i) {
      auto m = seer::testing::Scrape(prefill.metrics_address());
      if (m.ok() && seer::testing::Metric(*m, "seer_prefill_inflight_requests") == 0) return *m;
      std::this_thread::sleep_for(10ms);
    }
    return std::map<std::string, double>{};
  };

  const int kWarmup = 5, kMore = 50;
  for (int i = 0; i < kWarmup; ++i) ASSERT_TRUE(cancel_one());
  wait_idle();
  const int64_t rss_before = seer::testing::RssBytes(prefill.pid());
  for (int i = 0; i < kMore; ++i) ASSERT_TRUE(cancel_one()) << i;
  const std::map<std::string, double> m = wait_idle();
  const int64_t rss_after = seer::testing::RssBytes(prefill.pid());
  // One request holds 16 MiB of KV cache alone (8 layers x 1024 tokens x
  // 2 KiB): keeping even a few would show.
  std::printf("[ info     ] RSS %.1f MiB after %d cancellations, %.1f MiB after %d more\n", rss_before / 1048576.0,
              kWarmup, rss_after / 1048576.0, kMore);
  EXPECT_EQ(seer::testing::Metric(m, "seer_prefill_inflight_requests"), 0);
  EXPECT_EQ(seer::testing::Metric(m, "seer_prefill_requests_total{code=\"CANCELLED\"}"), kWarmup + kMore);
  EXPECT_EQ(seer::testing::Metric(m, "seer_prefill_tokens_total"), 0);
#if defined(__SANITIZE_ADDRESS__)
  // ASan's quarantine keeps freed memory resident; the exit below, with
  // LeakSanitizer in the server, checks for leaks instead.
  std::printf("[ info     ] AddressSanitizer build: RSS bound not checked\n");
#else
  EXPECT_LT(rss_after - rss_before, int64_t{48} << 20);
#endif

  // Still serving.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  bool summary = false;
  while (reader->Read(&msg)) summary = summary || msg.has_summary();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(summary);
  // A clean exit (and, in sanitizer builds, no leak reports).
  prefill.Signal(SIGTERM);
  EXPECT_EQ(prefill.Wait(), 0);
}

// Two prefill servers behind one decode worker; one is killed while it
// streams a request's KV. Without --prefill-retry-broken that request fails
// with UNAVAILABLE naming the endpoint; with it, the prefill is redone on the
// other. Either way the next requests land on the survivor.
void KillAPrefillServerMidStream(bool retry_broken) {
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics",     "127.0.0.1:0", "--model",   SlowModel(),
                                   "--device", "cpu",         "--chunk-bytes", "65536",       "--threads", "1"};
  ServerProcess a(Bin("seer-prefill"), args), b(Bin("seer-prefill"), args);
  ASSERT_TRUE(a.Start());
  ASSERT_TRUE(b.Start());
  std::vector<std::string> decode_args = {
      "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
      "--model",  SlowModel(),   "--prefill", a.grpc_address() + "," + b.grpc_address(),
      "--device", "cpu",         "--threads", "1"};
  if (retry_broken) decode_args.push_back("--prefill-retry-broken");
  ServerProcess decode(Bin("seer-decode"), decode_args);
  ASSERT_TRUE(decode.Start());
  auto stub =
      v1::DecodeService::NewStub(grpc::CreateChannel(decode.grpc_address(), grpc::InsecureChannelCredentials()));

  v1::GenerateRequest big;
  for (int32_t id : seer::testing::RandomIds(2048, 512, 9)) big.add_token_ids(id);
  big.set_max_new_tokens(2);
  std::future<std::pair<grpc::Status, size_t>> doomed = std::async(std::launch::async, [&] {
    grpc::Status s;
    const size_t n = Generate(stub.get(), big, &s).size();
    return std::make_pair(s, n);
  });
  // Wait until one server is streaming this request's KV, then kill it.
  ServerProcess* victim = nullptr;
  for (int i = 0; i < 3000 && victim == nullptr; ++i) {
    for (ServerProcess* p : {&a, &b}) {
      auto m = seer::testing::Scrape(p->metrics_address());
      if (m.ok() && seer::testing::Metric(*m, "seer_kv_sent_bytes_total") > 0) victim = p;
    }
    if (victim == nullptr) std::this_thread::sleep_for(10ms);
  }
  ASSERT_NE(victim, nullptr) << "no prefill server started streaming";
  ServerProcess* survivor = victim == &a ? &b : &a;
  const std::string victim_address = victim->grpc_address();
  victim->Signal(SIGKILL);
  victim->Wait();

  const auto [status, tokens] = doomed.get();
  if (retry_broken) {
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(tokens, 2u);
  } else {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_NE(status.error_message().find(victim_address), std::string::npos) << status.error_message();
    EXPECT_NE(status.error_message().find("KV chunks"), std::string::npos) << status.error_message();
  }

  // Round-robin reaches the dead endpoint half the time; either way the
  // request lands on the survivor.
  for (int i = 0; i < 3; ++i) {
    v1::GenerateRequest small;
    for (int32_t id : seer::testing::RandomIds(64, 512, 20 + i)) small.add_token_ids(id);
    small.set_max_new_tokens(3);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = stub->Generate(&ctx, small);
    v1::GenerateResponse msg;
    std::string endpoint;
    int tokens = 0;
    while (reader->Read(&msg)) {
      if (msg.has_summary()) endpoint = msg.summary().prefill_endpoint();
      if (msg.event_case() == v1::GenerateResponse::kToken) ++tokens;
    }
    grpc::Status s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(tokens, 3);
    EXPECT_EQ(endpoint, survivor->grpc_address());
  }
}

TEST(EndToEnd, KillingAPrefillServerFailsThatRequestAndTheNextGoesElsewhere) { KillAPrefillServerMidStream(false); }

TEST(EndToEnd, KillingAPrefillServerWithRetryRedoesThePrefillElsewhere) { KillAPrefillServerMidStream(true); }

TEST(EndToEnd, MetricsOverHttpNameEverySeriesWithConsistentValues) {
  FixturePair servers;
  ASSERT_TRUE(servers.Start());
  auto stub = v1::DecodeService::NewStub(
      grpc::CreateChannel(servers.decode->grpc_address(), grpc::InsecureChannelCredentials()));
  const std::vector<int> lengths = {100, 200, 333}, news = {5, 6, 7};
  for (size_t i = 0; i < lengths.size(); ++i) {
    v1::GenerateRequest r;
    for (int32_t id : seer::testing::RandomIds(lengths[i], 128, 50 + i)) r.add_token_ids(id);
    r.set_max_new_tokens(news[i]);
    grpc::Status s;
    EXPECT_EQ(Generate(stub.get(), r, &s).size(), static_cast<size_t>(news[i]));
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // A client has its final status a moment before the server's OnDone
  // counts the request, on either server (the decode worker is the prefill's
  // client): scrape until both have counted the last one.
  StatusOr<std::string> ptext = Unavailable("not scraped"), dtext = Unavailable("not scraped");
  for (int i = 0; i < 500; ++i) {
    ptext = seer::testing::HttpGet(servers.prefill.metrics_address(), "/metrics");
    dtext = seer::testing::HttpGet(servers.decode->metrics_address(), "/metrics");
    const double want = static_cast<double>(lengths.size());
    if (ptext.ok() && dtext.ok() &&
        seer::testing::Metric(seer::testing::ParseMetrics(*dtext), "seer_decode_requests_total{code=\"OK\"}") == want &&
        seer::testing::Metric(seer::testing::ParseMetrics(*ptext), "seer_prefill_requests_total{code=\"OK\"}") ==
            want &&
        seer::testing::Metric(seer::testing::ParseMetrics(*ptext), "seer_prefill_inflight_requests") == 0)
      break;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(ptext.ok()) << ptext.status().ToString();
  ASSERT_TRUE(dtext.ok()) << dtext.status().ToString();
  for (const char* name :
       {"seer_prefill_requests_total", "seer_prefill_duration_seconds", "seer_prefill_queue_seconds",
        "seer_prefill_tokens_total", "seer_prefill_inflight_requests", "seer_attention_block_density",
        "seer_kv_sent_bytes_total", "seer_kv_stream_duration_seconds"})
    EXPECT_NE(ptext->find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
  for (const char* name :
       {"seer_decode_requests_total", "seer_time_to_first_token_seconds", "seer_inter_token_latency_seconds",
        "seer_request_duration_seconds", "seer_decode_tokens_total", "seer_kv_received_bytes_total"})
    EXPECT_NE(dtext->find(std::string("# TYPE ") + name + " "), std::string::npos) << name;

  using seer::testing::Metric;
  const auto p = seer::testing::ParseMetrics(*ptext), d = seer::testing::ParseMetrics(*dtext);
  const int n = static_cast<int>(lengths.size());
  const double prompt_tokens = 100 + 200 + 333, new_tokens = 5 + 6 + 7;
  // 2 layers x K and V x 1 KV head x 64 x 4 bytes per token.
  const double kv_bytes = prompt_tokens * 2 * 2 * 1 * 64 * 4;
  EXPECT_EQ(Metric(p, "seer_prefill_requests_total{code=\"OK\"}"), n);
  EXPECT_EQ(Metric(p, "seer_prefill_tokens_total"), prompt_tokens);
  EXPECT_EQ(Metric(p, "seer_prefill_inflight_requests"), 0);
  EXPECT_EQ(Metric(p, "seer_prefill_duration_seconds_count"), n);
  EXPECT_EQ(Metric(p, "seer_prefill_queue_seconds_count"), n);
  EXPECT_EQ(Metric(p, "seer_kv_stream_duration_seconds_count"), n);
  EXPECT_EQ(Metric(p, "seer_kv_sent_bytes_total"), kv_bytes);
  for (const char* layer : {"0", "1"}) {
    const std::string l = std::string("{layer=\"") + layer + "\"}";
    EXPECT_EQ(Metric(p, "seer_attention_block_density_count" + l), n);
    const double sum = Metric(p, "seer_attention_block_density_sum" + l);
    EXPECT_GT(sum, 0.0);
    EXPECT_LE(sum, n + 1e-9);
    EXPECT_EQ(Metric(p, "seer_attention_block_density_bucket{layer=\"" + std::string(layer) + "\",le=\"1\"}"), n);
  }
  EXPECT_EQ(Metric(d, "seer_decode_requests_total{code=\"OK\"}"), n);
  EXPECT_EQ(Metric(d, "seer_decode_tokens_total"), new_tokens);
  EXPECT_EQ(Metric(d, "seer_kv_received_bytes_total"), kv_bytes);
  EXPECT_EQ(Metric(d, "seer_time_to_first_token_seconds_count"), n);
  EXPECT_EQ(Metric(d, "seer_inter_token_latency_seconds_count"), new_tokens - n);
  EXPECT_EQ(Metric(d, "seer_request_duration_seconds_count"), n);
  // Buckets from 1 ms to 10 min; every observation is under +Inf.
  EXPECT_GE(Metric(d, "seer_time_to_first_token_seconds_bucket{le=\"0.001\"}"), 0);
  EXPECT_EQ(Metric(d, "seer_time_to_first_token_seconds_bucket{le=\"600\"}"), n);
  EXPECT_EQ(Metric(d, "seer_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), n);
  EXPECT_LE(Metric(d, "seer_time_to_first_token_seconds_sum"), Metric(d, "seer_request_duration_seconds_sum"));

  // docs/ARCHITECTURE.md ("Platform facts"): civetweb's threads fail in a process that links cuBLAS
  // unless the stack-size interposer works. The CUDA build links it.
  const bool cublas = seer::testing::MapsCublasLt(servers.prefill.pid());
  std::printf("[ info     ] seer-prefill %s libcublasLt; /metrics served\n", cublas ? "maps" : "does not map");
#ifdef SEER_HAVE_CUDA
  EXPECT_TRUE(cublas) << "a CUDA build's server should link cuBLAS; this test is meant to cover that case";
#endif
}

// docs/ARCHITECTURE.md ("Platform facts"): libcublasLt's ~94 KB of static TLS leaves civetweb's 100 KB
// thread stacks no room, so /metrics dies in any process that links cuBLAS
// unless the server's stack-size interposer raises them. The CUDA build links
// cuBLAS into the servers; this loads it into the CPU build's server too.
TEST(EndToEnd, MetricsServedWithCublasLoaded) {
  std::string lib;
  for (const char* p : {"/usr/local/cuda/lib64/libcublasLt.so", "/usr/lib/x86_64-linux-gnu/libcublasLt.so"})
    if (std::filesystem::exists(p)) lib = p;
  if (lib.empty()) GTEST_SKIP() << "no libcublasLt on this machine";
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "an AddressSanitizer build cannot take an LD_PRELOAD library ahead of its runtime";
#endif
  ServerProcess prefill(
      Bin("seer-prefill"),
      {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", Path("llama"), "--device", "cpu"},
      {"LD_PRELOAD=" + lib});
  ASSERT_TRUE(prefill.Start());
  EXPECT_TRUE(seer::testing::MapsCublasLt(prefill.pid()));
  auto m = seer::testing::Scrape(prefill.metrics_address());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(seer::testing::Metric(*m, "seer_prefill_inflight_requests"), 0);
}

TEST(EndToEnd, SigtermDrainsTheStreamInFlightThenExits) {
  ServerProcess prefill(Bin("seer-prefill"), {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model",
                                              SlowModel(), "--device", "cpu", "--chunk-bytes", "65536"});
  ASSERT_TRUE(prefill.Start());
  auto stub =
      v1::PrefillService::NewStub(grpc::CreateChannel(prefill.grpc_address(), grpc::InsecureChannelCredentials()));
  v1::PrefillRequest req;
  for (int32_t id : seer::testing::RandomIds(1024, 512, 77)) req.add_token_ids(id);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  ASSERT_TRUE(reader->Read(&msg) && msg.has_header());
  ASSERT_TRUE(reader->Read(&msg) && msg.has_chunk());
  prefill.Signal(SIGTERM);
  int64_t bytes = static_cast<int64_t>(msg.chunk().k().size() + msg.chunk().v().size());
  bool summary = false;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) bytes += static_cast<int64_t>(msg.chunk().k().size() + msg.chunk().v().size());
    summary = summary || msg.has_summary();
  }
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(summary);
  EXPECT_EQ(bytes, int64_t{8} * 2 * 4 * 64 * 4 * 1024);  // every layer's K and V
  EXPECT_EQ(prefill.Wait(), 0);
}

TEST(EndToEnd, CliErrorsCarryTheStatusCodeName) {
  FixturePair servers;
  ASSERT_TRUE(servers.Start());
  CommandResult bad_id = RunCommand(
      {Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids", "1,2,999", "--max-new-tokens", "2"});
  EXPECT_EQ(bad_id.exit_code, 1);
  EXPECT_NE(bad_id.err.find("INVALID_ARGUMENT"), std::string::npos) << bad_id.err;
  EXPECT_NE(bad_id.err.find("token_ids[2]"), std::string::npos) << bad_id.err;

  // --logit-bias: ID:BIAS, checked as far as the client can; the server
  // names what only it knows (the vocabulary, the range).
  for (const char* malformed : {"5", "x:1", ":1", "5:", "5:1x", "-3:1", "5:nan"}) {
    CommandResult r = RunCommand(
        {Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids", "1,2", "--logit-bias", malformed});
    EXPECT_EQ(r.exit_code, 2) << malformed;
    EXPECT_NE(r.err.find("--logit-bias: expected ID:BIAS"), std::string::npos) << r.err;
  }
  CommandResult out_of_vocab = RunCommand(
      {Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids", "1,2", "--logit-bias", "999:1"});
  EXPECT_EQ(out_of_vocab.exit_code, 1);
  EXPECT_NE(out_of_vocab.err.find("sampling.logit_bias: token id 999"), std::string::npos) << out_of_vocab.err;
  CommandResult penalty = RunCommand({Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids", "1,2",
                                      "--presence-penalty", "-2.5"});
  EXPECT_EQ(penalty.exit_code, 1);
  EXPECT_NE(penalty.err.find("sampling.presence_penalty"), std::string::npos) << penalty.err;
  // Two biases, one forcing: every token is the forced one.
  CommandResult forced = RunCommand({Bin("seer"), "generate", "--addr", servers.decode->grpc_address(), "--ids",
                                     "1,2,3", "--max-new-tokens", "5", "--logit-bias", "77:100", "--logit-bias",
                                     "12:-100", "--frequency-penalty", "0.5", "--json"});
  ASSERT_EQ(forced.exit_code, 0) << forced.err;
  StatusOr<JsonValue> forced_json = JsonValue::Parse(forced.out);
  ASSERT_TRUE(forced_json.ok()) << forced.out;
  std::vector<int64_t> forced_tokens;
  for (const JsonValue& t : forced_json->Find("tokens")->as_array()) forced_tokens.push_back(t.as_int64());
  EXPECT_EQ(forced_tokens, std::vector<int64_t>(5, 77));

  CommandResult nobody =
      RunCommand({Bin("seer"), "prefill", "--addr", "127.0.0.1:1", "--ids", "1,2", "--timeout", "5"});
  EXPECT_EQ(nobody.exit_code, 1);
  EXPECT_NE(nobody.err.find("UNAVAILABLE"), std::string::npos) << nobody.err;

  CommandResult help = RunCommand({Bin("seer-prefill"), "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag :
       {"--listen", "--metrics", "--model", "--gates", "--device", "--max-concurrent", "--max-queue", "--chunk-bytes"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  CommandResult bad_flag =
      RunCommand({Bin("seer-decode"), "--model", Path("llama"), "--prefill", "x:1", "--max-concurrent", "0"});
  EXPECT_EQ(bad_flag.exit_code, 2);
  EXPECT_NE(bad_flag.err.find("--max-concurrent"), std::string::npos) << bad_flag.err;
}

}  // namespace
}  // namespace seer
