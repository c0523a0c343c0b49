// The gated, block-sparse CPU prefill against the PyTorch reference of the
// gate (tools/seer_reference.py, written from docs/GATES.md), run on the tiny
// fixture models with fixture gates in the released .pth format
// (docs/FIXTURES.md): block masks, gate probabilities and sparse logits for
// every mode the fixture lists, on the 333-token prompt and on a 1000-token
// one. Masks may differ only in blocks whose reference probability lies
// within 1e-6 of the threshold. Missing fixtures fail these tests.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model/sparsity.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

constexpr double kProbTolerance = 1e-4;
constexpr double kLogitsTolerance = 1e-4;
constexpr double kThresholdBand = 1e-6;

struct MaskComparison {
  int64_t differing = 0;  // blocks where our mask and the reference differ
  int64_t unexplained = 0;  // ... and the reference probability is not at the threshold
};

// Compares one layer's mask; `probs` are the reference probabilities.
MaskComparison CompareMask(const BlockMask& got, const std::vector<uint8_t>& want, const std::vector<float>& probs,
                           const SparsityConfig& sparsity) {
  MaskComparison out;
  for (size_t i = 0; i < want.size() && i < got.keep.size(); ++i) {
    if ((got.keep[i] != 0) == (want[i] != 0)) continue;
    ++out.differing;
    const bool at_threshold =
        sparsity.mode == SparsityMode::kThreshold && std::abs(double(probs[i]) - sparsity.threshold) <= kThresholdBand;
    if (!at_threshold) ++out.unexplained;
  }
  return out;
}

class GateFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string model = GetParam();
    auto expected = fixtures::Open(model + "_gates/expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status().ToString();
    expected_ = std::move(*expected);
    auto model_expected = fixtures::Open(model + "/expected.safetensors");
    ASSERT_TRUE(model_expected.ok()) << model_expected.status().ToString();
    auto ids = fixtures::I32(**model_expected, "input_ids");
    ASSERT_TRUE(ids.ok()) << ids.status().ToString();
    ids_ = *ids;
    auto it = expected_->metadata().find("modes");
    ASSERT_NE(it, expected_->metadata().end()) << expected_->path() << ": no 'modes' metadata";
    modes_ = fixtures::SplitModes(it->second);
    ASSERT_FALSE(modes_.empty());

    EngineOptions options;
    options.model_dir = fixtures::Path(model);
    options.gates_dir = fixtures::Path(model + "_gates");
    options.device = "cpu";
    auto engine = CreateEngine(options);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(*engine);
    ASSERT_NE(engine_->gates(), nullptr);
  }

  // Prefills `ids` with mode `j` and compares masks and probabilities with
  // the reference tensors under `prefix` (e.g. "mode0." or "long.mode0.").
  void CheckMode(int j, const std::vector<int32_t>& ids, const std::string& prefix, bool compare_logits) {
    const std::string& mode = modes_[j];
    auto sparsity = ParseSparsity(mode, engine_->gates()->config.sparsity);
    ASSERT_TRUE(sparsity.ok()) << sparsity.status().ToString();
    const ModelConfig& c = engine_->config();
    const int L = static_cast<int>(ids.size());
    auto cache = engine_->NewCache(L);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    PrefillOptions opts;
    opts.sparsity = *sparsity;
    opts.all_logits = compare_logits;
    opts.keep_gate_outputs = true;
    auto result = engine_->Prefill(ids, opts, cache->get(), nullptr);
    ASSERT_TRUE(result.ok()) << mode << ": " << result.status().ToString();
    ASSERT_EQ(result->gate_outputs.size(), size_t(c.num_layers));

    int64_t differing = 0;
    std::string densities;
    for (int layer = 0; layer < c.num_layers; ++layer) {
      const GateOutput& g = result->gate_outputs[layer];
      const int64_t nb = g.mask.num_blocks;
      const std::vector<int64_t> shape = {c.num_heads, nb, nb};
      const std::string p = prefix + "layers." + std::to_string(layer) + ".";
      auto want_mask = fixtures::U8(*expected_, p + "block_mask", shape);
      auto want_probs = fixtures::F32(*expected_, p + "gate_probs", shape);
      ASSERT_TRUE(want_mask.ok()) << want_mask.status().ToString();
      ASSERT_TRUE(want_probs.ok()) << want_probs.status().ToString();
      const MaskComparison cmp = CompareMask(g.mask, *want_mask, *want_probs, *sparsity);
      differing += cmp.differing;
      EXPECT_EQ(cmp.unexplained, 0) << prefix << mode << " layer " << layer << ": " << cmp.unexplained
                                    << " mask blocks differ away from the threshold";
      EXPECT_LE(fixtures::RelError(g.probs, *want_probs), kProbTolerance) << prefix << mode << " layer " << layer;
      // The reported density is the mask's kept / causal blocks.
      int64_t kept = 0;
      for (uint8_t b : g.mask.keep) kept += b;
      EXPECT_NEAR(result->layer_density[layer], double(kept) / double(c.num_heads * nb * (nb + 1) / 2), 1e-12);
      char buf[32];
      std::snprintf(buf, sizeof(buf), " %.4f", result->layer_density[layer]);
      densities += buf;
    }
    std::printf("[ gates    ] %s %-36s L=%-5d differing blocks: %lld  density overall %.4f, per layer:%s\n",
                GetParam().c_str(), (prefix + mode).c_str(), L, static_cast<long long>(differing),
                result->overall_density, densities.c_str());

    if (!compare_logits) return;
    auto rows = fixtures::I32(*expected_, prefix + "logits_rows");
    ASSERT_TRUE(rows.ok()) << rows.status().ToString();
    auto want_logits = fixtures::F32(*expected_, prefix + "logits", {int64_t(rows->size()), c.vocab_size});
    ASSERT_TRUE(want_logits.ok()) << want_logits.status().ToString();
    std::vector<float> got;
    for (int32_t r : *rows) {
      ASSERT_GE(r, 0);
      ASSERT_LT(r, L);
      got.insert(got.end(), result->logits.begin() + size_t(r) * c.vocab_size,
                 result->logits.begin() + size_t(r + 1) * c.vocab_size);
    }
    const double err = fixtures::RelError(got, *want_logits);
    EXPECT_LE(err, kLogitsTolerance) << mode << ": sparse logits rel err " << err;
  }

  std::unique_ptr<SafetensorsFile> expected_;
  std::vector<int32_t> ids_;
  std::vector<std::string> modes_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(GateFixture, MasksProbabilitiesAndSparseLogitsMatchTheReference) {
  for (int j = 0; j < static_cast<int>(modes_.size()); ++j) {
    CheckMode(j, ids_, "mode" + std::to_string(j) + ".", /*compare_logits=*/true);
  }
}

TEST_P(GateFixture, LongPromptMasksMatchTheReference) {
  auto long_ids = fixtures::I32(*expected_, "long.input_ids");
  ASSERT_TRUE(long_ids.ok()) << long_ids.status().ToString();
  for (int j = 0; j < static_cast<int>(modes_.size()); ++j) {
    CheckMode(j, *long_ids, "long.mode" + std::to_string(j) + ".", /*compare_logits=*/false);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GateFixture, ::testing::Values("llama", "qwen2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace seer
