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
    ChatTurn turn;
    turn.role = role->as_string();
    if (const JsonValue* c = m.Find("function_call"); c != nullptr && !c->is_null()) {
      return refuse(where + ".function_call", "the legacy form is not supported; send tool_calls");
    }
    // Calls are an assistant's and a call id a tool's answer's; on other
    // turns they mean nothing and are left out, as vLLM leaves them.
    if (const JsonValue* calls = m.Find("tool_calls");
        turn.role == "assistant" && calls != nullptr && !calls->is_null()) {
      if (!calls->is_array()) return refuse(where + ".tool_calls", "must be an array of calls");
      if (calls->as_array().size() > static_cast<size_t>(kMaxTurnToolCalls)) {
        return refuse(where + ".tool_calls", std::to_string(calls->as_array().size()) + " calls exceed the limit of " +
                                                 std::to_string(kMaxTurnToolCalls));
      }
      for (size_t j = 0; j < calls->as_array().size(); ++j) {
        const JsonValue& c = calls->as_array()[j];
        const std::string at = where + ".tool_calls[" + std::to_string(j) + "]";
        const JsonValue* fn = c.is_object() ? c.Find("function") : nullptr;
        if (fn == nullptr || !fn->is_object()) {
          return refuse(at, "must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}");
        }
        ChatToolCall call;
        if (const JsonValue* id = c.Find("id"); id != nullptr && !id->is_null()) {
          if (!id->is_string()) return refuse(at + ".id", "must be a string");
          call.id = id->as_string();
        }
        const JsonValue* name = fn->Find("name");
        if (name == nullptr || !name->is_string()) return refuse(at + ".function.name", "must be a string");
        call.name = name->as_string();
        const JsonValue* args = fn->Find("arguments");
        if (args != nullptr && !args->is_null() && !args->is_string()) {
          return refuse(at + ".function.arguments", "must be a string (the arguments' JSON)");
        }
        call.arguments = args != nullptr && args->is_string() ? args->as_string() : "{}";
        turn.tool_calls.push_back(std::move(call));
      }
    }
    for (auto [key, out] : {std::pair{"tool_call_id", &turn.tool_call_id}, std::pair{"name", &turn.name}}) {
      const JsonValue* v = m.Find(key);
      if (v == nullptr || v->is_null() || (out == &turn.tool_call_id && turn.role != "tool")) continue;
      if (!v->is_string()) return refuse(where + "." + key, "must be a string");
      *out = v->as_string();
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
    if (!t.tool_calls.empty()) {
      JsonValue calls = JsonValue::Array();
      for (const ChatToolCall& c : t.tool_calls) {
        StatusOr<JsonValue> args = JsonValue::Parse(c.arguments);
        JsonValue fn = JsonValue::Object();
        fn.Set("name", JsonValue::String(c.name));
        fn.Set("arguments", args.ok() ? std::move(*args) : JsonValue::String(c.arguments));
        JsonValue call = JsonValue::Object();
        if (!c.id.empty()) call.Set("id", JsonValue::String(c.id));
        call.Set("type", JsonValue::String("function"));
        call.Set("function", std::move(fn));
        calls.Append(std::move(call));
      }
      m.Set("tool_calls", std::move(calls));
    }
    if (!t.tool_call_id.empty()) m.Set("tool_call_id", JsonValue::String(t.tool_call_id));
    if (!t.name.empty()) m.Set("name", JsonValue::String(t.name));
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
  render.tools = options.tools;
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
