// A small JSON DOM for config files, safetensors headers and CLI output.
// Parsing is strict (RFC 8259), bounded in nesting depth, and reports errors
// as "line L, column C: what". Object member order is preserved.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace seer {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Member = std::pair<std::string, JsonValue>;

  // Nesting deeper than this is rejected (protects the stack against hostile input).
  static constexpr int kMaxDepth = 128;

  static StatusOr<JsonValue> Parse(std::string_view text);

  JsonValue() = default;  // null
  static JsonValue Bool(bool b);
  static JsonValue Number(double d);
  static JsonValue Int(int64_t i);
  static JsonValue String(std::string s);
  static JsonValue Array();
  static JsonValue Object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  // A number written without fraction or exponent that fits in int64.
  bool is_integer() const { return type_ == Type::kNumber && is_int_; }

  bool as_bool() const { return bool_; }
  double as_double() const { return num_; }
  int64_t as_int64() const { return int_; }
  const std::string& as_string() const { return str_; }
  const std::vector<JsonValue>& as_array() const { return arr_; }
  const std::vector<Member>& as_object() const { return obj_; }

  // Object lookup: nullptr when this is not an object or has no such key.
  // With duplicate keys the parser keeps the last one.
  const JsonValue* Find(std::string_view key) const;

  // Builders.
  JsonValue& Append(JsonValue v);  // arrays
  JsonValue& Set(std::string key, JsonValue v);  // objects (replaces)

  // Compact serialisation; numbers round-trip (integers exactly).
  std::string Dump() const;

  static std::string TypeName(Type t);

 private:
  friend class JsonParser;  // appends parsed members without Set()'s linear duplicate scan

  Type type_ = Type::kNull;
  bool bool_ = false;
  bool is_int_ = false;
  double num_ = 0.0;
  int64_t int_ = 0;
  std::string str_;
  std::vector<JsonValue> arr_;
  std::vector<Member> obj_;
};

// Reads and parses the JSON file at `path`: NOT_FOUND when it cannot be
// opened, INVALID_ARGUMENT "path: line L, column C: what" when malformed.
StatusOr<JsonValue> ReadJsonFile(const std::string& path);

// Reads typed fields of one JSON object, naming the file and the field (with
// its dotted path, e.g. 'rope_scaling.factor') in every error. A field that is
// absent or null takes the fallback; without one it is required.
class JsonFieldReader {
 public:
  JsonFieldReader(const JsonValue& object, std::string path, std::string prefix = "")
      : object_(object), path_(std::move(path)), prefix_(std::move(prefix)) {}

  // 'prefix.key', as messages name it.
  std::string Name(std::string_view key) const;
  // "path: field 'key' <what>".
  Status Error(std::string_view key, const std::string& what) const;

  // nullptr when absent or JSON null.
  const JsonValue* Find(std::string_view key) const;
  StatusOr<const JsonValue*> Require(std::string_view key) const;

  // An integer in [min, max].
  StatusOr<int64_t> Int(std::string_view key, int64_t min, int64_t max, std::optional<int64_t> fallback) const;
  // A finite number.
  StatusOr<double> Number(std::string_view key, std::optional<double> fallback) const;
  // A finite number > 0.
  StatusOr<double> Positive(std::string_view key, std::optional<double> fallback) const;
  StatusOr<bool> Bool(std::string_view key, std::optional<bool> fallback) const;
  StatusOr<std::string> String(std::string_view key, std::optional<std::string> fallback) const;

 private:
  Status Missing(std::string_view key) const;

  const JsonValue& object_;
  std::string path_;
  std::string prefix_;
};

}  // namespace seer
