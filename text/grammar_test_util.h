// Helpers for tests of grammars (text/grammar.h): random sentences.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "text/grammar.h"

namespace seer::grammar_test {

// A random sentence: from the start, a random byte among those that may
// come next, until the text is complete and a coin says stop. Closing bytes
// are favoured so that walks through recursive rules end. nullopt when the
// walk ran past `max_bytes`. A walk that reaches a dead end (no byte may
// come and the text is not a sentence) is a failure: the compiler prunes
// those.
inline std::optional<std::string> RandomSentence(const Grammar& grammar, std::mt19937& rng, size_t max_bytes = 2000) {
  GrammarMatcher matcher(grammar);
  std::string text;
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  while (true) {
    if (matcher.complete() && (!matcher.can_continue() || coin(rng) < 0.3)) return text;
    if (!matcher.can_continue()) {
      ADD_FAILURE() << "dead end after " << text;
      return std::nullopt;
    }
    if (text.size() >= max_bytes) return std::nullopt;
    const ByteSet next = matcher.NextBytes();
    std::vector<uint8_t> all, closing;
    for (int b = 0; b < 256; ++b) {
      if (!next.Contains(static_cast<uint8_t>(b))) continue;
      all.push_back(static_cast<uint8_t>(b));
      if (b == '"' || b == '}' || b == ']') closing.push_back(static_cast<uint8_t>(b));
    }
    const auto pick = [&](const std::vector<uint8_t>& from) {
      return from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
    };
    const double r = coin(rng);
    uint8_t byte = 0;
    if (!closing.empty() && r < 0.4) {
      byte = pick(closing);
    } else if (next.Contains('\\') && r < 0.45) {
      byte = '\\';  // escapes are one byte among ~200 otherwise
    } else {
      byte = pick(all);
    }
    if (!matcher.Advance(byte)) {
      ADD_FAILURE() << "NextBytes offered byte " << int{byte} << " that Advance refused after " << text;
      return std::nullopt;
    }
    text.push_back(static_cast<char>(byte));
  }
}

}  // namespace seer::grammar_test
