#include "server/request_validation.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace lizard::server {

absl::Status CheckTokenIds(absl::Span<const int32_t> ids, int64_t vocab_size, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, "[", i, "] = ", ids[i],
                                                     " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRequestId(const std::string& request_id) {
  if (request_id.size() <= kMaxRequestIdBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("request_id is ", request_id.size(),
                                                 " bytes, more than the limit of ",
                                                 kMaxRequestIdBytes));
}

absl::Status CheckSessionId(const std::string& session_id) {
  if (session_id.size() <= kMaxSessionIdBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("session_id is ", session_id.size(),
                                                 " bytes, longer than any session id (at most ",
                                                 kMaxSessionIdBytes, ")"));
}

absl::StatusOr<std::vector<int32_t>> InputTokens(const std::string* text,
                                                 const v1::TokenIds* token_ids,
                                                 const Tokenizer* tokenizer, bool add_bos,
                                                 const RequestLimits& limits) {
  std::vector<int32_t> tokens;
  if (text != nullptr) {
    if (text->empty()) return absl::InvalidArgumentError("input text is empty");
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          "the model has no tokenizer.json: send input as token_ids");
    }
    absl::StatusOr<std::vector<int32_t>> encoded = tokenizer->Encode(*text, add_bos);
    if (!encoded.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("input text: ", encoded.status().message()));
    }
    tokens = *std::move(encoded);
  } else if (token_ids != nullptr) {
    tokens.assign(token_ids->ids().begin(), token_ids->ids().end());
    if (absl::Status s = CheckTokenIds(tokens, limits.vocab_size, "input token_ids"); !s.ok()) {
      return s;
    }
  }
  if (tokens.empty()) return absl::InvalidArgumentError("input is empty");
  if (static_cast<int64_t>(tokens.size()) > limits.max_input_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("input has ", tokens.size(),
                                                   " tokens, more than the limit of ",
                                                   limits.max_input_tokens,
                                                   " (--max-input-tokens)"));
  }
  return tokens;
}

namespace {

// The API's fields, unset ones at the engine's defaults, checked by the engine's own rules; the
// message gets the request's field path ("sampling.top_p = 2 must be in (0, 1]").
absl::StatusOr<SamplingParams> ToSampling(const v1::SamplingParams& in) {
  SamplingParams out;
  out.temperature = in.temperature();
  out.top_k = in.top_k();
  if (in.has_top_p()) out.top_p = in.top_p();
  out.min_p = in.min_p();
  if (in.has_repetition_penalty()) out.repetition_penalty = in.repetition_penalty();
  out.presence_penalty = in.presence_penalty();
  out.frequency_penalty = in.frequency_penalty();
  if (in.has_seed()) out.seed = in.seed();
  if (absl::Status s = Validate(out); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.", s.message()));
  }
  return out;
}

}  // namespace

absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                              std::vector<int32_t> input,
                                              const Tokenizer* tokenizer,
                                              const RequestLimits& limits) {
  EngineRequest out;
  out.input = std::move(input);
  absl::StatusOr<SamplingParams> sampling = ToSampling(request.sampling());
  if (!sampling.ok()) return sampling.status();
  out.sampling = *sampling;

  const v1::StoppingCriteria& stopping = request.stopping();
  const uint32_t max_new = stopping.has_max_new_tokens()
                               ? stopping.max_new_tokens()
                               : static_cast<uint32_t>(limits.default_max_new_tokens);
  if (max_new > static_cast<uint32_t>(limits.max_new_tokens_limit)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stopping.max_new_tokens = ", max_new, " is over the limit of ",
        limits.max_new_tokens_limit, " (--max-new-tokens-limit)"));
  }
  out.stopping.max_new_tokens = static_cast<int32_t>(max_new);
  out.stopping.ignore_eos = stopping.ignore_eos();
  out.stopping.stop_token_ids.assign(stopping.stop_token_ids().begin(),
                                     stopping.stop_token_ids().end());
  if (absl::Status s = CheckTokenIds(out.stopping.stop_token_ids, limits.vocab_size,
                                     "stopping.stop_token_ids");
      !s.ok()) {
    return s;
  }
  if (stopping.stop_strings_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.stop_strings has ",
                                                   stopping.stop_strings_size(),
                                                   " entries, more than the limit of ",
                                                   kMaxStopStrings));
  }
  for (int i = 0; i < stopping.stop_strings_size(); ++i) {
    if (stopping.stop_strings(i).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stopping.stop_strings[", i, "] is empty"));
    }
    if (stopping.stop_strings(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stopping.stop_strings[", i, "] is ", stopping.stop_strings(i).size(),
          " bytes, more than the limit of ", kMaxStopStringBytes));
    }
  }
  if (stopping.stop_strings_size() > 0 && tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "stopping.stop_strings need text, but the model has no tokenizer.json");
  }

  if (request.logprobs() > static_cast<uint32_t>(limits.vocab_size)) {
    return absl::InvalidArgumentError(absl::StrCat("logprobs = ", request.logprobs(),
                                                   " is more than the vocabulary size ",
                                                   limits.vocab_size));
  }
  out.logprobs = static_cast<int32_t>(request.logprobs());
  return out;
}

}  // namespace lizard::server
