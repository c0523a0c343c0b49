// Loading: what is refused (with an error naming the component and its
// type), what tokenizer_config.json contributes, and Decode's errors. The
// encode/decode behaviour itself is compared with Hugging Face in
// tokenizer_fixtures_test.
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

#include <unistd.h>

#include "text/text_test_util.h"
#include "text/unicode.h"

namespace seer {
namespace {

// A tiny byte-level tokenizer; `replace` swaps one fragment of it.
std::string TinyJson(const std::string& from = "", const std::string& to = "") {
  std::string j = R"({"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 9, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "he": 4, "ll": 5, "hell": 6, "hello": 7, "Ġ": 8},
              "merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"]]}})";
  if (!from.empty()) {
    const size_t at = j.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) j.replace(at, from.size(), to);
  }
  return j;
}

std::string LoadError(const std::string& json) {
  auto t = Tokenizer::FromJson(json);
  EXPECT_FALSE(t.ok());
  return t.ok() ? "" : t.status().message();
}

TEST(Tokenizer, TinyByteLevelEncodesAndDecodes) {
  auto t = Tokenizer::FromJson(TinyJson());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  auto ids = (*t)->Encode("hello<|end|>hell");
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_EQ(*ids, (std::vector<int32_t>{7, 9, 6}));
  EXPECT_EQ(*(*t)->Decode(*ids), "hello<|end|>hell");
  EXPECT_EQ(*(*t)->Decode(*ids, true), "hellohell");
  EXPECT_EQ((*t)->vocab_size(), 10);
  EXPECT_TRUE((*t)->IsSpecial(9));
  EXPECT_EQ((*t)->TokenToId("<|end|>"), 9);
  EXPECT_EQ((*t)->IdToToken(4), "he");
}

TEST(Tokenizer, UnknownComponentsAreRefusedByName) {
  EXPECT_NE(LoadError(TinyJson(R"("type": "BPE")", R"("type": "WordPiece")")).find("model: type 'WordPiece'"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("normalizer": null)", R"("normalizer": {"type": "Lowercase"})"))
                .find("normalizer: type 'Lowercase' is not supported"),
            std::string::npos);
  EXPECT_NE(
      LoadError(TinyJson(R"("normalizer": null)",
                         R"("normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "NFKC"}]})"))
          .find("normalizer.normalizers[1]: type 'NFKC'"),
      std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("pre_tokenizer": {"type": "ByteLevel")", R"("pre_tokenizer": {"type": "Whitespace")"))
                .find("pre_tokenizer: type 'Whitespace'"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("post_processor": {"type": "ByteLevel")", R"("post_processor": {"type": "Bert2")"))
                .find("post_processor: type 'Bert2'"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("decoder": {"type": "ByteLevel")", R"("decoder": {"type": "WordPiece")"))
                .find("decoder: type 'WordPiece'"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("truncation": null)", R"("truncation": {"max_length": 5})")).find("truncation"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("dropout": null)", R"("dropout": 0.1)")).find("dropout"), std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"("continuing_subword_prefix": null)", R"("continuing_subword_prefix": "##")"))
                .find("continuing_subword_prefix"),
            std::string::npos);
  EXPECT_NE(LoadError(TinyJson(R"(["hell", "o"])", R"(["hell", "x"])")).find("'x', which is not in the vocab"),
            std::string::npos);
  EXPECT_NE(
      LoadError(
          TinyJson(
              R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})",
              R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\bx"}, "behavior": "Isolated", "invert": false})"))
          .find("anchor \\b"),
      std::string::npos);
  EXPECT_NE(LoadError("{not json").find("tokenizer.json: line 1"), std::string::npos);
  // A Strip decoder's counts past any token (the fuzzer's 2.2e16, which the
  // incremental decoder narrowed to a wrong int) are refused by name.
  const std::string strip = R"("decoder": {"type": "Strip", "content": " ", "start": 1, "stop": 22222000689855304})";
  EXPECT_NE(
      LoadError(
          TinyJson(
              R"("decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})",
              strip))
          .find("stop 22222000689855304 must be at most 65536"),
      std::string::npos);
}

TEST(Tokenizer, LegacyMergeStringsAndEmptyPrefixAreAccepted) {
  auto t = Tokenizer::FromJson(
      TinyJson(R"([["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"]])", R"(["h e", "l l", "he ll", "hell o"])"));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(*(*t)->Encode("hello"), (std::vector<int32_t>{7}));
  EXPECT_TRUE(Tokenizer::FromJson(TinyJson(R"("end_of_word_suffix": null)", R"("end_of_word_suffix": "")")).ok());
}

TEST(Tokenizer, IgnoreMergesTakesWholeWordsFromTheVocab) {
  // "hel" only exists as a vocab entry no merge reaches; ignore_merges finds it.
  const std::string vocab_from = R"("Ġ": 8})", vocab_to = R"("Ġ": 8, "hel": 10})";
  auto plain = Tokenizer::FromJson(TinyJson(vocab_from, vocab_to));
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(*(*plain)->Encode("hel"), (std::vector<int32_t>{4, 2}));
  std::string j = TinyJson(vocab_from, vocab_to);
  j.replace(j.find(R"("ignore_merges": false)"), 22, R"("ignore_merges": true)");
  auto ignoring = Tokenizer::FromJson(j);
  ASSERT_TRUE(ignoring.ok());
  EXPECT_EQ(*(*ignoring)->Encode("hel"), (std::vector<int32_t>{10}));
}

TEST(Tokenizer, DecodeRefusesIdsOutsideTheVocabulary) {
  auto t = Tokenizer::FromJson(TinyJson());
  ASSERT_TRUE(t.ok());
  auto d = (*t)->Decode(std::vector<int32_t>{0, 99});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("id 99 at position 1"), std::string::npos);
  EXPECT_FALSE((*t)->Encode("\xC3").ok());  // not UTF-8
}

// DecodeBytes: each token's own bytes. Repaired (U+FFFD for invalid
// UTF-8) they are Decode's text; a byte-fallback token is its byte; with a
// byte-level decoder the tokens' bytes joined are the text's UTF-8 exactly,
// characters split over tokens included.
TEST(Tokenizer, DecodeBytesAreEachTokensOwnBytes) {
  const std::string text = "Grüße, 漢字 and 👩‍👩‍👧 emoji: ☃ ∮ ⸘";
  for (const char* family : {"llama3", "qwen2", "gpt2", "llama2", "mistral", "sp_metaspace_always"}) {
    SCOPED_TRACE(family);
    auto tok = Tokenizer::Load(std::string(SEER_FIXTURES_DIR) + "/tokenizers/" + family);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    auto ids = (*tok)->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    // (sp_metaspace_always's decoder has no ByteFallback: its byte tokens
    // show as "<0xC3>", as in Hugging Face's.)
    const bool fallback = std::string(family) == "llama2" || std::string(family) == "mistral";
    std::string joined;
    int partial = 0;
    for (int32_t id : *ids) {
      auto bytes = (*tok)->DecodeBytes(std::span<const int32_t>(&id, 1));
      auto shown = (*tok)->Decode(std::span<const int32_t>(&id, 1));
      ASSERT_TRUE(bytes.ok() && shown.ok()) << id;
      EXPECT_EQ(unicode::Utf8Lossy(*bytes), *shown) << "id " << id;
      if (*bytes != *shown) ++partial;
      const std::string piece = *(*tok)->IdToToken(id);
      if (fallback && piece.size() == 6 && piece.rfind("<0x", 0) == 0) {
        EXPECT_EQ(*bytes, std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)))) << piece;
      }
      joined += *bytes;
    }
    if (std::string(family) != "sp_metaspace_always") {
      EXPECT_GT(partial, 0) << "the text has characters split over tokens";
    }
    const bool byte_level =
        std::string(family) == "llama3" || std::string(family) == "qwen2" || std::string(family) == "gpt2";
    if (byte_level) EXPECT_EQ(joined, text);
  }
}

TEST(Tokenizer, LoadsADirectoryWithConfigAndChatTemplateFile) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("seer_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << TinyJson();
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"__type": "AddedToken", "content": "he"}, "eos_token": "<|end|>", "add_bos_token": true})";
  std::ofstream(dir / "chat_template.jinja") << "{{ messages }}";
  auto t = Tokenizer::Load(dir.string());
  fs::remove_all(dir);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const TokenizerConfig& c = (*t)->config();
  EXPECT_EQ(c.bos_token, "he");
  EXPECT_EQ(c.bos_token_id, 4);
  EXPECT_EQ(c.eos_token_id, 9);
  EXPECT_EQ(c.add_bos_token, true);
  EXPECT_EQ(c.chat_template, "{{ messages }}");
  auto missing = Tokenizer::Load("/nonexistent/tokenizer/dir");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(Tokenizer, RealFamilyConfigsExposeSpecialTokensAndTemplates) {
  auto llama = Tokenizer::Load(text_test::FixturePath("llama3"));
  ASSERT_TRUE(llama.ok()) << llama.status().ToString();
  EXPECT_EQ((*llama)->config().bos_token, "<|begin_of_text|>");
  EXPECT_EQ((*llama)->config().eos_token, "<|eot_id|>");
  EXPECT_TRUE((*llama)->config().bos_token_id.has_value());
  EXPECT_NE((*llama)->config().chat_template.find("Cutting Knowledge Date"), std::string::npos);
  auto qwen = Tokenizer::Load(text_test::FixturePath("qwen2") + "/tokenizer.json");
  ASSERT_TRUE(qwen.ok()) << qwen.status().ToString();
  EXPECT_EQ((*qwen)->config().bos_token, "");
  EXPECT_EQ((*qwen)->config().eos_token, "<|im_end|>");
}

// tokenizers' own AddedVocabulary tests (single_word, lstrip, rstrip),
// without their Lowercase normaliser: the model here knows single
// characters only, so the ids show exactly where added tokens matched and
// which text was left between them.
class AddedTokenRules : public ::testing::Test {
 protected:
  void Build(const std::vector<std::string>& tokens) {
    std::string added_tokens_json = "[";
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) added_tokens_json += ", ";
      added_tokens_json += tokens[i];
    }
    added_tokens_json += ']';
    std::string vocab = "{";
    int id = 0;
    for (const char* c : {" ", "\\t", ",", "-", "<", ">", "[", "]", "\\u25cc", "\\u0330", "\\u2000"}) {
      vocab += std::string(id ? ", " : "") + "\"" + c + "\": " + std::to_string(id);
      ++id;
    }
    for (char c = 'A'; c <= 'z'; ++c) {
      if (std::isalpha(static_cast<unsigned char>(c))) {
        vocab += ", \"" + std::string(1, c) + "\": " + std::to_string(id++);
      }
    }
    vocab += "}";
    model_size_ = id;  // added tokens get the ids after the model's (tokenizers' rule)
    const std::string json = R"({"version": "1.0", "added_tokens": )" + added_tokens_json +
                             R"(, "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"}, "model": {"type": "BPE", "vocab": )" +
                             vocab + R"(, "merges": []}})";
    auto t = Tokenizer::FromJson(json);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tok_ = std::move(*t);
  }
  // "T(content)" for an added token, the text otherwise.
  std::vector<std::string> Segments(const std::string& text) {
    auto ids = tok_->Encode(text, false);
    EXPECT_TRUE(ids.ok()) << ids.status().ToString();
    std::vector<std::string> out;
    std::vector<int32_t> run;
    auto flush = [&]() {
      if (!run.empty()) out.push_back(*tok_->Decode(run));
      run.clear();
    };
    for (int32_t id : *ids) {
      if (id >= model_size_) {
        flush();
        std::string seg = "T(";
        seg += *tok_->IdToToken(id);
        seg += ')';
        out.push_back(seg);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }
  static std::string Token(int id, const char* content, bool special, bool single_word, bool lstrip, bool rstrip) {
    auto b = [](bool v) { return v ? "true" : "false"; };
    return std::string("{\"id\": ") + std::to_string(id) + ", \"content\": \"" + content +
           "\", \"single_word\": " + b(single_word) + ", \"lstrip\": " + b(lstrip) + ", \"rstrip\": " + b(rstrip) +
           ", \"normalized\": false, \"special\": " + b(special) + "}";
  }
  std::unique_ptr<Tokenizer> tok_;
  int model_size_ = 0;
};

using Segs = std::vector<std::string>;

TEST_F(AddedTokenRules, SingleWord) {
  Build({Token(100, "<mask>", false, true, false, false)});
  EXPECT_EQ(Segments("<mask> My name <mask> A<mask> <mask>ony <mask>"),
            (Segs{"T(<mask>)", " My name ", "T(<mask>)", " A<mask> <mask>ony ", "T(<mask>)"}));
  // Punctuation and dashes are not word characters; a combining mark is.
  EXPECT_EQ(Segments("<mask>, <mask>- \u25cc\u0330<mask>"),
            (Segs{"T(<mask>)", ", ", "T(<mask>)", "- \u25cc\u0330<mask>"}));
}

TEST_F(AddedTokenRules, LstripRstripTakeUnicodeSpaces) {
  Build({Token(100, "<mask>", false, true, true, true)});
  EXPECT_EQ(Segments("Hi <mask> there\t<mask>\t<mask>\u2000"),
            (Segs{"Hi", "T(<mask>)", "there", "T(<mask>)", "T(<mask>)"}));
}

TEST_F(AddedTokenRules, OptionsTogether) {
  Build({Token(100, "my", false, false, true, true), Token(101, "name", false, false, false, false),
         Token(102, "ony", false, true, false, false), Token(103, "[CLS]", true, false, false, false),
         Token(104, "[SEP]", true, false, false, false)});
  EXPECT_EQ(Segments("[CLS] my name is Anthony [SEP]"),
            (Segs{"T([CLS])", "T(my)", "T(name)", " is Anthony ", "T([SEP])"}));
}

}  // namespace
}  // namespace seer
