// Tool calling (text/tool_calls.h): the request's tools and tool_choice
// checked; the guide of "required" and named calls against the grammar
// matcher (its sentences are calls the reader takes, other texts are not
// sentences); the three formats' readers against calls written by hand; and
// the streaming reader against the whole-text one over every way of cutting
// a reply in two and random cuttings into many pieces.
#include "text/tool_calls.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

#include "text/grammar_test_util.h"
#include "text/guide.h"
#include "text/text_test_util.h"
#include "text/tokenizer.h"

namespace seer {
namespace {

JsonValue Json(std::string_view text) {
  StatusOr<JsonValue> v = JsonValue::Parse(text);
  EXPECT_TRUE(v.ok()) << v.status().ToString() << " in " << text;
  return v.ok() ? *v : JsonValue();
}

constexpr std::string_view kWeatherTools = R"([
  {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
   "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                  "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"],
                  "additionalProperties": false}}},
  {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
   "properties": {"zone": {"$ref": "#/$defs/zone"}}, "required": ["zone"], "additionalProperties": false,
   "$defs": {"zone": {"enum": ["UTC", "CET"]}}}}},
  {"type": "function", "function": {"name": "ping"}}
])";

std::vector<ToolDefinition> WeatherTools() {
  StatusOr<std::vector<ToolDefinition>> tools = ParseTools(Json(kWeatherTools));
  EXPECT_TRUE(tools.ok()) << tools.status().ToString();
  return tools.ok() ? *tools : std::vector<ToolDefinition>{};
}

ToolChoice Choice(ToolChoice::Kind kind, std::string name = "") { return ToolChoice{kind, std::move(name)}; }

TEST(ToolCalls, ToolsAreReadAndRefusalsNameTheMember) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  ASSERT_EQ(tools.size(), 3u);
  EXPECT_EQ(tools[0].name, "get_weather");
  EXPECT_EQ(tools[0].parameters.Find("required")->Dump(), R"(["city"])");
  EXPECT_EQ(tools[2].parameters.Dump(), R"({"type":"object"})") << "a tool without parameters takes an object";

  const struct {
    std::string json;
    const char* field;
    const char* says;
  } cases[] = {
      {R"({"type": "function"})", "tools", "must be an array"},
      {R"([5])", "tools[0]", "must be an object"},
      {R"([{"function": {"name": "f"}}])", "tools[0].type", "must be \"function\""},
      {R"([{"type": "retrieval", "function": {"name": "f"}}])", "tools[0].type", "got \"retrieval\""},
      {R"([{"type": "function"}])", "tools[0].function", "must be an object"},
      {R"([{"type": "function", "function": {"name": "a b"}}])", "tools[0].function.name", "letters, digits"},
      {R"([{"type": "function", "function": {"name": ""}}])", "tools[0].function.name", "1 to 64"},
      {R"([{"type": "function", "function": {"name": ")" + std::string(65, 'x') + R"("}}])", "tools[0].function.name",
       "1 to 64"},
      {R"([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}])",
       "tools[1].function.name", "also tools[0]'s name"},
      {R"([{"type": "function", "function": {"name": "f", "parameters": "object"}}])", "tools[0].function.parameters",
       "JSON Schema object"},
      {R"([{"type": "function", "function": {"name": "f", "description": 3}}])", "tools[0].function.description",
       "must be a string"},
      {R"([{"type": "function", "function": {"name": "f", "strict": "yes"}}])", "tools[0].function.strict",
       "true or false"},
  };
  for (const auto& c : cases) {
    std::string field;
    StatusOr<std::vector<ToolDefinition>> got = ParseTools(Json(c.json), &field);
    ASSERT_FALSE(got.ok()) << c.json;
    EXPECT_EQ(field, c.field) << c.json;
    EXPECT_EQ(got.status().message().rfind(std::string(c.field) + ": ", 0), 0u) << got.status().message();
    EXPECT_NE(got.status().message().find(c.says), std::string::npos) << got.status().message();
  }
  JsonValue many = JsonValue::Array();
  for (int i = 0; i <= kMaxTools; ++i) {
    many.Append(Json(R"({"type": "function", "function": {"name": "f)" + std::to_string(i) + R"("}})"));
  }
  StatusOr<std::vector<ToolDefinition>> too_many = ParseTools(many);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("129 tools exceed the limit of 128"), std::string::npos);
}

TEST(ToolCalls, ToolChoiceForms) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  auto kind = [&](const char* json, const std::vector<ToolDefinition>& t) {
    const JsonValue v = json == nullptr ? JsonValue() : Json(json);
    StatusOr<ToolChoice> c = ParseToolChoice(json == nullptr ? nullptr : &v, t);
    EXPECT_TRUE(c.ok()) << (json ? json : "absent") << ": " << c.status().ToString();
    return c.ok() ? c->kind : ToolChoice::Kind::kNone;
  };
  EXPECT_EQ(kind(nullptr, tools), ToolChoice::Kind::kAuto);
  EXPECT_EQ(kind(nullptr, {}), ToolChoice::Kind::kNone);
  EXPECT_EQ(kind("null", tools), ToolChoice::Kind::kAuto);
  EXPECT_EQ(kind(R"("auto")", tools), ToolChoice::Kind::kAuto);
  EXPECT_EQ(kind(R"("auto")", {}), ToolChoice::Kind::kNone) << "nothing to call";
  EXPECT_EQ(kind(R"("none")", tools), ToolChoice::Kind::kNone);
  EXPECT_EQ(kind(R"("required")", tools), ToolChoice::Kind::kRequired);
  const JsonValue named = Json(R"({"type": "function", "function": {"name": "get_time"}})");
  StatusOr<ToolChoice> c = ParseToolChoice(&named, tools);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->kind, ToolChoice::Kind::kFunction);
  EXPECT_EQ(c->name, "get_time");

  const struct {
    const char* json;
    std::vector<ToolDefinition> tools;
    const char* says;
  } refused[] = {
      {R"("required")", {}, "tool_choice: \"required\" needs tools"},
      {R"("always")", tools, "tool_choice: must be \"none\", \"auto\", \"required\""},
      {R"(3)", tools, "tool_choice: must be"},
      {R"({"type": "function", "function": {"name": "get_date"}})", tools,
       "tool_choice.function.name: \"get_date\" is not one of the request's tools"},
      {R"({"type": "function", "function": {"name": "ping"}})", {}, "tool_choice.function.name"},
      {R"({"type": "function", "name": "ping"})", tools, "tool_choice: must be"},
  };
  for (const auto& r : refused) {
    const JsonValue v = Json(r.json);
    StatusOr<ToolChoice> got = ParseToolChoice(&v, r.tools);
    ASSERT_FALSE(got.ok()) << r.json;
    EXPECT_EQ(got.status().message().rfind(r.says, 0), 0u) << got.status().message();
  }
}

// The guide of "required" (and of one named function): every random
// sentence of its grammar is read back as calls of offered tools whose
// arguments are what the sentence says; texts that call another function,
// leave out a required argument or call nothing are not sentences.
TEST(ToolCalls, RequiredAndNamedGuidesAdmitOnlyCalls) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  for (bool parallel : {true, false}) {
    SCOPED_TRACE(parallel ? "parallel" : "one call");
    const std::string schema = ToolCallSchema(tools, Choice(ToolChoice::Kind::kRequired), parallel);
    StatusOr<std::shared_ptr<const Grammar>> grammar =
        CompileGuide(GuideSpec{GuideSpec::Kind::kJsonSchema, schema, {}});
    ASSERT_TRUE(grammar.ok()) << grammar.status().ToString() << "\n" << schema;
    std::mt19937 rng(7);
    std::set<std::string> names;
    size_t most_calls = 0;
    int read = 0;
    for (int i = 0; i < 300; ++i) {
      std::optional<std::string> text = grammar_test::RandomSentence(**grammar, rng, 4000);
      if (!text) continue;
      ++read;
      const ParsedToolCalls got =
          ReadToolCalls(*text, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, parallel);
      ASSERT_FALSE(got.calls.empty()) << *text;
      EXPECT_EQ(got.content, "") << *text;
      const JsonValue sentence = Json(*text);
      ASSERT_EQ(sentence.as_array().size(), got.calls.size()) << *text;
      for (size_t k = 0; k < got.calls.size(); ++k) {
        names.insert(got.calls[k].name);
        EXPECT_EQ(got.calls[k].name, sentence.as_array()[k].Find("name")->as_string());
        EXPECT_EQ(Json(got.calls[k].arguments).Dump(), sentence.as_array()[k].Find("parameters")->Dump());
        EXPECT_NE(text->find(got.calls[k].arguments), std::string::npos) << "the arguments are the text's own";
        const JsonValue args = Json(got.calls[k].arguments);
        if (got.calls[k].name == "get_time") {
          const std::string zone = args.Find("zone")->as_string();
          EXPECT_TRUE(zone == "UTC" || zone == "CET") << "the moved $ref still reaches its $defs: " << *text;
        }
        if (got.calls[k].name == "get_weather") {
          EXPECT_NE(args.Find("city"), nullptr) << *text;
        }
      }
      most_calls = std::max(most_calls, got.calls.size());
      // Streamed in random pieces: the same calls, each begun before the end.
      ToolCallReader reader(Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, parallel);
      size_t begun = 0;
      std::string args;
      for (size_t at = 0; at < text->size();) {
        const size_t n = std::uniform_int_distribution<size_t>(1, 9)(rng);
        for (const ToolCallReader::CallDelta& c : reader.Feed(text->substr(at, n)).calls) {
          begun += c.id.empty() ? 0 : 1;
          args += c.arguments;
        }
        at += n;
      }
      EXPECT_EQ(begun, got.calls.size()) << *text;
      EXPECT_TRUE(reader.Finish().empty()) << *text;
      std::string whole_args;
      for (const ToolCall& c : got.calls) whole_args += c.arguments;
      EXPECT_EQ(args, whole_args) << *text;
    }
    EXPECT_GE(read, 150);
    EXPECT_EQ(names, (std::set<std::string>{"get_weather", "get_time", "ping"}));
    if (parallel) {
      EXPECT_GT(most_calls, 1u);
    } else {
      EXPECT_EQ(most_calls, 1u);
    }
    for (const char* not_calls : {
             R"([])",
             R"([{"name": "get_date", "parameters": {}}])",
             R"([{"name": "get_weather", "parameters": {"unit": "celsius"}}])",
             R"([{"name": "get_time", "parameters": {"zone": "PST"}}])",
             R"({"name": "ping", "parameters": {}})",
             R"([{"parameters": {}, "name": "ping"}])",
             R"(Sure! [{"name": "ping", "parameters": {}}])",
         }) {
      EXPECT_FALSE(GrammarMatches(**grammar, not_calls)) << not_calls;
    }
    EXPECT_TRUE(GrammarMatches(**grammar, R"([{"name": "ping", "parameters": {}}])"));
    EXPECT_EQ(GrammarMatches(**grammar, R"([{"name": "ping", "parameters": {}}, {"name": "ping", "parameters": {}}])"),
              parallel);
  }
  // A named function: its parameters' schema, as given.
  EXPECT_EQ(ToolCallSchema(tools, Choice(ToolChoice::Kind::kFunction, "get_time"), true), tools[1].parameters.Dump());
  EXPECT_EQ(ToolCallSchema(tools, Choice(ToolChoice::Kind::kAuto), true), "");
  EXPECT_EQ(ToolCallSchema(tools, Choice(ToolChoice::Kind::kNone), true), "");
}

struct ReadCase {
  std::optional<ToolCallFormat> format;
  std::string text;
  std::string content;  // what the reply says
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
};

std::vector<ReadCase> ReadCases() {
  using F = ToolCallFormat;
  const std::pair<std::string, std::string> paris = {"get_weather", R"({"city": "Paris"})"};
  const std::pair<std::string, std::string> utc = {"get_time", R"({"zone": "UTC"})"};
  return {
      // Llama 3: the reply is calls alone.
      {F::kLlama3Json, R"({"name": "get_weather", "parameters": {"city": "Paris"}})", "", {paris}},
      {F::kLlama3Json,
       "  \n<|python_tag|>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
       "",
       {paris}},
      {F::kLlama3Json,
       R"({"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time",
        "parameters": "{\"zone\": \"UTC\"}"})",
       "",
       {paris, utc}},
      {F::kLlama3Json, R"({"name": "ping"})", "", {{"ping", "{}"}}},
      {F::kLlama3Json,
       R"(The weather: {"name": "get_weather", "parameters": {}})",
       R"(The weather: {"name": "get_weather", "parameters": {}})",
       {}},
      {F::kLlama3Json, R"({"name": "get_date", "parameters": {}})", R"({"name": "get_date", "parameters": {}})", {}},
      {F::kLlama3Json,
       R"({"name": "get_weather", "parameters": {"city": "Par)",
       R"({"name": "get_weather", "parameters": {"city": "Par)",
       {}},
      {F::kLlama3Json,
       R"({"name": "ping", "parameters": {}} and more)",
       R"({"name": "ping", "parameters": {}} and more)",
       {}},
      {F::kLlama3Json, R"({"name": "ping", "parameters": [1]})", R"({"name": "ping", "parameters": [1]})", {}},
      {F::kLlama3Json, "<|python_ta", "<|python_ta", {}},
      {F::kLlama3Json, "Hello {there}", "Hello {there}", {}},
      {F::kLlama3Json, "", "", {}},
      // Hermes: calls after any text, in tags.
      {F::kHermes,
       "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
       "",
       {paris}},
      {F::kHermes,
       "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
       "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}",
       "Let me check.\n",
       {paris, utc}},
      {F::kHermes, "<tool_call>{\"name\": \"ping\", \"arguments\": {}}</tool_call> Done.", " Done.", {{"ping", "{}"}}},
      {F::kHermes, "I use <tool_ and <tool_call> too", "I use <tool_ and <tool_call> too", {}},
      {F::kHermes,
       "<tool_call>{\"name\": \"get_date\", \"arguments\": {}}</tool_call>",
       "<tool_call>{\"name\": \"get_date\", \"arguments\": {}}</tool_call>",
       {}},
      {F::kHermes, "No call at all. {\"name\": \"ping\"}", "No call at all. {\"name\": \"ping\"}", {}},
      {F::kHermes, "ends in <tool", "ends in <tool", {}},
      // Mistral: [TOOL_CALLS] and an array.
      {F::kMistral,
       R"([TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time",
        "arguments": {"zone": "UTC"}}])",
       "",
       {paris, utc}},
      {F::kMistral, R"(Sure. [TOOL_CALLS][{"name": "ping", "arguments": {}}])", "Sure. ", {{"ping", "{}"}}},
      {F::kMistral, R"([TOOL_CALLS] {"name": "ping", "arguments": {}})", "", {{"ping", "{}"}}},
      {F::kMistral, R"([TOOL_CALLS] [])", "[TOOL_CALLS] []", {}},
      {F::kMistral,
       R"([TOOL_CALLS] [{"name": "ping", "arguments": 3}])",
       R"([TOOL_CALLS] [{"name": "ping", "arguments": 3}])",
       {}},
      {F::kMistral, "[TOOL_", "[TOOL_", {}},
      // No format: "auto" reads no calls.
      {std::nullopt, R"({"name": "ping", "parameters": {}})", R"({"name": "ping", "parameters": {}})", {}},
  };
}

void ExpectCalls(const std::vector<ToolCall>& got, const std::vector<std::pair<std::string, std::string>>& want,
                 const std::string& label) {
  ASSERT_EQ(got.size(), want.size()) << label;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].name, want[i].first) << label;
    EXPECT_EQ(got[i].arguments, want[i].second) << label;
  }
}

TEST(ToolCalls, EachFormatIsReadAsItsModelWritesIt) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  for (const ReadCase& c : ReadCases()) {
    const std::string label = std::string(c.format ? ToolCallFormatName(*c.format) : "no format") + ": " + c.text;
    const ParsedToolCalls got = ReadToolCalls(c.text, Choice(ToolChoice::Kind::kAuto), c.format, tools, true);
    EXPECT_EQ(got.content, c.content) << label;
    ExpectCalls(got.calls, c.calls, label);
    // parallel_tool_calls false keeps the first.
    const ParsedToolCalls one = ReadToolCalls(c.text, Choice(ToolChoice::Kind::kAuto), c.format, tools, false);
    ASSERT_EQ(one.calls.size(), std::min<size_t>(c.calls.size(), 1)) << label;
  }
}

// What a stream sends: the content and calls of each delta, joined.
struct Streamed {
  std::string content;
  std::vector<ToolCall> calls;
  std::string content_before_end;  // sent before Finish
  int first_parts = 0;  // call deltas that carried an id and a name
};

void Take(const ToolCallReader::Delta& d, Streamed* s) {
  s->content += d.content;
  for (const ToolCallReader::CallDelta& c : d.calls) {
    if (!c.id.empty()) {
      ASSERT_EQ(c.index, static_cast<int>(s->calls.size()));
      ASSERT_FALSE(c.name.empty());
      s->calls.push_back(ToolCall{c.id, c.name, ""});
      ++s->first_parts;
    }
    ASSERT_LT(c.index, static_cast<int>(s->calls.size()));
    s->calls[c.index].arguments += c.arguments;
  }
}

Streamed Stream(const std::vector<std::string>& pieces, const ToolChoice& choice, std::optional<ToolCallFormat> f,
                const std::vector<ToolDefinition>& tools) {
  int ids = 0;
  ToolCallReader reader(choice, f, tools, true, [&] { return "id" + std::to_string(ids++); });
  Streamed s;
  for (const std::string& p : pieces) Take(reader.Feed(p), &s);
  s.content_before_end = s.content;
  Take(reader.Finish(), &s);
  EXPECT_EQ(s.content, reader.content());
  EXPECT_EQ(s.calls.size(), reader.calls().size());
  return s;
}

// However the reply is cut, the stream says what the whole reply says,
// sends no text before the end that the end turns into a call, and gives
// each call one first part.
TEST(ToolCalls, AStreamSaysWhatTheWholeReplySays) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  std::mt19937 rng(11);
  int streams = 0;
  for (const ReadCase& c : ReadCases()) {
    const std::string label = std::string(c.format ? ToolCallFormatName(*c.format) : "none") + ": " + c.text;
    auto check = [&](const std::vector<std::string>& pieces) {
      const Streamed s = Stream(pieces, Choice(ToolChoice::Kind::kAuto), c.format, tools);
      EXPECT_EQ(s.content, c.content) << label;
      ExpectCalls(s.calls, c.calls, label);
      EXPECT_EQ(s.first_parts, static_cast<int>(c.calls.size())) << label;
      EXPECT_EQ(c.content.rfind(s.content_before_end, 0), 0u) << label;
      ++streams;
    };
    for (size_t cut = 0; cut <= c.text.size(); ++cut) check({c.text.substr(0, cut), c.text.substr(cut)});
    for (int r = 0; r < 20; ++r) {
      std::vector<std::string> pieces;
      for (size_t at = 0; at < c.text.size();) {
        const size_t n = std::uniform_int_distribution<size_t>(0, 5)(rng);
        pieces.push_back(c.text.substr(at, n));
        at += n;
      }
      check(pieces);
    }
  }
  EXPECT_GT(streams, 1000);
  // Plain text before a Hermes call streams before the call is done.
  int ids = 0;
  ToolCallReader reader(Choice(ToolChoice::Kind::kAuto), ToolCallFormat::kHermes, tools, true,
                        [&] { return "id" + std::to_string(ids++); });
  EXPECT_EQ(reader.Feed("Let me ").content, "Let me ");
  EXPECT_EQ(reader.Feed("check <to").content, "check ");
  EXPECT_EQ(reader.Feed("ol_call>{\"name\": \"ping\"}").content, "");
  const ToolCallReader::Delta end = reader.Finish();
  ASSERT_EQ(end.calls.size(), 1u);
  EXPECT_EQ(end.calls[0].name, "ping");
  EXPECT_TRUE(reader.ends_with_calls());
  // Llama 3 text streams once its first visible character is not a call's.
  ToolCallReader llama(Choice(ToolChoice::Kind::kAuto), ToolCallFormat::kLlama3Json, tools, true);
  EXPECT_EQ(llama.Feed(" \n").content, "");
  EXPECT_EQ(llama.Feed(" Hi").content, " \n Hi");
  EXPECT_EQ(llama.Feed(" {").content, " {");
  EXPECT_FALSE(llama.ends_with_calls());
}

TEST(ToolCalls, RequiredAndNamedReplies) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  const std::string calls = R"([{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "ping",
    "parameters": {}}])";
  for (size_t cut = 0; cut <= calls.size(); ++cut) {
    const Streamed s =
        Stream({calls.substr(0, cut), calls.substr(cut)}, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools);
    EXPECT_EQ(s.content, "");
    ExpectCalls(s.calls, {{"get_weather", R"({"city": "Paris"})"}, {"ping", "{}"}}, calls);
    EXPECT_EQ(s.calls[0].id, "id0");
    EXPECT_EQ(s.calls[1].id, "id1");
  }
  // Cut short by max_tokens before a call began: the text. Inside a call:
  // the calls begun, the last one's arguments as far as they go.
  const Streamed cut_short =
      Stream({R"([{"name": "ping", "param)"}, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools);
  EXPECT_EQ(cut_short.content, R"([{"name": "ping", "param)");
  EXPECT_TRUE(cut_short.calls.empty());
  const std::string cut = R"([{"name": "ping", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Pa)";
  for (size_t at = 0; at <= cut.size(); ++at) {
    const Streamed s =
        Stream({cut.substr(0, at), cut.substr(at)}, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools);
    EXPECT_EQ(s.content, "");
    ExpectCalls(s.calls, {{"ping", "{}"}, {"get_weather", R"({"city": "Pa)"}}, cut);
  }
  // Cut by a stop string inside a call, the reply keeps its calls but does
  // not end for them; a scalar's arguments are kept whole at the end.
  ToolCallReader stopped(Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, true);
  stopped.Feed(R"([{"name": "ping", "parameters": {"a": "x)");
  stopped.Finish();
  ASSERT_EQ(stopped.calls().size(), 1u);
  EXPECT_FALSE(stopped.ends_with_calls());
  ToolCallReader whole(Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, true);
  whole.Feed(R"([{"name": "ping", "parameters": {}}])");
  whole.Finish();
  EXPECT_TRUE(whole.ends_with_calls());
  const std::pair<std::string, std::string> scalars[] = {{R"([{"name": "ping", "parameters": 12)", "12"},
                                                         {R"([{"name": "ping", "parameters": 12 )", "12"},
                                                         {R"([{"name": "ping", "parameters": "ab)", R"("ab)"}};
  for (const auto& [text, arguments] : scalars) {
    const ParsedToolCalls got = ReadToolCalls(text, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, true);
    ASSERT_EQ(got.calls.size(), 1u) << text;
    EXPECT_EQ(got.calls[0].arguments, arguments) << text;
  }
  // Without parallel calls (the guide allows one), text past the first is
  // content, not a second call.
  const std::string two = R"([{"name": "ping", "parameters": {}}, {"name": "ping", "parameters": {}}])";
  const ParsedToolCalls first = ReadToolCalls(two, Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, false);
  ExpectCalls(first.calls, {{"ping", "{}"}}, two);
  EXPECT_EQ(first.content, R"( {"name": "ping", "parameters": {}}])");
  // A call streams: its name once whole, then its arguments as they come.
  ToolCallReader reader(Choice(ToolChoice::Kind::kRequired), std::nullopt, tools, true, [] { return "x"; });
  EXPECT_TRUE(reader.Feed(R"([ {"name": "get_wea)").empty());
  EXPECT_TRUE(reader.Feed(R"(ther", "parameters":)").empty()) << "the arguments' kind is not known yet";
  ToolCallReader::Delta d = reader.Feed(R"( {"ci)");
  ASSERT_EQ(d.calls.size(), 2u);
  EXPECT_EQ(d.calls[0].name, "get_weather");
  EXPECT_EQ(d.calls[0].arguments, "");
  EXPECT_EQ(d.calls[1].arguments, R"({"ci)");
  d = reader.Feed(R"(ty": "}]{\"x"} } ])");
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].arguments, R"(ty": "}]{\"x"})") << "brackets and quotes inside strings end nothing";
  EXPECT_TRUE(reader.Finish().empty());
  EXPECT_EQ(reader.calls()[0].arguments, R"({"city": "}]{\"x"})");
  // A named function: the text is its arguments, streamed as they come.
  const std::string args = R"({"zone": "CET"})";
  for (size_t cut = 0; cut <= args.size(); ++cut) {
    int ids = 0;
    ToolCallReader reader(Choice(ToolChoice::Kind::kFunction, "get_time"), std::nullopt, tools, true,
                          [&] { return "id" + std::to_string(ids++); });
    Streamed s;
    Take(reader.Feed(args.substr(0, cut)), &s);
    ASSERT_EQ(s.calls.size(), 1u) << "the first delta names the call";
    EXPECT_EQ(s.calls[0].arguments, args.substr(0, cut));
    Take(reader.Feed(args.substr(cut)), &s);
    Take(reader.Finish(), &s);
    ExpectCalls(s.calls, {{"get_time", args}}, args);
    EXPECT_EQ(s.first_parts, 1);
    EXPECT_EQ(s.content, "");
    EXPECT_FALSE(reader.ends_with_calls()) << "a named call ends as the reply did";
  }
  // An empty named reply is still the call.
  ToolCallReader empty(Choice(ToolChoice::Kind::kFunction, "ping"), std::nullopt, tools, true);
  const ToolCallReader::Delta end = empty.Finish();
  ASSERT_EQ(end.calls.size(), 1u);
  EXPECT_EQ(end.calls[0].name, "ping");
  EXPECT_EQ(empty.calls().size(), 1u);
  // "none": all text.
  const ParsedToolCalls none =
      ReadToolCalls(calls, Choice(ToolChoice::Kind::kNone), ToolCallFormat::kHermes, tools, true);
  EXPECT_EQ(none.content, calls);
  EXPECT_TRUE(none.calls.empty());
}

// The arguments are the model's own text: numbers no double holds, a
// fraction's zero and escapes a strict parser refuses stay as written; text
// that is not JSON is not a call. The guides' schemas leave annotations out
// only where a schema has them, and move only the $refs of schemas.
TEST(ToolCalls, ArgumentsAreTheModelsOwnTextAndSchemasKeepTheirValues) {
  const std::vector<ToolDefinition> tools = WeatherTools();
  const std::string args = R"({"city": "P\ud800", "n": 12345678901234567890, "x": 1.0, "y": -2.5e400})";
  const struct {
    std::optional<ToolCallFormat> format;
    ToolChoice::Kind kind;
    std::string text;
  } replies[] = {
      {ToolCallFormat::kLlama3Json, ToolChoice::Kind::kAuto, R"({"name": "get_weather", "parameters": )" + args + "}"},
      {ToolCallFormat::kHermes, ToolChoice::Kind::kAuto,
       R"(<tool_call>{"name": "get_weather", "arguments": )" + args + "}</tool_call>"},
      {ToolCallFormat::kMistral, ToolChoice::Kind::kAuto,
       R"([TOOL_CALLS] [{"name": "get_weather", "arguments": )" + args + "}]"},
      {std::nullopt, ToolChoice::Kind::kRequired, R"([{"name": "get_weather", "parameters": )" + args + "}]"},
  };
  for (const auto& r : replies) {
    const ParsedToolCalls got = ReadToolCalls(r.text, Choice(r.kind), r.format, tools, true);
    ExpectCalls(got.calls, {{"get_weather", args}}, r.text);
  }
  for (const char* broken : {
           R"({"name": "get_weather", "parameters": {"city": Paris}})",
           R"({"name": "get_weather", "parameters": {"city": "Paris",}})",
           R"({"name": "get_weather", "parameters": {"city": "Pa\qris"}})",
           R"({"name": "get_weather", "parameters": {"n": 01}})",
           R"({"name": "get_weather", "parameters": "{\"city\": }"})",
           R"({"name": "get_weather" "parameters": {}})",
       }) {
    const ParsedToolCalls got =
        ReadToolCalls(broken, Choice(ToolChoice::Kind::kAuto), ToolCallFormat::kLlama3Json, tools, true);
    EXPECT_TRUE(got.calls.empty()) << broken;
    EXPECT_EQ(got.content, broken);
  }

  const StatusOr<std::vector<ToolDefinition>> described = ParseTools(Json(R"([{"type": "function", "function": {
      "name": "note", "description": "Writes a note.", "parameters": {"type": "object", "title": "Note",
      "description": "A note.", "$comment": "x", "properties": {
        "description": {"type": "string", "description": "The note's text.", "examples": ["hi"], "default": "a"},
        "kind": {"const": {"$ref": "#/x", "description": "kept"}},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
      "required": ["description", "kind"], "additionalProperties": false,
      "$defs": {"tag": {"type": "string", "title": "Tag", "maxLength": 5}}}}}])"));
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  const JsonValue named = Json(ToolCallSchema(*described, Choice(ToolChoice::Kind::kFunction, "note"), true));
  EXPECT_EQ(named.Dump(), Json(R"({"type": "object", "properties": {
        "description": {"type": "string"},
        "kind": {"const": {"$ref": "#/x", "description": "kept"}},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}}},
      "required": ["description", "kind"], "additionalProperties": false,
      "$defs": {"tag": {"type": "string", "maxLength": 5}}})")
                              .Dump());
  const JsonValue required = Json(ToolCallSchema(*described, Choice(ToolChoice::Kind::kRequired), true));
  const JsonValue& parameters =
      *required.Find("items")->Find("anyOf")->as_array()[0].Find("properties")->Find("parameters");
  EXPECT_EQ(parameters.Find("properties")->Find("tags")->Find("items")->Find("$ref")->as_string(),
            "#/items/anyOf/0/properties/parameters/$defs/tag");
  EXPECT_EQ(parameters.Find("properties")->Find("kind")->Dump(), R"({"const":{"$ref":"#/x","description":"kept"}})");
  StatusOr<std::shared_ptr<const Grammar>> grammar =
      CompileGuide(GuideSpec{GuideSpec::Kind::kJsonSchema, required.Dump(), {}});
  ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
  EXPECT_TRUE(GrammarMatches(
      **grammar,
      R"([{"name": "note", "parameters": {"description": "x", "kind": {"$ref":"#/x","description":"kept"}, "tags": ["ab"]}}])"));
  EXPECT_FALSE(GrammarMatches(
      **grammar,
      R"([{"name": "note", "parameters": {"description": "x", "kind": {"$ref":"#/x","description":"kept"}, "tags": ["abcdef"]}}])"));
}

// The real templates' formats (the checkpoints' own chat templates, as in
// chat_vectors.json).
TEST(ToolCalls, FormatsAreFoundInRealTemplates) {
  const std::pair<const char*, std::optional<ToolCallFormat>> families[] = {
      {"llama3", ToolCallFormat::kLlama3Json},
      {"qwen2", ToolCallFormat::kHermes},
      {"mistral", ToolCallFormat::kMistral},
  };
  for (const auto& [family, format] : families) {
    std::unique_ptr<Tokenizer> tok = text_test::LoadTokenizer(family);
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(DetectToolCallFormat(tok->config().chat_template), format) << family;
  }
  EXPECT_EQ(DetectToolCallFormat("{% for m in messages %}{{ m.content }}{% endfor %}"), std::nullopt);
  for (ToolCallFormat f : {ToolCallFormat::kLlama3Json, ToolCallFormat::kHermes, ToolCallFormat::kMistral}) {
    StatusOr<ToolCallFormat> back = ToolCallFormatNamed(ToolCallFormatName(f));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, f);
  }
  StatusOr<ToolCallFormat> bad = ToolCallFormatNamed("pythonic");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("llama3_json, hermes or mistral"), std::string::npos);
  // Ids: OpenAI's shape, and Mistral's nine characters.
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    const std::string id = NewToolCallId(std::nullopt);
    ASSERT_EQ(id.size(), 29u);
    EXPECT_EQ(id.rfind("call_", 0), 0u);
    ids.insert(id);
    const std::string m = NewToolCallId(ToolCallFormat::kMistral);
    ASSERT_EQ(m.size(), 9u);
    EXPECT_TRUE(std::all_of(m.begin(), m.end(), [](unsigned char ch) { return std::isalnum(ch) != 0; })) << m;
  }
  EXPECT_EQ(ids.size(), 100u);
}

}  // namespace
}  // namespace seer
