#include "text/prompt.h"

#include <algorithm>
#include <filesystem>

#include "text/chat_template.h"

namespace seer {

StatusOr<std::vector<int32_t>> EncodeTextPrompt(const Tokenizer& tokenizer, std::string_view text) {
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text, /*add_special_tokens=*/true));
  if (ids.empty()) return InvalidArgument("the prompt is empty (no tokens)");
  return ids;
}

StatusOr<std::vector<ChatTurn>> ParseChatMessages(const JsonValue& messages, std::string* field) {
  auto refuse = [&](const std::string& where, const std::string& what) -> Status {
    if (field != nullptr) *field = where;
    return InvalidArgument(where + ": " + what);
  };
  if (!messages.is_array() || messages.as_array().empty()) {
    return refuse("messages", "a non-empty array of {role, content} is required");
  }
  std::vector<ChatTurn> turns;
  for (size_t i = 0; i < messages.as_array().size(); ++i) {
    const JsonValue& m = messages.as_array()[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return refuse(where, "must be an object with a role and a content");
    const JsonValue* role = m.Find("role");
    if (role == nullptr || !role->is_string()) return refuse(where + ".role", "must be a string");
    ChatTurn turn{role->as_string(), ""};
    // A turn that called tools cannot be passed on without its calls.
    for (const char* calls : {"tool_calls", "function_call"}) {
      const JsonValue* c = m.Find(calls);
      if (c != nullptr && !c->is_null() && !(c->is_array() && c->as_array().empty())) {
        return refuse(where + "." + calls, "tool calls are not supported");
      }
    }
    const JsonValue* content = m.Find("content");
    if (content == nullptr || content->is_null()) {
      // An assistant turn that only called a tool has no content.
    } else if (content->is_string()) {
      turn.content = content->as_string();
    } else if (content->is_array()) {
      for (size_t p = 0; p < content->as_array().size(); ++p) {
        const JsonValue& part = content->as_array()[p];
        const JsonValue* type = part.is_object() ? part.Find("type") : nullptr;
        const JsonValue* text = part.is_object() ? part.Find("text") : nullptr;
        if (type == nullptr || !type->is_string() || type->as_string() != "text" || text == nullptr ||
            !text->is_string()) {
          return refuse(where + ".content", "part " + std::to_string(p) +
                                                ": only text parts ({\"type\": \"text\", \"text\": ...}) "
                                                "are supported");
        }
        turn.content += text->as_string();
      }
    } else {
      return refuse(where + ".content", "must be a string, null or an array of text parts");
    }
    turns.push_back(std::move(turn));
  }
  return turns;
}

JsonValue ChatTurnsJson(const std::vector<ChatTurn>& turns) {
  JsonValue out = JsonValue::Array();
  for (const ChatTurn& t : turns) {
    JsonValue m = JsonValue::Object();
    m.Set("role", JsonValue::String(t.role));
    m.Set("content", JsonValue::String(t.content));
    out.Append(std::move(m));
  }
  return out;
}

Status CheckTemplateKwargs(const JsonValue& kwargs) {
  if (!kwargs.is_object()) return InvalidArgument("chat_template_kwargs: must be a JSON object");
  for (const char* reserved :
       {"messages", "tools", "documents", "add_generation_prompt", "raise_exception", "strftime_now"}) {
    if (kwargs.Find(reserved) != nullptr) {
      return InvalidArgument("chat_template_kwargs." + std::string(reserved) +
                             ": the template's own variable; it cannot be set here");
    }
  }
  return OkStatus();
}

StatusOr<std::vector<int32_t>> EncodeChatPrompt(const Tokenizer& tokenizer, const JsonValue& messages,
                                                const ChatPromptOptions& options) {
  SEER_RETURN_IF_ERROR(CheckTemplateKwargs(options.template_kwargs));
  if (options.continue_final_message && options.add_generation_prompt) {
    return InvalidArgument("continue_final_message: not with add_generation_prompt (set it to false)");
  }
  ChatTemplateOptions render;
  render.add_generation_prompt = options.add_generation_prompt;
  render.extra = options.template_kwargs;
  SEER_ASSIGN_OR_RETURN(std::string rendered, RenderChat(tokenizer, messages, render));
  if (options.continue_final_message) {
    const JsonValue* last = messages.is_array() && !messages.as_array().empty() ? &messages.as_array().back() : nullptr;
    const JsonValue* content = last != nullptr ? last->Find("content") : nullptr;
    std::string final = content != nullptr && content->is_string() ? content->as_string() : std::string();
    size_t at = final.empty() ? std::string::npos : rendered.rfind(final);
    if (at == std::string::npos) {
      // A template may strip a message's whitespace.
      const size_t begin = final.find_first_not_of(" \t\n\r\f\v");
      final = begin == std::string::npos ? std::string()
                                         : final.substr(begin, final.find_last_not_of(" \t\n\r\f\v") + 1 - begin);
      at = final.empty() ? std::string::npos : rendered.rfind(final);
    }
    if (at == std::string::npos) {
      return InvalidArgument(
          "continue_final_message: the final message's content does not appear in the rendered chat");
    }
    rendered.resize(at + final.size());
  }
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(rendered, /*add_special_tokens=*/false));
  if (ids.empty()) return InvalidArgument("the chat renders to no tokens");
  return ids;
}

StatusOr<std::vector<int32_t>> EndOfTextIds(const Tokenizer& tokenizer, const std::string& model_dir) {
  std::vector<int32_t> ids;
  auto add = [&](int64_t id) {
    if (id >= 0 && id < tokenizer.vocab_size() &&
        std::find(ids.begin(), ids.end(), static_cast<int32_t>(id)) == ids.end()) {
      ids.push_back(static_cast<int32_t>(id));
    }
  };
  if (tokenizer.config().eos_token_id) add(*tokenizer.config().eos_token_id);
  if (model_dir.empty()) return ids;
  const std::filesystem::path path = std::filesystem::path(model_dir) / "generation_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return ids;
  SEER_ASSIGN_OR_RETURN(JsonValue config, ReadJsonFile(path.string()));
  const JsonValue* eos = config.Find("eos_token_id");
  if (eos != nullptr && eos->is_integer()) add(eos->as_int64());
  if (eos != nullptr && eos->is_array()) {
    for (const JsonValue& v : eos->as_array()) {
      if (v.is_integer()) add(v.as_int64());
    }
  }
  return ids;
}

}  // namespace seer
