// ChatTemplate: real model templates rendered byte for byte as Debian's python3-jinja2 renders them
// with transformers' settings (expectations written at test time by render_chat_templates.py),
// plus unit tests of the expression evaluator, errors with positions, limits and the
// tokenizer_config.json loader.
#include "server/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/jinja/interpreter.h"

namespace lizard::server {
namespace {

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

ChatTemplateInputs InputsOf(const nlohmann::json& c) {
  ChatTemplateInputs inputs;
  for (const auto& m : c["messages"]) {
    inputs.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  inputs.add_generation_prompt = c["add_generation_prompt"].get<bool>();
  inputs.bos_token = c["bos_token"].get<std::string>();
  inputs.eos_token = c["eos_token"].get<std::string>();
  if (c.contains("extra")) inputs.extra = c["extra"];
  return inputs;
}

void ExpectSameResult(const absl::StatusOr<std::string>& got, const nlohmann::json& want) {
  if (want.contains("output")) {
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(*got, want["output"].get<std::string>());
    return;
  }
  ASSERT_FALSE(got.ok()) << "jinja2 failed with " << want["error"] << ", C++ rendered:\n" << *got;
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  if (want["raised"].get<bool>()) EXPECT_EQ(got.status().message(), want["error"].get<std::string>());
}

TEST(ChatTemplateReferenceTest, RendersSnippetsAsJinja2) {
  const std::filesystem::path dir = LIZARD_CHAT_TEMPLATE_DIR;
  const nlohmann::json cases = nlohmann::json::parse(ReadFile(dir / "conversations.json"));
  const nlohmann::json snippets = nlohmann::json::parse(ReadFile(dir / "snippets.json"));
  const nlohmann::json expected = nlohmann::json::parse(ReadFile(LIZARD_CHAT_TEMPLATE_EXPECTED));
  ASSERT_EQ(expected["snippets"].size(), snippets.size());
  for (size_t i = 0; i < snippets.size(); ++i) {
    const std::string source = snippets[i].get<std::string>();
    SCOPED_TRACE(source);
    absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::Parse(source);
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    ExpectSameResult(tmpl->Render(InputsOf(cases.back())), expected["snippets"][i]);
  }
}

TEST(ChatTemplateReferenceTest, RendersModelTemplatesAsJinja2) {
  const std::filesystem::path dir = LIZARD_CHAT_TEMPLATE_DIR;
  const nlohmann::json cases = nlohmann::json::parse(ReadFile(dir / "conversations.json"));
  const nlohmann::json expected = nlohmann::json::parse(ReadFile(LIZARD_CHAT_TEMPLATE_EXPECTED));
  int templates = 0, compared = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".jinja") continue;
    const std::string name = entry.path().stem().string();
    SCOPED_TRACE(name);
    ASSERT_TRUE(expected.contains(name)) << "no expectation for " << name;
    absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::Parse(ReadFile(entry.path()));
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    ++templates;
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE(cases[i]["name"].get<std::string>());
      ExpectSameResult(tmpl->Render(InputsOf(cases[i])), expected[name][i]);
      ++compared;
    }
  }
  EXPECT_GE(templates, 12);
  EXPECT_EQ(compared, templates * static_cast<int>(cases.size()));
}

absl::StatusOr<std::string> RenderSource(std::string_view source,
                                         nlohmann::json extra = nlohmann::json::object()) {
  absl::StatusOr<ChatTemplate> tmpl = ChatTemplate::Parse(source);
  if (!tmpl.ok()) return tmpl.status();
  ChatTemplateInputs inputs;
  inputs.extra = std::move(extra);
  return tmpl->Render(inputs);
}

std::string Eval(std::string_view source, nlohmann::json extra = nlohmann::json::object()) {
  absl::StatusOr<std::string> out = RenderSource(source, std::move(extra));
  return out.ok() ? *out : "ERROR: " + std::string(out.status().message());
}

TEST(ChatTemplateExpressionTest, Literals) {
  EXPECT_EQ(Eval("{{ 1 }} {{ -2 }} {{ 1.0 }} {{ 1e3 }} {{ 1.5e-7 }} {{ 'a' \"b\" }}"),
            "1 -2 1.0 1000.0 1.5e-07 ab");
  EXPECT_EQ(Eval("{{ true }} {{ False }} {{ none }} {{ [1, 'x'] }} {{ {'k': [none]} }}"),
            "True False None [1, 'x'] {'k': [None]}");
  EXPECT_EQ(Eval(R"({{ 'tab\there\n' ~ "\u00e9\x41" }})"), "tab\there\n\xc3\xa9" "A");
}

TEST(ChatTemplateExpressionTest, ArithmeticFollowsPython) {
  EXPECT_EQ(Eval("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 1 / 4 }} {{ 2 ** 10 }}"),
            "3 -4 2 -2 0.25 1024");
  EXPECT_EQ(Eval("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ 0.1 + 0.2 }}"),
            "7 9 abab [1, 2] 0.30000000000000004");
  EXPECT_EQ(Eval("{{ 'a' ~ 1 ~ none ~ undefined }}"), "a1None");
}

TEST(ChatTemplateExpressionTest, ComparisonsAndLogic) {
  EXPECT_EQ(Eval("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' in 'abc' }} {{ 2 not in [1, 2] }} "
                 "{{ 'k' in {'k': 1} }}"),
            "True False True False True");
  EXPECT_EQ(Eval("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not '' }} {{ 'a' if 0 else 'b' }} [{{ 'a' if 0 }}]"),
            "x y True b []");
  EXPECT_EQ(Eval("{{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ none == undefined }}"), "True True False");
}

TEST(ChatTemplateExpressionTest, AccessAndSlicing) {
  const nlohmann::json extra = {{"m", {{"role", "user"}, {"n", {1, 2, 3}}}}};
  EXPECT_EQ(Eval("{{ m.role }} {{ m['role'] }} {{ m.n[-1] }} {{ m.n[1:] }} {{ m.n[::-1] }} "
                 "[{{ m.missing }}] [{{ m.n[7] }}] {{ 'héllo'[1:3] }}",
                 extra),
            "user user 3 [2, 3] [3, 2, 1] [] [] él");
  EXPECT_EQ(Eval("{{ m.get('role') }} {{ m.get('x', 'd') }} {{ m.get('x') }} "
                 "{% for k, v in m.items() %}{{ k }};{% endfor %}",
                 extra),
            "user d None n;role;");
}

TEST(ChatTemplateExpressionTest, FiltersTestsAndMethods) {
  EXPECT_EQ(Eval("{{ '  a b  ' | trim }}|{{ 'xxaxx'.strip('x') }}|{{ ' a '.lstrip() }}|"
                 "{{ 'a,b'.split(',') }}|{{ 'ab' | upper }}|{{ 'hello world' | title }}"),
            "a b|a|a |['a', 'b']|AB|Hello World");
  EXPECT_EQ(Eval("{{ {'a': 'é', 'b': [1, 2.5, none, true]} | tojson }}"),
            R"({"a": "é", "b": [1, 2.5, null, true]})");
  EXPECT_EQ(Eval("{{ [1, {'x': []}] | tojson(indent=2) }}"), "[\n  1,\n  {\n    \"x\": []\n  }\n]");
  EXPECT_EQ(Eval("{{ x is defined }} {{ x is undefined }} {{ none is none }} {{ 'a' is string }} "
                 "{{ {} is mapping }} {{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ 1 is not number }}"),
            "False True True True True True True False");
  EXPECT_EQ(Eval("{{ [1, 2, 3] | length }} {{ 'añb' | length }} {{ x | default('d') }} "
                 "{{ [3, 4] | first }} {{ [3, 4] | last }} {{ ['a', 'b'] | join('-') }}"),
            "3 3 d 3 4 a-b");
}

TEST(ChatTemplateStatementTest, ScopingFollowsJinja) {
  // A set inside a loop does not leak out, nor into the next iteration; a namespace carries it.
  EXPECT_EQ(Eval("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }},"
                 "{% endfor %}{{ x }}"),
            "110,120,1");
  EXPECT_EQ(Eval("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}"
                 "{% endfor %}{{ ns.x }}"),
            "4");
  EXPECT_EQ(Eval("{% for i in [] %}x{% else %}empty{% endfor %}"), "empty");
  // A namespace holding itself (freed after rendering; LeakSanitizer checks it in the fuzz build).
  EXPECT_EQ(Eval("{% set ns = namespace() %}{% set ns.me = ns %}{% set ns.x = 2 %}{{ ns.me.me.x }}"), "2");
  EXPECT_EQ(Eval("{% for i in range(6) if i is odd %}{{ loop.index }}:{{ i }}/{{ loop.length }} "
                 "{% endfor %}"),
            "1:1/3 2:3/3 3:5/3 ");
  EXPECT_EQ(Eval("{% macro m(a, b='B') %}<{{ a }}{{ b }}>{% endmacro %}{{ m(1) }}{{ m(2, b=3) }}"),
            "<1B><23>");
}

TEST(ChatTemplateStatementTest, WhitespaceControlMatchesHuggingFaceSettings) {
  // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it.
  EXPECT_EQ(Eval("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(Eval("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(Eval("x {#- comment -#}\n y"), "xy");
  EXPECT_EQ(Eval("  {%+ if true %}kept{% endif %}"), "  kept");
  EXPECT_EQ(Eval("{{ 'x' }}\n"), "x");  // one trailing newline is dropped, as Jinja does
}

TEST(ChatTemplateErrorTest, SyntaxErrorsHavePositions) {
  const auto error = [](std::string_view source) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source);
    EXPECT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(t.status().message());
  };
  EXPECT_EQ(error("ab\n  {{ 1 + }}"), "line 2, column 10: unexpected end of print statement");
  EXPECT_EQ(error("{% if x %}never closed"), "line 1, column 23: unexpected end of template, expected 'endif'");
  EXPECT_EQ(error("\n\n{% include 'x' %}"), "line 3, column 4: unsupported tag 'include'");
  EXPECT_EQ(error("{{ 'open }}"), "line 1, column 4: unterminated string");
  EXPECT_EQ(error("{# no end"), "line 1, column 1: missing end of comment tag");
  EXPECT_EQ(error("{% break %}"), "line 1, column 4: 'break' outside of a loop");
  EXPECT_EQ(error("{{ x is y is z }}"), "line 1, column 11: cannot chain multiple tests with 'is'");
}

TEST(ChatTemplateErrorTest, RuntimeErrors) {
  absl::StatusOr<std::string> raised = RenderSource("a{{ raise_exception('Roles must alternate') }}");
  EXPECT_EQ(raised.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(raised.status().message(), "Roles must alternate");
  absl::StatusOr<std::string> type_error = RenderSource("\n {{ 'a' + 1 }}");
  EXPECT_EQ(type_error.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(type_error.status().message(),
            "line 2, column 5: unsupported operand type(s) for +: 'str' and 'int'");
  EXPECT_EQ(Eval("{{ foo.bar }}"), "ERROR: line 1, column 4: 'foo' is undefined");
  EXPECT_EQ(Eval("{{ 1 // 0 }}"), "ERROR: line 1, column 4: integer division or modulo by zero");
  EXPECT_EQ(Eval("{{ 9223372036854775807 + 1 }}"), "ERROR: line 1, column 4: integer overflow");
  EXPECT_EQ(Eval("{{ x | nosuchfilter }}"), "ERROR: line 1, column 6: no filter named 'nosuchfilter'");
}

TEST(ChatTemplateLimitTest, RenderingIsBounded) {
  EXPECT_EQ(RenderSource("{{ 'x' * 100000000 }}").status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RenderSource("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RenderSource("{% for i in range(1000000) %}{% endfor %}").status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RenderSource("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").status().code(),
            absl::StatusCode::kResourceExhausted);
  // Doubling a string past the output limit, and a list nested past the value depth limit.
  EXPECT_EQ(RenderSource("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}"
                         "{% set ns.s = ns.s + ns.s %}{% endfor %}")
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(RenderSource("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                         "{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l | tojson }}")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChatTemplateLimitTest, NestingIsBoundedWhenParsing) {
  // Each of these would otherwise build a tree deep enough to overflow the stack when evaluated
  // or destroyed.
  const auto parse_code = [](const std::string& source) { return ChatTemplate::Parse(source).status().code(); };
  const auto repeat = [](std::string_view s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  EXPECT_EQ(parse_code("{{ " + repeat("(", 5000) + "1" + repeat(")", 5000) + " }}"),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code("{{ 1" + repeat(" + 1", 50000) + " }}"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code("{{ x" + repeat(" or x", 50000) + " }}"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code("{{ x" + repeat("|trim", 50000) + " }}"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code("{{ x" + repeat(".a[0]", 50000) + " }}"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code("{{ 1" + repeat(" if x else 1", 50000) + " }}"), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_code(repeat("{% if x %}", 5000) + repeat("{% endif %}", 5000)),
            absl::StatusCode::kInvalidArgument);
  // Long chains within the limit parse and evaluate.
  EXPECT_EQ(Eval("{{ 1" + repeat(" + 1", 100) + " }}"), "101");
}

TEST(ChatTemplateConfigTest, ReadsTokenizerConfig) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "chat_template_config";
  std::filesystem::create_directories(dir);
  const auto write = [&](const std::string& text) {
    std::ofstream(dir / "tokenizer_config.json", std::ios::binary) << text;
    return (dir / "tokenizer_config.json").string();
  };
  absl::StatusOr<ChatTemplate> plain = ChatTemplate::FromTokenizerConfig(write(R"({
    "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false},
    "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"})"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->bos_token(), "<s>");
  EXPECT_EQ(plain->eos_token(), "</s>");
  ChatTemplateInputs inputs;
  inputs.messages = {{"user", "hi"}};
  inputs.bos_token = plain->bos_token();
  inputs.eos_token = plain->eos_token();
  EXPECT_EQ(*plain->Render(inputs), "<s>hi</s>");

  absl::StatusOr<ChatTemplate> named = ChatTemplate::FromTokenizerConfig(write(R"({
    "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})"));
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named->Render({}), "D");
  EXPECT_EQ(named->bos_token(), "");

  EXPECT_EQ(ChatTemplate::FromTokenizerConfig(write(R"({"bos_token": "<s>"})")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ChatTemplate::FromTokenizerConfig(write("{not json")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::FromTokenizerConfig(write(R"({"chat_template": "{% if %}"})")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::FromTokenizerConfig((dir / "missing.json").string()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ChatTemplateInputsTest, ExtraVariablesAndTheirLimits) {
  EXPECT_EQ(Eval("{{ date_string }} {{ tools is none }}", {{"date_string", "1 Jan"}, {"tools", nullptr}}),
            "1 Jan True");
  nlohmann::json deep = 1;
  for (int i = 0; i < 100; ++i) deep = nlohmann::json::array({deep});
  EXPECT_EQ(RenderSource("x", {{"deep", deep}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderSource("x", nlohmann::json::array()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lizard::server
