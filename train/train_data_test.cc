// train/train_data: documents from a file or a directory tokenized with the
// model's tokenizer (checked against the tokenizer on each file alone), and
// the seeded order of the packed sequences.

#include "train/train_data.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "tests/fixture_reader.h"

namespace seer::train {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("seer_train_data_" + std::to_string(getpid()) + "_" + name)) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string Write(const std::string& relative, const std::string& text) const {
    const fs::path p = path_ / relative;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

std::unique_ptr<Tokenizer> FixtureTokenizer() {
  auto t = Tokenizer::Load(fixtures::Path("llama"));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(TokenizeText, DirectoryDocumentsInPathOrderEachWithBosAndEos) {
  auto tok = FixtureTokenizer();
  ASSERT_NE(tok, nullptr);
  TempDir dir("docs");
  const std::string a = "the quick brown fox", b = "jumps over\nthe lazy dog", c = "a third document";
  dir.Write("b/2.txt", b);
  dir.Write("a.txt", a);
  dir.Write("b/3.md", c);
  dir.Write(".hidden", "never read");
  dir.Write(".git/objects/x", "never read");
  for (int threads : {1, 3}) {
    auto s = TokenizeText(dir.path(), *tok, threads);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ(s->documents, 3);
    std::vector<int32_t> want;
    for (const std::string& text : {a, b, c}) {
      auto ids = tok->Encode(text, true);
      ASSERT_TRUE(ids.ok());
      want.insert(want.end(), ids->begin(), ids->end());
      want.push_back(*tok->config().eos_token_id);
    }
    EXPECT_EQ(s->ids, want) << threads << " threads";
    ASSERT_TRUE(tok->config().bos_token_id.has_value());
    EXPECT_EQ(s->ids.front(), *tok->config().bos_token_id);
  }
}

TEST(TokenizeText, ASingleFileIsOneDocument) {
  auto tok = FixtureTokenizer();
  ASSERT_NE(tok, nullptr);
  TempDir dir("file");
  const std::string path = dir.Write("one.txt", "hello there");
  auto s = TokenizeText(path, *tok, 2);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->documents, 1);
  auto ids = tok->Encode("hello there", true);
  ASSERT_TRUE(ids.ok());
  ids->push_back(*tok->config().eos_token_id);
  EXPECT_EQ(s->ids, *ids);
}

// Links are followed, to directories as to files; a file reached twice
// (here through two links to one directory, and a file link) is read once,
// at its first path in sorted order; a link cycle ends.
TEST(TokenizeText, LinkedDirectoriesAreReadOnceAndCyclesEnd) {
  auto tok = FixtureTokenizer();
  ASSERT_NE(tok, nullptr);
  TempDir outside("linked_outside");
  outside.Write("x.txt", "a linked document");
  TempDir dir("linked");
  dir.Write("a.txt", "the quick brown fox");
  std::filesystem::create_directory_symlink(outside.path(), dir.path() + "/b_link");
  std::filesystem::create_directory_symlink(outside.path(), dir.path() + "/c_again");
  std::filesystem::create_directory_symlink(dir.path(), dir.path() + "/d_cycle");
  std::filesystem::create_symlink(outside.path() + "/x.txt", dir.path() + "/e_file_link.txt");
  auto s = TokenizeText(dir.path(), *tok, 1);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->documents, 2);
  // The same documents in the same order as the files without the links.
  TempDir plain("linked_plain");
  plain.Write("a.txt", "the quick brown fox");
  plain.Write("b/x.txt", "a linked document");
  auto want = TokenizeText(plain.path(), *tok, 1);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(s->ids, want->ids);
}

TEST(TokenizeText, RefusesWhatIsNotText) {
  auto tok = FixtureTokenizer();
  ASSERT_NE(tok, nullptr);
  TempDir dir("bad");
  const std::string bin = dir.Write("blob.bin", std::string("ab\0cd", 5));
  auto s = TokenizeText(dir.path(), *tok, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find(bin), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("NUL"), std::string::npos) << s.status().message();
  auto missing = TokenizeText(dir.path() + "/nope", *tok, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  TempDir empty("empty");
  auto none = TokenizeText(empty.path(), *tok, 1);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no files"), std::string::npos);
}

TEST(SequenceOrder, EachEpochDrawsEverySequenceOnce) {
  SequenceOrder order(10 * 100 + 37, 100, 42);  // the 37-token tail is dropped
  ASSERT_EQ(order.num_sequences(), 10);
  std::vector<int64_t> first_epoch;
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<int64_t> seen;
    std::vector<int64_t> drawn;
    for (int i = 0; i < 10; ++i) {
      const int64_t s = order.Start(epoch * 10 + i);
      EXPECT_EQ(s % 100, 0);
      EXPECT_LT(s, 1000);
      seen.insert(s);
      drawn.push_back(s);
    }
    EXPECT_EQ(seen.size(), 10u) << "epoch " << epoch;
    if (epoch == 0) {
      first_epoch = drawn;
      std::vector<int64_t> identity;
      for (int i = 0; i < 10; ++i) identity.push_back(i * 100);
      EXPECT_NE(drawn, identity) << "the order is shuffled";
    } else {
      EXPECT_NE(drawn, first_epoch) << "each epoch has its own order";
    }
  }
}

TEST(SequenceOrder, DrawsDependOnlyOnSeedAndIndex) {
  SequenceOrder a(5000, 50, 7), b(5000, 50, 7), c(5000, 50, 8);
  // b asks out of order (as a resumed run starts mid-way), a in order.
  std::vector<int64_t> late;
  for (int n = 250; n < 260; ++n) late.push_back(b.Start(n));
  const int64_t early = b.Start(3);
  for (int n = 0; n < 260; ++n) {
    const int64_t s = a.Start(n);
    if (n == 3) {
      EXPECT_EQ(s, early);
    }
    if (n >= 250) {
      EXPECT_EQ(s, late[n - 250]) << n;
    }
  }
  int differ = 0;
  for (int n = 0; n < 100; ++n) differ += SequenceOrder(5000, 50, 7).Start(n) != c.Start(n);
  EXPECT_GT(differ, 50) << "another seed, another order";
}

}  // namespace
}  // namespace seer::train
