// seer-train: SeerAttention's gate self-distillation for any checkpoint Seer
// loads (docs/TRAINING.md), and `seer-train target`, the distillation target
// of a prompt as a safetensors file (for tests and inspection).
//
// Exit codes: 0 success, 1 runtime error, 2 usage error; 143 / 130 after
// SIGTERM / SIGINT, once the step in progress is saved.

#include <algorithm>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/flags.h"
#include "base/json.h"
#include "base/strings.h"
#include "base/version.h"
#include "client/token_ids.h"
#include "engine/model/sparsity.h"
#include "formats/safetensors.h"
#include "text/tokenizer.h"
#include "train/gate_trainer.h"
#include "train/train_data.h"

namespace seer::train {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr char kDeviceHelp[] =
    "cpu, cuda (device 0), cuda:N, or auto (cuda when this build has it and a GPU is present): where the frozen "
    "teacher runs and the distillation target is computed.";

int UsageError(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "%s: %s (see %s --help)\n", command.c_str(), message.c_str(), command.c_str());
  return kExitUsage;
}

int RuntimeError(const std::string& command, const Status& status) {
  std::fprintf(stderr, "%s: %s\n", command.c_str(), status.ToString().c_str());
  return kExitRuntime;
}

// cpu, auto, cuda or cuda:N.
Status CheckDeviceFlag(const std::string& device) {
  if (device == "cpu" || device == "auto") return OkStatus();
  if (ParseCudaDeviceIndex(device).ok()) return OkStatus();
  return InvalidArgument("--device: expected cpu, cuda, cuda:N or auto, got '" + device + "'");
}

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string Sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

// --- seer-train target ----------------------------------------------------

int RunTarget(int argc, char** argv) {
  const std::string cmd = "seer-train target";
  std::string model, ids_text, dump, device = "auto";
  int64_t threads = 0;
  FlagSet flags("seer-train target --model DIR --ids IDS --dump OUT.safetensors [flags]",
                "Runs the prompt through the model with dense attention and writes SeerAttention's\n"
                "distillation target of every layer (for each query block x key block, the maximum over the\n"
                "block of the causal softmax probability, each row normalised to sum 1) for the longest\n"
                "prefix of the prompt that is a whole number of 64-token blocks:\n"
                "  layers.{i}.target  F32 [q_heads, nb, nb]\n"
                "Exit codes: 0 success, 1 runtime error, 2 usage error.");
  flags.String("model", &model, "Hugging Face checkpoint directory. Required.");
  flags.String("ids", &ids_text, "Prompt token ids: \"1,2,3\" (commas and/or whitespace), or @FILE. Required.");
  flags.String("dump", &dump, "Output .safetensors file. Required.");
  flags.String("device", &device, kDeviceHelp);
  flags.Int("threads", &threads, "CPU threads; 0 uses every core.");
  if (Status s = flags.Parse(argc, argv, 2); !s.ok()) return UsageError(cmd, s.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!flags.positional().empty()) return UsageError(cmd, "unexpected argument '" + flags.positional()[0] + "'");
  if (model.empty()) return UsageError(cmd, "--model is required");
  if (ids_text.empty()) return UsageError(cmd, "--ids is required");
  if (dump.empty()) return UsageError(cmd, "--dump is required");
  if (Status s = CheckDeviceFlag(device); !s.ok()) return UsageError(cmd, s.message());
  if (threads < 0 || threads > 4096) {
    return UsageError(cmd, "--threads: " + std::to_string(threads) + " is outside [0, 4096]");
  }
  StatusOr<std::vector<int32_t>> ids = ParseTokenIds(ids_text, "--ids");
  if (!ids.ok()) return UsageError(cmd, ids.status().message());
  constexpr int kBlock = 64;
  const size_t given = ids->size();
  const size_t whole = ids->size() / kBlock * kBlock;
  if (whole == 0) {
    return UsageError(
        cmd, "--ids: " + std::to_string(ids->size()) + " tokens hold no whole block of " + std::to_string(kBlock));
  }
  ids->resize(whole);

  EngineOptions options;
  options.model_dir = model;
  options.device = device;
  options.threads = static_cast<int>(threads);
  StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(options);
  if (!engine.ok()) return RuntimeError(cmd, engine.status());
  const int host_threads =
      threads > 0 ? static_cast<int>(threads) : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  StatusOr<std::vector<std::vector<float>>> targets = DistillTargets(**engine, *ids, host_threads, kBlock);
  if (!targets.ok()) {
    const StatusCode code = targets.status().code();
    if (code == StatusCode::kInvalidArgument) return UsageError(cmd, targets.status().WithContext("--ids").message());
    return RuntimeError(cmd, targets.status());
  }
  const ModelConfig& c = (*engine)->config();
  const int64_t nb = static_cast<int64_t>(whole) / kBlock;
  SafetensorsWriter writer;
  writer.SetMetadata("seq_len", std::to_string(whole));
  writer.SetMetadata("block_size", std::to_string(kBlock));
  writer.SetMetadata("model", model);
  for (size_t layer = 0; layer < targets->size(); ++layer) {
    writer.AddF32("layers." + std::to_string(layer) + ".target", {c.num_heads, nb, nb}, (*targets)[layer]);
  }
  if (Status s = writer.WriteFile(dump); !s.ok()) return RuntimeError(cmd, s.WithContext("--dump"));
  std::printf("wrote %s: %d layers, [%d, %lld, %lld] targets for the first %zu of %zu tokens\n", dump.c_str(),
              c.num_layers, c.num_heads, static_cast<long long>(nb), static_cast<long long>(nb), whole, given);
  return 0;
}

// --- seer-train -------------------------------------------------------------

// The first SIGTERM or SIGINT asks the loop to save after the step in
// progress and exit (a batch scheduler's time limit, a Ctrl-C); a second one
// kills as usual (the handler resets itself).
volatile std::sig_atomic_t g_stop_signal = 0;

void OnStopSignal(int sig) {
  g_stop_signal = sig;
  // Either signal, next time, kills (signal() is async-signal-safe).
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
}

void InstallStopHandlers() {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sa.sa_flags = 0;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

namespace fs = std::filesystem;

// The absolute form of `p`, symlinks resolved as far as it exists.
fs::path Resolved(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p, ec), ec);
  return ec ? fs::path(p).lexically_normal() : r;
}

bool Inside(const fs::path& child, const fs::path& parent) {
  auto c = child.begin();
  for (auto p = parent.begin(); p != parent.end(); ++p, ++c) {
    if (c == child.end() || *p != *c) return false;
  }
  return true;
}

// What --out may be, checked before any data is read or step run, so that a
// run never ends by failing to save: a directory (made here) that is
// writable, not the model's or inside the training text's, with no other
// weights LoadGates would read. A previous run's output is continued with
// --resume or replaced with --overwrite (whose old files are deleted only
// once the new run has passed every check, just before its first step).
Status CheckOut(const std::string& out, const std::string& model, const std::string& data, bool resume,
                bool overwrite) {
  const fs::path out_path = Resolved(out);
  if (out_path == Resolved(model)) {
    return InvalidArgument("--out: '" + out + "' is the --model directory; the gates need a directory of their own");
  }
  std::error_code ec;
  if (!data.empty() && fs::is_directory(data, ec) && Inside(out_path, Resolved(data))) {
    return InvalidArgument("--out: '" + out + "' is inside --data '" + data +
                           "'; its files would be read as training text (and change the data on --resume)");
  }
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
    return InvalidArgument("--out: '" + out + "' exists and is not a directory");
  }
  fs::create_directories(out, ec);
  if (ec) return InvalidArgument("--out: cannot create '" + out + "': " + ec.message());
  const fs::path probe = fs::path(out) / (".seer-train-probe-" + std::to_string(::getpid()));
  {
    std::FILE* f = std::fopen(probe.c_str(), "wb");
    if (f == nullptr) return InvalidArgument("--out: '" + out + "' is not writable: " + std::strerror(errno));
    std::fclose(f);
    fs::remove(probe, ec);
  }
  bool gates = false;
  for (const fs::directory_entry& e : fs::directory_iterator(out, ec)) {
    const std::string name = e.path().filename().string();
    if (name == "attn_gate_weights.safetensors") {
      gates = true;
    } else if (name == "attn_gate_weights.pth" || name.ends_with(".safetensors")) {
      return InvalidArgument("--out: '" + out + "' holds " + name +
                             ", which LoadGates would read beside the trained gates; use another --out");
    }
  }
  const fs::path state = fs::path(out) / "checkpoint" / "trainer_state.json";
  const bool checkpoint = fs::exists(state, ec);
  if (resume || overwrite || (!checkpoint && !gates)) return OkStatus();
  std::string what = "gates";
  if (checkpoint) {
    StatusOr<JsonValue> json = ReadJsonFile(state.string());
    const JsonValue* step = json.ok() ? json->Find("step") : nullptr;
    what = "a training checkpoint" +
           (step != nullptr && step->is_integer() ? " at step " + std::to_string(step->as_int64()) : std::string());
  }
  return InvalidArgument("--out: '" + out + "' holds " + what +
                         " from an earlier run: pass --resume to continue it, --overwrite to start again, or "
                         "choose another --out");
}

// --overwrite, once the run is ready to start: the earlier run's gates and
// checkpoint go, so that nothing of it is left to be taken for this run's.
Status RemoveEarlierRun(const std::string& out) {
  std::error_code ec;
  for (const char* name : {"attn_gate_weights.safetensors", "config.json"}) {
    fs::remove(fs::path(out) / name, ec);
    if (ec) return Internal("--overwrite: cannot remove " + (fs::path(out) / name).string() + ": " + ec.message());
  }
  fs::remove_all(fs::path(out) / "checkpoint", ec);
  if (ec) return Internal("--overwrite: cannot remove " + out + "/checkpoint: " + ec.message());
  return OkStatus();
}

struct Flags {
  std::string model, data, data_ids, out, device = "auto", gate_sparsity = "threshold=0.002";
  int64_t seq_len = 0, steps = 0, batch = 1, warmup = 20, seed = 0, threads = 0, save_every = 0, log_every = 1;
  int64_t stop_at = 0;
  int64_t gate_hidden = 0;
  double lr = 1e-3, loss_scale = 10.0, max_grad_norm = 1.0, weight_decay = 0.0;
  bool json = false, resume = false, overwrite = false;
};

JsonValue StepJson(const StepReport& r, int64_t steps) {
  JsonValue o = JsonValue::Object();
  o.Set("step", JsonValue::Int(r.step));
  o.Set("steps", JsonValue::Int(steps));
  o.Set("loss", JsonValue::Number(r.loss));
  JsonValue layers = JsonValue::Array();
  for (double l : r.layer_loss) layers.Append(JsonValue::Number(l));
  o.Set("layer_loss", std::move(layers));
  o.Set("lr", JsonValue::Number(r.lr));
  o.Set("grad_norm", JsonValue::Number(r.grad_norm));
  o.Set("tokens", JsonValue::Int(r.tokens));
  o.Set("seconds", JsonValue::Number(r.seconds));
  o.Set("tokens_per_s", JsonValue::Number(r.seconds > 0 ? r.tokens / r.seconds : 0.0));
  return o;
}

std::string StepLine(const StepReport& r, int64_t steps) {
  std::string line =
      "step " + std::to_string(r.step) + "/" + std::to_string(steps) + "  loss " + Fixed(r.loss, 5) + "  layers [";
  for (size_t i = 0; i < r.layer_loss.size(); ++i) {
    if (i > 0) line += ' ';
    line += Fixed(r.layer_loss[i], 4);
  }
  line += "]  lr " + Sci(r.lr) + "  |grad| " + Sci(r.grad_norm) + "  " +
          Fixed(r.seconds > 0 ? r.tokens / r.seconds : 0.0, 0) + " tokens/s";
  return line;
}

int RunTrain(int argc, char** argv) {
  const std::string cmd = "seer-train";
  Flags f;
  FlagSet flags(
      "seer-train --model DIR (--data PATH | --data-ids IDS) --seq-len N --steps N --out DIR [flags]\n"
      "       seer-train target --model DIR --ids IDS --dump OUT.safetensors",
      "Trains SeerAttention gates for a checkpoint by self-distillation (docs/TRAINING.md): the model is\n"
      "frozen and runs densely; each layer's gate learns, from that one pass, to predict the block max of\n"
      "the layer's true attention (KL divergence, the first quarter of query-block rows dropped, summed\n"
      "over layers). AdamW, cosine schedule with warm-up. Writes a gate directory Seer loads (--gates OUT)\n"
      "and a checkpoint in OUT/checkpoint that --resume continues exactly. SIGTERM or SIGINT saves after\n"
      "the step in progress and exits (a second one kills at once).\n"
      "Exit codes: 0 success, 1 runtime error, 2 usage error, 143/130 saved after SIGTERM/SIGINT.");
  flags.String("model", &f.model, "Hugging Face checkpoint directory. Required.");
  flags.String("data", &f.data,
               "Training text: a file, or a directory of files (each one document), tokenized with the model's "
               "tokenizer.json, BOS/EOS per document.");
  flags.String("data-ids", &f.data_ids, "Training token ids instead of text: \"1,2,3\" or @FILE (as seer run --ids).");
  flags.Int("seq-len", &f.seq_len, "Tokens per training sequence (the data is packed into these). Required.");
  flags.Int("steps", &f.steps, "Optimizer steps (the cosine schedule's length). Required.");
  flags.String("out", &f.out, "Output gate directory (config.json + attn_gate_weights.safetensors). Required.");
  flags.String("device", &f.device,
               std::string(kDeviceHelp) +
                   " The gates' loss and gradient run in float64 on the same device, the optimizer on the host.");
  flags.Bool("json", &f.json, "One JSON object per line: step, loss, layer_loss, lr, grad_norm, tokens_per_s, ...");
  flags.Int("batch", &f.batch, "Sequences per optimizer step (the reference uses 16 of 64k tokens).");
  flags.Double("lr", &f.lr, "Peak learning rate.");
  flags.Int("warmup", &f.warmup, "Linear warm-up steps (from 0) before the cosine decay.");
  flags.Double("weight-decay", &f.weight_decay, "AdamW's decoupled weight decay.");
  flags.Double("loss-scale", &f.loss_scale,
               "Multiplier of the KL in the optimised loss (the reference's gate_loss_scale; it matters with "
               "--max-grad-norm).");
  flags.Double("max-grad-norm", &f.max_grad_norm, "Clip the gradient's global norm to this (0: no clipping).");
  flags.Int("seed", &f.seed, "Seed of the initial gate weights and of the order of the sequences.");
  flags.Int("gate-hidden", &f.gate_hidden,
            "The gate's hidden size; 0 is head_dim, the released form (no mask_linear_q). Another size adds "
            "mask_linear_q (the authors' double form).");
  flags.String("gate-sparsity", &f.gate_sparsity,
               "The default selection written into the gates' config.json: threshold=T or nz_ratio=R "
               "(a request's --sparsity overrides it).");
  flags.Bool("resume", &f.resume, "Continue from OUT/checkpoint (same model, data and flags; --steps may change).");
  flags.Bool("overwrite", &f.overwrite,
             "Start again in an --out that holds an earlier run's gates or checkpoint (deleting that checkpoint). "
             "Without it (or --resume) such an --out is refused.");
  flags.Int("save-every", &f.save_every, "Also save the gates and the checkpoint every N steps (0: only at the end).");
  flags.Int("stop-at", &f.stop_at,
            "Stop (saving gates and checkpoint) once this many steps are done, before --steps; a later --resume "
            "continues the same schedule (for runs split across time-limited jobs). 0: run to --steps.");
  flags.Int("log-every", &f.log_every, "Print every N-th step (and the last).");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every core.");

  if (Status s = flags.Parse(argc, argv, 1); !s.ok()) return UsageError(cmd, s.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!flags.positional().empty()) return UsageError(cmd, "unexpected argument '" + flags.positional()[0] + "'");
  if (f.model.empty()) return UsageError(cmd, "--model is required (a checkpoint directory)");
  if (flags.WasSet("data") == flags.WasSet("data-ids")) {
    return UsageError(cmd, "give exactly one of --data PATH (text) and --data-ids IDS (token ids)");
  }
  if (!flags.WasSet("seq-len")) return UsageError(cmd, "--seq-len is required");
  if (!flags.WasSet("steps")) return UsageError(cmd, "--steps is required");
  if (f.out.empty()) return UsageError(cmd, "--out is required (the gate directory to write)");
  if (Status s = CheckDeviceFlag(f.device); !s.ok()) return UsageError(cmd, s.message());
  struct Range {
    const char* flag;
    int64_t value, min, max;
  };
  const Range ranges[] = {{"--seq-len", f.seq_len, 128, int64_t{1} << 24},
                          {"--steps", f.steps, 1, int64_t{1} << 40},
                          {"--batch", f.batch, 1, 1 << 16},
                          {"--warmup", f.warmup, 0, int64_t{1} << 40},
                          {"--seed", f.seed, 0, int64_t{1} << 62},
                          {"--threads", f.threads, 0, 4096},
                          {"--save-every", f.save_every, 0, int64_t{1} << 40},
                          {"--log-every", f.log_every, 1, int64_t{1} << 40},
                          {"--gate-hidden", f.gate_hidden, 0, 65536},
                          {"--stop-at", f.stop_at, 0, int64_t{1} << 40}};
  for (const Range& r : ranges) {
    if (r.value < r.min || r.value > r.max) {
      return UsageError(cmd, std::string(r.flag) + ": " + std::to_string(r.value) + " is outside [" +
                                 std::to_string(r.min) + ", " + std::to_string(r.max) + "]");
    }
  }
  struct RealRange {
    const char* flag;
    double value;
    bool positive;  // > 0 (else >= 0)
  };
  for (const RealRange& r :
       {RealRange{"--lr", f.lr, true}, RealRange{"--weight-decay", f.weight_decay, false},
        RealRange{"--loss-scale", f.loss_scale, true}, RealRange{"--max-grad-norm", f.max_grad_norm, false}}) {
    if (!std::isfinite(r.value) || (r.positive ? !(r.value > 0) : !(r.value >= 0))) {
      return UsageError(cmd, std::string(r.flag) + ": " + ShortestDouble(r.value) + " must be a finite number " +
                                 (r.positive ? "above 0" : "of at least 0"));
    }
  }
  if (f.resume && f.overwrite) return UsageError(cmd, "give at most one of --resume and --overwrite");
  if (Status s = CheckOut(f.out, f.model, flags.WasSet("data") ? f.data : std::string(), f.resume, f.overwrite);
      !s.ok()) {
    return UsageError(cmd, s.message());
  }
  StatusOr<SparsityConfig> gate_sparsity = ParseSparsity(f.gate_sparsity);
  if (!gate_sparsity.ok()) return UsageError(cmd, gate_sparsity.status().WithContext("--gate-sparsity").message());
  if (gate_sparsity->mode != SparsityMode::kThreshold && gate_sparsity->mode != SparsityMode::kNzRatio) {
    return UsageError(cmd, "--gate-sparsity: the gates' default must be threshold=T or nz_ratio=R, not " +
                               SparsityToString(*gate_sparsity));
  }

  // The data: ids as given, or the text through the model's tokenizer.
  const Clock::time_point t0 = Clock::now();
  std::vector<int32_t> ids;
  std::string data_note;
  if (flags.WasSet("data-ids")) {
    StatusOr<std::vector<int32_t>> parsed = ParseTokenIds(f.data_ids, "--data-ids");
    if (!parsed.ok()) return UsageError(cmd, parsed.status().message());
    ids = std::move(*parsed);
    data_note = std::to_string(ids.size()) + " token ids";
  } else {
    const std::string tok_path = (std::filesystem::path(f.model) / "tokenizer.json").string();
    std::error_code ec;
    if (!std::filesystem::exists(tok_path, ec)) {
      return UsageError(cmd, "--data: " + f.model +
                                 " has no tokenizer.json to tokenize the text with; give token "
                                 "ids with --data-ids");
    }
    StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(f.model);
    if (!tokenizer.ok()) return RuntimeError(cmd, tokenizer.status());
    const int threads = f.threads > 0 ? static_cast<int>(f.threads)
                                      : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    StatusOr<TokenStream> stream = TokenizeText(f.data, **tokenizer, threads);
    if (!stream.ok()) return RuntimeError(cmd, stream.status());
    ids = std::move(stream->ids);
    data_note = std::to_string(stream->documents) + " documents, " + std::to_string(ids.size()) + " tokens";
  }
  const double data_seconds = SecondsSince(t0);

  TrainConfig config;
  config.seq_len = static_cast<int>(f.seq_len);
  config.steps = f.steps;
  config.batch = static_cast<int>(f.batch);
  config.lr = f.lr;
  config.warmup = f.warmup;
  config.adamw.weight_decay = f.weight_decay;
  config.loss_scale = f.loss_scale;
  config.max_grad_norm = f.max_grad_norm;
  config.seed = f.seed;
  config.gate_hidden = static_cast<int>(f.gate_hidden);
  StatusOr<std::unique_ptr<GateTrainer>> trainer_or =
      GateTrainer::Create(f.model, static_cast<int>(f.threads), config, std::move(ids), f.device);
  if (!trainer_or.ok()) {
    const Status& s = trainer_or.status();
    return s.code() == StatusCode::kInvalidArgument ? UsageError(cmd, s.message()) : RuntimeError(cmd, s);
  }
  GateTrainer& trainer = **trainer_or;
  const std::string checkpoint = (std::filesystem::path(f.out) / "checkpoint").string();
  const int64_t last_step = f.stop_at > 0 && f.stop_at < f.steps ? f.stop_at : f.steps;
  if (f.resume) {
    if (Status s = trainer.LoadCheckpoint(checkpoint); !s.ok()) return RuntimeError(cmd, s);
    if (trainer.step() >= last_step) {
      return UsageError(cmd, std::string(last_step == f.steps ? "--steps " : "--stop-at ") + std::to_string(last_step) +
                                 " is not past the checkpoint's step " + std::to_string(trainer.step()) +
                                 ": nothing to train (the output is unchanged)");
    }
  }

  const ModelConfig& m = trainer.model();
  const GateShape& g = trainer.shape();
  if (!f.json) {
    std::printf("model       %s (%s, %d layers, %d/%d heads, head_dim %d)\n", f.model.c_str(),
                m.architecture_name.c_str(), m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim);
    const std::string dev = trainer.device_name();
    if (dev.starts_with("cuda")) {
      std::printf("device      %s (bf16 teacher and target; the gates' loss and gradient in float64 there too)\n",
                  dev.c_str());
    } else {
      std::printf("device      cpu (%d threads, float32 teacher, float64 gates)\n", trainer.threads());
    }
    std::printf("gates       Qavg_Kmaxminavg, hidden %d, mask_linear_k [%d, %d, %d]%s\n", g.hidden, g.k_weight_heads,
                3 * g.head_dim, g.hidden, g.has_q_weight ? ", mask_linear_q" : "");
    std::printf("data        %s (%.1f s), %lld sequences of %lld\n", data_note.c_str(), data_seconds,
                static_cast<long long>(trainer.num_sequences()), static_cast<long long>(f.seq_len));
    std::printf(
        "schedule    %lld steps x %lld sequences, AdamW lr %s, warm-up %lld, cosine; loss scale %s, "
        "clip %s%s\n",
        static_cast<long long>(f.steps), static_cast<long long>(f.batch), Sci(f.lr).c_str(),
        static_cast<long long>(f.warmup), ShortestDouble(f.loss_scale).c_str(), ShortestDouble(f.max_grad_norm).c_str(),
        f.resume ? ("; resumed at step " + std::to_string(trainer.step())).c_str() : "");
    std::fflush(stdout);
  }

  JsonValue note = JsonValue::Object();
  auto save = [&](double last_loss) -> Status {
    note.Set("tool", JsonValue::String(std::string("seer-train ") + kVersion));
    note.Set("step", JsonValue::Int(trainer.step()));
    note.Set("steps", JsonValue::Int(f.steps));
    note.Set("seq_len", JsonValue::Int(f.seq_len));
    note.Set("batch", JsonValue::Int(f.batch));
    note.Set("lr", JsonValue::Number(f.lr));
    note.Set("warmup", JsonValue::Int(f.warmup));
    note.Set("data", JsonValue::String(flags.WasSet("data") ? f.data : std::string("--data-ids")));
    note.Set("device", JsonValue::String(trainer.device_name()));
    if (std::isfinite(last_loss)) note.Set("loss", JsonValue::Number(last_loss));
    SEER_RETURN_IF_ERROR(trainer.WriteGates(f.out, *gate_sparsity, note));
    return trainer.SaveCheckpoint(checkpoint);
  };

  double last_loss = NAN;
  const Clock::time_point train_start = Clock::now();
  int64_t tokens = 0;
  int64_t saved_step = f.resume ? trainer.step() : 0;
  if (f.overwrite) {
    if (Status s = RemoveEarlierRun(f.out); !s.ok()) return RuntimeError(cmd, s);
  }
  InstallStopHandlers();
  while (trainer.step() < last_step) {
    if (g_stop_signal != 0) {
      const int sig = g_stop_signal;
      if (Status s = save(last_loss); !s.ok()) return RuntimeError(cmd, s);
      std::fprintf(stderr, "%s: %s at step %lld of %lld: saved %s and its checkpoint; --resume continues from here\n",
                   cmd.c_str(), sig == SIGTERM ? "SIGTERM" : "SIGINT", static_cast<long long>(trainer.step()),
                   static_cast<long long>(f.steps), f.out.c_str());
      return 128 + sig;
    }
    StatusOr<StepReport> r = trainer.Step();
    if (!r.ok()) return RuntimeError(cmd, r.status());
    // Diverged: a loss or gradient that is not finite, or a weight that no
    // longer fits in bf16 (the gates are written in bf16). Checked every
    // step: a run never trains on only to fail at its save.
    std::string diverged;
    if (!std::isfinite(r->loss) || !std::isfinite(r->grad_norm)) {
      diverged = "the loss (" + ShortestDouble(r->loss) + ") or the gradient norm (" + ShortestDouble(r->grad_norm) +
                 ") is not finite";
    } else if (std::optional<std::string> w = trainer.WeightPastBf16(); w.has_value()) {
      diverged = *w;
    }
    if (!diverged.empty()) {
      std::printf("%s\n", f.json ? StepJson(*r, f.steps).Dump().c_str() : StepLine(*r, f.steps).c_str());
      const std::string kept = saved_step > 0
                                   ? "the save of step " + std::to_string(saved_step) + " in " + f.out + " is kept"
                                   : std::string("nothing was saved");
      return RuntimeError(cmd, FailedPrecondition("step " + std::to_string(r->step) + ": " + diverged +
                                                  ": the training diverged (lower --lr or --loss-scale); " + kept));
    }
    last_loss = r->loss;
    tokens += r->tokens;
    if (r->step % f.log_every == 0 || r->step == last_step) {
      std::printf("%s\n", f.json ? StepJson(*r, f.steps).Dump().c_str() : StepLine(*r, f.steps).c_str());
      std::fflush(stdout);
    }
    if (f.save_every > 0 && r->step % f.save_every == 0 && r->step < last_step) {
      if (Status s = save(last_loss); !s.ok()) return RuntimeError(cmd, s);
      saved_step = r->step;
    }
  }
  if (Status s = save(last_loss); !s.ok()) return RuntimeError(cmd, s);
  const double seconds = SecondsSince(train_start);
  if (f.json) {
    JsonValue done = JsonValue::Object();
    done.Set("step", JsonValue::Int(trainer.step()));
    done.Set("loss", std::isfinite(last_loss) ? JsonValue::Number(last_loss) : JsonValue());
    done.Set("saved", JsonValue::String(f.out));
    done.Set("checkpoint", JsonValue::String(checkpoint));
    done.Set("tokens_per_s", JsonValue::Number(seconds > 0 ? tokens / seconds : 0.0));
    done.Set("device", JsonValue::String(trainer.device_name()));
    std::printf("%s\n", done.Dump().c_str());
  } else {
    std::printf("saved       %s (gates, step %lld) and %s; %lld tokens in %.1f s, %.0f tokens/s\n", f.out.c_str(),
                static_cast<long long>(trainer.step()), checkpoint.c_str(), static_cast<long long>(tokens), seconds,
                seconds > 0 ? tokens / seconds : 0.0);
  }
  return 0;
}

}  // namespace
}  // namespace seer::train

int main(int argc, char** argv) {
  // Nothing below should throw; this keeps a surprise (an allocation failure
  // in a library) an error message rather than a crash.
  try {
    if (argc >= 2 && std::string(argv[1]) == "target") return seer::train::RunTarget(argc, argv);
    if (seer::PrintVersionIfAsked(argc, argv, "seer-train")) return 0;
    return seer::train::RunTrain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seer-train: internal error: %s\n", e.what());
    return 1;
  }
}
