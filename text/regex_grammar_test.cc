// Regular expressions as grammars, checked against an independent matcher:
// std::regex (ECMAScript) decides, for patterns where ECMAScript and
// Python's re agree, whether a text matches whole; the grammar must agree
// on random texts, on texts sampled from the grammar itself (the positives
// random texts rarely hit) and on near misses of those. Unicode, the
// Python-only spellings and every refusal are checked by hand.
#include "text/regex_grammar.h"

#include <gtest/gtest.h>

#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace seer {
namespace {

Grammar Compile(const std::string& pattern) {
  StatusOr<Grammar> grammar = GrammarFromRegex(pattern);
  EXPECT_TRUE(grammar.ok()) << pattern << ": " << grammar.status().ToString();
  return grammar.ok() ? std::move(grammar).value() : Grammar();
}

bool Matches(const std::string& pattern, std::string_view text) { return GrammarMatches(Compile(pattern), text); }

// `text` with control bytes spelled out, for failure messages.
std::string Printable(std::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// A random sentence of `grammar`, by a walk from the empty text. Each step
// picks one of the distinct states the next byte can lead to, then a byte
// that leads there: a rare branch (the "@" of "[\\w.-]+@[a-z]+") is as
// likely as a wide class. Past a random target length, states where the
// text is complete are preferred, and the walk stops at the first complete
// text, so texts stay short (std::regex backtracks). Only ASCII bytes other
// than "\r" are chosen, the texts on which std::regex (which reads bytes,
// and whose "." also stops at "\r") agrees with Python. nullopt when the
// walk gets longer than `max_length` or can only go on with other bytes.
std::optional<std::string> Sample(const Grammar& grammar, std::mt19937* rng, size_t max_length) {
  GrammarMatcher matcher(grammar);
  const size_t target = std::uniform_int_distribution<size_t>(0, 10)(*rng);
  std::string text;
  while (true) {
    const ByteSet next = matcher.NextBytes();
    std::map<std::vector<int32_t>, std::vector<uint8_t>> bytes_by_state, completing;
    for (int b = 0; b < 0x80; ++b) {
      if (b == '\r' || !next.Contains(static_cast<uint8_t>(b))) continue;
      GrammarMatcher after = matcher;
      EXPECT_TRUE(after.Advance(static_cast<uint8_t>(b)));
      bytes_by_state[after.key()].push_back(static_cast<uint8_t>(b));
      if (after.complete()) completing[after.key()].push_back(static_cast<uint8_t>(b));
    }
    if (matcher.complete() && (bytes_by_state.empty() || text.size() >= target)) return text;
    if (bytes_by_state.empty() || text.size() >= max_length) return std::nullopt;
    const auto& states = text.size() >= target && !completing.empty() ? completing : bytes_by_state;
    auto state = states.begin();
    std::advance(state, std::uniform_int_distribution<size_t>(0, states.size() - 1)(*rng));
    const std::vector<uint8_t>& bytes = state->second;
    const uint8_t b = bytes[std::uniform_int_distribution<size_t>(0, bytes.size() - 1)(*rng)];
    matcher.Advance(b);
    text.push_back(static_cast<char>(b));
  }
}

// Patterns on which Python's re.fullmatch and ECMAScript agree, between them
// using every accepted feature but the Unicode and Python-only ones. Texts
// stay short: std::regex backtracks, exponentially so on nested repetitions
// of parts that match the empty text (((a?)*b?)+ takes seconds on ten bytes,
// so it is checked by hand below).
const std::vector<std::string>& ComparedPatterns() {
  static const std::vector<std::string> patterns = {
      // literals, alternation, empty alternatives
      "abc",
      "a|b|c",
      "ab|cd|",
      "(|a)b",
      "a||b",
      "()a",
      "x(y|z)w|xw",
      // quantifiers, greedy and lazy
      "a*",
      "a+b+",
      "a?b?c?",
      "(ab)*",
      "(a|bc)+d",
      "a{3}",
      "a{2,}",
      "a{1,3}b{0,2}",
      "(ab){2,3}",
      "(a|b){0,4}c",
      "a{0}b",
      "a{1}b{1,1}",
      "a*?b",
      "a+?b??",
      "(ab){1,2}?c",
      "a{2,}?b{0,1}?",
      // repetitions of parts that match the empty text
      "(a*)*b",
      "(a?)+",
      "(a|b?)*c",
      "((a|b)c?)*",
      "(a*b*)*c",
      "(a?b?){2,3}",
      "(|a){3}b",
      // groups
      "(?:ab|c)+",
      "x(?:y|z(?:w|v)*)?",
      "(a|ab)(c|bcd)(d*)",
      "((a)|b)+",
      "((a{1,2}){2}){0,2}",
      // classes
      "[abc]+",
      "[a-c]*x[0-2]?",
      "[^ab]+",
      "[^a-c0-9]*b",
      "[-a]+",
      "[a-]+b",
      "[\\^a]+",
      "[a^]+",
      "[\\]a]+",
      "[a\\-c]+",
      "[.*+?(){}|$]+",
      "[a-c-e]+",
      // class escapes
      "\\d+",
      "\\D\\d",
      "\\w+\\W?",
      "\\s*x\\S",
      "[\\d_]+",
      "[\\s\\d]+",
      "[^\\w]+",
      "[^\\d\\s]a",
      "[\\w.-]+@[a-z]+",
      // character escapes and the dot
      "\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\^\\$\\\\\\/",
      "\\x41\\u0042[\\x61-\\x63]",
      "\\t\\n?",
      "a.c",
      ".*a",
      "(.|\\n)b",
      // realistic patterns
      "-?(0|[1-9]\\d*)(\\.\\d+)?([eE][+-]?\\d+)?",
      "\\(\\d{3}\\) \\d{3}-\\d{4}",
      "[a-f0-9]{2,4}(:[a-f0-9]{2,4})*",
      "^[a-z]+(-[a-z]+)*$",
      "(true|false|null)",
  };
  return patterns;
}

TEST(RegexGrammar, AgreesWithStdRegexOnRandomSampledAndNearMissTexts) {
  std::mt19937 rng(20240611);
  int checked = 0;
  for (const std::string& pattern : ComparedPatterns()) {
    SCOPED_TRACE("pattern " + pattern);
    const std::regex reference(pattern, std::regex::ECMAScript);
    const Grammar grammar = Compile(pattern);
    // The pattern's own bytes (so escapes meet the characters they name)
    // and a few others.
    std::string alphabet = "a0_ \nZ.-";
    for (char c : pattern) {
      if (c != '\r' && alphabet.find(c) == std::string::npos) alphabet.push_back(c);
    }
    std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
    int mismatches = 0, accepted = 0, rejected = 0;
    auto check = [&](const std::string& text) {
      const bool want = std::regex_match(text, reference);
      const bool got = GrammarMatches(grammar, text);
      ++checked;
      (want ? accepted : rejected) += 1;
      if (want != got && ++mismatches <= 5) {
        ADD_FAILURE() << Printable(text) << ": std::regex says " << want << ", the grammar " << got;
      }
    };
    for (int i = 0; i < 2000; ++i) {
      std::string text(std::uniform_int_distribution<size_t>(0, 10)(rng), ' ');
      for (char& c : text) c = alphabet[pick(rng)];
      check(text);
    }
    int samples = 0;
    for (int i = 0; i < 200; ++i) {
      std::optional<std::string> text = Sample(grammar, &rng, 24);
      if (!text) continue;
      ++samples;
      check(*text);
      // Near misses: one byte changed, added or removed.
      for (int k = 0; k < 3; ++k) {
        std::string near = *text;
        const size_t at = std::uniform_int_distribution<size_t>(0, near.size())(rng);
        switch (k) {
          case 0:
            if (at < near.size()) near[at] = alphabet[pick(rng)];
            break;
          case 1: near.insert(near.begin() + at, alphabet[pick(rng)]); break;
          default:
            if (at < near.size()) near.erase(at, 1);
        }
        check(near);
      }
    }
    EXPECT_GT(samples, 150) << "the grammar's random walks rarely finish";
    EXPECT_GT(accepted, 0);
    EXPECT_GT(rejected, 0);
  }
  EXPECT_GT(checked, 100000);
}

TEST(RegexGrammar, UnicodeClassesAndLiterals) {
  EXPECT_TRUE(Matches("[à-ÿ]+", "àéÿ"));
  EXPECT_FALSE(Matches("[à-ÿ]+", "a"));
  EXPECT_FALSE(Matches("[à-ÿ]+", "Ā"));  // U+0100, just past ÿ
  EXPECT_FALSE(Matches("[à-ÿ]+", "\xC3"));  // half of "à"

  EXPECT_TRUE(Matches("[^a]", "é"));
  EXPECT_TRUE(Matches("[^a]", "中"));
  EXPECT_TRUE(Matches("[^a]", "😀"));
  EXPECT_FALSE(Matches("[^a]", "a"));
  EXPECT_FALSE(Matches("[^a]", ""));
  EXPECT_FALSE(Matches("[^a]", "éé"));
  EXPECT_FALSE(Matches("[^a]", "\xFF"));  // never valid UTF-8
  EXPECT_FALSE(Matches("[^a]", "\xED\xA0\x80"));  // an encoded surrogate

  EXPECT_TRUE(Matches("[\\u4e00-\\u9fff]+", "中文字"));
  EXPECT_FALSE(Matches("[\\u4e00-\\u9fff]+", "中a"));
  EXPECT_TRUE(Matches("\\u00e9", "é"));
  EXPECT_FALSE(Matches("\\u00e9", "e"));
  EXPECT_TRUE(Matches("caf[eé]s?", "café"));
  EXPECT_TRUE(Matches("caf[eé]s?", "cafes"));
  EXPECT_TRUE(Matches("中文|日本語", "日本語"));
  EXPECT_FALSE(Matches("中文|日本語", "中"));
  EXPECT_TRUE(Matches("(ж|😀){2}", "ж😀"));
  EXPECT_TRUE(Matches("\\é", "é"));  // an escaped non-ASCII character is itself

  // \d \w \s keep their ASCII meanings; \D \W \S take in all the rest.
  EXPECT_FALSE(Matches("\\w", "é"));
  EXPECT_TRUE(Matches("\\W", "é"));
  EXPECT_FALSE(Matches("\\d", "٣"));  // ARABIC-INDIC DIGIT THREE
  EXPECT_TRUE(Matches("\\D", "٣"));
  EXPECT_TRUE(Matches("\\S+", "中文"));
  EXPECT_TRUE(Matches("[\\Wa]+", "a é"));
}

TEST(RegexGrammar, DotIsAnyCodePointButNewline) {
  EXPECT_TRUE(Matches(".", "😀"));  // four bytes
  EXPECT_TRUE(Matches(".", "é"));
  EXPECT_TRUE(Matches(".", "\r"));  // Python's dot, unlike ECMAScript's
  EXPECT_TRUE(Matches(".", std::string(1, '\0')));
  EXPECT_FALSE(Matches(".", "\n"));
  EXPECT_FALSE(Matches(".", "\xF0\x9F\x98"));  // three bytes of the emoji
  EXPECT_FALSE(Matches(".", "😀😀"));
  EXPECT_TRUE(Matches("a.*z", "a😀中\té z"));
  EXPECT_FALSE(Matches("a.*z", "a\nz"));
}

TEST(RegexGrammar, NamedAndNonCapturingGroupsArePlainGroups) {
  EXPECT_TRUE(Matches("(?P<year>\\d{4})-(?<month>\\d\\d)", "2024-06"));
  EXPECT_FALSE(Matches("(?P<year>\\d{4})-(?<month>\\d\\d)", "2024-6"));
  EXPECT_TRUE(Matches("(?:(?P<a>x)|(?<b>y))+", "xyyx"));
}

TEST(RegexGrammar, AnchorsAtTheEndsChangeNothing) {
  for (const std::string pattern : {"abc", "^abc", "abc$", "^abc$"}) {
    EXPECT_TRUE(Matches(pattern, "abc")) << pattern;
    EXPECT_FALSE(Matches(pattern, "abcd")) << pattern;
    EXPECT_FALSE(Matches(pattern, "abc\n")) << pattern;
  }
  EXPECT_TRUE(Matches("^$", ""));
  EXPECT_TRUE(Matches("a|$", ""));
  EXPECT_TRUE(Matches("a\\$", "a$"));  // escaped: a literal
  EXPECT_TRUE(Matches("a\\\\$", "a\\"));  // an escaped backslash, then the anchor
  EXPECT_TRUE(Matches("\\^a", "^a"));
}

TEST(RegexGrammar, BracesThatStartNoQuantifierAreLiterals) {
  EXPECT_TRUE(Matches("a{1,x}", "a{1,x}"));
  EXPECT_TRUE(Matches("a{", "a{"));
  EXPECT_TRUE(Matches("x{}", "x{}"));
  EXPECT_TRUE(Matches("{a}", "{a}"));
  EXPECT_TRUE(Matches("a}", "a}"));
  EXPECT_TRUE(Matches("a{2}{", "aa{"));
  EXPECT_TRUE(Matches("\\{\\d+\\}", "{12}"));
}

TEST(RegexGrammar, OtherEscapesAndClassCorners) {
  EXPECT_TRUE(Matches("a\\0", std::string("a\0", 2)));
  EXPECT_TRUE(Matches("[\\b]", "\b"));  // backspace in a class
  EXPECT_TRUE(Matches("\\f\\v\\r", "\f\v\r"));
  EXPECT_TRUE(Matches("\\x7e\\u0041", "~A"));
  EXPECT_TRUE(Matches("\\ \\#\\&\\~\\\"\\'", " #&~\"'"));  // Python's re.escape output
  EXPECT_TRUE(Matches("[]a]+", "]a]"));  // "]" first is a literal, as in Python
  EXPECT_TRUE(Matches("[^]a]", "b"));
  EXPECT_FALSE(Matches("[^]a]", "]"));
  EXPECT_TRUE(Matches("[[]", "["));
  EXPECT_TRUE(Matches("[\\d-]+", "1-2"));
  EXPECT_TRUE(Matches("[\\x00-\\x7f]+", "azAZ~"));
  EXPECT_FALSE(Matches("[\\x00-\\x7f]+", "é"));
  EXPECT_TRUE(Matches("(?:)", ""));
  EXPECT_TRUE(Matches("", ""));
  EXPECT_FALSE(Matches("", "a"));
  EXPECT_TRUE(Matches("a{0,0}", ""));
  EXPECT_TRUE(Matches("(){5}", ""));
  EXPECT_TRUE(Matches("()*", ""));
  // A class of no code point matches nothing, on its own or repeated.
  EXPECT_FALSE(Matches("[^\\s\\S]", ""));
  EXPECT_FALSE(Matches("[^\\s\\S]", "a"));
  EXPECT_TRUE(Matches("a|[^\\d\\D]", "a"));
  EXPECT_TRUE(Matches("a[^\\w\\W]*", "a"));
}

TEST(RegexGrammar, LongTextsAndRepeatedEmptyParts) {
  EXPECT_TRUE(Matches("[a-z]*", std::string(1000, 'q')));
  EXPECT_TRUE(Matches("(a|b?)*c", std::string(200, 'a') + "c"));
  EXPECT_TRUE(Matches("((a?)*b?)+", std::string(100, 'a') + "b"));
  EXPECT_TRUE(Matches("((a?)*b?)+", ""));
  EXPECT_TRUE(Matches("((a?)*b?)+", "bbabaab"));
  EXPECT_FALSE(Matches("((a?)*b?)+", "aabc"));
  EXPECT_TRUE(Matches("(a{0,256}){0,256}", std::string(300, 'a')));
  EXPECT_TRUE(Matches("a{256}", std::string(256, 'a')));
  EXPECT_FALSE(Matches("a{256}", std::string(255, 'a')));
}

struct Refusal {
  std::string pattern;
  std::string construct;  // in the message
  int offset;
};

TEST(RegexGrammar, RefusesWhatItCannotFollowNamingConstructAndOffset) {
  const std::vector<Refusal> refusals = {
      {"(a)\\1", "backreference \\1", 3},
      {"(?P<n>a)(?P=n)", "backreference (?P=", 8},
      {"(?<n>a)\\k<n>", "backreference \\k", 7},
      {"a(?=b)", "lookahead (?=", 1},
      {"a(?!b)", "lookahead (?!", 1},
      {"(?<=a)b", "lookbehind (?<=", 0},
      {"(?<!a)b", "lookbehind (?<!", 0},
      {"\\bfoo", "anchor \\b", 0},
      {"a\\B", "anchor \\B", 1},
      {"\\Aa", "anchor \\A", 0},
      {"a\\Z", "anchor \\Z", 1},
      {"a\\z", "anchor \\z", 1},
      {"a^", "anchor '^'", 1},
      {"a$b", "anchor '$'", 1},
      {"(a$)", "anchor '$'", 2},
      {"(?i)abc", "inline flag (?i", 0},
      {"x(?i:a)", "inline flag (?i", 1},
      {"(?-i:a)", "inline flag (?-", 0},
      {"(?>a)", "atomic group (?>", 0},
      {"(?#note)a", "comment (?#", 0},
      {"(?(1)a|b)", "conditional group (?(", 0},
      {"(?P>n)", "group extension (?P>", 0},
      {"(?P<1a>x)", "group name", 0},
      {"(?P<a>x)(?<a>y)", "group name 'a'", 8},
      {"a*+", "possessive quantifier '*+'", 1},
      {"a{2}+", "possessive quantifier '{2}+'", 1},
      {"a**", "quantifier '*'", 2},
      {"a*??", "quantifier '?'", 3},
      {"a{2}{3}", "quantifier '{3}'", 4},
      {"*a", "'*'", 0},
      {"a|+b", "'+'", 2},
      {"(?:?a)", "'?'", 3},
      {"{3}", "'{3}'", 0},
      {"(a", "'('", 0},
      {"((a)", "'('", 0},
      {"a)", "')'", 1},
      {"(a))", "')'", 3},
      {"[]", "empty class '[]'", 0},
      {"x[^]", "empty class '[^]'", 1},
      {"[a", "class '['", 0},
      {"[z-a]", "range 'z-a'", 1},
      {"[\\d-z]", "range", 1},
      {"[a-\\w]", "range", 1},
      {"a{3,2}", "quantifier '{3,2}'", 1},
      {"a{257}", "quantifier '{257}'", 1},
      {"a{1,1000}", "quantifier '{1,1000}'", 1},
      {"a{99999999999999999999}", "quantifier", 1},
      {"a{,3}", "quantifier '{,3}'", 1},
      {"\\q", "escape \\q", 0},
      {"ab\\", "'\\'", 2},
      {"\\x4", "escape \\x", 0},
      {"\\x4g", "escape \\x", 0},
      {"\\u12", "escape \\u", 0},
      {"\\ud800", "surrogate escape \\ud800", 0},
      {"\\ud83d\\ude00", "surrogate escape \\ud83d", 0},
      {"\\p{L}", "Unicode property \\p", 0},
      {"[\\P{L}]", "Unicode property \\P", 1},
      {"\\01", "octal escape \\01", 0},
      {"\\cA", "escape \\c", 0},
      {"\\N{EM DASH}", "escape \\N", 0},
      {"\\U0001F600", "escape \\U", 0},
      {"[\\B]", "escape \\B in a class", 1},
      {"a\xFF", "invalid UTF-8", 1},
      {"a\xED\xA0\x80", "invalid UTF-8", 1},  // an encoded surrogate
      {"[\xC3]", "invalid UTF-8", 1},  // truncated
  };
  for (const Refusal& r : refusals) {
    StatusOr<Grammar> grammar = GrammarFromRegex(r.pattern);
    ASSERT_FALSE(grammar.ok()) << Printable(r.pattern) << " was accepted";
    EXPECT_EQ(grammar.status().code(), StatusCode::kInvalidArgument);
    const std::string& message = grammar.status().message();
    EXPECT_NE(message.find(r.construct), std::string::npos) << Printable(r.pattern) << ": " << message;
    EXPECT_NE(message.find("at byte " + std::to_string(r.offset) + " "), std::string::npos)
        << Printable(r.pattern) << ": " << message;
  }
}

TEST(RegexGrammar, RefusesLongPatternsAndDeepNesting) {
  EXPECT_TRUE(GrammarFromRegex(std::string(kMaxRegexPatternBytes, 'a')).ok());
  StatusOr<Grammar> long_pattern = GrammarFromRegex(std::string(kMaxRegexPatternBytes + 1, 'a'));
  ASSERT_FALSE(long_pattern.ok());
  EXPECT_NE(long_pattern.status().message().find("16384"), std::string::npos) << long_pattern.status().message();
  // Hostile nesting is refused before the parser's recursion gets deep.
  EXPECT_FALSE(GrammarFromRegex(std::string(10000, '(')).ok());

  auto nested = [](int depth) { return std::string(depth, '(') + "a|b" + std::string(depth, ')'); };
  const Grammar deepest = Compile(nested(kMaxRegexNesting));
  EXPECT_TRUE(GrammarMatches(deepest, "b"));
  StatusOr<Grammar> too_deep = GrammarFromRegex(nested(kMaxRegexNesting + 1));
  ASSERT_FALSE(too_deep.ok());
  EXPECT_NE(too_deep.status().message().find("nested deeper"), std::string::npos) << too_deep.status().message();

  // Each level of quantified groups is a few rules the matcher enters
  // before it reads a byte; the deepest accepted nesting must still match.
  std::string quantified;
  for (int i = 0; i < kMaxRegexNesting; ++i) quantified += "(x|";
  quantified += "a";
  for (int i = 0; i < kMaxRegexNesting; ++i) quantified += ")*";
  const Grammar deep_stars = Compile(quantified);
  EXPECT_TRUE(GrammarMatches(deep_stars, "aa"));
  EXPECT_TRUE(GrammarMatches(deep_stars, "xax"));
  // Counted groups multiply the places a text can be in at every level; at
  // the deepest nesting the matcher must still keep them all.
  std::string counted(kMaxRegexNesting, '(');
  counted += "a";
  for (int i = 0; i < kMaxRegexNesting; ++i) counted += "|b){2}c";
  const Grammar deep_counts = Compile(counted);
  EXPECT_TRUE(GrammarMatches(deep_counts, "bbc"));
  std::string innermost_first = "aac";  // each level: the level inside, "b", then "c"
  for (int i = 1; i < kMaxRegexNesting; ++i) innermost_first += "bc";
  EXPECT_TRUE(GrammarMatches(deep_counts, innermost_first));
  EXPECT_FALSE(GrammarMatches(deep_counts, innermost_first + "c"));
}

TEST(RegexGrammar, GrammarsStaySmall) {
  // (a|b) is one byte set; * one rule; c{2,5} three optional rules; and the root.
  EXPECT_LE(Compile("(a|b)*c{2,5}").rule_count(), 6);
  EXPECT_LE(Compile("((((a*)*)*)*)*").rule_count(), 12);
  EXPECT_LE(Compile("[a-z0-9_]+").rule_count(), 2);
  // Nested counts cost their sum, not their product.
  const Grammar nested_counts = Compile("((a{0,256}){0,256}){0,256}");
  EXPECT_LE(nested_counts.rule_count(), 4 * 260);
  // One rule per distinct non-ASCII class, however often it is used.
  const Grammar dots = Compile(".a.b.c.(.|.)*");
  EXPECT_LE(dots.rule_count(), 5);
  // Counts that add up past the grammar's limits are refused, not built.
  std::string many_counts;
  for (int i = 0; i < 1000; ++i) many_counts += "(a{0,256})";
  StatusOr<Grammar> too_big = GrammarFromRegex(many_counts);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("too large"), std::string::npos) << too_big.status().message();
}

TEST(RegexGrammar, AddRegexAddsNamedRulesAndKeepsTheCallersRoot) {
  Grammar grammar;
  const int32_t start = grammar.AddRule("start");
  grammar.set_root(start);
  StatusOr<int32_t> date = AddRegex(&grammar, "\\d{4}-\\d{2}", "date");
  StatusOr<int32_t> word = AddRegex(&grammar, "[a-z]+", "word");
  ASSERT_TRUE(date.ok() && word.ok());
  EXPECT_EQ(grammar.root(), start);
  EXPECT_EQ(grammar.rule_name(*date), "date");
  grammar.AddAlternative(start, {Grammar::Ref(*date), Grammar::Byte(' '), Grammar::Ref(*word)});
  ASSERT_TRUE(grammar.Validate().ok());
  EXPECT_TRUE(GrammarMatches(grammar, "2024-06 june"));
  EXPECT_FALSE(GrammarMatches(grammar, "2024-6 june"));

  // A refused pattern adds nothing.
  const int32_t rules = grammar.rule_count();
  EXPECT_FALSE(AddRegex(&grammar, "a(?=b)", "bad").ok());
  EXPECT_EQ(grammar.rule_count(), rules);
}

}  // namespace
}  // namespace seer
