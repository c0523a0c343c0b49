// GBNF grammars checked against independent references: regular grammars
// against std::wregex (ECMAScript, on code points) on random texts, texts
// generated from the grammar and near misses of them; recursive ones
// against recognizers written here and against the JSON parser; the syntax
// llama.cpp accepts (comments, newlines) and every refusal by hand.
#include "text/gbnf_grammar.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "base/json.h"
#include "text/text_test_util.h"
#include "text/unicode.h"

namespace seer {
namespace {

using text_test::Show;

Grammar Compile(std::string_view text) {
  StatusOr<Grammar> grammar = GrammarFromGbnf(text);
  EXPECT_TRUE(grammar.ok()) << text << "\n" << grammar.status().ToString();
  return grammar.ok() ? std::move(grammar).value() : Grammar();
}

bool Matches(std::string_view gbnf, std::string_view text) { return GrammarMatches(Compile(gbnf), text); }

// Random sentences of a grammar by expanding its rules top down, apart from
// the matcher: a random alternative while shallow and short, then one that
// needs the fewest further levels of rules, so every expansion ends.
class SentenceGenerator {
 public:
  explicit SentenceGenerator(const Grammar& grammar) : grammar_(grammar), levels_(grammar.rule_count(), INT_MAX) {
    for (bool changed = true; changed;) {
      changed = false;
      for (int32_t r = 0; r < grammar.rule_count(); ++r) {
        for (const int32_t start : grammar.alternatives(r)) {
          const int needed = AlternativeLevels(start);
          if (needed < INT_MAX && needed + 1 < levels_[r]) {
            levels_[r] = needed + 1;
            changed = true;
          }
        }
      }
    }
  }

  // A sentence of the root rule, which must have one: random choices until
  // `shallow_depth` levels of rules or `short_length` bytes.
  std::string Generate(std::mt19937* rng, int shallow_depth, size_t short_length) const {
    std::string text;
    Expand(grammar_.root(), 0, shallow_depth, short_length, rng, &text);
    return text;
  }

 private:
  // The most levels a rule of the alternative at `start` needs; INT_MAX
  // when one matches nothing.
  int AlternativeLevels(int32_t start) const {
    int most = 0;
    for (int32_t p = start; grammar_.symbols()[p].rule != Grammar::kEnd; ++p) {
      const Grammar::Symbol& s = grammar_.symbols()[p];
      const int needed = s.rule >= 0 ? levels_[s.rule] : s.bytes.empty() ? INT_MAX : 0;
      most = std::max(most, needed);
    }
    return most;
  }

  void Expand(int32_t rule, int depth, int shallow_depth, size_t short_length, std::mt19937* rng,
              std::string* text) const {
    std::vector<int32_t> choices;
    const bool deep = depth >= shallow_depth || text->size() >= short_length;
    for (const int32_t start : grammar_.alternatives(rule)) {
      const int needed = AlternativeLevels(start);
      if (needed < (deep ? levels_[rule] : INT_MAX)) choices.push_back(start);
    }
    const int32_t chosen = choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(*rng)];
    for (int32_t p = chosen; grammar_.symbols()[p].rule != Grammar::kEnd; ++p) {
      const Grammar::Symbol& s = grammar_.symbols()[p];
      if (s.rule >= 0) {
        Expand(s.rule, depth + 1, shallow_depth, short_length, rng, text);
        continue;
      }
      std::vector<uint8_t> bytes;
      for (int b = 0; b < 256; ++b) {
        if (s.bytes.Contains(static_cast<uint8_t>(b))) bytes.push_back(static_cast<uint8_t>(b));
      }
      text->push_back(static_cast<char>(bytes[std::uniform_int_distribution<size_t>(0, bytes.size() - 1)(*rng)]));
    }
  }

  const Grammar& grammar_;
  std::vector<int> levels_;  // the fewest levels of rules a sentence of each rule needs
};

// A near miss of `text`: a byte removed, or a piece of `alphabet` put in
// place of a byte or between two.
std::string NearMiss(std::string text, const std::vector<std::string>& alphabet, std::mt19937* rng) {
  const std::string& piece = alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(*rng)];
  const size_t at = std::uniform_int_distribution<size_t>(0, text.size())(*rng);
  switch (std::uniform_int_distribution<int>(0, 2)(*rng)) {
    case 0: text.insert(at, piece); break;
    case 1:
      if (at < text.size()) text.erase(at, 1);
      break;
    default:
      if (at < text.size()) text.replace(at, 1, piece);
  }
  return text;
}

struct RegularPair {
  std::string gbnf;
  std::string regex;  // ECMAScript, UTF-8; matched on code points by std::wregex
};

// Grammars with a regular language and an equivalent expression. GBNF's "."
// is any code point, ECMAScript's leaves out line ends: the expressions
// write [\s\S].
const std::vector<RegularPair>& RegularPairs() {
  static const std::vector<RegularPair> pairs = {
      {R"(root ::= [a-z]+ ("-" [0-9]{2,3})?)", "[a-z]+(-[0-9]{2,3})?"},
      {R"(root ::= "ab" | "cd" | "")", "ab|cd|"},
      {R"(root ::= "a" "b"* "c"+ "d"?)", "ab*c+d?"},
      {R"(root ::= ("ab" | "c"){2} "x"{0,3} "yz"{1,})", "(ab|c){2}x{0,3}(yz){1,}"},
      {R"(root ::= [^a-c0-9]* "b")", "[^a-c0-9]*b"},
      {R"(root ::= "\x41\u0042\n\t" [\x61-\x63\]\-]+ "\"\\")", "AB\\n\\t[a-c\\]\\-]+\"\\\\"},
      {R"(root ::= . "x" .)", "[\\s\\S]x[\\s\\S]"},
      {R"(root ::= .*)", "[\\s\\S]*"},
      {R"(root ::= ("a" ("b" | "c" ("d" | "")*)+)? "e")", "(a(b|c(d|)*)+)?e"},
      {"root ::= x y\nx ::= \"a\" | \"b\" x\ny ::= [0-9]{1,}", "b*a[0-9]+"},
      {"root ::= \"a\" ( \"b\" | \"c\" )* # a comment\n", "a(b|c)*"},
      {R"(root ::= [-a]+ [a-])", "[-a]+[a\\-]"},
      {R"(root ::= ([0-9] [0-9]?)? ":" [0-5]{1} [0-9])", "([0-9][0-9]?)?:[0-5]{1}[0-9]"},
      {R"(root ::= (("a" | "b") ("c" | "d"))*)", "([ab][cd])*"},
      {R"(root ::= ("x" "y"?){0,4} "z")", "(xy?){0,4}z"},
      {R"(root ::= [^"\\]* ("\\" [nt] [^"\\]*)*)", "[^\"\\\\]*(\\\\[nt][^\"\\\\]*)*"},
      {R"(root ::= "" "a" ""* ("")? | [b]{3,} | [c]{0})", "a|b{3,}|c{0}"},
      {"root ::= (\n  \"a\" |\n  \"b\" \"c\"\n)+ end\nend ::= \"!\" |\n  \"?\"", "(a|bc)+(!|\\?)"},
      // Code points beyond ASCII, as UTF-8 and as escapes.
      {R"(root ::= [α-ω]+ ("," [α-ω]+)*)", "[α-ω]+(,[α-ω]+)*"},
      {R"(root ::= [^α-ω\n]{1,3})", "[^α-ω\\n]{1,3}"},
      {R"(root ::= "日本" | [\u4e00-\u9fff]{2})", "日本|[\u4e00-\u9fff]{2}"},
      {R"(root ::= "\U0001F600"+ | "é" | [\xe0-\xff])", "\U0001F600+|é|[\u00e0-\u00ff]"},
      {R"(root ::= [a-zé😀]* [^a-zé😀])", "[a-zé😀]*[^a-zé😀]"},
  };
  return pairs;
}

std::wstring Wide(std::u32string_view text) { return std::wstring(text.begin(), text.end()); }

TEST(GbnfGrammar, RegularGrammarsAgreeWithStdRegex) {
  std::mt19937 rng(20240701);
  for (const RegularPair& pair : RegularPairs()) {
    SCOPED_TRACE(pair.gbnf);
    std::u32string regex_text;
    ASSERT_TRUE(unicode::DecodeUtf8(pair.regex, &regex_text));
    const std::wregex reference(Wide(regex_text), std::regex::ECMAScript);
    const Grammar grammar = Compile(pair.gbnf);
    ASSERT_GE(grammar.root(), 0);  // Compile reported why not
    // The texts' pieces: every character of the grammar and the expression
    // (so escapes meet what they name), a few others, and bytes that are
    // never whole UTF-8 characters.
    std::vector<std::string> alphabet = {"a", "0", " ", "\n", "\r", "é", "\xCE", "\xFF", "\x80"};
    for (const std::string* source : {&pair.gbnf, &pair.regex}) {
      std::u32string code_points;
      ASSERT_TRUE(unicode::DecodeUtf8(*source, &code_points));
      for (const char32_t cp : code_points) {
        std::string piece;
        unicode::AppendUtf8(cp, &piece);
        if (std::find(alphabet.begin(), alphabet.end(), piece) == alphabet.end()) alphabet.push_back(piece);
      }
    }
    int accepted = 0, refused = 0, mismatches = 0;
    auto check = [&](const std::string& text) {
      std::u32string code_points;
      const bool want = unicode::DecodeUtf8(text, &code_points) && std::regex_match(Wide(code_points), reference);
      GrammarMatcher matcher(grammar);
      size_t read = 0;
      while (read < text.size() && matcher.Advance(static_cast<uint8_t>(text[read]))) ++read;
      const bool got = read == text.size() && matcher.complete();
      (want ? accepted : refused) += 1;
      if (want != got && ++mismatches <= 5) {
        ADD_FAILURE() << Show(text) << ": std::regex says " << want << ", the grammar " << got << " (it read " << read
                      << " bytes)";
      }
    };
    for (int i = 0; i < 1500; ++i) {
      std::string text;
      for (int n = std::uniform_int_distribution<int>(0, 8)(rng); n > 0; --n) {
        text += alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(rng)];
      }
      check(text);
    }
    const SentenceGenerator generator(grammar);
    for (int i = 0; i < 250; ++i) {
      const std::string sentence = generator.Generate(&rng, 6, 12);
      check(sentence);
      check(NearMiss(sentence, alphabet, &rng));
    }
    EXPECT_GT(accepted, 250);
    EXPECT_GT(refused, 250);
  }
}

// llama.cpp's arithmetic grammar, with names.
constexpr std::string_view kArithmetic = R"gbnf(root  ::= expr
expr  ::= term ([-+*/] term)*
term  ::= name | num | "(" space expr ")" space
name  ::= [a-z] [a-z0-9_]* space
num   ::= [0-9]+ space
space ::= " "?
)gbnf";

// A recognizer for kArithmetic. Every choice is decided by the next byte
// (no item can start with what a greedy name, number or space would have
// left), so one pass without backtracking decides.
class ArithmeticRecognizer {
 public:
  static bool Matches(std::string_view text) {
    ArithmeticRecognizer r(text);
    return r.Expr() && r.at_ == text.size();
  }

 private:
  explicit ArithmeticRecognizer(std::string_view text) : text_(text) {}
  bool Next(std::string_view among) const { return at_ < text_.size() && among.find(text_[at_]) != among.npos; }
  void Space() {
    if (Next(" ")) ++at_;
  }
  bool Expr() {
    if (!Term()) return false;
    while (Next("-+*/")) {
      ++at_;
      if (!Term()) return false;
    }
    return true;
  }
  bool Term() {
    static constexpr std::string_view kLower = "abcdefghijklmnopqrstuvwxyz", kDigits = "0123456789";
    if (Next(kLower)) {
      while (Next(kLower) || Next(kDigits) || Next("_")) ++at_;
    } else if (Next(kDigits)) {
      while (Next(kDigits)) ++at_;
    } else if (Next("(")) {
      ++at_;
      Space();
      if (!Expr() || !Next(")")) return false;
      ++at_;
    } else {
      return false;
    }
    Space();
    return true;
  }

  std::string_view text_;
  size_t at_ = 0;
};

// Balanced brackets of two kinds.
constexpr std::string_view kBalanced = "root ::= ( \"(\" root \")\" | \"[\" root \"]\" )*\n";

bool IsBalanced(std::string_view text) {
  std::string open;
  for (const char c : text) {
    if (c == '(' || c == '[') {
      open.push_back(c);
    } else if ((c == ')' || c == ']') && !open.empty() && open.back() == (c == ')' ? '(' : '[')) {
      open.pop_back();
    } else {
      return false;
    }
  }
  return open.empty();
}

// Random, generated and near-miss texts: the grammar must agree with `reference`.
void CheckAgainst(std::string_view gbnf, bool (*reference)(std::string_view), const std::vector<std::string>& alphabet,
                  uint32_t seed) {
  const Grammar grammar = Compile(gbnf);
  ASSERT_GE(grammar.root(), 0);  // Compile reported why not
  const SentenceGenerator generator(grammar);
  std::mt19937 rng(seed);
  int accepted = 0, mismatches = 0;
  auto check = [&](const std::string& text) {
    const bool want = reference(text);
    accepted += want ? 1 : 0;
    if (want != GrammarMatches(grammar, text) && ++mismatches <= 5) {
      ADD_FAILURE() << Show(text) << ": the reference says " << want;
    }
  };
  for (int i = 0; i < 1500; ++i) {
    std::string text;
    for (int n = std::uniform_int_distribution<int>(0, 12)(rng); n > 0; --n) {
      text += alphabet[std::uniform_int_distribution<size_t>(0, alphabet.size() - 1)(rng)];
    }
    check(text);
  }
  for (int i = 0; i < 400; ++i) {
    const std::string sentence = generator.Generate(&rng, 10, 40);
    EXPECT_TRUE(reference(sentence)) << "generated " << Show(sentence);
    check(sentence);
    check(NearMiss(sentence, alphabet, &rng));
  }
  EXPECT_GT(accepted, 400);
}

TEST(GbnfGrammar, ArithmeticAgreesWithARecognizer) {
  CheckAgainst(kArithmetic, ArithmeticRecognizer::Matches,
               {"1", "2", "x", "y1", "_", "+", "-", "*", "/", "(", ")", " ", "  ", "\n"}, 1);
  // A few by hand, to check the recognizer too.
  for (const std::string_view text : {"1", "x +1", "( y1*3 ) -a_b", "((1))/2 "}) {
    EXPECT_TRUE(ArithmeticRecognizer::Matches(text)) << text;
    EXPECT_TRUE(Matches(kArithmetic, text)) << text;
  }
  for (const std::string_view text : {"", " 1", "1  ", "1 2", "x + 1", "(1", "1+", "_a", "1+(2))"}) {
    EXPECT_FALSE(ArithmeticRecognizer::Matches(text)) << text;
    EXPECT_FALSE(Matches(kArithmetic, text)) << text;
  }
}

TEST(GbnfGrammar, BalancedBracketsAgreeWithAStack) {
  CheckAgainst(kBalanced, IsBalanced, {"(", ")", "[", "]", "(", ")"}, 2);
  EXPECT_TRUE(Matches(kBalanced, std::string(500, '(') + std::string(500, ')')));
  EXPECT_FALSE(Matches(kBalanced, std::string(500, '(') + std::string(499, ')')));
}

// llama.cpp's grammars/json.gbnf.
constexpr std::string_view kJson = R"gbnf(root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
)gbnf";

TEST(GbnfGrammar, JsonGrammarsSentencesAreJsonObjects) {
  const Grammar grammar = Compile(kJson);
  ASSERT_GE(grammar.root(), 0);  // Compile reported why not
  const SentenceGenerator generator(grammar);
  std::mt19937 rng(3);
  int parsed = 0, beyond_json = 0;
  for (int i = 0; i < 300; ++i) {
    const std::string sentence = generator.Generate(&rng, 12, 200);
    ASSERT_TRUE(GrammarMatches(grammar, sentence)) << Show(sentence);
    StatusOr<JsonValue> value = JsonValue::Parse(sentence);
    // json.gbnf lets \uD800-\uDFFF stand alone and exponents run to 16
    // digits; the parser refuses lone surrogates and numbers past a double.
    const std::string& why = value.status().message();
    if (why.find("surrogate") != std::string::npos || why.find("out of the range of a double") != std::string::npos) {
      ++beyond_json;
      continue;
    }
    ASSERT_TRUE(value.ok()) << value.status().ToString() << " in " << Show(sentence);
    EXPECT_TRUE(value->is_object()) << Show(sentence);
    ++parsed;
  }
  EXPECT_GT(parsed, 200);
  EXPECT_LT(beyond_json, 60);
}

TEST(GbnfGrammar, JsonGrammarAcceptsAndRefusesByHand) {
  const Grammar grammar = Compile(kJson);
  for (const std::string_view text : {
           R"({})",
           R"({ })",
           R"({"a":1})",
           R"({ "a" : 1 } )",
           "{\n  \"a\": [1, -2.5, 3E+4, true, false, null],\n\t\"b\": {\"c\": \"d\\n\\u00e9\\\"\"}\n}\n",
           R"({"é😀": "中文", "": []})",
           R"({"n": -0.25e-3})",
           R"({"n": 1234567890123456})",
       }) {
    EXPECT_TRUE(GrammarMatches(grammar, text)) << text;
    EXPECT_TRUE(JsonValue::Parse(text).ok()) << text;  // the texts are JSON
  }
  for (const std::string_view text : {
           R"([])",  // root is an object
           R"("a")",
           R"({"a":01})",
           R"({"a":1,})",
           R"({"a" 1})",
           R"({'a':1})",
           R"({"a":tru})",
           R"({"a":"\x"})",
           "{\"a\":\"\x01\"}",
           R"({"a":1.})",
           R"({"a":-})",
           R"({"a":1e})",
           R"({"a":12345678901234567})",  // at most 16 digits
           R"({"a":1}  )",  // ws is one space, or a newline and indentation
           R"({"a":1e10})",  // json.gbnf's exponent: a digit, then only 1-9
           "{\"a\":1}\n\n",
           R"({"a":"\u12G4"})",
       }) {
    EXPECT_FALSE(GrammarMatches(grammar, text)) << text;
  }
}

TEST(GbnfGrammar, CommentsNewlinesAndRuleOrder) {
  // Rules used before they are defined, comments anywhere a space may be,
  // blank lines, CRLF, tabs, and '|' ending a line.
  const std::string grammar =
      "# a list of greetings\r\n"
      "\r\n"
      "root ::= greeting (\",\" greeting)* # more\r\n"
      "greeting ::=\t\"hi\" |\r\n"
      "   \"hello\" |  # long\n"
      "\n"
      "  name\n"
      "name::=[A-Z][a-z]*\r"
      "unused ::= \"never\"";
  for (const std::string_view text : {"hi", "hello", "hi,hello", "Bob,hi", "A"}) {
    EXPECT_TRUE(Matches(grammar, text)) << text;
  }
  for (const std::string_view text : {"", "never", "hi,", "bob"}) EXPECT_FALSE(Matches(grammar, text)) << text;

  // Inside parentheses newlines are spaces; after "::=" a rule may start on
  // the next line; an empty rule matches the empty text.
  EXPECT_TRUE(Matches("root ::=\n  (\n    \"a\"\n\n    \"b\" # c\n  )\n", "ab"));
  EXPECT_TRUE(Matches("root ::= e \"x\"\ne ::=", "x"));
  EXPECT_TRUE(Matches("root ::= \"\"", ""));
  EXPECT_TRUE(Matches("root ::= ws \"a\"\nws ::= | \" \"", " a"));
  // Repetitions may have spaces inside braces; names take '-' and '_'.
  EXPECT_TRUE(Matches("root ::= my-rule_1 { 2 , 3 }\nmy-rule_1 ::= \"ab\"", "ababab"));
  EXPECT_FALSE(Matches("root ::= my-rule_1 { 2 , 3 }\nmy-rule_1 ::= \"ab\"", "ab"));
  // Items need no space between them.
  EXPECT_TRUE(Matches("root ::= \"a\"b[c](\"d\").\nb ::= \"b\"", "abcde"));
  // A raw newline in a literal is itself; a class may hold quotes and '#'.
  EXPECT_TRUE(Matches("root ::= \"a\nb\"", "a\nb"));
  EXPECT_TRUE(Matches("root ::= [\"#]+", "#\"#"));
}

TEST(GbnfGrammar, RecursionThatReadsFirstIsFollowed) {
  // Right recursion, and recursion in the middle, as deep as the text goes.
  const std::string_view nested = "root ::= \"[\" root \"]\" | \"x\"";
  EXPECT_TRUE(Matches(nested, std::string(300, '[') + "x" + std::string(300, ']')));
  EXPECT_FALSE(Matches(nested, std::string(300, '[') + "x" + std::string(299, ']')));
  // A rule that comes back to itself as its last item, after items that may
  // be empty, reads nothing more: accepted.
  EXPECT_TRUE(Matches("root ::= item? root | \"\"\nitem ::= \"a\"", "aaa"));
  EXPECT_TRUE(Matches("root ::= (\"a\"?)* \"b\"", "aab"));
  EXPECT_TRUE(Matches("root ::= ((\"a\" | \"\")+)+ \"b\"", std::string(200, 'a') + "b"));
}

TEST(GbnfGrammar, LeftRecursionIsRefusedNamingTheCycle) {
  struct Case {
    std::string gbnf;
    std::string cycle;
    int offset;  // of the first rule named
  };
  const std::vector<Case> cases = {
      {"root ::= root \"a\" | \"b\"", "root -> root", 0},
      {"root ::= expr\nexpr ::= expr \"+\" num | num\nnum ::= [0-9]", "expr -> expr", 14},
      {"root ::= a \"x\"\na ::= b? c\nb ::= \"b\"\nc ::= root \"y\" | \"c\"", "root -> a -> c -> root", 0},
      {"root ::= (\"\" root \"a\")* \"b\"", "root -> root", 0},
      {"root ::= ws root \"x\" | \"y\"\nws ::= \" \"*", "root -> root", 0},
  };
  for (const Case& c : cases) {
    StatusOr<Grammar> grammar = GrammarFromGbnf(c.gbnf);
    ASSERT_FALSE(grammar.ok()) << c.gbnf;
    const std::string& message = grammar.status().message();
    EXPECT_NE(message.find("left-recursive (" + c.cycle + " "), std::string::npos) << message;
    EXPECT_EQ(message.rfind("offset " + std::to_string(c.offset) + ": ", 0), 0u) << message;
  }
}

TEST(GbnfGrammar, EscapesAndCodePoints) {
  EXPECT_TRUE(Matches(R"(root ::= "\x00\x7f")", std::string("\0\x7f", 2)));
  EXPECT_TRUE(Matches(R"(root ::= "\u00e9\U0001f600\r")", "é😀\r"));
  EXPECT_TRUE(Matches(R"(root ::= "\[\]\-")", "[]-"));
  EXPECT_TRUE(Matches(R"(root ::= [\[\]]+)", "[]]["));
  EXPECT_TRUE(Matches(R"(root ::= [\U0001F600-\U0001F64F]{2})", "😀🙏"));
  EXPECT_FALSE(Matches(R"(root ::= [\U0001F600-\U0001F64F])", "🚀"));
  // A negated class and "." match whole code points of valid UTF-8.
  for (const std::string_view g : {"root ::= [^a]", "root ::= ."}) {
    EXPECT_TRUE(Matches(g, "\n")) << g;
    EXPECT_TRUE(Matches(g, "😀")) << g;
    EXPECT_TRUE(Matches(g, "\xEF\xBF\xBF")) << g;  // U+FFFF
    EXPECT_FALSE(Matches(g, "\xED\xA0\x80")) << g;  // an encoded surrogate
    EXPECT_FALSE(Matches(g, "\xF4\x90\x80\x80")) << g;  // past U+10FFFF
    EXPECT_FALSE(Matches(g, "\xC3")) << g;
    EXPECT_FALSE(Matches(g, "\xC0\xAF")) << g;  // overlong
    EXPECT_FALSE(Matches(g, "ab")) << g;
  }
  EXPECT_FALSE(Matches("root ::= [^a]", "a"));
  // A class of no code point matches nothing.
  EXPECT_FALSE(Matches(R"(root ::= [^\x00-\U0010FFFF])", ""));
  EXPECT_TRUE(Matches(R"(root ::= "a" | [^\x00-\U0010FFFF]+)", "a"));
}

TEST(GbnfGrammar, BoundsOfRepetitionsAndNesting) {
  EXPECT_TRUE(Matches("root ::= \"a\"{256}", std::string(256, 'a')));
  EXPECT_FALSE(Matches("root ::= \"a\"{256}", std::string(255, 'a')));
  EXPECT_TRUE(Matches("root ::= \"a\"{0,256} \"b\"", std::string(256, 'a') + "b"));
  EXPECT_FALSE(Matches("root ::= \"a\"{0,256} \"b\"", std::string(257, 'a') + "b"));
  EXPECT_TRUE(Matches("root ::= \"ab\"{2,} \"c\"{0}", "ababab"));
  EXPECT_FALSE(Matches("root ::= \"ab\"{2,}", "ab"));

  // The deepest nesting accepted, with an alternative and a count at every
  // level, still matches.
  std::string deep = "root ::= ";
  for (int i = 0; i < kMaxGbnfNesting; ++i) deep += "(";
  deep += "\"a\"";
  for (int i = 0; i < kMaxGbnfNesting; ++i) deep += " | \"b\"){1,2} \"c\"";
  const Grammar grammar = Compile(deep);
  std::string innermost = "ac";
  for (int i = 1; i < kMaxGbnfNesting; ++i) innermost += "c";
  EXPECT_TRUE(GrammarMatches(grammar, innermost));
  EXPECT_TRUE(GrammarMatches(grammar, "bbc"));
  EXPECT_FALSE(GrammarMatches(grammar, innermost + "c"));

  // The longest text accepted.
  std::string longest = "root ::= \"";
  longest += std::string(kMaxGbnfBytes - longest.size() - 1, 'x') + "\"";
  ASSERT_EQ(longest.size(), kMaxGbnfBytes);
  EXPECT_TRUE(GrammarFromGbnf(longest).ok());
}

struct Refusal {
  std::string gbnf;
  std::string message;  // a part of the message, after "offset N: " when offset >= 0
  int offset;
};

TEST(GbnfGrammar, RefusalsNameTheConstructAndOffset) {
  const std::vector<Refusal> refusals = {
      {"", "the grammar is empty", -1},
      {"  # only a comment\n\n", "the grammar is empty", -1},
      {"start ::= \"a\"", "no rule named 'root'", -1},
      {"root ::= value", "rule 'value' is used but never defined", 9},
      {"root ::= a\na ::= \"x\" b | c\nb ::= \"y\"", "rule 'c' is used but never defined", 25},
      {"root ::= \"a\"\nroot ::= \"b\"", "rule 'root' is defined twice (first at offset 0)", 13},
      {"root = \"a\"", "expected '::=' after rule name 'root', found '='", 5},
      {"root\n::= \"a\"", "expected '::='", 4},
      {"::= \"a\"", "expected a rule name, found ':'", 0},
      {"root ::= \"a\"\n  | \"b\"", "expected a rule name, found '|' (end the line before with '|' instead)", 15},
      {"root ::= \"a\" b ::= \"c\"\nb ::= \"d\"", "expected a newline to end rule 'root', found ':'", 15},
      {"root ::= \"a\" |\nb ::= \"c\"", "expected a newline to end rule 'root', found ':'", 17},
      {"root ::= \"a\")", "')' has no matching '('", 12},
      {"root ::= (\"a\"", "'(' is never closed", 9},
      {"root ::= (\"a\" :)", "expected ')' to close the '(' at offset 9, found ':'", 14},
      {"root ::= \"abc", "unterminated string literal", 9},
      {"root ::= \"a\"\nx ::= \"\\", "'\\' ends the grammar", 20},
      {"root ::= [a-z", "unterminated character class", 9},
      {"root ::= [a-", "unterminated character class", 9},
      {"root ::= []", "empty character class '[]'", 9},
      {"root ::= [^]", "empty character class '[^]'", 9},
      {"root ::= [z-a]", "range 'z-a' has its start above its end", 10},
      {"root ::= \"\\q\"", "unknown escape '\\' followed by 'q'", 10},
      {"root ::= [\\d]", "unknown escape '\\' followed by 'd'", 10},
      {"root ::= \"\\x4\"", "escape '\\x' needs 2 hexadecimal digits", 10},
      {"root ::= \"\\u12G4\"", "escape '\\u' needs 4 hexadecimal digits", 10},
      {"root ::= \"\\U0011FFFF\"", "escape '\\U0011FFFF' is beyond U+10FFFF", 10},
      {"root ::= \"\\uD83D\"", "escape '\\uD83D' is a surrogate", 10},
      {"root ::= [\\uDC00-\\uDFFF]", "escape '\\uDC00' is a surrogate", 10},
      {"root ::= \"a\xFF\"", "invalid UTF-8", 11},
      {"root ::= [\xC3]", "invalid UTF-8", 10},
      {"root ::= \"\xED\xA0\x80\"", "invalid UTF-8", 10},
      {"root ::= * \"a\"", "repetition '*' has nothing to repeat", 9},
      {"root ::= \"a\" | +", "repetition '+' has nothing to repeat", 15},
      {"root ::= (? \"a\")", "repetition '?' has nothing to repeat", 10},
      {"root ::= \"a\"*?", "repetition '?' follows another repetition", 13},
      {"root ::= \"a\"{2}{3}", "repetition '{3}' follows another repetition", 15},
      {"root ::= \"a\"{1000}", "repetition count 1000 is more than 256", 13},
      {"root ::= \"a\"{1,257}", "repetition count 257 is more than 256", 15},
      {"root ::= \"a\"{99999999999999999999999}", "repetition count 99999999999999999999999 is more than", 13},
      {"root ::= \"a\"{3,2}", "repetition '{3,2}' has its minimum above its maximum", 12},
      {"root ::= \"a\"{,2}", "expected a number in the repetition, found ','", 13},
      {"root ::= \"a\"{2", "expected ',' or '}' in the repetition, found the end of the grammar", 14},
      {"root ::= \"a\"{2,3", "expected '}' to end the repetition", 16},
      {"root ::= \"a\"{2 3}", "expected ',' or '}' in the repetition, found '3'", 15},
      {"root ::= <[1234]>", "token items ('<...>', '!<...>') are not supported", 9},
      {"root ::= !<|end|>", "token items", 9},
      {"root ::= \"a\" @", "expected a newline to end rule 'root', found '@'", 13},
  };
  for (const Refusal& r : refusals) {
    StatusOr<Grammar> grammar = GrammarFromGbnf(r.gbnf);
    ASSERT_FALSE(grammar.ok()) << Show(r.gbnf) << " was accepted";
    EXPECT_EQ(grammar.status().code(), StatusCode::kInvalidArgument);
    const std::string& message = grammar.status().message();
    const std::string want = r.offset >= 0 ? "offset " + std::to_string(r.offset) + ": " + r.message : r.message;
    EXPECT_EQ(message.rfind(want, 0), 0u) << Show(r.gbnf) << "\n  got:  " << message << "\n  want: " << want;
  }
}

TEST(GbnfGrammar, RefusesWhatIsTooBig) {
  StatusOr<Grammar> long_text = GrammarFromGbnf("root ::= \"" + std::string(kMaxGbnfBytes, 'x') + "\"");
  ASSERT_FALSE(long_text.ok());
  EXPECT_EQ(long_text.status().message(), "the grammar is 65547 bytes, more than the limit of 65536");

  // Hostile nesting is refused before the parser's recursion gets deep.
  StatusOr<Grammar> deep = GrammarFromGbnf("root ::= " + std::string(60000, '('));
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(deep.status().message(),
            "offset " + std::to_string(9 + kMaxGbnfNesting) + ": parentheses nest deeper than the limit of 64");

  // Counts that add up past the grammar's limits are refused, not built.
  std::string counts = "root ::=";
  for (int i = 0; i < 300; ++i) counts += " \"a\"{0,256}";
  StatusOr<Grammar> too_big = GrammarFromGbnf(counts);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("the grammar grows past its limits here"), std::string::npos)
      << too_big.status().message();
  std::string symbols =
      "root ::= x x x x x x x x x x x x x x x x x x x x\nx ::= y y y y y y y y y y y y y y y y y y y y\n";
  symbols += "y ::= \"" + std::string(20000, 'z') + "\"";
  EXPECT_TRUE(GrammarFromGbnf(symbols).ok());  // references cost one symbol each
  std::string long_sequence = "root ::=";
  for (int i = 0; i < 5000; ++i) long_sequence += " [a-z]{256}";
  StatusOr<Grammar> too_long = GrammarFromGbnf(long_sequence);
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.status().message().find("1048576 symbols"), std::string::npos) << too_long.status().message();
}

}  // namespace
}  // namespace seer
