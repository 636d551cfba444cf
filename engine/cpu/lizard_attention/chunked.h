// The Lizard attention op in its prefill form: blocks of kLizardChunk tokens, GlaChunk from the
// carried state, then the window softmax over the ring (positions before the block) plus the
// block's own keys, whose last w then enter the ring.
#pragma once

#include <cstdint>

#include "engine/cpu/lizard_attention/args.h"

namespace lizard::cpu {

// Tokens per block, counted from the call's first row.
inline constexpr int64_t kLizardChunk = 64;

// Same contract as LizardAttentionNaive (naive.h), in float32.
void LizardAttentionChunked(const LizardAttentionArgs& args, LizardSlotState& state, float* y);

}  // namespace lizard::cpu
