// The syntax tree of a parsed template, and the parser: Jinja's lexer rules with the settings
// Hugging Face renders chat templates with (trim_blocks, lstrip_blocks, loop controls, no
// trailing newline kept).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "server/jinja/value.h"

namespace lizard::server::jinja {

// Statements and expressions nest at most this deep in a template, counting each operand of a
// chain such as a + b + c or x|f|g as one level (bounds the parser's recursion and the depth of
// the tree, hence of its evaluation and destruction).
inline constexpr int kMaxNesting = 256;

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // items
    kTuple,      // items
    kDict,       // items: key, value, key, value...
    kAttr,       // items[0].name
    kItem,       // items[0][items[1]]
    kSlice,      // items[0][items[1]:items[2]:items[3]] (absent parts are null)
    kCall,       // items[0](items[1..], named)
    kFilter,     // items[0] | name(items[1..], named)
    kTest,       // items[0] is [not] name(items[1..], named); negated
    kNot,        // not items[0]
    kNeg,        // -items[0]
    kPos,        // +items[0]
    kBinary,     // items[0] name items[1]: + - * / // % ** ~
    kCompare,    // items[0] ops[0] items[1] ops[1] items[2]...: == != < <= > >= in notin
    kAnd,
    kOr,
    kCondition,  // items[1] if items[0] else items[2] (items[2] may be null)
  };
  Kind kind;
  int line = 0, column = 0;
  Value value;
  std::string name;
  bool negated = false;
  std::vector<ExprPtr> items;
  std::vector<std::pair<std::string, ExprPtr>> named;
  std::vector<std::string> ops;
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches: (condition, body)...; else_body
    kFor,       // for targets in expr [if condition]: body; else_body
    kSet,       // set targets[0][.attr] = expr; or {% set name %}body{% endset %} when expr is null
    kMacro,     // macro targets[0](params): body
    kBreak,
    kContinue,
    kBlock,     // a body rendered in place ({% generation %})
  };
  Kind kind;
  int line = 0, column = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr condition;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::pair<std::string, ExprPtr>> params;
  Body body;
  Body else_body;
};

// INVALID_ARGUMENT "line L, column C: ..." for a syntax error or an unsupported construct.
absl::StatusOr<Body> ParseTemplate(std::string_view source);

}  // namespace lizard::server::jinja
