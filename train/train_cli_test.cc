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
using seer::testing::ShellQuote;
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

// A CPU training run of 256-token sequences from the ids in `ids_file`, with
// --json; `extra` last. (--seq-len's value is args[5].)
std::vector<std::string> TrainArgs(const std::string& ids_file, int steps, int warmup,
                                   const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--model",  Model(),     "--data-ids", "@" + ids_file, "--seq-len",
                                   "256",      "--steps",   std::to_string(steps), "--warmup", std::to_string(warmup),
                                   "--json",   "--threads", "2",          "--device",     "cpu"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

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
  auto with = [&](const std::vector<std::string>& extra) { return TrainArgs(ids, 6, 2, extra); };
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

int64_t CheckpointStep(const std::string& out) {
  auto j = ReadJsonFile(out + "/checkpoint/trainer_state.json");
  return j.ok() && j->Find("step") != nullptr ? j->Find("step")->as_int64() : -1;
}

// --out is checked before the data is read or a step runs; an earlier run's
// output is continued or replaced only when asked; a resume with nothing to
// do changes nothing.
TEST(SeerTrainCli, TheOutputIsCheckedFirstAndNeverSilentlyReplaced) {
  const std::string ids = WriteIds("out_ids", RandomIds(4 * 256, 5)), out = TempPath("out_checks");
  auto run = [&](const std::string& to, std::vector<std::string> extra) {
    extra.insert(extra.begin(), {"--out", to});
    return RunBinary("seer-train", TrainArgs(ids, 4, 1, extra));
  };
  RunOutput first = run(out, {"--stop-at", "2"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(CheckpointStep(out), 2);
  const std::string gates_before = Slurp(out + "/attn_gate_weights.safetensors");
  const std::string config_before = Slurp(out + "/config.json");

  // Forgetting --resume: refused, nothing trained or written.
  RunOutput again = run(out, {});
  EXPECT_EQ(again.exit_code, 2) << again.err;
  EXPECT_NE(again.err.find("holds a training checkpoint at step 2"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
  EXPECT_EQ(again.out.find("\"step\""), std::string::npos) << "no step may run: " << again.out;
  // A resume with nothing left to do: refused, the output unchanged.
  RunOutput nothing = run(out, {"--resume", "--stop-at", "2"});
  EXPECT_EQ(nothing.exit_code, 2);
  EXPECT_NE(nothing.err.find("--stop-at 2 is not past the checkpoint's step 2"), std::string::npos) << nothing.err;
  EXPECT_EQ(Slurp(out + "/attn_gate_weights.safetensors"), gates_before);
  EXPECT_EQ(Slurp(out + "/config.json"), config_before);
  EXPECT_EQ(CheckpointStep(out), 2);
  // --overwrite that fails a later check deletes nothing.
  RunOutput bad_overwrite = run(out, {"--overwrite", "--gate-sparsity", "dense"});
  EXPECT_EQ(bad_overwrite.exit_code, 2) << bad_overwrite.err;
  EXPECT_EQ(CheckpointStep(out), 2);
  EXPECT_EQ(Slurp(out + "/attn_gate_weights.safetensors"), gates_before);
  // --overwrite starts again from step 0 (the first two losses repeat).
  RunOutput fresh = run(out, {"--overwrite", "--stop-at", "1"});
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err;
  EXPECT_EQ(CheckpointStep(out), 1);
  EXPECT_EQ(JsonLines(fresh.out)[0].Find("loss")->Dump(), JsonLines(first.out)[0].Find("loss")->Dump());
  EXPECT_EQ(run(out, {"--overwrite", "--resume"}).exit_code, 2);

  // Outputs that cannot take the gates: refused at once, exit 2.
  const std::string data_dir = TempPath("out_data"), file = TempPath("out_file"), other = TempPath("out_other");
  fs::create_directories(data_dir);
  std::ofstream(data_dir + "/a.txt") << "some text for the data directory\n";
  std::ofstream(file) << "x";
  fs::create_directories(other);
  std::ofstream(other + "/model.safetensors") << "x";
  struct Case {
    std::string out;
    std::vector<std::string> extra;
    std::string mention;
  };
  const std::vector<Case> cases = {
      {Model(), {}, "is the --model directory"},
      {file, {}, "exists and is not a directory"},
      {other, {}, "holds model.safetensors, which LoadGates would read"},
      {"/proc/seer-train-out", {}, "--out: cannot create"},
  };
  for (const Case& c : cases) {
    RunOutput r = run(c.out, c.extra);
    EXPECT_EQ(r.exit_code, 2) << c.mention << "\n" << r.err;
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("\"step\""), std::string::npos) << r.out;
  }
  RunOutput inside = RunBinary("seer-train", {"--model", Model(), "--data", data_dir, "--seq-len", "128", "--steps",
                                              "1", "--out", data_dir + "/gates", "--device", "cpu"});
  EXPECT_EQ(inside.exit_code, 2);
  EXPECT_NE(inside.err.find("is inside --data"), std::string::npos) << inside.err;
  EXPECT_FALSE(fs::exists(Model() + "/attn_gate_weights.safetensors"));
  fs::remove_all(out);
  fs::remove_all(data_dir);
  fs::remove_all(other);
  fs::remove(file);
  fs::remove(ids);
}

// A run that diverges stops with exit 1 and writes nothing that would load as
// gates; the last good save stays.
TEST(SeerTrainCli, ADivergedRunSavesNothing) {
  const std::string ids = WriteIds("diverge_ids", RandomIds(3 * 256, 6)), out = TempPath("diverged");
  // lr 1e300: the loss stays finite while the weights leave bf16's range;
  // the run stops at that step, not at its save.
  RunOutput r =
      RunBinary("seer-train", {"--model",   Model(), "--data-ids", "@" + ids, "--seq-len",       "256", "--steps", "6",
                               "--warmup",  "0",     "--lr",       "1e300",   "--max-grad-norm", "0",   "--out",   out,
                               "--threads", "2",     "--device",   "cpu",     "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("the training diverged"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("past bf16's range"), std::string::npos) << r.err;
  EXPECT_LT(JsonLines(r.out).size(), 6u) << "stopped before the last step: " << r.out;
  EXPECT_FALSE(fs::exists(out + "/attn_gate_weights.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/checkpoint/trainer_state.json"));
  fs::remove_all(out);
  fs::remove(ids);
}

// A save interrupted between writing its tensors and renaming its .json
// leaves the previous .json naming the previous tensors, which are still
// there: --resume continues from that step, exactly.
TEST(SeerTrainCli, AnInterruptedSaveLeavesThePreviousCheckpointWhole) {
  const std::string ids = WriteIds("interrupt_ids", RandomIds(4 * 256, 7));
  const std::string straight = TempPath("interrupt_straight"), out = TempPath("interrupt"),
                    side = TempPath("interrupt_side");
  auto with = [&](const std::vector<std::string>& extra) { return TrainArgs(ids, 4, 1, extra); };
  RunOutput s = RunBinary("seer-train", with({"--out", straight}));
  ASSERT_EQ(s.exit_code, 0) << s.err;
  ASSERT_EQ(RunBinary("seer-train", with({"--out", out, "--stop-at", "1"})).exit_code, 0);
  fs::create_directories(side);
  fs::copy(out + "/checkpoint", side, fs::copy_options::recursive);
  ASSERT_EQ(RunBinary("seer-train", with({"--out", out, "--resume", "--stop-at", "2"})).exit_code, 0);
  EXPECT_TRUE(fs::exists(out + "/checkpoint/" + GateTrainer::TensorsName(2)));
  EXPECT_FALSE(fs::exists(out + "/checkpoint/" + GateTrainer::TensorsName(1))) << "deleted once step 2 was saved";
  // The moment before step 2's .json was renamed: step 1's .json and tensors
  // beside step 2's tensors.
  fs::copy(side, out + "/checkpoint", fs::copy_options::overwrite_existing | fs::copy_options::recursive);
  ASSERT_EQ(CheckpointStep(out), 1);
  RunOutput resumed = RunBinary("seer-train", with({"--out", out, "--resume"}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const std::vector<JsonValue> want = JsonLines(s.out), got = JsonLines(resumed.out);
  ASSERT_EQ(got.size(), 4u);  // steps 2, 3, 4, then the save
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i].Find("loss")->Dump(), want[i + 1].Find("loss")->Dump()) << i;
  EXPECT_EQ(Slurp(out + "/attn_gate_weights.safetensors"), Slurp(straight + "/attn_gate_weights.safetensors"));
  fs::remove_all(straight);
  fs::remove_all(out);
  fs::remove_all(side);
  fs::remove(ids);
}

// SIGTERM (a batch scheduler's time limit) saves after the step in progress
// and exits 143; --resume then continues exactly as an uninterrupted run.
TEST(SeerTrainCli, SigtermSavesTheStepInProgressAndResumeContinues) {
  const std::string ids = WriteIds("sigterm_ids", RandomIds(4 * 256, 8));
  const std::string out = TempPath("sigterm"), straight = TempPath("sigterm_straight");
  const std::string log = TempPath("sigterm_out"), err = TempPath("sigterm_err"), rc = TempPath("sigterm_rc");
  std::string cmd = ShellQuote(std::string(SEER_BIN_DIR) + "/seer-train");
  for (const std::string& a : TrainArgs(ids, 100000, 1, {"--out", out})) cmd += " " + ShellQuote(a);
  // Start it, wait for its first step, SIGTERM it, keep its exit status.
  const std::string script = cmd + " >" + ShellQuote(log) + " 2>" + ShellQuote(err) +
                             " & pid=$!; for i in $(seq 1200); do grep -q '\"step\"' " + ShellQuote(log) +
                             " && break; sleep 0.05; done; kill -TERM $pid; wait $pid; echo $? >" + ShellQuote(rc);
  ASSERT_EQ(std::system(("bash -c " + ShellQuote(script)).c_str()), 0);
  EXPECT_EQ(Slurp(rc), "143\n") << Slurp(err);
  EXPECT_NE(Slurp(err).find("SIGTERM at step"), std::string::npos) << Slurp(err);
  const std::vector<JsonValue> done = JsonLines(Slurp(log));
  ASSERT_GE(done.size(), 1u);
  const int64_t step = CheckpointStep(out);
  EXPECT_EQ(step, done.back().Find("step")->as_int64()) << "the last step printed is the one saved";
  ASSERT_TRUE(fs::exists(out + "/attn_gate_weights.safetensors"));

  RunOutput resumed = RunBinary(
      "seer-train", TrainArgs(ids, 100000, 1, {"--out", out, "--resume", "--stop-at", std::to_string(step + 1)}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  RunOutput whole =
      RunBinary("seer-train", TrainArgs(ids, 100000, 1, {"--out", straight, "--stop-at", std::to_string(step + 1)}));
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_EQ(JsonLines(resumed.out)[0].Find("loss")->Dump(), JsonLines(whole.out)[step].Find("loss")->Dump());
  EXPECT_EQ(Slurp(out + "/attn_gate_weights.safetensors"), Slurp(straight + "/attn_gate_weights.safetensors"));
  for (const std::string& p : {out, straight, log, err, rc, ids}) fs::remove_all(p);
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
