#include "text/regex.h"

#include <algorithm>
#include <optional>

#include "text/unicode.h"

namespace seer {
namespace {

using unicode::CategoryMask;

struct CharClass {
  struct Property {
    CategoryMask mask = 0;  // general categories
    bool white_space = false;
    bool word_extra = false;  // \w's code points outside its categories
    bool negated = false;
    bool Matches(char32_t c) const {
      const bool in = (white_space && unicode::IsWhiteSpace(c)) || (mask != 0 && unicode::InMask(c, mask)) ||
                      (word_extra && unicode::IsWordExtra(c));
      return in != negated;
    }
  };
  bool negated = false;
  std::vector<std::pair<char32_t, char32_t>> ranges;
  std::vector<Property> properties;

  bool Matches(char32_t c) const {
    bool in = false;
    for (const auto& [lo, hi] : ranges) {
      if (c >= lo && c <= hi) {
        in = true;
        break;
      }
    }
    if (!in) {
      for (const Property& p : properties) {
        if (p.Matches(c)) {
          in = true;
          break;
        }
      }
    }
    return in != negated;
  }
};

enum class Op : uint8_t { kChar, kClass, kAny, kSplit, kJmp, kMatch, kLookahead };

struct Inst {
  Op op;
  bool negated = false;  // kLookahead: (?! )
  char32_t c = 0;  // kChar
  uint32_t x = 0, y = 0;  // kClass: x = class; kSplit: x preferred, y other; kJmp: x; kLookahead: x = body, y = next
};

// --- AST ---
struct Node {
  enum Kind { kEmpty, kChar, kClass, kAny, kConcat, kAlt, kRepeat, kLook } kind = kEmpty;
  char32_t c = 0;
  uint32_t cls = 0;
  int min = 0, max = 0;  // kRepeat; max < 0: unbounded
  bool greedy = true;
  bool negated = false;  // kLook
  std::vector<Node> kids;
};

bool Nullable(const Node& n) {
  switch (n.kind) {
    case Node::kEmpty:
    case Node::kLook: return true;
    case Node::kChar:
    case Node::kClass:
    case Node::kAny: return false;
    case Node::kConcat: return std::all_of(n.kids.begin(), n.kids.end(), Nullable);
    case Node::kAlt: return std::any_of(n.kids.begin(), n.kids.end(), Nullable);
    case Node::kRepeat: return n.min == 0 || Nullable(n.kids[0]);
  }
  return true;
}

constexpr size_t kMaxProgram = 200000;
constexpr int kMaxRepeat = 1000;
constexpr int kMaxNesting = 100;

class Parser {
 public:
  Parser(std::u32string p, std::vector<CharClass>* classes) : p_(std::move(p)), classes_(classes) {}

  StatusOr<Node> ParseAll() {
    Node n;
    if (!ParseAlt(&n, false)) return error_;
    if (pos_ < p_.size()) return Fail("unmatched ')'");
    return n;
  }

 private:
  Status Fail(const std::string& what) {
    error_ = InvalidArgument("regex: " + what + " at offset " + std::to_string(pos_) +
                             " (supported: | ( ) (?: ) "
                             "(?i: ) (?= ) (?! ) [...] . \\s \\S \\d \\D \\w \\W \\p{..} \\P{..} ? * + {n,m} and "
                             "lazy forms)");
    return error_;
  }
  bool FailB(const std::string& what) {
    (void)Fail(what);
    return false;
  }
  bool AtEnd() const { return pos_ >= p_.size(); }
  char32_t Peek(size_t k = 0) const { return pos_ + k < p_.size() ? p_[pos_ + k] : 0; }

  bool ParseAlt(Node* out, bool ci) {
    Node alt;
    alt.kind = Node::kAlt;
    while (true) {
      Node seq;
      if (!ParseSeq(&seq, ci)) return false;
      alt.kids.push_back(std::move(seq));
      if (Peek() == '|' && !AtEnd()) {
        ++pos_;
        continue;
      }
      break;
    }
    *out = alt.kids.size() == 1 ? std::move(alt.kids[0]) : std::move(alt);
    return true;
  }

  bool ParseSeq(Node* out, bool ci) {
    Node seq;
    seq.kind = Node::kConcat;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      Node atom;
      if (!ParseAtom(&atom, ci)) return false;
      if (!ParseQuantifier(&atom)) return false;
      seq.kids.push_back(std::move(atom));
    }
    if (seq.kids.empty()) {
      *out = Node();
    } else if (seq.kids.size() == 1) {
      *out = std::move(seq.kids[0]);
    } else {
      *out = std::move(seq);
    }
    return true;
  }

  // {n}, {n,}, {n,m}, {,m}; returns false (without consuming) when the brace
  // does not start a valid interval, in which case it is a literal.
  bool ReadInterval(int* lo, int* hi) {
    size_t i = pos_ + 1;
    auto number = [&](int* v) {
      size_t start = i;
      long long x = 0;
      while (i < p_.size() && p_[i] >= '0' && p_[i] <= '9') {
        x = x * 10 + (p_[i] - '0');
        if (x > 100000) x = 100000;
        ++i;
      }
      *v = static_cast<int>(x);
      return i > start;
    };
    int a = 0, b = -1;
    const bool has_a = number(&a);
    if (i < p_.size() && p_[i] == ',') {
      ++i;
      const bool has_b = number(&b);
      if (!has_a && !has_b) return false;
      if (!has_a) a = 0;
      if (!has_b) b = -1;
    } else {
      if (!has_a) return false;
      b = a;
    }
    if (i >= p_.size() || p_[i] != '}') return false;
    pos_ = i + 1;
    *lo = a;
    *hi = b;
    return true;
  }

  bool ParseQuantifier(Node* atom) {
    while (!AtEnd()) {
      int lo, hi;
      const char32_t c = Peek();
      if (c == '?') {
        lo = 0, hi = 1, ++pos_;
      } else if (c == '*') {
        lo = 0, hi = -1, ++pos_;
      } else if (c == '+') {
        lo = 1, hi = -1, ++pos_;
      } else if (c == '{') {
        if (!ReadInterval(&lo, &hi)) return true;
      } else {
        return true;
      }
      if (lo > kMaxRepeat || hi > kMaxRepeat) return FailB("repeat count above " + std::to_string(kMaxRepeat));
      if (hi >= 0 && hi < lo) return FailB("repeat {n,m} with m < n");
      bool greedy = true;
      if (Peek() == '?' && !AtEnd()) {
        greedy = false;
        ++pos_;
      } else if (Peek() == '+' && !AtEnd()) {
        return FailB("possessive quantifier");
      }
      if (atom->kind == Node::kLook || atom->kind == Node::kEmpty) return FailB("quantifier on nothing");
      if (hi < 0 && Nullable(*atom)) return FailB("unbounded repeat of something that can match empty");
      Node r;
      r.kind = Node::kRepeat;
      r.min = lo;
      r.max = hi;
      r.greedy = greedy;
      r.kids.push_back(std::move(*atom));
      *atom = std::move(r);
    }
    return true;
  }

  uint32_t AddClass(CharClass c) {
    classes_->push_back(std::move(c));
    return static_cast<uint32_t>(classes_->size() - 1);
  }

  Node CharNode(char32_t c, bool ci) {
    Node n;
    if (ci && unicode::CaseOrbit(c).size() > 1) {
      CharClass cls;
      for (char32_t o : unicode::CaseOrbit(c)) cls.ranges.push_back({o, o});
      n.kind = Node::kClass;
      n.cls = AddClass(std::move(cls));
    } else {
      n.kind = Node::kChar;
      n.c = c;
    }
    return n;
  }

  std::optional<CategoryMask> CategoryByName(const std::u32string& raw) {
    std::string name;
    for (char32_t c : raw) {
      if (c == '_' || c == ' ' || c == '-') continue;
      if (c > 0x7F) return std::nullopt;
      name.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
    }
    using G = unicode::GeneralCategory;
    static const std::pair<const char*, CategoryMask> kNames[] = {
        {"l", unicode::kLetter},
        {"letter", unicode::kLetter},
        {"lu", unicode::Bit(G::kLu)},
        {"uppercaseletter", unicode::Bit(G::kLu)},
        {"ll", unicode::Bit(G::kLl)},
        {"lowercaseletter", unicode::Bit(G::kLl)},
        {"lt", unicode::Bit(G::kLt)},
        {"titlecaseletter", unicode::Bit(G::kLt)},
        {"lm", unicode::Bit(G::kLm)},
        {"modifierletter", unicode::Bit(G::kLm)},
        {"lo", unicode::Bit(G::kLo)},
        {"otherletter", unicode::Bit(G::kLo)},
        {"m", unicode::kMark},
        {"mark", unicode::kMark},
        {"combiningmark", unicode::kMark},
        {"mn", unicode::Bit(G::kMn)},
        {"nonspacingmark", unicode::Bit(G::kMn)},
        {"mc", unicode::Bit(G::kMc)},
        {"spacingmark", unicode::Bit(G::kMc)},
        {"me", unicode::Bit(G::kMe)},
        {"enclosingmark", unicode::Bit(G::kMe)},
        {"n", unicode::kNumber},
        {"number", unicode::kNumber},
        {"nd", unicode::Bit(G::kNd)},
        {"decimalnumber", unicode::Bit(G::kNd)},
        {"nl", unicode::Bit(G::kNl)},
        {"letternumber", unicode::Bit(G::kNl)},
        {"no", unicode::Bit(G::kNo)},
        {"othernumber", unicode::Bit(G::kNo)},
        {"p", unicode::Bit(G::kPc) | unicode::Bit(G::kPd) | unicode::Bit(G::kPs) | unicode::Bit(G::kPe) |
                  unicode::Bit(G::kPi) | unicode::Bit(G::kPf) | unicode::Bit(G::kPo)},
        {"pc", unicode::Bit(G::kPc)},
        {"pd", unicode::Bit(G::kPd)},
        {"ps", unicode::Bit(G::kPs)},
        {"pe", unicode::Bit(G::kPe)},
        {"pi", unicode::Bit(G::kPi)},
        {"pf", unicode::Bit(G::kPf)},
        {"po", unicode::Bit(G::kPo)},
        {"s", unicode::Bit(G::kSm) | unicode::Bit(G::kSc) | unicode::Bit(G::kSk) | unicode::Bit(G::kSo)},
        {"sm", unicode::Bit(G::kSm)},
        {"sc", unicode::Bit(G::kSc)},
        {"sk", unicode::Bit(G::kSk)},
        {"so", unicode::Bit(G::kSo)},
        {"z", unicode::Bit(G::kZs) | unicode::Bit(G::kZl) | unicode::Bit(G::kZp)},
        {"zs", unicode::Bit(G::kZs)},
        {"zl", unicode::Bit(G::kZl)},
        {"zp", unicode::Bit(G::kZp)},
        {"c", unicode::Bit(G::kCc) | unicode::Bit(G::kCf) | unicode::Bit(G::kCs) | unicode::Bit(G::kCo) |
                  unicode::Bit(G::kCn)},
        {"cc", unicode::Bit(G::kCc)},
        {"cf", unicode::Bit(G::kCf)},
        {"cs", unicode::Bit(G::kCs)},
        {"co", unicode::Bit(G::kCo)},
        {"cn", unicode::Bit(G::kCn)},
    };
    for (const auto& [n, mask] : kNames) {
      if (name == n) return mask;
    }
    return std::nullopt;
  }

  // After a backslash. Sets *cp for a single character, or *prop for a class escape.
  bool ParseEscape(char32_t* cp, std::optional<CharClass::Property>* prop) {
    if (AtEnd()) return FailB("trailing backslash");
    const char32_t e = p_[pos_++];
    CharClass::Property p;
    switch (e) {
      case 's':
      case 'S': p.white_space = true, p.negated = e == 'S', *prop = p; return true;
      case 'd':
      case 'D': p.mask = unicode::Bit(unicode::GeneralCategory::kNd), p.negated = e == 'D', *prop = p; return true;
      case 'w':
      case 'W':
        p.mask = unicode::kLetter | unicode::kMark | unicode::Bit(unicode::GeneralCategory::kNd) |
                 unicode::Bit(unicode::GeneralCategory::kPc);
        p.word_extra = true;
        p.negated = e == 'W';
        *prop = p;
        return true;
      case 'p':
      case 'P': {
        if (Peek() != '{') return FailB(std::string(e == 'p' ? "\\p" : "\\P") + " without {name}");
        ++pos_;
        bool neg = e == 'P';
        if (Peek() == '^') {
          neg = !neg;
          ++pos_;
        }
        std::u32string name;
        while (!AtEnd() && Peek() != '}') name.push_back(p_[pos_++]);
        if (AtEnd()) return FailB("unterminated \\p{");
        ++pos_;
        auto mask = CategoryByName(name);
        if (!mask) return FailB("property \\p{" + unicode::ToUtf8(name) + "} (only general categories are supported)");
        p.mask = *mask;
        p.negated = neg;
        *prop = p;
        return true;
      }
      case 'r': *cp = '\r'; return true;
      case 'n': *cp = '\n'; return true;
      case 't': *cp = '\t'; return true;
      case 'f': *cp = '\f'; return true;
      case 'v': *cp = '\v'; return true;
      case 'e': *cp = 0x1B; return true;
      case 'a': *cp = 0x07; return true;
      case 'x':
      case 'u': {
        const bool braced = e == 'x' && Peek() == '{';
        if (braced) ++pos_;
        const size_t max_digits = braced ? 8 : (e == 'u' ? 4 : 2);
        char32_t v = 0;
        size_t digits = 0;
        while (!AtEnd() && digits < max_digits) {
          const char32_t h = Peek();
          int d = h >= '0' && h <= '9'   ? int(h - '0')
                  : h >= 'a' && h <= 'f' ? int(h - 'a' + 10)
                  : h >= 'A' && h <= 'F' ? int(h - 'A' + 10)
                                         : -1;
          if (d < 0) break;
          v = v * 16 + d;
          ++digits;
          ++pos_;
        }
        if (digits == 0 || (e == 'u' && digits != 4))
          return FailB("malformed \\" + std::string(1, char(e)) + " escape");
        if (braced) {
          if (Peek() != '}') return FailB("unterminated \\x{");
          ++pos_;
        }
        if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return FailB("escape outside Unicode scalar values");
        *cp = v;
        return true;
      }
      default: break;
    }
    if (e >= '0' && e <= '9') return FailB("backreference or octal escape \\" + std::string(1, char(e)));
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
      static const std::u32string kAnchors = U"bBAzZG";
      return FailB(std::string(kAnchors.find(e) != std::u32string::npos ? "anchor" : "escape") + " \\" +
                   std::string(1, char(e)));
    }
    *cp = e;  // escaped punctuation or any other character: itself
    return true;
  }

  bool ParseClass(Node* out, bool ci) {
    CharClass cls;
    if (Peek() == '^') {
      cls.negated = true;
      ++pos_;
    }
    bool first = true;
    while (true) {
      if (AtEnd()) return FailB("unterminated character class");
      char32_t c = p_[pos_];
      if (c == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      if (c == '[') return FailB(Peek(1) == ':' ? "POSIX bracket [:...:]" : "nested character class");
      if (c == '&' && Peek(1) == '&') return FailB("class intersection &&");
      ++pos_;
      char32_t lo = c;
      if (c == '\\') {
        std::optional<CharClass::Property> prop;
        if (!ParseEscape(&lo, &prop)) return false;
        if (prop) {
          cls.properties.push_back(*prop);
          continue;
        }
      }
      char32_t hi = lo;
      if (Peek() == '-' && Peek(1) != ']' && pos_ + 1 < p_.size()) {
        ++pos_;
        hi = p_[pos_++];
        if (hi == '\\') {
          std::optional<CharClass::Property> prop;
          if (!ParseEscape(&hi, &prop)) return false;
          if (prop) return FailB("class escape as a range end");
        } else if (hi == '[') {
          return FailB("nested character class");
        }
        if (hi < lo) return FailB("empty range in character class");
      }
      cls.ranges.push_back({lo, hi});
    }
    if (ci) {
      std::vector<std::pair<char32_t, char32_t>> extra;
      for (const auto& [lo, hi] : cls.ranges) {
        if (hi - lo > 5000) continue;
        for (char32_t c = lo; c <= hi; ++c) {
          for (char32_t o : unicode::CaseOrbit(c)) {
            if (o != c) extra.push_back({o, o});
          }
        }
      }
      cls.ranges.insert(cls.ranges.end(), extra.begin(), extra.end());
    }
    out->kind = Node::kClass;
    out->cls = AddClass(std::move(cls));
    return true;
  }

  bool ParseAtom(Node* out, bool ci) {
    const char32_t c = p_[pos_++];
    switch (c) {
      case '(': {
        if (++depth_ > kMaxNesting) return FailB("groups nested deeper than " + std::to_string(kMaxNesting));
        struct Leave {
          int* d;
          ~Leave() { --*d; }
        } leave{&depth_};
        bool group_ci = ci;
        int look = 0;  // 1: (?= ; 2: (?!
        if (Peek() == '?') {
          ++pos_;
          const char32_t k = Peek();
          if (k == ':') {
            ++pos_;
          } else if (k == 'i' && Peek(1) == ':') {
            group_ci = true;
            pos_ += 2;
          } else if (k == '-' && Peek(1) == 'i' && Peek(2) == ':') {
            group_ci = false;
            pos_ += 3;
          } else if (k == '=') {
            look = 1, ++pos_;
          } else if (k == '!') {
            look = 2, ++pos_;
          } else if (k == '<' && (Peek(1) == '=' || Peek(1) == '!')) {
            return FailB("lookbehind (?<" + std::string(1, char(Peek(1))) + " ...)");
          } else if (k == '>') {
            return FailB("atomic group (?> ...)");
          } else if (k == '<' || k == 'P' || k == '\'') {
            return FailB("named group");
          } else {
            return FailB("group or inline flags (?" + unicode::ToUtf8(std::u32string(1, k)) + "...)");
          }
        }
        Node inner;
        if (!ParseAlt(&inner, group_ci)) return false;
        if (Peek() != ')' || AtEnd()) return FailB("missing ')'");
        ++pos_;
        if (look) {
          out->kind = Node::kLook;
          out->negated = look == 2;
          out->kids.push_back(std::move(inner));
        } else {
          *out = std::move(inner);
        }
        return true;
      }
      case '[': return ParseClass(out, ci);
      case '.': out->kind = Node::kAny; return true;
      case '^':
      case '$': --pos_; return FailB(std::string("anchor ") + char(c));
      case '*':
      case '+':
      case '?': --pos_; return FailB("nothing to repeat");
      case '\\': {
        char32_t cp = 0;
        std::optional<CharClass::Property> prop;
        if (!ParseEscape(&cp, &prop)) return false;
        if (prop) {
          CharClass cls;
          cls.properties.push_back(*prop);
          out->kind = Node::kClass;
          out->cls = AddClass(std::move(cls));
        } else {
          *out = CharNode(cp, ci);
        }
        return true;
      }
      default: *out = CharNode(c, ci); return true;
    }
  }

  std::u32string p_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::vector<CharClass>* classes_;
  Status error_;
};

}  // namespace

struct Regex::Program {
  std::vector<Inst> code;
  std::vector<CharClass> classes;

  // Appends the code of `n`; returns false when the program grows too large.
  bool Emit(const Node& n) {
    if (code.size() > kMaxProgram) return false;
    switch (n.kind) {
      case Node::kEmpty: return true;
      case Node::kChar: code.push_back({Op::kChar, false, n.c}); return true;
      case Node::kClass: code.push_back({Op::kClass, false, 0, n.cls}); return true;
      case Node::kAny: code.push_back({Op::kAny}); return true;
      case Node::kConcat:
        for (const Node& k : n.kids) {
          if (!Emit(k)) return false;
        }
        return true;
      case Node::kAlt: {
        std::vector<size_t> jumps;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          if (i + 1 < n.kids.size()) {
            const size_t split = code.size();
            code.push_back({Op::kSplit});
            code[split].x = static_cast<uint32_t>(code.size());
            if (!Emit(n.kids[i])) return false;
            jumps.push_back(code.size());
            code.push_back({Op::kJmp});
            code[split].y = static_cast<uint32_t>(code.size());
          } else if (!Emit(n.kids[i])) {
            return false;
          }
        }
        for (size_t j : jumps) code[j].x = static_cast<uint32_t>(code.size());
        return true;
      }
      case Node::kRepeat: {
        const Node& body = n.kids[0];
        for (int i = 0; i < n.min; ++i) {
          if (!Emit(body)) return false;
        }
        if (n.max < 0) {
          const size_t split = code.size();
          code.push_back({Op::kSplit});
          const uint32_t body_pc = static_cast<uint32_t>(code.size());
          if (!Emit(body)) return false;
          code.push_back({Op::kJmp, false, 0, static_cast<uint32_t>(split)});
          const uint32_t out = static_cast<uint32_t>(code.size());
          code[split].x = n.greedy ? body_pc : out;
          code[split].y = n.greedy ? out : body_pc;
          return true;
        }
        std::vector<size_t> splits;
        for (int i = n.min; i < n.max; ++i) {
          splits.push_back(code.size());
          code.push_back({Op::kSplit});
          code[splits.back()].x = static_cast<uint32_t>(code.size());  // body first when greedy
          if (!Emit(body)) return false;
        }
        const uint32_t out = static_cast<uint32_t>(code.size());
        for (size_t s : splits) {
          const uint32_t body_pc = code[s].x;
          code[s].x = n.greedy ? body_pc : out;
          code[s].y = n.greedy ? out : body_pc;
        }
        return true;
      }
      case Node::kLook: {
        // [kLookahead x=body y=next] [kJmp next] body... kMatch  next:
        const size_t look = code.size();
        code.push_back({Op::kLookahead, n.negated});
        const size_t jmp = code.size();
        code.push_back({Op::kJmp});
        code[look].x = static_cast<uint32_t>(code.size());
        if (!Emit(n.kids[0])) return false;
        code.push_back({Op::kMatch});
        code[look].y = code[jmp].x = static_cast<uint32_t>(code.size());
        return true;
      }
    }
    return true;
  }

  // Runs from `pc` at `pos`; on success sets *end to where the match ends.
  // `budget` counts instructions; it going negative is an error.
  bool Run(uint32_t pc0, size_t pos0, const char32_t* text, size_t n, size_t* end, int64_t* budget,
           std::vector<std::pair<uint32_t, size_t>>* stack) const {
    const size_t base = stack->size();
    stack->push_back({pc0, pos0});
    while (stack->size() > base) {
      auto [pc, pos] = stack->back();
      stack->pop_back();
      while (true) {
        if (--*budget < 0) {
          stack->resize(base);
          return false;
        }
        const Inst& in = code[pc];
        bool ok;
        switch (in.op) {
          case Op::kChar:
            ok = pos < n && text[pos] == in.c;
            if (ok) ++pos, ++pc;
            break;
          case Op::kClass:
            ok = pos < n && classes[in.x].Matches(text[pos]);
            if (ok) ++pos, ++pc;
            break;
          case Op::kAny:
            ok = pos < n && text[pos] != '\n';
            if (ok) ++pos, ++pc;
            break;
          case Op::kSplit:
            stack->push_back({in.y, pos});
            pc = in.x;
            ok = true;
            break;
          case Op::kJmp:
            pc = in.x;
            ok = true;
            break;
          case Op::kMatch:
            *end = pos;
            stack->resize(base);
            return true;
          case Op::kLookahead: {
            size_t ignored;
            const bool m = Run(in.x, pos, text, n, &ignored, budget, stack);
            if (*budget < 0) {
              stack->resize(base);
              return false;
            }
            ok = m != in.negated;
            if (ok) pc = in.y;
            break;
          }
        }
        if (!ok) break;
      }
    }
    return false;
  }
};

StatusOr<Regex> Regex::Compile(std::string_view pattern) {
  std::u32string p;
  if (!unicode::DecodeUtf8(pattern, &p)) return InvalidArgument("regex: pattern is not valid UTF-8");
  auto program = std::make_shared<Program>();
  Parser parser(std::move(p), &program->classes);
  StatusOr<Node> ast = parser.ParseAll();
  if (!ast.ok()) return ast.status();
  if (!program->Emit(*ast) || program->code.size() > kMaxProgram) {
    return InvalidArgument("regex: pattern compiles to more than " + std::to_string(kMaxProgram) + " instructions");
  }
  program->code.push_back({Op::kMatch});
  Regex r;
  r.pattern_ = std::string(pattern);
  r.program_ = std::move(program);
  return r;
}

Regex Regex::Literal(std::u32string_view literal) {
  auto program = std::make_shared<Program>();
  for (char32_t c : literal) program->code.push_back({Op::kChar, false, c});
  program->code.push_back({Op::kMatch});
  Regex r;
  r.pattern_ = unicode::ToUtf8(literal);
  r.program_ = std::move(program);
  return r;
}

Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::Regex(const Regex&) = default;
Regex::~Regex() = default;

Status Regex::FindAll(const char32_t* text, size_t n, std::vector<std::pair<uint32_t, uint32_t>>* matches) const {
  matches->clear();
  if (!program_) return Internal("regex: not compiled");
  std::vector<std::pair<uint32_t, size_t>> stack;
  int64_t budget = 20'000'000 + int64_t{2000} * static_cast<int64_t>(n);
  size_t search_from = 0;
  std::optional<size_t> last_match_end;
  while (search_from <= n) {
    bool found = false;
    size_t start = search_from, end = 0;
    for (; start <= n; ++start) {
      if (program_->Run(0, start, text, n, &end, &budget, &stack)) {
        found = true;
        break;
      }
      if (budget < 0) {
        return ResourceExhausted("regex: pattern '" + pattern_ + "' needs too many steps on an input of " +
                                 std::to_string(n) + " code points (catastrophic backtracking)");
      }
    }
    if (!found) break;
    if (end == start && last_match_end && *last_match_end == end) {
      // An empty match right after the previous match: skip one code point.
      search_from = search_from + 1;
      continue;
    }
    matches->push_back({static_cast<uint32_t>(start), static_cast<uint32_t>(end)});
    last_match_end = end;
    search_from = end;
    if (start == end && end == n) break;
  }
  return OkStatus();
}

}  // namespace seer
