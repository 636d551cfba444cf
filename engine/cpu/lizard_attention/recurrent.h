// The Lizard attention op in its decode form: token by token, GlaStep on the state, the token's
// key and value into the window ring, then the window softmax over the ring.
#pragma once

#include "engine/cpu/lizard_attention/args.h"

namespace lizard::cpu {

// Same contract as LizardAttentionNaive (naive.h), in float32.
void LizardAttentionRecurrent(const LizardAttentionArgs& args, LizardSlotState& state, float* y);

}  // namespace lizard::cpu
