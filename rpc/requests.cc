#include "rpc/requests.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>

#include "engine/engine.h"
#include "rpc/kv_handshake.h"
#include "rpc/kv_wire.h"
#include "text/tool_calls.h"

namespace seer {
namespace {

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

std::string Int(int64_t v) { return std::to_string(v); }

Status CheckRequestId(const std::string& request_id) {
  if (request_id.size() > kMaxRequestIdBytes)
    return InvalidArgument("request_id: " + Int(static_cast<int64_t>(request_id.size())) +
                           " bytes exceed the limit of " + Int(kMaxRequestIdBytes));
  for (size_t i = 0; i < request_id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request_id[i]);
    if (c < 0x20 || c > 0x7e) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02x", c);
      return InvalidArgument("request_id: byte " + Int(static_cast<int64_t>(i)) + " (" + hex +
                             ") is not printable ASCII");
    }
  }
  return OkStatus();
}

StatusOr<std::vector<int32_t>> ParsePrompt(const google::protobuf::RepeatedField<int32_t>& ids,
                                           const RequestLimits& limits) {
  if (static_cast<int64_t>(ids.size()) > limits.max_prompt_tokens) {
    return InvalidArgument("token_ids: " + Int(ids.size()) + " tokens exceed the limit of " +
                           Int(limits.max_prompt_tokens) + " (" + limits.max_prompt_source + ")");
  }
  std::vector<int32_t> out(ids.begin(), ids.end());
  SEER_RETURN_IF_ERROR(CheckPromptIds(out, limits.vocab_size, "token_ids"));
  return out;
}

// A list of strings (stop, bad_words): at most `max_count` ("stop: 17
// strings exceed the limit of 16"), each 1 to `max_bytes` ("stop[2]: ...").
StatusOr<std::vector<std::string>> ParseStrings(const google::protobuf::RepeatedPtrField<std::string>& list,
                                                const char* field, const char* what, int max_count, size_t max_bytes) {
  if (list.size() > max_count)
    return InvalidArgument(std::string(field) + ": " + Int(list.size()) + " " + what + " exceed the limit of " +
                           Int(max_count));
  std::vector<std::string> out;
  for (int i = 0; i < list.size(); ++i) {
    if (list[i].empty() || list[i].size() > max_bytes)
      return InvalidArgument(std::string(field) + "[" + Int(i) + "]: " + Int(static_cast<int64_t>(list[i].size())) +
                             " bytes, need 1 to " + Int(static_cast<int64_t>(max_bytes)));
    out.push_back(list[i]);
  }
  return out;
}

StatusOr<SamplingParams> ParseSampling(const v1::Sampling& s, int vocab_size, uint64_t fresh_seed) {
  SamplingParams p;
  if (!std::isfinite(s.temperature()) || s.temperature() < 0.0f || s.temperature() > kMaxTemperature)
    return InvalidArgument("sampling.temperature: " + Num(s.temperature()) + " is out of range [0, " +
                           Num(kMaxTemperature) + "] (0 is greedy)");
  if (s.top_k() < 0)
    return InvalidArgument("sampling.top_k: " + Int(s.top_k()) +
                           " is negative (0, or vocab_size and above, keeps every token)");
  if (!std::isfinite(s.top_p()) || s.top_p() < 0.0f || s.top_p() > 1.0f)
    return InvalidArgument("sampling.top_p: " + Num(s.top_p()) + " is out of range [0, 1] (0 means 1)");
  for (const auto& [field, value] : {std::pair<const char*, float>{"presence_penalty", s.presence_penalty()},
                                     std::pair<const char*, float>{"frequency_penalty", s.frequency_penalty()}}) {
    if (!std::isfinite(value) || value < -kMaxPenalty || value > kMaxPenalty)
      return InvalidArgument("sampling." + std::string(field) + ": " + Num(value) + " is out of range [" +
                             Num(-kMaxPenalty) + ", " + Num(kMaxPenalty) + "]");
  }
  if (!std::isfinite(s.min_p()) || s.min_p() < 0.0f || s.min_p() > 1.0f)
    return InvalidArgument("sampling.min_p: " + Num(s.min_p()) + " is out of range [0, 1] (0 keeps every token)");
  if (!std::isfinite(s.repetition_penalty()) || s.repetition_penalty() < 0.0f ||
      s.repetition_penalty() > kMaxRepetitionPenalty)
    return InvalidArgument("sampling.repetition_penalty: " + Num(s.repetition_penalty()) + " is out of range (0, " +
                           Num(kMaxRepetitionPenalty) + "] (unset or 0 means 1, none)");
  if (s.allowed_token_ids_size() > kMaxAllowedTokenIds)
    return InvalidArgument("sampling.allowed_token_ids: " + Int(s.allowed_token_ids_size()) +
                           " ids exceed the limit of " + Int(kMaxAllowedTokenIds));
  for (int i = 0; i < s.allowed_token_ids_size(); ++i) {
    const int32_t id = s.allowed_token_ids(i);
    if (id < 0 || id >= vocab_size)
      return InvalidArgument("sampling.allowed_token_ids[" + Int(i) + "]: " + Int(id) + " is out of range [0, " +
                             Int(vocab_size) + ") (the model's vocab_size)");
    p.allowed_ids.push_back(id);
  }
  p.vocab_size = vocab_size;
  if (s.logit_bias_size() > kMaxLogitBias)
    return InvalidArgument("sampling.logit_bias: " + Int(s.logit_bias_size()) + " entries exceed the limit of " +
                           Int(kMaxLogitBias));
  for (const auto& [id, bias] : s.logit_bias()) {
    if (id < 0 || id >= vocab_size)
      return InvalidArgument("sampling.logit_bias: token id " + Int(id) + " is out of range [0, " + Int(vocab_size) +
                             ") (the model's vocab_size)");
    if (!std::isfinite(bias) || bias < -kMaxLogitBiasValue || bias > kMaxLogitBiasValue)
      return InvalidArgument("sampling.logit_bias[" + Int(id) + "]: " + Num(bias) + " is out of range [" +
                             Num(-kMaxLogitBiasValue) + ", " + Num(kMaxLogitBiasValue) + "]");
    p.logit_bias.push_back({id, bias});  // in the map's order; the Sampler sorts them
  }
  p.min_p = s.min_p();
  p.repetition_penalty = s.repetition_penalty() == 0.0f ? 1.0 : s.repetition_penalty();
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  p.temperature = s.temperature();
  // k at or above the vocabulary keeps every token: no cut, as vLLM takes it.
  p.top_k = s.top_k() >= vocab_size ? 0 : s.top_k();
  p.top_p = s.top_p() == 0.0f ? 1.0 : s.top_p();
  p.seed = s.has_seed() ? s.seed() : fresh_seed;
  return p;
}

StatusOr<v1::KvWire> ParseKvWire(int value) {
  if (!v1::KvWire_IsValid(value))
    return InvalidArgument("kv_wire: " + Int(value) +
                           " is not a known encoding (KV_WIRE_UNSPECIFIED or "
                           "KV_WIRE_FP8_E4M3)");
  return static_cast<v1::KvWire>(value);
}

Status CheckRequestSize(const google::protobuf::Message& request, const RequestLimits& limits) {
  const size_t bytes = request.ByteSizeLong();
  if (bytes > MaxRequestBytes(limits))
    return InvalidArgument("request: " + Int(static_cast<int64_t>(bytes)) + " serialized bytes exceed the limit of " +
                           Int(static_cast<int64_t>(MaxRequestBytes(limits))) +
                           " (the valid fields fit well within it; the rest are unknown fields)");
  return OkStatus();
}

}  // namespace

StatusOr<SparsityRequest> SparsityFromProto(const v1::Sparsity& s) {
  SparsityRequest out;
  if (s.has_last_block_dense()) out.last_block_dense = s.last_block_dense();
  const bool threshold_set = s.threshold() != 0.0;
  const bool nz_set = s.nz_ratio() != 0.0;
  // A mode's value outside its range (or not finite) is refused; the rule
  // itself is written once, in engine/model/sparsity.
  auto value = [](SparsityMode mode, double v, const char* field) -> StatusOr<SparsityConfig> {
    if (!std::isfinite(v) || !SparsityValueInRange(mode, v))
      return InvalidArgument(std::string(field) + ": " + Num(v) + " is out of range, need " +
                             std::string(SparsityRangeRule(mode)));
    SparsityConfig c;
    c.mode = mode;
    (mode == SparsityMode::kThreshold ? c.threshold : c.nz_ratio) = v;
    return c;
  };
  switch (s.mode()) {
    case v1::Sparsity::MODE_UNSPECIFIED:
    case v1::Sparsity::MODE_DENSE:
      if (threshold_set)
        return InvalidArgument("sparsity.threshold: set to " + Num(s.threshold()) + " but sparsity.mode is " +
                               v1::Sparsity::Mode_Name(s.mode()) + " (use MODE_THRESHOLD)");
      if (nz_set)
        return InvalidArgument("sparsity.nz_ratio: set to " + Num(s.nz_ratio()) + " but sparsity.mode is " +
                               v1::Sparsity::Mode_Name(s.mode()) + " (use MODE_NZ_RATIO)");
      if (s.mode() == v1::Sparsity::MODE_DENSE) out.mode = SparsityConfig{};
      return out;
    case v1::Sparsity::MODE_THRESHOLD: {
      if (nz_set) return InvalidArgument("sparsity.nz_ratio: set, but sparsity.mode is MODE_THRESHOLD");
      SEER_ASSIGN_OR_RETURN(out.mode, value(SparsityMode::kThreshold, s.threshold(), "sparsity.threshold"));
      return out;
    }
    case v1::Sparsity::MODE_NZ_RATIO: {
      if (threshold_set) return InvalidArgument("sparsity.threshold: set, but sparsity.mode is MODE_NZ_RATIO");
      SEER_ASSIGN_OR_RETURN(out.mode, value(SparsityMode::kNzRatio, s.nz_ratio(), "sparsity.nz_ratio"));
      return out;
    }
    default:
      return InvalidArgument("sparsity.mode: " + Int(static_cast<int>(s.mode())) +
                             " is not a known mode (MODE_DENSE, MODE_THRESHOLD or MODE_NZ_RATIO)");
  }
}

v1::Sparsity SparsityToProto(const SparsityRequest& r) {
  v1::Sparsity s;
  if (r.mode) {
    switch (r.mode->mode) {
      case SparsityMode::kDense: s.set_mode(v1::Sparsity::MODE_DENSE); break;
      case SparsityMode::kThreshold:
        s.set_mode(v1::Sparsity::MODE_THRESHOLD);
        s.set_threshold(r.mode->threshold);
        break;
      case SparsityMode::kNzRatio:
        s.set_mode(v1::Sparsity::MODE_NZ_RATIO);
        s.set_nz_ratio(r.mode->nz_ratio);
        break;
      case SparsityMode::kStreaming:
      case SparsityMode::kOracle:
        // The offline baselines (docs/QUALITY.md) have no wire form: nothing
        // parsed from a request is one, and the CLI refuses them for remote
        // commands (client/sparsity_flags.cc) before a request is made.
        break;
    }
  }
  if (r.last_block_dense) s.set_last_block_dense(*r.last_block_dense);
  return s;
}

v1::Sparsity AppliedSparsityToProto(const SparsityConfig& applied) {
  v1::Sparsity s = SparsityToProto(SparsityRequest{applied, applied.last_block_dense});
  if (applied.mode == SparsityMode::kDense) s.set_mode(v1::Sparsity::MODE_DENSE);
  return s;
}

StatusOr<SparsityConfig> AppliedSparsityFromProto(const v1::Sparsity& sparsity, const char* field) {
  if (sparsity.mode() == v1::Sparsity::MODE_UNSPECIFIED || !sparsity.has_last_block_dense())
    return InvalidArgument(std::string(field) + ": mode and last_block_dense must both be set (" +
                           "a sparsity as applied, PrefillSummary.applied_sparsity)");
  StatusOr<SparsityRequest> r = SparsityFromProto(sparsity);
  if (!r.ok()) return r.status().WithContext(field);
  SparsityConfig out = *r->mode;
  out.last_block_dense = *r->last_block_dense;
  return out;
}

void ClearKvFrom(v1::PrefillRequest* request) {
  request->clear_kv_from_token();
  request->clear_kv_from_sparsity();
  request->clear_kv_from_block_size();
  request->clear_kv_from_gates_fingerprint();
}

void AddChatMessages(std::vector<ChatTurn> turns, v1::GenerateRequest* request) {
  for (ChatTurn& t : turns) {
    v1::ChatMessage* m = request->add_messages();
    m->set_role(std::move(t.role));
    m->set_content(std::move(t.content));
    m->set_tool_call_id(std::move(t.tool_call_id));
    m->set_name(std::move(t.name));
    for (ChatToolCall& c : t.tool_calls) {
      v1::ToolCall* call = m->add_tool_calls();
      call->set_id(std::move(c.id));
      call->set_name(std::move(c.name));
      call->set_arguments(std::move(c.arguments));
    }
  }
}

size_t MaxRequestBytes(const RequestLimits& limits) {
  // Every varint of a valid field is at most 10 bytes; 4 KiB covers tags,
  // lengths and the small scalar fields. A prompt is ids or text (with up to
  // kMaxChatMessages messages' framing, and as many tool calls'), not both.
  const size_t prompt = std::max(static_cast<size_t>(limits.max_prompt_tokens) * 10,
                                 static_cast<size_t>(limits.max_prompt_tokens) * kMaxTextBytesPerToken +
                                     static_cast<size_t>(kMaxChatMessages) * 64);
  return 4096 + kMaxRequestIdBytes + prompt + static_cast<size_t>(kMaxStopTokens) * 10 +
         static_cast<size_t>(kMaxAllowedTokenIds) * 10 +
         static_cast<size_t>(kMaxStopStrings) * (kMaxStopStringBytes + 8) +
         static_cast<size_t>(kMaxBadWords) * (kMaxBadWordBytes + 8) + kMaxChatTemplateKwargsBytes + 8 + kMaxGuideBytes +
         kMaxToolsBytes + 8 + kMaxGuideChoices * 8 + 16 + kMaxTransportOfferBytes;
}

void FitDefaultNewTokens(int64_t prompt_tokens, const RequestLimits& limits, GenerateCall* call) {
  if (!call->default_new_tokens) return;
  const int64_t left = limits.max_positions - prompt_tokens;
  if (left >= 1 && left < call->max_new_tokens) call->max_new_tokens = static_cast<int>(left);
}

Status CheckPromptFits(int64_t prompt_tokens, int max_new_tokens, const RequestLimits& limits) {
  if (prompt_tokens > limits.max_prompt_tokens) {
    return InvalidArgument("token_ids: " + Int(prompt_tokens) + " tokens exceed the limit of " +
                           Int(limits.max_prompt_tokens) + " (" + limits.max_prompt_source + ")");
  }
  if (prompt_tokens + max_new_tokens > limits.max_positions)
    return InvalidArgument("max_new_tokens: " + Int(max_new_tokens) + " new tokens after " + Int(prompt_tokens) +
                           " prompt tokens exceed the model's max_position_embeddings " + Int(limits.max_positions));
  return OkStatus();
}

Status CheckPromptLogprobs(int prompt_logprobs, int64_t tokens, std::string_view field) {
  if (prompt_logprobs < 0 || prompt_logprobs > kMaxTopLogprobs)
    return InvalidArgument(std::string(field) + ": " + Int(prompt_logprobs) + " is out of range [0, " +
                           Int(kMaxTopLogprobs) + "] (the alternatives listed with each prompt token)");
  const int64_t entries = std::max<int64_t>(tokens - 1, 0) * (prompt_logprobs + 1);
  if (entries > kMaxPromptLogprobEntries)
    return InvalidArgument(std::string(field) + ": " + Int(tokens) + " prompt tokens with " + Int(prompt_logprobs) +
                           " alternatives are " + Int(entries) + " entries, more than the limit of " +
                           Int(kMaxPromptLogprobEntries) + "; ask for fewer alternatives or a shorter prompt");
  return OkStatus();
}

StatusOr<PrefillCall> ParsePrefillRequest(const v1::PrefillRequest& r, const RequestLimits& limits) {
  PrefillCall call;
  SEER_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
  call.request_id = r.request_id();
  SEER_ASSIGN_OR_RETURN(call.ids, ParsePrompt(r.token_ids(), limits));
  SEER_ASSIGN_OR_RETURN(call.sparsity, SparsityFromProto(r.sparsity()));
  if (r.max_chunk_bytes() != 0 &&
      (r.max_chunk_bytes() < kMinChunkBytes || r.max_chunk_bytes() > limits.max_chunk_bytes))
    return InvalidArgument("max_chunk_bytes: " + Int(r.max_chunk_bytes()) + " is out of range [" + Int(kMinChunkBytes) +
                           ", " + Int(limits.max_chunk_bytes) + "] (0 takes the server's --chunk-bytes)");
  call.max_chunk_bytes = r.max_chunk_bytes();
  SEER_RETURN_IF_ERROR(CheckTransportOffer(r.transport_offer()));
  call.transport_offer = r.transport_offer();
  SEER_ASSIGN_OR_RETURN(call.kv_wire, ParseKvWire(r.kv_wire()));
  if (r.has_prompt_logprobs()) {
    SEER_RETURN_IF_ERROR(
        CheckPromptLogprobs(r.prompt_logprobs(), static_cast<int64_t>(call.ids.size()), "prompt_logprobs"));
    call.prompt_logprobs = r.prompt_logprobs();
  }
  if (r.kv_from_token() != 0 || r.has_kv_from_sparsity()) {
    const int64_t count = static_cast<int64_t>(call.ids.size());
    if (r.kv_from_token() < 0 || r.kv_from_token() >= count || r.kv_from_token() % kKvPrefixBlock != 0)
      return InvalidArgument("kv_from_token: " + Int(r.kv_from_token()) + " must be a multiple of " +
                             Int(kKvPrefixBlock) + " below the prompt's " + Int(count) + " tokens");
    SEER_ASSIGN_OR_RETURN(call.kv_from_sparsity, AppliedSparsityFromProto(r.kv_from_sparsity(), "kv_from_sparsity"));
    if (r.kv_from_block_size() < 1 || r.kv_from_block_size() > (1 << 20))
      return InvalidArgument("kv_from_block_size: " + Int(r.kv_from_block_size()) +
                             " is out of range [1, 1048576] (the block_size of the header that sent the held K/V)");
    call.kv_from_token = r.kv_from_token();
    call.kv_from_block_size = r.kv_from_block_size();
    call.kv_from_gates_fingerprint = r.kv_from_gates_fingerprint();
  }
  SEER_RETURN_IF_ERROR(CheckRequestSize(r, limits));
  return call;
}

StatusOr<GenerateCall> ParseGenerateRequest(const v1::GenerateRequest& r, const RequestLimits& limits,
                                            uint64_t fresh_seed) {
  GenerateCall call;
  SEER_RETURN_IF_ERROR(CheckRequestId(r.request_id()));
  call.request_id = r.request_id();
  const int prompts = (r.token_ids_size() > 0 ? 1 : 0) + (r.has_text() ? 1 : 0) + (r.messages_size() > 0 ? 1 : 0);
  if (prompts > 1) return InvalidArgument("token_ids: give exactly one of token_ids, text and messages");
  // 0 asks for the server's default (--default-max-new-tokens), which grows
  // to min_new_tokens.
  if (r.min_new_tokens() < 0 || r.min_new_tokens() > limits.max_new_tokens)
    return InvalidArgument("min_new_tokens: " + Int(r.min_new_tokens()) + " is out of range [0, " +
                           Int(limits.max_new_tokens) + "] (the server's --max-new-tokens)");
  const int max_new = r.max_new_tokens() == 0
                          ? std::max(std::min(limits.default_new_tokens, limits.max_new_tokens), r.min_new_tokens())
                          : r.max_new_tokens();
  if (max_new < 1 || max_new > limits.max_new_tokens)
    return InvalidArgument("max_new_tokens: " + Int(r.max_new_tokens()) + " is out of range [1, " +
                           Int(limits.max_new_tokens) + "] (the server's --max-new-tokens; 0 takes its default)");
  if (r.min_new_tokens() > max_new)
    return InvalidArgument("min_new_tokens: " + Int(r.min_new_tokens()) + " is above max_new_tokens " + Int(max_new));
  call.max_new_tokens = max_new;
  call.min_new_tokens = r.min_new_tokens();
  call.ignore_eos = r.ignore_eos();
  call.include_stop = r.include_stop_str_in_output();
  call.skip_special_tokens = !r.has_skip_special_tokens() || r.skip_special_tokens();
  call.default_new_tokens = r.max_new_tokens() == 0;
  // A chat's rendering controls, for messages only.
  const bool chat_controls = r.has_add_generation_prompt() || r.continue_final_message() ||
                             !r.chat_template_kwargs().empty() || !r.tools().empty();
  if (chat_controls && r.messages_size() == 0) {
    const char* field = r.has_add_generation_prompt()       ? "add_generation_prompt"
                        : r.continue_final_message()        ? "continue_final_message"
                        : !r.chat_template_kwargs().empty() ? "chat_template_kwargs"
                                                            : "tools";
    return InvalidArgument(std::string(field) + ": only for a chat prompt (messages)");
  }
  call.chat.add_generation_prompt = !r.has_add_generation_prompt() || r.add_generation_prompt();
  call.chat.continue_final_message = r.continue_final_message();
  if (call.chat.continue_final_message && call.chat.add_generation_prompt) {
    return InvalidArgument("continue_final_message: not with add_generation_prompt, which is true unless set to false");
  }
  if (!r.chat_template_kwargs().empty()) {
    if (r.chat_template_kwargs().size() > kMaxChatTemplateKwargsBytes)
      return InvalidArgument("chat_template_kwargs: " + Int(static_cast<int64_t>(r.chat_template_kwargs().size())) +
                             " bytes exceed the limit of " + Int(static_cast<int64_t>(kMaxChatTemplateKwargsBytes)));
    StatusOr<JsonValue> kwargs = JsonValue::Parse(r.chat_template_kwargs());
    if (!kwargs.ok()) return InvalidArgument("chat_template_kwargs: not valid JSON: " + kwargs.status().message());
    SEER_RETURN_IF_ERROR(CheckTemplateKwargs(*kwargs));
    call.chat.template_kwargs = *std::move(kwargs);
  }
  if (!r.tools().empty()) {
    if (r.tools().size() > kMaxToolsBytes)
      return InvalidArgument("tools: " + Int(static_cast<int64_t>(r.tools().size())) + " bytes exceed the limit of " +
                             Int(static_cast<int64_t>(kMaxToolsBytes)));
    StatusOr<JsonValue> tools = JsonValue::Parse(r.tools());
    if (!tools.ok()) return InvalidArgument("tools: not valid JSON: " + tools.status().message());
    SEER_RETURN_IF_ERROR(ParseTools(*tools).status());
    call.chat.tools = *std::move(tools);
  }
  if (r.has_text() || r.messages_size() > 0) {
    const size_t max_text = limits.max_prompt_tokens * kMaxTextBytesPerToken;
    size_t bytes = r.text().size();
    if (r.messages_size() > kMaxChatMessages)
      return InvalidArgument("messages: " + Int(r.messages_size()) + " messages exceed the limit of " +
                             Int(kMaxChatMessages));
    int tool_calls = 0;
    for (const v1::ChatMessage& m : r.messages()) {
      if (m.role().empty()) return InvalidArgument("messages: every message needs a role");
      bytes += m.role().size() + m.content().size() + m.tool_call_id().size() + m.name().size();
      ChatTurn turn{m.role(), m.content(), {}, m.tool_call_id(), m.name()};
      tool_calls += m.tool_calls_size();
      if (tool_calls > kMaxChatMessages) {
        return InvalidArgument("messages: more than " + Int(kMaxChatMessages) + " tool calls in all");
      }
      for (const v1::ToolCall& c : m.tool_calls()) {
        bytes += c.id().size() + c.name().size() + c.arguments().size();
        turn.tool_calls.push_back({c.id(), c.name(), c.arguments()});
      }
      call.messages.push_back(std::move(turn));
    }
    if (bytes > max_text)
      return InvalidArgument(std::string(r.has_text() ? "text" : "messages") + ": " + Int(static_cast<int64_t>(bytes)) +
                             " bytes exceed the limit of " + Int(static_cast<int64_t>(max_text)) + " (" +
                             Int(kMaxTextBytesPerToken) + " per token of " + limits.max_prompt_source + ")");
    call.text = r.text();
    call.has_text = r.has_text();
  } else {
    SEER_ASSIGN_OR_RETURN(call.ids, ParsePrompt(r.token_ids(), limits));
    FitDefaultNewTokens(static_cast<int64_t>(call.ids.size()), limits, &call);
    SEER_RETURN_IF_ERROR(CheckPromptFits(static_cast<int64_t>(call.ids.size()), call.max_new_tokens, limits));
  }
  SEER_ASSIGN_OR_RETURN(call.stop, ParseStrings(r.stop(), "stop", "strings", kMaxStopStrings, kMaxStopStringBytes));
  SEER_ASSIGN_OR_RETURN(call.bad_words,
                        ParseStrings(r.bad_words(), "bad_words", "words", kMaxBadWords, kMaxBadWordBytes));
  call.text_reply = r.text_reply();
  if (r.has_logprobs()) {
    if (r.logprobs() < 0 || r.logprobs() > kMaxTopLogprobs)
      return InvalidArgument("logprobs: " + Int(r.logprobs()) + " is out of range [0, " + Int(kMaxTopLogprobs) +
                             "] (the alternatives listed with each token's logprob)");
  }
  SEER_ASSIGN_OR_RETURN(call.sampling, ParseSampling(r.sampling(), limits.vocab_size, fresh_seed));
  call.sampling.logprobs = r.has_logprobs() ? r.logprobs() : -1;
  if (r.has_prompt_logprobs()) {
    // The prompt's length is checked once text becomes ids (the worker).
    SEER_RETURN_IF_ERROR(CheckPromptLogprobs(r.prompt_logprobs(), 1, "prompt_logprobs"));
    call.prompt_logprobs = r.prompt_logprobs();
  }
  SEER_ASSIGN_OR_RETURN(call.sparsity, SparsityFromProto(r.sparsity()));
  if (r.stop_token_ids_size() > kMaxStopTokens)
    return InvalidArgument("stop_token_ids: " + Int(r.stop_token_ids_size()) + " entries exceed the limit of " +
                           Int(kMaxStopTokens));
  call.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  SEER_RETURN_IF_ERROR(CheckTokenIds(call.stop_token_ids, limits.vocab_size, "stop_token_ids"));
  SEER_ASSIGN_OR_RETURN(call.kv_wire, ParseKvWire(r.kv_wire()));
  if (r.n() < 0 || r.n() > kMaxChoices)
    return InvalidArgument("n: " + Int(r.n()) + " is out of range [1, " + Int(kMaxChoices) + "] (0 means 1)");
  call.choices = std::max(1, r.n());
  SEER_RETURN_IF_ERROR(CheckRequestSize(r, limits));
  // Last: compiling the guide is the one costly check.
  if (r.has_guide()) {
    GuideSpec spec;
    const v1::Guide& g = r.guide();
    switch (g.kind_case()) {
      case v1::Guide::kJsonSchema:
        spec.kind = GuideSpec::Kind::kJsonSchema;
        spec.text = g.json_schema();
        break;
      case v1::Guide::kJsonObject:
        if (!g.json_object()) return InvalidArgument("guide.json_object: false asks for nothing; leave guide unset");
        spec.kind = GuideSpec::Kind::kJsonObject;
        break;
      case v1::Guide::kRegex:
        spec.kind = GuideSpec::Kind::kRegex;
        spec.text = g.regex();
        break;
      case v1::Guide::kChoice:
        spec.kind = GuideSpec::Kind::kChoice;
        spec.choices.assign(g.choice().choices().begin(), g.choice().choices().end());
        break;
      case v1::Guide::kGrammar:
        spec.kind = GuideSpec::Kind::kGrammar;
        spec.text = g.grammar();
        break;
      case v1::Guide::KIND_NOT_SET:
        return InvalidArgument("guide: set but names no kind (json_schema, json_object, regex, choice or grammar)");
    }
    // The guide decides where the reply may end.
    if (call.ignore_eos)
      return InvalidArgument(
          "ignore_eos: cannot be combined with guide (the guide decides where "
          "the reply may end)");
    if (call.min_new_tokens > 0) {
      return InvalidArgument(
          "min_new_tokens: cannot be combined with guide (the guide decides where the reply may "
          "end)");
    }
    SEER_ASSIGN_OR_RETURN(call.guide, CompileGuide(spec));
    call.guide_key = spec.Key();
  }
  return call;
}

}  // namespace seer
