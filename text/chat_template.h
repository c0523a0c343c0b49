// Chat templates as transformers renders them:
//   tokenizer.apply_chat_template(messages, tokenize=False,
//                                 add_generation_prompt=..., tools=..., **extra)
// with the checkpoint's Jinja `chat_template` (text/jinja.h has the
// supported subset). The template sees `messages`, `tools` and `documents`
// (None unless given), `add_generation_prompt`, the special tokens of
// tokenizer_config.json (bos_token, eos_token, unk_token, pad_token; each
// undefined when unset), `raise_exception(message)` (an error carrying the
// message) and `strftime_now(format)` (the render time, injectable for
// tests), plus any extra variables (e.g. date_string, enable_thinking).
#pragma once

#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include "base/json.h"
#include "base/status.h"
#include "text/jinja.h"

namespace seer {

class Tokenizer;

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  // A JSON array of tool definitions, passed as `tools`; null: None.
  JsonValue tools;
  // More template variables: a JSON object.
  JsonValue extra = JsonValue::Object();
  std::string bos_token, eos_token, unk_token, pad_token;  // empty: undefined
  // The time strftime_now() formats, as local broken-down time; unset: now.
  std::optional<std::tm> now;
};

class ChatTemplate {
 public:
  // Parses the template; unsupported statements, filters and tests are
  // errors here, with the line.
  static StatusOr<ChatTemplate> Parse(std::string_view source);

  // `messages`: a JSON array of {"role": ..., "content": ..., ...} objects.
  // A raise_exception() in the template is an INVALID_ARGUMENT whose message
  // is the template's.
  StatusOr<std::string> Render(const JsonValue& messages, const ChatTemplateOptions& options) const;

 private:
  jinja::Template template_;
};

// The tokenizer's own chat template (tokenizer_config.json or
// chat_template.jinja) with its special tokens; FAILED_PRECONDITION when the
// checkpoint has none.
StatusOr<std::string> RenderChat(const Tokenizer& tokenizer, const JsonValue& messages,
                                 ChatTemplateOptions options = {});

// Python's time.strftime for the directives chat templates use:
// %a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %Z %z %%.
std::string Strftime(std::string_view format, const std::tm& t);

}  // namespace seer
