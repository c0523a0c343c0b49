#include "text/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "text/unicode.h"

namespace seer::jinja {
namespace {

constexpr size_t kMaxOutputBytes = size_t{64} << 20;
constexpr int kMaxDepth = 200;
constexpr int kMaxOps = 2000;  // operators and postfix steps in one tag
constexpr int64_t kMaxRange = 100000;  // Jinja's sandbox MAX_RANGE

Status Error(int line, const std::string& what) {
  return InvalidArgument("chat template line " + std::to_string(line) + ": " + what);
}

// --- Python text helpers -------------------------------------------------

std::u32string U32(const std::string& s) {
  std::u32string u;
  if (!unicode::DecodeUtf8(s, &u)) {
    u.clear();
    for (unsigned char c : s) u.push_back(c);
  }
  return u;
}
std::string U8(std::u32string_view u) { return unicode::ToUtf8(u); }

bool PyIsSpace(char32_t c) { return unicode::IsWhiteSpace(c) || (c >= 0x1C && c <= 0x1F); }

bool PyIsPrintable(char32_t c) {
  if (c == ' ') return true;
  using G = unicode::GeneralCategory;
  switch (unicode::CategoryOf(c)) {
    case G::kCc:
    case G::kCf:
    case G::kCs:
    case G::kCo:
    case G::kCn:
    case G::kZl:
    case G::kZp:
    case G::kZs: return false;
    default: return true;
  }
}

bool IsCased(char32_t c) {
  using G = unicode::GeneralCategory;
  const G g = unicode::CategoryOf(c);
  return g == G::kLu || g == G::kLl || g == G::kLt;
}

std::string PyUpper(const std::string& s) {
  std::u32string out;
  for (char32_t c : U32(s)) unicode::AppendUpperFull(c, &out);
  return U8(out);
}
std::string PyLower(const std::string& s) {
  std::u32string out;
  for (char32_t c : U32(s)) unicode::AppendLowerFull(c, &out);
  return U8(out);
}
std::string PyTitle(const std::string& s) {  // str.title()
  std::u32string u = U32(s);
  bool prev_cased = false;
  for (char32_t& c : u) {
    const bool cased = IsCased(c);
    c = prev_cased ? unicode::ToLower(c) : unicode::ToUpper(c);
    prev_cased = cased;
  }
  return U8(u);
}
std::string PyCapitalize(const std::string& s) {
  std::u32string u = U32(s);
  for (size_t i = 0; i < u.size(); ++i) u[i] = i == 0 ? unicode::ToUpper(u[i]) : unicode::ToLower(u[i]);
  return U8(u);
}

std::string PyStrip(const std::string& s, const Value* chars, bool left, bool right) {
  std::u32string u = U32(s);
  std::u32string set;
  const bool ws = chars == nullptr || chars->is_none() || chars->is_undefined();
  if (!ws) set = U32(chars->Str());
  auto strip = [&](char32_t c) { return ws ? PyIsSpace(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strip(u[b])) ++b;
  }
  if (right) {
    while (e > b && strip(u[e - 1])) --e;
  }
  return U8(std::u32string_view(u).substr(b, e - b));
}

std::string PyReprString(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : U32(s)) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!PyIsPrintable(c)) {
      char buf[16];
      if (c < 0x100) {
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      } else if (c < 0x10000) {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      } else {
        std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      }
      out += buf;
    } else {
      unicode::AppendUtf8(c, &out);
    }
  }
  out.push_back(quote);
  return out;
}

// float.__repr__: the shortest round-trip digits, fixed for 1e-4 <= |x| < 1e16.
std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // [-]d[.ddd]e[+-]XX
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::stoi(sci.substr(e + 1));
  if (exp >= -4 && exp < 16) {
    std::string out;
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), exp + 1));
      ip.append(exp + 1 > static_cast<int>(digits.size()) ? exp + 1 - digits.size() : 0, '0');
      std::string fp = static_cast<int>(digits.size()) > exp + 1 ? digits.substr(exp + 1) : "";
      out = ip + "." + (fp.empty() ? "0" : fp);
    } else {
      out = "0." + std::string(-exp - 1, '0') + digits;
    }
    return sign + out;
  }
  std::string mant = digits.substr(0, 1);
  if (digits.size() > 1) mant += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return sign + mant + ebuf;
}

std::string JsonString(const std::string& s, bool ensure_ascii) {
  std::string out = "\"";
  for (char32_t c : U32(s)) {
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    char buf[16];
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c >= 0x10000) {
        const char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      }
      out += buf;
    } else {
      unicode::AppendUtf8(c, &out);
    }
  }
  return out + "\"";
}

}  // namespace

// --- Value -------------------------------------------------------------------

Value Value::FromJson(const JsonValue& j) {
  switch (j.type()) {
    case JsonValue::Type::kNull: return None();
    case JsonValue::Type::kBool: return Bool(j.as_bool());
    case JsonValue::Type::kNumber: return j.is_integer() ? Int(j.as_int64()) : Float(j.as_double());
    case JsonValue::Type::kString: return String(j.as_string());
    case JsonValue::Type::kArray: {
      List l;
      for (const JsonValue& e : j.as_array()) l.push_back(FromJson(e));
      return MakeList(std::move(l));
    }
    case JsonValue::Type::kObject: {
      Dict d;
      for (const auto& [k, v] : j.as_object()) d.emplace_back(String(k), FromJson(v));
      return MakeDict(std::move(d));
    }
  }
  return None();
}

const std::string& Value::name() const {
  static const std::string kEmpty;
  return str_ ? *str_ : kEmpty;
}

const void* Value::identity() const {
  if (list_) return list_.get();
  if (dict_) return dict_.get();
  if (fn_) return fn_.get();
  return nullptr;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool:
    case Kind::kInt: return int_ != 0;
    case Kind::kFloat: return float_ != 0.0;
    case Kind::kString: return !str_->empty();
    case Kind::kList:
    case Kind::kTuple: return !list_->empty();
    case Kind::kDict: return !dict_->empty();
    default: return true;
  }
}

std::string Value::Str() const {
  switch (kind_) {
    case Kind::kUndefined: return "";
    case Kind::kString: return *str_;
    default: return Repr();
  }
}

namespace {

// Python's guard against printing a container inside itself (Py_ReprEnter):
// a list, tuple or dict met again while its own repr is under way prints as
// [...], (...) or {...}. Only a namespace can close such a loop here.
class ReprGuard {
 public:
  explicit ReprGuard(const void* container) {
    entered_ = std::find(Active().begin(), Active().end(), container) == Active().end();
    if (entered_) Active().push_back(container);
  }
  ~ReprGuard() {
    if (entered_) Active().pop_back();
  }
  ReprGuard(const ReprGuard&) = delete;
  ReprGuard& operator=(const ReprGuard&) = delete;
  bool entered() const { return entered_; }

 private:
  static std::vector<const void*>& Active() {
    thread_local std::vector<const void*> active;
    return active;
  }
  bool entered_ = false;
};

std::string DictRepr(const Dict& d) {
  ReprGuard guard(&d);
  if (!guard.entered()) return "{...}";
  std::string out = "{";
  for (size_t i = 0; i < d.size(); ++i) out += (i ? ", " : "") + d[i].first.Repr() + ": " + d[i].second.Repr();
  return out + "}";
}

}  // namespace

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "None";
    case Kind::kBool: return int_ ? "True" : "False";
    case Kind::kInt: return std::to_string(int_);
    case Kind::kFloat: return PyFloatRepr(float_);
    case Kind::kString: return PyReprString(*str_);
    case Kind::kList:
    case Kind::kTuple: {
      if (str_) return *str_;  // range(...)
      const bool tuple = kind_ == Kind::kTuple;
      ReprGuard guard(list_.get());
      if (!guard.entered()) return tuple ? "(...)" : "[...]";
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < list_->size(); ++i) out += (i ? ", " : "") + (*list_)[i].Repr();
      if (tuple && list_->size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Kind::kDict: return DictRepr(*dict_);
    case Kind::kNamespace: return "<Namespace " + DictRepr(*dict_) + ">";
    case Kind::kCallable: return "<function " + *str_ + ">";
  }
  return "";
}

std::string Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kNamespace: return "Namespace";
    case Kind::kCallable: return "function";
  }
  return "object";
}

bool Equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() == K::kFloat || b.kind() == K::kFloat) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone: return true;
    case K::kString: return a.as_string() == b.as_string();
    case K::kList:
    case K::kTuple: {
      if (a.as_list().size() != b.as_list().size()) return false;
      for (size_t i = 0; i < a.as_list().size(); ++i) {
        if (!Equal(a.as_list()[i], b.as_list()[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.as_dict().size() != b.as_dict().size()) return false;
      for (const auto& [k, v] : a.as_dict()) {
        bool found = false;
        for (const auto& [k2, v2] : b.as_dict()) {
          if (Equal(k, k2)) {
            if (!Equal(v, v2)) return false;
            found = true;
            break;
          }
        }
        if (!found) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

namespace {

Status JsonInto(const Value& v, bool ascii, int indent, const std::string& item_sep, const std::string& key_sep,
                bool sort_keys, int level, std::string* out) {
  using K = Value::Kind;
  const auto newline = [&](int lvl) {
    if (indent >= 0) {
      out->push_back('\n');
      out->append(static_cast<size_t>(indent) * lvl, ' ');
    }
  };
  switch (v.kind()) {
    case K::kNone: *out += "null"; return OkStatus();
    case K::kBool: *out += v.as_bool() ? "true" : "false"; return OkStatus();
    case K::kInt: *out += std::to_string(v.as_int()); return OkStatus();
    case K::kFloat: {
      const double d = v.as_float();
      *out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : PyFloatRepr(d);
      return OkStatus();
    }
    case K::kString: *out += JsonString(v.as_string(), ascii); return OkStatus();
    case K::kList:
    case K::kTuple: {
      if (v.as_list().empty()) {
        *out += "[]";
        return OkStatus();
      }
      out->push_back('[');
      for (size_t i = 0; i < v.as_list().size(); ++i) {
        if (i) *out += item_sep;
        newline(level + 1);
        SEER_RETURN_IF_ERROR(JsonInto(v.as_list()[i], ascii, indent, item_sep, key_sep, sort_keys, level + 1, out));
      }
      newline(level);
      out->push_back(']');
      return OkStatus();
    }
    case K::kDict: {
      if (v.as_dict().empty()) {
        *out += "{}";
        return OkStatus();
      }
      std::vector<std::pair<std::string, const Value*>> items;
      for (const auto& [k, val] : v.as_dict()) {
        std::string key;
        if (k.is_string()) {
          key = k.as_string();
        } else if (k.kind() == K::kBool) {
          key = k.as_bool() ? "true" : "false";
        } else if (k.kind() == K::kInt) {
          key = std::to_string(k.as_int());
        } else if (k.kind() == K::kFloat) {
          key = PyFloatRepr(k.as_float());
        } else if (k.is_none()) {
          key = "null";
        } else {
          return InvalidArgument("tojson: keys must be str, int, float, bool or None, not " + k.TypeName());
        }
        items.emplace_back(std::move(key), &val);
      }
      if (sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      }
      out->push_back('{');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) *out += item_sep;
        newline(level + 1);
        *out += JsonString(items[i].first, ascii) + key_sep;
        SEER_RETURN_IF_ERROR(JsonInto(*items[i].second, ascii, indent, item_sep, key_sep, sort_keys, level + 1, out));
      }
      newline(level);
      out->push_back('}');
      return OkStatus();
    }
    default: return InvalidArgument("tojson: Object of type " + v.TypeName() + " is not JSON serializable");
  }
}

}  // namespace

StatusOr<std::string> ToJson(const Value& v, bool ensure_ascii, int indent, std::string item_sep, std::string key_sep,
                             bool sort_keys) {
  std::string out;
  SEER_RETURN_IF_ERROR(JsonInto(v, ensure_ascii, indent, item_sep, key_sep, sort_keys, 0, &out));
  return out;
}

// --- Lexing -------------------------------------------------------------------

namespace {

struct Segment {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string text;
  int line;
};

struct Token {
  enum Type { kName, kString, kInt, kFloat, kOp, kEnd } type = kEnd;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

int LineAt(const std::string& s, size_t pos) {
  return 1 + static_cast<int>(std::count(s.begin(), s.begin() + std::min(pos, s.size()), '\n'));
}

std::string RStripSpace(const std::string& s) {
  std::u32string u = U32(s);
  size_t e = u.size();
  while (e > 0 && PyIsSpace(u[e - 1])) --e;
  return U8(std::u32string_view(u).substr(0, e));
}

// Finds the end of a tag ("}}" or "%}") from `from`, skipping string
// literals and balanced brackets (a dict literal may end in "}}").
size_t FindTagEnd(const std::string& s, size_t from, std::string_view close) {
  char quote = 0;
  int depth = 0;
  for (size_t i = from; i + 1 < s.size(); ++i) {
    const char c = s[i];
    if (quote) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (depth == 0 && s.compare(i, close.size(), close) == 0) {
      return i;
    } else if (c == '(' || c == '[' || c == '{') {
      ++depth;
    } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string::npos;
}

std::string TrimAscii(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\n' || s[b] == '\r')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\n' || s[e - 1] == '\r')) --e;
  return std::string(s.substr(b, e - b));
}

Status Lex(std::string_view source, std::vector<Segment>* out) {
  // Newlines are normalised to \n; a single trailing newline is dropped
  // (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src.push_back(source[i]);
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();

  size_t pos = 0;
  bool strip_ws = false, trim_newline = false;
  // Whether the text starts a line: after the template's start or a newline,
  // including one a tag's whitespace control consumed (Jinja's line_starting).
  bool line_start = true;
  auto take_text = [&](size_t end) {
    std::string text = src.substr(pos, end - pos);
    line_start = pos == 0 || src[pos - 1] == '\n';
    if (strip_ws) {
      std::u32string u = U32(text);
      size_t b = 0;
      while (b < u.size() && PyIsSpace(u[b])) ++b;
      if (b > 0) line_start = u[b - 1] == '\n';
      text = U8(std::u32string_view(u).substr(b));
    } else if (trim_newline && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
      line_start = true;
    }
    strip_ws = trim_newline = false;
    return text;
  };
  while (true) {
    size_t open = pos;
    while ((open = src.find('{', open)) != std::string::npos) {
      if (open + 1 < src.size() && (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#')) break;
      ++open;
    }
    const size_t text_end = open == std::string::npos ? src.size() : open;
    std::string text = take_text(text_end);
    if (open == std::string::npos) {
      if (!text.empty()) out->push_back({Segment::kText, text, LineAt(src, pos)});
      return OkStatus();
    }
    const char kind = src[open + 1];
    size_t inner = open + 2;
    const char modifier = inner < src.size() ? src[inner] : 0;
    if (modifier == '-') {
      text = RStripSpace(text);
    } else if (modifier != '+' && kind != '{') {
      // lstrip_blocks: spaces and tabs before a block or comment tag that
      // starts its line.
      const size_t nl = text.rfind('\n');
      const size_t l = nl == std::string::npos ? 0 : nl + 1;
      if ((nl != std::string::npos || line_start) && text.find_first_not_of(" \t", l) == std::string::npos) {
        text.erase(l);
      }
    }
    if (modifier == '-' || modifier == '+') ++inner;
    if (!text.empty()) out->push_back({Segment::kText, text, LineAt(src, pos)});
    const int line = LineAt(src, open);
    if (kind == '#') {
      const size_t end = src.find("#}", inner);
      if (end == std::string::npos) return Error(line, "unclosed comment {#");
      const bool minus = end > inner && src[end - 1] == '-';
      pos = end + 2;
      strip_ws = minus;
      trim_newline = !minus;
      continue;
    }
    const std::string_view close = kind == '{' ? "}}" : "%}";
    const size_t end = FindTagEnd(src, inner, close);
    if (end == std::string::npos) return Error(line, kind == '{' ? "unclosed {{" : "unclosed {%");
    const char before = end > inner ? src[end - 1] : 0;
    std::string content = src.substr(inner, end - inner - ((before == '-' || before == '+') ? 1 : 0));
    pos = end + 2;
    strip_ws = before == '-';
    trim_newline = kind == '%' && before != '-' && before != '+';
    if (kind == '{') {
      out->push_back({Segment::kExpr, content, line});
      continue;
    }
    if (TrimAscii(content) == "raw") {
      // Everything up to {% endraw %} is text.
      size_t search = pos;
      while (true) {
        const size_t o = src.find("{%", search);
        if (o == std::string::npos) return Error(line, "{% raw %} without {% endraw %}");
        size_t in = o + 2;
        const char m = in < src.size() ? src[in] : 0;
        if (m == '-' || m == '+') ++in;
        const size_t e = FindTagEnd(src, in, "%}");
        if (e == std::string::npos) return Error(line, "unclosed {%");
        const char b = e > in ? src[e - 1] : 0;
        if (TrimAscii(std::string_view(src).substr(in, e - in - ((b == '-' || b == '+') ? 1 : 0))) == "endraw") {
          std::string raw = take_text(o);
          if (m == '-') raw = RStripSpace(raw);
          if (!raw.empty()) out->push_back({Segment::kText, raw, line});
          pos = e + 2;
          strip_ws = b == '-';
          trim_newline = b != '-' && b != '+';
          break;
        }
        search = e + 2;
      }
      continue;
    }
    out->push_back({Segment::kStmt, content, line});
  }
}

// Python string-literal escapes, as Jinja decodes them.
Status Unescape(const std::string& body, int line, std::string* out) {
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 >= body.size()) {
      out->push_back(body[i]);
      continue;
    }
    const char e = body[++i];
    auto hex = [&](int n) -> StatusOr<char32_t> {
      char32_t v = 0;
      for (int k = 0; k < n; ++k) {
        if (i + 1 >= body.size()) return Error(line, "truncated escape in string");
        const char h = body[++i];
        const int d = h >= '0' && h <= '9'   ? h - '0'
                      : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                             : -1;
        if (d < 0) return Error(line, "bad hex escape in string");
        v = v * 16 + d;
      }
      return v;
    };
    switch (e) {
      case 'n': out->push_back('\n'); break;
      case 't': out->push_back('\t'); break;
      case 'r': out->push_back('\r'); break;
      case '\\': out->push_back('\\'); break;
      case '\'': out->push_back('\''); break;
      case '"': out->push_back('"'); break;
      case 'a': out->push_back('\a'); break;
      case 'b': out->push_back('\b'); break;
      case 'f': out->push_back('\f'); break;
      case 'v': out->push_back('\v'); break;
      case '\n': break;
      case 'x':
      case 'u':
      case 'U': {
        SEER_ASSIGN_OR_RETURN(char32_t v, hex(e == 'x' ? 2 : e == 'u' ? 4 : 8));
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return Error(line, "escape outside Unicode scalar values");
        unicode::AppendUtf8(v, out);
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          char32_t v = e - '0';
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k) {
            v = v * 8 + (body[++i] - '0');
          }
          unicode::AppendUtf8(v, out);
        } else {
          out->push_back('\\');
          out->push_back(e);
        }
    }
  }
  return OkStatus();
}

Status Tokenize(const std::string& s, int line, std::vector<Token>* out) {
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      ++i;
      continue;
    }
    Token t;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      t.type = Token::kName;
      t.text = s.substr(i, j - i);
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
      }
      std::string num = s.substr(i, j - i);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      if (is_float) {
        t.type = Token::kFloat;
        t.f = std::strtod(num.c_str(), nullptr);
      } else {
        t.type = Token::kInt;
        auto r = std::from_chars(num.data(), num.data() + num.size(), t.i);
        if (r.ec != std::errc()) return Error(line, "integer literal " + num + " is out of range");
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) return Error(line, "unterminated string literal");
      t.type = Token::kString;
      SEER_RETURN_IF_ERROR(Unescape(s.substr(i + 1, j - i - 1), line, &t.text));
      i = j + 1;
    } else {
      static const char* const kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                         ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ".", ",", ":", "|"};
      bool found = false;
      for (const char* op : kOps) {
        if (s.compare(i, std::strlen(op), op) == 0) {
          t.type = Token::kOp;
          t.text = op;
          i += std::strlen(op);
          found = true;
          break;
        }
      }
      if (!found) return Error(line, std::string("unexpected character '") + c + "'");
    }
    out->push_back(std::move(t));
  }
  out->push_back(Token{});
  return OkStatus();
}

}  // namespace

// --- AST -----------------------------------------------------------------

struct Expr {
  enum Kind {
    kLiteral,
    kName,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNeg,
    kPos,
    kBinary,
    kConcat,
    kCompare,
    kAnd,
    kOr,
    kNot,
    kCond,
    kList,
    kTuple,
    kDict
  } kind;
  int line = 0;
  Value literal;
  std::string name;  // name, attribute, filter, test, binary operator
  std::vector<std::unique_ptr<Expr>> args;  // children (null entries for absent slice parts)
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;  // kCompare
  bool negated = false;  // kTest
};
using ExprPtr = std::unique_ptr<Expr>;

struct Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue, kGeneration } kind;
  int line = 0;
  std::string text;  // kText; kSetBlock / kMacro name
  ExprPtr expr;  // kOutput, kSet value, kFor iterable
  std::vector<std::pair<ExprPtr, std::vector<std::unique_ptr<Node>>>> branches;  // kIf
  std::vector<std::unique_ptr<Node>> body, else_body;
  std::vector<std::string> targets;  // kFor / kSet names
  std::string attr;  // kSet ns.attr
  ExprPtr filter;  // kFor ... if
  std::vector<std::pair<std::string, ExprPtr>> params;  // kMacro
};
using NodeList = std::vector<std::unique_ptr<Node>>;

namespace {

const std::set<std::string>& KnownFilters() {
  static const std::set<std::string> k = {
      "abs",        "attr",    "capitalize", "count",  "d",      "default", "dictsort",   "e",
      "escape",     "first",   "float",      "format", "indent", "int",     "items",      "join",
      "last",       "length",  "list",       "lower",  "map",    "max",     "min",        "reject",
      "rejectattr", "replace", "reverse",    "round",  "safe",   "select",  "selectattr", "sort",
      "string",     "sum",     "title",      "tojson", "trim",   "unique",  "upper",      "wordcount"};
  return k;
}
const std::set<std::string>& KnownTests() {
  static const std::set<std::string> k = {
      "boolean",  "callable", "defined",  "divisibleby", "eq",          "equalto", "escaped", "even",
      "false",    "filter",   "float",    "ge",          "greaterthan", "gt",      "in",      "integer",
      "iterable", "le",       "lessthan", "lower",       "lt",          "mapping", "ne",      "none",
      "number",   "odd",      "sameas",   "sequence",    "string",      "test",    "true",    "undefined",
      "upper",    "==",       "!=",       "<",           "<=",          ">",       ">="};
  return k;
}

// Expression parser over one tag's tokens; Jinja2's precedence.
class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int line) : t_(std::move(toks)), line_(line) {}

  bool AtEnd() const { return t_[p_].type == Token::kEnd; }
  const Token& Peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool IsOp(const char* op, size_t k = 0) const { return Peek(k).type == Token::kOp && Peek(k).text == op; }
  bool IsName(const char* n, size_t k = 0) const { return Peek(k).type == Token::kName && Peek(k).text == n; }
  bool Accept(const char* op) {
    if (IsOp(op)) return ++p_, true;
    return false;
  }
  bool AcceptName(const char* n) {
    if (IsName(n)) return ++p_, true;
    return false;
  }
  Status Expect(const char* op) {
    if (Accept(op)) return OkStatus();
    return Fail(std::string("expected '") + op + "'");
  }
  Status Fail(const std::string& what) const {
    const std::string at = AtEnd() ? "end of tag" : "'" + Peek().text + "'";
    return Error(line_, what + " at " + at);
  }
  StatusOr<std::string> Name() {
    if (Peek().type != Token::kName) return Fail("expected a name");
    return t_[p_++].text;
  }

  ExprPtr Make(Expr::Kind k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line_;
    return e;
  }

  // expression, or a bare tuple "a, b" when allowed.
  StatusOr<ExprPtr> ParseTuple() {
    SEER_ASSIGN_OR_RETURN(ExprPtr first, ParseExpr());
    if (!IsOp(",")) return first;
    ExprPtr t = Make(Expr::kTuple);
    t->args.push_back(std::move(first));
    while (Accept(",")) {
      if (AtEnd() || IsOp(")") || IsOp("%}")) break;
      SEER_ASSIGN_OR_RETURN(ExprPtr e, ParseExpr());
      t->args.push_back(std::move(e));
    }
    return t;
  }

  StatusOr<ExprPtr> ParseExpr() {
    if (++depth_ > kMaxDepth) return Fail("expression nested too deeply");
    struct Leave {
      int* d;
      ~Leave() { --*d; }
    } leave{&depth_};
    SEER_ASSIGN_OR_RETURN(ExprPtr e, ParseOr());
    while (IsName("if")) {
      ++p_;
      ExprPtr c = Make(Expr::kCond);
      SEER_ASSIGN_OR_RETURN(ExprPtr cond, ParseOr());
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      if (AcceptName("else")) {
        SEER_ASSIGN_OR_RETURN(ExprPtr other, ParseExpr());
        c->args.push_back(std::move(other));
      }
      e = std::move(c);
    }
    return e;
  }

  StatusOr<ExprPtr> ParseOr() {
    SEER_ASSIGN_OR_RETURN(ExprPtr l, ParseAnd());
    while (AcceptName("or")) {
      SEER_RETURN_IF_ERROR(CountOp());
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseAnd());
      ExprPtr e = Make(Expr::kOr);
      e->args.push_back(std::move(l));
      e->args.push_back(std::move(r));
      l = std::move(e);
    }
    return l;
  }
  StatusOr<ExprPtr> ParseAnd() {
    SEER_ASSIGN_OR_RETURN(ExprPtr l, ParseNot());
    while (AcceptName("and")) {
      SEER_RETURN_IF_ERROR(CountOp());
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseNot());
      ExprPtr e = Make(Expr::kAnd);
      e->args.push_back(std::move(l));
      e->args.push_back(std::move(r));
      l = std::move(e);
    }
    return l;
  }
  StatusOr<ExprPtr> ParseNot() {
    if (AcceptName("not")) {
      if (++depth_ > kMaxDepth) return Fail("expression nested too deeply");
      struct Leave {
        int* d;
        ~Leave() { --*d; }
      } leave{&depth_};
      SEER_ASSIGN_OR_RETURN(ExprPtr x, ParseNot());
      ExprPtr e = Make(Expr::kNot);
      e->args.push_back(std::move(x));
      return e;
    }
    return ParseCompare();
  }
  StatusOr<ExprPtr> ParseCompare() {
    SEER_ASSIGN_OR_RETURN(ExprPtr first, ParseMath1());
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Peek().type == Token::kOp &&
          (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp("<=") || IsOp(">") || IsOp(">="))) {
        op = t_[p_++].text;
      } else if (IsName("in")) {
        ++p_, op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        p_ += 2, op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(Expr::kCompare);
        cmp->args.push_back(std::move(first));
      }
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseMath1());
      cmp->ops.push_back(op);
      cmp->args.push_back(std::move(r));
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  // Operator chains build deep trees; bound them so evaluation cannot
  // exhaust the stack.
  Status CountOp() {
    if (++ops_ > kMaxOps) return Fail("expression has more than " + std::to_string(kMaxOps) + " operators");
    return OkStatus();
  }
  StatusOr<ExprPtr> Binary(ExprPtr l, const std::string& op, ExprPtr r) {
    SEER_RETURN_IF_ERROR(CountOp());
    ExprPtr e = Make(Expr::kBinary);
    e->name = op;
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }
  StatusOr<ExprPtr> ParseMath1() {
    SEER_ASSIGN_OR_RETURN(ExprPtr l, ParseConcat());
    while (IsOp("+") || IsOp("-")) {
      const std::string op = t_[p_++].text;
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseConcat());
      SEER_ASSIGN_OR_RETURN(l, Binary(std::move(l), op, std::move(r)));
    }
    return l;
  }
  StatusOr<ExprPtr> ParseConcat() {
    SEER_ASSIGN_OR_RETURN(ExprPtr first, ParseMath2());
    if (!IsOp("~")) return first;
    ExprPtr c = Make(Expr::kConcat);
    c->args.push_back(std::move(first));
    while (Accept("~")) {
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseMath2());
      c->args.push_back(std::move(r));
    }
    return c;
  }
  StatusOr<ExprPtr> ParseMath2() {
    SEER_ASSIGN_OR_RETURN(ExprPtr l, ParsePow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = t_[p_++].text;
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParsePow());
      SEER_ASSIGN_OR_RETURN(l, Binary(std::move(l), op, std::move(r)));
    }
    return l;
  }
  StatusOr<ExprPtr> ParsePow() {
    SEER_ASSIGN_OR_RETURN(ExprPtr l, ParseUnary(true));
    while (Accept("**")) {
      SEER_ASSIGN_OR_RETURN(ExprPtr r, ParseUnary(true));
      SEER_ASSIGN_OR_RETURN(l, Binary(std::move(l), "**", std::move(r)));
    }
    return l;
  }
  StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    if (++depth_ > kMaxDepth) return Fail("expression nested too deeply");
    struct Leave {
      int* d;
      ~Leave() { --*d; }
    } leave{&depth_};
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      const bool neg = t_[p_++].text == "-";
      SEER_ASSIGN_OR_RETURN(ExprPtr x, ParseUnary(false));
      e = Make(neg ? Expr::kNeg : Expr::kPos);
      e->args.push_back(std::move(x));
    } else {
      SEER_ASSIGN_OR_RETURN(e, ParsePrimary());
    }
    SEER_ASSIGN_OR_RETURN(e, ParsePostfix(std::move(e)));
    if (with_filter) {
      SEER_ASSIGN_OR_RETURN(e, ParseFilterExpr(std::move(e)));
    }
    return e;
  }

  StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Peek();
    switch (t.type) {
      case Token::kName: {
        ++p_;
        ExprPtr e = Make(Expr::kLiteral);
        if (t.text == "true" || t.text == "True") {
          e->literal = Value::Bool(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = Value::Bool(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = Value::None();
        } else {
          e->kind = Expr::kName;
          e->name = t.text;
        }
        return e;
      }
      case Token::kString: {
        std::string s;
        while (Peek().type == Token::kString) s += t_[p_++].text;
        ExprPtr e = Make(Expr::kLiteral);
        e->literal = Value::String(std::move(s));
        return e;
      }
      case Token::kInt:
      case Token::kFloat: {
        ++p_;
        ExprPtr e = Make(Expr::kLiteral);
        e->literal = t.type == Token::kInt ? Value::Int(t.i) : Value::Float(t.f);
        return e;
      }
      case Token::kOp:
        if (Accept("(")) {
          if (Accept(")")) return Make(Expr::kTuple);
          SEER_ASSIGN_OR_RETURN(ExprPtr e, ParseExpr());
          if (IsOp(",")) {
            ExprPtr tup = Make(Expr::kTuple);
            tup->args.push_back(std::move(e));
            while (Accept(",")) {
              if (IsOp(")")) break;
              SEER_ASSIGN_OR_RETURN(ExprPtr x, ParseExpr());
              tup->args.push_back(std::move(x));
            }
            e = std::move(tup);
          }
          SEER_RETURN_IF_ERROR(Expect(")"));
          return e;
        }
        if (Accept("[")) {
          ExprPtr l = Make(Expr::kList);
          while (!IsOp("]")) {
            SEER_ASSIGN_OR_RETURN(ExprPtr x, ParseExpr());
            l->args.push_back(std::move(x));
            if (!Accept(",")) break;
          }
          SEER_RETURN_IF_ERROR(Expect("]"));
          return l;
        }
        if (Accept("{")) {
          ExprPtr d = Make(Expr::kDict);
          while (!IsOp("}")) {
            SEER_ASSIGN_OR_RETURN(ExprPtr k, ParseExpr());
            SEER_RETURN_IF_ERROR(Expect(":"));
            SEER_ASSIGN_OR_RETURN(ExprPtr v, ParseExpr());
            d->args.push_back(std::move(k));
            d->args.push_back(std::move(v));
            if (!Accept(",")) break;
          }
          SEER_RETURN_IF_ERROR(Expect("}"));
          return d;
        }
        break;
      default: break;
    }
    return Fail("unexpected token");
  }

  Status ParseCallArgs(Expr* call) {
    while (!IsOp(")")) {
      if (IsOp("*") || IsOp("**")) return Fail("*args / **kwargs in calls are not supported");
      if (Peek().type == Token::kName && IsOp("=", 1)) {
        std::string key = t_[p_].text;
        p_ += 2;
        SEER_ASSIGN_OR_RETURN(ExprPtr v, ParseExpr());
        call->kwargs.emplace_back(std::move(key), std::move(v));
      } else {
        if (!call->kwargs.empty()) return Fail("positional argument after a keyword argument");
        SEER_ASSIGN_OR_RETURN(ExprPtr v, ParseExpr());
        call->args.push_back(std::move(v));
      }
      if (!Accept(",")) break;
    }
    return Expect(")");
  }

  StatusOr<ExprPtr> ParsePostfix(ExprPtr e) {
    while (true) {
      SEER_RETURN_IF_ERROR(CountOp());
      if (Accept(".")) {
        if (Peek().type == Token::kInt) {
          ExprPtr item = Make(Expr::kItem);
          ExprPtr idx = Make(Expr::kLiteral);
          idx->literal = Value::Int(t_[p_++].i);
          item->args.push_back(std::move(e));
          item->args.push_back(std::move(idx));
          e = std::move(item);
          continue;
        }
        SEER_ASSIGN_OR_RETURN(std::string name, Name());
        ExprPtr a = Make(Expr::kAttr);
        a->name = name;
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (Accept("[")) {
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!IsOp(":") && !IsOp("]")) {
            SEER_ASSIGN_OR_RETURN(parts[k], ParseExpr());
          }
          if (k < 2 && Accept(":")) {
            slice = true;
          } else {
            break;
          }
        }
        SEER_RETURN_IF_ERROR(Expect("]"));
        if (!slice) {
          if (!parts[0]) return Fail("empty subscript");
          ExprPtr item = Make(Expr::kItem);
          item->args.push_back(std::move(e));
          item->args.push_back(std::move(parts[0]));
          e = std::move(item);
        } else {
          ExprPtr s = Make(Expr::kSlice);
          s->args.push_back(std::move(e));
          for (auto& p : parts) s->args.push_back(std::move(p));
          e = std::move(s);
        }
      } else if (Accept("(")) {
        ExprPtr call = Make(Expr::kCall);
        call->args.push_back(std::move(e));
        SEER_RETURN_IF_ERROR(ParseCallArgs(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  StatusOr<ExprPtr> ParseFilterExpr(ExprPtr e) {
    while (true) {
      SEER_RETURN_IF_ERROR(CountOp());
      if (Accept("|")) {
        SEER_ASSIGN_OR_RETURN(std::string name, Name());
        if (!KnownFilters().count(name)) return Error(line_, "unsupported filter '" + name + "'");
        ExprPtr f = Make(Expr::kFilter);
        f->name = name;
        f->args.push_back(std::move(e));
        if (Accept("(")) SEER_RETURN_IF_ERROR(ParseCallArgs(f.get()));
        e = std::move(f);
      } else if (IsName("is")) {
        ++p_;
        ExprPtr t = Make(Expr::kTest);
        t->negated = AcceptName("not");
        std::string name;
        if (Peek().type == Token::kName) {
          name = t_[p_++].text;
        } else if (Peek().type == Token::kOp && KnownTests().count(Peek().text)) {
          name = t_[p_++].text;
        } else {
          return Fail("expected a test name");
        }
        if (!KnownTests().count(name)) return Error(line_, "unsupported test '" + name + "'");
        t->name = name;
        t->args.push_back(std::move(e));
        if (Accept("(")) {
          SEER_RETURN_IF_ERROR(ParseCallArgs(t.get()));
        } else if ((Peek().type == Token::kName || Peek().type == Token::kString || Peek().type == Token::kInt ||
                    Peek().type == Token::kFloat || IsOp("[") || IsOp("{")) &&
                   !IsName("else") && !IsName("or") && !IsName("and") && !IsName("if")) {
          SEER_ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
          SEER_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else if (Accept("(")) {
        ExprPtr call = Make(Expr::kCall);
        call->args.push_back(std::move(e));
        SEER_RETURN_IF_ERROR(ParseCallArgs(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
  int depth_ = 0;
  int ops_ = 0;
};

// Statement structure over the segments.
class Parser {
 public:
  explicit Parser(std::vector<Segment> segs) : segs_(std::move(segs)) {}

  StatusOr<NodeList> ParseAll() {
    NodeList body;
    std::string end;
    SEER_RETURN_IF_ERROR(ParseBlock(&body, {}, &end));
    return body;
  }

 private:
  // Parses nodes until a statement whose first word is in `ends` (returned
  // in *end with its parser positioned after the keyword).
  Status ParseBlock(NodeList* out, const std::set<std::string>& ends, std::string* end) {
    if (++depth_ > kMaxDepth) return Error(i_ < segs_.size() ? segs_[i_].line : 0, "blocks nested too deeply");
    struct Leave {
      int* d;
      ~Leave() { --*d; }
    } leave{&depth_};
    while (i_ < segs_.size()) {
      const Segment& s = segs_[i_++];
      if (s.kind == Segment::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kText;
        n->text = s.text;
        out->push_back(std::move(n));
        continue;
      }
      std::vector<Token> toks;
      SEER_RETURN_IF_ERROR(Tokenize(s.text, s.line, &toks));
      auto p = std::make_unique<ExprParser>(std::move(toks), s.line);
      if (s.kind == Segment::kExpr) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kOutput;
        n->line = s.line;
        SEER_ASSIGN_OR_RETURN(n->expr, p->ParseTuple());
        if (!p->AtEnd()) return p->Fail("unexpected token after expression");
        out->push_back(std::move(n));
        continue;
      }
      if (p->Peek().type != Token::kName) return Error(s.line, "expected a statement name");
      const std::string word = p->Peek().text;
      if (ends.count(word)) {
        ++p->p_;
        *end = word;
        cur_ = std::move(p);
        return OkStatus();
      }
      ++p->p_;
      auto n = std::make_unique<Node>();
      n->line = s.line;
      if (word == "if") {
        n->kind = Node::kIf;
        SEER_ASSIGN_OR_RETURN(ExprPtr cond, p->ParseTuple());
        SEER_RETURN_IF_ERROR(EndOfTag(*p));
        std::string e;
        while (true) {
          NodeList body;
          SEER_RETURN_IF_ERROR(ParseBlock(&body, {"elif", "else", "endif"}, &e));
          if (e.empty()) return Error(s.line, "{% if %} without {% endif %}");
          n->branches.emplace_back(std::move(cond), std::move(body));
          if (e == "elif") {
            SEER_ASSIGN_OR_RETURN(cond, cur_->ParseTuple());
            SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
            continue;
          }
          SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
          if (e == "else") {
            SEER_RETURN_IF_ERROR(ParseBlock(&n->else_body, {"endif"}, &e));
            if (e.empty()) return Error(s.line, "{% if %} without {% endif %}");
            SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
          }
          break;
        }
      } else if (word == "for") {
        n->kind = Node::kFor;
        const bool paren = p->Accept("(");
        do {
          SEER_ASSIGN_OR_RETURN(std::string t, p->Name());
          n->targets.push_back(t);
        } while (p->Accept(","));
        if (paren) SEER_RETURN_IF_ERROR(p->Expect(")"));
        if (!p->AcceptName("in")) return p->Fail("expected 'in'");
        // The iterable stops before a trailing `if` filter.
        SEER_ASSIGN_OR_RETURN(n->expr, p->ParseOr());
        if (p->AcceptName("if")) {
          SEER_ASSIGN_OR_RETURN(n->filter, p->ParseExpr());
        }
        if (p->AcceptName("recursive")) return Error(s.line, "recursive for loops are not supported");
        SEER_RETURN_IF_ERROR(EndOfTag(*p));
        std::string e;
        SEER_RETURN_IF_ERROR(ParseBlock(&n->body, {"else", "endfor"}, &e));
        if (e.empty()) return Error(s.line, "{% for %} without {% endfor %}");
        SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
        if (e == "else") {
          SEER_RETURN_IF_ERROR(ParseBlock(&n->else_body, {"endfor"}, &e));
          if (e.empty()) return Error(s.line, "{% for %} without {% endfor %}");
          SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
        }
      } else if (word == "set") {
        SEER_ASSIGN_OR_RETURN(std::string first, p->Name());
        if (p->Accept(".")) {
          n->kind = Node::kSet;
          n->targets.push_back(first);
          SEER_ASSIGN_OR_RETURN(n->attr, p->Name());
        } else {
          n->targets.push_back(first);
          while (p->Accept(",")) {
            SEER_ASSIGN_OR_RETURN(std::string t, p->Name());
            n->targets.push_back(t);
          }
        }
        if (p->Accept("=")) {
          n->kind = Node::kSet;
          SEER_ASSIGN_OR_RETURN(n->expr, p->ParseTuple());
          SEER_RETURN_IF_ERROR(EndOfTag(*p));
        } else {
          if (n->targets.size() != 1 || !n->attr.empty()) return p->Fail("expected '='");
          if (p->Accept("|")) return Error(s.line, "filtered set blocks are not supported");
          SEER_RETURN_IF_ERROR(EndOfTag(*p));
          n->kind = Node::kSetBlock;
          std::string e;
          SEER_RETURN_IF_ERROR(ParseBlock(&n->body, {"endset"}, &e));
          if (e.empty()) return Error(s.line, "{% set %} without {% endset %}");
          SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
        }
      } else if (word == "macro") {
        n->kind = Node::kMacro;
        SEER_ASSIGN_OR_RETURN(n->text, p->Name());
        SEER_RETURN_IF_ERROR(p->Expect("("));
        while (!p->IsOp(")")) {
          SEER_ASSIGN_OR_RETURN(std::string param, p->Name());
          ExprPtr dflt;
          if (p->Accept("=")) {
            SEER_ASSIGN_OR_RETURN(dflt, p->ParseExpr());
          }
          n->params.emplace_back(param, std::move(dflt));
          if (!p->Accept(",")) break;
        }
        SEER_RETURN_IF_ERROR(p->Expect(")"));
        SEER_RETURN_IF_ERROR(EndOfTag(*p));
        std::string e;
        SEER_RETURN_IF_ERROR(ParseBlock(&n->body, {"endmacro"}, &e));
        if (e.empty()) return Error(s.line, "{% macro %} without {% endmacro %}");
        SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
      } else if (word == "break" || word == "continue") {
        n->kind = word == "break" ? Node::kBreak : Node::kContinue;
        SEER_RETURN_IF_ERROR(EndOfTag(*p));
      } else if (word == "generation") {
        n->kind = Node::kGeneration;
        SEER_RETURN_IF_ERROR(EndOfTag(*p));
        std::string e;
        SEER_RETURN_IF_ERROR(ParseBlock(&n->body, {"endgeneration"}, &e));
        if (e.empty()) return Error(s.line, "{% generation %} without {% endgeneration %}");
        SEER_RETURN_IF_ERROR(EndOfTag(*cur_));
      } else {
        static const std::set<std::string> kKnownUnsupported = {
            "include", "import", "from", "extends", "block", "call", "filter", "with", "autoescape", "do", "trans"};
        if (kKnownUnsupported.count(word)) return Error(s.line, "unsupported statement {% " + word + " %}");
        return Error(s.line, "unknown statement {% " + word + " %}");
      }
      out->push_back(std::move(n));
    }
    end->clear();
    return OkStatus();
  }

  Status EndOfTag(const ExprParser& p) {
    if (!p.AtEnd()) return p.Fail("unexpected token");
    return OkStatus();
  }

  std::vector<Segment> segs_;
  size_t i_ = 0;
  int depth_ = 0;
  std::unique_ptr<ExprParser> cur_;
};

// --- Evaluation -----------------------------------------------------------------

Value Undef(const std::string& what) { return Value::Undefined(what); }

// A helper to read positional-or-keyword arguments of filters and methods.
struct Args {
  CallArgs& a;
  const Value* Get(size_t pos, const char* kw) const {
    if (pos < a.positional.size()) return &a.positional[pos];
    for (const auto& [k, v] : a.keyword) {
      if (k == kw) return &v;
    }
    return nullptr;
  }
};

StatusOr<int64_t> ToIndex(const Value& v, const char* what) {
  if (v.kind() == Value::Kind::kInt || v.kind() == Value::Kind::kBool) return v.as_int();
  return InvalidArgument(std::string(what) + " must be an integer, not " + v.TypeName());
}

class Renderer {
 public:
  explicit Renderer(const std::map<std::string, Value>& globals) {
    scopes_.emplace_back(globals.begin(), globals.end());
    scopes_.emplace_back();
  }
  // A template can make a namespace hold itself (`{% set ns.x = (ns, 1) %}`):
  // Python's collector frees such a cycle, shared_ptr cannot. Every namespace
  // this render assigned into is emptied here, which breaks any cycle.
  ~Renderer() {
    for (const Value& ns : mutated_) ns.mutable_dict().clear();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  Status Render(const NodeList& nodes, std::string* out) {
    out_ = out;
    Flow flow = Flow::kNormal;
    return RenderNodes(nodes, &flow);
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    if (name == "range" || name == "namespace" || name == "dict") return Builtin(name);
    return Undef("'" + name + "' is undefined");
  }

  Value Builtin(const std::string& name) const {
    if (name == "range") {
      return Value::Callable("range", [](CallArgs& a) -> StatusOr<Value> {
        if (a.positional.empty() || a.positional.size() > 3 || !a.keyword.empty()) {
          return InvalidArgument("range() takes 1 to 3 integer arguments");
        }
        int64_t v[3] = {0, 0, 1};
        for (size_t i = 0; i < a.positional.size(); ++i) {
          SEER_ASSIGN_OR_RETURN(v[i], ToIndex(a.positional[i], "range() argument"));
        }
        int64_t start = 0, stop = v[0], step = 1;
        if (a.positional.size() >= 2) start = v[0], stop = v[1];
        if (a.positional.size() == 3) step = v[2];
        if (step == 0) return InvalidArgument("range() arg 3 must not be zero");
        List out;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
          if (static_cast<int64_t>(out.size()) >= kMaxRange) {
            return ResourceExhausted("range() is limited to " + std::to_string(kMaxRange) + " items");
          }
          out.push_back(Value::Int(i));
        }
        std::string repr = "range(" + std::to_string(start) + ", " + std::to_string(stop) +
                           (step != 1 ? ", " + std::to_string(step) : std::string()) + ")";
        return Value::Range(std::move(out), std::move(repr));
      });
    }
    if (name == "namespace" || name == "dict") {
      const bool ns = name == "namespace";
      return Value::Callable(name, [ns](CallArgs& a) -> StatusOr<Value> {
        Dict d;
        for (const Value& p : a.positional) {
          if (!p.is_dict()) return InvalidArgument("namespace()/dict() positional arguments must be dicts");
          d.insert(d.end(), p.as_dict().begin(), p.as_dict().end());
        }
        for (auto& [k, v] : a.keyword) d.emplace_back(Value::String(k), v);
        return ns ? Value::Namespace(std::move(d)) : Value::MakeDict(std::move(d));
      });
    }
    return Value();
  }

  Status Append(const std::string& s) {
    if (out_->size() + s.size() > kMaxOutputBytes) {
      return ResourceExhausted("chat template output is larger than " + std::to_string(kMaxOutputBytes >> 20) + " MiB");
    }
    out_->append(s);
    return OkStatus();
  }

  Status RenderNodes(const NodeList& nodes, Flow* flow) {
    for (const auto& n : nodes) {
      SEER_RETURN_IF_ERROR(RenderNode(*n, flow));
      if (*flow != Flow::kNormal) return OkStatus();
    }
    return OkStatus();
  }

  Status Assign(const Node& n, const Value& v) {
    if (!n.attr.empty()) {
      Value target = Lookup(n.targets[0]);
      if (target.kind() != Value::Kind::kNamespace) {
        return Error(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
      }
      if (mutated_ids_.insert(target.identity()).second) mutated_.push_back(target);
      Dict& d = target.mutable_dict();
      for (auto& [k, val] : d) {
        if (k.is_string() && k.as_string() == n.attr) {
          val = v;
          return OkStatus();
        }
      }
      d.emplace_back(Value::String(n.attr), v);
      return OkStatus();
    }
    if (n.targets.size() == 1) {
      scopes_.back()[n.targets[0]] = v;
      return OkStatus();
    }
    SEER_RETURN_IF_ERROR(Unpack(n.targets, v, n.line));
    return OkStatus();
  }

  Status Unpack(const std::vector<std::string>& targets, const Value& v, int line) {
    List items;
    if (v.is_sequence()) {
      items = v.as_list();
    } else if (v.is_string()) {
      for (char32_t c : U32(v.as_string())) items.push_back(Value::String(U8(std::u32string(1, c))));
    } else {
      return Error(line, "cannot unpack " + v.TypeName() + " into " + std::to_string(targets.size()) + " names");
    }
    if (items.size() != targets.size()) {
      return Error(line, "expected " + std::to_string(targets.size()) + " values to unpack, got " +
                             std::to_string(items.size()));
    }
    for (size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = items[i];
    return OkStatus();
  }

  StatusOr<List> Iterate(const Value& v, int line) {
    switch (v.kind()) {
      case Value::Kind::kUndefined: return List{};
      case Value::Kind::kList:
      case Value::Kind::kTuple: return v.as_list();
      case Value::Kind::kDict: {
        List keys;
        for (const auto& kv : v.as_dict()) keys.push_back(kv.first);
        return keys;
      }
      case Value::Kind::kString: {
        List chars;
        for (char32_t c : U32(v.as_string())) chars.push_back(Value::String(U8(std::u32string(1, c))));
        return chars;
      }
      default: return Error(line, "'" + v.TypeName() + "' object is not iterable");
    }
  }

  Status RenderNode(const Node& n, Flow* flow) {
    switch (n.kind) {
      case Node::kText: return Append(n.text);
      case Node::kOutput: {
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        return Append(v.Str());
      }
      case Node::kIf: {
        for (const auto& [cond, body] : n.branches) {
          SEER_ASSIGN_OR_RETURN(Value c, Eval(*cond));
          if (c.Truthy()) return RenderNodes(body, flow);
        }
        return RenderNodes(n.else_body, flow);
      }
      case Node::kFor: return RenderFor(n);
      case Node::kSet: {
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        return Assign(n, v);
      }
      case Node::kSetBlock: {
        std::string* saved = out_;
        std::string captured;
        out_ = &captured;
        Flow inner = Flow::kNormal;
        Status s = RenderNodes(n.body, &inner);
        out_ = saved;
        SEER_RETURN_IF_ERROR(s);
        scopes_.back()[n.targets[0]] = Value::String(std::move(captured));
        return OkStatus();
      }
      case Node::kMacro: scopes_.back()[n.text] = MakeMacro(n); return OkStatus();
      case Node::kBreak:
      case Node::kContinue:
        if (loop_depth_ == 0) return Error(n.line, "{% break %} / {% continue %} outside a loop");
        *flow = n.kind == Node::kBreak ? Flow::kBreak : Flow::kContinue;
        return OkStatus();
      case Node::kGeneration: return RenderNodes(n.body, flow);
    }
    return OkStatus();
  }

  Value MakeMacro(const Node& n) {
    return Value::Callable(n.text, [this, &n](CallArgs& a) -> StatusOr<Value> {
      if (++depth_ > kMaxDepth) {
        --depth_;
        return ResourceExhausted("macro calls nest deeper than " + std::to_string(kMaxDepth));
      }
      std::unordered_map<std::string, Value> frame;
      if (a.positional.size() > n.params.size()) {
        --depth_;
        return Error(n.line, "macro '" + n.text + "' takes " + std::to_string(n.params.size()) + " arguments");
      }
      for (size_t i = 0; i < n.params.size(); ++i) {
        const auto& [name, dflt] = n.params[i];
        Value v;
        bool set = false;
        if (i < a.positional.size()) {
          v = a.positional[i], set = true;
        }
        for (auto& [k, kv] : a.keyword) {
          if (k == name) v = kv, set = true;
        }
        if (!set && dflt) {
          auto d = Eval(*dflt);
          if (!d.ok()) {
            --depth_;
            return d.status();
          }
          v = *d;
        } else if (!set) {
          v = Undef("'" + name + "' is undefined");
        }
        frame[name] = v;
      }
      std::string* saved = out_;
      std::string captured;
      out_ = &captured;
      scopes_.push_back(std::move(frame));
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;
      Flow flow = Flow::kNormal;
      Status s = RenderNodes(n.body, &flow);
      loop_depth_ = saved_loops;
      scopes_.pop_back();
      out_ = saved;
      --depth_;
      SEER_RETURN_IF_ERROR(s);
      return Value::String(std::move(captured));
    });
  }

  Status RenderFor(const Node& n) {
    SEER_ASSIGN_OR_RETURN(Value iterable, Eval(*n.expr));
    SEER_ASSIGN_OR_RETURN(List all, Iterate(iterable, n.line));
    List items;
    if (n.filter) {
      for (const Value& item : all) {
        scopes_.emplace_back();
        Status s =
            n.targets.size() == 1 ? (scopes_.back()[n.targets[0]] = item, OkStatus()) : Unpack(n.targets, item, n.line);
        StatusOr<Value> keep = s.ok() ? Eval(*n.filter) : StatusOr<Value>(s);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (keep->Truthy()) items.push_back(item);
      }
    } else {
      items = std::move(all);
    }
    if (items.empty()) {
      Flow flow = Flow::kNormal;
      return RenderNodes(n.else_body, &flow);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    ++loop_depth_;
    for (int64_t i = 0; i < len; ++i) {
      Dict loop = {
          {Value::String("index"), Value::Int(i + 1)},      {Value::String("index0"), Value::Int(i)},
          {Value::String("revindex"), Value::Int(len - i)}, {Value::String("revindex0"), Value::Int(len - i - 1)},
          {Value::String("first"), Value::Bool(i == 0)},    {Value::String("last"), Value::Bool(i == len - 1)},
          {Value::String("length"), Value::Int(len)},       {Value::String("depth"), Value::Int(1)},
          {Value::String("depth0"), Value::Int(0)},
      };
      if (i > 0) loop.emplace_back(Value::String("previtem"), items[i - 1]);
      if (i + 1 < len) loop.emplace_back(Value::String("nextitem"), items[i + 1]);
      loop.emplace_back(Value::String("cycle"), Value::Callable("cycle", [i](CallArgs& a) -> StatusOr<Value> {
                          if (a.positional.empty()) return InvalidArgument("loop.cycle() needs arguments");
                          return a.positional[i % a.positional.size()];
                        }));
      scopes_.emplace_back();
      scopes_.back()["loop"] = Value::Namespace(std::move(loop));
      Status s = n.targets.size() == 1 ? (scopes_.back()[n.targets[0]] = items[i], OkStatus())
                                       : Unpack(n.targets, items[i], n.line);
      Flow flow = Flow::kNormal;
      if (s.ok()) s = RenderNodes(n.body, &flow);
      scopes_.pop_back();
      if (!s.ok()) {
        --loop_depth_;
        return s;
      }
      if (flow == Flow::kBreak) break;
    }
    --loop_depth_;
    return OkStatus();
  }

  // Jinja's getattr: attribute first (methods), then item.
  StatusOr<Value> GetAttr(const Value& obj, const std::string& name, int line) {
    switch (obj.kind()) {
      case Value::Kind::kUndefined:
        return Error(line, obj.name().empty() ? "undefined value has no attribute '" + name + "'" : obj.name());
      case Value::Kind::kDict: {
        Value m = Method(obj, name);
        if (!m.is_undefined()) return m;
        return GetItem(obj, Value::String(name), line, false);
      }
      case Value::Kind::kNamespace:
        for (const auto& [k, v] : obj.as_dict()) {
          if (k.is_string() && k.as_string() == name) return v;
        }
        return Undef("'" + obj.TypeName() + " object' has no attribute '" + name + "'");
      default: {
        Value m = Method(obj, name);
        if (!m.is_undefined()) return m;
        return Undef("'" + obj.TypeName() + " object' has no attribute '" + name + "'");
      }
    }
  }

  // Jinja's getitem: item first, then attribute for string keys.
  StatusOr<Value> GetItem(const Value& obj, const Value& key, int line, bool attr_fallback = true) {
    switch (obj.kind()) {
      case Value::Kind::kUndefined:
        return Error(line, obj.name().empty() ? "undefined value is not subscriptable" : obj.name());
      case Value::Kind::kDict:
        for (const auto& [k, v] : obj.as_dict()) {
          if (Equal(k, key)) return v;
        }
        break;
      case Value::Kind::kList:
      case Value::Kind::kTuple:
      case Value::Kind::kString:
        if (key.kind() == Value::Kind::kInt || key.kind() == Value::Kind::kBool) {
          int64_t i = key.as_int();
          if (obj.is_string()) {
            std::u32string u = U32(obj.as_string());
            if (i < 0) i += static_cast<int64_t>(u.size());
            if (i >= 0 && i < static_cast<int64_t>(u.size())) return Value::String(U8(u.substr(i, 1)));
          } else {
            const int64_t n = static_cast<int64_t>(obj.as_list().size());
            if (i < 0) i += n;
            if (i >= 0 && i < n) return obj.as_list()[i];
          }
          return Undef(obj.TypeName() + " object has no element " + std::to_string(key.as_int()));
        }
        break;
      default: break;
    }
    if (attr_fallback && key.is_string()) return GetAttr(obj, key.as_string(), line);
    return Undef("'" + obj.TypeName() + " object' has no attribute " + key.Repr());
  }

  StatusOr<Value> Eval(const Expr& e);
  StatusOr<Value> CallValue(const Value& callee, CallArgs& args, int line);
  StatusOr<CallArgs> EvalArgs(const Expr& e, size_t first_arg);
  StatusOr<Value> Filter(const std::string& name, const Value& v, CallArgs& a, int line);
  StatusOr<bool> Test(const std::string& name, const Value& v, CallArgs& a, int line);
  Value Method(const Value& obj, const std::string& name);
  StatusOr<Value> Arith(const std::string& op, const Value& a, const Value& b, int line);
  StatusOr<int> Compare(const Value& a, const Value& b, int line);

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  std::string* out_ = nullptr;
  int depth_ = 0;
  int loop_depth_ = 0;
  std::vector<Value> mutated_;  // namespaces assigned into, emptied at the end
  std::unordered_set<const void*> mutated_ids_;
};

StatusOr<CallArgs> Renderer::EvalArgs(const Expr& e, size_t first_arg) {
  CallArgs a;
  for (size_t i = first_arg; i < e.args.size(); ++i) {
    SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i]));
    a.positional.push_back(std::move(v));
  }
  for (const auto& [k, x] : e.kwargs) {
    SEER_ASSIGN_OR_RETURN(Value v, Eval(*x));
    a.keyword.emplace_back(k, std::move(v));
  }
  return a;
}

StatusOr<Value> Renderer::CallValue(const Value& callee, CallArgs& args, int line) {
  if (callee.kind() != Value::Kind::kCallable) {
    if (callee.is_undefined()) return Error(line, callee.name().empty() ? "undefined is not callable" : callee.name());
    return Error(line, "'" + callee.TypeName() + "' object is not callable");
  }
  StatusOr<Value> r = callee.as_function()(args);
  if (!r.ok() && r.status().message().rfind("chat template", 0) != 0 &&
      r.status().code() == StatusCode::kInvalidArgument) {
    return Error(line, callee.name() + "(): " + r.status().message());
  }
  return r;
}

StatusOr<int> Renderer::Compare(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) {
    const double x = a.as_float(), y = b.as_float();
    if (a.kind() != Value::Kind::kFloat && b.kind() != Value::Kind::kFloat) {
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    }
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string() ? -1 : a.as_string() > b.as_string() ? 1 : 0;
  if (a.is_sequence() && b.is_sequence()) {
    const List &x = a.as_list(), &y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equal(x[i], y[i])) continue;
      return Compare(x[i], y[i], line);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  return Error(line, "'<' not supported between instances of '" + a.TypeName() + "' and '" + b.TypeName() + "'");
}

StatusOr<Value> Renderer::Arith(const std::string& op, const Value& a, const Value& b, int line) {
  const auto type_error = [&]() {
    return Error(line, "unsupported operand type(s) for " + op + ": '" + a.TypeName() + "' and '" + b.TypeName() + "'");
  };
  if (a.is_undefined() || b.is_undefined()) {
    const Value& u = a.is_undefined() ? a : b;
    return Error(line, u.name().empty() ? "undefined value in arithmetic" : u.name());
  }
  if (a.is_number() && b.is_number()) {
    const bool ints = a.kind() != Value::Kind::kFloat && b.kind() != Value::Kind::kFloat;
    const int64_t x = a.as_int(), y = b.as_int();
    const double fx = a.as_float(), fy = b.as_float();
    int64_t r;
    if (op == "+") {
      if (!ints) return Value::Float(fx + fy);
      if (__builtin_add_overflow(x, y, &r)) return Error(line, "integer overflow");
      return Value::Int(r);
    }
    if (op == "-") {
      if (!ints) return Value::Float(fx - fy);
      if (__builtin_sub_overflow(x, y, &r)) return Error(line, "integer overflow");
      return Value::Int(r);
    }
    if (op == "*") {
      if (!ints) return Value::Float(fx * fy);
      if (__builtin_mul_overflow(x, y, &r)) return Error(line, "integer overflow");
      return Value::Int(r);
    }
    if (op == "/") {
      if (fy == 0) return Error(line, "division by zero");
      return Value::Float(fx / fy);
    }
    if (op == "//" || op == "%") {
      if (fy == 0) return Error(line, op == "%" ? "modulo by zero" : "integer division by zero");
      if (ints) {
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) --q, m += y;
        return Value::Int(op == "//" ? q : m);
      }
      const double q = std::floor(fx / fy);
      double m = std::fmod(fx, fy);
      if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
      return Value::Float(op == "//" ? q : m);
    }
    if (op == "**") {
      if (ints && y >= 0) {
        int64_t acc = 1;
        for (int64_t k = 0; k < y; ++k) {
          if (__builtin_mul_overflow(acc, x, &acc)) return Error(line, "integer overflow");
          if (acc == 0 || acc == 1) break;
        }
        return Value::Int(acc);
      }
      return Value::Float(std::pow(fx, fy));
    }
    return type_error();
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > kMaxOutputBytes) return ResourceExhausted("string too long");
      return Value::String(a.as_string() + b.as_string());
    }
    if (a.kind() == b.kind() && a.is_sequence()) {
      List l = a.as_list();
      l.insert(l.end(), b.as_list().begin(), b.as_list().end());
      return Value::MakeList(std::move(l), a.kind() == Value::Kind::kTuple);
    }
  }
  if (op == "*") {
    const Value& seq = a.is_number() ? b : a;
    const Value& n = a.is_number() ? a : b;
    if (n.kind() == Value::Kind::kInt || n.kind() == Value::Kind::kBool) {
      const int64_t times = std::max<int64_t>(0, n.as_int());
      if (seq.is_string()) {
        if (seq.as_string().size() * static_cast<uint64_t>(times) > kMaxOutputBytes) {
          return ResourceExhausted("string repetition too long");
        }
        std::string s;
        for (int64_t k = 0; k < times; ++k) s += seq.as_string();
        return Value::String(std::move(s));
      }
      if (seq.is_sequence()) {
        if (seq.as_list().size() * static_cast<uint64_t>(times) > 1000000) return ResourceExhausted("list too long");
        List l;
        for (int64_t k = 0; k < times; ++k) l.insert(l.end(), seq.as_list().begin(), seq.as_list().end());
        return Value::MakeList(std::move(l), seq.kind() == Value::Kind::kTuple);
      }
    }
  }
  if (op == "%" && a.is_string()) {
    CallArgs args;
    if (b.kind() == Value::Kind::kTuple) {
      args.positional = b.as_list();
    } else {
      args.positional.push_back(b);
    }
    return Filter("format", a, args, line);
  }
  return type_error();
}

StatusOr<Value> Renderer::Eval(const Expr& e) {
  switch (e.kind) {
    case Expr::kLiteral: return e.literal;
    case Expr::kName: return Lookup(e.name);
    case Expr::kAttr: {
      SEER_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      return GetAttr(obj, e.name, e.line);
    }
    case Expr::kItem: {
      SEER_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      SEER_ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
      return GetItem(obj, key, e.line);
    }
    case Expr::kSlice: {
      SEER_ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      std::optional<int64_t> part[3];
      for (int k = 0; k < 3; ++k) {
        if (!e.args[k + 1]) continue;
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[k + 1]));
        if (v.is_none()) continue;
        SEER_ASSIGN_OR_RETURN(part[k], ToIndex(v, "slice indices"));
      }
      const int64_t step = part[2].value_or(1);
      if (step == 0) return Error(e.line, "slice step cannot be zero");
      if (obj.is_undefined())
        return Error(e.line, obj.name().empty() ? "undefined value is not subscriptable" : obj.name());
      std::u32string u;
      int64_t n;
      if (obj.is_string()) {
        u = U32(obj.as_string());
        n = static_cast<int64_t>(u.size());
      } else if (obj.is_sequence()) {
        n = static_cast<int64_t>(obj.as_list().size());
      } else {
        return Error(e.line, "'" + obj.TypeName() + "' object is not subscriptable");
      }
      // Python's slice.indices().
      auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
        if (!v) return dflt;
        int64_t x = *v;
        if (x < 0) x += n;
        if (step > 0) return std::clamp<int64_t>(x, 0, n);
        return std::clamp<int64_t>(x, -1, n - 1);
      };
      const int64_t start = clamp(part[0], step > 0 ? 0 : n - 1), stop = clamp(part[1], step > 0 ? n : -1);
      std::u32string s;
      List l;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (obj.is_string()) {
          s.push_back(u[i]);
        } else {
          l.push_back(obj.as_list()[i]);
        }
      }
      if (obj.is_string()) return Value::String(U8(s));
      return Value::MakeList(std::move(l), obj.kind() == Value::Kind::kTuple);
    }
    case Expr::kCall: {
      SEER_ASSIGN_OR_RETURN(Value callee, Eval(*e.args[0]));
      SEER_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
      return CallValue(callee, args, e.line);
    }
    case Expr::kFilter: {
      SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      SEER_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
      return Filter(e.name, v, args, e.line);
    }
    case Expr::kTest: {
      SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      SEER_ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
      SEER_ASSIGN_OR_RETURN(bool r, Test(e.name, v, args, e.line));
      return Value::Bool(r != e.negated);
    }
    case Expr::kNeg:
    case Expr::kPos: {
      SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      if (!v.is_number()) return Error(e.line, "bad operand type for unary -: '" + v.TypeName() + "'");
      if (e.kind == Expr::kPos) return v.kind() == Value::Kind::kFloat ? v : Value::Int(v.as_int());
      return v.kind() == Value::Kind::kFloat ? Value::Float(-v.as_float()) : Value::Int(-v.as_int());
    }
    case Expr::kBinary: {
      SEER_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
      SEER_ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
      return Arith(e.name, a, b, e.line);
    }
    case Expr::kConcat: {
      std::string s;
      for (const auto& x : e.args) {
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*x));
        s += v.Str();
      }
      return Value::String(std::move(s));
    }
    case Expr::kCompare: {
      SEER_ASSIGN_OR_RETURN(Value left, Eval(*e.args[0]));
      for (size_t i = 0; i < e.ops.size(); ++i) {
        SEER_ASSIGN_OR_RETURN(Value right, Eval(*e.args[i + 1]));
        const std::string& op = e.ops[i];
        bool r;
        if (op == "==") {
          r = Equal(left, right);
        } else if (op == "!=") {
          r = !Equal(left, right);
        } else if (op == "in" || op == "not in") {
          CallArgs a;
          a.positional.push_back(right);
          SEER_ASSIGN_OR_RETURN(r, Test("in", left, a, e.line));
          if (op == "not in") r = !r;
        } else {
          SEER_ASSIGN_OR_RETURN(int c, Compare(left, right, e.line));
          r = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
        }
        if (!r) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case Expr::kAnd: {
      SEER_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
      if (!a.Truthy()) return a;
      return Eval(*e.args[1]);
    }
    case Expr::kOr: {
      SEER_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
      if (a.Truthy()) return a;
      return Eval(*e.args[1]);
    }
    case Expr::kNot: {
      SEER_ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
      return Value::Bool(!a.Truthy());
    }
    case Expr::kCond: {
      SEER_ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
      if (c.Truthy()) return Eval(*e.args[1]);
      if (e.args.size() > 2) return Eval(*e.args[2]);
      return Undef("the inline if-expression evaluated to false and no else section was defined");
    }
    case Expr::kList:
    case Expr::kTuple: {
      List l;
      for (const auto& x : e.args) {
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*x));
        l.push_back(std::move(v));
      }
      return Value::MakeList(std::move(l), e.kind == Expr::kTuple);
    }
    case Expr::kDict: {
      Dict d;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        SEER_ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
        SEER_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
        bool replaced = false;
        for (auto& [k2, v2] : d) {
          if (Equal(k2, k)) {
            v2 = v;
            replaced = true;
          }
        }
        if (!replaced) d.emplace_back(std::move(k), std::move(v));
      }
      return Value::MakeDict(std::move(d));
    }
  }
  return Value();
}

// --- Methods of str, dict and list -----------------------------------------------------

Value Renderer::Method(const Value& obj, const std::string& name) {
  auto bind = [&](auto fn) {
    return Value::Callable(name, [obj, fn](CallArgs& a) -> StatusOr<Value> { return fn(obj, Args{a}); });
  };
  if (obj.is_string()) {
    static const std::set<std::string> kStr = {"strip",      "lstrip",     "rstrip",       "split",        "rsplit",
                                               "startswith", "endswith",   "replace",      "upper",        "lower",
                                               "title",      "capitalize", "find",         "rfind",        "count",
                                               "join",       "isdigit",    "isalpha",      "isspace",      "isupper",
                                               "islower",    "splitlines", "removeprefix", "removesuffix", "format"};
    if (!kStr.count(name)) return Value();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return bind([name](const Value& s, Args a) -> StatusOr<Value> {
        return Value::String(PyStrip(s.as_string(), a.Get(0, "chars"), name != "rstrip", name != "lstrip"));
      });
    }
    if (name == "split" || name == "rsplit") {
      return bind([name](const Value& s, Args a) -> StatusOr<Value> {
        const Value* sep = a.Get(0, "sep");
        const Value* maxv = a.Get(1, "maxsplit");
        int64_t maxsplit = maxv ? maxv->as_int() : -1;
        List out;
        const std::string& str = s.as_string();
        if (sep == nullptr || sep->is_none()) {
          std::u32string u = U32(str);
          std::vector<std::pair<size_t, size_t>> words;
          size_t i = 0;
          while (i < u.size()) {
            while (i < u.size() && PyIsSpace(u[i])) ++i;
            if (i >= u.size()) break;
            size_t j = i;
            while (j < u.size() && !PyIsSpace(u[j])) ++j;
            words.push_back({i, j});
            i = j;
          }
          if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit) {
            // The unsplit remainder keeps its outer whitespace, as in Python.
            if (name == "split") {
              const size_t rest = words[maxsplit].first;
              words.resize(maxsplit);
              words.push_back({rest, u.size()});
            } else {
              const size_t keep_from = words.size() - maxsplit;
              std::vector<std::pair<size_t, size_t>> w = {{0, words[keep_from - 1].second}};
              w.insert(w.end(), words.begin() + keep_from, words.end());
              words = w;
            }
          }
          for (auto [b, e] : words) out.push_back(Value::String(U8(std::u32string_view(u).substr(b, e - b))));
          return Value::MakeList(std::move(out));
        }
        if (!sep->is_string() || sep->as_string().empty()) return InvalidArgument("empty separator");
        const std::string& d = sep->as_string();
        std::vector<std::string> parts;
        size_t start = 0, at;
        while ((at = str.find(d, start)) != std::string::npos) {
          parts.push_back(str.substr(start, at - start));
          start = at + d.size();
        }
        parts.push_back(str.substr(start));
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) > maxsplit + 1) {
          std::vector<std::string> merged;
          if (name == "split") {
            merged.assign(parts.begin(), parts.begin() + maxsplit);
            std::string rest;
            for (size_t k = maxsplit; k < parts.size(); ++k) rest += (k > size_t(maxsplit) ? d : "") + parts[k];
            merged.push_back(rest);
          } else {
            const size_t keep_from = parts.size() - maxsplit;
            std::string head;
            for (size_t k = 0; k < keep_from; ++k) head += (k ? d : "") + parts[k];
            merged.push_back(head);
            merged.insert(merged.end(), parts.begin() + keep_from, parts.end());
          }
          parts = merged;
        }
        for (auto& p : parts) out.push_back(Value::String(p));
        return Value::MakeList(std::move(out));
      });
    }
    if (name == "startswith" || name == "endswith") {
      return bind([name](const Value& s, Args a) -> StatusOr<Value> {
        const Value* p = a.Get(0, "prefix");
        if (p == nullptr) return InvalidArgument(name + "() takes at least 1 argument");
        List options = p->is_sequence() ? p->as_list() : List{*p};
        for (const Value& o : options) {
          if (!o.is_string()) return InvalidArgument(name + "() arguments must be str or a tuple of str");
          const std::string &str = s.as_string(), &x = o.as_string();
          const bool hit = name == "startswith"
                               ? str.compare(0, x.size(), x) == 0
                               : str.size() >= x.size() && str.compare(str.size() - x.size(), x.size(), x) == 0;
          if (hit) return Value::Bool(true);
        }
        return Value::Bool(false);
      });
    }
    if (name == "replace") {
      return bind([](const Value& s, Args a) -> StatusOr<Value> {
        const Value *o = a.Get(0, "old"), *n = a.Get(1, "new"), *c = a.Get(2, "count");
        if (!o || !n) return InvalidArgument("replace() takes 2 or 3 arguments");
        int64_t count = c ? c->as_int() : -1;
        const std::string old = o->Str(), neu = n->Str(), &str = s.as_string();
        std::string out;
        size_t start = 0;
        if (old.empty()) {
          std::u32string u = U32(str);
          for (size_t k = 0; k <= u.size(); ++k) {
            if (count < 0 || static_cast<int64_t>(k) < count) out += neu;
            if (k < u.size()) unicode::AppendUtf8(u[k], &out);
          }
          return Value::String(out);
        }
        size_t at;
        while (count != 0 && (at = str.find(old, start)) != std::string::npos) {
          out += str.substr(start, at - start) + neu;
          start = at + old.size();
          if (count > 0) --count;
        }
        return Value::String(out + str.substr(start));
      });
    }
    if (name == "upper")
      return bind([](const Value& s, Args) -> StatusOr<Value> { return Value::String(PyUpper(s.as_string())); });
    if (name == "lower")
      return bind([](const Value& s, Args) -> StatusOr<Value> { return Value::String(PyLower(s.as_string())); });
    if (name == "title")
      return bind([](const Value& s, Args) -> StatusOr<Value> { return Value::String(PyTitle(s.as_string())); });
    if (name == "capitalize") {
      return bind([](const Value& s, Args) -> StatusOr<Value> { return Value::String(PyCapitalize(s.as_string())); });
    }
    if (name == "find" || name == "rfind" || name == "count") {
      return bind([name](const Value& s, Args a) -> StatusOr<Value> {
        const Value* x = a.Get(0, "sub");
        if (!x || !x->is_string()) return InvalidArgument(name + "() needs a string");
        std::u32string u = U32(s.as_string()), sub = U32(x->as_string());
        if (name == "count") {
          if (sub.empty()) return Value::Int(static_cast<int64_t>(u.size()) + 1);
          int64_t n = 0;
          for (size_t at = 0; (at = u.find(sub, at)) != std::u32string::npos; at += sub.size()) ++n;
          return Value::Int(n);
        }
        const size_t at = name == "find" ? u.find(sub) : u.rfind(sub);
        return Value::Int(at == std::u32string::npos ? -1 : static_cast<int64_t>(at));
      });
    }
    if (name == "join") {
      return bind([](const Value& s, Args a) -> StatusOr<Value> {
        const Value* it = a.Get(0, "iterable");
        if (!it || !(it->is_sequence() || it->is_string())) return InvalidArgument("join() needs an iterable");
        std::string out;
        if (it->is_string()) {
          std::u32string u = U32(it->as_string());
          for (size_t k = 0; k < u.size(); ++k) out += (k ? s.as_string() : "") + U8(u.substr(k, 1));
          return Value::String(out);
        }
        for (size_t k = 0; k < it->as_list().size(); ++k) {
          if (!it->as_list()[k].is_string())
            return InvalidArgument("sequence item " + std::to_string(k) + ": expected str");
          out += (k ? s.as_string() : "") + it->as_list()[k].as_string();
        }
        return Value::String(out);
      });
    }
    if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isupper" || name == "islower") {
      return bind([name](const Value& s, Args) -> StatusOr<Value> {
        std::u32string u = U32(s.as_string());
        if (u.empty()) return Value::Bool(false);
        using G = unicode::GeneralCategory;
        bool cased = false;
        for (char32_t c : u) {
          const G g = unicode::CategoryOf(c);
          if (name == "isdigit" && !(g == G::kNd || (c >= 0xB2 && c <= 0xB9 && c != 0xB4 && c != 0xB5 && c != 0xB6 &&
                                                     c != 0xB7 && c != 0xB8)))
            return Value::Bool(false);
          if (name == "isalpha" && !unicode::InMask(c, unicode::kLetter)) return Value::Bool(false);
          if (name == "isspace" && !PyIsSpace(c)) return Value::Bool(false);
          if (name == "isupper" || name == "islower") {
            if (g == G::kLu || g == G::kLt) {
              if (name == "islower") return Value::Bool(false);
              cased = true;
            } else if (g == G::kLl) {
              if (name == "isupper") return Value::Bool(false);
              cased = true;
            }
          }
        }
        return Value::Bool(name == "isupper" || name == "islower" ? cased : true);
      });
    }
    if (name == "splitlines") {
      return bind([](const Value& s, Args a) -> StatusOr<Value> {
        const Value* keep = a.Get(0, "keepends");
        const bool keepends = keep && keep->Truthy();
        std::u32string u = U32(s.as_string());
        List out;
        size_t start = 0;
        for (size_t i = 0; i < u.size(); ++i) {
          const char32_t c = u[i];
          const bool br = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
                          c == 0x85 || c == 0x2028 || c == 0x2029;
          if (!br) continue;
          size_t end = i;
          if (c == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ++i;
          out.push_back(Value::String(U8(u.substr(start, (keepends ? i + 1 : end) - start))));
          start = i + 1;
        }
        if (start < u.size()) out.push_back(Value::String(U8(u.substr(start))));
        return Value::MakeList(std::move(out));
      });
    }
    if (name == "removeprefix" || name == "removesuffix") {
      return bind([name](const Value& s, Args a) -> StatusOr<Value> {
        const Value* x = a.Get(0, "affix");
        if (!x || !x->is_string()) return InvalidArgument(name + "() needs a string");
        const std::string &str = s.as_string(), &p = x->as_string();
        if (name == "removeprefix" && str.compare(0, p.size(), p) == 0) return Value::String(str.substr(p.size()));
        if (name == "removesuffix" && str.size() >= p.size() && str.compare(str.size() - p.size(), p.size(), p) == 0) {
          return Value::String(str.substr(0, str.size() - p.size()));
        }
        return s;
      });
    }
    return Value();
  }
  if (obj.is_dict()) {
    if (name == "items" || name == "keys" || name == "values") {
      return bind([name](const Value& d, Args) -> StatusOr<Value> {
        List out;
        for (const auto& [k, v] : d.as_dict()) {
          if (name == "items") {
            out.push_back(Value::MakeList({k, v}, true));
          } else {
            out.push_back(name == "keys" ? k : v);
          }
        }
        return Value::MakeList(std::move(out));
      });
    }
    if (name == "get") {
      return bind([](const Value& d, Args a) -> StatusOr<Value> {
        const Value* k = a.Get(0, "key");
        if (!k) return InvalidArgument("get() takes 1 or 2 arguments");
        for (const auto& [key, v] : d.as_dict()) {
          if (Equal(key, *k)) return v;
        }
        const Value* dflt = a.Get(1, "default");
        return dflt ? *dflt : Value::None();
      });
    }
    return Value();
  }
  if (obj.is_sequence() && (name == "count" || name == "index")) {
    return bind([name](const Value& l, Args a) -> StatusOr<Value> {
      const Value* x = a.Get(0, "value");
      if (!x) return InvalidArgument(name + "() takes 1 argument");
      int64_t n = 0;
      for (size_t i = 0; i < l.as_list().size(); ++i) {
        if (Equal(l.as_list()[i], *x)) {
          if (name == "index") return Value::Int(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (name == "index") return InvalidArgument(x->Repr() + " is not in list");
      return Value::Int(n);
    });
  }
  return Value();
}

// --- Filters and tests -------------------------------------------------------------------

StatusOr<Value> Renderer::Filter(const std::string& name, const Value& v, CallArgs& ca, int line) {
  Args a{ca};
  auto err = [&](const std::string& what) { return Error(line, "filter " + name + ": " + what); };
  auto need_iterable = [&](const Value& x) -> StatusOr<List> {
    if (x.is_undefined()) return List{};
    auto l = Iterate(x, line);
    if (!l.ok()) return err(x.TypeName() + " is not iterable");
    return l;
  };
  // Attribute paths for map/sort/...: "a.b" looks up a then b; integer parts index.
  auto attr_of = [&](const Value& item, const std::string& path) -> StatusOr<Value> {
    Value cur = item;
    size_t start = 0;
    while (true) {
      const size_t dot = path.find('.', start);
      const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      Value key = Value::String(part);
      if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) key = Value::Int(std::stoll(part));
      SEER_ASSIGN_OR_RETURN(cur, GetItem(cur, key, line));
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  };
  auto sort_key = [&](const Value& x, bool case_sensitive) {
    return x.is_string() && !case_sensitive ? Value::String(PyLower(x.as_string())) : x;
  };
  if (v.is_undefined() && name != "default" && name != "d" && name != "length" && name != "count" && name != "list" &&
      name != "items" && name != "string" && name != "trim" && name != "join" && name != "first" && name != "last" &&
      name != "tojson" && name != "upper" && name != "lower" && name != "title" && name != "capitalize" &&
      name != "select" && name != "reject" && name != "selectattr" && name != "rejectattr" && name != "map" &&
      name != "unique" && name != "sort" && name != "reverse" && name != "safe" && name != "e" && name != "escape" &&
      name != "wordcount" && name != "indent") {
    return Error(line, v.name().empty() ? "filter " + name + " on an undefined value" : v.name());
  }
  if (name == "default" || name == "d") {
    const Value* dflt = a.Get(0, "default_value");
    const Value* boolean = a.Get(1, "boolean");
    if (v.is_undefined() || (boolean && boolean->Truthy() && !v.Truthy())) return dflt ? *dflt : Value::String("");
    return v;
  }
  if (name == "length" || name == "count") {
    if (v.is_string()) return Value::Int(static_cast<int64_t>(U32(v.as_string()).size()));
    if (v.is_sequence()) return Value::Int(static_cast<int64_t>(v.as_list().size()));
    if (v.is_dict() || v.kind() == Value::Kind::kNamespace) return Value::Int(static_cast<int64_t>(v.as_dict().size()));
    if (v.is_undefined()) return Value::Int(0);
    return err("object of type '" + v.TypeName() + "' has no len()");
  }
  if (name == "string") return Value::String(v.Str());
  if (name == "safe") return v.is_undefined() ? Value::String("") : v;
  if (name == "e" || name == "escape") {
    std::string out;
    for (char c : v.Str()) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out.push_back(c);
      }
    }
    return Value::String(out);
  }
  if (name == "trim") return Value::String(PyStrip(v.Str(), a.Get(0, "chars"), true, true));
  if (name == "upper") return Value::String(PyUpper(v.Str()));
  if (name == "lower") return Value::String(PyLower(v.Str()));
  if (name == "capitalize") return Value::String(PyCapitalize(v.Str()));
  if (name == "title") {
    // Jinja splits on runs of [-\s({[<] and capitalises each piece.
    std::u32string u = U32(v.Str()), out;
    bool start = true;
    for (char32_t c : u) {
      const bool sep = c == '-' || PyIsSpace(c) || c == '(' || c == '{' || c == '[' || c == '<';
      if (sep) {
        out.push_back(c);
        start = true;
      } else {
        out.push_back(start ? unicode::ToUpper(c) : unicode::ToLower(c));
        start = false;
      }
    }
    return Value::String(U8(out));
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in = false;
    for (char32_t c : U32(v.Str())) {
      const bool w = unicode::InMask(c, unicode::kLetter | unicode::kMark | unicode::kNumber) || c == '_';
      if (w && !in) ++n;
      in = w;
    }
    return Value::Int(n);
  }
  if (name == "replace") {
    Value s = Value::String(v.Str());
    Value m = Method(s, "replace");
    return CallValue(m, ca, line);
  }
  if (name == "indent") {
    const Value* wv = a.Get(0, "width");
    const Value* firstv = a.Get(1, "first");
    const Value* blankv = a.Get(2, "blank");
    const std::string ind = wv && wv->is_string() ? wv->as_string() : std::string(wv ? wv->as_int() : 4, ' ');
    std::string s = v.Str() + "\n";
    std::vector<std::string> lines;
    size_t start = 0, at;
    while ((at = s.find('\n', start)) != std::string::npos) {
      lines.push_back(s.substr(start, at - start));
      start = at + 1;
    }
    std::string rv;
    if (blankv && blankv->Truthy()) {
      for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + ind : "") + lines[k];
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t k = 1; k < lines.size(); ++k) rv += "\n" + (lines[k].empty() ? "" : ind + lines[k]);
    }
    if (firstv && firstv->Truthy()) rv = ind + rv;
    return Value::String(rv);
  }
  if (name == "format") {
    // printf-style: %s %r %d %i %f %% with the positional arguments.
    const std::string fmt = v.Str();
    std::string out;
    size_t k = 0;
    for (size_t i = 0; i < fmt.size(); ++i) {
      if (fmt[i] != '%') {
        out.push_back(fmt[i]);
        continue;
      }
      if (++i >= fmt.size()) return err("incomplete format");
      const char c = fmt[i];
      if (c == '%') {
        out.push_back('%');
        continue;
      }
      if (k >= ca.positional.size()) return err("not enough arguments for format string");
      const Value& x = ca.positional[k++];
      if (c == 's') {
        out += x.Str();
      } else if (c == 'r') {
        out += x.Repr();
      } else if (c == 'd' || c == 'i') {
        if (!x.is_number()) return err("%d format: a number is required");
        out += std::to_string(x.kind() == Value::Kind::kFloat ? static_cast<int64_t>(x.as_float()) : x.as_int());
      } else if (c == 'f') {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%f", x.as_float());
        out += buf;
      } else {
        return err(std::string("unsupported format character '") + c + "'");
      }
    }
    return Value::String(out);
  }
  if (name == "int") {
    const Value* dflt = a.Get(0, "default");
    const Value fallback = dflt ? *dflt : Value::Int(0);
    if (v.kind() == Value::Kind::kInt || v.kind() == Value::Kind::kBool) return Value::Int(v.as_int());
    if (v.kind() == Value::Kind::kFloat) {
      if (!std::isfinite(v.as_float())) return fallback;
      return Value::Int(static_cast<int64_t>(v.as_float()));
    }
    if (v.is_string()) {
      const std::string s = PyStrip(v.as_string(), nullptr, true, true);
      int64_t i;
      auto r = std::from_chars(s.data() + (s.size() && s[0] == '+'), s.data() + s.size(), i);
      if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) return Value::Int(i);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d)) return Value::Int(static_cast<int64_t>(d));
    }
    return fallback;
  }
  if (name == "float") {
    const Value* dflt = a.Get(0, "default");
    if (v.is_number()) return Value::Float(v.as_float());
    if (v.is_string()) {
      const std::string s = PyStrip(v.as_string(), nullptr, true, true);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value::Float(d);
    }
    return dflt ? *dflt : Value::Float(0.0);
  }
  if (name == "abs") {
    if (!v.is_number()) return err("bad operand type for abs(): '" + v.TypeName() + "'");
    return v.kind() == Value::Kind::kFloat ? Value::Float(std::fabs(v.as_float())) : Value::Int(std::llabs(v.as_int()));
  }
  if (name == "round") {
    const Value* pv = a.Get(0, "precision");
    const Value* mv = a.Get(1, "method");
    const int64_t precision = pv ? pv->as_int() : 0;
    const std::string method = mv ? mv->Str() : "common";
    if (!v.is_number()) return err("a number is required");
    if (v.kind() != Value::Kind::kFloat && method == "common") return Value::Int(v.as_int());  // round(int) is an int
    const double x = v.as_float(), scale = std::pow(10.0, static_cast<double>(precision));
    if (method == "floor") return Value::Float(std::floor(x * scale) / scale);
    if (method == "ceil") return Value::Float(std::ceil(x * scale) / scale);
    if (method != "common") return err("method must be common, ceil or floor");
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::clamp<int64_t>(precision, 0, 300)), x);
    return Value::Float(std::strtod(buf, nullptr));
  }
  if (name == "tojson") {
    const Value* ascii = a.Get(0, "ensure_ascii");
    const Value* indent = a.Get(1, "indent");
    const Value* seps = a.Get(2, "separators");
    const Value* sort = a.Get(3, "sort_keys");
    const int ind = indent && !indent->is_none() ? static_cast<int>(indent->as_int()) : -1;
    std::string item_sep = ind >= 0 ? "," : ", ", key_sep = ": ";
    if (seps && seps->is_sequence() && seps->as_list().size() == 2) {
      item_sep = seps->as_list()[0].Str();
      key_sep = seps->as_list()[1].Str();
    }
    auto j = ToJson(v, ascii && ascii->Truthy(), ind, item_sep, key_sep, sort && sort->Truthy());
    if (!j.ok()) return Error(line, j.status().message());
    return Value::String(*j);
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::MakeList({});
    if (!v.is_dict()) return err("can only get item pairs from a mapping");
    List out;
    for (const auto& [k, x] : v.as_dict()) out.push_back(Value::MakeList({k, x}, true));
    return Value::MakeList(std::move(out));
  }
  if (name == "dictsort") {
    if (!v.is_dict()) return err("can only sort a mapping");
    const Value* cs = a.Get(0, "case_sensitive");
    const Value* by = a.Get(1, "by");
    const Value* rev = a.Get(2, "reverse");
    const bool by_value = by && by->Str() == "value";
    List items;
    for (const auto& [k, x] : v.as_dict()) items.push_back(Value::MakeList({k, x}, true));
    Status failed = OkStatus();
    std::stable_sort(items.begin(), items.end(), [&](const Value& p, const Value& q) {
      auto c = Compare(sort_key(p.as_list()[by_value], cs && cs->Truthy()),
                       sort_key(q.as_list()[by_value], cs && cs->Truthy()), line);
      if (!c.ok()) failed = c.status();
      return c.ok() && *c < 0;
    });
    SEER_RETURN_IF_ERROR(failed);
    if (rev && rev->Truthy()) std::reverse(items.begin(), items.end());
    return Value::MakeList(std::move(items));
  }
  if (name == "list") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    return Value::MakeList(std::move(l));
  }
  if (name == "first" || name == "last") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    if (l.empty()) return Undef("No " + name + " item, sequence was empty.");
    return name == "first" ? l.front() : l.back();
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string u = U32(v.as_string());
      std::reverse(u.begin(), u.end());
      return Value::String(U8(u));
    }
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    std::reverse(l.begin(), l.end());
    return Value::MakeList(std::move(l));
  }
  if (name == "join") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    const Value* d = a.Get(0, "d");
    const Value* attr = a.Get(1, "attribute");
    std::string out;
    for (size_t k = 0; k < l.size(); ++k) {
      Value item = l[k];
      if (attr) {
        SEER_ASSIGN_OR_RETURN(item, attr_of(item, attr->Str()));
      }
      out += (k && d ? d->Str() : "") + item.Str();
    }
    return Value::String(out);
  }
  if (name == "sum") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    const Value* attr = a.Get(0, "attribute");
    const Value* start = a.Get(1, "start");
    Value acc = start ? *start : Value::Int(0);
    for (Value item : l) {
      if (attr) {
        SEER_ASSIGN_OR_RETURN(item, attr_of(item, attr->Str()));
      }
      SEER_ASSIGN_OR_RETURN(acc, Arith("+", acc, item, line));
    }
    return acc;
  }
  if (name == "max" || name == "min" || name == "sort" || name == "unique") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    const bool is_sort = name == "sort";
    const Value* rev = is_sort ? a.Get(0, "reverse") : nullptr;
    const Value* cs = a.Get(is_sort ? 1 : 0, "case_sensitive");
    const Value* attr = a.Get(is_sort ? 2 : 1, "attribute");
    const bool case_sensitive = cs && cs->Truthy();
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : l) {
      Value k = item;
      if (attr) {
        SEER_ASSIGN_OR_RETURN(k, attr_of(item, attr->Str()));
      }
      keyed.emplace_back(sort_key(k, case_sensitive), item);
    }
    if (name == "unique") {
      List out;
      std::vector<Value> seen;
      for (const auto& entry : keyed) {
        const Value& k = entry.first;
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return Equal(s, k); })) {
          seen.push_back(k);
          out.push_back(entry.second);
        }
      }
      return Value::MakeList(std::move(out));
    }
    Status failed = OkStatus();
    auto less = [&](const std::pair<Value, Value>& p, const std::pair<Value, Value>& q) {
      auto c = Compare(p.first, q.first, line);
      if (!c.ok()) failed = c.status();
      return c.ok() && *c < 0;
    };
    if (is_sort) {
      const bool reverse = rev && rev->Truthy();
      std::stable_sort(keyed.begin(), keyed.end(),
                       [&](const auto& p, const auto& q) { return reverse ? less(q, p) : less(p, q); });
      SEER_RETURN_IF_ERROR(failed);
      List out;
      for (auto& kv : keyed) out.push_back(kv.second);
      return Value::MakeList(std::move(out));
    }
    if (keyed.empty()) return Undef("No aggregated item, sequence was empty.");
    auto it = name == "max" ? std::max_element(keyed.begin(), keyed.end(), less)
                            : std::min_element(keyed.begin(), keyed.end(), less);
    SEER_RETURN_IF_ERROR(failed);
    return it->second;
  }
  if (name == "attr") {  // getattr only: a dict's keys are not attributes
    const Value* n = a.Get(0, "name");
    if (!n) return err("needs an attribute name");
    if (v.kind() == Value::Kind::kNamespace) return GetAttr(v, n->Str(), line);
    Value m = Method(v, n->Str());
    return m.is_undefined() ? Undef("'" + v.TypeName() + " object' has no attribute '" + n->Str() + "'") : m;
  }
  if (name == "map") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    List out;
    const Value* attr = nullptr;
    const Value* dflt = nullptr;
    for (const auto& [k, x] : ca.keyword) {
      if (k == "attribute") attr = &x;
      if (k == "default") dflt = &x;
    }
    if (attr) {
      for (const Value& item : l) {
        SEER_ASSIGN_OR_RETURN(Value x, attr_of(item, attr->Str()));
        out.push_back(x.is_undefined() && dflt ? *dflt : x);
      }
      return Value::MakeList(std::move(out));
    }
    if (ca.positional.empty()) return err("map() needs a filter name or attribute=");
    const std::string filter = ca.positional[0].Str();
    if (!KnownFilters().count(filter)) return err("unsupported filter '" + filter + "'");
    for (const Value& item : l) {
      CallArgs rest;
      rest.positional.assign(ca.positional.begin() + 1, ca.positional.end());
      SEER_ASSIGN_OR_RETURN(Value x, Filter(filter, item, rest, line));
      out.push_back(x);
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    SEER_ASSIGN_OR_RETURN(List l, need_iterable(v));
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_when = name == "select" || name == "selectattr";
    size_t next = 0;
    std::string attr;
    if (by_attr) {
      if (ca.positional.empty()) return err("needs an attribute name");
      attr = ca.positional[next++].Str();
    }
    std::string test;
    if (next < ca.positional.size()) test = ca.positional[next++].Str();
    if (!test.empty() && !KnownTests().count(test)) return err("unsupported test '" + test + "'");
    List out;
    for (const Value& item : l) {
      Value x = item;
      if (by_attr) {
        SEER_ASSIGN_OR_RETURN(x, attr_of(item, attr));
      }
      bool r;
      if (test.empty()) {
        r = x.Truthy();
      } else {
        CallArgs rest;
        rest.positional.assign(ca.positional.begin() + next, ca.positional.end());
        SEER_ASSIGN_OR_RETURN(r, Test(test, x, rest, line));
      }
      if (r == keep_when) out.push_back(item);
    }
    return Value::MakeList(std::move(out));
  }
  return Error(line, "unsupported filter '" + name + "'");
}

StatusOr<bool> Renderer::Test(const std::string& name, const Value& v, CallArgs& ca, int line) {
  using K = Value::Kind;
  const Value* arg = ca.positional.empty() ? nullptr : &ca.positional[0];
  auto need = [&]() -> Status {
    if (arg == nullptr) return Error(line, "test '" + name + "' needs an argument");
    return OkStatus();
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind() == K::kBool;
  if (name == "false") return v.kind() == K::kBool && !v.as_bool();
  if (name == "true") return v.kind() == K::kBool && v.as_bool();
  if (name == "integer") return v.kind() == K::kInt;
  if (name == "float") return v.kind() == K::kFloat;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "sequence") return v.is_sequence() || v.is_string() || v.is_dict();
  if (name == "iterable") return v.is_sequence() || v.is_string() || v.is_dict();
  if (name == "callable") return v.kind() == K::kCallable;
  if (name == "escaped") return false;
  if (name == "filter") return v.is_string() && KnownFilters().count(v.as_string()) > 0;
  if (name == "test") return v.is_string() && KnownTests().count(v.as_string()) > 0;
  if (name == "lower" || name == "upper") {  // str(value).islower() / isupper()
    CallArgs none;
    SEER_ASSIGN_OR_RETURN(
        Value r, CallValue(Method(Value::String(v.Str()), name == "lower" ? "islower" : "isupper"), none, line));
    return r.as_bool();
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!(v.kind() == K::kInt || v.kind() == K::kBool)) return Error(line, "test '" + name + "' needs an integer");
    if (name == "divisibleby") {
      SEER_RETURN_IF_ERROR(need());
      SEER_ASSIGN_OR_RETURN(int64_t d, ToIndex(*arg, "divisibleby argument"));
      if (d == 0) return Error(line, "divisibleby 0");
      return v.as_int() % d == 0;
    }
    return (((v.as_int() % 2) + 2) % 2 == 1) == (name == "odd");
  }
  if (name == "sameas") {
    SEER_RETURN_IF_ERROR(need());
    if (v.kind() != arg->kind()) return false;
    if (v.identity() != nullptr) return v.identity() == arg->identity();
    return Equal(v, *arg);
  }
  if (name == "in") {
    SEER_RETURN_IF_ERROR(need());
    if (arg->is_string()) {
      if (!v.is_string()) return Error(line, "'in <string>' requires string as left operand, not " + v.TypeName());
      return arg->as_string().find(v.as_string()) != std::string::npos;
    }
    if (arg->is_sequence()) {
      for (const Value& x : arg->as_list()) {
        if (Equal(x, v)) return true;
      }
      return false;
    }
    if (arg->is_dict()) {
      for (const auto& kv : arg->as_dict()) {
        if (Equal(kv.first, v)) return true;
      }
      return false;
    }
    if (arg->is_undefined()) return Error(line, arg->name().empty() ? "undefined in 'in'" : arg->name());
    return Error(line, "argument of type '" + arg->TypeName() + "' is not iterable");
  }
  if (name == "eq" || name == "equalto" || name == "==") {
    SEER_RETURN_IF_ERROR(need());
    return Equal(v, *arg);
  }
  if (name == "ne" || name == "!=") {
    SEER_RETURN_IF_ERROR(need());
    return !Equal(v, *arg);
  }
  SEER_RETURN_IF_ERROR(need());
  SEER_ASSIGN_OR_RETURN(int c, Compare(v, *arg, line));
  if (name == "lt" || name == "lessthan" || name == "<") return c < 0;
  if (name == "le" || name == "<=") return c <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return c > 0;
  if (name == "ge" || name == ">=") return c >= 0;
  return Error(line, "unsupported test '" + name + "'");
}

}  // namespace

StatusOr<Template> Template::Parse(std::string_view source) {
  std::vector<Segment> segs;
  SEER_RETURN_IF_ERROR(Lex(source, &segs));
  Parser p(std::move(segs));
  SEER_ASSIGN_OR_RETURN(NodeList body, p.ParseAll());
  Template t;
  t.body_ = std::make_shared<NodeList>(std::move(body));
  return t;
}

StatusOr<std::string> Template::Render(const std::map<std::string, Value>& globals) const {
  Renderer r(globals);
  std::string out;
  SEER_RETURN_IF_ERROR(r.Render(*body_, &out));
  return out;
}

}  // namespace seer::jinja
