// A synthetic vocabulary for the guided-decoding benchmarks, shaped as
// byte-level BPE vocabularies are: the 256 bytes, then words with and
// without a leading space, numbers, punctuation runs, whitespace runs and
// multibyte characters, drawn from `seed` (the committed tokenizers are
// trimmed to a few hundred ids).
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace seer {

inline std::vector<std::optional<std::string>> SyntheticVocabulary(int size, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::optional<std::string>> v;
  for (int b = 0; b < 256; ++b) v.push_back(std::string(1, static_cast<char>(b)));
  const std::string letters = "etaoinshrdlcumwfgypbvkjxqz";
  const std::vector<std::string> punct = {",",    ".",  "\"",   ":",  "{",   "}",   "[",   "]",   "(",
                                          ")",    "-",  "'",    ";",  "\n",  "\":", "\",", "{\"", "},",
                                          "\n\n", "  ", "    ", "\t", "://", "...", "=\""};
  const std::vector<std::string> multibyte = {"\xc3\xa9", "\xc3\xb6", "\xe4\xb8\xad", "\xe2\x80\x99",
                                              "\xf0\x9f\x98\x80"};
  while (static_cast<int>(v.size()) < size) {
    std::string t;
    switch (rng() % 10) {
      case 0: t = std::to_string(rng() % 1000); break;
      case 1: t = punct[rng() % punct.size()] + (rng() % 2 ? punct[rng() % punct.size()] : ""); break;
      case 2:
        t = multibyte[rng() % multibyte.size()];
        if (rng() % 2) t += letters[rng() % 8];
        break;
      default: {
        if (rng() % 2) t = " ";
        const int n = 2 + static_cast<int>(rng() % 9);
        for (int k = 0; k < n; ++k) t += letters[std::min<size_t>(rng() % 26, rng() % 26)];
        if (rng() % 6 == 0) t[t[0] == ' ' ? 1 : 0] = static_cast<char>(std::toupper(t[t[0] == ' ' ? 1 : 0]));
      }
    }
    v.push_back(t);
  }
  return v;
}

}  // namespace seer
