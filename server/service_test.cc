// The services in this process, on loopback port 0: health before and after
// the model loads, reflection, field validation (INVALID_ARGUMENT naming the
// field), the admission queue (RESOURCE_EXHAUSTED at once when full), a
// layout mismatch (UNAVAILABLE: the deployment's fault), endpoint fail-over, and a cancelled
// stream stopping the engine. The engines are the real CPU engine, wrapped
// where a test needs to hold or count its work.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/server_interceptor.h>

#include "engine/engine.h"
#include "server/decode/decode_service.h"
#include "server/common/grpc_server.h"
#include "server/common/metrics.h"
#include "rpc/prefill_client.h"
#include "server/prefill/prefill_service.h"
#include "server/common/work_queue.h"
#include "tests/cpu_fixture_engine.h"
#include "tests/logprobs_util.h"
#include "tests/server_test_util.h"
#include "text/bad_words.h"
#include "text/guide.h"
#include "text/regex_grammar.h"
#include "text/tokenizer.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Path;

std::unique_ptr<Engine> LoadEngine(const std::string& model, const std::string& gates = "") {
  EngineOptions o;
  o.model_dir = model;
  o.gates_dir = gates;
  o.device = "cpu";
  StatusOr<std::unique_ptr<Engine>> e = CreateEngine(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(e).value() : nullptr;
}

// Delegates to a real engine; can hold Prefill until released, and counts
// the layers each prefill completes.
class InstrumentedEngine final : public Engine {
 public:
  explicit InstrumentedEngine(Engine* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  uint64_t fingerprint() const override { return inner_->fingerprint(); }
  const GateWeights* gates() const override { return inner_->gates(); }
  std::string device_name() const override { return "instrumented " + inner_->device_name(); }
  StatusOr<std::unique_ptr<KvCache>> AllocateCache(int capacity, bool gate_keys) override {
    return inner_->NewCache(capacity, gate_keys);
  }
  bool OwnsCacheType(const KvCache& cache) const override {
    return dynamic_cast<const HostKvCache*>(&cache) != nullptr;  // the inner engine is a CPU engine
  }
  Status RunDecodeStep(int32_t token, KvCache* cache, std::vector<float>* logits) override {
    return inner_->DecodeStep(token, cache, logits);
  }
  StatusOr<PrefillResult> RunPrefill(std::span<const int32_t> ids, const PrefillOptions& options, KvCache* cache,
                                     PrefillObserver* observer) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++entered_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !hold_; });
    }
    Counting counting(observer, &layers_done_);
    StatusOr<PrefillResult> r = inner_->Prefill(ids, options, cache, &counting);
    std::lock_guard<std::mutex> lock(mu_);
    last_status_ = r.ok() ? StatusCode::kOk : r.status().code();
    ++finished_;
    cv_.notify_all();
    return r;
  }

  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    cv_.notify_all();
  }
  bool WaitEntered(int n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return entered_ >= n; });
  }
  bool WaitFinished(int n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return finished_ >= n; });
  }
  int entered() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_;
  }
  int layers_done() const { return layers_done_.load(); }
  StatusCode last_status() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_status_;
  }

 private:
  class Counting final : public PrefillObserver {
   public:
    Counting(PrefillObserver* inner, std::atomic<int>* count) : inner_(inner), count_(count) {}
    Status OnLayerDone(const LayerDone& done) override {
      ++*count_;
      return inner_ ? inner_->OnLayerDone(done) : OkStatus();
    }

   private:
    PrefillObserver* inner_;
    std::atomic<int>* count_;
  };

  Engine* inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;
  int entered_ = 0, finished_ = 0;
  StatusCode last_status_ = StatusCode::kUnknown;
  std::atomic<int> layers_done_{0};
};

struct PrefillHarness {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  PrefillMetrics metrics{*registry};
  std::unique_ptr<PrefillService> service;
  std::unique_ptr<GrpcServer> server;

  PrefillHarness(const PrefillServiceOptions& options, Engine* engine) {
    service = std::make_unique<PrefillService>(options, &metrics);
    auto s = GrpcServer::Start("127.0.0.1:0", {service.get(), service->legacy()},
                               {"seer.v1.PrefillService", "seer.v1.Prefill"}, 16 << 20);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(s).value();
    if (engine != nullptr) Load(engine);
  }
  void Load(Engine* engine) {
    Status st = service->SetEngine(engine);
    EXPECT_TRUE(st.ok()) << st.ToString();
    server->SetServing(true);
  }
  ~PrefillHarness() {
    server->Shutdown(5.0);
    service->Shutdown();
  }
  std::unique_ptr<v1::PrefillService::Stub> Stub() const {
    return v1::PrefillService::NewStub(grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  }
};

struct DecodeHarness {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  DecodeMetrics metrics{*registry};
  std::unique_ptr<PrefillClient> client;
  std::unique_ptr<DecodeService> service;
  std::unique_ptr<GrpcServer> server;

  DecodeHarness(const std::string& prefill_targets, Engine* engine, DecodeServiceOptions options = {},
                PrefillClientOptions client_options = {}) {
    auto c = PrefillClient::Create(prefill_targets, client_options);
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    client = std::move(c).value();
    service = std::make_unique<DecodeService>(options, client.get(), &metrics);
    auto s = GrpcServer::Start("127.0.0.1:0", {service.get(), service->legacy()},
                               {"seer.v1.DecodeService", "seer.v1.Decode"}, 16 << 20);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(s).value();
    EXPECT_TRUE(service->SetEngine(engine).ok());
    server->SetServing(true);
  }
  ~DecodeHarness() {
    server->Shutdown(5.0);
    service->Shutdown();
  }
  std::unique_ptr<v1::DecodeService::Stub> Stub() const {
    return v1::DecodeService::NewStub(grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  }
};

// Runs a whole Prefill call: the final status and the messages.
grpc::Status CallPrefill(v1::PrefillService::Stub* stub, const v1::PrefillRequest& req,
                         std::vector<v1::PrefillResponse>* out = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  while (reader->Read(&msg))
    if (out) out->push_back(msg);
  return reader->Finish();
}

grpc::Status CallGenerate(v1::DecodeService::Stub* stub, const v1::GenerateRequest& req,
                          std::vector<int32_t>* tokens = nullptr, v1::GenerateSummary* summary = nullptr,
                          std::string* text = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (text) *text += msg.text();
    if (msg.has_summary() && summary) *summary = msg.summary();
    if (msg.event_case() == v1::GenerateResponse::kToken && tokens) tokens->push_back(msg.token());
  }
  return reader->Finish();
}

void ExpectInvalid(const grpc::Status& s, const std::string& field) {
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find(field), std::string::npos)
      << "the message should name '" << field << "': " << s.error_message();
}

TEST(Service, HealthIsNotServingUntilTheModelHasLoaded) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness h({}, nullptr);
  using HS = grpc::health::v1::HealthCheckResponse;
  EXPECT_EQ(seer::testing::Health(h.server->address()), HS::NOT_SERVING);
  EXPECT_EQ(seer::testing::Health(h.server->address(), "seer.v1.PrefillService"), HS::NOT_SERVING);
  v1::PrefillRequest req;
  req.add_token_ids(1);
  grpc::Status s = CallPrefill(h.Stub().get(), req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find("loading"), std::string::npos);

  h.Load(engine.get());
  EXPECT_EQ(seer::testing::Health(h.server->address()), HS::SERVING);
  EXPECT_EQ(seer::testing::Health(h.server->address(), "seer.v1.PrefillService"), HS::SERVING);
  EXPECT_TRUE(CallPrefill(h.Stub().get(), req).ok());
}

// grpc.reflection.v1alpha has no installed C++ stubs; the request is written
// by hand: ServerReflectionRequest{list_services: "*"} is field 7, a string.
TEST(Service, ReflectionListsTheServices) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness h({}, engine.get());
  auto channel = grpc::CreateChannel(h.server->address(), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](void* tag) {
    void* got = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&got, &ok));
    EXPECT_EQ(got, tag);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(reinterpret_cast<void*>(1)));
  const std::string request = std::string("\x3a\x01*", 3);
  grpc::Slice slice(request);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(reinterpret_cast<void*>(2)));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(reinterpret_cast<void*>(3)));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(4));
  ASSERT_TRUE(step(reinterpret_cast<void*>(4)));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(reinterpret_cast<void*>(5));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  std::string response;
  for (const auto& s : slices) response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(response.find("seer.v1.PrefillService"), std::string::npos);
  EXPECT_NE(response.find("grpc.health.v1.Health"), std::string::npos);
  EXPECT_NE(response.find("grpc.reflection.v1alpha.ServerReflection"), std::string::npos);
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {}
}

TEST(Service, EveryBadFieldIsInvalidArgumentNamingIt) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"), Path("llama_gates"));
  ASSERT_TRUE(engine);
  const ModelConfig& c = engine->config();
  ASSERT_EQ(c.vocab_size, 128);
  ASSERT_EQ(c.max_position_embeddings, 2048);
  PrefillHarness prefill({}, engine.get());
  DecodeHarness decode(prefill.server->address(), engine.get());
  auto pstub = prefill.Stub();
  auto dstub = decode.Stub();

  auto good = [] {
    v1::GenerateRequest r;
    for (int i = 0; i < 10; ++i) r.add_token_ids(i * 7);
    r.set_max_new_tokens(4);
    return r;
  };
  ASSERT_TRUE(CallGenerate(dstub.get(), good()).ok());

  struct Case {
    std::string name;
    void (*mutate)(v1::GenerateRequest*);
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty ids", [](v1::GenerateRequest* r) { r->clear_token_ids(); }, "token_ids"},
      {"id >= vocab", [](v1::GenerateRequest* r) { r->set_token_ids(3, 128); }, "token_ids[3]"},
      {"negative id", [](v1::GenerateRequest* r) { r->set_token_ids(0, -1); }, "token_ids[0]"},
      {"too many tokens",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 2100; ++i) r->add_token_ids(5);
       },
       "token_ids"},
      {"max_new_tokens negative", [](v1::GenerateRequest* r) { r->set_max_new_tokens(-1); }, "max_new_tokens"},
      {"text and token_ids", [](v1::GenerateRequest* r) { r->set_text("hi"); }, "token_ids"},
      {"empty stop string", [](v1::GenerateRequest* r) { r->add_stop(""); }, "stop[0]"},
      {"a chat control without messages", [](v1::GenerateRequest* r) { r->set_add_generation_prompt(false); },
       "add_generation_prompt: only for a chat prompt (messages)"},
      {"chat_template_kwargs without messages", [](v1::GenerateRequest* r) { r->set_chat_template_kwargs("{}"); },
       "chat_template_kwargs: only for a chat prompt"},
      {"continue_final_message with the generation prompt",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_continue_final_message(true);
       },
       "continue_final_message: not with add_generation_prompt"},
      {"chat_template_kwargs not JSON",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_chat_template_kwargs("{nope");
       },
       "chat_template_kwargs: not valid JSON"},
      {"chat_template_kwargs naming the template's own variable",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_chat_template_kwargs(R"({"messages": []})");
       },
       "chat_template_kwargs.messages: the template's own variable"},
      {"tools without messages", [](v1::GenerateRequest* r) { r->set_tools("[]"); },
       "tools: only for a chat prompt (messages)"},
      {"tools not JSON",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_tools("[{");
       },
       "tools: not valid JSON"},
      {"a tool without a name",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_tools(R"([{"type": "function", "function": {"description": "x"}}])");
       },
       "tools[0].function.name: must be 1 to 64 letters"},
      {"tools over their limit",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         r->add_messages()->set_role("user");
         r->set_tools("[" + std::string(256 * 1024, ' ') + "]");
       },
       "tools: 262146 bytes exceed the limit of 262144"},
      {"more tool calls than messages may hold in all",
       [](v1::GenerateRequest* r) {
         r->clear_token_ids();
         for (int m = 0; m < 9; ++m) {
           v1::ChatMessage* msg = r->add_messages();
           msg->set_role("assistant");
           for (int c = 0; c < 128; ++c) msg->add_tool_calls()->set_name("f");
         }
       },
       "messages: more than 1024 tool calls in all"},
      {"too many stop strings",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 17; ++i) r->add_stop("x");
       },
       "stop"},
      {"max_new_tokens above the server limit", [](v1::GenerateRequest* r) { r->set_max_new_tokens(5000); },
       "max_new_tokens"},
      {"min_new_tokens above max_new_tokens", [](v1::GenerateRequest* r) { r->set_min_new_tokens(5); },
       "min_new_tokens: 5 is above max_new_tokens 4"},
      {"min_new_tokens negative", [](v1::GenerateRequest* r) { r->set_min_new_tokens(-1); }, "min_new_tokens"},
      {"min_new_tokens above the server limit",
       [](v1::GenerateRequest* r) {
         r->set_max_new_tokens(0);
         r->set_min_new_tokens(5000);
       },
       "min_new_tokens"},
      {"prompt + max_new_tokens past max positions",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 2030; ++i) r->add_token_ids(5);
         r->set_max_new_tokens(100);
       },
       "max_new_tokens"},
      {"threshold out of range",
       [](v1::GenerateRequest* r) {
         r->mutable_sparsity()->set_mode(v1::Sparsity::MODE_THRESHOLD);
         r->mutable_sparsity()->set_threshold(1.5);
       },
       "sparsity.threshold"},
      {"nz_ratio zero", [](v1::GenerateRequest* r) { r->mutable_sparsity()->set_mode(v1::Sparsity::MODE_NZ_RATIO); },
       "sparsity.nz_ratio"},
      {"unknown sparsity mode",
       [](v1::GenerateRequest* r) { r->mutable_sparsity()->set_mode(static_cast<v1::Sparsity::Mode>(9)); },
       "sparsity.mode"},
      {"threshold without its mode", [](v1::GenerateRequest* r) { r->mutable_sparsity()->set_threshold(0.01); },
       "sparsity.threshold"},
      {"negative temperature", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(-1.0f); },
       "sampling.temperature"},
      {"top_p above 1", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(1.5f); }, "sampling.top_p"},
      {"negative top_k", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(-1); }, "sampling.top_k"},
      {"presence_penalty above 2", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_presence_penalty(2.5f); },
       "sampling.presence_penalty"},
      {"frequency_penalty NaN", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_frequency_penalty(NAN); },
       "sampling.frequency_penalty"},
      {"logit_bias id >= vocab",
       [](v1::GenerateRequest* r) { (*r->mutable_sampling()->mutable_logit_bias())[128] = 1; }, "sampling.logit_bias"},
      {"logit_bias below -100",
       [](v1::GenerateRequest* r) { (*r->mutable_sampling()->mutable_logit_bias())[5] = -101; },
       "sampling.logit_bias[5]"},
      {"too many logit_bias entries",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 1025; ++i) (*r->mutable_sampling()->mutable_logit_bias())[i] = 1;
       },
       "sampling.logit_bias"},
      {"stop token >= vocab", [](v1::GenerateRequest* r) { r->add_stop_token_ids(500); }, "stop_token_ids[0]"},
      {"logprobs above 20", [](v1::GenerateRequest* r) { r->set_logprobs(21); }, "logprobs"},
      {"logprobs negative", [](v1::GenerateRequest* r) { r->set_logprobs(-1); }, "logprobs"},
      {"prompt_logprobs above 20", [](v1::GenerateRequest* r) { r->set_prompt_logprobs(21); }, "prompt_logprobs"},
      {"prompt_logprobs negative", [](v1::GenerateRequest* r) { r->set_prompt_logprobs(-1); }, "prompt_logprobs"},
      {"oversize request_id", [](v1::GenerateRequest* r) { r->set_request_id(std::string(1 << 20, 'x')); },
       "request_id"},
      {"control byte in request_id", [](v1::GenerateRequest* r) { r->set_request_id("a\nb"); }, "request_id"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest r = good();
    c.mutate(&r);
    ExpectInvalid(CallGenerate(dstub.get(), r), c.field);
  }

  // The same checks guard Prefill for callers that use it directly.
  auto prefill_req = [] {
    v1::PrefillRequest r;
    for (int i = 0; i < 10; ++i) r.add_token_ids(i);
    return r;
  };
  {
    v1::PrefillRequest r = prefill_req();
    r.clear_token_ids();
    ExpectInvalid(CallPrefill(pstub.get(), r), "token_ids");
  }
  {
    v1::PrefillRequest r = prefill_req();
    r.set_token_ids(9, 128);
    ExpectInvalid(CallPrefill(pstub.get(), r), "token_ids[9]");
  }
  {
    v1::PrefillRequest r = prefill_req();
    for (int i = 0; i < 2048; ++i) r.add_token_ids(1);
    ExpectInvalid(CallPrefill(pstub.get(), r), "token_ids");
  }
  {
    v1::PrefillRequest r = prefill_req();
    r.mutable_sparsity()->set_mode(v1::Sparsity::MODE_NZ_RATIO);
    r.mutable_sparsity()->set_nz_ratio(-0.5);
    ExpectInvalid(CallPrefill(pstub.get(), r), "sparsity.nz_ratio");
  }
  {
    v1::PrefillRequest r = prefill_req();
    r.set_max_chunk_bytes(100);
    ExpectInvalid(CallPrefill(pstub.get(), r), "max_chunk_bytes");
  }
  {
    v1::PrefillRequest r = prefill_req();
    r.set_prompt_logprobs(-1);
    ExpectInvalid(CallPrefill(pstub.get(), r), "prompt_logprobs");
  }
  {
    v1::PrefillRequest r = prefill_req();
    r.set_request_id(std::string(129, 'r'));
    ExpectInvalid(CallPrefill(pstub.get(), r), "request_id");
  }
  // Unknown fields that blow the size past what valid fields can take.
  {
    v1::PrefillRequest r = prefill_req();
    // Field 1023, length-delimited, 1 MiB: kept as an unknown field.
    std::string wire = r.SerializeAsString() + std::string("\xfa\x3f", 2);
    const std::string junk(1 << 20, 'j');
    for (uint32_t v = static_cast<uint32_t>(junk.size());; v >>= 7) {
      wire.push_back(static_cast<char>((v & 0x7f) | (v >= 0x80 ? 0x80 : 0)));
      if (v < 0x80) break;
    }
    ASSERT_TRUE(r.ParseFromString(wire + junk));
    ASSERT_GT(r.ByteSizeLong(), size_t{1} << 20);
    ExpectInvalid(CallPrefill(pstub.get(), r), "request");
  }
  // Gated sparsity on a server without gates is a precondition, not an argument.
  {
    std::unique_ptr<Engine> dense = LoadEngine(Path("llama"));
    PrefillHarness no_gates({}, dense.get());
    v1::PrefillRequest r = prefill_req();
    r.mutable_sparsity()->set_mode(v1::Sparsity::MODE_THRESHOLD);
    r.mutable_sparsity()->set_threshold(0.01);
    grpc::Status s = CallPrefill(no_gates.Stub().get(), r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_NE(s.error_message().find("--gates"), std::string::npos) << s.error_message();
  }
}

TEST(Service, AFullQueueIsResourceExhaustedAtOnce) {
  std::unique_ptr<Engine> real = LoadEngine(Path("llama"));
  ASSERT_TRUE(real);
  InstrumentedEngine engine(real.get());
  PrefillServiceOptions options;
  options.max_concurrent = 1;
  options.max_queue = 1;
  PrefillHarness h(options, &engine);
  v1::PrefillRequest req;
  for (int i = 0; i < 100; ++i) req.add_token_ids(i);

  engine.Hold();
  auto stub = h.Stub();
  std::future<grpc::Status> running = std::async(std::launch::async, [&] { return CallPrefill(stub.get(), req); });
  ASSERT_TRUE(engine.WaitEntered(1, 20s));
  std::future<grpc::Status> queued = std::async(std::launch::async, [&] { return CallPrefill(stub.get(), req); });
  // Admitted means counted in flight: running + queued.
  for (int i = 0; i < 2000 && h.metrics.inflight.Value() < 2; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(h.metrics.inflight.Value(), 2);

  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status refused = CallPrefill(stub.get(), req);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_NE(refused.error_message().find("--max-queue 1"), std::string::npos) << refused.error_message();
  // Refused while the others are still held: it did not wait for a slot.
  EXPECT_EQ(queued.wait_for(0s), std::future_status::timeout);
  std::printf("[ info     ] refused after %.1f ms\n", waited * 1e3);

  engine.Release();
  EXPECT_TRUE(running.get().ok());
  EXPECT_TRUE(queued.get().ok());
  // The client has its status before the server's OnDone has run.
  for (int i = 0; i < 2000 && h.metrics.inflight.Value() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(h.metrics.inflight.Value(), 0);
  auto count = [&](const std::string& code) {
    for (const auto& fam : h.registry->Collect())
      if (fam.name == "seer_prefill_requests_total")
        for (const auto& m : fam.metric)
          for (const auto& l : m.label)
            if (l.name == "code" && l.value == code) return m.counter.value;
    return 0.0;
  };
  EXPECT_EQ(count("OK"), 2);
  EXPECT_EQ(count("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(h.metrics.queue.Collect().histogram.sample_count, 2u);
}

TEST(Service, ACancelledStreamStopsTheEngine) {
  const std::string dir = seer::testing::WriteRandomLlama(seer::testing::TempDir("cancel_inproc"), {});
  std::unique_ptr<Engine> real = LoadEngine(dir);
  ASSERT_TRUE(real);
  const int layers = real->config().num_layers;
  InstrumentedEngine engine(real.get());
  PrefillServiceOptions options;
  options.chunk_bytes = 64 << 10;
  options.stream_buffer_bytes = 64 << 10;
  PrefillHarness h(options, &engine);
  auto stub = h.Stub();
  v1::PrefillRequest req;
  for (int32_t id : seer::testing::RandomIds(1536, 512, 3)) req.add_token_ids(id);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_header());
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_chunk());
  ASSERT_EQ(msg.chunk().layer(), 0);
  ctx.TryCancel();
  while (reader->Read(&msg)) {}
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  ASSERT_TRUE(engine.WaitFinished(1, 60s));
  EXPECT_EQ(engine.last_status(), StatusCode::kCancelled);
  EXPECT_LT(engine.layers_done(), layers) << "the engine ran every layer of a cancelled prefill";
  for (int i = 0; i < 2000 && h.metrics.inflight.Value() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(h.metrics.inflight.Value(), 0);
  EXPECT_EQ(h.metrics.tokens.Value(), 0) << "a cancelled prefill counted as done";
}

// docs/SERVICE.md: "A decode worker whose client cancels Generate cancels its
// own Prefill call too": the prefill engine stops instead of computing a KV
// cache nobody will read.
TEST(Service, ACancelledGenerateStopsThePrefillEngine) {
  std::unique_ptr<Engine> real = LoadEngine(Path("llama"));
  ASSERT_TRUE(real);
  const int layers = real->config().num_layers;
  InstrumentedEngine engine(real.get());
  PrefillHarness prefill({}, &engine);
  DecodeHarness decode(prefill.server->address(), real.get());
  auto stub = decode.Stub();
  v1::GenerateRequest req;
  for (int i = 0; i < 200; ++i) req.add_token_ids((i * 7) % 128);
  req.set_max_new_tokens(4);

  engine.Hold();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Generate(&ctx, req);
  ASSERT_TRUE(engine.WaitEntered(1, 20s)) << "the prefill never started";
  ctx.TryCancel();
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {}
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Let the decode worker's cancellation reach the prefill server before the
  // engine goes on; its first layer's chunks then find the stream cancelled.
  std::this_thread::sleep_for(500ms);
  engine.Release();
  ASSERT_TRUE(engine.WaitFinished(1, 60s));
  EXPECT_EQ(engine.last_status(), StatusCode::kCancelled);
  EXPECT_LT(engine.layers_done(), layers) << "the prefill of a cancelled Generate ran every layer";
  for (int i = 0; i < 2000 && prefill.metrics.inflight.Value() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(prefill.metrics.inflight.Value(), 0);
  EXPECT_EQ(prefill.metrics.tokens.Value(), 0) << "the cancelled prefill counted as done";
}

// --max-concurrent 2: the second prefill waits for the engine the first one
// holds. Cancelled meanwhile, it must not run once the engine is free.
TEST(Service, APrefillCancelledWhileWaitingForTheEngineNeverRunsIt) {
  std::unique_ptr<Engine> real = LoadEngine(Path("llama"));
  ASSERT_TRUE(real);
  InstrumentedEngine engine(real.get());
  PrefillServiceOptions options;
  options.max_concurrent = 2;
  PrefillHarness h(options, &engine);
  auto stub = h.Stub();
  v1::PrefillRequest req;
  for (int i = 0; i < 100; ++i) req.add_token_ids(i);

  engine.Hold();
  std::future<grpc::Status> first = std::async(std::launch::async, [&] { return CallPrefill(stub.get(), req); });
  ASSERT_TRUE(engine.WaitEntered(1, 20s));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Prefill(&ctx, req);
  v1::PrefillResponse msg;
  ASSERT_TRUE(reader->Read(&msg));  // the header: its worker runs, and waits for the engine
  ASSERT_TRUE(msg.has_header());
  ctx.TryCancel();
  while (reader->Read(&msg)) {}
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  std::this_thread::sleep_for(300ms);  // the cancellation reaches the server
  engine.Release();
  EXPECT_TRUE(first.get().ok());
  for (int i = 0; i < 2000 && h.metrics.inflight.Value() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(h.metrics.inflight.Value(), 0);
  EXPECT_EQ(engine.entered(), 1) << "the cancelled prefill still ran the engine";
}

TEST(Service, LayoutMismatchIsUnavailableNamingTheFingerprints) {
  // Same KV shapes (2 layers, 1 KV head, head_dim 64, vocab 128), different
  // checkpoints: only the fingerprint tells them apart. A prefill of another
  // model is the deployment's fault: UNAVAILABLE (retryable elsewhere), with
  // the endpoint's FAILED_PRECONDITION in the message.
  std::unique_ptr<Engine> llama = LoadEngine(Path("llama"));
  std::unique_ptr<Engine> qwen = LoadEngine(Path("qwen2"));
  ASSERT_TRUE(llama && qwen);
  PrefillHarness prefill({}, llama.get());
  DecodeHarness decode(prefill.server->address(), qwen.get());
  v1::GenerateRequest req;
  for (int i = 0; i < 20; ++i) req.add_token_ids(i);
  req.set_max_new_tokens(3);
  grpc::Status s = CallGenerate(decode.Stub().get(), req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find("FAILED_PRECONDITION"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("model_fingerprint"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find(prefill.server->address()), std::string::npos) << s.error_message();
}

TEST(Service, AnUnavailableEndpointIsSkippedForTheNext) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  // A port that was just free: nothing listens there.
  int dead_port = 0;
  {
    PrefillHarness gone({}, nullptr);
    dead_port = gone.server->port();
  }
  const std::string dead = "127.0.0.1:" + std::to_string(dead_port);
  DecodeHarness decode(dead + "," + prefill.server->address(), engine.get());
  auto stub = decode.Stub();
  for (int i = 0; i < 4; ++i) {
    v1::GenerateRequest req;
    for (int t = 0; t < 30; ++t) req.add_token_ids((t * 13 + i) % 128);
    req.set_max_new_tokens(2);
    v1::GenerateSummary summary;
    grpc::Status s = CallGenerate(stub.get(), req, nullptr, &summary);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(summary.prefill_endpoint(), prefill.server->address());
  }
  // With every endpoint down the error says so and is UNAVAILABLE.
  DecodeHarness nowhere(dead, engine.get());
  v1::GenerateRequest req;
  req.add_token_ids(1);
  req.set_max_new_tokens(1);
  grpc::Status s = CallGenerate(nowhere.Stub().get(), req);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find(dead), std::string::npos) << s.error_message();
}

TEST(Service, ADnsNameReachesThePrefill) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  // localhost may also resolve to ::1, where nothing listens: round-robin
  // over the name's addresses must skip it.
  DecodeHarness decode("dns:///localhost:" + std::to_string(prefill.server->port()), engine.get());
  auto stub = decode.Stub();
  for (int i = 0; i < 3; ++i) {
    v1::GenerateRequest req;
    for (int t = 0; t < 20; ++t) req.add_token_ids((t * 5 + i) % 128);
    req.set_max_new_tokens(2);
    std::vector<int32_t> tokens;
    grpc::Status s = CallGenerate(stub.get(), req, &tokens);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(tokens.size(), 2u);
  }
}

// The services' first names (seer.v1.Prefill, seer.v1.Decode) still answer,
// with the same messages as the new ones, and health knows both names.
TEST(Service, TheDeprecatedNamesAnswerAsTheNewOnes) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeHarness decode(prefill.server->address(), engine.get());
  using HS = grpc::health::v1::HealthCheckResponse;
  EXPECT_EQ(seer::testing::Health(prefill.server->address(), "seer.v1.Prefill"), HS::SERVING);
  EXPECT_EQ(seer::testing::Health(decode.server->address(), "seer.v1.Decode"), HS::SERVING);

  v1::PrefillRequest req;
  req.set_request_id("deprecated-names");  // the header carries it
  for (int t = 0; t < 150; ++t) req.add_token_ids((t * 7) % 128);
  std::vector<v1::PrefillResponse> now, before;
  ASSERT_TRUE(CallPrefill(prefill.Stub().get(), req, &now).ok());
  auto legacy_prefill =
      v1::Prefill::NewStub(grpc::CreateChannel(prefill.server->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = legacy_prefill->Prefill(&ctx, req);
  for (v1::PrefillResponse msg; reader->Read(&msg);) before.push_back(msg);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(before.size(), now.size());
  for (size_t i = 0; i + 1 < now.size(); ++i) {  // the header and the KV (the summary has timings)
    v1::PrefillResponse a = now[i], b = before[i];
    if (a.has_header()) {  // a transfer id is per call
      a.mutable_header()->clear_transfer_id();
      b.mutable_header()->clear_transfer_id();
    }
    EXPECT_EQ(a.SerializeAsString(), b.SerializeAsString()) << "message " << i;
  }

  v1::GenerateRequest g;
  *g.mutable_token_ids() = req.token_ids();
  g.set_max_new_tokens(6);
  std::vector<int32_t> tokens_now, tokens_before;
  ASSERT_TRUE(CallGenerate(decode.Stub().get(), g, &tokens_now).ok());
  auto legacy_decode =
      v1::Decode::NewStub(grpc::CreateChannel(decode.server->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext gctx;
  gctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto greader = legacy_decode->Generate(&gctx, g);
  for (v1::GenerateResponse msg; greader->Read(&msg);)
    if (msg.event_case() == v1::GenerateResponse::kToken) tokens_before.push_back(msg.token());
  ASSERT_TRUE(greader->Finish().ok());
  EXPECT_EQ(tokens_before, tokens_now);
  EXPECT_EQ(tokens_now.size(), 6u);
}

// A Generate that gives no max_new_tokens gets the server's
// --default-max-new-tokens, capped by --max-new-tokens.
TEST(Service, AGenerateWithoutMaxNewTokensGetsTheServersDefault) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeServiceOptions options;
  options.default_new_tokens = 7;
  DecodeHarness decode(prefill.server->address(), engine.get(), options);
  v1::GenerateRequest g;
  for (int t = 0; t < 30; ++t) g.add_token_ids((t * 3) % 128);
  std::vector<int32_t> tokens;
  v1::GenerateSummary summary;
  ASSERT_TRUE(CallGenerate(decode.Stub().get(), g, &tokens, &summary).ok());
  EXPECT_EQ(tokens.size(), 7u);
  EXPECT_EQ(summary.finish_reason(), "length");

  options.default_new_tokens = 500;
  options.max_new_tokens = 5;
  DecodeHarness capped(prefill.server->address(), engine.get(), options);
  tokens.clear();
  ASSERT_TRUE(CallGenerate(capped.Stub().get(), g, &tokens).ok());
  EXPECT_EQ(tokens.size(), 5u);

  // Near the context's end the default shrinks to the room left (2048
  // positions, 2040 of them prompt: 8 new tokens), as OpenAI-style servers
  // cap a default; an explicit max_new_tokens is refused as asked.
  options.default_new_tokens = 500;
  options.max_new_tokens = 4096;
  DecodeHarness near_end(prefill.server->address(), engine.get(), options);
  v1::GenerateRequest full;
  for (int t = 0; t < 2040; ++t) full.add_token_ids((t * 5) % 128);
  tokens.clear();
  ASSERT_TRUE(CallGenerate(near_end.Stub().get(), full, &tokens, &summary).ok());
  EXPECT_EQ(tokens.size(), 8u);
  EXPECT_EQ(summary.finish_reason(), "length");
  full.set_max_new_tokens(500);
  const grpc::Status explicit_too_many = CallGenerate(near_end.Stub().get(), full);
  EXPECT_EQ(explicit_too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << explicit_too_many.error_message();
  EXPECT_NE(explicit_too_many.error_message().find("max_new_tokens: 500"), std::string::npos)
      << explicit_too_many.error_message();
}

// Greedy decoding of `ids` on the monolithic engine with OpenAI's logit
// adjustments written out in double: logit + bias - (c * frequency +
// presence) for a token generated c > 0 times; the largest wins, the lowest
// id on ties.
std::vector<int32_t> AdjustedGreedy(Engine& engine, const std::vector<int32_t>& ids, int n, double presence,
                                    double frequency, const std::map<int32_t, double>& bias) {
  std::map<int32_t, int> count;
  return seer::testing::MonolithicTokens(engine, ids, n, [&](const std::vector<float>& logits) {
    int32_t best = -1;
    double best_value = 0.0;
    for (int32_t j = 0; j < static_cast<int32_t>(logits.size()); ++j) {
      double x = logits[j];
      if (auto b = bias.find(j); b != bias.end()) x += b->second;
      if (auto c = count.find(j); c != count.end()) x -= c->second * frequency + presence;
      if (best < 0 || x > best_value) best = j, best_value = x;
    }
    ++count[best];
    return best;
  });
}

// A prefill server and two decode workers on the fixture Llama: one that
// decodes each request alone, and one with paged decode (a batch of 4).
struct AloneAndBatched {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  std::unique_ptr<Engine> paged = EnablePaged(LoadEngine(Path("llama")));
  PrefillHarness prefill{{}, engine.get()};
  DecodeHarness alone{prefill.server->address(), engine.get()};
  DecodeHarness batched{prefill.server->address(), paged.get()};
  std::unique_ptr<Tokenizer> tokenizer;

  // The fixture model's tokenizer, on both decode services, with these
  // end-of-text ids; null (a test failure) when it does not load. Before any
  // call is in flight.
  const Tokenizer* UseTokenizer(std::vector<int32_t> end_ids) {
    auto loaded = Tokenizer::Load(Path("llama"));
    EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
    if (!loaded.ok()) return nullptr;
    tokenizer = std::move(loaded).value();
    alone.service->SetTokenizer(tokenizer.get(), end_ids);
    batched.service->SetTokenizer(tokenizer.get(), end_ids);
    return tokenizer.get();
  }

  static std::unique_ptr<Engine> EnablePaged(std::unique_ptr<Engine> e) {
    PagedDecodeOptions po;
    po.page_tokens = 16;
    po.pool_bytes = int64_t{64} << 20;
    po.max_batch = 4;
    EXPECT_TRUE(e->EnablePagedDecode(po).ok());
    return e;
  }
};

// A Generate request of `ids` asking for `n` tokens sampled as `sp` says.
v1::GenerateRequest SampledRequest(const std::vector<int32_t>& ids, int n, const SamplingParams& sp) {
  v1::GenerateRequest g;
  for (int32_t id : ids) g.add_token_ids(id);
  g.set_max_new_tokens(n);
  v1::Sampling* s = g.mutable_sampling();
  s->set_temperature(static_cast<float>(sp.temperature));
  s->set_top_k(sp.top_k);
  s->set_seed(sp.seed);
  s->set_presence_penalty(static_cast<float>(sp.presence_penalty));
  s->set_frequency_penalty(static_cast<float>(sp.frequency_penalty));
  s->set_top_p(static_cast<float>(sp.top_p));
  s->set_min_p(static_cast<float>(sp.min_p));
  s->set_repetition_penalty(static_cast<float>(sp.repetition_penalty));
  for (const LogitAdjustment& b : sp.logit_bias) (*s->mutable_logit_bias())[b.id] = b.delta;
  return g;
}

// The `n` tokens a local Sampler with `sp` draws from the monolithic
// engine's logits after `ids`: what a server must send for the same request.
std::vector<int32_t> LocalSamplerTokens(Engine& engine, const std::vector<int32_t>& ids, int n,
                                        const SamplingParams& sp) {
  Sampler local(sp);
  return seer::testing::MonolithicTokens(engine, ids, n, [&](const std::vector<float>& l) { return local.Sample(l); });
}

// presence_penalty, frequency_penalty and logit_bias through both services,
// on the decode worker's two paths (alone, and in the paged batch): the
// tokens of OpenAI's formula applied by the test to the monolithic engine's
// logits. A sampled request with a seed gives what a local Sampler with the
// same parameters draws from the same logits, so the servers count each
// generated token exactly once.
TEST(Service, PenaltiesAndLogitBiasGiveOpenAisTokens) {
  AloneAndBatched servers;

  constexpr int kNew = 24;
  const std::vector<int32_t> ids = seer::testing::RandomIds(70, 128, 11);
  const std::vector<int32_t> plain = AdjustedGreedy(*servers.engine, ids, kNew, 0, 0, {});
  struct Case {
    double presence, frequency;
    std::map<int32_t, double> bias;
  };
  const Case cases[] = {
      {1.5, 0.0, {}},
      {0.0, 2.0, {}},
      {0.5, 0.75, {{plain[0], -100.0}, {3, 2.0}, {64, 1.5}}},
      {-2.0, 0.0, {{plain[1], -1.0}}},
      {0.0, 0.0, {{42, 100.0}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("presence " + std::to_string(c.presence) + " frequency " + std::to_string(c.frequency));
    const std::vector<int32_t> want = AdjustedGreedy(*servers.engine, ids, kNew, c.presence, c.frequency, c.bias);
    EXPECT_NE(want, plain) << "the case must change the greedy reply";
    v1::GenerateRequest g;
    for (int32_t id : ids) g.add_token_ids(id);
    g.set_max_new_tokens(kNew);
    g.mutable_sampling()->set_presence_penalty(static_cast<float>(c.presence));
    g.mutable_sampling()->set_frequency_penalty(static_cast<float>(c.frequency));
    for (const auto& [id, b] : c.bias) (*g.mutable_sampling()->mutable_logit_bias())[id] = static_cast<float>(b);
    for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
      std::vector<int32_t> got;
      const grpc::Status s = CallGenerate(h->Stub().get(), g, &got);
      ASSERT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(got, want) << (h == &servers.alone ? "alone" : "batched");
    }
  }
  EXPECT_EQ(AdjustedGreedy(*servers.engine, ids, 6, 0, 0, {{42, 100.0}}), std::vector<int32_t>(6, 42));

  // Sampled, with a seed: a local Sampler on the same logits.
  SamplingParams sp;
  sp.temperature = 0.9;
  sp.top_k = 40;
  sp.seed = 2024;
  sp.presence_penalty = 0.7;
  sp.frequency_penalty = 1.1;
  sp.logit_bias = {{plain[0], -3.0f}, {17, 2.0f}};
  const std::vector<int32_t> want = LocalSamplerTokens(*servers.engine, ids, kNew, sp);
  const v1::GenerateRequest g = SampledRequest(ids, kNew, sp);
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    std::vector<int32_t> got;
    ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got).ok());
    EXPECT_EQ(got, want) << (h == &servers.alone ? "alone" : "batched");
  }
}

// A top_k at or above the vocabulary keeps every token, as vLLM takes it:
// the same seeded tokens as top_k 0, alone and batched; a smaller top_k
// changes them.
TEST(Service, ATopKAboveTheVocabularyKeepsEveryToken) {
  AloneAndBatched servers;
  const std::vector<int32_t> ids = seer::testing::RandomIds(30, 128, 21);
  SamplingParams sp;
  sp.temperature = 1.5;
  sp.seed = 5;
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    std::vector<int32_t> all, at_vocab, above, cut;
    ASSERT_TRUE(CallGenerate(h->Stub().get(), SampledRequest(ids, 24, sp), &all).ok());
    for (auto [k, out] : {std::pair{128, &at_vocab}, std::pair{100000, &above}, std::pair{3, &cut}}) {
      v1::GenerateRequest g = SampledRequest(ids, 24, sp);
      g.mutable_sampling()->set_top_k(k);
      const grpc::Status s = CallGenerate(h->Stub().get(), g, out);
      ASSERT_TRUE(s.ok()) << "top_k " << k << ": " << s.error_message();
    }
    EXPECT_EQ(at_vocab, all);
    EXPECT_EQ(above, all);
    EXPECT_NE(cut, all) << "top_k 3 must change a temperature-1.5 reply";
  }
}

// min_new_tokens and ignore_eos, alone and batched, greedy and sampled. The
// end-of-text id here is the first token of the greedy reply that is new
// to it (at k), so a text reply ends there. ignore_eos goes on past it; the
// first min_new_tokens tokens cannot be it (nor a stop token), and then the
// reply ends at it as usual. The reference is a local Sampler with the same
// ban (SamplingParams::min_tokens) on the monolithic engine's logits.
TEST(Service, MinNewTokensAndIgnoreEosKeepATextReplyGoing) {
  AloneAndBatched servers;
  constexpr int kNew = 24;
  const std::vector<int32_t> ids = seer::testing::RandomIds(30, 128, 31);
  auto reference = [&](const SamplingParams& sp) { return LocalSamplerTokens(*servers.engine, ids, kNew, sp); };
  const std::vector<int32_t> greedy = reference(SamplingParams{});
  size_t k = 1;
  while (k < greedy.size() && std::find(greedy.begin(), greedy.begin() + k, greedy[k]) != greedy.begin() + k) ++k;
  ASSERT_LT(k, greedy.size() - 4) << "the greedy reply has no new token early enough";
  const int32_t end = greedy[k];
  ASSERT_NE(servers.UseTokenizer({end}), nullptr);
  // The reply as the text APIs end it: at the first `end` after the first
  // `min` tokens, or at kNew.
  auto ended = [&](std::vector<int32_t> tokens, int min) {
    for (size_t i = static_cast<size_t>(min); i < tokens.size(); ++i) {
      if (tokens[i] == end) {
        tokens.resize(i + 1);
        break;
      }
    }
    return tokens;
  };
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    for (double temperature : {0.0, 1.0}) {
      SCOPED_TRACE("temperature " + std::to_string(temperature));
      SamplingParams sp;
      sp.temperature = temperature;
      sp.seed = 12;
      v1::GenerateRequest g = SampledRequest(ids, kNew, sp);
      g.set_text_reply(true);
      const std::vector<int32_t> free = reference(sp);
      std::vector<int32_t> got;
      v1::GenerateSummary summary;
      ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got, &summary).ok());
      EXPECT_EQ(got, ended(free, 0));

      // ignore_eos: the whole reply, past every `end`.
      got.clear();
      g.set_ignore_eos(true);
      ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got, &summary).ok());
      EXPECT_EQ(got, free);
      EXPECT_EQ(summary.finish_reason(), "length");
      g.set_ignore_eos(false);

      // min_new_tokens: `end` banned until then, as for the local sampler.
      for (int min : {static_cast<int>(k) + 1, static_cast<int>(k) + 4, kNew}) {
        SCOPED_TRACE("min_new_tokens " + std::to_string(min));
        SamplingParams banned = sp;
        banned.min_tokens = min;
        banned.end_ids = {end};
        const std::vector<int32_t> want = ended(reference(banned), min);
        EXPECT_EQ(std::count(want.begin(), want.begin() + min, end), 0);
        if (temperature == 0.0 && min == static_cast<int>(k) + 1) {
          EXPECT_NE(want, ended(free, 0)) << "the ban must change the greedy reply";
        }
        got.clear();
        g.set_min_new_tokens(min);
        ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got, &summary).ok());
        EXPECT_EQ(got, want);
        EXPECT_EQ(summary.finish_reason(), got.size() < static_cast<size_t>(kNew) ? "stop" : "length");
        // A stop token is held off the same way.
        v1::GenerateRequest by_id = SampledRequest(ids, kNew, sp);
        by_id.add_stop_token_ids(end);
        by_id.set_min_new_tokens(min);
        got.clear();
        ASSERT_TRUE(CallGenerate(h->Stub().get(), by_id, &got).ok());
        EXPECT_EQ(got, want);
      }
      g.set_min_new_tokens(0);
    }
  }
}

// min_p and repetition_penalty through both services, alone and batched:
// the tokens a local Sampler with the same parameters draws from the
// monolithic engine's logits, the prompt's ids counted as seen by the
// repetition penalty. Each case must change the reply it would have had
// without the field, and the prompt's ids must matter, so that a server
// that dropped either field or the prompt would fail here.
TEST(Service, MinPAndRepetitionPenaltyGiveTheLocalSamplersTokens) {
  AloneAndBatched servers;
  constexpr int kNew = 24;
  const std::vector<int32_t> ids = seer::testing::RandomIds(40, 128, 23);
  auto reference = [&](const SamplingParams& sp) { return LocalSamplerTokens(*servers.engine, ids, kNew, sp); };
  struct Case {
    double temperature, min_p, repetition;
    int top_k;
  };
  const Case cases[] = {{0.0, 0.0, 1.3, 0}, {0.0, 0.0, 0.7, 0}, {1.0, 0.2, 1.0, 0}, {1.2, 0.05, 1.5, 20}};
  for (const Case& c : cases) {
    SCOPED_TRACE("temperature " + std::to_string(c.temperature) + " min_p " + std::to_string(c.min_p) + " repetition " +
                 std::to_string(c.repetition));
    SamplingParams sp;
    sp.temperature = c.temperature;
    sp.top_k = c.top_k;
    sp.seed = 5;
    SamplingParams plain = sp;
    sp.min_p = c.min_p;
    sp.repetition_penalty = c.repetition;
    const std::vector<int32_t> without_prompt = reference(sp);
    sp.prompt_ids = ids;
    const std::vector<int32_t> want = reference(sp);
    EXPECT_NE(want, reference(plain)) << "the fields must change this reply";
    if (c.repetition != 1.0) EXPECT_NE(want, without_prompt) << "the prompt's ids must change this reply";
    for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
      SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
      std::vector<int32_t> got;
      ASSERT_TRUE(CallGenerate(h->Stub().get(), SampledRequest(ids, kNew, sp), &got).ok());
      EXPECT_EQ(got, want);
    }
  }
  // The server names the field and its range.
  for (const auto& [min_p, repetition, says] :
       {std::tuple<float, float, const char*>{1.5f, 1.0f, "sampling.min_p: 1.5 is out of range [0, 1]"},
        {0.0f, -1.0f, "sampling.repetition_penalty: -1 is out of range (0, 100]"},
        {0.0f, 250.0f, "sampling.repetition_penalty: 250 is out of range (0, 100]"}}) {
    v1::GenerateRequest g = SampledRequest(ids, 2, SamplingParams{});
    g.mutable_sampling()->set_min_p(min_p);
    g.mutable_sampling()->set_repetition_penalty(repetition);
    std::vector<int32_t> got;
    const grpc::Status st = CallGenerate(servers.alone.Stub().get(), g, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find(says), std::string::npos) << st.error_message();
  }
}

// include_stop_str_in_output and skip_special_tokens through both services,
// alone and batched, against Tokenizer::Decode of the local greedy reply:
// the text cut before a stop string, or after it; after a stop token's
// text; and a special token forced by a bias, left out or kept.
TEST(Service, IncludedStopsAndKeptSpecialTokensShapeTheText) {
  AloneAndBatched servers;
  const Tokenizer* loaded = servers.UseTokenizer({});  // no end-of-text ids: the replies run to their length
  ASSERT_NE(loaded, nullptr);
  const Tokenizer& tok = *loaded;
  constexpr int kNew = 24;
  const std::vector<int32_t> ids = seer::testing::RandomIds(30, 128, 41);
  const std::vector<int32_t> greedy = LocalSamplerTokens(*servers.engine, ids, kNew, SamplingParams{});
  auto decode = [&](size_t n, bool skip = true) {
    StatusOr<std::string> t = tok.Decode(std::span<const int32_t>(greedy.data(), n), skip);
    EXPECT_TRUE(t.ok());
    return t.ok() ? *t : std::string();
  };
  const std::string full = decode(greedy.size());
  auto alone = [&](int32_t id, bool skip) {  // one token's text; "?" when it has none to give
    StatusOr<std::string> t = tok.Decode(std::vector<int32_t>{id}, skip);
    return t.ok() ? *t : std::string("?");
  };
  // A stop string: two ASCII characters from the second half of the text.
  std::string stop;
  for (size_t i = full.size() / 2; i + 1 < full.size() && stop.empty(); ++i) {
    if (std::isalnum(static_cast<unsigned char>(full[i])) && std::isalnum(static_cast<unsigned char>(full[i + 1])))
      stop = full.substr(i, 2);
  }
  ASSERT_FALSE(stop.empty()) << "no stop string to take from '" << full << "'";
  // A stop token: the first token that is new to the reply and has text.
  size_t k = 1;
  while (k < greedy.size() && (std::find(greedy.begin(), greedy.begin() + k, greedy[k]) != greedy.begin() + k ||
                               alone(greedy[k], true).empty() || alone(greedy[k], true) == "?"))
    ++k;
  ASSERT_LT(k, greedy.size()) << "no stop token to take";
  // A special token, forced: id 1 (the fixture's "<s>").
  const std::string special = alone(1, false);
  ASSERT_TRUE(!special.empty() && special != "?");
  ASSERT_EQ(alone(1, true), "");

  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    auto text_of = [&](const v1::GenerateRequest& g) {
      std::string text;
      v1::GenerateSummary summary;
      EXPECT_TRUE(CallGenerate(h->Stub().get(), g, nullptr, &summary, &text).ok());
      return std::make_pair(text, summary.finish_reason());
    };
    v1::GenerateRequest g = SampledRequest(ids, kNew, SamplingParams{});
    g.set_text_reply(true);
    EXPECT_EQ(text_of(g), std::make_pair(full, std::string("length")));
    g.add_stop(stop);
    EXPECT_EQ(text_of(g), std::make_pair(full.substr(0, full.find(stop)), std::string("stop")));
    g.set_include_stop_str_in_output(true);
    EXPECT_EQ(text_of(g), std::make_pair(full.substr(0, full.find(stop) + stop.size()), std::string("stop")));

    v1::GenerateRequest by_id = SampledRequest(ids, kNew, SamplingParams{});
    by_id.set_text_reply(true);
    by_id.add_stop_token_ids(greedy[k]);
    EXPECT_EQ(text_of(by_id).first, decode(k)) << "the stop token's text is left out";
    by_id.set_include_stop_str_in_output(true);
    EXPECT_EQ(text_of(by_id).first, decode(k + 1)) << "the stop token's text is kept";

    v1::GenerateRequest forced = SampledRequest(ids, 3, SamplingParams{});
    forced.set_text_reply(true);
    (*forced.mutable_sampling()->mutable_logit_bias())[1] = 100.0f;
    EXPECT_EQ(text_of(forced).first, "");
    forced.set_skip_special_tokens(false);
    EXPECT_EQ(text_of(forced).first, special + special + special);
  }
}

// bad_words and allowed_token_ids through both services, alone and batched:
// for bad_words, the reply is a local
// Sampler's with the words' token sequences (BadWordSequences) banned, on the
// monolithic engine's logits; it differs from the free reply, and no banned
// sequence appears in it. Too many words, or an empty one, are refused by
// name.
TEST(Service, BadWordsAreNeverSpelled) {
  AloneAndBatched servers;
  const Tokenizer* loaded = servers.UseTokenizer({});
  ASSERT_NE(loaded, nullptr);
  const Tokenizer& tok = *loaded;
  constexpr int kNew = 24;
  const std::vector<int32_t> ids = seer::testing::RandomIds(30, 128, 51);
  const std::vector<int32_t> free = LocalSamplerTokens(*servers.engine, ids, kNew, SamplingParams{});
  // Words from the free reply: one token's text, and two tokens' text.
  auto text = [&](size_t at, size_t n) {
    StatusOr<std::string> t = tok.Decode(std::span<const int32_t>(free.data() + at, n), true);
    return t.ok() ? *t : std::string();
  };
  std::vector<std::string> words;
  for (size_t k = 2; k + 1 < free.size() && words.size() < 2; k += 5) {
    const std::string w = text(k, words.empty() ? 1 : 2);
    if (w.find_first_not_of(" ") != std::string::npos && w.find("\xEF\xBF\xBD") == std::string::npos)
      words.push_back(w);
  }
  ASSERT_EQ(words.size(), 2u);
  auto banned = BadWordSequences(tok, words);
  ASSERT_TRUE(banned.ok()) << banned.status().ToString();
  SamplingParams sp;
  sp.bad_words = *banned;
  const std::vector<int32_t> want = LocalSamplerTokens(*servers.engine, ids, kNew, sp);
  EXPECT_NE(want, free) << "the words must change the reply";
  for (const std::vector<int32_t>& seq : *banned) {
    EXPECT_EQ(std::search(want.begin(), want.end(), seq.begin(), seq.end()), want.end());
  }
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    v1::GenerateRequest g = SampledRequest(ids, kNew, SamplingParams{});
    for (const std::string& w : words) g.add_bad_words(w);
    std::vector<int32_t> got;
    ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got).ok());
    EXPECT_EQ(got, want);
  }
  // allowed_token_ids: the local Sampler's reply with the same allow list,
  // every token in it; an id past the vocabulary is named by its index.
  SamplingParams allow;
  allow.allowed_ids = {free[3], free[7], 17};
  allow.vocab_size = servers.engine->config().vocab_size;
  allow.temperature = 1.0;
  allow.seed = 4;
  const std::vector<int32_t> only = LocalSamplerTokens(*servers.engine, ids, kNew, allow);
  for (int32_t t : only) EXPECT_TRUE(t == free[3] || t == free[7] || t == 17) << t;
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    v1::GenerateRequest g = SampledRequest(ids, kNew, allow);
    for (int32_t id : allow.allowed_ids) g.mutable_sampling()->add_allowed_token_ids(id);
    std::vector<int32_t> got;
    ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got).ok());
    EXPECT_EQ(got, only);
  }
  v1::GenerateRequest past = SampledRequest(ids, 2, SamplingParams{});
  past.mutable_sampling()->add_allowed_token_ids(3);
  past.mutable_sampling()->add_allowed_token_ids(128);
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), past),
                "sampling.allowed_token_ids[1]: 128 is out of range [0, 128)");

  v1::GenerateRequest many = SampledRequest(ids, 2, SamplingParams{});
  for (int i = 0; i < 65; ++i) many.add_bad_words("w");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), many), "bad_words: 65 words exceed the limit of 64");
  v1::GenerateRequest empty = SampledRequest(ids, 2, SamplingParams{});
  empty.add_bad_words("w");
  empty.add_bad_words("");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), empty), "bad_words[1]: 0 bytes, need 1 to 256");
}

// Guided decoding through both services, alone and batched: the reply is
// the tokens a local Sampler draws from the monolithic engine's logits with
// the same guide (the same grammar on the tokenizer's vocabulary), up to the
// end-of-text id that the guide allows once the text is whole; and that
// text is what the guide asked for, judged by independent code: the JSON
// parser, std::regex, the list of choices. The refusals name the field.
// A guide that can no longer follow its whole language fails the call
// with INVALID_ARGUMENT naming the byte, after the tokens it did follow,
// on both workers and for every choice: here a grammar ambiguous in itself
// whose first 13 bytes can only be a's, past which it has more ways to
// close them than the matcher keeps.
TEST(Service, AGuideThatLosesItsLanguageFailsTheCall) {
  AloneAndBatched servers;
  ASSERT_NE(servers.UseTokenizer({2}), nullptr);
  const std::vector<int32_t> ids = seer::testing::RandomIds(20, 128, 61);
  SamplingParams sp;
  sp.temperature = 1.0;
  sp.seed = 3;
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    for (int n : {1, 2}) {
      SCOPED_TRACE(std::string(h == &servers.alone ? "alone" : "batched") + ", n = " + std::to_string(n));
      v1::GenerateRequest g = SampledRequest(ids, 40, sp);
      g.set_n(n);
      g.mutable_guide()->set_grammar("root ::= x\nx ::= \"a\" x \"b\" | \"a\" x \"c\" | \"aaaaaaaaaaaaa\"\n");
      std::vector<int32_t> tokens;
      std::string text;
      const grpc::Status s = CallGenerate(h->Stub().get(), g, &tokens, nullptr, &text);
      ExpectInvalid(s, "guide: the guide cannot follow every sentence of its grammar past byte ");
      EXPECT_FALSE(tokens.empty()) << "the tokens it could follow come first";
      EXPECT_EQ(text.find_first_not_of('a'), std::string::npos) << text;
      // Alone, the reply is exactly the bytes the guide could follow: the
      // token that took the lost byte is not sent.
      const std::string& m = s.error_message();
      const size_t at = m.find("past byte ");
      if (n == 1 && at != std::string::npos) {
        EXPECT_EQ(text.size(), std::stoul(m.substr(at + 10))) << m;
      }
    }
  }
}

TEST(Service, GuidedRepliesAreTheLocalSamplersAndWhatTheGuideAsked) {
  AloneAndBatched servers;
  constexpr int32_t kEnd = 2;  // </s>
  const Tokenizer* loaded = servers.UseTokenizer({kEnd});
  ASSERT_NE(loaded, nullptr);
  const Tokenizer& tok = *loaded;
  auto vocabulary = GuideVocabulary::FromTokenizer(tok);
  ASSERT_TRUE(vocabulary.ok());
  constexpr int kNew = 160;
  const std::vector<int32_t> ids = seer::testing::RandomIds(20, 128, 61);
  struct Case {
    GuideSpec spec;
    std::function<bool(const std::string&)> accepts;  // the whole text, judged independently
  };
  std::vector<Case> cases;
  {
    Case c;
    c.spec.kind = GuideSpec::Kind::kJsonSchema;
    c.spec.text = R"({"type": "object", "properties": {"id": {"type": "integer"}, "tag": {"enum": ["a", "b", 7]},
                     "ok": {"type": "boolean"}}, "required": ["id", "tag", "ok"]})";
    c.accepts = [](const std::string& text) {
      StatusOr<JsonValue> v = JsonValue::Parse(text);
      if (!v.ok() || !v->is_object() || v->as_object().size() != 3) return false;
      const JsonValue* id = v->Find("id");
      const JsonValue* tag = v->Find("tag");
      const JsonValue* ok = v->Find("ok");
      return id != nullptr && id->is_integer() && tag != nullptr &&
             (tag->Dump() == "\"a\"" || tag->Dump() == "\"b\"" || tag->Dump() == "7") && ok != nullptr && ok->is_bool();
    };
    cases.push_back(c);
  }
  {
    Case c;
    c.spec.kind = GuideSpec::Kind::kRegex;
    c.spec.text = "[0-9]{2,3}-(red|green)[a-z]{0,4}";
    c.accepts = [](const std::string& text) {
      return std::regex_match(text, std::regex("[0-9]{2,3}-(red|green)[a-z]{0,4}"));
    };
    cases.push_back(c);
  }
  {
    Case c;
    c.spec.kind = GuideSpec::Kind::kChoice;
    c.spec.choices = {"yes", "no", "the answer is 42"};
    c.accepts = [](const std::string& text) { return text == "yes" || text == "no" || text == "the answer is 42"; };
    cases.push_back(c);
  }
  {
    Case c;
    c.spec.kind = GuideSpec::Kind::kGrammar;
    c.spec.text = "# a GBNF grammar\nroot ::= \"id-\" [0-9]{1,3} (\" \" word){0,3}\nword ::= [a-z]{1,5}\n";
    c.accepts = [](const std::string& text) {
      return std::regex_match(text, std::regex("id-[0-9]{1,3}( [a-z]{1,5}){0,3}"));
    };
    cases.push_back(c);
  }
  {
    Case c;
    c.spec.kind = GuideSpec::Kind::kJsonObject;
    c.accepts = [](const std::string& text) {
      StatusOr<JsonValue> v = JsonValue::Parse(text);
      return v.ok() && v->is_object();
    };
    cases.push_back(c);
  }
  int whole = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    SCOPED_TRACE("case " + std::to_string(k));
    StatusOr<std::shared_ptr<const Grammar>> grammar = CompileGuide(c.spec);
    ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
    for (uint64_t seed : {1u, 2u}) {
      SamplingParams sp;
      sp.temperature = 1.0;
      sp.seed = seed;
      sp.vocab_size = 128;
      sp.end_ids = {kEnd};
      sp.guide = std::make_shared<GrammarGuideFactory>(*grammar, *vocabulary);
      std::vector<int32_t> want = LocalSamplerTokens(*servers.engine, ids, kNew, sp);
      const auto end = std::find(want.begin(), want.end(), kEnd);
      const bool ended = end != want.end();
      if (ended) want.erase(end + 1, want.end());
      StatusOr<std::string> text = tok.Decode(std::span<const int32_t>(want.data(), want.size() - (ended ? 1 : 0)),
                                              /*skip_special_tokens=*/true);
      ASSERT_TRUE(text.ok());
      if (ended) {
        EXPECT_TRUE(c.accepts(*text)) << *text;
        ++whole;
      }
      for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
        SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
        v1::GenerateRequest g = SampledRequest(ids, kNew, sp);
        v1::Guide* guide = g.mutable_guide();
        switch (c.spec.kind) {
          case GuideSpec::Kind::kJsonSchema: guide->set_json_schema(c.spec.text); break;
          case GuideSpec::Kind::kRegex: guide->set_regex(c.spec.text); break;
          case GuideSpec::Kind::kGrammar: guide->set_grammar(c.spec.text); break;
          case GuideSpec::Kind::kChoice:
            for (const std::string& choice : c.spec.choices) guide->mutable_choice()->add_choices(choice);
            break;
          default: guide->set_json_object(true);
        }
        std::vector<int32_t> got;
        std::string got_text;
        v1::GenerateSummary summary;
        ASSERT_TRUE(CallGenerate(h->Stub().get(), g, &got, &summary, &got_text).ok());
        EXPECT_EQ(got, want);
        EXPECT_EQ(got_text, *text);
        EXPECT_EQ(summary.finish_reason(), ended ? "stop" : "length");
      }
    }
  }
  EXPECT_GE(whole, 5) << "most replies should reach a whole text within " << kNew << " tokens";

  v1::GenerateRequest eos = SampledRequest(ids, 4, SamplingParams{});
  eos.mutable_guide()->set_json_object(true);
  eos.set_ignore_eos(true);
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), eos), "ignore_eos: cannot be combined with guide");
  v1::GenerateRequest bad = SampledRequest(ids, 4, SamplingParams{});
  bad.mutable_guide()->set_json_schema(R"({"type": "integer", "minimum": 3})");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), bad), "guide.json_schema: ");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), bad), "minimum");
  v1::GenerateRequest lookaround = SampledRequest(ids, 4, SamplingParams{});
  lookaround.mutable_guide()->set_regex("a(?=b)");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), lookaround), "guide.regex: ");
  v1::GenerateRequest undefined = SampledRequest(ids, 4, SamplingParams{});
  undefined.mutable_guide()->set_grammar("root ::= item+");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), undefined), "guide.grammar: ");
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), undefined), "item");
  v1::GenerateRequest none = SampledRequest(ids, 4, SamplingParams{});
  none.mutable_guide();
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), none), "guide: set but names no kind");
  // A worker without a tokenizer cannot read text, so it cannot guide it.
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeHarness untokenized(prefill.server->address(), engine.get());
  v1::GenerateRequest g = SampledRequest(ids, 4, SamplingParams{});
  g.mutable_guide()->set_regex("a");
  const grpc::Status s = CallGenerate(untokenized.Stub().get(), g);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("guide: seer-decode has no tokenizer"), std::string::npos) << s.error_message();
}

// Logprobs over gRPC, alone and batched: with each token, the model's
// log-probability of it and its 4 most likely alternatives, from the raw
// logits whatever the sampling (seeded, with penalties and a bias), against
// log_softmax in long double of the monolithic engine's logits; the tokens
// are those of the same request without logprobs.
// A token that is part of a character shows as U+FFFD and carries its own
// bytes (raw_bytes, OpenAI's `bytes`). With the bundled model's byte-level
// tokenizer, ids 96 to 127 are the single bytes 0xA1 to 0xC1 (GPT-2's byte
// alphabet maps them to the code points of the same value), which never
// stand alone in UTF-8; ids below are printable ASCII. A +100 bias makes
// every token id 100, byte 0xA5.
TEST(Service, ATokenThatIsPartOfACharacterCarriesItsOwnBytes) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeHarness decode(prefill.server->address(), engine.get());
  auto tokenizer = Tokenizer::Load(std::string(SEER_SOURCE_DIR) + "/models/seer-small");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  // (After SetEngine, which the harness called: no call is in flight yet.)
  decode.service->SetTokenizer(tokenizer->get(), {});
  v1::GenerateRequest g;
  for (int32_t id : seer::testing::RandomIds(20, 128, 3)) g.add_token_ids(id);
  g.set_max_new_tokens(4);
  g.set_logprobs(12);
  (*g.mutable_sampling()->mutable_logit_bias())[100] = 100.0f;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = decode.Stub()->Generate(&ctx, g);
  v1::GenerateResponse msg;
  int tokens = 0, partial = 0, whole = 0;
  auto expect = [&](const v1::TokenLogprob& t) {
    const std::string piece = *(*tokenizer)->IdToToken(t.token_id());
    if (t.token_id() >= 96) {
      ASSERT_EQ(piece.size(), 2u) << piece;  // one code point from U+00A1 to U+00C1
      const char byte = static_cast<char>(((piece[0] & 0x1F) << 6) | (piece[1] & 0x3F));
      EXPECT_EQ(t.text(), "\xEF\xBF\xBD") << t.token_id();
      EXPECT_EQ(t.raw_bytes(), std::string(1, byte)) << t.token_id();
      ++partial;
    } else {
      EXPECT_EQ(t.text(), piece) << t.token_id();
      EXPECT_TRUE(t.raw_bytes().empty()) << t.token_id();
      ++whole;
    }
  };
  while (reader->Read(&msg)) {
    if (msg.event_case() != v1::GenerateResponse::kToken) continue;
    ++tokens;
    EXPECT_EQ(msg.token(), 100);
    expect(msg.logprobs().chosen());
    for (const v1::TokenLogprob& t : msg.logprobs().top()) expect(t);
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(tokens, 4);
  EXPECT_GT(whole, 0) << "the alternatives hold ASCII tokens too";
}

TEST(Service, LogprobsComeWithEachTokenAsTheModelGivesThem) {
  AloneAndBatched servers;

  constexpr int kNew = 12;
  constexpr int kTop = 4;
  const std::vector<int32_t> ids = seer::testing::RandomIds(40, 128, 5);
  SamplingParams sp;
  sp.temperature = 0.8;
  sp.seed = 77;
  sp.presence_penalty = 0.5;
  sp.logit_bias = {{9, 5.0f}};
  Sampler local(sp);
  std::vector<std::vector<float>> logits;  // each step's, as the monolithic engine gives them
  const std::vector<int32_t> want =
      seer::testing::MonolithicTokens(*servers.engine, ids, kNew, [&](const std::vector<float>& l) {
        logits.push_back(l);
        return local.Sample(l);
      });
  v1::GenerateRequest g = SampledRequest(ids, kNew, sp);
  g.set_logprobs(kTop);
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = h->Stub()->Generate(&ctx, g);
    std::vector<int32_t> got;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.event_case() != v1::GenerateResponse::kToken) {
        EXPECT_FALSE(msg.has_logprobs());
        continue;
      }
      const size_t i = got.size();
      got.push_back(msg.token());
      ASSERT_LT(i, logits.size());
      ASSERT_TRUE(msg.has_logprobs()) << "token " << i;
      const v1::TokenLogprobs& wire = msg.logprobs();
      EXPECT_TRUE(wire.chosen().text().empty()) << "no tokenizer here";
      TokenLogprobs lp{{wire.chosen().token_id(), wire.chosen().logprob()}, {}};
      for (const v1::TokenLogprob& t : wire.top()) lp.top.push_back({t.token_id(), t.logprob()});
      logprobs_test::ExpectLogprobsOf(logits[i], msg.token(), lp, kTop, 1e-4);
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(got, want);
  }
}

// A prompt's logprobs over gRPC, alone and batched: PromptLogprobs messages
// before the first token, in order from position 0 (NaN, no alternatives),
// each against log_softmax (long double) of the monolithic engine's
// every-row logits; then the tokens as without them. Out of range, and over
// the entry limit, is INVALID_ARGUMENT naming prompt_logprobs.
TEST(Service, PromptLogprobsComeBeforeTheTokensAsTheModelGivesThem) {
  AloneAndBatched servers;
  constexpr int kNew = 5;
  const std::vector<int32_t> ids = seer::testing::RandomIds(1500, 128, 8);
  auto cache = servers.engine->NewCache(static_cast<int>(ids.size()));
  ASSERT_TRUE(cache.ok());
  PrefillOptions all;
  all.all_logits = true;
  auto every_row = servers.engine->Prefill(ids, all, cache->get(), nullptr);
  ASSERT_TRUE(every_row.ok());
  const std::vector<int32_t> want = seer::testing::MonolithicTokens(
      *servers.engine, ids, kNew, [](const std::vector<float>& l) { return ArgMax(l); });
  v1::GenerateRequest g = SampledRequest(ids, kNew, SamplingParams{});
  g.set_prompt_logprobs(2);
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = h->Stub()->Generate(&ctx, g);
    std::vector<TokenLogprobs> prompt;
    std::vector<int32_t> got;
    int messages = 0;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_prompt_logprobs()) {
        EXPECT_TRUE(got.empty()) << "prompt logprobs after a token";
        EXPECT_EQ(msg.prompt_logprobs().first(), static_cast<int>(prompt.size()));
        ++messages;
        for (const v1::TokenLogprobs& t : msg.prompt_logprobs().tokens()) {
          TokenLogprobs lp{{t.chosen().token_id(), t.chosen().logprob()}, {}};
          for (const v1::TokenLogprob& alt : t.top()) lp.top.push_back({alt.token_id(), alt.logprob()});
          prompt.push_back(lp);
        }
      }
      if (msg.event_case() == v1::GenerateResponse::kToken) got.push_back(msg.token());
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(got, want);
    EXPECT_EQ(messages, 2) << "1,500 positions in messages of up to 1,024";
    ASSERT_EQ(prompt.size(), ids.size());
    EXPECT_EQ(prompt[0].chosen.id, ids[0]);
    EXPECT_TRUE(std::isnan(prompt[0].chosen.logprob));
    EXPECT_TRUE(prompt[0].top.empty());
    logprobs_test::ExpectPromptLogprobs(every_row->logits, ids,
                                        std::vector<TokenLogprobs>(prompt.begin() + 1, prompt.end()), 2, 1e-5);
  }
  g.set_prompt_logprobs(21);
  ExpectInvalid(CallGenerate(servers.alone.Stub().get(), g), "prompt_logprobs");
  // 1,500 tokens with 20 alternatives are fewer than 2^22 entries; 300,000
  // would not be, but the model takes 2,048 positions: the prefill's own
  // check, called directly, names the field.
  EXPECT_TRUE(CheckPromptLogprobs(20, 1500, "prompt_logprobs").ok());
  const Status over = CheckPromptLogprobs(20, 300000, "prompt_logprobs");
  EXPECT_EQ(over.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(over.message().find("prompt_logprobs: 300000 prompt tokens with 20 alternatives"), std::string::npos)
      << over.ToString();
}

TEST(PrefillTargets, ParsesListsAndNames) {
  auto ok = ParsePrefillTargets("10.0.0.1:50051, prefill-0:1 ,dns:///seer-prefill.default.svc:50051");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, (std::vector<std::string>{"10.0.0.1:50051", "prefill-0:1", "dns:///seer-prefill.default.svc:50051"}));
  for (const char* bad : {"", "a:1,,b:2", "host", "host:", "host:http", ":80"}) {
    auto s = ParsePrefillTargets(bad);
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.status().message().find("--prefill"), std::string::npos);
  }
}

TEST(WorkQueue, AdmitsWorkersPlusQueueAndCancelsWaitingJobs) {
  struct Blocking : WorkQueue::Job {
    std::promise<void> started;
    std::shared_future<void> release;
    std::atomic<bool> ran{false};
    explicit Blocking(std::shared_future<void> r) : release(std::move(r)) {}
    void Run(double) override {
      ran = true;
      started.set_value();
      release.wait();
    }
  };
  std::promise<void> gate;
  std::shared_future<void> release = gate.get_future().share();
  std::vector<std::unique_ptr<Blocking>> jobs;
  for (int i = 0; i < 5; ++i) jobs.push_back(std::make_unique<Blocking>(release));
  {
    WorkQueue q(2, 2);
    EXPECT_TRUE(q.Submit(jobs[0].get()));
    EXPECT_TRUE(q.Submit(jobs[1].get()));
    jobs[0]->started.get_future().wait();
    jobs[1]->started.get_future().wait();
    EXPECT_EQ(q.running(), 2);
    EXPECT_TRUE(q.Submit(jobs[2].get()));
    EXPECT_TRUE(q.Submit(jobs[3].get()));
    EXPECT_FALSE(q.Submit(jobs[4].get())) << "2 workers + 2 waiting is full";
    EXPECT_TRUE(q.Cancel(jobs[3].get()));
    EXPECT_FALSE(q.Cancel(jobs[3].get()));
    EXPECT_FALSE(q.Cancel(jobs[0].get())) << "a running job is not waiting";
    EXPECT_TRUE(q.Submit(jobs[4].get()));
    gate.set_value();
  }  // the destructor runs what was admitted
  EXPECT_TRUE(jobs[2]->ran && jobs[4]->ran);
  EXPECT_FALSE(jobs[3]->ran);
}

// --- isolation: one bad client must not hurt anyone else (issue 15) -----------

namespace isolation {

// Polls `done` every 10 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

double CountByCode(prometheus::Registry& registry, const std::string& family, const std::string& code) {
  for (const auto& fam : registry.Collect())
    if (fam.name == family)
      for (const auto& m : fam.metric)
        for (const auto& l : m.label)
          if (l.name == "code" && l.value == code) return m.counter.value;
  return 0.0;
}

// n choices over gRPC, alone and batched: one Prefill call for the request,
// and choice i's tokens are what a local Sampler seeded with seed + i draws
// from the monolithic engine's logits, each choice ending on its own (a stop
// token ends one, max_new_tokens the others) with a summary of its own;
// the same request alone with seed + i gives choice i's tokens and
// logprobs bit for bit. Prompts of a partial last page (70 = 4 x 16 + 6)
// and of whole pages (64) both leave every KV page back in the pool.
TEST(Service, ChoicesShareOnePrefillAndEachIsItsSeedsReply) {
  AloneAndBatched servers;
  constexpr int kNew = 14, kChoices = 4;
  // Prefill calls made so far (the server counts one a moment after its
  // stream has ended, so the count is waited for, then held to).
  double prefill_calls = 0;
  auto prefills_settle_at = [&](double want) {
    const auto count = [&] { return CountByCode(*servers.prefill.registry, "seer_prefill_requests_total", "OK"); };
    WaitFor([&] { return count() >= want; }, 5s);
    std::this_thread::sleep_for(100ms);
    return count();
  };
  for (const int prompt : {70, 64}) {
    SCOPED_TRACE("prompt " + std::to_string(prompt));
    const std::vector<int32_t> ids = seer::testing::RandomIds(prompt, 128, prompt);
    SamplingParams sp;
    sp.temperature = 1.3;
    sp.top_k = 50;
    sp.seed = 900;
    std::vector<std::vector<int32_t>> want;
    for (int i = 0; i < kChoices; ++i) {
      SamplingParams own = sp;
      own.seed += static_cast<uint64_t>(i);
      want.push_back(LocalSamplerTokens(*servers.engine, ids, kNew, own));
    }
    ASSERT_NE(want[0], want[1]) << "the seeds must give different replies";
    // A token of choice 1's reply that choice 0 never draws ends choice 1
    // there (and any other choice that draws it).
    int32_t stop = -1;
    for (int k = 2; k < kNew && stop < 0; ++k) {
      if (std::find(want[0].begin(), want[0].end(), want[1][k]) == want[0].end()) stop = want[1][k];
    }
    ASSERT_GE(stop, 0);
    std::vector<std::string> finish(kChoices, "length");
    for (int i = 0; i < kChoices; ++i) {
      auto at = std::find(want[i].begin(), want[i].end(), stop);
      if (at != want[i].end()) {
        want[i].erase(at + 1, want[i].end());
        finish[i] = "stop";
      }
    }
    v1::GenerateRequest g = SampledRequest(ids, kNew, sp);
    g.add_stop_token_ids(stop);
    g.set_logprobs(2);
    g.set_n(kChoices);
    for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
      SCOPED_TRACE(h == &servers.alone ? "alone" : "batched");
      ASSERT_EQ(prefills_settle_at(prefill_calls), prefill_calls);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 60s);
      auto reader = h->Stub()->Generate(&ctx, g);
      std::vector<std::vector<int32_t>> got(kChoices);
      std::vector<std::vector<std::string>> logprobs(kChoices);
      std::vector<int> summaries(kChoices, 0);
      v1::GenerateResponse msg;
      while (reader->Read(&msg)) {
        ASSERT_GE(msg.choice(), 0);
        ASSERT_LT(msg.choice(), kChoices);
        const size_t c = static_cast<size_t>(msg.choice());
        EXPECT_EQ(summaries[c], 0) << "choice " << c << " went on after its summary";
        if (msg.has_summary()) {
          ++summaries[c];
          EXPECT_EQ(msg.summary().generated_tokens(), static_cast<int>(want[c].size()));
          EXPECT_EQ(msg.summary().finish_reason(), finish[c]) << "choice " << c;
          EXPECT_EQ(msg.summary().prompt_tokens(), prompt);
          continue;
        }
        got[c].push_back(msg.token());
        logprobs[c].push_back(msg.logprobs().SerializeAsString());
      }
      ASSERT_TRUE(reader->Finish().ok());
      EXPECT_EQ(summaries, std::vector<int>(kChoices, 1));
      EXPECT_EQ(got, want);
      prefill_calls += 1;
      EXPECT_EQ(prefills_settle_at(prefill_calls), prefill_calls) << "one prefill for every choice";
      EXPECT_TRUE(WaitFor([&] { return h->metrics.server.kv_cache_bytes.Value() == 0; }, 5s))
          << "seer_kv_cache_bytes: " << h->metrics.server.kv_cache_bytes.Value();
      // Choice i is the request alone with seed + i, logprobs included.
      for (int i = 0; i < kChoices; ++i) {
        v1::GenerateRequest one = g;
        one.set_n(1);
        one.mutable_sampling()->set_seed(sp.seed + static_cast<uint64_t>(i));
        grpc::ClientContext one_ctx;
        one_ctx.set_deadline(std::chrono::system_clock::now() + 60s);
        auto one_reader = h->Stub()->Generate(&one_ctx, one);
        std::vector<std::string> alone_logprobs;
        while (one_reader->Read(&msg)) {
          EXPECT_EQ(msg.choice(), 0);
          if (msg.event_case() == v1::GenerateResponse::kToken) {
            alone_logprobs.push_back(msg.logprobs().SerializeAsString());
          }
        }
        ASSERT_TRUE(one_reader->Finish().ok());
        prefill_calls += 1;
        EXPECT_EQ(alone_logprobs, logprobs[i]) << "choice " << i;
      }
    }
    PagePool* pool = servers.paged->page_pool();
    EXPECT_TRUE(WaitFor([&] { return pool->free_pages() == pool->num_pages(); }, 5s)) << "every page back";
  }

  // Every choice done at its first token: a token and a summary each.
  v1::GenerateRequest first_only = SampledRequest(seer::testing::RandomIds(33, 128, 3), 1, SamplingParams{});
  first_only.set_n(3);
  for (DecodeHarness* h : {&servers.alone, &servers.batched}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    auto reader = h->Stub()->Generate(&ctx, first_only);
    std::vector<std::string> events;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      events.push_back(std::string(msg.has_summary() ? "summary " : "token ") + std::to_string(msg.choice()));
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(events,
              (std::vector<std::string>{"token 0", "token 1", "token 2", "summary 0", "summary 1", "summary 2"}));
  }

  // A client that leaves mid-way: every choice stops, every page and gauge
  // byte comes back, and the call counts as cancelled.
  v1::GenerateRequest longer = SampledRequest(seer::testing::RandomIds(50, 128, 4), 400, SamplingParams{});
  longer.set_n(3);
  {
    grpc::ClientContext ctx;
    auto reader = servers.batched.Stub()->Generate(&ctx, longer);
    v1::GenerateResponse msg;
    for (int read = 0; read < 12 && reader->Read(&msg); ++read) {}
    ctx.TryCancel();
    while (reader->Read(&msg)) {}
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  PagePool* pool = servers.paged->page_pool();
  EXPECT_TRUE(WaitFor([&] { return pool->free_pages() == pool->num_pages(); }, 5s)) << "every page back";
  EXPECT_TRUE(WaitFor([&] { return servers.batched.metrics.server.kv_cache_bytes.Value() == 0; }, 5s));
  EXPECT_TRUE(WaitFor(
      [&] { return CountByCode(*servers.batched.registry, "seer_decode_requests_total", "CANCELLED") == 1; }, 5s));

  first_only.set_n(17);
  ExpectInvalid(CallGenerate(servers.batched.Stub().get(), first_only), "n: 17");
  first_only.set_n(-1);
  ExpectInvalid(CallGenerate(servers.batched.Stub().get(), first_only), "n: -1");
}

// A client that never reads: its HTTP/2 window is 1 KiB and never grows (no
// BDP probing), so the server can write almost nothing to it, and each
// channel has a connection of its own (a shared one would stall the others'
// streams through the connection window).
std::shared_ptr<grpc::Channel> NonReadingChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// A call started and then left alone: nothing is ever read.
template <typename Stub, typename Response>
struct StalledCall {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<Response>> reader;
};

using StalledPrefill = StalledCall<v1::PrefillService::Stub, v1::PrefillResponse>;
using StalledGenerate = StalledCall<v1::DecodeService::Stub, v1::GenerateResponse>;

std::unique_ptr<StalledPrefill> StartStalledPrefill(const std::string& address, const v1::PrefillRequest& req) {
  auto call = std::make_unique<StalledPrefill>();
  call->channel = NonReadingChannel(address);
  call->stub = v1::PrefillService::NewStub(call->channel);
  call->ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  call->reader = call->stub->Prefill(&call->ctx, req);
  return call;
}

std::unique_ptr<StalledGenerate> StartStalledGenerate(const std::string& address, const v1::GenerateRequest& req) {
  auto call = std::make_unique<StalledGenerate>();
  call->channel = NonReadingChannel(address);
  call->stub = v1::DecodeService::NewStub(call->channel);
  call->ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  call->reader = call->stub->Generate(&call->ctx, req);
  return call;
}

// A random Llama whose 1024-token KV cache is 16 MiB (8 layers x 4 KV heads x
// 64 x float32, K and V): far more than a stalled client's window takes.
std::unique_ptr<Engine> SlowEngine() {
  static const std::string dir =
      seer::testing::WriteRandomLlama(seer::testing::TempDir("isolation_model"), seer::testing::RandomLlamaSpec{});
  return LoadEngine(dir);
}

v1::PrefillRequest PrefillOf(int tokens, uint32_t seed) {
  v1::PrefillRequest req;
  for (int32_t id : seer::testing::RandomIds(tokens, 512, seed)) req.add_token_ids(id);
  return req;
}

}  // namespace isolation

// Finding 1: a client that never reads held the engine for the whole prefill
// (the layer observer blocked once the stream had --stream-buffer-bytes
// unwritten), so every prefill behind it timed out. Now its chunks wait in
// its own KV cache: the engine and the worker slot go on.
TEST(Isolation, APrefillClientThatNeverReadsDoesNotStallTheOthers) {
  using namespace isolation;
  std::unique_ptr<Engine> real = SlowEngine();
  ASSERT_TRUE(real);
  const int layers = real->config().num_layers;
  InstrumentedEngine engine(real.get());
  PrefillServiceOptions options;
  options.max_concurrent = 1;
  options.chunk_bytes = 64 << 10;
  options.stream_buffer_bytes = 64 << 10;
  PrefillHarness h(options, &engine);

  auto stalled = StartStalledPrefill(h.server->address(), PrefillOf(1024, 1));
  // The stalled request's prefill runs to its end although its client has
  // read nothing (before, it stopped in layer 0 holding the engine).
  ASSERT_TRUE(engine.WaitFinished(1, 60s)) << "the prefill of a client that never reads never finished";
  EXPECT_EQ(engine.last_status(), StatusCode::kOk);
  EXPECT_EQ(engine.layers_done(), layers);

  // A well-behaved prefill behind it gets the engine and the one slot.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<v1::PrefillResponse> got;
  const grpc::Status s = CallPrefill(h.Stub().get(), PrefillOf(64, 2), &got);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(got.back().has_summary());
  std::printf("[ info     ] a 64-token prefill behind a client that never reads: OK in %.2f s\n", seconds);
  // The stalled stream is still open, holding its KV for its client (the
  // client has its status before the server's OnDone has run).
  EXPECT_TRUE(WaitFor([&] { return h.metrics.inflight.Value() == 1; }, 30s));
  stalled->ctx.TryCancel();
  EXPECT_TRUE(WaitFor([&] { return h.metrics.inflight.Value() == 0; }, 30s));
}

// Finding 1 for token streams: a Generate client that never reads held a
// decode worker slot once 512 tokens were unwritten. Now the decode loop
// runs to its end (its tokens queue, paid for by its share of the budget)
// and the slot goes to the next request.
TEST(Isolation, AGenerateClientThatNeverReadsDoesNotHoldADecodeSlot) {
  using namespace isolation;
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeServiceOptions options;
  options.max_concurrent = 1;
  DecodeHarness decode(prefill.server->address(), engine.get(), options);

  v1::GenerateRequest greedy;
  for (int i = 0; i < 10; ++i) greedy.add_token_ids(i * 7);
  greedy.set_max_new_tokens(2000);
  auto stalled = StartStalledGenerate(decode.server->address(), greedy);
  // Its decode loop ends: every token was generated (counted as it is written
  // only, so wait for the prefill's summary and the slot instead).
  ASSERT_TRUE(WaitFor([&] { return prefill.metrics.tokens.Value() == 10; }, 60s));

  v1::GenerateRequest other;
  for (int i = 0; i < 12; ++i) other.add_token_ids(i * 3);
  other.set_max_new_tokens(4);
  std::vector<int32_t> tokens;
  const auto t0 = std::chrono::steady_clock::now();
  const grpc::Status s = CallGenerate(decode.Stub().get(), other, &tokens);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
  EXPECT_EQ(tokens.size(), 4u);
  std::printf("[ info     ] a Generate behind a client that never reads: OK in %.2f s\n", seconds);
  stalled->ctx.TryCancel();
}

// Finding 2: a worker slot was freed once the KV was in the stream's outbox,
// but the outbox lived until the client read, so streams that never read
// piled up N x --stream-buffer-bytes whatever --max-concurrent and
// --max-queue said. Now each stream reserves what it can hold (its KV cache
// and messages) from --max-buffered-bytes at admission: beyond the budget a
// request is RESOURCE_EXHAUSTED at once, and a stream whose client reads
// nothing for --write-stall-seconds is cancelled, counted, and gives its
// share back.
TEST(Isolation, BufferedKvIsBoundedByAdmissionAndStalledStreamsAreCancelled) {
  using namespace isolation;
  std::unique_ptr<Engine> engine = SlowEngine();
  ASSERT_TRUE(engine);
  constexpr int64_t kKv = int64_t{16} << 20;  // 1024 tokens x 8 layers x 2 KiB
  PrefillServiceOptions options;
  options.max_concurrent = 1;
  options.max_queue = 16;
  options.chunk_bytes = 64 << 10;
  options.stream_buffer_bytes = 64 << 10;
  // Room for three such streams (each: 16 MiB of cache, 128 KiB of
  // messages, the header and summary), not four.
  options.max_buffered_bytes = 3 * (kKv + (1 << 20));
  options.write_stall_seconds = 3.0;
  PrefillHarness h(options, engine.get());

  constexpr int kClients = 6;
  std::vector<std::unique_ptr<StalledPrefill>> stalled;
  for (int i = 0; i < kClients; ++i)
    stalled.push_back(StartStalledPrefill(h.server->address(), PrefillOf(1024, 10 + i)));
  // Three are admitted, three refused at once.
  ASSERT_TRUE(
      WaitFor([&] { return CountByCode(*h.registry, "seer_prefill_requests_total", "RESOURCE_EXHAUSTED") == 3; }, 30s));
  EXPECT_EQ(h.metrics.inflight.Value(), 3);
  EXPECT_LE(h.service->buffered_bytes(), options.max_buffered_bytes);
  EXPECT_GT(h.service->buffered_bytes(), 3 * kKv);

  // Nothing read for 3 s: the admitted streams are cancelled, counted, and
  // their KV freed; the budget is whole again.
  ASSERT_TRUE(WaitFor([&] { return h.metrics.write_stalls.Value() == 3; }, 60s));
  ASSERT_TRUE(WaitFor([&] { return h.metrics.inflight.Value() == 0; }, 30s));
  // Chunks reference the KV cache (no copy): it goes once gRPC has dropped
  // the cancelled streams' queued bytes, right after.
  EXPECT_TRUE(WaitFor([&] { return h.service->buffered_bytes() == 0; }, 10s)) << h.service->buffered_bytes();
  EXPECT_EQ(CountByCode(*h.registry, "seer_prefill_requests_total", "CANCELLED"), 3);
  int cancelled = 0, exhausted = 0;
  for (auto& call : stalled) {
    // The client reads at last: what got through, then the status.
    v1::PrefillResponse msg;
    while (call->reader->Read(&msg)) {}
    const grpc::Status s = call->reader->Finish();
    if (s.error_code() == grpc::StatusCode::CANCELLED) ++cancelled;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      EXPECT_NE(s.error_message().find("--max-buffered-bytes"), std::string::npos) << s.error_message();
    }
  }
  EXPECT_EQ(cancelled, 3);
  EXPECT_EQ(exhausted, 3) << "a refused client learns why, naming the flag";
  // And a reader is served.
  EXPECT_TRUE(CallPrefill(h.Stub().get(), PrefillOf(1024, 30)).ok());

  // The summary's prompt logprobs count too: a budget with room for one
  // stream's KV and messages (16 MiB and about 200 KiB) and 400 KiB more
  // serves the prompt, but not with 20 alternatives a position (1,023 x 344
  // bytes more), which it refuses naming them.
  options.max_buffered_bytes = kKv + (400 << 10);
  // Stalls are not what this part checks: a client starved of CPU for a
  // few seconds (CI runs tests side by side) must not be cut off.
  options.write_stall_seconds = 60.0;
  PrefillHarness small(options, engine.get());
  v1::PrefillRequest asked = PrefillOf(1024, 31);
  const grpc::Status served = CallPrefill(small.Stub().get(), asked);
  EXPECT_TRUE(served.ok()) << served.error_code() << ": " << served.error_message();
  asked.set_prompt_logprobs(20);
  const grpc::Status s = CallPrefill(small.Stub().get(), asked);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("its prompt logprobs"), std::string::npos) << s.error_message();
  asked.set_prompt_logprobs(1);  // 1,023 x 40 bytes fit
  const grpc::Status fits = CallPrefill(small.Stub().get(), asked);
  EXPECT_TRUE(fits.ok()) << fits.error_code() << ": " << fits.error_message();
}

// The same for token streams: each Generate stream reserves its tokens'
// bytes (max_new_tokens of them) at admission, beyond --max-buffered-bytes a
// request is refused at once, and one whose client reads nothing for
// --write-stall-seconds is cancelled and counted.
TEST(Isolation, TokenBuffersAreBoundedByAdmissionAndStalledGeneratesAreCancelled) {
  using namespace isolation;
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  DecodeServiceOptions options;
  options.max_concurrent = 2;
  options.max_new_tokens = 2000;
  options.max_buffered_bytes = 2 * GenerateStreamBytes(2000, engine->config().num_layers);
  options.write_stall_seconds = 4.0;
  DecodeHarness decode(prefill.server->address(), engine.get(), options);

  v1::GenerateRequest req;
  for (int i = 0; i < 10; ++i) req.add_token_ids(i * 7);
  req.set_max_new_tokens(2000);
  std::vector<std::unique_ptr<StalledGenerate>> stalled;
  // Two are admitted and hold the whole budget; only then does the third
  // come, so that it meets a full budget and not one a stall has already
  // freed (on a loaded machine the three arrived far enough apart for
  // that: the third was admitted, and no request was refused).
  for (int i = 0; i < 2; ++i) stalled.push_back(StartStalledGenerate(decode.server->address(), req));
  ASSERT_TRUE(WaitFor([&] { return decode.service->buffered_bytes() == options.max_buffered_bytes; }, 30s))
      << decode.service->buffered_bytes();
  stalled.push_back(StartStalledGenerate(decode.server->address(), req));
  ASSERT_TRUE(WaitFor(
      [&] { return CountByCode(*decode.registry, "seer_decode_requests_total", "RESOURCE_EXHAUSTED") == 1; }, 30s))
      << "write stalls: " << decode.metrics.write_stalls.Value();
  EXPECT_EQ(decode.service->buffered_bytes(), options.max_buffered_bytes);
  ASSERT_TRUE(WaitFor([&] { return decode.metrics.write_stalls.Value() == 2; }, 60s));
  ASSERT_TRUE(WaitFor([&] { return decode.service->buffered_bytes() == 0; }, 30s));
  EXPECT_TRUE(
      WaitFor([&] { return CountByCode(*decode.registry, "seer_decode_requests_total", "CANCELLED") == 2; }, 30s));
  int cancelled = 0, exhausted = 0;
  for (auto& call : stalled) {
    v1::GenerateResponse msg;
    while (call->reader->Read(&msg)) {}
    const grpc::Status s = call->reader->Finish();
    cancelled += s.error_code() == grpc::StatusCode::CANCELLED;
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      EXPECT_NE(s.error_message().find("--max-buffered-bytes"), std::string::npos) << s.error_message();
    }
  }
  EXPECT_EQ(cancelled, 2);
  EXPECT_EQ(exhausted, 1);
  // A reader is served.
  std::vector<int32_t> tokens;
  req.set_max_new_tokens(8);
  EXPECT_TRUE(CallGenerate(decode.Stub().get(), req, &tokens).ok());
  EXPECT_EQ(tokens.size(), 8u);
  // A request that could never fit the budget, however empty, is refused as
  // too large by the field that makes it so, not told to retry: 2000 tokens
  // with 20 alternatives each, or a prompt whose logprobs alone need more.
  v1::GenerateRequest big = req;
  big.set_max_new_tokens(2000);
  big.set_logprobs(20);
  grpc::Status s = CallGenerate(decode.Stub().get(), big, &tokens);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_EQ(s.error_message().rfind("max_new_tokens: 2000 tokens with logprobs 20 may buffer", 0), 0u)
      << s.error_message();
  EXPECT_NE(s.error_message().find("--max-buffered-bytes"), std::string::npos) << s.error_message();
  v1::GenerateRequest echo;
  for (int i = 0; i < 400; ++i) echo.add_token_ids((i * 13) % 100);
  echo.set_max_new_tokens(8);
  echo.set_prompt_logprobs(20);
  s = CallGenerate(decode.Stub().get(), echo, &tokens);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_EQ(s.error_message().rfind("prompt_logprobs: the prompt's 400 positions with 20 alternatives", 0), 0u)
      << s.error_message();
  // Nothing stays reserved (the served reader's share goes once its stream is done).
  EXPECT_TRUE(WaitFor([&] { return decode.service->buffered_bytes() == 0; }, 10s)) << decode.service->buffered_bytes();
}

// A client that reads only after the prefill has finished gets its chunks
// out of the KV cache, made as their turn to be written comes: the same
// messages, byte for byte, as a client that kept up and got them copied
// layer by layer while the next layer computed.
TEST(Isolation, ALateReaderGetsTheSameKvAsOneThatKeptUp) {
  using namespace isolation;
  std::unique_ptr<Engine> real = SlowEngine();
  ASSERT_TRUE(real);
  InstrumentedEngine engine(real.get());
  PrefillServiceOptions options;
  options.chunk_bytes = 64 << 10;
  options.stream_buffer_bytes = 64 << 10;
  PrefillHarness h(options, &engine);
  const v1::PrefillRequest req = PrefillOf(700, 42);

  std::vector<v1::PrefillResponse> kept_up;
  ASSERT_TRUE(CallPrefill(h.Stub().get(), req, &kept_up).ok());

  auto late = StartStalledPrefill(h.server->address(), req);
  ASSERT_TRUE(engine.WaitFinished(2, 60s));
  std::vector<v1::PrefillResponse> got;
  v1::PrefillResponse msg;
  while (late->reader->Read(&msg)) got.push_back(msg);
  ASSERT_TRUE(late->reader->Finish().ok());

  ASSERT_EQ(got.size(), kept_up.size());
  int chunks = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].event_case(), kept_up[i].event_case()) << i;
    if (got[i].has_chunk()) {
      ++chunks;
      EXPECT_EQ(got[i].chunk().SerializeAsString(), kept_up[i].chunk().SerializeAsString()) << "chunk " << i;
    }
  }
  EXPECT_EQ(chunks, 8 * 23);  // 8 layers of 700 tokens, 31 (62 KiB of K and V) a chunk
  EXPECT_EQ(got.back().summary().last_logits_size(), 512);
  EXPECT_EQ(got.back().summary().first_token(), kept_up.back().summary().first_token());
  EXPECT_TRUE(WaitFor([&] { return h.service->buffered_bytes() == 0; }, 30s));
}

TEST(ByteBudget, ReservesUpToItsLimitAndTakesSharesBack) {
  ByteBudget budget(100);
  std::optional<ByteBudget::Reservation> a = budget.TryReserve(60);
  ASSERT_TRUE(a);
  EXPECT_FALSE(budget.TryReserve(41)) << "60 + 41 is over the limit";
  std::optional<ByteBudget::Reservation> b = budget.TryReserve(40);
  ASSERT_TRUE(b);
  EXPECT_EQ(budget.used(), 100);
  {
    ByteBudget::Reservation part = a->Split(25);
    EXPECT_EQ(part.bytes(), 25);
    EXPECT_EQ(a->bytes(), 35);
    EXPECT_EQ(budget.used(), 100);
  }  // the split share goes back on its own
  EXPECT_EQ(budget.used(), 75);
  ByteBudget::Reservation moved = std::move(*b);
  b.reset();
  EXPECT_EQ(budget.used(), 75) << "a moved share is not given back twice";
  moved.Release();
  a.reset();
  EXPECT_EQ(budget.used(), 0);
  EXPECT_FALSE(budget.TryReserve(101));
  EXPECT_TRUE(budget.TryReserve(100));
}

// --- routing (issue 14) and detection (issue 15, finding 5) ---------------------

namespace routing {

// The prefill_endpoint of each of `n` small greedy Generate calls, or the
// status of the first that failed.
std::vector<std::string> EndpointsOf(v1::DecodeService::Stub* stub, int n, grpc::Status* failed) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    v1::GenerateRequest req;
    for (int t = 0; t < 20; ++t) req.add_token_ids((t * 11 + i) % 128);
    req.set_max_new_tokens(2);
    v1::GenerateSummary summary;
    const grpc::Status s = CallGenerate(stub, req, nullptr, &summary);
    if (!s.ok()) {
      *failed = s;
      return out;
    }
    out.push_back(summary.prefill_endpoint());
  }
  return out;
}

// Reports a fixed load in the initial metadata of every call, in the keys a
// prefill server's request log interceptor uses (rpc/load_metadata.h).
class QueueDepthInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit QueueDepthInterceptor(std::string depth) : depth_(std::move(depth)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kLoadMetadataRunning, "0");
      methods->GetSendInitialMetadata()->emplace(kLoadMetadataQueued, depth_);
    }
    methods->Proceed();
  }

 private:
  std::string depth_;
};

class QueueDepthReporter final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit QueueDepthReporter(int depth) : depth_(std::to_string(depth)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* /*info*/) override {
    return new QueueDepthInterceptor(depth_);
  }

 private:
  std::string depth_;
};

// A real PrefillService whose answers report a fixed queue depth.
struct ReportingPrefill {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  PrefillMetrics metrics{*registry};
  PrefillService service{{}, &metrics};
  std::unique_ptr<grpc::Server> server;
  std::string address;

  ReportingPrefill(Engine* engine, int depth) {
    EXPECT_TRUE(service.SetEngine(engine).ok());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> reporters;
    reporters.push_back(std::make_unique<QueueDepthReporter>(depth));
    builder.experimental().SetInterceptorCreators(std::move(reporters));
    server = builder.BuildAndStart();
    address = "127.0.0.1:" + std::to_string(port);
  }
  ~ReportingPrefill() {
    server->Shutdown(std::chrono::system_clock::now() + 5s);
    service.Shutdown();
  }
};

// Accepts TCP connections and never says a word: a hung process, a port
// forwarded to nothing.
class BlackHole {
 public:
  BlackHole() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd_, 64) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot listen on loopback";
      return;
    }
    address_ = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    thread_ = std::thread([this] {
      for (;;) {
        const int c = accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        std::lock_guard<std::mutex> lock(mu_);
        accepted_.push_back(c);
      }
    });
  }
  ~BlackHole() {
    shutdown(fd_, SHUT_RDWR);
    close(fd_);
    if (thread_.joinable()) thread_.join();
    for (int c : accepted_) close(c);
  }
  const std::string& address() const { return address_; }
  int accepted() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(accepted_.size());
  }

 private:
  int fd_ = -1;
  std::string address_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<int> accepted_;
};

// A Prefill server that takes calls and never answers them.
class SilentPrefill final : public v1::PrefillService::CallbackService {
 public:
  grpc::ServerWriteReactor<v1::PrefillResponse>* Prefill(grpc::CallbackServerContext* /*context*/,
                                                         const v1::PrefillRequest* /*request*/) override {
    class Silent final : public grpc::ServerWriteReactor<v1::PrefillResponse> {
      void OnCancel() override { Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")); }
      void OnDone() override { delete this; }
    };
    ++calls;
    return new Silent();
  }
  std::atomic<int> calls{0};
};

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace routing

// Issue 14: an endpoint at capacity answers RESOURCE_EXHAUSTED at once; the
// decode worker tries the next one instead of failing the request.
TEST(Routing, AnEndpointAtCapacityIsSkippedForTheNext) {
  using namespace routing;
  std::unique_ptr<Engine> real = LoadEngine(Path("llama"));
  ASSERT_TRUE(real);
  InstrumentedEngine held(real.get());
  PrefillServiceOptions one;
  one.max_concurrent = 1;
  one.max_queue = 0;
  PrefillHarness saturated(one, &held);
  PrefillHarness free({}, real.get());
  // Fill the saturated server's one slot and keep it busy.
  held.Hold();
  v1::PrefillRequest occupy;
  for (int i = 0; i < 30; ++i) occupy.add_token_ids(i);
  auto saturated_stub = saturated.Stub();
  std::future<grpc::Status> occupying =
      std::async(std::launch::async, [&] { return CallPrefill(saturated_stub.get(), occupy); });
  // However the test ends, the held prefill is let go first.
  struct ReleaseOnExit {
    InstrumentedEngine* engine;
    ~ReleaseOnExit() { engine->Release(); }
  } release_on_exit{&held};
  ASSERT_TRUE(held.WaitEntered(1, 20s));

  DecodeHarness decode(saturated.server->address() + "," + free.server->address(), real.get());
  grpc::Status failed;
  const std::vector<std::string> endpoints = EndpointsOf(decode.Stub().get(), 6, &failed);
  ASSERT_EQ(endpoints.size(), 6u) << failed.error_code() << ": " << failed.error_message();
  for (const std::string& e : endpoints) EXPECT_EQ(e, free.server->address());
  EXPECT_GE(isolation::CountByCode(*saturated.registry, "seer_prefill_requests_total", "RESOURCE_EXHAUSTED"), 1);

  // With every endpoint at capacity the request is RESOURCE_EXHAUSTED (worth
  // retrying later), naming the endpoint.
  DecodeHarness only_saturated(saturated.server->address(), real.get());
  grpc::Status s;
  EndpointsOf(only_saturated.Stub().get(), 1, &s);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find(saturated.server->address()), std::string::npos) << s.error_message();
  held.Release();
  EXPECT_TRUE(occupying.get().ok());
}

// Issue 14: the decode worker prefers the endpoint with the shortest queue it
// knows of (the running + queued its answers report), and round-robins when
// it knows nothing.
TEST(Routing, TheEndpointReportingTheShortestQueueIsPreferred) {
  using namespace routing;
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  ReportingPrefill busy(engine.get(), 7), idle(engine.get(), 0);
  DecodeHarness decode(busy.address + "," + idle.address, engine.get());
  grpc::Status failed;
  const std::vector<std::string> endpoints = EndpointsOf(decode.Stub().get(), 10, &failed);
  ASSERT_EQ(endpoints.size(), 10u) << failed.error_message();
  const int to_busy = static_cast<int>(std::count(endpoints.begin(), endpoints.end(), busy.address));
  std::printf("[ info     ] %d of 10 requests went to the endpoint reporting 7 queued, %d to the one reporting 0\n",
              to_busy, 10 - to_busy);
  EXPECT_LE(to_busy, 1) << "only a request before the decode worker heard from it may go there";

  // Without reports: round-robin, as before.
  PrefillHarness a({}, engine.get()), b({}, engine.get());
  DecodeHarness plain(a.server->address() + "," + b.server->address(), engine.get());
  const std::vector<std::string> rr = EndpointsOf(plain.Stub().get(), 6, &failed);
  ASSERT_EQ(rr.size(), 6u) << failed.error_message();
  EXPECT_EQ(std::count(rr.begin(), rr.end(), a.server->address()), 3);
  EXPECT_EQ(std::count(rr.begin(), rr.end(), b.server->address()), 3);
}

// Finding 5: an endpoint that accepts TCP and never answers cost the first
// request gRPC's 20 s connect attempt before fail-over. Now the attempt,
// handshake included, gets --prefill-connect-timeout (2 s).
TEST(Detection, AnEndpointThatAcceptsTcpAndNeverAnswersCostsSeconds) {
  using namespace routing;
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  BlackHole hole;
  DecodeHarness decode(hole.address() + "," + prefill.server->address(), engine.get());
  auto stub = decode.Stub();
  for (int i = 0; i < 4; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    grpc::Status failed;
    const std::vector<std::string> endpoints = EndpointsOf(stub.get(), 1, &failed);
    const double seconds = SecondsSince(t0);
    ASSERT_EQ(endpoints.size(), 1u) << failed.error_message();
    EXPECT_EQ(endpoints[0], prefill.server->address());
    std::printf("[ info     ] request %d with a black-hole endpoint listed first: %.2f s\n", i, seconds);
    EXPECT_LT(seconds, 10.0) << "fail-over took gRPC's default connect timeout";
  }
  EXPECT_GE(hole.accepted(), 1) << "the black hole was never tried";
}

// A prefill server that takes the call and never sends a byte: the call is
// given up after --prefill-first-byte-timeout and the next endpoint tried.
TEST(Detection, AnEndpointThatTakesTheCallAndNeverAnswersIsGivenUp) {
  using namespace routing;
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness prefill({}, engine.get());
  SilentPrefill silent_service;
  auto silent = GrpcServer::Start("127.0.0.1:0", {&silent_service}, {"seer.v1.PrefillService"}, 1 << 20);
  ASSERT_TRUE(silent.ok());
  (*silent)->SetServing(true);
  PrefillClientOptions client;
  client.first_byte_timeout_seconds = 1.0;
  DecodeHarness decode((*silent)->address() + "," + prefill.server->address(), engine.get(), {}, client);
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status failed;
  const std::vector<std::string> endpoints = EndpointsOf(decode.Stub().get(), 1, &failed);
  const double seconds = SecondsSince(t0);
  ASSERT_EQ(endpoints.size(), 1u) << failed.error_message();
  EXPECT_EQ(endpoints[0], prefill.server->address());
  EXPECT_EQ(silent_service.calls.load(), 1);
  EXPECT_LT(seconds, 10.0);
  // With no other endpoint the request fails UNAVAILABLE, naming the timeout.
  DecodeHarness alone((*silent)->address(), engine.get(), {}, client);
  EndpointsOf(alone.Stub().get(), 1, &failed);
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::UNAVAILABLE) << failed.error_message();
  EXPECT_NE(failed.error_message().find("--prefill-first-byte-timeout"), std::string::npos) << failed.error_message();
  (*silent)->Shutdown(1.0);
}

// Finding 5: seer-decode said SERVING while it could reach no prefill
// endpoint. The client's health watch says which endpoints serve, and why
// not; seer-decode's health follows it (tests/e2e/detection_test.cc).
TEST(Detection, TheHealthWatchFollowsThePrefillEndpoints) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillHarness a({}, engine.get()), b({}, engine.get());
  PrefillClientOptions options;
  options.health_interval_seconds = 0.2;
  options.health_timeout_seconds = 1.0;
  auto client = PrefillClient::Create(a.server->address() + "," + b.server->address(), options);
  ASSERT_TRUE(client.ok());
  std::mutex mu;
  std::vector<std::pair<bool, std::string>> seen;
  (*client)->WatchHealth([&](bool any, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu);
    seen.emplace_back(any, why);
  });
  auto last = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return seen.empty() ? std::make_pair(false, std::string("nothing yet")) : seen.back();
  };
  ASSERT_TRUE(isolation::WaitFor([&] { return last().first; }, 20s));
  a.server->SetServing(false);  // as while draining or loading
  std::this_thread::sleep_for(1s);
  EXPECT_TRUE(last().first) << "one endpoint still serves";
  b.server->SetServing(false);
  ASSERT_TRUE(isolation::WaitFor([&] { return !last().first; }, 20s));
  const std::string why = last().second;
  EXPECT_NE(why.find(a.server->address() + ": NOT_SERVING"), std::string::npos) << why;
  EXPECT_NE(why.find(b.server->address() + ": NOT_SERVING"), std::string::npos) << why;
  b.server->SetServing(true);
  ASSERT_TRUE(isolation::WaitFor([&] { return last().first; }, 20s));
  EXPECT_NE(last().second.find(b.server->address() + ": SERVING"), std::string::npos) << last().second;
}

}  // namespace
}  // namespace seer

namespace seer {
namespace {

// The prefix store (--prefix-cache-bytes) on the fixture model with its
// gates. Prompt B shares 650 tokens with an earlier prompt A. From a server
// that stored A, B's KV chunks and last logits are, bit for bit, those of a
// server without the store (the CPU engine computes rows independently);
// the summary and the metrics say how many tokens came from the store:
// every shared whole block dense, fewer for threshold (the stored prompt's
// last two rows were dense by last_block_dense), none for nz_ratio.
TEST(Service, ThePrefixStoreGivesASharedPrefixsKvAsTheWholePrefillWould) {
  auto engine = fixtures::GatedCpuEngine("llama");
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  PrefillServiceOptions with_store;
  with_store.prefix_cache_bytes = int64_t{1} << 30;
  PrefillHarness stored(with_store, engine->get());
  PrefillHarness plain(PrefillServiceOptions{}, engine->get());
  const int vocab = (*engine)->config().vocab_size;
  struct Mode {
    v1::Sparsity::Mode mode;
    double value;
    int cached;
  };
  double entries = 0, hit_tokens = 0;
  uint32_t seed = 5;
  for (const Mode& m : {Mode{v1::Sparsity::MODE_DENSE, 0.0, 640}, Mode{v1::Sparsity::MODE_THRESHOLD, 0.05, 576},
                        Mode{v1::Sparsity::MODE_NZ_RATIO, 0.3, 0}}) {
    SCOPED_TRACE(v1::Sparsity::Mode_Name(m.mode));
    const std::vector<int32_t> a = seer::testing::RandomIds(700, vocab, ++seed);
    std::vector<int32_t> b(a.begin(), a.begin() + 650);
    for (int32_t id : seer::testing::RandomIds(200, vocab, ++seed)) b.push_back(id);
    b[650] = (a[650] + 1) % vocab;
    auto request = [&](const std::vector<int32_t>& ids) {
      v1::PrefillRequest r;
      for (int32_t id : ids) r.add_token_ids(id);
      r.mutable_sparsity()->set_mode(m.mode);
      if (m.mode == v1::Sparsity::MODE_THRESHOLD) r.mutable_sparsity()->set_threshold(m.value);
      if (m.mode == v1::Sparsity::MODE_NZ_RATIO) r.mutable_sparsity()->set_nz_ratio(m.value);
      return r;
    };
    std::vector<v1::PrefillResponse> first, got, want;
    ASSERT_TRUE(CallPrefill(stored.Stub().get(), request(a), &first).ok());
    EXPECT_EQ(first.back().summary().cached_tokens(), 0);
    // The store takes A's cache once the stream lets go of it; nz_ratio's
    // never, since no prompt could continue from it.
    const bool stores = m.mode != v1::Sparsity::MODE_NZ_RATIO;
    if (stores) ++entries;
    ASSERT_TRUE(isolation::WaitFor([&] { return stored.metrics.prefix_entries.Value() == entries; }, 10s))
        << stored.metrics.prefix_entries.Value();
    ASSERT_TRUE(CallPrefill(stored.Stub().get(), request(b), &got).ok());
    ASSERT_TRUE(CallPrefill(plain.Stub().get(), request(b), &want).ok());
    ASSERT_EQ(got.size(), want.size());
    int chunks = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].event_case(), want[i].event_case()) << i;
      if (!got[i].has_chunk()) continue;
      ++chunks;
      EXPECT_EQ(got[i].chunk().SerializeAsString(), want[i].chunk().SerializeAsString()) << "chunk " << i;
    }
    EXPECT_GT(chunks, 0);
    const v1::PrefillSummary& s = got.back().summary();
    EXPECT_EQ(s.cached_tokens(), m.cached);
    EXPECT_EQ(want.back().summary().cached_tokens(), 0);
    ASSERT_EQ(s.last_logits_size(), want.back().summary().last_logits_size());
    for (int i = 0; i < s.last_logits_size(); ++i) ASSERT_EQ(s.last_logits(i), want.back().summary().last_logits(i));
    hit_tokens += m.cached;
    // B extends no stored prompt and none extends it.
    if (stores) ++entries;
    ASSERT_TRUE(isolation::WaitFor([&] { return stored.metrics.prefix_entries.Value() == entries; }, 10s));
  }
  EXPECT_EQ(stored.metrics.prefix_hits.Value(), 2);  // B, dense and threshold
  EXPECT_EQ(stored.metrics.prefix_misses.Value(), 2);  // A, dense and threshold
  EXPECT_EQ(stored.metrics.prefix_not_reusable.Value(), 2);  // A and B with nz_ratio
  EXPECT_EQ(stored.metrics.prefix_hit_tokens.Value(), hit_tokens);
  EXPECT_GT(stored.metrics.prefix_bytes.Value(), 0);
  EXPECT_EQ(plain.metrics.prefix_hits.Value() + plain.metrics.prefix_misses.Value(), 0);
}

// The hashes prefix affinity matches: one per whole 64-token block, each
// covering the blocks before it, so a prompt's hashes begin with those of
// every prompt it extends; another sparsity gives other hashes.
TEST(Routing, PromptBlockHashesChainWholeBlocksAndTheSparsity) {
  v1::PrefillRequest a, b;
  for (int32_t id : seer::testing::RandomIds(200, 128, 7)) a.add_token_ids(id);
  b = a;
  for (int32_t id : seer::testing::RandomIds(100, 128, 8)) b.add_token_ids(id);
  const std::vector<uint64_t> ha = PromptBlockHashes(a), hb = PromptBlockHashes(b);
  ASSERT_EQ(ha.size(), 3u);  // 200 tokens: three whole blocks
  ASSERT_EQ(hb.size(), 4u);
  EXPECT_TRUE(std::equal(ha.begin(), ha.end(), hb.begin()));
  v1::PrefillRequest c = b;
  c.set_token_ids(10, (c.token_ids(10) + 1) % 128);
  const std::vector<uint64_t> hc = PromptBlockHashes(c);
  for (size_t i = 0; i < hc.size(); ++i) EXPECT_NE(hc[i], hb[i]) << "block " << i;
  v1::PrefillRequest d = b;
  d.mutable_sparsity()->set_mode(v1::Sparsity::MODE_DENSE);
  EXPECT_NE(PromptBlockHashes(d)[0], hb[0]);
  v1::PrefillRequest shortp;
  for (int i = 0; i < 63; ++i) shortp.add_token_ids(i);
  EXPECT_TRUE(PromptBlockHashes(shortp).empty());
}

// Prefix affinity: with two prefill servers that keep finished prompts, a
// chat's turns (each the last plus 100 tokens) all go to the server that
// ran the first, and every turn after it takes the last one's prompt from
// that server's store. Without affinity the decode worker round-robins
// between the equally loaded servers, and each turn finds only the prompt
// of two turns back.
TEST(Routing, AChatsNextTurnGoesWhereItsPrefixIsStored) {
  std::unique_ptr<Engine> engine = LoadEngine(Path("llama"));
  ASSERT_TRUE(engine);
  PrefillServiceOptions with_store;
  with_store.prefix_cache_bytes = int64_t{1} << 30;
  PrefillHarness a(with_store, engine.get()), b(with_store, engine.get());
  const std::string targets = a.server->address() + "," + b.server->address();
  for (bool affinity : {true, false}) {
    SCOPED_TRACE(affinity ? "with prefix affinity" : "without");
    PrefillClientOptions client;
    client.prefix_affinity = affinity;
    DecodeHarness decode(targets, engine.get(), DecodeServiceOptions{}, client);
    std::vector<int32_t> prompt = seer::testing::RandomIds(300, 128, affinity ? 1 : 2);
    std::vector<std::string> endpoints;
    std::vector<int> cached;
    for (int turn = 0; turn < 4; ++turn) {
      v1::GenerateRequest req;
      for (int32_t id : prompt) req.add_token_ids(id);
      req.set_max_new_tokens(2);
      v1::GenerateSummary summary;
      const grpc::Status s = CallGenerate(decode.Stub().get(), req, nullptr, &summary);
      ASSERT_TRUE(s.ok()) << s.error_message();
      endpoints.push_back(summary.prefill_endpoint());
      cached.push_back(summary.cached_tokens());
      // The prompt's cache reaches its server's store once its stream is done.
      ASSERT_TRUE(isolation::WaitFor(
          [&] { return a.metrics.server.kv_cache_bytes.Value() == 0 && b.metrics.server.kv_cache_bytes.Value() == 0; },
          10s));
      for (int32_t id : seer::testing::RandomIds(100, 128, 10 + turn)) prompt.push_back(id);
    }
    std::printf("[ info     ] %s: cached tokens per turn %d, %d, %d, %d\n", affinity ? "affinity" : "round-robin",
                cached[0], cached[1], cached[2], cached[3]);
    EXPECT_EQ(cached[0], 0);
    for (int turn = 1; turn < 4; ++turn) {
      if (affinity) {
        EXPECT_EQ(endpoints[turn], endpoints[0]) << "turn " << turn;
        EXPECT_EQ(cached[turn], (300 + 100 * (turn - 1)) / 64 * 64) << "turn " << turn;
      } else {  // the other server: two turns back at best
        EXPECT_NE(endpoints[turn], endpoints[turn - 1]) << "turn " << turn;
        EXPECT_EQ(cached[turn], turn == 1 ? 0 : (300 + 100 * (turn - 2)) / 64 * 64) << "turn " << turn;
      }
    }
  }
}

// A store too small for a second prompt drops the first (the budget), and
// one too small for any keeps nothing; both still serve every request.
TEST(Service, ThePrefixStoreKeepsWithinItsBudget) {
  auto engine = fixtures::GatedCpuEngine("llama");
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  const int vocab = (*engine)->config().vocab_size;
  auto cache = (*engine)->NewCache(300);
  ASSERT_TRUE(cache.ok());
  const double one = CacheBytes(**cache);
  for (double budget : {1.5 * one, 0.5 * one}) {
    PrefillServiceOptions o;
    o.prefix_cache_bytes = static_cast<int64_t>(budget);
    PrefillHarness h(o, engine->get());
    for (uint32_t seed : {1u, 2u}) {
      v1::PrefillRequest r;
      for (int32_t id : seer::testing::RandomIds(300, vocab, seed)) r.add_token_ids(id);
      r.mutable_sparsity()->set_mode(v1::Sparsity::MODE_DENSE);
      ASSERT_TRUE(CallPrefill(h.Stub().get(), r).ok());
    }
    const double want_entries = budget > one ? 1 : 0;
    EXPECT_TRUE(isolation::WaitFor(
        [&] { return h.metrics.prefix_entries.Value() == want_entries && h.service->buffered_bytes() == 0; }, 10s));
    EXPECT_LE(h.metrics.prefix_bytes.Value(), budget);
    EXPECT_EQ(h.metrics.prefix_evictions.Value(), budget > one ? 1 : 0);
  }
  PrefillServiceOptions bad;
  bad.prefix_cache_bytes = -1;
  const Status refused = PrefillService::CheckOptions(bad);
  EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("--prefix-cache-bytes"), std::string::npos) << refused.ToString();
}

// A Generate call's tokens, each with its chosen logprob, and its summary.
struct Reply {
  std::vector<std::pair<int32_t, float>> tokens;
  v1::GenerateSummary summary;
};
Reply GenerateWithLogprobs(v1::DecodeService::Stub* stub, const v1::GenerateRequest& req) {
  Reply out;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.event_case() == v1::GenerateResponse::kToken)
      out.tokens.emplace_back(msg.token(), msg.logprobs().chosen().logprob());
    if (msg.event_case() == v1::GenerateResponse::kSummary) out.summary = msg.summary();
  }
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  return out;
}

void KvPrefixStoreChat(bool prefill_store);

// The decode worker's KV prefix store: a chat's turns through a worker that
// keeps its prompts' pages are sent only the rest of each next prompt, and
// reply exactly as a worker without the store (sampled tokens and their
// logprobs, bit for bit: the CPU engine's rows are computed alone, so a held
// row is the row the whole transfer would have written). Dense and
// threshold selection hold the previous prompt's reusable blocks
// (ReusableTokens, in whole pages); nz_ratio holds nothing. The bytes moved
// are the rest's, and the metrics count each lookup.
TEST(Service, TheKvPrefixStoreIsSentOnlyTheRestOfAChatsNextTurn) {
  for (const bool prefill_store : {true, false}) {
    SCOPED_TRACE(prefill_store ? "the prefill with its prefix store" : "the prefill computing every prompt whole");
    KvPrefixStoreChat(prefill_store);
  }
}

// One chat of TheKvPrefixStoreIsSentOnlyTheRestOfAChatsNextTurn: without the
// prefill's store, the held rows are an earlier prompt's prefill, and the
// store-less worker's rows this prompt's own.
void KvPrefixStoreChat(bool prefill_store) {
  auto gated = fixtures::GatedCpuEngine("llama");
  ASSERT_TRUE(gated.ok()) << gated.status().ToString();
  PrefillServiceOptions with_store;
  with_store.prefix_cache_bytes = prefill_store ? int64_t{1} << 30 : 0;
  PrefillHarness prefill(with_store, gated->get());
  std::unique_ptr<Engine> paged_held = AloneAndBatched::EnablePaged(LoadEngine(Path("llama")));
  std::unique_ptr<Engine> paged_plain = AloneAndBatched::EnablePaged(LoadEngine(Path("llama")));
  DecodeServiceOptions keep;
  keep.kv_prefix_cache_bytes = int64_t{16} << 20;
  DecodeHarness held(prefill.server->address(), paged_held.get(), keep);
  DecodeHarness plain(prefill.server->address(), paged_plain.get());
  const int vocab = (*gated)->config().vocab_size;
  const int page = paged_held->page_pool()->layout().page_tokens;
  struct Mode {
    v1::Sparsity::Mode mode;
    double value;
  };
  double hits = 0, misses = 0, held_tokens = 0;
  uint32_t seed = 40;
  for (const Mode& m : {Mode{v1::Sparsity::MODE_DENSE, 0.0}, Mode{v1::Sparsity::MODE_THRESHOLD, 0.05},
                        Mode{v1::Sparsity::MODE_NZ_RATIO, 0.3}}) {
    SCOPED_TRACE(v1::Sparsity::Mode_Name(m.mode));
    SparsityConfig config;
    config.mode = m.mode == v1::Sparsity::MODE_DENSE       ? SparsityMode::kDense
                  : m.mode == v1::Sparsity::MODE_THRESHOLD ? SparsityMode::kThreshold
                                                           : SparsityMode::kNzRatio;
    config.threshold = m.mode == v1::Sparsity::MODE_THRESHOLD ? m.value : 0.0;
    config.nz_ratio = m.mode == v1::Sparsity::MODE_NZ_RATIO ? m.value : 1.0;
    std::vector<int32_t> prompt = seer::testing::RandomIds(300, vocab, ++seed);
    int previous = 0;  // the last turn's prompt length
    for (int turn = 0; turn < 3; ++turn) {
      SCOPED_TRACE("turn " + std::to_string(turn));
      v1::GenerateRequest req;
      for (int32_t id : prompt) req.add_token_ids(id);
      req.set_max_new_tokens(6);
      req.set_logprobs(0);
      req.mutable_sampling()->set_temperature(0.9f);
      req.mutable_sampling()->set_seed(turn + 7);
      req.mutable_sparsity()->set_mode(m.mode);
      if (m.mode == v1::Sparsity::MODE_THRESHOLD) req.mutable_sparsity()->set_threshold(m.value);
      if (m.mode == v1::Sparsity::MODE_NZ_RATIO) req.mutable_sparsity()->set_nz_ratio(m.value);
      const Reply got = GenerateWithLogprobs(held.Stub().get(), req);
      const Reply want = GenerateWithLogprobs(plain.Stub().get(), req);
      ASSERT_EQ(got.tokens.size(), 6u);
      EXPECT_EQ(got.tokens, want.tokens) << "the same tokens and logprobs, bit for bit";
      const int n = static_cast<int>(prompt.size());
      // The previous prompt is this one's prefix: its reusable blocks, in
      // whole pages, are held.
      const int reusable = turn == 0 ? 0 : ReusableTokens(previous, previous, n, config, 64) / page * page;
      EXPECT_EQ(got.summary.kv_held_tokens(), reusable);
      EXPECT_EQ(want.summary.kv_held_tokens(), 0);
      EXPECT_EQ(got.summary.kv_bytes(), want.summary.kv_bytes() / n * (n - reusable)) << "only the rest moved";
      if (turn > 0 && m.mode != v1::Sparsity::MODE_NZ_RATIO) EXPECT_GT(reusable, 0);
      if (reusable > 0) {
        ++hits;
        held_tokens += reusable;
      } else {
        ++misses;
      }
      previous = n;
      // The next turn: this prompt, the reply, and 100 new tokens.
      for (const auto& [token, logprob] : got.tokens) prompt.push_back(token);
      for (int32_t id : seer::testing::RandomIds(100, vocab, ++seed)) prompt.push_back(id);
    }
  }
  EXPECT_EQ(held.metrics.kv_prefix_hits.Value(), hits);
  EXPECT_EQ(held.metrics.kv_prefix_misses.Value(), misses);
  EXPECT_EQ(held.metrics.kv_prefix_declined.Value(), 0);
  EXPECT_EQ(held.metrics.kv_prefix_held_tokens.Value(), held_tokens);
  EXPECT_GT(held.metrics.kv_prefix_entries.Value(), 0);
  EXPECT_LE(held.metrics.kv_prefix_bytes.Value(), static_cast<double>(keep.kv_prefix_cache_bytes));
  EXPECT_EQ(plain.metrics.kv_prefix_misses.Value(), 0) << "no store, no lookups";
}

// A prefill that resolves the asked sparsity to another selection than the
// one the held K/V was computed with declines kv_from_token and sends the
// whole prompt, and the decode worker lands it in new pages, from the same
// stream (no second prefill, nothing cancelled): here the
// request leaves the mode to the server, and the two prefill servers it
// alternates between resolve it differently (the fixture gates' threshold,
// and dense without gates). Replies still match a store-less worker's.
TEST(Service, AHeldPrefixThatThePrefillDeclinesIsFetchedWhole) {
  auto gated = fixtures::GatedCpuEngine("llama");
  ASSERT_TRUE(gated.ok()) << gated.status().ToString();
  std::unique_ptr<Engine> dense = LoadEngine(Path("llama"));
  PrefillHarness a({}, gated->get()), b({}, dense.get());
  const std::string targets = a.server->address() + "," + b.server->address();
  PrefillClientOptions round_robin;
  round_robin.prefix_affinity = false;
  std::unique_ptr<Engine> paged_held = AloneAndBatched::EnablePaged(LoadEngine(Path("llama")));
  std::unique_ptr<Engine> paged_plain = AloneAndBatched::EnablePaged(LoadEngine(Path("llama")));
  DecodeServiceOptions keep;
  keep.kv_prefix_cache_bytes = int64_t{16} << 20;
  DecodeHarness held(targets, paged_held.get(), keep, round_robin);
  std::vector<int32_t> prompt = seer::testing::RandomIds(300, 128, 3);
  for (int turn = 0; turn < 2; ++turn) {
    v1::GenerateRequest req;
    for (int32_t id : prompt) req.add_token_ids(id);
    req.set_max_new_tokens(4);
    const Reply got = GenerateWithLogprobs(held.Stub().get(), req);
    ASSERT_EQ(got.tokens.size(), 4u);
    // The same request from a store-less worker on that endpoint alone.
    DecodeHarness plain(got.summary.prefill_endpoint(), paged_plain.get());
    const Reply want = GenerateWithLogprobs(plain.Stub().get(), req);
    EXPECT_EQ(got.tokens, want.tokens) << "turn " << turn;
    EXPECT_EQ(got.summary.kv_held_tokens(), 0) << "turn " << turn;
    EXPECT_EQ(got.summary.kv_bytes(), want.summary.kv_bytes()) << "turn " << turn;
    for (int32_t id : seer::testing::RandomIds(100, 128, 10 + turn)) prompt.push_back(id);
  }
  EXPECT_EQ(held.metrics.kv_prefix_declined.Value(), 1);
  EXPECT_EQ(held.metrics.kv_prefix_hits.Value(), 0);
  EXPECT_EQ(held.metrics.kv_prefix_misses.Value(), 1) << "the first turn; the second was declined";
  // The declined turn landed in new pages from the same stream: each turn
  // was prefilled once by the pair (and once more for the reference).
  EXPECT_EQ(a.metrics.tokens.Value() + b.metrics.tokens.Value(), 2.0 * (300 + 400));
}

// The prefill's side of kv_from_token: honoured when the held selection is
// the one this request resolves to, in the same gate blocks (the chunks then
// start there, and land the whole stream's values from there on), declined
// otherwise (all of it), and refused by name when malformed.
TEST(Service, ThePrefillSendsFromKvFromTokenOnlyForTheSameSelection) {
  auto gated = fixtures::GatedCpuEngine("llama");
  ASSERT_TRUE(gated.ok()) << gated.status().ToString();
  PrefillHarness prefill({}, gated->get());
  const std::vector<int32_t> ids = seer::testing::RandomIds(200, (*gated)->config().vocab_size, 9);
  v1::PrefillRequest whole;
  for (int32_t id : ids) whole.add_token_ids(id);
  whole.mutable_sparsity()->set_mode(v1::Sparsity::MODE_THRESHOLD);
  whole.mutable_sparsity()->set_threshold(0.05);
  whole.mutable_transport_offer()->set_grpc_streams(1);  // a header with gates_fingerprint
  std::vector<v1::PrefillResponse> all;
  ASSERT_TRUE(CallPrefill(prefill.Stub().get(), whole, &all).ok());
  const v1::Sparsity applied = all.back().summary().applied_sparsity();
  EXPECT_EQ(applied.mode(), v1::Sparsity::MODE_THRESHOLD);
  EXPECT_EQ(applied.threshold(), 0.05);
  ASSERT_TRUE(applied.has_last_block_dense());
  EXPECT_TRUE(applied.last_block_dense()) << "the gates' default, as applied";
  // Each stream assembled into its own cache, as a decode worker would.
  const ModelConfig& mc = (*gated)->config();
  const ExpectedLayout expected{(*gated)->fingerprint(), mc.num_layers, mc.num_kv_heads, mc.head_dim, mc.vocab_size};
  auto assemble = [&](const std::vector<v1::PrefillResponse>& msgs, int first, HostKvCache* cache) {
    KvAssembler a(expected, first, 200, cache);
    for (const v1::PrefillResponse& m : msgs) {
      Status st = m.has_header()  ? a.OnHeader(m.header())
                  : m.has_chunk() ? a.OnChunk(m.chunk())
                                  : a.OnSummary(m.summary());
      if (!st.ok()) return st;
    }
    return OkStatus();
  };
  HostKvCache want(mc.num_layers, mc.num_kv_heads, mc.head_dim, 200);
  ASSERT_TRUE(assemble(all, 0, &want).ok());
  const uint64_t gates = all.front().header().gates_fingerprint();
  EXPECT_NE(gates, 0u);
  struct Ask {
    const char* what;
    bool same_selection;
    int block_size;
    uint64_t gates;
    int first;  // what the server sends from
  };
  for (const Ask& ask :
       {Ask{"the same selection", true, 64, gates, 128}, Ask{"another last_block_dense", false, 64, gates, 0},
        Ask{"another gate block", true, 128, gates, 0}, Ask{"other gates", true, 64, gates + 1, 0}}) {
    SCOPED_TRACE(ask.what);
    v1::PrefillRequest r = whole;
    r.set_kv_from_token(128);
    *r.mutable_kv_from_sparsity() = applied;
    r.set_kv_from_block_size(ask.block_size);
    r.set_kv_from_gates_fingerprint(ask.gates);
    if (!ask.same_selection) r.mutable_kv_from_sparsity()->set_last_block_dense(false);
    std::vector<v1::PrefillResponse> got;
    ASSERT_TRUE(CallPrefill(prefill.Stub().get(), r, &got).ok());
    ASSERT_TRUE(got.front().has_header());
    EXPECT_EQ(got.front().header().kv_first_token(), ask.first);
    HostKvCache landed(mc.num_layers, mc.num_kv_heads, mc.head_dim, 200);
    const Status st = assemble(got, ask.first, &landed);
    ASSERT_TRUE(st.ok()) << st.ToString();
    for (int layer = 0; layer < mc.num_layers; ++layer) {
      std::vector<float> k0(size_t{200} * mc.num_kv_heads * mc.head_dim), v0(k0.size()), k1(k0.size()), v1s(k0.size());
      const int n = 200 - ask.first;
      ASSERT_TRUE(want.ReadLayer(layer, ask.first, n, k0.data(), v0.data()).ok());
      ASSERT_TRUE(landed.ReadLayer(layer, ask.first, n, k1.data(), v1s.data()).ok());
      EXPECT_EQ(k0, k1) << "layer " << layer << ": the sent positions are the whole stream's";
      EXPECT_EQ(v0, v1s) << "layer " << layer;
    }
    EXPECT_EQ(got.back().summary().kv_bytes(), all.back().summary().kv_bytes() / 200 * (200 - ask.first));
    ASSERT_EQ(got.back().summary().last_logits_size(), all.back().summary().last_logits_size());
    for (int i = 0; i < got.back().summary().last_logits_size(); ++i)
      ASSERT_EQ(got.back().summary().last_logits(i), all.back().summary().last_logits(i));
  }
  struct Bad {
    int from;
    bool mode_set;
    int block_size;
    std::string field;
  };
  for (const Bad& bad :
       {Bad{100, true, 64, "kv_from_token"}, Bad{200, true, 64, "kv_from_token"}, Bad{-64, true, 64, "kv_from_token"},
        Bad{64, false, 64, "kv_from_sparsity"}, Bad{64, true, 0, "kv_from_block_size"}}) {
    v1::PrefillRequest r = whole;
    r.set_kv_from_token(bad.from);
    *r.mutable_kv_from_sparsity() = applied;
    r.set_kv_from_block_size(bad.block_size);
    if (!bad.mode_set) r.mutable_kv_from_sparsity()->clear_mode();
    ExpectInvalid(CallPrefill(prefill.Stub().get(), r), bad.field);
  }
}

}  // namespace
}  // namespace seer
