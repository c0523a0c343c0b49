// seer-quality-eval: does a gate keep what matters? Perplexity on held-out
// text and passkey retrieval for dense attention, the trained gates at
// several nz_ratios and thresholds, and the two baselines at the densities
// the gates ran at: StreamingLLM (streaming=SINK,WINDOW) below, the oracle
// (oracle=R, each row's best blocks by the true attention) above. Prints
// markdown tables (docs/QUALITY.md) or, with --json, one JSON object.
//
// It runs on any device the engine has; the baselines exist only in the CPU
// gate, so on the GPU their rows say so. The CPU runs the tiny fixtures in
// CI; the real tables (the bundled model at 8k and beyond) are meant for the
// GPU machine.
//
// Exit codes: 0 success, 1 runtime error, 2 usage error.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/version.h"
#include "base/clock.h"
#include "base/flags.h"
#include "base/json.h"
#include "base/strings.h"
#include "bench/passkey.h"
#include "client/token_ids.h"
#include "engine/engine.h"
#include "engine/model/sparsity.h"
#include "kernels/sampling/sampler.h"
#include "text/tokenizer.h"

namespace seer {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr int kBlock = 64;
constexpr int kAnswerTokens = 8;  // generated after a passkey question

// --- the passkey documents (bench/passkey.h) -----------------------------------
using passkey::kFiller;

// The ids of the longest passkey document of at most `length` tokens.
StatusOr<std::vector<int32_t>> PasskeyIds(const Tokenizer& tok, int length, double depth, const std::string& key) {
  SEER_ASSIGN_OR_RETURN(std::vector<int32_t> filler, tok.Encode(kFiller, false));
  int fillers = std::max<int>(1, length / std::max<size_t>(1, filler.size()));
  while (fillers > 0) {
    SEER_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok.Encode(passkey::Document(fillers, depth, key), true));
    if (static_cast<int>(ids.size()) <= length) return ids;
    // Step down in proportion to the overshoot, at least one filler.
    const int over = static_cast<int>(ids.size()) - length;
    fillers -= std::max<int>(1, over / std::max<size_t>(1, filler.size()));
  }
  return InvalidArgument("--passkey-lengths: " + std::to_string(length) +
                         " tokens cannot hold a passkey document (intro, key and question)");
}

// --- rows ----------------------------------------------------------------------

struct Row {
  std::string label;  // what the table shows
  std::string kind;  // dense, gate, streaming, oracle
  std::string matches;  // for a baseline: the gate row whose density it matches
  SparsityConfig sparsity;  // the gate rows' and dense; baselines are chosen per length
};

// The streaming window (sink 1 block, as StreamingLLM keeps a few first
// tokens) whose planned density at nb blocks is closest to `density`.
SparsityConfig MatchedStreaming(const SparsityConfig& base, int nb, double density) {
  SparsityConfig best = base, s = base;
  best.mode = s.mode = SparsityMode::kStreaming;
  best.streaming_sink = s.streaming_sink = 1;
  double best_gap = INFINITY;
  for (int w = 1; w <= std::max(1, nb); ++w) {
    s.streaming_window = w;
    const double gap = std::abs(PlannedDensity(s, nb) - density);
    if (gap < best_gap) best_gap = gap, best = s;
  }
  return best;
}

// The oracle ratio whose planned density at nb blocks is closest to `density`.
SparsityConfig MatchedOracle(const SparsityConfig& base, int nb, double density) {
  SparsityConfig lo = base, hi = base;
  lo.mode = hi.mode = SparsityMode::kOracle;
  lo.oracle_ratio = 1e-6;
  hi.oracle_ratio = 1.0;
  if (PlannedDensity(lo, nb) >= density) return lo;
  for (int i = 0; i < 60; ++i) {
    SparsityConfig mid = base;
    mid.mode = SparsityMode::kOracle;
    mid.oracle_ratio = 0.5 * (lo.oracle_ratio + hi.oracle_ratio);
    (PlannedDensity(mid, nb) >= density ? hi : lo) = mid;
  }
  return std::abs(PlannedDensity(lo, nb) - density) < std::abs(PlannedDensity(hi, nb) - density) ? lo : hi;
}

// --- measurements -----------------------------------------------------------------

struct Measure {
  bool ran = false;
  std::string skipped;  // why not, when not
  std::string sparsity;  // what actually ran
  double ppl = NAN;
  double density = NAN;
  std::vector<double> accuracy;  // passkey: per depth
};

class Evaluator {
 public:
  Evaluator(Engine& engine, const Tokenizer* tokenizer) : engine_(engine), tokenizer_(tokenizer) {}

  // Mean NLL per predicted token and the mean density over the windows.
  StatusOr<Measure> Perplexity(const std::vector<std::vector<int32_t>>& windows, const SparsityConfig& sp) {
    Measure m;
    double nll = 0, density = 0;
    int64_t predicted = 0;
    const int vocab = engine_.config().vocab_size;
    for (const std::vector<int32_t>& ids : windows) {
      SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, engine_.NewCache(static_cast<int>(ids.size())));
      PrefillOptions po;
      po.sparsity = sp;
      po.all_logits = true;
      SEER_ASSIGN_OR_RETURN(PrefillResult r, engine_.Prefill(ids, po, cache.get(), nullptr));
      for (size_t t = 0; t + 1 < ids.size(); ++t) {
        const float* row = r.logits.data() + t * size_t(vocab);
        double mx = -INFINITY;
        for (int v = 0; v < vocab; ++v) mx = std::max(mx, double(row[v]));
        double sum = 0;
        for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - mx);
        nll += mx + std::log(sum) - double(row[ids[t + 1]]);
        ++predicted;
      }
      density += r.overall_density;
    }
    m.ran = true;
    m.sparsity = SparsityToString(sp);
    m.ppl = std::exp(nll / double(predicted));
    m.density = density / double(windows.size());
    return m;
  }

  // Passkey accuracy per depth: greedy answer after a prefill with `sp`.
  StatusOr<Measure> Passkey(const std::vector<std::vector<std::vector<int32_t>>>& docs,  // [depth][trial]
                            const std::vector<std::vector<std::string>>& keys, const SparsityConfig& sp) {
    Measure m;
    double density = 0;
    int runs = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      int correct = 0;
      for (size_t t = 0; t < docs[d].size(); ++t) {
        const std::vector<int32_t>& ids = docs[d][t];
        SEER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                              engine_.NewCache(static_cast<int>(ids.size()) + kAnswerTokens));
        PrefillOptions po;
        po.sparsity = sp;
        SEER_ASSIGN_OR_RETURN(PrefillResult r, engine_.Prefill(ids, po, cache.get(), nullptr));
        Sampler sampler(SamplingParams{});
        const float* last = r.logits.data() + size_t(r.logits_rows - 1) * engine_.config().vocab_size;
        std::vector<int32_t> answer = {
            sampler.Sample(std::span<const float>(last, static_cast<size_t>(engine_.config().vocab_size)))};
        while (answer.size() < kAnswerTokens) {
          SEER_ASSIGN_OR_RETURN(int32_t next, engine_.DecodeAndSample(answer.back(), cache.get(), &sampler));
          answer.push_back(next);
        }
        SEER_ASSIGN_OR_RETURN(std::string text, tokenizer_->Decode(answer, true));
        const size_t first = text.find_first_not_of(' ');
        correct += first != std::string::npos && text.compare(first, keys[d][t].size(), keys[d][t]) == 0;
        density += r.overall_density;
        ++runs;
      }
      m.accuracy.push_back(docs[d].empty() ? NAN : double(correct) / double(docs[d].size()));
    }
    m.ran = true;
    m.sparsity = SparsityToString(sp);
    m.density = runs ? density / runs : NAN;
    return m;
  }

 private:
  Engine& engine_;
  const Tokenizer* tokenizer_;
};

// --- output ---------------------------------------------------------------------

std::string Fixed(double v, int decimals) {
  if (!std::isfinite(v)) return "–";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

JsonValue NumberOrNull(double v) { return std::isfinite(v) ? JsonValue::Number(v) : JsonValue(); }

JsonValue MeasureJson(const Measure& m) {
  JsonValue o = JsonValue::Object();
  if (!m.ran) {
    o.Set("skipped", JsonValue::String(m.skipped));
    return o;
  }
  o.Set("sparsity", JsonValue::String(m.sparsity));
  o.Set("density", NumberOrNull(m.density));
  if (m.accuracy.empty()) {
    o.Set("ppl", NumberOrNull(m.ppl));
  } else {
    JsonValue acc = JsonValue::Array();
    double sum = 0;
    for (double a : m.accuracy) acc.Append(NumberOrNull(a)), sum += a;
    o.Set("accuracy", std::move(acc));
    o.Set("mean_accuracy", NumberOrNull(sum / m.accuracy.size()));
  }
  return o;
}

StatusOr<std::vector<double>> ParseList(const std::string& flag, const std::string& text, double min, double max,
                                        bool integers) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !std::isfinite(v) || v < min || v > max ||
        (integers && v != std::floor(v))) {
      return InvalidArgument(flag + ": '" + item + "' is not " + (integers ? "a whole number" : "a number") + " in [" +
                             ShortestDouble(min) + ", " + ShortestDouble(max) + "]");
    }
    out.push_back(v);
  }
  return out;
}

struct Flags {
  std::string model, gates, text, text_ids, device = "cpu";
  std::string ppl_lengths = "8192", passkey_lengths = "2048,4096,8192", depths = "0,0.25,0.5,0.75,1";
  std::string nz_ratios = "0.5,0.3,0.2,0.1", thresholds = "0.002,0.0005";
  int64_t windows = 1, trials = 5, threads = 0, seed = 1;
  std::string passkey_example;
  bool json = false;
};

int Usage(const std::string& message) {
  std::fprintf(stderr, "seer-quality-eval: %s (see seer-quality-eval --help)\n", message.c_str());
  return kExitUsage;
}

int Runtime(const Status& s) {
  std::fprintf(stderr, "seer-quality-eval: %s\n", s.ToString().c_str());
  return kExitRuntime;
}

int Main(int argc, char** argv) {
  Flags f;
  FlagSet flags("seer-quality-eval --model DIR --gates DIR (--text FILE | --text-ids IDS) [flags]",
                "Perplexity on held-out text and passkey retrieval for dense attention, the gates at each\n"
                "--nz-ratios and --thresholds value, and at the densities the nz_ratio rows ran at, the\n"
                "StreamingLLM baseline (streaming=1,WINDOW) and the oracle (oracle=R). Prints markdown tables;\n"
                "every row shows the density it actually ran at (kept / causal blocks). See docs/QUALITY.md.\n"
                "Exit codes: 0 success, 1 runtime error, 2 usage error.");
  flags.String("model", &f.model, "Hugging Face checkpoint directory. Required.");
  flags.String("gates", &f.gates, "Gate directory (trained by seer-train, or released). Required.");
  flags.String("text", &f.text, "Held-out text for perplexity, tokenized with the model's tokenizer.");
  flags.String("text-ids", &f.text_ids, "Held-out token ids instead of text: \"1,2,3\" or @FILE.");
  flags.String("ppl-lengths", &f.ppl_lengths, "Perplexity context lengths in tokens, comma-separated.");
  flags.Int("windows", &f.windows, "Non-overlapping windows of each length from the start of the text, averaged.");
  flags.String("passkey-lengths", &f.passkey_lengths,
               "Passkey document lengths in tokens (needs the model's tokenizer); empty: no passkey table.");
  flags.String("passkey-depths", &f.depths, "Where the key sits in the document, 0 (start) to 1 (end).");
  flags.Int("passkey-trials", &f.trials, "Documents (random 5-digit keys) per length and depth.");
  flags.String("nz-ratios", &f.nz_ratios, "Gate rows at nz_ratio=R, and the baselines matched to their densities.");
  flags.String("thresholds", &f.thresholds, "Gate rows at threshold=T.");
  flags.String("device", &f.device, "cpu, cuda, cuda:N or auto. The baselines are CPU-only.");
  flags.Int("threads", &f.threads, "CPU threads; 0 uses every core.");
  flags.Int("seed", &f.seed, "Seed of the passkeys.");
  flags.Bool("json", &f.json, "Print one JSON object instead of tables.");
  flags.String("passkey-example", &f.passkey_example,
               "FILLERS,DEPTH,KEY: print that passkey document's text and exit (tools/train_small_model.py "
               "passkey-example prints the same; a test keeps them in step).");
  if (Status s = flags.Parse(argc, argv, 1); !s.ok()) return Usage(s.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (flags.WasSet("passkey-example")) {
    const size_t a = f.passkey_example.find(','), b = f.passkey_example.find(',', a == std::string::npos ? a : a + 1);
    if (a == std::string::npos || b == std::string::npos) return Usage("--passkey-example: expected FILLERS,DEPTH,KEY");
    auto fillers = ParseList("--passkey-example", f.passkey_example.substr(0, a), 0, 1 << 20, true);
    auto depth = ParseList("--passkey-example", f.passkey_example.substr(a + 1, b - a - 1), 0, 1, false);
    if (!fillers.ok() || fillers->size() != 1)
      return Usage("--passkey-example: FILLERS must be a whole number in [0, 1048576]");
    if (!depth.ok() || depth->size() != 1) return Usage("--passkey-example: DEPTH must be in [0, 1]");
    std::fputs(passkey::Document(static_cast<int>((*fillers)[0]), (*depth)[0], f.passkey_example.substr(b + 1)).c_str(),
               stdout);
    return 0;
  }
  if (!flags.positional().empty()) return Usage("unexpected argument '" + flags.positional()[0] + "'");
  if (f.model.empty()) return Usage("--model is required");
  if (f.gates.empty()) return Usage("--gates is required");
  if (flags.WasSet("text") == flags.WasSet("text-ids")) return Usage("give exactly one of --text and --text-ids");
  if (f.windows < 1 || f.windows > 1024) {
    return Usage("--windows: " + std::to_string(f.windows) + " is outside [1, 1024]");
  }
  if (f.trials < 1 || f.trials > 10000) {
    return Usage("--passkey-trials: " + std::to_string(f.trials) + " is outside [1, 10000]");
  }
  if (f.threads < 0 || f.threads > 4096) {
    return Usage("--threads: " + std::to_string(f.threads) + " is outside [0, 4096]");
  }
  auto ppl_lengths = ParseList("--ppl-lengths", f.ppl_lengths, 2, 1 << 24, true);
  auto passkey_lengths = ParseList("--passkey-lengths", f.passkey_lengths, 16, 1 << 24, true);
  auto depths = ParseList("--passkey-depths", f.depths, 0, 1, false);
  auto nz = ParseList("--nz-ratios", f.nz_ratios, 1e-9, 1, false);
  auto thr = ParseList("--thresholds", f.thresholds, 0, 0.999999, false);
  for (const auto* l : {&ppl_lengths, &passkey_lengths, &depths, &nz, &thr}) {
    if (!l->ok()) return Usage(l->status().message());
  }
  if (!passkey_lengths->empty() && depths->empty()) return Usage("--passkey-depths: give at least one depth");
  if (ppl_lengths->empty() && passkey_lengths->empty()) {
    return Usage("nothing to measure: --ppl-lengths and --passkey-lengths are both empty");
  }
  if (Status s = CheckDeviceName(f.device); !s.ok()) return Usage("--" + s.message());

  EngineOptions options;
  options.model_dir = f.model;
  options.gates_dir = f.gates;
  options.device = f.device;
  options.threads = static_cast<int>(f.threads);
  StatusOr<std::unique_ptr<Engine>> engine_or = CreateEngine(options);
  if (!engine_or.ok()) return Runtime(engine_or.status());
  Engine& engine = **engine_or;
  const bool cpu = engine.device_name().rfind("cpu", 0) == 0;
  const int max_pos = engine.config().max_position_embeddings;
  std::unique_ptr<Tokenizer> tokenizer;
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::path(f.model) / "tokenizer.json", ec)) {
    StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(f.model);
    if (!t.ok()) return Runtime(t.status());
    tokenizer = std::move(*t);
  }

  // Held-out tokens.
  std::vector<int32_t> held_out;
  if (flags.WasSet("text-ids")) {
    StatusOr<std::vector<int32_t>> ids = ParseTokenIds(f.text_ids, "--text-ids");
    if (!ids.ok()) return Usage(ids.status().message());
    held_out = std::move(*ids);
  } else {
    if (!tokenizer) return Usage("--text: " + f.model + " has no tokenizer.json; give token ids with --text-ids");
    std::ifstream in(f.text, std::ios::binary);
    if (!in) return Runtime(NotFound("--text: cannot open '" + f.text + "'"));
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text, true);
    if (!ids.ok()) return Runtime(ids.status().WithContext("--text"));
    held_out = std::move(*ids);
  }
  if (Status s = CheckTokenIds(held_out, engine.config().vocab_size, "held-out ids"); !s.ok()) {
    return Usage(s.message());
  }

  // Every passkey document, before anything is measured: a length too short
  // for one is a usage error now, not after the perplexity has run.
  struct PasskeySet {
    int length = 0;
    std::string skipped;
    std::vector<std::vector<std::vector<int32_t>>> docs;  // [depth][trial]
    std::vector<std::vector<std::string>> keys;
    int doc_len = 0;
  };
  std::vector<PasskeySet> passkey_sets;
  if (tokenizer) {
    std::mt19937 rng(static_cast<uint32_t>(f.seed));
    std::uniform_int_distribution<int> digits(10000, 99999);
    for (double len_d : *passkey_lengths) {
      PasskeySet set;
      set.length = static_cast<int>(len_d);
      if (set.length + kAnswerTokens > max_pos) {
        set.skipped = "beyond max_position_embeddings " + std::to_string(max_pos);
        passkey_sets.push_back(std::move(set));
        continue;
      }
      set.docs.resize(depths->size());
      set.keys.resize(depths->size());
      for (size_t d = 0; d < depths->size(); ++d) {
        for (int t = 0; t < f.trials; ++t) {
          set.keys[d].push_back(std::to_string(digits(rng)));
          auto ids = PasskeyIds(*tokenizer, set.length, (*depths)[d], set.keys[d].back());
          if (!ids.ok()) return Usage(ids.status().message());
          set.doc_len = std::max(set.doc_len, static_cast<int>(ids->size()));
          set.docs[d].push_back(std::move(*ids));
        }
      }
      passkey_sets.push_back(std::move(set));
    }
  }

  // The rows: dense and the gates; the baselines follow each nz_ratio row.
  const SparsityConfig gate_default = engine.gates()->config.sparsity;
  std::vector<Row> rows;
  rows.push_back({"dense", "dense", "", SparsityConfig{}});
  rows.back().sparsity.last_block_dense = gate_default.last_block_dense;
  for (double r : *nz) {
    SparsityConfig s = gate_default;
    s.mode = SparsityMode::kNzRatio;
    s.nz_ratio = r;
    rows.push_back({"gates nz_ratio=" + ShortestDouble(r), "gate", "", s});
  }
  for (double t : *thr) {
    SparsityConfig s = gate_default;
    s.mode = SparsityMode::kThreshold;
    s.threshold = t;
    rows.push_back({"gates threshold=" + ShortestDouble(t), "gate", "", s});
  }
  for (double r : *nz) {
    const std::string gate = "gates nz_ratio=" + ShortestDouble(r);
    rows.push_back({"streaming @ " + gate, "streaming", gate, gate_default});
    rows.push_back({"oracle @ " + gate, "oracle", gate, gate_default});
  }
  auto row_index = [&](const std::string& label) {
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].label == label) return static_cast<int>(i);
    }
    return -1;
  };

  Evaluator eval(engine, tokenizer.get());
  // Runs every row at one length with `measure`; baselines at the density
  // their gate row ran at.
  auto run_rows = [&](int length, auto&& measure) -> StatusOr<std::vector<Measure>> {
    std::vector<Measure> out(rows.size());
    const int nb = (length + kBlock - 1) / kBlock;
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& row = rows[i];
      SparsityConfig sp = row.sparsity;
      if (row.kind == "streaming" || row.kind == "oracle") {
        if (!cpu) {
          out[i].skipped = "CPU only";
          continue;
        }
        const Measure& target = out[row_index(row.matches)];
        if (!target.ran) {
          out[i].skipped = target.skipped;
          continue;
        }
        sp = row.kind == "streaming" ? MatchedStreaming(row.sparsity, nb, target.density)
                                     : MatchedOracle(row.sparsity, nb, target.density);
      }
      SEER_ASSIGN_OR_RETURN(out[i], measure(sp));
    }
    return out;
  };

  JsonValue json = JsonValue::Object();
  json.Set("model", JsonValue::String(f.model));
  json.Set("gates", JsonValue::String(f.gates));
  json.Set("device", JsonValue::String(engine.device_name()));
  json.Set("held_out_tokens", JsonValue::Int(static_cast<int64_t>(held_out.size())));
  std::ostringstream md;
  md << "model " << f.model << ", gates " << f.gates << ", device " << engine.device_name() << "\n";
  // Each table is printed when it is complete (an error or an interrupt later
  // keeps what was measured); --json prints one object at the end.
  auto flush_md = [&] {
    if (f.json) return;
    std::fputs(md.str().c_str(), stdout);
    std::fflush(stdout);
    md.str("");
  };
  auto progress = [&](const std::string& what, Clock::time_point start) {
    std::fprintf(stderr, "seer-quality-eval: %s: %zu rows in %.1f s\n", what.c_str(), rows.size(), SecondsSince(start));
  };
  flush_md();

  // Perplexity.
  JsonValue ppl_json = JsonValue::Array();
  std::vector<std::vector<Measure>> ppl_results;
  std::vector<int> ppl_done;
  for (double len_d : *ppl_lengths) {
    const int len = static_cast<int>(len_d);
    JsonValue entry = JsonValue::Object();
    entry.Set("length", JsonValue::Int(len));
    std::string skip;
    if (len > max_pos) skip = "beyond max_position_embeddings " + std::to_string(max_pos);
    if (static_cast<int64_t>(held_out.size()) < int64_t{len} * f.windows) {
      skip = "the held-out text has " + std::to_string(held_out.size()) + " tokens, fewer than " +
             std::to_string(f.windows) + " x " + std::to_string(len);
    }
    if (!skip.empty()) {
      entry.Set("skipped", JsonValue::String(skip));
      md << "\nperplexity at " << len << ": skipped (" << skip << ")\n";
      ppl_json.Append(std::move(entry));
      continue;
    }
    std::vector<std::vector<int32_t>> windows;
    for (int w = 0; w < f.windows; ++w) {
      windows.emplace_back(held_out.begin() + int64_t{w} * len, held_out.begin() + int64_t{w + 1} * len);
    }
    const Clock::time_point start = Clock::now();
    auto results = run_rows(len, [&](const SparsityConfig& sp) { return eval.Perplexity(windows, sp); });
    if (!results.ok()) return Runtime(results.status().WithContext("perplexity at " + std::to_string(len)));
    progress("perplexity at " + std::to_string(len) + " tokens", start);
    JsonValue jrows = JsonValue::Array();
    for (size_t i = 0; i < rows.size(); ++i) {
      JsonValue r = MeasureJson((*results)[i]);
      r.Set("row", JsonValue::String(rows[i].label));
      jrows.Append(std::move(r));
    }
    entry.Set("windows", JsonValue::Int(f.windows));
    entry.Set("rows", std::move(jrows));
    ppl_json.Append(std::move(entry));
    ppl_results.push_back(std::move(*results));
    ppl_done.push_back(len);
  }
  json.Set("perplexity", std::move(ppl_json));
  if (!ppl_done.empty()) {
    md << "\n### Perplexity (" << f.windows << " window" << (f.windows > 1 ? "s" : "") << " per length)\n\n| row |";
    for (int len : ppl_done) md << " ppl @" << len << " | density @" << len << " |";
    md << "\n|---|";
    for (size_t i = 0; i < ppl_done.size(); ++i) md << "---|---|";
    md << "\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      md << "| " << rows[i].label << " |";
      for (const auto& res : ppl_results) {
        const Measure& m = res[i];
        if (!m.ran) {
          md << " " << m.skipped << " | |";
        } else {
          md << " " << Fixed(m.ppl, 3) << " | " << Fixed(m.density, 3) << " |";
        }
      }
      md << "\n";
    }
    md << "\nBaseline rows run at the density their gate row ran at (streaming=1,WINDOW and oracle=R chosen per "
          "length; the exact settings are in --json).\n";
  }
  flush_md();

  // Passkey retrieval.
  JsonValue pk_json = JsonValue::Array();
  if (!passkey_lengths->empty() && !tokenizer) {
    md << "\npasskey: skipped (" << f.model << " has no tokenizer.json)\n";
    json.Set("passkey_skipped", JsonValue::String("no tokenizer.json"));
  } else {
    for (const PasskeySet& set : passkey_sets) {
      const int len = set.length;
      JsonValue entry = JsonValue::Object();
      entry.Set("length", JsonValue::Int(len));
      if (!set.skipped.empty()) {
        entry.Set("skipped", JsonValue::String(set.skipped));
        md << "\npasskey at " << len << ": skipped (" << set.skipped << ")\n";
        pk_json.Append(std::move(entry));
        continue;
      }
      const Clock::time_point start = Clock::now();
      auto results =
          run_rows(set.doc_len, [&](const SparsityConfig& sp) { return eval.Passkey(set.docs, set.keys, sp); });
      if (!results.ok()) return Runtime(results.status().WithContext("passkey at " + std::to_string(len)));
      progress("passkey at " + std::to_string(len) + " tokens", start);
      JsonValue jrows = JsonValue::Array();
      md << "\n### Passkey retrieval, " << len << " tokens (" << f.trials << " keys per depth)\n\n| row |";
      for (double d : *depths) md << " depth " << ShortestDouble(d) << " |";
      md << " mean | density |\n|---|";
      for (size_t i = 0; i < depths->size() + 2; ++i) md << "---|";
      md << "\n";
      for (size_t i = 0; i < rows.size(); ++i) {
        const Measure& m = (*results)[i];
        JsonValue r = MeasureJson(m);
        r.Set("row", JsonValue::String(rows[i].label));
        jrows.Append(std::move(r));
        md << "| " << rows[i].label << " |";
        if (!m.ran) {
          for (size_t d = 0; d < depths->size(); ++d) md << " |";
          md << " " << m.skipped << " | |\n";
          continue;
        }
        double sum = 0;
        for (double a : m.accuracy) md << " " << Fixed(a, 2) << " |", sum += a;
        md << " " << Fixed(sum / m.accuracy.size(), 2) << " | " << Fixed(m.density, 3) << " |\n";
      }
      entry.Set("rows", std::move(jrows));
      JsonValue jd = JsonValue::Array();
      for (double d : *depths) jd.Append(JsonValue::Number(d));
      entry.Set("depths", std::move(jd));
      entry.Set("trials", JsonValue::Int(f.trials));
      pk_json.Append(std::move(entry));
      flush_md();
    }
  }
  json.Set("passkey", std::move(pk_json));

  if (f.json) std::printf("%s\n", json.Dump().c_str());
  flush_md();
  return 0;
}

}  // namespace
}  // namespace seer

int main(int argc, char** argv) {
  try {
    if (seer::PrintVersionIfAsked(argc, argv, "seer-quality-eval")) return 0;
    return seer::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seer-quality-eval: internal error: %s\n", e.what());
    return 1;
  }
}
