#include "text/chat_template.h"

#include <cstdio>

#include "text/tokenizer.h"

namespace seer {

using jinja::CallArgs;
using jinja::Value;

std::string Strftime(std::string_view format, const std::tm& t) {
  static const char* const kDays[] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
  static const char* const kMonths[] = {"January", "February", "March",     "April",   "May",      "June",
                                        "July",    "August",   "September", "October", "November", "December"};
  std::string out;
  char buf[32];
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 == format.size()) {
      out.push_back(format[i]);
      continue;
    }
    const char c = format[++i];
    const int wday = ((t.tm_wday % 7) + 7) % 7, mon = ((t.tm_mon % 12) + 12) % 12;
    switch (c) {
      case 'a': out += std::string(kDays[wday]).substr(0, 3); break;
      case 'A': out += kDays[wday]; break;
      case 'b':
      case 'h': out += std::string(kMonths[mon]).substr(0, 3); break;
      case 'B': out += kMonths[mon]; break;
      case 'd': std::snprintf(buf, sizeof buf, "%02d", t.tm_mday), out += buf; break;
      case 'e': std::snprintf(buf, sizeof buf, "%2d", t.tm_mday), out += buf; break;
      case 'H': std::snprintf(buf, sizeof buf, "%02d", t.tm_hour), out += buf; break;
      case 'I': std::snprintf(buf, sizeof buf, "%02d", t.tm_hour % 12 == 0 ? 12 : t.tm_hour % 12), out += buf; break;
      case 'j': std::snprintf(buf, sizeof buf, "%03d", t.tm_yday + 1), out += buf; break;
      case 'm': std::snprintf(buf, sizeof buf, "%02d", mon + 1), out += buf; break;
      case 'M': std::snprintf(buf, sizeof buf, "%02d", t.tm_min), out += buf; break;
      case 'p': out += t.tm_hour < 12 ? "AM" : "PM"; break;
      case 'S': std::snprintf(buf, sizeof buf, "%02d", t.tm_sec), out += buf; break;
      case 'y': std::snprintf(buf, sizeof buf, "%02d", (t.tm_year + 1900) % 100), out += buf; break;
      case 'Y': std::snprintf(buf, sizeof buf, "%d", t.tm_year + 1900), out += buf; break;
      case 'Z': out += "UTC"; break;
      case 'z': out += "+0000"; break;
      case '%': out.push_back('%'); break;
      default: out.push_back('%'), out.push_back(c);
    }
  }
  return out;
}

StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  SEER_ASSIGN_OR_RETURN(jinja::Template t, jinja::Template::Parse(source));
  ChatTemplate ct;
  ct.template_ = std::move(t);
  return ct;
}

StatusOr<std::string> ChatTemplate::Render(const JsonValue& messages, const ChatTemplateOptions& options) const {
  if (!messages.is_array()) return InvalidArgument("messages: expected a JSON array of message objects");
  for (size_t i = 0; i < messages.as_array().size(); ++i) {
    if (!messages.as_array()[i].is_object()) {
      return InvalidArgument("messages[" + std::to_string(i) + "]: expected an object with role and content");
    }
  }
  std::map<std::string, Value> globals;
  if (options.extra.is_object()) {
    for (const auto& [k, v] : options.extra.as_object()) globals[k] = Value::FromJson(v);
  } else if (!options.extra.is_null()) {
    return InvalidArgument("extra template variables: expected a JSON object");
  }
  for (const auto& [name, value] : {std::pair{"bos_token", &options.bos_token},
                                    {"eos_token", &options.eos_token},
                                    {"unk_token", &options.unk_token},
                                    {"pad_token", &options.pad_token}}) {
    if (!value->empty()) globals[name] = Value::String(*value);
  }
  globals["messages"] = Value::FromJson(messages);
  globals["tools"] = options.tools.is_null() ? Value::None() : Value::FromJson(options.tools);
  globals["documents"] = Value::None();
  globals["add_generation_prompt"] = Value::Bool(options.add_generation_prompt);
  globals["raise_exception"] = Value::Callable("raise_exception", [](CallArgs& a) -> StatusOr<Value> {
    const std::string msg = a.positional.empty() ? "" : a.positional[0].Str();
    return Status(StatusCode::kInvalidArgument, "raise_exception: " + msg);
  });
  std::tm now{};
  if (options.now) {
    now = *options.now;
  } else {
    const std::time_t t = std::time(nullptr);
    localtime_r(&t, &now);
  }
  globals["strftime_now"] = Value::Callable("strftime_now", [now](CallArgs& a) -> StatusOr<Value> {
    if (a.positional.empty() || !a.positional[0].is_string()) return InvalidArgument("strftime_now(format)");
    return Value::String(Strftime(a.positional[0].as_string(), now));
  });
  return template_.Render(globals);
}

StatusOr<std::string> RenderChat(const Tokenizer& tokenizer, const JsonValue& messages, ChatTemplateOptions options) {
  const TokenizerConfig& c = tokenizer.config();
  if (c.chat_template.empty()) {
    return FailedPrecondition("the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)");
  }
  SEER_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::Parse(c.chat_template));
  if (options.bos_token.empty()) options.bos_token = c.bos_token;
  if (options.eos_token.empty()) options.eos_token = c.eos_token;
  if (options.unk_token.empty()) options.unk_token = c.unk_token;
  if (options.pad_token.empty()) options.pad_token = c.pad_token;
  return t.Render(messages, options);
}

}  // namespace seer
