// Renders a parsed template: Jinja's semantics for the statements, expressions, filters, tests
// and methods chat templates use, with Hugging Face's globals (raise_exception, strftime_now) and
// its tojson. Bounded in output size, work and nesting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "server/jinja/ast.h"
#include "server/jinja/value.h"

namespace lizard::server::jinja {

inline constexpr size_t kMaxOutputBytes = 16 << 20;
// Work units: one per expression or statement evaluated, one per 64 bytes of strings and lists
// built, one per loop iteration.
inline constexpr int64_t kMaxSteps = 1'000'000;
// Evaluation depth (expressions and statements inside each other, through macro calls too).
inline constexpr int kMaxEvalDepth = 600;
// range() in Jinja's sandbox refuses more items than this.
inline constexpr int64_t kMaxRange = 100'000;

// INVALID_ARGUMENT for raise_exception(message) (with the template's message) and for runtime
// errors ("line L, column C: ..."); RESOURCE_EXHAUSTED past the limits above.
absl::StatusOr<std::string> Render(const Body& body, const Object& variables);

}  // namespace lizard::server::jinja
