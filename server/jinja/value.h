// Values of the Jinja subset that chat templates use, with Python's semantics where a template can
// observe them (str(), repr(), json.dumps as Hugging Face's tojson calls it, truthiness, ==, <).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lizard::server::jinja {

class Value;
using Array = std::vector<Value>;
// Insertion-ordered, as Python's dict.
using Object = std::vector<std::pair<std::string, Value>>;

struct CallArgs;
// A global function or a macro; gets its arguments already evaluated.
using Function = std::function<absl::StatusOr<Value>(CallArgs& args)>;

// Containers nest at most this deep (checked where they are built), so every recursive walk of a
// value is bounded.
inline constexpr int kMaxValueDepth = 64;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kArray, kObject, kNamespace,
                    kFunction };

  Value() = default;  // undefined
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value String(std::string s);
  // A tuple is an array that prints as one: ('a', 1).
  static Value MakeArray(Array items, bool tuple = false);
  static Value MakeObject(Object items);
  static Value MakeNamespace(Object items);
  static Value MakeFunction(Function fn);
  // INVALID_ARGUMENT past kMaxValueDepth.
  static absl::StatusOr<Value> FromJson(const nlohmann::json& json);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_mapping() const { return kind_ == Kind::kObject || kind_ == Kind::kNamespace; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_double() const { return kind_ == Kind::kInt ? static_cast<double>(i_) : d_; }
  const std::string& str() const { return *static_cast<const std::string*>(payload_.get()); }
  const Array& array() const { return *static_cast<const Array*>(payload_.get()); }
  const Object& object() const { return *static_cast<const Object*>(payload_.get()); }
  Object& mutable_namespace() const { return *static_cast<Object*>(payload_.get()); }
  const Function& function() const { return *static_cast<const Function*>(payload_.get()); }
  int depth() const { return depth_; }

  // The value of a mapping's key; undefined when absent.
  Value Get(std::string_view key) const;

  bool Truthy() const;
  // Python's str(): what {{ }} prints. Undefined prints as "".
  std::string ToString() const;
  // Python's repr(), as str() shows items of lists and dicts.
  std::string Repr() const;
  // json.dumps(value, ensure_ascii, indent, sort_keys); indent < 0 is None (", " and ": "
  // separators on one line). INVALID_ARGUMENT for what JSON cannot hold.
  absl::StatusOr<std::string> ToJson(int indent, bool ensure_ascii, bool sort_keys) const;
  const char* TypeName() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  int depth_ = 0;
  union {
    int64_t i_ = 0;
    double d_;
  };
  // The string, Array, Object or Function; shared, and changed only for a namespace.
  std::shared_ptr<void> payload_;
};

// Arguments of a call, filter or test as written: positional, then name=value.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;
};

bool Equals(const Value& a, const Value& b);
// Python's a < b (-1), == (0), > (1) for numbers, strings and lists; INVALID_ARGUMENT otherwise.
absl::StatusOr<int> Compare(const Value& a, const Value& b);

// Python's float repr: shortest round trip, "1e+16" style past 16 digits, "1.0" for integers.
std::string FormatFloat(double d);

// Strings as Python sees them: sequences of code points. Bytes that are not valid UTF-8 count as
// one code point each.
std::vector<std::string_view> SplitCodePoints(std::string_view s);
bool IsPythonSpace(std::string_view code_point);
// str.strip() / lstrip() / rstrip(): with chars empty, Python's whitespace.
std::string_view Strip(std::string_view s, bool left, bool right, const Value& chars);

}  // namespace lizard::server::jinja
