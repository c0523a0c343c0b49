// Byte-level context-free grammars for guided decoding: what a reply's text
// may be, built by the JSON Schema and regular-expression compilers
// (json_schema_grammar.h, regex_grammar.h) and matched byte by byte as the
// reply grows (GrammarMatcher), so that the sampler can be told which
// tokens keep the text a prefix of some sentence of the grammar.
//
// A grammar is a set of rules; a rule is a list of alternatives; an
// alternative is a sequence of symbols, each a set of bytes or a reference
// to a rule. Text is UTF-8, matched as bytes: a class of characters is an
// alternative of byte sequences (AddCodepoints). Rules may be recursive; a
// path that reaches a rule again before reading a byte is not followed
// further (the matcher drops a stack that grows without reading, and
// expands a stack only once), so a left-recursive rule matches only what
// its other alternatives do. A very ambiguous grammar is bounded too: past
// 1,024 ways at once the matcher keeps the first (so it may refuse a text
// the grammar has).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace seer {

// A set of byte values.
class ByteSet {
 public:
  ByteSet() = default;
  static ByteSet Of(uint8_t b) { return Range(b, b); }
  static ByteSet Range(uint8_t lo, uint8_t hi);  // lo..hi inclusive; empty when lo > hi
  static ByteSet All() { return Range(0, 255); }

  bool Contains(uint8_t b) const { return (words_[b >> 6] >> (b & 63)) & 1; }
  bool empty() const { return (words_[0] | words_[1] | words_[2] | words_[3]) == 0; }
  ByteSet& Add(uint8_t b) {
    words_[b >> 6] |= uint64_t{1} << (b & 63);
    return *this;
  }
  ByteSet& Add(const ByteSet& other);
  ByteSet Inverted() const;
  bool operator==(const ByteSet&) const = default;

 private:
  std::array<uint64_t, 4> words_{};
};

// Inclusive code point ranges, e.g. {{'a', 'z'}, {0x4e00, 0x9fff}}.
using CodepointRanges = std::vector<std::pair<char32_t, char32_t>>;

// The code points of valid UTF-8 (U+0000..U+10FFFF without the surrogates)
// that are not in `ranges`.
CodepointRanges ComplementCodepoints(CodepointRanges ranges);

class Grammar {
 public:
  // A symbol of an alternative: a byte in `bytes`, or a sentence of rule
  // `rule` (when rule >= 0).
  struct Symbol {
    int32_t rule = -1;
    ByteSet bytes;
  };
  using Sequence = std::vector<Symbol>;

  // The most rules and symbols a grammar may hold: a compiled schema or
  // expression bigger than this is refused (AddRule and AddAlternative
  // count; Validate reports it).
  static constexpr int32_t kMaxRules = 1 << 16;
  static constexpr int32_t kMaxSymbols = 1 << 20;

  static Symbol Bytes(ByteSet bytes) { return Symbol{-1, bytes}; }
  static Symbol Byte(uint8_t b) { return Symbol{-1, ByteSet::Of(b)}; }
  static Symbol Ref(int32_t rule) { return Symbol{rule, ByteSet()}; }
  // One byte symbol per byte of `text`.
  static Sequence Text(std::string_view text);

  // A new rule with no alternatives yet (it matches nothing until given
  // some); `name` is for ToString and error messages. Returns its id.
  int32_t AddRule(std::string name);
  // Adds `seq` as an alternative of `rule` (an empty sequence matches the
  // empty text).
  void AddAlternative(int32_t rule, const Sequence& seq);

  // Helpers that add a rule and return its id.
  int32_t RuleOf(std::string name, const std::vector<Sequence>& alternatives);
  // Zero or more `seq`: R ::= seq R | "".
  int32_t Star(std::string name, const Sequence& seq);
  // `seq` at least `min` and at most `max` times (max < 0: no bound);
  // bounded repetitions become a chain of max - min optional rules, so
  // bounds are for small counts (the compilers refuse big ones).
  int32_t Repeat(std::string name, const Sequence& seq, int min, int max);
  // One UTF-8 encoded code point from `ranges` (which may overlap).
  int32_t AddCodepoints(std::string name, const CodepointRanges& ranges);
  // The same as a sequence, as the compilers' classes want it: one byte set
  // when every code point is ASCII (when there are none, a set that matches
  // nothing), a single character's bytes, else a reference to an
  // AddCodepoints rule, made once per distinct set (named by `name()` then).
  Sequence Codepoints(const CodepointRanges& ranges, const std::function<std::string()>& name);

  void set_root(int32_t rule) { root_ = rule; }
  int32_t root() const { return root_; }
  int32_t rule_count() const { return static_cast<int32_t>(rules_.size()); }
  const std::string& rule_name(int32_t rule) const { return rules_[rule].name; }

  // Errors: no root, a reference to no rule, or more than the limits.
  Status Validate() const;

  // The same language, each rule's alternatives that begin with the same
  // byte set merged, down their shared prefixes (a ::= "ab" | "ac" becomes
  // a ::= "a" a~1, a~1 ::= "b" | "c"; up to 256 bytes deep). The matcher
  // keeps a way for each alternative it enters, at most 1,024 at once: a
  // rule of 2,000 words would lose some, but factored it costs as many ways
  // as its words share a prefix. Rules keep their ids; new ones come after.
  Grammar Factored() const;
  // A readable dump, one rule a line: `name ::= "a" [0-9] other | ""`.
  std::string ToString() const;

  // For the matcher: the symbols of every alternative, each alternative's
  // followed by an end marker (a symbol with rule == kEnd), and where each
  // rule's alternatives start.
  static constexpr int32_t kEnd = -2;
  const std::vector<Symbol>& symbols() const { return symbols_; }
  const std::vector<int32_t>& alternatives(int32_t rule) const { return rules_[rule].starts; }

 private:
  struct Rule {
    std::string name;
    std::vector<int32_t> starts;  // index in symbols_ of each alternative's first symbol
  };
  std::vector<Rule> rules_;
  std::vector<Symbol> symbols_;
  std::map<CodepointRanges, int32_t> codepoint_rules_;  // Codepoints' rules, by their normalized ranges

  // Factored's step: adds `alternatives`, less their first `at` symbols
  // (which they share), to `rule`.
  void AddFactored(int32_t rule, const std::vector<const Sequence*>& alternatives, size_t at);
  int32_t root_ = -1;
  bool overflow_ = false;
};

// Where a text stands in a grammar: every way the text read so far can be
// the start of a sentence, as stacks of positions in Grammar::symbols()
// (the top, last, is the next byte symbol to match; below it, where each
// enclosing rule goes on). Copyable; the grammar must outlive it.
class GrammarMatcher {
 public:
  // At the empty text.
  explicit GrammarMatcher(const Grammar& grammar);

  // Reads one more byte. False (and no change but narrowed()) when no
  // sentence of the grammar goes on with it, as far as the matcher can tell:
  // narrowed() then says whether it could not tell (every way that read it
  // was dropped).
  bool Advance(uint8_t byte);
  // Reads `text` byte by byte; false (and no change) unless every byte fits.
  bool AdvanceText(std::string_view text);

  // The text read so far is a whole sentence.
  bool complete() const { return complete_; }
  // Some byte may come next.
  bool can_continue() const { return !stacks_.empty(); }
  // The bytes that may come next.
  ByteSet NextBytes() const;

  // Identifies the state: two matchers of one grammar with equal keys
  // accept the same continuations.
  const std::vector<int32_t>& key() const { return key_; }

  // Stacks deeper than this are dropped: a deeper nesting cannot go on.
  static constexpr size_t kMaxDepth = 4096;
  // At most this many ways of reading the text are kept at once.
  static constexpr size_t kMaxStacks = 1024;

  // The last step (Advance, or the start) dropped ways of reading the text:
  // more than kMaxStacks at once (a grammar ambiguous in itself), a chain of
  // more than 256 rules entered before a byte, nesting deeper than
  // kMaxDepth, or more than 65,536 rule entries for one byte. The matcher
  // then follows only some of the sentences that go on from here.
  bool narrowed() const { return narrowed_; }

 private:
  using Stack = std::vector<int32_t>;
  // A stack whose top may be a rule reference or an end marker, and its
  // size when the last byte was read (its growth since is bounded).
  struct Pending {
    Stack stack;
    size_t base = 0;
  };
  // Adds to `out` every stack that the pending ones become once their tops
  // are byte symbols; an emptied stack sets *complete.
  // *narrowed: some were dropped (narrowed()).
  void Expand(std::vector<Pending> pending, std::vector<Stack>* out, bool* complete, bool* narrowed) const;
  void Settle(std::vector<Stack> stacks, bool complete);

  const Grammar* grammar_;
  std::vector<Stack> stacks_;  // sorted, unique; every top a byte symbol
  bool complete_ = false;
  bool narrowed_ = false;
  std::vector<int32_t> key_;
};

// Whether `text` is a whole sentence of `grammar`.
bool GrammarMatches(const Grammar& grammar, std::string_view text);

}  // namespace seer
