#include "base/json.h"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>

namespace seer {

// Recursive-descent parser over RFC 8259. The text must be UTF-8; anything
// outside the grammar (comments, trailing commas, NaN, leading zeros, raw
// control characters in strings, lone surrogates) is an error.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : text_(text) {}

  StatusOr<JsonValue> ParseDocument() {
    if (text_.size() >= 3 && std::memcmp(text_.data(), "\xEF\xBB\xBF", 3) == 0) {
      return Error("byte order mark is not allowed (RFC 8259 section 8.1)");
    }
    SkipWhitespace();
    JsonValue root;
    if (!ParseValue(&root, 0)) return error_;
    SkipWhitespace();
    if (pos_ != text_.size()) return Error("unexpected data after the JSON value");
    return root;
  }

 private:
  // Error at the current position. Returns false so callers can `return Fail(...)`.
  bool Fail(const std::string& what) {
    error_ = Error(what);
    return false;
  }

  Status Error(const std::string& what) const {
    int64_t line = 1, column = 1;
    const size_t end = pos_ < text_.size() ? pos_ : text_.size();
    for (size_t i = 0; i < end; ++i) {
      const unsigned char c = static_cast<unsigned char>(text_[i]);
      if (c == '\n') {
        ++line;
        column = 1;
      } else if ((c & 0xC0) != 0x80) {  // count code points, not UTF-8 continuation bytes
        ++column;
      }
    }
    return InvalidArgument("line " + std::to_string(line) + ", column " + std::to_string(column) + ": " + what);
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  void SkipWhitespace() {
    while (!AtEnd()) {
      const char c = Peek();
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  static std::string Describe(char c) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02X", u);
    return std::string("byte ") + buf;
  }

  bool ParseValue(JsonValue* out, int depth) {
    if (AtEnd()) return Fail("unexpected end of input, expected a value");
    const char c = Peek();
    switch (c) {
      case '{': return ParseObject(out, depth + 1);
      case '[': return ParseArray(out, depth + 1);
      case '"': {
        std::string s;
        if (!ParseString(&s)) return false;
        *out = JsonValue::String(std::move(s));
        return true;
      }
      case 't': return ParseLiteral("true", JsonValue::Bool(true), out);
      case 'f': return ParseLiteral("false", JsonValue::Bool(false), out);
      case 'n': return ParseLiteral("null", JsonValue(), out);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
        return Fail("unexpected " + Describe(c) + ", expected a value");
    }
  }

  bool ParseLiteral(std::string_view word, JsonValue value, JsonValue* out) {
    if (text_.substr(pos_, word.size()) != word) return Fail("invalid literal, expected '" + std::string(word) + "'");
    pos_ += word.size();
    *out = std::move(value);
    return true;
  }

  bool CheckDepth(int depth) {
    if (depth > JsonValue::kMaxDepth) {
      return Fail("nesting deeper than " + std::to_string(JsonValue::kMaxDepth) + " levels");
    }
    return true;
  }

  bool ParseArray(JsonValue* out, int depth) {
    if (!CheckDepth(depth)) return false;
    ++pos_;  // '['
    JsonValue array = JsonValue::Array();
    SkipWhitespace();
    if (!AtEnd() && Peek() == ']') {
      ++pos_;
      *out = std::move(array);
      return true;
    }
    while (true) {
      SkipWhitespace();
      JsonValue element;
      if (!ParseValue(&element, depth)) return false;
      array.Append(std::move(element));
      SkipWhitespace();
      if (AtEnd()) return Fail("unexpected end of input inside an array, expected ',' or ']'");
      const char c = Peek();
      ++pos_;
      if (c == ']') break;
      if (c != ',') {
        --pos_;
        return Fail("unexpected " + Describe(c) + " inside an array, expected ',' or ']'");
      }
    }
    *out = std::move(array);
    return true;
  }

  bool ParseObject(JsonValue* out, int depth) {
    if (!CheckDepth(depth)) return false;
    ++pos_;  // '{'
    JsonValue object = JsonValue::Object();
    SkipWhitespace();
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      *out = std::move(object);
      return true;
    }
    // Index of each key's member, so duplicates replace in O(1) and the last one wins.
    std::unordered_map<std::string, size_t> index;
    std::vector<JsonValue::Member> members;
    while (true) {
      SkipWhitespace();
      if (AtEnd()) return Fail("unexpected end of input inside an object, expected a string key");
      if (Peek() != '"') return Fail("unexpected " + Describe(Peek()) + " inside an object, expected a string key");
      std::string key;
      if (!ParseString(&key)) return false;
      SkipWhitespace();
      if (AtEnd() || Peek() != ':') return Fail("expected ':' after object key \"" + key + "\"");
      ++pos_;
      SkipWhitespace();
      JsonValue value;
      if (!ParseValue(&value, depth)) return false;
      auto [it, inserted] = index.try_emplace(key, members.size());
      if (inserted) {
        members.emplace_back(std::move(key), std::move(value));
      } else {
        members[it->second].second = std::move(value);
      }
      SkipWhitespace();
      if (AtEnd()) return Fail("unexpected end of input inside an object, expected ',' or '}'");
      const char c = Peek();
      ++pos_;
      if (c == '}') break;
      if (c != ',') {
        --pos_;
        return Fail("unexpected " + Describe(c) + " inside an object, expected ',' or '}'");
      }
    }
    object.obj_ = std::move(members);
    *out = std::move(object);
    return true;
  }

  bool ParseHex4(uint32_t* out) {
    if (text_.size() - pos_ < 4) return Fail("truncated \\u escape, expected 4 hex digits");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<uint32_t>(c - 'A' + 10);
      else
        return Fail("invalid hex digit " + Describe(c) + " in \\u escape");
      ++pos_;
    }
    *out = v;
    return true;
  }

  static void AppendUtf8(uint32_t cp, std::string* s) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  // Length of the well-formed UTF-8 sequence at pos_, or 0 (RFC 3629: no
  // overlongs, no surrogates, nothing above U+10FFFF).
  size_t Utf8SequenceLength() const {
    const auto byte = [&](size_t i) { return static_cast<unsigned char>(text_[pos_ + i]); };
    const size_t left = text_.size() - pos_;
    const unsigned char b0 = byte(0);
    const auto cont = [&](size_t i) { return i < left && (byte(i) & 0xC0) == 0x80; };
    if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
    if (b0 >= 0xE0 && b0 <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      if (b0 == 0xE0 && byte(1) < 0xA0) return 0;  // overlong
      if (b0 == 0xED && byte(1) >= 0xA0) return 0;  // UTF-16 surrogate
      return 3;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      if (b0 == 0xF0 && byte(1) < 0x90) return 0;  // overlong
      if (b0 == 0xF4 && byte(1) >= 0x90) return 0;  // above U+10FFFF
      return 4;
    }
    return 0;
  }

  bool ParseString(std::string* out) {
    ++pos_;  // opening quote
    std::string s;
    while (true) {
      if (AtEnd()) return Fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(Peek());
      if (c == '"') {
        ++pos_;
        break;
      }
      if (c < 0x20) return Fail("raw control character " + Describe(static_cast<char>(c)) + " in string (escape it)");
      if (c == '\\') {
        ++pos_;
        if (AtEnd()) return Fail("unterminated escape sequence");
        const char e = Peek();
        ++pos_;
        switch (e) {
          case '"': s.push_back('"'); break;
          case '\\': s.push_back('\\'); break;
          case '/': s.push_back('/'); break;
          case 'b': s.push_back('\b'); break;
          case 'f': s.push_back('\f'); break;
          case 'n': s.push_back('\n'); break;
          case 'r': s.push_back('\r'); break;
          case 't': s.push_back('\t'); break;
          case 'u': {
            uint32_t cp;
            if (!ParseHex4(&cp)) return false;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
              pos_ -= 6;
              return Fail("lone low surrogate \\u" + Hex4(cp) + " in string");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (text_.substr(pos_, 2) != "\\u") {
                pos_ -= 6;
                return Fail("high surrogate \\u" + Hex4(cp) + " not followed by a \\u low surrogate");
              }
              pos_ += 2;
              uint32_t low;
              if (!ParseHex4(&low)) return false;
              if (low < 0xDC00 || low > 0xDFFF) {
                pos_ -= 6;
                return Fail("\\u" + Hex4(low) + " after high surrogate \\u" + Hex4(cp) + " is not a low surrogate");
              }
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            AppendUtf8(cp, &s);
            break;
          }
          default: pos_ -= 1; return Fail("invalid escape sequence \\" + std::string(1, e));
        }
        continue;
      }
      if (c < 0x80) {
        s.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      const size_t n = Utf8SequenceLength();
      if (n == 0) return Fail("invalid UTF-8 " + Describe(static_cast<char>(c)) + " in string");
      s.append(text_.data() + pos_, n);
      pos_ += n;
    }
    *out = std::move(s);
    return true;
  }

  static std::string Hex4(uint32_t v) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%04X", v & 0xFFFFu);
    return buf;
  }

  bool IsDigit(size_t i) const { return i < text_.size() && text_[i] >= '0' && text_[i] <= '9'; }

  bool ParseNumber(JsonValue* out) {
    const size_t start = pos_;
    size_t i = pos_;
    bool integral = true;
    if (text_[i] == '-') ++i;
    if (!IsDigit(i)) {
      pos_ = i;
      return Fail("expected a digit in number");
    }
    if (text_[i] == '0') {
      ++i;
      if (IsDigit(i)) {
        pos_ = i;
        return Fail("leading zeros are not allowed in numbers");
      }
    } else {
      while (IsDigit(i)) ++i;
    }
    if (i < text_.size() && text_[i] == '.') {
      integral = false;
      ++i;
      if (!IsDigit(i)) {
        pos_ = i;
        return Fail("expected a digit after the decimal point");
      }
      while (IsDigit(i)) ++i;
    }
    if (i < text_.size() && (text_[i] == 'e' || text_[i] == 'E')) {
      integral = false;
      ++i;
      if (i < text_.size() && (text_[i] == '+' || text_[i] == '-')) ++i;
      if (!IsDigit(i)) {
        pos_ = i;
        return Fail("expected a digit in the exponent");
      }
      while (IsDigit(i)) ++i;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + i;
    if (integral) {
      int64_t v = 0;
      const auto r = std::from_chars(first, last, v);
      if (r.ec == std::errc() && r.ptr == last) {
        pos_ = i;
        *out = JsonValue::Int(v);
        return true;
      }
      // Beyond int64: falls through to a double.
    }
    double d = 0.0;
    const auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      if (Overflows(start, i)) {
        return Fail("number " + std::string(first, last) + " is out of the range of a double");
      }
      d = text_[start] == '-' ? -0.0 : 0.0;  // underflow rounds to zero
    } else if (r.ec != std::errc() || r.ptr != last) {
      return Fail("invalid number");
    }
    pos_ = i;
    *out = JsonValue::Number(d);
    return true;
  }

  // For a number token that does not fit in a double: whether it is too large
  // (rather than too small). Its decimal magnitude is the position of the
  // first significant digit relative to the point, plus the exponent.
  bool Overflows(size_t begin, size_t end) const {
    int64_t magnitude = 0;
    bool seen_point = false, seen_significant = false;
    size_t i = begin;
    if (text_[i] == '-') ++i;
    for (; i < end && text_[i] != 'e' && text_[i] != 'E'; ++i) {
      const char c = text_[i];
      if (c == '.') {
        seen_point = true;
        continue;
      }
      if (!seen_significant) {
        if (c != '0') {
          seen_significant = true;
          if (!seen_point) ++magnitude;
        } else if (seen_point) {
          --magnitude;
        }
      } else if (!seen_point) {
        ++magnitude;
      }
    }
    if (i < end) {  // exponent
      ++i;
      bool negative = false;
      if (text_[i] == '+' || text_[i] == '-') negative = text_[i++] == '-';
      int64_t e = 0;
      for (; i < end; ++i) {
        e = e * 10 + (text_[i] - '0');
        if (e > 100000) break;  // far beyond any double either way
      }
      magnitude += negative ? -e : e;
    }
    return magnitude > 0;
  }

  std::string_view text_;
  size_t pos_ = 0;
  Status error_;
};

namespace {

void DumpString(const std::string& s, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"':
        *out += "\\\"";
        ++i;
        continue;
      case '\\':
        *out += "\\\\";
        ++i;
        continue;
      case '\b':
        *out += "\\b";
        ++i;
        continue;
      case '\f':
        *out += "\\f";
        ++i;
        continue;
      case '\n':
        *out += "\\n";
        ++i;
        continue;
      case '\r':
        *out += "\\r";
        ++i;
        continue;
      case '\t':
        *out += "\\t";
        ++i;
        continue;
      default: break;
    }
    if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04X", c);
      *out += buf;
      ++i;
      continue;
    }
    if (c < 0x80) {
      out->push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // Copy well-formed UTF-8 through; replace anything else by U+FFFD so the
    // output is always valid JSON, whatever bytes a caller put in a string.
    size_t n = 0;
    const auto cont = [&](size_t k) {
      return i + k < s.size() && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    };
    const auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
    if (c >= 0xC2 && c <= 0xDF && cont(1)) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF && cont(1) && cont(2) && !(c == 0xE0 && at(1) < 0xA0) &&
               !(c == 0xED && at(1) >= 0xA0)) {
      n = 3;
    } else if (c >= 0xF0 && c <= 0xF4 && cont(1) && cont(2) && cont(3) && !(c == 0xF0 && at(1) < 0x90) &&
               !(c == 0xF4 && at(1) >= 0x90)) {
      n = 4;
    }
    if (n == 0) {
      *out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out->append(s, i, n);
      i += n;
    }
  }
  out->push_back('"');
}

void DumpValue(const JsonValue& v, std::string* out) {
  switch (v.type()) {
    case JsonValue::Type::kNull: *out += "null"; return;
    case JsonValue::Type::kBool: *out += v.as_bool() ? "true" : "false"; return;
    case JsonValue::Type::kNumber: {
      char buf[40];
      if (v.is_integer()) {
        const auto r = std::to_chars(buf, buf + sizeof buf, v.as_int64());
        out->append(buf, r.ptr);
      } else if (!std::isfinite(v.as_double())) {
        *out += "null";  // JSON has no NaN or infinity
      } else if (v.as_double() == 0.0 && std::signbit(v.as_double())) {
        *out += "-0.0";  // "-0" would read back as the integer 0 and lose the sign
      } else {
        // Shortest text that parses back to the same double.
        const auto r = std::to_chars(buf, buf + sizeof buf, v.as_double());
        out->append(buf, r.ptr);
      }
      return;
    }
    case JsonValue::Type::kString: DumpString(v.as_string(), out); return;
    case JsonValue::Type::kArray: {
      out->push_back('[');
      bool first = true;
      for (const JsonValue& e : v.as_array()) {
        if (!first) out->push_back(',');
        first = false;
        DumpValue(e, out);
      }
      out->push_back(']');
      return;
    }
    case JsonValue::Type::kObject: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, value] : v.as_object()) {
        if (!first) out->push_back(',');
        first = false;
        DumpString(key, out);
        out->push_back(':');
        DumpValue(value, out);
      }
      out->push_back('}');
      return;
    }
  }
}

}  // namespace

StatusOr<JsonValue> JsonValue::Parse(std::string_view text) { return JsonParser(text).ParseDocument(); }

JsonValue JsonValue::Bool(bool b) {
  JsonValue v;
  v.type_ = Type::kBool;
  v.bool_ = b;
  return v;
}

JsonValue JsonValue::Number(double d) {
  JsonValue v;
  v.type_ = Type::kNumber;
  v.num_ = d;
  return v;
}

JsonValue JsonValue::Int(int64_t i) {
  JsonValue v;
  v.type_ = Type::kNumber;
  v.is_int_ = true;
  v.int_ = i;
  v.num_ = static_cast<double>(i);
  return v;
}

JsonValue JsonValue::String(std::string s) {
  JsonValue v;
  v.type_ = Type::kString;
  v.str_ = std::move(s);
  return v;
}

JsonValue JsonValue::Array() {
  JsonValue v;
  v.type_ = Type::kArray;
  return v;
}

JsonValue JsonValue::Object() {
  JsonValue v;
  v.type_ = Type::kObject;
  return v;
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const Member& m : obj_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

JsonValue& JsonValue::Append(JsonValue v) {
  if (type_ != Type::kArray) {
    *this = Array();
  }
  arr_.push_back(std::move(v));
  return arr_.back();
}

JsonValue& JsonValue::Set(std::string key, JsonValue v) {
  if (type_ != Type::kObject) {
    *this = Object();
  }
  for (Member& m : obj_) {
    if (m.first == key) {
      m.second = std::move(v);
      return m.second;
    }
  }
  obj_.emplace_back(std::move(key), std::move(v));
  return obj_.back().second;
}

std::string JsonValue::Dump() const {
  std::string out;
  DumpValue(*this, &out);
  return out;
}

std::string JsonValue::TypeName(Type t) {
  switch (t) {
    case Type::kNull: return "null";
    case Type::kBool: return "bool";
    case Type::kNumber: return "number";
    case Type::kString: return "string";
    case Type::kArray: return "array";
    case Type::kObject: return "object";
  }
  return "?";
}

StatusOr<JsonValue> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return InvalidArgument(path + ": read failed");
  StatusOr<JsonValue> root = JsonValue::Parse(text.str());
  if (!root.ok()) return InvalidArgument(path + ": " + root.status().message());
  return root;
}

std::string JsonFieldReader::Name(std::string_view key) const { return "'" + prefix_ + std::string(key) + "'"; }

Status JsonFieldReader::Error(std::string_view key, const std::string& what) const {
  return InvalidArgument(path_ + ": field " + Name(key) + " " + what);
}

Status JsonFieldReader::Missing(std::string_view key) const {
  return InvalidArgument(path_ + ": missing field " + Name(key));
}

const JsonValue* JsonFieldReader::Find(std::string_view key) const {
  const JsonValue* v = object_.Find(key);
  return v == nullptr || v->is_null() ? nullptr : v;
}

StatusOr<const JsonValue*> JsonFieldReader::Require(std::string_view key) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) return Missing(key);
  return v;
}

StatusOr<int64_t> JsonFieldReader::Int(std::string_view key, int64_t min, int64_t max,
                                       std::optional<int64_t> fallback) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(key);
  }
  if (!v->is_integer()) return Error(key, "must be an integer, got " + v->Dump());
  const int64_t i = v->as_int64();
  if (i < min || i > max) {
    return Error(
        key, "= " + std::to_string(i) + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return i;
}

StatusOr<double> JsonFieldReader::Number(std::string_view key, std::optional<double> fallback) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(key);
  }
  if (!v->is_number() || !std::isfinite(v->as_double())) return Error(key, "must be a number, got " + v->Dump());
  return v->as_double();
}

StatusOr<double> JsonFieldReader::Positive(std::string_view key, std::optional<double> fallback) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(key);
  }
  if (!v->is_number()) return Error(key, "must be a number, got " + v->Dump());
  const double d = v->as_double();
  if (!(d > 0.0) || !std::isfinite(d)) return Error(key, "= " + v->Dump() + " must be a finite number > 0");
  return d;
}

StatusOr<bool> JsonFieldReader::Bool(std::string_view key, std::optional<bool> fallback) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(key);
  }
  if (!v->is_bool()) return Error(key, "must be true or false, got " + v->Dump());
  return v->as_bool();
}

StatusOr<std::string> JsonFieldReader::String(std::string_view key, std::optional<std::string> fallback) const {
  const JsonValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return Missing(key);
  }
  if (!v->is_string()) return Error(key, "must be a string, got " + v->Dump());
  return v->as_string();
}

}  // namespace seer
