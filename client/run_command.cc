#include "client/run_command.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <exception>
#include <fstream>
#include <limits>
#include <optional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/flags.h"
#include "base/json.h"
#include "engine/engine.h"
#include "formats/safetensors.h"
#include "engine/model/sparsity.h"
#include "text/prompt.h"
#include "client/sparsity_flags.h"
#include "client/prompt_flags.h"
#include "client/token_ids.h"
#include "kernels/sampling/sampler.h"

namespace seer {
namespace {

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr int64_t kMaxNewTokens = int64_t{1} << 20;

// New tokens for a text prompt when --max-new-tokens is not given.
constexpr int64_t kDefaultTextTokens = 64;

struct RunFlags {
  std::string model;
  PromptFlags prompt;
  std::string device = "auto";
  std::string gates;
  SparsityFlags sparsity;
  int64_t max_new_tokens = 0;
  std::string dump;
  bool json = false;
  int64_t threads = 0;
  int64_t logprobs = -1;
  double repetition_penalty = 1.0;
  GuideFlags guide;
};

int UsageError(const std::string& message) {
  const bool mentions_help = message.find("--help") != std::string::npos;
  std::fprintf(stderr, "seer run: %s%s\n", message.c_str(), mentions_help ? "" : " (see seer run --help)");
  return kExitUsage;
}

int RuntimeError(const Status& status) {
  std::fprintf(stderr, "seer run: %s\n", status.ToString().c_str());
  return kExitRuntime;
}

// Writes logits [rows, vocab], the prompt's KV cache per layer and, when
// gated, each layer's block mask and gate probabilities.
Status WriteDump(const std::string& path, const Engine& engine, const PrefillResult& result, const KvCache& cache,
                 int seq_len) {
  const ModelConfig& c = engine.config();
  SafetensorsWriter writer;
  writer.AddF32("logits", {result.logits_rows, c.vocab_size}, result.logits);
  const KvLayout& layout = cache.layout();
  const size_t elems = static_cast<size_t>(layout.num_kv_heads) * seq_len * layout.head_dim;
  std::vector<uint8_t> k_raw(layout.LayerBytes(seq_len)), v_raw(layout.LayerBytes(seq_len));
  std::vector<float> k(elems), v(elems);
  const std::vector<int64_t> kv_shape = {layout.num_kv_heads, seq_len, layout.head_dim};
  for (int layer = 0; layer < layout.num_layers; ++layer) {
    SEER_RETURN_IF_ERROR(cache.ReadLayer(layer, 0, seq_len, k_raw.data(), v_raw.data()));
    if (!ConvertToFloat(layout.dtype, k_raw.data(), elems, k.data()) ||
        !ConvertToFloat(layout.dtype, v_raw.data(), elems, v.data())) {
      return Internal("--dump: cannot convert KV of type " + std::string(DTypeName(layout.dtype)) + " to F32");
    }
    const std::string prefix = "layers." + std::to_string(layer) + ".";
    writer.AddF32(prefix + "k", kv_shape, k);
    writer.AddF32(prefix + "v", kv_shape, v);
  }
  for (size_t layer = 0; layer < result.gate_outputs.size(); ++layer) {
    const GateOutput& g = result.gate_outputs[layer];
    const int64_t h = g.mask.num_heads, nb = g.mask.num_blocks;
    const std::string prefix = "layers." + std::to_string(layer) + ".";
    writer.Add(prefix + "block_mask", DType::kU8, {h, nb, nb}, g.mask.keep.data(), g.mask.keep.size());
    writer.AddF32(prefix + "gate_probs", {h, nb, nb}, g.probs);
  }
  return writer.WriteFile(path).WithContext("--dump");
}

std::string FormatDouble(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

int Run(int argc, char** argv) {
  RunFlags f;
  FlagSet flags("seer run --model DIR (--ids IDS | --prompt TEXT | --prompt-file F | --chat MESSAGES.json) [flags]",
                "Prefills a prompt with the model on this machine (no server) and prints the next-token\n"
                "prediction. With --gates, attention is SeerAttention's gated block-sparse attention and\n"
                "the density of each layer is printed. Greedy generation with --max-new-tokens.\n"
                "A text prompt (--prompt, --prompt-file, --chat) is tokenized with the model's tokenizer,\n"
                "generation stops at its EOS token, and the answer is printed as text.\n"
                "Exit codes: 0 success, 1 runtime error, 2 usage error.");
  flags.String("model", &f.model, "Hugging Face checkpoint directory (config.json + *.safetensors). Required.");
  f.prompt.Register(flags, "the model directory's tokenizer.json");
  flags.String("device", &f.device, "cpu, cuda, or auto (cuda when this build has it and a GPU is present).");
  flags.String("gates", &f.gates,
               "SeerAttention gate directory (config.json + attn_gate_weights.pth or *.safetensors). "
               "Without it every layer is dense.");
  f.sparsity.baselines = true;  // streaming= and oracle= run here, on the CPU
  f.sparsity.Register(flags, "the gate config's (needs --gates; so do the baselines)");
  flags.Int("max-new-tokens", &f.max_new_tokens,
            "Generate up to N tokens greedily after the prompt (with --ids exactly N, no stop token; with a "
            "text prompt until the tokenizer's EOS). 0 prints only the next-token prediction. Default: 0 with "
            "--ids, " +
                std::to_string(kDefaultTextTokens) + " with a text prompt.");
  flags.String("dump", &f.dump,
               "Write OUT.safetensors: logits F32 [L, vocab], layers.{i}.k / layers.{i}.v F32 "
               "[kv_heads, L, head_dim] (K after RoPE), and with --gates layers.{i}.block_mask U8 [Hq, nb, nb] "
               "and layers.{i}.gate_probs F32 [Hq, nb, nb].");
  flags.Bool("json", &f.json,
             "Print one JSON object: tokens, next_token, density {overall, layers}, prefill_ms, decode_ms, "
             "device, seq_len, sparsity.");
  flags.Int("threads", &f.threads, "CPU threads for the cpu device; 0 uses every core.");
  flags.Double("repetition-penalty", &f.repetition_penalty,
               "Divide the positive logits (multiply the others) of the tokens the prompt or the answer already "
               "has by R before each greedy choice, as seer-decode's repetition_penalty does; in (0, 100], 1 is "
               "none.");
  f.guide.Register(flags);
  flags.Int("logprobs", &f.logprobs,
            "Also print each token's log-probability under the model (log_softmax of its logits) and its N most "
            "likely alternatives, 0 to " +
                std::to_string(kMaxTopLogprobs) + "; -1 prints none. As seer-decode reports them.");

  Status parsed = flags.Parse(argc, argv, 1);
  if (!parsed.ok()) return UsageError(parsed.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return 0;
  }
  if (!flags.positional().empty()) return UsageError("unexpected argument '" + flags.positional()[0] + "'");
  if (f.model.empty()) return UsageError("--model is required (a checkpoint directory)");
  if (!(f.repetition_penalty > 0.0 && f.repetition_penalty <= kMaxRepetitionPenalty) ||
      static_cast<float>(f.repetition_penalty) == 0.0f) {
    return UsageError("--repetition-penalty: " + FormatDouble(f.repetition_penalty, 3) + " is out of range (0, " +
                      FormatDouble(kMaxRepetitionPenalty, 0) + "]");
  }
  if (f.logprobs < -1 || f.logprobs > kMaxTopLogprobs) {
    return UsageError("--logprobs: " + std::to_string(f.logprobs) + " is out of range [-1, " +
                      std::to_string(kMaxTopLogprobs) + "]");
  }
  if (Status s = f.prompt.CheckOne(flags); !s.ok()) return UsageError(s.message());
  const bool text_mode = f.prompt.is_text(flags);
  StatusOr<GuideSpec> guide_spec = f.guide.Spec(flags);
  if (!guide_spec.ok()) return UsageError(guide_spec.status().message());
  std::shared_ptr<const Grammar> grammar;
  if (guide_spec->kind != GuideSpec::Kind::kNone) {
    if (!text_mode) return UsageError("guided decoding needs a text prompt (--prompt, --prompt-file or --chat)");
    StatusOr<std::shared_ptr<const Grammar>> compiled = CompileGuide(*guide_spec);
    if (!compiled.ok()) return UsageError(compiled.status().message());
    grammar = *std::move(compiled);
  }
  if (text_mode && !flags.WasSet("max-new-tokens")) f.max_new_tokens = kDefaultTextTokens;
  if (f.device != "cpu" && f.device != "cuda" && f.device != "auto") {
    return UsageError("--device: expected cpu, cuda or auto, got '" + f.device + "'");
  }
  if (f.max_new_tokens < 0 || f.max_new_tokens > kMaxNewTokens) {
    return UsageError("--max-new-tokens: " + std::to_string(f.max_new_tokens) + " is outside [0, " +
                      std::to_string(kMaxNewTokens) + "]");
  }
  if (f.threads < 0 || f.threads > 4096) {
    return UsageError("--threads: " + std::to_string(f.threads) + " is outside [0, 4096]");
  }
  if (f.gates.empty() && flags.WasSet("sparsity")) return UsageError("--sparsity needs --gates DIR");
  if (f.gates.empty() && flags.WasSet("last-block-dense")) return UsageError("--last-block-dense needs --gates DIR");
  StatusOr<SparsityRequest> sparsity = f.sparsity.ToRequest(flags);
  if (!sparsity.ok()) return UsageError(sparsity.status().message());
  if (flags.WasSet("ids")) {
    StatusOr<std::vector<int32_t>> syntax = f.prompt.Ids(flags, nullptr);
    if (!syntax.ok()) return UsageError(syntax.status().message());
  }
  if (std::error_code ec; !std::filesystem::is_directory(f.model, ec)) {
    return RuntimeError(NotFound("--model: '" + f.model + "' is not a directory"));
  }
  // The tokenizer: --tokenizer, else the model directory's when it has one.
  // With --ids it only turns the answer into text: one of the model's own
  // that does not load leaves the answer as ids, with a warning.
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizerAt(flags.WasSet("tokenizer") ? f.prompt.tokenizer : f.model, flags.WasSet("tokenizer"));
  if (!tokenizer.ok()) {
    if (flags.WasSet("tokenizer") || !flags.WasSet("ids")) {
      return RuntimeError(
          tokenizer.status().WithContext(flags.WasSet("tokenizer") ? "--tokenizer" : "the model's tokenizer.json"));
    }
    std::fprintf(stderr, "seer run: the model's tokenizer.json does not load (%s); the answer is token ids only\n",
                 tokenizer.status().ToString().c_str());
    tokenizer = std::unique_ptr<Tokenizer>();
  }
  StatusOr<std::vector<int32_t>> ids_or = f.prompt.Ids(flags, tokenizer->get());
  if (!ids_or.ok()) {
    if (ids_or.status().code() == StatusCode::kInvalidArgument ||
        ids_or.status().code() == StatusCode::kFailedPrecondition) {
      return UsageError(ids_or.status().message());
    }
    return RuntimeError(ids_or.status());
  }
  const std::vector<int32_t>& ids = *ids_or;

  EngineOptions options;
  options.model_dir = f.model;
  options.gates_dir = f.gates;
  options.device = f.device;
  options.threads = static_cast<int>(f.threads);
  options.gemm_tuning = false;  // one prefill: timing the GEMMs would cost more than it saves
  StatusOr<std::unique_ptr<Engine>> engine_or = CreateEngine(options);
  if (!engine_or.ok()) return RuntimeError(engine_or.status());
  Engine& engine = **engine_or;
  const ModelConfig& config = engine.config();
  // The ids are checked once the model says how large the vocabulary is.
  if (Status s = CheckPromptIds(ids, config.vocab_size, "--ids"); !s.ok()) return UsageError(s.message());

  PrefillOptions prefill;
  prefill.all_logits = !f.dump.empty();
  prefill.keep_gate_outputs = !f.dump.empty();
  const GateWeights* gates = engine.gates();
  StatusOr<SparsityConfig> resolved = ResolveSparsity(*sparsity, gates ? &gates->config.sparsity : nullptr);
  if (!resolved.ok()) return UsageError(resolved.status().message());
  prefill.sparsity = *resolved;

  const int seq_len = static_cast<int>(ids.size());
  const int generate = static_cast<int>(f.max_new_tokens);
  // The last generated token is never fed back, so N tokens need N - 1 slots.
  const int64_t capacity = int64_t{seq_len} + std::max(generate - 1, 0);
  if (capacity > engine.config().max_position_embeddings) {
    return UsageError("the prompt (" + std::to_string(seq_len) + " tokens) plus --max-new-tokens (" +
                      std::to_string(generate) + ") need " + std::to_string(capacity) +
                      " positions; the model's max_position_embeddings is " +
                      std::to_string(engine.config().max_position_embeddings));
  }
  if (capacity > std::numeric_limits<int>::max()) return UsageError("--ids plus --max-new-tokens is too long");
  StatusOr<std::unique_ptr<KvCache>> cache_or = engine.NewCache(static_cast<int>(capacity));
  if (!cache_or.ok()) return RuntimeError(cache_or.status());
  KvCache& cache = **cache_or;

  StatusOr<PrefillResult> result_or = engine.Prefill(ids, prefill, &cache, nullptr);
  if (!result_or.ok()) return RuntimeError(result_or.status());
  const PrefillResult& result = *result_or;
  if (!f.dump.empty()) {
    Status dumped = WriteDump(f.dump, engine, result, cache, seq_len);
    if (!dumped.ok()) return RuntimeError(dumped);
  }

  // Greedy decoding from the last prompt position, through the sampler the
  // servers use (DecodeAndSample samples where the engine keeps the logits).
  // A text prompt's answer ends at an end-of-text id (the tokenizer's EOS,
  // generation_config.json's eos_token_id), as seer-decode's does.
  std::vector<int32_t> end_ids;
  if (text_mode && *tokenizer != nullptr) {
    StatusOr<std::vector<int32_t>> ends = EndOfTextIds(**tokenizer, f.model);
    if (!ends.ok()) return RuntimeError(ends.status());
    end_ids = std::move(*ends);
  }
  SamplingParams greedy;
  greedy.logprobs = static_cast<int>(f.logprobs);
  greedy.repetition_penalty = f.repetition_penalty;
  if (f.repetition_penalty != 1.0) greedy.prompt_ids = ids;
  if (grammar != nullptr) {
    StatusOr<std::shared_ptr<const GuideVocabulary>> vocabulary = GuideVocabulary::FromTokenizer(**tokenizer);
    if (!vocabulary.ok()) return RuntimeError(vocabulary.status());
    greedy.guide = std::make_shared<GrammarGuideFactory>(grammar, *vocabulary);
    greedy.end_ids = end_ids;
    greedy.vocab_size = config.vocab_size;
  }
  Sampler sampler(greedy);
  const float* last = result.logits.data() + static_cast<size_t>(result.logits_rows - 1) * config.vocab_size;
  const int32_t next_token = sampler.Sample(std::span<const float>(last, static_cast<size_t>(config.vocab_size)));
  std::vector<int32_t> tokens = {next_token};
  std::vector<TokenLogprobs> logprobs;
  if (sampler.wants_logprobs()) logprobs.push_back(sampler.last_logprobs());
  auto ended = [&](int32_t t) { return std::find(end_ids.begin(), end_ids.end(), t) != end_ids.end(); };
  const Clock::time_point decode_start = Clock::now();
  // A guide that lost part of its language fails the run, as it fails a
  // server's request.
  for (int n = 1; n < generate && !ended(tokens.back()) && sampler.GuideFailure().empty(); ++n) {
    StatusOr<int32_t> next = engine.DecodeAndSample(tokens.back(), &cache, &sampler);
    if (!next.ok()) return RuntimeError(next.status());
    tokens.push_back(*next);
    if (sampler.wants_logprobs()) logprobs.push_back(sampler.last_logprobs());
  }
  if (!sampler.GuideFailure().empty()) return RuntimeError(InvalidArgument("guide: " + sampler.GuideFailure()));
  std::string text;
  if (text_mode && generate > 0) {
    StatusOr<std::string> decoded = (*tokenizer)->Decode(tokens, /*skip_special_tokens=*/true);
    if (!decoded.ok()) return RuntimeError(decoded.status().WithContext("decoding the answer"));
    text = std::move(*decoded);
  }
  const double decode_ms = SecondsSince(decode_start) * 1e3;
  const double prefill_ms = result.seconds * 1e3;
  const std::string sparsity_text = engine.gates() ? SparsityToString(prefill.sparsity) : "dense";

  if (f.json) {
    JsonValue out = JsonValue::Object();
    JsonValue token_list = JsonValue::Array();
    for (int32_t t : tokens) token_list.Append(JsonValue::Int(t));
    out.Set("tokens", std::move(token_list));
    out.Set("next_token", JsonValue::Int(next_token));
    if (sampler.wants_logprobs()) {
      // [{token, logprob, top: [{token, logprob}]}] per token; -inf as null.
      auto entry = [](const TokenLogprob& t) {
        JsonValue e = JsonValue::Object();
        e.Set("token", JsonValue::Int(t.id));
        e.Set("logprob", std::isfinite(t.logprob) ? JsonValue::Number(t.logprob) : JsonValue());
        return e;
      };
      JsonValue list = JsonValue::Array();
      for (const TokenLogprobs& lp : logprobs) {
        JsonValue e = entry(lp.chosen);
        JsonValue top = JsonValue::Array();
        for (const TokenLogprob& t : lp.top) top.Append(entry(t));
        e.Set("top", std::move(top));
        list.Append(std::move(e));
      }
      out.Set("logprobs", std::move(list));
    }
    if (text_mode) out.Set("text", JsonValue::String(text));
    JsonValue density = JsonValue::Object();
    density.Set("overall", JsonValue::Number(result.overall_density));
    JsonValue layers = JsonValue::Array();
    for (double d : result.layer_density) layers.Append(JsonValue::Number(d));
    density.Set("layers", std::move(layers));
    out.Set("density", std::move(density));
    // Microsecond resolution is all a timer here can claim.
    out.Set("prefill_ms", JsonValue::Number(std::round(prefill_ms * 1e3) / 1e3));
    out.Set("decode_ms", JsonValue::Number(std::round(decode_ms * 1e3) / 1e3));
    out.Set("device", JsonValue::String(engine.device_name()));
    out.Set("seq_len", JsonValue::Int(seq_len));
    out.Set("gated", JsonValue::Bool(engine.gates() != nullptr));
    out.Set("sparsity", JsonValue::String(sparsity_text));
    if (engine.gates()) out.Set("last_block_dense", JsonValue::Bool(prefill.sparsity.last_block_dense));
    if (!f.dump.empty()) out.Set("dump", JsonValue::String(f.dump));
    std::printf("%s\n", out.Dump().c_str());
    return 0;
  }

  std::ostringstream os;
  os << "model       " << f.model << " (" << config.architecture_name << ", " << config.num_layers << " layers, vocab "
     << config.vocab_size << ")\n";
  os << "device      " << engine.device_name() << "\n";
  os << "prompt      " << seq_len << " tokens\n";
  if (engine.gates()) {
    os << "attention   gated block-sparse, " << sparsity_text
       << ", last_block_dense=" << (prefill.sparsity.last_block_dense ? "true" : "false") << "\n";
  } else {
    os << "attention   dense (no gates)\n";
  }
  os << "prefill     " << FormatDouble(prefill_ms, 2) << " ms\n";
  os << "next token  " << next_token << "\n";
  if (generate > 0) {
    os << "generated  ";
    for (int32_t t : tokens) os << " " << t;
    os << "\n            (" << tokens.size() << " tokens, " << FormatDouble(decode_ms, 2) << " ms decoding)\n";
    if (text_mode) os << "text        " << text << "\n";
  }
  for (size_t i = 0; i < logprobs.size(); ++i) {
    os << "logprob " << i
       << (i < 10    ? "   "
           : i < 100 ? "  "
                     : " ")
       << logprobs[i].chosen.id << " " << FormatDouble(logprobs[i].chosen.logprob, 4);
    if (!logprobs[i].top.empty()) os << "  (top:";
    for (const TokenLogprob& t : logprobs[i].top) os << " " << t.id << " " << FormatDouble(t.logprob, 4);
    os << (logprobs[i].top.empty() ? "\n" : ")\n");
  }
  os << "density     overall " << FormatDouble(result.overall_density, 4) << "\n";
  for (size_t i = 0; i < result.layer_density.size(); ++i) {
    os << "  layer " << i
       << (i < 10    ? "   "
           : i < 100 ? "  "
                     : " ")
       << FormatDouble(result.layer_density[i], 4) << "\n";
  }
  if (!f.dump.empty()) os << "dump        " << f.dump << "\n";
  std::fputs(os.str().c_str(), stdout);
  return 0;
}

}  // namespace

int RunOfflineCommand(int argc, char** argv) {
  // Nothing below should throw; this keeps a surprise (an allocation failure
  // in a library) an error message rather than a crash.
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "seer run: internal error: %s\n", e.what());
    return kExitRuntime;
  }
}

}  // namespace seer
