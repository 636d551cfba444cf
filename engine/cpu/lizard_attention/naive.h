// The Lizard attention op as the spec states it (shared/spec/lizard-model.md), in float64: for
// each row, the gated linear attention by explicit sums over the carried state and every earlier
// row, plus the softmax over the window's last w keys with the meta-memory sinks. Short and slow
// (quadratic in the length): the reference that tests hold the recurrent and chunked forms to.
#pragma once

#include "engine/cpu/lizard_attention/args.h"

namespace lizard::cpu {

// Writes y's rows for the heads of args' range and advances `state` past the rows.
void LizardAttentionNaive(const LizardAttentionArgs& args, LizardSlotState& state, float* y);

}  // namespace lizard::cpu
