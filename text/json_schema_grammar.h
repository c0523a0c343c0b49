// JSON Schema as a grammar, for OpenAI's response_format json_schema and
// json_object and vLLM's guided_json: every sentence is a JSON text that
// the schema accepts. The subset and its rules are in
// json_schema_grammar.cc; a keyword that would constrain the value in a way
// the grammar does not follow is refused with its JSON pointer, never
// ignored. Annotations (title, description, examples, ...) are ignored.
#pragma once

#include "base/json.h"
#include "base/status.h"
#include "text/grammar.h"

namespace seer {

// The most whitespace bytes between two JSON tokens; bounded so that a
// model cannot spin in whitespace forever.
inline constexpr int kMaxJsonWhitespace = 64;

// A grammar for the JSON texts that `schema` accepts. The schema may be
// `true` or `{}` (any JSON value).
StatusOr<Grammar> GrammarFromJsonSchema(const JsonValue& schema);

// Any JSON object (OpenAI's JSON mode, {"type": "json_object"}).
Grammar JsonObjectGrammar();

}  // namespace seer
