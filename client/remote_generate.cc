// `seer generate`: sends a prompt (token ids, text or chat messages) to
// seer-decode and prints the tokens, or their text, as they stream back.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "client/prompt_flags.h"
#include "client/remote_common.h"
#include "client/token_ids.h"
#include "base/clock.h"
#include "base/flags.h"
#include "base/json.h"
#include "rpc/requests.h"
#include "seer/v1/seer.grpc.pb.h"
#include "text/prompt.h"

namespace seer {

namespace {

// [{token, logprob, text, top: [{token, logprob, text}]}]; a logprob that is
// not a number (-inf, or NaN for a prompt's first token) as null.
JsonValue LogprobsJson(const std::vector<v1::TokenLogprobs>& entries) {
  auto entry = [](const v1::TokenLogprob& t) {
    JsonValue e = JsonValue::Object();
    e.Set("token", JsonValue::Int(t.token_id()));
    e.Set("logprob", std::isfinite(t.logprob()) ? JsonValue::Number(t.logprob()) : JsonValue());
    e.Set("text", JsonValue::String(t.text()));
    return e;
  };
  JsonValue list = JsonValue::Array();
  for (const v1::TokenLogprobs& lp : entries) {
    JsonValue e = entry(lp.chosen());
    JsonValue top = JsonValue::Array();
    for (const v1::TokenLogprob& t : lp.top()) top.Append(entry(t));
    e.Set("top", std::move(top));
    list.Append(std::move(e));
  }
  return list;
}

}  // namespace

int RunGenerateCommand(int argc, char** argv) {
  using namespace remote;
  const char* cmd = "generate";
  CommonFlags common;
  common.ids_required = false;
  std::string stop, kv_wire = "auto", prompt, prompt_file, chat, allowed_ids;
  std::vector<std::string> stop_strings, logit_bias, bad_words;
  GuideFlags guide;
  int64_t max_new_tokens = 16, min_new_tokens = 0, top_k = 0, seed = 0, logprobs = -1, prompt_logprobs = -1, n = 1;
  bool ignore_eos = false, include_stop = false, keep_special = false, continue_final = false;
  bool add_generation_prompt = true;
  std::string template_kwargs;
  double temperature = 0.0, top_p = 0.0, min_p = 0.0, presence_penalty = 0.0, frequency_penalty = 0.0;
  double repetition_penalty = 1.0;
  FlagSet flags("seer generate --addr HOST:PORT (--ids IDS | --prompt TEXT | --prompt-file F | --chat F) [flags]",
                "Sends a prompt to a seer-decode server (seer.v1.DecodeService/Generate) and prints the tokens as\n"
                "they stream back (their text, for a text or chat prompt), then the time to first token.\n"
                "A text prompt is tokenized by the server, with the model's tokenizer; a chat goes through\n"
                "the model's chat template. Greedy unless --temperature is set.\n"
                "--json prints one object: tokens, text, ttft_ms, density {overall, layers}, timings, and\n"
                "with --logprobs / --prompt-logprobs the logprobs [{token, logprob, text, top}].\n"
                "With --n above 1 the replies are printed whole as they finish, each after \"[choice I]\", and\n"
                "--json adds choices [{tokens, text, logprobs, finish_reason}] (the top level is choice 0's).\n"
                "Exit codes: 0 success, 1 the call failed (the message has the gRPC status code), 2 usage.");
  common.Register(flags, "seer-decode");
  flags.Int("max-new-tokens", &max_new_tokens, "tokens to generate; 0 takes the server's --default-max-new-tokens");
  flags.Int("min-new-tokens", &min_new_tokens,
            "the reply's first N tokens cannot end it: no stop token or end-of-text is chosen and no stop string "
            "looked for until then (vLLM's min_tokens; at most --max-new-tokens)");
  flags.Bool("ignore-eos", &ignore_eos,
             "a text reply goes on past the tokenizer's end-of-text ids (vLLM's ignore_eos)");
  flags.String("allowed-token-ids", &allowed_ids,
               "only these token ids may be chosen (\"5,9,12\"; vLLM's allowed_token_ids)");
  flags.Strings("bad-word", &bad_words,
                "a word the reply never spells (vLLM's bad_words); give it once per word (the API takes up to 64)");
  guide.Register(flags);
  flags.Bool("include-stop-str", &include_stop,
             "the text ends with what ended it: the stop string, or the stop token's text "
             "(vLLM's include_stop_str_in_output)");
  flags.Bool("keep-special-tokens", &keep_special,
             "the text keeps special tokens (end-of-text, chat markers) instead of leaving them out "
             "(vLLM's skip_special_tokens false)");
  flags.Double("temperature", &temperature, "sampling temperature; 0 is greedy");
  flags.Int("top-k", &top_k, "sample among the k most likely tokens (0: all)");
  flags.Double("top-p", &top_p, "nucleus sampling mass (0 or 1: no cut)");
  flags.Double("min-p", &min_p,
               "sample among the tokens at least this many times as likely as the most likely one, in [0, 1] "
               "(vLLM's min_p; 0: no cut)");
  flags.Double("repetition-penalty", &repetition_penalty,
               "divides the positive logits (multiplies the others) of the tokens the prompt or the reply already "
               "has, in (0, 100] (Hugging Face's and vLLM's; 1: none; it applies to greedy decoding too)");
  flags.Double("presence-penalty", &presence_penalty,
               "subtracted from the logit of every token the reply already has, in [-2, 2] (OpenAI's)");
  flags.Double("frequency-penalty", &frequency_penalty,
               "subtracted from a token's logit once per time the reply already has it, in [-2, 2] (OpenAI's)");
  flags.Strings("logit-bias", &logit_bias,
                "ID:BIAS, added to that token's logit before every choice, BIAS in [-100, 100]; give it once per "
                "token (up to 1,024)");
  flags.Int("seed", &seed, "seed of the sampling stream; sent only when given (else a fresh random seed)");
  flags.Int("n", &n, "replies to sample from the one prefill (1 to 16; reply I with --seed + I; greedy replies agree)");
  flags.String("prompt", &prompt, "the prompt as text (the server tokenizes it)");
  flags.String("prompt-file", &prompt_file, "the prompt as text, from a file");
  flags.String("chat", &chat,
               "a JSON file of chat messages, [{\"role\": ..., \"content\": ...}, ...], as OpenAI's API takes them "
               "(a content may be null or an array of text parts)");
  flags.Bool("add-generation-prompt", &add_generation_prompt,
             "with --chat: end the prompt with the template's assistant header");
  flags.Bool("continue-final-message", &continue_final,
             "with --chat: leave the final message open for the reply to continue it (needs "
             "--add-generation-prompt=false)");
  flags.String("chat-template-kwargs", &template_kwargs,
               "with --chat: more template variables, a JSON object (e.g. '{\"enable_thinking\": false}')");
  std::string tools;
  flags.String("tools", &tools,
               "with --chat: tools the chat template shows the model, OpenAI's array of {\"type\": \"function\", "
               "\"function\": {\"name\", \"description\", \"parameters\"}} (the JSON, or @FILE)");
  flags.String("stop", &stop, "stop after any of these token ids (\"2,7\")");
  flags.Strings("stop-string", &stop_strings,
                "stop before this text appears in the reply; give it once per string (the API takes up to 16)");
  flags.Int("logprobs", &logprobs,
            "also each generated token's log-probability under the model and its N most likely alternatives "
            "(0 to 20; -1: none)");
  flags.Int("prompt-logprobs", &prompt_logprobs,
            "also each prompt token's log-probability given the ones before it, with N alternatives (0 to 20; "
            "-1: none; the first token has none)");
  flags.String("kv-wire", &kv_wire,
               "KV encoding asked of the prefill: auto (its cache's type) or fp8 (E4M3 with a scale per 64-token "
               "block; applied when the prefill allows it, docs/KV_TRANSPORT.md)");
  CommonRequest common_request;
  if (int rc = ParseCommonFlags(flags, argc, argv, cmd, "seer-decode", common, &common_request); rc >= 0) return rc;
  const bool json = common.json;

  const int prompts = (common.ids.empty() ? 0 : 1) + (flags.WasSet("prompt") ? 1 : 0) +
                      (flags.WasSet("prompt-file") ? 1 : 0) + (flags.WasSet("chat") ? 1 : 0);
  if (prompts != 1) return ReportUsage(cmd, "give exactly one of --ids, --prompt, --prompt-file and --chat");
  v1::GenerateRequest request;
  request.mutable_token_ids()->Assign(common_request.ids.begin(), common_request.ids.end());
  if (flags.WasSet("prompt")) request.set_text(prompt);
  if (flags.WasSet("prompt-file")) {
    StatusOr<std::string> text = ReadInputFile("--prompt-file", prompt_file);
    if (!text.ok()) return ReportUsage(cmd, text.status().message());
    request.set_text(*text);
  }
  if (flags.WasSet("chat")) {
    StatusOr<std::string> text = ReadInputFile("--chat", chat);
    if (!text.ok()) return ReportUsage(cmd, text.status().message());
    StatusOr<JsonValue> messages = JsonValue::Parse(*text);
    if (!messages.ok()) return ReportUsage(cmd, "--chat: " + chat + ": " + std::string(messages.status().message()));
    StatusOr<std::vector<ChatTurn>> turns = ParseChatMessages(*messages);
    if (!turns.ok()) return ReportUsage(cmd, "--chat: " + chat + ": " + std::string(turns.status().message()));
    AddChatMessages(std::move(*turns), &request);
  }
  const bool text_reply = request.has_text() || request.messages_size() > 0;
  for (const std::string& s : stop_strings) request.add_stop(s);
  *request.mutable_sparsity() = common_request.sparsity;
  if (!stop.empty()) {
    StatusOr<std::vector<int32_t>> stops = ParseTokenIds(stop, "--stop");
    if (!stops.ok()) return ReportUsage(cmd, stops.status().message());
    request.mutable_stop_token_ids()->Assign(stops->begin(), stops->end());
  }
  if (!allowed_ids.empty()) {
    StatusOr<std::vector<int32_t>> allowed = ParseTokenIds(allowed_ids, "--allowed-token-ids");
    if (!allowed.ok()) return ReportUsage(cmd, allowed.status().message());
    request.mutable_sampling()->mutable_allowed_token_ids()->Assign(allowed->begin(), allowed->end());
  }
  // Range checks are the server's: it knows the model's limits and names
  // the field. Only what cannot be represented is refused here.
  if (max_new_tokens < 0 || max_new_tokens > INT32_MAX) return ReportUsage(cmd, "--max-new-tokens: out of range");
  if (top_k < 0 || top_k > INT32_MAX) return ReportUsage(cmd, "--top-k: out of range");
  request.set_max_new_tokens(static_cast<int32_t>(max_new_tokens));
  if (min_new_tokens < 0 || min_new_tokens > INT32_MAX) return ReportUsage(cmd, "--min-new-tokens: out of range");
  request.set_min_new_tokens(static_cast<int32_t>(min_new_tokens));
  request.set_ignore_eos(ignore_eos);
  request.set_include_stop_str_in_output(include_stop);
  for (const std::string& w : bad_words) request.add_bad_words(w);
  StatusOr<GuideSpec> spec = guide.Spec(flags);
  if (!spec.ok()) return ReportUsage(cmd, spec.status().message());
  switch (spec->kind) {
    case GuideSpec::Kind::kNone: break;
    case GuideSpec::Kind::kJsonSchema: request.mutable_guide()->set_json_schema(spec->text); break;
    case GuideSpec::Kind::kJsonObject: request.mutable_guide()->set_json_object(true); break;
    case GuideSpec::Kind::kRegex: request.mutable_guide()->set_regex(spec->text); break;
    case GuideSpec::Kind::kGrammar: request.mutable_guide()->set_grammar(spec->text); break;
    case GuideSpec::Kind::kChoice:
      for (const std::string& c : spec->choices) request.mutable_guide()->mutable_choice()->add_choices(c);
      break;
  }
  // The server checks these against the prompt's form and names the field.
  if (flags.WasSet("add-generation-prompt")) request.set_add_generation_prompt(add_generation_prompt);
  request.set_continue_final_message(continue_final);
  request.set_chat_template_kwargs(template_kwargs);
  if (!tools.empty()) {
    StatusOr<JsonValue> parsed = ReadToolsFlag(tools);
    if (!parsed.ok()) return ReportUsage(cmd, parsed.status().message());
    request.set_tools(parsed->Dump());
  }
  if (keep_special) request.set_skip_special_tokens(false);
  if (n < 0 || n > INT32_MAX) return ReportUsage(cmd, "--n: out of range");
  if (n != 1) request.set_n(static_cast<int32_t>(n));
  request.set_request_id(common.request_id);
  v1::Sampling* sampling = request.mutable_sampling();
  sampling->set_temperature(static_cast<float>(temperature));
  sampling->set_top_k(static_cast<int32_t>(top_k));
  sampling->set_top_p(static_cast<float>(top_p));
  sampling->set_min_p(static_cast<float>(min_p));
  // 0 on the wire is "unset" (1); the server refuses the value itself.
  if (repetition_penalty == 0.0 || static_cast<float>(repetition_penalty) == 0.0f)
    return ReportUsage(cmd, "--repetition-penalty: must be above 0 (1 is none)");
  sampling->set_repetition_penalty(static_cast<float>(repetition_penalty));
  if (flags.WasSet("seed")) sampling->set_seed(static_cast<uint64_t>(seed));
  sampling->set_presence_penalty(static_cast<float>(presence_penalty));
  sampling->set_frequency_penalty(static_cast<float>(frequency_penalty));
  for (const std::string& entry : logit_bias) {
    // ID:BIAS; the server checks the id against the vocabulary and the range.
    const size_t colon = entry.find(':');
    char* end = nullptr;
    const long long id = colon == std::string::npos ? -1 : std::strtoll(entry.c_str(), &end, 10);
    const bool id_ok =
        colon != std::string::npos && colon > 0 && end == entry.c_str() + colon && id >= 0 && id <= INT32_MAX;
    const double bias = id_ok ? std::strtod(entry.c_str() + colon + 1, &end) : 0.0;
    if (!id_ok || colon + 1 == entry.size() || *end != '\0' || !std::isfinite(bias)) {
      return ReportUsage(cmd, "--logit-bias: expected ID:BIAS (\"123:-100\"), got '" + entry + "'");
    }
    (*sampling->mutable_logit_bias())[static_cast<int32_t>(id)] = static_cast<float>(bias);
  }
  // The server checks the ranges and names the field.
  if (logprobs >= 0) request.set_logprobs(static_cast<int32_t>(std::min<int64_t>(logprobs, INT32_MAX)));
  if (prompt_logprobs >= 0) {
    request.set_prompt_logprobs(static_cast<int32_t>(std::min<int64_t>(prompt_logprobs, INT32_MAX)));
  }
  if (kv_wire == "fp8") {
    request.set_kv_wire(v1::KV_WIRE_FP8_E4M3);
  } else if (kv_wire != "auto") {
    return ReportUsage(cmd, "--kv-wire: expected auto or fp8, got '" + kv_wire + "'");
  }

  auto stub = v1::DecodeService::NewStub(MakeChannel(common.addr, common.tls, int64_t{64} << 20));
  grpc::ClientContext context;
  const Clock::time_point start = Clock::now();
  SetDeadline(context, common.timeout);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub->Generate(&context, request);

  // Each reply (choice), as its messages come.
  struct Reply {
    std::vector<int32_t> tokens;
    std::vector<v1::TokenLogprobs> logprobs;
    std::string text;
    v1::GenerateSummary summary;
    bool done = false;
  };
  const bool many = n > 1;
  // The server refuses more than kMaxChoices (naming n); no more are kept.
  std::vector<Reply> replies(static_cast<size_t>(std::clamp<int64_t>(n, 1, kMaxChoices)));
  std::vector<v1::TokenLogprobs> prompt_entries;
  double ttft_ms = -1.0;
  int64_t all_tokens = 0;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_prompt_logprobs()) {
      prompt_entries.insert(prompt_entries.end(), msg.prompt_logprobs().tokens().begin(),
                            msg.prompt_logprobs().tokens().end());
      continue;
    }
    if (msg.choice() < 0 || msg.choice() >= static_cast<int>(replies.size())) {
      context.TryCancel();
      return ReportRpcError(
          cmd, grpc::Status(grpc::StatusCode::DATA_LOSS, "a message of choice " + std::to_string(msg.choice()) +
                                                             " for n = " + std::to_string(replies.size())));
    }
    Reply& r = replies[static_cast<size_t>(msg.choice())];
    r.text += msg.text();
    if (!many && text_reply && !json && !msg.text().empty()) {
      std::fputs(msg.text().c_str(), stdout);
      std::fflush(stdout);
    }
    if (msg.has_logprobs()) r.logprobs.push_back(msg.logprobs());
    if (msg.event_case() == v1::GenerateResponse::kToken) {
      if (all_tokens++ == 0) ttft_ms = SecondsSince(start) * 1e3;
      r.tokens.push_back(msg.token());
      if (!many && !json && !text_reply) {
        std::printf(r.tokens.size() == 1 ? "%d" : " %d", msg.token());
        std::fflush(stdout);
      }
    } else if (msg.event_case() == v1::GenerateResponse::kSummary) {
      r.summary = msg.summary();
      r.done = true;
      if (many && !json) {
        // A reply whole, as it finishes.
        std::printf("[choice %d] ", msg.choice());
        if (text_reply) {
          std::fputs(r.text.c_str(), stdout);
        } else {
          for (size_t i = 0; i < r.tokens.size(); ++i) std::printf(i == 0 ? "%d" : " %d", r.tokens[i]);
        }
        std::printf(" (%s)\n", r.summary.finish_reason().c_str());
        std::fflush(stdout);
      }
    }
  }
  const grpc::Status status = reader->Finish();
  const double total_ms = SecondsSince(start) * 1e3;
  const Reply& first = replies[0];
  if (!json && !many && (!first.tokens.empty() || !first.text.empty())) std::printf("\n");
  if (!status.ok()) return ReportRpcError(cmd, status);
  for (const Reply& r : replies) {
    if (!r.done)
      return ReportRpcError(cmd, grpc::Status(grpc::StatusCode::DATA_LOSS, "the stream ended without a summary"));
  }
  const std::vector<int32_t>& tokens = first.tokens;
  const std::vector<v1::TokenLogprobs>& token_logprobs = first.logprobs;
  const std::string& text = first.text;
  const v1::GenerateSummary& summary = first.summary;

  if (json) {
    JsonValue out = JsonValue::Object();
    JsonValue list = JsonValue::Array();
    for (int32_t t : tokens) list.Append(JsonValue::Int(t));
    out.Set("tokens", std::move(list));
    if (text_reply || !text.empty()) out.Set("text", JsonValue::String(text));
    if (request.has_logprobs()) out.Set("logprobs", LogprobsJson(token_logprobs));
    if (request.has_prompt_logprobs()) out.Set("prompt_logprobs", LogprobsJson(prompt_entries));
    if (many) {
      JsonValue choices = JsonValue::Array();
      for (const Reply& r : replies) {
        JsonValue c = JsonValue::Object();
        JsonValue ids = JsonValue::Array();
        for (int32_t t : r.tokens) ids.Append(JsonValue::Int(t));
        c.Set("tokens", std::move(ids));
        if (text_reply || !r.text.empty()) c.Set("text", JsonValue::String(r.text));
        if (request.has_logprobs()) c.Set("logprobs", LogprobsJson(r.logprobs));
        c.Set("finish_reason", JsonValue::String(r.summary.finish_reason()));
        choices.Append(std::move(c));
      }
      out.Set("choices", std::move(choices));
    }
    out.Set("ttft_ms", JsonValue::Number(ttft_ms));
    JsonValue density = JsonValue::Object();
    density.Set("overall", JsonValue::Number(summary.overall_density()));
    JsonValue layers = JsonValue::Array();
    for (double d : summary.layer_density()) layers.Append(JsonValue::Number(d));
    density.Set("layers", std::move(layers));
    out.Set("density", std::move(density));
    out.Set("total_ms", JsonValue::Number(total_ms));
    out.Set("server_ttft_ms", JsonValue::Number(summary.ttft_seconds() * 1e3));
    out.Set("prefill_ms", JsonValue::Number(summary.prefill_seconds() * 1e3));
    out.Set("kv_transfer_ms", JsonValue::Number(summary.kv_transfer_seconds() * 1e3));
    out.Set("kv_bytes", JsonValue::Int(summary.kv_bytes()));
    out.Set("prompt_tokens", JsonValue::Int(summary.prompt_tokens()));
    out.Set("cached_tokens", JsonValue::Int(summary.cached_tokens()));
    out.Set("kv_held_tokens", JsonValue::Int(summary.kv_held_tokens()));
    out.Set("finish_reason", JsonValue::String(summary.finish_reason()));
    out.Set("sparsity", JsonValue::String(summary.sparsity()));
    out.Set("prefill_endpoint", JsonValue::String(summary.prefill_endpoint()));
    if (summary.has_kv_transfer()) {
      // How the KV moved (docs/KV_TRANSPORT.md); absent from decode workers
      // that predate transports.
      const v1::KvTransferStats& t = summary.kv_transfer();
      JsonValue kv = JsonValue::Object();
      kv.Set("transport", JsonValue::String(t.transport() == v1::KV_TRANSPORT_NCCL ? "nccl" : "grpc"));
      kv.Set("wire", JsonValue::String(t.kv_wire() == v1::KV_WIRE_FP8_E4M3 ? "fp8" : "dtype"));
      kv.Set("grpc_streams", JsonValue::Int(t.grpc_streams()));
      kv.Set("bytes", JsonValue::Int(t.bytes()));
      kv.Set("seconds", JsonValue::Number(t.seconds()));
      kv.Set("blocked_ms", JsonValue::Number(t.blocked_seconds() * 1e3));
      kv.Set("fallback_reason", JsonValue::String(t.fallback_reason()));
      out.Set("kv_transfer", std::move(kv));
    }
    std::printf("%s\n", out.Dump().c_str());
    return kExitOk;
  }
  for (const auto& [name, entries] :
       {std::pair<const char*, const std::vector<v1::TokenLogprobs>*>{"prompt", &prompt_entries},
        std::pair<const char*, const std::vector<v1::TokenLogprobs>*>{"token", &token_logprobs}}) {
    for (size_t i = 0; i < entries->size(); ++i) {
      const v1::TokenLogprobs& e = (*entries)[i];
      std::printf("%s %zu: %d %.4f", name, i, e.chosen().token_id(), e.chosen().logprob());
      for (const v1::TokenLogprob& t : e.top()) std::printf(" | %d %.4f", t.token_id(), t.logprob());
      std::printf("\n");
    }
  }
  std::printf(
      "ttft %.2f ms (server %.2f ms: prefill %.2f ms, KV %.2f MB in %.2f ms) | %zu tokens in %.2f ms, %s"
      " | prompt %d tokens (%d from the prefix store, %d KV held here), %s, density %.4f | prefill %s\n",
      ttft_ms, summary.ttft_seconds() * 1e3, summary.prefill_seconds() * 1e3,
      static_cast<double>(summary.kv_bytes()) / 1e6, summary.kv_transfer_seconds() * 1e3,
      static_cast<size_t>(all_tokens), total_ms, summary.finish_reason().c_str(), summary.prompt_tokens(),
      summary.cached_tokens(), summary.kv_held_tokens(), summary.sparsity().c_str(), summary.overall_density(),
      summary.prefill_endpoint().c_str());
  return kExitOk;
}

}  // namespace seer
