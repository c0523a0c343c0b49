// Hugging Face tokenizers in C++: a checkpoint's own tokenizer.json (and
// tokenizer_config.json), encoded and decoded exactly as the Rust
// `tokenizers` library does, for the families Seer serves:
//   - byte-level BPE with a split regex (Llama 3, Qwen2), GPT-2 and RoBERTa
//     style ByteLevel pre-tokenizers;
//   - SentencePiece-style BPE with byte fallback (Llama 2, Mistral): Prepend
//     and Replace normalisers or a Metaspace pre-tokenizer;
//   - added and special tokens, TemplateProcessing / RobertaProcessing /
//     ByteLevel post-processors, and the decoders those families use.
// Anything else in a tokenizer.json (another model type, an unknown
// normaliser, pre-tokenizer, post-processor or decoder, truncation, padding,
// BPE dropout) is refused at load time with an error naming the component.
// docs/TEXT.md has the support table.
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal
// cache guarded by a mutex; Encode and Decode may run on many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace seer {

// What tokenizer_config.json (and chat_template.jinja) say, as transformers
// reads them. Token strings are empty when not set.
struct TokenizerConfig {
  std::string bos_token, eos_token, unk_token, pad_token;
  std::optional<int32_t> bos_token_id, eos_token_id;
  std::string chat_template;  // empty: none
  // Recorded, not applied: Encode follows tokenizer.json's post-processor
  // (transformers 5 does too; see docs/TEXT.md).
  std::optional<bool> add_bos_token, add_eos_token;
  bool clean_up_tokenization_spaces = false;
};

class Tokenizer {
 public:
  // PATH is a tokenizer.json file, or a directory holding tokenizer.json and
  // optionally tokenizer_config.json and chat_template.jinja. Errors name the
  // file and the field.
  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // From the texts of tokenizer.json and (optionally) tokenizer_config.json.
  static StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view tokenizer_json,
                                                       std::string_view tokenizer_config_json = {});
  ~Tokenizer();

  // `text` must be valid UTF-8. add_special_tokens adds what the
  // post-processor adds (e.g. Llama's BOS).
  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_special_tokens = true) const;
  // An id outside the vocabulary is an error (tokenizers would silently drop it).
  StatusOr<std::string> Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The bytes Decode makes before it repairs invalid UTF-8 with U+FFFD: a
  // token that is part of a character (a byte-level or byte-fallback piece)
  // gives its own bytes, as OpenAI's logprobs `bytes` list them. Equal to
  // Decode's UTF-8 where that is valid.
  StatusOr<std::string> DecodeBytes(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One more than the largest id of the model vocabulary and added tokens.
  int32_t vocab_size() const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  const TokenizerConfig& config() const;

  // The stages alone, as tokenizers' normalizer.normalize_str and
  // pre_tokenizer.pre_tokenize_str: the normaliser's output (the text itself
  // without one), and the pre-tokenizer's pieces (one piece without one).
  StatusOr<std::string> Normalize(std::string_view text) const;
  StatusOr<std::vector<std::string>> PreTokenize(std::string_view text) const;

 private:
  friend class IncrementalDecoder;
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of ids into text pieces as they become final: it never
// emits half a UTF-8 character (nor a byte-fallback or byte-level sequence
// that later ids may still complete), and the concatenation of everything
// Step and Finish return equals Decode(all ids) exactly. Work per id is
// constant on average: decoding restarts from the last point where the
// decoder chain can be cut.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  // The text that became final with `id` (possibly empty).
  StatusOr<std::string> Step(int32_t id);
  // The rest, at the end of the stream. The decoder can be reused afterwards.
  StatusOr<std::string> Finish();

 private:
  StatusOr<std::string> Emit(bool final);

  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> window_;  // ids since the last cut
  bool at_start_ = true;  // the window starts the stream
  std::string emitted_;  // the window's text already returned
};

}  // namespace seer
