#include "text/tool_calls.h"

#include <algorithm>
#include <random>

namespace seer {

namespace {

constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kMistralTag = "[TOOL_CALLS]";
constexpr std::string_view kSpace = " \t\n\r";

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

const ToolDefinition* FindTool(const std::vector<ToolDefinition>& tools, std::string_view name) {
  for (const ToolDefinition& t : tools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Every local "$ref" of `schema` ("#", "#/...") made to point into the
// schema at `at` of a larger one.
void MoveRefs(JsonValue* schema, const std::string& at) {
  if (schema->is_array()) {
    JsonValue moved = JsonValue::Array();
    for (const JsonValue& v : schema->as_array()) {
      JsonValue copy = v;
      MoveRefs(&copy, at);
      moved.Append(std::move(copy));
    }
    *schema = std::move(moved);
    return;
  }
  if (!schema->is_object()) return;
  JsonValue moved = JsonValue::Object();
  for (const auto& [key, value] : schema->as_object()) {
    JsonValue copy = value;
    if (key == "$ref" && copy.is_string() && !copy.as_string().empty() && copy.as_string()[0] == '#') {
      copy = JsonValue::String(at + copy.as_string().substr(1));
    } else {
      MoveRefs(&copy, at);
    }
    moved.Set(key, std::move(copy));
  }
  *schema = std::move(moved);
}

// The end of the JSON object or array that starts at text[begin] (one past
// its closing bracket), or npos when the text ends first.
size_t JsonEnd(std::string_view text, size_t begin) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = begin; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string_view::npos;
}

size_t SkipSpace(std::string_view text, size_t at) {
  while (at < text.size() && kSpace.find(text[at]) != std::string_view::npos) ++at;
  return at;
}

// One call as a model writes it: {"name": F, "<args_key>": {...}} with F
// an offered tool. Arguments given as a string holding an object are read
// too; absent ones are {}.
std::optional<ToolCall> CallFrom(const JsonValue& v, const std::vector<ToolDefinition>& tools,
                                 std::initializer_list<std::string_view> args_keys) {
  if (!v.is_object()) return std::nullopt;
  const JsonValue* name = v.Find("name");
  if (name == nullptr || !name->is_string() || FindTool(tools, name->as_string()) == nullptr) return std::nullopt;
  const JsonValue* args = nullptr;
  for (std::string_view key : args_keys) {
    if (args == nullptr) args = v.Find(key);
  }
  ToolCall call;
  call.name = name->as_string();
  if (args == nullptr) {
    call.arguments = "{}";
  } else if (args->is_object()) {
    call.arguments = args->Dump();
  } else if (args->is_string()) {
    StatusOr<JsonValue> inner = JsonValue::Parse(args->as_string());
    if (!inner.ok() || !inner->is_object()) return std::nullopt;
    call.arguments = inner->Dump();
  } else {
    return std::nullopt;
  }
  return call;
}

// The calls of a held reply, and the text around them that is content; nullopt
// when the reply is not calls.
struct Read {
  std::string content;
  std::vector<ToolCall> calls;
};

std::optional<Read> ReadRequired(std::string_view text, const std::vector<ToolDefinition>& tools) {
  StatusOr<JsonValue> v = JsonValue::Parse(text);
  if (!v.ok() || !v->is_array() || v->as_array().empty()) return std::nullopt;
  Read out;
  for (const JsonValue& item : v->as_array()) {
    std::optional<ToolCall> call = CallFrom(item, tools, {"parameters"});
    if (!call) return std::nullopt;
    out.calls.push_back(std::move(*call));
  }
  return out;
}

// {...}; {...} after an optional <|python_tag|>, nothing else.
std::optional<Read> ReadLlama3(std::string_view text, const std::vector<ToolDefinition>& tools) {
  size_t at = SkipSpace(text, 0);
  if (text.substr(at, kPythonTag.size()) == kPythonTag) at += kPythonTag.size();
  Read out;
  for (;;) {
    at = SkipSpace(text, at);
    if (at >= text.size() || text[at] != '{') return std::nullopt;
    const size_t end = JsonEnd(text, at);
    if (end == std::string_view::npos) return std::nullopt;
    StatusOr<JsonValue> v = JsonValue::Parse(text.substr(at, end - at));
    if (!v.ok()) return std::nullopt;
    std::optional<ToolCall> call = CallFrom(*v, tools, {"parameters", "arguments"});
    if (!call) return std::nullopt;
    out.calls.push_back(std::move(*call));
    at = SkipSpace(text, end);
    if (at == text.size()) return out;
    if (text[at] != ';') return std::nullopt;
    ++at;
  }
}

// <tool_call>{...}</tool_call> ..., the text between and after calls content.
std::optional<Read> ReadHermes(std::string_view text, const std::vector<ToolDefinition>& tools) {
  Read out;
  size_t at = 0;
  for (;;) {
    const size_t open = text.find(kHermesOpen, at);
    if (open == std::string_view::npos) {
      out.content += text.substr(at);
      break;
    }
    out.content += text.substr(at, open - at);
    const size_t body = open + kHermesOpen.size();
    size_t close = text.find(kHermesClose, body);
    const bool closed = close != std::string_view::npos;
    if (!closed) close = text.size();
    StatusOr<JsonValue> v = JsonValue::Parse(text.substr(body, close - body));
    if (!v.ok()) return std::nullopt;
    std::optional<ToolCall> call = CallFrom(*v, tools, {"arguments", "parameters"});
    if (!call) return std::nullopt;
    out.calls.push_back(std::move(*call));
    at = closed ? close + kHermesClose.size() : text.size();
  }
  if (out.calls.empty()) return std::nullopt;
  if (out.content.find_first_not_of(kSpace) == std::string::npos) out.content.clear();
  return out;
}

// [TOOL_CALLS] [{...}, ...] (or one {...}), the text after it content.
std::optional<Read> ReadMistral(std::string_view text, const std::vector<ToolDefinition>& tools) {
  if (text.substr(0, kMistralTag.size()) != kMistralTag) return std::nullopt;
  const size_t at = SkipSpace(text, kMistralTag.size());
  if (at >= text.size() || (text[at] != '[' && text[at] != '{')) return std::nullopt;
  const size_t end = JsonEnd(text, at);
  if (end == std::string_view::npos) return std::nullopt;
  StatusOr<JsonValue> v = JsonValue::Parse(text.substr(at, end - at));
  if (!v.ok()) return std::nullopt;
  Read out;
  const std::vector<JsonValue> items = v->is_object() ? std::vector<JsonValue>{*v} : v->as_array();
  for (const JsonValue& item : items) {
    std::optional<ToolCall> call = CallFrom(item, tools, {"arguments", "parameters"});
    if (!call) return std::nullopt;
    out.calls.push_back(std::move(*call));
  }
  if (out.calls.empty()) return std::nullopt;
  out.content = std::string(text.substr(end));
  if (out.content.find_first_not_of(kSpace) == std::string::npos) out.content.clear();
  return out;
}

// The longest end of `text` that is a proper beginning of `marker`.
size_t PartialMarker(std::string_view text, std::string_view marker) {
  for (size_t n = std::min(text.size(), marker.size() - 1); n > 0; --n) {
    if (text.substr(text.size() - n) == marker.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

StatusOr<std::vector<ToolDefinition>> ParseTools(const JsonValue& tools, std::string* field) {
  auto refuse = [&](const std::string& where, const std::string& what) -> Status {
    if (field != nullptr) *field = where;
    return InvalidArgument(where + ": " + what);
  };
  if (!tools.is_array()) {
    return refuse("tools", "must be an array of {\"type\": \"function\", \"function\": {\"name\", ...}}");
  }
  if (tools.as_array().size() > static_cast<size_t>(kMaxTools)) {
    return refuse("tools",
                  std::to_string(tools.as_array().size()) + " tools exceed the limit of " + std::to_string(kMaxTools));
  }
  std::vector<ToolDefinition> out;
  for (size_t i = 0; i < tools.as_array().size(); ++i) {
    const JsonValue& t = tools.as_array()[i];
    const std::string where = "tools[" + std::to_string(i) + "]";
    if (!t.is_object()) return refuse(where, "must be an object {\"type\": \"function\", \"function\": {...}}");
    const JsonValue* type = t.Find("type");
    if (type == nullptr || !type->is_string() || type->as_string() != "function") {
      return refuse(where + ".type", "must be \"function\" (the only kind of tool), got " +
                                         (type == nullptr ? std::string("nothing") : type->Dump().substr(0, 32)));
    }
    const JsonValue* fn = t.Find("function");
    if (fn == nullptr || !fn->is_object()) {
      return refuse(where + ".function", "must be an object {\"name\", \"description\", \"parameters\"}");
    }
    const JsonValue* name = fn->Find("name");
    if (name == nullptr || !name->is_string() || !ValidName(name->as_string())) {
      return refuse(where + ".function.name",
                    "must be 1 to 64 letters, digits, underscores or dashes, got " +
                        (name == nullptr ? std::string("nothing") : name->Dump().substr(0, 80)));
    }
    for (size_t j = 0; j < out.size(); ++j) {
      if (out[j].name == name->as_string()) {
        return refuse(where + ".function.name",
                      "\"" + name->as_string() + "\" is also tools[" + std::to_string(j) + "]'s name");
      }
    }
    if (const JsonValue* d = fn->Find("description"); d != nullptr && !d->is_null() && !d->is_string()) {
      return refuse(where + ".function.description", "must be a string");
    }
    if (const JsonValue* s = fn->Find("strict"); s != nullptr && !s->is_null() && !s->is_bool()) {
      return refuse(where + ".function.strict", "must be true or false");
    }
    ToolDefinition def;
    def.name = name->as_string();
    const JsonValue* params = fn->Find("parameters");
    if (params == nullptr || params->is_null()) {
      def.parameters = JsonValue::Object();
      def.parameters.Set("type", JsonValue::String("object"));
    } else if (params->is_object()) {
      def.parameters = *params;
    } else {
      return refuse(where + ".function.parameters", "must be a JSON Schema object");
    }
    out.push_back(std::move(def));
  }
  return out;
}

StatusOr<ToolChoice> ParseToolChoice(const JsonValue* choice, const std::vector<ToolDefinition>& tools) {
  ToolChoice out;
  if (choice == nullptr || choice->is_null()) {
    out.kind = tools.empty() ? ToolChoice::Kind::kNone : ToolChoice::Kind::kAuto;
    return out;
  }
  if (choice->is_string()) {
    const std::string& s = choice->as_string();
    if (s == "none") return out;
    if (s == "auto") {
      out.kind = tools.empty() ? ToolChoice::Kind::kNone : ToolChoice::Kind::kAuto;
      return out;
    }
    if (s == "required") {
      if (tools.empty()) return InvalidArgument("tool_choice: \"required\" needs tools, and the request has none");
      out.kind = ToolChoice::Kind::kRequired;
      return out;
    }
    return InvalidArgument(
        "tool_choice: must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
        "\"function\": {\"name\": ...}}, got " +
        choice->Dump().substr(0, 32));
  }
  const JsonValue* type = choice->is_object() ? choice->Find("type") : nullptr;
  const JsonValue* fn = choice->is_object() ? choice->Find("function") : nullptr;
  const JsonValue* name = fn != nullptr && fn->is_object() ? fn->Find("name") : nullptr;
  if (type == nullptr || !type->is_string() || type->as_string() != "function" || name == nullptr ||
      !name->is_string()) {
    return InvalidArgument(
        "tool_choice: must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": "
        "{\"name\": ...}}");
  }
  if (FindTool(tools, name->as_string()) == nullptr) {
    return InvalidArgument("tool_choice.function.name: \"" + name->as_string().substr(0, 64) +
                           "\" is not one of the request's tools");
  }
  out.kind = ToolChoice::Kind::kFunction;
  out.name = name->as_string();
  return out;
}

std::string ToolCallSchema(const std::vector<ToolDefinition>& tools, const ToolChoice& choice, bool parallel) {
  if (choice.kind == ToolChoice::Kind::kFunction) {
    const ToolDefinition* t = FindTool(tools, choice.name);
    return t != nullptr ? t->parameters.Dump() : std::string();
  }
  if (choice.kind != ToolChoice::Kind::kRequired) return {};
  JsonValue any = JsonValue::Array();
  for (size_t i = 0; i < tools.size(); ++i) {
    JsonValue name = JsonValue::Object();
    name.Set("const", JsonValue::String(tools[i].name));
    JsonValue parameters = tools[i].parameters;
    // The tool's own references now point from the array's root.
    MoveRefs(&parameters, "#/items/anyOf/" + std::to_string(i) + "/properties/parameters");
    JsonValue properties = JsonValue::Object();
    properties.Set("name", std::move(name));
    properties.Set("parameters", std::move(parameters));
    JsonValue required = JsonValue::Array();
    required.Append(JsonValue::String("name"));
    required.Append(JsonValue::String("parameters"));
    JsonValue call = JsonValue::Object();
    call.Set("type", JsonValue::String("object"));
    call.Set("properties", std::move(properties));
    call.Set("required", std::move(required));
    call.Set("additionalProperties", JsonValue::Bool(false));
    any.Append(std::move(call));
  }
  JsonValue items = JsonValue::Object();
  items.Set("anyOf", std::move(any));
  JsonValue schema = JsonValue::Object();
  schema.Set("type", JsonValue::String("array"));
  schema.Set("items", std::move(items));
  schema.Set("minItems", JsonValue::Int(1));
  if (!parallel) schema.Set("maxItems", JsonValue::Int(1));
  return schema.Dump();
}

StatusOr<ToolCallFormat> ToolCallFormatNamed(std::string_view name) {
  if (name == "llama3_json") return ToolCallFormat::kLlama3Json;
  if (name == "hermes") return ToolCallFormat::kHermes;
  if (name == "mistral") return ToolCallFormat::kMistral;
  return InvalidArgument("\"" + std::string(name.substr(0, 32)) +
                         "\" is not a tool-call format: llama3_json, hermes or mistral");
}

std::string_view ToolCallFormatName(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::kLlama3Json: return "llama3_json";
    case ToolCallFormat::kHermes: return "hermes";
    case ToolCallFormat::kMistral: return "mistral";
  }
  return "";
}

std::optional<ToolCallFormat> DetectToolCallFormat(std::string_view chat_template) {
  if (chat_template.find(kMistralTag) != std::string_view::npos) return ToolCallFormat::kMistral;
  if (chat_template.find(kHermesOpen) != std::string_view::npos) return ToolCallFormat::kHermes;
  if (chat_template.find(kPythonTag) != std::string_view::npos ||
      chat_template.find("\"parameters\": dictionary of argument name") != std::string_view::npos) {
    return ToolCallFormat::kLlama3Json;
  }
  return std::nullopt;
}

std::string NewToolCallId(std::optional<ToolCallFormat> format, uint64_t (*random)()) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 engine{std::random_device{}()};
  const size_t n = format == ToolCallFormat::kMistral ? 9 : 24;
  std::string id = format == ToolCallFormat::kMistral ? "" : "call_";
  for (size_t i = 0; i < n; ++i) id += kAlphabet[(random != nullptr ? random() : engine()) % 62];
  return id;
}

ToolCallReader::ToolCallReader(ToolChoice choice, std::optional<ToolCallFormat> format,
                               std::vector<ToolDefinition> tools, bool parallel, std::function<std::string()> new_id)
    : choice_(std::move(choice)),
      format_(format),
      tools_(std::move(tools)),
      parallel_(parallel),
      new_id_(new_id ? std::move(new_id) : [f = format] { return NewToolCallId(f); }),
      state_(State::kUndecided) {
  if (choice_.kind == ToolChoice::Kind::kRequired) state_ = State::kHolding;
  if (choice_.kind == ToolChoice::Kind::kNone || (choice_.kind == ToolChoice::Kind::kAuto && !format_)) {
    state_ = State::kContent;
  }
}

void ToolCallReader::Say(std::string text, Delta* out) {
  if (text.empty()) return;
  content_ += text;
  out->content += text;
}

ToolCallReader::Delta ToolCallReader::Feed(std::string_view text) {
  Delta out;
  if (choice_.kind == ToolChoice::Kind::kFunction) {
    // The reply is the call's arguments, guided to its schema.
    CallDelta d;
    if (calls_.empty()) {
      calls_.push_back(ToolCall{new_id_(), choice_.name, ""});
      d.id = calls_[0].id;
      d.name = choice_.name;
    }
    calls_[0].arguments += text;
    d.arguments = std::string(text);
    if (!d.id.empty() || !d.arguments.empty()) out.calls.push_back(std::move(d));
    return out;
  }
  if (state_ == State::kContent) {
    Say(std::string(text), &out);
    return out;
  }
  pending_ += text;
  if (state_ == State::kHolding) return out;
  if (*format_ == ToolCallFormat::kLlama3Json) {
    // Calls alone: decided by the reply's first visible characters.
    const size_t first = pending_.find_first_not_of(kSpace);
    if (first == std::string::npos) return out;
    const std::string_view rest = std::string_view(pending_).substr(first);
    if (rest[0] == '{' || rest.substr(0, kPythonTag.size()) == kPythonTag) {
      state_ = State::kHolding;
      return out;
    }
    if (kPythonTag.substr(0, rest.size()) == rest) return out;  // maybe the tag, not yet whole
    state_ = State::kContent;
    Say(std::move(pending_), &out);
    pending_.clear();
    return out;
  }
  // A marker after any text: the text before it goes out, and so does all
  // but an end that may begin the marker.
  const std::string_view marker = *format_ == ToolCallFormat::kHermes ? kHermesOpen : kMistralTag;
  if (const size_t at = pending_.find(marker); at != std::string::npos) {
    Say(pending_.substr(0, at), &out);
    pending_.erase(0, at);
    state_ = State::kHolding;
    return out;
  }
  const size_t keep = PartialMarker(pending_, marker);
  Say(pending_.substr(0, pending_.size() - keep), &out);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

bool ToolCallReader::TakeCalls(Delta* out) {
  std::optional<Read> read;
  if (choice_.kind == ToolChoice::Kind::kRequired) {
    read = ReadRequired(pending_, tools_);
  } else if (format_ == ToolCallFormat::kLlama3Json) {
    read = ReadLlama3(pending_, tools_);
  } else if (format_ == ToolCallFormat::kHermes) {
    read = ReadHermes(pending_, tools_);
  } else if (format_ == ToolCallFormat::kMistral) {
    read = ReadMistral(pending_, tools_);
  }
  if (!read) return false;
  if (!parallel_ && read->calls.size() > 1) read->calls.resize(1);
  Say(std::move(read->content), out);
  for (ToolCall& call : read->calls) {
    call.id = new_id_();
    CallDelta d;
    d.index = static_cast<int>(calls_.size());
    d.id = call.id;
    d.name = call.name;
    d.arguments = call.arguments;
    out->calls.push_back(std::move(d));
    calls_.push_back(std::move(call));
  }
  return true;
}

ToolCallReader::Delta ToolCallReader::Finish() {
  Delta out;
  if (choice_.kind == ToolChoice::Kind::kFunction) {
    if (calls_.empty()) out = Feed("");  // an empty reply is still the call
    return out;
  }
  if (state_ == State::kHolding && TakeCalls(&out)) {
    pending_.clear();
    return out;
  }
  // Not calls after all (or cut short): what was held is text.
  Say(std::move(pending_), &out);
  pending_.clear();
  state_ = State::kContent;
  return out;
}

ParsedToolCalls ReadToolCalls(std::string_view text, const ToolChoice& choice, std::optional<ToolCallFormat> format,
                              const std::vector<ToolDefinition>& tools, bool parallel) {
  ToolCallReader reader(choice, format, tools, parallel, [] { return std::string(); });
  reader.Feed(text);
  reader.Finish();
  return ParsedToolCalls{reader.content(), reader.calls()};
}

}  // namespace seer
