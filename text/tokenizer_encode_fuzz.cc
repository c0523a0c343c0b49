// libFuzzer target: encoding and decoding with the committed Llama 3,
// Qwen2 and Mistral style tokenizers on arbitrary input. Invalid UTF-8 must
// be refused; valid text must encode; for the byte-level Llama 3 tokenizer
// decode(encode(text)) == text; and the input read as an id stream must
// decode incrementally to exactly Decode(ids).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer.h"
#include "text/unicode.h"

namespace {

struct Tokenizers {
  std::unique_ptr<seer::Tokenizer> llama3, qwen2, mistral;
};

const Tokenizers& Get() {
  static const Tokenizers* t = [] {
    auto* out = new Tokenizers();
    const std::string dir = SEER_FIXTURES_DIR "/tokenizers/";
    auto load = [&](const char* name) {
      auto t = seer::Tokenizer::Load(dir + name);
      if (!t.ok()) std::abort();  // the committed fixtures must load
      return std::move(t).value();
    };
    out->llama3 = load("llama3");
    out->qwen2 = load("qwen2");
    out->mistral = load("mistral");
    return out;
  }();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Tokenizers& t = Get();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = seer::unicode::IsValidUtf8(text);
  for (const seer::Tokenizer* tok : {t.llama3.get(), t.qwen2.get(), t.mistral.get()}) {
    auto ids = tok->Encode(text, false);
    if (ids.ok() != valid) std::abort();
    if (!ids.ok()) continue;
    auto back = tok->Decode(*ids, false);
    if (!back.ok()) std::abort();
    if (tok == t.llama3.get() && *back != text) std::abort();
    // The bytes as an id stream.
    std::vector<int32_t> stream;
    for (size_t i = 0; i + 1 < size && stream.size() < 64; i += 2) {
      int32_t id = (data[i] | data[i + 1] << 8) % tok->vocab_size();
      if (tok->IdToToken(id)) stream.push_back(id);
    }
    for (bool skip : {false, true}) {
      seer::IncrementalDecoder inc(*tok, skip);
      std::string all;
      for (int32_t id : stream) {
        auto piece = inc.Step(id);
        if (!piece.ok() || !seer::unicode::IsValidUtf8(*piece)) std::abort();
        all += *piece;
      }
      auto rest = inc.Finish();
      auto whole = tok->Decode(stream, skip);
      if (!rest.ok() || !whole.ok() || all + *rest != *whole) std::abort();
    }
  }
  return 0;
}
