// GBNF as grammar rules: a recursive-descent parser that follows llama.cpp's
// (src/llama-grammar.cpp) and emits rules as it reads, then the checks that
// need the whole grammar (undefined rules, root, left recursion, size).
//
// Accepted:
//   - rules `name ::= alternatives`, names of ASCII letters, digits, '-' and
//     '_' (as llama.cpp's README has it). The sentences are those of
//     `root`. Rules may be used before they are defined and may be unused; a
//     rule defined twice is refused (llama.cpp keeps the last definition
//     silently);
//   - alternatives separated by '|', each a sequence of items, possibly
//     empty (`ws ::= | " "`);
//   - items: string literals "..." (UTF-8 text, escapes below; "" is the
//     empty text), character classes [...] and [^...] of characters and
//     ranges a-z (a '-' first, or last before ']', is itself), '.' (any
//     code point, newline included), rule names, and groups ( ... );
//   - escapes, in literals and classes: \n \r \t \\ \" \[ \] \- and \xHH,
//     \uHHHH, \UHHHHHHHH for a code point, encoded as UTF-8;
//   - a repetition after an item: * + ? {m} {m,} {m,n} (spaces inside the
//     braces allowed), with counts up to kMaxGbnfRepeat. It repeats the
//     whole item: a literal, a class, a name or a group;
//   - '#' comments to the end of the line; spaces and tabs between items.
// Newlines, as in llama.cpp: a rule ends at the end of its line, except that
// a newline may follow "::=" or '|', and any number may stand inside
// parentheses. So an alternative on the next line must be written after a
// '|' that ends the line before, or inside parentheses; a line that starts
// with '|' is refused. A rule ends at "\n", "\r\n" or "\r".
//
// A class is a set of code points matched as UTF-8; a negated class matches
// any other code point (never a surrogate, never invalid UTF-8).
//
// Refused, with the byte offset where there is one: what is not above,
// llama.cpp's token items (<[id]>, <token>, !<...>), an empty class [] or
// [^] (llama.cpp drops them, so each matches the empty text), a reversed
// range, a second repetition on one item (llama.cpp nests them; write a
// group), a repetition with nothing before it, {m,n} with m > n, unknown
// escapes, surrogates and code points past U+10FFFF, invalid UTF-8,
// unterminated literals, classes and groups, a rule used but never
// defined, no `root`, texts longer than kMaxGbnfBytes, parentheses nested
// deeper than kMaxGbnfNesting, and grammars past Grammar's limits.
//
// Left recursion (a rule that can reach itself before reading a byte, as
// in `expr ::= expr "+" term | term`) is refused too, as llama.cpp does:
// GrammarMatcher would follow it only a bounded number of levels. The one
// exception is a rule that reaches itself as the last item of an
// alternative (`list ::= item? list | ""`): that reads no further, so the
// matcher loses nothing, and repetitions compile to it.
#include "text/gbnf_grammar.h"

#include <algorithm>
#include <cassert>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "text/unicode.h"

namespace seer {
namespace {

constexpr size_t kNone = std::string_view::npos;

bool IsNameByte(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status ErrorAt(size_t offset, const std::string& what) {
  return InvalidArgument("offset " + std::to_string(offset) + ": " + what);
}

// A repetition's bounds; max < 0: no bound.
struct Count {
  int min = 0;
  int max = 0;
};

class GbnfCompiler {
 public:
  explicit GbnfCompiler(std::string_view text) : text_(text) {}

  StatusOr<Grammar> Compile() && {
    SkipSpace(true);
    if (AtEnd()) return InvalidArgument("the grammar is empty: it has no rules");
    while (!AtEnd()) {
      SEER_RETURN_IF_ERROR(ParseRule());
      SkipSpace(true);
    }
    const RuleInfo* undefined = nullptr;
    for (const auto& [name, info] : rules_) {
      if (info.defined_at == kNone && (undefined == nullptr || info.first_use < undefined->first_use)) {
        undefined = &info;
      }
    }
    if (undefined != nullptr) {
      return ErrorAt(undefined->first_use,
                     "rule '" + grammar_.rule_name(undefined->id) + "' is used but never defined");
    }
    const auto root = rules_.find("root");
    if (root == rules_.end()) return InvalidArgument("no rule named 'root'");
    grammar_.set_root(root->second.id);
    SEER_RETURN_IF_ERROR(grammar_.Validate());
    SEER_RETURN_IF_ERROR(CheckLeftRecursion());
    return std::move(grammar_);
  }

 private:
  struct RuleInfo {
    int32_t id = -1;
    size_t first_use = kNone;  // offset of the first reference or the definition
    size_t defined_at = kNone;
  };

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  // What stands at `at`, for messages.
  std::string Found(size_t at) const {
    if (at >= text_.size()) return "the end of the grammar";
    const unsigned char c = static_cast<unsigned char>(text_[at]);
    if (c > 0x20 && c < 0x7F) return std::string("'") + static_cast<char>(c) + "'";
    if (c == ' ') return "a space";
    if (c == '\n') return "a newline";
    char buf[16];
    std::snprintf(buf, sizeof(buf), "byte 0x%02X", c);
    return buf;
  }

  // Spaces, tabs and comments; newlines too when `newline_ok`.
  void SkipSpace(bool newline_ok) {
    while (!AtEnd()) {
      const char c = Peek();
      if (c == '#') {
        while (!AtEnd() && Peek() != '\n' && Peek() != '\r') ++pos_;
      } else if (c == ' ' || c == '\t' || (newline_ok && (c == '\n' || c == '\r'))) {
        ++pos_;
      } else {
        return;
      }
    }
  }

  std::string ReadName() {
    const size_t start = pos_;
    while (!AtEnd() && IsNameByte(Peek())) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  // The rule named `name`, made at its first sight (at `offset`).
  RuleInfo& Lookup(const std::string& name, size_t offset) {
    auto [it, added] = rules_.try_emplace(name);
    if (added) {
      it->second.id = grammar_.AddRule(name);
      it->second.first_use = offset;
    }
    return it->second;
  }

  std::string NewName(const std::string& rule, std::string_view kind) {
    return rule + "_" + std::string(kind) + std::to_string(++rules_made_);
  }

  Status ParseRule() {
    const size_t start = pos_;
    const std::string name = ReadName();
    if (name.empty()) {
      // llama.cpp ends a rule at a newline, so an alternative cannot start a line.
      const std::string hint = Peek() == '|' ? " (end the line before with '|' instead)" : "";
      return ErrorAt(start, "expected a rule name, found " + Found(start) + hint);
    }
    SkipSpace(false);
    if (text_.substr(pos_, 3) != "::=") {
      return ErrorAt(pos_, "expected '::=' after rule name '" + name + "', found " + Found(pos_));
    }
    RuleInfo& info = Lookup(name, start);
    if (info.defined_at != kNone) {
      return ErrorAt(start,
                     "rule '" + name + "' is defined twice (first at offset " + std::to_string(info.defined_at) + ")");
    }
    info.defined_at = start;
    const int32_t id = info.id;
    pos_ += 3;
    SkipSpace(true);
    SEER_ASSIGN_OR_RETURN(std::vector<Grammar::Sequence> alternatives, ParseAlternatives(name, 0, false));
    for (const Grammar::Sequence& alternative : alternatives) grammar_.AddAlternative(id, alternative);
    if (AtEnd()) return OkStatus();
    if (Peek() == '\r') {
      ++pos_;
      if (!AtEnd() && Peek() == '\n') ++pos_;
      return OkStatus();
    }
    if (Peek() == '\n') {
      ++pos_;
      return OkStatus();
    }
    if (Peek() == ')') return ErrorAt(pos_, "')' has no matching '('");
    return ErrorAt(pos_, "expected a newline to end rule '" + name + "', found " + Found(pos_) +
                             " (a rule goes on past its line only after '|' or inside parentheses)");
  }

  // `nested`: inside parentheses, where newlines are spaces.
  StatusOr<std::vector<Grammar::Sequence>> ParseAlternatives(const std::string& rule, int depth, bool nested) {
    std::vector<Grammar::Sequence> alternatives;
    while (true) {
      SEER_ASSIGN_OR_RETURN(Grammar::Sequence sequence, ParseSequence(rule, depth, nested));
      alternatives.push_back(std::move(sequence));
      if (AtEnd() || Peek() != '|') return alternatives;
      ++pos_;
      SkipSpace(true);
    }
  }

  StatusOr<Grammar::Sequence> ParseSequence(const std::string& rule, int depth, bool nested) {
    Grammar::Sequence sequence;
    size_t last_item = kNone;  // where the last item's symbols start in `sequence`
    bool last_repeated = false;
    while (!AtEnd()) {
      const size_t start = pos_;
      const char c = Peek();
      Grammar::Sequence item;
      if (c == '*' || c == '+' || c == '?' || c == '{') {
        SEER_ASSIGN_OR_RETURN(Count count, ParseCount(nested));
        const std::string spelled = "repetition '" + std::string(text_.substr(start, pos_ - start)) + "'";
        if (last_item == kNone) return ErrorAt(start, spelled + " has nothing to repeat");
        if (last_repeated) {
          return ErrorAt(start, spelled + " follows another repetition; put the repeated part in parentheses");
        }
        const Grammar::Sequence repeated(sequence.begin() + static_cast<std::ptrdiff_t>(last_item), sequence.end());
        sequence.resize(last_item);
        SEER_ASSIGN_OR_RETURN(item, Repetition(rule, repeated, count, start));
        last_repeated = true;
      } else {
        if (c == '"') {
          SEER_ASSIGN_OR_RETURN(item, ParseLiteral());
        } else if (c == '[') {
          SEER_ASSIGN_OR_RETURN(CodepointRanges ranges, ParseClass());
          item = Class(rule, std::move(ranges));
        } else if (c == '.') {
          ++pos_;
          item = Class(rule, ComplementCodepoints({}));
        } else if (c == '(') {
          SEER_ASSIGN_OR_RETURN(item, ParseGroup(rule, depth));
        } else if (IsNameByte(c)) {
          const std::string name = ReadName();
          item = {Grammar::Ref(Lookup(name, start).id)};
        } else if (c == '<' || c == '!') {
          return ErrorAt(start, "token items ('<...>', '!<...>') are not supported");
        } else {
          break;
        }
        last_item = sequence.size();
        last_repeated = false;
      }
      if (sequence.size() + item.size() > static_cast<size_t>(Grammar::kMaxSymbols)) return TooLarge(start);
      sequence.insert(sequence.end(), item.begin(), item.end());
      SkipSpace(nested);
    }
    return sequence;
  }

  Status TooLarge(size_t offset) const {
    return ErrorAt(offset, "the grammar grows past its limits here (at most " + std::to_string(Grammar::kMaxRules) +
                               " rules and " + std::to_string(Grammar::kMaxSymbols) + " symbols); use smaller counts");
  }

  // A repetition at pos_: * + ? {m} {m,} {m,n}.
  StatusOr<Count> ParseCount(bool nested) {
    const size_t start = pos_;
    const char c = Peek();
    ++pos_;
    if (c == '*') return Count{0, -1};
    if (c == '+') return Count{1, -1};
    if (c == '?') return Count{0, 1};
    SkipSpace(nested);
    SEER_ASSIGN_OR_RETURN(const int min, ReadCount());
    SkipSpace(nested);
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      return Count{min, min};
    }
    if (AtEnd() || Peek() != ',') return ErrorAt(pos_, "expected ',' or '}' in the repetition, found " + Found(pos_));
    ++pos_;
    SkipSpace(nested);
    int max = -1;
    if (!AtEnd() && IsDigit(Peek())) {
      SEER_ASSIGN_OR_RETURN(max, ReadCount());
      SkipSpace(nested);
    }
    if (AtEnd() || Peek() != '}') return ErrorAt(pos_, "expected '}' to end the repetition, found " + Found(pos_));
    ++pos_;
    if (max >= 0 && min > max) {
      return ErrorAt(start, "repetition '" + std::string(text_.substr(start, pos_ - start)) +
                                "' has its minimum above its maximum");
    }
    return Count{min, max};
  }

  // The number at pos_ in a repetition.
  StatusOr<int> ReadCount() {
    const size_t first = pos_;
    int value = 0;  // held at kMaxGbnfRepeat + 1 once past the limit
    for (; !AtEnd() && IsDigit(Peek()); ++pos_) value = std::min(value * 10 + (Peek() - '0'), kMaxGbnfRepeat + 1);
    const std::string_view digits = text_.substr(first, pos_ - first);
    if (digits.empty()) return ErrorAt(first, "expected a number in the repetition, found " + Found(first));
    if (value > kMaxGbnfRepeat) {
      return ErrorAt(first,
                     "repetition count " + std::string(digits) + " is more than " + std::to_string(kMaxGbnfRepeat));
    }
    return value;
  }

  // `item` repeated as `count` says; `offset` is the repetition's, for errors.
  StatusOr<Grammar::Sequence> Repetition(const std::string& rule, const Grammar::Sequence& item, Count count,
                                         size_t offset) {
    if (item.empty() || count.max == 0) return Grammar::Sequence{};
    const Grammar::Symbol body =
        item.size() == 1 ? item[0] : Grammar::Ref(grammar_.RuleOf(NewName(rule, "item"), {item}));
    Grammar::Sequence sequence(static_cast<size_t>(count.min), body);
    const int optional = count.max < 0 ? 1 : count.max - count.min;
    // A bounded count is a chain of rules: a text of many counts must not
    // build millions before Validate refuses them.
    if (grammar_.rule_count() + optional + 1 > Grammar::kMaxRules) return TooLarge(offset);
    if (count.max < 0) {
      sequence.push_back(Grammar::Ref(grammar_.Star(NewName(rule, "star"), {body})));
    } else if (optional == 1) {
      sequence.push_back(Grammar::Ref(grammar_.RuleOf(NewName(rule, "opt"), {{body}, {}})));
    } else if (optional > 1) {
      sequence.push_back(Grammar::Ref(grammar_.Repeat(NewName(rule, "repeat"), {body}, 0, optional)));
    }
    return sequence;
  }

  StatusOr<Grammar::Sequence> ParseGroup(const std::string& rule, int depth) {
    const size_t open = pos_;
    if (depth >= kMaxGbnfNesting) {
      return ErrorAt(open, "parentheses nest deeper than the limit of " + std::to_string(kMaxGbnfNesting));
    }
    ++pos_;
    SkipSpace(true);
    SEER_ASSIGN_OR_RETURN(std::vector<Grammar::Sequence> alternatives, ParseAlternatives(rule, depth + 1, true));
    if (AtEnd()) return ErrorAt(open, "'(' is never closed");
    if (Peek() != ')') {
      return ErrorAt(pos_,
                     "expected ')' to close the '(' at offset " + std::to_string(open) + ", found " + Found(pos_));
    }
    ++pos_;
    if (alternatives.size() == 1) return std::move(alternatives[0]);
    // Alternatives of one byte each are one byte set.
    ByteSet bytes;
    for (const Grammar::Sequence& alternative : alternatives) {
      if (alternative.size() != 1 || alternative[0].rule >= 0) {
        return Grammar::Sequence{Grammar::Ref(grammar_.RuleOf(NewName(rule, "group"), alternatives))};
      }
      bytes.Add(alternative[0].bytes);
    }
    return Grammar::Sequence{Grammar::Bytes(bytes)};
  }

  StatusOr<Grammar::Sequence> ParseLiteral() {
    const size_t open = pos_;
    ++pos_;
    std::string text;
    while (true) {
      if (AtEnd()) return ErrorAt(open, "unterminated string literal");
      if (Peek() == '"') break;
      SEER_ASSIGN_OR_RETURN(const char32_t cp, ParseCharacter());
      unicode::AppendUtf8(cp, &text);
    }
    ++pos_;
    return Grammar::Text(text);
  }

  StatusOr<CodepointRanges> ParseClass() {
    const size_t open = pos_;
    ++pos_;
    const bool negated = !AtEnd() && Peek() == '^';
    if (negated) ++pos_;
    CodepointRanges ranges;
    while (true) {
      if (AtEnd()) return ErrorAt(open, "unterminated character class");
      if (Peek() == ']') break;
      const size_t item = pos_;
      SEER_ASSIGN_OR_RETURN(const char32_t lo, ParseCharacter());
      char32_t hi = lo;
      if (pos_ + 1 < text_.size() && Peek() == '-' && text_[pos_ + 1] != ']') {
        ++pos_;
        SEER_ASSIGN_OR_RETURN(hi, ParseCharacter());
        if (lo > hi) {
          return ErrorAt(item,
                         "range '" + std::string(text_.substr(item, pos_ - item)) + "' has its start above its end");
        }
      }
      ranges.emplace_back(lo, hi);
    }
    ++pos_;
    if (ranges.empty()) return ErrorAt(open, negated ? "empty character class '[^]'" : "empty character class '[]'");
    return negated ? ComplementCodepoints(std::move(ranges)) : ranges;
  }

  // One character of a literal or a class: an escape or a UTF-8 character.
  StatusOr<char32_t> ParseCharacter() {
    const size_t start = pos_;
    char32_t cp = 0;
    if (Peek() != '\\') {
      if (!unicode::DecodeOne(text_, &pos_, &cp)) return ErrorAt(start, "invalid UTF-8");
      return cp;
    }
    if (start + 1 >= text_.size()) return ErrorAt(start, "'\\' ends the grammar with nothing to escape");
    const char c = text_[start + 1];
    pos_ += 2;
    switch (c) {
      case 'n': return char32_t{'\n'};
      case 'r': return char32_t{'\r'};
      case 't': return char32_t{'\t'};
      case '\\':
      case '"':
      case '[':
      case ']':
      case '-': return static_cast<char32_t>(c);
      case 'x':
      case 'u':
      case 'U': break;
      default: return ErrorAt(start, "unknown escape '\\' followed by " + Found(start + 1));
    }
    const size_t digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
    for (size_t i = 0; i < digits; ++i) {
      const int v = AtEnd() ? -1 : HexDigit(Peek());
      if (v < 0) {
        return ErrorAt(start,
                       std::string("escape '\\") + c + "' needs " + std::to_string(digits) + " hexadecimal digits");
      }
      cp = cp * 16 + static_cast<char32_t>(v);
      ++pos_;
    }
    const std::string spelled = "escape '" + std::string(text_.substr(start, pos_ - start)) + "'";
    if (cp > 0x10FFFF) return ErrorAt(start, spelled + " is beyond U+10FFFF");
    if (cp >= 0xD800 && cp <= 0xDFFF) return ErrorAt(start, spelled + " is a surrogate, which UTF-8 text cannot hold");
    return cp;
  }

  // One code point of `ranges` (Grammar::Codepoints).
  Grammar::Sequence Class(const std::string& rule, const CodepointRanges& ranges) {
    return grammar_.Codepoints(ranges, [&] { return NewName(rule, "class"); });
  }

  // Refuses a rule that reaches itself before reading a byte, unless as the
  // last item of an alternative (see the file's comment).
  Status CheckLeftRecursion() const {
    const std::vector<Grammar::Symbol>& symbols = grammar_.symbols();
    const int32_t n = grammar_.rule_count();
    const std::vector<bool> nullable = NullableRules();
    // Edges to the rules each rule may enter before reading a byte.
    std::vector<std::vector<int32_t>> first(n);
    for (int32_t r = 0; r < n; ++r) {
      for (int32_t p : grammar_.alternatives(r)) {
        for (; symbols[p].rule >= 0; ++p) {
          const int32_t target = symbols[p].rule;
          if (target != r || symbols[p + 1].rule != Grammar::kEnd) first[r].push_back(target);
          if (!nullable[target]) break;
        }
      }
    }
    // A depth-first search; a rule met again while on the path closes a cycle.
    enum class Mark : uint8_t { kNew, kOnPath, kDone };
    std::vector<Mark> marks(n, Mark::kNew);
    for (int32_t start = 0; start < n; ++start) {
      if (marks[start] != Mark::kNew) continue;
      std::vector<std::pair<int32_t, size_t>> path = {{start, 0}};  // rule, next edge
      marks[start] = Mark::kOnPath;
      while (!path.empty()) {
        auto& [rule, edge] = path.back();
        if (edge == first[rule].size()) {
          marks[rule] = Mark::kDone;
          path.pop_back();
          continue;
        }
        const int32_t next = first[rule][edge++];
        if (marks[next] == Mark::kNew) {
          marks[next] = Mark::kOnPath;
          path.emplace_back(next, 0);
        } else if (marks[next] == Mark::kOnPath) {
          std::vector<int32_t> cycle;
          for (auto it = path.rbegin(); it != path.rend(); ++it) {
            cycle.push_back(it->first);
            if (it->first == next) break;
          }
          std::reverse(cycle.begin(), cycle.end());
          return LeftRecursion(cycle);
        }
      }
    }
    return OkStatus();
  }

  // Which rules match the empty text: a rule is when one of its
  // alternatives is only rules that are. Each alternative of rule
  // references counts those not yet known to, and is told when one becomes.
  std::vector<bool> NullableRules() const {
    const std::vector<Grammar::Symbol>& symbols = grammar_.symbols();
    const int32_t n = grammar_.rule_count();
    std::vector<bool> nullable(n, false);
    std::vector<int32_t> unknown, owner, found;
    std::vector<std::vector<int32_t>> users(n);  // the alternatives that reference a rule, once per reference
    for (int32_t r = 0; r < n; ++r) {
      for (const int32_t start : grammar_.alternatives(r)) {
        int32_t p = start;
        while (symbols[p].rule >= 0) ++p;
        if (symbols[p].rule != Grammar::kEnd) continue;  // reads a byte
        const int32_t alternative = static_cast<int32_t>(owner.size());
        owner.push_back(r);
        unknown.push_back(p - start);
        for (int32_t q = start; q < p; ++q) users[symbols[q].rule].push_back(alternative);
        if (p == start && !nullable[r]) {
          nullable[r] = true;
          found.push_back(r);
        }
      }
    }
    while (!found.empty()) {
      const int32_t r = found.back();
      found.pop_back();
      for (const int32_t alternative : users[r]) {
        if (--unknown[alternative] == 0 && !nullable[owner[alternative]]) {
          nullable[owner[alternative]] = true;
          found.push_back(owner[alternative]);
        }
      }
    }
    return nullable;
  }

  // The error for a cycle of rules, named by the grammar's own rules on it
  // (the rules made for groups and repetitions only reference rules made
  // before them, so every cycle passes through one of the text's rules).
  Status LeftRecursion(const std::vector<int32_t>& cycle) const {
    std::vector<std::string> names;
    size_t defined_at = kNone;
    for (const int32_t r : cycle) {
      const auto it = rules_.find(grammar_.rule_name(r));
      if (it == rules_.end() || it->second.id != r) continue;
      names.push_back(it->first);
      if (defined_at == kNone) defined_at = it->second.defined_at;
    }
    assert(!names.empty());
    std::string path;
    for (const std::string& name : names) path += name + " -> ";
    path += names.front();
    return ErrorAt(defined_at, "rule '" + names.front() + "' is left-recursive (" + path +
                                   " before reading a byte); write the repetition with *, + or {m,n} instead");
  }

  std::string_view text_;
  size_t pos_ = 0;
  Grammar grammar_;
  std::map<std::string, RuleInfo, std::less<>> rules_;
  int rules_made_ = 0;
};

}  // namespace

StatusOr<Grammar> GrammarFromGbnf(std::string_view text) {
  if (text.size() > kMaxGbnfBytes) {
    return InvalidArgument("the grammar is " + std::to_string(text.size()) + " bytes, more than the limit of " +
                           std::to_string(kMaxGbnfBytes));
  }
  return GbnfCompiler(text).Compile();
}

}  // namespace seer
