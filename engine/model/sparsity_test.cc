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

TEST(ParseSparsity, Streaming) {
  auto s = ParseSparsity("streaming=1,8");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kStreaming);
  EXPECT_EQ(s->streaming_sink, 1);
  EXPECT_EQ(s->streaming_window, 8);
  EXPECT_TRUE(s->last_block_dense);
  auto no_sink = ParseSparsity("streaming=0,1;last_block_dense=false");
  ASSERT_TRUE(no_sink.ok()) << no_sink.status().ToString();
  EXPECT_EQ(no_sink->streaming_sink, 0);
  EXPECT_EQ(no_sink->streaming_window, 1);
  EXPECT_FALSE(no_sink->last_block_dense);
  auto most = ParseSparsity("streaming=1048576,1048576");
  ASSERT_TRUE(most.ok()) << most.status().ToString();
  EXPECT_TRUE(IsBaselineSparsity(s->mode));
}

TEST(ParseSparsity, Oracle) {
  auto s = ParseSparsity("oracle=0.2");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->mode, SparsityMode::kOracle);
  EXPECT_DOUBLE_EQ(s->oracle_ratio, 0.2);
  EXPECT_TRUE(IsBaselineSparsity(s->mode));
  EXPECT_FALSE(IsBaselineSparsity(SparsityMode::kNzRatio));
  auto one = ParseSparsity("oracle=1");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->oracle_ratio, 1.0);
}

TEST(ParseSparsity, BaselinesNeedGatesLikeEveryGatedMode) {
  for (const char* text : {"streaming=1,4", "oracle=0.3"}) {
    auto request = ParseSparsityRequest(text);
    ASSERT_TRUE(request.ok()) << text;
    auto resolved = ResolveSparsity(*request, nullptr);
    ASSERT_FALSE(resolved.ok()) << text;
    EXPECT_EQ(resolved.status().code(), StatusCode::kFailedPrecondition) << text;
    EXPECT_NE(resolved.status().message().find(text), std::string::npos) << resolved.status().message();
  }
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
      {"threshold=1", "0 <= T < 1"},
      {"threshold=1.5", "0 <= T < 1"},
      {"threshold=-0.1", "0 <= T < 1"},
      {"threshold=abc", "'abc'"},
      {"threshold=", "not a finite"},
      {"threshold=nan", "not a finite"},
      {"threshold=inf", "not a finite"},
      {"threshold=0.1x", "'0.1x'"},
      {"nz_ratio=0", "0 < R <= 1"},
      {"nz_ratio=1.0001", "0 < R <= 1"},
      {"nz_ratio=-1", "0 < R <= 1"},
      {"nz_ratio= 0.5", "not a finite"},
      {"sparse", "expected 'dense'"},
      {"topk=3", "unknown mode 'topk'"},
      {"", "expected 'dense'"},
      {"Dense", "expected 'dense'"},
      // The baselines: each error names the field and its limit.
      {"streaming=1", "streaming=SINK,WINDOW"},
      {"streaming=", "streaming=SINK,WINDOW"},
      {"streaming=-1,2", "SINK -1 is out of range, need 0 <= SINK <= 1048576"},
      {"streaming=1048577,2", "SINK 1048577 is out of range, need 0 <= SINK <= 1048576"},
      {"streaming=1,0", "WINDOW 0 is out of range, need 1 <= WINDOW <= 1048576"},
      {"streaming=1,2000000", "WINDOW 2000000 is out of range, need 1 <= WINDOW <= 1048576"},
      {"streaming=a,2", "SINK 'a' is not a whole number"},
      {"streaming=1,2.5", "WINDOW '2.5' is not a whole number"},
      {"streaming=1,2,3", "WINDOW '2,3' is not a whole number"},
      {"streaming=,4", "SINK '' is not a whole number"},
      {"streaming=99999999999999999999,4", "SINK '99999999999999999999' is not a whole number"},
      {"oracle=0", "oracle ratio 0 is out of range, need 0 < R <= 1"},
      {"oracle=1.5", "oracle ratio 1.5 is out of range, need 0 < R <= 1"},
      {"oracle=-0.1", "0 < R <= 1"},
      {"oracle=x", "oracle ratio 'x' is not a finite number"},
      {"oracle=nan", "not a finite"},
  };
  for (const Case& c : cases) {
    auto s = ParseSparsity(c.text);
    ASSERT_FALSE(s.ok()) << c.text;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << c.text;
    EXPECT_NE(s.status().message().find(std::string("'") + c.text + "'"), std::string::npos)
        << c.text << " -> " << s.status().message();
    EXPECT_NE(s.status().message().find(c.must_mention), std::string::npos) << c.text << " -> " << s.status().message();
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
  s.mode = SparsityMode::kStreaming;
  s.streaming_sink = 1;
  s.streaming_window = 8;
  EXPECT_EQ(SparsityToString(s), "streaming=1,8");
  s.mode = SparsityMode::kOracle;
  s.oracle_ratio = 0.25;
  EXPECT_EQ(SparsityToString(s), "oracle=0.25");
  for (const char* text : {"dense", "threshold=0.0005", "threshold=0.123456789", "nz_ratio=0.75", "nz_ratio=1",
                           "streaming=0,1", "streaming=4,1024", "oracle=0.1", "oracle=1"}) {
    auto parsed = ParseSparsity(text);
    ASSERT_TRUE(parsed.ok()) << text;
    EXPECT_EQ(SparsityToString(*parsed), text);
  }
}

}  // namespace
}  // namespace seer
