// The matcher on grammars that could make it loop or blow up: cycles that
// read no byte, repetitions of what can be empty, left recursion, and a
// very ambiguous grammar; each must answer, and answer as the grammar says.
#include "text/grammar.h"

#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace seer
