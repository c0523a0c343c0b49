#include "client/prompt_flags.h"

#include <filesystem>
#include <fstream>

#include "client/token_ids.h"
#include "text/prompt.h"
#include "text/tool_calls.h"

namespace seer {
namespace {

constexpr size_t kMaxInputFileBytes = size_t{256} << 20;

}  // namespace

StatusOr<std::string> ReadInputFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(flag + ": cannot open '" + path + "'");
  std::string text;
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxInputFileBytes) {
      return ResourceExhausted(flag + ": '" + path + "' is larger than " + std::to_string(kMaxInputFileBytes >> 20) +
                               " MiB");
    }
  }
  return text;
}

void PromptFlags::Register(FlagSet& flags, const std::string& tokenizer_help) {
  flags.String("ids", &ids, "Prompt token ids: \"1,2,3\" (commas and/or whitespace), or @FILE.");
  flags.String("prompt", &prompt, "Prompt text (tokenized with the model's tokenizer, its BOS included).");
  flags.String("prompt-file", &prompt_file, "A file whose whole content is the prompt text.");
  flags.String("chat", &chat,
               "A JSON file of chat messages, [{\"role\": ..., \"content\": ...}, ...], as OpenAI's API takes them "
               "(a content may be null or an array of text parts), rendered with the model's chat template and its "
               "generation prompt.");
  flags.String("tokenizer", &tokenizer,
               "A tokenizer.json or a directory holding one. Default: " + tokenizer_help + ".");
  flags.Bool("add-generation-prompt", &add_generation_prompt,
             "With --chat: end the prompt with the template's assistant header.");
  flags.Bool("continue-final-message", &continue_final_message,
             "With --chat: leave the final message open, to be continued (needs --add-generation-prompt=false).");
  flags.String("chat-template-kwargs", &chat_template_kwargs,
               "With --chat: more template variables, a JSON object (e.g. '{\"enable_thinking\": false}').");
  flags.String("tools", &tools,
               "With --chat: tools the chat template shows the model, OpenAI's array of {\"type\": \"function\", "
               "\"function\": {\"name\", \"description\", \"parameters\"}} (the JSON, or @FILE).");
}

Status PromptFlags::CheckOne(const FlagSet& flags) const {
  int given = 0;
  for (const char* f : {"ids", "prompt", "prompt-file", "chat"}) given += flags.WasSet(f) ? 1 : 0;
  if (given != 1) return InvalidArgument("give exactly one of --ids, --prompt, --prompt-file and --chat");
  for (const char* f : {"add-generation-prompt", "continue-final-message", "chat-template-kwargs", "tools"}) {
    if (flags.WasSet(f) && !flags.WasSet("chat")) return InvalidArgument("--" + std::string(f) + " needs --chat");
  }
  return OkStatus();
}

StatusOr<std::string> PromptFlags::Text(const FlagSet& flags) const {
  if (flags.WasSet("prompt")) return prompt;
  return ReadInputFile("--prompt-file", prompt_file);
}

StatusOr<JsonValue> PromptFlags::Messages() const {
  SEER_ASSIGN_OR_RETURN(std::string text, ReadInputFile("--chat", chat));
  StatusOr<JsonValue> messages = JsonValue::Parse(text);
  if (!messages.ok()) return InvalidArgument("--chat: " + chat + ": " + messages.status().message());
  StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*messages);
  if (!turns.ok()) return InvalidArgument("--chat: " + chat + ": " + std::string(turns.status().message()));
  return ChatTurnsJson(*turns);
}

StatusOr<std::vector<int32_t>> PromptFlags::Ids(const FlagSet& flags, const Tokenizer* tok) const {
  if (flags.WasSet("ids")) {
    SEER_ASSIGN_OR_RETURN(std::vector<int32_t> out, ParseTokenIds(ids, "--ids"));
    if (out.empty()) return InvalidArgument("--ids: no token ids given");
    return out;
  }
  if (tok == nullptr) {
    return FailedPrecondition(
        "a text prompt needs a tokenizer: the model directory has no tokenizer.json "
        "(give --tokenizer PATH, or --ids)");
  }
  if (flags.WasSet("chat")) {
    SEER_ASSIGN_OR_RETURN(JsonValue messages, Messages());
    ChatPromptOptions options;
    options.add_generation_prompt = add_generation_prompt;
    options.continue_final_message = continue_final_message;
    if (!chat_template_kwargs.empty()) {
      StatusOr<JsonValue> kwargs = JsonValue::Parse(chat_template_kwargs);
      if (!kwargs.ok()) return InvalidArgument("--chat-template-kwargs: " + kwargs.status().message());
      options.template_kwargs = *std::move(kwargs);
    }
    if (!tools.empty()) {
      SEER_ASSIGN_OR_RETURN(options.tools, ReadToolsFlag(tools));
    }
    StatusOr<std::vector<int32_t>> out = EncodeChatPrompt(*tok, messages, options);
    if (!out.ok()) return out.status().WithContext("--chat");
    return out;
  }
  SEER_ASSIGN_OR_RETURN(std::string text, Text(flags));
  StatusOr<std::vector<int32_t>> out = EncodeTextPrompt(*tok, text);
  if (!out.ok()) return out.status().WithContext(flags.WasSet("prompt") ? "--prompt" : "--prompt-file");
  return out;
}

StatusOr<JsonValue> ReadToolsFlag(const std::string& value) {
  std::string text = value;
  if (!value.empty() && value[0] == '@') {
    SEER_ASSIGN_OR_RETURN(text, ReadInputFile("--tools", value.substr(1)));
  }
  StatusOr<JsonValue> tools = JsonValue::Parse(text);
  if (!tools.ok()) return InvalidArgument("--tools: not valid JSON: " + tools.status().message());
  if (Status s = ParseTools(*tools).status(); !s.ok()) return InvalidArgument("--tools: " + s.message());
  return tools;
}

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerAt(const std::string& path, bool required) {
  std::error_code ec;
  if (!required && std::filesystem::is_directory(path, ec) &&
      !std::filesystem::exists(std::filesystem::path(path) / "tokenizer.json", ec)) {
    return std::unique_ptr<Tokenizer>();
  }
  return Tokenizer::Load(path);
}

void GuideFlags::Register(FlagSet& flags) {
  flags.String("json-schema", &json_schema,
               "guided decoding: the answer is a JSON text this JSON Schema accepts (the schema itself, or @FILE; "
               "the keywords followed are in docs/SERVICE.md, \"Guided decoding\")");
  flags.Bool("json-object", &json_object, "guided decoding: the answer is a JSON object (OpenAI's JSON mode)");
  flags.String("regex", &regex, "guided decoding: the whole answer matches this regular expression");
  flags.Strings("choice", &choices,
                "guided decoding: the answer is exactly one of these strings; give it once per choice");
  flags.String("grammar", &grammar,
               "guided decoding: the answer is a sentence of this GBNF grammar (llama.cpp's format, from its rule "
               "`root`; the grammar itself, or @FILE)");
}

StatusOr<GuideSpec> GuideFlags::Spec(const FlagSet& flags) const {
  GuideSpec spec;
  const int given = (flags.WasSet("json-schema") ? 1 : 0) + (json_object ? 1 : 0) + (flags.WasSet("regex") ? 1 : 0) +
                    (choices.empty() ? 0 : 1) + (flags.WasSet("grammar") ? 1 : 0);
  if (given > 1) {
    return InvalidArgument("give at most one of --json-schema, --json-object, --regex, --choice and --grammar");
  }
  // A schema or a grammar is often long: @FILE reads it from a file.
  auto text_or_file = [](const char* flag, const std::string& value) -> StatusOr<std::string> {
    if (value.empty() || value[0] != '@') return value;
    return ReadInputFile(flag, value.substr(1));
  };
  if (flags.WasSet("json-schema")) {
    spec.kind = GuideSpec::Kind::kJsonSchema;
    SEER_ASSIGN_OR_RETURN(spec.text, text_or_file("--json-schema", json_schema));
  } else if (json_object) {
    spec.kind = GuideSpec::Kind::kJsonObject;
  } else if (flags.WasSet("regex")) {
    spec.kind = GuideSpec::Kind::kRegex;
    spec.text = regex;
  } else if (!choices.empty()) {
    spec.kind = GuideSpec::Kind::kChoice;
    spec.choices = choices;
  } else if (flags.WasSet("grammar")) {
    spec.kind = GuideSpec::Kind::kGrammar;
    SEER_ASSIGN_OR_RETURN(spec.text, text_or_file("--grammar", grammar));
  }
  return spec;
}

}  // namespace seer
