// The regex engine's Oniguruma semantics on small cases (the split patterns
// themselves are checked against Hugging Face by tokenizer_fixtures_test),
// and its refusals: every construct outside the supported set is an error
// at compile time that names it.
#include "text/regex.h"

#include <gtest/gtest.h>

#include "text/unicode.h"

namespace seer {
namespace {

std::vector<std::string> Matches(const std::string& pattern, const std::string& text) {
  auto re = Regex::Compile(pattern);
  EXPECT_TRUE(re.ok()) << pattern << ": " << re.status().ToString();
  if (!re.ok()) return {};
  std::u32string u;
  EXPECT_TRUE(unicode::DecodeUtf8(text, &u));
  std::vector<std::pair<uint32_t, uint32_t>> m;
  EXPECT_TRUE(re->FindAll(u.data(), u.size(), &m).ok());
  std::vector<std::string> out;
  for (auto [s, e] : m) out.push_back(unicode::ToUtf8(u.substr(s, e - s)));
  return out;
}

using V = std::vector<std::string>;

TEST(Regex, LeftmostFirstAlternationAndGreedyQuantifiers) {
  EXPECT_EQ(Matches("a|ab", "ab ab"), (V{"a", "a"}));
  EXPECT_EQ(Matches("ab|a", "ab a"), (V{"ab", "a"}));
  EXPECT_EQ(Matches(R"(\p{N}{1,3})", "1234567"), (V{"123", "456", "7"}));
  EXPECT_EQ(Matches("a+?", "aaa"), (V{"a", "a", "a"}));
  EXPECT_EQ(Matches("a{2,}", "aaaaa a aa"), (V{"aaaaa", "aa"}));
  EXPECT_EQ(Matches("a{,2}b", "aaab"), (V{"aab"}));
  EXPECT_EQ(Matches("x{2}", "xxxxx"), (V{"xx", "xx"}));
  EXPECT_EQ(Matches("a{1,x}", "a{1,x}"), (V{"a{1,x}"}));  // not an interval: literal braces
}

TEST(Regex, LookaheadAsInTheSplitPatterns) {
  // \s+(?!\S) leaves the last space for the next word.
  EXPECT_EQ(Matches(R"(\s+(?!\S)|\s+|\S+)", "a   b  "), (V{"a", "  ", " ", "b", "  "}));
  EXPECT_EQ(Matches("a(?=b)", "ab ac"), (V{"a"}));
}

TEST(Regex, CaseInsensitiveGroupsFoldLikeOniguruma) {
  EXPECT_EQ(Matches("(?i:'s|'t)", "'S 's 'T '\u017F"), (V{"'S", "'s", "'T", "'\u017F"}));
  EXPECT_EQ(Matches("(?i:k)", "Kk\u212A"), (V{"K", "k", "\u212A"}));
  EXPECT_EQ(Matches("(?i:[a-c])x", "Bx bx dx"), (V{"Bx", "bx"}));
}

TEST(Regex, ClassesAndEscapes) {
  EXPECT_EQ(Matches(R"([^\s\p{L}\p{N}]+)", "ab!?1 .,"), (V{"!?", ".,"}));
  EXPECT_EQ(Matches(R"([\r\n]+)", "a\r\n\nb"), (V{"\r\n\n"}));
  EXPECT_EQ(Matches(R"(\x41\x{1F600}\u00e9)", "A\U0001F600\u00e9"), (V{"A\U0001F600\u00e9"}));
  EXPECT_EQ(Matches(R"(\p{^L}+)", "ab12cd"), (V{"12"}));
  EXPECT_EQ(Matches(R"(\P{L}+)", "ab12cd"), (V{"12"}));
  EXPECT_EQ(Matches(R"([]a]+)", "]a]b"), (V{"]a]"}));
  EXPECT_EQ(Matches(R"(\.\*)", "a.*b"), (V{".*"}));
  EXPECT_EQ(Matches(".", "a\nb"), (V{"a", "b"}));
}

TEST(Regex, EmptyMatchesAdvanceLikeFindIter) {
  // The onig crate skips an empty match that ends where the previous match
  // ended (here the one right after "x"), unlike Rust's regex crate.
  EXPECT_EQ(Matches("x*", "axb"), (V{"", "x", ""}));
  EXPECT_EQ(Matches("(?=a)", "aa"), (V{"", ""}));
}

TEST(Regex, UnsupportedConstructsAreNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {"^a", "anchor ^"},           {"a$", "anchor $"},
      {R"(\bfoo)", "anchor \\b"},   {R"((a)\1)", "backreference"},
      {"(?<=a)b", "lookbehind"},    {"(?>a)", "atomic group"},
      {"a++", "possessive"},        {"(?i)a", "inline flags"},
      {R"(\p{Han})", "\\p{Han}"},   {"[[:alpha:]]", "POSIX"},
      {"[a&&b]", "intersection"},   {"(a", "missing ')'"},
      {"a)", "unmatched ')'"},      {"*a", "nothing to repeat"},
      {"(a*)*", "can match empty"}, {"[abc", "unterminated"},
      {R"(\h)", "escape \\h"},      {"(?<name>a)", "named group"},
  };
  for (const auto& [pattern, what] : cases) {
    auto re = Regex::Compile(pattern);
    ASSERT_FALSE(re.ok()) << pattern;
    EXPECT_NE(re.status().message().find(what), std::string::npos) << pattern << " -> " << re.status().message();
  }
}

TEST(Regex, CatastrophicBacktrackingIsAnErrorNotAHang) {
  auto re = Regex::Compile("(a|aa)+b");
  ASSERT_TRUE(re.ok());
  std::u32string text(5000, U'a');
  std::vector<std::pair<uint32_t, uint32_t>> m;
  const Status s = re->FindAll(text.data(), text.size(), &m);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
}

}  // namespace
}  // namespace seer
