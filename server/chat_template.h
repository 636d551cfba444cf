// STAND-IN for the Jinja chat-template renderer (written in parallel in another branch, which
// replaces these two files with the same API). It understands only ChatML templates
// (<|im_start|>role\ncontent<|im_end|>\n), enough to build and test the OpenAI chat endpoint.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace lizard::server {

struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatTemplateInputs {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
  nlohmann::json extra = nlohmann::json::object();
};

class ChatTemplate {
 public:
  static absl::StatusOr<ChatTemplate> Parse(std::string_view source);
  // The chat_template, bos_token and eos_token of a tokenizer_config.json; NOT_FOUND if the
  // file or its chat_template is missing.
  static absl::StatusOr<ChatTemplate> FromTokenizerConfig(const std::string& path);
  absl::StatusOr<std::string> Render(const ChatTemplateInputs& inputs) const;
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  std::string source_;
  std::string bos_token_, eos_token_;
};

}  // namespace lizard::server
