// Guided decoding on a tokenizer's vocabulary: a grammar (a JSON schema's,
// a regular expression's, a list of choices') turned into the TokenGuide
// the sampler asks, token by token, which ids keep the reply the start of a
// sentence of the grammar.
//
// How the ids are found: the vocabulary's byte strings are kept sorted, with
// the length each shares with the one before (GuideVocabulary), so a walk in
// that order reads each shared prefix once and skips every token behind a
// prefix the grammar refuses. The grammar's states along the way are
// interned, and each state's transitions and allowed ids are kept, so that a
// state met again (inside a JSON string, every character returns to the
// same state) costs a table lookup. The tables belong to the factory: every
// reply it starts (a request's choices, later requests that reuse it) finds
// the states the others met already.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "kernels/sampling/sampler.h"
#include "text/grammar.h"
#include "text/tokenizer.h"

namespace seer {

// Each id's bytes in a reply's text, sorted for the walk. Ids without text
// of their own (special tokens, ids the tokenizer lacks) are never allowed
// by a guide; the end ids reach the sampler on their own.
class GuideVocabulary {
 public:
  // Every id of the tokenizer: its bytes as Decode writes them in the middle
  // of a text (after another token, so that a tokenizer that drops the
  // first token's leading space does not change them).
  static StatusOr<std::shared_ptr<const GuideVocabulary>> FromTokenizer(const Tokenizer& tokenizer);
  // Explicit byte strings, id by id (nullopt or empty: no text); for tests.
  static std::shared_ptr<const GuideVocabulary> FromBytes(const std::vector<std::optional<std::string>>& bytes);

  int32_t size() const { return static_cast<int32_t>(bytes_.size()); }
  // Empty for an id without text.
  const std::string& bytes(int32_t id) const { return bytes_[id]; }

 private:
  friend class GuideTables;
  std::vector<std::string> bytes_;
  std::vector<int32_t> order_;  // the ids with text, by their bytes
  std::vector<uint32_t> shared_;  // bytes order_[i] shares with order_[i - 1]
  size_t longest_ = 0;
};

class GuideTables;

// A grammar and a vocabulary: SamplingParams::guide. Its replies share one
// set of tables (thread-safe), which start over past `max_states` states
// (about 1 KB each, more for a grammar whose states hold many or deep ways,
// plus up to 128 cached bitmasks of vocabulary / 8 bytes) or past
// `max_bytes` of them. A reply whose next token's walk of the vocabulary
// would pass `max_bytes` alone fails (TokenGuide::failure) and allows
// nothing more.
class GrammarGuideFactory final : public TokenGuideFactory {
 public:
  static constexpr size_t kDefaultMaxStates = 4096;
  static constexpr size_t kDefaultMaxBytes = size_t{64} << 20;
  GrammarGuideFactory(std::shared_ptr<const Grammar> grammar, std::shared_ptr<const GuideVocabulary> vocabulary,
                      size_t max_states = kDefaultMaxStates, size_t max_bytes = kDefaultMaxBytes);
  std::unique_ptr<TokenGuide> Start() const override;

 private:
  std::shared_ptr<GuideTables> tables_;
};

// What a request asks the reply to be (GenerateRequest.guide).
struct GuideSpec {
  enum class Kind { kNone, kJsonSchema, kJsonObject, kRegex, kChoice, kGrammar };
  Kind kind = Kind::kNone;
  std::string text;  // the schema's JSON text, the expression, or the GBNF grammar
  std::vector<std::string> choices;

  // Equal for equal specs, and only for them (a cache's key).
  std::string Key() const;
};

// The most bytes a schema, an expression or a grammar may have (the choices
// too, all together), and the most choices.
inline constexpr size_t kMaxGuideBytes = 64 * 1024;
inline constexpr size_t kMaxGuideChoices = 1024;

// The grammar `spec` asks for; errors name the field ("guide.json_schema",
// "guide.regex", "guide.choice", "guide.grammar") and what is wrong.
StatusOr<std::shared_ptr<const Grammar>> CompileGuide(const GuideSpec& spec);

// Exactly one of `choices` (vLLM's guided_choice).
StatusOr<Grammar> GrammarFromChoices(const std::vector<std::string>& choices);

}  // namespace seer
