#include "client/tokenize_command.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/flags.h"
#include "base/json.h"
#include "client/prompt_flags.h"
#include "client/token_ids.h"
#include "text/chat_template.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

namespace seer {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

int UsageError(const char* command, const std::string& message) {
  const bool mentions_help = message.find("--help") != std::string::npos;
  std::fprintf(stderr, "seer %s: %s%s\n", command, message.c_str(),
               mentions_help ? "" : (std::string(" (see seer ") + command + " --help)").c_str());
  return kExitUsage;
}

int RuntimeError(const char* command, const Status& status) {
  std::fprintf(stderr, "seer %s: %s\n", command, status.ToString().c_str());
  return kExitRuntime;
}

std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

JsonValue IdsJson(const std::vector<int32_t>& ids) {
  JsonValue a = JsonValue::Array();
  for (int32_t id : ids) a.Append(JsonValue::Int(id));
  return a;
}

}  // namespace

int RunTokenizeCommand(int argc, char** argv) {
  const char* kCmd = "tokenize";
  std::string tokenizer, text, text_file, chat, chat_template;
  bool add_special_tokens = true, add_generation_prompt = true, json = false, as_served = false;
  FlagSet flags("seer tokenize --tokenizer PATH (--text STR | --text-file F | --chat MESSAGES.json) [flags]",
                "Encodes text with a checkpoint's Hugging Face tokenizer and prints the token ids (comma-separated,\n"
                "ready for seer run --ids), exactly as Hugging Face tokenizers would. With --chat, renders the\n"
                "checkpoint's chat template first, as transformers' apply_chat_template(tokenize=False) does, and\n"
                "prints the prompt text (its ids too with --json; the template adds the special tokens itself).\n"
                "Exit codes: 0 success, 1 runtime error, 2 usage error.");
  flags.String("tokenizer", &tokenizer,
               "A tokenizer.json file, or a checkpoint directory holding tokenizer.json (and tokenizer_config.json, "
               "which --chat needs for the chat template and special tokens). Required.");
  flags.String("text", &text, "The text to encode (UTF-8).");
  flags.String("text-file", &text_file, "Read the text to encode from this file (UTF-8, bytes as they are).");
  flags.String("chat", &chat,
               "A JSON file with the conversation: [{\"role\": \"system\"|\"user\"|\"assistant\"|..., \"content\": "
               "\"...\"}, ...]. The messages go to the template as given, as transformers does; see --as-served.");
  flags.Bool("as-served", &as_served,
             "With --chat: read the messages as seer run --chat, seer generate --chat and the servers do (OpenAI's "
             "forms: a null or missing content is \"\", text parts are joined, a turn with tool calls is refused, "
             "other members are dropped), to see the prompt a request is served with.");
  flags.String("chat-template", &chat_template,
               "With --chat: use this Jinja file instead of the checkpoint's chat template.");
  flags.Bool("add-special-tokens", &add_special_tokens,
             "Add what the tokenizer's post-processor adds (e.g. Llama's <|begin_of_text|>). Not with --chat.");
  flags.Bool("add-generation-prompt", &add_generation_prompt,
             "With --chat: end the prompt with the template's assistant header.");
  flags.Bool("json", &json, "Print one JSON object: {\"ids\": [...]}, or with --chat {\"text\": ..., \"ids\": [...]}.");
  Status parsed = flags.Parse(argc, argv, 1);
  if (!parsed.ok()) return UsageError(kCmd, parsed.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!flags.positional().empty()) return UsageError(kCmd, "unexpected argument '" + flags.positional()[0] + "'");
  if (tokenizer.empty()) return UsageError(kCmd, "--tokenizer is required (a tokenizer.json or checkpoint directory)");
  const int inputs = flags.WasSet("text") + flags.WasSet("text-file") + flags.WasSet("chat");
  if (inputs != 1) return UsageError(kCmd, "give exactly one of --text, --text-file and --chat");
  if (!flags.WasSet("chat") &&
      (flags.WasSet("chat-template") || flags.WasSet("add-generation-prompt") || flags.WasSet("as-served"))) {
    return UsageError(kCmd, "--chat-template, --add-generation-prompt and --as-served need --chat");
  }
  if (flags.WasSet("chat") && flags.WasSet("add-special-tokens")) {
    return UsageError(kCmd, "--add-special-tokens does not apply to --chat (the template adds the special tokens)");
  }

  StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(tokenizer);
  if (!tok.ok()) return RuntimeError(kCmd, tok.status().WithContext("--tokenizer"));
  if (flags.WasSet("text-file")) {
    StatusOr<std::string> t = ReadInputFile("--text-file", text_file);
    if (!t.ok()) return RuntimeError(kCmd, t.status());
    text = std::move(*t);
  }
  if (!flags.WasSet("chat")) {
    StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text, add_special_tokens);
    if (!ids.ok()) return RuntimeError(kCmd, ids.status().WithContext(flags.WasSet("text") ? "--text" : "--text-file"));
    if (json) {
      JsonValue out = JsonValue::Object();
      out.Set("ids", IdsJson(*ids));
      std::printf("%s\n", out.Dump().c_str());
    } else {
      std::printf("%s\n", JoinIds(*ids).c_str());
    }
    return 0;
  }

  StatusOr<std::string> chat_text = ReadInputFile("--chat", chat);
  if (!chat_text.ok()) return RuntimeError(kCmd, chat_text.status());
  StatusOr<JsonValue> messages = JsonValue::Parse(*chat_text);
  if (!messages.ok()) return UsageError(kCmd, "--chat: " + chat + ": " + messages.status().message());
  if (!messages->is_array()) return UsageError(kCmd, "--chat: " + chat + ": expected a JSON array of messages");
  if (as_served) {
    StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*messages);
    if (!turns.ok()) return UsageError(kCmd, "--chat: " + chat + ": " + std::string(turns.status().message()));
    *messages = ChatTurnsJson(*turns);
  }
  ChatTemplateOptions options;
  options.add_generation_prompt = add_generation_prompt;
  StatusOr<std::string> prompt = Status(StatusCode::kInternal, "unset");
  if (flags.WasSet("chat-template")) {
    StatusOr<std::string> source = ReadInputFile("--chat-template", chat_template);
    if (!source.ok()) return RuntimeError(kCmd, source.status());
    StatusOr<ChatTemplate> t = ChatTemplate::Parse(*source);
    if (!t.ok()) return RuntimeError(kCmd, t.status().WithContext("--chat-template"));
    const TokenizerConfig& c = (*tok)->config();
    options.bos_token = c.bos_token;
    options.eos_token = c.eos_token;
    options.unk_token = c.unk_token;
    options.pad_token = c.pad_token;
    prompt = t->Render(*messages, options);
  } else {
    prompt = RenderChat(**tok, *messages, options);
  }
  if (!prompt.ok()) return RuntimeError(kCmd, prompt.status().WithContext("--chat"));
  if (!json) {
    std::fwrite(prompt->data(), 1, prompt->size(), stdout);
    return 0;
  }
  StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(*prompt, false);
  if (!ids.ok()) return RuntimeError(kCmd, ids.status().WithContext("--chat"));
  JsonValue out = JsonValue::Object();
  out.Set("text", JsonValue::String(*prompt));
  out.Set("ids", IdsJson(*ids));
  std::printf("%s\n", out.Dump().c_str());
  return 0;
}

int RunDetokenizeCommand(int argc, char** argv) {
  const char* kCmd = "detokenize";
  std::string tokenizer, ids_flag;
  bool skip_special_tokens = false, json = false;
  FlagSet flags("seer detokenize --tokenizer PATH --ids IDS [flags]",
                "Decodes token ids with a checkpoint's Hugging Face tokenizer and prints the text exactly as\n"
                "Hugging Face tokenizers' decode() would (no newline is added; use --json for a framed result).\n"
                "Exit codes: 0 success, 1 runtime error, 2 usage error.");
  flags.String("tokenizer", &tokenizer, "A tokenizer.json file, or a checkpoint directory holding one. Required.");
  flags.String("ids", &ids_flag, "Token ids: \"1,2,3\" (commas and/or whitespace), or @FILE to read them. Required.");
  flags.Bool("skip-special-tokens", &skip_special_tokens, "Leave out special tokens (BOS, EOS, chat markers, ...).");
  flags.Bool("json", &json, "Print one JSON object: {\"text\": \"...\"}.");
  Status parsed = flags.Parse(argc, argv, 1);
  if (!parsed.ok()) return UsageError(kCmd, parsed.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!flags.positional().empty()) return UsageError(kCmd, "unexpected argument '" + flags.positional()[0] + "'");
  if (tokenizer.empty()) return UsageError(kCmd, "--tokenizer is required (a tokenizer.json or checkpoint directory)");
  if (!flags.WasSet("ids")) return UsageError(kCmd, "--ids is required (\"1,2,3\" or @FILE)");
  StatusOr<std::vector<int32_t>> ids = ParseTokenIds(ids_flag, "--ids");
  if (!ids.ok()) return UsageError(kCmd, ids.status().message());
  StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::Load(tokenizer);
  if (!tok.ok()) return RuntimeError(kCmd, tok.status().WithContext("--tokenizer"));
  for (size_t i = 0; i < ids->size(); ++i) {
    if ((*ids)[i] >= (*tok)->vocab_size() || !(*tok)->IdToToken((*ids)[i])) {
      return UsageError(kCmd, "--ids: item " + std::to_string(i) + " = " + std::to_string((*ids)[i]) +
                                  " is not in the tokenizer's vocabulary (size " +
                                  std::to_string((*tok)->vocab_size()) + ")");
    }
  }
  StatusOr<std::string> text = (*tok)->Decode(*ids, skip_special_tokens);
  if (!text.ok()) return RuntimeError(kCmd, text.status());
  if (json) {
    JsonValue out = JsonValue::Object();
    out.Set("text", JsonValue::String(*text));
    std::printf("%s\n", out.Dump().c_str());
  } else {
    std::fwrite(text->data(), 1, text->size(), stdout);
  }
  return 0;
}

}  // namespace seer
