// A prefill that continues from a cached prefix (Engine::Prefill with a
// cache that already holds P positions) against the whole prefill of the
// same prompt, on the fixture models with their fixture gates: dense, the
// gates' threshold and nz_ratio selection. The prefix comes from the whole
// prefill's own cache (Engine::CopyPrefix), so every mode must give back
// the whole prefill's K/V, gate keys and last logits; the CPU engine's
// rows are computed independently, so they are compared bit for bit. The
// densities must count the computed rows' blocks of the whole prefill's
// masks. And the preconditions are refused by name.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model/sparsity.h"
#include "kernels/common/block_lists.h"
#include "tests/cpu_fixture_engine.h"

namespace seer {
namespace {

class CachedPrefix : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto engine = fixtures::GatedCpuEngine(GetParam());
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
    ASSERT_NE(engine_->gates(), nullptr);
  }

  std::vector<int32_t> RandomIds(int n, uint32_t seed) const {
    std::mt19937 rng(seed);
    return fixtures::RandomIds(n, engine_->config().vocab_size, rng);
  }

  // Every layer's K and V (and gate keys) for positions [0, n).
  struct Planes {
    std::vector<float> k, v, gate_k;
  };
  Planes Read(const KvCache& cache, int n) const {
    const auto& host = dynamic_cast<const HostKvCache&>(cache);
    const KvLayout& l = cache.layout();
    Planes p;
    const size_t per = l.LayerBytes(n) / sizeof(float);
    const size_t gate = static_cast<size_t>(n) * l.num_kv_heads * l.head_dim;
    for (int layer = 0; layer < l.num_layers; ++layer) {
      std::vector<float> k(per), v(per);
      EXPECT_TRUE(cache.ReadLayer(layer, 0, n, k.data(), v.data()).ok());
      p.k.insert(p.k.end(), k.begin(), k.end());
      p.v.insert(p.v.end(), v.begin(), v.end());
      if (cache.has_gate_keys()) p.gate_k.insert(p.gate_k.end(), host.gate_k(layer), host.gate_k(layer) + gate);
    }
    return p;
  }

  std::unique_ptr<Engine> engine_;
};

// Records what each layer's observer call says.
class Layers final : public PrefillObserver {
 public:
  Status OnLayerDone(const LayerDone& done) override {
    firsts.push_back(done.first);
    lengths.push_back(done.seq_len);
    return OkStatus();
  }
  std::vector<int> firsts, lengths;
};

TEST_P(CachedPrefix, ContinuingFromAPrefixGivesTheWholePrefillsBits) {
  const SparsityConfig base = engine_->gates()->config.sparsity;
  const ModelConfig& c = engine_->config();
  for (const char* mode : {"dense", "threshold=0.01", "nz_ratio=0.3"}) {
    auto sparsity = ParseSparsity(mode, base);
    ASSERT_TRUE(sparsity.ok()) << sparsity.status().ToString();
    for (int L : {130, 641}) {
      const std::vector<int32_t> ids = RandomIds(L, 7u + static_cast<uint32_t>(L));
      auto whole_cache = engine_->NewCache(L, /*gate_keys=*/true);
      ASSERT_TRUE(whole_cache.ok()) << whole_cache.status().ToString();
      ASSERT_TRUE((*whole_cache)->has_gate_keys());
      PrefillOptions whole_options;
      whole_options.sparsity = *sparsity;
      whole_options.keep_gate_outputs = true;
      auto whole = engine_->Prefill(ids, whole_options, whole_cache->get(), nullptr);
      ASSERT_TRUE(whole.ok()) << whole.status().ToString();
      const Planes want = Read(**whole_cache, L);

      for (int P = kPrefixBlock; P < L; P += (L > 200 ? 3 : 1) * kPrefixBlock) {
        SCOPED_TRACE(std::string(mode) + " L=" + std::to_string(L) + " P=" + std::to_string(P));
        auto cache = engine_->NewCache(L, /*gate_keys=*/true);
        ASSERT_TRUE(cache.ok());
        ASSERT_TRUE(engine_->CopyPrefix(**whole_cache, P, cache->get()).ok());
        ASSERT_EQ((*cache)->length(), P);
        PrefillOptions options;
        options.sparsity = *sparsity;
        Layers layers;
        auto rest = engine_->Prefill(ids, options, cache->get(), &layers);
        ASSERT_TRUE(rest.ok()) << rest.status().ToString();
        EXPECT_EQ((*cache)->length(), L);
        EXPECT_EQ(layers.firsts, std::vector<int>(c.num_layers, P));
        EXPECT_EQ(layers.lengths, std::vector<int>(c.num_layers, L));
        const Planes got = Read(**cache, L);
        EXPECT_TRUE(got.k == want.k) << "K differs";
        EXPECT_TRUE(got.v == want.v) << "V differs";
        EXPECT_TRUE(got.gate_k == want.gate_k) << "the gate keys differ";
        ASSERT_EQ(rest->logits.size(), whole->logits.size());
        EXPECT_EQ(std::memcmp(rest->logits.data(), whole->logits.data(), sizeof(float) * rest->logits.size()), 0)
            << "the last logits differ";
        // Densities: the whole prefill's masks, counted from P's block on.
        int64_t kept_total = 0, causal_total = 0;
        for (int layer = 0; layer < c.num_layers; ++layer) {
          if (sparsity->mode == SparsityMode::kDense) {
            EXPECT_EQ(rest->layer_density[layer], 1.0);
            continue;
          }
          const BlockMask& m = whole->gate_outputs[layer].mask;
          const int64_t kept = KeptFrom(m, P / m.block_size);
          const int64_t causal = CausalBlocksFrom(m.num_heads, m.num_blocks, P / m.block_size);
          EXPECT_DOUBLE_EQ(rest->layer_density[layer], double(kept) / double(causal)) << "layer " << layer;
          kept_total += kept;
          causal_total += causal;
        }
        if (causal_total > 0) EXPECT_DOUBLE_EQ(rest->overall_density, double(kept_total) / double(causal_total));
      }
    }
  }
}

TEST_P(CachedPrefix, APrefixWithoutItsRulesIsRefusedByName) {
  const int L = 200;
  const std::vector<int32_t> ids = RandomIds(L, 3);
  auto sparse = ParseSparsity("threshold=0.01", engine_->gates()->config.sparsity);
  ASSERT_TRUE(sparse.ok());
  auto source = engine_->NewCache(L, /*gate_keys=*/true);
  ASSERT_TRUE(source.ok());
  PrefillOptions options;
  options.sparsity = *sparse;
  ASSERT_TRUE(engine_->Prefill(ids, options, source->get(), nullptr).ok());

  auto refused = [&](int P, const PrefillOptions& o, bool gate_keys, const std::string& words) {
    SCOPED_TRACE("P=" + std::to_string(P) + " " + words);
    auto cache = engine_->NewCache(L, gate_keys);
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(engine_->CopyPrefix(**source, P, cache->get()).ok());
    auto r = engine_->Prefill(ids, o, cache->get(), nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().ToString();
  };
  refused(100, options, true, "whole number of 64-token blocks");
  PrefillOptions every = options;
  every.all_logits = true;
  refused(64, every, true, "all_logits, prompt_logprobs");
  every = options;
  every.prompt_logprobs = 0;
  refused(64, every, true, "all_logits, prompt_logprobs");
  every = options;
  every.keep_gate_outputs = true;
  refused(64, every, true, "gate's outputs");
  refused(64, options, false, "keeps no gate keys");
  // A dense prefill needs no gate keys.
  {
    auto dense = ParseSparsity("dense", engine_->gates()->config.sparsity);
    ASSERT_TRUE(dense.ok());
    PrefillOptions o;
    o.sparsity = *dense;
    auto src = engine_->NewCache(L);
    ASSERT_TRUE(src.ok());
    ASSERT_TRUE(engine_->Prefill(ids, o, src->get(), nullptr).ok());
    auto cache = engine_->NewCache(L);
    ASSERT_TRUE(cache.ok());
    ASSERT_TRUE(engine_->CopyPrefix(**src, 128, cache->get()).ok());
    EXPECT_TRUE(engine_->Prefill(ids, o, cache->get(), nullptr).ok());
    // The whole prompt cached: nothing would be left to compute.
    auto full = engine_->NewCache(L + 56);
    ASSERT_TRUE(full.ok());
    std::vector<int32_t> block_ids(ids.begin(), ids.begin() + 192);
    auto src2 = engine_->NewCache(192);
    ASSERT_TRUE(src2.ok());
    ASSERT_TRUE(engine_->Prefill(block_ids, o, src2->get(), nullptr).ok());
    ASSERT_TRUE(engine_->CopyPrefix(**src2, 192, full->get()).ok());
    auto r = engine_->Prefill(block_ids, o, full->get(), nullptr);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("below the prompt's 192 tokens"), std::string::npos) << r.status().ToString();
  }

  // CopyPrefix's own checks.
  auto dst = engine_->NewCache(L, true);
  ASSERT_TRUE(dst.ok());
  EXPECT_EQ(engine_->CopyPrefix(**source, L + 1, dst->get()).code(), StatusCode::kInvalidArgument);
  auto plain = engine_->NewCache(L);
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE(engine_->Prefill(ids, PrefillOptions{}, plain->get(), nullptr).ok());
  const Status no_keys = engine_->CopyPrefix(**plain, 64, dst->get());
  EXPECT_EQ(no_keys.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_keys.message().find("source has none"), std::string::npos) << no_keys.ToString();
  ASSERT_TRUE(engine_->CopyPrefix(**source, 64, dst->get()).ok());
  EXPECT_EQ(engine_->CopyPrefix(**source, 64, dst->get()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->CopyPrefix(**source, 64, source->get()).code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CachedPrefix, ::testing::Values("llama", "qwen2"));

}  // namespace
}  // namespace seer
