// The Lizard attention op in its prefill form: blocks of kLizardChunk tokens, GlaChunk from the
// carried state, then the window softmax over the ring (positions before the block) plus the
// block's own keys, whose last w then enter the ring.
#pragma once

#include <cstdint>

#include "engine/cpu/lizard_attention/args.h"
#include "engine/step_plan.h"

namespace lizard::cpu {

// Tokens per block. Blocks sit at absolute positions that are multiples of it (a call starting
// at position p begins with the partial block [p, next multiple)), so a call over [p, q) gives
// the bits of two calls split at any multiple of it: where the scheduler cuts a prompt does not
// change its arithmetic.
inline constexpr int64_t kLizardChunk = 64;
static_assert(kLizardChunk == kPrefillAlignment, "the scheduler cuts prompts at block bounds");

// Same contract as LizardAttentionNaive (naive.h), in float32.
void LizardAttentionChunked(const LizardAttentionArgs& args, LizardSlotState& state, float* y);

}  // namespace lizard::cpu
