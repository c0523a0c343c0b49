// TextStream against the whole decode: without stop strings its pieces add up
// to Decode(ids, skip_special_tokens); with them, the output is exactly the
// decoded text up to the first stop string, found wherever it falls (inside a
// token, across tokens, at the very start), and nothing is released that a
// later token could turn into a stop string.
#include "text/text_stream.h"

#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/json.h"

namespace seer {
namespace {

std::unique_ptr<Tokenizer> Load(const std::string& family) {
  auto t = Tokenizer::Load(std::string(SEER_FIXTURES_DIR) + "/tokenizers/" + family);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

// Runs ids through a stream; the text released step by step, whether it stopped.
std::pair<std::string, bool> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                    const std::vector<std::string>& stops, std::vector<std::string>* pieces = nullptr) {
  TextStream s(tok, stops);
  std::string out;
  for (int32_t id : ids) {
    auto p = s.Push(id);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    out += p->text;
    if (pieces) pieces->push_back(p->text);
    if (p->stopped) return {out, true};
  }
  auto rest = s.Finish();
  EXPECT_TRUE(rest.ok());
  return {out + *rest, false};
}

const std::vector<std::string> kTexts = {
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Numbers 1234567 and 89, then ünïcödé, 漢字 and emoji 👩‍👩‍👧 too.\n\nNew paragraph\twith tabs.",
    "  leading spaces, trailing spaces  ",
};

TEST(TextStream, WithoutStopsItIsTheWholeDecode) {
  for (const char* family : {"llama3", "llama2", "qwen2"}) {
    std::unique_ptr<Tokenizer> tok = Load(family);
    ASSERT_NE(tok, nullptr);
    for (const std::string& text : kTexts) {
      auto ids = tok->Encode(text, true);
      ASSERT_TRUE(ids.ok());
      auto want = tok->Decode(*ids, true);
      ASSERT_TRUE(want.ok());
      EXPECT_EQ(Stream(*tok, *ids, {}).first, *want) << family << ": " << text;
    }
  }
}

TEST(TextStream, CutsJustBeforeTheFirstStopStringWhereverItFalls) {
  std::unique_ptr<Tokenizer> tok = Load("llama3");
  ASSERT_NE(tok, nullptr);
  std::mt19937 rng(7);
  for (const std::string& text : kTexts) {
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    const std::string full = *tok->Decode(*ids, true);
    // Every stop string taken from the decoded text itself, at random places
    // and lengths: the output is the text before its first occurrence.
    for (int trial = 0; trial < 200; ++trial) {
      const size_t at = std::uniform_int_distribution<size_t>(0, full.size() - 1)(rng);
      const size_t len = std::uniform_int_distribution<size_t>(1, std::min<size_t>(12, full.size() - at))(rng);
      std::string stop = full.substr(at, len);
      // Keep whole UTF-8 characters (a stop string is text).
      while (!stop.empty() && (static_cast<unsigned char>(stop.back()) & 0xC0) == 0x80) stop.pop_back();
      if (!stop.empty() && (static_cast<unsigned char>(stop.back()) & 0x80) != 0) stop.pop_back();
      if (stop.empty() || (static_cast<unsigned char>(stop[0]) & 0xC0) == 0x80) continue;
      std::vector<std::string> pieces;
      auto [out, stopped] = Stream(*tok, *ids, {"\x01never", stop}, &pieces);
      EXPECT_TRUE(stopped) << stop;
      EXPECT_EQ(out, full.substr(0, full.find(stop))) << "stop '" << stop << "'";
    }
  }
}

TEST(TextStream, HoldsBackAPossibleStartOfAStopAndReleasesItAtTheEnd) {
  std::unique_ptr<Tokenizer> tok = Load("llama3");
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("Hello, world", false);
  ASSERT_TRUE(ids.ok());
  std::vector<std::string> pieces;
  // "world!" never completes: "world" is held until the end, then released.
  auto [out, stopped] = Stream(*tok, *ids, {"world!"}, &pieces);
  EXPECT_FALSE(stopped);
  EXPECT_EQ(out, "Hello, world");
  std::string before_finish;
  for (const std::string& p : pieces) before_finish += p;
  EXPECT_EQ(before_finish.find("world"), std::string::npos) << before_finish;
  // The earliest of several stops wins; a stop at the very start gives nothing.
  EXPECT_EQ(Stream(*tok, *ids, {"orld", "lo,"}).first, "Hel");
  EXPECT_EQ(Stream(*tok, *ids, {"Hello"}).first, "");
}

// Text the decoder holds until the end (bytes that never complete a UTF-8
// character, released by Finish as U+FFFD) can hold a stop string: Finish
// cuts before it and the stream reports stopped(), so the reply ends for a
// "stop", not for its length.
TEST(TextStream, AStopStringThatOnlyFinishReleasesStillStops) {
  std::unique_ptr<Tokenizer> tok = Load("llama2");
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("ab", false);
  ASSERT_TRUE(ids.ok());
  // The first three bytes of U+1F469 as byte-fallback tokens: the character
  // is never completed.
  for (const char* byte : {"<0xF0>", "<0x9F>", "<0x91>"}) {
    const std::optional<int32_t> id = tok->TokenToId(byte);
    ASSERT_TRUE(id.has_value()) << byte;
    ids->push_back(*id);
  }
  const std::string whole = *tok->Decode(*ids, true);
  const size_t bad = whole.find("\xEF\xBF\xBD");
  ASSERT_NE(bad, std::string::npos) << "the decode ends in U+FFFD: " << whole;
  TextStream s(*tok, {"\xEF\xBF\xBD"});
  std::string out;
  for (int32_t id : *ids) {
    auto p = s.Push(id);
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(p->stopped) << "the bytes are held until the end";
    out += p->text;
  }
  EXPECT_FALSE(s.stopped());
  auto rest = s.Finish();
  ASSERT_TRUE(rest.ok());
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(out + *rest, whole.substr(0, bad));
}

}  // namespace
}  // namespace seer
