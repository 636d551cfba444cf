#include "server/chat_template.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/jinja/interpreter.h"
#include "server/jinja/value.h"

namespace lizard::server {
namespace {

// A special token as tokenizer_config.json writes it: a string, or {"content": "..."}.
std::string TokenText(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  absl::StatusOr<jinja::Body> body = jinja::ParseTemplate(source);
  if (!body.ok()) return body.status();
  ChatTemplate t;
  t.body_ = std::make_shared<const jinja::Body>(*std::move(body));
  return t;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json config = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  }
  std::string source;
  auto it = config.find("chat_template");
  if (it != config.end() && it->is_string()) {
    source = it->get<std::string>();
  } else if (it != config.end() && it->is_array()) {
    for (const auto& named : *it) {
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        source = named["template"].get<std::string>();
      }
    }
  }
  if (source.empty()) return absl::NotFoundError(absl::StrCat(path, " has no chat_template"));
  absl::StatusOr<ChatTemplate> t = Parse(source);
  if (!t.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": chat_template: ", t.status().message()));
  }
  t->bos_token_ = TokenText(config, "bos_token");
  t->eos_token_ = TokenText(config, "eos_token");
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatTemplateInputs& inputs) const {
  if (!body_) return absl::FailedPreconditionError("no chat template was parsed");
  if (!inputs.extra.is_object()) {
    return absl::InvalidArgumentError("chat template variables must be a JSON object");
  }
  jinja::Object variables;
  for (const auto& [key, value] : inputs.extra.items()) {
    absl::StatusOr<jinja::Value> v = jinja::Value::FromJson(value);
    if (!v.ok()) return v.status();
    variables.emplace_back(key, *std::move(v));
  }
  jinja::Array messages;
  for (const ChatMessage& m : inputs.messages) {
    messages.push_back(jinja::Value::MakeObject({{"role", jinja::Value::String(m.role)},
                                                 {"content", jinja::Value::String(m.content)}}));
  }
  // The named inputs win over same-named extras (later entries replace earlier ones).
  variables.emplace_back("messages", jinja::Value::MakeArray(std::move(messages)));
  variables.emplace_back("add_generation_prompt", jinja::Value::Bool(inputs.add_generation_prompt));
  variables.emplace_back("bos_token", jinja::Value::String(inputs.bos_token));
  variables.emplace_back("eos_token", jinja::Value::String(inputs.eos_token));
  return jinja::Render(*body_, variables);
}

}  // namespace lizard::server
