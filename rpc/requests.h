// Parsing the Prefill and Generate requests at the edge: each request is
// checked once, field by field, into a typed call; the services and the
// engine take the call as given. A bad value is INVALID_ARGUMENT with a
// message that names the field and the limit, e.g.
// "token_ids[3]: 130 is out of range [0, 128) (the model's vocab_size)".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/model/sparsity.h"
#include "text/guide.h"
#include "text/prompt.h"
#include "kernels/sampling/sampler.h"
#include "seer/v1/seer.pb.h"

namespace seer {

inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr int kMaxStopTokens = 64;
inline constexpr double kMaxTemperature = 100.0;
// OpenAI's ranges: penalties in [-2, 2], biases in [-100, 100].
inline constexpr double kMaxPenalty = 2.0;
inline constexpr double kMaxLogitBiasValue = 100.0;
inline constexpr int kMaxLogitBias = 1024;
inline constexpr int kMaxAllowedTokenIds = 16384;
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxBadWords = 64;
inline constexpr size_t kMaxChatTemplateKwargsBytes = 16 * 1024;
inline constexpr size_t kMaxBadWordBytes = 256;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxChatMessages = 1024;
// The most choices (GenerateRequest.n) one request may ask for.
inline constexpr int kMaxChoices = 16;
// A text prompt may have this many bytes per token the server takes.
inline constexpr size_t kMaxTextBytesPerToken = 32;
// A prompt's logprobs: at most this many entries, (tokens - 1) *
// (alternatives + 1), so that a prefill summary stays far below the
// 64 MiB a decode worker receives.
inline constexpr int64_t kMaxPromptLogprobEntries = int64_t{1} << 22;

// A prompt_logprobs for a prompt of `tokens`: INVALID_ARGUMENT naming
// `field` when out of [0, kMaxTopLogprobs] or over kMaxPromptLogprobEntries.
Status CheckPromptLogprobs(int prompt_logprobs, int64_t tokens, std::string_view field);

// What the serving model and the server's flags allow.
struct RequestLimits {
  int vocab_size = 0;
  int64_t max_positions = 0;  // the model's max_position_embeddings
  int64_t max_prompt_tokens = 0;  // at most max_positions
  std::string max_prompt_source = "the model's max_position_embeddings";  // for messages
  int max_new_tokens = 0;  // decode: --max-new-tokens
  int default_new_tokens = 256;  // decode: --default-max-new-tokens, for requests that give none
  int64_t max_chunk_bytes = 0;  // prefill: --chunk-bytes
};

// A Prefill request, checked.
// The unit of PrefillRequest.kv_from_token: a whole number of the prefix
// store's 64-token blocks (engine.h's kPrefixBlock).
inline constexpr int kKvPrefixBlock = 64;

struct PrefillCall {
  std::string request_id;  // empty: the server names the request
  std::vector<int32_t> ids;
  SparsityRequest sparsity;
  int64_t max_chunk_bytes = 0;  // 0: the server's --chunk-bytes
  // The transports the caller reads (checked: CheckTransportOffer), and the
  // K/V encoding it asks for.
  v1::KvTransportOffer transport_offer;
  v1::KvWire kv_wire = v1::KV_WIRE_UNSPECIFIED;
  int prompt_logprobs = -1;  // -1: none
  // K/V the caller already holds (kv_from_token, 0: none), computed with
  // kv_from_sparsity (every field set).
  int kv_from_token = 0;
  SparsityConfig kv_from_sparsity;
  int kv_from_block_size = 0;
  uint64_t kv_from_gates_fingerprint = 0;
};

// A Generate request, checked. The prompt is `ids`, or `text`, or
// `messages` (exactly one); text and messages become ids where the
// tokenizer is (CheckPromptFits then checks them).
struct GenerateCall {
  std::string request_id;
  std::vector<int32_t> ids;
  std::string text;
  bool has_text = false;  // a text prompt, maybe empty
  std::vector<ChatTurn> messages;
  ChatPromptOptions chat;  // how messages are rendered (the tools included)
  std::vector<std::string> stop;  // stop strings
  std::vector<std::string> bad_words;  // never spelled by the reply
  bool text_reply = false;  // answer in text, as for a text prompt
  int max_new_tokens = 0;
  // The request left max_new_tokens to the server (0): the default then
  // shrinks to the context left after the prompt (FitDefaultNewTokens).
  bool default_new_tokens = false;
  // The first min_new_tokens tokens cannot end the reply (at most
  // max_new_tokens as asked; a context shorter than that cuts it with the
  // reply).
  int min_new_tokens = 0;
  bool ignore_eos = false;  // a text reply goes on past end-of-text ids
  bool include_stop = false;  // the text ends with its stop string or stop token's text
  bool skip_special_tokens = true;  // the texts leave special tokens out
  SamplingParams sampling;  // the request's seed, or the fresh one it lacked
  SparsityRequest sparsity;
  std::vector<int32_t> stop_token_ids;
  v1::KvWire kv_wire = v1::KV_WIRE_UNSPECIFIED;  // asked of the prefill
  int prompt_logprobs = -1;  // -1: none; checked against the prompt's length once it is known
  int choices = 1;  // n; choice i samples with sampling.seed + i
  std::shared_ptr<const Grammar> guide;  // compiled; null: none
  std::string guide_key;  // GuideSpec::Key() of what asked for it
};

StatusOr<PrefillCall> ParsePrefillRequest(const v1::PrefillRequest& request, const RequestLimits& limits);
// `fresh_seed` seeds requests that carry none.
StatusOr<GenerateCall> ParseGenerateRequest(const v1::GenerateRequest& request, const RequestLimits& limits,
                                            uint64_t fresh_seed);

// A call whose max_new_tokens is the server's default asks for no more than
// the context has left after `prompt_tokens` (at least 1), as OpenAI-style
// servers cap a default; an explicit max_new_tokens is left as asked.
void FitDefaultNewTokens(int64_t prompt_tokens, const RequestLimits& limits, GenerateCall* call);

// A prompt of `prompt_tokens` (from text or messages) against the limits:
// the server's prompt limit, and room for the new tokens.
Status CheckPromptFits(int64_t prompt_tokens, int max_new_tokens, const RequestLimits& limits);

// The sparsity fields of a request, checked (field names "sparsity.*").
StatusOr<SparsityRequest> SparsityFromProto(const v1::Sparsity& sparsity);
// The wire form of a checked request: what seer-decode forwards to a prefill
// server and `seer generate` sends (MODE_UNSPECIFIED when it names no mode).
v1::Sparsity SparsityToProto(const SparsityRequest& request);
// A sparsity as a prefill applied it (PrefillSummary.applied_sparsity,
// PrefillRequest.kv_from_sparsity): the mode with its value, and
// last_block_dense, always set. Parsing refuses one that leaves either
// unset (INVALID_ARGUMENT naming `field`).
v1::Sparsity AppliedSparsityToProto(const SparsityConfig& applied);
StatusOr<SparsityConfig> AppliedSparsityFromProto(const v1::Sparsity& sparsity, const char* field);
// Drops a request's ask for the positions after held ones (kv_from_*): the
// whole prompt's K/V is wanted.
void ClearKvFrom(v1::PrefillRequest* request);

// Chat turns as a request's messages (every front end sends them so).
void AddChatMessages(std::vector<ChatTurn> turns, v1::GenerateRequest* request);

// The largest serialized request the limits allow; anything larger carries
// fields the server does not know and is refused.
size_t MaxRequestBytes(const RequestLimits& limits);

}  // namespace seer
