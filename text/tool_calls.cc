#include "text/tool_calls.h"

#include <algorithm>
#include <cctype>
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

// A tool's parameters as part of a guide's schema: the annotations the
// grammar never reads left out (they cost only the guide's bytes), and its
// local "$ref"s ("#", "#/...") pointing from `at`, where it sits in the
// larger schema. Only schema positions are walked: a property named
// "description", or a "$ref" inside a const or enum value, is kept as is.
JsonValue AsPart(const JsonValue& schema, const std::string& at) {
  static constexpr std::string_view kAnnotations[] = {"description", "title",    "examples",  "default", "$comment",
                                                      "deprecated",  "readOnly", "writeOnly", "$schema"};
  static constexpr std::string_view kSchemaMaps[] = {"properties", "patternProperties", "$defs", "definitions",
                                                     "dependentSchemas"};
  static constexpr std::string_view kSchemaLists[] = {"anyOf", "oneOf", "allOf", "prefixItems"};
  static constexpr std::string_view kSchemas[] = {
      "items",         "additionalProperties", "additionalItems",      "not", "contains", "if", "then", "else",
      "propertyNames", "unevaluatedItems",     "unevaluatedProperties"};
  auto in = [](const auto& list, std::string_view key) {
    return std::find(std::begin(list), std::end(list), key) != std::end(list);
  };
  if (!schema.is_object()) return schema;
  JsonValue out = JsonValue::Object();
  for (const auto& [key, value] : schema.as_object()) {
    if (in(kAnnotations, key)) continue;
    if (key == "$ref" && value.is_string() && !value.as_string().empty() && value.as_string()[0] == '#') {
      out.Set(key, JsonValue::String(at + value.as_string().substr(1)));
    } else if (in(kSchemaMaps, key) && value.is_object()) {
      JsonValue map = JsonValue::Object();
      for (const auto& [name, sub] : value.as_object()) map.Set(name, AsPart(sub, at));
      out.Set(key, std::move(map));
    } else if ((in(kSchemaLists, key) || in(kSchemas, key)) && value.is_array()) {
      JsonValue list = JsonValue::Array();
      for (const JsonValue& sub : value.as_array()) list.Append(AsPart(sub, at));
      out.Set(key, std::move(list));
    } else if (in(kSchemas, key)) {
      out.Set(key, AsPart(value, at));
    } else {
      out.Set(key, value);
    }
  }
  return out;
}

size_t SkipSpace(std::string_view text, size_t at);

// The end of the JSON value that starts at text[at] (one past its last
// byte), or npos when none does. Syntax alone (RFC 8259): a number of any
// size and any \u escape are values, as the model wrote them.
size_t ValueEnd(std::string_view text, size_t at, int depth = 0) {
  constexpr size_t npos = std::string_view::npos;
  auto digits = [&](size_t i) {
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
    return i;
  };
  if (at >= text.size() || depth > 256) return npos;
  const char c = text[at];
  if (c == '"') {
    for (size_t i = at + 1; i < text.size(); ++i) {
      const unsigned char b = static_cast<unsigned char>(text[i]);
      if (b == '"') return i + 1;
      if (b < 0x20) return npos;
      if (b != '\\') continue;
      if (++i >= text.size()) return npos;
      if (text[i] == 'u') {
        for (int k = 0; k < 4; ++k) {
          if (++i >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[i]))) return npos;
        }
      } else if (std::string_view("\"\\/bfnrt").find(text[i]) == npos) {
        return npos;
      }
    }
    return npos;
  }
  if (c == '{' || c == '[') {
    const char close = c == '{' ? '}' : ']';
    size_t i = SkipSpace(text, at + 1);
    if (i < text.size() && text[i] == close) return i + 1;
    for (;;) {
      if (c == '{') {
        if (i >= text.size() || text[i] != '"') return npos;
        i = SkipSpace(text, ValueEnd(text, i, depth + 1));
        if (i >= text.size() || text[i] != ':') return npos;
        i = SkipSpace(text, i + 1);
      }
      i = ValueEnd(text, i, depth + 1);
      if (i == npos) return npos;
      i = SkipSpace(text, i);
      if (i >= text.size()) return npos;
      if (text[i] == close) return i + 1;
      if (text[i] != ',') return npos;
      i = SkipSpace(text, i + 1);
    }
  }
  for (std::string_view word : {"true", "false", "null"}) {
    if (text.substr(at, word.size()) == word) return at + word.size();
  }
  size_t i = at + (c == '-' ? 1 : 0);
  if (i >= text.size() || text[i] < '0' || text[i] > '9') return npos;
  i = text[i] == '0' ? i + 1 : digits(i);
  if (i < text.size() && text[i] == '.') {
    const size_t end = digits(i + 1);
    if (end == i + 1) return npos;
    i = end;
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    size_t j = i + 1;
    if (j < text.size() && (text[j] == '+' || text[j] == '-')) ++j;
    const size_t end = digits(j);
    if (end == j) return npos;
    i = end;
  }
  return i;
}

// The values of a JSON array's text, or the (key, value) texts of an
// object's (a valid one, as ValueEnd found it); keys still quoted.
std::vector<std::pair<std::string_view, std::string_view>> Parts(std::string_view json) {
  std::vector<std::pair<std::string_view, std::string_view>> out;
  const bool object = json[0] == '{';
  size_t i = SkipSpace(json, 1);
  while (i < json.size() && json[i] != '}' && json[i] != ']') {
    std::string_view key;
    if (object) {
      const size_t key_end = ValueEnd(json, i);
      key = json.substr(i, key_end - i);
      i = SkipSpace(json, SkipSpace(json, key_end) + 1);
    }
    const size_t end = ValueEnd(json, i);
    out.emplace_back(key, json.substr(i, end - i));
    i = SkipSpace(json, end);
    if (json[i] == ',') i = SkipSpace(json, i + 1);
  }
  return out;
}

// `text` is one JSON value, with nothing but whitespace around it.
bool WholeValue(std::string_view text) {
  const size_t at = SkipSpace(text, 0);
  const size_t end = ValueEnd(text, at);
  return end != std::string_view::npos && SkipSpace(text, end) == text.size();
}

size_t SkipSpace(std::string_view text, size_t at) {
  while (at < text.size() && kSpace.find(text[at]) != std::string_view::npos) ++at;
  return at;
}

std::string_view Trimmed(std::string_view text) {
  const size_t begin = SkipSpace(text, 0);
  size_t end = text.size();
  while (end > begin && kSpace.find(text[end - 1]) != std::string_view::npos) --end;
  return text.substr(begin, end - begin);
}

// One call as a model writes it: the text of {"name": F, "<args_key>":
// {...}} with F an offered tool. The arguments are the model's own text
// (not parsed and written again: 1.0 stays 1.0); arguments given as a
// string holding an object are that string's content, absent ones {}.
std::optional<ToolCall> CallFrom(std::string_view object, const std::vector<ToolDefinition>& tools,
                                 std::initializer_list<std::string_view> args_keys) {
  object = Trimmed(object);
  if (object.empty() || object[0] != '{' || !WholeValue(object)) return std::nullopt;
  std::optional<std::string> name;
  std::optional<std::string_view> args;
  size_t args_rank = args_keys.size();
  for (const auto& [key_text, value] : Parts(object)) {
    StatusOr<JsonValue> key = JsonValue::Parse(key_text);
    if (!key.ok()) return std::nullopt;
    if (key->as_string() == "name" && !name) {
      StatusOr<JsonValue> v = JsonValue::Parse(value);
      if (!v.ok() || !v->is_string()) return std::nullopt;
      name = v->as_string();
    }
    for (size_t r = 0; r < args_rank; ++r) {
      if (key->as_string() == *(args_keys.begin() + r)) {
        args = value;
        args_rank = r;
      }
    }
  }
  if (!name || FindTool(tools, *name) == nullptr) return std::nullopt;
  ToolCall call;
  call.name = *name;
  if (!args) {
    call.arguments = "{}";
  } else if ((*args)[0] == '{') {
    call.arguments = std::string(*args);
  } else if ((*args)[0] == '"') {
    StatusOr<JsonValue> inner = JsonValue::Parse(*args);
    if (!inner.ok()) return std::nullopt;
    const std::string_view held = Trimmed(inner->as_string());
    if (held.empty() || held[0] != '{' || !WholeValue(held)) return std::nullopt;
    call.arguments = std::string(held);
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

// {...}; {...} after an optional <|python_tag|>, nothing else.
std::optional<Read> ReadLlama3(std::string_view text, const std::vector<ToolDefinition>& tools) {
  size_t at = SkipSpace(text, 0);
  if (text.substr(at, kPythonTag.size()) == kPythonTag) at += kPythonTag.size();
  Read out;
  for (;;) {
    at = SkipSpace(text, at);
    if (at >= text.size() || text[at] != '{') return std::nullopt;
    const size_t end = ValueEnd(text, at);
    if (end == std::string_view::npos) return std::nullopt;
    std::optional<ToolCall> call = CallFrom(text.substr(at, end - at), tools, {"parameters", "arguments"});
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
    std::optional<ToolCall> call = CallFrom(text.substr(body, close - body), tools, {"arguments", "parameters"});
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
  const size_t end = ValueEnd(text, at);
  if (end == std::string_view::npos) return std::nullopt;
  const std::string_view json = text.substr(at, end - at);
  std::vector<std::string_view> items;
  if (json[0] == '{') items.push_back(json);
  for (const auto& part : json[0] == '[' ? Parts(json) : decltype(Parts(json)){}) items.push_back(part.second);
  Read out;
  for (std::string_view item : items) {
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
    return t != nullptr ? AsPart(t->parameters, "#").Dump() : std::string();
  }
  if (choice.kind != ToolChoice::Kind::kRequired) return {};
  JsonValue any = JsonValue::Array();
  for (size_t i = 0; i < tools.size(); ++i) {
    JsonValue name = JsonValue::Object();
    name.Set("const", JsonValue::String(tools[i].name));
    // The tool's own references now point from the array's root.
    JsonValue parameters = AsPart(tools[i].parameters, "#/items/anyOf/" + std::to_string(i) + "/properties/parameters");
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

std::string NewToolCallId(std::optional<ToolCallFormat> format) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 engine{std::random_device{}()};
  const size_t n = format == ToolCallFormat::kMistral ? 9 : 24;
  std::string id = format == ToolCallFormat::kMistral ? "" : "call_";
  for (size_t i = 0; i < n; ++i) id += kAlphabet[engine() % 62];
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
  if (choice_.kind == ToolChoice::Kind::kRequired) {
    ReadCalls(&out);
    return out;
  }
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

void ToolCallReader::ReadCalls(Delta* out) {
  const std::string_view text = pending_;
  for (;;) {
    const size_t at = SkipSpace(text, read_);
    switch (calls_state_) {
      case Calls::kList: {
        if (at == text.size()) return;
        const char c = text[at];
        if (!list_open_ && c == '[') {
          list_open_ = true;
        } else if (list_open_ && c == '{' && (parallel_ || calls_.empty())) {
          calls_state_ = Calls::kHead;
          read_ = at;
          continue;
        } else if (list_open_ && c == ',' && !calls_.empty()) {
        } else if (list_open_ && c == ']') {
          calls_state_ = Calls::kDone;
        } else {
          calls_state_ = Calls::kBroken;
          return;
        }
        read_ = at + 1;
        continue;
      }
      case Calls::kHead: {
        // {"name": F, "parameters": — the guide writes them in this order.
        size_t i = SkipSpace(text, read_ + 1);
        std::optional<std::string> name;
        for (const char* key : {"name", "parameters"}) {
          const size_t key_end = ValueEnd(text, i);
          if (key_end == std::string_view::npos) return;  // not yet whole
          StatusOr<JsonValue> k = JsonValue::Parse(text.substr(i, key_end - i));
          i = SkipSpace(text, key_end);
          if (i == text.size()) return;
          if (!k.ok() || !k->is_string() || k->as_string() != key || text[i] != ':') {
            calls_state_ = Calls::kBroken;
            return;
          }
          i = SkipSpace(text, i + 1);
          if (name) break;
          const size_t value_end = ValueEnd(text, i);
          if (value_end == std::string_view::npos) return;
          StatusOr<JsonValue> v = JsonValue::Parse(text.substr(i, value_end - i));
          if (!v.ok() || !v->is_string() || FindTool(tools_, v->as_string()) == nullptr) {
            calls_state_ = Calls::kBroken;
            return;
          }
          name = v->as_string();
          i = SkipSpace(text, value_end);
          if (i == text.size()) return;
          if (text[i] != ',') {
            calls_state_ = Calls::kBroken;
            return;
          }
          i = SkipSpace(text, i + 1);
        }
        if (i == text.size()) return;  // the arguments' first byte decides their kind
        calls_.push_back(ToolCall{new_id_(), *name, ""});
        out->calls.push_back(CallDelta{static_cast<int>(calls_.size()) - 1, calls_.back().id, *name, ""});
        calls_state_ = Calls::kArguments;
        arguments_begin_ = read_ = i;
        depth_ = 0;
        in_string_ = escaped_ = false;
        continue;
      }
      case Calls::kArguments: {
        // An object or array streams byte by byte; any other value is sent
        // once it is whole.
        size_t end = std::string_view::npos;
        if (text[arguments_begin_] != '{' && text[arguments_begin_] != '[') {
          end = ValueEnd(text, arguments_begin_);
          if (end == std::string_view::npos || end == text.size()) return;
        } else {
          for (size_t i = read_; i < text.size() && end == std::string_view::npos; ++i) {
            const char c = text[i];
            if (in_string_) {
              if (escaped_) {
                escaped_ = false;
              } else if (c == '\\') {
                escaped_ = true;
              } else if (c == '"') {
                in_string_ = false;
              }
            } else if (c == '"') {
              in_string_ = true;
            } else if (c == '{' || c == '[') {
              ++depth_;
            } else if ((c == '}' || c == ']') && --depth_ == 0) {
              end = i + 1;
            }
          }
        }
        const size_t upto = end == std::string_view::npos ? text.size() : end;
        const std::string piece(text.substr(read_, upto - read_));
        read_ = upto;
        if (!piece.empty()) {
          calls_.back().arguments += piece;
          out->calls.push_back(CallDelta{static_cast<int>(calls_.size()) - 1, "", "", piece});
        }
        if (end == std::string_view::npos) return;
        calls_state_ = Calls::kClose;
        continue;
      }
      case Calls::kClose:
        if (at == text.size()) return;
        if (text[at] != '}') {
          calls_state_ = Calls::kBroken;
          return;
        }
        calls_state_ = Calls::kList;
        read_ = at + 1;
        continue;
      case Calls::kDone:
      case Calls::kBroken: return;
    }
  }
}

bool ToolCallReader::TakeCalls(Delta* out) {
  std::optional<Read> read;
  if (format_ == ToolCallFormat::kLlama3Json) {
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
  if (choice_.kind == ToolChoice::Kind::kRequired) {
    // A reply that began no call is text. One that did keeps its calls; a
    // call cut short keeps the arguments it has, and the list's own bytes
    // after it are no text. Text the list could not hold (none, under the
    // guide) is content.
    const std::string rest = pending_.substr(std::min(read_, pending_.size()));
    if (calls_state_ == Calls::kArguments && !rest.empty()) {
      // A value that is not an object or array waits for a byte after it.
      calls_.back().arguments += rest;
      out.calls.push_back(CallDelta{static_cast<int>(calls_.size()) - 1, "", "", rest});
    } else if (calls_.empty()) {
      Say(pending_, &out);
    } else if (calls_state_ == Calls::kBroken ||
               (calls_state_ == Calls::kDone && rest.find_first_not_of(kSpace) != std::string::npos)) {
      Say(rest, &out);
    }
    pending_.clear();
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
