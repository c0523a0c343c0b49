#include "text/grammar.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "text/unicode.h"

namespace seer {

ByteSet ByteSet::Range(uint8_t lo, uint8_t hi) {
  ByteSet s;
  for (int b = lo; b <= hi; ++b) s.Add(static_cast<uint8_t>(b));
  return s;
}

ByteSet& ByteSet::Add(const ByteSet& other) {
  for (size_t i = 0; i < words_.size(); ++i) words_[i] |= other.words_[i];
  return *this;
}

ByteSet ByteSet::Inverted() const {
  ByteSet s;
  for (size_t i = 0; i < words_.size(); ++i) s.words_[i] = ~words_[i];
  return s;
}

namespace {

constexpr char32_t kMaxCodepoint = 0x10FFFF;
constexpr char32_t kSurrogateFirst = 0xD800, kSurrogateLast = 0xDFFF;

// Sorted, merged, clipped to the Unicode range, surrogates removed.
CodepointRanges Normalized(CodepointRanges ranges) {
  CodepointRanges split;
  for (auto [lo, hi] : ranges) {
    hi = std::min(hi, kMaxCodepoint);
    if (lo > hi) continue;
    if (lo < kSurrogateFirst && hi >= kSurrogateFirst) {
      split.emplace_back(lo, kSurrogateFirst - 1);
      if (hi > kSurrogateLast) split.emplace_back(kSurrogateLast + 1, hi);
    } else if (lo >= kSurrogateFirst && lo <= kSurrogateLast) {
      if (hi > kSurrogateLast) split.emplace_back(kSurrogateLast + 1, hi);
    } else {
      split.emplace_back(lo, hi);
    }
  }
  std::sort(split.begin(), split.end());
  CodepointRanges merged;
  for (auto r : split) {
    if (!merged.empty() && r.first <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

int Utf8Length(char32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

std::array<uint8_t, 4> Utf8Bytes(char32_t c) {
  std::array<uint8_t, 4> b{};
  switch (Utf8Length(c)) {
    case 1: b[0] = static_cast<uint8_t>(c); break;
    case 2:
      b[0] = static_cast<uint8_t>(0xC0 | (c >> 6));
      b[1] = static_cast<uint8_t>(0x80 | (c & 0x3F));
      break;
    case 3:
      b[0] = static_cast<uint8_t>(0xE0 | (c >> 12));
      b[1] = static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F));
      b[2] = static_cast<uint8_t>(0x80 | (c & 0x3F));
      break;
    default:
      b[0] = static_cast<uint8_t>(0xF0 | (c >> 18));
      b[1] = static_cast<uint8_t>(0x80 | ((c >> 12) & 0x3F));
      b[2] = static_cast<uint8_t>(0x80 | ((c >> 6) & 0x3F));
      b[3] = static_cast<uint8_t>(0x80 | (c & 0x3F));
  }
  return b;
}

// Appends to `out` byte-range sequences whose union is the UTF-8 encodings
// of [lo, hi]. A range of code points of one encoded length is one sequence
// of byte ranges once every continuation byte below the first that differs
// spans its whole 0x80-0xBF; until then it is split there.
void Utf8Sequences(char32_t lo, char32_t hi, std::vector<Grammar::Sequence>* out) {
  const int len_lo = Utf8Length(lo), len_hi = Utf8Length(hi);
  if (len_lo != len_hi) {
    const char32_t last_of_lo_length = len_lo == 1 ? 0x7F : len_lo == 2 ? 0x7FF : 0xFFFF;
    Utf8Sequences(lo, last_of_lo_length, out);
    Utf8Sequences(last_of_lo_length + 1, hi, out);
    return;
  }
  for (int i = 1; i < len_lo; ++i) {
    const char32_t m = (char32_t{1} << (6 * i)) - 1;
    if ((lo & ~m) == (hi & ~m)) continue;
    if ((lo & m) != 0) {
      Utf8Sequences(lo, lo | m, out);
      Utf8Sequences((lo | m) + 1, hi, out);
      return;
    }
    if ((hi & m) != m) {
      Utf8Sequences(lo, (hi & ~m) - 1, out);
      Utf8Sequences(hi & ~m, hi, out);
      return;
    }
  }
  const auto a = Utf8Bytes(lo), b = Utf8Bytes(hi);
  Grammar::Sequence seq;
  for (int k = 0; k < len_lo; ++k) seq.push_back(Grammar::Bytes(ByteSet::Range(a[k], b[k])));
  out->push_back(std::move(seq));
}

}  // namespace

CodepointRanges ComplementCodepoints(CodepointRanges ranges) {
  CodepointRanges out;
  char32_t next = 0;
  for (auto [lo, hi] : Normalized(std::move(ranges))) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCodepoint) out.emplace_back(next, kMaxCodepoint);
  return Normalized(std::move(out));
}

Grammar::Sequence Grammar::Text(std::string_view text) {
  Sequence seq;
  seq.reserve(text.size());
  for (char c : text) seq.push_back(Byte(static_cast<uint8_t>(c)));
  return seq;
}

int32_t Grammar::AddRule(std::string name) {
  if (rules_.size() >= static_cast<size_t>(kMaxRules)) overflow_ = true;
  rules_.push_back(Rule{std::move(name), {}});
  return static_cast<int32_t>(rules_.size() - 1);
}

void Grammar::AddAlternative(int32_t rule, const Sequence& seq) {
  if (symbols_.size() + seq.size() + 1 > static_cast<size_t>(kMaxSymbols)) {
    overflow_ = true;
    return;
  }
  rules_[rule].starts.push_back(static_cast<int32_t>(symbols_.size()));
  symbols_.insert(symbols_.end(), seq.begin(), seq.end());
  symbols_.push_back(Symbol{kEnd, ByteSet()});
}

int32_t Grammar::RuleOf(std::string name, const std::vector<Sequence>& alternatives) {
  const int32_t r = AddRule(std::move(name));
  for (const Sequence& alt : alternatives) AddAlternative(r, alt);
  return r;
}

int32_t Grammar::Star(std::string name, const Sequence& seq) {
  const int32_t r = AddRule(std::move(name));
  Sequence again = seq;
  again.push_back(Ref(r));
  AddAlternative(r, again);
  AddAlternative(r, {});
  return r;
}

int32_t Grammar::Repeat(std::string name, const Sequence& seq, int min, int max) {
  Sequence body;
  for (int i = 0; i < min; ++i) body.insert(body.end(), seq.begin(), seq.end());
  if (max < 0) {
    body.push_back(Ref(Star(name + "_more", seq)));
  } else {
    // tail_k: up to k more of seq.
    int32_t tail = -1;
    for (int k = 1; k <= max - min; ++k) {
      const int32_t t = AddRule(name + "_upto" + std::to_string(k));
      Sequence more = seq;
      if (tail >= 0) more.push_back(Ref(tail));
      AddAlternative(t, more);
      AddAlternative(t, {});
      tail = t;
    }
    if (tail >= 0) body.push_back(Ref(tail));
  }
  return RuleOf(std::move(name), {body});
}

Grammar::Sequence Grammar::Codepoints(const CodepointRanges& ranges, const std::function<std::string()>& name) {
  CodepointRanges set = Normalized(ranges);
  if (set.empty() || set.back().second < 0x80) {
    ByteSet bytes;
    for (const auto& [lo, hi] : set) bytes.Add(ByteSet::Range(static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)));
    return {Bytes(bytes)};
  }
  if (set.size() == 1 && set[0].first == set[0].second) {
    std::string text;
    unicode::AppendUtf8(set[0].first, &text);
    return Text(text);
  }
  auto [it, added] = codepoint_rules_.try_emplace(std::move(set), -1);
  if (added) it->second = AddCodepoints(name(), it->first);
  return {Ref(it->second)};
}

int32_t Grammar::AddCodepoints(std::string name, const CodepointRanges& ranges) {
  std::vector<Sequence> alternatives;
  ByteSet ascii;
  for (auto [lo, hi] : Normalized(ranges)) {
    if (lo < 0x80) {
      ascii.Add(ByteSet::Range(static_cast<uint8_t>(lo), static_cast<uint8_t>(std::min<char32_t>(hi, 0x7F))));
      if (hi < 0x80) continue;
      lo = 0x80;
    }
    Utf8Sequences(lo, hi, &alternatives);
  }
  if (!ascii.empty()) alternatives.insert(alternatives.begin(), Sequence{Bytes(ascii)});
  return RuleOf(std::move(name), alternatives);
}

Status Grammar::Validate() const {
  if (overflow_) {
    return InvalidArgument("the grammar is too large (at most " + std::to_string(kMaxRules) + " rules and " +
                           std::to_string(kMaxSymbols) + " symbols)");
  }
  if (root_ < 0 || root_ >= rule_count()) return InvalidArgument("the grammar has no root rule");
  for (const Symbol& s : symbols_) {
    if (s.rule >= rule_count() || (s.rule < 0 && s.rule != -1 && s.rule != kEnd)) {
      return InvalidArgument("the grammar refers to rule " + std::to_string(s.rule) + ", which does not exist");
    }
  }
  return OkStatus();
}

namespace {

std::string ByteName(int b) {
  if (b == '"' || b == '\\' || b == ']' || b == '[' || b == '-') return std::string("\\") + static_cast<char>(b);
  if (b >= 0x20 && b < 0x7F) return std::string(1, static_cast<char>(b));
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\x%02X", b);
  return buf;
}

std::string SetName(const ByteSet& set) {
  std::string out = "[";
  for (int b = 0; b < 256;) {
    if (!set.Contains(static_cast<uint8_t>(b))) {
      ++b;
      continue;
    }
    int e = b;
    while (e + 1 < 256 && set.Contains(static_cast<uint8_t>(e + 1))) ++e;
    out += ByteName(b);
    if (e > b) out += "-" + ByteName(e);
    b = e + 1;
  }
  return out + "]";
}

}  // namespace

std::string Grammar::ToString() const {
  std::string out;
  for (int32_t r = 0; r < rule_count(); ++r) {
    out += rules_[r].name + " ::=";
    const std::vector<int32_t>& starts = rules_[r].starts;
    for (size_t a = 0; a < starts.size(); ++a) {
      if (a > 0) out += " |";
      std::string literal;
      auto flush = [&] {
        if (!literal.empty()) out += " \"" + literal + "\"";
        literal.clear();
      };
      int32_t p = starts[a];
      if (symbols_[p].rule == kEnd) out += " \"\"";
      for (; symbols_[p].rule != kEnd; ++p) {
        const Symbol& s = symbols_[p];
        if (s.rule >= 0) {
          flush();
          out += " " + rules_[s.rule].name;
          continue;
        }
        int single = -1, count = 0;
        for (int b = 0; b < 256 && count < 2; ++b) {
          if (s.bytes.Contains(static_cast<uint8_t>(b))) {
            single = b;
            ++count;
          }
        }
        if (count == 1) {
          literal += ByteName(single);
        } else {
          flush();
          out += " " + SetName(s.bytes);
        }
      }
      flush();
    }
    out += "\n";
  }
  return out;
}

Grammar Grammar::Factored() const {
  Grammar out;
  for (const Rule& r : rules_) out.AddRule(r.name);
  out.root_ = root_;
  out.codepoint_rules_ = codepoint_rules_;
  out.overflow_ = overflow_;
  std::vector<Sequence> alternatives;
  for (int32_t r = 0; r < rule_count(); ++r) {
    alternatives.clear();
    for (int32_t start : rules_[r].starts) {
      Sequence& seq = alternatives.emplace_back();
      for (int32_t i = start; symbols_[i].rule != kEnd; ++i) seq.push_back(symbols_[i]);
    }
    std::vector<const Sequence*> all;
    for (const Sequence& seq : alternatives) all.push_back(&seq);
    out.AddFactored(r, all, 0);
  }
  return out;
}

void Grammar::AddFactored(int32_t rule, const std::vector<const Sequence*>& alternatives, size_t at) {
  constexpr size_t kMaxDepth = 256;  // deeper shared prefixes stay as they are
  // The alternatives whose next symbol is the same byte set, in order.
  std::vector<std::pair<ByteSet, std::vector<const Sequence*>>> groups;
  auto add_rest = [&](const Sequence* seq) {
    AddAlternative(rule, Sequence(seq->begin() + static_cast<std::ptrdiff_t>(at), seq->end()));
  };
  for (const Sequence* seq : alternatives) {
    if (at >= seq->size() || (*seq)[at].rule >= 0 || at >= kMaxDepth) {
      add_rest(seq);
      continue;
    }
    const ByteSet& next = (*seq)[at].bytes;
    auto group = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == next; });
    if (group == groups.end()) {
      groups.push_back({next, {seq}});
    } else {
      group->second.push_back(seq);
    }
  }
  for (const auto& [bytes, members] : groups) {
    if (members.size() == 1) {
      add_rest(members[0]);
      continue;
    }
    const int32_t rest = AddRule(rules_[rule].name + "~" + std::to_string(at + 1));
    AddAlternative(rule, {Bytes(bytes), Ref(rest)});
    AddFactored(rest, members, at + 1);
  }
}

// --- GrammarMatcher ----------------------------------------------------------

namespace {
// How far the stacks may grow while no byte is read: a path that grows
// further is a left recursion (R ::= R "a" | ..., which grows forever) and
// is dropped. Chains of nullable rules in tail position do not grow it, and
// cycles that do not grow (R ::= S, S ::= R | "b") end where a stack
// repeats.
constexpr size_t kMaxGrowth = 256;
// The most rule entries one byte may cost, and the most stacks a matcher
// keeps: an ambiguous grammar (a run of optional repetitions) could
// otherwise multiply them; past it, further ways are dropped.
constexpr int kMaxExpansions = 1 << 16;
}  // namespace

GrammarMatcher::GrammarMatcher(const Grammar& grammar) : grammar_(&grammar) {
  std::vector<Pending> pending;
  if (grammar.root() >= 0 && grammar.root() < grammar.rule_count()) {
    for (int32_t start : grammar.alternatives(grammar.root())) pending.push_back(Pending{Stack{start}, 0});
  }
  std::vector<Stack> stacks;
  bool complete = false;
  Expand(std::move(pending), &stacks, &complete, &narrowed_);
  Settle(std::move(stacks), complete);
}

void GrammarMatcher::Expand(std::vector<Pending> pending, std::vector<Stack>* out, bool* complete,
                            bool* narrowed) const {
  const std::vector<Grammar::Symbol>& symbols = grammar_->symbols();
  std::set<Stack> entered;  // stacks about to enter a rule: each is expanded once
  int work = kMaxExpansions;
  bool sorted = false;  // *out is sorted and unique (kept so once it is full)
  while (!pending.empty()) {
    Pending p = std::move(pending.back());
    pending.pop_back();
    Stack& stack = p.stack;
    // Alternatives that ended return to the rule that entered them.
    while (!stack.empty() && symbols[stack.back()].rule == Grammar::kEnd) stack.pop_back();
    if (stack.empty()) {
      *complete = true;
      continue;
    }
    const Grammar::Symbol& top = symbols[stack.back()];
    if (top.rule < 0) {
      // Once full, the stacks are kept sorted and unique: a second way to a
      // kept stack loses nothing, and only a new one past the bound is lost.
      if (!sorted && out->size() >= kMaxStacks) {
        std::sort(out->begin(), out->end());
        out->erase(std::unique(out->begin(), out->end()), out->end());
        sorted = true;
      }
      if (!sorted) {
        out->push_back(std::move(stack));
        continue;
      }
      const auto at = std::lower_bound(out->begin(), out->end(), stack);
      if (at != out->end() && *at == stack) continue;
      if (out->size() < kMaxStacks) {
        out->insert(at, std::move(stack));
      } else {
        *narrowed = true;
      }
      continue;
    }
    const size_t base = std::min(p.base, stack.size());
    if (--work < 0 || stack.size() > base + kMaxGrowth || stack.size() >= kMaxDepth) {
      *narrowed = true;
      continue;
    }
    if (!entered.insert(stack).second) continue;  // a cycle, or a second way to the same place
    // Where this alternative goes on after the rule; nothing, when the rule
    // ends it (a tail call: repetitions then keep the stack short).
    ++stack.back();
    if (symbols[stack.back()].rule == Grammar::kEnd) stack.pop_back();
    const std::vector<int32_t>& starts = grammar_->alternatives(top.rule);
    for (auto it = starts.rbegin(); it != starts.rend(); ++it) {
      Stack into = stack;
      into.push_back(*it);
      pending.push_back(Pending{std::move(into), base});
    }
  }
}

void GrammarMatcher::Settle(std::vector<Stack> stacks, bool complete) {
  std::sort(stacks.begin(), stacks.end());
  stacks.erase(std::unique(stacks.begin(), stacks.end()), stacks.end());
  stacks_ = std::move(stacks);
  complete_ = complete;
  key_.clear();
  key_.push_back(complete_ ? 1 : 0);
  for (const Stack& s : stacks_) {
    key_.push_back(-1);
    key_.insert(key_.end(), s.begin(), s.end());
  }
}

bool GrammarMatcher::Advance(uint8_t byte) {
  const std::vector<Grammar::Symbol>& symbols = grammar_->symbols();
  std::vector<Pending> pending;
  for (const Stack& s : stacks_) {
    if (!symbols[s.back()].bytes.Contains(byte)) continue;
    Stack moved = s;
    ++moved.back();
    const size_t size = moved.size();
    pending.push_back(Pending{std::move(moved), size});
  }
  std::vector<Stack> next;
  bool complete = false, narrowed = false;
  Expand(std::move(pending), &next, &complete, &narrowed);
  narrowed_ = narrowed;  // also when every way was dropped: the byte is lost, not refused
  if (next.empty() && !complete) return false;
  Settle(std::move(next), complete);
  return true;
}

bool GrammarMatcher::AdvanceText(std::string_view text) {
  GrammarMatcher copy = *this;
  for (char c : text) {
    if (!copy.Advance(static_cast<uint8_t>(c))) return false;
  }
  *this = std::move(copy);
  return true;
}

ByteSet GrammarMatcher::NextBytes() const {
  ByteSet out;
  for (const Stack& s : stacks_) out.Add(grammar_->symbols()[s.back()].bytes);
  return out;
}

bool GrammarMatches(const Grammar& grammar, std::string_view text) {
  GrammarMatcher m(grammar);
  return m.AdvanceText(text) && m.complete();
}

}  // namespace seer
