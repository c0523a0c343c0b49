// A small backtracking regex engine for the split patterns of Hugging Face
// tokenizer.json files, with the semantics of Oniguruma (which tokenizers
// uses): leftmost-first alternation, greedy and lazy quantifiers, Unicode
// classes. It supports exactly what those patterns use:
//   alternation |, groups ( ) (?: ) (?i: ), lookahead (?= ) (?! ),
//   classes [...] [^...] with ranges, escapes \s \S \d \D \w \W
//   \p{..} \P{..} \p{^..} (general categories), \r \n \t \f \v \e \a,
//   \xHH \x{H..} \uHHHH, escaped punctuation, the dot, and the quantifiers
//   ? * + {n} {n,} {n,m} {,m} and their lazy forms (?? *? ...).
// Anything else (anchors, backreferences, lookbehind, atomic groups,
// possessive quantifiers, inline flags, scripts) is refused when the pattern
// is compiled, with an error that names the construct and its offset.
//
// Matching works on code points. A search has a step budget proportional to
// the input, so a pathological pattern fails with an error instead of
// running for ever.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace seer {

class Regex {
 public:
  // `pattern` is UTF-8.
  static StatusOr<Regex> Compile(std::string_view pattern);
  // A pattern that matches `literal` exactly (tokenizer.json's {"String": ...}).
  static Regex Literal(std::u32string_view literal);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&);
  ~Regex();

  // All successive non-overlapping matches in text[0..n), as Oniguruma's
  // find_iter gives them (an empty match right after the previous match is
  // skipped by one code point): [start, end) code point offsets.
  Status FindAll(const char32_t* text, size_t n, std::vector<std::pair<uint32_t, uint32_t>>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Program;
  Regex() = default;
  std::string pattern_;
  std::shared_ptr<const Program> program_;
};

}  // namespace seer
