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

StatusOr<std::vector<int32_t>> EncodeChatPrompt(const Tokenizer& tokenizer, const JsonValue& messages) {
  SEER_ASSIGN_OR_RETURN(std::string rendered, RenderChat(tokenizer, messages));
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
