// How a prompt given as text, or as chat messages, becomes token ids: the
// same for `seer run`, seer-decode's Generate and the OpenAI front door, and
// as Hugging Face does it (a text prompt with the tokenizer's special tokens,
// e.g. Llama's BOS; a chat through the checkpoint's template with the
// generation prompt, the template supplying every special token).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "base/status.h"
#include "text/tokenizer.h"

namespace seer {

// A call an assistant turn made (OpenAI's {"id", "type": "function",
// "function": {"name", "arguments"}}); `arguments` is the JSON text as sent.
struct ChatToolCall {
  std::string id;
  std::string name;
  std::string arguments;
};

// One turn of a chat, as every Seer front end passes it to the template.
struct ChatTurn {
  std::string role;
  std::string content;
  std::vector<ChatToolCall> tool_calls;  // an assistant's calls
  std::string tool_call_id;  // a tool's answer: the call it answers
  std::string name;  // the speaker's name, or the tool's that answered
};

// At most this many calls a turn.
inline constexpr int kMaxTurnToolCalls = 128;

// Chat messages in OpenAI's form, read the same way by `seer run --chat`,
// `seer generate --chat` and the HTTP API: a non-empty JSON array of
// objects, each with a string "role"; "content" is a string, null or absent
// (the empty string), or an array of text parts ([{"type": "text", "text":
// ...}], joined). An assistant turn's "tool_calls" (at most
// kMaxTurnToolCalls {"id", "type": "function", "function": {"name",
// "arguments"}}, arguments a string), a tool turn's "tool_call_id" and any
// turn's "name" are kept (calls and call ids on other turns are left out,
// as vLLM leaves them); the legacy "function_call" is refused. An error's message
// starts with the member at fault ("messages[2].content: ..."), which
// `*field` also gets.
StatusOr<std::vector<ChatTurn>> ParseChatMessages(const JsonValue& messages, std::string* field = nullptr);
// The turns as the JSON array the chat template renders, as vLLM hands them
// to transformers: a call's arguments as the JSON object they hold (text
// that is not JSON stays a string), "tool_calls", "tool_call_id" and "name"
// only where a turn has them.
JsonValue ChatTurnsJson(const std::vector<ChatTurn>& turns);

// INVALID_ARGUMENT when the text makes no tokens.
StatusOr<std::vector<int32_t>> EncodeTextPrompt(const Tokenizer& tokenizer, std::string_view text);
// How a chat is rendered beyond its messages: transformers' and vLLM's chat
// controls.
struct ChatPromptOptions {
  // End with the template's assistant header.
  bool add_generation_prompt = true;
  // Leave the final message open for the reply to go on with it: the render
  // is cut just after the last place its content appears (its stripped
  // content when the template strips it), as transformers does. Not with
  // add_generation_prompt.
  bool continue_final_message = false;
  // More template variables, a JSON object (e.g. {"enable_thinking": false},
  // {"date_string": "1 Jan 2030"}).
  JsonValue template_kwargs = JsonValue::Object();
  // The template's `tools`: OpenAI's array of tool definitions, as given
  // (null: None).
  JsonValue tools;
};

// The names a chat template is given by Seer itself, which template_kwargs
// may not set: INVALID_ARGUMENT naming "chat_template_kwargs.<name>" for the
// first one `kwargs` holds, or for a `kwargs` that is not an object.
Status CheckTemplateKwargs(const JsonValue& kwargs);

// `messages`: a JSON array of {"role", "content"} objects.
StatusOr<std::vector<int32_t>> EncodeChatPrompt(const Tokenizer& tokenizer, const JsonValue& messages,
                                                const ChatPromptOptions& options = {});

// The ids that end a text generation: the tokenizer's eos_token_id, and
// generation_config.json's eos_token_id (a number or a list; Llama 3.1's
// instruct models end a turn with <|eot_id|>) when `model_dir` holds one.
// Errors only for a generation_config.json that is not valid JSON.
StatusOr<std::vector<int32_t>> EndOfTextIds(const Tokenizer& tokenizer, const std::string& model_dir);

}  // namespace seer
