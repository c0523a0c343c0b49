// The Unicode tables against what Hugging Face tokenizers 0.23.2 does
// (tests/fixtures/tokenizers/unicode_probes.json): every code point's
// membership in the regex classes its Oniguruma knows, the (?i) case
// orbits, and its NFC normaliser on every code point and on decomposed
// sequences. Plus UTF-8 decoding and Rust's from_utf8_lossy rules.
#include "text/unicode.h"

#include <gtest/gtest.h>

#include <map>

#include "text/regex.h"
#include "text/text_test_util.h"

namespace seer {
namespace {

using text_test::LoadJson;

std::vector<bool> Members(const JsonValue& ranges) {
  std::vector<bool> in(0x110000, false);
  for (const JsonValue& r : ranges.as_array()) {
    for (int64_t c = r.as_array()[0].as_int64(); c <= r.as_array()[1].as_int64(); ++c) in[c] = true;
  }
  return in;
}

// Each class through our regex engine, as the probe ran it through Oniguruma.
TEST(UnicodeTables, RegexClassesEqualOniguruma) {
  const JsonValue probe = LoadJson("unicode_probes.json");
  const JsonValue* classes = probe.Find("classes");
  ASSERT_NE(classes, nullptr);
  const std::map<std::string, std::string> patterns = {
      {"L", R"(\p{L})"},   {"N", R"(\p{N})"},   {"s", R"(\s)"},      {"M", R"(\p{M})"}, {"P", R"(\p{P})"},
      {"S", R"(\p{S})"},   {"Z", R"(\p{Z})"},   {"C", R"(\p{C})"},   {"d", R"(\d)"},    {"w", R"(\w)"},
      {"Lu", R"(\p{Lu})"}, {"Nd", R"(\p{Nd})"}, {"Cn", R"(\p{Cn})"}, {"i_s", "(?i:s)"}, {"i_t", "(?i:t)"},
      {"i_r", "(?i:r)"},   {"i_e", "(?i:e)"},   {"i_v", "(?i:v)"},   {"i_m", "(?i:m)"}, {"i_l", "(?i:l)"},
      {"i_d", "(?i:d)"},   {"i_k", "(?i:k)"}};
  int compared = 0;
  for (const auto& [name, pattern] : patterns) {
    const JsonValue* ranges = classes->Find(name);
    ASSERT_NE(ranges, nullptr) << name;
    const std::vector<bool> want = Members(*ranges);
    auto re = Regex::Compile(pattern);
    ASSERT_TRUE(re.ok()) << re.status().ToString();
    int mismatches = 0;
    for (char32_t c = 0; c <= 0x10FFFF; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      std::vector<std::pair<uint32_t, uint32_t>> m;
      ASSERT_TRUE(re->FindAll(&c, 1, &m).ok());
      const bool got = !m.empty();
      if (got != want[c] && ++mismatches <= 5) {
        ADD_FAILURE() << name << ": U+" << std::hex << static_cast<uint32_t>(c) << " ours " << got << " HF " << want[c];
      }
      ++compared;
    }
    EXPECT_EQ(mismatches, 0) << name;
  }
  RecordProperty("code_points_compared", compared);
}

TEST(UnicodeTables, NfcOfEveryCodePointEqualsHuggingFace) {
  const JsonValue probe = LoadJson("unicode_probes.json");
  const JsonValue* changed = probe.Find("nfc_single_changed");
  ASSERT_NE(changed, nullptr);
  std::map<char32_t, std::string> want;
  for (const auto& [k, v] : changed->as_object()) want[static_cast<char32_t>(std::stoul(k))] = v.as_string();
  int mismatches = 0;
  for (char32_t c = 0; c <= 0x10FFFF; ++c) {
    if ((c >= 0xD800 && c <= 0xDFFF) || c == '\n') continue;
    std::string s;
    unicode::AppendUtf8(c, &s);
    auto it = want.find(c);
    const std::string expected = it == want.end() ? s : it->second;
    if (unicode::Nfc(s) != expected && ++mismatches <= 5) {
      ADD_FAILURE() << "NFC(U+" << std::hex << static_cast<uint32_t>(c) << ")";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(UnicodeTables, NfcOfSequencesEqualsHuggingFace) {
  const JsonValue probe = LoadJson("unicode_probes.json");
  const JsonValue* seqs = probe.Find("nfc_sequences");
  ASSERT_NE(seqs, nullptr);
  ASSERT_GT(seqs->as_array().size(), 1000u);
  for (const JsonValue& pair : seqs->as_array()) {
    const std::string& in = pair.as_array()[0].as_string();
    EXPECT_EQ(unicode::Nfc(in), pair.as_array()[1].as_string()) << text_test::Show(in);
  }
}

TEST(Utf8, StrictDecodingRejectsWhatRustRejects) {
  std::u32string out;
  EXPECT_TRUE(unicode::DecodeUtf8("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", &out));
  EXPECT_EQ(out, (std::u32string{U'a', 0xE9, 0x20AC, 0x1F600}));
  for (std::string bad : {"\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\x80", "\xFF"}) {
    EXPECT_FALSE(unicode::IsValidUtf8(bad)) << text_test::Show(bad);
  }
}

TEST(Utf8, LossyReplacesEachMaximalInvalidSubpart) {
  // Unicode's "maximal subpart" practice, as Rust's from_utf8_lossy.
  EXPECT_EQ(unicode::Utf8Lossy("a\xE2\x82"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(unicode::Utf8Lossy("\xE2\x82\xE2\x82\xAC"), "\xEF\xBF\xBD\xE2\x82\xAC");
  EXPECT_EQ(unicode::Utf8Lossy("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::Utf8Lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(unicode::Utf8Lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");
  EXPECT_EQ(unicode::CompleteUtf8Prefix("ab\xF0\x9F\x98"), 2u);
  EXPECT_EQ(unicode::CompleteUtf8Prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(unicode::CompleteUtf8Prefix("ab\xFF"), 3u);
}

}  // namespace
}  // namespace seer
