// CPU reference of LizardWindowPrefill (window_prefill.h): the same arguments, all pointers in
// host memory (the pool too), computed naively per token and head in float64 from the values as
// the window holds them (ring values as stored, row values rounded to the window type). For the
// GPU tests.
#pragma once

#include "kernels/lizard_attention/window_prefill.h"

namespace lizard::kernels {

void LizardWindowPrefillRef(const WindowPrefillArgs& args);

}  // namespace lizard::kernels
