// libFuzzer target: the Jinja chat-template parser and renderer on arbitrary
// templates. Parsing and rendering must return a status for every input
// (no crash, no hang, no UB, output bounded).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "base/json.h"
#include "text/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto t = seer::ChatTemplate::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!t.ok()) {
    if (t.status().message().empty()) std::abort();
    return 0;
  }
  static const seer::JsonValue* messages = new seer::JsonValue(*seer::JsonValue::Parse(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi \u00e9"},
          {"role": "assistant", "content": "Hello", "tool_calls": [{"id": "abc123XYZ", "type": "function",
           "function": {"name": "f", "arguments": {"x": 1}}}]}, {"role": "user", "content": "Bye"}])"));
  seer::ChatTemplateOptions opts;
  opts.bos_token = "<s>";
  opts.eos_token = "</s>";
  std::tm date{};
  opts.now = date;
  auto text = t->Render(*messages, opts);
  if (!text.ok() && text.status().message().empty()) std::abort();
  return 0;
}
