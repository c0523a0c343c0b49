// JSON Schema to grammar rules. Every sentence of the grammar must be a JSON
// text that the schema accepts; where the grammar cannot follow a keyword
// exactly it spells a subset of the valid texts (noted below) or refuses
// the keyword, naming its JSON pointer. What is supported:
//
// - Whitespace: 0..kMaxJsonWhitespace bytes of [ \t\n\r] between tokens and
//   around the whole text, one shared rule.
// - true, {} and annotation-only schemas: any JSON value. false: refused.
// - "type" (a name or a list of names). Without "type", the types come from
//   the keywords present ("properties" means object, "items" array,
//   "minLength" string, "minimum" number), else any value; JSON Schema
//   would also let the other types through, so this is a subset.
// - Strings: any code point but '"', '\' and U+0000..U+001F, or an escape
//   (\uXXXX only as a non-surrogate or a surrogate pair, so strict parsers
//   accept it). minLength and maxLength up to 256, counting an escape as one
//   character. "pattern" is matched whole (as if anchored: schema authors
//   nearly always mean that, and it is a subset of JSON Schema's search
//   otherwise) against the raw text between the quotes, with '"', '\' and
//   control characters taken out of the expression: strings that would need
//   an escape are never written. "format": date, time, date-time (RFC 3339,
//   upper-case T and Z, no leap second, no 29 February), uuid, ipv4, email
//   (a dot-atom local part and a dotted host name).
// - Numbers: RFC 8259 numbers with at most 200 digits before and after the
//   point and 2 in the exponent, so that every one fits a double (parsers
//   that read doubles refuse bigger ones); integers without fraction or
//   exponent. The only bounds followed are an integer's lower bound of 0 or
//   1 and a number's minimum of 0 (no minus sign, so "-0" is left out);
//   "multipleOf": 1 on an integer is allowed; other bounds are refused.
// - enum and const: each value's compact text (JsonValue::Dump: an object or
//   array value is written without whitespace inside), filtered by "type".
// - Objects with "properties" (and "additionalProperties" absent or false):
//   the properties in the schema's order, each key spelled as
//   JsonValue::Dump spells it; required ones always, optional ones may be
//   left out; no other keys. JSON Schema allows other keys when
//   additionalProperties is absent; leaving them out is xgrammar's strict
//   mode, and OpenAI's strict structured outputs require false anyway.
//   additionalProperties allowing keys beside properties is refused.
//   Without properties (or with "properties": {} and additionalProperties
//   true or a schema): a map of any string keys to values of the
//   additionalProperties schema, at most maxProperties (<= 256) of them. A
//   key may repeat, which is why minProperties above 1 is refused.
// - Arrays: "items", "prefixItems" (or the older "items": [...] with
//   "additionalItems"), minItems and maxItems up to 256.
// - anyOf; oneOf read as anyOf: where branches overlap, a sentence may
//   match two, which oneOf forbids (the one place the grammar can be wider
//   than the schema; disjoint branches, the usual case, are exact); allOf
//   with one schema; local "$ref" ("#", "#/$defs/Name", any JSON pointer),
//   each compiled once so recursive schemas become recursive rules.
// - Annotations (title, description, examples, default, $schema, $id,
//   $comment, deprecated, readOnly, writeOnly) and the $defs/definitions
//   that hold referenced schemas are ignored; every other keyword is refused.
//   A keyword for one type (minLength, properties, ...) is ignored when that
//   type cannot occur, as JSON Schema says.
//
// At the end, alternatives that can never finish (a required property whose
// schema matches nothing, a pattern that only matches strings needing
// escapes) are pruned, so that every prefix the matcher accepts can be
// completed; a schema left with no sentence at all is refused.
#include "text/json_schema_grammar.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/regex_grammar.h"

namespace seer {
namespace {

using Sequence = Grammar::Sequence;

// Schemas nested deeper than this are refused: compiling recurses once per level.
constexpr int kMaxSchemaDepth = 64;
// The most digits in a number's integer part and in its fraction, and in
// its exponent: see Number().
constexpr int kMaxNumberDigits = 200;
constexpr int kMaxExponentDigits = 2;
// The most a bounded count (string length, items, map entries) may be: each
// step of a bounded repetition is a rule of its own.
constexpr int64_t kMaxBoundedCount = 256;

Sequence Concat(std::initializer_list<Sequence> parts) {
  Sequence out;
  for (const Sequence& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Sequence RefTo(int32_t rule) { return {Grammar::Ref(rule)}; }
Sequence ByteOf(char c) { return {Grammar::Byte(static_cast<uint8_t>(c))}; }

ByteSet BytesOf(std::string_view chars) {
  ByteSet set;
  for (char c : chars) set.Add(static_cast<uint8_t>(c));
  return set;
}

ByteSet Intersect(const ByteSet& a, const ByteSet& b) { return a.Inverted().Add(b.Inverted()).Inverted(); }

bool IsAnnotation(std::string_view keyword) {
  static constexpr std::string_view kAnnotations[] = {"title", "description", "examples",   "default",  "$schema",
                                                      "$id",   "$comment",    "deprecated", "readOnly", "writeOnly"};
  return std::find(std::begin(kAnnotations), std::end(kAnnotations), keyword) != std::end(kAnnotations);
}

// Holders of subschemas that are compiled only when a $ref reaches them.
bool IsDefinitions(std::string_view keyword) { return keyword == "$defs" || keyword == "definitions"; }

enum class JsonType { kNull, kBoolean, kInteger, kNumber, kString, kArray, kObject };

struct TypeName {
  JsonType type;
  std::string_view name;
};
constexpr TypeName kTypeNames[] = {
    {JsonType::kNull, "null"},     {JsonType::kBoolean, "boolean"}, {JsonType::kInteger, "integer"},
    {JsonType::kNumber, "number"}, {JsonType::kString, "string"},   {JsonType::kArray, "array"},
    {JsonType::kObject, "object"},
};

// The type whose values a keyword constrains (JSON Schema ignores it for
// values of other types), or nullopt for the keywords that apply to all.
std::optional<JsonType> KeywordType(std::string_view keyword) {
  static constexpr std::string_view kString[] = {"minLength", "maxLength", "pattern", "format"};
  static constexpr std::string_view kNumber[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                                 "multipleOf"};
  static constexpr std::string_view kObject[] = {
      "properties",        "required",          "additionalProperties", "minProperties",
      "maxProperties",     "patternProperties", "propertyNames",        "dependencies",
      "dependentRequired", "dependentSchemas",  "unevaluatedProperties"};
  static constexpr std::string_view kArray[] = {"items",       "prefixItems",     "additionalItems", "minItems",
                                                "maxItems",    "uniqueItems",     "contains",        "minContains",
                                                "maxContains", "unevaluatedItems"};
  const auto in = [&](const auto& list) {
    return std::find(std::begin(list), std::end(list), keyword) != std::end(list);
  };
  if (in(kString)) return JsonType::kString;
  if (in(kNumber)) return JsonType::kNumber;
  if (in(kObject)) return JsonType::kObject;
  if (in(kArray)) return JsonType::kArray;
  return std::nullopt;
}

bool IsGeneralKeyword(std::string_view keyword) {
  static constexpr std::string_view kGeneral[] = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"};
  return std::find(std::begin(kGeneral), std::end(kGeneral), keyword) != std::end(kGeneral);
}

bool HasType(const JsonValue& value, JsonType type) {
  switch (type) {
    case JsonType::kNull: return value.is_null();
    case JsonType::kBoolean: return value.is_bool();
    case JsonType::kInteger:
      return value.is_integer() || (value.is_number() && std::isfinite(value.as_double()) &&
                                    std::floor(value.as_double()) == value.as_double());
    case JsonType::kNumber: return value.is_number();
    case JsonType::kString: return value.is_string();
    case JsonType::kArray: return value.is_array();
    case JsonType::kObject: return value.is_object();
  }
  return false;
}

// JSON pointers (RFC 6901) name where in the schema an error is.
std::string PointerToken(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Child(const std::string& pointer, std::string_view key) { return pointer + "/" + PointerToken(key); }
std::string Child(const std::string& pointer, size_t index) { return pointer + "/" + std::to_string(index); }

Status Refuse(const std::string& pointer, const std::string& what) {
  return InvalidArgument((pointer.empty() ? std::string("(root)") : pointer) + ": " + what);
}

Status NotSupported(const std::string& schema_pointer, std::string_view keyword) {
  return Refuse(Child(schema_pointer, keyword), "\"" + std::string(keyword) + "\" is not supported");
}

std::string Quoted(std::string_view keyword) { return "\"" + std::string(keyword) + "\""; }

// A count's bounds; max < 0 means unbounded.
struct CountBounds {
  int64_t min = 0;
  int64_t max = -1;
};

// Reads minimum and maximum count keywords (minLength/maxLength, ...),
// which become bounded repetitions and so must be small.
StatusOr<CountBounds> ReadCountBounds(const JsonValue& schema, const std::string& pointer, std::string_view min_keyword,
                                      std::string_view max_keyword) {
  CountBounds bounds;
  for (std::string_view keyword : {min_keyword, max_keyword}) {
    const JsonValue* value = schema.Find(keyword);
    if (value == nullptr) continue;
    const double d = value->is_number() ? value->as_double() : -1.0;
    if (!(d >= 0.0) || std::floor(d) != d) {
      return Refuse(Child(pointer, keyword), "must be a non-negative integer, got " + value->Dump());
    }
    if (d > static_cast<double>(kMaxBoundedCount)) {
      return Refuse(Child(pointer, keyword),
                    "at most " + std::to_string(kMaxBoundedCount) + " is supported, got " + value->Dump());
    }
    (keyword == min_keyword ? bounds.min : bounds.max) = static_cast<int64_t>(d);
  }
  if (bounds.max >= 0 && bounds.max < bounds.min) {
    return Refuse(Child(pointer, max_keyword),
                  Quoted(max_keyword) + " is below " + Quoted(min_keyword) + ": the schema matches nothing");
  }
  return bounds;
}

// Which rules can derive some text, with every byte set narrowed to
// `allowed` (an alternative with a byte set left empty derives nothing).
// Linear in the grammar's size: each alternative counts its references to
// rules not yet known productive, and fires when that count reaches zero.
std::vector<bool> ProductiveRules(const Grammar& grammar, const ByteSet& allowed) {
  const std::vector<Grammar::Symbol>& symbols = grammar.symbols();
  struct Alternative {
    int32_t rule;
    int32_t unknown;  // references to rules not yet known productive
  };
  std::vector<Alternative> alternatives;
  std::vector<std::vector<int32_t>> users(grammar.rule_count());  // alternatives referring to each rule
  std::vector<int32_t> ready;  // rules with a productive alternative
  for (int32_t rule = 0; rule < grammar.rule_count(); ++rule) {
    for (int32_t start : grammar.alternatives(rule)) {
      const int32_t index = static_cast<int32_t>(alternatives.size());
      Alternative alternative{rule, 0};
      bool dead = false;
      for (int32_t i = start; symbols[i].rule != Grammar::kEnd; ++i) {
        if (symbols[i].rule >= 0) {
          ++alternative.unknown;
          users[symbols[i].rule].push_back(index);
        } else if (Intersect(symbols[i].bytes, allowed).empty()) {
          dead = true;
        }
      }
      if (dead) alternative.unknown = -1;  // never fires
      if (alternative.unknown == 0) ready.push_back(rule);
      alternatives.push_back(alternative);
    }
  }
  std::vector<bool> productive(grammar.rule_count(), false);
  while (!ready.empty()) {
    const int32_t rule = ready.back();
    ready.pop_back();
    if (productive[rule]) continue;
    productive[rule] = true;
    for (int32_t index : users[rule]) {
      if (--alternatives[index].unknown == 0) ready.push_back(alternatives[index].rule);
    }
  }
  return productive;
}

// Appends the rules of `from` to `to` (rule r becoming r + the returned
// offset), with byte sets narrowed to `allowed` and without the
// alternatives that cannot derive anything.
int32_t AppendProductiveRules(const Grammar& from, const ByteSet& allowed, Grammar* to) {
  const std::vector<bool> productive = ProductiveRules(from, allowed);
  const int32_t offset = to->rule_count();
  for (int32_t rule = 0; rule < from.rule_count(); ++rule) to->AddRule(from.rule_name(rule));
  const std::vector<Grammar::Symbol>& symbols = from.symbols();
  for (int32_t rule = 0; rule < from.rule_count(); ++rule) {
    for (int32_t start : from.alternatives(rule)) {
      Sequence sequence;
      bool live = true;
      for (int32_t i = start; live && symbols[i].rule != Grammar::kEnd; ++i) {
        if (symbols[i].rule >= 0) {
          live = productive[symbols[i].rule];
          sequence.push_back(Grammar::Ref(symbols[i].rule + offset));
        } else {
          const ByteSet bytes = Intersect(symbols[i].bytes, allowed);
          live = !bytes.empty();
          sequence.push_back(Grammar::Bytes(bytes));
        }
      }
      if (live) to->AddAlternative(rule + offset, sequence);
    }
  }
  return offset;
}

// RFC 3339 and friends as regular expressions over the raw string content.
// Each is a subset of what a format-asserting validator accepts.
std::optional<std::string_view> FormatRegex(std::string_view format) {
  // Days that exist in every year: 29 February is left out.
  static constexpr std::string_view kDate =
      "[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)";
  static constexpr std::string_view kTime =
      "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
  static const std::string kDateTime = std::string(kDate) + "T" + std::string(kTime);
  static constexpr std::string_view kUuid =
      "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
  static constexpr std::string_view kIpv4 =
      "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";
  static constexpr std::string_view kEmail =
      "[A-Za-z0-9_+-]+(?:\\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
      "(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+";
  if (format == "date") return kDate;
  if (format == "time") return kTime;
  if (format == "date-time") return kDateTime;
  if (format == "uuid") return kUuid;
  if (format == "ipv4") return kIpv4;
  if (format == "email") return kEmail;
  return std::nullopt;
}

// The shapes of number the grammar can spell.
enum class NumberKind { kNumber, kNonNegativeNumber, kInteger, kNonNegativeInteger, kPositiveInteger };

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const JsonValue& root) : root_(root) {}

  StatusOr<Grammar> CompileRoot();
  Grammar JsonObjectOnly();

 private:
  StatusOr<int32_t> Compile(const JsonValue& schema, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileRef(const JsonValue& ref, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileCombination(const JsonValue& schema, std::string_view keyword, const std::string& pointer,
                                       int depth);
  StatusOr<int32_t> CompileValues(const JsonValue& schema, const std::string& pointer);
  StatusOr<std::vector<JsonType>> ReadTypes(const JsonValue& schema, const std::string& pointer);
  StatusOr<int32_t> CompileTyped(JsonType type, const JsonValue& schema, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileString(const JsonValue& schema, const std::string& pointer);
  StatusOr<int32_t> CompileNumber(const JsonValue& schema, const std::string& pointer, bool integer);
  StatusOr<int32_t> CompileObject(const JsonValue& schema, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileFixedObject(const JsonValue& schema, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileMap(const JsonValue& schema, const JsonValue* values, const std::string& pointer, int depth);
  StatusOr<int32_t> CompileArray(const JsonValue& schema, const std::string& pointer, int depth);

  // Shared rules, each built on first use.
  int32_t Whitespace();
  int32_t StringChar();
  int32_t StringOfLength(int64_t min, int64_t max);
  int32_t Number(NumberKind kind);
  int32_t AnyValue();
  // A string whose content (between the quotes) matches `pattern` whole.
  StatusOr<int32_t> StringMatching(const std::string& pattern, const std::string& pointer);

  static std::string RuleName(const std::string& pointer) { return pointer.empty() ? "root" : pointer; }

  const JsonValue& root_;
  Grammar grammar_;
  int32_t whitespace_ = -1;
  int32_t string_char_ = -1;
  int32_t any_value_ = -1;
  int32_t any_object_ = -1;
  std::map<std::pair<int64_t, int64_t>, int32_t> strings_;  // by (min, max) length
  int32_t positive_ = -1;  // [1-9][0-9]*, bounded
  int32_t natural_ = -1;  // 0 | positive
  std::map<NumberKind, int32_t> numbers_;
  std::map<std::string, int32_t> patterns_;
  std::map<std::string, int32_t> refs_;  // by JSON pointer, so that each is compiled once
};

StatusOr<Grammar> SchemaCompiler::CompileRoot() {
  SEER_ASSIGN_OR_RETURN(int32_t value, Compile(root_, "", 0));
  const int32_t ws = Whitespace();
  grammar_.set_root(grammar_.RuleOf("json", {{Grammar::Ref(ws), Grammar::Ref(value), Grammar::Ref(ws)}}));
  const Status valid = grammar_.Validate();
  if (!valid.ok()) return InvalidArgument("the schema's grammar is too big: " + valid.message());
  if (!ProductiveRules(grammar_, ByteSet::All())[grammar_.root()]) {
    return Refuse("", "the schema matches no JSON value the grammar can write");
  }
  // Prune alternatives that can never finish, so that the matcher never
  // leads a reply into a dead end.
  Grammar pruned;
  const int32_t offset = AppendProductiveRules(grammar_, ByteSet::All(), &pruned);
  pruned.set_root(grammar_.root() + offset);
  return pruned;
}

Grammar SchemaCompiler::JsonObjectOnly() {
  AnyValue();
  const int32_t ws = Whitespace();
  grammar_.set_root(grammar_.RuleOf("json", {{Grammar::Ref(ws), Grammar::Ref(any_object_), Grammar::Ref(ws)}}));
  return std::move(grammar_);
}

StatusOr<int32_t> SchemaCompiler::Compile(const JsonValue& schema, const std::string& pointer, int depth) {
  if (depth > kMaxSchemaDepth) {
    return Refuse(pointer, "schemas nested deeper than " + std::to_string(kMaxSchemaDepth) + " are not supported");
  }
  if (grammar_.rule_count() > Grammar::kMaxRules) {
    return Refuse(pointer, "the schema needs more than " + std::to_string(Grammar::kMaxRules) + " grammar rules");
  }
  if (schema.is_bool()) {
    if (schema.as_bool()) return AnyValue();
    return Refuse(pointer, "the schema false matches nothing");
  }
  if (!schema.is_object()) return Refuse(pointer, "a schema must be an object or a boolean, got " + schema.Dump());

  // The keywords that say something about the value; anything unknown is
  // refused here, so that no constraint is silently dropped.
  std::vector<std::string_view> keywords;
  for (const auto& [keyword, value] : schema.as_object()) {
    if (IsAnnotation(keyword) || IsDefinitions(keyword)) continue;
    if (!IsGeneralKeyword(keyword) && !KeywordType(keyword).has_value()) return NotSupported(pointer, keyword);
    keywords.push_back(keyword);
  }
  // A reference or a combination must stand alone: the grammar cannot
  // intersect it with the keywords beside it.
  const auto only = [&](std::initializer_list<std::string_view> allowed, std::string_view main) -> Status {
    for (std::string_view keyword : keywords) {
      if (std::find(allowed.begin(), allowed.end(), keyword) == allowed.end()) {
        return Refuse(Child(pointer, keyword), Quoted(keyword) + " next to " + Quoted(main) + " is not supported");
      }
    }
    return OkStatus();
  };
  if (const JsonValue* ref = schema.Find("$ref")) {
    SEER_RETURN_IF_ERROR(only({"$ref"}, "$ref"));
    return CompileRef(*ref, pointer, depth);
  }
  for (std::string_view combination : {"anyOf", "oneOf", "allOf"}) {
    if (schema.Find(combination) != nullptr) {
      SEER_RETURN_IF_ERROR(only({combination}, combination));
      return CompileCombination(schema, combination, pointer, depth);
    }
  }
  if (schema.Find("enum") != nullptr || schema.Find("const") != nullptr) {
    SEER_RETURN_IF_ERROR(only({"enum", "const", "type"}, schema.Find("enum") != nullptr ? "enum" : "const"));
    return CompileValues(schema, pointer);
  }

  SEER_ASSIGN_OR_RETURN(std::vector<JsonType> types, ReadTypes(schema, pointer));
  if (types.empty()) return AnyValue();
  std::vector<Sequence> alternatives;
  for (JsonType type : types) {
    SEER_ASSIGN_OR_RETURN(int32_t rule, CompileTyped(type, schema, pointer, depth));
    alternatives.push_back(RefTo(rule));
  }
  if (alternatives.size() == 1) return alternatives[0][0].rule;
  return grammar_.RuleOf(RuleName(pointer), alternatives);
}

StatusOr<int32_t> SchemaCompiler::CompileRef(const JsonValue& ref, const std::string& pointer, int depth) {
  const std::string where = Child(pointer, "$ref");
  if (!ref.is_string()) return Refuse(where, "must be a string, got " + ref.Dump());
  const std::string& uri = ref.as_string();
  if (uri.empty() || uri[0] != '#' || (uri.size() > 1 && uri[1] != '/')) {
    return Refuse(where, "only references within the schema (\"#\" or \"#/...\") are supported, got " + ref.Dump());
  }
  const std::string target_pointer = uri.substr(1);
  if (auto it = refs_.find(target_pointer); it != refs_.end()) return it->second;

  // Walk the pointer's tokens from the root, undoing ~1 and ~0.
  const JsonValue* target = &root_;
  size_t pos = 1;
  while (pos <= target_pointer.size() && !target_pointer.empty()) {
    const size_t end = std::min(target_pointer.find('/', pos), target_pointer.size());
    std::string token;
    for (size_t i = pos; i < end; ++i) {
      if (target_pointer[i] == '~' && i + 1 < end && (target_pointer[i + 1] == '0' || target_pointer[i + 1] == '1')) {
        token.push_back(target_pointer[++i] == '0' ? '~' : '/');
      } else {
        token.push_back(target_pointer[i]);
      }
    }
    if (target->is_object()) {
      target = target->Find(token);
    } else if (target->is_array() && !token.empty() && token.find_first_not_of("0123456789") == std::string::npos &&
               token.size() < 10 && std::stoul(token) < target->as_array().size()) {
      target = &target->as_array()[std::stoul(token)];
    } else {
      target = nullptr;
    }
    if (target == nullptr) return Refuse(where, ref.Dump() + " points to nothing in the schema");
    pos = end + 1;
  }
  // The rule exists before its body is compiled, so that a schema that
  // refers to itself becomes a recursive rule.
  const int32_t rule = grammar_.AddRule(RuleName(target_pointer));
  refs_[target_pointer] = rule;
  SEER_ASSIGN_OR_RETURN(int32_t body, Compile(*target, target_pointer, depth + 1));
  grammar_.AddAlternative(rule, RefTo(body));
  return rule;
}

StatusOr<int32_t> SchemaCompiler::CompileCombination(const JsonValue& schema, std::string_view keyword,
                                                     const std::string& pointer, int depth) {
  const std::string where = Child(pointer, keyword);
  const JsonValue& branches = *schema.Find(keyword);
  if (!branches.is_array() || branches.as_array().empty()) {
    return Refuse(where, "must be a non-empty array of schemas, got " + branches.Dump());
  }
  if (keyword == "allOf" && branches.as_array().size() != 1) {
    return Refuse(where,
                  "only one schema in \"allOf\" is supported, got " + std::to_string(branches.as_array().size()));
  }
  std::vector<Sequence> alternatives;
  for (size_t i = 0; i < branches.as_array().size(); ++i) {
    SEER_ASSIGN_OR_RETURN(int32_t rule, Compile(branches.as_array()[i], Child(where, i), depth + 1));
    alternatives.push_back(RefTo(rule));
  }
  if (alternatives.size() == 1) return alternatives[0][0].rule;
  return grammar_.RuleOf(RuleName(pointer), alternatives);
}

StatusOr<int32_t> SchemaCompiler::CompileValues(const JsonValue& schema, const std::string& pointer) {
  std::vector<const JsonValue*> values;
  const JsonValue* enum_values = schema.Find("enum");
  const JsonValue* constant = schema.Find("const");
  if (enum_values != nullptr) {
    if (!enum_values->is_array() || enum_values->as_array().empty()) {
      return Refuse(Child(pointer, "enum"), "must be a non-empty array, got " + enum_values->Dump());
    }
    for (const JsonValue& value : enum_values->as_array()) {
      // With const too, the value must be both: compare their texts.
      if (constant == nullptr || value.Dump() == constant->Dump()) values.push_back(&value);
    }
  } else {
    values.push_back(constant);
  }
  if (schema.Find("type") != nullptr) {
    SEER_ASSIGN_OR_RETURN(std::vector<JsonType> types, ReadTypes(schema, pointer));
    std::erase_if(values, [&](const JsonValue* value) {
      return std::none_of(types.begin(), types.end(), [&](JsonType type) { return HasType(*value, type); });
    });
  }
  if (values.empty()) {
    return Refuse(pointer, "no value of \"enum\" or \"const\" fits the other keywords: the schema matches nothing");
  }
  std::vector<Sequence> alternatives;
  std::vector<std::string> texts;
  for (const JsonValue* value : values) {
    std::string text = value->Dump();
    if (std::find(texts.begin(), texts.end(), text) != texts.end()) continue;
    alternatives.push_back(Grammar::Text(text));
    texts.push_back(std::move(text));
  }
  return grammar_.RuleOf(RuleName(pointer), alternatives);
}

StatusOr<std::vector<JsonType>> SchemaCompiler::ReadTypes(const JsonValue& schema, const std::string& pointer) {
  std::vector<JsonType> types;
  const JsonValue* type = schema.Find("type");
  if (type == nullptr) {
    // The types whose keywords are present; none means any value.
    for (const auto& [keyword, value] : schema.as_object()) {
      const std::optional<JsonType> keyword_type = KeywordType(keyword);
      if (keyword_type && std::find(types.begin(), types.end(), *keyword_type) == types.end()) {
        types.push_back(*keyword_type);
      }
    }
    return types;
  }
  std::vector<JsonValue> names;
  if (type->is_array()) {
    names = type->as_array();
  } else {
    names.push_back(*type);
  }
  for (const JsonValue& name : names) {
    const auto it = std::find_if(std::begin(kTypeNames), std::end(kTypeNames), [&](const TypeName& known) {
      return name.is_string() && name.as_string() == known.name;
    });
    if (it == std::end(kTypeNames)) return Refuse(Child(pointer, "type"), "unknown type " + name.Dump());
    if (std::find(types.begin(), types.end(), it->type) == types.end()) types.push_back(it->type);
  }
  if (types.empty()) return Refuse(Child(pointer, "type"), "an empty list of types matches nothing");
  return types;
}

StatusOr<int32_t> SchemaCompiler::CompileTyped(JsonType type, const JsonValue& schema, const std::string& pointer,
                                               int depth) {
  switch (type) {
    case JsonType::kNull: return grammar_.RuleOf("null", {Grammar::Text("null")});
    case JsonType::kBoolean: return grammar_.RuleOf("boolean", {Grammar::Text("true"), Grammar::Text("false")});
    case JsonType::kInteger: return CompileNumber(schema, pointer, /*integer=*/true);
    case JsonType::kNumber: return CompileNumber(schema, pointer, /*integer=*/false);
    case JsonType::kString: return CompileString(schema, pointer);
    case JsonType::kArray: return CompileArray(schema, pointer, depth);
    case JsonType::kObject: return CompileObject(schema, pointer, depth);
  }
  return Refuse(pointer, "unknown type");
}

StatusOr<int32_t> SchemaCompiler::CompileString(const JsonValue& schema, const std::string& pointer) {
  const JsonValue* pattern = schema.Find("pattern");
  const JsonValue* format = schema.Find("format");
  if (pattern == nullptr && format == nullptr) {
    SEER_ASSIGN_OR_RETURN(CountBounds length, ReadCountBounds(schema, pointer, "minLength", "maxLength"));
    return StringOfLength(length.min, length.max);
  }
  // A regular expression cannot be intersected with a length or another
  // expression here.
  const std::string_view main = pattern != nullptr ? "pattern" : "format";
  for (std::string_view other : {"minLength", "maxLength", "format"}) {
    if (other != main && schema.Find(other) != nullptr) {
      return Refuse(Child(pointer, other), Quoted(other) + " together with " + Quoted(main) + " is not supported");
    }
  }
  const JsonValue& value = pattern != nullptr ? *pattern : *format;
  const std::string where = Child(pointer, main);
  if (!value.is_string()) return Refuse(where, "must be a string, got " + value.Dump());
  std::string regex = value.as_string();
  if (format != nullptr) {
    const std::optional<std::string_view> format_regex = FormatRegex(value.as_string());
    if (!format_regex) {
      return Refuse(
          where, "format " + value.Dump() + " is not supported (supported: date, time, date-time, uuid, ipv4, email)");
    }
    regex = std::string(*format_regex);
  }
  SEER_ASSIGN_OR_RETURN(int32_t content, StringMatching(regex, where));
  return grammar_.RuleOf(RuleName(pointer), {Concat({ByteOf('"'), RefTo(content), ByteOf('"')})});
}

StatusOr<int32_t> SchemaCompiler::CompileNumber(const JsonValue& schema, const std::string& pointer, bool integer) {
  for (std::string_view keyword : {"maximum", "exclusiveMaximum"}) {
    if (schema.Find(keyword) != nullptr) return NotSupported(pointer, keyword);
  }
  if (const JsonValue* multiple = schema.Find("multipleOf")) {
    // Every integer is a multiple of 1; nothing else is followed.
    if (!integer || !multiple->is_number() || multiple->as_double() != 1.0) return NotSupported(pointer, "multipleOf");
  }
  const JsonValue* minimum = schema.Find("minimum");
  const JsonValue* exclusive = schema.Find("exclusiveMinimum");
  for (const JsonValue* bound : {minimum, exclusive}) {
    if (bound != nullptr && !bound->is_number() && !(bound == exclusive && bound->is_bool())) {
      return Refuse(Child(pointer, bound == minimum ? "minimum" : "exclusiveMinimum"),
                    "must be a number, got " + bound->Dump());
    }
  }
  // Draft 4 spells an exclusive minimum as "exclusiveMinimum": true beside "minimum".
  const bool draft4_exclusive = exclusive != nullptr && exclusive->is_bool() && exclusive->as_bool();
  const bool numeric_exclusive = exclusive != nullptr && exclusive->is_number();
  if (minimum == nullptr && !numeric_exclusive) {
    if (draft4_exclusive) return Refuse(Child(pointer, "exclusiveMinimum"), "true needs \"minimum\" beside it");
    return Number(integer ? NumberKind::kInteger : NumberKind::kNumber);
  }
  if (!integer) {
    if (exclusive != nullptr && (numeric_exclusive || draft4_exclusive))
      return NotSupported(pointer, "exclusiveMinimum");
    if (minimum->as_double() != 0.0) {
      return Refuse(Child(pointer, "minimum"), "only 0 is supported as a number's minimum, got " + minimum->Dump());
    }
    return Number(NumberKind::kNonNegativeNumber);
  }
  // The least integer allowed, from whichever bounds are given.
  double least = -INFINITY;
  std::string_view binding = "minimum";
  if (minimum != nullptr) {
    least = draft4_exclusive ? std::floor(minimum->as_double()) + 1 : std::ceil(minimum->as_double());
  }
  if (numeric_exclusive && std::floor(exclusive->as_double()) + 1 > least) {
    least = std::floor(exclusive->as_double()) + 1;
    binding = "exclusiveMinimum";
  }
  if (least == 0.0) return Number(NumberKind::kNonNegativeInteger);
  if (least == 1.0) return Number(NumberKind::kPositiveInteger);
  return Refuse(Child(pointer, binding),
                "only a lower bound of 0 or 1 is supported for integers, got " + schema.Find(binding)->Dump());
}

StatusOr<int32_t> SchemaCompiler::CompileObject(const JsonValue& schema, const std::string& pointer, int depth) {
  for (std::string_view keyword : {"patternProperties", "propertyNames", "dependencies", "dependentRequired",
                                   "dependentSchemas", "unevaluatedProperties"}) {
    if (schema.Find(keyword) != nullptr) return NotSupported(pointer, keyword);
  }
  const JsonValue* properties = schema.Find("properties");
  const JsonValue* additional = schema.Find("additionalProperties");
  if (properties != nullptr && !properties->is_object()) {
    return Refuse(Child(pointer, "properties"), "must be an object, got " + properties->Dump());
  }
  const bool no_additional = additional != nullptr && additional->is_bool() && !additional->as_bool();
  if (properties != nullptr && additional != nullptr && !no_additional) {
    if (!properties->as_object().empty()) {
      return Refuse(Child(pointer, "additionalProperties"),
                    "keys beyond \"properties\" are not supported; set \"additionalProperties\": false");
    }
  } else if (properties != nullptr || no_additional) {
    return CompileFixedObject(schema, pointer, depth);
  }
  return CompileMap(schema, additional, pointer, depth);
}

StatusOr<int32_t> SchemaCompiler::CompileFixedObject(const JsonValue& schema, const std::string& pointer, int depth) {
  static const JsonValue kNoProperties = JsonValue::Object();
  const JsonValue* properties = schema.Find("properties");
  const std::vector<JsonValue::Member>& members = (properties != nullptr ? *properties : kNoProperties).as_object();
  std::vector<bool> required(members.size(), false);
  if (const JsonValue* names = schema.Find("required")) {
    const std::string where = Child(pointer, "required");
    if (!names->is_array()) return Refuse(where, "must be an array of property names, got " + names->Dump());
    for (const JsonValue& name : names->as_array()) {
      const auto it = std::find_if(members.begin(), members.end(), [&](const JsonValue::Member& member) {
        return name.is_string() && member.first == name.as_string();
      });
      if (it == members.end()) return Refuse(where, name.Dump() + " is not in \"properties\"");
      required[it - members.begin()] = true;
    }
  }
  // Counts are only followed when every object the grammar writes meets them.
  const int64_t required_count = std::count(required.begin(), required.end(), true);
  SEER_ASSIGN_OR_RETURN(CountBounds count, ReadCountBounds(schema, pointer, "minProperties", "maxProperties"));
  if (count.min > required_count) {
    return Refuse(Child(pointer, "minProperties"),
                  "is supported only up to the number of required properties (" + std::to_string(required_count) + ")");
  }
  if (count.max >= 0 && count.max < static_cast<int64_t>(members.size())) {
    return Refuse(Child(pointer, "maxProperties"),
                  "is supported only from the number of properties (" + std::to_string(members.size()) + ")");
  }

  // Each property as `"key" ws : ws value ws`, compiled in schema order.
  const int32_t ws = Whitespace();
  std::vector<Sequence> key_values;
  for (size_t i = 0; i < members.size(); ++i) {
    const auto& [key, property] = members[i];
    SEER_ASSIGN_OR_RETURN(int32_t value, Compile(property, Child(Child(pointer, "properties"), key), depth + 1));
    key_values.push_back(Concat(
        {Grammar::Text(JsonValue::String(key).Dump()), RefTo(ws), ByteOf(':'), RefTo(ws), RefTo(value), RefTo(ws)}));
  }
  // first[i]: properties i.. when none has been written yet; later[i]: the
  // same after one has, so each is preceded by a comma. Optional properties
  // may be skipped; built back to front, O(n) rules.
  const std::string name = RuleName(pointer);
  int32_t first = grammar_.RuleOf(name + ":end", {Sequence{}});
  int32_t later = first;
  for (size_t i = members.size(); i-- > 0;) {
    const Sequence write = Concat({key_values[i], RefTo(later)});
    const Sequence write_after_comma = Concat({ByteOf(','), RefTo(ws), write});
    const std::string suffix = ":" + std::to_string(i);
    if (required[i]) {
      first = grammar_.RuleOf(name + ":first" + suffix, {write});
      later = grammar_.RuleOf(name + ":later" + suffix, {write_after_comma});
    } else {
      first = grammar_.RuleOf(name + ":first" + suffix, {write, RefTo(first)});
      later = grammar_.RuleOf(name + ":later" + suffix, {write_after_comma, RefTo(later)});
    }
  }
  return grammar_.RuleOf(name, {Concat({ByteOf('{'), RefTo(ws), RefTo(first), ByteOf('}')})});
}

StatusOr<int32_t> SchemaCompiler::CompileMap(const JsonValue& schema, const JsonValue* values,
                                             const std::string& pointer, int depth) {
  if (const JsonValue* names = schema.Find("required");
      names != nullptr && !(names->is_array() && names->as_array().empty())) {
    return Refuse(Child(pointer, "required"), "names properties that are not in \"properties\"");
  }
  SEER_ASSIGN_OR_RETURN(CountBounds count, ReadCountBounds(schema, pointer, "minProperties", "maxProperties"));
  if (count.min > 1) {
    // The grammar cannot stop a key from repeating, and a repeated key
    // counts once.
    return Refuse(Child(pointer, "minProperties"), "above 1 is not supported for objects with free keys");
  }
  int32_t value = -1;
  if (values == nullptr) {
    value = AnyValue();
  } else {
    SEER_ASSIGN_OR_RETURN(value, Compile(*values, Child(pointer, "additionalProperties"), depth + 1));
  }
  const int32_t ws = Whitespace();
  const std::string name = RuleName(pointer);
  const int32_t entry = grammar_.RuleOf(
      name + ":entry",
      {Concat({RefTo(StringOfLength(0, -1)), RefTo(ws), ByteOf(':'), RefTo(ws), RefTo(value), RefTo(ws)})});
  const Sequence more_entry = Concat({ByteOf(','), RefTo(ws), RefTo(entry)});
  std::vector<Sequence> alternatives;
  if (count.min == 0) alternatives.push_back(Concat({ByteOf('{'), RefTo(ws), ByteOf('}')}));
  if (count.max != 0) {
    const int32_t more = count.max < 0
                             ? grammar_.Star(name + ":more", more_entry)
                             : grammar_.Repeat(name + ":more", more_entry, 0, static_cast<int>(count.max - 1));
    alternatives.push_back(Concat({ByteOf('{'), RefTo(ws), RefTo(entry), RefTo(more), ByteOf('}')}));
  }
  return grammar_.RuleOf(name, alternatives);
}

StatusOr<int32_t> SchemaCompiler::CompileArray(const JsonValue& schema, const std::string& pointer, int depth) {
  for (std::string_view keyword : {"contains", "minContains", "maxContains", "unevaluatedItems"}) {
    if (schema.Find(keyword) != nullptr) return NotSupported(pointer, keyword);
  }
  if (const JsonValue* unique = schema.Find("uniqueItems"); unique != nullptr && !unique->is_bool()) {
    return Refuse(Child(pointer, "uniqueItems"), "must be a boolean, got " + unique->Dump());
  } else if (unique != nullptr && unique->as_bool()) {
    return Refuse(Child(pointer, "uniqueItems"), "true is not supported");
  }
  // The leading items with schemas of their own, and the schema of the rest
  // (nullptr: any value; false: no more items).
  const JsonValue* prefix = schema.Find("prefixItems");
  const JsonValue* items = schema.Find("items");
  const JsonValue* additional = schema.Find("additionalItems");
  std::string prefix_keyword = "prefixItems";
  const JsonValue* rest = items;
  std::string rest_keyword = "items";
  if (prefix != nullptr) {
    if (items != nullptr && items->is_array()) {
      return Refuse(Child(pointer, "items"), "an array of schemas next to \"prefixItems\" is not supported");
    }
    if (additional != nullptr)
      return Refuse(Child(pointer, "additionalItems"), "is not supported next to \"prefixItems\"");
  } else if (items != nullptr && items->is_array()) {
    // The older spelling of prefixItems.
    prefix = items;
    prefix_keyword = "items";
    rest = additional;
    rest_keyword = "additionalItems";
  }
  // Without an array of leading schemas, additionalItems says nothing.
  if (prefix != nullptr && !prefix->is_array()) {
    return Refuse(Child(pointer, prefix_keyword), "must be an array of schemas, got " + prefix->Dump());
  }
  SEER_ASSIGN_OR_RETURN(CountBounds count, ReadCountBounds(schema, pointer, "minItems", "maxItems"));

  std::vector<int32_t> prefix_rules;
  if (prefix != nullptr) {
    for (size_t i = 0; i < prefix->as_array().size(); ++i) {
      SEER_ASSIGN_OR_RETURN(int32_t rule,
                            Compile(prefix->as_array()[i], Child(Child(pointer, prefix_keyword), i), depth + 1));
      prefix_rules.push_back(rule);
    }
  }
  const int64_t fixed = static_cast<int64_t>(prefix_rules.size());
  const bool rest_allowed = rest == nullptr || !rest->is_bool() || rest->as_bool();
  int32_t rest_rule = -1;
  if (rest == nullptr) {
    rest_rule = AnyValue();
  } else if (rest_allowed) {
    SEER_ASSIGN_OR_RETURN(rest_rule, Compile(*rest, Child(pointer, rest_keyword), depth + 1));
  }
  // The most items the array may hold (< 0: unbounded).
  int64_t most = count.max;
  if (!rest_allowed) most = most < 0 ? fixed : std::min(most, fixed);
  if (most >= 0 && most < count.min) {
    return Refuse(Child(pointer, "minItems"), "asks for more items than the schema allows: it matches nothing");
  }
  const auto item = [&](int64_t i) { return i < fixed ? prefix_rules[i] : rest_rule; };

  // after[i]: the items from position i on, each preceded by a comma; the
  // array ends there once i >= minItems. Positions past the prefixed ones
  // and minItems are all alike, so an unbounded array ends in one loop.
  const int32_t ws = Whitespace();
  const std::string name = RuleName(pointer);
  const auto comma_item = [&](int64_t i) { return Concat({ByteOf(','), RefTo(ws), RefTo(item(i)), RefTo(ws)}); };
  int64_t uniform_from = most;
  int32_t after = -1;
  if (most >= 0) {
    after = grammar_.RuleOf(name + ":end", {Sequence{}});
  } else {
    uniform_from = std::max<int64_t>({fixed, count.min, 1});
    after = grammar_.Star(name + ":more", comma_item(uniform_from));
  }
  for (int64_t i = uniform_from - 1; i >= 1; --i) {
    std::vector<Sequence> alternatives = {Concat({comma_item(i), RefTo(after)})};
    if (i >= count.min) alternatives.push_back(Sequence{});
    after = grammar_.RuleOf(name + ":" + std::to_string(i), alternatives);
  }
  std::vector<Sequence> alternatives;
  if (count.min == 0) alternatives.push_back(Concat({ByteOf('['), RefTo(ws), ByteOf(']')}));
  if (most != 0) {
    alternatives.push_back(Concat({ByteOf('['), RefTo(ws), RefTo(item(0)), RefTo(ws), RefTo(after), ByteOf(']')}));
  }
  return grammar_.RuleOf(name, alternatives);
}

int32_t SchemaCompiler::Whitespace() {
  if (whitespace_ < 0) {
    whitespace_ = grammar_.Repeat("ws", {Grammar::Bytes(BytesOf(" \t\n\r"))}, 0, kMaxJsonWhitespace);
  }
  return whitespace_;
}

int32_t SchemaCompiler::StringChar() {
  if (string_char_ >= 0) return string_char_;
  const int32_t plain =
      grammar_.AddCodepoints("char:plain", ComplementCodepoints({{0, 0x1F}, {'"', '"'}, {'\\', '\\'}}));
  const ByteSet hex = BytesOf("0123456789abcdefABCDEF");
  const auto h = Grammar::Bytes(hex);
  // \uXXXX must not be half of a surrogate pair on its own: strict parsers
  // (and base/json) refuse lone surrogates.
  const Sequence not_surrogate_a = {Grammar::Bytes(BytesOf("0123456789abcABCefEF")), h, h, h};
  const Sequence not_surrogate_b = {Grammar::Bytes(BytesOf("dD")), Grammar::Bytes(BytesOf("01234567")), h, h};
  const Sequence high = {Grammar::Bytes(BytesOf("dD")), Grammar::Bytes(BytesOf("89abAB")), h, h};
  const Sequence low = {Grammar::Bytes(BytesOf("dD")), Grammar::Bytes(BytesOf("cdefCDEF")), h, h};
  const Sequence backslash_u = Grammar::Text("\\u");
  string_char_ = grammar_.RuleOf("char", {
                                             RefTo(plain),
                                             Concat({ByteOf('\\'), {Grammar::Bytes(BytesOf("\"\\/bfnrt"))}}),
                                             Concat({backslash_u, not_surrogate_a}),
                                             Concat({backslash_u, not_surrogate_b}),
                                             Concat({backslash_u, high, backslash_u, low}),
                                         });
  return string_char_;
}

int32_t SchemaCompiler::StringOfLength(int64_t min, int64_t max) {
  if (auto it = strings_.find({min, max}); it != strings_.end()) return it->second;
  const std::string name = "string{" + std::to_string(min) + "," + (max < 0 ? "" : std::to_string(max)) + "}";
  const int32_t chars =
      grammar_.Repeat(name + ":chars", RefTo(StringChar()), static_cast<int>(min), static_cast<int>(max));
  const int32_t rule = grammar_.RuleOf(name, {Concat({ByteOf('"'), RefTo(chars), ByteOf('"')})});
  strings_[{min, max}] = rule;
  return rule;
}

int32_t SchemaCompiler::Number(NumberKind kind) {
  if (auto it = numbers_.find(kind); it != numbers_.end()) return it->second;
  // Digits are counted so that every number stays within a double's range
  // (below 1e299 and, unless 0, above 1e-299): many parsers (base/json, Go's
  // encoding/json) refuse numbers beyond it, though RFC 8259's grammar has
  // no bound.
  const Sequence digit = {Grammar::Bytes(ByteSet::Range('0', '9'))};
  if (positive_ < 0) {
    positive_ = grammar_.RuleOf("positive",
                                {Concat({{Grammar::Bytes(ByteSet::Range('1', '9'))},
                                         RefTo(grammar_.Repeat("positive:digits", digit, 0, kMaxNumberDigits - 1))})});
    natural_ = grammar_.RuleOf("natural", {ByteOf('0'), RefTo(positive_)});
  }
  const Sequence minus = ByteOf('-');
  int32_t rule = -1;
  switch (kind) {
    case NumberKind::kInteger:
      rule = grammar_.RuleOf("integer", {RefTo(natural_), Concat({minus, RefTo(natural_)})});
      break;
    case NumberKind::kNonNegativeInteger: rule = natural_; break;
    case NumberKind::kPositiveInteger: rule = positive_; break;
    case NumberKind::kNumber:
    case NumberKind::kNonNegativeNumber: {
      const int32_t fraction = grammar_.RuleOf(
          "fraction",
          {Sequence{}, Concat({ByteOf('.'), RefTo(grammar_.Repeat("fraction:digits", digit, 1, kMaxNumberDigits))})});
      const Sequence e = {Grammar::Bytes(BytesOf("eE"))};
      const Sequence sign = {Grammar::Bytes(BytesOf("+-"))};
      const Sequence exponent_digits = RefTo(grammar_.Repeat("exponent:digits", digit, 1, kMaxExponentDigits));
      const int32_t exponent =
          grammar_.RuleOf("exponent", {Sequence{}, Concat({e, exponent_digits}), Concat({e, sign, exponent_digits})});
      const Sequence unsigned_number = {Grammar::Ref(natural_), Grammar::Ref(fraction), Grammar::Ref(exponent)};
      rule = kind == NumberKind::kNumber
                 ? grammar_.RuleOf("number", {unsigned_number, Concat({minus, unsigned_number})})
                 : grammar_.RuleOf("non_negative_number", {unsigned_number});
      break;
    }
  }
  numbers_[kind] = rule;
  return rule;
}

int32_t SchemaCompiler::AnyValue() {
  if (any_value_ >= 0) return any_value_;
  any_value_ = grammar_.AddRule("value");
  const int32_t ws = Whitespace();
  const int32_t member = grammar_.RuleOf(
      "member",
      {Concat({RefTo(StringOfLength(0, -1)), RefTo(ws), ByteOf(':'), RefTo(ws), RefTo(any_value_), RefTo(ws)})});
  const int32_t members = grammar_.Star("members", Concat({ByteOf(','), RefTo(ws), RefTo(member)}));
  any_object_ =
      grammar_.RuleOf("object", {Concat({ByteOf('{'), RefTo(ws), ByteOf('}')}),
                                 Concat({ByteOf('{'), RefTo(ws), RefTo(member), RefTo(members), ByteOf('}')})});
  const int32_t elements = grammar_.Star("elements", Concat({ByteOf(','), RefTo(ws), RefTo(any_value_), RefTo(ws)}));
  const int32_t array = grammar_.RuleOf(
      "array", {Concat({ByteOf('['), RefTo(ws), ByteOf(']')}),
                Concat({ByteOf('['), RefTo(ws), RefTo(any_value_), RefTo(ws), RefTo(elements), ByteOf(']')})});
  for (const Sequence& alternative :
       {RefTo(any_object_), RefTo(array), RefTo(StringOfLength(0, -1)), RefTo(Number(NumberKind::kNumber)),
        Grammar::Text("true"), Grammar::Text("false"), Grammar::Text("null")}) {
    grammar_.AddAlternative(any_value_, alternative);
  }
  return any_value_;
}

StatusOr<int32_t> SchemaCompiler::StringMatching(const std::string& pattern, const std::string& pointer) {
  if (auto it = patterns_.find(pattern); it != patterns_.end()) return it->second;
  // The expression is compiled on its own, then copied in without '"', '\'
  // and control characters: the content is written raw between the quotes,
  // so those would make invalid JSON, and writing them escaped would make
  // the encoded text differ from what the expression matched.
  Grammar expression;
  StatusOr<int32_t> start = AddRegex(&expression, pattern, RuleName(pointer));
  if (!start.ok()) return Refuse(pointer, start.status().message());
  const ByteSet raw = BytesOf("\"\\").Add(ByteSet::Range(0, 0x1F)).Inverted();
  if (!ProductiveRules(expression, raw)[*start]) {
    return Refuse(pointer, "every string it matches needs JSON escapes, which are not supported in patterns");
  }
  const int32_t rule = AppendProductiveRules(expression, raw, &grammar_) + *start;
  patterns_[pattern] = rule;
  return rule;
}

}  // namespace

StatusOr<Grammar> GrammarFromJsonSchema(const JsonValue& schema) { return SchemaCompiler(schema).CompileRoot(); }

Grammar JsonObjectGrammar() {
  const JsonValue no_schema;
  return SchemaCompiler(no_schema).JsonObjectOnly();
}

}  // namespace seer
