// ParseChatMessages: OpenAI's chat messages as every Seer front end reads
// them. The references are OpenAI's message forms, written out by hand.
// EncodeChatPrompt's options: against transformers' apply_chat_template ids
// (tests/fixtures/tokenizers/chat_vectors.json) with and without the
// generation prompt; continue_final_message by transformers' rule on those
// renders; a template kwarg (Llama 3.1's date_string) in the render.
#include "text/prompt.h"

#include "text/chat_template.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/json.h"
#include "text/chat_template.h"
#include "text/text_test_util.h"

namespace seer {
namespace {

std::vector<ChatTurn> Parse(const std::string& json) {
  StatusOr<JsonValue> v = JsonValue::Parse(json);
  EXPECT_TRUE(v.ok()) << json;
  StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*v);
  EXPECT_TRUE(turns.ok()) << turns.status().ToString();
  return turns.ok() ? *turns : std::vector<ChatTurn>{};
}

TEST(ChatMessages, EveryContentFormOpenAiSendsBecomesText) {
  const std::vector<ChatTurn> turns = Parse(R"([
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
      {"role": "assistant", "content": null, "tool_calls": []},
      {"role": "tool", "tool_call_id": "call_1", "content": "42"},
      {"role": "assistant"},
      {"role": "user", "content": []}])");
  ASSERT_EQ(turns.size(), 6u);
  const std::vector<std::pair<std::string, std::string>> want = {{"system", "Be brief."}, {"user", "Hello, world"},
                                                                 {"assistant", ""},       {"tool", "42"},
                                                                 {"assistant", ""},       {"user", ""}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(turns[i].role, want[i].first) << i;
    EXPECT_EQ(turns[i].content, want[i].second) << i;
  }
  // What the template renders: role and content, both strings, and a tool
  // turn's call id; no empty tool_calls (Llama 3.1's template asks whether
  // the key is there).
  const JsonValue rendered = ChatTurnsJson(turns);
  EXPECT_EQ(rendered.Dump(), JsonValue::Parse(R"([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hello, world"}, {"role": "assistant", "content": ""},
      {"role": "tool", "content": "42", "tool_call_id": "call_1"}, {"role": "assistant", "content": ""},
      {"role": "user", "content": ""}])")
                                 ->Dump());
}

// An assistant's calls and a tool's call id are kept where they mean
// something; on other turns they are left out (Llama 3.1's template would
// render a user turn with a "tool_calls" key as an assistant's call).
TEST(ChatMessages, CallsAndCallIdsStayOnTheTurnsTheyBelongTo) {
  const std::vector<ChatTurn> turns = Parse(R"([
      {"role": "user", "content": "Hi", "name": "ann", "tool_call_id": "c1",
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "assistant", "content": null, "tool_call_id": "c0",
       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1.0}"}},
                      {"type": "function", "function": {"name": "g", "arguments": "not json"}},
                      {"id": "c3", "type": "function", "function": {"name": "h"}}]},
      {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "4"}])");
  ASSERT_EQ(turns.size(), 3u);
  EXPECT_TRUE(turns[0].tool_calls.empty());
  EXPECT_EQ(turns[0].tool_call_id, "");
  EXPECT_EQ(turns[0].name, "ann");
  ASSERT_EQ(turns[1].tool_calls.size(), 3u);
  EXPECT_EQ(turns[1].tool_call_id, "");
  EXPECT_EQ(turns[1].tool_calls[0].arguments, R"({"a": 1.0})");
  EXPECT_EQ(turns[1].tool_calls[2].arguments, "{}") << "absent arguments are an empty object";
  EXPECT_EQ(turns[2].tool_call_id, "c1");
  // Rendered as vLLM hands them to transformers: arguments as the object
  // they hold (text that is not JSON stays a string), no id where none was
  // given.
  EXPECT_EQ(ChatTurnsJson(turns).Dump(), JsonValue::Parse(R"([
      {"role": "user", "content": "Hi", "name": "ann"},
      {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1.0}}},
        {"type": "function", "function": {"name": "g", "arguments": "not json"}},
        {"id": "c3", "type": "function", "function": {"name": "h", "arguments": {}}}]},
      {"role": "tool", "content": "4", "tool_call_id": "c1", "name": "f"}])")
                                             ->Dump());
}

TEST(ChatMessages, RefusalsNameTheMemberAtFault) {
  const struct {
    const char* json;
    const char* field;
    const char* says;
  } cases[] = {
      {R"([])", "messages", "non-empty array"},
      {R"({"role": "user", "content": "Hi"})", "messages", "non-empty array"},
      {R"(["Hi"])", "messages[0]", "must be an object"},
      {R"([{"role": "user", "content": "Hi"}, {"content": "Hi"}])", "messages[1].role", "must be a string"},
      {R"([{"role": 7, "content": "Hi"}])", "messages[0].role", "must be a string"},
      {R"([{"role": "user", "content": 3}])", "messages[0].content", "must be a string, null or an array"},
      {R"([{"role": "user", "content": {"text": "Hi"}}])", "messages[0].content", "must be a string, null or an array"},
      {R"([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}])",
       "messages[0].content", "part 1: only text parts"},
      {R"([{"role": "user", "content": [{"type": "text"}]}])", "messages[0].content", "part 0: only text parts"},
      {R"([{"role": "user", "content": ["Hi"]}])", "messages[0].content", "part 0: only text parts"},
      {R"([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}])", "messages[0].function_call",
       "the legacy form is not supported"},
      {R"([{"role": "assistant", "tool_calls": {"id": "c"}}])", "messages[0].tool_calls", "must be an array"},
      {R"([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}])", "messages[0].tool_calls[0]",
       "must be {\"id\""},
      {R"([{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}])",
       "messages[0].tool_calls[0].id", "must be a string"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])",
       "messages[0].tool_calls[0].function.name", "must be a string"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}])",
       "messages[0].tool_calls[0].function.arguments", "must be a string (the arguments' JSON)"},
      {R"([{"role": "tool", "tool_call_id": 7, "content": "4"}])", "messages[0].tool_call_id", "must be a string"},
      {R"([{"role": "tool", "name": ["f"], "content": "4"}])", "messages[0].name", "must be a string"},
  };
  for (const auto& c : cases) {
    StatusOr<JsonValue> v = JsonValue::Parse(c.json);
    ASSERT_TRUE(v.ok()) << c.json;
    std::string field;
    StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*v, &field);
    ASSERT_FALSE(turns.ok()) << c.json;
    EXPECT_EQ(turns.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_EQ(field, c.field) << c.json;
    const std::string message(turns.status().message());
    EXPECT_EQ(message.rfind(std::string(c.field) + ": ", 0), 0u) << message;
    EXPECT_NE(message.find(c.says), std::string::npos) << message;
  }
  // Null, as an absent "messages" member reaches it from the HTTP API.
  std::string field;
  EXPECT_FALSE(ParseChatMessages(JsonValue(), &field).ok());
  EXPECT_EQ(field, "messages");
}

// Every transformers render of chat_vectors.json without tools: the ids of
// EncodeChatPrompt with the case's add_generation_prompt and kwargs.
TEST(ChatPrompt, OptionsGiveTransformersIds) {
  const JsonValue vectors = text_test::LoadJson("chat_vectors.json");
  std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers;
  int checked = 0, with_kwargs = 0, without_generation = 0;
  for (const JsonValue& c : vectors.Find("cases")->as_array()) {
    if (c.Find("tools") != nullptr || c.Find("error") != nullptr || c.Find("ids") == nullptr) continue;
    const std::string& family = text_test::Str(c, "family");
    if (!tokenizers.count(family)) {
      tokenizers[family] = text_test::LoadTokenizer(family);
      ASSERT_NE(tokenizers[family], nullptr);
    }
    ChatPromptOptions options;
    options.add_generation_prompt = c.Find("add_generation_prompt")->as_bool();
    if (const JsonValue* kw = c.Find("kwargs")) {
      options.template_kwargs = *kw;
      ++with_kwargs;
    }
    const JsonValue& messages = *vectors.Find("conversations")->Find(text_test::Str(c, "conversation"));
    auto ids = EncodeChatPrompt(*tokenizers[family], messages, options);
    ASSERT_TRUE(ids.ok()) << family << " " << text_test::Str(c, "conversation") << ": " << ids.status().ToString();
    EXPECT_EQ(*ids, text_test::Ids(c.Find("ids"))) << family << " " << text_test::Str(c, "conversation");
    without_generation += options.add_generation_prompt ? 0 : 1;
    ++checked;
  }
  EXPECT_GE(checked, 20);
  EXPECT_GE(without_generation, 10);
  RecordProperty("with_kwargs", with_kwargs);
}

// The tool conversations of chat_vectors.json as OpenAI's clients send them
// (a call's arguments as JSON text, where transformers was given the
// object): read by ParseChatMessages and rendered with the tools, they give
// transformers' text (and, through EncodeChatPrompt, its tokens); where
// transformers raised, so do we.
TEST(ChatPrompt, ToolConversationsInOpenAiFormGiveTransformersText) {
  const JsonValue vectors = text_test::LoadJson("chat_vectors.json");
  std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers;
  int rendered = 0, raised = 0, with_calls = 0;
  for (const JsonValue& c : vectors.Find("cases")->as_array()) {
    if (c.Find("tools") == nullptr) continue;
    const std::string& family = text_test::Str(c, "family");
    const std::string& conversation = text_test::Str(c, "conversation");
    if (!tokenizers.count(family)) {
      tokenizers[family] = text_test::LoadTokenizer(family);
      ASSERT_NE(tokenizers[family], nullptr);
    }
    const JsonValue& given = *vectors.Find("tool_conversations")->Find(conversation);
    // OpenAI's wire form of the conversation.
    JsonValue wire = JsonValue::Array();
    for (const JsonValue& m : given.Find("messages")->as_array()) {
      JsonValue out = JsonValue::Object();
      for (const auto& [key, value] : m.as_object()) {
        if (key != "tool_calls") {
          out.Set(key, value);
          continue;
        }
        JsonValue calls = JsonValue::Array();
        for (const JsonValue& call : value.as_array()) {
          JsonValue fn = JsonValue::Object();
          fn.Set("name", *call.Find("function")->Find("name"));
          fn.Set("arguments", JsonValue::String(call.Find("function")->Find("arguments")->Dump()));
          JsonValue sent = call;
          sent.Set("function", std::move(fn));
          calls.Append(std::move(sent));
          ++with_calls;
        }
        out.Set("tool_calls", std::move(calls));
      }
      wire.Append(std::move(out));
    }
    StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(wire);
    ASSERT_TRUE(turns.ok()) << turns.status().ToString();
    ChatPromptOptions options;
    options.tools = *given.Find("tools");
    StatusOr<std::vector<int32_t>> ids = EncodeChatPrompt(*tokenizers[family], ChatTurnsJson(*turns), options);
    const std::string label = family + "/" + conversation;
    if (c.Find("error") != nullptr) {
      ASSERT_FALSE(ids.ok()) << label << " rendered; transformers raised " << text_test::Str(c, "error");
      EXPECT_NE(ids.status().message().find(text_test::Str(c, "error")), std::string::npos) << ids.status().ToString();
      ++raised;
      continue;
    }
    ASSERT_TRUE(ids.ok()) << label << ": " << ids.status().ToString();
    StatusOr<std::vector<int32_t>> want = tokenizers[family]->Encode(text_test::Str(c, "text"), false);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(*ids, *want) << label;
    ChatTemplateOptions render;
    render.tools = options.tools;
    StatusOr<std::string> text = RenderChat(*tokenizers[family], ChatTurnsJson(*turns), render);
    ASSERT_TRUE(text.ok()) << text.status().ToString();
    EXPECT_EQ(*text, text_test::Str(c, "text")) << label;
    // Without the tools the render differs: they reached the template.
    StatusOr<std::string> bare = RenderChat(*tokenizers[family], ChatTurnsJson(*turns), {});
    if (bare.ok()) {
      EXPECT_NE(*bare, *text) << label;
    }
    ++rendered;
  }
  EXPECT_EQ(rendered, 8);
  EXPECT_EQ(raised, 1);
  EXPECT_EQ(with_calls, 3);
}

// continue_final_message: transformers' render without the generation
// prompt, cut just after the final message's content (Llama 3.1's
// "...assistant<|end_header_id|>\n\nhi", without its <|eot_id|>); with the
// generation prompt it is refused, and so are the template's own names as
// kwargs.
TEST(ChatPrompt, ContinueFinalMessageLeavesTheLastTurnOpen) {
  const JsonValue vectors = text_test::LoadJson("chat_vectors.json");
  std::unique_ptr<Tokenizer> tok = text_test::LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  const JsonValue& messages = *vectors.Find("conversations")->Find("assistant_last");
  std::string closed;
  for (const JsonValue& c : vectors.Find("cases")->as_array()) {
    if (text_test::Str(c, "family") == "llama3" && text_test::Str(c, "conversation") == "assistant_last" &&
        !c.Find("add_generation_prompt")->as_bool() && c.Find("kwargs") == nullptr) {
      closed = text_test::Str(c, "text");
    }
  }
  const std::string tail = "assistant<|end_header_id|>\n\nhi<|eot_id|>";
  ASSERT_GE(closed.size(), tail.size());
  ASSERT_EQ(closed.substr(closed.size() - tail.size()), tail) << "transformers' render of the fixture";
  ChatPromptOptions open;
  open.add_generation_prompt = false;
  open.continue_final_message = true;
  auto ids = EncodeChatPrompt(*tok, messages, open);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, tok->Encode(closed.substr(0, closed.size() - std::string("<|eot_id|>").size()), false).value());

  ChatPromptOptions both;
  both.continue_final_message = true;
  auto refused = EncodeChatPrompt(*tok, messages, both);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("continue_final_message: not with add_generation_prompt"),
            std::string::npos);
  for (const char* name : {"messages", "add_generation_prompt", "raise_exception"}) {
    JsonValue kwargs = JsonValue::Object();
    kwargs.Set(name, JsonValue::Bool(true));
    EXPECT_EQ(CheckTemplateKwargs(kwargs).message(),
              "chat_template_kwargs." + std::string(name) + ": the template's own variable; it cannot be set here");
  }
  EXPECT_FALSE(CheckTemplateKwargs(JsonValue::Array()).ok());
  JsonValue date = JsonValue::Object();
  date.Set("date_string", JsonValue::String("1 Jan 2030"));
  ChatPromptOptions dated;
  dated.template_kwargs = date;
  auto with_date = EncodeChatPrompt(*tok, messages, dated);
  ASSERT_TRUE(with_date.ok());
  EXPECT_NE(tok->Decode(*with_date, false).value().find("Today Date: 1 Jan 2030"), std::string::npos);
}

}  // namespace
}  // namespace seer
