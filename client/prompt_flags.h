// How every seer command that runs a prompt takes it: --ids (token ids),
// --prompt / --prompt-file (text) or --chat (a JSON file of messages the
// model's chat template renders), exactly one; and --tokenizer, where the
// text ones find the tokenizer (default: the model directory).
#pragma once

#include <string>
#include <vector>

#include "base/flags.h"
#include "base/json.h"
#include "base/status.h"
#include "text/guide.h"
#include "text/tokenizer.h"

namespace seer {

// A text input file (--prompt-file, --chat, ...), bounded; errors name the flag.
StatusOr<std::string> ReadInputFile(const std::string& flag, const std::string& path);

struct PromptFlags {
  std::string ids, prompt, prompt_file, chat, tokenizer;
  // --chat's rendering: as seer-decode's add_generation_prompt,
  // continue_final_message and chat_template_kwargs.
  bool add_generation_prompt = true, continue_final_message = false;
  std::string chat_template_kwargs;
  std::string tools;  // --tools: OpenAI's tools array (JSON or @FILE), shown by the template

  // `tokenizer_help` says where the default tokenizer is.
  void Register(FlagSet& flags, const std::string& tokenizer_help);
  // Exactly one of the four inputs, and the chat flags only with --chat;
  // the error names them.
  Status CheckOne(const FlagSet& flags) const;
  bool is_text(const FlagSet& flags) const { return !flags.WasSet("ids"); }

  // The prompt as text (--prompt, or --prompt-file read whole).
  StatusOr<std::string> Text(const FlagSet& flags) const;
  // --chat's messages: a JSON array of {"role", "content"} objects.
  StatusOr<JsonValue> Messages() const;
  // The prompt as ids with `tokenizer` (text with its special tokens, chats
  // through its template with the generation prompt); --ids as given.
  StatusOr<std::vector<int32_t>> Ids(const FlagSet& flags, const Tokenizer* tokenizer) const;
};

// --tools: OpenAI's `tools` array, as JSON or @FILE, checked (ParseTools);
// errors name the flag.
StatusOr<JsonValue> ReadToolsFlag(const std::string& value);

// The tokenizer at `path` (a tokenizer.json or a directory holding one), or
// null when `path` is a directory without one and `required` is false.
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerAt(const std::string& path, bool required);

// Guided decoding, as seer generate and seer run take it: --json-schema
// (the schema, or @FILE), --json-object, --regex, --choice (repeated) or
// --grammar (GBNF, or @FILE), at most one.
struct GuideFlags {
  std::string json_schema, regex, grammar;
  bool json_object = false;
  std::vector<std::string> choices;

  void Register(FlagSet& flags);
  // What the flags ask for; kind kNone when none is given. Errors name the
  // flag.
  StatusOr<GuideSpec> Spec(const FlagSet& flags) const;
};

}  // namespace seer
