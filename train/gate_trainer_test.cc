// The CPU trainer on the tiny fixture model (tests/fixtures/llama: 2 layers,
// 4 Q heads over 1 KV head, head_dim 64, 128-token vocabulary):
//   - the distillation loss on held-out tokens falls, and the trained gates'
//     masks recall more of the oracle's blocks (the true attention's best
//     blocks) than the untrained gates' do;
//   - the written gate directory loads with LoadGates and runs in a gated
//     prefill, computing the probabilities the trainer trained;
//   - a resumed run continues exactly as an uninterrupted one, and refuses a
//     checkpoint made with other settings.

#include "train/gate_trainer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/cpu_engine.h"
#include "engine/model/gates.h"
#include "tests/fixture_reader.h"
#include "tests/topic_ids.h"

namespace seer::train {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("seer_gate_trainer_" + std::to_string(getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

std::vector<int32_t> RandomIds(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(3, 127);
  std::vector<int32_t> ids(n);
  for (int32_t& x : ids) x = id(rng);
  return ids;
}

using test_data::TopicIds;

std::string Model() { return fixtures::Path("llama"); }

TrainConfig SmallConfig() {
  TrainConfig c;
  c.seq_len = 512;
  c.steps = 40;
  c.warmup = 4;
  c.lr = 1e-2;
  c.seed = 1;
  return c;
}

JsonValue Note() { return JsonValue::Object(); }

SparsityConfig Sparsity(const std::string& text) {
  auto s = ParseSparsity(text);
  EXPECT_TRUE(s.ok()) << text;
  return s.ok() ? *s : SparsityConfig{};
}

// Over every layer of a dense teacher pass on `ids`: the share of the
// oracle's blocks (oracle=ratio) that each gate set keeps at nz_ratio=ratio.
std::vector<double> OracleRecall(const std::vector<const GateWeights*>& gates, const std::vector<int32_t>& ids,
                                 double ratio) {
  EngineOptions options;
  options.model_dir = Model();
  options.device = "cpu";
  options.threads = 2;
  auto engine = CpuEngine::Load(options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  const std::string r = std::to_string(ratio);
  const SparsityConfig gate_mode = Sparsity("nz_ratio=" + r + ";last_block_dense=false");
  const SparsityConfig oracle_mode = Sparsity("oracle=" + r + ";last_block_dense=false");
  std::vector<int64_t> hits(gates.size(), 0);
  int64_t oracle_blocks = 0;
  Status s = (*engine)->ForwardWithAttentionTap(ids, [&](const AttentionTap& tap) -> Status {
    const GateWeights& any = *gates[0];
    SEER_ASSIGN_OR_RETURN(GateOutput oracle, RunGate(any.layers[tap.layer], any.config, (*engine)->config(), tap.q,
                                                     tap.k, tap.seq_len, oracle_mode, 2));
    oracle_blocks += oracle.mask.kept();
    for (size_t g = 0; g < gates.size(); ++g) {
      SEER_ASSIGN_OR_RETURN(GateOutput out, RunGate(gates[g]->layers[tap.layer], gates[g]->config, (*engine)->config(),
                                                    tap.q, tap.k, tap.seq_len, gate_mode, 2));
      for (size_t i = 0; i < out.mask.keep.size(); ++i) hits[g] += out.mask.keep[i] && oracle.mask.keep[i];
    }
    return OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::vector<double> recall;
  for (int64_t h : hits) recall.push_back(double(h) / double(oracle_blocks));
  return recall;
}

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

TEST(GateTrainer, LossFallsAndTheTrainedGatesFindTheOraclesBlocks) {
  TrainConfig c = SmallConfig();
  c.steps = 40;  // a few dozen steps (under ASan too)
  c.lr = 2e-3;
  auto trainer_or = GateTrainer::Create(Model(), 2, c, TopicIds(64 * 512, 1));
  ASSERT_TRUE(trainer_or.ok()) << trainer_or.status().ToString();
  GateTrainer& trainer = **trainer_or;
  const std::vector<int32_t> held_out = TopicIds(1024, 99);  // 16 blocks, never trained on

  auto before = trainer.Evaluate(held_out);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  const std::string untrained = TempDir("untrained"), trained = TempDir("trained");
  ASSERT_TRUE(trainer.WriteGates(untrained, Sparsity("nz_ratio=0.3"), Note()).ok());
  for (int i = 0; i < c.steps; ++i) {
    auto r = trainer.Step();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(std::isfinite(r->loss));
  }
  auto after = trainer.Evaluate(held_out);
  ASSERT_TRUE(after.ok());
  ASSERT_TRUE(trainer.WriteGates(trained, Sparsity("nz_ratio=0.3"), Note()).ok());
  // Layer 0 sees the topics directly; layer 1 sees them through layer 0's
  // mixing and learns less of them in 40 steps (0.37 and 0.87 of the
  // untrained loss when this was written).
  EXPECT_LT((*after)[0], 0.5 * (*before)[0]) << "layer 0: held-out loss " << (*before)[0] << " -> " << (*after)[0];
  EXPECT_LT((*after)[1], (*before)[1]) << "layer 1: held-out loss " << (*before)[1] << " -> " << (*after)[1];
  EXPECT_LT(Sum(*after), 0.75 * Sum(*before));
  RecordProperty("held_out_loss_before", std::to_string(Sum(*before)));
  RecordProperty("held_out_loss_after", std::to_string(Sum(*after)));

  auto g0 = LoadGates(untrained, trainer.model());
  auto g1 = LoadGates(trained, trainer.model());
  ASSERT_TRUE(g0.ok()) << g0.status().ToString();
  ASSERT_TRUE(g1.ok()) << g1.status().ToString();
  for (double ratio : {0.2, 0.4}) {
    const std::vector<double> recall = OracleRecall({&*g0, &*g1}, held_out, ratio);
    EXPECT_GT(recall[1], recall[0] + 0.05)
        << "nz_ratio " << ratio << ": untrained recall " << recall[0] << ", trained " << recall[1];
    RecordProperty("recall_" + std::to_string(ratio), std::to_string(recall[0]) + " -> " + std::to_string(recall[1]));
  }
  fs::remove_all(untrained);
  fs::remove_all(trained);
}

TEST(GateTrainer, WrittenGatesLoadAndRunWhatWasTrained) {
  TrainConfig c = SmallConfig();
  c.steps = 5;
  auto trainer_or = GateTrainer::Create(Model(), 2, c, RandomIds(4 * 512, 2));
  ASSERT_TRUE(trainer_or.ok()) << trainer_or.status().ToString();
  GateTrainer& trainer = **trainer_or;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(trainer.Step().ok());
  const std::string dir = TempDir("written");
  ASSERT_TRUE(trainer.WriteGates(dir, Sparsity("threshold=0.01;last_block_dense=false"), Note()).ok());

  auto gates = LoadGates(dir, trainer.model());
  ASSERT_TRUE(gates.ok()) << gates.status().ToString();
  EXPECT_EQ(gates->config.sparsity.mode, SparsityMode::kThreshold);
  EXPECT_DOUBLE_EQ(gates->config.sparsity.threshold, 0.01);
  EXPECT_FALSE(gates->config.sparsity.last_block_dense);
  EXPECT_EQ(gates->config.hidden, trainer.model().head_dim);
  ASSERT_EQ(gates->layers.size(), trainer.params().size());
  GateParams rounded;
  for (size_t layer = 0; layer < gates->layers.size(); ++layer) {
    const std::vector<double>& want = trainer.params()[layer].k;
    ASSERT_EQ(gates->layers[layer].k_weight.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(gates->layers[layer].k_weight[i], Bf16ToFloat(FloatToBf16(static_cast<float>(want[i])))) << i;
    }
    EXPECT_TRUE(gates->layers[layer].q_weight.empty());
  }
  for (float x : gates->layers[0].k_weight) rounded.k.push_back(x);

  // A gated prefill with them; its layer-0 gate (whose input no sparsity
  // changes) computes the probabilities of the trainer's own forward.
  EngineOptions options;
  options.model_dir = Model();
  options.gates_dir = dir;
  options.device = "cpu";
  options.threads = 2;
  auto engine = CreateEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  const std::vector<int32_t> ids = RandomIds(700, 3);
  auto cache = (*engine)->NewCache(700);
  ASSERT_TRUE(cache.ok());
  PrefillOptions po;
  po.sparsity = Sparsity("nz_ratio=0.3");
  po.keep_gate_outputs = true;
  auto result = (*engine)->Prefill(ids, po, cache->get(), nullptr);
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_LT(result->overall_density, 1.0);
  ASSERT_EQ(result->gate_outputs.size(), 2u);

  auto dense = CpuEngine::Load(EngineOptions{Model(), "", "cpu", 2});
  ASSERT_TRUE(dense.ok());
  std::vector<double> probs;
  Status s = (*dense)->ForwardWithAttentionTap(ids, [&](const AttentionTap& tap) -> Status {
    if (tap.layer != 0) return OkStatus();
    std::vector<float> inv;
    for (double f : RopeInvFreq(trainer.model().rope, trainer.shape().hidden)) inv.push_back(static_cast<float>(f));
    probs = GateProbs(trainer.shape(), PoolGateFeatures(trainer.shape(), tap.q, tap.k, tap.seq_len, inv), rounded, 1);
    return OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::vector<float>& ran = result->gate_outputs[0].probs;
  ASSERT_EQ(probs.size(), ran.size());
  double worst = 0;
  for (size_t i = 0; i < ran.size(); ++i) worst = std::max(worst, std::abs(probs[i] - ran[i]));
  EXPECT_LT(worst, 2e-5);
  fs::remove_all(dir);
}

TEST(GateTrainer, ResumeContinuesExactly) {
  TrainConfig c = SmallConfig();
  c.seq_len = 256;
  c.steps = 12;
  c.batch = 2;  // 24 draws from 8 sequences: three epochs of the order
  c.warmup = 3;
  const std::vector<int32_t> data = RandomIds(8 * 256 + 100, 4);

  auto straight = GateTrainer::Create(Model(), 2, c, data);
  ASSERT_TRUE(straight.ok()) << straight.status().ToString();
  std::vector<double> losses;
  for (int i = 0; i < 12; ++i) {
    auto r = (*straight)->Step();
    ASSERT_TRUE(r.ok());
    losses.push_back(r->loss);
  }

  const std::string dir = TempDir("resume");
  {
    auto first = GateTrainer::Create(Model(), 1, c, data);  // the thread count is no part of the result
    ASSERT_TRUE(first.ok());
    for (int i = 0; i < 5; ++i) ASSERT_TRUE((*first)->Step().ok());
    ASSERT_TRUE((*first)->SaveCheckpoint(dir).ok());
  }
  auto second = GateTrainer::Create(Model(), 2, c, data);
  ASSERT_TRUE(second.ok());
  Status loaded = (*second)->LoadCheckpoint(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.ToString();
  EXPECT_EQ((*second)->step(), 5);
  for (int i = 5; i < 12; ++i) {
    auto r = (*second)->Step();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->step, i + 1);
    EXPECT_EQ(r->loss, losses[i]) << "step " << i + 1;  // bit for bit
  }
  for (size_t layer = 0; layer < (*straight)->params().size(); ++layer) {
    EXPECT_EQ((*second)->params()[layer].k, (*straight)->params()[layer].k) << "layer " << layer;
  }

  // Another setting, other data or another model is refused, naming it.
  TrainConfig other = c;
  other.seq_len = 128;
  auto mismatch = GateTrainer::Create(Model(), 2, other, data);
  ASSERT_TRUE(mismatch.ok());
  Status refused = (*mismatch)->LoadCheckpoint(dir);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("--seq-len 256, this run has 128"), std::string::npos) << refused.message();
  other = c;
  other.lr = 2e-3;
  refused = (*GateTrainer::Create(Model(), 2, other, data))->LoadCheckpoint(dir);
  EXPECT_NE(refused.message().find("--lr"), std::string::npos) << refused.message();
  std::vector<int32_t> other_data = data;
  other_data[17] = other_data[17] == 5 ? 6 : 5;
  refused = (*GateTrainer::Create(Model(), 2, c, other_data))->LoadCheckpoint(dir);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("other data"), std::string::npos) << refused.message();
  refused = (*GateTrainer::Create(fixtures::Path("qwen2"), 2, c, data))->LoadCheckpoint(dir);
  EXPECT_NE(refused.message().find("another model"), std::string::npos) << refused.message();
  // A longer schedule is allowed: it is the caller's to choose.
  other = c;
  other.steps = 30;
  EXPECT_TRUE((*GateTrainer::Create(Model(), 2, other, data))->LoadCheckpoint(dir).ok());
  fs::remove_all(dir);
}

TEST(GateTrainer, RefusesBadSettingsNamingTheFlag) {
  struct Case {
    TrainConfig config;
    size_t tokens;
    const char* mention;
  };
  TrainConfig short_seq = SmallConfig(), long_seq = SmallConfig(), odd_hidden = SmallConfig();
  short_seq.seq_len = 100;
  long_seq.seq_len = 4096;  // the fixture's max_position_embeddings is 2048
  odd_hidden.gate_hidden = 7;
  const Case cases[] = {{short_seq, 4096, "--seq-len: 100 is outside [128, 2048]"},
                        {long_seq, 8192, "--seq-len: 4096 is outside [128, 2048]"},
                        {odd_hidden, 4096, "--gate-hidden: 7 must be even"},
                        {SmallConfig(), 300, "300 tokens, fewer than one sequence of --seq-len 512"}};
  for (const Case& c : cases) {
    auto t = GateTrainer::Create(Model(), 1, c.config, RandomIds(c.tokens, 5));
    ASSERT_FALSE(t.ok()) << c.mention;
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(c.mention), std::string::npos) << t.status().message();
  }
  std::vector<int32_t> bad = RandomIds(1024, 6);
  bad[700] = 128;
  auto t = GateTrainer::Create(Model(), 1, SmallConfig(), bad);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("training data[700]"), std::string::npos) << t.status().message();
}

}  // namespace
}  // namespace seer::train
