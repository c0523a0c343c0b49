// Our tokenizer against Hugging Face tokenizers 0.23.2 on the committed
// vectors (tests/fixtures/tokenizers/<family>/vectors.json): ids with and
// without special tokens, decode with and without skip_special_tokens, the
// normaliser's output, the pre-tokenizer's pieces, decodes of random id
// streams, and the ids of a long generated document, for every family.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "text/text_test_util.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

namespace seer {
namespace {

using text_test::Ids;
using text_test::LoadJson;
using text_test::Show;
using text_test::Str;

const std::vector<std::string> kFamilies = {"llama3",  "llama3_legacy_merges", "qwen2", "gpt2", "roberta", "llama2",
                                            "mistral", "sp_metaspace_always"};

class TokenizerFixtures : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto tok = Tokenizer::Load(text_test::FixturePath(GetParam()));
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(*tok);
    vectors_ = LoadJson(GetParam() + "/vectors.json");
    ASSERT_TRUE(vectors_.is_object());
  }
  std::unique_ptr<Tokenizer> tok_;
  JsonValue vectors_;
};

TEST_P(TokenizerFixtures, EncodeEqualsHuggingFace) {
  int checked = 0;
  for (const JsonValue& c : vectors_.Find("cases")->as_array()) {
    const std::string& text = Str(c, "text");
    auto with = tok_->Encode(text, true);
    ASSERT_TRUE(with.ok()) << Show(text) << ": " << with.status().ToString();
    EXPECT_EQ(*with, Ids(c.Find("ids"))) << Show(text);
    auto without = tok_->Encode(text, false);
    ASSERT_TRUE(without.ok()) << without.status().ToString();
    EXPECT_EQ(*without, Ids(c.Find("ids_no_special"))) << Show(text);
    checked += 2;
  }
  RecordProperty("vectors", checked);
  EXPECT_GT(checked, 200);
}

TEST_P(TokenizerFixtures, DecodeEqualsHuggingFace) {
  int checked = 0;
  for (const JsonValue& c : vectors_.Find("cases")->as_array()) {
    const std::vector<int32_t> ids = Ids(c.Find("ids"));
    auto d = tok_->Decode(ids, false);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(*d, Str(c, "decode")) << Show(Str(c, "text"));
    auto s = tok_->Decode(ids, true);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(*s, Str(c, "decode_skip")) << Show(Str(c, "text"));
    checked += 2;
  }
  for (const JsonValue& st : vectors_.Find("streams")->as_array()) {
    const std::vector<int32_t> ids = Ids(st.Find("ids"));
    auto d = tok_->Decode(ids, false);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(*d, Str(st, "decode")) << ::testing::PrintToString(ids);
    auto s = tok_->Decode(ids, true);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(*s, Str(st, "decode_skip")) << ::testing::PrintToString(ids);
    checked += 2;
  }
  RecordProperty("vectors", checked);
}

TEST_P(TokenizerFixtures, NormalizerAndPreTokenizerEqualHuggingFace) {
  int checked = 0;
  for (const JsonValue& c : vectors_.Find("cases")->as_array()) {
    const std::string& text = Str(c, "text");
    if (const JsonValue* n = c.Find("normalized")) {
      auto got = tok_->Normalize(text);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, n->as_string()) << Show(text);
      ++checked;
    }
    if (const JsonValue* p = c.Find("pretokens")) {
      auto got = tok_->PreTokenize(text);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      std::vector<std::string> want;
      for (const JsonValue& x : p->as_array()) want.push_back(x.as_string());
      EXPECT_EQ(*got, want) << Show(text);
      ++checked;
    }
  }
  RecordProperty("vectors", checked);
}

uint64_t Fnv1a64(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    for (int k = 0; k < 4; ++k) {
      h ^= (static_cast<uint32_t>(id) >> (8 * k)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

// The document of make_tokenizer_fixtures.py's long_document().
std::string LongDocument(const std::vector<std::string>& frags, int n) {
  uint64_t x = 0x2545F4914F6CDD1Dull;
  std::string out;
  for (int i = 0; i < n; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out += frags[(x >> 33) % frags.size()];
  }
  return out;
}

TEST_P(TokenizerFixtures, LongDocumentIdsEqualHuggingFace) {
  const JsonValue strings = LoadJson("strings.json");
  std::vector<std::string> frags;
  for (const JsonValue& f : strings.Find("long_doc_fragments")->as_array()) frags.push_back(f.as_string());
  const JsonValue* ld = vectors_.Find("long_doc");
  ASSERT_NE(ld, nullptr);
  const std::string doc = LongDocument(frags, static_cast<int>(ld->Find("fragments")->as_int64()));
  auto ids = tok_->Encode(doc, false);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(static_cast<int64_t>(ids->size()), ld->Find("count")->as_int64());
  char hash[20];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(Fnv1a64(*ids)));
  EXPECT_EQ(std::string(hash), Str(*ld, "fnv1a64"));
}

// Incremental decoding: pieces never split a UTF-8 character and add up to
// Decode(all), on the test strings' ids and on random id streams.
TEST_P(TokenizerFixtures, IncrementalDecodeAddsUpToDecode) {
  std::vector<std::vector<int32_t>> streams;
  for (const JsonValue& c : vectors_.Find("cases")->as_array()) streams.push_back(Ids(c.Find("ids")));
  std::mt19937 rng(42);
  const int32_t n = tok_->vocab_size();
  for (int k = 0; k < 300; ++k) {
    std::vector<int32_t> ids(1 + rng() % 40);
    for (int32_t& id : ids) {
      // Mix uniform ids with low ids (bytes, specials) and repeats.
      const uint32_t r = rng() % 4;
      id = r == 0 ? static_cast<int32_t>(rng() % std::min(n, 300)) : static_cast<int32_t>(rng() % n);
      while (!tok_->IdToToken(id)) id = static_cast<int32_t>(rng() % n);
    }
    streams.push_back(ids);
  }
  for (bool skip : {false, true}) {
    IncrementalDecoder dec(*tok_, skip);
    for (const auto& ids : streams) {
      std::string all;
      for (int32_t id : ids) {
        auto piece = dec.Step(id);
        ASSERT_TRUE(piece.ok()) << piece.status().ToString();
        EXPECT_TRUE(unicode::IsValidUtf8(*piece)) << ::testing::PrintToString(ids);
        all += *piece;
      }
      auto rest = dec.Finish();
      ASSERT_TRUE(rest.ok()) << rest.status().ToString();
      all += *rest;
      auto want = tok_->Decode(ids, skip);
      ASSERT_TRUE(want.ok());
      EXPECT_EQ(all, *want) << ::testing::PrintToString(ids);
    }
  }
}

// One tokenizer shared by several threads (the BPE cache is shared).
TEST_P(TokenizerFixtures, ConcurrentEncodesAgree) {
  const auto& cases = vectors_.Find("cases")->as_array();
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases.size() * 2; i += 3) {
        const JsonValue& c = cases[i % cases.size()];
        auto ids = tok_->Encode(Str(c, "text"), true);
        if (!ids.ok() || *ids != Ids(c.Find("ids"))) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerFixtures, ::testing::ValuesIn(kFamilies));

}  // namespace
}  // namespace seer
