// CPU reference of LizardChunkedPrefill (chunked_prefill.h): the same arguments, every pointer in
// host memory (state.pool a host copy of the slots, seqs host arrays), computed token by token with
// float64 state and sums; S and z are rounded to state.state_type where the kernel rounds them
// (at absolute multiples of kGlaChunk, and when stored). For the GPU tests.
#pragma once

#include "kernels/lizard_attention/chunked_prefill.h"

namespace lizard::kernels {

void LizardChunkedPrefillRef(const ChunkedPrefillArgs& args);

}  // namespace lizard::kernels
