// Fuzzes the chat template interpreter with arbitrary template sources (a tokenizer_config.json
// is model data, and --chat-template takes a file): parsing and rendering a fixed conversation
// with tools must end in a value or in INVALID_ARGUMENT / RESOURCE_EXHAUSTED, within the output
// bound, and never crash, recurse without bound or hang; ASan/UBSan check its memory.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "server/chat_template.h"
#include "server/jinja/interpreter.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<lizard::server::ChatTemplate> tmpl = lizard::server::ChatTemplate::Parse(source);
  if (!tmpl.ok()) {
    if (tmpl.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  static const lizard::server::ChatTemplateInputs* const inputs = [] {
    auto* in = new lizard::server::ChatTemplateInputs;
    in->messages = {{"system", "Be brief."}, {"user", "Hi, 中文 🦎"}, {"assistant", " ok "},
                    {"tool", "{\"t\": 1}"}, {"user", "again"}};
    in->bos_token = "<s>";
    in->eos_token = "</s>";
    in->extra = nlohmann::json::parse(R"({"date_string": "1 Jan 2026", "tools": [{"type":
      "function", "function": {"name": "f", "parameters": {"a": [1, 2.5, null, true]}}}]})");
    return in;
  }();
  absl::StatusOr<std::string> out = tmpl->Render(*inputs);
  if (out.ok()) {
    if (out->size() > lizard::server::jinja::kMaxOutputBytes) std::abort();
  } else if (out.status().code() != absl::StatusCode::kInvalidArgument &&
             out.status().code() != absl::StatusCode::kResourceExhausted) {
    std::fprintf(stderr, "unexpected status %s\n", out.status().ToString().c_str());
    std::abort();
  }
  return 0;
}
