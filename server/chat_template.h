// Chat templates: the Jinja "chat_template" of a model's tokenizer_config.json, rendered in C++
// with the semantics of Hugging Face's apply_chat_template: trim_blocks, lstrip_blocks, loop
// controls, its tojson (ensure_ascii=False), raise_exception and strftime_now.
// The subset (server/jinja/): {{ }}, {% %}, {# #}, whitespace control (- and +); if/elif/else,
// for (tuple targets, `if` filter, else, loop.*), set (name, ns.attr, block), macro, break,
// continue, generation; Python-like expressions with slices, `is` tests, `in`, ~ and conditional
// expressions; the filters and str/dict methods chat templates use. Unsupported constructs
// (include, extends, call, filter blocks, recursive loops, ...) fail Parse with their position.
// A parsed template is immutable: Render may run on several threads at once.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "server/jinja/ast.h"

namespace lizard::server {

struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatTemplateInputs {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;  // from tokenizer_config.json
  // Other variables (e.g. tools: null, date_string); must be an object. Its keys come in
  // nlohmann::json's (sorted) order, which is the order tojson prints them in.
  nlohmann::json extra = nlohmann::json::object();
};

class ChatTemplate {
 public:
  // Parses a Jinja template source; INVALID_ARGUMENT with line:column on a syntax error or an
  // unsupported construct.
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);
  // From a model folder's tokenizer_config.json: its "chat_template" (string, or a list of
  // {name, template} where "default" is taken) plus bos_token/eos_token (strings or
  // {"content": ...} objects). NOT_FOUND if it has none.
  static absl::StatusOr<ChatTemplate> FromTokenizerConfig(const std::string& path);
  // Renders; INVALID_ARGUMENT for raise_exception(msg) (the message is the template's) or a
  // runtime type error; bounded: RESOURCE_EXHAUSTED past an output size / step limit.
  absl::StatusOr<std::string> Render(const ChatTemplateInputs& inputs) const;
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  std::shared_ptr<const jinja::Body> body_;
  std::string bos_token_, eos_token_;
};

}  // namespace lizard::server
