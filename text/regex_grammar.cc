// Regular expressions as grammar rules: a recursive-descent parser builds a
// small tree of the expression, and an emitter turns the tree into rules.
//
// Accepted (the common subset of Python's re and ECMAScript):
//   - literals: any UTF-8 character; escaped punctuation (\. \* \\ \/ \- ...,
//     any ASCII character that is not a letter or digit) and escaped non-ASCII
//     characters stand for themselves;
//   - \n \t \r \f \v, \0 (NUL, when no digit follows), \xHH, \uHHHH;
//   - \d \w \s with their ASCII meanings ([0-9], [A-Za-z0-9_], [ \t\n\r\f\v])
//     and \D \W \S, their complements over all code points. Python's and
//     ECMAScript's Unicode \d \w \s are wider; the ASCII sets are what JSON
//     Schema patterns mean in practice;
//   - "." for any code point but "\n" (Python's meaning; ECMAScript also
//     leaves out "\r", U+2028 and U+2029);
//   - classes [...] and [^...] with ranges (of any code points), escapes
//     (\d \w \s and their complements, \b for backspace), a literal "]" first
//     or escaped, a literal "-" first or last. A "]" right after "[" or "[^"
//     is a literal, as in Python (ECMAScript reads "[]" as an empty class);
//   - groups (...), (?:...), (?P<name>...) and (?<name>...), all plain groups;
//   - alternation |, empty alternatives included;
//   - quantifiers * + ? {m} {m,} {m,n} and their lazy forms; lazy and greedy
//     match the same texts, which is all a grammar knows. Counts above
//     kMaxRegexRepeat are refused;
//   - a "{" that does not start {m}, {m,} or {m,n} is a literal, as in both
//     Python and ECMAScript's web reading (so "a{1,x}" matches "a{1,x}"),
//     except {,n}: Python reads it as {0,n}, ECMAScript as text, so it is
//     refused; a lone "}" is a literal;
//   - "^" as the first byte and "$" as the last: the whole text has to
//     match anyway, so they change nothing.
// Refused, with the construct and its byte offset: backreferences (\1,
// \k<name>, (?P=name)), lookahead and lookbehind, \b \B \A \Z \z \G, "^" or
// "$" anywhere else, inline flags, atomic groups, possessive quantifiers,
// comments (?#...), conditionals, \p{...}, \cX, \U, \N{...}, octal escapes,
// lone surrogates (\uD800), other letter escapes, a quantifier with nothing
// to repeat or a second quantifier on one atom, unbalanced parentheses,
// unterminated or empty classes, a reversed range or one with a class
// escape as an end, invalid UTF-8, patterns longer than
// kMaxRegexPatternBytes and groups nested deeper than kMaxRegexNesting.
//
// The grammar has no left recursion, which the matcher would have to
// explore and drop: a repetition of a part that can match the empty text
// repeats that part's non-empty texts instead ((a?)* becomes (a)*, (a?b?)*
// becomes (ab?|b)*). Every node of the tree is emitted at most twice (its
// texts, and its non-empty texts), so the grammar grows linearly with the
// pattern and its counts.
#include "text/regex_grammar.h"

#include <algorithm>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "text/unicode.h"

namespace seer {
namespace {

// One node of a parsed expression.
struct RegexNode {
  enum class Kind { kEmpty, kText, kClass, kConcat, kAlternation, kRepeat };
  Kind kind = Kind::kEmpty;
  std::string text;  // kText: the UTF-8 bytes of one character
  CodepointRanges ranges;  // kClass: sorted and merged
  std::vector<int32_t> children;  // kConcat, kAlternation; kRepeat: the one repeated
  int min = 0, max = 0;  // kRepeat; max < 0: no bound
  bool nullable = false;  // matches the empty text
};

// Sorted, with overlapping and adjacent ranges merged: one spelling for one
// set, so that equal classes share their rule.
CodepointRanges Merged(CodepointRanges ranges) {
  std::sort(ranges.begin(), ranges.end());
  CodepointRanges out;
  for (const auto& r : ranges) {
    if (!out.empty() && r.first <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, r.second);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

// \d \w \s (ASCII) and their complements \D \W \S.
CodepointRanges ClassEscapeRanges(char letter) {
  CodepointRanges ranges;
  switch (letter) {
    case 'd':
    case 'D': ranges = {{'0', '9'}}; break;
    case 'w':
    case 'W': ranges = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}; break;
    default: ranges = {{'\t', '\r'}, {' ', ' '}}; break;  // \t \n \v \f \r and space
  }
  if (letter == 'D' || letter == 'W' || letter == 'S') ranges = ComplementCodepoints(ranges);
  return ranges;
}

bool IsClassEscape(char c) { return std::string_view("dDwWsS").find(c) != std::string_view::npos; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A quantifier's bounds: * + ? {m} {m,} {m,n}.
struct Count {
  int min = 0;
  int max = 0;  // < 0: no bound
  size_t length = 0;  // bytes, braces included
};

class RegexParser {
 public:
  explicit RegexParser(std::string_view pattern) : pattern_(pattern) {}

  // Parses the whole pattern; returns its root node.
  StatusOr<int32_t> Parse() {
    end_ = pattern_.size();
    // A final "$" is an anchor unless an odd run of backslashes escapes it.
    if (end_ > 0 && pattern_[end_ - 1] == '$') {
      size_t backslashes = 0;
      while (backslashes + 1 < end_ && pattern_[end_ - 2 - backslashes] == '\\') ++backslashes;
      if (backslashes % 2 == 0) --end_;
    }
    if (end_ > 0 && pattern_[0] == '^') pos_ = 1;
    SEER_ASSIGN_OR_RETURN(int32_t root, ParseAlternation(0));
    if (pos_ < end_) return Refuse(pos_, "')'", "has no matching '('");  // nothing else stops the top level
    return root;
  }

  const std::vector<RegexNode>& nodes() const { return nodes_; }

 private:
  bool AtEnd() const { return pos_ >= end_; }
  char Peek() const { return pattern_[pos_]; }

  // "regex: <construct> at byte N <problem>".
  Status Refuse(size_t offset, std::string_view construct, std::string_view problem) const {
    return InvalidArgument("regex: " + std::string(construct) + " at byte " + std::to_string(offset) + " " +
                           std::string(problem));
  }
  Status Unsupported(size_t offset, std::string_view construct) const {
    return Refuse(offset, construct, "is not supported");
  }

  // A new node of `kind`, to be filled in.
  RegexNode& Add(RegexNode::Kind kind, int32_t* id) {
    *id = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back().kind = kind;
    return nodes_.back();
  }
  int32_t Character(char32_t cp) {
    int32_t id;
    unicode::AppendUtf8(cp, &Add(RegexNode::Kind::kText, &id).text);
    return id;
  }
  int32_t Class(CodepointRanges ranges) {
    int32_t id;
    Add(RegexNode::Kind::kClass, &id).ranges = Merged(std::move(ranges));
    return id;
  }
  // kConcat or kAlternation of `children`; one child is itself, none is kEmpty.
  int32_t Combine(RegexNode::Kind kind, std::vector<int32_t> children) {
    int32_t id;
    if (children.empty()) {
      Add(RegexNode::Kind::kEmpty, &id).nullable = true;
      return id;
    }
    if (children.size() == 1) return children[0];
    auto nullable_child = [&](int32_t c) { return nodes_[c].nullable; };
    const bool nullable = kind == RegexNode::Kind::kConcat
                              ? std::all_of(children.begin(), children.end(), nullable_child)
                              : std::any_of(children.begin(), children.end(), nullable_child);
    RegexNode& node = Add(kind, &id);
    node.children = std::move(children);
    node.nullable = nullable;
    return id;
  }

  StatusOr<int32_t> ParseAlternation(int depth) {
    std::vector<int32_t> alternatives;
    while (true) {
      SEER_ASSIGN_OR_RETURN(int32_t alternative, ParseConcatenation(depth));
      alternatives.push_back(alternative);
      if (AtEnd() || Peek() != '|') break;
      ++pos_;
    }
    return Combine(RegexNode::Kind::kAlternation, std::move(alternatives));
  }

  StatusOr<int32_t> ParseConcatenation(int depth) {
    std::vector<int32_t> items;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      SEER_ASSIGN_OR_RETURN(int32_t atom, ParseAtom(depth));
      SEER_ASSIGN_OR_RETURN(atom, ParseQuantifier(atom));
      items.push_back(atom);
    }
    return Combine(RegexNode::Kind::kConcat, std::move(items));
  }

  StatusOr<int32_t> ParseAtom(int depth) {
    const size_t start = pos_;
    switch (Peek()) {
      case '(': return ParseGroup(depth);
      case '[': {
        SEER_ASSIGN_OR_RETURN(CodepointRanges ranges, ParseClass());
        return Class(std::move(ranges));
      }
      case '.': ++pos_; return Class(ComplementCodepoints({{'\n', '\n'}}));
      case '\\': return ParseEscape();
      case '*':
      case '+':
      case '?': return Refuse(start, std::string("'") + Peek() + "'", "has nothing to repeat");
      case '{': {
        SEER_ASSIGN_OR_RETURN(std::optional<Count> count, ReadCount(start));
        if (count) {
          return Refuse(start, "'" + std::string(pattern_.substr(start, count->length)) + "'", "has nothing to repeat");
        }
        ++pos_;  // not a quantifier: a literal brace
        return Character('{');
      }
      case '^': return Refuse(start, "anchor '^'", "is only accepted as the first byte of the pattern");
      case '$': return Refuse(start, "anchor '$'", "is only accepted as the last byte of the pattern");
      default: {
        char32_t cp;
        if (!unicode::DecodeOne(pattern_, &pos_, &cp)) return Refuse(start, "invalid UTF-8", "is not accepted");
        return Character(cp);
      }
    }
  }

  StatusOr<int32_t> ParseGroup(int depth) {
    const size_t open = pos_;
    if (depth >= kMaxRegexNesting) {
      return Refuse(open, "group", "is nested deeper than the limit of " + std::to_string(kMaxRegexNesting));
    }
    ++pos_;  // '('
    if (!AtEnd() && Peek() == '?') SEER_RETURN_IF_ERROR(ParseGroupExtension(open));
    SEER_ASSIGN_OR_RETURN(int32_t inner, ParseAlternation(depth + 1));
    if (AtEnd()) return Refuse(open, "'('", "is never closed");
    ++pos_;  // ')'
    return inner;
  }

  // After "(?": accepts "(?:", "(?P<name>" and "(?<name>"; refuses the rest.
  Status ParseGroupExtension(size_t open) {
    const std::string_view rest = pattern_.substr(pos_, end_ - pos_);
    auto starts = [&](std::string_view prefix) { return rest.substr(0, prefix.size()) == prefix; };
    if (starts("?:")) {
      pos_ += 2;
      return OkStatus();
    }
    if (starts("?=") || starts("?!")) return Unsupported(open, "lookahead (" + std::string(rest.substr(0, 2)));
    if (starts("?<=") || starts("?<!")) return Unsupported(open, "lookbehind (" + std::string(rest.substr(0, 3)));
    if (starts("?P=")) return Unsupported(open, "backreference (?P=");
    if (starts("?>")) return Unsupported(open, "atomic group (?>");
    if (starts("?#")) return Unsupported(open, "comment (?#");
    if (starts("?(")) return Unsupported(open, "conditional group (?(");
    if (starts("?P<") || starts("?<")) {
      pos_ += starts("?P<") ? 3 : 2;
      const size_t name_start = pos_;
      while (!AtEnd() && (IsAsciiLetter(Peek()) || IsDigit(Peek()) || Peek() == '_')) ++pos_;
      const std::string name(pattern_.substr(name_start, pos_ - name_start));
      if (name.empty() || IsDigit(name[0]) || AtEnd() || Peek() != '>') {
        return Refuse(open, "group name", "is not a name of ASCII letters, digits and '_' closed by '>'");
      }
      if (!group_names_.insert(name).second) return Refuse(open, "group name '" + name + "'", "is used twice");
      ++pos_;  // '>'
      return OkStatus();
    }
    if (starts("?P")) return Unsupported(open, "group extension (" + std::string(rest.substr(0, 3)));
    if (rest.size() >= 2 && (IsAsciiLetter(rest[1]) || rest[1] == '-')) {
      return Unsupported(open, "inline flag (" + std::string(rest.substr(0, 2)));
    }
    return Unsupported(open, "group extension (" + std::string(rest.substr(0, std::min<size_t>(rest.size(), 2))));
  }

  // Applies the quantifier after `atom`, if any.
  StatusOr<int32_t> ParseQuantifier(int32_t atom) {
    const size_t start = pos_;
    SEER_ASSIGN_OR_RETURN(std::optional<Count> count, ReadQuantifier());
    if (!count) return atom;
    if (!AtEnd() && Peek() == '?') {
      ++pos_;  // lazy: the same texts
    } else if (!AtEnd() && Peek() == '+') {
      return Unsupported(start,
                         "possessive quantifier '" + std::string(pattern_.substr(start, pos_ + 1 - start)) + "'");
    }
    const size_t second = pos_;
    SEER_ASSIGN_OR_RETURN(std::optional<Count> again, ReadQuantifier());
    if (again) {
      return Refuse(second, "quantifier '" + std::string(pattern_.substr(second, pos_ - second)) + "'",
                    "repeats a quantifier (multiple repeat)");
    }
    if (count->min == 1 && count->max == 1) return atom;
    const bool nullable = count->min == 0 || nodes_[atom].nullable;
    int32_t id;
    RegexNode& repeat = Add(RegexNode::Kind::kRepeat, &id);
    repeat.children = {atom};
    repeat.min = count->min;
    repeat.max = count->max;
    repeat.nullable = nullable;
    return id;
  }

  // Reads * + ? or a counted quantifier at pos_; nullopt (and no move) when
  // there is none.
  StatusOr<std::optional<Count>> ReadQuantifier() {
    if (AtEnd()) return std::optional<Count>();
    switch (Peek()) {
      case '*': ++pos_; return std::optional<Count>(Count{0, -1, 1});
      case '+': ++pos_; return std::optional<Count>(Count{1, -1, 1});
      case '?': ++pos_; return std::optional<Count>(Count{0, 1, 1});
      case '{': {
        SEER_ASSIGN_OR_RETURN(std::optional<Count> count, ReadCount(pos_));
        if (count) pos_ += count->length;
        return count;
      }
      default: return std::optional<Count>();
    }
  }

  // Reads {m}, {m,} or {m,n} at pattern_[at] == '{' without moving; nullopt
  // when the brace starts none of them (it is then a literal).
  StatusOr<std::optional<Count>> ReadCount(size_t at) const {
    size_t p = at + 1;
    // Digits as a number, saturated far above any limit.
    auto read_number = [&](bool* any) {
      long value = 0;
      *any = false;
      while (p < end_ && IsDigit(pattern_[p])) {
        value = std::min(value * 10 + (pattern_[p] - '0'), 1'000'000L);
        *any = true;
        ++p;
      }
      return value;
    };
    bool has_min = false, has_max = false;
    const long min = read_number(&has_min);
    long max = min;
    bool comma = false;
    if (p < end_ && pattern_[p] == ',') {
      comma = true;
      ++p;
      max = read_number(&has_max);
    }
    if (p >= end_ || pattern_[p] != '}') return std::optional<Count>();
    const std::string text(pattern_.substr(at, p + 1 - at));
    if (!has_min) {
      if (!comma) return std::optional<Count>();  // "{}" is text in both dialects
      return Refuse(at, "quantifier '" + text + "'",
                    "is ambiguous (Python reads {,n} as {0,n}, ECMAScript as text); write {0,n} or escape the brace");
    }
    if (min > kMaxRegexRepeat || (has_max && max > kMaxRegexRepeat)) {
      return Refuse(at, "quantifier '" + text + "'", "counts above the limit of " + std::to_string(kMaxRegexRepeat));
    }
    if (comma && !has_max) max = -1;
    if (max >= 0 && min > max) return Refuse(at, "quantifier '" + text + "'", "has its minimum above its maximum");
    return std::optional<Count>(Count{static_cast<int>(min), static_cast<int>(max), p + 1 - at});
  }

  // An escape outside a class, at pos_ == '\\'.
  StatusOr<int32_t> ParseEscape() {
    const size_t start = pos_;
    if (start + 1 >= pattern_.size()) return Refuse(start, "'\\'", "ends the pattern with nothing to escape");
    const char c = pattern_[start + 1];
    if (IsClassEscape(c)) {
      pos_ += 2;
      return Class(ClassEscapeRanges(c));
    }
    if (std::string_view("bBAZzG").find(c) != std::string_view::npos) {
      return Unsupported(start, std::string("anchor \\") + c);
    }
    SEER_ASSIGN_OR_RETURN(char32_t cp, ParseCharacterEscape());
    return Character(cp);
  }

  // An escape that stands for one character, at pos_ == '\\', in or out of a
  // class (\b, backspace in a class, is handled by the class).
  StatusOr<char32_t> ParseCharacterEscape() {
    const size_t start = pos_;
    if (start + 1 >= pattern_.size()) return Refuse(start, "'\\'", "ends the pattern with nothing to escape");
    const char c = pattern_[start + 1];
    pos_ += 2;
    switch (c) {
      case 'n': return char32_t{'\n'};
      case 't': return char32_t{'\t'};
      case 'r': return char32_t{'\r'};
      case 'f': return char32_t{'\f'};
      case 'v': return char32_t{'\v'};
      case '0':
        if (pos_ < pattern_.size() && IsDigit(pattern_[pos_])) {
          return Unsupported(start, "octal escape \\0" + std::string(1, pattern_[pos_]));
        }
        return char32_t{0};
      case 'x':
      case 'u': {
        const size_t digits = c == 'x' ? 2 : 4;
        char32_t cp = 0;
        for (size_t i = 0; i < digits; ++i) {
          const int v = pos_ + i < end_ ? HexValue(pattern_[pos_ + i]) : -1;
          if (v < 0) {
            return Refuse(start, std::string("escape \\") + c,
                          "needs exactly " + std::to_string(digits) + " hexadecimal digits");
          }
          cp = cp * 16 + static_cast<char32_t>(v);
        }
        pos_ += digits;
        if (cp >= 0xD800 && cp <= 0xDFFF) {
          return Refuse(start, "surrogate escape " + std::string(pattern_.substr(start, 6)),
                        "is not a character of UTF-8 text; write the character itself");
        }
        return cp;
      }
      default: break;
    }
    if (IsDigit(c)) return Unsupported(start, std::string("backreference \\") + c);
    if (c == 'k') return Unsupported(start, "backreference \\k");
    if (c == 'p' || c == 'P') return Unsupported(start, std::string("Unicode property \\") + c);
    if (IsAsciiLetter(c)) return Unsupported(start, std::string("escape \\") + c);
    // Punctuation, space or a non-ASCII character: itself.
    char32_t cp;
    pos_ = start + 1;
    if (!unicode::DecodeOne(pattern_, &pos_, &cp)) return Refuse(pos_, "invalid UTF-8", "is not accepted");
    return cp;
  }

  // A class [...] or [^...] at pos_; returns the code points it matches.
  StatusOr<CodepointRanges> ParseClass() {
    const size_t open = pos_;
    ++pos_;  // '['
    const bool negated = !AtEnd() && Peek() == '^';
    if (negated) ++pos_;
    const size_t first = pos_;
    CodepointRanges ranges;
    while (true) {
      if (AtEnd()) {
        if (first < end_ && pattern_[first] == ']') {
          return Refuse(open, negated ? "empty class '[^]'" : "empty class '[]'",
                        "is not supported (a ']' right after '[' is a literal, and this class is never closed)");
        }
        return Refuse(open, "class '['", "is never closed");
      }
      if (Peek() == ']' && pos_ != first) {
        ++pos_;
        break;
      }
      const size_t item = pos_;
      std::optional<CodepointRanges> set;
      SEER_ASSIGN_OR_RETURN(char32_t lo, ParseClassCharacter(&set));
      const bool dash_range = !AtEnd() && Peek() == '-' && pos_ + 1 < end_ && pattern_[pos_ + 1] != ']';
      if (set) {
        if (dash_range) return Refuse(item, "range", "has a class escape as an end");
        ranges.insert(ranges.end(), set->begin(), set->end());
        continue;
      }
      if (!dash_range) {
        ranges.emplace_back(lo, lo);
        continue;
      }
      ++pos_;  // '-'
      std::optional<CodepointRanges> hi_set;
      SEER_ASSIGN_OR_RETURN(char32_t hi, ParseClassCharacter(&hi_set));
      if (hi_set) return Refuse(item, "range", "has a class escape as an end");
      if (lo > hi) {
        return Refuse(item, "range '" + std::string(pattern_.substr(item, pos_ - item)) + "'",
                      "has its start above its end");
      }
      ranges.emplace_back(lo, hi);
    }
    return negated ? ComplementCodepoints(std::move(ranges)) : Merged(std::move(ranges));
  }

  // One character of a class at pos_, or, for \d \w \s \D \W \S, the set it
  // stands for (in `set`).
  StatusOr<char32_t> ParseClassCharacter(std::optional<CodepointRanges>* set) {
    const size_t start = pos_;
    if (Peek() != '\\') {
      char32_t cp;
      if (!unicode::DecodeOne(pattern_, &pos_, &cp)) return Refuse(start, "invalid UTF-8", "is not accepted");
      return cp;
    }
    const char c = start + 1 < pattern_.size() ? pattern_[start + 1] : '\0';
    if (IsClassEscape(c)) {
      pos_ += 2;
      *set = ClassEscapeRanges(c);
      return char32_t{0};
    }
    if (c == 'b') {  // backspace, in a class
      pos_ += 2;
      return char32_t{'\b'};
    }
    if (std::string_view("BAZzG").find(c) != std::string_view::npos) {
      return Unsupported(start, std::string("escape \\") + c + " in a class");
    }
    return ParseCharacterEscape();
  }

  std::string_view pattern_;
  size_t pos_ = 0;
  size_t end_ = 0;  // the pattern's end, before a final "$" anchor
  std::vector<RegexNode> nodes_;
  std::set<std::string> group_names_;
};

// Turns parsed nodes into grammar rules.
class RegexEmitter {
 public:
  RegexEmitter(Grammar* grammar, const std::vector<RegexNode>& nodes, const std::string& name)
      : grammar_(grammar), nodes_(nodes), name_(name), texts_(nodes.size()), non_empty_texts_(nodes.size()) {}

  // The texts that `node` matches, as symbols to put in a sequence.
  Grammar::Sequence Emit(int32_t node) {
    if (texts_[node]) return *texts_[node];
    const RegexNode& n = nodes_[node];
    Grammar::Sequence seq;
    switch (n.kind) {
      case RegexNode::Kind::kEmpty: break;
      case RegexNode::Kind::kText: seq = Grammar::Text(n.text); break;
      case RegexNode::Kind::kClass: seq = EmitClass(n.ranges); break;
      case RegexNode::Kind::kConcat:
        for (int32_t c : n.children) {
          const Grammar::Sequence part = Emit(c);
          seq.insert(seq.end(), part.begin(), part.end());
        }
        break;
      case RegexNode::Kind::kAlternation: {
        std::vector<Grammar::Sequence> alternatives;
        for (int32_t c : n.children) alternatives.push_back(Emit(c));
        seq = Choice(std::move(alternatives));
        break;
      }
      case RegexNode::Kind::kRepeat: seq = EmitRepeat(n); break;
    }
    texts_[node] = seq;
    return seq;
  }

  // Whether a count would have taken the grammar past its limit of rules
  // (the rest of its rules were then not made: the grammar is refused).
  bool too_large() const { return too_large_; }

 private:
  // The non-empty texts that `node` matches; nullopt when it matches none.
  // For a node that cannot match the empty text, that is Emit(node).
  std::optional<Grammar::Sequence> EmitNonEmpty(int32_t node) {
    const RegexNode& n = nodes_[node];
    if (!n.nullable) return Emit(node);
    if (non_empty_texts_[node].done) return non_empty_texts_[node].seq;
    std::optional<Grammar::Sequence> seq;
    switch (n.kind) {
      case RegexNode::Kind::kEmpty:
      case RegexNode::Kind::kText:
      case RegexNode::Kind::kClass: break;  // never nullable but kEmpty, which has no non-empty text
      case RegexNode::Kind::kConcat: seq = ConcatNonEmpty(n.children); break;
      case RegexNode::Kind::kAlternation: {
        std::vector<Grammar::Sequence> alternatives;
        for (int32_t c : n.children) {
          if (std::optional<Grammar::Sequence> alt = EmitNonEmpty(c)) alternatives.push_back(std::move(*alt));
        }
        if (!alternatives.empty()) seq = Choice(std::move(alternatives));
        break;
      }
      case RegexNode::Kind::kRepeat: {
        // X{m,n} less the empty text is X'{1,n}, X' being X's non-empty texts.
        std::optional<Grammar::Sequence> body = EmitNonEmpty(n.children[0]);
        if (body && n.max != 0) seq = Repetition(OneSymbol(*body), 1, n.max);
        break;
      }
    }
    non_empty_texts_[node] = {true, seq};
    return seq;
  }

  // The non-empty texts of c[0] c[1] ... c[k-1], every c[i] nullable: the
  // first non-empty part is some c[i], after which anything may follow.
  // Built from the back: rest = c[i+1..] whole, rest_non_empty = c[i+1..]
  // less the empty text.
  std::optional<Grammar::Sequence> ConcatNonEmpty(const std::vector<int32_t>& children) {
    Grammar::Sequence rest;
    std::optional<Grammar::Sequence> rest_non_empty;
    for (size_t i = children.size(); i-- > 0;) {
      std::vector<Grammar::Sequence> alternatives;
      if (std::optional<Grammar::Sequence> head = EmitNonEmpty(children[i])) {
        head->insert(head->end(), rest.begin(), rest.end());
        alternatives.push_back(std::move(*head));
      }
      if (rest_non_empty) alternatives.push_back(std::move(*rest_non_empty));
      rest_non_empty.reset();
      if (!alternatives.empty()) rest_non_empty = Choice(std::move(alternatives));
      if (i == 0) break;
      Grammar::Sequence whole = Emit(children[i]);
      whole.insert(whole.end(), rest.begin(), rest.end());
      rest = whole.size() > 1 ? Grammar::Sequence{OneSymbol(whole)} : whole;  // one symbol per alternative above
    }
    return rest_non_empty;
  }

  Grammar::Sequence EmitRepeat(const RegexNode& n) {
    if (n.max == 0) return {};
    const int32_t child = n.children[0];
    if (!nodes_[child].nullable) {
      const Grammar::Sequence body = Emit(child);
      return Repetition(OneSymbol(body), n.min, n.max);
    }
    // X{m,n} with X nullable is X'{0,n}: each of the m may be empty.
    std::optional<Grammar::Sequence> body = EmitNonEmpty(child);
    if (!body) return {};  // X matches only the empty text
    return Repetition(OneSymbol(*body), 0, n.max);
  }

  // `body` min to max times (max < 0: no bound). `body` never matches the
  // empty text, so the rules have no left recursion.
  Grammar::Sequence Repetition(const Grammar::Symbol& body, int min, int max) {
    Grammar::Sequence seq(static_cast<size_t>(min), body);
    // A bounded count is a chain of max - min rules; a hostile pattern of
    // many counts is refused before it builds hundreds of thousands.
    if (too_large_ || grammar_->rule_count() + std::max(max - min, 1) > Grammar::kMaxRules) {
      too_large_ = true;
      return seq;
    }
    if (max < 0) {
      seq.push_back(Grammar::Ref(grammar_->Star(NewName("star"), {body})));
    } else if (max - min == 1) {
      seq.push_back(Grammar::Ref(grammar_->RuleOf(NewName("opt"), {{body}, {}})));
    } else if (max > min) {
      seq.push_back(Grammar::Ref(grammar_->Repeat(NewName("repeat"), {body}, 0, max - min)));
    }
    return seq;
  }

  // One symbol for `seq`: itself when it is one symbol, else a rule. A
  // quantifier then repeats a symbol, never a copy of a long sequence.
  Grammar::Symbol OneSymbol(const Grammar::Sequence& seq) {
    if (seq.size() == 1) return seq[0];
    return Grammar::Ref(grammar_->RuleOf(NewName("group"), {seq}));
  }

  // Any of `alternatives`: one byte set when each is one byte, else a rule.
  Grammar::Sequence Choice(std::vector<Grammar::Sequence> alternatives) {
    if (alternatives.size() == 1) return std::move(alternatives[0]);
    ByteSet bytes;
    bool all_single_bytes = true;
    for (const Grammar::Sequence& alt : alternatives) {
      all_single_bytes = all_single_bytes && alt.size() == 1 && alt[0].rule < 0;
      if (all_single_bytes) bytes.Add(alt[0].bytes);
    }
    if (all_single_bytes) return {Grammar::Bytes(bytes)};
    return {Grammar::Ref(grammar_->RuleOf(NewName("alt"), alternatives))};
  }

  Grammar::Sequence EmitClass(const CodepointRanges& ranges) {
    return grammar_->Codepoints(ranges, [&] { return NewName("class"); });
  }

  std::string NewName(std::string_view kind) { return name_ + "_" + std::string(kind) + std::to_string(++rules_made_); }

  struct NonEmptyTexts {
    bool done = false;
    std::optional<Grammar::Sequence> seq;
  };

  Grammar* grammar_;
  const std::vector<RegexNode>& nodes_;
  std::string name_;
  int rules_made_ = 0;
  bool too_large_ = false;
  std::vector<std::optional<Grammar::Sequence>> texts_;  // Emit's results, by node
  std::vector<NonEmptyTexts> non_empty_texts_;  // EmitNonEmpty's, by node
};

}  // namespace

StatusOr<int32_t> AddRegex(Grammar* grammar, std::string_view pattern, const std::string& name) {
  if (pattern.size() > kMaxRegexPatternBytes) {
    return InvalidArgument("regex: the pattern is " + std::to_string(pattern.size()) + " bytes, above the limit of " +
                           std::to_string(kMaxRegexPatternBytes));
  }
  RegexParser parser(pattern);
  SEER_ASSIGN_OR_RETURN(int32_t root, parser.Parse());
  RegexEmitter emitter(grammar, parser.nodes(), name);
  const int32_t rule = grammar->RuleOf(name, {emitter.Emit(root)});
  if (emitter.too_large()) {
    return InvalidArgument("regex: the grammar for this pattern is too large (at most " +
                           std::to_string(Grammar::kMaxRules) + " rules); use smaller counts");
  }
  // Validate is the only way to learn whether the grammar went over its
  // limits, and it wants a root: lend it ours, then put the caller's back.
  const int32_t caller_root = grammar->root();
  grammar->set_root(rule);
  const Status valid = grammar->Validate();
  grammar->set_root(caller_root);
  if (!valid.ok()) return valid.WithContext("regex");
  return rule;
}

StatusOr<Grammar> GrammarFromRegex(std::string_view pattern) {
  Grammar grammar;
  SEER_ASSIGN_OR_RETURN(int32_t root, AddRegex(&grammar, pattern));
  grammar.set_root(root);
  return grammar;
}

}  // namespace seer
