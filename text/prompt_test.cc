// ParseChatMessages: OpenAI's chat messages as every Seer front end reads
// them. The references are OpenAI's message forms, written out by hand.
#include "text/prompt.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/json.h"

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
  // What the template renders: role and content, both strings, nothing else.
  const JsonValue rendered = ChatTurnsJson(turns);
  EXPECT_EQ(rendered.Dump(), JsonValue::Parse(R"([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hello, world"}, {"role": "assistant", "content": ""},
      {"role": "tool", "content": "42"}, {"role": "assistant", "content": ""},
      {"role": "user", "content": ""}])")
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
      // A turn with tool calls cannot be passed on without them.
      {R"([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": null,
           "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])",
       "messages[1].tool_calls", "tool calls are not supported"},
      {R"([{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}])", "messages[0].function_call",
       "tool calls are not supported"},
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

}  // namespace
}  // namespace seer
