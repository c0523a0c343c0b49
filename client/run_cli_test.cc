// The `seer run` binary (SEER_BIN_DIR/seer) on the committed fixtures: its
// JSON tokens against Hugging Face's greedy_tokens, its --dump against
// Hugging Face's logits and KV cache and against the PyTorch gate
// reference's masks, and its exit codes and messages for bad flags.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/json.h"
#include "engine/model/sparsity.h"
#include "tests/fixture_reader.h"
#include "tests/run_binary.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

using seer::testing::RunOutput;
using seer::testing::Slurp;
using seer::testing::TempPath;

RunOutput RunSeer(const std::vector<std::string>& args) { return seer::testing::RunBinary("seer", args); }

std::string JoinIds(const std::vector<int32_t>& ids, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? sep : "") + std::to_string(ids[i]);
  return s;
}

class RunCli : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto expected = fixtures::Open(GetParam() + "/expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status().ToString();
    expected_ = std::move(*expected);
    auto ids = fixtures::I32(*expected_, "input_ids");
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    ids_ = *ids;
  }
  std::string model() const { return fixtures::Path(GetParam()); }

  std::unique_ptr<SafetensorsFile> expected_;
  std::vector<int32_t> ids_;
};

TEST_P(RunCli, JsonTokensEqualTransformersGreedy) {
  auto greedy = fixtures::I32(*expected_, "greedy_tokens");
  ASSERT_TRUE(greedy.ok()) << greedy.status().ToString();
  // The prompt from a file, whitespace-separated.
  const std::string ids_file = TempPath("ids.txt");
  std::ofstream(ids_file) << JoinIds(ids_, " \n");
  RunOutput r = RunSeer({"run", "--model", model(), "--ids", "@" + ids_file, "--device", "cpu", "--max-new-tokens",
                         std::to_string(greedy->size()), "--json"});
  fs::remove(ids_file);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto json = JsonValue::Parse(r.out);
  ASSERT_TRUE(json.ok()) << json.status().ToString() << "\n" << r.out;
  const JsonValue* tokens = json->Find("tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_TRUE(tokens->is_array());
  std::vector<int32_t> got;
  for (const JsonValue& t : tokens->as_array()) got.push_back(static_cast<int32_t>(t.as_int64()));
  EXPECT_EQ(got, *greedy);
  ASSERT_NE(json->Find("next_token"), nullptr);
  EXPECT_EQ(json->Find("next_token")->as_int64(), (*greedy)[0]);
  ASSERT_NE(json->Find("seq_len"), nullptr);
  EXPECT_EQ(json->Find("seq_len")->as_int64(), static_cast<int64_t>(ids_.size()));
  ASSERT_NE(json->Find("prefill_ms"), nullptr);
  EXPECT_GT(json->Find("prefill_ms")->as_double(), 0.0);
  const JsonValue* density = json->Find("density");
  ASSERT_NE(density, nullptr);
  ASSERT_NE(density->Find("overall"), nullptr);
  EXPECT_EQ(density->Find("overall")->as_double(), 1.0);  // no gates: dense
  ASSERT_NE(json->Find("device"), nullptr);
  EXPECT_EQ(json->Find("device")->as_string().rfind("cpu", 0), 0u);

  // With no --max-new-tokens, tokens is the single next-token prediction,
  // here with the prompt given inline, comma-separated.
  RunOutput one = RunSeer({"run", "--model", model(), "--ids", JoinIds(ids_, ","), "--device", "cpu", "--json"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  auto one_json = JsonValue::Parse(one.out);
  ASSERT_TRUE(one_json.ok()) << one.out;
  ASSERT_NE(one_json->Find("tokens"), nullptr);
  ASSERT_EQ(one_json->Find("tokens")->as_array().size(), 1u);
  EXPECT_EQ(one_json->Find("tokens")->as_array()[0].as_int64(), (*greedy)[0]);
}

// --logprobs against Hugging Face: the next token's log-probability and its
// 5 alternatives are log_softmax (in long double here) of transformers'
// logits at the prompt's last position; every generated token's logprob is
// its own top entry (greedy).
TEST_P(RunCli, LogprobsAreLogSoftmaxOfTransformersLogits) {
  auto want_logits = fixtures::F32(*expected_, "logits");
  ASSERT_TRUE(want_logits.ok()) << want_logits.status().ToString();
  const size_t vocab = want_logits->size() / ids_.size();
  const std::vector<float> last(want_logits->end() - static_cast<std::ptrdiff_t>(vocab), want_logits->end());
  RunOutput r = RunSeer({"run", "--model", model(), "--ids", JoinIds(ids_, ","), "--device", "cpu", "--max-new-tokens",
                         "4", "--logprobs", "5", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto json = JsonValue::Parse(r.out);
  ASSERT_TRUE(json.ok()) << r.out;
  const JsonValue* logprobs = json->Find("logprobs");
  ASSERT_TRUE(logprobs != nullptr && logprobs->is_array()) << r.out;
  ASSERT_EQ(logprobs->as_array().size(), 4u);
  long double total = 0.0L;
  for (float v : last) total += std::exp(static_cast<long double>(v));
  auto hf = [&](int64_t id) {
    return static_cast<double>(std::log(std::exp(static_cast<long double>(last[id])) / total));
  };
  std::vector<int64_t> order(vocab);
  for (size_t i = 0; i < vocab; ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return last[a] > last[b]; });
  const JsonValue& first = logprobs->as_array()[0];
  EXPECT_EQ(first.Find("token")->as_int64(), order[0]);
  EXPECT_NEAR(first.Find("logprob")->as_double(), hf(order[0]), 1e-4);
  const auto& top = first.Find("top")->as_array();
  ASSERT_EQ(top.size(), 5u);
  for (size_t k = 0; k < top.size(); ++k) {
    EXPECT_EQ(top[k].Find("token")->as_int64(), order[k]) << k;
    EXPECT_NEAR(top[k].Find("logprob")->as_double(), hf(order[k]), 1e-4) << k;
  }
  const auto& tokens = json->Find("tokens")->as_array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const JsonValue& e = logprobs->as_array()[i];
    EXPECT_EQ(e.Find("token")->as_int64(), tokens[i].as_int64()) << i;
    EXPECT_EQ(e.Find("top")->as_array()[0].Find("token")->as_int64(), tokens[i].as_int64()) << i;
    EXPECT_EQ(e.Find("top")->as_array()[0].Find("logprob")->as_double(), e.Find("logprob")->as_double()) << i;
    EXPECT_LT(e.Find("logprob")->as_double(), 0.0) << i;
  }
  RunOutput bad = RunSeer({"run", "--model", model(), "--ids", "1,2", "--logprobs", "21"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--logprobs"), std::string::npos) << bad.err;
}

TEST_P(RunCli, DumpEqualsTransformersLogitsAndKv) {
  const std::string dump = TempPath("dump.safetensors");
  RunOutput r = RunSeer({"run", "--model", model(), "--ids", JoinIds(ids_, ","), "--device", "cpu", "--dump", dump});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The readable summary names the prediction and each layer's density.
  EXPECT_NE(r.out.find("next token"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer 0"), std::string::npos) << r.out;
  auto got = SafetensorsFile::Open(dump);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  const int64_t L = static_cast<int64_t>(ids_.size());
  auto want_logits = fixtures::F32(*expected_, "logits");
  ASSERT_TRUE(want_logits.ok()) << want_logits.status().ToString();
  const int64_t vocab = static_cast<int64_t>(want_logits->size()) / L;
  auto logits = fixtures::F32(**got, "logits", {L, vocab});
  ASSERT_TRUE(logits.ok()) << logits.status().ToString();
  EXPECT_LE(fixtures::RelError(*logits, *want_logits), 1e-4);
  for (int layer = 0;; ++layer) {
    const std::string k_name = "layers." + std::to_string(layer) + ".k";
    if ((*got)->Find(k_name) == nullptr) {
      EXPECT_EQ(expected_->Find(k_name), nullptr) << "dump lacks " << k_name;
      EXPECT_GT(layer, 0);
      break;
    }
    for (const char* kv : {".k", ".v"}) {
      const std::string n = "layers." + std::to_string(layer) + kv;
      auto want = fixtures::F32(*expected_, n);
      ASSERT_TRUE(want.ok()) << want.status().ToString();
      const TensorView* shape_ref = expected_->Find(n);
      auto mine = fixtures::F32(**got, n, shape_ref->shape);
      ASSERT_TRUE(mine.ok()) << mine.status().ToString();
      EXPECT_LE(fixtures::RelError(*mine, *want), 1e-4) << n;
    }
  }
  fs::remove(dump);
}

TEST_P(RunCli, GatedDumpEqualsTheReferenceMasks) {
  auto gates_expected = fixtures::Open(GetParam() + "_gates/expected.safetensors");
  ASSERT_TRUE(gates_expected.ok()) << gates_expected.status().ToString();
  auto it = (*gates_expected)->metadata().find("modes");
  ASSERT_NE(it, (*gates_expected)->metadata().end());
  const std::vector<std::string> modes = fixtures::SplitModes(it->second);
  ASSERT_FALSE(modes.empty());
  for (size_t j = 0; j < modes.size(); ++j) {
    // "nz_ratio=0.5;last_block_dense=false" becomes two flags.
    std::string mode = modes[j];
    std::vector<std::string> args = {
        "run",   "--model",          model(),    "--gates", fixtures::Path(GetParam() + "_gates"),
        "--ids", JoinIds(ids_, ","), "--device", "cpu",     "--json"};
    if (size_t semi = mode.find(';'); semi != std::string::npos) {
      const std::string opt = mode.substr(semi + 1);
      ASSERT_EQ(opt.rfind("last_block_dense=", 0), 0u) << opt;
      args.push_back("--last-block-dense");
      args.push_back(opt.substr(std::string("last_block_dense=").size()));
      mode = mode.substr(0, semi);
    }
    args.push_back("--sparsity");
    args.push_back(mode);
    const std::string dump = TempPath("gated.safetensors");
    args.push_back("--dump");
    args.push_back(dump);
    RunOutput r = RunSeer(args);
    ASSERT_EQ(r.exit_code, 0) << modes[j] << ": " << r.err;
    auto json = JsonValue::Parse(r.out);
    ASSERT_TRUE(json.ok()) << r.out;
    auto got = SafetensorsFile::Open(dump);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    auto sparsity = ParseSparsity(modes[j]);
    ASSERT_TRUE(sparsity.ok());
    const JsonValue* layers = json->Find("density") ? json->Find("density")->Find("layers") : nullptr;
    ASSERT_NE(layers, nullptr) << r.out;
    for (int layer = 0; layer < static_cast<int>(layers->as_array().size()); ++layer) {
      const std::string p = "mode" + std::to_string(j) + ".layers." + std::to_string(layer) + ".";
      const std::string mine_p = "layers." + std::to_string(layer) + ".";
      auto want_mask = fixtures::U8(**gates_expected, p + "block_mask");
      auto want_probs = fixtures::F32(**gates_expected, p + "gate_probs");
      ASSERT_TRUE(want_mask.ok() && want_probs.ok()) << p;
      const std::vector<int64_t>& shape = (*gates_expected)->Find(p + "block_mask")->shape;
      auto mask = fixtures::U8(**got, mine_p + "block_mask", shape);
      auto probs = fixtures::F32(**got, mine_p + "gate_probs", shape);
      ASSERT_TRUE(mask.ok()) << mask.status().ToString();
      ASSERT_TRUE(probs.ok()) << probs.status().ToString();
      EXPECT_LE(fixtures::RelError(*probs, *want_probs), 1e-4) << p;
      int64_t kept = 0, unexplained = 0;
      for (size_t b = 0; b < mask->size(); ++b) {
        kept += (*mask)[b];
        if (((*mask)[b] != 0) == ((*want_mask)[b] != 0)) continue;
        const bool at_threshold = sparsity->mode == SparsityMode::kThreshold &&
                                  std::abs(double((*want_probs)[b]) - sparsity->threshold) <= 1e-6;
        if (!at_threshold) ++unexplained;
      }
      EXPECT_EQ(unexplained, 0) << modes[j] << " layer " << layer;
      // The printed density is the dumped mask's kept / causal blocks.
      const int64_t nb = shape[1];
      const double density = double(kept) / double(shape[0] * nb * (nb + 1) / 2);
      EXPECT_NEAR(layers->as_array()[layer].as_double(), density, 1e-9) << modes[j] << " layer " << layer;
    }
    fs::remove(dump);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RunCli, ::testing::Values("llama", "qwen2"),
                         [](const auto& info) { return info.param; });

// ---- usage and runtime errors --------------------------------------------------

void ExpectUsageError(const std::vector<std::string>& args, const std::string& names) {
  RunOutput r = RunSeer(args);
  std::string joined;
  for (const auto& a : args) joined += " " + a;
  EXPECT_EQ(r.exit_code, 2) << "seer" << joined << ": " << r.err;
  EXPECT_NE(r.err.find(names), std::string::npos) << "stderr does not name " << names << ": " << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(RunCliErrors, BadFlagsExitWithTwoAndNameTheFlag) {
  const std::string model = fixtures::Path("llama");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--bogus", "3"}, "--bogus");
  ExpectUsageError({"run", "--model", model, "--ids", "1,x,3"}, "--ids");
  ExpectUsageError({"run", "--model", model, "--ids", ""}, "--ids");
  ExpectUsageError({"run", "--model", model, "--ids", "@/nonexistent/ids.txt"}, "--ids");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--device", "tpu"}, "--device");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--max-new-tokens", "-3"}, "--max-new-tokens");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--max-new-tokens", "many"}, "--max-new-tokens");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--threads", "-1"}, "--threads");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--sparsity", "dense"}, "--sparsity");
  ExpectUsageError(
      {"run", "--model", model, "--ids", "1,2", "--gates", fixtures::Path("llama_gates"), "--sparsity", "threshold=2"},
      "--sparsity");
  ExpectUsageError(
      {"run", "--model", model, "--ids", "1,2", "--gates", fixtures::Path("llama_gates"), "--sparsity", "sometimes"},
      "--sparsity");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "--gates", fixtures::Path("llama_gates"),
                    "--last-block-dense", "maybe"},
                   "--last-block-dense");
  ExpectUsageError({"run", "--ids", "1,2"}, "--model");
  ExpectUsageError({"run", "--model", model}, "--ids");
  ExpectUsageError({"run", "--model", model, "--ids", "1,2", "stray"}, "stray");
  // An id beyond the vocabulary is caught once the model says how large it is.
  ExpectUsageError({"run", "--model", model, "--ids", "1,2,99999", "--device", "cpu"}, "--ids");
  ExpectUsageError({"frobnicate"}, "frobnicate");
}

TEST(RunCliErrors, RuntimeErrorsExitWithOneAndNameThePath) {
  RunOutput r = RunSeer({"run", "--model", "/nonexistent/model-dir", "--ids", "1,2", "--device", "cpu"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model-dir"), std::string::npos) << r.err;
  RunOutput g = RunSeer({"run", "--model", fixtures::Path("llama"), "--gates", "/nonexistent/gates-dir", "--ids", "1,2",
                         "--device", "cpu"});
  EXPECT_EQ(g.exit_code, 1) << g.err;
  EXPECT_NE(g.err.find("/nonexistent/gates-dir"), std::string::npos) << g.err;
}

// With --ids the tokenizer only turns the answer into text: a model whose
// tokenizer.json does not load still answers in ids (the same ids as with
// the good one), with a warning; --tokenizer given, or a text prompt, still
// fail on it. A missing model directory is named as --model.
TEST(RunCliErrors, ABrokenTokenizerDoesNotStopAnIdsRun) {
  RunOutput missing = RunSeer({"run", "--model", "/nonexistent/model-dir", "--ids", "1,2", "--device", "cpu"});
  EXPECT_NE(missing.err.find("--model: '/nonexistent/model-dir'"), std::string::npos) << missing.err;
  const std::string dir = TempPath("broken_tokenizer");
  std::filesystem::remove_all(dir);
  std::filesystem::copy(fixtures::Path("llama"), dir, std::filesystem::copy_options::recursive);
  std::filesystem::resize_file(dir + "/tokenizer.json", 100);
  const std::vector<std::string> ids = {"run",    "--ids",    "5,6,7", "--max-new-tokens", "3",
                                        "--json", "--device", "cpu",   "--model"};
  std::vector<std::string> good = ids, broken = ids;
  good.push_back(fixtures::Path("llama"));
  broken.push_back(dir);
  RunOutput g = RunSeer(good), b = RunSeer(broken);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.err.find("tokenizer.json does not load"), std::string::npos) << b.err;
  StatusOr<JsonValue> gj = JsonValue::Parse(g.out), bj = JsonValue::Parse(b.out);
  ASSERT_TRUE(gj.ok() && bj.ok()) << g.out << b.out;
  ASSERT_TRUE(gj->Find("tokens") && bj->Find("tokens"));
  EXPECT_EQ(gj->Find("tokens")->Dump(), bj->Find("tokens")->Dump());
  RunOutput text = RunSeer({"run", "--model", dir, "--prompt", "hi", "--device", "cpu"});
  EXPECT_EQ(text.exit_code, 1) << text.err;
  EXPECT_NE(text.err.find("tokenizer.json"), std::string::npos) << text.err;
  std::filesystem::remove_all(dir);
}

TEST(RunCliErrors, HelpListsCommandsAndFlags) {
  RunOutput top = RunSeer({"--help"});
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.out.find("run"), std::string::npos) << top.out;
  RunOutput none = RunSeer({});
  EXPECT_EQ(none.exit_code, 2);
  RunOutput help = RunSeer({"run", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--model", "--ids", "--device", "--dump", "--max-new-tokens", "--json", "--gates",
                           "--sparsity", "--last-block-dense", "--threads"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

// A text prompt is the model tokenizer's ids of the text: the same tokens as
// --ids with what `seer tokenize` gives, and the printed text is what
// `seer detokenize --skip-special-tokens` makes of them. A chat goes through
// the checkpoint's template.
TEST(RunCliText, PromptsAreTokenizedAndAnswersDecodedWithTheModelsTokenizer) {
  const std::string model = fixtures::Path("llama");
  const std::string text = "Hello there, the thing is";
  RunOutput tok = RunSeer({"tokenize", "--tokenizer", model, "--text", text, "--json"});
  ASSERT_EQ(tok.exit_code, 0) << tok.err;
  auto ids = JsonValue::Parse(tok.out);
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> prompt;
  for (const JsonValue& v : ids->Find("ids")->as_array()) prompt.push_back(static_cast<int32_t>(v.as_int64()));

  RunOutput by_text =
      RunSeer({"run", "--model", model, "--prompt", text, "--max-new-tokens", "9", "--device", "cpu", "--json"});
  ASSERT_EQ(by_text.exit_code, 0) << by_text.err;
  RunOutput by_ids = RunSeer(
      {"run", "--model", model, "--ids", JoinIds(prompt, ","), "--max-new-tokens", "9", "--device", "cpu", "--json"});
  ASSERT_EQ(by_ids.exit_code, 0) << by_ids.err;
  auto a = JsonValue::Parse(by_text.out), b = JsonValue::Parse(by_ids.out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->Find("seq_len")->as_int64(), static_cast<int64_t>(prompt.size()));
  std::vector<int32_t> tokens;
  for (const JsonValue& v : a->Find("tokens")->as_array()) tokens.push_back(static_cast<int32_t>(v.as_int64()));
  std::vector<int32_t> want;
  for (const JsonValue& v : b->Find("tokens")->as_array()) want.push_back(static_cast<int32_t>(v.as_int64()));
  // The text run stops at the tokenizer's EOS (id 2); the ids run goes on.
  ASSERT_LE(tokens.size(), want.size());
  EXPECT_EQ(tokens, std::vector<int32_t>(want.begin(), want.begin() + tokens.size()));
  if (tokens.size() < want.size()) EXPECT_EQ(tokens.back(), 2);
  RunOutput detok =
      RunSeer({"detokenize", "--tokenizer", model, "--ids", JoinIds(tokens, ","), "--skip-special-tokens", "--json"});
  ASSERT_EQ(detok.exit_code, 0) << detok.err;
  EXPECT_EQ(a->Find("text")->as_string(), JsonValue::Parse(detok.out)->Find("text")->as_string());

  const std::string chat = TempPath("chat.json");
  std::ofstream(chat) << R"([{"role": "user", "content": "Hi"}])";
  RunOutput by_chat =
      RunSeer({"run", "--model", model, "--chat", chat, "--max-new-tokens", "3", "--device", "cpu", "--json"});
  RunOutput rendered = RunSeer({"tokenize", "--tokenizer", model, "--chat", chat, "--json"});
  fs::remove(chat);
  ASSERT_EQ(by_chat.exit_code, 0) << by_chat.err;
  ASSERT_EQ(rendered.exit_code, 0) << rendered.err;
  auto r = JsonValue::Parse(rendered.out);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Find("text")->as_string(), "<s>user: Hi\nassistant:");
  EXPECT_EQ(JsonValue::Parse(by_chat.out)->Find("seq_len")->as_int64(),
            static_cast<int64_t>(r->Find("ids")->as_array().size()));

  // OpenAI's other content forms, as the HTTP API takes them: text parts are
  // joined and a null content (an assistant turn that called a tool) is "".
  // The reference is the same chat written with plain strings.
  const std::string openai_chat = TempPath("openai_chat.json"), plain_chat = TempPath("plain_chat.json");
  std::ofstream(openai_chat) << R"([{"role": "system", "content": [{"type": "text", "text": "Be"},
                                    {"type": "text", "text": " brief."}]},
                                   {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": null, "tool_calls": []},
                                   {"role": "user", "content": "And?"}])";
  std::ofstream(plain_chat) << R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": ""}, {"role": "user", "content": "And?"}])";
  RunOutput by_openai =
      RunSeer({"run", "--model", model, "--chat", openai_chat, "--max-new-tokens", "3", "--device", "cpu", "--json"});
  RunOutput by_plain =
      RunSeer({"run", "--model", model, "--chat", plain_chat, "--max-new-tokens", "3", "--device", "cpu", "--json"});
  RunOutput plain_ids = RunSeer({"tokenize", "--tokenizer", model, "--chat", plain_chat, "--json"});
  ASSERT_EQ(by_openai.exit_code, 0) << by_openai.err;
  ASSERT_EQ(by_plain.exit_code, 0) << by_plain.err;
  ASSERT_EQ(plain_ids.exit_code, 0) << plain_ids.err;
  auto o = JsonValue::Parse(by_openai.out), p = JsonValue::Parse(by_plain.out), pi = JsonValue::Parse(plain_ids.out);
  ASSERT_TRUE(o.ok() && p.ok() && pi.ok());
  EXPECT_EQ(o->Find("tokens")->Dump(), p->Find("tokens")->Dump());
  EXPECT_EQ(o->Find("seq_len")->as_int64(), static_cast<int64_t>(pi->Find("ids")->as_array().size()));
  // `seer tokenize --chat --as-served` shows that prompt; without the flag
  // the messages go to the template as transformers passes them.
  RunOutput served = RunSeer({"tokenize", "--tokenizer", model, "--chat", openai_chat, "--as-served", "--json"});
  ASSERT_EQ(served.exit_code, 0) << served.err;
  EXPECT_EQ(JsonValue::Parse(served.out)->Find("ids")->Dump(), pi->Find("ids")->Dump());
  RunOutput as_given = RunSeer({"tokenize", "--tokenizer", model, "--chat", openai_chat, "--json"});
  ASSERT_EQ(as_given.exit_code, 0) << as_given.err;
  EXPECT_NE(JsonValue::Parse(as_given.out)->Find("text")->as_string(),
            JsonValue::Parse(served.out)->Find("text")->as_string());
  // A part that is not text is refused by name, before the model loads.
  std::ofstream(openai_chat) << R"([{"role": "user", "content": "Hi"},
                                   {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])";
  RunOutput image = RunSeer({"run", "--model", model, "--chat", openai_chat, "--device", "cpu"});
  fs::remove(openai_chat);
  fs::remove(plain_chat);
  EXPECT_EQ(image.exit_code, 2) << image.err;
  EXPECT_NE(image.err.find("messages[1].content: part 0: only text parts"), std::string::npos) << image.err;

  // No tokenizer, no text: a usage error that says what to do.
  RunOutput none = RunSeer({"run", "--model", fixtures::Path("qwen2"), "--prompt", "Hi", "--device", "cpu"});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("--tokenizer"), std::string::npos) << none.err;
  RunOutput two = RunSeer({"run", "--model", model, "--prompt", "Hi", "--ids", "1,2", "--device", "cpu"});
  EXPECT_EQ(two.exit_code, 2);
  EXPECT_NE(two.err.find("exactly one of"), std::string::npos) << two.err;
}

}  // namespace
}  // namespace seer
