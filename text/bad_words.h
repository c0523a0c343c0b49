// vLLM's bad_words: each word, as the token sequences a reply could spell it
// with, for SamplingParams::bad_words.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "text/tokenizer.h"

namespace seer {

// vLLM's rule (SamplingParams.update_from_tokenizer): each word with its
// leading whitespace stripped (as Python's str.lstrip) is encoded without special tokens, once as it
// is and once after a space; the spaced form is kept too when it starts
// with a different token and has as many tokens, so that the word is banned
// at the start of the text and after a space. A word that encodes to no
// tokens bans nothing.
StatusOr<std::vector<std::vector<int32_t>>> BadWordSequences(const Tokenizer& tokenizer,
                                                             const std::vector<std::string>& words);

}  // namespace seer
