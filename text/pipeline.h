// The stages of a tokenizer.json around the model: normalisers,
// pre-tokenizers, post-processors and decoders, each built from its JSON
// object and refusing any type or option it does not implement.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "base/status.h"
#include "text/regex.h"

namespace seer {

// A piece of the input on its way through the pipeline.
struct Piece {
  std::string text;
  int32_t token = -1;  // >= 0: an added token, already final
  bool at_start = false;  // starts at offset 0 of the original input (Metaspace's "first")
};

// --- Normalisers: string to string ---
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual StatusOr<std::string> Normalize(std::string_view text) const = 0;
};
// `where` names the JSON path for errors ("normalizer", "normalizer.normalizers[1]").
StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const JsonValue& j, const std::string& where);

// --- Pre-tokenizers: one piece to sub-pieces ---
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual Status Split(Piece piece, std::vector<Piece>* out) const = 0;
};
StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const JsonValue& j, const std::string& where);

// --- Post-processors: add the special tokens around the ids ---
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void Process(std::vector<int32_t>* ids, bool add_special_tokens) const = 0;
  // Every id it may add (checked against the vocabulary at load time).
  virtual std::vector<int32_t> SpecialIds() const { return {}; }
};
StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const JsonValue& j, const std::string& where);

// --- Decoders: token strings to text ---
// `continuation`: the tokens continue earlier text (not the stream's start),
// for IncrementalDecoder; `fused` tells a stage whether an earlier stage has
// joined the tokens into one string.
struct DecodeState {
  bool continuation = false;
  bool fused = false;
  // Keep the bytes the byte-level and byte-fallback decoders make as they
  // are, without replacing invalid UTF-8 by U+FFFD (Tokenizer::DecodeBytes);
  // the stages after them then work on bytes.
  bool raw_bytes = false;
};
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual Status DecodeChain(std::vector<std::string>* tokens, DecodeState* state) const = 0;
  // Properties IncrementalDecoder needs to know where text is final.
  virtual bool HasByteFallback() const { return false; }
  virtual int StripStop() const { return 0; }  // trailing characters a Strip may still remove
  virtual char32_t StripContent() const { return 0; }
};
StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const JsonValue& j, const std::string& where);

// GPT-2's byte-to-character map, and back (-1 for characters outside it).
char32_t ByteToChar(uint8_t b);
int CharToByte(char32_t c);

// "<0xAB>" -> 0xAB as tokenizers' ByteFallback decoder reads it; -1 otherwise.
int ParseByteToken(std::string_view token);

}  // namespace seer
