// Helpers for text/ tests: the committed Hugging Face vectors under
// tests/fixtures/tokenizers/ (tools/make_tokenizer_fixtures.py). A missing
// file fails the test; it never skips.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/json.h"
#include "text/tokenizer.h"

namespace seer::text_test {

inline std::string FixturePath(const std::string& relative) {
  return std::string(SEER_FIXTURES_DIR) + "/tokenizers/" + relative;
}

// The tokenizer of tokenizers/<family>; null, with a test failure, when it
// does not load.
inline std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& family) {
  auto t = Tokenizer::Load(FixturePath(family));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Parses a fixture JSON file; fails the calling test when missing or malformed.
inline JsonValue LoadJson(const std::string& relative) {
  const std::string path = FixturePath(relative);
  std::ifstream probe(path);
  EXPECT_TRUE(probe.good()) << path << " is missing: run tools/make_tokenizer_fixtures.py";
  auto parsed = JsonValue::Parse(ReadText(path));
  EXPECT_TRUE(parsed.ok()) << path << ": " << parsed.status().ToString();
  return parsed.ok() ? *parsed : JsonValue();
}

inline std::vector<int32_t> Ids(const JsonValue* v) {
  std::vector<int32_t> out;
  if (v == nullptr) return out;
  for (const JsonValue& x : v->as_array()) out.push_back(static_cast<int32_t>(x.as_int64()));
  return out;
}

inline const std::string& Str(const JsonValue& obj, const char* key) {
  static const std::string kEmpty;
  const JsonValue* v = obj.Find(key);
  return v != nullptr && v->is_string() ? v->as_string() : kEmpty;
}

// Printable form of a string for failure messages (escapes controls).
inline std::string Show(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out + "\"";
}

}  // namespace seer::text_test
