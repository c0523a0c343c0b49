// Regular expressions as grammar rules, for vLLM's guided_regex and JSON
// Schema's "pattern": the text must match the whole expression (Python's
// re.fullmatch). The syntax is the common subset of Python's re and
// ECMAScript: literals and escapes, ".", classes, groups, alternation and
// the greedy or lazy quantifiers; see regex_grammar.cc for the exact list.
// Backreferences, lookaround, anchors inside the expression and the like
// are refused with an error that names the construct and its offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"
#include "text/grammar.h"

namespace seer {

// The most a bounded quantifier ({m,n}) may count; bigger counts are refused.
inline constexpr int kMaxRegexRepeat = 256;
// The longest pattern accepted, in bytes.
inline constexpr size_t kMaxRegexPatternBytes = 16 * 1024;
// How deeply groups may nest. Real patterns nest a few levels; the bound
// keeps the parser's recursion shallow, and keeps nested quantified groups,
// whose every level multiplies the places a text can be in, within the
// stacks GrammarMatcher keeps (at 48 levels of ((...|b){2}c it already has
// to drop some).
inline constexpr int kMaxRegexNesting = 32;

// Adds rules to `grammar` for the texts that `pattern` matches whole;
// returns the id of the rule that matches them. `name` prefixes the new
// rules' names. A refused pattern adds nothing, except when the grammar
// would grow past its limits: the rules made until then stay, unused.
StatusOr<int32_t> AddRegex(Grammar* grammar, std::string_view pattern, const std::string& name = "regex");

// A grammar whose sentences are exactly the texts `pattern` matches whole.
StatusOr<Grammar> GrammarFromRegex(std::string_view pattern);

}  // namespace seer
