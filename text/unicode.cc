#include "text/unicode.h"

#include <algorithm>
#include <array>
#include <map>
#include <memory>

namespace seer::unicode {
namespace {

struct CategoryRun {
  char32_t first;
  GeneralCategory category;
};
struct CombiningClassRun {
  char32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp, first, second;  // second == 0: a singleton
};
struct Composition {
  char32_t first, second, composite;
};
struct CaseFold {
  char32_t cp, folded;
};
struct WordRange {
  char32_t first, last;
};
struct SpecialCase {
  char32_t cp;
  char32_t out[3];  // zero-padded
};

#include "text/unicode_tables.inc"

constexpr char32_t kMaxCodePoint = 0x10FFFF;

// Two-stage lookup built once from the runs: 4352 block indices, each block
// 256 categories; identical blocks are shared (about 100 KiB in all).
class CategoryTable {
 public:
  CategoryTable() {
    std::vector<GeneralCategory> flat(kMaxCodePoint + 1);
    const size_t n = std::size(kCategoryRuns);
    for (size_t i = 0; i < n; ++i) {
      const char32_t end = i + 1 < n ? kCategoryRuns[i + 1].first : kMaxCodePoint + 1;
      std::fill(flat.begin() + kCategoryRuns[i].first, flat.begin() + end, kCategoryRuns[i].category);
    }
    std::map<std::array<GeneralCategory, 256>, uint16_t> seen;
    for (char32_t block = 0; block < (kMaxCodePoint + 1) / 256; ++block) {
      std::array<GeneralCategory, 256> b;
      std::copy_n(flat.begin() + block * 256, 256, b.begin());
      auto [it, inserted] = seen.emplace(b, static_cast<uint16_t>(blocks_.size() / 256));
      if (inserted) blocks_.insert(blocks_.end(), b.begin(), b.end());
      stage1_[block] = it->second;
    }
  }
  GeneralCategory Get(char32_t cp) const {
    if (cp > kMaxCodePoint) return GeneralCategory::kCn;
    return blocks_[size_t{stage1_[cp >> 8]} * 256 + (cp & 0xFF)];
  }

 private:
  std::array<uint16_t, (kMaxCodePoint + 1) / 256> stage1_{};
  std::vector<GeneralCategory> blocks_;
};

const CategoryTable& Categories() {
  static const CategoryTable* table = new CategoryTable();
  return *table;
}

// Hangul syllable composition (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void Decompose(char32_t cp, std::u32string* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  if (cp < 0xC0) {
    out->push_back(cp);
    return;
  }
  const auto* end = std::end(kDecompositions);
  const auto* it = std::lower_bound(std::begin(kDecompositions), end, cp,
                                    [](const Decomposition& d, char32_t c) { return d.cp < c; });
  if (it == end || it->cp != cp) {
    out->push_back(cp);
    return;
  }
  Decompose(it->first, out);
  if (it->second != 0) Decompose(it->second, out);
}

// Returns 0 when the pair has no primary composite.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* end = std::end(kCompositions);
  const auto* it = std::lower_bound(std::begin(kCompositions), end, std::pair{a, b},
                                    [](const Composition& c, std::pair<char32_t, char32_t> k) {
                                      return c.first != k.first ? c.first < k.first : c.second < k.second;
                                    });
  if (it == end || it->first != a || it->second != b) return 0;
  return it->composite;
}

}  // namespace

GeneralCategory CategoryOf(char32_t cp) { return Categories().Get(cp); }

bool IsWordExtra(char32_t cp) {
  for (const WordRange& r : kWordExtra) {
    if (cp >= r.first && cp <= r.last) return true;
  }
  return false;
}

bool IsWhiteSpace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
  }
}

uint8_t CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* end = std::end(kCombiningClasses);
  const auto* it = std::upper_bound(std::begin(kCombiningClasses), end, cp,
                                    [](char32_t c, const CombiningClassRun& r) { return c < r.first; });
  if (it == std::begin(kCombiningClasses)) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

char32_t SimpleFold(char32_t cp) {
  const auto* end = std::end(kSimpleCaseFolding);
  const auto* it =
      std::lower_bound(std::begin(kSimpleCaseFolding), end, cp, [](const CaseFold& f, char32_t c) { return f.cp < c; });
  return it != end && it->cp == cp ? it->folded : cp;
}

namespace {
char32_t MapWith(const CaseFold* begin, const CaseFold* end, char32_t cp) {
  const auto* it = std::lower_bound(begin, end, cp, [](const CaseFold& f, char32_t c) { return f.cp < c; });
  return it != end && it->cp == cp ? it->folded : cp;
}
}  // namespace

char32_t ToUpper(char32_t cp) {
  if (cp < 0x80) return cp >= 'a' && cp <= 'z' ? cp - 32 : cp;
  return MapWith(std::begin(kSimpleUpper), std::end(kSimpleUpper), cp);
}

char32_t ToLower(char32_t cp) {
  if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
  return MapWith(std::begin(kSimpleLower), std::end(kSimpleLower), cp);
}

namespace {
void AppendFull(const SpecialCase* begin, const SpecialCase* end, char32_t simple, char32_t cp, std::u32string* out) {
  const auto* it = std::lower_bound(begin, end, cp, [](const SpecialCase& s, char32_t c) { return s.cp < c; });
  if (it != end && it->cp == cp) {
    for (char32_t c : it->out) {
      if (c != 0) out->push_back(c);
    }
  } else {
    out->push_back(simple);
  }
}
}  // namespace

void AppendUpperFull(char32_t cp, std::u32string* out) {
  AppendFull(std::begin(kSpecialUpper), std::end(kSpecialUpper), ToUpper(cp), cp, out);
}

void AppendLowerFull(char32_t cp, std::u32string* out) {
  AppendFull(std::begin(kSpecialLower), std::end(kSpecialLower), ToLower(cp), cp, out);
}

std::vector<char32_t> CaseOrbit(char32_t cp) {
  const char32_t f = SimpleFold(cp);
  std::vector<char32_t> out = {f};
  for (const CaseFold& c : kSimpleCaseFolding) {
    if (c.folded == f) out.push_back(c.cp);
  }
  if (std::find(out.begin(), out.end(), cp) == out.end()) out.push_back(cp);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// --- UTF-8 ---

namespace {
// Length of the valid prefix of the sequence starting at s[pos] (0 for an
// invalid lead byte), and whether the sequence is complete.
size_t ValidPrefix(std::string_view s, size_t pos, bool* complete) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[pos + i]); };
  const unsigned char b0 = b(0);
  *complete = false;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 < 0x80) {
    *complete = true;
    return 1;
  } else if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  size_t i = 1;
  for (; i < need; ++i) {
    if (pos + i >= s.size()) return i;
    const unsigned char c = b(i);
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (c < l || c > h) return i;
  }
  *complete = true;
  return need;
}
}  // namespace

bool DecodeOne(std::string_view s, size_t* pos, char32_t* cp) {
  if (*pos >= s.size()) return false;
  bool complete;
  const size_t n = ValidPrefix(s, *pos, &complete);
  if (!complete) return false;
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[*pos + i]); };
  switch (n) {
    case 1: *cp = b(0); break;
    case 2: *cp = (char32_t{b(0)} & 0x1F) << 6 | (b(1) & 0x3F); break;
    case 3: *cp = (char32_t{b(0)} & 0x0F) << 12 | (char32_t{b(1)} & 0x3F) << 6 | (b(2) & 0x3F); break;
    default:
      *cp =
          (char32_t{b(0)} & 0x07) << 18 | (char32_t{b(1)} & 0x3F) << 12 | (char32_t{b(2)} & 0x3F) << 6 | (b(3) & 0x3F);
  }
  *pos += n;
  return true;
}

bool DecodeUtf8(std::string_view s, std::u32string* out) {
  out->clear();
  out->reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[pos]);
    if (c < 0x80) {
      out->push_back(c);
      ++pos;
      continue;
    }
    char32_t cp;
    if (!DecodeOne(s, &pos, &cp)) return false;
    out->push_back(cp);
  }
  return true;
}

bool IsValidUtf8(std::string_view s) {
  size_t pos = 0;
  char32_t cp;
  while (pos < s.size()) {
    if (static_cast<unsigned char>(s[pos]) < 0x80) {
      ++pos;
    } else if (!DecodeOne(s, &pos, &cp)) {
      return false;
    }
  }
  return true;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string ToUtf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) AppendUtf8(c, &out);
  return out;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete;
    const size_t n = ValidPrefix(bytes, pos, &complete);
    if (complete) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out += "\xEF\xBF\xBD";
      pos += std::max<size_t>(n, 1);
    }
  }
  return out;
}

size_t CompleteUtf8Prefix(std::string_view s) {
  // Only the last (up to) 3 bytes can start an unfinished sequence.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t pos = s.size() - back;
    const unsigned char c = static_cast<unsigned char>(s[pos]);
    if (c < 0x80) return s.size();
    if (c >= 0xC0) {
      bool complete;
      const size_t n = ValidPrefix(s, pos, &complete);
      // A valid prefix that ran into the end of the string may still be completed.
      return !complete && pos + n == s.size() ? pos : s.size();
    }
  }
  return s.size();
}

std::string Nfc(std::string_view utf8) {
  std::u32string cps;
  if (!DecodeUtf8(utf8, &cps)) return std::string(utf8);
  if (std::all_of(cps.begin(), cps.end(), [](char32_t c) { return c < 0x300; })) return std::string(utf8);
  std::u32string d;
  d.reserve(cps.size() + 8);
  for (char32_t c : cps) Decompose(c, &d);
  // Canonical ordering: a stable sort of each run of non-starters by class.
  for (size_t i = 0; i < d.size();) {
    if (CombiningClass(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && CombiningClass(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return CombiningClass(a) < CombiningClass(b); });
    i = j;
  }
  // Canonical composition (UAX #15).
  if (!d.empty()) {
    size_t starter = 0, out = 1;
    bool have_starter = CombiningClass(d[0]) == 0;
    int last_class = 0;
    for (size_t i = 1; i < d.size(); ++i) {
      const char32_t ch = d[i];
      const int cls = CombiningClass(ch);
      const char32_t composite = have_starter ? Compose(d[starter], ch) : 0;
      if (composite != 0 && (last_class < cls || last_class == 0)) {
        d[starter] = composite;
        continue;
      }
      if (cls == 0) {
        starter = out;
        have_starter = true;
      }
      last_class = cls;
      d[out++] = ch;
    }
    d.resize(out);
  }
  return ToUtf8(d);
}

}  // namespace seer::unicode
