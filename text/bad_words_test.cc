// BadWordSequences on real tokenizers: each sequence decodes back to the word
// or to the word after a space; the spaced form is there exactly when it
// starts with another token and is as long (vLLM's rule); leading
// whitespace is stripped, and an empty word bans nothing.
#include "text/bad_words.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "text/text_test_util.h"

namespace seer {
namespace {

using text_test::LoadTokenizer;

TEST(BadWords, EachSequenceSpellsTheWordPlainOrAfterASpace) {
  for (const char* family : {"llama3", "llama2", "qwen2"}) {
    SCOPED_TRACE(family);
    std::unique_ptr<Tokenizer> tok = LoadTokenizer(family);
    ASSERT_NE(tok, nullptr);
    const std::vector<std::string> words = {"hello", "  world", "Antidisestablishmentarianism", "漢字", "x y"};
    auto got = BadWordSequences(*tok, words);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    size_t next = 0;
    for (const std::string& word : words) {
      const std::string bare = word.substr(word.find_first_not_of(' '));
      ASSERT_LT(next, got->size());
      // The plain form first, always.
      EXPECT_EQ(tok->Decode((*got)[next], false).value(), bare);
      ++next;
      // The spaced form when it is a different first token and as long.
      auto spaced = tok->Encode(" " + bare, false);
      ASSERT_TRUE(spaced.ok());
      auto plain = tok->Encode(bare, false);
      if (spaced->front() != plain->front() && spaced->size() == plain->size()) {
        ASSERT_LT(next, got->size());
        EXPECT_EQ((*got)[next], *spaced);
        EXPECT_EQ(tok->Decode((*got)[next], false).value(), " " + bare);
        ++next;
      }
    }
    EXPECT_EQ(next, got->size());
  }
  // An empty word, or one of whitespace alone, bans nothing.
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  auto none = BadWordSequences(*tok, {"", "   ", "\t\u00a0\u3000\x1f"});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  // Leading Unicode whitespace goes as Python's str.lstrip() takes it.
  EXPECT_EQ(BadWordSequences(*tok, {"\u00a0\u2003hello"}).value(), BadWordSequences(*tok, {"hello"}).value());
}

}  // namespace
}  // namespace seer
