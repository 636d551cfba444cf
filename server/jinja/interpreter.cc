#include "server/jinja/interpreter.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lizard::server::jinja {
namespace {

using K = Value::Kind;

absl::Status TypeError(const std::string& message) { return absl::InvalidArgumentError(message); }

// The value of a name=value argument, else of the positional argument at `index`, else undefined.
Value Arg(const CallArgs& args, size_t index, std::string_view name) {
  for (const auto& [n, v] : args.named) {
    if (n == name) return v;
  }
  return index < args.positional.size() ? args.positional[index] : Value();
}

absl::StatusOr<int64_t> ToIndex(const Value& v, const char* what) {
  if (v.kind() == K::kInt) return v.as_int();
  if (v.kind() == K::kBool) return int64_t{v.as_bool()};
  return TypeError(absl::StrCat(what, " must be an integer, not ", v.TypeName()));
}

std::string AsciiTitleWord(std::string_view word) {
  std::string out(word);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = i == 0 ? absl::ascii_toupper(out[i]) : absl::ascii_tolower(out[i]);
  }
  return out;
}

// Python's str.title(): a letter after a non-letter is upper case, others lower case.
std::string PythonTitle(std::string_view s) {
  std::string out(s);
  bool prev_letter = false;
  for (char& c : out) {
    const bool letter = absl::ascii_isalpha(static_cast<unsigned char>(c));
    c = letter && !prev_letter ? absl::ascii_toupper(c) : absl::ascii_tolower(c);
    prev_letter = letter;
  }
  return out;
}

// Jinja's title filter: each word after spaces, '-', '(', '{', '[' or '<' capitalized.
std::string JinjaTitle(std::string_view s) {
  std::string out;
  size_t i = 0;
  const auto separator = [](char c) {
    return absl::ascii_isspace(static_cast<unsigned char>(c)) || c == '-' || c == '(' ||
           c == '{' || c == '[' || c == '<';
  };
  while (i < s.size()) {
    size_t j = i;
    if (separator(s[i])) {
      while (j < s.size() && separator(s[j])) ++j;
      out += s.substr(i, j - i);
    } else {
      while (j < s.size() && !separator(s[j])) ++j;
      out += AsciiTitleWord(s.substr(i, j - i));
    }
    i = j;
  }
  return out;
}

std::string PythonReplace(std::string_view s, std::string_view from, std::string_view to,
                          int64_t count) {
  std::string out;
  if (from.empty()) {
    std::vector<std::string_view> cps = SplitCodePoints(s);
    int64_t n = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      if (i < cps.size()) out += cps[i];
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t found = s.find(from, pos);
    if (found == std::string_view::npos) break;
    out += s.substr(pos, found - pos);
    out += to;
    pos = found + from.size();
    ++n;
  }
  out += s.substr(pos);
  return out;
}

// Python's slice indices for a sequence of `size` items.
std::vector<size_t> SliceIndices(int64_t size, const Value& start_v, const Value& stop_v,
                                 int64_t step) {
  const auto clamp = [&](const Value& v, int64_t dflt) -> int64_t {
    if (v.is_none() || v.is_undefined()) return dflt;
    int64_t i = v.kind() == K::kBool ? v.as_bool() : v.as_int();
    if (i < 0) i += size;
    if (step > 0) return std::clamp<int64_t>(i, 0, size);
    return std::clamp<int64_t>(i, -1, size - 1);
  };
  std::vector<size_t> out;
  if (step > 0) {
    for (int64_t i = clamp(start_v, 0), end = clamp(stop_v, size); i < end; i += step) {
      out.push_back(static_cast<size_t>(i));
    }
  } else {
    for (int64_t i = clamp(start_v, size - 1), end = clamp(stop_v, -1); i > end; i += step) {
      out.push_back(static_cast<size_t>(i));
    }
  }
  return out;
}

struct Scope {
  Scope* parent = nullptr;
  absl::flat_hash_map<std::string, Value> vars;

  Value Lookup(const std::string& name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent) {
      if (auto it = s->vars.find(name); it != s->vars.end()) return it->second;
    }
    return Value();
  }
};

class Interpreter {
 public:
  absl::StatusOr<std::string> Run(const Body& body, const Object& variables) {
    for (const auto& [name, value] : variables) root_.vars[name] = value;
    AddGlobals();
    std::string out;
    absl::Status s = ExecBody(body, root_, out);
    // A namespace may hold itself (ns.me = ns); emptying them all frees such cycles.
    for (const Value& ns : namespaces_) ns.mutable_namespace().clear();
    if (!s.ok()) return s;
    return out;
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  absl::Status Tick(size_t bytes = 0) {
    steps_ += 1 + static_cast<int64_t>(bytes / 64);
    if (steps_ > kMaxSteps) {
      return absl::ResourceExhaustedError("chat template rendering exceeded its step limit");
    }
    if (bytes > kMaxOutputBytes) {
      return absl::ResourceExhaustedError("chat template built a string over its size limit");
    }
    return absl::OkStatus();
  }

  absl::Status At(const Expr& e, absl::Status s) const {
    if (s.ok() || raised_ || s.code() != absl::StatusCode::kInvalidArgument ||
        absl::StartsWith(s.message(), "line ")) {
      return s;
    }
    return absl::InvalidArgumentError(
        absl::StrCat("line ", e.line, ", column ", e.column, ": ", s.message()));
  }

  void AddGlobals() {
    root_.vars["raise_exception"] = Value::MakeFunction([this](CallArgs& args) -> absl::StatusOr<Value> {
      raised_ = true;
      return absl::InvalidArgumentError(Arg(args, 0, "message").ToString());
    });
    root_.vars["namespace"] = Value::MakeFunction([this](CallArgs& args) -> absl::StatusOr<Value> {
      Object attrs;
      if (!args.positional.empty()) {
        if (args.positional.size() > 1 || args.positional[0].kind() != K::kObject) {
          return TypeError("namespace() takes a dict or name=value arguments");
        }
        attrs = args.positional[0].object();
      }
      for (auto& [name, value] : args.named) attrs.emplace_back(name, value);
      namespaces_.push_back(Value::MakeNamespace(std::move(attrs)));
      return namespaces_.back();
    });
    root_.vars["range"] = Value::MakeFunction([this](CallArgs& args) -> absl::StatusOr<Value> {
      if (args.positional.empty() || args.positional.size() > 3 || !args.named.empty()) {
        return TypeError("range() takes 1 to 3 integer arguments");
      }
      int64_t v[3] = {0, 0, 1};
      for (size_t i = 0; i < args.positional.size(); ++i) {
        absl::StatusOr<int64_t> n = ToIndex(args.positional[i], "range() argument");
        if (!n.ok()) return n.status();
        v[args.positional.size() == 1 ? 1 : i] = *n;
      }
      if (v[2] == 0) return TypeError("range() arg 3 must not be zero");
      const double count = std::ceil((static_cast<double>(v[1]) - static_cast<double>(v[0])) /
                                     static_cast<double>(v[2]));
      if (count > static_cast<double>(kMaxRange)) {
        return absl::ResourceExhaustedError("range() is too big");
      }
      Array items;
      for (int64_t i = v[0], n = 0; n < count; i += v[2], ++n) items.push_back(Value::Int(i));
      if (auto s = Tick(items.size() * 8); !s.ok()) return s;
      return Value::MakeArray(std::move(items));
    });
    root_.vars["strftime_now"] = Value::MakeFunction([](CallArgs& args) -> absl::StatusOr<Value> {
      const Value format = Arg(args, 0, "format");
      if (!format.is_string() || format.str().size() > 256) {
        return TypeError("strftime_now() takes a format string");
      }
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[1024];
      const size_t n = std::strftime(buf, sizeof(buf), format.str().c_str(), &tm);
      return Value::String(std::string(buf, n));
    });
  }

  absl::Status Append(std::string& out, std::string_view text) {
    if (out.size() + text.size() > kMaxOutputBytes) {
      return absl::ResourceExhaustedError("chat template output exceeds its size limit");
    }
    out += text;
    return absl::OkStatus();
  }

  absl::Status ExecBody(const Body& body, Scope& scope, std::string& out) {
    for (const Node& node : body) {
      if (absl::Status s = Exec(node, scope, out); !s.ok()) return s;
      if (flow_ != Flow::kNormal) break;
    }
    return absl::OkStatus();
  }

  absl::Status Exec(const Node& node, Scope& scope, std::string& out) {
    if (absl::Status s = Tick(); !s.ok()) return s;
    if (depth_ >= kMaxEvalDepth) {
      return absl::ResourceExhaustedError("chat template nests or recurses too deeply");
    }
    ++depth_;
    absl::Status s = ExecNode(node, scope, out);
    --depth_;
    return s;
  }

  absl::Status ExecNode(const Node& node, Scope& scope, std::string& out) {
    switch (node.kind) {
      case Node::Kind::kText: return Append(out, node.text);
      case Node::Kind::kOutput: {
        absl::StatusOr<Value> v = Eval(*node.expr, scope);
        if (!v.ok()) return v.status();
        return Append(out, v->ToString());
      }
      case Node::Kind::kIf:
        for (const auto& [cond, branch] : node.branches) {
          absl::StatusOr<Value> v = Eval(*cond, scope);
          if (!v.ok()) return v.status();
          if (v->Truthy()) return ExecBody(branch, scope, out);
        }
        return ExecBody(node.else_body, scope, out);
      case Node::Kind::kFor: return ExecFor(node, scope, out);
      case Node::Kind::kSet: {
        Value value;
        if (node.expr) {
          absl::StatusOr<Value> v = Eval(*node.expr, scope);
          if (!v.ok()) return v.status();
          value = *std::move(v);
        } else {
          std::string text;
          if (absl::Status s = ExecBody(node.body, scope, text); !s.ok()) return s;
          value = Value::String(std::move(text));
        }
        if (node.attr.empty()) {
          scope.vars[node.targets[0]] = std::move(value);
          return absl::OkStatus();
        }
        const Value ns = scope.Lookup(node.targets[0]);
        if (ns.kind() != K::kNamespace) {
          return absl::InvalidArgumentError(
              absl::StrCat("line ", node.line, ", column ", node.column,
                           ": cannot assign attribute on non-namespace object"));
        }
        Object& attrs = ns.mutable_namespace();
        for (auto& [name, v] : attrs) {
          if (name == node.attr) {
            v = std::move(value);
            return absl::OkStatus();
          }
        }
        attrs.emplace_back(node.attr, std::move(value));
        return absl::OkStatus();
      }
      case Node::Kind::kMacro: {
        const Node* macro = &node;
        scope.vars[node.targets[0]] = Value::MakeFunction(
            [this, macro](CallArgs& args) { return CallMacro(*macro, args); });
        return absl::OkStatus();
      }
      case Node::Kind::kBreak: flow_ = Flow::kBreak; return absl::OkStatus();
      case Node::Kind::kContinue: flow_ = Flow::kContinue; return absl::OkStatus();
      case Node::Kind::kBlock: return ExecBody(node.body, scope, out);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Value> CallMacro(const Node& macro, CallArgs& args) {
    if (args.positional.size() > macro.params.size()) {
      return TypeError(absl::StrCat("macro '", macro.targets[0], "' takes at most ",
                                    macro.params.size(), " arguments"));
    }
    // Macros see the template's top-level variables, not their caller's.
    Scope scope{&root_, {}};
    for (size_t i = 0; i < macro.params.size(); ++i) {
      const auto& [name, def] = macro.params[i];
      Value v = Arg(args, args.positional.size() > i ? i : SIZE_MAX, name);
      if (v.is_undefined() && def) {
        absl::StatusOr<Value> d = Eval(*def, scope);
        if (!d.ok()) return d.status();
        v = *std::move(d);
      }
      scope.vars[name] = std::move(v);
    }
    for (const auto& named : args.named) {
      const std::string& name = named.first;
      if (std::none_of(macro.params.begin(), macro.params.end(),
                       [&](const auto& p) { return p.first == name; })) {
        return TypeError(absl::StrCat("macro '", macro.targets[0], "' has no argument '", name, "'"));
      }
    }
    std::string out;
    absl::Status s = ExecBody(macro.body, scope, out);
    flow_ = Flow::kNormal;
    if (!s.ok()) return s;
    return Value::String(std::move(out));
  }

  // What a for loop walks: an array value (shared, not copied, when v is one).
  absl::StatusOr<Value> Iterable(const Value& v) {
    switch (v.kind()) {
      case K::kUndefined: return Value::MakeArray({});
      case K::kArray: return v;
      case K::kString: {
        Array items;
        for (std::string_view cp : SplitCodePoints(v.str())) items.push_back(Value::String(std::string(cp)));
        if (auto s = Tick(items.size() * 32); !s.ok()) return s;
        return Value::MakeArray(std::move(items));
      }
      case K::kObject: {
        Array items;
        for (const auto& [k, x] : v.object()) items.push_back(Value::String(k));
        return Value::MakeArray(std::move(items));
      }
      default: return TypeError(absl::StrCat("'", v.TypeName(), "' object is not iterable"));
    }
  }

  absl::StatusOr<Array> Iterate(const Value& v) {
    absl::StatusOr<Value> items = Iterable(v);
    if (!items.ok()) return items.status();
    return items->array();
  }

  absl::Status Bind(const Node& node, const Value& item, Scope& scope) {
    if (node.targets.size() == 1) {
      scope.vars[node.targets[0]] = item;
      return absl::OkStatus();
    }
    absl::StatusOr<Array> parts = Iterate(item);
    if (!parts.ok()) return parts.status();
    if (parts->size() != node.targets.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", node.line, ", column ", node.column, ": cannot unpack ",
                       parts->size(), " values into ", node.targets.size(), " names"));
    }
    for (size_t i = 0; i < parts->size(); ++i) scope.vars[node.targets[i]] = (*parts)[i];
    return absl::OkStatus();
  }

  absl::Status ExecFor(const Node& node, Scope& scope, std::string& out) {
    absl::StatusOr<Value> iterable = Eval(*node.expr, scope);
    if (!iterable.ok()) return iterable.status();
    absl::StatusOr<Value> all = Iterable(*iterable);
    if (!all.ok()) return At(*node.expr, all.status());
    Value filtered = *all;
    if (node.condition) {
      Array kept;
      for (const Value& item : all->array()) {
        Scope probe{&scope, {}};
        if (absl::Status s = Bind(node, item, probe); !s.ok()) return s;
        absl::StatusOr<Value> keep = Eval(*node.condition, probe);
        if (!keep.ok()) return keep.status();
        if (keep->Truthy()) kept.push_back(item);
      }
      filtered = Value::MakeArray(std::move(kept));
    }
    const Array& items = filtered.array();
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      if (absl::Status s = Tick(); !s.ok()) return s;
      Scope iteration{&scope, {}};
      if (absl::Status s = Bind(node, items[i], iteration); !s.ok()) return s;
      Object loop = {{"index", Value::Int(i + 1)},        {"index0", Value::Int(i)},
                     {"revindex", Value::Int(n - i)},     {"revindex0", Value::Int(n - i - 1)},
                     {"first", Value::Bool(i == 0)},      {"last", Value::Bool(i == n - 1)},
                     {"length", Value::Int(n)},           {"depth", Value::Int(1)},
                     {"depth0", Value::Int(0)}};
      if (i > 0) loop.emplace_back("previtem", items[i - 1]);
      if (i + 1 < n) loop.emplace_back("nextitem", items[i + 1]);
      iteration.vars["loop"] = Value::MakeObject(std::move(loop));
      if (absl::Status s = ExecBody(node.body, iteration, out); !s.ok()) return s;
      const Flow flow = flow_;
      flow_ = Flow::kNormal;
      if (flow == Flow::kBreak) break;
    }
    if (n == 0) return ExecBody(node.else_body, scope, out);
    return absl::OkStatus();
  }

  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, size_t first, Scope& scope) {
    CallArgs args;
    for (size_t i = first; i < e.items.size(); ++i) {
      absl::StatusOr<Value> v = Eval(*e.items[i], scope);
      if (!v.ok()) return v.status();
      args.positional.push_back(*std::move(v));
    }
    for (const auto& [name, expr] : e.named) {
      absl::StatusOr<Value> v = Eval(*expr, scope);
      if (!v.ok()) return v.status();
      args.named.emplace_back(name, *std::move(v));
    }
    return args;
  }

  absl::StatusOr<Value> Container(Array items, bool tuple = false) {
    Value v = Value::MakeArray(std::move(items), tuple);
    if (v.depth() > kMaxValueDepth) return TypeError("list nests too deeply");
    if (auto s = Tick(v.array().size() * 16); !s.ok()) return s;
    return v;
  }

  absl::StatusOr<Value> Eval(const Expr& e, Scope& scope) {
    if (absl::Status s = Tick(); !s.ok()) return s;
    if (depth_ >= kMaxEvalDepth) {
      return absl::ResourceExhaustedError("chat template nests or recurses too deeply");
    }
    ++depth_;
    absl::StatusOr<Value> v = EvalInner(e, scope);
    --depth_;
    if (!v.ok()) return At(e, v.status());
    return v;
  }

  static absl::Status UndefinedError(const Expr& e) {
    if (e.kind == Expr::Kind::kName) return TypeError(absl::StrCat("'", e.name, "' is undefined"));
    return TypeError("undefined value has no attributes or items");
  }

  absl::StatusOr<Value> EvalInner(const Expr& e, Scope& scope) {
    switch (e.kind) {
      case Expr::Kind::kLiteral: return e.value;
      case Expr::Kind::kName: return scope.Lookup(e.name);
      case Expr::Kind::kList:
      case Expr::Kind::kTuple: {
        Array items;
        for (const ExprPtr& item : e.items) {
          absl::StatusOr<Value> v = Eval(*item, scope);
          if (!v.ok()) return v;
          items.push_back(*std::move(v));
        }
        return Container(std::move(items), e.kind == Expr::Kind::kTuple);
      }
      case Expr::Kind::kDict: {
        Object items;
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          absl::StatusOr<Value> key = Eval(*e.items[i], scope);
          if (!key.ok()) return key;
          if (!key->is_string()) return TypeError("dict keys must be strings here");
          absl::StatusOr<Value> v = Eval(*e.items[i + 1], scope);
          if (!v.ok()) return v;
          auto it = std::find_if(items.begin(), items.end(),
                                 [&](const auto& kv) { return kv.first == key->str(); });
          if (it != items.end()) it->second = *std::move(v);
          else items.emplace_back(key->str(), *std::move(v));
        }
        Value v = Value::MakeObject(std::move(items));
        if (v.depth() > kMaxValueDepth) return TypeError("dict nests too deeply");
        return v;
      }
      case Expr::Kind::kAttr: {
        absl::StatusOr<Value> target = Eval(*e.items[0], scope);
        if (!target.ok()) return target;
        if (target->is_undefined()) return UndefinedError(*e.items[0]);
        return target->Get(e.name);
      }
      case Expr::Kind::kItem: {
        absl::StatusOr<Value> target = Eval(*e.items[0], scope);
        if (!target.ok()) return target;
        if (target->is_undefined()) return UndefinedError(*e.items[0]);
        absl::StatusOr<Value> key = Eval(*e.items[1], scope);
        if (!key.ok()) return key;
        return GetItem(*target, *key);
      }
      case Expr::Kind::kSlice: return EvalSlice(e, scope);
      case Expr::Kind::kCall: return EvalCall(e, scope);
      case Expr::Kind::kFilter: {
        absl::StatusOr<Value> target = Eval(*e.items[0], scope);
        if (!target.ok()) return target;
        absl::StatusOr<CallArgs> args = EvalArgs(e, 1, scope);
        if (!args.ok()) return args.status();
        return ApplyFilter(e.name, *target, *args);
      }
      case Expr::Kind::kTest: {
        absl::StatusOr<Value> target = Eval(*e.items[0], scope);
        if (!target.ok()) return target;
        absl::StatusOr<CallArgs> args = EvalArgs(e, 1, scope);
        if (!args.ok()) return args.status();
        absl::StatusOr<bool> r = ApplyTest(e.name, *target, *args);
        if (!r.ok()) return r.status();
        return Value::Bool(*r != e.negated);
      }
      case Expr::Kind::kNot: {
        absl::StatusOr<Value> v = Eval(*e.items[0], scope);
        if (!v.ok()) return v;
        return Value::Bool(!v->Truthy());
      }
      case Expr::Kind::kNeg:
      case Expr::Kind::kPos: {
        absl::StatusOr<Value> v = Eval(*e.items[0], scope);
        if (!v.ok()) return v;
        const bool neg = e.kind == Expr::Kind::kNeg;
        if (v->kind() == K::kInt || v->kind() == K::kBool) {
          const int64_t i = v->kind() == K::kBool ? v->as_bool() : v->as_int();
          if (neg && i == std::numeric_limits<int64_t>::min()) return TypeError("integer overflow");
          return Value::Int(neg ? -i : i);
        }
        if (v->kind() == K::kFloat) return Value::Float(neg ? -v->as_double() : v->as_double());
        return TypeError(absl::StrCat("bad operand type for unary ", neg ? "-" : "+", ": '",
                                      v->TypeName(), "'"));
      }
      case Expr::Kind::kBinary: {
        absl::StatusOr<Value> a = Eval(*e.items[0], scope);
        if (!a.ok()) return a;
        absl::StatusOr<Value> b = Eval(*e.items[1], scope);
        if (!b.ok()) return b;
        return Binary(e.name, *a, *b);
      }
      case Expr::Kind::kCompare: {
        absl::StatusOr<Value> left = Eval(*e.items[0], scope);
        if (!left.ok()) return left;
        for (size_t i = 0; i < e.ops.size(); ++i) {
          absl::StatusOr<Value> right = Eval(*e.items[i + 1], scope);
          if (!right.ok()) return right;
          absl::StatusOr<bool> r = CompareOp(e.ops[i], *left, *right);
          if (!r.ok()) return r.status();
          if (!*r) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case Expr::Kind::kAnd:
      case Expr::Kind::kOr: {
        absl::StatusOr<Value> a = Eval(*e.items[0], scope);
        if (!a.ok()) return a;
        if (a->Truthy() == (e.kind == Expr::Kind::kOr)) return a;
        return Eval(*e.items[1], scope);
      }
      case Expr::Kind::kCondition: {
        absl::StatusOr<Value> cond = Eval(*e.items[0], scope);
        if (!cond.ok()) return cond;
        if (cond->Truthy()) return Eval(*e.items[1], scope);
        if (e.items[2]) return Eval(*e.items[2], scope);
        return Value();
      }
    }
    return Value();
  }

  static Value GetItem(const Value& target, const Value& key) {
    if (target.is_mapping()) return key.is_string() ? target.Get(key.str()) : Value();
    if ((target.is_array() || target.is_string()) && (key.kind() == K::kInt)) {
      std::vector<std::string_view> cps;
      if (target.is_string()) cps = SplitCodePoints(target.str());
      const int64_t size = static_cast<int64_t>(target.is_array() ? target.array().size() : cps.size());
      int64_t i = key.as_int();
      if (i < 0) i += size;
      if (i < 0 || i >= size) return Value();
      if (target.is_array()) return target.array()[static_cast<size_t>(i)];
      return Value::String(std::string(cps[static_cast<size_t>(i)]));
    }
    return Value();
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e, Scope& scope) {
    absl::StatusOr<Value> target = Eval(*e.items[0], scope);
    if (!target.ok()) return target;
    if (target->is_undefined()) return UndefinedError(*e.items[0]);
    Value parts[3];
    for (int i = 0; i < 3; ++i) {
      if (!e.items[i + 1]) continue;
      absl::StatusOr<Value> v = Eval(*e.items[i + 1], scope);
      if (!v.ok()) return v;
      if (!v->is_none() && v->kind() != K::kInt && v->kind() != K::kBool) {
        return TypeError("slice indices must be integers or None");
      }
      parts[i] = *std::move(v);
    }
    int64_t step = 1;
    if (parts[2].kind() == K::kInt || parts[2].kind() == K::kBool) {
      step = parts[2].kind() == K::kBool ? parts[2].as_bool() : parts[2].as_int();
    }
    if (step == 0) return TypeError("slice step cannot be zero");
    if (step == std::numeric_limits<int64_t>::min()) step = -std::numeric_limits<int64_t>::max();
    if (target->is_array()) {
      Array out;
      for (size_t i : SliceIndices(static_cast<int64_t>(target->array().size()), parts[0], parts[1], step)) {
        out.push_back(target->array()[i]);
      }
      return Container(std::move(out));
    }
    if (target->is_string()) {
      std::vector<std::string_view> cps = SplitCodePoints(target->str());
      std::string out;
      for (size_t i : SliceIndices(static_cast<int64_t>(cps.size()), parts[0], parts[1], step)) out += cps[i];
      if (auto s = Tick(out.size()); !s.ok()) return s;
      return Value::String(std::move(out));
    }
    return TypeError(absl::StrCat("'", target->TypeName(), "' object is not subscriptable"));
  }

  absl::StatusOr<Value> EvalCall(const Expr& e, Scope& scope) {
    const Expr& callee = *e.items[0];
    if (callee.kind == Expr::Kind::kAttr) {
      absl::StatusOr<Value> target = Eval(*callee.items[0], scope);
      if (!target.ok()) return target;
      if (target->is_undefined()) return UndefinedError(*callee.items[0]);
      absl::StatusOr<CallArgs> args = EvalArgs(e, 1, scope);
      if (!args.ok()) return args.status();
      if (target->is_string() || target->kind() == K::kObject) {
        return CallMethod(*target, callee.name, *args);
      }
      const Value fn = target->Get(callee.name);
      if (fn.kind() != K::kFunction) {
        return TypeError(absl::StrCat("'", target->TypeName(), "' object has no method '", callee.name, "'"));
      }
      return fn.function()(*args);
    }
    absl::StatusOr<Value> fn = Eval(callee, scope);
    if (!fn.ok()) return fn;
    if (fn->is_undefined()) return UndefinedError(callee);
    if (fn->kind() != K::kFunction) {
      return TypeError(absl::StrCat("'", fn->TypeName(), "' object is not callable"));
    }
    absl::StatusOr<CallArgs> args = EvalArgs(e, 1, scope);
    if (!args.ok()) return args.status();
    return fn->function()(*args);
  }

  absl::StatusOr<Value> CallMethod(const Value& target, const std::string& name, const CallArgs& args) {
    if (target.kind() == K::kObject) {
      if (name == "items" || name == "keys" || name == "values") {
        Array out;
        for (const auto& [k, v] : target.object()) {
          if (name == "items") out.push_back(Value::MakeArray({Value::String(k), v}, /*tuple=*/true));
          else out.push_back(name == "keys" ? Value::String(k) : v);
        }
        return Container(std::move(out));
      }
      if (name == "get") {
        const Value key = Arg(args, 0, "key");
        const Value v = key.is_string() ? target.Get(key.str()) : Value();
        if (!v.is_undefined()) return v;
        const Value dflt = Arg(args, 1, "default");
        return dflt.is_undefined() ? Value::None() : dflt;
      }
      return TypeError(absl::StrCat("'dict' object has no method '", name, "'"));
    }
    const std::string& s = target.str();
    const Value a0 = Arg(args, 0, "");
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      return Value::String(std::string(Strip(s, name != "rstrip", name != "lstrip", a0)));
    }
    if (name == "upper" || name == "lower") {
      return Value::String(name == "upper" ? absl::AsciiStrToUpper(s) : absl::AsciiStrToLower(s));
    }
    if (name == "title") return Value::String(PythonTitle(s));
    if (name == "capitalize") return Value::String(AsciiTitleWord(s));
    if (name == "startswith" || name == "endswith") {
      Array candidates = a0.is_array() ? a0.array() : Array{a0};
      for (const Value& c : candidates) {
        if (!c.is_string()) return TypeError(absl::StrCat(name, " arg must be str or a tuple of str"));
        if (name == "startswith" ? absl::StartsWith(s, c.str()) : absl::EndsWith(s, c.str())) {
          return Value::Bool(true);
        }
      }
      return Value::Bool(false);
    }
    if (name == "split") return Split(s, Arg(args, 0, "sep"), Arg(args, 1, "maxsplit"));
    if (name == "replace") {
      const Value from = Arg(args, 0, "old"), to = Arg(args, 1, "new"), count = Arg(args, 2, "count");
      if (!from.is_string() || !to.is_string()) return TypeError("replace() takes strings");
      std::string r = PythonReplace(s, from.str(), to.str(), count.kind() == K::kInt ? count.as_int() : -1);
      if (auto st = Tick(r.size()); !st.ok()) return st;
      return Value::String(std::move(r));
    }
    if (name == "find") {
      if (!a0.is_string()) return TypeError("find() takes a string");
      const size_t pos = s.find(a0.str());
      if (pos == std::string::npos) return Value::Int(-1);
      return Value::Int(static_cast<int64_t>(SplitCodePoints(std::string_view(s).substr(0, pos)).size()));
    }
    return TypeError(absl::StrCat("'str' object has no method '", name, "'"));
  }

  absl::StatusOr<Value> Split(const std::string& s, const Value& sep, const Value& maxsplit_v) {
    int64_t maxsplit = maxsplit_v.kind() == K::kInt ? maxsplit_v.as_int() : -1;
    Array out;
    if (sep.is_none() || sep.is_undefined()) {
      std::vector<std::string_view> cps = SplitCodePoints(s);
      size_t i = 0;
      while (i < cps.size()) {
        while (i < cps.size() && IsPythonSpace(cps[i])) ++i;
        if (i == cps.size()) break;
        const char* begin = cps[i].data();
        if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
          out.push_back(Value::String(std::string(begin, s.data() + s.size())));
          break;
        }
        while (i < cps.size() && !IsPythonSpace(cps[i])) ++i;
        const char* end = i < cps.size() ? cps[i].data() : s.data() + s.size();
        out.push_back(Value::String(std::string(begin, end)));
      }
    } else {
      if (!sep.is_string()) return TypeError("split() separator must be a string");
      if (sep.str().empty()) return TypeError("empty separator");
      size_t pos = 0;
      while (true) {
        const size_t found = s.find(sep.str(), pos);
        if (found == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
          out.push_back(Value::String(s.substr(pos)));
          break;
        }
        out.push_back(Value::String(s.substr(pos, found - pos)));
        pos = found + sep.str().size();
      }
    }
    if (auto st = Tick(s.size() + out.size() * 32); !st.ok()) return st;
    return Container(std::move(out));
  }

  absl::StatusOr<Value> Binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      std::string s = absl::StrCat(a.ToString(), b.ToString());
      if (auto st = Tick(s.size()); !st.ok()) return st;
      return Value::String(std::move(s));
    }
    if (a.is_undefined() || b.is_undefined()) return TypeError("undefined value in an arithmetic expression");
    const auto is_int = [](const Value& v) { return v.kind() == K::kInt || v.kind() == K::kBool; };
    const auto int_of = [](const Value& v) { return v.kind() == K::kBool ? int64_t{v.as_bool()} : v.as_int(); };
    const auto numeric = [&](const Value& v) { return is_int(v) || v.kind() == K::kFloat; };
    if (op == "+" && a.is_string() && b.is_string()) {
      if (auto st = Tick(a.str().size() + b.str().size()); !st.ok()) return st;
      return Value::String(a.str() + b.str());
    }
    if (op == "+" && a.is_array() && b.is_array()) {
      Array items = a.array();
      items.insert(items.end(), b.array().begin(), b.array().end());
      return Container(std::move(items));
    }
    if (op == "*" && (a.is_string() || a.is_array() || b.is_string() || b.is_array())) {
      const Value& seq = a.is_string() || a.is_array() ? a : b;
      const Value& count = &seq == &a ? b : a;
      if (!is_int(count)) return TypeError("can't multiply sequence by non-int");
      const int64_t n = std::max<int64_t>(0, int_of(count));
      const size_t unit = seq.is_string() ? seq.str().size() : seq.array().size() * 16;
      if (unit > 0 && static_cast<uint64_t>(n) > kMaxOutputBytes / unit) {
        return absl::ResourceExhaustedError("chat template built a string over its size limit");
      }
      if (auto st = Tick(unit * static_cast<size_t>(n)); !st.ok()) return st;
      if (seq.is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq.str();
        return Value::String(std::move(out));
      }
      Array items;
      for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.array().begin(), seq.array().end());
      return Container(std::move(items));
    }
    if (!numeric(a) || !numeric(b)) {
      return TypeError(absl::StrCat("unsupported operand type(s) for ", op, ": '", a.TypeName(),
                                    "' and '", b.TypeName(), "'"));
    }
    if (is_int(a) && is_int(b) && op != "/") {
      const int64_t x = int_of(a), y = int_of(b);
      int64_t r = 0;
      bool overflow = false;
      if (op == "+") overflow = __builtin_add_overflow(x, y, &r);
      else if (op == "-") overflow = __builtin_sub_overflow(x, y, &r);
      else if (op == "*") overflow = __builtin_mul_overflow(x, y, &r);
      else if (op == "//" || op == "%") {
        if (y == 0) return TypeError("integer division or modulo by zero");
        if (x == std::numeric_limits<int64_t>::min() && y == -1) {
          overflow = op == "//";
        } else {
          int64_t q = x / y, m = x % y;
          if (m != 0 && ((m < 0) != (y < 0))) {
            --q;
            m += y;
          }
          r = op == "//" ? q : m;
        }
      } else if (op == "**") {
        if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
        r = 1;
        for (int64_t base = x, e = y; e > 0 && !overflow; e >>= 1) {
          if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
          if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
        }
      }
      if (overflow) return TypeError("integer overflow");
      return Value::Int(r);
    }
    const double x = a.as_double() + (a.kind() == K::kBool ? a.as_bool() : 0);
    const double y = b.as_double() + (b.kind() == K::kBool ? b.as_bool() : 0);
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "**") return Value::Float(std::pow(x, y));
    if (y == 0) return TypeError("division by zero");
    if (op == "/") return Value::Float(x / y);
    if (op == "//") return Value::Float(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value::Float(m);
  }

  absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
    switch (container.kind()) {
      case K::kUndefined: return false;
      case K::kString:
        if (!item.is_string()) return TypeError("'in <string>' requires string as left operand");
        return container.str().find(item.str()) != std::string::npos;
      case K::kArray:
        return std::any_of(container.array().begin(), container.array().end(),
                           [&](const Value& v) { return Equals(v, item); });
      case K::kObject: return item.is_string() && !container.Get(item.str()).is_undefined();
      default:
        return TypeError(absl::StrCat("argument of type '", container.TypeName(), "' is not iterable"));
    }
  }

  absl::StatusOr<bool> CompareOp(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return Equals(a, b);
    if (op == "!=") return !Equals(a, b);
    if (op == "in") return Contains(b, a);
    if (op == "notin") {
      absl::StatusOr<bool> r = Contains(b, a);
      if (!r.ok()) return r;
      return !*r;
    }
    absl::StatusOr<int> c = Compare(a, b);
    if (!c.ok()) return c.status();
    if (op == "<") return *c < 0;
    if (op == "<=") return *c <= 0;
    if (op == ">") return *c > 0;
    return *c >= 0;
  }

  // The value of `attribute` ("a.b" walks nested mappings, "0" indexes lists) of an item.
  static Value Attribute(const Value& item, const Value& attribute) {
    if (!attribute.is_string()) return GetItem(item, attribute);
    Value v = item;
    for (const std::string& part : std::vector<std::string>(absl::StrSplit(attribute.str(), '.'))) {
      if (!part.empty() && std::all_of(part.begin(), part.end(), absl::ascii_isdigit) && v.is_array()) {
        v = GetItem(v, Value::Int(std::atoll(part.c_str())));
      } else {
        v = v.Get(part);
      }
    }
    return v;
  }

  absl::StatusOr<Value> ApplyFilter(const std::string& name, const Value& v, const CallArgs& args) {
    if (name == "trim") {
      return Value::String(std::string(Strip(v.ToString(), true, true, Arg(args, 0, "chars"))));
    }
    if (name == "tojson") {
      const Value indent = Arg(args, 0, "indent");
      if (!indent.is_undefined() && !indent.is_none() && indent.kind() != K::kInt) {
        return TypeError("tojson indent must be an integer");
      }
      const int width = indent.kind() == K::kInt ? static_cast<int>(std::clamp<int64_t>(indent.as_int(), 0, 64)) : -1;
      const Value ascii = Arg(args, SIZE_MAX, "ensure_ascii");
      const Value sort = Arg(args, SIZE_MAX, "sort_keys");
      absl::StatusOr<std::string> json = v.ToJson(width, ascii.Truthy(), sort.Truthy());
      if (!json.ok()) return json.status();
      if (auto st = Tick(json->size()); !st.ok()) return st;
      return Value::String(*std::move(json));
    }
    if (name == "length" || name == "count") {
      switch (v.kind()) {
        case K::kUndefined: return Value::Int(0);
        case K::kString: return Value::Int(static_cast<int64_t>(SplitCodePoints(v.str()).size()));
        case K::kArray: return Value::Int(static_cast<int64_t>(v.array().size()));
        case K::kObject: return Value::Int(static_cast<int64_t>(v.object().size()));
        default: return TypeError(absl::StrCat("object of type '", v.TypeName(), "' has no len()"));
      }
    }
    if (name == "upper") return Value::String(absl::AsciiStrToUpper(v.ToString()));
    if (name == "lower") return Value::String(absl::AsciiStrToLower(v.ToString()));
    if (name == "capitalize") return Value::String(AsciiTitleWord(v.ToString()));
    if (name == "title") return Value::String(JinjaTitle(v.ToString()));
    if (name == "string") return Value::String(v.ToString());
    if (name == "safe") return v;
    if (name == "default" || name == "d") {
      const Value dflt = Arg(args, 0, "default_value");
      const bool boolean = Arg(args, 1, "boolean").Truthy();
      if (v.is_undefined() || (boolean && !v.Truthy())) {
        return dflt.is_undefined() ? Value::String("") : dflt;
      }
      return v;
    }
    if (name == "join") {
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      const Value sep = Arg(args, 0, "d");
      const Value attribute = Arg(args, 1, "attribute");
      std::string out;
      for (size_t i = 0; i < items->size(); ++i) {
        if (i > 0) out += sep.ToString();
        out += (attribute.is_undefined() ? (*items)[i] : Attribute((*items)[i], attribute)).ToString();
        if (auto st = Tick(out.size() / 16); !st.ok()) return st;
      }
      return Value::String(std::move(out));
    }
    if (name == "replace") {
      const Value from = Arg(args, 0, "old"), to = Arg(args, 1, "new"), count = Arg(args, 2, "count");
      if (from.is_undefined() || to.is_undefined()) return TypeError("replace needs old and new");
      std::string r = PythonReplace(v.ToString(), from.ToString(), to.ToString(),
                                    count.kind() == K::kInt ? count.as_int() : -1);
      if (auto st = Tick(r.size()); !st.ok()) return st;
      return Value::String(std::move(r));
    }
    if (name == "first" || name == "last") {
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      if (items->empty()) return Value();
      return name == "first" ? items->front() : items->back();
    }
    if (name == "list") {
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      return Container(*std::move(items));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        std::vector<std::string_view> cps = SplitCodePoints(v.str());
        std::string out;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
        return Value::String(std::move(out));
      }
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      std::reverse(items->begin(), items->end());
      return Container(*std::move(items));
    }
    if (name == "items") {
      if (v.is_undefined()) return Container({});
      if (v.kind() != K::kObject) return TypeError("items filter expects a mapping");
      return CallMethod(v, "items", {});
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool attr = name == "selectattr" || name == "rejectattr";
      const bool keep = name == "selectattr" || name == "select";
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      const size_t test_index = attr ? 1 : 0;
      CallArgs test_args;
      for (size_t i = test_index + 1; i < args.positional.size(); ++i) test_args.positional.push_back(args.positional[i]);
      Array out;
      for (const Value& item : *items) {
        const Value subject = attr ? Attribute(item, Arg(args, 0, "")) : item;
        bool result = subject.Truthy();
        if (args.positional.size() > test_index) {
          const Value test = args.positional[test_index];
          if (!test.is_string()) return TypeError("test name must be a string");
          absl::StatusOr<bool> r = ApplyTest(test.str(), subject, test_args);
          if (!r.ok()) return r.status();
          result = *r;
        }
        if (result == keep) out.push_back(item);
      }
      return Container(std::move(out));
    }
    if (name == "map") {
      absl::StatusOr<Array> items = Iterate(v);
      if (!items.ok()) return items.status();
      Array out;
      const Value attribute = Arg(args, SIZE_MAX, "attribute");
      for (const Value& item : *items) {
        if (!attribute.is_undefined()) {
          Value x = Attribute(item, attribute);
          if (x.is_undefined()) x = Arg(args, SIZE_MAX, "default");
          out.push_back(std::move(x));
          continue;
        }
        if (args.positional.empty() || !args.positional[0].is_string()) {
          return TypeError("map() needs a filter name or attribute=");
        }
        CallArgs rest;
        rest.positional.assign(args.positional.begin() + 1, args.positional.end());
        absl::StatusOr<Value> x = ApplyFilter(args.positional[0].str(), item, rest);
        if (!x.ok()) return x;
        out.push_back(*std::move(x));
      }
      return Container(std::move(out));
    }
    if (name == "int" || name == "float") {
      const bool to_int = name == "int";
      const Value dflt = Arg(args, 0, "default");
      Value fallback = dflt.is_undefined() ? (to_int ? Value::Int(0) : Value::Float(0)) : dflt;
      if (v.kind() == K::kInt || v.kind() == K::kBool) {
        const int64_t i = v.kind() == K::kBool ? v.as_bool() : v.as_int();
        return to_int ? Value::Int(i) : Value::Float(static_cast<double>(i));
      }
      if (v.kind() == K::kFloat) {
        const double d = v.as_double();
        if (!to_int) return v;
        if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
        return Value::Int(static_cast<int64_t>(d));
      }
      if (v.is_string()) {
        const std::string s(Strip(v.str(), true, true, Value()));
        char* end = nullptr;
        if (to_int) {
          errno = 0;
          const long long i = std::strtoll(s.c_str(), &end, 10);
          if (!s.empty() && *end == '\0' && errno == 0) return Value::Int(i);
        }
        const double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == '\0') {
          if (!to_int) return Value::Float(d);
          if (std::isfinite(d) && std::fabs(d) < 9.2e18) return Value::Int(static_cast<int64_t>(d));
        }
      }
      return fallback;
    }
    if (name == "abs") {
      if (v.kind() == K::kInt) {
        if (v.as_int() == std::numeric_limits<int64_t>::min()) return TypeError("integer overflow");
        return Value::Int(std::abs(v.as_int()));
      }
      if (v.kind() == K::kFloat) return Value::Float(std::fabs(v.as_double()));
      return TypeError(absl::StrCat("bad operand type for abs(): '", v.TypeName(), "'"));
    }
    return TypeError(absl::StrCat("no filter named '", name, "'"));
  }

  absl::StatusOr<bool> ApplyTest(const std::string& name, const Value& v, const CallArgs& args) {
    const Value other = Arg(args, 0, "");
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.is_string();
    if (name == "number") return v.is_number() || v.kind() == K::kBool;
    if (name == "integer") return v.kind() == K::kInt;
    if (name == "float") return v.kind() == K::kFloat;
    if (name == "boolean") return v.kind() == K::kBool;
    if (name == "true") return v.kind() == K::kBool && v.as_bool();
    if (name == "false") return v.kind() == K::kBool && !v.as_bool();
    if (name == "mapping") return v.kind() == K::kObject;
    if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_array() || v.kind() == K::kObject;
    if (name == "sequence") return v.is_string() || v.is_array() || v.kind() == K::kObject;
    if (name == "callable") return v.kind() == K::kFunction;
    if (name == "equalto" || name == "eq" || name == "==") return Equals(v, other);
    if (name == "ne" || name == "!=") return !Equals(v, other);
    if (name == "sameas") {
      if (v.kind() != other.kind()) return false;
      if (v.is_none() || v.is_undefined()) return true;
      if (v.kind() == K::kBool) return v.as_bool() == other.as_bool();
      return v.kind() == K::kInt && v.as_int() == other.as_int();  // as CPython's small ints
    }
    if (name == "in") return Contains(other, v);
    if (name == "lt" || name == "lessthan" || name == "<") return CompareOp("<", v, other);
    if (name == "le" || name == "<=") return CompareOp("<=", v, other);
    if (name == "gt" || name == "greaterthan" || name == ">") return CompareOp(">", v, other);
    if (name == "ge" || name == ">=") return CompareOp(">=", v, other);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (v.kind() != K::kInt) return TypeError(absl::StrCat("test '", name, "' needs an integer"));
      int64_t d = 2;
      if (name == "divisibleby") {
        if (other.kind() != K::kInt || other.as_int() == 0) return TypeError("divisibleby needs a non-zero integer");
        d = other.as_int();
      }
      const int64_t m = d == -1 ? 0 : v.as_int() % d;
      return name == "odd" ? m != 0 : m == 0;
    }
    if (name == "lower" || name == "upper") {
      const std::string s = v.ToString();
      return s == (name == "lower" ? absl::AsciiStrToLower(s) : absl::AsciiStrToUpper(s));
    }
    return TypeError(absl::StrCat("no test named '", name, "'"));
  }

  Scope root_;
  std::vector<Value> namespaces_;
  int64_t steps_ = 0;
  int depth_ = 0;  // nested Eval and Exec calls, macro calls included
  Flow flow_ = Flow::kNormal;
  bool raised_ = false;
};

}  // namespace

absl::StatusOr<std::string> Render(const Body& body, const Object& variables) {
  Interpreter interpreter;
  return interpreter.Run(body, variables);
}

}  // namespace lizard::server::jinja
