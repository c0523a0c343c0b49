// Unicode for the text layer: UTF-8, general categories, White_Space, NFC
// and simple case folding, from tables generated into unicode_tables.inc
// (tools/gen_unicode_tables.py). No ICU: text/ must build on a host with
// only a compiler.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace seer::unicode {

// General_Category values, in the order of UnicodeData.txt's abbreviations.
enum class GeneralCategory : uint8_t {
  kLu,
  kLl,
  kLt,
  kLm,
  kLo,
  kMn,
  kMc,
  kMe,
  kNd,
  kNl,
  kNo,
  kPc,
  kPd,
  kPs,
  kPe,
  kPi,
  kPf,
  kPo,
  kSm,
  kSc,
  kSk,
  kSo,
  kZs,
  kZl,
  kZp,
  kCc,
  kCf,
  kCs,
  kCo,
  kCn,
};
inline constexpr int kNumCategories = 30;

// A bit per category, to test membership in a class such as \p{L}.
using CategoryMask = uint32_t;
inline constexpr CategoryMask Bit(GeneralCategory c) { return CategoryMask{1} << static_cast<int>(c); }
inline constexpr CategoryMask kLetter = Bit(GeneralCategory::kLu) | Bit(GeneralCategory::kLl) |
                                        Bit(GeneralCategory::kLt) | Bit(GeneralCategory::kLm) |
                                        Bit(GeneralCategory::kLo);
inline constexpr CategoryMask kMark = Bit(GeneralCategory::kMn) | Bit(GeneralCategory::kMc) | Bit(GeneralCategory::kMe);
inline constexpr CategoryMask kNumber =
    Bit(GeneralCategory::kNd) | Bit(GeneralCategory::kNl) | Bit(GeneralCategory::kNo);

GeneralCategory CategoryOf(char32_t cp);
inline bool InMask(char32_t cp, CategoryMask mask) { return (mask & Bit(CategoryOf(cp))) != 0; }

// Oniguruma's \w beyond L, M, Nd and Pc (letter numbers, circled letters, ...).
bool IsWordExtra(char32_t cp);
// The White_Space property (equal to Oniguruma's Unicode \s).
bool IsWhiteSpace(char32_t cp);
uint8_t CombiningClass(char32_t cp);
// CaseFolding.txt, statuses C and S; cp itself when it does not fold.
char32_t SimpleFold(char32_t cp);
// UnicodeData.txt's simple upper and lower case mappings (cp when none).
char32_t ToUpper(char32_t cp);
char32_t ToLower(char32_t cp);
// Full case mappings (SpecialCasing.txt's unconditional ones, e.g. "ß" ->
// "SS"), as Python's str.upper() and str.lower(); appended to *out.
void AppendUpperFull(char32_t cp, std::u32string* out);
void AppendLowerFull(char32_t cp, std::u32string* out);
// Every code point whose simple case folding equals SimpleFold(cp), cp included.
std::vector<char32_t> CaseOrbit(char32_t cp);

// --- UTF-8 ---
// Decodes one code point at s[*pos], advancing *pos. Returns false on an
// invalid, overlong, surrogate or truncated sequence (and leaves *pos).
bool DecodeOne(std::string_view s, size_t* pos, char32_t* cp);
// Strict: false when `s` is not valid UTF-8.
bool DecodeUtf8(std::string_view s, std::u32string* out);
bool IsValidUtf8(std::string_view s);
void AppendUtf8(char32_t cp, std::string* out);
std::string ToUtf8(std::u32string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string Utf8Lossy(std::string_view bytes);
// Length of the longest prefix of `s` that ends on a complete code point
// boundary and does not end inside a sequence that could still be completed.
size_t CompleteUtf8Prefix(std::string_view s);

// Canonical composition (NFC), as Hugging Face tokenizers' NFC normaliser.
std::string Nfc(std::string_view utf8);

}  // namespace seer::unicode
