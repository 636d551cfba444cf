// Lexer and recursive-descent parser, following jinja2/lexer.py and jinja2/parser.py for the
// constructs chat templates use.
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <initializer_list>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/jinja/ast.h"

namespace lizard::server::jinja {
namespace {

struct Token {
  enum class Type { kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt,
                    kFloat, kOp, kEnd };
  Type type;
  size_t offset = 0;
  std::string text;  // data, name, operator
  Value value;       // literals
};

class Lexer {
 public:
  explicit Lexer(std::string source) : src_(std::move(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::Status Run(std::vector<Token>& tokens) {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      // The next tag start: "{{", "{%" or "{#".
      size_t tag = pos_;
      while ((tag = src_.find('{', tag)) != std::string::npos) {
        if (tag + 1 < src_.size() && (src_[tag + 1] == '{' || src_[tag + 1] == '%' ||
                                      src_[tag + 1] == '#')) {
          break;
        }
        ++tag;
      }
      if (tag == std::string::npos) {
        tokens.push_back({Token::Type::kData, pos_, src_.substr(pos_)});
        break;
      }
      std::string data = src_.substr(pos_, tag - pos_);
      const char kind = src_[tag + 1];
      size_t p = tag + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      if (sign == '-') {
        data = std::string(Strip(data, false, true, Value()));
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the spaces between a line's start and a block or comment tag.
        const size_t l_pos = data.rfind('\n') == std::string::npos ? 0 : data.rfind('\n') + 1;
        if ((l_pos > 0 || line_starting) && l_pos < data.size() &&
            Strip(std::string_view(data).substr(l_pos), true, false, Value()).empty()) {
          data.resize(l_pos);
        }
      }
      if (!data.empty()) tokens.push_back({Token::Type::kData, pos_, std::move(data)});
      pos_ = p;
      if (kind == '#') {
        const size_t end = src_.find("#}", pos_);
        if (end == std::string::npos) return Error(tag, "missing end of comment tag");
        pos_ = end + 2;
        line_starting = AfterTagEnd(end > tag + 2 && src_[end - 1] == '-' && end - 1 >= p,
                                    end > tag + 2 && src_[end - 1] == '+' && end - 1 >= p);
        continue;
      }
      const bool block = kind == '%';
      tokens.push_back({block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, tag, ""});
      if (auto s = LexTag(block, tokens, line_starting); !s.ok()) return s;
    }
    tokens.push_back({Token::Type::kEnd, src_.size(), ""});
    return absl::OkStatus();
  }

  absl::Status Error(size_t offset, const std::string& message) const {
    const auto [line, column] = LineColumn(offset);
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ", column ", column, ": ", message));
  }

  // 1-based line and column (in bytes) of an offset in the source.
  std::pair<int, int> LineColumn(size_t offset) const {
    offset = std::min(offset, src_.size());
    const auto next_line = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const size_t line_start = *(next_line - 1);
    return {static_cast<int>(next_line - line_starts_.begin()),
            static_cast<int>(offset - line_start) + 1};
  }


 private:
  // After a tag's closing delimiter: "-" strips all following whitespace, otherwise trim_blocks
  // drops one newline (not for {{ }}). Returns whether the consumed text ended a line.
  bool AfterTagEnd(bool minus, bool plus, bool trim = true) {
    if (minus) {
      const size_t start = pos_;
      std::string_view rest = std::string_view(src_).substr(pos_);
      pos_ += rest.size() - Strip(rest, true, false, Value()).size();
      return pos_ > start && src_[pos_ - 1] == '\n';
    }
    if (!plus && trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      return true;
    }
    return false;
  }

  absl::Status LexTag(bool block, std::vector<Token>& tokens, bool& line_starting) {
    const std::string end = block ? "%}" : "}}";
    std::vector<char> brackets;
    while (true) {
      while (pos_ < src_.size() && absl::ascii_isspace(static_cast<unsigned char>(src_[pos_]))) {
        ++pos_;
      }
      if (pos_ >= src_.size()) return Error(pos_, absl::StrCat("unexpected end of template, expected '", end, "'"));
      const std::string_view rest = std::string_view(src_).substr(pos_);
      if (brackets.empty()) {
        const bool minus = rest.substr(0, 3) == absl::StrCat("-", end);
        const bool plus = block && rest.substr(0, 3) == absl::StrCat("+", end);
        if (minus || plus || rest.substr(0, 2) == end) {
          tokens.push_back({block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, pos_, ""});
          pos_ += minus || plus ? 3 : 2;
          line_starting = AfterTagEnd(minus, plus, block);
          return absl::OkStatus();
        }
      }
      const size_t start = pos_;
      const char c = src_[pos_];
      if (absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (pos_ < src_.size() && (absl::ascii_isalnum(static_cast<unsigned char>(src_[pos_])) ||
                                      src_[pos_] == '_')) {
          ++pos_;
        }
        tokens.push_back({Token::Type::kName, start, src_.substr(start, pos_ - start)});
      } else if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
        if (auto s = LexNumber(tokens); !s.ok()) return s;
      } else if (c == '\'' || c == '"') {
        if (auto s = LexString(tokens); !s.ok()) return s;
      } else {
        static constexpr std::string_view kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-",
                                                    "/", "*", "%", "~", "[", "]", "(", ")", "{",
                                                    "}", ">", "<", "=", ".", ":", "|", ",", ";"};
        const auto op = std::find_if(std::begin(kOps), std::end(kOps),
                                     [&](std::string_view o) { return rest.substr(0, o.size()) == o; });
        if (op == std::end(kOps)) return Error(pos_, absl::StrCat("unexpected char '", std::string(rest.substr(0, 1)), "'"));
        if (*op == "(" || *op == "[" || *op == "{") {
          brackets.push_back(op->front());
        } else if (*op == ")" || *op == "]" || *op == "}") {
          const char open = *op == ")" ? '(' : *op == "]" ? '[' : '{';
          if (brackets.empty() || brackets.back() != open) {
            return Error(pos_, absl::StrCat("unexpected '", std::string(*op), "'"));
          }
          brackets.pop_back();
        }
        pos_ += op->size();
        tokens.push_back({Token::Type::kOp, start, std::string(*op)});
      }
    }
  }

  absl::Status LexNumber(std::vector<Token>& tokens) {
    const size_t start = pos_;
    const auto digits = [&] {
      while (pos_ < src_.size() && (absl::ascii_isdigit(static_cast<unsigned char>(src_[pos_])) ||
                                    (src_[pos_] == '_' && pos_ + 1 < src_.size() &&
                                     absl::ascii_isdigit(static_cast<unsigned char>(src_[pos_ + 1]))))) {
        ++pos_;
      }
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' &&
        absl::ascii_isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t q = pos_ + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (q < src_.size() && absl::ascii_isdigit(static_cast<unsigned char>(src_[q]))) {
        is_float = true;
        pos_ = q;
        digits();
      }
    }
    std::string text;
    for (size_t i = start; i < pos_; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    if (is_float) {
      tokens.push_back({Token::Type::kFloat, start, "", Value::Float(std::strtod(text.c_str(), nullptr))});
      return absl::OkStatus();
    }
    errno = 0;
    const long long v = std::strtoll(text.c_str(), nullptr, 10);
    if (errno == ERANGE) return Error(start, "integer literal out of range");
    tokens.push_back({Token::Type::kInt, start, "", Value::Int(v)});
    return absl::OkStatus();
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // A quoted string with Python's "unicode-escape" decoding, as Jinja reads string literals.
  absl::Status LexString(std::vector<Token>& tokens) {
    const size_t start = pos_;
    const char quote = src_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) return Error(start, "unterminated string");
      const char c = src_[pos_++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) return Error(start, "unterminated string");
      const char e = src_[pos_++];
      const auto hex = [&](int n) -> int64_t {
        if (pos_ + n > src_.size()) return -1;
        uint32_t v = 0;
        for (int i = 0; i < n; ++i) {
          const char h = src_[pos_ + i];
          if (!absl::ascii_isxdigit(static_cast<unsigned char>(h))) return -1;
          v = v * 16 + (absl::ascii_isdigit(static_cast<unsigned char>(h)) ? h - '0' : (absl::ascii_tolower(h) - 'a' + 10));
        }
        pos_ += n;
        return v;
      };
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': case 'u': case 'U': {
          const int64_t v = hex(e == 'x' ? 2 : e == 'u' ? 4 : 8);
          if (v < 0 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
            return Error(pos_ - 2, "invalid escape in string");
          }
          AppendUtf8(out, static_cast<uint32_t>(v));
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = e - '0';
            for (int i = 0; i < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++i) {
              v = v * 8 + (src_[pos_++] - '0');
            }
            AppendUtf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens.push_back({Token::Type::kString, start, "", Value::String(std::move(out))});
    return absl::OkStatus();
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  size_t pos_ = 0;
};

class Parser {
 public:
  Parser(const Lexer& lexer, std::vector<Token> tokens) : lexer_(lexer), tokens_(std::move(tokens)) {}

  absl::StatusOr<Body> ParseAll() {
    Body body;
    std::string end_tag;
    if (auto s = ParseBody({}, body, end_tag); !s.ok()) return s;
    return body;
  }

 private:
  using T = Token::Type;

  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Peek(size_t n = 1) const { return tokens_[std::min(pos_ + n, tokens_.size() - 1)]; }
  bool IsOp(std::string_view op) const { return Cur().type == T::kOp && Cur().text == op; }
  bool IsName(std::string_view name) const { return Cur().type == T::kName && Cur().text == name; }

  absl::Status Error(const Token& t, const std::string& message) const {
    return lexer_.Error(t.offset, message);
  }
  absl::Status Unexpected() const {
    const Token& t = Cur();
    std::string what = t.type == T::kName || t.type == T::kOp ? absl::StrCat("'", t.text, "'")
                       : t.type == T::kBlockEnd                ? "end of statement block"
                       : t.type == T::kVarEnd                  ? "end of print statement"
                       : t.type == T::kEnd                     ? "end of template"
                                                               : "literal";
    return Error(t, absl::StrCat("unexpected ", what));
  }
  absl::Status ExpectOp(std::string_view op) {
    if (!IsOp(op)) return Unexpected();
    ++pos_;
    return absl::OkStatus();
  }
  absl::Status Expect(T type) {
    if (Cur().type != type) return Unexpected();
    ++pos_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Cur().type != T::kName) return Unexpected();
    return tokens_[pos_++].text;
  }

  // A guard on recursion depth; returns an error past kMaxNesting.
  struct DepthGuard {
    explicit DepthGuard(int& d) : depth(d) { ++depth; }
    ~DepthGuard() { --depth; }
    int& depth;
  };
  // Counts the links of an operator chain (each one nests the tree a level deeper) for as long as
  // the chain's parse function runs.
  struct ChainGuard {
    explicit ChainGuard(Parser& p) : parser(p) {}
    ~ChainGuard() { parser.depth_ -= added; }
    absl::Status Add() {
      ++parser.depth_;
      ++added;
      return parser.CheckDepth();
    }
    Parser& parser;
    int added = 0;
  };
  absl::Status CheckDepth() const {
    if (depth_ > kMaxNesting) return Error(Cur(), "template nests too deeply");
    return absl::OkStatus();
  }

  ExprPtr MakeExpr(Expr::Kind kind, const Token& at) const {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    SetPosition(*e, at);
    return e;
  }
  template <typename N>
  void SetPosition(N& n, const Token& at) const {
    std::tie(n.line, n.column) = lexer_.LineColumn(at.offset);
  }

  // Parses nodes until a block tag whose keyword is in `ends` (left current, keyword in end_tag).
  absl::Status ParseBody(std::initializer_list<std::string_view> ends, Body& body, std::string& end_tag) {
    DepthGuard guard(depth_);
    if (auto s = CheckDepth(); !s.ok()) return s;
    while (true) {
      const Token& t = Cur();
      if (t.type == T::kEnd) {
        if (ends.size() == 0) return absl::OkStatus();
        return Error(t, absl::StrCat("unexpected end of template, expected '", std::string(*(ends.end() - 1)), "'"));
      }
      if (t.type == T::kData) {
        Node n{Node::Kind::kText};
        SetPosition(n, t);
        n.text = t.text;
        body.push_back(std::move(n));
        ++pos_;
      } else if (t.type == T::kVarBegin) {
        ++pos_;
        Node n{Node::Kind::kOutput};
        SetPosition(n, t);
        absl::StatusOr<ExprPtr> e = ParseTuple();
        if (!e.ok()) return e.status();
        n.expr = *std::move(e);
        if (auto s = Expect(T::kVarEnd); !s.ok()) return s;
        body.push_back(std::move(n));
      } else if (t.type == T::kBlockBegin) {
        const Token& keyword = Peek();
        if (keyword.type != T::kName) {
          ++pos_;
          return Unexpected();
        }
        if (std::find(ends.begin(), ends.end(), keyword.text) != ends.end()) {
          end_tag = keyword.text;
          pos_ += 2;
          return absl::OkStatus();
        }
        if (auto s = ParseStatement(body); !s.ok()) return s;
      } else {
        return Unexpected();
      }
    }
  }

  absl::Status ParseStatement(Body& body) {
    const Token& begin = Cur();
    ++pos_;
    const Token& kw = Cur();
    ++pos_;
    Node n{Node::Kind::kText};
    SetPosition(n, begin);
    std::string end_tag;
    if (kw.text == "if") {
      n.kind = Node::Kind::kIf;
      while (true) {
        absl::StatusOr<ExprPtr> cond = ParseTuple();
        if (!cond.ok()) return cond.status();
        if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
        Body branch;
        if (auto s = ParseBody({"elif", "else", "endif"}, branch, end_tag); !s.ok()) return s;
        n.branches.emplace_back(*std::move(cond), std::move(branch));
        if (end_tag != "elif") break;
      }
      if (end_tag == "else") {
        if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
        if (auto s = ParseBody({"endif"}, n.else_body, end_tag); !s.ok()) return s;
      }
    } else if (kw.text == "for") {
      n.kind = Node::Kind::kFor;
      const bool paren = IsOp("(");
      if (paren) ++pos_;
      while (true) {
        absl::StatusOr<std::string> name = ExpectName();
        if (!name.ok()) return name.status();
        n.targets.push_back(*name);
        if (!IsOp(",")) break;
        ++pos_;
      }
      if (paren) {
        if (auto s = ExpectOp(")"); !s.ok()) return s;
      }
      if (!IsName("in")) return Unexpected();
      ++pos_;
      absl::StatusOr<ExprPtr> iter = ParseOr();
      if (!iter.ok()) return iter.status();
      n.expr = *std::move(iter);
      if (IsName("if")) {
        ++pos_;
        absl::StatusOr<ExprPtr> cond = ParseExpression();
        if (!cond.ok()) return cond.status();
        n.condition = *std::move(cond);
      }
      if (IsName("recursive")) return Error(Cur(), "recursive loops are not supported");
      if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
      ++loop_depth_;
      absl::Status body_status = ParseBody({"else", "endfor"}, n.body, end_tag);
      --loop_depth_;
      if (!body_status.ok()) return body_status;
      if (end_tag == "else") {
        if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
        if (auto s = ParseBody({"endfor"}, n.else_body, end_tag); !s.ok()) return s;
      }
    } else if (kw.text == "set") {
      n.kind = Node::Kind::kSet;
      absl::StatusOr<std::string> name = ExpectName();
      if (!name.ok()) return name.status();
      n.targets.push_back(*name);
      if (IsOp(".")) {
        ++pos_;
        absl::StatusOr<std::string> attr = ExpectName();
        if (!attr.ok()) return attr.status();
        n.attr = *attr;
      }
      if (IsOp(",")) return Error(Cur(), "assigning to several names is not supported");
      if (IsOp("=")) {
        ++pos_;
        absl::StatusOr<ExprPtr> value = ParseTuple();
        if (!value.ok()) return value.status();
        n.expr = *std::move(value);
      } else {
        if (!n.attr.empty()) return Unexpected();
        if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
        if (auto s = ParseBody({"endset"}, n.body, end_tag); !s.ok()) return s;
      }
    } else if (kw.text == "macro") {
      n.kind = Node::Kind::kMacro;
      absl::StatusOr<std::string> name = ExpectName();
      if (!name.ok()) return name.status();
      n.targets.push_back(*name);
      if (auto s = ExpectOp("("); !s.ok()) return s;
      while (!IsOp(")")) {
        if (!n.params.empty()) {
          if (auto s = ExpectOp(","); !s.ok()) return s;
        }
        absl::StatusOr<std::string> param = ExpectName();
        if (!param.ok()) return param.status();
        ExprPtr def;
        if (IsOp("=")) {
          ++pos_;
          absl::StatusOr<ExprPtr> e = ParseExpression();
          if (!e.ok()) return e.status();
          def = *std::move(e);
        }
        n.params.emplace_back(*param, std::move(def));
      }
      ++pos_;
      if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
      const int saved_loop_depth = loop_depth_;  // a macro's body is outside any loop
      loop_depth_ = 0;
      absl::Status body_status = ParseBody({"endmacro"}, n.body, end_tag);
      loop_depth_ = saved_loop_depth;
      if (!body_status.ok()) return body_status;
    } else if (kw.text == "break" || kw.text == "continue") {
      if (loop_depth_ == 0) return Error(kw, absl::StrCat("'", kw.text, "' outside of a loop"));
      n.kind = kw.text == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
    } else if (kw.text == "generation") {
      // Hugging Face's marker of assistant text (for training masks); renders its body.
      n.kind = Node::Kind::kBlock;
      if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
      if (auto s = ParseBody({"endgeneration"}, n.body, end_tag); !s.ok()) return s;
    } else {
      return Error(kw, absl::StrCat("unsupported tag '", kw.text, "'"));
    }
    if (auto s = Expect(T::kBlockEnd); !s.ok()) return s;
    body.push_back(std::move(n));
    return absl::OkStatus();
  }

  // Jinja's parse_tuple: an expression, or a tuple when commas follow (as in {{ a, b }}).
  absl::StatusOr<ExprPtr> ParseTuple() {
    const Token& start = Cur();
    absl::StatusOr<ExprPtr> first = ParseExpression();
    if (!first.ok() || !IsOp(",")) return first;
    ExprPtr tuple = MakeExpr(Expr::Kind::kTuple, start);
    tuple->items.push_back(*std::move(first));
    while (IsOp(",")) {
      ++pos_;
      if (Cur().type == T::kVarEnd || Cur().type == T::kBlockEnd) break;
      absl::StatusOr<ExprPtr> e = ParseExpression();
      if (!e.ok()) return e.status();
      tuple->items.push_back(*std::move(e));
    }
    return tuple;
  }

  absl::StatusOr<ExprPtr> ParseExpression() {
    DepthGuard guard(depth_);
    if (auto s = CheckDepth(); !s.ok()) return s;
    const Token& start = Cur();
    absl::StatusOr<ExprPtr> expr = ParseOr();
    if (!expr.ok()) return expr;
    ChainGuard chain(*this);
    while (IsName("if")) {
      if (auto s = chain.Add(); !s.ok()) return s;
      ++pos_;
      ExprPtr cond = MakeExpr(Expr::Kind::kCondition, start);
      absl::StatusOr<ExprPtr> test = ParseOr();
      if (!test.ok()) return test;
      cond->items.push_back(*std::move(test));
      cond->items.push_back(*std::move(expr));
      if (IsName("else")) {
        ++pos_;
        absl::StatusOr<ExprPtr> other = ParseExpression();
        if (!other.ok()) return other;
        cond->items.push_back(*std::move(other));
      } else {
        cond->items.push_back(nullptr);
      }
      expr = std::move(cond);
    }
    return expr;
  }

  // a or b or c (and likewise `and`), left-nested.
  absl::StatusOr<ExprPtr> Logical(absl::StatusOr<ExprPtr> (Parser::*next)(), std::string_view keyword,
                                  Expr::Kind kind) {
    const Token& start = Cur();
    absl::StatusOr<ExprPtr> left = (this->*next)();
    ChainGuard chain(*this);
    while (left.ok() && IsName(keyword)) {
      if (auto s = chain.Add(); !s.ok()) return s;
      ++pos_;
      absl::StatusOr<ExprPtr> right = (this->*next)();
      if (!right.ok()) return right;
      ExprPtr e = MakeExpr(kind, start);
      e->items.push_back(*std::move(left));
      e->items.push_back(*std::move(right));
      left = std::move(e);
    }
    return left;
  }
  absl::StatusOr<ExprPtr> ParseOr() { return Logical(&Parser::ParseAnd, "or", Expr::Kind::kOr); }
  absl::StatusOr<ExprPtr> ParseAnd() { return Logical(&Parser::ParseNot, "and", Expr::Kind::kAnd); }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName("not")) {
      DepthGuard guard(depth_);
      if (auto s = CheckDepth(); !s.ok()) return s;
      ExprPtr e = MakeExpr(Expr::Kind::kNot, Cur());
      ++pos_;
      absl::StatusOr<ExprPtr> operand = ParseNot();
      if (!operand.ok()) return operand;
      e->items.push_back(*std::move(operand));
      return e;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const Token& start = Cur();
    absl::StatusOr<ExprPtr> first = ParseMath1();
    if (!first.ok()) return first;
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == T::kOp && (Cur().text == "==" || Cur().text == "!=" || Cur().text == "<" ||
                                   Cur().text == "<=" || Cur().text == ">" || Cur().text == ">=")) {
        op = Cur().text;
        ++pos_;
      } else if (IsName("in")) {
        op = "in";
        ++pos_;
      } else if (IsName("not") && Peek().type == T::kName && Peek().text == "in") {
        op = "notin";
        pos_ += 2;
      } else {
        break;
      }
      absl::StatusOr<ExprPtr> next = ParseMath1();
      if (!next.ok()) return next;
      if (!cmp) {
        cmp = MakeExpr(Expr::Kind::kCompare, start);
        cmp->items.push_back(*std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->items.push_back(*std::move(next));
    }
    if (cmp) return cmp;
    return first;
  }

  absl::StatusOr<ExprPtr> Binary(absl::StatusOr<ExprPtr> (Parser::*next)(),
                                 std::initializer_list<std::string_view> ops) {
    const Token& start = Cur();
    absl::StatusOr<ExprPtr> left = (this->*next)();
    ChainGuard chain(*this);
    while (left.ok() && Cur().type == T::kOp &&
           std::find(ops.begin(), ops.end(), Cur().text) != ops.end()) {
      if (auto s = chain.Add(); !s.ok()) return s;
      ExprPtr e = MakeExpr(Expr::Kind::kBinary, start);
      e->name = Cur().text;
      ++pos_;
      absl::StatusOr<ExprPtr> right = (this->*next)();
      if (!right.ok()) return right;
      e->items.push_back(*std::move(left));
      e->items.push_back(*std::move(right));
      left = std::move(e);
    }
    return left;
  }
  absl::StatusOr<ExprPtr> ParseMath1() { return Binary(&Parser::ParseConcat, {"+", "-"}); }
  absl::StatusOr<ExprPtr> ParseConcat() { return Binary(&Parser::ParseMath2, {"~"}); }
  absl::StatusOr<ExprPtr> ParseMath2() { return Binary(&Parser::ParsePow, {"*", "/", "//", "%"}); }
  absl::StatusOr<ExprPtr> ParsePow() { return Binary(&Parser::ParseUnaryWithFilters, {"**"}); }
  absl::StatusOr<ExprPtr> ParseUnaryWithFilters() { return ParseUnary(true); }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    DepthGuard guard(depth_);
    if (auto s = CheckDepth(); !s.ok()) return s;
    absl::StatusOr<ExprPtr> node;
    if (IsOp("-") || IsOp("+")) {
      ExprPtr e = MakeExpr(IsOp("-") ? Expr::Kind::kNeg : Expr::Kind::kPos, Cur());
      ++pos_;
      absl::StatusOr<ExprPtr> operand = ParseUnary(false);
      if (!operand.ok()) return operand;
      e->items.push_back(*std::move(operand));
      node = std::move(e);
    } else {
      node = ParsePrimary();
    }
    if (!node.ok()) return node;
    node = ParsePostfix(*std::move(node));
    if (!node.ok() || !with_filter) return node;
    return ParseFilterExpr(*std::move(node));
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Cur();
    switch (t.type) {
      case T::kName: {
        ++pos_;
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, t);
        if (t.text == "true" || t.text == "True") e->value = Value::Bool(true);
        else if (t.text == "false" || t.text == "False") e->value = Value::Bool(false);
        else if (t.text == "none" || t.text == "None") e->value = Value::None();
        else {
          e->kind = Expr::Kind::kName;
          e->name = t.text;
        }
        return e;
      }
      case T::kString: {
        std::string s;
        while (Cur().type == T::kString) s += tokens_[pos_++].value.str();  // 'a' 'b' is 'ab'
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, t);
        e->value = Value::String(std::move(s));
        return e;
      }
      case T::kInt:
      case T::kFloat: {
        ++pos_;
        ExprPtr e = MakeExpr(Expr::Kind::kLiteral, t);
        e->value = t.value;
        return e;
      }
      case T::kOp:
        if (t.text == "(") {
          ++pos_;
          if (IsOp(")")) {
            ++pos_;
            return MakeExpr(Expr::Kind::kTuple, t);
          }
          absl::StatusOr<ExprPtr> inner = ParseExpression();
          if (!inner.ok()) return inner;
          if (IsOp(",")) {
            ExprPtr tuple = MakeExpr(Expr::Kind::kTuple, t);
            tuple->items.push_back(*std::move(inner));
            while (IsOp(",")) {
              ++pos_;
              if (IsOp(")")) break;
              absl::StatusOr<ExprPtr> e = ParseExpression();
              if (!e.ok()) return e;
              tuple->items.push_back(*std::move(e));
            }
            inner = std::move(tuple);
          }
          if (auto s = ExpectOp(")"); !s.ok()) return s;
          return inner;
        }
        if (t.text == "[" || t.text == "{") {
          const bool dict = t.text == "{";
          const std::string close = dict ? "}" : "]";
          ++pos_;
          ExprPtr e = MakeExpr(dict ? Expr::Kind::kDict : Expr::Kind::kList, t);
          while (!IsOp(close)) {
            if (!e->items.empty()) {
              if (auto s = ExpectOp(","); !s.ok()) return s;
              if (IsOp(close)) break;
            }
            absl::StatusOr<ExprPtr> item = ParseExpression();
            if (!item.ok()) return item;
            e->items.push_back(*std::move(item));
            if (dict) {
              if (auto s = ExpectOp(":"); !s.ok()) return s;
              absl::StatusOr<ExprPtr> value = ParseExpression();
              if (!value.ok()) return value;
              e->items.push_back(*std::move(value));
            }
          }
          ++pos_;
          return e;
        }
        break;
      default:
        break;
    }
    return Unexpected();
  }

  // Attribute, item and call nodes take the position of the expression they apply to.
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    const int line = node->line, column = node->column;
    ChainGuard chain(*this);
    while (true) {
      if (auto s = chain.Add(); !s.ok()) return s;
      if (node->line != line || node->column != column) {
        node->line = line;
        node->column = column;
      }
      const Token& t = Cur();
      if (IsOp(".")) {
        ++pos_;
        if (Cur().type == T::kName) {
          ExprPtr e = MakeExpr(Expr::Kind::kAttr, t);
          e->name = tokens_[pos_++].text;
          e->items.push_back(std::move(node));
          node = std::move(e);
        } else if (Cur().type == T::kInt) {
          ExprPtr e = MakeExpr(Expr::Kind::kItem, t);
          e->items.push_back(std::move(node));
          ExprPtr index = MakeExpr(Expr::Kind::kLiteral, Cur());
          index->value = tokens_[pos_++].value;
          e->items.push_back(std::move(index));
          node = std::move(e);
        } else {
          return Unexpected();
        }
      } else if (IsOp("[")) {
        ++pos_;
        absl::StatusOr<ExprPtr> e = ParseSubscript(std::move(node), t);
        if (!e.ok()) return e;
        node = *std::move(e);
      } else if (IsOp("(")) {
        absl::StatusOr<ExprPtr> e = ParseCall(Expr::Kind::kCall, std::move(node), t, "");
        if (!e.ok()) return e;
        node = *std::move(e);
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr target, const Token& at) {
    ExprPtr parts[3];
    int part = 0;
    bool slice = false;
    while (!IsOp("]")) {
      if (IsOp(":")) {
        slice = true;
        if (++part > 2) return Unexpected();
        ++pos_;
        continue;
      }
      if (parts[part]) return Unexpected();
      absl::StatusOr<ExprPtr> e = ParseExpression();
      if (!e.ok()) return e;
      parts[part] = *std::move(e);
    }
    ++pos_;
    ExprPtr e = MakeExpr(slice ? Expr::Kind::kSlice : Expr::Kind::kItem, at);
    e->items.push_back(std::move(target));
    if (!slice) {
      if (!parts[0]) return Error(at, "empty subscript");
      e->items.push_back(std::move(parts[0]));
    } else {
      for (ExprPtr& p : parts) e->items.push_back(std::move(p));
    }
    return e;
  }

  // Arguments in parentheses: positional, then name=value.
  absl::Status ParseArgs(Expr& e) {
    if (auto s = ExpectOp("("); !s.ok()) return s;
    while (!IsOp(")")) {
      if (started_args_) {
        if (auto s = ExpectOp(","); !s.ok()) return s;
        if (IsOp(")")) break;
      }
      started_args_ = true;
      if (Cur().type == T::kName && Peek().type == T::kOp && Peek().text == "=") {
        std::string name = Cur().text;
        pos_ += 2;
        absl::StatusOr<ExprPtr> value = ParseExpression();
        if (!value.ok()) return value.status();
        e.named.emplace_back(std::move(name), *std::move(value));
      } else {
        if (!e.named.empty()) return Error(Cur(), "positional argument after a keyword argument");
        absl::StatusOr<ExprPtr> value = ParseExpression();
        if (!value.ok()) return value.status();
        e.items.push_back(*std::move(value));
      }
    }
    ++pos_;
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParseCall(Expr::Kind kind, ExprPtr target, const Token& at,
                                    std::string name) {
    ExprPtr e = MakeExpr(kind, at);
    e->name = std::move(name);
    e->items.push_back(std::move(target));
    if (kind == Expr::Kind::kCall || IsOp("(")) {
      const bool saved = started_args_;
      started_args_ = false;
      absl::Status s = ParseArgs(*e);
      started_args_ = saved;
      if (!s.ok()) return s;
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    ChainGuard chain(*this);
    while (true) {
      if (auto s = chain.Add(); !s.ok()) return s;
      const Token& t = Cur();
      if (IsOp("|")) {
        ++pos_;
        absl::StatusOr<std::string> name = ExpectName();
        if (!name.ok()) return name.status();
        absl::StatusOr<ExprPtr> e = ParseCall(Expr::Kind::kFilter, std::move(node), t, *name);
        if (!e.ok()) return e;
        node = *std::move(e);
      } else if (IsName("is")) {
        ++pos_;
        bool negated = false;
        if (IsName("not")) {
          negated = true;
          ++pos_;
        }
        absl::StatusOr<std::string> name = ExpectName();
        if (!name.ok()) return name.status();
        const bool parenthesized = IsOp("(");
        absl::StatusOr<ExprPtr> e = ParseCall(Expr::Kind::kTest, std::move(node), t, *name);
        if (e.ok() && !parenthesized) {
          // One argument without parentheses, as in `x is divisibleby 3` (Jinja's rule).
          const Token& a = Cur();
          const bool arg = a.type == T::kString || a.type == T::kInt || a.type == T::kFloat ||
                           (a.type == T::kName && a.text != "else" && a.text != "or" &&
                            a.text != "and") ||
                           (a.type == T::kOp && (a.text == "[" || a.text == "{"));
          if (arg) {
            if (IsName("is")) return Error(a, "cannot chain multiple tests with 'is'");
            absl::StatusOr<ExprPtr> value = ParsePrimary();
            if (!value.ok()) return value;
            value = ParsePostfix(*std::move(value));
            if (!value.ok()) return value;
            (*e)->items.push_back(*std::move(value));
          }
        }
        if (!e.ok()) return e;
        (*e)->negated = negated;
        node = *std::move(e);
      } else if (IsOp("(")) {
        absl::StatusOr<ExprPtr> e = ParseCall(Expr::Kind::kCall, std::move(node), t, "");
        if (!e.ok()) return e;
        node = *std::move(e);
      } else {
        return node;
      }
    }
  }

  const Lexer& lexer_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  bool started_args_ = false;
};

}  // namespace

absl::StatusOr<Body> ParseTemplate(std::string_view source) {
  // As Jinja: every line break becomes "\n", and one at the very end is dropped.
  std::string normalized;
  normalized.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      normalized += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      normalized += source[i];
    }
  }
  if (!normalized.empty() && normalized.back() == '\n') normalized.pop_back();
  Lexer lexer(std::move(normalized));
  std::vector<Token> tokens;
  if (auto s = lexer.Run(tokens); !s.ok()) return s;
  Parser parser(lexer, std::move(tokens));
  return parser.ParseAll();
}

}  // namespace lizard::server::jinja
