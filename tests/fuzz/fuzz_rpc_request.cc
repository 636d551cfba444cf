// Fuzzes what lizard-server does with the bytes of a request before the engine sees them: the
// protobuf parse of each request message (as LizardService does it, from raw bytes), then the
// validation of a GenerateRequest / CreateSessionRequest into engine input (limits, token ids,
// sampling ranges, stop strings) with the lizard-tiny tokenizer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "lizard/v1/lizard.pb.h"
#include "server/request_validation.h"
#include "tests/fuzz/tiny_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  lizard::server::RequestLimits limits;
  limits.vocab_size = TinyTokenizer().vocab_size();
  limits.max_new_tokens_limit = 4096;
  limits.default_max_new_tokens = 64;
  limits.max_input_tokens = 4096;

  lizard::v1::GenerateRequest generate;
  if (generate.ParseFromString(bytes)) {
    (void)lizard::server::CheckRequestId(generate.request_id());
    (void)lizard::server::CheckSessionId(generate.session_id());
    auto input = lizard::server::InputTokens(
        generate.has_text() ? &generate.text() : nullptr,
        generate.has_token_ids() ? &generate.token_ids() : nullptr, &TinyTokenizer(), true, limits);
    if (input.ok()) {
      auto request = lizard::server::ToEngineRequest(generate, *std::move(input), &TinyTokenizer(), limits);
      if (request.ok() && request->input.empty()) abort();  // validation must refuse empty input
    }
  }
  lizard::v1::CreateSessionRequest create;
  if (create.ParseFromString(bytes)) {
    (void)lizard::server::InputTokens(create.has_text() ? &create.text() : nullptr,
                                      create.has_token_ids() ? &create.token_ids() : nullptr,
                                      &TinyTokenizer(), true, limits);
  }
  // The other requests: the parse alone (their fields are checked by the handlers' one-liners).
  lizard::v1::GetSessionRequest get;
  (void)get.ParseFromString(bytes);
  lizard::v1::DetokenizeRequest detokenize;
  if (detokenize.ParseFromString(bytes)) {
    std::vector<int32_t> ids(detokenize.token_ids().begin(), detokenize.token_ids().end());
    if (lizard::server::CheckTokenIds(ids, limits.vocab_size, "token_ids").ok()) {
      (void)TinyTokenizer().Decode(ids);
    }
  }
  return 0;
}
