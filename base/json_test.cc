// JsonValue: strict RFC 8259 parsing and Dump(). Expected values are written
// out by hand from the RFC (and, for UTF-8, from the Unicode encoding tables),
// never produced by the parser itself.
#include "base/json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace seer {
namespace {

JsonValue MustParse(std::string_view text) {
  auto r = JsonValue::Parse(text);
  EXPECT_TRUE(r.ok()) << text << " -> " << r.status().ToString();
  return r.ok() ? std::move(r).value() : JsonValue();
}

// Parses `text`, expects INVALID_ARGUMENT, and returns the message.
std::string ParseError(std::string_view text) {
  auto r = JsonValue::Parse(text);
  EXPECT_FALSE(r.ok()) << "accepted: " << text;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  return r.status().message();
}

TEST(Json, ParsesScalarsAndStructure) {
  JsonValue v = MustParse(R"( {"a": [1, -2, 3.5, true, false, null], "b": {"c": "d"}, "e": []} )");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.as_object().size(), 3u);
  EXPECT_EQ(v.as_object()[0].first, "a");  // member order preserved
  EXPECT_EQ(v.as_object()[1].first, "b");
  EXPECT_EQ(v.as_object()[2].first, "e");
  const JsonValue* a = v.Find("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->as_array().size(), 6u);
  EXPECT_TRUE(a->as_array()[0].is_integer());
  EXPECT_EQ(a->as_array()[0].as_int64(), 1);
  EXPECT_EQ(a->as_array()[1].as_int64(), -2);
  EXPECT_FALSE(a->as_array()[2].is_integer());
  EXPECT_EQ(a->as_array()[2].as_double(), 3.5);
  EXPECT_TRUE(a->as_array()[3].as_bool());
  EXPECT_FALSE(a->as_array()[4].as_bool());
  EXPECT_TRUE(a->as_array()[5].is_null());
  ASSERT_NE(v.Find("b"), nullptr);
  EXPECT_EQ(v.Find("b")->Find("c")->as_string(), "d");
  EXPECT_TRUE(v.Find("e")->is_array());
  EXPECT_EQ(v.Find("missing"), nullptr);
  EXPECT_EQ(a->Find("a"), nullptr);  // not an object
}

TEST(Json, IntegersAreExactInInt64) {
  // 2^63-1 and -2^63 are not representable as doubles; they must survive exactly.
  JsonValue v = MustParse("[9223372036854775807, -9223372036854775808, 9007199254740993]");
  EXPECT_EQ(v.as_array()[0].as_int64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(v.as_array()[1].as_int64(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(v.as_array()[2].as_int64(), 9007199254740993LL);  // 2^53 + 1
  // One past int64 is still a number, but not an integer.
  JsonValue big = MustParse("9223372036854775808");
  EXPECT_FALSE(big.is_integer());
  EXPECT_EQ(big.as_double(), 9223372036854775808.0);
  // A fraction or exponent makes it a non-integer even when the value is whole.
  EXPECT_FALSE(MustParse("1.0").is_integer());
  EXPECT_FALSE(MustParse("1e2").is_integer());
  EXPECT_EQ(MustParse("1e2").as_double(), 100.0);
  EXPECT_EQ(MustParse("-0").as_int64(), 0);
}

TEST(Json, Doubles) {
  EXPECT_EQ(MustParse("1e-5").as_double(), 1e-5);
  EXPECT_EQ(MustParse("500000.0").as_double(), 500000.0);
  EXPECT_EQ(MustParse("-2.5E+3").as_double(), -2500.0);
  EXPECT_EQ(MustParse("1e-400").as_double(), 0.0);  // underflow rounds to zero
  const std::string msg = ParseError("[1e400]");
  EXPECT_NE(msg.find("out of the range"), std::string::npos) << msg;
}

TEST(Json, StringEscapes) {
  JsonValue v = MustParse(R"(["a\"b\\c\/d\b\f\n\r\t", "\u0041\u00e9\u20AC", "\ud83d\ude00"])");
  EXPECT_EQ(v.as_array()[0].as_string(), "a\"b\\c/d\b\f\n\r\t");
  // U+0041 'A', U+00E9 C3 A9, U+20AC E2 82 AC.
  EXPECT_EQ(v.as_array()[1].as_string(), "A\xC3\xA9\xE2\x82\xAC");
  // Surrogate pair D83D DE00 = U+1F600 = F0 9F 98 80.
  EXPECT_EQ(v.as_array()[2].as_string(), "\xF0\x9F\x98\x80");
  // Raw UTF-8 passes through.
  EXPECT_EQ(MustParse("\"\xE2\x82\xAC\"").as_string(), "\xE2\x82\xAC");
}

TEST(Json, RejectsWhatTheRfcRejects) {
  const char* bad[] = {
      "",
      "   ",
      "{",
      "[1,]",
      "{\"a\":1,}",
      "[01]",
      "[-]",
      "[1.]",
      "[.5]",
      "[1e]",
      "[+1]",
      "NaN",
      "[Infinity]",
      "'a'",
      "{a:1}",
      "[tru]",
      "\"\\x\"",
      "\"\\u12\"",
      "\"\\ud83d\"",
      "\"\\ude00\"",
      "\"\\ud83d\\u0041\"",
      "\"a\nb\"",
      "\"\xC3\"",
      "\"\xC0\xAF\"",
      "\"\xED\xA0\x80\"",
      "\"\xF4\x90\x80\x80\"",
      "[1] [2]",
      "[1 2]",
      "{\"a\" 1}",
      "// c\n1",
      "\xEF\xBB\xBF{}",
  };
  for (const char* text : bad) ParseError(text);
}

TEST(Json, ErrorsCarryLineAndColumn) {
  // The stray '}' is on line 3, column 8.
  const std::string msg = ParseError("{\n  \"a\": 1,\n  \"b\": }\n");
  EXPECT_EQ(msg.rfind("line 3, column 8: ", 0), 0u) << msg;
  // Columns count characters, not bytes: "é" is one column.
  const std::string msg2 = ParseError("[\"\xC3\xA9\", x]");
  EXPECT_EQ(msg2.rfind("line 1, column 7: ", 0), 0u) << msg2;
}

TEST(Json, DepthLimit) {
  const int limit = JsonValue::kMaxDepth;
  const std::string ok = std::string(limit, '[') + std::string(limit, ']');
  EXPECT_TRUE(JsonValue::Parse(ok).ok());
  const std::string deep = std::string(limit + 1, '[') + std::string(limit + 1, ']');
  const std::string msg = ParseError(deep);
  EXPECT_NE(msg.find("nesting deeper than 128"), std::string::npos) << msg;
  // Far deeper than the limit must not exhaust the stack either.
  ParseError(std::string(1000000, '['));
}

TEST(Json, DuplicateKeysKeepTheLast) {
  JsonValue v = MustParse(R"({"a": 1, "b": 2, "a": 3})");
  ASSERT_EQ(v.as_object().size(), 2u);
  EXPECT_EQ(v.Find("a")->as_int64(), 3);
}

TEST(Json, DumpIsCompactAndEscapes) {
  JsonValue v = JsonValue::Object();
  v.Set("tokens", JsonValue::Array());
  v.Set("tokens", JsonValue::Array()).Append(JsonValue::Int(1));
  v.Set("x", JsonValue::Number(0.1));
  v.Set("s", JsonValue::String("q\"\\\n\x01\xE2\x82\xAC"));
  v.Set("n", JsonValue());
  v.Set("b", JsonValue::Bool(false));
  v.Set("big", JsonValue::Int(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(v.Dump(),
            "{\"tokens\":[1],\"x\":0.1,\"s\":\"q\\\"\\\\\\n\\u0001\xE2\x82\xAC\",\"n\":null,\"b\":false,"
            "\"big\":-9223372036854775808}");
  // JSON has no NaN; invalid UTF-8 becomes U+FFFD so the output always parses.
  EXPECT_EQ(JsonValue::Number(std::nan("")).Dump(), "null");
  EXPECT_EQ(JsonValue::String("a\xFF").Dump(), "\"a\xEF\xBF\xBD\"");
}

TEST(Json, DoublesRoundTripThroughDump) {
  for (double d : {0.1, 1e-5, 1.0 / 3.0, 6.02214076e23, -2.2250738585072014e-308, 5e-324, -0.0}) {
    const std::string text = JsonValue::Number(d).Dump();
    EXPECT_EQ(MustParse(text).as_double(), d) << text;
    EXPECT_EQ(std::signbit(MustParse(text).as_double()), std::signbit(d)) << text;
  }
  // A double that prints without fraction or exponent reads back as the same number.
  EXPECT_EQ(JsonValue::Number(-0.0).Dump(), "-0.0");
  EXPECT_EQ(MustParse(JsonValue::Number(9223372036857784320.0).Dump()).as_double(), 9223372036857784320.0);
}

}  // namespace
}  // namespace seer
