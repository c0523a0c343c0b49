// The `seer tokenize` / `seer detokenize` binary (SEER_BIN_DIR/seer) on the
// committed tokenizer fixtures: its ids and text against Hugging Face's
// (tests/fixtures/tokenizers/), its chat rendering against transformers',
// and its exit codes and messages for bad flags.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/json.h"
#include "tests/run_binary.h"

namespace seer {
namespace {

namespace fs = std::filesystem;

using CliOutput = testing::RunOutput;
using testing::Slurp;
using testing::TempPath;

CliOutput RunSeer(const std::vector<std::string>& args) { return testing::RunBinary("seer", args); }

std::string Fixture(const std::string& rel) { return std::string(SEER_FIXTURES_DIR) + "/tokenizers/" + rel; }

JsonValue LoadJson(const std::string& rel) {
  auto j = JsonValue::Parse(Slurp(Fixture(rel)));
  EXPECT_TRUE(j.ok()) << rel;
  return j.ok() ? *j : JsonValue();
}

std::string Join(const JsonValue& ids, const char* sep) {
  std::string s;
  for (size_t i = 0; i < ids.as_array().size(); ++i) {
    if (i) s += sep;
    s += std::to_string(ids.as_array()[i].as_int64());
  }
  return s;
}

// A case with some text, special tokens and non-ASCII.
const JsonValue& PickCase(const JsonValue& vectors, const std::string& needle) {
  for (const JsonValue& c : vectors.Find("cases")->as_array()) {
    if (c.Find("text")->as_string().find(needle) != std::string::npos) return c;
  }
  return vectors.Find("cases")->as_array()[0];
}

TEST(TokenizeCli, IdsAndTextEqualHuggingFace) {
  const JsonValue vectors = LoadJson("llama3/vectors.json");
  for (const char* needle : {"Hello<|begin_of_text|>world", "你好", "I'M"}) {
    const JsonValue& c = PickCase(vectors, needle);
    const std::string text = c.Find("text")->as_string();
    CliOutput r = RunSeer({"tokenize", "--tokenizer", Fixture("llama3"), "--text", text});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, Join(*c.Find("ids"), ",") + "\n");
    // From a file, without special tokens, as JSON.
    const std::string file = TempPath("text.txt");
    std::ofstream(file, std::ios::binary) << text;
    CliOutput j = RunSeer({"tokenize", "--tokenizer", Fixture("llama3") + "/tokenizer.json", "--text-file", file,
                           "--add-special-tokens", "false", "--json"});
    fs::remove(file);
    ASSERT_EQ(j.exit_code, 0) << j.err;
    EXPECT_EQ(j.out, "{\"ids\":[" + Join(*c.Find("ids_no_special"), ",") + "]}\n");
    // And back.
    CliOutput d = RunSeer({"detokenize", "--tokenizer", Fixture("llama3"), "--ids", Join(*c.Find("ids"), " ")});
    ASSERT_EQ(d.exit_code, 0) << d.err;
    EXPECT_EQ(d.out, c.Find("decode")->as_string());
    const std::string ids_file = TempPath("ids.txt");
    std::ofstream(ids_file) << Join(*c.Find("ids"), "\n");
    CliOutput s = RunSeer(
        {"detokenize", "--tokenizer", Fixture("llama3"), "--ids", "@" + ids_file, "--skip-special-tokens", "--json"});
    fs::remove(ids_file);
    ASSERT_EQ(s.exit_code, 0) << s.err;
    auto parsed = JsonValue::Parse(s.out);
    ASSERT_TRUE(parsed.ok()) << s.out;
    EXPECT_EQ(parsed->Find("text")->as_string(), c.Find("decode_skip")->as_string());
  }
}

TEST(TokenizeCli, ChatEqualsTransformers) {
  const JsonValue vectors = LoadJson("chat_vectors.json");
  for (const JsonValue& c : vectors.Find("cases")->as_array()) {
    if (c.Find("conversation")->as_string() != "system_multi_turn" || c.Find("text") == nullptr) continue;
    const std::string family = c.Find("family")->as_string();
    const std::string messages = TempPath("messages.json");
    std::ofstream(messages) << vectors.Find("conversations")->Find("system_multi_turn")->Dump();
    const bool gen = c.Find("add_generation_prompt")->as_bool();
    CliOutput r = RunSeer({"tokenize", "--tokenizer", Fixture(family), "--chat", messages, "--add-generation-prompt",
                           gen ? "true" : "false", "--json"});
    CliOutput plain = RunSeer({"tokenize", "--tokenizer", Fixture(family), "--chat", messages,
                               "--add-generation-prompt", gen ? "true" : "false"});
    fs::remove(messages);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto parsed = JsonValue::Parse(r.out);
    ASSERT_TRUE(parsed.ok()) << r.out;
    EXPECT_EQ(parsed->Find("text")->as_string(), c.Find("text")->as_string()) << family;
    EXPECT_EQ(parsed->Find("ids")->Dump(), c.Find("ids")->Dump()) << family;
    ASSERT_EQ(plain.exit_code, 0) << plain.err;
    EXPECT_EQ(plain.out, c.Find("text")->as_string());
  }
}

TEST(TokenizeCli, ErrorsAndExitCodes) {
  CliOutput help = RunSeer({"tokenize", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* flag : {"--tokenizer", "--text", "--text-file", "--chat", "--chat-template", "--add-special-tokens",
                           "--add-generation-prompt", "--json"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
  CliOutput dhelp = RunSeer({"detokenize", "--help"});
  EXPECT_EQ(dhelp.exit_code, 0);
  for (const char* flag : {"--tokenizer", "--ids", "--skip-special-tokens", "--json"}) {
    EXPECT_NE(dhelp.out.find(flag), std::string::npos) << flag;
  }
  CliOutput missing = RunSeer({"tokenize", "--text", "hi"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("seer tokenize: --tokenizer is required"), std::string::npos) << missing.err;
  CliOutput two = RunSeer({"tokenize", "--tokenizer", Fixture("gpt2"), "--text", "a", "--chat", "m.json"});
  EXPECT_EQ(two.exit_code, 2);
  EXPECT_NE(two.err.find("exactly one of"), std::string::npos) << two.err;
  CliOutput unknown = RunSeer({"detokenize", "--tokenizer", Fixture("gpt2"), "--idz", "1"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("seer detokenize: unknown flag --idz"), std::string::npos) << unknown.err;
  CliOutput bad_ids = RunSeer({"detokenize", "--tokenizer", Fixture("gpt2"), "--ids", "1,x"});
  EXPECT_EQ(bad_ids.exit_code, 2);
  EXPECT_NE(bad_ids.err.find("--ids: item 1"), std::string::npos) << bad_ids.err;
  CliOutput out_of_vocab = RunSeer({"detokenize", "--tokenizer", Fixture("gpt2"), "--ids", "1,999999"});
  EXPECT_EQ(out_of_vocab.exit_code, 2);
  EXPECT_NE(out_of_vocab.err.find("999999 is not in the tokenizer's vocabulary"), std::string::npos)
      << out_of_vocab.err;
  CliOutput no_dir = RunSeer({"tokenize", "--tokenizer", "/nonexistent/dir", "--text", "a"});
  EXPECT_EQ(no_dir.exit_code, 1);
  EXPECT_NE(no_dir.err.find("seer tokenize: NOT_FOUND"), std::string::npos) << no_dir.err;
  CliOutput no_template = RunSeer({"tokenize", "--tokenizer", Fixture("gpt2"), "--chat", Fixture("strings.json")});
  EXPECT_EQ(no_template.exit_code, 2);  // strings.json is an object, not a list of messages
  const std::string messages = TempPath("m.json");
  std::ofstream(messages) << R"([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])";
  CliOutput raised = RunSeer({"tokenize", "--tokenizer", Fixture("mistral"), "--chat", messages});
  CliOutput gpt2_chat = RunSeer({"tokenize", "--tokenizer", Fixture("gpt2"), "--chat", messages});
  fs::remove(messages);
  EXPECT_EQ(raised.exit_code, 1);
  EXPECT_NE(raised.err.find("conversation roles must alternate"), std::string::npos) << raised.err;
  EXPECT_EQ(gpt2_chat.exit_code, 1);
  EXPECT_NE(gpt2_chat.err.find("no chat_template"), std::string::npos) << gpt2_chat.err;
}

}  // namespace
}  // namespace seer
