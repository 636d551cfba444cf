#include "server/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lizard::server::jinja {
namespace {

int MaxDepth(const Array& items) {
  int depth = 0;
  for (const Value& v : items) depth = std::max(depth, v.depth());
  return depth;
}
int MaxDepth(const Object& items) {
  int depth = 0;
  for (const auto& [k, v] : items) depth = std::max(depth, v.depth());
  return depth;
}

// Length of the UTF-8 sequence starting at s[i], or 1 for a byte that does not start a valid one.
size_t CodePointLength(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 1;
  for (size_t k = 1; k < n; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  }
  return n;
}

uint32_t DecodeCodePoint(std::string_view cp) {
  const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(cp[i])); };
  switch (cp.size()) {
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    case 4: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
    default: return b(0);
  }
}

void AppendHex(std::string& out, const char* prefix, uint32_t value, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%0*x", digits, value);
  absl::StrAppend(&out, prefix, buf);
}

// Python's str.isprintable() for the code points a chat template meets; others count as printable.
bool IsPrintable(uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return false;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
      (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 || cp == 0xFEFF) {
    return false;
  }
  return true;
}

std::string StringRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (std::string_view cp : SplitCodePoints(s)) {
    const uint32_t c = cp.size() == 1 ? static_cast<unsigned char>(cp[0]) : DecodeCodePoint(cp);
    if (cp.size() == 1 && c >= 0x80) {
      AppendHex(out, "\\udc", c, 2);  // Python's surrogateescape of an undecodable byte
    } else if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!IsPrintable(c)) {
      if (c <= 0xFF) AppendHex(out, "\\x", c, 2);
      else AppendHex(out, "\\u", c, 4);
    } else {
      out += cp;
    }
  }
  out += quote;
  return out;
}

void JsonString(std::string_view s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (std::string_view cp : SplitCodePoints(s)) {
    const uint32_t c = cp.size() == 1 ? static_cast<unsigned char>(cp[0]) : DecodeCodePoint(cp);
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20) {
      AppendHex(out, "\\u", c, 4);
    } else if (ensure_ascii && c >= 0x80) {
      if (c >= 0x10000) {
        AppendHex(out, "\\u", 0xD800 + ((c - 0x10000) >> 10), 4);
        AppendHex(out, "\\u", 0xDC00 + ((c - 0x10000) & 0x3FF), 4);
      } else {
        AppendHex(out, "\\u", c, 4);
      }
    } else {
      out += cp;
    }
  }
  out += '"';
}

absl::Status JsonValue(const Value& v, int indent, bool ensure_ascii, bool sort_keys, int level,
                       std::string& out) {
  const auto newline = [&](int lvl) {
    if (indent >= 0) {
      out += '\n';
      out.append(static_cast<size_t>(indent) * lvl, ' ');
    }
  };
  const char* item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind()) {
    case Value::Kind::kNone: out += "null"; return absl::OkStatus();
    case Value::Kind::kBool: out += v.as_bool() ? "true" : "false"; return absl::OkStatus();
    case Value::Kind::kInt: out += std::to_string(v.as_int()); return absl::OkStatus();
    case Value::Kind::kFloat: {
      const double d = v.as_double();
      if (std::isnan(d)) out += "NaN";
      else if (std::isinf(d)) out += d > 0 ? "Infinity" : "-Infinity";
      else out += FormatFloat(d);
      return absl::OkStatus();
    }
    case Value::Kind::kString: JsonString(v.str(), ensure_ascii, out); return absl::OkStatus();
    case Value::Kind::kArray: {
      if (v.array().empty()) {
        out += "[]";
        return absl::OkStatus();
      }
      out += '[';
      bool first = true;
      for (const Value& item : v.array()) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        if (auto s = JsonValue(item, indent, ensure_ascii, sort_keys, level + 1, out); !s.ok()) {
          return s;
        }
      }
      newline(level);
      out += ']';
      return absl::OkStatus();
    }
    case Value::Kind::kObject: {
      if (v.object().empty()) {
        out += "{}";
        return absl::OkStatus();
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.object()) items.push_back(&item);
      if (sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out += '{';
      bool first = true;
      for (const auto* item : items) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        JsonString(item->first, ensure_ascii, out);
        out += ": ";
        if (auto s = JsonValue(item->second, indent, ensure_ascii, sort_keys, level + 1, out);
            !s.ok()) {
          return s;
        }
      }
      newline(level);
      out += '}';
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("Object of type ", v.TypeName(), " is not JSON serializable"));
  }
}

absl::StatusOr<Value> FromJsonAt(const nlohmann::json& json, int depth) {
  if (depth > kMaxValueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("template input nests deeper than ", kMaxValueDepth, " levels"));
  }
  switch (json.type()) {
    case nlohmann::json::value_t::null: return Value::None();
    case nlohmann::json::value_t::boolean: return Value::Bool(json.get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::Int(json.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const uint64_t u = json.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::Float(json.get<double>());
    case nlohmann::json::value_t::string: return Value::String(json.get<std::string>());
    case nlohmann::json::value_t::array: {
      Array items;
      for (const auto& item : json) {
        absl::StatusOr<Value> v = FromJsonAt(item, depth + 1);
        if (!v.ok()) return v.status();
        items.push_back(*std::move(v));
      }
      return Value::MakeArray(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Object items;
      for (const auto& [key, item] : json.items()) {
        absl::StatusOr<Value> v = FromJsonAt(item, depth + 1);
        if (!v.ok()) return v.status();
        items.emplace_back(key, *std::move(v));
      }
      return Value::MakeObject(std::move(items));
    }
    default:
      return absl::InvalidArgumentError("template input holds binary data");
  }
}

}  // namespace

Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double d) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.d_ = d;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.payload_ = std::make_shared<std::string>(std::move(s));
  return v;
}
Value Value::MakeArray(Array items, bool tuple) {
  Value v;
  v.kind_ = Kind::kArray;
  v.b_ = tuple;
  v.depth_ = MaxDepth(items) + 1;
  v.payload_ = std::make_shared<Array>(std::move(items));
  return v;
}
Value Value::MakeObject(Object items) {
  Value v;
  v.kind_ = Kind::kObject;
  v.depth_ = MaxDepth(items) + 1;
  v.payload_ = std::make_shared<Object>(std::move(items));
  return v;
}
Value Value::MakeNamespace(Object items) {
  Value v = MakeObject(std::move(items));
  v.kind_ = Kind::kNamespace;
  return v;
}
Value Value::MakeFunction(Function fn) {
  Value v;
  v.kind_ = Kind::kFunction;
  v.payload_ = std::make_shared<Function>(std::move(fn));
  return v;
}

absl::StatusOr<Value> Value::FromJson(const nlohmann::json& json) { return FromJsonAt(json, 0); }

Value Value::Get(std::string_view key) const {
  if (!is_mapping()) return Value();
  for (const auto& [k, v] : object()) {
    if (k == key) return v;
  }
  return Value();
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return b_;
    case Kind::kInt: return i_ != 0;
    case Kind::kFloat: return d_ != 0;
    case Kind::kString: return !str().empty();
    case Kind::kArray: return !array().empty();
    case Kind::kObject: return !object().empty();
    default: return true;
  }
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kUndefined: return "";
    case Kind::kString: return str();
    case Kind::kNamespace: return "<Namespace>";
    default: return Repr();
  }
}

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "None";
    case Kind::kBool: return b_ ? "True" : "False";
    case Kind::kInt: return std::to_string(i_);
    case Kind::kFloat: return FormatFloat(d_);
    case Kind::kString: return StringRepr(str());
    case Kind::kArray: {
      std::string out = b_ ? "(" : "[";
      for (size_t i = 0; i < array().size(); ++i) {
        if (i > 0) out += ", ";
        out += array()[i].Repr();
      }
      if (b_ && array().size() == 1) out += ",";
      return out + (b_ ? ")" : "]");
    }
    case Kind::kObject: {
      std::string out = "{";
      for (size_t i = 0; i < object().size(); ++i) {
        if (i > 0) out += ", ";
        absl::StrAppend(&out, StringRepr(object()[i].first), ": ", object()[i].second.Repr());
      }
      return out + "}";
    }
    case Kind::kNamespace: return "<Namespace>";
    case Kind::kFunction: return "<function>";
  }
  return "";
}

absl::StatusOr<std::string> Value::ToJson(int indent, bool ensure_ascii, bool sort_keys) const {
  std::string out;
  if (auto s = JsonValue(*this, indent, ensure_ascii, sort_keys, 0, out); !s.ok()) return s;
  return out;
}

const char* Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kArray: return "list";
    case Kind::kObject: return "dict";
    case Kind::kNamespace: return "Namespace";
    case Kind::kFunction: return "function";
  }
  return "?";
}

bool Equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  const auto numeric = [](const Value& v) { return v.is_number() || v.kind() == K::kBool; };
  if (numeric(a) && numeric(b)) {
    if (a.kind() == K::kFloat || b.kind() == K::kFloat) return a.as_double() == b.as_double();
    const auto as_int = [](const Value& v) { return v.kind() == K::kBool ? int64_t{v.as_bool()} : v.as_int(); };
    return as_int(a) == as_int(b);
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone: return true;
    case K::kString: return a.str() == b.str();
    case K::kArray:
      return a.array().size() == b.array().size() &&
             std::equal(a.array().begin(), a.array().end(), b.array().begin(), Equals);
    case K::kObject: {
      if (a.object().size() != b.object().size()) return false;
      for (const auto& [k, v] : a.object()) {
        const Value other = b.Get(k);
        if (other.is_undefined() || !Equals(v, other)) return false;
      }
      return true;
    }
    case K::kNamespace: return &a.mutable_namespace() == &b.mutable_namespace();
    default: return false;
  }
}

absl::StatusOr<int> Compare(const Value& a, const Value& b) {
  using K = Value::Kind;
  const auto numeric = [](const Value& v) { return v.is_number() || v.kind() == K::kBool; };
  if (numeric(a) && numeric(b)) {
    const auto as_double = [](const Value& v) {
      return v.kind() == K::kBool ? (v.as_bool() ? 1.0 : 0.0) : v.as_double();
    };
    if (a.kind() == K::kInt && b.kind() == K::kInt) {
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    }
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    const int c = a.str().compare(b.str());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_array() && b.is_array()) {
    const Array& x = a.array();
    const Array& y = b.array();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (Equals(x[i], y[i])) continue;
      return Compare(x[i], y[i]);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  return absl::InvalidArgumentError(absl::StrCat("'<' not supported between instances of '",
                                                 a.TypeName(), "' and '", b.TypeName(), "'"));
}

std::string FormatFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string_view sci(buf, result.ptr - buf);  // e.g. "-1.25e+03": shortest round-trip digits
  std::string sign;
  if (sci.front() == '-') {
    sign = "-";
    sci.remove_prefix(1);
  }
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c != '.') digits += c;
  }
  const int exp = std::atoi(std::string(sci.substr(e + 1)).c_str());
  if (exp < -4 || exp >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) absl::StrAppend(&out, ".", digits.substr(1));
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + ebuf;
  }
  if (exp < 0) return absl::StrCat(sign, "0.", std::string(-exp - 1, '0'), digits);
  const size_t int_digits = static_cast<size_t>(exp) + 1;
  if (digits.size() <= int_digits) {
    return absl::StrCat(sign, digits, std::string(int_digits - digits.size(), '0'), ".0");
  }
  return absl::StrCat(sign, digits.substr(0, int_digits), ".", digits.substr(int_digits));
}

std::vector<std::string_view> SplitCodePoints(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = CodePointLength(s, i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

bool IsPythonSpace(std::string_view cp) {
  if (cp.size() == 1) {
    const char c = cp[0];
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f');
  }
  const uint32_t c = DecodeCodePoint(cp);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string_view Strip(std::string_view s, bool left, bool right, const Value& chars) {
  const bool custom = chars.is_string();
  std::vector<std::string_view> set;
  if (custom) set = SplitCodePoints(chars.str());
  const auto strip = [&](std::string_view cp) {
    return custom ? std::find(set.begin(), set.end(), cp) != set.end() : IsPythonSpace(cp);
  };
  std::vector<std::string_view> cps = SplitCodePoints(s);
  size_t begin = 0, end = cps.size();
  if (left) {
    while (begin < end && strip(cps[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip(cps[end - 1])) --end;
  }
  if (begin == end) return s.substr(0, 0);
  const size_t from = static_cast<size_t>(cps[begin].data() - s.data());
  const size_t to = static_cast<size_t>(cps[end - 1].data() + cps[end - 1].size() - s.data());
  return s.substr(from, to - from);
}

}  // namespace lizard::server::jinja
