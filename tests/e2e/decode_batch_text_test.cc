// seer-decode's batched decode and its text interface, end to end on the
// real binaries (the fixture Llama with its gates and its demo tokenizer,
// CPU). References: the same request alone on the same server (batch of
// one), `seer run` (the offline contiguous path, which tokenizes, renders
// chats and detokenizes on its own), and the page pool's own accounting
// read through /metrics.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/json.h"
#include "seer/v1/seer.grpc.pb.h"
#include "tests/server_test_util.h"

namespace seer {
namespace {

using namespace std::chrono_literals;
using seer::testing::Bin;
using seer::testing::CommandResult;
using seer::testing::Metric;
using seer::testing::Path;
using seer::testing::RunCommand;
using seer::testing::Scrape;
using seer::testing::ServerProcess;

struct Servers {
  ServerProcess prefill{Bin("seer-prefill"),
                        {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--model", Path("llama"), "--gates",
                         Path("llama_gates"), "--device", "cpu"}};
  std::unique_ptr<ServerProcess> decode;
  std::unique_ptr<v1::DecodeService::Stub> stub;

  ::testing::AssertionResult Start(std::vector<std::string> decode_extra = {}) {
    if (auto r = prefill.Start(); !r) return r;
    std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                     "--model",  Path("llama"), "--prefill", prefill.grpc_address(),
                                     "--device", "cpu"};
    args.insert(args.end(), decode_extra.begin(), decode_extra.end());
    decode = std::make_unique<ServerProcess>(Bin("seer-decode"), args);
    if (auto r = decode->Start(); !r) return r;
    stub = v1::DecodeService::NewStub(grpc::CreateChannel(decode->grpc_address(), grpc::InsecureChannelCredentials()));
    return ::testing::AssertionSuccess();
  }
  std::map<std::string, double> Metrics() {
    auto m = Scrape(decode->metrics_address());
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : std::map<std::string, double>{};
  }
};

// `seer generate --addr <the decode server>` with `args`.
CommandResult SeerGenerate(const Servers& s, std::vector<std::string> args) {
  args.insert(args.begin(), {Bin("seer"), "generate", "--addr", s.decode->grpc_address()});
  return RunCommand(args);
}

struct Reply {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;  // every delta, the summary's rest included
  std::string summary_text;  // the rest, released with the summary
  v1::GenerateSummary summary;
};

// `cancel_after`: cancel the call once that many tokens arrived (0: never).
Reply Call(v1::DecodeService::Stub* stub, const v1::GenerateRequest& req, int cancel_after = 0) {
  Reply r;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 120s);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    r.text += msg.text();
    if (msg.has_summary()) {
      r.summary = msg.summary();
      r.summary_text = msg.text();
    }
    if (msg.event_case() != v1::GenerateResponse::kToken) continue;
    r.tokens.push_back(msg.token());
    if (cancel_after > 0 && static_cast<int>(r.tokens.size()) == cancel_after) ctx.TryCancel();
  }
  r.status = reader->Finish();
  return r;
}

v1::GenerateRequest IdsRequest(int prompt_len, int new_tokens, uint64_t seed, bool sampled) {
  v1::GenerateRequest r;
  for (int32_t id : seer::testing::RandomIds(prompt_len, 128, seed)) r.add_token_ids(id);
  r.set_max_new_tokens(new_tokens);
  if (sampled) {
    r.mutable_sampling()->set_temperature(0.8f);
    r.mutable_sampling()->set_top_p(0.9f);
    r.mutable_sampling()->set_seed(seed * 7 + 1);
  }
  return r;
}

// The offline reference: `seer run` on the same model and gates, greedy.
JsonValue SeerRun(std::vector<std::string> prompt_args, int new_tokens) {
  std::vector<std::string> cmd = {Bin("seer"),
                                  "run",
                                  "--model",
                                  Path("llama"),
                                  "--gates",
                                  Path("llama_gates"),
                                  "--device",
                                  "cpu",
                                  "--json",
                                  "--max-new-tokens",
                                  std::to_string(new_tokens)};
  cmd.insert(cmd.end(), prompt_args.begin(), prompt_args.end());
  CommandResult r = RunCommand(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  StatusOr<JsonValue> j = JsonValue::Parse(r.out);
  EXPECT_TRUE(j.ok()) << r.out;
  return j.ok() ? *j : JsonValue::Object();
}

std::vector<int32_t> TokensOf(const JsonValue& j) {
  std::vector<int32_t> out;
  if (const JsonValue* t = j.Find("tokens"))
    for (const JsonValue& v : t->as_array()) out.push_back(static_cast<int32_t>(v.as_int64()));
  return out;
}

std::string TextOf(const JsonValue& j) {
  const JsonValue* t = j.Find("text");
  return t != nullptr && t->is_string() ? t->as_string() : "<no text>";
}

TEST(BatchedDecode, ConcurrentStreamsShareStepsAndEachEqualsItsRunAlone) {
  Servers s;
  ASSERT_TRUE(s.Start({"--kv-page-tokens", "16"}));
  // Prompts that straddle page boundaries, greedy and seeded sampling; long
  // enough generations that the requests overlap on this tiny model.
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(IdsRequest(15 + 33 * i, 300 + 7 * i, 300 + i, i % 2 == 1));
  std::vector<Reply> alone;
  for (const auto& r : requests) {
    alone.push_back(Call(s.stub.get(), r));
    ASSERT_TRUE(alone.back().status.ok()) << alone.back().status.error_message();
    ASSERT_EQ(alone.back().tokens.size(), static_cast<size_t>(r.max_new_tokens()));
  }
  const auto before = s.Metrics();
  std::vector<std::future<Reply>> together;
  for (const auto& r : requests)
    together.push_back(std::async(std::launch::async, [&] { return Call(s.stub.get(), r); }));
  for (size_t i = 0; i < requests.size(); ++i) {
    Reply r = together[i].get();
    ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
    EXPECT_EQ(r.tokens, alone[i].tokens) << "request " << i;
  }
  const auto after = s.Metrics();
  // The concurrent round ran some steps for more than one request.
  const double steps = Metric(after, "seer_decode_batch_size_count") - Metric(before, "seer_decode_batch_size_count");
  const double rows = Metric(after, "seer_decode_batch_size_sum") - Metric(before, "seer_decode_batch_size_sum");
  EXPECT_GT(steps, 0);
  EXPECT_GT(rows, steps) << "no step batched two requests";
  std::printf("[ info     ] %.0f decode steps for %.0f request-steps (mean batch %.2f)\n", steps, rows, rows / steps);
  EXPECT_EQ(Metric(after, "seer_kv_pages_used"), 0);
  EXPECT_EQ(Metric(after, "seer_decode_running_requests"), 0);
  EXPECT_GT(Metric(after, "seer_kv_pages_total"), 0);
}

TEST(BatchedDecode, CancelledAndFinishedStreamsGiveEveryPageBack) {
  Servers s;
  ASSERT_TRUE(s.Start());
  std::vector<std::future<Reply>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      return Call(s.stub.get(), IdsRequest(40 + 50 * i, i % 2 == 0 ? 400 : 20, 500 + i, false), i % 2 == 0 ? 3 : 0);
    }));
  }
  for (int i = 0; i < 6; ++i) {
    Reply r = calls[i].get();
    if (i % 2 == 0) {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << i;
    } else {
      EXPECT_TRUE(r.status.ok()) << i << ": " << r.status.error_message();
      EXPECT_EQ(r.tokens.size(), 20u);
    }
  }
  // The server learns of a cancellation at its next step: give it a moment.
  std::map<std::string, double> m;
  for (int tries = 0; tries < 100; ++tries) {
    m = s.Metrics();
    if (Metric(m, "seer_kv_pages_used") == 0 && Metric(m, "seer_decode_running_requests") == 0 &&
        Metric(m, "seer_kv_cache_bytes") == 0) {
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(Metric(m, "seer_kv_pages_used"), 0);
  EXPECT_EQ(Metric(m, "seer_decode_running_requests"), 0);
  EXPECT_EQ(Metric(m, "seer_kv_cache_bytes"), 0);
}

TEST(BatchedDecode, RequestsWaitForPagesAndOneLargerThanThePoolIsRefused) {
  Servers s;
  // 1 MiB of 64 KiB pages (2 layers x K, V x 64 x 4 bytes x 64 positions):
  // 16 pages, 1,024 positions.
  ASSERT_TRUE(s.Start({"--kv-pool", "1MiB"}));
  EXPECT_EQ(Metric(s.Metrics(), "seer_kv_pages_total"), 16);
  v1::GenerateRequest too_big = IdsRequest(1000, 100, 1, false);
  Reply refused = Call(s.stub.get(), too_big);
  // No wait would make room for it: OUT_OF_RANGE, which clients do not retry.
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_NE(refused.status.error_message().find("KV pages"), std::string::npos) << refused.status.error_message();

  // Each needs 10 pages: the second waits for the first's.
  std::vector<v1::GenerateRequest> requests = {IdsRequest(560, 60, 2, false), IdsRequest(580, 40, 3, true)};
  std::vector<Reply> alone;
  for (const auto& r : requests) alone.push_back(Call(s.stub.get(), r));
  std::vector<std::future<Reply>> together;
  for (const auto& r : requests)
    together.push_back(std::async(std::launch::async, [&] { return Call(s.stub.get(), r); }));
  for (size_t i = 0; i < requests.size(); ++i) {
    Reply r = together[i].get();
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.tokens, alone[i].tokens);
  }
  EXPECT_EQ(Metric(s.Metrics(), "seer_kv_pages_used"), 0);
  EXPECT_EQ(Metric(s.Metrics(), "seer_kv_page_waiters"), 0);
}

TEST(BatchedDecode, UnbatchedWorkersGiveTheSameTokens) {
  Servers batched, alone;
  ASSERT_TRUE(batched.Start());
  ASSERT_TRUE(alone.Start({"--max-batch", "0"}));
  for (int i = 0; i < 3; ++i) {
    v1::GenerateRequest r = IdsRequest(70 + 40 * i, 12, 700 + i, i == 1);
    Reply a = Call(batched.stub.get(), r), b = Call(alone.stub.get(), r);
    ASSERT_TRUE(a.status.ok() && b.status.ok()) << a.status.error_message() << b.status.error_message();
    EXPECT_EQ(a.tokens, b.tokens) << i;
  }
  EXPECT_EQ(Metric(alone.Metrics(), "seer_kv_pages_total"), -1) << "--max-batch 0 has no page pool";
}

TEST(TextGenerate, TextInTextOutEqualsSeerRun) {
  Servers s;
  ASSERT_TRUE(s.Start());
  // This prompt's reply is 24 tokens of text; the one after ends at once, on
  // the end-of-text id.
  const std::string prompt = "one two three four five six seven eight nine ten";
  const JsonValue ref = SeerRun({"--prompt", prompt}, 24);
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_new_tokens(24);
  Reply r = Call(s.stub.get(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, TokensOf(ref));
  EXPECT_EQ(r.text, TextOf(ref));
  EXPECT_EQ(r.summary.generated_tokens(), static_cast<int>(r.tokens.size()));
  EXPECT_GT(r.summary.prompt_tokens(), 0);
  EXPECT_EQ(r.summary.finish_reason(), "length");
  EXPECT_EQ(r.tokens.size(), 24u);

  // An empty text is a prompt too (the tokenizer's BOS alone), as in seer run
  // --prompt "" and OpenAI's API: set but empty is not unset.
  const JsonValue empty_ref = SeerRun({"--prompt", ""}, 8);
  ASSERT_FALSE(TokensOf(empty_ref).empty());
  v1::GenerateRequest empty;
  empty.set_text("");
  empty.set_max_new_tokens(8);
  Reply e = Call(s.stub.get(), empty);
  ASSERT_TRUE(e.status.ok()) << e.status.error_message();
  EXPECT_EQ(e.tokens, TokensOf(empty_ref));
  EXPECT_EQ(e.text, TextOf(empty_ref));
  EXPECT_EQ(e.summary.prompt_tokens(), 1);
  CommandResult g_empty = RunCommand(
      {Bin("seer"), "generate", "--addr", s.decode->grpc_address(), "--prompt", "", "--max-new-tokens", "8", "--json"});
  ASSERT_EQ(g_empty.exit_code, 0) << g_empty.err;
  StatusOr<JsonValue> gej = JsonValue::Parse(g_empty.out);
  ASSERT_TRUE(gej.ok()) << g_empty.out;
  EXPECT_EQ(TextOf(*gej), TextOf(empty_ref));

  // The CLI's text mode: the same reply, as JSON and as printed text.
  CommandResult g = RunCommand({Bin("seer"), "generate", "--addr", s.decode->grpc_address(), "--prompt", prompt,
                                "--max-new-tokens", "24", "--json"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  StatusOr<JsonValue> gj = JsonValue::Parse(g.out);
  ASSERT_TRUE(gj.ok()) << g.out;
  EXPECT_EQ(TokensOf(*gj), TokensOf(ref));
  EXPECT_EQ(TextOf(*gj), TextOf(ref));
  CommandResult plain = RunCommand(
      {Bin("seer"), "generate", "--addr", s.decode->grpc_address(), "--prompt", prompt, "--max-new-tokens", "24"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.out.rfind(TextOf(ref) + "\n", 0), 0u) << plain.out;
  CommandResult both =
      RunCommand({Bin("seer"), "generate", "--addr", s.decode->grpc_address(), "--prompt", prompt, "--ids", "1,2"});
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find("exactly one of --ids, --prompt"), std::string::npos) << both.err;

  const std::string eos_prompt = "the quick brown fox jumps over the lazy dog, again and again";
  const JsonValue eos_ref = SeerRun({"--prompt", eos_prompt}, 24);
  ASSERT_EQ(TokensOf(eos_ref), std::vector<int32_t>{2}) << "the fixture's reply to this prompt was its EOS";
  req.set_text(eos_prompt);
  Reply eos = Call(s.stub.get(), req);
  ASSERT_TRUE(eos.status.ok()) << eos.status.error_message();
  EXPECT_EQ(eos.tokens, std::vector<int32_t>{2});
  EXPECT_EQ(eos.text, "");
  EXPECT_EQ(eos.summary.finish_reason(), "stop");

  // Both prompts as token ids with text_reply: the text prompt's answers,
  // its end at the end-of-text id included. Without text_reply the ids get
  // no text and run past that id.
  for (const std::string& p : {prompt, eos_prompt}) {
    CommandResult tokenized = RunCommand({Bin("seer"), "tokenize", "--tokenizer", Path("llama"), "--text", p});
    ASSERT_EQ(tokenized.exit_code, 0) << tokenized.err;
    v1::GenerateRequest by_ids;
    std::istringstream in(tokenized.out);
    for (std::string id; std::getline(in, id, ',');) by_ids.add_token_ids(std::stoi(id));
    by_ids.set_max_new_tokens(24);
    by_ids.set_text_reply(true);
    Reply as_text = Call(s.stub.get(), by_ids);
    ASSERT_TRUE(as_text.status.ok()) << as_text.status.error_message();
    const JsonValue& want = p == prompt ? ref : eos_ref;
    EXPECT_EQ(as_text.tokens, TokensOf(want)) << p;
    EXPECT_EQ(as_text.text, TextOf(want)) << p;
    by_ids.set_text_reply(false);
    Reply bare = Call(s.stub.get(), by_ids);
    ASSERT_TRUE(bare.status.ok()) << bare.status.error_message();
    EXPECT_EQ(bare.text, "");
    EXPECT_EQ(bare.tokens.size(), 24u) << p;
  }
}

// seer generate --n: the replies of one prefill, reply i as the same call
// alone with --seed + i gives it (tokens and text), printed each whole after
// "[choice I]", and in --json's choices.
TEST(TextGenerate, TheCliSamplesNRepliesEachAsItsSeedAloneDoes) {
  Servers s;
  ASSERT_TRUE(s.Start());
  const std::string prompt = "one two three four five six seven eight nine ten";
  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--prompt",      prompt, "--max-new-tokens", "12",
                                     "--temperature", "1.5",  "--top-k",          "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    return SeerGenerate(s, args);
  };
  CommandResult many = generate({"--n", "3", "--seed", "40", "--json"});
  ASSERT_EQ(many.exit_code, 0) << many.err;
  StatusOr<JsonValue> mj = JsonValue::Parse(many.out);
  ASSERT_TRUE(mj.ok()) << many.out;
  const auto& choices = mj->Find("choices")->as_array();
  ASSERT_EQ(choices.size(), 3u);
  std::vector<std::string> texts;
  for (int i = 0; i < 3; ++i) {
    CommandResult one = generate({"--seed", std::to_string(40 + i), "--json"});
    ASSERT_EQ(one.exit_code, 0) << one.err;
    StatusOr<JsonValue> oj = JsonValue::Parse(one.out);
    ASSERT_TRUE(oj.ok()) << one.out;
    EXPECT_EQ(TokensOf(choices[i]), TokensOf(*oj)) << "choice " << i;
    EXPECT_EQ(TextOf(choices[i]), TextOf(*oj)) << "choice " << i;
    texts.push_back(TextOf(*oj));
  }
  EXPECT_NE(texts[0], texts[1]) << "the seeds must give different replies";
  EXPECT_EQ(TokensOf(*mj), TokensOf(choices[0])) << "the top level is choice 0's";
  CommandResult plain = generate({"--n", "3", "--seed", "40"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  for (int i = 0; i < 3; ++i) {
    const std::string line = "[choice " + std::to_string(i) + "] " + texts[i] + " (";
    EXPECT_NE(plain.out.find(line), std::string::npos) << plain.out;
  }
  CommandResult over = generate({"--n", "17"});
  EXPECT_EQ(over.exit_code, 1);
  EXPECT_NE(over.err.find("n: 17"), std::string::npos) << over.err;
}

// seer generate's --ignore-eos and --min-new-tokens, with the end-of-text
// id (2) forced by a bias: the reply ends at once, goes on to the limit, or
// holds the id off for the first tokens and then ends at it.
TEST(TextGenerate, TheCliHoldsOffEndOfTextWithMinNewTokensOrIgnoresIt) {
  Servers s;
  ASSERT_TRUE(s.Start());
  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {
        Bin("seer"),     "generate",         "--addr", s.decode->grpc_address(), "--prompt",
        "one two three", "--max-new-tokens", "5",      "--logit-bias",           "2:100",
        "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    CommandResult r = RunCommand(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    StatusOr<JsonValue> j = JsonValue::Parse(r.out);
    return j.ok() ? TokensOf(*j) : std::vector<int32_t>{-1};
  };
  EXPECT_EQ(generate({}), (std::vector<int32_t>{2}));
  EXPECT_EQ(generate({"--ignore-eos"}), (std::vector<int32_t>(5, 2)));
  const std::vector<int32_t> held = generate({"--min-new-tokens", "3"});
  ASSERT_EQ(held.size(), 4u);
  EXPECT_EQ(std::count(held.begin(), held.begin() + 3, 2), 0);
  EXPECT_EQ(held.back(), 2);
  CommandResult over = RunCommand({Bin("seer"), "generate", "--addr", s.decode->grpc_address(), "--prompt", "x",
                                   "--max-new-tokens", "5", "--min-new-tokens", "6"});
  EXPECT_EQ(over.exit_code, 1);
  EXPECT_NE(over.err.find("min_new_tokens: 6 is above max_new_tokens 5"), std::string::npos) << over.err;
}

// seer generate --repetition-penalty: the greedy reply of seer run with the
// same penalty (the prompt's tokens count as seen on both), not the plain
// one; --min-p 1 at a temperature keeps only the most likely token, so it
// samples the greedy reply; out of range, the server names the field.
TEST(TextGenerate, TheCliRepetitionPenaltyAndMinPAgreeWithSeerRun) {
  Servers s;
  ASSERT_TRUE(s.Start());
  const std::string prompt = "one two three four five six seven eight nine ten";
  auto generate = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--prompt", prompt, "--max-new-tokens", "16", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    CommandResult r = SeerGenerate(s, args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    StatusOr<JsonValue> j = JsonValue::Parse(r.out);
    return j.ok() ? TokensOf(*j) : std::vector<int32_t>{-1};
  };
  const std::vector<int32_t> plain = TokensOf(SeerRun({"--prompt", prompt}, 16));
  const std::vector<int32_t> penalised = TokensOf(SeerRun({"--prompt", prompt, "--repetition-penalty", "1.8"}, 16));
  EXPECT_NE(penalised, plain) << "the penalty must change this reply";
  EXPECT_EQ(generate({"--repetition-penalty", "1.8"}), penalised);
  EXPECT_EQ(generate({"--temperature", "1", "--seed", "9", "--min-p", "1"}), plain);
  CommandResult bad = SeerGenerate(s, {"--prompt", "x", "--min-p", "2"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("sampling.min_p: 2 is out of range [0, 1]"), std::string::npos) << bad.err;
  CommandResult zero = SeerGenerate(s, {"--prompt", "x", "--repetition-penalty", "0"});
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_NE(zero.err.find("--repetition-penalty: must be above 0"), std::string::npos) << zero.err;
}

TEST(TextGenerate, AStopStringCutsTheTextAndEndsTheStream) {
  Servers s;
  ASSERT_TRUE(s.Start());
  const std::string prompt = "one two three four five six seven eight nine ten";
  const JsonValue ref = SeerRun({"--prompt", prompt}, 24);
  const std::string full = TextOf(ref);
  ASSERT_GE(full.size(), 8u) << "the reference reply is too short to cut: '" << full << "'";
  // A stop string from the middle of the reference reply.
  const std::string stop = full.substr(full.size() / 2, 2);
  const std::string expected = full.substr(0, full.find(stop));
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_new_tokens(24);
  req.add_stop(stop);
  Reply r = Call(s.stub.get(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, expected) << "stop '" << stop << "' in '" << full << "'";
  EXPECT_EQ(r.summary.finish_reason(), "stop");
  const std::vector<int32_t> ref_tokens = TokensOf(ref);
  ASSERT_LE(r.tokens.size(), ref_tokens.size());
  EXPECT_EQ(r.tokens, std::vector<int32_t>(ref_tokens.begin(), ref_tokens.begin() + r.tokens.size()));
}

// A stop token ends the reply: its id is the last token sent, and its text
// is not part of the reply (vLLM leaves it out too). The reference is
// `seer run`'s greedy reply cut at that token, and `seer detokenize` of the
// tokens before it.
TEST(TextGenerate, AStopTokenEndsTheReplyWithoutItsText) {
  Servers s;
  ASSERT_TRUE(s.Start());
  const std::string prompt = "one two three four five six seven eight nine ten";
  const std::vector<int32_t> ref = TokensOf(SeerRun({"--prompt", prompt}, 24));
  // The first token after the first that has not come before: the stop.
  size_t k = 1;
  while (k < ref.size() && std::find(ref.begin(), ref.begin() + k, ref[k]) != ref.begin() + k) ++k;
  ASSERT_LT(k, ref.size()) << "no token of the reference reply is new";
  auto text_of = [&](size_t n) {
    std::string ids;
    for (size_t i = 0; i < n; ++i) ids += (i ? "," : "") + std::to_string(ref[i]);
    CommandResult d = RunCommand(
        {Bin("seer"), "detokenize", "--tokenizer", Path("llama"), "--ids", ids, "--skip-special-tokens", "--json"});
    EXPECT_EQ(d.exit_code, 0) << d.err;
    StatusOr<JsonValue> j = JsonValue::Parse(d.out);
    return j.ok() ? TextOf(*j) : "<" + d.out + ">";
  };
  const std::string before = text_of(k);
  ASSERT_NE(text_of(k + 1), before) << "the stop token must have text of its own";
  v1::GenerateRequest req;
  req.set_text(prompt);
  req.set_max_new_tokens(24);
  req.add_stop_token_ids(ref[k]);
  Reply r = Call(s.stub.get(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + k + 1));
  EXPECT_EQ(r.text, before);
  EXPECT_EQ(r.summary.finish_reason(), "stop");
  EXPECT_EQ(r.summary.generated_tokens(), static_cast<int>(k) + 1);
}

TEST(TextGenerate, ChatMessagesGoThroughTheModelsTemplateAsSeerRunDoes) {
  Servers s;
  ASSERT_TRUE(s.Start());
  const std::string dir = seer::testing::TempDir("chat");
  std::ofstream(dir + "/chat.json")
      << R"([{"role": "system", "content": "be brief"}, {"role": "user", "content": "name three colours"}])";
  const JsonValue ref = SeerRun({"--chat", dir + "/chat.json"}, 12);
  ASSERT_FALSE(TextOf(ref).empty());
  v1::GenerateRequest req;
  auto* m = req.add_messages();
  m->set_role("system");
  m->set_content("be brief");
  m = req.add_messages();
  m->set_role("user");
  m->set_content("name three colours");
  req.set_max_new_tokens(12);
  Reply r = Call(s.stub.get(), req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens, TokensOf(ref));
  EXPECT_EQ(r.text, TextOf(ref));
}

// The OpenAI API with curl as the client: a streamed chat completion's
// server-sent events, concatenated, are `seer run --chat`'s text; the whole
// completion's text is `seer run --prompt`'s. (tests/ops/check_openai.mjs
// drives the same API with the official openai client.)
TEST(TextGenerate, CurlGetsTheOpenAiApisTextAsSeerRunMakesIt) {
  Servers s;
  ASSERT_TRUE(s.Start({"--http", "127.0.0.1:0"}));
  std::optional<std::string> line = s.decode->WaitForLine(" http on ", 5s);
  ASSERT_TRUE(line) << s.decode->Output();
  const size_t at = line->find("127.0.0.1:");
  const std::string base = "http://" + line->substr(at, line->find(' ', at) - at);
  auto post = [&](const std::string& path, const std::string& body) {
    return RunCommand(
        {"/usr/bin/curl", "-sS", "--max-time", "60", "-H", "Content-Type: application/json", "-d", body, base + path});
  };

  const std::string dir = seer::testing::TempDir("curl_chat");
  std::ofstream(dir + "/chat.json") << R"([{"role": "user", "content": "name three colours"}])";
  const JsonValue chat_ref = SeerRun({"--chat", dir + "/chat.json"}, 12);
  CommandResult chat = post("/v1/chat/completions",
                            R"({"model": "llama", "messages": [{"role": "user", "content": "name three colours"}],
                                "max_tokens": 12, "temperature": 0, "stream": true})");
  ASSERT_EQ(chat.exit_code, 0) << chat.err;
  std::string streamed;
  bool done = false;
  std::istringstream events(chat.out);
  for (std::string l; std::getline(events, l);) {
    if (l.rfind("data: ", 0) != 0) continue;
    const std::string data = l.substr(6);
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    StatusOr<JsonValue> e = JsonValue::Parse(data);
    ASSERT_TRUE(e.ok()) << data;
    const JsonValue* choices = e->Find("choices");
    if (choices == nullptr || choices->as_array().empty()) continue;
    const JsonValue* delta = choices->as_array()[0].Find("delta");
    const JsonValue* content = delta != nullptr ? delta->Find("content") : nullptr;
    if (content != nullptr && content->is_string()) streamed += content->as_string();
  }
  EXPECT_TRUE(done) << chat.out;
  EXPECT_EQ(streamed, TextOf(chat_ref));

  const std::string prompt = "one two three four five six seven eight nine ten";
  const JsonValue ref = SeerRun({"--prompt", prompt}, 24);
  CommandResult completion = post(
      "/v1/completions", R"({"model": "llama", "prompt": ")" + prompt + R"(", "max_tokens": 24, "temperature": 0})");
  ASSERT_EQ(completion.exit_code, 0) << completion.err;
  StatusOr<JsonValue> c = JsonValue::Parse(completion.out);
  ASSERT_TRUE(c.ok()) << completion.out;
  EXPECT_EQ(c->Find("choices")->as_array()[0].Find("text")->as_string(), TextOf(ref));
  EXPECT_EQ(c->Find("usage")->Find("completion_tokens")->as_int64(), static_cast<int64_t>(TokensOf(ref).size()));

  // The same prompt as token ids (`seer tokenize`'s, BOS included, as the
  // text path encodes it): the same reply, as text too.
  CommandResult tokenized =
      RunCommand({Bin("seer"), "tokenize", "--tokenizer", Path("llama"), "--text", prompt, "--json"});
  ASSERT_EQ(tokenized.exit_code, 0) << tokenized.err;
  StatusOr<JsonValue> ids = JsonValue::Parse(tokenized.out);
  ASSERT_TRUE(ids.ok()) << tokenized.out;
  CommandResult by_ids = post("/v1/completions", R"({"model": "llama", "prompt": )" + ids->Find("ids")->Dump() +
                                                     R"(, "max_tokens": 24, "temperature": 0})");
  ASSERT_EQ(by_ids.exit_code, 0) << by_ids.err;
  StatusOr<JsonValue> ci = JsonValue::Parse(by_ids.out);
  ASSERT_TRUE(ci.ok()) << by_ids.out;
  EXPECT_EQ(ci->Find("choices")->as_array()[0].Find("text")->as_string(), TextOf(ref)) << by_ids.out;
  EXPECT_EQ(ci->Find("usage")->Find("completion_tokens")->as_int64(), static_cast<int64_t>(TokensOf(ref).size()));
}

// Server arguments on the bundled model (models/seer-small), on loopback,
// on the CPU, then `extra`.
std::vector<std::string> BundledModelArgs(std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"--listen",    "127.0.0.1:0", "--metrics",
                                "127.0.0.1:0", "--model",     std::string(SEER_SOURCE_DIR) + "/models/seer-small",
                                "--device",    "cpu"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// seer-prefill and seer-decode on the bundled model, and a stub.
struct BundledServers {
  ServerProcess prefill{Bin("seer-prefill"), BundledModelArgs()};
  std::unique_ptr<ServerProcess> decode;
  std::unique_ptr<v1::DecodeService::Stub> stub;

  ::testing::AssertionResult Start() {
    if (auto r = prefill.Start(); !r) return r;
    decode = std::make_unique<ServerProcess>(Bin("seer-decode"), BundledModelArgs({"--prefill", prefill.grpc_address()}));
    if (auto r = decode->Start(); !r) return r;
    stub = v1::DecodeService::NewStub(grpc::CreateChannel(decode->grpc_address(), grpc::InsecureChannelCredentials()));
    return ::testing::AssertionSuccess();
  }
};

// A greedy Generate of a short text prompt asking for 4,000 tokens: on the
// bundled model's CPU decode it runs for many seconds.
v1::GenerateRequest LongGreedyGenerate() {
  v1::GenerateRequest req;
  req.set_text("The sky is");
  req.set_max_new_tokens(4000);
  req.mutable_sampling()->set_temperature(0.0f);
  return req;
}

// SIGTERM while an OpenAI stream runs: the HTTP API drains before the gRPC
// server stops (which would end its in-process calls at once), so the stream
// runs to its end and the process exits 0. The bundled model, whose CPU
// decode is slow enough to be caught mid-stream.
TEST(TextGenerate, SigtermLetsAnHttpStreamInFlightFinish) {
  ServerProcess prefill(Bin("seer-prefill"), BundledModelArgs());
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"), BundledModelArgs({"--prefill", prefill.grpc_address(), "--http",
                                                             "127.0.0.1:0", "--drain-seconds", "60"}));
  ASSERT_TRUE(decode.Start());
  std::optional<std::string> line = decode.WaitForLine(" http on ", 5s);
  ASSERT_TRUE(line) << decode.Output();
  const size_t at = line->find("127.0.0.1:");
  StatusOr<int> connected = seer::testing::ConnectTcp(line->substr(at, line->find(' ', at) - at));
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  const int fd = *connected;
  const std::string body = R"({"prompt": "The sky is", "max_tokens": 400, "temperature": 0, "stream": true})";
  const std::string request =
      "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
      "Content-Type: application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string raw;
  char buf[4096];
  // Read until the first token's event, then stop the server.
  while (raw.find("\"text\":\"") == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << raw;
    raw.append(buf, static_cast<size_t>(n));
  }
  ASSERT_EQ(raw.find("[DONE]"), std::string::npos) << "the stream ended before the signal: nothing to drain";
  decode.Signal(SIGTERM);
  const size_t before = raw.size();
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  EXPECT_GT(raw.size(), before) << "nothing came after the signal";
  EXPECT_EQ(raw.find("\"error\""), std::string::npos) << raw.substr(before);
  EXPECT_NE(raw.find("\"finish_reason\":\""), std::string::npos) << raw.substr(before);
  EXPECT_NE(raw.find("data: [DONE]"), std::string::npos) << raw.substr(before);
  EXPECT_EQ(decode.Wait(), 0) << decode.Output();
}

// A stop string in text the decoder holds to the very end. The bundled
// model's byte-level tokenizer has a token for the lone byte 0xF0, the lead
// byte of a four-byte character; a logit_bias of +100 forces it as the only
// token of the reply. That byte never completes a character, so the text
// stream holds it until the reply ends and then releases it as U+FFFD. With
// U+FFFD as a stop string the reply must end for a "stop", with no text; the
// same request without the stop shows that the byte really did come out
// only at the end, as U+FFFD, for its "length".
TEST(TextGenerate, AStopStringInTextHeldToTheEndIsAStop) {
  BundledServers s;
  ASSERT_TRUE(s.Start());
  // "ð" is how a byte-level vocabulary spells the byte 0xF0.
  std::ifstream tokenizer_file(std::string(SEER_SOURCE_DIR) + "/models/seer-small/tokenizer.json");
  std::stringstream tokenizer_json;
  tokenizer_json << tokenizer_file.rdbuf();
  StatusOr<JsonValue> tokenizer = JsonValue::Parse(tokenizer_json.str());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().ToString();
  const JsonValue* lead_byte = tokenizer->Find("model")->Find("vocab")->Find("\xC3\xB0");
  ASSERT_NE(lead_byte, nullptr) << "the bundled tokenizer has no token for the byte 0xF0";
  const int32_t id = static_cast<int32_t>(lead_byte->as_int64());

  const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  v1::GenerateRequest req;
  req.set_text("The sky is");
  req.set_max_new_tokens(1);
  (*req.mutable_sampling()->mutable_logit_bias())[id] = 100.0f;
  Reply plain = Call(s.stub.get(), req);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error_message();
  ASSERT_EQ(plain.tokens, std::vector<int32_t>{id});
  EXPECT_EQ(plain.text, kReplacement) << "the lone lead byte is released at the end as U+FFFD";
  EXPECT_EQ(plain.summary_text, kReplacement) << "and only at the end, in the summary message";
  EXPECT_EQ(plain.summary.finish_reason(), "length");

  req.add_stop(kReplacement);
  Reply stopped = Call(s.stub.get(), req);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>{id});
  EXPECT_EQ(stopped.text, "");
  EXPECT_EQ(stopped.summary.finish_reason(), "stop");
}

// A Generate whose client deadline passes mid-stream is logged and counted
// as DEADLINE_EXCEEDED, not as a cancellation by the client.
TEST(TextGenerate, APassedDeadlineIsCountedAsOne) {
  BundledServers s;
  ASSERT_TRUE(s.Start());
  v1::GenerateRequest req = LongGreedyGenerate();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 1500ms);
  auto reader = s.stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  int tokens = 0;
  while (reader->Read(&msg)) tokens += msg.event_case() == v1::GenerateResponse::kToken ? 1 : 0;
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << tokens << " tokens";
  std::map<std::string, double> m;
  for (int i = 0; i < 500; ++i) {
    auto scraped = seer::testing::Scrape(s.decode->metrics_address());
    if (scraped.ok() && Metric(*scraped, "seer_decode_inflight_requests") == 0) {
      m = *scraped;
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(Metric(m, "seer_decode_requests_total{code=\"DEADLINE_EXCEEDED\"}"), 1);
  EXPECT_LE(Metric(m, "seer_decode_requests_total{code=\"CANCELLED\"}"), 0);
}

// A stream still running when --drain-seconds runs out is ended by the
// server: its request line says UNAVAILABLE with the reason, not CANCELLED
// ("the client cancelled"), which the error-ratio alert leaves out.
TEST(TextGenerate, AStreamCutByTheEndOfTheDrainIsTheServersDoing) {
  ServerProcess prefill(Bin("seer-prefill"), BundledModelArgs());
  ASSERT_TRUE(prefill.Start());
  ServerProcess decode(Bin("seer-decode"),
                       BundledModelArgs({"--prefill", prefill.grpc_address(), "--drain-seconds", "1"}));
  ASSERT_TRUE(decode.Start());
  auto stub =
      v1::DecodeService::NewStub(grpc::CreateChannel(decode.grpc_address(), grpc::InsecureChannelCredentials()));
  v1::GenerateRequest req = LongGreedyGenerate();
  req.set_request_id("cut-by-drain");
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  decode.Signal(SIGTERM);
  int more = 0;
  while (reader->Read(&msg)) ++more;
  EXPECT_FALSE(reader->Finish().ok()) << more << " messages after the signal";
  EXPECT_EQ(decode.Wait(), 0) << decode.Output();
  bool found = false;
  for (const std::string& line : decode.ErrLines()) {
    if (line.find("\"request_id\":\"cut-by-drain\"") == std::string::npos) continue;
    found = true;
    EXPECT_NE(line.find("\"code\":\"UNAVAILABLE\""), std::string::npos) << line;
    EXPECT_NE(line.find("--drain-seconds"), std::string::npos) << line;
  }
  EXPECT_TRUE(found) << decode.Output();
}

TEST(TextGenerate, WithoutATokenizerTextIsRefusedAndIdsStillWork) {
  Servers s;
  ASSERT_TRUE(s.Start({"--tokenizer", "none"}));
  v1::GenerateRequest req;
  req.set_text("hello");
  Reply r = Call(s.stub.get(), req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(r.status.error_message().find("text: seer-decode has no tokenizer"), std::string::npos)
      << r.status.error_message();
  Reply ids = Call(s.stub.get(), IdsRequest(20, 4, 9, false));
  EXPECT_TRUE(ids.status.ok()) << ids.status.error_message();
  EXPECT_TRUE(ids.text.empty()) << "a token-ids request without a tokenizer gets no text";
  // A text reply needs the tokenizer too, and says so by name.
  v1::GenerateRequest text_reply = IdsRequest(20, 4, 9, false);
  text_reply.set_text_reply(true);
  Reply refused = Call(s.stub.get(), text_reply);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.status.error_message().find("text_reply: seer-decode has no tokenizer"), std::string::npos)
      << refused.status.error_message();
  // So do bad words, which are tokenized.
  v1::GenerateRequest banned = IdsRequest(20, 4, 9, false);
  banned.add_bad_words("hello");
  Reply no_words = Call(s.stub.get(), banned);
  EXPECT_EQ(no_words.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(no_words.status.error_message().find("bad_words: seer-decode has no tokenizer"), std::string::npos)
      << no_words.status.error_message();
}

}  // namespace
}  // namespace seer
