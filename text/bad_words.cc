#include "text/bad_words.h"

#include <string_view>

#include "text/unicode.h"

namespace seer {
namespace {

// Python's str.lstrip(): the leading characters str.isspace() takes (the
// White_Space property, and the separators U+001C to U+001F).
std::string_view LeftStripped(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    char32_t cp = 0;
    if (!unicode::DecodeOne(s, &next, &cp) || !(unicode::IsWhiteSpace(cp) || (cp >= 0x1c && cp <= 0x1f))) break;
    pos = next;
  }
  return s.substr(pos);
}

}  // namespace

StatusOr<std::vector<std::vector<int32_t>>> BadWordSequences(const Tokenizer& tokenizer,
                                                             const std::vector<std::string>& words) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& word : words) {
    const std::string_view bare = LeftStripped(word);
    SEER_ASSIGN_OR_RETURN(std::vector<int32_t> plain, tokenizer.Encode(bare, /*add_special_tokens=*/false));
    SEER_ASSIGN_OR_RETURN(std::vector<int32_t> spaced,
                          tokenizer.Encode(" " + std::string(bare), /*add_special_tokens=*/false));
    if (plain.empty()) continue;
    if (!spaced.empty() && spaced.front() != plain.front() && spaced.size() == plain.size()) {
      out.push_back(std::move(plain));
      out.push_back(std::move(spaced));
    } else {
      out.push_back(std::move(plain));
    }
  }
  return out;
}

}  // namespace seer
