// The matcher on grammars that could make it loop or blow up: cycles that
// read no byte, repetitions of what can be empty, left recursion, and a
// very ambiguous grammar; each must answer, and answer as the grammar says.
#include "text/grammar.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "base/json.h"
#include "text/json_schema_grammar.h"
#include "text/regex_grammar.h"

namespace seer {
namespace {

TEST(GrammarMatcher, CyclesThatReadNoByteEndAndKeepTheOtherAlternatives) {
  // R ::= S | "b"; S ::= R; root ::= R | "c".
  Grammar g;
  const int32_t r = g.AddRule("r");
  const int32_t s = g.AddRule("s");
  g.AddAlternative(r, {Grammar::Ref(s)});
  g.AddAlternative(r, Grammar::Text("b"));
  g.AddAlternative(s, {Grammar::Ref(r)});
  g.set_root(g.RuleOf("root", {{Grammar::Ref(r)}, Grammar::Text("c")}));
  EXPECT_TRUE(GrammarMatches(g, "b"));
  EXPECT_TRUE(GrammarMatches(g, "c"));
  EXPECT_FALSE(GrammarMatches(g, "bc"));
  EXPECT_FALSE(GrammarMatches(g, ""));
}

TEST(GrammarMatcher, RepeatingWhatCanBeEmpty) {
  // (""|"a")*: any number of a's, through a body that may read nothing.
  Grammar g;
  const int32_t maybe = g.RuleOf("maybe", {{}, Grammar::Text("a")});
  g.set_root(g.RuleOf("root", {{Grammar::Ref(g.Star("many", {Grammar::Ref(maybe)})), Grammar::Byte('b')}}));
  for (const std::string text : {"b", "ab", "aaaab"}) EXPECT_TRUE(GrammarMatches(g, text)) << text;
  EXPECT_FALSE(GrammarMatches(g, "a"));
  EXPECT_TRUE(GrammarMatches(g, std::string(5000, 'a') + "b"));  // repetitions stay flat
}

TEST(GrammarMatcher, LeftRecursionMatchesItsOtherAlternatives) {
  // R ::= R "a" | "b": the recursion is not followed, "b" is.
  Grammar g;
  const int32_t r = g.AddRule("r");
  g.AddAlternative(r, {Grammar::Ref(r), Grammar::Byte('a')});
  g.AddAlternative(r, Grammar::Text("b"));
  g.set_root(r);
  EXPECT_TRUE(GrammarMatches(g, "b"));
  EXPECT_FALSE(GrammarMatches(g, "c"));
}

TEST(GrammarMatcher, ASchemaThatRefersToItselfFirst) {
  // anyOf [$ref "#", integer]: the reference reads nothing before it
  // reaches itself; the integer branch must still match.
  StatusOr<JsonValue> schema = JsonValue::Parse(R"({"anyOf": [{"$ref": "#"}, {"type": "integer"}]})");
  ASSERT_TRUE(schema.ok());
  StatusOr<Grammar> g = GrammarFromJsonSchema(*schema);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE(GrammarMatches(*g, "12"));
  EXPECT_TRUE(GrammarMatches(*g, " -7 "));
  EXPECT_FALSE(GrammarMatches(*g, "1.5"));
}

TEST(GrammarMatcher, AVeryAmbiguousGrammarStaysBounded) {
  // 250 optional runs of letters in a row: after k letters, a position in
  // any of the runs that can hold them. The matcher keeps a bounded number
  // of ways and answers.
  std::string pattern;
  for (int i = 0; i < 250; ++i) pattern += "[a-z]{0,8}";
  StatusOr<Grammar> g = GrammarFromRegex(pattern);
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  GrammarMatcher m(*g);
  EXPECT_TRUE(m.AdvanceText("helloworld"));
  EXPECT_TRUE(m.complete());
  EXPECT_FALSE(m.AdvanceText("1"));
}

// narrowed() says when ways are lost, and only then. s ::= "a" s "b" |
// "a" s "c" | "" is ambiguous in itself: after n a's every one of the 2^n
// ways to close them is a different stack, so past the bound some texts
// a^n w (w any n of b and c) are lost. Before the first narrowed step every
// such text is a sentence; after it, some are not. Grammars that are not
// ambiguous (JSON, a regular expression) never narrow on long sentences.
TEST(GrammarMatcher, NarrowedSaysWhenWaysAreLost) {
  Grammar g;
  const int32_t s = g.AddRule("s");
  g.AddAlternative(s, {Grammar::Byte('a'), Grammar::Ref(s), Grammar::Byte('b')});
  g.AddAlternative(s, {Grammar::Byte('a'), Grammar::Ref(s), Grammar::Byte('c')});
  g.AddAlternative(s, {});
  g.set_root(s);
  auto closings = [](int n) {
    std::vector<std::string> out;
    for (uint32_t bits = 0; bits < (1u << n); ++bits) {
      std::string w;
      for (int i = 0; i < n; ++i) w += (bits >> i) & 1 ? 'b' : 'c';
      out.push_back(w);
    }
    return out;
  };
  GrammarMatcher m(g);
  EXPECT_FALSE(m.narrowed());
  int first = -1;
  for (int n = 1; n <= 12 && first < 0; ++n) {
    ASSERT_TRUE(m.Advance('a'));
    if (m.narrowed()) first = n;
  }
  ASSERT_GT(first, 1) << "the bound is never reached";
  for (int n = 1; n < first; ++n) {
    for (const std::string& w : closings(n)) ASSERT_TRUE(GrammarMatches(g, std::string(n, 'a') + w)) << n << w;
  }
  int lost = 0;
  for (const std::string& w : closings(first)) lost += GrammarMatches(g, std::string(first, 'a') + w) ? 0 : 1;
  EXPECT_GT(lost, 0) << "narrowed at " << first << " a's, yet every sentence is still read";
  RecordProperty("first_narrowed_after", first);
  // A chain of 300 rules entered before any byte: cut, and said.
  Grammar chain;
  int32_t next = chain.RuleOf("last", {Grammar::Text("x")});
  for (int i = 0; i < 300; ++i)
    next = chain.RuleOf("r" + std::to_string(i), {{Grammar::Ref(next), Grammar::Byte('y')}});
  chain.set_root(next);
  EXPECT_TRUE(GrammarMatcher(chain).narrowed());
  // The same chain after a byte: every way that reads the byte is dropped,
  // so the byte is lost (Advance false, narrowed() true), not refused.
  Grammar after;
  int32_t deep = after.RuleOf("last", {Grammar::Text("a")});
  for (int i = 0; i < 300; ++i)
    deep = after.RuleOf("r" + std::to_string(i), {{Grammar::Ref(deep), Grammar::Byte('b')}});
  after.set_root(after.RuleOf("root", {{Grammar::Byte('x'), Grammar::Ref(deep)}}));
  GrammarMatcher cut(after);
  EXPECT_FALSE(cut.narrowed());
  EXPECT_FALSE(cut.Advance('x'));
  EXPECT_TRUE(cut.narrowed());
  EXPECT_FALSE(cut.Advance('y'));
  EXPECT_FALSE(cut.narrowed()) << "a byte the grammar refuses is no loss";

  // Long sentences of grammars that are not ambiguous never narrow.
  StatusOr<JsonValue> schema = JsonValue::Parse(R"({"type": "object", "properties": {
      "a": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}},
      "b": {"type": "object", "additionalProperties": {"type": "number"}}}, "required": ["a"]})");
  ASSERT_TRUE(schema.ok());
  StatusOr<Grammar> regex = GrammarFromRegex("([a-z]+[0-9]*-)*(x|y){2,5}");
  ASSERT_TRUE(regex.ok());
  const std::pair<Grammar, std::string> unambiguous[] = {
      {JsonObjectGrammar(), R"({"k": [1, 2.5, {"n": null, "s": "t\u00e9", "d": [[[[[[{}]]]]]]}], "z": true})"},
      {*GrammarFromJsonSchema(*schema), R"({"a": [1, "two", 3, "four"], "b": {"x": 1.5, "y": -2e3}})"},
      {*regex, "abc12-de-fg345-xyxyx"},
  };
  for (const auto& [grammar, text] : unambiguous) {
    GrammarMatcher walk(grammar);
    for (char c : text) {
      ASSERT_TRUE(walk.Advance(static_cast<uint8_t>(c))) << text;
      EXPECT_FALSE(walk.narrowed()) << text;
    }
    EXPECT_TRUE(walk.complete()) << text;
  }
}

// A rule of 3,000 words: the matcher keeps at most 1,024 ways, so some words
// are lost as it stands (the bound, checked), and none once factored; no
// other text is a sentence.
TEST(GrammarMatcher, ARuleOfThousandsOfWordsFactored) {
  Grammar g;
  std::vector<Grammar::Sequence> words;
  for (int i = 0; i < 3000; ++i) words.push_back(Grammar::Text("w" + std::to_string(i)));
  g.set_root(g.RuleOf("root", words));
  int lost = 0;
  for (int i = 0; i < 3000; ++i) lost += GrammarMatches(g, "w" + std::to_string(i)) ? 0 : 1;
  EXPECT_GT(lost, 0) << "the matcher's bound, unfactored";
  const Grammar f = g.Factored();
  ASSERT_TRUE(f.Validate().ok());
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(GrammarMatches(f, "w" + std::to_string(i))) << i;
  for (const std::string text : {"", "w", "w3000", "w01", "x1", "w12a"}) EXPECT_FALSE(GrammarMatches(f, text)) << text;
}

// Factored keeps the language: random grammars of byte sets, references
// and empty alternatives, against their factored form on every text of up
// to 5 bytes over {a, b, c}.
TEST(GrammarMatcher, FactoredKeepsTheLanguage) {
  std::mt19937 rng(5);
  const ByteSet sets[] = {ByteSet::Of('a'), ByteSet::Of('b'), ByteSet::Of('c'), ByteSet::Range('a', 'b')};
  std::vector<std::string> texts = {""};
  for (size_t i = 0; i < texts.size() && texts[i].size() < 5; ++i) {
    for (char c : {'a', 'b', 'c'}) texts.push_back(texts[i] + c);
  }
  int merged = 0, sentences = 0;
  for (int trial = 0; trial < 200; ++trial) {
    Grammar g;
    const int rules = 1 + static_cast<int>(rng() % 3);
    for (int r = 0; r < rules; ++r) g.AddRule("r" + std::to_string(r));
    for (int r = 0; r < rules; ++r) {
      const int alternatives = 1 + static_cast<int>(rng() % 5);
      for (int a = 0; a < alternatives; ++a) {
        // References go to later rules, or back to this one at the end
        // (right recursion): ambiguity stays small enough to try every text.
        Grammar::Sequence seq;
        const int length = static_cast<int>(rng() % 4);
        for (int k = 0; k < length; ++k) {
          const bool later = r + 1 < rules && rng() % 4 == 0;
          seq.push_back(later ? Grammar::Ref(r + 1 + static_cast<int32_t>(rng() % (rules - r - 1)))
                              : Grammar::Bytes(sets[rng() % 4]));
        }
        if (!seq.empty() && rng() % 3 == 0) seq.push_back(Grammar::Ref(r));
        g.AddAlternative(r, seq);
      }
    }
    g.set_root(0);
    const Grammar f = g.Factored();
    merged += f.rule_count() > g.rule_count() ? 1 : 0;
    for (const std::string& text : texts) {
      const bool want = GrammarMatches(g, text);
      sentences += want ? 1 : 0;
      ASSERT_EQ(GrammarMatches(f, text), want) << "trial " << trial << " text '" << text << "'\n" << g.ToString();
    }
  }
  EXPECT_GT(merged, 50) << "factoring merged something in many grammars";
  EXPECT_GT(sentences, 1000);
}

}  // namespace
}  // namespace seer
