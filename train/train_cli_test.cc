// The seer-train program (SEER_BIN_DIR/seer-train) on the fixture model:
// training from text with --json progress, the written gates in `seer run`,
// resuming from the command line exactly where --stop-at left off, `target`
// dumps, and the exit codes and messages of bad invocations.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/json.h"
#include "engine/cpu/cpu_engine.h"
#include "formats/safetensors.h"
#include "tests/fixture_reader.h"
#include "tests/run_binary.h"
#include "train/gate_trainer.h"

namespace seer::train {
namespace {

namespace fs = std::filesystem;

using seer::testing::RunBinary;
using seer::testing::RunOutput;
using seer::testing::Slurp;
using seer::testing::TempPath;

std::vector<int32_t> RandomIds(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(3, 127);
  std::vector<int32_t> ids(n);
  for (int32_t& x : ids) x = id(rng);
  return ids;
}

std::string WriteIds(const std::string& name, const std::vector<int32_t>& ids) {
  const std::string path = TempPath(name);
  std::ofstream out(path);
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? "," : "") << ids[i];
  return path;
}

std::string Model() { return fixtures::Path("llama"); }

// Every stdout line as JSON.
std::vector<JsonValue> JsonLines(const std::string& out) {
  std::vector<JsonValue> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    auto v = JsonValue::Parse(line);
    EXPECT_TRUE(v.ok()) << "not JSON: " << line;
    if (v.ok()) lines.push_back(std::move(*v));
  }
  return lines;
}

TEST(SeerTrainCli, TrainsFromTextAndSeerRunsTheGates) {
  // Text in a directory of two files, tokenized with the fixture's tokenizer.
  const std::string data = TempPath("text"), out = TempPath("gates");
  fs::create_directories(data + "/more");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox jumps over the lazy dog, line " + std::to_string(i) + ".\n";
  std::ofstream(data + "/a.txt") << text;
  std::ofstream(data + "/more/b.txt") << text << "and a second document.\n";

  RunOutput r = RunBinary("seer-train", {"--model", Model(), "--data", data, "--seq-len", "256", "--steps", "4",
                                         "--out", out, "--json", "--threads", "2", "--device", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  const std::vector<JsonValue> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), 5u) << r.out;  // four steps, then where it saved
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_NE(lines[i].Find("step"), nullptr) << r.out;
    ASSERT_NE(lines[i].Find("loss"), nullptr) << r.out;
    EXPECT_EQ(lines[i].Find("step")->as_int64(), std::min<int64_t>(i + 1, 4));
    EXPECT_GT(lines[i].Find("loss")->as_double(), 0.0);
  }
  ASSERT_NE(lines[0].Find("layer_loss"), nullptr);
  EXPECT_EQ(lines[0].Find("layer_loss")->as_array().size(), 2u);
  EXPECT_GT(lines[0].Find("tokens_per_s")->as_double(), 0.0);
  EXPECT_EQ(lines[4].Find("saved")->as_string(), out);
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/attn_gate_weights.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/checkpoint/trainer_state.json"));

  // seer run loads them and prefills sparsely with them.
  const std::string ids = WriteIds("run_ids", RandomIds(400, 1));
  RunOutput run = RunBinary("seer", {"run", "--model", Model(), "--gates", out, "--ids", "@" + ids, "--device", "cpu",
                                     "--sparsity", "nz_ratio=0.3", "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto json = JsonValue::Parse(run.out);
  ASSERT_TRUE(json.ok()) << run.out;
  EXPECT_LT(json->Find("density")->Find("overall")->as_double(), 1.0);
  fs::remove_all(data);
  fs::remove_all(out);
  fs::remove(ids);
}

TEST(SeerTrainCli, ResumePicksUpWhereStopAtLeftOff) {
  const std::string ids = WriteIds("train_ids", RandomIds(6 * 256, 2));
  const std::string a = TempPath("straight"), b = TempPath("split");
  const std::vector<std::string> common = {"--model", Model(),     "--data-ids", "@" + ids,  "--seq-len",
                                           "256",     "--steps",   "6",          "--warmup", "2",
                                           "--json",  "--threads", "2",          "--device", "cpu"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = common;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  RunOutput straight = RunBinary("seer-train", with({"--out", a}));
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  RunOutput first = RunBinary("seer-train", with({"--out", b, "--stop-at", "3"}));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  RunOutput second = RunBinary("seer-train", with({"--out", b, "--resume"}));
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const std::vector<JsonValue> s = JsonLines(straight.out), f = JsonLines(first.out), g = JsonLines(second.out);
  ASSERT_EQ(s.size(), 7u);
  ASSERT_EQ(f.size(), 4u);
  ASSERT_EQ(g.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(f[i].Find("loss")->Dump(), s[i].Find("loss")->Dump()) << "step " << i + 1;
    EXPECT_EQ(g[i].Find("step")->as_int64(), i + 4);
    EXPECT_EQ(g[i].Find("loss")->Dump(), s[i + 3].Find("loss")->Dump()) << "step " << i + 4;  // exactly
  }
  EXPECT_EQ(Slurp(a + "/attn_gate_weights.safetensors"), Slurp(b + "/attn_gate_weights.safetensors"));

  // A resume with another --seq-len is refused, naming it.
  std::vector<std::string> other = with({"--out", b, "--resume"});
  other[5] = "128";
  RunOutput refused = RunBinary("seer-train", other);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("--seq-len 256, this run has 128"), std::string::npos) << refused.err;
  fs::remove_all(a);
  fs::remove_all(b);
  fs::remove(ids);
}

TEST(SeerTrainCli, TargetDumpsTheWholeBlockPrefix) {
  const std::vector<int32_t> prompt = RandomIds(333, 3);
  const std::string ids = WriteIds("target_ids", prompt), dump = TempPath("target.safetensors");
  RunOutput r =
      RunBinary("seer-train", {"target", "--model", Model(), "--ids", "@" + ids, "--dump", dump, "--device", "cpu"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto file = SafetensorsFile::Open(dump);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->get()->metadata().at("seq_len"), "320");  // 5 whole blocks of the 333 tokens

  EngineOptions options{Model(), "", "cpu", 2};
  auto engine = CpuEngine::Load(options);
  ASSERT_TRUE(engine.ok());
  auto want = DistillTargets(**engine, std::span<const int32_t>(prompt.data(), 320), 2);
  ASSERT_TRUE(want.ok());
  for (int layer = 0; layer < 2; ++layer) {
    auto t = fixtures::F32(**file, "layers." + std::to_string(layer) + ".target", {4, 5, 5});
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(*t, (*want)[layer]) << "layer " << layer;
    for (int row = 0; row < 4 * 5; ++row) {
      double sum = 0;
      for (int j = 0; j < 5; ++j) sum += (*t)[row * 5 + j];
      EXPECT_NEAR(sum, 1.0, 1e-5) << "layer " << layer << " row " << row;
    }
  }
  EXPECT_EQ(file->get()->Find("layers.2.target"), nullptr);
  fs::remove(ids);
  fs::remove(dump);
}

TEST(SeerTrainCli, BadInvocationsExitWithTheReason) {
  const std::string ids = WriteIds("bad_ids", RandomIds(600, 4)), out = TempPath("bad_out");
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string mention;
  };
  const std::string m = Model();
  const std::vector<Case> cases = {
      {{"--model", m, "--data-ids", "@" + ids, "--steps", "2", "--out", out}, 2, "--seq-len is required"},
      {{"--model", m, "--data-ids", "@" + ids, "--data", ids, "--seq-len", "256", "--steps", "2", "--out", out},
       2,
       "exactly one of --data"},
      {{"--model", m, "--seq-len", "256", "--steps", "2", "--out", out}, 2, "exactly one of --data"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "100", "--steps", "2", "--out", out},
       2,
       "--seq-len: 100 is outside [128"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "256", "--steps", "0", "--out", out},
       2,
       "--steps: 0 is outside [1"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "256", "--steps", "2", "--out", out, "--lr", "-1"},
       2,
       "--lr: -1"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "256", "--steps", "2", "--out", out, "--gate-sparsity",
        "streaming=1,2"},
       2,
       "threshold=T or nz_ratio=R"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "256", "--steps", "2", "--out", out, "--device", "tpu"},
       2,
       "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "1024", "--steps", "2", "--out", out},
       2,
       "600 tokens, fewer than one sequence of --seq-len 1024"},
      {{"--model", fixtures::Path("qwen2"), "--data", ids, "--seq-len", "256", "--steps", "2", "--out", out},
       2,
       "has no tokenizer.json"},
      {{"--model", m, "--data-ids", "@" + ids, "--seq-len", "256", "--steps", "2", "--out", out, "--resume"},
       1,
       "no checkpoint"},
      {{"target", "--model", m, "--ids", "1,2,3", "--dump", out + ".st"}, 2, "3 tokens hold no whole block of 64"},
      {{"target", "--model", m, "--ids", "@" + ids, "--dump", out + ".st", "--device", "cuda:x"},
       2,
       "--device: expected cpu, cuda, cuda:N or auto, got 'cuda:x'"},
  };
  for (const Case& c : cases) {
    RunOutput r = RunBinary("seer-train", c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.mention << "\n" << r.err;
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << r.err;
  }
  RunOutput help = RunBinary("seer-train", {"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--resume"), std::string::npos);
  EXPECT_NE(help.out.find("--warmup"), std::string::npos);
  fs::remove(ids);
  fs::remove_all(out);
}

}  // namespace
}  // namespace seer::train
