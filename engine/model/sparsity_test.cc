#include "engine/model/sparsity.h"

#include <gtest/gtest.h>

namespace seer {
namespace {

TEST(ParseSparsity, Dense) {
  auto s = ParseSparsity("dense");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kDense);
  EXPECT_TRUE(s->last_block_dense);
}

TEST(ParseSparsity, Threshold) {
  auto s = ParseSparsity("threshold=0.002");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kThreshold);
  EXPECT_DOUBLE_EQ(s->threshold, 0.002);

  auto zero = ParseSparsity("threshold=0");
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ(zero->threshold, 0.0);

  auto sci = ParseSparsity("threshold=5e-4");
  ASSERT_TRUE(sci.ok());
  EXPECT_DOUBLE_EQ(sci->threshold, 5e-4);
}

TEST(ParseSparsity, NzRatio) {
  auto s = ParseSparsity("nz_ratio=0.1");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kNzRatio);
  EXPECT_DOUBLE_EQ(s->nz_ratio, 0.1);
  auto one = ParseSparsity("nz_ratio=1");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->nz_ratio, 1.0);
}

TEST(ParseSparsity, LastBlockDenseComesFromBase) {
  SparsityConfig base;
  base.last_block_dense = false;
  auto s = ParseSparsity("threshold=0.01", base);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->last_block_dense);
  auto d = ParseSparsity("dense", base);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->last_block_dense);
}

TEST(ParseSparsity, LastBlockDenseSuffix) {
  auto s = ParseSparsity("nz_ratio=0.5;last_block_dense=false");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kNzRatio);
  EXPECT_FALSE(s->last_block_dense);
  SparsityConfig base;
  base.last_block_dense = false;
  auto t = ParseSparsity("threshold=0.1;last_block_dense=true", base);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->last_block_dense);
  auto bad = ParseSparsity("threshold=0.1;last_block_dense=maybe");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("maybe"), std::string::npos);
  auto unknown = ParseSparsity("threshold=0.1;block=32");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("block=32"), std::string::npos);
}

// Each bad input is rejected, and the message names the text and the limit.
TEST(ParseSparsity, RejectsWithMessages) {
  struct Case {
    const char* text;
    const char* must_mention;
  };
  const Case cases[] = {
      {"threshold=1", "0 <= T < 1"},      {"threshold=1.5", "0 <= T < 1"},
      {"threshold=-0.1", "0 <= T < 1"},   {"threshold=abc", "'abc'"},
      {"threshold=", "not a finite"},     {"threshold=nan", "not a finite"},
      {"threshold=inf", "not a finite"},  {"threshold=0.1x", "'0.1x'"},
      {"nz_ratio=0", "0 < R <= 1"},       {"nz_ratio=1.0001", "0 < R <= 1"},
      {"nz_ratio=-1", "0 < R <= 1"},      {"nz_ratio= 0.5", "not a finite"},
      {"sparse", "expected 'dense'"},     {"topk=3", "unknown mode 'topk'"},
      {"", "expected 'dense'"},           {"Dense", "expected 'dense'"},
  };
  for (const Case& c : cases) {
    auto s = ParseSparsity(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(s.status().message().find(std::string("'") + c.text + "'"), std::string::npos)
        << c.text << " -> " << s.status().message();
    EXPECT_NE(s.status().message().find(c.must_mention), std::string::npos)
        << c.text << " -> " << s.status().message();
  }
}

TEST(SparsityToString, RoundTrips) {
  SparsityConfig s;
  EXPECT_EQ(SparsityToString(s), "dense");
  s.mode = SparsityMode::kThreshold;
  s.threshold = 0.002;
  EXPECT_EQ(SparsityToString(s), "threshold=0.002");
  s.mode = SparsityMode::kNzRatio;
  s.nz_ratio = 0.1;
  EXPECT_EQ(SparsityToString(s), "nz_ratio=0.1");
  for (const char* text : {"dense", "threshold=0.0005", "threshold=0.123456789", "nz_ratio=0.75", "nz_ratio=1"}) {
    auto parsed = ParseSparsity(text);
    ASSERT_TRUE(parsed.ok()) << text;
    EXPECT_EQ(SparsityToString(*parsed), text);
  }
}

}  // namespace
}  // namespace seer
