// GrammarFromJsonSchema against references that share no code with it:
// every sentence of a seeded random walk through the grammar must parse
// with base/json's strict parser and pass a small JSON Schema validator
// written here from the specification (the test-side twin of the subset);
// hand-written instances check what is accepted and what is not; and every
// refusal names the JSON pointer of the keyword at fault.
#include "text/json_schema_grammar.h"

#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "text/grammar_test_util.h"

namespace seer {
namespace {

using grammar_test::RandomSentence;

JsonValue ParseSchema(std::string_view text) {
  StatusOr<JsonValue> parsed = JsonValue::Parse(text);
  EXPECT_TRUE(parsed.ok()) << "bad schema in the test: " << parsed.status().ToString() << "\n" << text;
  return parsed.ok() ? *parsed : JsonValue();
}

// ---------------------------------------------------------------------------
// The reference validator: JSON Schema (2020-12, with draft 4-7 spellings the
// compiler accepts) for the keywords the tests use, from the specification.

size_t CodepointCount(const std::string& s) {
  size_t count = 0;
  for (unsigned char c : s) count += (c & 0xC0) != 0x80;
  return count;
}

bool JsonEqual(const JsonValue& a, const JsonValue& b) {
  if (a.is_number() && b.is_number()) return a.as_double() == b.as_double();
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case JsonValue::Type::kNull: return true;
    case JsonValue::Type::kBool: return a.as_bool() == b.as_bool();
    case JsonValue::Type::kString: return a.as_string() == b.as_string();
    case JsonValue::Type::kArray:
      if (a.as_array().size() != b.as_array().size()) return false;
      for (size_t i = 0; i < a.as_array().size(); ++i) {
        if (!JsonEqual(a.as_array()[i], b.as_array()[i])) return false;
      }
      return true;
    case JsonValue::Type::kObject:
      if (a.as_object().size() != b.as_object().size()) return false;
      for (const auto& [key, value] : a.as_object()) {
        const JsonValue* other = b.Find(key);
        if (other == nullptr || !JsonEqual(value, *other)) return false;
      }
      return true;
    default: return false;
  }
}

bool AllDigits(std::string_view s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos; }

// RFC 3339 full-date, with the real calendar (29 February in leap years).
bool ValidDate(std::string_view s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  if (!AllDigits(s.substr(0, 4)) || !AllDigits(s.substr(5, 2)) || !AllDigits(s.substr(8, 2))) return false;
  const int year = std::stoi(std::string(s.substr(0, 4)));
  const int month = std::stoi(std::string(s.substr(5, 2)));
  const int day = std::stoi(std::string(s.substr(8, 2)));
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12) return false;
  return day >= 1 && day <= kDays[month - 1] + (month == 2 && leap);
}

bool TwoDigitsAtMost(std::string_view s, int most) {
  return s.size() == 2 && AllDigits(s) && std::stoi(std::string(s)) <= most;
}

// RFC 3339 full-time: HH:MM:SS, an optional fraction, then Z or an offset.
bool ValidTime(std::string_view s) {
  if (s.size() < 9 || s[2] != ':' || s[5] != ':') return false;
  if (!TwoDigitsAtMost(s.substr(0, 2), 23) || !TwoDigitsAtMost(s.substr(3, 2), 59) ||
      !TwoDigitsAtMost(s.substr(6, 2), 60)) {
    return false;
  }
  size_t pos = 8;
  if (s[pos] == '.') {
    const size_t end = s.find_first_not_of("0123456789", pos + 1);
    if (end == std::string_view::npos || end == pos + 1) return false;
    pos = end;
  }
  const std::string_view zone = s.substr(pos);
  if (zone == "Z" || zone == "z") return true;
  return zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':' &&
         TwoDigitsAtMost(zone.substr(1, 2), 23) && TwoDigitsAtMost(zone.substr(4, 2), 59);
}

bool ValidDateTime(std::string_view s) {
  return s.size() > 11 && (s[10] == 'T' || s[10] == 't') && ValidDate(s.substr(0, 10)) && ValidTime(s.substr(11));
}

bool ValidUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash && !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool ValidIpv4(std::string_view s) {
  int parts = 0;
  size_t pos = 0;
  while (true) {
    const size_t end = std::min(s.find('.', pos), s.size());
    const std::string_view part = s.substr(pos, end - pos);
    if (!AllDigits(part) || part.size() > 3 || (part.size() > 1 && part[0] == '0')) return false;
    if (std::stoi(std::string(part)) > 255) return false;
    ++parts;
    if (end == s.size()) break;
    pos = end + 1;
  }
  return parts == 4;
}

// RFC 5321's mailbox, loosely: one "@" between a non-empty local part and a
// dotted domain of letters, digits and hyphens, no spaces or quotes.
bool ValidEmail(std::string_view s) {
  const size_t at = s.find('@');
  if (at == std::string_view::npos || at == 0 || s.find('@', at + 1) != std::string_view::npos) return false;
  if (s.find_first_of(" \"\\") != std::string_view::npos) return false;
  const std::string_view domain = s.substr(at + 1);
  if (domain.find('.') == std::string_view::npos || domain.front() == '.' || domain.back() == '.') return false;
  for (char c : domain) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') return false;
  }
  return true;
}

class ReferenceValidator {
 public:
  explicit ReferenceValidator(const JsonValue& root) : root_(root) {}

  // Why `value` does not match `schema`, or "" when it does.
  std::string Check(const JsonValue& schema, const JsonValue& value, const std::string& path = "$") const {
    if (schema.is_bool()) return schema.as_bool() ? "" : path + ": the schema false";
    const auto fail = [&](const std::string& why) { return path + ": " + why + " (value " + value.Dump() + ")"; };
    if (const JsonValue* ref = schema.Find("$ref")) {
      const JsonValue* target = Resolve(ref->as_string());
      if (target == nullptr) return fail("unresolved $ref");
      if (std::string why = Check(*target, value, path); !why.empty()) return why;
    }
    if (const JsonValue* type = schema.Find("type")) {
      std::vector<JsonValue> names = type->is_array() ? type->as_array() : std::vector<JsonValue>{*type};
      bool any = false;
      for (const JsonValue& name : names) any = any || HasType(value, name.as_string());
      if (!any) return fail("not of type " + type->Dump());
    }
    if (const JsonValue* values = schema.Find("enum")) {
      bool any = false;
      for (const JsonValue& v : values->as_array()) any = any || JsonEqual(v, value);
      if (!any) return fail("not in enum");
    }
    if (const JsonValue* constant = schema.Find("const"); constant != nullptr && !JsonEqual(*constant, value)) {
      return fail("not the const");
    }
    if (const JsonValue* branches = schema.Find("anyOf")) {
      if (CountMatches(*branches, value, path) == 0) return fail("matches no anyOf branch");
    }
    if (const JsonValue* branches = schema.Find("oneOf")) {
      if (CountMatches(*branches, value, path) != 1) return fail("does not match exactly one oneOf branch");
    }
    if (const JsonValue* branches = schema.Find("allOf")) {
      if (CountMatches(*branches, value, path) != branches->as_array().size()) return fail("fails an allOf branch");
    }
    if (value.is_string()) return CheckString(schema, value, fail);
    if (value.is_number()) return CheckNumber(schema, value, fail);
    if (value.is_object()) return CheckObject(schema, value, path, fail);
    if (value.is_array()) return CheckArray(schema, value, path, fail);
    return "";
  }

 private:
  static bool HasType(const JsonValue& value, const std::string& name) {
    if (name == "null") return value.is_null();
    if (name == "boolean") return value.is_bool();
    if (name == "number") return value.is_number();
    if (name == "integer") return value.is_number() && std::floor(value.as_double()) == value.as_double();
    if (name == "string") return value.is_string();
    if (name == "array") return value.is_array();
    if (name == "object") return value.is_object();
    return false;
  }

  size_t CountMatches(const JsonValue& branches, const JsonValue& value, const std::string& path) const {
    size_t count = 0;
    for (const JsonValue& branch : branches.as_array()) count += Check(branch, value, path).empty();
    return count;
  }

  template <typename Fail>
  std::string CheckString(const JsonValue& schema, const JsonValue& value, const Fail& fail) const {
    const std::string& s = value.as_string();
    if (const JsonValue* min = schema.Find("minLength"); min != nullptr && CodepointCount(s) < min->as_double()) {
      return fail("shorter than minLength");
    }
    if (const JsonValue* max = schema.Find("maxLength"); max != nullptr && CodepointCount(s) > max->as_double()) {
      return fail("longer than maxLength");
    }
    // ECMAScript regular expressions search, as JSON Schema says.
    if (const JsonValue* pattern = schema.Find("pattern");
        pattern != nullptr && !std::regex_search(s, std::regex(pattern->as_string(), std::regex::ECMAScript))) {
      return fail("does not match the pattern");
    }
    if (const JsonValue* format = schema.Find("format")) {
      const std::string& f = format->as_string();
      const bool ok = f == "date"        ? ValidDate(s)
                      : f == "time"      ? ValidTime(s)
                      : f == "date-time" ? ValidDateTime(s)
                      : f == "uuid"      ? ValidUuid(s)
                      : f == "ipv4"      ? ValidIpv4(s)
                      : f == "email"     ? ValidEmail(s)
                                         : false;
      if (!ok) return fail("not a valid " + f);
    }
    return "";
  }

  template <typename Fail>
  std::string CheckNumber(const JsonValue& schema, const JsonValue& value, const Fail& fail) const {
    const double x = value.as_double();
    const JsonValue* minimum = schema.Find("minimum");
    const JsonValue* exclusive = schema.Find("exclusiveMinimum");
    const bool draft4_exclusive = exclusive != nullptr && exclusive->is_bool() && exclusive->as_bool();
    if (minimum != nullptr && (draft4_exclusive ? x <= minimum->as_double() : x < minimum->as_double())) {
      return fail("below minimum");
    }
    if (exclusive != nullptr && exclusive->is_number() && x <= exclusive->as_double())
      return fail("not above exclusiveMinimum");
    if (const JsonValue* maximum = schema.Find("maximum"); maximum != nullptr && x > maximum->as_double()) {
      return fail("above maximum");
    }
    return "";
  }

  template <typename Fail>
  std::string CheckObject(const JsonValue& schema, const JsonValue& value, const std::string& path,
                          const Fail& fail) const {
    const JsonValue* properties = schema.Find("properties");
    const JsonValue* additional = schema.Find("additionalProperties");
    for (const auto& [key, member] : value.as_object()) {
      const JsonValue* property = properties != nullptr ? properties->Find(key) : nullptr;
      const JsonValue* member_schema = property != nullptr ? property : additional;
      if (member_schema == nullptr) continue;
      if (std::string why = Check(*member_schema, member, path + "." + key); !why.empty()) return why;
    }
    if (const JsonValue* required = schema.Find("required")) {
      for (const JsonValue& name : required->as_array()) {
        if (value.Find(name.as_string()) == nullptr) return fail("misses required " + name.Dump());
      }
    }
    if (const JsonValue* min = schema.Find("minProperties");
        min != nullptr && value.as_object().size() < min->as_double()) {
      return fail("fewer than minProperties");
    }
    if (const JsonValue* max = schema.Find("maxProperties");
        max != nullptr && value.as_object().size() > max->as_double()) {
      return fail("more than maxProperties");
    }
    return "";
  }

  template <typename Fail>
  std::string CheckArray(const JsonValue& schema, const JsonValue& value, const std::string& path,
                         const Fail& fail) const {
    const std::vector<JsonValue>& elements = value.as_array();
    const JsonValue* prefix = schema.Find("prefixItems");
    const JsonValue* rest = schema.Find("items");
    if (prefix == nullptr && rest != nullptr && rest->is_array()) {  // draft 4-7 tuples
      prefix = rest;
      rest = schema.Find("additionalItems");
    }
    for (size_t i = 0; i < elements.size(); ++i) {
      const size_t fixed = prefix != nullptr ? prefix->as_array().size() : 0;
      const JsonValue* element_schema = i < fixed ? &prefix->as_array()[i] : rest;
      if (element_schema == nullptr) continue;
      if (std::string why = Check(*element_schema, elements[i], path + "[" + std::to_string(i) + "]"); !why.empty()) {
        return why;
      }
    }
    if (const JsonValue* min = schema.Find("minItems"); min != nullptr && elements.size() < min->as_double()) {
      return fail("fewer than minItems");
    }
    if (const JsonValue* max = schema.Find("maxItems"); max != nullptr && elements.size() > max->as_double()) {
      return fail("more than maxItems");
    }
    return "";
  }

  // A local reference: "#" and a JSON pointer.
  const JsonValue* Resolve(const std::string& ref) const {
    if (ref.empty() || ref[0] != '#') return nullptr;
    const JsonValue* at = &root_;
    std::string rest = ref.substr(1);
    while (at != nullptr && !rest.empty()) {
      rest = rest.substr(1);  // the '/'
      const size_t slash = rest.find('/');
      std::string token = rest.substr(0, slash);
      rest = slash == std::string::npos ? "" : rest.substr(slash);
      for (size_t p; (p = token.find("~1")) != std::string::npos;) token.replace(p, 2, "/");
      for (size_t p; (p = token.find("~0")) != std::string::npos;) token.replace(p, 2, "~");
      at = at->Find(token);
    }
    return at;
  }

  const JsonValue& root_;
};

// ---------------------------------------------------------------------------
// Sentences of a grammar by random walk.

StatusOr<Grammar> Compile(std::string_view schema_text) { return GrammarFromJsonSchema(ParseSchema(schema_text)); }

// Checks `count` random sentences of the schema's grammar against the
// strict parser and the reference validator; returns them, parsed.
std::vector<JsonValue> CheckRandomSentences(std::string_view schema_text, int count = 300, uint32_t seed = 1) {
  SCOPED_TRACE(std::string(schema_text));
  const JsonValue schema = ParseSchema(schema_text);
  StatusOr<Grammar> grammar = GrammarFromJsonSchema(schema);
  EXPECT_TRUE(grammar.ok()) << grammar.status().ToString();
  if (!grammar.ok()) return {};
  const ReferenceValidator validator(schema);
  std::mt19937 rng(seed);
  std::vector<JsonValue> sentences;
  for (int i = 0; i < count; ++i) {
    std::optional<std::string> text = RandomSentence(*grammar, rng);
    if (!text) continue;
    StatusOr<JsonValue> parsed = JsonValue::Parse(*text);
    EXPECT_TRUE(parsed.ok()) << parsed.status().ToString() << " in " << *text;
    if (!parsed.ok()) continue;
    EXPECT_EQ(validator.Check(schema, *parsed), "") << "sentence: " << *text;
    sentences.push_back(*parsed);
  }
  EXPECT_GE(sentences.size(), static_cast<size_t>(count) / 2) << "most walks ran too long";
  return sentences;
}

// Valid instances must be sentences (and, to check the test itself, pass
// the parser and the reference validator); invalid ones must not be
// sentences. "Invalid" includes texts JSON Schema allows but the grammar
// leaves out on purpose; those are commented where they appear.
void ExpectInstances(std::string_view schema_text, const std::vector<std::string>& valid,
                     const std::vector<std::string>& invalid) {
  SCOPED_TRACE(std::string(schema_text));
  const JsonValue schema = ParseSchema(schema_text);
  StatusOr<Grammar> grammar = GrammarFromJsonSchema(schema);
  ASSERT_TRUE(grammar.ok()) << grammar.status().ToString();
  const ReferenceValidator validator(schema);
  for (const std::string& text : valid) {
    EXPECT_TRUE(GrammarMatches(*grammar, text)) << "rejected valid instance: " << text;
    StatusOr<JsonValue> parsed = JsonValue::Parse(text);
    ASSERT_TRUE(parsed.ok()) << "the test's valid instance does not parse: " << text;
    EXPECT_EQ(validator.Check(schema, *parsed), "") << "the test's valid instance is invalid: " << text;
  }
  for (const std::string& text : invalid) {
    EXPECT_FALSE(GrammarMatches(*grammar, text)) << "accepted invalid instance: " << text;
  }
}

// The message of the refusal of `schema_text`, or "accepted".
std::string Refusal(std::string_view schema_text) {
  StatusOr<Grammar> grammar = Compile(schema_text);
  if (grammar.ok()) return "accepted";
  EXPECT_EQ(grammar.status().code(), StatusCode::kInvalidArgument);
  return grammar.status().message();
}

// ---------------------------------------------------------------------------

TEST(JsonSchemaGrammar, StringsAndTheirEscapes) {
  const char* schema = R"({"type": "string"})";
  const std::vector<JsonValue> sentences = CheckRandomSentences(schema);
  int escaped = 0;
  for (const JsonValue& s : sentences) escaped += s.as_string().find_first_of("\"\\/\b\f\n\r\t") != std::string::npos;
  EXPECT_GT(escaped, 0) << "the walks never wrote an escape";
  ExpectInstances(schema,
                  {R"("")", R"("abc")", "\"\u00e9\u5b57\U0001F600\"", R"("a\"b\\c\/\b\f\n\r\t")",
                   R"("\u00e9\uD83D\uDE00\u0000")", "  \"x\"\n"},
                  {
                      R"("a)", "abc", "\"\x01\"", "\"a\nb\"",  // unterminated, bare, raw control characters
                      R"("\u12")", R"("\x41")", R"("a"b")",  // bad escapes, a stray quote
                      R"("\ud800")", R"("\uDC00")", R"("\uD800\u0041")",  // lone surrogates
                      "\"\xff\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"",  // invalid UTF-8
                  });
}

TEST(JsonSchemaGrammar, StringLengthsCountCodePoints) {
  const char* schema = R"({"type": "string", "minLength": 2, "maxLength": 3})";
  CheckRandomSentences(schema);
  ExpectInstances(
      schema,
      {R"("ab")", "\"\u00e9\u5b57\"", R"("\n\u00e9x")", "\"\U0001F600\U0001F600\U0001F600\"", R"("\uD83D\uDE00\"")"},
      {R"("a")", R"("abcd")", "\"\u00e9\u5b57\U0001F600x\"", R"("\n")", R"("")"});
  ExpectInstances(R"({"type": "string", "maxLength": 0})", {R"("")"}, {R"("a")"});
  ExpectInstances(R"({"type": "string", "minLength": 256})", {"\"" + std::string(256, 'a') + "\""},
                  {"\"" + std::string(255, 'a') + "\""});
}

TEST(JsonSchemaGrammar, LongStringsStayOpen) {
  // A reply may write a long text field; nothing in the schema bounds it.
  StatusOr<Grammar> grammar = Compile(R"({"type": "object", "properties": {"text": {"type": "string"}}})");
  ASSERT_TRUE(grammar.ok());
  EXPECT_TRUE(GrammarMatches(*grammar, "{\"text\": \"" + std::string(10000, 'x') + "\"}"));
}

TEST(JsonSchemaGrammar, NumbersFollowRfc8259) {
  const char* number = R"({"type": "number"})";
  CheckRandomSentences(number);
  ExpectInstances(number, {"0", "-0", "12", "-1.5", "1e10", "1E+2", "2.5e-3", "0.0", "-0.0e0"},
                  {"01", "-", "1.", ".5", "+1", "1e", "1e+", "0x1", "NaN", "Infinity", "--1", "1.5.2", "00", "\"1\""});
  // Numbers stay within a double's range: at most 200 digits before and
  // after the point and 2 in the exponent (RFC 8259 has no bound, but
  // base/json and other parsers that read doubles refuse larger ones).
  ExpectInstances(number, {"-9.5e99", "1E-99", std::string(200, '9') + "." + std::string(200, '9') + "e99"},
                  {"1e100", "1e-100", "1" + std::string(200, '0'), "0." + std::string(201, '1')});
  const char* integer = R"({"type": "integer"})";
  CheckRandomSentences(integer);
  ExpectInstances(integer, {"0", "-7", "123", "-0"}, {"1.0", "1e2", "01", "1.5", "-"});
}

TEST(JsonSchemaGrammar, LowerBoundsOfZeroAndOne) {
  const char* non_negative = R"({"type": "integer", "minimum": 0})";
  CheckRandomSentences(non_negative);
  // "-0" is not below 0, but the grammar writes no minus sign at all.
  ExpectInstances(non_negative, {"0", "5", "100"}, {"-1", "-0", "1.5"});
  const char* positive = R"({"type": "integer", "exclusiveMinimum": 0})";
  CheckRandomSentences(positive);
  ExpectInstances(positive, {"1", "42"}, {"0", "-3"});
  ExpectInstances(R"({"type": "integer", "minimum": 1})", {"1"}, {"0"});
  ExpectInstances(R"({"type": "integer", "minimum": 0, "exclusiveMinimum": true})", {"1"}, {"0"});
  ExpectInstances(R"({"type": "integer", "minimum": 0.5})", {"1"}, {"0"});
  ExpectInstances(R"({"type": "integer", "multipleOf": 1})", {"-4"}, {"0.5"});
  const char* non_negative_number = R"({"type": "number", "minimum": 0})";
  CheckRandomSentences(non_negative_number);
  ExpectInstances(non_negative_number, {"0", "0.5", "1e3", "2E-2"}, {"-0.5", "-1"});
}

TEST(JsonSchemaGrammar, BooleansAndNull) {
  ExpectInstances(R"({"type": "boolean"})", {"true", "false", " true "}, {"True", "1", "null", "\"true\"", "tru"});
  ExpectInstances(R"({"type": "null"})", {"null"}, {"nul", "None", "\"null\"", "0"});
  CheckRandomSentences(R"({"type": ["boolean", "null"]})", 50);
}

TEST(JsonSchemaGrammar, EnumsOfMixedTypes) {
  const char* schema = R"({"enum": [1, "a", null, true, {"x": [1, 2]}, 2.5, "\u00e9\n", [], -3]})";
  const std::vector<JsonValue> sentences = CheckRandomSentences(schema);
  std::set<std::string> seen;
  for (const JsonValue& s : sentences) seen.insert(s.Dump());
  EXPECT_EQ(seen.size(), 9u) << "the walks did not reach every value";
  ExpectInstances(schema, {"1", R"("a")", "null", "true", R"({"x":[1,2]})", "2.5", "\"\u00e9\\n\"", "[]", " -3 "},
                  {
                      "2", R"("b")", "false", "1.0", R"("A")", "[1]",
                      R"({"x": [1, 2]})",  // valid, but values are written compactly
                  });
  // With a type, only the values of that type remain.
  ExpectInstances(R"({"type": "string", "enum": ["a", 1, "b", null]})", {R"("a")", R"("b")"}, {"1", "null"});
  ExpectInstances(R"({"type": ["integer", "null"], "enum": ["a", 1, 2.5, null]})", {"1", "null"}, {R"("a")", "2.5"});
  ExpectInstances(R"({"const": {"k": "v"}})", {R"({"k":"v"})"}, {R"({"k":"w"})", "{}"});
  ExpectInstances(R"({"const": "x", "enum": ["x", "y"]})", {R"("x")"}, {R"("y")"});
}

// The object of ObjectsKeepOrderAndRequired, with the optional properties
// chosen by the bits of `mask`, in schema order unless `swap`.
std::string OrderedInstance(int mask, const std::string& separator = ", ") {
  std::string text = "{\"id\": 7";
  if (mask & 1) text += separator + "\"name\": \"n\"";
  if (mask & 2) text += separator + "\"tags\": [\"t\"]";
  if (mask & 4) text += separator + "\"ok\": true";
  return text + separator + "\"end\": null}";
}

TEST(JsonSchemaGrammar, ObjectsKeepOrderAndRequired) {
  const char* schema = R"({
    "type": "object",
    "properties": {
      "id": {"type": "integer"},
      "name": {"type": "string"},
      "tags": {"type": "array", "items": {"type": "string"}},
      "ok": {"type": "boolean"},
      "end": {"type": "null"}
    },
    "required": ["id", "end"],
    "additionalProperties": false
  })";
  const std::vector<JsonValue> sentences = CheckRandomSentences(schema, 400);
  std::set<std::string> subsets;
  for (const JsonValue& s : sentences) {
    std::string keys;
    for (const auto& [key, value] : s.as_object()) keys += key + ",";
    subsets.insert(keys);
  }
  EXPECT_EQ(subsets.size(), 8u) << "the walks did not reach every choice of optional properties";

  std::vector<std::string> valid;
  for (int mask = 0; mask < 8; ++mask) {
    valid.push_back(OrderedInstance(mask));
    valid.push_back(OrderedInstance(mask, ","));
  }
  ExpectInstances(schema, valid,
                  {
                      R"({"end": null})",  // id is required
                      R"({"id": 7})",  // so is end
                      R"({"end": null, "id": 7})",  // out of order
                      R"({"id": 7, "ok": true, "name": "n", "end": null})",  // out of order
                      R"({"id": 7, "end": null, "extra": 1})",  // no other keys
                      R"({"id": 7, "name": "n", "name": "m", "end": null})",
                      R"({"id": 7, "end": null,})",
                      R"({, "id": 7, "end": null})",
                      R"({"id": 7 "end": null})",
                      R"({"id": "7", "end": null})",
                      "{}",
                      R"({"id": 7, "end": null)",
                  });
}

TEST(JsonSchemaGrammar, ManyOptionalProperties) {
  // Skipping optional properties enters one rule per property before a byte
  // is read; an object of 300 must still reach its last one.
  std::string schema = R"({"type": "object", "properties": {)";
  std::string all = "{";
  for (int i = 0; i < 300; ++i) {
    schema += (i ? ", \"p" : "\"p") + std::to_string(i) + R"(": {"type": "integer"})";
    all += (i ? ", \"p" : "\"p") + std::to_string(i) + "\": " + std::to_string(i);
  }
  schema += "}}";
  ExpectInstances(schema, {"{}", R"({"p299": 1})", R"({"p0": 1, "p299": 1})", all + "}"},
                  {R"({"p299": 1, "p0": 1})", R"({"p300": 1})"});
}

TEST(JsonSchemaGrammar, NestedObjects) {
  const char* schema = R"({
    "type": "object",
    "properties": {
      "user": {
        "type": "object",
        "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
        "required": ["last"],
        "additionalProperties": false
      },
      "empty": {"type": "object", "properties": {}}
    },
    "required": ["user"],
    "additionalProperties": false
  })";
  CheckRandomSentences(schema);
  ExpectInstances(schema,
                  {R"({"user": {"last": "x"}})", R"({"user": {"first": "a", "last": "b"}, "empty": {}})",
                   R"({"user":{"last":""},"empty":{ }})"},
                  {R"({"user": {"first": "a"}})", R"({"user": {"last": "b", "first": "a"}})",
                   R"({"user": {"last": "b"}, "empty": {"a": 1}})", R"({"empty": {}})"});
}

TEST(JsonSchemaGrammar, ArraysWithBounds) {
  const char* schema = R"({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4})";
  const std::vector<JsonValue> sentences = CheckRandomSentences(schema);
  std::set<size_t> lengths;
  for (const JsonValue& s : sentences) lengths.insert(s.as_array().size());
  EXPECT_EQ(lengths, (std::set<size_t>{2, 3, 4}));
  ExpectInstances(schema, {"[1, 2]", "[1,2,3]", "[ 1 , 2 , 3 , 4 ]"},
                  {"[]", "[1]", "[1, 2, 3, 4, 5]", "[1, \"a\"]", "[1, 2,]", "[,1, 2]", "[1 2]"});
  ExpectInstances(R"({"type": "array", "minItems": 1})", {"[null]", R"([1, "a", {}, []])"}, {"[]"});
  ExpectInstances(R"({"type": "array", "maxItems": 0})", {"[]", "[ ]"}, {"[1]"});
  ExpectInstances(R"({"type": "array", "items": false})", {"[]"}, {"[1]"});
  CheckRandomSentences(R"({"type": "array", "items": {"type": "string"}, "minItems": 3})");
  CheckRandomSentences(R"({"type": "array", "maxItems": 256, "items": {"enum": [1]}})", 50);
}

TEST(JsonSchemaGrammar, PrefixItems) {
  const char* closed = R"({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false})";
  CheckRandomSentences(closed);
  ExpectInstances(closed, {"[]", R"(["a"])", R"(["a", 1])"}, {R"([1, "a"])", R"(["a", 1, 2])", "[1]"});
  const char* open = R"({"prefixItems": [{"type": "string"}], "items": {"type": "boolean"}, "minItems": 3})";
  CheckRandomSentences(open);
  ExpectInstances(open, {R"(["a", true, false])", R"(["a", true, false, true])"},
                  {R"(["a", true])", R"(["a", true, 1])", R"([true, true, true])"});
  // The draft 4-7 spelling.
  const char* tuple = R"({"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "string"}})";
  CheckRandomSentences(tuple);
  ExpectInstances(tuple, {"[]", "[null]", R"([null, "a", "b"])"}, {R"(["a"])", "[null, null]"});
}

TEST(JsonSchemaGrammar, MapsOfAnyKeys) {
  const char* schema = R"({"type": "object", "additionalProperties": {"type": "integer"}})";
  CheckRandomSentences(schema);
  ExpectInstances(schema, {"{}", R"({"x": 1, "y": 2})", R"({"a\"b\u00e9": 3, "": -1})"},
                  {R"({"x": "s"})", R"({"x": 1,})", R"({x: 1})"});
  ExpectInstances(R"({"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2,
                      "minProperties": 1})",
                  {R"({"a": 1})", R"({"a": 1, "b": 2})"}, {"{}", R"({"a": 1, "b": 2, "c": 3})"});
  ExpectInstances(R"({"type": "object"})", {"{}", R"({"a": [1, {"b": null}]})"}, {"[]", "1"});
  ExpectInstances(R"({"properties": {}, "additionalProperties": true})", {R"({"a": 1})"}, {"[]"});
  CheckRandomSentences(R"({"type": "object"})");
}

TEST(JsonSchemaGrammar, AlternativesWithNull) {
  const char* any_of = R"({"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}]})";
  CheckRandomSentences(any_of);
  ExpectInstances(any_of, {R"("abc")", "null"}, {R"("abcd")", "1"});
  const char* types = R"({"type": ["integer", "null"]})";
  CheckRandomSentences(types);
  ExpectInstances(types, {"3", "null"}, {"3.5", R"("3")"});
  // Disjoint branches, so oneOf read as anyOf is exact.
  const char* one_of = R"({"oneOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                                      {"type": "array", "items": {"type": "integer"}}]})";
  CheckRandomSentences(one_of);
  ExpectInstances(one_of, {R"({"a": 1})", "[1, 2]"}, {R"({"b": 1})", "1"});
}

TEST(JsonSchemaGrammar, RecursiveReferencesMakeATree) {
  const char* schema = R"({
    "$defs": {
      "node": {
        "type": "object",
        "properties": {
          "value": {"type": "integer"},
          "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
        },
        "required": ["value"],
        "additionalProperties": false
      }
    },
    "$ref": "#/$defs/node"
  })";
  const std::vector<JsonValue> sentences = CheckRandomSentences(schema);
  bool nested = false;
  for (const JsonValue& s : sentences) {
    const JsonValue* children = s.Find("children");
    nested = nested || (children != nullptr && !children->as_array().empty());
  }
  EXPECT_TRUE(nested) << "the walks never nested a node";
  ExpectInstances(schema, {R"({"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]})"},
                  {R"({"value": 1, "children": [{"children": []}]})", R"({"value": 1, "children": [1]})"});
  // Deep nesting is accepted.
  std::string chain = R"({"value": 0})";
  for (int i = 1; i <= 100; ++i) chain = R"({"value": 1, "children": [)" + chain + "]}";
  StatusOr<Grammar> grammar = Compile(schema);
  ASSERT_TRUE(grammar.ok());
  EXPECT_TRUE(GrammarMatches(*grammar, chain));

  // "#" is the whole schema; pointer tokens are unescaped (~1 is "/", ~0 "~").
  const char* list = R"({"type": "object", "properties": {"head": {"type": "integer"}, "tail": {"$ref": "#"}},
                         "required": ["head"], "additionalProperties": false})";
  CheckRandomSentences(list);
  ExpectInstances(list, {R"({"head": 1, "tail": {"head": 2}})"}, {R"({"head": 1, "tail": {}})"});
  ExpectInstances(R"({"$defs": {"a/b~c": {"type": "boolean"}}, "$ref": "#/$defs/a~1b~0c"})", {"true"}, {"1"});
  ExpectInstances(R"({"definitions": {"x": {"type": "null"}}, "items": {"$ref": "#/definitions/x"}})", {"[null]"},
                  {"[1]"});
}

TEST(JsonSchemaGrammar, PydanticModel) {
  // What pydantic 2 writes for a model with a nested model, an enum, an
  // optional field and a list: $defs, allOf around a $ref, anyOf with null,
  // titles and defaults.
  const char* schema = R"({
    "$defs": {
      "Address": {
        "properties": {
          "street": {"title": "Street", "type": "string"},
          "zip": {"anyOf": [{"type": "string", "pattern": "^[0-9]{5}$"}, {"type": "null"}], "default": null, "title": "Zip"}
        },
        "required": ["street"],
        "title": "Address",
        "type": "object"
      },
      "Role": {"enum": ["admin", "user"], "title": "Role", "type": "string"}
    },
    "properties": {
      "name": {"description": "Full name", "title": "Name", "type": "string", "maxLength": 40},
      "age": {"title": "Age", "type": "integer", "minimum": 0},
      "role": {"$ref": "#/$defs/Role"},
      "address": {"allOf": [{"$ref": "#/$defs/Address"}], "description": "Home"},
      "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array", "default": []},
      "score": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": null, "title": "Score"}
    },
    "required": ["name", "age", "role", "address"],
    "title": "User",
    "type": "object"
  })";
  CheckRandomSentences(schema);
  const std::string pretty = R"({
  "name": "Ada",
  "age": 36,
  "role": "admin",
  "address": {
    "street": "1 Loop Rd",
    "zip": "12345"
  },
  "tags": [
    "math",
    "engines"
  ],
  "score": 9.5
})";
  ExpectInstances(schema,
                  {pretty, R"({"name":"Bo","age":0,"role":"user","address":{"street":"s","zip":null}})",
                   R"({"name":"Bo","age":1,"role":"user","address":{"street":"s"},"score":null})"},
                  {R"({"name":"Bo","age":-1,"role":"user","address":{"street":"s"}})",
                   R"({"name":"Bo","age":1,"role":"guest","address":{"street":"s"}})",
                   R"({"name":"Bo","age":1,"role":"user","address":{"street":"s","zip":"123"}})",
                   R"({"name":"Bo","age":1,"role":"user"})"});
}

TEST(JsonSchemaGrammar, StringFormats) {
  for (const char* format : {"date", "time", "date-time", "uuid", "ipv4", "email"}) {
    CheckRandomSentences(std::string(R"({"type": "string", "format": ")") + format + "\"}", 100);
  }
  ExpectInstances(R"({"type": "string", "format": "date"})", {R"("2024-02-28")", R"("1999-12-31")", R"("2023-04-30")"},
                  {
                      R"("2024-13-01")", R"("2024-02-30")", R"("2024-04-31")", R"("2024-2-1")", R"("2024-00-10")",
                      R"("2024-02-29")",  // a real date, left out so that no year need be checked
                  });
  ExpectInstances(R"({"type": "string", "format": "time"})", {R"("23:59:59Z")", R"("08:00:00.123+05:30")"},
                  {R"("24:00:00Z")", R"("12:60:00Z")", R"("12:00:00")", R"("12:00Z")"});
  ExpectInstances(R"({"type": "string", "format": "date-time"})", {R"("2024-01-02T03:04:05-08:00")"},
                  {R"("2024-01-02 03:04:05Z")", R"("2024-01-02")"});
  ExpectInstances(R"({"type": "string", "format": "uuid"})", {R"("123e4567-e89b-12d3-a456-426614174000")"},
                  {R"("123e4567e89b12d3a456426614174000")", R"("123e4567-e89b-12d3-a456-42661417400g")"});
  ExpectInstances(R"({"type": "string", "format": "ipv4"})", {R"("192.168.0.1")", R"("0.0.0.0")"},
                  {R"("256.1.1.1")", R"("1.2.3")", R"("01.2.3.4")"});
  ExpectInstances(R"({"type": "string", "format": "email"})", {R"("a.b+c@example.co.uk")"},
                  {R"("a@b")", R"("@example.com")", R"("a b@example.com")"});
}

TEST(JsonSchemaGrammar, Patterns) {
  const char* schema = R"({"type": "string", "pattern": "^[a-z]{2,4}-[0-9]+$"})";
  CheckRandomSentences(schema);
  ExpectInstances(schema, {R"("ab-1")", R"("abcd-0123")"}, {R"("a-1")", R"("abcde-1")", R"("AB-1")", R"("ab-")"});
  // Characters that need escapes are left out of what a pattern may write.
  const char* quote = R"({"type": "string", "pattern": "^a[\"b]c$"})";
  CheckRandomSentences(quote);
  ExpectInstances(quote, {R"("abc")"}, {R"("a\"c")"});
  const char* anything = R"({"type": "string", "pattern": ".*"})";
  CheckRandomSentences(anything);
  ExpectInstances(anything, {R"("")", "\"x y\u00e9\""}, {R"("\n")" /* matches, but needs an escape */});
  // An unanchored pattern is matched whole: a subset of JSON Schema's search.
  ExpectInstances(R"({"type": "string", "pattern": "abc"})", {R"("abc")"}, {R"("xabcx")"});
}

TEST(JsonSchemaGrammar, WhitespaceIsBoundedBetweenTokens) {
  const char* schema = R"({"type": "object", "properties": {"a": {"type": "array"}}, "additionalProperties": false})";
  const std::string max(kMaxJsonWhitespace, ' ');
  const std::string over(kMaxJsonWhitespace + 1, ' ');
  ExpectInstances(
      schema,
      {"{\n\t\"a\": [\r\n  1,\n  2\n ]\n}\n", max + "{" + max + "\"a\"" + max + ":" + max + "[" + max + "1" + max +
                                                  "," + max + "2" + max + "]" + max + "}" + max},
      {over + "{}", "{}" + over, "{" + over + "}", "{\"a\"" + over + ": []}", "{\"a\": [1" + over + "]}",
       "{\"a\": [1," + over + "2]}", "\f{}", "{\"a\":\v[]}"});
}

TEST(JsonSchemaGrammar, EscapedKeys) {
  const char* schema = R"({"type": "object",
    "properties": {"a\"b": {"type": "integer"}, "c\\d/e": {"type": "integer"}, "line\nbreak\u00e9": {"type": "integer"}},
    "required": ["a\"b", "c\\d/e", "line\nbreak\u00e9"], "additionalProperties": false})";
  CheckRandomSentences(schema);
  ExpectInstances(schema, {"{\"a\\\"b\": 1, \"c\\\\d/e\": 2, \"line\\nbreak\u00e9\": 3}"},
                  {
                      // The same keys spelled with other escapes: the grammar writes each one way.
                      "{\"a\\u0022b\": 1, \"c\\\\d/e\": 2, \"line\\nbreak\u00e9\": 3}",
                      "{\"a\\\"b\": 1, \"c\\\\d\\/e\": 2, \"line\\nbreak\u00e9\": 3}",
                      "{\"a\\\"b\": 1, \"c\\\\d/e\": 2, \"line\\nbreak\\u00e9\": 3}",
                  });
}

TEST(JsonSchemaGrammar, AnyValue) {
  for (const char* schema : {"true", "{}", R"({"title": "Anything", "description": "d"})"}) {
    CheckRandomSentences(schema, 200);
    ExpectInstances(schema, {"1", "null", R"({"a": [true, "x", -2.5e3]})", "[]", " \"s\" "}, {"", "nul", "[1,]"});
  }
}

TEST(JsonSchemaGrammar, AnnotationsAndOtherTypesKeywordsAreIgnored) {
  const std::string plain = Compile(R"({"type": "string"})")->ToString();
  EXPECT_EQ(Compile(R"({"type": "string", "title": "t", "description": "d", "examples": ["x"], "default": "x",
                        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x", "$comment": "c",
                        "deprecated": false, "readOnly": true, "writeOnly": false})")
                ->ToString(),
            plain);
  // JSON Schema applies "minimum" to numbers only: a string schema ignores it.
  EXPECT_EQ(Compile(R"({"type": "string", "minimum": 5, "items": {"not": {}}})")->ToString(), plain);
}

TEST(JsonSchemaGrammar, DeadEndsArePruned) {
  // "loop" can never be finished (each node requires another), so the
  // grammar must not let a reply start it.
  const char* schema = R"({
    "$defs": {"forever": {"type": "object", "properties": {"next": {"$ref": "#/$defs/forever"}}, "required": ["next"]}},
    "type": "object",
    "properties": {"loop": {"$ref": "#/$defs/forever"}, "x": {"type": "integer"}},
    "additionalProperties": false
  })";
  CheckRandomSentences(schema);
  StatusOr<Grammar> grammar = Compile(schema);
  ASSERT_TRUE(grammar.ok());
  GrammarMatcher matcher(*grammar);
  EXPECT_TRUE(matcher.AdvanceText("{\""));
  EXPECT_FALSE(matcher.AdvanceText("l"));
  ExpectInstances(schema, {"{}", R"({"x": 1})"}, {R"({"loop": {}})"});
}

TEST(JsonSchemaGrammar, JsonObjectMode) {
  const Grammar grammar = JsonObjectGrammar();
  std::mt19937 rng(7);
  int objects = 0;
  for (int i = 0; i < 200; ++i) {
    std::optional<std::string> text = RandomSentence(grammar, rng);
    if (!text) continue;
    StatusOr<JsonValue> parsed = JsonValue::Parse(*text);
    ASSERT_TRUE(parsed.ok()) << *text;
    EXPECT_TRUE(parsed->is_object()) << *text;
    ++objects;
  }
  EXPECT_GE(objects, 100);
  EXPECT_TRUE(GrammarMatches(grammar, "{}"));
  EXPECT_TRUE(GrammarMatches(grammar, "\n{\"a\": [1, {\"b\": null}], \"c\": \"\\u00e9\"}\n"));
  for (const char* not_object : {"[]", "\"s\"", "1", "null", "{", "{\"a\"}", "{\"a\": 1,}", "{} {}"}) {
    EXPECT_FALSE(GrammarMatches(grammar, not_object)) << not_object;
  }
}

TEST(JsonSchemaGrammar, RefusalsNameTheKeyword) {
  struct Case {
    const char* schema;
    const char* message;
  };
  const Case cases[] = {
      {"false", "(root): the schema false matches nothing"},
      {"[]", "(root): a schema must be an object or a boolean"},
      {R"({"type": "integer", "maximum": 5})", R"(/maximum: "maximum" is not supported)"},
      {R"({"properties": {"age": {"type": "integer", "minimum": 18}}})",
       "/properties/age/minimum: only a lower bound of 0 or 1 is supported for integers, got 18"},
      {R"({"properties": {"age": {"type": "integer", "exclusiveMinimum": 5}}})", "/properties/age/exclusiveMinimum:"},
      {R"({"type": "number", "minimum": 1})", "/minimum: only 0 is supported as a number's minimum"},
      {R"({"type": "number", "exclusiveMinimum": 0})", R"(/exclusiveMinimum: "exclusiveMinimum" is not supported)"},
      {R"({"type": "integer", "multipleOf": 3})", R"(/multipleOf: "multipleOf" is not supported)"},
      {R"({"type": "number", "exclusiveMaximum": 3})", R"(/exclusiveMaximum: "exclusiveMaximum" is not supported)"},
      {R"({"not": {"type": "string"}})", R"(/not: "not" is not supported)"},
      {R"({"if": {}, "then": {}})", R"(/if: "if" is not supported)"},
      {R"({"type": "string", "foo": 1})", R"(/foo: "foo" is not supported)"},
      {R"({"properties": {"a": {"properties": {"b/c": {"nullable": true}}}}})",
       R"(/properties/a/properties/b~1c/nullable: "nullable" is not supported)"},
      {R"({"type": "object", "patternProperties": {"^a": {}}})", "/patternProperties: "},
      {R"({"type": "object", "propertyNames": {"maxLength": 3}})", "/propertyNames: "},
      {R"({"type": "object", "dependentRequired": {"a": ["b"]}})", "/dependentRequired: "},
      {R"({"type": "object", "unevaluatedProperties": false})", "/unevaluatedProperties: "},
      {R"({"type": "object", "properties": {"a": {}}, "additionalProperties": true})",
       "/additionalProperties: keys beyond \"properties\" are not supported"},
      {R"({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}})",
       "/additionalProperties: keys beyond"},
      {R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})", R"(/required: "b" is not in "properties")"},
      {R"({"type": "object", "required": ["b"]})", "/required: names properties that are not in \"properties\""},
      {R"({"type": "object", "minProperties": 2})", "/minProperties: above 1 is not supported"},
      {R"({"type": "object", "properties": {"a": {}}, "minProperties": 1})", "/minProperties: is supported only up to"},
      {R"({"type": "object", "properties": {"a": {}, "b": {}}, "maxProperties": 1})", "/maxProperties: "},
      {R"({"type": "array", "uniqueItems": true})", "/uniqueItems: true is not supported"},
      {R"({"type": "array", "contains": {"type": "string"}})", R"(/contains: "contains" is not supported)"},
      {R"({"type": "array", "maxItems": 257})", "/maxItems: at most 256 is supported, got 257"},
      {R"({"type": "array", "minItems": 300})", "/minItems: at most 256 is supported"},
      {R"({"type": "array", "minItems": -1})", "/minItems: must be a non-negative integer"},
      {R"({"type": "array", "items": false, "minItems": 1})", "/minItems: asks for more items"},
      {R"({"items": 5})", "/items: a schema must be an object or a boolean"},
      {R"({"type": "string", "maxLength": 1000})", "/maxLength: at most 256 is supported"},
      {R"({"type": "string", "minLength": 5, "maxLength": 2})", "/maxLength: \"maxLength\" is below \"minLength\""},
      {R"({"type": "string", "format": "hostname"})", "/format: format \"hostname\" is not supported"},
      {R"({"type": "string", "pattern": "(a"})", "/pattern: "},
      {R"({"type": "string", "pattern": "^\"+$"})", "/pattern: every string it matches needs JSON escapes"},
      {R"({"type": "string", "pattern": "a", "maxLength": 3})", "/maxLength: \"maxLength\" together with \"pattern\""},
      {R"({"$ref": "https://example.com/s.json"})", "/$ref: only references within the schema"},
      {R"({"$ref": "#/$defs/missing"})", R"(/$ref: "#/$defs/missing" points to nothing in the schema)"},
      {R"({"$ref": "#/$defs/a", "type": "object", "$defs": {"a": {}}})", "/type: \"type\" next to \"$ref\""},
      {R"({"$ref": "#node"})", "/$ref: only references within the schema"},
      {R"({"$defs": {"A": {"type": "integer", "maximum": 3}}, "$ref": "#/$defs/A"})",
       R"(/$defs/A/maximum: "maximum" is not supported)"},
      {R"({"allOf": [{}, {}]})", "/allOf: only one schema in \"allOf\" is supported, got 2"},
      {R"({"anyOf": []})", "/anyOf: must be a non-empty array"},
      {R"({"anyOf": [{"type": "string"}, {"maximum": 1}]})", R"(/anyOf/1/maximum: "maximum" is not supported)"},
      {R"({"anyOf": [{"type": "string"}], "minLength": 1})", "/minLength: \"minLength\" next to \"anyOf\""},
      {R"({"type": "foo"})", "/type: unknown type \"foo\""},
      {R"({"type": []})", "/type: an empty list of types matches nothing"},
      {R"({"enum": [1, 2], "type": "string"})", "(root): no value of \"enum\" or \"const\" fits"},
      {R"({"enum": [1], "minimum": 0})", "/minimum: \"minimum\" next to \"enum\""},
      {R"({"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]})",
       "(root): the schema matches no JSON value"},
  };
  for (const Case& c : cases) {
    EXPECT_NE(Refusal(c.schema).find(c.message), std::string::npos)
        << c.schema << "\n  refused with: " << Refusal(c.schema) << "\n  expected: " << c.message;
  }
}

TEST(JsonSchemaGrammar, RefusesSchemasTooDeepOrTooBig) {
  std::string deep = R"({"type": "string"})";
  for (int i = 0; i < 70; ++i) deep = R"({"type": "array", "items": )" + deep + "}";
  EXPECT_NE(Refusal(deep).find("nested deeper than 64"), std::string::npos) << Refusal(deep);

  // Each property needs ~256 rules: 300 of them need more than the grammar may hold.
  std::string big = R"({"type": "object", "properties": {)";
  for (int i = 0; i < 300; ++i) {
    big += (i ? ", " : "") + std::string("\"p") + std::to_string(i) + R"(": {"type": "array", "maxItems": 256})";
  }
  big += "}}";
  EXPECT_NE(Refusal(big).find("grammar rules"), std::string::npos) << Refusal(big);
}

}  // namespace
}  // namespace seer
