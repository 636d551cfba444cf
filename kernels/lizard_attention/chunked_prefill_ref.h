// CPU references of the prefill path's kernels (chunked_prefill.h), for the GPU tests.
// LizardChunkedPrefillRef: the same arguments, every pointer in host memory (state.pool a host copy
// of the slots, seqs host arrays), computed token by token with float64 state and sums; S and z are
// rounded to state.state_type where the kernel rounds them (at absolute multiples of kGlaChunk,
// and when stored).
#pragma once

#include "kernels/lizard_attention/chunked_prefill.h"

namespace lizard::kernels {

void LizardChunkedPrefillRef(const ChunkedPrefillArgs& args);

// CPU reference of LizardPrefillFeatureMaps in float64: the inputs of `args` in host memory (its
// output pointers unused), the logits (bias included) into logits [rows, 2H, F] and the maps into
// fq, fk [rows, H, 2F].
void LizardPrefillFeatureMapsRef(const PrefillFeatureMapsArgs& args, double* logits, double* fq, double* fk);

}  // namespace lizard::kernels
