#include "text/bad_words.h"

#include <string_view>

namespace seer {

StatusOr<std::vector<std::vector<int32_t>>> BadWordSequences(const Tokenizer& tokenizer,
                                                             const std::vector<std::string>& words) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& word : words) {
    std::string_view bare = word;
    while (!bare.empty() && (bare.front() == ' ' || (bare.front() >= '\t' && bare.front() <= '\r'))) {
      bare.remove_prefix(1);
    }
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
