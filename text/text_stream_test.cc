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

#include "text/text_test_util.h"

namespace seer {
namespace {

using text_test::LoadTokenizer;

// Runs ids through a stream; the text released step by step, whether it stopped.
std::pair<std::string, bool> Stream(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                    const std::vector<std::string>& stops, std::vector<std::string>* pieces = nullptr,
                                    bool include_stops = false) {
  TextStream s(tok, stops, /*skip_special_tokens=*/true, include_stops);
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
    std::unique_ptr<Tokenizer> tok = LoadTokenizer(family);
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
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
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
      // include_stop_str_in_output: the same text and the stop string.
      auto [with, also] = Stream(*tok, *ids, {"\x01never", stop}, nullptr, /*include_stops=*/true);
      EXPECT_TRUE(also) << stop;
      EXPECT_EQ(with, full.substr(0, full.find(stop)) + stop) << "stop '" << stop << "'";
    }
  }
}

TEST(TextStream, IncludedStopsAreTheOneThatAppearedFirst) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("Hello, world", false);
  ASSERT_TRUE(ids.ok());
  auto include = [&](std::vector<std::string> stops) { return Stream(*tok, *ids, stops, nullptr, true).first; };
  // The earliest start wins; of two starting together, the shorter (it was
  // complete first).
  EXPECT_EQ(include({"orld", "lo,"}), "Hello,");
  EXPECT_EQ(include({"world", "wo"}), "Hello, wo");
  EXPECT_EQ(include({"Hello"}), "Hello");
  // Never found: the whole text, as without include.
  EXPECT_EQ(include({"world!"}), "Hello, world");
}

TEST(TextStream, HoldsBackAPossibleStartOfAStopAndReleasesItAtTheEnd) {
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama3");
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
  std::unique_ptr<Tokenizer> tok = LoadTokenizer("llama2");
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

// A reply's first `armed_after` tokens (min_new_tokens) cannot stop it: the
// output is the decoded text up to the first stop string that ends in the
// text of a later token, whichever earlier text it starts in.
TEST(TextStream, StopsUnarmedForTheFirstTokensCountOnlyWhenTheyEndAfterThem) {
  std::mt19937 rng(11);
  for (const char* family : {"llama3", "llama2"}) {
    std::unique_ptr<Tokenizer> tok = LoadTokenizer(family);
    ASSERT_NE(tok, nullptr);
    int cut_early = 0, straddled = 0;
    for (const std::string& text : kTexts) {
      auto ids = tok->Encode(text, false);
      ASSERT_TRUE(ids.ok());
      const std::string full = *tok->Decode(*ids, true);
      // The text final after each token, as the incremental decoder makes it.
      std::vector<size_t> final_after;
      IncrementalDecoder dec(*tok, true);
      size_t made = 0;
      for (int32_t id : *ids) {
        made += dec.Step(id)->size();
        final_after.push_back(made);
      }
      // Whole UTF-8 characters of the text from `at`, about `len` bytes.
      auto piece = [&](size_t at, size_t len) {
        std::string stop = full.substr(at, len);
        while (!stop.empty() && (static_cast<unsigned char>(stop.back()) & 0xC0) == 0x80) stop.pop_back();
        if (!stop.empty() && (static_cast<unsigned char>(stop.back()) & 0x80) != 0) stop.pop_back();
        if (!stop.empty() && (static_cast<unsigned char>(stop[0]) & 0xC0) == 0x80) stop.clear();
        return stop;
      };
      for (int trial = 0; trial < 600; ++trial) {
        const size_t at = std::uniform_int_distribution<size_t>(0, full.size() - 1)(rng);
        const size_t len = std::uniform_int_distribution<size_t>(1, std::min<size_t>(8, full.size() - at))(rng);
        // One stop string, or two where the second extends the first (so a
        // held-back start of the longer one can hold the whole shorter one).
        std::vector<std::string> stops = {piece(at, len)};
        if (stops[0].empty()) continue;
        if (trial % 2 == 1) stops.push_back(piece(at, len + 4));
        const int armed_after = std::uniform_int_distribution<int>(0, static_cast<int>(ids->size()))(rng);
        const size_t unarmed_text = armed_after == 0 ? 0 : final_after[armed_after - 1];
        // The reference: the first occurrence that ends past the unarmed text.
        size_t want_at = std::string::npos, first_at = std::string::npos;
        for (const std::string& stop : stops) {
          size_t found = full.find(stop);
          first_at = std::min(first_at, found);
          while (found != std::string::npos && found + stop.size() <= unarmed_text) found = full.find(stop, found + 1);
          want_at = std::min(want_at, found);
        }
        if (want_at != first_at) ++cut_early;
        if (want_at != std::string::npos && want_at < unarmed_text) ++straddled;

        TextStream s(*tok, stops);
        std::string out;
        bool stopped = false;
        for (size_t i = 0; i < ids->size() && !stopped; ++i) {
          auto p = s.Push((*ids)[i], /*stops_armed=*/static_cast<int>(i) >= armed_after);
          ASSERT_TRUE(p.ok());
          out += p->text;
          stopped = p->stopped;
        }
        if (!stopped) {
          auto rest = s.Finish(/*stops_armed=*/armed_after < static_cast<int>(ids->size()));
          ASSERT_TRUE(rest.ok());
          out += *rest;
          stopped = s.stopped();
        }
        EXPECT_EQ(stopped, want_at != std::string::npos)
            << family << " stop '" << stops[0] << "' after " << armed_after;
        EXPECT_EQ(out, full.substr(0, want_at)) << family << " stop '" << stops[0] << "' after " << armed_after;
      }
    }
    // The cases that tell the rule apart happened: an earlier occurrence
    // passed over, and one that starts in the unarmed text and ends after it.
    EXPECT_GT(cut_early, 20) << family;
    EXPECT_GT(straddled, 5) << family;
  }
}

}  // namespace
}  // namespace seer
