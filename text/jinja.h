// A Jinja2 subset for chat templates, rendered with the semantics of the
// environment transformers uses (sandboxed, trim_blocks, lstrip_blocks,
// loop controls, keep_trailing_newline off) and Python's value semantics
// (str(), repr(), ==, truthiness, integer division, slicing by code point).
//
// Supported:
//   statements  if/elif/else, for (tuple targets, `if` filter, else, loop.*),
//               set (name, ns.attr, a, b = ...), set blocks, macro, break,
//               continue, raw, generation (transformers' extension);
//   expressions literals, lists, tuples, dicts, attribute and item access,
//               slicing, calls with keyword arguments, filters, tests,
//               + - * / // % ** ~, comparisons, in / not in, and/or/not,
//               `a if b else c`;
//   filters     abs attr capitalize count d default dictsort e escape first
//               float format indent int items join last length list lower map
//               max min reject rejectattr replace reverse round safe select
//               selectattr sort string sum title tojson trim unique upper
//               wordcount;
//   tests       boolean callable defined divisibleby eq equalto escaped even
//               false filter float ge greaterthan gt in integer iterable le
//               lessthan lower lt mapping ne none number odd sameas sequence
//               string test true undefined upper;
//   methods     of str (strip lstrip rstrip split rsplit startswith endswith
//               replace upper lower title capitalize find rfind count join
//               isdigit isalpha isspace isupper islower splitlines
//               removeprefix removesuffix), dict (items keys values get) and
//               list (count index);
//   globals     range, namespace, dict, plus what the caller defines.
// Anything else (include, import, extends, block, call, filter blocks,
// unknown filters and tests) is an error when the template is parsed, naming
// the construct and its line.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/json.h"
#include "base/status.h"

namespace seer::jinja {

class Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<Value, Value>>;  // insertion order, as Python dicts

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};
using Function = std::function<StatusOr<Value>(CallArgs&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kNamespace, kCallable };

  Value() = default;  // undefined
  static Value Undefined(std::string name) {
    Value v;
    v.str_ = std::make_shared<std::string>(std::move(name));
    return v;
  }
  static Value None() { return Make(Kind::kNone); }
  static Value Bool(bool b) {
    Value v = Make(Kind::kBool);
    v.int_ = b;
    return v;
  }
  static Value Int(int64_t i) {
    Value v = Make(Kind::kInt);
    v.int_ = i;
    return v;
  }
  static Value Float(double d) {
    Value v = Make(Kind::kFloat);
    v.float_ = d;
    return v;
  }
  static Value String(std::string s) {
    Value v = Make(Kind::kString);
    v.str_ = std::make_shared<std::string>(std::move(s));
    return v;
  }
  static Value MakeList(List l, bool tuple = false) {
    Value v = Make(tuple ? Kind::kTuple : Kind::kList);
    v.list_ = std::make_shared<List>(std::move(l));
    return v;
  }
  // range(): a list that prints as Python's range object does.
  static Value Range(List l, std::string repr) {
    Value v = MakeList(std::move(l));
    v.str_ = std::make_shared<std::string>(std::move(repr));
    return v;
  }
  static Value MakeDict(Dict d) {
    Value v = Make(Kind::kDict);
    v.dict_ = std::make_shared<Dict>(std::move(d));
    return v;
  }
  // A mutable attribute bag shared by reference (namespace()).
  static Value Namespace(Dict d) {
    Value v = Make(Kind::kNamespace);
    v.dict_ = std::make_shared<Dict>(std::move(d));
    return v;
  }
  static Value Callable(std::string name, Function f) {
    Value v = Make(Kind::kCallable);
    v.str_ = std::make_shared<std::string>(std::move(name));
    v.fn_ = std::make_shared<Function>(std::move(f));
    return v;
  }
  static Value FromJson(const JsonValue& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool; }
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return *str_; }
  const List& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& mutable_dict() const { return *dict_; }
  const Function& as_function() const { return *fn_; }
  const std::string& name() const;  // undefined's variable name or a callable's name
  const void* identity() const;  // for `is sameas`

  bool Truthy() const;
  // Python's str() and repr().
  std::string Str() const;
  std::string Repr() const;
  std::string TypeName() const;  // Python's type name, for error messages

 private:
  static Value Make(Kind k) {
    Value v;
    v.kind_ = k;
    return v;
  }
  Kind kind_ = Kind::kUndefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<std::string> str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

// Python ==.
bool Equal(const Value& a, const Value& b);
// json.dumps(value, ensure_ascii, indent, separators, sort_keys) as Python does.
StatusOr<std::string> ToJson(const Value& v, bool ensure_ascii, int indent, std::string item_sep, std::string key_sep,
                             bool sort_keys);

struct Node;

class Template {
 public:
  static StatusOr<Template> Parse(std::string_view source);
  // `globals` are the template's variables (messages, bos_token, ...).
  StatusOr<std::string> Render(const std::map<std::string, Value>& globals) const;

 private:
  std::shared_ptr<const std::vector<std::unique_ptr<Node>>> body_;
};

}  // namespace seer::jinja
