// The prefix store: its reuse rule against what it promises (a hit gives the
// K/V and logits of the new prompt's whole prefill, bit for bit on the CPU
// engine with the fixture gates, for prompts that share a prefix with an
// earlier, different prompt), the places where one block more than the
// rule allows would change them (so the rule is not looser than it must
// be... and the test could fail), and its bookkeeping: longest match, keys,
// extension, the byte budget and least-recently-used eviction.
#include "engine/kv/prefix_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model/sparsity.h"
#include "tests/cpu_fixture_engine.h"

namespace seer {
namespace {

TEST(ReusableTokens, FollowsTheSelectionsDependenceOnLength) {
  SparsityConfig dense;
  SparsityConfig thr;
  thr.mode = SparsityMode::kThreshold;
  thr.threshold = 0.01;
  SparsityConfig thr_open = thr;
  thr_open.last_block_dense = false;
  SparsityConfig nz;
  nz.mode = SparsityMode::kNzRatio;
  nz.nz_ratio = 0.5;
  // Dense: whole shared blocks, of the stored prompt, before the new last token.
  EXPECT_EQ(ReusableTokens(1000, 1000, 2000, dense, 64), 960);
  EXPECT_EQ(ReusableTokens(200, 1000, 2000, dense, 64), 192);
  EXPECT_EQ(ReusableTokens(1024, 1024, 1024, dense, 64), 960);  // the same prompt: the last block again
  EXPECT_EQ(ReusableTokens(1024, 1024, 1025, dense, 64), 1024);
  EXPECT_EQ(ReusableTokens(63, 1000, 2000, dense, 64), 0);
  EXPECT_EQ(ReusableTokens(1000, 1000, 1, dense, 64), 0);
  // Threshold with last_block_dense: a 1,000-token prompt has 16 blocks, 15
  // whole; rows 14 and 15 are dense. A prompt of another block count
  // computes them sparse (and its own last two dense): not those.
  EXPECT_EQ(ReusableTokens(1000, 1000, 2000, thr, 64), 14 * 64);
  EXPECT_EQ(ReusableTokens(1000, 1000, 1000, thr, 64), 15 * 64);  // the same block count: the dense rows agree
  EXPECT_EQ(ReusableTokens(1000, 1000, 980, thr, 64), 15 * 64);
  EXPECT_EQ(ReusableTokens(1000, 1000, 1000 - 64, thr, 64), 13 * 64);
  EXPECT_EQ(ReusableTokens(1000, 1000, 2000, thr_open, 64), 15 * 64);  // the partial block only
  EXPECT_EQ(ReusableTokens(128, 128, 2000, thr, 64), 0);
  // nz_ratio: never.
  EXPECT_EQ(ReusableTokens(1000, 1000, 2000, nz, 64), 0);
}

class PrefixStoreOnFixtures : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto engine = fixtures::GatedCpuEngine(GetParam());
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
  }

  std::vector<int32_t> RandomIds(int n, std::mt19937& rng) const {
    return fixtures::RandomIds(n, engine_->config().vocab_size, rng);
  }

  struct Run {
    std::shared_ptr<KvCache> cache;
    std::vector<float> logits, k, v;
  };
  // A prefill of `ids`, from `prefix` tokens of `from` when given.
  Run Prefill(const std::vector<int32_t>& ids, const SparsityConfig& sp, const KvCache* from = nullptr,
              int prefix = 0) {
    Run r;
    auto cache = engine_->NewCache(static_cast<int>(ids.size()), /*gate_keys=*/true);
    EXPECT_TRUE(cache.ok());
    if (!cache.ok()) return r;
    r.cache = std::move(*cache);
    if (from != nullptr) EXPECT_TRUE(engine_->CopyPrefix(*from, prefix, r.cache.get()).ok());
    PrefillOptions o;
    o.sparsity = sp;
    auto result = engine_->Prefill(ids, o, r.cache.get(), nullptr);
    EXPECT_TRUE(result.ok()) << result.status().ToString();
    if (!result.ok()) return r;
    r.logits = result->logits;
    const KvLayout& l = r.cache->layout();
    const int L = static_cast<int>(ids.size());
    std::vector<float> k(l.LayerBytes(L) / 4), v(k.size());
    for (int layer = 0; layer < l.num_layers; ++layer) {
      EXPECT_TRUE(r.cache->ReadLayer(layer, 0, L, k.data(), v.data()).ok());
      r.k.insert(r.k.end(), k.begin(), k.end());
      r.v.insert(r.v.end(), v.begin(), v.end());
    }
    return r;
  }
  static bool Same(const Run& a, const Run& b) { return a.logits == b.logits && a.k == b.k && a.v == b.v; }

  std::unique_ptr<Engine> engine_;
};

// Prompt B shares `common` tokens with an earlier prompt A. Continuing B from
// A's stored cache at what the store offers equals B's whole prefill, bit
// for bit, dense and threshold (with and without last_block_dense); nz_ratio
// is offered nothing. Where the rule held back a block for the selection's
// sake, taking it anyway changes B's bits in some case (the test would
// catch a rule that is too loose).
TEST_P(PrefixStoreOnFixtures, AHitGivesTheWholePrefillsBits) {
  const SparsityConfig base = engine_->gates()->config.sparsity;
  std::mt19937 rng(11);
  int held_back_cases = 0, held_back_differs = 0, nz_differs = 0;
  for (const char* mode : {"dense", "threshold=0.05", "threshold=0.05;last_block_dense=false", "nz_ratio=0.3"}) {
    const SparsityConfig sp = ParseSparsity(mode, base).value();
    const bool gated = sp.mode != SparsityMode::kDense;
    struct Shape {
      int a_len, common, b_len;
    };
    for (const Shape& s :
         std::vector<Shape>{{700, 700, 900}, {700, 650, 640}, {1000, 900, 1300}, {640, 640, 704}, {300, 300, 300}}) {
      SCOPED_TRACE(std::string(mode) + " A=" + std::to_string(s.a_len) + " common=" + std::to_string(s.common) +
                   " B=" + std::to_string(s.b_len));
      const std::vector<int32_t> a = RandomIds(s.a_len, rng);
      std::vector<int32_t> b(a.begin(), a.begin() + std::min(s.common, s.b_len));
      const std::vector<int32_t> tail = RandomIds(s.b_len - static_cast<int>(b.size()), rng);
      b.insert(b.end(), tail.begin(), tail.end());
      if (static_cast<int>(b.size()) > s.common && s.common < s.a_len) {
        b[static_cast<size_t>(s.common)] = (a[static_cast<size_t>(s.common)] + 1) % engine_->config().vocab_size;
      }
      const Run stored = Prefill(a, sp);
      PrefixStore store(int64_t{1} << 40, 64);
      ASSERT_TRUE(store.Insert(a, sp, stored.cache, 1));
      const PrefixStore::Hit hit = store.Lookup(b, sp);
      const Run whole = Prefill(b, sp);
      if (sp.mode == SparsityMode::kNzRatio) {
        EXPECT_EQ(hit.tokens, 0);
        // Taking the blocks anyway computes another prompt's selection.
        const int blocks = std::min(s.common, static_cast<int>(b.size()) - 1) / 64;
        if (blocks > 0) nz_differs += !Same(Prefill(b, sp, stored.cache.get(), blocks * 64), whole);
        continue;
      }
      ASSERT_GT(hit.tokens, 0);
      EXPECT_EQ(hit.tokens % 64, 0);
      EXPECT_TRUE(Same(Prefill(b, sp, hit.cache.get(), hit.tokens), whole)) << "from " << hit.tokens << " tokens";
      // One block past the rule where only the selection held it back.
      const int shared_blocks = std::min({s.common, s.a_len, static_cast<int>(b.size()) - 1}) / 64;
      if (gated && hit.tokens / 64 < shared_blocks) {
        ++held_back_cases;
        held_back_differs += !Same(Prefill(b, sp, stored.cache.get(), hit.tokens + 64), whole);
      } else {
        EXPECT_EQ(hit.tokens / 64, shared_blocks);
      }
    }
  }
  EXPECT_GT(held_back_cases, 0);
  EXPECT_GT(held_back_differs, 0) << "no held-back block changed a bit: the rule may be too strict, or the test weak";
  EXPECT_GT(nz_differs, 0) << "nz_ratio continued from a shorter prompt gave the same bits in every case";
  std::printf(
      "[ store    ] %s: %d of %d blocks held back by the rule change the bits; nz_ratio from another "
      "prompt differs in %d cases\n",
      GetParam().c_str(), held_back_differs, held_back_cases, nz_differs);
}

// Random prompt pairs: A stored, B sharing a random prefix with it (B
// extending A, a prefix of A, A itself, or a prompt of about A's length
// that branches near its end), dense or threshold with log-random values,
// last_block_dense either way, lengths 1 to 1,500. Every hit the store
// offers equals B's whole prefill bit for bit; a store that holds A with
// the other last_block_dense offers nothing. (A review's fuzzing of this
// rule, 1,800 random hits, found the store's key once ignored
// last_block_dense.)
TEST_P(PrefixStoreOnFixtures, RandomPromptPairsHitExactly) {
  const SparsityConfig base = engine_->gates()->config.sparsity;
  std::mt19937 rng(GetParam() == "llama" ? 2026u : 1206u);
  std::uniform_int_distribution<int> length(1, 1500);
  int hits = 0, offered = 0;
  for (int round = 0; round < 40; ++round) {
    SparsityConfig sp = ParseSparsity("dense", base).value();
    if (std::uniform_int_distribution<int>(0, 2)(rng) > 0) {
      sp.mode = SparsityMode::kThreshold;
      sp.threshold = std::exp(std::uniform_real_distribution<double>(std::log(0.002), std::log(0.3))(rng));
    }
    sp.last_block_dense = std::uniform_int_distribution<int>(0, 1)(rng) == 1;
    const int a_len = length(rng);
    int b_len = length(rng);
    int common = std::uniform_int_distribution<int>(0, a_len)(rng);
    switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
      case 0: common = a_len; break;  // B extends A, or is a prefix of it
      case 1: b_len = a_len, common = a_len; break;  // A again
      case 2:  // about A's length, branching near its end
        b_len = std::clamp(a_len + std::uniform_int_distribution<int>(-40, 40)(rng), 1, 1500);
        common = std::uniform_int_distribution<int>(std::max(0, a_len - 64), a_len)(rng);
        break;
      default: break;
    }
    SCOPED_TRACE("round " + std::to_string(round) + " " + SparsityToString(sp) +
                 " lbd=" + std::to_string(sp.last_block_dense) + " A=" + std::to_string(a_len) +
                 " B=" + std::to_string(b_len) + " common=" + std::to_string(common));
    const std::vector<int32_t> a = RandomIds(a_len, rng);
    std::vector<int32_t> b(a.begin(), a.begin() + std::min(common, b_len));
    const std::vector<int32_t> tail = RandomIds(b_len - static_cast<int>(b.size()), rng);
    b.insert(b.end(), tail.begin(), tail.end());
    if (static_cast<int>(b.size()) > common && common < a_len) {
      b[static_cast<size_t>(common)] = (a[static_cast<size_t>(common)] + 1) % engine_->config().vocab_size;
    }
    const Run stored = Prefill(a, sp);
    PrefixStore store(int64_t{1} << 40, 64);
    ASSERT_TRUE(store.Insert(a, sp, stored.cache, 1));
    SparsityConfig other = sp;
    other.last_block_dense = !sp.last_block_dense;
    if (sp.mode != SparsityMode::kDense) EXPECT_EQ(store.Lookup(b, other).tokens, 0);
    const PrefixStore::Hit hit = store.Lookup(b, sp);
    ++offered;
    if (hit.tokens == 0) continue;
    ++hits;
    EXPECT_TRUE(Same(Prefill(b, sp, hit.cache.get(), hit.tokens), Prefill(b, sp))) << "from " << hit.tokens;
  }
  std::printf("[ store    ] %s: %d of %d random pairs hit, every one exact\n", GetParam().c_str(), hits, offered);
  EXPECT_GT(hits, 10);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PrefixStoreOnFixtures, ::testing::Values("llama", "qwen2"));

// A stand-in cache: the store never reads one.
std::shared_ptr<const KvCache> FakeCache() { return std::make_shared<HostKvCache>(1, 1, 2, 1); }

std::vector<int32_t> Seq(int n, int32_t start = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + i;
  return v;
}

TEST(PrefixStore, FindsTheLongestReusablePrefixOfTheSameSparsity) {
  SparsityConfig dense, thr;
  thr.mode = SparsityMode::kThreshold;
  thr.threshold = 0.01;
  PrefixStore store(1000, 64);
  EXPECT_EQ(store.Lookup(Seq(500), dense).tokens, 0);
  auto short_one = FakeCache(), long_one = FakeCache(), other = FakeCache();
  ASSERT_TRUE(store.Insert(Seq(200), dense, short_one, 10));
  std::vector<int32_t> branch = Seq(400);
  branch[300] = 9999;
  ASSERT_TRUE(store.Insert(branch, dense, long_one, 10));
  ASSERT_TRUE(store.Insert(Seq(400, 7), dense, other, 10));
  PrefixStore::Hit hit = store.Lookup(Seq(1000), dense);
  EXPECT_EQ(hit.tokens, 256);  // 300 shared with `branch`
  EXPECT_EQ(hit.cache, long_one);
  EXPECT_EQ(store.Lookup(Seq(1000), thr).tokens, 0);  // computed densely: not for threshold
  // A threshold prompt whose last rows were dense serves only prompts that
  // keep them dense too.
  SparsityConfig thr_open = thr;
  thr_open.last_block_dense = false;
  ASSERT_TRUE(store.Insert(Seq(700, 5000), thr, FakeCache(), 1));
  EXPECT_EQ(store.Lookup(Seq(900, 5000), thr).tokens, 576);
  EXPECT_EQ(store.Lookup(Seq(900, 5000), thr_open).tokens, 0);
  EXPECT_TRUE(store.EvictOldest() && store.EvictOldest() && store.EvictOldest());
  ASSERT_TRUE(store.Insert(Seq(200), dense, short_one, 10));
  ASSERT_TRUE(store.Insert(branch, dense, long_one, 10));
  ASSERT_TRUE(store.Insert(Seq(400, 7), dense, other, 10));
  // `branch` extends the first prompt, which it replaced.
  EXPECT_EQ(store.entries(), 2);
  EXPECT_EQ(store.bytes(), 20);
  EXPECT_EQ(short_one.use_count(), 1);
}

TEST(PrefixStore, APromptThatExtendsAnotherReplacesIt) {
  SparsityConfig dense;
  PrefixStore store(1000, 64);
  ASSERT_TRUE(store.Insert(Seq(200), dense, FakeCache(), 10));
  ASSERT_TRUE(store.Insert(Seq(300), dense, FakeCache(), 20));  // turn two of a chat
  EXPECT_EQ(store.entries(), 1);
  EXPECT_EQ(store.bytes(), 20);
  EXPECT_FALSE(store.Insert(Seq(250), dense, FakeCache(), 15));  // already covered
  EXPECT_FALSE(store.Insert(Seq(300), dense, FakeCache(), 20));  // the same prompt
  EXPECT_EQ(store.entries(), 1);
  EXPECT_EQ(store.Lookup(Seq(260), dense).tokens, 256);
}

TEST(PrefixStore, TheOldestGoFirstWithinTheBudget) {
  SparsityConfig dense;
  PrefixStore store(100, 64);
  auto a = FakeCache(), b = FakeCache(), c = FakeCache();
  ASSERT_TRUE(store.Insert(Seq(128, 0), dense, a, 40));
  ASSERT_TRUE(store.Insert(Seq(128, 1000), dense, b, 40));
  EXPECT_EQ(store.Lookup(Seq(200, 0), dense).cache, a);  // a is now the most recent
  ASSERT_TRUE(store.Insert(Seq(128, 2000), dense, c, 40));  // b goes
  EXPECT_EQ(store.entries(), 2);
  EXPECT_EQ(store.bytes(), 80);
  EXPECT_EQ(store.evictions(), 1);
  EXPECT_EQ(store.Lookup(Seq(200, 1000), dense).tokens, 0);
  EXPECT_EQ(store.Lookup(Seq(200, 0), dense).cache, a);
  EXPECT_FALSE(store.Insert(Seq(128, 3000), dense, FakeCache(), 101));  // larger than the budget
  EXPECT_TRUE(store.EvictOldest());  // c
  EXPECT_EQ(store.Lookup(Seq(200, 2000), dense).tokens, 0);
  EXPECT_TRUE(store.EvictOldest());
  EXPECT_FALSE(store.EvictOldest());
  EXPECT_EQ(store.bytes(), 0);
  EXPECT_EQ(store.evictions(), 3);
  // A hit keeps its cache alive after the store lets go of it.
  ASSERT_TRUE(store.Insert(Seq(128), dense, FakeCache(), 10));
  PrefixStore::Hit hit = store.Lookup(Seq(200), dense);
  EXPECT_TRUE(store.EvictOldest());
  ASSERT_NE(hit.cache, nullptr);
  EXPECT_EQ(hit.cache->capacity(), 1);
}

}  // namespace
}  // namespace seer
