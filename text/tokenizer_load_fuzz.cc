// libFuzzer target: the tokenizer.json loader on arbitrary bytes. Loading
// must return a status for every input (no crash, no hang, no UB); a
// tokenizer that loads must encode and decode a sample without crashing,
// and every id it produces must decode.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto tok = seer::Tokenizer::FromJson(input);
  if (!tok.ok()) {
    if (tok.status().message().empty()) std::abort();  // errors say what is wrong
    return 0;
  }
  for (const char* sample : {"Hello world! 123 \n\n  ünïcödé 你好 😀 <s>", "", " ", "\xE2\x96\x81x"}) {
    auto ids = (*tok)->Encode(sample, true);
    if (!ids.ok()) continue;  // e.g. an unk token missing from the vocab
    for (int32_t id : *ids) {
      if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
    }
    auto text = (*tok)->Decode(*ids, false);
    if (!text.ok()) std::abort();
    seer::IncrementalDecoder inc(**tok);
    std::string all;
    for (int32_t id : *ids) {
      auto piece = inc.Step(id);
      if (!piece.ok()) std::abort();
      all += *piece;
    }
    auto rest = inc.Finish();
    if (!rest.ok() || all + *rest != *text) std::abort();
  }
  return 0;
}
