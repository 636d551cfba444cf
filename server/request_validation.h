// Turns API requests into engine requests, rejecting bad input with INVALID_ARGUMENT (or
// FAILED_PRECONDITION for text without a tokenizer) and a message naming the field.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/runtime/engine.h"
#include "lizard/v1/lizard.pb.h"
#include "tokenizer/tokenizer.h"

namespace lizard::server {

// Set from ServerOptions (whose defaults are the flags' defaults).
struct RequestLimits {
  int64_t vocab_size = 0;
  int32_t max_new_tokens_limit = 0;    // largest accepted max_new_tokens
  int32_t default_max_new_tokens = 0;  // when the request leaves it unset
  int32_t max_input_tokens = 0;        // tokens one request may append
};

// Input given as text or token ids. Text is encoded with `tokenizer` (null: the model has no
// tokenizer.json), with BOS when `add_bos` (the start of a conversation).
absl::StatusOr<std::vector<int32_t>> InputTokens(const std::string* text,
                                                 const v1::TokenIds* token_ids,
                                                 const Tokenizer* tokenizer, bool add_bos,
                                                 const RequestLimits& limits);

// Strings a client may send are bounded, so that no echo (request_id in every streamed message,
// a session id in NOT_FOUND) or per-token work (stop strings) can grow without limit.
inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr size_t kMaxSessionIdBytes = 128;  // ours are 32 hex digits
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;

// INVALID_ARGUMENT when over the limits above (the message does not echo the string).
absl::Status CheckRequestId(const std::string& request_id);
absl::Status CheckSessionId(const std::string& session_id);

// Checks token ids against the vocabulary; `what` names them in the message.
absl::Status CheckTokenIds(absl::Span<const int32_t> ids, int64_t vocab_size, const char* what);

// Sampling and stopping of a Generate request (the input is converted by InputTokens).
absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                              std::vector<int32_t> input,
                                              const Tokenizer* tokenizer,
                                              const RequestLimits& limits);

}  // namespace lizard::server
