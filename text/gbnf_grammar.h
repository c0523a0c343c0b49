// GBNF grammars as grammar rules, for vLLM's guided_grammar (and
// structured_outputs.grammar): the reply must be a sentence of the text's
// `root` rule. GBNF is llama.cpp's grammar format (grammars/README.md there),
// which xgrammar's EBNF also reads; the parser follows llama.cpp's
// (src/llama-grammar.cpp), down to where a newline may end a rule. See
// gbnf_grammar.cc for the exact syntax accepted and what is refused.
#pragma once

#include <cstddef>
#include <string_view>

#include "base/status.h"
#include "text/grammar.h"

namespace seer {

// The longest grammar text accepted, in bytes.
inline constexpr size_t kMaxGbnfBytes = 64 * 1024;
// The most a bounded repetition ({m}, {m,}, {m,n}) may count; bigger counts
// are refused (llama.cpp's limit is 2,000 rules; ours keeps a chain of
// optional rules per count small).
inline constexpr int kMaxGbnfRepeat = 256;
// How deeply parentheses may nest: the parser recurses once per level.
inline constexpr int kMaxGbnfNesting = 64;

// A grammar whose sentences are those of the GBNF text's `root` rule (as
// far as GrammarMatcher's bounds follow them: grammar.h; CompileGuide
// factors it so that long lists of alternatives stay within them). Errors
// (InvalidArgument) name the construct and its byte offset in `text`, or
// the rule at fault.
StatusOr<Grammar> GrammarFromGbnf(std::string_view text);

}  // namespace seer
