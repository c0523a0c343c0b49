// Tool calling as OpenAI's chat API offers it and vLLM serves it: the
// request's `tools` (functions with JSON Schema parameters) and
// `tool_choice`, and the reply's `tool_calls`.
//
//   tool_choice "none"      the reply is text (the template still shows the tools)
//   tool_choice "auto"      the model may call; its text is read in the format
//                           its chat template taught it (ToolCallFormat)
//   tool_choice "required"  the reply is guided to a JSON array of one or more
//                           {"name": <a tool>, "parameters": <its schema>}
//   {"type": "function", "function": {"name": F}}
//                           the reply is guided to F's parameters: its text is
//                           the call's arguments
//
// "required" and a named function cannot fail to call: their guide (a JSON
// Schema, ToolCallSchema) admits nothing else. "auto" reads what the model
// wrote; text that is not a well-formed call of an offered tool stays text.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "base/status.h"

namespace seer {

// OpenAI's limit on a request's tools, and ours on their JSON.
inline constexpr int kMaxTools = 128;
inline constexpr size_t kMaxToolsBytes = 256 * 1024;

// One function a request offers.
struct ToolDefinition {
  std::string name;
  // Its parameters' JSON Schema; {"type": "object"} when it gave none.
  JsonValue parameters;
};

// OpenAI's `tools`: an array of at most kMaxTools {"type": "function",
// "function": {"name", "description"?, "parameters"?, "strict"?}}, names of
// 1 to 64 letters, digits, '_' or '-', each once, parameters a JSON object.
// An error's message starts with the member at fault ("tools[1].function.name:
// ..."), which `*field` also gets.
StatusOr<std::vector<ToolDefinition>> ParseTools(const JsonValue& tools, std::string* field = nullptr);

struct ToolChoice {
  enum class Kind { kNone, kAuto, kRequired, kFunction };
  Kind kind = Kind::kNone;
  std::string name;  // kFunction's
};

// OpenAI's `tool_choice` (null or absent: "auto" with tools, "none"
// without). "required" and a function need tools, and the function one of
// them. Errors start with "tool_choice".
StatusOr<ToolChoice> ParseToolChoice(const JsonValue* choice, const std::vector<ToolDefinition>& tools);

// The JSON Schema that guides a "required" or named reply (`parallel`
// false: exactly one call); empty for "none" and "auto".
std::string ToolCallSchema(const std::vector<ToolDefinition>& tools, const ToolChoice& choice, bool parallel);

// How models write a call when left to choose ("auto"), as vLLM's parsers
// of the same names read them.
enum class ToolCallFormat {
  // Llama 3.1 to 3.3: {"name": F, "parameters": {...}} ("arguments" also
  // read), maybe after <|python_tag|>, several joined by ';'. The reply must
  // be calls alone.
  kLlama3Json,
  // Hermes, Qwen 2.5 and 3: <tool_call>{"name": F, "arguments": {...}}</tool_call>,
  // after any text; the last closing tag may be missing.
  kHermes,
  // Mistral: [TOOL_CALLS] [{"name": F, "arguments": {...}}, ...] after any
  // text ([TOOL_CALLS] is a special token: the reply keeps special tokens).
  kMistral,
};
// "llama3_json", "hermes", "mistral"; INVALID_ARGUMENT naming the three.
StatusOr<ToolCallFormat> ToolCallFormatNamed(std::string_view name);
std::string_view ToolCallFormatName(ToolCallFormat format);
// The format a chat template teaches its model, from what it writes around
// a call; nullopt when it shows none of them.
std::optional<ToolCallFormat> DetectToolCallFormat(std::string_view chat_template);

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text (an object's, unless a reply was cut short)
};

// A call's id: "call_" and 24 letters or digits, or for Mistral, whose
// template takes no other, 9 of them.
std::string NewToolCallId(std::optional<ToolCallFormat> format);

// Reads a reply as its text arrives and splits it into content and calls.
// Feed() and Finish() return what may be sent now: text that cannot become
// part of a call goes out at once, text that may is held until it is clear.
// A named function's arguments stream as they come, and so do a "required"
// reply's calls (its guide fixes their shape: each call's name once it is
// whole, then its arguments piece by piece); "auto" calls come at the end,
// whole, since only the whole text says whether they are calls. A reply
// cut short keeps the calls it began, their arguments as far as they go
// (as OpenAI's, with finish_reason "length").
class ToolCallReader {
 public:
  struct CallDelta {
    int index = 0;
    std::string id, name;  // on a call's first delta only
    std::string arguments;
  };
  struct Delta {
    std::string content;
    std::vector<CallDelta> calls;
    bool empty() const { return content.empty() && calls.empty(); }
  };

  // `format`: the model's, for "auto" (nullopt: "auto" reads no calls).
  // `parallel` false keeps the first call of an "auto" reply. `new_id`
  // names each call (NewToolCallId by default).
  ToolCallReader(ToolChoice choice, std::optional<ToolCallFormat> format, std::vector<ToolDefinition> tools,
                 bool parallel, std::function<std::string()> new_id = nullptr);

  Delta Feed(std::string_view text);
  // The reply has ended: whatever was held, as calls or as content.
  Delta Finish();

  // The whole reply so far (after Finish, all of it): the content sent and
  // the calls made.
  const std::string& content() const { return content_; }
  const std::vector<ToolCall>& calls() const { return calls_; }
  // Calls made by "auto" or "required" end the reply with finish_reason
  // "tool_calls" (a named function's reply keeps its own, as OpenAI's).
  // (A "required" reply ends with its calls only when their list is whole:
  // one cut by a stop string keeps the reason it ended with.)
  bool ends_with_calls() const {
    return !calls_.empty() && choice_.kind != ToolChoice::Kind::kFunction &&
           (choice_.kind != ToolChoice::Kind::kRequired || calls_state_ == Calls::kDone);
  }

 private:
  enum class State { kUndecided, kContent, kHolding };
  // Where a "required" reply's reading is: `[`, each `{"name": F,
  // "parameters": ` (the head), the arguments, the `}`, the `]`.
  enum class Calls { kList, kHead, kArguments, kClose, kDone, kBroken };
  void Say(std::string text, Delta* out);
  // The held text as calls, into `out`; false when it is not calls.
  bool TakeCalls(Delta* out);
  // A "required" reply's new text, read as far as it goes.
  void ReadCalls(Delta* out);

  ToolChoice choice_;
  std::optional<ToolCallFormat> format_;
  std::vector<ToolDefinition> tools_;
  bool parallel_;
  std::function<std::string()> new_id_;
  State state_;
  std::string pending_;  // received, not yet sent or read ("required": the whole reply)
  Calls calls_state_ = Calls::kList;
  size_t read_ = 0;  // "required": pending_ is read up to here
  bool list_open_ = false;
  // The arguments being read: their start, and the JSON nesting so far.
  size_t arguments_begin_ = 0;
  int depth_ = 0;
  bool in_string_ = false, escaped_ = false;
  std::string content_;
  std::vector<ToolCall> calls_;
};

// A reply read whole: what ToolCallReader's Feed(text) then Finish() make.
// Ids are left empty.
struct ParsedToolCalls {
  std::string content;
  std::vector<ToolCall> calls;
};
ParsedToolCalls ReadToolCalls(std::string_view text, const ToolChoice& choice, std::optional<ToolCallFormat> format,
                              const std::vector<ToolDefinition>& tools, bool parallel);

}  // namespace seer
