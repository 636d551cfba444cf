// STAND-IN (see chat_template.h): ChatML only.
#include "server/chat_template.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace lizard::server {
namespace {

// A special token in tokenizer_config.json: a string or {"content": string}.
std::string TokenText(const nlohmann::json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(std::string_view source) {
  if (source.find("<|im_start|>") == std::string_view::npos) {
    return absl::UnimplementedError("this stand-in renders ChatML templates only");
  }
  ChatTemplate result;
  result.source_ = std::string(source);
  return result;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  std::stringstream contents;
  contents << in.rdbuf();
  const nlohmann::json config = nlohmann::json::parse(contents.str(), nullptr, false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  const auto source = config.find("chat_template");
  if (source == config.end() || !source->is_string()) {
    return absl::NotFoundError(absl::StrCat(path, ": no chat_template"));
  }
  absl::StatusOr<ChatTemplate> result = Parse(source->get<std::string>());
  if (!result.ok()) return result.status();
  result->bos_token_ = TokenText(config, "bos_token");
  result->eos_token_ = TokenText(config, "eos_token");
  return result;
}

absl::StatusOr<std::string> ChatTemplate::Render(const ChatTemplateInputs& inputs) const {
  std::string out;
  for (const ChatMessage& message : inputs.messages) {
    absl::StrAppend(&out, "<|im_start|>", message.role, "\n", message.content, "<|im_end|>\n");
  }
  if (inputs.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace lizard::server
