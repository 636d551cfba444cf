// CPU reference of LizardChunkedPrefill (chunked_prefill.h): the same arguments, all pointers in
// host memory, computed naively token by token with float64 state and sums. For the GPU tests.
#pragma once

#include "kernels/lizard_attention/chunked_prefill.h"

namespace lizard::kernels {

void LizardChunkedPrefillRef(const ChunkedPrefillArgs& args);

}  // namespace lizard::kernels
