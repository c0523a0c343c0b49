#include "text/pipeline.h"

#include <algorithm>
#include <array>
#include <map>
#include <optional>

#include "text/unicode.h"

namespace seer {
namespace {

// GPT-2's pre-tokenization regex, built into tokenizers' ByteLevel.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Status Unsupported(const std::string& where, const std::string& type, const char* supported) {
  return Unimplemented(where + ": type '" + type + "' is not supported (supported: " + supported + ")");
}

StatusOr<std::string> TypeOf(const JsonValue& j, const std::string& where) {
  if (!j.is_object()) return InvalidArgument(where + ": expected an object, got " + JsonValue::TypeName(j.type()));
  const JsonValue* t = j.Find("type");
  if (t == nullptr || !t->is_string()) return InvalidArgument(where + ": missing \"type\"");
  return t->as_string();
}

StatusOr<std::string> StringField(const JsonValue& j, const std::string& where, const char* field) {
  const JsonValue* v = j.Find(field);
  if (v == nullptr || !v->is_string()) return InvalidArgument(where + "." + field + ": missing or not a string");
  return v->as_string();
}

StatusOr<bool> BoolField(const JsonValue& j, const std::string& where, const char* field, bool dflt) {
  const JsonValue* v = j.Find(field);
  if (v == nullptr || v->is_null()) return dflt;
  if (!v->is_bool()) return InvalidArgument(where + "." + field + ": expected true or false");
  return v->as_bool();
}

StatusOr<char32_t> CharField(const JsonValue& j, const std::string& where, const char* field) {
  SEER_ASSIGN_OR_RETURN(std::string s, StringField(j, where, field));
  std::u32string u;
  if (!unicode::DecodeUtf8(s, &u) || u.size() != 1) {
    return InvalidArgument(where + "." + field + ": expected a single character, got '" + s + "'");
  }
  return u[0];
}

// {"String": "..."} or {"Regex": "..."}.
StatusOr<Regex> PatternField(const JsonValue& j, const std::string& where) {
  const JsonValue* p = j.Find("pattern");
  if (p == nullptr || !p->is_object() || p->as_object().size() != 1 || !p->as_object()[0].second.is_string()) {
    return InvalidArgument(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  }
  const auto& [kind, value] = p->as_object()[0];
  if (kind == "String") {
    std::u32string lit;
    if (!unicode::DecodeUtf8(value.as_string(), &lit)) return InvalidArgument(where + ".pattern: not valid UTF-8");
    return Regex::Literal(lit);
  }
  if (kind == "Regex") {
    StatusOr<Regex> r = Regex::Compile(value.as_string());
    if (!r.ok()) return r.status().WithContext(where + ".pattern.Regex '" + value.as_string() + "'");
    return r;
  }
  return InvalidArgument(where + ".pattern: unknown kind '" + kind + "' (expected String or Regex)");
}

// Splits `text` by `re` into (start, end, is_match) segments covering it.
struct Segment {
  size_t start, end;
  bool match;
};
Status FindSegments(const Regex& re, const std::u32string& text, std::vector<Segment>* out) {
  out->clear();
  std::vector<std::pair<uint32_t, uint32_t>> matches;
  SEER_RETURN_IF_ERROR(re.FindAll(text.data(), text.size(), &matches));
  size_t prev = 0;
  for (const auto& [s, e] : matches) {
    if (prev != s) out->push_back({prev, s, false});
    out->push_back({s, e, true});
    prev = e;
  }
  if (prev != text.size()) out->push_back({prev, text.size(), false});
  return OkStatus();
}

StatusOr<std::string> ReplaceAll(const Regex& re, std::string_view text, const std::string& content) {
  std::u32string u;
  if (!unicode::DecodeUtf8(text, &u)) return InvalidArgument("Replace: text is not valid UTF-8");
  std::vector<Segment> segs;
  SEER_RETURN_IF_ERROR(FindSegments(re, u, &segs));
  std::string out;
  for (const Segment& s : segs) {
    if (s.match) {
      out += content;
    } else {
      out += unicode::ToUtf8(std::u32string_view(u).substr(s.start, s.end - s.start));
    }
  }
  return out;
}

// --- Normalisers ---

class NfcNormalizer : public Normalizer {
 public:
  StatusOr<std::string> Normalize(std::string_view text) const override { return unicode::Nfc(text); }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  StatusOr<std::string> Normalize(std::string_view text) const override {
    if (text.empty()) return std::string();
    return prepend_ + std::string(text);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  StatusOr<std::string> Normalize(std::string_view text) const override { return ReplaceAll(re_, text, content_); }

 private:
  Regex re_;
  std::string content_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> s) : steps_(std::move(s)) {}
  StatusOr<std::string> Normalize(std::string_view text) const override {
    std::string s(text);
    for (const auto& n : steps_) {
      SEER_ASSIGN_OR_RETURN(s, n->Normalize(s));
    }
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// --- Pre-tokenizers ---

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// tokenizers' NormalizedString::split: which segments survive, merged how.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Segment>& segs, Behavior b) {
  std::vector<std::pair<size_t, size_t>> out;
  switch (b) {
    case Behavior::kIsolated:
      for (const Segment& s : segs) out.push_back({s.start, s.end});
      break;
    case Behavior::kRemoved:
      for (const Segment& s : segs) {
        if (!s.match) out.push_back({s.start, s.end});
      }
      break;
    case Behavior::kContiguous: {
      bool prev_match = false;
      for (const Segment& s : segs) {
        if (s.match == prev_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.push_back({s.start, s.end});
        }
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Segment& s : segs) {
        if (s.match && !prev_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.push_back({s.start, s.end});
        }
        prev_match = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !out.empty()) {
          out.back().first = it->start;
        } else {
          out.push_back({it->start, it->end});
        }
        prev_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

Status SplitPiece(const Regex& re, bool invert, Behavior behavior, Piece piece, std::vector<Piece>* out) {
  std::u32string u;
  if (!unicode::DecodeUtf8(piece.text, &u)) return InvalidArgument("pre-tokenizer: piece is not valid UTF-8");
  std::vector<Segment> segs;
  SEER_RETURN_IF_ERROR(FindSegments(re, u, &segs));
  if (invert) {
    for (Segment& s : segs) s.match = !s.match;
  }
  for (const auto& [s, e] : ApplyBehavior(segs, behavior)) {
    if (s == e) continue;
    out->push_back({unicode::ToUtf8(std::u32string_view(u).substr(s, e - s)), -1, piece.at_start && s == 0});
  }
  return OkStatus();
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, Behavior b, bool invert) : re_(std::move(re)), behavior_(b), invert_(invert) {}
  Status Split(Piece piece, std::vector<Piece>* out) const override {
    return SplitPiece(re_, invert_, behavior_, std::move(piece), out);
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  Status Split(Piece piece, std::vector<Piece>* out) const override {
    if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) piece.text = " " + piece.text;
    std::vector<Piece> parts;
    if (re_) {
      SEER_RETURN_IF_ERROR(SplitPiece(*re_, false, Behavior::kIsolated, std::move(piece), &parts));
    } else if (!piece.text.empty()) {
      parts.push_back(std::move(piece));
    }
    for (Piece& p : parts) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char b : p.text) unicode::AppendUtf8(ByteToChar(b), &mapped);
      p.text = std::move(mapped);
      out->push_back(std::move(p));
    }
    return OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> re_;
};

enum class PrependScheme { kFirst, kNever, kAlways };

StatusOr<PrependScheme> ReadPrependScheme(const JsonValue& j, const std::string& where) {
  PrependScheme scheme = PrependScheme::kAlways;
  if (const JsonValue* p = j.Find("prepend_scheme"); p != nullptr && !p->is_null()) {
    if (!p->is_string()) return InvalidArgument(where + ".prepend_scheme: expected a string");
    const std::string& s = p->as_string();
    if (s == "first") {
      scheme = PrependScheme::kFirst;
    } else if (s == "never") {
      scheme = PrependScheme::kNever;
    } else if (s == "always") {
      scheme = PrependScheme::kAlways;
    } else {
      return InvalidArgument(where + ".prepend_scheme: '" + s + "' is not first, never or always");
    }
  }
  if (const JsonValue* a = j.Find("add_prefix_space"); a != nullptr && a->is_bool() && !a->as_bool()) {
    if (scheme != PrependScheme::kNever) {
      return InvalidArgument(where + ": add_prefix_space false does not match prepend_scheme");
    }
  }
  return scheme;
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : scheme_(scheme), split_(split), split_re_(Regex::Literal(std::u32string(1, replacement))) {
    unicode::AppendUtf8(replacement, &rep_);
  }
  Status Split(Piece piece, std::vector<Piece>* out) const override {
    std::string s;
    s.reserve(piece.text.size() + 8);
    for (char c : piece.text) {
      if (c == ' ') {
        s += rep_;
      } else {
        s.push_back(c);
      }
    }
    const bool starts = s.compare(0, rep_.size(), rep_) == 0;
    if (!starts && (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && piece.at_start))) {
      s = rep_ + s;
    }
    piece.text = std::move(s);
    if (!split_) {
      if (!piece.text.empty()) out->push_back(std::move(piece));
      return OkStatus();
    }
    return SplitPiece(split_re_, false, Behavior::kMergedWithNext, std::move(piece), out);
  }

 private:
  PrependScheme scheme_;
  bool split_;
  Regex split_re_;
  std::string rep_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> s) : steps_(std::move(s)) {}
  Status Split(Piece piece, std::vector<Piece>* out) const override {
    std::vector<Piece> cur = {std::move(piece)}, next;
    for (const auto& step : steps_) {
      next.clear();
      for (Piece& p : cur) SEER_RETURN_IF_ERROR(step->Split(std::move(p), &next));
      cur.swap(next);
    }
    for (Piece& p : cur) out->push_back(std::move(p));
    return OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// --- Post-processors ---

class TemplatePostProcessor : public PostProcessor {
 public:
  // Each entry: special ids to add, or empty with is_sequence for $A.
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit TemplatePostProcessor(std::vector<Item> items) : items_(std::move(items)) {}
  void Process(std::vector<int32_t>* ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids->size() + 4);
    for (const Item& it : items_) {
      if (it.is_sequence) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else {
        out.insert(out.end(), it.ids.begin(), it.ids.end());
      }
    }
    ids->swap(out);
  }
  std::vector<int32_t> SpecialIds() const override {
    std::vector<int32_t> out;
    for (const Item& it : items_) out.insert(out.end(), it.ids.begin(), it.ids.end());
    return out;
  }

 private:
  std::vector<Item> items_;
};

class NoOpPostProcessor : public PostProcessor {
 public:
  void Process(std::vector<int32_t>*, bool) const override {}
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> s) : steps_(std::move(s)) {}
  void Process(std::vector<int32_t>* ids, bool add) const override {
    for (const auto& s : steps_) s->Process(ids, add);
  }
  std::vector<int32_t> SpecialIds() const override {
    std::vector<int32_t> out;
    for (const auto& s : steps_) {
      const std::vector<int32_t> ids = s->SpecialIds();
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

// --- Decoders ---

class ByteLevelDecoder : public Decoder {
 public:
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      std::string mapped;
      size_t pos = 0;
      char32_t cp;
      bool all = true;
      while (pos < t.size()) {
        if (!unicode::DecodeOne(t, &pos, &cp)) {
          all = false;
          break;
        }
        const int b = CharToByte(cp);
        if (b < 0) {
          all = false;
          break;
        }
        mapped.push_back(static_cast<char>(b));
      }
      bytes += all ? mapped : t;
    }
    tokens->assign(1, state->raw_bytes ? std::move(bytes) : unicode::Utf8Lossy(bytes));
    state->fused = true;
    return OkStatus();
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState*) const override {
    for (std::string& t : *tokens) {
      SEER_ASSIGN_OR_RETURN(t, ReplaceAll(re_, t, content_));
    }
    return OkStatus();
  }

 private:
  Regex re_;
  std::string content_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&]() {
      if (bytes.empty()) return;
      if (state->raw_bytes || unicode::IsValidUtf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (std::string& t : *tokens) {
      const int b = ParseByteToken(t);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens->swap(out);
    return OkStatus();
  }
  bool HasByteFallback() const override { return true; }
};

class FuseDecoder : public Decoder {
 public:
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    std::string s;
    for (const std::string& t : *tokens) s += t;
    tokens->assign(1, std::move(s));
    state->fused = true;
    return OkStatus();
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    // After a fuse, the one token is the whole text: a continuation has no start to strip.
    const size_t start = state->continuation && state->fused ? 0 : start_;
    if (state->raw_bytes) return StripBytes(tokens, start);
    for (std::string& t : *tokens) {
      std::u32string u;
      if (!unicode::DecodeUtf8(t, &u)) return Internal("Strip: token is not valid UTF-8");
      size_t cut = 0;
      while (cut < start && cut < u.size() && u[cut] == content_) ++cut;
      size_t end = u.size();
      for (size_t i = 0; i < stop_ && end > cut && u[end - 1] == content_; ++i) --end;
      if (stop_ > 0 && end == cut) end = cut;
      t = unicode::ToUtf8(std::u32string_view(u).substr(cut, end - cut));
    }
    return OkStatus();
  }
  int StripStop() const override { return static_cast<int>(stop_); }
  char32_t StripContent() const override { return content_; }

 private:
  // The same on bytes that may not be UTF-8: `content`'s encoding matched
  // whole at either end (on valid UTF-8, exactly the cut above).
  Status StripBytes(std::vector<std::string>* tokens, size_t start) const {
    std::string c;
    unicode::AppendUtf8(content_, &c);
    for (std::string& t : *tokens) {
      size_t cut = 0, end = t.size();
      for (size_t i = 0; i < start && t.compare(cut, c.size(), c) == 0 && cut + c.size() <= end; ++i) cut += c.size();
      for (size_t i = 0; i < stop_ && end >= cut + c.size() && t.compare(end - c.size(), c.size(), c) == 0; ++i)
        end -= c.size();
      t = t.substr(cut, end - cut);
    }
    return OkStatus();
  }

  char32_t content_;
  size_t start_, stop_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme) : replacement_(replacement), scheme_(scheme) {}
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      size_t pos = 0;
      char32_t cp;
      const bool first = i == 0 && !state->continuation && scheme_ != PrependScheme::kNever;
      while (pos < t.size()) {
        if (!unicode::DecodeOne(t, &pos, &cp)) {
          if (!state->raw_bytes) return Internal("Metaspace: token is not valid UTF-8");
          out.push_back(t[pos++]);  // a raw byte (DecodeBytes) passes as it is
          continue;
        }
        if (cp == replacement_) {
          if (!first) out.push_back(' ');
        } else {
          unicode::AppendUtf8(cp, &out);
        }
      }
      t = std::move(out);
    }
    return OkStatus();
  }

 private:
  char32_t replacement_;
  PrependScheme scheme_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> s) : steps_(std::move(s)) {}
  Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const override {
    for (const auto& s : steps_) SEER_RETURN_IF_ERROR(s->DecodeChain(tokens, state));
    return OkStatus();
  }
  bool HasByteFallback() const override {
    for (const auto& s : steps_) {
      if (s->HasByteFallback()) return true;
    }
    return false;
  }
  int StripStop() const override {
    for (const auto& s : steps_) {
      if (s->StripStop() > 0) return s->StripStop();
    }
    return 0;
  }
  char32_t StripContent() const override {
    for (const auto& s : steps_) {
      if (s->StripStop() > 0) return s->StripContent();
    }
    return 0;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

template <typename T, typename Make>
StatusOr<std::vector<std::unique_ptr<T>>> ReadList(const JsonValue& j, const std::string& where, const char* field,
                                                   Make make) {
  const JsonValue* list = j.Find(field);
  if (list == nullptr || !list->is_array()) return InvalidArgument(where + "." + field + ": missing or not an array");
  std::vector<std::unique_ptr<T>> out;
  for (size_t i = 0; i < list->as_array().size(); ++i) {
    SEER_ASSIGN_OR_RETURN(auto step, make(list->as_array()[i], where + "." + field + "[" + std::to_string(i) + "]"));
    out.push_back(std::move(step));
  }
  return out;
}

}  // namespace

char32_t ByteToChar(uint8_t b) {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t n = 0;
    for (int i = 0; i < 256; ++i) {
      const bool printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
      t[i] = printable ? char32_t(i) : 256 + n++;
    }
    return t;
  }();
  return table[b];
}

int CharToByte(char32_t c) {
  static const std::map<char32_t, int> table = [] {
    std::map<char32_t, int> t;
    for (int b = 0; b < 256; ++b) t[ByteToChar(static_cast<uint8_t>(b))] = b;
    return t;
  }();
  if (c < 0x100 && ByteToChar(static_cast<uint8_t>(c)) == c) return static_cast<int>(c);
  auto it = table.find(c);
  return it == table.end() ? -1 : it->second;
}

int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  // Rust's u8::from_str_radix(.., 16): an optional '+' then hex digits.
  auto hex = [](char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  };
  if (t[3] == '+') return hex(t[4]);
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const JsonValue& j, const std::string& where) {
  SEER_ASSIGN_OR_RETURN(std::string type, TypeOf(j, where));
  if (type == "NFC") return std::unique_ptr<Normalizer>(new NfcNormalizer());
  if (type == "Prepend") {
    SEER_ASSIGN_OR_RETURN(std::string p, StringField(j, where, "prepend"));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(p)));
  }
  if (type == "Replace") {
    SEER_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    SEER_ASSIGN_OR_RETURN(std::string content, StringField(j, where, "content"));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(re), std::move(content)));
  }
  if (type == "Sequence") {
    SEER_ASSIGN_OR_RETURN(auto steps, ReadList<Normalizer>(j, where, "normalizers", NormalizerFromJson));
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  return Unsupported(where, type, "NFC, Prepend, Replace, Sequence");
}

StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const JsonValue& j, const std::string& where) {
  SEER_ASSIGN_OR_RETURN(std::string type, TypeOf(j, where));
  if (type == "Split") {
    SEER_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    SEER_ASSIGN_OR_RETURN(std::string b, StringField(j, where, "behavior"));
    static const std::pair<const char*, Behavior> kBehaviors[] = {{"Removed", Behavior::kRemoved},
                                                                  {"Isolated", Behavior::kIsolated},
                                                                  {"MergedWithPrevious", Behavior::kMergedWithPrevious},
                                                                  {"MergedWithNext", Behavior::kMergedWithNext},
                                                                  {"Contiguous", Behavior::kContiguous}};
    std::optional<Behavior> behavior;
    for (const auto& [name, v] : kBehaviors) {
      if (b == name) behavior = v;
    }
    if (!behavior) return InvalidArgument(where + ".behavior: unknown '" + b + "'");
    SEER_ASSIGN_OR_RETURN(bool invert, BoolField(j, where, "invert", false));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), *behavior, invert));
  }
  if (type == "ByteLevel") {
    SEER_ASSIGN_OR_RETURN(bool aps, BoolField(j, where, "add_prefix_space", true));
    SEER_ASSIGN_OR_RETURN(bool use_regex, BoolField(j, where, "use_regex", true));
    std::optional<Regex> re;
    if (use_regex) {
      SEER_ASSIGN_OR_RETURN(Regex r, Regex::Compile(kGpt2Pattern));
      re = std::move(r);
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(aps, std::move(re)));
  }
  if (type == "Metaspace") {
    SEER_ASSIGN_OR_RETURN(char32_t rep, CharField(j, where, "replacement"));
    SEER_ASSIGN_OR_RETURN(PrependScheme scheme, ReadPrependScheme(j, where));
    SEER_ASSIGN_OR_RETURN(bool split, BoolField(j, where, "split", true));
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(rep, scheme, split));
  }
  if (type == "Sequence") {
    SEER_ASSIGN_OR_RETURN(auto steps, ReadList<PreTokenizer>(j, where, "pretokenizers", PreTokenizerFromJson));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  return Unsupported(where, type, "Split, ByteLevel, Metaspace, Sequence");
}

StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const JsonValue& j, const std::string& where) {
  SEER_ASSIGN_OR_RETURN(std::string type, TypeOf(j, where));
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new NoOpPostProcessor());
  if (type == "TemplateProcessing") {
    const JsonValue* single = j.Find("single");
    const JsonValue* specials = j.Find("special_tokens");
    if (single == nullptr || !single->is_array()) return InvalidArgument(where + ".single: missing or not an array");
    if (specials == nullptr || !specials->is_object()) {
      return InvalidArgument(where + ".special_tokens: missing or not an object");
    }
    std::vector<TemplatePostProcessor::Item> items;
    for (size_t i = 0; i < single->as_array().size(); ++i) {
      const JsonValue& e = single->as_array()[i];
      const std::string at = where + ".single[" + std::to_string(i) + "]";
      if (const JsonValue* seq = e.Find("Sequence")) {
        const JsonValue* id = seq->Find("id");
        if (id == nullptr || !id->is_string() || id->as_string() != "A") {
          return InvalidArgument(at + ": a single-sequence template can only hold $A");
        }
        items.push_back({true, {}});
      } else if (const JsonValue* sp = e.Find("SpecialToken")) {
        const JsonValue* id = sp->Find("id");
        if (id == nullptr || !id->is_string()) return InvalidArgument(at + ".SpecialToken.id: missing");
        const JsonValue* tok = specials->Find(id->as_string());
        const JsonValue* ids = tok ? tok->Find("ids") : nullptr;
        if (ids == nullptr || !ids->is_array()) {
          return InvalidArgument(where + ".special_tokens: no ids for '" + id->as_string() + "'");
        }
        TemplatePostProcessor::Item item{false, {}};
        for (const JsonValue& x : ids->as_array()) {
          if (!x.is_integer() || x.as_int64() < 0 || x.as_int64() > INT32_MAX) {
            return InvalidArgument(where + ".special_tokens['" + id->as_string() + "'].ids: not a token id");
          }
          item.ids.push_back(static_cast<int32_t>(x.as_int64()));
        }
        items.push_back(std::move(item));
      } else {
        return InvalidArgument(at + ": expected Sequence or SpecialToken");
      }
    }
    return std::unique_ptr<PostProcessor>(new TemplatePostProcessor(std::move(items)));
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto read = [&](const char* field) -> StatusOr<int32_t> {
      const JsonValue* v = j.Find(field);
      if (v == nullptr || !v->is_array() || v->as_array().size() != 2 || !v->as_array()[1].is_integer()) {
        return InvalidArgument(where + "." + field + ": expected [token, id]");
      }
      return static_cast<int32_t>(v->as_array()[1].as_int64());
    };
    SEER_ASSIGN_OR_RETURN(int32_t cls, read("cls"));
    SEER_ASSIGN_OR_RETURN(int32_t sep, read("sep"));
    std::vector<TemplatePostProcessor::Item> items = {{false, {cls}}, {true, {}}, {false, {sep}}};
    return std::unique_ptr<PostProcessor>(new TemplatePostProcessor(std::move(items)));
  }
  if (type == "Sequence") {
    SEER_ASSIGN_OR_RETURN(auto steps, ReadList<PostProcessor>(j, where, "processors", PostProcessorFromJson));
    return std::unique_ptr<PostProcessor>(new SequencePostProcessor(std::move(steps)));
  }
  return Unsupported(where, type, "TemplateProcessing, RobertaProcessing, BertProcessing, ByteLevel, Sequence");
}

StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const JsonValue& j, const std::string& where) {
  SEER_ASSIGN_OR_RETURN(std::string type, TypeOf(j, where));
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Replace") {
    SEER_ASSIGN_OR_RETURN(Regex re, PatternField(j, where));
    SEER_ASSIGN_OR_RETURN(std::string content, StringField(j, where, "content"));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(re), std::move(content)));
  }
  if (type == "Strip") {
    SEER_ASSIGN_OR_RETURN(char32_t content, CharField(j, where, "content"));
    const JsonValue* start = j.Find("start");
    const JsonValue* stop = j.Find("stop");
    if (start == nullptr || !start->is_integer() || start->as_int64() < 0 || stop == nullptr || !stop->is_integer() ||
        stop->as_int64() < 0) {
      return InvalidArgument(where + ": start and stop must be non-negative integers");
    }
    // Real tokenizers strip a character or two; a count past any token's
    // length is refused rather than narrowed (the incremental decoder keeps
    // it in an int).
    constexpr int64_t kMaxStrip = 1 << 16;
    if (start->as_int64() > kMaxStrip || stop->as_int64() > kMaxStrip) {
      return InvalidArgument(where + ": start " + std::to_string(start->as_int64()) + " and stop " +
                             std::to_string(stop->as_int64()) + " must be at most " + std::to_string(kMaxStrip));
    }
    return std::unique_ptr<Decoder>(
        new StripDecoder(content, static_cast<size_t>(start->as_int64()), static_cast<size_t>(stop->as_int64())));
  }
  if (type == "Metaspace") {
    SEER_ASSIGN_OR_RETURN(char32_t rep, CharField(j, where, "replacement"));
    SEER_ASSIGN_OR_RETURN(PrependScheme scheme, ReadPrependScheme(j, where));
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(rep, scheme));
  }
  if (type == "Sequence") {
    SEER_ASSIGN_OR_RETURN(auto steps, ReadList<Decoder>(j, where, "decoders", DecoderFromJson));
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  return Unsupported(where, type, "ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence");
}

}  // namespace seer
